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
 *   make build/bench_verify && build/bench_verify MODEL [threads] [reps] [ctx] [amx] [prefill]
 *
 * ctx: prompt positions before the block (default 128).
 * amx: the kernel setting (qmat_set_amx): "default" (the library's), "off"
 * (the build's kernel: VNNI / AVX2), a number N (AMX from N tokens on), or
 * "cmp": every T twice, interleaved, AMX off and AMX at the library's
 * default, printed side by side with the ratio off / on (the CPU must have
 * AMX).
 * prefill: a comma list of block lengths (e.g. 64,256) also timed as prompt
 * chunks (logits of the last position only, ctx before them), reported as
 * tokens/s, under the same setting(s).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "kernels/qmat.h"
#include "model/model.h"
#include "util/util.h"

#define MAX_T 17
#define MAX_PRE 8      /* prefill lengths */
#define MAX_PRE_T 1024

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [threads] [reps] [ctx] [default|off|N|cmp|cmp:N] [prefill T list]\n", argv[0]);
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
    /* the kernel settings to run: one, or (cmp) off and the default */
    int amx_set[2] = {-1, -1}, n_set = 1;
    const char *amx_arg = argc > 5 ? argv[5] : "default";
    if (strncmp(amx_arg, "cmp", 3) == 0) {   /* cmp: off against the default; cmp:N: against AMX from N */
        if (!qmat_amx_available()) {
            fprintf(stderr, "cmp: this CPU (or OS) has no AMX\n");
            return 2;
        }
        amx_set[0] = 0, amx_set[1] = amx_arg[3] == ':' ? atoi(amx_arg + 4) : QMAT_AMX_MIN_T_DEFAULT, n_set = 2;
    } else if (strcmp(amx_arg, "off") == 0) {
        amx_set[0] = 0;
    } else if (strcmp(amx_arg, "default") != 0) {
        amx_set[0] = atoi(amx_arg);
    }
    int pre_T[MAX_PRE], n_pre = 0, max_pre = 0;
    for (char *q = argc > 6 ? argv[6] : NULL; q && *q && n_pre < MAX_PRE;) {
        pre_T[n_pre] = (int)strtol(q, &q, 10);
        if (pre_T[n_pre] < 1 || pre_T[n_pre] > MAX_PRE_T) {
            fprintf(stderr, "prefill lengths must be in 1..%d\n", MAX_PRE_T);
            return 2;
        }
        max_pre = pre_T[n_pre] > max_pre ? pre_T[n_pre] : max_pre;
        n_pre++;
        if (*q == ',')
            q++;
    }
    char err[512] = "";
    model m;
    if (model_load(&m, argv[1], NULL, err, sizeof err) != 0) {
        fprintf(stderr, "model_load: %s\n", err);
        return 2;
    }
    const model_config *c = &m.config;
    int cap = ctx + (max_pre > MAX_T ? max_pre : MAX_T) + 1;
    int max_tokens = ctx > MAX_T ? ctx : MAX_T;
    max_tokens = max_pre > max_tokens ? max_pre : max_tokens;
    fwd_state s;
    kv_cache kv;
    fwd_state_init(&s, c, max_tokens, cap);
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
    static double t[2][MAX_T + 1][1000], tp[2][MAX_PRE][1000];
    for (int r = 0; r < reps; r++) {
        for (int T = 1; T <= MAX_T; T++)
            for (int k = 0; k < n_set; k++) {
                if (amx_set[k] >= 0)
                    qmat_set_amx(amx_set[k]);
                /* logits at every position, as a verification needs */
                fwd_seq b = {.tokens = tok + ctx, .n_tokens = T, .pos = ctx, .kv = &kv, .logits_from = 0};
                double t0 = util_now();
                if (model_forward(&m, &s, &b, 1, NULL, NULL, logits, err, sizeof err) != 0) {
                    fprintf(stderr, "forward: %s\n", err);
                    return 2;
                }
                t[k][T][r] = util_now() - t0;
            }
        for (int i = 0; i < n_pre; i++)
            for (int k = 0; k < n_set; k++) {
                if (amx_set[k] >= 0)
                    qmat_set_amx(amx_set[k]);
                /* a prompt chunk: the last position's logits only */
                fwd_seq b = {.tokens = tok + ctx, .n_tokens = pre_T[i], .pos = ctx, .kv = &kv,
                             .logits_from = pre_T[i] - 1};
                double t0 = util_now();
                if (model_forward(&m, &s, &b, 1, NULL, NULL, logits, err, sizeof err) != 0) {
                    fprintf(stderr, "forward: %s\n", err);
                    return 2;
                }
                tp[k][i][r] = util_now() - t0;
            }
    }
    printf("model %s, %d layers, %d threads, context %d, weights read per pass %.1f MB; "
           "median of %d; kernel setting %s%s\n", c->name, c->n_layers, omp_get_max_threads(), ctx, bytes / 1e6, reps,
           amx_arg, n_set == 2 ? " (AMX off | AMX at the default min T, interleaved)" : "");
    if (n_set == 2)
        printf("%4s %4s %10s %10s %10s | %10s %10s %10s | %8s\n", "k", "T", "off ms", "x T=1", "GB/s", "amx ms",
               "x T=1", "GB/s", "off/amx");
    else
        printf("%4s %4s %10s %10s %10s\n", "k", "T", "ms", "x T=1", "GB/s");
    double base[2] = {0, 0};
    for (int T = 1; T <= MAX_T; T++) {
        printf("%4d %4d", T - 1, T);
        double med[2] = {0, 0};
        for (int k = 0; k < n_set; k++) {
            qsort(t[k][T], (size_t)reps, sizeof(double), cmp_d);
            med[k] = t[k][T][reps / 2];
            if (T == 1)
                base[k] = med[k];
            printf(" %s%10.2f %10.2f %10.1f", k ? "|" : "", med[k] * 1e3, med[k] / base[k], bytes / med[k] / 1e9);
        }
        if (n_set == 2)
            printf(" | %8.2f", med[0] / med[1]);
        printf("\n");
    }
    for (int i = 0; i < n_pre; i++) {
        printf("prefill %4d tokens:", pre_T[i]);
        double med[2] = {0, 0};
        for (int k = 0; k < n_set; k++) {
            qsort(tp[k][i], (size_t)reps, sizeof(double), cmp_d);
            med[k] = tp[k][i][reps / 2];
            printf(" %s %8.2f ms %8.1f tok/s", n_set == 2 ? (k ? "| amx" : "off") : "", med[k] * 1e3, pre_T[i] / med[k]);
        }
        if (n_set == 2)
            printf(" | x%.2f", med[0] / med[1]);
        printf("\n");
    }
    free(tok);
    free(logits);
    kv_free(&kv);
    fwd_state_free(&s);
    model_free(&m);
    return 0;
}
