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

/* A model built into the program (an executable of `lipc build`): its file
 * name and text. When set, commands take no FILE and no --set (the code is
 * specialised for the build's parameters). */
extern const char *cli_embedded_name, *cli_embedded_text;
extern const lipc_override *cli_embedded_sets;
extern int cli_embedded_n_sets;
/* The program's name in messages: "lipc", or the built executable's. */
extern const char *cli_program;

/* The commands of cli/run.c: train, certify, bound, predict. argv excludes the
 * command. */
int cli_predict(int argc, char **argv);
int cli_train(int argc, char **argv);
int cli_certify(int argc, char **argv);
int cli_bound(int argc, char **argv);
/* cli/build.c */
int cli_build(int argc, char **argv);

#endif
