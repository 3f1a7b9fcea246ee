/*
 * qmat.c - U8A weight matrices: packing, quantization and the products
 * X . W^T (see qmat.h for the format and the exactness argument).
 *
 * The few-token kernel uses AVX512-VNNI (vpdpbusd: unsigned weight bytes
 * times signed activation bytes, summed in int32) where the compiler
 * targets it, and an equivalent portable loop elsewhere; both do the same
 * integer sums and the same float operations in the same order.
 */
#include "kernels/qmat.h"

#include <assert.h>
#include <math.h>
#include <string.h>
#include <cblas.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#define QMAT_VNNI 1
#endif

#include "kernels/f16.h"
#include "util/util.h"

#define QMAT_TILE 8      /* tokens sharing one pass over a weight panel */
#define QMAT_PANEL 128   /* rows dequantized per BLAS call (multiple of 16) */
#define GROUP_BYTES (QMAT_ROWS * QMAT_BLOCK)   /* q bytes of one block of a group */

size_t qmat_q_bytes(int32_t rows, int32_t cols)
{
    return (size_t)rows * (size_t)cols;
}

size_t qmat_dm_bytes(int32_t rows, int32_t cols)
{
    return (size_t)rows * (size_t)(cols / QMAT_BLOCK) * sizeof(float);
}

/* Offset of element (r, c) in the interleaved q array. */
static inline size_t q_index(int32_t nb, int32_t r, int32_t c)
{
    size_t g = (size_t)(r / QMAT_ROWS), rr = (size_t)(r % QMAT_ROWS);
    size_t b = (size_t)(c / QMAT_BLOCK), c4 = (size_t)((c % QMAT_BLOCK) / 4), k = (size_t)(c % 4);
    return ((g * nb + b) * 8 + c4) * 64 + rr * 4 + k;
}

static inline size_t dm_index(int32_t nb, int32_t r, int32_t b)
{
    return ((size_t)(r / QMAT_ROWS) * nb + b) * QMAT_ROWS + (size_t)(r % QMAT_ROWS);
}

void qmat_set_row(const qmat *W, int32_t r, const uint8_t *levels, const float *d, const float *m)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    uint8_t *q = (uint8_t *)W->q;
    for (int32_t c = 0; c < W->cols; c++)
        q[q_index(nb, r, c)] = levels[c];
    for (int32_t b = 0; b < nb; b++) {
        ((float *)W->d)[dm_index(nb, r, b)] = d[b];
        ((float *)W->m)[dm_index(nb, r, b)] = m[b];
    }
}

void qmat_get_row(const qmat *W, int32_t r, uint8_t *levels, float *d, float *m)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    for (int32_t c = 0; c < W->cols; c++)
        levels[c] = W->q[q_index(nb, r, c)];
    for (int32_t b = 0; b < nb; b++) {
        d[b] = W->d[dm_index(nb, r, b)];
        m[b] = W->m[dm_index(nb, r, b)];
    }
}

int qmat_gather(const qmat *src, const int32_t *rows, int32_t n, qmat *dst)
{
    if (n <= 0 || n % QMAT_ROWS != 0)
        return -1;
    int32_t nb = src->cols / QMAT_BLOCK;
    dst->rows = n;
    dst->cols = src->cols;
    dst->q = alignedCheck(qmat_q_bytes(n, src->cols));
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
    int32_t nb = W->cols / QMAT_BLOCK, rr = r % QMAT_ROWS;
    const uint8_t *qg = W->q + (size_t)(r / QMAT_ROWS) * nb * GROUP_BYTES;
    for (int32_t b = 0; b < nb; b++) {
        float d = W->d[dm_index(nb, r, b)], m = W->m[dm_index(nb, r, b)];
        const uint8_t *qb = qg + (size_t)b * GROUP_BYTES + (size_t)rr * 4;
        float *o = out + (size_t)b * QMAT_BLOCK;
        for (int c4 = 0; c4 < 8; c4++)          /* 4 columns of this row per 64-byte quad */
            for (int k = 0; k < 4; k++)
                o[c4 * 4 + k] = (float)qb[c4 * 64 + k] * d + m;
    }
}

size_t qmat_scratch_bytes(int32_t cols, int T)
{
    size_t nb = (size_t)(cols / QMAT_BLOCK);
    size_t xq = ((size_t)T * cols + 63) & ~(size_t)63;
    return xq + 2 * (size_t)T * nb * sizeof(float);
}

/* ------------------------------------------------------------------------ */
/* Activation quantization: per token, per block of 32, symmetric int8.      */

typedef struct {
    int8_t *xq;    /* (T, cols) */
    float *sx;     /* (T, nb) block scale */
    float *sxs;    /* (T, nb) block scale times the sum of the block's xq */
} act_q;

/* One block of 32 activations: q = round(x * 127 / amax), as int8. */
static inline void quantize_block(const float *x, int8_t *q, float *sx, float *sxs)
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
    /* scales rounded to half precision, as in llama.cpp's Q8_1 */
    float s = amax / 127.0f;
    *sx = f16_to_f32(f16_from_f32(s));
    *sxs = f16_to_f32(f16_from_f32(s * (float)sum));
}

static act_q quantize_acts(const float *X, int ldx, int T, int32_t cols, void *scratch)
{
    int32_t nb = cols / QMAT_BLOCK;
    size_t xq_bytes = ((size_t)T * cols + 63) & ~(size_t)63;
    act_q a = {scratch, (float *)((char *)scratch + xq_bytes), NULL};
    a.sxs = a.sx + (size_t)T * nb;
    for (int t = 0; t < T; t++)
        for (int32_t b = 0; b < nb; b++)
            quantize_block(X + (size_t)t * ldx + b * QMAT_BLOCK, a.xq + (size_t)t * cols + b * QMAT_BLOCK,
                           &a.sx[(size_t)t * nb + b], &a.sxs[(size_t)t * nb + b]);
    return a;
}

/* ------------------------------------------------------------------------ */
/* Few-token kernel: one 16-row group against NT tokens.                     */

#ifdef QMAT_VNNI
static inline __attribute__((always_inline)) void
group_tile(const qmat *W, int32_t g, const act_q *a, int32_t t0, float *Y, int ldy, const int NT)
{
    int32_t nb = W->cols / QMAT_BLOCK;
    const uint8_t *qg = W->q + (size_t)g * nb * GROUP_BYTES;
    const float *dg = W->d + (size_t)g * nb * QMAT_ROWS, *mg = W->m + (size_t)g * nb * QMAT_ROWS;
    __m512 acc[QMAT_TILE];
    for (int j = 0; j < NT; j++)
        acc[j] = _mm512_setzero_ps();
    for (int32_t b = 0; b < nb; b++) {
        __m512i w[8];
        for (int k = 0; k < 8; k++)
            w[k] = _mm512_load_si512((const void *)(qg + (size_t)b * GROUP_BYTES + 64 * k));
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
#else
static inline void group_tile(const qmat *W, int32_t g, const act_q *a, int32_t t0, float *Y,
                              int ldy, const int NT)
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
                    ia += (int32_t)W->q[q_index(nb, r, b * QMAT_BLOCK + i)] *
                          a->xq[t * W->cols + (size_t)b * QMAT_BLOCK + i];
                float scale = W->d[dm_index(nb, r, b)] * a->sx[t * nb + b];
                acc = fmaf((float)ia, scale, acc);
                acc = fmaf(W->m[dm_index(nb, r, b)], a->sxs[t * nb + b], acc);
            }
            Y[t * ldy + r] = acc;
        }
    }
}
#endif

/* All tiles of T tokens for group g, each tile a constant-count call. */
static void group_tiles(const qmat *W, int32_t g, const act_q *a, int T, float *Y, int ldy)
{
    for (int t0 = 0; t0 < T; t0 += QMAT_TILE) {
        switch (T - t0 < QMAT_TILE ? T - t0 : QMAT_TILE) {
        case 1: group_tile(W, g, a, t0, Y, ldy, 1); break;
        case 2: group_tile(W, g, a, t0, Y, ldy, 2); break;
        case 3: group_tile(W, g, a, t0, Y, ldy, 3); break;
        case 4: group_tile(W, g, a, t0, Y, ldy, 4); break;
        case 5: group_tile(W, g, a, t0, Y, ldy, 5); break;
        case 6: group_tile(W, g, a, t0, Y, ldy, 6); break;
        case 7: group_tile(W, g, a, t0, Y, ldy, 7); break;
        default: group_tile(W, g, a, t0, Y, ldy, 8); break;
        }
    }
}

void qmat_matmul_small(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch)
{
    act_q a = quantize_acts(X, ldx, T, W->cols, scratch);
    int32_t groups = W->rows / QMAT_ROWS;
    #pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int32_t g = 0; g < groups; g++)
        group_tiles(W, g, &a, T, Y, ldy);
}

/* ------------------------------------------------------------------------ */
/* Long blocks: dequantize panels of rows and let BLAS multiply.             */

void qmat_matmul_blas(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy)
{
    int32_t n_panels = (W->rows + QMAT_PANEL - 1) / QMAT_PANEL;
    #pragma omp parallel if (!omp_in_parallel())
    {
        float *panel = alignedCheck((size_t)QMAT_PANEL * W->cols * sizeof(float));
        #pragma omp for schedule(dynamic, 1)
        for (int32_t p = 0; p < n_panels; p++) {
            int32_t r0 = p * QMAT_PANEL;
            int32_t np = W->rows - r0 < QMAT_PANEL ? W->rows - r0 : QMAT_PANEL;
            for (int32_t i = 0; i < np; i++)
                qmat_dequant_row(W, r0 + i, panel + (size_t)i * W->cols);
            /* Y[:, r0:r0+np] = X (T, cols) . panel(np, cols)^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, np, W->cols, 1.0f,
                        X, ldx, panel, W->cols, 0.0f, Y + r0, ldy);
        }
        free(panel);
    }
}

void qmat_matmul(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch)
{
    assert(W->cols % QMAT_BLOCK == 0 && W->rows % QMAT_ROWS == 0);
    if (T <= 0)
        return;
    if (T >= QMAT_BLAS_MIN_T)
        qmat_matmul_blas(W, X, ldx, T, Y, ldy);
    else
        qmat_matmul_small(W, X, ldx, T, Y, ldy, scratch);
}
