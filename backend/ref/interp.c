/* backend/ref/interp.c: the reference interpreter, lipc's numeric oracle.
 *
 * It walks the graph in program order and calls each op's ref_forward (the
 * per-op math lives in ir/ops/<op>.c, not here). Every node gets its own
 * buffer of n_batch * numel(shape) doubles, freed right after the node that
 * reads it last, so peak memory is the live set, not the whole graph.
 *
 * Parameter rule (ir/ops/README.md): an op's ref_forward gets a pointer to its
 * FIRST parameter in the block; its bias, when it has one, follows the weight
 * immediately. lipc_ref_node_params resolves the pointer and checks that rule.
 *
 * lipc_ref_forward_backward is the reference for training: it keeps every
 * activation, then walks the program backwards calling each op's ref_backward,
 * which ADDS into one zeroed gradient buffer per node. Accumulating is what
 * makes fan-out right: a value read by two nodes (a residual's skip) receives
 * both contributions, and since every reader comes later in program order its
 * gradient is complete by the time the walk reaches it.
 *
 * lipc_ref_init_params draws initial weights; it is the reference for what the
 * init rules mean, and what the runtime's initialiser must reproduce.
 */
#include "backend/backend.h"

#include <limits.h>
#include <math.h>
#include <string.h>

const double *lipc_ref_node_params(const lipc_graph *g, const lipc_node *n,
                                   const double *params)
{
    if (n->n_param == 0)
        return NULL;
    LIPC_ASSERT(params != NULL);
    for (int k = 1; k < n->n_param; k++) {
        const lipc_param *prev = &g->params[n->param[k - 1]];
        LIPC_ASSERT(g->params[n->param[k]].offset == prev->offset + prev->numel);
    }
    return params + g->params[n->param[0]].offset;
}

lipc_status lipc_ref_node_forward(const lipc_graph *g, const lipc_node *n,
                                  const double *params, int n_batch,
                                  const double *const *in, double *out)
{
    const lipc_op_desc *desc = lipc_op_info(n->op);
    if (!desc->ref_forward)
        return LIPC_ERR_UNSUPPORTED;
    desc->ref_forward(n, n_batch, in, out, lipc_ref_node_params(g, n, params));
    return LIPC_OK;
}

lipc_status lipc_ref_forward(const lipc_graph *g, const double *params, int n_batch,
                             const double *x, double *logits, lipc_diags *d)
{
    LIPC_ASSERT(g->shapes_known && g->input && g->output && n_batch >= 0);
    int n_ids = g->next_id;
    lipc_status st = LIPC_OK;
    const double **val = lipc_calloc((size_t)n_ids, sizeof *val); /* by node id */
    double **owned = lipc_calloc((size_t)n_ids, sizeof *owned);  /* to free */
    int *last_use = lipc_malloc((size_t)n_ids * sizeof *last_use);
    if (!val || !owned || !last_use) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }

    /* last_use[id]: position of the last node reading it; the output lives on. */
    for (int i = 0; i < n_ids; i++)
        last_use[i] = -1;
    int pos = 0;
    for (const lipc_node *n = g->first; n; n = n->next, pos++)
        for (int k = 0; k < n->n_in; k++)
            last_use[n->in[k]->id] = pos;
    last_use[g->output->id] = INT_MAX;

    pos = 0;
    for (const lipc_node *n = g->first; n; n = n->next, pos++) {
        if (n->op == LIPC_OP_INPUT) {
            LIPC_ASSERT(n == g->input);
            val[n->id] = x;
            continue;
        }
        const lipc_op_desc *desc = lipc_op_info(n->op);
        if (!desc->ref_forward) {
            if (d)
                lipc_diag_error(d, n->loc, "the reference backend has no kernel for "
                                "op `%s`", desc->name);
            st = LIPC_ERR_UNSUPPORTED;
            goto done;
        }
        size_t count = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
        owned[n->id] = lipc_malloc((count ? count : 1) * sizeof(double));
        if (!owned[n->id]) {
            if (d)
                lipc_diag_error(d, LIPC_NO_LOC, "out of memory: the reference "
                                "interpreter needs %zu bytes for node %s",
                                count * sizeof(double), n->name ? n->name : "?");
            st = LIPC_ERR_NOMEM;
            goto done;
        }
        const double *in[LIPC_MAX_INPUTS] = {NULL};
        for (int k = 0; k < n->n_in; k++) {
            in[k] = val[n->in[k]->id];
            LIPC_ASSERT(in[k] != NULL); /* program order is topological */
        }
        desc->ref_forward(n, n_batch, in, owned[n->id],
                          lipc_ref_node_params(g, n, params));
        val[n->id] = owned[n->id];
        /* Free what nobody reads any more (a node read twice is freed once). */
        for (int k = 0; k < n->n_in; k++) {
            int id = n->in[k]->id;
            if (last_use[id] == pos && owned[id]) {
                lipc_free(owned[id]);
                owned[id] = NULL;
                val[id] = NULL;
            }
        }
        if (last_use[n->id] < 0) { /* dead value: computed, never read */
            lipc_free(owned[n->id]);
            owned[n->id] = NULL;
            val[n->id] = NULL;
        }
    }
    LIPC_ASSERT(val[g->output->id] != NULL);
    memcpy(logits, val[g->output->id],
           (size_t)n_batch * (size_t)lipc_shape_numel(g->output->shape) * sizeof *logits);

done:
    if (owned)
        for (int i = 0; i < n_ids; i++)
            lipc_free(owned[i]);
    lipc_free(owned);
    lipc_free(val);
    lipc_free(last_use);
    return st;
}

/* ---- forward and backward --------------------------------------------------- */

static lipc_status no_kernel(lipc_diags *d, const lipc_node *n, const char *what)
{
    if (d)
        lipc_diag_error(d, n->loc, "the reference backend has no %s for op `%s`", what,
                        lipc_op_info(n->op)->name);
    return LIPC_ERR_UNSUPPORTED;
}

/* A zeroed buffer of n_batch * numel(n->shape) doubles, or NULL with an error. */
static double *node_buffer(const lipc_node *n, int n_batch, lipc_diags *d)
{
    size_t count = (size_t)n_batch * (size_t)lipc_shape_numel(n->shape);
    double *p = lipc_calloc(count ? count : 1, sizeof *p);
    if (!p && d)
        lipc_diag_error(d, LIPC_NO_LOC, "out of memory: the reference interpreter "
                        "needs %zu bytes for node %s", count * sizeof *p,
                        n->name ? n->name : "?");
    return p;
}

lipc_status lipc_ref_forward_backward(const lipc_graph *g, const double *params,
                                      int n_batch, const double *x, const double *dlogits,
                                      double *logits, double *dparams, double *dx,
                                      lipc_diags *d)
{
    LIPC_ASSERT(g->shapes_known && g->input && g->output && n_batch >= 0);
    int n_ids = g->next_id, in_id = g->input->id;
    size_t in_count = (size_t)n_batch * (size_t)lipc_shape_numel(g->input->shape);
    size_t out_count = (size_t)n_batch * (size_t)lipc_shape_numel(g->output->shape);
    if (dparams)
        memset(dparams, 0, g->n_param_elems * sizeof *dparams);
    if (dx)
        memset(dx, 0, in_count * sizeof *dx);

    lipc_status st = LIPC_OK;
    /* By node id. act/grad of the input are the caller's x/dx, never freed. */
    const double **val = lipc_calloc((size_t)n_ids, sizeof *val);
    double **act = lipc_calloc((size_t)n_ids, sizeof *act);
    double **grad = lipc_calloc((size_t)n_ids, sizeof *grad);
    bool *needs = lipc_calloc((size_t)n_ids, sizeof *needs);
    if (!val || !act || !grad || !needs) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }

    /* Forward, keeping every activation. */
    for (const lipc_node *n = g->first; n; n = n->next) {
        if (n->op == LIPC_OP_INPUT) {
            LIPC_ASSERT(n == g->input);
            val[n->id] = x;
            continue;
        }
        const lipc_op_desc *desc = lipc_op_info(n->op);
        if (!desc->ref_forward) {
            st = no_kernel(d, n, "kernel");
            goto done;
        }
        if (!(act[n->id] = node_buffer(n, n_batch, d))) {
            st = LIPC_ERR_NOMEM;
            goto done;
        }
        const double *in[LIPC_MAX_INPUTS] = {NULL};
        for (int k = 0; k < n->n_in; k++) {
            in[k] = val[n->in[k]->id];
            LIPC_ASSERT(in[k] != NULL); /* program order is topological */
        }
        desc->ref_forward(n, n_batch, in, act[n->id], lipc_ref_node_params(g, n, params));
        val[n->id] = act[n->id];
    }
    LIPC_ASSERT(val[g->output->id] != NULL);
    if (logits)
        memcpy(logits, val[g->output->id], out_count * sizeof *logits);
    if (!dlogits)
        goto done;

    /* Which nodes need a gradient: those through which a requested one flows,
     * i.e. that own parameters (when dparams is wanted), are the input (when dx
     * is wanted), or read such a node. Program order settles it in one sweep. */
    for (const lipc_node *n = g->first; n; n = n->next) {
        bool need = n->op == LIPC_OP_INPUT ? dx != NULL : dparams && n->n_param > 0;
        for (int k = 0; k < n->n_in; k++)
            need = need || needs[n->in[k]->id];
        needs[n->id] = need;
        if (!need)
            continue;
        if (n->op == LIPC_OP_INPUT)
            grad[n->id] = dx;
        else if (!(grad[n->id] = node_buffer(n, n_batch, d))) {
            st = LIPC_ERR_NOMEM;
            goto done;
        }
    }
    if (!needs[g->output->id])
        goto done; /* nothing requested depends on the logits */
    for (size_t i = 0; i < out_count; i++)
        grad[g->output->id][i] += dlogits[i];

    /* Backward in reverse program order: every reader of n comes after n, so
     * grad[n] is complete when the walk reaches n. */
    for (const lipc_node *n = g->last; n; n = n->prev) {
        if (!needs[n->id] || n->op == LIPC_OP_INPUT)
            continue;
        const lipc_op_desc *desc = lipc_op_info(n->op);
        if (!desc->ref_backward) {
            st = no_kernel(d, n, "backward kernel");
            goto done;
        }
        const double *in[LIPC_MAX_INPUTS] = {NULL};
        double *din[LIPC_MAX_INPUTS] = {NULL};
        for (int k = 0; k < n->n_in; k++) {
            in[k] = val[n->in[k]->id];
            din[k] = needs[n->in[k]->id] ? grad[n->in[k]->id] : NULL;
        }
        /* The gradient block mirrors the parameter block: same offsets. */
        double *dp = dparams && n->n_param > 0 ? dparams + g->params[n->param[0]].offset
                                               : NULL;
        desc->ref_backward(n, n_batch, in, act[n->id], grad[n->id], din,
                           lipc_ref_node_params(g, n, params), dp);
        lipc_free(grad[n->id]); /* consumed: nothing reads it again */
        grad[n->id] = NULL;
    }

done:
    for (int i = 0; i < n_ids; i++) {
        if (act)
            lipc_free(act[i]);
        if (grad && i != in_id)
            lipc_free(grad[i]);
    }
    lipc_free(val);
    lipc_free(act);
    lipc_free(grad);
    lipc_free(needs);
    return st;
}

/* ---- parameter initialisation --------------------------------------------- */

/* The runtime's initialiser (runtime/init.c) on the graph's parameters. */
void lipc_ref_init_params(const lipc_graph *g, uint64_t seed, double *params)
{
    for (int i = 0; i < g->n_params; i++) {
        lipc_param_desc pd;
        lipc_describe_param(g, &g->params[i], &pd);
        lipc_init_param(&pd, seed, params + pd.offset);
    }
}
