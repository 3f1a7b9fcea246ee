/*
 * model.h - a Llama-family transformer: configuration, weights in one
 * contiguous arena, KV caches, and the forward pass with a sublayer mask.
 *
 * Architectures are data (model_arch): what one has beyond the Llama block
 * (Q/K/V biases, RoPE pairing) is a field of its table entry, read once at
 * load into model_config; the forward pass tests those fields, never names.
 * Supported: "llama" (SmolLM2, Llama 2/3), "qwen2" (Qwen2 / Qwen2.5),
 * "qwen3" (Qwen3 dense), "gemma3" (Gemma 3 text models).
 *
 * The forward pass takes a *batch*: blocks of tokens from one or more
 * sequences, each block at its own positions against its own KV cache, and
 * returns logits for the positions asked for. Prefill (T = prompt length),
 * plain decoding (T = 1), drafting (T = 1 with sublayers skipped) and the
 * verification pass of self-speculative decoding (T = k + 1) are all this
 * one function.
 *
 * The sublayer mask says, per layer, whether the attention sublayer and the
 * MLP sublayer are computed; a skipped sublayer is the identity on the
 * residual stream and writes no KV.
 */
#ifndef SELFSPEC_MODEL_H
#define SELFSPEC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "format/gguf.h"
#include "kernels/attn.h"
#include "kernels/qmat.h"

/* The MLP's gated activation: act(gate) * up. */
enum { MODEL_MLP_SWIGLU = 0, MODEL_MLP_GEGLU = 1 };   /* SiLU; GELU (tanh approximation) */

/* What an architecture has beyond the plain Llama block. */
typedef struct {
    const char *name;     /* general.architecture */
    int qkv_bias;         /* Q, K and V projections add a bias (blk.N.attn_{q,k,v}.bias) */
    int rope_neox;        /* RoPE rotates the pairs (i, i + head_dim/2), as GPT-NeoX;
                             else adjacent pairs (2i, 2i+1), as llama.cpp's llama GGUFs */
    int qk_norm;          /* each Q and K head RMS-normed before RoPE (blk.N.attn_{q,k}_norm) */
    int post_norms;       /* each sublayer's output RMS-normed before the residual add
                             (blk.N.post_attention_norm, blk.N.post_ffw_norm) */
    int embd_scale;       /* token embeddings multiplied by sqrt(dim) */
    int mlp_act;          /* MODEL_MLP_* */
    int swa_pattern;      /* where the metadata gives a sliding window: of every
                             swa_pattern layers the last is global, the rest local
                             (window and their own RoPE base); 0 = every layer global */
} model_arch;

/* The table entry of an architecture name, or NULL when unsupported. */
const model_arch *model_arch_find(const char *name);

typedef struct {
    int32_t dim;          /* residual stream width (576 for SmolLM2-135M) */
    int32_t hidden_dim;   /* MLP inner width */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;     /* attention.key_length, else dim / n_heads */
    int32_t q_dim;        /* n_heads * head_dim (the attention's width; dim for Llama) */
    int32_t kv_dim;       /* n_kv_heads * head_dim */
    int32_t vocab_size;
    int32_t ctx_train;    /* llama.context_length */
    float rope_base;
    float norm_eps;
    char name[128];       /* general.name */
    char arch[32];        /* general.architecture */
    int32_t qkv_bias;     /* from the architecture table (model_arch) */
    int32_t rope_neox;
    int32_t qk_norm, post_norms, embd_scale, mlp_act;
    int32_t swa_window;   /* attention.sliding_window: a local layer's query at p sees
                             keys p - swa_window < k <= p; 0 = no local layers */
    int32_t swa_pattern;  /* see model_arch (0 when swa_window is 0) */
    float rope_base_swa;  /* local layers' RoPE base (rope.freq_base_swa, else 10000) */
    float rope_scale;     /* positions times this: 1 / rope.scaling.factor for "linear" scaling, else 1 */
    int32_t rope_factors; /* rope_freqs.weight given (Llama 3.1 and later): pair i's angle divided by rope_freq[i] */
    float rope_freq[ATTN_MAX_HEAD_DIM / 2];
    float final_softcap;  /* logits = c * tanh(logits / c) (final_logit_softcapping), 0 = none */
} model_config;

/* Is layer l a local (sliding-window) layer? */
static inline int model_layer_local(const model_config *c, int32_t l)
{
    return c->swa_window > 0 && c->swa_pattern > 0 && l % c->swa_pattern < c->swa_pattern - 1;
}

typedef struct {
    const float *attn_norm;   /* (dim) */
    qmat wqkv;                /* (q_dim + 2*kv_dim, dim): q, k, v rows stacked */
    const float *bqkv;        /* (q_dim + 2*kv_dim) q, k, v biases, or NULL (config.qkv_bias) */
    const float *q_norm;      /* (head_dim) or NULL (config.qk_norm) */
    const float *k_norm;      /* (head_dim) or NULL */
    qmat wo;                  /* (dim, q_dim) */
    const float *attn_post_norm; /* (dim) or NULL (config.post_norms) */
    const float *ffn_norm;    /* (dim) */
    const float *ffn_post_norm;  /* (dim) or NULL */
    qmat w_gate_up;           /* (2*hidden_dim, dim): gate rows, then up rows */
    qmat w_down;              /* (dim, hidden_dim) */
} layer_weights;

typedef struct {
    qmat tok_embd;            /* (vocab rounded up to 16, dim) */
    layer_weights *layers;    /* (n_layers) */
    const float *out_norm;    /* (dim) */
    qmat output;              /* (vocab rounded up to 16, dim); tok_embd when tied */
} model_weights;

/* The weight arena: one contiguous, 2 MiB-aligned region holding every
 * weight. A second process can map the same bytes (POSIX shared memory). */
typedef struct {
    uint8_t *base;
    size_t size;
    int shm_fd;               /* -1 for a private (anonymous) arena */
    char shm_name[64];        /* "" unless in shared memory */
    int owner;                /* unlink the shm name on free */
} weight_arena;

typedef struct {
    model_config config;
    model_weights w;
    weight_arena arena;
} model;

/* Which sublayers to compute: attn[l], mlp[l] nonzero = compute. A NULL
 * mask pointer means "compute everything" (the full model). */
typedef struct {
    uint8_t *attn;            /* (n_layers) */
    uint8_t *mlp;             /* (n_layers) */
} layer_mask;

/* KV entries are stored in IEEE half precision (as llama.cpp does by
 * default): half the memory and bandwidth of float. See f16.h. */
typedef uint16_t kv_elem;

/* KV memory for many sequences at once (paged KV, as vLLM's paged
 * attention): fixed-size blocks of KV_BLOCK positions of every layer, handed
 * to sequences as they are admitted and returned when they finish, so the
 * memory in use follows the tokens in flight, not slots x context. */
#define KV_BLOCK 16
typedef struct {
    /* a block keeps each KV head's 16 rows together, so attention of one
     * head reads one stretch of memory per block */
    kv_elem *k;               /* (n_blocks, n_layers, n_kv_heads, KV_BLOCK, head_dim) */
    kv_elem *v;               /* (n_blocks, n_layers, n_kv_heads, KV_BLOCK, head_dim) */
    int32_t n_blocks;
    int32_t n_free;           /* blocks not held by any cache */
    int32_t *free_ids;        /* (n_blocks) the free blocks are free_ids[0..n_free) */
    int32_t *refs;            /* (n_blocks) holders of each block: the caches it is in,
                                 plus a prefix cache's hold (kv_block_hold); 0: free */
    int32_t n_layers, kv_dim, head_dim;
} kv_pool;

/* A KV cache for one sequence: keys and values of every processed position.
 * len: positions 0..len-1 hold the full model's keys/values (the verified
 * prefix). Writing happens only through model_forward. Either contiguous
 * (kv_init: k and v below) or paged (kv_init_paged: position p lives in pool
 * block blocks[p / KV_BLOCK]). */
typedef struct {
    kv_elem *k;               /* (n_layers, cap, kv_dim), contiguous caches */
    kv_elem *v;               /* (n_layers, cap, kv_dim) */
    kv_pool *pool;            /* paged caches: the pool, else NULL */
    int32_t *blocks;          /* (cap / KV_BLOCK) pool block of each KV_BLOCK positions */
    int32_t cap;              /* positions it can hold */
    int32_t len;              /* verified length */
    int32_t n_layers, kv_dim, head_dim;   /* a cache built by hand sets all three */
    void *dev;                /* a device backend's own cache (model/backend.h), else NULL */
} kv_cache;

/* One sequence's part of a batch. */
typedef struct {
    const int32_t *tokens;    /* (n_tokens) */
    int32_t n_tokens;
    int32_t pos;              /* position of tokens[0] */
    kv_cache *kv;             /* cache read for positions < pos; written for
                                 pos..pos+n-1 unless scratch is given */
    kv_cache *scratch;        /* optional: positions >= scratch_base are read
                                 from and written to this cache instead, at
                                 index pos - scratch_base (draft scratch) */
    int32_t scratch_base;
    int32_t logits_from;      /* logits for tokens[logits_from..n-1] */
    const int32_t *parent;    /* optional (n_tokens), a token tree (no scratch):
                                 parent[0] = -1 and 0 <= parent[j] < j; token j
                                 sits at position pos + depth(j), its KV at slot
                                 pos + j, and it attends to the positions
                                 before pos and its own ancestors only. NULL:
                                 a chain (parent[j] = j - 1). */
} fwd_seq;

/* The most tokens of one sequence whose attention one task computes together
 * (attn_block), sharing each key and value row's reads. */
#define FWD_ATTN_TOKENS 4

/* The most tokens of a tree block (fwd_seq.parent). */
#define FWD_TREE_MAX 64

/* Per-call activation buffers, sized for up to max_tokens tokens in a batch.
 * One fwd_state per thread of control; model_forward is reentrant given
 * distinct states. */
typedef struct {
    int32_t max_tokens;
    float *x;       /* (T, dim) residual stream */
    float *xb;      /* (T, dim) normed input */
    float *qkv;     /* (T, q_dim + 2*kv_dim) */
    float *att;     /* (T, q_dim) attention output (heads concatenated) */
    float *hb;      /* (T, 2*hidden_dim) gate|up, then SwiGLU result */
    float *scores;  /* (threads, FWD_ATTN_TOKENS * group * ctx) one attention task's
                       scores per thread */
    size_t score_cap;
    int score_threads;  /* threads at init (attention uses no more) */
    const f16_t **rows; /* (threads, 2 * ctx) one task's key and value rows per thread */
    int32_t row_cap;
    struct fwd_attn_task *attn_tasks; /* (max_tokens * n_heads) this call's attention tasks */
    int32_t n_attn_tasks;
    attn_run *runs;     /* (threads, run_cap) one task's KV runs per thread */
    int32_t run_cap;
    float *rope_cos, *rope_sin; /* (ctx, head_dim/2) */
    float *rope_cos_swa, *rope_sin_swa; /* (ctx, head_dim/2) local layers' base, or
                                           the same tables when it is the global one */
    int32_t rope_cap;
    int32_t *tok_seq;   /* (T) batch entry of each token */
    int32_t *tok_pos;   /* (T) position of each token (RoPE, attention) */
    int32_t *tok_slot;  /* (T) cache slot written: the position, or pos + j in a tree */
    void *qscratch;     /* activation quantization scratch (qmat.h) */
    float *head_row;    /* (vocab rounded up to 16) one padded logits row */
} fwd_state;

/* Load a GGUF model: read the config from metadata, convert every weight into
 * the arena (see qmat.h for the format). shm_name: NULL for private memory,
 * else create a POSIX shared-memory object of that name (unlinked by
 * model_free). Returns 0 or -1 + err. */
int model_load(model *m, const char *path, const char *shm_name, char *err, size_t errlen);
void model_free(model *m);

/* Map an arena created by another process's model_load (read-only), given
 * the path of the same GGUF (for the config) and the shm name. */
int model_attach(model *m, const char *path, const char *shm_name, char *err, size_t errlen);
/* The same from an open descriptor of that object (inherited across exec),
 * so the creator may unlink the name at once; shm_name is kept as a label. */
int model_attach_fd(model *m, const char *path, const char *shm_name, int fd, char *err, size_t errlen);

int kv_init(kv_cache *kv, const model_config *c, int32_t cap, char *err, size_t errlen);
/* Release a cache: a contiguous cache's memory, a paged cache's blocks
 * (back to its pool). */
void kv_free(kv_cache *kv);

/* A pool of as many KV blocks as fit in `bytes` (at least one). */
int kv_pool_init(kv_pool *p, const model_config *c, size_t bytes, char *err, size_t errlen);
void kv_pool_free(kv_pool *p);
/* A ledger: a pool of n_blocks (>= 1) block ids with no memory behind
 * them (k and v NULL), for a device that holds the blocks (the CUDA
 * backend's pool). kv_init_paged and kv_free hand its ids out and take them
 * back; such a cache is never given to model_forward. Free with
 * kv_pool_free. */
void kv_ledger_init(kv_pool *p, const model_config *c, int32_t n_blocks);
/* Bytes of one block (both K and V, every layer). */
size_t kv_pool_block_bytes(const model_config *c);
/* Blocks a cache of cap positions takes. */
int32_t kv_blocks_for(int32_t cap);
/* A paged cache of cap positions (rounded up to whole blocks) from pool p.
 * Returns 0, or -1 when the pool has too few free blocks (nothing taken). */
int kv_init_paged(kv_cache *kv, kv_pool *p, int32_t cap);
/* The same, whose first n_shared blocks are the given blocks of p (held
 * once more: a prompt prefix another sequence computed, read-only here;
 * its len is left 0, the caller sets it), the rest fresh. Positions in a
 * block held by more than one holder are never written (asserted). */
int kv_init_paged_shared(kv_cache *kv, kv_pool *p, int32_t cap, const int32_t *shared, int32_t n_shared);
/* One more / one fewer holder of block id of p; the last one's drop
 * returns the block to the free list. */
void kv_block_hold(kv_pool *p, int32_t id);
void kv_block_drop(kv_pool *p, int32_t id);
/* Drop every position >= len (len <= kv->len). */
void kv_truncate(kv_cache *kv, int32_t len);
/* Copy the keys and values of slot `from` (every layer and head) to slot
 * `to` of a host cache: how a tree block's accepted path (fwd_seq.parent)
 * moves to consecutive positions. */
void kv_copy_slot(kv_cache *kv, int32_t from, int32_t to);

/* Buffers for forward passes of up to max_tokens tokens over positions
 * < ctx. Allocation failure aborts (mallocCheck), so this cannot fail. */
void fwd_state_init(fwd_state *s, const model_config *c, int32_t max_tokens, int32_t ctx);
void fwd_state_free(fwd_state *s);

/* Check one block of a batch (entry i, for the message): a token count > 0,
 * pos >= 0, 0 <= logits_from <= n_tokens, every position below the cache's
 * capacity (the scratch's from scratch_base on when scratch_cap >= 0) and
 * ctx_cap, every token id in the vocabulary. Shared by model_forward and
 * the CUDA backend's cuda_forward. Returns 0, or -1 with err. */
int model_check_block(const model_config *c, int i, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                      int32_t logits_from, int32_t kv_cap, int32_t scratch_cap, int32_t scratch_base,
                      int32_t ctx_cap, char *err, size_t errlen);

/* The index of the largest of x[0..n), ties to the smaller index (a NaN
 * compares false: NaN at 0 gives 0, later NaN entries are skipped). The
 * greedy choice everywhere (sampler_argmax, the backends' argmax rows). */
int32_t model_argmax(const float *x, int32_t n);

/* Weight bytes one forward pass streams (whatever its token count): the
 * matrices and vectors of every computed sublayer under mask (NULL: all)
 * and the logits head (NULL: the model's own), not the embedding rows. */
size_t model_step_bytes(const model *m, const layer_mask *mask, const qmat *head);

/*
 * Run the model over a batch of n_seqs sequence blocks.
 *   mask:   NULL for the full model, else which sublayers to compute.
 *   head:   NULL for the model's output head (logits over the vocabulary),
 *           else another head matrix (the pruned draft head: its rows are a
 *           subset of the vocabulary, in an order the caller knows).
 *   logits: (sum over seqs of n_tokens - logits_from, vocab_size or head->rows)
 * For the full model the KV entries written are the verified values and the
 * caller advances kv->len; with a mask the caller must give a scratch cache.
 * Returns 0, or -1 + err when a block does not fit (positions past the cache).
 */
int model_forward(const model *m, fwd_state *s, fwd_seq *seqs, int n_seqs,
                  const layer_mask *mask, const qmat *head, float *logits, char *err, size_t errlen);

#endif
