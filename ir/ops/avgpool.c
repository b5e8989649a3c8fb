/* ir/ops/avgpool.c: average pooling without padding, per channel:
 *
 *   out[b, i, p, q] = 1/(kh kw) sum_{ky < kh, kx < kw} in[b, i, p*sh + ky, q*sw + kx]
 *
 * h_out = (h - kh) / sh + 1 (trailing rows that fit no window are dropped).
 * `stride` defaults to the kernel (0 in the defaults means "not given"; infer
 * resolves it).
 *
 * Lipschitz constant. The operator acts on each channel alike, and on one
 * channel it is separable, A = A_h (x) A_w (Kronecker), with A_h: R^h -> R^oh,
 * A_h[p, r] = 1/kh when p*sh <= r < p*sh + kh. So ||A|| = ||A_h|| ||A_w||.
 * - Schur test: for a non-negative matrix, ||M||_2 <= sqrt(max row sum *
 *   max column sum). Rows of A_h sum to kh/kh = 1; column r sums to
 *   (1/kh) #{p : p*sh <= r < p*sh + kh} <= ceil(kh/sh)/kh. Hence
 *       ||A|| <= sqrt( ceil(kh/sh) ceil(kw/sw) / (kh kw) ),
 *   a sound bound for any stride.
 * - When sh >= kh and sw >= kw (kernel == stride in particular) the windows are
 *   disjoint: the rows of A have disjoint supports, each of norm
 *   sqrt(kh kw)/(kh kw), so A A^T = I/(kh kw) and every singular value equals
 *   1/sqrt(kh kw). The bound above then says exactly that (ceil = 1): exact.
 * tests/test_ops.c checks both against the dense operator built column by
 * column. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field avgpool_fields[] = {
    {"kernel", LIPC_FIELD_INT2, offsetof(lipc_attrs, kernel), true, 1, NULL,
     "window size: k or [kh, kw]"},
    {"stride", LIPC_FIELD_INT2, offsetof(lipc_attrs, stride), false, 1, NULL,
     "stride: s or [sh, sw] (default: the kernel)"},
    {0},
};

static void avgpool_defaults(lipc_attrs *a)
{
    a->stride[0] = a->stride[1] = 0; /* not given: the kernel, resolved by infer */
}

static bool avgpool_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = n->in[0]->shape;
    lipc_attrs *a = &n->a;
    char sb[48];
    if (!lipc_ops_require_map(n, d, "pool before `flatten`, not after it"))
        return false;
    for (int k = 0; k < 2; k++)
        if (a->stride[k] == 0)
            a->stride[k] = a->kernel[k];
    int kh = a->kernel[0], kw = a->kernel[1], sh = a->stride[0], sw = a->stride[1];
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1) {
        lipc_diag_error(d, n->loc, "avgpool needs kernel and stride >= 1 (kernel %dx%d, "
                        "stride %dx%d)", kh, kw, sh, sw);
        return false;
    }
    if (kh > s.d[1] || kw > s.d[2]) {
        lipc_diag_msg *m = lipc_diag_error(
            d, n->loc, "avgpool kernel %dx%d is larger than its input %s", kh, kw,
            lipc_shape_str(s, sb));
        lipc_diag_hint(m, "avgpool does not pad; use a smaller kernel");
        return false;
    }
    n->shape = (lipc_shape){3, {s.d[0], (s.d[1] - kh) / sh + 1, (s.d[2] - kw) / sw + 1}};
    return true;
}

static void avgpool_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    long kh = n->a.kernel[0], kw = n->a.kernel[1];
    long sh = n->a.stride[0] > 0 ? n->a.stride[0] : kh;
    long sw = n->a.stride[1] > 0 ? n->a.stride[1] : kw;
    long cover = ((kh + sh - 1) / sh) * ((kw + sw - 1) / sw); /* ceil(kh/sh) ceil(kw/sw) */
    bool disjoint = sh >= kh && sw >= kw;
    out->kind = LIPC_LIP_CONST;
    out->exact = disjoint;
    out->method = disjoint ? "1/sqrt(kh kw)" : "sqrt(ceil(kh/sh) ceil(kw/sw) / (kh kw))";
    out->value = sqrt((double)cover / (double)(kh * kw));
}

/* in [n_batch, c, h, w], out [n_batch, c, oh, ow] */
static void avgpool_ref_forward(const lipc_node *n, int n_batch,
                                const double *const *in, double *out,
                                const double *params)
{
    (void)params;
    int c = n->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = n->a.kernel[0], kw = n->a.kernel[1], sh = n->a.stride[0], sw = n->a.stride[1];
    double inv = 1.0 / ((double)kh * kw);
    for (int b = 0; b < n_batch; b++)
        for (int i = 0; i < c; i++) {
            const double *x = in[0] + ((size_t)b * c + i) * h * w;
            double *y = out + ((size_t)b * c + i) * oh * ow;
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    double acc = 0.0;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++)
                            acc += x[(size_t)(p * sh + ky) * w + q * sw + kx];
                    y[(size_t)p * ow + q] = acc * inv;
                }
        }
}

/* Backward: each output averages its window, so its gradient is spread evenly
 * over that window (overlapping windows add up; dropped trailing rows get 0):
 *   din[b, i, p*sh + ky, q*sw + kx] += dout[b, i, p, q] / (kh kw)
 * din [n_batch, c, h, w], dout [n_batch, c, oh, ow]. */
static void avgpool_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                                 const double *out, const double *dout,
                                 double *const *din, const double *params, double *dparams)
{
    (void)in;
    (void)out;
    (void)params;
    (void)dparams;
    if (!din[0])
        return;
    int c = n->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = n->a.kernel[0], kw = n->a.kernel[1], sh = n->a.stride[0], sw = n->a.stride[1];
    double inv = 1.0 / ((double)kh * kw);
    for (int b = 0; b < n_batch; b++)
        for (int i = 0; i < c; i++) {
            double *dx = din[0] + ((size_t)b * c + i) * h * w;
            const double *dy = dout + ((size_t)b * c + i) * oh * ow;
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    double g = dy[(size_t)p * ow + q] * inv;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++)
                            dx[(size_t)(p * sh + ky) * w + q * sw + kx] += g;
                }
        }
}

/* Running error analysis. Exact y = (1/K) sum x over the window, K = kh kw;
 * computed y~ = fl(fl(sum x~) inv~) with inv~ = fl(1/K) = (1/K)(1 + d0): each
 * term passes at most K - 1 additions, then inv~ and the product, so
 *   |y~ - (1/K) sum x~| <= gamma(K + 1) (1/K) sum |x~|   and
 *   |y~ - y| <= (1/K) sum e + gamma(K + 1) (1/K) sum |x~| = P + gamma Q.
 * P and Q are computed as the forward computes an average (K + 1 roundings on
 * a path), then gamma (1), its product (1) and the sum (1): at most K + 3, and
 * lipc_ops_err_up(raw, K + 8) covers the bound's own rounding.
 * in, in_err [n_batch, c, h, w]; out_err [n_batch, c, oh, ow]. */
static void avgpool_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                              const double *const *in_err, const double *out,
                              double *out_err, const double *params)
{
    (void)out;
    (void)params;
    int c = n->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = n->a.kernel[0], kw = n->a.kernel[1], sh = n->a.stride[0], sw = n->a.stride[1];
    long kk = (long)kh * kw;
    double inv = 1.0 / ((double)kh * kw), g = lipc_ops_gamma(kk + 1);
    for (int b = 0; b < n_batch; b++)
        for (int i = 0; i < c; i++) {
            const double *x = in[0] + ((size_t)b * c + i) * h * w;
            const double *e = in_err[0] + ((size_t)b * c + i) * h * w;
            double *ey = out_err + ((size_t)b * c + i) * oh * ow;
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    double pe = 0.0, qx = 0.0;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            size_t at = (size_t)(p * sh + ky) * w + q * sw + kx;
                            pe += e[at];
                            qx += fabs(x[at]);
                        }
                    ey[(size_t)p * ow + q] = lipc_ops_err_up(pe * inv + g * (qx * inv), kk + 8);
                }
        }
}

const lipc_op_desc lipc_op_desc_avgpool = {
    .name = "avgpool",
    .summary = "average pooling, no padding",
    .user = true,
    .preprocess = false,
    .linear = true,
    .n_inputs = 1,
    .fields = avgpool_fields,
    .primary = NULL,
    .defaults = avgpool_defaults,
    .infer = avgpool_infer,
    .lipschitz = avgpool_lipschitz,
    .ref_forward = avgpool_ref_forward,
    .ref_backward = avgpool_ref_backward,
    .ref_error = avgpool_ref_error,
};
