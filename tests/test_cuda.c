/* tests/test_cuda.c: the cuda target without a GPU.
 *
 * The kernels are emitted as CUDA C (backend/cuda/emit.c). Here they are:
 *  - compiled by NVRTC for the GPUs lipc targets (when the build has the
 *    toolkit; NVRTC needs no GPU), so emission bugs show up on any machine;
 *  - run by the cuda emulator (backend/cuda/emu.c: the same source compiled
 *    for the host, three emulated threads walking each grid-stride loop),
 *    under the cuda driver (backend/cuda/exec.c), against the reference:
 *    logits, the gradient of whole training steps, steps themselves, power
 *    iteration, and the training state kept on the device between steps.
 * The tolerances are backend_check.c's. What only a GPU can show (the launch
 * on real hardware, the CUDA runtime's copies) is in scripts/cuda-device.sh.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/gpu.h"
#include "backend_check.h"
#include "passes/passes.h"
#include "testutil.h"

#define EMU "cuda-emulator"

static lipc_status gpu_gradients(void *backend, lipc_train_state *st, int n, const float *x,
                                 const int32_t *y, const lipc_hyper *h, lipc_step_stats *out,
                                 double *grads)
{
    return lipc_gpu_gradients(backend, st, n, x, y, h, out, grads);
}

/* Convolutions through the emitted kernels, or through the device's
 * library (the emulator's stands in for cuDNN: the driver's library path,
 * with folded identities, biases and accumulation, is what is tested). */
static void emitted(void) { setenv("LIPC_CUDA_CONV", "emitted", 1); }
static void library(void) { setenv("LIPC_CUDA_CONV", "library", 1); }

static void check_text(const char *name, const char *text)
{
    lipc_graph *g = bc_load(name, text, NULL, NULL, 0);
    bc_check_forward(EMU, name, g, 1);
    bc_check_training(EMU, gpu_gradients, name, g, LIPC_LOSS_EMMA, 5);
    bc_check_training(EMU, gpu_gradients, name, g, LIPC_LOSS_TRADES, 1);
    lipc_graph_free(g);
}

Test(cuda, residual_zoo, .init = emitted) { check_text("zoo", bc_zoo); }
Test(cuda, strides_padding_pooling, .init = emitted) { check_text("edges", bc_edges); }
Test(cuda, one_by_one_maps, .init = emitted) { check_text("tiny", bc_tiny); }
Test(cuda, wide_maps, .init = emitted) { check_text("wide", bc_wide); }
Test(cuda, dense_only, .init = emitted) { check_text("mlp", bc_mlp); }
Test(cuda, library_convs_zoo, .init = library) { check_text("zoo", bc_zoo); }
Test(cuda, library_convs_edges, .init = library) { check_text("edges", bc_edges); }
Test(cuda, library_convs_tiny, .init = library) { check_text("tiny", bc_tiny); }

Test(cuda, liresnet_fmnist_small, .init = library)
{
    const lipc_override sets[] = {{"width", "8"}, {"depth", "2"}, {"dense", "16"}};
    lipc_graph *g = bc_load("liresnet-fmnist", NULL,
                            LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml", sets, 3);
    bc_check_forward(EMU, "liresnet-fmnist", g, 1);
    bc_check_training(EMU, gpu_gradients, "liresnet-fmnist", g, LIPC_LOSS_EMMA, 9);
    lipc_graph_free(g);
}

/* Power iteration to convergence agrees with the reference's. */
Test(cuda, lipschitz_matches_reference)
{
    lipc_graph *g = bc_load("edges", bc_edges, NULL, NULL, 0);
    bc_check_lipschitz(EMU, g, 1);
    lipc_graph_free(g);
}

#ifndef LIPC_GPU_ONLY /* the cpu target is not in the GPU machine's bundle */
/* Steps keep the state on the device: three steps, then sync_state, give the
 * state that three steps of the cpu target give (float noise apart), and
 * the device state is picked up again after the host reads it; a state the
 * host replaced (another st, or a step count that moved) is uploaded anew. */
Test(cuda, state_stays_on_device_between_steps)
{
    lipc_graph *g = bc_load("wide", bc_wide, NULL, NULL, 0);
    lipc_compiled *gpu = bc_compile(EMU, g, 1), *cpu = bc_compile("cpu", g, 1);
    size_t np = g->n_param_elems, nv = gpu->desc.n_vec_elems;
    lipc_train_state s1, s2;
    cr_assert_eq(lipc_train_state_alloc(&gpu->desc, &s1), LIPC_OK);
    cr_assert_eq(lipc_train_state_alloc(&cpu->desc, &s2), LIPC_OK);
    float *pf = bc_random_params(g, test_seed(), 0.05);
    memcpy(s1.params, pf, sizeof(float) * np);
    memcpy(s2.params, pf, sizeof(float) * np);
    int n = 7;
    float *x = bc_random_inputs(g, test_seed(), n);
    int32_t y[7] = {0, 1, 2, 3, 0, 1, 2};
    lipc_hyper h = bc_hyper(LIPC_LOSS_EMMA);
    lipc_step_stats a, b;
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(gpu->ops.train_step(gpu->ops.ctx, &s1, n, x, y, &h, &a), LIPC_OK);
        cr_assert_eq(cpu->ops.train_step(cpu->ops.ctx, &s2, n, x, y, &h, &b), LIPC_OK);
        cr_expect(fabs(a.loss - b.loss) <= 1e-4 * (1 + fabs(b.loss)), "step %d: %.8g vs %.8g",
                  step, a.loss, b.loss);
    }
    /* the host copy is the one from before the steps until synced */
    cr_expect(memcmp(s1.params, pf, sizeof(float) * np) == 0, "the host copy moved early");
    cr_expect_eq(s1.step, 3);
    cr_assert_eq(gpu->ops.sync_state(gpu->ops.ctx, &s1), LIPC_OK);
    double worst = 0.0, worst_v = 0.0;
    for (size_t i = 0; i < np; i++)
        worst = fmax(worst, fabs((double)s1.params[i] - s2.params[i]));
    for (size_t i = 0; i < nv; i++)
        worst_v = fmax(worst_v, fabs((double)s1.vec[i] - s2.vec[i]));
    cr_expect_leq(worst, 0.2 * h.lr, "parameters differ by %g after 3 steps", worst);
    cr_expect_leq(worst_v, 1e-3, "power-iteration vectors differ by %g", worst_v);
    /* predict on the state's parameters reads the device's copy, which is
     * the synced one */
    size_t m = (size_t)g->classes;
    double *l1 = malloc(sizeof(double) * m * (size_t)n), *l2 = malloc(sizeof(double) * m * n);
    cr_assert_eq(gpu->ops.predict(gpu->ops.ctx, s1.params, n, x, l1), LIPC_OK);
    cr_assert_eq(cpu->ops.predict(cpu->ops.ctx, s1.params, n, x, l2), LIPC_OK);
    cr_expect(test_allclose("predict after sync", l1, l2, m * (size_t)n, 1e-4, 1e-4));
    /* a fourth step continues from the device state; replacing the host
     * state (a resumed run) makes the next step upload it */
    cr_assert_eq(gpu->ops.train_step(gpu->ops.ctx, &s1, n, x, y, &h, &a), LIPC_OK);
    cr_assert_eq(cpu->ops.train_step(cpu->ops.ctx, &s2, n, x, y, &h, &b), LIPC_OK);
    cr_expect(fabs(a.loss - b.loss) <= 1e-4 * (1 + fabs(b.loss)), "step 4: %.8g vs %.8g", a.loss,
              b.loss);
    memcpy(s1.params, pf, sizeof(float) * np);
    memset(s1.opt_m, 0, sizeof(float) * np);
    memset(s1.opt_v, 0, sizeof(float) * np);
    memset(s1.vec, 0, sizeof(float) * nv);
    s1.step = 0;
    lipc_train_state s3;
    cr_assert_eq(lipc_train_state_alloc(&cpu->desc, &s3), LIPC_OK);
    memcpy(s3.params, pf, sizeof(float) * np);
    cr_assert_eq(gpu->ops.train_step(gpu->ops.ctx, &s1, n, x, y, &h, &a), LIPC_OK);
    cr_assert_eq(cpu->ops.train_step(cpu->ops.ctx, &s3, n, x, y, &h, &b), LIPC_OK);
    cr_expect(fabs(a.loss - b.loss) <= 1e-4 * (1 + fabs(b.loss)),
              "a replaced state was not uploaded: %.8g vs %.8g", a.loss, b.loss);
    free(l1);
    free(l2);
    free(pf);
    free(x);
    lipc_train_state_free(&s1);
    lipc_train_state_free(&s2);
    lipc_train_state_free(&s3);
    lipc_compiled_free(gpu);
    lipc_compiled_free(cpu);
    lipc_graph_free(g);
}

#endif

/* Every model of models/ and of the tests above compiles with NVRTC for the
 * GPUs of the last generations (Ampere, Hopper), when the build has NVRTC. */
Test(cuda, nvrtc_compiles_every_model)
{
    if (!lipc_nvrtc_available()) {
        cr_log_warn("this build has no NVRTC: the CUDA C is checked by the emulator only");
        return;
    }
    const char *texts[] = {bc_zoo, bc_edges, bc_tiny, bc_wide, bc_mlp};
    const char *files[] = {"liresnet-fmnist.yaml", "liresnet-cifar10.yaml",
                           "resnet-fmnist.yaml"};
    for (int i = 0; i < 8; i++) {
        char path[512];
        lipc_graph *g;
        if (i < 5) {
            g = bc_load("text", texts[i], NULL, NULL, 0);
        } else {
            snprintf(path, sizeof path, "%s/models/%s", LIPC_SOURCE_DIR, files[i - 5]);
            g = bc_load(files[i - 5], NULL, path, NULL, 0);
        }
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_program *p = lipc_build_program(g, LIPC_ENTRY_TRAIN, &d);
        cr_assert(p);
        lipc_buf src;
        lipc_buf_init(&src);
        cr_assert_eq(lipc_cuda_emit(p, NULL, &src, &d), LIPC_OK);
        const int archs[] = {80, 90};
        for (int k = 0; k < 2; k++) {
            lipc_buf code;
            lipc_buf_init(&code);
            lipc_status st = lipc_nvrtc_compile(lipc_buf_str(&src), archs[k], false, &code, &d);
            if (st != LIPC_OK)
                lipc_diags_print(&d, stderr);
            cr_expect_eq(st, LIPC_OK, "model %d does not compile for sm_%d", i, archs[k]);
            cr_expect_gt(code.len, 1000, "model %d: an empty cubin", i);
            lipc_buf_free(&code);
        }
        lipc_buf_free(&src);
        lipc_diags_free(&d);
        lipc_program_free(p);
        lipc_graph_free(g);
    }
}

/* Without a GPU, --target=cuda fails with a message that says so. */
Test(cuda, no_gpu_is_a_clear_error)
{
    lipc_graph *g = bc_load("mlp", bc_mlp, NULL, NULL, 0);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_compiled *c = NULL;
    lipc_status st = lipc_compile_target(g, "cuda", NULL, &d, &c);
    if (st == LIPC_OK) { /* a machine with a GPU: nothing to check here */
        lipc_compiled_free(c);
    } else {
        cr_expect_eq(st, LIPC_ERR_UNSUPPORTED);
        lipc_buf b;
        lipc_buf_init(&b);
        lipc_diags_format(&d, &b);
        const char *s = lipc_buf_str(&b);
        cr_expect(strstr(s, "GPU") || strstr(s, "without the CUDA toolkit"), "%s", s);
        cr_expect(strstr(s, "--target=cpu"), "no way out offered: %s", s);
        lipc_buf_free(&b);
    }
    lipc_diags_free(&d);
    lipc_graph_free(g);
}

/* With the library forced, every symmetric-padded conv runs through it (its
 * results having agreed with the emitted kernels' on test data), in the
 * training batch and in power iteration; the rest stay emitted. */
Test(cuda, library_choices_are_reported, .init = library)
{
    lipc_graph *g = bc_load("zoo", bc_zoo, NULL, NULL, 0);
    lipc_compiled *c = bc_compile(EMU, g, 1);
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&c->desc, &st), LIPC_OK);
    float *pf = bc_random_params(g, test_seed(), 0.05);
    memcpy(st.params, pf, sizeof(float) * g->n_param_elems);
    int n = 4;
    float *x = bc_random_inputs(g, test_seed(), n);
    int32_t y[4] = {0, 1, 2, 0};
    lipc_hyper h = bc_hyper(LIPC_LOSS_EMMA);
    lipc_step_stats out;
    cr_assert_eq(c->ops.train_step(c->ops.ctx, &st, n, x, y, &h, &out), LIPC_OK);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_gpu_describe_choices(c->backend, &b);
    const char *s = lipc_buf_str(&b);
    cr_expect(strstr(s, "forward         batch 4    library"), "%s", s);
    cr_expect(strstr(s, "backward-data   batch 4    library"), "%s", s);
    cr_expect(strstr(s, "backward-filter batch 4    library"), "%s", s);
    cr_expect(strstr(s, "forward         batch 1    library"), "%s", s);
    cr_expect(!strstr(s, "disagreed"), "%s", s);
    /* the 1x5 conv pads its columns alike, the 2x2 one cannot: emitted */
    cr_expect(strstr(s, "emitted"), "%s", s);
    lipc_buf_free(&b);
    free(pf);
    free(x);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
}

#ifndef LIPC_GPU_ONLY
/* Certified inference runs on the host: the cpu target's, bit for bit. */
Test(cuda, certified_inference_is_the_cpu_targets)
{
    lipc_graph *g = bc_load("edges", bc_edges, NULL, NULL, 0);
    lipc_compiled *gpu = bc_compile(EMU, g, 1), *cpu = bc_compile("cpu", g, 1);
    cr_assert(gpu->host, "no host target attached");
    int n = 3;
    size_t len = (size_t)n * (size_t)g->classes;
    float *pf = bc_random_params(g, test_seed(), 0.1), *x = bc_random_inputs(g, test_seed(), n);
    double *l1 = malloc(sizeof(double) * len), *e1 = malloc(sizeof(double) * len);
    double *l2 = malloc(sizeof(double) * len), *e2 = malloc(sizeof(double) * len);
    cr_assert_eq(gpu->ops.predict_bounded(gpu->ops.ctx, pf, n, x, l1, e1), LIPC_OK);
    cr_assert_eq(cpu->ops.predict_bounded(cpu->ops.ctx, pf, n, x, l2, e2), LIPC_OK);
    cr_expect(memcmp(l1, l2, sizeof(double) * len) == 0);
    cr_expect(memcmp(e1, e2, sizeof(double) * len) == 0);
    /* and the one-pass path, with any factor bounds */
    double sigma[64];
    cr_assert(gpu->desc.n_factors <= 64);
    for (int f = 0; f < gpu->desc.n_factors; f++)
        sigma[f] = 2.0 + f;
    cr_assert(gpu->ops.predict_l2, "no one-pass path through the host");
    cr_assert_eq(gpu->ops.predict_l2(gpu->ops.ctx, pf, sigma, n, x, l1, e1), LIPC_OK);
    cr_assert_eq(cpu->ops.predict_l2(cpu->ops.ctx, pf, sigma, n, x, l2, e2), LIPC_OK);
    cr_expect(memcmp(l1, l2, sizeof(double) * len) == 0);
    cr_expect(memcmp(e1, e2, sizeof(double) * len) == 0);
    free(l1);
    free(e1);
    free(l2);
    free(e2);
    free(pf);
    free(x);
    lipc_compiled_free(gpu);
    lipc_compiled_free(cpu);
    lipc_graph_free(g);
}
#endif

/* ---- on a GPU (skipped without one): the same checks on the device, with
 * the convolutions measured and chosen (auto), forced to cuDNN, and emitted.
 * scripts/cuda-device.sh runs them. */

static bool have_gpu(void)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_gpu_dev *dev = NULL;
    bool ok = lipc_gpu_cuda_new(&d, &dev) == LIPC_OK;
    if (dev)
        dev->ops->destroy(dev);
    lipc_diags_free(&d);
    return ok;
}

static void gpu_models(const char *mode)
{
    if (!have_gpu())
        cr_skip_test("no usable GPU here");
    setenv("LIPC_CUDA_CONV", mode, 1);
    setenv("LIPC_CUDA_TF32", "0", 1); /* the tolerances are float's */
    const char *texts[] = {bc_zoo, bc_edges, bc_tiny, bc_wide, bc_mlp};
    const char *names[] = {"zoo", "edges", "tiny", "wide", "mlp"};
    for (int i = 0; i < 5; i++) {
        lipc_graph *g = bc_load(names[i], texts[i], NULL, NULL, 0);
        bc_check_forward("cuda", names[i], g, 1);
        bc_check_training("cuda", gpu_gradients, names[i], g, LIPC_LOSS_EMMA, 5);
        bc_check_training("cuda", gpu_gradients, names[i], g, LIPC_LOSS_TRADES, 1);
        lipc_graph_free(g);
    }
    const lipc_override sets[] = {{"width", "16"}, {"depth", "2"}, {"dense", "32"}};
    lipc_graph *g = bc_load("liresnet-fmnist", NULL,
                            LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml", sets, 3);
    bc_check_forward("cuda", "liresnet-fmnist", g, 1);
    bc_check_training("cuda", gpu_gradients, "liresnet-fmnist", g, LIPC_LOSS_EMMA, 32);
    lipc_graph_free(g);
}

Test(cuda_gpu, models_auto) { gpu_models("auto"); }
Test(cuda_gpu, models_library) { gpu_models("library"); }
Test(cuda_gpu, models_emitted) { gpu_models("emitted"); }
