/* runtime/lower_bound.c: an empirical LOWER bound on the Lipschitz constant of
 * the network before its head, to show how tight the computed upper bound is.
 *
 * Write the logits f(x) = R h(x) + b (R the head's effective rows, [m, D]).
 * Wherever h is differentiable, its Jacobian J(x) satisfies ||J(x)|| <= Lip(h)
 * <= K_sub. The backend gives vector-Jacobian products of f, i.e. for every
 * class k the input gradient g_k = J(x)^T r_k. For any c in R^m,
 *
 *     ||J(x)^T R^T c|| = ||sum_k c_k g_k|| <= ||J(x)|| ||R^T c||,
 *
 * so   max_c ||G c||^2 / ||R^T c||^2,  G = [g_1 ... g_m]  (in x m),
 * the largest eigenvalue lambda of the symmetric-definite pencil
 * (G^T G, R R^T), gives sqrt(lambda) <= ||J(x)|| <= Lip(h): a rigorous lower
 * bound (up to rounding) from m products per point. It includes every class
 * pair, c = e_i - e_j, the direction certification cares about. The bound is
 * maximised over the points of a dataset; MinMax networks are piecewise
 * linear, so the Jacobian is constant on pieces and gradient ascent on x adds
 * little over sampling many points.
 *
 * The ratio lower / upper shows how much of the certificate's bound is real:
 * METHOD.md section 3 reports 0.90 for a LiResNet on CIFAR-10 against 0.24
 * for a conventional ResNet, whose residuals are bounded by 1 + K.
 */
#include "runtime/runtime.h"

#include <lapacke.h>
#include <math.h>
#include <string.h>

/* The largest eigenvalue of (a, b): a x = lambda b x, both m x m symmetric,
 * b positive definite. Returns -1 when b is not (the head rows are linearly
 * dependent; then the caller falls back to class pairs). */
static double top_eigen(int m, const double *a, const double *b, double *work)
{
    double *aa = work, *bb = work + m * m, *w = work + 2 * m * m;
    memcpy(aa, a, sizeof(double) * (size_t)m * (size_t)m);
    memcpy(bb, b, sizeof(double) * (size_t)m * (size_t)m);
    lapack_int info = LAPACKE_dsygv(LAPACK_ROW_MAJOR, 1, 'N', 'U', m, aa, m, bb, m, w);
    return info == 0 ? w[m - 1] : -1.0;
}

/* max over class pairs of ||g_i - g_j|| / ||r_i - r_j|| (the fallback). */
static double best_pair(int m, int in, const double *g, const double *rr)
{
    double best = 0.0;
    for (int i = 0; i < m; i++)
        for (int j = i + 1; j < m; j++) {
            double den = rr[i * m + i] + rr[j * m + j] - 2.0 * rr[i * m + j];
            if (!(den > 0.0))
                continue;
            double num = 0.0;
            for (int t = 0; t < in; t++) {
                double dlt = g[(size_t)i * in + t] - g[(size_t)j * in + t];
                num += dlt * dlt;
            }
            best = fmax(best, sqrt(num / den));
        }
    return best;
}

lipc_status lipc_empirical_lower_bound(const lipc_model_desc *m, const lipc_model_ops *ops,
                                       const float *params, const lipc_dataset *ds,
                                       int n_points, lipc_lower_bound *out)
{
    memset(out, 0, sizeof *out);
    out->point = -1;
    if (!ops->input_grad)
        return LIPC_ERR_UNSUPPORTED;
    int mc = m->classes, d = m->head_in;
    int in = m->in_c * m->in_h * m->in_w;
    int batch = 16;
    if (n_points > ds->n)
        n_points = ds->n;
    size_t m2 = (size_t)mc * (size_t)mc;
    double *w = lipc_malloc(sizeof(double) * (size_t)mc * (size_t)d);
    double *r = lipc_malloc(sizeof(double) * (size_t)mc * (size_t)d);
    double *rr = lipc_malloc(sizeof(double) * m2);
    double *dlog = lipc_calloc((size_t)batch * (size_t)mc, sizeof(double));
    double *g = lipc_malloc(sizeof(double) * (size_t)mc * (size_t)batch * (size_t)in);
    double *gg = lipc_malloc(sizeof(double) * m2);
    double *work = lipc_malloc(sizeof(double) * (2 * m2 + (size_t)mc));
    double *gs = lipc_malloc(sizeof(double) * (size_t)mc * (size_t)in);
    lipc_status st = w && r && rr && dlog && g && gg && work && gs ? LIPC_OK : LIPC_ERR_NOMEM;
    double t0 = lipc_now();
    if (st == LIPC_OK) {
        for (size_t i = 0; i < (size_t)mc * (size_t)d; i++)
            w[i] = params[m->head_offset + i];
        if (m->head_normalize)
            lipc_rownorm_forward(mc, d, w, r);
        else
            memcpy(r, w, sizeof(double) * (size_t)mc * (size_t)d);
        /* rr = R R^T, the Gram matrix of the head rows */
        for (int i = 0; i < mc; i++)
            for (int j = 0; j < mc; j++) {
                double s = 0.0;
                for (int t = 0; t < d; t++)
                    s += r[(size_t)i * d + t] * r[(size_t)j * d + t];
                rr[i * mc + j] = s;
            }
    }
    for (int start = 0; st == LIPC_OK && start < n_points; start += batch) {
        int n = n_points - start < batch ? n_points - start : batch;
        const float *x = ds->x + (size_t)start * (size_t)in;
        /* g[k] [n, in] = J^T r_k for every point: one product per class */
        for (int k = 0; k < mc && st == LIPC_OK; k++) {
            memset(dlog, 0, sizeof(double) * (size_t)n * (size_t)mc);
            for (int b = 0; b < n; b++)
                dlog[b * mc + k] = 1.0;
            st = ops->input_grad(ops->ctx, params, n, x, dlog,
                                 g + (size_t)k * (size_t)batch * (size_t)in);
        }
        for (int b = 0; b < n && st == LIPC_OK; b++) {
            for (int k = 0; k < mc; k++)
                memcpy(gs + (size_t)k * in, g + ((size_t)k * batch + b) * (size_t)in,
                       sizeof(double) * (size_t)in);
            for (int i = 0; i < mc; i++)
                for (int j = i; j < mc; j++) {
                    double s = 0.0;
                    for (int t = 0; t < in; t++)
                        s += gs[(size_t)i * in + t] * gs[(size_t)j * in + t];
                    gg[i * mc + j] = gg[j * mc + i] = s;
                }
            double lambda = top_eigen(mc, gg, rr, work);
            double v = lambda >= 0.0 ? sqrt(lambda) : best_pair(mc, in, gs, rr);
            if (isfinite(v) && v > out->value) {
                out->value = v;
                out->point = start + b;
            }
            out->evaluated++;
        }
    }
    out->seconds = lipc_now() - t0;
    lipc_free(w);
    lipc_free(r);
    lipc_free(rr);
    lipc_free(dlog);
    lipc_free(g);
    lipc_free(gg);
    lipc_free(work);
    lipc_free(gs);
    return st;
}
