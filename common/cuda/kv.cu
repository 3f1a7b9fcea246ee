/*
 * kv.cu - KV caches in device memory (see model/cuda_backend.h): contiguous
 * caches (K (n_layers, cap, kv_dim) then V, IEEE half, as on the CPU), the
 * paged pool and its views (blocks of CO_KV_BLOCK positions of every
 * layer: kv_row, kernels/cuda_order.h), the download of a cache to the
 * host (tests), and the drafter's shift and copy of contiguous caches.
 */
#include "cuda/backend.cuh"

#include <stdlib.h>
#include <string.h>

static_assert(CO_KV_BLOCK == KV_BLOCK, "device and host KV blocks differ");

int contiguous_only(const cuda_kv *kv, const char *what, char *err, size_t errlen)
{
    if (kv && kv->blocks)
        return util_err(err, errlen, "%s: takes a contiguous KV cache, not a paged one", what);
    return 0;
}

extern "C" cuda_kv *cuda_kv_init(cuda_model *cm, int32_t cap, char *err, size_t errlen)
{
    if (cap <= 0) {
        util_err(err, errlen, "KV cache capacity must be positive");
        return NULL;
    }
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = (size_t)cm->c.n_layers * cap * cm->c.kv_dim;
    kv->cm = cm;
    kv->cap = cap;
    kv->bytes = (2 * n * sizeof(kvt) + ALIGN_ALLOC - 1) & ~(ALIGN_ALLOC - 1);
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess)
        e = cudaMalloc(&kv->base, kv->bytes);
    if (e == cudaSuccess)
        e = cudaMemset(kv->base, 0, kv->bytes);
    if (e == cudaSuccess)   /* cudaMemset runs on the legacy stream, which does
                               not order with our non-blocking stream */
        e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        util_err(err, errlen, "allocating a %d-position KV cache (%zu MB): %s", cap, kv->bytes >> 20,
                 cudaGetErrorString(e));
        cudaGetLastError();
        if (kv->base)
            cudaFree(kv->base);
        free(kv);
        return NULL;
    }
    kv->k = (kvt *)kv->base;
    kv->v = kv->k + n;
    return kv;
}

extern "C" cuda_kv_pool *cuda_kv_pool_init(cuda_model *cm, int32_t n_blocks, char *err, size_t errlen)
{
    if (n_blocks <= 0 || n_blocks > INT32_MAX / CO_KV_BLOCK) {
        util_err(err, errlen, "KV pool of %d blocks", n_blocks);
        return NULL;
    }
    cuda_kv_pool *p = (cuda_kv_pool *)calloc(1, sizeof *p);
    if (!p) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = (size_t)n_blocks * cm->c.n_layers * CO_KV_BLOCK * cm->c.kv_dim;
    p->cm = cm;
    p->n_blocks = n_blocks;
    p->bytes = (2 * n * sizeof(kvt) + ALIGN_ALLOC - 1) & ~(ALIGN_ALLOC - 1);
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess)
        e = cudaMalloc(&p->base, p->bytes);
    if (e != cudaSuccess) {
        util_err(err, errlen, "allocating a KV pool of %d blocks (%zu MB): %s", n_blocks, p->bytes >> 20,
                 cudaGetErrorString(e));
        cudaGetLastError();
        free(p);
        return NULL;
    }
    /* no zero fill: a position is always written before any pass reads it */
    p->k = (kvt *)p->base;
    p->v = p->k + n;
    return p;
}

extern "C" void cuda_kv_pool_free(cuda_kv_pool *p)
{
    if (!p)
        return;
    cudaSetDevice(p->cm->device);
    cudaStreamSynchronize(p->cm->stream);
    cudaFree(p->base);
    free(p);
}

extern "C" cuda_kv *cuda_kv_paged(cuda_kv_pool *p, const int32_t *blocks, int32_t n_blocks, char *err,
                                  size_t errlen)
{
    if (n_blocks <= 0 || n_blocks > INT32_MAX / CO_KV_BLOCK) {
        util_err(err, errlen, "paged KV cache of %d blocks", n_blocks);
        return NULL;
    }
    for (int32_t i = 0; i < n_blocks; i++)
        if (blocks[i] < 0 || blocks[i] >= p->n_blocks) {
            util_err(err, errlen, "paged KV cache: block %d is not in the pool of %d", blocks[i], p->n_blocks);
            return NULL;
        }
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    kv->cm = p->cm;
    kv->k = p->k;
    kv->v = p->v;
    kv->cap = n_blocks * CO_KV_BLOCK;
    kv->blocks = blocks;
    return kv;
}

extern "C" int cuda_kv_is_paged(const cuda_kv *kv) { return kv->blocks != NULL; }

extern "C" void cuda_kv_free(cuda_kv *kv)
{
    if (!kv)
        return;
    if (!kv->imported && kv->base) {
        cudaSetDevice(kv->cm->device);
        cudaStreamSynchronize(kv->cm->stream);
        cudaFree(kv->base);
    }
    free(kv);
}

extern "C" int32_t cuda_kv_len(const cuda_kv *kv) { return kv->len; }
extern "C" int32_t cuda_kv_cap(const cuda_kv *kv) { return kv->cap; }

extern "C" void cuda_kv_set_len(cuda_kv *kv, int32_t len)
{
    if (len < 0)
        len = 0;
    if (len > kv->cap)
        len = kv->cap;
    kv->len = len;
}

extern "C" int cuda_kv_download(const cuda_kv *kv, kv_cache *dst, int32_t n, char *err, size_t errlen)
{
    const model_config *c = &kv->cm->c;
    if (n > kv->cap || n > dst->cap || dst->kv_dim != c->kv_dim || dst->n_layers != c->n_layers || dst->pool)
        return util_err(err, errlen, "KV download: shapes differ (or a paged host cache)");
    cudaCheck(cudaSetDevice(kv->cm->device));
    cudaCheck(cudaStreamSynchronize(kv->cm->stream));
    size_t row = (size_t)c->kv_dim * sizeof(kvt);
    if (kv->blocks) {   /* a block's rows of one layer are contiguous */
        for (int l = 0; l < c->n_layers; l++)
            for (int32_t p = 0; p < n; p += CO_KV_BLOCK) {
                int32_t m = n - p < CO_KV_BLOCK ? n - p : CO_KV_BLOCK;
                size_t src = (((size_t)kv->blocks[p / CO_KV_BLOCK] * c->n_layers + l) * CO_KV_BLOCK) * c->kv_dim;
                size_t at = ((size_t)l * dst->cap + p) * c->kv_dim;
                cudaCheck(cudaMemcpy(dst->k + at, kv->k + src, (size_t)m * row, cudaMemcpyDeviceToHost));
                cudaCheck(cudaMemcpy(dst->v + at, kv->v + src, (size_t)m * row, cudaMemcpyDeviceToHost));
            }
        return 0;
    }
    for (int l = 0; l < c->n_layers; l++) {
        cudaCheck(cudaMemcpy(dst->k + (size_t)l * dst->cap * c->kv_dim, kv->k + (size_t)l * kv->cap * c->kv_dim,
                             (size_t)n * row, cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(dst->v + (size_t)l * dst->cap * c->kv_dim, kv->v + (size_t)l * kv->cap * c->kv_dim,
                             (size_t)n * row, cudaMemcpyDeviceToHost));
    }
    return 0;
}

extern "C" int cuda_kv_shift(cuda_kv *kv, int32_t shift, int32_t n, char *err, size_t errlen)
{
    if (contiguous_only(kv, "cuda_kv_shift", err, errlen) != 0)
        return -1;
    if (shift < 0 || n < shift || n > kv->cap)
        return util_err(err, errlen, "cuda_kv_shift: %d of %d rows by %d", n, kv->cap, shift);
    if (shift == 0 || n == shift)
        return 0;
    cuda_model *cm = kv->cm;
    const model_config *c = &cm->c;
    size_t row = (size_t)c->kv_dim, layer = (size_t)kv->cap * row;
    cudaCheck(cudaSetDevice(cm->device));
    /* rows [shift, n) to [0, n - shift) in pieces of at most shift rows, in
     * order on one stream: no piece's source overlaps its destination */
    for (int l = 0; l < c->n_layers; l++)
        for (int32_t r = 0; r < n - shift; r += shift) {
            int32_t m = n - shift - r < shift ? n - shift - r : shift;
            size_t dst = (size_t)l * layer + (size_t)r * row, src = dst + (size_t)shift * row;
            size_t bytes = (size_t)m * row * sizeof(kvt);
            cudaCheck(cudaMemcpyAsync(kv->k + dst, kv->k + src, bytes, cudaMemcpyDeviceToDevice, cm->stream));
            cudaCheck(cudaMemcpyAsync(kv->v + dst, kv->v + src, bytes, cudaMemcpyDeviceToDevice, cm->stream));
        }
    return 0;
}

extern "C" int cuda_kv_copy(cuda_model *cm, cuda_kv *dst, const cuda_kv *src, const layer_mask *layers,
                            int32_t from, int32_t to, char *err, size_t errlen)
{
    if (contiguous_only(dst, "cuda_kv_copy", err, errlen) != 0 || contiguous_only(src, "cuda_kv_copy", err, errlen) != 0)
        return -1;
    if (dst->cap != src->cap || from < 0 || to > dst->cap || from > to)
        return util_err(err, errlen, "cuda_kv_copy: positions %d..%d of caches of %d and %d", from, to, dst->cap,
                        src->cap);
    if (from == to)
        return 0;
    const model_config *c = &cm->c;
    size_t layer = (size_t)src->cap * c->kv_dim, off = (size_t)from * c->kv_dim;
    size_t bytes = (size_t)(to - from) * c->kv_dim * sizeof(kvt);
    cudaCheck(cudaSetDevice(cm->device));
    for (int l = 0; l < c->n_layers; l++) {
        if (layers && !layers->attn[l])
            continue;   /* a layer whose attention the draft skips reads no KV */
        size_t at = (size_t)l * layer + off;
        /* unified addressing: a copy between devices goes over the peer link */
        cudaCheck(cudaMemcpyAsync(dst->k + at, src->k + at, bytes, cudaMemcpyDefault, cm->stream));
        cudaCheck(cudaMemcpyAsync(dst->v + at, src->v + at, bytes, cudaMemcpyDefault, cm->stream));
    }
    return 0;
}
