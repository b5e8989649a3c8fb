/* tests/testutil.c: the one allclose of lipc's tests, and seeded fills.
 *
 * The comparison is numpy's: |got - want| <= atol + rtol |want| per element. A
 * failure report names the worst element and the normalised error, which tells
 * a rounding difference (1e-7 for float) from a wrong kernel (order 1). */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

uint64_t test_seed(void)
{
    const char *s = getenv("LIPC_TEST_SEED");
    if (s && *s)
        return strtoull(s, NULL, 0);
    return 20240611u;
}

/* got_at(i) abstracts over float and double results. */
typedef double (*value_at)(const void *p, size_t i);
static double at_f64(const void *p, size_t i) { return ((const double *)p)[i]; }
static double at_f32(const void *p, size_t i) { return ((const float *)p)[i]; }

static bool close_one(double g, double w, double atol, double rtol)
{
    if (isnan(w) || isnan(g))
        return isnan(w) && isnan(g);
    if (isinf(w) || isinf(g))
        return g == w;
    return fabs(g - w) <= atol + rtol * fabs(w);
}

static bool allclose(const char *label, const void *got, value_at get,
                     const double *want, size_t n, double atol, double rtol)
{
    size_t bad = 0, worst = 0;
    double max_err = 0.0, worst_excess = -1.0, diff2 = 0.0, want2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        double g = get(got, i), w = want[i];
        double err = fabs(g - w);
        if (!isnan(err)) {
            diff2 += err * err;
            want2 += w * w;
            if (err > max_err)
                max_err = err;
        }
        if (close_one(g, w, atol, rtol))
            continue;
        /* rank failures by how far past the tolerance they are */
        double excess = isnan(err) ? INFINITY : err / (atol + rtol * fabs(w));
        if (bad == 0 || excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
        bad++;
    }
    if (bad == 0)
        return true;
    fprintf(stderr, "allclose FAILED: %s: %zu of %zu elements differ (atol %g, rtol %g)\n",
            label, bad, n, atol, rtol);
    int shown = 0;
    for (size_t i = 0; i < n && shown < 5; i++) {
        double g = get(got, i), w = want[i];
        if (close_one(g, w, atol, rtol))
            continue;
        fprintf(stderr, "  [%zu] got % .10g want % .10g (diff %.3g)\n", i, g, w, g - w);
        shown++;
    }
    fprintf(stderr, "  worst index %zu: got % .10g want % .10g\n", worst, get(got, worst),
            want[worst]);
    fprintf(stderr, "  max error %.3g (NaN excluded), normalised error ||got - want|| / ||want|| = %.3g\n",
            max_err, want2 > 0.0 ? sqrt(diff2 / want2) : sqrt(diff2));
    return false;
}

bool test_allclose(const char *label, const double *got, const double *want,
                   size_t n, double atol, double rtol)
{
    return allclose(label, got, at_f64, want, n, atol, rtol);
}

bool test_allclose_f32(const char *label, const float *got, const double *want,
                       size_t n, double atol, double rtol)
{
    return allclose(label, got, at_f32, want, n, atol, rtol);
}

void test_fill_normal(lipc_rng *r, double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = lipc_rng_normal(r);
}

void test_fill_uniform(lipc_rng *r, double *v, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = lo + (hi - lo) * lipc_rng_uniform(r);
}
