/* backend/cuda/target.c: the "cuda" target's entry points: training,
 * inference and power iteration on the device; certified inference (logits
 * with rigorous rounding bounds) stays on the host in double: the cpu
 * target's when one is attached (lipc_compiled_attach_host), else the
 * reference's. The GPU's float logits carry no such bound (a library
 * convolution may sum by Winograd or FFT, outside the error analysis), so
 * certificates never rest on them. */
#include "backend/cuda/gpu.h"

#include <stdlib.h>
#include <string.h>

static lipc_status gpu_train_step(void *ctx, lipc_train_state *st, int n, const float *x,
                                  const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    const lipc_compiled *c = ctx;
    return lipc_gpu_train_step(c->backend, st, n, x, y, h, out);
}

static lipc_status gpu_sync_state(void *ctx, lipc_train_state *st)
{
    const lipc_compiled *c = ctx;
    return lipc_gpu_sync_state(c->backend, st);
}

static lipc_status gpu_predict(void *ctx, const float *params, int n, const float *x,
                               double *logits)
{
    const lipc_compiled *c = ctx;
    size_t len = (size_t)n * (size_t)c->g->classes;
    float *f = lipc_malloc(sizeof(float) * (len + 1));
    if (!f)
        return LIPC_ERR_NOMEM;
    lipc_status st = lipc_gpu_predict(c->backend, params, n, x, f);
    for (size_t i = 0; st == LIPC_OK && i < len; i++)
        logits[i] = f[i];
    lipc_free(f);
    return st;
}

static lipc_status gpu_lipschitz(void *ctx, const float *params, float *vec, int max_iters,
                                 double tol, lipc_bound_report *report)
{
    const lipc_compiled *c = ctx;
    return lipc_gpu_lipschitz(c->backend, params, vec, max_iters, tol, report);
}

static lipc_status host_predict_bounded(void *ctx, const float *params, int n, const float *x,
                                        double *logits, double *logit_err)
{
    const lipc_compiled *c = ctx;
    return c->host->ops.predict_bounded(c->host->ops.ctx, params, n, x, logits, logit_err);
}

static lipc_status host_predict_l2(void *ctx, const float *params, const double *sigma, int n,
                                   const float *x, double *logits, double *logit_err)
{
    const lipc_compiled *c = ctx;
    return c->host->ops.predict_l2(c->host->ops.ctx, params, sigma, n, x, logits, logit_err);
}

void lipc_compiled_attach_host(lipc_compiled *c, lipc_compiled *host)
{
    c->host = host;
    if (host && host->ops.predict_bounded)
        c->ops.predict_bounded = host_predict_bounded;
    if (host && host->ops.predict_l2)
        c->ops.predict_l2 = host_predict_l2;
}

static void gpu_free(void *backend) { lipc_gpu_free(backend); }

lipc_status lipc_compile_gpu(lipc_graph *g, lipc_gpu_dev *dev, const char *image,
                             lipc_diags *d, lipc_compiled **out)
{
    lipc_status st = lipc_compile_tables(g, LIPC_DTYPE_F32, d, out);
    if (st != LIPC_OK) {
        dev->ops->destroy(dev);
        return st;
    }
    lipc_compiled *c = *out;
    lipc_compiled_use_ref(c);
    lipc_gpu *gpu = NULL;
    st = lipc_gpu_new(c->train, c->forward, dev, image, d, &gpu);
    if (st != LIPC_OK) {
        lipc_compiled_free(c);
        *out = NULL;
        return st;
    }
    c->backend = gpu;
    c->backend_free = gpu_free;
    c->ops.backend = strcmp(dev->ops->name, "cuda") == 0 ? "cuda" : "cuda-emulator";
    c->ops.device = dev->describe;
    c->ops.train_step = gpu_train_step;
    c->ops.sync_state = gpu_sync_state;
    c->ops.predict = gpu_predict;
    c->ops.lipschitz = gpu_lipschitz;
    return LIPC_OK;
}

lipc_status lipc_compile_cuda(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                              const char *image, lipc_diags *d, lipc_compiled **out)
{
    *out = NULL;
    lipc_gpu_dev *dev = NULL;
    lipc_status st = strcmp(target, "cuda") == 0
                         ? lipc_gpu_cuda_new(d, &dev)
                         : lipc_gpu_emulator_new(getenv("CC"), 3, d, &dev);
    if (st == LIPC_OK)
        st = lipc_compile_gpu(g, dev, image, d, out);
    if (st == LIPC_OK && o && o->no_tf32)
        lipc_gpu_set_tf32((*out)->backend, false);
    return st;
}

