/* backend/cuda/emit.c: a TRAIN program's kernels as CUDA C.
 *
 * One source per model: every node gets a forward kernel (FWD) and an adjoint
 * kernel (BWD: the input gradient, which power iteration also runs as A^T),
 * and every node with parameters a weight-gradient kernel (WGRAD, also the
 * sigma gradient with x = v, dout = u); a few generic kernels follow (norms,
 * scaling, the optimisers). Shapes, strides and padding are literals, so the
 * compiler sees every loop bound and index divisor as a constant.
 *
 * Each kernel is a grid-stride loop over independent work items: the output
 * elements for FWD and WGRAD, the input elements for BWD (a gather over the
 * outputs that read the element, so each gradient has one writer and no
 * atomics). Sums run in a fixed order; weight gradients, which sum over the
 * batch and the whole map, accumulate in double. The bias, the folded
 * identity and the optimiser's clipping scale are fused into the kernel
 * around them. gpu.h states the argument convention.
 */
#include "backend/cuda/gpu.h"

#include <stdarg.h>
#include <string.h>

const char *const lipc_gkind_names[LIPC_G_KINDS] = {"fwd", "bwd", "wgrad"};

/* The lines NVRTC sees first (the emulator has its own, emu.c). */
const char lipc_cuda_prelude[] =
    "typedef struct lipc_gargs { void *p[8]; long long n; double s[8]; } lipc_gargs;\n"
    "#define LIPC_KERNEL(name) extern \"C\" __global__ void name(lipc_gargs a)\n"
    "#define LIPC_I0 ((long long)blockIdx.x * blockDim.x + threadIdx.x)\n"
    "#define LIPC_STEP ((long long)gridDim.x * blockDim.x)\n";

typedef struct emitter {
    lipc_buf *out;
} emitter;

static void put(emitter *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(emitter *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lipc_buf_vprintf(e->out, fmt, ap);
    va_end(ap);
}

static long numel(const lipc_node *v) { return (long)lipc_shape_numel(v->shape); }

/* The head of a kernel over `items` work items per example (or in all when
 * per_example is false), with t the item. */
static void open_loop(emitter *e, lipc_gkind k, const lipc_node *v, long items, bool per_example)
{
    put(e, "LIPC_KERNEL(%s_%d)\n{\n", lipc_gkind_names[k], v->id);
    if (per_example)
        put(e, "    const long long total = a.n * %ldLL;\n", items);
    else
        put(e, "    const long long total = %ldLL;\n", items);
    put(e, "    for (long long t = LIPC_I0; t < total; t += LIPC_STEP) {\n");
}

static void close_loop(emitter *e) { put(e, "    }\n}\n\n"); }

/* ---- convolution ---- */

typedef struct conv_geo {
    int ci, h, w, co, oh, ow, kh, kw, sh, sw, top, left;
    bool fold;
} conv_geo;

static conv_geo conv_geo_of(const lipc_node *v)
{
    lipc_shape in = v->in[0]->shape;
    return (conv_geo){in.d[0], in.d[1], in.d[2], v->shape.d[0], v->shape.d[1], v->shape.d[2],
                      v->a.kernel[0], v->a.kernel[1], v->a.stride[0], v->a.stride[1],
                      v->a.pad[0], v->a.pad[2], v->a.fold_identity};
}

static void conv_fwd(emitter *e, const lipc_node *v)
{
    conv_geo c = conv_geo_of(v);
    long in_n = (long)c.ci * c.h * c.w, out_n = (long)c.co * c.oh * c.ow;
    open_loop(e, LIPC_G_FWD, v, out_n, true);
    put(e, "        const float *x = (const float *)a.p[0], *w = (const float *)a.p[3];\n"
           "        const float *bias = (const float *)a.p[4];\n"
           "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int o = r / %d, q = r %% %d, y = q / %d, xo = q %% %d;\n"
           "        const float *xb = x + b * %ldLL;\n"
           "        float acc = bias ? bias[o] : 0.0f;\n"
           "        for (int i = 0; i < %d; i++)\n"
           "            for (int ky = 0; ky < %d; ky++) {\n"
           "                int iy = y * %d + ky - %d;\n"
           "                if (iy < 0 || iy >= %d) continue;\n"
           "                for (int kx = 0; kx < %d; kx++) {\n"
           "                    int ix = xo * %d + kx - %d;\n"
           "                    if (ix < 0 || ix >= %d) continue;\n"
           "                    acc += w[((o * %d + i) * %d + ky) * %d + kx] * xb[(i * %d + iy) * %d + ix];\n"
           "                }\n"
           "            }\n",
        out_n, out_n, c.oh * c.ow, c.oh * c.ow, c.ow, c.ow, in_n, c.ci, c.kh, c.sh, c.top, c.h,
        c.kw, c.sw, c.left, c.w, c.ci, c.kh, c.kw, c.h, c.w);
    if (c.fold)
        put(e, "        acc += xb[(o * %d + y) * %d + xo];\n", c.h, c.w);
    put(e, "        ((float *)a.p[2])[t] = acc;\n");
    close_loop(e);
}

/* din[b, i, iy, ix] += sum over (o, ky, kx) with iy = y sh + ky - top for
 * some output row y (and the same for columns) of W[o, i, ky, kx] dout[b, o, y, x] */
static void conv_bwd(emitter *e, const lipc_node *v)
{
    conv_geo c = conv_geo_of(v);
    long in_n = (long)c.ci * c.h * c.w, out_n = (long)c.co * c.oh * c.ow;
    open_loop(e, LIPC_G_BWD, v, in_n, true);
    put(e, "        const float *dy = (const float *)a.p[0], *w = (const float *)a.p[5];\n"
           "        float *dx = (float *)a.p[1];\n"
           "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int i = r / %d, q = r %% %d, iy = q / %d, ix = q %% %d;\n"
           "        const float *db = dy + b * %ldLL;\n"
           "        float acc = 0.0f;\n"
           "        for (int o = 0; o < %d; o++)\n"
           "            for (int ky = 0; ky < %d; ky++) {\n"
           "                int ny = iy + %d - ky;\n"
           "                if (ny < 0 || ny %% %d != 0 || ny / %d >= %d) continue;\n"
           "                for (int kx = 0; kx < %d; kx++) {\n"
           "                    int nx = ix + %d - kx;\n"
           "                    if (nx < 0 || nx %% %d != 0 || nx / %d >= %d) continue;\n"
           "                    acc += w[((o * %d + i) * %d + ky) * %d + kx] * db[(o * %d + ny / %d) * %d + nx / %d];\n"
           "                }\n"
           "            }\n",
        in_n, in_n, c.h * c.w, c.h * c.w, c.w, c.w, out_n, c.co, c.kh, c.top, c.sh, c.sh, c.oh,
        c.kw, c.left, c.sw, c.sw, c.ow, c.ci, c.kh, c.kw, c.oh, c.sh, c.ow, c.sw);
    if (c.fold)
        put(e, "        acc += db[(i * %d + iy) * %d + ix];\n", c.oh, c.ow);
    put(e, "        dx[t] += acc;\n");
    close_loop(e);
}

static void conv_wgrad(emitter *e, const lipc_node *v)
{
    conv_geo c = conv_geo_of(v);
    long in_n = (long)c.ci * c.h * c.w, out_n = (long)c.co * c.oh * c.ow;
    long nw = (long)c.co * c.ci * c.kh * c.kw;
    put(e, "LIPC_KERNEL(wgrad_%d)\n{\n", v->id);
    put(e, "    const long long total = %ldLL + (a.p[3] ? %d : 0);\n", nw, c.co);
    put(e, "    for (long long t = LIPC_I0; t < total; t += LIPC_STEP) {\n"
           "        const float *x = (const float *)a.p[0], *dy = (const float *)a.p[1];\n"
           "        double acc = 0.0;\n"
           "        if (t >= %ldLL) {\n"
           "            int o = (int)(t - %ldLL);\n"
           "            for (long long b = 0; b < a.n; b++)\n"
           "                for (int q = 0; q < %d; q++)\n"
           "                    acc += dy[b * %ldLL + o * %d + q];\n"
           "            ((float *)a.p[3])[o] += (float)(a.s[0] * acc);\n"
           "            continue;\n"
           "        }\n"
           "        int o = (int)(t / %d), r = (int)(t %% %d);\n"
           "        int i = r / %d, ky = (r / %d) %% %d, kx = r %% %d;\n"
           "        for (long long b = 0; b < a.n; b++) {\n"
           "            const float *xb = x + b * %ldLL, *db = dy + b * %ldLL + o * %d;\n"
           "            for (int y = 0; y < %d; y++) {\n"
           "                int iy = y * %d + ky - %d;\n"
           "                if (iy < 0 || iy >= %d) continue;\n"
           "                for (int xo = 0; xo < %d; xo++) {\n"
           "                    int ix = xo * %d + kx - %d;\n"
           "                    if (ix < 0 || ix >= %d) continue;\n"
           "                    acc += (double)db[y * %d + xo] * xb[(i * %d + iy) * %d + ix];\n"
           "                }\n"
           "            }\n"
           "        }\n"
           "        ((float *)a.p[2])[t] += (float)(a.s[0] * acc);\n",
        nw, nw, c.oh * c.ow, out_n, c.oh * c.ow, c.ci * c.kh * c.kw, c.ci * c.kh * c.kw,
        c.kh * c.kw, c.kw, c.kh, c.kw, in_n, out_n, c.oh * c.ow, c.oh, c.sh, c.top, c.h, c.ow,
        c.sw, c.left, c.w, c.ow, c.h, c.w);
    close_loop(e);
}

/* ---- dense (the weight a kernel gets is the effective one: the driver
 * passes a normalising head's rows already scaled) ---- */

static void dense_fwd(emitter *e, const lipc_node *v)
{
    int in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    open_loop(e, LIPC_G_FWD, v, out_f, true);
    put(e, "        const float *x = (const float *)a.p[0], *w = (const float *)a.p[3];\n"
           "        const float *bias = (const float *)a.p[4];\n"
           "        long long b = t / %d; int o = (int)(t - b * %d);\n"
           "        const float *xb = x + b * %d, *row = w + (long long)o * %d;\n"
           "        float acc = 0.0f;\n"
           "        for (int i = 0; i < %d; i++) acc += row[i] * xb[i];\n",
        out_f, out_f, in_f, in_f, in_f);
    if (v->a.fold_identity)
        put(e, "        acc += xb[o];\n");
    put(e, "        if (bias) acc += bias[o];\n"
           "        ((float *)a.p[2])[t] = acc;\n");
    close_loop(e);
}

static void dense_bwd(emitter *e, const lipc_node *v)
{
    int in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    open_loop(e, LIPC_G_BWD, v, in_f, true);
    put(e, "        const float *dy = (const float *)a.p[0], *w = (const float *)a.p[5];\n"
           "        long long b = t / %d; int i = (int)(t - b * %d);\n"
           "        const float *db = dy + b * %d;\n"
           "        float acc = 0.0f;\n"
           "        for (int o = 0; o < %d; o++) acc += w[(long long)o * %d + i] * db[o];\n",
        in_f, in_f, out_f, out_f, in_f);
    if (v->a.fold_identity)
        put(e, "        acc += db[i];\n");
    put(e, "        ((float *)a.p[1])[t] += acc;\n");
    close_loop(e);
}

static void dense_wgrad(emitter *e, const lipc_node *v)
{
    int in_f = v->in[0]->shape.d[0], out_f = v->shape.d[0];
    long nw = (long)in_f * out_f;
    put(e, "LIPC_KERNEL(wgrad_%d)\n{\n", v->id);
    put(e, "    const long long total = %ldLL + (a.p[3] ? %d : 0);\n", nw, out_f);
    put(e, "    for (long long t = LIPC_I0; t < total; t += LIPC_STEP) {\n"
           "        const float *x = (const float *)a.p[0], *dy = (const float *)a.p[1];\n"
           "        double acc = 0.0;\n"
           "        if (t >= %ldLL) {\n"
           "            int o = (int)(t - %ldLL);\n"
           "            for (long long b = 0; b < a.n; b++) acc += dy[b * %d + o];\n"
           "            ((float *)a.p[3])[o] += (float)(a.s[0] * acc);\n"
           "            continue;\n"
           "        }\n"
           "        int o = (int)(t / %d), i = (int)(t %% %d);\n"
           "        for (long long b = 0; b < a.n; b++)\n"
           "            acc += (double)dy[b * %d + o] * x[b * %d + i];\n"
           "        ((float *)a.p[2])[t] += (float)(a.s[0] * acc);\n",
        nw, nw, out_f, in_f, in_f, out_f, in_f);
    close_loop(e);
}

/* ---- the other ops ---- */

/* item (k, p) of example b: the pair (pa, pb) at position p */
static void minmax_pair(emitter *e, long items, long hw, long per, const char *ia, const char *ib)
{
    put(e, "        long long b = t / %ldLL; long long r = t - b * %ldLL;\n"
           "        int k = (int)(r / %ldLL); long long p = r - (long long)k * %ldLL;\n"
           "        long long pa = b * %ldLL + (long long)(%s) * %ldLL + p;\n"
           "        long long pb = b * %ldLL + (long long)(%s) * %ldLL + p;\n",
        items, items, hw, hw, per, ia, hw, per, ib, hw);
}

static void minmax_kernels(emitter *e, const lipc_node *v)
{
    int c = v->shape.d[0];
    long hw = v->shape.rank == 3 ? (long)v->shape.d[1] * v->shape.d[2] : 1;
    bool halves = v->a.pairing == LIPC_PAIR_HALVES;
    long items = (long)(c / 2) * hw, per = (long)c * hw;
    char ib[32];
    snprintf(ib, sizeof ib, halves ? "k + %d" : "2 * k + 1", c / 2);
    const char *ia = halves ? "k" : "2 * k";
    open_loop(e, LIPC_G_FWD, v, items, true);
    put(e, "        const float *x = (const float *)a.p[0]; float *y = (float *)a.p[2];\n");
    minmax_pair(e, items, hw, per, ia, ib);
    put(e, "        float va = x[pa], vb = x[pb];\n"
           "        y[pa] = va > vb ? va : vb;\n"
           "        y[pb] = va > vb ? vb : va;\n");
    close_loop(e);
    /* a tie routes the max's gradient to the first input (ir/ops/minmax.c) */
    open_loop(e, LIPC_G_BWD, v, items, true);
    put(e, "        const float *dy = (const float *)a.p[0], *x = (const float *)a.p[3];\n"
           "        float *dx = (float *)a.p[1];\n");
    minmax_pair(e, items, hw, per, ia, ib);
    put(e, "        int amax = x[pa] >= x[pb];\n"
           "        dx[pa] += amax ? dy[pa] : dy[pb];\n"
           "        dx[pb] += amax ? dy[pb] : dy[pa];\n");
    close_loop(e);
}

/* element-wise ops over numel items per example */
static void elementwise_kernels(emitter *e, const lipc_node *v)
{
    long n = numel(v);
    open_loop(e, LIPC_G_FWD, v, n, true);
    put(e, "        const float *x = (const float *)a.p[0]; float *y = (float *)a.p[2];\n");
    switch (v->op) {
    case LIPC_OP_SHIFT:
        put(e, "        y[t] = x[t] + %.9ef;\n", (double)(float)v->a.by);
        break;
    case LIPC_OP_RELU:
        put(e, "        y[t] = x[t] > 0.0f ? x[t] : 0.0f;\n");
        break;
    case LIPC_OP_ADD:
        put(e, "        y[t] = x[t] + ((const float *)a.p[1])[t];\n");
        break;
    default: /* flatten */
        put(e, "        y[t] = x[t];\n");
        break;
    }
    close_loop(e);
    open_loop(e, LIPC_G_BWD, v, n, true);
    put(e, "        const float *dy = (const float *)a.p[0];\n");
    switch (v->op) {
    case LIPC_OP_RELU:
        put(e, "        if (((const float *)a.p[3])[t] > 0.0f) ((float *)a.p[1])[t] += dy[t];\n");
        break;
    case LIPC_OP_ADD:
        put(e, "        if (a.p[1]) ((float *)a.p[1])[t] += dy[t];\n"
               "        if (a.p[2]) ((float *)a.p[2])[t] += dy[t];\n");
        break;
    default:
        put(e, "        ((float *)a.p[1])[t] += dy[t];\n");
        break;
    }
    close_loop(e);
}

static void pad_kernels(emitter *e, const lipc_node *v)
{
    lipc_shape in = v->in[0]->shape;
    int c = in.d[0], h = in.d[1], w = in.d[2], oh = v->shape.d[1], ow = v->shape.d[2];
    int top = v->a.pad[0], left = v->a.pad[2];
    open_loop(e, LIPC_G_FWD, v, (long)c * oh * ow, true);
    put(e, "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int i = r / %d, y = (r / %d) %% %d - %d, x = r %% %d - %d;\n"
           "        int inside = y >= 0 && y < %d && x >= 0 && x < %d;\n"
           "        ((float *)a.p[2])[t] = inside ? ((const float *)a.p[0])[b * %ldLL + (i * %d + y) * %d + x] : 0.0f;\n",
        (long)c * oh * ow, (long)c * oh * ow, oh * ow, ow, oh, top, ow, left, h, w,
        (long)c * h * w, h, w);
    close_loop(e);
    open_loop(e, LIPC_G_BWD, v, (long)c * h * w, true);
    put(e, "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int i = r / %d, y = (r / %d) %% %d + %d, x = r %% %d + %d;\n"
           "        ((float *)a.p[1])[t] += ((const float *)a.p[0])[b * %ldLL + (i * %d + y) * %d + x];\n",
        (long)c * h * w, (long)c * h * w, h * w, w, h, top, w, left, (long)c * oh * ow, oh, ow);
    close_loop(e);
}

static void avgpool_kernels(emitter *e, const lipc_node *v)
{
    int c = v->shape.d[0], h = v->in[0]->shape.d[1], w = v->in[0]->shape.d[2];
    int oh = v->shape.d[1], ow = v->shape.d[2];
    int kh = v->a.kernel[0], kw = v->a.kernel[1], sh = v->a.stride[0], sw = v->a.stride[1];
    float inv = (float)(1.0 / ((double)kh * kw));
    open_loop(e, LIPC_G_FWD, v, (long)c * oh * ow, true);
    put(e, "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int i = r / %d, p = (r / %d) %% %d, q = r %% %d;\n"
           "        const float *x = (const float *)a.p[0] + b * %ldLL + (long long)i * %d;\n"
           "        float acc = 0.0f;\n"
           "        for (int ky = 0; ky < %d; ky++)\n"
           "            for (int kx = 0; kx < %d; kx++) acc += x[(p * %d + ky) * %d + q * %d + kx];\n"
           "        ((float *)a.p[2])[t] = acc * %.9ef;\n",
        (long)c * oh * ow, (long)c * oh * ow, oh * ow, ow, oh, ow, (long)c * h * w, h * w, kh,
        kw, sh, w, sw, (double)inv);
    close_loop(e);
    open_loop(e, LIPC_G_BWD, v, (long)c * h * w, true);
    put(e, "        long long b = t / %ldLL; int r = (int)(t - b * %ldLL);\n"
           "        int i = r / %d, iy = (r / %d) %% %d, ix = r %% %d;\n"
           "        const float *dy = (const float *)a.p[0] + b * %ldLL + (long long)i * %d;\n"
           "        float acc = 0.0f;\n"
           "        for (int ky = 0; ky < %d; ky++) {\n"
           "            int ny = iy - ky;\n"
           "            if (ny < 0 || ny %% %d != 0 || ny / %d >= %d) continue;\n"
           "            for (int kx = 0; kx < %d; kx++) {\n"
           "                int nx = ix - kx;\n"
           "                if (nx < 0 || nx %% %d != 0 || nx / %d >= %d) continue;\n"
           "                acc += dy[(ny / %d) * %d + nx / %d] * %.9ef;\n"
           "            }\n"
           "        }\n"
           "        ((float *)a.p[1])[t] += acc;\n",
        (long)c * h * w, (long)c * h * w, h * w, w, h, w, (long)c * oh * ow, oh * ow, kh, sh, sh,
        oh, kw, sw, sw, ow, sh, ow, sw, (double)inv);
    close_loop(e);
}

/* ---- generic kernels ---- */

static void generic_kernels(emitter *e)
{
    put(e,
        "LIPC_KERNEL(lipc_sumsq)\n{\n"
        "    const float *x = (const float *)a.p[0];\n"
        "    for (long long t = LIPC_I0; t < %d; t += LIPC_STEP) {\n"
        "        double s = 0.0;\n"
        "        for (long long i = t; i < a.n; i += %d) s += (double)x[i] * x[i];\n"
        "        ((double *)a.p[1])[t] = s;\n"
        "    }\n}\n\n",
        LIPC_GPU_PARTIALS, LIPC_GPU_PARTIALS);
    put(e,
        "LIPC_KERNEL(lipc_dot)\n{\n"
        "    const float *x = (const float *)a.p[0], *y = (const float *)a.p[1];\n"
        "    for (long long t = LIPC_I0; t < %d; t += LIPC_STEP) {\n"
        "        double s = 0.0;\n"
        "        for (long long i = t; i < a.n; i += %d) s += (double)x[i] * y[i];\n"
        "        ((double *)a.p[2])[t] = s;\n"
        "    }\n}\n\n",
        LIPC_GPU_PARTIALS, LIPC_GPU_PARTIALS);
    /* p0 partials [P] -> p1[0] = sqrt(sum), one work item */
    put(e,
        "LIPC_KERNEL(lipc_norm_finish)\n{\n"
        "    for (long long t = LIPC_I0; t < 1; t += LIPC_STEP) {\n"
        "        const double *q = (const double *)a.p[0];\n"
        "        double s = 0.0;\n"
        "        for (int i = 0; i < %d; i++) s += q[i];\n"
        "        ((double *)a.p[1])[0] = sqrt(s);\n"
        "    }\n}\n\n",
        LIPC_GPU_PARTIALS);
    /* p0 y, p1 x, p2 den (double, on the device): y = x / den when den > 0;
     * else y = x * s0 (s0 = 1: unchanged copy, 0: zeros) */
    put(e,
        "LIPC_KERNEL(lipc_div)\n{\n"
        "    const float *x = (const float *)a.p[1];\n"
        "    double den = ((const double *)a.p[2])[0];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP)\n"
        "        ((float *)a.p[0])[t] = den > 0.0 ? (float)(x[t] / den) : (float)(x[t] * a.s[0]);\n"
        "}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_axpy)\n{\n"
        "    const float *x = (const float *)a.p[1];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP)\n"
        "        ((float *)a.p[0])[t] += (float)(a.s[0] * x[t]);\n"
        "}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_fold_eye)\n{\n"
        "    const float *w = (const float *)a.p[1];\n"
        "    long long s0 = (long long)a.s[0], s1 = (long long)a.s[1], s2 = (long long)a.s[2];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP) {\n"
        "        int eye = (t / s1) %% (s0 / s1) == t / s0 && t %% s1 == s2;\n"
        "        ((float *)a.p[0])[t] = w[t] + (eye ? 1.0f : 0.0f);\n"
        "    }\n}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_bias_add)\n{\n"
        "    const float *bias = (const float *)a.p[1];\n"
        "    long long s0 = (long long)a.s[0], s1 = (long long)a.s[1];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP)\n"
        "        ((float *)a.p[0])[t] += bias[(t / s1) %% s0];\n"
        "}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_bias_grad)\n{\n"
        "    const float *dy = (const float *)a.p[0];\n"
        "    long long s0 = (long long)a.s[0], s1 = (long long)a.s[1];\n"
        "    for (long long o = LIPC_I0; o < s0; o += LIPC_STEP) {\n"
        "        double acc = 0.0;\n"
        "        for (long long b = 0; b < a.n; b++)\n"
        "            for (long long q = 0; q < s1; q++) acc += dy[(b * s0 + o) * s1 + q];\n"
        "        ((float *)a.p[1])[o] += (float)(a.s[2] * acc);\n"
        "    }\n}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_fill)\n{\n"
        "    unsigned long long seed = (unsigned long long)a.s[0];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP) {\n"
        "        unsigned long long z = (unsigned long long)t + seed * 0x9e3779b97f4a7c15ULL;\n"
        "        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;\n"
        "        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;\n"
        "        z ^= z >> 31;\n"
        "        ((float *)a.p[0])[t] = (float)((double)(z >> 40) / 16777216.0 - 0.5);\n"
        "    }\n}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_adamw)\n{\n"
        "    float *p = (float *)a.p[0], *m = (float *)a.p[2], *v = (float *)a.p[3];\n"
        "    const float *g = (const float *)a.p[1];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP) {\n"
        "        double gi = (double)g[t] * a.s[7], pi = p[t];\n"
        "        double mi = a.s[1] * m[t] + (1.0 - a.s[1]) * gi;\n"
        "        double vi = a.s[2] * v[t] + (1.0 - a.s[2]) * gi * gi;\n"
        "        m[t] = (float)mi;\n"
        "        v[t] = (float)vi;\n"
        "        double step = (mi / a.s[5]) / (sqrt(vi / a.s[6]) + a.s[3]) + a.s[4] * pi;\n"
        "        p[t] = (float)(pi - a.s[0] * step);\n"
        "    }\n}\n\n");
    put(e,
        "LIPC_KERNEL(lipc_sgd)\n{\n"
        "    float *p = (float *)a.p[0], *m = (float *)a.p[2];\n"
        "    const float *g = (const float *)a.p[1];\n"
        "    for (long long t = LIPC_I0; t < a.n; t += LIPC_STEP) {\n"
        "        double pi = p[t];\n"
        "        double gi = (double)g[t] * a.s[7] + a.s[4] * pi;\n"
        "        double mi = a.s[1] * m[t] + gi;\n"
        "        m[t] = (float)mi;\n"
        "        p[t] = (float)(pi - a.s[0] * (gi + a.s[1] * mi));\n"
        "    }\n}\n\n");
}

lipc_status lipc_cuda_emit(const lipc_program *train, bool *has[LIPC_G_KINDS], lipc_buf *out,
                           lipc_diags *d)
{
    emitter e = {out};
    put(&e, "/* lipc: the kernels of model %s (%s) */\n\n",
        train->g->name ? train->g->name : "?", "CUDA C, generated");
    for (const lipc_node *v = train->g->first; v; v = v->next) {
        bool fwd = true, bwd = true, wg = false;
        switch (v->op) {
        case LIPC_OP_INPUT:
            fwd = bwd = false;
            break;
        case LIPC_OP_CONV2D:
            conv_fwd(&e, v);
            conv_bwd(&e, v);
            conv_wgrad(&e, v);
            wg = true;
            break;
        case LIPC_OP_DENSE:
            dense_fwd(&e, v);
            dense_bwd(&e, v);
            dense_wgrad(&e, v);
            wg = true;
            break;
        case LIPC_OP_MINMAX:
            minmax_kernels(&e, v);
            break;
        case LIPC_OP_SHIFT:
        case LIPC_OP_RELU:
        case LIPC_OP_ADD:
        case LIPC_OP_FLATTEN:
            elementwise_kernels(&e, v);
            break;
        case LIPC_OP_PAD:
            pad_kernels(&e, v);
            break;
        case LIPC_OP_AVGPOOL:
            avgpool_kernels(&e, v);
            break;
        default:
            lipc_diag_error(d, v->loc, "the cuda target has no kernel for node '%s' (op %d)",
                            v->name, (int)v->op);
            return LIPC_ERR_UNSUPPORTED;
        }
        if (has) {
            has[LIPC_G_FWD][v->id] = fwd;
            has[LIPC_G_BWD][v->id] = bwd;
            has[LIPC_G_WGRAD][v->id] = wg;
        }
    }
    generic_kernels(&e);
    return out->failed ? LIPC_ERR_NOMEM : LIPC_OK;
}

lipc_status lipc_cuda_module_text(const lipc_program *train, bool ptx, int arch, lipc_diags *d,
                                  lipc_buf *out)
{
    lipc_buf src;
    lipc_buf_init(&src);
    lipc_status st = lipc_cuda_emit(train, NULL, &src, d);
    if (st == LIPC_OK && ptx) {
        st = lipc_nvrtc_compile(lipc_buf_str(&src), arch, true, out, d);
        /* PTX is text; drop the NUL NVRTC counts in its size */
        while (st == LIPC_OK && out->len && out->data[out->len - 1] == '\0')
            out->len--;
    } else if (st == LIPC_OK) {
        lipc_buf_puts(out, lipc_cuda_prelude);
        lipc_buf_putc(out, '\n');
        lipc_buf_puts(out, lipc_buf_str(&src));
    }
    lipc_buf_free(&src);
    return st == LIPC_OK && out->failed ? LIPC_ERR_NOMEM : st;
}
