/* bench/cpu_step.c: one target's speed on one model, as docs/benchmarks.md
 * reports it: median over repeated steps after warm-up of
 *   train       one whole training step (forward, power iteration, EMMA loss,
 *               backward, sigma gradients, clipping, AdamW) on a batch
 *   infer       logits of a batch (float kernels)
 *   infer_cert  the same plus the certification arithmetic on its logits
 *               (every pair's margin against eps K_ji, with the head's pair
 *               bounds computed once beforehand)
 *   certify     logits with rigorous elementwise rounding bounds (cpu:
 *               double kernels + the |W| bound pass)
 *   certify_l2  logits with rigorous l2 rounding bounds, one double pass:
 *               what `lipc certify` runs per batch on the cpu target (the
 *               factors' sound bounds computed once beforehand)
 * in images/s, the GFLOP/s they imply (convolution and dense multiply-adds x 2;
 * a training step counts forward + input gradient + weight gradient = 3 x the
 * forward, plus 2 forward-sized products per power iteration and factor, shared
 * by the batch), the compile time and the peak memory.
 *
 * --target cpu (default) | cuda | cuda-emulator. On the cuda targets the
 * training state stays on the device between steps (each step still copies
 * the batch up and the logits back, so its wall time is the whole step); it is
 * brought back to the host once after the timed steps, untimed. Inference is
 * then timed from the device's weights. The rounding bounds of certify run on
 * the host in double (the reference backend) and are slow: they are timed once
 * on --certify-n images (default 1). --threads does not apply there.
 *
 * Build: cmake --build build --target cpu_step
 * Run:   build/cpu_step MODEL.yaml [--set k=v]... [--target T] [--batch B]
 *                       [--threads T] [--steps S] [--warmup W] [--iters P]
 *                       [--certify-n N]
 * One JSON object on stdout. Random weights (the model's init), random inputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"

#if LIPC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Multiply-adds x 2 of one example's forward pass, and of the linear maps
 * power iteration applies (the conv and dense factors). */
static void count_flops(const lipc_program *p, double *fwd, double *pi_per_iter)
{
    *fwd = *pi_per_iter = 0.0;
    for (const lipc_node *n = p->g->first; n; n = n->next) {
        double f = 0.0;
        if (n->op == LIPC_OP_CONV2D)
            f = 2.0 * lipc_shape_numel(n->shape) * n->in[0]->shape.d[0] * n->a.kernel[0] *
                n->a.kernel[1];
        else if (n->op == LIPC_OP_DENSE)
            f = 2.0 * lipc_shape_numel(n->shape) * lipc_shape_numel(n->in[0]->shape);
        *fwd += f;
    }
    for (int b = 0; b < p->n_bounds; b++) {
        const lipc_node *n = p->bounds[b].node;
        if (p->bounds[b].kind != LIPC_LIP_OPNORM)
            continue;
        double f = n->op == LIPC_OP_CONV2D
                       ? 2.0 * lipc_shape_numel(n->shape) * n->in[0]->shape.d[0] *
                             n->a.kernel[0] * n->a.kernel[1]
                       : 2.0 * lipc_shape_numel(n->shape) * lipc_shape_numel(n->in[0]->shape);
        *pi_per_iter += 2.0 * f; /* A v and A^T u */
    }
}

/* Device memory in use on the current GPU, in bytes (-1: none to ask). */
static double gpu_used_bytes(void)
{
#if LIPC_HAVE_CUDA
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
        return (double)(total_b - free_b);
#endif
    return -1.0;
}

/* Keeps the highest of gpu_used_bytes() in *peak (when there is a GPU). */
static void gpu_sample(double *peak)
{
    double u = gpu_used_bytes();
    if (u > *peak)
        *peak = u;
}

/* s as a JSON string, or null. */
static void json_string(const char *s)
{
    if (!s) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        if ((unsigned char)*s >= 0x20)
            putchar(*s);
    }
    putchar('"');
}

/* A number with that many decimals, or null when v < 0 (not measured). */
static void json_number(int decimals, double v)
{
    if (v < 0)
        fputs("null", stdout);
    else
        printf("%.*f", decimals, v);
}

int main(int argc, char **argv)
{
    const char *file = NULL, *target = "cpu";
    lipc_override sets[16];
    int n_sets = 0, batch = 128, threads = 0, steps = 10, warmup = 3, iters = -1, cert_n = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--set") && i + 1 < argc && n_sets < 16) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            if (!eq)
                return fprintf(stderr, "cpu_step: --set takes KEY=VALUE\n"), 2;
            *eq = 0;
            sets[n_sets++] = (lipc_override){kv, eq + 1};
        } else if (!strcmp(a, "--target") && i + 1 < argc) {
            target = argv[++i];
        } else if (!strcmp(a, "--batch") && i + 1 < argc) {
            batch = atoi(argv[++i]);
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            steps = atoi(argv[++i]);
        } else if (!strcmp(a, "--warmup") && i + 1 < argc) {
            warmup = atoi(argv[++i]);
        } else if (!strcmp(a, "--iters") && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else if (!strcmp(a, "--certify-n") && i + 1 < argc) {
            cert_n = atoi(argv[++i]);
        } else if (a[0] != '-' && !file) {
            file = a;
        } else {
            return fprintf(stderr, "cpu_step: unknown argument '%s'\n", a), 2;
        }
    }
    bool cpu = !strcmp(target, "cpu");
    if (!cpu && strcmp(target, "cuda") && strcmp(target, "cuda-emulator"))
        return fprintf(stderr, "cpu_step: --target takes cpu, cuda or cuda-emulator\n"), 2;
    if (!file || batch < 1 || steps < 1 || warmup < 0 || cert_n < 0)
        return fprintf(stderr, "usage: cpu_step MODEL.yaml [--set k=v]... [--target cpu|cuda|"
                               "cuda-emulator] [--batch B] [--threads T] [--steps S] "
                               "[--warmup W] [--iters P] [--certify-n N]\n"), 2;
    if (cert_n > batch)
        cert_n = batch;
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_load_options lo = {.sets = sets, .n_sets = n_sets};
    lipc_pipeline_options po = {.verify = true};
    lipc_compiled *c = NULL;
    lipc_cpu_options co = {.threads = threads};
    /* On a GPU, the CUDA context is made first, so that neither the compile
     * time nor the memory count below includes it. */
    bool on_gpu = !strcmp(target, "cuda");
    double gpu_base = on_gpu ? gpu_used_bytes() : -1.0, gpu_peak = gpu_base;
    double t_compile = 0.0;
    if (lipc_frontend_load_file(file, &lo, &d, &g) != LIPC_OK ||
        lipc_pipeline_run(g, &po, &d) != LIPC_OK ||
        (t_compile = lipc_now(), lipc_compile_target(g, target, &co, &d, &c)) != LIPC_OK) {
        lipc_diags_print(&d, stderr);
        return 1;
    }
    t_compile = lipc_now() - t_compile;
    gpu_sample(&gpu_peak);
    const lipc_model_desc *m = &c->desc;
    /* cpu: the kernels of training alone (the double ones come on first use) */
    double jit_train = cpu ? lipc_cpu_compile_seconds(c->backend) : -1.0;
    lipc_train_state st;
    if (lipc_train_state_alloc(m, &st) != LIPC_OK || lipc_init_params(m, 1, st.params) != LIPC_OK)
        return fprintf(stderr, "cpu_step: out of memory\n"), 3;
    int classes = m->classes;
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w * (size_t)batch;
    float *x = malloc(sizeof(float) * in);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)batch);
    double *logits = malloc(sizeof(double) * (size_t)batch * (size_t)classes);
    double *err = malloc(sizeof(double) * (size_t)batch * (size_t)classes);
    double *kpair = malloc(sizeof(double) * (size_t)classes * (size_t)classes);
    double *radius = malloc(sizeof(double) * (size_t)batch);
    lipc_rng r;
    lipc_rng_seed(&r, 7);
    for (size_t i = 0; i < in; i++)
        x[i] = (float)lipc_rng_uniform(&r);
    for (int i = 0; i < batch; i++)
        y[i] = i % classes;
    const lipc_train_spec *ts = &c->train->train;
    lipc_hyper h = {.loss = LIPC_LOSS_EMMA, .optimizer = LIPC_OPTIM_ADAMW, .lr = 1e-3,
                    .eps = 0.141, .weight_decay = 1e-4, .beta1 = 0.9, .beta2 = 0.999,
                    .adam_eps = 1e-8, .momentum = 0.9, .clip = 3.0, .trades_lambda = 1.0,
                    .power_iters = iters >= 0 ? iters : ts->power_iters};
    /* The certification arithmetic, as `lipc certify` does it per batch: the
     * head's pair bounds for some K_sub (its value does not change the work). */
    lipc_cert_summary cs;
    double cert_eps = h.eps;
    if (lipc_head_kpair(m, st.params, 1.0, kpair) != LIPC_OK ||
        lipc_cert_summary_init(&cs, 1, &cert_eps, 0.0) != LIPC_OK)
        return fprintf(stderr, "cpu_step: the head's pair bounds failed\n"), 1;
    int total = warmup + steps, certified_n = batch;
    double *tt = malloc(sizeof(double) * (size_t)total * 5);
    double *t_train = tt, *t_infer = tt + steps, *t_icert = tt + 2 * steps;
    double *t_cert = tt + 3 * steps, *t_l2 = tt + 4 * steps, sync_s = -1.0;
    /* the one-pass certified inference (what lipc certify runs) needs the
     * factors' sound bounds, computed once per model as lipc certify does;
     * they are of the initial weights here, which only changes the bound */
    double *sigma = NULL;
    if (cpu && c->ops.predict_l2) {
        sigma = calloc((size_t)m->n_factors + 1, sizeof *sigma);
        double k;
        if (!sigma || lipc_model_sound_sigma(m, st.params, sigma, &k, &d) != LIPC_OK)
            return fprintf(stderr, "cpu_step: the factors' sound bounds failed\n"), 1;
    }
    if (cpu) {
        /* train, infer and certify in turn at every step, as always measured */
        for (int s = 0; s < total; s++) {
            lipc_step_stats out;
            double t0 = lipc_now();
            if (c->ops.train_step(c->ops.ctx, &st, batch, x, y, &h, &out) != LIPC_OK)
                return fprintf(stderr, "cpu_step: the training step failed\n"), 1;
            double t1 = lipc_now();
            c->ops.predict(c->ops.ctx, st.params, batch, x, logits);
            double t2 = lipc_now();
            lipc_certify_batch(&cs, batch, classes, logits, y, kpair, radius);
            double t3 = lipc_now();
            c->ops.predict_bounded(c->ops.ctx, st.params, batch, x, logits, err);
            double t4 = lipc_now();
            if (sigma)
                c->ops.predict_l2(c->ops.ctx, st.params, sigma, batch, x, logits, err);
            double t5 = lipc_now();
            if (s >= warmup) {
                t_train[s - warmup] = t1 - t0;
                t_infer[s - warmup] = t2 - t1;
                t_icert[s - warmup] = t3 - t1;
                t_cert[s - warmup] = t4 - t3;
                t_l2[s - warmup] = t5 - t4;
            }
        }
    } else {
        /* training with the state on the device; then inference from it */
        for (int s = 0; s < total; s++) {
            lipc_step_stats out;
            double t0 = lipc_now();
            if (c->ops.train_step(c->ops.ctx, &st, batch, x, y, &h, &out) != LIPC_OK) {
                lipc_diags_print(&d, stderr);
                return fprintf(stderr, "cpu_step: the training step failed\n"), 1;
            }
            if (s >= warmup)
                t_train[s - warmup] = lipc_now() - t0;
            if (s == 0)
                gpu_sample(&gpu_peak);
        }
        gpu_sample(&gpu_peak);
        double t0 = lipc_now();
        if (c->ops.sync_state && c->ops.sync_state(c->ops.ctx, &st) != LIPC_OK)
            return fprintf(stderr, "cpu_step: bringing the training state back failed\n"), 1;
        sync_s = lipc_now() - t0;
        for (int s = 0; s < total; s++) {
            double t1 = lipc_now();
            if (c->ops.predict(c->ops.ctx, st.params, batch, x, logits) != LIPC_OK)
                return fprintf(stderr, "cpu_step: inference failed\n"), 1;
            double t2 = lipc_now();
            lipc_certify_batch(&cs, batch, classes, logits, y, kpair, radius);
            double t3 = lipc_now();
            if (s >= warmup) {
                t_infer[s - warmup] = t2 - t1;
                t_icert[s - warmup] = t3 - t1;
            }
        }
        gpu_sample(&gpu_peak);
        /* the rounding bounds, on the host in double: once, on cert_n images */
        certified_n = cert_n;
        for (int s = 0; s < steps; s++)
            t_cert[s] = -1.0;
        if (cert_n > 0) {
            double t3 = lipc_now();
            if (c->ops.predict_bounded(c->ops.ctx, st.params, cert_n, x, logits, err) != LIPC_OK)
                return fprintf(stderr, "cpu_step: the rounding bounds failed\n"), 1;
            t_cert[0] = lipc_now() - t3;
        }
    }
    double train_s = median(t_train, steps), infer_s = median(t_infer, steps);
    double icert_s = median(t_icert, steps);
    double cert_s = cpu ? median(t_cert, steps) : t_cert[0];
    double fwd, pi;
    count_flops(c->train, &fwd, &pi);
    double train_flop = 3.0 * fwd * batch + pi * h.power_iters;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"model\": ");
    json_string(g->name);
    printf(", \"target\": \"%s\", \"device\": ", target);
    json_string(c->ops.device);
    printf(", \"batch\": %d, \"threads\": ", batch);
    json_number(0, cpu ? lipc_cpu_threads(c->backend) : -1.0);
    printf(", \"power_iters\": %d, \"compile_s\": %.3f, \"jit_s\": ", h.power_iters, t_compile);
    json_number(3, cpu ? lipc_cpu_compile_seconds(c->backend) : -1.0);
    printf(", \"jit_train_s\": ");
    json_number(3, jit_train);
    printf(", \"fwd_mflop_per_image\": %.2f, \"train_img_s\": %.1f, \"train_gflop_s\": %.1f, "
           "\"infer_img_s\": %.1f, \"infer_gflop_s\": %.1f, \"infer_cert_img_s\": %.1f, "
           "\"certify_img_s\": ",
           fwd / 1e6, batch / train_s, train_flop / train_s / 1e9, batch / infer_s,
           fwd * batch / infer_s / 1e9, batch / icert_s);
    json_number(2, certified_n > 0 && cert_s > 0 ? certified_n / cert_s : -1.0);
    printf(", \"certify_l2_img_s\": ");
    json_number(2, sigma ? batch / median(t_l2, steps) : -1.0);
    printf(", \"certify_n\": %d, \"certify_on\": \"%s\", \"sync_state_s\": ", certified_n,
           cpu ? "cpu kernels" : "host, reference in double");
    json_number(3, sync_s);
    printf(", \"peak_rss_mb\": %.0f, \"peak_gpu_mib\": ", ru.ru_maxrss / 1024.0);
    bool gpu_known = gpu_base >= 0 && gpu_peak >= gpu_base;
    json_number(0, gpu_known ? (gpu_peak - gpu_base) / 1048576.0 : -1.0);
    printf("}\n");
    free(tt);
    free(sigma);
    free(x);
    free(y);
    free(logits);
    free(err);
    free(kpair);
    free(radius);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    lipc_diags_free(&d);
    return 0;
}
