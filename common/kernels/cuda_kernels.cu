/*
 * cuda_kernels.cu - the CUDA kernels of the forward pass and of the device
 * decoding loops: embedding lookup, RMSNorm, RoPE + KV write, attention
 * over the KV cache (any number of query tokens, each at its own position:
 * prefill, T = 1 decoding, T = k + 1 verification; split over positions,
 * one block per KV head and group of query heads), the fixed-order
 * projection (k_proj; cuBLAS remains for the decode loops' prefill),
 * SwiGLU, argmax, the graph "advance" step and the self-speculative
 * acceptance step, random fills.
 *
 * Exactness: every kernel computes each (token, output) from that token's
 * inputs alone, in an order that does not depend on T; for k_proj and the
 * attention that order is written down in kernels/cuda_order.h and ported
 * to the host in tests/test_cuda_order.c. None of this has run on a GPU
 * yet (no device where it was written): it compiles with nvcc, and the
 * host ports pass.
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
#include "kernels/cuda_sample.h"

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

/* Cache row of (layer, position p) for sequence sq (kv_row, cuda_order.h):
 * its scratch for positions >= scratch_base when it has one, a pool block
 * when it is paged. */
static __device__ __forceinline__ size_t kv_off(const dev_seq &sq, int layer, int p, int kv_dim, bool *scr)
{
    int s;
    size_t off = kv_row(&sq.w, layer, p, kv_dim, &s);
    *scr = s != 0;
    return off;
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
 * Decode attention, fixed order (the decomposition and why it does not
 * depend on T: cuda_order.h). Grid: x = (token, KV head, group of up to
 * ATT_MAX_GROUP query heads), y = split of span positions; a block whose
 * split starts after its token's position returns at once (the grid
 * depends only on T and the state's ctx, so a captured graph stays valid
 * as positions grow). ATT_THREADS threads:
 *   load   every thread copies 16-byte pieces of the tile's key and value
 *          rows (ATT_TILE positions of this KV head) into shared memory;
 *          the next tile's pieces are loaded into registers before the
 *          current tile is computed, so the loads overlap the arithmetic;
 *   score  thread (g = warp, i = lane): s = (q_g . k_i) * scale (att_dot
 *          order), -inf past the split's end;
 *   update warp g: tile max, e_i = exp(s_i - m_new), their butterfly sum,
 *          corr = exp(m - m_new), l = l * corr + sum; e_i to shared;
 *   values thread j owns outputs (g, d) = idx / hd, idx % hd for
 *          idx = j + ATT_THREADS * o: acc = acc * corr + sum_i e_i v_i[d]
 *          in position order.
 * Each split leaves (m, l) and acc in its slot; k_att_combine merges them.
 */
static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__global__ void __launch_bounds__(ATT_THREADS, 2)
k_attention(const float *qkv, const int32_t *pos, const int32_t *seq, const dev_seq *seqs, int layer,
            int n_heads, int n_kv_heads, int group, int n_sub, int head_dim, int dim, int kv_dim, float scale,
            int span, int n_splits, float2 *part_ml, float *part_acc)
{
    __shared__ __align__(16) kvt sk[ATT_TILE][ATT_MAX_HD + ATT_KPAD];
    __shared__ __align__(16) kvt sv[ATT_TILE][ATT_MAX_HD];
    __shared__ float sq_[ATT_MAX_GROUP][ATT_MAX_HD];
    __shared__ float sp[ATT_MAX_GROUP][ATT_TILE];
    __shared__ float scorr[ATT_MAX_GROUP];
    int bx = blockIdx.x, split = blockIdx.y;
    int t = bx / (n_kv_heads * n_sub), rem = bx % (n_kv_heads * n_sub);
    int kvh = rem / n_sub, sub = rem % n_sub;
    int h0 = kvh * group + sub * ATT_MAX_GROUP;                 /* first query head */
    int G = group - sub * ATT_MAX_GROUP < ATT_MAX_GROUP ? group - sub * ATT_MAX_GROUP : ATT_MAX_GROUP;
    int p = pos[t];
    int beg = split * span;
    if (beg > p)
        return;
    int end = beg + span - 1 < p ? beg + span - 1 : p;          /* last position of the split */
    int ntiles = (end - beg) / ATT_TILE + 1;
    int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    const dev_seq sq = seqs[seq[t]];
    const float *qrow = qkv + (size_t)t * (dim + 2 * kv_dim);
    for (int idx = tid; idx < G * head_dim; idx += ATT_THREADS)
        sq_[idx / head_dim][idx % head_dim] = qrow[(size_t)(h0 + idx / head_dim) * head_dim + idx % head_dim];
    int vpr = head_dim / 8;                                     /* 16-byte pieces per row */
    int npieces = 2 * ATT_TILE * vpr;                           /* keys, then values */
    uint4 reg[ATT_PIECES];
    /* pieces of tile tl into reg (positions past end: not loaded) */
#define ATT_LOAD(tl)                                                                        \
    do {                                                                                    \
        _Pragma("unroll") for (int u = 0; u < ATT_PIECES; u++) {                            \
            int pc = tid + u * ATT_THREADS;                                                 \
            int isv, r_, c_;                                                                \
            att_piece(pc, vpr, &isv, &r_, &c_);                                             \
            int ps = beg + (tl) * ATT_TILE + r_;                                            \
            if (pc < npieces && ps <= end) {                                                \
                bool scr;                                                                   \
                size_t off = kv_off(sq, layer, ps, kv_dim, &scr) + (size_t)kvh * head_dim;  \
                const kvt *src = (isv ? (scr ? sq.sv : sq.v) : (scr ? sq.sk : sq.k)) + off; \
                reg[u] = __ldg((const uint4 *)src + c_);                                    \
            }                                                                               \
        }                                                                                   \
    } while (0)
    ATT_LOAD(0);
    float m = -INFINITY, l = 0.0f;                              /* warp g: its head's running max, sum */
    float acc[ATT_OUTS];
#pragma unroll
    for (int o = 0; o < ATT_OUTS; o++)
        acc[o] = 0.0f;
    for (int tl = 0; tl < ntiles; tl++) {
        int t0 = beg + tl * ATT_TILE;
        int nk = end - t0 + 1 < ATT_TILE ? end - t0 + 1 : ATT_TILE;
        __syncthreads();                                        /* the previous tile is consumed */
#pragma unroll
        for (int u = 0; u < ATT_PIECES; u++) {
            int pc = tid + u * ATT_THREADS;
            int isv, r_, c_;
            att_piece(pc, vpr, &isv, &r_, &c_);
            if (pc < npieces && r_ < nk) {
                if (isv)
                    *(uint4 *)&sv[r_][c_ * 8] = reg[u];
                else   /* padded rows: 4-byte stores (the row start is 4-byte aligned only) */
                    for (int e = 0; e < 4; e++)
                        ((uint32_t *)&sk[r_][c_ * 8])[e] = ((const uint32_t *)&reg[u])[e];
            }
        }
        __syncthreads();
        if (tl + 1 < ntiles)
            ATT_LOAD(tl + 1);                                   /* in flight during this tile */
        if (w < G) {
            float s = -INFINITY;
            if (lane < nk) {
#define ATT_KF(d) __half2float(sk[lane][d])
                float dot;
                ATT_DOT_BODY(sq_[w], ATT_KF, head_dim, dot);
#undef ATT_KF
                s = dot * scale;
            }
            float mn = fmaxf(m, warp_max(s));
            float e = lane < nk ? expf(s - mn) : 0.0f;
            float corr = expf(m - mn);                          /* first tile: e^-inf = 0 */
            l = fmaf(l, corr, warp_sum(e));
            m = mn;
            sp[w][lane] = e;
            if (lane == 0)
                scorr[w] = corr;
        }
        __syncthreads();
#pragma unroll
        for (int o = 0; o < ATT_OUTS; o++) {
            int idx = tid + o * ATT_THREADS, g = idx / head_dim, d = idx % head_dim;
            if (g < G) {
#define ATT_VF(i) __half2float(sv[i][d])
                ATT_ACC_BODY(sp[g], ATT_VF, nk, acc[o], scorr[g]);
#undef ATT_VF
            }
        }
    }
#undef ATT_LOAD
    if (w < G && lane == 0)
        part_ml[att_part_slot(t, h0 + w, split, n_heads, n_splits)] = make_float2(m, l);
#pragma unroll
    for (int o = 0; o < ATT_OUTS; o++) {
        int idx = tid + o * ATT_THREADS, g = idx / head_dim, d = idx % head_dim;
        if (g < G)
            part_acc[att_part_slot(t, h0 + g, split, n_heads, n_splits) * head_dim + d] = acc[o];
    }
}

/* One block per (token, query head): the token's splits merged in order,
 *   M = max_s m_s,  L = sum_s l_s e^(m_s - M),  out = (sum_s acc_s e^(m_s - M)) / L,
 * sums over s = 0, 1, ... in that order (fmaf). */
__global__ void k_att_combine(const float2 *part_ml, const float *part_acc, wt *att, const int32_t *pos,
                              int n_heads, int head_dim, int dim, int span, int n_splits)
{
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int ns = att_nsplit(pos[t], span);
    size_t s0 = att_part_slot(t, h, 0, n_heads, n_splits);
    float M = -INFINITY;
    for (int s = 0; s < ns; s++)
        M = fmaxf(M, part_ml[s0 + s].x);
    float L = 0.0f;
    for (int s = 0; s < ns; s++)
        L = fmaf(part_ml[s0 + s].y, expf(part_ml[s0 + s].x - M), L);
    wt *out = att + (size_t)t * dim + (size_t)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < ns; s++)
            o = fmaf(part_acc[(s0 + s) * head_dim + d], expf(part_ml[s0 + s].x - M), o);
        out[d] = to_wt(o / L);
    }
}

void launch_attention(cudaStream_t st, const float *qkv, wt *att, int T, const int32_t *pos,
                      const int32_t *seq, const dev_seq *seqs, int layer, int n_heads, int n_kv_heads,
                      int head_dim, int dim, int kv_dim, float *part, int span, int n_splits)
{
    float scale = 1.0f / sqrtf((float)head_dim);
    int group = n_heads / n_kv_heads, n_sub = (group + ATT_MAX_GROUP - 1) / ATT_MAX_GROUP;
    size_t slots = (size_t)T * n_heads * n_splits;
    float2 *ml = (float2 *)part;
    float *acc = part + 2 * slots;
    k_attention<<<dim3(T * n_kv_heads * n_sub, n_splits), ATT_THREADS, 0, st>>>(
        qkv, pos, seq, seqs, layer, n_heads, n_kv_heads, group, n_sub, head_dim, dim, kv_dim, scale, span,
        n_splits, ml, acc);
    k_att_combine<<<T * n_heads, 128, 0, st>>>(ml, acc, att, pos, n_heads, head_dim, dim, span, n_splits);
}

/*
 * Fixed-order projection (cuda_order.h): Y (T, rows) = X . W^T (+ Y), one
 * block of PROJ_WARPS warps per PROJ_ROWS rows and TT tokens. Lane l reads
 * 16 bytes of each of its warp's rows per step (chunks l, l + 32, ...: a
 * warp streams 512 contiguous bytes per row per step) and reuses them for
 * the TT tokens of the tile, whose chunk it reads through the read-only
 * cache (every warp of the block reads the same X rows). At T = 1 the
 * weights stream once; up to TT tokens share each weight load.
 */
static __device__ __forceinline__ void unpack8(uint4 u, float *f)
{
    const wt *h = (const wt *)&u;
#pragma unroll
    for (int e = 0; e < PROJ_VEC; e++)
        f[e] = from_wt(h[e]);
}

template <int TT>
__global__ void __launch_bounds__(PROJ_WARPS * 32)
k_proj(const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate)
{
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r0 = blockIdx.x * PROJ_ROWS + w * PROJ_RPW;
    int t0 = blockIdx.y * TT;
    int nt = T - t0 < TT ? T - t0 : TT;
    int nchunk = cols / PROJ_VEC;
    float acc[PROJ_RPW][TT];
#pragma unroll
    for (int j = 0; j < PROJ_RPW; j++)
#pragma unroll
        for (int tt = 0; tt < TT; tt++)
            acc[j][tt] = 0.0f;
    const uint4 *Xv = (const uint4 *)(X + (size_t)t0 * cols);
    for (int c = lane; c < nchunk; c += 32) {
        float wf[PROJ_RPW][PROJ_VEC];
#pragma unroll
        for (int j = 0; j < PROJ_RPW; j++) {
            int r = r0 + j < rows ? r0 + j : rows - 1;          /* a row past the end: computed, not stored */
            unpack8(__ldg((const uint4 *)(W + (size_t)r * cols) + c), wf[j]);
        }
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            if (tt < nt) {
                float xf[PROJ_VEC];
                unpack8(__ldg(Xv + (size_t)tt * nchunk + c), xf);
#pragma unroll
                for (int j = 0; j < PROJ_RPW; j++)
                    acc[j][tt] = proj_lane_step(acc[j][tt], wf[j], xf);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < PROJ_RPW; j++)
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            float v = warp_sum(acc[j][tt]);
            int r = r0 + j;
            if (lane == 0 && r < rows && tt < nt) {
                float *y = Y + (size_t)(t0 + tt) * rows + r;
                *y = accumulate ? *y + v : v;
            }
        }
}

void launch_proj(cudaStream_t st, const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate)
{
    int tt = PROJ_TT_FOR(T);
    dim3 grid(proj_grid_x(rows), proj_grid_y(T, tt));
    switch (tt) {
    case 1: k_proj<1><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    case 4: k_proj<4><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    case 8: k_proj<8><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    default: k_proj<16><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    }
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

/* ---- sampling on the device (the rule: kernels/cuda_sample.h) ---- */

static __device__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max(v);
}

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
