/*
 * backend.c - the CPU backend (see backend.h): model_forward over a paged
 * KV pool.
 */
#include "model/backend.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

static int cpu_kv_open(model_backend *b, kv_cache *kv, int32_t cap, int scratch, char *err, size_t errlen)
{
    cpu_backend *cb = (cpu_backend *)b;
    memset(kv, 0, sizeof *kv);
    if (scratch)
        return kv_init(kv, &cb->m->config, cap, err, errlen) == 0 ? 0 : -1;
    return kv_init_paged(kv, cb->pool, cap) == 0 ? 0 : 1;
}

static void cpu_kv_close(model_backend *b, kv_cache *kv)
{
    (void)b;
    if (kv->cap)
        kv_free(kv);
    memset(kv, 0, sizeof *kv);
}

static int32_t cpu_kv_max(const model_backend *b)
{
    return ((const cpu_backend *)b)->pool->n_blocks * KV_BLOCK;
}

static void cpu_kv_usage(const model_backend *b, int32_t *used, int32_t *total)
{
    const kv_pool *p = ((const cpu_backend *)b)->pool;
    *used = p->n_blocks - p->n_free;
    *total = p->n_blocks;
}

static void cpu_kv_copy(model_backend *b, kv_cache *kv, int32_t from, int32_t to)
{
    (void)b;
    kv_copy_slot(kv, from, to);
}

static int cpu_forward(model_backend *b, fwd_seq *seqs, int n_seqs, const layer_mask *mask, const qmat *head,
                       float *logits, int32_t *argmax, char *err, size_t errlen)
{
    cpu_backend *cb = (cpu_backend *)b;
    int32_t rows = 0, width = head ? head->rows : cb->m->config.vocab_size;
    for (int i = 0; i < n_seqs; i++)
        rows += seqs[i].n_tokens - seqs[i].logits_from;
    assert(logits || argmax);
    if (!logits) {   /* the logits are computed here anyway: into our own rows */
        size_t need = (size_t)rows * width;
        if (need > cb->cap_rows) {
            free(cb->rows);
            cb->cap_rows = need;
            cb->rows = mallocCheck(need * sizeof(float));
        }
        logits = cb->rows;
    }
    if (model_forward(cb->m, cb->fs, seqs, n_seqs, mask, head, logits, err, errlen) != 0)
        return -1;
    for (int32_t r = 0; argmax && r < rows; r++)
        argmax[r] = model_argmax(logits + (size_t)r * width, width);
    return 0;
}

model_backend *backend_cpu_init(cpu_backend *cb, const model *m, fwd_state *fs, kv_pool *p)
{
    *cb = (cpu_backend){.b = {.name = "cpu", .pruned_head = 1, .kv_open = cpu_kv_open, .kv_close = cpu_kv_close,
                              .kv_max = cpu_kv_max, .kv_usage = cpu_kv_usage, .forward = cpu_forward,
                              .kv_copy = cpu_kv_copy},
                        .m = m, .fs = fs, .pool = p};
    return &cb->b;
}

void backend_cpu_free(cpu_backend *cb)
{
    free(cb->rows);
    cb->rows = NULL;
    cb->cap_rows = 0;
}
