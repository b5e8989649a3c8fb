/* runtime/progress.c: progress lines for long loops, and a JSON-lines metrics
 * log.
 *
 * The key idea is to serve two readers with one call. A person at a terminal
 * wants one live line, rewritten in place with '\r' (at most 10 times a
 * second, so printing never costs training time); a log file or CI wants
 * plain, complete lines at a steady pace (every period_s seconds and at each
 * epoch's end), with no carriage returns or escape codes. Both show the same
 * generic fields (name -> value pairs, so training and certification share
 * the code), plus the rate and an ETA measured from the first update, which
 * keeps the slow first step and a resumed run's earlier steps out of the
 * estimate. Metrics go to a separate file, one JSON object per line, flushed
 * per line so a crashed run keeps everything up to its last record.
 */
#include "runtime/internal.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

double lipc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void lipc_format_duration(double s, char *buf, size_t size)
{
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, size, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, size, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, size, "%lds", t);
}

/* ---- progress lines ------------------------------------------------------------ */

void lipc_progress_init(lipc_progress *p, FILE *out)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->live = isatty(fileno(out)) == 1;
    p->period_s = 10.0;
}

void lipc_progress_begin(lipc_progress *p, const char *label, long total_steps,
                         double items_per_step)
{
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total_steps > 0 ? total_steps : 0;
    p->items_per_step = items_per_step;
    p->started = false;
    p->shown = false;
    p->live_len = 0;
}

/* A value as a person reads it: integers without a fraction, the rest with 4
 * significant digits. */
static void put_value(lipc_buf *b, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        lipc_buf_printf(b, "%.0f", v);
    else
        lipc_buf_printf(b, "%.4g", v);
}

static void format_line(lipc_progress *p, long step, const lipc_metric *m, int n, double now,
                        lipc_buf *b)
{
    if (p->label[0])
        lipc_buf_printf(b, "%s  ", p->label);
    if (p->total > 0)
        lipc_buf_printf(b, "step %ld/%ld (%d%%)", step, p->total,
                        (int)(100.0 * (double)step / (double)p->total));
    else
        lipc_buf_printf(b, "step %ld", step);
    for (int i = 0; i < n; i++) {
        lipc_buf_printf(b, "  %s ", m[i].name);
        if (m[i].str)
            lipc_buf_puts(b, m[i].str);
        else
            put_value(b, m[i].value);
    }
    double dt = now - p->t0;
    long done = step - p->step0;
    if (done > 0 && dt > 0) {
        if (p->items_per_step > 0)
            lipc_buf_printf(b, "  %.0f img/s", (double)done * p->items_per_step / dt);
        if (p->total > 0 && step <= p->total) {
            char eta[16];
            lipc_format_duration((double)(p->total - step) * dt / (double)done, eta, sizeof eta);
            lipc_buf_printf(b, "  ETA %s", eta);
        }
    }
}

/* Terminal width for the live line (a wrapped line cannot be rewritten with
 * '\r'); 80 when it cannot be asked. */
static int term_width(FILE *out)
{
#ifdef TIOCGWINSZ
    struct winsize ws;
    if (ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10)
        return ws.ws_col;
#else
    (void)out;
#endif
    return 80;
}

static void emit(lipc_progress *p, long step, const lipc_metric *m, int n, double now,
                 bool permanent)
{
    lipc_buf b;
    lipc_buf_init(&b);
    format_line(p, step, m, n, now, &b);
    const char *s = lipc_buf_str(&b);
    if (p->live) {
        /* Too wide for a line that will be rewritten: drop fields from the
         * end, keeping the step, rate and ETA, then cut what still does not
         * fit. A permanent line may wrap: it ends with a newline anyway. */
        int width = permanent ? INT_MAX : term_width(p->out) - 1;
        for (int keep = n - 1; keep >= 0 && (int)b.len > width; keep--) {
            lipc_buf_free(&b);
            lipc_buf_init(&b);
            format_line(p, step, m, keep, now, &b);
        }
        s = lipc_buf_str(&b);
        int len = (int)strlen(s);
        if (len > width)
            len = width;
        /* "\033[K" clears what a longer previous line left to the right. */
        fprintf(p->out, "\r%.*s\033[K%s", len, s, permanent ? "\n" : "");
        p->live_len = permanent ? 0 : len;
    } else {
        fprintf(p->out, "%s\n", s);
    }
    fflush(p->out);
    lipc_buf_free(&b);
    p->t_last = now;
    p->shown = true;
}

static void first_update(lipc_progress *p, long step, double now)
{
    if (!p->started) {
        p->started = true;
        p->step0 = step;
        p->t0 = now;
        p->t_last = now;
    }
}

void lipc_progress_update(lipc_progress *p, long step, const lipc_metric *m, int n)
{
    double now = lipc_now();
    bool first = !p->started;
    first_update(p, step, now);
    if (p->live) {
        bool last = p->total > 0 && step >= p->total;
        if (first || last || now - p->t_last >= 0.1)
            emit(p, step, m, n, now, false);
    } else if (now - p->t_last >= p->period_s) {
        emit(p, step, m, n, now, false);
    }
}

void lipc_progress_line(lipc_progress *p, long step, const lipc_metric *m, int n)
{
    double now = lipc_now();
    first_update(p, step, now);
    emit(p, step, m, n, now, true);
}

void lipc_progress_end(lipc_progress *p)
{
    if (p->live && p->live_len > 0) {
        fputc('\n', p->out);
        fflush(p->out);
    }
    p->live_len = 0;
}

/* ---- the metrics log ----------------------------------------------------------- */

lipc_status lipc_metrics_open(lipc_metrics_log *m, const char *path, bool append,
                              lipc_diags *d)
{
    memset(m, 0, sizeof *m);
    if (!(m->path = lipc_strdup(path)))
        return LIPC_ERR_NOMEM;
    errno = 0;
    m->f = fopen(path, append ? "a" : "w");
    if (!m->f) {
        lipc_diag_error(d, lipc_rt_loc(d, path), "cannot open the metrics log: %s",
                        strerror(errno));
        lipc_free(m->path);
        m->path = NULL;
        return LIPC_ERR_IO;
    }
    return LIPC_OK;
}

/* A number as JSON: integral values (below 2^53, where doubles are exact
 * integers) as integers so "epoch":3 reads as an integer; NaN and infinities,
 * which JSON cannot spell, as null. */
static json_t *json_number(double v)
{
    if (!isfinite(v))
        return json_null();
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
        return json_integer((json_int_t)v);
    return json_real(v);
}

lipc_status lipc_metrics_write(lipc_metrics_log *m, const lipc_metric *f, int n, lipc_diags *d)
{
    json_t *o = json_object();
    if (!o)
        return LIPC_ERR_NOMEM;
    bool ok = true;
    for (int i = 0; ok && i < n; i++) {
        /* A string that is not UTF-8 (jansson refuses it) is logged as null
         * rather than losing the whole record. */
        json_t *v = f[i].str ? json_string(f[i].str) : json_number(f[i].value);
        ok = json_object_set_new(o, f[i].name, v ? v : json_null()) == 0;
    }
    /* Insertion order is kept (jansson >= 2.8), so columns read as written. */
    char *text = ok ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    if (!text)
        return LIPC_ERR_NOMEM;
    errno = 0;
    bool wrote = fputs(text, m->f) >= 0 && fputc('\n', m->f) != EOF && fflush(m->f) == 0;
    int err = errno;
    free(text);                 /* jansson's allocation */
    if (!wrote) {
        lipc_diag_error(d, lipc_rt_loc(d, m->path), "cannot write the metrics log: %s",
                        strerror(err));
        return LIPC_ERR_IO;
    }
    return LIPC_OK;
}

lipc_status lipc_metrics_close(lipc_metrics_log *m, lipc_diags *d)
{
    lipc_status st = LIPC_OK;
    if (m->f && fclose(m->f) != 0) {
        lipc_diag_error(d, lipc_rt_loc(d, m->path), "cannot write the metrics log: %s",
                        strerror(errno));
        st = LIPC_ERR_IO;
    }
    lipc_free(m->path);
    memset(m, 0, sizeof *m);
    return st;
}
