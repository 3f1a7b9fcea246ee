/*
 * cuda_backend.h - the CUDA backend: the same forward pass as model.h on an
 * NVIDIA GPU, behind a plain C API (no CUDA types here; usable from C11).
 *
 * Implementation: common/cuda_backend.cu (weights, KV, forward, decoding
 * loops, IPC) and common/cuda_kernels.cu (the kernels). When the library is
 * built without nvcc, common/cuda_stub.c provides every function below:
 * cuda_available() and cuda_device_count() return 0 and the others fail
 * with "built without CUDA".
 *
 * Numerics (see cuda_backend.cu for the details):
 *  - weights: the U8A matrices of the CPU arena are dequantized once at load
 *    (qmat_dequant_row, the CPU reference) to half precision (fp16; a
 *    one-line switch in cuda_backend.cu selects bf16) in ONE 2 MiB-aligned
 *    cudaMalloc allocation, together with the fp32 norm vectors;
 *  - every projection and the output head of cuda_forward runs a
 *    fixed-order kernel (kernels/cuda_order.h) with half inputs and fp32
 *    sums: each output's summation order does not depend on how many
 *    tokens share the pass, so plain steps, draft steps, verification
 *    blocks, batches and prompt chunks cut anywhere give a token
 *    bit-identical logits; only the prefill of cuda_generate_plain /
 *    cuda_generate_selfspec (the same for both) uses cuBLAS GEMMs (fp32
 *    accumulation and output); the residual stream is fp32;
 *  - decode attention is split over positions in a fixed, T-independent
 *    way and merged in position order (cuda_order.h);
 *  - the KV cache is IEEE half, (layer, position, kv_dim), as on the CPU.
 * The CPU backend quantizes activations to int8 for short blocks and the GPU
 * does not, so logits agree to a tolerance, not bit for bit.
 *
 * Positions, tokens and cache locations of a batch live in device buffers of
 * the state, so a decode step can be captured once in a CUDA graph and
 * replayed (cuda_generate_plain / cuda_generate_selfspec): the argmax kernel
 * feeds the next step's token on the device and only token ids come back.
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

typedef struct cuda_model cuda_model;   /* weights on one device + cuBLAS */
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
 * cuda_kv_free take a paged cache; the one-sequence loops, cuda_time_step,
 * shifts, copies and IPC take contiguous ones and refuse paged ones with an
 * error. */
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
 * < ctx. */
cuda_state *cuda_state_init(cuda_model *cm, int32_t max_tokens, int32_t ctx, char *err, size_t errlen);
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
 * The device argmax kernel of the decode loops over host rows (tests):
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
    double ms_cublas;        /* mean ms per product: cublasGemmEx (what prefill uses) */
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

/* ---- decoding loops on the device (greedy) ---- */

typedef struct {
    int32_t prompt_tokens;
    int32_t generated_tokens;
    double prefill_seconds;
    double decode_seconds;
    /* self-speculative only */
    int64_t drafted;         /* draft tokens proposed */
    int64_t accepted;        /* of them accepted */
    int64_t rounds;          /* verification passes */
} cuda_gen_stats;

/* Called per final token in order; nonzero stops generation. */
typedef int (*cuda_emit_fn)(void *ctx, int32_t token);
/* End-of-generation test; NULL = never stop on a token. */
typedef int (*cuda_stop_fn)(const void *ctx, int32_t token);

/*
 * Greedy plain decoding: prefill (in chunks of the state's max_tokens), then
 * one full step per token replayed from a CUDA graph (use_graph) or launched
 * directly. Only token ids cross to the host, in chunks of a few steps.
 * max_new: new tokens at most; kv is reset.
 */
int cuda_generate_plain(cuda_model *cm, cuda_state *s, cuda_kv *kv, const int32_t *prompt,
                        int32_t n_prompt, int32_t max_new, int use_graph,
                        cuda_stop_fn is_stop, const void *stop_ctx, cuda_emit_fn emit, void *emit_ctx,
                        cuda_gen_stats *st, char *err, size_t errlen);

/*
 * Greedy self-speculative decoding: up to k draft steps (T = 1 with mask,
 * scratch KV; the draft step is a CUDA graph when use_graph), then one
 * verification pass over k + 1 tokens with the full model; acceptance by
 * comparing argmax ids on the device. Output equals plain greedy output:
 * the fixed-order kernels give the verification block the plain steps'
 * logits bit for bit (kernels/cuda_order.h).
 * s->max_tokens must be >= k + 1; scratch must hold k positions.
 */
int cuda_generate_selfspec(cuda_model *cm, cuda_state *s, cuda_kv *kv, cuda_kv *scratch,
                           const layer_mask *mask, int32_t k, const int32_t *prompt,
                           int32_t n_prompt, int32_t max_new, int use_graph,
                           cuda_stop_fn is_stop, const void *stop_ctx, cuda_emit_fn emit, void *emit_ctx,
                           cuda_gen_stats *st, char *err, size_t errlen);

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

#ifdef __cplusplus
}
#endif

#endif
