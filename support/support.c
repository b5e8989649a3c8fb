/* support/support.c: allocator hook, arena, string buffer, status names, RNG.
 *
 * The allocator hook is a countdown: tests call lipc_alloc_fail_after(N) and the
 * Nth allocation from then on (and every later one) returns NULL, which lets a
 * test walk N = 1, 2, ... through every error path of a phase and check that
 * nothing leaks or crashes (AddressSanitizer reports leaks at exit).
 */
#include "support/support.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- allocation --------------------------------------------------------- */

static long alloc_count;    /* allocations since the last lipc_alloc_fail_after */
static long alloc_fail_at;  /* 0: never fail */

long lipc_alloc_fail_after(long n)
{
    long made = alloc_count;
    alloc_count = 0;
    alloc_fail_at = n;
    return made;
}

static bool alloc_should_fail(void)
{
    alloc_count++;
    return alloc_fail_at > 0 && alloc_count >= alloc_fail_at;
}

void *lipc_malloc(size_t size)
{
    if (alloc_should_fail())
        return NULL;
    return malloc(size ? size : 1);
}

void *lipc_calloc(size_t count, size_t size)
{
    if (alloc_should_fail())
        return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *lipc_realloc(void *ptr, size_t size)
{
    if (alloc_should_fail())
        return NULL;
    return realloc(ptr, size ? size : 1);
}

void lipc_free(void *ptr) { free(ptr); }

char *lipc_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = lipc_malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* ---- arena -------------------------------------------------------------- */

struct lipc_arena_chunk {
    lipc_arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define ARENA_CHUNK 65536

void lipc_arena_init(lipc_arena *a) { a->head = NULL; }

void lipc_arena_free(lipc_arena *a)
{
    lipc_arena_chunk *c = a->head;
    while (c) {
        lipc_arena_chunk *next = c->next;
        lipc_free(c);
        c = next;
    }
    a->head = NULL;
}

void *lipc_arena_alloc(lipc_arena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    lipc_arena_chunk *c = a->head;
    if (!c || c->cap - c->used < size) {
        size_t cap = size > ARENA_CHUNK ? size : ARENA_CHUNK;
        c = lipc_malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += size;
    memset(p, 0, size);
    return p;
}

char *lipc_arena_strdup(lipc_arena *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = lipc_arena_alloc(a, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

char *lipc_arena_printf(lipc_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = lipc_arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* ---- string buffer ------------------------------------------------------ */

void lipc_buf_init(lipc_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = false;
}

void lipc_buf_free(lipc_buf *b)
{
    lipc_free(b->data);
    lipc_buf_init(b);
}

static bool buf_reserve(lipc_buf *b, size_t extra)
{
    if (b->failed)
        return false;
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = lipc_realloc(b->data, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void lipc_buf_puts(lipc_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (!buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, s, n + 1);
    b->len += n;
}

void lipc_buf_putc(lipc_buf *b, char c)
{
    if (!buf_reserve(b, 1))
        return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

void lipc_buf_vprintf(lipc_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || !buf_reserve(b, (size_t)n))
        return;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void lipc_buf_printf(lipc_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lipc_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

const char *lipc_buf_str(const lipc_buf *b) { return b->data ? b->data : ""; }

/* ---- status ------------------------------------------------------------- */

const char *lipc_status_name(lipc_status s)
{
    switch (s) {
    case LIPC_OK: return "ok";
    case LIPC_ERR_NOMEM: return "out of memory";
    case LIPC_ERR_IO: return "I/O error";
    case LIPC_ERR_INPUT: return "invalid input";
    case LIPC_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown status";
}

_Noreturn void lipc_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "%s:%d: internal error: assertion failed: %s\n", file, line, what);
    fflush(stderr);
    abort();
}

/* ---- random numbers ----------------------------------------------------- */

/* splitmix64 expands the seed into xoshiro256**'s state (the generator's
 * authors' recommended seeding); both are tiny and fully specified, so a seed
 * means the same stream everywhere. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void lipc_rng_seed(lipc_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t lipc_rng_next(lipc_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double lipc_rng_uniform(lipc_rng *r)
{
    /* the top 53 bits, scaled to [0, 1) */
    return (double)(lipc_rng_next(r) >> 11) * 0x1.0p-53;
}

double lipc_rng_normal(lipc_rng *r)
{
    /* Box-Muller; 1 - u keeps the logarithm's argument in (0, 1]. */
    double u = 1.0 - lipc_rng_uniform(r);
    double v = lipc_rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * 3.14159265358979323846 * v);
}
