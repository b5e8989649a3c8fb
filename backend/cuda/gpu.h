/* backend/cuda/gpu.h: the cuda target, inside.
 *
 * Three parts, each replaceable without the others:
 *
 *   emit.c    a TRAIN program -> CUDA C source: the model's kernels, every
 *             shape and stride a literal, element-wise work fused into the
 *             kernel that produces it (bias, the folded identity, the
 *             optimiser update with its clipping scale);
 *   exec.c    the driver: runs a program's steps by launching those kernels
 *             on a device; weights, optimiser state and power-iteration
 *             vectors stay on the device between steps;
 *   a device  memory, copies and kernel launches behind a small table of
 *             functions (lipc_gpu_dev): CUDA itself (device_cuda.c: NVRTC
 *             compiles the source for the GPU at hand, the runtime API loads
 *             and launches it), or the emulator (emu.c: the same source
 *             compiled for the host by the C compiler and run serially), which
 *             lets the whole driver and every kernel be tested against the
 *             reference backend on a machine without a GPU.
 *
 * Every kernel has one signature, `void name(lipc_gargs a)`, and is written
 * as a grid-stride loop over independent work items: each output element has
 * one writer and a fixed summation order (no atomics, no shared memory), so a
 * kernel's result does not depend on the launch geometry and the emulator
 * runs it faithfully one item after the other.
 */
#ifndef LIPC_BACKEND_CUDA_GPU_H
#define LIPC_BACKEND_CUDA_GPU_H

#include "backend/backend.h"

/* The argument block of every kernel (passed by value). Which pointer means
 * what depends on the kernel's kind (below); s holds scalars. */
#define LIPC_GARGS_PTRS 8
#define LIPC_GARGS_SCALARS 8
typedef struct lipc_gargs {
    void *p[LIPC_GARGS_PTRS];
    long long n;                /* examples (node kernels) or elements */
    double s[LIPC_GARGS_SCALARS];
} lipc_gargs;

/* Kernels per node (names "<kind>_<node id>"):
 *   FWD    p0 in0, p1 in1 (add), p2 out, p3 weight, p4 bias     out = op(in)
 *   BWD    p0 dout, p1 din0, p2 din1 (add), p3 in0, p4 out, p5 weight
 *          din_i += J_i^T dout (a NULL din is skipped)
 *   WGRAD  p0 in0, p1 dout, p2 dweight, p3 dbias (NULL: none), s0 scale
 *          dW += s0 sum_b dout x^T, db += s0 sum_b dout
 * The generic kernels (names as below) are emitted once per module. */
typedef enum lipc_gkind { LIPC_G_FWD, LIPC_G_BWD, LIPC_G_WGRAD, LIPC_G_KINDS } lipc_gkind;
extern const char *const lipc_gkind_names[LIPC_G_KINDS];

/* Generic kernels:
 *   lipc_sumsq    p0 x (float) [n], p1 partials (double) [LIPC_GPU_PARTIALS]:
 *                 partial t = sum of x[i]^2 over i = t mod LIPC_GPU_PARTIALS
 *   lipc_dot      p0 x, p1 y (float) [n], p2 partials (double): sum x[i] y[i]
 *   lipc_scale    p0 x (float) [n]: x *= s0
 *   lipc_axpy     p0 y, p1 x (float) [n]: y += s0 x
 *   lipc_adamw    p0 params, p1 grads, p2 m, p3 v [n]; s0 lr, s1 beta1,
 *                 s2 beta2, s3 eps, s4 weight decay, s5 1 - beta1^t,
 *                 s6 1 - beta2^t, s7 gradient scale (clipping)
 *   lipc_sgd      p0 params, p1 grads, p2 m [n]; s0 lr, s1 momentum,
 *                 s4 weight decay, s7 gradient scale
 * The optimisers compute in double and store float, as backend/optim.c. */
#define LIPC_GPU_PARTIALS 512

/* The kernels of a TRAIN program as one CUDA C source (NUL-terminated, into
 * out). The source is valid CUDA C for NVRTC and, after the emulator's
 * prelude, valid C for the host compiler. has[kind][node id] tells which node
 * kernels exist ([n_ids] each, allocated by the caller, or NULL). */
lipc_status lipc_cuda_emit(const lipc_program *train, bool *has[LIPC_G_KINDS], lipc_buf *out,
                           lipc_diags *d);

/* `lipc dump --emit=cuda|ptx`: the prelude and the kernels of a TRAIN program
 * as CUDA C, or compiled by NVRTC to PTX for compute capability arch. */
lipc_status lipc_cuda_module_text(const lipc_program *train, bool ptx, int arch, lipc_diags *d,
                                  lipc_buf *out);

/* The prelude NVRTC gets before the source (the kernel macro, the argument
 * block). */
extern const char lipc_cuda_prelude[];

/*   lipc_fold_eye   p0 weff, p1 w [n]: weff = w + the identity on the centre
 *                   tap: element t is on it when (t / s1) mod (s0 / s1) ==
 *                   t / s0 and t mod s1 == s2 (s0 = ci kh kw, s1 = kh kw,
 *                   s2 = the tap top kw + left)
 *   lipc_bias_add   p0 y [n], p1 bias: y[t] += bias[(t / s1) mod s0]
 *                   (s0 channels, s1 positions per channel)
 *   lipc_bias_grad  p0 dy [n examples], p1 db [s0]: db[o] += s2 sum over the
 *                   batch and the s1 positions of channel o
 *   lipc_fill       p0 x [n]: reproducible values in [-0.5, 0.5) from the
 *                   index and the seed s0 (library checks)
 */

/* ---- devices ------------------------------------------------------------------- */

/* A convolution for a library (cuDNN): NCHW floats, symmetric padding. */
typedef struct lipc_gconv {
    int id;                 /* the node's id: a cache key */
    int ci, h, w, co, oh, ow, kh, kw, sh, sw, ph, pw;
} lipc_gconv;

typedef enum lipc_gconv_op {
    LIPC_GCONV_FWD,         /* a x, b w, c y:    y  = alpha conv(x, w)   + beta y  */
    LIPC_GCONV_BWD_DATA,    /* a dy, b w, c dx:  dx = alpha conv^T(dy, w) + beta dx */
    LIPC_GCONV_BWD_FILTER,  /* a x, b dy, c dw:  dw = alpha sum_b dy x^T  + beta dw */
    LIPC_GCONV_OPS
} lipc_gconv_op;
extern const char *const lipc_gconv_op_names[LIPC_GCONV_OPS];

typedef struct lipc_gpu_dev lipc_gpu_dev;
typedef struct lipc_gpu_dev_ops {
    const char *name;       /* "cuda" or "emulator" */
    /* Loads the kernels of a source; NULL-named functions are then found by
     * name. Errors (a compile log) go to d. */
    lipc_status (*load)(lipc_gpu_dev *dv, const char *source, lipc_diags *d);
    /* Optional: loads kernels compiled ahead of time (PTX text, which the
     * driver finishes for the GPU at hand). */
    lipc_status (*load_image)(lipc_gpu_dev *dv, const char *image, lipc_diags *d);
    /* A loaded kernel by name, or NULL. */
    void *(*kernel)(lipc_gpu_dev *dv, const char *name);
    /* Runs kernel k over `items` independent work items (the grid-stride
     * loops' range: the driver's hint for the launch geometry). */
    lipc_status (*launch)(lipc_gpu_dev *dv, void *k, long long items, const lipc_gargs *a);
    lipc_status (*alloc)(lipc_gpu_dev *dv, size_t bytes, void **out);
    void (*release)(lipc_gpu_dev *dv, void *p);
    lipc_status (*upload)(lipc_gpu_dev *dv, void *dst, const void *src, size_t bytes);
    /* waits for the kernels before it */
    lipc_status (*download)(lipc_gpu_dev *dv, void *dst, const void *src, size_t bytes);
    lipc_status (*zero)(lipc_gpu_dev *dv, void *dst, size_t bytes);
    /* Optional (NULL: none): a library convolution on n examples; tf32
     * allows TensorFloat-32 arithmetic. */
    lipc_status (*conv)(lipc_gpu_dev *dv, const lipc_gconv *g, int n, lipc_gconv_op op,
                        bool tf32, const float *a, const float *b, float *c, double alpha,
                        double beta);
    /* Seconds on a monotonic clock, after the work queued so far has run. */
    double (*now)(lipc_gpu_dev *dv);
    /* the last error in words (for messages) */
    const char *(*error)(lipc_gpu_dev *dv);
    void (*destroy)(lipc_gpu_dev *dv);
} lipc_gpu_dev_ops;

struct lipc_gpu_dev {
    const lipc_gpu_dev_ops *ops;
    char describe[160];     /* the device in words, for progress output */
};

/* The emulator: kernels compiled for the host by the C compiler cc (NULL:
 * "cc") and run serially; threads emulated threads walk each grid-stride loop
 * (a kernel must give the same result for any count). */
lipc_status lipc_gpu_emulator_new(const char *cc, int threads, lipc_diags *d, lipc_gpu_dev **out);

/* CUDA (built only with the toolkit): the first GPU; allow_tf32 is kept for
 * library calls. LIPC_ERR_UNSUPPORTED with a clear error when the build has no
 * CUDA or the machine no usable GPU. */
lipc_status lipc_gpu_cuda_new(lipc_diags *d, lipc_gpu_dev **out);

/* NVRTC (built only with the toolkit; no GPU needed): the source compiled to
 * a cubin for compute capability arch (e.g. 90), or PTX when ptx is true,
 * into out. The compile log goes to d on failure. */
lipc_status lipc_nvrtc_compile(const char *source, int arch, bool ptx, lipc_buf *out,
                               lipc_diags *d);
/* True when this build has NVRTC. */
bool lipc_nvrtc_available(void);

/* ---- the driver (exec.c) ------------------------------------------------------------- */

typedef struct lipc_gpu lipc_gpu;

/* A runner of the train and forward programs on a device (moved into it,
 * also on failure), with the kernels of image (PTX of the same programs'
 * source, made by `lipc build`) when it is not NULL and the device loads
 * images, else compiled from their source. */
lipc_status lipc_gpu_new(const lipc_program *train, const lipc_program *forward,
                         lipc_gpu_dev *dev, const char *image, lipc_diags *d, lipc_gpu **out);
void lipc_gpu_free(lipc_gpu *c);

lipc_status lipc_gpu_predict(lipc_gpu *c, const float *params, int n, const float *x,
                             float *logits);
/* Keeps st's parameters, moments and vectors on the device between steps;
 * lipc_gpu_sync_state brings st up to date on the host. */
lipc_status lipc_gpu_train_step(lipc_gpu *c, lipc_train_state *st, int n, const float *x,
                                const int32_t *y, const lipc_hyper *h, lipc_step_stats *out);
lipc_status lipc_gpu_sync_state(lipc_gpu *c, lipc_train_state *st);
/* The gradient before clipping and the update (tests); st is not modified. */
lipc_status lipc_gpu_gradients(lipc_gpu *c, lipc_train_state *st, int n, const float *x,
                               const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                               double *grads);
lipc_status lipc_gpu_lipschitz(lipc_gpu *c, const float *params, float *vec, int max_iters,
                               double tol, lipc_bound_report *report);

/* Where convolutions run: the emitted kernels, the device's library, or
 * (AUTO, the default) whichever is faster, per layer, operation and batch
 * class (one example: power iteration; more: training), measured on their
 * first use; a library result that disagrees with the emitted kernel's on
 * test data is never used. LIPC_CUDA_CONV=emitted|library|auto sets it too. */
typedef enum lipc_conv_mode { LIPC_CONV_AUTO, LIPC_CONV_EMITTED, LIPC_CONV_LIBRARY } lipc_conv_mode;
void lipc_gpu_set_conv_mode(lipc_gpu *c, lipc_conv_mode mode);
/* Forbids TensorFloat-32 in training convolutions (it is never used for
 * inference or power iteration); LIPC_CUDA_TF32=0 does too. */
void lipc_gpu_set_tf32(lipc_gpu *c, bool allow);
/* What runs where, one line per conv layer and operation (after the first
 * step; for progress output and the benchmark). */
void lipc_gpu_describe_choices(const lipc_gpu *c, lipc_buf *out);

/* The "cuda" target on a device: tables, kernels, runner, entry points
 * (certified inference runs on the host in double, as the reference's). */
lipc_status lipc_compile_gpu(lipc_graph *g, lipc_gpu_dev *dev, const char *image,
                             lipc_diags *d, lipc_compiled **out);
/* The "cuda" (the first GPU) or "cuda-emulator" target of g, with o's
 * no_tf32 (o may be NULL); image as lipc_gpu_new's. */
lipc_status lipc_compile_cuda(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                              const char *image, lipc_diags *d, lipc_compiled **out);

/* Certified inference of c through host, a cpu target of the same graph
 * (moved into c). */
void lipc_compiled_attach_host(lipc_compiled *c, lipc_compiled *host);

#endif
