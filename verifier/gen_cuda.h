/*
 * gen_cuda.h - `selfspec generate --device cuda[:N]`: greedy plain or
 * self-speculative decoding on the CUDA backend (cuda_backend.h), with the
 * same callbacks and statistics as the CPU loops.
 */
#ifndef SELFSPEC_GEN_CUDA_H
#define SELFSPEC_GEN_CUDA_H

#include "decode/generate.h"
#include "model/model.h"
#include "decode/skipset.h"
#include "decode/spec.h"

/* Check that device can be used: 0, or -1 + "no CUDA device available"
 * (with the reason: none visible, or a build without CUDA). */
int gen_cuda_check_device(int device, char *err, size_t errlen);

/* Copy m to the device, then decode greedily: plain when ss == NULL, else
 * self-spec drafting a fixed max_draft tokens with ss's mask (the GPU loop
 * has no adaptive exit and no pruned head). Fills st (and sps for
 * self-spec: drafted, accepted, verifications). */
int gen_cuda(const model *m, int device, int32_t ctx, const skip_set *ss, int32_t max_draft,
             const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
             void *emit_ctx, gen_stats *st, spec_stats *sps, char *err, size_t errlen);

#endif
