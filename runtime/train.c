/* runtime/train.c: the training loop and dataset-level certification.
 *
 * The loop owns the schedules; the backend's train_step owns the math. Per
 * step t of T = epochs * steps_per_epoch (METHOD.md section 6):
 *
 *   lr(t)  = lr * (t + 1) / W                        during W warm-up steps,
 *            lr * (1 + cos(pi (t - W) / (T - W))) / 2 after (cosine to 0)
 *   eps(t) = eps * (s + (e - s) * min(t / (ramp T), 1))
 *            (s = eps_start, e = eps_end; the paper's 0.1 -> 1.5 over half)
 *
 * Everything depends on the global step only: the batcher's shuffle and
 * augmentation are seeded by (seed, epoch, position), so a run resumed from a
 * checkpoint continues exactly where it stopped.
 */
#include "runtime/runtime.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- schedules ---------------------------------------------------------- */

double lipc_schedule_lr(const lipc_train_options *o, long t, long total, long per_epoch)
{
    double warm = o->warmup_epochs * (double)per_epoch;
    if (warm >= 1.0 && (double)t < warm)
        return o->hyper.lr * (double)(t + 1) / warm;
    double span = (double)total - (warm >= 1.0 ? warm : 0.0);
    double pos = (double)t - (warm >= 1.0 ? warm : 0.0);
    if (span <= 0.0)
        return o->hyper.lr;
    return o->hyper.lr * 0.5 * (1.0 + cos(3.14159265358979323846 * pos / span));
}

double lipc_schedule_eps(const lipc_train_options *o, long t, long total)
{
    double ramp = o->eps_ramp * (double)total;
    double frac = ramp > 0.0 ? (double)t / ramp : 1.0;
    if (frac > 1.0)
        frac = 1.0;
    return o->hyper.eps * (o->eps_start + (o->eps_end - o->eps_start) * frac);
}

/* ---- certification of a dataset ------------------------------------------- */

lipc_status lipc_head_kpair(const lipc_model_desc *m, const float *params, double k_sub,
                            double *kpair)
{
    size_t len = (size_t)m->classes * (size_t)m->head_in;
    double *w = lipc_malloc(sizeof(double) * len), *r = lipc_malloc(sizeof(double) * len);
    if (!w || !r) {
        lipc_free(w);
        lipc_free(r);
        return LIPC_ERR_NOMEM;
    }
    for (size_t i = 0; i < len; i++)
        w[i] = params[m->head_offset + i];
    /* Rounded up for the exact rows. Normalised rows r~ = fl(s~ w) with
     * s~ = s (1 + t), |t| <= (d + 4) u (ir/ops/dense.c derives it), so
     * |r~ - r| <= ((d + 4) u + u + (d + 4) u^2) |r| <= (d + 6) u |r| elementwise
     * (no underflow: |w| >= 2^-149 and s~ >= 2^-129 / sqrt(d) for float
     * weights), hence ||r~ - r|| <= (d + 6) u ||r|| = (d + 6) u; we pass twice
     * that. Raw float weights widened to double are exact: 0. */
    double row_err = 0.0;
    if (m->head_normalize) {
        lipc_rownorm_forward(m->classes, m->head_in, w, r);
        row_err = ((double)m->head_in + 6.0) * 0x1p-52;
    } else {
        memcpy(r, w, sizeof(double) * len);
    }
    lipc_kpair_upper(m->classes, m->head_in, r, row_err, k_sub, kpair);
    lipc_free(w);
    lipc_free(r);
    return LIPC_OK;
}

/* The rows of logits and err that predict_l2 left undecided, run again
 * through predict_bounded and written over (xr, lr, er: scratch for n). */
static lipc_status refine(const lipc_model_desc *m, const lipc_model_ops *ops,
                          const float *params, lipc_cert_summary *s, int n, const float *x,
                          double *logits, double *err, const double *kpair, float *xr,
                          double *lr, double *er, int *idx)
{
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w;
    int mc = m->classes, k = 0;
    for (int i = 0; i < n; i++)
        if (lipc_cert_undecided(s, mc, logits + (size_t)i * mc, err + (size_t)i * mc, kpair)) {
            memcpy(xr + (size_t)k * in, x + (size_t)i * in, sizeof(float) * in);
            idx[k++] = i;
        }
    if (k == 0)
        return LIPC_OK;
    lipc_status st = ops->predict_bounded(ops->ctx, params, k, xr, lr, er);
    for (int q = 0; st == LIPC_OK && q < k; q++) {
        memcpy(logits + (size_t)idx[q] * mc, lr + (size_t)q * mc, sizeof(double) * mc);
        memcpy(err + (size_t)idx[q] * mc, er + (size_t)q * mc, sizeof(double) * mc);
    }
    s->n_refined += k;
    return st;
}

lipc_status lipc_certify_dataset(const lipc_model_desc *m, const lipc_model_ops *ops,
                                 const float *params, double k_sub, const double *sigma,
                                 const lipc_dataset *ds, int batch, lipc_cert_summary *s,
                                 double *radius)
{
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w;
    int mc = m->classes;
    if (ops->max_batch > 0 && batch > ops->max_batch)
        batch = ops->max_batch;
    /* With predict_bounded the logits come with rounding error bounds and the
     * certificate holds for the exact network; without, they are trusted
     * (s->rounding_accounted says which). */
    bool bounded = ops->predict_bounded != NULL;
    bool fast = bounded && ops->predict_l2 && sigma;
    size_t nl = (size_t)batch * (size_t)mc;
    double *kpair = lipc_malloc(sizeof(double) * (size_t)mc * (size_t)mc);
    double *logits = lipc_malloc(sizeof(double) * nl);
    double *err = bounded ? lipc_malloc(sizeof(double) * nl) : NULL;
    int32_t *labels = lipc_malloc(sizeof(int32_t) * (size_t)batch);
    /* refinement scratch */
    float *xr = fast ? lipc_malloc(sizeof(float) * (size_t)batch * in) : NULL;
    double *lr = fast ? lipc_malloc(sizeof(double) * nl) : NULL;
    double *er = fast ? lipc_malloc(sizeof(double) * nl) : NULL;
    int *idx = fast ? lipc_malloc(sizeof(int) * (size_t)batch) : NULL;
    lipc_status st = kpair && logits && labels && (err || !bounded) &&
                             (!fast || (xr && lr && er && idx))
                         ? lipc_head_kpair(m, params, k_sub, kpair)
                         : LIPC_ERR_NOMEM;
    for (int start = 0; st == LIPC_OK && start < ds->n; start += batch) {
        int n = ds->n - start < batch ? ds->n - start : batch;
        const float *x = ds->x + (size_t)start * in;
        if (fast) {
            st = ops->predict_l2(ops->ctx, params, sigma, n, x, logits, err);
            if (st == LIPC_OK)
                st = refine(m, ops, params, s, n, x, logits, err, kpair, xr, lr, er, idx);
            else if (st == LIPC_ERR_UNSUPPORTED) /* no rule for this graph */
                fast = false;
        }
        if (!fast)
            st = bounded ? ops->predict_bounded(ops->ctx, params, n, x, logits, err)
                         : ops->predict(ops->ctx, params, n, x, logits);
        for (int i = 0; i < n; i++)
            labels[i] = ds->y[start + i];
        double *rad = radius ? radius + start : NULL;
        if (st == LIPC_OK && bounded)
            lipc_certify_batch_slack(s, n, mc, logits, err, labels, kpair, rad);
        else if (st == LIPC_OK)
            lipc_certify_batch(s, n, mc, logits, labels, kpair, rad);
    }
    lipc_free(kpair);
    lipc_free(logits);
    lipc_free(err);
    lipc_free(labels);
    lipc_free(xr);
    lipc_free(lr);
    lipc_free(er);
    lipc_free(idx);
    return st;
}

/* ---- training ---------------------------------------------------------------- */

lipc_status lipc_train_state_alloc(const lipc_model_desc *m, lipc_train_state *st)
{
    memset(st, 0, sizeof *st);
    size_t np = (m->n_train_elems > m->n_param_elems ? m->n_train_elems : m->n_param_elems) + 1;
    st->params = lipc_calloc(np, sizeof(float));
    st->opt_m = lipc_calloc(np, sizeof(float));
    st->opt_v = lipc_calloc(np, sizeof(float));
    st->vec = lipc_calloc(m->n_vec_elems + 1, sizeof(float));
    if (!st->params || !st->opt_m || !st->opt_v || !st->vec) {
        lipc_train_state_free(st);
        return LIPC_ERR_NOMEM;
    }
    st->n_train = np - 1;
    st->n_scaled = m->n_scaled;
    st->scaled = m->scaled;
    return LIPC_OK;
}

size_t lipc_train_len(const lipc_train_state *st, size_t n_param_elems)
{
    return st->n_train > n_param_elems ? st->n_train : n_param_elems;
}

void lipc_train_state_free(lipc_train_state *st)
{
    lipc_free(st->params);
    lipc_free(st->opt_m);
    lipc_free(st->opt_v);
    lipc_free(st->vec);
    memset(st, 0, sizeof *st);
}

bool lipc_dataset_fits(const lipc_model_desc *m, const lipc_dataset *ds, lipc_diags *d)
{
    if (ds->c == m->in_c && ds->h == m->in_h && ds->w == m->in_w && ds->classes <= m->classes)
        return true;
    lipc_diag_msg *msg = lipc_diag_error(
        d, LIPC_NO_LOC, "the dataset '%s' has %dx%dx%d images in %d classes, but the model "
                        "'%s' takes %dx%dx%d inputs and has %d classes",
        ds->name ? ds->name : "?", ds->c, ds->h, ds->w, ds->classes, m->name, m->in_c, m->in_h,
        m->in_w, m->classes);
    lipc_diag_hint(msg, "pick the model written for this dataset, or change its `input:`");
    return false;
}

/* K_sub by power iteration from (a copy of) the training vectors, and each
 * factor's estimate in sigma [n_factors]. */
static lipc_status estimate_k(const lipc_model_desc *m, const lipc_model_ops *ops,
                              const lipc_train_state *st, int iters, double *k, double *sigma)
{
    float *vec = lipc_malloc(sizeof(float) * (m->n_vec_elems + 1));
    lipc_bound_report *rep = lipc_calloc((size_t)m->n_factors + 1, sizeof *rep);
    lipc_status s = vec && rep ? LIPC_OK : LIPC_ERR_NOMEM;
    if (s == LIPC_OK) {
        memcpy(vec, st->vec, sizeof(float) * m->n_vec_elems);
        s = ops->lipschitz(ops->ctx, st->params, vec, iters, 1e-6, rep);
        *k = rep[m->n_factors].value;
        for (int f = 0; f < m->n_factors; f++)
            sigma[f] = rep[f].value;
    }
    lipc_free(vec);
    lipc_free(rep);
    return s;
}

static lipc_status validate(const lipc_model_desc *m, const lipc_model_ops *ops,
                            const lipc_train_state *st, const lipc_train_options *o,
                            lipc_train_result *res)
{
    /* validation certifies with the estimated K_sub, and bounds the rounding
     * through the estimated factors: both are estimates, not certificates */
    double k;
    double *sigma = lipc_malloc(sizeof(double) * ((size_t)m->n_factors + 1));
    if (!sigma)
        return LIPC_ERR_NOMEM;
    lipc_status s = estimate_k(m, ops, st, 1000, &k, sigma);
    lipc_cert_summary cs;
    if (s == LIPC_OK)
        s = lipc_cert_summary_init(&cs, 1, &o->hyper.eps, 0.0);
    if (s == LIPC_OK)
        s = lipc_certify_dataset(m, ops, st->params, k, sigma, o->val, o->batch, &cs, NULL);
    lipc_free(sigma);
    if (s == LIPC_OK) {
        res->val_acc = lipc_cert_clean_accuracy(&cs);
        res->val_vra = lipc_cert_vra(&cs, 0);
        res->val_k_sub = k;
    }
    return s;
}

static lipc_status save(const char *path, const lipc_model_desc *m, const lipc_train_state *st,
                        const lipc_train_options *o, int epoch, lipc_diags *d)
{
    char seed[32], ep[32], eps[32], epochs[32], batch[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    snprintf(ep, sizeof ep, "%d", epoch);
    snprintf(eps, sizeof eps, "%.17g", o->hyper.eps);
    snprintf(epochs, sizeof epochs, "%d", o->epochs);
    snprintf(batch, sizeof batch, "%d", o->batch);
    /* epochs and batch fix the schedules: a resumed run checks them */
    lipc_st_meta meta[] = {{"seed", seed}, {"epoch", ep},       {"eps", eps},
                           {"epochs", epochs}, {"batch", batch}};
    return lipc_checkpoint_save(path, m, st, meta, 5, d);
}

/* A resumed run must keep the epochs and batch its schedules were planned
 * for, or it is not the run one uninterrupted call would have made. */
bool lipc_resume_check(const lipc_train_state *st, const lipc_train_options *o, lipc_diags *d)
{
    int batch = o->batch;
    if (st->step > 0 && ((st->planned_epochs && st->planned_epochs != o->epochs) ||
                         (st->planned_batch && st->planned_batch != batch))) {
        lipc_diag_msg *msg = lipc_diag_warning(
            d, LIPC_NO_LOC, "resuming a run planned for %d epochs of batch %d with %d epochs "
                            "of batch %d: the learning-rate and eps schedules change from here",
            st->planned_epochs, st->planned_batch, o->epochs, batch);
        lipc_diag_note(msg, LIPC_NO_LOC, "the run is then not the one a single uninterrupted "
                                         "run would have made");
        return false;
    }
    return true;
}


lipc_status lipc_train_run(const lipc_model_desc *m, const lipc_model_ops *ops,
                           const lipc_dataset *train, const lipc_train_options *o,
                           lipc_train_state *st, lipc_train_result *res, lipc_diags *d)
{
    memset(res, 0, sizeof *res);
    res->val_acc = res->val_vra = res->val_k_sub = NAN;
    if (!lipc_dataset_fits(m, train, d) || (o->val && !lipc_dataset_fits(m, o->val, d)))
        return LIPC_ERR_INPUT;
    int batch = o->batch;
    if (ops->max_batch > 0 && batch > ops->max_batch)
        batch = ops->max_batch;
    lipc_batcher b;
    lipc_status s = lipc_batcher_init(&b, train, batch, &o->aug, true, true, o->seed);
    if (s != LIPC_OK)
        return s;
    long per_epoch = lipc_batcher_steps(&b);
    if (per_epoch == 0) {
        lipc_batcher_free(&b);
        lipc_diag_error(d, LIPC_NO_LOC, "the training set has %d examples, fewer than one "
                                        "batch of %d", train->n, batch);
        return LIPC_ERR_INPUT;
    }
    long total = per_epoch * o->epochs;
    size_t in = (size_t)m->in_c * (size_t)m->in_h * (size_t)m->in_w;
    float *x = lipc_malloc(sizeof(float) * in * (size_t)batch);
    uint8_t *y8 = lipc_malloc((size_t)batch);
    int32_t *y = lipc_malloc(sizeof(int32_t) * (size_t)batch);
    lipc_metrics_log log = {0};
    if (!x || !y8 || !y) {
        s = LIPC_ERR_NOMEM;
        goto done;
    }
    if (o->metrics && (s = lipc_metrics_open(&log, o->metrics, st->step > 0, d)) != LIPC_OK)
        goto done;

    lipc_progress prog;
    lipc_progress_init(&prog, o->log ? o->log : stderr);
    lipc_progress_begin(&prog, "train", total, batch);
    double t0 = lipc_now();
    long start = st->step;
    int epoch = (int)(st->step / per_epoch);
    lipc_batcher_seek(&b, epoch, (int)(st->step % per_epoch));
    /* epoch sums for the log */
    double sum_loss = 0.0;
    long sum_n = 0, sum_correct = 0, sum_cert = 0;
    lipc_step_stats stats = {0};
    while (st->step < total && s == LIPC_OK) {
        if (o->stop && *o->stop) {
            res->interrupted = true;
            break;
        }
        long t = st->step;
        if (t % per_epoch == 0)
            lipc_batcher_seek(&b, t / per_epoch, 0);
        int n = lipc_batcher_next(&b, x, y8);
        LIPC_ASSERT(n > 0);
        for (int i = 0; i < n; i++)
            y[i] = y8[i];
        lipc_hyper h = o->hyper;
        h.lr = lipc_schedule_lr(o, t, total, per_epoch);
        h.eps = lipc_schedule_eps(o, t, total);
        s = ops->train_step(ops->ctx, st, n, x, y, &h, &stats);
        if (s != LIPC_OK)
            break;
        if (!isfinite(stats.loss)) {
            lipc_diag_msg *msg = lipc_diag_error(d, LIPC_NO_LOC,
                                                 "training diverged at step %ld: the loss is %g",
                                                 t, stats.loss);
            lipc_diag_hint(msg, "lower the learning rate (--lr) or keep gradient clipping on");
            s = LIPC_ERR_INPUT;
            break;
        }
        sum_loss += stats.loss * n;
        sum_n += n;
        sum_correct += stats.correct;
        sum_cert += stats.certified;
        lipc_metric mt[] = {
            {"epoch", (double)(t / per_epoch + 1), NULL},
            {"loss", sum_loss / (double)sum_n, NULL},
            {"acc", (double)sum_correct / (double)sum_n, NULL},
            {"cert", (double)sum_cert / (double)sum_n, NULL},
            {"K_sub", stats.k_sub, NULL},
            {"eps", h.eps, NULL},
            {"lr", h.lr, NULL},
        };
        lipc_progress_update(&prog, st->step, mt, 7);
        bool epoch_end = st->step % per_epoch == 0;
        if (!epoch_end)
            continue;
        epoch = (int)((st->step - 1) / per_epoch) + 1;
        res->train_loss = sum_loss / (double)sum_n;
        res->train_acc = (double)sum_correct / (double)sum_n;
        res->train_cert = (double)sum_cert / (double)sum_n;
        res->k_sub = stats.k_sub;
        /* validation and the checkpoint read st */
        if (ops->sync_state && (s = ops->sync_state(ops->ctx, st)) != LIPC_OK)
            break;
        bool do_val = o->val &&
                      ((o->val_every > 0 && epoch % o->val_every == 0) || st->step == total);
        if (do_val && (s = validate(m, ops, st, o, res)) != LIPC_OK)
            break;
        /* The log's record; the progress line shows it without the step and
         * the time, which the line itself carries. */
        lipc_metric line[] = {
            {"epoch", epoch, NULL},
            {"loss", res->train_loss, NULL},
            {"acc", res->train_acc, NULL},
            {"cert", res->train_cert, NULL},
            {"K_sub", stats.k_sub, NULL},
            {"eps", h.eps, NULL},
            {"lr", h.lr, NULL},
            {"val_acc", do_val ? res->val_acc : NAN, NULL},
            {"val_vra", do_val ? res->val_vra : NAN, NULL},
            {"step", (double)st->step, NULL},
            {"seconds", lipc_now() - t0, NULL},
        };
        int n_shown = do_val ? 9 : 7;
        lipc_progress_line(&prog, st->step, line, n_shown);
        lipc_metric record[11];
        int n_record = 0;
        for (int k = 0; k < 11; k++)
            if (do_val || (k != 7 && k != 8))
                record[n_record++] = line[k];
        if (log.f && (s = lipc_metrics_write(&log, record, n_record, d)) != LIPC_OK)
            break;
        if (o->out && (s = save(o->out, m, st, o, epoch, d)) != LIPC_OK)
            break;
        sum_loss = 0.0;
        sum_n = sum_correct = sum_cert = 0;
    }
    lipc_progress_end(&prog);
    if (ops->sync_state) {
        lipc_status c = ops->sync_state(ops->ctx, st);
        if (s == LIPC_OK)
            s = c;
    }
    res->steps = st->step - start;
    res->epochs = (int)(st->step / per_epoch);
    res->seconds = lipc_now() - t0;
    res->images_per_s = res->seconds > 0 ? (double)res->steps * batch / res->seconds : 0.0;
    if (s == LIPC_OK && res->interrupted && o->out)
        s = save(o->out, m, st, o, res->epochs, d);
done:
    if (log.f) {
        lipc_status c = lipc_metrics_close(&log, d);
        if (s == LIPC_OK)
            s = c;
    }
    lipc_batcher_free(&b);
    lipc_free(x);
    lipc_free(y8);
    lipc_free(y);
    return s;
}
