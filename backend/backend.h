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

/* ---- compiled models (backend/describe.c) ---- */

/* What a target produced from a checked graph: the runtime's description of
 * the model and its entry points. Owns the programs; borrows the graph,
 * which must outlive it. */
typedef struct lipc_compiled {
    lipc_graph *g;
    lipc_program *train, *forward;
    lipc_model_desc desc;
    lipc_param_desc *params;
    lipc_factor_desc *factors;
    lipc_model_ops ops;
} lipc_compiled;

/* The runtime's description of one parameter of g. */
void lipc_describe_param(const lipc_graph *g, const lipc_param *p, lipc_param_desc *out);

/* Compiles g (after the pass pipeline) for a target: "ref" (this backend, in
 * double) or "ref-f32" (the same, storing every value in float);
 * "cpu" and "cuda" report that they are not available in this build. User
 * errors (a model that cannot train) go to d as LIPC_ERR_INPUT. */
lipc_status lipc_compile(lipc_graph *g, const char *target, lipc_diags *d, lipc_compiled **out);
void lipc_compiled_free(lipc_compiled *c);

/* ==== LLVM CPU backend (backend/llvm/; the only part of lipc that links LLVM) ====
 *
 * A first slice: the FORWARD program as one function emitted through the LLVM
 * C API, optimised for the host (default<O3>) and run through ORC's LLJIT.
 * These functions live in the lipc_llvm library, not in lipc_core, so the
 * runtime and everything else stay free of LLVM; lipc_compile's "cpu" target
 * does not use them yet. */

/* A JIT-compiled forward function; owns its machine code. */
typedef struct lipc_llvm_fn lipc_llvm_fn;

/* Compiles the FORWARD steps of p (a FORWARD or TRAIN program; shapes are
 * baked in, the batch is not). LIPC_ERR_UNSUPPORTED with an error in d when a
 * step's op has no emitter or LLVM fails; LIPC_ERR_NOMEM when memory ran out. */
lipc_status lipc_llvm_forward_compile(const lipc_program *p, lipc_diags *d, lipc_llvm_fn **out);

/* Logits of a batch, in float:
 *   params  [g->n_param_elems]
 *   x       [n, numel(input)]
 *   logits  [n, classes]
 * The activations' arena ([arena_per_example * n] floats, the program's memory
 * plan) is allocated per call. LIPC_ERR_NOMEM when it cannot be. */
lipc_status lipc_llvm_forward_run(lipc_llvm_fn *f, const float *params, int n, const float *x,
                                  float *logits);
void lipc_llvm_fn_free(lipc_llvm_fn *f);

/* The emitted module as LLVM IR text, before optimisation (`lipc dump
 * --emit=llvm`). Errors as lipc_llvm_forward_compile. */
lipc_status lipc_llvm_forward_ir(const lipc_program *p, lipc_diags *d, lipc_buf *out);

/* ==== end of the LLVM CPU backend ==== */

#endif
