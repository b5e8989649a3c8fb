/* tests/test_report.c: the training and VRA reports (runtime/report.c).
 *
 * Each test writes a small metrics log in its own temporary directory and
 * checks the data and script files by their contents. Where gnuplot is
 * installed the SVG must exist and look like one; where it is not, the
 * report must still succeed with one warning. The paths without gnuplot and
 * with a failing gnuplot are forced through $LIPC_GNUPLOT, so they are tested
 * on every machine.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/report.h"
#include "tests/testutil.h"

/* $LIPC_GNUPLOT from the environment would change what the tests expect. */
static void setup(void)
{
    unsetenv("LIPC_GNUPLOT");
    test_tmp_make("/tmp/lipc-report");
}

TestSuite(report, .init = setup, .fini = test_tmp_remove);

/* Three epochs as lipc train writes them, validation on the last two, one
 * value that was not finite (null). */
static const char *log3 =
    "{\"epoch\":1,\"loss\":1.799143896,\"acc\":0.5208333333,\"cert\":0.005208333333,"
    "\"K_sub\":19.50353695,\"eps\":0.2866666667,\"lr\":0.005,\"step\":12,\"seconds\":0.04}\n"
    "{\"epoch\":2,\"loss\":1.571433489,\"acc\":0.7994791667,\"cert\":0.0078125,"
    "\"K_sub\":null,\"eps\":0.45,\"lr\":0.002826315481,\"val_acc\":0.7421875,"
    "\"val_vra\":0.0859375,\"step\":24,\"seconds\":0.11}\n"
    "{\"epoch\":3,\"loss\":1.551759815,\"acc\":0.796875,\"cert\":0.05989583333,"
    "\"K_sub\":20.79446607,\"eps\":0.45,\"lr\":2.138784657e-5,\"val_acc\":0.734375,"
    "\"val_vra\":0.1875,\"step\":36,\"seconds\":0.17}\n";

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* The whole file, or NULL when it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *s = calloc(1, (size_t)len + 1);
    cr_assert(fread(s, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    return s;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static bool have_gnuplot(void)
{
    return system("command -v gnuplot >/dev/null 2>&1") == 0;
}

static char *diags_text(const lipc_diags *d)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(d, &b);
    char *s = strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return s;
}

/* No temporary file is left in the test directory. */
static void assert_no_tmp(void)
{
    DIR *dir = opendir(test_tmp_dir);
    cr_assert_not_null(dir);
    struct dirent *e;
    while ((e = readdir(dir)))
        cr_assert(!strstr(e->d_name, ".tmp-"), "left behind: %s", e->d_name);
    closedir(dir);
}

/* With gnuplot: the SVG is there and whole, and nothing was warned. Without:
 * no SVG and the one warning that says what to install. */
static void assert_svg(const char *path, const lipc_diags *d)
{
    char *msgs = diags_text(d);
    if (have_gnuplot()) {
        cr_assert_eq(d->n_warnings, 0, "%s", msgs);
        char *svg = slurp(path);
        cr_assert_not_null(svg, "no %s", path);
        cr_assert(strncmp(svg, "<?xml", 5) == 0 || strncmp(svg, "<svg", 4) == 0,
                  "not an SVG: %.60s", svg);
        cr_assert(strstr(svg, "</svg>"), "the SVG is not closed");
        free(svg);
    } else {
        cr_assert_eq(d->n_warnings, 1, "%s", msgs);
        cr_assert(strstr(msgs, "gnuplot not found"), "%s", msgs);
        cr_assert(!exists(path));
    }
    assert_no_tmp();
    free(msgs);
}

Test(report, training_data_and_script)
{
    write_text(test_tmp_path("m.jsonl"), log3);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("m.jsonl"), test_tmp_path("run"), &d),
                 LIPC_OK, "%s", diags_text(&d));
    cr_assert_eq(d.n_errors, 0);

    char *dat = slurp(test_tmp_path("run-training.dat"));
    cr_assert_not_null(dat);
    /* epoch step loss acc cert K_sub eps lr seconds; null is NaN. */
    cr_assert(strstr(dat, "\n1 12 1.799143896 0.5208333333 0.005208333333 19.50353695 "
                          "0.2866666667 0.005 0.04\n"), "%s", dat);
    cr_assert(strstr(dat, "\n2 24 1.571433489 0.7994791667 0.0078125 NaN 0.45 "), "%s", dat);
    cr_assert(strstr(dat, "\n3 36 1.551759815 0.796875 0.05989583333 20.79446607 "), "%s", dat);
    /* The validation index: epochs 2 and 3 only. */
    const char *val = strstr(dat, "\n\n\n# validation");
    cr_assert_not_null(val, "%s", dat);
    cr_assert(strstr(val, "\n2 0.7421875 0.0859375\n3 0.734375 0.1875\n"), "%s", dat);
    cr_assert(!strstr(val, "\n1 "), "%s", dat);

    char *gp = slurp(test_tmp_path("run-training.gp"));
    cr_assert_not_null(gp);
    cr_assert(strstr(gp, "out = 'run-training.svg'"), "%s", gp);
    cr_assert(strstr(gp, "data = 'run-training.dat'"), "%s", gp);
    cr_assert(strstr(gp, "set multiplot layout 2,2"), "%s", gp);
    cr_assert(strstr(gp, "data index 1 using 1:3"), "%s", gp);
    cr_assert(strstr(gp, "set xrange [1:3]"), "%s", gp);
    assert_svg(test_tmp_path("run-training.svg"), &d);
    free(dat);
    free(gp);
    lipc_diags_free(&d);
}

Test(report, one_epoch_without_validation)
{
    write_text(test_tmp_path("one.jsonl"),
               "{\"epoch\":1,\"loss\":2.5,\"acc\":0.25,\"cert\":0,\"K_sub\":3}\n");
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("one.jsonl"), test_tmp_path("one"), &d),
                 LIPC_OK, "%s", diags_text(&d));
    char *dat = slurp(test_tmp_path("one-training.dat"));
    cr_assert(strstr(dat, "\n1 NaN 2.5 0.25 0 3 NaN NaN NaN\n"), "%s", dat);
    char *gp = slurp(test_tmp_path("one-training.gp"));
    /* A range around the single epoch, and no validation series. */
    cr_assert(strstr(gp, "set xrange [0.5:1.5]"), "%s", gp);
    cr_assert(!strstr(gp, "index 1"), "%s", gp);
    assert_svg(test_tmp_path("one-training.svg"), &d);
    free(dat);
    free(gp);
    lipc_diags_free(&d);
}

/* A run resumed from an older checkpoint appends epochs it had logged
 * already: the later records win. */
Test(report, resumed_log_keeps_the_later_records)
{
    write_text(test_tmp_path("r.jsonl"),
               "{\"epoch\":1,\"loss\":3,\"acc\":0.1,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":2,\"loss\":2,\"acc\":0.2,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":3,\"loss\":1,\"acc\":0.3,\"cert\":0,\"K_sub\":1}\n"
               "\n"
               "{\"epoch\":2,\"loss\":2.5,\"acc\":0.4,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":3,\"loss\":1.5,\"acc\":0.5,\"cert\":0,\"K_sub\":1}\n");
    lipc_diags d;
    lipc_diags_init(&d);
    setenv("LIPC_GNUPLOT", "lipc-no-such-gnuplot", 1);
    cr_assert_eq(lipc_report_training(test_tmp_path("r.jsonl"), test_tmp_path("r"), &d),
                 LIPC_OK, "%s", diags_text(&d));
    char *dat = slurp(test_tmp_path("r-training.dat"));
    cr_assert(strstr(dat, "\n1 NaN 3 0.1 0 1 NaN NaN NaN\n"
                          "2 NaN 2.5 0.4 0 1 NaN NaN NaN\n"
                          "3 NaN 1.5 0.5 0 1 NaN NaN NaN\n\n"), "%s", dat);
    free(dat);
    lipc_diags_free(&d);
}

Test(report, without_gnuplot_a_warning)
{
    write_text(test_tmp_path("m.jsonl"), log3);
    setenv("LIPC_GNUPLOT", "lipc-no-such-gnuplot", 1);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("m.jsonl"), test_tmp_path("run"), &d),
                 LIPC_OK);
    char *msgs = diags_text(&d);
    cr_assert_eq(d.n_errors, 0, "%s", msgs);
    cr_assert_eq(d.n_warnings, 1, "%s", msgs);
    cr_assert(strstr(msgs, "warning: gnuplot not found: the report data and script are in "),
              "%s", msgs);
    cr_assert(strstr(msgs, "run-training.dat and "), "%s", msgs);
    cr_assert(strstr(msgs, "install gnuplot-nox to draw it"), "%s", msgs);
    cr_assert(exists(test_tmp_path("run-training.dat")));
    cr_assert(exists(test_tmp_path("run-training.gp")));
    cr_assert(!exists(test_tmp_path("run-training.svg")));
    free(msgs);
    lipc_diags_free(&d);
}

/* A gnuplot that fails (here /bin/false) is an I/O error that
 * names the files, and leaves no temporary SVG. */
Test(report, failing_gnuplot_an_error)
{
    write_text(test_tmp_path("m.jsonl"), log3);
    setenv("LIPC_GNUPLOT", "/bin/false", 1);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("m.jsonl"), test_tmp_path("run"), &d),
                 LIPC_ERR_IO);
    char *msgs = diags_text(&d);
    cr_assert(strstr(msgs, "run-training.svg: error: gnuplot ("), "%s", msgs);
    cr_assert(strstr(msgs, "could not draw the report: exit status 1"), "%s", msgs);
    cr_assert(strstr(msgs, "note: the data and the script are in "), "%s", msgs);
    cr_assert(!exists(test_tmp_path("run-training.svg")));
    assert_no_tmp();
    free(msgs);
    lipc_diags_free(&d);
}

Test(report, malformed_line_named)
{
    write_text(test_tmp_path("bad.jsonl"),
               "{\"epoch\":1,\"loss\":2,\"acc\":0.2,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":2,\"loss\":\n"
               "{\"epoch\":3,\"loss\":1,\"acc\":0.3,\"cert\":0,\"K_sub\":1}\n"
               "[1, 2]\n");
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("bad.jsonl"), test_tmp_path("bad"), &d),
                 LIPC_ERR_INPUT);
    char *msgs = diags_text(&d);
    cr_assert_eq(d.n_errors, 2, "%s", msgs);
    cr_assert(strstr(msgs, "bad.jsonl:2:"), "%s", msgs);
    cr_assert(strstr(msgs, ": error: malformed record: "), "%s", msgs);
    /* The line is quoted. */
    cr_assert(strstr(msgs, "    2 | {\"epoch\":2,\"loss\":\n"), "%s", msgs);
    cr_assert(strstr(msgs, "bad.jsonl:4:1: error: the record is a JSON array, not an object"),
              "%s", msgs);
    /* Nothing is written from a bad log. */
    cr_assert(!exists(test_tmp_path("bad-training.dat")));
    cr_assert(!exists(test_tmp_path("bad-training.gp")));
    free(msgs);
    lipc_diags_free(&d);
}

Test(report, missing_and_mistyped_fields)
{
    write_text(test_tmp_path("f.jsonl"),
               "{\"epoch\":1,\"loss\":2,\"acc\":0.2,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":2,\"loss\":2,\"acc\":0.2,\"cert\":0}\n"
               "{\"epoch\":3,\"loss\":\"low\",\"acc\":0.2,\"cert\":0,\"K_sub\":1}\n"
               "{\"epoch\":0.5,\"loss\":2,\"acc\":0.2,\"cert\":0,\"K_sub\":1}\n");
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("f.jsonl"), test_tmp_path("f"), &d),
                 LIPC_ERR_INPUT);
    char *msgs = diags_text(&d);
    cr_assert(strstr(msgs, "f.jsonl:2:1: error: the record has no field 'K_sub'"), "%s", msgs);
    cr_assert(strstr(msgs, "f.jsonl:3:1: error: the field 'loss' is a string, not a number"),
              "%s", msgs);
    cr_assert(strstr(msgs, "f.jsonl:4:1: error: the field 'epoch' is 0.5; expected a whole "
                           "number >= 1"), "%s", msgs);
    cr_assert_eq(d.n_errors, 3, "%s", msgs);
    free(msgs);
    lipc_diags_free(&d);
}

Test(report, empty_and_missing_logs)
{
    write_text(test_tmp_path("empty.jsonl"), "\n  \n");
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("empty.jsonl"), test_tmp_path("e"), &d),
                 LIPC_ERR_INPUT);
    char *msgs = diags_text(&d);
    cr_assert(strstr(msgs, "empty.jsonl: error: the metrics log has no records"), "%s", msgs);
    free(msgs);
    lipc_diags_free(&d);

    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("none.jsonl"), test_tmp_path("e"), &d),
                 LIPC_ERR_IO);
    msgs = diags_text(&d);
    cr_assert(strstr(msgs, "none.jsonl: error: cannot open the metrics log: "), "%s", msgs);
    cr_assert(!exists(test_tmp_path("e-training.dat")));
    free(msgs);
    lipc_diags_free(&d);
}

/* A quote and a space in the output name survive the script's quoting. */
Test(report, awkward_output_name)
{
    write_text(test_tmp_path("m.jsonl"), log3);
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_training(test_tmp_path("m.jsonl"), test_tmp_path("it's a run"), &d),
                 LIPC_OK, "%s", diags_text(&d));
    char *gp = slurp(test_tmp_path("it's a run-training.gp"));
    cr_assert_not_null(gp);
    cr_assert(strstr(gp, "data = 'it''s a run-training.dat'"), "%s", gp);
    assert_svg(test_tmp_path("it's a run-training.svg"), &d);
    free(gp);
    lipc_diags_free(&d);
}

/* Radii given out of order come back sorted, led by the clean accuracy at
 * eps 0, every number as given. */
Test(report, vra_round_trip)
{
    const double eps[] = {0.3, 0.1, 0.5, 0.141};
    const double vra[] = {0.5, 0.75, 0.125, 0.6875};
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_vra(eps, vra, 4, 0.9375, test_tmp_path("c"), &d), LIPC_OK, "%s",
                 diags_text(&d));
    FILE *f = fopen(test_tmp_path("c-vra.tsv"), "r");
    cr_assert_not_null(f);
    char line[128];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_assert_str_eq(line, "eps\tvra\n");
    const double want_eps[] = {0, 0.1, 0.141, 0.3, 0.5};
    const double want_vra[] = {0.9375, 0.75, 0.6875, 0.5, 0.125};
    double got_eps[5], got_vra[5];
    int n = 0;
    while (n < 6 && fgets(line, sizeof line, f)) {
        cr_assert(n < 5, "an extra row: %s", line);
        cr_assert_eq(sscanf(line, "%lf\t%lf", &got_eps[n], &got_vra[n]), 2, "%s", line);
        n++;
    }
    fclose(f);
    cr_assert_eq(n, 5);
    cr_assert(test_allclose("eps", got_eps, want_eps, 5, 0, 0));
    cr_assert(test_allclose("vra", got_vra, want_vra, 5, 0, 0));
    for (int k = 1; k < 5; k++)
        cr_assert(got_eps[k] > got_eps[k - 1] && got_vra[k] <= got_vra[k - 1]);

    char *gp = slurp(test_tmp_path("c-vra.gp"));
    cr_assert(strstr(gp, "plot 'c-vra.tsv' skip 1 using 1:2"), "%s", gp);
    cr_assert(strstr(gp, "clean = 0.9375\n"), "%s", gp);
    assert_svg(test_tmp_path("c-vra.svg"), &d);
    free(gp);
    lipc_diags_free(&d);
}

/* A radius of 0 is its own row: the clean accuracy does not add another. */
Test(report, vra_zero_radius_and_bad_values)
{
    const double eps[] = {0, 0.25};
    const double vra[] = {0.875, 0.5};
    lipc_diags d;
    lipc_diags_init(&d);
    setenv("LIPC_GNUPLOT", "lipc-no-such-gnuplot", 1);
    cr_assert_eq(lipc_report_vra(eps, vra, 2, 0.9, test_tmp_path("z"), &d), LIPC_OK);
    char *tsv = slurp(test_tmp_path("z-vra.tsv"));
    cr_assert_str_eq(tsv, "eps\tvra\n0\t0.875\n0.25\t0.5\n");
    free(tsv);
    lipc_diags_free(&d);

    const double bad[] = {0.1, NAN};
    lipc_diags_init(&d);
    cr_assert_eq(lipc_report_vra(eps, bad, 2, 0.9, test_tmp_path("y"), &d), LIPC_ERR_INPUT);
    cr_assert_eq(d.n_errors, 1);
    cr_assert(!exists(test_tmp_path("y-vra.tsv")));
    lipc_diags_free(&d);
}

Test(report, stem)
{
    cr_assert_eq(lipc_report_stem("runs/syn.metrics.jsonl"), strlen("runs/syn"));
    cr_assert_eq(lipc_report_stem("syn.jsonl"), strlen("syn"));
    cr_assert_eq(lipc_report_stem("fm.safetensors"), strlen("fm"));
    cr_assert_eq(lipc_report_stem("log.txt"), strlen("log.txt"));
    cr_assert_eq(lipc_report_stem(".jsonl"), strlen(".jsonl"));
}
