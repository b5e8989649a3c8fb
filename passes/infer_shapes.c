/* passes/infer_shapes.c: static shapes for every node.
 *
 * Each op's shape rule (ir/ops/<op>.c) sets its output shape from its inputs,
 * resolves "same" padding into explicit amounts and declares its parameters.
 * Errors are reported at the YAML line of the layer. A node whose input
 * failed is skipped silently, so one mistake gives one error, not a cascade.
 * Last, the model must end in a flat vector of `classes` logits.
 */
#include "passes/passes.h"

bool lipc_pass_infer_shapes(lipc_graph *g, lipc_diags *d)
{
    bool ok = true;
    for (lipc_node *n = g->first; n; n = n->next) {
        bool inputs_ok = true;
        for (int i = 0; i < n->n_in; i++)
            inputs_ok &= n->in[i]->shape.rank > 0;
        if (!inputs_ok) {
            ok = false;
            continue;
        }
        const lipc_op_desc *desc = lipc_op_info(n->op);
        if (!desc->infer(g, n, d))
            ok = false;
        if (g->oom)
            return false;
    }
    if (!ok)
        return false;

    lipc_node *out = g->output;
    LIPC_ASSERT(out != NULL);
    char buf[48];
    if (out->shape.rank != 1 || out->shape.d[0] != g->classes) {
        lipc_diag_msg *m = lipc_diag_error(
            d, out->loc, "the model must end with %d logits (classes), but its last layer "
                         "gives %s", g->classes, lipc_shape_str(out->shape, buf));
        if (out->shape.rank == 3)
            lipc_diag_hint(m, "end with `- flatten` and a head, e.g. "
                              "`- dense: {out: $classes, normalize: true}`");
        else
            lipc_diag_hint(m, "the head is usually `- dense: {out: $classes, normalize: true}`");
        return false;
    }
    g->shapes_known = true;
    return true;
}
