/* ir/program.c: programs, the straight-line form of an entry point.
 *
 * A program is what the train-graph pass builds and what backends run: steps
 * over the nodes of a forward graph, plus the tree of factors whose product is
 * K_sub. It borrows the graph (nodes are not copied), so the graph must
 * outlive it. The printer is for `lipc dump --emit=program` and for tests.
 */
#include "ir/ir.h"

#include <math.h>
#include <string.h>

const char *const lipc_step_names[] = {
    "forward", "power-iter", "bound", "loss", "backward", "sigma-grad", "clip", "update", NULL,
};

lipc_program *lipc_program_new(lipc_graph *g, lipc_entry entry)
{
    lipc_program *p = lipc_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->g = g;
    p->entry = entry;
    p->train = g->train;
    return p;
}

void lipc_program_free(lipc_program *p)
{
    if (!p)
        return;
    lipc_free(p->steps);
    lipc_free(p->bounds);
    lipc_free(p->act_offset);
    lipc_free(p->grad_offset);
    lipc_free(p);
}

static bool grow(void **items, int n, int *cap, size_t elem)
{
    if (n < *cap)
        return true;
    int new_cap = *cap ? *cap * 2 : 32;
    void *q = lipc_realloc(*items, (size_t)new_cap * elem);
    if (!q)
        return false;
    *items = q;
    *cap = new_cap;
    return true;
}

bool lipc_program_add_step(lipc_program *p, lipc_step s)
{
    if (!grow((void **)&p->steps, p->n_steps, &p->cap_steps, sizeof s))
        return false;
    p->steps[p->n_steps++] = s;
    return true;
}

int lipc_program_add_bound(lipc_program *p, lipc_bound b)
{
    if (!grow((void **)&p->bounds, p->n_bounds, &p->cap_bounds, sizeof b))
        return -1;
    p->bounds[p->n_bounds] = b;
    return p->n_bounds++;
}

void lipc_program_print(const lipc_program *p, lipc_buf *out)
{
    static const char *const entries[] = {"forward", "train", "lipschitz"};
    lipc_buf_printf(out, "program %s of %s: %d steps, %d bound factors, %zu state elements\n",
                    entries[p->entry], p->g->name ? p->g->name : "?", p->n_steps, p->n_bounds,
                    p->n_vec_elems);
    for (int i = 0; i < p->n_bounds; i++) {
        const lipc_bound *b = &p->bounds[i];
        lipc_buf_printf(out, "  bound %-3d %-7s %-32s", i, lipc_lip_kind_names[b->kind],
                        b->node && b->node->name ? b->node->name : "?");
        if (b->parent >= 0)
            lipc_buf_printf(out, " in loose %d", b->parent);
        if (b->kind == LIPC_LIP_OPNORM)
            lipc_buf_printf(out, " v[%zu] u[%zu]", b->v_len, b->u_len);
        if (b->kind == LIPC_LIP_CONST)
            lipc_buf_printf(out, " = %g", b->value);
        lipc_buf_putc(out, '\n');
    }
    for (int i = 0; i < p->n_steps; i++) {
        const lipc_step *s = &p->steps[i];
        lipc_buf_printf(out, "  %4d %-10s", i, lipc_step_names[s->op]);
        if (s->node)
            lipc_buf_printf(out, " %%%d %s %s", s->node->id, lipc_op_info(s->node->op)->name,
                            s->node->name ? s->node->name : "");
        if (s->op == LIPC_STEP_POWER_ITER || s->op == LIPC_STEP_SIGMA_GRAD)
            lipc_buf_printf(out, " bound %d (%s)", s->bound,
                            p->bounds[s->bound].node->name ? p->bounds[s->bound].node->name : "?");
        if (s->op == LIPC_STEP_BACKWARD) {
            lipc_buf_puts(out, " d(");
            for (int k = 0; k < s->node->n_in; k++)
                lipc_buf_printf(out, "%s%%%d%s", k ? ", " : "", s->node->in[k]->id,
                                s->need_din[k] ? "" : " skipped");
            lipc_buf_printf(out, ")%s", s->node->n_param ? " + params" : "");
        }
        if (p->act_offset && s->op == LIPC_STEP_FORWARD)
            lipc_buf_printf(out, "  @act %zu", p->act_offset[s->node->id]);
        lipc_buf_putc(out, '\n');
    }
    if (p->act_offset)
        lipc_buf_printf(out, "arena: %zu values per example\n", p->arena_per_example);
}
