/* tests/test_runtime_progress.c: progress lines and the metrics log.
 *
 * The metrics log must be valid JSON, one object per line, with integers
 * kept integral and non-finite values as null. Progress to a file (not a
 * terminal) must be plain lines: no '\r', no escape codes, and none printed
 * between periods. No test depends on timing: periods are 0 or far away.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

static char tmp_path[64];

static void make_tmp(void)
{
    snprintf(tmp_path, sizeof tmp_path, "/tmp/lipc-rtprog-XXXXXX");
    int fd = mkstemp(tmp_path);
    cr_assert(fd >= 0);
    close(fd);
}

static void rm_tmp(void) { remove(tmp_path); }

TestSuite(runtime_progress, .init = make_tmp, .fini = rm_tmp);

/* The contents of a FILE written so far. */
static char *slurp(FILE *f)
{
    fflush(f);
    long len = ftell(f);
    char *s = calloc(1, (size_t)len + 1);
    rewind(f);
    cr_assert(fread(s, 1, (size_t)len, f) == (size_t)len);
    return s;
}

Test(runtime_progress, metrics_jsonl_parses)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_metrics_log m;
    cr_assert_eq(lipc_metrics_open(&m, tmp_path, false, &d), LIPC_OK);
    for (int e = 0; e < 3; e++) {
        lipc_metric rec[] = {
            {"epoch", e, NULL},         {"step", 1000.0 * e, NULL},
            {"loss", 1.0 / (e + 3), NULL}, {"split", 0, e == 2 ? "val" : "train"},
            {"K_sub", NAN, NULL},       {"lr", 1e-3, NULL},
        };
        cr_assert_eq(lipc_metrics_write(&m, rec, 6, &d), LIPC_OK);
    }
    cr_assert_eq(lipc_metrics_close(&m, &d), LIPC_OK);
    /* Append mode adds lines. */
    cr_assert_eq(lipc_metrics_open(&m, tmp_path, true, &d), LIPC_OK);
    lipc_metric last[] = {{"epoch", 3, NULL}, {"vra", 0.5, NULL}};
    cr_assert_eq(lipc_metrics_write(&m, last, 2, &d), LIPC_OK);
    cr_assert_eq(lipc_metrics_close(&m, &d), LIPC_OK);

    FILE *f = fopen(tmp_path, "r");
    cr_assert(f);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        cr_assert(strchr(line, '\n'), "line %d is not terminated", n);
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        cr_assert(o && json_is_object(o), "line %d: %s: %s", n, err.text, line);
        json_t *epoch = json_object_get(o, "epoch");
        cr_assert(json_is_integer(epoch) && json_integer_value(epoch) == n, "%s", line);
        if (n < 3) {
            /* Keys in the order given. */
            cr_assert(strncmp(line, "{\"epoch\":", 9) == 0, "%s", line);
            cr_assert(json_is_integer(json_object_get(o, "step")));
            json_t *loss = json_object_get(o, "loss");
            cr_assert(json_is_real(loss) && fabs(json_real_value(loss) - 1.0 / (n + 3)) < 1e-9);
            cr_assert_str_eq(json_string_value(json_object_get(o, "split")),
                             n == 2 ? "val" : "train");
            cr_assert(json_is_null(json_object_get(o, "K_sub")));
            cr_assert(strstr(line, "\"lr\":0.001"), "%s", line);
        } else {
            cr_assert(json_real_value(json_object_get(o, "vra")) == 0.5);
        }
        json_decref(o);
        n++;
    }
    fclose(f);
    cr_assert_eq(n, 4);
    cr_assert_eq(d.n_errors, 0);
    lipc_diags_free(&d);
}

Test(runtime_progress, metrics_open_failure_names_the_file)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_metrics_log m;
    cr_assert_eq(lipc_metrics_open(&m, "/nonexistent-dir/metrics.jsonl", false, &d), LIPC_ERR_IO);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_assert(strstr(lipc_buf_str(&b), "/nonexistent-dir/metrics.jsonl: error: cannot open the "
                                       "metrics log: No such file or directory"),
              "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_diags_free(&d);
}

Test(runtime_progress, plain_lines_when_not_a_terminal)
{
    FILE *f = tmpfile();
    cr_assert(f);
    lipc_progress p;
    lipc_progress_init(&p, f);
    cr_assert(!p.live, "a temporary file is not a terminal");
    lipc_progress_begin(&p, "train", 10, 128);
    lipc_metric m[] = {{"epoch", 1, NULL}, {"loss", 0.5, NULL}, {"acc", 0.8125, NULL},
                       {"phase", 0, "warmup"}};
    /* Within the default 10-second period: nothing. */
    for (int s = 0; s < 5; s++)
        lipc_progress_update(&p, s, m, 4);
    char *s = slurp(f);
    cr_assert_str_eq(s, "");
    free(s);
    /* The end of an epoch: one line, always. */
    lipc_progress_line(&p, 5, m, 4);
    /* A zero period: a line per update. */
    p.period_s = 0;
    lipc_progress_update(&p, 6, m, 2);
    lipc_progress_update(&p, 7, m, 2);
    lipc_progress_end(&p);
    s = slurp(f);
    cr_assert(!strchr(s, '\r') && !strchr(s, '\033'), "control characters in: %s", s);
    int lines = 0;
    for (const char *c = s; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 3, "%s", s);
    cr_assert(strncmp(s, "train  step 5/10 (50%)  epoch 1  loss 0.5  acc 0.8125  phase warmup",
                      67) == 0, "%s", s);
    cr_assert(strstr(s, "\ntrain  step 6/10 (60%)  epoch 1  loss 0.5"), "%s", s);
    free(s);
    fclose(f);
}

Test(runtime_progress, live_line_rewrites_in_place)
{
    FILE *f = tmpfile();
    lipc_progress p;
    lipc_progress_init(&p, f);
    p.live = true;              /* as on a terminal */
    lipc_progress_begin(&p, "certify", 0, 0);
    lipc_metric m[] = {{"vra", 0.75, NULL}};
    lipc_progress_update(&p, 1, m, 1);      /* the first update always shows */
    lipc_progress_update(&p, 2, m, 1);      /* too soon: skipped */
    lipc_progress_end(&p);
    char *s = slurp(f);
    cr_assert_str_eq(s, "\rcertify  step 1  vra 0.75\033[K\n");
    free(s);
    fclose(f);
}

Test(runtime_progress, durations_and_clock)
{
    char b[16];
    lipc_format_duration(45, b, sizeof b);
    cr_assert_str_eq(b, "45s");
    lipc_format_duration(133, b, sizeof b);
    cr_assert_str_eq(b, "2m13s");
    lipc_format_duration(3720, b, sizeof b);
    cr_assert_str_eq(b, "1h02m");
    lipc_format_duration(NAN, b, sizeof b);
    cr_assert_str_eq(b, "?");
    double t0 = lipc_now(), t1 = lipc_now();
    cr_assert(t0 > 0 && t1 >= t0);
}
