/* passes/train_graph.c: lower a checked forward graph to a program.
 *
 * The training step (see "programs" in ir/ir.h) is built in four parts:
 *
 * 1. Bounds. Every node whose Lipschitz bound is an operator norm, a
 *    constant, or a loose residual becomes a factor of K_sub. Factors inside
 *    the body of a residual that did not fold hang under that residual's LOOSE
 *    factor (1 + the product of its children); the rest multiply on the main
 *    path. Operator-norm factors get persistent power-iteration vectors
 *    v (the layer's input shape) and u (its output shape). The head is not a
 *    factor: the loss uses the pairwise bound K_sub ||w_i - w_j||.
 *
 * 2. Autodiff. Reverse program order over the nodes that lie on a path from a
 *    parameter to the output: each gets a BACKWARD step, and an input's
 *    gradient is formed only when a parameter lies upstream of that input
 *    (the stem's input gradient is never computed). Gradients of a value
 *    used twice (a residual's input) accumulate: backends zero the gradient
 *    buffers before the backward phase and every BACKWARD adds.
 *
 * 3. The K_sub path: SIGMA_GRAD per operator-norm factor adds
 *    dL/dK_sub * dK_sub/dsigma_b * dsigma_b/dW_b to the layer's weight
 *    gradient (dsigma/dW from the converged power-iteration vectors).
 *
 * 4. Clipping and the optimiser update.
 */
#include "passes/passes.h"

#include <string.h>

/* Is n inside the body of a residual that was kept (not folded)? Returns the
 * innermost such residual. */
static const lipc_residual *kept_scope(const lipc_node *n)
{
    for (const lipc_residual *s = n->scope; s; s = s->parent)
        if (s->state == LIPC_RES_KEPT)
            return s;
    return NULL;
}

static bool add_bounds(lipc_program *p, lipc_diags *d)
{
    lipc_graph *g = p->g;
    int *bound_of = lipc_malloc(sizeof(int) * (size_t)(g->next_id + 1));
    if (!bound_of)
        return false;
    for (int i = 0; i <= g->next_id; i++)
        bound_of[i] = -1;
    size_t vec = 0;
    for (lipc_node *n = g->first; n; n = n->next) {
        lipc_lip_kind k = n->lip.kind;
        if (n == p->head || (k != LIPC_LIP_OPNORM && k != LIPC_LIP_CONST && k != LIPC_LIP_LOOSE))
            continue;
        lipc_bound b = {.node = n, .kind = k, .parent = -1, .value = n->lip.value};
        if (k == LIPC_LIP_OPNORM) {
            if (!lipc_op_info(n->op)->ref_linear) {
                lipc_diag_error(d, n->loc, "lipc cannot estimate the operator norm of a %s layer",
                                lipc_op_info(n->op)->name);
                lipc_free(bound_of);
                return false;
            }
            b.v_offset = vec;
            b.v_len = (size_t)lipc_shape_numel(n->in[0]->shape);
            vec += b.v_len;
            b.u_offset = vec;
            b.u_len = (size_t)lipc_shape_numel(n->shape);
            vec += b.u_len;
        }
        int idx = lipc_program_add_bound(p, b);
        if (idx < 0) {
            lipc_free(bound_of);
            return false;
        }
        bound_of[n->id] = idx;
    }
    /* Parents: the LOOSE factor of the innermost kept residual around the node.
     * The ADD closing a residual follows its body, hence this second loop. */
    for (int i = 0; i < p->n_bounds; i++) {
        const lipc_residual *r = kept_scope(p->bounds[i].node);
        if (r) {
            LIPC_ASSERT(r->add && bound_of[r->add->id] >= 0);
            p->bounds[i].parent = bound_of[r->add->id];
        }
    }
    p->n_vec_elems = vec;
    lipc_free(bound_of);
    return true;
}

static bool add_step(lipc_program *p, lipc_step_op op, lipc_node *n, int bound, bool *ok)
{
    lipc_step s = {.op = op, .node = n, .bound = bound};
    if (*ok && !lipc_program_add_step(p, s))
        *ok = false;
    return *ok;
}

/* Reverse-mode autodiff: BACKWARD steps in reverse program order. */
static bool add_backward(lipc_program *p)
{
    lipc_graph *g = p->g;
    size_t n_ids = (size_t)g->next_id + 1;
    bool *upstream = lipc_calloc(n_ids, sizeof *upstream); /* a parameter at or above */
    bool *reaches = lipc_calloc(n_ids, sizeof *reaches);   /* on a path to the output */
    if (!upstream || !reaches) {
        lipc_free(upstream);
        lipc_free(reaches);
        return false;
    }
    for (lipc_node *n = g->first; n; n = n->next) {
        upstream[n->id] = n->n_param > 0;
        for (int i = 0; i < n->n_in; i++)
            upstream[n->id] |= upstream[n->in[i]->id];
    }
    reaches[g->output->id] = true;
    bool *grad_written = lipc_calloc(n_ids, sizeof *grad_written);
    if (!grad_written) {
        lipc_free(upstream);
        lipc_free(reaches);
        return false;
    }
    grad_written[g->output->id] = true; /* by the LOSS step */
    bool ok = true;
    for (lipc_node *n = g->last; n; n = n->prev) {
        if (!reaches[n->id] || !upstream[n->id])
            continue;
        lipc_step s = {.op = LIPC_STEP_BACKWARD, .node = n, .bound = -1};
        for (int i = 0; i < n->n_in; i++) {
            int in = n->in[i]->id;
            s.need_din[i] = upstream[in];
            s.zero_din[i] = s.need_din[i] && !grad_written[in];
            grad_written[in] |= s.need_din[i];
            reaches[in] = true;
        }
        if (!lipc_program_add_step(p, s)) {
            ok = false;
            break;
        }
    }
    lipc_free(upstream);
    lipc_free(reaches);
    lipc_free(grad_written);
    return ok;
}

lipc_program *lipc_build_program(lipc_graph *g, lipc_entry entry, lipc_diags *d)
{
    LIPC_ASSERT(g->shapes_known && g->lipschitz_known);
    lipc_program *p = lipc_program_new(g, entry);
    if (!p)
        return NULL;
    if (g->output->lip.kind == LIPC_LIP_HEAD)
        p->head = g->output;
    bool ok = true;
    if (entry != LIPC_ENTRY_FORWARD) {
        if (!p->head) {
            lipc_diag_msg *m = lipc_diag_error(d, g->output->loc,
                                               "training and certification need a dense head "
                                               "as the last layer");
            lipc_diag_hint(m, "end the model with `- dense: {out: $classes, normalize: true}`");
            lipc_program_free(p);
            return NULL;
        }
        if (!add_bounds(p, d)) {
            lipc_program_free(p);
            return NULL;
        }
    }
    if (entry != LIPC_ENTRY_LIPSCHITZ)
        for (lipc_node *n = g->first; n; n = n->next)
            if (n->op != LIPC_OP_INPUT)
                add_step(p, LIPC_STEP_FORWARD, n, -1, &ok);
    if (entry != LIPC_ENTRY_FORWARD) {
        for (int b = 0; b < p->n_bounds; b++)
            if (p->bounds[b].kind == LIPC_LIP_OPNORM)
                add_step(p, LIPC_STEP_POWER_ITER, NULL, b, &ok);
        add_step(p, LIPC_STEP_BOUND, NULL, -1, &ok);
    }
    if (entry == LIPC_ENTRY_TRAIN) {
        add_step(p, LIPC_STEP_LOSS, NULL, -1, &ok);
        ok = ok && add_backward(p);
        for (int b = 0; b < p->n_bounds; b++)
            if (p->bounds[b].kind == LIPC_LIP_OPNORM)
                add_step(p, LIPC_STEP_SIGMA_GRAD, NULL, b, &ok);
        add_step(p, LIPC_STEP_CLIP, NULL, -1, &ok);
        add_step(p, LIPC_STEP_UPDATE, NULL, -1, &ok);
    }
    if (!ok || !lipc_plan_memory(p)) {
        lipc_program_free(p);
        g->oom = true;
        return NULL;
    }
    return p;
}
