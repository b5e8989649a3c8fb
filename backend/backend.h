/* backend/backend.h: what the backends of lipc provide.
 *
 * Every backend turns a checked graph (ir/ir.h) into the same entry points. The
 * reference backend (backend/ref) interprets the graph node by node in double
 * precision with each op's ref_forward from ir/ops/<op>.c: it is slow, plain and
 * the oracle every fast backend is tested against.
 *
 * Buffers follow the layout stated in ir/ir.h: NCHW, batch outermost.
 */
#ifndef LIPC_BACKEND_H
#define LIPC_BACKEND_H

#include <stdint.h>

#include "ir/ir.h"
#include "support/support.h"

/* ---- reference backend (backend/ref/interp.c) ----------------------------- */

/* Runs the whole graph on a batch: every node in program order, each into its
 * own buffer, freed after its last use.
 *   params  the graph's parameter block [g->n_param_elems]
 *   x       [n_batch, numel(g->input_shape)]
 *   logits  [n_batch, numel(g->output->shape)]
 * Requires g->shapes_known. Returns LIPC_ERR_NOMEM when a buffer cannot be
 * allocated and LIPC_ERR_UNSUPPORTED when an op has no reference kernel (with
 * an error in d, which may be NULL). */
lipc_status lipc_ref_forward(const lipc_graph *g, const double *params, int n_batch,
                             const double *x, double *logits, lipc_diags *d);

/* Runs one node on given input buffers (tests and pass-equivalence checks):
 *   in[i]  [n_batch, numel(n->in[i]->shape)]
 *   out    [n_batch, numel(n->shape)]
 * params is the graph's whole parameter block. LIPC_ERR_UNSUPPORTED when the
 * op has no reference kernel (the input node has none: it is the data). */
lipc_status lipc_ref_node_forward(const lipc_graph *g, const lipc_node *n,
                                  const double *params, int n_batch,
                                  const double *const *in, double *out);

/* The pointer an op's ref_forward receives as `params`: the node's first
 * parameter inside the block (its weight; the bias follows it), or NULL when
 * the node has none. Checks that the node's parameters are contiguous. */
const double *lipc_ref_node_params(const lipc_graph *g, const lipc_node *n,
                                   const double *params);

/* Fills the parameter block [g->n_param_elems] from each parameter's init rule:
 *   kaiming    N(0, 2 / fan_in)              (also `default` for weights)
 *   xavier     N(0, 2 / (fan_in + fan_out))
 *   orthogonal the weight reshaped [out, fan_in] with orthonormal rows (or
 *              orthonormal columns when out > fan_in)
 *   liresnet   N(0, 1) / fan_in   (= N(0,1)/(9 c) for 3x3; the depth^-1/2
 *              scale is the training graph's business)
 *   zeros      (also `default` for biases)
 * fan_in = c_in kh kw or in, fan_out = c_out kh kw or out. Each parameter
 * draws from its own stream, seeded by (seed, its name), so adding a layer
 * does not change the values of the others. */
void lipc_ref_init_params(const lipc_graph *g, uint64_t seed, double *params);

#endif
