/* tests/test_rounding.c: the running error analysis of the logits (each op's
 * ref_error, lipc_ref_predict_bounded) and certification with it
 * (docs/soundness.md).
 *
 * The oracle is long double (x86-64: a 64-bit significand, u = 2^-64, 2048
 * times finer than double), evaluated by loops written here independently of
 * ir/ops/. Its own rounding follows the same analysis with 2^-64 in place of
 * 2^-53, so it is within about 2^-11 of a double bound e of the exact value;
 * every check allows e (1 + 2^-8), never more.
 *
 * - Per op, on small random shapes: |y~ - y| <= e for the double result y~
 *   against the long-double y at the exact input, with exact inputs (e_in = 0)
 *   and with inexact ones (x~ = x - delta, |delta| <= e_in, random signs, and
 *   signs aligned with the weights, where the propagated part is attained);
 *   the bound is positive and small. A dense sum that cancels catastrophically
 *   (1e16 + 1 - 1e16) errs by 1 in double: the bound covers it.
 * - Whole models (a folded LiResNet, a conventional ResNet with ReLU, avgpool,
 *   pad and kept residuals): |f~ - f| <= e against a long-double evaluation,
 *   e > 0 and e < 1e-10 (1 + |f|); a float evaluation misses by far more
 *   than e (the bound is not vacuous), and the logits equal lipc_ref_predict's.
 * - Certification: a margin over eps K smaller than its error bound is not
 *   certified, a larger one is; lipc_certify_dataset uses predict_bounded and
 *   says so; the rounded-up pair bounds hold against a long-double head. */
#include "backend/backend.h"
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef long double ld;

/* The allowance for the long-double oracle's own rounding (see the top). */
#define LD_SLACK 0x1p-8

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    cr_assert_not_null(p);
    return p;
}

static ld *lalloc(size_t n)
{
    ld *p = calloc(n ? n : 1, sizeof *p);
    cr_assert_not_null(p);
    return p;
}

static size_t numel(lipc_shape s)
{
    return (size_t)lipc_shape_numel(s);
}

static unsigned long long seed_ull(uint64_t s)
{
    return (unsigned long long)s;
}

/* ---- long-double reference ops ---------------------------------------------
 *
 * Written from the formulas of ir/ir.h and each op file's header, not from the
 * kernels. x [n_batch, numel(in)], y [n_batch, numel(n)], params the node's
 * weight then bias (doubles holding floats). */

static void ld_conv2d(const lipc_node *n, int nb, const ld *xs, ld *ys, const double *w)
{
    int c_in = n->in[0]->shape.d[0], h = n->in[0]->shape.d[1], wd = n->in[0]->shape.d[2];
    int c_out = n->shape.d[0], oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = n->a.kernel[0], kw = n->a.kernel[1], sh = n->a.stride[0], sw = n->a.stride[1];
    int top = n->a.pad[0], left = n->a.pad[2];
    const double *bias = n->a.bias ? w + (size_t)c_out * c_in * kh * kw : NULL;
    for (int b = 0; b < nb; b++)
        for (int o = 0; o < c_out; o++)
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    ld acc = bias ? (ld)bias[o] : 0.0L;
                    for (int i = 0; i < c_in; i++)
                        for (int a = 0; a < kh; a++)
                            for (int c = 0; c < kw; c++) {
                                int r = p * sh + a - top, s = q * sw + c - left;
                                if (r >= 0 && r < h && s >= 0 && s < wd)
                                    acc += (ld)w[((o * c_in + i) * kh + a) * kw + c] *
                                           xs[(((size_t)b * c_in + i) * h + r) * wd + s];
                            }
                    if (n->a.fold_identity)
                        acc += xs[(((size_t)b * c_in + o) * h + p) * wd + q];
                    ys[(((size_t)b * c_out + o) * oh + p) * ow + q] = acc;
                }
}

static void ld_dense(const lipc_node *n, int nb, const ld *xs, ld *ys, const double *w)
{
    int in_f = n->in[0]->shape.d[0], out_f = n->shape.d[0];
    const double *bias = n->a.bias ? w + (size_t)out_f * in_f : NULL;
    for (int o = 0; o < out_f; o++) {
        ld ss = 0.0L;
        for (int i = 0; i < in_f; i++)
            ss += (ld)w[(size_t)o * in_f + i] * w[(size_t)o * in_f + i];
        ld s = !n->a.normalize ? 1.0L : ss > 0 ? 1.0L / sqrtl(ss) : 0.0L;
        for (int b = 0; b < nb; b++) {
            ld acc = 0.0L;
            for (int i = 0; i < in_f; i++)
                acc += (ld)w[(size_t)o * in_f + i] * xs[(size_t)b * in_f + i];
            acc = s * acc;
            if (n->a.fold_identity)
                acc += xs[(size_t)b * in_f + o];
            if (bias)
                acc += bias[o];
            ys[(size_t)b * out_f + o] = acc;
        }
    }
}

static void ld_minmax(const lipc_node *n, int nb, const ld *xs, ld *ys)
{
    int c = n->shape.d[0];
    size_t hw = numel(n->shape) / (size_t)c;
    for (int b = 0; b < nb; b++)
        for (int k = 0; k < c / 2; k++) {
            bool halves = n->a.pairing == LIPC_PAIR_HALVES;
            size_t ia = (size_t)(halves ? k : 2 * k), ib = (size_t)(halves ? k + c / 2 : 2 * k + 1);
            for (size_t p = 0; p < hw; p++) {
                size_t pa = (size_t)b * c * hw + ia * hw + p, pb = (size_t)b * c * hw + ib * hw + p;
                ld va = xs[pa], vb = xs[pb];
                ys[pa] = va > vb ? va : vb;
                ys[pb] = va > vb ? vb : va;
            }
        }
}

static void ld_avgpool(const lipc_node *n, int nb, const ld *xs, ld *ys)
{
    int c = n->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2];
    int kh = n->a.kernel[0], kw = n->a.kernel[1], sh = n->a.stride[0], sw = n->a.stride[1];
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < c; i++)
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    ld acc = 0.0L;
                    for (int a = 0; a < kh; a++)
                        for (int d = 0; d < kw; d++)
                            acc += xs[(((size_t)b * c + i) * h + p * sh + a) * w + q * sw + d];
                    ys[(((size_t)b * c + i) * oh + p) * ow + q] = acc / ((ld)kh * kw);
                }
}

static void ld_pad(const lipc_node *n, int nb, const ld *xs, ld *ys)
{
    int c = n->in[0]->shape.d[0], h = n->in[0]->shape.d[1], w = n->in[0]->shape.d[2];
    int oh = n->shape.d[1], ow = n->shape.d[2], top = n->a.pad[0], left = n->a.pad[2];
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < c; i++)
            for (int p = 0; p < oh; p++)
                for (int q = 0; q < ow; q++) {
                    int r = p - top, s = q - left;
                    ys[(((size_t)b * c + i) * oh + p) * ow + q] =
                        r >= 0 && r < h && s >= 0 && s < w
                            ? xs[(((size_t)b * c + i) * h + r) * w + s]
                            : 0.0L;
                }
}

/* One node in long double: in[k] [nb, numel(in k)] -> out [nb, numel(n)]. */
static void ld_op(const lipc_node *n, int nb, const ld *const *in, ld *out, const double *params)
{
    size_t total = (size_t)nb * numel(n->shape);
    switch (n->op) {
    case LIPC_OP_CONV2D: ld_conv2d(n, nb, in[0], out, params); break;
    case LIPC_OP_DENSE: ld_dense(n, nb, in[0], out, params); break;
    case LIPC_OP_MINMAX: ld_minmax(n, nb, in[0], out); break;
    case LIPC_OP_AVGPOOL: ld_avgpool(n, nb, in[0], out); break;
    case LIPC_OP_PAD: ld_pad(n, nb, in[0], out); break;
    case LIPC_OP_SHIFT:
        for (size_t i = 0; i < total; i++)
            out[i] = in[0][i] + (ld)n->a.by;
        break;
    case LIPC_OP_RELU:
        for (size_t i = 0; i < total; i++)
            out[i] = in[0][i] > 0 ? in[0][i] : 0.0L;
        break;
    case LIPC_OP_FLATTEN: memcpy(out, in[0], total * sizeof *out); break;
    case LIPC_OP_ADD:
        for (size_t i = 0; i < total; i++)
            out[i] = in[0][i] + in[1][i];
        break;
    default: cr_assert_fail("no long-double reference for op %s", lipc_op_info(n->op)->name);
    }
}

/* ---- one node, built by hand ------------------------------------------------ */

static const op_case op_cases[] = {
    {.label = "shift", .op = LIPC_OP_SHIFT, .in = S3(2, 3, 4), .by = -0.5},
    {.label = "shift by 1/3", .op = LIPC_OP_SHIFT, .in = S1(17), .by = 1.0 / 3.0},
    {.label = "pad", .op = LIPC_OP_PAD, .in = S3(2, 3, 2), .pad_by = {4, {2, 0, 1, 3}}},
    {.label = "conv2d 3x3 s1 same",
     .op = LIPC_OP_CONV2D,
     .in = S3(8, 5, 5),
     .out = 4,
     .kernel = {3, 3}},
    {.label = "conv2d 5x5 s2 same, no bias",
     .op = LIPC_OP_CONV2D,
     .in = S3(3, 9, 8),
     .out = 4,
     .kernel = {5, 5},
     .stride = {2, 2},
     .no_bias = true},
    {.label = "conv2d 4x4/4 neck",
     .op = LIPC_OP_CONV2D,
     .in = S3(4, 8, 8),
     .out = 6,
     .kernel = {4, 4},
     .stride = {4, 4},
     .padding = {LIPC_PAD_VALID, {0, 0}}},
    {.label = "conv2d 3x3 folded",
     .op = LIPC_OP_CONV2D,
     .in = S3(6, 4, 5),
     .out = 6,
     .kernel = {3, 3},
     .fold = true},
    {.label = "dense", .op = LIPC_OP_DENSE, .in = S1(64), .out = 5},
    {.label = "dense, no bias", .op = LIPC_OP_DENSE, .in = S1(9), .out = 6, .no_bias = true},
    {.label = "dense folded", .op = LIPC_OP_DENSE, .in = S1(12), .out = 12, .fold = true},
    {.label = "dense normalized", .op = LIPC_OP_DENSE, .in = S1(40), .out = 7, .normalize = true},
    {.label = "dense normalized, folded",
     .op = LIPC_OP_DENSE,
     .in = S1(10),
     .out = 10,
     .normalize = true,
     .fold = true},
    {.label = "minmax halves", .op = LIPC_OP_MINMAX, .in = S3(4, 3, 2)},
    {.label = "minmax adjacent (f)",
     .op = LIPC_OP_MINMAX,
     .in = S1(10),
     .pairing = LIPC_PAIR_ADJACENT},
    {.label = "relu", .op = LIPC_OP_RELU, .in = S3(2, 3, 4)},
    {.label = "flatten", .op = LIPC_OP_FLATTEN, .in = S3(3, 2, 4)},
    {.label = "avgpool 2x2", .op = LIPC_OP_AVGPOOL, .in = S3(2, 4, 6), .kernel = {2, 2}},
    {.label = "avgpool 3x3/1",
     .op = LIPC_OP_AVGPOOL,
     .in = S3(2, 5, 5),
     .kernel = {3, 3},
     .stride = {1, 1}},
    {.label = "add", .op = LIPC_OP_ADD, .in = S3(2, 3, 3)},
};
#define N_OP_CASES (sizeof op_cases / sizeof op_cases[0])

/* How the exact input departs from the computed one. */
enum {
    EXACT,        /* x = x~, e_in = 0 */
    RANDOM_SIGNS, /* x = x~ + delta, |delta| <= e_in, random signs */
    ALIGNED,      /* delta_i = e_in_i sign(the first output's weight on i) */
};

/* Worst |y~ - y| / e over the outputs; false (with a message) when some output
 * misses its bound or the bound is not positive and finite. */
static bool check_case(const op_case *c, int mode, double scale, uint64_t seed, double *ratio)
{
    const int nb = 2;
    lipc_graph *g = lipc_graph_new();
    cr_assert_not_null(g);
    lipc_node *n = test_op_build(g, c);
    const lipc_op_desc *desc = lipc_op_info(n->op);
    cr_assert_not_null(desc->ref_error, "%s has no ref_error", desc->name);
    lipc_rng r;
    lipc_rng_seed(&r, seed);

    size_t n_p = g->n_param_elems, n_out = (size_t)nb * numel(n->shape);
    double *params = dalloc(n_p);
    test_fill_normal(&r, params, n_p);
    for (size_t i = 0; i < n_p; i++)
        params[i] = (float)params[i]; /* the parameters are floats */
    const double *p_node = lipc_ref_node_params(g, n, params);

    double *x[LIPC_MAX_INPUTS] = {NULL}, *e[LIPC_MAX_INPUTS] = {NULL};
    ld *xe[LIPC_MAX_INPUTS] = {NULL};
    for (int k = 0; k < n->n_in; k++) {
        size_t len = (size_t)nb * numel(n->in[k]->shape);
        x[k] = dalloc(len);
        e[k] = dalloc(len);
        xe[k] = lalloc(len);
        test_fill_normal(&r, x[k], len);
        for (size_t i = 0; i < len; i++) {
            x[k][i] *= scale;
            double sign = lipc_rng_uniform(&r) < 0.5 ? -1.0 : 1.0;
            if (mode == ALIGNED && n->n_param) {
                /* the weight of output 0 on input i (dense: row 0; else random) */
                size_t in_f = numel(n->in[k]->shape);
                if (n->op == LIPC_OP_DENSE)
                    sign = p_node[i % in_f] < 0 ? -1.0 : 1.0;
            }
            if (mode != EXACT)
                e[k][i] = 1e-9 * scale * (0.5 + lipc_rng_uniform(&r));
            /* exact input x~ + delta, in long double */
            xe[k][i] = (ld)x[k][i] +
                       (ld)(sign * e[k][i] * (mode == RANDOM_SIGNS ? lipc_rng_uniform(&r) : 1.0));
        }
    }
    double *out = dalloc(n_out), *err = dalloc(n_out);
    ld *want = lalloc(n_out);
    const double *cin[LIPC_MAX_INPUTS] = {x[0], x[1]}, *cerr[LIPC_MAX_INPUTS] = {e[0], e[1]};
    const ld *lin[LIPC_MAX_INPUTS] = {xe[0], xe[1]};
    desc->ref_forward(n, nb, cin, out, p_node);
    desc->ref_error(n, nb, cin, cerr, out, err, p_node);
    ld_op(n, nb, lin, want, p_node);

    bool ok = true;
    *ratio = 0.0;
    for (size_t i = 0; i < n_out; i++) {
        double miss = (double)fabsl((ld)out[i] - want[i]);
        if (!(err[i] >= 0.0 && err[i] < INFINITY) || miss > err[i] * (1.0 + LD_SLACK)) {
            fprintf(stderr,
                    "%s (mode %d, scale %g, seed %llu): output %zu = %.17g, "
                    "exact %.20Lg, miss %.3g > bound %.3g\n",
                    c->label, mode, scale, seed_ull(seed), i, out[i], want[i], miss, err[i]);
            ok = false;
            break;
        }
        if (err[i] > 0.0 && miss / err[i] > *ratio)
            *ratio = miss / err[i];
        /* not vacuous: the op's own share is a few k u of the magnitudes, the
         * propagated one about the input errors times |W| */
        double small =
            1e-12 * scale * (1.0 + fabs(out[i]) / scale) + (mode == EXACT ? 0.0 : 1e-6 * scale);
        if (err[i] > small) {
            fprintf(stderr,
                    "%s (mode %d, scale %g, seed %llu): bound %.3g at output %zu "
                    "is loose (> %.3g)\n",
                    c->label, mode, scale, seed_ull(seed), err[i], i, small);
            ok = false;
            break;
        }
    }
    for (int k = 0; k < n->n_in; k++) {
        free(x[k]);
        free(e[k]);
        free(xe[k]);
    }
    free(params);
    free(out);
    free(err);
    free(want);
    lipc_graph_free(g);
    return ok;
}

/* ---- per-op bounds --------------------------------------------------------------- */

Test(rounding, every_op_has_an_error_rule_and_a_case)
{
    for (int op = 0; op < LIPC_OP_COUNT; op++) {
        const lipc_op_desc *desc = lipc_op_info((lipc_op)op);
        if (op == LIPC_OP_INPUT) {
            cr_expect_null(desc->ref_error, "input has no error rule: the data are exact");
            continue;
        }
        cr_expect_not_null(desc->ref_error, "op %s has no ref_error", desc->name);
        int cases = 0;
        for (size_t k = 0; k < N_OP_CASES; k++)
            cases += op_cases[k].op == (lipc_op)op;
        cr_expect_gt(cases, 0, "op %s has no case in tests/test_rounding.c", desc->name);
    }
}

Test(rounding, op_bounds_hold_against_long_double)
{
    uint64_t seed = test_seed();
    const double scales[] = {1.0, 1e6, 1e-7};
    for (size_t k = 0; k < N_OP_CASES; k++) {
        double worst[3] = {0, 0, 0};
        for (int mode = EXACT; mode <= ALIGNED; mode++)
            for (size_t s = 0; s < sizeof scales / sizeof scales[0]; s++) {
                double ratio;
                cr_expect(check_case(&op_cases[k], mode, scales[s], seed + 31 * k + s, &ratio),
                          "%s", op_cases[k].label);
                if (ratio > worst[mode])
                    worst[mode] = ratio;
            }
        /* with inexact inputs the propagated part is attained where the signs
         * of the input errors align with the weights (dense), and comes within
         * a small factor with random signs (about 1/sqrt(terms)) */
        cr_expect_gt(worst[RANDOM_SIGNS], 0.05, "%s: bound loose with inexact inputs (%g)",
                     op_cases[k].label, worst[RANDOM_SIGNS]);
        if (op_cases[k].op == LIPC_OP_DENSE && !op_cases[k].fold)
            cr_expect_gt(worst[ALIGNED], 0.9, "%s: aligned errors attain the bound (%g)",
                         op_cases[k].label, worst[ALIGNED]);
    }
}

/* 1e16 + 1 - 1e16 is 0 in double (1e16 + 1 rounds to 1e16) and 1 exactly: an
 * error of 1, which the bound must cover, and it does so with gamma(5) times
 * the magnitudes 2e16 + 1, about 11. */
Test(rounding, catastrophic_cancellation_is_covered)
{
    lipc_graph *g = lipc_graph_new();
    op_case c = {.label = "dense 3", .op = LIPC_OP_DENSE, .in = S1(3), .out = 1, .no_bias = true};
    lipc_node *n = test_op_build(g, &c);
    double w[3] = {1.0, 1.0, -1.0}, x[3] = {1e16, 1.0, 1e16}, e0[3] = {0, 0, 0};
    double y, e;
    const double *in[2] = {x, NULL}, *ein[2] = {e0, NULL};
    lipc_op_info(n->op)->ref_forward(n, 1, in, &y, w);
    lipc_op_info(n->op)->ref_error(n, 1, in, ein, &y, &e, w);
    cr_expect_eq(y, 0.0, "the double sum should cancel to 0, got %.17g", y);
    cr_expect(e >= 1.0 && e < 20.0, "bound %g for an error of 1", e);
    lipc_graph_free(g);
}

/* Infinite or NaN input bounds give an infinite bound, never a NaN or a
 * finite one (a zero weight times +inf must not make a NaN disappear). */
Test(rounding, unknown_input_errors_propagate_as_infinity)
{
    lipc_graph *g = lipc_graph_new();
    op_case c = {.label = "dense", .op = LIPC_OP_DENSE, .in = S1(2), .out = 2};
    lipc_node *n = test_op_build(g, &c);
    double w[6] = {0.0, 1.0, 0.0, 0.0, 0.5, 0.5}, x[2] = {1.0, 2.0}, ein0[2] = {INFINITY, 0.0};
    double y[2], e[2];
    const double *in[2] = {x, NULL}, *ein[2] = {ein0, NULL};
    lipc_op_info(n->op)->ref_forward(n, 1, in, y, w);
    lipc_op_info(n->op)->ref_error(n, 1, in, ein, y, e, w);
    /* 0 * inf is NaN in the sum: the bound says +inf (no bound), never NaN */
    cr_expect(isinf(e[0]) && e[0] > 0 && isinf(e[1]) && e[1] > 0, "%g %g", e[0], e[1]);

    op_case cm = {.label = "minmax", .op = LIPC_OP_MINMAX, .in = S1(2)};
    lipc_graph *g2 = lipc_graph_new();
    lipc_node *mm = test_op_build(g2, &cm);
    double xm[2] = {1.0, 0.0}, em[2] = {NAN, 1e-9}, ym[2], eo[2];
    const double *inm[2] = {xm, NULL}, *einm[2] = {em, NULL};
    lipc_op_info(mm->op)->ref_forward(mm, 1, inm, ym, NULL);
    lipc_op_info(mm->op)->ref_error(mm, 1, inm, einm, ym, eo, NULL);
    cr_expect(isinf(eo[0]) && isinf(eo[1]), "%g %g", eo[0], eo[1]);
    lipc_graph_free(g);
    lipc_graph_free(g2);
}

/* ---- whole models ---------------------------------------------------------------- */

/* A folded LiResNet: shift, strided stem, linear residual blocks (folded into
 * conv2d with fold_identity), neck, dense, normalised head. */
static const char liresnet_yaml[] = "name: round-liresnet\n"
                                    "input:\n"
                                    "  shape: [1, 8, 8]\n"
                                    "  range: [0, 1]\n"
                                    "  preprocess:\n"
                                    "    - shift: -0.5\n"
                                    "classes: 5\n"
                                    "layers:\n"
                                    "  - conv2d: {out: 8, kernel: 3, stride: 2}\n"
                                    "  - minmax\n"
                                    "  - repeat: 2\n"
                                    "    layers:\n"
                                    "      - residual:\n"
                                    "          - conv2d: {out: 8, kernel: 3, init: liresnet}\n"
                                    "      - minmax\n"
                                    "  - conv2d: {out: 16, kernel: 2, stride: 2, padding: valid}\n"
                                    "  - minmax\n"
                                    "  - flatten\n"
                                    "  - dense: {out: 32}\n"
                                    "  - minmax\n"
                                    "  - dense: {out: classes, normalize: true}\n";

/* A conventional ResNet: kept (nonlinear) residuals, so ADD nodes; ReLU,
 * avgpool, zero padding, a dense residual, a plain (unnormalised) head. */
static const char resnet_yaml[] = "name: round-resnet\n"
                                  "input:\n"
                                  "  shape: [2, 6, 6]\n"
                                  "  range: [0, 1]\n"
                                  "  preprocess:\n"
                                  "    - shift: -0.5\n"
                                  "    - pad: {to: [8, 8]}\n"
                                  "classes: 4\n"
                                  "layers:\n"
                                  "  - conv2d: {out: 6, kernel: 3, stride: 2}\n"
                                  "  - minmax\n"
                                  "  - residual:\n"
                                  "      - conv2d: {out: 6, kernel: 3}\n"
                                  "      - minmax\n"
                                  "      - conv2d: {out: 6, kernel: 3}\n"
                                  "  - relu\n"
                                  "  - avgpool: {kernel: 2}\n"
                                  "  - flatten\n"
                                  "  - dense: {out: 10}\n"
                                  "  - residual:\n"
                                  "      - dense: {out: 10}\n"
                                  "      - minmax\n"
                                  "  - dense: {out: classes}\n";

typedef struct model {
    lipc_graph *g;
    lipc_program *fwd; /* the FORWARD program */
    lipc_compiled *c;  /* with `compile` only (needs a normalised head) */
    float *params;
} model;

static model load_model(const char *name, const char *text, uint64_t seed, bool compile)
{
    lipc_diags d;
    lipc_diags_init(&d);
    model m = {0};
    lipc_status st = lipc_frontend_load_string(name, text, strlen(text), NULL, &d, &m.g);
    if (st == LIPC_OK) {
        lipc_pipeline_options o = {.verify = true};
        st = lipc_pipeline_run(m.g, &o, &d);
    }
    if (st == LIPC_OK && compile)
        st = lipc_compile(m.g, "ref", &d, &m.c);
    if (st == LIPC_OK) {
        m.fwd = lipc_build_program(m.g, LIPC_ENTRY_FORWARD, &d);
        st = m.fwd ? LIPC_OK : LIPC_ERR_INPUT;
    }
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "%s does not build", name);
    lipc_diags_free(&d);
    /* init rules, plus small random biases; then rounded to float */
    double *p = dalloc(m.g->n_param_elems);
    lipc_ref_init_params(m.g, seed, p);
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xb1a5);
    for (int i = 0; i < m.g->n_params; i++)
        if (m.g->params[i].role == LIPC_PARAM_BIAS)
            test_fill_uniform(&r, p + m.g->params[i].offset, m.g->params[i].numel, -0.1, 0.1);
    m.params = calloc(m.g->n_param_elems + 1, sizeof(float));
    cr_assert_not_null(m.params);
    for (size_t i = 0; i < m.g->n_param_elems; i++)
        m.params[i] = (float)p[i];
    free(p);
    return m;
}

static void free_model(model *m)
{
    lipc_compiled_free(m->c);
    lipc_program_free(m->fwd);
    lipc_graph_free(m->g);
    free(m->params);
}

/* The whole graph in long double (to_float: every activation rounded to
 * float instead, a float evaluation). x [nb, numel(input)] -> out [nb, m]. */
static void ld_model(const lipc_graph *g, const float *params, int nb, const float *x,
                     bool to_float, ld *out)
{
    ld **act = calloc((size_t)g->next_id, sizeof *act);
    double *pd = dalloc(g->n_param_elems);
    cr_assert_not_null(act);
    for (size_t i = 0; i < g->n_param_elems; i++)
        pd[i] = params[i];
    for (const lipc_node *n = g->first; n; n = n->next) {
        size_t len = (size_t)nb * numel(n->shape);
        act[n->id] = lalloc(len);
        if (n->op == LIPC_OP_INPUT) {
            for (size_t i = 0; i < len; i++)
                act[n->id][i] = x[i];
            continue;
        }
        const ld *in[LIPC_MAX_INPUTS] = {NULL, NULL};
        for (int k = 0; k < n->n_in; k++)
            in[k] = act[n->in[k]->id];
        ld_op(n, nb, in, act[n->id], lipc_ref_node_params(g, n, pd));
        if (to_float)
            for (size_t i = 0; i < len; i++)
                act[n->id][i] = (float)act[n->id][i];
    }
    memcpy(out, act[g->output->id], (size_t)nb * numel(g->output->shape) * sizeof *out);
    for (int i = 0; i < g->next_id; i++)
        free(act[i]);
    free(act);
    free(pd);
}

static void check_model(const char *name, const char *yaml, uint64_t seed)
{
    model m = load_model(name, yaml, seed, false);
    const int nb = 6;
    int mc = m.g->classes;
    size_t in = numel(m.g->input_shape), n_out = (size_t)nb * mc;
    float *x = calloc((size_t)nb * in, sizeof *x);
    cr_assert_not_null(x);
    lipc_rng r;
    lipc_rng_seed(&r, seed + 1);
    for (size_t i = 0; i < (size_t)nb * in; i++)
        x[i] = (float)lipc_rng_uniform(&r);

    double *f = dalloc(n_out), *e = dalloc(n_out), *f_plain = dalloc(n_out);
    ld *f_ld = lalloc(n_out), *f_fl = lalloc(n_out);
    cr_assert_eq(lipc_ref_predict_bounded(m.fwd, m.params, nb, x, f, e), LIPC_OK);
    cr_assert_eq(lipc_ref_predict(m.fwd, m.params, nb, x, f_plain), LIPC_OK);
    ld_model(m.g, m.params, nb, x, false, f_ld);
    ld_model(m.g, m.params, nb, x, true, f_fl);

    double worst = 0.0, e_max = 0.0;
    int float_beyond = 0;
    for (size_t i = 0; i < n_out; i++) {
        cr_expect_eq(f[i], f_plain[i], "%s: logit %zu differs from lipc_ref_predict's", name, i);
        double miss = (double)fabsl((ld)f[i] - f_ld[i]);
        cr_expect(e[i] > 0.0 && e[i] < 1e-10 * (1.0 + fabs(f[i])),
                  "%s (seed %llu): logit %zu bound %g", name, seed_ull(seed), i, e[i]);
        cr_expect(miss <= e[i] * (1.0 + LD_SLACK),
                  "%s (seed %llu): logit %zu = %.17g, exact %.20Lg: miss %g > bound %g", name,
                  seed_ull(seed), i, f[i], f_ld[i], miss, e[i]);
        if (miss / e[i] > worst)
            worst = miss / e[i];
        if (e[i] > e_max)
            e_max = e[i];
        float_beyond += fabsl(f_fl[i] - (ld)f[i]) > e[i];
    }
    /* A float evaluation misses by ~1e-7, far beyond the bound (~1e-11):
     * the bound is not vacuous. It is worst-case, though: errors are carried
     * through |W| (every rounding error aligned), so on random data the actual
     * double error sits 10^4 to 10^5 below it. */
    cr_expect_eq(float_beyond, (int)n_out, "%s: float within the bound for %d of %zu logits", name,
                 (int)n_out - float_beyond, n_out);
    cr_expect_gt(worst, 1e-7, "%s: the bound is over 10^7 times the actual error", name);
    if (getenv("LIPC_TEST_VERBOSE"))
        fprintf(stderr, "rounding: %s: max bound %.3g, worst actual/bound %.3g\n", name, e_max,
                worst);
    free(x);
    free(f);
    free(e);
    free(f_plain);
    free(f_ld);
    free(f_fl);
    free_model(&m);
}

Test(rounding, liresnet_logit_bounds_hold)
{
    check_model("liresnet", liresnet_yaml, test_seed());
}

Test(rounding, resnet_logit_bounds_hold)
{
    check_model("resnet", resnet_yaml, test_seed() + 7);
}

/* ---- certification ------------------------------------------------------------------ */

static const double unit_k[4] = {0, 1, 1, 0};

/* Margin 1, eps K = 1 - d: certified iff the margin's excess d beats the
 * error bounds e_0 + e_1 = 2e-10. */
Test(rounding, margin_within_the_error_bound_is_not_certified)
{
    double f[2] = {1.0, 0.0}, err[2] = {1e-10, 1e-10};
    double below = 1.0 - 1e-10, above = 1.0 - 1e-9;
    /* trusting the logits, both radii are certified */
    cr_expect_gt(lipc_certify_point(2, f, unit_k, 0.0).radius, below);
    lipc_cert_point pt = lipc_certify_point_slack(2, f, err, unit_k, 0.0);
    cr_expect_eq(pt.pred, 0);
    cr_expect(!(pt.radius > below), "radius %.17g certifies eps %.17g within the error bound",
              pt.radius, below);
    cr_expect(pt.radius > above, "radius %.17g should certify eps %.17g", pt.radius, above);
    /* the per-pair slack adds to float_slack */
    cr_expect(!(lipc_certify_point_slack(2, f, err, unit_k, 1e-9).radius > above));

    /* through the summary: counted as certified at `above` only */
    double eps[2] = {below, above};
    lipc_cert_summary s;
    cr_assert_eq(lipc_cert_summary_init(&s, 2, eps, 0.0), LIPC_OK);
    int32_t y = 0;
    lipc_certify_batch_slack(&s, 1, 2, f, err, &y, unit_k, NULL);
    cr_expect(s.n_vra[0] == 0 && s.n_vra[1] == 1, "%ld %ld", s.n_vra[0], s.n_vra[1]);
    cr_expect(s.rounding_accounted && s.n_err_bounded == 1 && s.max_logit_err == 1e-10);

    /* a batch without bounds clears the flag */
    lipc_certify_batch(&s, 1, 2, f, &y, unit_k, NULL);
    cr_expect(!s.rounding_accounted);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_cert_summary_json(&s, &b);
    cr_expect(strstr(lipc_buf_str(&b), "\"rounding_accounted\": false"), "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
}

/* The slack path rounds the margin down: with exactly representable numbers
 * where margin == eps K + e_0 + e_1 exactly, nothing is certified. */
Test(rounding, equality_is_not_certified)
{
    double f[2] = {1.0, 0.0}, err[2] = {0.125, 0.125};
    cr_expect(!(lipc_certify_point_slack(2, f, err, unit_k, 0.0).radius > 0.75));
    cr_expect(lipc_certify_point_slack(2, f, err, unit_k, 0.0).radius > 0.7499999);
}

Test(rounding, bad_error_bounds)
{
    double f[2] = {1.0, 0.0};
    double nan_err[2] = {NAN, 0.0}, neg_err[2] = {-1e-9, 0.0}, inf_err[2] = {INFINITY, 0.0};
    cr_expect(lipc_certify_point_slack(2, f, nan_err, unit_k, 0.0).invalid);
    cr_expect(lipc_certify_point_slack(2, f, neg_err, unit_k, 0.0).invalid);
    lipc_cert_point pt = lipc_certify_point_slack(2, f, inf_err, unit_k, 0.0);
    cr_expect(!pt.invalid && pt.pred == 0 && pt.radius == 0.0, "radius %g", pt.radius);
}

/* Rounded-up pair bounds hold against a long-double head with exactly
 * normalised rows, and are within a few ulps of lipc_kpair. */
Test(rounding, kpair_upper_bounds_the_exact_pairs)
{
    enum { M = 6, D = 50 };
    lipc_rng r;
    lipc_rng_seed(&r, test_seed() + 3);
    double w[M * D], rows[M * D], kp[M * M], kp_up[M * M];
    test_fill_normal(&r, w, M * D);
    for (int i = 0; i < M * D; i++)
        w[i] = (float)w[i];
    /* two nearly equal rows: a tiny distance, where the rows' own rounding
     * matters most */
    for (int t = 0; t < D; t++)
        w[D + t] = (float)(w[t] * (1.0 + 1e-6 * (t % 3)));
    lipc_rownorm_forward(M, D, w, rows);
    const double k_sub = 1.7;
    lipc_kpair(M, D, rows, k_sub, kp);
    lipc_kpair_upper(M, D, rows, (D + 6.0) * 0x1p-52, k_sub, kp_up);
    ld exact[M * D];
    for (int o = 0; o < M; o++) {
        ld ss = 0;
        for (int t = 0; t < D; t++)
            ss += (ld)w[o * D + t] * w[o * D + t];
        for (int t = 0; t < D; t++)
            exact[o * D + t] = w[o * D + t] / sqrtl(ss);
    }
    for (int j = 0; j < M; j++)
        for (int i = 0; i < M; i++) {
            ld s = 0;
            for (int t = 0; t < D; t++)
                s += (exact[j * D + t] - exact[i * D + t]) * (exact[j * D + t] - exact[i * D + t]);
            ld want = (ld)k_sub * sqrtl(s);
            cr_expect(kp_up[j * M + i] >= want * (1.0L + 0x1p-60L),
                      "pair (%d, %d): %.17g < exact %.20Lg", j, i, kp_up[j * M + i], want);
            cr_expect(kp_up[j * M + i] <= kp[j * M + i] + 1e-12, "pair (%d, %d): %.17g vs %.17g", j,
                      i, kp_up[j * M + i], kp[j * M + i]);
            cr_expect_eq(kp_up[j * M + i], kp_up[i * M + j]);
        }
}

/* lipc_certify_dataset with predict_bounded: every radius is below the one
 * that trusts the logits, a radius between the two is certified only by the
 * latter, and the summary says which was used. */
Test(rounding, certify_dataset_accounts_for_rounding)
{
    model m = load_model("liresnet", liresnet_yaml, test_seed() + 11, true);
    enum { N = 16 };
    int mc = m.g->classes;
    size_t in = numel(m.g->input_shape);
    lipc_dataset ds = {.n = N, .c = 1, .h = 8, .w = 8, .classes = mc};
    ds.x = calloc((size_t)N * in, sizeof(float));
    ds.y = calloc(N, 1);
    cr_assert(ds.x && ds.y);
    lipc_rng r;
    lipc_rng_seed(&r, test_seed() + 12);
    for (size_t i = 0; i < (size_t)N * in; i++)
        ds.x[i] = (float)lipc_rng_uniform(&r);
    /* labels: the predictions, so that every point is correct */
    double logits[N * 8];
    cr_assert_eq(lipc_ref_predict(m.c->forward, m.params, N, ds.x, logits), LIPC_OK);
    for (int b = 0; b < N; b++) {
        int j = 0;
        for (int k = 1; k < mc; k++)
            if (logits[b * mc + k] > logits[b * mc + j])
                j = k;
        ds.y[b] = (uint8_t)j;
    }
    lipc_model_ops plain = m.c->ops;
    plain.predict_bounded = NULL;
    double rad_b[N], rad_p[N];
    const double k_sub = 3.0;
    lipc_cert_summary sb, sp;
    cr_assert_eq(lipc_cert_summary_init(&sb, 0, NULL, 0.0), LIPC_OK);
    cr_assert_eq(lipc_cert_summary_init(&sp, 0, NULL, 0.0), LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(&m.c->desc, &m.c->ops, m.params, k_sub, NULL, &ds, 5, &sb, rad_b),
                 LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(&m.c->desc, &plain, m.params, k_sub, NULL, &ds, 5, &sp, rad_p),
                 LIPC_OK);
    cr_expect(sb.rounding_accounted && sb.n_err_bounded == N && sb.max_logit_err > 0);
    cr_expect(!sp.rounding_accounted && sp.n_err_bounded == 0);
    cr_expect_eq(sb.n_correct, N);
    for (int b = 0; b < N; b++) {
        cr_expect(rad_b[b] < rad_p[b], "point %d: %.17g vs %.17g", b, rad_b[b], rad_p[b]);
        cr_expect(rad_p[b] - rad_b[b] < 1e-10, "point %d: %.17g vs %.17g", b, rad_b[b], rad_p[b]);
    }
    /* eps between the two radii of point 0 */
    double eps = rad_b[0] + 0.5 * (rad_p[0] - rad_b[0]);
    cr_assert(eps > rad_b[0] && eps < rad_p[0]);
    lipc_cert_summary eb, ep;
    cr_assert_eq(lipc_cert_summary_init(&eb, 1, &eps, 0.0), LIPC_OK);
    cr_assert_eq(lipc_cert_summary_init(&ep, 1, &eps, 0.0), LIPC_OK);
    lipc_dataset one = ds;
    one.n = 1;
    cr_assert_eq(lipc_certify_dataset(&m.c->desc, &m.c->ops, m.params, k_sub, NULL, &one, 1, &eb, NULL),
                 LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(&m.c->desc, &plain, m.params, k_sub, NULL, &one, 1, &ep, NULL),
                 LIPC_OK);
    cr_expect(eb.n_vra[0] == 0 && ep.n_vra[0] == 1, "bounded %ld, trusted %ld", eb.n_vra[0],
              ep.n_vra[0]);
    free(ds.x);
    free(ds.y);
    free_model(&m);
}

/* lipc_cert_undecided: a point is sent to the tighter bounds exactly when
 * they could change its prediction or a certificate at one of the radii. */
Test(rounding, undecided_points_are_the_close_calls)
{
    const double kpair[9] = {0, 1, 1, 1, 0, 1, 1, 1, 0};
    const double err[3] = {0.01, 0.01, 0.01};
    const double f[3] = {2.0, 1.0, 0.0};
    lipc_cert_summary s;
    double eps_far = 0.5, eps_close = 0.99, eps_above = 1.5;
    cr_assert_eq(lipc_cert_summary_init(&s, 1, &eps_far, 0.0), LIPC_OK);
    cr_expect(!lipc_cert_undecided(&s, 3, f, err, kpair), "certified either way");
    cr_assert_eq(lipc_cert_summary_init(&s, 1, &eps_close, 0.0), LIPC_OK);
    cr_expect(lipc_cert_undecided(&s, 3, f, err, kpair), "0.98 <= eps < 1.02");
    cr_assert_eq(lipc_cert_summary_init(&s, 1, &eps_above, 0.0), LIPC_OK);
    cr_expect(!lipc_cert_undecided(&s, 3, f, err, kpair), "not certified either way");
    /* a slack moves the window: 0.98 - 0.5 <= 0.5 < 1.02 - 0.5 */
    cr_assert_eq(lipc_cert_summary_init(&s, 1, &eps_far, 0.5), LIPC_OK);
    cr_expect(lipc_cert_undecided(&s, 3, f, err, kpair));
    /* the prediction itself within the errors, a tie, a NaN */
    cr_assert_eq(lipc_cert_summary_init(&s, 0, NULL, 0.0), LIPC_OK);
    const double near[3] = {1.0, 0.985, 0.0}, tie[3] = {1.0, 1.0, 0.0}, bad[3] = {NAN, 1, 0};
    cr_expect(!lipc_cert_undecided(&s, 3, f, err, kpair), "no radii: only the prediction");
    cr_expect(lipc_cert_undecided(&s, 3, near, err, kpair));
    cr_expect(lipc_cert_undecided(&s, 3, tie, err, kpair));
    cr_expect(lipc_cert_undecided(&s, 3, bad, err, kpair));
}
