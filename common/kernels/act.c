/*
 * act.c - gated activations (see act.h): SiLU(x) = x * sigmoid(x) and
 * GELU(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))) = x * sigmoid(2k (x +
 * 0.044715 x^3)), k = sqrt(2 / pi), each times the "up" projection.
 */
#include "kernels/act.h"

#include <math.h>

#include "kernels/expneg.h"

#define GELU_2K 1.5957691216057308f   /* 2 * sqrt(2 / pi) */
#define GELU_C 0.044715f

/* The sigmoid's argument for x. */
static inline float act_arg(int act, float x)
{
    return act == ACT_SILU ? x : GELU_2K * fmaf(GELU_C * x, x * x, x);
}

/* x * sigmoid(y): e = e^-|y|, then x / (1 + e) or x * e / (1 + e). */
static inline float act_one(float x, float y)
{
    float e = expneg1(-fabsf(y));
    return x * (y >= 0.0f ? 1.0f : e) / (1.0f + e);
}

void act_gated(int act, float *g, const float *u, int32_t n)
{
    int32_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i), y = x;
        if (act != ACT_SILU) {
            __m256 cx = _mm256_mul_ps(_mm256_set1_ps(GELU_C), x);
            y = _mm256_mul_ps(_mm256_set1_ps(GELU_2K), _mm256_fmadd_ps(cx, _mm256_mul_ps(x, x), x));
        }
        __m256 e = expneg8(_mm256_or_ps(y, sign));                     /* e^-|y| */
        __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(y, zero, _CMP_GE_OQ));
        __m256 s = _mm256_div_ps(_mm256_mul_ps(x, num), _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++)
        g[i] = act_one(g[i], act_arg(act, g[i])) * u[i];
}
