/* runtime/runtime.h: what every compiled model links against.
 *
 * The runtime depends on support/, libc, libm, zlib and jansson only: never on
 * LLVM and never on ir/, so a built executable links the runtime alone.
 *
 * This header (first half of the runtime):
 * - datasets in memory: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary, and a
 *   deterministic synthetic set for tests;
 * - a seeded batch sampler with random crop and horizontal flip;
 * - checkpoints in the safetensors format, written atomically;
 * - progress lines for long work and a JSON-lines metrics log.
 *
 * Errors about user files are diagnostics naming the file
 * ("path: error: truncated at byte N of M"); I/O failures return LIPC_ERR_IO,
 * bad contents LIPC_ERR_INPUT, memory exhaustion LIPC_ERR_NOMEM. Library code
 * never exits. All heap memory comes from lipc_malloc.
 */
#ifndef LIPC_RUNTIME_H
#define LIPC_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "support/support.h"

/* ---- datasets (dataset.c) --------------------------------------------------- */

typedef enum lipc_split {
    LIPC_SPLIT_TRAIN,
    LIPC_SPLIT_TEST,
} lipc_split;

/* A labelled image set, fully in memory. Pixels are scaled to [0, 1]. */
typedef struct lipc_dataset {
    int n, c, h, w, classes;
    float *x;       /* [n, c*h*w], each example NCHW-contiguous ([c, h, w]) */
    uint8_t *y;     /* [n], each < classes */
    char *name;     /* "fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic" */
} lipc_dataset;

/* Loads one split. spec is a NAME or a PATH:
 *   fashion-mnist, mnist   IDX files, looked up in $LIPC_DATA_DIR/NAME,
 *                          /usr/share/datasets/NAME (Debian's dataset-fashion-mnist),
 *                          /usr/local/share/datasets/NAME, then data/NAME
 *   cifar10, cifar100      the same places (usually absent: pass a PATH)
 *   synthetic[:N]          1x8x8 images, 4 classes, N train examples (default
 *                          1024) and ceil(N/4) test examples; see dataset.c
 *   PATH                   a directory; the format is detected from the files in it:
 *                          IDX ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]),
 *                          CIFAR-10 binary (data_batch_1..5.bin, test_batch.bin),
 *                          CIFAR-100 binary (train.bin, test.bin; fine labels), or a
 *                          cifar-10-batches-bin / cifar-100-binary subdirectory.
 * A spec containing '/' is always a path; a bare word is a name when it is one
 * of the names above, else a directory. limit > 0 keeps the first `limit`
 * examples of the split (the rest of the files is then not read). On failure
 * *out is zeroed and d says why. */
lipc_status lipc_dataset_load(const char *spec, lipc_split split, long limit,
                              lipc_dataset *out, lipc_diags *d);
void lipc_dataset_free(lipc_dataset *ds);

/* Copies the LAST n_hold examples of all into val and the others into train
 * (a held-out validation split). n_hold must be in [0, all->n]: LIPC_ERR_INPUT
 * otherwise (the caller validated the user's number and reports it). */
lipc_status lipc_dataset_split(const lipc_dataset *all, int n_hold,
                               lipc_dataset *train, lipc_dataset *val);

/* ---- batches and augmentation (augment.c) ----------------------------------- */

typedef struct lipc_augment {
    bool crop;      /* zero-pad by crop_pad on every side, take a random h x w window */
    int crop_pad;
    bool flip;      /* mirror left-right with probability 1/2 */
} lipc_augment;

/* The augmentation usually used for a dataset name (NULL or unknown: none). */
void lipc_augment_defaults(const char *dataset_name, lipc_augment *a);

/* One deterministic transform: out = flip?(crop(in)), where the crop window
 * starts at (dy, dx) in the image zero-padded by pad (dy, dx in [0, 2 pad]):
 *   out[c][y][x] = in[c][y + dy - pad][x' + dx - pad],  x' = flip ? w-1-x : x,
 * and 0 where the source index falls outside the image. in and out must not
 * overlap. in, out: [c, h, w]. */
void lipc_augment_image(const float *in, float *out, int c, int h, int w,
                        int pad, int dy, int dx, bool flip);

/* Draws batches from a dataset: a fresh Fisher-Yates permutation each epoch
 * and a fresh crop/flip per example. Everything is a function of (seed, epoch,
 * position in the epoch), never of earlier calls, so a run can resume at any
 * step and batches can be filled in any order or in parallel. */
typedef struct lipc_batcher {
    const lipc_dataset *ds;     /* borrowed; must outlive the batcher */
    int batch;                  /* b */
    lipc_augment aug;
    bool shuffle;               /* false: examples in dataset order (evaluation) */
    bool drop_last;             /* true: skip the final partial batch of an epoch */
    uint64_t seed;
    int *order;                 /* [n] this epoch's permutation */
    long epoch;
    int pos;                    /* next position in order */
} lipc_batcher;

lipc_status lipc_batcher_init(lipc_batcher *b, const lipc_dataset *ds, int batch,
                              const lipc_augment *aug, bool shuffle, bool drop_last,
                              uint64_t seed);
void lipc_batcher_free(lipc_batcher *b);
/* Batches per epoch. */
int lipc_batcher_steps(const lipc_batcher *b);
/* Starts epoch `epoch` (0-based) at batch `step` of it. */
void lipc_batcher_seek(lipc_batcher *b, long epoch, int step);
/* Fills x [batch, c, h, w] and y [batch] with the next batch of the current
 * epoch; returns the number of examples written (< batch only for a final
 * partial batch), 0 when the epoch is over (then seek to the next one). y may
 * be NULL. */
int lipc_batcher_next(lipc_batcher *b, float *x, uint8_t *y);

/* ---- checkpoints: safetensors (safetensors.c) ------------------------------ */

/* The format: 8-byte little-endian header length N, N bytes of JSON
 *   {"NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * padded with spaces to a multiple of 8, then the tensors' bytes (little-endian),
 * which cover the data region exactly, without holes or overlaps. "st" below
 * stands for safetensors. */

typedef enum lipc_st_dtype {
    LIPC_ST_F32,
    LIPC_ST_F64,
    LIPC_ST_I64,
    LIPC_ST_U8,
} lipc_st_dtype;

#define LIPC_ST_MAX_RANK 8

typedef struct lipc_st_tensor {
    const char *name;
    lipc_st_dtype dtype;
    int rank;                           /* 0 (a scalar) .. LIPC_ST_MAX_RANK */
    int64_t dims[LIPC_ST_MAX_RANK];
    const void *data;   /* writing: the caller's; reading: inside the loaded file,
                           possibly unaligned (copy with lipc_st_copy) */
    size_t nbytes;      /* reading: set; writing: ignored (computed from dims) */
} lipc_st_tensor;

typedef struct lipc_st_meta {
    const char *key, *value;
} lipc_st_meta;

const char *lipc_st_dtype_name(lipc_st_dtype t);
size_t lipc_st_dtype_size(lipc_st_dtype t);

/* Writes tensors t[0..n) and metadata meta[0..n_meta) to path ATOMICALLY: into
 * "path.tmp-<pid>" in the same directory, flushed and fsync'ed, then renamed
 * over path, so a crash leaves either the old file or the new one, never a
 * torn one. Tensors are laid out by decreasing element size, then by name, so
 * each is aligned when the file is loaded at an 8-aligned address. Rejects
 * empty or duplicate names and "__metadata__" (LIPC_ERR_INPUT). */
lipc_status lipc_st_write(const char *path, const lipc_st_tensor *t, int n,
                          const lipc_st_meta *meta, int n_meta, lipc_diags *d);

/* A loaded safetensors file. */
typedef struct lipc_st_file {
    char *path;
    uint8_t *bytes;             /* the whole file */
    size_t len;
    lipc_st_tensor *tensors;    /* [n], sorted by name; names and data point into
                                   this object */
    int n;
    lipc_st_meta *meta;         /* [n_meta], sorted by key */
    int n_meta;
} lipc_st_file;

/* Reads and validates path: header length (< 100 MB and inside the file),
 * JSON (duplicate keys rejected), known dtypes, shapes against offsets, offsets
 * covering the data region exactly with no overlap. On failure *f is zeroed. */
lipc_status lipc_st_read(const char *path, lipc_st_file *f, lipc_diags *d);
void lipc_st_free(lipc_st_file *f);
/* NULL when absent. */
const lipc_st_tensor *lipc_st_find(const lipc_st_file *f, const char *name);
const char *lipc_st_meta_get(const lipc_st_file *f, const char *key);
/* Copies tensor `name` into dst, converting F32 <-> F64 when dtype asks for
 * the other one; checks that it exists and has the expected shape (rank,
 * dims[rank]) and a convertible dtype, else a diagnostic naming the file and
 * the tensor (LIPC_ERR_INPUT). dst: [prod dims] elements of dtype. */
lipc_status lipc_st_copy(const lipc_st_file *f, const char *name, lipc_st_dtype dtype,
                         int rank, const int64_t *dims, void *dst, lipc_diags *d);

/* ---- progress and metrics (progress.c) ------------------------------------- */

/* Seconds from an arbitrary origin; monotonic (CLOCK_MONOTONIC). */
double lipc_now(void);

/* ---- threads (runtime/pool.c) ------------------------------------------------ */

#define LIPC_POOL_MAX_THREADS 256
/* Each worker's stack: the generated kernels keep their scratch there (the
 * calling thread, which runs part of every range, needs as much: Linux's
 * default 8 MiB is enough). */
#define LIPC_POOL_STACK_BYTES ((size_t)16 << 20)

/* A task over [lo, hi) of a range; ctx is the caller's. */
typedef void (*lipc_task_fn)(void *ctx, int64_t lo, int64_t hi);
typedef struct lipc_pool lipc_pool;

/* threads < 1: one per online core. NULL when out of memory. Sets FTZ/DAZ in
 * the calling thread and in every worker. */
lipc_pool *lipc_pool_new(int threads);
int lipc_pool_threads(const lipc_pool *p);
/* Runs fn on T contiguous ranges that cover [0, n), one per thread (the
 * caller runs the first); returns when all are done. p may be NULL (serial). */
void lipc_pool_run(lipc_pool *p, lipc_task_fn fn, void *ctx, int64_t n);
void lipc_pool_free(lipc_pool *p);
int lipc_cpu_count(void);
/* Flush-to-zero and denormals-are-zero in this thread (x86; no-op elsewhere). */
void lipc_fp_flush_denormals(void);

/* One named value of a progress line or a metrics record. A record field is a
 * string when str is non-NULL, else the number value. */
typedef struct lipc_metric {
    const char *name;
    double value;
    const char *str;
} lipc_metric;

/* Progress of a long loop. On a terminal: one live line rewritten with '\r' at
 * most 10 times a second. Otherwise: a plain line at most every period_s
 * seconds (default 10), and whenever lipc_progress_line is called (once per
 * epoch). A line reads
 *   train  step 1200/4690 (26%)  epoch 3  loss 1.234  acc 0.8123  338 img/s  ETA 2m13s
 * with the fields in the order given between the step and the rate. */
typedef struct lipc_progress {
    FILE *out;
    bool live;              /* rewrite one line with '\r' (out is a terminal) */
    double period_s;        /* plain mode: seconds between lines */
    char label[32];
    long total;             /* steps; 0: unknown (no percentage, no ETA) */
    double items_per_step;  /* for the img/s rate; 0: no rate */
    long step0;             /* step and time of the first update: rates and ETA
                               are measured from there, so a resumed run and
                               the first, slow step do not distort them */
    double t0, t_last;
    bool started, shown;
    int live_len;           /* characters on the live line */
} lipc_progress;

/* out: usually stderr; live mode iff it is a terminal. */
void lipc_progress_init(lipc_progress *p, FILE *out);
void lipc_progress_begin(lipc_progress *p, const char *label, long total_steps,
                         double items_per_step);
/* Reports that `step` steps are done; prints only when it is time to. */
void lipc_progress_update(lipc_progress *p, long step, const lipc_metric *m, int n);
/* Prints a permanent line now (end of an epoch), in both modes. */
void lipc_progress_line(lipc_progress *p, long step, const lipc_metric *m, int n);
/* Ends the live line, if any, with a newline. */
void lipc_progress_end(lipc_progress *p);
/* "1h02m", "2m13s", "45s": for ETA and elapsed times. buf: >= 16 bytes. */
void lipc_format_duration(double seconds, char *buf, size_t size);

/* A metrics log: one JSON object per line, flushed per line, e.g.
 *   {"epoch":3,"step":1200,"loss":1.2345,"split":"train"}
 * Integral values below 2^53 are written as JSON integers, non-finite ones as
 * null. */
typedef struct lipc_metrics_log {
    FILE *f;
    char *path;
} lipc_metrics_log;

/* append false: truncate. */
lipc_status lipc_metrics_open(lipc_metrics_log *m, const char *path, bool append,
                              lipc_diags *d);
lipc_status lipc_metrics_write(lipc_metrics_log *m, const lipc_metric *f, int n,
                               lipc_diags *d);
/* Closes; returns LIPC_ERR_IO (with a diagnostic) if a buffered write failed. */
lipc_status lipc_metrics_close(lipc_metrics_log *m, lipc_diags *d);

/* ---- compiled models: description, state, entry points ---------------------
 *
 * What the runtime knows of a compiled model. The compiler describes the
 * model in plain tables (the runtime never sees the IR), and a backend
 * provides the entry points as function pointers, so JIT code, built
 * executables and the reference interpreter drive the same training loop and
 * certifier. */
/* ---- the description ---------------------------------------------------- */

/* Init rules, in the order of the model language's `init:` spellings. */
enum {
    LIPC_RT_INIT_DEFAULT,
    LIPC_RT_INIT_KAIMING,
    LIPC_RT_INIT_XAVIER,
    LIPC_RT_INIT_ORTHOGONAL,
    LIPC_RT_INIT_ZEROS,
    LIPC_RT_INIT_LIRESNET,
};

typedef struct lipc_param_desc {
    const char *name;       /* stable, from the YAML: "blocks.0.residual_0.conv2d_0.weight" */
    int rank;
    int d[4];
    size_t offset, numel;   /* in the parameter block */
    int init;               /* LIPC_RT_INIT_* */
    bool is_bias;
    int fan_in, fan_out;    /* c_in kh kw / in, c_out kh kw / out */
    int init_scale_div;     /* liresnet: the number of residual blocks L (scale L^-1/2) */
} lipc_param_desc;

/* A kernel trained as V = s (a * U) (METHOD.md section 2; the model's
 * `train: scaled_residuals`): s = L^-1/2, a one gain per output channel
 * (row), U the kernel's direction. The parameter block holds V, which every
 * kernel, bound and checkpoint reader uses; the optimiser moves a and U,
 * kept after the parameter block (at gain and base, in the same arrays as
 * the parameters and their moments), and V is recomputed after each step. */
typedef struct lipc_scaled {
    size_t offset, numel;   /* V in the parameter block */
    int rows;               /* output channels: the length of a */
    double s;               /* L^-1/2 */
    size_t gain, base;      /* a [rows] and U [numel], past n_param_elems */
} lipc_scaled;

/* How a factor of K_sub is bounded: the layer geometry a sound bound needs. */
typedef enum lipc_factor_kind {
    LIPC_FACTOR_CONV,       /* operator norm of a convolution */
    LIPC_FACTOR_DENSE,      /* operator norm of a dense layer */
    LIPC_FACTOR_CONST,      /* a constant (average pooling) */
    LIPC_FACTOR_LOOSE,      /* 1 + product of its children (unfolded residual) */
} lipc_factor_kind;

typedef struct lipc_factor_desc {
    const char *name;       /* the layer */
    lipc_factor_kind kind;
    int parent;             /* enclosing LOOSE factor, -1 on the main path */
    double value;           /* CONST */
    const char *method;     /* how the operator norm is bounded (see ir/ir.h) */
    /* CONV and DENSE: the weight, and the layer's shape */
    size_t w_offset;        /* in the parameter block */
    int c_in, c_out, h, w;  /* input channels and map (dense: c_in = in, h = w = 1) */
    int kh, kw, sh, sw;
    int pad[4];             /* top, bottom, left, right */
    int oh, ow;
    bool fold_identity;     /* the operator is W + I (centre tap) */
    size_t v_offset, v_len, u_offset, u_len;  /* power-iteration vectors in vec */
} lipc_factor_desc;

typedef struct lipc_model_desc {
    const char *name;
    int in_c, in_h, in_w;   /* one example; in_h = in_w = 1 for flat inputs */
    double in_lo, in_hi;
    int classes;
    size_t n_param_elems;
    int n_params;
    /* [n_state_params]: the model's n_params, then the tensors only training
     * keeps (a and U of each scaled kernel, named "scaled.<param>.a", ".u") */
    const lipc_param_desc *params;
    int n_state_params;
    size_t n_train_elems;   /* n_param_elems + what the scaled kernels add */
    int n_scaled;
    const lipc_scaled *scaled;
    size_t n_vec_elems;     /* power-iteration state */
    int n_factors;
    const lipc_factor_desc *factors;
    /* the head: logits = R x + b with R the weight [classes, head_in], rows
     * normalised when head_normalize */
    size_t head_offset;
    int head_in;
    bool head_normalize;
} lipc_model_desc;

/* Initial values of one parameter (double, [p->numel]) and of a whole block
 * (float, [n_train_elems]: the parameters, then the scaled kernels' a and U);
 * runtime/init.c states the rules. */
void lipc_init_param(const lipc_param_desc *p, uint64_t seed, double *v);
lipc_status lipc_init_params(const lipc_model_desc *m, uint64_t seed, float *params);
/* a = 1 and U = V / s for every scaled kernel of params [n_train_elems], then
 * V = s a U: the start of a run, or of one resumed from a checkpoint without them. */
void lipc_scaled_from_params(const lipc_model_desc *m, float *params);
/* V = fl(s a U) for the n scaled kernels k of params [n_train_elems]. */
void lipc_scaled_apply(const lipc_scaled *k, int n, float *params);

/* ---- training state and hyper-parameters ---------------------------------- */

/* Hyper-parameters of one training step; the training loop's schedules
 * compute lr and eps for each step. */
typedef struct lipc_hyper {
    int loss;               /* emma, margin, gloro, trades (ir/ir.h lipc_loss order) */
    int optimizer;          /* adamw, sgd (ir/ir.h lipc_optim order) */
    double lr, eps, weight_decay;
    double beta1, beta2, adam_eps;  /* AdamW */
    double momentum;                /* SGD (Nesterov) */
    double clip;                    /* global gradient-norm clipping; 0: off */
    double trades_lambda;
    int power_iters;                /* per step, warm-started */
} lipc_hyper;

/* What a training run carries from step to step (and checkpoints save):
 * float, as every backend stores it. */
typedef struct lipc_train_state {
    /* [n_train]: the parameter block [n_param_elems], then the scaled
     * kernels' a and U (lipc_scaled) */
    float *params;
    float *opt_m, *opt_v;   /* [n_train] AdamW moments; SGD uses opt_m */
    size_t n_train;
    int n_scaled;
    const lipc_scaled *scaled;
    float *vec;             /* [n_vec_elems] power-iteration vectors v, u */
    long step;              /* optimiser steps taken */
    /* the run the schedules were planned for (0: unknown), from a checkpoint */
    int planned_epochs, planned_batch;
} lipc_train_state;

typedef struct lipc_step_stats {
    double loss;            /* mean over the batch */
    double k_sub;           /* the bound used by the loss (power-iteration estimate) */
    double grad_norm;       /* before clipping */
    int n, correct, certified;  /* certified: correct and certified at hyper.eps */
} lipc_step_stats;

/* Per factor of K_sub; one extra entry at the end holds K_sub in .value. */
typedef struct lipc_bound_report {
    double value;           /* sigma estimate, constant, or 1 + K(body) */
    int iters;              /* power iterations run */
    double change;          /* relative change of sigma over the last 10 iterations */
} lipc_bound_report;

/* ---- entry points ------------------------------------------------------------ */

typedef struct lipc_model_ops {
    const char *backend;    /* "ref", "cpu", "cuda" */
    const char *device;     /* the hardware in words, for progress output (or NULL) */
    void *ctx;
    /* One training step on x [n, in numel], y [n]; updates st. */
    lipc_status (*train_step)(void *ctx, lipc_train_state *st, int n, const float *x,
                              const int32_t *y, const lipc_hyper *h, lipc_step_stats *out);
    /* A backend that keeps the training state on its device between steps
     * brings st up to date on the host (NULL: st is always current). The
     * runtime calls it before it reads st: validation, checkpoints, the end. */
    lipc_status (*sync_state)(void *ctx, lipc_train_state *st);
    /* logits [n, classes] */
    lipc_status (*predict)(void *ctx, const float *params, int n, const float *x,
                           double *logits);
    /* logits [n, classes] as predict, and logit_err [n, classes]: a rigorous
     * elementwise bound |logits - f(x)| <= logit_err against the exact
     * real-number network with these (float) parameters on this (float)
     * input, by running error analysis (docs/soundness.md). NULL when the
     * backend has none: certification then trusts the logits as exact and
     * says so (lipc_cert_summary.rounding_accounted). */
    lipc_status (*predict_bounded)(void *ctx, const float *params, int n, const float *x,
                                   double *logits, double *logit_err);
    /* As predict_bounded in one pass instead of two: the error of each
     * example is bounded in l2 through sigma [n_factors], an upper bound on
     * every factor of K_sub. The runtime refines with predict_bounded the
     * points where the difference could change a decision
     * (lipc_certify_dataset). LIPC_ERR_UNSUPPORTED: a graph it has no rule
     * for. NULL when the backend has none. */
    lipc_status (*predict_l2)(void *ctx, const float *params, const double *sigma, int n,
                              const float *x, double *logits, double *logit_err);
    /* The gradient of <dlogits, logits> w.r.t. the input: x [n, in numel],
     * dlogits [n, classes] -> dx [n, in numel] (a vector-Jacobian product). */
    lipc_status (*input_grad)(void *ctx, const float *params, int n, const float *x,
                              const double *dlogits, double *dx);
    /* Power iteration to convergence (relative change < tol or max_iters),
     * warm-started from vec (updated); report [n_factors + 1]. */
    lipc_status (*lipschitz)(void *ctx, const float *params, float *vec, int max_iters,
                             double tol, lipc_bound_report *report);
    int max_batch;          /* largest n the entry points take (0: any) */
} lipc_model_ops;

/* ---- certification (runtime/certify.c) ------------------------------------
 *
 * Deterministic l2 certification from logits and the head's
 * pair bounds (METHOD.md section 1), in double.
 *
 * Depends on support/ only (runtime must not depend on ir/ or backend/). The
 * caller supplies the pair-bound matrix
 *
 *   kpair [m, m],  kpair[j * m + i] = K_sub * ||w_j - w_i||_2
 *
 * built from a SOUND upper bound K_sub (lipc_kpair below computes
 * it from the head rows). A point with logits f is certified at radius eps iff
 * its top logit f_j is unique and
 *
 *   f_j - f_i > eps * kpair[j, i] + float_slack     for every i != j  (strict)
 *
 * evaluated through the certified radius
 *
 *   r = min_{i != j} (f_j - f_i - float_slack) / kpair[j, i]
 *
 * (a pair with kpair == 0 contributes +inf when its slackened margin is > 0,
 * and 0 otherwise; r is clamped at 0), and "certified at eps" is DEFINED as
 * r > eps. So r > eps <=> certified holds exactly, also at equality.
 * The division cannot loosen the test: rounding to nearest is monotone, so for
 * a double eps, fl(a / K) > eps implies a / K > eps, hence a > eps K exactly.
 * The subtraction f_j - f_i is exact for float logits (two floats whose
 * exponents differ by up to 29 have an exact double difference); the rest of
 * the rounding (f_j - f_i - float_slack) is far below any useful slack.
 *
 * float_slack is a uniform allowance subtracted from every margin (>= 0; 0:
 * none). The rounding of the logits themselves is accounted per point by the
 * _slack variants below: given logit_err [m] with |f_k - f_k(exact)| <=
 * logit_err[k] (a backend's predict_bounded), the pair (j, i) needs
 *
 *   f_j - f_i - (logit_err[j] + logit_err[i]) - float_slack > eps * kpair[j, i]
 *
 * (per pair, not 2 max_k e_k: exact f_j - f_i >= f~_j - f~_i - e_j - e_i is
 * all the argument uses). There the margin is computed rounding DOWN
 * (nextafter towards -inf after each operation), so the test is rigorous for
 * double logits too; then r > eps implies the exact margin exceeds eps K.
 * A NaN or negative logit_err makes the point invalid; +inf only uncertifiable.
 */
/* ---- one point ---------------------------------------------------------------- */

typedef struct lipc_cert_point {
    int pred;       /* the unique argmax; -1 for a tie at the top or invalid input */
    double radius;  /* certified radius >= 0 (+inf possible); 0 when pred == -1 */
    bool tie;       /* two or more classes share the top logit */
    bool invalid;   /* NaN/Inf in the logits, or a NaN/Inf/negative entry in
                     * the prediction's row of kpair */
} lipc_cert_point;

/* Certifies one point.
 *   f      [m]     logits
 *   kpair  [m, m]  pair bounds (row pred is read; pass the full matrix) */
lipc_cert_point lipc_certify_point(int m, const double *f, const double *kpair,
                                   double float_slack);
/* The same for float logits (the fast backends' output); each logit is
 * widened to double exactly. */
lipc_cert_point lipc_certify_point_f32(int m, const float *f, const double *kpair,
                                       double float_slack);
/* The same with the logits' rounding error bounds err [m] (see above). */
lipc_cert_point lipc_certify_point_slack(int m, const double *f, const double *err,
                                         const double *kpair, double float_slack);

/* ---- a whole evaluation -------------------------------------------------------- */

#define LIPC_CERT_MAX_EPS 16
/* Histogram of the certified radii of correctly predicted points: bin b holds
 * radii in [b * LIPC_CERT_BIN_WIDTH, (b + 1) * LIPC_CERT_BIN_WIDTH), the last
 * bin everything from (LIPC_CERT_N_BINS - 1) * LIPC_CERT_BIN_WIDTH up,
 * including +inf. 40 bins of 0.05 cover the radii of METHOD.md (up to 1.58). */
#define LIPC_CERT_N_BINS 41
#define LIPC_CERT_BIN_WIDTH 0.05

/* Counts accumulated over batches; every field is plain data, ready to write
 * as JSON (lipc_cert_summary_json). */
typedef struct lipc_cert_summary {
    int n_eps;
    double eps[LIPC_CERT_MAX_EPS];          /* the radii evaluated, >= 0 */
    double float_slack;                      /* as passed to init */
    long n;                                  /* points seen */
    long n_correct;                          /* unique argmax == label */
    long n_tie;                              /* top logit shared: not correct, not certified */
    long n_invalid;                          /* NaN/Inf input or a label out of range */
    long n_certified[LIPC_CERT_MAX_EPS];     /* certified at eps[k], right or wrong */
    long n_vra[LIPC_CERT_MAX_EPS];           /* correct AND certified at eps[k] */
    long hist[LIPC_CERT_N_BINS];             /* radii of correct points */
    double min_radius_correct;               /* +inf until a correct point is seen */
    double sum_radius_correct;               /* finite radii only (for the mean) */
    long n_inf_radius;                       /* correct points with radius +inf */
    bool error;                              /* n_invalid > 0: the caller must fail loudly */
    long n_err_bounded;                      /* points whose logits came with rounding
                                              * error bounds (lipc_certify_batch_slack) */
    bool rounding_accounted;                 /* n > 0 and every point seen had them: the
                                              * certificates hold for the exact network */
    double max_logit_err;                    /* the largest logit error bound seen (0: none) */
    long n_refined;                          /* points certified from ops->predict_l2 whose
                                              * bounds were too loose to decide, re-run
                                              * through ops->predict_bounded */
} lipc_cert_summary;

/* Starts an empty summary. LIPC_ERR_INPUT when n_eps is outside
 * [0, LIPC_CERT_MAX_EPS], an eps is negative or not finite, or float_slack is
 * negative or not finite (the caller reports which; nothing is recorded). */
lipc_status lipc_cert_summary_init(lipc_cert_summary *s, int n_eps, const double *eps,
                                   double float_slack);

/* Certifies a batch and adds it to s.
 *   logits  [n, m]
 *   labels  [n]      a label outside [0, m) makes the point invalid
 *   kpair   [m, m]
 *   radius  [n]      written with each point's radius (0 when invalid or
 *                    tied), or NULL */
void lipc_certify_batch(lipc_cert_summary *s, int n, int m, const double *logits,
                        const int32_t *labels, const double *kpair, double *radius);
void lipc_certify_batch_f32(lipc_cert_summary *s, int n, int m, const float *logits,
                            const int32_t *labels, const double *kpair, double *radius);
/* The same with logit_err [n, m], the logits' rounding error bounds (a
 * backend's predict_bounded): each pair's margin loses e_j + e_i on top of
 * s->float_slack, computed rounding down. */
void lipc_certify_batch_slack(lipc_cert_summary *s, int n, int m, const double *logits,
                              const double *logit_err, const int32_t *labels,
                              const double *kpair, double *radius);

/* Whether tighter logit error bounds than err [m] could change what s
 * records for this point: its prediction (a margin within e_j + e_i), or a
 * certificate at one of s's radii (the radius with the errors taken against
 * the margin at or below eps, the radius with them taken for it above).
 * Invalid and tied points need it too. */
bool lipc_cert_undecided(const lipc_cert_summary *s, int m, const double *logits,
                         const double *err, const double *kpair);

/* Fractions over the points seen (0 when none). */
double lipc_cert_clean_accuracy(const lipc_cert_summary *s);
double lipc_cert_vra(const lipc_cert_summary *s, int k);

/* Appends s as one JSON object:
 *   {"n": .., "correct": .., "clean_accuracy": .., "ties": .., "invalid": ..,
 *    "error": .., "float_slack": .., "rounding_accounted": .., "max_logit_err": ..,
 *    "eps": [..], "certified": [..], "vra_count": [..],
 *    "vra": [..], "radius_histogram": {"bin_width": .., "counts": [..]},
 *    "min_radius_correct": .., "mean_finite_radius_correct": .., "infinite_radius": ..}
 * Non-finite numbers (an infinite minimum radius) are written as null. */
void lipc_cert_summary_json(const lipc_cert_summary *s, lipc_buf *out);

/* kpair[j, i] = k_sub * ||r_j - r_i||_2 for every pair (zero diagonal): the
 * one place the head's pair bounds are computed, for the losses and for
 * certification (the certifier takes this matrix).
 *   r      [m, d]   effective head rows
 *   kpair  [m, m]   written */
void lipc_kpair(int m, int d, const double *r, double k_sub, double *kpair);
/* The same, rounded UP for certification: kpair[j, i] >= k_sub ||r_j - r_i||_2
 * for the EXACT rows r, given the computed rows r~ [m, d] with
 * ||r~_o - r_o||_2 <= row_err for every row (0: r~ is exact, e.g. float
 * weights widened; lipc_head_kpair passes the bound of a row normalisation).
 * The diagonal is 0. runtime/certify.c states the argument. */
void lipc_kpair_upper(int m, int d, const double *r, double row_err, double k_sub,
                      double *kpair);

/* ---- checkpoints (runtime/checkpoint.c) ---------------------------------- */

/* Writes params, optimiser moments and power-iteration vectors of st by the
 * model's names, with metadata, atomically (temporary file, then rename). */
lipc_status lipc_checkpoint_save(const char *path, const lipc_model_desc *m,
                                 const lipc_train_state *st, const lipc_st_meta *extra,
                                 int n_extra, lipc_diags *d);
/* Reads a checkpoint into st (allocated for m). Every parameter must be
 * there with its shape; with train_state, optimiser moments and vectors are
 * read too (missing ones start at zero, with a warning). st->step is set. */
lipc_status lipc_checkpoint_load(const char *path, const lipc_model_desc *m,
                                 lipc_train_state *st, bool train_state, lipc_diags *d);

/* ---- training (runtime/train.c) ---------------------------------------------- */

typedef struct lipc_train_options {
    int epochs, batch;
    lipc_hyper hyper;           /* lr: the peak; eps: the nominal radius */
    double eps_start, eps_end;  /* fractions of eps at the start and after the ramp */
    double eps_ramp;            /* fraction of all steps spent ramping */
    double warmup_epochs;       /* linear learning-rate warm-up, then cosine */
    lipc_augment aug;
    uint64_t seed;
    const char *out;            /* checkpoint written after every epoch (NULL: none) */
    const char *metrics;        /* JSON lines, one per epoch (NULL: none) */
    const lipc_dataset *val;    /* held-out split for validation (NULL: none) */
    int val_every;              /* epochs between validations (0: at the end only) */
    FILE *log;                  /* progress output (NULL: stderr) */
    volatile int *stop;         /* set asynchronously (Ctrl-C): save and return */
} lipc_train_options;

typedef struct lipc_train_result {
    long steps;                 /* taken in this call */
    int epochs;                 /* completed in all (a resumed run counts earlier ones) */
    double seconds, images_per_s;
    double train_loss, train_acc, train_cert, k_sub;   /* the last epoch */
    double val_acc, val_vra, val_k_sub;                 /* the last validation (NaN: none) */
    bool interrupted;
} lipc_train_result;

lipc_status lipc_train_state_alloc(const lipc_model_desc *m, lipc_train_state *st);
/* The length of st's training vector: st->n_train, or n_param_elems for a
 * state set up by hand (n_train 0). */
size_t lipc_train_len(const lipc_train_state *st, size_t n_param_elems);
void lipc_train_state_free(lipc_train_state *st);

/* The learning rate and radius at step t of total (per_epoch steps an epoch). */
double lipc_schedule_lr(const lipc_train_options *o, long t, long total, long per_epoch);
double lipc_schedule_eps(const lipc_train_options *o, long t, long total);

/* False (with a warning in d) when st resumes a run planned for other epochs
 * or batch than o: the schedules then change at the resume point. */
bool lipc_resume_check(const lipc_train_state *st, const lipc_train_options *o, lipc_diags *d);

/* Trains from st (fresh or resumed: st->step steps already taken) to
 * o->epochs epochs, writing o->out after every epoch and on interruption. */
lipc_status lipc_train_run(const lipc_model_desc *m, const lipc_model_ops *ops,
                           const lipc_dataset *train, const lipc_train_options *o,
                           lipc_train_state *st, lipc_train_result *res, lipc_diags *d);

/* Does the dataset fit the model's input and classes? (An error in d if not.) */
bool lipc_dataset_fits(const lipc_model_desc *m, const lipc_dataset *ds, lipc_diags *d);

/* The head's pair bounds [classes, classes] for a given K_sub, rounded up
 * (lipc_kpair_upper): upper bounds on K_sub ||r_j - r_i|| for the exact
 * (normalised) rows of the float head weights. */
lipc_status lipc_head_kpair(const lipc_model_desc *m, const float *params, double k_sub,
                            double *kpair);

/* Predicts every example of ds in batches and adds them to s (initialised by
 * the caller with its radii); radius [ds->n] gets each certified radius
 * (NULL: not kept). With ops->predict_bounded the logits' rounding is
 * accounted (lipc_certify_batch_slack; s->rounding_accounted); without it,
 * ops->predict's logits are trusted as exact. With sigma [m->n_factors]
 * (upper bounds on each factor of K_sub; NULL: none) and ops->predict_l2,
 * the points are first predicted in one pass with l2 bounds, and only
 * those lipc_cert_undecided names go through predict_bounded. Both bounds
 * are sound, so every certificate is; a point certified at an eps within
 * ~1e-9 of its radius may differ between the two. */
lipc_status lipc_certify_dataset(const lipc_model_desc *m, const lipc_model_ops *ops,
                                 const float *params, double k_sub, const double *sigma,
                                 const lipc_dataset *ds, int batch, lipc_cert_summary *s,
                                 double *radius);

/* ---- an empirical lower bound (runtime/lower_bound.c) ---------------------- */

typedef struct lipc_lower_bound {
    double value;           /* a lower bound on the Lipschitz constant before the head */
    int point;              /* the example that gave it (-1: none) */
    long evaluated;         /* points evaluated */
    double seconds;
} lipc_lower_bound;

/* max over the first n_points examples of ds of a lower bound on ||J(x)||,
 * J the Jacobian of the network before the head (runtime/lower_bound.c
 * states the argument): how tight K_sub is, as lower / K_sub. Needs
 * ops->input_grad (LIPC_ERR_UNSUPPORTED otherwise). */
lipc_status lipc_empirical_lower_bound(const lipc_model_desc *m, const lipc_model_ops *ops,
                                       const float *params, const lipc_dataset *ds,
                                       int n_points, lipc_lower_bound *out);

/* ---- sound bounds (runtime/bounds.c) ---- */

/* A rigorous upper bound on one factor of K_sub: the operator norm (l2 -> l2,
 * at the layer's true input size) of a conv or dense layer (folded: W + I),
 * computed in double and rounded up, so that it holds for the exact real
 * numbers; runtime/bounds.c states the argument, including the rounding of
 * the DFT, the Gram matrices and LAPACK. method:
 *   "reshaped-kernel"     conv with kh <= sh, kw <= sw, no padding: exact
 *   "conv-fft"            stride-1 conv: circulant embedding, max over frequencies
 *   "polyphase-fft"       strided conv: the same, on its polyphase rewrite
 *   "conv-gram-band"      conv small enough (lipc_conv_band_fits with the
 *                         budget of lipc_bounds_band_budget): the exact
 *                         operator's Gram band, certified by a Cholesky
 *   "stride-1-fft-upper"  strided conv, cruder: the stride-1 conv's bound (a
 *                         fallback, and lipc_conv_circulant_bound's)
 *   "dense-svd"           dense: exact
 *   "const"               CONST: the value rounded up
 *   "1 + K(body)"         LOOSE (lipc_model_sound_bounds only) */
typedef struct lipc_sound_bound {
    double value;
    const char *method;     /* a string literal */
    double seconds;         /* wall time spent on this factor */
} lipc_sound_bound;

/* CONV, DENSE and CONST factors (LOOSE: LIPC_ERR_INPUT; it needs its
 * children). params: the float parameter block (weights at f->w_offset).
 * NaN or Inf in the weights, or a geometry that is not a layer's: an error in
 * d and LIPC_ERR_INPUT, *out untouched. LIPC_ERR_NOMEM when out of memory. */
lipc_status lipc_factor_sound_bound(const lipc_factor_desc *f, const float *params,
                                    lipc_sound_bound *out, lipc_diags *d);
/* The largest conv (about n kd^2 operations, n = c_in h w, kd its Gram band's
 * half-width) bounded through its exact operator ("conv-gram-band",
 * runtime/bounds.c); larger ones by the circulant bound. Returns the old value
 * (default 2e11, a few seconds; 0 turns the method off). */
double lipc_bounds_band_budget(double ops);

/* Every factor of m, and K_sub: the product of the main-path factors (parent
 * -1), a LOOSE factor being 1 + the product of its children, every product
 * and sum rounded up. per_factor [m->n_factors]. On error *k_sub is NaN. */
lipc_status lipc_model_sound_bounds(const lipc_model_desc *m, const float *params,
                                    lipc_sound_bound *per_factor, double *k_sub,
                                    lipc_diags *d);

/* The same, each factor's bound as a plain value in sigma [m->n_factors] (what
 * lipc_certify_dataset and ops->predict_l2 take). */
lipc_status lipc_model_sound_sigma(const lipc_model_desc *m, const float *params, double *sigma,
                                   double *k_sub, lipc_diags *d);

/* The circulant-embedding bound of any conv factor (strided: that of the
 * stride-1 conv) on an nh x nw torus. Every torus at least as large as
 * lipc_conv_min_circulant's gives a sound bound; lipc_factor_sound_bound uses
 * the smallest. A smaller torus: LIPC_ERR_INPUT. */
void lipc_conv_min_circulant(const lipc_factor_desc *f, int *nh, int *nw);
lipc_status lipc_conv_circulant_bound(const lipc_factor_desc *f, const float *params, int nh,
                                      int nw, lipc_sound_bound *out, lipc_diags *d);

#endif
