/* tests/test_lower_bound.c: the empirical lower bound on the Lipschitz
 * constant before the head (runtime/lower_bound.c).
 *
 * - a linear network before a square head: the bound is exactly sigma_max(W);
 * - a MinMax network: lower bound <= K_sub (dense layers: power iteration to
 *   convergence gives each sigma exactly, so K_sub is a true upper bound).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "backend/backend.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "testutil.h"

static lipc_compiled *compile_text(const char *text, lipc_graph **g)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status st = lipc_frontend_load_string("lb.yaml", text, strlen(text), NULL, &d, g);
    if (st == LIPC_OK) {
        lipc_pipeline_options o = {.verify = true};
        st = lipc_pipeline_run(*g, &o, &d);
    }
    lipc_compiled *c = NULL;
    if (st == LIPC_OK)
        st = lipc_compile(*g, "ref", &d, &c);
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK);
    lipc_diags_free(&d);
    return c;
}

/* A dataset of n random points in [0, 1]^len. */
static void random_points(lipc_dataset *ds, int n, int len, uint64_t seed)
{
    memset(ds, 0, sizeof *ds);
    ds->n = n;
    ds->c = len;
    ds->h = ds->w = 1;
    ds->classes = 2;
    ds->x = lipc_malloc(sizeof(float) * (size_t)n * (size_t)len);
    ds->y = lipc_calloc((size_t)n, 1);
    lipc_rng r;
    lipc_rng_seed(&r, seed);
    for (int i = 0; i < n * len; i++)
        ds->x[i] = (float)lipc_rng_uniform(&r);
}

/* sigma_max of a rows x cols matrix by power iteration in double. */
static double sigma_max(const float *w, int rows, int cols)
{
    double v[64], u[64];
    for (int j = 0; j < cols; j++)
        v[j] = 1.0 + 0.1 * j;
    double s = 0.0;
    for (int it = 0; it < 20000; it++) {
        for (int i = 0; i < rows; i++) {
            u[i] = 0.0;
            for (int j = 0; j < cols; j++)
                u[i] += w[i * cols + j] * v[j];
        }
        double nv = 0.0;
        for (int j = 0; j < cols; j++) {
            v[j] = 0.0;
            for (int i = 0; i < rows; i++)
                v[j] += w[i * cols + j] * u[i];
            nv += v[j] * v[j];
        }
        nv = sqrt(nv);
        for (int j = 0; j < cols; j++)
            v[j] /= nv;
        s = sqrt(nv);
    }
    return s;
}

Test(lower_bound, linear_network_gives_sigma_max)
{
    static const char text[] = "input: {shape: [6]}\nclasses: 4\nlayers:\n"
                               "  - dense: {out: 4}\n"
                               "  - dense: {out: classes, normalize: true}\n";
    lipc_graph *g;
    lipc_compiled *c = compile_text(text, &g);
    lipc_train_state st;
    cr_assert_eq(lipc_train_state_alloc(&c->desc, &st), LIPC_OK);
    cr_assert_eq(lipc_init_params(&c->desc, test_seed(), st.params), LIPC_OK);
    lipc_dataset ds;
    random_points(&ds, 5, 6, test_seed());
    lipc_lower_bound lb;
    cr_assert_eq(lipc_empirical_lower_bound(&c->desc, &c->ops, st.params, &ds, 5, &lb), LIPC_OK);
    /* h(x) = W x: J = W everywhere, and the square head spans every direction */
    double sigma = sigma_max(st.params + c->params[0].offset, 4, 6);
    cr_expect(fabs(lb.value - sigma) <= 1e-9 * sigma, "lower bound %.12g, sigma_max %.12g",
              lb.value, sigma);
    cr_expect_eq(lb.evaluated, 5);
    lipc_dataset_free(&ds);
    lipc_train_state_free(&st);
    lipc_compiled_free(c);
    lipc_graph_free(g);
}

Test(lower_bound, never_above_the_upper_bound)
{
    static const char text[] = "input: {shape: [10]}\nclasses: 3\nlayers:\n"
                               "  - dense: {out: 8}\n"
                               "  - minmax\n"
                               "  - residual: [{dense: {out: 8}}, minmax, {dense: {out: 8}}]\n"
                               "  - dense: {out: 6}\n"
                               "  - minmax\n"
                               "  - dense: {out: classes, normalize: true}\n";
    lipc_graph *g;
    lipc_compiled *c = compile_text(text, &g);
    for (uint64_t seed = test_seed(); seed < test_seed() + 5; seed++) {
        lipc_train_state st;
        cr_assert_eq(lipc_train_state_alloc(&c->desc, &st), LIPC_OK);
        cr_assert_eq(lipc_init_params(&c->desc, seed, st.params), LIPC_OK);
        lipc_dataset ds;
        random_points(&ds, 64, 10, seed);
        lipc_lower_bound lb;
        cr_assert_eq(lipc_empirical_lower_bound(&c->desc, &c->ops, st.params, &ds, 64, &lb),
                     LIPC_OK);
        lipc_bound_report *rep = calloc((size_t)c->desc.n_factors + 1, sizeof *rep);
        cr_assert_eq(c->ops.lipschitz(c->ops.ctx, st.params, st.vec, 100000, 1e-14, rep),
                     LIPC_OK);
        double k = rep[c->desc.n_factors].value;
        cr_expect(lb.value > 0 && lb.value <= k * (1 + 1e-9),
                  "seed %llu: lower bound %g above K_sub %g", (unsigned long long)seed, lb.value,
                  k);
        free(rep);
        lipc_dataset_free(&ds);
        lipc_train_state_free(&st);
    }
    lipc_compiled_free(c);
    lipc_graph_free(g);
}
