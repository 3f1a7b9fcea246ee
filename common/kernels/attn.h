/*
 * attn.h - scaled dot-product attention of one token's query heads that
 * share one key/value head (grouped-query attention), over keys and values
 * stored as half-precision rows in runs of contiguous memory.
 *
 * The caller (the model's forward pass) knows where the cache keeps each
 * position (one array, pool blocks, a draft scratch) and hands the kernel
 * the positions 0..n_keys-1 as runs; the kernel knows nothing of caches.
 *
 * Exactness: every head's result is a function of its query and the key and
 * value rows alone. The arithmetic is the same whatever the run boundaries
 * (a contiguous cache or paged blocks), however many heads one call takes,
 * and whatever else is in the batch: each score is one fixed-order dot
 * product, the softmax sums in index order, and values are accumulated in
 * index order. So a token's attention output does not depend on its batch.
 */
#ifndef SELFSPEC_ATTN_H
#define SELFSPEC_ATTN_H

#include <stdint.h>
#include "kernels/f16.h"

/* n consecutive positions: key row i at k + i * stride, value row at v + i * stride */
typedef struct {
    const f16_t *k, *v;
    int32_t n, stride;
} attn_run;

/*
 * out[h] = softmax(scale * q[h] . K^T) . V for the nh heads q[h] = q + h*hd
 * (consecutive, as in the projection's output), over the keys in runs
 * (n_runs of them, n_keys rows in all, n_keys >= 1). hd is a multiple of 16
 * and at most ATTN_MAX_HEAD_DIM. scores (nh * n_keys floats) and rows
 * (2 * n_keys pointers) are caller scratch; out receives nh * hd floats
 * (consecutive heads). One token's call of attn_block.
 */
#define ATTN_MAX_HEAD_DIM 256
void attn_heads(const float *q, int32_t nh, int32_t hd, const attn_run *runs, int32_t n_runs, int32_t n_keys,
                float scale, float *scores, const f16_t **rows, float *out);

/* The queries of one attn_block call: nt tokens times nh heads of one KV
 * head's group. Query (i, h) is q + i * q_stride + h * hd, its output goes to
 * out + i * out_stride + h * hd, and token i sees the call's keys
 * lo[i] .. hi[i] - 1 (0 <= lo[i] < hi[i] <= n_keys): the causal prefix of a
 * verification block or prompt chunk, cut to a local layer's window. */
typedef struct {
    const float *q;
    float *out;
    int32_t q_stride, out_stride;
    int32_t nt, nh;
    const int32_t *lo, *hi;   /* (nt) */
} attn_queries;

/*
 * attn_heads for several tokens of one sequence at once: each key and value
 * row is read and widened from half precision once for up to four queries
 * (AVX-512 builds) instead of once per query. Every query's result is
 * bit-identical to its own attn_heads call over keys lo..hi-1: the same
 * fused multiply-add chain per score, the same softmax and the same
 * value sum in index order. scores holds nt * nh * n_keys floats, rows
 * 2 * n_keys pointers.
 */
void attn_block(const attn_queries *qs, int32_t hd, const attn_run *runs, int32_t n_runs, int32_t n_keys,
                float scale, float *scores, const f16_t **rows);

/* e^x for x <= 0 (softmax arguments), the kernel's own polynomial: the same
 * bits whether a lane is computed in a vector or alone (tests). */
float attn_exp(float x);

#endif
