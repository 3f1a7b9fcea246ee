/*
 * gen_cuda.c - the CUDA path of `selfspec generate` (see gen_cuda.h): the
 * one engine loop over the CUDA backend (model/backend.h).
 */
#include "gen_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "model/backend.h"
#include "model/cuda_backend.h"
#include "util/util.h"

int gen_cuda_check_device(int device, char *err, size_t errlen)
{
    if (!cuda_available())
        return util_err(err, errlen, "no CUDA device available (this build has no CUDA backend: nvcc was not "
                        "found when it was compiled)");
    int n = cuda_device_count();
    if (n == 0)
        return util_err(err, errlen, "no CUDA device available");
    if (device < 0 || device >= n)
        return util_err(err, errlen, "no CUDA device available with index %d (%d visible)", device, n);
    return 0;
}

model_backend *gen_cuda_backend(const model *m, int device, engine_params *ep, char *err, size_t errlen)
{
    if (gen_cuda_check_device(device, err, errlen) != 0)
        return NULL;
    /* SELFSPEC_CUDA_GRAPHS=0: every pass launched directly (the GPU check
     * compares that with graph replay); the library reads no environment */
    const char *gv = getenv("SELFSPEC_CUDA_GRAPHS");
    backend_cuda_params bp = {.device = device, .max_tokens = engine_pass_tokens(ep),
                              .ctx = ep->ctx + SPEC_MAX_DRAFT + 2, .kv_mem = ep->kv_mem,
                              .graphs = !(gv && !strcmp(gv, "0")), .cm = NULL};
    ep->backend = backend_cuda_open_params(m, &bp, err, errlen);
    return ep->backend;
}

int gen_cuda(const model *m, int device, int32_t ctx, const skip_set *ss, const spec_params *sp,
             const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
             void *emit_ctx, gen_stats *st, spec_stats *sps, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    if (sps)
        memset(sps, 0, sizeof *sps);
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = 1;
    p.ctx = ctx;
    p.mode = ss || sp->draft != SPEC_DRAFT_LAYERS ? ENGINE_SPEC : ENGINE_PLAIN;   /* as engine_generate */
    p.ss = ss;
    p.sp = *sp;
    p.calibrate = 0;
    p.kv_mem = (size_t)(n_prompt + gp->max_tokens + 1) * 2 * (size_t)m->config.n_layers *
               (size_t)m->config.kv_dim * sizeof(kv_elem);
    if (!gen_cuda_backend(m, device, &p, err, errlen))
        return -1;
    int rc = engine_run(m, &p, 1, prompt, n_prompt, gp, emit, emit_ctx, NULL, st, sps, err, errlen);
    backend_cuda_close(p.backend);
    return rc;
}
