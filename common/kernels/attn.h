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
 * (n_keys pointers) are caller scratch; out receives nh * hd floats
 * (consecutive heads).
 */
#define ATTN_MAX_HEAD_DIM 256
void attn_heads(const float *q, int32_t nh, int32_t hd, const attn_run *runs, int32_t n_runs, int32_t n_keys,
                float scale, float *scores, const f16_t **rows, float *out);

/* e^x for x <= 0 (softmax arguments), the kernel's own polynomial: the same
 * bits whether a lane is computed in a vector or alone (tests). */
float attn_exp(float x);

#endif
