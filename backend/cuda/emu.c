/* backend/cuda/emu.c: the emulated device.
 *
 * The kernels' CUDA C source, after a prelude of its own, is plain C: the
 * kernel macro declares a host function, and the thread index and grid
 * stride are two variables of the library. The emulator compiles the source
 * with the host's C compiler into a shared library, loads it, and runs a
 * launch as `threads` emulated threads, one after the other, each walking its
 * grid-stride loop. Since every kernel's work items are independent (gpu.h),
 * that is the result the GPU computes, and the driver, which cannot tell the
 * two devices apart, is tested end to end on a machine without a GPU. Memory
 * is the host's.
 */
#include "backend/cuda/gpu.h"

#include <dlfcn.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char emu_prelude[] =
    "#include <math.h>\n"
    "typedef struct lipc_gargs { void *p[8]; long long n; double s[8]; } lipc_gargs;\n"
    "long long lipc_emu_i0 = 0, lipc_emu_step = 1;\n"
    "#define LIPC_KERNEL(name) void name(lipc_gargs a)\n"
    "#define LIPC_I0 lipc_emu_i0\n"
    "#define LIPC_STEP lipc_emu_step\n";

typedef struct emu {
    lipc_gpu_dev base;
    const char *cc;
    int threads;
    void *lib;
    long long *i0, *step;
    char err[256];
} emu;

typedef void (*emu_kernel)(lipc_gargs a);

/* Runs cc with args; true when it exited with 0. */
static bool run_cc(char **args)
{
    pid_t pid;
    int status = 0;
    if (posix_spawnp(&pid, args[0], NULL, NULL, args, environ) != 0)
        return false;
    return waitpid(pid, &status, 0) >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static lipc_status emu_load(lipc_gpu_dev *dv, const char *source, lipc_diags *d)
{
    emu *e = (emu *)dv;
    char dir[] = "/tmp/lipc-emu-XXXXXX";
    if (!mkdtemp(dir)) {
        lipc_diag_error(d, LIPC_NO_LOC, "the cuda emulator cannot make a temporary folder");
        return LIPC_ERR_IO;
    }
    char src[64], lib[64];
    snprintf(src, sizeof src, "%s/kernels.c", dir);
    snprintf(lib, sizeof lib, "%s/kernels.so", dir);
    FILE *f = fopen(src, "w");
    bool ok = f && fputs(emu_prelude, f) >= 0 && fputs(source, f) >= 0;
    if (f && fclose(f) != 0)
        ok = false;
    lipc_status st = LIPC_OK;
    if (!ok) {
        lipc_diag_error(d, LIPC_NO_LOC, "the cuda emulator cannot write %s", src);
        st = LIPC_ERR_IO;
    } else {
        char *args[] = {(char *)e->cc, "-O2", "-w", "-shared", "-fPIC", "-o", lib, src, "-lm",
                        NULL};
        if (!run_cc(args)) {
            lipc_diag_error(d, LIPC_NO_LOC, "the cuda emulator could not compile the kernels "
                                            "with '%s'", e->cc);
            st = LIPC_ERR_UNSUPPORTED;
        } else {
            e->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
            e->i0 = e->lib ? dlsym(e->lib, "lipc_emu_i0") : NULL;
            e->step = e->lib ? dlsym(e->lib, "lipc_emu_step") : NULL;
            if (!e->i0 || !e->step) {
                lipc_diag_error(d, LIPC_NO_LOC, "the cuda emulator cannot load its kernels: %s",
                                dlerror());
                st = LIPC_ERR_UNSUPPORTED;
            }
        }
    }
    remove(src);
    remove(lib); /* the loaded library stays mapped */
    rmdir(dir);
    return st;
}

static void *emu_kernel_of(lipc_gpu_dev *dv, const char *name)
{
    emu *e = (emu *)dv;
    return e->lib ? dlsym(e->lib, name) : NULL;
}

static lipc_status emu_launch(lipc_gpu_dev *dv, void *k, long long items, const lipc_gargs *a)
{
    emu *e = (emu *)dv;
    (void)items;
    emu_kernel fn;
    memcpy(&fn, &k, sizeof fn); /* a data pointer from dlsym, as POSIX allows */
    *e->step = e->threads;
    for (int t = 0; t < e->threads; t++) {
        *e->i0 = t;
        fn(*a);
    }
    return LIPC_OK;
}

static lipc_status emu_alloc(lipc_gpu_dev *dv, size_t bytes, void **out)
{
    (void)dv;
    *out = lipc_calloc(1, bytes ? bytes : 1);
    return *out ? LIPC_OK : LIPC_ERR_NOMEM;
}

static void emu_release(lipc_gpu_dev *dv, void *p)
{
    (void)dv;
    lipc_free(p);
}

static lipc_status emu_copy(lipc_gpu_dev *dv, void *dst, const void *src, size_t bytes)
{
    (void)dv;
    if (bytes)
        memmove(dst, src, bytes);
    return LIPC_OK;
}

static lipc_status emu_zero(lipc_gpu_dev *dv, void *dst, size_t bytes)
{
    (void)dv;
    if (bytes)
        memset(dst, 0, bytes);
    return LIPC_OK;
}

/* The library convolutions, as plain loops in double (the driver's library
 * path is then tested here: effective weights, bias, accumulation). */
static lipc_status emu_conv(lipc_gpu_dev *dv, const lipc_gconv *g, int n, lipc_gconv_op op,
                            bool tf32, const float *a, const float *b, float *c, double alpha,
                            double beta)
{
    (void)dv;
    (void)tf32;
    size_t in_n = (size_t)g->ci * g->h * g->w, out_n = (size_t)g->co * g->oh * g->ow;
    size_t nw = (size_t)g->co * g->ci * g->kh * g->kw;
    size_t len = op == LIPC_GCONV_FWD ? out_n * (size_t)n
                 : op == LIPC_GCONV_BWD_DATA ? in_n * (size_t)n : nw;
    double *acc = lipc_calloc(len + 1, sizeof(double));
    if (!acc)
        return LIPC_ERR_NOMEM;
    for (int e = 0; e < n; e++)
        for (int o = 0; o < g->co; o++)
            for (int y = 0; y < g->oh; y++)
                for (int x = 0; x < g->ow; x++)
                    for (int i = 0; i < g->ci; i++)
                        for (int ky = 0; ky < g->kh; ky++)
                            for (int kx = 0; kx < g->kw; kx++) {
                                int iy = y * g->sh + ky - g->ph, ix = x * g->sw + kx - g->pw;
                                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                                    continue;
                                size_t pi = (size_t)e * in_n + ((size_t)i * g->h + iy) * g->w + ix;
                                size_t po = (size_t)e * out_n + ((size_t)o * g->oh + y) * g->ow + x;
                                size_t pw = (((size_t)o * g->ci + i) * g->kh + ky) * g->kw + kx;
                                if (op == LIPC_GCONV_FWD)
                                    acc[po] += (double)b[pw] * a[pi];
                                else if (op == LIPC_GCONV_BWD_DATA)
                                    acc[pi] += (double)b[pw] * a[po];
                                else
                                    acc[pw] += (double)b[po] * a[pi];
                            }
    for (size_t t = 0; t < len; t++)
        c[t] = (float)(alpha * acc[t] + (beta != 0.0 ? beta * c[t] : 0.0));
    lipc_free(acc);
    return LIPC_OK;
}

static double emu_now(lipc_gpu_dev *dv)
{
    (void)dv;
    return lipc_now();
}

static const char *emu_error(lipc_gpu_dev *dv) { return ((emu *)dv)->err; }

static void emu_destroy(lipc_gpu_dev *dv)
{
    emu *e = (emu *)dv;
    if (!e)
        return;
    if (e->lib)
        dlclose(e->lib);
    lipc_free(e);
}

static const lipc_gpu_dev_ops emu_ops = {
    .name = "emulator",
    .load = emu_load,
    .kernel = emu_kernel_of,
    .launch = emu_launch,
    .alloc = emu_alloc,
    .release = emu_release,
    .upload = emu_copy,
    .download = emu_copy,
    .zero = emu_zero,
    .conv = emu_conv,
    .now = emu_now,
    .error = emu_error,
    .destroy = emu_destroy,
};

lipc_status lipc_gpu_emulator_new(const char *cc, int threads, lipc_diags *d, lipc_gpu_dev **out)
{
    (void)d;
    *out = NULL;
    emu *e = lipc_calloc(1, sizeof *e);
    if (!e)
        return LIPC_ERR_NOMEM;
    e->base.ops = &emu_ops;
    e->cc = cc ? cc : "cc";
    e->threads = threads > 0 ? threads : 1;
    snprintf(e->base.describe, sizeof e->base.describe,
             "the cuda emulator (host C, %d emulated threads)", e->threads);
    *out = &e->base;
    return LIPC_OK;
}
