/*
 * act.h - the MLP's gated activations, g = act(g) * u over a row: SiLU
 * (SwiGLU: Llama, Qwen) and GELU with the tanh approximation (GeGLU:
 * Gemma), both as x * sigmoid(y) with the kernels' own exponential
 * (expneg.h), vectorized on AVX2 + FMA.
 *
 * Exactness: each output is a function of its own g and u alone, the same
 * bits in a vector lane and in the scalar tail and in every build (the
 * sigmoid is computed one way: e = e^-|y| and x * (y >= 0 ? 1 : e) / (1 + e)).
 * So a token's activations do not depend on its batch. Against libm's expf
 * and tanhf the results differ by a few ulp (relative error ~3e-7).
 */
#ifndef SELFSPEC_ACT_H
#define SELFSPEC_ACT_H

#include <stdint.h>

enum { ACT_SILU = 0, ACT_GELU_TANH = 1 };

/* g[i] = act(g[i]) * u[i] for i < n, act one of ACT_*. */
void act_gated(int act, float *g, const float *u, int32_t n);

#endif
