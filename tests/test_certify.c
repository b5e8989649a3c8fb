/* tests/test_certify.c: certification from logits and pair bounds
 * (runtime/certify.c, METHOD.md section 1).
 *
 * Hand-made points cover each rule: a clear certificate, a tie for the top
 * logit (never certified, never correct), margins exactly at the threshold
 * (exactly representable, so "not certified" is the exact answer) and one ulp
 * of radius below it, a zero pair bound (certified at any radius), a wrong
 * prediction with a large margin (certified, but not in the VRA), NaN and Inf
 * (not certified, flagged), several radii in one pass, the float slack and the
 * histogram. Over many random points, radius > eps <=> certified is checked
 * at eps = the radius itself and one ulp either side, and the certificate
 * against the plain rule f_j - f_i > eps K wherever eps is not within
 * rounding of a threshold. The pair bounds are built here from head rows
 * without backend/ (runtime does not depend on it). */
#include <criterion/criterion.h>

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/testutil.h"

/* The hand rows (0,0), (3,4), (0,4) with k_sub = 0.25: exact bounds
 * K01 = 1.25, K02 = 1, K12 = 0.75. */
static const double hand_k[9] = {0, 1.25, 1.0, 1.25, 0, 0.75, 1.0, 0.75, 0};
/* Two classes with K = 1: the radius is the margin. */
static const double unit_k[4] = {0, 1, 1, 0};

static lipc_cert_summary summary(int n_eps, const double *eps, double slack)
{
    lipc_cert_summary s;
    cr_assert_eq(lipc_cert_summary_init(&s, n_eps, eps, slack), LIPC_OK);
    return s;
}

/* ---- single points ------------------------------------------------------------- */

Test(certify, clear_certificate)
{
    double f[3] = {3.0, 0.0, 0.0};
    lipc_cert_point pt = lipc_certify_point(3, f, hand_k, 0.0);
    cr_expect_eq(pt.pred, 0);
    cr_expect(!pt.tie && !pt.invalid);
    cr_expect_eq(pt.radius, 3.0 / 1.25); /* min(3 / 1.25, 3 / 1) */

    double eps[3] = {0.141, 1.0, 2.4};
    lipc_cert_summary s = summary(3, eps, 0.0);
    int32_t y = 0;
    double radius;
    lipc_certify_batch(&s, 1, 3, f, &y, hand_k, &radius);
    cr_expect_eq(radius, 2.4);
    cr_expect_eq(s.n_correct, 1);
    cr_expect(s.n_vra[0] == 1 && s.n_vra[1] == 1 && s.n_vra[2] == 0,
              "2.4 is not > 2.4: %ld %ld %ld", s.n_vra[0], s.n_vra[1], s.n_vra[2]);
    cr_expect(!s.error);
}

Test(certify, tie_for_the_top_is_never_certified)
{
    double f[3] = {1.0, 1.0, -50.0};
    lipc_cert_point pt = lipc_certify_point(3, f, hand_k, 0.0);
    cr_expect(pt.tie && pt.pred == -1 && pt.radius == 0.0);

    double eps = 0.0;
    lipc_cert_summary s = summary(1, &eps, 0.0);
    int32_t y[2] = {0, 1}; /* either tied class as the label: wrong */
    double f2[6] = {1.0, 1.0, -50.0, 1.0, 1.0, -50.0};
    lipc_certify_batch(&s, 2, 3, f2, y, hand_k, NULL);
    cr_expect_eq(s.n_tie, 2);
    cr_expect_eq(s.n_correct, 0);
    cr_expect_eq(s.n_certified[0], 0, "a tie must not be certified even at eps 0");
    cr_expect(!s.error, "a tie is a valid answer, not an error");
    /* a tie below the top does not matter */
    double f3[3] = {2.0, 1.0, 1.0};
    cr_expect_eq(lipc_certify_point(3, f3, hand_k, 0.0).pred, 0);
}

Test(certify, margin_exactly_at_the_threshold)
{
    /* f_0 - f_1 = 1 = eps K with K = 1, eps = 1: every number exact, and the
     * strict rule says no; one ulp smaller eps says yes. */
    double f[2] = {1.5, 0.5};
    int32_t y = 0;
    double eps[3] = {1.0, nextafter(1.0, 0.0), nextafter(1.0, 2.0)};
    lipc_cert_summary s = summary(3, eps, 0.0);
    lipc_certify_batch(&s, 1, 2, f, &y, unit_k, NULL);
    cr_expect(s.n_vra[0] == 0 && s.n_vra[1] == 1 && s.n_vra[2] == 0, "%ld %ld %ld",
              s.n_vra[0], s.n_vra[1], s.n_vra[2]);

    /* the same with K = 1.25 and margin 0.5: 0.5 / 1.25 rounds to the double
     * eps = 0.4, so at eps = 0.4 the point is not certified */
    double g[3] = {0.5, 0.0, 0.0};
    double e2[2] = {0.4, nextafter(0.4, 0.0)};
    s = summary(2, e2, 0.0);
    lipc_certify_batch(&s, 1, 3, g, &y, hand_k, NULL);
    cr_expect(s.n_vra[0] == 0 && s.n_vra[1] == 1, "%ld %ld", s.n_vra[0], s.n_vra[1]);

    /* just above the threshold */
    double h[2] = {1.5 + 0x1p-40, 0.5};
    s = summary(1, eps, 0.0);
    lipc_certify_batch(&s, 1, 2, h, &y, unit_k, NULL);
    cr_expect_eq(s.n_vra[0], 1);

    /* float logits: 0.75f - 0.25f = 0.5 = 0.5 * 1 exactly */
    float ff[2] = {0.75f, 0.25f};
    double e3[2] = {0.5, 0.4999};
    s = summary(2, e3, 0.0);
    lipc_certify_batch_f32(&s, 1, 2, ff, &y, unit_k, NULL);
    cr_expect(s.n_vra[0] == 0 && s.n_vra[1] == 1, "%ld %ld", s.n_vra[0], s.n_vra[1]);
}

Test(certify, zero_pair_bound_certifies_any_radius)
{
    double k0[4] = {0, 0, 0, 0};
    double f[2] = {1.0, 0.0};
    lipc_cert_point pt = lipc_certify_point(2, f, k0, 0.0);
    cr_expect(pt.pred == 0 && isinf(pt.radius) && pt.radius > 0);

    double eps[2] = {1.0, 1e300};
    lipc_cert_summary s = summary(2, eps, 0.0);
    int32_t y = 0;
    lipc_certify_batch(&s, 1, 2, f, &y, k0, NULL);
    cr_expect(s.n_vra[0] == 1 && s.n_vra[1] == 1);
    cr_expect_eq(s.n_inf_radius, 1);
    cr_expect_eq(s.hist[LIPC_CERT_N_BINS - 1], 1);
    /* a zero bound does not help a margin the slack eats */
    pt = lipc_certify_point(2, f, k0, 1.0);
    cr_expect(pt.pred == 0 && pt.radius == 0.0);
    /* one class: nothing to flip */
    cr_expect(isinf(lipc_certify_point(1, f, k0, 0.0).radius));
}

Test(certify, wrong_prediction_is_certified_but_not_in_vra)
{
    double f[3] = {0.0, 10.0, 0.0};
    int32_t y = 0;
    double eps = 0.5;
    lipc_cert_summary s = summary(1, &eps, 0.0);
    lipc_certify_batch(&s, 1, 3, f, &y, hand_k, NULL);
    cr_expect_eq(s.n_certified[0], 1);
    cr_expect_eq(s.n_vra[0], 0);
    cr_expect_eq(s.n_correct, 0);
    cr_expect_eq(s.hist[0] + s.hist[LIPC_CERT_N_BINS - 1], 0, "only correct points are binned");
}

Test(certify, nan_and_inf_are_flagged)
{
    double eps = 0.0;
    lipc_cert_summary s = summary(1, &eps, 0.0);
    double f[4 * 3] = {NAN, 0, 0, INFINITY, 0, 0, 5, -INFINITY, 0, 5, 0, 0};
    int32_t y[4] = {0, 0, 0, 0};
    double radius[4] = {-1, -1, -1, -1};
    lipc_certify_batch(&s, 4, 3, f, y, hand_k, radius);
    cr_expect_eq(s.n_invalid, 3);
    cr_expect(s.error);
    cr_expect_eq(s.n_correct, 1);
    cr_expect_eq(s.n_certified[0], 1, "only the clean point");
    for (int b = 0; b < 3; b++)
        cr_expect_eq(radius[b], 0.0);
    cr_expect(lipc_certify_point(3, f, hand_k, 0.0).invalid);

    /* NaN, Inf or a negative bound in the prediction's row */
    double bad[3] = {NAN, INFINITY, -1.0};
    for (int t = 0; t < 3; t++) {
        double k[9];
        memcpy(k, hand_k, sizeof k);
        k[0 * 3 + 2] = bad[t];
        double g[3] = {5, 0, 0};
        lipc_cert_point pt = lipc_certify_point(3, g, k, 0.0);
        cr_expect(pt.invalid && pt.pred == -1 && pt.radius == 0.0, "bad bound %g", bad[t]);
        /* a row the prediction does not use is not read */
        double g2[3] = {0, 5, 0};
        cr_expect(!lipc_certify_point(3, g2, k, 0.0).invalid);
    }

    /* a label out of range is invalid input too */
    s = summary(1, &eps, 0.0);
    int32_t y_bad[2] = {3, -1};
    double g[6] = {5, 0, 0, 5, 0, 0};
    lipc_certify_batch(&s, 2, 3, g, y_bad, hand_k, NULL);
    cr_expect(s.n_invalid == 2 && s.error && s.n_certified[0] == 0);
}

/* ---- a whole evaluation -------------------------------------------------------- */

Test(certify, several_radii_in_one_pass)
{
    /* K = 1: radii are the margins 0.05, 0.2, 0.4, 0.8, 2 and a wrong point */
    double f[6 * 2] = {0.05, 0, 0.2, 0, 0.4, 0, 0.8, 0, 2, 0, 0, 3};
    int32_t y[6] = {0, 0, 0, 0, 0, 0};
    double eps[5] = {0.1, 0.141, 0.3, 0.5, 1.0};
    lipc_cert_summary s = summary(5, eps, 0.0);
    /* in two batches: counts accumulate */
    lipc_certify_batch(&s, 2, 2, f, y, unit_k, NULL);
    lipc_certify_batch(&s, 4, 2, f + 4, y + 2, unit_k, NULL);
    long want_vra[5] = {4, 4, 3, 2, 1}, want_cert[5] = {5, 5, 4, 3, 2};
    for (int k = 0; k < 5; k++) {
        cr_expect_eq(s.n_vra[k], want_vra[k], "eps %g: vra %ld", eps[k], s.n_vra[k]);
        cr_expect_eq(s.n_certified[k], want_cert[k], "eps %g: certified %ld", eps[k],
                     s.n_certified[k]);
    }
    cr_expect_eq(s.n, 6);
    cr_expect_eq(s.n_correct, 5);
    cr_expect_float_eq(lipc_cert_clean_accuracy(&s), 5.0 / 6.0, 1e-15);
    cr_expect_float_eq(lipc_cert_vra(&s, 3), 2.0 / 6.0, 1e-15);
    cr_expect_eq(s.min_radius_correct, 0.05);
    cr_expect_float_eq(s.sum_radius_correct, 0.05 + 0.2 + 0.4 + 0.8 + 2.0, 1e-15);
}

Test(certify, float_slack_tightens_the_certificate)
{
    double f[2] = {1.0, 0.0};
    cr_expect_eq(lipc_certify_point(2, f, unit_k, 0.25).radius, 0.75);
    cr_expect_eq(lipc_certify_point(2, f, unit_k, 2.0).radius, 0.0);
    float ff[2] = {1.0f, 0.0f};
    cr_expect_eq(lipc_certify_point_f32(2, ff, unit_k, 0.25).radius, 0.75);
    /* still correct, certified nowhere, binned at 0 */
    double eps = 0.0;
    lipc_cert_summary s = summary(1, &eps, 2.0);
    int32_t y = 0;
    lipc_certify_batch(&s, 1, 2, f, &y, unit_k, NULL);
    cr_expect(s.n_correct == 1 && s.n_vra[0] == 0 && s.hist[0] == 1);
}

Test(certify, radius_histogram_bins)
{
    /* 0.07 -> [0.05, 0.1); 0.1 = 2 * 0.05 exactly -> [0.1, 0.15); 5 and +inf
     * -> the last bin */
    double f[4 * 2] = {0.07, 0, 0.1, 0, 5.0, 0, 1.0, 0};
    int32_t y[4] = {0, 0, 0, 0};
    lipc_cert_summary s = summary(0, NULL, 0.0);
    lipc_certify_batch(&s, 3, 2, f, y, unit_k, NULL);
    double k0[4] = {0};
    lipc_certify_batch(&s, 1, 2, f + 6, y, k0, NULL);
    cr_expect(s.hist[1] == 1 && s.hist[2] == 1 && s.hist[LIPC_CERT_N_BINS - 1] == 2,
              "%ld %ld %ld", s.hist[1], s.hist[2], s.hist[LIPC_CERT_N_BINS - 1]);
    long total = 0;
    for (int b = 0; b < LIPC_CERT_N_BINS; b++)
        total += s.hist[b];
    cr_expect_eq(total, s.n_correct);
}

Test(certify, init_rejects_bad_settings)
{
    double eps[LIPC_CERT_MAX_EPS + 1] = {0};
    lipc_cert_summary s;
    cr_expect_eq(lipc_cert_summary_init(&s, LIPC_CERT_MAX_EPS + 1, eps, 0.0), LIPC_ERR_INPUT);
    cr_expect_eq(lipc_cert_summary_init(&s, LIPC_CERT_MAX_EPS, eps, 0.0), LIPC_OK);
    double neg = -0.1, nan_eps = NAN;
    cr_expect_eq(lipc_cert_summary_init(&s, 1, &neg, 0.0), LIPC_ERR_INPUT);
    cr_expect_eq(lipc_cert_summary_init(&s, 1, &nan_eps, 0.0), LIPC_ERR_INPUT);
    cr_expect_eq(lipc_cert_summary_init(&s, 0, NULL, -1e-9), LIPC_ERR_INPUT);
    cr_expect_eq(lipc_cert_summary_init(&s, 0, NULL, INFINITY), LIPC_ERR_INPUT);
}

Test(certify, summary_as_json)
{
    double f[3 * 2] = {2.0, 0, 0, 0.5, 1.0, 0};
    int32_t y[3] = {0, 1, 0};
    double eps[2] = {0.141, 1.0};
    lipc_cert_summary s = summary(2, eps, 0.0);
    lipc_certify_batch(&s, 3, 2, f, y, unit_k, NULL);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_cert_summary_json(&s, &b);
    json_error_t err;
    json_t *j = json_loads(lipc_buf_str(&b), 0, &err);
    cr_assert_not_null(j, "not JSON (%s): %s", err.text, lipc_buf_str(&b));
    cr_expect_eq(json_integer_value(json_object_get(j, "n")), 3);
    cr_expect_eq(json_integer_value(json_object_get(j, "correct")), 3);
    cr_expect(json_is_false(json_object_get(j, "error")));
    cr_expect_float_eq(json_real_value(json_array_get(json_object_get(j, "eps"), 0)), 0.141,
                       0.0, "eps written to round-trip: %s", lipc_buf_str(&b));
    cr_expect(strstr(lipc_buf_str(&b), "0.141,") || strstr(lipc_buf_str(&b), "0.141]"),
              "shortest form: %s", lipc_buf_str(&b));
    json_t *vra = json_object_get(j, "vra_count");
    cr_expect_eq(json_integer_value(json_array_get(vra, 0)), 3);
    cr_expect_eq(json_integer_value(json_array_get(vra, 1)), 1); /* radius 2 only */
    json_t *hist = json_object_get(json_object_get(j, "radius_histogram"), "counts");
    cr_expect_eq(json_array_size(hist), LIPC_CERT_N_BINS);
    cr_expect_float_eq(json_number_value(json_object_get(j, "min_radius_correct")), 0.5, 0.0);
    json_decref(j);
    lipc_buf_free(&b);

    /* nothing correct: the minimum radius is +inf, written as null */
    lipc_cert_summary e = summary(0, NULL, 0.0);
    lipc_buf_init(&b);
    lipc_cert_summary_json(&e, &b);
    j = json_loads(lipc_buf_str(&b), 0, &err);
    cr_assert_not_null(j, "not JSON (%s): %s", err.text, lipc_buf_str(&b));
    cr_expect(json_is_null(json_object_get(j, "min_radius_correct")));
    json_decref(j);
    lipc_buf_free(&b);
}

/* ---- radius and certificate agree everywhere ------------------------------------ */

Test(certify, radius_above_eps_iff_certified)
{
    lipc_rng rng;
    lipc_rng_seed(&rng, test_seed());
    enum { M = 5, D = 3, TRIALS = 2000 };
    int checked_plain = 0;
    for (int t = 0; t < TRIALS; t++) {
        /* pair bounds from random head rows, some of them duplicated (K = 0) */
        double r[M * D], k[M * M], f[M];
        test_fill_normal(&rng, r, M * D);
        if (t % 7 == 0)
            memcpy(r + D, r, D * sizeof *r);
        double k_sub = 0.1 + 3.0 * lipc_rng_uniform(&rng);
        for (int a = 0; a < M; a++) {
            for (int b = 0; b < M; b++) {
                double s2 = 0.0;
                for (int c = 0; c < D; c++)
                    s2 += (r[a * D + c] - r[b * D + c]) * (r[a * D + c] - r[b * D + c]);
                k[a * M + b] = k_sub * sqrt(s2);
            }
        }
        test_fill_normal(&rng, f, M);
        if (t % 11 == 0)
            f[1] = f[3]; /* sometimes a tie, maybe at the top */
        lipc_cert_point pt = lipc_certify_point(M, f, k, 0.0);
        double rad = pt.radius;

        double eps[5] = {rad, nextafter(rad, 0.0), nextafter(rad, INFINITY),
                         2.0 * rad * lipc_rng_uniform(&rng), 0.0};
        for (int e = 0; e < 5; e++)
            if (!isfinite(eps[e]))
                eps[e] = 1e300;
        lipc_cert_summary s = summary(5, eps, 0.0);
        int32_t y = pt.pred < 0 ? 0 : pt.pred;
        lipc_certify_batch(&s, 1, M, f, &y, k, NULL);
        for (int e = 0; e < 5; e++) {
            bool want = rad > eps[e];
            cr_assert_eq(s.n_certified[e] == 1, want,
                         "seed %llu trial %d: radius %.17g, eps %.17g, certified %ld",
                         (unsigned long long)test_seed(), t, rad, eps[e], s.n_certified[e]);

            /* the plain rule f_j - f_i > eps K, where eps is clear of every
             * pair's threshold by more than rounding */
            if (pt.pred < 0)
                continue;
            bool plain = true, clear = true;
            for (int i = 0; i < M; i++) {
                if (i == pt.pred)
                    continue;
                double margin = f[pt.pred] - f[i], rhs = eps[e] * k[pt.pred * M + i];
                plain &= margin > rhs;
                clear &= fabs(margin - rhs) > 1e-12 * (fabs(margin) + fabs(rhs));
            }
            if (clear) {
                checked_plain++;
                cr_assert_eq(plain, want, "seed %llu trial %d: plain rule disagrees",
                             (unsigned long long)test_seed(), t);
            }
        }
        /* float logits give the radius of their exact double values */
        float ff[M];
        double fd[M];
        for (int i = 0; i < M; i++) {
            ff[i] = (float)f[i];
            fd[i] = (double)ff[i];
        }
        lipc_cert_point a = lipc_certify_point_f32(M, ff, k, 0.0);
        lipc_cert_point b = lipc_certify_point(M, fd, k, 0.0);
        cr_assert(a.pred == b.pred && a.radius == b.radius && a.tie == b.tie);
    }
    cr_expect(checked_plain > TRIALS, "only %d comparisons with the plain rule", checked_plain);
}
