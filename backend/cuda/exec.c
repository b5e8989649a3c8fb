/* backend/cuda/exec.c: the cuda target's driver.
 *
 * It runs a program step by step as the cpu driver does (backend/cpu/exec.c),
 * launching the model's kernels (emit.c) on a device (gpu.h): activations and
 * gradients in one device arena laid out by plan-memory; parameters, moments,
 * power-iteration vectors and gradients in device buffers that stay there
 * between training steps (lipc_gpu_sync_state copies them back).
 *
 * The host keeps what is small and wants double: the factor tree
 * (lipc_program_eval_bound), the loss on the n x classes logits
 * (lipc_ref_loss, exactly the reference's), the head's row normalisation and
 * the clipping factor. A step copies to the host the logits, the sigmas and
 * the gradient norm's partial sums, and back the logits' gradient and the
 * head's; everything of the size of the network stays on the device. Power
 * iteration normalises on the device (norm kernels write the norm where the
 * scaling kernel reads it), so it needs no copy until its sigmas.
 *
 * Errors: the first failing device call is kept and every later call of the
 * step is skipped; the entry point returns it (LIPC_ERR_UNSUPPORTED, with the
 * device's message on stderr).
 */
#include "backend/cuda/gpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    K_SUMSQ, K_DOT, K_FINISH, K_DIV, K_AXPY, K_ADAMW, K_SGD, K_FOLD_EYE, K_BIAS_ADD,
    K_BIAS_GRAD, K_FILL, K_GENERIC
};
static const char *const generic_names[K_GENERIC] = {
    "lipc_sumsq", "lipc_dot", "lipc_norm_finish", "lipc_div", "lipc_axpy", "lipc_adamw",
    "lipc_sgd", "lipc_fold_eye", "lipc_bias_add", "lipc_bias_grad", "lipc_fill"};

const char *const lipc_gconv_op_names[LIPC_GCONV_OPS] = {"forward", "backward-data",
                                                         "backward-filter"};

/* Per conv layer, operation and batch class (0: one example, 1: more): where
 * it runs, and what the measurement found. */
enum { WHERE_UNDECIDED, WHERE_EMITTED, WHERE_LIBRARY };
typedef struct conv_choice {
    unsigned char where;
    bool disagreed;             /* the library's result was off: not used */
    int n;                      /* the batch it was measured at */
    double emitted_s, library_s; /* seconds per call (0: not measured) */
} conv_choice;

struct lipc_gpu {
    lipc_gpu_dev *dev;
    const lipc_program *train, *forward;
    const lipc_graph *g;
    void **fn[LIPC_G_KINDS];    /* [n_ids] */
    void *gk[K_GENERIC];
    lipc_status fail;           /* the first device error of a call */
    size_t np, md, max_v;
    /* device */
    float *arena;
    size_t arena_cap;           /* floats */
    float *params, *opt_m, *opt_v, *vec, *grads;   /* the training state */
    float *pparams, *pvec;      /* predict's and lipschitz's own copies */
    float *head_r, *head_dr, *tmp, *scratch;
    double *partials, *norms;   /* [LIPC_GPU_PARTIALS], [n_bounds + 1] */
    /* host */
    double *r64, *w64, *dr64, *dw64, *hpart, *sigma, *dk;
    float *hf, *hw, *hvec;        /* [md], [md], [n_vec_elems] */
    double *logits64, *dlogits64;
    float *logitsf;
    size_t logits_cap;
    /* whose state the device holds, at which step; stale: the host's copy
     * is older */
    const lipc_train_state *owner;
    long owner_step;
    bool stale;
    /* library convolutions */
    lipc_conv_mode mode;
    bool tf32;
    lipc_gconv *geo;            /* [n_ids]: geo[id].id < 0 where no library can run it */
    conv_choice *choice;        /* [n_ids * LIPC_GCONV_OPS * 2] */
    float *weff;                /* [np]: folded conv weights with their identity */
    float *tune[4];             /* scratch of measurements, tune_cap floats each */
    size_t tune_cap;
};

/* ---- device calls with a sticky error ---- */

static void note_fail(lipc_gpu *c, lipc_status st)
{
    if (st != LIPC_OK && c->fail == LIPC_OK) {
        c->fail = st;
        fprintf(stderr, "lipc: cuda target: %s\n", c->dev->ops->error(c->dev));
    }
}

static void launch(lipc_gpu *c, void *k, long long items, const lipc_gargs *a)
{
    if (c->fail == LIPC_OK)
        note_fail(c, c->dev->ops->launch(c->dev, k, items, a));
}

static void upload(lipc_gpu *c, void *dst, const void *src, size_t bytes)
{
    if (c->fail == LIPC_OK)
        note_fail(c, c->dev->ops->upload(c->dev, dst, src, bytes));
}

static void download(lipc_gpu *c, void *dst, const void *src, size_t bytes)
{
    if (c->fail == LIPC_OK)
        note_fail(c, c->dev->ops->download(c->dev, dst, src, bytes));
    else
        memset(dst, 0, bytes);
}

static void zero(lipc_gpu *c, void *dst, size_t bytes)
{
    if (c->fail == LIPC_OK)
        note_fail(c, c->dev->ops->zero(c->dev, dst, bytes));
}

static lipc_status dev_alloc(lipc_gpu *c, size_t bytes, void *out)
{
    void *p = NULL;
    lipc_status st = c->dev->ops->alloc(c->dev, bytes ? bytes : 1, &p);
    memcpy(out, &p, sizeof p);
    return st;
}

/* ---- setup ---- */

void lipc_gpu_free(lipc_gpu *c)
{
    if (!c)
        return;
    if (c->dev) {
        void *dbufs[] = {c->arena, c->params, c->opt_m,  c->opt_v,   c->vec,  c->grads,
                         c->pparams, c->pvec, c->head_r, c->head_dr, c->tmp, c->scratch,
                         c->partials, c->norms, c->weff, c->tune[0], c->tune[1],
                         c->tune[2], c->tune[3]};
        for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++)
            if (dbufs[i])
                c->dev->ops->release(c->dev, dbufs[i]);
        c->dev->ops->destroy(c->dev);
    }
    void *hbufs[] = {c->fn[0], c->fn[1], c->fn[2], c->r64, c->w64, c->dr64, c->dw64, c->hpart,
                     c->sigma, c->dk, c->hf, c->hw, c->hvec, c->logits64, c->dlogits64, c->logitsf,
                     c->geo, c->choice};
    for (size_t i = 0; i < sizeof hbufs / sizeof *hbufs; i++)
        lipc_free(hbufs[i]);
    lipc_free(c);
}

lipc_status lipc_gpu_new(const lipc_program *train, const lipc_program *forward,
                         lipc_gpu_dev *dev, const char *image, lipc_diags *d, lipc_gpu **out)
{
    *out = NULL;
    LIPC_ASSERT(train->entry == LIPC_ENTRY_TRAIN && train->head && forward->g == train->g);
    lipc_gpu *c = lipc_calloc(1, sizeof *c);
    if (!c) {
        dev->ops->destroy(dev);
        return LIPC_ERR_NOMEM;
    }
    c->dev = dev;
    c->train = train;
    c->forward = forward;
    c->g = train->g;
    int n_ids = c->g->next_id;
    bool *has[LIPC_G_KINDS];
    lipc_status st = LIPC_OK;
    for (int k = 0; k < LIPC_G_KINDS; k++) {
        c->fn[k] = lipc_calloc((size_t)n_ids + 1, sizeof(void *));
        has[k] = lipc_calloc((size_t)n_ids + 1, sizeof(bool));
        if (!c->fn[k] || !has[k])
            st = LIPC_ERR_NOMEM;
    }
    lipc_buf src;
    lipc_buf_init(&src);
    if (st == LIPC_OK)
        st = lipc_cuda_emit(train, has, &src, d);
    if (st == LIPC_OK && image && dev->ops->load_image)
        st = dev->ops->load_image(dev, image, d);
    else if (st == LIPC_OK)
        st = dev->ops->load(dev, lipc_buf_str(&src), d);
    lipc_buf_free(&src);
    for (int k = 0; k < LIPC_G_KINDS && st == LIPC_OK; k++)
        for (const lipc_node *v = c->g->first; v; v = v->next) {
            char name[64];
            snprintf(name, sizeof name, "%s_%d", lipc_gkind_names[k], v->id);
            if (has[k][v->id] && !(c->fn[k][v->id] = dev->ops->kernel(dev, name))) {
                lipc_diag_error(d, LIPC_NO_LOC, "the cuda target lost its kernel %s", name);
                st = LIPC_ERR_UNSUPPORTED;
                break;
            }
        }
    for (int i = 0; i < K_GENERIC && st == LIPC_OK; i++)
        if (!(c->gk[i] = dev->ops->kernel(dev, generic_names[i]))) {
            lipc_diag_error(d, LIPC_NO_LOC, "the cuda target lost its kernel %s",
                            generic_names[i]);
            st = LIPC_ERR_UNSUPPORTED;
        }
    for (int k = 0; k < LIPC_G_KINDS; k++)
        lipc_free(has[k]);
    if (st != LIPC_OK) {
        lipc_gpu_free(c);
        return st;
    }
    c->np = c->g->n_param_elems;
    const char *tf32 = getenv("LIPC_CUDA_TF32");
    c->tf32 = !(tf32 && strcmp(tf32, "0") == 0);
    const char *mode = getenv("LIPC_CUDA_CONV");
    c->mode = mode && strcmp(mode, "emitted") == 0   ? LIPC_CONV_EMITTED
              : mode && strcmp(mode, "library") == 0 ? LIPC_CONV_LIBRARY
                                                     : LIPC_CONV_AUTO;
    c->geo = lipc_calloc((size_t)n_ids + 1, sizeof *c->geo);
    c->choice = lipc_calloc((size_t)(n_ids + 1) * LIPC_GCONV_OPS * 2, sizeof *c->choice);
    if (!c->geo || !c->choice) {
        lipc_gpu_free(c);
        return LIPC_ERR_NOMEM;
    }
    for (const lipc_node *v = c->g->first; v; v = v->next) {
        lipc_gconv *q = &c->geo[v->id];
        q->id = -1;
        if (v->op != LIPC_OP_CONV2D)
            continue;
        lipc_shape in = v->in[0]->shape;
        *q = (lipc_gconv){v->id, in.d[0], in.d[1], in.d[2], v->shape.d[0], v->shape.d[1],
                          v->shape.d[2], v->a.kernel[0], v->a.kernel[1], v->a.stride[0],
                          v->a.stride[1], v->a.pad[0], v->a.pad[2]};
        /* a library pads both sides alike: others stay with the emitted kernel */
        bool symmetric = v->a.pad[0] == v->a.pad[1] && v->a.pad[2] == v->a.pad[3] &&
                         q->oh == (q->h + 2 * q->ph - q->kh) / q->sh + 1 &&
                         q->ow == (q->w + 2 * q->pw - q->kw) / q->sw + 1;
        if (!symmetric)
            q->id = -1;
    }
    c->max_v = 1;
    for (int b = 0; b < train->n_bounds; b++) {
        if (train->bounds[b].v_len > c->max_v)
            c->max_v = train->bounds[b].v_len;
        if (train->bounds[b].u_len > c->max_v)
            c->max_v = train->bounds[b].u_len;
    }
    const lipc_node *h = train->head;
    c->md = (size_t)h->shape.d[0] * (size_t)h->in[0]->shape.d[0];
    size_t np = c->np, nv = train->n_vec_elems, nb = (size_t)train->n_bounds + 1;
    float **fbufs[] = {&c->params, &c->opt_m, &c->opt_v, &c->grads, &c->pparams};
    for (size_t i = 0; i < sizeof fbufs / sizeof *fbufs && st == LIPC_OK; i++)
        st = dev_alloc(c, sizeof(float) * (np + 1), fbufs[i]);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * (np + 1), &c->weff);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * (nv + 1), &c->vec);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * (nv + 1), &c->pvec);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * c->md, &c->head_r);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * c->md, &c->head_dr);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * c->md, &c->tmp);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(float) * c->max_v, &c->scratch);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(double) * LIPC_GPU_PARTIALS, &c->partials);
    if (st == LIPC_OK)
        st = dev_alloc(c, sizeof(double) * nb, &c->norms);
    c->r64 = lipc_calloc(c->md, sizeof(double));
    c->w64 = lipc_calloc(c->md, sizeof(double));
    c->dr64 = lipc_calloc(c->md, sizeof(double));
    c->dw64 = lipc_calloc(c->md, sizeof(double));
    c->hf = lipc_calloc(c->md, sizeof(float));
    c->hw = lipc_calloc(c->md, sizeof(float));
    c->hpart = lipc_calloc(LIPC_GPU_PARTIALS, sizeof(double));
    c->sigma = lipc_calloc(nb, sizeof(double));
    c->dk = lipc_calloc(nb, sizeof(double));
    c->hvec = lipc_calloc(nv + 1, sizeof(float));
    if (st == LIPC_OK && (!c->r64 || !c->w64 || !c->dr64 || !c->dw64 || !c->hf || !c->hw || !c->hpart ||
                          !c->sigma || !c->dk || !c->hvec))
        st = LIPC_ERR_NOMEM;
    if (st != LIPC_OK) {
        if (st != LIPC_ERR_NOMEM)
            lipc_diag_error(d, LIPC_NO_LOC, "cuda target: %s", dev->ops->error(dev));
        lipc_gpu_free(c);
        return st;
    }
    *out = c;
    return LIPC_OK;
}

/* The arena for a batch of n under program p, and the loss buffers. */
static lipc_status reserve(lipc_gpu *c, const lipc_program *p, int n)
{
    size_t need = p->arena_per_example * (size_t)n + 1;
    if (need > c->arena_cap) {
        if (c->arena)
            c->dev->ops->release(c->dev, c->arena);
        c->arena = NULL;
        c->arena_cap = 0;
        lipc_status st = dev_alloc(c, sizeof(float) * need, &c->arena);
        if (st != LIPC_OK) {
            c->arena = NULL;
            return st;
        }
        c->arena_cap = need;
    }
    size_t nl = (size_t)n * (size_t)p->g->classes + 1;
    if (nl > c->logits_cap) {
        lipc_free(c->logits64);
        lipc_free(c->dlogits64);
        lipc_free(c->logitsf);
        c->logits64 = lipc_malloc(sizeof(double) * nl);
        c->dlogits64 = lipc_malloc(sizeof(double) * nl);
        c->logitsf = lipc_malloc(sizeof(float) * nl);
        c->logits_cap = c->logits64 && c->dlogits64 && c->logitsf ? nl : 0;
        if (!c->logits_cap)
            return LIPC_ERR_NOMEM;
    }
    return LIPC_OK;
}

/* ---- values ---- */

typedef struct run {
    lipc_gpu *c;
    const lipc_program *p;
    float *params, *vec;        /* device */
    int n;
    bool training;              /* batch convolutions of a training step: TF32 allowed */
} run;

static size_t numel(const lipc_node *v) { return (size_t)lipc_shape_numel(v->shape); }

static float *act(const run *r, const lipc_node *v)
{
    return r->c->arena + r->p->act_offset[v->id] * (size_t)r->n;
}

static float *grad(const run *r, const lipc_node *v)
{
    LIPC_ASSERT(r->p->grad_offset[v->id] != (size_t)-1);
    return r->c->arena + r->p->grad_offset[v->id] * (size_t)r->n;
}

static size_t param_offset(const lipc_graph *g, const lipc_node *v, int i)
{
    return g->params[v->param[i]].offset;
}

static float *weight(const run *r, const lipc_node *v)
{
    if (v->op == LIPC_OP_DENSE && v->a.normalize)
        return r->c->head_r;
    return r->params + param_offset(r->c->g, v, 0);
}

static float *bias(const run *r, const lipc_node *v)
{
    bool has = (v->op == LIPC_OP_CONV2D || v->op == LIPC_OP_DENSE) && v->a.bias;
    return has ? r->params + param_offset(r->c->g, v, 1) : NULL;
}

static lipc_gargs args0(long long n)
{
    lipc_gargs a;
    memset(&a, 0, sizeof a);
    a.n = n;
    return a;
}

/* ---- convolutions: the emitted kernel or the device's library ---- */

/* One conv operation (gpu.h's lipc_gconv_op) the emitted way: a, b, c as
 * the library takes them; bias (FWD) or dbias (BWD_FILTER) fused. */
static void conv_emitted(lipc_gpu *c, const lipc_node *v, lipc_gconv_op op, int n,
                         const float *a, const float *b, float *out, double alpha, float *bias)
{
    lipc_gargs g = args0(n);
    const lipc_gconv *q = &c->geo[v->id];
    if (op == LIPC_GCONV_FWD) {
        g.p[0] = (void *)a;
        g.p[2] = out;
        g.p[3] = (void *)b;
        g.p[4] = bias;
        launch(c, c->fn[LIPC_G_FWD][v->id], (long long)n * q->co * q->oh * q->ow, &g);
    } else if (op == LIPC_GCONV_BWD_DATA) {
        g.p[0] = (void *)a;
        g.p[1] = out;
        g.p[5] = (void *)b;
        launch(c, c->fn[LIPC_G_BWD][v->id], (long long)n * q->ci * q->h * q->w, &g);
    } else {
        g.p[0] = (void *)a;
        g.p[1] = (void *)b;
        g.p[2] = out;
        g.p[3] = bias;
        g.s[0] = alpha;
        launch(c, c->fn[LIPC_G_WGRAD][v->id], (long long)q->co * q->ci * q->kh * q->kw, &g);
    }
}

/* The same through the library: weff is the weight with the folded identity
 * (FWD, BWD_DATA of a folded layer), bias added or dbias summed apart. */
static void conv_library(lipc_gpu *c, const lipc_node *v, lipc_gconv_op op, int n, bool tf32,
                         const float *a, const float *b, const float *weff, float *out,
                         double alpha, float *bias)
{
    const lipc_gconv *q = &c->geo[v->id];
    if (c->fail != LIPC_OK)
        return;
    const float *w = op != LIPC_GCONV_BWD_FILTER && v->a.fold_identity ? weff : b;
    double beta = op == LIPC_GCONV_FWD ? 0.0 : 1.0;
    note_fail(c, c->dev->ops->conv(c->dev, q, n, op, tf32, a, w, out, alpha, beta));
    size_t hw = (size_t)q->oh * q->ow;
    if (bias && op == LIPC_GCONV_FWD) {
        lipc_gargs g = args0((long long)n * q->co * (long long)hw);
        g.p[0] = out;
        g.p[1] = bias;
        g.s[0] = q->co;
        g.s[1] = (double)hw;
        launch(c, c->gk[K_BIAS_ADD], g.n, &g);
    } else if (bias && op == LIPC_GCONV_BWD_FILTER) {
        lipc_gargs g = args0(n);
        g.p[0] = (void *)b;
        g.p[1] = bias;
        g.s[0] = q->co;
        g.s[1] = (double)hw;
        g.s[2] = alpha;
        launch(c, c->gk[K_BIAS_GRAD], q->co, &g);
    }
}

static double max_abs_diff(const float *x, const float *y, size_t n, double *scale)
{
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - y[i]));
        m = fmax(m, fabs((double)y[i]));
    }
    *scale = m;
    return d;
}

/* Measures both ways of one operation on test data at batch n, checks that
 * they agree, and records the faster. */
static void conv_tune(lipc_gpu *c, const lipc_node *v, lipc_gconv_op op, int n, bool tf32,
                      conv_choice *ch)
{
    const lipc_gconv *q = &c->geo[v->id];
    size_t in_n = (size_t)n * q->ci * q->h * q->w, out_n = (size_t)n * q->co * q->oh * q->ow;
    size_t nw = (size_t)q->co * q->ci * q->kh * q->kw;
    size_t la = op == LIPC_GCONV_BWD_DATA ? out_n : in_n;
    size_t lb = op == LIPC_GCONV_BWD_FILTER ? out_n : nw;
    size_t lc = op == LIPC_GCONV_FWD ? out_n : op == LIPC_GCONV_BWD_DATA ? in_n : nw;
    size_t need = la > lb ? la : lb;
    need = need > lc ? need : lc;
    ch->where = WHERE_EMITTED;
    ch->n = n;
    if (need > c->tune_cap) {
        for (int i = 0; i < 4; i++) {
            if (c->tune[i])
                c->dev->ops->release(c->dev, c->tune[i]);
            c->tune[i] = NULL;
        }
        c->tune_cap = 0;
        for (int i = 0; i < 4; i++)
            if (dev_alloc(c, sizeof(float) * need, &c->tune[i]) != LIPC_OK)
                return; /* no room to measure: the emitted kernel */
        c->tune_cap = need;
    }
    float *a = c->tune[0], *b = c->tune[1], *out = c->tune[2], *weff = c->tune[3];
    lipc_gargs f = args0((long long)la);
    f.p[0] = a;
    f.s[0] = 1;
    launch(c, c->gk[K_FILL], f.n, &f);
    f = args0((long long)lb);
    f.p[0] = b;
    f.s[0] = 2;
    launch(c, c->gk[K_FILL], f.n, &f);
    if (v->a.fold_identity && op != LIPC_GCONV_BWD_FILTER) {
        lipc_gargs e = args0((long long)nw);
        e.p[0] = weff;
        e.p[1] = b;
        e.s[0] = (double)q->ci * q->kh * q->kw;
        e.s[1] = (double)q->kh * q->kw;
        e.s[2] = (double)v->a.pad[0] * q->kw + v->a.pad[2];
        launch(c, c->gk[K_FOLD_EYE], e.n, &e);
    }
    float *want = lipc_malloc(sizeof(float) * (lc + 1)), *got = lipc_malloc(sizeof(float) * (lc + 1));
    if (!want || !got) {
        lipc_free(want);
        lipc_free(got);
        return;
    }
    /* agreement, from zeroed outputs */
    zero(c, out, sizeof(float) * lc);
    conv_emitted(c, v, op, n, a, b, out, 1.0, NULL);
    download(c, want, out, sizeof(float) * lc);
    zero(c, out, sizeof(float) * lc);
    conv_library(c, v, op, n, tf32, a, b, weff, out, 1.0, NULL);
    download(c, got, out, sizeof(float) * lc);
    double scale, diff = max_abs_diff(got, want, lc, &scale);
    lipc_free(want);
    lipc_free(got);
    if (c->fail != LIPC_OK) {
        /* the library failed on this layer: keep the emitted kernel, go on */
        fprintf(stderr, "lipc: cuda: the library's %s of %s failed; using the emitted kernel\n",
                lipc_gconv_op_names[op], v->name);
        c->fail = LIPC_OK;
        return;
    }
    if (!(diff <= (tf32 ? 2e-2 : 1e-3) * (scale > 0 ? scale : 1.0))) {
        ch->disagreed = true;
        fprintf(stderr, "lipc: cuda: the library's %s of %s differs from the emitted kernel's "
                        "by %.3g (largest value %.3g): using the emitted kernel\n",
                lipc_gconv_op_names[op], v->name, diff, scale);
        return;
    }
    /* speed: the median-free minimum of three calls each, after a warm-up */
    double best[2] = {INFINITY, INFINITY};
    for (int way = 0; way < 2; way++)
        for (int rep = 0; rep < 4; rep++) {
            double t0 = c->dev->ops->now(c->dev);
            if (way == 0)
                conv_emitted(c, v, op, n, a, b, out, 1.0, NULL);
            else
                conv_library(c, v, op, n, tf32, a, b, weff, out, 1.0, NULL);
            double t = c->dev->ops->now(c->dev) - t0;
            if (rep > 0 && t < best[way])
                best[way] = t;
        }
    ch->emitted_s = best[0];
    ch->library_s = best[1];
    ch->where = c->mode == LIPC_CONV_LIBRARY || best[1] < best[0] ? WHERE_LIBRARY
                                                                   : WHERE_EMITTED;
}

/* Where conv operation op of v runs at batch n (measured on first use). */
static bool use_library(const run *r, const lipc_node *v, lipc_gconv_op op, int n)
{
    lipc_gpu *c = r->c;
    if (v->op != LIPC_OP_CONV2D || !c->dev->ops->conv || c->geo[v->id].id < 0 ||
        c->mode == LIPC_CONV_EMITTED)
        return false;
    conv_choice *ch = &c->choice[((size_t)v->id * LIPC_GCONV_OPS + op) * 2 + (n > 1)];
    if (ch->where == WHERE_UNDECIDED && c->fail == LIPC_OK)
        conv_tune(c, v, op, n, r->training && c->tf32 && n > 1, ch);
    return ch->where == WHERE_LIBRARY;
}

/* The weights with their folded identity, for the library (after the
 * parameters changed). */
static void prepare_weff(const run *r)
{
    lipc_gpu *c = r->c;
    if (!c->dev->ops->conv || c->mode == LIPC_CONV_EMITTED)
        return;
    for (const lipc_node *v = c->g->first; v; v = v->next) {
        if (v->op != LIPC_OP_CONV2D || !v->a.fold_identity || c->geo[v->id].id < 0)
            continue;
        const lipc_gconv *q = &c->geo[v->id];
        size_t off = c->g->params[v->param[0]].offset;
        lipc_gargs e = args0((long long)q->co * q->ci * q->kh * q->kw);
        e.p[0] = c->weff + off;
        e.p[1] = r->params + off;
        e.s[0] = (double)q->ci * q->kh * q->kw;
        e.s[1] = (double)q->kh * q->kw;
        e.s[2] = (double)v->a.pad[0] * q->kw + v->a.pad[2];
        launch(c, c->gk[K_FOLD_EYE], e.n, &e);
    }
}

static float *weff_of(const run *r, const lipc_node *v)
{
    return r->c->weff + param_offset(r->c->g, v, 0);
}

static void forward_into(const run *r, const lipc_node *v, int n, float *in0, float *in1,
                         float *out, float *b)
{
    if (use_library(r, v, LIPC_GCONV_FWD, n)) {
        conv_library(r->c, v, LIPC_GCONV_FWD, n, r->training && r->c->tf32 && n > 1, in0,
                     weight(r, v), weff_of(r, v), out, 1.0, b);
        return;
    }
    lipc_gargs a = args0(n);
    a.p[0] = in0;
    a.p[1] = in1;
    a.p[2] = out;
    a.p[3] = v->n_param ? weight(r, v) : NULL;
    a.p[4] = b;
    launch(r->c, r->c->fn[LIPC_G_FWD][v->id], (long long)n * (long long)numel(v), &a);
}

/* din += A^T dout (conv, dense) or J^T dout */
static void adjoint(const run *r, const lipc_node *v, int n, float *dout, float *din0,
                    float *din1)
{
    if (din0 && use_library(r, v, LIPC_GCONV_BWD_DATA, n)) {
        conv_library(r->c, v, LIPC_GCONV_BWD_DATA, n, r->training && r->c->tf32 && n > 1, dout,
                     weight(r, v), weff_of(r, v), din0, 1.0, NULL);
        return;
    }
    lipc_gargs a = args0(n);
    a.p[0] = dout;
    a.p[1] = din0;
    a.p[2] = din1;
    if (v->op != LIPC_OP_CONV2D && v->op != LIPC_OP_DENSE) {
        a.p[3] = act(r, v->in[0]);
        a.p[4] = act(r, v);
    }
    a.p[5] = v->n_param ? weight(r, v) : NULL;
    launch(r->c, r->c->fn[LIPC_G_BWD][v->id], (long long)n * (long long)numel(v->in[0]), &a);
}

static void wgrad(const run *r, const lipc_node *v, int n, float *x, float *dout, float *dw,
                  float *db, double scale)
{
    if (use_library(r, v, LIPC_GCONV_BWD_FILTER, n)) {
        conv_library(r->c, v, LIPC_GCONV_BWD_FILTER, n, r->training && r->c->tf32 && n > 1, x,
                     dout, NULL, dw, scale, db);
        return;
    }
    const lipc_graph *g = r->c->g;
    lipc_gargs a = args0(n);
    a.p[0] = x;
    a.p[1] = dout;
    a.p[2] = dw;
    a.p[3] = db;
    a.s[0] = scale;
    launch(r->c, r->c->fn[LIPC_G_WGRAD][v->id], (long long)g->params[v->param[0]].numel, &a);
}

void lipc_gpu_set_conv_mode(lipc_gpu *c, lipc_conv_mode mode)
{
    c->mode = mode;
    size_t n = (size_t)(c->g->next_id + 1) * LIPC_GCONV_OPS * 2;
    memset(c->choice, 0, sizeof *c->choice * n);
}

void lipc_gpu_set_tf32(lipc_gpu *c, bool allow) { c->tf32 = allow; }

void lipc_gpu_describe_choices(const lipc_gpu *c, lipc_buf *out)
{
    for (const lipc_node *v = c->g->first; v; v = v->next)
        for (int op = 0; op < LIPC_GCONV_OPS; op++)
            for (int cls = 0; cls < 2; cls++) {
                const conv_choice *ch = &c->choice[((size_t)v->id * LIPC_GCONV_OPS + op) * 2 + cls];
                if (ch->where == WHERE_UNDECIDED)
                    continue;
                lipc_buf_printf(out, "%-40s %-15s batch %-4d %-8s", v->name,
                                lipc_gconv_op_names[op], ch->n,
                                ch->where == WHERE_LIBRARY ? "library" : "emitted");
                if (ch->disagreed)
                    lipc_buf_puts(out, "  (the library's result disagreed)");
                else if (ch->library_s > 0)
                    lipc_buf_printf(out, "  emitted %.3f ms, library %.3f ms",
                                    1e3 * ch->emitted_s, 1e3 * ch->library_s);
                lipc_buf_putc(out, '\n');
            }
}

/* dst[0] = ||x|| (device double) */
static void norm_into(lipc_gpu *c, const float *x, size_t len, double *dst)
{
    lipc_gargs a = args0((long long)len);
    a.p[0] = (void *)x;
    a.p[1] = c->partials;
    launch(c, c->gk[K_SUMSQ], LIPC_GPU_PARTIALS, &a);
    lipc_gargs f = args0(1);
    f.p[0] = c->partials;
    f.p[1] = dst;
    launch(c, c->gk[K_FINISH], 1, &f);
}

/* y = x / *den; where *den is 0: y unchanged (keep) or zeros */
static void divide(lipc_gpu *c, float *y, const float *x, size_t len, double *den, bool keep)
{
    lipc_gargs a = args0((long long)len);
    a.p[0] = y;
    a.p[1] = (void *)x;
    a.p[2] = den;
    a.s[0] = keep ? 1.0 : 0.0;
    launch(c, c->gk[K_DIV], (long long)len, &a);
}

static void axpy(lipc_gpu *c, float *y, const float *x, size_t len, double s)
{
    lipc_gargs a = args0((long long)len);
    a.p[0] = y;
    a.p[1] = (void *)x;
    a.s[0] = s;
    launch(c, c->gk[K_AXPY], (long long)len, &a);
}

/* ||x|| of a device vector, summed on the host in double */
static double host_norm(lipc_gpu *c, const float *x, size_t len)
{
    lipc_gargs a = args0((long long)len);
    a.p[0] = (void *)x;
    a.p[1] = c->partials;
    launch(c, c->gk[K_SUMSQ], LIPC_GPU_PARTIALS, &a);
    download(c, c->hpart, c->partials, sizeof(double) * LIPC_GPU_PARTIALS);
    double s = 0.0;
    for (int i = 0; i < LIPC_GPU_PARTIALS; i++)
        s += c->hpart[i];
    return sqrt(s);
}

/* The head's effective rows from its weight w (host floats) into head_r,
 * with w64 and r64 kept for the loss. */
static void prepare_head(lipc_gpu *c, const lipc_program *p, const float *w)
{
    lipc_head_rows(p->head ? p->head : c->train->head, w, c->w64, c->r64);
    for (size_t i = 0; i < c->md; i++)
        c->hf[i] = (float)c->r64[i];
    upload(c, c->head_r, c->hf, sizeof(float) * c->md);
}

/* The head weight as it is on the device. */
static void prepare_head_device(const run *r)
{
    lipc_gpu *c = r->c;
    const lipc_node *h = c->train->head;
    download(c, c->hw, r->params + param_offset(c->g, h, 0), sizeof(float) * c->md);
    prepare_head(c, r->p, c->hw);
}

/* Power iteration on A^T A for bound b, as the cpu driver's, normalising on
 * the device; sigma = ||A v|| lands in norms[b]. */
static void power_iter(const run *r, int b, int iters)
{
    lipc_gpu *c = r->c;
    const lipc_bound *bd = &r->p->bounds[b];
    const lipc_node *v = bd->node;
    float *vv = r->vec + bd->v_offset, *u = r->vec + bd->u_offset;
    double *tmpn = c->norms + r->p->n_bounds;
    norm_into(c, vv, bd->v_len, tmpn);
    divide(c, vv, vv, bd->v_len, tmpn, true);
    for (int it = 0; it < iters; it++) {
        forward_into(r, v, 1, vv, NULL, u, NULL);
        zero(c, c->scratch, sizeof(float) * bd->v_len);
        adjoint(r, v, 1, u, c->scratch, NULL);
        norm_into(c, c->scratch, bd->v_len, tmpn);
        divide(c, vv, c->scratch, bd->v_len, tmpn, true);
    }
    forward_into(r, v, 1, vv, NULL, u, NULL);
    norm_into(c, u, bd->u_len, c->norms + b);
    divide(c, u, u, bd->u_len, c->norms + b, false);
}

/* Vectors that are zero (a new run) start from the cpu driver's random ones. */
static void seed_vectors(const lipc_program *p, float *vec)
{
    for (int b = 0; b < p->n_bounds; b++) {
        const lipc_bound *bd = &p->bounds[b];
        if (bd->kind != LIPC_LIP_OPNORM)
            continue;
        double s = 0.0;
        for (size_t i = 0; i < bd->v_len; i++)
            s += (double)vec[bd->v_offset + i] * vec[bd->v_offset + i];
        if (s > 0.0 && isfinite(s))
            continue;
        lipc_rng rng;
        lipc_power_iter_rng(b, &rng);
        for (size_t i = 0; i < bd->v_len; i++)
            vec[bd->v_offset + i] = (float)lipc_rng_normal(&rng);
    }
}

static void upload_vectors(lipc_gpu *c, const lipc_program *p, float *dst, const float *src)
{
    memcpy(c->hvec, src, sizeof(float) * p->n_vec_elems);
    seed_vectors(p, c->hvec);
    upload(c, dst, c->hvec, sizeof(float) * p->n_vec_elems);
}

/* ---- entry points ---- */

/* The device copy of params: the training state's when params are its
 * (newer on the device), else an upload. */
static float *device_params(lipc_gpu *c, const float *params)
{
    if (c->owner && params == c->owner->params && c->owner->step == c->owner_step)
        return c->params;
    upload(c, c->pparams, params, sizeof(float) * c->np);
    return c->pparams;
}

lipc_status lipc_gpu_predict(lipc_gpu *c, const float *params, int n, const float *x,
                             float *logits)
{
    const lipc_program *p = c->forward;
    lipc_status st = reserve(c, p, n);
    if (st != LIPC_OK)
        return st;
    c->fail = LIPC_OK;
    run r = {c, p, device_params(c, params), NULL, n, false};
    prepare_head_device(&r);
    prepare_weff(&r);
    const lipc_graph *g = c->g;
    upload(c, act(&r, g->input), x, sizeof(float) * numel(g->input) * (size_t)n);
    for (int s = 0; s < p->n_steps; s++)
        if (p->steps[s].op == LIPC_STEP_FORWARD) {
            const lipc_node *v = p->steps[s].node;
            forward_into(&r, v, n, act(&r, v->in[0]), v->n_in > 1 ? act(&r, v->in[1]) : NULL,
                         act(&r, v), v->n_param ? bias(&r, v) : NULL);
        }
    download(c, logits, act(&r, g->output), sizeof(float) * numel(g->output) * (size_t)n);
    return c->fail;
}

static void upload_state(lipc_gpu *c, lipc_train_state *st)
{
    size_t bytes = sizeof(float) * c->np;
    upload(c, c->params, st->params, bytes);
    upload(c, c->opt_m, st->opt_m, bytes);
    upload(c, c->opt_v, st->opt_v, bytes);
    upload_vectors(c, c->train, c->vec, st->vec);
    c->owner = st;
    c->owner_step = st->step;
    c->stale = false;
}

lipc_status lipc_gpu_sync_state(lipc_gpu *c, lipc_train_state *st)
{
    if (c->owner != st || !c->stale || st->step != c->owner_step)
        return LIPC_OK;
    c->fail = LIPC_OK;
    size_t bytes = sizeof(float) * c->np;
    download(c, st->params, c->params, bytes);
    download(c, st->opt_m, c->opt_m, bytes);
    download(c, st->opt_v, c->opt_v, bytes);
    download(c, st->vec, c->vec, sizeof(float) * c->train->n_vec_elems);
    if (c->fail == LIPC_OK)
        c->stale = false;
    return c->fail;
}

static void backward(const run *r, const lipc_step *s)
{
    lipc_gpu *c = r->c;
    const lipc_node *v = s->node;
    float *din[LIPC_MAX_INPUTS] = {NULL, NULL};
    bool any = false;
    for (int i = 0; i < v->n_in; i++)
        if (s->need_din[i]) {
            din[i] = grad(r, v->in[i]);
            if (s->zero_din[i])
                zero(c, din[i], sizeof(float) * numel(v->in[i]) * (size_t)r->n);
            any = true;
        }
    if (any)
        adjoint(r, v, r->n, grad(r, v), din[0], din[1]);
    if (!c->fn[LIPC_G_WGRAD][v->id])
        return;
    const lipc_graph *g = c->g;
    float *db = v->a.bias ? c->grads + param_offset(g, v, 1) : NULL;
    if (v->op == LIPC_OP_DENSE && v->a.normalize) {
        /* through the row normalisation, on the host in double */
        zero(c, c->head_dr, sizeof(float) * c->md);
        wgrad(r, v, r->n, act(r, v->in[0]), grad(r, v), c->head_dr, db, 1.0);
        download(c, c->hf, c->head_dr, sizeof(float) * c->md);
        lipc_head_rows_backward(v, c->w64, c->hf, c->dr64, c->dw64);
        for (size_t i = 0; i < c->md; i++)
            c->hf[i] = (float)c->dw64[i];
        upload(c, c->tmp, c->hf, sizeof(float) * c->md);
        axpy(c, c->grads + param_offset(g, v, 0), c->tmp, c->md, 1.0);
    } else {
        wgrad(r, v, r->n, act(r, v->in[0]), grad(r, v), c->grads + param_offset(g, v, 0), db,
              1.0);
    }
}

static lipc_status train_step(lipc_gpu *c, lipc_train_state *st, int n, const float *x,
                              const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                              double *grads_out)
{
    const lipc_program *p = c->train;
    const lipc_graph *g = c->g;
    if (st->n_scaled > 0)
        return LIPC_ERR_UNSUPPORTED; /* the device keeps no a and U (cli/run.c says so) */
    lipc_status status = reserve(c, p, n);
    if (status != LIPC_OK)
        return status;
    if (grads_out && (status = lipc_gpu_sync_state(c, st)) != LIPC_OK)
        return status;
    c->fail = LIPC_OK;
    if (grads_out || c->owner != st || c->owner_step != st->step)
        upload_state(c, st);
    run r = {c, p, c->params, c->vec, n, true};
    size_t np = c->np;
    zero(c, c->grads, sizeof(float) * np);
    prepare_head_device(&r);
    prepare_weff(&r);
    upload(c, act(&r, g->input), x, sizeof(float) * numel(g->input) * (size_t)n);
    memset(out, 0, sizeof *out);
    const lipc_node *head = p->head;
    int m = head->shape.d[0];
    double k_sub = 1.0, dl_dk = 0.0, gscale = 1.0;

    for (int s = 0; s < p->n_steps && status == LIPC_OK && c->fail == LIPC_OK; s++) {
        const lipc_step *stp = &p->steps[s];
        switch (stp->op) {
        case LIPC_STEP_FORWARD: {
            const lipc_node *v = stp->node;
            forward_into(&r, v, n, act(&r, v->in[0]), v->n_in > 1 ? act(&r, v->in[1]) : NULL,
                         act(&r, v), v->n_param ? bias(&r, v) : NULL);
            break;
        }
        case LIPC_STEP_POWER_ITER:
            power_iter(&r, stp->bound, h->power_iters);
            break;
        case LIPC_STEP_BOUND:
            download(c, c->sigma, c->norms, sizeof(double) * (size_t)p->n_bounds);
            k_sub = lipc_program_eval_bound(p, c->sigma, c->dk);
            break;
        case LIPC_STEP_LOSS: {
            size_t nl = (size_t)n * (size_t)m;
            download(c, c->logitsf, act(&r, g->output), sizeof(float) * nl);
            status = lipc_head_loss(head, h, n, c->logitsf, y, k_sub, c->w64, c->r64,
                                    c->logits64, c->dlogits64, c->dr64, c->logitsf, c->dw64, out,
                                    &dl_dk);
            if (status != LIPC_OK)
                break;
            upload(c, grad(&r, g->output), c->logitsf, sizeof(float) * nl);
            for (size_t i = 0; i < c->md; i++)
                c->hf[i] = (float)c->dw64[i];
            upload(c, c->tmp, c->hf, sizeof(float) * c->md);
            axpy(c, c->grads + param_offset(g, head, 0), c->tmp, c->md, 1.0);
            break;
        }
        case LIPC_STEP_BACKWARD:
            backward(&r, stp);
            break;
        case LIPC_STEP_SIGMA_GRAD: {
            const lipc_bound *bd = &p->bounds[stp->bound];
            double scale = dl_dk * c->dk[stp->bound];
            if (scale != 0.0)
                wgrad(&r, bd->node, 1, c->vec + bd->v_offset, c->vec + bd->u_offset,
                      c->grads + param_offset(g, bd->node, 0), NULL, scale);
            break;
        }
        case LIPC_STEP_CLIP: {
            double norm = host_norm(c, c->grads, np);
            if (h->clip > 0.0 && norm > h->clip)
                gscale = h->clip / norm;
            out->grad_norm = norm;
            break;
        }
        case LIPC_STEP_UPDATE: {
            if (grads_out)
                break;
            double t = (double)(st->step + 1);
            lipc_gargs a = args0((long long)np);
            a.p[0] = c->params;
            a.p[1] = c->grads;
            a.p[2] = c->opt_m;
            a.p[3] = c->opt_v;
            a.s[0] = h->lr;
            a.s[4] = h->weight_decay;
            a.s[7] = gscale;
            if (h->optimizer == LIPC_OPTIM_ADAMW) {
                a.s[1] = h->beta1;
                a.s[2] = h->beta2;
                a.s[3] = h->adam_eps;
                a.s[5] = 1.0 - pow(h->beta1, t);
                a.s[6] = 1.0 - pow(h->beta2, t);
                launch(c, c->gk[K_ADAMW], (long long)np, &a);
            } else {
                a.s[1] = h->momentum;
                launch(c, c->gk[K_SGD], (long long)np, &a);
            }
            break;
        }
        }
    }
    if (status == LIPC_OK)
        status = c->fail;
    if (status != LIPC_OK) {
        c->owner = NULL; /* the device state is not to be trusted */
        return status;
    }
    out->n = n;
    out->k_sub = k_sub;
    if (grads_out) {
        float *gf = lipc_malloc(sizeof(float) * (np + 1));
        if (!gf)
            return LIPC_ERR_NOMEM;
        download(c, gf, c->grads, sizeof(float) * np);
        for (size_t i = 0; i < np; i++)
            grads_out[i] = gf[i];
        lipc_free(gf);
        c->owner = NULL; /* the device's vectors moved; st's did not */
        return c->fail;
    }
    st->step++;
    c->owner_step = st->step;
    c->stale = true;
    return LIPC_OK;
}

lipc_status lipc_gpu_train_step(lipc_gpu *c, lipc_train_state *st, int n, const float *x,
                                const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    return train_step(c, st, n, x, y, h, out, NULL);
}

lipc_status lipc_gpu_gradients(lipc_gpu *c, lipc_train_state *st, int n, const float *x,
                               const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                               double *grads)
{
    return train_step(c, st, n, x, y, h, out, grads);
}

/* iters more iterations of factor b; its sigma from the device */
static double gpu_chunk(void *ctx, int b, int iters)
{
    const run *r = ctx;
    double sigma = 0.0;
    power_iter(r, b, iters);
    download(r->c, &sigma, r->c->norms + b, sizeof(double));
    return sigma;
}

lipc_status lipc_gpu_lipschitz(lipc_gpu *c, const float *params, float *vec, int max_iters,
                               double tol, lipc_bound_report *report)
{
    const lipc_program *p = c->train;
    lipc_status st = reserve(c, p, 1);
    if (st != LIPC_OK)
        return st;
    c->fail = LIPC_OK;
    run r = {c, p, device_params(c, params), c->pvec, 1, false};
    prepare_weff(&r);
    upload_vectors(c, p, c->pvec, vec);
    lipc_power_iter_converge(p, max_iters, tol, gpu_chunk, &r, c->sigma, report);
    double k = lipc_program_eval_bound(p, c->sigma, c->dk);
    for (int b = 0; b < p->n_bounds; b++)
        report[b].value = c->sigma[b];
    report[p->n_bounds].value = k;
    download(c, vec, c->pvec, sizeof(float) * p->n_vec_elems);
    return c->fail;
}
