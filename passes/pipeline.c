/* passes/pipeline.c: the one list of passes and the loop that runs them.
 *
 * Order matters and is fixed: shapes first (every later pass reads them),
 * then the rewrite that folds linear residual blocks, then the analysis that
 * classifies each layer's Lipschitz bound on the folded graph. The verifier
 * runs between passes in tests (and on request in the CLI), so a pass that
 * breaks an invariant is caught at the pass, not three passes later.
 */
#include "passes/passes.h"

#include <string.h>

const lipc_pass lipc_pipeline[] = {
    {"infer-shapes", "static shapes, resolved padding, parameter declarations",
     lipc_pass_infer_shapes},
    {"fold-residual", "x + conv(x) -> one conv with the identity on the centre tap",
     lipc_pass_fold_residual},
    {"lipschitz", "per-layer bound: how each layer's Lipschitz constant is obtained",
     lipc_pass_lipschitz},
};
const int lipc_pipeline_len = (int)(sizeof lipc_pipeline / sizeof lipc_pipeline[0]);

const lipc_pass *lipc_pass_find(const char *name)
{
    for (int i = 0; i < lipc_pipeline_len; i++)
        if (strcmp(lipc_pipeline[i].name, name) == 0)
            return &lipc_pipeline[i];
    return NULL;
}

static void print_stage(const lipc_graph *g, const lipc_pipeline_options *o,
                        const char *stage)
{
    if (!o->print_after || !o->print_out)
        return;
    if (strcmp(o->print_after, "all") != 0 && strcmp(o->print_after, stage) != 0)
        return;
    if (o->format == LIPC_FORMAT_TEXT)
        lipc_buf_printf(o->print_out, "; IR after %s\n", stage);
    lipc_graph_print(g, o->format, o->print_out);
}

lipc_status lipc_pipeline_run(lipc_graph *g, const lipc_pipeline_options *o,
                              lipc_diags *d)
{
    static const lipc_pipeline_options defaults;
    if (!o)
        o = &defaults;
    if (o->verify && !lipc_graph_verify(g, "frontend", d))
        return LIPC_ERR_INPUT;
    print_stage(g, o, "frontend");
    for (int i = 0; i < lipc_pipeline_len; i++) {
        const lipc_pass *p = &lipc_pipeline[i];
        int errors = d->n_errors;
        bool ok = p->run(g, d);
        if (g->oom)
            return LIPC_ERR_NOMEM;
        if (!ok || d->n_errors > errors)
            return LIPC_ERR_INPUT;
        if (o->verify && !lipc_graph_verify(g, p->name, d))
            return LIPC_ERR_INPUT;
        print_stage(g, o, p->name);
        if (o->stop_after && strcmp(o->stop_after, p->name) == 0)
            break;
    }
    return LIPC_OK;
}
