/* ir/print.c: the IR printers (text, Graphviz, JSON) and the attribute formatter.
 *
 * Every printer is driven by the op descriptors: attributes are read through
 * the op's field table (key, kind, offset into lipc_attrs), never by naming
 * fields by hand, so a new op prints correctly without touching this file.
 * Output is deterministic: ids, names and source locations only, no pointers
 * and no timestamps, so dumps can be compared as golden files.
 *
 * A residual body is "unfolded" when its residual (or the nearest enclosing
 * one that is not folded) is OPEN or KEPT; folded residuals no longer exist as
 * blocks, so their body nodes are shown in the enclosing scope.
 */
#include "ir/ir.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers shared by the three printers ---------------------------- */

static const lipc_op_desc *op_desc(const lipc_node *n)
{
    if ((int)n->op < 0 || (int)n->op >= LIPC_OP_COUNT)
        return NULL;
    return lipc_op_info(n->op);
}

static const char *op_name(const lipc_node *n)
{
    const lipc_op_desc *desc = op_desc(n);
    return desc && desc->name ? desc->name : "?op";
}

/* A name from a NULL-terminated table, or "?" when idx is out of range. */
static const char *table_name(const char *const *names, int idx)
{
    if (!names || idx < 0)
        return "?";
    for (int i = 0; names[i]; i++)
        if (i == idx)
            return names[i];
    return "?";
}

static const char *lip_kind_name(lipc_lip_kind k)
{
    return table_name(lipc_lip_kind_names, (int)k);
}

static const char *init_name(lipc_init i)
{
    return table_name(lipc_init_names, (int)i);
}

static const char *res_state_name(lipc_res_state s)
{
    switch (s) {
    case LIPC_RES_OPEN: return "open";
    case LIPC_RES_FOLDED: return "folded";
    case LIPC_RES_KEPT: return "kept";
    }
    return "?";
}

/* The innermost residual around n that still exists as a block (not folded),
 * or NULL at top level. */
static const lipc_residual *open_scope(const lipc_node *n)
{
    const lipc_residual *r = n->scope;
    while (r && r->state == LIPC_RES_FOLDED)
        r = r->parent;
    return r;
}

static const lipc_residual *unfolded_parent(const lipc_residual *r)
{
    const lipc_residual *p = r->parent;
    while (p && p->state == LIPC_RES_FOLDED)
        p = p->parent;
    return p;
}

/* The folded residual that became n, or NULL. */
static const lipc_residual *folded_into(const lipc_graph *g, const lipc_node *n)
{
    for (int i = 0; i < g->n_res; i++)
        if (g->res[i] && g->res[i]->state == LIPC_RES_FOLDED && g->res[i]->add == n)
            return g->res[i];
    return NULL;
}

/* The resolved zero padding is worth showing only once infer-shapes has
 * filled it; before that it is all zeros and says nothing. */
static bool has_pad(const lipc_node *n)
{
    return (n->op == LIPC_OP_CONV2D || n->op == LIPC_OP_PAD) &&
           (n->a.pad[0] || n->a.pad[1] || n->a.pad[2] || n->a.pad[3]);
}

/* The attributes n's op starts from: its defaults on a zeroed record. */
static void default_attrs(const lipc_op_desc *desc, lipc_attrs *a)
{
    memset(a, 0, sizeof *a);
    if (desc && desc->defaults)
        desc->defaults(a);
}

static const void *field_ptr(const lipc_attrs *a, const lipc_field *f)
{
    return (const char *)a + f->offset;
}

/* Equality for defaults: a NaN default (none today) must compare equal to a
 * NaN value, or every such field would print as changed. */
static bool same_double(double x, double y)
{
    return x == y || (isnan(x) && isnan(y));
}

/* Whether field f holds the same value in a and b. */
static bool field_equal(const lipc_field *f, const lipc_attrs *a, const lipc_attrs *b)
{
    const void *pa = field_ptr(a, f), *pb = field_ptr(b, f);
    switch (f->kind) {
    case LIPC_FIELD_INT:
    case LIPC_FIELD_ENUM:
        return *(const int *)pa == *(const int *)pb;
    case LIPC_FIELD_INT2: {
        const int *x = pa, *y = pb;
        return x[0] == y[0] && x[1] == y[1];
    }
    case LIPC_FIELD_PADDING: {
        const lipc_padding *x = pa, *y = pb;
        if (x->mode != y->mode)
            return false;
        return x->mode != LIPC_PAD_EXPLICIT ||
               (x->amount[0] == y->amount[0] && x->amount[1] == y->amount[1]);
    }
    case LIPC_FIELD_FLOAT:
        return same_double(*(const double *)pa, *(const double *)pb);
    case LIPC_FIELD_FLOAT2: {
        const double *x = pa, *y = pb;
        return same_double(x[0], y[0]) && same_double(x[1], y[1]);
    }
    case LIPC_FIELD_BOOL:
        return *(const bool *)pa == *(const bool *)pb;
    case LIPC_FIELD_INTLIST: {
        const lipc_intlist *x = pa, *y = pb;
        if (x->n != y->n)
            return false;
        for (int i = 0; i < x->n && i < 4; i++)
            if (x->v[i] != y->v[i])
                return false;
        return true;
    }
    }
    return false;
}

/* One field's value in the text syntax: "64", "5x5", "same", "[0,1]", ... */
static void format_field_value(const lipc_field *f, const lipc_attrs *a, lipc_buf *out)
{
    const void *p = field_ptr(a, f);
    switch (f->kind) {
    case LIPC_FIELD_INT:
        lipc_buf_printf(out, "%d", *(const int *)p);
        return;
    case LIPC_FIELD_INT2: {
        const int *v = p;
        lipc_buf_printf(out, "%dx%d", v[0], v[1]);
        return;
    }
    case LIPC_FIELD_PADDING: {
        const lipc_padding *pad = p;
        if (pad->mode == LIPC_PAD_SAME)
            lipc_buf_puts(out, "same");
        else if (pad->mode == LIPC_PAD_VALID)
            lipc_buf_puts(out, "valid");
        else
            lipc_buf_printf(out, "%dx%d", pad->amount[0], pad->amount[1]);
        return;
    }
    case LIPC_FIELD_FLOAT:
        lipc_buf_printf(out, "%g", *(const double *)p);
        return;
    case LIPC_FIELD_FLOAT2: {
        const double *v = p;
        lipc_buf_printf(out, "[%g,%g]", v[0], v[1]);
        return;
    }
    case LIPC_FIELD_BOOL:
        lipc_buf_puts(out, *(const bool *)p ? "true" : "false");
        return;
    case LIPC_FIELD_ENUM:
        lipc_buf_puts(out, table_name(f->names, *(const int *)p));
        return;
    case LIPC_FIELD_INTLIST: {
        const lipc_intlist *l = p;
        lipc_buf_putc(out, '[');
        for (int i = 0; i < l->n && i < 4; i++)
            lipc_buf_printf(out, i ? ",%d" : "%d", l->v[i]);
        lipc_buf_putc(out, ']');
        return;
    }
    }
    lipc_buf_puts(out, "?");
}

void lipc_node_format_attrs(const lipc_node *n, lipc_buf *out)
{
    const lipc_op_desc *desc = op_desc(n);
    lipc_attrs defaults;
    default_attrs(desc, &defaults);
    bool first = true;
    if (desc && desc->fields) {
        for (const lipc_field *f = desc->fields; f->key; f++) {
            /* fold_identity has its own spelling below, whatever the table says */
            if (f->offset == offsetof(lipc_attrs, fold_identity))
                continue;
            if (field_equal(f, &n->a, &defaults))
                continue;
            lipc_buf_printf(out, "%s%s=", first ? "" : " ", f->key);
            format_field_value(f, &n->a, out);
            first = false;
        }
    }
    if (has_pad(n)) {
        lipc_buf_printf(out, "%spad=%d,%d,%d,%d", first ? "" : " ", n->a.pad[0],
                        n->a.pad[1], n->a.pad[2], n->a.pad[3]);
        first = false;
    }
    if (n->a.fold_identity)
        lipc_buf_puts(out, first ? "+identity" : " +identity");
}

/* "lip=opnorm(conv-fft)=1.02", "lip=1", "lip=const(0.25)". The method says how
 * the bound is obtained; the value appears only once weights are known (NaN
 * before), so a dump before training stays free of made-up numbers. A 1-Lipschitz
 * op always shows plain "lip=1": that is the whole story for it. */
static void format_lip(const lipc_lip *lip, lipc_buf *out)
{
    bool known = !isnan(lip->value);
    if (lip->kind == LIPC_LIP_ONE) {
        lipc_buf_puts(out, "lip=1");
        return;
    }
    lipc_buf_printf(out, "lip=%s", lip_kind_name(lip->kind));
    if (lip->method) {
        lipc_buf_printf(out, "(%s)", lip->method);
        if (known)
            lipc_buf_printf(out, "=%g", lip->value);
    } else if (known) {
        lipc_buf_printf(out, "(%g)", lip->value);
    }
}

static void format_loc(lipc_loc loc, lipc_buf *out)
{
    char buf[512];
    lipc_buf_puts(out, lipc_loc_str(loc, buf, sizeof buf));
}

/* Appends spaces until the text written since `start` is `width` wide; at
 * least one space, so an over-long column still stays separated. */
static void pad_to(lipc_buf *out, size_t start, size_t width)
{
    size_t len = out->len - start;
    do {
        lipc_buf_putc(out, ' ');
        len++;
    } while (len < width && !out->failed);
}

void lipc_graph_print(const lipc_graph *g, lipc_format f, lipc_buf *out)
{
    switch (f) {
    case LIPC_FORMAT_TEXT: lipc_graph_print_text(g, out); return;
    case LIPC_FORMAT_DOT: lipc_graph_print_dot(g, out); return;
    case LIPC_FORMAT_JSON: lipc_graph_print_json(g, out); return;
    }
    lipc_graph_print_text(g, out);
}

/* ---- text ------------------------------------------------------------------- */

/* Column widths: capped so one long line does not push every other far right. */
#define TEXT_ID_WIDTH 5
#define TEXT_OP_MAX 64
#define TEXT_SHAPE_WIDTH 10
#define TEXT_NAME_MAX 36

/* "op %a %b attrs": the part of a node line before the shape. Written into a
 * scratch buffer first by the width pass, so the columns fit the widest line. */
static void text_op_part(const lipc_node *n, lipc_buf *out)
{
    lipc_buf_puts(out, op_name(n));
    for (int i = 0; i < n->n_in && i < LIPC_MAX_INPUTS; i++) {
        if (n->in[i])
            lipc_buf_printf(out, " %%%d", n->in[i]->id);
        else
            lipc_buf_puts(out, " %?");
    }
    size_t before = out->len;
    lipc_buf_putc(out, ' ');
    size_t attrs_at = out->len;
    lipc_node_format_attrs(n, out);
    if (out->len == attrs_at && !out->failed) {
        /* no attributes: drop the separator (lipc_buf has no truncate; the
         * buffer is ours to edit, and data is non-NULL after the putc) */
        out->len = before;
        out->data[before] = '\0';
    }
}

static void text_node_line(const lipc_graph *g, const lipc_node *n, size_t op_w,
                           size_t name_w, lipc_buf *out)
{
    char sb[48];
    size_t start = out->len;
    lipc_buf_printf(out, "  %%%d", n->id);
    pad_to(out, start, 2 + TEXT_ID_WIDTH);
    size_t col = out->len;
    text_op_part(n, out);
    pad_to(out, col, op_w + 1);
    lipc_buf_puts(out, ": ");
    col = out->len;
    lipc_buf_puts(out, lipc_shape_str(n->shape, sb));
    pad_to(out, col, TEXT_SHAPE_WIDTH + 1);
    col = out->len;
    lipc_buf_puts(out, n->name ? n->name : "-");

    /* The tail: bound, residual role, location; each item after two spaces. */
    const lipc_residual *folded = folded_into(g, n);
    const lipc_residual *closes =
        n->closes && n->closes->state != LIPC_RES_FOLDED ? n->closes : NULL;
    const lipc_residual *scope = open_scope(n);
    bool has_lip = n->lip.kind != LIPC_LIP_UNSET;
    if (!has_lip && !folded && !closes && !scope && !n->loc.file && g->output != n) {
        lipc_buf_putc(out, '\n');
        return;
    }
    pad_to(out, col, name_w + 2);
    const char *sep = "";   /* two spaces between items, none before the first */
    if (has_lip) {
        format_lip(&n->lip, out);
        sep = "  ";
    }
    if (folded) {
        lipc_buf_printf(out, "%s[folded residual %s]", sep, folded->name ? folded->name : "?");
        sep = "  ";
    }
    if (closes) {
        lipc_buf_printf(out, "%s[closes residual %s", sep, closes->name ? closes->name : "?");
        if (closes->state == LIPC_RES_KEPT)
            lipc_buf_printf(out, " (kept: %s)", closes->why ? closes->why : "no reason given");
        else
            lipc_buf_puts(out, " (open)");
        lipc_buf_putc(out, ']');
        sep = "  ";
    }
    if (scope) {
        lipc_buf_printf(out, "%s[in residual %s]", sep, scope->name ? scope->name : "?");
        sep = "  ";
    }
    if (g->output == n) {
        lipc_buf_printf(out, "%s(output)", sep);
        sep = "  ";
    }
    if (n->loc.file) {
        lipc_buf_printf(out, "%s@ ", sep);
        format_loc(n->loc, out);
    }
    lipc_buf_putc(out, '\n');
}

static void text_residuals(const lipc_graph *g, lipc_buf *out)
{
    int count[3] = {0, 0, 0};
    size_t name_w = 0;
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        if (!r)
            continue;
        if ((int)r->state >= 0 && (int)r->state < 3)
            count[r->state]++;
        size_t len = r->name ? strlen(r->name) : 1;
        if (len > name_w)
            name_w = len;
    }
    if (name_w > TEXT_NAME_MAX)
        name_w = TEXT_NAME_MAX;
    lipc_buf_printf(out, "residuals: %d folded, %d kept", count[LIPC_RES_FOLDED],
                    count[LIPC_RES_KEPT]);
    if (count[LIPC_RES_OPEN])
        lipc_buf_printf(out, ", %d open", count[LIPC_RES_OPEN]);
    lipc_buf_putc(out, '\n');
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        if (!r)
            continue;
        size_t start = out->len;
        lipc_buf_printf(out, "  %s", r->name ? r->name : "?");
        pad_to(out, start, 2 + name_w + 2);
        size_t col = out->len;
        switch (r->state) {
        case LIPC_RES_FOLDED:
            if (r->add)
                lipc_buf_printf(out, "folded into %%%d", r->add->id);
            else
                lipc_buf_puts(out, "folded");
            break;
        case LIPC_RES_KEPT:
            lipc_buf_printf(out, "kept: %s", r->why ? r->why : "no reason given");
            break;
        case LIPC_RES_OPEN:
            if (r->add)
                lipc_buf_printf(out, "open, joined at %%%d", r->add->id);
            else
                lipc_buf_puts(out, "open");
            break;
        }
        pad_to(out, col, 34);
        lipc_buf_puts(out, "@ ");
        format_loc(r->loc, out);
        if (r->state == LIPC_RES_KEPT && r->why_loc.file) {
            lipc_buf_puts(out, " (blocked at ");
            format_loc(r->why_loc, out);
            lipc_buf_putc(out, ')');
        }
        lipc_buf_putc(out, '\n');
    }
}

static void text_params(const lipc_graph *g, lipc_buf *out)
{
    lipc_buf_printf(out, "params: %d tensors, %zu values\n", g->n_params,
                    g->n_param_elems);
    size_t name_w = 0;
    for (int i = 0; i < g->n_params; i++) {
        size_t len = g->params[i].name ? strlen(g->params[i].name) : 1;
        if (len > name_w)
            name_w = len;
    }
    if (name_w > TEXT_NAME_MAX)
        name_w = TEXT_NAME_MAX;
    for (int i = 0; i < g->n_params; i++) {
        const lipc_param *p = &g->params[i];
        size_t start = out->len;
        lipc_buf_printf(out, "  %s", p->name ? p->name : "?");
        pad_to(out, start, 2 + name_w + 2);
        size_t col = out->len;
        for (int k = 0; k < p->rank && k < 4; k++)
            lipc_buf_printf(out, k ? "x%d" : "%d", p->d[k]);
        pad_to(out, col, 14);
        lipc_buf_printf(out, "%-10s  %zu values at %zu\n", init_name(p->init),
                        p->numel, p->offset);
    }
}

/* How K_sub is composed (lipc_lip_summarize), with its value once every
 * factor is known. */
static void text_lipschitz(const lipc_graph *g, lipc_buf *out)
{
    if (!g->lipschitz_known)
        return;
    lipc_lip_summary s;
    lipc_lip_summarize(g, &s);
    lipc_buf_printf(out, "lipschitz: K_sub = product of %d bounds (opnorm x%d, const x%d, "
                         "loose x%d, one x%d)",
                    s.n_factors, s.n_opnorm, s.n_const, s.n_loose, s.n_one);
    if (s.n_factors > 0 && !isnan(s.k_sub))
        lipc_buf_printf(out, " = %g", s.k_sub);
    if (s.head)
        lipc_buf_puts(out, "; head: pairwise");
    lipc_buf_putc(out, '\n');
}

void lipc_graph_print_text(const lipc_graph *g, lipc_buf *out)
{
    char sb[48];
    lipc_buf_printf(out, "graph %s  (input %s in [%g,%g], %d classes)\n",
                    g->name ? g->name : "?", lipc_shape_str(g->input_shape, sb),
                    g->input_range[0], g->input_range[1], g->classes);
    if (g->description)
        lipc_buf_printf(out, "  # %s\n", g->description);

    /* Widths from the nodes themselves, so the layout depends only on the graph. */
    size_t op_w = 0, name_w = 0;
    lipc_buf tmp;
    lipc_buf_init(&tmp);
    for (const lipc_node *n = g->first; n; n = n->next) {
        tmp.len = 0;
        text_op_part(n, &tmp);
        if (tmp.len > op_w)
            op_w = tmp.len;
        size_t len = n->name ? strlen(n->name) : 1;
        if (len > name_w)
            name_w = len;
    }
    if (tmp.failed)
        out->failed = true;
    lipc_buf_free(&tmp);
    if (op_w > TEXT_OP_MAX)
        op_w = TEXT_OP_MAX;
    if (name_w > TEXT_NAME_MAX)
        name_w = TEXT_NAME_MAX;

    for (const lipc_node *n = g->first; n; n = n->next)
        text_node_line(g, n, op_w, name_w, out);
    text_residuals(g, out);
    text_params(g, out);
    text_lipschitz(g, out);
}

/* ---- Graphviz ----------------------------------------------------------------- */

/* Appends s inside a double-quoted DOT string (names come from user YAML, so
 * they may hold anything). Label line breaks are written
 * by the caller as the two characters \n; here every backslash and quote is
 * escaped and control characters become spaces. */
static void dot_escape(lipc_buf *out, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            lipc_buf_putc(out, '\\');
        lipc_buf_putc(out, (unsigned char)*s < 0x20 ? ' ' : *s);
    }
}

static void dot_node(const lipc_graph *g, const lipc_node *n, int depth, lipc_buf *out)
{
    char sb[48];
    lipc_buf tmp;
    lipc_buf_init(&tmp);
    for (int i = 0; i < depth; i++)
        lipc_buf_puts(out, "  ");
    lipc_buf_printf(out, "n%d [label=\"", n->id);

    lipc_buf_printf(&tmp, "%%%d %s", n->id, op_name(n));
    size_t attrs_at = tmp.len;
    lipc_buf_putc(&tmp, ' ');
    lipc_node_format_attrs(n, &tmp);
    if (tmp.len == attrs_at + 1 && !tmp.failed)
        tmp.data[--tmp.len] = '\0';
    dot_escape(out, lipc_buf_str(&tmp));
    if (tmp.failed)
        out->failed = true;
    lipc_buf_free(&tmp);

    if (n->name) {
        lipc_buf_puts(out, "\\n");
        dot_escape(out, n->name);
    }
    if (n->shape.rank > 0) {
        lipc_buf_puts(out, "\\n");
        dot_escape(out, lipc_shape_str(n->shape, sb));
    }
    if (n->lip.kind != LIPC_LIP_UNSET) {
        lipc_buf tl;
        lipc_buf_init(&tl);
        format_lip(&n->lip, &tl);
        lipc_buf_puts(out, "\\n");
        dot_escape(out, lipc_buf_str(&tl));
        if (tl.failed)
            out->failed = true;
        lipc_buf_free(&tl);
    }
    bool folded = n->a.fold_identity || folded_into(g, n);
    if (folded)
        lipc_buf_printf(out, "\\nfolded: x + %s(x)", op_name(n));
    lipc_buf_putc(out, '"');
    if (folded)
        lipc_buf_puts(out, ", style=filled, fillcolor=lightblue");
    else if (n->op == LIPC_OP_INPUT)
        lipc_buf_puts(out, ", shape=ellipse");
    else if (n->closes)
        lipc_buf_puts(out, ", shape=circle");
    if (g->output == n)
        lipc_buf_puts(out, ", peripheries=2");
    lipc_buf_puts(out, "];\n");
}

/* Emits the cluster of residual r: its own nodes, then the clusters of the
 * unfolded residuals directly inside it. Folded residuals are skipped (their
 * nodes belong to the nearest unfolded scope). */
static void dot_cluster(const lipc_graph *g, const lipc_residual *r, int depth,
                        lipc_buf *out)
{
    if (r) {
        for (int i = 0; i < depth; i++)
            lipc_buf_puts(out, "  ");
        lipc_buf_printf(out, "subgraph cluster_res%d {\n", r->id);
        for (int i = 0; i <= depth; i++)
            lipc_buf_puts(out, "  ");
        lipc_buf_puts(out, "label=\"residual ");
        dot_escape(out, r->name ? r->name : "?");
        if (r->state == LIPC_RES_KEPT) {
            lipc_buf_puts(out, " (kept: ");
            dot_escape(out, r->why ? r->why : "no reason given");
            lipc_buf_putc(out, ')');
        }
        lipc_buf_puts(out, "\"; style=dashed;\n");
    }
    int inner = r ? depth + 1 : depth;
    for (const lipc_node *n = g->first; n; n = n->next)
        if (open_scope(n) == r)
            dot_node(g, n, inner, out);
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *c = g->res[i];
        if (c && c->state != LIPC_RES_FOLDED && unfolded_parent(c) == r)
            dot_cluster(g, c, inner, out);
    }
    if (r) {
        for (int i = 0; i < depth; i++)
            lipc_buf_puts(out, "  ");
        lipc_buf_puts(out, "}\n");
    }
}

/* Nodes first (clusters need their members declared inside them), edges last
 * in program order, so the output is stable for a given graph. */
void lipc_graph_print_dot(const lipc_graph *g, lipc_buf *out)
{
    lipc_buf_puts(out, "digraph \"");
    dot_escape(out, g->name ? g->name : "lipc");
    lipc_buf_puts(out, "\" {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    dot_cluster(g, NULL, 1, out);
    for (const lipc_node *n = g->first; n; n = n->next)
        for (int i = 0; i < n->n_in && i < LIPC_MAX_INPUTS; i++)
            if (n->in[i])
                lipc_buf_printf(out, "  n%d -> n%d;\n", n->in[i]->id, n->id);
    lipc_buf_puts(out, "}\n");
}

/* ---- JSON --------------------------------------------------------------------- */

/* Collects allocation failures: jansson returns NULL (or -1) when out of
 * memory, and a NULL value handed to a *_set_new / *_append_new call is
 * rejected there, so one flag checked at the end is enough. jansson allocates
 * with its own malloc, not lipc's hook: its allocator is process-wide and
 * other users of jansson free its strings with free(). */
typedef struct json_ctx {
    bool failed;
} json_ctx;

static void jset(json_ctx *c, json_t *obj, const char *key, json_t *v)
{
    /* json_object_set_new releases v itself when it fails */
    if (!obj) {
        json_decref(v);
        c->failed = true;
    } else if (json_object_set_new(obj, key, v) != 0) {
        c->failed = true;
    }
}

static void jappend(json_ctx *c, json_t *arr, json_t *v)
{
    if (!arr) {
        json_decref(v);
        c->failed = true;
    } else if (json_array_append_new(arr, v) != 0) {
        c->failed = true;
    }
}

/* NaN and infinities are not JSON numbers: they become null. */
static json_t *jreal(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *jloc(lipc_loc loc)
{
    char buf[512];
    return json_string(lipc_loc_str(loc, buf, sizeof buf));
}

static json_t *jints(json_ctx *c, const int *v, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        jappend(c, arr, json_integer(v[i]));
    return arr;
}

static json_t *jshape(json_ctx *c, lipc_shape s)
{
    return jints(c, s.d, s.rank > 0 && s.rank <= 3 ? s.rank : 0);
}

/* A field's value typed: ints, [a, b] arrays, strings for enums, "same" /
 * "valid" or [rows, cols] for padding (the spellings YAML accepts), bools. */
static json_t *jfield(json_ctx *c, const lipc_field *f, const lipc_attrs *a)
{
    const void *p = field_ptr(a, f);
    switch (f->kind) {
    case LIPC_FIELD_INT:
        return json_integer(*(const int *)p);
    case LIPC_FIELD_INT2:
        return jints(c, p, 2);
    case LIPC_FIELD_PADDING: {
        const lipc_padding *pad = p;
        if (pad->mode == LIPC_PAD_SAME)
            return json_string("same");
        if (pad->mode == LIPC_PAD_VALID)
            return json_string("valid");
        return jints(c, pad->amount, 2);
    }
    case LIPC_FIELD_FLOAT:
        return jreal(*(const double *)p);
    case LIPC_FIELD_FLOAT2: {
        const double *v = p;
        json_t *arr = json_array();
        jappend(c, arr, jreal(v[0]));
        jappend(c, arr, jreal(v[1]));
        return arr;
    }
    case LIPC_FIELD_BOOL:
        return json_boolean(*(const bool *)p);
    case LIPC_FIELD_ENUM:
        return json_string(table_name(f->names, *(const int *)p));
    case LIPC_FIELD_INTLIST: {
        const lipc_intlist *l = p;
        return jints(c, l->v, l->n < 0 ? 0 : l->n > 4 ? 4 : l->n);
    }
    }
    return json_null();
}

static json_t *jnode(json_ctx *c, const lipc_graph *g, const lipc_node *n)
{
    json_t *o = json_object();
    jset(c, o, "id", json_integer(n->id));
    jset(c, o, "op", json_string(op_name(n)));
    jset(c, o, "name", jstr(n->name));
    json_t *inputs = json_array();
    for (int i = 0; i < n->n_in && i < LIPC_MAX_INPUTS; i++)
        jappend(c, inputs, n->in[i] ? json_integer(n->in[i]->id) : json_null());
    jset(c, o, "inputs", inputs);
    jset(c, o, "shape", jshape(c, n->shape));
    jset(c, o, "loc", jloc(n->loc));

    json_t *attrs = json_object();
    const lipc_op_desc *desc = op_desc(n);
    if (desc && desc->fields)
        for (const lipc_field *f = desc->fields; f->key; f++)
            if (f->offset != offsetof(lipc_attrs, fold_identity))
                jset(c, attrs, f->key, jfield(c, f, &n->a));
    /* resolved padding: meaningful (even when all zero) once shapes are known */
    if ((n->op == LIPC_OP_CONV2D || n->op == LIPC_OP_PAD) && g->shapes_known)
        jset(c, attrs, "pad", jints(c, n->a.pad, 4));
    if (n->a.fold_identity)
        jset(c, attrs, "fold_identity", json_true());
    jset(c, o, "attrs", attrs);

    json_t *params = json_array();
    for (int i = 0; i < n->n_param && i < LIPC_MAX_NODE_PARAMS; i++) {
        int idx = n->param[i];
        bool ok = idx >= 0 && idx < g->n_params && g->params[idx].name;
        jappend(c, params, ok ? json_string(g->params[idx].name) : json_null());
    }
    jset(c, o, "params", params);

    if (n->closes)
        jset(c, o, "closes", jstr(n->closes->name));
    const lipc_residual *scope = open_scope(n);
    if (scope)
        jset(c, o, "scope", jstr(scope->name));
    if (n->lip.kind != LIPC_LIP_UNSET) {
        json_t *lip = json_object();
        jset(c, lip, "kind", json_string(lip_kind_name(n->lip.kind)));
        jset(c, lip, "method", jstr(n->lip.method));
        jset(c, lip, "exact", json_boolean(n->lip.exact));
        jset(c, lip, "value", jreal(n->lip.value));
        jset(c, o, "lipschitz", lip);
    }
    return o;
}

static json_t *jresidual(json_ctx *c, const lipc_residual *r)
{
    json_t *o = json_object();
    jset(c, o, "name", jstr(r->name));
    jset(c, o, "loc", jloc(r->loc));
    jset(c, o, "state", json_string(res_state_name(r->state)));
    if (r->why)
        jset(c, o, "why", json_string(r->why));
    if (r->state == LIPC_RES_KEPT && r->why_loc.file)
        jset(c, o, "why_loc", jloc(r->why_loc));
    if (r->parent)
        jset(c, o, "parent", jstr(r->parent->name));
    if (r->skip)
        jset(c, o, "skip", json_integer(r->skip->id));
    if (r->add)
        jset(c, o, "node", json_integer(r->add->id));
    return o;
}

static json_t *jparam(json_ctx *c, const lipc_param *p)
{
    json_t *o = json_object();
    jset(c, o, "name", jstr(p->name));
    jset(c, o, "role", json_string(p->role == LIPC_PARAM_BIAS ? "bias" : "weight"));
    jset(c, o, "shape", jints(c, p->d, p->rank < 0 ? 0 : p->rank > 4 ? 4 : p->rank));
    jset(c, o, "offset", json_integer((json_int_t)p->offset));
    jset(c, o, "numel", json_integer((json_int_t)p->numel));
    jset(c, o, "init", json_string(init_name(p->init)));
    jset(c, o, "owner", p->owner ? json_integer(p->owner->id) : json_null());
    return o;
}

/* The whole graph as one JSON document for tools (plots, golden tests,
 * external checkers): every attribute typed, ids for every cross-reference. */
void lipc_graph_print_json(const lipc_graph *g, lipc_buf *out)
{
    json_ctx c = {false};
    json_t *root = json_object();
    jset(&c, root, "name", jstr(g->name));
    if (g->description)
        jset(&c, root, "description", json_string(g->description));
    jset(&c, root, "file", jstr(g->file));

    json_t *input = json_object();
    jset(&c, input, "shape", jshape(&c, g->input_shape));
    json_t *range = json_array();
    jappend(&c, range, jreal(g->input_range[0]));
    jappend(&c, range, jreal(g->input_range[1]));
    jset(&c, input, "range", range);
    jset(&c, root, "input", input);
    jset(&c, root, "classes", json_integer(g->classes));
    jset(&c, root, "output", g->output ? json_integer(g->output->id) : json_null());
    jset(&c, root, "shapes_known", json_boolean(g->shapes_known));
    jset(&c, root, "folded", json_boolean(g->folded));
    jset(&c, root, "lipschitz_known", json_boolean(g->lipschitz_known));

    json_t *nodes = json_array();
    for (const lipc_node *n = g->first; n && !c.failed; n = n->next)
        jappend(&c, nodes, jnode(&c, g, n));
    jset(&c, root, "nodes", nodes);

    json_t *res = json_array();
    for (int i = 0; i < g->n_res && !c.failed; i++)
        if (g->res[i])
            jappend(&c, res, jresidual(&c, g->res[i]));
    jset(&c, root, "residuals", res);

    json_t *params = json_array();
    for (int i = 0; i < g->n_params && !c.failed; i++)
        jappend(&c, params, jparam(&c, &g->params[i]));
    jset(&c, root, "params", params);

    char *text = c.failed ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) {
        out->failed = true;
        return;
    }
    lipc_buf_puts(out, text);
    lipc_buf_putc(out, '\n');
    free(text);
}
