/* cli/internal.h: shared by the files of cli/ only. */
#ifndef LIPC_CLI_INTERNAL_H
#define LIPC_CLI_INTERNAL_H

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"

/* Exit statuses of every command. */
enum { CLI_EXIT_INVALID = 1, CLI_EXIT_USAGE = 2, CLI_EXIT_ENV = 3 };

#define CLI_MAX_SETS 64

/* "lipc CMD: error: ...", a pointer to --help; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The exit status for a status: 0, CLI_EXIT_INVALID or CLI_EXIT_ENV. */
int cli_status_exit(lipc_status st);
/* Parses a `--set KEY=VALUE` argument into sets (in place); 0 or a usage error. */
int cli_parse_set(const char *cmd, char *arg, lipc_override *sets, int *n_sets);
/* Loads a model and runs the pass pipeline; diagnostics go to stderr. *out is
 * the graph on success, NULL otherwise. */
lipc_status cli_compile(const char *path, const lipc_override *sets, int n_sets,
                        const lipc_pipeline_options *po, lipc_graph **out);

/* The commands of cli/run.c: train, certify, bound. argv excludes the command. */
int cli_train(int argc, char **argv);
int cli_certify(int argc, char **argv);
int cli_bound(int argc, char **argv);

#endif
