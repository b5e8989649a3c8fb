/* backend/llvm/jit.c: optimise an emitted forward module for the host and run
 * it through ORC's LLJIT.
 *
 * One LLJIT per compiled function: it owns the machine code, and freeing the
 * function frees it. The module is optimised before it is handed to the JIT,
 * with the new pass manager's default<O3> pipeline and a target machine for
 * the host CPU and its features (AVX-512 where present), so the vectoriser's
 * cost model is the one of the machine that runs the code; the JIT then only
 * generates code. The target triple and data layout come from the JIT itself,
 * so the optimiser and the code generator agree on them.
 *
 * Errors here are environment errors (LLVM could not do something): they go to
 * d as an error without a source location, and the status is
 * LIPC_ERR_UNSUPPORTED.
 */
#include "backend/llvm/internal.h"

#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

typedef void (*forward_fn)(const float *params, const float *x, float *logits,
                           float *arena, int64_t n);

struct lipc_llvm_fn {
    LLVMOrcLLJITRef jit;
    forward_fn fn;
    size_t arena_per_example;
};

/* Reports an LLVMErrorRef (consumed) as "llvm: what: message". */
static lipc_status llvm_error(lipc_diags *d, const char *what, LLVMErrorRef err)
{
    char *msg = LLVMGetErrorMessage(err);
    lipc_diag_error(d, LIPC_NO_LOC, "llvm: %s: %s", what, msg);
    LLVMDisposeErrorMessage(msg);
    return LIPC_ERR_UNSUPPORTED;
}

static void init_native(void)
{
    /* idempotent inside LLVM */
    LLVMInitializeNativeTarget();
    LLVMInitializeNativeAsmPrinter();
}

/* default<O3> with a host target machine for the given triple. */
static lipc_status optimise(LLVMModuleRef mod, const char *triple, lipc_diags *d)
{
    LLVMTargetRef target;
    char *err = NULL;
    if (LLVMGetTargetFromTriple(triple, &target, &err)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm: no target for '%s': %s", triple, err);
        LLVMDisposeMessage(err);
        return LIPC_ERR_UNSUPPORTED;
    }
    char *cpu = LLVMGetHostCPUName(), *features = LLVMGetHostCPUFeatures();
    LLVMTargetMachineRef tm =
        LLVMCreateTargetMachine(target, triple, cpu, features, LLVMCodeGenLevelAggressive,
                                LLVMRelocDefault, LLVMCodeModelJITDefault);
    /* the function's attributes steer the vectoriser and the code generator */
    for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f))
        if (!LLVMIsDeclaration(f)) {
            LLVMAddTargetDependentFunctionAttr(f, "target-cpu", cpu);
            LLVMAddTargetDependentFunctionAttr(f, "target-features", features);
        }
    LLVMDisposeMessage(cpu);
    LLVMDisposeMessage(features);
    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(opts, 1);
    LLVMErrorRef e = LLVMRunPasses(mod, "default<O3>", tm, opts);
    LLVMDisposePassBuilderOptions(opts);
    LLVMDisposeTargetMachine(tm);
    return e ? llvm_error(d, "optimising the forward module", e) : LIPC_OK;
}

void lipc_llvm_fn_free(lipc_llvm_fn *f)
{
    if (!f)
        return;
    if (f->jit) {
        LLVMErrorRef e = LLVMOrcDisposeLLJIT(f->jit);
        if (e)
            LLVMConsumeError(e);
    }
    lipc_free(f);
}

lipc_status lipc_llvm_forward_compile(const lipc_program *p, lipc_diags *d, lipc_llvm_fn **out)
{
    *out = NULL;
    init_native();
    lipc_llvm_fn *f = lipc_calloc(1, sizeof *f);
    if (!f)
        return LIPC_ERR_NOMEM;
    f->arena_per_example = p->arena_per_example;

    LLVMOrcJITTargetMachineBuilderRef jtmb;
    LLVMErrorRef e = LLVMOrcJITTargetMachineBuilderDetectHost(&jtmb);
    if (e) {
        lipc_llvm_fn_free(f);
        return llvm_error(d, "detecting the host", e);
    }
    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb);
    if ((e = LLVMOrcCreateLLJIT(&f->jit, builder))) { /* consumes builder */
        f->jit = NULL;
        lipc_llvm_fn_free(f);
        return llvm_error(d, "creating the JIT", e);
    }

    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    int errors = d->n_errors;
    LLVMModuleRef mod = lipc_llvm_emit_forward(p, ctx, d);
    if (!mod) {
        LLVMOrcDisposeThreadSafeContext(tsc);
        lipc_llvm_fn_free(f);
        return d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
    }
    LLVMSetTarget(mod, LLVMOrcLLJITGetTripleString(f->jit));
    LLVMSetDataLayout(mod, LLVMOrcLLJITGetDataLayoutStr(f->jit));
    lipc_status st = optimise(mod, LLVMOrcLLJITGetTripleString(f->jit), d);
    if (st != LIPC_OK) {
        LLVMDisposeModule(mod);
        LLVMOrcDisposeThreadSafeContext(tsc);
        lipc_llvm_fn_free(f);
        return st;
    }
    /* the thread-safe module owns mod and shares the context */
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, tsc);
    LLVMOrcDisposeThreadSafeContext(tsc);
    if ((e = LLVMOrcLLJITAddLLVMIRModule(f->jit, LLVMOrcLLJITGetMainJITDylib(f->jit), tsm))) {
        lipc_llvm_fn_free(f);
        return llvm_error(d, "adding the forward module", e);
    }
    /* code generation happens here, on the first lookup */
    LLVMOrcExecutorAddress addr = 0;
    if ((e = LLVMOrcLLJITLookup(f->jit, &addr, LIPC_LLVM_FORWARD_NAME))) {
        lipc_llvm_fn_free(f);
        return llvm_error(d, "compiling " LIPC_LLVM_FORWARD_NAME, e);
    }
    f->fn = (forward_fn)(uintptr_t)addr;
    *out = f;
    return LIPC_OK;
}

lipc_status lipc_llvm_forward_run(lipc_llvm_fn *f, const float *params, int n, const float *x,
                                  float *logits)
{
    float *arena = lipc_malloc(sizeof(float) * (f->arena_per_example * (size_t)n + 1));
    if (!arena)
        return LIPC_ERR_NOMEM;
    f->fn(params, x, logits, arena, (int64_t)n);
    lipc_free(arena);
    return LIPC_OK;
}

lipc_status lipc_llvm_forward_ir(const lipc_program *p, lipc_diags *d, lipc_buf *out)
{
    LLVMContextRef ctx = LLVMContextCreate();
    int errors = d->n_errors;
    LLVMModuleRef mod = lipc_llvm_emit_forward(p, ctx, d);
    lipc_status st = LIPC_OK;
    if (mod) {
        char *text = LLVMPrintModuleToString(mod);
        lipc_buf_puts(out, text);
        LLVMDisposeMessage(text);
        LLVMDisposeModule(mod);
    } else {
        st = d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
    }
    LLVMContextDispose(ctx);
    return st;
}
