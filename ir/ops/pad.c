/* ir/ops/pad.c: zero padding of a feature map (c, h, w) to
 * (c, h + top + bottom, w + left + right), e.g. Fashion-MNIST 28x28 -> 32x32.
 *
 * Either `to: [h, w]` (the extra rows and columns are split as evenly as
 * possible, top = extra/2, bottom = the rest; likewise left/right) or `by`
 * (N on all sides; [rows, cols]; [top, bottom, left, right]). Exactly one.
 *
 * Math: the operator embeds x into a larger zero tensor, y = E x, E^T E = I. It
 * is linear and an isometry (||E x|| = ||x||), so certificates computed on the
 * padded input hold for the original one unchanged. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>
#include <string.h>

static const lipc_field pad_fields[] = {
    {"to", LIPC_FIELD_INTLIST, offsetof(lipc_attrs, pad_to), false, 1, NULL,
     "target size [h, w]; the extra rows and columns are split evenly"},
    {"by", LIPC_FIELD_INTLIST, offsetof(lipc_attrs, pad_by), false, 0, NULL,
     "zeros to add: N (all sides), [rows, cols] or [top, bottom, left, right]"},
    {0},
};

static bool pad_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    if (!lipc_ops_inputs_known(n))
        return false;
    lipc_shape s = n->in[0]->shape;
    lipc_attrs *a = &n->a;
    char sb[48];
    if (!lipc_ops_require_map(n, d, "pad works on images; give the input `shape: [c, h, w]`"))
        return false;
    bool has_to = a->pad_to.n > 0, has_by = a->pad_by.n > 0;
    if (has_to == has_by) {
        lipc_diag_msg *m = lipc_diag_error(
            d, n->loc, has_to ? "pad takes `to` or `by`, not both"
                              : "pad needs `to` or `by`");
        lipc_diag_hint(m, "write `pad: {to: [32, 32]}` or `pad: {by: 2}`");
        return false;
    }
    int h = s.d[1], w = s.d[2];
    if (has_to) {
        if (a->pad_to.n != 2) {
            lipc_diag_msg *m = lipc_diag_error(
                d, n->loc, "pad `to` takes 2 values [h, w], got %d", a->pad_to.n);
            lipc_diag_hint(m, "write `to: [32, 32]`");
            return false;
        }
        int th = a->pad_to.v[0], tw = a->pad_to.v[1];
        if (th < h || tw < w) {
            lipc_diag_msg *m = lipc_diag_error(
                d, n->loc, "pad `to: [%d, %d]` is smaller than the input %s",
                th, tw, lipc_shape_str(s, sb));
            lipc_diag_hint(m, "pad only adds zeros; it cannot crop");
            return false;
        }
        a->pad[0] = (th - h) / 2;
        a->pad[1] = (th - h) - a->pad[0];
        a->pad[2] = (tw - w) / 2;
        a->pad[3] = (tw - w) - a->pad[2];
    } else {
        const int *v = a->pad_by.v;
        switch (a->pad_by.n) {
        case 1:
            a->pad[0] = a->pad[1] = a->pad[2] = a->pad[3] = v[0];
            break;
        case 2:
            a->pad[0] = a->pad[1] = v[0];
            a->pad[2] = a->pad[3] = v[1];
            break;
        case 4:
            memcpy(a->pad, v, sizeof a->pad);
            break;
        default: {
            lipc_diag_msg *m = lipc_diag_error(
                d, n->loc, "pad `by` takes 1, 2 or 4 values, got %d", a->pad_by.n);
            lipc_diag_hint(m, "N (all sides), [rows, cols] or [top, bottom, left, right]");
            return false;
        }
        }
    }
    long dims[3] = {s.d[0], (long)h + a->pad[0] + a->pad[1],
                    (long)w + a->pad[2] + a->pad[3]};
    if (!lipc_ops_check_dims(n, d, "the padded output", 3, dims))
        return false;
    n->shape = (lipc_shape){3, {s.d[0], (int)dims[1], (int)dims[2]}};
    return true;
}

static void pad_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    *out = (lipc_lip){LIPC_LIP_ONE, "isometry", true, 1.0};
}

/* in [n_batch, c, h, w], out [n_batch, c, h + top + bottom, w + left + right]:
 * out[b, i, y, x] = in[b, i, y - top, x - left] inside, 0 in the border */
static void pad_ref_forward(const lipc_node *n, int n_batch,
                            const double *const *in, double *out,
                            const double *params)
{
    (void)params;
    int c = n->in[0]->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int top = n->a.pad[0], left = n->a.pad[2];
    for (int b = 0; b < n_batch; b++)
        for (int i = 0; i < c; i++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    int sy = y - top, sx = x - left;
                    bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
                    out[(((size_t)b * c + i) * oh + y) * ow + x] =
                        inside ? in[0][(((size_t)b * c + i) * h + sy) * w + sx] : 0.0;
                }
}

/* Backward: the adjoint of the zero embedding E is the crop E^T, so
 *   din[b, i, y, x] += dout[b, i, y + top, x + left]
 * din [n_batch, c, h, w], dout [n_batch, c, oh, ow]; the border's gradient
 * falls on constants (the zeros) and is dropped. */
static void pad_ref_backward(const lipc_node *n, int n_batch, const double *const *in,
                             const double *out, const double *dout, double *const *din,
                             const double *params, double *dparams)
{
    (void)in;
    (void)out;
    (void)params;
    (void)dparams;
    if (!din[0])
        return;
    int c = n->in[0]->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int top = n->a.pad[0], left = n->a.pad[2];
    for (int b = 0; b < n_batch; b++)
        for (int i = 0; i < c; i++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    din[0][(((size_t)b * c + i) * h + y) * w + x] +=
                        dout[(((size_t)b * c + i) * oh + y + top) * ow + x + left];
}

/* Running error analysis: inside, the input's numbers moved (e_out = e_in);
 * the border holds exact zeros (e_out = 0).
 * in_err [n_batch, c, h, w], out_err [n_batch, c, oh, ow]. */
static void pad_ref_error(const lipc_node *n, int n_batch, const double *const *in,
                          const double *const *in_err, const double *out, double *out_err,
                          const double *params)
{
    (void)in;
    (void)out;
    /* the error map is the forward's map of the errors, zeros in the border */
    pad_ref_forward(n, n_batch, in_err, out_err, params);
}

const lipc_op_desc lipc_op_desc_pad = {
    .name = "pad",
    .summary = "zero padding of a feature map (an isometry)",
    .user = true,
    .preprocess = true,
    .linear = true,
    .n_inputs = 1,
    .fields = pad_fields,
    .primary = NULL,
    .defaults = NULL,
    .infer = pad_infer,
    .lipschitz = pad_lipschitz,
    .ref_forward = pad_ref_forward,
    .ref_backward = pad_ref_backward,
    .ref_error = pad_ref_error,
};
