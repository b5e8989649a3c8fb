/* backend/describe.c: from a checked graph to what the runtime runs.
 *
 * The runtime never sees the IR: it gets plain tables (parameters with their
 * init rules, the factors of K_sub with the geometry a sound bound needs, the
 * head) and function pointers for the entry points. This file builds those
 * tables from a graph and its training program, and picks the entry points of
 * the requested target. Today that is the reference backend; the LLVM (cpu)
 * and CUDA targets plug in here.
 */
#include "backend/backend.h"
#include "passes/passes.h"

#include <math.h>
#include <string.h>

void lipc_describe_param(const lipc_graph *g, const lipc_param *p, lipc_param_desc *out)
{
    memset(out, 0, sizeof *out);
    out->name = p->name;
    out->rank = p->rank;
    for (int i = 0; i < p->rank; i++)
        out->d[i] = p->d[i];
    out->offset = p->offset;
    out->numel = p->numel;
    out->init = (int)p->init;
    out->is_bias = p->role == LIPC_PARAM_BIAS;
    size_t rows = p->rank >= 2 ? (size_t)p->d[0] : 1;
    out->fan_in = (int)(p->numel / (rows ? rows : 1));
    out->fan_out = (int)(p->rank >= 2 ? p->numel / (size_t)p->d[1] : p->numel);
    /* liresnet init is scaled by L^-1/2, L = the residual blocks of the model */
    out->init_scale_div = g->n_res;
}

/* With `train: scaled_residuals`, every liresnet-initialised weight is
 * trained as V = s (a * U), s = L^-1/2 (lipc_scaled). */
static bool is_scaled(const lipc_graph *g, const lipc_param *p)
{
    return g->train.scaled_residuals && p->init == LIPC_INIT_LIRESNET &&
           p->role != LIPC_PARAM_BIAS && p->rank >= 2;
}

/* The scaled kernels' table, and the descriptions of their a and U after
 * the model's parameters (params [n_params + 2 n_scaled]), laid out from
 * *n_train (the end of the parameter block) on, which it advances. */
static lipc_status describe_scaled(lipc_graph *g, lipc_param_desc *params, lipc_scaled *out,
                                   size_t *n_train)
{
    int n = 0, at = g->n_params;
    for (int i = 0; i < g->n_params; i++) {
        const lipc_param_desc *v = &params[i];
        if (!is_scaled(g, &g->params[i]))
            continue;
        lipc_scaled *k = &out[n++];
        k->offset = v->offset;
        k->numel = v->numel;
        k->rows = v->d[0];
        k->s = 1.0 / sqrt((double)(v->init_scale_div > 1 ? v->init_scale_div : 1));
        k->gain = *n_train;
        k->base = k->gain + (size_t)k->rows;
        *n_train = k->base + k->numel;
        lipc_param_desc *a = &params[at++], *u = &params[at++];
        *a = (lipc_param_desc){.name = lipc_arena_printf(&g->arena, "scaled.%s.a", v->name),
                               .rank = 1, .d = {k->rows}, .offset = k->gain,
                               .numel = (size_t)k->rows};
        *u = *v;
        u->name = lipc_arena_printf(&g->arena, "scaled.%s.u", v->name);
        u->offset = k->base;
        if (!a->name || !u->name)
            return LIPC_ERR_NOMEM;
    }
    return LIPC_OK;
}

static void describe_factor(const lipc_bound *b, lipc_factor_desc *f, const lipc_graph *g)
{
    const lipc_node *n = b->node;
    memset(f, 0, sizeof *f);
    f->name = n->name;
    f->parent = b->parent;
    f->value = b->value;
    f->method = n->lip.method;
    if (b->kind == LIPC_LIP_CONST) {
        f->kind = LIPC_FACTOR_CONST;
        return;
    }
    if (b->kind == LIPC_LIP_LOOSE) {
        f->kind = LIPC_FACTOR_LOOSE;
        return;
    }
    f->w_offset = g->params[n->param[0]].offset;
    f->fold_identity = n->a.fold_identity;
    f->v_offset = b->v_offset;
    f->v_len = b->v_len;
    f->u_offset = b->u_offset;
    f->u_len = b->u_len;
    lipc_shape in = n->in[0]->shape;
    if (n->op == LIPC_OP_CONV2D) {
        f->kind = LIPC_FACTOR_CONV;
        f->c_in = in.d[0];
        f->h = in.d[1];
        f->w = in.d[2];
        f->c_out = n->shape.d[0];
        f->oh = n->shape.d[1];
        f->ow = n->shape.d[2];
        f->kh = n->a.kernel[0];
        f->kw = n->a.kernel[1];
        f->sh = n->a.stride[0];
        f->sw = n->a.stride[1];
        memcpy(f->pad, n->a.pad, sizeof f->pad);
    } else {
        f->kind = LIPC_FACTOR_DENSE;
        f->c_in = in.d[0];
        f->c_out = n->shape.d[0];
        f->h = f->w = f->oh = f->ow = 1;
        f->kh = f->kw = f->sh = f->sw = 1;
    }
}

/* ---- the reference target ---- */

static lipc_status ref_train_step(void *ctx, lipc_train_state *st, int n, const float *x,
                                  const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    const lipc_compiled *c = ctx;
    return lipc_ref_train_step(c->train, st, n, x, y, h, out);
}

static lipc_status ref_predict(void *ctx, const float *params, int n, const float *x,
                               double *logits)
{
    const lipc_compiled *c = ctx;
    return lipc_ref_predict(c->forward, params, n, x, logits);
}

static lipc_status ref_predict_bounded(void *ctx, const float *params, int n, const float *x,
                                       double *logits, double *logit_err)
{
    const lipc_compiled *c = ctx;
    return lipc_ref_predict_bounded(c->forward, params, n, x, logits, logit_err);
}

static lipc_status ref_input_grad(void *ctx, const float *params, int n, const float *x,
                                  const double *dlogits, double *dx)
{
    const lipc_compiled *c = ctx;
    const lipc_graph *g = c->g;
    size_t np = g->n_param_elems, in = (size_t)lipc_shape_numel(g->input_shape) * (size_t)n;
    double *pd = lipc_malloc(sizeof(double) * (np + 1)), *xd = lipc_malloc(sizeof(double) * in);
    lipc_status st = pd && xd ? LIPC_OK : LIPC_ERR_NOMEM;
    if (st == LIPC_OK) {
        for (size_t i = 0; i < np; i++)
            pd[i] = params[i];
        for (size_t i = 0; i < in; i++)
            xd[i] = x[i];
        st = lipc_ref_forward_backward(g, pd, n, xd, dlogits, NULL, NULL, dx, NULL);
    }
    lipc_free(pd);
    lipc_free(xd);
    return st;
}

static lipc_status ref_lipschitz(void *ctx, const float *params, float *vec, int max_iters,
                                 double tol, lipc_bound_report *report)
{
    const lipc_compiled *c = ctx;
    return lipc_ref_lipschitz(c->train, params, vec, max_iters, tol, report);
}

void lipc_compiled_use_ref(lipc_compiled *c)
{
    c->ops = (lipc_model_ops){
        .backend = c->train->dtype == LIPC_DTYPE_F32 ? "ref-f32" : "ref",
        .ctx = c,
        .train_step = ref_train_step,
        .predict = ref_predict,
        .predict_bounded = ref_predict_bounded,
        .input_grad = ref_input_grad,
        .lipschitz = ref_lipschitz,
    };
}

void lipc_compiled_free(lipc_compiled *c)
{
    if (!c)
        return;
    if (c->backend_free)
        c->backend_free(c->backend);
    lipc_compiled_free(c->host);
    lipc_program_free(c->train);
    lipc_program_free(c->forward);
    lipc_free(c->params);
    lipc_free(c->scaled);
    lipc_free(c->factors);
    lipc_free(c);
}

lipc_status lipc_compile_tables(lipc_graph *g, lipc_dtype dtype, lipc_diags *d,
                                lipc_compiled **out)
{
    *out = NULL;
    lipc_compiled *c = lipc_calloc(1, sizeof *c);
    if (!c)
        return LIPC_ERR_NOMEM;
    c->g = g;
    int errors = d->n_errors;
    c->train = lipc_build_program(g, LIPC_ENTRY_TRAIN, d);
    c->forward = c->train ? lipc_build_program(g, LIPC_ENTRY_FORWARD, d) : NULL;
    if (!c->train || !c->forward) {
        lipc_compiled_free(c);
        return d->n_errors > errors ? LIPC_ERR_INPUT : LIPC_ERR_NOMEM;
    }
    c->train->dtype = c->forward->dtype = dtype;
    const lipc_program *p = c->train;
    int n_scaled = 0;
    for (int i = 0; i < g->n_params; i++)
        n_scaled += is_scaled(g, &g->params[i]);
    c->params = lipc_calloc((size_t)(g->n_params + 2 * n_scaled) + 1, sizeof *c->params);
    c->scaled = lipc_calloc((size_t)n_scaled + 1, sizeof *c->scaled);
    c->factors = lipc_calloc((size_t)p->n_bounds + 1, sizeof *c->factors);
    if (!c->params || !c->scaled || !c->factors) {
        lipc_compiled_free(c);
        return LIPC_ERR_NOMEM;
    }
    for (int i = 0; i < g->n_params; i++)
        lipc_describe_param(g, &g->params[i], &c->params[i]);
    size_t n_train = g->n_param_elems;
    if (describe_scaled(g, c->params, c->scaled, &n_train) != LIPC_OK) {
        lipc_compiled_free(c);
        return LIPC_ERR_NOMEM;
    }
    for (int b = 0; b < p->n_bounds; b++)
        describe_factor(&p->bounds[b], &c->factors[b], g);

    lipc_model_desc *m = &c->desc;
    m->name = g->name;
    m->in_c = g->input_shape.d[0];
    m->in_h = g->input_shape.rank == 3 ? g->input_shape.d[1] : 1;
    m->in_w = g->input_shape.rank == 3 ? g->input_shape.d[2] : 1;
    m->in_lo = g->input_range[0];
    m->in_hi = g->input_range[1];
    m->classes = g->classes;
    m->n_param_elems = g->n_param_elems;
    m->n_params = g->n_params;
    m->params = c->params;
    m->n_state_params = g->n_params + 2 * n_scaled;
    m->n_train_elems = n_train;
    m->n_scaled = n_scaled;
    m->scaled = c->scaled;
    m->n_vec_elems = p->n_vec_elems;
    m->n_factors = p->n_bounds;
    m->factors = c->factors;
    m->head_offset = g->params[p->head->param[0]].offset;
    m->head_in = p->head->in[0]->shape.d[0];
    m->head_normalize = p->head->a.normalize;

    *out = c;
    return LIPC_OK;
}

lipc_status lipc_compile(lipc_graph *g, const char *target, lipc_diags *d, lipc_compiled **out)
{
    *out = NULL;
    bool f32 = strcmp(target, "ref-f32") == 0;
    if (strcmp(target, "ref") != 0 && !f32) {
        static const char *const targets[] = {"ref", "ref-f32", "cpu", "cuda", "cuda-emulator",
                                              NULL};
        bool known = false;
        for (int i = 0; targets[i]; i++)
            known |= strcmp(targets[i], target) == 0;
        lipc_diag_msg *m;
        if (!known) {
            m = lipc_diag_error(d, LIPC_NO_LOC, "unknown target '%s'", target);
            const char *best = lipc_closest_word(target, targets);
            if (best)
                lipc_diag_hint(m, "did you mean '%s'?", best);
            else
                lipc_diag_note(m, LIPC_NO_LOC, "targets: ref, ref-f32, cpu, cuda");
        } else if (strcmp(target, "cuda") == 0 && !LIPC_HAVE_CUDA) {
            m = lipc_diag_error(d, LIPC_NO_LOC,
                                "target 'cuda': this lipc was built without the CUDA toolkit");
            lipc_diag_hint(m, "use --target=ref, or rebuild lipc where the CUDA toolkit is installed");
        } else if (strcmp(target, "cpu") == 0 || strncmp(target, "cuda", 4) == 0) {
            /* lipc_compile_target compiles them */
            m = lipc_diag_error(d, LIPC_NO_LOC, "target '%s' is not linked into this program",
                                target);
            lipc_diag_hint(m, "use --target=ref (the reference interpreter)");
        } else {
            m = lipc_diag_error(d, LIPC_NO_LOC, "target '%s' is not implemented yet", target);
            lipc_diag_hint(m, "use --target=ref (the reference interpreter), or --target=cpu");
        }
        return LIPC_ERR_UNSUPPORTED;
    }
    lipc_status st = lipc_compile_tables(g, f32 ? LIPC_DTYPE_F32 : LIPC_DTYPE_F64, d, out);
    if (st != LIPC_OK)
        return st;
    lipc_compiled_use_ref(*out);
    return LIPC_OK;
}
