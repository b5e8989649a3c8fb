/* backend/llvm/emit.c: a training program -> LLVM kernels, through the LLVM C
 * API.
 *
 * Every node gets up to three kernels (internal.h): FORWARD (out = op(in)),
 * BACKWARD (din += J^T dout; for conv and dense this is the adjoint A^T, which
 * power iteration also runs) and WGRAD (the weight and bias gradient, which
 * SIGMA_GRAD also runs with x = v, dout = u). Every shape is a compile-time
 * constant: loop bounds, strides, tile masks and the choice of kernel are
 * fixed here; only the batch n and the part [lo, hi) of the range are runtime
 * values. Values are [n, numel] blocks in the NCHW order of ir/ir.h.
 *
 * Convolutions with stride 1 and padding below the kernel size (every
 * residual block and, through the adjoint, their input gradients) get
 * register-blocked kernels on <vl x float> vectors:
 *
 *   forward   for each block of CB output channels, each output row y and
 *             each tile of vl output columns, CB vector accumulators; for
 *             each input channel and tap (ky, kx): one vector load of the
 *             input row (masked where the tap reads padding) and CB FMAs
 *             with the broadcast weights. Rows whose taps leave the input
 *             are emitted apart with their valid taps, so the inner loop has
 *             no test. The adjoint is the same kernel on the flipped,
 *             transposed weight with padding k-1-pad, accumulating.
 *   wgrad     a product over positions with the vectors across input
 *             channels: each chunk of examples is transposed (channels
 *             innermost) into stack scratch, then for each tap a register
 *             tile of 4 output channels x 4 vectors of input channels runs
 *             over the positions (emit_conv_wgrad_t). Maps too large for the
 *             scratch, or whose output is smaller than the input, take a
 *             kernel along the rows instead: 2 output channels x kh x kw
 *             vector accumulators, reduced across lanes per chunk. Threads
 *             split the output channels, so every dW element has one owner
 *             and one summation order: results do not depend on the thread
 *             count.
 *
 * Strided convolutions have their own forward (emit_conv_s2) and, with few
 * input channels (the stem), a weight gradient with the vectors across
 * output channels (emit_conv_wgrad_o); patch convolutions (the neck) run as
 * 1x1 convolutions on their patches. The rest use plain loop nests that
 * LLVM vectorises. Dense layers are matrix products blocked 4 x 4 with
 * vectors along the inner dimension. Element-wise ops are one loop each.
 *
 * Arithmetic is float32; products and sums contract into FMAs, and sums run in
 * another order than the double reference, so results differ from it by
 * rounding (tests/test_llvm.c states the tolerance).
 */
#include "backend/llvm/internal.h"

#include <llvm-c/Analysis.h>
#include <stdio.h>
#include <string.h>


#define CONV_CB 8       /* output channels per block in fast conv forward */
#define CONV_RY 2       /* output rows per block in fast conv forward */
#define WGRAD_CB 2      /* output channels per block in fast conv wgrad */
#define WGRAD_CHUNK 8   /* examples per partial sum in fast conv wgrad */
#define W1X1_OB 4       /* output channels per tile of the 1x1 conv wgrad */
#define W1X1_KB 4       /* input channels per tile of the 1x1 conv wgrad */
#define MM 4            /* the register block of dense products (MM x MM) */
#define DENSE_TILE_BYTES (256 * 1024) /* weight rows per tile of the dense adjoint */

typedef struct em {
    LLVMContextRef ctx;
    LLVMModuleRef mod;
    LLVMBuilderRef b;       /* the loop nests */
    LLVMBuilderRef eb;      /* allocas, in the entry block */
    LLVMValueRef fn;
    /* f32 is the element type: float, or double in the certification
     * kernels (f64); vt <vl x element>, mt <vl x i1> */
    LLVMTypeRef f32, i64, i32, i1, ptr, vt, mt;
    int vl, esize;
    bool f64;
    /* a BACKWARD kernel whose step zeroes din0 first: it may write din0
     * instead of adding to it (and says so in lipc_kinfo.writes_din) */
    bool din_zeroed;
    LLVMValueRef p[LIPC_KARGS_PTRS], n, scale, lo, hi;
    const lipc_graph *g;
} em;

/* ---- small builders --------------------------------------------------------- */

static LLVMValueRef ci(const em *e, int64_t v)
{
    return LLVMConstInt(e->i64, (unsigned long long)v, true);
}

/* An element constant: v rounded to float once, here (double kernels keep
 * it: their error analysis counts double rounding only). */
static LLVMValueRef cf(const em *e, double v)
{
    return LLVMConstReal(e->f32, e->f64 ? v : (double)(float)v);
}

static LLVMValueRef iadd(const em *e, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildNSWAdd(e->b, a, b, "");
}

static LLVMValueRef imul(const em *e, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildNSWMul(e->b, a, b, "");
}

/* a * k + c, with constant k and c */
static LLVMValueRef iaxc(const em *e, LLVMValueRef a, int64_t k, int64_t c)
{
    LLVMValueRef v = k == 1 ? a : imul(e, a, ci(e, k));
    return c ? iadd(e, v, ci(e, c)) : v;
}

/* Fast-math flags on an arithmetic result (constants fold: nothing to flag). */
static LLVMValueRef flags(LLVMValueRef v, bool reassoc)
{
    if (LLVMIsAInstruction(v))
        LLVMSetFastMathFlags(v, LLVMFastMathAllowContract |
                                    (reassoc ? LLVMFastMathAllowReassoc : 0));
    return v;
}

static LLVMValueRef fadd(const em *e, LLVMValueRef a, LLVMValueRef b, bool reassoc)
{
    return flags(LLVMBuildFAdd(e->b, a, b, ""), reassoc);
}

static LLVMValueRef fmul(const em *e, LLVMValueRef a, LLVMValueRef b, bool reassoc)
{
    return flags(LLVMBuildFMul(e->b, a, b, ""), reassoc);
}

/* base + idx floats. Not inbounds: masked vector loads may start before a
 * buffer (their masked-off lanes are never read). */
static LLVMValueRef at(const em *e, LLVMValueRef base, LLVMValueRef idx)
{
    return LLVMBuildGEP2(e->b, e->f32, base, &idx, 1, "");
}

static LLVMValueRef load(const em *e, LLVMValueRef base, LLVMValueRef idx)
{
    return LLVMBuildLoad2(e->b, e->f32, at(e, base, idx), "");
}

static void store(const em *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx)
{
    LLVMBuildStore(e->b, v, at(e, base, idx));
}

/* base[idx] += v */
static void accum(const em *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx)
{
    store(e, fadd(e, load(e, base, idx), v, false), base, idx);
}

/* A scalar or vector accumulator: an alloca in the entry block (mem2reg makes
 * it a register). */
static LLVMValueRef var_new(const em *e, LLVMTypeRef t, const char *name)
{
    return LLVMBuildAlloca(e->eb, t, name);
}

static LLVMValueRef var_get(const em *e, LLVMTypeRef t, LLVMValueRef var)
{
    return LLVMBuildLoad2(e->b, t, var, "");
}

static void var_set(const em *e, LLVMValueRef var, LLVMValueRef v)
{
    LLVMBuildStore(e->b, v, var);
}

/* ---- intrinsics and vectors -------------------------------------------------------- */

static LLVMValueRef intrinsic(const em *e, const char *name, LLVMTypeRef *types, int nt,
                              LLVMTypeRef *fty)
{
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    LIPC_ASSERT(id != 0);
    LLVMValueRef f = LLVMGetIntrinsicDeclaration(e->mod, id, types, (size_t)nt);
    *fty = LLVMGlobalGetValueType(f);
    return f;
}

static LLVMValueRef call(const em *e, const char *name, LLVMTypeRef *types, int nt,
                         LLVMValueRef *args, int na)
{
    LLVMTypeRef fty;
    LLVMValueRef f = intrinsic(e, name, types, nt, &fty);
    return LLVMBuildCall2(e->b, fty, f, args, (unsigned)na, "");
}

static LLVMValueRef splat(const em *e, LLVMValueRef s)
{
    LLVMValueRef v = LLVMBuildInsertElement(e->b, LLVMGetUndef(e->vt), s,
                                            LLVMConstInt(e->i32, 0, false), "");
    LLVMValueRef zero = LLVMConstNull(LLVMVectorType(e->i32, (unsigned)e->vl));
    return LLVMBuildShuffleVector(e->b, v, LLVMGetUndef(e->vt), zero, "");
}

static LLVMValueRef vzero(const em *e) { return LLVMConstNull(e->vt); }

/* The lanes l < vl with lo <= l < hi (a mask), as a bit set. */
typedef uint32_t lanes;

static lanes lane_range(int lo, int hi, int vl)
{
    lanes m = 0;
    for (int l = lo < 0 ? 0 : lo; l < hi && l < vl; l++)
        m |= 1u << l;
    return m;
}

static LLVMValueRef mask_const(const em *e, lanes m)
{
    LLVMValueRef bits[32];
    for (int l = 0; l < e->vl; l++)
        bits[l] = LLVMConstInt(e->i1, (m >> l) & 1u, false);
    return LLVMConstVector(bits, (unsigned)e->vl);
}

static bool full(const em *e, lanes m) { return m == lane_range(0, e->vl, e->vl); }

/* A vector from base[idx ...]: lanes outside m read as 0 and are not touched. */
static LLVMValueRef vload(const em *e, LLVMValueRef base, LLVMValueRef idx, lanes m)
{
    if (!m)
        return vzero(e);
    LLVMValueRef ptr = at(e, base, idx);
    if (full(e, m)) {
        LLVMValueRef v = LLVMBuildLoad2(e->b, e->vt, ptr, "");
        LLVMSetAlignment(v, (unsigned)e->esize);
        return v;
    }
    LLVMTypeRef types[2] = {e->vt, e->ptr};
    LLVMValueRef args[4] = {ptr, LLVMConstInt(e->i32, (unsigned long long)e->esize, false), mask_const(e, m), vzero(e)};
    return call(e, "llvm.masked.load", types, 2, args, 4);
}

static void vstore(const em *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx, lanes m)
{
    if (!m)
        return;
    LLVMValueRef ptr = at(e, base, idx);
    if (full(e, m)) {
        LLVMValueRef s = LLVMBuildStore(e->b, v, ptr);
        LLVMSetAlignment(s, (unsigned)e->esize);
        return;
    }
    LLVMTypeRef types[2] = {e->vt, e->ptr};
    LLVMValueRef args[4] = {v, ptr, LLVMConstInt(e->i32, (unsigned long long)e->esize, false), mask_const(e, m)};
    call(e, "llvm.masked.store", types, 2, args, 4);
}

/* a * b + c, fused */
static LLVMValueRef vfma(const em *e, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c)
{
    LLVMValueRef args[3] = {a, b, c};
    LLVMTypeRef t = e->vt;
    return call(e, "llvm.fmuladd", &t, 1, args, 3);
}

/* The sum of the lanes (a fixed tree: the same for every call). */
static LLVMValueRef hsum(const em *e, LLVMValueRef v)
{
    LLVMValueRef args[2] = {cf(e, 0.0), v};
    LLVMTypeRef t = e->vt;
    return flags(call(e, "llvm.vector.reduce.fadd", &t, 1, args, 2), true);
}

/* ---- counted loops -------------------------------------------------------------
 *
 *   for (iv = lo; iv < hi; iv++) body
 * loop_open returns iv and leaves the builder in the body; loop_close adds the
 * increment and the back edge and leaves the builder after the loop. */

typedef struct loop {
    LLVMValueRef iv;
    LLVMBasicBlockRef header, exit;
    int64_t step;
} loop;

static LLVMValueRef loop_step(const em *e, loop *l, LLVMValueRef lo, LLVMValueRef hi,
                              int64_t step, const char *name)
{
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
    l->header = LLVMAppendBasicBlockInContext(e->ctx, e->fn, name);
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "body");
    l->exit = LLVMCreateBasicBlockInContext(e->ctx, "exit");
    l->step = step;
    LLVMBuildBr(e->b, l->header);
    LLVMPositionBuilderAtEnd(e->b, l->header);
    l->iv = LLVMBuildPhi(e->b, e->i64, name);
    LLVMAddIncoming(l->iv, &lo, &pre, 1);
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, l->iv, hi, ""), body, l->exit);
    LLVMPositionBuilderAtEnd(e->b, body);
    return l->iv;
}

static LLVMValueRef loop_open(const em *e, loop *l, LLVMValueRef lo, LLVMValueRef hi,
                              const char *name)
{
    return loop_step(e, l, lo, hi, 1, name);
}

static void loop_close(const em *e, loop *l)
{
    LLVMValueRef next = iadd(e, l->iv, ci(e, l->step));
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, l->header);
    LLVMAddIncoming(l->iv, &next, &latch, 1);
    LLVMAppendExistingBasicBlock(e->fn, l->exit);
    LLVMPositionBuilderAtEnd(e->b, l->exit);
}

/* if (cond) { ... }: returns the block after; the builder is in the body. */
static LLVMBasicBlockRef if_open(const em *e, LLVMValueRef cond)
{
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "then");
    LLVMBasicBlockRef after = LLVMCreateBasicBlockInContext(e->ctx, "endif");
    LLVMBuildCondBr(e->b, cond, body, after);
    LLVMPositionBuilderAtEnd(e->b, body);
    return after;
}

static void if_close(const em *e, LLVMBasicBlockRef after)
{
    LLVMBuildBr(e->b, after);
    LLVMAppendExistingBasicBlock(e->fn, after);
    LLVMPositionBuilderAtEnd(e->b, after);
}

static LLVMValueRef imin(const em *e, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, a, b, ""), a, b, "");
}

static LLVMValueRef imax(const em *e, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSGT, a, b, ""), a, b, "");
}

/* ---- functions --------------------------------------------------------------------- */

static int64_t numel(const lipc_node *n) { return lipc_shape_numel(n->shape); }

/* Opens kernel `name`: void (ptr args, i64 lo, i64 hi), with the arguments
 * loaded in the entry block. */
static void fn_open(em *e, const char *name)
{
    LLVMTypeRef args[3] = {e->ptr, e->i64, e->i64};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), args, 3, false);
    e->fn = LLVMAddFunction(e->mod, name, fty);
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(e->fn, LLVMAttributeFunctionIndex,
                            LLVMCreateEnumAttribute(e->ctx, nounwind, 0));
    LLVMValueRef a = LLVMGetParam(e->fn, 0);
    e->lo = LLVMGetParam(e->fn, 1);
    e->hi = LLVMGetParam(e->fn, 2);
    LLVMSetValueName2(a, "args", 4);
    LLVMSetValueName2(e->lo, "lo", 2);
    LLVMSetValueName2(e->hi, "hi", 2);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "entry");
    LLVMBasicBlockRef start = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "start");
    LLVMPositionBuilderAtEnd(e->b, entry);
    static const char *const names[LIPC_KARGS_PTRS] = {"p0", "p1", "p2", "p3", "p4", "p5"};
    for (int i = 0; i < LIPC_KARGS_PTRS; i++) {
        LLVMValueRef off = ci(e, i * 8);
        LLVMValueRef slot = LLVMBuildGEP2(e->b, LLVMInt8TypeInContext(e->ctx), a, &off, 1, "");
        e->p[i] = LLVMBuildLoad2(e->b, e->ptr, slot, names[i]);
    }
    LLVMValueRef off = ci(e, LIPC_KARGS_PTRS * 8);
    LLVMValueRef slot = LLVMBuildGEP2(e->b, LLVMInt8TypeInContext(e->ctx), a, &off, 1, "");
    e->n = LLVMBuildLoad2(e->b, e->i64, slot, "n");
    off = ci(e, LIPC_KARGS_PTRS * 8 + 8);
    slot = LLVMBuildGEP2(e->b, LLVMInt8TypeInContext(e->ctx), a, &off, 1, "");
    e->scale = LLVMBuildLoad2(e->b, e->f32, slot, "scale");
    LLVMValueRef br = LLVMBuildBr(e->b, start);
    LLVMPositionBuilderBefore(e->eb, br);
    LLVMPositionBuilderAtEnd(e->b, start);
}

static void fn_close(em *e) { LLVMBuildRetVoid(e->b); }

/* Example b of a [n, len] block. */
static LLVMValueRef example(const em *e, LLVMValueRef base, int64_t len, LLVMValueRef b)
{
    return at(e, base, imul(e, b, ci(e, len)));
}

/* The loop over the examples [lo, hi) of the range; returns b. */
static LLVMValueRef batch_open(const em *e, loop *l)
{
    return loop_open(e, l, e->lo, e->hi, "b");
}

/* Vector chunks along a length: full ones, then a masked tail. */
typedef struct chunks {
    int64_t full;       /* full vectors */
    int tail;           /* floats in the last, partial one (0: none) */
} chunks;

static chunks chunks_of(const em *e, int64_t len)
{
    return (chunks){len / e->vl, (int)(len % e->vl)};
}

/* The vector chunks along a row of len floats, in two passes: pass 0 opens a
 * loop over the full chunks, pass 1 is the masked tail (false: there is
 * none). c is the chunk's first index, m its lanes. */
typedef struct chunk_pass {
    loop l;
    bool tail;
    LLVMValueRef c;
    lanes m;
} chunk_pass;

static bool chunk_open(const em *e, int64_t len, int pass, chunk_pass *cp)
{
    chunks ch = chunks_of(e, len);
    cp->tail = pass == 1;
    if (cp->tail && !ch.tail)
        return false;
    cp->c = cp->tail ? ci(e, ch.full * e->vl)
                     : loop_step(e, &cp->l, ci(e, 0), ci(e, ch.full * e->vl), e->vl, "c");
    cp->m = cp->tail ? lane_range(0, ch.tail, e->vl) : lane_range(0, e->vl, e->vl);
    return true;
}

static void chunk_close(const em *e, chunk_pass *cp)
{
    if (!cp->tail)
        loop_close(e, &cp->l);
}

/* ---- element-wise ops ---------------------------------------------------------------- */

/* forward:  shift  out = in + by;  relu  out = max(in, 0) (in > 0 ? in : 0);
 *           flatten  out = in;  add  out = in0 + in1
 * backward: shift, flatten  din += dout;  relu  din += out > 0 ? dout : 0;
 *           add  din0 += dout, din1 += dout (each when asked) */
static void emit_elementwise(const em *e, const lipc_node *v, lipc_kkind kind, const bool *need)
{
    int64_t len = numel(v);
    loop l;
    LLVMValueRef i = loop_open(e, &l, imul(e, e->lo, ci(e, len)), imul(e, e->hi, ci(e, len)), "i");
    if (kind == LIPC_K_FORWARD) {
        LLVMValueRef x = load(e, e->p[0], i), y = NULL;
        switch (v->op) {
        case LIPC_OP_SHIFT:
            y = fadd(e, x, cf(e, v->a.by), false);
            break;
        case LIPC_OP_RELU:
            y = LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, x, cf(e, 0.0), ""), x,
                                cf(e, 0.0), "");
            break;
        case LIPC_OP_ADD:
            y = fadd(e, x, load(e, e->p[1], i), false);
            break;
        default:
            y = x;
        }
        store(e, y, e->p[2], i);
    } else {
        LLVMValueRef dy = load(e, e->p[0], i);
        if (v->op == LIPC_OP_RELU) {
            LLVMValueRef pos = LLVMBuildFCmp(e->b, LLVMRealOGT, load(e, e->p[4], i), cf(e, 0.0), "");
            dy = LLVMBuildSelect(e->b, pos, dy, cf(e, 0.0), "");
        }
        if (need[0])
            accum(e, dy, e->p[1], i);
        if (v->op == LIPC_OP_ADD && need[1])
            accum(e, dy, e->p[2], i);
    }
    loop_close(e, &l);
}

/* ---- pad -------------------------------------------------------------------------------
 * forward:  out[b, i, y, x] = in[b, i, y - top, x - left] inside, 0 in the border
 * backward: din[b, i, y, x] += dout[b, i, y + top, x + left] */
static void emit_pad(const em *e, const lipc_node *v, lipc_kkind kind)
{
    int c = v->in[0]->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int oh = v->shape.d[1], ow = v->shape.d[2], top = v->a.pad[0], left = v->a.pad[2];
    LIPC_ASSERT(top >= 0 && left >= 0 && top + h <= oh && left + w <= ow);
    bool fwd = kind == LIPC_K_FORWARD;
    LLVMValueRef src = fwd ? e->p[0] : e->p[1], dst = fwd ? e->p[2] : e->p[0];
    loop lb, lz, li, ly, lx;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, src, (int64_t)c * h * w, b);
    LLVMValueRef yb = example(e, dst, numel(v), b);
    if (fwd) {
        LLVMValueRef j = loop_open(e, &lz, ci(e, 0), ci(e, numel(v)), "zero");
        store(e, cf(e, 0.0), yb, j);
        loop_close(e, &lz);
    }
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, c), "i");
    LLVMValueRef y = loop_open(e, &ly, ci(e, 0), ci(e, h), "y");
    LLVMValueRef in_row = iaxc(e, iadd(e, imul(e, i, ci(e, h)), y), w, 0);
    LLVMValueRef out_row = iaxc(e, iadd(e, imul(e, i, ci(e, oh)), iaxc(e, y, 1, top)), ow, left);
    LLVMValueRef x = loop_open(e, &lx, ci(e, 0), ci(e, w), "x");
    if (fwd)
        store(e, load(e, xb, iadd(e, in_row, x)), yb, iadd(e, out_row, x));
    else
        accum(e, load(e, yb, iadd(e, out_row, x)), xb, iadd(e, in_row, x));
    loop_close(e, &lx);
    loop_close(e, &ly);
    loop_close(e, &li);
    loop_close(e, &lb);
}

/* ---- minmax ---------------------------------------------------------------------------------
 * Pairs (ia, ib): halves (k, k + c/2), adjacent (2k, 2k + 1), for k < c/2;
 * per pixel, with gt = in[ia] > in[ib] (the ref's comparison):
 *   forward:  out[ia] = gt ? in[ia] : in[ib],   out[ib] = gt ? in[ib] : in[ia]
 *   backward: din[ia] += gt ? dout[ia] : dout[ib],  din[ib] += gt ? dout[ib] : dout[ia]
 *             (= instead of += when the step zeroes din first: writes_din) */
static void emit_minmax(const em *e, const lipc_node *v, lipc_kkind kind, lipc_kinfo *info)
{
    int c = v->shape.d[0];
    /* the pairs cover every channel when c is even: din is then written whole */
    info->writes_din = kind == LIPC_K_BACKWARD && e->din_zeroed && c % 2 == 0;
    int64_t hw = v->shape.rank == 3 ? (int64_t)v->shape.d[1] * v->shape.d[2] : 1;
    bool halves = v->a.pairing == LIPC_PAIR_HALVES, fwd = kind == LIPC_K_FORWARD;
    loop lb, lk;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, fwd ? e->p[0] : e->p[3], numel(v), b);
    LLVMValueRef src = example(e, e->p[0], numel(v), b); /* in or dout */
    LLVMValueRef dst = example(e, fwd ? e->p[2] : e->p[1], numel(v), b); /* out or din */
    LLVMValueRef k = loop_open(e, &lk, ci(e, 0), ci(e, c / 2), "k");
    LLVMValueRef ia = iaxc(e, halves ? k : iaxc(e, k, 2, 0), hw, 0);
    LLVMValueRef ib = iaxc(e, halves ? iaxc(e, k, 1, c / 2) : iaxc(e, k, 2, 1), hw, 0);
    /* each pair's planes in vectors along the positions, a masked tail last */
    for (int pass = 0; pass < 2; pass++) {
        chunk_pass cp;
        if (!chunk_open(e, hw, pass, &cp))
            break;
        LLVMValueRef ja = iadd(e, ia, cp.c), jb = iadd(e, ib, cp.c);
        LLVMValueRef gt = LLVMBuildFCmp(e->b, LLVMRealOGT, vload(e, xb, ja, cp.m),
                                        vload(e, xb, jb, cp.m), "");
        LLVMValueRef sa = vload(e, src, ja, cp.m), sb = vload(e, src, jb, cp.m);
        LLVMValueRef ra = LLVMBuildSelect(e->b, gt, sa, sb, "");
        LLVMValueRef rb = LLVMBuildSelect(e->b, gt, sb, sa, "");
        if (!fwd && !info->writes_din) {
            ra = fadd(e, vload(e, dst, ja, cp.m), ra, false);
            rb = fadd(e, vload(e, dst, jb, cp.m), rb, false);
        }
        vstore(e, ra, dst, ja, cp.m);
        vstore(e, rb, dst, jb, cp.m);
        chunk_close(e, &cp);
    }
    loop_close(e, &lk);
    loop_close(e, &lb);
}

/* ---- avgpool --------------------------------------------------------------------------------
 *   forward:  out[b, i, p, q] = 1/(kh kw) sum_{ky, kx} in[b, i, p*sh + ky, q*sw + kx]
 *   backward: din[b, i, p*sh + ky, q*sw + kx] += dout[b, i, p, q] / (kh kw)
 * (no padding; 1/(kh kw) rounded to float once). */
static void emit_avgpool(const em *e, const lipc_node *v, lipc_kkind kind)
{
    int c = v->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int oh = v->shape.d[1], ow = v->shape.d[2];
    int kh = v->a.kernel[0], kw = v->a.kernel[1], sh = v->a.stride[0], sw = v->a.stride[1];
    bool fwd = kind == LIPC_K_FORWARD;
    LLVMValueRef acc = var_new(e, e->f32, "acc"), inv = cf(e, 1.0 / ((double)kh * kw));
    loop lb, li, lp, lq, lky, lkx;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, fwd ? e->p[0] : e->p[1], (int64_t)c * h * w, b);
    LLVMValueRef yb = example(e, fwd ? e->p[2] : e->p[0], numel(v), b);
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, c), "i");
    LLVMValueRef xi = at(e, xb, iaxc(e, i, (int64_t)h * w, 0));
    LLVMValueRef yi = at(e, yb, iaxc(e, i, (int64_t)oh * ow, 0));
    LLVMValueRef p = loop_open(e, &lp, ci(e, 0), ci(e, oh), "p");
    LLVMValueRef q = loop_open(e, &lq, ci(e, 0), ci(e, ow), "q");
    LLVMValueRef o = iadd(e, iaxc(e, p, ow, 0), q);
    LLVMValueRef dy = fwd ? NULL : fmul(e, load(e, yi, o), inv, false);
    if (fwd)
        var_set(e, acc, cf(e, 0.0));
    LLVMValueRef ky = loop_open(e, &lky, ci(e, 0), ci(e, kh), "ky");
    LLVMValueRef row = iaxc(e, iadd(e, iaxc(e, p, sh, 0), ky), w, 0);
    LLVMValueRef kx = loop_open(e, &lkx, ci(e, 0), ci(e, kw), "kx");
    LLVMValueRef j = iadd(e, row, iadd(e, iaxc(e, q, sw, 0), kx));
    if (fwd)
        var_set(e, acc, fadd(e, var_get(e, e->f32, acc), load(e, xi, j), true));
    else
        accum(e, dy, xi, j);
    loop_close(e, &lkx);
    loop_close(e, &lky);
    if (fwd)
        store(e, fmul(e, var_get(e, e->f32, acc), inv, false), yi, o);
    loop_close(e, &lq);
    loop_close(e, &lp);
    loop_close(e, &li);
    loop_close(e, &lb);
}

/* ---- conv2d: geometry ---------------------------------------------------------------------
 *   out[b, o, y, x] = bias[o] (+ in[b, o, y, x] when fold_identity)
 *                     + sum_{i, ky, kx} W[o, i, ky, kx] in[b, i, y*sh + ky - top, x*sw + kx - left]
 * (zero outside the input). */

typedef struct conv_geo {
    int cin, h, w, cout, oh, ow, kh, kw, sh, sw, top, left;
    bool identity;      /* out += in (same shape) */
    bool bias;          /* out starts at bias[o] */
    bool accumulate;    /* out += the result (the adjoint into din) */
} conv_geo;

static conv_geo conv_geometry(const lipc_node *v)
{
    const lipc_attrs *a = &v->a;
    conv_geo g = {
        .cin = v->in[0]->shape.d[0], .h = v->in[0]->shape.d[1], .w = v->in[0]->shape.d[2],
        .cout = v->shape.d[0], .oh = v->shape.d[1], .ow = v->shape.d[2],
        .kh = a->kernel[0], .kw = a->kernel[1], .sh = a->stride[0], .sw = a->stride[1],
        .top = a->pad[0], .left = a->pad[2], .identity = a->fold_identity, .bias = a->bias,
    };
    if (g.identity)
        LIPC_ASSERT(g.cin == g.cout && g.oh == g.h && g.ow == g.w);
    return g;
}

/* The fast kernels: stride 1 and each pad below the kernel (so the adjoint's
 * padding k - 1 - pad is >= 0 too). */
static bool conv_fast(const lipc_node *v)
{
    const lipc_attrs *a = &v->a;
    return a->stride[0] == 1 && a->stride[1] == 1 && a->pad[0] < a->kernel[0] &&
           a->pad[1] < a->kernel[0] && a->pad[2] < a->kernel[1] && a->pad[3] < a->kernel[1];
}

/* The adjoint of a stride-1 conv as a conv: in and out swap, the kernel is
 * flipped and transposed, padding k - 1 - pad; it accumulates into din. */
static conv_geo conv_adjoint(const conv_geo *f)
{
    conv_geo g = *f;
    g.cin = f->cout;
    g.h = f->oh;
    g.w = f->ow;
    g.cout = f->cin;
    g.oh = f->h;
    g.ow = f->w;
    g.top = f->kh - 1 - f->top;
    g.left = f->kw - 1 - f->left;
    g.bias = false;
    g.accumulate = true;
    return g;
}

/* The output positions p in [*lo, *hi) of one axis whose input p*s + k - pad
 * lies in [0, len), clamped to [0, out). */
static void tap_range(int k, int pad, int s, int len, int out, int *lo, int *hi)
{
    int first = pad - k;                  /* need p*s >= first */
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    int last = len - 1 + pad - k;         /* need p*s <= last */
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > out)
        *hi = out;
    if (*lo > *hi)
        *lo = *hi;
}

/* tap_range for a runtime k: [*lo, *hi) is empty when *hi <= *lo. */
static void tap_range_rt(const em *e, LLVMValueRef k, int pad, int s, int len, int out,
                         LLVMValueRef *lo, LLVMValueRef *hi)
{
    LLVMValueRef first = iaxc(e, LLVMBuildNeg(e->b, k, ""), 1, pad); /* need p s >= first */
    LLVMValueRef last = iaxc(e, first, 1, len - 1);                  /* need p s <= last */
    /* ceil(first / s) where first > 0, and floor(last / s) + 1 where last >= 0 */
    *lo = imax(e, LLVMBuildSDiv(e->b, iaxc(e, first, 1, s - 1), ci(e, s), ""), ci(e, 0));
    LLVMValueRef past = iaxc(e, LLVMBuildSDiv(e->b, last, ci(e, s), ""), 1, 1);
    *hi = imin(e, LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, last, ci(e, 0), ""),
                                  ci(e, 0), past, ""),
               ci(e, out));
}

/* ---- conv2d: the fast stride-1 forward (and adjoint) ----------------------------------------
 *
 * One output row y (a runtime value), taps ky in [ky_lo, ky_hi) (the rows of
 * the input it reads), channels [co, co + cb):
 *   for each tile of vl columns x0:
 *     acc[j] = bias, identity;  for i: for ky, kx: acc[j] += W[co+j, i, ky, kx] * in[i, y+ky-top, x0+kx-left ...]
 * with the column masks constant per (tile, kx). */
static void conv_row(const em *e, const conv_geo *g, LLVMValueRef xb, LLVMValueRef yb,
                     LLVMValueRef w, LLVMValueRef bias, LLVMValueRef co, int cb, LLVMValueRef y,
                     int ry, int ky_lo, int ky_hi, LLVMValueRef *acc)
{
    int64_t in_plane = (int64_t)g->h * g->w, out_plane = (int64_t)g->oh * g->ow;
    int64_t wstride = (int64_t)g->cin * g->kh * g->kw;
    LIPC_ASSERT(ry >= 1 && ry <= CONV_RY);
    for (int x0 = 0; x0 < g->ow; x0 += e->vl) {
        lanes out_m = lane_range(0, g->ow - x0, e->vl);
        for (int r = 0; r < ry; r++)
            for (int j = 0; j < cb; j++) {
                LLVMValueRef c = iaxc(e, co, 1, j);
                LLVMValueRef v = g->bias ? splat(e, load(e, bias, c)) : vzero(e);
                if (g->identity)
                    v = fadd(e, v, vload(e, xb, iadd(e, iaxc(e, c, in_plane, x0),
                                                     iaxc(e, y, g->w, r * g->w)), out_m), false);
                var_set(e, acc[r * CONV_CB + j], v);
            }
        loop li;
        LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
        LLVMValueRef xi = at(e, xb, iaxc(e, i, in_plane, 0));
        LLVMValueRef wi = at(e, w, iadd(e, imul(e, co, ci(e, wstride)), iaxc(e, i, (int64_t)g->kh * g->kw, 0)));
        LLVMValueRef a[CONV_RY * CONV_CB];
        for (int r = 0; r < ry; r++)
            for (int j = 0; j < cb; j++)
                a[r * CONV_CB + j] = var_get(e, e->vt, acc[r * CONV_CB + j]);
        for (int ky = ky_lo; ky < ky_hi; ky++) {
            for (int kx = 0; kx < g->kw; kx++) {
                int c0 = x0 + kx - g->left; /* input column of lane 0 */
                lanes m = out_m & lane_range(-c0, g->w - c0, e->vl);
                if (!m)
                    continue;
                /* one input vector per row, one broadcast weight per channel,
                 * shared by the rows: ry x cb FMAs */
                LLVMValueRef xv[CONV_RY];
                for (int r = 0; r < ry; r++)
                    xv[r] = vload(e, xi, iaxc(e, iaxc(e, y, g->w, (r + ky - g->top) * g->w), 1, c0),
                                  m);
                for (int j = 0; j < cb; j++) {
                    LLVMValueRef wv = splat(e, load(e, wi, ci(e, j * wstride + ky * g->kw + kx)));
                    for (int r = 0; r < ry; r++)
                        a[r * CONV_CB + j] = vfma(e, wv, xv[r], a[r * CONV_CB + j]);
                }
            }
        }
        for (int r = 0; r < ry; r++)
            for (int j = 0; j < cb; j++)
                var_set(e, acc[r * CONV_CB + j], a[r * CONV_CB + j]);
        loop_close(e, &li);
        for (int r = 0; r < ry; r++)
            for (int j = 0; j < cb; j++) {
                LLVMValueRef c = iaxc(e, co, 1, j);
                LLVMValueRef idx = iadd(e, iaxc(e, c, out_plane, x0), iaxc(e, y, g->ow, r * g->ow));
                LLVMValueRef v = var_get(e, e->vt, acc[r * CONV_CB + j]);
                if (g->accumulate)
                    v = fadd(e, v, vload(e, yb, idx, out_m), false);
                vstore(e, v, yb, idx, out_m);
            }
    }
}

/* Visits the output rows of a stride-1 conv: the interior rows (every tap
 * inside the input) in one loop, the border rows one by one with their
 * valid taps [ky_lo, ky_hi). */
typedef struct row_visit {
    /* rows y .. y + ry - 1 (ry <= CONV_RY, all interior when ry > 1) */
    void (*row)(const em *e, const conv_geo *g, const void *ctx, LLVMValueRef y, int ry,
                int ky_lo, int ky_hi);
    const void *ctx;
} row_visit;

static void for_rows(const em *e, const conv_geo *g, const row_visit *rv)
{
    int in_lo = g->top, in_hi = g->h + g->top - g->kh + 1; /* rows with every tap */
    if (in_lo > g->oh)
        in_lo = g->oh;
    if (in_hi > g->oh)
        in_hi = g->oh;
    if (in_hi < in_lo)
        in_hi = in_lo;
    for (int y = 0; y < g->oh; y++) {
        if (y == in_lo && in_hi > in_lo) {
            /* CONV_RY rows at a time, then the rest one by one */
            int pairs_end = in_lo + (in_hi - in_lo) / CONV_RY * CONV_RY;
            loop ly;
            LLVMValueRef yv = loop_step(e, &ly, ci(e, in_lo), ci(e, pairs_end), CONV_RY, "y");
            rv->row(e, g, rv->ctx, yv, CONV_RY, 0, g->kh);
            loop_close(e, &ly);
            for (int t = pairs_end; t < in_hi; t++)
                rv->row(e, g, rv->ctx, ci(e, t), 1, 0, g->kh);
            y = in_hi - 1;
            continue;
        }
        int ky_lo = g->top - y > 0 ? g->top - y : 0;
        int ky_hi = g->h + g->top - y < g->kh ? g->h + g->top - y : g->kh;
        if (ky_hi <= ky_lo) /* no tap reads the input */
            ky_lo = ky_hi = 0;
        rv->row(e, g, rv->ctx, ci(e, y), 1, ky_lo, ky_hi);
    }
}

typedef struct conv_row_ctx {
    LLVMValueRef xb, yb, w, bias, co, *acc;
    int cb;
} conv_row_ctx;

static void conv_row_cb(const em *e, const conv_geo *g, const void *ctx, LLVMValueRef y, int ry,
                        int ky_lo, int ky_hi)
{
    const conv_row_ctx *c = ctx;
    conv_row(e, g, c->xb, c->yb, c->w, c->bias, c->co, c->cb, y, ry, ky_lo, ky_hi, c->acc);
}

static void conv_rows(const em *e, const conv_geo *g, LLVMValueRef xb, LLVMValueRef yb,
                      LLVMValueRef w, LLVMValueRef bias, LLVMValueRef co, int cb, LLVMValueRef *acc)
{
    conv_row_ctx c = {xb, yb, w, bias, co, acc, cb};
    row_visit rv = {conv_row_cb, &c};
    for_rows(e, g, &rv);
}

/* Fast forward (or, with the adjoint's geometry, input gradient): examples
 * [lo, hi) of in p_in, out p_out, weight w, bias. */
static void emit_conv_fast(const em *e, const conv_geo *g, LLVMValueRef pin, LLVMValueRef pout,
                           LLVMValueRef w, LLVMValueRef bias)
{
    LLVMValueRef acc[CONV_RY * CONV_CB];
    for (int j = 0; j < CONV_RY * CONV_CB; j++)
        acc[j] = var_new(e, e->vt, "acc");
    loop lb, lc;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, pin, (int64_t)g->cin * g->h * g->w, b);
    LLVMValueRef yb = example(e, pout, (int64_t)g->cout * g->oh * g->ow, b);
    int cb = g->cout < CONV_CB ? g->cout : CONV_CB, full_blocks = g->cout / cb;
    LLVMValueRef co = loop_step(e, &lc, ci(e, 0), ci(e, (int64_t)full_blocks * cb), cb, "co");
    conv_rows(e, g, xb, yb, w, bias, co, cb, acc);
    loop_close(e, &lc);
    if (g->cout % cb)
        conv_rows(e, g, xb, yb, w, bias, ci(e, (int64_t)full_blocks * cb), g->cout % cb, acc);
    loop_close(e, &lb);
}

/* ---- conv2d: the fast stride-1 weight gradient ----------------------------------------------
 *   dW[o, i, ky, kx] += scale sum_b sum_{y, x} dout[b, o, y, x] in[b, i, y+ky-top, x+kx-left]
 *   dbias[o]         += sum_b sum_{y, x} dout[b, o, y, x]
 * The range is blocks of WGRAD_CB output channels. For each block and input
 * channel, vector accumulators per (channel, tap) run over a chunk of
 * examples and are reduced into dW at the end of the chunk. */
typedef struct wgrad_ctx {
    LLVMValueRef xi, db, co, *acc;
    int cb;
} wgrad_ctx;

/* One output row y: the dout tiles of the block's channels, times the input
 * rows of its valid taps, into the (channel, tap) accumulators. */
static void wgrad_row1(const em *e, const conv_geo *g, const wgrad_ctx *c, LLVMValueRef y,
                       int ky_lo, int ky_hi);

static void wgrad_row(const em *e, const conv_geo *g, const void *ctx, LLVMValueRef y, int ry,
                      int ky_lo, int ky_hi)
{
    for (int r = 0; r < ry; r++)
        wgrad_row1(e, g, ctx, iaxc(e, y, 1, r), ky_lo, ky_hi);
}

static void wgrad_row1(const em *e, const conv_geo *g, const wgrad_ctx *c, LLVMValueRef y,
                       int ky_lo, int ky_hi)
{
    int64_t out_plane = (int64_t)g->oh * g->ow;
    int taps = g->kh * g->kw;
    for (int x0 = 0; x0 < g->ow; x0 += e->vl) {
        lanes out_m = lane_range(0, g->ow - x0, e->vl);
        LLVMValueRef dv[WGRAD_CB];
        for (int j = 0; j < c->cb; j++)
            dv[j] = vload(e, c->db, iadd(e, iaxc(e, c->co, out_plane, j * out_plane + x0),
                                         iaxc(e, y, g->ow, 0)), out_m);
        for (int ky = ky_lo; ky < ky_hi; ky++) {
            LLVMValueRef row = iaxc(e, iaxc(e, y, 1, ky - g->top), g->w, 0);
            /* the input's columns [x0 - vl, x0 + 2 vl) as three aligned vectors
             * (zeros outside the input); each tap's window is a lane shift
             * of two of them, not a load across cache lines (those cost this
             * kernel a quarter of its time) */
            LLVMValueRef near[3];
            for (int q = 0; q < 3; q++) {
                int base = x0 + (q - 1) * e->vl;
                lanes mq = lane_range(-base, g->w - base, e->vl);
                bool used = false;
                for (int kx = 0; kx < g->kw; kx++) {
                    int d = kx - g->left;
                    used |= q == 1 || (q == 0 && d < 0) || (q == 2 && d > 0);
                }
                near[q] = used && mq ? vload(e, c->xi, iaxc(e, row, 1, base), mq) : vzero(e);
            }
            for (int kx = 0; kx < g->kw; kx++) {
                int c0 = x0 + kx - g->left, d = kx - g->left;
                lanes m = out_m & lane_range(-c0, g->w - c0, e->vl);
                if (!m)
                    continue;
                LLVMValueRef xv;
                if (d == 0 || d <= -e->vl || d >= e->vl) {
                    xv = d == 0 ? near[1] : vload(e, c->xi, iaxc(e, row, 1, c0), m);
                } else {
                    /* lanes l <- column x0 + l + d: of (near[0], near[1]) for d < 0,
                     * of (near[1], near[2]) for d > 0 */
                    LLVMValueRef idx[32];
                    for (int l = 0; l < e->vl; l++)
                        idx[l] = LLVMConstInt(e->i32, (unsigned long long)(d < 0 ? e->vl + l + d
                                                                               : l + d), false);
                    xv = LLVMBuildShuffleVector(e->b, d < 0 ? near[0] : near[1],
                                                d < 0 ? near[1] : near[2],
                                                LLVMConstVector(idx, (unsigned)e->vl), "");
                }
                for (int j = 0; j < c->cb; j++) {
                    LLVMValueRef a = c->acc[j * taps + ky * g->kw + kx];
                    var_set(e, a, vfma(e, dv[j], xv, var_get(e, e->vt, a)));
                }
            }
        }
    }
}

static void wgrad_rows(const em *e, const conv_geo *g, LLVMValueRef xb, LLVMValueRef db,
                       LLVMValueRef co, int cb, LLVMValueRef i, LLVMValueRef *acc)
{
    wgrad_ctx c = {at(e, xb, iaxc(e, i, (int64_t)g->h * g->w, 0)), db, co, acc, cb};
    row_visit rv = {wgrad_row, &c};
    for_rows(e, g, &rv);
}

/* dbias[o] += the sum of dout[b, o] over the batch and the map, for o in
 * [co, co + cb) (scale applies to the weight only); a is a vector variable. */
static void wgrad_bias(const em *e, const conv_geo *g, LLVMValueRef co, int cb, LLVMValueRef a)
{
    int64_t out_plane = (int64_t)g->oh * g->ow, out_len = (int64_t)g->cout * out_plane;
    for (int j = 0; j < cb; j++) {
        var_set(e, a, vzero(e));
        loop lb;
        LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
        LLVMValueRef plane = at(e, example(e, e->p[1], out_len, b),
                                iaxc(e, co, out_plane, j * out_plane));
        for (int pass = 0; pass < 2; pass++) {
            chunk_pass cp;
            if (!chunk_open(e, out_plane, pass, &cp))
                break;
            var_set(e, a, fadd(e, var_get(e, e->vt, a), vload(e, plane, cp.c, cp.m), false));
            chunk_close(e, &cp);
        }
        loop_close(e, &lb);
        accum(e, hsum(e, var_get(e, e->vt, a)), e->p[3], iaxc(e, co, 1, j));
    }
}

static void wgrad_block(const em *e, const conv_geo *g, LLVMValueRef co, int cb, LLVMValueRef *acc)
{
    int taps = g->kh * g->kw;
    int64_t in_len = (int64_t)g->cin * g->h * g->w, out_len = (int64_t)g->cout * g->oh * g->ow;
    LLVMValueRef dw = e->p[2];
    loop lc, li, lb;
    LLVMValueRef c0 = loop_step(e, &lc, ci(e, 0), e->n, WGRAD_CHUNK, "chunk");
    LLVMValueRef c1 = imin(e, iaxc(e, c0, 1, WGRAD_CHUNK), e->n);
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
    for (int k = 0; k < cb * taps; k++)
        var_set(e, acc[k], vzero(e));
    LLVMValueRef b = loop_open(e, &lb, c0, c1, "b");
    wgrad_rows(e, g, example(e, e->p[0], in_len, b), example(e, e->p[1], out_len, b), co, cb, i,
               acc);
    loop_close(e, &lb);
    for (int j = 0; j < cb; j++)
        for (int t = 0; t < taps; t++) {
            LLVMValueRef idx = iadd(e, imul(e, iaxc(e, co, 1, j), ci(e, (int64_t)g->cin * taps)),
                                    iaxc(e, i, taps, t));
            LLVMValueRef s = hsum(e, var_get(e, e->vt, acc[j * taps + t]));
            accum(e, fmul(e, s, e->scale, false), dw, idx);
        }
    loop_close(e, &li);
    loop_close(e, &lc);
    if (g->bias)
        wgrad_bias(e, g, co, cb, acc[0]);
}

static void emit_conv_wgrad_fast(const em *e, const conv_geo *g, int64_t *blocks)
{
    int taps = g->kh * g->kw;
    int cb = g->cout % WGRAD_CB ? 1 : WGRAD_CB;
    LLVMValueRef acc[WGRAD_CB * 49];
    LIPC_ASSERT(cb * taps <= WGRAD_CB * 49);
    for (int k = 0; k < cb * taps; k++)
        acc[k] = var_new(e, e->vt, "acc");
    loop lk;
    LLVMValueRef k = loop_open(e, &lk, e->lo, e->hi, "block");
    wgrad_block(e, g, iaxc(e, k, cb, 0), cb, acc);
    loop_close(e, &lk);
    *blocks = g->cout / cb;
}

/* ---- conv2d: the stride-1 weight gradient as a product over positions -------------------------
 *   dW[o, i, t] += scale sum_b sum_{p in P_t} dout[b, o, p] in[b, i, p + d_t]
 * for each tap t = (ky, kx), with d_t = (ky - top) w + kx - left and P_t the
 * output positions whose input p + d_t lies inside the map. The kernel above
 * runs along the rows of a map and pays for it in shuffles (window shifts)
 * and lane reductions; this one takes the vectors across input channels:
 *
 *   - a chunk of up to WT_CHUNK examples is transposed into a stack scratch
 *     xT[b][q][i] (rows of cinp = cin rounded up to vl, zeros past cin) by
 *     vl x vl register transposes;
 *   - for each tap and block of WT_NR vectors of input channels, a register
 *     tile of mr output channels x WT_NR vectors runs over the positions:
 *     per position WT_NR vector loads of xT, mr broadcasts of dout and
 *     mr x WT_NR FMAs, no shuffles and no reductions;
 *   - the positions go in bands of WT_ROWS rows whose xT block (WT_ROWS x w x
 *     WT_NR vectors) stays in L1 while every output block of the range reads
 *     it; the tiles' sums wait in slabs sum[o][i] between bands and are added
 *     to dW (i stride kh kw: a scatter) once per call when the slabs of every
 *     tap fit WT_SUMS_BYTES, else once per chunk (wt_slabs).
 *
 * The taps are a runtime loop, so the code exists once. The range is blocks
 * of mr output channels; each thread transposes the chunk for itself. Every
 * dW element is summed in one order (chunks, then examples, bands, rows,
 * columns), whatever the thread count. Used when one transposed example
 * fits WT_EXAMPLE_BYTES (wt_plan_for). */
#define WT_MR 4
#define WT_NR 4
#define WT_CHUNK 8
#define WT_ROWS 4
#define WT_SCRATCH_BYTES (1 << 18) /* the transposed chunk (in L2 with its dout) */
#define WT_EXAMPLE_BYTES (1 << 20) /* the largest transposed example */
#define WT_SUMS_BYTES (1 << 20)    /* the sums, when kept over the batch */

typedef struct wt_plan {
    int64_t plane;  /* positions per example (input and output maps are one size) */
    int64_t cinp;   /* xT row length */
    int chunk;      /* examples per transposed chunk */
    int mr;         /* output channels per block */
    int row;        /* floats per output channel in a slab of sums (WT_NR vectors) */
} wt_plan;

/* The stack scratch for examples of `plane` positions x `channels`
 * transposed: its row length (the channels rounded up to vl) and the
 * examples per chunk; false when one example does not fit. */
static bool scratch_chunk(const em *e, int64_t plane, int64_t channels, int64_t *rowlen,
                          int *chunk)
{
    if (e->vl & (e->vl - 1))
        return false;
    *rowlen = (channels + e->vl - 1) / e->vl * e->vl;
    int64_t per_example = plane * *rowlen * e->esize;
    if (per_example > WT_EXAMPLE_BYTES)
        return false;
    int64_t fit = WT_SCRATCH_BYTES / per_example;
    *chunk = fit < 1 ? 1 : fit < WT_CHUNK ? (int)fit : WT_CHUNK;
    return true;
}

static bool wt_plan_for(const em *e, const conv_geo *g, wt_plan *t)
{
    t->plane = (int64_t)g->h * g->w;
    if (g->oh != g->h || g->ow != g->w || !scratch_chunk(e, t->plane, g->cin, &t->cinp, &t->chunk))
        return false;
    t->mr = g->cout % WT_MR == 0 ? WT_MR : g->cout % 2 == 0 ? 2 : 1;
    t->row = WT_NR * e->vl;
    return true;
}

/* r[l] lane j <- r[j] lane l, for vl rows (vl a power of two): log2 vl
 * stages, stage k swapping bit k of the row with bit k of the lane. */
static void vtranspose(const em *e, LLVMValueRef *r)
{
    LLVMValueRef lo[32], hi[32];
    for (int k = 1; k < e->vl; k <<= 1) {
        for (int l = 0; l < e->vl; l++) {
            int a = (l & k) ? e->vl + (l ^ k) : l, b = (l & k) ? e->vl + l : l ^ k;
            lo[l] = LLVMConstInt(e->i32, (unsigned long long)a, false);
            hi[l] = LLVMConstInt(e->i32, (unsigned long long)b, false);
        }
        LLVMValueRef mlo = LLVMConstVector(lo, (unsigned)e->vl);
        LLVMValueRef mhi = LLVMConstVector(hi, (unsigned)e->vl);
        for (int j = 0; j < e->vl; j++) {
            if (j & k)
                continue;
            LLVMValueRef x = r[j], y = r[j | k];
            r[j] = LLVMBuildShuffleVector(e->b, x, y, mlo, "");
            r[j | k] = LLVMBuildShuffleVector(e->b, x, y, mhi, "");
        }
    }
}

/* A [channels][plane] block transposed to [plane][rowlen] (rowlen: the
 * channels rounded up to vl; the lanes past the channels get zeros). */
typedef struct tshape {
    int64_t channels, plane, rowlen;
} tshape;

/* xT[p0 + l][c0 + j] = x[c0 + j][p0 + l] for j < nc, l < np (zeros for
 * nc <= j < vl). */
static void transpose_tile(const em *e, const tshape *t, LLVMValueRef x, LLVMValueRef xt,
                           LLVMValueRef c0, int nc, LLVMValueRef p0, int np)
{
    LLVMValueRef r[32];
    lanes m = lane_range(0, np, e->vl);
    for (int j = 0; j < e->vl; j++)
        r[j] = j < nc ? vload(e, x, iadd(e, imul(e, iaxc(e, c0, 1, j), ci(e, t->plane)), p0), m)
                      : vzero(e);
    vtranspose(e, r);
    for (int l = 0; l < np; l++)
        vstore(e, r[l], xt, iadd(e, imul(e, iaxc(e, p0, 1, l), ci(e, t->rowlen)), c0),
               lane_range(0, e->vl, e->vl));
}

static void transpose_rows(const em *e, const tshape *t, LLVMValueRef x, LLVMValueRef xt,
                           LLVMValueRef c0, int nc)
{
    int64_t full = t->plane / e->vl * e->vl;
    loop lp;
    LLVMValueRef p0 = loop_step(e, &lp, ci(e, 0), ci(e, full), e->vl, "p0");
    transpose_tile(e, t, x, xt, c0, nc, p0, e->vl);
    loop_close(e, &lp);
    if (t->plane % e->vl)
        transpose_tile(e, t, x, xt, c0, nc, ci(e, full), (int)(t->plane % e->vl));
}

/* One example: x [channels][plane] -> xT [plane][rowlen]. */
static void transpose_example(const em *e, const tshape *t, LLVMValueRef x, LLVMValueRef xt)
{
    int64_t full = t->channels / e->vl * e->vl;
    loop lc;
    LLVMValueRef c0 = loop_step(e, &lc, ci(e, 0), ci(e, full), e->vl, "c0");
    transpose_rows(e, t, x, xt, c0, e->vl);
    loop_close(e, &lc);
    if (t->channels % e->vl)
        transpose_rows(e, t, x, xt, ci(e, full), (int)(t->channels % e->vl));
}

/* Examples [c0, c1) of a [n][channels][plane] block into xT, one after the
 * other ([c1 - c0][plane][rowlen]). */
static void transpose_chunk(const em *e, const tshape *t, LLVMValueRef x, LLVMValueRef xt,
                            LLVMValueRef c0, LLVMValueRef c1)
{
    loop lb;
    LLVMValueRef b = loop_open(e, &lb, c0, c1, "b");
    transpose_example(e, t, example(e, x, t->channels * t->plane, b),
                      at(e, xt, imul(e, LLVMBuildSub(e->b, b, c0, ""), ci(e, t->plane * t->rowlen))));
    loop_close(e, &lb);
}

/* What one tile pass shares: the chunk [c0, c1), the scratch, the tap (its
 * offset dq, rows [ylo, yhi), columns [xlo, xhi)). */
typedef struct wt_pass {
    const conv_geo *g;
    const wt_plan *t;
    LLVMValueRef c0, c1, xt, *acc;
    /* runtime values: the tap ky kw + kx, its offset, rows and columns */
    LLVMValueRef tap, dq, ylo, yhi, xlo, xhi;
} wt_pass;

/* The range's output channels, lo mr .. hi mr: how many. */
static LLVMValueRef wt_range(const em *e, const wt_plan *t)
{
    return imul(e, LLVMBuildSub(e->b, e->hi, e->lo, ""), ci(e, t->mr));
}

static void wt_zero(const em *e, const wt_plan *t, LLVMValueRef slab, int nr)
{
    loop l;
    LLVMValueRef o = loop_open(e, &l, ci(e, 0), wt_range(e, t), "oz");
    for (int v = 0; v < nr; v++)
        vstore(e, vzero(e), slab, iaxc(e, o, t->row, v * e->vl), lane_range(0, e->vl, e->vl));
    loop_close(e, &l);
}

/* dW[o, i0 + c, tap] += scale slab[o][c] for the range's o and c < valid. */
static void wt_scatter(const em *e, const conv_geo *g, const wt_plan *t, LLVMValueRef slab,
                       LLVMValueRef i0, int valid, LLVMValueRef tap)
{
    int taps = g->kh * g->kw;
    loop l;
    LLVMValueRef os = loop_open(e, &l, ci(e, 0), wt_range(e, t), "os");
    LLVMValueRef o = iadd(e, imul(e, e->lo, ci(e, t->mr)), os);
    LLVMValueRef wrow = at(e, e->p[2], iadd(e, imul(e, o, ci(e, (int64_t)g->cin * taps)),
                                            imul(e, i0, ci(e, taps))));
    LLVMValueRef srow = at(e, slab, imul(e, os, ci(e, t->row)));
    loop lc;
    LLVMValueRef c = loop_open(e, &lc, ci(e, 0), ci(e, valid), "c");
    accum(e, fmul(e, load(e, srow, c), e->scale, false), wrow, iadd(e, imul(e, c, ci(e, taps)), tap));
    loop_close(e, &lc);
    loop_close(e, &l);
}

/* slab[o][0, nr vl) += the tile products of input channels [i0, i0 + nr vl)
 * for one tap over the chunk. */
static void wt_accumulate(const em *e, const wt_pass *w, LLVMValueRef slab, LLVMValueRef i0, int nr)
{
    const conv_geo *g = w->g;
    const wt_plan *t = w->t;
    int mr = t->mr, vl = e->vl;
    int64_t out_len = (int64_t)g->cout * t->plane, xt_len = t->plane * t->cinp;
    lanes all = lane_range(0, vl, vl);
    loop lb, lband, lk, ly;
    LLVMValueRef b = loop_open(e, &lb, w->c0, w->c1, "b");
    LLVMValueRef db = example(e, e->p[1], out_len, b);
    LLVMValueRef xb = at(e, at(e, w->xt, imul(e, LLVMBuildSub(e->b, b, w->c0, ""), ci(e, xt_len))),
                         i0);
    LLVMValueRef y0 = loop_step(e, &lband, w->ylo, w->yhi, WT_ROWS, "band");
    LLVMValueRef y1 = imin(e, iaxc(e, y0, 1, WT_ROWS), w->yhi);
    LLVMValueRef k = loop_open(e, &lk, e->lo, e->hi, "block");
    LLVMValueRef o = imul(e, k, ci(e, mr));
    LLVMValueRef srow = at(e, slab, imul(e, LLVMBuildSub(e->b, k, e->lo, ""), ci(e, mr * t->row)));
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < nr; v++)
            var_set(e, w->acc[m * WT_NR + v], vload(e, srow, ci(e, m * t->row + v * vl), all));
    LLVMValueRef dplane = at(e, db, imul(e, o, ci(e, t->plane)));
    LLVMValueRef y = loop_open(e, &ly, y0, y1, "y");
    LLVMValueRef yrow = imul(e, y, ci(e, g->w));
    loop lx;
    LLVMValueRef x = loop_open(e, &lx, w->xlo, w->xhi, "x");
    {
        LLVMValueRef p = iadd(e, yrow, x);
        LLVMValueRef q = imul(e, iadd(e, p, w->dq), ci(e, t->cinp));
        LLVMValueRef bv[WT_NR];
        for (int v = 0; v < nr; v++)
            bv[v] = vload(e, xb, iaxc(e, q, 1, v * vl), all);
        for (int m = 0; m < mr; m++) {
            LLVMValueRef dv = splat(e, load(e, dplane, iaxc(e, p, 1, m * t->plane)));
            for (int v = 0; v < nr; v++) {
                LLVMValueRef acc = w->acc[m * WT_NR + v];
                var_set(e, acc, vfma(e, dv, bv[v], var_get(e, e->vt, acc)));
            }
        }
    }
    loop_close(e, &lx);
    loop_close(e, &ly);
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < nr; v++)
            vstore(e, var_get(e, e->vt, w->acc[m * WT_NR + v]), srow, ci(e, m * t->row + v * vl),
                   all);
    loop_close(e, &lk);
    loop_close(e, &lband);
    loop_close(e, &lb);
}

/* Each (tap, block of input channels) has a slab of sums, sum + its index x
 * slab_len when they all fit (kept over the whole batch, scattered once),
 * else one slab reused (zeroed and scattered per chunk). */
typedef struct wt_slabs {
    LLVMValueRef sum;
    int64_t len;    /* floats per slab */
    int n_blocks;   /* blocks of input channels */
    bool whole;
} wt_slabs;

static LLVMValueRef wt_slab(const em *e, const wt_slabs *s, LLVMValueRef tap, LLVMValueRef ib)
{
    if (!s->whole)
        return s->sum;
    return at(e, s->sum, imul(e, iadd(e, imul(e, tap, ci(e, s->n_blocks)), ib), ci(e, s->len)));
}

/* What wt_for_blocks does for one tap and block of input channels [i0, i0 +
 * nr vl), the first `valid` of them real (ib: the block's index). */
typedef void (*wt_visit)(const em *e, const wt_pass *w, const wt_slabs *s, LLVMValueRef ib,
                         LLVMValueRef i0, int nr, int valid);

/* Calls fn for each tap (a runtime loop: one copy of the code) and block of
 * input channels: the full blocks in a loop, then the partial one. */
static void wt_for_blocks(const em *e, const conv_geo *g, wt_pass w, const wt_slabs *s,
                          wt_visit fn)
{
    int vl = e->vl;
    int64_t block = (int64_t)WT_NR * vl, full = g->cin / block;
    int rest = (int)(g->cin - full * block);
    loop lky, lkx, li;
    LLVMValueRef ky = loop_open(e, &lky, ci(e, 0), ci(e, g->kh), "ky");
    LLVMValueRef kx = loop_open(e, &lkx, ci(e, 0), ci(e, g->kw), "kx");
    w.tap = iadd(e, imul(e, ky, ci(e, g->kw)), kx);
    w.dq = iadd(e, imul(e, iaxc(e, ky, 1, -g->top), ci(e, g->w)), iaxc(e, kx, 1, -g->left));
    tap_range_rt(e, ky, g->top, 1, g->h, g->oh, &w.ylo, &w.yhi);
    tap_range_rt(e, kx, g->left, 1, g->w, g->ow, &w.xlo, &w.xhi);
    LLVMValueRef ib = loop_open(e, &li, ci(e, 0), ci(e, full), "iblock");
    fn(e, &w, s, ib, imul(e, ib, ci(e, block)), WT_NR, (int)block);
    loop_close(e, &li);
    if (rest)
        fn(e, &w, s, ci(e, full), ci(e, full * block), (rest + vl - 1) / vl, rest);
    loop_close(e, &lkx);
    loop_close(e, &lky);
}

static void wt_visit_zero(const em *e, const wt_pass *w, const wt_slabs *s, LLVMValueRef ib,
                          LLVMValueRef i0, int nr, int valid)
{
    (void)i0, (void)valid;
    wt_zero(e, w->t, wt_slab(e, s, w->tap, ib), nr);
}

static void wt_visit_scatter(const em *e, const wt_pass *w, const wt_slabs *s, LLVMValueRef ib,
                             LLVMValueRef i0, int nr, int valid)
{
    (void)nr;
    wt_scatter(e, w->g, w->t, wt_slab(e, s, w->tap, ib), i0, valid, w->tap);
}

static void wt_visit_chunk(const em *e, const wt_pass *w, const wt_slabs *s, LLVMValueRef ib,
                           LLVMValueRef i0, int nr, int valid)
{
    LLVMValueRef slab = wt_slab(e, s, w->tap, ib);
    if (!s->whole)
        wt_zero(e, w->t, slab, nr);
    wt_accumulate(e, w, slab, i0, nr);
    if (!s->whole)
        wt_scatter(e, w->g, w->t, slab, i0, valid, w->tap);
}

static void emit_conv_wgrad_t(const em *e, const conv_geo *g, const wt_plan *t, int64_t *blocks)
{
    int vl = e->vl, mr = t->mr, taps = g->kh * g->kw;
    int64_t xt_len = t->plane * t->cinp;
    LLVMValueRef xt = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, t->chunk * xt_len), "xT");
    LLVMSetAlignment(xt, 64);
    int64_t block = (int64_t)WT_NR * vl;
    wt_slabs s = {.len = (int64_t)g->cout * t->row,
                  .n_blocks = (int)((g->cin + block - 1) / block)};
    s.whole = (int64_t)taps * s.n_blocks * s.len * e->esize <= WT_SUMS_BYTES;
    s.sum = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, s.whole ? taps * s.n_blocks * s.len : s.len),
                                 "sum");
    LLVMSetAlignment(s.sum, 64);
    LLVMValueRef acc[WT_MR * WT_NR];
    for (int k = 0; k < WT_MR * WT_NR; k++)
        acc[k] = var_new(e, e->vt, "acc");
    wt_pass w = {.g = g, .t = t, .xt = xt, .acc = acc};

    if (s.whole)
        wt_for_blocks(e, g, w, &s, wt_visit_zero);
    loop lc;
    w.c0 = loop_step(e, &lc, ci(e, 0), e->n, t->chunk, "chunk");
    w.c1 = imin(e, iaxc(e, w.c0, 1, t->chunk), e->n);
    tshape ts = {g->cin, t->plane, t->cinp};
    transpose_chunk(e, &ts, e->p[0], xt, w.c0, w.c1);
    wt_for_blocks(e, g, w, &s, wt_visit_chunk);
    loop_close(e, &lc);
    if (s.whole)
        wt_for_blocks(e, g, w, &s, wt_visit_scatter);
    if (g->bias) {
        loop lk;
        LLVMValueRef k = loop_open(e, &lk, e->lo, e->hi, "block");
        wgrad_bias(e, g, imul(e, k, ci(e, mr)), mr, acc[0]);
        loop_close(e, &lk);
    }
    *blocks = g->cout / mr;
}

/* ---- conv2d: the weight gradient with vectors across output channels ------------------------
 *   dW[o, i, ky, kx] += scale sum_b sum_{y, x} dout[b, o, y, x] in[b, i, sh y + ky - top, sw x + kx - left]
 * for convs with few input channels and any stride (the stem), where vectors
 * across input channels would be mostly padding. A chunk of dout is
 * transposed (channels innermost) into stack scratch. A unit of work is a
 * block of nr vectors of output channels, an input channel i and a kernel
 * row ky; its register tile of kw taps x nr vectors runs over the output
 * positions: per position nr vector loads of dout, one broadcast input value
 * per tap and kw x nr FMAs. The columns are unrolled, so the taps that read
 * padding are left out when the code is made. The sums go to dW lane by lane
 * once per chunk. The range is units; each dW element belongs to one, so
 * the thread count does not change the results. */
#define WO_NR 2    /* vectors of output channels per unit */
#define WO_ACC 24  /* accumulators in a tile */
#define WO_COLS 64 /* widest output row (its columns are unrolled) */

typedef struct wo_plan {
    int64_t oplane, coutp; /* output positions; dout^T row length */
    int chunk;             /* examples per transposed chunk */
    int nr, full, tail;    /* vectors per block; blocks of nr vl channels; vectors of the rest */
} wo_plan;

static bool wo_plan_for(const em *e, const conv_geo *g, wo_plan *t)
{
    t->oplane = (int64_t)g->oh * g->ow;
    if (g->ow > WO_COLS || g->kw > WO_ACC ||
        !scratch_chunk(e, t->oplane, g->cout, &t->coutp, &t->chunk))
        return false;
    t->nr = WO_NR < WO_ACC / g->kw ? WO_NR : WO_ACC / g->kw;
    int block = t->nr * e->vl;
    t->full = g->cout / block;
    t->tail = (g->cout % block + e->vl - 1) / e->vl;
    return true;
}

/* One unit's tile over the chunk [c0, c1) and its scatter into dW: output
 * channels from o0 (nr vectors, the first `valid` channels real), input
 * channel i, kernel row ky. */
static void wo_unit(const em *e, const conv_geo *g, const wo_plan *t, LLVMValueRef dt,
                    LLVMValueRef c0, LLVMValueRef c1, LLVMValueRef o0, int nr, int valid,
                    LLVMValueRef i, LLVMValueRef ky, LLVMValueRef *acc, LLVMValueRef tile)
{
    int vl = e->vl;
    int64_t in_plane = (int64_t)g->h * g->w, in_len = g->cin * in_plane;
    LLVMValueRef ylo, yhi; /* the rows whose input row sh y + ky - top lies inside */
    tap_range_rt(e, ky, g->top, g->sh, g->h, g->oh, &ylo, &yhi);
    lanes all = lane_range(0, vl, vl);
    for (int k = 0; k < g->kw * nr; k++)
        var_set(e, acc[k], vzero(e));
    loop lb, ly;
    LLVMValueRef b = loop_open(e, &lb, c0, c1, "b");
    LLVMValueRef xi = at(e, example(e, e->p[0], in_len, b), imul(e, i, ci(e, in_plane)));
    LLVMValueRef db = at(e, at(e, dt, imul(e, LLVMBuildSub(e->b, b, c0, ""), ci(e, t->oplane * t->coutp))),
                         o0);
    LLVMValueRef y = loop_open(e, &ly, ylo, yhi, "y");
    LLVMValueRef xrow = imul(e, iadd(e, imul(e, y, ci(e, g->sh)), iaxc(e, ky, 1, -g->top)), ci(e, g->w));
    LLVMValueRef drow = imul(e, y, ci(e, (int64_t)g->ow * t->coutp));
    for (int x = 0; x < g->ow; x++) { /* unrolled: padding taps drop out */
        LLVMValueRef dv[WO_NR];
        for (int v = 0; v < nr; v++)
            dv[v] = vload(e, db, iaxc(e, drow, 1, (int64_t)x * t->coutp + v * vl), all);
        for (int kx = 0; kx < g->kw; kx++) {
            int col = g->sw * x + kx - g->left;
            if (col < 0 || col >= g->w)
                continue;
            LLVMValueRef xv = splat(e, load(e, xi, iaxc(e, xrow, 1, col)));
            for (int v = 0; v < nr; v++) {
                LLVMValueRef a = acc[kx * nr + v];
                var_set(e, a, vfma(e, xv, dv[v], var_get(e, e->vt, a)));
            }
        }
    }
    loop_close(e, &ly);
    loop_close(e, &lb);
    /* dW[o0 + c, i, ky, kx] += scale acc[kx][c], through a tile in memory
     * (lane by lane in registers made the kernel slow to compile) */
    int64_t ostride = (int64_t)g->cin * g->kh * g->kw;
    LLVMValueRef wbase = at(e, e->p[2], iadd(e, imul(e, o0, ci(e, ostride)),
                                             iadd(e, imul(e, i, ci(e, (int64_t)g->kh * g->kw)),
                                                  imul(e, ky, ci(e, g->kw)))));
    for (int kx = 0; kx < g->kw; kx++) {
        for (int v = 0; v < nr; v++)
            vstore(e, var_get(e, e->vt, acc[kx * nr + v]), tile, ci(e, (int64_t)v * vl), all);
        loop lc;
        LLVMValueRef c = loop_open(e, &lc, ci(e, 0), ci(e, valid), "c");
        accum(e, fmul(e, load(e, tile, c), e->scale, false), wbase, iaxc(e, c, ostride, kx));
        loop_close(e, &lc);
    }
}

/* The two kinds of block, part 0 the full ones and part 1 the last, partial
 * one: its vectors and real channels; false when there is none of that kind.
 * Opens "if (block blk is of that kind)", closed with if_close. */
static bool wo_part_open(const em *e, const conv_geo *g, const wo_plan *t, int part,
                         LLVMValueRef blk, int *nr, int *valid, LLVMBasicBlockRef *after)
{
    int64_t block_len = (int64_t)t->nr * e->vl;
    *nr = part ? t->tail : t->nr;
    *valid = part ? (int)(g->cout - t->full * block_len) : (int)block_len;
    if (part ? !t->tail : !t->full)
        return false;
    LLVMValueRef is_tail = LLVMBuildICmp(e->b, LLVMIntEQ, blk, ci(e, t->full), "");
    *after = if_open(e, part ? is_tail : LLVMBuildNot(e->b, is_tail, ""));
    return true;
}

/* Unit u -> (block, i, ky): u = (block cin + i) kh + ky. */
static void emit_conv_wgrad_o(const em *e, const conv_geo *g, const wo_plan *t, int64_t *blocks)
{
    int vl = e->vl;
    LLVMValueRef dt = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, t->chunk * t->oplane * t->coutp), "doutT");
    LLVMSetAlignment(dt, 64);
    LLVMValueRef tile = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, (int64_t)WO_NR * vl), "tile");
    LLVMSetAlignment(tile, 64);
    LLVMValueRef acc[WO_ACC];
    for (int k = 0; k < WO_ACC; k++)
        acc[k] = var_new(e, e->vt, "acc");
    int64_t per_block = (int64_t)g->cin * g->kh, block_len = (int64_t)t->nr * vl;
    int nb = t->full + (t->tail ? 1 : 0);
    loop lc, lu;
    LLVMValueRef c0 = loop_step(e, &lc, ci(e, 0), e->n, t->chunk, "chunk");
    LLVMValueRef c1 = imin(e, iaxc(e, c0, 1, t->chunk), e->n);
    tshape ts = {g->cout, t->oplane, t->coutp};
    transpose_chunk(e, &ts, e->p[1], dt, c0, c1);
    LLVMValueRef u = loop_open(e, &lu, e->lo, e->hi, "unit");
    LLVMValueRef blk = LLVMBuildSDiv(e->b, u, ci(e, per_block), "");
    LLVMValueRef rem = LLVMBuildSRem(e->b, u, ci(e, per_block), "");
    LLVMValueRef i = LLVMBuildSDiv(e->b, rem, ci(e, g->kh), "");
    LLVMValueRef kyv = LLVMBuildSRem(e->b, rem, ci(e, g->kh), "");
    LLVMValueRef o0 = imul(e, blk, ci(e, block_len));
    for (int part = 0; part < 2; part++) {
        int nr, valid;
        LLVMBasicBlockRef after;
        if (!wo_part_open(e, g, t, part, blk, &nr, &valid, &after))
            continue;
        wo_unit(e, g, t, dt, c0, c1, o0, nr, valid, i, kyv, acc, tile);
        if_close(e, after);
    }
    loop_close(e, &lu);
    loop_close(e, &lc);
    if (g->bias) { /* by the unit (block, 0, 0) */
        loop lb;
        LLVMValueRef ub = loop_open(e, &lb, e->lo, e->hi, "unit");
        LLVMValueRef first = LLVMBuildICmp(e->b, LLVMIntEQ, LLVMBuildSRem(e->b, ub, ci(e, per_block), ""),
                                           ci(e, 0), "");
        LLVMValueRef bb = LLVMBuildSDiv(e->b, ub, ci(e, per_block), "");
        LLVMBasicBlockRef after = if_open(e, first);
        for (int part = 0; part < 2; part++) {
            int nr, valid;
            LLVMBasicBlockRef a2;
            if (!wo_part_open(e, g, t, part, bb, &nr, &valid, &a2))
                continue;
            wgrad_bias(e, g, imul(e, bb, ci(e, block_len)), valid, acc[0]);
            if_close(e, a2);
        }
        if_close(e, after);
        loop_close(e, &lb);
    }
    *blocks = nb * per_block;
}

/* ---- conv2d: the weight gradient of a 1x1 convolution (and of patch convs) ----------------
 *   dW[o, k] += scale sum_b sum_p dout[b, o, p] in[b, k, p],  p over the plane
 * A register tile of W1X1_OB output x W1X1_KB input channels, its vector
 * accumulators running over the whole batch and plane, reduced once: the
 * generic kernel's tile (2 channels x 1 tap) spent more in the reductions than
 * in the products. The range is blocks of W1X1_OB output channels. */
static void wgrad_1x1_tile(const em *e, const conv_geo *g, LLVMValueRef o, int ob, LLVMValueRef k,
                           int kb, LLVMValueRef *acc)
{
    int64_t plane = (int64_t)g->h * g->w;
    int64_t in_len = (int64_t)g->cin * plane, out_len = (int64_t)g->cout * plane;
    for (int j = 0; j < ob; j++)
        for (int q = 0; q < kb; q++)
            var_set(e, acc[j * W1X1_KB + q], vzero(e));
    loop lb;
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = at(e, example(e, e->p[0], in_len, b), imul(e, k, ci(e, plane)));
    LLVMValueRef db = at(e, example(e, e->p[1], out_len, b), imul(e, o, ci(e, plane)));
    for (int64_t x0 = 0; x0 < plane; x0 += e->vl) {
        lanes m = lane_range(0, (int)(plane - x0 < e->vl ? plane - x0 : e->vl), e->vl);
        LLVMValueRef dv[W1X1_OB], xv[W1X1_KB];
        for (int j = 0; j < ob; j++)
            dv[j] = vload(e, db, ci(e, j * plane + x0), m);
        for (int q = 0; q < kb; q++)
            xv[q] = vload(e, xb, ci(e, q * plane + x0), m);
        for (int j = 0; j < ob; j++)
            for (int q = 0; q < kb; q++)
                var_set(e, acc[j * W1X1_KB + q],
                        vfma(e, dv[j], xv[q], var_get(e, e->vt, acc[j * W1X1_KB + q])));
    }
    loop_close(e, &lb);
    for (int j = 0; j < ob; j++)
        for (int q = 0; q < kb; q++) {
            LLVMValueRef idx = iadd(e, imul(e, iaxc(e, o, 1, j), ci(e, g->cin)), iaxc(e, k, 1, q));
            LLVMValueRef sum = hsum(e, var_get(e, e->vt, acc[j * W1X1_KB + q]));
            accum(e, fmul(e, sum, e->scale, false), e->p[2], idx);
        }
}

static void emit_conv_wgrad_1x1(const em *e, const conv_geo *g, int64_t *blocks)
{
    int ob = g->cout % W1X1_OB ? 1 : W1X1_OB;
    LLVMValueRef acc[W1X1_OB * W1X1_KB];
    for (int t = 0; t < W1X1_OB * W1X1_KB; t++)
        acc[t] = var_new(e, e->vt, "acc");
    /* input channels outer: a block of them (all examples) stays in cache
     * while every output block of the range reads it; the range's dout
     * stays in L2 (output blocks outer streamed all the inputs per block) */
    loop lo, lk, lo2;
    int64_t kfull = g->cin / W1X1_KB * W1X1_KB;
    LLVMValueRef k = loop_step(e, &lk, ci(e, 0), ci(e, kfull), W1X1_KB, "k");
    LLVMValueRef blk = loop_open(e, &lo, e->lo, e->hi, "block");
    wgrad_1x1_tile(e, g, iaxc(e, blk, ob, 0), ob, k, W1X1_KB, acc);
    loop_close(e, &lo);
    loop_close(e, &lk);
    LLVMValueRef blk2 = loop_open(e, &lo2, e->lo, e->hi, "block");
    LLVMValueRef o = iaxc(e, blk2, ob, 0);
    if (g->cin % W1X1_KB)
        wgrad_1x1_tile(e, g, o, ob, ci(e, kfull), (int)(g->cin % W1X1_KB), acc);
    if (g->bias)
        wgrad_bias(e, g, o, ob, acc[0]);
    loop_close(e, &lo2);
    *blocks = g->cout / ob;
}

/* ---- conv2d: the stride-2 forward (a strided stem) --------------------------------------------
 * As the fast stride-1 forward, register-blocked by CONV_CB output channels
 * and one vector of output columns, but output column x reads input column
 * 2x + kx - left: two vector loads (masked to the input's columns, so padding
 * reads zeros) and a shuffle of their even lanes give the window. Rows whose
 * every tap lies inside the input run in a loop; the border rows are emitted
 * one by one with their valid taps. */
static void conv_s2_row(const em *e, const conv_geo *g, LLVMValueRef xb, LLVMValueRef yb,
                        LLVMValueRef co, int cb, LLVMValueRef y, int ky_lo, int ky_hi,
                        LLVMValueRef *acc)
{
    int64_t in_plane = (int64_t)g->h * g->w, out_plane = (int64_t)g->oh * g->ow;
    int64_t wstride = (int64_t)g->cin * g->kh * g->kw;
    LLVMValueRef even[32];
    for (int l = 0; l < e->vl; l++)
        even[l] = LLVMConstInt(e->i32, (unsigned long long)(2 * l), false);
    LLVMValueRef pick = LLVMConstVector(even, (unsigned)e->vl);
    for (int x0 = 0; x0 < g->ow; x0 += e->vl) {
        lanes out_m = lane_range(0, g->ow - x0, e->vl);
        for (int j = 0; j < cb; j++)
            var_set(e, acc[j], g->bias ? splat(e, load(e, e->p[4], iaxc(e, co, 1, j))) : vzero(e));
        loop li;
        LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
        LLVMValueRef xi = at(e, xb, iaxc(e, i, in_plane, 0));
        LLVMValueRef wi = at(e, e->p[3], iadd(e, imul(e, co, ci(e, wstride)),
                                            iaxc(e, i, (int64_t)g->kh * g->kw, 0)));
        LLVMValueRef a[CONV_CB];
        for (int j = 0; j < cb; j++)
            a[j] = var_get(e, e->vt, acc[j]);
        for (int ky = ky_lo; ky < ky_hi; ky++) {
            LLVMValueRef row = iaxc(e, iaxc(e, y, 2, ky - g->top), g->w, 0);
            for (int kx = 0; kx < g->kw; kx++) {
                int c0 = 2 * x0 + kx - g->left; /* input column of lane 0 */
                lanes ma = lane_range(-c0, g->w - c0, e->vl);
                lanes mb = lane_range(-c0 - e->vl, g->w - c0 - e->vl, e->vl);
                if (!ma && !mb)
                    continue;
                LLVMValueRef va = vload(e, xi, iaxc(e, row, 1, c0), ma);
                LLVMValueRef vb = vload(e, xi, iaxc(e, row, 1, c0 + e->vl), mb);
                LLVMValueRef xv = LLVMBuildShuffleVector(e->b, va, vb, pick, "");
                for (int j = 0; j < cb; j++) {
                    LLVMValueRef wv =
                        splat(e, load(e, wi, ci(e, j * wstride + ky * g->kw + kx)));
                    a[j] = vfma(e, wv, xv, a[j]);
                }
            }
        }
        for (int j = 0; j < cb; j++)
            var_set(e, acc[j], a[j]);
        loop_close(e, &li);
        for (int j = 0; j < cb; j++) {
            LLVMValueRef idx = iadd(e, iaxc(e, co, out_plane, j * out_plane + x0),
                                    iaxc(e, y, g->ow, 0));
            vstore(e, var_get(e, e->vt, acc[j]), yb, idx, out_m);
        }
    }
}

static void conv_s2_rows(const em *e, const conv_geo *g, LLVMValueRef xb, LLVMValueRef yb,
                         LLVMValueRef co, int cb, LLVMValueRef *acc)
{
    /* rows whose taps all lie inside: 2y - top >= 0, 2y + kh - 1 - top <= h - 1 */
    int in_lo = (g->top + 1) / 2, in_hi = (g->h - g->kh + g->top) / 2 + 1;
    if (in_hi > g->oh)
        in_hi = g->oh;
    if (in_lo > in_hi)
        in_lo = in_hi;
    for (int y = 0; y < g->oh; y++) {
        if (y == in_lo && in_hi > in_lo) {
            loop ly;
            LLVMValueRef yv = loop_open(e, &ly, ci(e, in_lo), ci(e, in_hi), "y");
            conv_s2_row(e, g, xb, yb, co, cb, yv, 0, g->kh, acc);
            loop_close(e, &ly);
            y = in_hi - 1;
            continue;
        }
        int ky_lo = g->top - 2 * y > 0 ? g->top - 2 * y : 0;
        int ky_hi = g->h + g->top - 2 * y < g->kh ? g->h + g->top - 2 * y : g->kh;
        if (ky_hi < ky_lo)
            ky_hi = ky_lo;
        conv_s2_row(e, g, xb, yb, co, cb, ci(e, y), ky_lo, ky_hi, acc);
    }
}

static bool conv_s2(const conv_geo *g)
{
    return g->sw == 2 && g->sh == 2 && !g->identity && !g->accumulate;
}

static void emit_conv_s2(const em *e, const conv_geo *g)
{
    LLVMValueRef acc[CONV_CB];
    for (int j = 0; j < CONV_CB; j++)
        acc[j] = var_new(e, e->vt, "acc");
    loop lb, lc;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, e->p[0], (int64_t)g->cin * g->h * g->w, b);
    LLVMValueRef yb = example(e, e->p[2], (int64_t)g->cout * g->oh * g->ow, b);
    int cb = g->cout < CONV_CB ? g->cout : CONV_CB, full_blocks = g->cout / cb;
    LLVMValueRef co = loop_step(e, &lc, ci(e, 0), ci(e, (int64_t)full_blocks * cb), cb, "co");
    conv_s2_rows(e, g, xb, yb, co, cb, acc);
    loop_close(e, &lc);
    if (g->cout % cb)
        conv_s2_rows(e, g, xb, yb, ci(e, (int64_t)full_blocks * cb), g->cout % cb, acc);
    loop_close(e, &lb);
}

/* ---- conv2d: general loop nests (strides, large padding) ------------------------------------
 * The taps (ky, kx) are unrolled at emit time: for a fixed tap the output
 * rows and columns whose input lies inside are a constant range, so padding
 * costs no test in the inner loops.
 *   forward:  out[o] plane = bias (+ identity), then += W[o, i, tap] * window of in[i]
 *   backward: din[i] window += W[o, i, tap] * dout[o] plane (+ identity)
 *   wgrad:    dW[o, i, tap] += scale sum_b <dout[b, o], window of in[b, i]>,
 *             dbias[o] += sum_b sum dout[b, o]  (range: output channels) */
typedef enum { TAP_FWD, TAP_BWD, TAP_WGRAD } tap_mode;

static void conv_taps(const em *e, const conv_geo *g, tap_mode mode, LLVMValueRef xi,
                      LLVMValueRef yo, LLVMValueRef wt, LLVMValueRef acc)
{
    loop ly, lx;
    for (int ky = 0; ky < g->kh; ky++) {
        int ylo, yhi;
        tap_range(ky, g->top, g->sh, g->h, g->oh, &ylo, &yhi);
        if (ylo == yhi)
            continue;
        for (int kx = 0; kx < g->kw; kx++) {
            int xlo, xhi;
            tap_range(kx, g->left, g->sw, g->w, g->ow, &xlo, &xhi);
            if (xlo == xhi)
                continue;
            LLVMValueRef wv = mode == TAP_WGRAD ? NULL : load(e, wt, ci(e, (int64_t)ky * g->kw + kx));
            if (mode == TAP_WGRAD)
                var_set(e, acc, cf(e, 0.0));
            LLVMValueRef y = loop_open(e, &ly, ci(e, ylo), ci(e, yhi), "y");
            LLVMValueRef in_row = iaxc(e, iaxc(e, y, g->sh, ky - g->top), g->w, kx - g->left);
            LLVMValueRef out_row = iaxc(e, y, g->ow, 0);
            LLVMValueRef x = loop_open(e, &lx, ci(e, xlo), ci(e, xhi), "x");
            LLVMValueRef src = iadd(e, in_row, iaxc(e, x, g->sw, 0)), dst = iadd(e, out_row, x);
            if (mode == TAP_FWD)
                accum(e, fmul(e, wv, load(e, xi, src), false), yo, dst);
            else if (mode == TAP_BWD)
                accum(e, fmul(e, wv, load(e, yo, dst), false), xi, src);
            else
                var_set(e, acc, fadd(e, var_get(e, e->f32, acc),
                                     fmul(e, load(e, yo, dst), load(e, xi, src), true), true));
            loop_close(e, &lx);
            loop_close(e, &ly);
            if (mode == TAP_WGRAD) {
                LLVMValueRef d = at(e, wt, ci(e, (int64_t)ky * g->kw + kx));
                LLVMBuildStore(e->b, fadd(e, LLVMBuildLoad2(e->b, e->f32, d, ""),
                                          var_get(e, e->f32, acc), false), d);
            }
        }
    }
}

static void emit_conv_general(const em *e, const conv_geo *g, lipc_kkind kind)
{
    int64_t in_plane = (int64_t)g->h * g->w, out_plane = (int64_t)g->oh * g->ow;
    int64_t in_len = g->cin * in_plane, out_len = g->cout * out_plane;
    int taps = g->kh * g->kw;
    loop lb, lo, li, lj;
    if (kind == LIPC_K_WGRAD) {
        /* range: output channels; per (o, i, tap) a sum over the batch into
         * a scratch that starts at 0, so the scale is applied once */
        LLVMValueRef acc = var_new(e, e->f32, "acc");
        LLVMValueRef part = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, taps), "part");
        LLVMValueRef o = loop_open(e, &lo, e->lo, e->hi, "o");
        LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
        for (int t = 0; t < taps; t++)
            store(e, cf(e, 0.0), part, ci(e, t));
        LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
        LLVMValueRef xi = at(e, example(e, e->p[0], in_len, b), iaxc(e, i, in_plane, 0));
        LLVMValueRef yo = at(e, example(e, e->p[1], out_len, b), iaxc(e, o, out_plane, 0));
        conv_taps(e, g, TAP_WGRAD, xi, yo, part, acc);
        loop_close(e, &lb);
        LLVMValueRef base = iadd(e, imul(e, o, ci(e, (int64_t)g->cin * taps)), iaxc(e, i, taps, 0));
        for (int t = 0; t < taps; t++)
            accum(e, fmul(e, load(e, part, ci(e, t)), e->scale, false), e->p[2],
                  iaxc(e, base, 1, t));
        loop_close(e, &li);
        if (g->bias) {
            var_set(e, acc, cf(e, 0.0));
            LLVMValueRef b2 = loop_open(e, &lb, ci(e, 0), e->n, "b");
            LLVMValueRef dyo = at(e, example(e, e->p[1], out_len, b2), iaxc(e, o, out_plane, 0));
            LLVMValueRef j = loop_open(e, &lj, ci(e, 0), ci(e, out_plane), "j");
            var_set(e, acc, fadd(e, var_get(e, e->f32, acc), load(e, dyo, j), true));
            loop_close(e, &lj);
            loop_close(e, &lb);
            accum(e, var_get(e, e->f32, acc), e->p[3], o);
        }
        loop_close(e, &lo);
        return;
    }
    bool fwd = kind == LIPC_K_FORWARD;
    LLVMValueRef pin = fwd ? e->p[0] : e->p[1], pout = fwd ? e->p[2] : e->p[0];
    LLVMValueRef w = fwd ? e->p[3] : e->p[5];
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, pin, in_len, b), yb = example(e, pout, out_len, b);
    LLVMValueRef o = loop_open(e, &lo, ci(e, 0), ci(e, g->cout), "o");
    LLVMValueRef yo = at(e, yb, iaxc(e, o, out_plane, 0));
    if (fwd) {
        /* the plane starts at the bias (and the identity) */
        LLVMValueRef bo = g->bias ? load(e, e->p[4], o) : cf(e, 0.0);
        LLVMValueRef xo = g->identity ? at(e, xb, iaxc(e, o, in_plane, 0)) : NULL;
        LLVMValueRef j = loop_open(e, &lj, ci(e, 0), ci(e, out_plane), "j");
        store(e, xo ? fadd(e, bo, load(e, xo, j), false) : bo, yo, j);
        loop_close(e, &lj);
    } else if (g->identity) {
        LLVMValueRef xo = at(e, xb, iaxc(e, o, in_plane, 0));
        LLVMValueRef j = loop_open(e, &lj, ci(e, 0), ci(e, out_plane), "j");
        accum(e, load(e, yo, j), xo, j);
        loop_close(e, &lj);
    }
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
    LLVMValueRef xi = at(e, xb, iaxc(e, i, in_plane, 0));
    LLVMValueRef wi = at(e, w, imul(e, iadd(e, imul(e, o, ci(e, g->cin)), i), ci(e, taps)));
    conv_taps(e, g, fwd ? TAP_FWD : TAP_BWD, xi, yo, wi, NULL);
    loop_close(e, &li);
    loop_close(e, &lo);
    loop_close(e, &lb);
}

/* Patch convs (kernel == stride, no padding: the neck, a patchify stem) are
 * a 1x1 conv on their patches: with P[(i, ky, kx), (py, px)] =
 * in[i, py*kh + ky, px*kw + kx], out[o, p] = sum_k W[o, k] P[k, p] where W
 * [o, i, ky, kx] is already W[o, k]. The map of positions oh*ow is one row, so
 * a 4x4 output fills one 16-float vector. */
static bool conv_patch(const lipc_node *v)
{
    const lipc_attrs *a = &v->a;
    return a->stride[0] == a->kernel[0] && a->stride[1] == a->kernel[1] && a->kernel[0] > 1 &&
           !a->pad[0] && !a->pad[1] && !a->pad[2] && !a->pad[3] && !a->fold_identity;
}

static conv_geo patch_geometry(const conv_geo *f)
{
    conv_geo g = *f;
    g.cin = f->cin * f->kh * f->kw;
    g.h = 1;
    g.w = f->oh * f->ow;
    g.oh = 1;
    g.ow = f->oh * f->ow;
    g.kh = g.kw = g.sh = g.sw = 1;
    g.top = g.left = 0;
    return g;
}

/* PATCHES: P[b, (i, ky, kx), p] = in[b, i, py*kh + ky, px*kw + kx];
 * UNPATCH: din[b, i, py*kh + ky, px*kw + kx] += G[b, (i, ky, kx), p] */
static void emit_patches(const em *e, const conv_geo *g, bool forward)
{
    int64_t in_len = (int64_t)g->cin * g->h * g->w;
    int64_t p_len = (int64_t)g->cin * g->kh * g->kw * g->oh * g->ow;
    loop lb, li, lq;
    LLVMValueRef b = batch_open(e, &lb);
    LLVMValueRef xb = example(e, forward ? e->p[0] : e->p[1], in_len, b);
    LLVMValueRef pb = example(e, forward ? e->p[1] : e->p[0], p_len, b);
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, g->cin), "i");
    for (int ky = 0; ky < g->kh; ky++)
        for (int kx = 0; kx < g->kw; kx++) {
            LLVMValueRef k = iaxc(e, i, (int64_t)g->kh * g->kw, ky * g->kw + kx);
            LLVMValueRef prow = imul(e, k, ci(e, (int64_t)g->oh * g->ow));
            LLVMValueRef q = loop_open(e, &lq, ci(e, 0), ci(e, (int64_t)g->oh * g->ow), "q");
            LLVMValueRef py = LLVMBuildSDiv(e->b, q, ci(e, g->ow), "");
            LLVMValueRef px = LLVMBuildSRem(e->b, q, ci(e, g->ow), "");
            LLVMValueRef src = iadd(e, iaxc(e, i, (int64_t)g->h * g->w, 0),
                                    iadd(e, iaxc(e, py, (int64_t)g->kh * g->w, ky * g->w),
                                         iaxc(e, px, g->kw, kx)));
            if (forward)
                store(e, load(e, xb, src), pb, iadd(e, prow, q));
            else
                accum(e, load(e, pb, iadd(e, prow, q)), xb, src);
            loop_close(e, &lq);
        }
    loop_close(e, &li);
    loop_close(e, &lb);
}

static void emit_conv(const em *e, const lipc_node *v, lipc_kkind kind, lipc_kinfo *info)
{
    conv_geo g = conv_geometry(v);
    if (conv_patch(v)) {
        conv_geo pg = patch_geometry(&g);
        info->patch = true;
        if (kind == LIPC_K_PATCHES || kind == LIPC_K_UNPATCH) {
            emit_patches(e, &g, kind == LIPC_K_PATCHES);
        } else if (kind == LIPC_K_FORWARD) {
            emit_conv_fast(e, &pg, e->p[0], e->p[2], e->p[3], e->p[4]);
        } else if (kind == LIPC_K_BACKWARD) {
            conv_geo a = conv_adjoint(&pg);
            info->flipped = true;
            emit_conv_fast(e, &a, e->p[0], e->p[1], e->p[5], NULL);
        } else {
            emit_conv_wgrad_1x1(e, &pg, &info->blocks);
        }
        return;
    }
    bool fast = conv_fast(v);
    wt_plan wt;
    wo_plan wo;
    if (kind == LIPC_K_FORWARD) {
        if (fast)
            emit_conv_fast(e, &g, e->p[0], e->p[2], e->p[3], e->p[4]);
        else if (conv_s2(&g))
            emit_conv_s2(e, &g);
        else
            emit_conv_general(e, &g, kind);
    } else if (kind == LIPC_K_BACKWARD) {
        info->flipped = fast;
        if (fast) {
            /* the adjoint's output is the whole input map: it can write din */
            conv_geo a = conv_adjoint(&g);
            a.accumulate = !e->din_zeroed;
            info->writes_din = e->din_zeroed;
            emit_conv_fast(e, &a, e->p[0], e->p[1], e->p[5], NULL);
        } else {
            emit_conv_general(e, &g, kind);
        }
    } else if (fast && g.kh == 1 && g.kw == 1 && g.top == 0 && g.left == 0) {
        emit_conv_wgrad_1x1(e, &g, &info->blocks);
    } else if (fast && wt_plan_for(e, &g, &wt)) {
        emit_conv_wgrad_t(e, &g, &wt, &info->blocks);
    } else if (fast && g.kh * g.kw <= 49) {
        emit_conv_wgrad_fast(e, &g, &info->blocks);
    } else if (g.cin < e->vl && wo_plan_for(e, &g, &wo)) {
        emit_conv_wgrad_o(e, &g, &wo, &info->blocks);
    } else {
        emit_conv_general(e, &g, kind);
        info->blocks = g.cout;
    }
}

/* ---- dense -------------------------------------------------------------------------------
 * W [out, in]; the driver passes the effective rows (row-normalised for a
 * normalising head), so these are plain products:
 *   forward:  out[b, o] = bias[o] + sum_i W[o, i] in[b, i]  (+ in[b, o] when folded)
 *             range: blocks of MM outputs; MM x MM dot products at once,
 *             vectors along i, reduced across lanes at the end
 *   backward: din[b, i] += sum_o dout[b, o] W[o, i]  (+ dout[b, i] when folded)
 *             range: examples, MM at once; vectors along i
 *   wgrad:    dW[o, i] += scale sum_b dout[b, o] in[b, i];  dbias[o] += sum_b dout[b, o]
 *             range: blocks of MM outputs; vectors along i */

/* forward body: rows [b, b + rb) x outputs [o, o + ob) */
static void dense_fwd_block(const em *e, const lipc_node *v, LLVMValueRef b, int rb,
                            LLVMValueRef o, int ob, LLVMValueRef *acc)
{
    int64_t in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    for (int r = 0; r < rb; r++)
        for (int q = 0; q < ob; q++)
            var_set(e, acc[r * MM + q], vzero(e));
    for (int pass = 0; pass < 2; pass++) {
        chunk_pass cp;
        if (!chunk_open(e, in_f, pass, &cp))
            break;
        LLVMValueRef c = cp.c;
        lanes m = cp.m;
        LLVMValueRef xv[MM], wv[MM];
        for (int r = 0; r < rb; r++)
            xv[r] = vload(e, e->p[0], iadd(e, iaxc(e, b, in_f, r * in_f), c), m);
        for (int q = 0; q < ob; q++)
            wv[q] = vload(e, e->p[3], iadd(e, iaxc(e, o, in_f, q * in_f), c), m);
        for (int r = 0; r < rb; r++)
            for (int q = 0; q < ob; q++)
                var_set(e, acc[r * MM + q], vfma(e, xv[r], wv[q], var_get(e, e->vt, acc[r * MM + q])));
        chunk_close(e, &cp);
    }
    for (int r = 0; r < rb; r++)
        for (int q = 0; q < ob; q++) {
            LLVMValueRef oq = iaxc(e, o, 1, q), br = iaxc(e, b, 1, r);
            LLVMValueRef y = hsum(e, var_get(e, e->vt, acc[r * MM + q]));
            if (v->a.fold_identity)
                y = fadd(e, y, load(e, e->p[0], iadd(e, iaxc(e, br, in_f, 0), oq)), false);
            if (v->a.bias)
                y = fadd(e, y, load(e, e->p[4], oq), false);
            store(e, y, e->p[2], iadd(e, iaxc(e, br, out_f, 0), oq));
        }
}

/* The examples of the batch in blocks of MM, then one by one. */
static void dense_fwd_outputs(const em *e, const lipc_node *v, LLVMValueRef o, int ob,
                              LLVMValueRef *acc)
{
    loop lb, lt;
    LLVMValueRef full = imul(e, LLVMBuildSDiv(e->b, e->n, ci(e, MM), ""), ci(e, MM));
    LLVMValueRef b = loop_step(e, &lb, ci(e, 0), full, MM, "b");
    dense_fwd_block(e, v, b, MM, o, ob, acc);
    loop_close(e, &lb);
    LLVMValueRef t = loop_open(e, &lt, full, e->n, "b");
    dense_fwd_block(e, v, t, 1, o, ob, acc);
    loop_close(e, &lt);
}

/* A range of blocks of MM rows [0, rows): full blocks by the loop body, and
 * the last, partial block (index rows / MM) apart. body(row0, nrows). */
typedef void (*block_body)(const em *e, const lipc_node *v, LLVMValueRef row0, int nrows,
                           LLVMValueRef *acc);

static int64_t emit_blocks(const em *e, const lipc_node *v, int64_t rows, block_body body,
                           LLVMValueRef *acc)
{
    int64_t full = rows / MM;
    loop lk;
    LLVMValueRef k = loop_open(e, &lk, e->lo, imin(e, e->hi, ci(e, full)), "blk");
    body(e, v, iaxc(e, k, MM, 0), MM, acc);
    loop_close(e, &lk);
    if (rows % MM) {
        LLVMBasicBlockRef after = if_open(e, LLVMBuildICmp(e->b, LLVMIntSGT, e->hi, ci(e, full), ""));
        body(e, v, ci(e, full * MM), (int)(rows % MM), acc);
        if_close(e, after);
    }
    return (rows + MM - 1) / MM;
}

/* backward: din rows [b, b + rb) at columns [c, c + nc vl) (lanes m of the
 * last vector) += the outputs [o0, o0 + ot)'s share: rb x nc vector
 * accumulators, so each weight vector feeds rb FMAs and each broadcast nc */
static void dense_bwd_tile(const em *e, const lipc_node *v, LLVMValueRef b, int rb,
                           LLVMValueRef c, int nc, lanes m, LLVMValueRef o0, int64_t ot,
                           LLVMValueRef *acc)
{
    int64_t in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    lanes all = lane_range(0, e->vl, e->vl);
    for (int r = 0; r < rb; r++)
        for (int k = 0; k < nc; k++)
            var_set(e, acc[r * MM + k],
                    vload(e, e->p[1], iadd(e, iaxc(e, b, in_f, r * in_f + (int64_t)k * e->vl), c),
                          k == nc - 1 ? m : all));
    loop lo;
    LLVMValueRef o = loop_open(e, &lo, o0, iaxc(e, o0, 1, ot), "o");
    LLVMValueRef wv[MM];
    for (int k = 0; k < nc; k++)
        wv[k] = vload(e, e->p[5], iadd(e, iaxc(e, o, in_f, (int64_t)k * e->vl), c),
                      k == nc - 1 ? m : all);
    for (int r = 0; r < rb; r++) {
        LLVMValueRef s = splat(e, load(e, e->p[0], iadd(e, iaxc(e, b, out_f, r * out_f), o)));
        for (int k = 0; k < nc; k++)
            var_set(e, acc[r * MM + k], vfma(e, s, wv[k], var_get(e, e->vt, acc[r * MM + k])));
    }
    loop_close(e, &lo);
    for (int r = 0; r < rb; r++)
        for (int k = 0; k < nc; k++)
            vstore(e, var_get(e, e->vt, acc[r * MM + k]), e->p[1],
                   iadd(e, iaxc(e, b, in_f, r * in_f + (int64_t)k * e->vl), c),
                   k == nc - 1 ? m : all);
}

/* The tiles of a row of len floats: MM vectors at a time, then one by one,
 * then the masked tail; tile(c, nc, m) for columns [c, c + nc vl), lanes m
 * of the last vector. */
typedef void (*col_tile)(const em *e, const void *ctx, LLVMValueRef c, int nc, lanes m);

static void for_col_tiles(const em *e, int64_t len, col_tile tile, const void *ctx)
{
    chunks ch = chunks_of(e, len);
    int64_t groups = ch.full / MM * MM;
    lanes all = lane_range(0, e->vl, e->vl);
    loop lg, l1;
    LLVMValueRef c = loop_step(e, &lg, ci(e, 0), ci(e, groups * e->vl), (int64_t)MM * e->vl, "c");
    tile(e, ctx, c, MM, all);
    loop_close(e, &lg);
    LLVMValueRef c1 = loop_step(e, &l1, ci(e, groups * e->vl), ci(e, ch.full * e->vl), e->vl, "c");
    tile(e, ctx, c1, 1, all);
    loop_close(e, &l1);
    if (ch.tail)
        tile(e, ctx, ci(e, ch.full * e->vl), 1, lane_range(0, ch.tail, e->vl));
}

typedef struct dense_tile_ctx {
    const lipc_node *v;
    LLVMValueRef b, o, *acc;
    int rows;
    int64_t ot;
} dense_tile_ctx;

static void dense_bwd_tile_cb(const em *e, const void *ctx, LLVMValueRef c, int nc, lanes m)
{
    const dense_tile_ctx *t = ctx;
    dense_bwd_tile(e, t->v, t->b, t->rows, c, nc, m, t->o, t->ot, t->acc);
}

/* backward: din rows [b, b + rb) += the outputs [o0, o0 + ot)'s share, along i
 * in column tiles (the folded identity is added apart, dense_bwd_identity) */
static void dense_bwd_rows(const em *e, const lipc_node *v, LLVMValueRef b, int rb,
                           LLVMValueRef o0, int64_t ot, LLVMValueRef *acc)
{
    dense_tile_ctx t = {.v = v, .b = b, .o = o0, .acc = acc, .rows = rb, .ot = ot};
    for_col_tiles(e, v->in[0]->shape.d[0], dense_bwd_tile_cb, &t);
}

/* din[b] += dout[b] for a folded dense (in_f == out_f) */
static void dense_bwd_identity(const em *e, const lipc_node *v, LLVMValueRef b)
{
    int64_t len = v->shape.d[0];
    for (int pass = 0; pass < 2; pass++) {
        chunk_pass cp;
        if (!chunk_open(e, len, pass, &cp))
            break;
        LLVMValueRef idx = iadd(e, iaxc(e, b, len, 0), cp.c);
        vstore(e, fadd(e, vload(e, e->p[1], idx, cp.m), vload(e, e->p[0], idx, cp.m), false),
               e->p[1], idx, cp.m);
        chunk_close(e, &cp);
    }
}

/* The examples [lo, hi): MM at a time, then one by one, for the outputs
 * [o0, o0 + ot). */
static void dense_bwd_examples(const em *e, const lipc_node *v, LLVMValueRef o0, int64_t ot,
                               LLVMValueRef *acc)
{
    loop lb, lt;
    LLVMValueRef len = LLVMBuildSub(e->b, e->hi, e->lo, "");
    LLVMValueRef full = iadd(e, e->lo, imul(e, LLVMBuildSDiv(e->b, len, ci(e, MM), ""), ci(e, MM)));
    LLVMValueRef b = loop_step(e, &lb, e->lo, full, MM, "b");
    dense_bwd_rows(e, v, b, MM, o0, ot, acc);
    loop_close(e, &lb);
    LLVMValueRef t = loop_open(e, &lt, full, e->hi, "b");
    dense_bwd_rows(e, v, t, 1, o0, ot, acc);
    loop_close(e, &lt);
}

/* wgrad: rows [o, o + ob) of dW at columns [c, c + nc vl) (lanes m of the
 * last vector), summed over the batch: ob x nc vector accumulators, so each
 * vector of the input feeds ob FMAs. */
static void dense_wgrad_tile(const em *e, const lipc_node *v, LLVMValueRef o, int ob,
                             LLVMValueRef c, int nc, lanes m, LLVMValueRef *acc)
{
    int64_t in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    lanes all = lane_range(0, e->vl, e->vl);
    for (int q = 0; q < ob; q++)
        for (int k = 0; k < nc; k++)
            var_set(e, acc[q * MM + k], vzero(e));
    loop lb;
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xv[MM];
    for (int k = 0; k < nc; k++)
        xv[k] = vload(e, e->p[0], iadd(e, iaxc(e, b, in_f, (int64_t)k * e->vl), c),
                      k == nc - 1 ? m : all);
    for (int q = 0; q < ob; q++) {
        LLVMValueRef s = splat(e, load(e, e->p[1], iadd(e, iaxc(e, b, out_f, q), o)));
        for (int k = 0; k < nc; k++)
            var_set(e, acc[q * MM + k], vfma(e, s, xv[k], var_get(e, e->vt, acc[q * MM + k])));
    }
    loop_close(e, &lb);
    for (int q = 0; q < ob; q++)
        for (int k = 0; k < nc; k++) {
            lanes mk = k == nc - 1 ? m : all;
            LLVMValueRef idx = iadd(e, iaxc(e, o, in_f, q * in_f + (int64_t)k * e->vl), c);
            LLVMValueRef g = vfma(e, splat(e, e->scale), var_get(e, e->vt, acc[q * MM + k]),
                                  vload(e, e->p[2], idx, mk));
            vstore(e, g, e->p[2], idx, mk);
        }
}

/* dbias[o] += sum_b dout[b, o] for the outputs [o, o + ob) */
static void dense_bias_rows(const em *e, const lipc_node *v, LLVMValueRef o, int ob)
{
    int64_t out_f = v->shape.d[0];
    for (int q = 0; q < ob; q++) {
        LLVMValueRef sv = var_new(e, e->f32, "db");
        var_set(e, sv, cf(e, 0.0));
        loop lb;
        LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
        var_set(e, sv, fadd(e, var_get(e, e->f32, sv),
                            load(e, e->p[1], iadd(e, iaxc(e, b, out_f, q), o)), false));
        loop_close(e, &lb);
        accum(e, var_get(e, e->f32, sv), e->p[3], iaxc(e, o, 1, q));
    }
}

static void dense_wgrad_tile_cb(const em *e, const void *ctx, LLVMValueRef c, int nc, lanes m)
{
    const dense_tile_ctx *t = ctx;
    dense_wgrad_tile(e, t->v, t->o, t->rows, c, nc, m, t->acc);
}

/* wgrad: rows [o, o + ob) of dW, along i in column tiles, summed over the
 * batch (each input vector feeds ob FMAs). (Column groups as the outer loop,
 * the outputs inner, measured slower: the rows of dW are then visited 256
 * bytes at a time, one page apart.) */
static void dense_wgrad_rows(const em *e, const lipc_node *v, LLVMValueRef o, int ob,
                             LLVMValueRef *acc)
{
    dense_tile_ctx t = {.v = v, .o = o, .acc = acc, .rows = ob};
    for_col_tiles(e, v->in[0]->shape.d[0], dense_wgrad_tile_cb, &t);
    if (v->a.bias)
        dense_bias_rows(e, v, o, ob);
}

static void dense_fwd_rows(const em *e, const lipc_node *v, LLVMValueRef o, int ob,
                           LLVMValueRef *acc)
{
    dense_fwd_outputs(e, v, o, ob, acc);
}

static void emit_dense(const em *e, const lipc_node *v, lipc_kkind kind, lipc_kinfo *info)
{
    if (v->a.fold_identity)
        LIPC_ASSERT(v->in[0]->shape.d[0] == v->shape.d[0]);
    LLVMValueRef acc[MM * MM];
    for (int k = 0; k < MM * MM; k++)
        acc[k] = var_new(e, e->vt, "acc");
    int64_t out_f = v->shape.d[0];
    if (kind == LIPC_K_FORWARD) {
        info->blocks = emit_blocks(e, v, out_f, dense_fwd_rows, acc);
    } else if (kind == LIPC_K_WGRAD) {
        info->blocks = emit_blocks(e, v, out_f, dense_wgrad_rows, acc);
    } else {
        /* the outputs in tiles whose weight rows stay in cache while every
         * example of the range reads them (the whole weight, streamed once
         * per block of examples, was memory-bound), then the identity */
        int64_t in_f = v->in[0]->shape.d[0];
        int64_t ot = DENSE_TILE_BYTES / (in_f * e->esize);
        if (ot < 1)
            ot = 1;
        if (ot > out_f)
            ot = out_f;
        int64_t tiles = out_f / ot;
        loop lt;
        LLVMValueRef o0 = loop_step(e, &lt, ci(e, 0), ci(e, tiles * ot), ot, "tile");
        dense_bwd_examples(e, v, o0, ot, acc);
        loop_close(e, &lt);
        if (out_f % ot)
            dense_bwd_examples(e, v, ci(e, tiles * ot), out_f % ot, acc);
        if (v->a.fold_identity) {
            loop li;
            LLVMValueRef b = loop_open(e, &li, e->lo, e->hi, "b");
            dense_bwd_identity(e, v, b);
            loop_close(e, &li);
        }
    }
}

/* ---- the module ------------------------------------------------------------------------------ */


static bool has_weight_grad(const lipc_node *n)
{
    return n->n_param > 0 && (n->op == LIPC_OP_CONV2D || n->op == LIPC_OP_DENSE);
}

/* One kernel; false (with an error in d) when the op has no emitter. Every op
 * of ir/ops.def is named here, so a new op lands in the default's diagnostic
 * until it gets an emitter, never in a silently wrong answer. */
static bool emit_kernel(em *e, const lipc_node *v, lipc_kkind kind, const bool *need,
                        lipc_kinfo *info, lipc_diags *d)
{
    char name[256];
    lipc_kernel_name(kind, v, name, sizeof name);
    /* the double certification kernels are the forward ones in double */
    if (kind == LIPC_K_FORWARD64)
        kind = LIPC_K_FORWARD;
    else if (kind == LIPC_K_PATCHES64)
        kind = LIPC_K_PATCHES;
    switch (v->op) {
    case LIPC_OP_SHIFT:
    case LIPC_OP_RELU:
    case LIPC_OP_FLATTEN:
    case LIPC_OP_ADD:
        fn_open(e, name);
        emit_elementwise(e, v, kind, need);
        break;
    case LIPC_OP_PAD:
        fn_open(e, name);
        emit_pad(e, v, kind);
        break;
    case LIPC_OP_MINMAX:
        fn_open(e, name);
        emit_minmax(e, v, kind, info);
        break;
    case LIPC_OP_AVGPOOL:
        fn_open(e, name);
        emit_avgpool(e, v, kind);
        break;
    case LIPC_OP_CONV2D:
        fn_open(e, name);
        emit_conv(e, v, kind, info);
        break;
    case LIPC_OP_DENSE:
        fn_open(e, name);
        emit_dense(e, v, kind, info);
        break;
    case LIPC_OP_INPUT: /* the data: bound to x, never a step */
    case LIPC_OP_COUNT:
    default: {
        lipc_diag_msg *m = lipc_diag_error(
            d, v->loc, "llvm backend: unsupported op '%s' (node %s)",
            (int)v->op >= 0 && v->op < LIPC_OP_COUNT ? lipc_op_info(v->op)->name : "?", v->name);
        lipc_diag_hint(m, "use --target=ref, or add an emitter in backend/llvm/emit.c");
        return false;
    }
    }
    fn_close(e);
    info->present = true;
    return true;
}

void lipc_kmodule_free(lipc_kmodule *km)
{
    for (int k = 0; k < LIPC_K_KINDS; k++)
        lipc_free(km->info[k]);
    if (km->mod)
        LLVMDisposeModule(km->mod);
    memset(km, 0, sizeof *km);
}

bool lipc_llvm_emit(const lipc_program *p, LLVMContextRef ctx, int vl, unsigned parts,
                    lipc_kmodule *km, lipc_diags *d)
{
    return lipc_llvm_emit_shard(p, ctx, vl, parts, 0, 1, km, d);
}

/* The shard of each node: conv2d and dense layers (the costly kernels) dealt
 * out in turn, the other nodes likewise. */
static int *shard_table(const lipc_graph *g, int shards)
{
    int *t = lipc_calloc((size_t)g->next_id + 1, sizeof(int));
    int heavy = 0, light = 0;
    for (const lipc_node *v = g->first; t && v; v = v->next)
        t[v->id] = v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE ? heavy++ % shards
                                                                     : light++ % shards;
    return t;
}

bool lipc_llvm_emit_shard(const lipc_program *p, LLVMContextRef ctx, int vl, unsigned parts,
                          int shard, int shards, lipc_kmodule *km, lipc_diags *d)
{
    const lipc_graph *g = p->g;
    memset(km, 0, sizeof *km);
    km->n_ids = g->next_id + 1;
    km->vl = vl;
    for (int k = 0; k < LIPC_K_KINDS; k++)
        if (!(km->info[k] = lipc_calloc((size_t)km->n_ids, sizeof(lipc_kinfo))))
            return false;
    em e = {.ctx = ctx, .g = g, .vl = vl};
    km->mod = e.mod = LLVMModuleCreateWithNameInContext(g->name ? g->name : "lipc", ctx);
    e.b = LLVMCreateBuilderInContext(ctx);
    e.eb = LLVMCreateBuilderInContext(ctx);
    e.f32 = LLVMFloatTypeInContext(ctx);
    e.i64 = LLVMInt64TypeInContext(ctx);
    e.i32 = LLVMInt32TypeInContext(ctx);
    e.i1 = LLVMInt1TypeInContext(ctx);
    e.ptr = LLVMPointerTypeInContext(ctx, 0);
    e.vt = LLVMVectorType(e.f32, (unsigned)vl);
    e.mt = LLVMVectorType(e.i1, (unsigned)vl);
    e.esize = 4;

    /* which nodes are power-iteration factors: they need the adjoint and the
     * weight gradient even where the training step does not */
    bool *factor = lipc_calloc((size_t)km->n_ids, sizeof(bool));
    int *shard_of = shard_table(g, shards);
    bool ok = factor != NULL && shard_of != NULL;
    for (int b = 0; ok && b < p->n_bounds; b++)
        if (p->bounds[b].kind == LIPC_LIP_OPNORM)
            factor[p->bounds[b].node->id] = true;
    static const bool none[LIPC_MAX_INPUTS] = {false, false};
    static const bool first[LIPC_MAX_INPUTS] = {true, false};
    for (int s = 0; ok && (parts & LIPC_EMIT_FLOAT) && s < p->n_steps; s++) {
        const lipc_step *st = &p->steps[s];
        const lipc_node *v = st->node;
        if (v && shard_of[v->id] != shard)
            continue;
        if (st->op == LIPC_STEP_FORWARD) {
            ok = emit_kernel(&e, v, LIPC_K_FORWARD, none, &km->info[LIPC_K_FORWARD][v->id], d);
            if (ok && v->op == LIPC_OP_CONV2D && conv_patch(v))
                ok = emit_kernel(&e, v, LIPC_K_PATCHES, none,
                                 &km->info[LIPC_K_PATCHES][v->id], d) &&
                     emit_kernel(&e, v, LIPC_K_UNPATCH, none, &km->info[LIPC_K_UNPATCH][v->id],
                                 d);
        } else if (st->op == LIPC_STEP_BACKWARD) {
            bool any = false;
            for (int i = 0; i < v->n_in; i++)
                any |= st->need_din[i];
            bool linear = v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE;
            if (any || (linear && factor[v->id])) {
                e.din_zeroed = st->need_din[0] && st->zero_din[0];
                ok = emit_kernel(&e, v, LIPC_K_BACKWARD, linear ? first : st->need_din,
                                 &km->info[LIPC_K_BACKWARD][v->id], d);
                e.din_zeroed = false;
            }
            if (ok && has_weight_grad(v))
                ok = emit_kernel(&e, v, LIPC_K_WGRAD, none, &km->info[LIPC_K_WGRAD][v->id], d);
        }
    }
    /* factors with no BACKWARD step (none today: every factor has a weight) */
    for (int b = 0; ok && (parts & LIPC_EMIT_FLOAT) && b < p->n_bounds; b++) {
        const lipc_node *v = p->bounds[b].node;
        if (p->bounds[b].kind != LIPC_LIP_OPNORM || shard_of[v->id] != shard)
            continue;
        if (!km->info[LIPC_K_BACKWARD][v->id].present)
            ok = emit_kernel(&e, v, LIPC_K_BACKWARD, first, &km->info[LIPC_K_BACKWARD][v->id], d);
        if (ok && !km->info[LIPC_K_WGRAD][v->id].present)
            ok = emit_kernel(&e, v, LIPC_K_WGRAD, none, &km->info[LIPC_K_WGRAD][v->id], d);
    }
    /* the forward kernels again in double, for certified inference */
    e.f64 = true;
    e.f32 = LLVMDoubleTypeInContext(ctx);
    e.vl = vl / 2;
    e.esize = 8;
    e.vt = LLVMVectorType(e.f32, (unsigned)e.vl);
    e.mt = LLVMVectorType(e.i1, (unsigned)e.vl);
    for (int s = 0; ok && (parts & LIPC_EMIT_DOUBLE) && s < p->n_steps; s++) {
        const lipc_step *st = &p->steps[s];
        const lipc_node *v = st->node;
        if (st->op != LIPC_STEP_FORWARD || shard_of[v->id] != shard)
            continue;
        ok = emit_kernel(&e, v, LIPC_K_FORWARD64, none, &km->info[LIPC_K_FORWARD64][v->id], d);
        if (ok && v->op == LIPC_OP_CONV2D && conv_patch(v))
            ok = emit_kernel(&e, v, LIPC_K_PATCHES64, none, &km->info[LIPC_K_PATCHES64][v->id], d);
    }
    lipc_free(factor);
    lipc_free(shard_of);
    LLVMDisposeBuilder(e.b);
    LLVMDisposeBuilder(e.eb);
    if (!ok)
        return false;
    char *msg = NULL;
    if (LLVMVerifyModule(e.mod, LLVMReturnStatusAction, &msg)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm backend: internal error: the emitted module "
                                        "does not verify:\n%s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        return false;
    }
    LLVMDisposeMessage(msg);
    return true;
}
