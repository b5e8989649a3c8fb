/* backend/cuda/device_cuda.c: the CUDA device: the first GPU, through the
 * CUDA runtime API. Kernels are compiled by NVRTC for the GPU's compute
 * capability and loaded as a library; launches, copies and cuDNN calls go in
 * order on one stream, and a download waits for the work before it.
 *
 * Convolutions through cuDNN (when the build found it): one plan per layer,
 * batch, operation and precision (tensor descriptors, the algorithm cuDNN's
 * heuristics rank first among those whose workspace fits, its workspace
 * size), made on first use and kept. TF32 (CUDNN_DEFAULT_MATH) only when the
 * driver allows it; otherwise CUDNN_FMA_MATH, plain float arithmetic.
 */
#include "backend/cuda/gpu.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#if LIPC_HAVE_CUDNN
#include <cudnn.h>
#endif

/* the most workspace one convolution may take */
#define LIPC_CUDNN_WORKSPACE ((size_t)1 << 30)

#if LIPC_HAVE_CUDNN
typedef struct conv_plan {
    int id, n, op;
    bool tf32;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int algo;
    size_t ws;
} conv_plan;
#endif

typedef struct cuda_dev {
    lipc_gpu_dev base;
    int arch, sms;
    cudaStream_t stream;
    cudaLibrary_t lib;
    bool have_lib;
    char err[256];
#if LIPC_HAVE_CUDNN
    cudnnHandle_t dnn;
    conv_plan *plans;
    int n_plans, cap_plans;
    void *ws;
    size_t ws_cap;
#endif
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

static lipc_status cuda_load_image(lipc_gpu_dev *dv, const char *image, lipc_diags *d)
{
    cuda_dev *c = (cuda_dev *)dv;
    lipc_status st = check(c, cudaLibraryLoadData(&c->lib, image, NULL, NULL, 0, NULL, NULL, 0),
                           "loading the built-in kernels (PTX)");
    c->have_lib = st == LIPC_OK;
    if (st != LIPC_OK)
        lipc_diag_error(d, LIPC_NO_LOC, "cuda: %s", c->err);
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

static double cuda_now(lipc_gpu_dev *dv)
{
    cuda_dev *c = (cuda_dev *)dv;
    cudaStreamSynchronize(c->stream);
    return lipc_now();
}

#if LIPC_HAVE_CUDNN
static lipc_status dnn_check(cuda_dev *c, cudnnStatus_t e, const char *what)
{
    if (e == CUDNN_STATUS_SUCCESS)
        return LIPC_OK;
    snprintf(c->err, sizeof c->err, "cuDNN: %s: %s", what, cudnnGetErrorString(e));
    return e == CUDNN_STATUS_ALLOC_FAILED ? LIPC_ERR_NOMEM : LIPC_ERR_UNSUPPORTED;
}

static void plan_free(conv_plan *p)
{
    if (p->x)
        cudnnDestroyTensorDescriptor(p->x);
    if (p->y)
        cudnnDestroyTensorDescriptor(p->y);
    if (p->w)
        cudnnDestroyFilterDescriptor(p->w);
    if (p->conv)
        cudnnDestroyConvolutionDescriptor(p->conv);
}

/* The descriptors and the algorithm of one convolution. */
static lipc_status plan_make(cuda_dev *c, const lipc_gconv *g, int n, lipc_gconv_op op,
                             bool tf32, conv_plan *p)
{
    memset(p, 0, sizeof *p);
    p->id = g->id;
    p->n = n;
    p->op = (int)op;
    p->tf32 = tf32;
    lipc_status st = dnn_check(c, cudnnCreateTensorDescriptor(&p->x), "descriptor");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnCreateTensorDescriptor(&p->y), "descriptor");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnCreateFilterDescriptor(&p->w), "descriptor");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnCreateConvolutionDescriptor(&p->conv), "descriptor");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                                     n, g->ci, g->h, g->w), "input shape");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                                     n, g->co, g->oh, g->ow), "output shape");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                                     g->co, g->ci, g->kh, g->kw), "weight shape");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnSetConvolution2dDescriptor(p->conv, g->ph, g->pw, g->sh, g->sw,
                                                          1, 1, CUDNN_CROSS_CORRELATION,
                                                          CUDNN_DATA_FLOAT), "convolution");
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnSetConvolutionMathType(p->conv, tf32 ? CUDNN_DEFAULT_MATH
                                                                    : CUDNN_FMA_MATH),
                       "math type");
    int on, oc, oh, ow;
    if (st == LIPC_OK)
        st = dnn_check(c, cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &on, &oc,
                                                                &oh, &ow), "output size");
    if (st == LIPC_OK && (on != n || oc != g->co || oh != g->oh || ow != g->ow)) {
        snprintf(c->err, sizeof c->err, "cuDNN: layer %d: output %dx%dx%d, expected %dx%dx%d",
                 g->id, oc, oh, ow, g->co, g->oh, g->ow);
        st = LIPC_ERR_UNSUPPORTED;
    }
    int got = 0;
    p->algo = -1;
    if (st == LIPC_OK && op == LIPC_GCONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        st = dnn_check(c, cudnnGetConvolutionForwardAlgorithm_v7(c->dnn, p->x, p->w, p->conv,
                                                                 p->y, 8, &got, perf),
                       "forward algorithm");
        for (int i = 0; st == LIPC_OK && i < got && p->algo < 0; i++)
            if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= LIPC_CUDNN_WORKSPACE) {
                p->algo = (int)perf[i].algo;
                p->ws = perf[i].memory;
            }
    } else if (st == LIPC_OK && op == LIPC_GCONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[8];
        st = dnn_check(c, cudnnGetConvolutionBackwardDataAlgorithm_v7(c->dnn, p->w, p->y,
                                                                      p->conv, p->x, 8, &got,
                                                                      perf),
                       "backward-data algorithm");
        for (int i = 0; st == LIPC_OK && i < got && p->algo < 0; i++)
            if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= LIPC_CUDNN_WORKSPACE) {
                p->algo = (int)perf[i].algo;
                p->ws = perf[i].memory;
            }
    } else if (st == LIPC_OK) {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
        st = dnn_check(c, cudnnGetConvolutionBackwardFilterAlgorithm_v7(c->dnn, p->x, p->y,
                                                                        p->conv, p->w, 8, &got,
                                                                        perf),
                       "backward-filter algorithm");
        for (int i = 0; st == LIPC_OK && i < got && p->algo < 0; i++)
            if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= LIPC_CUDNN_WORKSPACE) {
                p->algo = (int)perf[i].algo;
                p->ws = perf[i].memory;
            }
    }
    if (st == LIPC_OK && p->algo < 0) {
        snprintf(c->err, sizeof c->err, "cuDNN has no algorithm for layer %d (%s)", g->id,
                 lipc_gconv_op_names[op]);
        st = LIPC_ERR_UNSUPPORTED;
    }
    if (st != LIPC_OK)
        plan_free(p);
    return st;
}

static lipc_status cuda_conv(lipc_gpu_dev *dv, const lipc_gconv *g, int n, lipc_gconv_op op,
                             bool tf32, const float *a, const float *b, float *out,
                             double alpha, double beta)
{
    cuda_dev *c = (cuda_dev *)dv;
    conv_plan *p = NULL;
    for (int i = 0; i < c->n_plans && !p; i++)
        if (c->plans[i].id == g->id && c->plans[i].n == n && c->plans[i].op == (int)op &&
            c->plans[i].tf32 == tf32)
            p = &c->plans[i];
    if (!p) {
        if (c->n_plans == c->cap_plans) {
            int cap = c->cap_plans ? 2 * c->cap_plans : 32;
            conv_plan *grown = lipc_realloc(c->plans, sizeof *grown * (size_t)cap);
            if (!grown)
                return LIPC_ERR_NOMEM;
            c->plans = grown;
            c->cap_plans = cap;
        }
        lipc_status st = plan_make(c, g, n, op, tf32, &c->plans[c->n_plans]);
        if (st != LIPC_OK)
            return st;
        p = &c->plans[c->n_plans++];
    }
    if (p->ws > c->ws_cap) {
        if (c->ws)
            cudaFree(c->ws);
        c->ws = NULL;
        c->ws_cap = 0;
        lipc_status st = check(c, cudaMalloc(&c->ws, p->ws), "cuDNN workspace");
        if (st != LIPC_OK)
            return st;
        c->ws_cap = p->ws;
    }
    float fa = (float)alpha, fb = (float)beta;
    cudnnStatus_t e;
    if (op == LIPC_GCONV_FWD)
        e = cudnnConvolutionForward(c->dnn, &fa, p->x, a, p->w, b, p->conv,
                                    (cudnnConvolutionFwdAlgo_t)p->algo, c->ws, p->ws, &fb, p->y,
                                    out);
    else if (op == LIPC_GCONV_BWD_DATA)
        e = cudnnConvolutionBackwardData(c->dnn, &fa, p->w, b, p->y, a, p->conv,
                                         (cudnnConvolutionBwdDataAlgo_t)p->algo, c->ws, p->ws,
                                         &fb, p->x, out);
    else
        e = cudnnConvolutionBackwardFilter(c->dnn, &fa, p->x, a, p->y, b, p->conv,
                                           (cudnnConvolutionBwdFilterAlgo_t)p->algo, c->ws,
                                           p->ws, &fb, p->w, out);
    return dnn_check(c, e, lipc_gconv_op_names[op]);
}
#endif

static const char *cuda_error(lipc_gpu_dev *dv) { return ((cuda_dev *)dv)->err; }

static void cuda_destroy(lipc_gpu_dev *dv)
{
    cuda_dev *c = (cuda_dev *)dv;
    if (!c)
        return;
#if LIPC_HAVE_CUDNN
    for (int i = 0; i < c->n_plans; i++)
        plan_free(&c->plans[i]);
    lipc_free(c->plans);
    if (c->ws)
        cudaFree(c->ws);
    if (c->dnn)
        cudnnDestroy(c->dnn);
#endif
    if (c->have_lib)
        cudaLibraryUnload(c->lib);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    lipc_free(c);
}

/* the device's functions, with cuDNN's convolutions or without */
#define CUDA_OPS(conv_fn)                                                                    \
    {                                                                                        \
        .name = "cuda", .load = cuda_load, .load_image = cuda_load_image,                   \
        .kernel = cuda_kernel, .launch = cuda_launch,                                        \
        .alloc = cuda_alloc, .release = cuda_release, .upload = cuda_upload,                 \
        .download = cuda_download, .zero = cuda_zero, .conv = conv_fn, .now = cuda_now,      \
        .error = cuda_error, .destroy = cuda_destroy,                                        \
    }
static const lipc_gpu_dev_ops cuda_ops = CUDA_OPS(NULL);
#if LIPC_HAVE_CUDNN
static const lipc_gpu_dev_ops cuda_dnn_ops = CUDA_OPS(cuda_conv);
#endif

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
#if LIPC_HAVE_CUDNN
    if (cudnnCreate(&c->dnn) != CUDNN_STATUS_SUCCESS ||
        cudnnSetStream(c->dnn, c->stream) != CUDNN_STATUS_SUCCESS) {
        fprintf(stderr, "lipc: cuda: cuDNN does not start here: convolutions use the "
                        "emitted kernels\n");
        if (c->dnn)
            cudnnDestroy(c->dnn);
        c->dnn = NULL;
    } else {
        c->base.ops = &cuda_dnn_ops;
    }
#endif
    c->arch = prop.major * 10 + prop.minor;
    c->sms = prop.multiProcessorCount;
    snprintf(c->base.describe, sizeof c->base.describe, "%.100s (sm_%d, %d SMs, %.0f GiB)",
             prop.name, c->arch, c->sms, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
    *out = &c->base;
    return LIPC_OK;
}
