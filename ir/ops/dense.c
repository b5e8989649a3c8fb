/* ir/ops/dense.c: fully connected layer on a flat vector, y = W x + b with
 * W [out, in].
 *
 * `normalize` (the GloRo head, METHOD.md section 1) uses the rows scaled to
 * unit l2 norm, W_i / ||W_i||_2 (a zero row stays zero), so the certificate
 * needs only K_sub * ||w_i - w_j|| per class pair. After fold-residual,
 * a.fold_identity means y = (W + I) x + b = x + (W x + b) (METHOD.md section 3);
 * with both flags the identity is added after normalising.
 *
 * Lipschitz: sigma_max(W) (exact by SVD), or HEAD for a normalised head.
 *
 * Gradients through the normalisation (lipc_rownorm_backward in support/, also
 * used by the loss code for the head rows): with r = w / ||w||,
 *   dr/dw = (I - r r^T) / ||w||,   so   dw = (dr - r (r . dr)) / ||w||.
 * A zero row has no derivative (w / ||w|| jumps there; the forward uses r = 0).
 * Its gradient is passed through as if ||w|| = 1 and r = 0: dw = dr. That is
 * finite, and a step along -dr takes the row out of zero in the steepest
 * direction (the one-sided derivative of r at 0 along a unit u is u), so a head
 * initialised to zeros still trains. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field dense_fields[] = {
    {"out", LIPC_FIELD_INT, offsetof(lipc_attrs, out), true, 1, NULL,
     "output features"},
    {"bias", LIPC_FIELD_BOOL, offsetof(lipc_attrs, bias), false, 0, NULL,
     "add a learned bias (default true)"},
    {"normalize", LIPC_FIELD_BOOL, offsetof(lipc_attrs, normalize), false, 0, NULL,
     "scale rows to unit l2 norm at use: the GloRo head (default false)"},
    {"init", LIPC_FIELD_ENUM, offsetof(lipc_attrs, init), false, 0, lipc_init_names,
     "weight initialisation (default: kaiming)"},
    {0},
};

static void dense_defaults(lipc_attrs *a)
{
    a->bias = true;
    a->normalize = false;
    a->init = LIPC_INIT_DEFAULT;
}

static bool dense_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = n->in[0]->shape;
    char sb[48];
    if (s.rank != 1) {
        lipc_diag_msg *m = lipc_diag_error(d, n->loc, "dense expects a flat vector, got %s",
                                           lipc_shape_str(s, sb));
        lipc_diag_hint(m, "add `- flatten` before this layer");
        return false;
    }
    if (n->a.out < 1) {
        lipc_diag_error(d, n->loc, "dense needs out >= 1, got %d", n->a.out);
        return false;
    }
    long wdims[2] = {n->a.out, s.d[0]};
    if (!lipc_ops_check_dims(n, d, "the dense weight", 2, wdims))
        return false;
    n->shape = (lipc_shape){1, {n->a.out, 0, 0}};
    int wd[2] = {n->a.out, s.d[0]};
    return lipc_ops_declare_weight_bias(g, n, 2, wd, d);
}

static void dense_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    if (n->a.normalize)
        /* Per class pair K_sub * ||w_i - w_j||: margins, not one norm. */
        *out = (lipc_lip){LIPC_LIP_HEAD, "pairwise-rows", true, NAN};
    else
        *out = (lipc_lip){LIPC_LIP_OPNORM, "dense-svd", true, NAN};
}

/* ---- reference kernels ------------------------------------------------------
 *
 * The layer's linear map is A = S W (+ I when folded), S = diag(s_o) with
 * s_o = 1 / ||W_o|| under `normalize` (0 for a zero row), else 1. */

static double dense_row_scale(const lipc_node *n, const double *row, int in_f)
{
    return n->a.normalize ? lipc_row_inv_norm(row, in_f, 0.0) : 1.0;
}

/* x [n_batch, in_f] -> y [n_batch, out_f], overwritten:
 *   y[b, o] = bias[o] + s_o sum_i W[o, i] x[b, i]  (+ x[b, o] when folded)
 * bias NULL: the linear part alone. */
static void dense_apply(const lipc_node *n, int n_batch, const double *xs,
                        const double *wt, const double *bias, double *ys)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    if (n->a.fold_identity)
        LIPC_ASSERT(in_f == out_f);
    for (int o = 0; o < out_f; o++) {
        const double *row = wt + (size_t)o * in_f;
        double s = dense_row_scale(n, row, in_f);
        for (int b = 0; b < n_batch; b++) {
            const double *x = xs + (size_t)b * in_f;
            double acc = 0.0;
            for (int i = 0; i < in_f; i++)
                acc += row[i] * x[i];
            acc *= s;
            if (n->a.fold_identity)
                acc += x[o];
            if (bias)
                acc += bias[o];
            ys[(size_t)b * out_f + o] = acc;
        }
    }
}

/* dx [n_batch, in_f] += A^T dy, dy [n_batch, out_f]:
 *   dx[b, i] += sum_o s_o W[o, i] dy[b, o]   (+ dy[b, i] when folded) */
static void dense_transpose_add(const lipc_node *n, int n_batch, const double *wt,
                                const double *dys, double *dxs)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    for (int o = 0; o < out_f; o++) {
        const double *row = wt + (size_t)o * in_f;
        double s = dense_row_scale(n, row, in_f);
        for (int b = 0; b < n_batch; b++) {
            double g = s * dys[(size_t)b * out_f + o];
            double *dx = dxs + (size_t)b * in_f;
            for (int i = 0; i < in_f; i++)
                dx[i] += row[i] * g;
            if (n->a.fold_identity)
                dx[o] += dys[(size_t)b * out_f + o];
        }
    }
}

/* dw [out_f, in_f] += scale * d<A x, dy>/dW, summed over the batch;
 * x [n_batch, in_f], dy [n_batch, out_f], wt the weight (read only when
 * normalize).
 *   Plain:      dW[o, i] += scale sum_b dy[b, o] x[b, i]         (dA = dy x^T)
 *   normalize:  dA_o = dr_o = sum_b dy[b, o] x_b goes through the row
 *               normalisation: dw_o += scale s_o (dr_o - r_o (r_o . dr_o)).
 *               This is lipc_rownorm_backward fused with dA, so that no
 *               [out_f, in_f] buffer is needed: r_o . dr_o = sum_b dy[b, o]
 *               (r_o . x_b). A zero row passes dr_o through (s_o = 1, r_o = 0).
 * The folded identity is a constant: nothing reaches dW from it. */
static void dense_weight_grad_add(const lipc_node *n, int n_batch, const double *xs,
                                  const double *dys, const double *wt, double scale,
                                  double *dw)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    for (int o = 0; o < out_f; o++) {
        /* s_o and r_o . dr_o; a zero row has s_o = 1 and r_o = 0, so it
         * passes dr_o through with no special case. */
        double s = 1.0, rdr = 0.0;
        const double *row = n->a.normalize ? wt + (size_t)o * in_f : NULL;
        if (row) {
            s = lipc_row_inv_norm(row, in_f, 1.0);
            for (int b = 0; b < n_batch; b++) {
                const double *x = xs + (size_t)b * in_f;
                double rx = 0.0;
                for (int i = 0; i < in_f; i++)
                    rx += s * row[i] * x[i];
                rdr += dys[(size_t)b * out_f + o] * rx;
            }
        }
        double *dwo = dw + (size_t)o * in_f;
        for (int i = 0; i < in_f; i++) {
            double dr = 0.0;
            for (int b = 0; b < n_batch; b++)
                dr += dys[(size_t)b * out_f + o] * xs[(size_t)b * in_f + i];
            double r = row ? s * row[i] : 0.0;
            dwo[i] += scale * s * (dr - r * rdr);
        }
    }
}

/* in [n_batch, in_f], out [n_batch, out_f]
 * params: the node's weight [out_f, in_f], then bias [out_f] if a.bias
 *
 * y[b, o] = bias[o] + s_o sum_i W[o, i] x[b, i]  (+ x[b, o] if a.fold_identity)
 * with s_o = 1 / ||W_o||_2 when a.normalize (0 for a zero row), else 1. */
static void dense_ref_forward(const lipc_node *n, int n_batch,
                              const double *const *in, double *out,
                              const double *params)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    const double *bias = n->a.bias ? params + (size_t)out_f * in_f : NULL;
    dense_apply(n, n_batch, in[0], params, bias, out);
}

/* Backward (shapes as in the forward; dparams laid out like params). With
 * A = S W (+ I), y = A x + b:
 *   din[b, i] += sum_o s_o W[o, i] dout[b, o]  (+ dout[b, i] when folded)
 *   dW        += dense_weight_grad_add: dy x^T summed over the batch, taken
 *                through the row normalisation when a.normalize
 *   dbias[o]  += sum_b dout[b, o] */
static void dense_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                               const double *out, const double *dout, double *const *din,
                               const double *params, double *dparams)
{
    (void)out;
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    if (din[0])
        dense_transpose_add(n, n_batch, params, dout, din[0]);
    if (!dparams)
        return;
    dense_weight_grad_add(n, n_batch, in[0], dout, params, 1.0, dparams);
    if (n->a.bias) {
        double *db = dparams + (size_t)out_f * in_f;
        for (int b = 0; b < n_batch; b++)
            for (int o = 0; o < out_f; o++)
                db[o] += dout[(size_t)b * out_f + o];
    }
}

/* The linear map A = S W (+ I when folded), without the bias:
 *   transpose false: dst [n_batch, out_f] = A src [n_batch, in_f]
 *   transpose true:  dst [n_batch, in_f]  = A^T src [n_batch, out_f]
 * Under `normalize` it is the map the layer computes (normalised rows); the
 * lipschitz pass bounds such a head pairwise (HEAD), not by this operator's
 * norm, so only tests call it then. */
static void dense_ref_linear(const lipc_node *n, int n_batch, const double *src,
                             double *dst, const double *params, bool transpose)
{
    if (!transpose) {
        dense_apply(n, n_batch, src, params, NULL, dst);
        return;
    }
    size_t count = (size_t)n_batch * (size_t)n->in[0]->shape.d[0];
    for (size_t k = 0; k < count; k++)
        dst[k] = 0.0;
    dense_transpose_add(n, n_batch, params, src, dst);
}

/* dweight [out_f, in_f] += scale * sum_b dy[b] x[b]^T = scale * d<A x, dy>/dW,
 * x [n_batch, in_f], dy [n_batch, out_f]. Only for a layer that is not
 * row-normalised: through the normalisation the gradient depends on W, which
 * this entry point does not receive (ref_backward handles that case; a head is
 * never power-iterated). */
static void dense_ref_weight_grad(const lipc_node *n, int n_batch, const double *x,
                                  const double *dy, double scale, double *dweight)
{
    LIPC_ASSERT(!n->a.normalize);
    dense_weight_grad_add(n, n_batch, x, dy, NULL, scale, dweight);
}

/* ---- running error analysis (ref_error) ----------------------------------------
 *
 * Exact: y_o = b_o + s_o w_o . x (+ x_o when folded) on the exact inputs x,
 * with s_o = 1 / ||w_o|| (normalize; 0 for a zero row) or 1. Computed, by
 * dense_apply on x~ (|x~ - x| <= e): acc = w_o . x~ (d = in_f terms), acc *= s~_o,
 * += x~_o, += b_o. Let k = d (+ 1 when folded).
 *
 * The row scale. The squares of float weights are exact in double, so
 * fl(sum w^2) = ss (1 + t1), |t1| <= gamma(d - 1); then a rounded sqrt and a
 * rounded division: s~ = s (1 + d2) / ((1 + t1)^(1/2) (1 + d1)). For d u tiny
 * (d < 2^31) this gives s~ = s (1 + t), |t| <= ((d - 1)/2 + 2.01) u <= tau =
 * (d + 4) u (generous by about 2). Hence, with nu = 2 tau (0 without
 * normalize, where s~ = s = 1):
 *   s <= s~ / (1 - tau) <= s~ (1 + nu),    |s~ - s| = |t| s <= nu s~.
 * A zero row has s~ = s = 0 exactly.
 *
 * The bound. With y^ = b + s~ w . x~ (+ x~_o) in exact arithmetic (s~ the
 * computed number, a coefficient), y' = the same with s, and y exact:
 *   |y~ - y^| <= gamma(k + 2) (|b| + s~ |w| |x~| (+ |x~_o|))   rounding: acc's
 *                d terms pass at most d roundings; the scaling (normalize
 *                only), the identity and the bias add one each:
 *                d + normalize + fold + bias <= d + fold + 2 = k + 2
 *   |y^ - y'| = |s~ - s| |w . x~| <= nu s~ |w| |x~|                the row scale
 *   |y' - y|  <= s |w| e (+ e_o) <= (1 + nu) (s~ |w| e (+ e_o))      propagated
 * so, with P = s~ |w| e (+ e_o) and Q = |b| + s~ |w| |x~| (+ |x~_o|),
 *   e_out = (1 + nu) P + (gamma(k + 2) + nu) Q.
 * P and Q mirror dense_apply's loop on nonnegative numbers (at most k + 2
 * roundings on a path); 1 + nu is exact, gamma + nu costs 2 roundings, then a
 * product and the sum: at most k + 4 on a path, and lipc_ops_err_up(raw, k + 8)
 * covers the bound's own rounding with room to spare. */
static void dense_error(const lipc_node *n, int n_batch, const double *xs, const double *es,
                        const double *wt, const double *bias, double *eys)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    long k = (long)in_f + (n->a.fold_identity ? 1 : 0);
    double nu = n->a.normalize ? 2.0 * ((double)in_f + 4.0) * LIPC_OPS_U : 0.0;
    double c_p = 1.0 + nu;                      /* exact: a multiple of 2^-52 */
    double c_q = lipc_ops_gamma(k + 2) + nu;
    for (int o = 0; o < out_f; o++) {
        const double *row = wt + (size_t)o * in_f;
        double s = dense_row_scale(n, row, in_f);   /* s~, as the forward's */
        for (int b = 0; b < n_batch; b++) {
            const double *x = xs + (size_t)b * in_f, *e = es + (size_t)b * in_f;
            double p = 0.0, q = 0.0;
            for (int i = 0; i < in_f; i++) {
                double aw = fabs(row[i]);
                p += aw * e[i];
                q += aw * fabs(x[i]);
            }
            p *= s;
            q *= s;
            if (n->a.fold_identity) {
                p += e[o];
                q += fabs(x[o]);
            }
            if (bias)
                q += fabs(bias[o]);
            eys[(size_t)b * out_f + o] = lipc_ops_err_up(c_p * p + c_q * q, k + 8);
        }
    }
}

/* in, in_err [n_batch, in_f]; out, out_err [n_batch, out_f]; params as the
 * forward's. */
static void dense_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                            const double *const *in_err, const double *out, double *out_err,
                            const double *params)
{
    (void)out;
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    const double *bias = n->a.bias ? params + (size_t)out_f * in_f : NULL;
    dense_error(n, n_batch, in[0], in_err[0], params, bias, out_err);
}

const lipc_op_desc lipc_op_desc_dense = {
    .name = "dense",
    .summary = "fully connected layer y = W x + b (optionally unit-norm rows)",
    .user = true,
    .preprocess = false,
    .linear = true,
    .n_inputs = 1,
    .fields = dense_fields,
    .primary = NULL,
    .defaults = dense_defaults,
    .infer = dense_infer,
    .lipschitz = dense_lipschitz,
    .ref_forward = dense_ref_forward,
    .ref_backward = dense_ref_backward,
    .ref_linear = dense_ref_linear,
    .ref_weight_grad = dense_ref_weight_grad,
    .ref_error = dense_ref_error,
};
