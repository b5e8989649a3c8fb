/* backend/llvm/internal.h: what emit.c and jit.c share; never included from
 * another folder (the public entry points are in backend/backend.h). */
#ifndef LIPC_BACKEND_LLVM_INTERNAL_H
#define LIPC_BACKEND_LLVM_INTERNAL_H

#include <llvm-c/Core.h>

#include "backend/backend.h"

/* The one function a forward module defines:
 *   void lipc_forward(const float *params, const float *x, float *logits,
 *                     float *arena, int64_t n)                              */
#define LIPC_LLVM_FORWARD_NAME "lipc_forward"

/* Emits lipc_forward for the FORWARD steps of p (a FORWARD or TRAIN program)
 * into a new module of ctx, unoptimised and verified. NULL with an error in d
 * when a step's op has no emitter (or, a compiler bug, the module does not
 * verify). */
LLVMModuleRef lipc_llvm_emit_forward(const lipc_program *p, LLVMContextRef ctx, lipc_diags *d);

#endif
