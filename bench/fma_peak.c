/* bench/fma_peak.c: the machine's FMA peak, measured, for the "share of the
 * peak" columns of docs/benchmarks.md: every thread runs independent chains
 * of 16-lane (AVX-512; 8 with AVX2) float FMAs, enough chains to cover the
 * FMA latency on two units; 2 FLOP per lane per FMA. Median of repeated runs.
 *
 * Build: cmake --build build --target fma_peak
 * Run:   build/fma_peak [THREADS] (default 1 and 2 in turn)
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1(x) _mm512_set1_ps(x)
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 vec;
#define LANES 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1(x) _mm256_set1_ps(x)
static float SUM(vec v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

enum { CHAINS = 12, ITERS = 20000000 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *chains(void *arg)
{
    float *out = arg;
    vec acc[CHAINS];
    for (int c = 0; c < CHAINS; c++)
        acc[c] = SET1(0.001f * (float)c);
    vec a = SET1(0.9999999f), b = SET1(1e-7f);
    for (long i = 0; i < ITERS; i++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = FMA(acc[c], a, b);
    float s = 0.0f;
    for (int c = 0; c < CHAINS; c++)
        s += SUM(acc[c]);
    *out = s; /* keeps the work */
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double gflops(int threads)
{
    enum { RUNS = 7 };
    double r[RUNS];
    for (int k = 0; k < RUNS; k++) {
        pthread_t t[64];
        float out[64];
        double t0 = now();
        for (int i = 1; i < threads; i++)
            pthread_create(&t[i], NULL, chains, &out[i]);
        chains(&out[0]);
        for (int i = 1; i < threads; i++)
            pthread_join(t[i], NULL);
        double s = now() - t0;
        r[k] = 2.0 * LANES * CHAINS * (double)ITERS * threads / s / 1e9;
    }
    qsort(r, RUNS, sizeof r[0], cmp);
    return r[RUNS / 2];
}

int main(int argc, char **argv)
{
    int only = argc > 1 ? atoi(argv[1]) : 0;
    if (only < 0 || only > 64)
        return fprintf(stderr, "fma_peak: THREADS is 1..64\n"), 2;
    for (int t = 1; t <= 2; t++)
        if (!only || only == t)
            printf("{\"threads\": %d, \"lanes\": %d, \"fma_peak_gflop_s\": %.1f}\n", t, LANES,
                   gflops(t));
    if (only > 2)
        printf("{\"threads\": %d, \"lanes\": %d, \"fma_peak_gflop_s\": %.1f}\n", only, LANES,
               gflops(only));
    return 0;
}
