/* ir/ops/input.c: the graph's input, x in the model's input shape (c, h, w) or
 * (f), batch outermost. It has no attributes and no math: the interpreter and
 * every backend bind its buffer to the caller's x, so ref_forward is NULL. Not
 * user-writable: the frontend creates it from the `input:` section. Its
 * backward is NULL too: the input gradient is whatever the consumers add into
 * its buffer, which the interpreter returns as dx. */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <math.h>

static const lipc_field input_fields[] = {
    {0},
};

static bool input_infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    lipc_shape s = g->input_shape;
    if (s.rank != 1 && s.rank != 3) {
        lipc_diag_msg *m = lipc_diag_error(d, n->loc, "the input has no valid shape");
        lipc_diag_hint(m, "give `shape: [c, h, w]` for images or `shape: [f]` for vectors");
        return false;
    }
    for (int i = 0; i < s.rank; i++) {
        if (s.d[i] < 1) {
            char sb[48];
            lipc_diag_error(d, n->loc, "input shape %s has a dimension below 1",
                            lipc_shape_str(s, sb));
            return false;
        }
    }
    long dims[3] = {s.d[0], s.d[1], s.d[2]};
    if (!lipc_ops_check_dims(n, d, "the input", s.rank, dims))
        return false;
    n->shape = s;
    return true;
}

static void input_lipschitz(const lipc_graph *g, const lipc_node *n, lipc_lip *out)
{
    (void)g;
    (void)n;
    /* The input is where the perturbation enters; it has no bound of its own. */
    *out = (lipc_lip){LIPC_LIP_NONE, "input", true, NAN};
}

const lipc_op_desc lipc_op_desc_input = {
    .name = "input",
    .summary = "the model's input tensor",
    .user = false,
    .preprocess = false,
    .linear = false,
    .n_inputs = 0,
    .fields = input_fields,
    .primary = NULL,
    .defaults = NULL,
    .infer = input_infer,
    .lipschitz = input_lipschitz,
    .ref_forward = NULL,
    .ref_backward = NULL,   /* the data: the interpreter hands its gradient back */
    .ref_error = NULL,      /* the data: exact (e = 0), set by the interpreter */
};
