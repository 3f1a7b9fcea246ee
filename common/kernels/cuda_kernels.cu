/*
 * cuda_kernels.cu - the CUDA kernels of the forward pass and of the device
 * decoding loops (everything but the matrix products, which are cuBLAS):
 * embedding lookup, RMSNorm, RoPE + KV write, attention over the KV cache
 * (any number of query tokens, each at its own position: prefill, T = 1
 * decoding, T = k + 1 verification), SwiGLU, argmax, the graph "advance"
 * step and the self-speculative acceptance step, random fills.
 *
 * Every kernel reads token ids, positions and cache locations from device
 * memory (never from launch arguments that change per step), so a decode
 * step captured in a CUDA graph stays valid as positions advance.
 *
 * Semantics follow common/model.c (the reference): RMSNorm x / sqrt(mean(x^2)
 * + eps) * w; RoPE rotating adjacent pairs (x[2i], x[2i+1]) with the same
 * cos/sin table as the CPU (computed on the host in double); causal softmax
 * attention with GQA (query head h reads KV head h / (n_heads/n_kv_heads));
 * SwiGLU g / (1 + exp(-g)) * u.
 */
#include "kernels/cuda_internal.cuh"

#include <math.h>

/* ------------------------------------------------------------------------ */

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block; every thread gets the result. red: 32 floats. */
static __device__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();               /* red may be in use by a previous call */
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

/* ------------------------------------------------------------------------ */

__global__ void k_embed(const wt *E, int dim, const int32_t *tok, float *x)
{
    int t = blockIdx.x;
    const wt *row = E + (size_t)tok[t] * dim;
    float *xt = x + (size_t)t * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        xt[i] = from_wt(row[i]);
}

void launch_embed(cudaStream_t st, const wt *E, int dim, const int32_t *tok, float *x, int T)
{
    k_embed<<<T, 256, 0, st>>>(E, dim, tok, x);
}

__global__ void k_rmsnorm(const float *x, const int32_t *map, const float *w, wt *out, int dim, float eps)
{
    __shared__ float red[32];
    int r = blockIdx.x;
    const float *xr = x + (size_t)(map ? map[r] : r) * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / dim + eps);
    wt *o = out + (size_t)r * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[i] = to_wt(xr[i] * inv * w[i]);
}

void launch_rmsnorm(cudaStream_t st, const float *x, const int32_t *map, const float *w, wt *out,
                    int rows, int dim, float eps)
{
    k_rmsnorm<<<rows, 256, 0, st>>>(x, map, w, out, dim, eps);
}

/* Cache row of (layer, position p) for sequence sq: its scratch for
 * positions >= scratch_base when it has one. */
static __device__ __forceinline__ size_t kv_off(const dev_seq &sq, int layer, int p, int kv_dim, bool *scr)
{
    if (sq.sk && p >= sq.scratch_base) {
        *scr = true;
        return ((size_t)layer * sq.scap + (p - sq.scratch_base)) * kv_dim;
    }
    *scr = false;
    return ((size_t)layer * sq.cap + p) * kv_dim;
}

__global__ void k_rope_kv(float *qkv, const float *bias, int neox, const int32_t *pos, const int32_t *seq,
                          const dev_seq *seqs, const float2 *rope, int layer, int n_heads, int n_kv_heads,
                          int head_dim, int dim, int kv_dim)
{
    int t = blockIdx.x, half = head_dim / 2;
    int qkv_w = dim + 2 * kv_dim, p = pos[t];
    float *row = qkv + (size_t)t * qkv_w;
    if (bias) {
        for (int j = threadIdx.x; j < qkv_w; j += blockDim.x)
            row[j] += bias[j];
        __syncthreads();
    }
    const float2 *cs = rope + (size_t)p * half;
    int npairs = (n_heads + n_kv_heads) * half;     /* q heads, then k heads */
    int stride = neox ? 1 : 2, other = neox ? half : 1;
    for (int j = threadIdx.x; j < npairs; j += blockDim.x) {
        int h = j / half, i = j % half;
        float *xa = row + (size_t)h * head_dim + (size_t)i * stride;   /* k heads start at dim */
        float *xb = xa + other;
        float a = *xa, b = *xb;
        float2 c = cs[i];
        *xa = a * c.x - b * c.y;
        *xb = a * c.y + b * c.x;
    }
    __syncthreads();
    const dev_seq sq = seqs[seq[t]];
    bool scr;
    size_t off = kv_off(sq, layer, p, kv_dim, &scr);
    kvt *kd = (scr ? sq.sk : sq.k) + off, *vd = (scr ? sq.sv : sq.v) + off;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kd[i] = __float2half_rn(row[dim + i]);
        vd[i] = __float2half_rn(row[dim + kv_dim + i]);
    }
}

void launch_rope_kv(cudaStream_t st, float *qkv, const float *bias, int neox, int T, const int32_t *pos,
                    const int32_t *seq, const dev_seq *seqs, const float2 *rope, int layer, int n_heads,
                    int n_kv_heads, int head_dim, int dim, int kv_dim)
{
    k_rope_kv<<<T, 256, 0, st>>>(qkv, bias, neox, pos, seq, seqs, rope, layer, n_heads, n_kv_heads, head_dim,
                                 dim, kv_dim);
}

/*
 * Attention: one block per (token, query head), ATT_WARPS warps. Warp w
 * walks keys w, w + ATT_WARPS, ... up to the token's position with an
 * online softmax (running max m, running sum l, running weighted sum of
 * values acc; lane holds elements lane + 32 j of the head). The warps'
 * partial results are merged through shared memory:
 *   M = max_w m_w,  L = sum_w l_w e^(m_w - M),  out = sum_w acc_w e^(m_w - M) / L.
 */
#define ATT_J (ATT_MAX_HD / 32)

__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attention(const float *qkv, wt *att, const int32_t *pos, const int32_t *seq, const dev_seq *seqs,
            int layer, int n_heads, int group, int head_dim, int dim, int kv_dim, float scale)
{
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAX_HD];
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int p = pos[t], kvh = h / group;
    const dev_seq sq = seqs[seq[t]];
    const float *qp = qkv + (size_t)t * (dim + 2 * kv_dim) + (size_t)h * head_dim;
    float q[ATT_J], acc[ATT_J];
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        int idx = lane + 32 * j;
        q[j] = idx < head_dim ? qp[idx] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int i = w; i <= p; i += ATT_WARPS) {
        bool scr;
        size_t off = kv_off(sq, layer, i, kv_dim, &scr) + (size_t)kvh * head_dim;
        const kvt *kr = (scr ? sq.sk : sq.k) + off, *vr = (scr ? sq.sv : sq.v) + off;
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < ATT_J; j++) {
            int idx = lane + 32 * j;
            if (idx < head_dim)
                d += q[j] * __half2float(kr[idx]);
        }
        float s = warp_sum(d) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn);        /* m = -inf on the first key: 0 */
        float e = expf(s - mn);
        l = l * corr + e;
#pragma unroll
        for (int j = 0; j < ATT_J; j++) {
            int idx = lane + 32 * j;
            if (idx < head_dim)
                acc[j] = acc[j] * corr + e * __half2float(vr[idx]);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[w] = m;
        sm_l[w] = l;
    }
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        int idx = lane + 32 * j;
        if (idx < head_dim)
            sm_acc[w][idx] = acc[j];
    }
    __syncthreads();
    float M = sm_m[0];                   /* warp 0 always saw key 0 */
    for (int k = 1; k < ATT_WARPS; k++)
        M = fmaxf(M, sm_m[k]);
    float L = 0.0f;
    for (int k = 0; k < ATT_WARPS; k++)
        L += sm_l[k] * expf(sm_m[k] - M);   /* empty warps: l = 0, e^-inf = 0 */
    wt *out = att + (size_t)t * dim + (size_t)h * head_dim;
    for (int idx = threadIdx.x; idx < head_dim; idx += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < ATT_WARPS; k++)
            if (sm_m[k] != -INFINITY)
                o += sm_acc[k][idx] * expf(sm_m[k] - M);
        out[idx] = to_wt(o / L);
    }
}

void launch_attention(cudaStream_t st, const float *qkv, wt *att, int T, const int32_t *pos,
                      const int32_t *seq, const dev_seq *seqs, int layer, int n_heads, int n_kv_heads,
                      int head_dim, int dim, int kv_dim)
{
    float scale = 1.0f / sqrtf((float)head_dim);
    k_attention<<<T * n_heads, ATT_WARPS * 32, 0, st>>>(qkv, att, pos, seq, seqs, layer, n_heads,
                                                        n_heads / n_kv_heads, head_dim, dim, kv_dim, scale);
}

__global__ void k_swiglu(const float *hb, wt *out, int H)
{
    int t = blockIdx.y;
    const float *g = hb + (size_t)t * 2 * H, *u = g + H;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x) {
        float x = g[i];
        out[(size_t)t * H + i] = to_wt(x / (1.0f + expf(-x)) * u[i]);
    }
}

void launch_swiglu(cudaStream_t st, const float *hb, wt *out, int T, int H)
{
    int bx = (H + 255) / 256;
    k_swiglu<<<dim3(bx < 64 ? bx : 64, T), 256, 0, st>>>(hb, out, H);
}

/* a better than b: larger value, or equal value and smaller index. A NaN
 * candidate loses every comparison, so NaN entries are skipped (k_argmax
 * adds the rule for a NaN at index 0). */
static __device__ __forceinline__ bool am_better(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && ai < bi);
}

/* One block per row: the index of the largest of row[0..n), ties to the
 * smaller index -- exactly sampler_argmax (decode/sampler.c), NaN included.
 * That loop starts from index 0 and moves only on `row[i] > row[best]`, so:
 * row[0] NaN -> 0 (no comparison with a NaN is true); otherwise NaN
 * entries are skipped and the first maximum of the others wins (row[0]
 * not NaN is a candidate, so a row of -inf and NaN gives 0 as well). */
__global__ void k_argmax(const float *logits, int ld, int n, int32_t *out)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *row = logits + (size_t)blockIdx.x * ld;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (am_better(row[i], i, bv, bi)) {
            bv = row[i];
            bi = i;
        }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < nw; k++)
            if (am_better(sv[k], si[k], bv, bi)) {
                bv = sv[k];
                bi = si[k];
            }
        /* row[0] NaN (all NaN included): token 0, as the CPU */
        out[blockIdx.x] = bi == 0x7fffffff || isnan(row[0]) ? 0 : bi;
    }
}

void launch_argmax(cudaStream_t st, const float *logits, int ld, int n, int rows, int32_t *out)
{
    k_argmax<<<rows, 1024, 0, st>>>(logits, ld, n, out);
}

__global__ void k_advance(const int32_t *am, int32_t *tok, int32_t *pos, int32_t *out, int32_t *count)
{
    int32_t a = am[0];
    out[*count] = a;
    *count += 1;
    tok[0] = a;
    pos[0] += 1;
}

void launch_advance(cudaStream_t st, const int32_t *am, int32_t *tok, int32_t *pos, int32_t *out,
                    int32_t *count)
{
    k_advance<<<1, 1, 0, st>>>(am, tok, pos, out, count);
}

__global__ void k_accept(const int32_t *draft, const int32_t *am, int k, int32_t *res)
{
    int n = 0;
    while (n < k && draft[n] == am[n])
        n++;
    res[0] = n;
    for (int i = 0; i <= n; i++)
        res[1 + i] = am[i];
}

void launch_accept(cudaStream_t st, const int32_t *draft, const int32_t *am, int k, int32_t *res)
{
    k_accept<<<1, 1, 0, st>>>(draft, am, k, res);
}

static __device__ __forceinline__ uint64_t splitmix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__global__ void k_fill_uniform(wt *p, size_t n, uint64_t seed, float a)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u = (float)(splitmix(seed * 0x100000001B3ull + i) >> 40) * (1.0f / 16777216.0f);
        p[i] = to_wt((2.0f * u - 1.0f) * a);
    }
}

void launch_fill_uniform(cudaStream_t st, wt *p, size_t n, uint64_t seed, float a)
{
    k_fill_uniform<<<1024, 256, 0, st>>>(p, n, seed, a);
}

__global__ void k_fill_f32(float *p, size_t n, float v)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

void launch_fill_f32(cudaStream_t st, float *p, size_t n, float v)
{
    k_fill_f32<<<64, 256, 0, st>>>(p, n, v);
}
