/* tests/test_train.c: the training program and the reference training step.
 *
 * - the train-graph pass: which layers become factors of K_sub, the order of
 *   steps, which input gradients are skipped, the memory plan's soundness;
 * - a directional finite-difference check of the WHOLE step's gradient
 *   (losses, head normalisation, K_sub path through power iteration, the
 *   autodiff of every layer) for each loss, on a LiResNet and on a
 *   conventional ResNet (loose bounds);
 * - optimiser steps lower the loss on a fixed batch.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "runtime/runtime.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "testutil.h"

static const char liresnet[] =
    "input: {shape: [1, 8, 8]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - shift: -0.5\n"
    "  - conv2d: {out: 4, kernel: 3, stride: 2}\n"
    "  - minmax\n"
    "  - repeat: 2\n"
    "    layers:\n"
    "      - residual: [{conv2d: {out: 4, kernel: 3, init: liresnet}}]\n"
    "      - minmax\n"
    "  - conv2d: {out: 6, kernel: 2, stride: 2, padding: valid}\n"
    "  - minmax\n"
    "  - flatten\n"
    "  - dense: {out: 8}\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

static const char resnet[] =
    "input: {shape: [1, 6, 6]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - conv2d: {out: 4, kernel: 3}\n"
    "  - minmax\n"
    "  - residual:\n"
    "      - conv2d: {out: 4, kernel: 3}\n"
    "      - minmax\n"
    "      - conv2d: {out: 4, kernel: 3}\n"
    "  - avgpool: {kernel: 2}\n"
    "  - flatten\n"
    "  - dense: {out: classes, normalize: true}\n";

/* Dense layers only: their top singular values are simple (a convolution's
 * come in pairs from conjugate frequencies, where sigma_max has a kink and
 * finite differences of it mean nothing), so the K_sub path through power
 * iteration, a loose residual and a folded one can be checked exactly. */
static const char mlp[] =
    "input: {shape: [12]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - dense: {out: 10}\n"
    "  - minmax\n"
    "  - residual:\n"
    "      - dense: {out: 10}\n"
    "      - minmax\n"
    "      - dense: {out: 10}\n"
    "  - residual: [{dense: {out: 10}}]\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

static lipc_graph *compile(const char *text)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_string("t.yaml", text, strlen(text), NULL, &d, &g);
    if (st == LIPC_OK) {
        lipc_pipeline_options o = {.verify = true};
        st = lipc_pipeline_run(g, &o, &d);
    }
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK);
    lipc_diags_free(&d);
    return g;
}

static lipc_program *program(lipc_graph *g, lipc_entry entry)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_program *p = lipc_build_program(g, entry, &d);
    if (!p)
        lipc_diags_print(&d, stderr);
    cr_assert(p);
    lipc_diags_free(&d);
    return p;
}

Test(train_graph, liresnet_structure)
{
    lipc_graph *g = compile(liresnet);
    lipc_program *p = program(g, LIPC_ENTRY_TRAIN);
    /* stem, 2 folded blocks, neck, dense: five operator norms, all on the main path */
    cr_assert_eq(p->n_bounds, 5);
    for (int b = 0; b < p->n_bounds; b++) {
        cr_expect_eq(p->bounds[b].kind, LIPC_LIP_OPNORM);
        cr_expect_eq(p->bounds[b].parent, -1);
    }
    cr_assert(p->head && p->head == g->output);
    /* The stem's input gradient is never formed; every other backward forms it. */
    int n_backward = 0, loss_at = -1, first_backward = -1;
    for (int s = 0; s < p->n_steps; s++) {
        const lipc_step *st = &p->steps[s];
        if (st->op == LIPC_STEP_LOSS)
            loss_at = s;
        if (st->op != LIPC_STEP_BACKWARD)
            continue;
        if (first_backward < 0)
            first_backward = s;
        n_backward++;
        bool is_stem = st->node->in[0]->op == LIPC_OP_SHIFT;
        cr_expect_eq(st->need_din[0], !is_stem, "%s", st->node->name);
    }
    cr_expect(loss_at >= 0 && first_backward > loss_at);
    /* shift has no parameter upstream: no backward for it */
    cr_expect_eq(n_backward, lipc_graph_count_nodes(g) - 2);

    lipc_buf b;
    lipc_buf_init(&b);
    lipc_program_print(p, &b);
    cr_expect(strstr(lipc_buf_str(&b), "power-iter"), "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_program_free(p);
    lipc_graph_free(g);
}

Test(train_graph, loose_residual_factors)
{
    lipc_graph *g = compile(resnet);
    lipc_program *p = program(g, LIPC_ENTRY_TRAIN);
    /* conv, [body conv, body conv] under the loose factor, avgpool const */
    int loose = -1, n_children = 0, n_const = 0;
    for (int b = 0; b < p->n_bounds; b++)
        if (p->bounds[b].kind == LIPC_LIP_LOOSE)
            loose = b;
    cr_assert(loose >= 0);
    for (int b = 0; b < p->n_bounds; b++) {
        n_children += p->bounds[b].parent == loose;
        n_const += p->bounds[b].kind == LIPC_LIP_CONST;
    }
    cr_expect_eq(n_children, 2);
    cr_expect_eq(n_const, 1);
    lipc_program_free(p);
    lipc_graph_free(g);
}

/* Live values sharing memory must never overlap in time: run the program's
 * forward twice, once with the plan and once with each node in its own
 * buffer (lipc_ref_forward), and compare the logits. */
Test(train_graph, memory_plan_keeps_forward_exact)
{
    lipc_graph *g = compile(liresnet);
    lipc_program *p = program(g, LIPC_ENTRY_FORWARD);
    size_t total = 0;
    for (lipc_node *n = g->first; n; n = n->next)
        total += (size_t)lipc_shape_numel(n->shape);
    cr_expect_lt(p->arena_per_example, total, "the forward plan reuses memory");

    int n = 3;
    size_t np = g->n_param_elems, in_n = 64 * (size_t)n;
    double *pd = malloc(sizeof(double) * np), *xd = malloc(sizeof(double) * in_n);
    float *pf = malloc(sizeof(float) * np), *xf = malloc(sizeof(float) * in_n);
    double want[9], got[9];
    lipc_ref_init_params(g, test_seed(), pd);
    lipc_rng r;
    lipc_rng_seed(&r, test_seed());
    test_fill_uniform(&r, xd, in_n, 0.0, 1.0);
    for (size_t i = 0; i < np; i++)
        pd[i] = pf[i] = (float)pd[i];
    for (size_t i = 0; i < in_n; i++)
        xd[i] = xf[i] = (float)xd[i];
    cr_assert_eq(lipc_ref_forward(g, pd, n, xd, want, NULL), LIPC_OK);
    cr_assert_eq(lipc_ref_predict(p, pf, n, xf, got), LIPC_OK);
    cr_expect(test_allclose("planned forward", got, want, 9, 0, 1e-15));
    free(pd);
    free(xd);
    free(pf);
    free(xf);
    lipc_program_free(p);
    lipc_graph_free(g);
}

typedef struct fixture {
    lipc_graph *g;
    lipc_program *p;
    lipc_train_state st;
    float *x;
    int32_t *y;
    int n;
} fixture;

static void setup(fixture *f, const char *text, int n, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->g = compile(text);
    f->p = program(f->g, LIPC_ENTRY_TRAIN);
    size_t np = f->g->n_param_elems;
    double *pd = malloc(sizeof(double) * np);
    lipc_ref_init_params(f->g, seed, pd);
    f->st.params = malloc(sizeof(float) * np);
    f->st.opt_m = calloc(np, sizeof(float));
    f->st.opt_v = calloc(np, sizeof(float));
    f->st.vec = calloc(f->p->n_vec_elems + 1, sizeof(float));
    for (size_t i = 0; i < np; i++)
        f->st.params[i] = (float)pd[i];
    free(pd);
    f->n = n;
    size_t in_n = (size_t)lipc_shape_numel(f->g->input_shape) * (size_t)n;
    f->x = malloc(sizeof(float) * in_n);
    f->y = malloc(sizeof(int32_t) * (size_t)n);
    lipc_rng r;
    lipc_rng_seed(&r, seed + 1);
    for (size_t i = 0; i < in_n; i++)
        f->x[i] = (float)lipc_rng_uniform(&r);
    for (int i = 0; i < n; i++)
        f->y[i] = i % f->g->classes;
}

static void teardown(fixture *f)
{
    free(f->st.params);
    free(f->st.opt_m);
    free(f->st.opt_v);
    free(f->st.vec);
    free(f->x);
    free(f->y);
    lipc_program_free(f->p);
    lipc_graph_free(f->g);
}

static lipc_hyper hyper(lipc_loss loss)
{
    return (lipc_hyper){.loss = loss, .optimizer = LIPC_OPTIM_ADAMW, .lr = 1e-2, .eps = 0.3,
                        .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8, .momentum = 0.9,
                        .clip = 0.0, .trades_lambda = 1.0, .power_iters = 400};
}

/* <grad, D> against (L(p + hD) - L(p - hD)) / 2h over random directions D.
 * Power iteration runs to convergence from converged vectors, where the
 * envelope argument makes dsigma/dW = the v,u weight gradient exact. The
 * parameters are float: h is large enough that their rounding is noise. */
static void directional_check(const char *text, lipc_loss loss, double eps, const char *label)
{
    fixture f;
    uint64_t seed = test_seed();
    setup(&f, text, 4, seed);
    lipc_hyper h = hyper(loss);
    h.eps = eps;
    size_t np = f.g->n_param_elems;
    double *gr = malloc(sizeof(double) * np);
    float *base = malloc(sizeof(float) * np);
    memcpy(base, f.st.params, sizeof(float) * np);
    lipc_step_stats s;
    /* converge the vectors once, then take the gradient from there */
    cr_assert_eq(lipc_ref_gradients(f.p, &f.st, f.n, f.x, f.y, &h, &s, gr), LIPC_OK);
    lipc_bound_report *rep = malloc(sizeof *rep * (size_t)(f.p->n_bounds + 1));
    cr_assert_eq(lipc_ref_lipschitz(f.p, f.st.params, f.st.vec, 100000, 1e-15, rep), LIPC_OK);
    free(rep);
    cr_assert_eq(lipc_ref_gradients(f.p, &f.st, f.n, f.x, f.y, &h, &s, gr), LIPC_OK);
    cr_assert(isfinite(s.loss) && s.k_sub > 0);

    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xd1ec);
    double hstep = 1e-4;
    double *dir = malloc(sizeof(double) * np);
    double *unused = malloc(sizeof(double) * np);
    int checked = 0;
    for (int attempt = 0; attempt < 30 && checked < 3; attempt++) {
        test_fill_normal(&r, dir, np);
        /* The parameters are float: the step actually taken is the rounded
         * one, so the predicted change is <grad, rounded step>. */
        double l[3], pred[3] = {0.0, 0.0, 0.0};
        for (int k = 0; k < 3; k++) {
            int sign = k - 1;
            for (size_t i = 0; i < np; i++) {
                f.st.params[i] = (float)(base[i] + sign * hstep * dir[i]);
                pred[k] += gr[i] * ((double)f.st.params[i] - (double)base[i]);
            }
            cr_assert_eq(lipc_ref_gradients(f.p, &f.st, f.n, f.x, f.y, &h, &s, unused), LIPC_OK);
            l[k] = s.loss;
        }
        memcpy(f.st.params, base, sizeof(float) * np);
        /* A direction that crosses a MinMax or argmax switch inside [-h, h]
         * shows as one-sided differences that disagree: draw another. */
        double right = (l[2] - l[1]) / pred[2], left = (l[1] - l[0]) / -pred[0];
        if (fabs(right - left) > 2e-3 * (fabs(right) + fabs(left)))
            continue;
        double fd = l[2] - l[0], dot = pred[2] - pred[0];
        cr_expect(fabs(fd - dot) <= 2e-3 * fabs(dot) + 1e-12,
                  "%s direction %d: loss change %.9g, predicted by the gradient %.9g (seed %llu)",
                  label, attempt, fd, dot, (unsigned long long)seed);
        checked++;
    }
    cr_expect_eq(checked, 3, "%s: too many directions crossed a kink (seed %llu)", label,
                 (unsigned long long)seed);
    free(dir);
    free(unused);
    free(gr);
    free(base);
    teardown(&f);
}

/* On convolutional models the radius is small, so the K_sub path (whose
 * power-iteration estimate has kinks at repeated singular values) barely
 * moves the loss: these check the losses and the autodiff of every layer.
 * EMMA's stop-gradient also makes its gradient differ from the derivative of
 * its value wherever the clip is inactive (tests/test_loss.c checks it against
 * a frozen surrogate); at this radius every clip is active. */
Test(train_step, gradient_liresnet_emma)
{
    directional_check(liresnet, LIPC_LOSS_EMMA, 1e-4, "emma");
}
Test(train_step, gradient_liresnet_margin)
{
    directional_check(liresnet, LIPC_LOSS_MARGIN, 1e-3, "margin");
}
Test(train_step, gradient_liresnet_gloro)
{
    directional_check(liresnet, LIPC_LOSS_GLORO, 1e-3, "gloro");
}
Test(train_step, gradient_liresnet_trades)
{
    directional_check(liresnet, LIPC_LOSS_TRADES, 1e-3, "trades");
}
/* The K_sub path at full strength, every loss, with a loose residual whose
 * input gradient fans out (summed from the skip and the body) and a folded
 * one. (The convolutional ResNet's fan-out is checked in double by
 * tests/test_grad.c.) */
Test(train_step, gradient_mlp_ksub_path)
{
    directional_check(mlp, LIPC_LOSS_MARGIN, 0.5, "mlp margin");
    directional_check(mlp, LIPC_LOSS_GLORO, 0.5, "mlp gloro");
    directional_check(mlp, LIPC_LOSS_TRADES, 0.5, "mlp trades");
}

/* A few AdamW steps on one batch lower its loss. */
Test(train_step, adamw_lowers_the_loss)
{
    fixture f;
    setup(&f, liresnet, 8, test_seed());
    lipc_hyper h = hyper(LIPC_LOSS_EMMA);
    h.power_iters = 5;
    h.eps = 0.1;
    h.clip = 3.0;
    lipc_step_stats s;
    double first = 0.0;
    for (int i = 0; i < 60; i++) {
        cr_assert_eq(lipc_ref_train_step(f.p, &f.st, f.n, f.x, f.y, &h, &s), LIPC_OK);
        if (i == 0)
            first = s.loss;
    }
    cr_expect_lt(s.loss, 0.6 * first, "loss %g -> %g", first, s.loss);
    cr_expect_eq(f.st.step, 60);
    teardown(&f);
}

/* The float-storage mode of the reference backend ("ref-f32") follows the
 * double one to float accuracy, and really stores floats. */
Test(train_step, float_storage_tracks_double)
{
    lipc_graph *g = compile(liresnet);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_compiled *c64 = NULL, *c32 = NULL;
    cr_assert_eq(lipc_compile(g, "ref", &d, &c64), LIPC_OK);
    cr_assert_eq(lipc_compile(g, "ref-f32", &d, &c32), LIPC_OK);
    cr_assert_eq(c32->train->dtype, LIPC_DTYPE_F32);
    lipc_train_state s64, s32;
    cr_assert_eq(lipc_train_state_alloc(&c64->desc, &s64), LIPC_OK);
    cr_assert_eq(lipc_train_state_alloc(&c32->desc, &s32), LIPC_OK);
    cr_assert_eq(lipc_init_params(&c64->desc, test_seed(), s64.params), LIPC_OK);
    size_t np = c64->desc.n_param_elems;
    memcpy(s32.params, s64.params, sizeof(float) * np);

    int n = 6;
    float x[6 * 64];
    int32_t y[6];
    lipc_rng r;
    lipc_rng_seed(&r, test_seed());
    for (int i = 0; i < n * 64; i++)
        x[i] = (float)lipc_rng_uniform(&r);
    for (int i = 0; i < n; i++)
        y[i] = i % 3;
    lipc_hyper h = hyper(LIPC_LOSS_EMMA);
    h.power_iters = 20;
    lipc_step_stats a, b;
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(c64->ops.train_step(c64->ops.ctx, &s64, n, x, y, &h, &a), LIPC_OK);
        cr_assert_eq(c32->ops.train_step(c32->ops.ctx, &s32, n, x, y, &h, &b), LIPC_OK);
        cr_expect(fabs(a.loss - b.loss) <= 1e-5 * fabs(a.loss), "step %d: loss %.9g vs %.9g",
                  step, a.loss, b.loss);
    }
    double worst = 0.0;
    for (size_t i = 0; i < np; i++)
        worst = fmax(worst, fabs((double)s64.params[i] - (double)s32.params[i]));
    cr_expect_lt(worst, 1e-4, "parameters drift apart by %g", worst);

    double l64[18], l32[18];
    cr_assert_eq(c64->ops.predict(c64->ops.ctx, s64.params, n, x, l64), LIPC_OK);
    cr_assert_eq(c32->ops.predict(c32->ops.ctx, s64.params, n, x, l32), LIPC_OK);
    for (int i = 0; i < n * 3; i++) {
        cr_expect_eq(l32[i], (double)(float)l32[i], "logit %d is not a float", i);
        cr_expect(fabs(l32[i] - l64[i]) <= 1e-5 * (1 + fabs(l64[i])), "logit %d: %.9g vs %.9g",
                  i, l32[i], l64[i]);
    }
    lipc_train_state_free(&s64);
    lipc_train_state_free(&s32);
    lipc_compiled_free(c64);
    lipc_compiled_free(c32);
    lipc_diags_free(&d);
    lipc_graph_free(g);
}

/* ---- kernels trained as V = s (a * U) ----------------------------------- */

/* L(V) = sum_j w_j V_j^2 + c_j V_j, so dL/dV = 2 w V + c; V = s a U row by
 * row, computed in double from the (float) a and U. */
static double scaled_loss(const lipc_scaled *ks, int n, const double *t, const double *w,
                          const double *c)
{
    double l = 0.0;
    for (int i = 0; i < n; i++) {
        const lipc_scaled *k = &ks[i];
        size_t per_row = k->numel / (size_t)k->rows;
        for (size_t j = 0; j < k->numel; j++) {
            double v = k->s * t[k->gain + j / per_row] * t[k->base + j];
            l += w[k->offset + j] * v * v + c[k->offset + j] * v;
        }
    }
    return l;
}

/* The gradient of a and U that lipc_scaled_grads makes from V's, against
 * central differences of L(V(a, U)), in float and in double gradients, for
 * two kernels of different shapes laid out past a parameter block with
 * other parameters in it. */
Test(train_step, scaled_gradient_matches_finite_differences)
{
    /* parameters: 5 others, V0 [3 x 4], 2 others, V1 [2 x 6]; then a0, U0, a1, U1 */
    lipc_scaled ks[2] = {{.offset = 5, .numel = 12, .rows = 3, .s = 1.0 / sqrt(2.0)},
                         {.offset = 19, .numel = 12, .rows = 2, .s = 0.5}};
    size_t np = 31, n = np;
    for (int i = 0; i < 2; i++) {
        ks[i].gain = n;
        ks[i].base = n + (size_t)ks[i].rows;
        n = ks[i].base + ks[i].numel;
    }
    float *p = calloc(n, sizeof(float)), *gf = calloc(n, sizeof(float));
    double *t = calloc(n, sizeof(double)), *w = calloc(n, sizeof(double));
    double *c = calloc(n, sizeof(double)), *gd = calloc(n, sizeof(double));
    lipc_rng r;
    lipc_rng_seed(&r, test_seed());
    for (size_t j = 0; j < n; j++) {
        p[j] = (float)(1.0 + 0.5 * lipc_rng_normal(&r));
        t[j] = p[j];
        w[j] = lipc_rng_normal(&r);
        c[j] = lipc_rng_normal(&r);
    }
    lipc_scaled_apply(ks, 2, p);
    for (int i = 0; i < 2; i++)
        for (size_t j = 0; j < ks[i].numel; j++) {
            size_t o = ks[i].offset + j;
            gd[o] = 2.0 * w[o] * p[o] + c[o];
            gf[o] = (float)gd[o];
        }
    gf[0] = 0.25f; /* another parameter's gradient: left alone */
    gd[0] = 0.25;
    lipc_train_state st = {.params = p, .n_train = n, .n_scaled = 2, .scaled = ks};
    lipc_scaled_grads(&st, gf, NULL);
    lipc_scaled_grads(&st, NULL, gd);
    cr_expect_eq(gf[0], 0.25f);
    cr_expect_eq(gd[0], 0.25);
    for (int i = 0; i < 2; i++) {
        const lipc_scaled *k = &ks[i];
        for (size_t j = 0; j < k->numel; j++)
            cr_expect(gd[k->offset + j] == 0.0 && gf[k->offset + j] == 0.0f,
                      "V's own gradient is not cleared");
        for (size_t q = k->gain; q < k->base + k->numel; q++) {
            double h = 1e-6 * fmax(1.0, fabs(t[q])), keep = t[q];
            t[q] = keep + h;
            double up = scaled_loss(ks, 2, t, w, c);
            t[q] = keep - h;
            double down = scaled_loss(ks, 2, t, w, c);
            t[q] = keep;
            double fd = (up - down) / (2.0 * h);
            cr_expect_leq(fabs(gd[q] - fd), 1e-6 * (1.0 + fabs(fd)),
                          "kernel %d, %s %zu: %.12g, finite differences %.12g", i,
                          q < k->base ? "a" : "U", q < k->base ? q - k->gain : q - k->base,
                          gd[q], fd);
            cr_expect_leq(fabs(gf[q] - fd), 1e-5 * (1.0 + fabs(fd)), "float gradient %zu", q);
        }
    }
    free(p);
    free(gf);
    free(t);
    free(w);
    free(c);
    free(gd);
}
