/* backend/ref/loss.c: the certified-training losses in double, forward and
 * backward (METHOD.md section 5), the oracle for the fast backends' fused loss.
 *
 * Key idea: every loss is a cross-entropy over logits that were pushed by the
 * head's pair bounds K_ji = k_sub * ||r_j - r_i||. The backward first collects
 * d loss / d K_ab for each used pair (a sparse m x m matrix dK), and only at
 * the end of the batch turns dK into the gradients of k_sub and of the head
 * rows, once per pair instead of once per example:
 *
 *   K_ab = k_sub * ||r_a - r_b||
 *   d K_ab / d k_sub = ||r_a - r_b||
 *   d K_ab / d r_a   = k_sub (r_a - r_b) / ||r_a - r_b||  = - d K_ab / d r_b
 *
 * At r_a == r_b the norm has no derivative; its subdifferential is the unit
 * ball and we take 0, its minimum-norm element (a row pair that collapsed gets
 * no push apart from this term; any element would be a valid subgradient).
 *
 * The batch loss is the MEAN over examples, so each example's gradient carries
 * a factor 1/n. Cross-entropy with label y over logits z:
 *
 *   CE(z, y) = logsumexp(z) - z_y,   d CE / d z_k = softmax(z)_k - [k == y]
 *
 * with logsumexp computed as max + log(sum exp(z - max)) so no exp overflows.
 */
#include <math.h>
#include <string.h>

#include "backend/backend.h"

/* ---- pair bounds ------------------------------------------------------------ */

/* ---- small numeric helpers ------------------------------------------------- */

/* log(sum_k exp(v_k)), shifted by the max so no exp overflows. */
static double logsumexp(int k, const double *v)
{
    double mx = v[0];
    for (int i = 1; i < k; i++)
        if (v[i] > mx)
            mx = v[i];
    if (isinf(mx))
        return mx; /* all -inf, or a +inf logit: the shift would make NaN */
    double s = 0.0;
    for (int i = 0; i < k; i++)
        s += exp(v[i] - mx);
    return mx + log(s);
}

/* p = softmax(v) = exp(v - logsumexp(v)). */
static void softmax(int k, const double *v, double *p)
{
    double lse = logsumexp(k, v);
    for (int i = 0; i < k; i++)
        p[i] = exp(v[i] - lse);
}

/* The index of the largest logit (the lowest one among equals); *tie is set
 * when another class shares the top value. */
static int argmax(int m, const double *f, bool *tie)
{
    int j = 0;
    for (int i = 1; i < m; i++)
        if (f[i] > f[j])
            j = i;
    *tie = false;
    for (int i = 0; i < m; i++)
        if (i != j && f[i] == f[j])
            *tie = true;
    return j;
}

/* The strict certificate of METHOD.md section 1 at radius eps for a unique
 * prediction j: f_j - f_i > eps K_ji for every i != j. Written as the ratio
 * test (f_j - f_i) / K_ji > eps (and f_j - f_i > 0 where K_ji == 0), the same
 * formula runtime/certify.c uses for the radius with float_slack = 0, so the
 * training metric and the certifier agree bit for bit. NaN fails every test. */
static bool certified_strict(int m, const double *f, int j, const double *kj, double eps)
{
    for (int i = 0; i < m; i++) {
        if (i == j)
            continue;
        double margin = f[j] - f[i];
        bool ok = kj[i] > 0.0 ? margin / kj[i] > eps : margin > 0.0;
        if (!ok)
            return false;
    }
    return true;
}

/* ---- per-example losses ---------------------------------------------------- */

/* Scratch for one example. */
typedef struct example_work {
    double *z;      /* [m + 1] the logits the CE sees */
    double *q;      /* [m + 1] softmax(z) */
    double *p;      /* [m]     softmax(f) (TRADES) */
    double *e;      /* [m]     EMMA's frozen factors */
} example_work;

/* EMMA (adaptive) and the non-adaptive margin loss, for label y:
 *
 *   K_i = kpair[y, i]   (K_y = 0)
 *   e_i = clip((f_y - f_i) / max(eps K_i, 1e-8), 0.01, 1)    EMMA
 *   e_i = 1                                                  margin
 *   z_i = f_i + sg(e_i) eps K_i  (i != y),   z_y = f_y
 *   loss = CE(z, y)
 *
 * Backward, with g = d CE / d z = softmax(z) - onehot(y) and e_i a constant
 * (the stop-gradient: e_i is how far class i still has to be pushed, a
 * schedule, not something to optimise):
 *
 *   d loss / d f_k = g_k                (each z_k has f_k with coefficient 1;
 *                                        f_y enters e_i only, which is frozen)
 *   d loss / d K_i = g_i e_i eps        (i != y)
 *
 * Writes gf [m] and gk [m] (the gradient w.r.t. row y of kpair). */
static double margin_example(int m, const double *f, int y, const double *ky, double eps,
                             bool adaptive, const example_work *w, double *gf, double *gk)
{
    for (int i = 0; i < m; i++) {
        if (i == y) {
            w->e[i] = 0.0;
            w->z[i] = f[i];
            continue;
        }
        double e = 1.0;
        if (adaptive) {
            double den = eps * ky[i];
            if (den < 1e-8)
                den = 1e-8;
            e = (f[y] - f[i]) / den;
            /* comparisons, not fmin/fmax: a NaN must propagate to the loss */
            if (e < 0.01)
                e = 0.01;
            else if (e > 1.0)
                e = 1.0;
        }
        w->e[i] = e;
        w->z[i] = f[i] + e * eps * ky[i];
    }
    double loss = logsumexp(m, w->z) - w->z[y];
    softmax(m, w->z, w->q);
    for (int i = 0; i < m; i++) {
        gf[i] = w->q[i] - (i == y ? 1.0 : 0.0);
        gk[i] = i == y ? 0.0 : gf[i] * w->e[i] * eps;
    }
    return loss;
}

/* GloRo cross-entropy and TRADES-GloRo, for label y. With the prediction
 * j = argmax_k f_k (lowest index among equals):
 *
 *   f_bot = max_{i != j} (f_i + eps K_ji),  i* its maximiser (lowest index)
 *   u     = [f_0, ..., f_{m-1}, f_bot]                       (m + 1 logits)
 *   GloRo:  loss = CE(u, y)
 *   TRADES: loss = CE(f, y) + lambda (logsumexp(u) - logsumexp(f))
 *
 * j is piecewise constant in f, and the max routes its gradient to the one
 * term that attains it: d f_bot / d f_{i*} = 1, d f_bot / d K_{j i*} = eps.
 * With q = softmax(u) and p = softmax(f):
 *
 *   GloRo:  d loss / d f_k      = q_k - [k == y]        (+ q_m    at k = i*)
 *           d loss / d K_{j i*} = q_m eps
 *   TRADES: d loss / d f_k      = p_k - [k == y] + lambda (q_k - p_k)
 *                                                       (+ lambda q_m at k = i*)
 *           d loss / d K_{j i*} = lambda q_m eps
 *
 * (the label y < m never names the bottom class). Writes gf [m] and gk [m]
 * (the gradient w.r.t. row j of kpair, returned in *row). */
static double gloro_example(int m, const double *f, int y, const double *kpair, double eps,
                            bool trades, double lambda, const example_work *w, double *gf,
                            double *gk, int *row)
{
    bool tie;
    int j = argmax(m, f, &tie);
    const double *kj = kpair + (size_t)j * m;
    int istar = -1;
    double fbot = 0.0;
    for (int i = 0; i < m; i++) {
        if (i == j)
            continue;
        double v = f[i] + eps * kj[i];
        if (istar < 0 || v > fbot) {
            istar = i;
            fbot = v;
        }
    }
    for (int i = 0; i < m; i++)
        w->z[i] = f[i];
    w->z[m] = fbot;
    softmax(m + 1, w->z, w->q);
    double qbot = w->q[m];

    double loss;
    for (int i = 0; i < m; i++)
        gk[i] = 0.0;
    if (!trades) {
        loss = logsumexp(m + 1, w->z) - f[y];
        for (int i = 0; i < m; i++)
            gf[i] = w->q[i] - (i == y ? 1.0 : 0.0);
        gf[istar] += qbot;
        gk[istar] = qbot * eps;
    } else {
        double lse_f = logsumexp(m, f);
        loss = lse_f - f[y] + lambda * (logsumexp(m + 1, w->z) - lse_f);
        softmax(m, f, w->p);
        for (int i = 0; i < m; i++)
            gf[i] = w->p[i] - (i == y ? 1.0 : 0.0) + lambda * (w->q[i] - w->p[i]);
        gf[istar] += lambda * qbot;
        gk[istar] = lambda * qbot * eps;
    }
    *row = j;
    return loss;
}

/* ---- the batch --------------------------------------------------------------- */

lipc_status lipc_ref_loss(const lipc_loss_spec *spec, int n, int m, int d,
                          const double *logits, const int32_t *labels, double k_sub,
                          const double *r, double *dlogits, double *dr,
                          lipc_loss_result *out)
{
    LIPC_ASSERT(spec && out && n >= 0 && m >= 2 && d >= 1);
    LIPC_ASSERT(spec->eps >= 0.0 && k_sub >= 0.0);
    memset(out, 0, sizeof *out);

    /* dist [m, m], kpair [m, m], dk [m, m], then the per-example vectors */
    size_t mm = (size_t)m * m, m1 = (size_t)m + 1;
    double *block = lipc_calloc(3 * mm + 6 * m1, sizeof *block);
    if (!block)
        return LIPC_ERR_NOMEM;
    double *dist = block, *kpair = dist + mm, *dk = kpair + mm;
    example_work w = {.z = dk + mm};
    w.q = w.z + m1;
    w.p = w.q + m1;
    w.e = w.p + m1;
    double *gf = w.e + m1, *gk = gf + m1;

    /* ||r_a - r_b|| once; K = k_sub * dist is bit for bit lipc_kpair's
     * k_sub * sqrt(s), since dist is 1.0 * sqrt(s). */
    lipc_kpair(m, d, r, 1.0, dist);
    for (size_t k = 0; k < mm; k++)
        kpair[k] = k_sub * dist[k];

    double sum = 0.0;
    double inv_n = n > 0 ? 1.0 / n : 0.0;
    for (int b = 0; b < n; b++) {
        const double *f = logits + (size_t)b * m;
        int y = labels[b];
        LIPC_ASSERT(y >= 0 && y < m);

        /* metrics: clean accuracy and certified accuracy at eps (strict) */
        bool tie;
        int j = argmax(m, f, &tie);
        if (!tie && j == y) {
            out->n_correct++;
            if (certified_strict(m, f, j, kpair + (size_t)j * m, spec->eps))
                out->n_certified++;
        }

        int row = y;
        switch (spec->kind) {
        case LIPC_LOSS_EMMA:
        case LIPC_LOSS_MARGIN:
            sum += margin_example(m, f, y, kpair + (size_t)y * m, spec->eps,
                                  spec->kind == LIPC_LOSS_EMMA, &w, gf, gk);
            break;
        case LIPC_LOSS_GLORO:
        case LIPC_LOSS_TRADES:
            sum += gloro_example(m, f, y, kpair, spec->eps, spec->kind == LIPC_LOSS_TRADES,
                                 spec->trades_lambda, &w, gf, gk, &row);
            break;
        default:
            LIPC_ASSERT(!"unknown loss kind");
        }

        if (!dlogits)
            continue;
        for (int i = 0; i < m; i++) {
            dlogits[(size_t)b * m + i] = gf[i] * inv_n;
            dk[(size_t)row * m + i] += gk[i] * inv_n;
        }
    }
    out->loss = sum * inv_n;

    if (dlogits) {
        /* dK -> d k_sub and d r (the chain rule in the file comment) */
        for (int a = 0; a < m; a++) {
            for (int b = 0; b < m; b++) {
                double g = dk[(size_t)a * m + b], len = dist[(size_t)a * m + b];
                if (g == 0.0)
                    continue;
                out->dk_sub += g * len;
                if (!dr || len == 0.0)
                    continue; /* a == b, or rows that coincide: subgradient 0 */
                double c = g * k_sub / len;
                for (int t = 0; t < d; t++) {
                    double diff = r[(size_t)a * d + t] - r[(size_t)b * d + t];
                    dr[(size_t)a * d + t] += c * diff;
                    dr[(size_t)b * d + t] -= c * diff;
                }
            }
        }
    }
    lipc_free(block);
    return LIPC_OK;
}
