/* tests/test_print.c: the IR printers (text, DOT, JSON), the attribute
 * formatter and the verifier, on small graphs built by hand.
 *
 * The graph `tiny` has everything a printer must show: a preprocessing shift,
 * a residual folded into a conv2d (fold_identity), a residual kept because its
 * body is nonlinear (a cluster in DOT), parameters and Lipschitz annotations.
 * The verifier tests break one invariant at a time on a copy of that graph.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

#define LOC(line, col) ((lipc_loc){"m.yaml", (line), (col)})

typedef struct tiny {
    lipc_graph *g;
    lipc_node *input, *shift, *folded, *body0, *body1, *body2, *add, *flat, *head;
    lipc_residual *res_f, *res_k;
} tiny;

static lipc_node *add_node(lipc_graph *g, lipc_op op, const char *name, int line,
                           lipc_node *in0, lipc_node *in1)
{
    lipc_node *n = lipc_graph_add_node(g, op, name, LOC(line, 5));
    cr_assert_not_null(n);
    const lipc_op_desc *desc = lipc_op_info(op);
    if (desc->defaults)
        desc->defaults(&n->a);
    if (in0)
        n->in[n->n_in++] = in0;
    if (in1)
        n->in[n->n_in++] = in1;
    return n;
}

/* Declares a parameter and records it on n (add_param reads n->n_param, so
 * the count is bumped only after the call). */
static void add_param(lipc_graph *g, lipc_node *n, lipc_param_role role, int rank,
                      const int *d, lipc_init init)
{
    int idx = lipc_graph_add_param(g, n, role, rank, d, init);
    cr_assert_geq(idx, 0);
    n->param[n->n_param] = idx;
    n->n_param++;
}

static void add_conv_params(lipc_graph *g, lipc_node *n, int c_in)
{
    int wd[4] = {n->a.out, c_in, n->a.kernel[0], n->a.kernel[1]};
    add_param(g, n, LIPC_PARAM_WEIGHT, 4, wd, LIPC_INIT_KAIMING);
    int bd[1] = {n->a.out};
    add_param(g, n, LIPC_PARAM_BIAS, 1, bd, LIPC_INIT_ZEROS);
}

static lipc_shape chw(int c, int h, int w) { return (lipc_shape){3, {c, h, w}}; }

/* input 4x8x8 -> shift -> conv (folded residual res_f) -> [res_k: conv, minmax,
 * conv] + skip -> flatten -> dense head */
static tiny make_tiny(void)
{
    tiny t;
    lipc_graph *g = t.g = lipc_graph_new();
    cr_assert_not_null(g);
    g->name = "tiny";
    g->description = "a test graph";
    g->file = "m.yaml";
    g->input_shape = chw(4, 8, 8);
    g->classes = 10;

    t.input = add_node(g, LIPC_OP_INPUT, "input", 2, NULL, NULL);
    t.input->shape = chw(4, 8, 8);
    g->input = t.input;

    t.shift = add_node(g, LIPC_OP_SHIFT, "input.shift_0", 3, t.input, NULL);
    t.shift->a.by = -0.5;
    t.shift->shape = chw(4, 8, 8);
    t.shift->lip = (lipc_lip){LIPC_LIP_ONE, "isometry", true, 1.0};

    t.res_f = lipc_graph_add_residual(g, "res_f", LOC(5, 3));
    t.res_f->skip = t.shift;
    t.folded = add_node(g, LIPC_OP_CONV2D, "res_f.conv2d_0", 6, t.shift, NULL);
    t.folded->a.out = 4;
    t.folded->a.kernel[0] = t.folded->a.kernel[1] = 3;
    t.folded->a.pad[0] = t.folded->a.pad[1] = t.folded->a.pad[2] = t.folded->a.pad[3] = 1;
    t.folded->a.fold_identity = true;
    t.folded->shape = chw(4, 8, 8);
    t.folded->scope = t.res_f;
    t.folded->lip = (lipc_lip){LIPC_LIP_OPNORM, "conv-fft", true, NAN};
    add_conv_params(g, t.folded, 4);
    t.res_f->add = t.folded;
    t.res_f->state = LIPC_RES_FOLDED;

    t.res_k = lipc_graph_add_residual(g, "res_k", LOC(8, 3));
    t.res_k->skip = t.folded;
    t.body0 = add_node(g, LIPC_OP_CONV2D, "res_k.conv2d_0", 9, t.folded, NULL);
    t.body0->a.out = 4;
    t.body0->a.kernel[0] = t.body0->a.kernel[1] = 3;
    t.body0->a.pad[0] = t.body0->a.pad[1] = t.body0->a.pad[2] = t.body0->a.pad[3] = 1;
    t.body0->shape = chw(4, 8, 8);
    t.body0->scope = t.res_k;
    t.body0->lip = (lipc_lip){LIPC_LIP_OPNORM, "conv-fft", false, NAN};
    add_conv_params(g, t.body0, 4);
    t.body1 = add_node(g, LIPC_OP_MINMAX, "res_k.minmax_0", 10, t.body0, NULL);
    t.body1->shape = chw(4, 8, 8);
    t.body1->scope = t.res_k;
    t.body2 = add_node(g, LIPC_OP_CONV2D, "res_k.conv2d_1", 11, t.body1, NULL);
    t.body2->a.out = 4;
    t.body2->a.kernel[0] = t.body2->a.kernel[1] = 3;
    t.body2->a.pad[0] = t.body2->a.pad[1] = t.body2->a.pad[2] = t.body2->a.pad[3] = 1;
    t.body2->shape = chw(4, 8, 8);
    t.body2->scope = t.res_k;
    add_conv_params(g, t.body2, 4);
    t.add = add_node(g, LIPC_OP_ADD, "res_k", 8, t.folded, t.body2);
    t.add->shape = chw(4, 8, 8);
    t.add->closes = t.res_k;
    t.add->lip = (lipc_lip){LIPC_LIP_LOOSE, "1 + K(body)", false, NAN};
    t.res_k->add = t.add;
    t.res_k->state = LIPC_RES_KEPT;
    t.res_k->why = "body is nonlinear (minmax)";
    t.res_k->why_loc = LOC(10, 7);

    t.flat = add_node(g, LIPC_OP_FLATTEN, "flatten_0", 13, t.add, NULL);
    t.flat->shape = (lipc_shape){1, {256}};
    t.head = add_node(g, LIPC_OP_DENSE, "head", 14, t.flat, NULL);
    t.head->a.out = 10;
    t.head->a.normalize = true;
    t.head->shape = (lipc_shape){1, {10}};
    t.head->lip = (lipc_lip){LIPC_LIP_HEAD, "pairwise", false, NAN};
    int wd[2] = {10, 256};
    add_param(g, t.head, LIPC_PARAM_WEIGHT, 2, wd, LIPC_INIT_DEFAULT);
    int bd[1] = {10};
    add_param(g, t.head, LIPC_PARAM_BIAS, 1, bd, LIPC_INIT_ZEROS);
    g->output = t.head;
    g->shapes_known = true;
    g->folded = true;
    g->lipschitz_known = true;
    cr_assert(!g->oom);
    return t;
}

static char *print_to_string(const lipc_graph *g, lipc_format f)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_graph_print(g, f, &b);
    cr_assert(!b.failed);
    char *s = strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return s;
}

static char *attrs_of(const lipc_node *n)
{
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_node_format_attrs(n, &b);
    char *s = strdup(lipc_buf_str(&b));
    lipc_buf_free(&b);
    return s;
}

#define cr_assert_contains(hay, needle)                                          \
    cr_assert(strstr((hay), (needle)) != NULL, "expected \"%s\" in:\n%s", (needle), \
              (hay))
#define cr_assert_lacks(hay, needle)                                             \
    cr_assert(strstr((hay), (needle)) == NULL, "did not expect \"%s\" in:\n%s",   \
              (needle), (hay))

/* Whether the first line of s that contains key also contains needle. */
static bool line_has(const char *s, const char *key, const char *needle)
{
    const char *at = strstr(s, key);
    cr_assert_not_null(at, "no line with \"%s\"", key);
    while (at > s && at[-1] != '\n')
        at--;
    size_t len = strcspn(at, "\n");
    char line[512];
    cr_assert_lt(len, sizeof line);
    memcpy(line, at, len);
    line[len] = '\0';
    return strstr(line, needle) != NULL;
}

/* ---- attributes --------------------------------------------------------------- */

Test(print_attrs, only_fields_that_differ_from_defaults)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *n = add_node(g, LIPC_OP_CONV2D, "c", 1, NULL, NULL);
    n->a.out = 8;
    n->a.kernel[0] = n->a.kernel[1] = 3;
    char *s = attrs_of(n);
    cr_assert_str_eq(s, "out=8 kernel=3x3");
    free(s);

    n->a.stride[0] = n->a.stride[1] = 2;
    n->a.padding.mode = LIPC_PAD_VALID;
    n->a.bias = false;
    n->a.init = LIPC_INIT_ORTHOGONAL;
    s = attrs_of(n);
    cr_assert_str_eq(s, "out=8 kernel=3x3 stride=2x2 padding=valid bias=false "
                        "init=orthogonal");
    free(s);

    n->a.padding = (lipc_padding){LIPC_PAD_EXPLICIT, {2, 1}};
    n->a.pad[0] = n->a.pad[1] = 2;
    n->a.pad[2] = n->a.pad[3] = 1;
    n->a.fold_identity = true;
    s = attrs_of(n);
    cr_assert_str_eq(s, "out=8 kernel=3x3 stride=2x2 padding=2x1 bias=false "
                        "init=orthogonal pad=2,2,1,1 +identity");
    free(s);
    lipc_graph_free(g);
}

Test(print_attrs, other_kinds)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *sh = add_node(g, LIPC_OP_SHIFT, "s", 1, NULL, NULL);
    char *s = attrs_of(sh);
    cr_assert_str_eq(s, "");  /* by = 0 is the zeroed default */
    free(s);
    sh->a.by = -0.5;
    s = attrs_of(sh);
    cr_assert_str_eq(s, "by=-0.5");
    free(s);

    lipc_node *mm = add_node(g, LIPC_OP_MINMAX, "m", 2, NULL, NULL);
    s = attrs_of(mm);
    cr_assert_str_eq(s, "");
    free(s);
    mm->a.pairing = LIPC_PAIR_ADJACENT;
    s = attrs_of(mm);
    cr_assert_str_eq(s, "pairing=adjacent");
    free(s);

    lipc_node *pd = add_node(g, LIPC_OP_PAD, "p", 3, NULL, NULL);
    pd->a.pad_to = (lipc_intlist){2, {32, 32}};
    s = attrs_of(pd);
    cr_assert_str_eq(s, "to=[32,32]");
    free(s);
    pd->a.pad[0] = pd->a.pad[1] = pd->a.pad[2] = pd->a.pad[3] = 2;
    s = attrs_of(pd);
    cr_assert_str_eq(s, "to=[32,32] pad=2,2,2,2");
    free(s);

    lipc_node *d = add_node(g, LIPC_OP_DENSE, "d", 4, NULL, NULL);
    d->a.out = 10;
    d->a.normalize = true;
    d->a.fold_identity = true;
    s = attrs_of(d);
    cr_assert_str_eq(s, "out=10 normalize=true +identity");
    free(s);

    /* an op without fields (and without defaults) prints nothing */
    lipc_node *r = add_node(g, LIPC_OP_RELU, "r", 5, NULL, NULL);
    s = attrs_of(r);
    cr_assert_str_eq(s, "");
    free(s);
    lipc_graph_free(g);
}

/* ---- text ----------------------------------------------------------------------- */

Test(print_text, shows_nodes_residuals_params_and_bounds)
{
    tiny t = make_tiny();
    char *s = print_to_string(t.g, LIPC_FORMAT_TEXT);
    cr_assert(strncmp(s, "graph tiny  (input 4x8x8 in [0,1], 10 classes)\n",
                      strlen("graph tiny  (input 4x8x8 in [0,1], 10 classes)\n")) == 0,
              "header:\n%s", s);
    cr_assert_contains(s, "# a test graph");
    cr_assert_contains(s, "%0");
    cr_assert_contains(s, "shift %0 by=-0.5");
    cr_assert_contains(s, "conv2d %1 out=4 kernel=3x3 pad=1,1,1,1 +identity");
    cr_assert_contains(s, "[folded residual res_f]");
    cr_assert_contains(s, "lip=opnorm(conv-fft)");
    cr_assert_contains(s, "lip=1");
    cr_assert_contains(s, "lip=loose(1 + K(body))");
    cr_assert_contains(s, "[in residual res_k]");
    cr_assert_contains(s, "[closes residual res_k (kept: body is nonlinear (minmax))]");
    cr_assert_contains(s, "add %2 %5");
    cr_assert_contains(s, ": 4x8x8");
    cr_assert_contains(s, ": 256");
    cr_assert_contains(s, "@ m.yaml:3:5");
    cr_assert_contains(s, "(output)");
    cr_assert_contains(s, "residuals: 1 folded, 1 kept\n");
    cr_assert_contains(s, "folded into %2");
    cr_assert_contains(s, "kept: body is nonlinear (minmax)");
    cr_assert_contains(s, "(blocked at m.yaml:10:7)");
    cr_assert_contains(s, "params: 8 tensors, 3014 values\n");
    cr_assert_contains(s, "res_f.conv2d_0.weight");
    cr_assert_contains(s, "4x4x3x3");
    cr_assert_contains(s, "kaiming");
    cr_assert_contains(s, "head.bias");
    cr_assert_contains(s, "lipschitz: K_sub = product of 3 bounds (opnorm x1, const x0, loose x1, one x1)");
    cr_assert_contains(s, "head: pairwise");
    /* the folded conv is not inside an unfolded residual; the flatten has no bound */
    cr_assert(!line_has(s, "res_f.conv2d_0", "in residual"));
    cr_assert(line_has(s, "res_k.minmax_0", "in residual res_k"));
    cr_assert(!line_has(s, "flatten_0", "lip="));

    /* deterministic: printing twice gives the same bytes */
    char *again = print_to_string(t.g, LIPC_FORMAT_TEXT);
    cr_assert_str_eq(s, again);
    free(again);
    free(s);
    lipc_graph_free(t.g);
}

Test(print_text, bound_values_when_known)
{
    tiny t = make_tiny();
    t.folded->lip.value = 2.0;
    t.add->lip.value = 3.0;
    char *s = print_to_string(t.g, LIPC_FORMAT_TEXT);
    cr_assert_contains(s, "lip=opnorm(conv-fft)=2");
    cr_assert_contains(s, "= 6;");
    free(s);
    lipc_graph_free(t.g);
}

Test(print_text, graph_before_shapes)
{
    lipc_graph *g = lipc_graph_new();
    g->name = "bare";
    lipc_node *in = add_node(g, LIPC_OP_INPUT, "input", 1, NULL, NULL);
    lipc_node *r = add_node(g, LIPC_OP_RELU, NULL, 2, in, NULL);
    g->input = in;
    g->output = r;
    char *s = print_to_string(g, LIPC_FORMAT_TEXT);
    cr_assert_contains(s, "relu %0");
    cr_assert_contains(s, ": ?");
    cr_assert_contains(s, "residuals: 0 folded, 0 kept\n");
    cr_assert_contains(s, "params: 0 tensors, 0 values\n");
    cr_assert_lacks(s, "lipschitz:");
    free(s);
    lipc_graph_free(g);
}

/* ---- DOT ------------------------------------------------------------------------- */

Test(print_dot, digraph_with_cluster_for_kept_residual)
{
    tiny t = make_tiny();
    char *s = print_to_string(t.g, LIPC_FORMAT_DOT);
    cr_assert(strncmp(s, "digraph \"tiny\" {", 16) == 0, "%s", s);
    cr_assert_contains(s, "rankdir=TB;");
    cr_assert_contains(s, "node [shape=box, fontname=\"monospace\"];");
    cr_assert_contains(s, "subgraph cluster_res1 {");
    cr_assert_contains(s, "label=\"residual res_k");
    cr_assert_contains(s, "style=dashed;");
    cr_assert_lacks(s, "cluster_res0");   /* res_f is folded: no cluster */
    cr_assert_contains(s, "style=filled, fillcolor=lightblue");
    cr_assert_contains(s, "folded: x + conv2d(x)");
    cr_assert_contains(s, "n0 -> n1;");
    cr_assert_contains(s, "n2 -> n6;");
    cr_assert_contains(s, "n5 -> n6;");
    cr_assert_contains(s, "%1 shift by=-0.5\\ninput.shift_0\\n4x8x8\\nlip=1");

    /* the body nodes sit inside the cluster, the add outside it */
    const char *open = strstr(s, "subgraph cluster_res1 {");
    const char *close = strstr(open, "\n  }\n");
    cr_assert_not_null(close);
    const char *body = strstr(s, "n3 [label=");
    cr_assert(body > open && body < close);
    const char *add = strstr(s, "n6 [label=");
    cr_assert(add && (add < open || add > close));

    int depth = 0;
    for (const char *p = s; *p; p++)
        depth += *p == '{' ? 1 : *p == '}' ? -1 : 0;
    cr_assert_eq(depth, 0);
    free(s);
    lipc_graph_free(t.g);
}

Test(print_dot, escapes_quotes_and_backslashes)
{
    lipc_graph *g = lipc_graph_new();
    g->name = "we\"ird\\name";
    lipc_node *in = add_node(g, LIPC_OP_INPUT, "in\"put", 1, NULL, NULL);
    g->input = g->output = in;
    char *s = print_to_string(g, LIPC_FORMAT_DOT);
    cr_assert(strncmp(s, "digraph \"we\\\"ird\\\\name\" {", 25) == 0, "%s", s);
    cr_assert_contains(s, "in\\\"put");
    free(s);
    lipc_graph_free(g);
}

Test(print_dot, nested_unfolded_residuals)
{
    tiny t = make_tiny();
    /* make res_f an open residual around res_k's body instead of a folded one */
    lipc_residual *outer = lipc_graph_add_residual(t.g, "outer", LOC(20, 1));
    t.res_k->parent = outer;
    outer->add = t.add;          /* the verifier would object; the printer must not */
    t.body1->scope = t.res_k;
    char *s = print_to_string(t.g, LIPC_FORMAT_DOT);
    const char *o = strstr(s, "subgraph cluster_res2 {");
    const char *k = strstr(s, "subgraph cluster_res1 {");
    cr_assert(o && k && o < k, "%s", s);
    free(s);
    lipc_graph_free(t.g);
}

/* ---- JSON ------------------------------------------------------------------------ */

static json_t *node_by_id(json_t *nodes, int id)
{
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        if (json_integer_value(json_object_get(n, "id")) == id)
            return n;
    }
    return NULL;
}

Test(print_json, parses_back_with_every_required_key)
{
    tiny t = make_tiny();
    char *s = print_to_string(t.g, LIPC_FORMAT_JSON);
    json_error_t err;
    json_t *root = json_loads(s, 0, &err);
    cr_assert_not_null(root, "line %d: %s\n%s", err.line, err.text, s);
    cr_assert_str_eq(json_string_value(json_object_get(root, "name")), "tiny");
    cr_assert_str_eq(json_string_value(json_object_get(root, "description")), "a test graph");
    cr_assert_str_eq(json_string_value(json_object_get(root, "file")), "m.yaml");
    cr_assert_eq(json_integer_value(json_object_get(root, "classes")), 10);
    json_t *input = json_object_get(root, "input");
    cr_assert_eq(json_array_size(json_object_get(input, "shape")), 3);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(input, "shape"), 0)), 4);
    cr_assert_float_eq(json_number_value(json_array_get(json_object_get(input, "range"), 1)),
                       1.0, 1e-12);

    json_t *nodes = json_object_get(root, "nodes");
    cr_assert(json_is_array(nodes));
    cr_assert_eq(json_array_size(nodes), (size_t)lipc_graph_count_nodes(t.g));
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        cr_assert(json_is_integer(json_object_get(n, "id")));
        cr_assert(json_is_string(json_object_get(n, "op")));
        cr_assert(json_is_string(json_object_get(n, "name")));
        cr_assert(json_is_array(json_object_get(n, "inputs")));
        cr_assert(json_is_array(json_object_get(n, "shape")));
        cr_assert(json_is_string(json_object_get(n, "loc")));
        cr_assert(json_is_object(json_object_get(n, "attrs")));
        cr_assert(json_is_array(json_object_get(n, "params")));
    }

    json_t *add = node_by_id(nodes, t.add->id);
    cr_assert_str_eq(json_string_value(json_object_get(add, "op")), "add");
    json_t *ins = json_object_get(add, "inputs");
    cr_assert_eq(json_array_size(ins), 2);
    cr_assert_eq(json_integer_value(json_array_get(ins, 0)), t.folded->id);
    cr_assert_eq(json_integer_value(json_array_get(ins, 1)), t.body2->id);
    cr_assert_str_eq(json_string_value(json_object_get(add, "loc")), "m.yaml:8:5");
    json_t *lip = json_object_get(add, "lipschitz");
    cr_assert(json_is_object(lip));
    cr_assert_str_eq(json_string_value(json_object_get(lip, "kind")), "loose");
    cr_assert_str_eq(json_string_value(json_object_get(lip, "method")), "1 + K(body)");
    cr_assert(json_is_false(json_object_get(lip, "exact")));
    cr_assert(json_is_null(json_object_get(lip, "value")));

    json_t *shift = node_by_id(nodes, t.shift->id);
    lip = json_object_get(shift, "lipschitz");
    cr_assert_float_eq(json_number_value(json_object_get(lip, "value")), 1.0, 1e-12);
    cr_assert_float_eq(json_number_value(json_object_get(json_object_get(shift, "attrs"), "by")),
                       -0.5, 1e-12);
    /* no annotation, no key */
    cr_assert_null(json_object_get(node_by_id(nodes, t.flat->id), "lipschitz"));

    /* every field of the op's table, typed */
    json_t *conv = json_object_get(node_by_id(nodes, t.folded->id), "attrs");
    cr_assert_eq(json_integer_value(json_object_get(conv, "out")), 4);
    cr_assert_eq(json_array_size(json_object_get(conv, "kernel")), 2);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(conv, "stride"), 1)), 1);
    cr_assert_str_eq(json_string_value(json_object_get(conv, "padding")), "same");
    cr_assert(json_is_true(json_object_get(conv, "bias")));
    cr_assert_str_eq(json_string_value(json_object_get(conv, "init")), "default");
    cr_assert_eq(json_array_size(json_object_get(conv, "pad")), 4);
    cr_assert(json_is_true(json_object_get(conv, "fold_identity")));
    json_t *cparams = json_object_get(node_by_id(nodes, t.folded->id), "params");
    cr_assert_str_eq(json_string_value(json_array_get(cparams, 0)), "res_f.conv2d_0.weight");
    cr_assert_eq(json_array_size(json_object_get(node_by_id(nodes, t.input->id), "shape")), 3);

    json_t *res = json_object_get(root, "residuals");
    cr_assert_eq(json_array_size(res), 2);
    json_t *r0 = json_array_get(res, 0), *r1 = json_array_get(res, 1);
    cr_assert_str_eq(json_string_value(json_object_get(r0, "state")), "folded");
    cr_assert_eq(json_integer_value(json_object_get(r0, "node")), t.folded->id);
    cr_assert_null(json_object_get(r0, "why"));
    cr_assert_str_eq(json_string_value(json_object_get(r1, "state")), "kept");
    cr_assert_str_eq(json_string_value(json_object_get(r1, "why")), "body is nonlinear (minmax)");
    cr_assert_str_eq(json_string_value(json_object_get(r1, "loc")), "m.yaml:8:3");
    cr_assert_eq(json_integer_value(json_object_get(r1, "node")), t.add->id);

    json_t *params = json_object_get(root, "params");
    cr_assert_eq(json_array_size(params), (size_t)t.g->n_params);
    json_t *p0 = json_array_get(params, 0), *p1 = json_array_get(params, 1);
    cr_assert_str_eq(json_string_value(json_object_get(p0, "name")), "res_f.conv2d_0.weight");
    cr_assert_eq(json_array_size(json_object_get(p0, "shape")), 4);
    cr_assert_eq(json_integer_value(json_object_get(p0, "numel")), 144);
    cr_assert_eq(json_integer_value(json_object_get(p0, "offset")), 0);
    cr_assert_str_eq(json_string_value(json_object_get(p0, "init")), "kaiming");
    cr_assert_eq(json_integer_value(json_object_get(p0, "owner")), t.folded->id);
    cr_assert_eq(json_integer_value(json_object_get(p1, "offset")), 144);
    cr_assert_str_eq(json_string_value(json_object_get(p1, "init")), "zeros");

    json_decref(root);
    free(s);
    lipc_graph_free(t.g);
}

Test(print_json, shapes_not_inferred_are_empty)
{
    lipc_graph *g = lipc_graph_new();
    g->name = "bare";
    lipc_node *in = add_node(g, LIPC_OP_INPUT, "input", 1, NULL, NULL);
    lipc_node *c = add_node(g, LIPC_OP_CONV2D, "c", 2, in, NULL);
    c->a.out = 3;
    g->input = in;
    g->output = c;
    char *s = print_to_string(g, LIPC_FORMAT_JSON);
    json_t *root = json_loads(s, 0, NULL);
    cr_assert_not_null(root, "%s", s);
    cr_assert_null(json_object_get(root, "description"));
    json_t *node = json_array_get(json_object_get(root, "nodes"), 1);
    cr_assert(json_is_array(json_object_get(node, "shape")));
    cr_assert_eq(json_array_size(json_object_get(node, "shape")), 0);
    cr_assert_null(json_object_get(json_object_get(node, "attrs"), "pad"));
    cr_assert_null(json_object_get(node, "lipschitz"));
    json_decref(root);
    free(s);
    lipc_graph_free(g);
}

/* ---- out of memory --------------------------------------------------------------- */

Test(print_oom, every_allocation_failure_is_flagged)
{
    tiny t = make_tiny();
    for (lipc_format f = LIPC_FORMAT_TEXT; f <= LIPC_FORMAT_JSON; f++) {
        for (long k = 1; k < 40; k++) {
            lipc_buf b;
            lipc_buf_init(&b);
            lipc_alloc_fail_after(k);
            lipc_graph_print(t.g, f, &b);
            long made = lipc_alloc_fail_after(0);
            if (made < k) {
                cr_assert(!b.failed, "format %d failed with %ld allocations", (int)f, made);
                lipc_buf_free(&b);
                break;
            }
            cr_assert(b.failed, "format %d, allocation %ld failed silently", (int)f, k);
            lipc_buf_free(&b);
        }
    }
    lipc_graph_free(t.g);
}

/* ---- verifier -------------------------------------------------------------------- */

static int verify_errors(const lipc_graph *g)
{
    lipc_diags d;
    lipc_diags_init(&d);
    bool ok = lipc_graph_verify(g, "test-pass", &d);
    int n = d.n_errors;
    if (n > 0) {
        lipc_buf b;
        lipc_buf_init(&b);
        lipc_diags_format(&d, &b);
        cr_assert_contains(lipc_buf_str(&b), "internal error after pass 'test-pass'");
        lipc_buf_free(&b);
    }
    cr_assert_eq(ok, n == 0, "verify returned %d with %d errors", ok, n);
    lipc_diags_free(&d);
    return n;
}

Test(verify, accepts_a_good_graph)
{
    tiny t = make_tiny();
    cr_assert_eq(verify_errors(t.g), 0);
    cr_assert(lipc_graph_verify(t.g, "x", NULL));
    lipc_graph_free(t.g);
}

Test(verify, rejects_a_forward_reference)
{
    tiny t = make_tiny();
    t.body0->in[0] = t.body2;
    cr_assert_gt(verify_errors(t.g), 0);
    t.body0->in[0] = t.body0;   /* a self-loop is a forward reference too */
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);
}

Test(verify, rejects_an_input_not_in_the_graph)
{
    tiny t = make_tiny();
    lipc_graph_unlink(t.g, t.body1);
    cr_assert_gt(verify_errors(t.g), 0);   /* body2 still reads the unlinked minmax */
    lipc_graph_free(t.g);
}

Test(verify, rejects_a_wrong_arity)
{
    tiny t = make_tiny();
    t.add->n_in = 1;
    cr_assert_gt(verify_errors(t.g), 0);
    t.add->n_in = 2;
    t.flat->in[1] = t.shift;
    t.flat->n_in = 2;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);
}

Test(verify, rejects_a_dangling_residual)
{
    tiny t = make_tiny();
    lipc_residual *r = lipc_graph_add_residual(t.g, "dangling", LOC(30, 1));
    (void)r;
    cr_assert_gt(verify_errors(t.g), 0);   /* add is NULL */
    lipc_graph_free(t.g);

    t = make_tiny();
    lipc_graph_unlink(t.g, t.add);      /* the kept residual's join is gone */
    lipc_graph_replace_uses(t.g, t.add, t.folded);
    t.g->output = t.head;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.folded->a.fold_identity = false;  /* folded, but the conv does not say so */
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.res_k->add = t.body2;             /* kept, but joined at a conv */
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);
}

Test(verify, rejects_broken_inputs_outputs_and_links)
{
    tiny t = make_tiny();
    t.g->input = t.shift;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    lipc_node *second = lipc_graph_add_node(t.g, LIPC_OP_INPUT, "input2", LOC(40, 1));
    cr_assert_not_null(second);
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.g->output = NULL;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.body1->prev = t.shift;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.g->last = t.flat;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.head->next = t.shift;            /* a cycle: the walk must still end */
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.body1->id = t.body0->id;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);
}

Test(verify, rejects_bad_params_and_shapes)
{
    tiny t = make_tiny();
    t.g->params[t.body0->param[0]].owner = t.body2;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.head->param[1] = t.g->n_params;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.flat->shape.rank = 0;
    cr_assert_gt(verify_errors(t.g), 0);
    t.g->shapes_known = false;          /* before infer-shapes, no shape is fine */
    cr_assert_eq(verify_errors(t.g), 0);
    lipc_graph_free(t.g);

    t = make_tiny();
    t.body1->shape.d[2] = 0;
    cr_assert_gt(verify_errors(t.g), 0);
    lipc_graph_free(t.g);
}

/* Running out of memory is not a broken invariant: the verifier stays silent
 * (no "internal error" the user could not act on) and lets the caller's own
 * allocations report it. */
Test(verify, out_of_memory_is_not_an_internal_error)
{
    tiny t = make_tiny();
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_alloc_fail_after(1);
    bool ok = lipc_graph_verify(t.g, "p", &d);
    lipc_alloc_fail_after(0);
    cr_assert(ok);
    cr_assert_eq(d.n_errors, 0);
    lipc_diags_free(&d);
    lipc_graph_free(t.g);
}
