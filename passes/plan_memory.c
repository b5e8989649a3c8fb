/* passes/plan_memory.c: one arena for all activations and gradients.
 *
 * Every value a program touches (a node's activation, a node's gradient) is
 * live from the step that writes it first to the step that reads it last.
 * Values whose live ranges do not overlap may share memory. Offsets are
 * assigned first-fit in order of first write, which is optimal for interval
 * graphs in the number of overlapping values and close in bytes for the
 * chain-like graphs lipc compiles. Sizes are per example: a backend multiplies
 * by its batch.
 *
 * Reads and writes per step:
 *   FORWARD n      writes act(n), reads act(inputs)
 *   LOSS           reads act(output), writes grad(output)
 *   BACKWARD n     reads act(inputs), act(n), grad(n); writes grad(inputs)
 *                  it needs
 * The graph input's activation is live from the start (the caller fills it).
 */
#include "passes/passes.h"

#include <string.h>

typedef struct value {
    size_t size;
    int first, last;        /* step indices; first = -1: live on entry */
    size_t *offset;         /* where to store the result */
} value;

static void touch(value *v, int step)
{
    if (v->first == -2)
        v->first = step;
    if (step > v->last)
        v->last = step;
}

bool lipc_plan_memory(lipc_program *p)
{
    lipc_graph *g = p->g;
    int n_ids = g->next_id;
    lipc_free(p->act_offset);
    lipc_free(p->grad_offset);
    p->act_offset = lipc_malloc(sizeof(size_t) * (size_t)n_ids);
    p->grad_offset = lipc_malloc(sizeof(size_t) * (size_t)n_ids);
    value *vals = lipc_calloc((size_t)n_ids * 2, sizeof *vals);
    int *order = lipc_malloc(sizeof(int) * (size_t)n_ids * 2);
    if (!p->act_offset || !p->grad_offset || !vals || !order) {
        lipc_free(vals);
        lipc_free(order);
        return false;
    }
    /* vals[2 id] = act(id), vals[2 id + 1] = grad(id) */
    for (int i = 0; i < n_ids; i++) {
        p->act_offset[i] = p->grad_offset[i] = (size_t)-1;
        vals[2 * i] = (value){0, -2, -2, &p->act_offset[i]};
        vals[2 * i + 1] = (value){0, -2, -2, &p->grad_offset[i]};
    }
    for (lipc_node *n = g->first; n; n = n->next) {
        vals[2 * n->id].size = (size_t)lipc_shape_numel(n->shape);
        vals[2 * n->id + 1].size = vals[2 * n->id].size;
    }
    if (g->input)
        touch(&vals[2 * g->input->id], -1);
    int end = p->n_steps;
    for (int s = 0; s < p->n_steps; s++) {
        const lipc_step *st = &p->steps[s];
        lipc_node *n = st->node;
        switch (st->op) {
        case LIPC_STEP_FORWARD:
            for (int i = 0; i < n->n_in; i++)
                touch(&vals[2 * n->in[i]->id], s);
            touch(&vals[2 * n->id], s);
            break;
        case LIPC_STEP_LOSS:
            touch(&vals[2 * g->output->id], s);
            touch(&vals[2 * g->output->id + 1], s);
            break;
        case LIPC_STEP_BACKWARD:
            touch(&vals[2 * n->id], s);
            touch(&vals[2 * n->id + 1], s);
            for (int i = 0; i < n->n_in; i++) {
                touch(&vals[2 * n->in[i]->id], s);
                if (st->need_din[i])
                    touch(&vals[2 * n->in[i]->id + 1], s);
            }
            break;
        default:
            break;
        }
    }
    /* The logits are the result of a forward program: live to the end. */
    if (vals[2 * g->output->id].first != -2)
        touch(&vals[2 * g->output->id], end);

    int n_vals = 0;
    for (int i = 0; i < 2 * n_ids; i++)
        if (vals[i].first != -2 && vals[i].size > 0)
            order[n_vals++] = i;
    /* insertion sort by first use (stable: ids are already in program order) */
    for (int i = 1; i < n_vals; i++) {
        int k = order[i], j = i - 1;
        while (j >= 0 && vals[order[j]].first > vals[k].first) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = k;
    }
    size_t arena = 0;
    for (int i = 0; i < n_vals; i++) {
        value *v = &vals[order[i]];
        /* Lowest offset not overlapping any placed value that is live at the
         * same time: try 0 and the end of every such value. */
        size_t best = (size_t)-1;
        for (int c = -1; c < i; c++) {
            size_t cand = 0;
            if (c >= 0) {
                const value *w = &vals[order[c]];
                if (w->last < v->first || v->last < w->first)
                    continue;
                cand = *w->offset + w->size;
            }
            bool fits = true;
            for (int j = 0; j < i && fits; j++) {
                const value *w = &vals[order[j]];
                if (w->last < v->first || v->last < w->first)
                    continue;
                fits = cand + v->size <= *w->offset || *w->offset + w->size <= cand;
            }
            if (fits && cand < best)
                best = cand;
        }
        *v->offset = best;
        if (best + v->size > arena)
            arena = best + v->size;
    }
    p->arena_per_example = arena;
    lipc_free(vals);
    lipc_free(order);
    return true;
}
