/* ir/ops/internal.h: helpers shared by the op files of ir/ops/ (defined in
 * ir/registry.c). Private to ir/: never include it from another folder. */
#ifndef LIPC_IR_OPS_INTERNAL_H
#define LIPC_IR_OPS_INTERNAL_H

#include "ir/ir.h"

/* Largest dimension and element count a layer may ask for. */
#define LIPC_OPS_MAX_DIM (1L << 20)
#define LIPC_OPS_MAX_NUMEL ((1L << 31) - 1)  /* fits an int */

/* False when some input has no shape yet: an earlier node failed and already
 * reported why, so infer returns false without a second, confusing error. */
bool lipc_ops_inputs_known(const lipc_node *n);

/* True when input 0 is a feature map (c, h, w); else reports "<op> expects a
 * feature map (c, h, w), got <shape>" at n->loc with the hint, and is false. */
bool lipc_ops_require_map(const lipc_node *n, lipc_diags *d, const char *hint);

/* The shape rule of elementwise ops (shift, relu): the output has the input's
 * shape. */
bool lipc_ops_infer_same_shape(lipc_graph *g, lipc_node *n, lipc_diags *d);

/* Reports an error at n->loc and returns false when any of dims[0..rank) is
 * above LIPC_OPS_MAX_DIM or their product above LIPC_OPS_MAX_NUMEL. `what`
 * names the tensor in the message ("the conv2d weight", "the output"). */
bool lipc_ops_check_dims(const lipc_node *n, lipc_diags *d, const char *what,
                         int rank, const long *dims);

/* Declares n's weight (shape wd[0..rank), init n->a.init) and, when n->a.bias,
 * its bias [wd[0]] (zeros) right after it, appending both to n->param. Does
 * nothing when n already has parameters. False (with an error) when out of
 * memory. */
bool lipc_ops_declare_weight_bias(lipc_graph *g, lipc_node *n, int rank,
                                  const int *wd, lipc_diags *d);

/* ---- running error analysis (each op's ref_error; ir/registry.c proves it) ----
 *
 * u = 2^-53, the unit roundoff of double (round to nearest); gamma(k) =
 * k u / (1 - k u) bounds the relative error of a sum of k rounded terms
 * (Higham, Accuracy and Stability, Lemma 3.1). */
#define LIPC_OPS_U 0x1p-53

/* gamma(k), rounded to nearest: the result is >= gamma(k) (1 - u), one
 * rounding that the caller counts. 1 <= k < 2^32. */
double lipc_ops_gamma(long k);

/* Turns raw, a bound computed in round to nearest, into a rigorous one: for
 * the real number T that raw approximates,
 *     lipc_ops_err_up(raw, n) >= T        (also under underflow, also FTZ)
 * provided raw >= T (1 - u)^n - A with A the underflow term of the Lemma in
 * ir/registry.c. The Lemma gives exactly that when raw evaluates T's formula
 * on nonnegative data by + and x (and lipc_ops_gamma) with at most n roundings
 * on any path from a datum to raw, fewer than 2^40 n operations in all. The
 * result is raw (1 + 4 n u) + n 2^-800 (rounded). NaN or overflow give +inf:
 * no bound, so nothing downstream is certified. 1 <= n < 2^32. */
double lipc_ops_err_up(double raw, long n);

#endif
