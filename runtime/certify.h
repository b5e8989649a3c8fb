/* runtime/certify.h: deterministic l2 certification from logits and the head's
 * pair bounds (METHOD.md section 1), in double.
 *
 * PRIVATE FOR NOW: the runtime's one public header is runtime/runtime.h; the
 * lead merges these declarations into it, and this file then goes away. Until
 * then include it only from runtime/ and tests/.
 *
 * Depends on support/ only (runtime must not depend on ir/ or backend/). The
 * caller supplies the pair-bound matrix
 *
 *   kpair [m, m],  kpair[j * m + i] = K_sub * ||w_j - w_i||_2
 *
 * built from a SOUND upper bound K_sub (backend/ref's lipc_ref_kpair computes
 * it from the head rows). A point with logits f is certified at radius eps iff
 * its top logit f_j is unique and
 *
 *   f_j - f_i > eps * kpair[j, i] + float_slack     for every i != j  (strict)
 *
 * evaluated through the certified radius
 *
 *   r = min_{i != j} (f_j - f_i - float_slack) / kpair[j, i]
 *
 * (a pair with kpair == 0 contributes +inf when its slackened margin is > 0,
 * and 0 otherwise; r is clamped at 0), and "certified at eps" is DEFINED as
 * r > eps. So r > eps <=> certified holds exactly, also at equality.
 * The division cannot loosen the test: rounding to nearest is monotone, so for
 * a double eps, fl(a / K) > eps implies a / K > eps, hence a > eps K exactly.
 * The subtraction f_j - f_i is exact for float logits (two floats whose
 * exponents differ by up to 29 have an exact double difference); the rest of
 * the rounding (f_j - f_i - float_slack) is far below any useful slack.
 *
 * float_slack is the allowance for the floating-point error of the logits
 * themselves (float forward passes): 0 means "trust the logits as exact". The
 * sound-bounds work fills it in; it must be >= 0.
 */
#ifndef LIPC_RUNTIME_CERTIFY_H
#define LIPC_RUNTIME_CERTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "support/support.h"

/* ---- one point ---------------------------------------------------------------- */

typedef struct lipc_cert_point {
    int pred;       /* the unique argmax; -1 for a tie at the top or invalid input */
    double radius;  /* certified radius >= 0 (+inf possible); 0 when pred == -1 */
    bool tie;       /* two or more classes share the top logit */
    bool invalid;   /* NaN/Inf in the logits, or a NaN/Inf/negative entry in
                     * the prediction's row of kpair */
} lipc_cert_point;

/* Certifies one point.
 *   f      [m]     logits
 *   kpair  [m, m]  pair bounds (row pred is read; pass the full matrix) */
lipc_cert_point lipc_certify_point(int m, const double *f, const double *kpair,
                                   double float_slack);
/* The same for float logits (the fast backends' output); each logit is
 * widened to double exactly. */
lipc_cert_point lipc_certify_point_f32(int m, const float *f, const double *kpair,
                                       double float_slack);

/* ---- a whole evaluation -------------------------------------------------------- */

#define LIPC_CERT_MAX_EPS 16
/* Histogram of the certified radii of correctly predicted points: bin b holds
 * radii in [b * LIPC_CERT_BIN_WIDTH, (b + 1) * LIPC_CERT_BIN_WIDTH), the last
 * bin everything from (LIPC_CERT_N_BINS - 1) * LIPC_CERT_BIN_WIDTH up,
 * including +inf. 40 bins of 0.05 cover the radii of METHOD.md (up to 1.58). */
#define LIPC_CERT_N_BINS 41
#define LIPC_CERT_BIN_WIDTH 0.05

/* Counts accumulated over batches; every field is plain data, ready to write
 * as JSON (lipc_cert_summary_json). */
typedef struct lipc_cert_summary {
    int n_eps;
    double eps[LIPC_CERT_MAX_EPS];          /* the radii evaluated, >= 0 */
    double float_slack;                      /* as passed to init */
    long n;                                  /* points seen */
    long n_correct;                          /* unique argmax == label */
    long n_tie;                              /* top logit shared: not correct, not certified */
    long n_invalid;                          /* NaN/Inf input or a label out of range */
    long n_certified[LIPC_CERT_MAX_EPS];     /* certified at eps[k], right or wrong */
    long n_vra[LIPC_CERT_MAX_EPS];           /* correct AND certified at eps[k] */
    long hist[LIPC_CERT_N_BINS];             /* radii of correct points */
    double min_radius_correct;               /* +inf until a correct point is seen */
    double sum_radius_correct;               /* finite radii only (for the mean) */
    long n_inf_radius;                       /* correct points with radius +inf */
    bool error;                              /* n_invalid > 0: the caller must fail loudly */
} lipc_cert_summary;

/* Starts an empty summary. LIPC_ERR_INPUT when n_eps is outside
 * [0, LIPC_CERT_MAX_EPS], an eps is negative or not finite, or float_slack is
 * negative or not finite (the caller reports which; nothing is recorded). */
lipc_status lipc_cert_summary_init(lipc_cert_summary *s, int n_eps, const double *eps,
                                   double float_slack);

/* Certifies a batch and adds it to s.
 *   logits  [n, m]
 *   labels  [n]      a label outside [0, m) makes the point invalid
 *   kpair   [m, m]
 *   radius  [n]      written with each point's radius (0 when invalid or
 *                    tied), or NULL */
void lipc_certify_batch(lipc_cert_summary *s, int n, int m, const double *logits,
                        const int32_t *labels, const double *kpair, double *radius);
void lipc_certify_batch_f32(lipc_cert_summary *s, int n, int m, const float *logits,
                            const int32_t *labels, const double *kpair, double *radius);

/* Fractions over the points seen (0 when none). */
double lipc_cert_clean_accuracy(const lipc_cert_summary *s);
double lipc_cert_vra(const lipc_cert_summary *s, int k);

/* Appends s as one JSON object:
 *   {"n": .., "correct": .., "clean_accuracy": .., "ties": .., "invalid": ..,
 *    "error": .., "float_slack": .., "eps": [..], "certified": [..], "vra_count": [..],
 *    "vra": [..], "radius_histogram": {"bin_width": .., "counts": [..]},
 *    "min_radius_correct": .., "mean_finite_radius_correct": .., "infinite_radius": ..}
 * Non-finite numbers (an infinite minimum radius) are written as null. */
void lipc_cert_summary_json(const lipc_cert_summary *s, lipc_buf *out);

#endif
