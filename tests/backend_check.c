/* tests/backend_check.c: a fast backend against the reference, shared by
 * the tests of the cpu target (test_llvm.c) and of the cuda target
 * (test_cuda.c): the models that cover every op, and the checks of the
 * forward pass and of whole training steps.
 *
 * Tolerances. Forward (logits): atol 1e-4, rtol 1e-4. A fast backend rounds
 * every value to float and sums in another order (FMA contraction, vector
 * lanes, GPU threads), so each output carries a relative error of a few float
 * ulps times the depth; these models' logits are O(1), and 1e-4 leaves two
 * orders of magnitude of margin while any wrong index or missed tap shows up
 * at O(0.01). Gradients of a training step: the whole parameter gradient
 * within 1e-3 of the reference's in relative 2-norm, and each element within
 * 1e-4 of the largest (float rounding through forward, loss and backward,
 * including power iteration's vectors, which are float there and double in
 * the reference).
 *
 * The models cover every op: shift, pad (uneven), conv2d (strides, explicit /
 * same / valid padding, even and rectangular kernels, 1x1 maps, a kernel
 * larger than its map, no bias, folded identity), dense (bias or not, folded,
 * normalised head), minmax (both pairings), relu, flatten, avgpool
 * (overlapping windows) and add (kept residuals); odd channel counts;
 * batches of 1, 5 and 9; widths that leave partial vectors.
 */
#include "backend_check.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "passes/passes.h"
#include "testutil.h"

#define ATOL 1e-4
#define RTOL 1e-4

/* Residual blocks: folded convs (3x3, 1x5 without bias), kept ones (add),
 * a folded dense, the normalised head (from tests/test_fold.c's zoo). */
const char bc_zoo[] =
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
const char bc_edges[] =
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
const char bc_tiny[] =
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
/* A LiResNet-like model whose maps are wider than one vector (20 columns:
 * a full tile and a partial one) and whose channels leave a partial block. */
const char bc_wide[] =
    "input: {shape: [3, 20, 20]}\n"
    "classes: 4\n"
    "layers:\n"
    "  - conv2d: {out: 10, kernel: 3}\n"
    "  - minmax\n"
    "  - repeat: 2\n"
    "    layers:\n"
    "      - residual:\n"
    "          - conv2d: {out: 10, kernel: 3}\n"
    "      - minmax\n"
    "  - conv2d: {out: 6, kernel: 5, stride: 5, padding: valid}\n"
    "  - flatten\n"
    "  - dense: {out: 22}\n"
    "  - minmax\n"
    "  - dense: {out: 19}\n"
    "  - relu\n"
    "  - dense: {out: classes, normalize: true}\n";

/* Channel counts past one register tile of the weight gradients' channel
 * blocks (68 = 64 + 4 input channels; 68 = 2 x 32 + 4 output channels of a
 * strided stem) and an odd one (5), on a map that is not a whole number of
 * vectors (3 x 7); the 7 x 7 conv has taps that read only padding and more
 * sums than the weight gradient keeps over a batch. */
const char bc_deep[] =
    "input: {shape: [3, 6, 13]}\n"
    "classes: 3\n"
    "layers:\n"
    "  - conv2d: {out: 68, kernel: 3, stride: 2}\n"
    "  - residual:\n"
    "      - conv2d: {out: 68, kernel: 3}\n"
    "  - minmax\n"
    "  - conv2d: {out: 44, kernel: 7}\n"
    "  - conv2d: {out: 5, kernel: [3, 2]}\n"
    "  - flatten\n"
    "  - dense: {out: classes, normalize: true}\n";

const char bc_mlp[] =
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

lipc_graph *bc_load(const char *name, const char *text, const char *path,
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

lipc_compiled *bc_compile(const char *target, lipc_graph *g, int threads)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_compiled *c = NULL;
    lipc_cpu_options o = {.threads = threads};
    lipc_status st = lipc_compile_target(g, target, &o, &d, &c);
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "the %s target failed", target);
    lipc_diags_free(&d);
    return c;
}

lipc_compiled *bc_compile_ref(lipc_graph *g)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_compiled *c = NULL;
    cr_assert_eq(lipc_compile(g, "ref", &d, &c), LIPC_OK);
    lipc_diags_free(&d);
    return c;
}

/* Random parameters: the init rules leave biases at zero and residual
 * branches tiny, so every parameter is perturbed and each term matters. */
float *bc_random_params(const lipc_graph *g, uint64_t seed, double noise)
{
    size_t np = g->n_param_elems;
    double *pd = malloc(sizeof(double) * (np + 1));
    float *pf = malloc(sizeof(float) * (np + 1));
    lipc_ref_init_params(g, seed, pd);
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0x11f);
    for (size_t i = 0; i < np; i++)
        pf[i] = (float)(pd[i] + noise * lipc_rng_normal(&r));
    free(pd);
    return pf;
}

float *bc_random_inputs(const lipc_graph *g, uint64_t seed, int n)
{
    size_t in = (size_t)lipc_shape_numel(g->input_shape) * (size_t)n;
    float *x = malloc(sizeof(float) * in);
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0x5eed);
    for (size_t i = 0; i < in; i++)
        x[i] = (float)lipc_rng_uniform(&r);
    return x;
}

/* Compiled logits against lipc_ref_forward for batches 1, 5 and 9. */
void bc_check_forward(const char *target, const char *name, lipc_graph *g, int threads)
{
    lipc_compiled *c = bc_compile(target, g, threads);
    uint64_t seed = test_seed();
    size_t np = g->n_param_elems, m = (size_t)lipc_shape_numel(g->output->shape);
    size_t in = (size_t)lipc_shape_numel(g->input_shape);
    float *pf = bc_random_params(g, seed, 0.1);
    double *pd = malloc(sizeof(double) * (np + 1));
    for (size_t i = 0; i < np; i++)
        pd[i] = pf[i];
    const int batches[] = {1, 5, 9};
    for (int k = 0; k < 3; k++) {
        int n = batches[k];
        float *xf = bc_random_inputs(g, seed + (uint64_t)k, n);
        double *xd = malloc(sizeof(double) * in * (size_t)n);
        for (size_t i = 0; i < in * (size_t)n; i++)
            xd[i] = 2.0 * xf[i] - 1.0;
        for (size_t i = 0; i < in * (size_t)n; i++)
            xf[i] = (float)xd[i];
        double *want = malloc(sizeof(double) * m * (size_t)n);
        double *got = malloc(sizeof(double) * m * (size_t)n);
        cr_assert_eq(lipc_ref_forward(g, pd, n, xd, want, NULL), LIPC_OK);
        cr_assert_eq(c->ops.predict(c->ops.ctx, pf, n, xf, got), LIPC_OK);
        char label[128];
        snprintf(label, sizeof label, "%s on %s, batch %d, %d threads (seed %llu)", name, target, n, threads,
                 (unsigned long long)seed);
        cr_expect(test_allclose(label, got, want, m * (size_t)n, ATOL, RTOL), "%s", label);
        free(xd);
        free(xf);
        free(want);
        free(got);
    }
    free(pd);
    free(pf);
    lipc_compiled_free(c);
}

lipc_hyper bc_hyper(lipc_loss loss)
{
    return (lipc_hyper){.loss = loss, .optimizer = LIPC_OPTIM_ADAMW, .lr = 1e-3, .eps = 0.3,
                        .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8, .momentum = 0.9,
                        .clip = 3.0, .trades_lambda = 1.0, .power_iters = 30};
}

/* The whole parameter gradient of a training step (forward, power
 * iteration, K_sub, loss, backward, sigma gradients) against the reference's,
 * from the same state; then one whole step (clipping and AdamW) each. */
void bc_check_training(const char *target, bc_gradients_fn gradients, const char *name,
                       lipc_graph *g, lipc_loss loss, int n)
{
    lipc_compiled *cpu = bc_compile(target, g, 2), *ref = bc_compile_ref(g);
    uint64_t seed = test_seed();
    size_t np = g->n_param_elems;
    lipc_train_state s_cpu, s_ref;
    cr_assert_eq(lipc_train_state_alloc(&cpu->desc, &s_cpu), LIPC_OK);
    cr_assert_eq(lipc_train_state_alloc(&ref->desc, &s_ref), LIPC_OK);
    float *pf = bc_random_params(g, seed, 0.05);
    memcpy(s_cpu.params, pf, sizeof(float) * np);
    memcpy(s_ref.params, pf, sizeof(float) * np);
    float *x = bc_random_inputs(g, seed, n);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        y[i] = (int32_t)((unsigned)i * 7u % (unsigned)g->classes);
    lipc_hyper h = bc_hyper(loss);
    /* converge the power-iteration vectors first (as training does over
     * steps), so that both backends start from the same fixed point */
    lipc_bound_report *rep = malloc(sizeof *rep * (size_t)(cpu->desc.n_factors + 1));
    cr_assert_eq(lipc_ref_lipschitz(ref->train, pf, s_ref.vec, 3000, 1e-10, rep), LIPC_OK);
    memcpy(s_cpu.vec, s_ref.vec, sizeof(float) * cpu->desc.n_vec_elems);

    double *g_cpu = malloc(sizeof(double) * np), *g_ref = malloc(sizeof(double) * np);
    lipc_step_stats a, b;
    cr_assert_eq(gradients(cpu->backend, &s_cpu, n, x, y, &h, &a, g_cpu), LIPC_OK);
    cr_assert_eq(lipc_ref_gradients(ref->train, &s_ref, n, x, y, &h, &b, g_ref), LIPC_OK);
    char label[128];
    snprintf(label, sizeof label, "%s on %s, loss %d, batch %d (seed %llu)", name, target, (int)loss, n,
             (unsigned long long)seed);
    cr_expect(fabs(a.loss - b.loss) <= 1e-4 * (1 + fabs(b.loss)), "%s: loss %.8g vs %.8g",
              label, a.loss, b.loss);
    cr_expect(fabs(a.k_sub - b.k_sub) <= 1e-4 * b.k_sub, "%s: K_sub %.8g vs %.8g", label,
              a.k_sub, b.k_sub);
    double diff = 0.0, norm = 0.0, big = 0.0;
    for (size_t i = 0; i < np; i++) {
        diff += (g_cpu[i] - g_ref[i]) * (g_cpu[i] - g_ref[i]);
        norm += g_ref[i] * g_ref[i];
        big = fmax(big, fabs(g_ref[i]));
    }
    cr_expect_gt(norm, 0.0, "%s: zero gradient", label);
    cr_expect_leq(sqrt(diff), 1e-3 * sqrt(norm), "%s: gradient off by %g of its norm", label,
                  sqrt(diff / norm));
    for (size_t i = 0; i < np; i++)
        if (fabs(g_cpu[i] - g_ref[i]) > 1e-4 * big) {
            cr_expect(false, "%s: d/dparam[%zu] = %.8g, reference %.8g", label, i, g_cpu[i],
                      g_ref[i]);
            break;
        }

    /* one whole step each: the parameters stay within float noise of AdamW's
     * lr-sized move */
    cr_assert_eq(cpu->ops.train_step(cpu->ops.ctx, &s_cpu, n, x, y, &h, &a), LIPC_OK);
    cr_assert_eq(ref->ops.train_step(ref->ops.ctx, &s_ref, n, x, y, &h, &b), LIPC_OK);
    cr_expect_eq(s_cpu.step, 1);
    if (cpu->ops.sync_state) /* a device target: bring the state back */
        cr_assert_eq(cpu->ops.sync_state(cpu->ops.ctx, &s_cpu), LIPC_OK);
    double worst = 0.0;
    for (size_t i = 0; i < np; i++)
        worst = fmax(worst, fabs((double)s_cpu.params[i] - s_ref.params[i]));
    cr_expect_leq(worst, 0.2 * h.lr, "%s: parameters differ by %g after a step", label, worst);

    free(g_cpu);
    free(g_ref);
    free(rep);
    free(x);
    free(y);
    free(pf);
    lipc_train_state_free(&s_cpu);
    lipc_train_state_free(&s_ref);
    lipc_compiled_free(cpu);
    lipc_compiled_free(ref);
}


void bc_check_lipschitz(const char *target, lipc_graph *g, int threads)
{
    lipc_compiled *fast = bc_compile(target, g, threads), *ref = bc_compile_ref(g);
    float *pf = bc_random_params(g, test_seed(), 0.1);
    int nf = fast->desc.n_factors;
    size_t nv = fast->desc.n_vec_elems;
    float *v1 = calloc(nv + 1, sizeof(float)), *v2 = calloc(nv + 1, sizeof(float));
    lipc_bound_report *r1 = malloc(sizeof *r1 * (size_t)(nf + 1));
    lipc_bound_report *r2 = malloc(sizeof *r2 * (size_t)(nf + 1));
    cr_assert_eq(fast->ops.lipschitz(fast->ops.ctx, pf, v1, 3000, 1e-9, r1), LIPC_OK);
    cr_assert_eq(ref->ops.lipschitz(ref->ops.ctx, pf, v2, 3000, 1e-9, r2), LIPC_OK);
    for (int b = 0; b <= nf; b++)
        cr_expect(fabs(r1[b].value - r2[b].value) <= 1e-4 * r2[b].value,
                  "%s, factor %d: %.8g vs %.8g", target, b, r1[b].value, r2[b].value);
    free(v1);
    free(v2);
    free(r1);
    free(r2);
    free(pf);
    lipc_compiled_free(fast);
    lipc_compiled_free(ref);
}
