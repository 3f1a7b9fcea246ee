/*
 * backend_cuda.c - the CUDA backend under the engine's loop (see
 * backend.h): paged device KV (a pool of KV_BLOCK-position blocks in one
 * allocation, made at the first sequence; a host ledger says whose block
 * is whose, as the CPU's kv_pool), contiguous scratch caches for drafts
 * (closed ones kept for the next sequence),
 * and cuda_forward over them; device caches the caller owns can be viewed
 * (backend_cuda_kv_wrap: the GPU drafter's imported KV and scratch). Built
 * on every machine: without nvcc the cuda_backend.h functions are
 * common/cuda/stub.c's, and backend_cuda_open fails with their message.
 * Never run here (no GPU); scripts/gpu_check.sh runs it.
 */
#include "model/backend.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda_backend.h"
#include "util/util.h"

#define SPARE_SCRATCH 256

typedef struct {
    model_backend b;
    char name[32];
    const model_config *c;     /* the device model's */
    cuda_model *cm;
    int own_cm;                /* cm was loaded here (else borrowed: backend_cuda_params.cm) */
    cuda_state *st;
    size_t pos_bytes;          /* K and V of one position, every layer */
    size_t budget, used;       /* KV bytes: the budget, and what contiguous shared caches and the pool took */
    cuda_kv_pool *pool;        /* the paged KV, made at the first kv_open of a sequence; NULL before */
    kv_pool ledger;            /* its blocks: who holds which (no memory behind it) */
    /* closed draft scratch caches kept for the next sequence (a cudaMalloc,
     * a memset and a device sync saved per admission, a cudaFree's sync per
     * finish); all have the same cap in practice (max_draft + 1) */
    cuda_kv *spare[SPARE_SCRATCH];
    int n_spare;
    cuda_seq *seqs;            /* (cap_seqs) a batch's blocks for cuda_forward */
    int cap_seqs;
} cuda_engine_backend;

/* What kv_cache.dev points to. */
typedef struct {
    cuda_kv *kv;
    size_t bytes;              /* a contiguous cache counted against the budget (0: scratch, or paged) */
    int borrowed;              /* backend_cuda_kv_wrap: the caller's, never freed here */
} dev_cache;

/* A contiguous device cache of cap positions in kv; bytes: what it counts
 * against the budget. 0, 1 (no room), or -1 with err. */
static int open_contiguous(cuda_engine_backend *cb, kv_cache *kv, int32_t cap, size_t bytes, char *err,
                           size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    if (cb->used + bytes > cb->budget)
        return 1;
    cuda_kv *d = NULL;
    if (bytes == 0)   /* a scratch: a spare of that cap, when one is kept */
        for (int i = cb->n_spare - 1; i >= 0 && !d; i--)
            if (cuda_kv_cap(cb->spare[i]) == cap) {
                d = cb->spare[i];
                cb->spare[i] = cb->spare[--cb->n_spare];
            }
    if (!d && !(d = cuda_kv_init(cb->cm, cap, err, errlen)))
        return -1;
    cuda_kv_set_len(d, 0);
    dev_cache *dc = mallocCheck(sizeof *dc);
    *dc = (dev_cache){d, bytes, 0};
    cb->used += bytes;
    const model_config *c = cb->c;
    *kv = (kv_cache){.cap = cap, .n_layers = c->n_layers, .kv_dim = c->kv_dim, .head_dim = c->head_dim, .dev = dc};
    return 0;
}

/* The pool takes what is left of the budget, once. */
static int pool_make(cuda_engine_backend *cb, char *err, size_t errlen)
{
    size_t blk = cb->pos_bytes * KV_BLOCK, n = (cb->budget - cb->used) / blk;
    if (n > INT32_MAX / KV_BLOCK)
        n = INT32_MAX / KV_BLOCK;
    if (n < 1)
        return 1;
    cb->pool = cuda_kv_pool_init(cb->cm, (int32_t)n, err, errlen);
    if (!cb->pool)
        return -1;
    kv_ledger_init(&cb->ledger, cb->c, (int32_t)n);
    cb->used += n * blk;
    return 0;
}

static int cuda_b_kv_open(model_backend *b, kv_cache *kv, int32_t cap, int scratch, char *err, size_t errlen)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    if (scratch)   /* small, outside the budget */
        return open_contiguous(cb, kv, cap, 0, err, errlen);
    memset(kv, 0, sizeof *kv);
    if (!cb->pool) {
        int rc = pool_make(cb, err, errlen);
        if (rc != 0)
            return rc;
    }
    if (kv_init_paged(kv, &cb->ledger, cap) != 0)
        return 1;   /* the pool has too few free blocks now */
    cuda_kv *d = cuda_kv_paged(cb->pool, kv->blocks, kv_blocks_for(cap), err, errlen);
    if (!d) {
        kv_free(kv);
        return -1;
    }
    dev_cache *dc = mallocCheck(sizeof *dc);
    *dc = (dev_cache){d, 0, 0};
    kv->dev = dc;
    return 0;
}

static void cuda_b_kv_close(model_backend *b, kv_cache *kv)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    dev_cache *dc = kv->dev;
    if (dc) {
        assert(cb->used >= dc->bytes);
        cb->used -= dc->bytes;
        if (dc->borrowed)
            ;   /* the caller's cache: only the view goes */
        else if (!kv->pool && dc->bytes == 0 && cb->n_spare < SPARE_SCRATCH)
            cb->spare[cb->n_spare++] = dc->kv;   /* a scratch, kept for the next sequence */
        else
            cuda_kv_free(dc->kv);   /* the last pass has finished: cuda_forward syncs */
        free(dc);
    }
    kv->dev = NULL;
    if (kv->pool)
        kv_free(kv);   /* its blocks back to the ledger */
    memset(kv, 0, sizeof *kv);
}

static int32_t cuda_b_kv_max(const model_backend *b)
{
    const cuda_engine_backend *cb = (const cuda_engine_backend *)b;
    size_t n = cb->pool ? (size_t)cb->ledger.n_blocks * KV_BLOCK : (cb->budget - cb->used) / cb->pos_bytes;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

static void cuda_b_kv_usage(const model_backend *b, int32_t *used, int32_t *total)
{
    const cuda_engine_backend *cb = (const cuda_engine_backend *)b;
    size_t blk = cb->pos_bytes * KV_BLOCK;
    size_t shared = cb->used - (cb->pool ? (size_t)cb->ledger.n_blocks * blk : 0);
    size_t held = cb->pool ? (size_t)(cb->ledger.n_blocks - cb->ledger.n_free) : 0;
    *used = (int32_t)(held + (shared + blk - 1) / blk);
    *total = (int32_t)(cb->budget / blk);
}

int backend_cuda_kv_open_shared(model_backend *b, kv_cache *kv, int32_t cap, char *err, size_t errlen)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    int rc = open_contiguous(cb, kv, cap, (size_t)cap * cb->pos_bytes, err, errlen);
    return rc == 1 ? util_err(err, errlen, "no room for a shared %d-position KV cache in the budget", cap) : rc;
}

static int cuda_b_forward(model_backend *b, fwd_seq *seqs, int n_seqs, const layer_mask *mask, const qmat *head,
                          float *logits, int32_t *argmax, char *err, size_t errlen)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    if (head)
        return util_err(err, errlen, "the CUDA backend has no pruned head");
    if (n_seqs > cb->cap_seqs) {
        free(cb->seqs);
        cb->cap_seqs = n_seqs;
        cb->seqs = mallocCheck((size_t)n_seqs * sizeof *cb->seqs);
    }
    for (int i = 0; i < n_seqs; i++) {
        const fwd_seq *q = &seqs[i];
        dev_cache *kv = q->kv ? q->kv->dev : NULL, *sc = q->scratch ? q->scratch->dev : NULL;
        if (!kv || (q->scratch && !sc))
            return util_err(err, errlen, "block %d: a cache that is not on the device", i);
        if (q->parent)   /* the engine asks only backends with kv_copy_slot (backend.h) */
            return util_err(err, errlen, "block %d: token trees are not built for the CUDA backend", i);
        /* the device cache's verified length follows the engine's */
        cuda_kv_set_len(kv->kv, q->kv->len);
        cb->seqs[i] = (cuda_seq){.tokens = q->tokens, .n_tokens = q->n_tokens, .pos = q->pos, .kv = kv->kv,
                                 .scratch = sc ? sc->kv : NULL, .scratch_base = q->scratch_base,
                                 .logits_from = q->logits_from};
    }
    /* argmax on the device (cuda_argmax_host's rule = model_argmax's); with
     * argmax alone the logits stay there */
    return cuda_forward(cb->cm, cb->st, cb->seqs, n_seqs, mask, logits, argmax, err, errlen);
}

static int cuda_b_sample(model_backend *b, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted,
                         char *err, size_t errlen)
{
    return cuda_sample_rows(((cuda_engine_backend *)b)->st, rq, n_rows, ids, accepted, err, errlen);
}

static int cuda_b_draft_take(model_backend *b, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                             float *conf, char *err, size_t errlen)
{
    return cuda_draft_rows(((cuda_engine_backend *)b)->st, rq, slot, n_rows, ids, conf, err, errlen);
}

static int cuda_b_logprobs(model_backend *b, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out,
                           char *err, size_t errlen)
{
    return cuda_logprob_rows(((cuda_engine_backend *)b)->st, cand, n_rows, n_top, out, err, errlen);
}

model_backend *backend_cuda_open_params(const model *m, const backend_cuda_params *p, char *err, size_t errlen)
{
    cuda_model *cm = p->cm;
    if (!cm && !m) {
        util_err(err, errlen, "backend_cuda_open: neither a model nor device weights");
        return NULL;
    }
    if (!cm && !(cm = cuda_model_load(m, p->device, err, errlen)))
        return NULL;
    cuda_state *st = cuda_state_init(cm, p->max_tokens, p->ctx, p->graphs, err, errlen);
    if (!st) {
        if (cm != p->cm)
            cuda_model_free(cm);
        return NULL;
    }
    const model_config *c = cuda_model_get_config(cm);
    cuda_engine_backend *cb = callocCheck(1, sizeof *cb);
    snprintf(cb->name, sizeof cb->name, "cuda:%d", p->device);
    cb->b = (model_backend){.name = cb->name, .pruned_head = 0, .kv_open = cuda_b_kv_open,
                            .kv_close = cuda_b_kv_close, .kv_max = cuda_b_kv_max, .kv_usage = cuda_b_kv_usage,
                            .forward = cuda_b_forward,
                            .sample = cuda_b_sample, .draft_take = cuda_b_draft_take,
                            .logprobs = cuda_b_logprobs};
    cb->c = c;
    cb->cm = cm;
    cb->own_cm = cm != p->cm;
    cb->st = st;
    cb->pos_bytes = 2 * (size_t)c->n_layers * (size_t)c->kv_dim * sizeof(kv_elem);
    cb->budget = p->kv_mem;
    return &cb->b;
}

model_backend *backend_cuda_open(const model *m, int device, int32_t max_tokens, int32_t ctx, size_t kv_mem,
                                 char *err, size_t errlen)
{
    backend_cuda_params p = {.device = device, .max_tokens = max_tokens, .ctx = ctx, .kv_mem = kv_mem,
                             .graphs = 1, .cm = NULL};
    return backend_cuda_open_params(m, &p, err, errlen);
}

int backend_cuda_kv_wrap(model_backend *b, kv_cache *kv, cuda_kv *d, char *err, size_t errlen)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    memset(kv, 0, sizeof *kv);
    if (!d || cuda_kv_is_paged(d))
        return util_err(err, errlen, "backend_cuda_kv_wrap: not a contiguous device cache");
    dev_cache *dc = mallocCheck(sizeof *dc);
    *dc = (dev_cache){d, 0, 1};
    const model_config *c = cb->c;
    *kv = (kv_cache){.cap = cuda_kv_cap(d), .n_layers = c->n_layers, .kv_dim = c->kv_dim, .head_dim = c->head_dim,
                     .dev = dc};
    return 0;
}

int backend_cuda_ipc_export(model_backend *b, const kv_cache *kv, void *blob, char *err, size_t errlen)
{
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    const dev_cache *dc = kv->dev;
    if (!dc)
        return util_err(err, errlen, "IPC export: a cache that is not on the device");
    return cuda_ipc_export(cb->cm, dc->kv, blob, err, errlen);
}

int backend_cuda_ipc_signal(model_backend *b, char *err, size_t errlen)
{
    return cuda_ipc_signal(((cuda_engine_backend *)b)->cm, err, errlen);
}

void backend_cuda_close(model_backend *b)
{
    if (!b)
        return;
    cuda_engine_backend *cb = (cuda_engine_backend *)b;
    assert(!cb->pool || cb->ledger.n_free == cb->ledger.n_blocks);
    for (int i = 0; i < cb->n_spare; i++)
        cuda_kv_free(cb->spare[i]);
    free(cb->seqs);
    cuda_kv_pool_free(cb->pool);
    kv_pool_free(&cb->ledger);
    cuda_state_free(cb->st);
    if (cb->own_cm)
        cuda_model_free(cb->cm);
    free(cb);
}
