/* tests/fuzz/fuzz_body.c: the body of the frontend fuzzer (see fuzz_body.h).
 *
 * Limits are small (5000 IR nodes, 200000 YAML visits) so one input runs in
 * milliseconds and the fuzzer spends its time on shapes of input, not on
 * legitimately large models. Memory errors are the sanitizers' business; this
 * function only detects the one failure they cannot see: a graph that the
 * verifier rejects, which means a pass (or the frontend) broke an invariant. */
#include "tests/fuzz/fuzz_body.h"

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

bool lipc_fuzz_one(const uint8_t *data, size_t size, char **diag_out)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_load_options lo = {.max_nodes = 5000, .max_visits = 200000};
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_string("fuzz.yaml", (const char *)data, size, &lo, &d, &g);
    if (st == LIPC_OK) {
        st = lipc_pipeline_run(g, &(lipc_pipeline_options){.verify = true}, &d);
        if (st == LIPC_OK) {
            lipc_buf b;
            lipc_buf_init(&b);
            lipc_graph_print(g, LIPC_FORMAT_TEXT, &b);
            lipc_graph_print(g, LIPC_FORMAT_DOT, &b);
            lipc_graph_print(g, LIPC_FORMAT_JSON, &b);
            lipc_buf_free(&b);
        }
    }
    /* Format before freeing the graph: errors from passes point at its nodes'
     * locations, whose file name lives in the graph's arena. */
    lipc_buf text;
    lipc_buf_init(&text);
    lipc_diags_format(&d, &text);
    lipc_graph_free(g);
    /* The verifier words every finding "internal error after pass 'X'"; look
     * at the messages, not the formatted text, which quotes the user's lines. */
    bool ok = true;
    for (const lipc_diag_msg *m = d.first; m; m = m->next)
        if (strncmp(m->text, "internal error", 14) == 0)
            ok = false;
    /* A model that loaded must either pass the pipeline or say why. */
    if (st != LIPC_OK && st != LIPC_ERR_NOMEM && d.n_errors == 0)
        ok = false;
    if (diag_out) {
        const char *s = lipc_buf_str(&text);
        *diag_out = malloc(strlen(s) + 1);
        if (*diag_out)
            strcpy(*diag_out, s);
    }
    lipc_buf_free(&text);
    lipc_diags_free(&d);
    return ok;
}
