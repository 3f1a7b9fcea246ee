/*
 * test_cuda_order.c - host ports of the CUDA backend's fixed-order kernels
 * (k_proj in common/cuda/k_proj.cu, k_attention + k_att_combine in
 * common/cuda/k_attention.cu),
 * run on every machine: no GPU, no CUDA needed.
 *
 * Each port walks the kernel's grid, warps and lanes in plain C and does
 * the device's float operations in the device's order: the same constants
 * and helpers from kernels/cuda_order.h (proj_lane_step, ATT_DOT_BODY,
 * ATT_ACC_BODY, att_piece, att_span, att_part_slot), the xor butterflies of
 * warp_sum / warp_max lane by lane, explicit fmaf where the kernels have
 * fmaf. What the port cannot copy is the device's expf (the host libm's is
 * used): the attention port shows the order and the index math, not the
 * device's exponential's last bit. Asserted:
 *   (a) a token's projection row is bit-identical for T = 1, T = k + 1,
 *       T = 64, T = 256 and T = 1000, wherever the token sits in the pass, and for
 *       every token-tile size (PROJ_TT_FOR may change without changing a
 *       bit); the residual form (accumulate) adds the same bits;
 *   (b) both ports agree with a float64 reference within a stated bound;
 *   (c) attention: every token's output is bit-identical alone and in
 *       batches of 5 and 64 tokens from several sequences (one with a
 *       scratch cache), over contexts cut into several splits (span 256 and
 *       span 576), with groups of 1, 6 and 20 query heads per KV head
 *       (20: three blocks of 8, 8 and 4 heads).
 * Plus the index math itself: the tile loads cover each (key/value, row,
 * chunk) once; split slots are distinct and in range; the split count stays
 * within ATT_MAX_SPLITS for every context.
 *
 * This is the whole verification the kernels have had: they compile with
 * nvcc here, but have never run on a GPU (tests/test_cuda.c does that where
 * one exists).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decode/sampler.h"
#include "kernels/cuda_order.h"
#include "kernels/cuda_sample.h"
#include "kernels/f16.h"

/* ---- helpers ---- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static float rng_uniform(uint64_t *s, float a)
{
    return ((float)(rng_next(s) >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a;
}

static void fill_f16(f16_t *p, size_t n, uint64_t seed, float a)
{
    for (size_t i = 0; i < n; i++)
        p[i] = f16_from_f32(rng_uniform(&seed, a));
}

static float h2f(f16_t h) { return f16_to_f32(h); }

/* warp_sum: for o = 16, 8, 4, 2, 1 every lane adds its xor partner's value.
 * Also checks that all lanes end with the same bits (a + b == b + a). */
static float port_warp_sum(const float *lanes)
{
    float v[32], n[32];
    memcpy(v, lanes, sizeof v);
    for (int o = 16; o > 0; o >>= 1) {
        for (int l = 0; l < 32; l++)
            n[l] = v[l] + v[l ^ o];
        memcpy(v, n, sizeof v);
    }
    for (int l = 1; l < 32; l++)
        assert_memory_equal(&v[l], &v[0], sizeof(float));
    return v[0];
}

static float port_warp_max(const float *lanes)
{
    float v[32], n[32];
    memcpy(v, lanes, sizeof v);
    for (int o = 16; o > 0; o >>= 1) {
        for (int l = 0; l < 32; l++)
            n[l] = fmaxf(v[l], v[l ^ o]);
        memcpy(v, n, sizeof v);
    }
    return v[0];
}

/* ---- k_proj ---- */

/* Y (T, rows) = X (T, cols) . W^T (+ Y), as k_proj<TT> over its whole grid. */
static void port_proj(const f16_t *W, int rows, int cols, const f16_t *X, int T, float *Y, int accumulate, int TT)
{
    enum { TTMAX = 16 };
    assert_true(TT >= 1 && TT <= TTMAX);
    int nchunk = cols / PROJ_VEC;
    for (int bx = 0; bx < proj_grid_x(rows); bx++)
        for (int by = 0; by < proj_grid_y(T, TT); by++)
            for (int w = 0; w < PROJ_WARPS; w++) {
                int r0 = bx * PROJ_ROWS + w * PROJ_RPW, t0 = by * TT;
                int nt = T - t0 < TT ? T - t0 : TT;
                static float acc[32][PROJ_RPW][TTMAX];
                memset(acc, 0, sizeof acc);
                for (int lane = 0; lane < 32; lane++)
                    for (int c = lane; c < nchunk; c += 32) {
                        float wf[PROJ_RPW][PROJ_VEC];
                        for (int j = 0; j < PROJ_RPW; j++) {
                            int r = r0 + j < rows ? r0 + j : rows - 1;
                            for (int e = 0; e < PROJ_VEC; e++)
                                wf[j][e] = h2f(W[(size_t)r * cols + (size_t)c * PROJ_VEC + e]);
                        }
                        for (int tt = 0; tt < TT; tt++) {
                            if (tt >= nt)
                                continue;
                            float xf[PROJ_VEC];
                            for (int e = 0; e < PROJ_VEC; e++)
                                xf[e] = h2f(X[(size_t)(t0 + tt) * cols + (size_t)c * PROJ_VEC + e]);
                            for (int j = 0; j < PROJ_RPW; j++)
                                acc[lane][j][tt] = proj_lane_step(acc[lane][j][tt], wf[j], xf);
                        }
                    }
                for (int j = 0; j < PROJ_RPW; j++)
                    for (int tt = 0; tt < TT; tt++) {
                        float lanes[32];
                        for (int l = 0; l < 32; l++)
                            lanes[l] = acc[l][j][tt];
                        float v = port_warp_sum(lanes);
                        int r = r0 + j;
                        if (r < rows && tt < nt) {
                            float *y = Y + (size_t)(t0 + tt) * rows + r;
                            *y = accumulate ? *y + v : v;
                        }
                    }
            }
}

static void check_proj_shape(int rows, int cols, uint64_t seed)
{
    enum { NTOK = 256, TMAX = 1000 };
    assert_int_equal(cols % PROJ_VEC, 0);
    f16_t *W = malloc((size_t)rows * cols * sizeof *W), *X = malloc((size_t)NTOK * cols * sizeof *X);
    f16_t *Xb = malloc((size_t)TMAX * cols * sizeof *Xb);
    float *Y1 = malloc((size_t)NTOK * rows * sizeof *Y1), *Yb = malloc((size_t)TMAX * rows * sizeof *Yb);
    float *Y0 = malloc((size_t)TMAX * rows * sizeof *Y0);
    fill_f16(W, (size_t)rows * cols, seed, sqrtf(3.0f / cols));
    fill_f16(X, (size_t)NTOK * cols, seed + 1, 1.0f);
    /* every token alone: the reference bits */
    for (int t = 0; t < NTOK; t++)
        port_proj(W, rows, cols, X + (size_t)t * cols, 1, Y1 + (size_t)t * rows, 0, PROJ_TT_FOR(1));
    /* (b) against float64: each lane sums cols / 256 chunks of 8 (one
     * rounding per term), then 5 butterfly levels; the classical bound
     * gamma_n * sum |w x| with n = cols / 32 + 5 terms on any path */
    double worst = 0.0;
    for (int t = 0; t < NTOK; t++)
        for (int r = 0; r < rows; r++) {
            double ref = 0.0, mag = 0.0;
            for (int i = 0; i < cols; i++) {
                double p = (double)h2f(W[(size_t)r * cols + i]) * h2f(X[(size_t)t * cols + i]);
                ref += p;
                mag += fabs(p);
            }
            double n = cols / 32.0 + 6.0, u = ldexp(1.0, -24);
            double bound = n * u / (1.0 - n * u) * mag + 1e-30;
            double d = fabs(Y1[(size_t)t * rows + r] - ref);
            if (d > bound)
                fail_msg("proj %dx%d: token %d row %d: |%.9g - %.9g| = %g > bound %g", rows, cols, t, r,
                         Y1[(size_t)t * rows + r], ref, d, bound);
            if (d / bound > worst)
                worst = d / bound;
        }
    /* power: a different order (one sequential fmaf chain, as a kernel that
     * gave each (token, row) a thread would) changes some bits, so the
     * equalities below test the order and are not true of any order */
    int differ = 0;
    for (int t = 0; t < NTOK && cols >= 512; t++)
        for (int r = 0; r < rows; r++) {
            float q = 0.0f;
            for (int i = 0; i < cols; i++)
                q = fmaf(h2f(W[(size_t)r * cols + i]), h2f(X[(size_t)t * cols + i]), q);
            differ += memcmp(&q, &Y1[(size_t)t * rows + r], sizeof q) != 0;
        }
    if (cols >= 512)
        assert_true(differ > 0);
    /* (a) passes of T tokens, starting anywhere, every tile size */
    static const int Ts[] = {1, 2, 5, 9, 17, 64, 256, TMAX};
    static const int tiles[] = {1, 4, 8, 16};
    uint64_t st = seed * 7 + 3;
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof tiles / sizeof tiles[0]; b++) {
            int T = Ts[a], TT = tiles[b], start = (int)(rng_next(&st) % NTOK);
            for (int j = 0; j < T; j++)
                memcpy(Xb + (size_t)j * cols, X + (size_t)((start + j) % NTOK) * cols, (size_t)cols * sizeof *X);
            for (size_t i = 0; i < (size_t)T * rows; i++)
                Yb[i] = Y0[i] = rng_uniform(&st, 4.0f);
            int acc = (int)(b & 1);          /* both forms */
            port_proj(W, rows, cols, Xb, T, Yb, acc, TT);
            for (int j = 0; j < T; j++) {
                const float *want = Y1 + (size_t)((start + j) % NTOK) * rows;
                for (int r = 0; r < rows; r++) {
                    float w = acc ? Y0[(size_t)j * rows + r] + want[r] : want[r];
                    if (memcmp(&w, &Yb[(size_t)j * rows + r], sizeof w) != 0)
                        fail_msg("proj %dx%d: T %d tile %d accumulate %d: token at %d row %d: %.9g, alone %.9g",
                                 rows, cols, T, TT, acc, j, r, Yb[(size_t)j * rows + r], w);
                }
            }
        }
    printf("  proj %dx%d: bit-identical for T in 1..1000, any place and tile; worst error %.3f of the bound; "
           "a sequential order differs in %d of %d outputs\n",
           rows, cols, worst, differ, cols >= 512 ? NTOK * rows : 0);
    free(W);
    free(X);
    free(Xb);
    free(Y1);
    free(Yb);
    free(Y0);
}

static void test_proj_order(void **state)
{
    (void)state;
    check_proj_shape(37, 64, 1);     /* fewer chunks (8) than lanes; rows not a multiple of 8 */
    check_proj_shape(64, 520, 2);    /* 65 chunks: lanes with 3 and with 2 */
    check_proj_shape(19, 2048, 3);   /* 8 chunks per lane */
    check_proj_shape(9, 8, 4);       /* one chunk */
}

/* ---- k_attention + k_att_combine ---- */

/* dev_seq of cuda/cuda_common.cuh: the pointers, and the device's own row
 * rule (kv_where, kv_row of cuda_order.h). */
typedef struct {
    const f16_t *k, *v, *sk, *sv;
    kv_where w;
} port_seq;

static size_t port_kv_off(const port_seq *sq, int layer, int p, int kv_dim, int *scr)
{
    return kv_row(&sq->w, layer, p, kv_dim, scr);
}

typedef struct {
    int n_heads, n_kv_heads, head_dim, dim, kv_dim, ctx, layer;
} att_shape;

/* k_attention over its whole grid, then k_att_combine; out (T, dim) is
 * the float each output takes before its rounding to wt. */
static void port_attention(const att_shape *a, const float *qkv, int T, const int *pos, const int *seq,
                           const port_seq *seqs, float *out)
{
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    int n_sub = (group + ATT_MAX_GROUP - 1) / ATT_MAX_GROUP;
    int span = att_span(a->ctx), S = att_splits(a->ctx, span);
    float scale = 1.0f / sqrtf((float)hd);
    size_t slots = (size_t)T * a->n_heads * S;
    float *ml = malloc(2 * slots * sizeof(float)), *pacc = malloc(slots * hd * sizeof(float));
    /* poison: a slot the combine reads but no block wrote shows up */
    for (size_t i = 0; i < 2 * slots; i++)
        ml[i] = NAN;
    for (size_t i = 0; i < slots * hd; i++)
        pacc[i] = NAN;
    int vpr = hd / 8, npieces = 2 * ATT_TILE * vpr;
    static float sk[ATT_TILE][ATT_MAX_HD], sv[ATT_TILE][ATT_MAX_HD], sq_[ATT_MAX_GROUP][ATT_MAX_HD];
    static float sp[ATT_MAX_GROUP][ATT_TILE], scorr[ATT_MAX_GROUP];
    static float acc[ATT_THREADS][ATT_OUTS];
    for (int bx = 0; bx < T * a->n_kv_heads * n_sub; bx++)
        for (int split = 0; split < S; split++) {
            int t = bx / (a->n_kv_heads * n_sub), rem = bx % (a->n_kv_heads * n_sub);
            int kvh = rem / n_sub, sub = rem % n_sub;
            int h0 = kvh * group + sub * ATT_MAX_GROUP;
            int G = group - sub * ATT_MAX_GROUP < ATT_MAX_GROUP ? group - sub * ATT_MAX_GROUP : ATT_MAX_GROUP;
            int p = pos[t], beg = split * span;
            if (beg > p)
                continue;
            int end = beg + span - 1 < p ? beg + span - 1 : p;
            int ntiles = (end - beg) / ATT_TILE + 1;
            const port_seq *sq = &seqs[seq[t]];
            const float *qrow = qkv + (size_t)t * (a->dim + 2 * a->kv_dim);
            for (int idx = 0; idx < G * hd; idx++)
                sq_[idx / hd][idx % hd] = qrow[(size_t)(h0 + idx / hd) * hd + idx % hd];
            float m[ATT_MAX_GROUP], l[ATT_MAX_GROUP];
            for (int g = 0; g < ATT_MAX_GROUP; g++) {
                m[g] = -INFINITY;
                l[g] = 0.0f;
            }
            memset(acc, 0, sizeof acc);
            for (int tl = 0; tl < ntiles; tl++) {
                int t0 = beg + tl * ATT_TILE;
                int nk = end - t0 + 1 < ATT_TILE ? end - t0 + 1 : ATT_TILE;
                /* the loads, piece by piece as the threads make them */
                static int seen[2][ATT_TILE][ATT_MAX_HD / 8];
                memset(seen, 0, sizeof seen);
                for (int tid = 0; tid < ATT_THREADS; tid++)
                    for (int u = 0; u < ATT_PIECES; u++) {
                        int pc = tid + u * ATT_THREADS, isv, r, c;
                        att_piece(pc, vpr, &isv, &r, &c);
                        if (pc >= npieces || r >= nk)
                            continue;
                        seen[isv][r][c]++;
                        int scr;
                        size_t off = port_kv_off(sq, a->layer, t0 + r, a->kv_dim, &scr) + (size_t)kvh * hd;
                        const f16_t *src = (isv ? (scr ? sq->sv : sq->v) : (scr ? sq->sk : sq->k)) + off;
                        for (int e = 0; e < 8; e++)
                            (isv ? sv : sk)[r][c * 8 + e] = h2f(src[c * 8 + e]);
                    }
                for (int isv = 0; isv < 2; isv++)
                    for (int r = 0; r < nk; r++)
                        for (int c = 0; c < vpr; c++)
                            assert_int_equal(seen[isv][r][c], 1);
                for (int g = 0; g < G; g++) {     /* warp g */
                    float s[32], e[32];
                    for (int lane = 0; lane < 32; lane++) {
                        s[lane] = -INFINITY;
                        if (lane < nk) {
#define PORT_KF(d) sk[lane][d]
                            float dot;
                            ATT_DOT_BODY(sq_[g], PORT_KF, hd, dot);
#undef PORT_KF
                            s[lane] = dot * scale;
                        }
                    }
                    float mn = fmaxf(m[g], port_warp_max(s));
                    for (int lane = 0; lane < 32; lane++)
                        e[lane] = lane < nk ? expf(s[lane] - mn) : 0.0f;
                    float corr = expf(m[g] - mn);
                    l[g] = fmaf(l[g], corr, port_warp_sum(e));
                    m[g] = mn;
                    memcpy(sp[g], e, sizeof e);
                    scorr[g] = corr;
                }
                for (int tid = 0; tid < ATT_THREADS; tid++)
                    for (int o = 0; o < ATT_OUTS; o++) {
                        int idx = tid + o * ATT_THREADS, g = idx / hd, d = idx % hd;
                        if (g < G) {
#define PORT_VF(i) sv[i][d]
                            ATT_ACC_BODY(sp[g], PORT_VF, nk, acc[tid][o], scorr[g]);
#undef PORT_VF
                        }
                    }
            }
            for (int g = 0; g < G; g++) {
                size_t sl = att_part_slot(t, h0 + g, split, a->n_heads, S);
                assert_true(sl < slots);
                ml[2 * sl] = m[g];
                ml[2 * sl + 1] = l[g];
            }
            for (int tid = 0; tid < ATT_THREADS; tid++)
                for (int o = 0; o < ATT_OUTS; o++) {
                    int idx = tid + o * ATT_THREADS, g = idx / hd, d = idx % hd;
                    if (g < G)
                        pacc[att_part_slot(t, h0 + g, split, a->n_heads, S) * hd + d] = acc[tid][o];
                }
        }
    /* k_att_combine */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < a->n_heads; h++) {
            int ns = att_nsplit(pos[t], span);
            size_t s0 = att_part_slot(t, h, 0, a->n_heads, S);
            float M = -INFINITY, L = 0.0f;
            for (int s = 0; s < ns; s++)
                M = fmaxf(M, ml[2 * (s0 + s)]);
            for (int s = 0; s < ns; s++)
                L = fmaf(ml[2 * (s0 + s) + 1], expf(ml[2 * (s0 + s)] - M), L);
            for (int d = 0; d < hd; d++) {
                float o = 0.0f;
                for (int s = 0; s < ns; s++)
                    o = fmaf(pacc[(s0 + s) * hd + d], expf(ml[2 * (s0 + s)] - M), o);
                out[(size_t)t * a->dim + (size_t)h * hd + d] = o / L;
            }
        }
    free(ml);
    free(pacc);
}

/* float64 softmax attention of one token (its cached rows as halves). */
static void ref_attention(const att_shape *a, const float *qrow, int p, const port_seq *sq, double *out)
{
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    double *w = malloc((size_t)(p + 1) * sizeof(double));
    for (int h = 0; h < a->n_heads; h++) {
        int kvh = h / group;
        double mx = -INFINITY, sum = 0.0;
        for (int i = 0; i <= p; i++) {
            int scr;
            size_t off = port_kv_off(sq, a->layer, i, a->kv_dim, &scr) + (size_t)kvh * hd;
            const f16_t *k = (scr ? sq->sk : sq->k) + off;
            double d = 0.0;
            for (int j = 0; j < hd; j++)
                d += (double)qrow[h * hd + j] * h2f(k[j]);
            w[i] = d / sqrt((double)hd);
            mx = w[i] > mx ? w[i] : mx;
        }
        for (int i = 0; i <= p; i++) {
            w[i] = exp(w[i] - mx);
            sum += w[i];
        }
        for (int j = 0; j < hd; j++) {
            double o = 0.0;
            for (int i = 0; i <= p; i++) {
                int scr;
                size_t off = port_kv_off(sq, a->layer, i, a->kv_dim, &scr) + (size_t)kvh * hd;
                o += w[i] * h2f(((scr ? sq->sv : sq->v) + off)[j]);
            }
            out[h * hd + j] = o / sum;
        }
    }
    free(w);
}

static void check_attention(att_shape a, uint64_t seed)
{
    enum { NSEQ = 3, NTOK = 64 };
    a.dim = a.n_heads * a.head_dim;
    a.kv_dim = a.n_kv_heads * a.head_dim;
    a.layer = 1;
    int layers = 2, qkv_w = a.dim + 2 * a.kv_dim, scap = 40;
    int span = att_span(a.ctx);
    /* three sequences over the whole context; the last has a scratch cache
     * for positions >= ctx - scap (a draft's) */
    f16_t *kvbuf[NSEQ][4];
    port_seq seqs[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        size_t n = (size_t)layers * a.ctx * a.kv_dim, ns = (size_t)layers * scap * a.kv_dim;
        for (int j = 0; j < 4; j++) {
            size_t cnt = j < 2 ? n : ns;
            kvbuf[i][j] = malloc(cnt * sizeof(f16_t));
            fill_f16(kvbuf[i][j], cnt, seed * 31 + (uint64_t)(i * 4 + j), j & 1 ? 1.0f : 2.0f);
        }
        seqs[i] = (port_seq){kvbuf[i][0], kvbuf[i][1], NULL, NULL, {.cap = a.ctx, .n_layers = layers}};
        if (i == NSEQ - 1) {
            seqs[i].sk = kvbuf[i][2];
            seqs[i].sv = kvbuf[i][3];
            seqs[i].w.scap = scap;
            seqs[i].w.scratch_base = a.ctx - scap;
        }
    }
    /* the same rows in a paged pool, (n_blocks, layers, CO_KV_BLOCK,
     * kv_dim), the sequences' blocks interleaved in a shuffled order */
    int nbs = (a.ctx + CO_KV_BLOCK - 1) / CO_KV_BLOCK, npool = NSEQ * nbs;
    size_t bstride = (size_t)layers * CO_KV_BLOCK * a.kv_dim;
    f16_t *pk = calloc((size_t)npool * bstride, sizeof(f16_t)), *pv = calloc((size_t)npool * bstride, sizeof(f16_t));
    int32_t *bt = malloc((size_t)npool * sizeof(int32_t));
    uint64_t bst = seed ^ 0x9e37;
    for (int j = 0; j < npool; j++)
        bt[j] = j;
    for (int j = npool - 1; j > 0; j--) {
        int r = (int)(rng_next(&bst) % (uint64_t)(j + 1)), x = bt[j];
        bt[j] = bt[r];
        bt[r] = x;
    }
    port_seq pseqs[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        pseqs[i] = seqs[i];
        pseqs[i].k = pk;
        pseqs[i].v = pv;
        pseqs[i].w.bt = bt + (size_t)i * nbs;
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < a.ctx; p++) {
                int scr;
                size_t to = port_kv_off(&pseqs[i], l, p, a.kv_dim, &scr);
                size_t from = ((size_t)l * a.ctx + p) * a.kv_dim;
                if (scr)
                    continue;   /* that row is read from the scratch */
                assert_true(to + a.kv_dim <= (size_t)npool * bstride);
                memcpy(pk + to, seqs[i].k + from, (size_t)a.kv_dim * sizeof(f16_t));
                memcpy(pv + to, seqs[i].v + from, (size_t)a.kv_dim * sizeof(f16_t));
            }
    }
    /* NTOK tokens: positions spread over the context (split edges among
     * them), queries of order 1 */
    int tpos[NTOK], tseq[NTOK];
    float *tq = malloc((size_t)NTOK * qkv_w * sizeof(float));
    uint64_t st = seed;
    assert_int_equal(5 % NSEQ, NSEQ - 1);
    for (int t = 0; t < NTOK; t++) {
        tseq[t] = t % NSEQ;
        int r = (int)(rng_next(&st) % (uint64_t)a.ctx);
        /* edges: the first position, the last, both sides of the first
         * split edge, the second edge, and (t = 5: the sequence with a
         * scratch cache) positions read from the scratch */
        tpos[t] = t == 0 ? 0 : t == 1 ? a.ctx - 1 : t == 2 ? span - 1 : t == 3 ? span : t == 4 ? 2 * span
                : t == 5 ? a.ctx - 3 : r;
        for (int j = 0; j < qkv_w; j++)
            tq[(size_t)t * qkv_w + j] = rng_uniform(&st, 1.5f);
    }
    /* alone */
    float *o1 = malloc((size_t)NTOK * a.dim * sizeof(float));
    for (int t = 0; t < NTOK; t++)
        port_attention(&a, tq + (size_t)t * qkv_w, 1, &tpos[t], &tseq[t], seqs, o1 + (size_t)t * a.dim);
    /* (b) float64 reference: the error of fp32 softmax sums and expf stays
     * far below 1e-4 of the values' magnitude (1) */
    double *ref = malloc((size_t)a.dim * sizeof(double)), worst = 0.0;
    for (int t = 0; t < NTOK; t++) {
        ref_attention(&a, tq + (size_t)t * qkv_w, tpos[t], &seqs[tseq[t]], ref);
        for (int j = 0; j < a.dim; j++) {
            double d = fabs(o1[(size_t)t * a.dim + j] - ref[j]);
            worst = d > worst ? d : worst;
            if (!(d <= 1e-4))
                fail_msg("attention: token %d (pos %d) element %d: %.8g vs float64 %.8g", t, tpos[t], j,
                         o1[(size_t)t * a.dim + j], ref[j]);
        }
    }
    /* (c) batches of 5 (a verification block of k = 4) and of 64, in a
     * shuffled order */
    static const int Ts[] = {5, 64};
    float *qb = malloc((size_t)NTOK * qkv_w * sizeof(float)), *ob = malloc((size_t)NTOK * a.dim * sizeof(float));
    for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
        for (int rep = 0; rep < 2; rep++) {
            int T = Ts[k], pick[NTOK], bpos[NTOK], bseq[NTOK];
            for (int j = 0; j < NTOK; j++)
                pick[j] = j;
            for (int j = NTOK - 1; j > 0; j--) {
                int r = (int)(rng_next(&st) % (uint64_t)(j + 1)), x = pick[j];
                pick[j] = pick[r];
                pick[r] = x;
            }
            for (int j = 0; j < T; j++) {
                memcpy(qb + (size_t)j * qkv_w, tq + (size_t)pick[j] * qkv_w, (size_t)qkv_w * sizeof(float));
                bpos[j] = tpos[pick[j]];
                bseq[j] = tseq[pick[j]];
            }
            port_attention(&a, qb, T, bpos, bseq, seqs, ob);
            for (int j = 0; j < T; j++)
                if (memcmp(ob + (size_t)j * a.dim, o1 + (size_t)pick[j] * a.dim, (size_t)a.dim * sizeof(float)))
                    fail_msg("attention: token %d (pos %d) differs in a batch of %d at %d", pick[j], tpos[pick[j]], T,
                             j);
        }
    /* (d) the paged layout: the same bits as the contiguous caches */
    port_attention(&a, tq, NTOK, tpos, tseq, pseqs, ob);
    for (int t = 0; t < NTOK; t++)
        if (memcmp(ob + (size_t)t * a.dim, o1 + (size_t)t * a.dim, (size_t)a.dim * sizeof(float)))
            fail_msg("attention: token %d (pos %d) differs over a paged cache", t, tpos[t]);
    free(pk);
    free(pv);
    free(bt);
    printf("  attention %d:%d heads x %d, ctx %d (span %d, %d splits): bit-identical alone, in batches of 5 "
           "and 64 and over a paged cache; max |err| vs float64 %.2g\n",
           a.n_heads, a.n_kv_heads, a.head_dim, a.ctx, span, att_splits(a.ctx, span), worst);
    for (int i = 0; i < NSEQ; i++)
        for (int j = 0; j < 4; j++)
            free(kvbuf[i][j]);
    free(tq);
    free(o1);
    free(ref);
    free(qb);
    free(ob);
}

static void test_attention_order(void **state)
{
    (void)state;
    check_attention((att_shape){.n_heads = 12, .n_kv_heads = 2, .head_dim = 32, .ctx = 1000}, 5);
    check_attention((att_shape){.n_heads = 20, .n_kv_heads = 1, .head_dim = 16, .ctx = 700}, 6);
    check_attention((att_shape){.n_heads = 2, .n_kv_heads = 2, .head_dim = 64, .ctx = 9000}, 7);
}

/* The index math alone: constants that the kernels rely on, the split
 * count bound, slots distinct. */
static void test_order_constants(void **state)
{
    (void)state;
    assert_int_equal(ATT_TILE, 32);                           /* one position per lane */
    assert_int_equal(ATT_MAX_GROUP * 32, ATT_THREADS);        /* one warp per query head */
    assert_true(ATT_OUTS * ATT_THREADS >= ATT_MAX_GROUP * ATT_MAX_HD);
    assert_true(ATT_PIECES * ATT_THREADS * 8 >= 2 * ATT_TILE * ATT_MAX_HD);
    assert_int_equal(ATT_MAX_HD % 8, 0);
    assert_int_equal(ATT_DOT_ILP, 4);                         /* ATT_DOT_BODY's final sum */
    assert_int_equal(PROJ_VEC, 8);                            /* one uint4 of fp16 */
    for (int T = 1; T <= PROJ_T_MAX; T++) {
        int tt = PROJ_TT_FOR(T);
        assert_true(tt == 1 || tt == 4 || tt == 8 || tt == 16);
        assert_true(proj_grid_y(T, tt) * tt >= T);
    }
    for (int ctx = 1; ctx <= (1 << 20); ctx = ctx * 3 / 2 + 1) {
        int span = att_span(ctx), S = att_splits(ctx, span);
        assert_true(span >= ATT_SPAN_MIN && span % ATT_TILE == 0);
        assert_true(S >= 1 && S <= ATT_MAX_SPLITS);
        assert_true(att_nsplit(ctx - 1, span) == S);
    }
    int n_heads = 7, S = 5, T = 9;
    char *used = calloc((size_t)T * n_heads * S, 1);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++)
            for (int s = 0; s < S; s++) {
                size_t sl = att_part_slot(t, h, s, n_heads, S);
                assert_true(sl < (size_t)T * n_heads * S);
                assert_int_equal(used[sl], 0);
                used[sl] = 1;
            }
    free(used);
}

/* k_sample's row on the host: the warp of steps 1-4 (sequential sums where
 * the block uses its tree), then the kernel's own chunking: thread j's
 * chunk summed in index order, the chunk sums added in chunk order, and
 * SAMP_CHUNK_WALK, the text the kernel runs. */
static float port_chunk[SAMP_THREADS];
#define PORT_CHUNK_SUMS(W, V, tot)                                   \
    do {                                                             \
        int C_ = samp_chunk(V);                                      \
        (tot) = 0.0f;                                                \
        for (int j_ = 0; j_ < SAMP_THREADS; j_++) {                  \
            float cs_ = 0.0f;                                        \
            for (int i_ = j_ * C_; i_ < (j_ + 1) * C_ && i_ < (V); i_++) \
                cs_ += W(i_);                                        \
            port_chunk[j_] = cs_;                                    \
        }                                                            \
        for (int j_ = 0; j_ < SAMP_THREADS; j_++)                    \
            (tot) += port_chunk[j_];                                 \
    } while (0)

static int32_t port_sample_row(const float *x, int32_t V, const samp_req *q, int32_t am, const float *qrow, int *acc)
{
    int test = q->kind != SAMP_DRAW;
    samp_warp w;
    *acc = 0;
    if (!(q->temperature > 0.0f) || !samp_ref_warp(x, V, q, &w)) {
        *acc = test && am == q->x;
        return am;
    }
#define PORT_K(i) samp_kept_weight(x[i], &w)
    float tot;
    int pick;
    PORT_CHUNK_SUMS(PORT_K, V, tot);
    if (!test) {
        SAMP_CHUNK_WALK(PORT_K, V, port_chunk, tot, q->u, pick);
        return pick >= 0 ? pick : am;
    }
    const float *qr = q->kind == SAMP_TEST ? qrow : NULL;
    if (samp_accepts(q->u_acc, qr ? qr[q->x] : 1.0f, tot, PORT_K(q->x))) {
        *acc = 1;
        return q->x;
    }
#define PORT_R(i) samp_resid(PORT_K(i), qr ? qr[i] : (i) == q->x ? 1.0f : 0.0f, tot)
    float rtot;
    PORT_CHUNK_SUMS(PORT_R, V, rtot);
    SAMP_CHUNK_WALK(PORT_R, V, port_chunk, rtot, q->u, pick);
#undef PORT_R
#undef PORT_K
    return pick >= 0 ? pick : q->x;
}

/* (d) Sampling on the device (k_sample, its rule in kernels/cuda_sample.h,
 * run here as samp_reference): the draw is the inverse CDF of the host
 * sampler's warped distribution. For rows of distinct random logits and
 * temperature / top-k / top-p settings, u on a grid of N quantiles hits each
 * token in proportion to sampler_probs' probability (within the grid's
 * step), never a token sampler_probs gives 0; greedy rows and rows with no
 * finite logit take the argmax given. */
static void test_sample_rule(void **state)
{
    (void)state;
    enum { V = 300, N = 20000 };
    char err[128];
    float x[V], probs[V];
    int32_t hits[V];
    uint64_t rng = 7;
    struct { float t; int32_t k; float p; } cases[] = {
        {1.0f, 0, 1.0f}, {0.7f, 0, 0.9f}, {1.3f, 17, 1.0f}, {1.0f, 40, 0.8f}, {2.5f, 0, 0.5f}, {0.3f, 1, 1.0f},
        {1.0f, V - 1, 1.0f}, {1.0f, V + 5, 0.999f}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int32_t i = 0; i < V; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            x[i] = (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 12.0f - 6.0f;
        }
        sampler sm;
        sampler_params sp = {.temperature = cases[c].t, .top_k = cases[c].k, .top_p = cases[c].p, .seed = 1};
        assert_int_equal(sampler_init(&sm, &sp, V, err, sizeof err), 0);
        sampler_probs(&sm, x, V, probs);
        memset(hits, 0, sizeof hits);
        int walk_differ = 0;
        for (int j = 0; j < N; j++) {
            samp_req q = {.temperature = cases[c].t, .top_k = cases[c].k, .top_p = cases[c].p, .u = (float)((j + 0.5) / N)};
            int32_t tok = samp_reference(x, V, &q, -1);
            assert_true(tok >= 0 && tok < V);
            hits[tok]++;
            int pa;
            if (j % 8 == 0)
                walk_differ += port_sample_row(x, V, &q, -1, NULL, &pa) != tok;
        }
        for (int32_t i = 0; i < V; i++) {
            if (probs[i] == 0.0f)
                assert_int_equal(hits[i], 0);
            else if (fabs(hits[i] / (double)N - probs[i]) > 2.0 / N + 1e-4 * probs[i])
                fail_msg("case %zu token %d: drawn %.5f, sampler_probs %.5f", c, i, hits[i] / (double)N, probs[i]);
        }
        sampler_free(&sm);
        if (walk_differ > N / 8 / 500)   /* the kernel's chunked walk: the same token but at rounding boundaries */
            fail_msg("case %zu: the chunked walk differs from the sequential one in %d of %d", c, walk_differ, N);
    }
    samp_req greedy = {.temperature = 0.0f, .top_p = 1.0f, .u = 0.5f};
    assert_int_equal(samp_reference(x, V, &greedy, 42), 42);
    for (int32_t i = 0; i < V; i++)
        x[i] = -INFINITY;
    samp_req hot = {.temperature = 1.0f, .top_p = 1.0f, .u = 0.5f};
    assert_int_equal(samp_reference(x, V, &hot, 3), 3);
    /* the key order is the float order */
    float vals[] = {-INFINITY, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, INFINITY};
    for (size_t i = 1; i < sizeof vals / sizeof vals[0]; i++)
        assert_true(samp_key(vals[i - 1]) < samp_key(vals[i]));
}

/* (e) Speculative sampling on the device (test rows, samp_reference_row;
 * draft rows, samp_draft_reference): a draft token drawn from the draft's
 * warped q, tested against the target row, and replaced from the residual
 * when it fails, is distributed exactly as the target's warped p (within
 * sampling noise over 40k draws: 5 sigma per token), for a draft that is
 * close to the target, one that is far, one with a different top-k, and a
 * context token (one-hot q at a fixed token); draft rows keep a q that
 * sums to 1 and give conf = the top-1 probability at temperature 1. */
static void test_spec_rule(void **state)
{
    (void)state;
    enum { V = 40, N = 40000 };
    char err[128];
    float xt[V], xd[V], p[V], q[V];
    uint64_t rng = 99;
    float conf_unused;
#define U01() (rng = rng * 6364136223846793005ull + 1442695040888963407ull, \
               (float)((rng >> 40) * (1.0 / 16777216.0)))
    struct { float t; int32_t k; float tp; float noise; int ctx; } cases[] = {
        {1.0f, 0, 1.0f, 0.3f, 0}, {0.8f, 0, 0.9f, 3.0f, 0}, {1.2f, 12, 1.0f, 1.0f, 0}, {1.0f, 0, 0.95f, 0.0f, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int32_t i = 0; i < V; i++) {
            xt[i] = U01() * 8.0f - 4.0f;
            xd[i] = xt[i] + (U01() - 0.5f) * 2.0f * cases[c].noise;
        }
        sampler sm;
        sampler_params sp = {.temperature = cases[c].t, .top_k = cases[c].k, .top_p = cases[c].tp, .seed = 1};
        assert_int_equal(sampler_init(&sm, &sp, V, err, sizeof err), 0);
        sampler_probs(&sm, xt, V, p);
        sampler_free(&sm);
        samp_req dq = {.temperature = cases[c].t, .top_k = cases[c].k ? cases[c].k + 5 : 0, .top_p = cases[c].tp};
        float conf;
        int32_t am = 0;
        for (int32_t i = 1; i < V; i++)
            am = xd[i] > xd[am] ? i : am;
        (void)samp_draft_reference(xd, V, &dq, am, q, &conf);
        double qs = 0.0, z = 0.0;
        for (int32_t i = 0; i < V; i++) {
            qs += q[i];
            z += exp((double)xd[i] - xd[am]);
        }
        assert_true(fabs(qs - 1.0) < 1e-5);
        assert_true(fabs(conf - 1.0 / z) < 1e-5);
        static int32_t hits[V];
        memset(hits, 0, sizeof hits);
        int32_t acc = 0, xfix = am, port_differ = 0;
        for (int j = 0; j < N; j++) {
            /* the draft token: q's inverse CDF in index order (the draw
             * samp_draft_reference makes from the same q) */
            int32_t x = xfix;
            if (!cases[c].ctx) {
                float ud = U01(), run = 0.0f;
                for (x = 0; x < V - 1 && !(q[x] > 0.0f && (run += q[x]) > ud); x++)
                    ;
                while (!(q[x] > 0.0f))
                    x--;
            }
            samp_req tr = {cases[c].t, cases[c].k, cases[c].tp, U01(), cases[c].ctx ? SAMP_TEST_CTX : SAMP_TEST,
                           x, 0, U01()};
            int a, pa;
            int32_t tok = samp_reference_row(xt, V, &tr, -1, q, &a);
            assert_true(tok >= 0 && tok < V);
            assert_true(!a || tok == x);
            acc += a;
            hits[tok]++;
            /* the kernel's chunked walk: the same verdict and token but
             * where a uniform falls within rounding of a boundary */
            if (j < N / 4) {
                int32_t ptok = port_sample_row(xt, V, &tr, -1, q, &pa);
                port_differ += ptok != tok || pa != a;
            }
        }
        assert_true(port_differ <= N / 4 / 1000);
        for (int32_t i = 0; i < V; i++) {
            double f = hits[i] / (double)N, sd = sqrt(p[i] * (1.0 - p[i]) / N);
            if (p[i] == 0.0f)
                assert_int_equal(hits[i], 0);
            else if (fabs(f - p[i]) > 5.0 * sd + 1e-6)
                fail_msg("case %zu token %d: emitted %.5f, target %.5f (5 sigma %.5f)", c, i, f, p[i], 5 * sd);
        }
        printf("  speculative sampling case %zu: accepted %.3f of drafts; tokens distributed as the target; the "
               "kernel's chunked walk differs in %d of %d\n", c, acc / (double)N, port_differ, N / 4);
    }
    /* a vocabulary of several entries per chunk (C = 5, a short last
     * chunk): the chunked walk still gives the sequential walk's token and
     * verdict but at rounding boundaries, for draws and test rows */
    {
        enum { BV = 5003, BN = 600 };
        float *bx = malloc(BV * sizeof(float)), *bd = malloc(BV * sizeof(float)), *bq = malloc(BV * sizeof(float));
        for (int32_t i = 0; i < BV; i++) {
            bx[i] = U01() * 10.0f - 5.0f;
            bd[i] = bx[i] + U01() - 0.5f;
        }
        samp_req d = {.temperature = 1.0f, .top_p = 0.9f};
        int32_t bam = 0;
        for (int32_t i = 1; i < BV; i++)
            bam = bd[i] > bd[bam] ? i : bam;
        (void)samp_draft_reference(bd, BV, &d, bam, bq, &conf_unused);
        int differ = 0;
        for (int j = 0; j < BN; j++) {
            samp_req tr = {.temperature = 1.0f, .top_p = j % 2 ? 0.9f : 1.0f, .u = U01(),
                           .kind = j % 3 == 0 ? SAMP_DRAW : SAMP_TEST, .x = (int32_t)(U01() * BV), .u_acc = U01()};
            int a, pa;
            int32_t t = samp_reference_row(bx, BV, &tr, -1, bq, &a);
            differ += port_sample_row(bx, BV, &tr, -1, bq, &pa) != t || pa != a;
        }
        if (differ > BN / 200)
            fail_msg("V %d: the chunked walk differs from the sequential one in %d of %d", BV, differ, BN);
        printf("  V %d (chunks of %d): the kernel's chunked walk differs in %d of %d rows\n", BV, samp_chunk(BV),
               differ, BN);
        free(bx);
        free(bd);
        free(bq);
    }
#undef U01
    /* greedy test rows: accepted exactly when the argmax is the draft */
    samp_req g = {0.0f, 0, 1.0f, 0.5f, SAMP_TEST, 7, 0, 0.5f};
    int a;
    assert_int_equal(samp_reference_row(xt, V, &g, 7, q, &a), 7);
    assert_int_equal(a, 1);
    assert_int_equal(samp_reference_row(xt, V, &g, 3, q, &a), 3);
    assert_int_equal(a, 0);
}

/* (f) Log-probabilities on the device (k_logprobs, its rule
 * lp_reference_row): for rows with many ties and -inf entries, the top N
 * ids are sampler_logprobs' (the same tie rule: the lower id first), their
 * log-probabilities and a candidate's agree within float rounding (the
 * device sums in float, the host in double), for N = 0, 1, 5 and 20. */
static void test_logprob_rule(void **state)
{
    (void)state;
    enum { V = 5000 };
    static float x[V];
    uint64_t rng = 11;
    int tops[] = {0, 1, 5, 20};
    for (int c = 0; c < 24; c++) {
        for (int32_t i = 0; i < V; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            int q = (int)((rng >> 33) % 64);   /* few distinct values: ties everywhere */
            x[i] = c % 3 == 2 && q == 0 ? -INFINITY : (float)q * 0.25f - 8.0f + (c % 2 ? (float)c : 0.0f);
        }
        int32_t n_top = tops[c % 4], cand[2] = {(int32_t)(rng % V), c % 5 ? (int32_t)((rng >> 20) % V) : -1};
        lp_row d;
        lp_reference_row(x, V, n_top, cand, &d);
        sampler_logprob h;
        sampler_logprobs(x, V, cand[0], n_top, &h);
        assert_int_equal(d.n_top, h.n_top);
        for (int k = 0; k < n_top; k++) {
            assert_int_equal(d.top_ids[k], h.top_ids[k]);
            assert_true(fabsf((d.top_logit[k] - d.lse) - h.top_lps[k]) < 1e-4f);
        }
        assert_true(fabsf((d.cand_logit[0] - d.lse) - h.logprob) < 1e-4f);
        if (cand[1] < 0)
            assert_true(isnan(d.cand_logit[1]));
        else
            assert_true(d.cand_logit[1] == x[cand[1]]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_constants),
        cmocka_unit_test(test_proj_order),
        cmocka_unit_test(test_attention_order),
        cmocka_unit_test(test_sample_rule),
        cmocka_unit_test(test_spec_rule),
        cmocka_unit_test(test_logprob_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
