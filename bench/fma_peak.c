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

/* CHAINS accumulators, each its own variable so that they live in registers
 * (an array stayed in memory at -O2) */
static void *chains(void *arg)
{
    float *out = arg;
    vec a = SET1(0.9999999f), b = SET1(1e-7f);
    vec c0 = SET1(0.00f), c1 = SET1(0.01f), c2 = SET1(0.02f), c3 = SET1(0.03f);
    vec c4 = SET1(0.04f), c5 = SET1(0.05f), c6 = SET1(0.06f), c7 = SET1(0.07f);
    vec c8 = SET1(0.08f), c9 = SET1(0.09f), c10 = SET1(0.10f), c11 = SET1(0.11f);
    for (long i = 0; i < ITERS; i++) {
        c0 = FMA(c0, a, b);
        c1 = FMA(c1, a, b);
        c2 = FMA(c2, a, b);
        c3 = FMA(c3, a, b);
        c4 = FMA(c4, a, b);
        c5 = FMA(c5, a, b);
        c6 = FMA(c6, a, b);
        c7 = FMA(c7, a, b);
        c8 = FMA(c8, a, b);
        c9 = FMA(c9, a, b);
        c10 = FMA(c10, a, b);
        c11 = FMA(c11, a, b);
        __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5));
        __asm__ volatile("" : "+v"(c6), "+v"(c7), "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11));
    }
    *out = SUM(c0) + SUM(c1) + SUM(c2) + SUM(c3) + SUM(c4) + SUM(c5) + SUM(c6) + SUM(c7) +
           SUM(c8) + SUM(c9) + SUM(c10) + SUM(c11); /* keeps the work */
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
