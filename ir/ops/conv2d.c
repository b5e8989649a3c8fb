/* ir/ops/conv2d.c: 2-D convolution (cross-correlation, as in every framework)
 * with zero padding:
 *
 *   out[b, o, y, x] = bias[o] + sum_{i, ky, kx} W[o, i, ky, kx]
 *                                   * in[b, i, y*sh + ky - top, x*sw + kx - left]
 *
 * where reads outside the input are zero. Padding: `same` gives
 * out = ceil(in / stride). For an odd kernel it pads (k-1)/2 on both sides,
 * whatever the stride (floor((in - 1) / s) + 1 = ceil(in / s)), which is what
 * PyTorch's padding=k//2 computes, so weights move between the two unchanged.
 * For an even kernel, total = max((out-1)*stride + k - in, 0) zeros split
 * top = total/2, bottom = the rest (TensorFlow's rule); `valid` none;
 * explicit N or [ph, pw] on both sides of each axis. Output size
 * h_out = (h + top + bottom - kh) / sh + 1.
 *
 * After fold-residual (METHOD.md section 3) a.fold_identity means the layer
 * computes x + conv_W(x) = conv_{W + I_c}(x), I_c[o, i, kh/2, kw/2] = (o == i):
 * exact for stride 1, odd kernel, `same` padding, c_in == c_out.
 *
 * Lipschitz: the operator norm of the (folded) kernel at this input size; which
 * method gives it depends on stride and padding (METHOD.md section 4). */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field conv2d_fields[] = {
    {"out", LIPC_FIELD_INT, offsetof(lipc_attrs, out), true, 1, NULL,
     "output channels"},
    {"kernel", LIPC_FIELD_INT2, offsetof(lipc_attrs, kernel), true, 1, NULL,
     "kernel size: k or [kh, kw]"},
    {"stride", LIPC_FIELD_INT2, offsetof(lipc_attrs, stride), false, 1, NULL,
     "stride: s or [sh, sw] (default 1)"},
    {"padding", LIPC_FIELD_PADDING, offsetof(lipc_attrs, padding), false, 0, NULL,
     "same | valid | N | [ph, pw] zeros (default same)"},
    {"bias", LIPC_FIELD_BOOL, offsetof(lipc_attrs, bias), false, 0, NULL,
     "add a learned bias per output channel (default true)"},
    {"init", LIPC_FIELD_ENUM, offsetof(lipc_attrs, init), false, 0, lipc_init_names,
     "weight initialisation (default: kaiming)"},
    {0},
};

static void conv2d_defaults(lipc_attrs *a)
{
    a->stride[0] = a->stride[1] = 1;
    a->padding.mode = LIPC_PAD_SAME;
    a->bias = true;
    a->init = LIPC_INIT_DEFAULT;
}

/* Zeros before (*lo) and after (*hi) one axis of length len. */
static void resolve_axis(const lipc_padding *p, int axis, long len, long k, long s,
                         int *lo, int *hi)
{
    switch (p->mode) {
    case LIPC_PAD_SAME: {
        if (k % 2 == 1) {
            *lo = *hi = (int)((k - 1) / 2);
            break;
        }
        long out = (len + s - 1) / s;
        long total = (out - 1) * s + k - len;
        if (total < 0)
            total = 0;
        *lo = (int)(total / 2);
        *hi = (int)(total - total / 2);
        break;
    }
    case LIPC_PAD_VALID:
        *lo = *hi = 0;
        break;
    case LIPC_PAD_EXPLICIT:
        *lo = *hi = p->amount[axis];
        break;
    }
}

static bool conv2d_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = n->in[0]->shape;
    lipc_attrs *a = &n->a;
    char sb[48];
    if (!lipc_ops_require_map(n, d, "convolutions come before `flatten`; after it use dense layers"))
        return false;
    int c_in = s.d[0], h = s.d[1], w = s.d[2];
    int kh = a->kernel[0], kw = a->kernel[1], sh = a->stride[0], sw = a->stride[1];
    if (a->out < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1) {
        lipc_diag_error(d, n->loc,
                        "conv2d needs out, kernel and stride >= 1 (out %d, kernel %dx%d, "
                        "stride %dx%d)", a->out, kh, kw, sh, sw);
        return false;
    }
    if (a->padding.mode == LIPC_PAD_EXPLICIT &&
        (a->padding.amount[0] < 0 || a->padding.amount[1] < 0)) {
        lipc_diag_error(d, n->loc, "conv2d padding must be >= 0, got [%d, %d]",
                        a->padding.amount[0], a->padding.amount[1]);
        return false;
    }
    long wdims[4] = {a->out, c_in, kh, kw};
    if (!lipc_ops_check_dims(n, d, "the conv2d weight", 4, wdims))
        return false;
    resolve_axis(&a->padding, 0, h, kh, sh, &a->pad[0], &a->pad[1]);
    resolve_axis(&a->padding, 1, w, kw, sw, &a->pad[2], &a->pad[3]);
    long ph = (long)h + a->pad[0] + a->pad[1], pw = (long)w + a->pad[2] + a->pad[3];
    if (kh > ph || kw > pw) {
        lipc_diag_msg *m = lipc_diag_error(
            d, n->loc, "conv2d kernel %dx%d is larger than its padded input %ldx%ld "
            "(input %s)", kh, kw, ph, pw, lipc_shape_str(s, sb));
        lipc_diag_hint(m, "use a smaller kernel, `padding: same`, or fewer downsampling "
                          "layers before this one");
        return false;
    }
    long odims[3] = {a->out, (ph - kh) / sh + 1, (pw - kw) / sw + 1};
    if (!lipc_ops_check_dims(n, d, "the conv2d output", 3, odims))
        return false;
    n->shape = (lipc_shape){3, {a->out, (int)odims[1], (int)odims[2]}};
    int wd[4] = {a->out, c_in, kh, kw};
    return lipc_ops_declare_weight_bias(g, n, 4, wd, d);
}

static void conv2d_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    const lipc_attrs *a = &n->a;
    lipc_shape in = n->in[0]->shape;
    *out = (lipc_lip){LIPC_LIP_OPNORM, NULL, false, NAN};
    /* the choice runtime/bounds.c makes at the default band budget */
    switch (lipc_conv_method_for(in.d[0], in.d[1], in.d[2], a->kernel[0], a->kernel[1],
                                 a->stride[0], a->stride[1], a->pad, LIPC_CONV_BAND_BUDGET)) {
    case LIPC_CONV_RESHAPED:
        /* Disjoint windows (kernel == stride: they tile the input): the
         * operator is block diagonal, one copy of W reshaped c_out x
         * (c_in kh kw) per output pixel, and the skipped inputs are a
         * coordinate projection. */
        out->method = "reshaped-kernel";
        out->exact = true;
        break;
    case LIPC_CONV_GRAM_BAND:
        /* Small enough for the exact operator's Gram band: certified within
         * about 1e-7 of the norm, so not marked exact. */
        out->method = "conv-gram-band";
        break;
    case LIPC_CONV_POLYPHASE:
        /* Strided: a stride-1 conv on the stack of the input's polyphase
         * components, so the circulant bound applies to that rewrite. */
        out->method = "polyphase-fft";
        break;
    case LIPC_CONV_FFT:
        /* Zero-padded stride-1 conv = crop o circular conv o embedding: the
         * max over frequencies of sigma_max(P(u, v)) bounds it from above. */
        out->method = "conv-fft";
        break;
    }
}

/* ---- reference kernels ----------------------------------------------------
 *
 * Every kernel below walks the same index map: output pixel (y, x) of channel o
 * reads, through tap (ky, kx) of input channel i, the input pixel
 *   iy = y*sh + ky - top,  ix = x*sw + kx - left      (skipped when outside).
 * The forward sums over (i, ky, kx); the transpose (backward to the input)
 * scatters each output gradient back along the same map; the weight gradient
 * sums the products over (b, y, x). Sharing the map keeps A and A^T exact
 * adjoints, with the same stride and padding. */

/* Sizes of a conv2d node, read once per kernel call. */
typedef struct conv_dims {
    int c_in, h, w;        /* input */
    int c_out, oh, ow;     /* output */
    int kh, kw, sh, sw;
    int top, left;         /* resolved zero padding (bottom/right follow from oh, ow) */
    bool fold;             /* identity on the centre tap */
} conv_dims;

static conv_dims conv_dims_of(const lipc_node *n)
{
    const lipc_attrs *a = &n->a;
    conv_dims c = {
        .c_in = n->in[0]->shape.d[0], .h = n->in[0]->shape.d[1], .w = n->in[0]->shape.d[2],
        .c_out = n->shape.d[0], .oh = n->shape.d[1], .ow = n->shape.d[2],
        .kh = a->kernel[0], .kw = a->kernel[1], .sh = a->stride[0], .sw = a->stride[1],
        .top = a->pad[0], .left = a->pad[2], .fold = a->fold_identity,
    };
    if (c.fold) {
        /* The identity tap reads in[b, o, y + kh/2 - top, x + kw/2 - left]; it is
         * the residual x exactly when that is in[b, o, y, x] at the same size. */
        LIPC_ASSERT(c.sh == 1 && c.sw == 1 && c.kh % 2 == 1 && c.kw % 2 == 1);
        LIPC_ASSERT(c.c_in == c.c_out && c.oh == c.h && c.ow == c.w);
        LIPC_ASSERT(c.top == c.kh / 2 && c.left == c.kw / 2);
    }
    return c;
}

static size_t conv_widx(const conv_dims *c, int o, int i, int ky, int kx)
{
    return (((size_t)o * c->c_in + i) * c->kh + ky) * c->kw + kx;
}

/* x [n_batch, c_in, h, w] -> y [n_batch, c_out, oh, ow], overwritten:
 *   y[b, o, y, x] = bias[o] + sum_{i, ky, kx} W[o, i, ky, kx] x[b, i, iy, ix]
 *                   (+ x[b, o, y, x] when folded)
 * bias NULL: the linear part alone. */
static void conv_apply(const conv_dims *c, int n_batch, const double *xs,
                       const double *wt, const double *bias, double *ys)
{
    for (int b = 0; b < n_batch; b++) {
        const double *x_b = xs + (size_t)b * c->c_in * c->h * c->w;
        double *y_b = ys + (size_t)b * c->c_out * c->oh * c->ow;
        for (int o = 0; o < c->c_out; o++)
            for (int y = 0; y < c->oh; y++)
                for (int x = 0; x < c->ow; x++) {
                    double acc = bias ? bias[o] : 0.0;
                    for (int i = 0; i < c->c_in; i++)
                        for (int ky = 0; ky < c->kh; ky++) {
                            int iy = y * c->sh + ky - c->top;
                            if (iy < 0 || iy >= c->h)
                                continue;
                            for (int kx = 0; kx < c->kw; kx++) {
                                int ix = x * c->sw + kx - c->left;
                                if (ix < 0 || ix >= c->w)
                                    continue;
                                acc += wt[conv_widx(c, o, i, ky, kx)] *
                                       x_b[((size_t)i * c->h + iy) * c->w + ix];
                            }
                        }
                    if (c->fold)
                        acc += x_b[((size_t)o * c->h + y) * c->w + x];
                    y_b[((size_t)o * c->oh + y) * c->ow + x] = acc;
                }
    }
}

/* The transposed convolution, ADDED into dx:
 *   dx [n_batch, c_in, h, w] += A^T dy,  dy [n_batch, c_out, oh, ow]
 * Differentiating y[b,o,y,x] = sum W[o,i,ky,kx] x[b,i,iy,ix] w.r.t. x[b,i,iy,ix]:
 *   dx[b, i, iy, ix] += sum_{o, ky, kx} W[o, i, ky, kx] dy[b, o, y, x]
 * over the (y, x, ky, kx) with iy = y*sh + ky - top, ix = x*sw + kx - left,
 * i.e. each output gradient is scattered back along the forward's index map
 * (same stride, same padding; taps that read padding scatter nothing). The
 * folded identity y += x adds dx[b, o, y, x] += dy[b, o, y, x]. */
static void conv_transpose_add(const conv_dims *c, int n_batch, const double *wt,
                               const double *dys, double *dxs)
{
    for (int b = 0; b < n_batch; b++) {
        const double *dy_b = dys + (size_t)b * c->c_out * c->oh * c->ow;
        double *dx_b = dxs + (size_t)b * c->c_in * c->h * c->w;
        for (int o = 0; o < c->c_out; o++)
            for (int y = 0; y < c->oh; y++)
                for (int x = 0; x < c->ow; x++) {
                    double g = dy_b[((size_t)o * c->oh + y) * c->ow + x];
                    for (int i = 0; i < c->c_in; i++)
                        for (int ky = 0; ky < c->kh; ky++) {
                            int iy = y * c->sh + ky - c->top;
                            if (iy < 0 || iy >= c->h)
                                continue;
                            for (int kx = 0; kx < c->kw; kx++) {
                                int ix = x * c->sw + kx - c->left;
                                if (ix < 0 || ix >= c->w)
                                    continue;
                                dx_b[((size_t)i * c->h + iy) * c->w + ix] +=
                                    wt[conv_widx(c, o, i, ky, kx)] * g;
                            }
                        }
                    if (c->fold)
                        dx_b[((size_t)o * c->h + y) * c->w + x] += g;
                }
    }
}

/* The weight gradient, ADDED into dw [c_out, c_in, kh, kw]:
 *   dw[o, i, ky, kx] += scale * sum_{b, y, x} dy[b, o, y, x] x[b, i, iy, ix]
 * (y is linear in W with coefficient x[b, i, iy, ix]). The folded identity is
 * a constant, so it contributes nothing here. */
static void conv_weight_grad_add(const conv_dims *c, int n_batch, const double *xs,
                                 const double *dys, double scale, double *dw)
{
    for (int b = 0; b < n_batch; b++) {
        const double *x_b = xs + (size_t)b * c->c_in * c->h * c->w;
        const double *dy_b = dys + (size_t)b * c->c_out * c->oh * c->ow;
        for (int o = 0; o < c->c_out; o++)
            for (int y = 0; y < c->oh; y++)
                for (int x = 0; x < c->ow; x++) {
                    double g = scale * dy_b[((size_t)o * c->oh + y) * c->ow + x];
                    for (int i = 0; i < c->c_in; i++)
                        for (int ky = 0; ky < c->kh; ky++) {
                            int iy = y * c->sh + ky - c->top;
                            if (iy < 0 || iy >= c->h)
                                continue;
                            for (int kx = 0; kx < c->kw; kx++) {
                                int ix = x * c->sw + kx - c->left;
                                if (ix < 0 || ix >= c->w)
                                    continue;
                                dw[conv_widx(c, o, i, ky, kx)] +=
                                    g * x_b[((size_t)i * c->h + iy) * c->w + ix];
                            }
                        }
                }
    }
}

/* in  [n_batch, c_in, h, w]
 * out [n_batch, c_out, oh, ow]
 * params: the node's weight [c_out, c_in, kh, kw], then bias [c_out] if a.bias
 *
 * out[b, o, y, x] = bias[o] + sum_{i, ky, kx} W[o, i, ky, kx]
 *                                 * in[b, i, y*sh + ky - top, x*sw + kx - left]
 * (zero outside the input), plus in[b, o, y, x] when a.fold_identity. */
static void conv2d_ref_forward(const lipc_node *n, int n_batch,
                               const double *const *in, double *out,
                               const double *params)
{
    conv_dims c = conv_dims_of(n);
    const double *bias = n->a.bias ? params + (size_t)c.c_out * c.c_in * c.kh * c.kw : NULL;
    conv_apply(&c, n_batch, in[0], params, bias, out);
}

/* Backward (shapes as in the forward; dparams laid out like params):
 *   din[b, i, iy, ix] += sum_{o, ky, kx} W[o, i, ky, kx] dout[b, o, y, x]
 *                        (+ dout[b, i, iy, ix] when folded)     transposed conv
 *   dW[o, i, ky, kx]  += sum_{b, y, x} dout[b, o, y, x] in[b, i, iy, ix]
 *   dbias[o]          += sum_{b, y, x} dout[b, o, y, x]
 * with iy = y*sh + ky - top, ix = x*sw + kx - left. The identity of a folded
 * conv is a constant: it reaches din, never dW. */
static void conv2d_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                                const double *out, const double *dout, double *const *din,
                                const double *params, double *dparams)
{
    (void)out;
    conv_dims c = conv_dims_of(n);
    if (din[0])
        conv_transpose_add(&c, n_batch, params, dout, din[0]);
    if (!dparams)
        return;
    conv_weight_grad_add(&c, n_batch, in[0], dout, 1.0, dparams);
    if (n->a.bias) {
        double *db = dparams + (size_t)c.c_out * c.c_in * c.kh * c.kw;
        size_t ohw = (size_t)c.oh * c.ow;
        for (int b = 0; b < n_batch; b++)
            for (int o = 0; o < c.c_out; o++)
                for (size_t p = 0; p < ohw; p++)
                    db[o] += dout[((size_t)b * c.c_out + o) * ohw + p];
    }
}

/* The linear map without the bias (with the identity when folded), for power
 * iteration (METHOD.md section 4):
 *   transpose false: dst [n_batch, c_out, oh, ow] = A src [n_batch, c_in, h, w]
 *   transpose true:  dst [n_batch, c_in, h, w]    = A^T src [n_batch, c_out, oh, ow]
 * A^T is the transposed convolution of the backward, so <A x, y> = <x, A^T y>
 * holds to rounding for every stride and padding. */
static void conv2d_ref_linear(const lipc_node *n, int n_batch, const double *src,
                              double *dst, const double *params, bool transpose)
{
    conv_dims c = conv_dims_of(n);
    if (!transpose) {
        conv_apply(&c, n_batch, src, params, NULL, dst);
        return;
    }
    size_t count = (size_t)n_batch * c.c_in * c.h * c.w;
    for (size_t k = 0; k < count; k++)
        dst[k] = 0.0;
    conv_transpose_add(&c, n_batch, params, src, dst);
}

/* dweight [c_out, c_in, kh, kw] += scale * d<A x, dy>/dW
 *   = scale * sum_{b, y, x} dy[b, o, y, x] x[b, i, iy, ix]
 * x [n_batch, c_in, h, w], dy [n_batch, c_out, oh, ow]. With x = v, dy = u =
 * A v / ||A v||: the gradient of the power-iteration estimate sigma = <u, A v>. */
static void conv2d_ref_weight_grad(const lipc_node *n, int n_batch, const double *x,
                                   const double *dy, double scale, double *dweight)
{
    conv_dims c = conv_dims_of(n);
    conv_weight_grad_add(&c, n_batch, x, dy, scale, dweight);
}

/* ---- running error analysis (ref_error) --------------------------------------
 *
 * Exact: y = b + sum_t W_t x_t (+ x_o when folded), over the taps t that read
 * inside the input, on the exact inputs x; computed: y~ = conv_apply's loop on
 * x~ with |x~ - x| <= e. Let k = c_in kh kw (+ 1 when folded) bound the terms,
 * and y^ = b + sum_t W_t x~_t (+ x~_o) in exact arithmetic. Then
 *   |y^ - y|  <= sum_t |W_t| e_t (+ e_o)                      = P  (propagated)
 *   |y~ - y^| <= gamma(k + 2) (|b| + sum_t |W_t| |x~_t| (+ |x~_o|)) = gamma Q
 * The second is the recursive-summation bound (Higham eq. 3.4): acc starts at
 * b and adds each product (rounded once) and then the identity tap, so a
 * product passes through at most k + 1 roundings and b through at most k
 * (gamma(k + 2) is generous by one). So
 *   e_out = P + gamma(k + 2) Q.
 * P and Q are computed by the same loop on nonnegative numbers (at most k + 1
 * roundings on a path), then gamma (1), its product (1) and the sum (1):
 * lipc_ops_err_up(raw, k + 4) covers the bound's own rounding; we pass k + 8. */
static void conv_error(const conv_dims *c, int n_batch, const double *xs, const double *es,
                       const double *wt, const double *bias, double *eys)
{
    long k = (long)c->c_in * c->kh * c->kw + (c->fold ? 1 : 0);
    double g = lipc_ops_gamma(k + 2);
    for (int b = 0; b < n_batch; b++) {
        const double *x_b = xs + (size_t)b * c->c_in * c->h * c->w;
        const double *e_b = es + (size_t)b * c->c_in * c->h * c->w;
        double *ey_b = eys + (size_t)b * c->c_out * c->oh * c->ow;
        for (int o = 0; o < c->c_out; o++)
            for (int y = 0; y < c->oh; y++)
                for (int x = 0; x < c->ow; x++) {
                    double p = 0.0, q = bias ? fabs(bias[o]) : 0.0;
                    for (int i = 0; i < c->c_in; i++)
                        for (int ky = 0; ky < c->kh; ky++) {
                            int iy = y * c->sh + ky - c->top;
                            if (iy < 0 || iy >= c->h)
                                continue;
                            for (int kx = 0; kx < c->kw; kx++) {
                                int ix = x * c->sw + kx - c->left;
                                if (ix < 0 || ix >= c->w)
                                    continue;
                                double aw = fabs(wt[conv_widx(c, o, i, ky, kx)]);
                                size_t at = ((size_t)i * c->h + iy) * c->w + ix;
                                p += aw * e_b[at];
                                q += aw * fabs(x_b[at]);
                            }
                        }
                    if (c->fold) {
                        size_t at = ((size_t)o * c->h + y) * c->w + x;
                        p += e_b[at];
                        q += fabs(x_b[at]);
                    }
                    ey_b[((size_t)o * c->oh + y) * c->ow + x] = lipc_ops_err_up(p + g * q, k + 8);
                }
    }
}

/* in, in_err [n_batch, c_in, h, w]; out, out_err [n_batch, c_out, oh, ow];
 * params as the forward's. */
static void conv2d_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                             const double *const *in_err, const double *out, double *out_err,
                             const double *params)
{
    (void)out;
    conv_dims c = conv_dims_of(n);
    const double *bias = n->a.bias ? params + (size_t)c.c_out * c.c_in * c.kh * c.kw : NULL;
    conv_error(&c, n_batch, in[0], in_err[0], params, bias, out_err);
}

const lipc_op_desc lipc_op_desc_conv2d = {
    .name = "conv2d",
    .summary = "2-D convolution with zero padding",
    .user = true,
    .preprocess = false,
    .linear = true,
    .n_inputs = 1,
    .fields = conv2d_fields,
    .primary = NULL,
    .defaults = conv2d_defaults,
    .infer = conv2d_infer,
    .lipschitz = conv2d_lipschitz,
    .ref_forward = conv2d_ref_forward,
    .ref_backward = conv2d_ref_backward,
    .ref_linear = conv2d_ref_linear,
    .ref_weight_grad = conv2d_ref_weight_grad,
    .ref_error = conv2d_ref_error,
};
