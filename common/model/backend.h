/*
 * backend.h - the device under the engine's loop: KV caches for its
 * sequences, and one forward pass over a batch of sequence blocks with a
 * sublayer mask and an optional pruned head (model_forward's contract).
 * The decoding policy -- drafting, the adaptive exit, acceptance,
 * batch-aware speculation, statistics -- exists once, above every backend
 * (engine/engine.h); a backend only computes.
 *
 * Two implementations:
 *   CPU  (backend_cpu_init): model_forward over a paged KV pool (kv_pool,
 *        model.h); draft scratch caches are small contiguous ones.
 *   CUDA (backend_cuda_open, backend_cuda.c): cuda_forward over paged
 *        device KV: one device pool of KV_BLOCK-position blocks (made at
 *        the first sequence from the byte budget), the blocks handed out by
 *        a host ledger (kv_ledger_init) into the kv_cache the engine holds,
 *        which points to the device view through kv_cache.dev; every pass
 *        uploads the block tables it needs with its other metadata. Draft
 *        scratch caches are small contiguous ones. No pruned head on the
 *        device (drafts use the full head). Without nvcc it fails to open,
 *        with "built without CUDA".
 *
 * A backend is driven by one thread at a time. No global state.
 */
#ifndef SELFSPEC_BACKEND_H
#define SELFSPEC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda_sample.h"
#include "model/model.h"

typedef struct model_backend model_backend;

struct model_backend {
    const char *name;          /* "cpu", "cuda:N" */
    int pruned_head;           /* forward takes a pruned head (else only NULL) */
    /* A cache of cap positions into kv (zeroed first: cap set, len 0).
     * scratch: a draft scratch cache, outside the KV memory budget.
     * Returns 0; 1 when the KV memory has no room now (nothing taken); -1
     * with err on failure. */
    int (*kv_open)(model_backend *b, kv_cache *kv, int32_t cap, int scratch, char *err, size_t errlen);
    /* Give back a cache from kv_open (a zeroed kv: nothing to do). */
    void (*kv_close)(model_backend *b, kv_cache *kv);
    /* The largest cap a sequence's kv_open can ever get (the whole budget). */
    int32_t (*kv_max)(const model_backend *b);
    /* KV memory in use and in all, in blocks of KV_BLOCK positions. */
    void (*kv_usage)(const model_backend *b, int32_t *used, int32_t *total);
    /* model_forward (model.h) over caches from kv_open. logits: host
     * (rows, width), or NULL when argmax is given (a device then keeps its
     * logits where they are); argmax: host (rows) ids of each output row's
     * largest logit (model_argmax's rule), or NULL. */
    int (*forward)(model_backend *b, fwd_seq *seqs, int n_seqs, const layer_mask *mask, const qmat *head,
                   float *logits, int32_t *argmax, char *err, size_t errlen);
    /* Optional (NULL: the engine samples on the host from logits rows): the
     * tokens of output rows [0, n_rows) of the last forward, called with
     * argmax and no logits, one request per row (kernels/cuda_sample.h;
     * greedy rows keep that forward's argmax; test rows decide a draft
     * token by speculative sampling against the q a draft_take left, and
     * set accepted[row]). The device keeps its logits; only ids and flags
     * come back. accepted may be NULL when no row tests. Returns 0, or -1
     * with err. */
    int (*sample)(model_backend *b, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted, char *err,
                  size_t errlen);
    /* Optional (NULL: the engine takes draft tokens on the host from logits
     * rows); only for full-width drafts (no pruned head): the draft tokens
     * of output rows [0, n_rows) of the last (draft) forward, called with
     * argmax and no logits: conf[row], the top-1 probability at temperature
     * 1, and ids[row], the argmax for greedy requests or a draw whose
     * warped distribution the device keeps under slot[row] for a later
     * sample() test row. Returns 0, or -1 with err. */
    int (*draft_take)(model_backend *b, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                      float *conf, char *err, size_t errlen);
    /* Optional (NULL: the engine verifies chains only): copy slot `from` of
     * a cache to slot `to` (kv_copy_slot's contract), which forward's token
     * trees (fwd_seq.parent) need to keep an accepted path. The CPU backend
     * has it; the CUDA backend has not, and rejects tree blocks. */
    void (*kv_copy)(model_backend *b, kv_cache *kv, int32_t from, int32_t to);
    /* Optional (NULL: log-probabilities come from logits rows on the host):
     * for output rows [0, n_rows) of the last forward (called with argmax
     * and no logits), each row's log-sum-exp, its n_top largest logits and
     * the logits of its candidates cand[2 row], cand[2 row + 1] (lp_row,
     * kernels/cuda_sample.h). Only those numbers come back. Returns 0, or
     * -1 with err. */
    int (*logprobs)(model_backend *b, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out, char *err,
                    size_t errlen);
};

/* The CPU backend. */
typedef struct {
    model_backend b;
    const model *m;
    fwd_state *fs;
    kv_pool *pool;
    float *rows;               /* (cap_rows floats) logits when the caller wants argmax only */
    size_t cap_rows;
} cpu_backend;

/* A CPU backend over model m, forward state fs and pool p (all three must
 * outlive it); returns &cb->b. backend_cpu_free releases its own buffer. */
model_backend *backend_cpu_init(cpu_backend *cb, const model *m, fwd_state *fs, kv_pool *p);
void backend_cpu_free(cpu_backend *cb);

/* The CUDA backend on device `device`: m's weights uploaded (cuda_model_load),
 * activation buffers for passes of up to max_tokens tokens over positions
 * < ctx, kv_mem bytes of KV for the sequences. Returns the backend, or NULL
 * with err (no device, built without CUDA, out of memory). */
model_backend *backend_cuda_open(const model *m, int device, int32_t max_tokens, int32_t ctx, size_t kv_mem,
                                 char *err, size_t errlen);
/* Free what backend_cuda_open made (NULL: nothing). Every cache must have
 * been closed. */
void backend_cuda_close(model_backend *b);

/* The pipeline on a GPU: fill blob (CUDA_IPC_BLOB_BYTES, cuda_backend.h)
 * with IPC handles of the backend's weights and of kv (a cache from this
 * backend's kv_open) for the drafter process (cuda_ipc_export); and record
 * the interprocess event after the verified KV changed, before a request
 * goes out (cuda_ipc_signal). Return 0, or -1 with err. */
/* A contiguous device cache of cap positions for the pipeline (IPC export
 * and the drafter's copies address it as one allocation), counted against
 * the budget; open it before any sequence (the paged pool takes the rest).
 * kv_close gives it back. Returns 0, or -1 with err. */
int backend_cuda_kv_open_shared(model_backend *b, kv_cache *kv, int32_t cap, char *err, size_t errlen);

int backend_cuda_ipc_export(model_backend *b, const kv_cache *kv, void *blob, char *err, size_t errlen);
int backend_cuda_ipc_signal(model_backend *b, char *err, size_t errlen);

#endif
