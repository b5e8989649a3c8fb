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
    if (s.rank != 3) {
        lipc_diag_msg *m = lipc_diag_error(
            d, n->loc, "conv2d expects a feature map (c, h, w), got %s",
            lipc_shape_str(s, sb));
        lipc_diag_hint(m, "convolutions come before `flatten`; after it use dense layers");
        return false;
    }
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
    bool no_pad = !a->pad[0] && !a->pad[1] && !a->pad[2] && !a->pad[3];
    *out = (lipc_lip){LIPC_LIP_OPNORM, NULL, false, NAN};
    if (a->kernel[0] == a->stride[0] && a->kernel[1] == a->stride[1] && no_pad) {
        /* Disjoint windows that tile the input: the operator is block diagonal,
         * one copy of W reshaped c_out x (c_in kh kw) per output pixel. */
        out->method = "reshaped-kernel";
        out->exact = true;
    } else if (a->stride[0] == 1 && a->stride[1] == 1) {
        /* Zero-padded stride-1 conv = crop o circular conv o embedding: the
         * max over frequencies of sigma_max(P(u, v)) bounds it from above. */
        out->method = "conv-fft";
    } else {
        /* Strided with padding: power iteration estimates it from below; the
         * stride-1 conv (subsampling is a projection) bounds it from above. */
        out->method = "power-iteration+fft-upper";
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
    const lipc_attrs *a = &n->a;
    int c_in = n->in[0]->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int c_out = n->shape.d[0], oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = a->kernel[0], kw = a->kernel[1], sh = a->stride[0], sw = a->stride[1];
    int top = a->pad[0], left = a->pad[2];
    const double *wt = params;
    const double *bias = a->bias ? params + (size_t)c_out * c_in * kh * kw : NULL;
    if (a->fold_identity) {
        /* The identity tap reads in[b, o, y + kh/2 - top, x + kw/2 - left]; it is
         * the residual x exactly when that is in[b, o, y, x] at the same size. */
        LIPC_ASSERT(sh == 1 && sw == 1 && kh % 2 == 1 && kw % 2 == 1);
        LIPC_ASSERT(c_in == c_out && oh == h && ow == w);
        LIPC_ASSERT(top == kh / 2 && left == kw / 2);
    }
    for (int b = 0; b < n_batch; b++) {
        const double *x_b = in[0] + (size_t)b * c_in * h * w;
        double *y_b = out + (size_t)b * c_out * oh * ow;
        for (int o = 0; o < c_out; o++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    double acc = bias ? bias[o] : 0.0;
                    for (int i = 0; i < c_in; i++)
                        for (int ky = 0; ky < kh; ky++) {
                            int iy = y * sh + ky - top;
                            if (iy < 0 || iy >= h)
                                continue;
                            for (int kx = 0; kx < kw; kx++) {
                                int ix = x * sw + kx - left;
                                if (ix < 0 || ix >= w)
                                    continue;
                                acc += wt[(((size_t)o * c_in + i) * kh + ky) * kw + kx] *
                                       x_b[((size_t)i * h + iy) * w + ix];
                            }
                        }
                    if (a->fold_identity)
                        acc += x_b[((size_t)o * h + y) * w + x];
                    y_b[((size_t)o * oh + y) * ow + x] = acc;
                }
    }
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
};
