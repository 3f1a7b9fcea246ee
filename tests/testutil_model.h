/*
 * testutil_model.h - tiny random Llama models for tests, and a naive float
 * reference forward pass to compare the engine against.
 *
 * tmodel_write() builds a GGUF file (with the writer of testutil_gguf.h)
 * holding a random Llama model described by a tmodel_spec: llama.* metadata,
 * a small gpt2-style byte tokenizer (not needed by the loader), F32 norm
 * vectors and weight matrices in a chosen tensor type. The spec also has
 * knobs for hostile files (missing tensors, wrong shapes, bad metadata,
 * non-finite norms).
 *
 * Weights: matrices are uniform with a gain of about 1 (rms 1/sqrt(cols));
 * the embedding / output head have gain 4 so logits have an rms of a few
 * units. F32/F16/BF16/Q8_0/Q4_0/Q4_1 are quantized from floats with
 * tgguf_quantize; Q4_K/Q6_K (row length a multiple of 256) are random valid
 * blocks whose f16 scales are rewritten to give the same gains; the other
 * quantized types (Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS) are random
 * blocks whose f16 scale fields are all multiplied by one factor that
 * brings the tensor's rms to the gain.
 *
 * The reference (tref_*) reads the GGUF file back with gguf_open, dequantizes
 * every tensor to float with gguf_dequantize, and runs plain loops in double
 * precision: RMSNorm, RoPE on adjacent pairs with theta = pos *
 * base^(-2i/head_dim), grouped-query causal attention, SwiGLU, output head.
 * It shares no code with model.c / qmat.c.
 *
 * No cmocka dependency, no main(): linked into every test binary.
 */
#ifndef SELFSPEC_TESTUTIL_MODEL_H
#define SELFSPEC_TESTUTIL_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t dim, hidden, n_layers, n_heads, n_kv_heads, vocab, ctx;
    float rope_base, norm_eps;
    uint32_t wtype;          /* type of every matrix (token_embd, output, blk.*) */
    int tied;                /* no output.weight: the head is token_embd */
    uint64_t seed;

    /* ---- architecture features (zero = the Llama block; set arch to match) ---- */
    int32_t head_dim;        /* attention.key_length / value_length, else dim / n_heads */
    int qk_norm;             /* blk.N.attn_{q,k}_norm.weight (qwen3, gemma3) */
    int post_norms;          /* blk.N.post_attention_norm, post_ffw_norm (gemma3) */
    int32_t swa_window;      /* attention.sliding_window (gemma3) */
    int fused;               /* blk.N.attn_qkv and an ffn_up of 2 * hidden rows, no ffn_gate (phi3) */
    int rope_freqs;          /* a rope_freqs.weight tensor of per-pair factors (Llama 3.1) */
    float rope_linear;       /* rope.scaling.type "linear" with this factor (0: none) */
    const char *pre;         /* tokenizer.ggml.pre (NULL: "default"); with it, ids 256.. are the
                                merged tokens of a fixed merge list (tmodel_merges) */

    /* ---- hostile knobs (zero = off) ---- */
    const char *arch;        /* general.architecture (NULL: "llama") */
    const char *omit;        /* leave this tensor out */
    const char *reshape;     /* write this tensor with ne[1] + 16 rows */
    int64_t meta_heads;      /* head_count written (-1 or 0 with meta_set: see below) */
    int64_t meta_kv_heads;
    int meta_heads_set;      /* write meta_heads instead of n_heads */
    int meta_kv_heads_set;   /* write meta_kv_heads instead of n_kv_heads */
    const char *omit_key;    /* leave this metadata key out */
    const char *nonfinite;   /* norm vector (name) that gets a NaN/inf */
    float nonfinite_value;
    int64_t meta_layers;     /* block_count written when meta_layers_set */
    int meta_layers_set;
} tmodel_spec;

/* A small default spec: dim 64, hidden 128, 2 layers, 4 heads, 2 kv heads
 * (head_dim 16), vocab 256, ctx 128, rope base 10000, eps 1e-5, type wtype.
 * For Q4_K / Q6_K the default is dim 256, hidden 512 (head_dim 64). */
tmodel_spec tmodel_default(uint32_t wtype);

/* Write the model to path. Returns 0, or -1 on I/O error. */
int tmodel_write(const tmodel_spec *spec, const char *path);

/* Write to a fresh temporary file; path (>= 64 bytes) gets its name.
 * The caller unlinks it. Returns 0 or -1. */
int tmodel_write_temp(const tmodel_spec *spec, char *path, size_t pathlen);

/* ------------------------------------------------------------ reference */

typedef struct {
    float *attn_norm, *ffn_norm;      /* (dim) */
    float *wq, *wk, *wv, *wo;         /* (rows, cols) row-major */
    float *wg, *wu, *wd;
} tref_layer;

typedef struct {
    int32_t dim, hidden, n_layers, n_heads, n_kv_heads, head_dim, kv_dim, vocab;
    float rope_base, norm_eps;
    float *tok_embd;                  /* (vocab, dim) */
    float *out_norm;                  /* (dim) */
    float *output;                    /* (vocab, dim); == tok_embd when tied */
    tref_layer *layers;
} tref_model;

/* Load every tensor of a Llama GGUF as floats. Returns 0 or -1 + err. */
int tref_load(tref_model *r, const char *path, char *err, size_t errlen);
void tref_free(tref_model *r);

/* Run tokens[0..n) at positions 0..n-1 and write logits (n, vocab).
 * attn_mask / mlp_mask: NULL = compute every sublayer, else per layer
 * nonzero = compute (a skipped sublayer is the identity). */
void tref_forward(const tref_model *r, const int32_t *tokens, int32_t n,
                  const uint8_t *attn_mask, const uint8_t *mlp_mask, float *logits);

/* The logits of one token with every sublayer skipped:
 * head(rmsnorm(embedding[token])). */
void tref_head_of_embedding(const tref_model *r, int32_t token, float *logits);

/* The tokenizer of an in-memory GGUF built with testutil_gguf.h (consumes
 * and frees g). Returns NULL with err when it does not open or build. */
struct tgguf;
struct tokenizer;
struct tokenizer *tmodel_tokenizer(struct tgguf *g, char *err, size_t errlen);

/* Deterministic pseudo-random helpers shared by the tests. */
uint64_t tmodel_rng(uint64_t *state);
float tmodel_rngf(uint64_t *state);          /* [0, 1) */

#endif
