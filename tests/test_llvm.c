/* tests/test_llvm.c: the LLVM backend's forward function against the reference.
 *
 * Each model is compiled from YAML through the pipeline to a FORWARD program,
 * JIT-compiled (backend/llvm) and run in float; the reference is
 * lipc_ref_forward in double on the same float parameters and inputs, widened.
 * Tolerance: atol 1e-4, rtol 1e-4. The JIT rounds every value to float and
 * sums in another order (FMA contraction, reassociated dense rows), so each
 * output carries a relative error of a few float ulps times the depth; these
 * models' logits are O(1), and 1e-4 leaves two orders of magnitude of margin
 * while any wrong index or missed tap shows up at O(0.01) or more.
 *
 * The models cover every op a forward program holds: shift, pad (uneven),
 * conv2d (strides, explicit / same / valid padding, even and rectangular
 * kernels, 1x1 maps, a kernel larger than its map, no bias, folded identity),
 * dense (bias or not, folded, normalised head), minmax (both pairings), relu,
 * flatten, avgpool (overlapping windows) and add (kept residuals); odd channel
 * counts; batches of 1 and 5.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "testutil.h"

#define ATOL 1e-4
#define RTOL 1e-4

/* Residual blocks: folded convs (3x3, 1x5 without bias), kept ones (add),
 * a folded dense, the normalised head (from tests/test_fold.c's zoo). */
static const char zoo[] =
    "params: {w: 6}\n"
    "input: {shape: [2, 7, 7]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - conv2d: {out: w, kernel: 3}\n"
    "  - residual:\n"
    "      - conv2d: {out: w, kernel: 3}\n"
    "  - minmax\n"
    "  - residual:\n"
    "      - conv2d: {out: w, kernel: [1, 5], bias: false}\n"
    "  - residual:\n"
    "      - conv2d: {out: w, kernel: 3}\n"
    "      - minmax\n"
    "      - conv2d: {out: w, kernel: 3}\n"
    "  - residual:\n"
    "      - conv2d: {out: w, kernel: 2}\n"
    "  - residual:\n"
    "      - residual:\n"
    "          - conv2d: {out: w, kernel: 3}\n"
    "      - minmax\n"
    "  - flatten\n"
    "  - dense: {out: 8}\n"
    "  - residual:\n"
    "      - dense: {out: 8}\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

/* Strides with padding, uneven pad, even and rectangular kernels, odd channel
 * counts, relu, adjacent pairing, overlapping avgpool, down to a 1x1 map. */
static const char edges[] =
    "input:\n"
    "  shape: [3, 9, 9]\n"
    "  preprocess:\n"
    "    - shift: -0.25\n"
    "    - pad: {by: [1, 2, 0, 3]}\n"
    "classes: 5\n"
    "layers:\n"
    "  - conv2d: {out: 5, kernel: 3, stride: 2}\n"
    "  - relu\n"
    "  - conv2d: {out: 4, kernel: [2, 3], stride: [2, 1], padding: 1}\n"
    "  - minmax: {pairing: adjacent}\n"
    "  - conv2d: {out: 6, kernel: 4, stride: 2}\n"
    "  - minmax\n"
    "  - avgpool: {kernel: 2, stride: 1}\n"
    "  - conv2d: {out: 7, kernel: [1, 2], padding: valid, bias: false}\n"
    "  - relu\n"
    "  - flatten\n"
    "  - dense: {out: 9, bias: false}\n"
    "  - relu\n"
    "  - dense: {out: classes, normalize: true}\n";

/* 1x1 maps: a 3x3 kernel on a 1x1 map reads only its centre tap. */
static const char tiny[] =
    "input: {shape: [3, 1, 1]}\n"
    "classes: 2\n"
    "layers:\n"
    "  - conv2d: {out: 4, kernel: 1}\n"
    "  - minmax\n"
    "  - residual:\n"
    "      - conv2d: {out: 4, kernel: 3}\n"
    "  - conv2d: {out: 3, kernel: 3, stride: 2}\n"
    "  - flatten\n"
    "  - dense: {out: classes}\n";

/* Flat vectors: adjacent pairs, kept and folded dense residuals. */
static const char mlp[] =
    "input: {shape: [11]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - dense: {out: 10}\n"
    "  - minmax: {pairing: adjacent}\n"
    "  - residual:\n"
    "      - dense: {out: 10}\n"
    "      - minmax\n"
    "      - dense: {out: 10}\n"
    "  - residual: [{dense: {out: 10}}]\n"
    "  - minmax\n"
    "  - dense: {out: classes, normalize: true}\n";

static lipc_graph *load(const char *name, const char *text, const char *path,
                        const lipc_override *sets, int n_sets)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_load_options o = {.sets = sets, .n_sets = n_sets};
    lipc_status st = text ? lipc_frontend_load_string(name, text, strlen(text), &o, &d, &g)
                          : lipc_frontend_load_file(path, &o, &d, &g);
    if (st == LIPC_OK) {
        lipc_pipeline_options po = {.verify = true};
        st = lipc_pipeline_run(g, &po, &d);
    }
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "%s does not compile", name);
    lipc_diags_free(&d);
    return g;
}

static lipc_program *forward_program(lipc_graph *g)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_program *p = lipc_build_program(g, LIPC_ENTRY_FORWARD, &d);
    if (!p)
        lipc_diags_print(&d, stderr);
    cr_assert(p);
    lipc_diags_free(&d);
    return p;
}

/* JIT logits against the reference on random parameters and inputs, for each
 * batch size. */
static void check_model(const char *name, lipc_graph *g)
{
    lipc_program *p = forward_program(g);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_llvm_fn *f = NULL;
    lipc_status st = lipc_llvm_forward_compile(p, &d, &f);
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "%s: the JIT failed", name);
    lipc_diags_free(&d);

    uint64_t seed = test_seed();
    size_t np = g->n_param_elems, in = (size_t)lipc_shape_numel(g->input_shape);
    size_t m = (size_t)lipc_shape_numel(g->output->shape);
    double *pd = malloc(sizeof(double) * (np + 1));
    float *pf = malloc(sizeof(float) * (np + 1));
    lipc_ref_init_params(g, seed, pd);
    /* init rules leave biases at zero and residual branches tiny: perturb
     * every parameter so that each term of each op matters */
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0x11f);
    for (size_t i = 0; i < np; i++) {
        pf[i] = (float)(pd[i] + 0.1 * lipc_rng_normal(&r));
        pd[i] = pf[i];
    }
    const int batches[] = {1, 5};
    for (int k = 0; k < 2; k++) {
        int n = batches[k];
        double *xd = malloc(sizeof(double) * in * (size_t)n);
        float *xf = malloc(sizeof(float) * in * (size_t)n);
        double *want = malloc(sizeof(double) * m * (size_t)n);
        float *got = malloc(sizeof(float) * m * (size_t)n);
        test_fill_uniform(&r, xd, in * (size_t)n, -1.0, 1.0);
        for (size_t i = 0; i < in * (size_t)n; i++)
            xd[i] = xf[i] = (float)xd[i];
        cr_assert_eq(lipc_ref_forward(g, pd, n, xd, want, NULL), LIPC_OK);
        cr_assert_eq(lipc_llvm_forward_run(f, pf, n, xf, got), LIPC_OK);
        char label[96];
        snprintf(label, sizeof label, "%s, batch %d (seed %llu)", name, n,
                 (unsigned long long)seed);
        cr_expect(test_allclose_f32(label, got, want, m * (size_t)n, ATOL, RTOL), "%s", label);
        free(xd);
        free(xf);
        free(want);
        free(got);
    }
    free(pd);
    free(pf);
    lipc_llvm_fn_free(f);
    lipc_program_free(p);
}

static void check_text(const char *name, const char *text)
{
    lipc_graph *g = load(name, text, NULL, NULL, 0);
    check_model(name, g);
    lipc_graph_free(g);
}

Test(llvm, residual_zoo) { check_text("zoo", zoo); }
Test(llvm, strides_padding_pooling) { check_text("edges", edges); }
Test(llvm, one_by_one_maps) { check_text("tiny", tiny); }
Test(llvm, dense_only) { check_text("mlp", mlp); }

Test(llvm, liresnet_fmnist_small)
{
    const lipc_override sets[] = {{"width", "8"}, {"depth", "2"}, {"dense", "16"}};
    lipc_graph *g = load("liresnet-fmnist", NULL, LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml",
                         sets, 3);
    check_model("liresnet-fmnist", g);
    lipc_graph_free(g);
}

/* An op without an emitter is reported, never compiled into something else.
 * Every op has an emitter today, so a step is made to hold the input op. */
Test(llvm, unsupported_op_is_reported)
{
    lipc_graph *g = load("mlp", mlp, NULL, NULL, 0);
    lipc_program *p = forward_program(g);
    lipc_node *victim = p->steps[0].node;
    lipc_op saved = victim->op;
    victim->op = LIPC_OP_INPUT;
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_llvm_fn *f = NULL;
    cr_expect_eq(lipc_llvm_forward_compile(p, &d, &f), LIPC_ERR_UNSUPPORTED);
    cr_expect_null(f);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_expect(strstr(lipc_buf_str(&b), "unsupported op 'input'"), "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_diags_free(&d);
    victim->op = saved;
    lipc_program_free(p);
    lipc_graph_free(g);
}

/* `lipc dump --emit=llvm` prints the unoptimised module. */
Test(llvm, ir_text)
{
    lipc_graph *g = load("tiny", tiny, NULL, NULL, 0);
    lipc_program *p = forward_program(g);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_buf b;
    lipc_buf_init(&b);
    cr_assert_eq(lipc_llvm_forward_ir(p, &d, &b), LIPC_OK);
    const char *s = lipc_buf_str(&b);
    cr_expect(strstr(s, "define void @lipc_forward(ptr noalias %params"), "%s", s);
    cr_expect(strstr(s, "fadd contract float"), "%s", s);
    lipc_buf_free(&b);
    lipc_diags_free(&d);
    lipc_program_free(p);
    lipc_graph_free(g);
}
