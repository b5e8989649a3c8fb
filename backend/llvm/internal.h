/* backend/llvm/internal.h: what emit.c, jit.c and exec.c share; never included
 * from another folder (the public entry points are in backend/backend.h). */
#ifndef LIPC_BACKEND_LLVM_INTERNAL_H
#define LIPC_BACKEND_LLVM_INTERNAL_H

#include <llvm-c/Core.h>
#include <llvm-c/LLJIT.h>

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
} lipc_kinfo;

/* The emitted module: kernels for every node of the training program (and so
 * of the forward program, whose nodes are the same), named
 * "<kind>.<node name>". info[kind][node id] describes them. */
typedef struct lipc_kmodule {
    LLVMModuleRef mod;
    lipc_kinfo *info[LIPC_K_KINDS];
    int n_ids;
    int vl;             /* floats per vector register the kernels use */
} lipc_kmodule;

/* Emits the kernels of a TRAIN program (whose steps hold every node) into a
 * new module of ctx, verified. vl is the vector width in floats (16 for
 * AVX-512, 8 for AVX2). False with an error in d when an op has no emitter;
 * the caller frees km with lipc_kmodule_free either way. */
bool lipc_llvm_emit(const lipc_program *train, LLVMContextRef ctx, int vl, lipc_kmodule *km,
                    lipc_diags *d);
void lipc_kmodule_free(lipc_kmodule *km);

/* a lipc_task_fn: args is a lipc_kargs */
typedef lipc_task_fn lipc_kernel_fn;

/* The CPU the portable target (--portable) compiles for: AVX2 and FMA. */
#define LIPC_PORTABLE_CPU "x86-64-v3"

/* The compiled kernels of a model: fn[kind][node id] (NULL where absent). */
typedef struct lipc_jit {
    LLVMOrcLLJITRef jit;        /* owns the machine code */
    lipc_kinfo *info[LIPC_K_KINDS];
    lipc_kernel_fn *fn[LIPC_K_KINDS];
    int n_ids, vl;
    double compile_seconds;     /* emit + optimise + code generation */
} lipc_jit;

/* Emits, optimises (default<O3> for the host, or the portable CPU) and
 * compiles the kernels of a TRAIN program. */
lipc_status lipc_jit_compile(const lipc_program *train, bool portable, lipc_jit *j,
                             lipc_diags *d);
void lipc_jit_free(lipc_jit *j);

/* "<kind>.<node name>" into buf. */
void lipc_kernel_name(lipc_kkind kind, const lipc_node *n, char *buf, size_t size);

#endif
