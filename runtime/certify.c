/* runtime/certify.c: deterministic l2 certification of a classifier's logits
 * with the head's pair bounds (METHOD.md section 1), in double.
 *
 * Key idea: compute one number per point, the certified radius
 *
 *   r = min_{i != j} (f_j - f_i - float_slack) / kpair[j, i]     (j = argmax)
 *
 * and DEFINE "certified at eps" as r > eps. Every eps of the report, the VRA
 * counts and the histogram then come from the same value, so r > eps and the
 * certificate can never disagree, not even at equality, where the strict rule
 * f_j - f_i > eps K says "not certified" and so does r > eps.
 *
 * Fail closed: a tie for the top logit is never certified and never correct
 * (the unsound alternative certifies ties; see METHOD.md), and a NaN or Inf in
 * the logits or in the prediction's row of kpair makes the point invalid: not
 * certified, counted, and flagged in the summary so the caller fails loudly
 * instead of reporting a VRA over garbage.
 *
 * Rounding. With the logits' error bounds e (a backend's predict_bounded), the
 * exact margin satisfies f_j - f_i >= f~_j - f~_i - e_j - e_i, so the radius
 * uses that lower bound, computed rounding down: every operation is followed
 * by nextafter towards -inf (a result rounded to nearest is within half a gap
 * of the exact value, so the next double down is below it; the slack is
 * rounded up the same way). Then fl(a / K) > eps implies a / K > eps for a
 * double eps (rounding is monotone), hence exact margin >= a > eps K. The pair
 * bounds themselves are rounded up by lipc_kpair_upper (at the end).
 */
#include "runtime/runtime.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one point ---------------------------------------------------------------- */

/* Logits arrive as double (reference backend) or float (fast backends); one
 * reader for both keeps a single copy of the rule. Exactly one pointer is set. */
typedef struct logit_row {
    const double *d;
    const float *s;
} logit_row;

static double logit_at(logit_row f, int k) { return f.d ? f.d[k] : (double)f.s[k]; }

static double up(double x) { return nextafter(x, INFINITY); }
static double down(double x) { return nextafter(x, -INFINITY); }

/* err [m]: the logits' rounding error bounds, or NULL (trust them as exact). */
static lipc_cert_point certify_row(int m, logit_row f, const double *err, const double *kpair,
                                   double float_slack)
{
    lipc_cert_point pt = {.pred = -1, .radius = 0.0, .tie = false, .invalid = false};
    for (int k = 0; k < m; k++) {
        if (!isfinite(logit_at(f, k)) || (err && !(err[k] >= 0.0))) {
            pt.invalid = true;
            return pt;
        }
    }

    /* the prediction; any other class with the same top value is a tie */
    int j = 0;
    for (int i = 1; i < m; i++)
        if (logit_at(f, i) > logit_at(f, j))
            j = i;
    double fj = logit_at(f, j);
    for (int i = 0; i < m; i++) {
        if (i != j && logit_at(f, i) == fj) {
            pt.tie = true;
            return pt;
        }
    }

    const double *kj = kpair + (size_t)j * m;
    for (int i = 0; i < m; i++) {
        if (i != j && (!isfinite(kj[i]) || kj[i] < 0.0)) {
            pt.invalid = true;
            return pt;
        }
    }

    /* r = min over the other classes of the radius each pair allows. A pair
     * whose bound is 0 cannot be flipped by any perturbation: it allows +inf
     * when its margin beats the slack and nothing otherwise. m == 1 leaves
     * r = +inf: nothing can change a one-class prediction. */
    double r = INFINITY;
    for (int i = 0; i < m; i++) {
        if (i == j)
            continue;
        double a;
        if (err) /* a lower bound on the exact margin minus the slack; +inf
                  * error bounds give -inf: not certified */
            a = down(down(fj - logit_at(f, i)) - up(up(err[j] + err[i]) + float_slack));
        else
            a = (fj - logit_at(f, i)) - float_slack;
        double ri;
        if (kj[i] > 0.0)
            ri = a / kj[i];
        else
            ri = a > 0.0 ? INFINITY : 0.0;
        if (ri < r)
            r = ri;
    }
    /* a slack larger than a margin gives a negative ratio: certified nowhere,
     * which r = 0 says as well (r > eps fails for every eps >= 0) */
    if (r < 0.0)
        r = 0.0;
    pt.pred = j;
    pt.radius = r;
    return pt;
}

lipc_cert_point lipc_certify_point(int m, const double *f, const double *kpair,
                                   double float_slack)
{
    LIPC_ASSERT(m >= 1);
    return certify_row(m, (logit_row){f, NULL}, NULL, kpair, float_slack);
}

lipc_cert_point lipc_certify_point_f32(int m, const float *f, const double *kpair,
                                       double float_slack)
{
    LIPC_ASSERT(m >= 1);
    return certify_row(m, (logit_row){NULL, f}, NULL, kpair, float_slack);
}

lipc_cert_point lipc_certify_point_slack(int m, const double *f, const double *err,
                                         const double *kpair, double float_slack)
{
    LIPC_ASSERT(m >= 1 && err);
    return certify_row(m, (logit_row){f, NULL}, err, kpair, float_slack);
}

/* ---- a whole evaluation -------------------------------------------------------- */

lipc_status lipc_cert_summary_init(lipc_cert_summary *s, int n_eps, const double *eps,
                                   double float_slack)
{
    memset(s, 0, sizeof *s);
    s->min_radius_correct = INFINITY;
    if (n_eps < 0 || n_eps > LIPC_CERT_MAX_EPS)
        return LIPC_ERR_INPUT;
    if (!isfinite(float_slack) || float_slack < 0.0)
        return LIPC_ERR_INPUT;
    for (int k = 0; k < n_eps; k++)
        if (!isfinite(eps[k]) || eps[k] < 0.0)
            return LIPC_ERR_INPUT;
    s->n_eps = n_eps;
    for (int k = 0; k < n_eps; k++)
        s->eps[k] = eps[k];
    s->float_slack = float_slack;
    return LIPC_OK;
}

/* The histogram bin of a radius; +inf and everything past the last edge go to
 * the last bin (checked before the int conversion, which would overflow). */
static int radius_bin(double r)
{
    double q = floor(r / LIPC_CERT_BIN_WIDTH);
    if (!(q < LIPC_CERT_N_BINS - 1))
        return LIPC_CERT_N_BINS - 1;
    return (int)q;
}

/* le [n, m]: the logits' error bounds, or NULL. */
static void certify_rows(lipc_cert_summary *s, int n, int m, const double *ld, const float *lf,
                         const double *le, const int32_t *labels, const double *kpair,
                         double *radius)
{
    LIPC_ASSERT(n >= 0 && m >= 1);
    for (int b = 0; b < n; b++) {
        logit_row row = ld ? (logit_row){ld + (size_t)b * m, NULL}
                           : (logit_row){NULL, lf + (size_t)b * m};
        const double *err = le ? le + (size_t)b * m : NULL;
        lipc_cert_point pt = certify_row(m, row, err, kpair, s->float_slack);
        s->n++;
        if (err) {
            s->n_err_bounded++;
            for (int k = 0; k < m; k++)
                if (err[k] > s->max_logit_err) /* NaN never compares greater */
                    s->max_logit_err = err[k];
        }
        s->rounding_accounted = s->n_err_bounded == s->n;
        if (radius)
            radius[b] = pt.radius;
        if (pt.invalid || labels[b] < 0 || labels[b] >= m) {
            s->n_invalid++;
            s->error = true;
            if (radius)
                radius[b] = 0.0;
            continue;
        }
        if (pt.tie) {
            s->n_tie++;
            continue;
        }
        bool correct = pt.pred == labels[b];
        for (int k = 0; k < s->n_eps; k++) {
            if (pt.radius > s->eps[k]) {
                s->n_certified[k]++;
                if (correct)
                    s->n_vra[k]++;
            }
        }
        if (!correct)
            continue;
        s->n_correct++;
        s->hist[radius_bin(pt.radius)]++;
        if (pt.radius < s->min_radius_correct)
            s->min_radius_correct = pt.radius;
        if (isinf(pt.radius))
            s->n_inf_radius++;
        else
            s->sum_radius_correct += pt.radius;
    }
}

void lipc_certify_batch(lipc_cert_summary *s, int n, int m, const double *logits,
                        const int32_t *labels, const double *kpair, double *radius)
{
    certify_rows(s, n, m, logits, NULL, NULL, labels, kpair, radius);
}

void lipc_certify_batch_f32(lipc_cert_summary *s, int n, int m, const float *logits,
                            const int32_t *labels, const double *kpair, double *radius)
{
    certify_rows(s, n, m, NULL, logits, NULL, labels, kpair, radius);
}

bool lipc_cert_undecided(const lipc_cert_summary *s, int m, const double *logits,
                         const double *err, const double *kpair)
{
    lipc_cert_point lo = certify_row(m, (logit_row){logits, NULL}, err, kpair, s->float_slack);
    if (lo.invalid || lo.tie)
        return true;
    int j = lo.pred;
    const double *kj = kpair + (size_t)j * m;
    /* hi >= the radius any bound at least as tight could give: the margin
     * plus the errors, rounded up */
    double hi = INFINITY;
    for (int i = 0; i < m; i++) {
        if (i == j)
            continue;
        double gap = down(logits[j] - logits[i]), e = up(err[j] + err[i]);
        if (!(gap > e))
            return true; /* the exact order of j and i is not known */
        double a = up(up(up(logits[j] - logits[i]) + e) - s->float_slack);
        double ri = kj[i] > 0.0 ? up(a / kj[i]) : INFINITY;
        if (ri < hi)
            hi = ri;
    }
    for (int k = 0; k < s->n_eps; k++)
        if (!(lo.radius > s->eps[k]) && hi > s->eps[k])
            return true;
    return false;
}

void lipc_certify_batch_slack(lipc_cert_summary *s, int n, int m, const double *logits,
                              const double *logit_err, const int32_t *labels,
                              const double *kpair, double *radius)
{
    LIPC_ASSERT(logit_err);
    certify_rows(s, n, m, logits, NULL, logit_err, labels, kpair, radius);
}

double lipc_cert_clean_accuracy(const lipc_cert_summary *s)
{
    return s->n > 0 ? (double)s->n_correct / (double)s->n : 0.0;
}

double lipc_cert_vra(const lipc_cert_summary *s, int k)
{
    LIPC_ASSERT(k >= 0 && k < s->n_eps);
    return s->n > 0 ? (double)s->n_vra[k] / (double)s->n : 0.0;
}

/* ---- JSON ------------------------------------------------------------------------ */

/* The shortest of %.15g / %.17g that reads back as the same double, so 0.141
 * prints as 0.141 and nothing is lost; null for NaN and Inf (not JSON). */
static void put_num(lipc_buf *out, double v)
{
    if (!isfinite(v)) {
        lipc_buf_puts(out, "null");
        return;
    }
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v)
        snprintf(tmp, sizeof tmp, "%.17g", v);
    lipc_buf_puts(out, tmp);
}

static void put_longs(lipc_buf *out, const char *key, const long *v, int k)
{
    lipc_buf_printf(out, ", \"%s\": [", key);
    for (int i = 0; i < k; i++)
        lipc_buf_printf(out, "%s%ld", i ? ", " : "", v[i]);
    lipc_buf_puts(out, "]");
}

void lipc_cert_summary_json(const lipc_cert_summary *s, lipc_buf *out)
{
    lipc_buf_printf(out, "{\"n\": %ld, \"correct\": %ld, \"clean_accuracy\": ", s->n,
                    s->n_correct);
    put_num(out, lipc_cert_clean_accuracy(s));
    lipc_buf_printf(out, ", \"ties\": %ld, \"invalid\": %ld, \"error\": %s, \"float_slack\": ",
                    s->n_tie, s->n_invalid, s->error ? "true" : "false");
    put_num(out, s->float_slack);
    lipc_buf_printf(out, ", \"rounding_accounted\": %s, \"max_logit_err\": ",
                    s->rounding_accounted ? "true" : "false");
    put_num(out, s->max_logit_err);
    lipc_buf_printf(out, ", \"refined\": %ld", s->n_refined);

    lipc_buf_puts(out, ", \"eps\": [");
    for (int k = 0; k < s->n_eps; k++) {
        if (k)
            lipc_buf_puts(out, ", ");
        put_num(out, s->eps[k]);
    }
    lipc_buf_puts(out, "]");
    put_longs(out, "certified", s->n_certified, s->n_eps);
    put_longs(out, "vra_count", s->n_vra, s->n_eps);
    lipc_buf_puts(out, ", \"vra\": [");
    for (int k = 0; k < s->n_eps; k++) {
        if (k)
            lipc_buf_puts(out, ", ");
        put_num(out, lipc_cert_vra(s, k));
    }
    lipc_buf_puts(out, "]");

    lipc_buf_puts(out, ", \"radius_histogram\": {\"bin_width\": ");
    put_num(out, LIPC_CERT_BIN_WIDTH);
    put_longs(out, "counts", s->hist, LIPC_CERT_N_BINS);
    lipc_buf_puts(out, "}, \"min_radius_correct\": ");
    put_num(out, s->min_radius_correct);
    lipc_buf_puts(out, ", \"mean_finite_radius_correct\": ");
    long n_finite = s->n_correct - s->n_inf_radius;
    put_num(out, n_finite > 0 ? s->sum_radius_correct / (double)n_finite : NAN);
    lipc_buf_printf(out, ", \"infinite_radius\": %ld}", s->n_inf_radius);
}

/* kpair[j, i] = k_sub * ||r_j - r_i||_2, the pair bounds of the head. */
void lipc_kpair(int m, int d, const double *r, double k_sub, double *kpair)
{
    for (int j = 0; j < m; j++) {
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int t = 0; t < d; t++) {
                double diff = r[j * d + t] - r[i * d + t];
                s += diff * diff;
            }
            /* exactly symmetric: (a - b)^2 == (b - a)^2 in floating point */
            kpair[j * m + i] = k_sub * sqrt(s);
        }
    }
}

/* kpair[j, i] >= k_sub ||r_j - r_i||_2 for the exact rows r, from the computed
 * rows r~ with ||r~_o - r_o|| <= row_err.
 *
 * The distance. Let S = ||r~_j - r~_i||^2 exactly, s~ its computed value:
 * each difference rounds once, each square once (plus an absolute h <= 2^-1022
 * under underflow), d - 1 additions: s~ >= S (1 - u)^(d+2) - 2 d 2^-1022. With
 * dist~ = fl(sqrt(s~)) >= sqrt(s~)(1 - u):
 *   sqrt(S) <= (dist~ + sqrt(2 d 2^-1022)) (1 - u)^-((d + 4)/2)
 *           <= (dist~ + 2^-480) (1 + 2 (d + 4) u)            (d < 2^59).
 * The rows. ||r_j - r_i|| <= sqrt(S) + 2 row_err (triangle inequality).
 * Every operation of the assembly on these nonnegative numbers is followed by
 * nextafter towards +inf, and 1 + 2 (d + 4) u = 1 + (d + 4) 2^-52 is exact. */
void lipc_kpair_upper(int m, int d, const double *r, double row_err, double k_sub,
                      double *kpair)
{
    LIPC_ASSERT(m >= 1 && d >= 1 && d < (1 << 30));
    double c = 1.0 + ((double)d + 4.0) * 0x1p-52;
    for (int j = 0; j < m; j++) {
        for (int i = 0; i < m; i++) {
            if (i == j) {
                kpair[j * m + i] = 0.0;
                continue;
            }
            double s = 0.0;
            for (int t = 0; t < d; t++) {
                double diff = r[(size_t)j * d + t] - r[(size_t)i * d + t];
                s += diff * diff;
            }
            double dist = up(up(sqrt(s) + 0x1p-480) * c);
            /* symmetric: (a - b)^2 == (b - a)^2, and the rest depends on s only */
            kpair[j * m + i] = up(k_sub * up(dist + up(2.0 * row_err)));
        }
    }
}
