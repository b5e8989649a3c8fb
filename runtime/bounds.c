/* runtime/bounds.c: sound upper bounds on the operator norm of every factor of
 * K_sub (METHOD.md sections 3 and 4), in double, rounded up.
 *
 * Key idea: estimate, then certify. The largest eigenvalue of a Gram matrix
 * H = M^H M is ESTIMATED by LAPACK (zheevr / dsyevr), and a level mu slightly
 * above it is CERTIFIED by a Cholesky factorisation of mu I - H: a Cholesky
 * that runs to completion in floating point proves, through its classical
 * backward error bound, that lambda_max(H) <= mu + rho with an explicit rho.
 * The estimate's accuracy never enters the bound (a bad estimate only costs a
 * retry), and across the frequencies of a convolution the level certified for
 * one matrix is tried first on the next, so the eigensolver runs only when the
 * running maximum grows (about ln(#frequencies) times in a shuffled order).
 *
 * ---- the bounds, by layer (exact arithmetic) ---------------------------------
 *
 * conv, kh <= sh, kw <= sw, no padding ("reshaped-kernel", exact): the windows
 *   are disjoint, so A = blockdiag(W_r, ..., W_r) o Pi with Pi a coordinate
 *   projection onto the pixels read and W_r = W reshaped c_out x (c_in kh kw);
 *   ||A|| = sigma_max(W_r) whenever the output has a pixel. (kernel == stride,
 *   the neck and the patchify stem, is the usual case.)
 * conv, stride 1 ("conv-fft"): zero padding top/bottom/left/right. Embed the
 *   input x (h x w) at the origin of an Nh x Nw torus, apply the circular
 *   cross-correlation z[p] = sum_k W[k] xe[(p + k) mod N], and read output
 *   pixel y at (y - top) mod Nh (same for columns). With
 *       Nh >= h + max(top, bottom)  and  Nh >= oh1 = h + top + bottom - kh + 1
 *   every index y + ky - top in [-top, h + bottom - 1] that falls outside
 *   [0, h) wraps to a zero of the embedding and every other one is read
 *   unwrapped, and distinct outputs map to distinct torus pixels. So
 *       A = C o Circ o E,  E an isometry, C a coordinate projection,
 *   and ||A|| <= ||Circ|| = max_(u,v) sigma_max(P(u, v)),
 *       P(u, v)[o, i] = sum_(a,b) K[o, i, a, b] exp(2 pi i (u a / Nh + v b / Nw))
 *   (the 2-D DFT block-diagonalises Circ; the sign convention does not change
 *   the set of singular values). K real gives P(-u, -v) = conj P(u, v), so
 *   v in [0, Nw/2] suffices, and on the columns v = 0 and v = Nw/2 also
 *   u in [0, Nh/2]. Any valid (Nh, Nw) gives a bound; the smallest is used.
 * conv, strided ("polyphase-fft"): the strided conv is a stride-1 conv of the
 *   stack of the input's sh sw polyphase components (an isometric re-indexing
 *   of x) with a rearranged kernel (polyphase_bound states the map), so the
 *   bound above applies to it. It keeps the aliasing of the stride and is about
 *   as tight as the stride-1 case (the CIFAR stem 3->512 5x5/2 on 32 x 32 with
 *   random weights: 1.002 x a power-iteration lower bound, where the
 *   stride-1 bound below gives 1.64 x).
 * conv, strided, fallback ("stride-1-fft-upper", also lipc_conv_circulant_bound
 *   on a strided factor): output pixel (y, x) of the strided conv is output
 *   pixel (y sh, x sw) of the stride-1 conv with the same kernel and padding
 *   on the same input, so A = S o A1 with S a coordinate projection
 *   (subsampling) and ||A|| <= ||A1|| <= the bound above.
 * conv, small enough ("conv-gram-band", exact; any stride and padding): the
 *   Gram matrix of the operator itself is a band; a banded Cholesky certifies
 *   its largest eigenvalue (band_bound states the steps). Used instead of the
 *   two above whenever the band fits lipc_bounds_band_budget.
 * dense ("dense-svd", exact): sigma_max(W).
 * folded layers (fold_identity): the operator is W + I (the identity on the
 *   centre tap kh/2, kw/2 for a conv), added to the weights before anything.
 * CONST: the value rounded up; LOOSE: 1 + the product of its children; K_sub:
 *   the product of the main-path factors; all products and sums rounded up
 *   (nextafter towards +inf after each operation on nonnegative numbers).
 *
 * ---- floating point (why the computed number is an upper bound) ---------------
 *
 * u = 2^-53; gamma(k) = k u / (1 - k u) <= 1.02 k u for k u < 0.01 (asserted).
 * The weights are floats, widened to double exactly. The standard model
 * fl(a op b) = (a op b)(1 + d), |d| <= u, holds for the BLAS/LAPACK kernels
 * used (conventional O(n^3) products in any summation order, FMA allowed: an
 * FMA rounds once instead of twice; no Strassen or 3M complex products).
 * Underflow is covered by an absolute TINY = 2^-900 added at each stage: with
 * gradual underflow or flush-to-zero every operation errs by at most 2^-1022
 * in absolute value more, and n, m < 2^30 keeps all those terms below TINY.
 * Nothing here can overflow: float weights are < 2^128 and every quantity is a
 * sum of at most 2^40 products of two of them. Each step below is an explicit
 * theorem; "generous" means a factor of about 2 over the constant derived.
 *
 * (1) DFT (per frequency, computed directly, see below). Twiddle angles
 *     fl(fl(2 pi) q / M) with q, M exact integers err by <= 3.01 u * 2 pi
 *     < 19 u, and glibc's cos and sin are within 1 ulp (<= 2u for |x| <= 1),
 *     so each twiddle component is within 21 u <= 32 u of the truth. The real
 *     and imaginary parts are real dot products of length T = kh kw:
 *         |P^ - P|[o, i] <= sqrt(2) (32 u + 1.01 gamma(T)) S[o, i],
 *         S[o, i] = sum_t |K[o, i, t]|,
 *     so ||P^ - P||_2 <= ||P^ - P||_F <= e_dft ||S||_F, e_dft (generous)
 *     = 3 (32 u + gamma(T + 1)).
 * (2) Gram matrix. Each entry of H^ = fl(M^H M) is a dot product of length m
 *     (the inner dimension): real |H^ - H| <= gamma(m) |M|^T |M| (Higham,
 *     Accuracy and Stability, eq. 3.5); complex: the real and imaginary parts
 *     are real dot products of length 2m over |Re||Re| + |Im||Im| <= |x||y|,
 *     so |H^ - H| <= sqrt(2) gamma(2m) |M|^H |M|. Then
 *         ||H^ - H||_2 <= g_form || |M| ||_F^2 = g_form ||M||_F^2,
 *     g_form (generous) = 2 gamma(m + 2) real, 3 gamma(2m + 4) complex.
 *     H^ is the Hermitian matrix of the stored upper triangle (zhfrk/dsfrk
 *     compute one triangle; the diagonal is real).
 * (3) Cholesky certificate. A^ = fl(mu I - H^) differs from mu I - H^ only on
 *     the diagonal, by <= u |a^_jj| (one subtraction). If the Cholesky of A^
 *     runs to completion, R^H R = A^ + dA with |dA| <= g_chol |R|^H |R|
 *     (Higham Theorem 10.3: gamma(n + 1) real; the complex dot products cost
 *     sqrt(2) and twice the length as in (2), and a reciprocal-then-multiply
 *     division one more rounding), g_chol (generous) = 2 gamma(n + 2) real,
 *     3 gamma(2n + 4) complex. The diagonal gives
 *     ||r_j||^2 <= |a^_jj| / (1 - g_chol), hence
 *         ||dA||_2 <= g_chol || |R| ||_F^2 <= g_chol / (1 - g_chol) tr|A^|,
 *     and R^H R >= 0 gives lambda_min(mu I - H^) >= -rho,
 *         rho = g_chol / (1 - g_chol) tr|A^| + 2 u max_j |a^_jj| + TINY,
 *     i.e. lambda_max(H^) <= mu + rho, whatever estimate mu came from.
 * (4) sigma_max(M) <= sqrt(mu + rho + g_form ||M||_F^2 + TINY) (Weyl, from (2)
 *     and (3)), and for a conv sigma_max(P) <= that + e_dft ||S||_F (from (1)).
 * (5) Folding: fl(w + 1) on the centre tap (diagonal) errs by <= u |w + 1|,
 *     a perturbation of the operator by a per-channel scaling of norm
 *     <= 2 u max_o |w^_oo|; it is added to the bound.
 * Sums, products, square roots and norms of the assembly are rounded up with
 * nextafter after every operation; ||M||_F^2 and tr|A^| computed in double
 * are multiplied by (1 + 2 gamma(count + 1)) before use.
 *
 * The DFT is evaluated directly, one frequency at a time (P(u, v) from the kh kw
 * taps), not with FFTW over all kernel slices: at c = 512 a whole-layer FFT
 * would hold every P(u, v) at once (Nh (Nw/2 + 1) c_out c_in complex numbers,
 * 640 MB at N = 17), while the direct sum costs 10-15 % of the certificate
 * per frequency and its rounding error has the simple elementwise bound (1).
 */
#include "runtime/runtime.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef lapack_complex_double zdouble;

#define U_ROUND 0x1p-53     /* unit roundoff of double, round to nearest */
#define TINY 0x1p-900       /* covers underflow, see above */
#define TWO_PI 6.283185307179586476925286766559

/* ---- rounding up ---------------------------------------------------------------
 * For nonnegative a, b: the correctly rounded result is within half an ulp of
 * the exact one, so the next double up is >= the exact one. */

static double up(double x) { return nextafter(x, INFINITY); }
static double add_up(double a, double b) { return up(a + b); }
static double mul_up(double a, double b) { return up(a * b); }
static double sqrt_up(double a) { return up(sqrt(a)); }

/* gamma(k) = k u / (1 - k u), from above. */
static double gam(double k)
{
    LIPC_ASSERT(k * U_ROUND < 0.01);
    return up(1.02 * k * U_ROUND);
}

/* sum x[i]^2 from above: a sum of n rounded squares errs by <= gamma(n). */
static double sumsq_up(const double *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return mul_up(s, 1.0 + 2.0 * gam((double)n + 1.0));
}

/* ---- certifying lambda_max of a Gram matrix ---------------------------------
 *
 * Hermitian (complex) and symmetric (real) versions, kept apart rather than
 * merged by macros. h: n x n, column-major, upper triangle valid; a: n x n
 * scratch, overwritten. */

typedef struct cert_ws {
    int n;
    void *rfp;      /* [n (n + 1) / 2] the Gram matrix in LAPACK's packed RFP form */
    void *h;        /* [n, n] the Gram matrix, upper triangle */
    void *a;        /* [n, n] mu I - h, then its Cholesky factor; eigensolver scratch */
    double *w;      /* [n] eigenvalues */
} cert_ws;

static void cert_ws_free(cert_ws *ws)
{
    lipc_free(ws->rfp);
    lipc_free(ws->h);
    lipc_free(ws->a);
    lipc_free(ws->w);
    memset(ws, 0, sizeof *ws);
}

static lipc_status cert_ws_alloc(cert_ws *ws, int n, size_t elem)
{
    size_t nn = (size_t)n * (size_t)n;
    ws->n = n;
    ws->rfp = lipc_malloc(elem * ((size_t)n * ((size_t)n + 1) / 2));
    ws->h = lipc_malloc(elem * nn);
    ws->a = lipc_malloc(elem * nn);
    ws->w = lipc_malloc(sizeof(double) * (size_t)n);
    if (!ws->rfp || !ws->h || !ws->a || !ws->w) {
        cert_ws_free(ws);
        return LIPC_ERR_NOMEM;
    }
    return LIPC_OK;
}

/* "Ran to completion" means every pivot was a positive real number. LAPACK
 * reports a pivot <= 0 as info > 0, but a NaN pivot compares false with 0 in
 * some implementations, so the factor's diagonal is checked here as well (a
 * NaN or Inf anywhere in R reaches a later diagonal entry). */
static bool pivots_ok_z(int n, const zdouble *r)
{
    for (int j = 0; j < n; j++) {
        double x = creal(r[(size_t)j * n + j]);
        if (!(x > 0.0) || !isfinite(x))
            return false;
    }
    return true;
}

/* diag: R's diagonal, entry j at diag[j step] (n + 1 in a dense factor,
 * kd + 1 in a band). */
static bool pivots_ok_d(int n, const double *diag, size_t step)
{
    for (int j = 0; j < n; j++) {
        double x = diag[(size_t)j * step];
        if (!(x > 0.0) || !isfinite(x))
            return false;
    }
    return true;
}

/* Cholesky of fl(mu I - h); on success *lam >= lambda_max(h) (step (3)). */
static bool chol_cert_z(int n, const zdouble *h, zdouble *a, double mu, double *lam)
{
    double tr = 0.0, amax = 0.0;
    for (int j = 0; j < n; j++) {
        const zdouble *hj = h + (size_t)j * n;
        zdouble *aj = a + (size_t)j * n;
        for (int i = 0; i < j; i++)
            aj[i] = -hj[i];
        double d = mu - creal(hj[j]);
        aj[j] = d;
        tr += fabs(d);
        amax = fmax(amax, fabs(d));
    }
    if (LAPACKE_zpotrf_work(LAPACK_COL_MAJOR, 'U', n, a, n) != 0 || !pivots_ok_z(n, a))
        return false;
    tr = mul_up(tr, 1.0 + 2.0 * gam(n + 1.0));
    double g = 3.0 * gam(2.0 * n + 4.0);
    double rho = mul_up(up(g / (1.0 - g)), tr);
    rho = add_up(add_up(rho, mul_up(2.0 * U_ROUND, amax)), TINY);
    *lam = add_up(mu, rho);
    return true;
}

/* After a real Cholesky of fl(mu I - H) ran to completion: mu + rho >=
 * lambda_max(H) (step (3)), from tr = sum |a_jj| and amax = max |a_jj| of the
 * matrix factored. */
static double real_chol_lambda(int n, double tr, double amax, double mu)
{
    tr = mul_up(tr, 1.0 + 2.0 * gam(n + 1.0));
    double g = 2.0 * gam(n + 2.0);
    double rho = mul_up(up(g / (1.0 - g)), tr);
    rho = add_up(add_up(rho, mul_up(2.0 * U_ROUND, amax)), TINY);
    return add_up(mu, rho);
}

static bool chol_cert_d(int n, const double *h, double *a, double mu, double *lam)
{
    double tr = 0.0, amax = 0.0;
    for (int j = 0; j < n; j++) {
        const double *hj = h + (size_t)j * n;
        double *aj = a + (size_t)j * n;
        for (int i = 0; i < j; i++)
            aj[i] = -hj[i];
        double d = mu - hj[j];
        aj[j] = d;
        tr += fabs(d);
        amax = fmax(amax, fabs(d));
    }
    if (LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'U', n, a, n) != 0 ||
        !pivots_ok_d(n, a, (size_t)n + 1))
        return false;
    *lam = real_chol_lambda(n, tr, amax, mu);
    return true;
}

/* Levels to try after an eigenvalue estimate lam of a matrix of Frobenius norm
 * fro: lam + eta (lam or fro), eta = 2^-36, 2^-32, ..., 2^4. The first one is
 * tight (a Cholesky of mu I - H succeeds once mu - lambda_max exceeds a few
 * n u lambda_max); the last ones exceed ||H||_F >= lambda_max by far, so they
 * succeed unless the arithmetic is broken. */
#define CERT_TRIES 11

static double cert_level(double lam, double fro, int k)
{
    double eta = ldexp(1.0, -36 + 4 * k);
    lam = fmax(lam, 0.0);
    return up(lam + eta * fmax(lam, fro)) + TINY;
}

/* lambda_max(h) <= *lam. *mu: the level to try first (0: none); raised to the
 * level certified here, so the caller can try it on its next matrix. */
static lipc_status cert_lambda_z(cert_ws *ws, double *mu, double *lam)
{
    int n = ws->n;
    const zdouble *h = ws->h;
    zdouble *a = ws->a;
    if (*mu > 0.0 && chol_cert_z(n, h, a, *mu, lam))
        return LIPC_OK;
    /* The estimate: the largest eigenvalue alone (il = iu = n). */
    memcpy(a, h, sizeof(zdouble) * (size_t)n * n);
    lapack_int found = 0, isuppz[2];
    lapack_int info = LAPACKE_zheevr(LAPACK_COL_MAJOR, 'N', 'I', 'U', n, a, n, 0.0, 0.0, n,
                                     n, 0.0, &found, ws->w, NULL, 1, isuppz);
    if (info == LAPACK_WORK_MEMORY_ERROR)
        return LIPC_ERR_NOMEM;
    double est = info == 0 && found == 1 ? ws->w[0] : 0.0;
    double fro = 0.0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i <= j; i++) {
            zdouble x = h[(size_t)j * n + i];
            fro += (i == j ? 1.0 : 2.0) * (creal(x) * creal(x) + cimag(x) * cimag(x));
        }
    fro = sqrt(fro);
    for (int k = 0; k < CERT_TRIES; k++) {
        double level = cert_level(est, fro, k);
        if (chol_cert_z(n, h, a, level, lam)) {
            *mu = fmax(*mu, level);
            return LIPC_OK;
        }
    }
    return LIPC_ERR_UNSUPPORTED;
}

static lipc_status cert_lambda_d(cert_ws *ws, double *mu, double *lam)
{
    int n = ws->n;
    const double *h = ws->h;
    double *a = ws->a;
    if (*mu > 0.0 && chol_cert_d(n, h, a, *mu, lam))
        return LIPC_OK;
    memcpy(a, h, sizeof(double) * (size_t)n * n);
    lapack_int found = 0, isuppz[2];
    lapack_int info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'N', 'I', 'U', n, a, n, 0.0, 0.0, n,
                                     n, 0.0, &found, ws->w, NULL, 1, isuppz);
    if (info == LAPACK_WORK_MEMORY_ERROR)
        return LIPC_ERR_NOMEM;
    double est = info == 0 && found == 1 ? ws->w[0] : 0.0;
    double fro = 0.0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i <= j; i++) {
            double x = h[(size_t)j * n + i];
            fro += (i == j ? 1.0 : 2.0) * x * x;
        }
    fro = sqrt(fro);
    for (int k = 0; k < CERT_TRIES; k++) {
        double level = cert_level(est, fro, k);
        if (chol_cert_d(n, h, a, level, lam)) {
            *mu = fmax(*mu, level);
            return LIPC_OK;
        }
    }
    return LIPC_ERR_UNSUPPORTED;
}

/* ---- sigma_max of a matrix, from above (steps (2)-(4)) -------------------------
 *
 * m: [rows, cols] column-major. The Gram matrix of the smaller side is formed
 * by dsfrk/zhfrk, LAPACK's rank-k update into the packed RFP format, which
 * calls the BLAS syrk/herk and gemm underneath: lipc_core links LAPACKE, not
 * the BLAS, so this is the Gram product within reach (about 1.6x the time of a
 * direct zherk at c = 512). It is then unpacked for the certificate. */

static int gram_side(int rows, int cols) { return rows < cols ? rows : cols; }

static lipc_status sigma_up_d(cert_ws *ws, const double *m, int rows, int cols, double *mu,
                              double *sigma)
{
    int n = ws->n, k = rows < cols ? cols : rows;
    LIPC_ASSERT(n == gram_side(rows, cols));
    /* cols <= rows: H = M^T M (inner length rows); else H = M M^T. */
    char trans = cols <= rows ? 'T' : 'N';
    if (LAPACKE_dsfrk_work(LAPACK_COL_MAJOR, 'N', 'U', trans, n, k, 1.0, m, rows, 0.0,
                           ws->rfp) != 0 ||
        LAPACKE_dtfttr_work(LAPACK_COL_MAJOR, 'N', 'U', n, ws->rfp, ws->h, n) != 0)
        return LIPC_ERR_UNSUPPORTED;
    double lam;
    lipc_status s = cert_lambda_d(ws, mu, &lam);
    if (s != LIPC_OK)
        return s;
    double form = mul_up(2.0 * gam(k + 2.0), sumsq_up(m, (size_t)rows * cols));
    *sigma = sqrt_up(add_up(add_up(lam, form), TINY));
    return LIPC_OK;
}

static lipc_status sigma_up_z(cert_ws *ws, const zdouble *m, int rows, int cols, double *mu,
                              double *sigma)
{
    int n = ws->n, k = rows < cols ? cols : rows;
    LIPC_ASSERT(n == gram_side(rows, cols));
    char trans = cols <= rows ? 'C' : 'N';
    if (LAPACKE_zhfrk_work(LAPACK_COL_MAJOR, 'N', 'U', trans, n, k, 1.0, m, rows, 0.0,
                           ws->rfp) != 0 ||
        LAPACKE_ztfttr_work(LAPACK_COL_MAJOR, 'N', 'U', n, ws->rfp, ws->h, n) != 0)
        return LIPC_ERR_UNSUPPORTED;
    double lam;
    lipc_status s = cert_lambda_z(ws, mu, &lam);
    if (s != LIPC_OK)
        return s;
    double form = mul_up(3.0 * gam(2.0 * k + 4.0),
                         sumsq_up((const double *)m, 2 * (size_t)rows * cols));
    *sigma = sqrt_up(add_up(add_up(lam, form), TINY));
    return LIPC_OK;
}

/* ---- checking a factor ------------------------------------------------------ */

static size_t weight_numel(const lipc_factor_desc *f)
{
    if (f->kind == LIPC_FACTOR_DENSE)
        return (size_t)f->c_out * (size_t)f->c_in;
    return (size_t)f->c_out * (size_t)f->c_in * (size_t)f->kh * (size_t)f->kw;
}

static const char *fname(const lipc_factor_desc *f) { return f->name ? f->name : "?"; }

/* The geometry must be that of a real layer: a bound for a wrong shape is
 * not a bound for the layer. */
static bool check_geometry(const lipc_factor_desc *f, lipc_diags *d)
{
    const char *why = NULL;
    if (f->c_in < 1 || f->c_out < 1)
        why = "needs c_in, c_out >= 1";
    else if (f->kind == LIPC_FACTOR_CONV) {
        long ph = (long)f->h + f->pad[0] + f->pad[1], pw = (long)f->w + f->pad[2] + f->pad[3];
        if (f->h < 1 || f->w < 1 || f->kh < 1 || f->kw < 1 || f->sh < 1 || f->sw < 1)
            why = "needs positive map, kernel and stride sizes";
        else if (f->pad[0] < 0 || f->pad[1] < 0 || f->pad[2] < 0 || f->pad[3] < 0)
            why = "has a negative padding";
        else if (f->kh > ph || f->kw > pw)
            why = "has a kernel larger than its padded input";
        else if (f->oh != (ph - f->kh) / f->sh + 1 || f->ow != (pw - f->kw) / f->sw + 1)
            why = "has an output size that does not follow from its input, kernel, stride "
                  "and padding";
    }
    if (!why && f->fold_identity && f->c_in != f->c_out)
        why = "folds an identity but has c_in != c_out";
    if (!why && f->fold_identity && f->kind == LIPC_FACTOR_CONV && (f->sh != 1 || f->sw != 1))
        why = "folds an identity into a strided conv";
    if (why) {
        lipc_diag_error(d, LIPC_NO_LOC, "factor '%s' %s: no sound bound", fname(f), why);
        return false;
    }
    return true;
}

/* NaN or Inf in the weights: no bound exists to return. */
static bool check_finite(const lipc_factor_desc *f, const float *w, lipc_diags *d)
{
    size_t n = weight_numel(f);
    for (size_t i = 0; i < n; i++) {
        if (isfinite(w[i]))
            continue;
        lipc_diag_msg *m;
        if (f->kind == LIPC_FACTOR_CONV) {
            size_t kx = i % (size_t)f->kw, ky = i / f->kw % (size_t)f->kh;
            size_t ci = i / ((size_t)f->kw * f->kh) % (size_t)f->c_in;
            size_t o = i / ((size_t)f->kw * f->kh * f->c_in);
            m = lipc_diag_error(d, LIPC_NO_LOC,
                                "factor '%s': weight [%zu, %zu, %zu, %zu] is %g: no sound "
                                "bound on its operator norm",
                                fname(f), o, ci, ky, kx, (double)w[i]);
        } else {
            m = lipc_diag_error(d, LIPC_NO_LOC,
                                "factor '%s': weight [%zu, %zu] is %g: no sound bound on its "
                                "operator norm",
                                fname(f), i / (size_t)f->c_in, i % (size_t)f->c_in,
                                (double)w[i]);
        }
        lipc_diag_note(m, LIPC_NO_LOC, "the parameters hold NaN or Inf (a diverged run?)");
        return false;
    }
    return true;
}

static lipc_status no_cert(const lipc_factor_desc *f, lipc_status s, lipc_diags *d)
{
    if (s == LIPC_ERR_UNSUPPORTED)
        lipc_diag_error(d, LIPC_NO_LOC,
                        "factor '%s': LAPACK failed, or no Cholesky certificate "
                        "succeeded at any level tried: no sound bound",
                        fname(f));
    return s;
}

/* ---- exact bounds: dense and reshaped kernels ---------------------------------
 *
 * W [rows, cols] row-major is, read column-major, the cols x rows matrix W^T,
 * which has the same singular values. fold: add the identity at row o, column
 * o * diag_step + diag_off, and the rounding of fl(w + 1) to the bound (step (5)). */

/* The folded identity (step (5)): adds 1 to m[o row + o step + off] for
 * o < n, and returns the bound on the rounding of fl(w + 1), 2 u max |w + 1|. */
static double add_identity(double *m, int n, size_t row, size_t step, size_t off)
{
    double big = 0.0;
    for (int o = 0; o < n; o++) {
        double *x = &m[(size_t)o * row + (size_t)o * step + off];
        *x += 1.0;
        big = fmax(big, fabs(*x));
    }
    return mul_up(2.0 * U_ROUND, big);
}

static lipc_status exact_bound(const lipc_factor_desc *f, const float *w, int rows, int cols,
                               int diag_step, int diag_off, double *value, lipc_diags *d)
{
    size_t n_el = (size_t)rows * cols;
    double *m = lipc_malloc(sizeof(double) * n_el);
    if (!m)
        return LIPC_ERR_NOMEM;
    for (size_t i = 0; i < n_el; i++)
        m[i] = w[i];
    double fold_err = f->fold_identity ? add_identity(m, rows, (size_t)cols, (size_t)diag_step,
                                                      (size_t)diag_off)
                                       : 0.0;
    cert_ws ws = {0};
    lipc_status s = cert_ws_alloc(&ws, gram_side(cols, rows), sizeof(double));
    double mu = 0.0, sigma = 0.0;
    if (s == LIPC_OK)
        s = no_cert(f, sigma_up_d(&ws, m, cols, rows, &mu, &sigma), d);
    cert_ws_free(&ws);
    lipc_free(m);
    if (s == LIPC_OK)
        *value = add_up(add_up(sigma, fold_err), TINY);
    return s;
}

/* ---- the circulant bound of a stride-1 conv ---------------------------------- */

/* The smallest torus on which the zero-padded stride-1 conv with f's kernel
 * and padding is a crop of a circular conv (see the top of the file). */
void lipc_conv_min_circulant(const lipc_factor_desc *f, int *nh, int *nw)
{
    int oh1 = f->h + f->pad[0] + f->pad[1] - f->kh + 1;
    int ow1 = f->w + f->pad[2] + f->pad[3] - f->kw + 1;
    int th = f->h + (f->pad[0] > f->pad[1] ? f->pad[0] : f->pad[1]);
    int tw = f->w + (f->pad[2] > f->pad[3] ? f->pad[2] : f->pad[3]);
    *nh = th > oh1 ? th : oh1;
    *nw = tw > ow1 ? tw : ow1;
}

/* The frequencies (u, v) that represent all of them under P(-u, -v) =
 * conj P(u, v), in a fixed shuffled order (so a smooth spectrum does not make
 * every frequency a new maximum, each costing an eigensolve). */
static int *frequencies(int nh, int nw, int *count)
{
    int half = nw / 2, n = 0;
    int *fq = lipc_malloc(sizeof(int) * 2 * (size_t)nh * (size_t)(half + 1));
    if (!fq)
        return NULL;
    for (int v = 0; v <= half; v++) {
        bool self_conj_col = v == 0 || 2 * v == nw;
        for (int u = 0; u < nh; u++) {
            if (self_conj_col && u > nh / 2)
                continue;
            fq[2 * n] = u;
            fq[2 * n + 1] = v;
            n++;
        }
    }
    lipc_rng r;
    lipc_rng_seed(&r, 0x6c697063u);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(lipc_rng_next(&r) % (uint64_t)(i + 1));
        int tu = fq[2 * i], tv = fq[2 * i + 1];
        fq[2 * i] = fq[2 * j];
        fq[2 * i + 1] = fq[2 * j + 1];
        fq[2 * j] = tu;
        fq[2 * j + 1] = tv;
    }
    *count = n;
    return fq;
}

/* P(u, v) for the entries [j0, j0 + len) of p, len <= DFT_BLOCK:
 *   p[j] = sum_t kt[t, j] (c[t] + i s[t]), summed in the order t = 0, 1, ...
 * Blocked so the partial sums stay in L1; full blocks have a constant trip
 * count so that the loops over j vectorise at -O2.
 * kt [T, nj]; p [nj] (column-major [c_out, c_in]). */
enum { DFT_BLOCK = 256 };

static void dft_full_block(const double *kt, size_t nj, int T, const double *c,
                           const double *s, size_t j0, zdouble *p)
{
    double re[DFT_BLOCK] = {0}, im[DFT_BLOCK] = {0};
    for (int t = 0; t < T; t++) {
        const double *k = kt + (size_t)t * nj + j0;
        double ct = c[t], st = s[t];
        for (int j = 0; j < DFT_BLOCK; j++) {
            re[j] += k[j] * ct;
            im[j] += k[j] * st;
        }
    }
    for (int j = 0; j < DFT_BLOCK; j++)
        p[j0 + (size_t)j] = (re[j] + im[j] * I);
}

static void dft(const double *kt, size_t nj, int T, const double *c, const double *s,
                zdouble *p)
{
    size_t j0 = 0;
    for (; j0 + DFT_BLOCK <= nj; j0 += DFT_BLOCK)
        dft_full_block(kt, nj, T, c, s, j0, p);
    for (size_t j = j0; j < nj; j++) {
        double re = 0.0, im = 0.0;
        for (int t = 0; t < T; t++) {
            re += kt[(size_t)t * nj + j] * c[t];
            im += kt[(size_t)t * nj + j] * s[t];
        }
        p[j] = (re + im * I);
    }
}

/* max over frequencies of sigma_max(P(u, v)) from above, steps (1)-(5).
 * kt [T, c_in * c_out]: kt[t nj + o + i c_out] = K[o, i, t], identity folded.
 * p  [c_out, c_in] column-major complex, per frequency. */
static lipc_status circulant_bound(const lipc_factor_desc *f, const float *w, int nh, int nw,
                                   double *value, lipc_diags *d)
{
    int c_out = f->c_out, c_in = f->c_in, kh = f->kh, kw = f->kw, T = kh * kw;
    size_t nj = (size_t)c_out * c_in;
    double *kt = lipc_malloc(sizeof(double) * nj * T);
    zdouble *p = lipc_malloc(sizeof(zdouble) * nj);
    double *ct = lipc_malloc(sizeof(double) * 2 * (size_t)T);
    int n_freq = 0;
    int *fq = frequencies(nh, nw, &n_freq);
    cert_ws ws = {0};
    lipc_status s = kt && p && ct && fq ? cert_ws_alloc(&ws, gram_side(c_out, c_in),
                                                        sizeof(zdouble))
                                        : LIPC_ERR_NOMEM;
    if (s != LIPC_OK)
        goto done;

    for (int o = 0; o < c_out; o++)
        for (int i = 0; i < c_in; i++)
            for (int t = 0; t < T; t++)
                kt[(size_t)t * nj + o + (size_t)i * c_out] = w[((size_t)o * c_in + i) * T + t];
    /* the identity on the centre tap: kt[centre][o + o c_out] */
    size_t centre = (size_t)((kh / 2) * kw + kw / 2);
    double fold_err = f->fold_identity ? add_identity(kt, c_out, 1, (size_t)c_out, centre * nj)
                                       : 0.0;
    /* ||S||_F, S[o, i] = sum_t |K[o, i, t]|: the DFT's error scale (step (1)). */
    double s_fro = 0.0;
    for (size_t j = 0; j < nj; j++) {
        double a = 0.0;
        for (int t = 0; t < T; t++)
            a += fabs(kt[(size_t)t * nj + j]);
        a = mul_up(a, 1.0 + 2.0 * gam(T + 1.0));
        s_fro += a * a;
    }
    s_fro = sqrt_up(mul_up(s_fro, 1.0 + 2.0 * gam((double)nj + 1.0)));
    double e_dft = mul_up(3.0, add_up(32.0 * U_ROUND, gam(T + 1.0)));
    double dft_err = mul_up(e_dft, s_fro);

    long long big_m = (long long)nh * nw;
    double mu = 0.0, best = 0.0;
    for (int k = 0; k < n_freq; k++) {
        int u = fq[2 * k], v = fq[2 * k + 1];
        for (int a = 0; a < kh; a++)
            for (int b = 0; b < kw; b++) {
                long long q = ((long long)u * a * nw + (long long)v * b * nh) % big_m;
                double ang = TWO_PI * (double)q / (double)big_m;
                ct[a * kw + b] = cos(ang);
                ct[T + a * kw + b] = sin(ang);
            }
        dft(kt, nj, T, ct, ct + T, p);
        double sigma;
        s = no_cert(f, sigma_up_z(&ws, p, c_out, c_in, &mu, &sigma), d);
        if (s != LIPC_OK)
            goto done;
        best = fmax(best, sigma);
    }
    *value = add_up(add_up(add_up(best, dft_err), fold_err), TINY);
done:
    cert_ws_free(&ws);
    lipc_free(kt);
    lipc_free(p);
    lipc_free(ct);
    lipc_free(fq);
    return s;
}

lipc_status lipc_conv_circulant_bound(const lipc_factor_desc *f, const float *params, int nh,
                                      int nw, lipc_sound_bound *out, lipc_diags *d)
{
    double t0 = lipc_now();
    if (f->kind != LIPC_FACTOR_CONV) {
        lipc_diag_error(d, LIPC_NO_LOC, "factor '%s' is not a convolution", fname(f));
        return LIPC_ERR_INPUT;
    }
    if (!check_geometry(f, d))
        return LIPC_ERR_INPUT;
    int min_h, min_w;
    lipc_conv_min_circulant(f, &min_h, &min_w);
    if (nh < min_h || nw < min_w) {
        lipc_diag_error(d, LIPC_NO_LOC,
                        "factor '%s': a %dx%d torus is too small for the circulant bound "
                        "(at least %dx%d)",
                        fname(f), nh, nw, min_h, min_w);
        return LIPC_ERR_INPUT;
    }
    const float *w = params + f->w_offset;
    if (!check_finite(f, w, d))
        return LIPC_ERR_INPUT;
    double value;
    lipc_status s = circulant_bound(f, w, nh, nw, &value, d);
    if (s != LIPC_OK)
        return s;
    out->value = value;
    out->method = f->sh == 1 && f->sw == 1 ? "conv-fft" : "stride-1-fft-upper";
    out->seconds = lipc_now() - t0;
    return LIPC_OK;
}

/* ---- strided convs: the polyphase rewrite --------------------------------------
 *
 * Along one axis (stride s, kernel k, padding lo, input n, output out): output
 * y reads input y s + t - lo for taps t in [0, k). Write t - lo = s a + p with
 * p in [0, s) and a = floor((t - lo) / s): the read is row y + a of the
 * polyphase component X_p[m] = x[m s + p]. So the strided conv is a STRIDE-1
 * conv of the stack of the s polyphase components (s c_in channels per axis,
 * n' = ceil(n / s) rows, X_p zero where m s + p >= n) with the kernel
 *   K'[o, (i, p), a - a_min] = K[o, i, s a + p + lo]   (0 where that tap is
 *   outside [0, k)),   a in [a_min, a_max] = [floor(-lo / s), floor((k-1-lo) / s)],
 * padding lo' = -a_min on top and whatever the output size implies below:
 *   hi' = out - 1 + k' - n' - lo'.
 * x -> its stack is a coordinate embedding (an isometry), so
 *   ||strided conv|| <= ||stride-1 conv with K'|| <= its circulant bound.
 * When hi' < 0 the last -hi' stack rows are never read: they are dropped (a
 * coordinate projection, norm <= 1) and hi' = 0. Unlike the stride-1 bound of
 * the original kernel, which only drops the subsampling, this keeps the
 * aliasing of the stride, so it is about as tight as the stride-1 case. */

static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

typedef struct poly_axis {
    int n, k, lo, hi;   /* the stride-1 conv's map, kernel and padding */
    int a_min;
} poly_axis;

static bool polyphase_axis(int n, int k, int s, int lo, int out, poly_axis *ax)
{
    ax->a_min = floor_div(-lo, s);
    ax->k = floor_div(k - 1 - lo, s) - ax->a_min + 1;
    ax->lo = -ax->a_min;
    ax->n = (n + s - 1) / s;
    ax->hi = out - 1 + ax->k - ax->n - ax->lo;
    if (ax->hi < 0) {
        ax->n += ax->hi;
        ax->hi = 0;
    }
    return ax->n >= 1 && ax->k >= 1 && ax->k <= ax->n + ax->lo + ax->hi;
}

/* *done false (and LIPC_OK): the rewrite degenerates (padding of a kernel's
 * size or more); the caller falls back to the stride-1 bound. */
static lipc_status polyphase_bound(const lipc_factor_desc *f, const float *w, double *value,
                                   bool *done, lipc_diags *d)
{
    poly_axis ay, ax;
    *done = false;
    if (!polyphase_axis(f->h, f->kh, f->sh, f->pad[0], f->oh, &ay) ||
        !polyphase_axis(f->w, f->kw, f->sw, f->pad[2], f->ow, &ax))
        return LIPC_OK;
    lipc_factor_desc g = *f;
    g.c_in = f->c_in * f->sh * f->sw;
    g.h = ay.n;
    g.w = ax.n;
    g.kh = ay.k;
    g.kw = ax.k;
    g.sh = g.sw = 1;
    g.pad[0] = ay.lo;
    g.pad[1] = ay.hi;
    g.pad[2] = ax.lo;
    g.pad[3] = ax.hi;
    g.w_offset = 0;
    size_t n = (size_t)g.c_out * g.c_in * g.kh * g.kw;
    float *k2 = lipc_calloc(n, sizeof *k2);
    if (!k2)
        return LIPC_ERR_NOMEM;
    /* K'[o, (i sh + p) sw + q, a', b'] = K[o, i, sh (a' + a_min) + p + lo, ...] */
    for (int o = 0; o < f->c_out; o++)
        for (int i = 0; i < f->c_in; i++)
            for (int p = 0; p < f->sh; p++)
                for (int q = 0; q < f->sw; q++)
                    for (int a = 0; a < g.kh; a++)
                        for (int b = 0; b < g.kw; b++) {
                            int ky = f->sh * (a + ay.a_min) + p + f->pad[0];
                            int kx = f->sw * (b + ax.a_min) + q + f->pad[2];
                            if (ky < 0 || ky >= f->kh || kx < 0 || kx >= f->kw)
                                continue;
                            int ci = (i * f->sh + p) * f->sw + q;
                            k2[(((size_t)o * g.c_in + ci) * g.kh + a) * g.kw + b] =
                                w[(((size_t)o * f->c_in + i) * f->kh + ky) * f->kw + kx];
                        }
    int nh, nw;
    lipc_conv_min_circulant(&g, &nh, &nw);
    lipc_status s = circulant_bound(&g, k2, nh, nw, value, d);
    lipc_free(k2);
    *done = s == LIPC_OK;
    return s;
}

/* ---- the exact operator of a small conv: its Gram matrix as a band -------------
 *
 * ("conv-gram-band") A: the conv with its zero padding and stride, as the
 * network computes it, on inputs ordered (row, column, channel). Its Gram
 * matrix H = A^T A couples two input pixels only when one output window holds
 * both, so H is a band of half-width kd = ((kh - 1) w + kw - 1) c_in + c_in - 1,
 * and a banded Cholesky (dpbtrf, about n kd^2 operations for n = c_in h w)
 * certifies lambda_max(H) as in step (3). This is ||A|| itself, not the
 * circular conv's norm above it, so the bound meets the power iteration's
 * estimate to about 1e-7 (the circulant bound of a trained 64-channel block
 * is 0.02-0.15 % above it). Used when the band fits lipc_bounds_band_budget.
 *
 * H is formed from G[t1, t2] = sum_o K[o, :, t1]^T K[o, :, t2] (c_in x c_in):
 * output pixel r reads input pixels p = base(r) + t1 and q = base(r) + t2,
 * so H[(p, :), (q, :)] = sum over such r of G[t1, t2]. Each entry of H^ is then
 * a sum of the products K[o, i, t1] K[o, j, t2] in which every product meets
 * at most 1 + (c_out - 1) + (kh kw - 1) roundings (at most kh kw outputs read
 * both pixels), so |H^ - H| <= gamma(c_out + kh kw) |A|^T |A| and
 *     ||H^ - H||_2 <= gamma(c_out + kh kw) ||A||_F^2,
 *     ||A||_F^2 <= oh ow ||K||_F^2 (each output pixel uses each tap once),
 * taken generously as 2 gamma(c_out + kh kw + 2). The Cholesky certificate is
 * step (3) for a band (a banded Cholesky is a Cholesky that skips zeros:
 * Higham's Theorem 10.3 holds, with gamma(n + 1) a fortiori), and the level
 * to try comes from Lanczos on H^ (an estimate only; a bad one costs a retry).
 * A folded identity is added to K first, and its rounding to the bound (5). */

static double band_budget = LIPC_CONV_BAND_BUDGET;

double lipc_bounds_band_budget(double ops)
{
    double old = band_budget;
    band_budget = ops;
    return old;
}

typedef struct band {
    int n, kd;
    /* [(kd + 1) n] the upper band in LAPACK's layout: (i, j) at kd + i - j + j (kd + 1) */
    double *h, *a;
} band;

static int band_kd(const lipc_factor_desc *f)
{
    return lipc_conv_band_kd(f->c_in, f->w, f->kh, f->kw);
}

/* The taps of output pixel (ry, rx) that read an input pixel: tap[k] and
 * the pixel's offset in x (row, column, channel order), k < the count. */
static int window(const lipc_factor_desc *f, int ry, int rx, int *tap, size_t *at)
{
    int n = 0;
    for (int t = 0; t < f->kh * f->kw; t++) {
        int py = ry * f->sh - f->pad[0] + t / f->kw, px = rx * f->sw - f->pad[2] + t % f->kw;
        if (py < 0 || py >= f->h || px < 0 || px >= f->w)
            continue;
        tap[n] = t;
        at[n++] = ((size_t)py * f->w + px) * (size_t)f->c_in;
    }
    return n;
}

/* y = A^T A x through the conv itself (about 4 times fewer operations than
 * the band): kt [T, c_out, c_in] the kernel by tap; z [c_out], tap [T] and
 * at [T] scratch. */
static void gram_apply(const lipc_factor_desc *f, const double *kt, const double *x, double *z,
                       int *tap, size_t *at, double *y)
{
    int c_in = f->c_in, c_out = f->c_out;
    size_t oc = (size_t)c_out * c_in;
    memset(y, 0, sizeof(double) * (size_t)c_in * f->h * f->w);
    for (int ry = 0; ry < f->oh; ry++)
        for (int rx = 0; rx < f->ow; rx++) {
            int nt = window(f, ry, rx, tap, at);
            for (int o = 0; o < c_out; o++) {
                double acc = 0.0;
                for (int k = 0; k < nt; k++) {
                    const double *ko = kt + (size_t)tap[k] * oc + (size_t)o * c_in, *xp = x + at[k];
                    for (int i = 0; i < c_in; i++)
                        acc += ko[i] * xp[i];
                }
                z[o] = acc;
            }
            for (int k = 0; k < nt; k++) {
                double *yp = y + at[k];
                for (int o = 0; o < c_out; o++) {
                    const double *ko = kt + (size_t)tap[k] * oc + (size_t)o * c_in;
                    for (int i = 0; i < c_in; i++)
                        yp[i] += ko[i] * z[o];
                }
            }
        }
}

/* An estimate of lambda_max(A^T A) from Lanczos (no reorthogonalisation:
 * lost orthogonality only repeats Ritz values, the largest still converges),
 * run until the largest Ritz value moves less than tol over 10 steps. */
static lipc_status gram_lanczos(const lipc_factor_desc *f, const double *kt, double tol,
                                double *est)
{
    enum { MAX_K = 400 };
    int n = f->c_in * f->h * f->w;
    int T = f->kh * f->kw;
    double *v = lipc_calloc((size_t)n, sizeof(double));
    double *v0 = lipc_calloc((size_t)n, sizeof(double));
    double *w = lipc_malloc(sizeof(double) * (size_t)n);
    double *z = lipc_malloc(sizeof(double) * (size_t)f->c_out);
    int *tap = lipc_malloc(sizeof(int) * (size_t)T);
    size_t *at = lipc_malloc(sizeof(size_t) * (size_t)T);
    double *al = lipc_malloc(sizeof(double) * MAX_K), *be = lipc_malloc(sizeof(double) * MAX_K);
    double *d = lipc_malloc(sizeof(double) * MAX_K), *e = lipc_malloc(sizeof(double) * MAX_K);
    lipc_status s = v && v0 && w && z && tap && at && al && be && d && e ? LIPC_OK
                                                                         : LIPC_ERR_NOMEM;
    *est = 0.0;
    if (s == LIPC_OK) {
        lipc_rng r;
        lipc_rng_seed(&r, 0x5eed1a2c05ull);
        double nv = 0.0;
        for (int i = 0; i < n; i++) {
            v[i] = lipc_rng_normal(&r);
            nv += v[i] * v[i];
        }
        for (int i = 0; i < n; i++)
            v[i] /= sqrt(nv);
        double beta = 0.0, last = -1.0;
        for (int k = 0; k < MAX_K; k++) {
            gram_apply(f, kt, v, z, tap, at, w);
            double alpha = 0.0;
            for (int i = 0; i < n; i++) {
                w[i] -= beta * v0[i];
                alpha += w[i] * v[i];
            }
            double nw = 0.0;
            for (int i = 0; i < n; i++) {
                w[i] -= alpha * v[i];
                nw += w[i] * w[i];
            }
            al[k] = alpha;
            be[k] = beta = sqrt(nw);
            bool stop = !(beta > 1e-300) || k + 1 == MAX_K;
            if (stop || (k + 1) % 10 == 0) {
                memcpy(d, al, sizeof(double) * (size_t)(k + 1));
                memcpy(e, be, sizeof(double) * (size_t)(k + 1));
                if (LAPACKE_dsterf(k + 1, d, e) != 0)
                    break;
                double top = d[k]; /* ascending */
                *est = fmax(*est, top);
                if (stop || fabs(top - last) <= tol)
                    break;
                last = top;
            }
            for (int i = 0; i < n; i++) {
                double t = v[i];
                v[i] = w[i] / beta;
                v0[i] = t;
            }
        }
    }
    lipc_free(v);
    lipc_free(v0);
    lipc_free(w);
    lipc_free(z);
    lipc_free(tap);
    lipc_free(at);
    lipc_free(al);
    lipc_free(be);
    lipc_free(d);
    lipc_free(e);
    return s;
}

/* Cholesky of fl(mu I - h) in the band; on success *lam >= lambda_max(h). */
static bool band_chol_cert(const band *b, double mu, double *lam)
{
    int n = b->n, kd = b->kd;
    size_t ld = (size_t)kd + 1, len = ld * (size_t)n;
    double tr = 0.0, amax = 0.0;
    for (size_t k = 0; k < len; k++)
        b->a[k] = -b->h[k];
    for (int j = 0; j < n; j++) {
        double *x = &b->a[(size_t)j * ld + kd];
        double dj = mu - b->h[(size_t)j * ld + kd];
        *x = dj;
        tr += fabs(dj);
        amax = fmax(amax, fabs(dj));
    }
    if (LAPACKE_dpbtrf_work(LAPACK_COL_MAJOR, 'U', n, kd, b->a, kd + 1) != 0 ||
        !pivots_ok_d(n, b->a + kd, ld))
        return false;
    *lam = real_chol_lambda(n, tr, amax, mu);
    return true;
}

static lipc_status band_bound(const lipc_factor_desc *f, const float *w, double *value,
                              lipc_diags *d)
{
    int c_in = f->c_in, c_out = f->c_out, kh = f->kh, kw = f->kw, T = kh * kw;
    band b = {.n = c_in * f->h * f->w, .kd = band_kd(f)};
    size_t ld = (size_t)b.kd + 1, cc = (size_t)c_in * c_in;
    size_t nk = (size_t)c_out * c_in * T;
    double *k = lipc_malloc(sizeof(double) * nk), *kt = lipc_malloc(sizeof(double) * nk);
    double *g = lipc_calloc((size_t)T * T * cc, sizeof(double));
    int *tap = lipc_malloc(sizeof(int) * (size_t)T);
    size_t *at = lipc_malloc(sizeof(size_t) * (size_t)T);
    b.h = lipc_calloc(ld * (size_t)b.n, sizeof(double));
    b.a = lipc_malloc(sizeof(double) * ld * (size_t)b.n);
    lipc_status s = k && kt && g && tap && at && b.h && b.a ? LIPC_OK : LIPC_ERR_NOMEM;
    if (s != LIPC_OK)
        goto done;
    for (size_t i = 0; i < nk; i++)
        k[i] = w[i];
    /* the identity on the centre tap: k[o][o][centre] */
    double fold_err = f->fold_identity ? add_identity(k, c_out, (size_t)c_in * T, (size_t)T,
                                                      (size_t)((kh / 2) * kw + kw / 2))
                                       : 0.0;
    /* G[t1, t2][i, j] = sum_o K[o, i, t1] K[o, j, t2] */
    for (int t1 = 0; t1 < T; t1++)
        for (int t2 = 0; t2 < T; t2++) {
            double *gt = g + ((size_t)t1 * T + t2) * cc;
            for (int o = 0; o < c_out; o++) {
                const double *ko = k + (size_t)o * c_in * T;
                for (int i = 0; i < c_in; i++) {
                    double ki = ko[(size_t)i * T + t1];
                    if (ki == 0.0)
                        continue;
                    for (int j = 0; j < c_in; j++)
                        gt[(size_t)i * c_in + j] += ki * ko[(size_t)j * T + t2];
                }
            }
        }
    /* H[(p, :), (q, :)] += G[t1, t2] for every output pixel reading p and q
     * (at: offsets of pixels times c_in, so they order the pixels) */
    for (int ry = 0; ry < f->oh; ry++)
        for (int rx = 0; rx < f->ow; rx++) {
            int nt = window(f, ry, rx, tap, at);
            for (int k1 = 0; k1 < nt; k1++)
                for (int k2 = 0; k2 < nt; k2++) {
                    size_t p0 = at[k1], q0 = at[k2];
                    if (p0 > q0)
                        continue; /* the pair (k2, k1) holds it */
                    const double *gt = g + ((size_t)tap[k1] * T + tap[k2]) * cc;
                    for (int j = 0; j < c_in; j++) {
                        size_t col = q0 + (size_t)j;
                        double *hc = b.h + col * ld + b.kd - col;
                        for (int i = 0; i < (p0 == q0 ? j + 1 : c_in); i++)
                            hc[p0 + (size_t)i] += gt[(size_t)i * c_in + j];
                    }
                }
        }
    /* the level to try: Lanczos until it moves less than a sixteenth of the
     * first level's margin over the estimate (2^-36 ||H||_F, cert_level) */
    double est = 0.0, fro = 0.0;
    for (int j = 0; j < b.n; j++)
        for (int i = j > b.kd ? j - b.kd : 0; i <= j; i++) {
            double x = b.h[(size_t)j * ld + b.kd + i - j];
            fro += (i == j ? 1.0 : 2.0) * x * x;
        }
    fro = sqrt(fro);
    for (int o = 0; o < c_out; o++)
        for (int i = 0; i < c_in; i++)
            for (int t = 0; t < T; t++)
                kt[((size_t)t * c_out + o) * c_in + i] = k[((size_t)o * c_in + i) * T + t];
    if ((s = gram_lanczos(f, kt, ldexp(fro, -40), &est)) != LIPC_OK)
        goto done;
    double lam = 0.0;
    bool ok = false;
    for (int t = 0; t < CERT_TRIES && !ok; t++)
        ok = band_chol_cert(&b, cert_level(est, fro, t), &lam);
    if (!ok) {
        s = no_cert(f, LIPC_ERR_UNSUPPORTED, d);
        goto done;
    }
    double form = mul_up(mul_up(2.0 * gam(c_out + T + 2.0), sumsq_up(k, nk)),
                         (double)f->oh * f->ow);
    *value = add_up(add_up(sqrt_up(add_up(add_up(lam, form), TINY)), fold_err), TINY);
done:
    lipc_free(k);
    lipc_free(kt);
    lipc_free(g);
    lipc_free(tap);
    lipc_free(at);
    lipc_free(b.h);
    lipc_free(b.a);
    return s;
}

/* ---- one factor ---------------------------------------------------------------- */

lipc_status lipc_factor_sound_bound(const lipc_factor_desc *f, const float *params,
                                    lipc_sound_bound *out, lipc_diags *d)
{
    double t0 = lipc_now();
    double value = 0.0;
    const char *method = NULL;
    lipc_status s = LIPC_OK;
    switch (f->kind) {
    case LIPC_FACTOR_CONST:
        if (!(f->value >= 0.0) || !isfinite(f->value)) {
            lipc_diag_error(d, LIPC_NO_LOC, "factor '%s': constant %g is not a finite "
                            "nonnegative number: no sound bound", fname(f), f->value);
            return LIPC_ERR_INPUT;
        }
        /* The constant was computed in double (1/k, ...): one ulp up covers it. */
        value = up(f->value);
        method = "const";
        break;
    case LIPC_FACTOR_LOOSE:
        lipc_diag_error(d, LIPC_NO_LOC, "factor '%s' is 1 + the product of its children: "
                        "bound it with lipc_model_sound_bounds", fname(f));
        return LIPC_ERR_INPUT;
    case LIPC_FACTOR_DENSE: {
        if (!check_geometry(f, d) || !check_finite(f, params + f->w_offset, d))
            return LIPC_ERR_INPUT;
        /* W [out, in]; the folded identity sits at (o, o). */
        s = exact_bound(f, params + f->w_offset, f->c_out, f->c_in, 1, 0, &value, d);
        method = "dense-svd";
        break;
    }
    case LIPC_FACTOR_CONV: {
        if (!check_geometry(f, d) || !check_finite(f, params + f->w_offset, d))
            return LIPC_ERR_INPUT;
        lipc_conv_method m = lipc_conv_method_for(f->c_in, f->h, f->w, f->kh, f->kw, f->sh,
                                                  f->sw, f->pad, band_budget);
        if (m == LIPC_CONV_RESHAPED) {
            /* Disjoint windows: W reshaped c_out x (c_in kh kw), exact. A
             * folded identity sits on the centre tap of channel o, column
             * o kh kw + (kh/2) kw + kw/2. */
            int T = f->kh * f->kw;
            s = exact_bound(f, params + f->w_offset, f->c_out, f->c_in * T, T,
                            (f->kh / 2) * f->kw + f->kw / 2, &value, d);
            method = "reshaped-kernel";
            break;
        }
        /* Small enough: the exact operator's Gram band. */
        if (m == LIPC_CONV_GRAM_BAND) {
            s = band_bound(f, params + f->w_offset, &value, d);
            method = "conv-gram-band";
            break;
        }
        /* Strided: the polyphase rewrite, a stride-1 conv with the same norm
         * bound (see polyphase_axis); where its geometry degenerates, the
         * stride-1 conv with the same kernel and padding. */
        if (m == LIPC_CONV_POLYPHASE) {
            bool done = false;
            s = polyphase_bound(f, params + f->w_offset, &value, &done, d);
            if (s != LIPC_OK)
                return s;
            if (done) {
                method = "polyphase-fft";
                break;
            }
        }
        /* Stride 1: the circulant bound; strided: the circulant bound of the
         * stride-1 conv with the same kernel and padding (subsampling is a
         * coordinate projection, norm <= 1). */
        lipc_sound_bound b;
        int nh, nw;
        lipc_conv_min_circulant(f, &nh, &nw);
        s = lipc_conv_circulant_bound(f, params, nh, nw, &b, d);
        value = b.value;
        method = b.method;
        break;
    }
    }
    if (s != LIPC_OK)
        return s;
    out->value = value;
    out->method = method;
    out->seconds = lipc_now() - t0;
    return LIPC_OK;
}

/* ---- the whole model ---------------------------------------------------------- */

lipc_status lipc_model_sound_bounds(const lipc_model_desc *m, const float *params,
                                    lipc_sound_bound *per_factor, double *k_sub,
                                    lipc_diags *d)
{
    *k_sub = NAN;
    /* The factor tree: a LOOSE parent follows its children (program order), and
     * weights lie inside the parameter block. */
    for (int i = 0; i < m->n_factors; i++) {
        const lipc_factor_desc *f = &m->factors[i];
        int p = f->parent;
        if (p != -1 && (p <= i || p >= m->n_factors ||
                        m->factors[p].kind != LIPC_FACTOR_LOOSE)) {
            lipc_diag_error(d, LIPC_NO_LOC, "factor '%s' (#%d) has parent #%d, which is not "
                            "a later LOOSE factor: no sound bound", fname(f), i, p);
            return LIPC_ERR_INPUT;
        }
        if ((f->kind == LIPC_FACTOR_CONV || f->kind == LIPC_FACTOR_DENSE) &&
            (f->w_offset > m->n_param_elems ||
             weight_numel(f) > m->n_param_elems - f->w_offset)) {
            lipc_diag_error(d, LIPC_NO_LOC, "factor '%s': weights [%zu, +%zu) outside the "
                            "parameter block of %zu", fname(f), f->w_offset,
                            weight_numel(f), m->n_param_elems);
            return LIPC_ERR_INPUT;
        }
    }
    for (int i = 0; i < m->n_factors; i++) {
        const lipc_factor_desc *f = &m->factors[i];
        if (f->kind == LIPC_FACTOR_LOOSE) {
            /* Children precede (checked above), so their bounds are ready. */
            double prod = 1.0;
            for (int c = 0; c < i; c++)
                if (m->factors[c].parent == i)
                    prod = mul_up(prod, per_factor[c].value);
            per_factor[i] = (lipc_sound_bound){add_up(1.0, prod), "1 + K(body)", 0.0};
            continue;
        }
        lipc_status s = lipc_factor_sound_bound(f, params, &per_factor[i], d);
        if (s != LIPC_OK)
            return s;
    }
    double k = 1.0;
    for (int i = 0; i < m->n_factors; i++)
        if (m->factors[i].parent < 0)
            k = mul_up(k, per_factor[i].value);
    *k_sub = k;
    return LIPC_OK;
}

lipc_status lipc_model_sound_sigma(const lipc_model_desc *m, const float *params, double *sigma,
                                   double *k_sub, lipc_diags *d)
{
    lipc_sound_bound *per = lipc_calloc((size_t)m->n_factors + 1, sizeof *per);
    if (!per)
        return LIPC_ERR_NOMEM;
    lipc_status s = lipc_model_sound_bounds(m, params, per, k_sub, d);
    for (int f = 0; s == LIPC_OK && f < m->n_factors; f++)
        sigma[f] = per[f].value;
    lipc_free(per);
    return s;
}
