/*
 * gen_cuda.c - the CUDA path of `selfspec generate` (see gen_cuda.h).
 */
#include "gen_cuda.h"

#include <string.h>

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

static int stop_cb(const void *ctx, int32_t token)
{
    return gen_is_stop((const gen_params *)ctx, token);
}

int gen_cuda(const model *m, int device, int32_t ctx, const skip_set *ss, int32_t max_draft,
             const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
             void *emit_ctx, gen_stats *st, spec_stats *sps, char *err, size_t errlen)
{
    int rc = -1;
    memset(st, 0, sizeof *st);
    if (sps)
        memset(sps, 0, sizeof *sps);
    if (gp->sampling.temperature > 0.0f)
        return util_err(err, errlen, "--device cuda decodes greedily only (use --temperature 0)");
    if (gen_cuda_check_device(device, err, errlen) != 0)
        return -1;
    int32_t k = max_draft < 1 ? 1 : max_draft > 32 ? 32 : max_draft;
    cuda_model *cm = cuda_model_load(m, device, err, errlen);
    if (!cm)
        return -1;
    cuda_kv *kv = cuda_kv_init(cm, ctx + k + 1, err, errlen);
    cuda_kv *scratch = ss ? cuda_kv_init(cm, k + 1, err, errlen) : NULL;
    cuda_state *s = kv && (scratch || !ss) ? cuda_state_init(cm, 256, ctx + k + 1, err, errlen) : NULL;
    if (!s)
        goto out;
    cuda_gen_stats cs;
    if (ss) {
        layer_mask mask;
        skipset_mask(ss, &mask);
        rc = cuda_generate_selfspec(cm, s, kv, scratch, &mask, k, prompt, n_prompt, gp->max_tokens, 1,
                                    stop_cb, gp, emit, emit_ctx, &cs, err, errlen);
        skipset_mask_free(&mask);
        if (sps) {
            sps->drafted = cs.drafted;
            sps->accepted = cs.accepted;
            sps->verifications = cs.rounds;
        }
    } else {
        rc = cuda_generate_plain(cm, s, kv, prompt, n_prompt, gp->max_tokens, 1, stop_cb, gp, emit, emit_ctx,
                                 &cs, err, errlen);
    }
    st->prompt_tokens = cs.prompt_tokens;
    st->generated_tokens = cs.generated_tokens;
    st->prefill_seconds = cs.prefill_seconds;
    st->decode_seconds = cs.decode_seconds;
out:
    cuda_state_free(s);
    cuda_kv_free(scratch);
    cuda_kv_free(kv);
    cuda_model_free(cm);
    return rc;
}
