/*
 * kernels.cuh - the kernel launchers, one family per file (each file says
 * at its top what it holds). All are asynchronous on stream st.
 *
 * Exactness: every kernel computes each (token, output) from that token's
 * inputs alone, in an order that does not depend on T; for k_proj and the
 * attention that order is written down in kernels/cuda_order.h and ported
 * to the host in tests/test_cuda_order.c. Every kernel of the forward pass
 * reads token ids, positions and cache locations from device memory (never
 * from launch arguments that change per pass), so a pass captured in a CUDA
 * graph stays valid as positions advance.
 *
 * Semantics follow common/model/model.c (the reference): RMSNorm
 * x / sqrt(mean(x^2) + eps) * w; RoPE rotating adjacent pairs (x[2i],
 * x[2i+1]) or NeoX pairs with the same cos/sin table as the CPU (computed
 * on the host in double); causal softmax attention with GQA (query head h
 * reads KV head h / (n_heads/n_kv_heads)); SwiGLU g / (1 + exp(-g)) * u.
 */
#ifndef SELFSPEC_CUDA_KERNELS_CUH
#define SELFSPEC_CUDA_KERNELS_CUH

#include "cuda/cuda_common.cuh"

/* ---- k_pointwise.cu: embedding lookup, RMSNorm, SwiGLU ---- */

/* x[t] = float(E[tok[t]]) for t < T; rows of dim. */
void launch_embed(cudaStream_t st, const wt *E, int dim, const int32_t *tok, float *x, int T);
/* out[r] = x[map ? map[r] : r] / rms * w, as wt; rows of dim. */
void launch_rmsnorm(cudaStream_t st, const float *x, const int32_t *map, const float *w, wt *out,
                    int rows, int dim, float eps);
/* out (T, H) = silu(gate) * up from hb (T, 2H) = gate | up. */
void launch_swiglu(cudaStream_t st, const float *hb, wt *out, int T, int H);

/* ---- k_attention.cu: RoPE + KV write, attention over the KV cache ---- */

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

/* ---- k_proj.cu: the fixed-order projection ---- */

/* Y (T, rows) fp32 = X (T, cols) . W^T (+ Y when accumulate), W (rows, cols)
 * and X (T, cols) row-major wt, 16-byte aligned rows, cols % PROJ_VEC == 0,
 * T >= 1. Row t of Y is bit-identical for every T and every
 * place of token t in the pass (cuda_order.h). */
void launch_proj(cudaStream_t st, const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate);

/* ---- k_argmax.cu: argmax ---- */

/* out[r] = argmax of logits row r (n valid columns of ld), ties to the
 * smaller id. */
void launch_argmax(cudaStream_t st, const float *logits, int ld, int n, int rows, int32_t *out);

/* ---- k_sample.cu: sampling and draft rows (the rule: kernels/cuda_sample.h) ---- */

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
/* k_logprobs: per output row, its log-sum-exp, n_top largest logits and
 * two candidates' logits (kernels/cuda_sample.h: lp_row). */
void launch_logprobs(cudaStream_t st, const float *logits, int ld, int V, int rows, int n_top, const int32_t *cand,
                     lp_row *out);

/* ---- k_fill.cu: random fills (synthetic weights) ---- */

/* Fill n elements with uniform(-a, a) from a hash of (seed, index). */
void launch_fill_uniform(cudaStream_t st, wt *p, size_t n, uint64_t seed, float a);
void launch_fill_f32(cudaStream_t st, float *p, size_t n, float v);

#endif
