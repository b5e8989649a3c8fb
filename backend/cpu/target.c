/* backend/cpu/target.c: the "cpu" target from a kernel source: the
 * tables every target shares (backend/describe.c) and the kernels of this
 * backend for training, inference, certified inference (logits with rounding
 * bounds) and power iteration. The input gradient (for empirical lower bounds
 * only) is the reference's. */
#include "backend/cpu/kernels.h"

#include <string.h>

static lipc_status cpu_train_step(void *ctx, lipc_train_state *st, int n, const float *x,
                                  const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    const lipc_compiled *c = ctx;
    return lipc_cpu_train_step(c->backend, st, n, x, y, h, out);
}

static lipc_status cpu_predict(void *ctx, const float *params, int n, const float *x,
                               double *logits)
{
    const lipc_compiled *c = ctx;
    size_t len = (size_t)n * (size_t)c->g->classes;
    float *f = lipc_malloc(sizeof(float) * (len + 1));
    if (!f)
        return LIPC_ERR_NOMEM;
    lipc_status st = lipc_cpu_predict(c->backend, params, n, x, f);
    for (size_t i = 0; st == LIPC_OK && i < len; i++)
        logits[i] = f[i];
    lipc_free(f);
    return st;
}

static lipc_status cpu_lipschitz(void *ctx, const float *params, float *vec, int max_iters,
                                 double tol, lipc_bound_report *report)
{
    const lipc_compiled *c = ctx;
    return lipc_cpu_lipschitz(c->backend, params, vec, max_iters, tol, report);
}

static lipc_status cpu_predict_bounded(void *ctx, const float *params, int n, const float *x,
                                       double *logits, double *logit_err)
{
    const lipc_compiled *c = ctx;
    return lipc_cpu_predict_bounded(c->backend, params, n, x, logits, logit_err);
}

static lipc_status cpu_predict_l2(void *ctx, const float *params, const double *sigma, int n,
                                  const float *x, double *logits, double *logit_err)
{
    const lipc_compiled *c = ctx;
    return lipc_cpu_predict_l2(c->backend, params, sigma, n, x, logits, logit_err);
}

static void cpu_free(void *backend) { lipc_cpu_free(backend); }

lipc_status lipc_compile_cpu(lipc_graph *g, lipc_kernel_source source, void *ctx,
                             const lipc_cpu_options *o, lipc_diags *d, lipc_compiled **out)
{
    lipc_status st = lipc_compile_tables(g, LIPC_DTYPE_F32, d, out);
    if (st != LIPC_OK)
        return st;
    lipc_compiled *c = *out;
    lipc_compiled_use_ref(c);
    lipc_kernels k;
    memset(&k, 0, sizeof k);
    lipc_cpu *cpu = NULL;
    st = source(c->train, o && o->portable, ctx, &k, d);
    if (st == LIPC_OK)
        st = lipc_cpu_new(c->train, c->forward, o, &k, &cpu);
    if (st != LIPC_OK) {
        lipc_kernels_free(&k);
        lipc_compiled_free(c);
        *out = NULL;
        return st;
    }
    c->backend = cpu;
    c->backend_free = cpu_free;
    c->ops.backend = "cpu";
    c->ops.train_step = cpu_train_step;
    c->ops.predict = cpu_predict;
    c->ops.lipschitz = cpu_lipschitz;
    c->ops.predict_bounded = cpu_predict_bounded;
    c->ops.predict_l2 = cpu_predict_l2;
    return LIPC_OK;
}
