/*
 * cuda_internal.cuh - what cuda_backend.cu and cuda_kernels.cu share: the
 * weight element type, the per-sequence cache descriptor the kernels read,
 * error-checking macros, and the kernel launchers (cuda_kernels.cu).
 *
 * Weight/activation element type: fp16 by default. Define
 * SELFSPEC_CUDA_BF16=1 (nvcc -D) to use bf16 instead; nothing else changes.
 * fp16 keeps 11 significant bits, which represents the 8-bit U8A levels
 * times their scale more closely than bf16's 8 bits; the activations of
 * Llama models fit its range (llama.cpp's CUDA backend also runs fp16).
 */
#ifndef SELFSPEC_CUDA_INTERNAL_CUH
#define SELFSPEC_CUDA_INTERNAL_CUH

#include "kernels/cuda_sample.h"
#include <stdint.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

extern "C" {
#include "util/util.h"
}
#include "kernels/cuda_order.h"

#if SELFSPEC_CUDA_BF16
typedef __nv_bfloat16 wt;
#define WT_CUDA_R CUDA_R_16BF
#define WT_NAME "bf16"
static __host__ __device__ inline wt to_wt(float f) { return __float2bfloat16(f); }
static __host__ __device__ inline float from_wt(wt h) { return __bfloat162float(h); }
#else
typedef __half wt;
#define WT_CUDA_R CUDA_R_16F
#define WT_NAME "fp16"
static __host__ __device__ inline wt to_wt(float f) { return __float2half(f); }
static __host__ __device__ inline float from_wt(wt h) { return __half2float(h); }
#endif

/* KV entries: IEEE half, as the CPU kv_elem. */
typedef __half kvt;

/* Where one sequence of a batch keeps its keys and values: k and v are its
 * contiguous cache or the device pool's K and V (w.bt set), sk and sv its
 * scratch (w.scap > 0); kv_row (cuda_order.h) finds a row. */
struct dev_seq {
    kvt *k, *v;
    kvt *sk, *sv;
    kv_where w;
};

/* Errors: record "file:line: call: reason" into (err, errlen), which must be
 * in scope, and return -1 from the enclosing int function. */
#define cudaCheck(call)                                                                   \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess)                                                            \
            return util_err(err, errlen, "%s:%d: %s: %s", __FILE__, __LINE__, #call,      \
                            cudaGetErrorString(e_));                                      \
    } while (0)

#define cublasCheck(call)                                                                 \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                  \
            return util_err(err, errlen, "%s:%d: %s: %s", __FILE__, __LINE__, #call,      \
                            cublasGetStatusString(s_));                                   \
    } while (0)

/* After a kernel launch: a bad configuration shows up here. */
#define launchCheck() cudaCheck(cudaGetLastError())

/* ATT_MAX_HD, PROJ_T_MAX and the other constants of the fixed-order
 * kernels: kernels/cuda_order.h. */

/* ---- launchers (cuda_kernels.cu); all asynchronous on stream ---- */

/* x[t] = float(E[tok[t]]) for t < T; rows of dim. */
void launch_embed(cudaStream_t st, const wt *E, int dim, const int32_t *tok, float *x, int T);
/* out[r] = x[map ? map[r] : r] / rms * w, as wt; rows of dim. */
void launch_rmsnorm(cudaStream_t st, const float *x, const int32_t *map, const float *w, wt *out,
                    int rows, int dim, float eps);
/* Add the Q/K/V bias (qkv_w floats, or NULL: none) to every row of qkv
 * (T, qkv_w), RoPE on its q and k parts in place -- adjacent pairs
 * (2i, 2i+1), or with neox the pairs (i, i + head_dim/2) -- and write k and
 * v of each token into its cache at (layer, pos). rope: (ctx, head_dim/2) of
 * (cos, sin). The same arithmetic as model.c's attn_sublayer. */
void launch_rope_kv(cudaStream_t st, float *qkv, const float *bias, int neox, int T, const int32_t *pos,
                    const int32_t *seq, const dev_seq *seqs, const float2 *rope, int layer, int n_heads,
                    int n_kv_heads, int head_dim, int dim, int kv_dim);
/* Causal attention for T tokens x n_heads over positions 0..pos[t]; output
 * heads concatenated, (T, dim) as wt. Split over positions at multiples of
 * span = att_span(ctx) (cuda_order.h), at most n_splits = att_splits(ctx,
 * span) splits; part: (T, n_heads, n_splits) x (2 + head_dim) floats of
 * scratch (m, l pairs first, then the accumulators; see
 * cuda_state.att_part). Every token's result depends on its own position,
 * query and cached rows only (cuda_order.h). */
void launch_attention(cudaStream_t st, const float *qkv, wt *att, int T, const int32_t *pos,
                      const int32_t *seq, const dev_seq *seqs, int layer, int n_heads, int n_kv_heads,
                      int head_dim, int dim, int kv_dim, float *part, int span, int n_splits);
/* Y (T, rows) fp32 = X (T, cols) . W^T (+ Y when accumulate), W (rows, cols)
 * and X (T, cols) row-major wt, 16-byte aligned rows, cols % PROJ_VEC == 0,
 * T >= 1. Row t of Y is bit-identical for every T and every
 * place of token t in the pass (cuda_order.h). */
void launch_proj(cudaStream_t st, const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate);
/* out (T, H) = silu(gate) * up from hb (T, 2H) = gate | up. */
void launch_swiglu(cudaStream_t st, const float *hb, wt *out, int T, int H);
/* out[r] = argmax of logits row r (n valid columns of ld), ties to the
 * smaller id. */
void launch_argmax(cudaStream_t st, const float *logits, int ld, int n, int rows, int32_t *out);
/* Rows [0, rows) of logits (leading dimension ld, V entries): the token of
 * each request (kernels/cuda_sample.h; greedy rows take am's), and for a
 * test row whether its draft token was accepted (acc); qs: the q store,
 * qld floats per slot. */
void launch_sample(cudaStream_t st, const float *logits, int ld, int V, int rows, const samp_req *rq,
                   const int32_t *am, const float *qs, size_t qld, int32_t *out, uint8_t *acc);
/* Draft rows [0, rows): conf of each, its token (greedy: am's), and for a
 * sampled row its warped distribution into slot slot[row] of qs. */
void launch_draft(cudaStream_t st, const float *logits, int ld, int V, int rows, const samp_req *rq,
                  const int32_t *slot, const int32_t *am, float *qs, size_t qld, int32_t *out, float *conf);
/* One graph-replayed decode step is done: out[*count] = am[0];
 * tok[0] = am[0]; pos[0] += 1; (*count)++. */
void launch_advance(cudaStream_t st, const int32_t *am, int32_t *tok, int32_t *pos, int32_t *out,
                    int32_t *count);
/* Acceptance: n = leading matches of draft[i] == am[i] for i < k;
 * res[0] = n, res[1 + i] = am[i] for i <= n. */
void launch_accept(cudaStream_t st, const int32_t *draft, const int32_t *am, int k, int32_t *res);
/* Fill n elements with uniform(-a, a) from a hash of (seed, index). */
void launch_fill_uniform(cudaStream_t st, wt *p, size_t n, uint64_t seed, float a);
void launch_fill_f32(cudaStream_t st, float *p, size_t n, float v);

#endif
