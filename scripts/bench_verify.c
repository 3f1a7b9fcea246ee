/*
 * bench_verify.c - the verify-k cost curve on a real model: the time of one
 * full forward pass over a block of T = k + 1 tokens (a verification of k
 * drafted tokens; equally a decode step of T sequences' worth of products)
 * after a prefilled context, against T = 1 (one plain decoding step).
 *
 * For each T the block is run REPS times at the same position (the context
 * is not extended: KV entries past the prompt are overwritten each run),
 * interleaved over T so that machine noise spreads evenly; medians are
 * printed, with the ratio to T = 1 and the weight bytes streamed per second.
 *
 *   make build/bench_verify && build/bench_verify MODEL [threads] [reps] [ctx]
 *
 * ctx: prompt positions before the block (default 128).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "model/model.h"
#include "util/util.h"

#define MAX_T 17

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [threads] [reps] [ctx]\n", argv[0]);
        return 2;
    }
    if (argc > 2)
        omp_set_num_threads(atoi(argv[2]));
    int reps = argc > 3 ? atoi(argv[3]) : 7;
    int ctx = argc > 4 ? atoi(argv[4]) : 128;
    if (reps < 1 || reps > 1000 || ctx < 1 || ctx > 8192) {
        fprintf(stderr, "bad reps or ctx\n");
        return 2;
    }
    char err[512] = "";
    model m;
    if (model_load(&m, argv[1], NULL, err, sizeof err) != 0) {
        fprintf(stderr, "model_load: %s\n", err);
        return 2;
    }
    const model_config *c = &m.config;
    int cap = ctx + MAX_T + 1;
    fwd_state s;
    kv_cache kv;
    fwd_state_init(&s, c, ctx > MAX_T ? ctx : MAX_T, cap);
    if (kv_init(&kv, c, cap, err, sizeof err) != 0) {
        fprintf(stderr, "kv_init: %s\n", err);
        return 2;
    }
    int32_t *tok = mallocCheck((size_t)cap * sizeof(int32_t));
    for (int i = 0; i < cap; i++)
        tok[i] = (int32_t)((i * 7919 + 13) % c->vocab_size);
    float *logits = mallocCheck((size_t)MAX_T * c->vocab_size * sizeof(float));
    fwd_seq pre = {.tokens = tok, .n_tokens = ctx, .pos = 0, .kv = &kv, .logits_from = ctx - 1};
    if (model_forward(&m, &s, &pre, 1, NULL, NULL, logits, err, sizeof err) != 0) {
        fprintf(stderr, "prefill: %s\n", err);
        return 2;
    }
    kv.len = ctx;
    size_t bytes = model_step_bytes(&m, NULL, NULL);
    static double t[MAX_T + 1][1000];
    for (int r = 0; r < reps; r++)
        for (int T = 1; T <= MAX_T; T++) {
            /* logits at every position, as a verification needs */
            fwd_seq b = {.tokens = tok + ctx, .n_tokens = T, .pos = ctx, .kv = &kv, .logits_from = 0};
            double t0 = util_now();
            if (model_forward(&m, &s, &b, 1, NULL, NULL, logits, err, sizeof err) != 0) {
                fprintf(stderr, "forward: %s\n", err);
                return 2;
            }
            t[T][r] = util_now() - t0;
        }
    printf("model %s, %d layers, %d threads, context %d, weights read per pass %.1f MB; "
           "median of %d\n", c->name, c->n_layers, omp_get_max_threads(), ctx, bytes / 1e6, reps);
    printf("%4s %4s %10s %10s %10s\n", "k", "T", "ms", "x T=1", "GB/s");
    double base = 0;
    for (int T = 1; T <= MAX_T; T++) {
        qsort(t[T], (size_t)reps, sizeof(double), cmp_d);
        double med = t[T][reps / 2];
        if (T == 1)
            base = med;
        printf("%4d %4d %10.2f %10.2f %10.1f\n", T - 1, T, med * 1e3, med / base, bytes / med / 1e9);
    }
    free(tok);
    free(logits);
    kv_free(&kv);
    fwd_state_free(&s);
    model_free(&m);
    return 0;
}
