/* backend/backend.h: what the backends of lipc provide.
 *
 * Every backend turns a checked graph (ir/ir.h) into the same entry points. The
 * reference backend (backend/ref) interprets the graph node by node in double
 * precision with each op's ref_forward from ir/ops/<op>.c: it is slow, plain and
 * the oracle every fast backend is tested against.
 *
 * Buffers follow the layout stated in ir/ir.h: NCHW, batch outermost.
 */
#ifndef LIPC_BACKEND_H
#define LIPC_BACKEND_H

#include <stdint.h>

#include "ir/ir.h"
#include "runtime/runtime.h"
#include "support/support.h"

/* ---- reference backend (backend/ref/interp.c) ----------------------------- */

/* Runs the whole graph on a batch: every node in program order, each into its
 * own buffer, freed after its last use.
 *   params  the graph's parameter block [g->n_param_elems]
 *   x       [n_batch, numel(g->input_shape)]
 *   logits  [n_batch, numel(g->output->shape)]
 * Requires g->shapes_known. Returns LIPC_ERR_NOMEM when a buffer cannot be
 * allocated and LIPC_ERR_UNSUPPORTED when an op has no reference kernel (with
 * an error in d, which may be NULL). */
lipc_status lipc_ref_forward(const lipc_graph *g, const double *params, int n_batch,
                             const double *x, double *logits, lipc_diags *d);

/* Runs one node on given input buffers (tests and pass-equivalence checks):
 *   in[i]  [n_batch, numel(n->in[i]->shape)]
 *   out    [n_batch, numel(n->shape)]
 * params is the graph's whole parameter block. LIPC_ERR_UNSUPPORTED when the
 * op has no reference kernel (the input node has none: it is the data). */
lipc_status lipc_ref_node_forward(const lipc_graph *g, const lipc_node *n,
                                  const double *params, int n_batch,
                                  const double *const *in, double *out);

/* Forward, then reverse-mode backward, on a batch (the reference for training):
 *   params    the parameter block [g->n_param_elems]
 *   x         [n_batch, numel(g->input_shape)]
 *   dlogits   [n_batch, numel(g->output->shape)]: the gradient of the loss
 *             w.r.t. the logits, or NULL to run the forward only
 *   logits    [n_batch, numel(g->output->shape)] written (may be NULL)
 *   dparams   [g->n_param_elems] zeroed, then set to dloss/dparams summed over
 *             the batch (may be NULL: parameter gradients are not computed)
 *   dx        [n_batch, numel(g->input_shape)] zeroed, then set to dloss/dx
 *             (may be NULL: the input gradient is not computed)
 * Every activation is kept until the end; gradients accumulate into one zeroed
 * buffer per node (a value read twice, like a residual's skip, sums both
 * contributions) and are propagated in reverse program order with each op's
 * ref_backward. Nodes that lead to neither a parameter nor a requested dx get no
 * gradient. A training step that needs the logits to form dlogits calls
 * lipc_ref_forward first. Errors as lipc_ref_forward (LIPC_ERR_UNSUPPORTED also
 * for an op without ref_backward on the gradient's path). */
lipc_status lipc_ref_forward_backward(const lipc_graph *g, const double *params,
                                      int n_batch, const double *x, const double *dlogits,
                                      double *logits, double *dparams, double *dx,
                                      lipc_diags *d);

/* The pointer an op's ref_forward receives as `params`: the node's first
 * parameter inside the block (its weight; the bias follows it), or NULL when
 * the node has none. Checks that the node's parameters are contiguous. */
const double *lipc_ref_node_params(const lipc_graph *g, const lipc_node *n,
                                   const double *params);

/* Fills the parameter block [g->n_param_elems] from each parameter's init
 * rule, in double, exactly as the runtime's initialiser (runtime/init.c
 * states the rules): one random stream per parameter name. */
void lipc_ref_init_params(const lipc_graph *g, uint64_t seed, double *params);

/* ---- losses (backend/ref/loss.c) ---- */

/* The certified-training losses of METHOD.md section 5, in double: forward,
 * backward and the batch's accuracy metrics, on the logits a forward pass made.
 * Notation: f the logits of one example, y its label, r_i row i of the head's
 * EFFECTIVE weight (already row-normalised when the head normalises: the caller
 * turns dr into the raw weight's gradient through the normalisation), and the
 * pair bounds K_ji = k_sub * ||r_j - r_i||_2. */


typedef struct lipc_loss_spec {
    lipc_loss kind;         /* EMMA, MARGIN, GLORO or TRADES (ir/ir.h) */
    double eps;             /* the training radius (after the schedule), >= 0 */
    double trades_lambda;   /* TRADES only */
} lipc_loss_spec;

typedef struct lipc_loss_result {
    double loss;            /* mean loss over the batch */
    double dk_sub;          /* d loss / d k_sub (0 when no gradient was asked) */
    int n_correct;          /* unique argmax == label (a tie for the top is wrong) */
    int n_certified;        /* correct AND certified at spec->eps, strict rule
                             * (METHOD.md section 1; ties never certified) */
} lipc_loss_result;

/* The mean loss of a batch and its gradients.
 *   logits   [n, m]
 *   labels   [n]        each in [0, m)
 *   r        [m, d]     effective head rows; k_sub > 0
 *   dlogits  [n, m]     written: d loss / d logits; NULL: forward and metrics only
 *   dr       [m, d]     ADDED into: d loss / d r; NULL: not computed (dk_sub
 *                       still is when dlogits is given)
 * m >= 2. Returns LIPC_ERR_NOMEM when its scratch cannot be allocated (out is
 * then zeroed and dlogits, dr untouched). */
lipc_status lipc_ref_loss(const lipc_loss_spec *spec, int n, int m, int d,
                          const double *logits, const int32_t *labels, double k_sub,
                          const double *r, double *dlogits, double *dr,
                          lipc_loss_result *out);

/* ---- entry points of the reference backend (backend/ref/exec.c) ---- */

/* Logits of a batch: x [n, numel(input)], logits [n, classes]. p is a
 * FORWARD (or TRAIN) program. */
lipc_status lipc_ref_predict(const lipc_program *p, const float *params, int n, const float *x,
                             double *logits);

/* The same logits, and logit_err [n, classes]: a rigorous elementwise bound
 * |logits - f(x)| <= logit_err, f the exact real-number network with these
 * float parameters on these float inputs, by running error analysis: each
 * op's ref_error after its ref_forward (ir/ir.h; the argument is in
 * docs/soundness.md). Costs about three forward passes. */
lipc_status lipc_ref_predict_bounded(const lipc_program *p, const float *params, int n,
                                     const float *x, double *logits, double *logit_err);

/* Power iteration to convergence on every operator-norm factor of a TRAIN or
 * LIPSCHITZ program, warm-started from vec (updated): stops when sigma moves
 * less than tol (relative) over 10 iterations, or after max_iters.
 * report [p->n_bounds + 1]. */
lipc_status lipc_ref_lipschitz(const lipc_program *p, const float *params, float *vec,
                               int max_iters, double tol, lipc_bound_report *report);

/* One training step of a TRAIN program on x [n, numel(input)], y [n]:
 * updates st (parameters, moments, vectors, step). */
lipc_status lipc_ref_train_step(const lipc_program *p, lipc_train_state *st, int n,
                                const float *x, const int32_t *y, const lipc_hyper *h,
                                lipc_step_stats *out);

/* The same without clipping or update: the gradient of the loss w.r.t. the
 * parameters, in double, into grads [g->n_param_elems] (gradient checks).
 * st is not modified. */
lipc_status lipc_ref_gradients(const lipc_program *p, lipc_train_state *st, int n,
                               const float *x, const int32_t *y, const lipc_hyper *h,
                               lipc_step_stats *out, double *grads);

/* The random generator a zero power-iteration vector of factor b starts
 * from (every backend draws the same normal vector from it). */
void lipc_power_iter_rng(int b, lipc_rng *r);

/* Power iteration to convergence, shared by the backends' lipschitz entry
 * points: every report[b] and sigma[b] starts at 0; each OPNORM factor b
 * then runs chunks of 10 iterations, sigma[b] = chunk(ctx, b, iters) after
 * each, until sigma moves less than tol (relative) or max_iters are done. */
typedef double (*lipc_pi_chunk_fn)(void *ctx, int b, int iters);
void lipc_power_iter_converge(const lipc_program *p, int max_iters, double tol,
                              lipc_pi_chunk_fn chunk, void *ctx, double *sigma,
                              lipc_bound_report *report);

/* K_sub from a program's factor tree, given the value of each OPNORM factor in
 * sigma [n_bounds] (CONST and LOOSE values are filled in), and
 * dk [n_bounds] = dK_sub / d value of each factor. */
double lipc_program_eval_bound(const lipc_program *p, double *sigma, double *dk);

/* ---- the dense head on the host (backend/head.c), shared by the float
 * drivers (cpu, cuda), in double ---- */

/* w64 = the head's weight w [m, d] (floats), r64 = its effective rows
 * (row-normalised when the head normalises, else w64). */
void lipc_head_rows(const lipc_node *head, const float *w, double *w64, double *r64);
/* The LOSS step on the host: the loss of logits [n, m] (read before dlogits
 * is written, so the two may share a buffer), dlogits [n, m] (floats), and
 * dw [m, d] = the K_sub path's gradient w.r.t. the raw head weight. Scratch:
 * logits64, dlogits64 [n, m], dr64 [m, d]. Sets out's loss and counts and
 * *dl_dk = d loss / d K_sub. */
lipc_status lipc_head_loss(const lipc_node *head, const lipc_hyper *h, int n, const float *logits,
                           const int32_t *y, double k_sub, const double *w64, const double *r64,
                           double *logits64, double *dlogits64, double *dr64, float *dlogits,
                           double *dw, lipc_step_stats *out, double *dl_dk);
/* A normalising head's weight gradient dw [m, d] from the gradient dr [m, d]
 * (floats) of its effective rows, through the normalisation (dr64: scratch). */
void lipc_head_rows_backward(const lipc_node *head, const double *w64, const float *dr,
                             double *dr64, double *dw);

/* ---- optimisers (backend/optim.c), shared by the CPU backends ---- */

/* sum_i x[i]^2 in double, in a fixed order of eight running sums */
double lipc_sumsq(const float *x, size_t n);
/* The gradient's squared norm is summed over blocks of LIPC_NORM_BLOCK
 * elements, and the blocks' sums in order, so that threads can share it. */
#define LIPC_NORM_BLOCK ((size_t)1 << 16)
size_t lipc_norm_blocks(size_t n);
/* The squared norm of block b of a gradient of n elements: floats gf, or
 * doubles gd when gf is NULL. */
double lipc_sumsq_block(const float *gf, const double *gd, size_t n, size_t b);
/* From the blocks' sums: the norm (*norm) and the factor that clips the
 * gradient to it (clip > 0), 1 when none is needed. */
double lipc_clip_scale(const double *partial, size_t n_blocks, double clip, double *norm);
/* Scales g [n] to global norm <= clip (clip > 0); returns the norm before. */
double lipc_grad_clip(double *g, size_t n, double clip);
/* The optimiser's update of elements [lo, hi) of st's parameters and moments
 * with the gradient gf[i] * scale (floats) or gd[i] * scale (doubles, gf
 * NULL); st->step is the count of updates before this one and is left alone. */
void lipc_optim_update(const lipc_hyper *h, lipc_train_state *st, size_t lo, size_t hi,
                       const float *gf, const double *gd, double scale);
/* One AdamW or SGD-Nesterov step on st (parameters, moments, step count)
 * with the gradient grads [np]. */
void lipc_optim_step(const lipc_hyper *h, lipc_train_state *st, size_t np, const double *grads);
/* The gradient of the scaled kernels' a and U from V's, in place in the
 * training vector's gradient (float gf or double gd, [st->n_train]); V's is
 * zeroed (backend/optim.c). Nothing when st has no scaled kernels. */
void lipc_scaled_grads(const lipc_train_state *st, float *gf, double *gd);

/* ---- compiled models (backend/describe.c) ---- */

/* What a target produced from a checked graph: the runtime's description of
 * the model and its entry points. Owns the programs; borrows the graph,
 * which must outlive it. */
typedef struct lipc_compiled {
    lipc_graph *g;
    lipc_program *train, *forward;
    lipc_model_desc desc;
    lipc_param_desc *params;
    lipc_scaled *scaled;
    lipc_factor_desc *factors;
    lipc_model_ops ops;
    void *backend;                      /* the target's own state (cpu: lipc_cpu) */
    void (*backend_free)(void *backend);
    /* a device target's companion on the host (cuda: the cpu target, whose
     * certified inference it uses), owned; or NULL */
    struct lipc_compiled *host;
} lipc_compiled;

/* The runtime's description of one parameter of g. */
void lipc_describe_param(const lipc_graph *g, const lipc_param *p, lipc_param_desc *out);

/* Compiles g (after the pass pipeline) for a target: "ref" (this backend, in
 * double) or "ref-f32" (the same, storing every value in float);
 * "cpu" and "cuda" report that they are not available in this build. User
 * errors (a model that cannot train) go to d as LIPC_ERR_INPUT. */
lipc_status lipc_compile(lipc_graph *g, const char *target, lipc_diags *d, lipc_compiled **out);
/* What every target shares: the programs (stored in dtype) and the tables,
 * with no entry points yet. */
lipc_status lipc_compile_tables(lipc_graph *g, lipc_dtype dtype, lipc_diags *d,
                                lipc_compiled **out);
/* Sets c->ops to the reference backend's entry points. */
void lipc_compiled_use_ref(lipc_compiled *c);
void lipc_compiled_free(lipc_compiled *c);

/* ==== LLVM CPU backend (backend/llvm/; the only part of lipc that links LLVM) ====
 *
 * The training program lowered to kernels emitted through the LLVM C API
 * (backend/llvm/emit.c), optimised for the host (default<O2>) and compiled by
 * ORC's LLJIT; a driver (backend/llvm/exec.c) runs the program's steps in
 * float, handing each kernel to the runtime's thread pool. These functions
 * live in the lipc_llvm library, not in lipc_core, so the runtime and the rest
 * of lipc stay free of LLVM. */

typedef struct lipc_cpu lipc_cpu;

typedef struct lipc_cpu_options {
    int threads;            /* < 1: one per core */
    bool portable;          /* AVX2 code for any x86-64-v3 CPU, not the host's */
    bool no_tf32;           /* cuda: no TensorFloat-32 in training convolutions */
} lipc_cpu_options;

/* Compiles a model's TRAIN and FORWARD programs (built from the same graph).
 * LIPC_ERR_UNSUPPORTED with an error in d when an op has no emitter or LLVM
 * fails; LIPC_ERR_NOMEM when memory ran out. */
lipc_status lipc_cpu_compile(const lipc_program *train, const lipc_program *forward,
                             const lipc_cpu_options *o, lipc_diags *d, lipc_cpu **out);
void lipc_cpu_free(lipc_cpu *c);
double lipc_cpu_compile_seconds(const lipc_cpu *c);
int lipc_cpu_threads(const lipc_cpu *c);

/* The entry points, as the reference's (this file, above), in float. */
lipc_status lipc_cpu_predict(lipc_cpu *c, const float *params, int n, const float *x,
                             float *logits);
lipc_status lipc_cpu_train_step(lipc_cpu *c, lipc_train_state *st, int n, const float *x,
                                const int32_t *y, const lipc_hyper *h, lipc_step_stats *out);
/* The gradient before clipping and the update (tests); st is not modified. */
lipc_status lipc_cpu_gradients(lipc_cpu *c, lipc_train_state *st, int n, const float *x,
                               const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                               double *grads);
/* Logits and rigorous bounds on their distance to the exact real-number
 * network's (as lipc_ref_predict_bounded), from the float kernels: about two
 * forward passes (backend/llvm/exec.c states the argument). */
lipc_status lipc_cpu_predict_bounded(lipc_cpu *c, const float *params, int n, const float *x,
                                     double *logits, double *logit_err);
/* The same from ONE double forward pass, the error of each example bounded
 * in l2 through sigma [n_bounds of the TRAIN program], upper bounds on its
 * factors (the argument is at the end of backend/cpu/exec.c).
 * LIPC_ERR_UNSUPPORTED for a graph it has no rule for. */
lipc_status lipc_cpu_predict_l2(lipc_cpu *c, const float *params, const double *sigma, int n,
                                const float *x, double *logits, double *logit_err);
lipc_status lipc_cpu_lipschitz(lipc_cpu *c, const float *params, float *vec, int max_iters,
                               double tol, lipc_bound_report *report);

/* The kernels of a TRAIN program as LLVM IR before optimisation, or as the
 * assembly the host (or the portable CPU) gets (`lipc dump --emit=llvm|asm`). */
lipc_status lipc_llvm_module_text(const lipc_program *train, bool assembly, bool portable,
                                  lipc_diags *d, lipc_buf *out);

/* `lipc build`: the kernels of a TRAIN program as an object file at path,
 * with a table of them (lipc_kernel_table, lipc_kernel_count) and the model
 * (lipc_model_yaml, its text; lipc_model_source, its file name;
 * lipc_model_sets, its "KEY=VALUE\n" overrides) for the executable's main
 * (cli/model_main.c). */
lipc_status lipc_llvm_build_object(const lipc_program *train, bool portable, const char *source,
                                   const char *yaml, const char *sets, const char *path,
                                   lipc_diags *d);

/* lipc_compile, plus the "cpu" target (this backend; in a built executable,
 * its linked-in kernels). */
lipc_status lipc_compile_target(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                                lipc_diags *d, lipc_compiled **out);

/* ==== end of the LLVM CPU backend ==== */

#endif
