/* backend/optim.c: gradient clipping and the optimisers, shared by every CPU
 * backend (the reference and the LLVM one): what they do to the parameters
 * is the same function of the gradient, so it is written once. */
#include "backend/backend.h"

#include <math.h>

double lipc_grad_clip(double *g, size_t n, double clip)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += g[i] * g[i];
    double norm = sqrt(s);
    if (clip > 0.0 && norm > clip) {
        double k = clip / norm;
        for (size_t i = 0; i < n; i++)
            g[i] *= k;
    }
    return norm;
}

/* AdamW (decoupled weight decay) or SGD with Nesterov momentum:
 *   AdamW:  m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2,
 *           p <- p - lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p)
 *   SGD:    g <- g + wd p,  m <- mu m + g,  p <- p - lr (g + mu m)
 * t counts steps from 1. Computed in double, stored in float. */
void lipc_optim_step(const lipc_hyper *h, lipc_train_state *st, size_t np, const double *grads)
{
    double t = (double)(st->step + 1);
    if (h->optimizer == LIPC_OPTIM_ADAMW) {
        double c1 = 1.0 - pow(h->beta1, t), c2 = 1.0 - pow(h->beta2, t);
        for (size_t i = 0; i < np; i++) {
            double g = grads[i], p = st->params[i];
            double m = h->beta1 * st->opt_m[i] + (1.0 - h->beta1) * g;
            double v = h->beta2 * st->opt_v[i] + (1.0 - h->beta2) * g * g;
            st->opt_m[i] = (float)m;
            st->opt_v[i] = (float)v;
            double step = (m / c1) / (sqrt(v / c2) + h->adam_eps) + h->weight_decay * p;
            st->params[i] = (float)(p - h->lr * step);
        }
    } else {
        for (size_t i = 0; i < np; i++) {
            double p = st->params[i];
            double g = grads[i] + h->weight_decay * p;
            double m = h->momentum * st->opt_m[i] + g;
            st->opt_m[i] = (float)m;
            st->params[i] = (float)(p - h->lr * (g + h->momentum * m));
        }
    }
    st->step++;
}
