/* backend/llvm/target.c: the "cpu" target of lipc_compile_target: the
 * tables every target shares (backend/describe.c) and the kernels of this
 * backend for training, inference, certified inference (logits with rounding
 * bounds) and power iteration. The input gradient (for empirical lower bounds
 * only) is the reference's. */
#include "backend/llvm/internal.h"

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

static void cpu_free(void *backend) { lipc_cpu_free(backend); }

lipc_status lipc_compile_target(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                                lipc_diags *d, lipc_compiled **out)
{
    if (strcmp(target, "cpu") != 0)
        return lipc_compile(g, target, d, out);
    lipc_status st = lipc_compile_tables(g, LIPC_DTYPE_F32, d, out);
    if (st != LIPC_OK)
        return st;
    lipc_compiled *c = *out;
    lipc_compiled_use_ref(c);
    lipc_cpu *cpu = NULL;
    if ((st = lipc_cpu_compile(c->train, c->forward, o, d, &cpu)) != LIPC_OK) {
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
    return LIPC_OK;
}
