/* backend/head.c: the pairwise-bounded dense head on the host, in double:
 * its effective rows, the loss on the batch's logits, and the gradient
 * through the row normalisation. The float drivers (cpu, cuda) run the rest
 * of a step in their kernels and hand these n x classes and classes x d
 * pieces to the same code. */
#include "backend/backend.h"

#include <string.h>

static size_t head_md(const lipc_node *head, int *m, int *d)
{
    *m = head->shape.d[0];
    *d = head->in[0]->shape.d[0];
    return (size_t)*m * (size_t)*d;
}

void lipc_head_rows(const lipc_node *head, const float *w, double *w64, double *r64)
{
    int m, d;
    size_t md = head_md(head, &m, &d);
    for (size_t i = 0; i < md; i++)
        w64[i] = w[i];
    if (head->a.normalize)
        lipc_rownorm_forward(m, d, w64, r64);
    else
        memcpy(r64, w64, sizeof(double) * md);
}

lipc_status lipc_head_loss(const lipc_node *head, const lipc_hyper *h, int n, const float *logits,
                           const int32_t *y, double k_sub, const double *w64, const double *r64,
                           double *logits64, double *dlogits64, double *dr64, float *dlogits,
                           double *dw, lipc_step_stats *out, double *dl_dk)
{
    int m, d;
    size_t md = head_md(head, &m, &d), nl = (size_t)n * (size_t)m;
    for (size_t i = 0; i < nl; i++)
        logits64[i] = logits[i];
    memset(dr64, 0, sizeof(double) * md);
    lipc_loss_spec spec = {(lipc_loss)h->loss, h->eps, h->trades_lambda};
    lipc_loss_result res;
    lipc_status st = lipc_ref_loss(&spec, n, m, d, logits64, y, k_sub, r64, dlogits64, dr64, &res);
    if (st != LIPC_OK)
        return st;
    *dl_dk = res.dk_sub;
    out->loss = res.loss;
    out->correct = res.n_correct;
    out->certified = res.n_certified;
    for (size_t i = 0; i < nl; i++)
        dlogits[i] = (float)dlogits64[i];
    /* the K_sub path's gradient w.r.t. the head's rows, to the raw weight */
    memset(dw, 0, sizeof(double) * md);
    if (head->a.normalize)
        lipc_rownorm_backward(m, d, w64, dr64, dw);
    else
        memcpy(dw, dr64, sizeof(double) * md);
    return LIPC_OK;
}

void lipc_head_rows_backward(const lipc_node *head, const double *w64, const float *dr,
                             double *dr64, double *dw)
{
    int m, d;
    size_t md = head_md(head, &m, &d);
    for (size_t i = 0; i < md; i++) {
        dr64[i] = dr[i];
        dw[i] = 0.0;
    }
    lipc_rownorm_backward(m, d, w64, dr64, dw);
}
