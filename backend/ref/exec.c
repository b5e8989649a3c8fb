/* backend/ref/exec.c: the reference backend's entry points, by interpreting a
 * program (ir/ir.h "programs") step by step in double precision.
 *
 * State between steps (parameters, optimiser moments, power-iteration vectors)
 * is float, as every backend keeps it and checkpoints store it; each entry
 * point widens what it reads to double, computes in double and rounds what it
 * writes back. Activations and gradients live in one arena laid out by
 * plan-memory, batch-major: value v of example b is at
 *   arena + offset(v) * n_batch + b * numel(v)
 * so each value is one contiguous [n_batch, numel] block, as the op kernels
 * expect.
 *
 * Precision: each kernel computes in double. With p->dtype == LIPC_DTYPE_F32
 * every value a step stores (activations, gradients, power-iteration vectors,
 * parameter gradients) is rounded to float right after the step, so the
 * program runs on float tensors as the fast backends do, while each kernel's
 * own arithmetic stays exact enough to be the oracle. Certification
 * (lipc_ref_predict_bounded) always runs in double: its error analysis is for
 * double arithmetic.
 */
#include "backend/backend.h"

#include <math.h>
#include <string.h>

typedef struct exec {
    const lipc_program *p;
    const lipc_graph *g;
    int n;                      /* batch */
    double *arena;              /* [arena_per_example * n] */
    double *params, *grads;     /* [n_param_elems] */
    double *vec;                /* [n_vec_elems]: v and u of each bound */
    double *sigma;              /* [n_bounds]: value of each factor */
    double *dk;                 /* [n_bounds]: dK_sub / d value */
    double k_sub;
    double dl_dk;               /* dL / dK_sub from the loss */
} exec;

static double *act(const exec *e, const lipc_node *n)
{
    return e->arena + e->p->act_offset[n->id] * (size_t)e->n;
}

static double *grad(const exec *e, const lipc_node *n)
{
    LIPC_ASSERT(e->p->grad_offset[n->id] != (size_t)-1);
    return e->arena + e->p->grad_offset[n->id] * (size_t)e->n;
}

static size_t numel(const lipc_node *n) { return (size_t)lipc_shape_numel(n->shape); }

static void exec_free(exec *e)
{
    lipc_free(e->arena);
    lipc_free(e->params);
    lipc_free(e->grads);
    lipc_free(e->vec);
    lipc_free(e->sigma);
    lipc_free(e->dk);
}

/* n_grads: the length of the gradient (the training vector, st->n_train);
 * 0 for none. */
static lipc_status exec_init(exec *e, const lipc_program *p, int n, const float *params,
                             const float *vec, size_t n_grads)
{
    memset(e, 0, sizeof *e);
    e->p = p;
    e->g = p->g;
    e->n = n;
    size_t np = e->g->n_param_elems;
    e->arena = lipc_malloc(sizeof(double) * (p->arena_per_example * (size_t)n + 1));
    e->params = lipc_malloc(sizeof(double) * (np + 1));
    e->grads = n_grads ? lipc_calloc((n_grads > np ? n_grads : np) + 1, sizeof(double)) : NULL;
    e->vec = lipc_calloc(p->n_vec_elems + 1, sizeof(double));
    e->sigma = lipc_calloc((size_t)p->n_bounds + 1, sizeof(double));
    e->dk = lipc_calloc((size_t)p->n_bounds + 1, sizeof(double));
    if (!e->arena || !e->params || (n_grads && !e->grads) || !e->vec || !e->sigma || !e->dk) {
        exec_free(e);
        return LIPC_ERR_NOMEM;
    }
    for (size_t i = 0; i < np; i++)
        e->params[i] = params[i];
    if (vec)
        for (size_t i = 0; i < p->n_vec_elems; i++)
            e->vec[i] = vec[i];
    return LIPC_OK;
}

static const double *node_params(const exec *e, const lipc_node *n)
{
    return n->n_param ? e->params + e->g->params[n->param[0]].offset : NULL;
}

static double *node_grads(const exec *e, const lipc_node *n)
{
    return n->n_param && e->grads ? e->grads + e->g->params[n->param[0]].offset : NULL;
}

/* Rounds a stored block to float when the program runs in float. */
static void store(const exec *e, double *v, size_t len)
{
    if (e->p->dtype != LIPC_DTYPE_F32 || !v)
        return;
    for (size_t i = 0; i < len; i++)
        v[i] = (float)v[i];
}

static size_t node_param_numel(const exec *e, const lipc_node *n)
{
    size_t total = 0;
    for (int i = 0; i < n->n_param; i++)
        total += e->g->params[n->param[i]].numel;
    return total;
}

static void run_forward(exec *e, const lipc_node *n)
{
    const double *in[LIPC_MAX_INPUTS];
    for (int i = 0; i < n->n_in; i++)
        in[i] = act(e, n->in[i]);
    lipc_op_info(n->op)->ref_forward(n, e->n, in, act(e, n), node_params(e, n));
    store(e, act(e, n), numel(n) * (size_t)e->n);
}

static void run_backward(exec *e, const lipc_step *s)
{
    const lipc_node *n = s->node;
    const double *in[LIPC_MAX_INPUTS];
    double *din[LIPC_MAX_INPUTS] = {NULL, NULL};
    for (int i = 0; i < n->n_in; i++) {
        in[i] = act(e, n->in[i]);
        if (s->need_din[i]) {
            din[i] = grad(e, n->in[i]);
            if (s->zero_din[i])
                memset(din[i], 0, sizeof(double) * numel(n->in[i]) * (size_t)e->n);
        }
    }
    lipc_op_info(n->op)->ref_backward(n, e->n, in, act(e, n), grad(e, n), din, node_params(e, n),
                                      node_grads(e, n));
    for (int i = 0; i < n->n_in; i++)
        store(e, din[i], din[i] ? numel(n->in[i]) * (size_t)e->n : 0);
    store(e, node_grads(e, n), node_param_numel(e, n));
}

static double norm2(const double *v, size_t len)
{
    double s = 0.0;
    for (size_t i = 0; i < len; i++)
        s += v[i] * v[i];
    return sqrt(s);
}

void lipc_power_iter_rng(int b, lipc_rng *r)
{
    lipc_rng_seed(r, 0x9e3779b97f4a7c15ull ^ (uint64_t)(b + 1));
}

void lipc_power_iter_converge(const lipc_program *p, int max_iters, double tol,
                              lipc_pi_chunk_fn chunk, void *ctx, double *sigma,
                              lipc_bound_report *report)
{
    for (int b = 0; b < p->n_bounds; b++) {
        report[b].iters = 0;
        report[b].change = 0.0;
        sigma[b] = 0.0;
        if (p->bounds[b].kind != LIPC_LIP_OPNORM)
            continue;
        /* chunks of 10 until sigma moves less than tol (relative) */
        double change = 1.0;
        int done = 0;
        while (done < max_iters && change > tol) {
            int n = max_iters - done < 10 ? max_iters - done : 10;
            double before = sigma[b];
            sigma[b] = chunk(ctx, b, n);
            done += n;
            change = sigma[b] > 0.0 ? fabs(sigma[b] - before) / sigma[b] : 0.0;
        }
        report[b].iters = done;
        report[b].change = change;
    }
}

/* Power iteration on A^T A for one operator-norm factor (METHOD.md section 4),
 * warm-started from the persistent v:
 *     v <- A^T A v / ||A^T A v||,   sigma = ||A v||,   u = A v / sigma.
 * Any unit v gives ||A v|| <= sigma_max: the estimate converges from below.
 * A zero v (the first step of a run) starts from a seeded normal draw.
 * Returns the last relative change of sigma (0 when iters == 0). */
static double power_iter(exec *e, int b, int iters, double *scratch)
{
    const lipc_bound *bd = &e->p->bounds[b];
    const lipc_node *n = bd->node;
    const lipc_op_desc *desc = lipc_op_info(n->op);
    const double *w = node_params(e, n);
    double *v = e->vec + bd->v_offset, *u = e->vec + bd->u_offset;
    double nv = norm2(v, bd->v_len);
    if (nv == 0.0 || !isfinite(nv)) {
        lipc_rng r;
        lipc_power_iter_rng(b, &r);
        for (size_t i = 0; i < bd->v_len; i++)
            v[i] = lipc_rng_normal(&r);
        nv = norm2(v, bd->v_len);
    }
    for (size_t i = 0; i < bd->v_len; i++)
        v[i] /= nv;
    double sigma = 0.0, change = 0.0;
    for (int it = 0; it < iters; it++) {
        desc->ref_linear(n, 1, v, u, w, false);
        desc->ref_linear(n, 1, u, scratch, w, true);
        double s = norm2(scratch, bd->v_len);
        if (s == 0.0)
            break; /* A v = 0: v is in the null space; sigma stays from below */
        for (size_t i = 0; i < bd->v_len; i++)
            v[i] = scratch[i] / s;
        store(e, v, bd->v_len);
        /* ||A^T A v|| = sigma^2 at convergence; track sigma for the change */
        double est = sqrt(s);
        change = sigma > 0.0 ? fabs(est - sigma) / est : 1.0;
        sigma = est;
    }
    desc->ref_linear(n, 1, v, u, w, false);
    double s = norm2(u, bd->u_len);
    for (size_t i = 0; i < bd->u_len; i++)
        u[i] = s > 0.0 ? u[i] / s : 0.0;
    store(e, u, bd->u_len);
    e->sigma[b] = s;
    return change;
}

/* K_sub from the factor tree, and dK_sub / d value of every factor. Factors
 * come in program order, so children precede their LOOSE parent: values go
 * up in index order, derivatives come down in reverse. Products of the
 * "others" are formed directly, never by dividing by a factor (which may be 0). */
double lipc_program_eval_bound(const lipc_program *p, double *sigma, double *dk)
{
    int nb = p->n_bounds;
    for (int b = 0; b < nb; b++) {
        const lipc_bound *bd = &p->bounds[b];
        if (bd->kind == LIPC_LIP_CONST)
            sigma[b] = bd->value;
        else if (bd->kind == LIPC_LIP_LOOSE) {
            double prod = 1.0;
            for (int c = 0; c < b; c++)
                if (p->bounds[c].parent == b)
                    prod *= sigma[c];
            sigma[b] = 1.0 + prod;
        }
    }
    double k_sub = 1.0;
    for (int b = 0; b < nb; b++)
        if (p->bounds[b].parent < 0)
            k_sub *= sigma[b];
    for (int b = nb - 1; b >= 0; b--) {
        int parent = p->bounds[b].parent;
        double others = 1.0, up = 1.0;
        for (int c = 0; c < nb; c++)
            if (c != b && p->bounds[c].parent == parent)
                others *= sigma[c];
        if (parent >= 0)
            up = dk[parent]; /* d K / d value(parent); d parent / d child = others */
        dk[b] = up * others;
    }
    return k_sub;
}

static void eval_bound(exec *e)
{
    e->k_sub = lipc_program_eval_bound(e->p, e->sigma, e->dk);
}

/* The head's effective rows: normalised when the head normalises. */
static void head_rows(const exec *e, double *r)
{
    const lipc_node *h = e->p->head;
    int m = h->shape.d[0], d = h->in[0]->shape.d[0];
    const double *w = node_params(e, h);
    if (h->a.normalize)
        lipc_rownorm_forward(m, d, w, r);
    else
        memcpy(r, w, sizeof(double) * (size_t)m * (size_t)d);
}

lipc_status lipc_ref_predict(const lipc_program *p, const float *params, int n, const float *x,
                             double *logits)
{
    exec e;
    lipc_status st = exec_init(&e, p, n, params, NULL, 0);
    if (st != LIPC_OK)
        return st;
    const lipc_graph *g = p->g;
    double *xin = act(&e, g->input);
    for (size_t i = 0; i < numel(g->input) * (size_t)n; i++)
        xin[i] = x[i];
    for (int s = 0; s < p->n_steps; s++)
        if (p->steps[s].op == LIPC_STEP_FORWARD)
            run_forward(&e, p->steps[s].node);
    memcpy(logits, act(&e, g->output), sizeof(double) * numel(g->output) * (size_t)n);
    exec_free(&e);
    return LIPC_OK;
}

/* Logits with a running error analysis (docs/soundness.md): each FORWARD
 * step runs the op's ref_forward and then its ref_error, which bounds how far
 * the double result is from the exact real-number op on the exact inputs,
 * given the inputs' bounds. The bounds live in a second arena laid out by the
 * same memory plan: a node's bound is live exactly when its activation is (the
 * plan never lets a step's output share memory with its inputs), so offsets
 * can be reused as they are. The input is float data widened exactly: e = 0. */
lipc_status lipc_ref_predict_bounded(const lipc_program *p, const float *params, int n,
                                     const float *x, double *logits, double *logit_err)
{
    exec e;
    lipc_status st = exec_init(&e, p, n, params, NULL, 0);
    if (st != LIPC_OK)
        return st;
    double *err = lipc_malloc(sizeof(double) * (p->arena_per_example * (size_t)n + 1));
    if (!err) {
        exec_free(&e);
        return LIPC_ERR_NOMEM;
    }
    const lipc_graph *g = p->g;
    double *xin = act(&e, g->input);
    double *ein = err + p->act_offset[g->input->id] * (size_t)n;
    for (size_t i = 0; i < numel(g->input) * (size_t)n; i++) {
        xin[i] = x[i];
        ein[i] = 0.0;
    }
    for (int s = 0; s < p->n_steps; s++) {
        if (p->steps[s].op != LIPC_STEP_FORWARD)
            continue;
        const lipc_node *nd = p->steps[s].node;
        const lipc_op_desc *desc = lipc_op_info(nd->op);
        LIPC_ASSERT(desc->ref_error);
        const double *in[LIPC_MAX_INPUTS], *in_err[LIPC_MAX_INPUTS];
        for (int i = 0; i < nd->n_in; i++) {
            in[i] = act(&e, nd->in[i]);
            in_err[i] = err + p->act_offset[nd->in[i]->id] * (size_t)n;
        }
        desc->ref_forward(nd, n, in, act(&e, nd), node_params(&e, nd));
        desc->ref_error(nd, n, in, in_err, act(&e, nd), err + p->act_offset[nd->id] * (size_t)n,
                        node_params(&e, nd));
    }
    size_t n_out = numel(g->output) * (size_t)n;
    memcpy(logits, act(&e, g->output), sizeof(double) * n_out);
    memcpy(logit_err, err + p->act_offset[g->output->id] * (size_t)n, sizeof(double) * n_out);
    lipc_free(err);
    exec_free(&e);
    return LIPC_OK;
}

typedef struct ref_chunk_ctx {
    exec *e;
    double *scratch;
} ref_chunk_ctx;

static double ref_chunk(void *ctx, int b, int iters)
{
    ref_chunk_ctx *rc = ctx;
    power_iter(rc->e, b, iters, rc->scratch);
    return rc->e->sigma[b];
}

lipc_status lipc_ref_lipschitz(const lipc_program *p, const float *params, float *vec,
                               int max_iters, double tol, lipc_bound_report *report)
{
    exec e;
    lipc_status st = exec_init(&e, p, 1, params, vec, 0);
    if (st != LIPC_OK)
        return st;
    size_t max_v = 1;
    for (int b = 0; b < p->n_bounds; b++)
        if (p->bounds[b].v_len > max_v)
            max_v = p->bounds[b].v_len;
    double *scratch = lipc_malloc(sizeof(double) * max_v);
    if (!scratch) {
        exec_free(&e);
        return LIPC_ERR_NOMEM;
    }
    ref_chunk_ctx rc = {&e, scratch};
    lipc_power_iter_converge(p, max_iters, tol, ref_chunk, &rc, e.sigma, report);
    eval_bound(&e);
    for (int b = 0; b < p->n_bounds; b++)
        report[b].value = e.sigma[b];
    report[p->n_bounds].value = e.k_sub;
    for (size_t i = 0; i < p->n_vec_elems; i++)
        vec[i] = (float)e.vec[i];
    lipc_free(scratch);
    exec_free(&e);
    return LIPC_OK;
}

/* One training step. With grads_out, it stops before clipping and the
 * update and copies the parameter gradient out in double (gradient checks);
 * otherwise it applies the update to st. */
static lipc_status train_step(const lipc_program *p, lipc_train_state *st, int n,
                              const float *x, const int32_t *y, const lipc_hyper *h,
                              lipc_step_stats *out, double *grads_out)
{
    LIPC_ASSERT(p->entry == LIPC_ENTRY_TRAIN && p->head);
    exec e;
    size_t n_train = lipc_train_len(st, p->g->n_param_elems);
    lipc_status status = exec_init(&e, p, n, st->params, st->vec, n_train);
    if (status != LIPC_OK)
        return status;
    const lipc_graph *g = p->g;
    const lipc_node *head = p->head;
    int m = head->shape.d[0], d = head->in[0]->shape.d[0];
    size_t max_v = 1;
    for (int b = 0; b < p->n_bounds; b++)
        if (p->bounds[b].v_len > max_v)
            max_v = p->bounds[b].v_len;
    double *scratch = lipc_malloc(sizeof(double) * max_v);
    double *r = lipc_malloc(sizeof(double) * (size_t)m * (size_t)d);
    double *dr = lipc_calloc((size_t)m * (size_t)d, sizeof(double));
    if (!scratch || !r || !dr) {
        status = LIPC_ERR_NOMEM;
        goto done;
    }
    memset(out, 0, sizeof *out);
    double *xin = act(&e, g->input);
    for (size_t i = 0; i < numel(g->input) * (size_t)n; i++)
        xin[i] = x[i];

    for (int s = 0; s < p->n_steps && status == LIPC_OK; s++) {
        const lipc_step *stp = &p->steps[s];
        switch (stp->op) {
        case LIPC_STEP_FORWARD:
            run_forward(&e, stp->node);
            break;
        case LIPC_STEP_POWER_ITER:
            power_iter(&e, stp->bound, h->power_iters, scratch);
            break;
        case LIPC_STEP_BOUND:
            eval_bound(&e);
            break;
        case LIPC_STEP_LOSS: {
            head_rows(&e, r);
            lipc_loss_spec spec = {(lipc_loss)h->loss, h->eps, h->trades_lambda};
            lipc_loss_result res;
            status = lipc_ref_loss(&spec, n, m, d, act(&e, g->output), y, e.k_sub, r,
                                   grad(&e, g->output), dr, &res);
            e.dl_dk = res.dk_sub;
            out->loss = res.loss;
            out->correct = res.n_correct;
            out->certified = res.n_certified;
            /* The K_sub path's gradient w.r.t. the head's effective rows,
             * through the normalisation to the raw weight. */
            double *dw = node_grads(&e, head);
            if (head->a.normalize)
                lipc_rownorm_backward(m, d, node_params(&e, head), dr, dw);
            else
                for (size_t i = 0; i < (size_t)m * (size_t)d; i++)
                    dw[i] += dr[i];
            store(&e, grad(&e, g->output), (size_t)n * (size_t)m);
            store(&e, dw, (size_t)m * (size_t)d);
            break;
        }
        case LIPC_STEP_BACKWARD:
            run_backward(&e, stp);
            break;
        case LIPC_STEP_SIGMA_GRAD: {
            const lipc_bound *bd = &p->bounds[stp->bound];
            double scale = e.dl_dk * e.dk[stp->bound];
            if (scale != 0.0)
                lipc_op_info(bd->node->op)
                    ->ref_weight_grad(bd->node, 1, e.vec + bd->v_offset, e.vec + bd->u_offset,
                                      scale, node_grads(&e, bd->node));
            store(&e, node_grads(&e, bd->node), node_param_numel(&e, bd->node));
            break;
        }
        case LIPC_STEP_CLIP:
            if (!grads_out) {
                lipc_scaled_grads(st, NULL, e.grads);
                out->grad_norm = lipc_grad_clip(e.grads, n_train, h->clip);
            }
            break;
        case LIPC_STEP_UPDATE:
            if (!grads_out) {
                lipc_optim_step(h, st, n_train, e.grads);
                lipc_scaled_apply(st->scaled, st->n_scaled, st->params);
            }
            break;
        }
    }
    if (status == LIPC_OK) {
        out->n = n;
        out->k_sub = e.k_sub;
        if (grads_out) {
            memcpy(grads_out, e.grads, sizeof(double) * g->n_param_elems);
        } else {
            /* the update wrote st->params */
            for (size_t i = 0; i < p->n_vec_elems; i++)
                st->vec[i] = (float)e.vec[i];
        }
    }
done:
    lipc_free(scratch);
    lipc_free(r);
    lipc_free(dr);
    exec_free(&e);
    return status;
}

lipc_status lipc_ref_train_step(const lipc_program *p, lipc_train_state *st, int n,
                                const float *x, const int32_t *y, const lipc_hyper *h,
                                lipc_step_stats *out)
{
    return train_step(p, st, n, x, y, h, out, NULL);
}

lipc_status lipc_ref_gradients(const lipc_program *p, lipc_train_state *st, int n,
                               const float *x, const int32_t *y, const lipc_hyper *h,
                               lipc_step_stats *out, double *grads)
{
    return train_step(p, st, n, x, y, h, out, grads);
}
