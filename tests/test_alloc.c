/* tests/test_alloc.c: every allocation failure on the way from YAML to a
 * printed IR is reported as LIPC_ERR_NOMEM and cleaned up.
 *
 * For N = 1, 2, ... the Nth allocation (through lipc's hook) and all after it
 * fail while a model is loaded, run through the pipeline and printed as text;
 * the walk ends at the first N the run no longer reaches. Each step must end
 * in the status of the unlimited run or LIPC_ERR_NOMEM, never a crash, and
 * free everything (the sanitizer build reports leaks). The good model walks
 * the success path; a few golden bad files walk the paths that build
 * diagnostics. libyaml allocates with plain malloc, so only lipc's own
 * allocations are failed.
 */
#include "frontend/frontend.h"
#include "passes/passes.h"

#include <criterion/criterion.h>

/* One load + pipeline + print of `path`. Returns the status of the first step
 * that failed, or of the print (NOMEM when its buffer ran out). */
static lipc_status run_once(const char *path)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_file(path, NULL, &d, &g);
    /* Without the verifier: ir/verify.c reports its own allocation failure as
     * an error, which the pipeline returns as LIPC_ERR_INPUT, not NOMEM. */
    if (st == LIPC_OK)
        st = lipc_pipeline_run(g, &(lipc_pipeline_options){.verify = false}, &d);
    if (st == LIPC_OK) {
        lipc_buf b;
        lipc_buf_init(&b);
        lipc_graph_print_text(g, &b);
        if (b.failed)
            st = LIPC_ERR_NOMEM;
        lipc_buf_free(&b);
    }
    /* Formatting may run out of memory too; it must not crash. Diagnostics
     * about the graph's nodes are formatted before the graph is freed. */
    lipc_buf text;
    lipc_buf_init(&text);
    lipc_diags_format(&d, &text);
    lipc_buf_free(&text);
    lipc_graph_free(g);
    lipc_diags_free(&d);
    return st;
}

/* Walks N = 1, 2, ... over `path`, whose unlimited run ends in `want`. */
static void walk(const char *path, lipc_status want)
{
    lipc_alloc_fail_after(0);
    cr_assert_eq(run_once(path), want, "%s: the unlimited run must end in %s", path,
                 lipc_status_name(want));
    long total = lipc_alloc_fail_after(0);
    cr_assert_gt(total, 0);

    long n;
    for (n = 1;; n++) {
        lipc_alloc_fail_after(n);
        lipc_status st = run_once(path);
        long made = lipc_alloc_fail_after(0);
        if (made < n) {
            /* The limit was never reached: the run is the unlimited one. */
            cr_assert_eq(st, want, "%s: allocation %ld was never made, yet the run ended in %s",
                         path, n, lipc_status_name(st));
            break;
        }
        /* A bad file may be rejected before the failed allocation matters
         * (INPUT); a good one must report the failure. */
        cr_assert(st == LIPC_ERR_NOMEM || (want != LIPC_OK && st == want),
                  "%s: allocation %ld of %ld failed, yet the run ended in %s", path, n, total,
                  lipc_status_name(st));
    }
    cr_assert_gt(n, total, "%s: the walk stopped at %ld of %ld allocations", path, n, total);
}

Test(alloc, model_compiles_or_reports_nomem, .timeout = 600)
{
    walk(LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml", LIPC_OK);
}

Test(alloc, diagnostics_survive_allocation_failures, .timeout = 600)
{
    static const char *const cases[] = {
        "several-errors",      "residual-changes-shape", "syntax-unclosed-flow", "duplicate-op-key",
        "repeat-zero-checked", "missing-several-attrs",  "alias-bomb",           "unknown-op-conv",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tests/diag/%s.yaml", LIPC_SOURCE_DIR, cases[i]);
        walk(path, LIPC_ERR_INPUT);
    }
}
