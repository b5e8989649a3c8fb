/* passes/lipschitz.c: how each layer's Lipschitz bound is obtained.
 *
 * An analysis: it annotates nodes, it never rewrites. Each op classifies
 * itself (ir/ops/<op>.c): 1 for MinMax, ReLU, shift, pad and flatten; a
 * constant for average pooling; the operator norm of the weights for conv2d
 * and dense, with the method that computes it. This pass adds what needs the
 * whole graph:
 *
 *   - a residual that did not fold is x + g(x), bounded only by
 *     1 + K(g) with K(g) the product of its body's bounds (loose: the paper's
 *     point is that folding replaces this by one exact operator norm);
 *   - the last dense layer is the head: certification uses the pairwise bound
 *     K_sub * ||w_i - w_j|| for each class pair, not its operator norm.
 *
 * K_sub is then the product of the bounds of the nodes on the main path
 * (nodes inside a kept residual's body are counted by that residual).
 * Values need weights and stay NaN here except for the constant kinds.
 */
#include "passes/passes.h"

#include <math.h>

/* 1 + product of the bounds of the nodes directly in r's body (nested kept
 * residuals contribute through their own ADD node). */
static double loose_value(const lipc_graph *g, const lipc_residual *r)
{
    double k = 1.0;
    for (const lipc_node *n = g->first; n; n = n->next)
        if (n->scope == r && n != r->add)
            k *= n->lip.value;
    return 1.0 + k;
}

bool lipc_pass_lipschitz(lipc_graph *g, lipc_diags *d)
{
    (void)d;
    for (lipc_node *n = g->first; n; n = n->next) {
        n->lip = (lipc_lip){.kind = LIPC_LIP_UNSET, .value = NAN};
        if (n->op == LIPC_OP_ADD && n->closes) {
            n->lip.kind = LIPC_LIP_LOOSE;
            n->lip.method = "1 + K(body)";
            n->lip.exact = false;
            n->lip.value = loose_value(g, n->closes);
            continue;
        }
        lipc_op_info(n->op)->lipschitz(g, n, &n->lip);
        if (n == g->output && n->op == LIPC_OP_DENSE) {
            n->lip.kind = LIPC_LIP_HEAD;
            n->lip.method = n->a.normalize ? "pairwise-rows(normalised)" : "pairwise-rows";
            n->lip.exact = true;
            n->lip.value = NAN;
        }
    }
    g->lipschitz_known = true;
    return true;
}
