/* cli/common.c: what the commands of `lipc` share: usage errors, exit
 * statuses, `--set` parsing, and compiling a model file through the pipeline. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/internal.h"

const char *cli_embedded_name, *cli_embedded_text;
const lipc_override *cli_embedded_sets;
int cli_embedded_n_sets;
const char *cli_program = "lipc";

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    fprintf(stderr, "%s %s: error: ", cli_program, cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s %s --help'.\n", cli_program, cmd);
    return CLI_EXIT_USAGE;
}

int cli_status_exit(lipc_status st)
{
    switch (st) {
    case LIPC_OK: return 0;
    case LIPC_ERR_INPUT: return CLI_EXIT_INVALID;
    default: return CLI_EXIT_ENV;
    }
}

/* Loads one model and runs the pipeline; diagnostics go to stderr. */
lipc_status cli_compile(const char *path, const lipc_override *sets, int n_sets,
                           const lipc_pipeline_options *po, lipc_graph **out)
{
    lipc_diags d;
    lipc_diags_init(&d);
    bool embedded = cli_embedded_text && strcmp(path, cli_embedded_name) == 0;
    lipc_load_options lo = {.sets = embedded ? cli_embedded_sets : sets,
                            .n_sets = embedded ? cli_embedded_n_sets : n_sets};
    lipc_graph *g = NULL;
    lipc_status st =
        embedded
            ? lipc_frontend_load_string(path, cli_embedded_text, strlen(cli_embedded_text), &lo,
                                        &d, &g)
            : lipc_frontend_load_file(path, &lo, &d, &g);
    if (st == LIPC_OK) {
        st = lipc_pipeline_run(g, po, &d);
        if (st != LIPC_OK) {
            lipc_graph_free(g);
            g = NULL;
        }
    }
    lipc_diags_print(&d, stderr);
    if (st == LIPC_ERR_NOMEM)
        fprintf(stderr, "lipc: error: out of memory while compiling %s\n", path);
    lipc_diags_free(&d);
    *out = g;
    return st;
}

int cli_parse_set(const char *cmd, char *arg, lipc_override *sets, int *n_sets)
{
    if (*n_sets == CLI_MAX_SETS)
        return cli_usage_error(cmd, "too many --set options (at most %d)", CLI_MAX_SETS);
    if (!lipc_override_parse(arg, &sets[*n_sets]))
        return cli_usage_error(cmd, "--set takes KEY=VALUE, got '%s'", arg);
    (*n_sets)++;
    return 0;
}
