/*
 * stub.c - the CUDA backend's API (model/cuda_backend.h) for builds without
 * nvcc: cuda_available() and cuda_device_count() return 0, everything else
 * fails with "built without CUDA". The Makefile compiles this file instead
 * of the .cu files of this folder when nvcc is not found (or `make NVCC=`).
 * model/backend_cuda.c is built either way: over this stub,
 * backend_cuda_open fails with the message below.
 */
#include "model/cuda_backend.h"

#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define NO_CUDA "selfspec was built without CUDA (nvcc not found at build time)"

int cuda_available(void) { return 0; }
int cuda_device_count(void) { return 0; }

int cuda_get_device_info(int device, cuda_device_info *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    return util_err(err, errlen, NO_CUDA);
}

cuda_model *cuda_model_load(const model *cpu_model, int device, char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

cuda_model *cuda_synthetic_model(const model_config *c, int tied, uint64_t seed, int device,
                                 char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

void cuda_model_free(cuda_model *cm) { (void)cm; }
const model_config *cuda_model_get_config(const cuda_model *cm) { return NULL; }
size_t cuda_model_weight_bytes(const cuda_model *cm) { return 0; }
size_t cuda_model_step_bytes(const cuda_model *cm, const layer_mask *mask) { return 0; }

cuda_kv *cuda_kv_init(cuda_model *cm, int32_t cap, char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

void cuda_kv_free(cuda_kv *kv) { (void)kv; }
int32_t cuda_kv_len(const cuda_kv *kv) { return 0; }
int32_t cuda_kv_cap(const cuda_kv *kv) { return 0; }
void cuda_kv_set_len(cuda_kv *kv, int32_t len) { (void)kv; }

int cuda_kv_download(const cuda_kv *kv, kv_cache *dst, int32_t n, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

cuda_kv_pool *cuda_kv_pool_init(cuda_model *cm, int32_t n_blocks, char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

void cuda_kv_pool_free(cuda_kv_pool *p) { (void)p; }

cuda_kv *cuda_kv_paged(cuda_kv_pool *p, const int32_t *blocks, int32_t n_blocks, char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

int cuda_kv_is_paged(const cuda_kv *kv) { return 0; }

cuda_state *cuda_state_init(cuda_model *cm, int32_t max_tokens, int32_t ctx, int graphs, char *err,
                            size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

void cuda_state_free(cuda_state *s) { (void)s; }

int cuda_forward(cuda_model *cm, cuda_state *s, const cuda_seq *seqs, int n_seqs,
                 const layer_mask *mask, float *logits, int32_t *argmax, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_proj_check(int device, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                    char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    return util_err(err, errlen, NO_CUDA);
}

int cuda_argmax_host(int device, const float *logits, int32_t rows, int32_t n, int32_t *out,
                     char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

const float *cuda_state_logits(const cuda_state *s, int32_t *ld)
{
    if (ld)
        *ld = 0;
    return NULL;
}

int cuda_time_step(cuda_model *cm, cuda_state *s, cuda_kv *kv, cuda_kv *scratch,
                   const layer_mask *mask, int32_t T, int32_t pos, int iters,
                   double *ms, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_ipc_export(cuda_model *cm, cuda_kv *kv, void *blob, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_ipc_signal(cuda_model *cm, char *err, size_t errlen) { return util_err(err, errlen, NO_CUDA); }
int cuda_ipc_wait(cuda_model *cm, char *err, size_t errlen) { return util_err(err, errlen, NO_CUDA); }

cuda_model *cuda_ipc_import(const void *blob, int device, cuda_kv **kv, char *err, size_t errlen)
{
    *kv = NULL;
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

cuda_model *cuda_model_load_masked(const model *cpu_model, int device, const layer_mask *keep, char *err,
                                   size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

cuda_kv *cuda_ipc_import_kv(cuda_model *cm, const void *blob, char *err, size_t errlen)
{
    util_err(err, errlen, NO_CUDA);
    return NULL;
}

int cuda_kv_copy(cuda_model *cm, cuda_kv *dst, const cuda_kv *src, const layer_mask *layers, int32_t from,
                 int32_t to, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_kv_shift(cuda_kv *kv, int32_t shift, int32_t n, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_sample_rows(cuda_state *s, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted,
                     char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_draft_rows(cuda_state *s, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                    float *conf, char *err, size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}

int cuda_logprob_rows(cuda_state *s, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out, char *err,
                      size_t errlen)
{
    return util_err(err, errlen, NO_CUDA);
}
