/* tests/backend_check.h: checks of a fast backend against the reference
 * (backend_check.c), shared by the tests of the cpu and cuda targets. */
#ifndef LIPC_TESTS_BACKEND_CHECK_H
#define LIPC_TESTS_BACKEND_CHECK_H

#include "backend/backend.h"
#include "frontend/frontend.h"

/* Models that cover every op (backend_check.c says what each exercises). */
extern const char bc_zoo[], bc_edges[], bc_tiny[], bc_wide[], bc_mlp[], bc_deep[];

/* A model from YAML text (or a file when text is NULL), after the pipeline;
 * fails the test when it does not compile. */
lipc_graph *bc_load(const char *name, const char *text, const char *path,
                    const lipc_override *sets, int n_sets);
/* lipc_compile_target(target) with this many threads; fails the test on error. */
lipc_compiled *bc_compile(const char *target, lipc_graph *g, int threads);
lipc_compiled *bc_compile_ref(lipc_graph *g);
/* Initialised parameters plus N(0, noise) (every term then matters), and
 * uniform [0, 1) inputs for n examples. malloc'd. */
float *bc_random_params(const lipc_graph *g, uint64_t seed, double noise);
float *bc_random_inputs(const lipc_graph *g, uint64_t seed, int n);
/* AdamW, clipping at 3, eps 0.3, 30 power iterations. */
lipc_hyper bc_hyper(lipc_loss loss);

/* The backend's gradient of a training step before clipping and update
 * (lipc_cpu_gradients, lipc_gpu_gradients). */
typedef lipc_status (*bc_gradients_fn)(void *backend, lipc_train_state *st, int n,
                                       const float *x, const int32_t *y, const lipc_hyper *h,
                                       lipc_step_stats *out, double *grads);

/* The target's logits against lipc_ref_forward, batches 1, 5 and 9. */
void bc_check_forward(const char *target, const char *name, lipc_graph *g, int threads);
/* The whole parameter gradient of a training step against the reference's,
 * from the same state, then one whole step each. */
void bc_check_training(const char *target, bc_gradients_fn gradients, const char *name,
                       lipc_graph *g, lipc_loss loss, int n);
/* Power iteration to convergence (every factor and K_sub) against the
 * reference's, within 1e-4 relative. */
void bc_check_lipschitz(const char *target, lipc_graph *g, int threads);

#endif
