/* ir/graph.c: building and editing the IR graph.
 *
 * Nodes form a doubly linked list in program order, which is a topological
 * order: every input of a node comes before it. Everything lives in the graph's
 * arena except the two growable tables (residuals, parameters), which are
 * heap arrays freed with the graph.
 */
#include "ir/ir.h"

#include <math.h>
#include <string.h>

lipc_graph *lipc_graph_new(void)
{
    lipc_graph *g = lipc_calloc(1, sizeof *g);
    if (!g)
        return NULL;
    lipc_arena_init(&g->arena);
    g->input_range[0] = 0.0;
    g->input_range[1] = 1.0;
    lipc_train_spec_defaults(&g->train);
    return g;
}

void lipc_graph_free(lipc_graph *g)
{
    if (!g)
        return;
    lipc_free(g->res);
    lipc_free(g->params);
    lipc_arena_free(&g->arena);
    lipc_free(g);
}

lipc_node *lipc_graph_add_node(lipc_graph *g, lipc_op op, const char *name,
                               lipc_loc loc)
{
    lipc_node *n = lipc_arena_alloc(&g->arena, sizeof *n);
    const char *nm = name ? lipc_arena_strdup(&g->arena, name) : NULL;
    if (!n || (name && !nm)) {
        g->oom = true;
        return NULL;
    }
    n->id = g->next_id++;
    n->op = op;
    n->name = nm;
    n->loc = loc;
    for (int i = 0; i < LIPC_MAX_NODE_PARAMS; i++)
        n->param[i] = -1;
    n->lip.value = NAN;
    n->prev = g->last;
    if (g->last)
        g->last->next = n;
    else
        g->first = n;
    g->last = n;
    return n;
}

/* Grows a heap table to hold one more element; false when out of memory. */
static bool grow(void **items, int n, int *cap, size_t elem)
{
    if (n < *cap)
        return true;
    int new_cap = *cap ? *cap * 2 : 16;
    void *p = lipc_realloc(*items, (size_t)new_cap * elem);
    if (!p)
        return false;
    *items = p;
    *cap = new_cap;
    return true;
}

lipc_residual *lipc_graph_add_residual(lipc_graph *g, const char *name,
                                       lipc_loc loc)
{
    lipc_residual *r = lipc_arena_alloc(&g->arena, sizeof *r);
    const char *nm = name ? lipc_arena_strdup(&g->arena, name) : NULL;
    if (!r || (name && !nm) ||
        !grow((void **)&g->res, g->n_res, &g->cap_res, sizeof *g->res)) {
        g->oom = true;
        return NULL;
    }
    r->id = g->n_res;
    r->name = nm;
    r->loc = loc;
    r->state = LIPC_RES_OPEN;
    g->res[g->n_res++] = r;
    return r;
}

int lipc_graph_add_param(lipc_graph *g, lipc_node *n, lipc_param_role role,
                         int rank, const int *d, lipc_init init)
{
    LIPC_ASSERT(rank >= 1 && rank <= 4);
    LIPC_ASSERT(n->n_param < LIPC_MAX_NODE_PARAMS);
    const char *suffix = role == LIPC_PARAM_WEIGHT ? "weight" : "bias";
    const char *name = lipc_arena_printf(&g->arena, "%s.%s",
                                         n->name ? n->name : "?", suffix);
    if (!name || !grow((void **)&g->params, g->n_params, &g->cap_params,
                       sizeof *g->params)) {
        g->oom = true;
        return -1;
    }
    lipc_param *p = &g->params[g->n_params];
    memset(p, 0, sizeof *p);
    p->name = name;
    p->owner = n;
    p->role = role;
    p->rank = rank;
    p->numel = 1;
    for (int i = 0; i < rank; i++) {
        p->d[i] = d[i];
        p->numel *= (size_t)d[i];
    }
    p->offset = g->n_param_elems;
    p->init = init;
    g->n_param_elems += p->numel;
    return g->n_params++;
}

void lipc_graph_unlink(lipc_graph *g, lipc_node *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        g->first = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        g->last = n->prev;
    n->prev = n->next = NULL;
    if (g->output == n)
        g->output = NULL;
}

void lipc_graph_replace_uses(lipc_graph *g, lipc_node *from, lipc_node *to)
{
    for (lipc_node *n = g->first; n; n = n->next)
        for (int i = 0; i < n->n_in; i++)
            if (n->in[i] == from)
                n->in[i] = to;
    if (g->output == from)
        g->output = to;
}

int lipc_graph_count_uses(const lipc_graph *g, const lipc_node *n)
{
    int uses = g->output == n ? 1 : 0;
    for (const lipc_node *m = g->first; m; m = m->next)
        for (int i = 0; i < m->n_in; i++)
            uses += m->in[i] == n;
    return uses;
}

int lipc_graph_count_nodes(const lipc_graph *g)
{
    int count = 0;
    for (const lipc_node *n = g->first; n; n = n->next)
        count++;
    return count;
}

lipc_node *lipc_graph_find(const lipc_graph *g, const char *name)
{
    for (lipc_node *n = g->first; n; n = n->next)
        if (n->name && strcmp(n->name, name) == 0)
            return n;
    return NULL;
}

/* ---- shapes ----------------------------------------------------------------- */

long lipc_shape_numel(lipc_shape s)
{
    long n = s.rank > 0 ? 1 : 0;
    for (int i = 0; i < s.rank; i++)
        n *= s.d[i];
    return n;
}

bool lipc_shape_eq(lipc_shape a, lipc_shape b)
{
    if (a.rank != b.rank)
        return false;
    for (int i = 0; i < a.rank; i++)
        if (a.d[i] != b.d[i])
            return false;
    return true;
}

const char *lipc_shape_str(lipc_shape s, char buf[48])
{
    if (s.rank == 0) {
        strcpy(buf, "?");
        return buf;
    }
    int k = 0;
    for (int i = 0; i < s.rank; i++)
        k += snprintf(buf + k, (size_t)(48 - k), i ? "x%d" : "%d", s.d[i]);
    return buf;
}

const char *lipc_loc_str(lipc_loc loc, char *buf, size_t size)
{
    if (!loc.file)
        snprintf(buf, size, "?");
    else
        snprintf(buf, size, "%s:%d:%d", loc.file, loc.line, loc.col);
    return buf;
}

/* ---- Lipschitz summary ------------------------------------------------------- */

static bool in_kept_body(const lipc_node *n)
{
    for (const lipc_residual *s = n->scope; s; s = s->parent)
        if (s->state == LIPC_RES_KEPT)
            return true;
    return false;
}

void lipc_lip_summarize(const lipc_graph *g, lipc_lip_summary *s)
{
    *s = (lipc_lip_summary){.k_sub = 1.0};
    for (int i = 0; i < g->n_res; i++) {
        s->n_folded += g->res[i]->state == LIPC_RES_FOLDED;
        s->n_kept += g->res[i]->state == LIPC_RES_KEPT;
    }
    for (const lipc_node *n = g->first; n; n = n->next) {
        if (in_kept_body(n))
            continue;
        switch (n->lip.kind) {
        case LIPC_LIP_HEAD:
            s->head = true;
            continue;
        case LIPC_LIP_ONE: s->n_one++; break;
        case LIPC_LIP_CONST: s->n_const++; break;
        case LIPC_LIP_OPNORM:
            s->n_opnorm++;
            s->n_exact += n->lip.exact;
            break;
        case LIPC_LIP_LOOSE: s->n_loose++; break;
        default: continue;
        }
        s->n_factors++;
        s->k_sub *= n->lip.value;
    }
}

/* ---- the training section ------------------------------------------------ */

const char *const lipc_loss_names[] = {"emma", "margin", "gloro", "trades", NULL};
const char *const lipc_optim_names[] = {"adamw", "sgd", NULL};

void lipc_train_spec_defaults(lipc_train_spec *t)
{
    /* METHOD.md section 6: the recipe measured on Fashion-MNIST. */
    memset(t, 0, sizeof *t);
    t->epochs = 10;
    t->batch = 128;
    t->loss = LIPC_LOSS_EMMA;
    t->eps = 36.0 / 255.0;
    t->eps_start = 0.1;
    t->eps_end = 1.5;
    t->eps_ramp = 0.5;
    t->optimizer = LIPC_OPTIM_ADAMW;
    t->lr = 1e-3;
    t->weight_decay = 1e-4;
    t->momentum = 0.9;
    t->warmup_epochs = 1.0;
    t->clip = 3.0;
    t->power_iters = 10;
    t->augment_crop = false;
    t->crop_pad = 4;
    t->augment_flip = false;
    t->trades_lambda = 1.0;
    t->seed = 1;
}

bool lipc_train_given(const lipc_train_spec *t, const char *key)
{
    for (int k = 0; k < 64 && lipc_train_fields[k].key; k++)
        if (strcmp(lipc_train_fields[k].key, key) == 0)
            return (t->given >> k) & 1;
    return false;
}

#define TF(key, kind, field, minv, names, help) \
    {key, kind, offsetof(lipc_train_spec, field), false, minv, names, help}

const lipc_field lipc_train_fields[] = {
    TF("epochs", LIPC_FIELD_INT, epochs, 1, NULL, "passes over the training set"),
    TF("batch", LIPC_FIELD_INT, batch, 1, NULL, "examples per step"),
    TF("loss", LIPC_FIELD_ENUM, loss, 0, lipc_loss_names,
       "emma | margin | gloro | trades (METHOD.md section 5)"),
    TF("eps", LIPC_FIELD_FLOAT, eps, 0, NULL, "nominal l2 radius"),
    TF("eps_start", LIPC_FIELD_FLOAT, eps_start, 0, NULL,
       "training radius at the start, as a fraction of eps"),
    TF("eps_end", LIPC_FIELD_FLOAT, eps_end, 0, NULL,
       "training radius after the ramp, as a fraction of eps"),
    TF("eps_ramp", LIPC_FIELD_FLOAT, eps_ramp, 0, NULL,
       "fraction of training spent ramping the radius"),
    TF("optimizer", LIPC_FIELD_ENUM, optimizer, 0, lipc_optim_names, "adamw | sgd"),
    TF("lr", LIPC_FIELD_FLOAT, lr, 0, NULL, "peak learning rate"),
    TF("weight_decay", LIPC_FIELD_FLOAT, weight_decay, 0, NULL, "decoupled weight decay"),
    TF("momentum", LIPC_FIELD_FLOAT, momentum, 0, NULL, "SGD Nesterov momentum"),
    TF("warmup_epochs", LIPC_FIELD_FLOAT, warmup_epochs, 0, NULL,
       "linear learning-rate warm-up, then cosine decay"),
    TF("clip", LIPC_FIELD_FLOAT, clip, 0, NULL, "gradient-norm clipping (0: off)"),
    TF("power_iters", LIPC_FIELD_INT, power_iters, 1, NULL,
       "power iterations per training step"),
    TF("crop", LIPC_FIELD_BOOL, augment_crop, 0, NULL, "random crop augmentation"),
    TF("crop_pad", LIPC_FIELD_INT, crop_pad, 0, NULL, "padding of the random crop"),
    TF("flip", LIPC_FIELD_BOOL, augment_flip, 0, NULL, "random horizontal flip"),
    TF("trades_lambda", LIPC_FIELD_FLOAT, trades_lambda, 0, NULL,
       "weight of the TRADES-GloRo robustness term"),
    TF("scaled_residuals", LIPC_FIELD_BOOL, scaled_residuals, 0, NULL,
       "train each liresnet-initialised kernel as V = s (a * U), a per output channel"),
    TF("seed", LIPC_FIELD_INT, seed, 0, NULL, "random seed"),
    {0},
};
