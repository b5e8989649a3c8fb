/* backend/cuda/no_cuda.c: the CUDA device and NVRTC in a build without the
 * CUDA toolkit: each says so. (device_cuda.c and nvrtc.c replace this file
 * when CMake finds the toolkit.) */
#include "backend/cuda/gpu.h"

lipc_status lipc_gpu_cuda_new(lipc_diags *d, lipc_gpu_dev **out)
{
    *out = NULL;
    lipc_diag_msg *m = lipc_diag_error(d, LIPC_NO_LOC,
                                       "this lipc was built without the CUDA toolkit: "
                                       "--target=cuda is not available");
    lipc_diag_hint(m, "install the toolkit (nvcc, NVRTC, cuBLAS) and rebuild, or use "
                      "--target=cpu");
    return LIPC_ERR_UNSUPPORTED;
}

lipc_status lipc_nvrtc_compile(const char *source, int arch, bool ptx, lipc_buf *out,
                               lipc_diags *d)
{
    (void)source;
    (void)arch;
    (void)ptx;
    (void)out;
    lipc_diag_error(d, LIPC_NO_LOC, "this lipc was built without NVRTC");
    return LIPC_ERR_UNSUPPORTED;
}

bool lipc_nvrtc_available(void) { return false; }
