/* tests/testutil.h: helpers shared by lipc's Criterion tests. */
#ifndef LIPC_TESTUTIL_H
#define LIPC_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "support/support.h"

/* The seed of the test run: $LIPC_TEST_SEED when set, else a fixed default.
 * Print it in every failure message that depends on random data. */
uint64_t test_seed(void);

/* Elementwise |got[i] - want[i]| <= atol + rtol * |want[i]| (NaN only matches
 * NaN). On failure prints to stderr: the label, the first pairs that differ,
 * the worst index, the max error and the normalised error
 * ||got - want|| / ||want||; returns false. */
bool test_allclose(const char *label, const double *got, const double *want,
                   size_t n, double atol, double rtol);
/* The same for a float result against a double reference (fast backends). */
bool test_allclose_f32(const char *label, const float *got, const double *want,
                       size_t n, double atol, double rtol);

/* Fills v[0..n) with N(0, 1) or uniform [lo, hi) draws. */
void test_fill_normal(lipc_rng *r, double *v, size_t n);
void test_fill_uniform(lipc_rng *r, double *v, size_t n, double lo, double hi);

#endif
