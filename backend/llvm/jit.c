/* backend/llvm/jit.c: optimise an emitted kernel module for the host and
 * compile it through ORC's LLJIT.
 *
 * One LLJIT per compiled model: it owns the machine code, and freeing the
 * model frees it. The kernels are compiled in shards, one per core, each in
 * its own LLVM context on its own thread: optimised with the new pass
 * manager's default<O2> pipeline (the kernels are vectorised and blocked by
 * the emitter; O3 costs compile time and measured no faster) and a target
 * machine for the host CPU and its features (AVX-512 where present), then
 * compiled to object code, which the JIT links. Ahead of time (lipc build,
 * --emit=asm) the same optimisation runs on one module.
 *
 * Errors here are environment errors (LLVM could not do something): they go to
 * d as an error without a source location, and the status is
 * LIPC_ERR_UNSUPPORTED.
 */
#include "backend/llvm/internal.h"
#include "backend/cuda/gpu.h"

#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <stdio.h>
#include <stdlib.h>
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

/* default<O2> with a host target machine for the given triple. */
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
    LLVMErrorRef e = LLVMRunPasses(mod, "default<O2>", tm, opts);
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

static void jit_dispose(void *owner)
{
    LLVMErrorRef e = LLVMOrcDisposeLLJIT(owner);
    if (e)
        LLVMConsumeError(e);
}

/* Emits the kernels of train into a new module of ctx and moves their
 * descriptions into k. NULL (after diagnostics) on failure. */
static bool is_double_kind(int kind)
{
    return kind == LIPC_K_FORWARD64 || kind == LIPC_K_PATCHES64;
}

/* Emits the parts of train's kernels into a new module of ctx and moves their
 * descriptions into k (with LIPC_EMIT_FLOAT, every kind's table, the double
 * ones still empty). NULL (after diagnostics) on failure. */
static LLVMModuleRef emit_into(const lipc_program *train, LLVMContextRef ctx, bool portable,
                               unsigned parts, lipc_kernels *k, lipc_diags *d, lipc_status *st)
{
    int errors = d->n_errors;
    lipc_kmodule km;
    if (!lipc_llvm_emit(train, ctx, vector_width(portable), parts, &km, d)) {
        lipc_kmodule_free(&km);
        *st = d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
        return NULL;
    }
    k->n_ids = km.n_ids;
    k->vl = km.vl;
    for (int i = 0; i < LIPC_K_KINDS; i++)
        if ((parts & LIPC_EMIT_FLOAT) || is_double_kind(i)) {
            lipc_free(k->info[i]);
            k->info[i] = km.info[i];
            km.info[i] = NULL;
        }
    LLVMModuleRef mod = km.mod;
    km.mod = NULL;
    lipc_kmodule_free(&km); /* the tables not moved */
    return mod;
}

static LLVMTargetMachineRef static_machine(LLVMModuleRef mod, bool portable,
                                           LLVMCodeGenOptLevel level, lipc_diags *d,
                                           lipc_status *st);

/* The JIT's kernels are compiled in shards, one per core (at most this many),
 * each in its own LLVM context on a thread of its own, to object code that
 * the JIT then links: optimisation and code generation, most of the compile
 * time, run in parallel. */
#define JIT_MAX_SHARDS 8

typedef struct shard_job {
    const lipc_kernels *k;
    unsigned parts;
    int shards, vl;
    lipc_kmodule km[JIT_MAX_SHARDS];
    LLVMMemoryBufferRef obj[JIT_MAX_SHARDS];
    lipc_diags diags[JIT_MAX_SHARDS];
    lipc_status st[JIT_MAX_SHARDS];
} shard_job;

static void compile_shards(void *ctx, int64_t lo, int64_t hi)
{
    shard_job *j = ctx;
    for (int64_t t = lo; t < hi; t++) {
        lipc_diags *d = &j->diags[t];
        LLVMContextRef c = LLVMContextCreate();
        lipc_kmodule *km = &j->km[t];
        int errors = d->n_errors;
        if (!lipc_llvm_emit_shard(j->k->train, c, j->vl, j->parts, (int)t, j->shards, km, d)) {
            j->st[t] = d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
        } else {
            LLVMTargetMachineRef tm = static_machine(km->mod, j->k->portable,
                                                     LLVMCodeGenLevelLess, d, &j->st[t]);
            char *err = NULL;
            if (tm && LLVMTargetMachineEmitToMemoryBuffer(tm, km->mod, LLVMObjectFile, &err,
                                                          &j->obj[t])) {
                lipc_diag_error(d, LIPC_NO_LOC, "llvm: code generation: %s", err);
                LLVMDisposeMessage(err);
                j->st[t] = LIPC_ERR_UNSUPPORTED;
                j->obj[t] = NULL;
            }
            if (tm)
                LLVMDisposeTargetMachine(tm);
        }
        if (km->mod)
            LLVMDisposeModule(km->mod);
        km->mod = NULL;
        LLVMContextDispose(c);
    }
}

/* Emits, optimises and compiles the parts of train's kernels (in shards, in
 * parallel), adds them to the JIT k owns, and looks up their addresses. */
static lipc_status jit_add(lipc_kernels *k, unsigned parts, lipc_diags *d)
{
    LLVMOrcLLJITRef jit = k->owner;
    shard_job *j = lipc_calloc(1, sizeof *j);
    if (!j)
        return LIPC_ERR_NOMEM;
    int cores = lipc_cpu_count();
    j->k = k;
    j->parts = parts;
    j->vl = vector_width(k->portable);
    j->shards = cores < 1 ? 1 : cores > JIT_MAX_SHARDS ? JIT_MAX_SHARDS : cores;
    for (int t = 0; t < j->shards; t++)
        lipc_diags_init(&j->diags[t]);
    lipc_pool *pool = j->shards > 1 ? lipc_pool_new(j->shards) : NULL;
    lipc_pool_run(pool, compile_shards, j, j->shards);
    lipc_pool_free(pool);
    lipc_status st = LIPC_OK;
    int n_ids = k->train->g->next_id + 1;
    k->n_ids = n_ids;
    k->vl = j->vl;
    for (int i = 0; i < LIPC_K_KINDS && st == LIPC_OK; i++)
        if (!k->info[i] && !(k->info[i] = lipc_calloc((size_t)n_ids, sizeof(lipc_kinfo))))
            st = LIPC_ERR_NOMEM;
    for (int t = 0; t < j->shards; t++) {
        if (j->st[t] != LIPC_OK && st == LIPC_OK) {
            st = j->st[t];
            lipc_buf msg;
            lipc_buf_init(&msg);
            lipc_diags_format(&j->diags[t], &msg);
            lipc_diag_error(d, LIPC_NO_LOC, "%s", lipc_buf_str(&msg));
            lipc_buf_free(&msg);
        }
        /* each kernel's description from the shard that made it */
        for (int i = 0; i < LIPC_K_KINDS && st == LIPC_OK; i++)
            for (int id = 0; j->km[t].info[i] && id < n_ids; id++)
                if (j->km[t].info[i][id].present)
                    k->info[i][id] = j->km[t].info[i][id];
        if (st == LIPC_OK && j->obj[t]) {
            LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(jit, LLVMOrcLLJITGetMainJITDylib(jit),
                                                       j->obj[t]);
            j->obj[t] = NULL; /* the JIT owns it */
            if (e)
                st = llvm_error(d, "adding the kernels", e);
        }
        if (j->obj[t])
            LLVMDisposeMemoryBuffer(j->obj[t]);
        lipc_kmodule_free(&j->km[t]);
        lipc_diags_free(&j->diags[t]);
    }
    lipc_free(j);
    if (st != LIPC_OK)
        return st;
    for (int i = 0; i < LIPC_K_KINDS; i++)
        if (!k->fn[i] && !(k->fn[i] = lipc_calloc((size_t)k->n_ids, sizeof(lipc_kernel_fn))))
            return LIPC_ERR_NOMEM;
    for (const lipc_node *n = k->train->g->first; n; n = n->next)
        for (int i = 0; i < LIPC_K_KINDS; i++) {
            if (!k->info[i][n->id].present || is_double_kind(i) != !(parts & LIPC_EMIT_FLOAT))
                continue;
            char name[256];
            lipc_kernel_name((lipc_kkind)i, n, name, sizeof name);
            LLVMOrcExecutorAddress addr = 0;
            LLVMErrorRef e = LLVMOrcLLJITLookup(jit, &addr, name);
            if (e)
                return llvm_error(d, "linking the kernels", e);
            k->fn[i][n->id] = (lipc_kernel_fn)(uintptr_t)addr;
        }
    return LIPC_OK;
}

/* The certification kernels, on first use. */
static lipc_status jit_more(lipc_kernels *k, lipc_diags *d)
{
    double t0 = lipc_now();
    lipc_status st = jit_add(k, LIPC_EMIT_DOUBLE, d);
    if (st == LIPC_OK)
        k->more = NULL;
    k->compile_seconds += lipc_now() - t0;
    return st;
}

lipc_status lipc_jit_compile(const lipc_program *train, bool portable, lipc_kernels *k,
                             lipc_diags *d)
{
    memset(k, 0, sizeof *k);
    double t0 = lipc_now();
    init_native();
    LLVMOrcJITTargetMachineBuilderRef jtmb;
    LLVMErrorRef e = LLVMOrcJITTargetMachineBuilderDetectHost(&jtmb);
    if (e)
        return llvm_error(d, "detecting the host", e);
    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb);
    LLVMOrcLLJITRef jit;
    if ((e = LLVMOrcCreateLLJIT(&jit, builder))) /* consumes builder */
        return llvm_error(d, "creating the JIT", e);
    k->owner = jit;
    k->owner_free = jit_dispose;
    k->train = train;
    k->portable = portable;
    lipc_status st = jit_add(k, LIPC_EMIT_FLOAT, d);
    if (st != LIPC_OK) {
        lipc_kernels_free(k);
        return st;
    }
    k->more = jit_more;
    k->compile_seconds = lipc_now() - t0;
    return LIPC_OK;
}

lipc_status lipc_cpu_compile(const lipc_program *train, const lipc_program *forward,
                             const lipc_cpu_options *o, lipc_diags *d, lipc_cpu **out)
{
    *out = NULL;
    lipc_kernels k;
    lipc_status st = lipc_jit_compile(train, o && o->portable, &k, d);
    return st == LIPC_OK ? lipc_cpu_new(train, forward, o, &k, out) : st;
}

static lipc_status jit_source(const lipc_program *train, bool portable, void *ctx,
                              lipc_kernels *k, lipc_diags *d)
{
    (void)ctx;
    return lipc_jit_compile(train, portable, k, d);
}

lipc_status lipc_compile_target(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                                lipc_diags *d, lipc_compiled **out)
{
    if (strcmp(target, "cuda") == 0 || strcmp(target, "cuda-emulator") == 0) {
        lipc_status st = lipc_compile_cuda(g, target, o, NULL, d, out);
        /* certified inference stays on the host, in double: the cpu target's */
        lipc_compiled *host = NULL;
        if (st == LIPC_OK && lipc_compile_cpu(g, jit_source, NULL, o, d, &host) == LIPC_OK)
            lipc_compiled_attach_host(*out, host);
        return st;
    }
    if (strcmp(target, "cpu") != 0)
        return lipc_compile(g, target, d, out);
    return lipc_compile_cpu(g, jit_source, NULL, o, d, out);
}

/* Ahead of time (an object file or assembly): mod optimised for the host, or
 * the portable CPU, with its triple and data layout set, and a target machine
 * for it (the caller disposes of it). NULL with *st set on failure. */
static LLVMTargetMachineRef static_machine(LLVMModuleRef mod, bool portable,
                                           LLVMCodeGenOptLevel level, lipc_diags *d,
                                           lipc_status *st)
{
    char *triple = LLVMGetDefaultTargetTriple();
    LLVMSetTarget(mod, triple);
    LLVMTargetMachineRef tm = NULL;
    LLVMTargetRef target = NULL;
    char *err = NULL;
    *st = optimise(mod, triple, portable, d);
    if (*st == LIPC_OK && LLVMGetTargetFromTriple(triple, &target, &err)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm: no target for '%s': %s", triple, err);
        LLVMDisposeMessage(err);
        *st = LIPC_ERR_UNSUPPORTED;
    }
    if (*st == LIPC_OK) {
        char *cpu = portable ? NULL : LLVMGetHostCPUName();
        char *features = portable ? NULL : LLVMGetHostCPUFeatures();
        tm = LLVMCreateTargetMachine(target, triple, portable ? LIPC_PORTABLE_CPU : cpu,
                                     portable ? "" : features, level, LLVMRelocPIC,
                                     LLVMCodeModelDefault);
        LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
        LLVMSetModuleDataLayout(mod, layout);
        LLVMDisposeTargetData(layout);
        if (cpu)
            LLVMDisposeMessage(cpu);
        if (features)
            LLVMDisposeMessage(features);
    }
    LLVMDisposeMessage(triple);
    return tm;
}

lipc_status lipc_llvm_module_text(const lipc_program *train, bool assembly, bool portable,
                                  lipc_diags *d, lipc_buf *out)
{
    init_native();
    LLVMContextRef ctx = LLVMContextCreate();
    int errors = d->n_errors;
    lipc_kmodule km;
    lipc_status st = LIPC_OK;
    if (!lipc_llvm_emit(train, ctx, vector_width(portable), LIPC_EMIT_ALL, &km, d)) {
        st = d->n_errors > errors ? LIPC_ERR_UNSUPPORTED : LIPC_ERR_NOMEM;
    } else if (!assembly) {
        char *text = LLVMPrintModuleToString(km.mod);
        lipc_buf_puts(out, text);
        LLVMDisposeMessage(text);
    } else {
        LLVMTargetMachineRef tm = static_machine(km.mod, portable, LLVMCodeGenLevelAggressive, d, &st);
        LLVMMemoryBufferRef mb = NULL;
        char *err = NULL;
        if (tm && LLVMTargetMachineEmitToMemoryBuffer(tm, km.mod, LLVMAssemblyFile, &err, &mb)) {
            lipc_diag_error(d, LIPC_NO_LOC, "llvm: emitting assembly: %s", err);
            LLVMDisposeMessage(err);
            st = LIPC_ERR_UNSUPPORTED;
        } else if (tm) {
            lipc_buf_printf(out, "%.*s", (int)LLVMGetBufferSize(mb), LLVMGetBufferStart(mb));
            LLVMDisposeMemoryBuffer(mb);
        }
        if (tm)
            LLVMDisposeTargetMachine(tm);
    }
    lipc_kmodule_free(&km);
    LLVMContextDispose(ctx);
    return st;
}

/* ---- ahead of time: an object file for `lipc build` ----------------------------------------- */

/* A private constant C string in mod; returns a pointer to it. */
static LLVMValueRef const_string(LLVMModuleRef mod, LLVMContextRef ctx, const char *s,
                                 const char *name)
{
    LLVMValueRef init = LLVMConstStringInContext(ctx, s, (unsigned)strlen(s), false);
    LLVMValueRef g = LLVMAddGlobal(mod, LLVMTypeOf(init), name);
    LLVMSetInitializer(g, init);
    LLVMSetGlobalConstant(g, true);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    return g;
}

lipc_status lipc_llvm_build_object(const lipc_program *train, bool portable, const char *source,
                                   const char *yaml, const char *sets, const char *path,
                                   lipc_diags *d)
{
    init_native();
    LLVMContextRef ctx = LLVMContextCreate();
    lipc_kernels k;
    memset(&k, 0, sizeof k);
    lipc_status st = LIPC_OK;
    LLVMModuleRef mod = emit_into(train, ctx, portable, LIPC_EMIT_ALL, &k, d, &st);
    if (!mod) {
        LLVMContextDispose(ctx);
        return st;
    }
    /* the kernel table: {name, function, blocks, flags} per kernel */
    LLVMTypeRef ptr = LLVMPointerTypeInContext(ctx, 0), i64 = LLVMInt64TypeInContext(ctx);
    LLVMTypeRef i32 = LLVMInt32TypeInContext(ctx);
    LLVMTypeRef fields[4] = {ptr, ptr, i64, i32};
    LLVMTypeRef entry = LLVMStructTypeInContext(ctx, fields, 4, false);
    int n = 0, cap = 64;
    LLVMValueRef *rows = lipc_malloc(sizeof *rows * (size_t)cap);
    for (const lipc_node *v = train->g->first; v && rows; v = v->next)
        for (int i = 0; i < LIPC_K_KINDS && rows; i++) {
            const lipc_kinfo *info = &k.info[i][v->id];
            if (!info->present)
                continue;
            char name[256];
            lipc_kernel_name((lipc_kkind)i, v, name, sizeof name);
            if (n == cap) {
                LLVMValueRef *more = lipc_realloc(rows, sizeof *rows * (size_t)(cap *= 2));
                if (!more) {
                    lipc_free(rows);
                    rows = NULL;
                    break;
                }
                rows = more;
            }
            LLVMValueRef vals[4] = {
                const_string(mod, ctx, name, ".name"),
                LLVMGetNamedFunction(mod, name),
                LLVMConstInt(i64, (unsigned long long)info->blocks, false),
                LLVMConstInt(i32, (info->flipped ? 1u : 0u) | (info->patch ? 2u : 0u) |
                                      (info->writes_din ? 4u : 0u), false),
            };
            rows[n++] = LLVMConstNamedStruct(entry, vals, 4);
        }
    lipc_kernels_free(&k);
    if (!rows) {
        LLVMDisposeModule(mod);
        LLVMContextDispose(ctx);
        return LIPC_ERR_NOMEM;
    }
    LLVMValueRef table = LLVMConstArray2(entry, rows, (uint64_t)n);
    lipc_free(rows);
    LLVMValueRef gt = LLVMAddGlobal(mod, LLVMTypeOf(table), "lipc_kernel_table");
    LLVMSetInitializer(gt, table);
    LLVMSetGlobalConstant(gt, true);
    LLVMValueRef gn = LLVMAddGlobal(mod, i32, "lipc_kernel_count");
    LLVMSetInitializer(gn, LLVMConstInt(i32, (unsigned long long)n, false));
    LLVMSetGlobalConstant(gn, true);
    /* the model itself, for the executable's frontend and diagnostics */
    LLVMValueRef y = LLVMConstStringInContext(ctx, yaml, (unsigned)strlen(yaml), false);
    LLVMValueRef gy = LLVMAddGlobal(mod, LLVMTypeOf(y), "lipc_model_yaml");
    LLVMSetInitializer(gy, y);
    LLVMSetGlobalConstant(gy, true);
    const char *names[2] = {"lipc_model_source", "lipc_model_sets"};
    const char *texts[2] = {source, sets};
    for (int i = 0; i < 2; i++) {
        LLVMValueRef s = LLVMConstStringInContext(ctx, texts[i], (unsigned)strlen(texts[i]), false);
        LLVMValueRef gs = LLVMAddGlobal(mod, LLVMTypeOf(s), names[i]);
        LLVMSetInitializer(gs, s);
        LLVMSetGlobalConstant(gs, true);
    }

    LLVMTargetMachineRef tm = static_machine(mod, portable, LLVMCodeGenLevelAggressive, d, &st);
    char *err = NULL;
    if (tm && LLVMTargetMachineEmitToFile(tm, mod, path, LLVMObjectFile, &err)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm: writing %s: %s", path, err);
        LLVMDisposeMessage(err);
        st = LIPC_ERR_IO;
    }
    if (tm)
        LLVMDisposeTargetMachine(tm);
    LLVMDisposeModule(mod);
    LLVMContextDispose(ctx);
    return st;
}
