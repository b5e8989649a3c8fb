/* tests/test_cli_run.c: `lipc train`, `lipc certify` and `lipc bound` as a
 * user runs them, through the built binary.
 *
 * stdout and stderr are captured apart: with --json, stdout must be exactly
 * one JSON object, and progress and diagnostics go to stderr, as plain lines
 * (no '\r': stderr is a file here, not a terminal). Exit statuses: 0 done,
 * 1 bad input (model, data, weights), 2 command-line mistakes, 3 files that
 * cannot be opened, 130 interrupted by Ctrl-C.
 *
 * The models are tests/models/syn.yaml (a tiny LiResNet for synthetic:N) and
 * tests/models/mlp.yaml (dense layers only: its bound estimates are checked
 * against the exact top singular values of its weights).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "testutil.h"

#define SYN LIPC_SOURCE_DIR "/tests/models/syn.yaml"
#define MLP LIPC_SOURCE_DIR "/tests/models/mlp.yaml"

/* ---- a temporary directory per test, and running the binary ---------------- */

static void make_tmp(void) { test_tmp_make("/tmp/lipc-clirun"); }

TestSuite(cli_run, .init = make_tmp, .fini = test_tmp_remove, .timeout = 30);

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    lipc_buf b;
    lipc_buf_init(&b);
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk - 1, f)) > 0) {
        chunk[got] = '\0';
        lipc_buf_puts(&b, chunk);
    }
    fclose(f);
    char *s = lipc_strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return s;
}

typedef struct result {
    int rc;
    char *out, *err;    /* stdout, stderr */
} result;

/* Runs `PROG ARGS` in the temporary directory (ARGS printf-style). */
static result run_prog(const char *prog, const char *fmt, va_list ap)
{
    char args[2048], cmd[4096];
    vsnprintf(args, sizeof args, fmt, ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s >'%s/.stdout' 2>'%s/.stderr'", test_tmp_dir,
             prog, args, test_tmp_dir, test_tmp_dir);
    int st = system(cmd);
    char out[256], err[256];
    snprintf(out, sizeof out, "%s/.stdout", test_tmp_dir);
    snprintf(err, sizeof err, "%s/.stderr", test_tmp_dir);
    result r = {WIFEXITED(st) ? WEXITSTATUS(st) : 128, slurp(out), slurp(err)};
    return r;
}

/* Runs `lipc ARGS` in the temporary directory (ARGS printf-style). */
static result run_lipc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static result run_lipc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    result r = run_prog(LIPC_BINARY, fmt, ap);
    va_end(ap);
    return r;
}

/* Runs the executable tmp/syn (made by lipc build) with ARGS. */
static result run_built(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static result run_built(const char *fmt, ...)
{
    char prog[512];
    snprintf(prog, sizeof prog, "%s/syn", test_tmp_dir);
    va_list ap;
    va_start(ap, fmt);
    result r = run_prog(prog, fmt, ap);
    va_end(ap);
    return r;
}

static void free_result(result *r)
{
    free(r->out);
    free(r->err);
}

/* stdout as one JSON object (and nothing else). */
static json_t *parse_json(const result *r)
{
    json_error_t err;
    json_t *j = json_loads(r->out, 0, &err);
    cr_assert(j && json_is_object(j), "stdout is not one JSON object (%s at line %d):\n%s",
              err.text, err.line, r->out);
    return j;
}

static double num(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_number(v), "no number '%s'", key);
    return json_number_value(v);
}

/* Trains syn on synthetic:n for some epochs into tmp/NAME; asserts success. */
static const char *train_syn(const char *name, int n, int epochs)
{
    const char *out = test_tmp_path(name);
    result r = run_lipc("train %s --data synthetic:%d --epochs %d --out %s", SYN, n, epochs, out);
    cr_assert_eq(r.rc, 0, "training failed:\n%s", r.err);
    free_result(&r);
    return out;
}

/* ---- checkpoints: rewriting one tensor, comparing two files ----------------- */

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

/* Copies src to dst with tensor `name` (F32) passed through edit(). */
static void patch_tensor(const char *src, const char *dst, const char *name,
                         void (*edit)(float *v, const int64_t *dims, size_t n))
{
    lipc_st_file f = read_st(src);
    lipc_st_tensor *t = calloc((size_t)f.n, sizeof *t);
    float *copy = NULL;
    for (int i = 0; i < f.n; i++) {
        t[i] = f.tensors[i];
        if (!strcmp(t[i].name, name)) {
            copy = malloc(t[i].nbytes);
            memcpy(copy, t[i].data, t[i].nbytes);
            edit(copy, t[i].dims, t[i].nbytes / sizeof(float));
            t[i].data = copy;
        }
    }
    cr_assert(copy, "%s has no tensor %s", src, name);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_st_write(dst, t, f.n, f.meta, f.n_meta, &d), LIPC_OK);
    lipc_diags_free(&d);
    free(copy);
    free(t);
    lipc_st_free(&f);
}

static void expect_same_checkpoint(const char *a, const char *b)
{
    lipc_st_file fa = read_st(a), fb = read_st(b);
    cr_assert_eq(fa.n, fb.n);
    for (int i = 0; i < fa.n; i++) {
        cr_assert_str_eq(fa.tensors[i].name, fb.tensors[i].name);
        cr_assert_eq(fa.tensors[i].nbytes, fb.tensors[i].nbytes);
        cr_expect(!memcmp(fa.tensors[i].data, fb.tensors[i].data, fa.tensors[i].nbytes),
                  "tensor %s differs", fa.tensors[i].name);
    }
    cr_assert_eq(fa.n_meta, fb.n_meta);
    for (int i = 0; i < fa.n_meta; i++)
        cr_expect_str_eq(fa.meta[i].value, fb.meta[i].value, "metadata %s", fa.meta[i].key);
    lipc_st_free(&fa);
    lipc_st_free(&fb);
}

static int count_lines(const char *s, const char *prefix)
{
    int n = 0;
    size_t len = strlen(prefix);
    for (const char *p = s; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += strncmp(p, prefix, len) == 0;
    return n;
}

/* ---- train ---------------------------------------------------------------------- */

Test(cli_run, train_json_metrics_and_plain_progress)
{
    const char *ckpt = test_tmp_path("syn.safetensors");
    result r = run_lipc("train %s --data synthetic:1024 --val 256 --out %s --json", SYN, ckpt);
    cr_assert_eq(r.rc, 0, "%s", r.err);

    /* stdout: one JSON object with the documented keys */
    json_t *j = parse_json(&r);
    cr_expect_str_eq(json_string_value(json_object_get(j, "model")), "syn");
    cr_expect_str_eq(json_string_value(json_object_get(j, "checkpoint")), ckpt);
    cr_expect(json_is_false(json_object_get(j, "interrupted")));
    cr_expect_eq(num(j, "epochs"), 8);
    cr_expect_eq(num(j, "steps"), 8 * 768 / 32);
    cr_expect_eq(num(j, "eps"), 0.3);
    static const char *const keys[] = {"seconds", "images_per_s", "loss", "train_acc",
                                       "train_cert", "k_sub", "val_acc", "val_vra", "val_k_sub"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_expect(isfinite(num(j, keys[i])), "%s", keys[i]);
    cr_expect(num(j, "val_acc") > 0.8, "validation accuracy %g (chance 0.25)", num(j, "val_acc"));
    cr_expect(num(j, "k_sub") > 0 && num(j, "val_k_sub") > 0);

    /* stderr: plain lines, one per epoch, then the summary */
    cr_expect(!strchr(r.err, '\r'), "live progress on a file:\n%s", r.err);
    cr_expect(!strchr(r.out, '\r'));
    cr_expect(strstr(r.err, "lipc train: syn on synthetic (768 examples, held-out validation; "
                            "no augmentation), "
                            "8 epochs of batch 32, emma loss at eps 0.3, target cpu"),
              "%s", r.err);
    cr_expect_eq(count_lines(r.err, "train  step "), 8, "%s", r.err);
    cr_expect(strstr(r.err, "lipc train: done after 8 epochs"), "%s", r.err);
    cr_expect(strstr(r.err, "lipc train: validation: accuracy"), "%s", r.err);

    /* the metrics log next to the checkpoint: loss down, certified share up */
    char *log = slurp(test_tmp_path("syn.metrics.jsonl"));
    cr_assert_eq(count_lines(log, "{\"epoch\":"), 8, "%s", log);
    json_error_t err;
    json_t *first = json_loadb(log, (size_t)(strchr(log, '\n') - log), 0, &err);
    cr_assert(first, "%s", err.text);
    cr_expect(num(j, "loss") < 0.5 * num(first, "loss"), "loss %g -> %g", num(first, "loss"),
              num(j, "loss"));
    cr_expect(num(j, "train_cert") > num(first, "cert") + 0.3, "certified %g -> %g",
              num(first, "cert"), num(j, "train_cert"));
    json_decref(first);
    free(log);
    json_decref(j);
    free_result(&r);
}

Test(cli_run, train_errors)
{
    const char *ok = train_syn("ok.safetensors", 64, 1);
    result r;

    r = run_lipc("train %s --data synthetic:64 --loss hinge", SYN);
    cr_expect_eq(r.rc, 2, "unknown --loss is a usage error:\n%s", r.err);
    cr_expect(strstr(r.err, "--loss takes emma, margin, gloro or trades, got 'hinge'"), "%s",
              r.err);
    free_result(&r);

    cr_assert_eq(mkdir(test_tmp_path("empty"), 0755), 0);
    r = run_lipc("train %s --data %s", SYN, test_tmp_path("empty"));
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, test_tmp_path("empty")) && strstr(r.err, "no dataset files found"), "%s",
              r.err);
    free_result(&r);

    r = run_lipc("train %s --data synthetic:64 --val 64", SYN);
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "--val 64 leaves no training data (64 examples)"), "%s", r.err);
    free_result(&r);

    r = run_lipc("train %s --data synthetic:64 --batch 16 --resume %s", SYN,
                 test_tmp_path("absent.safetensors"));
    cr_expect_neq(r.rc, 0);
    cr_expect(strstr(r.err, "absent.safetensors: error: cannot open"), "%s", r.err);
    free_result(&r);

    /* a checkpoint of the model at another --set */
    r = run_lipc("train %s --set width=4 --data synthetic:64 --batch 16 --resume %s", SYN, ok);
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "tensor 'stem.weight' has shape [8, 1, 3, 3]; expected [4, 1, 3, 3]"),
              "%s", r.err);
    free_result(&r);

    /* a deeper model: the tensors it misses are named (the diagnostic is
     * printed after the checkpoint is closed: this once read freed memory) */
    r = run_lipc("certify %s --set depth=3 --weights %s --data synthetic:64 --eps 0.1", SYN, ok);
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "ok.safetensors: error: the checkpoint has no tensor "
                            "'blocks.2.residual_0.conv2d_0.weight'"),
              "%s", r.err);
    free_result(&r);

    /* the last layer is not a dense head */
    FILE *f = fopen(test_tmp_path("pool.yaml"), "w");
    cr_assert(f);
    fputs("input: {shape: [1, 8, 8]}\nclasses: 4\nlayers:\n"
          "  - conv2d: {out: 4, kernel: 3}\n  - minmax\n  - avgpool: {kernel: 8}\n"
          "  - flatten\n",
          f);
    fclose(f);
    r = run_lipc("train pool.yaml --data synthetic:64 --batch 16");
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "pool.yaml:7:5: error: training and certification need a dense head "
                            "as the last layer"),
              "%s", r.err);
    free_result(&r);

    r = run_lipc("train %s --data synthetic:64 --batch 128", SYN);
    cr_expect_eq(r.rc, 1);
    cr_expect(strstr(r.err, "has 64 examples, fewer than one batch of 128"), "%s", r.err);
    free_result(&r);

    r = run_lipc("train %s --eps 0.1,0.3", SYN);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--eps takes one radius for training"), "%s", r.err);
    free_result(&r);
    r = run_lipc("train %s --epochs 0", SYN);
    cr_expect_eq(r.rc, 2);
    free_result(&r);
    r = run_lipc("train %s --learning-rate 1", SYN);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "unknown option '--learning-rate'"), "%s", r.err);
    free_result(&r);
}

Test(cli_run, resume_continues_the_run)
{
    /* 2 epochs, then the same run resumed to 4 (the schedule is planned for
     * the --epochs of each call: see docs/training.md) */
    const char *ckpt = train_syn("r.safetensors", 512, 2);
    result r = run_lipc("train %s --data synthetic:512 --epochs 4 --resume %s --out %s --json",
                        SYN, ckpt, ckpt);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    char want[512];
    snprintf(want, sizeof want, "lipc train: resuming from %s at step 32", ckpt);
    cr_expect(strstr(r.err, want), "%s", r.err);
    json_t *j = parse_json(&r);
    cr_expect_eq(num(j, "epochs"), 4);
    cr_expect_eq(num(j, "steps"), 32, "steps taken by this call");
    json_decref(j);
    lipc_st_file f = read_st(ckpt);
    cr_expect_str_eq(lipc_st_meta_get(&f, "step"), "64");
    cr_expect_str_eq(lipc_st_meta_get(&f, "epoch"), "4");
    lipc_st_free(&f);
    /* the metrics log was appended to */
    char *log = slurp(test_tmp_path("r.metrics.jsonl"));
    cr_expect(strstr(log, "{\"epoch\":1,") && strstr(log, "{\"epoch\":2,") &&
                  strstr(log, "{\"epoch\":3,") && strstr(log, "{\"epoch\":4,"),
              "%s", log);
    cr_expect_eq(count_lines(log, "{"), 4, "%s", log);
    free(log);
    free_result(&r);
}

/* Ctrl-C: the run saves its checkpoint and exits 130; resuming it ends where
 * a run that never stopped ends, bit for bit. When the signal lands is up to
 * the scheduler, but the outcome must not depend on it. */
Test(cli_run, ctrl_c_saves_and_resume_is_bit_for_bit)
{
    result r = run_lipc("train %s --data synthetic:512 --out straight.safetensors", SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);

    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (chdir(test_tmp_dir) != 0)
            _exit(127);
        int out = open(".stdout", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(".stderr", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
            _exit(127);
        execl(LIPC_BINARY, LIPC_BINARY, "train", SYN, "--data", "synthetic:512", "--out",
              "cut.safetensors", (char *)NULL);
        _exit(127);
    }
    /* After the first epoch's line the handler is surely installed. */
    struct stat sb;
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 4000; i++) {
        if (stat(test_tmp_path("cut.metrics.jsonl"), &sb) == 0 && sb.st_size > 0)
            break;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            exited = true;
            break;
        }
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    if (!exited) {
        kill(pid, SIGINT);
        cr_assert_eq(waitpid(pid, &status, 0), pid);
    }
    cr_assert(WIFEXITED(status), "lipc died of a signal");
    char errp[256];
    snprintf(errp, sizeof errp, "%s/.stderr", test_tmp_dir);
    char *err = slurp(errp);
    int rc = WEXITSTATUS(status);
    cr_assert(rc == 130 || rc == 0, "exit %d:\n%s", rc, err);
    if (rc == 130)
        cr_expect(strstr(err, "lipc train: interrupted after"), "%s", err);
    else
        cr_log_warn("the run finished before the signal: resume takes no step");
    free(err);

    r = run_lipc("train %s --data synthetic:512 --resume cut.safetensors --out cut.safetensors",
                 SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    expect_same_checkpoint(test_tmp_path("straight.safetensors"), test_tmp_path("cut.safetensors"));
}

/* ---- certify -------------------------------------------------------------------- */

Test(cli_run, certify_json_and_text)
{
    const char *w = train_syn("c.safetensors", 512, 3);
    result r = run_lipc("certify %s --weights %s --data synthetic:512 --eps 0.1,0.3 --json", SYN,
                        w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *j = parse_json(&r);
    cr_expect_str_eq(json_string_value(json_object_get(j, "model")), "syn");
    cr_expect_str_eq(json_string_value(json_object_get(j, "data")), "synthetic");
    cr_expect_str_eq(json_string_value(json_object_get(j, "bound")), "sound");
    double k = num(j, "k_sub");
    cr_expect(k > 0 && isfinite(k));
    /* the sound bound is at least the power-iteration estimate */
    cr_expect(num(j, "k_sub_estimate") <= k, "estimate %g above the sound bound %g",
              num(j, "k_sub_estimate"), k);
    /* the headline numbers: n, clean_acc, VRA by radius */
    cr_expect_eq(num(j, "n"), 128, "synthetic:512 has 128 test points");
    double acc = num(j, "clean_acc");
    cr_expect(acc > 0.8, "clean accuracy %g", acc);
    json_t *vra = json_object_get(j, "vra");
    cr_assert(json_is_object(vra) && json_object_size(vra) == 2, "%s", r.out);
    double v0 = num(vra, "0.1"), v1 = num(vra, "0.3");
    cr_expect(v0 <= acc && v1 <= v0 && v1 > 0, "VRA %g, %g; accuracy %g", v0, v1, acc);
    /* the certifier's whole summary */
    json_t *c = json_object_get(j, "details");
    cr_assert(json_is_object(c), "%s", r.out);
    cr_expect_eq(num(c, "n"), 128);
    cr_expect_eq(num(c, "clean_accuracy"), acc);
    json_t *vra_list = json_object_get(c, "vra"), *eps = json_object_get(c, "eps");
    cr_assert(json_array_size(vra_list) == 2 && json_array_size(eps) == 2);
    cr_expect_eq(json_number_value(json_array_get(vra_list, 0)), v0);
    cr_expect_eq(json_number_value(json_array_get(vra_list, 1)), v1);
    cr_expect_eq(json_number_value(json_array_get(eps, 1)), 0.3);
    cr_expect_eq(num(c, "ties"), 0);
    cr_expect(json_is_false(json_object_get(c, "error")));
    json_decref(j);
    free_result(&r);

    /* radii are keys as given, never merged by rounding; a repeated one is a
     * usage error */
    r = run_lipc("certify %s --weights %s --data synthetic:512 --eps 0.1411764,0.1411765 --json",
                 SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    j = parse_json(&r);
    vra = json_object_get(j, "vra");
    cr_expect(json_object_get(vra, "0.1411764") && json_object_get(vra, "0.1411765"), "%s",
              r.out);
    json_decref(j);
    free_result(&r);
    r = run_lipc("certify %s --weights %s --data synthetic:512 --eps 0.1,0.1", SYN, w);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--eps lists the radius 0.1 twice"), "%s", r.err);
    free_result(&r);

    /* the same K_sub as `lipc bound` (the same sound bounds; the same estimate
     * from the checkpoint's vectors) */
    r = run_lipc("bound %s --weights %s --json", SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    j = parse_json(&r);
    cr_expect_eq(num(j, "k_sub_sound"), k);
    json_decref(j);
    free_result(&r);

    /* text, and --limit */
    r = run_lipc("certify %s --weights %s --data synthetic:512 --limit 50 --eps 0.1", SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.out, "syn on synthetic (50 test points)") &&
                  strstr(r.out, "clean accuracy") && strstr(r.out, "VRA at eps 0.1") &&
                  strstr(r.out, "a sound upper bound"),
              "%s", r.out);
    free_result(&r);

    /* --bound estimate reproduces the published code's behaviour, and says so */
    r = run_lipc("certify %s --weights %s --data synthetic:512 --limit 50 --eps 0.1 "
                 "--bound estimate", SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.out, "ESTIMATE from below") && strstr(r.out, "not guaranteed"), "%s",
              r.out);
    free_result(&r);
}

/* Writes an IDX dataset of n h x w images (labels i % 10) into tmp/NAME. */
static void write_idx(const char *name, int n, int h, int w)
{
    cr_assert_eq(mkdir(test_tmp_path(name), 0755), 0);
    static const char *const split[] = {"train", "t10k"};
    for (int s = 0; s < 2; s++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte", test_tmp_path(name), split[s]);
        FILE *f = fopen(p, "wb");
        cr_assert(f);
        uint8_t head[16] = {0, 0, 8, 3, 0, 0, 0, (uint8_t)n, 0, 0, 0, (uint8_t)h,
                            0, 0, 0, (uint8_t)w};
        fwrite(head, 1, 16, f);
        for (int i = 0; i < n * h * w; i++)
            fputc(i * 37 % 256, f);
        fclose(f);
        snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte", test_tmp_path(name), split[s]);
        f = fopen(p, "wb");
        cr_assert(f);
        uint8_t lh[8] = {0, 0, 8, 1, 0, 0, 0, (uint8_t)n};
        fwrite(lh, 1, 8, f);
        for (int i = 0; i < n; i++)
            fputc(i % 10, f);
        fclose(f);
    }
}

Test(cli_run, certify_errors)
{
    const char *w = train_syn("e.safetensors", 64, 1);
    result r;

    r = run_lipc("certify %s --weights %s --data synthetic:64", SYN, w);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--eps is required"), "%s", r.err);
    free_result(&r);
    r = run_lipc("certify %s --data synthetic:64 --eps 0.1", SYN);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--weights is required"), "%s", r.err);
    free_result(&r);
    r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0.1,-1", SYN, w);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--eps takes radii >= 0, got '-1'"), "%s", r.err);
    free_result(&r);
    r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0.1 --bound tight", SYN, w);
    cr_expect_eq(r.rc, 2);
    free_result(&r);

    r = run_lipc("certify %s --weights nowhere.safetensors --data synthetic:64 --eps 0.1", SYN);
    cr_expect_eq(r.rc, 3);
    cr_expect(strstr(r.err, "nowhere.safetensors: error: cannot open"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    free_result(&r);

    /* images of another size: 6x6 IDX files */
    write_idx("idx6", 20, 6, 6);
    r = run_lipc("certify %s --weights %s --data %s --eps 0.1", SYN, w, test_tmp_path("idx6"));
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "has 1x6x6 images in 10 classes, but the model 'syn' takes 1x8x8 "
                            "inputs and has 4 classes"),
              "%s", r.err);
    cr_expect_str_eq(r.out, "");
    free_result(&r);

    struct stat sb;
    if (stat("/usr/share/datasets/fashion-mnist", &sb) == 0) {
        r = run_lipc("certify %s --weights %s --data fashion-mnist --limit 10 --eps 0.1", SYN, w);
        cr_expect_eq(r.rc, 1, "%s", r.err);
        cr_expect(strstr(r.err, "'fashion-mnist' has 1x28x28 images in 10 classes"), "%s",
                  r.err);
        free_result(&r);
    }
}

static void put_nan(float *v, const int64_t *dims, size_t n)
{
    (void)dims;
    (void)n;
    v[0] = NAN;
}

/* Every row equal to row 0: equal logits for every input. */
static void equal_rows(float *v, const int64_t *dims, size_t n)
{
    int64_t cols = dims[1];
    for (size_t i = (size_t)cols; i < n; i++)
        v[i] = v[i % (size_t)cols];
}

static void equal_values(float *v, const int64_t *dims, size_t n)
{
    (void)dims;
    for (size_t i = 1; i < n; i++)
        v[i] = v[0];
}

Test(cli_run, nan_weights_are_an_error)
{
    const char *w = train_syn("n.safetensors", 64, 1);
    const char *head = test_tmp_path("nan-head.safetensors"), *fc = test_tmp_path("nan-fc.safetensors");
    patch_tensor(w, head, "head.weight", put_nan);
    patch_tensor(w, fc, "fc.weight", put_nan);
    result r;

    r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0.1 --json", SYN, head);
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "NaN"), "%s", r.err);
    cr_expect_str_eq(r.out, "", "nothing is certified");
    free_result(&r);

    r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0.1", SYN, fc);
    cr_expect_eq(r.rc, 1, "%s", r.err);
    cr_expect(strstr(r.err, "error: ") && strstr(r.err, "is nan: no sound bound"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    free_result(&r);

    /* bound: an error too, and never "nan" in --json output */
    r = run_lipc("bound %s --weights %s --json", SYN, fc);
    cr_expect_eq(r.rc, 1, "%s\n%s", r.out, r.err);
    cr_expect(strstr(r.err, "NaN or Inf") || strstr(r.err, "is nan"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    free_result(&r);
    r = run_lipc("bound %s --weights %s", SYN, head);
    cr_expect_eq(r.rc, 1, "%s\n%s", r.out, r.err);
    cr_expect(strstr(r.err, "NaN or Inf") || strstr(r.err, "is nan"), "%s", r.err);
    free_result(&r);
}

Test(cli_run, ties_are_never_certified)
{
    const char *w = train_syn("t.safetensors", 64, 1);
    const char *tmp = test_tmp_path("t1.safetensors"), *tied = test_tmp_path("tied.safetensors");
    patch_tensor(w, tmp, "head.weight", equal_rows);
    patch_tensor(tmp, tied, "head.bias", equal_values);
    /* every logit equal: the pair bounds are 0, and still nothing is certified */
    result r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0,0.1 --json", SYN,
                        tied);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *j = parse_json(&r);
    json_t *c = json_object_get(j, "details");
    cr_assert(json_is_object(c), "%s", r.out);
    cr_expect_eq(num(j, "clean_acc"), 0);
    cr_expect_eq(num(json_object_get(j, "vra"), "0"), 0);
    cr_expect_eq(num(json_object_get(j, "vra"), "0.1"), 0);
    cr_expect_eq(num(c, "n"), 16);
    cr_expect_eq(num(c, "ties"), 16);
    cr_expect_eq(num(c, "correct"), 0);
    cr_expect_eq(num(c, "clean_accuracy"), 0);
    for (size_t e = 0; e < 2; e++) {
        cr_expect_eq(json_number_value(json_array_get(json_object_get(c, "certified"), e)), 0);
        cr_expect_eq(json_number_value(json_array_get(json_object_get(c, "vra"), e)), 0);
    }
    json_decref(j);
    free_result(&r);
    r = run_lipc("certify %s --weights %s --data synthetic:64 --eps 0.1", SYN, tied);
    cr_expect(strstr(r.out, "16 points had a tie for the top logit (never certified)"), "%s",
              r.out);
    free_result(&r);
}

/* ---- bound ------------------------------------------------------------------------ */

/* K_sub is the product of the main-path factors; a loose factor is 1 + the
 * product of its children. Every operator norm was iterated. */
static void check_bound_tree(const json_t *j)
{
    json_t *layers = json_object_get(j, "layers");
    cr_assert(json_is_array(layers) && json_array_size(layers) > 0);
    size_t n = json_array_size(layers);
    double prod = 1.0;
    for (size_t i = 0; i < n; i++) {
        const json_t *l = json_array_get(layers, i);
        const char *kind = json_string_value(json_object_get(l, "kind"));
        const char *name = json_string_value(json_object_get(l, "name"));
        cr_assert(kind && name);
        double est = num(l, "estimate");
        cr_expect(est > 0 && isfinite(est), "%s: estimate %g", name, est);
        if (!strcmp(kind, "conv") || !strcmp(kind, "dense"))
            cr_expect(num(l, "iters") > 0, "%s was not iterated", name);
        if (!strcmp(kind, "loose")) {
            double body = 1.0;
            int children = 0;
            for (size_t c = 0; c < n; c++)
                if ((int)num(json_array_get(layers, c), "parent") == (int)i) {
                    body *= num(json_array_get(layers, c), "estimate");
                    children++;
                }
            cr_expect(children > 0, "%s has no children", name);
            cr_expect(fabs(est - (1.0 + body)) <= 1e-12 * est, "%s: %.17g != 1 + %.17g", name,
                      est, body);
        }
        if (num(l, "parent") == -1)
            prod *= est;
    }
    double k = num(j, "k_sub");
    cr_expect(fabs(k - prod) <= 1e-9 * k, "K_sub %.17g, product %.17g", k, prod);
}

/* The largest eigenvalue of a symmetric n x n matrix (cyclic Jacobi; a is
 * destroyed). */
static double max_eigenvalue(double *a, int n)
{
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, all = 0.0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++) {
                all += a[i * n + k] * a[i * n + k];
                if (i != k)
                    off += a[i * n + k] * a[i * n + k];
            }
        if (off <= 1e-30 * all)
            break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (apq == 0.0)
                    continue;
                double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; k++) { /* A <- A J (columns p, q) */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* A <- J^T A (rows p, q) */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
    }
    double best = a[0];
    for (int i = 1; i < n; i++)
        best = fmax(best, a[i * n + i]);
    return best;
}

/* sigma_max(W (+ I)) for W [rows, cols] in float, through the Gram matrix. */
static double sigma_max(const float *w, int rows, int cols, bool plus_identity)
{
    double *a = calloc((size_t)rows * (size_t)cols, sizeof(double));
    double *gram = calloc((size_t)cols * (size_t)cols, sizeof(double));
    for (int i = 0; i < rows * cols; i++)
        a[i] = w[i];
    if (plus_identity)
        for (int i = 0; i < rows && i < cols; i++)
            a[i * cols + i] += 1.0;
    for (int p = 0; p < cols; p++)
        for (int q = 0; q < cols; q++) {
            double s = 0.0;
            for (int r = 0; r < rows; r++)
                s += a[r * cols + p] * a[r * cols + q];
            gram[p * cols + q] = s;
        }
    double l = max_eigenvalue(gram, cols);
    free(a);
    free(gram);
    return sqrt(l);
}

Test(cli_run, bound_json_tree_of_a_liresnet)
{
    const char *w = train_syn("b.safetensors", 256, 2);
    result r = run_lipc("bound %s --weights %s --json", SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *j = parse_json(&r);
    cr_expect(num(j, "k_sub") <= num(j, "k_sub_sound"));
    cr_expect_eq(json_array_size(json_object_get(j, "layers")), 5);
    check_bound_tree(j);
    /* the method lipc check predicts is the one the bound came from */
    json_t *layer;
    size_t i;
    json_array_foreach(json_object_get(j, "layers"), i, layer) {
        const char *m = json_string_value(json_object_get(layer, "method"));
        const char *sm = json_string_value(json_object_get(layer, "sound_method"));
        cr_expect(m && sm && !strcmp(m, sm), "layer %zu: %s against %s", i, m ? m : "-",
                  sm ? sm : "-");
    }
    json_t *head = json_object_get(j, "head");
    cr_expect(num(head, "min_pair") > 0 && num(head, "min_pair") <= num(head, "max_pair"));
    /* unit-norm head rows: ||r_i - r_j|| <= 2 */
    cr_expect(num(head, "max_pair") <= 2.0);
    json_decref(j);
    free_result(&r);

    r = run_lipc("bound %s --weights %s", SYN, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.out, "K_sub: estimate ") && strstr(r.out, "blocks.1.residual_0.conv2d_0") &&
                  strstr(r.out, "sound bound"),
              "%s", r.out);
    free_result(&r);
    r = run_lipc("bound %s", SYN);
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "--weights is required"), "%s", r.err);
    free_result(&r);
}

Test(cli_run, bound_estimates_match_exact_singular_values)
{
    /* mlp's weights, from its initialiser (no dataset fits a 12-vector). */
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_compiled *c = NULL;
    lipc_status s = lipc_frontend_load_file(MLP, NULL, &d, &g);
    lipc_pipeline_options po = {.verify = true};
    if (s == LIPC_OK)
        s = lipc_pipeline_run(g, &po, &d);
    if (s == LIPC_OK)
        s = lipc_compile(g, "ref", &d, &c);
    if (s != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(s, LIPC_OK);
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&c->desc, &st), LIPC_OK);
    cr_assert_eq(lipc_init_params(&c->desc, 7, st.params), LIPC_OK);
    const char *w = test_tmp_path("mlp.safetensors");
    cr_assert_eq(lipc_checkpoint_save(w, &c->desc, &st, NULL, 0, &d), LIPC_OK);
    lipc_diags_free(&d);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);

    result r = run_lipc("bound %s --weights %s --json --iters 100000 --tol 1e-12", MLP, w);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *j = parse_json(&r);
    check_bound_tree(j);
    json_t *layers = json_object_get(j, "layers");
    cr_expect_eq(json_array_size(layers), 5, "4 dense layers and one loose residual");

    lipc_st_file f = read_st(w);
    int n_dense = 0;
    size_t i;
    json_t *l;
    json_array_foreach(layers, i, l) {
        const char *name = json_string_value(json_object_get(l, "name"));
        if (strcmp(json_string_value(json_object_get(l, "kind")), "dense") != 0)
            continue;
        n_dense++;
        char tname[256];
        snprintf(tname, sizeof tname, "%s.weight", name);
        const lipc_st_tensor *t = lipc_st_find(&f, tname);
        cr_assert(t && t->rank == 2, "no weight %s", tname);
        float *wv = malloc(t->nbytes);
        memcpy(wv, t->data, t->nbytes);
        /* residual_1 is the folded linear residual: its operator is W + I */
        bool folded = strcmp(name, "residual_1.dense_0") == 0;
        double sigma = sigma_max(wv, (int)t->dims[0], (int)t->dims[1], folded);
        double est = num(l, "estimate");
        /* from below, up to the float rounding of the cpu target's A v */
        cr_expect(est <= sigma * (1 + 1e-6), "%s: estimate %.17g above sigma_max %.17g", name,
                  est, sigma);
        cr_expect(est >= sigma * (1 - 1e-4), "%s: estimate %.17g far below sigma_max %.17g",
                  name, est, sigma);
        /* dense layers: the sound bound is sigma_max itself, rounded up */
        double sound = num(l, "sound");
        cr_expect(sound >= sigma * (1 - 1e-12) && sound <= sigma * (1 + 1e-9),
                  "%s: sound bound %.17g, sigma_max %.17g", name, sound, sigma);
        free(wv);
    }
    cr_expect_eq(n_dense, 4);
    lipc_st_free(&f);
    json_decref(j);
    free_result(&r);
}

/* `lipc build`: a standalone executable that trains, certifies and predicts
 * with the same kernels as the JIT (the same bits), and needs no LLVM. */
Test(cli_run, built_executable_trains_certifies_and_matches_the_jit, .timeout = 120)
{
    result r = run_lipc("build %s -o syn", SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ldd '%s/syn' 2>/dev/null | grep -qi llvm", test_tmp_dir);
    cr_expect_neq(system(cmd), 0, "the built executable links LLVM");

    r = run_built("train --data synthetic:256 --epochs 2 --seed 3 --out a.safetensors");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    r = run_lipc("train %s --data synthetic:256 --epochs 2 --seed 3 --out b.safetensors", SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    char *a = NULL, *b = NULL;
    snprintf(cmd, sizeof cmd, "cmp -s '%s/a.safetensors' '%s/b.safetensors'", test_tmp_dir,
             test_tmp_dir);
    cr_expect_eq(system(cmd), 0, "the executable and the JIT trained different weights");

    r = run_built("certify --weights a.safetensors --data synthetic:256 --eps 0.1,0.3 --json");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *ja = parse_json(&r);
    free_result(&r);
    r = run_lipc("certify %s --weights a.safetensors --data synthetic:256 --eps 0.1,0.3 --json",
                 SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    json_t *jb = parse_json(&r);
    free_result(&r);
    cr_expect_eq(num(ja, "clean_acc"), num(jb, "clean_acc"));
    cr_expect_eq(num(ja, "k_sub"), num(jb, "k_sub"));
    a = json_dumps(json_object_get(ja, "vra"), JSON_SORT_KEYS);
    b = json_dumps(json_object_get(jb, "vra"), JSON_SORT_KEYS);
    cr_expect_str_eq(a, b);
    free(a);
    free(b);
    json_decref(ja);
    json_decref(jb);

    r = run_built("predict --weights a.safetensors --data synthetic:256");
    cr_expect_eq(r.rc, 0, "%s", r.err);
    cr_expect_eq(count_lines(r.out, ""), 64, "one line per test image:\n%s", r.out);
    cr_expect(strstr(r.err, "syn predict: accuracy"), "%s", r.err);
    free_result(&r);
    /* the parameters are compiled in */
    r = run_built("train --set width=4");
    cr_expect_eq(r.rc, 2);
    cr_expect(strstr(r.err, "fixed parameters"), "%s", r.err);
    free_result(&r);
}

/* `lipc build --target cuda`: the executable carries the cuda target (its
 * kernels as PTX for the GPU's driver) beside the cpu one. Without a GPU,
 * --target=cuda says so; the cuda driver and its kernels still run through
 * the emulator, and train the bits `lipc train --target=cuda-emulator` trains. */
Test(cli_run, built_executable_with_the_cuda_target, .timeout = 180)
{
    if (!LIPC_HAVE_CUDA) {
        result r = run_lipc("build %s -o syn --target cuda", SYN);
        cr_expect_eq(r.rc, 2);
        cr_expect(strstr(r.err, "without the CUDA toolkit"), "%s", r.err);
        free_result(&r);
        return;
    }
    setenv("LIPC_CUDA_CONV", "emitted", 1); /* no timing-dependent choice: equal bits */
    result r = run_lipc("build %s -o syn --target cuda", SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.err, "and CUDA GPUs"), "%s", r.err);
    free_result(&r);
    r = run_built("train --target=cuda --data synthetic:128 --epochs 1 --out g.safetensors");
    if (r.rc != 0) /* no GPU here (with one, the run must simply work) */
        cr_expect(strstr(r.err, "no usable NVIDIA GPU"), "%s", r.err);
    free_result(&r);
    r = run_built("train --target=cuda-emulator --data synthetic:128 --epochs 2 --seed 3 "
                  "--out a.safetensors --no-report");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    r = run_lipc("train %s --target=cuda-emulator --data synthetic:128 --epochs 2 --seed 3 "
                 "--out b.safetensors --no-report", SYN);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cmp -s '%s/a.safetensors' '%s/b.safetensors'", test_tmp_dir,
             test_tmp_dir);
    cr_expect_eq(system(cmd), 0, "the executable and lipc trained different weights");
    r = run_built("certify --target=cuda-emulator --weights a.safetensors --data synthetic:128 "
                  "--eps 0.1 --json");
    cr_expect_eq(r.rc, 0, "%s", r.err);
    free_result(&r);
}
