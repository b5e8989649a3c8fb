/* backend/llvm/internal.h: what emit.c and jit.c share; never included from
 * another folder (the public entry points are in backend/backend.h; the
 * kernels' C interface is backend/cpu/kernels.h). */
#ifndef LIPC_BACKEND_LLVM_INTERNAL_H
#define LIPC_BACKEND_LLVM_INTERNAL_H

#include <llvm-c/Core.h>
#include <llvm-c/LLJIT.h>

#include "backend/cpu/kernels.h"

/* The emitted module: kernels for every node of the training program (and so
 * of the forward program, whose nodes are the same), named
 * "<kind>.<node name>". info[kind][node id] describes them. */
typedef struct lipc_kmodule {
    LLVMModuleRef mod;
    lipc_kinfo *info[LIPC_K_KINDS];
    int n_ids;
    int vl;             /* floats per vector register the kernels use */
} lipc_kmodule;

/* Which kernels lipc_llvm_emit makes: the float ones (training, inference,
 * power iteration) and the double ones (certified inference). */
enum { LIPC_EMIT_FLOAT = 1, LIPC_EMIT_DOUBLE = 2, LIPC_EMIT_ALL = 3 };

/* Emits the kernels of a TRAIN program (whose steps hold every node) into a
 * new module of ctx, verified. vl is the vector width in floats (16 for
 * AVX-512, 8 for AVX2). False with an error in d when an op has no emitter;
 * the caller frees km with lipc_kmodule_free either way. */
bool lipc_llvm_emit(const lipc_program *train, LLVMContextRef ctx, int vl, unsigned parts,
                    lipc_kmodule *km, lipc_diags *d);
/* The same for one shard of shards: the kernels of the nodes dealt to it
 * (conv2d and dense in turn, the others likewise); the shards together are
 * the whole, each kernel in one of them. */
bool lipc_llvm_emit_shard(const lipc_program *train, LLVMContextRef ctx, int vl, unsigned parts,
                          int shard, int shards, lipc_kmodule *km, lipc_diags *d);
void lipc_kmodule_free(lipc_kmodule *km);

/* The CPU the portable target (--portable) compiles for: AVX2 and FMA. */
#define LIPC_PORTABLE_CPU "x86-64-v3"

/* Emits, optimises (default<O2> for the host, or the portable CPU) and
 * compiles the kernels of a TRAIN program; k owns the JIT. */
lipc_status lipc_jit_compile(const lipc_program *train, bool portable, lipc_kernels *k,
                             lipc_diags *d);


#endif
