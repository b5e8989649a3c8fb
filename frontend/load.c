/* frontend/load.c: the model language, from a libyaml document to the IR.
 *
 * libyaml's document API gives a tree of nodes with positions (0-based marks;
 * diagnostics add 1). This file walks that tree once, checking it against the
 * language of docs/model-spec.md as it goes:
 *
 *   - every mapping is read through mapping_items(), which rejects duplicate
 *     keys (libyaml accepts them) and lets each caller reject unknown ones
 *     with a "did you mean";
 *   - every typed value goes through parse_field(), driven by the field
 *     tables of ir/ir.h (op attributes, the train section), so no op name or
 *     attribute key is compared by hand here;
 *   - `${expr}` and `$name` scalars are evaluated against the model's params
 *     (after `--set` overrides);
 *   - `repeat` and `residual` are expanded while the IR is built.
 *
 * Hostile input is bounded: nesting depth, YAML nodes visited (aliases make
 * the tree a DAG, so "billion laughs" files are cut off by the visit count),
 * IR nodes after expansion, and file size.
 */
#include "frontend/internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_FILE_BYTES (16L << 20)
#define MAX_VARS 128
#define MAX_LIST_NAMES 4096

const char *const lipc_model_keys[] = {
    "name", "description", "params", "input", "classes", "layers", "train", NULL,
};

typedef struct fe {
    lipc_diags *d;
    const char *file;
    yaml_document_t *doc;
    lipc_graph *g;
    const lipc_load_options *opt;
    int depth, max_depth;
    long visits, max_visits, max_nodes;
    bool budget_reported;
    fe_var vars[MAX_VARS];
    int n_vars;
    bool oom;
    const yaml_node_t *keys_listed; /* mapping whose allowed keys a note listed */
    const char *text;               /* the file, for positions libyaml lacks */
    size_t len;
} fe;

typedef struct kv {
    const char *key;
    yaml_node_t *key_node;
    yaml_node_t *value;
} kv;

/* ---- small helpers --------------------------------------------------------- */

static lipc_loc node_loc(const fe *f, const yaml_node_t *n)
{
    return (lipc_loc){f->file, (int)n->start_mark.line + 1, (int)n->start_mark.column + 1};
}

static lipc_loc mark_loc(const fe *f, yaml_mark_t m)
{
    return (lipc_loc){f->file, (int)m.line + 1, (int)m.column + 1};
}

/* Two owners, two copies of the file name: diagnostics point at the copy in
 * the diagnostics' source table (the graph is freed when loading fails, before
 * anyone prints them), IR nodes and residuals at the graph's own copy (the
 * graph is used after the diagnostics are gone, e.g. by `lipc dump`). */
static lipc_loc ir_loc(const fe *f, lipc_loc loc)
{
    loc.file = f->g->file;
    return loc;
}

static yaml_node_t *get(const fe *f, yaml_node_item_t i)
{
    return yaml_document_get_node(f->doc, i);
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* An empty plain scalar or `~` / `null`: the YAML spelling of "nothing". */
static bool is_null(const yaml_node_t *n)
{
    const char *s = scalar(n);
    if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

static const char *kind_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE: return is_null(n) ? "nothing" : "a scalar";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "an empty node";
    }
}

/* Records an error unless the same text was already reported at the same
 * place. Aliases make the YAML tree a DAG and `repeat` walks one list many
 * times, so one mistake can be reached along many paths; the user wants to
 * read it once. Returns NULL for a repeat (attaching notes to NULL is a no-op). */
static lipc_diag_msg *fe_error(fe *f, lipc_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static lipc_diag_msg *fe_error(fe *f, lipc_loc loc, const char *fmt, ...)
{
    lipc_buf b;
    lipc_buf_init(&b);
    va_list ap;
    va_start(ap, fmt);
    lipc_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (b.failed) {
        lipc_buf_free(&b);
        f->oom = true;
        return NULL;
    }
    const char *text = lipc_buf_str(&b);
    for (const lipc_diag_msg *m = f->d->first; m; m = m->next) {
        if (m->sev == LIPC_SEV_ERROR && m->loc.line == loc.line && m->loc.col == loc.col &&
            m->loc.file && loc.file && strcmp(m->loc.file, loc.file) == 0 &&
            strcmp(m->text, text) == 0) {
            lipc_buf_free(&b);
            return NULL;
        }
    }
    lipc_diag_msg *m = lipc_diag_error(f->d, loc, "%s", text);
    lipc_buf_free(&b);
    return m;
}

static lipc_diag_msg *type_error(fe *f, const yaml_node_t *n, const char *what,
                                 const char *expected)
{
    return fe_error(f, node_loc(f, n), "%s must be %s, got %s", what, expected, kind_name(n));
}

/* Enters a YAML node: counts the visit and the depth. False (with one error)
 * when a limit is passed; the caller must then call leave() and give up. */
static bool enter(fe *f, const yaml_node_t *n)
{
    f->depth++;
    f->visits++;
    if (f->depth > f->max_depth) {
        if (!f->budget_reported) {
            lipc_diag_msg *m =
                fe_error(f, node_loc(f, n), "the model nests deeper than %d levels", f->max_depth);
            lipc_diag_hint(m, "nest fewer blocks (residual, repeat) inside each other");
        }
        f->budget_reported = true;
        return false;
    }
    if (f->visits > f->max_visits) {
        if (!f->budget_reported) {
            lipc_diag_msg *m =
                fe_error(f, node_loc(f, n),
                         "the model is too large: more than %ld YAML nodes after expanding "
                         "aliases and `repeat`",
                         f->max_visits);
            lipc_diag_note(m, LIPC_NO_LOC,
                           "aliases (*name) count once for every place they are used, and a "
                           "repeated list once for every time it is repeated");
        }
        f->budget_reported = true;
        return false;
    }
    return true;
}

static void leave(fe *f) { f->depth--; }

static bool over_budget(const fe *f) { return f->budget_reported || f->oom; }

/* Collects the pairs of a mapping, rejecting duplicate keys and keys that are
 * not scalars. Returns the number of pairs kept (at most max), or -1 when the
 * node is not a mapping (an error is then reported with `what`). */
static int mapping_items(fe *f, const yaml_node_t *m, const char *what, kv *out,
                         int max)
{
    if (m->type != YAML_MAPPING_NODE) {
        type_error(f, m, what, "a mapping");
        return -1;
    }
    int n = 0;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start;
         p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = get(f, p->key), *v = get(f, p->value);
        if (!k || !v)
            continue;
        const char *key = scalar(k);
        if (!key) {
            fe_error(f, node_loc(f, k), "keys of %s must be plain words, got %s", what,
                     kind_name(k));
            continue;
        }
        bool dup = false;
        for (int i = 0; i < n; i++) {
            if (strcmp(out[i].key, key) == 0) {
                lipc_diag_msg *e =
                    fe_error(f, node_loc(f, k), "duplicate key '%s' in %s", key, what);
                lipc_diag_note(e, node_loc(f, out[i].key_node), "first given here");
                dup = true;
                break;
            }
        }
        if (dup)
            continue;
        if (n == max) {
            fe_error(f, node_loc(f, k), "%s has more than %d keys", what, max);
            break;
        }
        out[n++] = (kv){key, k, v};
    }
    return n;
}

/* The closest word to s: a plausible typo (lipc_closest_word), else a word
 * that s abbreviates or extends by at least 3 letters (`conv` for `conv2d`). */
static const char *suggest(const char *s, const char *const *words)
{
    const char *best = lipc_closest_word(s, words);
    if (best)
        return best;
    size_t len = strlen(s);
    for (int i = 0; words && words[i]; i++) {
        size_t wl = strlen(words[i]);
        size_t shorter = len < wl ? len : wl;
        if (shorter >= 3 && strncmp(s, words[i], shorter) == 0)
            return words[i];
    }
    return NULL;
}

/* An unknown key of mapping `m`: a "did you mean" when one is close, else the
 * allowed keys (listed once per mapping, not under every stray key). */
static lipc_diag_msg *unknown_key(fe *f, const yaml_node_t *m_node, const kv *item,
                                  const char *what, const char *const *allowed)
{
    lipc_diag_msg *m =
        fe_error(f, node_loc(f, item->key_node), "unknown key '%s' in %s", item->key, what);
    const char *best = suggest(item->key, allowed);
    if (best) {
        lipc_diag_hint(m, "did you mean '%s'?", best);
    } else if (m && f->keys_listed != m_node) {
        f->keys_listed = m_node;
        lipc_buf b;
        lipc_buf_init(&b);
        for (int i = 0; allowed[i]; i++)
            lipc_buf_printf(&b, "%s%s", i ? ", " : "", allowed[i]);
        lipc_diag_note(m, LIPC_NO_LOC, "allowed keys: %s", lipc_buf_str(&b));
        lipc_buf_free(&b);
    }
    return m;
}

static const kv *find_item(const kv *items, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(items[i].key, key) == 0)
            return &items[i];
    return NULL;
}

/* ---- numbers and expressions ------------------------------------------------ */

/* Does the expression use a parameter whose --set value was rejected (NaN)? */
static bool uses_bad_set(const fe *f, const char *expr)
{
    for (int i = 0; i < f->n_vars; i++) {
        if (!isnan(f->vars[i].value))
            continue;
        size_t len = strlen(f->vars[i].name);
        for (const char *p = strstr(expr, f->vars[i].name); p; p = strstr(p + 1, f->vars[i].name))
            if ((p == expr || !(isalnum((unsigned char)p[-1]) || p[-1] == '_')) &&
                !(isalnum((unsigned char)p[len]) || p[len] == '_'))
                return true;
    }
    return false;
}

/* Reads a number from a scalar. A number field takes a plain number or an
 * expression over the model's params: `64`, `width`, `2 * width`, and the
 * spellings `$width` and `${2 * width}` (in a flow mapping `{...}` braces are
 * YAML syntax, so there the plain form `2 * width` or quotes are needed). */
static bool read_number(fe *f, const yaml_node_t *n, const char *what, double *out)
{
    const char *s = scalar(n);
    if (!s || is_null(n)) {
        type_error(f, n, what, "a number");
        return false;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != s && *end == '\0' && errno != ERANGE && isfinite(v)) {
        *out = v;
        return true;
    }
    size_t len = strlen(s);
    int offset = 0;
    if (s[0] == '$') {
        offset = 1;
        if (s[1] == '{') {
            if (len < 3 || s[len - 1] != '}') {
                lipc_diag_msg *m =
                    fe_error(f, node_loc(f, n), "unterminated expression in %s: '%s'", what, s);
                lipc_diag_hint(m, "write ${expression} or just the expression, e.g. 2 * width");
                return false;
            }
            offset = 2;
            len -= 1;
        }
    }
    char *body = lipc_malloc(len + 1);
    if (!body) {
        f->oom = true;
        return false;
    }
    memcpy(body, s + offset, len - (size_t)offset);
    body[len - (size_t)offset] = '\0';
    const char *err, *unknown;
    int at, ulen;
    bool ok = lipc_expr_eval(body, f->vars, f->n_vars, &v, &err, &at, &unknown, &ulen);
    if (!ok && !unknown && uses_bad_set(f, body)) {
        /* a parameter whose --set value was rejected: already reported */
        lipc_free(body);
        return false;
    }
    if (!ok) {
        lipc_loc loc = node_loc(f, n);
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            loc.col += offset + at;
        else if (n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                 n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE)
            loc.col += 1 + offset + at;
        if (unknown) {
            char name[64];
            snprintf(name, sizeof name, "%.*s", ulen > 60 ? 60 : ulen, unknown);
            const char *names[MAX_VARS + 1];
            for (int i = 0; i < f->n_vars; i++)
                names[i] = f->vars[i].name;
            names[f->n_vars] = NULL;
            const char *best = lipc_closest_word(name, names);
            bool lone_word = offset == 0 && at == 0 && (size_t)ulen == strlen(body);
            lipc_diag_msg *m;
            if (lone_word && !best) {
                /* Most likely text where a number belongs, not a parameter. */
                m = fe_error(f, loc, "%s must be a number, got '%s'", what, name);
                lipc_diag_note(m, LIPC_NO_LOC,
                               "a word here names a parameter, and the model "
                               "declares no parameter '%s'",
                               name);
            } else {
                m = fe_error(f, loc, "unknown parameter '%s' in %s", name, what);
                if (best)
                    lipc_diag_hint(m, "did you mean '%s'?", best);
                else
                    lipc_diag_hint(m, "declare it under `params:` at the top of the file");
            }
        } else {
            fe_error(f, loc, "bad expression in %s: %s", what, err);
        }
    }
    lipc_free(body);
    *out = v;
    return ok;
}

#define MAX_INT_VALUE (1 << 30)

/* How a value the user gave reads in a message: as written when it was a
 * number (a double would print 99999999999999999999 as 1e+20), else the value
 * of the expression and the expression. */
static void describe_value(const yaml_node_t *n, double v, char *buf, size_t size)
{
    const char *s = scalar(n);
    if (!s)
        s = "";
    const char *more = strlen(s) > 40 ? "..." : "";
    char *end;
    strtod(s, &end);
    if (end != s && *end == '\0')
        snprintf(buf, size, "%.40s%s", s, more);
    else
        snprintf(buf, size, "%.15g (from '%.40s%s')", v, s, more);
}

static bool read_int(fe *f, const yaml_node_t *n, const char *what, int min, int *out)
{
    double v;
    if (!read_number(f, n, what, &v))
        return false;
    char given[128];
    describe_value(n, v, given, sizeof given);
    if (v != floor(v)) {
        fe_error(f, node_loc(f, n), "%s must be a whole number, got %s", what, given);
        return false;
    }
    if (v < min) {
        fe_error(f, node_loc(f, n), "%s must be at least %d, got %s", what, min, given);
        return false;
    }
    if (v > (double)MAX_INT_VALUE) {
        fe_error(f, node_loc(f, n), "%s is too large: %s (at most %d)", what, given, MAX_INT_VALUE);
        return false;
    }
    *out = (int)v;
    return true;
}

/* ---- typed fields ------------------------------------------------------------ */

static const char *const padding_words[] = {"same", "valid", NULL};
static const char *const bool_words[] = {"true", "false", NULL};

static bool parse_enum(fe *f, const yaml_node_t *v, const char *what,
                       const char *const *names, int *out)
{
    const char *s = scalar(v);
    if (!s || is_null(v)) {
        type_error(f, v, what, "a word");
        return false;
    }
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], s) == 0) {
            *out = i;
            return true;
        }
    }
    lipc_buf b;
    lipc_buf_init(&b);
    for (int i = 0; names[i]; i++)
        lipc_buf_printf(&b, "%s%s", i ? " | " : "", names[i]);
    lipc_diag_msg *m =
        fe_error(f, node_loc(f, v), "%s must be one of %s, got '%s'", what, lipc_buf_str(&b), s);
    lipc_buf_free(&b);
    const char *best = lipc_closest_word(s, names);
    if (best)
        lipc_diag_hint(m, "did you mean '%s'?", best);
    return false;
}

/* Reads a list of 1..max integers (a lone scalar counts as one). */
static int read_int_list(fe *f, const yaml_node_t *v, const char *what, int min,
                         int max, int *out)
{
    if (v->type == YAML_SCALAR_NODE)
        return read_int(f, v, what, min, &out[0]) ? 1 : -1;
    if (v->type != YAML_SEQUENCE_NODE) {
        type_error(f, v, what, "a number or a list of numbers");
        return -1;
    }
    int n = 0;
    bool ok = true;
    for (yaml_node_item_t *it = v->data.sequence.items.start;
         it < v->data.sequence.items.top; it++) {
        yaml_node_t *e = get(f, *it);
        if (!e)
            continue;
        if (n == max) {
            fe_error(f, node_loc(f, e), "%s takes at most %d numbers", what, max);
            return -1;
        }
        if (!enter(f, e)) {
            leave(f);
            return -1;
        }
        ok &= read_int(f, e, what, min, &out[n++]);
        leave(f);
    }
    if (n == 0) {
        fe_error(f, node_loc(f, v), "%s must not be an empty list", what);
        return -1;
    }
    return ok ? n : -1;
}

static bool parse_field(fe *f, const lipc_field *fd, const yaml_node_t *v, void *record,
                        const char *owner)
{
    char what[96];
    snprintf(what, sizeof what, "'%s' of %s", fd->key, owner);
    char *at = (char *)record + fd->offset;
    switch (fd->kind) {
    case LIPC_FIELD_INT:
        return read_int(f, v, what, fd->min, (int *)at);
    case LIPC_FIELD_INT2: {
        int vals[2];
        int n = read_int_list(f, v, what, fd->min, 2, vals);
        if (n < 0)
            return false;
        ((int *)at)[0] = vals[0];
        ((int *)at)[1] = n == 2 ? vals[1] : vals[0];
        return true;
    }
    case LIPC_FIELD_PADDING: {
        lipc_padding *p = (lipc_padding *)at;
        const char *s = scalar(v);
        if (s && !is_null(v) && (isalpha((unsigned char)s[0]))) {
            int w;
            if (!parse_enum(f, v, what, padding_words, &w))
                return false;
            p->mode = w == 0 ? LIPC_PAD_SAME : LIPC_PAD_VALID;
            return true;
        }
        int vals[2];
        int n = read_int_list(f, v, what, 0, 2, vals);
        if (n < 0)
            return false;
        p->mode = LIPC_PAD_EXPLICIT;
        p->amount[0] = vals[0];
        p->amount[1] = n == 2 ? vals[1] : vals[0];
        return true;
    }
    case LIPC_FIELD_FLOAT:
        return read_number(f, v, what, (double *)at);
    case LIPC_FIELD_FLOAT2: {
        if (v->type != YAML_SEQUENCE_NODE ||
            v->data.sequence.items.top - v->data.sequence.items.start != 2) {
            type_error(f, v, what, "a list of two numbers [low, high]");
            return false;
        }
        double *d = (double *)at;
        bool ok = true;
        for (int i = 0; i < 2; i++) {
            yaml_node_t *e = get(f, v->data.sequence.items.start[i]);
            ok = ok && e && read_number(f, e, what, &d[i]);
        }
        return ok;
    }
    case LIPC_FIELD_BOOL: {
        int w;
        if (!parse_enum(f, v, what, bool_words, &w))
            return false;
        *(bool *)at = w == 0;
        return true;
    }
    case LIPC_FIELD_ENUM:
        return parse_enum(f, v, what, fd->names, (int *)at);
    case LIPC_FIELD_INTLIST: {
        lipc_intlist *l = (lipc_intlist *)at;
        int n = read_int_list(f, v, what, fd->min, 4, l->v);
        if (n < 0)
            return false;
        l->n = n;
        return true;
    }
    }
    return false;
}

static void field_keys(const lipc_field *fields, const char **out, int max)
{
    int n = 0;
    for (int i = 0; fields && fields[i].key && n < max - 1; i++)
        out[n++] = fields[i].key;
    out[n] = NULL;
}

/* Reads a mapping of fields into record. `seen` (optional, per field) records
 * which were given. Unknown keys are reported against the field table. */
static bool parse_record(fe *f, const yaml_node_t *m, const lipc_field *fields,
                         void *record, const char *owner, bool *seen)
{
    kv items[64];
    int n = mapping_items(f, m, owner, items, 64);
    if (n < 0)
        return false;
    bool ok = true;
    for (int i = 0; i < n; i++) {
        const lipc_field *fd = lipc_field_find(fields, items[i].key);
        if (!fd) {
            const char *keys[64];
            field_keys(fields, keys, 64);
            unknown_key(f, m, &items[i], owner, keys);
            ok = false;
            continue;
        }
        if (!enter(f, items[i].value)) {
            leave(f);
            return false;
        }
        bool field_ok = parse_field(f, fd, items[i].value, record, owner);
        leave(f);
        ok &= field_ok;
        if (field_ok && seen)
            seen[fd - fields] = true;
    }
    return ok;
}

/* ---- names ------------------------------------------------------------------ */

/* The names given so far in one list of layers, to reject a name used twice.
 * It grows as needed: build_list runs once per list per repeat iteration, and
 * most lists are short. Past MAX_LIST_NAMES names the rest go unchecked, which
 * keeps the quadratic search bounded on absurd lists. */
typedef struct name_entry {
    const char *name;
    lipc_loc loc;
} name_entry;

typedef struct name_table {
    name_entry *e;
    int n, cap;
    int counter[LIPC_OP_COUNT + 2];   /* per op, then residual, repeat */
} name_table;

#define COUNTER_RESIDUAL LIPC_OP_COUNT
#define COUNTER_REPEAT (LIPC_OP_COUNT + 1)

static bool valid_name(const char *s)
{
    if (!*s || strlen(s) > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            return false;
    return true;
}

/* Picks the local name of a layer: the given one (checked) or "<kind>_<k>"
 * where k counts layers of that kind in this list, so inserting a layer of
 * another kind renames nothing. Returns the full dotted name (arena). */
static const char *layer_name(fe *f, name_table *t, const char *scope, int counter,
                              const char *kind, const yaml_node_t *given, lipc_loc loc)
{
    char local[96];
    int index = t->counter[counter]++;
    if (given) {
        const char *s = scalar(given);
        if (!s || !valid_name(s)) {
            lipc_diag_msg *m = fe_error(f, node_loc(f, given),
                                        "a layer name must be a word of letters, digits, '_' "
                                        "and '-' (at most 64 characters), got '%.64s%s'",
                                        s ? s : "", s && strlen(s) > 64 ? "..." : "");
            if (s && strchr(s, '.'))
                lipc_diag_hint(m, "dots are added by lipc to join the names of nested blocks");
            snprintf(local, sizeof local, "%s_%d", kind, index);
        } else {
            snprintf(local, sizeof local, "%s", s);
            loc = node_loc(f, given);
        }
    } else {
        snprintf(local, sizeof local, "%s_%d", kind, index);
    }
    if (!scope && strcmp(local, "input") == 0) {
        lipc_diag_msg *m = fe_error(f, loc, "the name 'input' is the model's input");
        lipc_diag_hint(m, "pick another name for this layer");
    }
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->e[i].name, local) == 0) {
            lipc_diag_msg *m = fe_error(f, loc, "two layers in one list are named '%s'", local);
            lipc_diag_note(m, t->e[i].loc, "the other one is here");
            break;
        }
    }
    const char *full = scope ? lipc_arena_printf(&f->g->arena, "%s.%s", scope, local)
                             : lipc_arena_strdup(&f->g->arena, local);
    if (!full) {
        f->oom = true;
        return "?";
    }
    if (t->n == t->cap && t->cap < MAX_LIST_NAMES) {
        int cap = t->cap ? 2 * t->cap : 8;
        name_entry *e = lipc_realloc(t->e, (size_t)cap * sizeof *e);
        if (!e) {
            f->oom = true;
            return full;
        }
        t->e = e;
        t->cap = cap;
    }
    if (t->n < t->cap)
        t->e[t->n++] = (name_entry){full + (scope ? strlen(scope) + 1 : 0), loc};
    return full;
}

/* ---- layers ------------------------------------------------------------------- */

typedef struct build_ctx {
    const char *scope;        /* dotted prefix of names, NULL at top level */
    lipc_residual *res;       /* innermost residual being built */
    bool preprocess;          /* input.preprocess: only bound-keeping ops */
} build_ctx;

static lipc_node *build_list(fe *f, const yaml_node_t *seq, lipc_node *x,
                             build_ctx ctx, const char *what);

static lipc_node *new_node(fe *f, lipc_op op, const char *name, lipc_loc loc,
                           lipc_node *x, build_ctx ctx)
{
    lipc_node *n = lipc_graph_add_node(f->g, op, name, ir_loc(f, loc));
    if (!n) {
        f->oom = true;
        return NULL;
    }
    if (x) {
        n->in[0] = x;
        n->n_in = 1;
    }
    n->scope = ctx.res;
    return n;
}

static long node_count(const fe *f) { return f->g->next_id; }

static bool check_node_budget(fe *f, lipc_loc loc)
{
    if (node_count(f) < f->max_nodes)
        return true;
    if (!f->budget_reported) {
        lipc_diag_msg *m =
            fe_error(f, loc,
                     "the model is too large: more than %ld layers after expanding `repeat` "
                     "and aliases",
                     f->max_nodes);
        lipc_diag_hint(m, "check the counts given to `repeat` and the blocks reused through "
                          "aliases (*name)");
    }
    f->budget_reported = true;
    return false;
}

/* One op layer: `op`, `op: scalar`, `op: {attrs}` or `op:` (no attributes). */
static lipc_node *build_op(fe *f, lipc_op op, const kv *op_item, const yaml_node_t *item,
                           const yaml_node_t *given_name, name_table *names,
                           lipc_node *x, build_ctx ctx)
{
    const lipc_op_desc *desc = lipc_op_info(op);
    lipc_loc loc = op_item ? node_loc(f, op_item->key_node) : node_loc(f, item);
    if (ctx.preprocess && !desc->preprocess) {
        lipc_diag_msg *m = fe_error(f, loc, "'%s' is not a preprocessing op", desc->name);
        lipc_buf ok_ops;
        lipc_buf_init(&ok_ops);
        for (int o = 0; o < LIPC_OP_COUNT; o++)
            if (lipc_op_info((lipc_op)o)->user && lipc_op_info((lipc_op)o)->preprocess)
                lipc_buf_printf(&ok_ops, "%s%s", ok_ops.len ? ", " : "",
                                lipc_op_info((lipc_op)o)->name);
        lipc_diag_note(m, LIPC_NO_LOC,
                       "input.preprocess takes only ops that keep the Lipschitz bound: %s",
                       lipc_buf_str(&ok_ops));
        lipc_buf_free(&ok_ops);
        lipc_diag_hint(m, "move it to `layers:`");
        return x;
    }
    if (!check_node_budget(f, loc))
        return x;
    const char *name = layer_name(f, names, ctx.scope, op, desc->name, given_name, loc);
    lipc_node *n = new_node(f, op, name, loc, x, ctx);
    if (!n)
        return x;
    if (desc->defaults)
        desc->defaults(&n->a);

    bool seen[32] = {false};
    const yaml_node_t *v = op_item ? op_item->value : NULL;
    char owner[96];
    snprintf(owner, sizeof owner, "%s", desc->name);
    bool ok = true;
    if (v && v->type == YAML_MAPPING_NODE) {
        /* `name:` inside the attributes is a common slip: say where it goes. */
        kv items[64];
        int k = mapping_items(f, v, owner, items, 64);
        for (int i = 0; i < k; i++) {
            if (strcmp(items[i].key, "name") == 0) {
                lipc_diag_msg *m =
                    fe_error(f, node_loc(f, items[i].key_node),
                             "'name' goes beside the op key, not among its attributes");
                lipc_diag_hint(m, "write `- %s: {...}` and `name: %s` on the next line, "
                                  "indented like the op",
                               desc->name, scalar(items[i].value) ? scalar(items[i].value) : "...");
                ok = false;
                continue;
            }
            const lipc_field *fd = lipc_field_find(desc->fields, items[i].key);
            if (!fd) {
                const char *keys[64];
                field_keys(desc->fields, keys, 64);
                if (!keys[0]) {
                    fe_error(f, node_loc(f, items[i].key_node), "'%s' takes no attributes",
                             desc->name);
                } else {
                    unknown_key(f, v, &items[i], owner, keys);
                }
                ok = false;
                continue;
            }
            if (!enter(f, items[i].value)) {
                leave(f);
                return n;
            }
            bool field_ok = parse_field(f, fd, items[i].value, &n->a, owner);
            leave(f);
            ok &= field_ok;
            if (field_ok)
                seen[fd - desc->fields] = true;
        }
    } else if (v && !is_null(v)) {
        const lipc_field *fd = desc->primary ? lipc_field_find(desc->fields, desc->primary) : NULL;
        if (fd && v->type == YAML_SCALAR_NODE) {
            if (parse_field(f, fd, v, &n->a, owner))
                seen[fd - desc->fields] = true;
            else
                ok = false;
        } else {
            lipc_diag_msg *m;
            if (!desc->fields || !desc->fields[0].key)
                m = fe_error(f, node_loc(f, v), "'%s' takes no attributes", desc->name);
            else
                m = type_error(f, v, owner, "a mapping of attributes");
            if (desc->fields && desc->fields[0].key)
                lipc_diag_hint(m, "e.g. `- %s: {%s: ...}`", desc->name, desc->fields[0].key);
            ok = false;
        }
    }
    /* Required attributes, all named in one message, each with its meaning, and
     * an example that names exactly the missing ones. */
    if (ok && desc->fields) {
        lipc_buf missing, example;
        lipc_buf_init(&missing);
        lipc_buf_init(&example);
        int n_missing = 0, last = -1;
        for (int i = 0; desc->fields[i].key; i++) {
            if (!desc->fields[i].required || seen[i])
                continue;
            lipc_buf_printf(&missing, "%s'%s'", n_missing ? " and " : "", desc->fields[i].key);
            lipc_buf_printf(&example, "%s%s: ...", n_missing ? ", " : "", desc->fields[i].key);
            n_missing++;
            last = i;
        }
        if (n_missing) {
            lipc_diag_msg *m = fe_error(f, loc, "%s needs %s", desc->name, lipc_buf_str(&missing));
            for (int i = 0; desc->fields[i].key && n_missing > 1; i++)
                if (desc->fields[i].required && !seen[i] && desc->fields[i].help)
                    lipc_diag_note(m, LIPC_NO_LOC, "'%s': %s", desc->fields[i].key,
                                   desc->fields[i].help);
            if (n_missing == 1 && desc->fields[last].help)
                lipc_diag_note(m, LIPC_NO_LOC, "'%s': %s", desc->fields[last].key,
                               desc->fields[last].help);
            lipc_diag_hint(m, "e.g. `- %s: {%s}`", desc->name, lipc_buf_str(&example));
        }
        lipc_buf_free(&missing);
        lipc_buf_free(&example);
    }
    return n;
}

/* `residual: [body]` (and an optional `name:` beside it). */
static lipc_node *build_residual(fe *f, const kv *item, const yaml_node_t *given_name,
                                 name_table *names, lipc_node *x, build_ctx ctx)
{
    lipc_loc loc = node_loc(f, item->key_node);
    if (ctx.preprocess) {
        lipc_diag_msg *m = fe_error(f, loc, "a residual is not a preprocessing op");
        lipc_diag_hint(m, "move it to `layers:`");
        return x;
    }
    const char *name = layer_name(f, names, ctx.scope, COUNTER_RESIDUAL, "residual",
                                  given_name, loc);
    const yaml_node_t *body = item->value;
    if (body->type != YAML_SEQUENCE_NODE) {
        lipc_diag_msg *m = type_error(f, body, "the body of a residual", "a list of layers");
        lipc_diag_hint(m, "write `- residual:` and its layers below it, each starting with '-'");
        return x;
    }
    if (body->data.sequence.items.top == body->data.sequence.items.start) {
        lipc_diag_msg *m = fe_error(f, loc, "the body of residual '%s' is empty", name);
        lipc_diag_note(m, LIPC_NO_LOC, "a residual computes x + body(x)");
        lipc_diag_hint(m, "give it layers, e.g. `- residual: [{conv2d: {out: 64, kernel: 3}}]`, "
                          "or remove it");
        return x;
    }
    lipc_residual *r = lipc_graph_add_residual(f->g, name, ir_loc(f, loc));
    if (!r) {
        f->oom = true;
        return x;
    }
    r->parent = ctx.res;
    r->skip = x;
    build_ctx inner = {name, r, false};
    lipc_node *y = build_list(f, body, x, inner, "the body of a residual");
    if (over_budget(f))
        return x;
    if (!check_node_budget(f, loc))
        return x;
    lipc_node *add = new_node(f, LIPC_OP_ADD, name, loc, x, ctx);
    if (!add)
        return x;
    add->in[1] = y;
    add->n_in = 2;
    add->closes = r;
    r->add = add;
    return add;
}

/* `repeat: N` with `layers: [...]` and an optional `name:`. */
static lipc_node *build_repeat(fe *f, const kv *item, const kv *items, int n_items,
                               const yaml_node_t *given_name, name_table *names,
                               lipc_node *x, build_ctx ctx)
{
    lipc_loc loc = node_loc(f, item->key_node);
    const char *name = layer_name(f, names, ctx.scope, COUNTER_REPEAT, "repeat",
                                  given_name, loc);
    int count;
    if (!read_int(f, item->value, "the count of repeat", 0, &count))
        return x;
    const kv *layers = find_item(items, n_items, "layers");
    if (!layers) {
        lipc_diag_msg *m = fe_error(f, loc, "repeat needs 'layers'");
        lipc_diag_hint(m, "write `layers:` beside `repeat:` with the layers to repeat");
        return x;
    }
    if (layers->value->type != YAML_SEQUENCE_NODE) {
        type_error(f, layers->value, "'layers' of repeat", "a list of layers");
        return x;
    }
    if (layers->value->data.sequence.items.top == layers->value->data.sequence.items.start) {
        lipc_diag_msg *m = fe_error(f, node_loc(f, layers->value),
                                    "the layers of repeat '%s' "
                                    "are an empty list",
                                    name);
        lipc_diag_hint(m, "give the layers to repeat, or remove the repeat");
        return x;
    }
    if (count == 0) {
        /* Nothing to build, but a mistake in the body must not hide behind a
         * zero count (`--set depth=0`): build the body once to check it, then
         * take its nodes and residual records out again. */
        lipc_node *last = f->g->last;
        int n_res = f->g->n_res;
        const char *scope = lipc_arena_printf(&f->g->arena, "%s.0", name);
        if (!scope) {
            f->oom = true;
            return x;
        }
        build_list(f, layers->value, x, (build_ctx){scope, ctx.res, ctx.preprocess},
                   "the layers of a repeat");
        while (f->g->last && f->g->last != last)
            lipc_graph_unlink(f->g, f->g->last);
        f->g->n_res = n_res;
        return x;
    }
    for (int i = 0; i < count && !over_budget(f); i++) {
        /* Each pass over the body counts as a visit, so that a huge count over
         * a body that adds nothing (an inner `repeat: 0`) still hits a limit. */
        bool within = enter(f, layers->value);
        leave(f);
        if (!within)
            break;
        const char *scope = lipc_arena_printf(&f->g->arena, "%s.%d", name, i);
        if (!scope) {
            f->oom = true;
            return x;
        }
        int errors_before = f->d->n_errors;
        build_ctx inner = {scope, ctx.res, ctx.preprocess};
        x = build_list(f, layers->value, x, inner, "the layers of a repeat");
        /* Errors in the body would repeat once per iteration: report them once. */
        if (f->d->n_errors > errors_before)
            break;
    }
    return x;
}

/* The words that may start a layer: the user-writable ops, residual, repeat. */
static void layer_words(const char **words, int max)
{
    const char *const *ops = lipc_op_user_names();
    int w = 0;
    for (int j = 0; ops[j] && w < max - 3; j++)
        words[w++] = ops[j];
    words[w++] = "residual";
    words[w++] = "repeat";
    words[w] = NULL;
}

/* `s` was written where an op goes and is none: say so, with the closest op or
 * the list of ops. An internal op (add) gets its own explanation. */
static void unknown_op(fe *f, lipc_loc loc, const char *s)
{
    lipc_op op = lipc_op_lookup(s);
    if (op != LIPC_OP_COUNT) {
        lipc_diag_msg *m = fe_error(f, loc,
                                    "'%s' is internal to lipc and cannot be written "
                                    "in a model",
                                    s);
        if (op == LIPC_OP_ADD)
            lipc_diag_hint(m, "to add a block's input to its output, write a residual: "
                              "`- residual:` with the block's layers below it");
        return;
    }
    lipc_diag_msg *m = fe_error(f, loc, "unknown op '%s'", s);
    const char *words[LIPC_OP_COUNT + 3];
    layer_words(words, LIPC_OP_COUNT + 3);
    const char *best = suggest(s, words);
    if (best) {
        lipc_diag_hint(m, "did you mean '%s'?", best);
        return;
    }
    lipc_buf b;
    lipc_buf_init(&b);
    for (int i = 0; words[i]; i++)
        lipc_buf_printf(&b, "%s%s", i ? ", " : "", words[i]);
    lipc_diag_note(m, LIPC_NO_LOC, "a layer is one of: %s (`lipc ops` describes them)",
                   lipc_buf_str(&b));
    lipc_buf_free(&b);
}

/* One item of a layer list. */
static lipc_node *build_item(fe *f, const yaml_node_t *item, name_table *names,
                             lipc_node *x, build_ctx ctx)
{
    if (item->type == YAML_SCALAR_NODE && !is_null(item)) {
        const char *s = scalar(item);
        lipc_op op = lipc_op_lookup(s);
        if (op != LIPC_OP_COUNT && lipc_op_info(op)->user)
            return build_op(f, op, NULL, item, NULL, names, x, ctx);
        if (!strcmp(s, "residual") || !strcmp(s, "repeat")) {
            lipc_diag_msg *m = fe_error(f, node_loc(f, item), "'%s' needs a body", s);
            lipc_diag_hint(m, !strcmp(s, "residual")
                                  ? "write `- residual:` followed by a list of layers"
                                  : "write `- repeat: N` and `layers:` beside it");
            return x;
        }
        unknown_op(f, node_loc(f, item), s);
        return x;
    }
    if (item->type != YAML_MAPPING_NODE) {
        lipc_diag_msg *m =
            fe_error(f, node_loc(f, item), "expected a layer, got %s", kind_name(item));
        if (item->type == YAML_SEQUENCE_NODE)
            lipc_diag_hint(m, "lists of layers do not nest: write the layers directly, or "
                              "group them with `- repeat: 1` and `layers:`");
        else
            lipc_diag_hint(m, "a layer is an op name (`- minmax`) or an op with attributes "
                              "(`- conv2d: {out: 64, kernel: 3}`)");
        return x;
    }
    kv items[16];
    int errors_before = f->d->n_errors;
    int n = mapping_items(f, item, "a layer", items, 16);
    if (n < 0)
        return x;
    /* A key that is not a word was reported; "names no op" would only repeat it. */
    bool bad = f->d->n_errors > errors_before;
    const kv *kind = NULL;
    const yaml_node_t *given_name = NULL;
    lipc_op op = LIPC_OP_COUNT;
    /* First the op, so the other keys can be judged against it. */
    for (int i = 0; i < n; i++) {
        lipc_op o = lipc_op_lookup(items[i].key);
        if (!kind && ((o != LIPC_OP_COUNT && lipc_op_info(o)->user) ||
                      !strcmp(items[i].key, "residual") || !strcmp(items[i].key, "repeat"))) {
            kind = &items[i];
            op = o;
        }
    }
    for (int i = 0; i < n; i++) {
        const char *k = items[i].key;
        lipc_op o = lipc_op_lookup(k);
        bool is_kind = (o != LIPC_OP_COUNT && lipc_op_info(o)->user) ||
                       !strcmp(k, "residual") || !strcmp(k, "repeat");
        if (is_kind) {
            if (kind != &items[i]) {
                lipc_diag_msg *m = fe_error(f, node_loc(f, items[i].key_node),
                                            "one layer names two ops, '%s' and '%s'", kind->key, k);
                lipc_diag_hint(m, "start each layer with its own '-'");
                bad = true;
            }
        } else if (!strcmp(k, "name")) {
            given_name = items[i].value;
        } else if (!strcmp(k, "layers")) {
            /* checked below: only repeat takes it */
        } else if (!kind) {
            unknown_op(f, node_loc(f, items[i].key_node), k);
            bad = true;
        } else if (op != LIPC_OP_COUNT && lipc_field_find(lipc_op_info(op)->fields, k)) {
            /* `- conv2d:` then `out: 8` indented like the op: a sibling key. */
            lipc_diag_msg *m = fe_error(f, node_loc(f, items[i].key_node),
                                        "'%s' is an attribute of %s, but it is written beside "
                                        "the op, not under it",
                                        k, kind->key);
            lipc_diag_hint(m, "indent the attributes under `%s:`, or write `- %s: {%s: ...}`",
                           kind->key, kind->key, k);
            bad = true;
        } else {
            static const char *const layer_keys[] = {"name", "layers", NULL};
            lipc_diag_msg *m = fe_error(f, node_loc(f, items[i].key_node),
                                        "unknown key '%s' beside the op '%s'", k, kind->key);
            const char *best = suggest(k, layer_keys);
            if (best)
                lipc_diag_hint(m, "did you mean '%s'?", best);
            else
                lipc_diag_note(m, LIPC_NO_LOC,
                               "beside its op a layer takes only `name:` "
                               "(and `layers:` for repeat)");
            bad = true;
        }
    }
    if (!kind) {
        if (!bad)
            fe_error(f, node_loc(f, item),
                     "this layer names no op (give one of the ops, residual or repeat)");
        return x;
    }
    const kv *layers = find_item(items, n, "layers");
    if (layers && strcmp(kind->key, "repeat") != 0) {
        lipc_diag_msg *m = fe_error(f, node_loc(f, layers->key_node),
                                    "'layers' belongs to repeat, not to '%s'", kind->key);
        if (!strcmp(kind->key, "residual"))
            lipc_diag_hint(m, "a residual's layers are the list given to `residual:` itself");
        bad = true;
    }
    if (given_name && !scalar(given_name)) {
        type_error(f, given_name, "a layer's name", "a word");
        given_name = NULL;
        bad = true;
    }
    if (bad)
        return x;
    if (!strcmp(kind->key, "residual"))
        return build_residual(f, kind, given_name, names, x, ctx);
    if (!strcmp(kind->key, "repeat"))
        return build_repeat(f, kind, items, n, given_name, names, x, ctx);
    return build_op(f, op, kind, item, given_name, names, x, ctx);
}

static lipc_node *build_list(fe *f, const yaml_node_t *seq, lipc_node *x,
                             build_ctx ctx, const char *what)
{
    if (seq->type != YAML_SEQUENCE_NODE) {
        type_error(f, seq, what, "a list of layers");
        return x;
    }
    name_table names = {0};
    for (yaml_node_item_t *it = seq->data.sequence.items.start;
         it < seq->data.sequence.items.top && !over_budget(f); it++) {
        yaml_node_t *item = get(f, *it);
        if (!item)
            continue;
        if (enter(f, item))
            x = build_item(f, item, &names, x, ctx);
        leave(f);
    }
    lipc_free(names.e);
    return x;
}

/* ---- top level --------------------------------------------------------------------- */

static bool is_identifier(const char *s)
{
    if (!isalpha((unsigned char)*s) && *s != '_')
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

static bool add_var(fe *f, const char *name, double value, lipc_loc loc)
{
    for (int i = 0; i < f->n_vars; i++) {
        if (strcmp(f->vars[i].name, name) == 0) {
            fe_error(f, loc, "parameter '%s' is defined twice", name);
            return false;
        }
    }
    if (f->n_vars == MAX_VARS) {
        fe_error(f, loc, "too many parameters (at most %d)", MAX_VARS);
        return false;
    }
    const char *copy = lipc_arena_strdup(&f->g->arena, name);
    if (!copy) {
        f->oom = true;
        return false;
    }
    f->vars[f->n_vars++] = (fe_var){copy, value};
    return true;
}

/* params: name -> number or expression, evaluated in order, each seeing the
 * ones before it; `--set name=value` replaces a parameter's value. */
static void load_params(fe *f, const yaml_node_t *m, bool *set_used)
{
    kv items[MAX_VARS];
    int n = mapping_items(f, m, "params", items, MAX_VARS);
    for (int i = 0; i < n; i++) {
        lipc_loc loc = node_loc(f, items[i].key_node);
        if (!is_identifier(items[i].key)) {
            fe_error(f, loc, "parameter names are identifiers (letters, digits, '_'), got '%s'",
                     items[i].key);
            continue;
        }
        if (!strcmp(items[i].key, "classes")) {
            lipc_diag_msg *e = fe_error(f, loc, "'classes' is predefined");
            lipc_diag_hint(e, "set the number of classes with the top-level `classes:` key");
            continue;
        }
        double v;
        bool ok = false;
        for (int s = 0; s < f->opt->n_sets; s++) {
            if (strcmp(f->opt->sets[s].key, items[i].key) != 0)
                continue;
            set_used[s] = true;
            char *end;
            errno = 0;
            v = strtod(f->opt->sets[s].value, &end);
            ok = end != f->opt->sets[s].value && *end == '\0' && errno == 0 && isfinite(v);
            if (!ok) {
                fe_error(f, LIPC_NO_LOC, "--set %s=%s: the value must be a number",
                         f->opt->sets[s].key, f->opt->sets[s].value);
                /* keep the parameter as NaN, so its uses fail quietly instead
                 * of reporting it again as unknown (uses_bad_set) */
                v = NAN;
                ok = true;
            }
            break;
        }
        bool from_set = false;
        for (int s = 0; s < f->opt->n_sets; s++)
            from_set |= set_used[s] && !strcmp(f->opt->sets[s].key, items[i].key);
        if (!from_set) {
            if (!enter(f, items[i].value)) {
                leave(f);
                return;
            }
            ok = read_number(f, items[i].value, "a parameter", &v);
            leave(f);
        }
        if (ok)
            add_var(f, items[i].key, v, loc);
    }
}

/* input: {shape: [c, h, w], range: [lo, hi], preprocess: [layers]} */
typedef struct input_rec {
    lipc_intlist shape;
    double range[2];
} input_rec;

static const lipc_field input_fields[] = {
    {"shape", LIPC_FIELD_INTLIST, offsetof(input_rec, shape), true, 1, NULL,
     "(c, h, w) of one example, or (f) for flat vectors"},
    {"range", LIPC_FIELD_FLOAT2, offsetof(input_rec, range), false, 0, NULL,
     "[low, high] of the input values (default [0, 1])"},
    {0},
};

static lipc_node *load_input(fe *f, const yaml_node_t *m, lipc_loc key_loc)
{
    kv items[16];
    int n = mapping_items(f, m, "input", items, 16);
    if (n < 0)
        return NULL;
    input_rec rec = {.range = {0.0, 1.0}};
    bool seen[2] = {false, false};
    const yaml_node_t *pre = NULL;
    bool ok = true;
    for (int i = 0; i < n; i++) {
        if (!strcmp(items[i].key, "preprocess")) {
            pre = items[i].value;
            continue;
        }
        const lipc_field *fd = lipc_field_find(input_fields, items[i].key);
        if (!fd) {
            static const char *const keys[] = {"shape", "range", "preprocess", NULL};
            unknown_key(f, m, &items[i], "input", keys);
            ok = false;
            continue;
        }
        if (!enter(f, items[i].value)) {
            leave(f);
            return NULL;
        }
        bool field_ok = parse_field(f, fd, items[i].value, &rec, "input");
        leave(f);
        ok &= field_ok;
        if (field_ok)
            seen[fd - input_fields] = true;
    }
    if (!seen[0]) {
        if (ok) {
            lipc_diag_msg *e = fe_error(f, key_loc, "input needs 'shape'");
            lipc_diag_hint(e, "e.g. `shape: [1, 28, 28]` for (channels, height, width)");
        }
        return NULL;
    }
    if (rec.shape.n != 1 && rec.shape.n != 3) {
        lipc_diag_msg *e =
            fe_error(f, node_loc(f, find_item(items, n, "shape")->value),
                     "input shape must be [c, h, w] or [f], got %d numbers", rec.shape.n);
        lipc_diag_hint(e, "images are written [channels, height, width], e.g. [3, 32, 32]");
        return NULL;
    }
    if (!(rec.range[0] < rec.range[1])) {
        fe_error(f, node_loc(f, find_item(items, n, "range")->value),
                 "input range must be [low, high] with low < high");
        ok = false;
    }
    f->g->input_shape.rank = rec.shape.n;
    for (int i = 0; i < rec.shape.n; i++)
        f->g->input_shape.d[i] = rec.shape.v[i];
    f->g->input_range[0] = rec.range[0];
    f->g->input_range[1] = rec.range[1];
    lipc_node *x = lipc_graph_add_node(f->g, LIPC_OP_INPUT, "input", ir_loc(f, key_loc));
    if (!x) {
        f->oom = true;
        return NULL;
    }
    f->g->input = x;
    if (pre && !is_null(pre)) {
        build_ctx ctx = {"input", NULL, true};
        if (enter(f, pre))
            x = build_list(f, pre, x, ctx, "input.preprocess");
        leave(f);
    }
    (void)ok;
    return x;
}

static const char *scalar_string(fe *f, const yaml_node_t *v, const char *what)
{
    const char *s = scalar(v);
    if (!s) {
        type_error(f, v, what, "text");
        return NULL;
    }
    const char *copy = lipc_arena_strdup(&f->g->arena, s);
    if (!copy)
        f->oom = true;
    return copy;
}

/* Values of the train section that parse but make no sense. */
static void check_train(fe *f, const yaml_node_t *m, const lipc_train_spec *t)
{
    static const struct {
        const char *key;
        size_t offset;
        double lo, hi;
        bool lo_open;
    } range[] = {
        {"lr", offsetof(lipc_train_spec, lr), 0.0, INFINITY, true},
        {"eps", offsetof(lipc_train_spec, eps), 0.0, INFINITY, false},
        {"eps_start", offsetof(lipc_train_spec, eps_start), 0.0, INFINITY, false},
        {"eps_end", offsetof(lipc_train_spec, eps_end), 0.0, INFINITY, false},
        {"eps_ramp", offsetof(lipc_train_spec, eps_ramp), 0.0, 1.0, false},
        {"weight_decay", offsetof(lipc_train_spec, weight_decay), 0.0, INFINITY, false},
        {"momentum", offsetof(lipc_train_spec, momentum), 0.0, 1.0, false},
        {"warmup_epochs", offsetof(lipc_train_spec, warmup_epochs), 0.0, INFINITY, false},
        {"clip", offsetof(lipc_train_spec, clip), 0.0, INFINITY, false},
        {"trades_lambda", offsetof(lipc_train_spec, trades_lambda), 0.0, INFINITY, false},
    };
    if (m->type != YAML_MAPPING_NODE)
        return;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = get(f, p->key), *v = get(f, p->value);
        const char *key = k ? scalar(k) : NULL;
        for (size_t i = 0; key && v && i < sizeof range / sizeof range[0]; i++) {
            if (strcmp(key, range[i].key) != 0)
                continue;
            double x = *(const double *)((const char *)t + range[i].offset);
            bool low = range[i].lo_open ? !(x > range[i].lo) : !(x >= range[i].lo);
            if (low || x > range[i].hi) {
                if (isinf(range[i].hi))
                    fe_error(f, node_loc(f, v), "'%s' of train must be %s %g, got %g", key,
                             range[i].lo_open ? ">" : ">=", range[i].lo, x);
                else
                    fe_error(f, node_loc(f, v), "'%s' of train must be between %g and %g, got %g",
                             key, range[i].lo, range[i].hi, x);
            }
        }
    }
}

static void load_model(fe *f, const yaml_node_t *root, const char *path)
{
    kv items[32];
    int errors_before = f->d->n_errors;
    int n = mapping_items(f, root, "the model file", items, 32);
    if (n < 0) {
        if (f->d->n_errors > errors_before)
            lipc_diag_note(f->d->last, LIPC_NO_LOC,
                           "a model file is a mapping with keys input, classes, layers, ...");
        return;
    }
    for (int i = 0; i < n; i++) {
        bool known = false;
        for (int k = 0; lipc_model_keys[k]; k++)
            known |= !strcmp(items[i].key, lipc_model_keys[k]);
        if (known)
            continue;
        /* A key of a section written at the top level is a slip of indentation. */
        const char *section = NULL;
        if (lipc_field_find(lipc_train_fields, items[i].key))
            section = "train";
        else if (lipc_field_find(input_fields, items[i].key) || !strcmp(items[i].key, "preprocess"))
            section = "input";
        if (section) {
            lipc_diag_msg *m =
                fe_error(f, node_loc(f, items[i].key_node),
                         "unknown key '%s' at the top level of the model file", items[i].key);
            lipc_diag_hint(m, "'%s' is a key of `%s:`; indent it under that section", items[i].key,
                           section);
        } else {
            unknown_key(f, root, &items[i], "the model file", lipc_model_keys);
        }
    }
    bool *set_used = lipc_calloc((size_t)f->opt->n_sets + 1, sizeof *set_used);
    if (!set_used) {
        f->oom = true;
        return;
    }
    const kv *it;
    if ((it = find_item(items, n, "name")))
        f->g->name = scalar_string(f, it->value, "the model's name");
    if (!f->g->name) {
        /* default: the file's base name without extension */
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        size_t len = strcspn(base, ".");
        f->g->name = lipc_arena_printf(&f->g->arena, "%.*s", (int)len, base);
    }
    if ((it = find_item(items, n, "description")))
        f->g->description = scalar_string(f, it->value, "the description");
    /* classes first: a number, which params and layers may use */
    it = find_item(items, n, "classes");
    if (!it) {
        lipc_diag_msg *m =
            fe_error(f, node_loc(f, root), "the model needs 'classes' (the number of classes)");
        lipc_diag_hint(m, "e.g. `classes: 10`");
    } else if (read_int(f, it->value, "classes", 2, &f->g->classes)) {
        add_var(f, "classes", f->g->classes, node_loc(f, it->key_node));
    }
    if ((it = find_item(items, n, "params")) && !is_null(it->value)) {
        if (enter(f, it->value))
            load_params(f, it->value, set_used);
        leave(f);
    }
    for (int s = 0; s < f->opt->n_sets; s++) {
        if (set_used[s])
            continue;
        const char *names[MAX_VARS + 1];
        for (int i = 0; i < f->n_vars; i++)
            names[i] = f->vars[i].name;
        names[f->n_vars] = NULL;
        lipc_diag_msg *m =
            fe_error(f, LIPC_NO_LOC, "--set %s=%s: the model has no parameter '%s'",
                     f->opt->sets[s].key, f->opt->sets[s].value, f->opt->sets[s].key);
        const char *best = lipc_closest_word(f->opt->sets[s].key, names);
        if (best)
            lipc_diag_hint(m, "did you mean '%s'?", best);
        else if (f->n_vars == 0)
            lipc_diag_note(m, LIPC_NO_LOC, "the model declares no `params:`");
    }
    lipc_free(set_used);

    lipc_node *x = NULL;
    it = find_item(items, n, "input");
    if (!it) {
        lipc_diag_msg *m = fe_error(f, node_loc(f, root), "the model needs 'input'");
        lipc_diag_hint(m, "e.g. `input: {shape: [1, 28, 28], range: [0, 1]}`");
    } else {
        if (enter(f, it->value))
            x = load_input(f, it->value, node_loc(f, it->key_node));
        leave(f);
    }

    it = find_item(items, n, "layers");
    if (!it) {
        lipc_diag_msg *m = fe_error(f, node_loc(f, root), "the model needs 'layers'");
        lipc_diag_hint(m, "write `layers:` and below it the layers, one per line starting "
                          "with '-'");
    } else if (x && !over_budget(f)) {
        build_ctx ctx = {NULL, NULL, false};
        if (enter(f, it->value)) {
            if (it->value->type == YAML_SEQUENCE_NODE &&
                it->value->data.sequence.items.top == it->value->data.sequence.items.start)
                fe_error(f, node_loc(f, it->value), "'layers' is empty");
            else
                x = build_list(f, it->value, x, ctx, "layers");
        }
        leave(f);
        f->g->output = x;
    }

    if ((it = find_item(items, n, "train")) && !is_null(it->value)) {
        bool seen[64] = {false};
        if (enter(f, it->value) &&
            parse_record(f, it->value, lipc_train_fields, &f->g->train, "train", seen))
            f->g->train.present = true;
        for (int k = 0; k < 64 && lipc_train_fields[k].key; k++)
            if (seen[k])
                f->g->train.given |= 1ull << k;
        check_train(f, it->value, &f->g->train);
        leave(f);
    }
}

/* ---- entry points --------------------------------------------------------------------- */

bool lipc_override_parse(char *text, lipc_override *o)
{
    char *eq = strchr(text, '=');
    if (!eq || eq == text)
        return false;
    *eq = '\0';
    o->key = text;
    o->value = eq + 1;
    return true;
}

/* The line and column (1-based, in bytes) of byte `offset` of text. */
static lipc_loc offset_loc(const char *file, const char *text, size_t len, size_t offset)
{
    lipc_loc loc = {file, 1, 1};
    for (size_t i = 0; i < offset && i < len; i++) {
        if (text[i] == '\n') {
            loc.line++;
            loc.col = 1;
        } else {
            loc.col++;
        }
    }
    return loc;
}

/* The start of line `line` (1-based) of the text, or NULL past its end. */
static const char *line_start(const fe *f, int line)
{
    const char *p = f->text, *end = f->text + f->len;
    for (int l = 1; l < line && p < end; l++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return NULL;
        p = nl + 1;
    }
    return p;
}

/* Does line `line` of the text hold a tab in its indentation, or at byte
 * `col`? libyaml's messages about tabs rarely say "tab". */
static bool tab_at(const fe *f, int line, int col)
{
    const char *p = line_start(f, line), *end = f->text + f->len;
    if (!p)
        return false;
    for (const char *q = p; q < end && (*q == ' ' || *q == '\t'); q++)
        if (*q == '\t')
            return true;
    return col >= 1 && p + col - 1 < end && p[col - 1] == '\t';
}

/* Does line `line` hold `word` at byte `col` (1-based)? */
static bool text_at(const fe *f, int line, int col, const char *word)
{
    const char *p = line_start(f, line), *end = f->text + f->len;
    size_t len = strlen(word);
    return p && col >= 1 && p + col - 1 + len <= end && memcmp(p + col - 1, word, len) == 0;
}

/* libyaml's context words ("while parsing a flow mapping") in the language of
 * the model files, with the hint that usually fixes the mistake. */
static void yaml_context(fe *f, lipc_diag_msg *m, const yaml_parser_t *p)
{
    static const struct {
        const char *context, *note, *hint;
    } table[] = {
        {"while parsing a flow mapping", "in the mapping '{' that starts here",
         "close it with '}' and separate its items with ','"},
        {"while parsing a flow sequence", "in the list '[' that starts here",
         "close it with ']' and separate its items with ','"},
        {"while parsing a block mapping", "in the mapping that starts here",
         "check the indentation: the keys of one mapping, and the '-' items of one list, "
         "must start in the same column"},
        {"while parsing a block collection", "in the list that starts here",
         "check the indentation: the '-' items of one list must start in the same column"},
        {"while scanning a quoted scalar", "in the quoted text that starts here",
         "close the quote on the same line, or escape it (\\\" or '')"},
        {"while scanning a simple key", "in the key that starts here",
         "a key and its ':' must be on one line; put a space after the ':'"},
    };
    if (!p->context)
        return;
    lipc_loc at = mark_loc(f, p->context_mark);
    lipc_loc problem = mark_loc(f, p->problem_mark);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(p->context, table[i].context) == 0) {
            lipc_diag_note(m, at, "%s", table[i].note);
            lipc_diag_hint(m, "%s", table[i].hint);
            return;
        }
    }
    /* A context at the very place of the problem adds nothing. */
    if (at.line != problem.line || at.col != problem.col)
        lipc_diag_note(m, at, "%s", p->context);
}

static void report_yaml_error(fe *f, const yaml_parser_t *p)
{
    const char *problem = p->problem ? p->problem : "malformed YAML";
    if (p->error == YAML_MEMORY_ERROR) {
        f->oom = true;
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset, not a line: count lines ourselves. */
        lipc_loc loc = offset_loc(f->file, f->text, f->len, p->problem_offset);
        lipc_diag_msg *m = fe_error(f, loc, "this is not a YAML text file: %s", problem);
        lipc_diag_note(m, LIPC_NO_LOC, "model files are YAML text in UTF-8");
        return;
    }
    lipc_loc loc = mark_loc(f, p->problem_mark);
    if (strstr(problem, "tab") || tab_at(f, loc.line, loc.col)) {
        lipc_diag_msg *m = fe_error(f, loc,
                                    "YAML syntax error: a tab character in the "
                                    "indentation");
        lipc_diag_hint(m, "indent with spaces; YAML does not allow tabs there");
        return;
    }
    lipc_diag_msg *m = fe_error(f, loc, "YAML syntax error: %s", problem);
    yaml_context(f, m, p);
    /* `{out: ${2 * width}}`: the braces of ${...} are YAML's own flow syntax. */
    if (loc.col >= 2 && text_at(f, loc.line, loc.col - 1, "${"))
        lipc_diag_hint(m, "inside {...} write the expression without ${ }, e.g. "
                          "`out: 2 * width`, or quote it: `out: \"${2 * width}\"`");
}

lipc_status lipc_frontend_load_string(const char *name, const char *text, size_t len,
                                      const lipc_load_options *o, lipc_diags *d,
                                      lipc_graph **out)
{
    static const lipc_load_options no_options;
    *out = NULL;
    if (!o)
        o = &no_options;
    const char *file = lipc_diags_add_source(d, name, text, len);
    if (!file)
        return LIPC_ERR_NOMEM;
    fe f = {
        .d = d,
        .file = file,
        .opt = o,
        .text = text,
        .len = len,
        .max_depth = o->max_depth > 0 ? o->max_depth : 64,
        .max_visits = o->max_visits > 0 ? o->max_visits : 2000000,
        .max_nodes = o->max_nodes > 0 ? o->max_nodes : 100000,
    };
    int errors_before = d->n_errors;

    size_t i = 0;
    while (i < len && (isspace((unsigned char)text[i])))
        i++;
    if (i == len) {
        lipc_diag_msg *m = lipc_diag_error(d, (lipc_loc){file, 1, 1}, "the model file is empty");
        lipc_diag_hint(m, "see docs/model-spec.md, or start from a file in models/");
        return LIPC_ERR_INPUT;
    }
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        lipc_loc at = offset_loc(file, text, len, (size_t)(nul - text));
        lipc_diag_msg *m =
            lipc_diag_error(d, at, "this is not a text file: it contains a NUL byte");
        lipc_diag_note(m, LIPC_NO_LOC, "model files are YAML text in UTF-8");
        return LIPC_ERR_INPUT;
    }

    lipc_graph *g = lipc_graph_new();
    if (!g)
        return LIPC_ERR_NOMEM;
    f.g = g;
    g->file = lipc_arena_strdup(&g->arena, file);
    if (!g->file) {
        lipc_graph_free(g);
        return LIPC_ERR_NOMEM;
    }

    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        lipc_graph_free(g);
        return LIPC_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        report_yaml_error(&f, &parser);
        yaml_parser_delete(&parser);
        lipc_graph_free(g);
        return f.oom ? LIPC_ERR_NOMEM : LIPC_ERR_INPUT;
    }
    f.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        /* Only comments, directives or a bare `---`/`...` reach here. */
        lipc_diag_msg *m = lipc_diag_error(d, (lipc_loc){file, 1, 1},
                                           "the model file holds no YAML document, only comments");
        lipc_diag_hint(m, "see docs/model-spec.md, or start from a file in models/");
    } else {
        load_model(&f, root, name);
        /* A second document is almost always a stray `---`. */
        yaml_document_t next;
        if (yaml_parser_load(&parser, &next)) {
            yaml_node_t *r2 = yaml_document_get_root_node(&next);
            if (r2) {
                lipc_diag_msg *m = lipc_diag_error(d, node_loc(&f, r2),
                                                   "a model file holds one YAML document");
                lipc_diag_hint(m, "remove the `---` that starts a second document");
            }
            yaml_document_delete(&next);
        } else if (!f.oom) {
            report_yaml_error(&f, &parser);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);

    if (f.oom || g->oom) {
        lipc_graph_free(g);
        return LIPC_ERR_NOMEM;
    }
    if (d->n_errors > errors_before) {
        lipc_graph_free(g);
        return LIPC_ERR_INPUT;
    }
    *out = g;
    return LIPC_OK;
}

lipc_status lipc_frontend_load_file(const char *path, const lipc_load_options *o,
                                    lipc_diags *d, lipc_graph **out)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        lipc_diag_error(d, (lipc_loc){path, 0, 0}, "cannot open the model file: %s",
                        strerror(errno));
        return LIPC_ERR_IO;
    }
    lipc_buf b;
    lipc_buf_init(&b);
    char chunk[65536];
    size_t got;
    bool too_big = false;
    while ((got = fread(chunk, 1, sizeof chunk, fp)) > 0) {
        if (b.len + got > (size_t)MAX_FILE_BYTES) {
            too_big = true;
            break;
        }
        size_t before = b.len;
        for (size_t i = 0; i < got; i++)
            lipc_buf_putc(&b, chunk[i]);
        if (b.failed || b.len != before + got)
            break;
    }
    bool read_error = ferror(fp);
    fclose(fp);
    if (b.failed) {
        lipc_buf_free(&b);
        return LIPC_ERR_NOMEM;
    }
    if (too_big || read_error) {
        lipc_diag_error(d, (lipc_loc){path, 0, 0}, too_big
                                                       ? "the model file is larger than 16 MiB"
                                                       : "cannot read the model file");
        lipc_buf_free(&b);
        return too_big ? LIPC_ERR_INPUT : LIPC_ERR_IO;
    }
    lipc_status st = lipc_frontend_load_string(path, b.data ? b.data : "", b.len, o, d, out);
    lipc_buf_free(&b);
    return st;
}
