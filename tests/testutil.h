/* tests/testutil.h: helpers shared by lipc's Criterion tests. */
#ifndef LIPC_TESTUTIL_H
#define LIPC_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ir/ir.h"
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

/* ---- a temporary directory per test ------------------------------------------ */

/* Criterion runs each test in its own process, so one directory per process:
 * test_tmp_make (a suite's .init) creates PREFIX-XXXXXX, test_tmp_remove (its
 * .fini) deletes it with everything in it. */
extern char test_tmp_dir[64];
void test_tmp_make(const char *prefix);
void test_tmp_remove(void);
/* test_tmp_dir/name, in one of 64 rotating buffers. */
char *test_tmp_path(const char *name);

/* ---- single ops on hand-built graphs (tests of kernels and their rules) ---- */

/* One op on given input shape(s), with the attributes it needs. */
typedef struct op_case {
    const char *label;
    lipc_op op;
    lipc_shape in;
    int out;                  /* conv2d, dense */
    int kernel[2];            /* conv2d, avgpool */
    int stride[2];            /* conv2d, avgpool */
    lipc_padding padding;     /* conv2d ({0}: same, the default) */
    bool no_bias, normalize, fold;
    int pairing;              /* minmax */
    double by;                /* shift */
    lipc_intlist pad_by;      /* pad */
    int draw;                 /* how a test draws inputs (its own enum) */
} op_case;

#define S3(c, h, w) ((lipc_shape){3, {(c), (h), (w)}})
#define S1(f) ((lipc_shape){1, {(f), 0, 0}})

/* A node of op with the op's default attributes, reading in0 (and in1). */
lipc_node *test_op_node(lipc_graph *g, lipc_op op, lipc_node *in0, lipc_node *in1);
/* Runs the op's shape rule; the test fails if it reports anything. */
void test_op_infer(lipc_graph *g, lipc_node *n);
/* A graph holding the case's input node(s) and the node itself, inferred. */
lipc_node *test_op_build(lipc_graph *g, const op_case *c);

#endif
