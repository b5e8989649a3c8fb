/* ir/ops/add.c: the join of a residual block, y = x + body(x): in[0] is the
 * skip x, in[1] the body's output; both must have the same shape. Not
 * user-writable: the frontend creates it for each `residual:` block.
 *
 * Lipschitz: ||y(x) - y(x')|| <= (1 + K(body)) ||x - x'|| in general (LOOSE,
 * what the lipschitz pass refines); after fold-residual the join disappears
 * into one linear op whose exact norm replaces this bound. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field add_fields[] = {
    {0},
};

static bool add_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape skip = n->in[0]->shape, body = n->in[1]->shape;
    if (!lipc_shape_eq(skip, body)) {
        char s0[48], s1[48];
        lipc_loc at = n->closes ? n->closes->loc : n->loc;
        lipc_diag_msg *m = lipc_diag_error(
            d, at, "residual body changes the shape: input is %s, body output is %s",
            lipc_shape_str(skip, s0), lipc_shape_str(body, s1));
        lipc_diag_note(m, n->in[1]->loc, "the body ends here");
        lipc_diag_hint(m, "a residual body must keep channels and size (stride 1, "
                          "`padding: same`, out = its input's channels)");
        return false;
    }
    n->shape = skip;
    return true;
}

static void add_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_LOOSE, "1 + K(body)", false, NAN};
}

/* in[0], in[1], out: [n_batch, numel]; out = in[0] + in[1] */
static void add_ref_forward(const lipc_node *n, int n_batch,
                            const double *const *in, double *out,
                            const double *params)
{
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        out[i] = in[0][i] + in[1][i];
}

/* Backward: y = in[0] + in[1], so both inputs receive dout unchanged:
 *   din[0] += dout,  din[1] += dout        (each [n_batch, numel])
 * When the skip is also read by the body, the interpreter gives both paths the
 * same buffer and the two contributions add up (fan-out). */
static void add_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                             const double *out, const double *dout, double *const *din,
                             const double *params, double *dparams)
{
    (void)in;
    (void)out;
    (void)params;
    (void)dparams;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (int k = 0; k < 2; k++)
        if (din[k])
            for (size_t i = 0; i < total; i++)
                din[k][i] += dout[i];
}

/* Running error analysis. Exact y = a + b; computed y~ = fl(a~ + b~) =
 * (a~ + b~)(1 + d), so |a~ + b~| <= |y~| / (1 - u) and
 *   |y~ - y| <= e_a + e_b + u |a~ + b~| <= (e_a + e_b + u |y~|) / (1 - u).
 * raw = fl(fl(e_a + e_b) + u |y~|) (three roundings) is >= that bound times
 * (1 - u)^4: lipc_ops_err_up(raw, 4) is rigorous; we pass 5.
 * in_err[0], in_err[1], out, out_err [n_batch, numel]. */
static void add_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                          const double *const *in_err, const double *out, double *out_err,
                          const double *params)
{
    (void)in;
    (void)params;
    size_t total = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    for (size_t i = 0; i < total; i++)
        out_err[i] = lipc_ops_err_up(in_err[0][i] + in_err[1][i] + LIPC_OPS_U * fabs(out[i]),
                                     5);
}

const lipc_op_desc lipc_op_desc_add = {
    .name = "add",
    .summary = "residual join: skip + body output",
    .user = false,
    .preprocess = false,
    .linear = false,
    .n_inputs = 2,
    .fields = add_fields,
    .primary = NULL,
    .defaults = NULL,
    .infer = add_infer,
    .lipschitz = add_lipschitz,
    .ref_forward = add_ref_forward,
    .ref_backward = add_ref_backward,
    .ref_error = add_ref_error,
};
