/* tests/test_fold.c: fold-residual must not change what a model computes.
 *
 * For each model: build it, infer shapes, draw weights and inputs, run the
 * reference interpreter; fold; run again with the SAME parameter block; the
 * logits must agree to rounding. Also checks which residuals fold and that the
 * reasons given for the others name the right layer.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "testutil.h"

/* A zoo of residual blocks: foldable convs (3x3 and 1x5), a foldable dense,
 * and blocks that must stay: nonlinear body, strided body, two-layer body,
 * even kernel, nested residuals. */
static const char zoo[] =
    "name: zoo\n"
    "params: {w: 6}\n"
    "input: {shape: [2, 7, 7]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - conv2d: {out: w, kernel: 3}\n"
    "  - residual:\n"                                  /* folds: 3x3 */
    "      - conv2d: {out: w, kernel: 3}\n"
    "  - minmax\n"
    "  - residual:\n"                                  /* folds: 1x5, no bias */
    "      - conv2d: {out: w, kernel: [1, 5], bias: false}\n"
    "  - residual:\n"                                  /* kept: nonlinear */
    "      - conv2d: {out: w, kernel: 3}\n"
    "      - minmax\n"
    "      - conv2d: {out: w, kernel: 3}\n"
    "  - residual:\n"                                  /* kept: two layers */
    "      - conv2d: {out: w, kernel: 3}\n"
    "      - conv2d: {out: w, kernel: 1}\n"
    "  - residual:\n"                                  /* kept: even kernel */
    "      - conv2d: {out: w, kernel: 2}\n"
    "  - residual:\n"                                  /* outer kept, inner folds */
    "      - residual:\n"
    "          - conv2d: {out: w, kernel: 3}\n"
    "      - minmax\n"
    "  - flatten\n"
    "  - dense: {out: 8}\n"
    "  - residual:\n"                                  /* folds: dense */
    "      - dense: {out: 8}\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

static lipc_graph *load(const char *text, lipc_diags *d)
{
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_string("zoo.yaml", text, strlen(text), NULL, d, &g);
    if (st != LIPC_OK)
        lipc_diags_print(d, stderr);
    cr_assert_eq(st, LIPC_OK);
    return g;
}

/* Forward before and after folding; returns the number of ADD nodes left. */
static int check_fold_preserves_outputs(lipc_graph *g, uint64_t seed, int n_batch)
{
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert(lipc_pass_infer_shapes(g, &d));
    cr_assert(lipc_graph_verify(g, "infer-shapes", &d));

    double *params = malloc(sizeof(double) * (g->n_param_elems + 1));
    size_t in_n = (size_t)n_batch * (size_t)lipc_shape_numel(g->input_shape);
    size_t out_n = (size_t)n_batch * (size_t)g->classes;
    double *x = malloc(sizeof(double) * in_n);
    double *y0 = malloc(sizeof(double) * out_n), *y1 = malloc(sizeof(double) * out_n);
    lipc_ref_init_params(g, seed, params);
    /* Non-zero biases, so the fold is checked with them too. */
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0x5eed);
    for (int i = 0; i < g->n_params; i++)
        if (g->params[i].role == LIPC_PARAM_BIAS)
            test_fill_uniform(&r, params + g->params[i].offset, g->params[i].numel, -0.1, 0.1);
    test_fill_uniform(&r, x, in_n, 0.0, 1.0);

    cr_assert_eq(lipc_ref_forward(g, params, n_batch, x, y0, &d), LIPC_OK);
    cr_assert(lipc_pass_fold_residual(g, &d));
    cr_assert(lipc_graph_verify(g, "fold-residual", &d), "verifier failed after folding");
    cr_assert(lipc_pass_lipschitz(g, &d));
    cr_assert_eq(lipc_ref_forward(g, params, n_batch, x, y1, &d), LIPC_OK);
    cr_assert(test_allclose("logits before/after fold", y1, y0, out_n, 1e-12, 1e-10),
              "seed %llu", (unsigned long long)seed);

    int adds = 0;
    for (const lipc_node *n = g->first; n; n = n->next)
        adds += n->op == LIPC_OP_ADD;
    free(params);
    free(x);
    free(y0);
    free(y1);
    lipc_diags_free(&d);
    return adds;
}

Test(fold, zoo_outputs_unchanged)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = load(zoo, &d);
    int adds = check_fold_preserves_outputs(g, test_seed(), 3);

    /* residual_0, _1, the inner one of _5, and the dense one fold. */
    const char *folded[] = {"residual_0", "residual_1", "residual_5.residual_0", "residual_6"};
    const char *kept[] = {"residual_2", "residual_3", "residual_4", "residual_5"};
    const char *why[] = {"nonlinear (minmax)", "2 layers", "even", "nonlinear (minmax)"};
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        for (int k = 0; k < 4; k++) {
            if (!strcmp(r->name, folded[k]))
                cr_expect_eq(r->state, LIPC_RES_FOLDED, "%s should fold: %s", r->name,
                             r->why ? r->why : "");
            if (!strcmp(r->name, kept[k])) {
                cr_expect_eq(r->state, LIPC_RES_KEPT, "%s should be kept", r->name);
                cr_expect(r->why && strstr(r->why, why[k]), "%s: why = '%s', want '%s'",
                          r->name, r->why ? r->why : "(null)", why[k]);
            }
        }
    }
    cr_expect_eq(adds, 4, "the four kept residuals keep their additions");

    /* The folded dense block's bound is an exact operator norm; kept ones are loose. */
    const lipc_node *dense = lipc_graph_find(g, "residual_6.dense_0");
    cr_assert(dense && dense->a.fold_identity);
    cr_expect_eq(dense->lip.kind, LIPC_LIP_OPNORM);
    const lipc_node *kept_add = lipc_graph_find(g, "residual_2");
    cr_assert(kept_add && kept_add->op == LIPC_OP_ADD);
    cr_expect_eq(kept_add->lip.kind, LIPC_LIP_LOOSE);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

/* Every shipped LiResNet: all blocks fold and the logits do not move. */
Test(fold, shipped_liresnets_fold_exactly)
{
    static const char *models[] = {"liresnet-fmnist.yaml", "liresnet-cifar10.yaml"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        char path[512];
        snprintf(path, sizeof path, "%s/models/%s", LIPC_SOURCE_DIR, models[m]);
        /* Small widths keep the reference interpreter quick. */
        char w[] = "width=8", dd[] = "dense=16", dp[] = "depth=3";
        lipc_override sets[3];
        lipc_override_parse(w, &sets[0]);
        lipc_override_parse(dd, &sets[1]);
        lipc_override_parse(dp, &sets[2]);
        lipc_load_options o = {.sets = sets, .n_sets = 3};
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_graph *g = NULL;
        lipc_status st = lipc_frontend_load_file(path, &o, &d, &g);
        if (st != LIPC_OK)
            lipc_diags_print(&d, stderr);
        cr_assert_eq(st, LIPC_OK, "%s", path);
        int adds = check_fold_preserves_outputs(g, test_seed() + m, 2);
        cr_expect_eq(adds, 0, "%s: no residual addition may remain", models[m]);
        for (int i = 0; i < g->n_res; i++)
            cr_expect_eq(g->res[i]->state, LIPC_RES_FOLDED, "%s: %s", models[m], g->res[i]->name);
        lipc_graph_free(g);
        lipc_diags_free(&d);
    }
}

/* The identity behind the fold, on one layer and by hand: conv with the
 * identity on the centre tap equals x + conv(x). */
Test(fold, centre_tap_identity_by_hand)
{
    static const char text[] =
        "input: {shape: [3, 5, 4]}\nclasses: 2\nlayers:\n"
        "  - residual: [{conv2d: {out: 3, kernel: [3, 5]}}]\n"
        "  - flatten\n  - dense: {out: 2}\n";
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = load(text, &d);
    cr_assert(lipc_pass_infer_shapes(g, &d));
    lipc_node *conv = lipc_graph_find(g, "residual_0.conv2d_0");
    cr_assert(conv);
    size_t numel = 3 * 5 * 4;
    double *params = malloc(sizeof(double) * g->n_param_elems);
    double x[60], y_fold[60], y_plain[60];
    lipc_ref_init_params(g, test_seed(), params);
    lipc_rng r;
    lipc_rng_seed(&r, test_seed());
    test_fill_normal(&r, x, numel);
    const double *in[1] = {x};
    cr_assert_eq(lipc_ref_node_forward(g, conv, params, 1, in, y_plain), LIPC_OK);
    conv->a.fold_identity = true;
    cr_assert_eq(lipc_ref_node_forward(g, conv, params, 1, in, y_fold), LIPC_OK);
    for (size_t i = 0; i < numel; i++)
        y_plain[i] += x[i];
    cr_assert(test_allclose("conv_{V+I}(x) vs x + conv_V(x)", y_fold, y_plain, numel, 1e-12,
                            1e-12));
    free(params);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}
