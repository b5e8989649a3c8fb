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
 *   fashion-mnist, mnist   IDX files, looked up in $LIPC_DATA_DIR/NAME, data/NAME,
 *                          /usr/share/datasets/NAME, /usr/local/share/datasets/NAME
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

#endif
