/* tests/test_diag.c: golden diagnostics.
 *
 * Every tests/diag/NAME.yaml is a model with mistakes; NAME.err beside it is the
 * exact text `lipc check NAME.yaml` prints on stderr when run inside tests/diag
 * (so file names in it are bare). One parameterized test runs each case through
 * the library the way the CLI does (load, then the pass pipeline with the
 * verifier) and compares the formatted diagnostics byte for byte, printing a
 * line diff on mismatch. A case that produces no error fails too: a bad file
 * that passes is a bug. Cases are found at run time, so adding a pair of files
 * adds a test; scripts/update-diag-goldens.sh regenerates the .err files.
 */
#include "frontend/frontend.h"
#include "passes/passes.h"

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIAG_DIR LIPC_SOURCE_DIR "/tests/diag"
#define MAX_CASES 512

typedef struct diag_case {
    char name[128]; /* NAME.yaml, relative to DIAG_DIR */
} diag_case;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const diag_case *)a)->name, ((const diag_case *)b)->name);
}

/* Scans DIAG_DIR for *.yaml (sorted, so runs list cases in a stable order). */
static int scan_cases(diag_case *out, int max)
{
    DIR *dir = opendir(DIAG_DIR);
    if (!dir)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len <= 5 || len >= sizeof out[0].name || strcmp(e->d_name + len - 5, ".yaml") != 0)
            continue;
        memcpy(out[n].name, e->d_name, len + 1);
        n++;
    }
    closedir(dir);
    qsort(out, (size_t)n, sizeof *out, by_name);
    return n;
}

static void free_cases(struct criterion_test_params *p)
{
    cr_free(p->params);
}

ParameterizedTestParameters(diag, golden)
{
    static diag_case found[MAX_CASES];
    int n = scan_cases(found, MAX_CASES);
    /* Criterion copies parameters into the test's process: they must come from
     * cr_malloc, not the heap or the stack. */
    diag_case *cases = cr_malloc(sizeof *cases * (size_t)(n > 0 ? n : 1));
    memcpy(cases, found, sizeof *cases * (size_t)n);
    return cr_make_param_array(diag_case, cases, (size_t)n, free_cases);
}

/* The whole file, NUL-terminated; *len excludes the NUL. NULL if unreadable. */
static char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, fp)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(fp);
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

/* Splits text into lines in place ('\n' becomes NUL); returns the count. */
static int split_lines(char *text, size_t len, char **lines, int max)
{
    int n = 0;
    char *p = text, *end = text + len;
    while (p < end && n < max) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        lines[n++] = p;
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    return n;
}

/* A line diff (longest common subsequence): ' ' both, '-' expected only,
 * '+' got only. Golden files are short, so the quadratic table is fine. */
static void print_diff(const char *name, const char *want, size_t want_len, const char *got,
                       size_t got_len)
{
    enum { MAX_LINES = 400 };
    char *a_text = malloc(want_len + 1), *b_text = malloc(got_len + 1);
    static char *a[MAX_LINES], *b[MAX_LINES];
    static int lcs[MAX_LINES + 1][MAX_LINES + 1];
    if (!a_text || !b_text) {
        free(a_text);
        free(b_text);
        return;
    }
    memcpy(a_text, want, want_len);
    memcpy(b_text, got, got_len);
    int na = split_lines(a_text, want_len, a, MAX_LINES);
    int nb = split_lines(b_text, got_len, b, MAX_LINES);
    for (int i = na; i >= 0; i--)
        for (int j = nb; j >= 0; j--)
            lcs[i][j] = i == na || j == nb              ? 0
                        : strcmp(a[i], b[j]) == 0       ? lcs[i + 1][j + 1] + 1
                        : lcs[i + 1][j] > lcs[i][j + 1] ? lcs[i + 1][j]
                                                        : lcs[i][j + 1];
    fprintf(stderr, "--- tests/diag/%.*s.err (expected)\n+++ lipc diagnostics (got)\n",
            (int)strlen(name) - 5, name);
    int i = 0, j = 0;
    while (i < na || j < nb) {
        if (i < na && j < nb && strcmp(a[i], b[j]) == 0) {
            fprintf(stderr, " %s\n", a[i]);
            i++;
            j++;
        } else if (i < na && (j == nb || lcs[i + 1][j] >= lcs[i][j + 1])) {
            fprintf(stderr, "-%s\n", a[i++]);
        } else {
            fprintf(stderr, "+%s\n", b[j++]);
        }
    }
    free(a_text);
    free(b_text);
}

ParameterizedTest(diag_case *c, diag, golden)
{
    cr_assert_eq(chdir(DIAG_DIR), 0, "cannot enter %s", DIAG_DIR);

    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_file(c->name, NULL, &d, &g);
    if (st == LIPC_OK)
        st = lipc_pipeline_run(g, &(lipc_pipeline_options){.verify = true}, &d);
    lipc_buf got;
    lipc_buf_init(&got);
    /* Before freeing the graph: pass errors point into it for the file name. */
    lipc_diags_format(&d, &got);
    lipc_graph_free(g);
    int n_errors = d.n_errors;
    lipc_diags_free(&d);

    char err_name[160];
    snprintf(err_name, sizeof err_name, "%.*s.err", (int)strlen(c->name) - 5, c->name);
    size_t want_len = 0;
    char *want = read_all(err_name, &want_len);
    const char *text = lipc_buf_str(&got);
    size_t got_len = strlen(text);
    bool same = want && want_len == got_len && memcmp(want, text, got_len) == 0;
    if (want && !same)
        print_diff(c->name, want, want_len, text, got_len);
    bool accepted = n_errors == 0 || st == LIPC_OK;
    if (!want)
        fprintf(stderr, "%s: no golden file %s; got:\n%s", c->name, err_name, text);
    free(want);
    lipc_buf_free(&got);

    cr_expect_not(accepted, "%s: a bad model was accepted (status %s, %d errors)", c->name,
                  lipc_status_name(st), n_errors);
    cr_expect(st != LIPC_ERR_NOMEM && st != LIPC_ERR_IO, "%s: status %s", c->name,
              lipc_status_name(st));
    cr_assert(same,
              "%s: diagnostics differ from %s (diff above; "
              "scripts/update-diag-goldens.sh regenerates the goldens)",
              c->name, err_name);
}

/* The golden folder itself: enough cases, and every case has its .err. */
Test(diag, folder_is_complete)
{
    static diag_case cases[MAX_CASES];
    int n = scan_cases(cases, MAX_CASES);
    cr_assert_geq(n, 40, "only %d cases in %s", n, DIAG_DIR);
    for (int i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%.*s.err", DIAG_DIR, (int)strlen(cases[i].name) - 5,
                 cases[i].name);
        cr_expect_eq(access(path, R_OK), 0, "%s has no golden %s", cases[i].name, path);
    }
}
