/*
 * sample.cu - sampling on the device after a cuda_forward (see
 * model/cuda_backend.h and the rule in kernels/cuda_sample.h): the tokens
 * of output rows for their requests (cuda_sample_rows: greedy rows keep the
 * pass's argmax, sampled rows draw, test rows decide a draft token by
 * speculative sampling against the q store), and draft rows' tokens and
 * top-1 probabilities with a sampled draft's warped distribution kept in
 * the q store (cuda_draft_rows). Only ids, flags and probabilities come
 * back, never a logits row.
 */
#include "cuda/backend.cuh"

#include <stdlib.h>
#include <string.h>

/* A request's fields in range (its row's test against slot q_slot needs a
 * draft there). */
static int samp_req_ok(const cuda_state *s, const samp_req *q)
{
    int V = s->cm->c.vocab_size;
    if (!(q->temperature > 0.0f))
        return q->kind == SAMP_DRAW || (q->x >= 0 && q->x < V);
    if (!(q->u >= 0.0f && q->u < 1.0f) || !(q->top_p > 0.0f) || q->top_k < 0)
        return 0;
    if (q->kind == SAMP_DRAW)
        return 1;
    if (q->x < 0 || q->x >= V || !(q->u_acc >= 0.0f && q->u_acc < 1.0f))
        return 0;
    return q->kind == SAMP_TEST_CTX ||
           (q->kind == SAMP_TEST && q->q_slot >= 0 && q->q_slot < s->q_slots && s->q_filled[q->q_slot]);
}

extern "C" int cuda_sample_rows(cuda_state *s, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted,
                                char *err, size_t errlen)
{
    if (n_rows <= 0 || n_rows > s->last_out)
        return util_err(err, errlen, "cuda_sample_rows: %d rows, the last pass left %d", n_rows, s->last_out);
    for (int32_t i = 0; i < n_rows; i++)
        if (!samp_req_ok(s, &rq[i]))
            return util_err(err, errlen, "cuda_sample_rows: row %d: bad request", i);
    cuda_model *cm = s->cm;
    cudaCheck(cudaSetDevice(cm->device));
    cudaCheck(cudaMemcpyAsync(s->samp, rq, (size_t)n_rows * sizeof *rq, cudaMemcpyHostToDevice, cm->stream));
    launch_sample(cm->stream, s->logits, cm->vrows, cm->c.vocab_size, n_rows, s->samp, s->am, s->qstore,
                  (size_t)cm->c.vocab_size, s->samp_ids, s->samp_acc);
    launchCheck();
    cudaCheck(cudaMemcpyAsync(ids, s->samp_ids, (size_t)n_rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
                              cm->stream));
    if (accepted)
        cudaCheck(cudaMemcpyAsync(accepted, s->samp_acc, (size_t)n_rows, cudaMemcpyDeviceToHost, cm->stream));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}

extern "C" int cuda_logprob_rows(cuda_state *s, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out,
                                 char *err, size_t errlen)
{
    if (n_rows <= 0 || n_rows > s->last_out)
        return util_err(err, errlen, "cuda_logprob_rows: %d rows, the last pass left %d", n_rows, s->last_out);
    if (n_top < 0 || n_top > LP_MAX_TOP)
        return util_err(err, errlen, "cuda_logprob_rows: n_top %d not in [0, %d]", n_top, LP_MAX_TOP);
    cuda_model *cm = s->cm;
    cudaCheck(cudaSetDevice(cm->device));
    cudaCheck(cudaMemcpyAsync(s->lp_cand, cand, 2 * (size_t)n_rows * sizeof(int32_t), cudaMemcpyHostToDevice,
                              cm->stream));
    launch_logprobs(cm->stream, s->logits, cm->vrows, cm->c.vocab_size, n_rows, n_top, s->lp_cand, s->lp_out);
    launchCheck();
    cudaCheck(cudaMemcpyAsync(out, s->lp_out, (size_t)n_rows * sizeof(lp_row), cudaMemcpyDeviceToHost, cm->stream));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}

/* Room for slots [0, n) in the q store, what is there kept (the stream is
 * idle). */
static int qstore_reserve(cuda_state *s, int32_t n, char *err, size_t errlen)
{
    if (n <= s->q_slots)
        return 0;
    int32_t cap = s->q_slots ? s->q_slots : 64;
    while (cap < n)
        cap = cap > INT32_MAX / 2 ? n : cap * 2;
    size_t row = (size_t)s->cm->c.vocab_size * sizeof(float);
    float *q = NULL;
    cudaCheck(cudaMalloc((void **)&q, (size_t)cap * row));
    if (s->q_slots > 0) {
        cudaError_t e = cudaMemcpyAsync(q, s->qstore, (size_t)s->q_slots * row, cudaMemcpyDeviceToDevice,
                                        s->cm->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(s->cm->stream);
        if (e != cudaSuccess) {
            cudaFree(q);
            cudaCheck(e);
        }
        cudaFree(s->qstore);
    }
    uint8_t *f = (uint8_t *)realloc(s->q_filled, (size_t)cap);
    if (!f) {
        cudaFree(q);
        return util_err(err, errlen, "out of memory");
    }
    memset(f + s->q_slots, 0, (size_t)(cap - s->q_slots));
    s->q_filled = f;
    s->qstore = q;
    s->q_slots = cap;
    return 0;
}

extern "C" int cuda_draft_rows(cuda_state *s, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                               float *conf, char *err, size_t errlen)
{
    if (n_rows <= 0 || n_rows > s->last_out)
        return util_err(err, errlen, "cuda_draft_rows: %d rows, the last pass left %d", n_rows, s->last_out);
    int32_t top = 0;
    for (int32_t i = 0; i < n_rows; i++) {
        int sampled = rq[i].temperature > 0.0f;
        if (rq[i].kind != SAMP_DRAW ||
            (sampled && (!(rq[i].u >= 0.0f && rq[i].u < 1.0f) || !(rq[i].top_p > 0.0f) || rq[i].top_k < 0 ||
                         slot[i] < 0 || slot[i] == INT32_MAX)))
            return util_err(err, errlen, "cuda_draft_rows: row %d: bad request", i);
        if (sampled && slot[i] + 1 > top)
            top = slot[i] + 1;
    }
    cuda_model *cm = s->cm;
    cudaCheck(cudaSetDevice(cm->device));
    if (qstore_reserve(s, top, err, errlen) != 0)
        return -1;
    cudaCheck(cudaMemcpyAsync(s->samp, rq, (size_t)n_rows * sizeof *rq, cudaMemcpyHostToDevice, cm->stream));
    cudaCheck(cudaMemcpyAsync(s->samp_slot, slot, (size_t)n_rows * sizeof *slot, cudaMemcpyHostToDevice,
                              cm->stream));
    launch_draft(cm->stream, s->logits, cm->vrows, cm->c.vocab_size, n_rows, s->samp, s->samp_slot, s->am,
                 s->qstore, (size_t)cm->c.vocab_size, s->samp_ids, s->samp_conf);
    launchCheck();
    cudaCheck(cudaMemcpyAsync(ids, s->samp_ids, (size_t)n_rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
                              cm->stream));
    cudaCheck(cudaMemcpyAsync(conf, s->samp_conf, (size_t)n_rows * sizeof(float), cudaMemcpyDeviceToHost,
                              cm->stream));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    for (int32_t i = 0; i < n_rows; i++)
        if (rq[i].temperature > 0.0f)
            s->q_filled[slot[i]] = 1;
    return 0;
}
