/* bench/cpu_step.c: the cpu target's speed on one model, as docs/benchmarks.md
 * reports it: median over repeated steps after warm-up of
 *   train     one whole training step (forward, power iteration, EMMA loss,
 *             backward, sigma gradients, clipping, AdamW) on a batch
 *   infer     logits of a batch (float kernels)
 *   certify   logits with rigorous rounding bounds (double kernels + the bound
 *             pass): what `lipc certify` runs per batch; the certification
 *             arithmetic on n x classes logits is negligible beside it
 * in images/s, the GFLOP/s they imply (convolution and dense multiply-adds x 2;
 * a training step counts forward + input gradient + weight gradient = 3 x the
 * forward, plus 2 forward-sized products per power iteration and factor, shared
 * by the batch), the JIT compile time (all kernels, and those of training
 * alone: the double ones are compiled on first use) and the peak resident
 * memory.
 *
 * Build: cmake --build build --target cpu_step
 * Run:   build/cpu_step MODEL.yaml [--set k=v]... [--batch B] [--threads T]
 *                       [--steps S] [--warmup W] [--iters P]
 * One JSON object on stdout. Random weights (the model's init), random inputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"

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

int main(int argc, char **argv)
{
    const char *file = NULL;
    lipc_override sets[16];
    int n_sets = 0, batch = 128, threads = 0, steps = 10, warmup = 3, iters = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--set") && i + 1 < argc && n_sets < 16) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            if (!eq)
                return fprintf(stderr, "cpu_step: --set takes KEY=VALUE\n"), 2;
            *eq = 0;
            sets[n_sets++] = (lipc_override){kv, eq + 1};
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
        } else if (a[0] != '-' && !file) {
            file = a;
        } else {
            return fprintf(stderr, "cpu_step: unknown argument '%s'\n", a), 2;
        }
    }
    if (!file || batch < 1 || steps < 1 || warmup < 0)
        return fprintf(stderr, "usage: cpu_step MODEL.yaml [--set k=v]... [--batch B] "
                               "[--threads T] [--steps S] [--warmup W] [--iters P]\n"), 2;
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_load_options lo = {.sets = sets, .n_sets = n_sets};
    lipc_pipeline_options po = {.verify = true};
    lipc_compiled *c = NULL;
    lipc_cpu_options co = {.threads = threads};
    if (lipc_frontend_load_file(file, &lo, &d, &g) != LIPC_OK ||
        lipc_pipeline_run(g, &po, &d) != LIPC_OK ||
        lipc_compile_target(g, "cpu", &co, &d, &c) != LIPC_OK) {
        lipc_diags_print(&d, stderr);
        return 1;
    }
    const lipc_model_desc *m = &c->desc;
    double jit_train = lipc_cpu_compile_seconds(c->backend); /* before the double kernels */
    lipc_train_state st;
    if (lipc_train_state_alloc(m, &st) != LIPC_OK || lipc_init_params(m, 1, st.params) != LIPC_OK)
        return fprintf(stderr, "cpu_step: out of memory\n"), 3;
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w * (size_t)batch;
    float *x = malloc(sizeof(float) * in);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)batch);
    double *logits = malloc(sizeof(double) * (size_t)batch * (size_t)m->classes);
    double *err = malloc(sizeof(double) * (size_t)batch * (size_t)m->classes);
    lipc_rng r;
    lipc_rng_seed(&r, 7);
    for (size_t i = 0; i < in; i++)
        x[i] = (float)lipc_rng_uniform(&r);
    for (int i = 0; i < batch; i++)
        y[i] = i % m->classes;
    const lipc_train_spec *ts = &c->train->train;
    lipc_hyper h = {.loss = LIPC_LOSS_EMMA, .optimizer = LIPC_OPTIM_ADAMW, .lr = 1e-3,
                    .eps = 0.141, .weight_decay = 1e-4, .beta1 = 0.9, .beta2 = 0.999,
                    .adam_eps = 1e-8, .momentum = 0.9, .clip = 3.0, .trades_lambda = 1.0,
                    .power_iters = iters >= 0 ? iters : ts->power_iters};
    int total = warmup + steps;
    double *tt = malloc(sizeof(double) * (size_t)total * 3);
    for (int s = 0; s < total; s++) {
        lipc_step_stats out;
        double t0 = lipc_now();
        if (c->ops.train_step(c->ops.ctx, &st, batch, x, y, &h, &out) != LIPC_OK)
            return fprintf(stderr, "cpu_step: the training step failed\n"), 1;
        double t1 = lipc_now();
        c->ops.predict(c->ops.ctx, st.params, batch, x, logits);
        double t2 = lipc_now();
        c->ops.predict_bounded(c->ops.ctx, st.params, batch, x, logits, err);
        double t3 = lipc_now();
        if (s >= warmup) {
            tt[s - warmup] = t1 - t0;
            tt[steps + s - warmup] = t2 - t1;
            tt[2 * steps + s - warmup] = t3 - t2;
        }
    }
    double train_s = median(tt, steps), infer_s = median(tt + steps, steps);
    double cert_s = median(tt + 2 * steps, steps);
    double fwd, pi;
    count_flops(c->train, &fwd, &pi);
    double train_flop = 3.0 * fwd * batch + pi * h.power_iters;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"model\": \"%s\", \"batch\": %d, \"threads\": %d, \"power_iters\": %d, "
           "\"jit_s\": %.3f, \"jit_train_s\": %.3f, \"fwd_mflop_per_image\": %.2f, "
           "\"train_img_s\": %.1f, \"train_gflop_s\": %.1f, "
           "\"infer_img_s\": %.1f, \"infer_gflop_s\": %.1f, "
           "\"certify_img_s\": %.1f, \"peak_rss_mb\": %.0f}\n",
           g->name, batch, lipc_cpu_threads(c->backend), h.power_iters,
           lipc_cpu_compile_seconds(c->backend), jit_train, fwd / 1e6, batch / train_s,
           train_flop / train_s / 1e9, batch / infer_s, fwd * batch / infer_s / 1e9,
           batch / cert_s, ru.ru_maxrss / 1024.0);
    free(tt);
    free(x);
    free(y);
    free(logits);
    free(err);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    lipc_diags_free(&d);
    return 0;
}
