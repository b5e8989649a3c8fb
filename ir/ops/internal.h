/* ir/ops/internal.h: helpers shared by the op files of ir/ops/ (defined in
 * ir/registry.c). Private to ir/: never include it from another folder. */
#ifndef LIPC_IR_OPS_INTERNAL_H
#define LIPC_IR_OPS_INTERNAL_H

#include "ir/ir.h"

/* Largest dimension and element count a layer may ask for. */
#define LIPC_OPS_MAX_DIM (1L << 20)
#define LIPC_OPS_MAX_NUMEL ((1L << 31) - 1)  /* fits an int */

/* False when some input has no shape yet: an earlier node failed and already
 * reported why, so infer returns false without a second, confusing error. */
bool lipc_ops_inputs_known(const lipc_node *n);

/* The shape rule of elementwise ops (shift, relu): the output has the input's
 * shape. */
bool lipc_ops_infer_same_shape(lipc_graph *g, lipc_node *n, lipc_diags *d);

/* Reports an error at n->loc and returns false when any of dims[0..rank) is
 * above LIPC_OPS_MAX_DIM or their product above LIPC_OPS_MAX_NUMEL. `what`
 * names the tensor in the message ("the conv2d weight", "the output"). */
bool lipc_ops_check_dims(const lipc_node *n, lipc_diags *d, const char *what,
                         int rank, const long *dims);

/* Declares n's weight (shape wd[0..rank), init n->a.init) and, when n->a.bias,
 * its bias [wd[0]] (zeros) right after it, appending both to n->param. Does
 * nothing when n already has parameters. False (with an error) when out of
 * memory. */
bool lipc_ops_declare_weight_bias(lipc_graph *g, lipc_node *n, int rank,
                                  const int *wd, lipc_diags *d);

#endif
