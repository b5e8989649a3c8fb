/* runtime/pool.c: the thread pool compiled kernels run on.
 *
 * One pool of T threads: the caller is thread 0 and T - 1 workers wait on a
 * condition variable. lipc_pool_run(fn, ctx, n) splits [0, n) into T
 * contiguous ranges, the first n % T one longer, and runs fn on each; it
 * returns when all are done. Which thread runs which range never changes the
 * result: kernels give every output element to exactly one range and sum in
 * a fixed order inside it (backend/llvm/emit.c), so results are identical for
 * any thread count.
 *
 * Denormals: every thread that runs numeric code sets flush-to-zero and
 * denormals-are-zero first (a convolution on denormal floats runs about 170x
 * slower on the machines lipc is measured on). Values below 2^-126 in
 * magnitude then read and write as 0; training and inference do not depend
 * on them, and certification bounds are computed by the reference backend in
 * double, not here.
 */
#include "runtime/runtime.h"

#include <pthread.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

void lipc_fp_flush_denormals(void)
{
#if defined(__x86_64__) || defined(__i386__)
    /* MXCSR bit 15: flush to zero; bit 6: denormals are zero */
    _mm_setcsr(_mm_getcsr() | 0x8040u);
#endif
}

int lipc_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > LIPC_POOL_MAX_THREADS ? LIPC_POOL_MAX_THREADS : (int)n;
}

typedef struct worker_arg {
    struct lipc_pool *pool;
    int index;
} worker_arg;

struct lipc_pool {
    int n_threads;
    worker_arg args[LIPC_POOL_MAX_THREADS];
    pthread_t workers[LIPC_POOL_MAX_THREADS];
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    /* the job: generation counts jobs, so a worker runs each once */
    lipc_task_fn fn;
    void *ctx;
    int64_t n;
    unsigned long generation;
    int pending;
    bool quit;
};


/* Range i of T over [0, n). */
static void range_of(int64_t n, int t, int i, int64_t *lo, int64_t *hi)
{
    int64_t q = n / t, r = n % t;
    *lo = i * q + (i < r ? i : r);
    *hi = *lo + q + (i < r ? 1 : 0);
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    lipc_pool *p = wa->pool;
    int index = wa->index;
    lipc_fp_flush_denormals();
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->generation;
        lipc_task_fn fn = p->fn;
        void *ctx = p->ctx;
        int64_t lo, hi;
        range_of(p->n, p->n_threads, index, &lo, &hi);
        pthread_mutex_unlock(&p->mu);
        if (lo < hi)
            fn(ctx, lo, hi);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

lipc_pool *lipc_pool_new(int threads)
{
    if (threads < 1)
        threads = lipc_cpu_count();
    if (threads > LIPC_POOL_MAX_THREADS)
        threads = LIPC_POOL_MAX_THREADS;
    lipc_pool *p = lipc_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n_threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    lipc_fp_flush_denormals();
    /* the generated kernels keep scratch on the stack (up to about 2 MiB in
     * the convolutions' weight gradient): give the workers room for it
     * whatever the default thread stack is */
    pthread_attr_t attr;
    bool have_attr = pthread_attr_init(&attr) == 0;
    if (have_attr)
        pthread_attr_setstacksize(&attr, LIPC_POOL_STACK_BYTES);
    for (int i = 1; i < threads; i++) {
        worker_arg *wa = &p->args[i];
        wa->pool = p;
        wa->index = i;
        if (pthread_create(&p->workers[i], have_attr ? &attr : NULL, worker_main, wa) != 0)
            break;
        p->n_started = i;
    }
    if (have_attr)
        pthread_attr_destroy(&attr);
    /* fewer threads than asked when the system refused some */
    p->n_threads = p->n_started + 1;
    return p;
}

int lipc_pool_threads(const lipc_pool *p) { return p ? p->n_threads : 1; }

void lipc_pool_run(lipc_pool *p, lipc_task_fn fn, void *ctx, int64_t n)
{
    if (n <= 0)
        return;
    if (!p || p->n_threads == 1 || n == 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    int64_t lo, hi;
    range_of(n, p->n_threads, 0, &lo, &hi);
    if (lo < hi)
        fn(ctx, lo, hi);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void lipc_pool_free(lipc_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i <= p->n_started; i++)
        pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    lipc_free(p);
}
