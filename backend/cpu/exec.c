/* backend/cpu/exec.c: the cpu target's entry points: a training or forward
 * program run step by step, each step one or two compiled kernels (emit.c)
 * handed to the runtime's thread pool.
 *
 * The driver mirrors the reference interpreter (backend/ref/exec.c) step for
 * step, in float: activations and gradients live in one float arena laid out
 * by plan-memory (value v of example b at arena + offset(v) * n + b *
 * numel(v)); parameters, moments and power-iteration vectors are the train
 * state's floats. The small serial parts stay in C, in double, shared with
 * the reference: the factor tree (lipc_program_eval_bound), the loss
 * (lipc_ref_loss, on n x classes logits), the head's row normalisation,
 * clipping and the optimiser (backend/optim.c).
 *
 * Threads: kernels over examples split the batch, weight gradients split the
 * output channels; every value has one writer and a fixed summation order, so
 * a step gives the same bits for any thread count. The loss, the norms and
 * the optimiser are serial.
 */
#include "backend/cpu/kernels.h"
#include "ir/ops/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lipc_cpu {
    lipc_kernels k;             /* the compiled kernels */
    const lipc_program *train, *forward;
    const lipc_graph *g;
    lipc_pool *pool;
    float *arena;               /* grown to the largest batch seen */
    size_t arena_cap;
    float *grads;               /* [grads_len]: the training vector's (st->n_train) */
    size_t grads_len;           /* np, or more when a state has scaled kernels */
    bool grads_zero;            /* grads is all zeros (the update clears it) */
    double *norm_part;          /* [lipc_norm_blocks(grads_len)] the gradient norm's block sums */
    float *flipped;             /* [np]: flipped conv weights at their offsets */
    float *zeros, *sink;        /* [max channels]: no bias; bias grads to drop */
    float *vec;                 /* [n_vec_elems] working power-iteration vectors */
    float *scratch;             /* [max v_len] */
    float *head_r, *head_dr;    /* [m * d] effective head rows, their gradient */
    double *r64, *dr64, *dw64, *w64; /* [m * d] */
    double *logits64, *dlogits64; /* grown with the batch */
    size_t logits_cap;
    float *patch_a, *patch_b;   /* patch convs: patches and their gradient */
    /* predict_bounded, in double: values, error bounds, scratch, parameters,
     * |W| and gamma |b|, patches */
    double *x64, *err, *tmp, *p64, *absw, *absb, *zeros64, *patch64;
    size_t err_cap, patch64_cap;
    size_t patch_cap, patch_len; /* floats per example of the largest */
    double *sigma, *dk;         /* [n_bounds] */
    /* LIPC_PROFILE=1: seconds and calls per kernel, printed by lipc_cpu_free */
    bool profile;
    double *prof_s[LIPC_K_KINDS];
    long *prof_n[LIPC_K_KINDS];
    double prof_step_s, prof_pi_s, prof_update_s;
    /* parallel power iteration: per bound, scratch [pi_max_v] and two patch
     * buffers [patch_len] (single vectors), pi_stride floats apart */
    float *pi_buf;
    int *pi_bounds;
    size_t pi_stride, pi_max_v;
};

/* The profile: each kernel's share of the time in kernels, and the rest of
 * the steps (loss, norms, optimiser) apart. */
static void profile_print(const lipc_cpu *c)
{
    double total = 0.0;
    for (int k = 0; k < LIPC_K_KINDS; k++)
        for (int i = 0; i < c->k.n_ids; i++)
            total += c->prof_s[k][i];
    fprintf(stderr, "lipc profile: %.3f s in kernels on the pool, %.3f s in power iteration "
            "(layers in parallel), %.3f s in training steps, %.3f s of them clipping and "
            "updating\n", total, c->prof_pi_s, c->prof_step_s, c->prof_update_s);
    for (const lipc_node *n = c->g->first; n; n = n->next)
        for (int k = 0; k < LIPC_K_KINDS; k++)
            if (c->prof_n[k][n->id])
                fprintf(stderr, "  %5.1f%%  %8.3f s  %7ld calls  %s.%s\n",
                        100.0 * c->prof_s[k][n->id] / (total > 0 ? total : 1),
                        c->prof_s[k][n->id], c->prof_n[k][n->id], lipc_kkind_names[k], n->name);
}

/* ---- setup ---------------------------------------------------------------------------- */

static size_t max_channels(const lipc_graph *g)
{
    size_t m = 1;
    for (const lipc_node *n = g->first; n; n = n->next)
        if (n->shape.rank >= 1 && (size_t)n->shape.d[0] > m)
            m = (size_t)n->shape.d[0];
    return m;
}

void lipc_cpu_free(lipc_cpu *c)
{
    if (!c)
        return;
    if (c->profile && c->prof_s[0])
        profile_print(c);
    for (int k = 0; k < LIPC_K_KINDS; k++) {
        lipc_free(c->prof_s[k]);
        lipc_free(c->prof_n[k]);
    }
    lipc_kernels_free(&c->k);
    lipc_pool_free(c->pool);
    void *bufs[] = {c->arena, c->grads, c->norm_part, c->flipped, c->zeros, c->sink, c->vec,
                    c->scratch, c->head_r, c->head_dr, c->r64, c->dr64, c->dw64, c->w64, c->logits64,
                    c->dlogits64, c->sigma, c->dk, c->patch_a, c->patch_b,
                    c->x64, c->err, c->tmp, c->p64, c->absw, c->absb, c->zeros64,
                    c->patch64, c->pi_buf, c->pi_bounds};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        lipc_free(bufs[i]);
    lipc_free(c);
}

double lipc_cpu_compile_seconds(const lipc_cpu *c) { return c->k.compile_seconds; }
int lipc_cpu_threads(const lipc_cpu *c) { return lipc_pool_threads(c->pool); }

lipc_status lipc_cpu_new(const lipc_program *train, const lipc_program *forward,
                         const lipc_cpu_options *o, lipc_kernels *kernels, lipc_cpu **out)
{
    *out = NULL;
    LIPC_ASSERT(train->entry == LIPC_ENTRY_TRAIN && train->head && forward->g == train->g);
    lipc_cpu *c = lipc_calloc(1, sizeof *c);
    if (!c) {
        lipc_kernels_free(kernels);
        return LIPC_ERR_NOMEM;
    }
    c->train = train;
    c->forward = forward;
    c->g = train->g;
    c->k = *kernels;
    memset(kernels, 0, sizeof *kernels);
    size_t np = c->g->n_param_elems, ch = max_channels(c->g), max_v = 1;
    for (int b = 0; b < train->n_bounds; b++)
        if (train->bounds[b].v_len > max_v)
            max_v = train->bounds[b].v_len;
    const lipc_node *h = train->head;
    size_t md = (size_t)h->shape.d[0] * (size_t)h->in[0]->shape.d[0];
    c->pool = lipc_pool_new(o ? o->threads : 0);
    c->grads = lipc_calloc(np + 1, sizeof(float));
    c->grads_len = np;
    c->grads_zero = true;
    c->norm_part = lipc_calloc(lipc_norm_blocks(np) + 1, sizeof(double));
    c->flipped = lipc_calloc(np + 1, sizeof(float));
    c->zeros = lipc_calloc(ch, sizeof(float));
    c->sink = lipc_calloc(ch, sizeof(float));
    c->vec = lipc_calloc(train->n_vec_elems + 1, sizeof(float));
    c->scratch = lipc_calloc(max_v, sizeof(float));
    c->head_r = lipc_calloc(md, sizeof(float));
    c->head_dr = lipc_calloc(md, sizeof(float));
    c->r64 = lipc_calloc(md, sizeof(double));
    c->dr64 = lipc_calloc(md, sizeof(double));
    c->dw64 = lipc_calloc(md, sizeof(double));
    c->w64 = lipc_calloc(md, sizeof(double));
    c->sigma = lipc_calloc((size_t)train->n_bounds + 1, sizeof(double));
    c->dk = lipc_calloc((size_t)train->n_bounds + 1, sizeof(double));
    if (!c->pool || !c->grads || !c->norm_part || !c->flipped || !c->zeros || !c->sink || !c->vec ||
        !c->scratch || !c->head_r || !c->head_dr || !c->r64 || !c->dr64 || !c->dw64 || !c->w64 ||
        !c->sigma || !c->dk) {
        lipc_cpu_free(c);
        return LIPC_ERR_NOMEM;
    }
    for (const lipc_node *v = c->g->first; v; v = v->next)
        if (c->k.info[LIPC_K_FORWARD][v->id].patch) {
            size_t len = (size_t)lipc_shape_numel(v->in[0]->shape);
            if (len > c->patch_len)
                c->patch_len = len; /* patches hold the input's values, rearranged */
        }
    c->pi_max_v = max_v;
    c->pi_stride = max_v + 2 * c->patch_len;
    c->pi_buf = lipc_calloc(c->pi_stride * (size_t)(train->n_bounds + 1), sizeof(float));
    c->pi_bounds = lipc_calloc((size_t)train->n_bounds + 1, sizeof(int));
    if (!c->pi_buf || !c->pi_bounds) {
        lipc_cpu_free(c);
        return LIPC_ERR_NOMEM;
    }
    const char *prof = getenv("LIPC_PROFILE");
    if (prof && *prof && strcmp(prof, "0") != 0) {
        c->profile = true;
        for (int k = 0; k < LIPC_K_KINDS; k++) {
            c->prof_s[k] = lipc_calloc((size_t)c->k.n_ids, sizeof(double));
            c->prof_n[k] = lipc_calloc((size_t)c->k.n_ids, sizeof(long));
            if (!c->prof_s[k] || !c->prof_n[k])
                c->profile = false;
        }
    }
    *out = c;
    return LIPC_OK;
}

/* The arena for a batch of n under program p, and the loss buffers. */
static lipc_status reserve(lipc_cpu *c, const lipc_program *p, int n)
{
    size_t need = p->arena_per_example * (size_t)n + 1;
    if (need > c->arena_cap) {
        lipc_free(c->arena);
        c->arena = lipc_malloc(sizeof(float) * need);
        c->arena_cap = c->arena ? need : 0;
        if (!c->arena)
            return LIPC_ERR_NOMEM;
    }
    size_t np = c->patch_len * (size_t)n + 1;
    if (c->patch_len && np > c->patch_cap) {
        lipc_free(c->patch_a);
        lipc_free(c->patch_b);
        c->patch_a = lipc_malloc(sizeof(float) * np);
        c->patch_b = lipc_malloc(sizeof(float) * np);
        c->patch_cap = c->patch_a && c->patch_b ? np : 0;
        if (!c->patch_cap)
            return LIPC_ERR_NOMEM;
    }
    size_t nl = (size_t)n * (size_t)p->g->classes + 1;
    if (nl > c->logits_cap) {
        lipc_free(c->logits64);
        lipc_free(c->dlogits64);
        c->logits64 = lipc_malloc(sizeof(double) * nl);
        c->dlogits64 = lipc_malloc(sizeof(double) * nl);
        c->logits_cap = c->logits64 && c->dlogits64 ? nl : 0;
        if (!c->logits_cap)
            return LIPC_ERR_NOMEM;
    }
    return LIPC_OK;
}

/* ---- values ---------------------------------------------------------------------------- */

typedef struct run {
    lipc_cpu *c;
    const lipc_program *p;
    const float *params;
    int n;
    /* kernels run on this thread alone (inside a task of the pool), with
     * these buffers; else on the pool, with the runner's */
    bool serial;
    float *patch_a, *patch_b, *scratch;
} run;

/* A run on the runner's own buffers. */
static run run_of(lipc_cpu *c, const lipc_program *p, const float *params, int n)
{
    return (run){c, p, params, n, false, c->patch_a, c->patch_b, c->scratch};
}

static float *act(const run *r, const lipc_node *v)
{
    return r->c->arena + r->p->act_offset[v->id] * (size_t)r->n;
}

static float *grad(const run *r, const lipc_node *v)
{
    LIPC_ASSERT(r->p->grad_offset[v->id] != (size_t)-1);
    return r->c->arena + r->p->grad_offset[v->id] * (size_t)r->n;
}

static size_t numel(const lipc_node *v) { return (size_t)lipc_shape_numel(v->shape); }

static size_t param_offset(const lipc_graph *g, const lipc_node *v, int i)
{
    return g->params[v->param[i]].offset;
}

/* The weight a kernel reads: the effective rows for a normalising head. */
static float *weight(const run *r, const lipc_node *v)
{
    if (v->op == LIPC_OP_DENSE && v->a.normalize)
        return r->c->head_r;
    return (float *)r->params + param_offset(r->c->g, v, 0);
}

static float *bias(const run *r, const lipc_node *v)
{
    bool has = (v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE) && v->a.bias;
    return has ? (float *)r->params + param_offset(r->c->g, v, 1) : r->c->zeros;
}

static void launch(const run *r, lipc_kkind k, const lipc_node *v, lipc_kargs *a)
{
    lipc_cpu *c = r->c;
    lipc_kernel_fn fn = c->k.fn[k][v->id];
    LIPC_ASSERT(fn);
    int64_t blocks = c->k.info[k][v->id].blocks;
    if (!c->profile || r->serial) { /* serial runs are profiled as a whole */
        lipc_pool_run(r->serial ? NULL : c->pool, fn, a, blocks ? blocks : a->n);
        return;
    }
    double t0 = lipc_now();
    lipc_pool_run(c->pool, fn, a, blocks ? blocks : a->n);
    c->prof_s[k][v->id] += lipc_now() - t0;
    c->prof_n[k][v->id]++;
}

/* Per step of a run: the flipped conv weights the adjoint kernels read, and
 * the head's effective rows (double, rounded to float). */
static void prepare_weights(const run *r)
{
    lipc_cpu *c = r->c;
    const lipc_graph *g = c->g;
    for (const lipc_node *v = g->first; v; v = v->next) {
        if (v->op == LIPC_OP_CONV2D && c->k.info[LIPC_K_BACKWARD][v->id].patch) {
            /* W'[k, o] = W[o, k], k = (i, y, x) */
            size_t co = (size_t)v->shape.d[0], off = param_offset(g, v, 0);
            size_t kk = g->params[v->param[0]].numel / co;
            const float *w = r->params + off;
            float *f = c->flipped + off;
            for (size_t o = 0; o < co; o++)
                for (size_t k = 0; k < kk; k++)
                    f[k * co + o] = w[o * kk + k];
        } else if (v->op == LIPC_OP_CONV2D && c->k.info[LIPC_K_BACKWARD][v->id].flipped) {
            /* W'[i, o, kh-1-y, kw-1-x] = W[o, i, y, x] */
            int co = v->shape.d[0], cin = v->in[0]->shape.d[0];
            int kh = v->a.kernel[0], kw = v->a.kernel[1];
            size_t off = param_offset(g, v, 0);
            const float *w = r->params + off;
            float *f = c->flipped + off;
            for (int o = 0; o < co; o++)
                for (int i = 0; i < cin; i++)
                    for (int y = 0; y < kh; y++)
                        for (int x = 0; x < kw; x++)
                            f[(((size_t)i * co + o) * kh + (kh - 1 - y)) * kw + (kw - 1 - x)] =
                                w[(((size_t)o * cin + i) * kh + y) * kw + x];
        }
    }
    const lipc_node *h = r->p->head ? r->p->head : c->train->head;
    size_t md = (size_t)h->shape.d[0] * (size_t)h->in[0]->shape.d[0];
    lipc_head_rows(h, r->params + param_offset(g, h, 0), c->w64, c->r64);
    for (size_t i = 0; i < md; i++)
        c->head_r[i] = (float)c->r64[i];
}

/* A patch conv's input as patches, into patch_a. */
static float *patches(const run *r, const lipc_node *v, int n, float *in)
{
    lipc_kargs a = {.n = n, .scale = 1.0f};
    a.p[0] = in;
    a.p[1] = r->patch_a;
    launch(r, LIPC_K_PATCHES, v, &a);
    return r->patch_a;
}

/* out = op(in0, in1) on n examples, with this bias (zeros for the linear map) */
static void forward_with(const run *r, const lipc_node *v, int n, float *in0, float *in1,
                         float *out, float *w, float *b)
{
    lipc_kargs a = {.n = n, .scale = 1.0f};
    bool patch = r->c->k.info[LIPC_K_FORWARD][v->id].patch;
    a.p[0] = patch ? patches(r, v, n, in0) : in0;
    a.p[1] = in1;
    a.p[2] = out;
    if (v->n_param) {
        a.p[3] = w;
        a.p[4] = b;
    }
    launch(r, LIPC_K_FORWARD, v, &a);
}

static void forward_into(const run *r, const lipc_node *v, int n, float *in0, float *in1,
                         float *out, float *b)
{
    forward_with(r, v, n, in0, in1, out, v->n_param ? weight(r, v) : NULL, b);
}

static void run_forward(const run *r, const lipc_node *v)
{
    forward_into(r, v, r->n, act(r, v->in[0]), v->n_in > 1 ? act(r, v->in[1]) : NULL,
                 act(r, v), v->n_param ? bias(r, v) : NULL);
}

/* dW += scale * sum_b dout x^T (and dbias when db is not NULL) */
static void run_wgrad(const run *r, const lipc_node *v, int n, float *x, float *dout, float *dw,
                      float *db, float scale)
{
    lipc_kargs a = {.n = n, .scale = scale};
    a.p[0] = r->c->k.info[LIPC_K_WGRAD][v->id].patch ? patches(r, v, n, x) : x;
    a.p[1] = dout;
    a.p[2] = dw;
    a.p[3] = db ? db : r->c->sink;
    launch(r, LIPC_K_WGRAD, v, &a);
}

/* din += A^T dout (conv, dense) or J^T dout */
static void run_adjoint(const run *r, const lipc_node *v, int n, float *dout, float *din0,
                        float *din1)
{
    lipc_cpu *c = r->c;
    lipc_kargs a = {.n = n, .scale = 1.0f};
    a.p[0] = dout;
    a.p[1] = din0;
    a.p[2] = din1;
    if (v->op != LIPC_OP_CONV2D && v->op != LIPC_OP_DENSE) {
        /* element-wise Jacobians read the forward values */
        a.p[3] = act(r, v->in[0]);
        a.p[4] = act(r, v);
    }
    if (v->n_param)
        a.p[5] = c->k.info[LIPC_K_BACKWARD][v->id].flipped
                     ? c->flipped + param_offset(c->g, v, 0)
                     : weight(r, v);
    if (!c->k.info[LIPC_K_BACKWARD][v->id].patch) {
        launch(r, LIPC_K_BACKWARD, v, &a);
        return;
    }
    /* into the patches' gradient, then back to the input's layout */
    memset(r->patch_b, 0, sizeof(float) * (size_t)lipc_shape_numel(v->in[0]->shape) * (size_t)n);
    a.p[1] = r->patch_b;
    launch(r, LIPC_K_BACKWARD, v, &a);
    lipc_kargs u = {.n = n, .scale = 1.0f};
    u.p[0] = r->patch_b;
    u.p[1] = din0;
    launch(r, LIPC_K_UNPATCH, v, &u);
}

static void run_backward(const run *r, const lipc_step *s)
{
    lipc_cpu *c = r->c;
    const lipc_node *v = s->node;
    float *din[LIPC_MAX_INPUTS] = {NULL, NULL};
    bool any = false;
    bool written = c->k.info[LIPC_K_BACKWARD][v->id].writes_din;
    for (int i = 0; i < v->n_in; i++)
        if (s->need_din[i]) {
            din[i] = grad(r, v->in[i]);
            if (s->zero_din[i] && !(i == 0 && written))
                memset(din[i], 0, sizeof(float) * numel(v->in[i]) * (size_t)r->n);
            any = true;
        }
    if (any)
        run_adjoint(r, v, r->n, grad(r, v), din[0], din[1]);
    if (!c->k.info[LIPC_K_WGRAD][v->id].present)
        return;
    const lipc_graph *g = c->g;
    float *db = v->a.bias ? c->grads + param_offset(g, v, 1) : NULL;
    if (v->op == LIPC_OP_DENSE && v->a.normalize) {
        /* through the row normalisation, in double */
        size_t md = (size_t)v->shape.d[0] * (size_t)v->in[0]->shape.d[0];
        memset(c->head_dr, 0, sizeof(float) * md);
        run_wgrad(r, v, r->n, act(r, v->in[0]), grad(r, v), c->head_dr, db, 1.0f);
        lipc_head_rows_backward(v, c->w64, c->head_dr, c->dr64, c->dw64);
        float *dw = c->grads + param_offset(g, v, 0);
        for (size_t i = 0; i < md; i++)
            dw[i] = (float)(dw[i] + c->dw64[i]);
    } else {
        run_wgrad(r, v, r->n, act(r, v->in[0]), grad(r, v), c->grads + param_offset(g, v, 0), db,
                  1.0f);
    }
}

static double norm2f(const float *v, size_t len)
{
    return sqrt(lipc_sumsq(v, len));
}

/* Power iteration on A^T A, warm-started from the working vectors, as the
 * reference's power_iter (backend/ref/exec.c states the method); the vectors
 * are float, the norms double. Returns the last relative change of sigma. */
static double power_iter(const run *r, int b, int iters)
{
    lipc_cpu *c = r->c;
    const lipc_bound *bd = &r->p->bounds[b];
    const lipc_node *v = bd->node;
    float *vv = c->vec + bd->v_offset, *u = c->vec + bd->u_offset;
    double nv = norm2f(vv, bd->v_len);
    if (nv == 0.0 || !isfinite(nv)) {
        lipc_rng rng;
        lipc_power_iter_rng(b, &rng);
        for (size_t i = 0; i < bd->v_len; i++)
            vv[i] = (float)lipc_rng_normal(&rng);
        nv = norm2f(vv, bd->v_len);
    }
    for (size_t i = 0; i < bd->v_len; i++)
        vv[i] = (float)(vv[i] / nv);
    double sigma = 0.0, change = 0.0;
    for (int it = 0; it < iters; it++) {
        forward_into(r, v, 1, vv, NULL, u, c->zeros);
        if (!c->k.info[LIPC_K_BACKWARD][v->id].writes_din)
            memset(r->scratch, 0, sizeof(float) * bd->v_len);
        run_adjoint(r, v, 1, u, r->scratch, NULL);
        double s = norm2f(r->scratch, bd->v_len);
        if (s == 0.0)
            break;
        for (size_t i = 0; i < bd->v_len; i++)
            vv[i] = (float)(r->scratch[i] / s);
        double est = sqrt(s);
        change = sigma > 0.0 ? fabs(est - sigma) / est : 1.0;
        sigma = est;
    }
    forward_into(r, v, 1, vv, NULL, u, c->zeros);
    double s = norm2f(u, bd->u_len);
    for (size_t i = 0; i < bd->u_len; i++)
        u[i] = s > 0.0 ? (float)(u[i] / s) : 0.0f;
    c->sigma[b] = s;
    return change;
}

/* The power iterations of a step, one layer per task: single vectors are too
 * small to split, but the layers are independent. Task t of T takes the
 * layers t, t + T, ... (the layers of a model are alike in cost in runs, so
 * this deals them out evenly), each on its own buffers. */
typedef struct pi_job {
    const run *r;
    const int *bounds;
    int n_bounds, tasks, iters;
} pi_job;

static void pi_task(void *ctx, int64_t lo, int64_t hi)
{
    const pi_job *j = ctx;
    lipc_cpu *c = j->r->c;
    for (int64_t t = lo; t < hi; t++)
        for (int i = (int)t; i < j->n_bounds; i += j->tasks) {
            size_t slot = (size_t)(j->bounds[i]) * c->pi_stride;
            run r = *j->r;
            r.serial = true;
            r.scratch = c->pi_buf + slot;
            r.patch_a = r.scratch + c->pi_max_v;
            r.patch_b = r.patch_a + c->patch_len;
            power_iter(&r, j->bounds[i], j->iters);
        }
}

static void power_iter_all(const run *r, const int *bounds, int n, int iters)
{
    int tasks = lipc_pool_threads(r->c->pool);
    pi_job j = {r, bounds, n, tasks < n ? tasks : n, iters};
    double t0 = lipc_now();
    lipc_pool_run(r->c->pool, pi_task, &j, j.tasks);
    r->c->prof_pi_s += lipc_now() - t0;
}

/* Clipping and the optimiser's update on the pool, in blocks of
 * LIPC_NORM_BLOCK elements (backend/optim.c: the norm has the same bits for
 * any thread count, and the update is element-wise). */
typedef struct update_job {
    lipc_cpu *c;
    const lipc_hyper *h;
    lipc_train_state *st;
    size_t np;
    double scale;
} update_job;

static void sumsq_task(void *ctx, int64_t lo, int64_t hi)
{
    const update_job *j = ctx;
    for (int64_t b = lo; b < hi; b++)
        j->c->norm_part[b] = lipc_sumsq_block(j->c->grads, NULL, j->np, (size_t)b);
}

static double clip_norm(lipc_cpu *c, size_t np, double clip, double *norm)
{
    update_job j = {.c = c, .np = np};
    size_t nb = lipc_norm_blocks(np);
    double t0 = lipc_now();
    lipc_pool_run(c->pool, sumsq_task, &j, (int64_t)nb);
    c->prof_update_s += lipc_now() - t0;
    return lipc_clip_scale(c->norm_part, nb, clip, norm);
}

static void update_task(void *ctx, int64_t lo, int64_t hi)
{
    const update_job *j = ctx;
    size_t a = (size_t)lo * LIPC_NORM_BLOCK, e = (size_t)hi * LIPC_NORM_BLOCK;
    if (e > j->np)
        e = j->np;
    lipc_optim_update(j->h, j->st, a, e, j->c->grads, NULL, j->scale);
    /* ready for the next step, while the block is still in cache */
    memset(j->c->grads + a, 0, sizeof(float) * (e - a));
}

static void update_all(lipc_cpu *c, const lipc_hyper *h, lipc_train_state *st, size_t np,
                       double scale)
{
    update_job j = {c, h, st, np, scale};
    double t0 = lipc_now();
    lipc_pool_run(c->pool, update_task, &j, (int64_t)lipc_norm_blocks(np));
    c->grads_zero = true;
    st->step++;
    c->prof_update_s += lipc_now() - t0;
}

/* ---- entry points -------------------------------------------------------------------------- */

lipc_status lipc_cpu_predict(lipc_cpu *c, const float *params, int n, const float *x,
                             float *logits)
{
    const lipc_program *p = c->forward;
    lipc_status st = reserve(c, p, n);
    if (st != LIPC_OK)
        return st;
    run r = run_of(c, p, params, n);
    prepare_weights(&r);
    const lipc_graph *g = c->g;
    memcpy(act(&r, g->input), x, sizeof(float) * numel(g->input) * (size_t)n);
    for (int s = 0; s < p->n_steps; s++)
        if (p->steps[s].op == LIPC_STEP_FORWARD)
            run_forward(&r, p->steps[s].node);
    memcpy(logits, act(&r, g->output), sizeof(float) * numel(g->output) * (size_t)n);
    return LIPC_OK;
}

/* Room for the gradient of a training vector of n_train elements (the
 * parameters and the scaled kernels' a and U), all zeros. */
static lipc_status reserve_grads(lipc_cpu *c, size_t n_train)
{
    if (n_train <= c->grads_len)
        return LIPC_OK;
    float *g = lipc_calloc(n_train + 1, sizeof(float));
    double *part = lipc_calloc(lipc_norm_blocks(n_train) + 1, sizeof(double));
    if (!g || !part) {
        lipc_free(g);
        lipc_free(part);
        return LIPC_ERR_NOMEM;
    }
    lipc_free(c->grads);
    lipc_free(c->norm_part);
    c->grads = g;
    c->norm_part = part;
    c->grads_len = n_train;
    c->grads_zero = true;
    return LIPC_OK;
}

static lipc_status train_step(lipc_cpu *c, lipc_train_state *st, int n, const float *x,
                              const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                              double *grads_out)
{
    const lipc_program *p = c->train;
    const lipc_graph *g = c->g;
    double t_start = c->profile ? lipc_now() : 0.0, clip_scale = 1.0;
    size_t np = lipc_train_len(st, g->n_param_elems);
    lipc_status status = reserve(c, p, n);
    if (status == LIPC_OK)
        status = reserve_grads(c, np);
    if (status != LIPC_OK)
        return status;
    run r = run_of(c, p, st->params, n);
    if (!c->grads_zero)
        memset(c->grads, 0, sizeof(float) * np);
    c->grads_zero = false;
    memcpy(c->vec, st->vec, sizeof(float) * p->n_vec_elems);
    prepare_weights(&r);
    memcpy(act(&r, g->input), x, sizeof(float) * numel(g->input) * (size_t)n);
    memset(out, 0, sizeof *out);
    const lipc_node *head = p->head;
    int m = head->shape.d[0], dd = head->in[0]->shape.d[0];
    size_t md = (size_t)m * (size_t)dd;
    double k_sub = 1.0, dl_dk = 0.0;

    for (int s = 0; s < p->n_steps && status == LIPC_OK; s++) {
        const lipc_step *stp = &p->steps[s];
        switch (stp->op) {
        case LIPC_STEP_FORWARD:
            run_forward(&r, stp->node);
            break;
        case LIPC_STEP_POWER_ITER: {
            /* this step and the POWER_ITER steps right after it, at once */
            int n_pi = 0;
            while (s + n_pi < p->n_steps && p->steps[s + n_pi].op == LIPC_STEP_POWER_ITER) {
                c->pi_bounds[n_pi] = p->steps[s + n_pi].bound;
                n_pi++;
            }
            power_iter_all(&r, c->pi_bounds, n_pi, h->power_iters);
            s += n_pi - 1;
            break;
        }
        case LIPC_STEP_BOUND:
            k_sub = lipc_program_eval_bound(p, c->sigma, c->dk);
            break;
        case LIPC_STEP_LOSS: {
            status = lipc_head_loss(head, h, n, act(&r, g->output), y, k_sub, c->w64, c->r64,
                                    c->logits64, c->dlogits64, c->dr64, grad(&r, g->output),
                                    c->dw64, out, &dl_dk);
            if (status != LIPC_OK)
                break;
            float *hw = c->grads + param_offset(g, head, 0);
            for (size_t i = 0; i < md; i++)
                hw[i] = (float)(hw[i] + c->dw64[i]);
            break;
        }
        case LIPC_STEP_BACKWARD:
            run_backward(&r, stp);
            break;
        case LIPC_STEP_SIGMA_GRAD: {
            const lipc_bound *bd = &p->bounds[stp->bound];
            double scale = dl_dk * c->dk[stp->bound];
            if (scale != 0.0)
                run_wgrad(&r, bd->node, 1, c->vec + bd->v_offset, c->vec + bd->u_offset,
                          c->grads + param_offset(g, bd->node, 0), NULL, (float)scale);
            break;
        }
        case LIPC_STEP_CLIP:
            if (!grads_out) {
                lipc_scaled_grads(st, c->grads, NULL);
                clip_scale = clip_norm(c, np, h->clip, &out->grad_norm);
            }
            break;
        case LIPC_STEP_UPDATE:
            if (!grads_out) {
                update_all(c, h, st, np, clip_scale);
                lipc_scaled_apply(st->scaled, st->n_scaled, st->params);
            }
            break;
        }
    }
    if (status != LIPC_OK)
        return status;
    out->n = n;
    out->k_sub = k_sub;
    if (c->profile)
        c->prof_step_s += lipc_now() - t_start;
    if (grads_out)
        for (size_t i = 0; i < g->n_param_elems; i++)
            grads_out[i] = c->grads[i];
    else
        memcpy(st->vec, c->vec, sizeof(float) * p->n_vec_elems);
    return LIPC_OK;
}

lipc_status lipc_cpu_train_step(lipc_cpu *c, lipc_train_state *st, int n, const float *x,
                                const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    return train_step(c, st, n, x, y, h, out, NULL);
}

lipc_status lipc_cpu_gradients(lipc_cpu *c, lipc_train_state *st, int n, const float *x,
                               const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                               double *grads)
{
    return train_step(c, st, n, x, y, h, out, grads);
}

static double cpu_chunk(void *ctx, int b, int iters)
{
    const run *r = ctx;
    power_iter(r, b, iters);
    return r->c->sigma[b];
}

lipc_status lipc_cpu_lipschitz(lipc_cpu *c, const float *params, float *vec, int max_iters,
                               double tol, lipc_bound_report *report)
{
    const lipc_program *p = c->train;
    lipc_status st = reserve(c, p, 1);
    if (st != LIPC_OK)
        return st;
    run r = run_of(c, p, params, 1);
    prepare_weights(&r);
    memcpy(c->vec, vec, sizeof(float) * p->n_vec_elems);
    lipc_power_iter_converge(p, max_iters, tol, cpu_chunk, &r, c->sigma, report);
    double k = lipc_program_eval_bound(p, c->sigma, c->dk);
    for (int b = 0; b < p->n_bounds; b++)
        report[b].value = c->sigma[b];
    report[p->n_bounds].value = k;
    memcpy(vec, c->vec, sizeof(float) * p->n_vec_elems);
    return LIPC_OK;
}

/* ---- certified inference: logits with rigorous error bounds ---------------------------------
 *
 * Certification needs, per logit, a bound e >= |computed - exact|, the exact
 * value being the real-number network with these float parameters on this
 * float input (docs/soundness.md). The float kernels would give bounds that
 * grow by the |W| norm of every layer from float's 2^-24: too loose for deep
 * networks. So certified inference runs the forward kernels compiled in
 * DOUBLE (FORWARD64), and the bound runs beside them, node by node, on an error
 * arena laid out by the same memory plan (a node's bound is live exactly when
 * its value is), with u = 2^-53:
 *
 *   linear (conv, dense):  y = sum_k w_k x_k + b (+ x_o), K terms. Any order
 *     of sums and FMAs gives |fl(y) - y| <= g_K (sum |w_k||x~_k| + |b| + |x~_o|),
 *     g_K = K u / (1 - K u); and the exact y on the exact inputs is off by at
 *     most sum |w_k| e_k (+ e_o). So
 *         e_out = |W| (e_in + g_K |x~|) + g_K |b|
 *     is ONE more run of the same double kernel, on |W| and a nonnegative
 *     input, whose own rounding err_up covers. The head's rows are the double
 *     normalisation of the float weights, relatively off by g_{K+1}: its g
 *     is g_K + g_{K+1}.
 *   shift, add:  one rounding: + u |y~| (relative to the result)
 *   relu, flatten, pad:  exact and 1-Lipschitz per element: e passes through
 *   minmax:  each output of a pair is within max(e_a, e_b) of its exact value
 *   avgpool: avg(e_in + g_{k+2} |x~|)
 *
 * err_up(raw, n) (lipc_ops_err_up, ir/registry.c) turns a raw value whose
 * formula on nonnegative data took at most n roundings on any path into a
 * rigorous bound, flush-to-zero included. Non-finite values stay non-finite:
 * nothing downstream certifies. */

static double gamma_d(long k)
{
    return lipc_ops_err_up((double)k * 0x1p-53 / (1.0 - (double)k * 0x1p-53), 3);
}

/* Terms of one output of a linear node (products, bias, identity). */
static long linear_terms(const lipc_node *v)
{
    if (v->op == LIPC_OP_CONV2D)
        return (long)v->in[0]->shape.d[0] * v->a.kernel[0] * v->a.kernel[1] + 2;
    return (long)lipc_shape_numel(v->in[0]->shape) + 2;
}

static double *val64(const run *r, const lipc_node *v)
{
    return r->c->x64 + r->p->act_offset[v->id] * (size_t)r->n;
}

/* What the double kernels read for linear node v: the weight (the head's
 * rows in double for a normalising head) and the bias (NULL: none). */
static double *weight64(const run *r, const lipc_node *v)
{
    if (v->op == LIPC_OP_DENSE && v->a.normalize)
        return r->c->r64;
    return r->c->p64 + param_offset(r->c->g, v, 0);
}

static double *bias64(const run *r, const lipc_node *v)
{
    return v->a.bias ? r->c->p64 + param_offset(r->c->g, v, 1) : NULL;
}

static double *err_of(const run *r, const lipc_node *v)
{
    return r->c->err + r->p->act_offset[v->id] * (size_t)r->n;
}

static lipc_status reserve_bounded(lipc_cpu *c, const lipc_program *p, int n)
{
    size_t need = p->arena_per_example * (size_t)n + 1;
    if (need > c->err_cap) {
        lipc_free(c->x64);
        lipc_free(c->err);
        lipc_free(c->tmp);
        c->x64 = lipc_malloc(sizeof(double) * need);
        c->err = lipc_malloc(sizeof(double) * need);
        c->tmp = lipc_malloc(sizeof(double) * need);
        c->err_cap = c->x64 && c->err && c->tmp ? need : 0;
        if (!c->err_cap)
            return LIPC_ERR_NOMEM;
    }
    size_t pn = c->patch_len * (size_t)n + 1;
    if (c->patch_len && pn > c->patch64_cap) {
        lipc_free(c->patch64);
        c->patch64 = lipc_malloc(sizeof(double) * pn);
        c->patch64_cap = c->patch64 ? pn : 0;
        if (!c->patch64)
            return LIPC_ERR_NOMEM;
    }
    size_t np = c->g->n_param_elems + 1;
    if (!c->p64) {
        c->p64 = lipc_malloc(sizeof(double) * np);
        c->absw = lipc_malloc(sizeof(double) * np);
        c->absb = lipc_malloc(sizeof(double) * np);
        c->zeros64 = lipc_calloc(max_channels(c->g), sizeof(double));
        if (!c->p64 || !c->absw || !c->absb || !c->zeros64)
            return LIPC_ERR_NOMEM;
    }
    return LIPC_OK;
}

/* out = op(in0, in1) in double, weight w and bias b (NULL: none) */
static void forward64(const run *r, const lipc_node *v, double *in0, double *in1, double *out,
                      double *w, double *b)
{
    lipc_cpu *c = r->c;
    lipc_kargs a = {.n = r->n, .scale = 1.0f};
    if (c->k.info[LIPC_K_FORWARD64][v->id].patch) {
        lipc_kargs pa = {.n = r->n, .scale = 1.0f};
        pa.p[0] = (float *)in0;
        pa.p[1] = (float *)c->patch64;
        launch(r, LIPC_K_PATCHES64, v, &pa);
        in0 = c->patch64;
    }
    a.p[0] = (float *)in0;
    a.p[1] = (float *)in1;
    a.p[2] = (float *)out;
    a.p[3] = (float *)w;
    a.p[4] = (float *)(b ? b : c->zeros64);
    launch(r, LIPC_K_FORWARD64, v, &a);
}

/* The value and its bound at node v, from its inputs'. */
static void bounded_step(const run *r, const lipc_node *v)
{
    lipc_cpu *c = r->c;
    const lipc_graph *g = c->g;
    size_t len = numel(v) * (size_t)r->n, in_len = numel(v->in[0]) * (size_t)r->n;
    double *x = val64(r, v->in[0]), *e = err_of(r, v->in[0]);
    double *y = val64(r, v), *out = err_of(r, v);
    switch (v->op) {
    case LIPC_OP_CONV2D:
    case LIPC_OP_DENSE: {
        bool head = v->op == LIPC_OP_DENSE && v->a.normalize;
        size_t off = param_offset(g, v, 0), nw = g->params[v->param[0]].numel;
        double *w = weight64(r, v), *aw = c->absw + off;
        double *b = bias64(r, v), *ab = NULL;
        long k = linear_terms(v);
        /* the head's rows r64 = w / ||w|| in double: a sum of d squares, a
         * square root and a division, relative error <= g_{d+3} */
        double gam = head ? lipc_ops_err_up(gamma_d(k) + gamma_d(k + 3), 1) : gamma_d(k);
        forward64(r, v, x, NULL, y, w, b);
        for (size_t i = 0; i < nw; i++)
            aw[i] = fabs(w[i]);
        if (b) {
            size_t bo = param_offset(g, v, 1), nb = g->params[v->param[1]].numel;
            ab = c->absb + bo;
            for (size_t i = 0; i < nb; i++)
                ab[i] = lipc_ops_err_up(gam * fabs(b[i]), 1);
        }
        for (size_t i = 0; i < in_len; i++)
            c->tmp[i] = lipc_ops_err_up(e[i] + gam * fabs(x[i]), 2);
        forward64(r, v, c->tmp, NULL, out, aw, ab);
        for (size_t i = 0; i < len; i++)
            out[i] = lipc_ops_err_up(out[i], k + 1);
        return;
    }
    case LIPC_OP_SHIFT:
        forward64(r, v, x, NULL, y, NULL, NULL);
        for (size_t i = 0; i < len; i++)
            out[i] = lipc_ops_err_up(e[i] + 0x1p-53 * fabs(y[i]), 2);
        return;
    case LIPC_OP_ADD: {
        double *e1 = err_of(r, v->in[1]);
        forward64(r, v, x, val64(r, v->in[1]), y, NULL, NULL);
        for (size_t i = 0; i < len; i++)
            out[i] = lipc_ops_err_up(e[i] + e1[i] + 0x1p-53 * fabs(y[i]), 3);
        return;
    }
    case LIPC_OP_RELU:
    case LIPC_OP_FLATTEN:
        forward64(r, v, x, NULL, y, NULL, NULL);
        memcpy(out, e, sizeof(double) * len);
        return;
    case LIPC_OP_PAD:
        /* the pad kernel on the bounds: exact, zero in the border */
        forward64(r, v, x, NULL, y, NULL, NULL);
        forward64(r, v, e, NULL, out, NULL, NULL);
        return;
    case LIPC_OP_MINMAX: {
        forward64(r, v, x, NULL, y, NULL, NULL);
        int ch = v->shape.d[0];
        size_t hw = v->shape.rank == 3 ? (size_t)v->shape.d[1] * (size_t)v->shape.d[2] : 1;
        bool halves = v->a.pairing == LIPC_PAIR_HALVES;
        for (int b = 0; b < r->n; b++)
            for (int k = 0; k < ch / 2; k++) {
                size_t ia = (size_t)(halves ? k : 2 * k);
                size_t ib = (size_t)(halves ? k + ch / 2 : 2 * k + 1);
                size_t base = (size_t)b * numel(v);
                for (size_t q = 0; q < hw; q++) {
                    double ea = e[base + ia * hw + q], eb = e[base + ib * hw + q];
                    double m = ea > eb ? ea : eb;
                    if (isnan(ea) || isnan(eb))
                        m = INFINITY;
                    out[base + ia * hw + q] = out[base + ib * hw + q] = m;
                }
            }
        return;
    }
    case LIPC_OP_AVGPOOL: {
        long k = (long)v->a.kernel[0] * v->a.kernel[1];
        double gam = gamma_d(k + 2);
        forward64(r, v, x, NULL, y, NULL, NULL);
        for (size_t i = 0; i < in_len; i++)
            c->tmp[i] = lipc_ops_err_up(e[i] + gam * fabs(x[i]), 2);
        forward64(r, v, c->tmp, NULL, out, NULL, NULL);
        for (size_t i = 0; i < len; i++)
            out[i] = lipc_ops_err_up(out[i], k + 2);
        return;
    }
    case LIPC_OP_INPUT:
    case LIPC_OP_COUNT:
    default:
        break;
    }
    LIPC_ASSERT(!"an op without an error rule");
}

/* What both certified entry points start with: the double kernels (compiled
 * on first use), the buffers for n examples, the parameters and the head's
 * rows in double (p64, r64) and the input widened into the value arena. */
static lipc_status start_double(lipc_cpu *c, const float *params, int n, const float *x,
                                run *r)
{
    const lipc_program *p = c->forward;
    lipc_status st = LIPC_OK;
    if (c->k.more) {
        lipc_diags d;
        lipc_diags_init(&d);
        st = c->k.more(&c->k, &d);
        lipc_diags_print(&d, stderr);
        lipc_diags_free(&d);
    }
    if (st == LIPC_OK)
        st = reserve(c, p, n);
    if (st == LIPC_OK)
        st = reserve_bounded(c, p, n);
    if (st != LIPC_OK)
        return st;
    *r = run_of(c, p, params, n);
    prepare_weights(r);
    const lipc_graph *g = c->g;
    for (size_t i = 0; i < g->n_param_elems; i++)
        c->p64[i] = params[i];
    double *x0 = val64(r, g->input);
    for (size_t i = 0; i < numel(g->input) * (size_t)n; i++)
        x0[i] = x[i];
    return LIPC_OK;
}

lipc_status lipc_cpu_predict_bounded(lipc_cpu *c, const float *params, int n, const float *x,
                                     double *logits, double *logit_err)
{
    const lipc_program *p = c->forward;
    run r;
    lipc_status st = start_double(c, params, n, x, &r);
    if (st != LIPC_OK)
        return st;
    const lipc_graph *g = c->g;
    memset(err_of(&r, g->input), 0, sizeof(double) * numel(g->input) * (size_t)n);
    for (int s = 0; s < p->n_steps; s++)
        if (p->steps[s].op == LIPC_STEP_FORWARD)
            bounded_step(&r, p->steps[s].node);
    size_t out_len = numel(g->output) * (size_t)n;
    memcpy(logits, val64(&r, g->output), sizeof(double) * out_len);
    memcpy(logit_err, err_of(&r, g->output), sizeof(double) * out_len);
    return LIPC_OK;
}

/* ---- certified inference in one pass: one l2 bound per example ----------------------------
 *
 * predict_bounded's elementwise bounds cost a second pass of every kernel on
 * |W|. This path runs the double forward kernels once and bounds, per
 * example, the l2 norm of the whole error vector d = ||x~ - x|| at every
 * node, through an upper bound on each layer's operator norm (the factors
 * K_sub is made of), so the bound grows by K_sub, while each layer's own
 * rounding is bounded from norms alone. With u = 2^-53, g_K = K u / (1 - K u)
 * and F = 2^-1000 (more than any underflow, FTZ and DAZ included, can cost
 * per rounding):
 *
 *   linear, K terms per output (linear_terms), N outputs:
 *     fl(y) - y~ is within g_K (|W| |x~| + |b| (+ |x~|, folded identity))
 *     elementwise (any order, FMAs allowed), and y~ - y = W' (x~ - x), so
 *       d_out <= s d_in + g_K (A ||x~|| + ||b|| sqrt(hw) (+ ||x~||)) + F sqrt(N) K
 *     where s >= ||W'||_2 (the factor's bound, W' = W + I when folded) and
 *     A >= || |W| ||_2: the conv operator on |W| is a nonnegative matrix
 *     whose row sums are at most max_o sum_{i,taps} |W| and whose column sums
 *     are at most max_i sum_{o,taps} |W| (an input element meets each
 *     (o, tap) at most once, at any stride and padding), and
 *     ||T||_2 <= sqrt(||T||_1 ||T||_inf).
 *   shift, add: one rounding: + g_1 ||y~|| + F sqrt(N) (add: d_a + d_b)
 *   relu, flatten, pad, minmax: 1-Lipschitz in l2 and exact: d passes
 *   avgpool: s the pooling's constant (the operator is nonnegative, so
 *     || |P| || = ||P|| <= s): d_out <= s d_in + g_{k+2} s ||x~|| + F sqrt(N) (k + 2)
 *   the head (the output), per logit j, rows r (exact: w / ||w||, or w) and
 *     the kernel's rows r~ (the double normalisation, |r~ - r| <= rho |r|,
 *     rho = g_{K+3}, as predict_bounded; 0 when not normalised):
 *       e_j <= ||r_j|| (d_in + (g_K (1 + rho) + rho) ||x~||) + g_K |b_j| + F K
 *
 * Every formula is evaluated on nonnegative data and rounded up by
 * lipc_ops_err_up. Float ran the same way would give bounds near 0.3 on the
 * default model's logits (g_576 = 3.4e-5 of |W| |x~|, times K_sub): too
 * loose to decide half of the test points. In double they are about 1e-10,
 * against 1e-6 for predict_bounded, at about half its cost; the runtime sends
 * the rare point whose decision the difference could change to
 * predict_bounded (lipc_certify_dataset).
 *
 * sigma [n_bounds]: upper bounds on the TRAIN program's factors (the
 * runtime's per-factor sound bounds). LIPC_ERR_UNSUPPORTED for a graph with a
 * linear node that is neither a factor nor the output. */

#define FLUSH64 0x1p-1000

typedef struct norms_job {
    const double *a;
    size_t per;
    double *out;
} norms_job;

static void norms_task(void *ctx, int64_t lo, int64_t hi)
{
    const norms_job *j = ctx;
    for (int64_t b = lo; b < hi; b++) {
        const double *x = j->a + (size_t)b * j->per;
        double s = 0.0;
        for (size_t i = 0; i < j->per; i++)
            s += x[i] * x[i];
        j->out[b] = lipc_ops_err_up(sqrt(s), (long)j->per + 3);
    }
}

/* out[b] >= the l2 norm of example b of a (per doubles each), on the pool */
static void example_norms(const run *r, const double *a, size_t per, double *out)
{
    norms_job j = {a, per, out};
    lipc_pool_run(r->c->pool, norms_task, &j, r->n);
}

/* >= || |W| ||_2 for a conv or dense node's weight (see above) */
static double abs_weight_norm(const lipc_node *v, const double *w)
{
    int co = v->shape.d[0];
    int ci = (int)lipc_shape_numel(v->in[0]->shape), taps = 1; /* dense: inputs */
    if (v->op == LIPC_OP_CONV2D) {
        ci = v->in[0]->shape.d[0];
        taps = v->a.kernel[0] * v->a.kernel[1];
    }
    double *col = lipc_calloc((size_t)ci, sizeof(double));
    if (!col)
        return INFINITY;
    double rmax = 0.0;
    for (int o = 0; o < co; o++) {
        double r = 0.0;
        for (int i = 0; i < ci; i++) {
            const double *t = w + ((size_t)o * ci + i) * taps;
            double s = 0.0;
            for (int k = 0; k < taps; k++)
                s += fabs(t[k]);
            r += s;
            col[i] += s;
        }
        rmax = r > rmax ? r : rmax;
    }
    double cmax = 0.0;
    for (int i = 0; i < ci; i++)
        cmax = col[i] > cmax ? col[i] : cmax;
    lipc_free(col);
    return lipc_ops_err_up(sqrt(rmax * cmax), (long)ci * taps + (long)co * taps + 4);
}

/* linear node v: its output's bound per example, from its input's */
static void linear_l2(const run *r, const lipc_node *v, double s, const double *nx,
                      const double *din, double *dout)
{
    long k = linear_terms(v);
    double gam = gamma_d(k), a = abs_weight_norm(v, weight64(r, v));
    double nb = 0.0;
    const double *bias = bias64(r, v);
    if (bias) {
        int co = v->shape.d[0];
        for (int o = 0; o < co; o++)
            nb += bias[o] * bias[o];
        nb = lipc_ops_err_up(sqrt(nb * (double)(numel(v) / (size_t)co)), co + 3);
    }
    double fold = v->a.fold_identity ? 1.0 : 0.0, sn = sqrt((double)numel(v));
    for (int b = 0; b < r->n; b++)
        dout[b] = lipc_ops_err_up(
            s * din[b] + gam * ((a + fold) * nx[b] + nb) + FLUSH64 * sn * (double)k, 10);
}

/* the output v, a dense layer (the head): a bound per logit */
static void head_l2(const run *r, const lipc_node *v, const double *nx, const double *din,
                    double *logit_err)
{
    lipc_cpu *c = r->c;
    int m = v->shape.d[0], d = v->in[0]->shape.d[0];
    long k = linear_terms(v);
    bool norm = v->a.normalize;
    double gam = gamma_d(k), rho = norm ? gamma_d(k + 3) : 0.0;
    const double *w = c->p64 + param_offset(c->g, v, 0);
    const double *bias = bias64(r, v);
    for (int j = 0; j < m; j++) {
        double rn = 1.0; /* ||r_j||: exactly 1 when normalised */
        if (!norm) {
            double s = 0.0;
            for (int i = 0; i < d; i++)
                s += w[(size_t)j * d + i] * w[(size_t)j * d + i];
            rn = lipc_ops_err_up(sqrt(s), d + 3);
        }
        double ab = bias ? fabs(bias[j]) : 0.0;
        for (int b = 0; b < r->n; b++)
            logit_err[(size_t)b * m + j] =
                lipc_ops_err_up(rn * (din[b] + (gam * (1.0 + rho) + rho) * nx[b]) + gam * ab +
                                    FLUSH64 * (double)k,
                                12);
    }
}

/* s [ids]: each node's operator-norm bound (NaN: none); UNSUPPORTED when a
 * node this path needs one for has none, or the output is not dense */
static lipc_status node_bounds(const lipc_cpu *c, const double *sigma, double *s)
{
    const lipc_program *p = c->forward, *t = c->train;
    for (int i = 0; i < c->k.n_ids; i++)
        s[i] = NAN;
    for (int b = 0; b < t->n_bounds; b++)
        if (t->bounds[b].kind != LIPC_LIP_LOOSE)
            s[t->bounds[b].node->id] = sigma[b] >= 0.0 ? sigma[b] : INFINITY;
    if (c->g->output->op != LIPC_OP_DENSE)
        return LIPC_ERR_UNSUPPORTED;
    for (int i = 0; i < p->n_steps; i++) {
        const lipc_node *v = p->steps[i].node;
        bool needs = v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE ||
                     v->op == LIPC_OP_AVGPOOL;
        if (p->steps[i].op == LIPC_STEP_FORWARD && v != c->g->output && needs &&
            isnan(s[v->id]))
            return LIPC_ERR_UNSUPPORTED;
    }
    return LIPC_OK;
}

lipc_status lipc_cpu_predict_l2(lipc_cpu *c, const float *params, const double *sigma, int n,
                                const float *x, double *logits, double *logit_err)
{
    const lipc_program *p = c->forward;
    const lipc_graph *g = c->g;
    const lipc_node *out = g->output;
    double *s = lipc_malloc(sizeof(double) * (size_t)c->k.n_ids);
    double *d = lipc_calloc((size_t)c->k.n_ids * (size_t)n, sizeof(double));
    double *nx = lipc_malloc(sizeof(double) * (size_t)n);
    lipc_status st = s && d && nx ? node_bounds(c, sigma, s) : LIPC_ERR_NOMEM;
    run r;
    if (st == LIPC_OK)
        st = start_double(c, params, n, x, &r);
    for (int i = 0; st == LIPC_OK && i < p->n_steps; i++) {
        if (p->steps[i].op != LIPC_STEP_FORWARD)
            continue;
        const lipc_node *v = p->steps[i].node;
        /* the input's norms before the node runs (its output may reuse the
         * input's memory), the output's after */
        bool linear = v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE;
        if (linear || v->op == LIPC_OP_AVGPOOL)
            example_norms(&r, val64(&r, v->in[0]), numel(v->in[0]), nx);
        forward64(&r, v, val64(&r, v->in[0]), v->n_in > 1 ? val64(&r, v->in[1]) : NULL,
                  val64(&r, v), linear ? weight64(&r, v) : NULL, linear ? bias64(&r, v) : NULL);
        const double *din = d + (size_t)v->in[0]->id * n;
        double *dv = d + (size_t)v->id * n;
        double sn = sqrt((double)numel(v));
        switch (v->op) {
        case LIPC_OP_CONV2D:
        case LIPC_OP_DENSE:
            if (v == out)
                head_l2(&r, v, nx, din, logit_err);
            else
                linear_l2(&r, v, s[v->id], nx, din, dv);
            break;
        case LIPC_OP_SHIFT:
        case LIPC_OP_ADD: {
            const double *d1 = v->op == LIPC_OP_ADD ? d + (size_t)v->in[1]->id * n : NULL;
            example_norms(&r, val64(&r, v), numel(v), nx);
            for (int q = 0; q < n; q++)
                dv[q] = lipc_ops_err_up(
                    din[q] + (d1 ? d1[q] : 0.0) + gamma_d(1) * nx[q] + FLUSH64 * sn, 6);
            break;
        }
        case LIPC_OP_AVGPOOL: {
            long k = (long)v->a.kernel[0] * v->a.kernel[1];
            double gam = gamma_d(k + 2), sv = s[v->id];
            for (int q = 0; q < n; q++)
                dv[q] = lipc_ops_err_up(
                    sv * din[q] + gam * sv * nx[q] + FLUSH64 * sn * (double)(k + 2), 8);
            break;
        }
        case LIPC_OP_RELU:
        case LIPC_OP_FLATTEN:
        case LIPC_OP_PAD:
        case LIPC_OP_MINMAX:
            memcpy(dv, din, sizeof(double) * (size_t)n);
            break;
        case LIPC_OP_INPUT:
        case LIPC_OP_COUNT:
        default:
            st = LIPC_ERR_UNSUPPORTED;
            break;
        }
    }
    if (st == LIPC_OK)
        memcpy(logits, val64(&r, out), sizeof(double) * numel(out) * (size_t)n);
    lipc_free(s);
    lipc_free(d);
    lipc_free(nx);
    return st;
}
