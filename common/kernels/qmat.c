/*
 * qmat.c - U8A weight matrices (8-bit levels, or packed 4-bit levels for
 * 4-bit sources): packing, quantization and the products X . W^T (see
 * qmat.h for the format and the exactness argument).
 *
 * One kernel for every block size, in three builds chosen at compile time:
 * AVX512-VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd, the sequence chosen
 * once per matrix from its tier so that no int16 saturates) and a portable
 * loop. All three compute the exact integer dot product of each 32-column
 * block and then the same float operations in the same order (block 0, 1,
 * ... of one row and one token), so they give the same bits as each other,
 * the two storage forms of one matrix give the same bits, and above all a
 * token gets the same bits whatever else is in its block. The activation
 * quantization likewise has AVX512, AVX2 and scalar forms giving equal
 * bytes, and quantizes each token from its own row only (so the threads may
 * share it). (A dequantize + sgemm product, whose float sums come out in
 * an order that depends on T, is on no forward path: it lives in
 * scripts/bench_kernels.c, the one program that links BLAS.)
 * Over whichever build, qmat_matmul takes the AMX kernel (qmat_amx.c, the
 * same arithmetic, the same bits) at run time for T >= the qmat_set_amx
 * setting where the CPU has AMX-INT8; the scratch then holds the scales in
 * that kernel's layout (act_q.amx) and activation rows up to a multiple of
 * 16 tokens (its tile loads read whole tiles).
 */
#include "kernels/qmat.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#define QMAT_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__)
#define QMAT_AVX2 1
#endif

#include "kernels/f16.h"
#include "kernels/qmat_amx.h"
#include "util/util.h"

#define QMAT_VNNI_TILE 8  /* tokens sharing one pass over a weight panel (VNNI) */
#define QMAT_PAR_QUANT_T 16  /* from this many tokens on, the threads share the quantization */
#define GROUP_BYTES (QMAT_ROWS * QMAT_BLOCK)   /* q bytes of one block of a group, U8 */
#define GROUP_BYTES_U4 (GROUP_BYTES / 2)       /* the same, U4 */

size_t qmat_q_bytes(int32_t rows, int32_t cols)
{
    return (size_t)rows * (size_t)cols;
}

size_t qmat_q_bytes_fmt(int32_t rows, int32_t cols, int32_t fmt)
{
    assert(fmt == QMAT_U8 || fmt == QMAT_U4);
    return fmt == QMAT_U4 ? qmat_q_bytes(rows, cols) / 2 : qmat_q_bytes(rows, cols);
}

size_t qmat_dm_bytes(int32_t rows, int32_t cols)
{
    return (size_t)rows * (size_t)(cols / QMAT_BLOCK) * sizeof(float);
}

static inline size_t block_bytes(const qmat *W)
{
    return W->fmt == QMAT_U4 ? GROUP_BYTES_U4 : GROUP_BYTES;
}

static inline int tier_max_level(int32_t tier)
{
    return tier == QMAT_TIER_NIBBLE ? 15 : tier == QMAT_TIER_7BIT ? 127 : 255;
}

/* Offset of element (r, c) in the interleaved q array, U8 form. */
static inline size_t q_index(int32_t nb, int32_t r, int32_t c)
{
    size_t g = (size_t)(r / QMAT_ROWS), rr = (size_t)(r % QMAT_ROWS);
    size_t b = (size_t)(c / QMAT_BLOCK), c4 = (size_t)((c % QMAT_BLOCK) / 4), k = (size_t)(c % 4);
    return ((g * nb + b) * 8 + c4) * 64 + rr * 4 + k;
}

/* Offset of the byte holding element (r, c), U4 form; *shift: 0 for the low
 * nibble (column quads 0..3 of a block), 4 for the high one (quads 4..7). */
static inline size_t q_index_u4(int32_t nb, int32_t r, int32_t c, int *shift)
{
    size_t g = (size_t)(r / QMAT_ROWS), rr = (size_t)(r % QMAT_ROWS);
    size_t b = (size_t)(c / QMAT_BLOCK), c4 = (size_t)((c % QMAT_BLOCK) / 4), k = (size_t)(c % 4);
    *shift = (int)(c4 / 4) * 4;
    return ((g * nb + b) * 4 + c4 % 4) * 64 + rr * 4 + k;
}

static inline int level_at(const qmat *W, int32_t nb, int32_t r, int32_t c)
{
    if (W->fmt == QMAT_U4) {
        int shift;
        size_t i = q_index_u4(nb, r, c, &shift);
        return (W->q[i] >> shift) & 15;
    }
    return W->q[q_index(nb, r, c)];
}

static inline size_t dm_index(int32_t nb, int32_t r, int32_t b)
{
    return ((size_t)(r / QMAT_ROWS) * nb + b) * QMAT_ROWS + (size_t)(r % QMAT_ROWS);
}

void qmat_set_row(const qmat *W, int32_t r, const uint8_t *levels, const float *d, const float *m)
{
    assert(W->fmt == QMAT_U8 || W->fmt == QMAT_U4);
    assert(r >= 0 && r < W->rows);
    int32_t nb = W->cols / QMAT_BLOCK;
    uint8_t *q = (uint8_t *)W->q;
    if (W->fmt == QMAT_U4) {
        /* column c (c % 32 < 16) and c + 16 share a byte, of this row only */
        for (int32_t c = 0; c < W->cols; c++)
            if (c % QMAT_BLOCK < QMAT_BLOCK / 2) {
                assert(levels[c] <= 15 && levels[c + QMAT_BLOCK / 2] <= 15);
                int shift;
                size_t i = q_index_u4(nb, r, c, &shift);
                assert(shift == 0);
                q[i] = (uint8_t)(levels[c] | levels[c + QMAT_BLOCK / 2] << 4);
            }
    } else {
        int maxl = tier_max_level(W->tier);
        for (int32_t c = 0; c < W->cols; c++) {
            assert(levels[c] <= maxl);
            q[q_index(nb, r, c)] = levels[c];
        }
        (void)maxl;
    }
    for (int32_t b = 0; b < nb; b++) {
        ((float *)W->d)[dm_index(nb, r, b)] = d[b];
        ((float *)W->m)[dm_index(nb, r, b)] = m[b];
    }
}

void qmat_get_row(const qmat *W, int32_t r, uint8_t *levels, float *d, float *m)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    for (int32_t c = 0; c < W->cols; c++)
        levels[c] = (uint8_t)level_at(W, nb, r, c);
    for (int32_t b = 0; b < nb; b++) {
        d[b] = W->d[dm_index(nb, r, b)];
        m[b] = W->m[dm_index(nb, r, b)];
    }
}

int32_t qmat_scan_tier(const qmat *W)
{
    if (W->fmt == QMAT_U4)
        return QMAT_TIER_NIBBLE;
    uint8_t mx = 0;
    size_t n = qmat_q_bytes(W->rows, W->cols);
    for (size_t i = 0; i < n; i++)
        mx = W->q[i] > mx ? W->q[i] : mx;
    return mx <= 15 ? QMAT_TIER_NIBBLE : mx <= 127 ? QMAT_TIER_7BIT : QMAT_TIER_8BIT;
}

int qmat_gather(const qmat *src, const int32_t *rows, int32_t n, qmat *dst)
{
    if (n <= 0 || n % QMAT_ROWS != 0)
        return -1;
    int32_t nb = src->cols / QMAT_BLOCK;
    dst->rows = n;
    dst->cols = src->cols;
    dst->fmt = src->fmt;
    dst->tier = src->tier;
    dst->q = alignedCheck(qmat_q_bytes_fmt(n, src->cols, src->fmt));
    dst->d = alignedCheck(qmat_dm_bytes(n, src->cols));
    dst->m = alignedCheck(qmat_dm_bytes(n, src->cols));
    uint8_t *lv = mallocCheck((size_t)src->cols);
    float *d = mallocCheck((size_t)nb * sizeof(float)), *m = mallocCheck((size_t)nb * sizeof(float));
    for (int32_t j = 0; j < n; j++) {
        assert(rows[j] >= 0 && rows[j] < src->rows);
        qmat_get_row(src, rows[j], lv, d, m);
        qmat_set_row(dst, j, lv, d, m);
    }
    free(lv);
    free(d);
    free(m);
    return 0;
}

void qmat_free_owned(qmat *W)
{
    free((void *)W->q);
    free((void *)W->d);
    free((void *)W->m);
    W->q = NULL;
    W->d = W->m = NULL;
}

void qmat_quantize_row(const float *x, int32_t cols, uint8_t *levels, float *d, float *m)
{
    assert(cols % QMAT_BLOCK == 0);
    for (int32_t b = 0; b < cols / QMAT_BLOCK; b++) {
        const float *xb = x + b * QMAT_BLOCK;
        float lo = xb[0], hi = xb[0];
        for (int i = 1; i < QMAT_BLOCK; i++) {
            lo = fminf(lo, xb[i]);
            hi = fmaxf(hi, xb[i]);
        }
        float scale = (hi - lo) / 255.0f;
        float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int i = 0; i < QMAT_BLOCK; i++) {
            float v = roundf((xb[i] - lo) * inv);
            levels[b * QMAT_BLOCK + i] = (uint8_t)fminf(fmaxf(v, 0.0f), 255.0f);
        }
        d[b] = scale;
        m[b] = lo;
    }
}

void qmat_dequant_row(const qmat *W, int32_t r, float *out)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    for (int32_t b = 0; b < nb; b++) {
        float d = W->d[dm_index(nb, r, b)], m = W->m[dm_index(nb, r, b)];
        for (int i = 0; i < QMAT_BLOCK; i++)
            out[b * QMAT_BLOCK + i] = (float)level_at(W, nb, r, b * QMAT_BLOCK + i) * d + m;
    }
}

/* T rounded up to whole AMX token tiles. */
static inline int padded_tokens(int T)
{
    return (T + QMAT_AMX_TOKENS - 1) / QMAT_AMX_TOKENS * QMAT_AMX_TOKENS;
}

/* Bytes of the quantized activations of T tokens: rows up to the next
 * multiple of QMAT_AMX_TOKENS, which the AMX kernel's tile loads read (the
 * rows past T are never used for a result), 64-byte aligned. */
static size_t xq_bytes(int32_t cols, int T)
{
    return ((size_t)padded_tokens(T) * (size_t)cols + 63) & ~(size_t)63;
}

/* Bytes before the AMX kernel's paired layout in the scratch (64-aligned). */
static size_t pair_offset(int32_t cols, int T)
{
    size_t nb = (size_t)(cols / QMAT_BLOCK);
    size_t n = xq_bytes(cols, T) + 2 * (size_t)padded_tokens(T) * nb * sizeof(float) + (size_t)T * nb * sizeof(int32_t);
    return (n + 63) & ~(size_t)63;
}

/* xq, then sx and sxs (padded_tokens(T) x nb floats each: room for either
 * layout), then isum (T x nb), then the AMX kernel's paired layout (used
 * for T <= QMAT_AMX_PAIR_T; always reserved, so that a scratch sized for
 * the most tokens and columns serves every smaller call: the size grows
 * with both). */
size_t qmat_scratch_bytes(int32_t cols, int T)
{
    return pair_offset(cols, T) + QMAT_AMX_PAIR_BYTES(cols);
}

/* ------------------------------------------------------------------------ */
/* The AMX switch (qmat.h): T from which qmat_matmul takes the AMX kernel,   */
/* 0 for never. Atomic: set by the caller, read by every call.               */

static _Atomic int amx_min_t = QMAT_AMX_MIN_T_DEFAULT;

int qmat_set_amx(int min_t)
{
    return atomic_exchange_explicit(&amx_min_t, min_t > 0 ? min_t : 0, memory_order_relaxed);
}

int qmat_amx_available(void)
{
    return qmat_amx_usable();
}

/* ------------------------------------------------------------------------ */
/* Activation quantization: per token, per block of 32, symmetric int8.      */

typedef struct {
    int8_t *xq;     /* (T, cols) */
    float *sx;      /* block scale: (T, nb), or the AMX layout (below) */
    float *sxs;     /* block scale times the sum of the block's xq, laid out as sx */
    int32_t *isum;  /* (T, nb) the sum of the block's xq (AVX2 kernel's offset) */
    int amx;        /* sx, sxs in the AMX kernel's layout: (ceil(T/16), nb, 16) */
    int8_t *xp;     /* the AMX kernel's paired layout of xq (qmat_amx.h), or NULL */
} act_q;

/* Index of token t, block b in sx and sxs. The AMX layout puts the 16
 * tokens of a token tile side by side per block, so the kernel's epilogue
 * reads block b's scales for its tokens at one base address. */
static inline size_t sx_index(const act_q *a, int32_t nb, size_t t, int32_t b)
{
    if (a->amx)
        return ((t / QMAT_AMX_TOKENS) * (size_t)nb + (size_t)b) * QMAT_AMX_TOKENS + t % QMAT_AMX_TOKENS;
    return t * (size_t)nb + (size_t)b;
}

/* The integer dot product of one 32-column block, |sum| <= 32 * 255 * 127,
 * converts to float exactly: every path's float operations then see the same
 * value, whatever order its integer additions took. */
_Static_assert(QMAT_BLOCK * 255 * 127 < (1 << 24), "block dot products must be exact in float");

/* One block of 32 activations: q = round(x * 127 / amax), as int8. All
 * three variants give the same bytes: |x| max is exact, x * inv is one
 * rounding, and the rounding to an integer is to nearest, ties to even. */
static inline void quantize_block(const float *x, int8_t *q, float *sx, float *sxs, int32_t *isum)
{
    float amax = 0.0f;
#if defined(__AVX512F__)
    __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
    amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m512 vi = _mm512_set1_ps(inv);
    __m512i a = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(lo, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m512i b = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(hi, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(a));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(b));
    int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(a, b));
#elif defined(QMAT_AVX2)
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        mx = _mm256_max_ps(mx, _mm256_and_ps(v[k], nosign));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    amax = _mm_cvtss_f32(m4);
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m256 vi = _mm256_set1_ps(inv);
    __m256i iv[4], vs = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        iv[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        vs = _mm256_add_epi32(vs, iv[k]);
    }
    /* pack 4 x 8 int32 (|v| <= 127) to 32 int8; packs works per 128-bit lane */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vs), _mm256_extracti128_si256(vs, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    int32_t sum = _mm_cvtsi128_si32(s4);
#else
    for (int i = 0; i < QMAT_BLOCK; i++) {
        float v = fabsf(x[i]);
        amax = v > amax ? v : amax;
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < QMAT_BLOCK; i++) {
        q[i] = (int8_t)nearbyintf(x[i] * inv);   /* ties to even, as the vector path */
        sum += q[i];
    }
#endif
    /* scales kept in single precision (llama.cpp's Q8_K, which K-quant
     * weights meet, does the same; its Q8_0/Q8_1 round them to half): a
     * block holding one huge activation (Gemma 3's residual stream has
     * entries in the thousands at some positions) would otherwise carry a
     * relative error of 2^-11 of its whole contribution into the output --
     * measured on Gemma-3-270M, logits 8-18 off llama.cpp's at such a
     * position, within 0.2 of them with float scales. */
    float s = amax / 127.0f;
    *sx = s;
    *sxs = s * (float)sum;
    *isum = sum;
}

/* The scratch laid out for T tokens of cols inputs (qmat_scratch_bytes);
 * amx: the scales in the AMX kernel's layout. */
static act_q act_layout(int T, int32_t cols, void *scratch, int amx)
{
    size_t nsx = (size_t)padded_tokens(T) * (size_t)(cols / QMAT_BLOCK);
    act_q a = {scratch, (float *)((char *)scratch + xq_bytes(cols, T)), NULL, NULL, amx, NULL};
    a.sxs = a.sx + nsx;
    a.isum = (int32_t *)(a.sxs + nsx);
    if (amx && T <= QMAT_AMX_PAIR_T && cols % (2 * QMAT_BLOCK) == 0)
        a.xp = (int8_t *)((char *)scratch + pair_offset(cols, T));
    return a;
}

/* Quantize token t (row t of X) into a: depends on that row only. */
static void quantize_token(const act_q *a, const float *X, int ldx, int t, int32_t cols)
{
    int32_t nb = cols / QMAT_BLOCK;
    for (int32_t b = 0; b < nb; b++) {
        size_t i = sx_index(a, nb, (size_t)t, b);
        quantize_block(X + (size_t)t * ldx + b * QMAT_BLOCK, a->xq + (size_t)t * cols + b * QMAT_BLOCK,
                       &a->sx[i], &a->sxs[i], &a->isum[(size_t)t * nb + b]);
    }
}

static act_q quantize_acts(const float *X, int ldx, int T, int32_t cols, void *scratch, int amx)
{
    act_q a = act_layout(T, cols, scratch, amx);
    for (int t = 0; t < T; t++)
        quantize_token(&a, X, ldx, t, cols);
    if (a.xp)
        qmat_amx_pair_layout(a.xq, T, cols, a.xp);
    return a;
}

/* ------------------------------------------------------------------------ */
/* The kernel: one 16-row group against NT tokens. Every variant computes,   */
/* per (row, token), for blocks b = 0, 1, ... in order:                      */
/*   ia  = sum_i q[row][32b + i] * xq[token][32b + i]       (exact int32)    */
/*   acc = fma((float)ia, d[row][b] * sx[token][b], acc)                      */
/*   acc = fma(m[row][b], sxs[token][b], acc)                                 */
/* so a row's value depends only on that token, on every CPU.                */

/* Portable: the definition, one (row, token) at a time. */
static void group_tile_portable(const qmat *W, int32_t g, const act_q *a, int32_t t0, float *Y,
                                int ldy, int NT)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    for (int j = 0; j < NT; j++) {
        size_t t = (size_t)(t0 + j);
        for (int32_t rr = 0; rr < QMAT_ROWS; rr++) {
            int32_t r = g * QMAT_ROWS + rr;
            float acc = 0.0f;
            for (int32_t b = 0; b < nb; b++) {
                int32_t ia = 0;
                for (int i = 0; i < QMAT_BLOCK; i++)
                    ia += (int32_t)level_at(W, nb, r, b * QMAT_BLOCK + i) *
                          a->xq[t * W->cols + (size_t)b * QMAT_BLOCK + i];
                float scale = W->d[dm_index(nb, r, b)] * a->sx[t * nb + b];
                acc = fmaf((float)ia, scale, acc);
                acc = fmaf(W->m[dm_index(nb, r, b)], a->sxs[t * nb + b], acc);
            }
            Y[t * ldy + r] = acc;
        }
    }
}

#if defined(QMAT_VNNI)
/* AVX512-VNNI: vpdpbusd multiplies unsigned weight bytes by signed
 * activation bytes and sums each 4 into int32, without saturation, so every
 * level range takes the same sequence. U4: register k (column quad k) is
 * the low nibbles of packed register k (k < 4) or the high nibbles of packed
 * register k - 4, i.e. exactly the bytes the U8 form holds.
 * NOT RUN on the development machines (AVX2 only); compiled with
 * -march=icelake-server to check it builds. */
static inline __attribute__((always_inline)) void
group_tile(const qmat *W, int32_t g, const act_q *a, int32_t t0, float *Y, int ldy, const int NT,
           const int32_t fmt)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    size_t bbytes = fmt == QMAT_U4 ? GROUP_BYTES_U4 : GROUP_BYTES;
    const uint8_t *qg = W->q + (size_t)g * nb * bbytes;
    const float *dg = W->d + (size_t)g * nb * QMAT_ROWS, *mg = W->m + (size_t)g * nb * QMAT_ROWS;
    const __m512i lo4 = _mm512_set1_epi8(15);
    __m512 acc[QMAT_VNNI_TILE];
    for (int j = 0; j < NT; j++)
        acc[j] = _mm512_setzero_ps();
    for (int32_t b = 0; b < nb; b++) {
        __m512i w[8];
        if (fmt == QMAT_U4) {
            for (int k = 0; k < 4; k++) {
                __m512i pk = _mm512_load_si512((const void *)(qg + (size_t)b * bbytes + 64 * k));
                w[k] = _mm512_and_si512(pk, lo4);
                w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(pk, 4), lo4);
            }
        } else {
            for (int k = 0; k < 8; k++)
                w[k] = _mm512_load_si512((const void *)(qg + (size_t)b * bbytes + 64 * k));
        }
        __m512 dv = _mm512_load_ps(dg + (size_t)b * QMAT_ROWS);
        __m512 mv = _mm512_load_ps(mg + (size_t)b * QMAT_ROWS);
        for (int j = 0; j < NT; j++) {
            size_t t = (size_t)(t0 + j);
            const int8_t *xb = a->xq + t * W->cols + (size_t)b * QMAT_BLOCK;
            __m512i ia = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++)   /* 4 activation bytes broadcast straight from memory */
                ia = _mm512_dpbusd_epi32(ia, w[k], _mm512_broadcastd_epi32(_mm_loadu_si32(xb + 4 * k)));
            __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(a->sx[t * nb + b]));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), scale, acc[j]);
            acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a->sxs[t * nb + b]), acc[j]);
        }
    }
    for (int j = 0; j < NT; j++)
        _mm512_storeu_ps(Y + (size_t)(t0 + j) * ldy + (size_t)g * QMAT_ROWS, acc[j]);
}

static inline __attribute__((always_inline)) void
group_tiles_fmt(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy, const int32_t fmt)
{
    for (int t0 = 0; t0 < T; t0 += QMAT_VNNI_TILE) {
        switch (T - t0 < QMAT_VNNI_TILE ? T - t0 : QMAT_VNNI_TILE) {
        case 1: group_tile(W, g, a, t0, Y, ldy, 1, fmt); break;
        case 2: group_tile(W, g, a, t0, Y, ldy, 2, fmt); break;
        case 3: group_tile(W, g, a, t0, Y, ldy, 3, fmt); break;
        case 4: group_tile(W, g, a, t0, Y, ldy, 4, fmt); break;
        case 5: group_tile(W, g, a, t0, Y, ldy, 5, fmt); break;
        case 6: group_tile(W, g, a, t0, Y, ldy, 6, fmt); break;
        case 7: group_tile(W, g, a, t0, Y, ldy, 7, fmt); break;
        default: group_tile(W, g, a, t0, Y, ldy, 8, fmt); break;
        }
    }
}

static void group_tiles_u8(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_fmt(W, g, a, T, Y, ldy, QMAT_U8);
}

static void group_tiles_u4(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_fmt(W, g, a, T, Y, ldy, QMAT_U4);
}

typedef void (*tiles_fn)(const qmat *, int32_t, const act_q *, int, float *, int);

static tiles_fn pick_tiles(const qmat *W)
{
    return W->fmt == QMAT_U4 ? group_tiles_u4 : group_tiles_u8;
}
#elif defined(QMAT_AVX2)
/* AVX2: vpmaddubsw (unsigned x signed bytes, adjacent pairs summed into
 * int16, SATURATING) then vpmaddwd by 1 (pairs of int16 into int32). Each
 * 32-byte register holds 4 columns of 8 rows (a half group); two cover the
 * group. The sequence depends on the matrix's tier (qmat.tier, fixed when
 * the matrix is filled; U4 is nibble-tier), so that no int16 ever
 * saturates; all give the exact integer sum:
 *  - levels <= 15 (every 4-bit format): |pair| <= 2*15*127, so the 8 column
 *    quads' pairs are added in int16 (|partial sum| <= 30480) before one
 *    vpmaddwd;
 *  - levels <= 127: |pair| <= 2*127*127 = 32258, one vpmaddwd per quad;
 *  - else: w = (w - 128) + 128; vpmaddubsw(|w-128|, sign(x, w-128)) has
 *    |pair| <= 2*128*127 = 32512, and 128 * sum(x) is added back in int32.
 * Register tiling (16 ymm): a pass holds NT <= 2 tokens x NH half groups
 * (NH = 2: the whole group) of accumulators, one int and one float register
 * each (8), plus the weight registers, one broadcast and the constants;
 * each broadcast feeds two vpmaddubsw. Measured faster than 4 tokens x 8
 * rows (which needs a broadcast per vpmaddubsw). Each weight byte comes
 * from memory once per call: passes after the first re-read the group's
 * panel (<= 16 x cols bytes) from L1/L2. */
_Static_assert(8 * 2 * 15 * 127 <= 32767 && 2 * 128 * 127 <= 32767, "no int16 saturation in the AVX2 kernel");

#define QMAT_AVX2_TILE 2   /* most tokens in one pass */
#ifndef QMAT_PF_MIN_T
#define QMAT_PF_MIN_T 3    /* prefetch the next group from this many tokens on */
#endif
#ifndef QMAT_PF_HINT
#define QMAT_PF_HINT _MM_HINT_T0
#endif

/* 4 activation bytes as one int32 (to broadcast). */
static inline int32_t load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* An empty asm that "changes" v: keeps GCC from reassociating a chain of
 * accumulations into a tree of products computed first (which spills the
 * products to the stack); the hardware reorders the chain itself. */
#define QMAT_KEEP(v) __asm__("" : "+x"(v))

/* One column quad c of block-local activations against weight register wv
 * (half group h0 + hh), for every token of the pass. */
static inline __attribute__((always_inline)) void
quad_step(__m256i wv, int c, int hh, const int8_t *const *xb, __m256i (*ia)[2], const int NT,
          const int32_t tier)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (tier == QMAT_TIER_NIBBLE) {   /* int16 partial sums; vpmaddwd after the block */
        for (int j = 0; j < NT; j++) {
            ia[j][hh] = _mm256_add_epi16(ia[j][hh], _mm256_maddubs_epi16(wv, _mm256_set1_epi32(load4(xb[j] + 4 * c))));
            QMAT_KEEP(ia[j][hh]);
        }
    } else if (tier == QMAT_TIER_7BIT) {
        for (int j = 0; j < NT; j++) {
            ia[j][hh] = _mm256_add_epi32(ia[j][hh], _mm256_madd_epi16(
                _mm256_maddubs_epi16(wv, _mm256_set1_epi32(load4(xb[j] + 4 * c))), ones));
            QMAT_KEEP(ia[j][hh]);
        }
    } else {
        __m256i sw = _mm256_xor_si256(wv, _mm256_set1_epi8((char)0x80));   /* w - 128, as int8 */
        __m256i aw = _mm256_abs_epi8(sw);                                  /* |w - 128| (128 for -128) */
        for (int j = 0; j < NT; j++) {
            __m256i sx = _mm256_sign_epi8(_mm256_set1_epi32(load4(xb[j] + 4 * c)), sw);
            ia[j][hh] = _mm256_add_epi32(ia[j][hh], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones));
            QMAT_KEEP(ia[j][hh]);
        }
    }
}

/* Tokens t0..t0+NT-1 against half groups h0..h0+NH-1 of group g. With
 * npf > 0 it also prefetches group g + 1's weights into the cache: the
 * blocks b with b % npf == ipf (each of a group's npf passes takes its
 * share). The hardware prefetcher follows demand misses only, and the
 * passes after the first over a group make none. */
static inline __attribute__((always_inline)) void
group_pass(const qmat *W, int32_t g, const act_q *a, int32_t t0, float *Y, int ldy, const int NT,
           const int h0, const int NH, const int32_t fmt, const int32_t tier, int ipf, int npf)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    size_t bbytes = fmt == QMAT_U4 ? GROUP_BYTES_U4 : GROUP_BYTES;
    const uint8_t *qg = W->q + (size_t)g * nb * bbytes;
    const float *dg = W->d + (size_t)g * nb * QMAT_ROWS, *mg = W->m + (size_t)g * nb * QMAT_ROWS;
    const int8_t *xb[QMAT_AVX2_TILE];
    const float *sx[QMAT_AVX2_TILE], *sxs[QMAT_AVX2_TILE];
    const int32_t *isum[QMAT_AVX2_TILE];
    __m256 acc[QMAT_AVX2_TILE][2];
    for (int j = 0; j < NT; j++) {
        size_t t = (size_t)(t0 + j);
        xb[j] = a->xq + t * W->cols;
        sx[j] = a->sx + t * nb;
        sxs[j] = a->sxs + t * nb;
        isum[j] = a->isum + t * nb;
        for (int hh = 0; hh < NH; hh++)
            acc[j][hh] = _mm256_setzero_ps();
    }
    for (int32_t b = 0; b < nb; b++) {
        const uint8_t *qb = qg + (size_t)b * bbytes;
        if (npf > 0 && b % npf == ipf) {   /* the same block of the next group: nb * bbytes further */
            const char *nq = (const char *)(qb + (size_t)nb * bbytes);
            for (size_t o = 0; o < bbytes; o += 64)
                _mm_prefetch(nq + o, QMAT_PF_HINT);
            _mm_prefetch((const char *)(dg + (size_t)(nb + b) * QMAT_ROWS), QMAT_PF_HINT);
            _mm_prefetch((const char *)(mg + (size_t)(nb + b) * QMAT_ROWS), QMAT_PF_HINT);
        }
        __m256i ia[QMAT_AVX2_TILE][2];
        for (int j = 0; j < NT; j++)
            for (int hh = 0; hh < NH; hh++)
                ia[j][hh] = tier == QMAT_TIER_8BIT && fmt == QMAT_U8 ? _mm256_set1_epi32(128 * isum[j][b])
                                                                    : _mm256_setzero_si256();
        const int8_t *xbb[QMAT_AVX2_TILE];
        for (int j = 0; j < NT; j++)
            xbb[j] = xb[j] + (size_t)b * QMAT_BLOCK;
        if (fmt == QMAT_U4) {
            const __m256i lo4 = _mm256_set1_epi8(15);
            for (int c = 0; c < 4; c++)
                for (int hh = 0; hh < NH; hh++) {
                    __m256i pk = _mm256_loadu_si256((const __m256i *)(qb + 64 * c + 32 * (h0 + hh)));
                    quad_step(_mm256_and_si256(pk, lo4), c, hh, xbb, ia, NT, QMAT_TIER_NIBBLE);
                    quad_step(_mm256_and_si256(_mm256_srli_epi16(pk, 4), lo4), c + 4, hh, xbb, ia, NT,
                              QMAT_TIER_NIBBLE);
                }
        } else {
            for (int c = 0; c < 8; c++)
                for (int hh = 0; hh < NH; hh++)
                    quad_step(_mm256_loadu_si256((const __m256i *)(qb + 64 * c + 32 * (h0 + hh))), c, hh,
                              xbb, ia, NT, tier);
        }
        if (fmt == QMAT_U4 || tier == QMAT_TIER_NIBBLE) {
            const __m256i ones = _mm256_set1_epi16(1);
            for (int j = 0; j < NT; j++)
                for (int hh = 0; hh < NH; hh++)
                    ia[j][hh] = _mm256_madd_epi16(ia[j][hh], ones);
        }
        for (int hh = 0; hh < NH; hh++) {
            __m256 dv = _mm256_loadu_ps(dg + (size_t)b * QMAT_ROWS + 8 * (h0 + hh));
            __m256 mv = _mm256_loadu_ps(mg + (size_t)b * QMAT_ROWS + 8 * (h0 + hh));
            for (int j = 0; j < NT; j++) {
                __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(sx[j][b]));
                acc[j][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[j][hh]), scale, acc[j][hh]);
                acc[j][hh] = _mm256_fmadd_ps(mv, _mm256_set1_ps(sxs[j][b]), acc[j][hh]);
            }
        }
    }
    for (int j = 0; j < NT; j++)
        for (int hh = 0; hh < NH; hh++)
            _mm256_storeu_ps(Y + (size_t)(t0 + j) * ldy + (size_t)g * QMAT_ROWS + 8 * (h0 + hh), acc[j][hh]);
}

/* All tokens of the call for group g, in passes of 2 tokens x 16 rows (the
 * last one token if T is odd). */
static inline __attribute__((always_inline)) void
group_tiles_avx2(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy, const int32_t fmt,
                 const int32_t tier)
{
    int t0 = 0, npf = g + 1 < W->rows / QMAT_ROWS && T >= QMAT_PF_MIN_T ? (T + 1) / 2 : 0;
    for (; t0 + 2 <= T; t0 += 2)
        group_pass(W, g, a, t0, Y, ldy, 2, 0, 2, fmt, tier, t0 / 2, npf);
    if (t0 < T)
        group_pass(W, g, a, t0, Y, ldy, 1, 0, 2, fmt, tier, t0 / 2, npf);
}

static void group_tiles_u4(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_avx2(W, g, a, T, Y, ldy, QMAT_U4, QMAT_TIER_NIBBLE);
}

static void group_tiles_u8n(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_avx2(W, g, a, T, Y, ldy, QMAT_U8, QMAT_TIER_NIBBLE);
}

static void group_tiles_u87(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_avx2(W, g, a, T, Y, ldy, QMAT_U8, QMAT_TIER_7BIT);
}

static void group_tiles_u88(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tiles_avx2(W, g, a, T, Y, ldy, QMAT_U8, QMAT_TIER_8BIT);
}

typedef void (*tiles_fn)(const qmat *, int32_t, const act_q *, int, float *, int);

static tiles_fn pick_tiles(const qmat *W)
{
    if (W->fmt == QMAT_U4)
        return group_tiles_u4;
    return W->tier == QMAT_TIER_NIBBLE ? group_tiles_u8n : W->tier == QMAT_TIER_7BIT ? group_tiles_u87 : group_tiles_u88;
}
#else
static void group_tiles_portable(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    group_tile_portable(W, g, a, 0, Y, ldy, T);
}

typedef void (*tiles_fn)(const qmat *, int32_t, const act_q *, int, float *, int);

static tiles_fn pick_tiles(const qmat *W)
{
    (void)W;
    return group_tiles_portable;
}
#endif

/* The AMX kernel over act_q (qmat_amx.c; the same bits as every kernel). */
static void group_tiles_amx(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    assert(a->amx);
    qmat_amx_group(W, g, a->xq, a->xp, a->sx, a->sxs, T, Y, ldy);
}

void qmat_matmul(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch)
{
    assert(W->cols % QMAT_BLOCK == 0 && W->rows % QMAT_ROWS == 0);
    assert(W->fmt == QMAT_U8 || W->fmt == QMAT_U4);
    if (T <= 0)
        return;
    int32_t groups = W->rows / QMAT_ROWS;
    tiles_fn tiles = pick_tiles(W);
    int min_t = atomic_load_explicit(&amx_min_t, memory_order_relaxed);
    /* AMX works in tiles of 16 tokens (up to 8 in the paired layout): a
     * last tile of fewer than 8 tokens after whole ones costs nearly a whole
     * tile pass (17 tokens measured 0.93x VNNI), so such a T stays on the
     * build's kernel (the same bits either way) */
    int tail = T % QMAT_AMX_TOKENS, tail_min = min_t > 8 ? min_t : 8;
    int amx = min_t > 0 && T >= min_t && (T <= QMAT_AMX_TOKENS || tail == 0 || tail >= tail_min) &&
              qmat_amx_usable();
    if (amx)
        tiles = group_tiles_amx;
    /* Groups are handed out in contiguous chunks, about 8 per thread: a
     * thread that runs late (a busy machine) leaves its chunks to the other,
     * and each thread still streams runs of consecutive groups (what the
     * next-group prefetch assumes). Which thread computes a group does not
     * change its bits. */
    int chunk = groups / (8 * (omp_in_parallel() ? 1 : omp_get_max_threads()));
    chunk = chunk < 1 ? 1 : chunk;
    if (T < QMAT_PAR_QUANT_T) {   /* quantizing a few tokens costs less than a barrier */
        act_q a = quantize_acts(X, ldx, T, W->cols, scratch, amx);
        #pragma omp parallel for schedule(dynamic, chunk) if (!omp_in_parallel())
        for (int32_t g = 0; g < groups; g++)
            tiles(W, g, &a, T, Y, ldy);
        return;
    }
    act_q a = act_layout(T, W->cols, scratch, amx);
    #pragma omp parallel if (!omp_in_parallel())
    {
        #pragma omp for schedule(static)
        for (int t = 0; t < T; t++)
            quantize_token(&a, X, ldx, t, W->cols);
        /* (the implied barrier: every token is quantized before any product) */
        #pragma omp for schedule(dynamic, chunk)
        for (int32_t g = 0; g < groups; g++)
            tiles(W, g, &a, T, Y, ldy);
    }
}

void qmat_matmul_portable(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch)
{
    assert(W->cols % QMAT_BLOCK == 0 && W->rows % QMAT_ROWS == 0);
    if (T <= 0)
        return;
    act_q a = quantize_acts(X, ldx, T, W->cols, scratch, 0);
    for (int32_t g = 0; g < W->rows / QMAT_ROWS; g++)
        group_tile_portable(W, g, &a, 0, Y, ldy, T);
}
