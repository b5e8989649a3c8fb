/* tests/test_alloc.c: every allocation failure on the way from YAML to a
 * printed IR is reported as LIPC_ERR_NOMEM and cleaned up.
 *
 * For N = 1, 2, ... the Nth allocation (through lipc's hook) and all after it
 * fail while models/liresnet-fmnist.yaml is loaded, run through the pipeline
 * and printed as text; the walk ends at the first N the run no longer reaches.
 * Each step must end in LIPC_OK or LIPC_ERR_NOMEM, never a crash, and free
 * everything (the sanitizer build reports leaks). libyaml allocates with plain
 * malloc, so only lipc's own allocations are failed.
 */
#include "frontend/frontend.h"
#include "passes/passes.h"

#include <criterion/criterion.h>

#define MODEL LIPC_SOURCE_DIR "/models/liresnet-fmnist.yaml"

/* One load + pipeline + print. Returns the status of the first step that
 * failed, or of the print (NOMEM when its buffer ran out). */
static lipc_status run_once(void)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_file(MODEL, NULL, &d, &g);
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
    /* Formatting may fail too; it must not crash. */
    lipc_buf text;
    lipc_buf_init(&text);
    lipc_diags_format(&d, &text);
    if (st != LIPC_OK && st != LIPC_ERR_NOMEM)
        cr_log_error("unexpected diagnostics:\n%s", lipc_buf_str(&text));
    lipc_buf_free(&text);
    lipc_graph_free(g);
    lipc_diags_free(&d);
    return st;
}

Test(alloc, every_failure_is_nomem, .timeout = 600)
{
    lipc_alloc_fail_after(0);
    cr_assert_eq(run_once(), LIPC_OK, "the model must compile without a limit");
    long total = lipc_alloc_fail_after(0);
    cr_assert_gt(total, 0);

    long n;
    for (n = 1;; n++) {
        lipc_alloc_fail_after(n);
        lipc_status st = run_once();
        long made = lipc_alloc_fail_after(0);
        cr_assert(st == LIPC_OK || st == LIPC_ERR_NOMEM, "failing allocation %ld of %ld: status %s",
                  n, total, lipc_status_name(st));
        if (made < n) {
            /* The limit was never reached: this run must have succeeded. */
            cr_assert_eq(st, LIPC_OK, "allocation %ld was never made, yet the run failed", n);
            break;
        }
        cr_assert_eq(st, LIPC_ERR_NOMEM,
                     "allocation %ld of %ld failed, yet the run "
                     "reported success",
                     n, total);
    }
    cr_assert_gt(n, total, "the walk stopped at %ld of %ld allocations", n, total);
}
