/* runtime/report.c: training curves and the VRA curve, drawn as SVG by gnuplot.
 *
 * The key idea is to hand gnuplot only files a person can read and re-run:
 * each report is a plain whitespace-separated data file, a gnuplot script
 * that names it by its base name, and the SVG the script draws. lipc runs
 * `gnuplot -e "out='NAME.svg.tmp-PID'" NAME.gp` in the report's directory
 * (the script draws to NAME.svg when `out` is not given, so a user runs the
 * same script by hand), then renames the temporary SVG over NAME.svg, so a
 * reader never sees a half-drawn picture. gnuplot is optional: without it the
 * data and the script are still written, and the diagnostics get a warning
 * saying where they are, never an error that would fail a training run.
 *
 * The metrics log is read whole (one short line per epoch) and every bad line
 * is reported at file:line:col, quoted, as a model file's would be.
 *
 * gnuplot runs through fork and execv: the child changes into the report's
 * directory, which posix_spawn cannot do portably. The training loop has a
 * thread pool, so the child calls only async-signal-safe functions; the
 * program's path, its arguments and the child's error messages are all made
 * before the fork.
 */
#include "runtime/report.h"
#include "runtime/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Bad lines reported per metrics log; the rest are counted in a note. */
#define MAX_BAD_LINES 10
/* Bytes of gnuplot's output kept for a diagnostic. */
#define MAX_GNUPLOT_OUTPUT 2048

/* ---- small helpers ------------------------------------------------------------- */

/* A number for a data file: 10 significant digits, as the metrics log keeps
 * them; NaN (gnuplot's word for a missing value) when not finite. */
static void put_num(lipc_buf *b, double v)
{
    if (isfinite(v))
        lipc_buf_printf(b, "%.10g", v);
    else
        lipc_buf_puts(b, "NaN");
}

/* A gnuplot string literal. Single quotes take every byte as it is except
 * the quote itself, which is doubled. */
static void put_gp_string(lipc_buf *b, const char *s)
{
    lipc_buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            lipc_buf_putc(b, '\'');
        lipc_buf_putc(b, *s);
    }
    lipc_buf_putc(b, '\'');
}

/* s + suffix, or NULL out of memory. */
static char *concat(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    char *r = lipc_malloc(a + b + 1);
    if (r) {
        memcpy(r, s, a);
        memcpy(r + a, suffix, b + 1);
    }
    return r;
}

size_t lipc_report_stem(const char *path)
{
    static const char *const suffixes[] = {".metrics.jsonl", ".jsonl", ".safetensors"};
    size_t len = strlen(path);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t k = strlen(suffixes[i]);
        if (len > k && strcmp(path + len - k, suffixes[i]) == 0)
            return len - k;
    }
    return len;
}

/* Writes text to path through path.tmp-PID and a rename, so an existing file
 * is replaced whole or not at all. */
static lipc_status write_file(const char *path, const lipc_buf *text, lipc_diags *d)
{
    if (text->failed)
        return LIPC_ERR_NOMEM;
    lipc_buf tb;
    lipc_buf_init(&tb);
    lipc_buf_printf(&tb, "%s.tmp-%ld", path, (long)getpid());
    if (tb.failed) {
        lipc_buf_free(&tb);
        return LIPC_ERR_NOMEM;
    }
    const char *tmp = lipc_buf_str(&tb);
    lipc_status st = LIPC_OK;
    errno = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        lipc_diag_error(d, lipc_rt_loc(d, path), "cannot write the report: %s", strerror(errno));
        lipc_buf_free(&tb);
        return LIPC_ERR_IO;
    }
    bool ok = fwrite(lipc_buf_str(text), 1, text->len, f) == text->len;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        lipc_diag_error(d, lipc_rt_loc(d, path), "cannot write the report: %s", strerror(err));
        remove(tmp);
        st = LIPC_ERR_IO;
    }
    lipc_buf_free(&tb);
    return st;
}

/* ---- running gnuplot ----------------------------------------------------------- */

/* The gnuplot to run: $LIPC_GNUPLOT or "gnuplot"; a name with a '/' is taken
 * as it is, any other is looked up in $PATH. NULL (and *nomem false) when
 * there is none. */
static char *find_gnuplot(bool *nomem)
{
    *nomem = false;
    const char *prog = getenv("LIPC_GNUPLOT");
    if (!prog || !*prog)
        prog = "gnuplot";
    struct stat sb;
    if (strchr(prog, '/')) {
        if (stat(prog, &sb) != 0 || !S_ISREG(sb.st_mode) || access(prog, X_OK) != 0)
            return NULL;
        char *p = lipc_strdup(prog);
        *nomem = !p;
        return p;
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    for (const char *dir = path;; dir++) {
        const char *end = strchr(dir, ':');
        size_t len = end ? (size_t)(end - dir) : strlen(dir);
        lipc_buf b;
        lipc_buf_init(&b);
        /* An empty entry is the current directory. */
        lipc_buf_printf(&b, "%.*s/%s", (int)(len ? len : 1), len ? dir : ".", prog);
        if (b.failed) {
            lipc_buf_free(&b);
            *nomem = true;
            return NULL;
        }
        if (stat(b.data, &sb) == 0 && S_ISREG(sb.st_mode) && access(b.data, X_OK) == 0)
            return b.data;
        lipc_buf_free(&b);
        if (!end)
            return NULL;
        dir = end;
    }
}

typedef struct report_files {
    char *dir;          /* the directory of the report's files ("." for none) */
    char *base;         /* OUT_PREFIX's last component */
    char *data, *script, *svg;      /* full paths */
    const char *data_suffix;        /* "-training.dat", "-vra.tsv" */
    const char *kind;               /* "training", "vra" */
} report_files;

static lipc_status files_init(report_files *rf, const char *prefix, const char *kind,
                              const char *data_suffix)
{
    memset(rf, 0, sizeof *rf);
    rf->kind = kind;
    rf->data_suffix = data_suffix;
    const char *slash = strrchr(prefix, '/');
    if (slash) {
        size_t len = slash == prefix ? 1 : (size_t)(slash - prefix);
        rf->dir = lipc_malloc(len + 1);
        if (rf->dir) {
            memcpy(rf->dir, prefix, len);
            rf->dir[len] = '\0';
        }
        rf->base = lipc_strdup(slash + 1);
    } else {
        rf->dir = lipc_strdup(".");
        rf->base = lipc_strdup(prefix);
    }
    char gp_suffix[32], svg_suffix[32];
    snprintf(gp_suffix, sizeof gp_suffix, "-%s.gp", kind);
    snprintf(svg_suffix, sizeof svg_suffix, "-%s.svg", kind);
    rf->data = concat(prefix, data_suffix);
    rf->script = concat(prefix, gp_suffix);
    rf->svg = concat(prefix, svg_suffix);
    return rf->dir && rf->base && rf->data && rf->script && rf->svg ? LIPC_OK : LIPC_ERR_NOMEM;
}

static void files_free(report_files *rf)
{
    lipc_free(rf->dir);
    lipc_free(rf->base);
    lipc_free(rf->data);
    lipc_free(rf->script);
    lipc_free(rf->svg);
}

/* Attaches the first lines of gnuplot's output to m as notes. */
static void note_output(lipc_diag_msg *m, const char *out, size_t len)
{
    int lines = 0;
    for (const char *p = out, *end = out + len; p < end && lines < 6;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0) {
            lipc_diag_note(m, LIPC_NO_LOC, "gnuplot: %.*s", (int)n, p);
            lines++;
        }
        p += n + 1;
    }
}

/* Runs gnuplot on the report's script in its directory and renames the SVG
 * it draws into place. Without gnuplot: a warning, LIPC_OK. */
static lipc_status draw(const report_files *rf, lipc_diags *d)
{
    bool nomem;
    char *prog = find_gnuplot(&nomem);
    if (!prog) {
        if (nomem)
            return LIPC_ERR_NOMEM;
        lipc_diag_warning(d, LIPC_NO_LOC,
                          "gnuplot not found: the report data and script are in %s and %s; "
                          "install gnuplot-nox to draw it",
                          rf->data, rf->script);
        return LIPC_OK;
    }
    lipc_status st = LIPC_OK;
    lipc_buf tmp_base, tmp, out_arg, script_base, err_cd, err_exec;
    lipc_buf_init(&tmp_base);
    lipc_buf_init(&tmp);
    lipc_buf_init(&out_arg);
    lipc_buf_init(&script_base);
    lipc_buf_init(&err_cd);
    lipc_buf_init(&err_exec);
    lipc_buf_printf(&tmp_base, "%s-%s.svg.tmp-%ld", rf->base, rf->kind, (long)getpid());
    lipc_buf_printf(&tmp, "%s.tmp-%ld", rf->svg, (long)getpid());
    lipc_buf_puts(&out_arg, "out=");
    put_gp_string(&out_arg, lipc_buf_str(&tmp_base));
    lipc_buf_printf(&script_base, "%s-%s.gp", rf->base, rf->kind);
    lipc_buf_printf(&err_cd, "cannot enter the directory %s\n", rf->dir);
    lipc_buf_printf(&err_exec, "cannot execute %s\n", prog);
    int fds[2] = {-1, -1};
    char output[MAX_GNUPLOT_OUTPUT];
    size_t out_len = 0;
    if (tmp_base.failed || tmp.failed || out_arg.failed || script_base.failed ||
        err_cd.failed || err_exec.failed) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    char *argv[] = {prog, "-e", out_arg.data, script_base.data, NULL};
    if (pipe(fds) != 0) {
        lipc_diag_error(d, LIPC_NO_LOC, "cannot run gnuplot: %s", strerror(errno));
        st = LIPC_ERR_IO;
        goto done;
    }
    pid_t pid = fork();
    if (pid < 0) {
        lipc_diag_error(d, LIPC_NO_LOC, "cannot run gnuplot: %s", strerror(errno));
        st = LIPC_ERR_IO;
        goto done;
    }
    if (pid == 0) {
        /* The child: async-signal-safe calls only (see the top). stdout and
         * stderr both go to the pipe; stdin is empty. */
        close(fds[0]);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        if (chdir(rf->dir) != 0) {
            ssize_t w = write(2, err_cd.data, err_cd.len);
            (void)w;
            _exit(126);
        }
        execv(prog, argv);
        ssize_t w = write(2, err_exec.data, err_exec.len);
        (void)w;
        _exit(127);
    }
    close(fds[1]);
    fds[1] = -1;
    /* Keep the first bytes of the output, drain the rest so gnuplot never
     * blocks on a full pipe. */
    for (;;) {
        char chunk[512];
        ssize_t r = read(fds[0], chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        size_t keep = (size_t)r < sizeof output - out_len ? (size_t)r : sizeof output - out_len;
        memcpy(output + out_len, chunk, keep);
        out_len += keep;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            status = -1;
            break;
        }
    }
    struct stat sb;
    bool drawn = status == 0 && stat(tmp.data, &sb) == 0 && sb.st_size > 0;
    if (drawn && rename(tmp.data, rf->svg) != 0) {
        lipc_diag_error(d, lipc_rt_loc(d, rf->svg), "cannot write the report: %s",
                        strerror(errno));
        st = LIPC_ERR_IO;
    } else if (!drawn) {
        lipc_diag_msg *m;
        if (status != -1 && WIFEXITED(status))
            m = lipc_diag_error(d, lipc_rt_loc(d, rf->svg),
                                "gnuplot (%s) could not draw the report: exit status %d", prog,
                                WEXITSTATUS(status));
        else if (status != -1 && WIFSIGNALED(status))
            m = lipc_diag_error(d, lipc_rt_loc(d, rf->svg),
                                "gnuplot (%s) could not draw the report: killed by signal %d",
                                prog, WTERMSIG(status));
        else
            m = lipc_diag_error(d, lipc_rt_loc(d, rf->svg),
                                "gnuplot (%s) could not draw the report", prog);
        note_output(m, output, out_len);
        lipc_diag_note(m, LIPC_NO_LOC, "the data and the script are in %s and %s", rf->data,
                       rf->script);
        st = LIPC_ERR_IO;
    }
    if (st != LIPC_OK)
        remove(tmp.data);
done:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    lipc_buf_free(&tmp_base);
    lipc_buf_free(&tmp);
    lipc_buf_free(&out_arg);
    lipc_buf_free(&script_base);
    lipc_buf_free(&err_cd);
    lipc_buf_free(&err_exec);
    lipc_free(prog);
    return st;
}

/* The script's opening: how to re-run it, and the terminal. `out` may be set
 * on the command line; lipc sets it to a temporary name. */
static void put_script_head(lipc_buf *b, const report_files *rf, const char *what, int width,
                            int height)
{
    lipc_buf_printf(b, "# %s-%s.gp: %s, drawn by lipc.\n", rf->base, rf->kind, what);
    lipc_buf_printf(b, "# Edit freely; draw it again in this directory with\n"
                       "#   gnuplot %s-%s.gp\n", rf->base, rf->kind);
    lipc_buf name;
    lipc_buf_init(&name);
    lipc_buf_printf(&name, "%s-%s.svg", rf->base, rf->kind);
    lipc_buf_puts(b, "if (!exists(\"out\")) out = ");
    put_gp_string(b, lipc_buf_str(&name));
    lipc_buf_putc(b, '\n');
    if (name.failed)
        b->failed = true;
    lipc_buf_free(&name);
    lipc_buf_puts(b, "set encoding utf8\n");
    lipc_buf_printf(b, "set terminal svg size %d,%d dynamic enhanced font 'sans,12' "
                       "background rgb 'white'\n", width, height);
    lipc_buf_puts(b, "set output out\nset grid\nset format y '%g'\n");
}

/* ---- the training report ------------------------------------------------------- */

typedef struct epoch_rec {
    double epoch, step, loss, acc, cert, k_sub, eps, lr, seconds;
    double val_acc, val_vra;
    bool has_val;
} epoch_rec;

typedef struct log_reader {
    const char *path;
    const char *text;           /* the whole log */
    size_t len;
    const char *loc_file;       /* the log, registered with its text for quoting */
    int bad_lines;
} log_reader;

/* Counts a bad line and gives the location to report it at (the log is
 * registered with its text, so the line is quoted); false past
 * MAX_BAD_LINES, when it is only counted. */
static bool bad_line(log_reader *r, lipc_diags *d, int line, int col, lipc_loc *loc)
{
    if (++r->bad_lines > MAX_BAD_LINES)
        return false;
    if (!r->loc_file)
        r->loc_file = lipc_diags_add_source(d, r->path, r->text, r->len);
    *loc = (lipc_loc){r->loc_file, line, col};
    return true;
}

/* Reads field name of o into *v. Absent: NaN, and an error when required.
 * null: NaN (the log's spelling of a value that was not finite). */
static bool get_field(log_reader *r, lipc_diags *d, int line, json_t *o, const char *name,
                      bool required, double *v)
{
    *v = NAN;
    json_t *j = json_object_get(o, name);
    if (!j) {
        if (required) {
            lipc_loc loc;
            if (!bad_line(r, d, line, 1, &loc))
                return false;
            lipc_diag_msg *m = lipc_diag_error(d, loc, "the record has no field '%s'", name);
            lipc_diag_note(m, LIPC_NO_LOC, "a record of the metrics log has 'epoch', 'loss', "
                           "'acc', 'cert' and 'K_sub' (docs/training.md)");
        }
        return !required;
    }
    if (json_is_null(j))
        return true;
    if (!json_is_number(j)) {
        lipc_loc loc;
        if (bad_line(r, d, line, 1, &loc))
            lipc_diag_error(d, loc, "the field '%s' is %s, not a number", name,
                            json_is_string(j) ? "a string"
                            : json_is_boolean(j) ? "a boolean"
                                                 : "an object or array");
        return false;
    }
    *v = json_number_value(j);
    return true;
}

/* Parses one non-blank line into rec; false (with a diagnostic) when bad. */
static bool parse_record(log_reader *r, lipc_diags *d, int line, const char *s, size_t n,
                         epoch_rec *rec)
{
    json_error_t err;
    json_t *o = json_loadb(s, n, 0, &err);
    if (!o) {
        lipc_loc loc;
        if (bad_line(r, d, line, err.column > 0 ? err.column : 1, &loc))
            lipc_diag_error(d, loc, "malformed record: %s", err.text);
        return false;
    }
    bool ok = true;
    if (!json_is_object(o)) {
        lipc_loc loc;
        if (bad_line(r, d, line, 1, &loc))
            lipc_diag_error(d, loc, "the record is a JSON %s, not an object",
                            json_is_array(o) ? "array" : "value");
        ok = false;
    }
    if (ok) {
        /* Check every field, so one line reports all its problems. */
        ok &= get_field(r, d, line, o, "epoch", true, &rec->epoch);
        ok &= get_field(r, d, line, o, "loss", true, &rec->loss);
        ok &= get_field(r, d, line, o, "acc", true, &rec->acc);
        ok &= get_field(r, d, line, o, "cert", true, &rec->cert);
        ok &= get_field(r, d, line, o, "K_sub", true, &rec->k_sub);
        ok &= get_field(r, d, line, o, "step", false, &rec->step);
        ok &= get_field(r, d, line, o, "eps", false, &rec->eps);
        ok &= get_field(r, d, line, o, "lr", false, &rec->lr);
        ok &= get_field(r, d, line, o, "seconds", false, &rec->seconds);
        ok &= get_field(r, d, line, o, "val_acc", false, &rec->val_acc);
        ok &= get_field(r, d, line, o, "val_vra", false, &rec->val_vra);
        rec->has_val = isfinite(rec->val_acc) || isfinite(rec->val_vra);
    }
    if (ok && !(rec->epoch >= 1 && rec->epoch <= 1e9 && rec->epoch == floor(rec->epoch))) {
        char got[32];
        snprintf(got, sizeof got, "%.10g", rec->epoch);
        lipc_loc loc;
        if (bad_line(r, d, line, 1, &loc))
            lipc_diag_error(d, loc, "the field 'epoch' is %s; expected a whole number >= 1",
                            isfinite(rec->epoch) ? got : "null");
        ok = false;
    }
    json_decref(o);
    return ok;
}

/* Reads the whole file; LIPC_ERR_IO with a diagnostic when it cannot. */
static lipc_status read_all(const char *path, char **text, size_t *len, lipc_diags *d)
{
    *text = NULL;
    *len = 0;
    errno = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        lipc_diag_error(d, lipc_rt_loc(d, path), "cannot open the metrics log: %s",
                        strerror(errno));
        return LIPC_ERR_IO;
    }
    size_t cap = 0, n = 0;
    char *buf = NULL;
    lipc_status st = LIPC_OK;
    for (;;) {
        if (n + 4096 > cap) {
            size_t ncap = cap ? 2 * cap : 65536;
            char *nb = lipc_realloc(buf, ncap);
            if (!nb) {
                st = LIPC_ERR_NOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                lipc_diag_error(d, lipc_rt_loc(d, path), "cannot read the metrics log: %s",
                                strerror(errno));
                st = LIPC_ERR_IO;
            }
            break;
        }
    }
    fclose(f);
    if (st != LIPC_OK) {
        lipc_free(buf);
        return st;
    }
    *text = buf;
    *len = n;
    return LIPC_OK;
}

/* Parses the log into recs, one per epoch in increasing order. */
static lipc_status parse_log(log_reader *r, epoch_rec **recs_out, int *n_out, lipc_diags *d)
{
    epoch_rec *recs = NULL;
    int n = 0, cap = 0;
    int line = 0;
    for (size_t pos = 0; pos < r->len;) {
        const char *s = r->text + pos;
        const char *nl = memchr(s, '\n', r->len - pos);
        size_t n_s = nl ? (size_t)(nl - s) : r->len - pos;
        pos += n_s + 1;
        line++;
        size_t k = n_s;
        while (k > 0 && (s[k - 1] == '\r' || s[k - 1] == ' ' || s[k - 1] == '\t'))
            k--;
        size_t j = 0;
        while (j < k && (s[j] == ' ' || s[j] == '\t'))
            j++;
        if (j == k)
            continue;               /* a blank line */
        epoch_rec rec;
        if (!parse_record(r, d, line, s, k, &rec))
            continue;
        /* A resumed run that went back to an older checkpoint rewrites the
         * epochs from there: drop the records it replaces. */
        while (n > 0 && recs[n - 1].epoch >= rec.epoch)
            n--;
        if (n == cap) {
            int ncap = cap ? 2 * cap : 64;
            epoch_rec *nr = lipc_realloc(recs, (size_t)ncap * sizeof *nr);
            if (!nr) {
                lipc_free(recs);
                return LIPC_ERR_NOMEM;
            }
            recs = nr;
            cap = ncap;
        }
        recs[n++] = rec;
    }
    if (r->bad_lines > MAX_BAD_LINES)
        lipc_diag_error(d, lipc_rt_loc(d, r->path), "%d more bad lines not shown",
                        r->bad_lines - MAX_BAD_LINES);
    if (r->bad_lines > 0) {
        lipc_free(recs);
        return LIPC_ERR_INPUT;
    }
    if (n == 0) {
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, r->path),
                                           "the metrics log has no records: nothing to draw");
        lipc_diag_hint(m, "lipc train writes one record per finished epoch");
        lipc_free(recs);
        return LIPC_ERR_INPUT;
    }
    *recs_out = recs;
    *n_out = n;
    return LIPC_OK;
}

static void put_training_data(lipc_buf *b, const char *metrics_path, const epoch_rec *recs,
                              int n)
{
    lipc_buf_printf(b, "# lipc training report data, from %s\n", metrics_path);
    lipc_buf_puts(b, "# NaN: not recorded. Index 0: one row per epoch; index 1: the "
                     "validation epochs.\n");
    lipc_buf_puts(b, "# epoch step loss acc cert K_sub eps lr seconds\n");
    for (int i = 0; i < n; i++) {
        const epoch_rec *e = &recs[i];
        const double row[] = {e->epoch, e->step, e->loss, e->acc, e->cert,
                              e->k_sub, e->eps,  e->lr,   e->seconds};
        for (size_t k = 0; k < sizeof row / sizeof row[0]; k++) {
            if (k)
                lipc_buf_putc(b, ' ');
            put_num(b, row[k]);
        }
        lipc_buf_putc(b, '\n');
    }
    /* Two blank lines start gnuplot's next index. */
    lipc_buf_puts(b, "\n\n# validation: epoch val_acc val_vra\n");
    for (int i = 0; i < n; i++) {
        if (!recs[i].has_val)
            continue;
        put_num(b, recs[i].epoch);
        lipc_buf_putc(b, ' ');
        put_num(b, recs[i].val_acc);
        lipc_buf_putc(b, ' ');
        put_num(b, recs[i].val_vra);
        lipc_buf_putc(b, '\n');
    }
}

/* The two series colours, the same in every panel: training blue, validation
 * red. */
static void put_linetypes(lipc_buf *b)
{
    lipc_buf_puts(b, "set linetype 1 lc rgb '#1f77b4' lw 2 pt 7 ps 0.6\n"
                     "set linetype 2 lc rgb '#d62728' lw 2 pt 7 ps 0.6\n");
}

static void put_training_script(lipc_buf *b, const report_files *rf, const char *metrics_path,
                                const epoch_rec *recs, int n)
{
    bool val = false;
    for (int i = 0; i < n; i++)
        val |= recs[i].has_val;
    put_script_head(b, rf, "the training curves of a metrics log", 1100, 800);
    put_linetypes(b);
    lipc_buf_puts(b, "data = ");
    lipc_buf name;
    lipc_buf_init(&name);
    lipc_buf_printf(&name, "%s%s", rf->base, rf->data_suffix);
    put_gp_string(b, lipc_buf_str(&name));
    if (name.failed)
        b->failed = true;
    lipc_buf_free(&name);
    lipc_buf_puts(b, "\nset multiplot layout 2,2 title ");
    const char *slash = strrchr(metrics_path, '/');
    lipc_buf name2;
    lipc_buf_init(&name2);
    lipc_buf_printf(&name2, "lipc training: %s", slash ? slash + 1 : metrics_path);
    put_gp_string(b, lipc_buf_str(&name2));
    if (name2.failed)
        b->failed = true;
    lipc_buf_free(&name2);
    lipc_buf_puts(b, " noenhanced\n");

    /* Epochs are whole numbers: a one-epoch log gets a range around its
     * epoch, a short one a tic per epoch. */
    double lo = recs[0].epoch, hi = recs[n - 1].epoch;
    if (hi > lo)
        lipc_buf_printf(b, "set xrange [%.10g:%.10g]\n", lo, hi);
    else
        lipc_buf_printf(b, "set xrange [%.10g:%.10g]\n", lo - 0.5, hi + 0.5);
    if (hi - lo <= 10)
        lipc_buf_puts(b, "set xtics 1\n");
    lipc_buf_puts(b, "set xlabel 'epoch'\nset style data linespoints\n\n");

    lipc_buf_puts(b, "set title 'training loss'\nset ylabel 'loss'\nset key top right\n"
                     "plot data index 0 using 1:3 lt 1 title 'train'\n\n");

    lipc_buf_puts(b, "set title 'clean accuracy'\nset ylabel 'accuracy'\n"
                     "set yrange [0:1.02]\nset ytics 0,0.2,1\nset key bottom right\n"
                     "plot data index 0 using 1:4 lt 1 title 'train (before each update)'");
    if (val)
        lipc_buf_puts(b, ", \\\n     data index 1 using 1:2 lt 2 title 'validation'");
    lipc_buf_puts(b, "\n\n");

    lipc_buf_puts(b, "set title 'certified accuracy'\nset ylabel 'certified and correct'\n"
                     "plot data index 0 using 1:5 lt 1 title 'train, at the training radius'");
    if (val)
        lipc_buf_puts(b, ", \\\n     data index 1 using 1:3 lt 2 title 'validation VRA'");
    lipc_buf_puts(b, "\n\n");

    lipc_buf_puts(b, "set title 'K_{sub} (power-iteration estimate)'\nset ylabel 'K_{sub}'\n"
                     "set autoscale y\nset ytics autofreq\nset key off\n"
                     "plot data index 0 using 1:6 lt 1 notitle\n\n"
                     "unset multiplot\n");
}

lipc_status lipc_report_training(const char *metrics_path, const char *out_prefix,
                                 lipc_diags *d)
{
    LIPC_ASSERT(metrics_path && out_prefix && d);
    char *text;
    size_t len;
    lipc_status st = read_all(metrics_path, &text, &len, d);
    if (st != LIPC_OK)
        return st;
    log_reader r = {.path = metrics_path, .text = text, .len = len};
    epoch_rec *recs = NULL;
    int n = 0;
    st = parse_log(&r, &recs, &n, d);
    lipc_free(text);
    if (st != LIPC_OK)
        return st;
    report_files rf;
    st = files_init(&rf, out_prefix, "training", "-training.dat");
    lipc_buf data, script;
    lipc_buf_init(&data);
    lipc_buf_init(&script);
    if (st == LIPC_OK) {
        put_training_data(&data, metrics_path, recs, n);
        put_training_script(&script, &rf, metrics_path, recs, n);
        st = write_file(rf.data, &data, d);
    }
    if (st == LIPC_OK)
        st = write_file(rf.script, &script, d);
    if (st == LIPC_OK)
        st = draw(&rf, d);
    lipc_buf_free(&data);
    lipc_buf_free(&script);
    files_free(&rf);
    lipc_free(recs);
    return st;
}

/* ---- the VRA report ------------------------------------------------------------ */

lipc_status lipc_report_vra(const double *eps, const double *vra, int n, double clean,
                            const char *out_prefix, lipc_diags *d)
{
    LIPC_ASSERT(n >= 0 && (n == 0 || (eps && vra)) && out_prefix && d);
    /* The caller's numbers, checked: a NaN would silently vanish from the
     * plot. */
    bool has_zero = false;
    for (int k = 0; k < n; k++) {
        if (!(isfinite(eps[k]) && eps[k] >= 0 && vra[k] >= 0 && vra[k] <= 1)) {
            lipc_diag_error(d, LIPC_NO_LOC,
                            "VRA report: point %d (eps %g, VRA %g) is out of range", k, eps[k],
                            vra[k]);
            return LIPC_ERR_INPUT;
        }
        has_zero |= eps[k] == 0;
    }
    bool show_clean = !isnan(clean);
    if (show_clean && !(clean >= 0 && clean <= 1)) {
        lipc_diag_error(d, LIPC_NO_LOC, "VRA report: clean accuracy %g is out of range", clean);
        return LIPC_ERR_INPUT;
    }
    if (n == 0 && !show_clean) {
        lipc_diag_error(d, LIPC_NO_LOC, "VRA report: no points to draw");
        return LIPC_ERR_INPUT;
    }
    /* Increasing radii (the command line may give them in any order):
     * insertion sort of an index, stable, n is at most a few dozen. */
    int *order = lipc_malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    if (!order)
        return LIPC_ERR_NOMEM;
    for (int k = 0; k < n; k++) {
        int j = k;
        while (j > 0 && eps[order[j - 1]] > eps[k]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    double xmax = 0;
    for (int k = 0; k < n; k++)
        xmax = eps[k] > xmax ? eps[k] : xmax;

    report_files rf;
    lipc_status st = files_init(&rf, out_prefix, "vra", "-vra.tsv");
    lipc_buf data, script;
    lipc_buf_init(&data);
    lipc_buf_init(&script);
    if (st == LIPC_OK) {
        lipc_buf_puts(&data, "eps\tvra\n");
        if (show_clean && !has_zero) {
            put_num(&data, 0.0);
            lipc_buf_putc(&data, '\t');
            put_num(&data, clean);
            lipc_buf_putc(&data, '\n');
        }
        for (int k = 0; k < n; k++) {
            put_num(&data, eps[order[k]]);
            lipc_buf_putc(&data, '\t');
            put_num(&data, vra[order[k]]);
            lipc_buf_putc(&data, '\n');
        }

        put_script_head(&script, &rf, "verified robust accuracy against the radius", 720, 500);
        put_linetypes(&script);
        lipc_buf_puts(&script, "set datafile separator tab\n"
                               "set title 'verified robust accuracy'\n"
                               "set xlabel 'radius ε (ℓ_2)'\nset ylabel 'VRA'\n");
        lipc_buf_printf(&script, "set xrange [0:%.10g]\n", xmax > 0 ? xmax * 1.04 : 1.0);
        lipc_buf_puts(&script, "set yrange [0:1.02]\nset ytics 0,0.2,1\nset key top right\n");
        if (show_clean) {
            lipc_buf_puts(&script, "clean = ");
            put_num(&script, clean);
            lipc_buf_putc(&script, '\n');
        }
        lipc_buf_puts(&script, "plot ");
        lipc_buf name;
        lipc_buf_init(&name);
        lipc_buf_printf(&name, "%s%s", rf.base, rf.data_suffix);
        put_gp_string(&script, lipc_buf_str(&name));
        if (name.failed)
            script.failed = true;
        lipc_buf_free(&name);
        lipc_buf_puts(&script, " skip 1 using 1:2 with linespoints lt 1 title 'VRA'");
        if (show_clean)
            lipc_buf_puts(&script, ", \\\n     clean with lines lt 2 dt 2 title 'clean accuracy'");
        lipc_buf_putc(&script, '\n');
        st = write_file(rf.data, &data, d);
    }
    if (st == LIPC_OK)
        st = write_file(rf.script, &script, d);
    if (st == LIPC_OK)
        st = draw(&rf, d);
    lipc_buf_free(&data);
    lipc_buf_free(&script);
    files_free(&rf);
    lipc_free(order);
    return st;
}
