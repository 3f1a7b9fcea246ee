/*
 * weights.cu - the weights on the device (see model/cuda_backend.h): the U8A
 * matrices of the CPU arena dequantized once (qmat_dequant_row, the CPU
 * reference) to half precision in ONE 2 MiB-aligned allocation with the
 * fp32 norm vectors, uploaded from several host threads (load_weights);
 * the same layout with random weights made on the device
 * (cuda_synthetic_model), or with only some sublayers
 * (cuda_model_load_masked); what a step reads (cuda_model_step_bytes).
 *
 * Weight allocation layout (weights_plan): a deterministic walk over the
 * model config, 256-byte aligned pieces, total rounded up to 2 MiB:
 *   tok_embd (vrows, dim) wt | output (vrows, dim) wt unless tied |
 *   out_norm (dim) f32 | per layer: attn_norm, ffn_norm (dim) f32,
 *   wqkv (dim + 2 kv_dim, dim), wo (dim, dim), w_gate_up (2 hidden, dim),
 *   w_down (dim, hidden) wt
 * with vrows the vocabulary rounded up to 16 (padding rows zero). All
 * matrices are row-major (rows = output features), as qmat_dequant_row
 * produces them. An importing process (ipc.cu) recomputes the same offsets
 * from the config in the IPC blob.
 */
#include "cuda/backend.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

extern "C" {
#include "kernels/qmat.h"
}

static size_t take(size_t *off, size_t bytes)
{
    size_t o = (*off + ALIGN_PIECE - 1) & ~(size_t)(ALIGN_PIECE - 1);
    *off = o + bytes;
    return o;
}

/* Assign every pointer of cm from base (NULL while sizing); returns bytes. */
size_t weights_plan(cuda_model *cm, uint8_t *base)
{
    const model_config *c = &cm->c;
    size_t off = 0, D = (size_t)c->dim, H = (size_t)c->hidden_dim, KV = (size_t)c->kv_dim;
#define AT(type, bytes) ((type *)(base ? base + take(&off, (bytes)) : (take(&off, (bytes)), (uint8_t *)NULL)))
    cm->tok_embd = AT(wt, (size_t)cm->vrows * D * sizeof(wt));
    cm->output = cm->tied ? cm->tok_embd : AT(wt, (size_t)cm->vrows * D * sizeof(wt));
    cm->out_norm = AT(float, D * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        dev_layer *L = &cm->layers[l];
        int attn = !cm->keep || cm->keep[l], mlp = !cm->keep || cm->keep[c->n_layers + l];
        L->attn_norm = AT(float, D * sizeof(float));
        L->ffn_norm = AT(float, D * sizeof(float));
        L->wqkv = attn ? AT(wt, (D + 2 * KV) * D * sizeof(wt)) : NULL;
        L->bqkv = attn && c->qkv_bias ? AT(float, (D + 2 * KV) * sizeof(float)) : NULL;
        L->wo = attn ? AT(wt, D * D * sizeof(wt)) : NULL;
        L->wgu = mlp ? AT(wt, 2 * H * D * sizeof(wt)) : NULL;
        L->wdown = mlp ? AT(wt, D * H * sizeof(wt)) : NULL;
    }
#undef AT
    return (off + ALIGN_ALLOC - 1) & ~(ALIGN_ALLOC - 1);
}

static int config_ok(const model_config *c, char *err, size_t errlen)
{
    if (c->qk_norm || c->post_norms || c->embd_scale || c->mlp_act != MODEL_MLP_SWIGLU || c->swa_window > 0 ||
        c->final_softcap > 0.0f || c->q_dim != c->dim || c->rope_factors || c->rope_scale != 1.0f)
        return util_err(err, errlen, "the CUDA backend runs Llama-block models (llama, qwen2) only; "
                        "'%s' (Q/K norms, post-norms, GeGLU, sliding windows, a separate head size or RoPE scaling) "
                        "runs on the CPU backend", c->arch);
    if (c->dim <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_layers <= 0 || c->vocab_size <= 0 ||
        c->hidden_dim <= 0 || c->n_heads % c->n_kv_heads != 0 || c->head_dim * c->n_heads != c->dim ||
        c->kv_dim != c->n_kv_heads * c->head_dim || c->head_dim % 2 != 0)
        return util_err(err, errlen, "inconsistent model shape");
    if (c->dim % PROJ_VEC != 0 || c->hidden_dim % PROJ_VEC != 0 || c->head_dim % 8 != 0)
        return util_err(err, errlen, "the CUDA kernels need dim, hidden_dim and head_dim multiples of 8 "
                        "(%d, %d, %d)", c->dim, c->hidden_dim, c->head_dim);
    if (c->head_dim > ATT_MAX_HD)
        return util_err(err, errlen, "head_dim %d exceeds the CUDA attention kernel's limit %d",
                        c->head_dim, ATT_MAX_HD);
    return 0;
}

/* The model's stream and layer table. */
static int model_common_init(cuda_model *cm, char *err, size_t errlen)
{
    cudaCheck(cudaStreamCreateWithFlags(&cm->stream, cudaStreamNonBlocking));
    cm->layers = (dev_layer *)calloc((size_t)cm->c.n_layers, sizeof(dev_layer));
    if (!cm->layers)
        return util_err(err, errlen, "out of memory");
    return 0;
}

cuda_model *model_new(const model_config *c, int tied, int device, char *err, size_t errlen)
{
    if (config_ok(c, err, errlen) != 0 || check_device(device, err, errlen) != 0)
        return NULL;
    cuda_model *cm = (cuda_model *)calloc(1, sizeof *cm);
    if (!cm) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    cm->c = *c;
    cm->device = device;
    cm->tied = tied;
    cm->vrows = (c->vocab_size + QMAT_ROWS - 1) / QMAT_ROWS * QMAT_ROWS;
    if (model_common_init(cm, err, errlen) != 0) {
        cuda_model_free(cm);
        return NULL;
    }
    return cm;
}

static int alloc_weights(cuda_model *cm, char *err, size_t errlen)
{
    cm->bytes = weights_plan(cm, NULL);
    cudaError_t e = cudaMalloc(&cm->base, cm->bytes);
    if (e != cudaSuccess) {
        cm->base = NULL;
        return util_err(err, errlen, "cudaMalloc of %zu MB of weights: %s", cm->bytes >> 20, cudaGetErrorString(e));
    }
    weights_plan(cm, (uint8_t *)cm->base);
    cudaCheck(cudaMemsetAsync(cm->base, 0, cm->bytes, cm->stream));
    return 0;
}

/*
 * Weight upload. The U8A matrices are dequantized on the host (the CPU
 * reference, qmat_dequant_row) to wt in slabs of rows; UPLOAD_THREADS host
 * threads take slabs from a shared counter, each on its own stream with two
 * pinned staging buffers: while one buffer's copy runs, the thread fills
 * the other (it waits on the event of that buffer's previous copy, never on
 * the stream). Each thread synchronizes its stream once, at its end; the
 * norm and bias vectors go from one pinned block on the model's stream. The
 * workers' streams wait for the zeroing memset of alloc_weights (the
 * padding rows of the vocabulary) before their first copy.
 */
#define UPLOAD_THREADS 4
#define UPLOAD_STAGE_ELEMS ((size_t)4 << 20)   /* wt per staging buffer (8 MiB of fp16) */

struct up_slab {
    const qmat *W;
    int32_t r0, n;                /* rows r0 .. r0 + n - 1 */
    wt *dst;                      /* device row r0 */
};

struct up_mat {
    const qmat *W;
    int32_t rows;
    wt *dst;
};

struct up_worker {
    cuda_model *cm;
    const up_slab *slabs;
    int n_slabs;
    int *next;                    /* next slab to take (shared, atomic) */
    cudaEvent_t zeroed;           /* recorded after the memset */
    size_t stage_elems;
    int32_t maxc;
    int rc;
    char err[256];
};

static int upload_slabs(up_worker *u, cudaStream_t st, wt *const stage[2], const cudaEvent_t done[2], float *rowbuf,
                        char *err, size_t errlen)
{
    cudaCheck(cudaStreamWaitEvent(st, u->zeroed, 0));
    for (int k = 0;; k++) {
        int i = __atomic_fetch_add(u->next, 1, __ATOMIC_RELAXED);
        if (i >= u->n_slabs)
            break;
        const up_slab *sl = &u->slabs[i];
        int b = k & 1;
        if (k >= 2)
            cudaCheck(cudaEventSynchronize(done[b]));   /* buffer b's last copy has left */
        int32_t cols = sl->W->cols;
        for (int32_t r = 0; r < sl->n; r++) {
            qmat_dequant_row(sl->W, sl->r0 + r, rowbuf);
            wt *o = stage[b] + (size_t)r * cols;
            for (int32_t j = 0; j < cols; j++)
                o[j] = to_wt(rowbuf[j]);
        }
        cudaCheck(cudaMemcpyAsync(sl->dst, stage[b], (size_t)sl->n * cols * sizeof(wt), cudaMemcpyHostToDevice, st));
        cudaCheck(cudaEventRecord(done[b], st));
    }
    cudaCheck(cudaStreamSynchronize(st));                 /* the thread's one sync */
    return 0;
}

static void *upload_worker_run(void *arg)
{
    up_worker *u = (up_worker *)arg;
    char *err = u->err;
    size_t errlen = sizeof u->err;
    cudaStream_t st = NULL;
    wt *stage[2] = {NULL, NULL};
    cudaEvent_t done[2];
    int n_ev = 0;
    float *rowbuf = (float *)malloc((size_t)u->maxc * sizeof(float));
    u->rc = -1;
    if (!rowbuf) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    cudaError_t e = cudaSetDevice(u->cm->device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    for (int b = 0; b < 2 && e == cudaSuccess; b++)
        e = cudaMallocHost((void **)&stage[b], u->stage_elems * sizeof(wt));
    for (int b = 0; b < 2 && e == cudaSuccess; b++)
        if ((e = cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming)) == cudaSuccess)
            n_ev++;
    if (e != cudaSuccess) {
        util_err(err, errlen, "%s:%d: weight upload set-up: %s", __FILE__, __LINE__, cudaGetErrorString(e));
        cudaGetLastError();
    } else {
        u->rc = upload_slabs(u, st, stage, done, rowbuf, err, errlen);
    }
    if (st)
        cudaStreamSynchronize(st);
    for (int b = 0; b < n_ev; b++)
        cudaEventDestroy(done[b]);
    for (int b = 0; b < 2; b++)
        if (stage[b])
            cudaFreeHost(stage[b]);
    if (st)
        cudaStreamDestroy(st);
    free(rowbuf);
    return NULL;
}

/* The norm (and bias) vectors: one pinned block, one async copy each on the
 * model's stream (synchronized by the caller). */
static int upload_vectors(cuda_model *cm, const model *m, float **pinned, char *err, size_t errlen)
{
    const model_config *c = &cm->c;
    size_t qkv = (size_t)c->dim + 2 * (size_t)c->kv_dim;
    size_t per = 2 * (size_t)c->dim + (c->qkv_bias ? qkv : 0);
    size_t total = (size_t)c->dim + (size_t)c->n_layers * per;
    cudaCheck(cudaMallocHost((void **)pinned, total * sizeof(float)));
    float *h = *pinned;
#define VEC(src, dst, n)                                                                          \
    do {                                                                                          \
        memcpy(h, (src), (size_t)(n) * sizeof(float));                                            \
        cudaCheck(cudaMemcpyAsync((dst), h, (size_t)(n) * sizeof(float), cudaMemcpyHostToDevice, cm->stream)); \
        h += (n);                                                                                 \
    } while (0)
    VEC(m->w.out_norm, cm->out_norm, c->dim);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m->w.layers[l];
        dev_layer *D = &cm->layers[l];
        VEC(L->attn_norm, D->attn_norm, c->dim);
        VEC(L->ffn_norm, D->ffn_norm, c->dim);
        if (D->bqkv)
            VEC(L->bqkv, D->bqkv, qkv);
    }
#undef VEC
    return 0;
}

static int load_weights(cuda_model *cm, const model *m, char *err, size_t errlen)
{
    const model_config *c = &cm->c;
    const model_weights *w = &m->w;
    int32_t maxc = c->hidden_dim > c->dim ? c->hidden_dim : c->dim;
    size_t stage_elems = UPLOAD_STAGE_ELEMS;
    if (stage_elems < (size_t)maxc * 16)
        stage_elems = (size_t)maxc * 16;
    /* every matrix, cut into slabs of whole rows that fit a staging buffer */
    up_mat *mats = (up_mat *)malloc((2 + 4 * (size_t)c->n_layers) * sizeof *mats);
    int n_mats = 0;
    if (!mats)
        return util_err(err, errlen, "out of memory");
    mats[n_mats++] = {&w->tok_embd, c->vocab_size, cm->tok_embd};
    if (!cm->tied)
        mats[n_mats++] = {&w->output, c->vocab_size, cm->output};
    for (int32_t l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &w->layers[l];
        dev_layer *D = &cm->layers[l];
        if (D->wqkv) {   /* a sublayer this copy does not hold (keep) has no matrices */
            mats[n_mats++] = {&L->wqkv, L->wqkv.rows, D->wqkv};
            mats[n_mats++] = {&L->wo, L->wo.rows, D->wo};
        }
        if (D->wgu) {
            mats[n_mats++] = {&L->w_gate_up, L->w_gate_up.rows, D->wgu};
            mats[n_mats++] = {&L->w_down, L->w_down.rows, D->wdown};
        }
    }
    int n_slabs = 0;
    for (int i = 0; i < n_mats; i++) {
        int32_t slab = (int32_t)(stage_elems / (size_t)mats[i].W->cols);
        n_slabs += (mats[i].rows + slab - 1) / slab;
    }
    up_slab *slabs = (up_slab *)malloc((size_t)n_slabs * sizeof *slabs);
    float *pinned = NULL;
    int next = 0, rc = -1, started = 0;
    up_worker u[UPLOAD_THREADS];
    pthread_t th[UPLOAD_THREADS];
    int joinable[UPLOAD_THREADS] = {0};
    cudaEvent_t zeroed;
    int have_event = 0;
    if (!slabs) {
        util_err(err, errlen, "out of memory");
        goto out;
    }
    n_slabs = 0;
    for (int i = 0; i < n_mats; i++) {
        int32_t cols = mats[i].W->cols, slab = (int32_t)(stage_elems / (size_t)cols);
        for (int32_t r0 = 0; r0 < mats[i].rows; r0 += slab)
            slabs[n_slabs++] = {mats[i].W, r0, mats[i].rows - r0 < slab ? mats[i].rows - r0 : slab,
                                mats[i].dst + (size_t)r0 * cols};
    }
    if (cudaEventCreateWithFlags(&zeroed, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(zeroed, cm->stream) != cudaSuccess) {
        util_err(err, errlen, "%s:%d: weight upload: %s", __FILE__, __LINE__, cudaGetErrorString(cudaGetLastError()));
        goto out;
    }
    have_event = 1;
    for (int i = 0; i < UPLOAD_THREADS; i++) {
        u[i].cm = cm;
        u[i].slabs = slabs;
        u[i].n_slabs = n_slabs;
        u[i].next = &next;
        u[i].zeroed = zeroed;
        u[i].stage_elems = stage_elems;
        u[i].maxc = maxc;
        u[i].rc = -1;
        u[i].err[0] = '\0';
        joinable[i] = pthread_create(&th[i], NULL, upload_worker_run, &u[i]) == 0;
        started += joinable[i];
    }
    if (!started)              /* no threads to be had: this one does it all */
        upload_worker_run(&u[0]);
    rc = upload_vectors(cm, m, &pinned, err, errlen);
    for (int i = 0; i < UPLOAD_THREADS; i++)
        if (joinable[i])
            pthread_join(th[i], NULL);
    if (rc == 0)
        for (int i = 0; i < UPLOAD_THREADS; i++)
            if ((joinable[i] || (!started && i == 0)) && u[i].rc != 0) {
                rc = util_err(err, errlen, "uploading weights: %s", u[i].err);
                break;
            }
    if (cudaStreamSynchronize(cm->stream) != cudaSuccess && rc == 0)
        rc = util_err(err, errlen, "uploading weights: %s", cudaGetErrorString(cudaGetLastError()));
out:
    if (have_event)
        cudaEventDestroy(zeroed);
    if (pinned)
        cudaFreeHost(pinned);
    free(slabs);
    free(mats);
    return rc;
}

extern "C" cuda_model *cuda_model_load(const model *m, int device, char *err, size_t errlen)
{
    return cuda_model_load_masked(m, device, NULL, err, errlen);
}

extern "C" cuda_model *cuda_model_load_masked(const model *m, int device, const layer_mask *keep, char *err,
                                              size_t errlen)
{
    const model_config *c = &m->config;
    int tied = m->w.output.q == m->w.tok_embd.q;
    const layer_weights *L0 = &m->w.layers[0];
    if (L0->wqkv.rows != c->dim + 2 * c->kv_dim || L0->wqkv.cols != c->dim ||
        L0->w_gate_up.rows != 2 * c->hidden_dim || L0->w_down.cols != c->hidden_dim) {
        util_err(err, errlen, "unexpected weight shapes in the CPU model");
        return NULL;
    }
    cuda_model *cm = model_new(c, tied, device, err, errlen);
    if (!cm)
        return NULL;
    if (keep) {
        if (!(cm->keep = (uint8_t *)malloc(2 * (size_t)c->n_layers))) {
            util_err(err, errlen, "out of memory");
            cuda_model_free(cm);
            return NULL;
        }
        memcpy(cm->keep, keep->attn, (size_t)c->n_layers);
        memcpy(cm->keep + c->n_layers, keep->mlp, (size_t)c->n_layers);
    }
    if (alloc_weights(cm, err, errlen) != 0 || load_weights(cm, m, err, errlen) != 0) {
        cuda_model_free(cm);
        return NULL;
    }
    return cm;
}

extern "C" cuda_model *cuda_synthetic_model(const model_config *c, int tied, uint64_t seed, int device,
                                            char *err, size_t errlen)
{
    cuda_model *cm = model_new(c, tied, device, err, errlen);
    if (!cm)
        return NULL;
    if (alloc_weights(cm, err, errlen) != 0)
        goto fail;
    {
        /* uniform(-a, a) with a = sqrt(3 / cols): unit-variance outputs for
         * unit-variance inputs; embeddings of order 1; norms 1. */
        size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, KV = (size_t)c->kv_dim;
        uint64_t s = seed * 1000003ull;
        cudaStream_t st = cm->stream;
        launch_fill_uniform(st, cm->tok_embd, (size_t)c->vocab_size * D, s++, 1.0f);
        if (!tied)
            launch_fill_uniform(st, cm->output, (size_t)c->vocab_size * D, s++, sqrtf(3.0f / c->dim));
        launch_fill_f32(st, cm->out_norm, D, 1.0f);
        float ad = sqrtf(3.0f / c->dim), ah = sqrtf(3.0f / c->hidden_dim);
        for (int l = 0; l < c->n_layers; l++) {
            dev_layer *L = &cm->layers[l];
            launch_fill_f32(st, L->attn_norm, D, 1.0f);
            launch_fill_f32(st, L->ffn_norm, D, 1.0f);
            launch_fill_uniform(st, L->wqkv, (D + 2 * KV) * D, s++, ad);
            if (L->bqkv)
                launch_fill_f32(st, L->bqkv, D + 2 * KV, 0.0f);
            launch_fill_uniform(st, L->wo, D * D, s++, ad);
            launch_fill_uniform(st, L->wgu, 2 * H * D, s++, ad);
            launch_fill_uniform(st, L->wdown, D * H, s++, ah);
        }
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            util_err(err, errlen, "generating synthetic weights: %s", cudaGetErrorString(e));
            goto fail;
        }
    }
    return cm;
fail:
    cuda_model_free(cm);
    return NULL;
}

extern "C" void cuda_model_free(cuda_model *cm)
{
    if (!cm)
        return;
    cudaSetDevice(cm->device);
    if (cm->stream)
        cudaStreamSynchronize(cm->stream);
    if (cm->has_ipc_event)
        cudaEventDestroy(cm->ipc_event);
    if (cm->base) {
        if (cm->imported)
            cudaIpcCloseMemHandle(cm->base);
        else
            cudaFree(cm->base);
    }
    if (cm->ipc_kv_base)
        cudaIpcCloseMemHandle(cm->ipc_kv_base);
    if (cm->stream)
        cudaStreamDestroy(cm->stream);
    cudaGetLastError();
    free(cm->keep);
    free(cm->layers);
    free(cm);
}

extern "C" const model_config *cuda_model_get_config(const cuda_model *cm)
{
    return &cm->c;
}

extern "C" size_t cuda_model_weight_bytes(const cuda_model *cm)
{
    return cm->bytes;
}

extern "C" size_t cuda_model_step_bytes(const cuda_model *cm, const layer_mask *mask)
{
    const model_config *c = &cm->c;
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, KV = (size_t)c->kv_dim, b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!mask || mask->attn[l])
            b += ((D + 2 * KV) * D + D * D) * sizeof(wt) + D * sizeof(float);
        if (!mask || mask->mlp[l])
            b += 3 * H * D * sizeof(wt) + D * sizeof(float);
    }
    return b + (size_t)cm->vrows * D * sizeof(wt) + D * sizeof(float);
}
