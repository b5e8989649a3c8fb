/* ir/ir.h: lipc's intermediate representation.
 *
 * A model is a graph of typed nodes in program (topological) order. Nodes, names
 * and residual records live in an arena owned by the graph: passes unlink nodes,
 * never free them, and lipc_graph_free releases everything at once.
 *
 * Tensor layout, stated once for all of lipc: activations are NCHW, row-major,
 * batch outermost; shapes in the IR leave the batch out, so a node's shape is
 * (c, h, w) for feature maps or (f) for flat vectors. Parameters:
 *   conv2d weight  [c_out, c_in, kh, kw]      bias [c_out]
 *   dense  weight  [out, in]  (y = W x + b)    bias [out]
 * and all parameters of a graph sit in one contiguous block, param->offset
 * elements from its start, in declaration order.
 */
#ifndef LIPC_IR_H
#define LIPC_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "support/support.h"

/* ---- ops ----------------------------------------------------------------- */

typedef enum lipc_op {
#define LIPC_OP(ID, name) LIPC_OP_##ID,
#include "ir/ops.def"
#undef LIPC_OP
    LIPC_OP_COUNT
} lipc_op;

typedef struct lipc_graph lipc_graph;
typedef struct lipc_node lipc_node;
typedef struct lipc_residual lipc_residual;

/* ---- typed fields: attributes and other YAML-settable records ------------ */

/* One settable key of a record (an op's attributes, the train section): its
 * YAML spelling, value kind and where it lands. The frontend parses every
 * record through these tables and never compares keys by hand. */
typedef enum lipc_field_kind {
    LIPC_FIELD_INT,      /* int; >= min */
    LIPC_FIELD_INT2,     /* N or [a, b] -> int[2]; each >= min */
    LIPC_FIELD_PADDING,  /* same | valid | N | [ph, pw] -> lipc_padding */
    LIPC_FIELD_FLOAT,    /* double */
    LIPC_FIELD_FLOAT2,   /* [lo, hi] -> double[2] */
    LIPC_FIELD_BOOL,     /* true | false */
    LIPC_FIELD_ENUM,     /* one of names[] -> int index */
    LIPC_FIELD_INTLIST,  /* [a, b, ...] -> lipc_intlist (up to 4 values) */
} lipc_field_kind;

typedef struct lipc_field {
    const char *key;
    lipc_field_kind kind;
    size_t offset;              /* into the record */
    bool required;
    int min;                    /* INT, INT2, INTLIST: smallest value allowed */
    const char *const *names;   /* ENUM: NULL-terminated spellings */
    const char *help;           /* one line, for docs and --help */
} lipc_field;

typedef struct lipc_intlist {
    int n;
    int v[4];
} lipc_intlist;

typedef enum lipc_pad_mode {
    LIPC_PAD_SAME,      /* output = ceil(input / stride), zeros split evenly */
    LIPC_PAD_VALID,     /* no padding */
    LIPC_PAD_EXPLICIT,  /* amount[] on each side */
} lipc_pad_mode;

typedef struct lipc_padding {
    lipc_pad_mode mode;
    int amount[2];      /* EXPLICIT: rows (top and bottom), columns (left and right) */
} lipc_padding;

typedef enum lipc_init {
    LIPC_INIT_DEFAULT,    /* the op's default (kaiming for conv2d/dense weights) */
    LIPC_INIT_KAIMING,    /* N(0, 2 / fan_in) */
    LIPC_INIT_XAVIER,     /* N(0, 2 / (fan_in + fan_out)) */
    LIPC_INIT_ORTHOGONAL, /* orthogonal rows/columns of the reshaped weight */
    LIPC_INIT_ZEROS,
    LIPC_INIT_LIRESNET,   /* residual branch: U ~ N(0,1) / (9 c), scaled by
                             depth^-1/2, so the folded block starts near identity */
} lipc_init;
extern const char *const lipc_init_names[];

typedef enum lipc_pairing {
    LIPC_PAIR_HALVES,     /* channel i with channel i + c/2 */
    LIPC_PAIR_ADJACENT,   /* channel 2i with channel 2i + 1 */
} lipc_pairing;
extern const char *const lipc_pairing_names[];

/* Attributes of every op in one record; each op's field table says which keys
 * it accepts. Fields an op does not use stay zero. */
typedef struct lipc_attrs {
    int out;                /* conv2d: c_out; dense: output features */
    int kernel[2];          /* conv2d, avgpool: kh, kw */
    int stride[2];          /* conv2d, avgpool */
    lipc_padding padding;   /* conv2d */
    int pad[4];             /* resolved zero padding: top, bottom, left, right
                               (infer-shapes fills it for conv2d and pad) */
    lipc_intlist pad_to;    /* pad: target [h, w] */
    lipc_intlist pad_by;    /* pad: N, [rows, cols] or [top, bottom, left, right] */
    bool bias;              /* conv2d, dense */
    bool normalize;         /* dense: rows scaled to unit l2 norm (GloRo head) */
    int init;               /* lipc_init */
    int pairing;            /* minmax: lipc_pairing */
    double by;              /* shift: y = x + by */
    bool fold_identity;     /* set by fold-residual: the effective kernel is
                               weight + I (identity on the centre tap) */
} lipc_attrs;

/* ---- shapes --------------------------------------------------------------- */

typedef struct lipc_shape {
    int rank;   /* 0: not inferred yet; 1: (f); 3: (c, h, w) */
    int d[3];
} lipc_shape;

long lipc_shape_numel(lipc_shape s);
bool lipc_shape_eq(lipc_shape a, lipc_shape b);
/* "64x16x16", "512", "?" */
const char *lipc_shape_str(lipc_shape s, char buf[48]);

/* ---- Lipschitz annotations (the lipschitz pass writes them) ---------------- */

typedef enum lipc_lip_kind {
    LIPC_LIP_UNSET,
    LIPC_LIP_NONE,       /* graph input: no bound of its own */
    LIPC_LIP_ONE,        /* 1-Lipschitz: MinMax, ReLU, shift, pad, flatten */
    LIPC_LIP_CONST,      /* a constant known from attributes (avgpool) */
    LIPC_LIP_OPNORM,     /* the operator norm of the layer's weights */
    LIPC_LIP_LOOSE,      /* unfolded residual: 1 + product of its body's bounds */
    LIPC_LIP_HEAD,       /* normalised head: K_sub * ||w_i - w_j|| per class pair */
} lipc_lip_kind;
extern const char *const lipc_lip_kind_names[];

typedef struct lipc_lip {
    lipc_lip_kind kind;
    /* How the bound is obtained, for OPNORM: one of
     *   "dense-svd"          exact largest singular value of W
     *   "conv-fft"           stride-1 zero-padded conv: circulant embedding,
     *                        max over frequencies of sigma_max(P(u,v))
     *   "reshaped-kernel"    kernel <= stride, no padding: block diagonal,
     *                        exact sigma_max of W reshaped c_out x (c_in kh kw)
     *   "polyphase-fft"      strided conv with padding: the circulant bound of
     *                        its polyphase rewrite (a stride-1 conv on the
     *                        stacked phases of the input); runtime/bounds.c
     *   "conv-gram-band"     a conv whose operator is small enough
     *                        (lipc_conv_band_fits, support.h): a certified
     *                        bound on the exact operator's norm, from the
     *                        band of A^T A; runtime/bounds.c
     * for CONST / LOOSE: a short formula ("1/k", "1 + K(body)"). */
    const char *method;
    bool exact;          /* the method yields the norm itself, not only a bound */
    double value;        /* NaN until weights are known (CONST, ONE: known) */
} lipc_lip;

/* ---- parameters ----------------------------------------------------------- */

typedef enum lipc_param_role {
    LIPC_PARAM_WEIGHT,
    LIPC_PARAM_BIAS,
} lipc_param_role;

typedef struct lipc_param {
    const char *name;    /* "<node name>.weight", "<node name>.bias" */
    lipc_node *owner;
    lipc_param_role role;
    int rank;
    int d[4];
    size_t numel;
    size_t offset;       /* elements from the start of the parameter block */
    lipc_init init;
} lipc_param;

/* ---- nodes and residuals -------------------------------------------------- */

#define LIPC_MAX_INPUTS 2
#define LIPC_MAX_NODE_PARAMS 2

struct lipc_node {
    int id;                       /* unique in the graph, never reused */
    lipc_op op;
    const char *name;             /* stable dotted name: "blocks.3.residual_0.conv2d_0" */
    lipc_loc loc;                 /* where the YAML wrote it */
    lipc_node *in[LIPC_MAX_INPUTS];
    int n_in;
    lipc_attrs a;
    lipc_shape shape;             /* output shape, batch excluded */
    int param[LIPC_MAX_NODE_PARAMS]; /* indices into graph->params; -1: none */
    int n_param;
    lipc_residual *closes;        /* ADD: the residual this node joins */
    lipc_residual *scope;         /* innermost residual whose body holds the node */
    lipc_lip lip;
    lipc_node *prev, *next;       /* program order */
};

typedef enum lipc_res_state {
    LIPC_RES_OPEN,          /* not looked at by fold-residual yet */
    LIPC_RES_FOLDED,        /* rewritten into its body's single linear op */
    LIPC_RES_KEPT,          /* cannot fold; `why` says why */
} lipc_res_state;

/* A residual y = x + body(x) as the user wrote it. The IR holds its body nodes
 * and an ADD node (in[0] = x, in[1] = body output); this record keeps the
 * grouping so passes can reason about the block as a whole. */
struct lipc_residual {
    int id;
    const char *name;
    lipc_loc loc;
    lipc_node *skip;        /* x: the node feeding both paths */
    lipc_node *add;         /* the join; after folding, the op it became */
    lipc_residual *parent;  /* enclosing residual, NULL at top level */
    lipc_res_state state;
    const char *why;        /* KEPT: why it could not fold */
    lipc_loc why_loc;       /* KEPT: the body layer that blocks folding */
};

/* ---- the training section (parsed now, used by the training issue) -------- */

typedef enum lipc_loss {
    LIPC_LOSS_EMMA,
    LIPC_LOSS_MARGIN,
    LIPC_LOSS_GLORO,
    LIPC_LOSS_TRADES,
} lipc_loss;
extern const char *const lipc_loss_names[];

typedef enum lipc_optim {
    LIPC_OPTIM_ADAMW,
    LIPC_OPTIM_SGD,         /* with Nesterov momentum */
} lipc_optim;
extern const char *const lipc_optim_names[];

typedef struct lipc_train_spec {
    int epochs;
    int batch;
    int loss;               /* lipc_loss */
    double eps;             /* nominal l2 radius */
    double eps_start;       /* eps schedule: start fraction of eps (0.1) */
    double eps_end;         /* final fraction of eps (1.5) */
    double eps_ramp;        /* fraction of training spent ramping (0.5) */
    int optimizer;          /* lipc_optim */
    double lr;
    double weight_decay;
    double momentum;
    double warmup_epochs;
    double clip;            /* gradient-norm clipping; 0: off */
    int power_iters;        /* power iterations per step */
    bool augment_crop;
    int crop_pad;
    bool augment_flip;
    double trades_lambda;
    bool scaled_residuals;  /* train liresnet kernels as V = s (a * U) */
    int seed;
    bool present;           /* a train: section was given */
    uint64_t given;         /* bit k: lipc_train_fields[k] was written in the YAML */
} lipc_train_spec;

void lipc_train_spec_defaults(lipc_train_spec *t);
/* Was the train key `key` written in the YAML (not a default)? */
bool lipc_train_given(const lipc_train_spec *t, const char *key);
extern const lipc_field lipc_train_fields[];

/* ---- the graph ------------------------------------------------------------ */

struct lipc_graph {
    lipc_arena arena;
    const char *name;
    const char *description;
    const char *file;           /* the YAML it came from */
    lipc_node *first, *last;    /* program order; unlinked nodes are gone */
    int next_id;
    lipc_node *input, *output;
    lipc_shape input_shape;
    double input_range[2];
    int classes;
    lipc_residual **res;        /* all residuals, in source order */
    int n_res, cap_res;
    lipc_param *params;         /* declared by infer-shapes */
    int n_params, cap_params;
    size_t n_param_elems;
    lipc_train_spec train;
    bool shapes_known;          /* infer-shapes has run */
    bool folded;                /* fold-residual has run */
    bool lipschitz_known;       /* lipschitz has run */
    bool oom;                   /* an allocation failed while building */
};

lipc_graph *lipc_graph_new(void);
void lipc_graph_free(lipc_graph *g);

/* Appends a node at the end of program order. Returns NULL (and sets g->oom)
 * when out of memory. */
lipc_node *lipc_graph_add_node(lipc_graph *g, lipc_op op, const char *name,
                               lipc_loc loc);
lipc_residual *lipc_graph_add_residual(lipc_graph *g, const char *name,
                                       lipc_loc loc);
/* Declares a parameter of node n; returns its index or -1 when out of memory. */
int lipc_graph_add_param(lipc_graph *g, lipc_node *n, lipc_param_role role,
                         int rank, const int *d, lipc_init init);
/* Removes n from program order (its memory stays in the arena). */
void lipc_graph_unlink(lipc_graph *g, lipc_node *n);
/* Every input edge pointing at from now points at to. */
void lipc_graph_replace_uses(lipc_graph *g, lipc_node *from, lipc_node *to);
int lipc_graph_count_uses(const lipc_graph *g, const lipc_node *n);
int lipc_graph_count_nodes(const lipc_graph *g);
/* Looks up a node by its name; NULL when absent. */
lipc_node *lipc_graph_find(const lipc_graph *g, const char *name);

/* Checks the structural invariants (order, arity, ids, residual records,
 * parameters; shapes once shapes_known). Problems are compiler bugs: each is
 * reported as an error naming the pass that ran last. */
bool lipc_graph_verify(const lipc_graph *g, const char *after_pass,
                       lipc_diags *d);

/* What the lipschitz pass found, for summaries: how K_sub (the bound of the
 * network before the head) is composed. Nodes inside the body of a kept
 * residual are not factors: their residual's loose bound counts them. */
typedef struct lipc_lip_summary {
    int n_factors;          /* bounds multiplied into K_sub */
    int n_opnorm;           /* of which: operator norms of weights */
    int n_exact;            /* of which: computed exactly */
    int n_one;              /* of which: 1-Lipschitz ops */
    int n_const;            /* of which: constants from attributes */
    int n_loose;            /* of which: unfolded residuals, 1 + K(body) */
    int n_folded;           /* residuals folded into one operator */
    int n_kept;             /* residuals that could not fold */
    bool head;              /* the last layer is a pairwise-bounded head */
    double k_sub;           /* product of known values; NaN if any is unknown */
} lipc_lip_summary;

void lipc_lip_summarize(const lipc_graph *g, lipc_lip_summary *s);

/* ---- programs: the training graph, as backends run it -------------------------
 *
 * The train-graph pass lowers a checked forward graph into a PROGRAM: a
 * straight-line list of steps over the graph's nodes, which every backend
 * runs (the reference interpreter) or emits code for (LLVM, CUDA). One
 * training step is
 *
 *   FORWARD each node                     activations, in program order
 *   POWER_ITER each operator-norm bound   sigma_b from warm-started vectors
 *   BOUND                                 K_sub and dK_sub/dsigma_b
 *   LOSS                                  loss, dlogits, dK_sub, head gradient
 *   BACKWARD each node, reverse order     autodiff: activation and weight grads
 *   SIGMA_GRAD each bound                 dW_b += dL/dK_sub dK_sub/dsigma_b dsigma_b/dW_b
 *   CLIP, UPDATE                          gradient clipping, optimiser
 *
 * Inference programs hold only the FORWARD steps; a Lipschitz program only
 * POWER_ITER and BOUND. Activations and gradients are per example; the
 * memory plan (plan-memory) gives each an offset in one arena.
 */

typedef enum lipc_step_op {
    LIPC_STEP_FORWARD,      /* node: act(node) = op(act(inputs)) */
    LIPC_STEP_POWER_ITER,   /* bound: v <- A^T A v / ||A^T A v|| (iters), sigma = ||A v|| */
    LIPC_STEP_BOUND,        /* K_sub and dK_sub/dsigma_b from the bound tree */
    LIPC_STEP_LOSS,         /* logits -> loss, grad(output), dL/dK_sub, head weight grad */
    LIPC_STEP_BACKWARD,     /* node: grad(in_i) += ..., param grads += ... */
    LIPC_STEP_SIGMA_GRAD,   /* bound: its layer's weight grad += the K_sub path */
    LIPC_STEP_CLIP,         /* scale all parameter grads to global norm <= clip */
    LIPC_STEP_UPDATE,       /* the optimiser updates every parameter */
} lipc_step_op;
extern const char *const lipc_step_names[];

typedef struct lipc_step {
    lipc_step_op op;
    lipc_node *node;        /* FORWARD, BACKWARD */
    int bound;              /* POWER_ITER, SIGMA_GRAD: index into prog->bounds */
    bool need_din[LIPC_MAX_INPUTS]; /* BACKWARD: which input gradients to form */
    bool zero_din[LIPC_MAX_INPUTS]; /* BACKWARD: this step writes that gradient
                                       first; zero its buffer before the step */
} lipc_step;

/* One factor of K_sub. The factors form a tree: the main path multiplies its
 * factors; a LOOSE factor (a residual that did not fold) is 1 + the product
 * of its own children. OPNORM factors carry power-iteration state: the
 * persistent vector v (shape of the layer's input) and u (its output). */
typedef struct lipc_bound {
    lipc_node *node;        /* the layer (OPNORM, CONST) or the ADD (LOOSE) */
    lipc_lip_kind kind;     /* OPNORM, CONST or LOOSE */
    int parent;             /* enclosing LOOSE factor, -1 on the main path */
    double value;           /* CONST: the constant */
    size_t v_offset, v_len; /* OPNORM: the vector v in the state block */
    size_t u_offset, u_len; /* OPNORM: u = A v / ||A v|| in the state block */
} lipc_bound;

typedef enum lipc_entry {
    LIPC_ENTRY_FORWARD,     /* inference: logits from inputs */
    LIPC_ENTRY_TRAIN,       /* one training step */
    LIPC_ENTRY_LIPSCHITZ,   /* power iteration and K_sub only */
} lipc_entry;

/* The precision values are stored in while a program runs. */
typedef enum lipc_dtype {
    LIPC_DTYPE_F64,
    LIPC_DTYPE_F32,
} lipc_dtype;

typedef struct lipc_program {
    lipc_graph *g;          /* the forward graph it was built from (not owned) */
    lipc_entry entry;
    lipc_dtype dtype;       /* activations, gradients and vectors (F64 unless set) */
    lipc_step *steps;
    int n_steps, cap_steps;
    lipc_bound *bounds;
    int n_bounds, cap_bounds;
    size_t n_vec_elems;     /* size of the power-iteration state block (v and u) */
    lipc_node *head;        /* the pairwise-bounded dense head, or NULL */
    lipc_train_spec train;  /* loss, optimiser and schedules (a copy) */
    /* plan-memory: element offsets per example in one arena, by node id;
     * grad_offset is (size_t)-1 for nodes with no gradient */
    size_t *act_offset, *grad_offset;
    size_t arena_per_example;
} lipc_program;

lipc_program *lipc_program_new(lipc_graph *g, lipc_entry entry);
void lipc_program_free(lipc_program *p);
/* Appends a step; false when out of memory. */
bool lipc_program_add_step(lipc_program *p, lipc_step s);
/* Appends a bound factor; returns its index or -1 when out of memory. */
int lipc_program_add_bound(lipc_program *p, lipc_bound b);
/* One line per step and bound, for `lipc dump --emit=program` and tests. */
void lipc_program_print(const lipc_program *p, lipc_buf *out);

/* ---- op descriptors ------------------------------------------------------- */

typedef struct lipc_op_desc {
    const char *name;
    const char *summary;          /* one line, for docs and `lipc check` */
    bool user;                    /* may be written in YAML */
    bool preprocess;              /* allowed in input.preprocess */
    bool linear;                  /* a linear map of its (single) input */
    int n_inputs;
    const lipc_field *fields;     /* attributes; NULL-key terminated or NULL */
    const char *primary;          /* attribute a scalar value sets (`shift: -0.5`) */
    void (*defaults)(lipc_attrs *a);
    /* Sets n->shape from the inputs' shapes, resolves padding and declares
     * parameters; reports user errors at n->loc. */
    bool (*infer)(lipc_graph *g, lipc_node *n, lipc_diags *d);
    /* Classifies the node's Lipschitz bound (kind, method, value if known). */
    void (*lipschitz)(const lipc_graph *g, const lipc_node *n, lipc_lip *out);
    /* Reference forward in double, batch of n_batch:
     *   in[i]  [n_batch, numel(n->in[i]->shape)]
     *   out    [n_batch, numel(n->shape)]
     *   params the node's first parameter (its weight; the bias follows it),
     *          NULL when the node has none */
    void (*ref_forward)(const lipc_node *n, int n_batch, const double *const *in,
                        double *out, const double *params);
    /* Reference backward in double, for training. With the forward's
     *   in[i]    [n_batch, numel(in i)]   and   out [n_batch, numel(n->shape)],
     *   dout     [n_batch, numel(n->shape)]  gradient of the loss w.r.t. out,
     * it ADDS
     *   din[i]   [n_batch, numel(in i)]  the gradient w.r.t. input i (NULL: not needed)
     *   dparams  the gradient w.r.t. the node's parameters, same layout as params
     *            (weight then bias), summed over the batch (NULL: not needed)
     * Accumulating lets the autodiff pass sum the gradients of a value used twice
     * (a residual's input) without extra buffers; the caller zeroes first. */
    void (*ref_backward)(const lipc_node *n, int n_batch, const double *const *in,
                         const double *out, const double *dout, double *const *din,
                         const double *params, double *dparams);
    /* Ops whose bound is an operator norm (conv2d; dense that is not
     * row-normalised): the linear map alone, without the bias, with the folded
     * identity when a.fold_identity, on a batch of n_batch vectors:
     *   transpose false:  dst[n_batch, numel(n->shape)] = A src[n_batch, numel(in 0)]
     *   transpose true:   dst[n_batch, numel(in 0)]     = A^T src[n_batch, numel(n->shape)]
     * (the exact adjoint: <A x, y> = <x, A^T y>). Power iteration runs on it.
     * NULL for other ops. */
    void (*ref_linear)(const lipc_node *n, int n_batch, const double *src, double *dst,
                       const double *params, bool transpose);
    /* With ref_linear: ADDS scale * d<A x, dy>/dW, summed over the batch, to
     * dweight (the weight's gradient, not the bias'; dense: only when it is not
     * row-normalised, as the head never is a power-iteration factor). With x = v and dy = u =
     * A v / ||A v|| this is d sigma / dW at convergence (METHOD.md section 4). */
    void (*ref_weight_grad)(const lipc_node *n, int n_batch, const double *x,
                            const double *dy, double scale, double *dweight);
    /* Running error analysis: a rigorous bound on how far ref_forward's double
     * result is from the op evaluated in exact real arithmetic on the exact
     * inputs (docs/soundness.md). With the forward's
     *   in[i]      [n_batch, numel(in i)]   the computed inputs x~
     *   in_err[i]  [n_batch, numel(in i)]   e_in >= |x~ - x| elementwise, x the
     *                                       exact inputs (>= 0; +inf: unknown)
     *   out        [n_batch, numel(n->shape)]  ref_forward's result y~ on in
     *   params     as ref_forward's (the float parameters widened: exact)
     * it WRITES
     *   out_err    [n_batch, numel(n->shape)]  e_out >= |y~ - op(x)| elementwise
     * counting both the propagated e_in and the op's own rounding, every
     * computation of the bound itself rounded so that it stays an upper bound
     * (lipc_ops_err_up). Each op file derives its rule. NULL for the input (the
     * data: e = 0). */
    void (*ref_error)(const lipc_node *n, int n_batch, const double *const *in,
                      const double *const *in_err, const double *out, double *out_err,
                      const double *params);
} lipc_op_desc;

extern const lipc_op_desc *const lipc_op_descs[LIPC_OP_COUNT];

static inline const lipc_op_desc *lipc_op_info(lipc_op op) { return lipc_op_descs[op]; }
/* The op spelt `name` in YAML, or LIPC_OP_COUNT when there is none. */
lipc_op lipc_op_lookup(const char *name);
/* The spellings of every user-writable op, NULL-terminated (for "did you mean"). */
const char *const *lipc_op_user_names(void);
const lipc_field *lipc_field_find(const lipc_field *fields, const char *key);

/* ---- printers -------------------------------------------------------------- */

typedef enum lipc_format {
    LIPC_FORMAT_TEXT,
    LIPC_FORMAT_DOT,
    LIPC_FORMAT_JSON,
} lipc_format;

/* Stable, human-readable text: one line per node, then residuals and params. */
void lipc_graph_print_text(const lipc_graph *g, lipc_buf *out);
/* Graphviz digraph; residual bodies drawn as clusters. */
void lipc_graph_print_dot(const lipc_graph *g, lipc_buf *out);
/* {"name":..., "nodes":[{"id","op","name","inputs","shape","loc","attrs",
 *  "params", "lipschitz"?}], "residuals":[...], "params":[...]} */
void lipc_graph_print_json(const lipc_graph *g, lipc_buf *out);
void lipc_graph_print(const lipc_graph *g, lipc_format f, lipc_buf *out);

/* The attributes of n that differ from its op's defaults, as "k=v k=v". */
void lipc_node_format_attrs(const lipc_node *n, lipc_buf *out);
/* "file:line:col" or "?" */
const char *lipc_loc_str(lipc_loc loc, char *buf, size_t size);

#endif
