/* cli/run.c: the commands that run a model: train, certify, bound.
 *
 * Each compiles the model file for a target (backend/), then hands the
 * runtime the description and entry points (runtime/): the training loop,
 * checkpoints and the certifier live there, so a built executable will run
 * the same code. With --json, one JSON object with the results is printed on
 * stdout at the end; progress and diagnostics go to stderr.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli/internal.h"
#include "runtime/report.h"
#include "runtime/runtime.h"

/* ---- options shared by the three commands ------------------------------------ */

typedef struct run_args {
    const char *cmd;
    const char *file;
    lipc_override sets[CLI_MAX_SETS];
    int n_sets;
    const char *target;
    int threads;                /* cpu target: 0 = one per core */
    bool portable, no_tf32;
    const char *data;
    long limit;
    const char *weights;        /* certify, bound */
    bool json;
    /* train */
    int epochs, batch;
    const char *loss;
    double eps, lr;
    long seed;
    bool seed_given;
    const char *out, *resume, *metrics;
    int val, val_every;
    bool no_augment, no_report;
    /* certify */
    const char *report;
    double eps_list[LIPC_CERT_MAX_EPS];
    int n_eps;
    const char *bound;
    /* bound */
    int iters;
    double tol;
    int lower;
} run_args;

static bool parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno)
        return false;
    *out = v;
    return true;
}

/* "--name=value" or "--name value": the value, advancing *i; NULL if a is not
 * this option. *missing is set when the option has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    const char *a = argv[*i];
    size_t len = strlen(name);
    if (strncmp(a, name, len) != 0)
        return NULL;
    if (a[len] == '=')
        return a + len + 1;
    if (a[len] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

static int parse_eps_list(run_args *r, const char *text)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    r->n_eps = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        double v;
        if (r->n_eps == LIPC_CERT_MAX_EPS)
            return cli_usage_error(r->cmd, "--eps takes at most %d radii", LIPC_CERT_MAX_EPS);
        if (!parse_double(tok, &v) || v < 0)
            return cli_usage_error(r->cmd, "--eps takes radii >= 0, got '%s'", tok);
        /* A radius given twice would be a duplicate key of certify's "vra"
         * object in --json output. */
        for (int k = 0; k < r->n_eps; k++)
            if (r->eps_list[k] == v)
                return cli_usage_error(r->cmd, "--eps lists the radius %g twice", v);
        r->eps_list[r->n_eps++] = v;
    }
    if (r->n_eps == 0)
        return cli_usage_error(r->cmd, "--eps needs at least one radius");
    return 0;
}

/* A whole-number option in [lo, hi]: 0 with *out set, or the usage error. */
static int count_value(const run_args *r, const char *opt, const char *v, long lo, long hi,
                       const char *what, long *out)
{
    if (!parse_long(v, out) || *out < lo || *out > hi)
        return cli_usage_error(r->cmd, "%s takes %s, got '%s'", opt, what, v);
    return 0;
}

/* Parses argv; returns -1 to go on, or an exit status (help, usage error). */
static int parse_args(run_args *r, int argc, char **argv, const char *usage)
{
    for (int i = 0; i < argc; i++) {
        char *a = argv[i];
        bool missing = false;
        const char *v;
        long l;
        double x;
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            r->json = true;
        } else if (!strcmp(a, "--no-report")) {
            r->no_report = true;
        } else if ((v = opt_value(argc, argv, &i, "--report", &missing))) {
            r->report = v;
        } else if (!strcmp(a, "--no-augment")) {
            r->no_augment = true;
        } else if ((v = opt_value(argc, argv, &i, "--set", &missing))) {
            if (cli_embedded_text)
                return cli_usage_error(r->cmd, "this executable is compiled for fixed parameters; "
                                               "build another with lipc build --set %s", v);
            char *copy = (char *)v;
            if ((rc = cli_parse_set(r->cmd, copy, r->sets, &r->n_sets)))
                return rc;
        } else if ((v = opt_value(argc, argv, &i, "--target", &missing))) {
            r->target = v;
        } else if ((v = opt_value(argc, argv, &i, "--data", &missing))) {
            r->data = v;
        } else if ((v = opt_value(argc, argv, &i, "--weights", &missing))) {
            r->weights = v;
        } else if ((v = opt_value(argc, argv, &i, "--out", &missing))) {
            r->out = v;
        } else if ((v = opt_value(argc, argv, &i, "--resume", &missing))) {
            r->resume = v;
        } else if ((v = opt_value(argc, argv, &i, "--metrics", &missing))) {
            r->metrics = v;
        } else if ((v = opt_value(argc, argv, &i, "--loss", &missing))) {
            r->loss = v;
        } else if ((v = opt_value(argc, argv, &i, "--bound", &missing))) {
            r->bound = v;
        } else if ((v = opt_value(argc, argv, &i, "--limit", &missing))) {
            if ((rc = count_value(r, "--limit", v, 1, LONG_MAX, "a positive count", &l)))
                return rc;
            r->limit = l;
        } else if ((v = opt_value(argc, argv, &i, "--epochs", &missing))) {
            if ((rc = count_value(r, "--epochs", v, 1, 100000, "a positive count", &l)))
                return rc;
            r->epochs = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--batch", &missing))) {
            if ((rc = count_value(r, "--batch", v, 1, 1000000, "a positive count", &l)))
                return rc;
            r->batch = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--seed", &missing))) {
            if ((rc = count_value(r, "--seed", v, 0, LONG_MAX, "a count >= 0", &l)))
                return rc;
            r->seed = l;
            r->seed_given = true;
        } else if ((v = opt_value(argc, argv, &i, "--val", &missing))) {
            if ((rc = count_value(r, "--val", v, 0, 10000000, "a count >= 0", &l)))
                return rc;
            r->val = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--val-every", &missing))) {
            if ((rc = count_value(r, "--val-every", v, 1, 100000, "a positive count", &l)))
                return rc;
            r->val_every = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--threads", &missing))) {
            if ((rc = count_value(r, "--threads", v, 1, LIPC_POOL_MAX_THREADS, "a positive count",
                                  &l)))
                return rc;
            r->threads = (int)l;
        } else if (!strcmp(a, "--portable")) {
            r->portable = true;
        } else if (!strcmp(a, "--no-tf32")) {
            r->no_tf32 = true;
        } else if ((v = opt_value(argc, argv, &i, "--lower", &missing))) {
            if ((rc = count_value(r, "--lower", v, 1, 10000000, "a positive count", &l)))
                return rc;
            r->lower = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--iters", &missing))) {
            if ((rc = count_value(r, "--iters", v, 1, 100000000, "a positive count", &l)))
                return rc;
            r->iters = (int)l;
        } else if ((v = opt_value(argc, argv, &i, "--tol", &missing))) {
            if (!parse_double(v, &x) || x < 0)
                return cli_usage_error(r->cmd, "--tol takes a number >= 0, got '%s'", v);
            r->tol = x;
        } else if ((v = opt_value(argc, argv, &i, "--lr", &missing))) {
            if (!parse_double(v, &x) || x <= 0)
                return cli_usage_error(r->cmd, "--lr takes a positive number, got '%s'", v);
            r->lr = x;
        } else if ((v = opt_value(argc, argv, &i, "--eps", &missing))) {
            if ((rc = parse_eps_list(r, v)))
                return rc;
            r->eps = r->eps_list[0];
        } else if (missing) {
            return cli_usage_error(r->cmd, "%s needs a value", a);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(r->cmd, "unknown option '%s'", a);
        } else if (r->file || cli_embedded_text) {
            return cli_usage_error(r->cmd, cli_embedded_text
                                               ? "this executable has its model built in; '%s' "
                                                 "is not an option"
                                               : "one model file, please; '%s' is a second", a);
        } else {
            r->file = a;
        }
    }
    if (cli_embedded_text)
        r->file = cli_embedded_name;
    if (!r->file)
        return cli_usage_error(r->cmd, "no model file given");
    return -1;
}

/* The model compiled for the target; NULL (after diagnostics) on failure. */
static lipc_compiled *compile_for(const run_args *r, lipc_graph **g, int *rc)
{
    lipc_pipeline_options po = {.verify = true};
    lipc_status st = cli_compile(r->file, r->sets, r->n_sets, &po, g);
    if (st != LIPC_OK) {
        *rc = cli_status_exit(st);
        return NULL;
    }
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_compiled *c = NULL;
    lipc_cpu_options co = {.threads = r->threads, .portable = r->portable,
                           .no_tf32 = r->no_tf32};
    st = lipc_compile_target(*g, r->target, &co, &d, &c);
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    if (st != LIPC_OK) {
        *rc = st == LIPC_ERR_UNSUPPORTED ? CLI_EXIT_USAGE : cli_status_exit(st);
        lipc_graph_free(*g);
        *g = NULL;
        return NULL;
    }
    return c;
}

static lipc_status load_data(const run_args *r, lipc_split split, lipc_dataset *ds)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status st = lipc_dataset_load(r->data, split, r->limit, ds, &d);
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    return st;
}

/* Loads --weights into a state for m (parameters and vectors). */
static lipc_status load_weights(const char *path, const lipc_model_desc *m,
                                lipc_train_state *st)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = lipc_train_state_alloc(m, st);
    if (s == LIPC_OK)
        s = lipc_checkpoint_load(path, m, st, false, &d);
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    return s;
}

/* --weights into st, then the test split into test, checked against the
 * model (certify, predict). */
static lipc_status load_weights_and_test(const run_args *r, const lipc_model_desc *m,
                                         lipc_train_state *st, lipc_dataset *test,
                                         lipc_diags *d)
{
    lipc_status s = load_weights(r->weights, m, st);
    if (s == LIPC_OK)
        s = load_data(r, LIPC_SPLIT_TEST, test);
    if (s == LIPC_OK && !lipc_dataset_fits(m, test, d))
        s = LIPC_ERR_INPUT;
    return s;
}

/* ---- train -------------------------------------------------------------------- */

static const char *usage_train =
    "usage: lipc train FILE [options]\n"
    "\n"
    "Trains the model with certified training (METHOD.md: EMMA by default) and\n"
    "writes a checkpoint after every epoch. Defaults come from the model's\n"
    "`train:` section; options override them.\n"
    "\n"
    "options:\n"
    "  --data NAME|PATH    fashion-mnist (default), mnist, cifar10, cifar100,\n"
    "                      synthetic[:N], or a directory of IDX / CIFAR binary files\n"
    "  --limit N           use the first N examples of the training split\n"
    "  --val N             hold out the last N training examples for validation\n"
    "  --val-every E       validate every E epochs (default: at the end)\n"
    "  --epochs N, --batch B, --lr LR, --eps EPS, --seed S\n"
    "  --loss emma|margin|gloro|trades\n"
    "  --no-augment        no random crop or flip\n"
    "  --out PATH          checkpoint (default: NAME.safetensors)\n"
    "  --metrics PATH      JSON lines, one per epoch (default: OUT with .metrics.jsonl)\n"
    "  --no-report         do not draw the training curves (PREFIX-training.svg\n"
    "                      beside the metrics, with gnuplot)\n"
    "  --resume PATH       continue a run from its checkpoint\n"
    "  --target T          the backend: cpu (default) compiles the model with\n"
    "                      LLVM for this machine; cuda for the first NVIDIA GPU\n"
    "                      (CUDA C through NVRTC); ref is the reference\n"
    "                      interpreter in double, ref-f32 the same storing floats;\n"
    "                      cuda-emulator runs the cuda target's kernels on the CPU\n"
    "                      (slow: for checking it without a GPU)\n"
    "  --threads N         cpu target: threads (default: one per core)\n"
    "  --portable          cpu target: code for any AVX2 CPU, not this one's features\n"
    "  --no-tf32           cuda target: plain float convolutions in training too\n"
    "                      (TensorFloat-32 is never used for inference)\n"
    "  --set KEY=VALUE     override a parameter of the model\n"
    "  --json              print the results as one JSON object on stdout\n";

static volatile int interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* The index of a loss name in lipc_loss_names; -1 when unknown. */
static int loss_index(const char *name)
{
    for (int i = 0; lipc_loss_names[i]; i++)
        if (!strcmp(lipc_loss_names[i], name))
            return i;
    return -1;
}

/* The training options: the model's train: section, then the command line
 * (--loss was validated by cli_train). */
static void train_options(const run_args *r, const lipc_graph *g, const lipc_dataset *train,
                          lipc_train_options *o)
{
    const lipc_train_spec *t = &g->train;
    memset(o, 0, sizeof *o);
    o->epochs = r->epochs ? r->epochs : t->epochs;
    o->batch = r->batch ? r->batch : t->batch;
    o->hyper = (lipc_hyper){
        .loss = t->loss, .optimizer = t->optimizer, .lr = r->lr > 0 ? r->lr : t->lr,
        .eps = r->n_eps ? r->eps : t->eps, .weight_decay = t->weight_decay,
        .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8, .momentum = t->momentum,
        .clip = t->clip, .trades_lambda = t->trades_lambda, .power_iters = t->power_iters,
    };
    if (r->loss)
        o->hyper.loss = loss_index(r->loss);
    o->eps_start = t->eps_start;
    o->eps_end = t->eps_end;
    o->eps_ramp = t->eps_ramp;
    o->warmup_epochs = t->warmup_epochs;
    o->seed = r->seed_given ? (uint64_t)r->seed : (uint64_t)t->seed;
    /* Augmentation: the dataset's defaults unless the model says otherwise. */
    lipc_augment_defaults(train->name, &o->aug);
    if (lipc_train_given(t, "crop"))
        o->aug.crop = t->augment_crop;
    if (lipc_train_given(t, "crop_pad"))
        o->aug.crop_pad = t->crop_pad;
    if (lipc_train_given(t, "flip"))
        o->aug.flip = t->augment_flip;
    if (r->no_augment)
        o->aug.crop = o->aug.flip = false;
    o->val_every = r->val_every;
}

static void print_train_json(const lipc_graph *g, const lipc_train_options *o,
                             const lipc_train_result *res, const char *out)
{
    printf("{\"model\": \"%s\", \"epochs\": %d, \"steps\": %ld, \"seconds\": %.3f, "
           "\"images_per_s\": %.2f, \"loss\": %.9g, \"train_acc\": %.6f, \"train_cert\": %.6f, "
           "\"k_sub\": %.9g, \"eps\": %.9g, \"checkpoint\": \"%s\", \"interrupted\": %s",
           g->name, res->epochs, res->steps, res->seconds, res->images_per_s, res->train_loss,
           res->train_acc, res->train_cert, res->k_sub, o->hyper.eps, out,
           res->interrupted ? "true" : "false");
    if (!isnan(res->val_acc))
        printf(", \"val_acc\": %.6f, \"val_vra\": %.6f, \"val_k_sub\": %.9g", res->val_acc,
               res->val_vra, res->val_k_sub);
    printf("}\n");
}

int cli_train(int argc, char **argv)
{
    run_args r = {.cmd = "train", .target = "cpu", .data = "fashion-mnist"};
    int rc = parse_args(&r, argc, argv, usage_train);
    if (rc >= 0)
        return rc;
    /* train takes one radius; it used to keep the first of a list silently. */
    if (r.n_eps > 1)
        return cli_usage_error(r.cmd, "--eps takes one radius for training (certify takes "
                                      "a list)");
    /* An unknown --loss is a usage error (exit 2, with the list), found before
     * the model is compiled and the data loaded. (train_options used to find
     * it after loading, and its usage status became exit 1.) */
    if (r.loss && loss_index(r.loss) < 0)
        return cli_usage_error(r.cmd, "--loss takes emma, margin, gloro or trades, got '%s'",
                               r.loss);
    lipc_graph *g = NULL;
    lipc_compiled *c = compile_for(&r, &g, &rc);
    if (!c)
        return rc;
    lipc_dataset all = {0}, train = {0}, val = {0};
    lipc_train_state st = {0};
    lipc_train_options o;
    char out_buf[1024], metrics_buf[1100];
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = load_data(&r, LIPC_SPLIT_TRAIN, &all);
    if (s != LIPC_OK)
        goto done;
    if (r.val > 0) {
        if (r.val >= all.n) {
            lipc_diag_error(&d, LIPC_NO_LOC, "--val %d leaves no training data (%d examples)",
                            r.val, all.n);
            s = LIPC_ERR_INPUT;
            goto done;
        }
        if ((s = lipc_dataset_split(&all, r.val, &train, &val)) != LIPC_OK)
            goto done;
    }
    const lipc_dataset *tr = r.val > 0 ? &train : &all;
    train_options(&r, g, tr, &o);
    snprintf(out_buf, sizeof out_buf, "%s.safetensors", g->name);
    o.out = r.out ? r.out : out_buf;
    /* OUT minus a trailing ".safetensors" (a suffix only: strstr found the
     * first ".safetensors" anywhere and cut 12 characters off the end even
     * when it was not the suffix, e.g. "a.safetensors.bak"). */
    size_t out_len = strlen(o.out);
    if (out_len >= 12 && strcmp(o.out + out_len - 12, ".safetensors") == 0)
        out_len -= 12;
    snprintf(metrics_buf, sizeof metrics_buf, "%.*s.metrics.jsonl", (int)out_len, o.out);
    o.metrics = r.metrics ? r.metrics : metrics_buf;
    o.val = r.val > 0 ? &val : NULL;

    if (c->desc.n_scaled > 0 && strncmp(c->ops.backend, "cuda", 4) == 0) {
        lipc_diag_msg *m = lipc_diag_error(&d, LIPC_NO_LOC, "the %s target does not train "
                                           "scaled kernels (train: scaled_residuals) yet",
                                           c->ops.backend);
        lipc_diag_hint(m, "train with --target cpu, or turn scaled_residuals off");
        s = LIPC_ERR_UNSUPPORTED;
        goto done;
    }
    if ((s = lipc_train_state_alloc(&c->desc, &st)) != LIPC_OK)
        goto done;
    if (r.resume)
        s = lipc_checkpoint_load(r.resume, &c->desc, &st, true, &d);
    else
        s = lipc_init_params(&c->desc, o.seed, st.params);
    if (s != LIPC_OK)
        goto done;
    if (!lipc_dataset_fits(&c->desc, tr, &d)) {
        s = LIPC_ERR_INPUT;
        goto done;
    }
    char aug[64] = "no augmentation", crop[32] = "";
    if (o.aug.crop)
        snprintf(crop, sizeof crop, "random crop (padding %d)", o.aug.crop_pad);
    if (o.aug.crop || o.aug.flip)
        snprintf(aug, sizeof aug, "%s%s%s", crop, o.aug.crop && o.aug.flip ? ", " : "",
                 o.aug.flip ? "random flip" : "");
    fprintf(stderr,
            "lipc train: %s on %s (%d examples%s; %s), %d epochs of batch %d, %s loss at eps "
            "%g, target %s\n",
            g->name, tr->name, tr->n, r.val > 0 ? ", held-out validation" : "", aug, o.epochs,
            o.batch, lipc_loss_names[o.hyper.loss], o.hyper.eps, c->ops.backend);
    if (strcmp(c->ops.backend, "cpu") == 0)
        fprintf(stderr, "lipc train: compiled for this CPU in %.2f s, %d threads\n",
                lipc_cpu_compile_seconds(c->backend), lipc_cpu_threads(c->backend));
    else if (c->ops.device)
        fprintf(stderr, "lipc train: running on %s\n", c->ops.device);
    if (r.resume) {
        fprintf(stderr, "lipc train: resuming from %s at step %ld\n", r.resume, st.step);
        lipc_resume_check(&st, &o, &d);
        lipc_diags_print(&d, stderr); /* now, not after the run */
        lipc_diags_free(&d);
        lipc_diags_init(&d);
    }
    interrupted = 0;
    o.stop = &interrupted;
    void (*old)(int) = signal(SIGINT, on_sigint);
    lipc_train_result res;
    s = lipc_train_run(&c->desc, &c->ops, tr, &o, &st, &res, &d);
    signal(SIGINT, old);
    if (s == LIPC_OK) {
        fprintf(stderr,
                "lipc train: %s after %d epoch%s (%ld steps in %.1f s, %.1f images/s): loss %.4f, "
                "train accuracy %.4f, certified at the training radius %.4f, K_sub %.4g\n",
                res.interrupted ? "interrupted" : "done", res.epochs, res.epochs == 1 ? "" : "s",
                res.steps, res.seconds, res.images_per_s, res.train_loss, res.train_acc,
                res.train_cert, res.k_sub);
        if (!isnan(res.val_acc))
            fprintf(stderr, "lipc train: validation: accuracy %.4f, VRA at eps %g %.4f "
                            "(K_sub estimate %.4g)\n",
                    res.val_acc, o.hyper.eps, res.val_vra, res.val_k_sub);
        fprintf(stderr, "lipc train: checkpoint %s, metrics %s\n", o.out, o.metrics);
        if (!r.no_report && res.epochs > 0) {
            /* the curves beside the metrics; a failure here loses nothing */
            char prefix[1100];
            snprintf(prefix, sizeof prefix, "%.*s", (int)lipc_report_stem(o.metrics), o.metrics);
            lipc_diags rd;
            lipc_diags_init(&rd);
            if (lipc_report_training(o.metrics, prefix, &rd) == LIPC_OK && !rd.n_warnings)
                fprintf(stderr, "lipc train: report %s-training.svg\n", prefix);
            lipc_diags_print(&rd, stderr);
            lipc_diags_free(&rd);
        }
        if (r.json)
            print_train_json(g, &o, &res, o.out);
    }
done:
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    lipc_train_state_free(&st);
    lipc_dataset_free(&all);
    lipc_dataset_free(&train);
    lipc_dataset_free(&val);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    if (s == LIPC_OK && interrupted)
        return 130; /* the shell's convention for SIGINT */
    return cli_status_exit(s);
}

/* ---- bound -------------------------------------------------------------------- */

static const char *usage_bound =
    "usage: lipc bound FILE --weights W [options]\n"
    "\n"
    "Per layer: the power-iteration estimate of its operator norm (run to\n"
    "convergence from the checkpoint's vectors; it converges from below), the\n"
    "sound upper bound (docs/soundness.md), their ratio, the method and the\n"
    "time; the products K_sub for the whole network; the head's pair bounds.\n"
    "With --lower N, an empirical lower bound on the Lipschitz constant over N\n"
    "test points, to show how tight the certificate's bound is.\n"
    "\n"
    "options:\n"
    "  --iters N           power iterations at most per layer (default 2000)\n"
    "  --tol T             stop when sigma moves less than T (default 1e-7)\n"
    "  --lower N           empirical lower bound over the first N test points\n"
    "  --data NAME|PATH    the data for --lower (default fashion-mnist)\n"
    "  --set KEY=VALUE, --target cpu|cuda|ref|ref-f32, --threads N, --portable, --json\n";

/* K_sub and the per-factor report, by power iteration to convergence. */
static lipc_status run_bound(const lipc_compiled *c, lipc_train_state *st, int iters, double tol,
                             lipc_bound_report *rep)
{
    return c->ops.lipschitz(c->ops.ctx, st->params, st->vec, iters, tol, rep);
}

static const char *factor_kind(lipc_factor_kind k)
{
    switch (k) {
    case LIPC_FACTOR_CONV: return "conv";
    case LIPC_FACTOR_DENSE: return "dense";
    case LIPC_FACTOR_CONST: return "const";
    case LIPC_FACTOR_LOOSE: return "loose";
    }
    return "?";
}

/* The sound K_sub and the per-factor bounds; diagnostics to stderr. */
static lipc_status sound_k(const lipc_model_desc *m, const float *params,
                           lipc_sound_bound *per, double *k)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = lipc_model_sound_bounds(m, params, per, k, &d);
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    return s;
}

int cli_bound(int argc, char **argv)
{
    run_args r = {.cmd = "bound", .target = "cpu", .iters = 2000, .tol = 1e-7,
                  .data = "fashion-mnist"};
    int rc = parse_args(&r, argc, argv, usage_bound);
    if (rc >= 0)
        return rc;
    if (!r.weights)
        return cli_usage_error("bound", "--weights is required");
    lipc_graph *g = NULL;
    lipc_compiled *c = compile_for(&r, &g, &rc);
    if (!c)
        return rc;
    const lipc_model_desc *m = &c->desc;
    lipc_train_state st = {0};
    lipc_dataset data = {0};
    lipc_lower_bound lower = {0};
    lipc_bound_report *rep = lipc_calloc((size_t)m->n_factors + 1, sizeof *rep);
    lipc_sound_bound *sb = lipc_calloc((size_t)m->n_factors + 1, sizeof *sb);
    double *kpair = lipc_malloc(sizeof(double) * (size_t)m->classes * (size_t)m->classes);
    lipc_status s = rep && sb && kpair ? load_weights(r.weights, m, &st) : LIPC_ERR_NOMEM;
    double t0 = lipc_now();
    if (s == LIPC_OK)
        s = run_bound(c, &st, r.iters, r.tol, rep);
    double seconds = lipc_now() - t0, k_sound = NAN;
    t0 = lipc_now();
    if (s == LIPC_OK)
        s = sound_k(m, st.params, sb, &k_sound);
    double sound_seconds = lipc_now() - t0;
    if (s == LIPC_OK)
        s = lipc_head_kpair(m, st.params, 1.0, kpair);
    /* NaN or Inf weights: an error (exit 1), as in certify. */
    bool finite = s == LIPC_OK && isfinite(rep[m->n_factors].value);
    for (int i = 0; finite && i < m->classes * m->classes; i++)
        finite = isfinite(kpair[i]);
    if (s == LIPC_OK && !finite) {
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_diag_error(&d, LIPC_NO_LOC, "K_sub is %g%s: the weights in %s hold NaN or Inf",
                        rep[m->n_factors].value, isfinite(rep[m->n_factors].value)
                                                     ? " but a head pair bound is not finite"
                                                     : "",
                        r.weights);
        lipc_diags_print(&d, stderr);
        lipc_diags_free(&d);
        s = LIPC_ERR_INPUT;
    }
    if (s == LIPC_OK && r.lower > 0) {
        s = load_data(&r, LIPC_SPLIT_TEST, &data);
        if (s == LIPC_OK) {
            lipc_diags d;
            lipc_diags_init(&d);
            if (!lipc_dataset_fits(m, &data, &d))
                s = LIPC_ERR_INPUT;
            lipc_diags_print(&d, stderr);
            lipc_diags_free(&d);
        }
        if (s == LIPC_OK)
            s = lipc_empirical_lower_bound(m, &c->ops, st.params, &data, r.lower, &lower);
    }
    if (s == LIPC_OK) {
        double k = rep[m->n_factors].value;
        double lo = INFINITY, hi = 0.0;
        for (int j = 0; j < m->classes; j++)
            for (int i = 0; i < m->classes; i++)
                if (i != j) {
                    lo = fmin(lo, kpair[j * m->classes + i]);
                    hi = fmax(hi, kpair[j * m->classes + i]);
                }
        if (r.json) {
            printf("{\"model\": \"%s\", \"k_sub\": %.17g, \"k_sub_sound\": %.17g, "
                   "\"seconds\": %.3f, \"sound_seconds\": %.3f, \"layers\": [",
                   g->name, k, k_sound, seconds, sound_seconds);
            for (int f = 0; f < m->n_factors; f++) {
                const lipc_factor_desc *fd = &m->factors[f];
                printf("%s{\"name\": \"%s\", \"kind\": \"%s\", \"method\": \"%s\", "
                       "\"estimate\": %.17g, \"sound\": %.17g, \"sound_method\": \"%s\", "
                       "\"sound_seconds\": %.4f, \"iters\": %d, \"change\": %.3g, "
                       "\"parent\": %d}",
                       f ? ", " : "", fd->name, factor_kind(fd->kind),
                       fd->method ? fd->method : "", rep[f].value, sb[f].value,
                       sb[f].method ? sb[f].method : "", sb[f].seconds, rep[f].iters,
                       rep[f].change, fd->parent);
            }
            printf("], \"head\": {\"min_pair\": %.17g, \"max_pair\": %.17g}", lo, hi);
            if (r.lower > 0)
                printf(", \"lower\": %.17g, \"lower_points\": %ld, \"lower_over_sound\": %.6g",
                       lower.value, lower.evaluated, lower.value / k_sound);
            printf("}\n");
        } else {
            printf("%s: per-layer operator norms\n", g->name);
            printf("  %-34s %-5s %12s %12s %7s  %-22s %8s %6s\n", "layer", "kind", "estimate",
                   "sound", "ratio", "sound method", "seconds", "iters");
            for (int f = 0; f < m->n_factors; f++) {
                const lipc_factor_desc *fd = &m->factors[f];
                printf("  %s%-*s %-5s %12.6g %12.6g %7.4f  %-22s %8.3f %6d\n",
                       fd->parent >= 0 ? "  " : "", fd->parent >= 0 ? 32 : 34, fd->name,
                       factor_kind(fd->kind), rep[f].value, sb[f].value,
                       rep[f].value / sb[f].value, sb[f].method ? sb[f].method : "",
                       sb[f].seconds, rep[f].iters);
            }
            printf("  K_sub: estimate %.6g, sound bound %.6g (ratio %.4f); power iteration "
                   "%.2f s, sound bounds %.2f s\n",
                   k, k_sound, k / k_sound, seconds, sound_seconds);
            printf("  head: ||w_i - w_j|| from %.4g to %.4g over class pairs; pair bounds "
                   "K_sub * ||w_i - w_j|| up to %.4g (sound)\n",
                   lo, hi, k_sound * hi);
            if (r.lower > 0)
                printf("  empirical lower bound over %ld points: %.6g = %.3f of the sound "
                       "K_sub (%.1f s)\n",
                       lower.evaluated, lower.value, lower.value / k_sound, lower.seconds);
        }
    }
    lipc_free(rep);
    lipc_free(sb);
    lipc_free(kpair);
    lipc_dataset_free(&data);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    return cli_status_exit(s);
}

/* ---- certify ------------------------------------------------------------------ */

static const char *usage_certify =
    "usage: lipc certify FILE --weights W --eps E[,E...] [options]\n"
    "\n"
    "Certifies the test split: clean accuracy, verified robust accuracy (VRA) at\n"
    "each radius, K_sub and the distribution of certified radii. A point is\n"
    "certified at eps when f_j - f_i > eps * K_sub * ||w_j - w_i|| for every\n"
    "other class i (strict: ties are never certified).\n"
    "\n"
    "options:\n"
    "  --data NAME|PATH    as for train (default fashion-mnist); the test split\n"
    "  --limit N           the first N test examples\n"
    "  --bound sound       K_sub from sound per-layer upper bounds (default;\n"
    "                      docs/soundness.md)\n"
    "  --bound estimate    K_sub by power iteration, as the published code does: an\n"
    "                      estimate from below, for comparison only; the output\n"
    "                      says the certificates are then not guaranteed\n"
    "  --report PREFIX     draw VRA against eps: PREFIX-vra.svg (with gnuplot), .tsv, .gp\n"
    "  --set KEY=VALUE, --target cpu|cuda|ref|ref-f32, --threads N, --portable, --json\n";

int cli_certify(int argc, char **argv)
{
    run_args r = {.cmd = "certify", .target = "cpu", .data = "fashion-mnist",
                  .bound = "sound", .iters = 2000, .tol = 1e-7};
    int rc = parse_args(&r, argc, argv, usage_certify);
    if (rc >= 0)
        return rc;
    if (!r.weights)
        return cli_usage_error("certify", "--weights is required");
    if (r.n_eps == 0)
        return cli_usage_error("certify", "--eps is required (e.g. --eps 0.1,0.141)");
    bool sound = strcmp(r.bound, "sound") == 0;
    if (!sound && strcmp(r.bound, "estimate") != 0)
        return cli_usage_error("certify", "--bound takes 'sound' or 'estimate', got '%s'",
                               r.bound);
    lipc_graph *g = NULL;
    lipc_compiled *c = compile_for(&r, &g, &rc);
    if (!c)
        return rc;
    const lipc_model_desc *m = &c->desc;
    lipc_train_state st = {0};
    lipc_dataset test = {0};
    lipc_bound_report *rep = lipc_calloc((size_t)m->n_factors + 1, sizeof *rep);
    lipc_cert_summary cs;
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = rep ? load_weights_and_test(&r, m, &st, &test, &d) : LIPC_ERR_NOMEM;
    if (s == LIPC_OK)
        s = run_bound(c, &st, r.iters, r.tol, rep);
    double k_est = rep ? rep[m->n_factors].value : NAN, k_sound = NAN;
    /* each factor's bound (sound or estimated, as K_sub), for the rounding
     * bounds of the one-pass path */
    double *sigma = lipc_calloc((size_t)m->n_factors + 1, sizeof *sigma);
    if (s == LIPC_OK && !sigma)
        s = LIPC_ERR_NOMEM;
    double t_bound = lipc_now();
    if (s == LIPC_OK && sound) {
        if (!r.json)
            fprintf(stderr, "lipc certify: sound bounds on the %d layers' operator norms ...\n",
                    m->n_factors);
        s = lipc_model_sound_sigma(m, st.params, sigma, &k_sound, &d);
    }
    t_bound = lipc_now() - t_bound;
    for (int f = 0; s == LIPC_OK && !sound && f < m->n_factors; f++)
        sigma[f] = rep[f].value;
    double k = sound ? k_sound : k_est;
    if (s == LIPC_OK && !(isfinite(k) && k > 0)) {
        lipc_diag_error(&d, LIPC_NO_LOC, "K_sub is %g: the weights hold NaN or Inf; nothing "
                                         "is certified", k);
        s = LIPC_ERR_INPUT;
    }
    double t0 = lipc_now();
    if (s == LIPC_OK)
        s = lipc_cert_summary_init(&cs, r.n_eps, r.eps_list, 0.0);
    if (s == LIPC_OK)
        s = lipc_certify_dataset(m, &c->ops, st.params, k, sigma, &test, 256, &cs, NULL);
    double seconds = lipc_now() - t0;
    if (s == LIPC_OK && cs.error) {
        lipc_diag_error(&d, LIPC_NO_LOC, "%ld of %ld points had NaN or Inf logits or bounds; "
                                         "they are not certified", cs.n_invalid, cs.n);
        s = LIPC_ERR_INPUT;
    }
    if (s == LIPC_OK) {
        if (r.json) {
            lipc_buf b;
            lipc_buf_init(&b);
            lipc_cert_summary_json(&cs, &b);
            printf("{\"model\": \"%s\", \"data\": \"%s\", \"n\": %ld, \"bound\": \"%s\", "
                   "\"k_sub\": %.17g, \"k_sub_estimate\": %.17g, \"clean_acc\": %.17g, "
                   "\"vra\": {",
                   g->name, test.name, cs.n, sound ? "sound" : "estimate", k, k_est,
                   lipc_cert_clean_accuracy(&cs));
            for (int e = 0; e < cs.n_eps; e++) {
                /* The key: the shortest %g that reads back as the radius
                 * (plain %g turned 0.1411764 and 0.1411765 both into
                 * "0.141176": duplicate keys). "0.1" stays "0.1". */
                char key[32];
                for (int prec = 6; prec <= 17; prec++) {
                    snprintf(key, sizeof key, "%.*g", prec, cs.eps[e]);
                    if (strtod(key, NULL) == cs.eps[e])
                        break;
                }
                printf("%s\"%s\": %.17g", e ? ", " : "", key, lipc_cert_vra(&cs, e));
            }
            printf("}, \"seconds\": %.3f, \"bound_seconds\": %.3f, \"details\": %s}\n",
                   seconds, t_bound, lipc_buf_str(&b));
            lipc_buf_free(&b);
        } else {
            printf("%s on %s (%ld test points)\n", g->name, test.name, cs.n);
            if (sound)
                printf("  bound: K_sub = %.6g, a sound upper bound (power-iteration estimate "
                       "%.6g, ratio %.4f; %.1f s)\n", k, k_est, k_est / k, t_bound);
            else
                printf("  bound: K_sub = %.6g by power iteration -- an ESTIMATE from below, "
                       "as the published code uses: these certificates are not guaranteed\n",
                       k);
            if (cs.rounding_accounted)
                printf("  logits' rounding: accounted (largest error bound %.3g; %ld points "
                       "re-checked with elementwise bounds)\n",
                       cs.max_logit_err, cs.n_refined);
            else
                printf("  logits' rounding: not accounted (the backend gives no error "
                       "bounds)\n");
            printf("  clean accuracy  %.4f\n", lipc_cert_clean_accuracy(&cs));
            for (int e = 0; e < cs.n_eps; e++)
                printf("  VRA at eps %-6g %.4f\n", cs.eps[e], lipc_cert_vra(&cs, e));
            if (cs.n_tie)
                printf("  %ld points had a tie for the top logit (never certified)\n", cs.n_tie);
            printf("  certified radius of correct points:");
            long acc = 0;
            double edges[] = {0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0};
            for (size_t q = 0; q < sizeof edges / sizeof edges[0]; q++) {
                acc = 0;
                for (int bin = (int)(edges[q] / LIPC_CERT_BIN_WIDTH + 0.5);
                     bin < LIPC_CERT_N_BINS; bin++)
                    acc += cs.hist[bin];
                printf(" >=%g: %.3f", edges[q], cs.n ? (double)acc / (double)cs.n : 0.0);
            }
            printf("\n  (%.2f s)\n", seconds);
        }
        if (r.report) {
            double vra[LIPC_CERT_MAX_EPS];
            for (int e = 0; e < cs.n_eps; e++)
                vra[e] = lipc_cert_vra(&cs, e);
            lipc_diags rd;
            lipc_diags_init(&rd);
            if (lipc_report_vra(cs.eps, vra, cs.n_eps, lipc_cert_clean_accuracy(&cs), r.report,
                                &rd) == LIPC_OK &&
                !rd.n_warnings)
                fprintf(stderr, "lipc certify: report %s-vra.svg\n", r.report);
            lipc_diags_print(&rd, stderr);
            lipc_diags_free(&rd);
        }
    }
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    lipc_free(rep);
    lipc_free(sigma);
    lipc_dataset_free(&test);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    return cli_status_exit(s);
}

/* ---- predict ------------------------------------------------------------------ */

static const char *usage_predict =
    "usage: lipc predict FILE --weights W [options]\n"
    "\n"
    "Classifies the test split: one line per image (index, predicted class,\n"
    "label), then the accuracy. Predictions only: `certify` says which are robust.\n"
    "\n"
    "options:\n"
    "  --data NAME|PATH    as for train (default fashion-mnist); the test split\n"
    "  --limit N           the first N test examples\n"
    "  --set KEY=VALUE, --target cpu|cuda|ref|ref-f32, --threads N, --portable\n";

int cli_predict(int argc, char **argv)
{
    run_args r = {.cmd = "predict", .target = "cpu", .data = "fashion-mnist"};
    int rc = parse_args(&r, argc, argv, usage_predict);
    if (rc >= 0)
        return rc;
    if (!r.weights)
        return cli_usage_error("predict", "--weights is required");
    lipc_graph *g = NULL;
    lipc_compiled *c = compile_for(&r, &g, &rc);
    if (!c)
        return rc;
    const lipc_model_desc *m = &c->desc;
    lipc_train_state st = {0};
    lipc_dataset test = {0};
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status s = load_weights_and_test(&r, m, &st, &test, &d);
    int batch = 256, k = m->classes;
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w;
    double *logits = s == LIPC_OK ? lipc_malloc(sizeof(double) * (size_t)batch * (size_t)k) : NULL;
    if (s == LIPC_OK && !logits)
        s = LIPC_ERR_NOMEM;
    long correct = 0;
    for (long b0 = 0; s == LIPC_OK && b0 < test.n; b0 += batch) {
        int n = test.n - b0 < batch ? (int)(test.n - b0) : batch;
        s = c->ops.predict(c->ops.ctx, st.params, n, test.x + (size_t)b0 * in, logits);
        for (int i = 0; s == LIPC_OK && i < n; i++) {
            int best = 0;
            for (int j = 1; j < k; j++)
                if (logits[(size_t)i * k + j] > logits[(size_t)i * k + best])
                    best = j;
            int label = test.y[b0 + i];
            correct += best == label;
            printf("%ld %d %d\n", b0 + i, best, label);
        }
    }
    if (s == LIPC_OK)
        fprintf(stderr, "%s predict: accuracy %.4f on %ld test images\n", cli_program,
                test.n ? (double)correct / (double)test.n : 0.0, (long)test.n);
    lipc_diags_print(&d, stderr);
    lipc_diags_free(&d);
    lipc_free(logits);
    lipc_dataset_free(&test);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
    return cli_status_exit(s);
}
