/* backend/cpu/kernels.h: the C interface of the cpu target's compiled kernels,
 * shared by the code that makes them (backend/llvm: JIT or object file) and
 * the code that runs them (backend/cpu/exec.c). Free of LLVM: a built
 * executable links the runner, not the compiler. */
#ifndef LIPC_BACKEND_CPU_KERNELS_H
#define LIPC_BACKEND_CPU_KERNELS_H

#include "backend/backend.h"

/* Every kernel has one C type,
 *
 *   void kernel(const lipc_kargs *a, int64_t lo, int64_t hi)
 *
 * and does the part [lo, hi) of its range: examples of the batch, or blocks
 * of output channels (a kernel's range is in lipc_kinfo). That is the task
 * type of the runtime's thread pool, so the driver (exec.c) hands kernels to
 * lipc_pool_run directly. The pointers a kernel reads depend on its kind: */
#define LIPC_KARGS_PTRS 6
typedef struct lipc_kargs {
    float *p[LIPC_KARGS_PTRS];
    int64_t n;          /* the batch */
    float scale;        /* weight-gradient kernels: dW += scale * sum */
} lipc_kargs;

typedef enum lipc_kkind {
    /* p0 in0, p1 in1 (add), p2 out, p3 weight, p4 bias          out = op(in) */
    LIPC_K_FORWARD,
    /* p0 dout, p1 din0, p2 din1 (add), p3 in0, p4 out, p5 weight
     * (conv fast path: the flipped, transposed weight)   din += J^T dout */
    LIPC_K_BACKWARD,
    /* p0 in0, p1 dout, p2 dweight, p3 dbias   dW += scale * sum_b dout x^T */
    LIPC_K_WGRAD,
    /* patch convs (kernel == stride, no padding), per example:
     * p0 in, p1 patches [c kh kw, oh ow]      (space to depth) */
    LIPC_K_PATCHES,
    /* p0 patch gradient, p1 din              din += depth to space */
    LIPC_K_UNPATCH,
    /* FORWARD and PATCHES on doubles (the pointers are double *), for
     * certified inference */
    LIPC_K_FORWARD64,
    LIPC_K_PATCHES64,
    LIPC_K_KINDS
} lipc_kkind;

extern const char *const lipc_kkind_names[LIPC_K_KINDS];

/* What the driver needs to know about one emitted kernel. */
typedef struct lipc_kinfo {
    bool present;
    int64_t blocks;     /* the range: 0 = the batch (examples), else this many
                         * blocks of output channels (any batch) */
    bool flipped;       /* BACKWARD of a conv: p5 is the flipped, transposed
                         * weight W'[i, o, kh-1-y, kw-1-x] = W[o, i, y, x] */
    bool patch;         /* a patch conv: FORWARD and WGRAD read, BACKWARD
                         * writes, patches [n, c kh kw, oh ow] made by the
                         * PATCHES kernel (and returned by UNPATCH); its
                         * flipped weight is the transpose W'[(i,y,x), o] */
    bool writes_din;    /* BACKWARD: writes every element of din0 without
                         * reading it, so the caller need not zero it first */
} lipc_kinfo;

/* a lipc_task_fn: args is a lipc_kargs */
typedef lipc_task_fn lipc_kernel_fn;

/* The compiled kernels of a model: fn[kind][node id] (NULL where absent) and
 * what the driver needs to know about each; owner holds the machine code (a
 * JIT) and is released with owner_free (NULL for code linked in). */
typedef struct lipc_kernels {
    lipc_kinfo *info[LIPC_K_KINDS];
    lipc_kernel_fn *fn[LIPC_K_KINDS];
    int n_ids, vl;
    double compile_seconds;     /* emit + optimise + code generation */
    void *owner;
    void (*owner_free)(void *owner);
    /* the certification kernels (FORWARD64, PATCHES64) when they are made on
     * first use (the JIT), else NULL: adds them to k */
    lipc_status (*more)(struct lipc_kernels *k, lipc_diags *d);
    const lipc_program *train;  /* for more */
    bool portable;
} lipc_kernels;

void lipc_kernels_free(lipc_kernels *k);

/* "<kind>.<node name>" into buf: the symbol of a kernel. */
void lipc_kernel_name(lipc_kkind kind, const lipc_node *n, char *buf, size_t size);

/* One entry of a built executable's kernel table (emitted with the kernels). */
typedef struct lipc_kernel_entry {
    const char *name;
    lipc_kernel_fn fn;
    int64_t blocks;
    int32_t flags;              /* 1 flipped, 2 patch, 4 writes_din */
} lipc_kernel_entry;

/* Kernels for a TRAIN program from such a table, by name: false (with an
 * error in d) when one the program needs is missing. */
bool lipc_kernels_from_table(const lipc_program *train, const lipc_kernel_entry *table, int n,
                             lipc_kernels *k, lipc_diags *d);

/* The cpu target's runner on given kernels (moved into it). */
lipc_status lipc_cpu_new(const lipc_program *train, const lipc_program *forward,
                         const lipc_cpu_options *o, lipc_kernels *k, lipc_cpu **out);

/* The "cpu" target from a kernel source: the tables every target shares
 * (backend/describe.c), then source(train, portable, ctx, k, d) for the
 * kernels, then the runner and its entry points. */
typedef lipc_status (*lipc_kernel_source)(const lipc_program *train, bool portable, void *ctx,
                                          lipc_kernels *k, lipc_diags *d);
lipc_status lipc_compile_cpu(lipc_graph *g, lipc_kernel_source source, void *ctx,
                             const lipc_cpu_options *o, lipc_diags *d, lipc_compiled **out);

#endif
