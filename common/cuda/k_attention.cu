/*
 * k_attention.cu - attention over the KV cache: the Q/K/V bias, RoPE and
 * the KV write of each token (k_rope_kv), and the fixed-order decode
 * attention for any number of query tokens, each at its own position
 * (prompt chunks, T = 1 steps, verification blocks, batches), split over
 * positions and merged in position order (k_attention + k_att_combine;
 * the decomposition: kernels/cuda_order.h, ported to the host in
 * tests/test_cuda_order.c). A sequence's rows are found by kv_row
 * (cuda_order.h): contiguous, paged (pool blocks) or its draft scratch.
 * Launchers: kernels.cuh.
 */
#include "cuda/kernels.cuh"
#include "cuda/reduce.cuh"

#include <math.h>

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
