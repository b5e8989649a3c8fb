/* ir/ops/dense.c: fully connected layer on a flat vector, y = W x + b with
 * W [out, in].
 *
 * `normalize` (the GloRo head, METHOD.md section 1) uses the rows scaled to
 * unit l2 norm, W_i / ||W_i||_2 (a zero row stays zero), so the certificate
 * needs only K_sub * ||w_i - w_j|| per class pair. After fold-residual,
 * a.fold_identity means y = (W + I) x + b = x + (W x + b) (METHOD.md section 3);
 * with both flags the identity is added after normalising.
 *
 * Lipschitz: sigma_max(W) (exact by SVD), or HEAD for a normalised head. */
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
    const double *wt = params;
    const double *bias = n->a.bias ? params + (size_t)out_f * in_f : NULL;
    if (n->a.fold_identity)
        LIPC_ASSERT(in_f == out_f);
    for (int o = 0; o < out_f; o++) {
        const double *row = wt + (size_t)o * in_f;
        double scale = 1.0;
        if (n->a.normalize) {
            double ss = 0.0;
            for (int i = 0; i < in_f; i++)
                ss += row[i] * row[i];
            scale = ss > 0.0 ? 1.0 / sqrt(ss) : 0.0;
        }
        for (int b = 0; b < n_batch; b++) {
            const double *x = in[0] + (size_t)b * in_f;
            double acc = 0.0;
            for (int i = 0; i < in_f; i++)
                acc += row[i] * x[i];
            acc *= scale;
            if (n->a.fold_identity)
                acc += x[o];
            if (bias)
                acc += bias[o];
            out[(size_t)b * out_f + o] = acc;
        }
    }
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
};
