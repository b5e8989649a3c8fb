/* backend/llvm/emit.c: a FORWARD program -> one LLVM function, through the
 * LLVM C API.
 *
 *   void lipc_forward(const float *params, const float *x, float *logits,
 *                     float *arena, int64_t n)
 *
 * Key idea: every shape is a compile-time constant, so each op becomes one
 * loop nest whose bounds and strides are constants in the IR; only the batch
 * n is a runtime value. Values live where backend/ref/exec.c puts them (the
 * memory plan of plan-memory, in float): value v of example b is at
 *   arena + act_offset(v) * n + b * numel(v)
 * except the graph input, read straight from x, and the graph output, written
 * straight to logits (both are [n, numel] blocks, the same layout). The plan
 * never lets a step's output share memory with its inputs, so every loop nest
 * may write its output while reading its inputs. flatten is a copy, not an
 * alias: the plan may reuse its input's slot while its output is still live.
 *
 * The math of each op is its ref_forward in ir/ops/<op>.c; each emitter below
 * restates the formula it implements. Arithmetic is float32; products and sums
 * may contract into FMAs, and reductions (dense rows) may be reassociated so
 * that they vectorise: results differ from the double reference by rounding
 * only (tests/test_llvm.c states the tolerance). Accumulators are allocas in
 * the entry block; SROA / mem2reg turn them into registers.
 */
#include "backend/llvm/internal.h"

#include <llvm-c/Analysis.h>
#include <string.h>

typedef struct em {
    const lipc_program *p;
    const lipc_graph *g;
    LLVMContextRef ctx;
    LLVMModuleRef mod;
    LLVMBuilderRef b;       /* the loop nests */
    LLVMBuilderRef eb;      /* allocas and per-node bases, in the entry block */
    LLVMValueRef fn;
    LLVMTypeRef f32, i64, ptr;
    LLVMValueRef params, x, logits, arena, n;
    LLVMValueRef *base;     /* by node id: the node's [n, numel] block */
} em;

/* ---- small builders --------------------------------------------------------- */

static LLVMValueRef ci(const em *e, int64_t v)
{
    return LLVMConstInt(e->i64, (unsigned long long)v, true);
}

/* A float constant: v rounded to float once, here. */
static LLVMValueRef cf(const em *e, double v)
{
    return LLVMConstReal(e->f32, (double)(float)v);
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

static LLVMValueRef at(const em *e, LLVMValueRef base, LLVMValueRef idx)
{
    return LLVMBuildInBoundsGEP2(e->b, e->f32, base, &idx, 1, "");
}

static LLVMValueRef load(const em *e, LLVMValueRef base, LLVMValueRef idx)
{
    return LLVMBuildLoad2(e->b, e->f32, at(e, base, idx), "");
}

static void store(const em *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx)
{
    LLVMBuildStore(e->b, v, at(e, base, idx));
}

/* A float accumulator: an alloca in the entry block. */
static LLVMValueRef acc_new(const em *e, const char *name)
{
    return LLVMBuildAlloca(e->eb, e->f32, name);
}

static LLVMValueRef acc_get(const em *e, LLVMValueRef acc)
{
    return LLVMBuildLoad2(e->b, e->f32, acc, "");
}

static void acc_set(const em *e, LLVMValueRef acc, LLVMValueRef v)
{
    LLVMBuildStore(e->b, v, acc);
}

/* ---- counted loops -------------------------------------------------------------
 *
 *   for (iv = lo; iv < hi; iv++) body
 * loop_open returns iv and leaves the builder in the body; loop_close adds the
 * increment and the back edge and leaves the builder after the loop. Blocks are
 * appended in nesting order, so the printed IR reads like the loop nest. */

typedef struct loop {
    LLVMValueRef iv;
    LLVMBasicBlockRef header, exit;
} loop;

static LLVMValueRef loop_open(const em *e, loop *l, LLVMValueRef lo, LLVMValueRef hi,
                              const char *name)
{
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
    l->header = LLVMAppendBasicBlockInContext(e->ctx, e->fn, name);
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "body");
    l->exit = LLVMCreateBasicBlockInContext(e->ctx, "exit");
    LLVMBuildBr(e->b, l->header);
    LLVMPositionBuilderAtEnd(e->b, l->header);
    l->iv = LLVMBuildPhi(e->b, e->i64, name);
    LLVMAddIncoming(l->iv, &lo, &pre, 1);
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, l->iv, hi, ""), body, l->exit);
    LLVMPositionBuilderAtEnd(e->b, body);
    return l->iv;
}

static void loop_close(const em *e, loop *l)
{
    LLVMValueRef next = iadd(e, l->iv, ci(e, 1));
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, l->header);
    LLVMAddIncoming(l->iv, &next, &latch, 1);
    LLVMAppendExistingBasicBlock(e->fn, l->exit);
    LLVMPositionBuilderAtEnd(e->b, l->exit);
}

/* ---- values ------------------------------------------------------------------------ */

static int64_t numel(const lipc_node *n) { return lipc_shape_numel(n->shape); }

/* Example b of node v: [numel(v)] floats. */
static LLVMValueRef example(const em *e, const lipc_node *v, LLVMValueRef b)
{
    return at(e, e->base[v->id], imul(e, b, ci(e, numel(v))));
}

/* The node's parameter i (0: weight, 1: bias) inside the parameter block. */
static LLVMValueRef param(const em *e, const lipc_node *v, int i)
{
    LLVMValueRef off = ci(e, (int64_t)e->g->params[v->param[i]].offset);
    return LLVMBuildInBoundsGEP2(e->b, e->f32, e->params, &off, 1, "");
}

/* ---- elementwise ops: one loop over the n * numel floats ---------------------------- */

/* shift:   out = in + by
 * relu:    out = in > 0 ? in : 0
 * flatten: out = in (NCHW order is already the flat order)
 * add:     out = in[0] + in[1] */
static void emit_elementwise(const em *e, const lipc_node *v)
{
    LLVMValueRef total = imul(e, e->n, ci(e, numel(v)));
    LLVMValueRef in0 = e->base[v->in[0]->id], out = e->base[v->id];
    loop l;
    LLVMValueRef i = loop_open(e, &l, ci(e, 0), total, "i");
    LLVMValueRef x = load(e, in0, i), y = NULL;
    switch (v->op) {
    case LIPC_OP_SHIFT:
        y = fadd(e, x, cf(e, v->a.by), false);
        break;
    case LIPC_OP_RELU:
        y = LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, x, cf(e, 0.0), ""), x,
                            cf(e, 0.0), "");
        break;
    case LIPC_OP_FLATTEN:
        y = x;
        break;
    case LIPC_OP_ADD:
        y = fadd(e, x, load(e, e->base[v->in[1]->id], i), false);
        break;
    default:
        LIPC_ASSERT(!"not an elementwise op");
    }
    store(e, y, out, i);
    loop_close(e, &l);
}

/* ---- pad ------------------------------------------------------------------------------
 * out[b, i, y, x] = in[b, i, y - top, x - left] inside, 0 in the border:
 * zero the whole output, then copy the input into its interior. */
static void emit_pad(const em *e, const lipc_node *v)
{
    int c = v->in[0]->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int oh = v->shape.d[1], ow = v->shape.d[2], top = v->a.pad[0], left = v->a.pad[2];
    LIPC_ASSERT(top >= 0 && left >= 0 && top + h <= oh && left + w <= ow);
    loop lz, lb, li, ly, lx;
    LLVMValueRef j = loop_open(e, &lz, ci(e, 0), imul(e, e->n, ci(e, numel(v))), "zero");
    store(e, cf(e, 0.0), e->base[v->id], j);
    loop_close(e, &lz);

    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = example(e, v->in[0], b), yb = example(e, v, b);
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, c), "i");
    LLVMValueRef y = loop_open(e, &ly, ci(e, 0), ci(e, h), "y");
    LLVMValueRef src_row = iaxc(e, iadd(e, imul(e, i, ci(e, h)), y), w, 0);
    LLVMValueRef dst_row = iaxc(e, iadd(e, imul(e, i, ci(e, oh)), iaxc(e, y, 1, top)), ow, left);
    LLVMValueRef x = loop_open(e, &lx, ci(e, 0), ci(e, w), "x");
    store(e, load(e, xb, iadd(e, src_row, x)), yb, iadd(e, dst_row, x));
    loop_close(e, &lx);
    loop_close(e, &ly);
    loop_close(e, &li);
    loop_close(e, &lb);
}

/* ---- conv2d ----------------------------------------------------------------------------
 *   out[b, o, y, x] = bias[o] (+ in[b, o, y, x] when fold_identity)
 *                     + sum_{i, ky, kx} W[o, i, ky, kx] in[b, i, y*sh + ky - top, x*sw + kx - left]
 * (zero outside the input). The taps (ky, kx) are unrolled at emit time: for a
 * fixed tap the output rows and columns whose input lies inside are a constant
 * range, so padding costs no test in the inner loops, and the innermost loop
 * runs along a row of the output (unit stride when sw = 1: it vectorises).
 * Each tap adds W[o, i, ky, kx] * (a shifted window of channel i) to the
 * output plane of channel o, which stays in cache. */

/* The outputs p in [*lo, *hi) of one axis whose input p*s + k - pad lies in
 * [0, len), clamped to [0, out). */
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

static void emit_conv2d(const em *e, const lipc_node *v)
{
    const lipc_attrs *a = &v->a;
    int c_in = v->in[0]->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int c_out = v->shape.d[0], oh = v->shape.d[1], ow = v->shape.d[2];
    int kh = a->kernel[0], kw = a->kernel[1], sh = a->stride[0], sw = a->stride[1];
    int top = a->pad[0], left = a->pad[2];
    if (a->fold_identity)
        LIPC_ASSERT(c_in == c_out && oh == h && ow == w);
    LLVMValueRef wt = param(e, v, 0), bias = a->bias ? param(e, v, 1) : NULL;
    loop lb, lo, lj, li, ly, lx;
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = example(e, v->in[0], b), yb = example(e, v, b);
    LLVMValueRef o = loop_open(e, &lo, ci(e, 0), ci(e, c_out), "o");
    LLVMValueRef yo = at(e, yb, imul(e, o, ci(e, (int64_t)oh * ow)));
    /* the plane starts at the bias (and the identity) */
    LLVMValueRef bo = bias ? load(e, bias, o) : cf(e, 0.0);
    LLVMValueRef xo = a->fold_identity ? at(e, xb, imul(e, o, ci(e, (int64_t)h * w))) : NULL;
    LLVMValueRef j = loop_open(e, &lj, ci(e, 0), ci(e, (int64_t)oh * ow), "j");
    store(e, xo ? fadd(e, bo, load(e, xo, j), false) : bo, yo, j);
    loop_close(e, &lj);

    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, c_in), "i");
    LLVMValueRef xi = at(e, xb, imul(e, i, ci(e, (int64_t)h * w)));
    /* W[o, i, :, :] */
    LLVMValueRef wi = at(e, wt, imul(e, iadd(e, imul(e, o, ci(e, c_in)), i),
                                    ci(e, (int64_t)kh * kw)));
    for (int ky = 0; ky < kh; ky++) {
        int ylo, yhi;
        tap_range(ky, top, sh, h, oh, &ylo, &yhi);
        if (ylo == yhi)
            continue;
        for (int kx = 0; kx < kw; kx++) {
            int xlo, xhi;
            tap_range(kx, left, sw, w, ow, &xlo, &xhi);
            if (xlo == xhi)
                continue;
            LLVMValueRef wv = load(e, wi, ci(e, (int64_t)ky * kw + kx));
            LLVMValueRef y = loop_open(e, &ly, ci(e, ylo), ci(e, yhi), "y");
            LLVMValueRef in_row = iaxc(e, iaxc(e, y, sh, ky - top), w, kx - left);
            LLVMValueRef out_row = iaxc(e, y, ow, 0);
            LLVMValueRef x = loop_open(e, &lx, ci(e, xlo), ci(e, xhi), "x");
            LLVMValueRef dst = iadd(e, out_row, x);
            LLVMValueRef prod = fmul(e, wv, load(e, xi, iadd(e, in_row, iaxc(e, x, sw, 0))), false);
            store(e, fadd(e, load(e, yo, dst), prod, false), yo, dst);
            loop_close(e, &lx);
            loop_close(e, &ly);
        }
    }
    loop_close(e, &li);
    loop_close(e, &lo);
    loop_close(e, &lb);
}

/* ---- dense -------------------------------------------------------------------------------
 *   out[b, o] = bias[o] + s_o sum_i W[o, i] in[b, i]  (+ in[b, o] when fold_identity)
 * with s_o = 1 / ||W_o||_2 when normalize (0 for a zero row), else 1. The
 * scales are computed once per call, in float, into a stack array. */
static void emit_dense(const em *e, const lipc_node *v)
{
    int in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    if (v->a.fold_identity)
        LIPC_ASSERT(in_f == out_f);
    LLVMValueRef wt = param(e, v, 0), bias = v->a.bias ? param(e, v, 1) : NULL;
    LLVMValueRef acc = acc_new(e, "acc"), scale = NULL;
    loop lo, li, lb;
    if (v->a.normalize) {
        scale = LLVMBuildArrayAlloca(e->eb, e->f32, ci(e, out_f), "scale");
        LLVMTypeRef ft = e->f32;
        LLVMValueRef sqrt_fn = LLVMGetIntrinsicDeclaration(
            e->mod, LLVMLookupIntrinsicID("llvm.sqrt", 9), &ft, 1);
        LLVMTypeRef sqrt_ty = LLVMFunctionType(e->f32, &ft, 1, false);
        LLVMValueRef o = loop_open(e, &lo, ci(e, 0), ci(e, out_f), "o");
        LLVMValueRef row = at(e, wt, imul(e, o, ci(e, in_f)));
        acc_set(e, acc, cf(e, 0.0));
        LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, in_f), "i");
        LLVMValueRef wv = load(e, row, i);
        acc_set(e, acc, fadd(e, acc_get(e, acc), fmul(e, wv, wv, true), true));
        loop_close(e, &li);
        LLVMValueRef ss = acc_get(e, acc);
        LLVMValueRef norm = LLVMBuildCall2(e->b, sqrt_ty, sqrt_fn, &ss, 1, "");
        LLVMValueRef inv = LLVMBuildFDiv(e->b, cf(e, 1.0), norm, "");
        LLVMValueRef pos = LLVMBuildFCmp(e->b, LLVMRealOGT, ss, cf(e, 0.0), "");
        store(e, LLVMBuildSelect(e->b, pos, inv, cf(e, 0.0), ""), scale, o);
        loop_close(e, &lo);
    }
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = example(e, v->in[0], b), yb = example(e, v, b);
    LLVMValueRef o = loop_open(e, &lo, ci(e, 0), ci(e, out_f), "o");
    LLVMValueRef row = at(e, wt, imul(e, o, ci(e, in_f)));
    acc_set(e, acc, cf(e, 0.0));
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, in_f), "i");
    LLVMValueRef prod = fmul(e, load(e, row, i), load(e, xb, i), true);
    acc_set(e, acc, fadd(e, acc_get(e, acc), prod, true));
    loop_close(e, &li);
    LLVMValueRef y = acc_get(e, acc);
    if (scale)
        y = fmul(e, y, load(e, scale, o), false);
    if (v->a.fold_identity)
        y = fadd(e, y, load(e, xb, o), false);
    if (bias)
        y = fadd(e, y, load(e, bias, o), false);
    store(e, y, yb, o);
    loop_close(e, &lo);
    loop_close(e, &lb);
}

/* ---- minmax ---------------------------------------------------------------------------------
 * Pairs (ia, ib): halves (k, k + c/2), adjacent (2k, 2k + 1), for k < c/2;
 *   out[ia] = va > vb ? va : vb,   out[ib] = va > vb ? vb : va
 * per pixel (h*w = 1 for a flat vector), exactly the ref's comparisons. */
static void emit_minmax(const em *e, const lipc_node *v)
{
    int c = v->shape.d[0];
    int64_t hw = v->shape.rank == 3 ? (int64_t)v->shape.d[1] * v->shape.d[2] : 1;
    bool halves = v->a.pairing == LIPC_PAIR_HALVES;
    loop lb, lk, lp;
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = example(e, v->in[0], b), yb = example(e, v, b);
    LLVMValueRef k = loop_open(e, &lk, ci(e, 0), ci(e, c / 2), "k");
    LLVMValueRef ia = halves ? k : iaxc(e, k, 2, 0);
    LLVMValueRef ib = halves ? iaxc(e, k, 1, c / 2) : iaxc(e, k, 2, 1);
    LLVMValueRef xa = at(e, xb, iaxc(e, ia, hw, 0)), xbb = at(e, xb, iaxc(e, ib, hw, 0));
    LLVMValueRef ya = at(e, yb, iaxc(e, ia, hw, 0)), ybb = at(e, yb, iaxc(e, ib, hw, 0));
    LLVMValueRef p = loop_open(e, &lp, ci(e, 0), ci(e, hw), "p");
    LLVMValueRef va = load(e, xa, p), vb = load(e, xbb, p);
    LLVMValueRef gt = LLVMBuildFCmp(e->b, LLVMRealOGT, va, vb, "");
    store(e, LLVMBuildSelect(e->b, gt, va, vb, ""), ya, p);
    store(e, LLVMBuildSelect(e->b, gt, vb, va, ""), ybb, p);
    loop_close(e, &lp);
    loop_close(e, &lk);
    loop_close(e, &lb);
}

/* ---- avgpool --------------------------------------------------------------------------------
 *   out[b, i, p, q] = 1/(kh kw) sum_{ky < kh, kx < kw} in[b, i, p*sh + ky, q*sw + kx]
 * (no padding; 1/(kh kw) rounded to float once). */
static void emit_avgpool(const em *e, const lipc_node *v)
{
    int c = v->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int oh = v->shape.d[1], ow = v->shape.d[2];
    int kh = v->a.kernel[0], kw = v->a.kernel[1], sh = v->a.stride[0], sw = v->a.stride[1];
    LLVMValueRef acc = acc_new(e, "acc");
    loop lb, li, lp, lq, lky, lkx;
    LLVMValueRef b = loop_open(e, &lb, ci(e, 0), e->n, "b");
    LLVMValueRef xb = example(e, v->in[0], b), yb = example(e, v, b);
    LLVMValueRef i = loop_open(e, &li, ci(e, 0), ci(e, c), "i");
    LLVMValueRef xi = at(e, xb, iaxc(e, i, (int64_t)h * w, 0));
    LLVMValueRef yi = at(e, yb, iaxc(e, i, (int64_t)oh * ow, 0));
    LLVMValueRef p = loop_open(e, &lp, ci(e, 0), ci(e, oh), "p");
    LLVMValueRef q = loop_open(e, &lq, ci(e, 0), ci(e, ow), "q");
    acc_set(e, acc, cf(e, 0.0));
    LLVMValueRef ky = loop_open(e, &lky, ci(e, 0), ci(e, kh), "ky");
    LLVMValueRef row = iaxc(e, iadd(e, iaxc(e, p, sh, 0), ky), w, 0);
    LLVMValueRef kx = loop_open(e, &lkx, ci(e, 0), ci(e, kw), "kx");
    LLVMValueRef col = iadd(e, iaxc(e, q, sw, 0), kx);
    acc_set(e, acc, fadd(e, acc_get(e, acc), load(e, xi, iadd(e, row, col)), true));
    loop_close(e, &lkx);
    loop_close(e, &lky);
    LLVMValueRef avg = fmul(e, acc_get(e, acc), cf(e, 1.0 / ((double)kh * kw)), false);
    store(e, avg, yi, iadd(e, iaxc(e, p, ow, 0), q));
    loop_close(e, &lq);
    loop_close(e, &lp);
    loop_close(e, &li);
    loop_close(e, &lb);
}

/* ---- the function -------------------------------------------------------------------------- */

/* One FORWARD step; false (with an error in d) when the op has no emitter.
 * Every op of ir/ops.def is named here, so a new op lands in the default's
 * diagnostic until it gets an emitter, never in a silently wrong answer. */
static bool emit_step(em *e, const lipc_node *v, lipc_diags *d)
{
    switch (v->op) {
    case LIPC_OP_SHIFT:
    case LIPC_OP_RELU:
    case LIPC_OP_FLATTEN:
    case LIPC_OP_ADD:
        emit_elementwise(e, v);
        return true;
    case LIPC_OP_PAD:
        emit_pad(e, v);
        return true;
    case LIPC_OP_CONV2D:
        emit_conv2d(e, v);
        return true;
    case LIPC_OP_DENSE:
        emit_dense(e, v);
        return true;
    case LIPC_OP_MINMAX:
        emit_minmax(e, v);
        return true;
    case LIPC_OP_AVGPOOL:
        emit_avgpool(e, v);
        return true;
    case LIPC_OP_INPUT: /* the data: bound to x, never a step */
    case LIPC_OP_COUNT:
    default:
        break;
    }
    lipc_diag_msg *m = lipc_diag_error(
        d, v->loc, "llvm backend: unsupported op '%s' (node %s) in a forward program",
        (int)v->op >= 0 && v->op < LIPC_OP_COUNT ? lipc_op_info(v->op)->name : "?", v->name);
    lipc_diag_hint(m, "use --target=ref, or add an emitter in backend/llvm/emit.c");
    return false;
}

static void emit_function(em *e)
{
    LLVMTypeRef args[5] = {e->ptr, e->ptr, e->ptr, e->ptr, e->i64};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), args, 5, false);
    e->fn = LLVMAddFunction(e->mod, LIPC_LLVM_FORWARD_NAME, fty);
    /* params, x, logits and arena are distinct buffers: tell the optimiser */
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    for (unsigned i = 1; i <= 4; i++)
        LLVMAddAttributeAtIndex(e->fn, i, LLVMCreateEnumAttribute(e->ctx, noalias, 0));
    LLVMAddAttributeAtIndex(e->fn, LLVMAttributeFunctionIndex,
                            LLVMCreateEnumAttribute(e->ctx, nounwind, 0));
    e->params = LLVMGetParam(e->fn, 0);
    e->x = LLVMGetParam(e->fn, 1);
    e->logits = LLVMGetParam(e->fn, 2);
    e->arena = LLVMGetParam(e->fn, 3);
    e->n = LLVMGetParam(e->fn, 4);
    LLVMSetValueName2(e->params, "params", 6);
    LLVMSetValueName2(e->x, "x", 1);
    LLVMSetValueName2(e->logits, "logits", 6);
    LLVMSetValueName2(e->arena, "arena", 5);
    LLVMSetValueName2(e->n, "n", 1);
}

LLVMModuleRef lipc_llvm_emit_forward(const lipc_program *p, LLVMContextRef ctx, lipc_diags *d)
{
    LIPC_ASSERT(p->entry == LIPC_ENTRY_FORWARD || p->entry == LIPC_ENTRY_TRAIN);
    const lipc_graph *g = p->g;
    em e = {.p = p, .g = g, .ctx = ctx};
    e.base = lipc_calloc((size_t)g->next_id + 1, sizeof *e.base);
    if (!e.base)
        return NULL;
    e.mod = LLVMModuleCreateWithNameInContext(g->name ? g->name : "lipc", ctx);
    e.b = LLVMCreateBuilderInContext(ctx);
    e.eb = LLVMCreateBuilderInContext(ctx);
    e.f32 = LLVMFloatTypeInContext(ctx);
    e.i64 = LLVMInt64TypeInContext(ctx);
    e.ptr = LLVMPointerTypeInContext(ctx, 0);
    emit_function(&e);

    /* entry: allocas and the base of every value; then the steps */
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ctx, e.fn, "entry");
    LLVMBasicBlockRef start = LLVMAppendBasicBlockInContext(ctx, e.fn, "start");
    LLVMPositionBuilderAtEnd(e.b, entry);
    LLVMValueRef br = LLVMBuildBr(e.b, start);
    LLVMPositionBuilderBefore(e.eb, br);
    LLVMPositionBuilderBefore(e.b, br);
    for (int s = 0; s < p->n_steps; s++) {
        const lipc_node *v = p->steps[s].node;
        if (p->steps[s].op != LIPC_STEP_FORWARD)
            continue;
        if (v == g->output) {
            e.base[v->id] = e.logits;
            continue;
        }
        LLVMValueRef off = imul(&e, e.n, ci(&e, (int64_t)p->act_offset[v->id]));
        e.base[v->id] = LLVMBuildInBoundsGEP2(e.b, e.f32, e.arena, &off, 1, v->name);
    }
    e.base[g->input->id] = e.x;
    LLVMPositionBuilderAtEnd(e.b, start);

    bool ok = true;
    for (int s = 0; s < p->n_steps && ok; s++)
        if (p->steps[s].op == LIPC_STEP_FORWARD) {
            /* a marker per step, so the printed IR names what each nest computes */
            LLVMBasicBlockRef step = LLVMAppendBasicBlockInContext(ctx, e.fn, p->steps[s].node->name);
            LLVMBuildBr(e.b, step);
            LLVMPositionBuilderAtEnd(e.b, step);
            ok = emit_step(&e, p->steps[s].node, d);
        }
    if (ok && g->output == g->input) {
        /* no step at all: the logits are the input */
        LLVMValueRef total = imul(&e, e.n, ci(&e, numel(g->input)));
        loop l;
        LLVMValueRef i = loop_open(&e, &l, ci(&e, 0), total, "i");
        store(&e, load(&e, e.x, i), e.logits, i);
        loop_close(&e, &l);
    }
    if (ok)
        LLVMBuildRetVoid(e.b);
    LLVMDisposeBuilder(e.b);
    LLVMDisposeBuilder(e.eb);
    lipc_free(e.base);
    if (!ok) {
        LLVMDisposeModule(e.mod);
        return NULL;
    }
    char *msg = NULL;
    if (LLVMVerifyModule(e.mod, LLVMReturnStatusAction, &msg)) {
        lipc_diag_error(d, LIPC_NO_LOC, "llvm backend: internal error: the emitted module "
                                        "does not verify:\n%s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        LLVMDisposeModule(e.mod);
        return NULL;
    }
    LLVMDisposeMessage(msg);
    return e.mod;
}
