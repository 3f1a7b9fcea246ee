/*
 * cuda_backend.h - the CUDA backend: the same forward pass as model.h on an
 * NVIDIA GPU, behind a plain C API (no CUDA types here; usable from C11).
 *
 * Implementation: common/cuda/, one file per job (weights.cu, kv.cu,
 * forward.cu, graphs.cu, sample.cu, ipc.cu, checks.cu, device.cu; the
 * kernels by family in k_*.cu; common/cuda/backend.cuh lists them) and
 * model/backend_cuda.c (the backend under the engine, below and
 * model/backend.h). When the library is built without nvcc,
 * common/cuda/stub.c provides every function below: cuda_available() and
 * cuda_device_count() return 0 and the others fail with "built without
 * CUDA".
 *
 * There is no decoding loop here: the one loop is the engine's
 * (engine/engine.h), over model/backend.h; this API computes passes.
 *
 * Numerics (the details: common/cuda/, kernels/cuda_order.h):
 *  - weights: the U8A matrices of the CPU arena are dequantized once at load
 *    (qmat_dequant_row, the CPU reference) to half precision (fp16; a
 *    one-line switch in cuda/cuda_common.cuh selects bf16) in ONE 2 MiB-
 *    aligned cudaMalloc allocation, together with the fp32 norm vectors;
 *  - every projection and the output head of cuda_forward runs a
 *    fixed-order kernel (kernels/cuda_order.h) with half inputs and fp32
 *    sums: each output's summation order does not depend on how many
 *    tokens share the pass, so plain steps, draft steps, verification
 *    blocks, batches and prompt chunks cut anywhere give a token
 *    bit-identical logits (cuBLAS only in cuda_proj_check, as the
 *    reference); the residual stream is fp32;
 *  - decode attention is split over positions in a fixed, T-independent
 *    way and merged in position order (cuda_order.h);
 *  - the KV cache is IEEE half, (layer, position, kv_dim), as on the CPU.
 * The CPU backend quantizes activations to int8 for short blocks and the GPU
 * does not, so logits agree to a tolerance, not bit for bit.
 *
 * Positions, tokens and cache locations of a batch live in device buffers of
 * the state, so a pass whose every token is an output row (a decode step, a
 * verification block, a draft pass) is captured once per (T, mask) in a
 * CUDA graph and replayed (cuda_state_init's graphs); a greedy pass brings
 * back its argmax ids alone, the logits stay on the device.
 *
 * Conventions: functions that can fail take (char *err, size_t errlen) and
 * return 0 / a non-NULL pointer, or -1 / NULL with a one-line reason.
 * Every object belongs to the device it was created on; one thread at a time
 * per cuda_state.
 */
#ifndef SELFSPEC_CUDA_BACKEND_H
#define SELFSPEC_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda_sample.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cuda_model cuda_model;   /* weights on one device, its stream */
typedef struct cuda_kv cuda_kv;         /* a KV cache in device memory */
typedef struct cuda_state cuda_state;   /* activations, metadata, graphs */

/* 1 if the library was built with nvcc, else 0. */
int cuda_available(void);

/* Visible CUDA devices; 0 (never an abort) without a driver or a GPU. */
int cuda_device_count(void);

typedef struct {
    char name[128];
    size_t total_mem;
    int sm_major, sm_minor;
    int multiprocessors;
    double peak_bw_gbs;      /* memory bus width x clock x 2 (DDR), GB/s;
                                0 when the runtime does not report it */
} cuda_device_info;

int cuda_get_device_info(int device, cuda_device_info *info, char *err, size_t errlen);

/* Parse "cpu", "cuda" or "cuda:N". *device = -1 for cpu, else N (0 for
 * "cuda"). Returns 0, or -1 for anything else. */
int cuda_parse_device(const char *s, int *device);

/* ---- weights ---- */

/* Copy a loaded CPU model to the device: dequantize every U8A matrix into
 * half precision (one allocation, 2 MiB aligned). The CPU model may be freed
 * afterwards. */
cuda_model *cuda_model_load(const model *cpu_model, int device, char *err, size_t errlen);
/* The same with only the sublayers keep computes (the embeddings, the head
 * and every norm always): the drafter's own copy on a second GPU. A pass
 * that computes a sublayer this copy lacks fails with an error. */
cuda_model *cuda_model_load_masked(const model *cpu_model, int device, const layer_mask *keep, char *err,
                                   size_t errlen);

/* Random weights of the given shapes generated on the device (timing only;
 * no CPU copy exists). c must have dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, head_dim, kv_dim, vocab_size, rope_base, norm_eps set.
 * tied: share the embedding and the output head. */
cuda_model *cuda_synthetic_model(const model_config *c, int tied, uint64_t seed, int device,
                                 char *err, size_t errlen);

void cuda_model_free(cuda_model *cm);
const model_config *cuda_model_get_config(const cuda_model *cm);
/* Bytes of the weight allocation (what a full forward pass streams, apart
 * from the embedding table, of which it reads T rows). */
size_t cuda_model_weight_bytes(const cuda_model *cm);
/* Bytes one full decode step must read from the weights: every projection,
 * the norms and the output head (not the embedding table unless tied). */
size_t cuda_model_step_bytes(const cuda_model *cm, const layer_mask *mask);

/* ---- KV caches ---- */

/* A cache of cap positions, zero-filled, in one 2 MiB-aligned allocation
 * (K then V). */
cuda_kv *cuda_kv_init(cuda_model *cm, int32_t cap, char *err, size_t errlen);
void cuda_kv_free(cuda_kv *kv);
int32_t cuda_kv_len(const cuda_kv *kv);
int32_t cuda_kv_cap(const cuda_kv *kv);
/* Set the verified length (truncation, or after a forward pass that wrote
 * positions len..new_len-1). 0 <= len <= cap. */
void cuda_kv_set_len(cuda_kv *kv, int32_t len);
/* Copy positions [0, n) of every layer into a contiguous CPU cache
 * (tests); kv may be contiguous or paged. */
int cuda_kv_download(const cuda_kv *kv, kv_cache *dst, int32_t n, char *err, size_t errlen);

/* Paged KV (as the CPU's kv_pool, model.h): a pool of n_blocks blocks of
 * KV_BLOCK positions of every layer in one device allocation, and caches
 * that are views of some of its blocks. The pool holds memory only: which
 * blocks a sequence gets is the caller's ledger (kv_ledger_init +
 * kv_init_paged, model.h). Only cuda_forward, cuda_kv_download and
 * cuda_kv_free take a paged cache; cuda_time_step, shifts, copies and IPC
 * take contiguous ones and refuse paged ones with an error. */
typedef struct cuda_kv_pool cuda_kv_pool;
cuda_kv_pool *cuda_kv_pool_init(cuda_model *cm, int32_t n_blocks, char *err, size_t errlen);
/* Free the pool (every view of it must be freed first or not used again). */
void cuda_kv_pool_free(cuda_kv_pool *p);
/* A cache of n_blocks * KV_BLOCK positions over the pool blocks
 * blocks[0..n_blocks) (positions [i KV_BLOCK, (i+1) KV_BLOCK) in block
 * blocks[i]). blocks is borrowed: it must stay unchanged while the view
 * lives. Its contents are whatever the blocks held before (every position
 * is written before a pass reads it). NULL with err for a block outside
 * the pool. Free with cuda_kv_free (the blocks stay in the pool). */
cuda_kv *cuda_kv_paged(cuda_kv_pool *p, const int32_t *blocks, int32_t n_blocks, char *err, size_t errlen);
/* 1 for a view from cuda_kv_paged. */
int cuda_kv_is_paged(const cuda_kv *kv);

/* ---- forward pass ---- */

/* Activation buffers for batches of up to max_tokens tokens over positions
 * < ctx. graphs: 1 to capture cuda_forward's passes whose every token is an
 * output row (up to 64 tokens) in CUDA graphs at their first run and replay
 * them after; 0 to launch every pass directly (a command's
 * SELFSPEC_CUDA_GRAPHS=0; the library reads no environment). */
cuda_state *cuda_state_init(cuda_model *cm, int32_t max_tokens, int32_t ctx, int graphs, char *err,
                            size_t errlen);
void cuda_state_free(cuda_state *s);

/* One sequence's part of a batch: fwd_seq of model.h with device caches. */
typedef struct {
    const int32_t *tokens;   /* host (n_tokens) */
    int32_t n_tokens;
    int32_t pos;             /* position of tokens[0] */
    cuda_kv *kv;             /* read for positions < pos, written pos.. */
    cuda_kv *scratch;        /* optional: positions >= scratch_base go here */
    int32_t scratch_base;
    int32_t logits_from;     /* logits for tokens[logits_from..n-1] */
} cuda_seq;

/*
 * Run the model over a batch, as model_forward (same rules: the caller
 * advances kv->len; with a mask give a scratch cache). Output rows:
 * sum of n_tokens - logits_from.
 *   logits: host (rows, vocab_size) floats, or NULL to leave them on the
 *           device (cuda_state_logits) -- tests and the GPU check use it;
 *   argmax: host (rows) token ids, or NULL: sampler_argmax on the device
 *           (ties to the smaller id; NaN as on the CPU, see
 *           cuda_argmax_host).
 * The head is always the model's full output head. With no output rows
 * (every logits_from == n_tokens) only the layers run: KV is written, no
 * head or argmax kernel is launched, and logits / argmax are not touched.
 */
int cuda_forward(cuda_model *cm, cuda_state *s, const cuda_seq *seqs, int n_seqs,
                 const layer_mask *mask, float *logits, int32_t *argmax, char *err, size_t errlen);

/*
 * The device argmax kernel of every pass over host rows (tests):
 * out[r] = index of the largest of logits[r * n .. r * n + n), exactly as
 * sampler_argmax (decode/sampler.c) picks it: ties to the smaller index, a
 * NaN at index 0 gives 0, other NaN entries are skipped. rows, n >= 1.
 * Allocates and frees its own device buffers; synchronous.
 */
int cuda_argmax_host(int device, const float *logits, int32_t rows, int32_t n, int32_t *out,
                     char *err, size_t errlen);

/* The fixed-order projection kernel against cuBLAS on random fp16 data
 * (tests, scripts/gpu_check.c). */
typedef struct {
    int rows_identical;      /* 1: each token's row of the T-token pass equals,
                                bit for bit, that token alone (T = 1) */
    double max_abs_diff;     /* max |fixed - cuBLAS| over the (T, rows) outputs */
    double max_abs;          /* max |cuBLAS| (the scale of that difference) */
    double ms_fixed;         /* mean ms per product: the fixed-order kernel */
    double ms_cublas;        /* mean ms per product: cublasGemmEx (the reference) */
} cuda_proj_report;

/*
 * Y (T, rows) = X (T, cols) . W^T with W uniform(+-sqrt(3/cols)) and X
 * uniform(+-1) in fp16 (seeded, made on the device): once through the
 * fixed-order kernel, once per token alone, once through cuBLAS; then
 * iters timed runs of each. cols a multiple of 8, 1 <= T <= 8192. Allocates and frees its own buffers; synchronous.
 */
int cuda_proj_check(int device, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                    char *err, size_t errlen);

/* Device pointer to the logits of the last cuda_forward: (rows, ld) fp32
 * with ld = the vocabulary rounded up to 16 (returned in *ld). */
const float *cuda_state_logits(const cuda_state *s, int32_t *ld);

/* ---- timing ---- */

/*
 * Mean milliseconds of one decode step (T tokens at position pos, logits
 * and argmax on the device, nothing copied back) over iters replays of a
 * CUDA graph, after warm-up. mask NULL = full model.
 * Side effects on the CALLER's caches: every replay (warm-up included)
 * writes K/V at positions pos .. pos + T - 1 of kv, or, with a mask, of
 * scratch (positions >= pos go there); the attention reads kv at positions
 * < pos as they are. The token ids are a placeholder (1), so whatever those
 * positions held before is overwritten with meaningless entries: time on a
 * cache whose positions >= pos you do not need, and do not move kv->len
 * (cuda_kv_len is unchanged; positions < pos are never written).
 * s's timing graph is rebuilt on every call.
 */
int cuda_time_step(cuda_model *cm, cuda_state *s, cuda_kv *kv, cuda_kv *scratch,
                   const layer_mask *mask, int32_t T, int32_t pos, int iters,
                   double *ms, char *err, size_t errlen);

/*
 * Sampling on the device: the tokens of output rows [0, n_rows) of the last
 * cuda_forward on s, one request per row (kernels/cuda_sample.h: greedy
 * rows take that pass's argmax; sampled rows a draw from the warped
 * distribution with the host's uniform u; test rows the speculative-
 * sampling test of a draft token, against the q a cuda_draft_rows left in
 * the request's slot, and the replacement when it fails). accepted (may be
 * NULL): per row, 1 when a test row's draft token was accepted. Only ids
 * and flags come back. Returns 0, or -1 with err (more rows than the pass
 * left, a bad request, a slot no draft filled).
 */
int cuda_sample_rows(cuda_state *s, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted,
                     char *err, size_t errlen);

/*
 * Draft tokens on the device: for output rows [0, n_rows) of the last
 * cuda_forward on s (a draft pass), conf[row] = the top-1 probability at
 * temperature 1 and ids[row] = the token (greedy requests: the argmax;
 * sampled: a draw with u, its warped distribution kept in the q store under
 * slot[row] >= 0 for a later test row). The store grows to the largest slot
 * asked (V floats each). Returns 0, or -1 with err.
 */
int cuda_draft_rows(cuda_state *s, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                    float *conf, char *err, size_t errlen);

/*
 * Log-probabilities on the device: for output rows [0, n_rows) of the last
 * cuda_forward on s, the row's log-sum-exp, its n_top (<= LP_MAX_TOP)
 * largest logits and the logits of cand[2 row], cand[2 row + 1] (-1: none)
 * (kernels/cuda_sample.h: lp_row). Only those numbers come back. Returns 0,
 * or -1 with err.
 */
int cuda_logprob_rows(cuda_state *s, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out, char *err,
                      size_t errlen);

/* ---- CUDA IPC (verifier <-> drafter) ---- */

/* Size of the opaque blobs below: cudaIpcMemHandle_t of the weight
 * allocation and of the KV allocation, an interprocess event handle, the
 * model shape and the layout offsets. */
#define CUDA_IPC_BLOB_BYTES 1024

/*
 * In the exporting process (the verifier): fill blob (CUDA_IPC_BLOB_BYTES)
 * with handles to cm's weight allocation and kv's allocation, and an
 * interprocess event the exporter records after each KV update
 * (cuda_ipc_signal). Send the blob in the hello message.
 */
int cuda_ipc_export(cuda_model *cm, cuda_kv *kv, void *blob, char *err, size_t errlen);
/* Record the export's interprocess event on the model's stream: call after
 * the verified KV changed, before telling the peer (then send the message). */
int cuda_ipc_signal(cuda_model *cm, char *err, size_t errlen);

/*
 * In another process (the drafter), once for its lifetime: open the handles
 * (cudaIpcOpenMemHandle cannot open in the exporting process). Returns a
 * model whose weights alias the exporter's (read-only by convention) and in
 * *kv a cache aliasing the exporter's verified KV (read it; write only
 * through a scratch cache). Free both before the exporter frees its own.
 */
cuda_model *cuda_ipc_import(const void *blob, int device, cuda_kv **kv, char *err, size_t errlen);
/* Make the importer's stream wait for the exporter's last cuda_ipc_signal
 * (call on receiving the message that followed it). */
int cuda_ipc_wait(cuda_model *cm, char *err, size_t errlen);

/*
 * Two GPUs, in the drafter: cm is the drafter's own model on its own
 * device (cuda_model_load_masked); open only the exporter's verified KV
 * (over peer access) and its event into cm, once. Returns a cache aliasing
 * the exporter's (read it only through cuda_kv_copy), or NULL with err
 * (the devices cannot be peers, another model, opened already). After
 * this, cuda_ipc_wait(cm) waits for the exporter's signal.
 */
cuda_kv *cuda_ipc_import_kv(cuda_model *cm, const void *blob, char *err, size_t errlen);
/* Move rows [shift, n) of kv to [0, n - shift) in every layer, on its
 * model's stream (the drafter's scratch after the verifier adopted a block). */
int cuda_kv_shift(cuda_kv *kv, int32_t shift, int32_t n, char *err, size_t errlen);
/* Copy positions [from, to) of src's layers into dst (same capacity), on
 * cm's stream (cm owns dst): the drafter's incremental copy of the verified
 * KV. layers: only the layers whose attention it computes (NULL: all). */
int cuda_kv_copy(cuda_model *cm, cuda_kv *dst, const cuda_kv *src, const layer_mask *layers, int32_t from,
                 int32_t to, char *err, size_t errlen);

/* ---- the backend under the engine (model/backend.h, backend_cuda.c) ---- */

typedef struct model_backend model_backend;

/* What backend_cuda_open_params sets up. backend_cuda_open (backend.h) is
 * it with cm = NULL and graphs = 1. */
typedef struct {
    int device;              /* the device m's weights go to (cm == NULL), or cm's
                                (then only the backend's name, "cuda:N") */
    int32_t max_tokens;      /* tokens of one pass at most (engine_pass_tokens) */
    int32_t ctx;             /* positions < ctx */
    size_t kv_mem;           /* bytes of KV for the sequences (kv_open) */
    int graphs;              /* cuda_state_init's graphs: 1 replays CUDA graphs,
                                0 launches every pass directly */
    cuda_model *cm;          /* NULL: upload m's weights (cuda_model_load); else
                                weights already on a device (a synthetic model, an
                                IPC import, a masked copy), borrowed: it must
                                outlive the backend, which uses its device */
} backend_cuda_params;

/* The CUDA backend with every choice given (see backend.h's
 * backend_cuda_open): m is the CPU model whose weights are uploaded when
 * p->cm is NULL (else unused: NULL will do; the shapes are the device
 * model's). Returns the backend, or NULL with err. Close it with
 * backend_cuda_close (which frees the weights only when it loaded them). */
model_backend *backend_cuda_open_params(const model *m, const backend_cuda_params *p, char *err, size_t errlen);

/* A kv_cache the backend's forward takes that views a contiguous device
 * cache the caller owns and keeps (an IPC import, the drafter's scratch):
 * kv gets cap, the shape and dev, len 0; the backend's kv_close frees the
 * view only, never d, which must belong to the backend's model (it is
 * its caller's to keep them together). Returns 0, or -1 with err (a paged
 * cache). */
int backend_cuda_kv_wrap(model_backend *b, kv_cache *kv, cuda_kv *d, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
