/* tests/test_cli.c: the `lipc` command as a user meets it.
 *
 * Runs the built binary through the shell and checks exit codes and output:
 * 0 for valid models, 1 for rejected ones, 2 for command-line mistakes.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "support/support.h"

/* Runs `lipc ARGS` from the source directory; returns the exit status and
 * the combined stdout + stderr in *out (caller frees). */
static int run_lipc(const char *args, char **out)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>&1", LIPC_SOURCE_DIR, LIPC_BINARY, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen failed");
    lipc_buf b;
    lipc_buf_init(&b);
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk - 1, p)) > 0) {
        chunk[got] = '\0';
        lipc_buf_puts(&b, chunk);
    }
    int st = pclose(p);
    *out = lipc_strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

Test(cli, version_and_help)
{
    char *out;
    cr_expect_eq(run_lipc("--version", &out), 0);
    cr_expect(strstr(out, "lipc ") && strstr(out, "LLVM 19"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("--help", &out), 0);
    cr_expect(strstr(out, "check") && strstr(out, "dump"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("check --help", &out), 0);
    cr_expect(strstr(out, "--set"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("dump --help", &out), 0);
    cr_expect(strstr(out, "fold-residual") && strstr(out, "--format"), "%s", out);
    free(out);
}

Test(cli, usage_errors_exit_2)
{
    char *out;
    cr_expect_eq(run_lipc("", &out), 2);
    free(out);
    cr_expect_eq(run_lipc("chek models/liresnet-fmnist.yaml", &out), 2);
    cr_expect(strstr(out, "did you mean 'check'"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("check", &out), 2);
    free(out);
    cr_expect_eq(run_lipc("dump models/liresnet-fmnist.yaml --print-after=fold", &out), 2);
    cr_expect(strstr(out, "unknown pass 'fold'") && strstr(out, "fold-residual"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("dump models/liresnet-fmnist.yaml --format=svg", &out), 2);
    free(out);
    cr_expect_eq(run_lipc("check --set width models/liresnet-fmnist.yaml", &out), 2);
    free(out);
}

Test(cli, check_every_shipped_model)
{
    char *out;
    int rc = run_lipc("check models/*.yaml", &out);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "models valid"), "%s", out);
    free(out);
}

Test(cli, missing_and_bad_files_exit_nonzero)
{
    char *out;
    cr_expect_eq(run_lipc("check no/such/model.yaml", &out), 3);
    cr_expect(strstr(out, "no/such/model.yaml: error: cannot open"), "%s", out);
    free(out);
    char path[] = "/tmp/lipc-cli-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("input: {shape: [1, 8, 8]}\nclasses: 2\nlayers:\n  - conv2d: {out: 4, kernal: 3}\n",
          f);
    fclose(f);
    char args[256];
    snprintf(args, sizeof args, "check %s", path);
    cr_expect_eq(run_lipc(args, &out), 1);
    cr_expect(strstr(out, ":4:22: error: unknown key 'kernal'") &&
                  strstr(out, "did you mean 'kernel'"),
              "%s", out);
    free(out);
    remove(path);
}

Test(cli, set_overrides_parameters)
{
    char *out;
    int rc = run_lipc("dump models/liresnet-fmnist.yaml --set width=16 --set depth=2", &out);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, ": 16x16x16"), "width 16 gives 16-channel maps: %s", out);
    cr_expect(strstr(out, "blocks.1.") && !strstr(out, "blocks.2."), "depth 2: %s", out);
    free(out);
    rc = run_lipc("check models/liresnet-fmnist.yaml --set widht=16", &out);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(out, "no parameter 'widht'") && strstr(out, "did you mean 'width'"), "%s",
              out);
    free(out);
}

Test(cli, dump_formats)
{
    char *out;
    cr_expect_eq(run_lipc("dump models/liresnet-fmnist.yaml --format=dot", &out), 0);
    cr_expect(!strncmp(out, "digraph", 7), "%.200s", out);
    free(out);

    cr_expect_eq(run_lipc("dump models/liresnet-fmnist.yaml --format=json", &out), 0);
    json_error_t err;
    json_t *root = json_loads(out, 0, &err);
    cr_assert(root, "JSON does not parse: %s at line %d", err.text, err.line);
    json_t *nodes = json_object_get(root, "nodes");
    cr_assert(json_is_array(nodes) && json_array_size(nodes) > 10);
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        cr_expect(json_is_integer(json_object_get(n, "id")));
        cr_expect(json_is_string(json_object_get(n, "op")));
        cr_expect(json_is_array(json_object_get(n, "inputs")));
        cr_expect(json_is_array(json_object_get(n, "shape")));
        cr_expect(json_is_string(json_object_get(n, "loc")));
        cr_expect(json_is_object(json_object_get(n, "lipschitz")), "node %zu", i);
    }
    json_decref(root);
    free(out);

    /* After every pass: one header per stage. */
    cr_expect_eq(run_lipc("dump models/liresnet-fmnist.yaml --print-after=all", &out), 0);
    cr_expect(strstr(out, "; IR after frontend") && strstr(out, "; IR after infer-shapes") &&
                  strstr(out, "; IR after fold-residual") && strstr(out, "; IR after lipschitz"),
              "%.300s", out);
    free(out);
}

Test(cli, dump_programs)
{
    char *out;
    cr_expect_eq(run_lipc("dump tests/models/syn.yaml --emit=train", &out), 0);
    cr_expect(strstr(out, "program train of syn") && strstr(out, "power-iter") &&
                  strstr(out, "sigma-grad") && strstr(out, "backward") &&
                  strstr(out, "update") && strstr(out, "arena:"),
              "%s", out);
    free(out);
    cr_expect_eq(run_lipc("dump tests/models/syn.yaml --emit=forward", &out), 0);
    cr_expect(strstr(out, "program forward of syn") && !strstr(out, "backward"), "%s", out);
    free(out);
    cr_expect_eq(run_lipc("dump tests/models/syn.yaml --emit=llvm", &out), 0);
    cr_expect(strstr(out, "define void @forward.stem(") && strstr(out, "define void @wgrad.stem(") &&
                  strstr(out, "define void @forward64.stem("),
              "%.300s", out);
    free(out);
    cr_expect_eq(run_lipc("dump tests/models/syn.yaml --emit=asm --portable", &out), 0);
    cr_expect(strstr(out, "backward.stem") && strstr(out, "vfmadd") && !strstr(out, "zmm"),
              "%.300s", out);
    free(out);
    cr_expect_eq(run_lipc("dump tests/models/syn.yaml --emit=wasm", &out), 2);
    free(out);
}
