/* cli/model_main.c: the main of an executable made by `lipc build`. It links
 * the kernels compiled ahead of time (an object file holding
 * lipc_kernel_table and the model's text), the cpu target's runner, the
 * runtime and the commands of cli/run.c; not LLVM. The commands are lipc's,
 * for the built-in model: `NAME train|certify|bound|predict [options]`.
 *
 * Built with LIPC_MODEL_CUDA (`lipc build --target=cuda`), it also links the
 * cuda target and the model's kernels as PTX (lipc_cuda_image), which the
 * GPU's driver compiles at start: --target=cuda then needs no NVRTC. */
#include <stdio.h>
#include <string.h>

#include "backend/cpu/kernels.h"
#include "cli/internal.h"
#ifdef LIPC_MODEL_CUDA
#include "backend/cuda/gpu.h"
extern const char lipc_cuda_image[];
#endif

extern const lipc_kernel_entry lipc_kernel_table[];
extern const int32_t lipc_kernel_count;
extern const char lipc_model_yaml[];
extern const char lipc_model_source[];
extern const char lipc_model_sets[];

static lipc_status table_source(const lipc_program *train, bool portable, void *ctx,
                                lipc_kernels *k, lipc_diags *d)
{
    (void)ctx;
    if (portable)
        lipc_diag_warning(d, LIPC_NO_LOC, "--portable has no effect: this executable's code was "
                                          "compiled by lipc build");
    return lipc_kernels_from_table(train, lipc_kernel_table, lipc_kernel_count, k, d)
               ? LIPC_OK
               : LIPC_ERR_UNSUPPORTED;
}

lipc_status lipc_compile_target(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                                lipc_diags *d, lipc_compiled **out)
{
#ifdef LIPC_MODEL_CUDA
    if (strcmp(target, "cuda") == 0 || strcmp(target, "cuda-emulator") == 0) {
        bool gpu = strcmp(target, "cuda") == 0;
        lipc_status st = lipc_compile_cuda(g, target, o, gpu ? lipc_cuda_image : NULL, d, out);
        lipc_compiled *host = NULL; /* certified inference: the built-in cpu kernels */
        if (st == LIPC_OK && lipc_compile_cpu(g, table_source, NULL, o, d, &host) == LIPC_OK)
            lipc_compiled_attach_host(*out, host);
        return st;
    }
#endif
    if (strcmp(target, "cpu") != 0)
        return lipc_compile(g, target, d, out);
    return lipc_compile_cpu(g, table_source, NULL, o, d, out);
}

int main(int argc, char **argv)
{
    const char *slash = strrchr(argv[0], '/');
    cli_program = slash ? slash + 1 : argv[0];
    cli_embedded_name = lipc_model_source;
    cli_embedded_text = lipc_model_yaml;
    /* the build's --set values, "KEY=VALUE\n" each */
    static char sets_copy[4096];
    static lipc_override sets[CLI_MAX_SETS];
    snprintf(sets_copy, sizeof sets_copy, "%s", lipc_model_sets);
    int n_sets = 0;
    for (char *t = strtok(sets_copy, "\n"); t && n_sets < CLI_MAX_SETS; t = strtok(NULL, "\n"))
        if (lipc_override_parse(t, &sets[n_sets]))
            n_sets++;
    cli_embedded_sets = sets;
    cli_embedded_n_sets = n_sets;
    const char *cmd = argc > 1 ? argv[1] : NULL;
    if (cmd && !strcmp(cmd, "train"))
        return cli_train(argc - 2, argv + 2);
    if (cmd && !strcmp(cmd, "certify"))
        return cli_certify(argc - 2, argv + 2);
    if (cmd && !strcmp(cmd, "bound"))
        return cli_bound(argc - 2, argv + 2);
    if (cmd && !strcmp(cmd, "predict"))
        return cli_predict(argc - 2, argv + 2);
    FILE *f = cmd && (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) ? stdout : stderr;
    fprintf(f,
            "usage: %s COMMAND [options]\n"
            "\n"
            "The model %s, compiled by lipc %s for this kind of CPU.\n"
            "\n"
            "commands:\n"
            "  train     certified training; writes a checkpoint\n"
            "  certify   certify the test split with the sound bound\n"
            "  bound     per-layer bounds of a checkpoint\n"
            "  predict   classify the test split\n"
            "\n"
            "'%s COMMAND --help' lists a command's options (as lipc's, without FILE and --set).\n",
            cli_program, lipc_model_source, LIPC_VERSION, cli_program);
    return f == stdout ? 0 : 2;
}
