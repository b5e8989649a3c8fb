/* backend/cuda/device_cuda.c: the CUDA device: the first GPU, through the
 * CUDA runtime API. Kernels are compiled by NVRTC for the GPU's compute
 * capability (a cubin; PTX for the driver to finish when NVRTC does not know
 * the architecture) and loaded as a library; launches and copies go in order
 * on one stream, and a download waits for the work before it. */
#include "backend/cuda/gpu.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

typedef struct cuda_dev {
    lipc_gpu_dev base;
    int arch, sms;
    cudaStream_t stream;
    cudaLibrary_t lib;
    bool have_lib;
    char err[256];
} cuda_dev;

static lipc_status check(cuda_dev *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return LIPC_OK;
    snprintf(c->err, sizeof c->err, "%s: %s (%s)", what, cudaGetErrorString(e),
             cudaGetErrorName(e));
    return e == cudaErrorMemoryAllocation ? LIPC_ERR_NOMEM : LIPC_ERR_UNSUPPORTED;
}

static lipc_status cuda_load(lipc_gpu_dev *dv, const char *source, lipc_diags *d)
{
    cuda_dev *c = (cuda_dev *)dv;
    lipc_buf code;
    lipc_buf_init(&code);
    lipc_status st = lipc_nvrtc_compile(source, c->arch, false, &code, d);
    if (st == LIPC_OK) {
        st = check(c, cudaLibraryLoadData(&c->lib, code.data, NULL, NULL, 0, NULL, NULL, 0),
                   "loading the kernels");
        c->have_lib = st == LIPC_OK;
        if (st != LIPC_OK)
            lipc_diag_error(d, LIPC_NO_LOC, "cuda: %s", c->err);
    }
    lipc_buf_free(&code);
    return st;
}

static void *cuda_kernel(lipc_gpu_dev *dv, const char *name)
{
    cuda_dev *c = (cuda_dev *)dv;
    cudaKernel_t k = NULL;
    if (!c->have_lib || check(c, cudaLibraryGetKernel(&k, c->lib, name), name) != LIPC_OK)
        return NULL;
    return (void *)k;
}

static lipc_status cuda_launch(lipc_gpu_dev *dv, void *k, long long items, const lipc_gargs *a)
{
    cuda_dev *c = (cuda_dev *)dv;
    const long long block = 256;
    long long grid = (items + block - 1) / block, cap = (long long)c->sms * 16;
    if (grid > cap)
        grid = cap; /* the grid-stride loops take the rest */
    if (grid < 1)
        grid = 1;
    lipc_gargs copy = *a;
    void *args[] = {&copy};
    return check(c, cudaLaunchKernel((const void *)k, (dim3){(unsigned)grid, 1, 1},
                                     (dim3){(unsigned)block, 1, 1}, args, 0, c->stream),
                 "kernel launch");
}

static lipc_status cuda_alloc(lipc_gpu_dev *dv, size_t bytes, void **out)
{
    return check((cuda_dev *)dv, cudaMalloc(out, bytes), "cudaMalloc");
}

static void cuda_release(lipc_gpu_dev *dv, void *p)
{
    (void)dv;
    cudaFree(p);
}

static lipc_status cuda_upload(lipc_gpu_dev *dv, void *dst, const void *src, size_t bytes)
{
    cuda_dev *c = (cuda_dev *)dv;
    return check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream),
                 "copy to the GPU");
}

static lipc_status cuda_download(lipc_gpu_dev *dv, void *dst, const void *src, size_t bytes)
{
    cuda_dev *c = (cuda_dev *)dv;
    lipc_status st = check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
                                              c->stream), "copy from the GPU");
    if (st == LIPC_OK)
        st = check(c, cudaStreamSynchronize(c->stream), "the GPU's work");
    return st;
}

static lipc_status cuda_zero(lipc_gpu_dev *dv, void *dst, size_t bytes)
{
    cuda_dev *c = (cuda_dev *)dv;
    return check(c, cudaMemsetAsync(dst, 0, bytes, c->stream), "cudaMemset");
}

static const char *cuda_error(lipc_gpu_dev *dv) { return ((cuda_dev *)dv)->err; }

static void cuda_destroy(lipc_gpu_dev *dv)
{
    cuda_dev *c = (cuda_dev *)dv;
    if (!c)
        return;
    if (c->have_lib)
        cudaLibraryUnload(c->lib);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    lipc_free(c);
}

static const lipc_gpu_dev_ops cuda_ops = {
    .name = "cuda",
    .load = cuda_load,
    .kernel = cuda_kernel,
    .launch = cuda_launch,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .upload = cuda_upload,
    .download = cuda_download,
    .zero = cuda_zero,
    .error = cuda_error,
    .destroy = cuda_destroy,
};

lipc_status lipc_gpu_cuda_new(lipc_diags *d, lipc_gpu_dev **out)
{
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        lipc_diag_msg *m = lipc_diag_error(
            d, LIPC_NO_LOC, "--target=cuda: no usable NVIDIA GPU here (%s)",
            e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        lipc_diag_hint(m, "run on a machine with an NVIDIA GPU and its driver, or use "
                          "--target=cpu");
        return LIPC_ERR_UNSUPPORTED;
    }
    cuda_dev *c = lipc_calloc(1, sizeof *c);
    if (!c)
        return LIPC_ERR_NOMEM;
    c->base.ops = &cuda_ops;
    struct cudaDeviceProp prop;
    lipc_status st = check(c, cudaSetDevice(0), "cudaSetDevice");
    if (st == LIPC_OK)
        st = check(c, cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    if (st == LIPC_OK)
        st = check(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                   "cudaStreamCreate");
    if (st != LIPC_OK) {
        lipc_diag_error(d, LIPC_NO_LOC, "--target=cuda: %s", c->err);
        cuda_destroy(&c->base);
        return st;
    }
    c->arch = prop.major * 10 + prop.minor;
    c->sms = prop.multiProcessorCount;
    snprintf(c->base.describe, sizeof c->base.describe, "%.100s (sm_%d, %d SMs, %.0f GiB)",
             prop.name, c->arch, c->sms, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
    *out = &c->base;
    return LIPC_OK;
}
