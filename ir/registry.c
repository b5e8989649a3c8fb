/* ir/registry.c: the op table and the name tables of lipc's enums.
 *
 * lipc_op_descs[] is generated from ir/ops.def with the X-macro, so an op listed
 * there without a descriptor `lipc_op_desc_<name>` (defined in ir/ops/<name>.c)
 * fails to link, and the table can never fall out of step with the enum. Lookups
 * are linear: there are ten ops and a model names each a handful of times.
 *
 * The helpers at the bottom (declared in ir/ops/internal.h) are shared by the op
 * files: declaring a layer's parameters and rejecting absurd sizes.
 */
#include "ir/ir.h"
#include "ir/ops/internal.h"

#include <string.h>

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
