/*
 * forward.cu - the forward pass on the device (see model/cuda_backend.h):
 * the activation state of a backend (cuda_state: buffers for passes of up
 * to max_tokens tokens over positions < ctx, the RoPE table, the pinned and
 * device metadata of a batch), and cuda_forward: a batch of sequence blocks
 * (model_forward's contract) packed into metadata, uploaded, and run as one
 * pass -- replayed from a CUDA graph where graphs.cu has one -- with the
 * logits and argmax ids left on the device unless the caller asks for
 * them. Every projection runs the fixed-order k_proj, so a token's logits
 * do not depend on the pass it is in.
 */
#include "cuda/backend.cuh"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- state ---- */

size_t meta_layout(int32_t M, size_t *o_pos, size_t *o_seq, size_t *o_out, size_t *o_seqs)
{
    size_t off = 0;
    off += (size_t)M * 4;                  /* tok */
    *o_pos = off; off += (size_t)M * 4;
    *o_seq = off; off += (size_t)M * 4;
    *o_out = off; off += (size_t)M * 4;
    off = (off + 15) & ~(size_t)15;
    *o_seqs = off; off += (size_t)M * sizeof(dev_seq);
    return off;
}

static int state_alloc(cuda_state *s, char *err, size_t errlen)
{
    const model_config *c = &s->cm->c;
    size_t T = (size_t)s->max_tokens, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    size_t V = (size_t)s->cm->vrows;
    cudaCheck(cudaSetDevice(s->cm->device));
    cudaCheck(cudaMalloc((void **)&s->x, T * D * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->qkv, T * (D + 2 * (size_t)c->kv_dim) * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->hb, T * 2 * H * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->logits, T * V * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->xb, T * D * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&s->att, T * D * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&s->hs, T * H * sizeof(wt)));
    s->att_span = att_span(s->ctx);
    s->att_splits = att_splits(s->ctx, s->att_span);
    cudaCheck(cudaMalloc((void **)&s->att_part,
                         T * c->n_heads * s->att_splits * (2 + (size_t)c->head_dim) * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->am, T * sizeof(int32_t)));
    cudaCheck(cudaMalloc((void **)&s->samp, T * sizeof(samp_req)));
    cudaCheck(cudaMalloc((void **)&s->samp_ids, T * sizeof(int32_t)));
    cudaCheck(cudaMalloc((void **)&s->samp_acc, T));
    cudaCheck(cudaMalloc((void **)&s->samp_slot, T * sizeof(int32_t)));
    cudaCheck(cudaMalloc((void **)&s->samp_conf, T * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&s->lp_cand, 2 * T * sizeof(int32_t)));
    cudaCheck(cudaMalloc((void **)&s->lp_out, T * sizeof(lp_row)));
    size_t o_pos, o_seq, o_out, o_seqs;
    s->meta_bytes = meta_layout(s->max_tokens, &o_pos, &o_seq, &o_out, &o_seqs);
    cudaCheck(cudaMalloc(&s->meta_d, s->meta_bytes));
    cudaCheck(cudaMallocHost(&s->meta_h, s->meta_bytes));
    cudaCheck(cudaMemset(s->meta_d, 0, s->meta_bytes));
    uint8_t *b = (uint8_t *)s->meta_d;
    s->tok = (int32_t *)b;
    s->pos = (int32_t *)(b + o_pos);
    s->seq = (int32_t *)(b + o_seq);
    s->outrow = (int32_t *)(b + o_out);
    s->seqs = (dev_seq *)(b + o_seqs);
    /* RoPE table exactly as fwd_state_init computes it. */
    int32_t half = c->head_dim / 2;
    float2 *tab = (float2 *)malloc((size_t)s->ctx * half * sizeof(float2));
    if (!tab)
        return util_err(err, errlen, "out of memory");
    for (int32_t p = 0; p < s->ctx; p++)
        for (int32_t i = 0; i < half; i++) {
            double freq = pow((double)c->rope_base, -2.0 * i / c->head_dim);
            double ang = p * freq;
            tab[(size_t)p * half + i] = make_float2((float)cos(ang), (float)sin(ang));
        }
    cudaError_t e = cudaMalloc((void **)&s->rope, (size_t)s->ctx * half * sizeof(float2));
    if (e == cudaSuccess)
        e = cudaMemcpy(s->rope, tab, (size_t)s->ctx * half * sizeof(float2), cudaMemcpyHostToDevice);
    free(tab);
    cudaCheck(e);
    /* the memset and copy above ran on the legacy stream: finish them before
     * the model's non-blocking stream uses these buffers */
    cudaCheck(cudaDeviceSynchronize());
    return 0;
}

extern "C" cuda_state *cuda_state_init(cuda_model *cm, int32_t max_tokens, int32_t ctx, int graphs, char *err,
                                       size_t errlen)
{
    if (max_tokens <= 0 || ctx <= 0) {
        util_err(err, errlen, "cuda_state_init: bad sizes");
        return NULL;
    }
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    s->cm = cm;
    s->max_tokens = max_tokens;
    s->graphs = graphs != 0;
    s->ctx = ctx;
    if (state_alloc(s, err, errlen) != 0) {
        cudaGetLastError();
        cuda_state_free(s);
        return NULL;
    }
    return s;
}

extern "C" void cuda_state_free(cuda_state *s)
{
    if (!s)
        return;
    cudaSetDevice(s->cm->device);
    cudaStreamSynchronize(s->cm->stream);
    graph_reset(&s->g_time);
    for (int m = 0; m < 2; m++)
        for (int t = 0; t < STEP_GRAPH_T; t++)
            graph_reset(&s->g_step[m][t]);
    void *dev[] = {s->x,  s->qkv,      s->hb,   s->logits,   s->xb,       s->att,       s->hs,     s->am,  s->meta_d,
                   s->rope, s->att_part, s->samp, s->samp_ids, s->samp_acc, s->samp_slot, s->samp_conf, s->qstore,
                   s->lp_cand, s->lp_out};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            cudaFree(dev[i]);
    if (s->meta_h)
        cudaFreeHost(s->meta_h);
    if (s->bt_d)
        cudaFree(s->bt_d);
    if (s->bt_h)
        cudaFreeHost(s->bt_h);
    free(s->q_filled);
    cudaGetLastError();
    free(s);
}

extern "C" const float *cuda_state_logits(const cuda_state *s, int32_t *ld)
{
    if (ld)
        *ld = s->cm->vrows;
    return s->logits;
}

/* ---- the pass ---- */

/* Whether cm holds every sublayer mask computes (NULL: the full model). */
static int mask_held(const cuda_model *cm, const layer_mask *mask)
{
    if (!cm->keep)
        return 1;
    int n = cm->c.n_layers;
    for (int l = 0; l < n; l++)
        if ((cm->keep[l] == 0 && (!mask || mask->attn[l])) || (cm->keep[n + l] == 0 && (!mask || mask->mlp[l])))
            return 0;
    return 1;
}

/* The whole forward pass for T tokens whose metadata is already in the
 * state's device buffers, n_out output rows (outrow), logits into s->logits
 * and argmax ids into s->am. n_out = 0: the layers only (KV written), no
 * head, no argmax, s->logits and s->am untouched. Every projection is the
 * fixed-order k_proj. Launch configuration depends only on (T, n_out,
 * mask): capturable. */
int forward_core(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err, size_t errlen)
{
    cuda_model *cm = s->cm;
    if (!mask_held(cm, mask))
        return util_err(err, errlen, "the pass computes sublayers this copy of the model does not hold");
    const model_config *c = &cm->c;
    cudaStream_t st = cm->stream;
    int D = c->dim, H = c->hidden_dim, KV = c->kv_dim;
    launch_embed(st, cm->tok_embd, D, s->tok, s->x, T);
    launchCheck();
    for (int l = 0; l < c->n_layers; l++) {
        const dev_layer *L = &cm->layers[l];
        if (!mask || mask->attn[l]) {
            launch_rmsnorm(st, s->x, NULL, L->attn_norm, s->xb, T, D, c->norm_eps);
            launchCheck();
            /* qkv (T, D + 2 KV) = xb . wqkv^T */
            launch_proj(st, L->wqkv, D + 2 * KV, D, s->xb, T, s->qkv, 0);
            launchCheck();
            launch_rope_kv(st, s->qkv, L->bqkv, c->rope_neox, T, s->pos, s->seq, s->seqs, s->rope, l,
                           c->n_heads, c->n_kv_heads, c->head_dim, D, KV);
            launchCheck();
            launch_attention(st, s->qkv, s->att, T, s->pos, s->seq, s->seqs, l, c->n_heads, c->n_kv_heads,
                             c->head_dim, D, KV, s->att_part, s->att_span, s->att_splits);
            launchCheck();
            /* x += att . wo^T */
            launch_proj(st, L->wo, D, D, s->att, T, s->x, 1);
            launchCheck();
        }
        if (!mask || mask->mlp[l]) {
            launch_rmsnorm(st, s->x, NULL, L->ffn_norm, s->xb, T, D, c->norm_eps);
            launchCheck();
            /* hb (T, 2H) = xb . w_gate_up^T */
            launch_proj(st, L->wgu, 2 * H, D, s->xb, T, s->hb, 0);
            launchCheck();
            launch_swiglu(st, s->hb, s->hs, T, H);
            launchCheck();
            /* x += hs . w_down^T */
            launch_proj(st, L->wdown, D, H, s->hs, T, s->x, 1);
            launchCheck();
        }
    }
    /* No row wants logits (a prompt chunk before the last, a KV-only
     * pass): stop here. A grid of zero blocks is an invalid launch
     * configuration. */
    if (n_out <= 0)
        return 0;
    launch_rmsnorm(st, s->x, s->outrow, cm->out_norm, s->xb, n_out, D, c->norm_eps);
    launchCheck();
    /* logits (n_out, vrows) = xb . output^T; padding rows are zero */
    launch_proj(st, cm->output, cm->vrows, D, s->xb, n_out, s->logits, 0);
    launchCheck();
    launch_argmax(st, s->logits, cm->vrows, c->vocab_size, n_out, s->am);
    launchCheck();
    return 0;
}

/* The descriptor of one sequence; bt: where a paged kv's block table is
 * in device memory (NULL for a contiguous one). */
dev_seq seq_desc(const cuda_kv *kv, const int32_t *bt, const cuda_kv *scratch, int32_t scratch_base)
{
    dev_seq d;
    memset(&d, 0, sizeof d);
    d.k = kv->k;
    d.v = kv->v;
    d.w.cap = kv->cap;
    d.w.bt = bt;
    d.w.n_layers = kv->cm->c.n_layers;
    if (scratch) {
        d.sk = scratch->k;
        d.sv = scratch->v;
        d.w.scap = scratch->cap;
        d.w.scratch_base = scratch_base;
    }
    return d;
}

/* Room for n block-table entries in the state (the stream is idle). */
static int bt_reserve(cuda_state *s, size_t n, char *err, size_t errlen)
{
    if (n <= s->bt_cap)
        return 0;
    size_t cap = s->bt_cap ? s->bt_cap : 1024;
    while (cap < n)
        cap *= 2;
    if (s->bt_d)
        cudaCheck(cudaFree(s->bt_d));
    if (s->bt_h)
        cudaCheck(cudaFreeHost(s->bt_h));
    s->bt_d = s->bt_h = NULL;
    s->bt_cap = 0;
    cudaCheck(cudaMalloc((void **)&s->bt_d, cap * sizeof(int32_t)));
    cudaCheck(cudaMallocHost((void **)&s->bt_h, cap * sizeof(int32_t)));
    s->bt_cap = cap;
    return 0;
}

/* Validate a batch and write its metadata into the pinned block; returns
 * T and n_out. */
static int pack_batch(cuda_state *s, const cuda_seq *seqs, int n_seqs, int32_t *T_out, int32_t *n_out,
                      char *err, size_t errlen)
{
    size_t o_pos, o_seq, o_out, o_seqs;
    meta_layout(s->max_tokens, &o_pos, &o_seq, &o_out, &o_seqs);
    uint8_t *b = (uint8_t *)s->meta_h;
    int32_t *tok = (int32_t *)b, *pos = (int32_t *)(b + o_pos), *seq = (int32_t *)(b + o_seq);
    int32_t *outrow = (int32_t *)(b + o_out);
    dev_seq *ds = (dev_seq *)(b + o_seqs);
    int32_t T = 0, no = 0;
    size_t nbt = 0;   /* block-table entries of the pass */
    if (n_seqs <= 0 || n_seqs > s->max_tokens)
        return util_err(err, errlen, "bad batch of %d sequences", n_seqs);
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].kv && seqs[i].kv->blocks)
            nbt += (size_t)seqs[i].kv->cap / CO_KV_BLOCK;
    if (bt_reserve(s, nbt, err, errlen) != 0)
        return -1;
    s->bt_used = 0;
    for (int i = 0; i < n_seqs; i++) {
        const cuda_seq *sq = &seqs[i];
        if (!sq->kv || sq->kv->cm->device != s->cm->device)
            return util_err(err, errlen, "batch entry %d: no cache on this device", i);
        if (model_check_block(&s->cm->c, i, sq->tokens, sq->n_tokens, sq->pos, sq->logits_from, sq->kv->cap,
                              sq->scratch ? sq->scratch->cap : -1, sq->scratch_base, s->ctx, err, errlen) != 0)
            return -1;
        if (T + sq->n_tokens > s->max_tokens)
            return util_err(err, errlen, "batch of more than %d tokens", s->max_tokens);
        const int32_t *bt = NULL;
        if (sq->kv->blocks) {   /* only the blocks this pass reaches */
            size_t nb = (size_t)(sq->pos + sq->n_tokens + CO_KV_BLOCK - 1) / CO_KV_BLOCK;
            if (nb > (size_t)sq->kv->cap / CO_KV_BLOCK)   /* the rest is in its scratch */
                nb = (size_t)sq->kv->cap / CO_KV_BLOCK;
            memcpy(s->bt_h + s->bt_used, sq->kv->blocks, nb * sizeof(int32_t));
            bt = s->bt_d + s->bt_used;
            s->bt_used += nb;
        }
        ds[i] = seq_desc(sq->kv, bt, sq->scratch, sq->scratch_base);
        for (int32_t j = 0; j < sq->n_tokens; j++) {
            tok[T + j] = sq->tokens[j];
            pos[T + j] = sq->pos + j;
            seq[T + j] = i;
            if (j >= sq->logits_from)
                outrow[no++] = T + j;
        }
        T += sq->n_tokens;
    }
    *T_out = T;
    *n_out = no;
    return 0;
}

int upload_meta(cuda_state *s, char *err, size_t errlen)
{
    cudaCheck(cudaMemcpyAsync(s->meta_d, s->meta_h, s->meta_bytes, cudaMemcpyHostToDevice, s->cm->stream));
    if (s->bt_used > 0)
        cudaCheck(cudaMemcpyAsync(s->bt_d, s->bt_h, s->bt_used * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  s->cm->stream));
    return 0;
}

/* Exact by construction: every pass runs the fixed-order projections, so
 * a token's logits are the same bits in a plain step, a verification block,
 * a batch, or a pass whose prompt chunk was cut anywhere. */
extern "C" int cuda_forward(cuda_model *cm, cuda_state *s, const cuda_seq *seqs, int n_seqs,
                            const layer_mask *mask, float *logits, int32_t *argmax, char *err, size_t errlen)
{
    int32_t T = 0, n_out = 0;
    if (s->cm != cm)
        return util_err(err, errlen, "cuda_forward: state of another model");
    cudaCheck(cudaSetDevice(cm->device));
    cudaCheck(cudaStreamSynchronize(cm->stream));    /* meta_h is free */
    if (pack_batch(s, seqs, n_seqs, &T, &n_out, err, errlen) != 0)
        return -1;
    if (upload_meta(s, err, errlen) != 0)
        return -1;
    s->last_out = 0;
    if (step_graph_run(s, T, n_out, mask, err, errlen) != 0)
        return -1;
    s->last_out = n_out;
    if (logits && n_out > 0)
        /* only when the caller asks (tests, checks, a host that samples):
         * a greedy pass brings back its argmax ids alone */
        cudaCheck(cudaMemcpy2DAsync(logits, (size_t)cm->c.vocab_size * sizeof(float), s->logits,
                                    (size_t)cm->vrows * sizeof(float), (size_t)cm->c.vocab_size * sizeof(float),
                                    (size_t)n_out, cudaMemcpyDeviceToHost, cm->stream));
    if (argmax && n_out > 0)
        cudaCheck(cudaMemcpyAsync(argmax, s->am, (size_t)n_out * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                  cm->stream));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}
