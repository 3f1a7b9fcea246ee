/*
 * attn.c - the attention kernel (see attn.h): scores of query heads against
 * half-precision keys, a softmax with the kernel's own exponential, and the
 * weighted sum of half-precision values.
 *
 * Scores are computed four keys at a time (one chain of fused multiply-adds
 * per key over 8-lane slices, a shared reduction); the value sum keeps a
 * head's 64-wide slice in registers over all keys. On AVX-512 up to four
 * queries go through each step together (ATTN_QB): the 8-lane slices of two
 * keys side by side in one 16-lane register, a value row widened once for
 * all of them. That is what makes a verification block's, a prompt chunk's
 * or a GQA group's attention cheaper than its queries one by one (a 9-token
 * block at 512 positions on SmolLM2: 2.07 -> 1.76 single-token steps, Xeon,
 * 2 threads, docs/performance.md). On AVX2+F16C+FMA one query at a time,
 * the same arithmetic; elsewhere plain C with the same structure.
 *
 * Every lane's sequence of operations is the same on every path of a build
 * and whichever queries share a call, so results never depend on grouping.
 */
#include "kernels/attn.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "kernels/expneg.h"

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define ATTN_AVX2 1
#include <immintrin.h>
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define ATTN_AVX512 1
#endif
#endif

/* queries that go through the score and value loops together */
#ifdef ATTN_AVX512
#define ATTN_QB 4
#else
#define ATTN_QB 1
#endif

float attn_exp(float x)
{
    return expneg1(x);
}

#ifdef ATTN_AVX2
static inline float hsum8(__m256 s8)
{
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}
#endif

/* Ask for the key and value rows of keys i..i+n-1 (< end) before they are
 * needed: pool blocks lie anywhere, so the hardware's prefetcher cannot
 * guess them (measured on the 2-core AVX2 machine: 60 -> 44 ns per key and
 * head from memory). The score loops ask ATTN_AHEAD keys ahead; asking for
 * a whole run at once stalled the core on outstanding misses (6% of a
 * 32-sequence step on the Xeon). */
#define ATTN_AHEAD 8
static inline void prefetch_rows(const f16_t *const *krows, const f16_t *const *vrows, int32_t i, int32_t n,
                                 int32_t end, int32_t hd)
{
#if defined(__GNUC__)
    for (int32_t j = i; j < i + n && j < end; j++)
        for (int32_t b = 0; b < hd * (int32_t)sizeof(f16_t); b += 64) {
            __builtin_prefetch((const char *)krows[j] + b, 0, 3);
            __builtin_prefetch((const char *)vrows[j] + b, 0, 2);
        }
#else
    (void)krows, (void)vrows, (void)i, (void)n, (void)end, (void)hd;
#endif
}

/* out[j] = scale * (q . k[j]) for the four key rows k[0..3]. Each key's
 * dot product is one chain of fused multiply-adds over 8-lane slices in
 * order, then a fixed reduction tree; a key's result is the same whichever
 * keys share its call (a short group repeats a row and drops its result). */
static inline void dot4(const float *q, const f16_t *const k[4], int32_t hd, float scale, float out[4])
{
#ifdef ATTN_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int32_t i = 0; i < hd; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k[0] + i))), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k[1] + i))), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k[2] + i))), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k[3] + i))), a3);
    }
    /* lanes (l, l+4) of each key, then pairs, then the last pair: the same tree for every key */
    __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(a1), _mm256_extractf128_ps(a1, 1));
    __m128 s2 = _mm_add_ps(_mm256_castps256_ps128(a2), _mm256_extractf128_ps(a2, 1));
    __m128 s3 = _mm_add_ps(_mm256_castps256_ps128(a3), _mm256_extractf128_ps(a3, 1));
    __m128 t = _mm_hadd_ps(_mm_hadd_ps(s0, s1), _mm_hadd_ps(s2, s3));
    _mm_storeu_ps(out, _mm_mul_ps(t, _mm_set1_ps(scale)));
#else
    for (int j = 0; j < 4; j++) {
        float s = 0.0f;
        for (int32_t i = 0; i < hd; i++)
            s += q[i] * f16_to_f32(k[j][i]);
        out[j] = s * scale;
    }
#endif
}

/* The largest of x[0..n), n >= 1 (scores are never NaN: finite queries and
 * half-precision keys). Lanes of maxima, then their maximum: the order does
 * not matter to a maximum. */
static float row_max(const float *x, int32_t n)
{
    float mx = x[0];
    int32_t i = 1;
#ifdef ATTN_AVX2
    if (n >= 9) {
        __m256 m8 = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + i));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        mx = _mm_cvtss_f32(m4);
    }
#endif
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* sc[i] = e^(sc[i] - mx); returns their sum, in a fixed order for n */
static float exp_sum(float *sc, int32_t n, float mx)
{
    int32_t i = 0;
    float sum = 0.0f;
#ifdef ATTN_AVX2
    __m256 acc = _mm256_setzero_ps(), m = _mm256_set1_ps(mx);
    for (; i + 8 <= n; i += 8) {
        __m256 e = expneg8(_mm256_sub_ps(_mm256_loadu_ps(sc + i), m));
        _mm256_storeu_ps(sc + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum8(acc);
#endif
    for (; i < n; i++) {
        sc[i] = attn_exp(sc[i] - mx);
        sum += sc[i];
    }
    return sum;
}

/* sc[i] = scale * (q . key i) for keys lo..hi-1, one query by dot4 */
static void score_one(const float *q, float *sc, int32_t lo, int32_t hi, const f16_t *const *krows,
                      const f16_t *const *vrows, int32_t hd, float scale)
{
    prefetch_rows(krows, vrows, lo, ATTN_AHEAD, hi, hd);
    for (int32_t g = lo; g < hi; g += 4) {
        prefetch_rows(krows, vrows, g + ATTN_AHEAD, 4, hi, hd);
        const f16_t *k4[4];
        float s4[4];
        for (int j = 0; j < 4; j++)
            k4[j] = krows[g + j < hi ? g + j : hi - 1];
        dot4(q, k4, hd, scale, s4);
        for (int j = 0; j < 4 && g + j < hi; j++)
            sc[g + j] = s4[j];
    }
}

/* acc[0..hd) += sum_i w[i] * V[i] for keys a..b-1 in index order, one
 * query: every lane is one chain of fused multiply-adds from its value in
 * acc, 64 lanes in registers at a time. */
static void value_one(float *acc, const float *w, const f16_t *const *vrows, int32_t a, int32_t b, int32_t hd)
{
    if (a >= b)
        return;
    for (int32_t j0 = 0; j0 < hd; j0 += 64) {
        int32_t width = hd - j0 < 64 ? hd - j0 : 64;
#ifdef ATTN_AVX2
        int32_t nv = width / 8;   /* 8-lane slices in this chunk (2..8) */
        __m256 c[8];
        for (int32_t u = 0; u < 8; u++)
            c[u] = u < nv ? _mm256_loadu_ps(acc + j0 + 8 * u) : _mm256_setzero_ps();
        for (int32_t i = a; i < b; i++) {
            const f16_t *v = vrows[i] + j0;
            __m256 wv = _mm256_set1_ps(w[i]);
            if (nv == 8) {   /* the common head size: all eight slices in registers */
                for (int32_t u = 0; u < 8; u++)
                    c[u] = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * u))), c[u]);
            } else {
                for (int32_t u = 0; u < nv; u++)
                    c[u] = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * u))), c[u]);
            }
        }
        for (int32_t u = 0; u < nv; u++)
            _mm256_storeu_ps(acc + j0 + 8 * u, c[u]);
#else
        for (int32_t i = a; i < b; i++)
            for (int32_t d = j0; d < j0 + width; d++)
                acc[d] += w[i] * f16_to_f32(vrows[i][d]);
#endif
    }
}

#ifdef ATTN_AVX512
#define ATTN_INLINE static inline __attribute__((always_inline))

/* The scores of nq (2..4, a constant where inlined) queries against four
 * keys: out[m][j] = scale * (q[m] . k[j]), each by dot4's arithmetic. Keys
 * j and j+1 share a 16-lane register (8 lanes each), so a lane's chain of
 * multiply-adds is dot4's; the reduction regroups the 4-lane quarters and
 * then runs dot4's tree. */
ATTN_INLINE void dot4_multi(const int nq, const float *const *q, const f16_t *const k[4], int32_t hd, float scale,
                            float out[ATTN_QB][4])
{
    __m512 a[ATTN_QB][2];
    for (int m = 0; m < nq; m++)
        a[m][0] = a[m][1] = _mm512_setzero_ps();
    for (int32_t i = 0; i < hd; i += 8) {
        __m256i k01 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(k[0] + i))),
                                              _mm_loadu_si128((const __m128i *)(k[1] + i)), 1);
        __m256i k23 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(k[2] + i))),
                                              _mm_loadu_si128((const __m128i *)(k[3] + i)), 1);
        __m512 f01 = _mm512_cvtph_ps(k01), f23 = _mm512_cvtph_ps(k23);
        for (int m = 0; m < nq; m++) {
            __m512 qv = _mm512_broadcast_f32x8(_mm256_loadu_ps(q[m] + i));
            a[m][0] = _mm512_fmadd_ps(qv, f01, a[m][0]);
            a[m][1] = _mm512_fmadd_ps(qv, f23, a[m][1]);
        }
    }
    for (int m = 0; m < nq; m++) {
        /* a[m][0] = (k0 low half, k0 high half, k1 low, k1 high), 4 lanes each */
        __m512 lo = _mm512_shuffle_f32x4(a[m][0], a[m][1], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 hi = _mm512_shuffle_f32x4(a[m][0], a[m][1], _MM_SHUFFLE(3, 1, 3, 1));
        __m512 sum = _mm512_add_ps(lo, hi);   /* dot4's s0..s3 */
        __m128 s0 = _mm512_castps512_ps128(sum), s1 = _mm512_extractf32x4_ps(sum, 1);
        __m128 s2 = _mm512_extractf32x4_ps(sum, 2), s3 = _mm512_extractf32x4_ps(sum, 3);
        __m128 t = _mm_hadd_ps(_mm_hadd_ps(s0, s1), _mm_hadd_ps(s2, s3));
        _mm_storeu_ps(out[m], _mm_mul_ps(t, _mm_set1_ps(scale)));
    }
}

/* score_one for nq queries at once over the keys from..to-1 (the union of
 * their ranges; keys outside a query's own range are scored too and never read) */
ATTN_INLINE void score_multi(const int nq, const float *const *q, float *const *sc, int32_t from, int32_t to,
                             const f16_t *const *krows, const f16_t *const *vrows, int32_t hd, float scale)
{
    prefetch_rows(krows, vrows, from, ATTN_AHEAD, to, hd);
    for (int32_t g = from; g < to; g += 4) {
        prefetch_rows(krows, vrows, g + ATTN_AHEAD, 4, to, hd);
        const f16_t *k4[4];
        float s[ATTN_QB][4];
        for (int j = 0; j < 4; j++)
            k4[j] = krows[g + j < to ? g + j : to - 1];
        dot4_multi(nq, q, k4, hd, scale, s);
        for (int m = 0; m < nq; m++)
            for (int j = 0; j < 4 && g + j < to; j++)
                sc[m][g + j] = s[m][j];
    }
}

/* value_one for nq queries at once: a value row is widened once for all;
 * each lane's chain is value_one's (a 16-lane multiply-add is eight-lane
 * ones side by side). */
ATTN_INLINE void value_multi(const int nq, float *const *acc, const float *const *w, const f16_t *const *vrows,
                             int32_t a, int32_t b, int32_t hd)
{
    for (int32_t j0 = 0; j0 < hd; j0 += 64) {
        int32_t nv = (hd - j0 < 64 ? hd - j0 : 64) / 16;   /* 16-lane slices in this chunk (1..4) */
        __m512 c[ATTN_QB][4];
        for (int m = 0; m < nq; m++)
            for (int u = 0; u < 4; u++)
                c[m][u] = u < nv ? _mm512_loadu_ps(acc[m] + j0 + 16 * u) : _mm512_setzero_ps();
        for (int32_t i = a; i < b; i++) {
            const f16_t *v = vrows[i] + j0;
            if (nv == 4) {   /* the common head sizes: all four slices in registers */
                __m512 vv[4];
                for (int u = 0; u < 4; u++)
                    vv[u] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + 16 * u)));
                for (int m = 0; m < nq; m++) {
                    __m512 wv = _mm512_set1_ps(w[m][i]);
                    for (int u = 0; u < 4; u++)
                        c[m][u] = _mm512_fmadd_ps(wv, vv[u], c[m][u]);
                }
            } else {
                for (int u = 0; u < nv; u++) {
                    __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + 16 * u)));
                    for (int m = 0; m < nq; m++)
                        c[m][u] = _mm512_fmadd_ps(_mm512_set1_ps(w[m][i]), vv, c[m][u]);
                }
            }
        }
        for (int m = 0; m < nq; m++)
            for (int u = 0; u < nv; u++)
                _mm512_storeu_ps(acc[m] + j0 + 16 * u, c[m][u]);
    }
}
#endif

/* The scores of a group of nq <= ATTN_QB queries over their own key ranges */
static void score_group(int nq, const float *const *q, float *const *sc, const int32_t *lo, const int32_t *hi,
                        const f16_t *const *krows, const f16_t *const *vrows, int32_t hd, float scale)
{
#ifdef ATTN_AVX512
    int32_t from = lo[0], to = hi[0];
    for (int j = 1; j < nq; j++) {
        from = lo[j] < from ? lo[j] : from;
        to = hi[j] > to ? hi[j] : to;
    }
    switch (nq) {   /* each count its own unrolled code */
    case 2: score_multi(2, q, sc, from, to, krows, vrows, hd, scale); return;
    case 3: score_multi(3, q, sc, from, to, krows, vrows, hd, scale); return;
    case 4: score_multi(4, q, sc, from, to, krows, vrows, hd, scale); return;
    default: break;
    }
#endif
    for (int m = 0; m < nq; m++)
        score_one(q[m], sc[m], lo[m], hi[m], krows, vrows, hd, scale);
}

/* acc[m] += the weighted values of keys a..b-1 for the nq <= ATTN_QB queries */
static void value_group(int nq, float *const *acc, const float *const *w, const f16_t *const *vrows, int32_t a,
                        int32_t b, int32_t hd)
{
#ifdef ATTN_AVX512
    switch (nq) {
    case 2: value_multi(2, acc, w, vrows, a, b, hd); return;
    case 3: value_multi(3, acc, w, vrows, a, b, hd); return;
    case 4: value_multi(4, acc, w, vrows, a, b, hd); return;
    default: break;
    }
#endif
    for (int m = 0; m < nq; m++)
        value_one(acc[m], w[m], vrows, a, b, hd);
}

void attn_block(const attn_queries *qs, int32_t hd, const attn_run *runs, int32_t n_runs, int32_t n_keys,
                float scale, float *scores, const f16_t **rows)
{
    assert(qs->nt >= 1 && qs->nh >= 1 && hd % 16 == 0 && hd <= ATTN_MAX_HEAD_DIM && n_keys >= 1);
    /* every key row, then every value row, in position order */
    const f16_t **krows = rows, **vrows = rows + n_keys;
    int32_t n = 0;
    for (int32_t r = 0; r < n_runs; r++)
        for (int32_t j = 0; j < runs[r].n; j++, n++) {
            krows[n] = runs[r].k + (size_t)j * runs[r].stride;
            vrows[n] = runs[r].v + (size_t)j * runs[r].stride;
        }
    assert(n == n_keys);
    int32_t n_q = qs->nt * qs->nh;
    for (int32_t m0 = 0; m0 < n_q; m0 += ATTN_QB) {
        /* queries m0..m0+nq-1 (token-major) go through each step together */
        int nq = n_q - m0 < ATTN_QB ? (int)(n_q - m0) : ATTN_QB;
        const float *q[ATTN_QB], *w[ATTN_QB];
        float *sc[ATTN_QB], *out[ATTN_QB];
        int32_t lo[ATTN_QB], hi[ATTN_QB], shared_lo = 0, shared_hi = n_keys;
        for (int j = 0; j < nq; j++) {
            int32_t m = m0 + j, t = m / qs->nh, h = m % qs->nh;
            q[j] = qs->q + (size_t)t * qs->q_stride + (size_t)h * hd;
            out[j] = qs->out + (size_t)t * qs->out_stride + (size_t)h * hd;
            w[j] = sc[j] = scores + (size_t)m * n_keys;
            lo[j] = qs->lo[t], hi[j] = qs->hi[t];
            assert(0 <= lo[j] && lo[j] < hi[j] && hi[j] <= n_keys);
            shared_lo = lo[j] > shared_lo ? lo[j] : shared_lo;
            shared_hi = hi[j] < shared_hi ? hi[j] : shared_hi;
        }
        score_group(nq, q, sc, lo, hi, krows, vrows, hd, scale);
        float inv[ATTN_QB];
        for (int j = 0; j < nq; j++) {   /* softmax weights, in place */
            float mx = row_max(sc[j] + lo[j], hi[j] - lo[j]);
            inv[j] = 1.0f / exp_sum(sc[j] + lo[j], hi[j] - lo[j], mx);
            memset(out[j], 0, (size_t)hd * sizeof(float));
        }
        /* each query's values in index order: its own keys before the ones
         * all share, the shared ones together, then its own after them */
        if (shared_lo >= shared_hi) {   /* nothing shared: each alone */
            for (int j = 0; j < nq; j++)
                value_one(out[j], w[j], vrows, lo[j], hi[j], hd);
        } else {
            for (int j = 0; j < nq; j++)
                value_one(out[j], w[j], vrows, lo[j], shared_lo, hd);
            value_group(nq, out, w, vrows, shared_lo, shared_hi, hd);
            for (int j = 0; j < nq; j++)
                value_one(out[j], w[j], vrows, shared_hi, hi[j], hd);
        }
        for (int j = 0; j < nq; j++)
            for (int32_t d = 0; d < hd; d++)
                out[j][d] *= inv[j];
    }
}

void attn_heads(const float *q, int32_t nh, int32_t hd, const attn_run *runs, int32_t n_runs, int32_t n_keys,
                float scale, float *scores, const f16_t **rows, float *out)
{
    int32_t lo = 0, hi = n_keys;
    attn_queries qs = {.q = q, .out = out, .q_stride = nh * hd, .out_stride = nh * hd, .nt = 1, .nh = nh,
                       .lo = &lo, .hi = &hi};
    attn_block(&qs, hd, runs, n_runs, n_keys, scale, scores, rows);
}
