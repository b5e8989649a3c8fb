/* support/linalg.c: the row normalisation of the GloRo head, and the choice
 * of a conv's bound with the size rule of its Gram band (at the end).
 *
 * "Last-layer normalisation" scales each row of the head to unit l2 norm at
 * use: r = w / ||w||. The op (ir/ops/dense.c), the losses and the certifier
 * all need it, so it lives here, below all of them.
 *
 * Gradient: with r = w / ||w||, dr/dw = (I - r r^T) / ||w||, so
 *   dw = (dr - r (r . dr)) / ||w||.
 * A zero row has no derivative (w / ||w|| jumps there; the forward uses r = 0).
 * Its gradient is passed through as if ||w|| = 1 and r = 0: dw = dr. That is
 * finite, and a step along -dr takes the row out of zero in the steepest
 * direction, so a head initialised to zeros still trains.
 */
#include "support/support.h"

#include <math.h>

/* 1 / ||row||, or `zero` when the row is exactly zero (forward: 0, the row's
 * output stays 0; backward: 1, the pass-through rule below). */
double lipc_row_inv_norm(const double *row, int cols, double zero)
{
    double ss = 0.0;
    for (int i = 0; i < cols; i++)
        ss += row[i] * row[i];
    return ss > 0.0 ? 1.0 / sqrt(ss) : zero;
}

/* w, r [rows, cols]: r_o = w_o / ||w_o||, a zero row stays zero. */
void lipc_rownorm_forward(int rows, int cols, const double *w, double *r)
{
    for (int o = 0; o < rows; o++) {
        const double *wo = w + (size_t)o * cols;
        double s = lipc_row_inv_norm(wo, cols, 0.0);
        for (int i = 0; i < cols; i++)
            r[(size_t)o * cols + i] = s * wo[i];
    }
}

/* w, d_eff, dw [rows, cols]: ADDS the gradient w.r.t. w given d_eff, the
 * gradient w.r.t. r = rownorm(w):
 *   dw_o += (d_o - r_o (r_o . d_o)) / ||w_o||      (dw_o += d_o for a zero row) */
void lipc_rownorm_backward(int rows, int cols, const double *w, const double *d_eff,
                           double *dw)
{
    for (int o = 0; o < rows; o++) {
        const double *wo = w + (size_t)o * cols, *d = d_eff + (size_t)o * cols;
        double s = lipc_row_inv_norm(wo, cols, 1.0);
        double rd = 0.0; /* r_o . d_o, with r_o = s w_o (the zero row: 0) */
        for (int i = 0; i < cols; i++)
            rd += s * wo[i] * d[i];
        for (int i = 0; i < cols; i++)
            dw[(size_t)o * cols + i] += s * (d[i] - s * wo[i] * rd);
    }
}

/* The Gram matrix couples two input pixels when one output pixel's window
 * reads both: at most kh - 1 rows and kw - 1 columns apart, so, pixels in
 * row-major order with c channels innermost, at most ((kh-1) w + kw-1) c +
 * c-1 positions apart. */
int lipc_conv_band_kd(int c_in, int w, int kh, int kw)
{
    return ((kh - 1) * w + kw - 1) * c_in + c_in - 1;
}

bool lipc_conv_band_fits(int c_in, int h, int w, int kh, int kw, double budget)
{
    double n = (double)c_in * h * w, kd1 = (double)lipc_conv_band_kd(c_in, w, kh, kw) + 1.0;
    return n * kd1 * kd1 <= budget && 2.0 * 8.0 * n * kd1 <= 1.5 * 0x1p30;
}

lipc_conv_method lipc_conv_method_for(int c_in, int h, int w, int kh, int kw, int sh, int sw,
                                      const int pad[4], double budget)
{
    bool padded = pad[0] || pad[1] || pad[2] || pad[3];
    if (!padded && kh <= sh && kw <= sw)
        return LIPC_CONV_RESHAPED;
    if (lipc_conv_band_fits(c_in, h, w, kh, kw, budget))
        return LIPC_CONV_GRAM_BAND;
    return sh > 1 || sw > 1 ? LIPC_CONV_POLYPHASE : LIPC_CONV_FFT;
}
