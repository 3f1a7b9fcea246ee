/*
 * cuda_backend.cu - the CUDA backend (see cuda_backend.h): device weights in
 * one allocation (uploaded from several host threads, see load_weights),
 * KV caches, the forward pass (kernels in cuda_kernels.cu; projections
 * through the fixed-order k_proj, cuBLAS only for the decode loops' own
 * prefill), CUDA-graph decode loops and CUDA IPC.
 *
 * Weight allocation layout (weights_plan): a deterministic walk over the
 * model config, 256-byte aligned pieces, total rounded up to 2 MiB:
 *   tok_embd (vrows, dim) wt | output (vrows, dim) wt unless tied |
 *   out_norm (dim) f32 | per layer: attn_norm, ffn_norm (dim) f32,
 *   wqkv (dim + 2 kv_dim, dim), wo (dim, dim), w_gate_up (2 hidden, dim),
 *   w_down (dim, hidden) wt
 * with vrows the vocabulary rounded up to 16 (padding rows zero). All
 * matrices are row-major (rows = output features), as qmat_dequant_row
 * produces them. An importing process recomputes the same offsets from the
 * config in the IPC blob.
 *
 * Matrix products (gemm_xwt): Y (T, rows) = X (T, cols) . W^T with W
 * row-major (rows, cols), X row-major (T, cols) in wt, Y row-major fp32.
 * cuBLAS is column-major: a row-major (a, b) array with leading dimension b
 * is the column-major (b, a) array, its transpose. So Y^T (rows x T, col-
 * major, ld rows) = W (rows x cols) . X^T (cols x T): A = W's memory seen as
 * col-major (cols x rows), ld cols, used with OP_T -> (rows x cols); B = X's
 * memory seen as col-major (cols x T), ld cols, OP_N; m = rows, n = T,
 * k = cols. beta = 1 accumulates into Y: that is how the residual adds of
 * the attention output and MLP down projections are fused.
 */
#include "kernels/cuda_internal.cuh"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

extern "C" {
#include "model/cuda_backend.h"
#include "kernels/qmat.h"
}

#define ALIGN_PIECE 256
#define ALIGN_ALLOC ((size_t)2 << 20)
#define PLAIN_CHUNK 16          /* graph steps between token copies */
#define MAX_DRAFT 32

struct dev_layer {
    float *attn_norm, *ffn_norm;
    float *bqkv;                  /* (dim + 2 kv_dim) Q/K/V biases, or NULL */
    wt *wqkv, *wo, *wgu, *wdown;
};

struct cuda_model {
    model_config c;
    int device;
    int tied;
    int32_t vrows;                /* vocabulary rounded up to 16 */
    void *base;                   /* the weight allocation */
    size_t bytes;
    int imported;                 /* base came from cudaIpcOpenMemHandle */
    wt *tok_embd, *output;
    float *out_norm;
    dev_layer *layers;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    cudaEvent_t ipc_event;        /* interprocess event (export or import) */
    int has_ipc_event;
    void *ipc_kv_base;            /* importer: opened KV allocation */
    uint8_t *keep;                /* (2 n_layers: attention, then MLP) the sublayers this
                                   * copy holds (cuda_model_load_masked); NULL: all */
};

struct cuda_kv {
    cuda_model *cm;
    void *base;                   /* K (n_layers, cap, kv_dim) then V; NULL for a paged view */
    size_t bytes;
    kvt *k, *v;                   /* a paged view: the pool's K and V */
    int32_t cap, len;
    int imported;                 /* aliases another process's cache */
    const int32_t *blocks;        /* a paged view: host (cap / CO_KV_BLOCK) pool blocks, borrowed */
};

/* Paged KV: one allocation of n_blocks blocks, K then V, each
 * (n_blocks, n_layers, CO_KV_BLOCK, kv_dim) (kv_where, cuda_order.h). The
 * pool only holds memory; which block belongs to whom is the caller's
 * ledger (kv_ledger_init, model.h). */
struct cuda_kv_pool {
    cuda_model *cm;
    void *base;
    size_t bytes;
    kvt *k, *v;
    int32_t n_blocks;
};
static_assert(CO_KV_BLOCK == KV_BLOCK, "device and host KV blocks differ");

/* Per-batch metadata, laid out identically in pinned host and device memory:
 * tok, pos, seq (max_tokens each), outrow (max_tokens), seqs (max_tokens). */
#define STEP_GRAPH_T 64

struct graph_slot {
    cudaGraphExec_t exec;
    int valid;
    int kind;                     /* 1 plain step, 2 draft step, 3 timing, 4 an engine pass (cuda_forward) */
    int32_t T;
    uint8_t *mask;                /* copy of the mask (2 n_layers), NULL = full */
};

struct cuda_state {
    cuda_model *cm;
    int32_t max_tokens, ctx;
    float *x, *qkv, *hb, *logits;
    wt *xb, *att, *hs;
    float *att_part;              /* attention splits: (max_tokens, n_heads, att_splits) x (2 + head_dim) */
    int32_t att_span, att_splits; /* positions per split (att_span(ctx)), splits per token at most */
    float2 *rope;
    void *meta_d, *meta_h;        /* metadata block (device / pinned host) */
    size_t meta_bytes;
    int32_t *tok, *pos, *seq, *outrow;   /* device views into meta_d */
    dev_seq *seqs;
    int32_t *am;                  /* device argmax per output row */
    int32_t *ctl;                 /* device: [0] count, [1..] outputs; drafts */
    int32_t *ctl_h;               /* pinned host copy */
    graph_slot g_plain, g_draft, g_time;
    /* cuda_forward's passes in which every token is an output row (decode
     * and verification steps, draft passes) of up to STEP_GRAPH_T tokens:
     * captured at their first run, replayed after ([0] full model, [1] a
     * mask, recaptured when the mask changes); off with SELFSPEC_CUDA_GRAPHS=0 */
    graph_slot g_step[2][STEP_GRAPH_T];
    int graphs_off;
    int32_t last_out;             /* output rows of the last cuda_forward (logits, am) */
    samp_req *samp;               /* device: (max_tokens) sampling requests */
    int32_t *samp_ids;            /* device: (max_tokens) their tokens */
    uint8_t *samp_acc;            /* device: (max_tokens) test rows: accepted */
    int32_t *samp_slot;           /* device: (max_tokens) draft rows' q slots */
    float *samp_conf;             /* device: (max_tokens) draft rows' top-1 probabilities */
    float *qstore;                /* device: (q_slots, vocab_size) sampled drafts' warped distributions */
    int32_t q_slots;
    uint8_t *q_filled;            /* host: (q_slots) a draft has filled the slot */
    /* paged caches' block tables of the current pass: pinned host and
     * device, bt_cap entries, grown as a pass needs (dev_seq.w.bt points
     * into bt_d; values, not kernel arguments, so graphs stay valid) */
    int32_t *bt_h, *bt_d;
    size_t bt_cap, bt_used;
};

/* ------------------------------------------------------------------------ */

extern "C" int cuda_available(void)
{
    return 1;
}

extern "C" int cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();        /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

static int check_device(int device, char *err, size_t errlen)
{
    int n = cuda_device_count();
    if (n == 0)
        return util_err(err, errlen, "no CUDA device available");
    if (device < 0 || device >= n)
        return util_err(err, errlen, "CUDA device %d does not exist (%d visible)", device, n);
    cudaCheck(cudaSetDevice(device));
    return 0;
}

extern "C" int cuda_get_device_info(int device, cuda_device_info *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    if (check_device(device, err, errlen) != 0)
        return -1;
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, device));
    snprintf(info->name, sizeof info->name, "%.127s", p.name);
    info->total_mem = p.totalGlobalMem;
    info->sm_major = p.major;
    info->sm_minor = p.minor;
    info->multiprocessors = p.multiProcessorCount;
    int clk_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
        cudaGetLastError();
        clk_khz = bus_bits = 0;
    }
    /* bytes/s = 2 (double data rate) * clock (Hz) * bus width (bytes) */
    info->peak_bw_gbs = 2.0 * clk_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Weights                                                                   */

static size_t take(size_t *off, size_t bytes)
{
    size_t o = (*off + ALIGN_PIECE - 1) & ~(size_t)(ALIGN_PIECE - 1);
    *off = o + bytes;
    return o;
}

/* Assign every pointer of cm from base (NULL while sizing); returns bytes. */
static size_t weights_plan(cuda_model *cm, uint8_t *base)
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

/* Stream, cuBLAS handle with an explicit workspace (needed for capturing
 * cuBLAS calls in CUDA graphs without allocations), layer table. */
static int model_common_init(cuda_model *cm, char *err, size_t errlen)
{
    cudaCheck(cudaStreamCreateWithFlags(&cm->stream, cudaStreamNonBlocking));
    cublasCheck(cublasCreate(&cm->blas));
    cublasCheck(cublasSetStream(cm->blas, cm->stream));
    size_t ws = (size_t)32 << 20;
    cudaCheck(cudaMalloc(&cm->blas_ws, ws));
    cublasCheck(cublasSetWorkspace(cm->blas, cm->blas_ws, ws));
    cublasCheck(cublasSetMathMode(cm->blas, CUBLAS_DEFAULT_MATH));
    cm->layers = (dev_layer *)calloc((size_t)cm->c.n_layers, sizeof(dev_layer));
    if (!cm->layers)
        return util_err(err, errlen, "out of memory");
    return 0;
}

static cuda_model *model_new(const model_config *c, int tied, int device, char *err, size_t errlen)
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
    if (cm->blas)
        cublasDestroy(cm->blas);
    if (cm->blas_ws)
        cudaFree(cm->blas_ws);
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

/* ------------------------------------------------------------------------ */
/* KV caches                                                                 */

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

/* ------------------------------------------------------------------------ */
/* State                                                                     */

static void graph_reset(graph_slot *g)
{
    if (g->valid)
        cudaGraphExecDestroy(g->exec);
    free(g->mask);
    memset(g, 0, sizeof *g);
}

static size_t meta_layout(int32_t M, size_t *o_pos, size_t *o_seq, size_t *o_out, size_t *o_seqs)
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
    cudaCheck(cudaMalloc((void **)&s->ctl, (2 + 2 * (PLAIN_CHUNK + MAX_DRAFT)) * sizeof(int32_t)));
    cudaCheck(cudaMallocHost((void **)&s->ctl_h, (2 + 2 * (PLAIN_CHUNK + MAX_DRAFT)) * sizeof(int32_t)));
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

extern "C" cuda_state *cuda_state_init(cuda_model *cm, int32_t max_tokens, int32_t ctx, char *err, size_t errlen)
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
    const char *gv = getenv("SELFSPEC_CUDA_GRAPHS");
    s->graphs_off = gv && !strcmp(gv, "0");
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
    graph_reset(&s->g_plain);
    graph_reset(&s->g_draft);
    graph_reset(&s->g_time);
    for (int m = 0; m < 2; m++)
        for (int t = 0; t < STEP_GRAPH_T; t++)
            graph_reset(&s->g_step[m][t]);
    void *dev[] = {s->x,  s->qkv, s->hb,  s->logits, s->xb,     s->att,
                   s->hs, s->am,  s->ctl, s->meta_d, s->rope, s->att_part, s->samp, s->samp_ids,
                   s->samp_acc, s->samp_slot, s->samp_conf, s->qstore};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            cudaFree(dev[i]);
    if (s->meta_h)
        cudaFreeHost(s->meta_h);
    if (s->bt_d)
        cudaFree(s->bt_d);
    if (s->bt_h)
        cudaFreeHost(s->bt_h);
    if (s->ctl_h)
        cudaFreeHost(s->ctl_h);
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

/* ------------------------------------------------------------------------ */
/* Forward pass                                                              */

/* Y (T, rows) fp32 = X (T, cols) wt . W^T (+ Y when accumulate). fixed:
 * the fixed-order kernel (every token's row the same bits whatever T);
 * else cuBLAS (see the top comment for the column-major reasoning). */
static int gemm_xwt(cuda_model *cm, const wt *W, int rows, int cols, const wt *X, int T, float *Y,
                    int accumulate, int fixed, char *err, size_t errlen)
{
    if (fixed) {
        launch_proj(cm->stream, W, rows, cols, X, T, Y, accumulate);
        launchCheck();
        return 0;
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* m = rows, n = T, k = cols; A = W (col-major cols x rows, ld cols, OP_T),
     * B = X (col-major cols x T, ld cols, OP_N), C = Y (col-major rows x T,
     * ld rows) = row-major Y (T, rows). fp32 accumulation and output. */
    cublasCheck(cublasGemmEx(cm->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols, &alpha,
                             W, WT_CUDA_R, cols, X, WT_CUDA_R, cols, &beta,
                             Y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

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
 * head, no argmax, s->logits and s->am untouched. Launch configuration
 * depends only on (T, n_out, mask): capturable. */
static int forward_core(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, int fixed, char *err,
                        size_t errlen)
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
            if (gemm_xwt(cm, L->wqkv, D + 2 * KV, D, s->xb, T, s->qkv, 0, fixed, err, errlen))
                return -1;
            launch_rope_kv(st, s->qkv, L->bqkv, c->rope_neox, T, s->pos, s->seq, s->seqs, s->rope, l,
                           c->n_heads, c->n_kv_heads, c->head_dim, D, KV);
            launchCheck();
            launch_attention(st, s->qkv, s->att, T, s->pos, s->seq, s->seqs, l, c->n_heads, c->n_kv_heads,
                             c->head_dim, D, KV, s->att_part, s->att_span, s->att_splits);
            launchCheck();
            /* x += att . wo^T */
            if (gemm_xwt(cm, L->wo, D, D, s->att, T, s->x, 1, fixed, err, errlen))
                return -1;
        }
        if (!mask || mask->mlp[l]) {
            launch_rmsnorm(st, s->x, NULL, L->ffn_norm, s->xb, T, D, c->norm_eps);
            launchCheck();
            /* hb (T, 2H) = xb . w_gate_up^T */
            if (gemm_xwt(cm, L->wgu, 2 * H, D, s->xb, T, s->hb, 0, fixed, err, errlen))
                return -1;
            launch_swiglu(st, s->hb, s->hs, T, H);
            launchCheck();
            /* x += hs . w_down^T */
            if (gemm_xwt(cm, L->wdown, D, H, s->hs, T, s->x, 1, fixed, err, errlen))
                return -1;
        }
    }
    /* No row wants logits (a prefill chunk before the last, a KV-only
     * pass): stop here. A grid of zero blocks is an invalid launch
     * configuration, and cuBLAS has nothing to do for n = 0. */
    if (n_out <= 0)
        return 0;
    launch_rmsnorm(st, s->x, s->outrow, cm->out_norm, s->xb, n_out, D, c->norm_eps);
    launchCheck();
    /* logits (n_out, vrows) = xb . output^T; padding rows are zero */
    if (gemm_xwt(cm, cm->output, cm->vrows, D, s->xb, n_out, s->logits, 0, fixed, err, errlen))
        return -1;
    launch_argmax(st, s->logits, cm->vrows, c->vocab_size, n_out, s->am);
    launchCheck();
    return 0;
}

/* The descriptor of one sequence; bt: where a paged kv's block table is
 * in device memory (NULL for a contiguous one). */
static dev_seq seq_desc(const cuda_kv *kv, const int32_t *bt, const cuda_kv *scratch, int32_t scratch_base)
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

static int upload_meta(cuda_state *s, char *err, size_t errlen)
{
    cudaCheck(cudaMemcpyAsync(s->meta_d, s->meta_h, s->meta_bytes, cudaMemcpyHostToDevice, s->cm->stream));
    if (s->bt_used > 0)
        cudaCheck(cudaMemcpyAsync(s->bt_d, s->bt_h, s->bt_used * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  s->cm->stream));
    return 0;
}

/* cuda_forward; fixed = 0: cuBLAS for every projection (the backend's own
 * prefill, which plain and self-speculative decoding share). */
static int step_graph_run(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err,
                          size_t errlen);

static int forward_batch(cuda_model *cm, cuda_state *s, const cuda_seq *seqs, int n_seqs, const layer_mask *mask,
                         float *logits, int32_t *argmax, int fixed, char *err, size_t errlen)
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
    if (fixed ? step_graph_run(s, T, n_out, mask, err, errlen) != 0
              : forward_core(s, T, n_out, mask, fixed, err, errlen) != 0)
        return -1;
    s->last_out = n_out;
    if (logits && n_out > 0)
        /* only for tests / checks: the decode loops never copy logits */
        cudaCheck(cudaMemcpy2DAsync(logits, (size_t)cm->c.vocab_size * sizeof(float), s->logits,
                                    (size_t)cm->vrows * sizeof(float), (size_t)cm->c.vocab_size * sizeof(float),
                                    (size_t)n_out, cudaMemcpyDeviceToHost, cm->stream));
    if (argmax && n_out > 0)
        cudaCheck(cudaMemcpyAsync(argmax, s->am, (size_t)n_out * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                  cm->stream));
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}

/* Exact by construction: every pass runs the fixed-order projections, so
 * a token's logits are the same bits in a plain step, a verification block,
 * a batch, or a pass whose prompt chunk was cut anywhere. */
extern "C" int cuda_forward(cuda_model *cm, cuda_state *s, const cuda_seq *seqs, int n_seqs,
                            const layer_mask *mask, float *logits, int32_t *argmax, char *err, size_t errlen)
{
    return forward_batch(cm, s, seqs, n_seqs, mask, logits, argmax, 1, err, errlen);
}

extern "C" int cuda_argmax_host(int device, const float *logits, int32_t rows, int32_t n, int32_t *out,
                                char *err, size_t errlen)
{
    if (rows <= 0 || n <= 0 || !logits || !out)
        return util_err(err, errlen, "cuda_argmax_host: bad arguments (rows %d, n %d)", rows, n);
    cudaCheck(cudaSetDevice(device));
    float *d = NULL;
    int32_t *am = NULL;
    size_t bytes = (size_t)rows * (size_t)n * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&d, bytes);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&am, (size_t)rows * sizeof(int32_t));
    if (e == cudaSuccess)
        e = cudaMemcpy(d, logits, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        launch_argmax(0, d, n, n, rows, am);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaMemcpy(out, am, (size_t)rows * sizeof(int32_t), cudaMemcpyDeviceToHost);
    cudaFree(d);
    cudaFree(am);
    if (e != cudaSuccess)
        return util_err(err, errlen, "%s:%d: cuda_argmax_host: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    return 0;
}

/* Buffers of cuda_proj_check; freed by proj_check_free. */
struct proj_bufs {
    wt *W, *X;
    float *Yf, *Y1, *Yc;          /* (T, rows): fixed, token by token, cuBLAS */
    float *hf, *h1, *hc;          /* host copies */
    cudaStream_t st;
    cublasHandle_t blas;
    void *ws;
    cudaEvent_t a, b;
    int have_events;
};

static void proj_check_free(proj_bufs *p)
{
    if (p->st)
        cudaStreamSynchronize(p->st);
    void *dev[] = {p->W, p->X, p->Yf, p->Y1, p->Yc, p->ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            cudaFree(dev[i]);
    free(p->hf);
    free(p->h1);
    free(p->hc);
    if (p->have_events) {
        cudaEventDestroy(p->a);
        cudaEventDestroy(p->b);
    }
    if (p->blas)
        cublasDestroy(p->blas);
    if (p->st)
        cudaStreamDestroy(p->st);
    cudaGetLastError();
}

static int proj_check_run(proj_bufs *p, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                          char *err, size_t errlen)
{
    size_t ny = (size_t)T * rows;
    cudaCheck(cudaStreamCreateWithFlags(&p->st, cudaStreamNonBlocking));
    cudaCheck(cudaMalloc((void **)&p->W, (size_t)rows * cols * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&p->X, (size_t)T * cols * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&p->Yf, ny * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&p->Y1, ny * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&p->Yc, ny * sizeof(float)));
    p->hf = (float *)malloc(ny * sizeof(float));
    p->h1 = (float *)malloc(ny * sizeof(float));
    p->hc = (float *)malloc(ny * sizeof(float));
    if (!p->hf || !p->h1 || !p->hc)
        return util_err(err, errlen, "out of memory");
    size_t ws = (size_t)32 << 20;
    cudaCheck(cudaMalloc(&p->ws, ws));
    cublasCheck(cublasCreate(&p->blas));
    cublasCheck(cublasSetStream(p->blas, p->st));
    cublasCheck(cublasSetWorkspace(p->blas, p->ws, ws));
    cudaCheck(cudaEventCreate(&p->a));
    cudaCheck(cudaEventCreate(&p->b));
    p->have_events = 1;
    launch_fill_uniform(p->st, p->W, (size_t)rows * cols, 17, sqrtf(3.0f / cols));
    launch_fill_uniform(p->st, p->X, (size_t)T * cols, 29, 1.0f);
    launchCheck();
    const float alpha = 1.0f, beta = 0.0f;
#define PROJ_CUBLAS()                                                                                   \
    cublasCheck(cublasGemmEx(p->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols, &alpha, p->W, WT_CUDA_R, cols, \
                             p->X, WT_CUDA_R, cols, &beta, p->Yc, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,    \
                             CUBLAS_GEMM_DEFAULT))
    launch_proj(p->st, p->W, rows, cols, p->X, T, p->Yf, 0);
    for (int32_t t = 0; t < T; t++)
        launch_proj(p->st, p->W, rows, cols, p->X + (size_t)t * cols, 1, p->Y1 + (size_t)t * rows, 0);
    launchCheck();
    PROJ_CUBLAS();
    cudaCheck(cudaMemcpyAsync(p->hf, p->Yf, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaMemcpyAsync(p->h1, p->Y1, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaMemcpyAsync(p->hc, p->Yc, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaStreamSynchronize(p->st));
    r->rows_identical = memcmp(p->hf, p->h1, ny * sizeof(float)) == 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)p->hf[i] - p->hc[i]);
        r->max_abs_diff = d > r->max_abs_diff || d != d ? d : r->max_abs_diff;
        r->max_abs = fabs((double)p->hc[i]) > r->max_abs ? fabs((double)p->hc[i]) : r->max_abs;
    }
    float ms = 0.0f;
    cudaCheck(cudaEventRecord(p->a, p->st));
    for (int i = 0; i < iters; i++)
        launch_proj(p->st, p->W, rows, cols, p->X, T, p->Yf, 0);
    cudaCheck(cudaEventRecord(p->b, p->st));
    cudaCheck(cudaEventSynchronize(p->b));
    launchCheck();
    cudaCheck(cudaEventElapsedTime(&ms, p->a, p->b));
    r->ms_fixed = (double)ms / iters;
    cudaCheck(cudaEventRecord(p->a, p->st));
    for (int i = 0; i < iters; i++)
        PROJ_CUBLAS();
    cudaCheck(cudaEventRecord(p->b, p->st));
    cudaCheck(cudaEventSynchronize(p->b));
    cudaCheck(cudaEventElapsedTime(&ms, p->a, p->b));
    r->ms_cublas = (double)ms / iters;
#undef PROJ_CUBLAS
    return 0;
}

extern "C" int cuda_proj_check(int device, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                               char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    if (rows <= 0 || cols <= 0 || cols % PROJ_VEC != 0 || T < 1 || T > PROJ_T_MAX || iters <= 0)
        return util_err(err, errlen, "cuda_proj_check: bad arguments (rows %d, cols %d, T %d)", rows, cols, T);
    if (check_device(device, err, errlen) != 0)
        return -1;
    proj_bufs p;
    memset(&p, 0, sizeof p);
    int rc = proj_check_run(&p, rows, cols, T, iters, r, err, errlen);
    proj_check_free(&p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* CUDA graphs                                                               */

static int mask_equal(const graph_slot *g, const layer_mask *mask, int n_layers)
{
    if (!mask || !g->mask)
        return !mask && !g->mask;
    return !memcmp(g->mask, mask->attn, (size_t)n_layers) && !memcmp(g->mask + n_layers, mask->mlp, (size_t)n_layers);
}

/* Capture forward_core(T, n_out = T) [+ advance: append am[0] to ctl and
 * feed it back] into g as a graph of this kind, replacing what g held. The
 * kernels must be loaded already (modules load lazily, and loading cannot
 * be captured): run the same pass once before. Capture records, it does
 * not run. */
static int graph_capture(cuda_state *s, graph_slot *g, int kind, int32_t T, const layer_mask *mask, int advance,
                         char *err, size_t errlen)
{
    cuda_model *cm = s->cm;
    int n_layers = cm->c.n_layers;
    graph_reset(g);
    cudaCheck(cudaStreamSynchronize(cm->stream));
    cudaGraph_t graph;
    cudaCheck(cudaStreamBeginCapture(cm->stream, cudaStreamCaptureModeThreadLocal));
    int rc = forward_core(s, T, T, mask, 1, err, errlen);
    if (rc == 0 && advance)
        launch_advance(cm->stream, s->am, s->tok, s->pos, s->ctl + 1, s->ctl);
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
 * row and T <= STEP_GRAPH_T replays its captured graph: the kernels read
 * tokens, positions and cache locations from the state's device metadata
 * and their grids depend only on T, n_out and the state's context, so one
 * graph per (T, mask) serves every such pass. On a miss the pass runs
 * directly (which loads its kernels), then is captured. */
static int step_graph_run(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err,
                          size_t errlen)
{
    cuda_model *cm = s->cm;
    graph_slot *g = !s->graphs_off && n_out == T && T >= 1 && T <= STEP_GRAPH_T ? &s->g_step[mask != NULL][T - 1]
                                                                                : NULL;
    if (g && g->valid && g->kind == 4 && g->T == T && mask_equal(g, mask, cm->c.n_layers)) {
        cudaCheck(cudaGraphLaunch(g->exec, cm->stream));
        return 0;
    }
    if (forward_core(s, T, n_out, mask, 1, err, errlen) != 0)
        return -1;
    return g ? graph_capture(s, g, 4, T, mask, 0, err, errlen) : 0;
}

/* Make g hold the graph (kind, T, mask, advance) unless it already does.
 * The warm-up run before the capture is idempotent: it writes the same KV
 * entries the step itself will write, and no advance. */
static int graph_get(cuda_state *s, graph_slot *g, int kind, int32_t T, const layer_mask *mask, int advance,
                     char *err, size_t errlen)
{
    if (g->valid && g->kind == kind && g->T == T && mask_equal(g, mask, s->cm->c.n_layers))
        return 0;
    if (forward_core(s, T, T, mask, 1, err, errlen) != 0)
        return -1;
    return graph_capture(s, g, kind, T, mask, advance, err, errlen);
}

/* Metadata for one T = 1 decode block of sequence 0 at pos (token on the
 * device already, or tok >= 0 to set it). */
/* The operations that address a cache as one (n_layers, cap, kv_dim)
 * allocation: the one-sequence loops, shifts, copies, IPC. */
static int contiguous_only(const cuda_kv *kv, const char *what, char *err, size_t errlen)
{
    if (kv && kv->blocks)
        return util_err(err, errlen, "%s: takes a contiguous KV cache, not a paged one", what);
    return 0;
}

static void pack_step(cuda_state *s, int32_t tok, int32_t pos, const cuda_kv *kv, const cuda_kv *scratch,
                      int32_t scratch_base, int32_t T)
{
    size_t o_pos, o_seq, o_out, o_seqs;
    meta_layout(s->max_tokens, &o_pos, &o_seq, &o_out, &o_seqs);
    uint8_t *b = (uint8_t *)s->meta_h;
    for (int32_t j = 0; j < T; j++) {
        ((int32_t *)b)[j] = tok >= 0 ? tok : 0;
        ((int32_t *)(b + o_pos))[j] = pos + j;
        ((int32_t *)(b + o_seq))[j] = 0;
        ((int32_t *)(b + o_out))[j] = j;
    }
    assert(!kv->blocks);   /* the one-sequence loops take contiguous caches */
    s->bt_used = 0;
    ((dev_seq *)(b + o_seqs))[0] = seq_desc(kv, NULL, scratch, scratch_base);
}

/* ------------------------------------------------------------------------ */
/* Decoding loops                                                            */

/* Prefill prompt[0..n) in chunks; leaves the argmax of the last prompt
 * position in *first. */
static int prefill(cuda_model *cm, cuda_state *s, cuda_kv *kv, const int32_t *prompt, int32_t n,
                   int32_t *first, char *err, size_t errlen)
{
    if (n <= 0)
        return util_err(err, errlen, "empty prompt");
    if (n >= kv->cap)
        return util_err(err, errlen, "prompt of %d tokens does not fit the context of %d tokens", n, kv->cap);
    kv->len = 0;
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < s->max_tokens ? n - done : s->max_tokens;
        cuda_seq sq = {prompt + done, chunk, done, kv, NULL, 0, chunk - 1};
        if (forward_batch(cm, s, &sq, 1, NULL, NULL, first, 0, err, errlen) != 0)
            return -1;
        done += chunk;
        kv->len = done;
    }
    return 0;
}

extern "C" int cuda_generate_plain(cuda_model *cm, cuda_state *s, cuda_kv *kv, const int32_t *prompt,
                                   int32_t n_prompt, int32_t max_new, int use_graph,
                                   cuda_stop_fn is_stop, const void *stop_ctx, cuda_emit_fn emit, void *emit_ctx,
                                   cuda_gen_stats *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    if (contiguous_only(kv, "cuda_generate_plain", err, errlen) != 0)
        return -1;
    if (max_new <= 0)
        return 0;
    if ((int64_t)n_prompt + max_new > kv->cap || n_prompt + max_new > s->ctx)
        return util_err(err, errlen, "prompt (%d) + new tokens (%d) exceed the context of %d", n_prompt, max_new,
                        kv->cap < s->ctx ? kv->cap : s->ctx);
    double t0 = util_now();
    int32_t tok;
    if (prefill(cm, s, kv, prompt, n_prompt, &tok, err, errlen) != 0)
        return -1;
    st->prompt_tokens = n_prompt;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    st->generated_tokens = 1;
    int stop = emit(emit_ctx, tok) || (is_stop && is_stop(stop_ctx, tok));
    /* The device now carries the loop: tok/pos of the next step live in
     * s->tok[0], s->pos[0]; each step appends its argmax to ctl. */
    cudaCheck(cudaStreamSynchronize(cm->stream));
    pack_step(s, tok, kv->len, kv, NULL, 0, 1);
    if (upload_meta(s, err, errlen) != 0)
        return -1;
    if (use_graph && graph_get(s, &s->g_plain, 1, 1, NULL, 1, err, errlen) != 0)
        return -1;
    while (!stop && st->generated_tokens < max_new) {
        int32_t chunk = max_new - st->generated_tokens;
        if (chunk > PLAIN_CHUNK)
            chunk = PLAIN_CHUNK;
        cudaCheck(cudaMemsetAsync(s->ctl, 0, sizeof(int32_t), cm->stream));
        for (int32_t i = 0; i < chunk; i++) {
            if (use_graph) {
                cudaCheck(cudaGraphLaunch(s->g_plain.exec, cm->stream));
            } else {
                if (forward_core(s, 1, 1, NULL, 1, err, errlen) != 0)
                    return -1;
                launch_advance(cm->stream, s->am, s->tok, s->pos, s->ctl + 1, s->ctl);
                launchCheck();
            }
        }
        cudaCheck(cudaMemcpyAsync(s->ctl_h, s->ctl, (size_t)(1 + chunk) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                  cm->stream));
        cudaCheck(cudaStreamSynchronize(cm->stream));
        /* the step that produced token i consumed the previous token, whose
         * KV is now verified */
        for (int32_t i = 0; i < chunk && !stop; i++) {
            kv->len++;
            int32_t t = s->ctl_h[1 + i];
            st->generated_tokens++;
            stop = emit(emit_ctx, t) || (is_stop && is_stop(stop_ctx, t));
        }
    }
    st->decode_seconds = util_now() - t1;
    return 0;
}

extern "C" int cuda_generate_selfspec(cuda_model *cm, cuda_state *s, cuda_kv *kv, cuda_kv *scratch,
                                      const layer_mask *mask, int32_t k, const int32_t *prompt,
                                      int32_t n_prompt, int32_t max_new, int use_graph,
                                      cuda_stop_fn is_stop, const void *stop_ctx, cuda_emit_fn emit, void *emit_ctx,
                                      cuda_gen_stats *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    if (contiguous_only(kv, "cuda_generate_selfspec", err, errlen) != 0 ||
        contiguous_only(scratch, "cuda_generate_selfspec", err, errlen) != 0)
        return -1;
    if (k < 1 || k > MAX_DRAFT || k + 1 > s->max_tokens || !scratch || scratch->cap < k || !mask)
        return util_err(err, errlen, "self-spec: need 1 <= k <= %d, k + 1 <= max_tokens, a mask and a "
                        "scratch cache of k positions", MAX_DRAFT);
    if (max_new <= 0)
        return 0;
    if ((int64_t)n_prompt + max_new + k + 1 > kv->cap || n_prompt + max_new + k + 1 > s->ctx)
        return util_err(err, errlen, "prompt (%d) + new tokens (%d) + draft (%d) exceed the context", n_prompt,
                        max_new, k + 1);
    double t0 = util_now();
    int32_t cur;
    if (prefill(cm, s, kv, prompt, n_prompt, &cur, err, errlen) != 0)
        return -1;
    st->prompt_tokens = n_prompt;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    st->generated_tokens = 1;
    int stop = emit(emit_ctx, cur) || (is_stop && is_stop(stop_ctx, cur));
    int32_t *drafts = s->ctl + 1;             /* draft ids, written by advance */
    int32_t *res = s->ctl + 2 + MAX_DRAFT;    /* acceptance result */
    while (!stop && st->generated_tokens < max_new) {
        int32_t L = kv->len;
        int32_t left = max_new - st->generated_tokens;   /* tokens still wanted */
        int32_t kk = k < left - 1 ? k : left - 1;         /* drafting beyond is waste */
        int32_t n_acc = 0;
        cudaCheck(cudaStreamSynchronize(cm->stream));
        if (kk >= 1) {
            /* draft: kk masked T = 1 steps from cur at position L, scratch KV
             * for positions >= L */
            pack_step(s, cur, L, kv, scratch, L, 1);
            if (upload_meta(s, err, errlen) != 0)
                return -1;
            cudaCheck(cudaMemsetAsync(s->ctl, 0, sizeof(int32_t), cm->stream));
            if (use_graph && graph_get(s, &s->g_draft, 2, 1, mask, 1, err, errlen) != 0)
                return -1;
            for (int32_t j = 0; j < kk; j++) {
                if (use_graph) {
                    cudaCheck(cudaGraphLaunch(s->g_draft.exec, cm->stream));
                } else {
                    if (forward_core(s, 1, 1, mask, 1, err, errlen) != 0)
                        return -1;
                    launch_advance(cm->stream, s->am, s->tok, s->pos, drafts, s->ctl);
                    launchCheck();
                }
            }
            /* verify: [cur, d1..dkk] at L..L+kk with the full model. The
             * upload must wait for the drafts to be done with meta_d: it is
             * stream-ordered, and meta_h is rewritten only after a sync. */
            cudaCheck(cudaStreamSynchronize(cm->stream));
        }
        pack_step(s, cur, L, kv, NULL, 0, kk + 1);
        if (upload_meta(s, err, errlen) != 0)
            return -1;
        if (kk >= 1)
            cudaCheck(cudaMemcpyAsync(s->tok + 1, drafts, (size_t)kk * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                      cm->stream));
        if (forward_core(s, kk + 1, kk + 1, NULL, 1, err, errlen) != 0)
            return -1;
        launch_accept(cm->stream, drafts, s->am, kk, res);
        launchCheck();
        cudaCheck(cudaMemcpyAsync(s->ctl_h, res, (size_t)(kk + 2) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                  cm->stream));
        cudaCheck(cudaStreamSynchronize(cm->stream));
        n_acc = s->ctl_h[0];
        st->rounds++;
        st->drafted += kk;
        st->accepted += n_acc;
        /* positions L..L+n_acc (cur, d1..dn) hold verified KV now */
        kv->len = L + n_acc + 1;
        for (int32_t i = 0; i <= n_acc && !stop; i++) {
            int32_t t = s->ctl_h[1 + i];
            st->generated_tokens++;
            stop = emit(emit_ctx, t) || (is_stop && is_stop(stop_ctx, t)) || st->generated_tokens >= max_new;
        }
        cur = s->ctl_h[1 + n_acc];
    }
    st->decode_seconds = util_now() - t1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Timing                                                                    */

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
    graph_reset(&s->g_time);
    if (graph_get(s, &s->g_time, 3, T, mask, 0, err, errlen) != 0)
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

/* ------------------------------------------------------------------------ */
/* CUDA IPC                                                                  */

#define IPC_MAGIC 0x53534950u   /* "SSIP" */

struct ipc_blob {
    uint32_t magic, version;
    model_config c;
    int32_t tied, kv_cap;
    uint64_t weight_bytes, kv_bytes;
    cudaIpcMemHandle_t weights, kv;
    cudaIpcEventHandle_t event;
};
static_assert(sizeof(ipc_blob) <= CUDA_IPC_BLOB_BYTES, "IPC blob too large");

extern "C" int cuda_ipc_export(cuda_model *cm, cuda_kv *kv, void *blob, char *err, size_t errlen)
{
    if (cm->imported || kv->imported || kv->cm != cm)
        return util_err(err, errlen, "cuda_ipc_export: only the owner of the allocations can export them");
    if (cm->keep)
        return util_err(err, errlen, "cuda_ipc_export: a partial copy of the model cannot be exported");
    if (contiguous_only(kv, "cuda_ipc_export", err, errlen) != 0)
        return -1;
    cudaCheck(cudaSetDevice(cm->device));
    ipc_blob b;
    memset(&b, 0, sizeof b);
    b.magic = IPC_MAGIC;
    b.version = 1;
    b.c = cm->c;
    b.tied = cm->tied;
    b.kv_cap = kv->cap;
    b.weight_bytes = cm->bytes;
    b.kv_bytes = kv->bytes;
    /* both are bases of cudaMalloc allocations of 2 MiB multiples */
    cudaCheck(cudaIpcGetMemHandle(&b.weights, cm->base));
    cudaCheck(cudaIpcGetMemHandle(&b.kv, kv->base));
    if (!cm->has_ipc_event) {
        cudaCheck(cudaEventCreateWithFlags(&cm->ipc_event, cudaEventInterprocess | cudaEventDisableTiming));
        cm->has_ipc_event = 1;
        /* record once so a wait before the first signal is well-defined */
        cudaCheck(cudaEventRecord(cm->ipc_event, cm->stream));
    }
    cudaCheck(cudaIpcGetEventHandle(&b.event, cm->ipc_event));
    memset(blob, 0, CUDA_IPC_BLOB_BYTES);
    memcpy(blob, &b, sizeof b);
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}

extern "C" int cuda_ipc_signal(cuda_model *cm, char *err, size_t errlen)
{
    if (!cm->has_ipc_event)
        return util_err(err, errlen, "cuda_ipc_signal: no event (export or import first)");
    cudaCheck(cudaEventRecord(cm->ipc_event, cm->stream));
    return 0;
}

extern "C" int cuda_ipc_wait(cuda_model *cm, char *err, size_t errlen)
{
    if (!cm->has_ipc_event)
        return util_err(err, errlen, "cuda_ipc_wait: no event (export or import first)");
    cudaCheck(cudaStreamWaitEvent(cm->stream, cm->ipc_event, 0));
    return 0;
}

static int ipc_open(cuda_model *cm, const ipc_blob *b, cuda_kv *kv, char *err, size_t errlen)
{
    /* only in another process: opening in the exporter fails */
    cudaCheck(cudaIpcOpenMemHandle(&cm->base, b->weights, cudaIpcMemLazyEnablePeerAccess));
    cm->imported = 1;
    size_t need = weights_plan(cm, NULL);
    if (need != b->weight_bytes)
        return util_err(err, errlen, "IPC: weight layout differs (%zu vs %llu bytes)", need,
                        (unsigned long long)b->weight_bytes);
    cm->bytes = need;
    weights_plan(cm, (uint8_t *)cm->base);
    cudaCheck(cudaIpcOpenMemHandle(&cm->ipc_kv_base, b->kv, cudaIpcMemLazyEnablePeerAccess));
    size_t n = (size_t)cm->c.n_layers * b->kv_cap * cm->c.kv_dim;
    kv->cm = cm;
    kv->base = cm->ipc_kv_base;
    kv->bytes = b->kv_bytes;
    kv->cap = b->kv_cap;
    kv->k = (kvt *)kv->base;
    kv->v = kv->k + n;
    kv->imported = 1;
    cudaCheck(cudaIpcOpenEventHandle(&cm->ipc_event, b->event));
    cm->has_ipc_event = 1;
    return 0;
}

extern "C" cuda_model *cuda_ipc_import(const void *blob, int device, cuda_kv **kv_out, char *err, size_t errlen)
{
    ipc_blob b;
    memcpy(&b, blob, sizeof b);
    *kv_out = NULL;
    if (b.magic != IPC_MAGIC || b.version != 1 || b.kv_cap <= 0) {
        util_err(err, errlen, "IPC: not a selfspec CUDA IPC blob");
        return NULL;
    }
    cuda_model *cm = model_new(&b.c, b.tied, device, err, errlen);
    if (!cm)
        return NULL;
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv || ipc_open(cm, &b, kv, err, errlen) != 0) {
        if (!kv)
            util_err(err, errlen, "out of memory");
        cudaGetLastError();
        free(kv);
        cuda_model_free(cm);
        return NULL;
    }
    *kv_out = kv;
    return cm;
}

/* Two GPUs: the drafter's own model (on its device) opens only the
 * exporter's verified KV and event; the weights stay where they are. */
extern "C" cuda_kv *cuda_ipc_import_kv(cuda_model *cm, const void *blob, char *err, size_t errlen)
{
    ipc_blob b;
    memcpy(&b, blob, sizeof b);
    if (b.magic != IPC_MAGIC || b.version != 1 || b.kv_cap <= 0) {
        util_err(err, errlen, "IPC: not a selfspec CUDA IPC blob");
        return NULL;
    }
    const model_config *c = &cm->c;
    if (b.c.n_layers != c->n_layers || b.c.kv_dim != c->kv_dim || b.c.dim != c->dim ||
        b.c.vocab_size != c->vocab_size) {
        util_err(err, errlen, "IPC: the exporter's model differs from this one");
        return NULL;
    }
    size_t n = (size_t)c->n_layers * b.kv_cap * c->kv_dim;
    if (b.kv_bytes < 2 * n * sizeof(kvt) || cm->ipc_kv_base || cm->has_ipc_event) {
        util_err(err, errlen, "IPC: bad KV size, or this model has imported already");
        return NULL;
    }
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess)   /* another device's memory: peer access, enabled as needed */
        e = cudaIpcOpenMemHandle(&cm->ipc_kv_base, b.kv, cudaIpcMemLazyEnablePeerAccess);
    if (e == cudaSuccess && (e = cudaIpcOpenEventHandle(&cm->ipc_event, b.event)) == cudaSuccess)
        cm->has_ipc_event = 1;
    if (e != cudaSuccess) {
        util_err(err, errlen, "IPC: opening the verifier's KV on device %d: %s (are the devices peers?)", cm->device,
                 cudaGetErrorString(e));
        cudaGetLastError();
        free(kv);
        return NULL;
    }
    kv->cm = cm;
    kv->base = cm->ipc_kv_base;
    kv->bytes = b.kv_bytes;
    kv->cap = b.kv_cap;
    kv->k = (kvt *)kv->base;
    kv->v = kv->k + n;
    kv->imported = 1;
    return kv;
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
