/* backend/optim.c: gradient clipping and the optimisers, shared by every CPU
 * backend (the reference and the LLVM one): what they do to the parameters
 * is the same function of the gradient, so it is written once.
 *
 * Both work on ranges so that a backend with threads can split them: the
 * gradient's squared norm is a sum of partial sums over fixed blocks of
 * LIPC_NORM_BLOCK elements, added in block order, so it has the same bits for
 * any split; the update is element-wise. */
#include "backend/backend.h"

#include <math.h>

/* The update's loops are cloned for wider vectors where the compiler can
 * (x86 with GNU C); the host picks a clone when the library loads. IEEE
 * sqrt and division round the same in every clone, and the file is built
 * without floating-point contraction, so each clone computes the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

size_t lipc_norm_blocks(size_t n)
{
    return (n + LIPC_NORM_BLOCK - 1) / LIPC_NORM_BLOCK;
}

/* Eight running sums, element i into sum i % 8, added pairwise at the end:
 * the order is fixed here, not by the compiler, and the sums are
 * independent so that they need not wait on each other's additions. */
enum { SUMS = 8 };

static double add_sums(double *acc)
{
    for (int w = SUMS / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; k++)
            acc[k] += acc[k + w];
    return acc[0];
}

double lipc_sumsq(const float *x, size_t n)
{
    double acc[SUMS] = {0.0};
    size_t i = 0;
    for (; i + SUMS <= n; i += SUMS)
        for (int k = 0; k < SUMS; k++)
            acc[k] += (double)x[i + k] * x[i + k];
    for (int k = 0; i < n; i++, k++)
        acc[k] += (double)x[i] * x[i];
    return add_sums(acc);
}

static double sumsq_double(const double *x, size_t n)
{
    double acc[SUMS] = {0.0};
    size_t i = 0;
    for (; i + SUMS <= n; i += SUMS)
        for (int k = 0; k < SUMS; k++)
            acc[k] += x[i + k] * x[i + k];
    for (int k = 0; i < n; i++, k++)
        acc[k] += x[i] * x[i];
    return add_sums(acc);
}

double lipc_sumsq_block(const float *gf, const double *gd, size_t n, size_t b)
{
    size_t lo = b * LIPC_NORM_BLOCK, hi = lo + LIPC_NORM_BLOCK < n ? lo + LIPC_NORM_BLOCK : n;
    return gf ? lipc_sumsq(gf + lo, hi - lo) : sumsq_double(gd + lo, hi - lo);
}

/* The norm sqrt(sumsq) into *norm, and the factor that scales the gradient
 * to norm <= clip (clip > 0): 1 when none is needed. */
static double clip_factor(double sumsq, double clip, double *norm)
{
    *norm = sqrt(sumsq);
    return clip > 0.0 && *norm > clip ? clip / *norm : 1.0;
}

double lipc_clip_scale(const double *partial, size_t n_blocks, double clip, double *norm)
{
    double s = 0.0;
    for (size_t b = 0; b < n_blocks; b++)
        s += partial[b];
    return clip_factor(s, clip, norm);
}

double lipc_grad_clip(double *g, size_t n, double clip)
{
    double s = 0.0, norm;
    for (size_t b = 0; b < lipc_norm_blocks(n); b++)
        s += lipc_sumsq_block(NULL, g, n, b);
    double k = clip_factor(s, clip, &norm);
    if (k != 1.0)
        for (size_t i = 0; i < n; i++)
            g[i] *= k;
    return norm;
}

/* The gradient of the scaled kernels' a and U (lipc_scaled) from V's, for
 * V = s a U row by row:  dU = s a dV,  da = s sum_row U dV,  in double,
 * written at their places past the parameter block of g (float gf or double
 * gd, [st->n_train]). V's own entry is zeroed: the optimiser does not move
 * V, each step recomputes it (lipc_scaled_apply), and the clipping norm
 * is that of the gradient of what is trained, a and U. */
void lipc_scaled_grads(const lipc_train_state *st, float *gf, double *gd)
{
    const float *p = st->params;
    for (int i = 0; i < st->n_scaled; i++) {
        const lipc_scaled *k = &st->scaled[i];
        size_t per_row = k->numel / (size_t)k->rows;
        for (int o = 0; o < k->rows; o++) {
            size_t row = (size_t)o * per_row;
            double a = p[k->gain + (size_t)o], da = 0.0;
            for (size_t j = row; j < row + per_row; j++) {
                double dv = gf ? (double)gf[k->offset + j] : gd[k->offset + j];
                double du = k->s * a * dv;
                da += (double)p[k->base + j] * dv;
                if (gf) {
                    gf[k->base + j] = (float)du;
                    gf[k->offset + j] = 0.0f;
                } else {
                    gd[k->base + j] = du;
                    gd[k->offset + j] = 0.0;
                }
            }
            if (gf)
                gf[k->gain + (size_t)o] = (float)(k->s * da);
            else
                gd[k->gain + (size_t)o] = k->s * da;
        }
    }
}

/* AdamW (decoupled weight decay) or SGD with Nesterov momentum:
 *   AdamW:  m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2,
 *           p <- p - lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p)
 *   SGD:    g <- g + wd p,  m <- mu m + g,  p <- p - lr (g + mu m)
 * t counts steps from 1. Computed in double, stored in float. The gradient
 * is g = gf[i] * scale (floats) or gd[i] * scale (doubles). */
typedef struct adamw_k {
    double b1, b2, c1, c2, eps, wd, lr;
} adamw_k;

static inline void adamw_one(const adamw_k *k, double g, float *restrict p, float *restrict m,
                             float *restrict v)
{
    double pi = *p;
    double mi = k->b1 * *m + (1.0 - k->b1) * g;
    double vi = k->b2 * *v + (1.0 - k->b2) * g * g;
    *m = (float)mi;
    *v = (float)vi;
    double step = (mi / k->c1) / (sqrt(vi / k->c2) + k->eps) + k->wd * pi;
    *p = (float)(pi - k->lr * step);
}

VECTOR_CLONES
static void adamw_float(const adamw_k *k, size_t n, const float *restrict g, double scale,
                        float *restrict p, float *restrict m, float *restrict v)
{
    for (size_t i = 0; i < n; i++)
        adamw_one(k, (double)g[i] * scale, p + i, m + i, v + i);
}

static void adamw_double(const adamw_k *k, size_t n, const double *restrict g, double scale,
                         float *restrict p, float *restrict m, float *restrict v)
{
    for (size_t i = 0; i < n; i++)
        adamw_one(k, g[i] * scale, p + i, m + i, v + i);
}

void lipc_optim_update(const lipc_hyper *h, lipc_train_state *st, size_t lo, size_t hi,
                       const float *gf, const double *gd, double scale)
{
    double t = (double)(st->step + 1);
    float *p = st->params + lo, *m = st->opt_m + lo;
    size_t n = hi - lo;
    if (h->optimizer == LIPC_OPTIM_ADAMW) {
        adamw_k k = {h->beta1, h->beta2, 1.0 - pow(h->beta1, t), 1.0 - pow(h->beta2, t),
                     h->adam_eps, h->weight_decay, h->lr};
        if (gf)
            adamw_float(&k, n, gf + lo, scale, p, m, st->opt_v + lo);
        else
            adamw_double(&k, n, gd + lo, scale, p, m, st->opt_v + lo);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        double pi = p[i];
        double g = (gf ? (double)gf[lo + i] : gd[lo + i]) * scale + h->weight_decay * pi;
        double mi = h->momentum * m[i] + g;
        m[i] = (float)mi;
        p[i] = (float)(pi - h->lr * (g + h->momentum * mi));
    }
}

void lipc_optim_step(const lipc_hyper *h, lipc_train_state *st, size_t np, const double *grads)
{
    lipc_optim_update(h, st, 0, np, NULL, grads, 1.0);
    st->step++;
}
