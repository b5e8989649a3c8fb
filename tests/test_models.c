/* tests/test_models.c: the shipped models in models/ compile, and compile to
 * the architecture their header comments describe.
 *
 * Every file goes through the real frontend and the whole pass pipeline with
 * the verifier on; none may produce a diagnostic. Then each model's structure
 * is checked against the paper's architecture, written out here independently
 * of the YAML: which residuals fold (all of them in a LiResNet, none in the
 * conventional ResNet), that no `add` survives folding, the output width, key
 * feature-map sizes, and the parameter count from the layer formulas
 *
 *   conv2d  c_out * c_in * kh * kw + c_out        dense  out * in + out
 *
 * so a YAML edit that changes the architecture by accident fails here.
 * A last test checks that every models/<file>.yaml is one of the models listed
 * below, so a new model cannot ship untested.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"

#define MODELS_DIR LIPC_SOURCE_DIR "/models/"

/* ---- helpers ------------------------------------------------------------------ */

/* Loads models/<file> with the given --set overrides and runs the pipeline
 * with the verifier. Fails the test (printing the diagnostics) unless both
 * succeed without a single diagnostic. */
static lipc_graph *compile_with(const char *file, const lipc_override *sets, int n_sets)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s", MODELS_DIR, file);
    lipc_load_options opt = {.sets = sets, .n_sets = n_sets};
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_graph *g = NULL;
    lipc_status st = lipc_frontend_load_file(path, &opt, &d, &g);
    if (st == LIPC_OK) {
        lipc_pipeline_options po = {.verify = true};
        st = lipc_pipeline_run(g, &po, &d);
    }
    if (st != LIPC_OK || d.first) {
        lipc_buf b;
        lipc_buf_init(&b);
        lipc_diags_format(&d, &b);
        cr_log_error("%s: %s\n%s", file, lipc_status_name(st), lipc_buf_str(&b));
        lipc_buf_free(&b);
    }
    cr_assert_eq(st, LIPC_OK, "%s: the pipeline returned %s", file, lipc_status_name(st));
    cr_assert_null(d.first, "%s: compiled with diagnostics (%d errors, %d warnings)", file,
                   d.n_errors, d.n_warnings);
    lipc_diags_free(&d);
    cr_assert(g->shapes_known && g->folded && g->lipschitz_known, "%s: a pass did not run",
              file);
    return g;
}

static lipc_graph *compile(const char *file) { return compile_with(file, NULL, 0); }

static long conv_params(long c_in, long c_out, long k) { return c_out * c_in * k * k + c_out; }
static long dense_params(long in, long out) { return out * in + out; }

static int count_op(const lipc_graph *g, lipc_op op)
{
    int k = 0;
    for (const lipc_node *n = g->first; n; n = n->next)
        k += n->op == op;
    return k;
}

static void assert_shape(const lipc_graph *g, const char *name, int rank, int c, int h, int w)
{
    const lipc_node *n = lipc_graph_find(g, name);
    cr_assert_not_null(n, "%s: no node named '%s'", g->name, name);
    char got_s[48], want_s[48];
    lipc_shape want = {rank, {c, rank == 3 ? h : 0, rank == 3 ? w : 0}};
    cr_assert(lipc_shape_eq(n->shape, want), "%s: '%s' has shape %s, want %s", g->name, name,
              lipc_shape_str(n->shape, got_s), lipc_shape_str(want, want_s));
}

static void assert_output(const lipc_graph *g, int classes)
{
    cr_assert_eq(g->classes, classes, "%s: classes %d, want %d", g->name, g->classes, classes);
    cr_assert_not_null(g->output);
    cr_assert_eq(g->output->shape.rank, 1, "%s: the output is not a vector", g->name);
    cr_assert_eq(g->output->shape.d[0], classes, "%s: the output has %d logits, want %d",
                 g->name, g->output->shape.d[0], classes);
    cr_assert_eq(g->output->op, LIPC_OP_DENSE);
    cr_assert(g->output->a.normalize, "%s: the head is not row-normalised", g->name);
    cr_assert_eq(g->output->lip.kind, LIPC_LIP_HEAD);
}

/* ---- LiResNets ----------------------------------------------------------------- */

/* METHOD.md section 2:
 *   stem conv k x k (c -> W) | L x [x + conv3x3 (W -> W)] | neck conv 4x4/4 (W -> N)
 *   | flatten (N * 4 * 4 on 16x16 maps) | dense D | head dense classes */
/* Criterion copies parameters into the test's process: keep them free of
 * pointers (the file name lives in the struct). */
typedef struct liresnet {
    char file[64];
    int c, stem_k, width, depth, neck, dense, classes;
    int map;          /* side of the residual stream's maps */
} liresnet;

static long liresnet_params(const liresnet *m)
{
    int after_neck = m->map / 4;
    return conv_params(m->c, m->width, m->stem_k) +
           (long)m->depth * conv_params(m->width, m->width, 3) +
           conv_params(m->width, m->neck, 4) +
           dense_params((long)m->neck * after_neck * after_neck, m->dense) +
           dense_params(m->dense, m->classes);
}

static void check_liresnet(const lipc_graph *g, const liresnet *m)
{
    /* every residual folded: one conv each, no join left */
    cr_assert_eq(g->n_res, m->depth, "%s: %d residuals, want %d", m->file, g->n_res, m->depth);
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        cr_assert_eq(r->state, LIPC_RES_FOLDED, "%s: residual %s not folded: %s", m->file,
                     r->name, r->why ? r->why : "(no reason)");
        cr_assert_not_null(r->add);
        cr_assert_eq(r->add->op, LIPC_OP_CONV2D, "%s: %s folded into a %s", m->file, r->name,
                     lipc_op_info(r->add->op)->name);
        cr_assert(r->add->a.fold_identity);
        cr_assert_eq(r->add->lip.kind, LIPC_LIP_OPNORM);
    }
    cr_assert_eq(count_op(g, LIPC_OP_ADD), 0, "%s: an add node survived folding", m->file);
    for (const lipc_node *n = g->first; n; n = n->next)
        cr_assert_neq(n->lip.kind, LIPC_LIP_LOOSE, "%s: %s has a loose bound", m->file,
                      n->name);
    /* conv layers: stem + L blocks + neck */
    cr_assert_eq(count_op(g, LIPC_OP_CONV2D), m->depth + 2);

    assert_shape(g, "stem", 3, m->width, m->map, m->map);
    char last[64];
    snprintf(last, sizeof last, "blocks.%d.residual_0.conv2d_0", m->depth - 1);
    assert_shape(g, last, 3, m->width, m->map, m->map);
    assert_shape(g, "neck", 3, m->neck, m->map / 4, m->map / 4);
    assert_shape(g, "fc", 1, m->dense, 0, 0);
    assert_output(g, m->classes);

    long want = liresnet_params(m);
    cr_assert_eq((long)g->n_param_elems, want, "%s: %zu parameters, want %ld", m->file,
                 g->n_param_elems, want);
    /* weight + bias per conv2d and dense layer */
    cr_assert_eq(g->n_params, 2 * (m->depth + 4));
}

static const liresnet liresnets[] = {
    {"liresnet-fmnist.yaml", 1, 5, 64, 6, 128, 512, 10, 16},
    {"liresnet-cifar10.yaml", 3, 5, 512, 12, 1024, 2048, 10, 16},
    {"liresnet-cifar100.yaml", 3, 5, 256, 18, 512, 2048, 100, 16},
    {"liresnet-tinyimagenet.yaml", 3, 7, 512, 12, 1024, 2048, 200, 16},
    {"liresnet-imagenet.yaml", 3, 14, 588, 12, 1176, 2048, 1000, 16},
};

ParameterizedTestParameters(models, liresnet)
{
    return cr_make_param_array(liresnet, liresnets, sizeof liresnets / sizeof liresnets[0]);
}

ParameterizedTest(const liresnet *m, models, liresnet)
{
    lipc_graph *g = compile(m->file);
    check_liresnet(g, m);
    lipc_graph_free(g);
}

Test(models, fmnist_pads_to_32)
{
    lipc_graph *g = compile("liresnet-fmnist.yaml");
    assert_shape(g, "input", 3, 1, 28, 28);
    assert_shape(g, "input.pad_0", 3, 1, 32, 32);
    cr_assert_eq((long)g->n_param_elems, 1408650L);  /* also `lipc check`'s 1408.7k */
    lipc_graph_free(g);
}

Test(models, cifar10_hand_count)
{
    /* L12W512 D2048, written out once in full:
     *   stem 3*512*25 + 512 = 38912; blocks 12 * (512*512*9 + 512) = 28317696;
     *   neck 1024*512*16 + 1024 = 8389632; fc 16384*2048 + 2048 = 33556480;
     *   head 2048*10 + 10 = 20490 */
    lipc_graph *g = compile("liresnet-cifar10.yaml");
    cr_assert_eq((long)g->n_param_elems, 38912L + 28317696L + 8389632L + 33556480L + 20490L);
    lipc_graph_free(g);
}

/* `--set` gives the other paper configurations from the same file. */
Test(models, cifar10_set_l18w256)
{
    const lipc_override sets[] = {{"depth", "18"}, {"width", "256"}};
    lipc_graph *g = compile_with("liresnet-cifar10.yaml", sets, 2);
    /* neck is declared as 2 * width, so it follows the override */
    liresnet m = {"liresnet-cifar10.yaml --set depth=18 --set width=256", 3, 5, 256, 18, 512,
                  2048, 10, 16};
    check_liresnet(g, &m);
    cr_assert_eq(g->n_res, 18);
    lipc_graph_free(g);
}

Test(models, cifar10_set_neck_w)
{
    const lipc_override sets[] = {{"neck", "512"}, {"dense", "512"}};
    lipc_graph *g = compile_with("liresnet-cifar10.yaml", sets, 2);
    liresnet m = {"liresnet-cifar10.yaml --set neck=512 --set dense=512", 3, 5, 512, 12, 512,
                  512, 10, 16};
    check_liresnet(g, &m);
    lipc_graph_free(g);
}

Test(models, imagenet_patchify_stem)
{
    lipc_graph *g = compile("liresnet-imagenet.yaml");
    assert_shape(g, "input", 3, 3, 224, 224);
    assert_shape(g, "stem", 3, 588, 16, 16);
    const lipc_node *stem = lipc_graph_find(g, "stem");
    cr_assert_eq(stem->a.kernel[0], 14);
    cr_assert_eq(stem->a.stride[0], 14);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(stem->a.pad[i], 0, "the patchify stem is padded");
    /* kernel == stride, no padding: block diagonal, exact norm */
    cr_assert_eq(stem->lip.kind, LIPC_LIP_OPNORM);
    cr_assert(stem->lip.exact, "the patchify stem's bound is not exact (%s)",
              stem->lip.method ? stem->lip.method : "?");
    lipc_graph_free(g);
}

Test(models, tinyimagenet_stem_7x7_stride_4)
{
    lipc_graph *g = compile("liresnet-tinyimagenet.yaml");
    assert_shape(g, "input", 3, 3, 64, 64);
    assert_shape(g, "stem", 3, 512, 16, 16);
    const lipc_node *stem = lipc_graph_find(g, "stem");
    cr_assert_eq(stem->a.kernel[0], 7);
    cr_assert_eq(stem->a.stride[0], 4);
    lipc_graph_free(g);
}

/* ---- the conventional ResNet ---------------------------------------------------- */

Test(models, resnet_keeps_nonlinear_residuals)
{
    const int width = 512, depth = 12, neck = 1024, dense = 2048;
    lipc_graph *g = compile("resnet-cifar10.yaml");
    cr_assert_eq(g->n_res, depth);
    for (int i = 0; i < g->n_res; i++) {
        const lipc_residual *r = g->res[i];
        cr_assert_eq(r->state, LIPC_RES_KEPT, "residual %s was folded", r->name);
        cr_assert_not_null(r->why, "residual %s kept without a reason", r->name);
        cr_assert_not_null(r->add);
        cr_assert_eq(r->add->op, LIPC_OP_ADD);
        cr_assert_eq(r->add->closes, r);
        cr_assert_eq(r->add->lip.kind, LIPC_LIP_LOOSE, "%s: the join's bound is %s", r->name,
                     lipc_lip_kind_names[r->add->lip.kind]);
    }
    int adds = 0;
    for (const lipc_node *n = g->first; n; n = n->next) {
        if (n->op != LIPC_OP_ADD)
            continue;
        adds++;
        cr_assert_eq(n->lip.kind, LIPC_LIP_LOOSE, "%s is not loose", n->name);
        cr_assert_not_null(n->closes);
    }
    cr_assert_eq(adds, depth);
    /* stem + 2 per block + neck; none carries the identity */
    cr_assert_eq(count_op(g, LIPC_OP_CONV2D), 2 * depth + 2);
    for (const lipc_node *n = g->first; n; n = n->next)
        cr_assert(!n->a.fold_identity, "%s carries a folded identity", n->name);
    assert_shape(g, "stem", 3, width, 16, 16);
    assert_shape(g, "blocks.11.residual_0", 3, width, 16, 16);
    assert_shape(g, "neck", 3, neck, 4, 4);
    assert_output(g, 10);

    long want = conv_params(3, width, 5) + 2L * depth * conv_params(width, width, 3) +
                conv_params(width, neck, 4) + dense_params(neck * 16L, dense) +
                dense_params(dense, 10);
    cr_assert_eq((long)g->n_param_elems, want, "%zu parameters, want %ld", g->n_param_elems,
                 want);
    lipc_graph_free(g);
}

/* ---- GloRo 6C2F ------------------------------------------------------------------- */

Test(models, gloro_6c2f)
{
    lipc_graph *g = compile("gloro-6c2f.yaml");
    cr_assert_eq(g->n_res, 0);
    cr_assert_eq(count_op(g, LIPC_OP_ADD), 0);
    cr_assert_eq(count_op(g, LIPC_OP_CONV2D), 6);
    cr_assert_eq(count_op(g, LIPC_OP_DENSE), 2);
    cr_assert_eq(count_op(g, LIPC_OP_MINMAX), 7);
    /* 3x3 "same" keeps the size, 4x4/2 with one zero on each side halves it */
    assert_shape(g, "conv2d_0", 3, 32, 32, 32);
    assert_shape(g, "conv2d_1", 3, 32, 16, 16);
    assert_shape(g, "conv2d_2", 3, 64, 16, 16);
    assert_shape(g, "conv2d_3", 3, 64, 8, 8);
    assert_shape(g, "conv2d_4", 3, 128, 8, 8);
    assert_shape(g, "conv2d_5", 3, 128, 4, 4);
    assert_shape(g, "flatten_0", 1, 2048, 0, 0);
    assert_shape(g, "fc", 1, 512, 0, 0);
    assert_output(g, 10);
    for (int i = 1; i < 6; i += 2) {
        char name[16];
        snprintf(name, sizeof name, "conv2d_%d", i);
        const int *pad = lipc_graph_find(g, name)->a.pad;
        cr_assert(pad[0] == 1 && pad[1] == 1 && pad[2] == 1 && pad[3] == 1,
                  "%s is not padded by 1 on every side", name);
    }
    long want = conv_params(3, 32, 3) + conv_params(32, 32, 4) + conv_params(32, 64, 3) +
                conv_params(64, 64, 4) + conv_params(64, 128, 3) + conv_params(128, 128, 4) +
                dense_params(2048, 512) + dense_params(512, 10);
    cr_assert_eq((long)g->n_param_elems, want, "%zu parameters, want %ld", g->n_param_elems,
                 want);
    lipc_graph_free(g);
}

/* ---- the JSON dump ------------------------------------------------------------------ */

Test(models, fmnist_json_dump)
{
    lipc_graph *g = compile("liresnet-fmnist.yaml");
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_graph_print_json(g, &b);
    cr_assert(!b.failed);
    json_error_t err;
    json_t *root = json_loads(lipc_buf_str(&b), 0, &err);
    cr_assert_not_null(root, "the JSON dump does not parse: %s at line %d", err.text, err.line);
    json_t *nodes = json_object_get(root, "nodes");
    cr_assert(json_is_array(nodes));
    cr_assert_eq((int)json_array_size(nodes), lipc_graph_count_nodes(g));
    size_t i;
    json_t *node;
    json_array_foreach(nodes, i, node) {
        static const char *const keys[] = {"id", "op", "inputs", "shape", "loc"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            cr_assert_not_null(json_object_get(node, keys[k]), "node %zu has no \"%s\"", i,
                               keys[k]);
        cr_assert(json_is_integer(json_object_get(node, "id")));
        cr_assert(json_is_string(json_object_get(node, "op")));
        cr_assert(json_is_array(json_object_get(node, "inputs")));
        cr_assert(json_is_string(json_object_get(node, "loc")));
        cr_assert(json_is_object(json_object_get(node, "lipschitz")),
                  "node %zu has no \"lipschitz\" object", i);
        cr_assert_str_neq(json_string_value(json_object_get(node, "op")), "add");
    }
    json_decref(root);
    lipc_buf_free(&b);
    lipc_graph_free(g);
}

/* The Fashion-MNIST pair: same size, one folds everything, the other nothing. */
Test(models, resnet_fmnist_pairs_the_liresnet)
{
    lipc_graph *li = compile("liresnet-fmnist.yaml");
    lipc_graph *re = compile("resnet-fmnist.yaml");
    cr_assert_eq(li->n_res, re->n_res);
    for (int i = 0; i < re->n_res; i++) {
        cr_assert_eq(li->res[i]->state, LIPC_RES_FOLDED);
        cr_assert_eq(re->res[i]->state, LIPC_RES_KEPT);
    }
    assert_shape(re, "neck", 3, 128, 4, 4);
    assert_output(re, 10);
    /* one more 3x3 conv per block, nothing else differs */
    cr_assert_eq((long)re->n_param_elems - (long)li->n_param_elems,
                 6L * conv_params(64, 64, 3));
    lipc_graph_free(li);
    lipc_graph_free(re);
}

/* ---- every file in models/ is covered ------------------------------------------------ */

static const char *const shipped[] = {
    "liresnet-fmnist.yaml",  "liresnet-cifar10.yaml", "liresnet-cifar100.yaml",
    "liresnet-tinyimagenet.yaml", "liresnet-imagenet.yaml", "gloro-6c2f.yaml",
    "resnet-cifar10.yaml",   "resnet-fmnist.yaml",
};

Test(models, every_file_is_tested)
{
    DIR *dir = opendir(MODELS_DIR);
    cr_assert_not_null(dir, "cannot open %s", MODELS_DIR);
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".yaml") != 0)
            continue;
        bool known = false;
        for (size_t k = 0; k < sizeof shipped / sizeof shipped[0]; k++)
            known |= strcmp(shipped[k], e->d_name) == 0;
        cr_expect(known, "models/%s is not listed in tests/test_models.c", e->d_name);
        /* and, listed or not, it must compile cleanly */
        lipc_graph_free(compile(e->d_name));
        seen++;
    }
    closedir(dir);
    cr_assert_eq(seen, (int)(sizeof shipped / sizeof shipped[0]),
                 "models/ holds %d models, the test lists %zu", seen,
                 sizeof shipped / sizeof shipped[0]);
}
