/*
 * graphs.cu - CUDA graphs of forward passes. cuda_forward's passes in which
 * every token is an output row (decode and verification steps, draft
 * passes) of up to STEP_GRAPH_T tokens are captured at their first run and
 * replayed after: the kernels read tokens, positions and cache locations
 * from the state's device metadata and their grids depend only on T, n_out
 * and the state's context, so one graph per (T, mask) serves every such
 * pass (a state made with graphs = 0 launches every pass directly). Also
 * cuda_time_step: one pass replayed from its own graph and timed.
 */
#include "cuda/backend.cuh"

#include <stdlib.h>
#include <string.h>

void graph_reset(graph_slot *g)
{
    if (g->valid)
        cudaGraphExecDestroy(g->exec);
    free(g->mask);
    memset(g, 0, sizeof *g);
}

static int mask_equal(const graph_slot *g, const layer_mask *mask, int n_layers)
{
    if (!mask || !g->mask)
        return !mask && !g->mask;
    return !memcmp(g->mask, mask->attn, (size_t)n_layers) && !memcmp(g->mask + n_layers, mask->mlp, (size_t)n_layers);
}

/* Capture forward_core(T, n_out = T) into g as a graph of this kind,
 * replacing what g held. The kernels must be loaded already (modules load
 * lazily, and loading cannot be captured): run the same pass once before.
 * Capture records, it does not run. */
static int graph_capture(cuda_state *s, graph_slot *g, int kind, int32_t T, const layer_mask *mask, char *err,
                         size_t errlen)
{
    cuda_model *cm = s->cm;
    int n_layers = cm->c.n_layers;
    graph_reset(g);
    cudaCheck(cudaStreamSynchronize(cm->stream));
    cudaGraph_t graph;
    cudaCheck(cudaStreamBeginCapture(cm->stream, cudaStreamCaptureModeThreadLocal));
    int rc = forward_core(s, T, T, mask, err, errlen);
    cudaError_t e = cudaStreamEndCapture(cm->stream, &graph);
    if (rc != 0)
        return -1;
    cudaCheck(e);
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    cudaCheck(e);
    g->valid = 1;
    g->kind = kind;
    g->T = T;
    if (mask) {
        g->mask = (uint8_t *)malloc(2 * (size_t)n_layers);
        if (!g->mask)
            return util_err(err, errlen, "out of memory");
        memcpy(g->mask, mask->attn, (size_t)n_layers);
        memcpy(g->mask + n_layers, mask->mlp, (size_t)n_layers);
    }
    return 0;
}

/* One cuda_forward pass (fixed order) of T tokens, n_out output rows, over
 * the metadata already uploaded. A pass in which every token is an output
 * row and T <= STEP_GRAPH_T replays its captured graph (see the top). On a
 * miss the pass runs directly (which loads its kernels), then is captured. */
int step_graph_run(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err, size_t errlen)
{
    cuda_model *cm = s->cm;
    graph_slot *g = s->graphs && n_out == T && T >= 1 && T <= STEP_GRAPH_T ? &s->g_step[mask != NULL][T - 1]
                                                                          : NULL;
    if (g && g->valid && g->kind == GRAPH_PASS && g->T == T && mask_equal(g, mask, cm->c.n_layers)) {
        cudaCheck(cudaGraphLaunch(g->exec, cm->stream));
        return 0;
    }
    if (forward_core(s, T, n_out, mask, err, errlen) != 0)
        return -1;
    return g ? graph_capture(s, g, GRAPH_PASS, T, mask, err, errlen) : 0;
}

/* Metadata for one block of T tokens of sequence 0 at pos (token ids tok,
 * a placeholder), every token an output row, on a contiguous kv. */
static void pack_step(cuda_state *s, int32_t tok, int32_t pos, const cuda_kv *kv, const cuda_kv *scratch,
                      int32_t scratch_base, int32_t T)
{
    size_t o_pos, o_seq, o_out, o_seqs;
    meta_layout(s->max_tokens, &o_pos, &o_seq, &o_out, &o_seqs);
    uint8_t *b = (uint8_t *)s->meta_h;
    for (int32_t j = 0; j < T; j++) {
        ((int32_t *)b)[j] = tok;
        ((int32_t *)(b + o_pos))[j] = pos + j;
        ((int32_t *)(b + o_seq))[j] = 0;
        ((int32_t *)(b + o_out))[j] = j;
    }
    s->bt_used = 0;
    ((dev_seq *)(b + o_seqs))[0] = seq_desc(kv, NULL, scratch, scratch_base);
}

extern "C" int cuda_time_step(cuda_model *cm, cuda_state *s, cuda_kv *kv, cuda_kv *scratch,
                              const layer_mask *mask, int32_t T, int32_t pos, int iters,
                              double *ms, char *err, size_t errlen)
{
    if (T <= 0 || T > s->max_tokens || pos < 0 || pos + T > kv->cap || pos + T > s->ctx || iters <= 0 ||
        (mask && (!scratch || scratch->cap < T)))
        return util_err(err, errlen, "cuda_time_step: bad arguments");
    if (contiguous_only(kv, "cuda_time_step", err, errlen) != 0 ||
        contiguous_only(scratch, "cuda_time_step", err, errlen) != 0)
        return -1;
    cudaCheck(cudaSetDevice(cm->device));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    pack_step(s, 1, pos, kv, mask ? scratch : NULL, pos, T);
    if (upload_meta(s, err, errlen) != 0)
        return -1;
    /* a warm-up pass (it loads the kernels and writes the same KV entries
     * the replays will), then the capture */
    graph_reset(&s->g_time);
    if (forward_core(s, T, T, mask, err, errlen) != 0 ||
        graph_capture(s, &s->g_time, GRAPH_TIME, T, mask, err, errlen) != 0)
        return -1;
    cudaEvent_t a, b;
    cudaCheck(cudaEventCreate(&a));
    cudaCheck(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++)
        cudaCheck(cudaGraphLaunch(s->g_time.exec, cm->stream));
    cudaCheck(cudaEventRecord(a, cm->stream));
    for (int i = 0; i < iters; i++)
        cudaCheck(cudaGraphLaunch(s->g_time.exec, cm->stream));
    cudaCheck(cudaEventRecord(b, cm->stream));
    cudaCheck(cudaEventSynchronize(b));
    float t = 0.0f;
    cudaCheck(cudaEventElapsedTime(&t, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    *ms = (double)t / iters;
    return 0;
}
