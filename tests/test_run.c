/* tests/test_run.c: the runtime's training loop, checkpoints and resume, at
 * the library level (the commands through the binary: tests/test_cli_run.c).
 *
 * The model is tests/models/syn.yaml (a tiny LiResNet, 1x8x8 -> 4 classes) on
 * the synthetic dataset, trained by the reference backend: a few hundred
 * steps, well under a second per run.
 *
 * - the schedules: linear warm-up then cosine; the eps ramp then hold;
 * - training lowers the loss and certifies a growing share (metrics JSONL);
 * - resume is bit-for-bit: a run stopped (the Ctrl-C flag, set by a wrapper
 *   around the backend's train_step after k steps) at an epoch boundary or in
 *   the middle of an epoch, then resumed from its checkpoint, ends with the
 *   same parameters, optimiser moments, power-iteration vectors and metadata
 *   as a run that never stopped;
 * - checkpoints: atomic (no temporary file left), load back exactly, reject
 *   another model's or a damaged file with a diagnostic naming the tensor or
 *   the file, and are readable by an independent Python reader.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "testutil.h"

#define SYN_MODEL LIPC_SOURCE_DIR "/tests/models/syn.yaml"

/* ---- a temporary directory per test -------------------------------------- */

static void make_tmp(void) { test_tmp_make("/tmp/lipc-run"); }

TestSuite(run, .init = make_tmp, .fini = test_tmp_remove, .timeout = 30);

/* The diagnostics as one string (caller frees). */
static char *diag_text(const lipc_diags *d)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(d, &b);
    char *s = lipc_strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return s;
}

/* ---- a compiled model, its data and the CLI's options --------------------- */

typedef struct model {
    lipc_graph *g;
    lipc_compiled *c;
} model;

/* Loads a model file (with KEY=VALUE overrides) for the reference target;
 * scaled turns on its train: section's scaled_residuals. */
static model load_model_as(const char *path, const char *set, bool scaled)
{
    lipc_override ov[1];
    char buf[64];
    lipc_load_options lo = {0};
    if (set) {
        snprintf(buf, sizeof buf, "%s", set);
        cr_assert(lipc_override_parse(buf, &ov[0]));
        lo.sets = ov;
        lo.n_sets = 1;
    }
    lipc_diags d;
    lipc_diags_init(&d);
    model m = {0};
    lipc_status st = lipc_frontend_load_file(path, &lo, &d, &m.g);
    if (st == LIPC_OK) {
        lipc_pipeline_options po = {.verify = true};
        st = lipc_pipeline_run(m.g, &po, &d);
    }
    if (st == LIPC_OK) {
        m.g->train.scaled_residuals |= scaled;
        st = lipc_compile(m.g, "ref", &d, &m.c);
    }
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "%s does not compile", path);
    lipc_diags_free(&d);
    return m;
}

static model load_model(const char *path, const char *set)
{
    return load_model_as(path, set, false);
}

static void free_model(model *m)
{
    lipc_compiled_free(m->c);
    lipc_graph_free(m->g);
}

/* synthetic:n, split into n - n_val training and n_val validation examples
 * (n_val 0: all for training, val untouched). */
static void load_synthetic(int n, int n_val, lipc_dataset *all, lipc_dataset *train,
                           lipc_dataset *val)
{
    char spec[32];
    snprintf(spec, sizeof spec, "synthetic:%d", n);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_dataset_load(spec, LIPC_SPLIT_TRAIN, 0, all, &d), LIPC_OK);
    lipc_diags_free(&d);
    if (n_val > 0)
        cr_assert_eq(lipc_dataset_split(all, n_val, train, val), LIPC_OK);
}

static FILE *devnull;

/* What `lipc train` does (cli/run.c train_options): the model's train:
 * section, the dataset's augmentation defaults, no command-line overrides.
 * Progress goes to /dev/null. */
static lipc_train_options options_for(const lipc_graph *g, const lipc_dataset *train)
{
    const lipc_train_spec *t = &g->train;
    lipc_train_options o;
    memset(&o, 0, sizeof o);
    o.epochs = t->epochs;
    o.batch = t->batch;
    o.hyper = (lipc_hyper){
        .loss = t->loss, .optimizer = t->optimizer, .lr = t->lr, .eps = t->eps,
        .weight_decay = t->weight_decay, .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8,
        .momentum = t->momentum, .clip = t->clip, .trades_lambda = t->trades_lambda,
        .power_iters = t->power_iters,
    };
    o.eps_start = t->eps_start;
    o.eps_end = t->eps_end;
    o.eps_ramp = t->eps_ramp;
    o.warmup_epochs = t->warmup_epochs;
    o.seed = (uint64_t)t->seed;
    lipc_augment_defaults(train->name, &o.aug);
    if (!devnull)
        devnull = fopen("/dev/null", "w");
    cr_assert(devnull);
    o.log = devnull;
    return o;
}

/* ---- a backend wrapper that presses Ctrl-C after k steps ------------------ */

typedef struct stopper {
    const lipc_model_ops *inner;
    long calls, stop_at;
    volatile int flag;
} stopper;

static lipc_status stopper_step(void *ctx, lipc_train_state *st, int n, const float *x,
                                const int32_t *y, const lipc_hyper *h, lipc_step_stats *out)
{
    stopper *s = ctx;
    lipc_status r = s->inner->train_step(s->inner->ctx, st, n, x, y, h, out);
    if (++s->calls == s->stop_at)
        s->flag = 1; /* as the SIGINT handler would, in the middle of the loop */
    return r;
}

static lipc_status stopper_predict(void *ctx, const float *params, int n, const float *x,
                                   double *logits)
{
    stopper *s = ctx;
    return s->inner->predict(s->inner->ctx, params, n, x, logits);
}

static lipc_status stopper_lipschitz(void *ctx, const float *params, float *vec, int max_iters,
                                     double tol, lipc_bound_report *report)
{
    stopper *s = ctx;
    return s->inner->lipschitz(s->inner->ctx, params, vec, max_iters, tol, report);
}

static lipc_model_ops stopper_ops(stopper *s, const lipc_model_ops *inner, long stop_at)
{
    s->inner = inner;
    s->calls = 0;
    s->stop_at = stop_at;
    s->flag = 0;
    return (lipc_model_ops){
        .backend = inner->backend,
        .ctx = s,
        .train_step = stopper_step,
        .predict = stopper_predict,
        .lipschitz = stopper_lipschitz,
        .max_batch = inner->max_batch,
    };
}

/* Trains from a fresh (seeded) or resumed state; st must be allocated. */
static lipc_status train(const model *m, const lipc_model_ops *ops, const lipc_dataset *ds,
                         const lipc_train_options *o, const char *resume,
                         lipc_train_state *st, lipc_train_result *res)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = resume ? lipc_checkpoint_load(resume, &m->c->desc, st, true, &d)
                           : lipc_init_params(&m->c->desc, o->seed, st->params);
    if (s == LIPC_OK)
        s = lipc_train_run(&m->c->desc, ops, ds, o, st, res, &d);
    if (s != LIPC_OK || d.n_errors || d.n_warnings)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(d.n_warnings, 0, "a resumed state must be complete");
    lipc_diags_free(&d);
    return s;
}

/* ---- comparing checkpoints ------------------------------------------------- */

static lipc_st_file read_st(const char *path)
{
    lipc_st_file f;
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = lipc_st_read(path, &f, &d);
    if (s != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(s, LIPC_OK, "cannot read %s", path);
    lipc_diags_free(&d);
    return f;
}

/* Every tensor byte for byte and every metadata value; reports the first
 * difference. */
static void expect_same_checkpoint(const char *a, const char *b)
{
    lipc_st_file fa = read_st(a), fb = read_st(b);
    cr_assert_eq(fa.n, fb.n, "%s has %d tensors, %s has %d", a, fa.n, b, fb.n);
    for (int i = 0; i < fa.n; i++) {
        const lipc_st_tensor *x = &fa.tensors[i], *y = &fb.tensors[i];
        cr_assert_str_eq(x->name, y->name);
        cr_assert(x->dtype == y->dtype && x->rank == y->rank && x->nbytes == y->nbytes,
                  "tensor %s differs in dtype or shape", x->name);
        if (memcmp(x->data, y->data, x->nbytes) != 0) {
            size_t k = 0;
            const uint8_t *p = x->data, *q = y->data;
            while (p[k] == q[k])
                k++;
            float u, v;
            memcpy(&u, p + k / 4 * 4, 4);
            memcpy(&v, q + k / 4 * 4, 4);
            cr_assert_fail("tensor %s differs at element %zu: %.9g vs %.9g", x->name, k / 4,
                           (double)u, (double)v);
        }
    }
    cr_assert_eq(fa.n_meta, fb.n_meta);
    for (int i = 0; i < fa.n_meta; i++) {
        cr_assert_str_eq(fa.meta[i].key, fb.meta[i].key);
        cr_assert_str_eq(fa.meta[i].value, fb.meta[i].value, "metadata %s: %s vs %s",
                         fa.meta[i].key, fa.meta[i].value, fb.meta[i].value);
    }
    lipc_st_free(&fa);
    lipc_st_free(&fb);
}

static bool same_state(const lipc_model_desc *m, const lipc_train_state *a,
                       const lipc_train_state *b)
{
    /* the whole training vector: with scaled kernels, their a and U too */
    size_t np = lipc_train_len(a, m->n_param_elems) * sizeof(float);
    return a->step == b->step && memcmp(a->params, b->params, np) == 0 &&
           memcmp(a->opt_m, b->opt_m, np) == 0 && memcmp(a->opt_v, b->opt_v, np) == 0 &&
           memcmp(a->vec, b->vec, m->n_vec_elems * sizeof(float)) == 0;
}

/* No "*.tmp-*" left behind by the atomic writes. */
static void expect_no_temporaries(void)
{
    DIR *dir = opendir(test_tmp_dir);
    cr_assert(dir);
    struct dirent *e;
    while ((e = readdir(dir)))
        cr_expect(!strstr(e->d_name, ".tmp-"), "temporary file left: %s", e->d_name);
    closedir(dir);
}

/* The metrics log: one JSON object per line. Returns the lines (a JSON array). */
static json_t *read_jsonl(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert(f, "no metrics file %s", path);
    json_t *arr = json_array();
    char line[4096];
    int no = 0;
    while (fgets(line, sizeof line, f)) {
        no++;
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        cr_assert(o && json_is_object(o), "%s:%d: not a JSON object (%s): %s", path, no,
                  err.text, line);
        json_array_append_new(arr, o);
    }
    fclose(f);
    return arr;
}

static double num(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_number(v), "no number '%s'", key);
    return json_number_value(v);
}

/* ---- schedules ----------------------------------------------------------------- */

Test(run, schedules)
{
    lipc_train_options o = {0};
    o.hyper.lr = 0.01;
    o.hyper.eps = 0.5;
    o.warmup_epochs = 2;
    o.eps_start = 0.1;
    o.eps_end = 1.5;
    o.eps_ramp = 0.5;
    long per_epoch = 10, total = 100;
    /* warm-up: lr (t + 1) / W over W = 20 steps, reaching the peak at t = W - 1 */
    cr_expect_float_eq(lipc_schedule_lr(&o, 0, total, per_epoch), 0.01 / 20, 1e-15);
    cr_expect_float_eq(lipc_schedule_lr(&o, 19, total, per_epoch), 0.01, 1e-15);
    /* cosine from the peak at t = W down to 0 at t = T */
    cr_expect_float_eq(lipc_schedule_lr(&o, 20, total, per_epoch), 0.01, 1e-15);
    cr_expect_float_eq(lipc_schedule_lr(&o, 60, total, per_epoch), 0.005, 1e-12);
    cr_expect(lipc_schedule_lr(&o, 99, total, per_epoch) < 1e-5);
    for (long t = 21; t < total; t++)
        cr_expect(lipc_schedule_lr(&o, t, total, per_epoch) <
                      lipc_schedule_lr(&o, t - 1, total, per_epoch),
                  "not decreasing at %ld", t);
    /* no warm-up: cosine from step 0 */
    o.warmup_epochs = 0;
    cr_expect_float_eq(lipc_schedule_lr(&o, 0, total, per_epoch), 0.01, 1e-15);
    /* eps: 0.1 eps at the start, linear to 1.5 eps at half of training, then held */
    cr_expect_float_eq(lipc_schedule_eps(&o, 0, total), 0.05, 1e-15);
    cr_expect_float_eq(lipc_schedule_eps(&o, 25, total), 0.5 * 0.8, 1e-12);
    cr_expect_float_eq(lipc_schedule_eps(&o, 50, total), 0.75, 1e-12);
    cr_expect_float_eq(lipc_schedule_eps(&o, 99, total), 0.75, 1e-12);
    /* no ramp: the end value from the start */
    o.eps_ramp = 0;
    cr_expect_float_eq(lipc_schedule_eps(&o, 0, total), 0.75, 1e-12);
}

/* ---- training makes progress ----------------------------------------------------- */

Test(run, training_lowers_loss_and_certifies_more)
{
    model m = load_model(SYN_MODEL, NULL);
    lipc_dataset all, tr, val;
    load_synthetic(1024, 256, &all, &tr, &val);
    lipc_train_options o = options_for(m.g, &tr);
    o.out = test_tmp_path("syn.safetensors");
    o.metrics = test_tmp_path("syn.metrics.jsonl");
    o.val = &val;
    o.val_every = 4;
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &st), LIPC_OK);
    lipc_train_result res;
    cr_assert_eq(train(&m, &m.c->ops, &tr, &o, NULL, &st, &res), LIPC_OK);

    long per_epoch = tr.n / o.batch;
    cr_expect_eq(res.epochs, o.epochs);
    cr_expect_eq(res.steps, per_epoch * o.epochs);
    cr_expect_eq(st.step, per_epoch * o.epochs);
    cr_expect(!res.interrupted);

    json_t *lines = read_jsonl(o.metrics);
    cr_assert_eq((int)json_array_size(lines), o.epochs);
    const json_t *first = json_array_get(lines, 0), *last = json_array_get(lines, o.epochs - 1);
    for (int e = 0; e < o.epochs; e++) {
        const json_t *l = json_array_get(lines, (size_t)e);
        cr_expect_eq((int)num(l, "epoch"), e + 1);
        cr_expect_eq((long)num(l, "step"), per_epoch * (e + 1));
        cr_expect(num(l, "K_sub") > 0 && num(l, "lr") > 0 && num(l, "eps") > 0);
        /* validation every 4 epochs (and at the end) */
        cr_expect_eq(json_object_get(l, "val_acc") != NULL, (e + 1) % 4 == 0, "epoch %d", e + 1);
    }
    double loss0 = num(first, "loss"), loss1 = num(last, "loss");
    double cert0 = num(first, "cert"), cert1 = num(last, "cert");
    cr_expect(loss1 < 0.5 * loss0, "loss %g -> %g", loss0, loss1);
    cr_expect(cert1 > cert0 + 0.3, "certified share %g -> %g", cert0, cert1);
    /* the result repeats the last line (the log keeps 10 significant digits) */
    cr_expect(fabs(res.train_loss - loss1) <= 1e-9 * loss1, "%.17g vs %.17g", res.train_loss,
              loss1);
    cr_expect(fabs(res.train_cert - cert1) <= 1e-9, "%.17g vs %.17g", res.train_cert, cert1);
    /* four classes: chance is 0.25 */
    cr_expect(res.val_acc > 0.8, "validation accuracy %g", res.val_acc);
    cr_expect(res.val_vra > 0.5, "validation VRA %g", res.val_vra);
    cr_expect(fabs(num(last, "val_acc") - res.val_acc) <= 1e-9);
    cr_expect(res.val_k_sub > 0 && isfinite(res.val_k_sub));

    /* The validation numbers are the certifier's on the final parameters. */
    lipc_cert_summary cs;
    cr_assert_eq(lipc_cert_summary_init(&cs, 1, &o.hyper.eps, 0.0), LIPC_OK);
    cr_assert_eq(lipc_certify_dataset(&m.c->desc, &m.c->ops, st.params, res.val_k_sub, NULL, &val,
                                      64, &cs, NULL),
                 LIPC_OK);
    cr_expect_eq(lipc_cert_clean_accuracy(&cs), res.val_acc);
    cr_expect_eq(lipc_cert_vra(&cs, 0), res.val_vra);

    json_decref(lines);
    lipc_train_state_free(&st);
    lipc_dataset_free(&all);
    lipc_dataset_free(&tr);
    lipc_dataset_free(&val);
    free_model(&m);
}

Test(run, rejects_data_that_does_not_fit)
{
    model m = load_model(SYN_MODEL, NULL);
    lipc_dataset all, tr, val;
    load_synthetic(64, 0, &all, &tr, &val);
    lipc_train_options o = options_for(m.g, &all);
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &st), LIPC_OK);
    lipc_train_result res;
    lipc_diags d;
    lipc_diags_init(&d);
    /* fewer examples than one batch */
    o.batch = 100;
    cr_expect_eq(lipc_train_run(&m.c->desc, &m.c->ops, &all, &o, &st, &res, &d), LIPC_ERR_INPUT);
    char *t = diag_text(&d);
    cr_expect(strstr(t, "has 64 examples, fewer than one batch of 100"), "%s", t);
    free(t);
    lipc_diags_free(&d);
    /* images of another shape */
    lipc_diags_init(&d);
    o.batch = 16;
    all.h = all.w = 4;
    all.c = 4;
    cr_expect_eq(lipc_train_run(&m.c->desc, &m.c->ops, &all, &o, &st, &res, &d), LIPC_ERR_INPUT);
    t = diag_text(&d);
    cr_expect(strstr(t, "has 4x4x4 images in 4 classes, but the model 'syn' takes 1x8x8"), "%s",
              t);
    free(t);
    lipc_diags_free(&d);
    cr_expect_eq(st.step, 0);
    lipc_train_state_free(&st);
    lipc_dataset_free(&all);
    free_model(&m);
}

/* ---- resume -------------------------------------------------------------------- */

#define RESUME_N 512 /* synthetic examples: 16 steps of 32 per epoch */
#define RESUME_EPOCHS 4

/* A straight run of RESUME_EPOCHS epochs into `out`; returns its final state. */
static void straight_run(const model *m, const lipc_dataset *ds, const char *out,
                         const char *metrics, lipc_train_state *st)
{
    lipc_train_options o = options_for(m->g, ds);
    o.epochs = RESUME_EPOCHS;
    o.out = out;
    o.metrics = metrics;
    cr_assert_eq(lipc_train_state_alloc(&m->c->desc, st), LIPC_OK);
    lipc_train_result res;
    cr_assert_eq(train(m, &m->c->ops, ds, &o, NULL, st, &res), LIPC_OK);
    cr_assert(!res.interrupted);
}

/* Stops after k steps (the Ctrl-C flag), then resumes from the checkpoint in
 * a fresh state; the result must be the straight run's, bit for bit. */
static void stop_and_resume(long k, bool scaled)
{
    model m = load_model_as(SYN_MODEL, NULL, scaled);
    lipc_dataset ds, unused1, unused2;
    load_synthetic(RESUME_N, 0, &ds, &unused1, &unused2);
    lipc_train_state ref;
    straight_run(&m, &ds, test_tmp_path("straight.safetensors"), test_tmp_path("straight.jsonl"), &ref);

    lipc_train_options o = options_for(m.g, &ds);
    o.epochs = RESUME_EPOCHS;
    o.out = test_tmp_path("stopped.safetensors");
    o.metrics = test_tmp_path("stopped.jsonl");
    long per_epoch = RESUME_N / o.batch, total = per_epoch * RESUME_EPOCHS;
    cr_assert_lt(k, total);

    /* The interrupted run. */
    stopper s;
    lipc_model_ops ops = stopper_ops(&s, &m.c->ops, k);
    o.stop = &s.flag;
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &st), LIPC_OK);
    lipc_train_result res;
    cr_assert_eq(train(&m, &ops, &ds, &o, NULL, &st, &res), LIPC_OK);
    cr_expect(res.interrupted);
    cr_expect_eq(res.steps, k, "stopped after %ld steps, not %ld", res.steps, k);
    cr_expect_eq(res.epochs, (int)(k / per_epoch));
    expect_no_temporaries();

    /* Its checkpoint holds exactly the state it stopped with. */
    lipc_st_file f = read_st(o.out);
    char want[32];
    snprintf(want, sizeof want, "%ld", k);
    cr_expect_str_eq(lipc_st_meta_get(&f, "step"), want);
    snprintf(want, sizeof want, "%ld", k / per_epoch);
    cr_expect_str_eq(lipc_st_meta_get(&f, "epoch"), want);
    lipc_st_free(&f);
    lipc_train_state back;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &back), LIPC_OK);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_checkpoint_load(o.out, &m.c->desc, &back, true, &d), LIPC_OK);
    lipc_diags_free(&d);
    cr_expect(same_state(&m.c->desc, &st, &back), "the checkpoint is not the stopped state");
    lipc_train_state_free(&back);
    lipc_train_state_free(&st);

    /* Resumed in a fresh state, to the end, without the stopper. */
    o.stop = NULL;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &st), LIPC_OK);
    cr_assert_eq(train(&m, &m.c->ops, &ds, &o, test_tmp_path("stopped.safetensors"), &st, &res),
                 LIPC_OK);
    cr_expect(!res.interrupted);
    cr_expect_eq(res.steps, total - k);
    cr_expect_eq(res.epochs, RESUME_EPOCHS);
    cr_expect(same_state(&m.c->desc, &st, &ref), "resumed state differs from the straight run");
    expect_same_checkpoint(test_tmp_path("straight.safetensors"), test_tmp_path("stopped.safetensors"));
    expect_no_temporaries();

    /* The metrics log was appended to: one line per epoch, in order; the
     * epochs after the one cut in two report the straight run's numbers. */
    json_t *a = read_jsonl(test_tmp_path("straight.jsonl")), *b = read_jsonl(test_tmp_path("stopped.jsonl"));
    cr_assert_eq(json_array_size(b), (size_t)RESUME_EPOCHS);
    for (int e = 0; e < RESUME_EPOCHS; e++) {
        const json_t *la = json_array_get(a, (size_t)e), *lb = json_array_get(b, (size_t)e);
        cr_expect_eq((int)num(lb, "epoch"), e + 1);
        if (e == k / per_epoch && k % per_epoch)
            continue; /* the cut epoch: its line averages the resumed steps only */
        static const char *const same[] = {"step", "loss", "acc", "cert", "K_sub", "eps", "lr"};
        for (size_t q = 0; q < sizeof same / sizeof same[0]; q++)
            cr_expect_eq(num(la, same[q]), num(lb, same[q]), "epoch %d: %s", e + 1, same[q]);
    }
    json_decref(a);
    json_decref(b);
    lipc_train_state_free(&st);
    lipc_train_state_free(&ref);
    lipc_dataset_free(&ds);
    free_model(&m);
}

Test(run, resume_at_an_epoch_boundary_is_bit_for_bit)
{
    stop_and_resume(RESUME_N / 32 * RESUME_EPOCHS / 2, false); /* half way: after epoch 2 */
}

Test(run, resume_in_the_middle_of_an_epoch_is_bit_for_bit)
{
    stop_and_resume(RESUME_N / 32 + 5, false); /* 5 steps into epoch 2 */
}

/* With scaled kernels the checkpoint also carries their a and U (and
 * moments), and the resumed run is still the straight one. */
Test(run, resume_with_scaled_kernels_is_bit_for_bit)
{
    stop_and_resume(RESUME_N / 32 + 5, true);
}

/* A run without scaled kernels, resumed with them: a = 1 and U = V / s from
 * its weights, with a warning, and the weights are kept as they were (to
 * the rounding of V = s a U). */
Test(run, resume_without_scaled_state_starts_it_from_the_weights)
{
    model plain = load_model(SYN_MODEL, NULL), scaled = load_model_as(SYN_MODEL, NULL, true);
    lipc_dataset ds, u1, u2;
    load_synthetic(RESUME_N, 0, &ds, &u1, &u2);
    lipc_train_state a, b;
    straight_run(&plain, &ds, test_tmp_path("plain.safetensors"), NULL, &a);
    const lipc_model_desc *m = &scaled.c->desc;
    cr_assert_eq(m->n_scaled, 2);
    cr_assert_eq(lipc_train_state_alloc(m, &b), LIPC_OK);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_checkpoint_load(test_tmp_path("plain.safetensors"), m, &b, true, &d),
                 LIPC_OK);
    char *text = diag_text(&d);
    cr_expect(strstr(text, "no a and U of the scaled kernels") != NULL, "%s", text);
    free(text);
    lipc_diags_free(&d);
    for (int i = 0; i < m->n_scaled; i++) {
        const lipc_scaled *k = &m->scaled[i];
        for (int o = 0; o < k->rows; o++)
            cr_expect_eq(b.params[k->gain + (size_t)o], 1.0f);
        for (size_t j = 0; j < k->numel; j++) {
            double v = a.params[k->offset + j];
            cr_expect_leq(fabs(b.params[k->offset + j] - v), 2e-7 * fabs(v));
            cr_expect_leq(fabs(b.params[k->base + j] * k->s - v), 2e-7 * fabs(v));
        }
    }
    lipc_train_state_free(&a);
    lipc_train_state_free(&b);
    lipc_dataset_free(&ds);
    free_model(&plain);
    free_model(&scaled);
}

Test(run, resume_of_a_finished_run_takes_no_step)
{
    model m = load_model(SYN_MODEL, NULL);
    lipc_dataset ds, u1, u2;
    load_synthetic(RESUME_N, 0, &ds, &u1, &u2);
    lipc_train_state ref, st;
    straight_run(&m, &ds, test_tmp_path("a.safetensors"), NULL, &ref);
    lipc_train_options o = options_for(m.g, &ds);
    o.epochs = RESUME_EPOCHS;
    o.out = test_tmp_path("a.safetensors");
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, &st), LIPC_OK);
    lipc_train_result res;
    cr_assert_eq(train(&m, &m.c->ops, &ds, &o, o.out, &st, &res), LIPC_OK);
    cr_expect_eq(res.steps, 0);
    cr_expect_eq(res.epochs, RESUME_EPOCHS);
    cr_expect(same_state(&m.c->desc, &st, &ref));
    lipc_train_state_free(&st);
    lipc_train_state_free(&ref);
    lipc_dataset_free(&ds);
    free_model(&m);
}

/* ---- checkpoints ----------------------------------------------------------------- */

/* One epoch of training into path; returns the model (caller frees). */
static model one_epoch(const char *path, lipc_train_state *st)
{
    model m = load_model(SYN_MODEL, NULL);
    lipc_dataset ds, u1, u2;
    load_synthetic(256, 0, &ds, &u1, &u2);
    lipc_train_options o = options_for(m.g, &ds);
    o.epochs = 1;
    o.out = path;
    cr_assert_eq(lipc_train_state_alloc(&m.c->desc, st), LIPC_OK);
    lipc_train_result res;
    cr_assert_eq(train(&m, &m.c->ops, &ds, &o, NULL, st, &res), LIPC_OK);
    lipc_dataset_free(&ds);
    return m;
}

Test(run, checkpoint_round_trip_is_exact_and_atomic)
{
    const char *p = test_tmp_path("rt.safetensors");
    lipc_train_state st;
    model m = one_epoch(p, &st);
    expect_no_temporaries();

    /* The tensors by name: every parameter, both moments, both vectors of
     * every operator-norm factor; and the metadata. */
    const lipc_model_desc *md = &m.c->desc;
    lipc_st_file f = read_st(p);
    int n_vec = 0;
    for (int i = 0; i < md->n_factors; i++)
        n_vec += md->factors[i].v_len ? 2 : 0;
    cr_expect_eq(f.n, 3 * md->n_params + n_vec);
    cr_expect_eq(n_vec, 10, "syn has 5 operator-norm factors");
    static const char *const names[] = {
        "stem.weight", "head.bias", "optimizer.m.fc.weight", "optimizer.v.neck.bias",
        "power_iteration.stem.v", "power_iteration.blocks.1.residual_0.conv2d_0.u",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const lipc_st_tensor *t = lipc_st_find(&f, names[i]);
        cr_expect(t && t->dtype == LIPC_ST_F32, "no float tensor %s", names[i]);
    }
    const lipc_st_tensor *sw = lipc_st_find(&f, "stem.weight");
    cr_expect(sw->rank == 4 && sw->dims[0] == 8 && sw->dims[1] == 1 && sw->dims[2] == 3 &&
              sw->dims[3] == 3);
    /* stem: 8x8 input, stride 2: v has 1*8*8 values, u 8*4*4 */
    cr_expect_eq(lipc_st_find(&f, "power_iteration.stem.v")->dims[0], 64);
    cr_expect_eq(lipc_st_find(&f, "power_iteration.stem.u")->dims[0], 128);
    cr_expect_str_eq(lipc_st_meta_get(&f, "format"), "lipc-checkpoint-1");
    cr_expect_str_eq(lipc_st_meta_get(&f, "model"), "syn");
    cr_expect_str_eq(lipc_st_meta_get(&f, "step"), "8");
    cr_expect_str_eq(lipc_st_meta_get(&f, "epoch"), "1");
    cr_expect_str_eq(lipc_st_meta_get(&f, "seed"), "1");
    cr_expect_eq(strtod(lipc_st_meta_get(&f, "eps"), NULL), 0.3);
    lipc_st_free(&f);

    /* Loaded back: the same state, bit for bit. */
    lipc_train_state back;
    cr_assert_eq(lipc_train_state_alloc(md, &back), LIPC_OK);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_checkpoint_load(p, md, &back, true, &d), LIPC_OK);
    cr_expect_eq(d.n_warnings + d.n_errors, 0);
    lipc_diags_free(&d);
    cr_expect(same_state(md, &st, &back));
    /* Without the training state: parameters (and vectors) only. */
    lipc_train_state params_only;
    cr_assert_eq(lipc_train_state_alloc(md, &params_only), LIPC_OK);
    lipc_diags_init(&d);
    cr_assert_eq(lipc_checkpoint_load(p, md, &params_only, false, &d), LIPC_OK);
    lipc_diags_free(&d);
    cr_expect(memcmp(params_only.params, st.params, md->n_param_elems * sizeof(float)) == 0);
    cr_expect_eq(params_only.step, 8);

    /* Saving over it again replaces it whole, still without temporaries. */
    back.step = 99;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_checkpoint_save(p, md, &back, NULL, 0, &d), LIPC_OK);
    lipc_diags_free(&d);
    expect_no_temporaries();
    f = read_st(p);
    cr_expect_str_eq(lipc_st_meta_get(&f, "step"), "99");
    cr_expect_null(lipc_st_meta_get(&f, "epoch"));
    lipc_st_free(&f);

    lipc_train_state_free(&params_only);
    lipc_train_state_free(&back);
    lipc_train_state_free(&st);
    free_model(&m);
}

/* Loads p for model m; returns the status and the diagnostics' text. */
static lipc_status load_for(const model *m, const char *p, bool train_state, char **text)
{
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&m->c->desc, &st), LIPC_OK);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = lipc_checkpoint_load(p, &m->c->desc, &st, train_state, &d);
    *text = diag_text(&d);
    lipc_diags_free(&d);
    lipc_train_state_free(&st);
    return s;
}

Test(run, checkpoint_of_another_model_is_rejected)
{
    const char *p = test_tmp_path("w8.safetensors");
    lipc_train_state st;
    model m8 = one_epoch(p, &st);
    lipc_train_state_free(&st);
    char *t;

    /* --set width=4: every conv has other shapes */
    model m4 = load_model(SYN_MODEL, "width=4");
    cr_expect_eq(load_for(&m4, p, false, &t), LIPC_ERR_INPUT);
    cr_expect(strstr(t, "w8.safetensors: error: tensor 'stem.weight' has shape [8, 1, 3, 3]; "
                        "expected [4, 1, 3, 3]"),
              "%s", t);
    free(t);
    free_model(&m4);

    /* --set depth=3: a third block the checkpoint does not have */
    model m3 = load_model(SYN_MODEL, "depth=3");
    cr_expect_eq(load_for(&m3, p, true, &t), LIPC_ERR_INPUT);
    cr_expect(strstr(t, "error: the checkpoint has no tensor 'blocks.2.residual_0.conv2d_0.weight'"),
              "%s", t);
    cr_expect(strstr(t, "these --set values"), "the hint: %s", t);
    free(t);
    free_model(&m3);

    /* another model altogether: every missing tensor is named, up to 10 */
    model mlp = load_model(LIPC_SOURCE_DIR "/tests/models/mlp.yaml", NULL);
    cr_expect_eq(load_for(&mlp, p, false, &t), LIPC_ERR_INPUT);
    cr_expect(strstr(t, "no tensor 'dense_0.weight'") && strstr(t, "no tensor 'dense_1.bias'"),
              "%s", t);
    free(t);
    free_model(&mlp);

    /* The model itself still loads it. */
    cr_expect_eq(load_for(&m8, p, true, &t), LIPC_OK, "%s", t);
    free(t);
    free_model(&m8);
}

Test(run, damaged_checkpoint_is_rejected)
{
    const char *p = test_tmp_path("good.safetensors");
    lipc_train_state st;
    model m = one_epoch(p, &st);
    lipc_train_state_free(&st);
    FILE *f = fopen(p, "rb");
    cr_assert(f);
    static uint8_t bytes[1 << 16];
    size_t len = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    cr_assert(len > 1000 && len < sizeof bytes);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | bytes[i];

    struct {
        const char *what;
        size_t len;         /* bytes kept */
        long at;            /* a byte to overwrite (-1: none) */
        uint8_t value;
        const char *want;   /* in the diagnostic */
    } cases[] = {
        {"truncated data", len - 5, -1, 0, "bad.safetensors: error:"},
        {"truncated header", 8 + hlen / 2, -1, 0, "bad.safetensors: error:"},
        {"empty", 0, -1, 0, "bad.safetensors: error:"},
        {"header length too large", len, 5, 0x7f, "bad.safetensors: error:"},
        {"header JSON broken", len, 8, '[', "bad.safetensors: error:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *bad = test_tmp_path("bad.safetensors");
        FILE *o = fopen(bad, "wb");
        cr_assert(o);
        uint8_t save = bytes[cases[i].at >= 0 ? cases[i].at : 0];
        if (cases[i].at >= 0)
            bytes[cases[i].at] = cases[i].value;
        cr_assert(cases[i].len == 0 || fwrite(bytes, 1, cases[i].len, o) == cases[i].len);
        fclose(o);
        if (cases[i].at >= 0)
            bytes[cases[i].at] = save;
        char *t;
        lipc_status s = load_for(&m, bad, true, &t);
        cr_expect(s == LIPC_ERR_INPUT || s == LIPC_ERR_IO, "%s: accepted", cases[i].what);
        cr_expect(strstr(t, cases[i].want), "%s: %s", cases[i].what, t);
        free(t);
    }
    free_model(&m);
}

Test(run, python_reads_the_checkpoint)
{
    if (system("python3 -c pass >/dev/null 2>&1") != 0)
        cr_skip_test("python3 is not available");
    const char *p = test_tmp_path("py.safetensors");
    lipc_train_state st;
    model m = one_epoch(p, &st);
    /* The C side: the sum of fc.weight and of the stem's power-iteration v,
     * from the state in memory. */
    const lipc_model_desc *md = &m.c->desc;
    double sum_fc = 0.0, sum_v = 0.0;
    for (int i = 0; i < md->n_params; i++)
        if (!strcmp(md->params[i].name, "fc.weight"))
            for (size_t k = 0; k < md->params[i].numel; k++)
                sum_fc += st.params[md->params[i].offset + k];
    for (int i = 0; i < md->n_factors; i++)
        if (!strcmp(md->factors[i].name, "stem"))
            for (size_t k = 0; k < md->factors[i].v_len; k++)
                sum_v += st.vec[md->factors[i].v_offset + k];
    cr_assert(sum_fc != 0.0 && sum_v != 0.0);

    /* The published format, read with struct + json only. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 -c '\n"
             "import json, struct, sys\n"
             "b = open(sys.argv[1], \"rb\").read()\n"
             "n = struct.unpack(\"<Q\", b[:8])[0]\n"
             "h = json.loads(b[8:8 + n])\n"
             "base = 8 + n\n"
             "def tensor(k):\n"
             "    assert h[k][\"dtype\"] == \"F32\"\n"
             "    s, e = h[k][\"data_offsets\"]\n"
             "    return struct.unpack(\"<%%df\" %% ((e - s) // 4), b[base + s:base + e])\n"
             "meta = h[\"__metadata__\"]\n"
             "assert meta[\"format\"] == \"lipc-checkpoint-1\" and meta[\"step\"] == \"8\"\n"
             "assert h[\"fc.weight\"][\"shape\"] == [32, 64]\n"
             "assert len(tensor(\"optimizer.v.fc.weight\")) == 32 * 64\n"
             "print(\"%%.17g %%.17g\" %% (sum(tensor(\"fc.weight\")), "
             "sum(tensor(\"power_iteration.stem.v\"))))\n"
             "' '%s' 2>&1",
             p);
    FILE *pipe = popen(cmd, "r");
    cr_assert(pipe);
    char out[1024] = "";
    size_t n = fread(out, 1, sizeof out - 1, pipe);
    out[n] = '\0';
    int rc = pclose(pipe);
    cr_assert_eq(rc, 0, "python failed:\n%s", out);
    double py_fc, py_v;
    cr_assert_eq(sscanf(out, "%lf %lf", &py_fc, &py_v), 2, "python said: %s", out);
    /* both sum the same floats in the same order, in double */
    cr_expect_eq(py_fc, sum_fc, "fc.weight: python %.17g, C %.17g", py_fc, sum_fc);
    cr_expect_eq(py_v, sum_v, "power_iteration.stem.v: python %.17g, C %.17g", py_v, sum_v);
    lipc_train_state_free(&st);
    free_model(&m);
}
