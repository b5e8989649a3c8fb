/* tests/testutil.c: the one allclose of lipc's tests, and seeded fills.
 *
 * The comparison is numpy's: |got - want| <= atol + rtol |want| per element. A
 * failure report names the worst element and the normalised error, which tells
 * a rounding difference (1e-7 for float) from a wrong kernel (order 1). */
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- a temporary directory per test ------------------------------------------ */

char test_tmp_dir[64];

void test_tmp_make(const char *prefix)
{
    snprintf(test_tmp_dir, sizeof test_tmp_dir, "%s-XXXXXX", prefix);
    cr_assert(mkdtemp(test_tmp_dir), "mkdtemp failed");
}

void test_tmp_remove(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", test_tmp_dir);
    if (test_tmp_dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", test_tmp_dir);
}

char *test_tmp_path(const char *name)
{
    static char buf[64][256];
    static int k;
    char *p = buf[k++ % 64];
    snprintf(p, 256, "%s/%s", test_tmp_dir, name);
    return p;
}

/* ---- single ops on hand-built graphs ----------------------------------------- */

lipc_node *test_op_node(lipc_graph *g, lipc_op op, lipc_node *in0, lipc_node *in1)
{
    char name[32];
    snprintf(name, sizeof name, "n%d", g->next_id);
    lipc_node *n = lipc_graph_add_node(g, op, name, (lipc_loc){"op.yaml", g->next_id + 1, 3});
    cr_assert_not_null(n);
    const lipc_op_desc *desc = lipc_op_info(op);
    if (desc->defaults)
        desc->defaults(&n->a);
    n->in[0] = in0;
    n->in[1] = in1;
    n->n_in = desc->n_inputs;
    return n;
}

void test_op_infer(lipc_graph *g, lipc_node *n)
{
    lipc_diags d;
    lipc_diags_init(&d);
    bool ok = lipc_op_info(n->op)->infer(g, n, &d);
    cr_assert(ok && d.n_errors == 0, "infer of %s failed: %s", lipc_op_info(n->op)->name,
              d.first ? d.first->text : "(no message)");
    lipc_diags_free(&d);
}

lipc_node *test_op_build(lipc_graph *g, const op_case *c)
{
    g->input_shape = c->in;
    lipc_node *in[LIPC_MAX_INPUTS] = {NULL};
    for (int k = 0; k < lipc_op_info(c->op)->n_inputs; k++) {
        in[k] = test_op_node(g, LIPC_OP_INPUT, NULL, NULL);
        test_op_infer(g, in[k]);
    }
    g->input = in[0];
    lipc_node *n = test_op_node(g, c->op, in[0], in[1]);
    lipc_attrs *a = &n->a;
    a->out = c->out;
    if (c->kernel[0])
        memcpy(a->kernel, c->kernel, sizeof a->kernel);
    if (c->stride[0])
        memcpy(a->stride, c->stride, sizeof a->stride);
    a->padding = c->padding;
    if (c->op == LIPC_OP_CONV2D || c->op == LIPC_OP_DENSE)
        a->bias = !c->no_bias;
    a->normalize = c->normalize;
    a->fold_identity = c->fold;
    a->pairing = c->pairing;
    a->by = c->by;
    a->pad_by = c->pad_by;
    test_op_infer(g, n);
    g->output = n;
    g->shapes_known = true;
    return n;
}
