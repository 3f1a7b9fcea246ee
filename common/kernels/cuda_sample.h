/*
 * cuda_sample.h - sampling on the device (k_sample in cuda/k_sample.cu), the
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
 *
 * Speculative sampling on the device uses the same steps:
 *   draft rows (k_draft, cuda_draft_rows): conf = 1 / sum_i exp(x_i - x_am)
 *      (the top-1 probability at temperature 1, the adaptive exit's test);
 *      a greedy row keeps the argmax; a sampled row draws as in step 5 and
 *      keeps its warped distribution q_i = K_i / Z' (K: the kept weights of
 *      steps 2-4) in a slot of the device's q store;
 *   test rows (kind SAMP_TEST, or SAMP_TEST_CTX for a context token, whose
 *      q is one-hot at x): with Z' the row's kept mass, x is accepted when
 *      u_acc q_x Z' < K_x (u_acc q_x < p_x, Leviathan et al.); else the
 *      replacement is drawn as in step 5 from the residual weights
 *      R_i = max(0, K_i - q_i Z') (= Z' max(0, p_i - q_i)) with u; no
 *      residual mass (p = q): x itself, as spec_accept's rule;
 *   the bonus row after a block is a plain draw.
 * Each test row takes two uniforms and every row is decided by its own
 * logits, q row and uniforms, so acceptance is batch-invariant too.
 *
 * Log-probabilities on the device (k_logprobs, cuda_logprob_rows): for a
 * row and N <= LP_MAX_TOP, the log-sum-exp lse = m + log sum_i exp(x_i - m),
 * the N largest logits (the threshold key found bit by bit as top-k's;
 * the entries at or above it collected in index order, at most LP_COLLECT,
 * then ordered by logit, the lower id first on ties) and the logits of two
 * candidate tokens (the row's draft token and its chosen one: the emitted
 * token is one of them). Only these numbers leave the device; the host
 * subtracts lse (lp_to_sampler). NaN entries count for nothing.
 */
#ifndef SELFSPEC_CUDA_SAMPLE_H
#define SELFSPEC_CUDA_SAMPLE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda_order.h"

#define SAMP_THREADS 1024

enum { SAMP_DRAW = 0, SAMP_TEST = 1, SAMP_TEST_CTX = 2 };

typedef struct {
    float temperature;   /* <= 0: greedy (the pass's argmax) */
    int32_t top_k;       /* 0: off */
    float top_p;         /* 1: off */
    float u;             /* uniform in [0, 1): the draw */
    int32_t kind;        /* SAMP_DRAW; SAMP_TEST: is draft token x accepted against the q
                            store's slot q_slot; SAMP_TEST_CTX: against a one-hot q at x */
    int32_t x;           /* test rows: the draft token */
    int32_t q_slot;      /* SAMP_TEST: the slot its draft row left (cuda_draft_rows) */
    float u_acc;         /* test rows: uniform in [0, 1) for the acceptance test */
} samp_req;

/* The warp of one row (steps 1-4): the max, 1 / T, the top-k threshold key
 * and the top-p threshold key on the weights. */
typedef struct {
    float m, inv_t;
    uint32_t kt, pt;
} samp_warp;

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

/* Step 5's walk over chunk sums (k_sample, k_draft; the host port in
 * tests/test_cuda_order.c runs the same text): chunk[j] holds the sum of
 * the weights W(i) of entries [j C, (j + 1) C), C = samp_chunk(V); pick
 * becomes the first index at which the running sum (the prefix over chunks
 * in order, then one walk inside the chunk that crosses) passes u tot;
 * rounding that leaves the target beyond the last sum takes the last
 * positive entry of the last positive chunk; -1 when no weight is
 * positive. */
#define SAMP_CHUNK_WALK(W, V, chunk, tot, u, pick)                                          \
    do {                                                                                    \
        const int C_ = samp_chunk(V);                                                       \
        const float target_ = (u) * (tot);                                                  \
        float run_ = 0.0f;                                                                  \
        int last_j_ = -1;                                                                   \
        (pick) = -1;                                                                        \
        for (int j_ = 0; j_ < SAMP_THREADS && (pick) < 0; j_++) {                           \
            if (!((chunk)[j_] > 0.0f))                                                      \
                continue;                                                                   \
            last_j_ = j_;                                                                   \
            if (run_ + (chunk)[j_] <= target_) {                                            \
                run_ += (chunk)[j_];                                                        \
                continue;                                                                   \
            }                                                                               \
            for (int i_ = j_ * C_; i_ < (V) && i_ < (j_ + 1) * C_; i_++) {                  \
                float w_ = W(i_);                                                           \
                if (w_ > 0.0f && (run_ += w_) > target_) {                                  \
                    (pick) = i_;                                                            \
                    break;                                                                  \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int i_ = (last_j_ + 1) * C_ - 1; (pick) < 0 && last_j_ >= 0 && i_ >= last_j_ * C_; i_--) \
            if (i_ < (V) && W(i_) > 0.0f)                                                   \
                (pick) = i_;                                                                \
    } while (0)

/* K_i: entry i's weight after temperature, top-k and top-p (0 outside). */
CO_FN float samp_kept_weight(float xi, const samp_warp *w)
{
    if (isnan(xi) || samp_key(xi) < w->kt)
        return 0.0f;
    float e = expf((xi - w->m) * w->inv_t);
    return e > 0.0f && samp_key(e) >= w->pt ? e : 0.0f;
}

/* R_i = max(0, K_i - q_i Z'). */
CO_FN float samp_resid(float k, float q, float tot) { return fmaxf(0.0f, fmaf(-q, tot, k)); }

/* Is the draft token accepted: u_acc q_x Z' < K_x. */
CO_FN int samp_accepts(float u_acc, float qx, float tot, float kx) { return u_acc * qx * tot < kx; }

/* Steps 1-4 in plain sequential C (sums in index order); 0 when the row
 * has nothing to draw from (every entry -inf or NaN). */
static inline int samp_ref_warp(const float *x, int32_t V, const samp_req *q, samp_warp *out)
{
    float m = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        m = fmaxf(m, x[i]);
    if (!(m > -INFINITY))
        return 0;
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
#undef SAMP_W
    *out = (samp_warp){m, inv_t, kt, pt};
    return 1;
}

/* Step 5 in index order over the weights K_i (q_tot == 0) or the residual
 * R_i against q (qrow, or one-hot at xt when qrow is NULL) and q_tot = Z';
 * fallback when no weight is positive. */
static inline int32_t samp_ref_walk(const float *x, int32_t V, const samp_warp *w, const float *qrow, int32_t xt,
                                    float q_tot, float u, int32_t fallback)
{
#define SAMP_R(i) (q_tot > 0.0f ? samp_resid(samp_kept_weight(x[i], w), qrow ? qrow[i] : (i) == xt ? 1.0f : 0.0f, \
                                             q_tot)                                                          \
                                : samp_kept_weight(x[i], w))
    float tot = 0.0f;
    for (int32_t i = 0; i < V; i++)
        tot += SAMP_R(i);
    float target = u * tot, run = 0.0f;
    int32_t last = -1;
    for (int32_t i = 0; i < V; i++) {
        float r = SAMP_R(i);
        if (!(r > 0.0f))
            continue;
        last = i;
        if ((run += r) > target)
            return i;
    }
#undef SAMP_R
    return last >= 0 ? last : fallback;
}

/* The rule in plain sequential C (sums in index order rather than the
 * block's tree): the reference the tests compare the device's tokens with,
 * and a stand-in device for tests of the engine. am: the row's argmax (the
 * greedy answer); qrow: a SAMP_TEST row's q (V); *accepted (may be NULL):
 * for test rows, whether x was accepted (greedy: am == x). */
static inline int32_t samp_reference_row(const float *x, int32_t V, const samp_req *q, int32_t am, const float *qrow,
                                         int *accepted)
{
    int test = q->kind == SAMP_TEST || q->kind == SAMP_TEST_CTX;
    if (accepted)
        *accepted = 0;
    samp_warp w;
    if (!(q->temperature > 0.0f) || !samp_ref_warp(x, V, q, &w)) {
        if (accepted)
            *accepted = test && am == q->x;
        return am;
    }
    if (!test)
        return samp_ref_walk(x, V, &w, NULL, -1, 0.0f, q->u, am);
    const float *qr = q->kind == SAMP_TEST ? qrow : NULL;
    float tot = 0.0f;
    for (int32_t i = 0; i < V; i++)
        tot += samp_kept_weight(x[i], &w);
    if (samp_accepts(q->u_acc, qr ? qr[q->x] : 1.0f, tot, samp_kept_weight(x[q->x], &w))) {
        if (accepted)
            *accepted = 1;
        return q->x;
    }
    return samp_ref_walk(x, V, &w, qr, q->x, tot, q->u, q->x);
}

/* A plain draw (SAMP_DRAW rows). */
static inline int32_t samp_reference(const float *x, int32_t V, const samp_req *q, int32_t am)
{
    return samp_reference_row(x, V, q, am, NULL, NULL);
}

/* The draft rule of one row: *conf, and the token (greedy: am; sampled: a
 * draw), with q_out (V; may be NULL for greedy rows) the warped
 * distribution a sampled row keeps (one-hot at am when the row has
 * nothing to draw from). */
static inline int32_t samp_draft_reference(const float *x, int32_t V, const samp_req *q, int32_t am, float *q_out,
                                           float *conf)
{
    float z = 0.0f;
    for (int32_t i = 0; i < V; i++)
        z += isnan(x[i]) ? 0.0f : expf(x[i] - x[am]);
    *conf = 1.0f / z;
    samp_warp w;
    if (!(q->temperature > 0.0f))
        return am;
    if (!samp_ref_warp(x, V, q, &w)) {
        for (int32_t i = 0; i < V; i++)
            q_out[i] = i == am ? 1.0f : 0.0f;
        return am;
    }
    float tot = 0.0f;
    for (int32_t i = 0; i < V; i++)
        tot += samp_kept_weight(x[i], &w);
    for (int32_t i = 0; i < V; i++)
        q_out[i] = samp_kept_weight(x[i], &w) / tot;
    return samp_ref_walk(x, V, &w, NULL, -1, 0.0f, q->u, am);
}

/* ---- log-probabilities ---- */

#define LP_MAX_TOP 20
#define LP_COLLECT 256

/* What one row's log-probabilities need from the device. */
typedef struct {
    float lse;                     /* log sum_i exp(x_i) */
    int32_t n_top;
    int32_t top_ids[LP_MAX_TOP];   /* the largest logits, the lower id first on ties */
    float top_logit[LP_MAX_TOP];
    float cand_logit[2];           /* x[cand[0]], x[cand[1]] (NaN for a candidate of -1) */
} lp_row;

/* Insert (xi, i) into the list (ids, xs) of n entries kept by (logit desc,
 * id asc); returns the new count (at most cap). */
CO_FN int lp_insert(int32_t *ids, float *xs, int n, int cap, int32_t i, float xi)
{
    int j = n < cap ? n : cap - 1;
    if (n == cap && !(xi > xs[cap - 1] || (xi == xs[cap - 1] && i < ids[cap - 1])))
        return n;
    while (j > 0 && (xi > xs[j - 1] || (xi == xs[j - 1] && i < ids[j - 1]))) {
        ids[j] = ids[j - 1];
        xs[j] = xs[j - 1];
        j--;
    }
    ids[j] = i;
    xs[j] = xi;
    return n < cap ? n + 1 : n;
}

/* The rule in plain sequential C (sums in index order): the reference the
 * tests compare the device with, and a stand-in device for engine tests.
 * cand: two token ids or -1. */
static inline void lp_reference_row(const float *x, int32_t V, int32_t n_top, const int32_t cand[2], lp_row *out)
{
    float m = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        m = fmaxf(m, x[i]);
    float z = 0.0f;
    for (int32_t i = 0; i < V; i++)
        z += isnan(x[i]) ? 0.0f : expf(x[i] - m);
    out->lse = m + logf(z);
    uint32_t t = 0;
    for (int bit = 31; bit >= 0 && n_top > 0; bit--) {
        uint32_t c = t | (1u << bit);
        float n = 0.0f;
        for (int32_t i = 0; i < V; i++)
            n += !isnan(x[i]) && samp_key(x[i]) >= c;
        t = samp_search_step(t, bit, n, (float)n_top);
    }
    int32_t ids[LP_MAX_TOP];
    float xs[LP_MAX_TOP];
    int n = 0, seen = 0;
    for (int32_t i = 0; i < V && n_top > 0 && seen < LP_COLLECT; i++)
        if (!isnan(x[i]) && samp_key(x[i]) >= t) {
            n = lp_insert(ids, xs, n, n_top, i, x[i]);
            seen++;
        }
    out->n_top = n;
    for (int k = 0; k < n; k++) {
        out->top_ids[k] = ids[k];
        out->top_logit[k] = xs[k];
    }
    for (int k = 0; k < 2; k++)
        out->cand_logit[k] = cand[k] >= 0 && cand[k] < V ? x[cand[k]] : NAN;
}

#endif
