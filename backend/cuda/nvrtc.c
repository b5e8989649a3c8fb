/* backend/cuda/nvrtc.c: CUDA C to GPU code with NVRTC, which needs no GPU:
 * the test suite compiles every model's kernels with it on any machine that
 * has the toolkit, so emission bugs show up without a device. */
#include "backend/cuda/gpu.h"

#include <nvrtc.h>
#include <stdio.h>

bool lipc_nvrtc_available(void) { return true; }

lipc_status lipc_nvrtc_compile(const char *source, int arch, bool ptx, lipc_buf *out,
                               lipc_diags *d)
{
    lipc_buf full;
    lipc_buf_init(&full);
    lipc_buf_puts(&full, lipc_cuda_prelude);
    lipc_buf_puts(&full, source);
    if (full.failed) {
        lipc_buf_free(&full);
        return LIPC_ERR_NOMEM;
    }
    nvrtcProgram prog;
    nvrtcResult r = nvrtcCreateProgram(&prog, lipc_buf_str(&full), "lipc_kernels.cu", 0, NULL,
                                       NULL);
    lipc_buf_free(&full);
    if (r != NVRTC_SUCCESS) {
        lipc_diag_error(d, LIPC_NO_LOC, "nvrtc: %s", nvrtcGetErrorString(r));
        return LIPC_ERR_UNSUPPORTED;
    }
    /* a real architecture gives a cubin; PTX is for a virtual one (compute_XX),
     * which the driver compiles further for the GPU at hand */
    char archopt[48];
    snprintf(archopt, sizeof archopt, "--gpu-architecture=%s_%d", ptx ? "compute" : "sm", arch);
    const char *opts[] = {archopt, "--std=c++17", "-default-device", "--fmad=true"};
    r = nvrtcCompileProgram(prog, (int)(sizeof opts / sizeof *opts), opts);
    lipc_status st = LIPC_OK;
    if (r != NVRTC_SUCCESS) {
        size_t len = 0;
        nvrtcGetProgramLogSize(prog, &len);
        lipc_buf log;
        lipc_buf_init(&log);
        for (size_t i = 0; i + 1 < len; i++)
            lipc_buf_putc(&log, ' '); /* room, then the log itself */
        if (len > 1 && !log.failed)
            nvrtcGetProgramLog(prog, log.data);
        lipc_diag_error(d, LIPC_NO_LOC, "nvrtc could not compile the kernels for %s: %s\n%s",
                        archopt + 21, nvrtcGetErrorString(r), lipc_buf_str(&log));
        lipc_buf_free(&log);
        st = LIPC_ERR_UNSUPPORTED;
    } else {
        size_t len = 0;
        r = ptx ? nvrtcGetPTXSize(prog, &len) : nvrtcGetCUBINSize(prog, &len);
        for (size_t i = 0; r == NVRTC_SUCCESS && i < len; i++)
            lipc_buf_putc(out, 0);
        if (out->failed)
            st = LIPC_ERR_NOMEM;
        else if (r != NVRTC_SUCCESS ||
                 (ptx ? nvrtcGetPTX(prog, out->data) : nvrtcGetCUBIN(prog, out->data)) !=
                     NVRTC_SUCCESS) {
            lipc_diag_error(d, LIPC_NO_LOC, "nvrtc: cannot read the compiled code");
            st = LIPC_ERR_UNSUPPORTED;
        }
    }
    nvrtcDestroyProgram(&prog);
    return st;
}
