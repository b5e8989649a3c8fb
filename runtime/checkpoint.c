/* runtime/checkpoint.c: a training run's state in one safetensors file.
 *
 * Tensors, all float32, by the stable names of the model:
 *   <param name>                      the parameters ("stem.weight", ...)
 *   optimizer.m.<param name>          AdamW first moment / SGD momentum
 *   optimizer.v.<param name>          AdamW second moment
 *   power_iteration.<layer>.v, .u     the warm-started power-iteration vectors
 *   scaled.<param name>.a, .u         a and U of a kernel trained as V = s (a * U)
 *                                     (lipc_scaled), with their moments as above
 * and metadata "format" = "lipc-checkpoint-1", "model", "step" (optimiser
 * steps taken), plus whatever the caller adds. The file is written to a
 * temporary name and renamed (lipc_st_write), so the last good checkpoint
 * survives a crash. Python's safetensors loader reads it as it is.
 */
#include "runtime/runtime.h"
#include "runtime/internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FORMAT "lipc-checkpoint-1"

typedef struct names {
    char **v;
    int n;
} names;

static const char *keep(names *ns, char *s)
{
    if (s)
        ns->v[ns->n++] = s;
    return s;
}

/* The tensors of a run: the model's parameters, then the scaled kernels'
 * a and U (a hand-made description may leave n_state_params 0). */
static int state_params(const lipc_model_desc *m)
{
    return m->n_state_params > m->n_params ? m->n_state_params : m->n_params;
}

static char *joined(const char *a, const char *b, const char *c)
{
    size_t len = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = lipc_malloc(len);
    if (s)
        snprintf(s, len, "%s%s%s", a, b, c);
    return s;
}

lipc_status lipc_checkpoint_save(const char *path, const lipc_model_desc *m,
                                 const lipc_train_state *st, const lipc_st_meta *extra,
                                 int n_extra, lipc_diags *d)
{
    int n_vec = 0;
    for (int f = 0; f < m->n_factors; f++)
        n_vec += m->factors[f].v_len > 0 ? 2 : 0;
    int n_state = state_params(m);
    int max_t = 3 * n_state + n_vec;
    lipc_st_tensor *t = lipc_calloc((size_t)max_t + 1, sizeof *t);
    names ns = {lipc_calloc((size_t)max_t + 1, sizeof(char *)), 0};
    lipc_st_meta *meta = lipc_calloc((size_t)n_extra + 3, sizeof *meta);
    lipc_status status = LIPC_OK;
    if (!t || !ns.v || !meta) {
        status = LIPC_ERR_NOMEM;
        goto done;
    }
    int n = 0;
    for (int i = 0; i < n_state; i++) {
        const lipc_param_desc *p = &m->params[i];
        const float *src[3] = {st->params, st->opt_m, st->opt_v};
        const char *prefix[3] = {"", "optimizer.m.", "optimizer.v."};
        for (int k = 0; k < 3; k++) {
            if (!src[k])
                continue;
            const char *name = k ? keep(&ns, joined(prefix[k], p->name, "")) : p->name;
            if (!name) {
                status = LIPC_ERR_NOMEM;
                goto done;
            }
            lipc_st_tensor *x = &t[n++];
            x->name = name;
            x->dtype = LIPC_ST_F32;
            x->rank = p->rank;
            for (int r = 0; r < p->rank; r++)
                x->dims[r] = p->d[r];
            x->data = src[k] + p->offset;
            x->nbytes = p->numel * sizeof(float);
        }
    }
    for (int f = 0; f < m->n_factors && st->vec; f++) {
        const lipc_factor_desc *fd = &m->factors[f];
        if (fd->v_len == 0)
            continue;
        for (int k = 0; k < 2; k++) {
            const char *name = keep(&ns, joined("power_iteration.", fd->name, k ? ".u" : ".v"));
            if (!name) {
                status = LIPC_ERR_NOMEM;
                goto done;
            }
            lipc_st_tensor *x = &t[n++];
            x->name = name;
            x->dtype = LIPC_ST_F32;
            x->rank = 1;
            x->dims[0] = (int64_t)(k ? fd->u_len : fd->v_len);
            x->data = st->vec + (k ? fd->u_offset : fd->v_offset);
            x->nbytes = (size_t)x->dims[0] * sizeof(float);
        }
    }
    char step[32];
    snprintf(step, sizeof step, "%ld", st->step);
    int n_meta = 0;
    meta[n_meta++] = (lipc_st_meta){"format", FORMAT};
    meta[n_meta++] = (lipc_st_meta){"model", m->name ? m->name : ""};
    meta[n_meta++] = (lipc_st_meta){"step", step};
    for (int i = 0; i < n_extra; i++)
        meta[n_meta++] = extra[i];
    status = lipc_st_write(path, t, n, meta, n_meta, d);
done:
    for (int i = 0; i < ns.n; i++)
        lipc_free(ns.v[i]);
    lipc_free(ns.v);
    lipc_free(t);
    lipc_free(meta);
    return status;
}

/* Copies one tensor by name; missing is an error only when required. */
static lipc_status load_one(const lipc_st_file *f, const char *name, int rank, const int *dims,
                            float *dst, bool required, bool *found, lipc_diags *d)
{
    *found = lipc_st_find(f, name) != NULL;
    if (!*found) {
        if (!required)
            return LIPC_OK;
        /* lipc_rt_loc: a stable copy of the name. f->path is freed with f at
         * the end of lipc_checkpoint_load, before the caller prints the
         * diagnostics (a use-after-free that ASan reported). */
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, f->path),
                                           "the checkpoint has no tensor '%s'", name);
        lipc_diag_hint(m, "is it a checkpoint of this model (and these --set values)?");
        return LIPC_ERR_INPUT;
    }
    int64_t d64[8];
    for (int i = 0; i < rank; i++)
        d64[i] = dims[i];
    return lipc_st_copy(f, name, LIPC_ST_F32, rank, d64, dst, d);
}

lipc_status lipc_checkpoint_load(const char *path, const lipc_model_desc *m,
                                 lipc_train_state *st, bool train_state, lipc_diags *d)
{
    lipc_st_file f;
    lipc_status status = lipc_st_read(path, &f, d);
    if (status != LIPC_OK)
        return status;
    const char *format = lipc_st_meta_get(&f, "format");
    if (format && strcmp(format, FORMAT) != 0)
        lipc_diag_warning(d, lipc_rt_loc(d, path),
                          "checkpoint format '%s', expected '%s'; reading it anyway", format,
                          FORMAT);
    int errors = d->n_errors;
    bool found, all_opt = true, all_vec = true, all_scaled = true;
    /* the scaled kernels' a and U only for training, and optional */
    int n_state = train_state ? state_params(m) : m->n_params;
    for (int i = 0; i < n_state && status == LIPC_OK; i++) {
        const lipc_param_desc *p = &m->params[i];
        bool model = i < m->n_params;
        status = load_one(&f, p->name, p->rank, p->d, st->params + p->offset, model, &found, d);
        if (status == LIPC_ERR_INPUT && d->n_errors - errors < 10)
            status = LIPC_OK; /* report every missing tensor, up to 10 */
        all_scaled &= model || found;
        if (!train_state || status != LIPC_OK)
            continue;
        for (int k = 0; k < 2 && status == LIPC_OK; k++) {
            char *name = joined(k ? "optimizer.v." : "optimizer.m.", p->name, "");
            if (!name) {
                status = LIPC_ERR_NOMEM;
                break;
            }
            float *dst = (k ? st->opt_v : st->opt_m) + p->offset;
            status = load_one(&f, name, p->rank, p->d, dst, false, &found, d);
            if (!found) {
                memset(dst, 0, p->numel * sizeof(float));
                all_opt = false;
            }
            lipc_free(name);
        }
    }
    for (int fi = 0; fi < m->n_factors && status == LIPC_OK && st->vec; fi++) {
        const lipc_factor_desc *fd = &m->factors[fi];
        if (fd->v_len == 0)
            continue;
        for (int k = 0; k < 2 && status == LIPC_OK; k++) {
            char *name = joined("power_iteration.", fd->name, k ? ".u" : ".v");
            if (!name) {
                status = LIPC_ERR_NOMEM;
                break;
            }
            int len = (int)(k ? fd->u_len : fd->v_len);
            float *dst = st->vec + (k ? fd->u_offset : fd->v_offset);
            status = load_one(&f, name, 1, &len, dst, false, &found, d);
            if (!found) {
                memset(dst, 0, (size_t)len * sizeof(float));
                all_vec = false;
            }
            lipc_free(name);
        }
    }
    if (status == LIPC_OK && d->n_errors > errors)
        status = LIPC_ERR_INPUT;
    if (status == LIPC_OK) {
        const char *step = lipc_st_meta_get(&f, "step");
        st->step = step ? strtol(step, NULL, 10) : 0;
        const char *epochs = lipc_st_meta_get(&f, "epochs"), *batch = lipc_st_meta_get(&f, "batch");
        st->planned_epochs = epochs ? (int)strtol(epochs, NULL, 10) : 0;
        st->planned_batch = batch ? (int)strtol(batch, NULL, 10) : 0;
        if (train_state && (!all_opt || !all_vec))
            lipc_diag_warning(d, lipc_rt_loc(d, path),
                              "the checkpoint has no %s; they start from zero",
                              !all_opt ? "optimizer state" : "power-iteration vectors");
        if (train_state && !all_scaled) {
            /* a run without scaled_residuals, continued with it */
            lipc_scaled_from_params(m, st->params);
            lipc_diag_warning(d, lipc_rt_loc(d, path),
                              "the checkpoint has no a and U of the scaled kernels; they "
                              "start from its weights (a = 1, U = V / s)");
        }
    }
    lipc_st_free(&f);
    return status;
}
