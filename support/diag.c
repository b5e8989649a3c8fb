/* support/diag.c: diagnostics for user input.
 *
 * Messages are collected while a phase runs (so one run reports every error in
 * a file) and printed at the end in the compiler format users know from C
 * compilers:
 *
 *   models/x.yaml:12:7: error: unknown key 'kernal'
 *      12 |       kernal: 3
 *         |       ^
 *   hint: did you mean 'kernel'?
 *
 * The text of each file is registered with the diagnostics so the source line
 * can be quoted. Columns count bytes; a tab in the quoted line is kept so the
 * caret lines up under it in a terminal.
 */
#include "support/support.h"

#include <stdlib.h>
#include <string.h>

struct lipc_source {
    lipc_source *next;
    char *file;
    char *text;
    size_t len;
};

void lipc_diags_init(lipc_diags *d)
{
    memset(d, 0, sizeof *d);
    d->max_errors = 50;
}

static void msg_free(lipc_diag_msg *m)
{
    while (m) {
        lipc_diag_msg *next = m->next;
        msg_free(m->notes);
        lipc_free((char *)m->loc.file);
        lipc_free(m->text);
        lipc_free(m->hint);
        lipc_free(m);
        m = next;
    }
}

void lipc_diags_free(lipc_diags *d)
{
    msg_free(d->first);
    for (lipc_source *s = d->sources; s;) {
        lipc_source *next = s->next;
        lipc_free(s->file);
        lipc_free(s->text);
        lipc_free(s);
        s = next;
    }
    lipc_diags_init(d);
}

const char *lipc_diags_add_source(lipc_diags *d, const char *file,
                                  const char *text, size_t len)
{
    for (lipc_source *s = d->sources; s; s = s->next)
        if (strcmp(s->file, file) == 0)
            return s->file;
    lipc_source *s = lipc_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->file = lipc_strdup(file);
    s->text = lipc_malloc(len + 1);
    if (!s->file || !s->text) {
        lipc_free(s->file);
        lipc_free(s->text);
        lipc_free(s);
        return NULL;
    }
    memcpy(s->text, text, len);
    s->text[len] = '\0';
    s->len = len;
    s->next = d->sources;
    d->sources = s;
    return s->file;
}

/* Every message keeps its own copy of its file name: the locations it is given
 * often point into an IR graph or a loaded file that the caller frees before
 * the diagnostics are printed. */
static lipc_loc own_loc(lipc_loc loc)
{
    if (loc.file)
        loc.file = lipc_strdup(loc.file);
    return loc;
}

static char *vformat(const char *fmt, va_list ap)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_buf_vprintf(&b, fmt, ap);
    if (b.failed) {
        lipc_buf_free(&b);
        return NULL;
    }
    return b.data ? b.data : lipc_strdup("");
}

static lipc_diag_msg *add_msg(lipc_diags *d, lipc_severity sev, lipc_loc loc,
                              const char *fmt, va_list ap)
{
    if (sev == LIPC_SEV_ERROR) {
        d->n_errors++;
        if (d->max_errors > 0 && d->n_errors > d->max_errors) {
            d->truncated = true;
            return NULL;
        }
    } else {
        d->n_warnings++;
    }
    lipc_diag_msg *m = lipc_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->sev = sev;
    m->loc = own_loc(loc);
    m->text = vformat(fmt, ap);
    if (!m->text || (loc.file && !m->loc.file)) {
        lipc_free((char *)m->loc.file);
        lipc_free(m->text);
        lipc_free(m);
        return NULL;
    }
    if (d->last)
        d->last->next = m;
    else
        d->first = m;
    d->last = m;
    return m;
}

lipc_diag_msg *lipc_diag_error(lipc_diags *d, lipc_loc loc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lipc_diag_msg *m = add_msg(d, LIPC_SEV_ERROR, loc, fmt, ap);
    va_end(ap);
    return m;
}

lipc_diag_msg *lipc_diag_warning(lipc_diags *d, lipc_loc loc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lipc_diag_msg *m = add_msg(d, LIPC_SEV_WARNING, loc, fmt, ap);
    va_end(ap);
    return m;
}

void lipc_diag_note(lipc_diag_msg *m, lipc_loc loc, const char *fmt, ...)
{
    if (!m)
        return;
    lipc_diag_msg *n = lipc_calloc(1, sizeof *n);
    if (!n)
        return;
    va_list ap;
    va_start(ap, fmt);
    n->text = vformat(fmt, ap);
    va_end(ap);
    n->loc = own_loc(loc);
    if (!n->text || (loc.file && !n->loc.file)) {
        lipc_free((char *)n->loc.file);
        lipc_free(n->text);
        lipc_free(n);
        return;
    }
    n->sev = LIPC_SEV_NOTE;
    lipc_diag_msg **tail = &m->notes;
    while (*tail)
        tail = &(*tail)->next;
    *tail = n;
}

void lipc_diag_hint(lipc_diag_msg *m, const char *fmt, ...)
{
    if (!m)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *h = vformat(fmt, ap);
    va_end(ap);
    if (!h)
        return;
    lipc_free(m->hint);
    m->hint = h;
}

/* Finds line `line` (1-based) of the registered text of `file`. */
static bool source_line(const lipc_diags *d, const char *file, int line,
                        const char **start, size_t *len)
{
    for (const lipc_source *s = d->sources; s; s = s->next) {
        if (strcmp(s->file, file) != 0)
            continue;
        const char *p = s->text, *end = s->text + s->len;
        for (int l = 1; l < line && p < end; l++) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl)
                return false;
            p = nl + 1;
        }
        if (p >= end && line > 1)
            return false;
        const char *e = p;
        while (e < end && *e != '\n' && *e != '\r')
            e++;
        *start = p;
        *len = (size_t)(e - p);
        return true;
    }
    return false;
}

static const char *sev_name(lipc_severity s)
{
    switch (s) {
    case LIPC_SEV_ERROR: return "error";
    case LIPC_SEV_WARNING: return "warning";
    case LIPC_SEV_NOTE: return "note";
    }
    return "?";
}

static void format_one(const lipc_diags *d, const lipc_diag_msg *m, lipc_buf *out)
{
    if (m->loc.file && m->loc.line > 0)
        lipc_buf_printf(out, "%s:%d:%d: ", m->loc.file, m->loc.line, m->loc.col);
    else if (m->loc.file)
        lipc_buf_printf(out, "%s: ", m->loc.file);
    else
        lipc_buf_puts(out, "lipc: ");
    lipc_buf_printf(out, "%s: %s\n", sev_name(m->sev), m->text);

    const char *line;
    size_t len;
    if (m->loc.file && m->loc.line > 0 &&
        source_line(d, m->loc.file, m->loc.line, &line, &len)) {
        /* Quote at most 200 bytes; control bytes (binary garbage) become '?'
         * so the terminal is never disturbed. */
        size_t shown = len > 200 ? 200 : len;
        lipc_buf_printf(out, "%5d | ", m->loc.line);
        for (size_t i = 0; i < shown; i++) {
            unsigned char c = (unsigned char)line[i];
            lipc_buf_putc(out, (c < 0x20 && c != '\t') || c == 0x7f ? '?' : (char)c);
        }
        if (shown < len)
            lipc_buf_puts(out, "...");
        lipc_buf_puts(out, "\n      | ");
        int col = m->loc.col > 0 ? m->loc.col : 1;
        for (int i = 1; i < col && (size_t)(i - 1) < shown; i++)
            lipc_buf_putc(out, line[i - 1] == '\t' ? '\t' : ' ');
        lipc_buf_puts(out, "^\n");
    }
    for (const lipc_diag_msg *n = m->notes; n; n = n->next)
        format_one(d, n, out);
    if (m->hint)
        lipc_buf_printf(out, "hint: %s\n", m->hint);
}

void lipc_diags_format(const lipc_diags *d, lipc_buf *out)
{
    for (const lipc_diag_msg *m = d->first; m; m = m->next)
        format_one(d, m, out);
    if (d->truncated)
        lipc_buf_printf(out, "lipc: note: too many errors; %d more not shown\n",
                        d->n_errors - d->max_errors);
    if (d->n_errors > 0)
        lipc_buf_printf(out, "%d error%s generated.\n", d->n_errors,
                        d->n_errors == 1 ? "" : "s");
}

void lipc_diags_print(const lipc_diags *d, FILE *out)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(d, &b);
    fputs(lipc_buf_str(&b), out);
    lipc_buf_free(&b);
}

/* ---- "did you mean" ----------------------------------------------------- */

int lipc_edit_distance(const char *a, const char *b, int cap)
{
    /* Optimal string alignment: insertions, deletions, substitutions and
     * swaps of two adjacent letters ("widht" -> "width") each cost 1. */
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64 || (la > lb ? la - lb : lb - la) > (size_t)cap)
        return cap + 1;
    int m[65][65];
    for (size_t i = 0; i <= la; i++)
        m[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        m[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int v = m[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (m[i - 1][j] + 1 < v)
                v = m[i - 1][j] + 1;
            if (m[i][j - 1] + 1 < v)
                v = m[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                m[i - 2][j - 2] + 1 < v)
                v = m[i - 2][j - 2] + 1;
            m[i][j] = v;
        }
    }
    return m[la][lb] > cap ? cap + 1 : m[la][lb];
}

const char *lipc_closest_word(const char *s, const char *const *words)
{
    /* A typo is at most a third of the word (at least one edit, at most 3). */
    int len = (int)strlen(s);
    int cap = len / 3;
    if (cap < 1)
        cap = 1;
    if (cap > 3)
        cap = 3;
    const char *best = NULL;
    int best_d = cap + 1;
    for (int i = 0; words && words[i]; i++) {
        int dist = lipc_edit_distance(s, words[i], cap);
        if (dist < best_d) {
            best_d = dist;
            best = words[i];
        }
    }
    return best;
}
