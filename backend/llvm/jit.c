/* backend/llvm/jit.c: optimise an emitted kernel module for the host and
 * compile it through ORC's LLJIT.
 *
 * One LLJIT per compiled model: it owns the machine code, and freeing the
 * model frees it. The module is optimised before it is handed to the JIT,
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
#include <string.h>

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
static lipc_status optimise(LLVMModuleRef mod, const char *triple, bool portable,
                           lipc_diags *d)
{
    LLVMTargetRef target;
    char *err = NULL;
    if (LLVMGetTargetFromTriple(triple, &target, &err)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm: no target for '%s': %s", triple, err);
        LLVMDisposeMessage(err);
        return LIPC_ERR_UNSUPPORTED;
    }
    char *cpu = portable ? NULL : LLVMGetHostCPUName();
    char *features = portable ? NULL : LLVMGetHostCPUFeatures();
    const char *cpu_s = portable ? LIPC_PORTABLE_CPU : cpu;
    const char *feat_s = portable ? "" : features;
    LLVMTargetMachineRef tm =
        LLVMCreateTargetMachine(target, triple, cpu_s, feat_s, LLVMCodeGenLevelAggressive,
                                LLVMRelocDefault, LLVMCodeModelJITDefault);
    /* the function's attributes steer the vectoriser and the code generator */
    for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f))
        if (!LLVMIsDeclaration(f)) {
            LLVMAddTargetDependentFunctionAttr(f, "target-cpu", cpu_s);
            LLVMAddTargetDependentFunctionAttr(f, "target-features", feat_s);
        }
    if (cpu)
        LLVMDisposeMessage(cpu);
    if (features)
        LLVMDisposeMessage(features);
    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(opts, 1);
    LLVMErrorRef e = LLVMRunPasses(mod, "default<O3>", tm, opts);
    LLVMDisposePassBuilderOptions(opts);
    LLVMDisposeTargetMachine(tm);
    return e ? llvm_error(d, "optimising the kernels", e) : LIPC_OK;
}

/* Floats per vector: 16 where the code may use AVX-512, else 8 (AVX2). */
static int vector_width(bool portable)
{
    if (portable)
        return 8;
    char *features = LLVMGetHostCPUFeatures();
    bool avx512 = features && strstr(features, "+avx512f");
    LLVMDisposeMessage(features);
    return avx512 ? 16 : 8;
}

void lipc_jit_free(lipc_jit *j)
{
    if (j->jit) {
        LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->jit);
        if (e)
            LLVMConsumeError(e);
    }
    for (int k = 0; k < LIPC_K_KINDS; k++) {
        lipc_free(j->info[k]);
        lipc_free(j->fn[k]);
    }
    memset(j, 0, sizeof *j);
}

lipc_status lipc_jit_compile(const lipc_program *train, bool portable, lipc_jit *j,
                             lipc_diags *d)
{
    memset(j, 0, sizeof *j);
    double t0 = lipc_now();
    init_native();
    LLVMOrcJITTargetMachineBuilderRef jtmb;
    LLVMErrorRef e = LLVMOrcJITTargetMachineBuilderDetectHost(&jtmb);
    if (e)
        return llvm_error(d, "detecting the host", e);
    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb);
    if ((e = LLVMOrcCreateLLJIT(&j->jit, builder))) { /* consumes builder */
        j->jit = NULL;
        return llvm_error(d, "creating the JIT", e);
    }

    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    int errors = d->n_errors;
    lipc_kmodule km;
    if (!lipc_llvm_emit(train, ctx, vector_width(portable), &km, d)) {
        lipc_kmodule_free(&km);
        LLVMOrcDisposeThreadSafeContext(tsc);
        lipc_jit_free(j);
        return d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
    }
    j->n_ids = km.n_ids;
    j->vl = km.vl;
    for (int k = 0; k < LIPC_K_KINDS; k++) {
        j->info[k] = km.info[k];
        km.info[k] = NULL;
    }
    LLVMModuleRef mod = km.mod;
    km.mod = NULL;
    LLVMSetTarget(mod, LLVMOrcLLJITGetTripleString(j->jit));
    LLVMSetDataLayout(mod, LLVMOrcLLJITGetDataLayoutStr(j->jit));
    lipc_status st = optimise(mod, LLVMOrcLLJITGetTripleString(j->jit), portable, d);
    if (st != LIPC_OK) {
        LLVMDisposeModule(mod);
        LLVMOrcDisposeThreadSafeContext(tsc);
        lipc_jit_free(j);
        return st;
    }
    /* the thread-safe module owns mod and shares the context */
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, tsc);
    LLVMOrcDisposeThreadSafeContext(tsc);
    if ((e = LLVMOrcLLJITAddLLVMIRModule(j->jit, LLVMOrcLLJITGetMainJITDylib(j->jit), tsm))) {
        lipc_jit_free(j);
        return llvm_error(d, "adding the kernels", e);
    }
    /* code generation happens on the first lookup */
    const lipc_graph *g = train->g;
    for (int k = 0; k < LIPC_K_KINDS; k++)
        if (!(j->fn[k] = lipc_calloc((size_t)j->n_ids, sizeof(lipc_kernel_fn)))) {
            lipc_jit_free(j);
            return LIPC_ERR_NOMEM;
        }
    for (const lipc_node *n = g->first; n; n = n->next)
        for (int k = 0; k < LIPC_K_KINDS; k++) {
            if (!j->info[k][n->id].present)
                continue;
            char name[256];
            lipc_kernel_name((lipc_kkind)k, n, name, sizeof name);
            LLVMOrcExecutorAddress addr = 0;
            if ((e = LLVMOrcLLJITLookup(j->jit, &addr, name))) {
                lipc_jit_free(j);
                return llvm_error(d, "compiling the kernels", e);
            }
            j->fn[k][n->id] = (lipc_kernel_fn)(uintptr_t)addr;
        }
    j->compile_seconds = lipc_now() - t0;
    return LIPC_OK;
}

lipc_status lipc_llvm_module_text(const lipc_program *train, bool assembly, bool portable,
                                  lipc_diags *d, lipc_buf *out)
{
    init_native();
    LLVMContextRef ctx = LLVMContextCreate();
    int errors = d->n_errors;
    lipc_kmodule km;
    lipc_status st = LIPC_OK;
    if (!lipc_llvm_emit(train, ctx, vector_width(portable), &km, d)) {
        st = d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
    } else if (!assembly) {
        char *text = LLVMPrintModuleToString(km.mod);
        lipc_buf_puts(out, text);
        LLVMDisposeMessage(text);
    } else {
        char *triple = LLVMGetDefaultTargetTriple();
        LLVMSetTarget(km.mod, triple);
        st = optimise(km.mod, triple, portable, d);
        LLVMTargetRef target = NULL;
        char *err = NULL;
        if (st == LIPC_OK && LLVMGetTargetFromTriple(triple, &target, &err)) {
            lipc_diag_error(d, LIPC_NO_LOC, "llvm: no target for '%s': %s", triple, err);
            LLVMDisposeMessage(err);
            st = LIPC_ERR_UNSUPPORTED;
        }
        if (st == LIPC_OK) {
            char *cpu = portable ? NULL : LLVMGetHostCPUName();
            char *features = portable ? NULL : LLVMGetHostCPUFeatures();
            LLVMTargetMachineRef tm = LLVMCreateTargetMachine(
                target, triple, portable ? LIPC_PORTABLE_CPU : cpu, portable ? "" : features,
                LLVMCodeGenLevelAggressive, LLVMRelocPIC, LLVMCodeModelDefault);
            LLVMMemoryBufferRef mb = NULL;
            if (LLVMTargetMachineEmitToMemoryBuffer(tm, km.mod, LLVMAssemblyFile, &err, &mb)) {
                lipc_diag_error(d, LIPC_NO_LOC, "llvm: emitting assembly: %s", err);
                LLVMDisposeMessage(err);
                st = LIPC_ERR_UNSUPPORTED;
            } else {
                lipc_buf_printf(out, "%.*s", (int)LLVMGetBufferSize(mb), LLVMGetBufferStart(mb));
                LLVMDisposeMemoryBuffer(mb);
            }
            LLVMDisposeTargetMachine(tm);
            if (cpu)
                LLVMDisposeMessage(cpu);
            if (features)
                LLVMDisposeMessage(features);
        }
        LLVMDisposeMessage(triple);
    }
    lipc_kmodule_free(&km);
    LLVMContextDispose(ctx);
    return st;
}
