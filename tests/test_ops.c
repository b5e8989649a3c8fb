/* tests/test_ops.c: the op registry, each op's shape rule, reference kernel and
 * Lipschitz classification, and the reference interpreter.
 *
 * Kernels are checked against independent formulas (conv2d against im2col on an
 * explicitly padded copy), folded layers against x + layer(x), and the avgpool
 * constant against the largest singular value of its dense operator, built
 * column by column. Random data comes from a seeded lipc_rng; the seed is in
 * every message that depends on it (set LIPC_TEST_SEED to replay another). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "ir/ir.h"
#include "tests/testutil.h"

/* ---- building tiny graphs by hand ----------------------------------------- */

static lipc_loc at_line(int line) { return (lipc_loc){"test.yaml", line, 3}; }


static lipc_shape shape3(int c, int h, int w) { return (lipc_shape){3, {c, h, w}}; }
static lipc_shape shape1(int f) { return (lipc_shape){1, {f, 0, 0}}; }

static bool infer(lipc_graph *g, lipc_node *n, lipc_diags *d)
{
    return lipc_op_info(n->op)->infer(g, n, d);
}

/* The input node of a fresh graph, shape inferred. */
static lipc_node *mk_input(lipc_graph *g, lipc_shape s)
{
    g->input_shape = s;
    lipc_node *n = test_op_node(g, LIPC_OP_INPUT, NULL, NULL);
    g->input = n;
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert(infer(g, n, &d));
    lipc_diags_free(&d);
    return n;
}

/* Infers n and asserts no diagnostics. */
static void infer_ok(lipc_graph *g, lipc_node *n)
{
    lipc_diags d;
    lipc_diags_init(&d);
    bool ok = infer(g, n, &d);
    cr_assert(ok && d.n_errors == 0, "infer of %s failed: %s", lipc_op_info(n->op)->name,
              d.first ? d.first->text : "(no message)");
    lipc_diags_free(&d);
}

static double *alloc_doubles(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    cr_assert_not_null(p);
    return p;
}

/* A parameter block for g filled with N(0, 1). */
static double *random_params(const lipc_graph *g, lipc_rng *r)
{
    double *p = alloc_doubles(g->n_param_elems);
    test_fill_normal(r, p, g->n_param_elems);
    return p;
}

/* Runs one node on one input buffer: out [n_batch, numel(n->shape)]. */
static void run1(const lipc_graph *g, const lipc_node *n, const double *params,
                 int n_batch, const double *x, double *out)
{
    const double *in[2] = {x, NULL};
    cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, in, out), LIPC_OK);
}

static size_t numel(lipc_shape s) { return (size_t)lipc_shape_numel(s); }

/* ---- registry -------------------------------------------------------------- */

Test(registry, table_matches_ops_def)
{
    static const char *const spelled[] = {
#define LIPC_OP(ID, name) #name,
#include "ir/ops.def"
#undef LIPC_OP
    };
    for (int op = 0; op < LIPC_OP_COUNT; op++) {
        const lipc_op_desc *desc = lipc_op_info((lipc_op)op);
        cr_assert_not_null(desc);
        cr_assert_str_eq(desc->name, spelled[op]);
        cr_assert_eq(lipc_op_lookup(desc->name), (lipc_op)op);
        cr_assert_not_null(desc->summary);
        cr_assert_not_null(desc->infer, "%s has no infer", desc->name);
        cr_assert_not_null(desc->lipschitz, "%s has no lipschitz", desc->name);
        cr_assert(op == LIPC_OP_INPUT || desc->ref_forward,
                  "%s has no reference kernel", desc->name);
        cr_assert(desc->n_inputs >= 0 && desc->n_inputs <= LIPC_MAX_INPUTS);
        for (const lipc_field *f = desc->fields; f && f->key; f++) {
            cr_assert_lt(f->offset, sizeof(lipc_attrs), "%s.%s", desc->name, f->key);
            cr_assert(f->kind != LIPC_FIELD_ENUM || f->names, "%s.%s", desc->name, f->key);
            cr_assert_not_null(f->help, "%s.%s has no help", desc->name, f->key);
            cr_assert_eq(lipc_field_find(desc->fields, f->key), f);
        }
        if (desc->primary)
            cr_assert_not_null(lipc_field_find(desc->fields, desc->primary));
    }
    cr_assert_eq(lipc_op_lookup("conv2d"), LIPC_OP_CONV2D);
    cr_assert_eq(lipc_op_lookup("Conv2d"), LIPC_OP_COUNT);
    cr_assert_eq(lipc_op_lookup("nope"), LIPC_OP_COUNT);
}

Test(registry, op_properties)
{
    for (int op = 0; op < LIPC_OP_COUNT; op++) {
        const lipc_op_desc *desc = lipc_op_info((lipc_op)op);
        bool pre = op == LIPC_OP_SHIFT || op == LIPC_OP_PAD;
        bool user = op != LIPC_OP_INPUT && op != LIPC_OP_ADD;
        bool linear = op == LIPC_OP_CONV2D || op == LIPC_OP_DENSE ||
                      op == LIPC_OP_FLATTEN || op == LIPC_OP_PAD || op == LIPC_OP_AVGPOOL;
        int n_in = op == LIPC_OP_INPUT ? 0 : op == LIPC_OP_ADD ? 2 : 1;
        cr_assert_eq(desc->preprocess, pre, "%s", desc->name);
        cr_assert_eq(desc->user, user, "%s", desc->name);
        cr_assert_eq(desc->linear, linear, "%s", desc->name);
        cr_assert_eq(desc->n_inputs, n_in, "%s", desc->name);
    }
    cr_assert_str_eq(lipc_op_info(LIPC_OP_SHIFT)->primary, "by");
    cr_assert_null(lipc_op_info(LIPC_OP_PAD)->primary);
}

Test(registry, user_names)
{
    const char *const *names = lipc_op_user_names();
    int count = 0;
    for (; names[count]; count++) {
        cr_assert_str_neq(names[count], "input");
        cr_assert_str_neq(names[count], "add");
    }
    cr_assert_eq(count, LIPC_OP_COUNT - 2);
    cr_assert_eq(lipc_op_user_names(), names);
}

Test(registry, field_find)
{
    const lipc_field *f = lipc_field_find(lipc_op_info(LIPC_OP_CONV2D)->fields, "kernel");
    cr_assert_not_null(f);
    cr_assert_eq(f->kind, LIPC_FIELD_INT2);
    cr_assert(f->required);
    cr_assert_eq(f->offset, offsetof(lipc_attrs, kernel));
    cr_assert_null(lipc_field_find(lipc_op_info(LIPC_OP_CONV2D)->fields, "kernal"));
    cr_assert_null(lipc_field_find(lipc_op_info(LIPC_OP_RELU)->fields, "out"));
    cr_assert_null(lipc_field_find(NULL, "out"));
}

static int count_names(const char *const *names)
{
    int k = 0;
    while (names[k])
        k++;
    return k;
}

Test(registry, name_tables)
{
    cr_assert_eq(count_names(lipc_init_names), LIPC_INIT_LIRESNET + 1);
    cr_assert_str_eq(lipc_init_names[LIPC_INIT_ORTHOGONAL], "orthogonal");
    cr_assert_eq(count_names(lipc_pairing_names), LIPC_PAIR_ADJACENT + 1);
    cr_assert_eq(count_names(lipc_lip_kind_names), LIPC_LIP_HEAD + 1);
    cr_assert_str_eq(lipc_lip_kind_names[LIPC_LIP_LOOSE], "loose");
    cr_assert_eq(count_names(lipc_loss_names), LIPC_LOSS_TRADES + 1);
    cr_assert_eq(count_names(lipc_optim_names), LIPC_OPTIM_SGD + 1);
}

Test(registry, shapes)
{
    char b[48];
    cr_assert_str_eq(lipc_shape_str((lipc_shape){0, {0}}, b), "?");
    cr_assert_str_eq(lipc_shape_str(shape1(512), b), "512");
    cr_assert_str_eq(lipc_shape_str(shape3(64, 16, 16), b), "64x16x16");
    cr_assert_eq(lipc_shape_numel(shape3(64, 16, 16)), 64 * 16 * 16);
    cr_assert(lipc_shape_eq(shape3(2, 3, 4), shape3(2, 3, 4)));
    cr_assert(!lipc_shape_eq(shape3(2, 3, 4), shape3(2, 4, 3)));
    cr_assert(!lipc_shape_eq(shape1(24), shape3(2, 3, 4)));
}

/* ---- conv2d ------------------------------------------------------------------ */

/* Independent reference: copy x into an explicitly zero-padded tensor, unfold it
 * into columns (im2col) and multiply by W reshaped [c_out, c_in kh kw].
 * x [n_batch, c_in, h, w], out [n_batch, c_out, oh, ow]. */
static void conv_im2col(int n_batch, int c_in, int h, int w, const double *x, int c_out,
                        int kh, int kw, int sh, int sw, const int pad[4],
                        const double *wt, const double *bias, double *out)
{
    int ph = h + pad[0] + pad[1], pw = w + pad[2] + pad[3];
    int oh = (ph - kh) / sh + 1, ow = (pw - kw) / sw + 1;
    int rows = c_in * kh * kw;
    double *padded = alloc_doubles((size_t)c_in * ph * pw);
    double *cols = alloc_doubles((size_t)rows * oh * ow);
    for (int b = 0; b < n_batch; b++) {
        memset(padded, 0, (size_t)c_in * ph * pw * sizeof *padded);
        for (int i = 0; i < c_in; i++)
            for (int y = 0; y < h; y++)
                for (int xx = 0; xx < w; xx++)
                    padded[((size_t)i * ph + y + pad[0]) * pw + xx + pad[2]] =
                        x[(((size_t)b * c_in + i) * h + y) * w + xx];
        for (int i = 0; i < c_in; i++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++)
                    for (int p = 0; p < oh; p++)
                        for (int q = 0; q < ow; q++)
                            cols[((size_t)(i * kh + ky) * kw + kx) * oh * ow + p * ow + q] =
                                padded[((size_t)i * ph + p * sh + ky) * pw + q * sw + kx];
        for (int o = 0; o < c_out; o++)
            for (int pq = 0; pq < oh * ow; pq++) {
                double acc = bias ? bias[o] : 0.0;
                for (int r = 0; r < rows; r++)
                    acc += wt[(size_t)o * rows + r] * cols[(size_t)r * oh * ow + pq];
                out[(((size_t)b * c_out + o) * oh * ow) + pq] = acc;
            }
    }
    free(padded);
    free(cols);
}

typedef struct conv_case {
    int c_in, h, w, c_out, kh, kw, sh, sw;
    lipc_pad_mode mode;
    int amount[2];
    bool bias;
    int oh, ow;             /* expected output size */
    int pad[4];             /* expected resolved padding */
} conv_case;

static const conv_case conv_cases[] = {
    /* c_in h w  c_out kh kw sh sw  mode  amount  bias  oh ow  pad */
    {3, 7, 7, 4, 3, 3, 1, 1, LIPC_PAD_SAME, {0, 0}, true, 7, 7, {1, 1, 1, 1}},
    {2, 8, 8, 3, 4, 4, 2, 2, LIPC_PAD_SAME, {0, 0}, true, 4, 4, {1, 1, 1, 1}},
    {2, 7, 6, 3, 3, 2, 2, 1, LIPC_PAD_SAME, {0, 0}, true, 4, 6, {1, 1, 0, 1}},
    {1, 5, 5, 1, 5, 5, 1, 1, LIPC_PAD_VALID, {0, 0}, true, 1, 1, {0, 0, 0, 0}},
    {3, 1, 1, 2, 1, 1, 1, 1, LIPC_PAD_SAME, {0, 0}, true, 1, 1, {0, 0, 0, 0}},
    {3, 1, 1, 2, 3, 3, 1, 1, LIPC_PAD_SAME, {0, 0}, false, 1, 1, {1, 1, 1, 1}},
    {2, 6, 6, 2, 3, 3, 2, 2, LIPC_PAD_EXPLICIT, {1, 2}, true, 3, 4, {1, 1, 2, 2}},
    {4, 8, 8, 4, 4, 4, 4, 4, LIPC_PAD_VALID, {0, 0}, false, 2, 2, {0, 0, 0, 0}},
    {2, 5, 5, 3, 2, 2, 1, 1, LIPC_PAD_SAME, {0, 0}, true, 5, 5, {0, 1, 0, 1}},
    {2, 9, 9, 3, 5, 5, 2, 2, LIPC_PAD_SAME, {0, 0}, true, 5, 5, {2, 2, 2, 2}},
    {1, 6, 5, 2, 3, 3, 3, 2, LIPC_PAD_VALID, {0, 0}, true, 2, 2, {0, 0, 0, 0}},
    {2, 4, 4, 1, 3, 1, 1, 1, LIPC_PAD_EXPLICIT, {0, 3}, true, 2, 10, {0, 0, 3, 3}},
};

static lipc_node *mk_conv(lipc_graph *g, lipc_node *in, int c_out, int kh, int kw,
                          int sh, int sw)
{
    lipc_node *n = test_op_node(g, LIPC_OP_CONV2D, in, NULL);
    n->a.out = c_out;
    n->a.kernel[0] = kh;
    n->a.kernel[1] = kw;
    n->a.stride[0] = sh;
    n->a.stride[1] = sw;
    return n;
}

Test(conv2d, defaults)
{
    lipc_attrs a;
    memset(&a, 0, sizeof a);
    lipc_op_info(LIPC_OP_CONV2D)->defaults(&a);
    cr_assert_eq(a.stride[0], 1);
    cr_assert_eq(a.stride[1], 1);
    cr_assert_eq(a.padding.mode, LIPC_PAD_SAME);
    cr_assert(a.bias);
    cr_assert_eq(a.init, LIPC_INIT_DEFAULT);
}

Test(conv2d, matches_im2col)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    const int n_batch = 2;
    for (size_t k = 0; k < sizeof conv_cases / sizeof conv_cases[0]; k++) {
        const conv_case *cc = &conv_cases[k];
        lipc_graph *g = lipc_graph_new();
        lipc_node *x = mk_input(g, shape3(cc->c_in, cc->h, cc->w));
        lipc_node *n = mk_conv(g, x, cc->c_out, cc->kh, cc->kw, cc->sh, cc->sw);
        n->a.padding.mode = cc->mode;
        n->a.padding.amount[0] = cc->amount[0];
        n->a.padding.amount[1] = cc->amount[1];
        n->a.bias = cc->bias;
        infer_ok(g, n);
        char label[96];
        snprintf(label, sizeof label, "conv case %zu (seed %llu)", k,
                 (unsigned long long)seed);
        cr_assert(lipc_shape_eq(n->shape, shape3(cc->c_out, cc->oh, cc->ow)), "%s", label);
        cr_assert_arr_eq(n->a.pad, cc->pad, sizeof cc->pad, "%s: padding", label);
        /* parameters: weight [c_out, c_in, kh, kw], then bias [c_out] */
        cr_assert_eq(n->n_param, cc->bias ? 2 : 1, "%s", label);
        const lipc_param *wp = &g->params[n->param[0]];
        cr_assert_eq(wp->role, LIPC_PARAM_WEIGHT);
        cr_assert_eq(wp->rank, 4);
        cr_assert_eq(wp->numel, (size_t)cc->c_out * cc->c_in * cc->kh * cc->kw);
        if (cc->bias) {
            const lipc_param *bp = &g->params[n->param[1]];
            cr_assert_eq(bp->role, LIPC_PARAM_BIAS);
            cr_assert_eq(bp->offset, wp->offset + wp->numel);
            cr_assert_eq(bp->numel, (size_t)cc->c_out);
        }

        double *params = random_params(g, &r);
        size_t n_in = n_batch * numel(x->shape), n_out = n_batch * numel(n->shape);
        double *xin = alloc_doubles(n_in), *got = alloc_doubles(n_out),
               *want = alloc_doubles(n_out);
        test_fill_normal(&r, xin, n_in);
        run1(g, n, params, n_batch, xin, got);
        const double *wt = params + wp->offset;
        conv_im2col(n_batch, cc->c_in, cc->h, cc->w, xin, cc->c_out, cc->kh, cc->kw,
                    cc->sh, cc->sw, cc->pad, wt, cc->bias ? wt + wp->numel : NULL, want);
        cr_assert(test_allclose(label, got, want, n_out, 1e-12, 1e-12), "%s", label);
        free(xin);
        free(got);
        free(want);
        free(params);
        lipc_graph_free(g);
    }
}

/* conv2d with fold_identity == the same conv with +1 on the centre tap
 * == x + conv(x), for stride 1, odd kernels, same padding. */
Test(conv2d, fold_identity)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xf01d);
    static const int shapes[][5] = {
        /* c h w kh kw */
        {3, 5, 5, 3, 3}, {2, 6, 4, 3, 3}, {4, 5, 7, 5, 3}, {3, 4, 4, 1, 1}, {1, 1, 1, 3, 3},
    };
    const int n_batch = 3;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int c = shapes[k][0], h = shapes[k][1], w = shapes[k][2];
        int kh = shapes[k][3], kw = shapes[k][4];
        lipc_graph *g = lipc_graph_new();
        lipc_node *x = mk_input(g, shape3(c, h, w));
        lipc_node *folded = mk_conv(g, x, c, kh, kw, 1, 1);
        lipc_node *plain = mk_conv(g, x, c, kh, kw, 1, 1);
        infer_ok(g, folded);
        infer_ok(g, plain);
        folded->a.fold_identity = true;

        double *params = random_params(g, &r);
        /* plain gets folded's weights with the centre tap + 1, and its bias */
        const lipc_param *fw = &g->params[folded->param[0]];
        const lipc_param *pw = &g->params[plain->param[0]];
        memcpy(params + pw->offset, params + fw->offset,
               (fw->numel + (size_t)c) * sizeof *params);
        for (int o = 0; o < c; o++)
            params[pw->offset + (((size_t)o * c + o) * kh + kh / 2) * kw + kw / 2] += 1.0;

        size_t n_el = (size_t)n_batch * c * h * w;
        double *xin = alloc_doubles(n_el), *got = alloc_doubles(n_el),
               *want = alloc_doubles(n_el), *convx = alloc_doubles(n_el);
        test_fill_normal(&r, xin, n_el);
        run1(g, folded, params, n_batch, xin, got);
        run1(g, plain, params, n_batch, xin, want);
        char label[96];
        snprintf(label, sizeof label, "fold conv %dx%dx%d k%dx%d vs centre tap (seed %llu)",
                 c, h, w, kh, kw, (unsigned long long)seed);
        cr_assert(test_allclose(label, got, want, n_el, 1e-12, 1e-12), "%s", label);

        /* x + conv(x) with the unfolded weights */
        folded->a.fold_identity = false;
        run1(g, folded, params, n_batch, xin, convx);
        for (size_t i = 0; i < n_el; i++)
            want[i] = xin[i] + convx[i];
        snprintf(label, sizeof label, "fold conv %dx%dx%d k%dx%d vs x + conv(x) (seed %llu)",
                 c, h, w, kh, kw, (unsigned long long)seed);
        cr_assert(test_allclose(label, got, want, n_el, 1e-12, 1e-12), "%s", label);
        free(xin);
        free(got);
        free(want);
        free(convx);
        free(params);
        lipc_graph_free(g);
    }
}

Test(conv2d, shape_errors)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape1(64));
    lipc_node *n = mk_conv(g, x, 8, 3, 3, 1, 1);
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 1);
    cr_assert_eq(d.first->loc.line, n->loc.line);
    cr_assert(strstr(d.first->text, "feature map"), "%s", d.first->text);
    cr_assert(strstr(d.first->text, "got 64"), "%s", d.first->text);
    cr_assert_not_null(d.first->hint);
    cr_assert_eq(g->n_params, 0);
    lipc_graph_free(g);
    lipc_diags_free(&d);

    /* a kernel larger than its (unpadded) input */
    lipc_diags_init(&d);
    g = lipc_graph_new();
    x = mk_input(g, shape3(2, 3, 3));
    n = mk_conv(g, x, 4, 5, 5, 1, 1);
    n->a.padding.mode = LIPC_PAD_VALID;
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 1);
    cr_assert(strstr(d.first->text, "5x5"), "%s", d.first->text);
    cr_assert(strstr(d.first->text, "2x3x3"), "%s", d.first->text);
    lipc_graph_free(g);
    lipc_diags_free(&d);

    /* absurd sizes are refused before any parameter is declared */
    lipc_diags_init(&d);
    g = lipc_graph_new();
    x = mk_input(g, shape3(3, 8, 8));
    n = mk_conv(g, x, 1 << 21, 3, 3, 1, 1);
    cr_assert(!infer(g, n, &d));
    cr_assert(strstr(d.first->text, "too large"), "%s", d.first->text);
    n = mk_conv(g, x, 1 << 19, 64, 64, 1, 1);
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 2);
    cr_assert_eq(g->n_params, 0);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

Test(conv2d, unknown_input_is_silent)
{
    /* an earlier node failed: no second diagnostic */
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = test_op_node(g, LIPC_OP_INPUT, NULL, NULL); /* never inferred */
    lipc_node *n = mk_conv(g, x, 4, 3, 3, 1, 1);
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 0);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

Test(conv2d, infer_twice_keeps_params)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(2, 4, 4));
    lipc_node *n = mk_conv(g, x, 4, 3, 3, 1, 1);
    infer_ok(g, n);
    size_t elems = g->n_param_elems;
    infer_ok(g, n);
    cr_assert_eq(g->n_params, 2);
    cr_assert_eq(g->n_param_elems, elems);
    lipc_graph_free(g);
}

/* ---- dense ------------------------------------------------------------------------ */

static lipc_node *mk_dense(lipc_graph *g, lipc_node *in, int out)
{
    lipc_node *n = test_op_node(g, LIPC_OP_DENSE, in, NULL);
    n->a.out = out;
    return n;
}

Test(dense, forward_and_normalize)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xde45e);
    const int n_batch = 4, in_f = 7, out_f = 5;
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape1(in_f));
    lipc_node *plain = mk_dense(g, x, out_f);
    lipc_node *head = mk_dense(g, x, out_f);
    head->a.normalize = true;
    head->a.bias = false;
    infer_ok(g, plain);
    infer_ok(g, head);
    cr_assert(lipc_shape_eq(plain->shape, shape1(out_f)));
    cr_assert_eq(plain->n_param, 2);
    cr_assert_eq(head->n_param, 1);
    const lipc_param *pw = &g->params[plain->param[0]];
    cr_assert_eq(pw->rank, 2);
    cr_assert_eq(pw->d[0], out_f);
    cr_assert_eq(pw->d[1], in_f);

    double *params = random_params(g, &r);
    double *hw = params + g->params[head->param[0]].offset;
    for (int i = 0; i < in_f; i++)
        hw[2 * in_f + i] = 0.0; /* a zero row stays zero */
    double xin[4 * 7], got[4 * 5], want[4 * 5];
    test_fill_normal(&r, xin, sizeof xin / sizeof xin[0]);

    /* y = W x + b */
    run1(g, plain, params, n_batch, xin, got);
    const double *w = params + pw->offset, *b = w + pw->numel;
    for (int s = 0; s < n_batch; s++)
        for (int o = 0; o < out_f; o++) {
            double acc = b[o];
            for (int i = 0; i < in_f; i++)
                acc += w[o * in_f + i] * xin[s * in_f + i];
            want[s * out_f + o] = acc;
        }
    char label[64];
    snprintf(label, sizeof label, "dense (seed %llu)", (unsigned long long)seed);
    cr_assert(test_allclose(label, got, want, sizeof got / sizeof got[0], 1e-12, 1e-12));

    /* normalised rows: y_o = <W_o, x> / ||W_o||; check via the unit rows */
    run1(g, head, params, n_batch, xin, got);
    for (int o = 0; o < out_f; o++) {
        double nrm = 0.0;
        for (int i = 0; i < in_f; i++)
            nrm += hw[o * in_f + i] * hw[o * in_f + i];
        nrm = sqrt(nrm);
        double unit = 0.0;
        for (int s = 0; s < n_batch; s++) {
            double acc = 0.0;
            for (int i = 0; i < in_f; i++)
                acc += (nrm > 0 ? hw[o * in_f + i] / nrm : 0.0) * xin[s * in_f + i];
            want[s * out_f + o] = acc;
        }
        for (int i = 0; i < in_f; i++)
            unit += nrm > 0 ? pow(hw[o * in_f + i] / nrm, 2) : 0.0;
        cr_assert(o == 2 ? unit == 0.0 : fabs(unit - 1.0) < 1e-12);
    }
    snprintf(label, sizeof label, "dense normalize (seed %llu)", (unsigned long long)seed);
    cr_assert(test_allclose(label, got, want, sizeof got / sizeof got[0], 1e-12, 1e-12));
    /* the output does not change when a row is rescaled */
    for (int i = 0; i < in_f; i++)
        hw[in_f + i] *= 37.0;
    double again[4 * 5];
    run1(g, head, params, n_batch, xin, again);
    cr_assert(test_allclose(label, again, got, sizeof got / sizeof got[0], 1e-12, 1e-12));
    free(params);
    lipc_graph_free(g);
}

Test(dense, fold_identity)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xf01dde);
    const int n_batch = 3, f = 6;
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape1(f));
    lipc_node *n = mk_dense(g, x, f);
    infer_ok(g, n);
    double *params = random_params(g, &r);
    double xin[3 * 6], got[3 * 6], want[3 * 6], plain[3 * 6];
    test_fill_normal(&r, xin, sizeof xin / sizeof xin[0]);
    n->a.fold_identity = true;
    run1(g, n, params, n_batch, xin, got);
    n->a.fold_identity = false;
    run1(g, n, params, n_batch, xin, plain);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        want[i] = xin[i] + plain[i];
    char label[64];
    snprintf(label, sizeof label, "dense fold vs x + dense(x) (seed %llu)",
             (unsigned long long)seed);
    cr_assert(test_allclose(label, got, want, sizeof got / sizeof got[0], 1e-12, 1e-12));
    /* and == dense with W + I */
    double *w = params + g->params[n->param[0]].offset;
    for (int i = 0; i < f; i++)
        w[i * f + i] += 1.0;
    run1(g, n, params, n_batch, xin, plain);
    cr_assert(test_allclose(label, got, plain, sizeof got / sizeof got[0], 1e-12, 1e-12));
    free(params);
    lipc_graph_free(g);
}

Test(dense, on_a_map_is_an_error)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(64, 4, 4));
    lipc_node *n = mk_dense(g, x, 10);
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 1);
    cr_assert_str_eq(d.first->text, "dense expects a flat vector, got 64x4x4");
    cr_assert_not_null(d.first->hint);
    cr_assert(strstr(d.first->hint, "flatten"), "%s", d.first->hint);
    cr_assert_eq(d.first->loc.line, n->loc.line);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

/* ---- minmax -------------------------------------------------------------------- */

Test(minmax, both_pairings)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(4, 1, 2));
    lipc_node *halves = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    lipc_node *adjacent = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    cr_assert_eq(halves->a.pairing, LIPC_PAIR_HALVES);
    adjacent->a.pairing = LIPC_PAIR_ADJACENT;
    infer_ok(g, halves);
    infer_ok(g, adjacent);
    cr_assert(lipc_shape_eq(halves->shape, shape3(4, 1, 2)));
    /* channels (each 1x2): c0 = [1, -5], c1 = [2, 7], c2 = [0, 9], c3 = [3, -1] */
    const double in[8] = {1, -5, 2, 7, 0, 9, 3, -1};
    double got[8];
    /* halves: (c0, c2) and (c1, c3) */
    const double want_h[8] = {1, 9, 3, 7, 0, -5, 2, -1};
    run1(g, halves, NULL, 1, in, got);
    cr_assert(test_allclose("minmax halves", got, want_h, 8, 0, 0));
    /* adjacent: (c0, c1) and (c2, c3) */
    const double want_a[8] = {2, 7, 1, -5, 3, 9, 0, -1};
    run1(g, adjacent, NULL, 1, in, got);
    cr_assert(test_allclose("minmax adjacent", got, want_a, 8, 0, 0));
    lipc_graph_free(g);

    /* flat features, batch of 2 */
    g = lipc_graph_new();
    x = mk_input(g, shape1(4));
    halves = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    adjacent = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    adjacent->a.pairing = LIPC_PAIR_ADJACENT;
    infer_ok(g, halves);
    infer_ok(g, adjacent);
    const double v[8] = {4, 1, 2, 3, -1, -2, -3, -4};
    const double vh[8] = {4, 3, 2, 1, -1, -2, -3, -4};
    const double va[8] = {4, 1, 3, 2, -1, -2, -3, -4};
    run1(g, halves, NULL, 2, v, got);
    cr_assert(test_allclose("minmax halves flat", got, vh, 8, 0, 0));
    run1(g, adjacent, NULL, 2, v, got);
    cr_assert(test_allclose("minmax adjacent flat", got, va, 8, 0, 0));
    lipc_graph_free(g);
}

Test(minmax, odd_channels_is_an_error)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(3, 4, 4));
    lipc_node *n = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 1);
    cr_assert(strstr(d.first->text, "3x4x4"), "%s", d.first->text);
    cr_assert(strstr(d.first->text, "odd"), "%s", d.first->text);
    lipc_graph_free(g);
    lipc_diags_free(&d);

    lipc_diags_init(&d);
    g = lipc_graph_new();
    x = mk_input(g, shape1(5));
    n = test_op_node(g, LIPC_OP_MINMAX, x, NULL);
    cr_assert(!infer(g, n, &d));
    cr_assert(strstr(d.first->text, "features"), "%s", d.first->text);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

/* ---- shift, relu, flatten ------------------------------------------------------- */

Test(elementwise, shift_relu_flatten)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(2, 1, 2));
    lipc_node *sh = test_op_node(g, LIPC_OP_SHIFT, x, NULL);
    sh->a.by = -0.5;
    lipc_node *re = test_op_node(g, LIPC_OP_RELU, sh, NULL);
    lipc_node *fl = test_op_node(g, LIPC_OP_FLATTEN, re, NULL);
    lipc_node *fl2 = test_op_node(g, LIPC_OP_FLATTEN, fl, NULL);
    infer_ok(g, sh);
    infer_ok(g, re);
    infer_ok(g, fl);
    infer_ok(g, fl2);
    cr_assert(lipc_shape_eq(sh->shape, shape3(2, 1, 2)));
    cr_assert(lipc_shape_eq(fl->shape, shape1(4)));
    cr_assert(lipc_shape_eq(fl2->shape, shape1(4)));
    const double in[4] = {0.0, 1.0, 0.25, 0.75};
    double a[4], b[4], c[4];
    run1(g, sh, NULL, 1, in, a);
    const double want_s[4] = {-0.5, 0.5, -0.25, 0.25};
    cr_assert(test_allclose("shift", a, want_s, 4, 0, 0));
    run1(g, re, NULL, 1, a, b);
    const double want_r[4] = {0.0, 0.5, 0.0, 0.25};
    cr_assert(test_allclose("relu", b, want_r, 4, 0, 0));
    run1(g, fl, NULL, 1, b, c);
    cr_assert(test_allclose("flatten", c, want_r, 4, 0, 0));
    lipc_graph_free(g);
}

/* ---- pad ---------------------------------------------------------------------------- */

static lipc_node *mk_pad(lipc_graph *g, lipc_node *in, int n_to, const int *to,
                         int n_by, const int *by)
{
    lipc_node *n = test_op_node(g, LIPC_OP_PAD, in, NULL);
    n->a.pad_to.n = n_to;
    for (int i = 0; i < n_to; i++)
        n->a.pad_to.v[i] = to[i];
    n->a.pad_by.n = n_by;
    for (int i = 0; i < n_by; i++)
        n->a.pad_by.v[i] = by[i];
    return n;
}

Test(pad, to_and_by)
{
    static const struct {
        int c, h, w, n_to, to[2], n_by, by[4];
        int pad[4], oh, ow;
    } cases[] = {
        {1, 28, 28, 2, {32, 32}, 0, {0}, {2, 2, 2, 2}, 32, 32},
        {2, 28, 27, 2, {31, 30}, 0, {0}, {1, 2, 1, 2}, 31, 30},
        {1, 3, 3, 2, {3, 3}, 0, {0}, {0, 0, 0, 0}, 3, 3},
        {1, 3, 4, 0, {0}, 1, {2}, {2, 2, 2, 2}, 7, 8},
        {2, 3, 4, 0, {0}, 2, {1, 2}, {1, 1, 2, 2}, 5, 8},
        {1, 3, 4, 0, {0}, 4, {0, 1, 2, 3}, {0, 1, 2, 3}, 4, 9},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lipc_graph *g = lipc_graph_new();
        lipc_node *x = mk_input(g, shape3(cases[k].c, cases[k].h, cases[k].w));
        lipc_node *n = mk_pad(g, x, cases[k].n_to, cases[k].to, cases[k].n_by,
                              cases[k].by);
        infer_ok(g, n);
        cr_assert_arr_eq(n->a.pad, cases[k].pad, sizeof n->a.pad, "pad case %zu", k);
        cr_assert(lipc_shape_eq(n->shape, shape3(cases[k].c, cases[k].oh, cases[k].ow)),
                  "pad case %zu", k);
        /* values: input inside, zeros around; the sum and the norm are kept */
        size_t n_in = numel(x->shape), n_out = numel(n->shape);
        double *in = alloc_doubles(2 * n_in), *out = alloc_doubles(2 * n_out);
        for (size_t i = 0; i < 2 * n_in; i++)
            in[i] = 1.0 + (double)i;
        run1(g, n, NULL, 2, in, out);
        int top = cases[k].pad[0], left = cases[k].pad[2];
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < cases[k].c; i++)
                for (int y = 0; y < cases[k].oh; y++)
                    for (int xx = 0; xx < cases[k].ow; xx++) {
                        int sy = y - top, sx = xx - left;
                        bool inside = sy >= 0 && sy < cases[k].h && sx >= 0 &&
                                      sx < cases[k].w;
                        double want = inside ? in[(((size_t)b * cases[k].c + i) *
                                                   cases[k].h + sy) * cases[k].w + sx]
                                             : 0.0;
                        double got = out[(((size_t)b * cases[k].c + i) * cases[k].oh + y) *
                                         cases[k].ow + xx];
                        cr_assert_eq(got, want, "pad case %zu at %d,%d,%d,%d", k, b, i, y, xx);
                    }
        free(in);
        free(out);
        lipc_graph_free(g);
    }
}

/* Runs pad infer expecting one error whose text contains `needle`. */
static void pad_error(lipc_shape s, int n_to, const int *to, int n_by, const int *by,
                      const char *needle)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, s);
    lipc_node *n = mk_pad(g, x, n_to, to, n_by, by);
    cr_assert(!infer(g, n, &d), "expected an error mentioning '%s'", needle);
    cr_assert_eq(d.n_errors, 1);
    cr_assert(strstr(d.first->text, needle), "'%s' lacks '%s'", d.first->text, needle);
    lipc_graph_free(g);
    lipc_diags_free(&d);
}

Test(pad, errors)
{
    const int to[2] = {32, 32}, small[2] = {27, 32}, by[3] = {1, 1, 1};
    pad_error(shape3(1, 28, 28), 0, NULL, 0, NULL, "needs `to` or `by`");
    pad_error(shape3(1, 28, 28), 2, to, 1, by, "not both");
    pad_error(shape3(1, 28, 28), 2, small, 0, NULL, "1x28x28");
    pad_error(shape3(1, 28, 28), 1, to, 0, NULL, "2 values");
    pad_error(shape3(1, 28, 28), 0, NULL, 3, by, "1, 2 or 4");
    pad_error(shape1(784), 2, to, 0, NULL, "got 784");
}

/* ---- avgpool ------------------------------------------------------------------------ */

static lipc_node *mk_pool(lipc_graph *g, lipc_node *in, int kh, int kw, int sh, int sw)
{
    lipc_node *n = test_op_node(g, LIPC_OP_AVGPOOL, in, NULL);
    n->a.kernel[0] = kh;
    n->a.kernel[1] = kw;
    if (sh) {
        n->a.stride[0] = sh;
        n->a.stride[1] = sw;
    }
    return n;
}

/* The largest singular value of A [m, n] (row-major) by power iteration on
 * A^T A, run until the estimate stops moving. It approaches from below. */
static double sigma_max(const double *a, int m, int n, lipc_rng *r)
{
    double *v = alloc_doubles((size_t)n), *av = alloc_doubles((size_t)m);
    test_fill_normal(r, v, (size_t)n);
    double sigma = 0.0;
    for (int it = 0; it < 20000; it++) {
        double nv = 0.0;
        for (int j = 0; j < n; j++)
            nv += v[j] * v[j];
        nv = sqrt(nv);
        for (int j = 0; j < n; j++)
            v[j] /= nv;
        double na = 0.0;
        for (int i = 0; i < m; i++) {
            av[i] = 0.0;
            for (int j = 0; j < n; j++)
                av[i] += a[(size_t)i * n + j] * v[j];
            na += av[i] * av[i];
        }
        double prev = sigma;
        sigma = sqrt(na);
        for (int j = 0; j < n; j++) {
            v[j] = 0.0;
            for (int i = 0; i < m; i++)
                v[j] += a[(size_t)i * n + j] * av[i];
        }
        if (it > 10 && fabs(sigma - prev) <= 1e-15 * sigma)
            break;
    }
    free(v);
    free(av);
    return sigma;
}

/* The dense matrix [numel(out), numel(in)] of a single-input linear node, built
 * column by column from the reference kernel: column j = node(e_j). */
static double *dense_operator(const lipc_graph *g, const lipc_node *n,
                              const double *params, int *m, int *cols)
{
    *cols = (int)numel(n->in[0]->shape);
    *m = (int)numel(n->shape);
    double *a = alloc_doubles((size_t)*m * *cols);
    double *e = alloc_doubles((size_t)*cols), *col = alloc_doubles((size_t)*m);
    for (int j = 0; j < *cols; j++) {
        e[j] = 1.0;
        run1(g, n, params, 1, e, col);
        e[j] = 0.0;
        for (int i = 0; i < *m; i++)
            a[(size_t)i * *cols + j] = col[i];
    }
    free(e);
    free(col);
    return a;
}

Test(avgpool, values_and_default_stride)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(1, 4, 4));
    lipc_node *n = mk_pool(g, x, 2, 2, 0, 0);
    cr_assert_eq(n->a.stride[0], 0, "stride 0 means not given");
    infer_ok(g, n);
    cr_assert_eq(n->a.stride[0], 2);
    cr_assert_eq(n->a.stride[1], 2);
    cr_assert(lipc_shape_eq(n->shape, shape3(1, 2, 2)));
    const double in[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    const double want[4] = {3.5, 5.5, 11.5, 13.5};
    double got[4];
    run1(g, n, NULL, 1, in, got);
    cr_assert(test_allclose("avgpool 2x2", got, want, 4, 1e-15, 0));

    lipc_node *n2 = mk_pool(g, x, 3, 2, 1, 2);
    infer_ok(g, n2);
    cr_assert(lipc_shape_eq(n2->shape, shape3(1, 2, 2)));
    const double want2[4] = {(1 + 2 + 5 + 6 + 9 + 10) / 6.0, (3 + 4 + 7 + 8 + 11 + 12) / 6.0,
                             (5 + 6 + 9 + 10 + 13 + 14) / 6.0,
                             (7 + 8 + 11 + 12 + 15 + 16) / 6.0};
    run1(g, n2, NULL, 1, in, got);
    cr_assert(test_allclose("avgpool 3x2/1x2", got, want2, 4, 1e-14, 0));

    lipc_diags d;
    lipc_diags_init(&d);
    lipc_node *n3 = mk_pool(g, x, 5, 1, 0, 0);
    cr_assert(!infer(g, n3, &d));
    cr_assert(strstr(d.first->text, "1x4x4"), "%s", d.first->text);
    lipc_diags_free(&d);
    lipc_graph_free(g);
}

Test(avgpool, lipschitz_vs_dense_operator)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0xa9);
    static const int cases[][7] = {
        /* c h w kh kw sh sw */
        {1, 6, 6, 2, 2, 2, 2}, {2, 7, 7, 3, 3, 3, 3}, {1, 5, 5, 3, 3, 1, 1},
        {1, 7, 7, 3, 3, 2, 2}, {1, 8, 8, 2, 2, 3, 3}, {1, 5, 7, 2, 3, 1, 2},
        {2, 6, 6, 4, 4, 2, 2}, {1, 9, 4, 3, 1, 2, 1}, {1, 4, 4, 1, 1, 1, 1},
        {1, 6, 7, 2, 3, 2, 1}, {1, 7, 6, 3, 2, 1, 3}, {1, 9, 9, 2, 2, 4, 4},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int *cs = cases[k];
        lipc_graph *g = lipc_graph_new();
        lipc_node *x = mk_input(g, shape3(cs[0], cs[1], cs[2]));
        lipc_node *n = mk_pool(g, x, cs[3], cs[4], cs[5], cs[6]);
        infer_ok(g, n);
        lipc_lip lip;
        lipc_op_info(n->op)->lipschitz(g, n, &lip);
        int m, cols;
        double *a = dense_operator(g, n, NULL, &m, &cols);
        double sigma = sigma_max(a, m, cols, &r);
        bool disjoint = cs[5] >= cs[3] && cs[6] >= cs[4];
        cr_assert_eq(lip.kind, LIPC_LIP_CONST);
        cr_assert_not_null(lip.method);
        cr_assert_eq(lip.exact, disjoint, "case %zu", k);
        cr_assert_geq(lip.value, sigma * (1 - 1e-12),
                      "avgpool case %zu: bound %.12g below the norm %.12g (seed %llu)", k,
                      lip.value, sigma, (unsigned long long)seed);
        if (disjoint)
            cr_assert_leq(fabs(lip.value - sigma), 1e-9,
                          "avgpool case %zu: exact %.12g vs norm %.12g (seed %llu)", k,
                          lip.value, sigma, (unsigned long long)seed);
        if (cs[3] == cs[5] && cs[4] == cs[6])
            cr_assert_leq(fabs(lip.value - 1.0 / sqrt((double)cs[3] * cs[4])), 1e-15);
        free(a);
        lipc_graph_free(g);
    }
}

/* ---- add ----------------------------------------------------------------------------- */

Test(add, forward_and_shape_error)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape1(3));
    lipc_node *body = test_op_node(g, LIPC_OP_RELU, x, NULL);
    lipc_node *n = test_op_node(g, LIPC_OP_ADD, x, body);
    infer_ok(g, body);
    infer_ok(g, n);
    const double a[3] = {1, 2, 3}, b[3] = {10, 20, 30}, want[3] = {11, 22, 33};
    const double *in[2] = {a, b};
    double got[3];
    cr_assert_eq(lipc_ref_node_forward(g, n, NULL, 1, in, got), LIPC_OK);
    cr_assert(test_allclose("add", got, want, 3, 0, 0));
    lipc_graph_free(g);

    /* residual whose body halves the channels: error at the residual, note at
     * the body's last layer */
    lipc_diags d;
    lipc_diags_init(&d);
    g = lipc_graph_new();
    x = mk_input(g, shape3(64, 16, 16));
    lipc_residual *res = lipc_graph_add_residual(g, "res", at_line(40));
    res->skip = x;
    lipc_node *conv = mk_conv(g, x, 32, 3, 3, 1, 1);
    infer_ok(g, conv);
    n = test_op_node(g, LIPC_OP_ADD, x, conv);
    n->closes = res;
    res->add = n;
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.n_errors, 1);
    cr_assert_str_eq(d.first->text, "residual body changes the shape: input is 64x16x16, "
                                    "body output is 32x16x16");
    cr_assert_eq(d.first->loc.line, 40);
    cr_assert_not_null(d.first->notes);
    cr_assert_eq(d.first->notes->loc.line, conv->loc.line);
    cr_assert_str_eq(d.first->notes->text, "the body ends here");
    lipc_diags_free(&d);

    /* without a residual record the error sits at the add itself */
    lipc_diags_init(&d);
    n->closes = NULL;
    cr_assert(!infer(g, n, &d));
    cr_assert_eq(d.first->loc.line, n->loc.line);
    lipc_diags_free(&d);
    lipc_graph_free(g);
}

/* ---- Lipschitz classification --------------------------------------------------- */

static lipc_lip classify(const lipc_graph *g, const lipc_node *n)
{
    lipc_lip lip;
    memset(&lip, 0, sizeof lip);
    lipc_op_info(n->op)->lipschitz(g, n, &lip);
    return lip;
}

Test(lipschitz, classification)
{
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(4, 8, 8));
    lipc_lip l = classify(g, x);
    cr_assert_eq(l.kind, LIPC_LIP_NONE);

    lipc_node *ones[] = {
        test_op_node(g, LIPC_OP_SHIFT, x, NULL), mk_pad(g, x, 0, NULL, 1, (const int[]){1}),
        test_op_node(g, LIPC_OP_FLATTEN, x, NULL), test_op_node(g, LIPC_OP_MINMAX, x, NULL),
        test_op_node(g, LIPC_OP_RELU, x, NULL),
    };
    for (size_t i = 0; i < sizeof ones / sizeof ones[0]; i++) {
        infer_ok(g, ones[i]);
        l = classify(g, ones[i]);
        cr_assert_eq(l.kind, LIPC_LIP_ONE, "%s", lipc_op_info(ones[i]->op)->name);
        cr_assert_eq(l.value, 1.0);
        cr_assert(l.exact);
        cr_assert_not_null(l.method);
    }

    /* conv2d: method by size, stride and padding; a small operator gets the
     * exact operator's Gram band, a large one the circulant bounds */
    lipc_node *big = mk_input(g, shape3(512, 32, 32));
    struct {
        lipc_node *in;
        int k, s;
        lipc_pad_mode mode;
        const char *method;
        bool exact;
    } convs[] = {
        {x, 4, 4, LIPC_PAD_VALID, "reshaped-kernel", true},
        {x, 4, 4, LIPC_PAD_SAME, "reshaped-kernel", true}, /* 8 = 2*4: no padding */
        {big, 4, 4, LIPC_PAD_VALID, "reshaped-kernel", true},
        {x, 2, 3, LIPC_PAD_VALID, "reshaped-kernel", true}, /* gaps between windows */
        {x, 3, 3, LIPC_PAD_SAME, "conv-gram-band", false}, /* 8 -> pads 1 */
        {x, 3, 1, LIPC_PAD_SAME, "conv-gram-band", false},
        {x, 5, 2, LIPC_PAD_SAME, "conv-gram-band", false},
        {big, 3, 3, LIPC_PAD_SAME, "polyphase-fft", false}, /* 32 -> pads 1 */
        {big, 3, 1, LIPC_PAD_SAME, "conv-fft", false},
        {big, 3, 1, LIPC_PAD_VALID, "conv-fft", false},
        {big, 5, 2, LIPC_PAD_SAME, "polyphase-fft", false},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        lipc_node *c = mk_conv(g, convs[i].in, 4, convs[i].k, convs[i].k, convs[i].s,
                               convs[i].s);
        c->a.padding.mode = convs[i].mode;
        infer_ok(g, c);
        l = classify(g, c);
        cr_assert_eq(l.kind, LIPC_LIP_OPNORM);
        cr_assert_str_eq(l.method, convs[i].method, "conv case %zu", i);
        cr_assert_eq(l.exact, convs[i].exact, "conv case %zu", i);
        cr_assert(isnan(l.value));
    }

    lipc_node *flat = test_op_node(g, LIPC_OP_FLATTEN, x, NULL);
    infer_ok(g, flat);
    lipc_node *dn = mk_dense(g, flat, 10);
    infer_ok(g, dn);
    l = classify(g, dn);
    cr_assert_eq(l.kind, LIPC_LIP_OPNORM);
    cr_assert_str_eq(l.method, "dense-svd");
    cr_assert(l.exact);
    dn->a.normalize = true;
    l = classify(g, dn);
    cr_assert_eq(l.kind, LIPC_LIP_HEAD);
    cr_assert_str_eq(l.method, "pairwise-rows");

    lipc_node *add = test_op_node(g, LIPC_OP_ADD, x, ones[3]);
    infer_ok(g, add);
    l = classify(g, add);
    cr_assert_eq(l.kind, LIPC_LIP_LOOSE);
    cr_assert_str_eq(l.method, "1 + K(body)");
    cr_assert(!l.exact);
    lipc_graph_free(g);
}

/* The band's size rule: half-width ((kh-1) w + kw-1) c + c-1, and a budget
 * that is met exactly is met. */
Test(lipschitz, conv_band_rule)
{
    cr_assert_eq(lipc_conv_band_kd(1, 5, 1, 1), 0);
    cr_assert_eq(lipc_conv_band_kd(2, 5, 1, 2), 3);
    cr_assert_eq(lipc_conv_band_kd(64, 16, 3, 3), (2 * 16 + 2) * 64 + 63);
    double n = 64.0 * 16 * 16, kd1 = (2 * 16 + 2) * 64 + 64;
    cr_assert(lipc_conv_band_fits(64, 16, 16, 3, 3, n * kd1 * kd1));
    cr_assert_not(lipc_conv_band_fits(64, 16, 16, 3, 3, n * kd1 * kd1 - 1.0));
    cr_assert(lipc_conv_band_fits(64, 16, 16, 3, 3, LIPC_CONV_BAND_BUDGET));
    /* memory: 512 x 32 x 32 inputs through 3x3 would need a 2^36-element band */
    cr_assert_not(lipc_conv_band_fits(512, 32, 32, 3, 3, INFINITY));
}

/* ---- the reference interpreter ---------------------------------------------- */

/* input 4x6x6 -> shift -> conv 4 k3 -> minmax -> residual(conv 4 k3) -> avgpool 2
 * -> flatten -> dense 6 -> minmax -> dense 3 (normalised head) */
typedef struct small_model {
    lipc_graph *g;
    lipc_node *nodes[12];
    int n_nodes;
} small_model;

static small_model build_small_model(void)
{
    small_model sm;
    lipc_graph *g = sm.g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(4, 6, 6));
    lipc_node *s = test_op_node(g, LIPC_OP_SHIFT, x, NULL);
    s->a.by = -0.5;
    lipc_node *c1 = mk_conv(g, s, 4, 3, 3, 1, 1);
    lipc_node *m1 = test_op_node(g, LIPC_OP_MINMAX, c1, NULL);
    lipc_node *c2 = mk_conv(g, m1, 4, 3, 3, 1, 1);
    c2->a.init = LIPC_INIT_LIRESNET;
    lipc_node *ad = test_op_node(g, LIPC_OP_ADD, m1, c2);
    lipc_node *p = mk_pool(g, ad, 2, 2, 0, 0);
    lipc_node *f = test_op_node(g, LIPC_OP_FLATTEN, p, NULL);
    lipc_node *d1 = mk_dense(g, f, 6);
    d1->a.init = LIPC_INIT_ORTHOGONAL;
    lipc_node *m2 = test_op_node(g, LIPC_OP_MINMAX, d1, NULL);
    m2->a.pairing = LIPC_PAIR_ADJACENT;
    lipc_node *head = mk_dense(g, m2, 3);
    head->a.normalize = true;
    head->a.bias = false;
    lipc_node *all[] = {x, s, c1, m1, c2, ad, p, f, d1, m2, head};
    sm.n_nodes = 11;
    for (int i = 0; i < sm.n_nodes; i++) {
        sm.nodes[i] = all[i];
        if (i > 0)
            infer_ok(g, all[i]);
    }
    g->output = head;
    g->shapes_known = true;
    return sm;
}

Test(interp, whole_graph_matches_node_by_node)
{
    uint64_t seed = test_seed();
    lipc_rng r;
    lipc_rng_seed(&r, seed ^ 0x1e7);
    small_model sm = build_small_model();
    lipc_graph *g = sm.g;
    double *params = alloc_doubles(g->n_param_elems);
    lipc_ref_init_params(g, seed, params);
    const int n_batch = 3;
    size_t n_x = n_batch * numel(g->input_shape);
    double *x = alloc_doubles(n_x);
    test_fill_uniform(&r, x, n_x, 0.0, 1.0);
    double logits[3 * 3];
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_ref_forward(g, params, n_batch, x, logits, &d), LIPC_OK);
    cr_assert_eq(d.n_errors, 0);

    /* the same, node by node, keeping every buffer */
    double *buf[12] = {x};
    for (int i = 1; i < sm.n_nodes; i++) {
        lipc_node *n = sm.nodes[i];
        buf[i] = alloc_doubles(n_batch * numel(n->shape));
        const double *in[2] = {NULL, NULL};
        for (int k = 0; k < n->n_in; k++)
            for (int j = 0; j < i; j++)
                if (sm.nodes[j] == n->in[k])
                    in[k] = buf[j];
        cr_assert_eq(lipc_ref_node_forward(g, n, params, n_batch, in, buf[i]), LIPC_OK);
    }
    char label[64];
    snprintf(label, sizeof label, "interp logits (seed %llu)", (unsigned long long)seed);
    cr_assert(test_allclose(label, logits, buf[sm.n_nodes - 1], 9, 0, 0));
    for (int i = 0; i < 9; i++)
        cr_assert(isfinite(logits[i]));
    for (int i = 1; i < sm.n_nodes; i++)
        free(buf[i]);

    /* every allocation failing in turn: NOMEM, never a crash or a wrong answer */
    for (long fail = 1;; fail++) {
        double again[9];
        lipc_alloc_fail_after(fail);
        lipc_status st = lipc_ref_forward(g, params, n_batch, x, again, NULL);
        lipc_alloc_fail_after(0);
        if (st == LIPC_OK) {
            cr_assert(test_allclose("interp after OOM runs", again, logits, 9, 0, 0));
            cr_assert_gt(fail, 3);
            break;
        }
        cr_assert_eq(st, LIPC_ERR_NOMEM, "allocation %ld", fail);
        cr_assert_lt(fail, 100);
    }
    lipc_diags_free(&d);
    free(x);
    free(params);
    lipc_graph_free(g);
}

Test(interp, params_pointer_rule)
{
    small_model sm = build_small_model();
    lipc_graph *g = sm.g;
    double block[1];
    for (int i = 0; i < sm.n_nodes; i++) {
        lipc_node *n = sm.nodes[i];
        const double *p = lipc_ref_node_params(g, n, block);
        if (n->n_param == 0)
            cr_assert_null(p);
        else
            cr_assert_eq(p, block + g->params[n->param[0]].offset);
    }
    lipc_graph_free(g);
}

/* ---- parameter initialisation --------------------------------------------------- */

/* max |M M^T - I| for M [rows, cols] (rows <= cols), or of M^T M when rows > cols */
static double orthonormality_error(const double *m, int rows, int cols)
{
    bool by_rows = rows <= cols;
    int nv = by_rows ? rows : cols, len = by_rows ? cols : rows;
    double worst = 0.0;
    for (int a = 0; a < nv; a++)
        for (int b = 0; b < nv; b++) {
            double dot = 0.0;
            for (int j = 0; j < len; j++)
                dot += by_rows ? m[a * cols + j] * m[b * cols + j]
                               : m[j * cols + a] * m[j * cols + b];
            worst = fmax(worst, fabs(dot - (a == b)));
        }
    return worst;
}

Test(init, rules)
{
    uint64_t seed = test_seed();
    lipc_graph *g = lipc_graph_new();
    lipc_node *x = mk_input(g, shape3(3, 8, 8));
    lipc_node *c_orth = mk_conv(g, x, 4, 3, 3, 1, 1);       /* 4 x 27: rows */
    c_orth->a.init = LIPC_INIT_ORTHOGONAL;
    lipc_node *c_wide = mk_conv(g, x, 40, 1, 1, 1, 1);      /* 40 x 3: columns */
    c_wide->a.init = LIPC_INIT_ORTHOGONAL;
    lipc_node *flat = test_op_node(g, LIPC_OP_FLATTEN, x, NULL);
    lipc_node *kaiming = mk_dense(g, flat, 200);            /* default: kaiming */
    lipc_node *xavier = mk_dense(g, flat, 100);
    xavier->a.init = LIPC_INIT_XAVIER;
    lipc_node *lires = mk_conv(g, x, 256, 3, 3, 1, 1);
    lires->a.init = LIPC_INIT_LIRESNET;
    lipc_node *zeros = mk_dense(g, flat, 5);
    zeros->a.init = LIPC_INIT_ZEROS;
    lipc_node *all[] = {c_orth, c_wide, flat, kaiming, xavier, lires, zeros};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        infer_ok(g, all[i]);

    double *p = alloc_doubles(g->n_param_elems), *q = alloc_doubles(g->n_param_elems);
    lipc_ref_init_params(g, seed, p);
    lipc_ref_init_params(g, seed, q);
    cr_assert_arr_eq(p, q, g->n_param_elems * sizeof *p, "same seed, same values");
    lipc_ref_init_params(g, seed + 1, q);
    cr_assert(memcmp(p, q, g->n_param_elems * sizeof *p) != 0);

    const lipc_param *w;
    w = &g->params[c_orth->param[0]];
    cr_assert_leq(orthonormality_error(p + w->offset, 4, 27), 1e-12);
    w = &g->params[c_wide->param[0]];
    cr_assert_leq(orthonormality_error(p + w->offset, 40, 3), 1e-12);

    /* sample standard deviations within 5% (192 * 200 = 38400 samples and more) */
    struct {
        lipc_node *n;
        double want;
    } stds[] = {
        {kaiming, sqrt(2.0 / 192)},
        {xavier, sqrt(2.0 / (192 + 100))},
        {lires, 1.0 / 27},
    };
    for (size_t i = 0; i < sizeof stds / sizeof stds[0]; i++) {
        w = &g->params[stds[i].n->param[0]];
        double ss = 0.0;
        for (size_t j = 0; j < w->numel; j++)
            ss += p[w->offset + j] * p[w->offset + j];
        double sd = sqrt(ss / (double)w->numel);
        cr_assert_leq(fabs(sd / stds[i].want - 1.0), 0.05,
                      "init %s: std %g, want %g (seed %llu)",
                      lipc_init_names[stds[i].n->a.init], sd, stds[i].want,
                      (unsigned long long)seed);
    }
    /* every bias and the zeros layer: zero */
    for (int i = 0; i < g->n_params; i++) {
        const lipc_param *pp = &g->params[i];
        if (pp->role == LIPC_PARAM_BIAS || pp->owner == zeros)
            for (size_t j = 0; j < pp->numel; j++)
                cr_assert_eq(p[pp->offset + j], 0.0, "%s", pp->name);
    }
    free(p);
    free(q);
    lipc_graph_free(g);
}
