/* support/support.h: the small pieces every other folder of lipc stands on.
 *
 * - one allocator hook, so tests can fail the Nth allocation and check cleanup;
 * - an arena for objects that live exactly as long as their owner (IR graphs);
 * - a growable string buffer;
 * - diagnostics for user input: collected, printed as `file:line:col: error: ...`
 *   with the source line and a caret, then `note:` lines;
 * - status values for environment errors (I/O, memory), which carry a message;
 * - a seeded random number generator (splitmix64 + xoshiro256**), identical on
 *   every platform so results can be reproduced from a seed.
 */
#ifndef LIPC_SUPPORT_H
#define LIPC_SUPPORT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- allocation --------------------------------------------------------- */

/* Every heap allocation of lipc goes through these. They return NULL on failure
 * (never abort); callers report LIPC_ERR_NOMEM. */
void *lipc_malloc(size_t size);
void *lipc_calloc(size_t count, size_t size);
void *lipc_realloc(void *ptr, size_t size);
void lipc_free(void *ptr);
char *lipc_strdup(const char *s);

/* Test hook: make the Nth allocation from now (1-based) and every one after it
 * fail; 0 disables. Returns the number of allocations made since the last call. */
long lipc_alloc_fail_after(long n);

/* ---- arena -------------------------------------------------------------- */

/* A bump allocator in chunks; objects are never freed one by one. */
typedef struct lipc_arena_chunk lipc_arena_chunk;
typedef struct lipc_arena {
    lipc_arena_chunk *head;
} lipc_arena;

void lipc_arena_init(lipc_arena *a);
void lipc_arena_free(lipc_arena *a);
/* Zeroed memory aligned to 16 bytes, or NULL when out of memory. */
void *lipc_arena_alloc(lipc_arena *a, size_t size);
char *lipc_arena_strdup(lipc_arena *a, const char *s);
char *lipc_arena_printf(lipc_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- string buffer ------------------------------------------------------ */

typedef struct lipc_buf {
    char *data;     /* always NUL-terminated when len > 0 or after any append */
    size_t len, cap;
    bool failed;    /* an allocation failed; data holds what fitted */
} lipc_buf;

void lipc_buf_init(lipc_buf *b);
void lipc_buf_free(lipc_buf *b);
void lipc_buf_puts(lipc_buf *b, const char *s);
void lipc_buf_putc(lipc_buf *b, char c);
void lipc_buf_printf(lipc_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void lipc_buf_vprintf(lipc_buf *b, const char *fmt, va_list ap);
/* Returns the contents ("" when empty); valid until the next append. */
const char *lipc_buf_str(const lipc_buf *b);

/* ---- status for environment errors ------------------------------------- */

typedef enum lipc_status {
    LIPC_OK = 0,
    LIPC_ERR_NOMEM,     /* an allocation failed */
    LIPC_ERR_IO,        /* a file could not be read or written */
    LIPC_ERR_INPUT,     /* user input was rejected; diagnostics say why */
    LIPC_ERR_UNSUPPORTED,
} lipc_status;

const char *lipc_status_name(lipc_status s);

/* ---- source locations and diagnostics ---------------------------------- */

/* 1-based line and column. A diagnostic copies the file name it is given,
 * so a location may point into memory freed before the diagnostics are
 * printed (an IR graph, a loaded file). */
typedef struct lipc_loc {
    const char *file;
    int line, col;
} lipc_loc;

#define LIPC_NO_LOC ((lipc_loc){NULL, 0, 0})

typedef enum lipc_severity {
    LIPC_SEV_ERROR,
    LIPC_SEV_WARNING,
    LIPC_SEV_NOTE,
} lipc_severity;

typedef struct lipc_diag_msg lipc_diag_msg;
struct lipc_diag_msg {
    lipc_severity sev;
    lipc_loc loc;           /* file NULL when the message has no location */
    char *text;
    char *hint;             /* optional "hint: ..." line, errors only */
    lipc_diag_msg *notes;   /* notes attached to an error, in order */
    lipc_diag_msg *next;
};

typedef struct lipc_source lipc_source;

typedef struct lipc_diags {
    lipc_diag_msg *first, *last;
    int n_errors, n_warnings;
    int max_errors;         /* stop recording errors past this many (0: 50) */
    bool truncated;         /* some errors were dropped */
    lipc_source *sources;   /* registered file texts, for printing source lines */
} lipc_diags;

void lipc_diags_init(lipc_diags *d);
void lipc_diags_free(lipc_diags *d);
/* Registers the text of a file so printed diagnostics can quote its lines.
 * Returns the stable copy of the file name to store in lipc_loc. */
const char *lipc_diags_add_source(lipc_diags *d, const char *file,
                                  const char *text, size_t len);

/* Record an error or warning; returns it so notes and a hint can be attached
 * (NULL when dropped past max_errors or out of memory; attaching to NULL is a
 * no-op). */
lipc_diag_msg *lipc_diag_error(lipc_diags *d, lipc_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
lipc_diag_msg *lipc_diag_warning(lipc_diags *d, lipc_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lipc_diag_note(lipc_diag_msg *m, lipc_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lipc_diag_hint(lipc_diag_msg *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints every message in order:
 *   file:line:col: error: text
 *      <source line>
 *      ^
 *   file:line:col: note: text
 *   hint: text
 * and a final "N errors generated." line when there were errors. */
void lipc_diags_print(const lipc_diags *d, FILE *out);
/* The same into a buffer (tests compare it with golden files). */
void lipc_diags_format(const lipc_diags *d, lipc_buf *out);

/* Levenshtein distance, capped: returns cap + 1 when larger. For "did you mean". */
int lipc_edit_distance(const char *a, const char *b, int cap);
/* Among words (NULL-terminated), the closest to s if it is close enough to be a
 * plausible typo; NULL otherwise. */
const char *lipc_closest_word(const char *s, const char *const *words);

/* ---- row normalisation of the GloRo head (support/linalg.c) ----------- */

/* w, r, d_eff, dw [rows, cols]:
 *   lipc_rownorm_forward:  r_o = w_o / ||w_o||; a zero row stays zero
 *   lipc_rownorm_backward: ADDS dw_o += (d_o - r_o (r_o . d_o)) / ||w_o||, with
 *                          d = d_eff the gradient w.r.t. r; a zero row passes
 *                          the gradient through (dw_o += d_o), never NaN
 *   lipc_row_inv_norm:     1 / ||row||, or `zero` for a zero row */
void lipc_rownorm_forward(int rows, int cols, const double *w, double *r);
void lipc_rownorm_backward(int rows, int cols, const double *w, const double *d_eff,
                           double *dw);
double lipc_row_inv_norm(const double *row, int cols, double zero);

/* ---- the size rule of a conv's Gram band (support/linalg.c) ------------ */

/* The exact-operator bound of a conv ("conv-gram-band", runtime/bounds.c)
 * stores the Gram matrix A^T A of an input of c_in x h x w through a kh x kw
 * kernel as a band of half-width lipc_conv_band_kd (pixels in row-major order,
 * channels innermost; any stride). It is used when its banded Cholesky costs at
 * most `budget` operations, n (kd + 1)^2 with n = c_in h w, and the band fits
 * 1.5 GiB; LIPC_CONV_BAND_BUDGET is the default (about 20 s on 2 cores). The
 * IR's classification (`lipc check`) and the runtime's choice share the rule,
 * through lipc_conv_method_for. */
#define LIPC_CONV_BAND_BUDGET 2e11
int lipc_conv_band_kd(int c_in, int w, int kh, int kw);
bool lipc_conv_band_fits(int c_in, int h, int w, int kh, int kw, double budget);

/* How a conv's operator norm is bounded, from its geometry and size (input
 * c_in x h x w, kernel kh x kw, stride sh x sw, zero padding pad: top, bottom,
 * left, right), with `budget` for the band; the first that applies:
 *   LIPC_CONV_RESHAPED   kernel <= stride, no padding: disjoint windows, exact
 *   LIPC_CONV_GRAM_BAND  lipc_conv_band_fits: the exact operator's Gram band
 *   LIPC_CONV_POLYPHASE  strided: the circulant bound of the polyphase rewrite
 *   LIPC_CONV_FFT        stride 1: the circulant bound */
typedef enum lipc_conv_method {
    LIPC_CONV_RESHAPED,
    LIPC_CONV_GRAM_BAND,
    LIPC_CONV_POLYPHASE,
    LIPC_CONV_FFT,
} lipc_conv_method;
lipc_conv_method lipc_conv_method_for(int c_in, int h, int w, int kh, int kw, int sh, int sw,
                                      const int pad[4], double budget);

/* ---- random numbers ----------------------------------------------------- */

typedef struct lipc_rng {
    uint64_t s[4];
} lipc_rng;

void lipc_rng_seed(lipc_rng *r, uint64_t seed);
uint64_t lipc_rng_next(lipc_rng *r);
/* Uniform in [0, 1). */
double lipc_rng_uniform(lipc_rng *r);
/* Standard normal (Box-Muller on two uniforms). */
double lipc_rng_normal(lipc_rng *r);

/* ---- broken invariants -------------------------------------------------- */

/* For programmer errors only (never user input): prints file:line and aborts. */
#define LIPC_ASSERT(cond)                                                     \
    do {                                                                      \
        if (!(cond))                                                          \
            lipc_assert_fail(#cond, __FILE__, __LINE__);                      \
    } while (0)
_Noreturn void lipc_assert_fail(const char *what, const char *file, int line);

#endif
