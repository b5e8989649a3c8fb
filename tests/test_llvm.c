/* tests/test_llvm.c: the cpu target (backend/llvm) against the reference.
 *
 * Each model is compiled from YAML through the pipeline, JIT-compiled
 * (backend/llvm) and run in float; the reference runs in double on the same
 * float parameters and inputs. The models and the forward and training
 * checks (with their tolerances) are in backend_check.c, shared with the
 * cuda target's tests; the cpu target adds the fast stride-1 kernels and the
 * general loop nests, register blocks of 4 examples with a tail, and
 * certified inference in double.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "backend/backend.h"
#include "backend_check.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "testutil.h"

static lipc_compiled *compile_cpu(lipc_graph *g, int threads)
{
    return bc_compile("cpu", g, threads);
}

static lipc_status cpu_gradients(void *backend, lipc_train_state *st, int n, const float *x,
                                 const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                                 double *grads)
{
    return lipc_cpu_gradients(backend, st, n, x, y, h, out, grads);
}

/* Certified inference: the float logits' error bounds cover their distance
 * to the exact network. The exact logits are within the reference's own
 * (double) bounds of its logits, so |cpu - ref| <= e_cpu + e_ref must hold
 * everywhere; and the bounds must be small enough to be useful. */
static void check_bounded(const char *name, lipc_graph *g)
{
    lipc_compiled *cpu = compile_cpu(g, 2), *ref = bc_compile_ref(g);
    uint64_t seed = test_seed();
    size_t m = (size_t)lipc_shape_numel(g->output->shape);
    float *pf = bc_random_params(g, seed, 0.1);
    int n = 6;
    float *x = bc_random_inputs(g, seed, n);
    size_t len = m * (size_t)n;
    double *l1 = malloc(sizeof(double) * len), *e1 = malloc(sizeof(double) * len);
    double *l2 = malloc(sizeof(double) * len), *e2 = malloc(sizeof(double) * len);
    cr_assert_eq(cpu->ops.predict_bounded(cpu->ops.ctx, pf, n, x, l1, e1), LIPC_OK);
    cr_assert_eq(lipc_ref_predict_bounded(ref->forward, pf, n, x, l2, e2), LIPC_OK);
    for (size_t i = 0; i < len; i++) {
        cr_expect_leq(fabs(l1[i] - l2[i]), e1[i] + e2[i], "%s logit %zu: %.9g vs %.9g, bounds %g, %g",
                      name, i, l1[i], l2[i], e1[i], e2[i]);
        cr_expect_gt(e1[i], 0.0, "%s logit %zu: a zero error bound", name, i);
        cr_expect_leq(e1[i], 1e-3 * (1.0 + fabs(l2[i])), "%s logit %zu: bound %g is useless",
                      name, i, e1[i]);
    }
    /* The one-pass path, through the sound factor bounds: the same check,
     * and bounds far below what certification can notice (1e-6 relative). */
    const lipc_model_desc *md = &cpu->desc;
    double *sigma = calloc((size_t)md->n_factors + 1, sizeof *sigma), k;
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_model_sound_sigma(md, pf, sigma, &k, &d), LIPC_OK, "%s", name);
    lipc_diags_free(&d);
    cr_assert_eq(cpu->ops.predict_l2(cpu->ops.ctx, pf, sigma, n, x, l1, e1), LIPC_OK, "%s", name);
    for (size_t i = 0; i < len; i++) {
        cr_expect_leq(fabs(l1[i] - l2[i]), e1[i] + e2[i], "%s l2 logit %zu: %.17g vs %.17g", name,
                      i, l1[i], l2[i]);
        cr_expect_gt(e1[i], 0.0, "%s l2 logit %zu: a zero error bound", name, i);
        cr_expect_leq(e1[i], 1e-6 * (1.0 + fabs(l2[i])), "%s l2 logit %zu: bound %g", name, i,
                      e1[i]);
    }
    /* a factor bound that is not finite makes every bound infinite: nothing
     * certifies on a bound that does not hold */
    sigma[0] = INFINITY;
    cr_assert_eq(cpu->ops.predict_l2(cpu->ops.ctx, pf, sigma, n, x, l1, e1), LIPC_OK);
    cr_expect(isinf(e1[0]), "%s: an infinite factor gave the bound %g", name, e1[0]);
    free(sigma);
    free(l1);
    free(e1);
    free(l2);
    free(e2);
    free(x);
    free(pf);
    lipc_compiled_free(cpu);
    lipc_compiled_free(ref);
}

static void check_text(const char *name, const char *text)
{
    lipc_graph *g = bc_load(name, text, NULL, NULL, 0);
    check_bounded(name, g);
    bc_check_forward("cpu", name, g, 1);
    bc_check_forward("cpu", name, g, 2);
    bc_check_training("cpu", cpu_gradients, name, g, LIPC_LOSS_EMMA, 5);
    bc_check_training("cpu", cpu_gradients, name, g, LIPC_LOSS_TRADES, 1);
    lipc_graph_free(g);
}

Test(llvm, residual_zoo) { check_text("zoo", bc_zoo); }
Test(llvm, strides_padding_pooling) { check_text("edges", bc_edges); }
Test(llvm, one_by_one_maps) { check_text("tiny", bc_tiny); }
Test(llvm, wide_maps_partial_vectors) { check_text("wide", bc_wide); }
Test(llvm, dense_only) { check_text("mlp", bc_mlp); }

/* Wide channel blocks, and a batch larger than one chunk of the weight gradient's
 * transposed examples (11 > 8). */
Test(llvm, many_channels)
{
    lipc_graph *g = bc_load("deep", bc_deep, NULL, NULL, 0);
    bc_check_forward("cpu", "deep", g, 2);
    bc_check_training("cpu", cpu_gradients, "deep", g, LIPC_LOSS_EMMA, 11);
    lipc_graph_free(g);
}

Test(llvm, liresnet_fmnist_small)
{
    const lipc_override sets[] = {{"width", "8"}, {"depth", "2"}, {"dense", "16"}};
    lipc_graph *g = bc_load("liresnet-fmnist", NULL, LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml",
                         sets, 3);
    bc_check_forward("cpu", "liresnet-fmnist", g, 2);
    check_bounded("liresnet-fmnist", g);
    bc_check_training("cpu", cpu_gradients, "liresnet-fmnist", g, LIPC_LOSS_EMMA, 9);
    lipc_graph_free(g);
}

/* Kernels trained as V = s (a * U) (train: scaled_residuals): a and U start
 * at 1 and V / s, and three steps of the cpu target follow the reference's,
 * with V = fl(s a U) after each on both. */
Test(llvm, scaled_kernels_train_as_the_reference)
{
    const lipc_override sets[] = {{"width", "8"}, {"depth", "2"}, {"dense", "16"}};
    lipc_graph *g = bc_load("liresnet-fmnist", NULL, LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml",
                         sets, 3);
    g->train.scaled_residuals = true;
    lipc_compiled *cpu = compile_cpu(g, 2), *ref = bc_compile_ref(g);
    const lipc_model_desc *m = &cpu->desc;
    size_t np = g->n_param_elems, nt = m->n_train_elems;
    cr_assert_eq(m->n_scaled, 2);
    cr_assert_eq(nt, np + 2 * (8 + 8 * 8 * 9));
    cr_assert_eq(m->n_state_params, m->n_params + 4);
    cr_expect_str_eq(m->params[m->n_params].name, "scaled.blocks.0.residual_0.conv2d_0.weight.a");
    lipc_train_state s_cpu, s_ref;
    cr_assert_eq(lipc_train_state_alloc(m, &s_cpu), LIPC_OK);
    cr_assert_eq(lipc_train_state_alloc(&ref->desc, &s_ref), LIPC_OK);
    cr_assert_eq(s_cpu.n_train, nt);
    cr_assert_eq(lipc_init_params(m, test_seed(), s_cpu.params), LIPC_OK);
    for (int i = 0; i < m->n_scaled; i++) {
        const lipc_scaled *k = &m->scaled[i];
        cr_expect_eq(k->s, 1.0 / sqrt(2.0));
        cr_expect_eq(s_cpu.params[k->gain], 1.0f);
        cr_expect_eq(s_cpu.params[k->offset + 7],
                     (float)(k->s * (double)s_cpu.params[k->base + 7]));
    }
    memcpy(s_ref.params, s_cpu.params, sizeof(float) * nt);
    int n = 6;
    float *x = bc_random_inputs(g, test_seed(), n);
    int32_t y[6] = {0, 1, 2, 3, 4, 5};
    lipc_hyper h = bc_hyper(LIPC_LOSS_EMMA);
    h.lr = 1e-2; /* a and U move well past float noise */
    lipc_bound_report *rep = malloc(sizeof *rep * (size_t)(m->n_factors + 1));
    cr_assert_eq(lipc_ref_lipschitz(ref->train, s_ref.params, s_ref.vec, 3000, 1e-10, rep),
                 LIPC_OK);
    memcpy(s_cpu.vec, s_ref.vec, sizeof(float) * m->n_vec_elems);
    for (int step = 0; step < 3; step++) {
        lipc_step_stats a, b;
        cr_assert_eq(cpu->ops.train_step(cpu->ops.ctx, &s_cpu, n, x, y, &h, &a), LIPC_OK);
        cr_assert_eq(ref->ops.train_step(ref->ops.ctx, &s_ref, n, x, y, &h, &b), LIPC_OK);
        cr_expect(fabs(a.grad_norm - b.grad_norm) <= 1e-4 * b.grad_norm,
                  "step %d: gradient norm %.8g vs %.8g", step, a.grad_norm, b.grad_norm);
    }
    double worst = 0.0, moved = 0.0;
    for (size_t i = 0; i < nt; i++)
        worst = fmax(worst, fabs((double)s_cpu.params[i] - s_ref.params[i]));
    cr_expect_leq(worst, 0.05 * h.lr, "the training vectors differ by %g", worst);
    for (int i = 0; i < m->n_scaled; i++) {
        const lipc_scaled *k = &m->scaled[i];
        size_t per_row = k->numel / (size_t)k->rows;
        for (int o = 0; o < k->rows; o++)
            moved = fmax(moved, fabs(s_ref.params[k->gain + (size_t)o] - 1.0));
        for (size_t j = 0; j < k->numel; j++) {
            float a = s_cpu.params[k->gain + j / per_row];
            cr_expect_eq(s_cpu.params[k->offset + j],
                         (float)(k->s * (double)a * (double)s_cpu.params[k->base + j]));
        }
    }
    cr_expect_gt(moved, 0.5 * h.lr, "the gains did not move (%g)", moved);
    free(rep);
    free(x);
    lipc_train_state_free(&s_cpu);
    lipc_train_state_free(&s_ref);
    lipc_compiled_free(cpu);
    lipc_compiled_free(ref);
    lipc_graph_free(g);
}

/* Kernels split examples or output channels between threads and sum in a
 * fixed order: a training step gives the same bits on 1 and 3 threads. */
Test(llvm, same_bits_for_any_thread_count)
{
    lipc_graph *g = bc_load("wide", bc_wide, NULL, NULL, 0);
    lipc_compiled *c1 = compile_cpu(g, 1), *c3 = compile_cpu(g, 3);
    size_t np = g->n_param_elems;
    lipc_train_state s1, s3;
    cr_assert_eq(lipc_train_state_alloc(&c1->desc, &s1), LIPC_OK);
    cr_assert_eq(lipc_train_state_alloc(&c3->desc, &s3), LIPC_OK);
    float *pf = bc_random_params(g, test_seed(), 0.05);
    memcpy(s1.params, pf, sizeof(float) * np);
    memcpy(s3.params, pf, sizeof(float) * np);
    int n = 7;
    float *x = bc_random_inputs(g, test_seed(), n);
    int32_t y[7] = {0, 1, 2, 3, 0, 1, 2};
    lipc_hyper h = bc_hyper(LIPC_LOSS_EMMA);
    for (int step = 0; step < 3; step++) {
        lipc_step_stats a, b;
        cr_assert_eq(c1->ops.train_step(c1->ops.ctx, &s1, n, x, y, &h, &a), LIPC_OK);
        cr_assert_eq(c3->ops.train_step(c3->ops.ctx, &s3, n, x, y, &h, &b), LIPC_OK);
        cr_expect_eq(a.loss, b.loss, "step %d: loss %.9g vs %.9g", step, a.loss, b.loss);
    }
    cr_expect(memcmp(s1.params, s3.params, sizeof(float) * np) == 0);
    cr_expect(memcmp(s1.opt_v, s3.opt_v, sizeof(float) * np) == 0);
    cr_expect(memcmp(s1.vec, s3.vec, sizeof(float) * c1->desc.n_vec_elems) == 0);
    free(pf);
    free(x);
    lipc_train_state_free(&s1);
    lipc_train_state_free(&s3);
    lipc_compiled_free(c1);
    lipc_compiled_free(c3);
    lipc_graph_free(g);
}

/* Power iteration to convergence agrees with the reference's. */
Test(llvm, lipschitz_matches_reference)
{
    lipc_graph *g = bc_load("edges", bc_edges, NULL, NULL, 0);
    bc_check_lipschitz("cpu", g, 2);
    lipc_graph_free(g);
}

/* An op without an emitter is reported, never compiled into something else.
 * Every op has an emitter today, so a step is made to hold the input op. */
Test(llvm, unsupported_op_is_reported)
{
    lipc_graph *g = bc_load("mlp", bc_mlp, NULL, NULL, 0);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_program *p = lipc_build_program(g, LIPC_ENTRY_TRAIN, &d);
    cr_assert(p);
    lipc_node *victim = p->steps[0].node;
    lipc_op saved = victim->op;
    victim->op = LIPC_OP_INPUT;
    lipc_buf b;
    lipc_buf_init(&b);
    cr_expect_eq(lipc_llvm_module_text(p, false, false, &d, &b), LIPC_ERR_UNSUPPORTED);
    lipc_buf_free(&b);
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_expect(strstr(lipc_buf_str(&b), "unsupported op 'input'"), "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_diags_free(&d);
    victim->op = saved;
    lipc_program_free(p);
    lipc_graph_free(g);
}

/* `lipc dump --emit=llvm` prints the unoptimised kernels; --emit=asm the
 * machine code, portable or not. */
Test(llvm, ir_and_assembly_text)
{
    lipc_graph *g = bc_load("wide", bc_wide, NULL, NULL, 0);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_program *p = lipc_build_program(g, LIPC_ENTRY_TRAIN, &d);
    cr_assert(p);
    lipc_buf b;
    lipc_buf_init(&b);
    cr_assert_eq(lipc_llvm_module_text(p, false, false, &d, &b), LIPC_OK);
    const char *s = lipc_buf_str(&b);
    cr_expect(strstr(s, "define void @forward.dense_"), "%s", s);
    cr_expect(strstr(s, "@wgrad."), "no weight-gradient kernel");
    cr_expect(strstr(s, "@backward."), "no backward kernel");
    cr_expect(strstr(s, "llvm.fmuladd"), "no fused multiply-add");
    lipc_buf_free(&b);
    lipc_buf_init(&b);
    cr_assert_eq(lipc_llvm_module_text(p, true, true, &d, &b), LIPC_OK);
    s = lipc_buf_str(&b);
    cr_expect(strstr(s, "vfmadd"), "portable assembly has no FMA");
    cr_expect(!strstr(s, "zmm"), "portable assembly uses AVX-512 registers");
    lipc_buf_free(&b);
    lipc_diags_free(&d);
    lipc_program_free(p);
    lipc_graph_free(g);
}

/* lipc_certify_dataset through predict_l2 and refinement: the same counts as
 * the elementwise path at radii placed among the points' own; factor bounds
 * made 1e9 times looser (still upper bounds) send points to refinement, and
 * the counts stay the same. */
Test(llvm, one_pass_certification_decides_as_the_elementwise_path)
{
    const lipc_override sets[] = {{"width", "8"}, {"depth", "2"}, {"dense", "16"}};
    lipc_graph *g = bc_load("liresnet-fmnist", NULL,
                            LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml", sets, 3);
    lipc_compiled *cpu = compile_cpu(g, 2);
    const lipc_model_desc *md = &cpu->desc;
    uint64_t seed = test_seed();
    float *pf = bc_random_params(g, seed, 0.1);
    enum { N = 40 };
    lipc_dataset ds = {.n = N, .c = 1, .h = 28, .w = 28, .classes = 10};
    ds.x = bc_random_inputs(g, seed + 1, N);
    ds.y = calloc(N, 1);
    double *sigma = calloc((size_t)md->n_factors + 1, sizeof *sigma), k;
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_model_sound_sigma(md, pf, sigma, &k, &d), LIPC_OK);
    lipc_diags_free(&d);
    /* labels: the predictions */
    double logits[N * 10];
    cr_assert_eq(cpu->ops.predict(cpu->ops.ctx, pf, N, ds.x, logits), LIPC_OK);
    for (int b = 0; b < N; b++)
        for (int j = 1; j < 10; j++)
            if (logits[b * 10 + j] > logits[b * 10 + ds.y[b]])
                ds.y[b] = (uint8_t)j;
    /* radii between the quartiles of the points' own (a radius ON a point's
     * is decided by which bound is tighter there: both are sound) */
    double rad[N], eps[3];
    lipc_cert_summary s0;
    cr_assert_eq(lipc_cert_summary_init(&s0, 0, NULL, 0.0), LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(md, &cpu->ops, pf, k, NULL, &ds, 16, &s0, rad), LIPC_OK);
    double sorted[N];
    memcpy(sorted, rad, sizeof rad);
    for (int i = 1; i < N; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    for (int q = 0; q < 3; q++)
        eps[q] = 0.5 * (sorted[(q + 1) * N / 4 - 1] + sorted[(q + 1) * N / 4]);
    lipc_cert_summary se, sf, sl;
    cr_assert_eq(lipc_cert_summary_init(&se, 3, eps, 0.0), LIPC_OK);
    cr_assert_eq(lipc_cert_summary_init(&sf, 3, eps, 0.0), LIPC_OK);
    cr_assert_eq(lipc_cert_summary_init(&sl, 3, eps, 0.0), LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(md, &cpu->ops, pf, k, NULL, &ds, 16, &se, NULL), LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(md, &cpu->ops, pf, k, sigma, &ds, 16, &sf, NULL), LIPC_OK);
    for (int f = 0; f < md->n_factors; f++)
        sigma[f] *= 1e9;
    cr_assert_eq(lipc_certify_dataset(md, &cpu->ops, pf, k, sigma, &ds, 16, &sl, NULL), LIPC_OK);
    cr_expect_eq(se.n_refined, 0);
    cr_expect(sf.n_refined < N, "refined %ld of %d with tight bounds", sf.n_refined, N);
    cr_expect_gt(sl.n_refined, sf.n_refined, "loose bounds refined %ld", sl.n_refined);
    const lipc_cert_summary *all[2] = {&sf, &sl};
    for (int a = 0; a < 2; a++) {
        cr_expect(all[a]->rounding_accounted);
        cr_expect_eq(all[a]->n_correct, se.n_correct);
        for (int q = 0; q < 3; q++) {
            cr_expect_eq(all[a]->n_certified[q], se.n_certified[q], "eps %g", eps[q]);
            cr_expect_eq(all[a]->n_vra[q], se.n_vra[q], "eps %g", eps[q]);
        }
    }
    free(sigma);
    free(ds.x);
    free(ds.y);
    free(pf);
    lipc_compiled_free(cpu);
    lipc_graph_free(g);
}
