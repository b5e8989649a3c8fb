/* ir/registry.c: the op table and the name tables of lipc's enums.
 *
 * lipc_op_descs[] is generated from ir/ops.def with the X-macro, so an op listed
 * there without a descriptor `lipc_op_desc_<name>` (defined in ir/ops/<name>.c)
 * fails to link, and the table can never fall out of step with the enum. Lookups
 * are linear: there are ten ops and a model names each a handful of times.
 *
 * The helpers at the bottom (declared in ir/ops/internal.h) are shared by the op
 * files: declaring a layer's parameters, rejecting absurd sizes, and the two
 * rounding helpers of the running error analysis (each op's ref_error).
 */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* The running error analysis (ref_error) assumes every double operation rounds
 * once, to double: no excess precision (x87's FLT_EVAL_METHOD 2 would round
 * twice, through long double). SSE2 (x86-64) and AArch64 evaluate in the
 * type, FLT_EVAL_METHOD 0. */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "lipc's rounding-error bounds need FLT_EVAL_METHOD == 0 (SSE2 or AArch64 floating point)"
#endif

#define LIPC_OP(ID, name) extern const lipc_op_desc lipc_op_desc_##name;
#include "ir/ops.def"
#undef LIPC_OP

const lipc_op_desc *const lipc_op_descs[LIPC_OP_COUNT] = {
#define LIPC_OP(ID, name) [LIPC_OP_##ID] = &lipc_op_desc_##name,
#include "ir/ops.def"
#undef LIPC_OP
};

/* ---- name tables: one spelling per enum value, in enum order ---------------- */

const char *const lipc_init_names[] = {
    "default", "kaiming", "xavier", "orthogonal", "zeros", "liresnet", NULL,
};

const char *const lipc_pairing_names[] = {"halves", "adjacent", NULL};

const char *const lipc_lip_kind_names[] = {
    "unset", "none", "one", "const", "opnorm", "loose", "head", NULL,
};

/* ---- lookups ------------------------------------------------------------------ */

lipc_op lipc_op_lookup(const char *name)
{
    for (int op = 0; op < LIPC_OP_COUNT; op++)
        if (strcmp(lipc_op_descs[op]->name, name) == 0)
            return (lipc_op)op;
    return LIPC_OP_COUNT;
}

const char *const *lipc_op_user_names(void)
{
    /* Built from the table (not a second hand-written list); ops.def is fixed at
     * compile time so the array is filled once. Not thread-safe on the very
     * first call, which happens from the single-threaded frontend. */
    static const char *names[LIPC_OP_COUNT + 1];
    static bool filled;
    if (!filled) {
        int k = 0;
        for (int op = 0; op < LIPC_OP_COUNT; op++)
            if (lipc_op_descs[op]->user)
                names[k++] = lipc_op_descs[op]->name;
        names[k] = NULL;
        filled = true;
    }
    return names;
}

const lipc_field *lipc_field_find(const lipc_field *fields, const char *key)
{
    if (!fields)
        return NULL;
    for (const lipc_field *f = fields; f->key; f++)
        if (strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

/* ---- helpers for the op files ------------------------------------------------ */

bool lipc_ops_inputs_known(const lipc_node *n)
{
    for (int i = 0; i < n->n_in; i++)
        if (!n->in[i] || n->in[i]->shape.rank == 0)
            return false;
    return true;
}

bool lipc_ops_require_map(const lipc_node *n, lipc_diags *d, const char *hint)
{
    lipc_shape s = n->in[0]->shape;
    if (s.rank == 3)
        return true;
    char sb[48];
    lipc_diag_msg *m = lipc_diag_error(d, n->loc, "%s expects a feature map (c, h, w), got %s",
                                       lipc_op_info(n->op)->name, lipc_shape_str(s, sb));
    lipc_diag_hint(m, "%s", hint);
    return false;
}

bool lipc_ops_infer_same_shape(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    (void)g;
    (void)d;
    if (!lipc_ops_inputs_known(n))
        return false;
    n->shape = n->in[0]->shape;
    return true;
}

bool lipc_ops_check_dims(const lipc_node *n, lipc_diags *d, const char *what,
                         int rank, const long *dims)
{
    /* Sizes come from user YAML; past these limits the int arithmetic of the
     * kernels (and any sane memory budget) breaks, so refuse them up front. */
    long numel = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] > LIPC_OPS_MAX_DIM) {
            lipc_diag_msg *m = lipc_diag_error(
                d, n->loc, "%s is too large: dimension %d is %ld (at most %ld)",
                what, i, dims[i], (long)LIPC_OPS_MAX_DIM);
            lipc_diag_hint(m, "check the layer sizes and the input shape");
            return false;
        }
        /* numel <= 2^31 before and dims[i] <= 2^20: the product fits in 64 bits */
        numel *= dims[i];
        if (numel > LIPC_OPS_MAX_NUMEL) {
            lipc_diag_msg *m = lipc_diag_error(
                d, n->loc, "%s is too large: more than %ld elements",
                what, (long)LIPC_OPS_MAX_NUMEL);
            lipc_diag_hint(m, "check the layer sizes and the input shape");
            return false;
        }
    }
    return true;
}

bool lipc_ops_declare_weight_bias(lipc_graph *g, lipc_node *n, int rank,
                                  const int *wd, lipc_diags *d)
{
    /* infer may run again on a node that already has its parameters (e.g. after
     * a pass rewrote the graph); declaring them twice would shift every offset. */
    if (n->n_param > 0)
        return true;
    int idx = lipc_graph_add_param(g, n, LIPC_PARAM_WEIGHT, rank, wd,
                                   (lipc_init)n->a.init);
    if (idx < 0)
        goto oom;
    n->param[n->n_param++] = idx;
    if (n->a.bias) {
        /* Declared right after the weight: ref_forward relies on the bias
         * following the weight in the block (ir/ops/README.md). */
        int bd[1] = {wd[0]};
        idx = lipc_graph_add_param(g, n, LIPC_PARAM_BIAS, 1, bd, LIPC_INIT_ZEROS);
        if (idx < 0)
            goto oom;
        n->param[n->n_param++] = idx;
    }
    return true;
oom:
    g->oom = true;
    lipc_diag_error(d, n->loc, "out of memory while declaring the parameters of %s",
                    n->name ? n->name : lipc_op_info(n->op)->name);
    return false;
}

/* ---- running error analysis ------------------------------------------------------
 *
 * The model of floating point (Higham, Accuracy and Stability, section 2.1,
 * with underflow): every operation in round to nearest gives
 *     fl(a op b) = (a op b)(1 + d) + h,   |d| <= u = 2^-53,
 * with |h| <= 2^-1075 under gradual underflow (h = 0 for + and -) and
 * |h| <= 2^-1022 under flush-to-zero; either way |h| <= D = 2^-1022.
 *
 * Lemma. Let q~ be computed in floating point from nonnegative data by + and
 * x, with at most n roundings on any path from a datum to q~, and q the same
 * formula in exact arithmetic. Then q~ >= q (1 - u)^n - A, where A collects
 * the h's, each multiplied by the factors applied after it. (Induction: for
 * nonnegative a~ >= a (1-u)^na - A_a, b~ >= b (1-u)^nb - B,
 * fl(a~ + b~) >= (a~ + b~)(1 - u) - D, and the same for a product, whose
 * absolute term is scaled by the other factor.) In the ops' bounds the
 * factors applied after a sum are lipc_ops_gamma (< 1), 1 + O(u), and a dense
 * head's row scale 1 / ||w|| <= 2^150 (float weights are >= 2^-149 when not
 * zero), so A <= N 2^151 D = N 2^-871 for N operations behind the element.
 *
 * lipc_ops_err_up(raw, n) = fl(fl(raw c) + F),  c = 1 + 4 n u (exact: n 2^-51
 * is a multiple of the ulp of 1),  F = n 2^-800 (a normal number). With
 * raw >= T (1 - u)^n - A,
 *     e >= ((T (1-u)^n - A) c (1 - u) - D + F)(1 - u)
 *       >= T (1 - u)^(n+2) (1 + 4 n u) + (F - D - 2 A)(1 - u) >= T,
 * because (1 - u)^(n+2) (1 + 4 n u) >= (1 - (n+2) u)(1 + 4 n u)
 *  = 1 + (3n - 2) u - 4 n (n + 2) u^2 >= 1 for 1 <= n < 2^32, and
 * F = n 2^-800 >= D + 2 N 2^-871 for N < 2^40 n. The forward's own underflow
 * errors (the h's of computing y~, bounded the same way) are covered by F as
 * well: that is why F is so generous (about 1e-241 per element, invisible next
 * to any logit). An FMA (allowed: compilers may contract a * b + c) rounds once
 * where the analysis counts two, so every bound still holds. */

double lipc_ops_gamma(long k)
{
    LIPC_ASSERT(k >= 1 && k < (1L << 32));
    /* k u and 1 - k u are exact (k < 2^53; 1 - k u lies in [1/2, 1), whose
     * ulp is u); only the division rounds */
    double ku = (double)k * LIPC_OPS_U;
    return ku / (1.0 - ku);
}

double lipc_ops_err_up(double raw, long n)
{
    LIPC_ASSERT(n >= 1 && n < (1L << 32));
    LIPC_ASSERT(!(raw < 0.0)); /* a bound is built from nonnegative data */
    if (!(raw <= DBL_MAX))
        return INFINITY; /* NaN or overflow: no bound */
    double c = 1.0 + 4.0 * (double)n * LIPC_OPS_U;
    double e = raw * c + (double)n * 0x1p-800;
    return e <= DBL_MAX ? e : INFINITY;
}
