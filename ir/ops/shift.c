/* ir/ops/shift.c: y = x + by, a constant added to every element (the
 * preprocessing step `x - 0.5`). A translation: ||y(x) - y(x')|| = ||x - x'||,
 * so it is an isometry and 1-Lipschitz. Affine, not linear (y(0) = by). */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field shift_fields[] = {
    {"by", LIPC_FIELD_FLOAT, offsetof(lipc_attrs, by), true, 0, NULL,
     "constant added to every element: y = x + by"},
    {0},
};

static void shift_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_ONE, "isometry", true, 1.0};
}

/* in [n_batch, numel], out [n_batch, numel]: out = in + by */
static void shift_ref_forward(const lipc_node *n, int n_batch,
                              const double *const *in, double *out,
                              const double *params)
{
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        out[i] = in[0][i] + n->a.by;
}

/* Backward: dy/dx = I (the constant has no gradient):
 *   din [n_batch, numel] += dout [n_batch, numel] */
static void shift_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                               const double *out, const double *dout, double *const *din,
                               const double *params, double *dparams)
{
    (void)in;
    (void)out;
    (void)params;
    (void)dparams;
    if (!din[0])
        return;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        din[0][i] += dout[i];
}

/* Running error analysis. Exact y = x + by (by the double attribute, as the
 * exact network adds it); computed y~ = fl(x~ + by) = (x~ + by)(1 + d), so
 * |x~ + by| <= |y~| / (1 - u) and
 *   |y~ - y| <= |x~ - x| + u |x~ + by| <= (e_in + u |y~|) / (1 - u).
 * raw = fl(e_in + u |y~|) (two roundings) is then >= that bound times
 * (1 - u)^3: lipc_ops_err_up(raw, 3) is rigorous; we pass 4.
 * in_err, out, out_err [n_batch, numel]. */
static void shift_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                            const double *const *in_err, const double *out, double *out_err,
                            const double *params)
{
    (void)in;
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        out_err[i] = lipc_ops_err_up(in_err[0][i] + LIPC_OPS_U * fabs(out[i]), 4);
}

const lipc_op_desc lipc_op_desc_shift = {
    .name = "shift",
    .summary = "add a constant to every element: y = x + by",
    .user = true,
    .preprocess = true,
    .linear = false,
    .n_inputs = 1,
    .fields = shift_fields,
    .primary = "by",
    .defaults = NULL,
    .infer = lipc_ops_infer_same_shape,
    .lipschitz = shift_lipschitz,
    .ref_forward = shift_ref_forward,
    .ref_backward = shift_ref_backward,
    .ref_error = shift_ref_error,
};
