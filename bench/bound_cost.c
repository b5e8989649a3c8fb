/* bench/bound_cost.c: what a sound operator-norm bound costs (runtime/bounds.c).
 *
 * 1. Per frequency, at c = 512: the ways of getting sigma_max of one 512 x 512
 *    complex matrix P(u, v) of a random 512x512x3x3 kernel on a 17 x 17 torus
 *    (16 x 16 maps, padding 1):
 *      svd        LAPACKE_zgesvd, values only (needs a rounding allowance)
 *      gram-eig   Gram matrix P^H P (zhfrk) + its largest eigenvalue (zheevr)
 *      gram-iter  Gram iteration (Delattre et al. 2023), G <- G^H G rescaled,
 *                 sigma <= ||G_t||_F^(1/2^t): sound by construction; run until
 *                 it is within 1e-4 (and 1e-6) of the SVD's value
 *      certify    what runtime/bounds.c pays per frequency once a level is
 *                 known: Gram matrix + one Cholesky of mu I - P^H P (sound,
 *                 see the top of runtime/bounds.c); the eigensolve is added
 *                 only when the running maximum grows
 * 2. Whole layers through the library: a folded 512-channel 3x3 block on 16 x 16
 *    maps at N = 17 (the default), 18 and 32; the stem; the neck; the dense.
 * 3. A whole CIFAR L12W512 LiResNet (stem 3->512 5x5/2 on 32 x 32, 12 folded
 *    blocks 512x512x3x3 on 16 x 16, neck 512->1024 4x4/4, dense 16384->2048)
 *    with random weights: lipc_model_sound_bounds, per factor and in all.
 * 4. (`tight` only; slow) the stem and one block against power iteration on the
 *    true operator, a lower bound: how loose the sound bound is at full size.
 *
 * Build: cmake --build build --target bound_cost
 * Run on one thread with the right OpenBLAS kernels (PERF-NOTES.md):
 *   OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=SkylakeX build/bound_cost [freq] [layer] [model] [tight]
 * (no argument: the first three). Times are medians of a few runs where cheap, single
 * runs otherwise; the machines are noisy, so compare ratios within one run.
 */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

typedef lapack_complex_double zdouble;

#define TWO_PI 6.283185307179586476925286766559

static void fill_normal(lipc_rng *r, float *w, size_t n, double std)
{
    for (size_t i = 0; i < n; i++)
        w[i] = (float)(std * lipc_rng_normal(r));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* ---- 1. per frequency ------------------------------------------------------ */

/* P(u, v) [c, c] column-major from w [c, c, 3, 3] on an n x n torus. */
static void dft_at(const float *w, int c, int n, int u, int v, zdouble *p)
{
    double cs[9], sn[9];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            double ang = TWO_PI * (double)((u * a + v * b) % n) / n;
            cs[a * 3 + b] = cos(ang);
            sn[a * 3 + b] = sin(ang);
        }
    for (int o = 0; o < c; o++)
        for (int i = 0; i < c; i++) {
            const float *k = w + ((size_t)o * c + i) * 9;
            double re = 0.0, im = 0.0;
            for (int t = 0; t < 9; t++) {
                re += k[t] * cs[t];
                im += k[t] * sn[t];
            }
            p[(size_t)i * c + o] = CMPLX(re, im);
        }
}

/* Hermitian G (full) -> G^H G = G^2 (full), via the RFP rank-k update. */
static void gram_full(int n, const zdouble *g, zdouble *rfp, zdouble *out)
{
    LAPACKE_zhfrk_work(LAPACK_COL_MAJOR, 'N', 'U', 'C', n, n, 1.0, g, n, 0.0, rfp);
    LAPACKE_ztfttr_work(LAPACK_COL_MAJOR, 'N', 'U', n, rfp, out, n);
    for (int j = 0; j < n; j++)
        for (int i = j + 1; i < n; i++)
            out[(size_t)j * n + i] = conj(out[(size_t)i * n + j]);
}

static double fro(const zdouble *g, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += creal(g[i]) * creal(g[i]) + cimag(g[i]) * cimag(g[i]);
    return sqrt(s);
}

/* Gram iteration from P until the bound is within tol of target; returns the
 * bound, *iters the products formed. (Rounding allowances, which bounds.c
 * would need, are left out: this only measures the cost.) */
static double gram_iteration(int n, const zdouble *p, double target, double tol,
                             zdouble *g, zdouble *h, zdouble *rfp, int *iters)
{
    memcpy(g, p, sizeof(zdouble) * (size_t)n * n);
    double log_scale = 0.0, bound = INFINITY;
    int t;
    for (t = 1; t <= 20 && bound > target * (1.0 + tol); t++) {
        /* G_t = G_{t-1}^H G_{t-1} / 2^e; sigma_1(P)^(2^t) = 2^(sum e 2^..) sigma_1(G_t) */
        if (t == 1) {
            LAPACKE_zhfrk_work(LAPACK_COL_MAJOR, 'N', 'U', 'C', n, n, 1.0, g, n, 0.0, rfp);
            LAPACKE_ztfttr_work(LAPACK_COL_MAJOR, 'N', 'U', n, rfp, h, n);
            for (int j = 0; j < n; j++)
                for (int i = j + 1; i < n; i++)
                    h[(size_t)j * n + i] = conj(h[(size_t)i * n + j]);
        } else {
            gram_full(n, g, rfp, h);
        }
        int e;
        frexp(fro(h, (size_t)n * n), &e);
        for (size_t i = 0; i < (size_t)n * n; i++)
            g[i] = CMPLX(ldexp(creal(h[i]), -e), ldexp(cimag(h[i]), -e));
        log_scale += e * log(2.0) / ldexp(1.0, t);
        bound = exp(log_scale + log(fro(g, (size_t)n * n)) / ldexp(1.0, t));
    }
    *iters = t - 1;
    return bound;
}

static void bench_freq(void)
{
    const int c = 512, n = 17;
    lipc_rng r;
    lipc_rng_seed(&r, 1);
    float *w = malloc(sizeof(float) * (size_t)c * c * 9);
    size_t cc = (size_t)c * c;
    zdouble *p = malloc(sizeof(zdouble) * cc), *a = malloc(sizeof(zdouble) * cc);
    zdouble *g = malloc(sizeof(zdouble) * cc), *h = malloc(sizeof(zdouble) * cc);
    zdouble *rfp = malloc(sizeof(zdouble) * (cc + c) / 2 + sizeof(zdouble));
    double *s = malloc(sizeof(double) * c), *sup = malloc(sizeof(double) * c);
    if (!w || !p || !a || !g || !h || !rfp || !s || !sup) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    fill_normal(&r, w, cc * 9, 1.0 / sqrt(9.0 * c));
    enum { REPS = 5 };
    static const int fq[REPS][2] = {{0, 0}, {1, 2}, {5, 3}, {8, 8}, {16, 4}};
    double t_dft[REPS], t_svd[REPS], t_eig[REPS], t_g4[REPS], t_g6[REPS], t_cert[REPS];
    int it4 = 0, it6 = 0;
    printf("== per frequency: one 512x512 complex P(u,v), random 512x512x3x3 kernel, N = %d\n",
           n);
    for (int k = 0; k < REPS; k++) {
        double t0 = lipc_now();
        dft_at(w, c, n, fq[k][0], fq[k][1], p);
        t_dft[k] = lipc_now() - t0;

        memcpy(a, p, sizeof(zdouble) * cc);
        t0 = lipc_now();
        LAPACKE_zgesvd(LAPACK_COL_MAJOR, 'N', 'N', c, c, a, c, s, NULL, 1, NULL, 1, sup);
        t_svd[k] = lipc_now() - t0;
        double sigma = s[0];

        t0 = lipc_now();
        LAPACKE_zhfrk_work(LAPACK_COL_MAJOR, 'N', 'U', 'C', c, c, 1.0, p, c, 0.0, rfp);
        LAPACKE_ztfttr_work(LAPACK_COL_MAJOR, 'N', 'U', c, rfp, h, c);
        lapack_int found, isuppz[2];
        LAPACKE_zheevr(LAPACK_COL_MAJOR, 'N', 'I', 'U', c, h, c, 0.0, 0.0, c, c, 0.0, &found,
                       s, NULL, 1, isuppz);
        t_eig[k] = lipc_now() - t0;
        double sigma_eig = sqrt(s[0]);

        t0 = lipc_now();
        double g4 = gram_iteration(c, p, sigma, 1e-4, g, h, rfp, &it4);
        t_g4[k] = lipc_now() - t0;
        t0 = lipc_now();
        double g6 = gram_iteration(c, p, sigma, 1e-6, g, h, rfp, &it6);
        t_g6[k] = lipc_now() - t0;

        /* the certificate at a level just above sigma^2 */
        double mu = sigma * sigma * (1.0 + 0x1p-36);
        t0 = lipc_now();
        LAPACKE_zhfrk_work(LAPACK_COL_MAJOR, 'N', 'U', 'C', c, c, 1.0, p, c, 0.0, rfp);
        LAPACKE_ztfttr_work(LAPACK_COL_MAJOR, 'N', 'U', c, rfp, h, c);
        for (int j = 0; j < c; j++) {
            for (int i = 0; i < j; i++)
                a[(size_t)j * c + i] = -h[(size_t)j * c + i];
            a[(size_t)j * c + j] = mu - creal(h[(size_t)j * c + j]);
        }
        lapack_int info = LAPACKE_zpotrf_work(LAPACK_COL_MAJOR, 'U', c, a, c);
        t_cert[k] = lipc_now() - t0;
        printf("  (u,v)=(%2d,%2d) sigma %.9f  eig %.9f  gram(1e-4) %.9f in %d  gram(1e-6) "
               "%.9f in %d  cholesky %s\n",
               fq[k][0], fq[k][1], sigma, sigma_eig, g4, it4, g6, it6,
               info == 0 ? "ok" : "FAILED");
    }
    printf("  median seconds per frequency: dft %.4f  svd %.4f  gram-eig %.4f  "
           "gram-iter(1e-4) %.4f  gram-iter(1e-6) %.4f  certify %.4f\n",
           median(t_dft, REPS), median(t_svd, REPS), median(t_eig, REPS), median(t_g4, REPS),
           median(t_g6, REPS), median(t_cert, REPS));
    int n_freq = n * (n / 2 + 1) - n / 2;
    printf("  x %d frequencies = seconds per layer: svd %.1f  gram-eig %.1f  gram-iter(1e-4) "
           "%.1f  certify %.1f (+ an eigensolve per new maximum)\n",
           n_freq, n_freq * (median(t_svd, REPS) + median(t_dft, REPS)),
           n_freq * (median(t_eig, REPS) + median(t_dft, REPS)),
           n_freq * (median(t_g4, REPS) + median(t_dft, REPS)),
           n_freq * (median(t_cert, REPS) + median(t_dft, REPS)));
    free(w);
    free(p);
    free(a);
    free(g);
    free(h);
    free(rfp);
    free(s);
    free(sup);
}

/* ---- 2. and 3. layers and a model through the library ---------------------------- */

static lipc_factor_desc conv(const char *name, int c_in, int c_out, int h, int k, int s, int pad,
                             bool fold, size_t *offset)
{
    lipc_factor_desc f;
    memset(&f, 0, sizeof f);
    f.name = name;
    f.kind = LIPC_FACTOR_CONV;
    f.parent = -1;
    f.c_in = c_in;
    f.c_out = c_out;
    f.h = f.w = h;
    f.kh = f.kw = k;
    f.sh = f.sw = s;
    f.pad[0] = f.pad[1] = f.pad[2] = f.pad[3] = pad;
    f.oh = f.ow = (h + 2 * pad - k) / s + 1;
    f.fold_identity = fold;
    f.w_offset = *offset;
    *offset += (size_t)c_out * c_in * k * k;
    return f;
}

static lipc_factor_desc dense(const char *name, int in, int out, size_t *offset)
{
    lipc_factor_desc f;
    memset(&f, 0, sizeof f);
    f.name = name;
    f.kind = LIPC_FACTOR_DENSE;
    f.parent = -1;
    f.c_in = in;
    f.c_out = out;
    f.h = f.w = f.oh = f.ow = f.kh = f.kw = f.sh = f.sw = 1;
    f.w_offset = *offset;
    *offset += (size_t)out * in;
    return f;
}

enum { L = 12, W = 512 };

/* The L12W512 factors; *n_params the parameter block's size. Block names are
 * static strings. */
static int liresnet(lipc_factor_desc *fs, size_t *n_params)
{
    static const char *names[L] = {"blocks.0", "blocks.1", "blocks.2", "blocks.3",
                                   "blocks.4", "blocks.5", "blocks.6", "blocks.7",
                                   "blocks.8", "blocks.9", "blocks.10", "blocks.11"};
    size_t off = 0;
    int n = 0;
    fs[n++] = conv("stem", 3, W, 32, 5, 2, 2, false, &off);
    for (int b = 0; b < L; b++)
        fs[n++] = conv(names[b], W, W, 16, 3, 1, 1, true, &off);
    fs[n++] = conv("neck", W, 2 * W, 16, 4, 4, 0, false, &off);
    fs[n++] = dense("dense", 2 * W * 16, 2048, &off);
    *n_params = off;
    return n;
}

/* Random weights: kaiming-like for plain layers; the residual branch of a
 * folded block scaled small (std 0.3 / sqrt(9 W)), as after some training. */
static float *random_params(const lipc_factor_desc *fs, int n, size_t n_params)
{
    float *params = malloc(sizeof(float) * n_params);
    if (!params) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    lipc_rng r;
    lipc_rng_seed(&r, 2);
    for (int i = 0; i < n; i++) {
        const lipc_factor_desc *f = &fs[i];
        size_t numel = (size_t)f->c_out * f->c_in * f->kh * f->kw;
        double fan_in = (double)f->c_in * f->kh * f->kw;
        fill_normal(&r, params + f->w_offset, numel,
                    (f->fold_identity ? 0.3 : 1.0) / sqrt(fan_in));
    }
    return params;
}

static void report(const lipc_factor_desc *f, const lipc_sound_bound *b)
{
    printf("  %-10s %-20s %12.9f  %7.2f s\n", f->name, b->method, b->value, b->seconds);
}

static void bench_layers(void)
{
    lipc_factor_desc fs[L + 3];
    size_t n_params;
    int n = liresnet(fs, &n_params);
    float *params = random_params(fs, n, n_params);
    lipc_diags d;
    lipc_diags_init(&d);
    printf("== layers through lipc_factor_sound_bound / lipc_conv_circulant_bound\n");
    lipc_sound_bound b;
    int pick[] = {1, 0, L + 1, L + 2};
    for (int k = 0; k < 4; k++) {
        if (lipc_factor_sound_bound(&fs[pick[k]], params, &b, &d) != LIPC_OK)
            goto fail;
        report(&fs[pick[k]], &b);
    }
    static const int sizes[] = {18, 32};
    for (int k = 0; k < 2; k++) {
        if (lipc_conv_circulant_bound(&fs[1], params, sizes[k], sizes[k], &b, &d) != LIPC_OK)
            goto fail;
        printf("  blocks.0 at N = %d: %.9f  %.2f s\n", sizes[k], b.value, b.seconds);
    }
    /* the random (unfolded) 512x512x3x3 kernel of the per-frequency bench */
    fs[1].fold_identity = false;
    lipc_rng r;
    lipc_rng_seed(&r, 1);
    fill_normal(&r, params + fs[1].w_offset, (size_t)W * W * 9, 1.0 / sqrt(9.0 * W));
    if (lipc_factor_sound_bound(&fs[1], params, &b, &d) != LIPC_OK)
        goto fail;
    printf("  random 512x512x3x3 (unfolded), N = 17: %.9f  %.2f s\n", b.value, b.seconds);
    free(params);
    lipc_diags_free(&d);
    return;
fail:
    lipc_diags_print(&d, stderr);
    exit(1);
}

/* ---- tightness at full size: power iteration on the true operator -------------
 *
 * A direct conv and its exact adjoint (same index map), in double; folded
 * layers add x. ||A v|| for a unit v is a lower bound on ||A||, so
 * bound / estimate >= 1 is an upper limit on how loose the bound is. */

static void conv_apply(const lipc_factor_desc *f, const float *wt, const double *x, double *y)
{
    memset(y, 0, sizeof(double) * (size_t)f->c_out * f->oh * f->ow);
    for (int o = 0; o < f->c_out; o++) {
        double *yo = y + (size_t)o * f->oh * f->ow;
        for (int i = 0; i < f->c_in; i++) {
            const double *xi = x + (size_t)i * f->h * f->w;
            for (int ky = 0; ky < f->kh; ky++)
                for (int kx = 0; kx < f->kw; kx++) {
                    double k = wt[(((size_t)o * f->c_in + i) * f->kh + ky) * f->kw + kx];
                    for (int yy = 0; yy < f->oh; yy++) {
                        int iy = yy * f->sh + ky - f->pad[0];
                        if (iy < 0 || iy >= f->h)
                            continue;
                        for (int xx = 0; xx < f->ow; xx++) {
                            int ix = xx * f->sw + kx - f->pad[2];
                            if (ix >= 0 && ix < f->w)
                                yo[yy * f->ow + xx] += k * xi[iy * f->w + ix];
                        }
                    }
                }
        }
        if (f->fold_identity)
            for (int p = 0; p < f->oh * f->ow; p++)
                yo[p] += x[(size_t)o * f->h * f->w + p];
    }
}

static void conv_adjoint(const lipc_factor_desc *f, const float *wt, const double *y, double *x)
{
    memset(x, 0, sizeof(double) * (size_t)f->c_in * f->h * f->w);
    for (int o = 0; o < f->c_out; o++) {
        const double *yo = y + (size_t)o * f->oh * f->ow;
        for (int i = 0; i < f->c_in; i++) {
            double *xi = x + (size_t)i * f->h * f->w;
            for (int ky = 0; ky < f->kh; ky++)
                for (int kx = 0; kx < f->kw; kx++) {
                    double k = wt[(((size_t)o * f->c_in + i) * f->kh + ky) * f->kw + kx];
                    for (int yy = 0; yy < f->oh; yy++) {
                        int iy = yy * f->sh + ky - f->pad[0];
                        if (iy < 0 || iy >= f->h)
                            continue;
                        for (int xx = 0; xx < f->ow; xx++) {
                            int ix = xx * f->sw + kx - f->pad[2];
                            if (ix >= 0 && ix < f->w)
                                xi[iy * f->w + ix] += k * yo[yy * f->ow + xx];
                        }
                    }
                }
        }
        if (f->fold_identity)
            for (int p = 0; p < f->oh * f->ow; p++)
                x[(size_t)o * f->h * f->w + p] += yo[p];
    }
}

static double vnorm(const double *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

static void bench_tightness(void)
{
    lipc_factor_desc fs[L + 3];
    size_t n_params;
    int n = liresnet(fs, &n_params);
    float *params = random_params(fs, n, n_params);
    lipc_diags d;
    lipc_diags_init(&d);
    printf("== tightness: sound bound vs power iteration on the true operator\n");
    static const int pick[2][2] = {{0, 400}, {1, 100}};   /* factor, iterations */
    for (int k = 0; k < 2; k++) {
        const lipc_factor_desc *f = &fs[pick[k][0]];
        lipc_sound_bound b;
        if (lipc_factor_sound_bound(f, params, &b, &d) != LIPC_OK) {
            lipc_diags_print(&d, stderr);
            exit(1);
        }
        size_t nx = (size_t)f->c_in * f->h * f->w, ny = (size_t)f->c_out * f->oh * f->ow;
        double *x = malloc(sizeof(double) * nx), *y = malloc(sizeof(double) * ny);
        lipc_rng r;
        lipc_rng_seed(&r, 3);
        for (size_t i = 0; i < nx; i++)
            x[i] = lipc_rng_normal(&r);
        double est = 0.0, t0 = lipc_now();
        for (int it = 1; it <= pick[k][1]; it++) {
            double s = vnorm(x, nx);
            for (size_t i = 0; i < nx; i++)
                x[i] /= s;
            conv_apply(f, params + f->w_offset, x, y);
            est = vnorm(y, ny);
            conv_adjoint(f, params + f->w_offset, y, x);
        }
        printf("  %-10s bound %.9f  power iteration (%d its, %.0f s) %.9f  ratio %.5f\n",
               f->name, b.value, pick[k][1], lipc_now() - t0, est, b.value / est);
        free(x);
        free(y);
    }
    free(params);
    lipc_diags_free(&d);
}

static void bench_model(void)
{
    lipc_factor_desc fs[L + 3];
    size_t n_params;
    int n = liresnet(fs, &n_params);
    float *params = random_params(fs, n, n_params);
    lipc_model_desc m;
    memset(&m, 0, sizeof m);
    m.name = "cifar-liresnet-L12W512";
    m.n_param_elems = n_params;
    m.n_factors = n;
    m.factors = fs;
    lipc_sound_bound per[L + 3];
    double k_sub;
    lipc_diags d;
    lipc_diags_init(&d);
    printf("== whole model: CIFAR LiResNet L12W512, lipc_model_sound_bounds\n");
    double t0 = lipc_now();
    if (lipc_model_sound_bounds(&m, params, per, &k_sub, &d) != LIPC_OK) {
        lipc_diags_print(&d, stderr);
        exit(1);
    }
    double total = lipc_now() - t0;
    for (int i = 0; i < n; i++)
        report(&fs[i], &per[i]);
    printf("  K_sub %.9g   total %.1f s\n", k_sub, total);
    free(params);
    lipc_diags_free(&d);
}

int main(int argc, char **argv)
{
    const char *core = getenv("OPENBLAS_CORETYPE"), *threads = getenv("OPENBLAS_NUM_THREADS");
    printf("OPENBLAS_CORETYPE=%s OPENBLAS_NUM_THREADS=%s\n", core ? core : "(unset)",
           threads ? threads : "(unset)");
    if (!core)
        fprintf(stderr, "warning: OPENBLAS_CORETYPE unset: OpenBLAS may pick a slow kernel "
                        "(PERF-NOTES.md)\n");
    bool all = argc < 2, freq = all, layer = all, model = all, tight = false;
    for (int i = 1; i < argc; i++) {
        freq |= !strcmp(argv[i], "freq");
        layer |= !strcmp(argv[i], "layer");
        model |= !strcmp(argv[i], "model");
        tight |= !strcmp(argv[i], "tight");
    }
    if (freq)
        bench_freq();
    if (layer)
        bench_layers();
    if (model)
        bench_model();
    if (tight)
        bench_tightness();
    return 0;
}
