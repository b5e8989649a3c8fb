/* ir/ops/flatten.c: (c, h, w) -> (c*h*w), a flat vector in the same NCHW order
 * (element (i, y, x) goes to i*h*w + y*w + x). In memory it is a copy: the
 * operator is the identity up to the shape, an isometry. A flat input stays. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <string.h>

static const lipc_field flatten_fields[] = {
    {0},
};

static bool flatten_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    (void)d;
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = {1, {(int)lipc_shape_numel(n->in[0]->shape), 0, 0}};
    n->shape = s;
    return true;
}

static void flatten_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_ONE, "isometry", true, 1.0};
}

/* in [n_batch, c*h*w] (NCHW), out [n_batch, c*h*w]: the same numbers */
static void flatten_ref_forward(const lipc_node *n, int n_batch,
                                const double *const *in, double *out,
                                const double *params)
{
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    memcpy(out, in[0], total * sizeof *out);
}

/* Backward: the identity on the numbers (only the shape changes):
 *   din [n_batch, c*h*w] += dout [n_batch, c*h*w] */
static void flatten_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                                 const double *out, const double *dout,
                                 double *const *din, const double *params, double *dparams)
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

/* Running error analysis: the same numbers, moved: e_out = e_in.
 * in_err, out_err [n_batch, c*h*w]. */
static void flatten_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                              const double *const *in_err, const double *out,
                              double *out_err, const double *params)
{
    (void)in;
    (void)out;
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    memcpy(out_err, in_err[0], total * sizeof *out_err);
}

const lipc_op_desc lipc_op_desc_flatten = {
    .name = "flatten",
    .summary = "feature map (c, h, w) to a flat vector (c*h*w)",
    .user = true,
    .preprocess = false,
    .linear = true,
    .n_inputs = 1,
    .fields = flatten_fields,
    .primary = NULL,
    .defaults = NULL,
    .infer = flatten_infer,
    .lipschitz = flatten_lipschitz,
    .ref_forward = flatten_ref_forward,
    .ref_backward = flatten_ref_backward,
    .ref_error = flatten_ref_error,
};
