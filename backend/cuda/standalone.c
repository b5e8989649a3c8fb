/* backend/cuda/standalone.c: lipc_compile_target for programs linked without
 * the LLVM backend: the GPU checks and benchmark that scripts/cuda-device.sh
 * carries to a GPU machine, which has the CUDA toolkit but not LLVM. The
 * cuda targets are lipc's; "cpu" is refused (certified inference falls back
 * to the reference's); the rest are the reference backend's. */
#include "backend/cuda/gpu.h"

#include <string.h>

lipc_status lipc_compile_target(lipc_graph *g, const char *target, const lipc_cpu_options *o,
                                lipc_diags *d, lipc_compiled **out)
{
    if (strncmp(target, "cuda", 4) == 0)
        return lipc_compile_cuda(g, target, o, NULL, d, out);
    return lipc_compile(g, target, d, out);
}
