/* ir/verify.c: the IR verifier, run after every pass (always in tests).
 *
 * It checks the structural invariants the passes rely on: the node list is a
 * well-formed doubly linked list in topological order, ids are unique, arities
 * match the op table, parameters and residual records point back at live
 * nodes, and shapes are complete once infer-shapes has run. A violation is a
 * compiler bug, not a user error, so each is reported as "internal error after
 * pass 'X'" at the node's YAML location, to say which pass broke the graph.
 *
 * Key idea: one table indexed by node id (ids are below g->next_id and never
 * reused) maps each live node to its position in program order, so "input
 * comes earlier" and "is live" are O(1) and the whole check is O(n).
 */
#include "ir/ir.h"

#include <stdarg.h>
#include <stdio.h>

typedef struct live_entry {
    const lipc_node *node;   /* the live node with this id, NULL if none */
    int pos;                 /* its position in program order */
} live_entry;

typedef struct verifier {
    const lipc_graph *g;
    const char *pass;
    lipc_diags *d;
    bool ok;
    live_entry *live;        /* [g->next_id] */
} verifier;

static void report(verifier *v, lipc_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report(verifier *v, lipc_loc loc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->ok = false;
    if (v->d)
        lipc_diag_error(v->d, loc, "internal error after pass '%s': %s", v->pass, msg);
}

static const char *node_name(const lipc_node *n)
{
    return n->name ? n->name : "(unnamed)";
}

/* The live node that p points at, or NULL when p is not in the list. */
static const lipc_node *live_node(const verifier *v, const lipc_node *p)
{
    if (!p || p->id < 0 || p->id >= v->g->next_id)
        return NULL;
    return v->live[p->id].node == p ? p : NULL;
}

/* Walks the list once: links, ids, and the id -> position table. Returns false
 * when the list itself is broken (a cycle, an id out of range), in which case
 * the later checks, which walk the list again, are skipped. */
static bool check_list(verifier *v)
{
    const lipc_graph *g = v->g;
    const lipc_node *prev = NULL;
    int pos = 0;
    if (g->first && g->first->prev) {
        report(v, g->first->loc, "the first node %%%d has a predecessor", g->first->id);
        return false;
    }
    for (const lipc_node *n = g->first; n; prev = n, n = n->next, pos++) {
        /* n distinct ids below next_id: a longer walk must have looped */
        if (pos >= g->next_id) {
            report(v, n->loc, "the node list is longer than the %d ids handed out "
                              "(a cycle?)", g->next_id);
            return false;
        }
        if (n->prev != prev) {
            report(v, n->loc, "node %%%d (%s): its prev link does not point at the "
                              "node before it", n->id, node_name(n));
            return false;
        }
        if (n->id < 0 || n->id >= g->next_id) {
            report(v, n->loc, "node %s has id %d, outside [0, %d)", node_name(n),
                   n->id, g->next_id);
            return false;
        }
        if (v->live[n->id].node) {
            report(v, n->loc, "id %%%d is used twice (%s and %s)", n->id,
                   node_name(v->live[n->id].node), node_name(n));
            return false;
        }
        v->live[n->id].node = n;
        v->live[n->id].pos = pos;
    }
    if (g->last != prev) {
        report(v, g->last ? g->last->loc : LIPC_NO_LOC,
               "the graph's last pointer is not the tail of the node list");
        return false;
    }
    return true;
}

/* One node's own invariants: op, arity, topological inputs, parameters,
 * residual links and (after infer-shapes) its shape. Reports every problem it
 * sees rather than the first, so one run names all the damage a pass did. */
static void check_node(verifier *v, const lipc_node *n, int *n_inputs)
{
    const lipc_graph *g = v->g;
    if ((int)n->op < 0 || (int)n->op >= LIPC_OP_COUNT) {
        report(v, n->loc, "node %%%d (%s) has an unknown op %d", n->id, node_name(n),
               (int)n->op);
        return;
    }
    const lipc_op_desc *desc = lipc_op_info(n->op);
    if (n->op == LIPC_OP_INPUT) {
        ++*n_inputs;
        if (g->input != n)
            report(v, n->loc, "input node %%%d (%s) is not the graph's input", n->id,
                   node_name(n));
    }
    if (n->n_in != desc->n_inputs || n->n_in < 0 || n->n_in > LIPC_MAX_INPUTS) {
        report(v, n->loc, "%s node %%%d (%s) has %d inputs, expected %d", desc->name,
               n->id, node_name(n), n->n_in, desc->n_inputs);
    } else {
        int pos = v->live[n->id].pos;
        for (int i = 0; i < n->n_in; i++) {
            const lipc_node *in = live_node(v, n->in[i]);
            if (!n->in[i])
                report(v, n->loc, "input %d of %%%d (%s) is NULL", i, n->id, node_name(n));
            else if (!in)
                report(v, n->loc, "input %d of %%%d (%s) is %%%d, which is not in the "
                                  "graph", i, n->id, node_name(n), n->in[i]->id);
            else if (v->live[in->id].pos >= pos)
                report(v, n->loc, "input %d of %%%d (%s) is %%%d, which does not come "
                                  "before it", i, n->id, node_name(n), in->id);
        }
    }

    if (n->n_param < 0 || n->n_param > LIPC_MAX_NODE_PARAMS) {
        report(v, n->loc, "node %%%d (%s) has %d parameters", n->id, node_name(n),
               n->n_param);
    } else {
        for (int i = 0; i < n->n_param; i++) {
            int idx = n->param[i];
            if (idx < 0 || idx >= g->n_params)
                report(v, n->loc, "parameter %d of %%%d (%s) has index %d, outside "
                                  "[0, %d)", i, n->id, node_name(n), idx, g->n_params);
            else if (g->params[idx].owner != n)
                report(v, n->loc, "parameter %s of %%%d (%s) belongs to another node",
                       g->params[idx].name ? g->params[idx].name : "?", n->id,
                       node_name(n));
        }
    }

    /* the residual pointers must name records of this graph */
    const lipc_residual *rs[2] = {n->closes, n->scope};
    for (int i = 0; i < 2; i++) {
        const lipc_residual *r = rs[i];
        if (r && (r->id < 0 || r->id >= g->n_res || g->res[r->id] != r))
            report(v, n->loc, "node %%%d (%s) points at a residual that is not in "
                              "the graph", n->id, node_name(n));
    }
    if (n->closes && n->closes->state != LIPC_RES_FOLDED &&
        (n->op != LIPC_OP_ADD || n->closes->add != n))
        report(v, n->loc, "node %%%d (%s) closes residual %s, which is joined "
                          "elsewhere", n->id, node_name(n),
               n->closes->name ? n->closes->name : "?");

    if (g->shapes_known) {
        const lipc_shape *s = &n->shape;
        bool bad = s->rank != 1 && s->rank != 3;
        for (int i = 0; !bad && i < s->rank; i++)
            bad = s->d[i] <= 0;
        if (bad) {
            char sb[48];
            report(v, n->loc, "node %%%d (%s) has shape %s after infer-shapes", n->id,
                   node_name(n), s->rank >= 0 && s->rank <= 3 ? lipc_shape_str(*s, sb)
                                                              : "(bad rank)");
        }
    }
}

/* A residual's join must be live and agree with its state: fold-residual
 * turns the ADD into the body's linear op with fold_identity set, and an
 * unfolded one keeps an ADD that points back at the record. */
static void check_residuals(verifier *v)
{
    const lipc_graph *g = v->g;
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        if (!r) {
            report(v, LIPC_NO_LOC, "residual record %d is NULL", i);
            continue;
        }
        const char *name = r->name ? r->name : "?";
        const lipc_node *add = live_node(v, r->add);
        if (r->id != i)
            report(v, r->loc, "residual %s has id %d at index %d", name, r->id, i);
        if (!add) {
            report(v, r->loc, "residual %s is joined at a node that is not in the "
                              "graph", name);
            continue;
        }
        switch (r->state) {
        case LIPC_RES_FOLDED:
            if ((add->op != LIPC_OP_CONV2D && add->op != LIPC_OP_DENSE) ||
                !add->a.fold_identity)
                report(v, r->loc, "folded residual %s became %%%d, which is not a "
                                  "conv2d or dense with fold_identity", name, add->id);
            break;
        case LIPC_RES_OPEN:
        case LIPC_RES_KEPT:
            if (add->op != LIPC_OP_ADD || add->closes != r)
                report(v, r->loc, "residual %s is joined at %%%d, which is not an add "
                                  "closing it", name, add->id);
            break;
        default:
            report(v, r->loc, "residual %s has an unknown state %d", name, (int)r->state);
        }
    }
}

/* Parameters sit in one block in declaration order: each slice starts where
 * the previous one ends, and its size is the product of its dimensions. */
static void check_params(verifier *v)
{
    const lipc_graph *g = v->g;
    size_t offset = 0;
    for (int i = 0; i < g->n_params; i++) {
        const lipc_param *p = &g->params[i];
        const char *name = p->name ? p->name : "?";
        lipc_loc loc = p->owner ? p->owner->loc : LIPC_NO_LOC;
        size_t numel = 1;
        bool rank_ok = p->rank >= 1 && p->rank <= 4;
        for (int k = 0; rank_ok && k < p->rank; k++)
            numel *= p->d[k] > 0 ? (size_t)p->d[k] : 0;
        if (!rank_ok || numel != p->numel || numel == 0)
            report(v, loc, "parameter %s: rank %d and %zu elements do not match its "
                           "dimensions", name, p->rank, p->numel);
        if (p->offset != offset)
            report(v, loc, "parameter %s starts at %zu, expected %zu", name, p->offset,
                   offset);
        if (!p->owner)
            report(v, loc, "parameter %s has no owner", name);
        offset = p->offset + p->numel;
    }
    if (g->n_param_elems != offset)
        report(v, LIPC_NO_LOC, "the parameter block holds %zu elements, its tensors %zu",
               g->n_param_elems, offset);
}

bool lipc_graph_verify(const lipc_graph *g, const char *after_pass, lipc_diags *d)
{
    verifier v = {g, after_pass ? after_pass : "?", d, true, NULL};
    if (g->next_id < 0) {
        report(&v, LIPC_NO_LOC, "negative id counter %d", g->next_id);
        return false;
    }
    v.live = lipc_calloc(g->next_id > 0 ? (size_t)g->next_id : 1, sizeof *v.live);
    if (!v.live) {
        /* Out of memory is not a broken invariant: say nothing, and let the
         * caller's own allocations report it (the graph is not checked). */
        return true;
    }
    if (check_list(&v)) {
        int n_inputs = 0;
        for (const lipc_node *n = g->first; n; n = n->next)
            check_node(&v, n, &n_inputs);
        if (n_inputs != 1)
            report(&v, g->first ? g->first->loc : LIPC_NO_LOC,
                   "the graph has %d input nodes, expected exactly one", n_inputs);
        if (!g->input)
            report(&v, LIPC_NO_LOC, "the graph has no input");
        else if (!live_node(&v, g->input))
            report(&v, g->input->loc, "the graph's input %%%d is not in the node list",
                   g->input->id);
        if (!g->output)
            report(&v, LIPC_NO_LOC, "the graph has no output");
        else if (!live_node(&v, g->output))
            report(&v, g->output->loc, "the graph's output %%%d is not in the node "
                                       "list", g->output->id);
        check_residuals(&v);
    }
    check_params(&v);
    lipc_free(v.live);
    return v.ok;
}
