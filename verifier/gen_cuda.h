/*
 * gen_cuda.h - `--device cuda[:N]`: the one engine loop (engine/engine.h)
 * over the CUDA backend (model/backend.h), for `generate` and for the
 * engines of `batch`, `serve` and `worker`.
 */
#ifndef SELFSPEC_GEN_CUDA_H
#define SELFSPEC_GEN_CUDA_H

#include "decode/generate.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "engine/engine.h"
#include "model/model.h"

/* Check that device can be used: 0, or -1 + "no CUDA device available"
 * (with the reason: none visible, or a build without CUDA). */
int gen_cuda_check_device(int device, char *err, size_t errlen);

/* Open the CUDA backend on device for an engine with parameters ep (its
 * pass size, context and kv_mem) and set ep->backend; NULL with err when
 * it cannot. Close it with backend_cuda_close after engine_free. */
model_backend *gen_cuda_backend(const model *m, int device, engine_params *ep, char *err, size_t errlen);

/* One prompt through the engine on the GPU, as engine_generate: plain when
 * ss == NULL, else self-spec with ss's mask (the full head: the device has
 * no pruned head), the adaptive exit and sampling of the engine. */
int gen_cuda(const model *m, int device, int32_t ctx, const skip_set *ss, const spec_params *sp,
             const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
             void *emit_ctx, gen_stats *st, spec_stats *sps, char *err, size_t errlen);

#endif
