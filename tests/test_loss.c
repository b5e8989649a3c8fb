/* tests/test_loss.c: the reference losses of backend/ref/loss.c.
 *
 * - Gradients: central differences (h = 1e-6, in double) per element of the
 *   logits, of k_sub and of every head row, against the analytic backward, on
 *   small batches. GloRo and TRADES take a max and an argmax, so their logits
 *   are drawn with distinct gaps: no perturbation may switch the prediction or
 *   the maximiser of f_bot.
 * - EMMA's factors e_i are under a stop-gradient, so where the clip is not
 *   active its analytic gradient is NOT the derivative of its forward value
 *   (there z_i = f_y exactly, which does not move with f_i at all). It is the
 *   derivative of the surrogate in which e is frozen at its value at the base
 *   point, so that is what the finite differences perturb: an independent
 *   implementation here, checked to equal lipc_ref_loss at the base point.
 *   Where every clip is active, e is locally constant and the plain finite
 *   difference of lipc_ref_loss must agree too; a last check shows that where
 *   it is not, the two really differ (the stop-gradient is there).
 * - Tiny cases (m = 2, 3) computed by hand, with head rows whose distances are
 *   exact (0, (3,4), (0,4): 5, 4 and 3), and the accuracy / certified counts on
 *   hand-made batches and against runtime/certify.c.
 * The seed is in every message that depends on random data (LIPC_TEST_SEED). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "runtime/runtime.h"
#include "tests/testutil.h"

/* ---- a problem: everything the loss reads ------------------------------------ */

typedef struct problem {
    lipc_loss_spec spec;
    int n, m, d;
    double f[64];       /* [n, m] logits */
    int32_t y[16];      /* [n] */
    double k_sub;
    double r[64];       /* [m, d] effective head rows */
    double e[64];       /* [n, m] EMMA factors frozen at the base point */
} problem;

/* The three head rows of the hand cases: ||r0 - r1|| = 5, ||r0 - r2|| = 4,
 * ||r1 - r2|| = 3, all exact. */
static void hand_rows(problem *p)
{
    static const double rows[6] = {0, 0, 3, 4, 0, 4};
    p->m = 3;
    p->d = 2;
    memcpy(p->r, rows, sizeof rows);
}

static lipc_loss_result run_loss(const problem *p, double *dlogits, double *dr)
{
    lipc_loss_result res;
    lipc_status st = lipc_ref_loss(&p->spec, p->n, p->m, p->d, p->f, p->y, p->k_sub, p->r,
                                   dlogits, dr, &res);
    cr_assert_eq(st, LIPC_OK);
    return res;
}

static double value_ref(const problem *p) { return run_loss(p, NULL, NULL).loss; }

/* ||r_a - r_b||, written out again (not lipc_kpair) for the oracle. */
static double row_dist(const problem *p, int a, int b)
{
    double s = 0.0;
    for (int t = 0; t < p->d; t++) {
        double diff = p->r[a * p->d + t] - p->r[b * p->d + t];
        s += diff * diff;
    }
    return sqrt(s);
}

static double lse(int k, const double *v)
{
    double mx = v[0], s = 0.0;
    for (int i = 1; i < k; i++)
        mx = fmax(mx, v[i]);
    for (int i = 0; i < k; i++)
        s += exp(v[i] - mx);
    return mx + log(s);
}

/* EMMA's factors at the current point, into p->e:
 *   e_i = clip((f_y - f_i) / max(eps K_i, 1e-8), 0.01, 1),  e_y = 0. */
static void emma_freeze(problem *p)
{
    for (int b = 0; b < p->n; b++) {
        int y = p->y[b];
        const double *f = p->f + b * p->m;
        for (int i = 0; i < p->m; i++) {
            double den = fmax(p->spec.eps * p->k_sub * row_dist(p, y, i), 1e-8);
            p->e[b * p->m + i] = i == y ? 0.0 : fmin(fmax((f[y] - f[i]) / den, 0.01), 1.0);
        }
    }
}

/* The EMMA surrogate with e frozen: mean_b CE(z_b, y_b) with
 * z_i = f_i + e_i eps k_sub ||r_y - r_i||, z_y = f_y. */
static double value_frozen(const problem *p)
{
    double sum = 0.0, z[16];
    for (int b = 0; b < p->n; b++) {
        int y = p->y[b];
        for (int i = 0; i < p->m; i++)
            z[i] = p->f[b * p->m + i] +
                   p->e[b * p->m + i] * p->spec.eps * p->k_sub * row_dist(p, y, i);
        sum += lse(p->m, z) - z[y];
    }
    return sum / p->n;
}

/* Central differences of value() w.r.t. every logit, k_sub and every row
 * element, against lipc_ref_loss's backward. dr is pre-filled with 1 to check
 * that it is added into. */
static void check_gradients(problem *p, double (*value)(const problem *), const char *what)
{
    const double h = 1e-6, atol = 1e-7, rtol = 1e-6;
    int nf = p->n * p->m, nr = p->m * p->d;
    double dlogits[64], dr[64], fd_f[64], fd_r[64];
    for (int k = 0; k < nr; k++)
        dr[k] = 1.0;
    lipc_loss_result res = run_loss(p, dlogits, dr);
    for (int k = 0; k < nr; k++)
        dr[k] -= 1.0;

    for (int k = 0; k < nf; k++) {
        double keep = p->f[k];
        p->f[k] = keep + h;
        double up = value(p);
        p->f[k] = keep - h;
        double down = value(p);
        p->f[k] = keep;
        fd_f[k] = (up - down) / (2 * h);
    }
    for (int k = 0; k < nr; k++) {
        double keep = p->r[k];
        p->r[k] = keep + h;
        double up = value(p);
        p->r[k] = keep - h;
        double down = value(p);
        p->r[k] = keep;
        fd_r[k] = (up - down) / (2 * h);
    }
    double keep = p->k_sub;
    p->k_sub = keep + h;
    double up = value(p);
    p->k_sub = keep - h;
    double down = value(p);
    p->k_sub = keep;
    double fd_k = (up - down) / (2 * h);

    char label[128];
    snprintf(label, sizeof label, "%s: d loss / d logits (seed %llu)", what,
             (unsigned long long)test_seed());
    cr_expect(test_allclose(label, dlogits, fd_f, (size_t)nf, atol, rtol), "%s", label);
    snprintf(label, sizeof label, "%s: d loss / d r (seed %llu)", what,
             (unsigned long long)test_seed());
    cr_expect(test_allclose(label, dr, fd_r, (size_t)nr, atol, rtol), "%s", label);
    snprintf(label, sizeof label, "%s: d loss / d k_sub (seed %llu)", what,
             (unsigned long long)test_seed());
    cr_expect(test_allclose(label, &res.dk_sub, &fd_k, 1, atol, rtol), "%s", label);
}

/* Random head rows and k_sub; logits and labels are the caller's business. */
static void random_head(problem *p, lipc_rng *rng, int n, int m, int d)
{
    p->n = n;
    p->m = m;
    p->d = d;
    test_fill_normal(rng, p->r, (size_t)(m * d));
    p->k_sub = 0.5 + lipc_rng_uniform(rng);
}

/* Logits away from every switching point of GloRo: a top logit ahead of the
 * second by >= gap, and a maximiser of f_i + eps K_ji ahead by >= gap too.
 * Labels alternate between the prediction and another class. */
static void gloro_logits(problem *p, lipc_rng *rng)
{
    const double gap = 1e-3;
    for (int b = 0; b < p->n; b++) {
        double *f = p->f + b * p->m;
        for (;;) {
            for (int i = 0; i < p->m; i++)
                f[i] = 2.0 * lipc_rng_normal(rng);
            int j = 0;
            for (int i = 1; i < p->m; i++)
                if (f[i] > f[j])
                    j = i;
            double second = -INFINITY, top_v = -INFINITY, second_v = -INFINITY;
            for (int i = 0; i < p->m; i++) {
                if (i == j)
                    continue;
                second = fmax(second, f[i]);
                double v = f[i] + p->spec.eps * p->k_sub * row_dist(p, j, i);
                if (v > top_v) {
                    second_v = top_v;
                    top_v = v;
                } else if (v > second_v) {
                    second_v = v;
                }
            }
            if (f[j] - second >= gap && top_v - second_v >= gap) {
                /* (j + 1 + k) % m with k < m - 1 is never j */
                p->y[b] = b % 2 == 0 ? j : (j + 1 + (b / 2) % (p->m - 1)) % p->m;
                break;
            }
        }
    }
}

/* EMMA logits with chosen ratios rho_i = (f_y - f_i) / (eps K_i), so that each
 * class lands in a known part of the clip: f_i = f_y - rho_i eps K_i. The
 * ratios of the non-label classes are a rotation of `rho` per example. */
static void emma_logits(problem *p, lipc_rng *rng, const double *rho, int n_rho)
{
    for (int b = 0; b < p->n; b++) {
        int y = (int)(lipc_rng_next(rng) % (uint64_t)p->m);
        p->y[b] = y;
        double *f = p->f + b * p->m;
        f[y] = lipc_rng_normal(rng);
        int c = b;
        for (int i = 0; i < p->m; i++) {
            if (i == y)
                continue;
            double jitter = 1.0 + 0.05 * (lipc_rng_uniform(rng) - 0.5);
            double k_i = p->k_sub * row_dist(p, y, i);
            f[i] = f[y] - rho[c++ % n_rho] * jitter * p->spec.eps * k_i;
        }
    }
}

/* ---- pair bounds ---------------------------------------------------------------- */

Test(loss, kpair_hand_rows)
{
    problem p;
    hand_rows(&p);
    double k[9];
    lipc_kpair(3, 2, p.r, 0.25, k);
    double want[9] = {0, 1.25, 1.0, 1.25, 0, 0.75, 1.0, 0.75, 0};
    cr_expect(test_allclose("kpair", k, want, 9, 0, 0));
}

/* ---- hand-computed tiny cases ------------------------------------------------- */

/* m = 2, rows (0,0) and (3,4): K = k_sub 5 = 1.25, eps K = 0.5 at eps 0.4. */
static void two_class(problem *p, lipc_loss kind, double f0, double f1, int y)
{
    memset(p, 0, sizeof *p);
    p->spec = (lipc_loss_spec){.kind = kind, .eps = 0.4, .trades_lambda = 6.0};
    p->n = 1;
    p->m = 2;
    p->d = 2;
    double rows[4] = {0, 0, 3, 4};
    memcpy(p->r, rows, sizeof rows);
    p->k_sub = 0.25;
    p->f[0] = f0;
    p->f[1] = f1;
    p->y[0] = y;
}

Test(loss, margin_two_classes_by_hand)
{
    /* z = [2, 0 + 0.5]: loss = log(1 + e^-1.5); with s = sigmoid(-1.5):
     *   d/df = [-s, s],  d/dK = s eps,  d/dk_sub = s eps 5 = 2 s,
     *   d/dr0 = s eps k_sub (r0 - r1) / 5 = 0.1 s (-0.6, -0.8) = -d/dr1 */
    problem p;
    two_class(&p, LIPC_LOSS_MARGIN, 2.0, 0.0, 0);
    double dl[2], dr[4] = {0};
    lipc_loss_result res = run_loss(&p, dl, dr);
    double s = 1.0 / (1.0 + exp(1.5));
    cr_expect_float_eq(res.loss, log1p(exp(-1.5)), 1e-15);
    double want_dl[2] = {-s, s}, want_dr[4] = {-0.06 * s, -0.08 * s, 0.06 * s, 0.08 * s};
    cr_expect(test_allclose("margin dlogits", dl, want_dl, 2, 1e-15, 1e-13));
    cr_expect(test_allclose("margin dr", dr, want_dr, 4, 1e-15, 1e-13));
    cr_expect_float_eq(res.dk_sub, 2.0 * s, 1e-14);
    cr_expect_eq(res.n_correct, 1);
    cr_expect_eq(res.n_certified, 1); /* margin 2 > 0.5 */
}

Test(loss, emma_two_classes_by_hand)
{
    /* e = clip(0.25 / 0.5) = 0.5: z = [0.25, 0 + 0.5 * 0.5] = [0.25, 0.25],
     * loss = log 2, d/df = [-1/2, 1/2], d/dk_sub = 1/2 e eps 5 = 0.5. */
    problem p;
    two_class(&p, LIPC_LOSS_EMMA, 0.25, 0.0, 0);
    double dl[2], dr[4] = {0};
    lipc_loss_result res = run_loss(&p, dl, dr);
    cr_expect_float_eq(res.loss, log(2.0), 1e-15);
    double want_dl[2] = {-0.5, 0.5};
    cr_expect(test_allclose("emma dlogits", dl, want_dl, 2, 1e-15, 1e-13));
    cr_expect_float_eq(res.dk_sub, 0.5, 1e-14);
    /* far apart the clip gives e = 1: the margin loss */
    two_class(&p, LIPC_LOSS_EMMA, 2.0, 0.0, 0);
    cr_expect_float_eq(value_ref(&p), log1p(exp(-1.5)), 1e-15);
}

Test(loss, emma_three_classes_by_hand)
{
    /* rows (0,0), (3,4), (0,4), k_sub 0.25, eps 0.4, y = 0: eps K_1 = 0.5,
     * eps K_2 = 0.4. */
    problem p;
    memset(&p, 0, sizeof p);
    hand_rows(&p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_EMMA, .eps = 0.4};
    p.n = 1;
    p.k_sub = 0.25;
    /* e_1 = 0.1 / 0.5 = 0.2 (inside the clip): z_1 = 0.9 + 0.1 = 1 = f_y;
     * e_2 = 6 / 0.4 -> 1: z_2 = -5 + 0.4. loss = log(2 e + e^-4.6) - 1. */
    double f1[3] = {1.0, 0.9, -5.0};
    memcpy(p.f, f1, sizeof f1);
    cr_expect_float_eq(value_ref(&p), log(2.0 * exp(1.0) + exp(-4.6)) - 1.0, 1e-14);
    /* e_1 = -0.2 / 0.5 -> 0.01, e_2 = 0.001 / 0.4 -> 0.01 (lower clip, also
     * for a class that beats the label): z = [1, 1.2 + 0.005, 0.999 + 0.004] */
    double f2[3] = {1.0, 1.2, 0.999};
    memcpy(p.f, f2, sizeof f2);
    double z[3] = {1.0, 1.205, 1.003};
    cr_expect_float_eq(value_ref(&p), lse(3, z) - 1.0, 1e-14);
    /* the non-adaptive margin loss pushes by the full eps K instead */
    p.spec.kind = LIPC_LOSS_MARGIN;
    double zm[3] = {1.0, 1.7, 1.399};
    cr_expect_float_eq(value_ref(&p), lse(3, zm) - 1.0, 1e-14);
}

Test(loss, gloro_and_trades_by_hand)
{
    problem p;
    memset(&p, 0, sizeof p);
    hand_rows(&p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_GLORO, .eps = 0.4, .trades_lambda = 6.0};
    p.n = 1;
    p.k_sub = 0.25;
    /* j = 0: f_bot = max(0 + 0.4 * 1.25, 1 + 0.4 * 1) = 1.4, from class 2. */
    double f[3] = {2.0, 0.0, 1.0};
    memcpy(p.f, f, sizeof f);
    double u[4] = {2.0, 0.0, 1.0, 1.4};
    p.y[0] = 0;
    double dl[3], dr[6] = {0};
    lipc_loss_result res = run_loss(&p, dl, dr);
    cr_expect_float_eq(res.loss, lse(4, u) - 2.0, 1e-14);
    /* q = softmax(u): d/df = q[:3] - onehot(0), plus q_bot at class 2;
     * d/dK_02 = q_bot eps and d/dk_sub = q_bot eps ||r0 - r2|| = 1.6 q_bot */
    double q[4], l = lse(4, u);
    for (int i = 0; i < 4; i++)
        q[i] = exp(u[i] - l);
    double want[3] = {q[0] - 1.0, q[1], q[2] + q[3]};
    cr_expect(test_allclose("gloro dlogits", dl, want, 3, 1e-15, 1e-13));
    cr_expect_float_eq(res.dk_sub, 1.6 * q[3], 1e-14);
    /* d/dr0 = q_bot eps k_sub (r0 - r2) / 4 = 0.1 q_bot (0, -1) = -d/dr2 */
    double want_dr[6] = {0, -0.1 * q[3], 0, 0, 0, 0.1 * q[3]};
    cr_expect(test_allclose("gloro dr", dr, want_dr, 6, 1e-15, 1e-13));

    /* a wrong label: the same u, CE against class 1 */
    p.y[0] = 1;
    cr_expect_float_eq(value_ref(&p), lse(4, u) - 0.0, 1e-14);
    /* TRADES: CE(f, 1) + 6 (lse(u) - lse(f)) */
    p.spec.kind = LIPC_LOSS_TRADES;
    cr_expect_float_eq(value_ref(&p), lse(3, f) - 0.0 + 6.0 * (lse(4, u) - lse(3, f)), 1e-13);

    /* prediction j = 2: f_bot = max(0 + 0.4 * 1, 1 + 0.4 * 0.75) = 1.3 */
    p.spec.kind = LIPC_LOSS_GLORO;
    double g[3] = {0.0, 1.0, 3.0}, v[4] = {0.0, 1.0, 3.0, 1.3};
    memcpy(p.f, g, sizeof g);
    p.y[0] = 2;
    cr_expect_float_eq(value_ref(&p), lse(4, v) - 3.0, 1e-14);

    /* a tie for f_bot (the convention: the lowest index takes the gradient):
     * at eps 0.5, 0.375 + 0.625 = 0.5 + 0.5 = 1 exactly */
    p.spec.eps = 0.5;
    double t[3] = {2.0, 0.375, 0.5}, ut[4] = {2.0, 0.375, 0.5, 1.0};
    memcpy(p.f, t, sizeof t);
    p.y[0] = 0;
    run_loss(&p, dl, NULL);
    l = lse(4, ut);
    cr_expect_float_eq(dl[1], exp(ut[1] - l) + exp(ut[3] - l), 1e-15);
    cr_expect_float_eq(dl[2], exp(ut[2] - l), 1e-15);
}

/* ---- central-difference gradients ---------------------------------------------- */

Test(loss, margin_gradients)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed());
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_MARGIN, .eps = 0.3};
    random_head(&p, &rng, 4, 5, 3);
    for (int b = 0; b < p.n; b++)
        p.y[b] = (int32_t)(lipc_rng_next(&rng) % (uint64_t)p.m);
    test_fill_normal(&rng, p.f, (size_t)(p.n * p.m));
    check_gradients(&p, value_ref, "margin");
}

Test(loss, gloro_gradients)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed() + 1);
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_GLORO, .eps = 0.3};
    random_head(&p, &rng, 4, 4, 3);
    gloro_logits(&p, &rng);
    check_gradients(&p, value_ref, "gloro");
}

Test(loss, trades_gradients)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed() + 2);
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_TRADES, .eps = 0.3, .trades_lambda = 3.0};
    random_head(&p, &rng, 4, 4, 3);
    gloro_logits(&p, &rng);
    check_gradients(&p, value_ref, "trades");
}

/* Ratios that put every class inside the clip's flat parts, far from 0.01
 * and 1: there e is locally constant and the plain derivative is the answer. */
Test(loss, emma_gradients_clip_active)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed() + 3);
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_EMMA, .eps = 0.3};
    random_head(&p, &rng, 4, 5, 3);
    const double rho[4] = {-1.0, 0.003, 1.5, 3.0};
    emma_logits(&p, &rng, rho, 4);
    check_gradients(&p, value_ref, "emma, every clip active");
}

/* Ratios on both sides of and inside the clip in every example: the analytic
 * gradient is the frozen-e surrogate's. */
Test(loss, emma_gradients_mixed_clip)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed() + 4);
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_EMMA, .eps = 0.3};
    random_head(&p, &rng, 4, 5, 3);
    const double rho[4] = {-0.5, 0.3, 0.6, 2.5};
    emma_logits(&p, &rng, rho, 4);
    emma_freeze(&p);

    int low = 0, mid = 0, high = 0;
    for (int b = 0; b < p.n; b++) {
        for (int i = 0; i < p.m; i++) {
            if (i == p.y[b])
                continue;
            double e = p.e[b * p.m + i];
            low += e == 0.01;
            high += e == 1.0;
            mid += e > 0.01 && e < 1.0;
        }
    }
    cr_assert(low > 0 && mid > 0 && high > 0, "clip cases: %d low, %d inside, %d high", low,
              mid, high);
    cr_expect_float_eq(value_frozen(&p), value_ref(&p), 1e-14,
                       "the frozen surrogate must equal EMMA at the base point");
    check_gradients(&p, value_frozen, "emma, e frozen");
}

/* Inside the clip z_i = f_i + (f_y - f_i) = f_y, so the true derivative of
 * EMMA's value w.r.t. such an f_i is 0 while the stop-gradient's is
 * softmax(z)_i > 0: a plain finite difference must disagree there. */
Test(loss, emma_stop_gradient_differs_from_true_derivative)
{
    problem p;
    memset(&p, 0, sizeof p);
    hand_rows(&p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_EMMA, .eps = 0.4};
    p.n = 1;
    p.k_sub = 0.25;
    double f[3] = {1.0, 0.9, -5.0}; /* e_1 = 0.2, inside the clip */
    memcpy(p.f, f, sizeof f);
    double dl[3];
    run_loss(&p, dl, NULL);
    const double h = 1e-6;
    p.f[1] = 0.9 + h;
    double up = value_ref(&p);
    p.f[1] = 0.9 - h;
    double down = value_ref(&p);
    double true_d = (up - down) / (2 * h);
    cr_expect(fabs(true_d) < 1e-8, "true derivative %g", true_d);
    cr_expect(dl[1] > 0.4, "stop-gradient derivative %g", dl[1]);
}

/* Two coinciding head rows: ||r_0 - r_1|| has no derivative; the backward
 * must stay finite and take 0 for that pair, so the row gradients still sum
 * to zero (the loss is translation invariant in r). */
Test(loss, coinciding_rows_give_finite_gradients)
{
    problem p;
    memset(&p, 0, sizeof p);
    p.spec = (lipc_loss_spec){.kind = LIPC_LOSS_MARGIN, .eps = 0.4};
    p.n = 1;
    p.m = 3;
    p.d = 2;
    double rows[6] = {1, 2, 1, 2, 0, 4};
    memcpy(p.r, rows, sizeof rows);
    p.k_sub = 0.5;
    double f[3] = {1.0, 0.5, -1.0};
    memcpy(p.f, f, sizeof f);
    double dl[3], dr[6] = {0};
    lipc_loss_result res = run_loss(&p, dl, dr);
    cr_expect(isfinite(res.loss) && isfinite(res.dk_sub));
    for (int k = 0; k < 6; k++)
        cr_expect(isfinite(dr[k]), "dr[%d] = %g", k, dr[k]);
    for (int t = 0; t < 2; t++)
        cr_expect(fabs(dr[t] + dr[2 + t] + dr[4 + t]) < 1e-15);
    /* class 1's pair has K = 0: d/dr1 is zero, only the (0, 2) pair pushes */
    cr_expect(dr[2] == 0.0 && dr[3] == 0.0);
}

Test(loss, forward_only_leaves_gradients_alone)
{
    problem p;
    two_class(&p, LIPC_LOSS_EMMA, 0.25, 0.0, 0);
    lipc_loss_result res = run_loss(&p, NULL, NULL);
    cr_expect_float_eq(res.loss, log(2.0), 1e-15);
    cr_expect_eq(res.dk_sub, 0.0);
    /* the mean over an empty batch is 0, not NaN */
    p.n = 0;
    res = run_loss(&p, NULL, NULL);
    cr_expect_eq(res.loss, 0.0);
}

Test(loss, out_of_memory_is_reported)
{
    problem p;
    two_class(&p, LIPC_LOSS_GLORO, 2.0, 0.0, 0);
    double dl[2] = {7, 7}, dr[4] = {7, 7, 7, 7};
    lipc_loss_result res;
    lipc_alloc_fail_after(1);
    lipc_status st = lipc_ref_loss(&p.spec, p.n, p.m, p.d, p.f, p.y, p.k_sub, p.r, dl, dr,
                                   &res);
    lipc_alloc_fail_after(0);
    cr_expect_eq(st, LIPC_ERR_NOMEM);
    cr_expect(res.loss == 0.0 && res.n_correct == 0);
    cr_expect(dl[0] == 7 && dl[1] == 7 && dr[0] == 7 && dr[3] == 7, "outputs untouched");
}

/* ---- metrics ---------------------------------------------------------------------- */

/* Rows (0,0), (3,4), (0,4), k_sub 0.25, eps 0.4: the certificate needs margins
 * above eps K = 0.5 (pair 0-1), 0.4 (0-2), 0.3 (1-2). */
Test(loss, metrics_on_a_hand_batch)
{
    static const double f[6][3] = {
        {2.0, 0.0, 0.0},  /* correct, certified */
        {0.5, 0.0, 0.0},  /* correct, margin to class 1 exactly at eps K: not certified */
        {1.0, 1.0, 0.0},  /* tie at the top: wrong */
        {0.0, 3.0, 0.0},  /* wrong, with a large margin */
        {0.0, 0.0, 1.0},  /* correct, certified */
        {0.51, 0.0, 0.0}, /* correct, just above the threshold: certified */
    };
    static const int32_t y[6] = {0, 0, 0, 0, 2, 0};
    for (int kind = LIPC_LOSS_EMMA; kind <= LIPC_LOSS_TRADES; kind++) {
        problem p;
        memset(&p, 0, sizeof p);
        hand_rows(&p);
        p.spec = (lipc_loss_spec){.kind = (lipc_loss)kind, .eps = 0.4, .trades_lambda = 1.0};
        p.n = 6;
        p.k_sub = 0.25;
        memcpy(p.f, f, sizeof f);
        memcpy(p.y, y, sizeof y);
        lipc_loss_result res = run_loss(&p, NULL, NULL);
        cr_expect_eq(res.n_correct, 4, "%s: %d correct", lipc_loss_names[kind],
                     res.n_correct);
        cr_expect_eq(res.n_certified, 3, "%s: %d certified", lipc_loss_names[kind],
                     res.n_certified);
    }
}

/* The training metric and the certifier share one rule: on logits on a grid
 * of 0.25 (many ties, margins that repeat) and at several radii (so that
 * points are both certified and not), they must count the same points. */
Test(loss, metrics_agree_with_certify)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed() + 5);
    enum { N = 200, M = 4, D = 2, N_EPS = 6 };
    double r[M * D], kpair[M * M], f[N * M];
    int32_t y[N];
    for (int k = 0; k < M * D; k++)
        r[k] = (double)(int)(lipc_rng_next(&rng) % 9) - 4.0; /* small integers */
    for (int k = 0; k < N * M; k++)
        f[k] = 0.25 * (double)(int)(lipc_rng_next(&rng) % 9);
    for (int b = 0; b < N; b++)
        y[b] = (int32_t)(lipc_rng_next(&rng) % M);
    const double k_sub = 0.25, eps[N_EPS] = {0.0, 0.03125, 0.125, 0.25, 0.5, 1.0};
    lipc_kpair(M, D, r, k_sub, kpair);

    lipc_cert_summary s;
    cr_assert_eq(lipc_cert_summary_init(&s, N_EPS, eps, 0.0), LIPC_OK);
    lipc_certify_batch(&s, N, M, f, y, kpair, NULL);
    cr_expect(s.n_tie > 0, "the batch should have ties (seed %llu)",
              (unsigned long long)test_seed());
    bool some_certified = false, some_not = false;
    for (int k = 0; k < N_EPS; k++) {
        lipc_loss_spec spec = {.kind = LIPC_LOSS_EMMA, .eps = eps[k]};
        lipc_loss_result res;
        cr_assert_eq(lipc_ref_loss(&spec, N, M, D, f, y, k_sub, r, NULL, NULL, &res),
                     LIPC_OK);
        cr_expect_eq(res.n_correct, s.n_correct, "seed %llu: %d vs %ld correct",
                     (unsigned long long)test_seed(), res.n_correct, s.n_correct);
        cr_expect_eq(res.n_certified, s.n_vra[k], "seed %llu, eps %g: %d vs %ld certified",
                     (unsigned long long)test_seed(), eps[k], res.n_certified, s.n_vra[k]);
        some_certified |= res.n_certified > 0;
        some_not |= res.n_certified < res.n_correct;
    }
    cr_expect(some_certified && some_not, "seed %llu: the radii should split the points",
              (unsigned long long)test_seed());
}
