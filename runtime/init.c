/* runtime/init.c: initial parameter values from the init rules.
 *
 * Each parameter draws from its own random stream, seeded by the run's seed
 * and the parameter's name (FNV-1a), so adding a layer does not change the
 * initial values of the others, and a built executable initialises exactly
 * as the compiler's reference backend does. Rules (fan_in = c_in kh kw or
 * in; fan_out = c_out kh kw or out):
 *   kaiming     N(0, 2 / fan_in)        (the default for weights)
 *   xavier      N(0, 2 / (fan_in + fan_out))
 *   orthogonal  the weight reshaped [out, fan_in] with orthonormal rows, or
 *               orthonormal columns when out > fan_in
 *   liresnet    N(0, 1) / fan_in / sqrt(L), L the number of residual blocks:
 *               METHOD.md section 2's V = L^-1/2 U, U ~ N(0,1)/(9W) for a
 *               3x3 kernel, so every folded block starts near the identity
 *   zeros       (the default for biases)
 */
#include "runtime/runtime.h"

#include <math.h>
#include <string.h>

/* FNV-1a, then mixed with the seed: a stream per parameter name. */
static uint64_t param_stream(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *s = name ? name : ""; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return seed ^ (h * 0x9E3779B97F4A7C15ull);
}

/* Orthonormalises n_vec vectors of length len in place by modified Gram-Schmidt,
 * done twice ("twice is enough": the second pass removes the rounding left by
 * the first). Element j of vector k is v[k*vs + j*es], so the same code makes
 * rows (vs = len, es = 1) or columns (vs = 1, es = n_vec) orthonormal.
 * Requires n_vec <= len. A vector that collapses (probability 0 for Gaussian
 * input, but cheap to guard) is redrawn. */
static void orthonormalise(double *v, int n_vec, int len, size_t vs, size_t es, lipc_rng *r)
{
    for (int k = 0; k < n_vec; k++) {
        double *vk = v + (size_t)k * vs;
        for (int tries = 0;; tries++) {
            double before = 0.0;
            for (int j = 0; j < len; j++)
                before += vk[j * es] * vk[j * es];
            for (int pass = 0; pass < 2; pass++)
                for (int m = 0; m < k; m++) {
                    const double *vm = v + (size_t)m * vs;
                    double dot = 0.0;
                    for (int j = 0; j < len; j++)
                        dot += vm[j * es] * vk[j * es];
                    for (int j = 0; j < len; j++)
                        vk[j * es] -= dot * vm[j * es];
                }
            double nrm = 0.0;
            for (int j = 0; j < len; j++)
                nrm += vk[j * es] * vk[j * es];
            if (nrm > 1e-20 * before && nrm > 0.0) {
                double inv = 1.0 / sqrt(nrm);
                for (int j = 0; j < len; j++)
                    vk[j * es] *= inv;
                break;
            }
            LIPC_ASSERT(tries < 100);
            for (int j = 0; j < len; j++)
                vk[j * es] = lipc_rng_normal(r);
        }
    }
}

void lipc_init_param(const lipc_param_desc *p, uint64_t seed, double *v)
{
    lipc_rng r;
    lipc_rng_seed(&r, param_stream(seed, p->name));
    size_t rows = p->rank >= 2 ? (size_t)p->d[0] : 1;
    size_t fan_in = p->numel / (rows ? rows : 1);
    size_t fan_out = p->rank >= 2 ? p->numel / (size_t)p->d[1] : p->numel;
    int init = p->init;
    if (init == LIPC_RT_INIT_DEFAULT)
        init = p->is_bias ? LIPC_RT_INIT_ZEROS : LIPC_RT_INIT_KAIMING;
    double std = 0.0;
    switch (init) {
    case LIPC_RT_INIT_ZEROS:
        memset(v, 0, p->numel * sizeof *v);
        return;
    case LIPC_RT_INIT_XAVIER:
        std = sqrt(2.0 / (double)(fan_in + fan_out));
        break;
    case LIPC_RT_INIT_LIRESNET:
        std = 1.0 / (double)fan_in;
        if (p->init_scale_div > 1)
            std /= sqrt((double)p->init_scale_div);
        break;
    case LIPC_RT_INIT_ORTHOGONAL:
        std = 1.0;
        break;
    default: /* kaiming */
        std = sqrt(2.0 / (double)fan_in);
        break;
    }
    for (size_t j = 0; j < p->numel; j++)
        v[j] = std * lipc_rng_normal(&r);
    if (init == LIPC_RT_INIT_ORTHOGONAL) {
        if (rows <= fan_in)
            orthonormalise(v, (int)rows, (int)fan_in, fan_in, 1, &r);
        else
            orthonormalise(v, (int)fan_in, (int)rows, 1, fan_in, &r);
    }
}

lipc_status lipc_init_params(const lipc_model_desc *m, uint64_t seed, float *params)
{
    size_t max = 1;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].numel > max)
            max = m->params[i].numel;
    double *tmp = lipc_malloc(sizeof(double) * max);
    if (!tmp)
        return LIPC_ERR_NOMEM;
    for (int i = 0; i < m->n_params; i++) {
        const lipc_param_desc *p = &m->params[i];
        lipc_init_param(p, seed, tmp);
        for (size_t j = 0; j < p->numel; j++)
            params[p->offset + j] = (float)tmp[j];
    }
    lipc_free(tmp);
    lipc_scaled_from_params(m, params);
    return LIPC_OK;
}

/* V = fl(s a U) for every scaled kernel: what each step does after the
 * optimiser has moved a and U. In double, rounded once. */
void lipc_scaled_apply(const lipc_scaled *k, int n, float *params)
{
    for (int i = 0; i < n; i++, k++) {
        size_t per_row = k->numel / (size_t)k->rows;
        const float *a = params + k->gain, *u = params + k->base;
        float *v = params + k->offset;
        for (size_t j = 0; j < k->numel; j++)
            v[j] = (float)(k->s * (double)a[j / per_row] * (double)u[j]);
    }
}

/* The liresnet rule draws V = s U with U ~ N(0, 1) / fan_in, so U = V / s
 * and a = 1 give METHOD.md's start; V is then recomputed from them, as
 * every step does, so that V = fl(s a U) holds from the first step on. */
void lipc_scaled_from_params(const lipc_model_desc *m, float *params)
{
    for (int i = 0; i < m->n_scaled; i++) {
        const lipc_scaled *k = &m->scaled[i];
        for (int o = 0; o < k->rows; o++)
            params[k->gain + (size_t)o] = 1.0f;
        for (size_t j = 0; j < k->numel; j++)
            params[k->base + j] = (float)((double)params[k->offset + j] / k->s);
    }
    lipc_scaled_apply(m->scaled, m->n_scaled, params);
}
