/*
 * f16.h - IEEE half-precision storage helpers for the KV cache: scalar
 * conversions and the two vector loops attention needs (dot product and
 * axpy against a half-precision row), with F16C/AVX-512 where available.
 */
#ifndef SELFSPEC_F16_H
#define SELFSPEC_F16_H

#include <stdint.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif
#include "format/gguf.h"

typedef uint16_t f16_t;

static inline f16_t f16_from_f32(float x)
{
#if defined(__F16C__)
    return (f16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
#else
    return gguf_f32_to_f16(x);
#endif
}

static inline float f16_to_f32(f16_t h)
{
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return gguf_f16_to_f32(h);
#endif
}

/* sum_i a[i] * b[i], n a multiple of 16. */
static inline float f16_dot(const float *a, const f16_t *b, int n)
{
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i))), acc);
    return _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
    /* two chains of 8 lanes, then a fixed reduction: the same order for every call */
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))),
                               acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
                               _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8))), acc1);
    }
    __m256 s8 = _mm256_add_ps(acc0, acc1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
#else
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * f16_to_f32(b[i]);
    return s;
#endif
}

/* y[i] += w * x[i], n a multiple of 16. */
static inline void f16_axpy(float *y, float w, const f16_t *x, int n)
{
#if defined(__AVX512F__)
    __m512 wv = _mm512_set1_ps(w);
    for (int i = 0; i < n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(wv, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))),
                                                _mm512_loadu_ps(y + i)));
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
    __m256 wv = _mm256_set1_ps(w);
    for (int i = 0; i < n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
#else
    for (int i = 0; i < n; i++)
        y[i] += w * f16_to_f32(x[i]);
#endif
}

#endif
