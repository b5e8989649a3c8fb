/* ir/ops/relu.c: y = max(x, 0) elementwise. |max(a,0) - max(b,0)| <= |a - b|
 * per element, so the map is 1-Lipschitz in l2. (LiResNet uses MinMax instead:
 * ReLU loses gradient norm, but it stays available for small baselines.)
 * The smallest op: copy this file to start a new one (ir/ops/README.md). */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <string.h>

static const lipc_field relu_fields[] = {
    {0},
};

static void relu_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_ONE, "1-lipschitz", true, 1.0};
}

/* in [n_batch, numel], out [n_batch, numel]: out = max(in, 0) */
static void relu_ref_forward(const lipc_node *n, int n_batch,
                             const double *const *in, double *out,
                             const double *params)
{
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        out[i] = in[0][i] > 0.0 ? in[0][i] : 0.0;
}

/* Backward: dy/dx = 1 where x > 0, else 0 (at x = 0 we take 0, a valid
 * subgradient):
 *   din [n_batch, numel] += dout where in > 0 */
static void relu_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                              const double *out, const double *dout, double *const *din,
                              const double *params, double *dparams)
{
    (void)out;
    (void)params;
    (void)dparams;
    if (!din[0])
        return;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        if (in[0][i] > 0.0)
            din[0][i] += dout[i];
}

/* Running error analysis: max(x, 0) is exact in floating point and
 * 1-Lipschitz, |max(x~, 0) - max(x, 0)| <= |x~ - x|, so e_out = e_in.
 * in_err, out_err [n_batch, numel]. */
static void relu_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                           const double *const *in_err, const double *out, double *out_err,
                           const double *params)
{
    (void)in;
    (void)out;
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    memcpy(out_err, in_err[0], total * sizeof *out_err);
}

const lipc_op_desc lipc_op_desc_relu = {
    .name = "relu",
    .summary = "elementwise max(x, 0)",
    .user = true,
    .preprocess = false,
    .linear = false,
    .n_inputs = 1,
    .fields = relu_fields,
    .primary = NULL,
    .defaults = NULL,
    .infer = lipc_ops_infer_same_shape,
    .lipschitz = relu_lipschitz,
    .ref_forward = relu_ref_forward,
    .ref_backward = relu_ref_backward,
    .ref_error = relu_ref_error,
};
