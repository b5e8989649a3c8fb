/* passes/fold_residual.c: fold linear residual blocks into one operator.
 *
 * Identity (METHOD.md section 3): for a convolution with stride 1, dilation 1,
 * an odd kernel kh x kw, zero padding (kh-1)/2 rows and (kw-1)/2 columns on
 * each side ("same") and c_in == c_out,
 *
 *     x + conv_V(x) + b = conv_{V + I_c}(x) + b,
 *     I_c[o, i, kh/2, kw/2] = delta(o, i), zero elsewhere,
 *
 * because the centre tap of a stride-1 "same" convolution reads exactly the
 * input pixel at the output's position. Likewise x + (V x + b) = (I + V) x + b
 * for a dense layer with in == out. After the rewrite the block is ONE linear
 * operator, whose norm can be computed exactly instead of bounded by 1 + ||V||.
 *
 * Matcher: a residual whose body is exactly one such layer reading the
 * residual's input. The rewrite sets `fold_identity` on that layer, redirects
 * the users of the ADD to it and unlinks the ADD. Every residual that does
 * not fold keeps its ADD and records why, with the body layer to blame, so the
 * dump and `lipc check` can say it at the YAML line.
 *
 * Residuals are visited innermost first (reverse source order): an inner
 * block that folds leaves its parent with a single-layer body.
 */
#include "passes/passes.h"

#include <string.h>

/* Is node n inside the body of residual r (directly or in a nested one)? */
static bool in_body(const lipc_node *n, const lipc_residual *r)
{
    for (const lipc_residual *s = n->scope; s; s = s->parent)
        if (s == r)
            return true;
    return false;
}

static const char *why_conv(const lipc_graph *g, const lipc_node *b)
{
    const lipc_attrs *a = &b->a;
    if (a->stride[0] != 1 || a->stride[1] != 1)
        return lipc_arena_printf((lipc_arena *)&g->arena,
                                 "the convolution has stride %dx%d; x + conv(x) is one "
                                 "convolution only at stride 1", a->stride[0], a->stride[1]);
    if (a->kernel[0] % 2 == 0 || a->kernel[1] % 2 == 0)
        return lipc_arena_printf((lipc_arena *)&g->arena,
                                 "the kernel %dx%d is even: it has no centre tap to hold "
                                 "the identity", a->kernel[0], a->kernel[1]);
    int ph = (a->kernel[0] - 1) / 2, pw = (a->kernel[1] - 1) / 2;
    if (a->pad[0] != ph || a->pad[1] != ph || a->pad[2] != pw || a->pad[3] != pw)
        return lipc_arena_printf((lipc_arena *)&g->arena,
                                 "the padding is not \"same\" (%d,%d,%d,%d): the centre "
                                 "tap would not read the output's own pixel",
                                 a->pad[0], a->pad[1], a->pad[2], a->pad[3]);
    if (b->in[0]->shape.d[0] != a->out)
        return "the convolution changes the number of channels";
    if (a->fold_identity)
        return "the body is itself a folded residual: x + (x + conv(x)) is left as two terms";
    return NULL;
}

/* Returns NULL when r folds, else the reason (and *blame the layer to point at). */
static const char *why_not(lipc_graph *g, const lipc_residual *r, lipc_node **body,
                           const lipc_node **blame)
{
    const lipc_node *nonlinear = NULL;
    int n_body = 0;
    lipc_node *last = NULL;
    for (lipc_node *n = g->first; n; n = n->next) {
        if (n == r->add || !in_body(n, r))
            continue;
        n_body++;
        last = n;
        if (!nonlinear && !lipc_op_info(n->op)->linear && n->op != LIPC_OP_ADD)
            nonlinear = n;
        if (!nonlinear && n->op == LIPC_OP_ADD)
            nonlinear = n;
    }
    *body = last;
    *blame = nonlinear ? nonlinear : last;
    if (nonlinear && nonlinear->op == LIPC_OP_ADD)
        return "the body holds a residual that did not fold";
    if (nonlinear)
        return lipc_arena_printf(&g->arena, "the body is nonlinear (%s): x + g(x) is bounded "
                                            "only by 1 + K(g)",
                                 lipc_op_info(nonlinear->op)->name);
    if (n_body != 1)
        return lipc_arena_printf(&g->arena, "the body has %d layers; only a body of one "
                                            "convolution or dense layer folds", n_body);
    lipc_node *b = last;
    if (b->in[0] != r->skip || r->add->in[1] != b || lipc_graph_count_uses(g, b) != 1)
        return "the body's layer does not read the residual's input directly";
    switch (b->op) {
    case LIPC_OP_CONV2D:
        return why_conv(g, b);
    case LIPC_OP_DENSE:
        if (b->a.normalize)
            return "a row-normalised dense layer cannot absorb the identity";
        if (b->a.fold_identity)
            return "the body is itself a folded residual: x + (x + Vx) is left as two terms";
        return NULL;
    default:
        return lipc_arena_printf(&g->arena, "a %s layer cannot absorb the identity",
                                 lipc_op_info(b->op)->name);
    }
}

bool lipc_pass_fold_residual(lipc_graph *g, lipc_diags *d)
{
    (void)d;
    for (int i = g->n_res - 1; i >= 0; i--) {
        lipc_residual *r = g->res[i];
        if (r->state != LIPC_RES_OPEN)
            continue;
        lipc_node *b;
        const lipc_node *blame;
        const char *why = why_not(g, r, &b, &blame);
        if (why) {
            r->state = LIPC_RES_KEPT;
            r->why = why;
            r->why_loc = blame ? blame->loc : r->loc;
            continue;
        }
        lipc_node *add = r->add;
        b->a.fold_identity = true;
        b->scope = r->parent;
        lipc_graph_replace_uses(g, add, b);
        lipc_graph_unlink(g, add);
        r->add = b;
        r->state = LIPC_RES_FOLDED;
    }
    g->folded = true;
    return !g->oom;
}
