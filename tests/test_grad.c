/* tests/test_grad.c: the reference backward pass.
 *
 * - Every op's ref_backward against central differences, element by element,
 *   of f(x, W) = <dout, op(x; W)> for a random dout, on small shapes. The table
 *   of cases must cover every op that has a backward: a new op without a case
 *   fails grad/every_op_has_a_case.
 * - ref_linear (conv2d, dense): it is the forward minus its value at 0, its
 *   transpose is the exact adjoint, and ref_weight_grad is the derivative of
 *   <A x, dy> w.r.t. W.
 * - The row normalisation helpers of the GloRo head, zero rows included.
 * - lipc_ref_forward_backward on whole models built from YAML: directional
 *   derivatives (two forward passes per direction) in parameter and input
 *   space, for a folded LiResNet and for a conventional ResNet whose skips fan
 *   out into ADD nodes.
 *
 * MinMax and ReLU are differentiable only off their kinks: per-op inputs are
 * drawn away from ties and zeros, and a whole-model direction whose segment
 * [p - hD, p + hD] crosses a kink (seen as one-sided differences that disagree)
 * is redrawn. Random data comes from a seeded lipc_rng; the seed is in every
 * failure message (set LIPC_TEST_SEED to replay another). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "tests/testutil.h"

/* Step of the central differences, and the tolerance they are held to: the
 * truncation error is O(h^2) (zero for the linear ops) and the rounding error
 * about 1e-16 |f| / h, both far below it. */
#define FD_H 1e-6
#define FD_ATOL 1e-7
#define FD_RTOL 1e-6

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    cr_assert_not_null(p);
    return p;
}

static double *dcopy(const double *src, size_t n)
{
    double *p = dalloc(n);
    memcpy(p, src, n * sizeof *p);
    return p;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double norm2(const double *a, size_t n) { return sqrt(dot(a, a, n)); }

static size_t numel(lipc_shape s) { return (size_t)lipc_shape_numel(s); }

static unsigned long long seed_ull(uint64_t s) { return (unsigned long long)s; }

/* ---- one node, built by hand ---------------------------------------------- */

/* How a case draws its inputs. */
enum {
    DRAW_NORMAL,    /* N(0, 1) */
    DRAW_NO_TIES,   /* all values at least 0.025 apart (MinMax) */
    DRAW_NONZERO,   /* |x| >= 0.01 (ReLU) */
};

/* One node to differentiate: its op, the shape of each of its inputs, and the
 * attributes that differ from the op's defaults (zero: keep the default). */
static const op_case op_cases[] = {
    {.label = "shift", .op = LIPC_OP_SHIFT, .in = S3(2, 3, 4), .by = -0.5},
    {.label = "pad by 1", .op = LIPC_OP_PAD, .in = S3(2, 2, 3), .pad_by = {1, {1}}},
    {.label = "pad by [t,b,l,r]", .op = LIPC_OP_PAD, .in = S3(1, 3, 2),
     .pad_by = {4, {2, 0, 1, 3}}},
    {.label = "conv2d 3x3 s1 same", .op = LIPC_OP_CONV2D, .in = S3(2, 5, 5), .out = 3,
     .kernel = {3, 3}},
    {.label = "conv2d 3x3 s2 same, no bias", .op = LIPC_OP_CONV2D, .in = S3(2, 6, 7),
     .out = 3, .kernel = {3, 3}, .stride = {2, 2}, .no_bias = true},
    {.label = "conv2d 2x2 s1 same (even)", .op = LIPC_OP_CONV2D, .in = S3(2, 5, 4),
     .out = 2, .kernel = {2, 2}},
    {.label = "conv2d 4x4 s2 same (even)", .op = LIPC_OP_CONV2D, .in = S3(2, 7, 6),
     .out = 3, .kernel = {4, 4}, .stride = {2, 2}},
    {.label = "conv2d 3x2 s[2,1] valid", .op = LIPC_OP_CONV2D, .in = S3(2, 7, 5),
     .out = 3, .kernel = {3, 2}, .stride = {2, 1}, .padding = {LIPC_PAD_VALID, {0, 0}}},
    {.label = "conv2d 3x3 s2 explicit [2,1]", .op = LIPC_OP_CONV2D, .in = S3(2, 6, 5),
     .out = 2, .kernel = {3, 3}, .stride = {2, 2},
     .padding = {LIPC_PAD_EXPLICIT, {2, 1}}},
    {.label = "conv2d 5x4 s[1,3] explicit [1,0]", .op = LIPC_OP_CONV2D,
     .in = S3(1, 4, 8), .out = 2, .kernel = {5, 4}, .stride = {1, 3},
     .padding = {LIPC_PAD_EXPLICIT, {1, 0}}},
    {.label = "conv2d 4x4/4 neck", .op = LIPC_OP_CONV2D, .in = S3(2, 8, 8), .out = 3,
     .kernel = {4, 4}, .stride = {4, 4}, .padding = {LIPC_PAD_VALID, {0, 0}}},
    {.label = "conv2d 3x3 folded", .op = LIPC_OP_CONV2D, .in = S3(3, 5, 4), .out = 3,
     .kernel = {3, 3}, .fold = true},
    {.label = "conv2d 1x5 folded, no bias", .op = LIPC_OP_CONV2D, .in = S3(2, 3, 6),
     .out = 2, .kernel = {1, 5}, .fold = true, .no_bias = true},
    {.label = "dense", .op = LIPC_OP_DENSE, .in = S1(7), .out = 5},
    {.label = "dense, no bias", .op = LIPC_OP_DENSE, .in = S1(4), .out = 6, .no_bias = true},
    {.label = "dense folded", .op = LIPC_OP_DENSE, .in = S1(5), .out = 5, .fold = true},
    {.label = "dense normalized", .op = LIPC_OP_DENSE, .in = S1(6), .out = 4,
     .normalize = true},
    {.label = "dense normalized, folded", .op = LIPC_OP_DENSE, .in = S1(5), .out = 5,
     .normalize = true, .fold = true},
    {.label = "minmax halves (c,h,w)", .op = LIPC_OP_MINMAX, .in = S3(4, 3, 2),
     .draw = DRAW_NO_TIES},
    {.label = "minmax adjacent (c,h,w)", .op = LIPC_OP_MINMAX, .in = S3(6, 2, 3),
     .pairing = LIPC_PAIR_ADJACENT, .draw = DRAW_NO_TIES},
    {.label = "minmax halves (f)", .op = LIPC_OP_MINMAX, .in = S1(8), .draw = DRAW_NO_TIES},
    {.label = "minmax adjacent (f)", .op = LIPC_OP_MINMAX, .in = S1(6),
     .pairing = LIPC_PAIR_ADJACENT, .draw = DRAW_NO_TIES},
    {.label = "relu (c,h,w)", .op = LIPC_OP_RELU, .in = S3(2, 3, 4), .draw = DRAW_NONZERO},
    {.label = "relu (f)", .op = LIPC_OP_RELU, .in = S1(9), .draw = DRAW_NONZERO},
    {.label = "flatten", .op = LIPC_OP_FLATTEN, .in = S3(3, 2, 4)},
    {.label = "avgpool 2x2/2 disjoint", .op = LIPC_OP_AVGPOOL, .in = S3(2, 4, 6),
     .kernel = {2, 2}},
    {.label = "avgpool 3x3/1 overlapping", .op = LIPC_OP_AVGPOOL, .in = S3(2, 5, 5),
     .kernel = {3, 3}, .stride = {1, 1}},
    {.label = "avgpool 3x2 s[2,1], last row dropped", .op = LIPC_OP_AVGPOOL,
     .in = S3(1, 6, 5), .kernel = {3, 2}, .stride = {2, 1}},
    {.label = "add (c,h,w)", .op = LIPC_OP_ADD, .in = S3(2, 3, 3)},
    {.label = "add (f)", .op = LIPC_OP_ADD, .in = S1(5)},
};
#define N_OP_CASES (sizeof op_cases / sizeof op_cases[0])

static void draw(lipc_rng *r, int how, double *x, size_t n)
{
    switch (how) {
    case DRAW_NORMAL:
        test_fill_normal(r, x, n);
        break;
    case DRAW_NONZERO:
        for (size_t i = 0; i < n; i++) {
            double mag = 0.01 + lipc_rng_uniform(r);
            x[i] = lipc_rng_uniform(r) < 0.5 ? -mag : mag;
        }
        break;
    case DRAW_NO_TIES:
        /* a jittered grid 0.05 apart, shuffled: any two values differ by
         * more than 0.025, far more than the step FD_H */
        for (size_t i = 0; i < n; i++)
            x[i] = ((double)i - (double)n / 2 + 0.25 + 0.5 * lipc_rng_uniform(r)) * 0.05;
        for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
            size_t j = (size_t)(lipc_rng_uniform(r) * (double)i);
            double t = x[i - 1];
            x[i - 1] = x[j];
            x[j] = t;
        }
        break;
    }
}

/* f = <dout, op(in; params)>; out is scratch [n_batch, numel(n->shape)]. */
static double probe(const lipc_graph *g, const lipc_node *n, int n_batch,
                    double *const *in, const double *params, const double *dout,
                    double *out)
{
    const double *cin[LIPC_MAX_INPUTS] = {in[0], in[1]};
    cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, cin, out), LIPC_OK);
    return dot(dout, out, (size_t)n_batch * numel(n->shape));
}

/* Central differences of probe w.r.t. every element of v[0..len): grad[i]. */
static void central_diff(const lipc_graph *g, const lipc_node *n, int n_batch,
                         double *const *in, const double *params, const double *dout,
                         double *out, double *v, size_t len, double *grad)
{
    for (size_t i = 0; i < len; i++) {
        double keep = v[i];
        v[i] = keep + FD_H;
        double fp = probe(g, n, n_batch, in, params, dout, out);
        v[i] = keep - FD_H;
        double fm = probe(g, n, n_batch, in, params, dout, out);
        v[i] = keep;
        grad[i] = (fp - fm) / (2 * FD_H);
    }
}

/* The whole check of one case; false (with messages) on a mismatch. */
static bool check_op_case(const op_case *c, uint64_t seed)
{
    const int n_batch = 2;
    lipc_graph *g = lipc_graph_new();
    cr_assert_not_null(g);
    lipc_node *n = test_op_build(g, c);
    const lipc_op_desc *desc = lipc_op_info(n->op);
    cr_assert_not_null(desc->ref_backward, "%s has no ref_backward", desc->name);
    lipc_rng r;
    lipc_rng_seed(&r, seed);

    double *x[LIPC_MAX_INPUTS] = {NULL}, *din[LIPC_MAX_INPUTS] = {NULL};
    double *pre[LIPC_MAX_INPUTS] = {NULL};
    size_t n_x[LIPC_MAX_INPUTS] = {0};
    for (int k = 0; k < n->n_in; k++) {
        n_x[k] = (size_t)n_batch * numel(n->in[k]->shape);
        x[k] = dalloc(n_x[k]);
        draw(&r, c->draw, x[k], n_x[k]);
        /* the kernel ADDS: start from noise and subtract it afterwards */
        pre[k] = dalloc(n_x[k]);
        test_fill_normal(&r, pre[k], n_x[k]);
        din[k] = dcopy(pre[k], n_x[k]);
    }
    size_t n_p = g->n_param_elems, n_out = (size_t)n_batch * numel(n->shape);
    double *params = dalloc(n_p), *pre_p = dalloc(n_p), *dparams = NULL;
    test_fill_normal(&r, params, n_p);
    test_fill_normal(&r, pre_p, n_p);
    dparams = dcopy(pre_p, n_p);
    double *dout = dalloc(n_out), *out = dalloc(n_out), *scratch = dalloc(n_out);
    test_fill_normal(&r, dout, n_out);

    const double *cin[LIPC_MAX_INPUTS] = {x[0], x[1]};
    cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, cin, out), LIPC_OK);
    const double *p_node = lipc_ref_node_params(g, n, params);
    double *dp_node = n->n_param ? dparams + g->params[n->param[0]].offset : NULL;
    desc->ref_backward(n, n_batch, cin, out, dout, din, p_node, dp_node);

    bool ok = true;
    char label[160];
    for (int k = 0; k < n->n_in; k++) {
        for (size_t i = 0; i < n_x[k]; i++)
            din[k][i] -= pre[k][i];
        double *num = dalloc(n_x[k]);
        central_diff(g, n, n_batch, x, params, dout, scratch, x[k], n_x[k], num);
        snprintf(label, sizeof label, "%s: din[%d] vs central differences (seed %llu)",
                 c->label, k, seed_ull(seed));
        ok &= test_allclose(label, din[k], num, n_x[k], FD_ATOL, FD_RTOL);
        free(num);
    }
    if (n_p) {
        for (size_t i = 0; i < n_p; i++)
            dparams[i] -= pre_p[i];
        double *num = dalloc(n_p);
        central_diff(g, n, n_batch, x, params, dout, scratch, params, n_p, num);
        snprintf(label, sizeof label, "%s: dparams vs central differences (seed %llu)",
                 c->label, seed_ull(seed));
        ok &= test_allclose(label, dparams, num, n_p, FD_ATOL, FD_RTOL);
        free(num);

        /* din NULL: the parameter gradient alone, the same numbers */
        double *dp2 = dalloc(n_p);
        double *no_din[LIPC_MAX_INPUTS] = {NULL, NULL};
        desc->ref_backward(n, n_batch, cin, out, dout, no_din, p_node,
                           dp2 + g->params[n->param[0]].offset);
        snprintf(label, sizeof label, "%s: dparams without din (seed %llu)", c->label,
                 seed_ull(seed));
        ok &= test_allclose(label, dp2, dparams, n_p, 1e-12, 1e-12);
        free(dp2);
    }
    /* dparams NULL: the input gradient alone, the same numbers */
    double *din2[LIPC_MAX_INPUTS] = {NULL};
    for (int k = 0; k < n->n_in; k++)
        din2[k] = dalloc(n_x[k]);
    desc->ref_backward(n, n_batch, cin, out, dout, din2, p_node, NULL);
    for (int k = 0; k < n->n_in; k++) {
        snprintf(label, sizeof label, "%s: din[%d] without dparams (seed %llu)", c->label,
                 k, seed_ull(seed));
        ok &= test_allclose(label, din2[k], din[k], n_x[k], 1e-12, 1e-12);
        free(din2[k]);
    }

    for (int k = 0; k < n->n_in; k++) {
        free(x[k]);
        free(din[k]);
        free(pre[k]);
    }
    free(params);
    free(pre_p);
    free(dparams);
    free(dout);
    free(out);
    free(scratch);
    lipc_graph_free(g);
    return ok;
}

/* ---- per-op gradients ---------------------------------------------------------- */

Test(grad, every_op_has_a_case)
{
    for (int op = 0; op < LIPC_OP_COUNT; op++) {
        const lipc_op_desc *desc = lipc_op_info((lipc_op)op);
        if (op == LIPC_OP_INPUT) {
            cr_expect_null(desc->ref_backward, "input has no backward: it is the data");
            continue;
        }
        cr_expect_not_null(desc->ref_backward, "op %s has no ref_backward", desc->name);
        int cases = 0;
        for (size_t k = 0; k < N_OP_CASES; k++)
            cases += op_cases[k].op == (lipc_op)op;
        cr_expect_gt(cases, 0, "op %s has no gradient case in tests/test_grad.c",
                     desc->name);
        /* the contract of ir.h: a linear map for the ops bounded by an
         * operator norm, with its weight gradient */
        bool opnorm = op == LIPC_OP_CONV2D || op == LIPC_OP_DENSE;
        cr_expect_eq(desc->ref_linear != NULL, opnorm, "%s: ref_linear", desc->name);
        cr_expect_eq(desc->ref_weight_grad != NULL, opnorm, "%s: ref_weight_grad",
                     desc->name);
    }
}

Test(grad, ops_match_central_differences)
{
    uint64_t seed = test_seed();
    for (size_t k = 0; k < N_OP_CASES; k++)
        cr_expect(check_op_case(&op_cases[k], seed + k), "%s (seed %llu)",
                  op_cases[k].label, seed_ull(seed + k));
}

/* At a tie the max-output's gradient goes to the pair's first element and the
 * min-output's to its second (ir/ops/minmax.c); ReLU at 0 passes nothing. */
Test(grad, minmax_ties_and_relu_at_zero)
{
    for (int pairing = 0; pairing < 2; pairing++) {
        lipc_graph *g = lipc_graph_new();
        op_case c = {.label = "ties", .op = LIPC_OP_MINMAX, .in = S1(4), .pairing = pairing};
        lipc_node *n = test_op_build(g, &c);
        /* both pairs tie: halves pairs (0, 2), (1, 3); adjacent (0, 1), (2, 3) */
        double halves[4] = {0.5, -1.0, 0.5, -1.0}, adjacent[4] = {0.5, 0.5, -1.0, -1.0};
        double *x = pairing == LIPC_PAIR_HALVES ? halves : adjacent;
        double dout[4] = {1.0, 2.0, 3.0, 4.0}, out[4], din[4] = {0};
        const double *in[2] = {x, NULL};
        double *dinp[2] = {din, NULL};
        cr_assert_eq(lipc_ref_node_forward(g, n, NULL, 1, in, out), LIPC_OK);
        lipc_op_info(n->op)->ref_backward(n, 1, in, out, dout, dinp, NULL, NULL);
        /* each output's gradient lands on the element in its own position:
         * max-output -> first element, min-output -> second */
        double want[4] = {1.0, 2.0, 3.0, 4.0};
        cr_expect(test_allclose(pairing ? "minmax adjacent ties" : "minmax halves ties",
                                din, want, 4, 0, 0));
        lipc_graph_free(g);
    }
    lipc_graph *g = lipc_graph_new();
    op_case c = {.label = "relu", .op = LIPC_OP_RELU, .in = S1(3)};
    lipc_node *n = test_op_build(g, &c);
    double x[3] = {0.0, 1.0, -1.0}, dout[3] = {5.0, 6.0, 7.0}, out[3], din[3] = {0};
    const double *in[2] = {x, NULL};
    double *dinp[2] = {din, NULL};
    cr_assert_eq(lipc_ref_node_forward(g, n, NULL, 1, in, out), LIPC_OK);
    lipc_op_info(n->op)->ref_backward(n, 1, in, out, dout, dinp, NULL, NULL);
    double want[3] = {0.0, 6.0, 0.0};
    cr_expect(test_allclose("relu at 0", din, want, 3, 0, 0));
    lipc_graph_free(g);
}

/* ---- ref_linear and ref_weight_grad -------------------------------------------- */

static const op_case linear_cases[] = {
    {.label = "conv2d 3x3 s1 same", .op = LIPC_OP_CONV2D, .in = S3(2, 5, 6), .out = 3,
     .kernel = {3, 3}},
    {.label = "conv2d 5x5 s2 same (stem)", .op = LIPC_OP_CONV2D, .in = S3(3, 9, 8),
     .out = 4, .kernel = {5, 5}, .stride = {2, 2}},
    {.label = "conv2d 4x4 s2 same (even)", .op = LIPC_OP_CONV2D, .in = S3(2, 7, 7),
     .out = 2, .kernel = {4, 4}, .stride = {2, 2}, .no_bias = true},
    {.label = "conv2d 3x3 s3 explicit [2,1]", .op = LIPC_OP_CONV2D, .in = S3(2, 7, 6),
     .out = 3, .kernel = {3, 3}, .stride = {3, 3}, .padding = {LIPC_PAD_EXPLICIT, {2, 1}}},
    {.label = "conv2d 4x4/4 neck", .op = LIPC_OP_CONV2D, .in = S3(3, 8, 8), .out = 5,
     .kernel = {4, 4}, .stride = {4, 4}, .padding = {LIPC_PAD_VALID, {0, 0}}},
    {.label = "conv2d 3x3 folded", .op = LIPC_OP_CONV2D, .in = S3(3, 5, 5), .out = 3,
     .kernel = {3, 3}, .fold = true},
    {.label = "conv2d 3x1 folded", .op = LIPC_OP_CONV2D, .in = S3(2, 4, 3), .out = 2,
     .kernel = {3, 1}, .fold = true, .no_bias = true},
    {.label = "dense", .op = LIPC_OP_DENSE, .in = S1(7), .out = 4},
    {.label = "dense folded", .op = LIPC_OP_DENSE, .in = S1(6), .out = 6, .fold = true},
    {.label = "dense normalized (linear only)", .op = LIPC_OP_DENSE, .in = S1(5), .out = 3,
     .normalize = true},
};

Test(grad, linear_is_forward_without_bias_and_adjoint)
{
    uint64_t seed = test_seed();
    const int n_batch = 3;
    char label[160];
    for (size_t k = 0; k < sizeof linear_cases / sizeof linear_cases[0]; k++) {
        const op_case *c = &linear_cases[k];
        lipc_graph *g = lipc_graph_new();
        lipc_node *n = test_op_build(g, c);
        const lipc_op_desc *desc = lipc_op_info(n->op);
        lipc_rng r;
        lipc_rng_seed(&r, seed + k);
        size_t n_in = (size_t)n_batch * numel(n->in[0]->shape);
        size_t n_out = (size_t)n_batch * numel(n->shape);
        double *params = dalloc(g->n_param_elems);
        test_fill_normal(&r, params, g->n_param_elems);
        double *x = dalloc(n_in), *y = dalloc(n_out), *zero = dalloc(n_in);
        test_fill_normal(&r, x, n_in);
        test_fill_normal(&r, y, n_out);
        const double *w = lipc_ref_node_params(g, n, params);

        /* A x = forward(x) - forward(0): the bias is the value at 0 */
        double *ax = dalloc(n_out), *fx = dalloc(n_out), *f0 = dalloc(n_out);
        double *aty = dalloc(n_in);
        desc->ref_linear(n, n_batch, x, ax, w, false);
        const double *in1[2] = {x, NULL}, *in0[2] = {zero, NULL};
        cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, in1, fx), LIPC_OK);
        cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, in0, f0), LIPC_OK);
        for (size_t i = 0; i < n_out; i++)
            fx[i] -= f0[i];
        snprintf(label, sizeof label, "%s: A x vs forward(x) - forward(0) (seed %llu)",
                 c->label, seed_ull(seed + k));
        cr_expect(test_allclose(label, ax, fx, n_out, 1e-12, 1e-12), "%s", label);

        /* <A x, y> = <x, A^T y>; A^T overwrites dst (fill it with junk first) */
        for (size_t i = 0; i < n_in; i++)
            aty[i] = 1e300;
        desc->ref_linear(n, n_batch, y, aty, w, true);
        double lhs = dot(ax, y, n_out), rhs = dot(x, aty, n_in);
        double scale = norm2(ax, n_out) * norm2(y, n_out);
        cr_expect(fabs(lhs - rhs) <= 1e-12 * scale,
                  "%s: <Ax,y> = %.17g but <x,A^T y> = %.17g (seed %llu)", c->label, lhs,
                  rhs, seed_ull(seed + k));

        /* A^T is what ref_backward sends to the input */
        double *din = dalloc(n_in);
        double *dinp[2] = {din, NULL};
        desc->ref_backward(n, n_batch, in1, fx, y, dinp, w, NULL);
        snprintf(label, sizeof label, "%s: A^T y vs ref_backward's din (seed %llu)",
                 c->label, seed_ull(seed + k));
        cr_expect(test_allclose(label, aty, din, n_in, 1e-12, 1e-12), "%s", label);

        free(params);
        free(x);
        free(y);
        free(zero);
        free(ax);
        free(fx);
        free(f0);
        free(aty);
        free(din);
        lipc_graph_free(g);
    }
}

Test(grad, weight_grad_matches_central_differences)
{
    uint64_t seed = test_seed();
    const int n_batch = 2;
    const double scale = 0.7;
    char label[160];
    for (size_t k = 0; k < sizeof linear_cases / sizeof linear_cases[0]; k++) {
        const op_case *c = &linear_cases[k];
        if (c->normalize)
            continue; /* ref_weight_grad is for operator-norm layers only */
        lipc_graph *g = lipc_graph_new();
        lipc_node *n = test_op_build(g, c);
        const lipc_op_desc *desc = lipc_op_info(n->op);
        lipc_rng r;
        lipc_rng_seed(&r, seed + 100 + k);
        size_t n_in = (size_t)n_batch * numel(n->in[0]->shape);
        size_t n_out = (size_t)n_batch * numel(n->shape);
        size_t n_w = g->params[n->param[0]].numel;
        double *params = dalloc(g->n_param_elems);
        test_fill_normal(&r, params, g->n_param_elems);
        double *w = params + g->params[n->param[0]].offset;
        double *x = dalloc(n_in), *dy = dalloc(n_out), *ax = dalloc(n_out);
        test_fill_normal(&r, x, n_in);
        test_fill_normal(&r, dy, n_out);

        /* analytic, ADDED onto noise */
        double *pre = dalloc(n_w), *dw = dalloc(n_w);
        test_fill_normal(&r, pre, n_w);
        memcpy(dw, pre, n_w * sizeof *dw);
        desc->ref_weight_grad(n, n_batch, x, dy, scale, dw);
        for (size_t i = 0; i < n_w; i++)
            dw[i] = (dw[i] - pre[i]) / scale;

        /* numeric: central differences of <A x, dy> */
        double *num = dalloc(n_w);
        for (size_t i = 0; i < n_w; i++) {
            double keep = w[i];
            w[i] = keep + FD_H;
            desc->ref_linear(n, n_batch, x, ax, w, false);
            double fp = dot(ax, dy, n_out);
            w[i] = keep - FD_H;
            desc->ref_linear(n, n_batch, x, ax, w, false);
            double fm = dot(ax, dy, n_out);
            w[i] = keep;
            num[i] = (fp - fm) / (2 * FD_H);
        }
        snprintf(label, sizeof label, "%s: ref_weight_grad vs d<Ax,dy>/dW (seed %llu)",
                 c->label, seed_ull(seed + 100 + k));
        cr_expect(test_allclose(label, dw, num, n_w, FD_ATOL, FD_RTOL), "%s", label);

        /* and it is the weight part of ref_backward's dparams */
        double *dparams = dalloc(g->n_param_elems);
        const double *in[2] = {x, NULL};
        double *no_din[2] = {NULL, NULL};
        desc->ref_backward(n, n_batch, in, ax, dy, no_din, w,
                           dparams + g->params[n->param[0]].offset);
        snprintf(label, sizeof label, "%s: ref_weight_grad vs ref_backward (seed %llu)",
                 c->label, seed_ull(seed + 100 + k));
        cr_expect(test_allclose(label, dw, dparams + g->params[n->param[0]].offset, n_w,
                                1e-12, 1e-12), "%s", label);

        free(params);
        free(x);
        free(dy);
        free(ax);
        free(pre);
        free(dw);
        free(num);
        free(dparams);
        lipc_graph_free(g);
    }
}

/* ---- row normalisation of the GloRo head ------------------------------------------ */

Test(grad, rownorm_forward_and_backward)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    enum { ROWS = 4, COLS = 5, N = ROWS * COLS };
    double w[N], rr[N], d[N], pre[N], dw[N], num[N];
    test_fill_normal(&r, w, N);
    for (int i = 0; i < COLS; i++)
        w[2 * COLS + i] = 0.0; /* row 2 is zero */
    test_fill_normal(&r, d, N);
    test_fill_normal(&r, pre, N);

    lipc_rownorm_forward(ROWS, COLS, w, rr);
    for (int o = 0; o < ROWS; o++) {
        double nn = norm2(rr + o * COLS, COLS);
        cr_expect(o == 2 ? nn == 0.0 : fabs(nn - 1.0) < 1e-14, "row %d has norm %g", o, nn);
    }
    memcpy(dw, pre, sizeof dw);
    lipc_rownorm_backward(ROWS, COLS, w, d, dw);
    for (int i = 0; i < N; i++) {
        dw[i] -= pre[i];
        cr_assert(isfinite(dw[i]), "dw[%d] = %g", i, dw[i]);
    }
    /* central differences of <d, rownorm(w)> on the non-zero rows */
    for (int i = 0; i < N; i++) {
        double keep = w[i];
        w[i] = keep + FD_H;
        lipc_rownorm_forward(ROWS, COLS, w, rr);
        double fp = dot(d, rr, N);
        w[i] = keep - FD_H;
        lipc_rownorm_forward(ROWS, COLS, w, rr);
        double fm = dot(d, rr, N);
        w[i] = keep;
        num[i] = (fp - fm) / (2 * FD_H);
    }
    char label[96];
    snprintf(label, sizeof label, "rownorm backward rows 0-1 (seed %llu)", seed_ull(seed));
    cr_expect(test_allclose(label, dw, num, 2 * COLS, FD_ATOL, FD_RTOL));
    snprintf(label, sizeof label, "rownorm backward rows 3 (seed %llu)", seed_ull(seed));
    cr_expect(test_allclose(label, dw + 3 * COLS, num + 3 * COLS, COLS, FD_ATOL, FD_RTOL));
    /* the zero row: the gradient passes through as if ||w|| = 1 (up to the
     * rounding of adding to and subtracting pre) */
    cr_expect(test_allclose("rownorm zero row passes through", dw + 2 * COLS, d + 2 * COLS,
                            COLS, 1e-14, 0));
}

/* The normalised dense layer's weight gradient is lipc_rownorm_backward of
 * dr = sum_b dy x^T (the dense kernel fuses the two), zero rows included, and
 * nothing becomes NaN. */
Test(grad, dense_normalized_matches_rownorm_helper)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    const int n_batch = 3, in_f = 5, out_f = 4;
    lipc_graph *g = lipc_graph_new();
    op_case c = {.label = "head", .op = LIPC_OP_DENSE, .in = S1(in_f), .out = out_f,
                 .normalize = true};
    lipc_node *n = test_op_build(g, &c);
    double params[5 * 4 + 4], x[3 * 5], dy[3 * 4], out[3 * 4], din[3 * 5] = {0};
    double dparams[5 * 4 + 4] = {0}, dr[5 * 4] = {0}, want[5 * 4] = {0};
    test_fill_normal(&r, params, 24);
    for (int i = 0; i < in_f; i++)
        params[1 * in_f + i] = 0.0; /* row 1 is zero */
    test_fill_normal(&r, x, 15);
    test_fill_normal(&r, dy, 12);
    const double *in[2] = {x, NULL};
    double *dinp[2] = {din, NULL};
    cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, in, out), LIPC_OK);
    for (int b = 0; b < n_batch; b++)
        cr_expect_eq(out[b * out_f + 1], params[20 + 1], "a zero row outputs its bias");
    lipc_op_info(n->op)->ref_backward(n, n_batch, in, out, dy, dinp, params, dparams);
    for (int o = 0; o < out_f; o++)
        for (int i = 0; i < in_f; i++)
            for (int b = 0; b < n_batch; b++)
                dr[o * in_f + i] += dy[b * out_f + o] * x[b * in_f + i];
    lipc_rownorm_backward(out_f, in_f, params, dr, want);
    char label[96];
    snprintf(label, sizeof label, "dense normalized dW vs rownorm helper (seed %llu)",
             seed_ull(seed));
    cr_expect(test_allclose(label, dparams, want, 20, 1e-12, 1e-12));
    for (int i = 0; i < 24; i++)
        cr_expect(isfinite(dparams[i]), "dparams[%d] = %g", i, dparams[i]);
    for (int i = 0; i < 15; i++)
        cr_expect(isfinite(din[i]), "din[%d] = %g", i, din[i]);
    lipc_graph_free(g);
}

/* ---- whole models: lipc_ref_forward_backward ---------------------------------------- */

/* A small LiResNet (METHOD.md section 2): its two residual blocks fold into
 * convs with the identity on the centre tap. */
static const char liresnet_yaml[] =
    "name: tiny-liresnet\n"
    "input:\n"
    "  shape: [2, 8, 8]\n"
    "  preprocess:\n"
    "    - shift: -0.5\n"
    "classes: 5\n"
    "layers:\n"
    "  - conv2d: {out: 4, kernel: 3}\n"
    "    name: stem\n"
    "  - minmax\n"
    "  - repeat: 2\n"
    "    name: blocks\n"
    "    layers:\n"
    "      - residual:\n"
    "          - conv2d: {out: 4, kernel: 3, init: liresnet}\n"
    "      - minmax\n"
    "  - conv2d: {out: 8, kernel: 4, stride: 4, padding: valid}\n"
    "    name: neck\n"
    "  - minmax\n"
    "  - flatten\n"
    "  - dense: {out: 16}\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n"
    "    name: head\n";

/* A conventional ResNet: nonlinear bodies are kept, so each skip feeds both
 * its body and an ADD (gradients from two paths must add up); with a strided
 * stem, ReLU, avgpool and a dense residual too. */
static const char resnet_yaml[] =
    "name: tiny-resnet\n"
    "input: {shape: [2, 8, 8]}\n"
    "classes: 4\n"
    "layers:\n"
    "  - conv2d: {out: 4, kernel: 3, stride: 2}\n"
    "  - minmax\n"
    "  - residual:\n"
    "      - conv2d: {out: 4, kernel: 3}\n"
    "      - minmax\n"
    "      - conv2d: {out: 4, kernel: 3}\n"
    "  - relu\n"
    "  - avgpool: {kernel: 2}\n"
    "  - flatten\n"
    "  - dense: {out: 6}\n"
    "  - residual:\n"
    "      - dense: {out: 6}\n"
    "      - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

static lipc_graph *load_model(const char *name, const char *text)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_string(name, text, strlen(text), NULL, &d, &g);
    if (st == LIPC_OK) {
        lipc_pipeline_options o = {.verify = true};
        st = lipc_pipeline_run(g, &o, &d);
    }
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "%s does not build", name);
    lipc_diags_free(&d);
    return g;
}

/* Parameters from the init rules, with small random biases (zeros would leave
 * the bias gradients of the checks below untested in effect). */
static double *model_params(const lipc_graph *g, uint64_t seed)
{
    double *p = dalloc(g->n_param_elems);
    lipc_ref_init_params(g, seed, p);
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xb1a5);
    for (int i = 0; i < g->n_params; i++)
        if (g->params[i].role == LIPC_PARAM_BIAS)
            test_fill_uniform(&r, p + g->params[i].offset, g->params[i].numel, -0.1, 0.1);
    return p;
}

/* L = <c, logits(params, x)> */
static double model_loss(const lipc_graph *g, const double *params, int n_batch,
                         const double *x, const double *c, double *logits)
{
    cr_assert_eq(lipc_ref_forward(g, params, n_batch, x, logits, NULL), LIPC_OK);
    return dot(c, logits, (size_t)n_batch * numel(g->output->shape));
}

/* Directional checks of grad = dL/dv (v the parameters, or the input) along
 * `want` random unit directions D: (L(v + hD) - L(v - hD)) / 2h vs <grad, D>.
 * Both MinMax and ReLU make L piecewise smooth: a segment that crosses a kink
 * shows as one-sided differences that disagree (by J (h - t) / h for a slope
 * jump J at distance t), and the central difference is then off by half that.
 * A disagreement above 1.5 tol redraws the direction; below it, a kink costs
 * at most 0.75 tol. Where L is smooth the disagreement is h D^T H D (L is
 * multilinear in the weights of successive layers), well under 1.5 tol. */
static void check_directions(const char *what, const lipc_graph *g, double *params,
                             double *x, int n_batch, const double *c, double *v,
                             size_t len, const double *grad, uint64_t seed)
{
    const double h = 1e-6;
    size_t n_logits = (size_t)n_batch * numel(g->output->shape);
    double *logits = dalloc(n_logits), *dir = dalloc(len), *keep = dcopy(v, len);
    double gnorm = norm2(grad, len);
    double tol = 1e-7 * gnorm + 1e-10;
    cr_assert_gt(gnorm, 1e-6, "%s: the gradient vanishes (seed %llu)", what, seed_ull(seed));
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    double l0 = model_loss(g, params, n_batch, x, c, logits);
    int done = 0, tries = 0;
    while (done < 4) {
        cr_assert_lt(tries++, 12, "%s: too many directions cross a kink (seed %llu)", what,
                     seed_ull(seed));
        test_fill_normal(&r, dir, len);
        double dn = norm2(dir, len);
        for (size_t i = 0; i < len; i++)
            dir[i] /= dn;
        for (size_t i = 0; i < len; i++)
            v[i] = keep[i] + h * dir[i];
        double lp = model_loss(g, params, n_batch, x, c, logits);
        for (size_t i = 0; i < len; i++)
            v[i] = keep[i] - h * dir[i];
        double lm = model_loss(g, params, n_batch, x, c, logits);
        memcpy(v, keep, len * sizeof *v);
        double kink = fabs(lp - 2 * l0 + lm) / h;
        if (kink > 1.5 * tol)
            continue; /* a kink inside the segment: draw another direction */
        double fd = (lp - lm) / (2 * h), an = dot(grad, dir, len);
        cr_expect(fabs(fd - an) <= tol,
                  "%s: direction %d: central difference %.12g, <grad, D> %.12g "
                  "(|grad| %g, seed %llu)", what, done, fd, an, gnorm, seed_ull(seed));
        done++;
    }
    free(logits);
    free(dir);
    free(keep);
}

static void check_model(const char *name, const char *text, uint64_t seed)
{
    lipc_graph *g = load_model(name, text);
    const int n_batch = 3;
    size_t n_x = (size_t)n_batch * numel(g->input_shape);
    size_t n_logits = (size_t)n_batch * numel(g->output->shape);
    double *params = model_params(g, seed);
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xda7a);
    double *x = dalloc(n_x), *c = dalloc(n_logits);
    test_fill_uniform(&r, x, n_x, 0.0, 1.0);
    test_fill_normal(&r, c, n_logits);

    double *logits = dalloc(n_logits), *want = dalloc(n_logits);
    double *dparams = dalloc(g->n_param_elems), *dx = dalloc(n_x);
    cr_assert_eq(lipc_ref_forward_backward(g, params, n_batch, x, c, logits, dparams, dx,
                                           NULL),
                 LIPC_OK);
    cr_assert_eq(lipc_ref_forward(g, params, n_batch, x, want, NULL), LIPC_OK);
    char label[128];
    snprintf(label, sizeof label, "%s: logits of forward_backward (seed %llu)", name,
             seed_ull(seed));
    cr_expect(test_allclose(label, logits, want, n_logits, 0, 0));

    snprintf(label, sizeof label, "%s: dL/dparams", name);
    check_directions(label, g, params, x, n_batch, c, params, g->n_param_elems, dparams,
                     seed ^ 1);
    snprintf(label, sizeof label, "%s: dL/dx", name);
    check_directions(label, g, params, x, n_batch, c, x, n_x, dx, seed ^ 2);

    /* every parameter tensor receives some gradient */
    for (int i = 0; i < g->n_params; i++) {
        const lipc_param *p = &g->params[i];
        cr_expect_gt(norm2(dparams + p->offset, p->numel), 0.0, "%s: %s has no gradient",
                     name, p->name);
    }
    free(params);
    free(x);
    free(c);
    free(logits);
    free(want);
    free(dparams);
    free(dx);
    lipc_graph_free(g);
}

static int count_op(const lipc_graph *g, lipc_op op)
{
    int k = 0;
    for (const lipc_node *n = g->first; n; n = n->next)
        k += n->op == op;
    return k;
}

Test(grad, liresnet_directional)
{
    lipc_graph *g = load_model("tiny-liresnet.yaml", liresnet_yaml);
    int folded = 0;
    for (const lipc_node *n = g->first; n; n = n->next)
        folded += n->op == LIPC_OP_CONV2D && n->a.fold_identity;
    cr_assert_eq(folded, 2);
    cr_assert_eq(count_op(g, LIPC_OP_ADD), 0);
    lipc_graph_free(g);
    check_model("tiny-liresnet", liresnet_yaml, test_seed());
}

Test(grad, resnet_fan_out_directional)
{
    lipc_graph *g = load_model("tiny-resnet.yaml", resnet_yaml);
    cr_assert_eq(count_op(g, LIPC_OP_ADD), 2); /* both bodies are nonlinear: kept */
    lipc_graph_free(g);
    check_model("tiny-resnet", resnet_yaml, test_seed());
}

/* What the runner does with its optional arguments, and on failing
 * allocations. */
Test(grad, runner_options_and_oom)
{
    uint64_t seed = test_seed();
    lipc_graph *g = load_model("tiny-resnet.yaml", resnet_yaml);
    const int n_batch = 2;
    size_t n_x = (size_t)n_batch * numel(g->input_shape), n_p = g->n_param_elems;
    size_t n_logits = (size_t)n_batch * numel(g->output->shape);
    double *params = model_params(g, seed);
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    double *x = dalloc(n_x), *c = dalloc(n_logits), *logits = dalloc(n_logits);
    double *dp = dalloc(n_p), *dx = dalloc(n_x), *dp2 = dalloc(n_p), *dx2 = dalloc(n_x);
    double *want = dalloc(n_logits);
    test_fill_uniform(&r, x, n_x, 0.0, 1.0);
    test_fill_normal(&r, c, n_logits);
    cr_assert_eq(lipc_ref_forward_backward(g, params, n_batch, x, c, logits, dp, dx, NULL),
                 LIPC_OK);

    /* dparams only, dx only: the same numbers, the other left alone */
    cr_assert_eq(lipc_ref_forward_backward(g, params, n_batch, x, c, NULL, dp2, NULL, NULL),
                 LIPC_OK);
    cr_expect(test_allclose("dparams without dx", dp2, dp, n_p, 0, 0));
    cr_assert_eq(lipc_ref_forward_backward(g, params, n_batch, x, c, NULL, NULL, dx2, NULL),
                 LIPC_OK);
    cr_expect(test_allclose("dx without dparams", dx2, dx, n_x, 0, 0));

    /* no dlogits: forward only; the gradients asked for are zeroed */
    for (size_t i = 0; i < n_p; i++)
        dp2[i] = 1.0;
    cr_assert_eq(lipc_ref_forward_backward(g, params, n_batch, x, NULL, want, dp2, NULL,
                                           NULL),
                 LIPC_OK);
    cr_expect(test_allclose("forward-only logits", want, logits, n_logits, 0, 0));
    for (size_t i = 0; i < n_p; i++)
        cr_assert_eq(dp2[i], 0.0);

    /* every allocation failing in turn: NOMEM, never a crash or a wrong answer */
    for (long fail = 1;; fail++) {
        lipc_alloc_fail_after(fail);
        lipc_status st = lipc_ref_forward_backward(g, params, n_batch, x, c, want, dp2, dx2,
                                                   NULL);
        lipc_alloc_fail_after(0);
        if (st == LIPC_OK) {
            cr_expect(test_allclose("dparams after OOM runs", dp2, dp, n_p, 0, 0));
            cr_expect(test_allclose("dx after OOM runs", dx2, dx, n_x, 0, 0));
            cr_assert_gt(fail, 4);
            break;
        }
        cr_assert_eq(st, LIPC_ERR_NOMEM, "allocation %ld", fail);
        cr_assert_lt(fail, 200);
    }
    free(params);
    free(x);
    free(c);
    free(logits);
    free(dp);
    free(dx);
    free(dp2);
    free(dx2);
    free(want);
    lipc_graph_free(g);
}
