/* cli/lipc.c: the `lipc` command.
 *
 *   lipc check FILE...            validate, print a one-screen summary per model
 *   lipc dump FILE [--print-after=PASS|all] [--format=text|dot|json] [--set k=v]
 *   lipc ops                      the ops of the model language and their attributes
 *
 * Exit status: 0 success, 1 a model was rejected (diagnostics on stderr),
 * 2 the command line itself was wrong, 3 an environment error (I/O, memory).
 * This is the only file of lipc that calls exit (through main's return).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cuda/gpu.h"
#include "cli/internal.h"

static const char *usage_main =
    "usage: lipc <command> [options]\n"
    "\n"
    "lipc compiles models written in YAML (docs/model-spec.md) for certifiably\n"
    "robust training and certification.\n"
    "\n"
    "commands:\n"
    "  check FILE...     validate models and print a summary of each\n"
    "  dump FILE         print the IR after a pass (text, Graphviz dot or JSON)\n"
    "  ops               list the ops of the model language and their attributes\n"
    "  train FILE        certified training (compiled for this CPU by default)\n"
    "  certify FILE      clean accuracy and verified robust accuracy of a checkpoint\n"
    "  bound FILE        per-layer Lipschitz estimates of a checkpoint\n"
    "  predict FILE      classify a test split with a checkpoint\n"
    "  build FILE -o N   a standalone executable N for the model (train, certify, ...)\n"
    "\n"
    "options:\n"
    "  -h, --help        this help; `lipc <command> --help` for a command's\n"
    "  --version         print lipc's version\n";

static const char *usage_check =
    "usage: lipc check [--set KEY=VALUE]... FILE...\n"
    "\n"
    "Validates each model: the YAML against the model language, shapes, residual\n"
    "folding and the classification of every layer's Lipschitz bound. Prints a\n"
    "summary per model. Exit status 0 when every file is valid, 1 otherwise.\n"
    "\n"
    "options:\n"
    "  --set KEY=VALUE   override a parameter declared under `params:` (repeatable)\n"
    "  -q, --quiet       print only errors\n";

static const char *usage_dump =
    "usage: lipc dump FILE [--print-after=PASS|all] [--format=text|dot|json]\n"
    "                      [--emit=ir|train|forward|llvm|asm|cuda|ptx] [--set KEY=VALUE]...\n"
    "\n"
    "Prints the IR of a model after a pass of the pipeline (default: after the\n"
    "last one). Passes, in order:\n"
    "  frontend          the graph as built from the YAML (no pass has run)\n";

/* ---- check -------------------------------------------------------------------- */

static void human_count(size_t n, char buf[32])
{
    if (n >= 10000000)
        snprintf(buf, 32, "%.1fM", n / 1e6);
    else if (n >= 10000)
        snprintf(buf, 32, "%.1fk", n / 1e3);
    else
        snprintf(buf, 32, "%zu", n);
}

static size_t node_params(const lipc_graph *g, const lipc_node *n)
{
    size_t total = 0;
    for (int i = 0; i < n->n_param; i++)
        total += g->params[n->param[i]].numel;
    return total;
}

/* One line of the layer table, without the name: op, attributes, shape,
 * parameter count, bound. */
static void layer_signature(const lipc_graph *g, const lipc_node *n, lipc_buf *b)
{
    char shape[48], count[32];
    lipc_buf attrs;
    lipc_buf_init(&attrs);
    lipc_node_format_attrs(n, &attrs);
    human_count(node_params(g, n), count);
    const char *bound = n->lip.kind == LIPC_LIP_OPNORM || n->lip.kind == LIPC_LIP_LOOSE ||
                                n->lip.kind == LIPC_LIP_HEAD || n->lip.kind == LIPC_LIP_CONST
                            ? n->lip.method
                            : lipc_lip_kind_names[n->lip.kind];
    char bound_text[64];
    snprintf(bound_text, sizeof bound_text, "%s%s", n->lip.kind == LIPC_LIP_LOOSE ? "loose " : "",
             bound ? bound : "");
    lipc_buf_printf(b, "%-8s %-10s %7s  %-26s %s", lipc_op_info(n->op)->name,
                    lipc_shape_str(n->shape, shape), n->n_param ? count : "", bound_text,
                    lipc_buf_str(&attrs));
    lipc_buf_free(&attrs);
}

/* The repeat a node belongs to, from its name: "blocks.3.residual_0.conv2d_0"
 * gives the prefix "blocks." (length 7) and index 3; -1 when none. */
static int repeat_index(const char *name, size_t *prefix_len)
{
    for (const char *p = name; *p; p++) {
        if (*p != '.' || !(p[1] >= '0' && p[1] <= '9'))
            continue;
        const char *q = p + 1;
        int k = 0;
        while (*q >= '0' && *q <= '9')
            k = k * 10 + (*q++ - '0');
        if (*q == '.' || *q == '\0') {
            *prefix_len = (size_t)(p - name) + 1;
            return k;
        }
    }
    return -1;
}

/* Nodes from n that belong to iteration k of the repeat named by prefix. */
static int group_len(const lipc_node *n, const char *prefix, size_t len, int k)
{
    char head[160];
    snprintf(head, sizeof head, "%.*s%d.", (int)len, prefix, k);
    int count = 0;
    for (; n && n->name && strncmp(n->name, head, strlen(head)) == 0; n = n->next)
        count++;
    return count;
}

static bool same_layers(const lipc_graph *g, const lipc_node *a, const lipc_node *b, int len)
{
    bool same = true;
    for (int i = 0; i < len && same; i++, a = a->next, b = b->next) {
        lipc_buf x, y;
        lipc_buf_init(&x);
        lipc_buf_init(&y);
        layer_signature(g, a, &x);
        layer_signature(g, b, &y);
        same = strcmp(lipc_buf_str(&x), lipc_buf_str(&y)) == 0;
        lipc_buf_free(&x);
        lipc_buf_free(&y);
    }
    return same;
}

static void print_layer(const lipc_graph *g, const lipc_node *n, int name_w)
{
    lipc_buf line;
    lipc_buf_init(&line);
    layer_signature(g, n, &line);
    printf("  %-*s %s\n", name_w, n->name, lipc_buf_str(&line));
    lipc_buf_free(&line);
}

/* Peak memory of a training step and of inference at the model's batch, from
 * the plan-memory pass's arena (float values, as the cpu target stores them):
 * the arena, plus parameters, gradients and the two AdamW moments. */
static void print_memory(const lipc_graph *g)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_program *t = lipc_build_program((lipc_graph *)g, LIPC_ENTRY_TRAIN, &d);
    lipc_program *f = t ? lipc_build_program((lipc_graph *)g, LIPC_ENTRY_FORWARD, &d) : NULL;
    if (t && f) {
        int batch = g->train.batch > 0 ? g->train.batch : 128;
        double mib = 4.0 / 1048576.0, np = (double)g->n_param_elems;
        double arena = (double)t->arena_per_example * batch * mib;
        printf("  memory at batch %d: training %.1f MiB (activations and gradients %.1f MiB, "
               "parameters, gradients and moments %.1f MiB), inference %.1f MiB\n",
               batch, arena + 4 * np * mib, arena, 4 * np * mib,
               (double)f->arena_per_example * batch * mib + np * mib);
    }
    lipc_program_free(t);
    lipc_program_free(f);
    lipc_diags_free(&d);
}

static void print_summary(const lipc_graph *g)
{
    char shape[48], count[32];
    lipc_lip_summary s;
    lipc_lip_summarize(g, &s);
    printf("%s: %s\n", g->file, g->name);
    if (g->description)
        printf("  %s\n", g->description);
    printf("  input %s in [%g, %g] -> %d classes\n", lipc_shape_str(g->input_shape, shape),
           g->input_range[0], g->input_range[1], g->classes);
    human_count(g->n_param_elems, count);
    printf("  %d nodes, %d parameter tensors, %s parameters (%.1f MiB as float32)\n",
           lipc_graph_count_nodes(g), g->n_params, count, g->n_param_elems * 4.0 / 1048576.0);
    printf("  residuals: %d folded, %d kept\n", s.n_folded, s.n_kept);
    printf("  K_sub = product of %d bounds: %d operator norms (%d exact), %d x 1, %d constant, "
           "%d loose (1 + K)\n", s.n_factors, s.n_opnorm, s.n_exact, s.n_one, s.n_const,
           s.n_loose);
    printf("  head: %s\n", s.head ? "pairwise bound K_sub * ||w_i - w_j||" : "none (no dense head)");
    print_memory(g);
    /* Kept residuals, those written once in a repeat grouped together. */
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        if (r->state != LIPC_RES_KEPT)
            continue;
        int same = 0;
        while (i + same + 1 < g->n_res) {
            const lipc_residual *q = g->res[i + same + 1];
            if (q->state != LIPC_RES_KEPT || strcmp(q->why, r->why) != 0 ||
                q->why_loc.line != r->why_loc.line || q->why_loc.col != r->why_loc.col)
                break;
            same++;
        }
        printf("  kept %s%s%.0d%s (%s:%d:%d): %s\n", r->name, same ? " and " : "", same,
               same ? " more" : "", r->why_loc.file, r->why_loc.line, r->why_loc.col, r->why);
        i += same;
    }

    int name_w = 5;
    for (const lipc_node *n = g->first; n; n = n->next)
        if (n->name && (int)strlen(n->name) > name_w)
            name_w = (int)strlen(n->name);
    if (name_w > 48)
        name_w = 48;
    printf("  %-*s %-8s %-10s %7s  %-26s %s\n", name_w, "layer", "op", "shape", "params",
           "bound", "attributes");
    /* A repeat shows its first iteration and a count when the iterations
     * are identical; otherwise every layer is listed. */
    const lipc_node *n = g->first;
    while (n) {
        size_t plen;
        int k = n->name ? repeat_index(n->name, &plen) : -1;
        int len = k == 0 ? group_len(n, n->name, plen, 0) : 0;
        if (len > 0) {
            const lipc_node *next = n;
            for (int i = 0; i < len; i++)
                next = next->next;
            int iters = 1;
            while (next && group_len(next, n->name, plen, iters) == len &&
                   same_layers(g, n, next, len)) {
                for (int i = 0; i < len; i++)
                    next = next->next;
                iters++;
            }
            if (iters > 1) {
                for (int i = 0; i < len; i++, n = n->next)
                    print_layer(g, n, name_w);
                printf("  %-*s ... %d identical iterations of %.*s in all\n", name_w, "", iters,
                       (int)plen - 1, next ? next->prev->name : g->last->name);
                n = next;
                continue;
            }
        }
        print_layer(g, n, name_w);
        n = n->next;
    }
}


static int cmd_check(int argc, char **argv)
{
    lipc_override sets[CLI_MAX_SETS];
    int n_sets = 0, n_files = 0;
    bool quiet = false;
    const char *files[256];
    for (int i = 0; i < argc; i++) {
        char *a = argv[i];
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_check, stdout);
            return 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = true;
        } else if (!strcmp(a, "--set")) {
            if (i + 1 == argc)
                return cli_usage_error("check", "--set needs KEY=VALUE");
            if ((rc = cli_parse_set("check", argv[++i], sets, &n_sets)))
                return rc;
        } else if (!strncmp(a, "--set=", 6)) {
            if ((rc = cli_parse_set("check", a + 6, sets, &n_sets)))
                return rc;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("check", "unknown option '%s'", a);
        } else if (n_files == 256) {
            return cli_usage_error("check", "too many files (at most 256)");
        } else {
            files[n_files++] = a;
        }
    }
    if (n_files == 0)
        return cli_usage_error("check", "no model file given");
    int worst = 0, n_valid = 0;
    lipc_pipeline_options po = {.verify = true};
    for (int i = 0; i < n_files; i++) {
        lipc_graph *g;
        lipc_status st = cli_compile(files[i], sets, n_sets, &po, &g);
        int rc = cli_status_exit(st);
        if (rc > worst)
            worst = rc;
        n_valid += st == LIPC_OK;
        if (st == LIPC_OK && !quiet) {
            print_summary(g);
            if (i + 1 < n_files)
                putchar('\n');
        }
        lipc_graph_free(g);
    }
    if (n_files > 1 && !quiet)
        printf("\n%d of %d models valid\n", n_valid, n_files);
    return worst;
}

/* ---- dump --------------------------------------------------------------------- */

static int cmd_dump(int argc, char **argv)
{
    lipc_override sets[CLI_MAX_SETS];
    int n_sets = 0;
    const char *file = NULL;
    const char *after = NULL;
    const char *emit = "ir";
    bool portable = false;
    int arch = 90;
    lipc_format format = LIPC_FORMAT_TEXT;
    for (int i = 0; i < argc; i++) {
        char *a = argv[i];
        int rc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_dump, stdout);
            for (int p = 0; p < lipc_pipeline_len; p++)
                printf("  %-17s %s\n", lipc_pipeline[p].name, lipc_pipeline[p].summary);
            printf("  all               after every stage above\n\n"
                   "options:\n"
                   "  --print-after=PASS   the stage to print (default: %s)\n"
                   "  --format=FORMAT      text (default), dot (Graphviz) or json\n"
                   "  --emit=WHAT          ir (default); train or forward: the program of\n"
                   "                       that entry point (steps, K_sub factors, memory plan);\n"
                   "                       llvm: the cpu target's kernels (forward, backward,\n"
                   "                       weight gradient per node) as LLVM IR, unoptimised;\n"
                   "                       asm: the same as optimised host assembly;\n"
                   "                       cuda: the cuda target's kernels as CUDA C;\n"
                   "                       ptx: the same compiled by NVRTC (for --arch)\n"
                   "  --portable           with --emit=asm: code for any AVX2 CPU (x86-64-v3)\n"
                   "  --arch N             with --emit=ptx: compute capability (default 90)\n"
                   "  --set KEY=VALUE      override a parameter declared under `params:`\n",
                   lipc_pipeline[lipc_pipeline_len - 1].name);
            return 0;
        } else if (!strcmp(a, "--portable")) {
            portable = true;
        } else if (!strncmp(a, "--emit=", 7)) {
            emit = a + 7;
            if (strcmp(emit, "ir") && strcmp(emit, "train") && strcmp(emit, "forward") &&
                strcmp(emit, "llvm") && strcmp(emit, "asm") && strcmp(emit, "cuda") &&
                strcmp(emit, "ptx"))
                return cli_usage_error(
                    "dump", "--emit takes ir, train, forward, llvm, asm, cuda or ptx, got '%s'",
                    emit);
        } else if (!strncmp(a, "--arch=", 7) || (!strcmp(a, "--arch") && i + 1 < argc)) {
            const char *v = a[6] == '=' ? a + 7 : argv[++i];
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 50 || n > 200)
                return cli_usage_error("dump", "--arch takes a compute capability like 90, "
                                               "got '%s'", v);
            arch = (int)n;
        } else if (!strncmp(a, "--print-after=", 14)) {
            after = a + 14;
        } else if (!strcmp(a, "--print-after") && i + 1 < argc) {
            after = argv[++i];
        } else if (!strncmp(a, "--format=", 9) || (!strcmp(a, "--format") && i + 1 < argc)) {
            const char *f = a[8] == '=' ? a + 9 : argv[++i];
            if (!strcmp(f, "text"))
                format = LIPC_FORMAT_TEXT;
            else if (!strcmp(f, "dot"))
                format = LIPC_FORMAT_DOT;
            else if (!strcmp(f, "json"))
                format = LIPC_FORMAT_JSON;
            else
                return cli_usage_error("dump", "unknown format '%s' (text, dot or json)", f);
        } else if (!strcmp(a, "--set")) {
            if (i + 1 == argc)
                return cli_usage_error("dump", "--set needs KEY=VALUE");
            if ((rc = cli_parse_set("dump", argv[++i], sets, &n_sets)))
                return rc;
        } else if (!strncmp(a, "--set=", 6)) {
            if ((rc = cli_parse_set("dump", a + 6, sets, &n_sets)))
                return rc;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("dump", "unknown option '%s'", a);
        } else if (file) {
            return cli_usage_error("dump", "dump takes one model file; '%s' is a second", a);
        } else {
            file = a;
        }
    }
    if (!file)
        return cli_usage_error("dump", "no model file given");
    if (!after)
        after = lipc_pipeline[lipc_pipeline_len - 1].name;
    if (strcmp(after, "all") && strcmp(after, "frontend") && !lipc_pass_find(after)) {
        const char *names[16];
        int k = 0;
        names[k++] = "frontend";
        for (int p = 0; p < lipc_pipeline_len && k < 14; p++)
            names[k++] = lipc_pipeline[p].name;
        names[k++] = "all";
        names[k] = NULL;
        const char *best = lipc_closest_word(after, names);
        fprintf(stderr, "lipc dump: error: unknown pass '%s'", after);
        if (best)
            fprintf(stderr, "; did you mean '%s'?", best);
        fprintf(stderr, "\npasses:");
        for (int p = 0; names[p]; p++)
            fprintf(stderr, " %s", names[p]);
        fputc('\n', stderr);
        return CLI_EXIT_USAGE;
    }
    lipc_buf out;
    lipc_buf_init(&out);
    lipc_pipeline_options po = {
        .verify = true, .print_after = after, .format = format, .print_out = &out,
        .stop_after = strcmp(after, "all") && strcmp(after, "frontend") ? after : NULL,
    };
    bool program = strcmp(emit, "ir") != 0;
    if (program) /* the program is built from the final IR: run every pass quietly */
        po = (lipc_pipeline_options){.verify = true};
    lipc_graph *g;
    lipc_status st = cli_compile(file, sets, n_sets, &po, &g);
    if (st == LIPC_OK && program) {
        lipc_diags d;
        lipc_diags_init(&d);
        bool code = strcmp(emit, "llvm") == 0 || strcmp(emit, "asm") == 0;
        bool gpu = strcmp(emit, "cuda") == 0 || strcmp(emit, "ptx") == 0;
        lipc_program *p = lipc_build_program(
            g, strcmp(emit, "forward") == 0 ? LIPC_ENTRY_FORWARD : LIPC_ENTRY_TRAIN, &d);
        if (p && code)
            st = lipc_llvm_module_text(p, strcmp(emit, "asm") == 0, portable, &d, &out);
        else if (p && gpu)
            st = lipc_cuda_module_text(p, strcmp(emit, "ptx") == 0, arch, &d, &out);
        else if (p)
            lipc_program_print(p, &out);
        else
            st = d.n_errors ? LIPC_ERR_INPUT : LIPC_ERR_NOMEM;
        lipc_diags_print(&d, stderr);
        lipc_diags_free(&d);
        lipc_program_free(p);
    }
    if (out.failed) {
        fprintf(stderr, "lipc: error: out of memory while printing\n");
        st = LIPC_ERR_NOMEM;
    } else if (st == LIPC_OK) {
        fputs(lipc_buf_str(&out), stdout);
    }
    lipc_buf_free(&out);
    lipc_graph_free(g);
    return cli_status_exit(st);
}

/* ---- ops ---------------------------------------------------------------------- */

static const char *field_kind_text(const lipc_field *f)
{
    switch (f->kind) {
    case LIPC_FIELD_INT: return "integer";
    case LIPC_FIELD_INT2: return "N or [h, w]";
    case LIPC_FIELD_PADDING: return "same | valid | N | [h, w]";
    case LIPC_FIELD_FLOAT: return "number";
    case LIPC_FIELD_FLOAT2: return "[low, high]";
    case LIPC_FIELD_BOOL: return "true | false";
    case LIPC_FIELD_ENUM: return "word";
    case LIPC_FIELD_INTLIST: return "N or [a, b, ...]";
    }
    return "?";
}

static int cmd_ops(void)
{
    for (int op = 0; op < LIPC_OP_COUNT; op++) {
        const lipc_op_desc *d = lipc_op_info((lipc_op)op);
        if (!d->user)
            continue;
        printf("%-10s %s%s\n", d->name, d->summary, d->preprocess ? " (also in input.preprocess)" : "");
        for (int i = 0; d->fields && d->fields[i].key; i++) {
            const lipc_field *f = &d->fields[i];
            printf("    %-12s %-26s %s%s", f->key, field_kind_text(f),
                   f->required ? "required. " : "", f->help ? f->help : "");
            if (f->kind == LIPC_FIELD_ENUM) {
                printf(" (");
                for (int k = 0; f->names[k]; k++)
                    printf("%s%s", k ? " | " : "", f->names[k]);
                printf(")");
            }
            putchar('\n');
        }
    }
    printf("%-10s %s\n", "residual", "y = x + body(x): `- residual: [layers]` (folded when linear)");
    printf("%-10s %s\n", "repeat", "`- repeat: N` with `layers: [...]` beside it");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage_main, stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("lipc %s (LLVM %s, CUDA backend %s)\n", LIPC_VERSION, LIPC_LLVM_VERSION,
               LIPC_HAVE_CUDA ? "available" : "not built");
        return 0;
    }
    if (!strcmp(cmd, "check"))
        return cmd_check(argc - 2, argv + 2);
    if (!strcmp(cmd, "dump"))
        return cmd_dump(argc - 2, argv + 2);
    if (!strcmp(cmd, "ops"))
        return cmd_ops();
    if (!strcmp(cmd, "train"))
        return cli_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "certify"))
        return cli_certify(argc - 2, argv + 2);
    if (!strcmp(cmd, "bound"))
        return cli_bound(argc - 2, argv + 2);
    if (!strcmp(cmd, "predict"))
        return cli_predict(argc - 2, argv + 2);
    if (!strcmp(cmd, "build"))
        return cli_build(argc - 2, argv + 2);
    static const char *const commands[] = {"check", "dump", "ops", "train", "certify", "bound",
                                           "predict", "build", NULL};
    const char *best = lipc_closest_word(cmd, commands);
    fprintf(stderr, "lipc: error: unknown command '%s'", cmd);
    if (best)
        fprintf(stderr, "; did you mean '%s'?", best);
    fputs("\nTry 'lipc --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}
