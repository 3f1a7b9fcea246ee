/*
 * k_sample.cu - sampling on the device, the rule of kernels/cuda_sample.h
 * (top-k and top-p by a bitwise search over order-preserving keys, the
 * draw by a chunked walk both the kernels and the host port run):
 * k_sample (a row's token for a request: greedy, a draw, or the
 * speculative-sampling test of a draft token and its replacement) and
 * k_draft (a draft row's top-1 probability and token, and a sampled
 * draft's warped distribution kept in the q store).
 * Launchers: kernels.cuh.
 */
#include "cuda/kernels.cuh"
#include "cuda/reduce.cuh"

#include <math.h>

/* Steps 1-4 of the rule for row x, every thread of the block taking part;
 * 0 when the row has nothing to draw from. */
static __device__ int warp_row(const float *x, int V, const samp_req &q, samp_warp *out, float *red)
{
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        m = fmaxf(m, x[i]);            /* fmaxf passes over NaN */
    m = block_max(m, red);
    if (!(m > -INFINITY))
        return 0;
    uint32_t kt = 0;
    if (q.top_k > 0 && q.top_k < V)
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = kt | (1u << bit);
            float c = 0.0f;
            for (int i = threadIdx.x; i < V; i += blockDim.x)
                c += !isnan(x[i]) && samp_key(x[i]) >= cand;
            kt = samp_search_step(kt, bit, block_sum(c, red), (float)q.top_k);
        }
    const float inv_t = 1.0f / q.temperature;
    uint32_t pt = 0;
    if (q.top_p < 1.0f) {
        samp_warp k_only = {m, inv_t, kt, 0};
        float z = 0.0f;   /* the whole distribution's mass, as the host's top-p */
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            z += isnan(x[i]) ? 0.0f : expf((x[i] - m) * inv_t);
        z = block_sum(z, red);
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = pt | (1u << bit);
            float mass = 0.0f;
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                float w = samp_kept_weight(x[i], &k_only);
                mass += w > 0.0f && samp_key(w) >= cand ? w : 0.0f;
            }
            pt = samp_search_step(pt, bit, block_sum(mass, red), q.top_p * z);
        }
    }
    *out = samp_warp{m, inv_t, kt, pt};
    return 1;
}

/* Weights of step 5: the kept K_i, or the residual R_i against a q row (or
 * a one-hot q at xt when q is NULL) with tot = Z'. */
struct w_kept {
    const float *x;
    samp_warp w;
    __device__ float operator()(int i) const { return samp_kept_weight(x[i], &w); }
};
struct w_resid {
    w_kept k;
    const float *q;
    int xt;
    float tot;
    __device__ float operator()(int i) const
    {
        return samp_resid(k(i), q ? q[i] : i == xt ? 1.0f : 0.0f, tot);
    }
};

/* chunk[j] = the sum of the weights of chunk j (samp_chunk(V) consecutive
 * entries each, thread j's); returns their sum in chunk order, to every
 * thread. */
template <class W> static __device__ float chunk_sums(const W &wf, int V, float *chunk, float *bcast)
{
    const int C = samp_chunk(V), lo = threadIdx.x * C, hi = lo + C < V ? lo + C : V;
    float cs = 0.0f;
    for (int i = lo; i < hi; i++)
        cs += wf(i);
    __syncthreads();                   /* chunk may be in use by a previous call */
    chunk[threadIdx.x] = cs;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int j = 0; j < SAMP_THREADS; j++)
            t += chunk[j];
        *bcast = t;
    }
    __syncthreads();
    return *bcast;
}

/* Thread 0 only, after chunk_sums of the same weights: SAMP_CHUNK_WALK
 * (cuda_sample.h), -1 when no weight is positive. */
template <class W> static __device__ int chunk_walk(const W &wf, int V, const float *chunk, float tot, float u)
{
    int pick;
    SAMP_CHUNK_WALK(wf, V, chunk, tot, u, pick);
    return pick;
}

/* One block of SAMP_THREADS per output row: the token of request rq[row]
 * (greedy rows: the pass's argmax am[row]); a test row also says whether
 * its draft token was accepted (acc[row]). qs: the q store, qld floats per
 * slot. */
__global__ void __launch_bounds__(SAMP_THREADS) k_sample(const float *logits, int ld, int V, const samp_req *rq,
                                                         const int32_t *am, const float *qs, size_t qld,
                                                         int32_t *out, uint8_t *acc)
{
    __shared__ float red[32];
    __shared__ float chunk[SAMP_THREADS];
    __shared__ float bcast;
    __shared__ int accepted;
    const int r = blockIdx.x;
    const float *x = logits + (size_t)r * ld;
    const samp_req q = rq[r];
    const int test = q.kind == SAMP_TEST || q.kind == SAMP_TEST_CTX;
    samp_warp w;
    if (!(q.temperature > 0.0f) || !warp_row(x, V, q, &w, red)) {   /* the argmax rule */
        if (threadIdx.x == 0) {
            out[r] = am[r];
            acc[r] = test && am[r] == q.x;
        }
        return;
    }
    const w_kept K = {x, w};
    float tot = chunk_sums(K, V, chunk, &bcast);
    if (!test) {
        if (threadIdx.x == 0) {
            int pick = chunk_walk(K, V, chunk, tot, q.u);
            out[r] = pick >= 0 ? pick : am[r];
            acc[r] = 0;
        }
        return;
    }
    const float *qrow = q.kind == SAMP_TEST ? qs + (size_t)q.q_slot * qld : NULL;
    if (threadIdx.x == 0)
        accepted = samp_accepts(q.u_acc, qrow ? qrow[q.x] : 1.0f, tot, K(q.x));
    __syncthreads();
    if (accepted) {
        if (threadIdx.x == 0) {
            out[r] = q.x;
            acc[r] = 1;
        }
        return;
    }
    const w_resid R = {K, qrow, q.x, tot};
    float rtot = chunk_sums(R, V, chunk, &bcast);
    if (threadIdx.x == 0) {
        int pick = chunk_walk(R, V, chunk, rtot, q.u);
        out[r] = pick >= 0 ? pick : q.x;   /* no residual mass: p = q, the draft */
        acc[r] = 0;
    }
}

void launch_sample(cudaStream_t st, const float *logits, int ld, int V, int rows, const samp_req *rq,
                   const int32_t *am, const float *qs, size_t qld, int32_t *out, uint8_t *acc)
{
    k_sample<<<rows, SAMP_THREADS, 0, st>>>(logits, ld, V, rq, am, qs, qld, out, acc);
}

/* One block per draft row: conf (the top-1 probability at temperature 1)
 * and the token; a sampled row keeps q_i = K_i / Z' in slot slot[row] of
 * the q store. */
__global__ void __launch_bounds__(SAMP_THREADS) k_draft(const float *logits, int ld, int V, const samp_req *rq,
                                                        const int32_t *slot, const int32_t *am, float *qs,
                                                        size_t qld, int32_t *out, float *conf)
{
    __shared__ float red[32];
    __shared__ float chunk[SAMP_THREADS];
    __shared__ float bcast;
    const int r = blockIdx.x;
    const float *x = logits + (size_t)r * ld;
    const samp_req q = rq[r];
    const float top = x[am[r]];
    float z = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        z += isnan(x[i]) ? 0.0f : expf(x[i] - top);
    z = block_sum(z, red);
    if (threadIdx.x == 0)
        conf[r] = 1.0f / z;
    if (!(q.temperature > 0.0f)) {
        if (threadIdx.x == 0)
            out[r] = am[r];
        return;
    }
    float *qrow = qs + (size_t)slot[r] * qld;
    samp_warp w;
    if (!warp_row(x, V, q, &w, red)) {   /* one-hot at the argmax */
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            qrow[i] = i == am[r] ? 1.0f : 0.0f;
        if (threadIdx.x == 0)
            out[r] = am[r];
        return;
    }
    const w_kept K = {x, w};
    float tot = chunk_sums(K, V, chunk, &bcast);
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        qrow[i] = K(i) / tot;
    if (threadIdx.x == 0) {
        int pick = chunk_walk(K, V, chunk, tot, q.u);
        out[r] = pick >= 0 ? pick : am[r];
    }
}

void launch_draft(cudaStream_t st, const float *logits, int ld, int V, int rows, const samp_req *rq,
                  const int32_t *slot, const int32_t *am, float *qs, size_t qld, int32_t *out, float *conf)
{
    k_draft<<<rows, SAMP_THREADS, 0, st>>>(logits, ld, V, rq, slot, am, qs, qld, out, conf);
}

/* One block per output row: the row's log-sum-exp, its n_top largest
 * logits and the logits of its two candidate tokens (the lp_row rule of
 * kernels/cuda_sample.h; sums in the block's fixed tree, so a row gives
 * the same numbers whatever shares the pass). */
__global__ void __launch_bounds__(SAMP_THREADS) k_logprobs(const float *logits, int ld, int V, int n_top,
                                                           const int32_t *cand, lp_row *out)
{
    __shared__ float red[32];
    __shared__ int cnt[SAMP_THREADS];
    __shared__ int32_t col_id[LP_COLLECT];
    __shared__ float col_x[LP_COLLECT];
    __shared__ int n_col;
    const int r = blockIdx.x;
    const float *x = logits + (size_t)r * ld;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        m = fmaxf(m, x[i]);
    m = block_max(m, red);
    float z = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        z += isnan(x[i]) ? 0.0f : expf(x[i] - m);
    z = block_sum(z, red);
    uint32_t t = 0;
    for (int bit = 31; bit >= 0 && n_top > 0; bit--) {
        uint32_t c = t | (1u << bit);
        float n = 0.0f;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            n += !isnan(x[i]) && samp_key(x[i]) >= c;
        t = samp_search_step(t, bit, block_sum(n, red), (float)n_top);
    }
    /* the entries at or above the threshold, in index order: each thread
     * counts its chunk, thread 0 turns the counts into offsets */
    const int C = samp_chunk(V), lo = threadIdx.x * C, hi = lo + C < V ? lo + C : V;
    int mine = 0;
    for (int i = lo; i < hi && n_top > 0; i++)
        mine += !isnan(x[i]) && samp_key(x[i]) >= t;
    cnt[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0;
        for (int j = 0; j < SAMP_THREADS; j++) {
            int c = cnt[j];
            cnt[j] = off;
            off += c;
        }
        n_col = off < LP_COLLECT ? off : LP_COLLECT;
    }
    __syncthreads();
    for (int i = lo, at = cnt[threadIdx.x]; i < hi && at < LP_COLLECT && n_top > 0; i++)
        if (!isnan(x[i]) && samp_key(x[i]) >= t) {
            col_id[at] = i;
            col_x[at] = x[i];
            at++;
        }
    __syncthreads();
    if (threadIdx.x == 0) {
        lp_row o;
        o.lse = m + logf(z);
        int32_t ids[LP_MAX_TOP];
        float xs[LP_MAX_TOP];
        int n = 0;
        for (int k = 0; k < n_col; k++)
            n = lp_insert(ids, xs, n, n_top, col_id[k], col_x[k]);
        o.n_top = n;
        for (int k = 0; k < n; k++) {
            o.top_ids[k] = ids[k];
            o.top_logit[k] = xs[k];
        }
        for (int k = 0; k < 2; k++) {
            int c = cand[2 * r + k];
            o.cand_logit[k] = c >= 0 && c < V ? x[c] : NAN;
        }
        out[r] = o;
    }
}

void launch_logprobs(cudaStream_t st, const float *logits, int ld, int V, int rows, int n_top, const int32_t *cand,
                     lp_row *out)
{
    k_logprobs<<<rows, SAMP_THREADS, 0, st>>>(logits, ld, V, n_top, cand, out);
}
