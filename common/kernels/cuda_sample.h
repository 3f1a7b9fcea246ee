/*
 * cuda_sample.h - sampling on the device (k_sample in cuda_kernels.cu), the
 * rule shared with its host port in tests/test_cuda_order.c. Plain C, no
 * CUDA types; CO_FN (cuda_order.h) marks what both sides call.
 *
 * One output row of logits x[0..V), a request (temperature T > 0, top_k,
 * top_p, a uniform u in [0, 1) drawn by the host from the request's own
 * seeded generator), one token:
 *   1. m = max x.
 *   2. top-k (0 < top_k < V): the largest threshold key t such that at
 *      least top_k entries have samp_key(x_i) >= t, found bit by bit from
 *      the top (32 counts over the row); kept: key >= t. Ties at the
 *      threshold are all kept (the host sampler keeps exactly top_k, the
 *      lower ids first).
 *   3. w_i = exp((x_i - m) / T) over the kept entries; Z = the sum of
 *      exp((x_i - m) / T) over every entry (the host sampler measures
 *      top-p against the whole distribution, top-k or not).
 *   4. top-p (top_p < 1): the largest threshold key t' on w such that the
 *      kept entries with samp_key(w_i) >= t' carry at least top_p Z: the most
 *      probable entries, fewest first, as the host sampler's nucleus
 *      (again with every tie at the edge kept). Z' = their mass.
 *   5. The draw: the first index, in index order, at which the running sum
 *      of kept w reaches u Z'. The row is cut into SAMP_THREADS chunks of
 *      samp_chunk(V) consecutive entries; chunk sums, then their prefix in
 *      chunk order, then one walk inside the chunk that crosses.
 * Every sum has a fixed order (the block's tree, then chunk order), so a
 * row gives the same token whatever else is in the pass: batch-invariant
 * as the projections are. It is a draw from the same warped distribution
 * as sampler_sample (decode/sampler.h), not the same token for the same u:
 * the host sorts before it walks, this walks in index order.
 */
#ifndef SELFSPEC_CUDA_SAMPLE_H
#define SELFSPEC_CUDA_SAMPLE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda_order.h"

#define SAMP_THREADS 1024

typedef struct {
    float temperature;   /* <= 0: greedy (the pass's argmax) */
    int32_t top_k;       /* 0: off */
    float top_p;         /* 1: off */
    float u;             /* uniform in [0, 1) */
} samp_req;

/* An order-preserving map of floats to unsigned keys: a < b <=> key(a) <
 * key(b) (for non-NaN values; -0 sorts just below +0). */
CO_FN uint32_t samp_key(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

/* Entries per chunk of the draw's walk. */
CO_FN int32_t samp_chunk(int32_t V) { return (V + SAMP_THREADS - 1) / SAMP_THREADS; }

/* One step of a threshold search: keep the bit when enough remains at or
 * above the candidate (have >= need). */
CO_FN uint32_t samp_search_step(uint32_t t, int bit, float have, float need)
{
    return have >= need ? t | (1u << bit) : t;
}

/* The rule in plain sequential C (steps 1-5 above, sums in index order
 * rather than the block's tree): the reference the tests compare the
 * device's draws with, and a stand-in device for tests of the engine. am:
 * the row's argmax (the greedy answer). */
static inline int32_t samp_reference(const float *x, int32_t V, const samp_req *q, int32_t am)
{
    if (!(q->temperature > 0.0f))
        return am;
    float m = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        m = fmaxf(m, x[i]);
    if (!(m > -INFINITY))
        return am;
    uint32_t kt = 0;
    if (q->top_k > 0 && q->top_k < V)
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = kt | (1u << bit);
            float c = 0.0f;
            for (int32_t i = 0; i < V; i++)
                c += !isnan(x[i]) && samp_key(x[i]) >= cand;
            kt = samp_search_step(kt, bit, c, (float)q->top_k);
        }
    const float inv_t = 1.0f / q->temperature;
#define SAMP_W(i) (isnan(x[i]) || samp_key(x[i]) < kt ? 0.0f : expf((x[i] - m) * inv_t))
    uint32_t pt = 0;
    if (q->top_p < 1.0f) {
        float z = 0.0f;   /* the whole distribution's mass, as the host's top-p */
        for (int32_t i = 0; i < V; i++)
            z += isnan(x[i]) ? 0.0f : expf((x[i] - m) * inv_t);
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = pt | (1u << bit);
            float mass = 0.0f;
            for (int32_t i = 0; i < V; i++) {
                float w = SAMP_W(i);
                mass += w > 0.0f && samp_key(w) >= cand ? w : 0.0f;
            }
            pt = samp_search_step(pt, bit, mass, q->top_p * z);
        }
    }
#define SAMP_K(i) (SAMP_W(i) > 0.0f && samp_key(SAMP_W(i)) >= pt ? SAMP_W(i) : 0.0f)
    float tot = 0.0f;
    for (int32_t i = 0; i < V; i++)
        tot += SAMP_K(i);
    float target = q->u * tot, run = 0.0f;
    int32_t last = -1;
    for (int32_t i = 0; i < V; i++) {
        float w = SAMP_K(i);
        if (!(w > 0.0f))
            continue;
        last = i;
        if ((run += w) > target)
            return i;
    }
#undef SAMP_K
#undef SAMP_W
    return last >= 0 ? last : am;
}

#endif
