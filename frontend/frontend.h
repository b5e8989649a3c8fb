/* frontend/frontend.h: YAML model specs -> checked IR graph.
 *
 * The frontend reads a model file with libyaml's document API, checks it
 * against the model language (docs/model-spec.md): every key known, every
 * value typed, parameters substituted, `repeat` and `residual` expanded, and
 * builds the forward IR graph in which every node remembers its
 * file:line:col. All problems in a file are reported together as diagnostics.
 */
#ifndef LIPC_FRONTEND_H
#define LIPC_FRONTEND_H

#include "ir/ir.h"

/* A command-line override: `--set key=value` assigns a declared parameter. */
typedef struct lipc_override {
    const char *key;
    const char *value;
} lipc_override;

typedef struct lipc_load_options {
    const lipc_override *sets;
    int n_sets;
    int max_depth;        /* nesting limit of the YAML tree (0: 64) */
    long max_nodes;       /* limit on IR nodes after expansion (0: 100000) */
    long max_visits;      /* limit on YAML nodes visited, aliases expanded (0: 2000000) */
} lipc_load_options;

/* Splits `--set` text "key=value" in place (the '=' becomes a NUL) into o.
 * False when the text has no '=' or an empty key. */
bool lipc_override_parse(char *text, lipc_override *o);

/* Loads the model in `path`. On success *out is the graph (shapes not yet
 * inferred: run the pass pipeline) and LIPC_OK is returned. User errors give
 * LIPC_ERR_INPUT with diagnostics in d; an unreadable file LIPC_ERR_IO; memory
 * exhaustion LIPC_ERR_NOMEM. *out is NULL unless LIPC_OK. */
lipc_status lipc_frontend_load_file(const char *path, const lipc_load_options *o,
                                    lipc_diags *d, lipc_graph **out);

/* The same for text already in memory; `name` is used in diagnostics. The
 * text need not be NUL-terminated. */
lipc_status lipc_frontend_load_string(const char *name, const char *text,
                                      size_t len, const lipc_load_options *o,
                                      lipc_diags *d, lipc_graph **out);

/* The top-level keys of a model file, NULL-terminated (for docs and help). */
extern const char *const lipc_model_keys[];

#endif
