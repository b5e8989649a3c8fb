/* ir/ops/minmax.c: MinMax (GroupSort with groups of 2), the activation of
 * LiResNet. Channels (rank 3) or features (rank 1) are paired and each pair
 * (a, b) becomes (max(a, b), min(a, b)):
 *   halves:   pair i with i + c/2;  out[i] = max, out[i + c/2] = min
 *   adjacent: pair 2i with 2i + 1;  out[2i] = max, out[2i + 1] = min
 * The two differ only by a fixed permutation of channels.
 *
 * Math: on each pair the map sorts two numbers; it is piecewise a permutation,
 * so its Jacobian is orthogonal wherever it exists: 1-Lipschitz in l2, and it
 * preserves gradient norms (unlike ReLU). The count c must be even. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field minmax_fields[] = {
    {"pairing", LIPC_FIELD_ENUM, offsetof(lipc_attrs, pairing), false, 0,
     lipc_pairing_names, "which channels are paired: halves | adjacent (default halves)"},
    {0},
};

static void minmax_defaults(lipc_attrs *a)
{
    a->pairing = LIPC_PAIR_HALVES;
}

static bool minmax_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = n->in[0]->shape;
    char sb[48];
    if (s.rank != 1 && s.rank != 3) {
        lipc_diag_error(d, n->loc, "minmax expects (c, h, w) or (f), got %s",
                        lipc_shape_str(s, sb));
        return false;
    }
    if (s.d[0] % 2 != 0) {
        lipc_diag_msg *m = lipc_diag_error(
            d, n->loc, "minmax pairs %s, but its input %s has an odd number (%d)",
            s.rank == 3 ? "channels" : "features", lipc_shape_str(s, sb), s.d[0]);
        lipc_diag_hint(m, "give the layer before it an even `out`");
        return false;
    }
    n->shape = s;
    return true;
}

static void minmax_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_ONE, "1-lipschitz", true, 1.0};
}

/* in [n_batch, c, h, w] or [n_batch, c] (then h*w = 1), out the same shape */
static void minmax_ref_forward(const lipc_node *n, int n_batch,
                               const double *const *in, double *out,
                               const double *params)
{
    (void)params;
    int c = n->shape.d[0];
    size_t hw = n->shape.rank == 3 ? (size_t)n->shape.d[1] * n->shape.d[2] : 1;
    for (int b = 0; b < n_batch; b++) {
        const double *x = in[0] + (size_t)b * c * hw;
        double *y = out + (size_t)b * c * hw;
        for (int k = 0; k < c / 2; k++) {
            /* pair (ia, ib); the max lands on ia, the min on ib */
            int ia = n->a.pairing == LIPC_PAIR_HALVES ? k : 2 * k;
            int ib = n->a.pairing == LIPC_PAIR_HALVES ? k + c / 2 : 2 * k + 1;
            for (size_t p = 0; p < hw; p++) {
                double va = x[ia * hw + p], vb = x[ib * hw + p];
                y[ia * hw + p] = va > vb ? va : vb;
                y[ib * hw + p] = va > vb ? vb : va;
            }
        }
    }
}

/* Backward: on each pair the forward is a permutation, chosen by which input
 * is larger, so the gradient is routed back through the same permutation:
 *   a >= b:  din[ia] += dout[ia] (max came from a),  din[ib] += dout[ib]
 *   a <  b:  din[ia] += dout[ib] (min came from a),  din[ib] += dout[ia]
 * At a tie (a == b) the max-output's gradient goes to the first element and
 * the min-output's to the second: the limit from a > b, a valid subgradient
 * that keeps the Jacobian a permutation (gradient norms are preserved).
 * Shapes as in the forward. */
static void minmax_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                                const double *out, const double *dout, double *const *din,
                                const double *params, double *dparams)
{
    (void)out;
    (void)params;
    (void)dparams;
    if (!din[0])
        return;
    int c = n->shape.d[0];
    size_t hw = n->shape.rank == 3 ? (size_t)n->shape.d[1] * n->shape.d[2] : 1;
    for (int b = 0; b < n_batch; b++) {
        const double *x = in[0] + (size_t)b * c * hw;
        const double *dy = dout + (size_t)b * c * hw;
        double *dx = din[0] + (size_t)b * c * hw;
        for (int k = 0; k < c / 2; k++) {
            int ia = n->a.pairing == LIPC_PAIR_HALVES ? k : 2 * k;
            int ib = n->a.pairing == LIPC_PAIR_HALVES ? k + c / 2 : 2 * k + 1;
            for (size_t p = 0; p < hw; p++) {
                size_t pa = ia * hw + p, pb = ib * hw + p;
                bool a_is_max = x[pa] >= x[pb];
                dx[pa] += a_is_max ? dy[pa] : dy[pb];
                dx[pb] += a_is_max ? dy[pb] : dy[pa];
            }
        }
    }
}

/* Running error analysis: max and min are exact in floating point, and each is
 * 1-Lipschitz in the max norm of the pair:
 *   |max(a~, b~) - max(a, b)| <= max(|a~ - a|, |b~ - b|),  the same for min,
 * so both outputs of a pair get max(e_a, e_b), with no rounding of their own
 * (a NaN bound becomes +inf: no bound). Shapes as in the forward. */
static void minmax_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                             const double *const *in_err, const double *out, double *out_err,
                             const double *params)
{
    (void)in;
    (void)out;
    (void)params;
    int c = n->shape.d[0];
    size_t hw = n->shape.rank == 3 ? (size_t)n->shape.d[1] * n->shape.d[2] : 1;
    for (int b = 0; b < n_batch; b++) {
        const double *e = in_err[0] + (size_t)b * c * hw;
        double *eo = out_err + (size_t)b * c * hw;
        for (int k = 0; k < c / 2; k++) {
            int ia = n->a.pairing == LIPC_PAIR_HALVES ? k : 2 * k;
            int ib = n->a.pairing == LIPC_PAIR_HALVES ? k + c / 2 : 2 * k + 1;
            for (size_t p = 0; p < hw; p++) {
                double ea = e[ia * hw + p], eb = e[ib * hw + p];
                double m = ea >= eb ? ea : eb;
                if (isnan(ea) || isnan(eb))
                    m = INFINITY;
                eo[ia * hw + p] = eo[ib * hw + p] = m;
            }
        }
    }
}

const lipc_op_desc lipc_op_desc_minmax = {
    .name = "minmax",
    .summary = "MinMax activation: sort channel pairs (1-Lipschitz, gradient-norm preserving)",
    .user = true,
    .preprocess = false,
    .linear = false,
    .n_inputs = 1,
    .fields = minmax_fields,
    .primary = NULL,
    .defaults = minmax_defaults,
    .infer = minmax_infer,
    .lipschitz = minmax_lipschitz,
    .ref_forward = minmax_ref_forward,
    .ref_backward = minmax_ref_backward,
    .ref_error = minmax_ref_error,
};
