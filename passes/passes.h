/* passes/passes.h: the pass pipeline over the IR.
 *
 * A pass is {name, run(graph, diagnostics)}; the pipeline is one static array
 * (passes/pipeline.c) run in order. After each pass the IR can be verified and
 * printed, which is what `lipc dump --print-after=PASS` shows.
 */
#ifndef LIPC_PASSES_H
#define LIPC_PASSES_H

#include "ir/ir.h"

typedef struct lipc_pass {
    const char *name;
    const char *summary;
    /* Returns false when it reported errors (user errors: diagnostics). */
    bool (*run)(lipc_graph *g, lipc_diags *d);
} lipc_pass;

extern const lipc_pass lipc_pipeline[];
extern const int lipc_pipeline_len;

typedef struct lipc_pipeline_options {
    bool verify;                /* run the verifier after every pass */
    const char *print_after;    /* a pass name, "frontend", "all", or NULL */
    lipc_format format;         /* of what print_after prints */
    lipc_buf *print_out;        /* where it goes (required with print_after) */
    const char *stop_after;     /* run no pass after this one (NULL: all) */
} lipc_pipeline_options;

/* Runs the pipeline. LIPC_ERR_INPUT when a pass reported user errors or the
 * verifier failed; LIPC_ERR_NOMEM when memory ran out. */
lipc_status lipc_pipeline_run(lipc_graph *g, const lipc_pipeline_options *o,
                              lipc_diags *d);
/* The pass called name, or NULL. */
const lipc_pass *lipc_pass_find(const char *name);

bool lipc_pass_infer_shapes(lipc_graph *g, lipc_diags *d);
bool lipc_pass_fold_residual(lipc_graph *g, lipc_diags *d);
bool lipc_pass_lipschitz(lipc_graph *g, lipc_diags *d);

/* train-graph: lowers a graph that went through the pipeline to the program
 * of an entry point (see "programs" in ir/ir.h), memory planned. NULL with a
 * diagnostic when the model cannot be trained (no dense head), or with
 * g->oom set when memory ran out. */
lipc_program *lipc_build_program(lipc_graph *g, lipc_entry entry, lipc_diags *d);

/* plan-memory: liveness of every activation and gradient over the steps, then
 * first-fit offsets in one arena (p->act_offset, p->grad_offset,
 * p->arena_per_example). False when out of memory. */
bool lipc_plan_memory(lipc_program *p);

#endif
