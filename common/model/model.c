/*
 * model.c - loading a Llama-architecture GGUF into the weight arena, KV
 * caches, and the forward pass.
 *
 * Arena layout: every array (norm vectors, and the q/d/m arrays of every
 * U8A matrix, see qmat.h) is placed at a 64-byte aligned offset inside one
 * region. The region is an anonymous mapping, or a POSIX shared-memory
 * object another process can map read-only (model_attach). Layouts are
 * computed by a deterministic walk (arena_plan), so the attaching process
 * finds every array at the same offset without any table being sent.
 *
 * Forward-pass buffers (fwd_state) are row-major, one row per token of the
 * batch: x (T, dim) is the residual stream. The KV cache holds
 * (layer, position, kv_dim) half-precision values (f16.h).
 */
#include "model/model.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels/act.h"
#include "kernels/f16.h"
#include "util/util.h"

#define ARENA_ALIGN 64
#define ARENA_MAP_ALIGN (2u << 20)

/* ------------------------------------------------------------------------ */
/* Architectures and configuration from GGUF metadata                        */

static const model_arch model_archs[] = {
    /* name     qkv_bias rope_neox qk_norm post_norms embd_scale mlp_act       swa_pattern */
    {"llama",   0,       0,        0,      0,         0,         MODEL_MLP_SWIGLU, 0},
    {"qwen2",   1,       1,        0,      0,         0,         MODEL_MLP_SWIGLU, 0},
    {"qwen3",   0,       1,        1,      0,         0,         MODEL_MLP_SWIGLU, 0},
    {"gemma3",  0,       1,        1,      1,         1,         MODEL_MLP_GEGLU,  6},
    {"phi3",    0,       1,        0,      0,         0,         MODEL_MLP_SWIGLU, 0},
};

const model_arch *model_arch_find(const char *name)
{
    for (size_t i = 0; i < sizeof model_archs / sizeof *model_archs; i++)
        if (strcmp(model_archs[i].name, name) == 0)
            return &model_archs[i];
    return NULL;
}

static int cfg_u32(const gguf_file *g, const char *arch, const char *suffix, int required,
                   uint32_t dflt, int32_t *out, char *err, size_t errlen)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    if (gguf_get_u32(g, key, &v) != 0) {
        if (required)
            return util_err(err, errlen, "model metadata lacks '%s'", key);
        if (gguf_find_kv(g, key))
            return util_err(err, errlen, "model metadata '%s' is not a whole number", key);
        *out = (int32_t)dflt;   /* absent: the default, which may be 0 for "none" */
        return 0;
    }
    if (v == 0 || v > (1u << 24))
        return util_err(err, errlen, "model metadata '%s' = %u is out of range", key, v);
    *out = (int32_t)v;
    return 0;
}

/* RoPE scaling: rope.scaling.type "linear" (positions divided by
 * rope.scaling.factor), and per-pair frequency factors from the
 * rope_freqs.weight tensor (llama.cpp's converter writes Llama 3.1's "llama3"
 * scaling as that tensor). Other scalings (YaRN, Phi-3's long/short
 * factors) are refused by name. */
static int config_rope_scaling(model_config *c, const gguf_file *g, char *err, size_t errlen)
{
    char key[160];
    gguf_str type = {"none", 4};
    c->rope_scale = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", c->arch);
    gguf_get_str(g, key, &type);
    if (type.len == 6 && memcmp(type.ptr, "linear", 6) == 0) {
        float factor = 0.0f;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", c->arch);
        if (gguf_get_f32(g, key, &factor) != 0 || !(factor >= 1.0f && factor <= 1024.0f))
            return util_err(err, errlen, "linear RoPE scaling needs %s in [1, 1024]", key);
        c->rope_scale = 1.0f / factor;
    } else if (!(type.len == 4 && memcmp(type.ptr, "none", 4) == 0) &&
               !(type.len == 6 && memcmp(type.ptr, "llama3", 6) == 0)) {
        return util_err(err, errlen, "RoPE scaling '%.*s' is not supported (none, linear, llama3)",
                        (int)(type.len < 32 ? type.len : 32), type.ptr);
    }
    if (gguf_find_tensor(g, "rope_factors_long.weight") || gguf_find_tensor(g, "rope_factors_short.weight"))
        return util_err(err, errlen, "long/short RoPE factors (Phi-3 128k context) are not supported");
    const gguf_tensor *t = gguf_find_tensor(g, "rope_freqs.weight");
    if (!t)
        return 0;
    if (t->type != GGUF_TT_F32 || t->n_elements != (uint64_t)c->head_dim / 2)
        return util_err(err, errlen, "rope_freqs.weight: expected %d F32 values", c->head_dim / 2);
    gguf_dequantize(t->type, t->data, c->rope_freq, t->n_elements);
    for (int32_t i = 0; i < c->head_dim / 2; i++)
        if (!(c->rope_freq[i] > 0.0f && c->rope_freq[i] < 1e30f))
            return util_err(err, errlen, "rope_freqs.weight[%d] = %g is not a positive factor", i, c->rope_freq[i]);
    c->rope_factors = 1;
    return 0;
}

static int config_read(model_config *c, const gguf_file *g, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    gguf_str s;
    if (gguf_get_str(g, "general.architecture", &s) != 0)
        return util_err(err, errlen, "model metadata lacks general.architecture");
    if (s.len >= sizeof c->arch)
        return util_err(err, errlen, "general.architecture too long");
    memcpy(c->arch, s.ptr, s.len);
    const model_arch *arch = model_arch_find(c->arch);
    if (!arch) {
        char known[128] = "";
        for (size_t i = 0; i < sizeof model_archs / sizeof *model_archs; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s'%s'", i ? ", " : "",
                     model_archs[i].name);
        return util_err(err, errlen, "unsupported architecture '%s' (selfspec runs %s)", c->arch, known);
    }
    c->qkv_bias = arch->qkv_bias;
    c->rope_neox = arch->rope_neox;
    c->qk_norm = arch->qk_norm;
    c->post_norms = arch->post_norms;
    c->embd_scale = arch->embd_scale;
    c->mlp_act = arch->mlp_act;
    if (gguf_get_str(g, "general.name", &s) == 0) {
        size_t n = s.len < sizeof c->name - 1 ? s.len : sizeof c->name - 1;
        memcpy(c->name, s.ptr, n);
    }
    const char *a = c->arch;
    if (cfg_u32(g, a, "block_count", 1, 0, &c->n_layers, err, errlen) ||
        cfg_u32(g, a, "embedding_length", 1, 0, &c->dim, err, errlen) ||
        cfg_u32(g, a, "feed_forward_length", 1, 0, &c->hidden_dim, err, errlen) ||
        cfg_u32(g, a, "attention.head_count", 1, 0, &c->n_heads, err, errlen) ||
        cfg_u32(g, a, "attention.head_count_kv", 0, (uint32_t)c->n_heads, &c->n_kv_heads, err, errlen) ||
        cfg_u32(g, a, "context_length", 0, 2048, &c->ctx_train, err, errlen))
        return -1;
    char key[160];
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    if (gguf_get_f32(g, key, &c->rope_base) != 0)
        c->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    if (gguf_get_f32(g, key, &c->norm_eps) != 0)
        c->norm_eps = 1e-5f;
    if (!(c->rope_base > 0.0f) || !(c->norm_eps > 0.0f) || c->norm_eps > 1.0f)
        return util_err(err, errlen, "invalid rope.freq_base or rms epsilon");
    if (c->n_heads % c->n_kv_heads != 0)
        return util_err(err, errlen, "head counts (%d, %d): the KV heads do not divide the query heads (dim %d)",
                        c->n_heads, c->n_kv_heads, c->dim);
    /* the head size: attention.key_length where given (Gemma 3, Qwen3 may
     * differ from dim / n_heads), else dim / n_heads */
    int32_t key_len = 0, val_len = 0, window = 0, pattern = 0;
    if (cfg_u32(g, a, "attention.key_length", 0, 0, &key_len, err, errlen) ||
        cfg_u32(g, a, "attention.value_length", 0, 0, &val_len, err, errlen))
        return -1;
    if (arch->swa_pattern &&
        (cfg_u32(g, a, "attention.sliding_window", 0, 0, &window, err, errlen) ||
         cfg_u32(g, a, "attention.sliding_window_pattern", 0, 0, &pattern, err, errlen)))
        return -1;
    if (key_len == 0) {
        if (c->dim % c->n_heads != 0)
            return util_err(err, errlen, "head counts (%d, %d) do not divide dim %d",
                            c->n_heads, c->n_kv_heads, c->dim);
        key_len = c->dim / c->n_heads;
    }
    if (val_len != 0 && val_len != key_len)
        return util_err(err, errlen, "attention.key_length %d != value_length %d: not supported", key_len, val_len);
    if ((int64_t)c->n_heads * key_len > (1 << 20) || c->dim > (1 << 20) || c->hidden_dim > (1 << 22))
        return util_err(err, errlen, "attention width %d x %d, dim %d or hidden %d too large",
                        c->n_heads, key_len, c->dim, c->hidden_dim);
    c->head_dim = key_len;
    c->q_dim = c->n_heads * c->head_dim;
    c->kv_dim = c->n_kv_heads * c->head_dim;
    if (c->head_dim % 16 != 0 || c->head_dim > ATTN_MAX_HEAD_DIM || c->dim % QMAT_BLOCK != 0 ||
        c->hidden_dim % QMAT_BLOCK != 0)
        return util_err(err, errlen, "dim %d / hidden %d / head_dim %d not supported (need multiples of 32, head_dim a multiple of 16 up to %d)",
                        c->dim, c->hidden_dim, c->head_dim, ATTN_MAX_HEAD_DIM);
    /* local (sliding-window) layers, where the architecture has them (as
     * llama.cpp, a window in another architecture's metadata is not used) */
    if (window > 0) {
        c->swa_window = window;
        c->swa_pattern = pattern ? pattern : arch->swa_pattern;
    }
    c->rope_base_swa = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base_swa", a);
    if (gguf_get_f32(g, key, &c->rope_base_swa) == 0 && !(c->rope_base_swa > 0.0f))
        return util_err(err, errlen, "invalid %s", key);
    if (config_rope_scaling(c, g, err, errlen) != 0)
        return -1;
    snprintf(key, sizeof key, "%s.final_logit_softcapping", a);
    if (gguf_get_f32(g, key, &c->final_softcap) == 0 && !(c->final_softcap >= 0.0f && c->final_softcap < 1e30f))
        return util_err(err, errlen, "invalid %s", key);
    /* a huge block_count must not size anything before the tensors confirm it */
    char last[96];
    snprintf(last, sizeof last, "blk.%d.attn_norm.weight", c->n_layers - 1);
    if (!gguf_find_tensor(g, last))
        return util_err(err, errlen, "%s.block_count = %d, but the model lacks tensor '%s'", a, c->n_layers, last);
    if ((uint64_t)c->n_layers * 6 > gguf_tensor_count(g))   /* 6: the fewest a layer has (fused Phi-3) */
        return util_err(err, errlen, "%s.block_count = %d, but the file holds only %llu tensors",
                        a, c->n_layers, (unsigned long long)gguf_tensor_count(g));
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb)
        return util_err(err, errlen, "model lacks tensor 'token_embd.weight'");
    if (emb->ne[1] == 0 || emb->ne[1] > (1u << 24))
        return util_err(err, errlen, "token_embd.weight has a bad vocabulary size");
    c->vocab_size = (int32_t)emb->ne[1];
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Arena planning: one walk assigns offsets; used to size, fill and attach.  */

typedef struct {
    size_t off;            /* running offset */
    uint8_t *base;         /* NULL while sizing */
} arena_cursor;

static void *arena_take(arena_cursor *ac, size_t bytes)
{
    ac->off = (ac->off + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    void *p = ac->base ? ac->base + ac->off : NULL;
    ac->off += bytes;
    return p;
}

/* The storage form of a matrix filled from the named GGUF tensors: QMAT_U4
 * (packed nibbles, half the bytes) when every one of them converts to
 * levels <= 15 exactly (gguf_affine), else QMAT_U8. Decided from the tensor
 * types alone, so that sizing, filling and attaching agree. */
static int32_t qmat_form(const gguf_file *g, const char *const *names, int n)
{
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_find_tensor(g, names[i]);
        int max_level = t ? gguf_affine_max_level(t->type) : -1;
        if (max_level < 0 || max_level > 15)
            return QMAT_U8;
    }
    return QMAT_U4;
}

static void plan_qmat(arena_cursor *ac, qmat *W, int32_t rows, int32_t cols, int32_t fmt)
{
    W->rows = rows;
    W->cols = cols;
    W->fmt = fmt;
    W->tier = fmt == QMAT_U4 ? QMAT_TIER_NIBBLE : QMAT_TIER_8BIT;
    W->q = arena_take(ac, qmat_q_bytes_fmt(rows, cols, fmt));
    W->d = arena_take(ac, qmat_dm_bytes(rows, cols));
    W->m = arena_take(ac, qmat_dm_bytes(rows, cols));
}

/* Walk every weight in a fixed order; the vocabulary is padded to a
 * multiple of 16 rows (padding rows are zero and never read as tokens). */
static void arena_plan(arena_cursor *ac, model *m, const gguf_file *g)
{
    const model_config *c = &m->config;
    model_weights *w = &m->w;
    int32_t vrows = (c->vocab_size + QMAT_ROWS - 1) / QMAT_ROWS * QMAT_ROWS;
    const char *emb[] = {"token_embd.weight"}, *out[] = {"output.weight"};
    plan_qmat(ac, &w->tok_embd, vrows, c->dim, qmat_form(g, emb, 1));
    w->out_norm = arena_take(ac, (size_t)c->dim * sizeof(float));
    if (gguf_find_tensor(g, "output.weight"))
        plan_qmat(ac, &w->output, vrows, c->dim, qmat_form(g, out, 1));
    else
        w->output = w->tok_embd;
    for (int32_t l = 0; l < c->n_layers; l++) {
        layer_weights *L = &w->layers[l];
        char n[8][96];
        const char *suffix[8] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                                 "attn_qkv"};
        for (int i = 0; i < 8; i++)
            snprintf(n[i], sizeof n[i], "blk.%d.%s.weight", l, suffix[i]);
        const char *qkv[] = {n[0], n[1], n[2]}, *o[] = {n[3]}, *gu[] = {n[4], n[5]}, *dn[] = {n[6]};
        if (gguf_find_tensor(g, n[7]))   /* fused Q/K/V (Phi-3) */
            qkv[0] = n[7];
        int fused_qkv = gguf_find_tensor(g, n[7]) != NULL, fused_gu = !gguf_find_tensor(g, n[4]);
        size_t vec = (size_t)c->dim * sizeof(float), head = (size_t)c->head_dim * sizeof(float);
        L->attn_norm = arena_take(ac, vec);
        L->ffn_norm = arena_take(ac, vec);
        L->q_norm = c->qk_norm ? arena_take(ac, head) : NULL;
        L->k_norm = c->qk_norm ? arena_take(ac, head) : NULL;
        L->attn_post_norm = c->post_norms ? arena_take(ac, vec) : NULL;
        L->ffn_post_norm = c->post_norms ? arena_take(ac, vec) : NULL;
        plan_qmat(ac, &L->wqkv, c->q_dim + 2 * c->kv_dim, c->dim, qmat_form(g, qkv, fused_qkv ? 1 : 3));
        L->bqkv = c->qkv_bias ? arena_take(ac, (size_t)(c->q_dim + 2 * c->kv_dim) * sizeof(float)) : NULL;
        plan_qmat(ac, &L->wo, c->dim, c->q_dim, qmat_form(g, o, 1));
        plan_qmat(ac, &L->w_gate_up, 2 * c->hidden_dim, c->dim, qmat_form(g, gu + fused_gu, fused_gu ? 1 : 2));
        plan_qmat(ac, &L->w_down, c->dim, c->hidden_dim, qmat_form(g, dn, 1));
    }
}

/* ------------------------------------------------------------------------ */
/* Filling the arena from GGUF tensors                                       */

static const gguf_tensor *find_shaped(const gguf_file *g, const char *name, int64_t ne0,
                                      int64_t ne1, char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        util_err(err, errlen, "model lacks tensor '%s'", name);
        return NULL;
    }
    if ((int64_t)t->ne[0] != ne0 || (int64_t)t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        util_err(err, errlen, "tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]",
                 name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                 (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                 (long long)ne0, (long long)ne1);
        return NULL;
    }
    uint32_t be, bb;
    if (gguf_type_block(t->type, &be, &bb) != 0) {
        util_err(err, errlen, "tensor '%s' has unsupported type %u", name, t->type);
        return NULL;
    }
    return t;
}

/* A row of a type with an exact affine form (gguf_affine) to levels, block
 * by block: no re-quantization. */
static void row_from_affine(uint32_t type, const uint8_t *src, int32_t cols, uint8_t *lv, float *d, float *m)
{
    uint32_t be, bb;
    gguf_type_block(type, &be, &bb);
    for (int32_t b = 0; b < cols / (int32_t)be; b++) {
        int rc = gguf_affine(type, src + (size_t)b * bb, lv + (size_t)b * be, d + b * (be / QMAT_BLOCK),
                             m + b * (be / QMAT_BLOCK));
        assert(rc == 0);
        (void)rc;
    }
}

/* Convert the rows of GGUF tensor t into rows row0.. of W. Returns -1 when
 * a block scale or offset is not finite. */
static int fill_qmat(const gguf_tensor *t, qmat *W, int32_t row0)
{
    int bad = 0;
    uint32_t be, bb;
    gguf_type_block(t->type, &be, &bb);
    int32_t cols = W->cols, nb = cols / QMAT_BLOCK;
    size_t row_bytes = (size_t)cols / be * bb;
    int32_t rows = (int32_t)t->ne[1];
    #pragma omp parallel
    {
        float *tmp = mallocCheck((size_t)cols * sizeof(float));
        uint8_t *lv = mallocCheck((size_t)cols);
        float *d = mallocCheck((size_t)nb * sizeof(float)), *m = mallocCheck((size_t)nb * sizeof(float));
        #pragma omp for schedule(static) reduction(|:bad)
        for (int32_t r = 0; r < rows; r++) {
            const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row_bytes;
            if (gguf_affine_max_level(t->type) >= 0) {
                row_from_affine(t->type, src, cols, lv, d, m);
            } else {
                gguf_dequantize(t->type, src, tmp, (uint64_t)cols);
                qmat_quantize_row(tmp, cols, lv, d, m);
            }
            for (int32_t b = 0; b < nb; b++)
                if (!isfinite(d[b]) || !isfinite(m[b]))
                    bad = 1;
            qmat_set_row(W, row0 + r, lv, d, m);
        }
        free(tmp);
        free(lv);
        free(d);
        free(m);
    }
    return bad ? -1 : 0;
}

static int fill_vec(const gguf_file *g, const char *name, int32_t n, const float *dst,
                    char *err, size_t errlen)
{
    const gguf_tensor *t = find_shaped(g, name, n, 1, err, errlen);
    if (!t)
        return -1;
    if (gguf_dequantize(t->type, t->data, (float *)dst, (uint64_t)n) != 0)
        return util_err(err, errlen, "tensor '%s': cannot convert type %s", name, gguf_type_name(t->type));
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return util_err(err, errlen, "tensor '%s' holds a non-finite value", name);
    return 0;
}

static int fill_mat(const gguf_file *g, const char *name, qmat *W, int32_t row0, int32_t rows,
                    char *err, size_t errlen)
{
    const gguf_tensor *t = find_shaped(g, name, W->cols, rows, err, errlen);
    if (!t)
        return -1;
    uint32_t be, bb;
    gguf_type_block(t->type, &be, &bb);
    if (W->cols % (int32_t)be != 0)
        return util_err(err, errlen, "tensor '%s': row length %d is not a multiple of its block size %u",
                        name, W->cols, be);
    if (fill_qmat(t, W, row0) != 0)
        return util_err(err, errlen, "tensor '%s' holds a non-finite scale or value", name);
    return 0;
}

static int fill_layer(const gguf_file *g, const model_config *c, layer_weights *L, int32_t l,
                      char *err, size_t errlen)
{
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
    int32_t qkv_rows = c->q_dim + 2 * c->kv_dim;
    /* Q, K and V as one tensor (Phi-3's attn_qkv: the rows stacked as the
     * engine keeps them), else three */
    int fused_qkv = gguf_find_tensor(g, NAME("attn_qkv.weight")) != NULL;
    if (fused_qkv ? fill_mat(g, NAME("attn_qkv.weight"), &L->wqkv, 0, qkv_rows, err, errlen)
                  : (fill_mat(g, NAME("attn_q.weight"), &L->wqkv, 0, c->q_dim, err, errlen) ||
                     fill_mat(g, NAME("attn_k.weight"), &L->wqkv, c->q_dim, c->kv_dim, err, errlen) ||
                     fill_mat(g, NAME("attn_v.weight"), &L->wqkv, c->q_dim + c->kv_dim, c->kv_dim, err, errlen)))
        return -1;
    /* gate and up as one ffn_up of 2 * hidden rows, gate first (Phi-3: what
     * llama.cpp's swiglu splits), where there is no ffn_gate */
    int fused_gu = gguf_find_tensor(g, NAME("ffn_gate.weight")) == NULL;
    if (fused_gu ? fill_mat(g, NAME("ffn_up.weight"), &L->w_gate_up, 0, 2 * c->hidden_dim, err, errlen)
                 : (fill_mat(g, NAME("ffn_gate.weight"), &L->w_gate_up, 0, c->hidden_dim, err, errlen) ||
                    fill_mat(g, NAME("ffn_up.weight"), &L->w_gate_up, c->hidden_dim, c->hidden_dim, err, errlen)))
        return -1;
    if (fill_vec(g, NAME("attn_norm.weight"), c->dim, L->attn_norm, err, errlen) ||
        fill_vec(g, NAME("ffn_norm.weight"), c->dim, L->ffn_norm, err, errlen) ||
        fill_mat(g, NAME("attn_output.weight"), &L->wo, 0, c->dim, err, errlen) ||
        fill_mat(g, NAME("ffn_down.weight"), &L->w_down, 0, c->dim, err, errlen))
        return -1;
    if (c->qkv_bias &&
        (fill_vec(g, NAME("attn_q.bias"), c->q_dim, L->bqkv, err, errlen) ||
         fill_vec(g, NAME("attn_k.bias"), c->kv_dim, L->bqkv + c->q_dim, err, errlen) ||
         fill_vec(g, NAME("attn_v.bias"), c->kv_dim, L->bqkv + c->q_dim + c->kv_dim, err, errlen)))
        return -1;
    if (c->qk_norm &&
        (fill_vec(g, NAME("attn_q_norm.weight"), c->head_dim, L->q_norm, err, errlen) ||
         fill_vec(g, NAME("attn_k_norm.weight"), c->head_dim, L->k_norm, err, errlen)))
        return -1;
    if (c->post_norms &&
        (fill_vec(g, NAME("post_attention_norm.weight"), c->dim, L->attn_post_norm, err, errlen) ||
         fill_vec(g, NAME("post_ffw_norm.weight"), c->dim, L->ffn_post_norm, err, errlen)))
        return -1;
#undef NAME
    return 0;
}

static int arena_fill(model *m, const gguf_file *g, char *err, size_t errlen)
{
    const model_config *c = &m->config;
    model_weights *w = &m->w;
    if (fill_mat(g, "token_embd.weight", &w->tok_embd, 0, c->vocab_size, err, errlen) ||
        fill_vec(g, "output_norm.weight", c->dim, w->out_norm, err, errlen))
        return -1;
    if (gguf_find_tensor(g, "output.weight") &&
        fill_mat(g, "output.weight", &w->output, 0, c->vocab_size, err, errlen))
        return -1;
    for (int32_t l = 0; l < c->n_layers; l++)
        if (fill_layer(g, c, &w->layers[l], l, err, errlen))
            return -1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Arena memory: anonymous or POSIX shared memory                            */

static int arena_map(weight_arena *a, size_t size, const char *shm_name, int create, int fd_in,
                     char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->shm_fd = -1;
    size_t mapped = (size + ARENA_MAP_ALIGN - 1) & ~(size_t)(ARENA_MAP_ALIGN - 1);
    int prot = create ? PROT_READ | PROT_WRITE : PROT_READ;
    int fd = -1;
    if (shm_name) {
        if (strlen(shm_name) >= sizeof a->shm_name || shm_name[0] != '/')
            return util_err(err, errlen, "bad shared-memory name '%s'", shm_name);
        fd = create ? shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600)
                    : fd_in >= 0 ? fcntl(fd_in, F_DUPFD_CLOEXEC, 0) : shm_open(shm_name, O_RDONLY, 0);
        if (fd < 0)
            return util_err(err, errlen, "shm_open('%s'): %s", shm_name, strerror(errno));
        if (create && ftruncate(fd, (off_t)mapped) != 0) {
            int e = errno;
            close(fd);
            shm_unlink(shm_name);
            return util_err(err, errlen, "sizing shared memory '%s' to %zu bytes: %s",
                            shm_name, mapped, strerror(e));
        }
        struct stat st;
        if (!create && (fstat(fd, &st) != 0 || (size_t)st.st_size < size)) {
            close(fd);
            return util_err(err, errlen, "shared memory '%s' is smaller than the model's arena", shm_name);
        }
    }
    void *p = shm_name ? mmap(NULL, mapped, prot, MAP_SHARED, fd, 0)
                       : mmap(NULL, mapped, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            if (create)
                shm_unlink(shm_name);
        }
        return util_err(err, errlen, "mapping a %zu-byte weight arena: %s", mapped, strerror(e));
    }
    /* Decoding streams every weight once per token: 2 MiB pages cut the TLB
     * misses of that stream (private arenas; shared memory follows the
     * system's shmem_enabled setting). Advisory: failure is harmless. */
    madvise(p, mapped, MADV_HUGEPAGE);
    a->base = p;
    a->size = mapped;
    a->shm_fd = fd;
    a->owner = create;
    if (shm_name)
        snprintf(a->shm_name, sizeof a->shm_name, "%s", shm_name);
    return 0;
}

static void arena_unmap(weight_arena *a)
{
    if (a->base)
        munmap(a->base, a->size);
    if (a->shm_fd >= 0)
        close(a->shm_fd);
    if (a->owner && a->shm_name[0])
        shm_unlink(a->shm_name);
    memset(a, 0, sizeof *a);
    a->shm_fd = -1;
}

/* ------------------------------------------------------------------------ */
/* Load / attach / free                                                      */

static int model_setup(model *m, const char *path, const char *shm_name, int create, int fd_in,
                       char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    m->arena.shm_fd = -1;
    gguf_file *g = NULL;
    if (gguf_open(path, &g, err, errlen) != 0)
        return -1;
    if (config_read(&m->config, g, err, errlen) != 0)
        goto fail_gguf;
    m->w.layers = callocCheck((size_t)m->config.n_layers, sizeof(layer_weights));
    arena_cursor sizing = {0, NULL};
    arena_plan(&sizing, m, g);
    if (arena_map(&m->arena, sizing.off, shm_name, create, fd_in, err, errlen) != 0)
        goto fail_layers;
    arena_cursor placing = {0, m->arena.base};
    arena_plan(&placing, m, g);
    assert(placing.off == sizing.off);
    if (create && arena_fill(m, g, err, errlen) != 0)
        goto fail_arena;
    if (create)
        mprotect(m->arena.base, m->arena.size, PROT_READ);
    gguf_close(g);
    return 0;

fail_arena:
    arena_unmap(&m->arena);
fail_layers:
    free(m->w.layers);
    m->w.layers = NULL;
fail_gguf:
    gguf_close(g);
    return -1;
}

int model_load(model *m, const char *path, const char *shm_name, char *err, size_t errlen)
{
    return model_setup(m, path, shm_name, 1, -1, err, errlen);
}

int model_attach(model *m, const char *path, const char *shm_name, char *err, size_t errlen)
{
    if (!shm_name)
        return util_err(err, errlen, "model_attach needs a shared-memory name");
    return model_setup(m, path, shm_name, 0, -1, err, errlen);
}

int model_attach_fd(model *m, const char *path, const char *shm_name, int fd, char *err, size_t errlen)
{
    if (!shm_name || fd < 0)
        return util_err(err, errlen, "model_attach_fd needs a name and a descriptor");
    return model_setup(m, path, shm_name, 0, fd, err, errlen);
}

void model_free(model *m)
{
    if (!m)
        return;
    arena_unmap(&m->arena);
    free(m->w.layers);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------ */
/* KV cache and forward state                                                */

int kv_init(kv_cache *kv, const model_config *c, int32_t cap, char *err, size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    if (cap <= 0)
        return util_err(err, errlen, "KV cache capacity must be positive");
    size_t n = (size_t)c->n_layers * (size_t)cap * (size_t)c->kv_dim;
    kv->k = calloc(n, sizeof(kv_elem));
    kv->v = calloc(n, sizeof(kv_elem));
    if (!kv->k || !kv->v) {
        kv_free(kv);
        return util_err(err, errlen, "out of memory for a %d-position KV cache (%zu MB)",
                        cap, 2 * n * sizeof(kv_elem) >> 20);
    }
    kv->cap = cap;
    kv->n_layers = c->n_layers;
    kv->kv_dim = c->kv_dim;
    kv->head_dim = c->head_dim;
    return 0;
}

void kv_free(kv_cache *kv)
{
    if (kv->pool) {
        int32_t n = kv_blocks_for(kv->cap);
        for (int32_t i = 0; i < n; i++)
            kv_block_drop(kv->pool, kv->blocks[i]);
        free(kv->blocks);
    } else {
        free(kv->k);
        free(kv->v);
    }
    memset(kv, 0, sizeof *kv);
}

size_t kv_pool_block_bytes(const model_config *c)
{
    return 2 * (size_t)c->n_layers * KV_BLOCK * (size_t)c->kv_dim * sizeof(kv_elem);
}

int32_t kv_blocks_for(int32_t cap)
{
    return (cap + KV_BLOCK - 1) / KV_BLOCK;
}

void kv_block_hold(kv_pool *p, int32_t id)
{
    assert(id >= 0 && id < p->n_blocks && p->refs[id] > 0);
    p->refs[id]++;
}

void kv_block_drop(kv_pool *p, int32_t id)
{
    assert(id >= 0 && id < p->n_blocks && p->refs[id] > 0);
    if (--p->refs[id] == 0) {
        assert(p->n_free < p->n_blocks);
        p->free_ids[p->n_free++] = id;
    }
}

/* Every block free, block 0 handed out first. */
static void pool_ids_init(kv_pool *p, const model_config *c, int32_t n)
{
    p->refs = callocCheck((size_t)n, sizeof(int32_t));
    p->n_blocks = p->n_free = n;
    for (int32_t i = 0; i < n; i++)
        p->free_ids[i] = n - 1 - i;
    p->n_layers = c->n_layers;
    p->kv_dim = c->kv_dim;
    p->head_dim = c->head_dim;
}

int kv_pool_init(kv_pool *p, const model_config *c, size_t bytes, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    size_t bb = kv_pool_block_bytes(c), n = bytes / bb;
    if (n < 1)
        n = 1;
    if (n > INT32_MAX / KV_BLOCK)
        return util_err(err, errlen, "KV pool of %zu bytes is too large", bytes);
    size_t elems = n * (bb / 2 / sizeof(kv_elem));
    p->k = calloc(elems, sizeof(kv_elem));
    p->v = calloc(elems, sizeof(kv_elem));
    p->free_ids = malloc(n * sizeof(int32_t));
    if (!p->k || !p->v || !p->free_ids) {
        kv_pool_free(p);
        return util_err(err, errlen, "out of memory for a KV pool of %zu MB", (n * bb) >> 20);
    }
    pool_ids_init(p, c, (int32_t)n);
    return 0;
}

void kv_ledger_init(kv_pool *p, const model_config *c, int32_t n_blocks)
{
    assert(n_blocks >= 1 && n_blocks <= INT32_MAX / KV_BLOCK);
    memset(p, 0, sizeof *p);
    p->free_ids = mallocCheck((size_t)n_blocks * sizeof(int32_t));
    pool_ids_init(p, c, n_blocks);
}

void kv_pool_free(kv_pool *p)
{
    free(p->k);
    free(p->v);
    free(p->free_ids);
    free(p->refs);
    memset(p, 0, sizeof *p);
}

int kv_init_paged(kv_cache *kv, kv_pool *p, int32_t cap)
{
    return kv_init_paged_shared(kv, p, cap, NULL, 0);
}

int kv_init_paged_shared(kv_cache *kv, kv_pool *p, int32_t cap, const int32_t *shared, int32_t n_shared)
{
    memset(kv, 0, sizeof *kv);
    int32_t n = kv_blocks_for(cap);
    if (cap <= 0 || n_shared < 0 || n_shared > n || n - n_shared > p->n_free)
        return -1;
    kv->blocks = mallocCheck((size_t)n * sizeof(int32_t));
    for (int32_t i = 0; i < n_shared; i++) {
        kv_block_hold(p, shared[i]);
        kv->blocks[i] = shared[i];
    }
    for (int32_t i = n_shared; i < n; i++) {
        kv->blocks[i] = p->free_ids[--p->n_free];
        assert(p->refs[kv->blocks[i]] == 0);
        p->refs[kv->blocks[i]] = 1;
    }
    kv->pool = p;
    kv->cap = n * KV_BLOCK;
    kv->n_layers = p->n_layers;
    kv->kv_dim = p->kv_dim;
    kv->head_dim = p->head_dim;
    return 0;
}

void kv_truncate(kv_cache *kv, int32_t len)
{
    assert(len >= 0 && len <= kv->len);
    kv->len = len;
}

/* RoPE angles of positions 0..ctx-1: cos and sin of p * scale *
 * base^(-2i/head_dim) / factor_i for the head_dim/2 pairs i (c->rope_scale,
 * c->rope_freq when c->rope_factors). */
static void rope_table(float *cs, float *sn, int32_t ctx, const model_config *c, float base)
{
    int32_t head_dim = c->head_dim, half = head_dim / 2;
    for (int32_t p = 0; p < ctx; p++)
        for (int32_t i = 0; i < half; i++) {
            double ang = p * (double)c->rope_scale * pow((double)base, -2.0 * i / head_dim) /
                         (c->rope_factors ? (double)c->rope_freq[i] : 1.0);
            cs[(size_t)p * half + i] = (float)cos(ang);
            sn[(size_t)p * half + i] = (float)sin(ang);
        }
}

/* One attention task: heads h0..h0+nh-1 of KV head kvh's group for the
 * tokens t0..t0+nt-1 of one sequence (consecutive positions of a chain; a
 * tree token alone). */
struct fwd_attn_task {
    int32_t t0, nt, kvh, h0, nh;
};

void fwd_state_init(fwd_state *s, const model_config *c, int32_t max_tokens, int32_t ctx)
{
    memset(s, 0, sizeof *s);
    size_t T = (size_t)max_tokens;
    s->max_tokens = max_tokens;
    s->x = alignedCheck(T * c->dim * sizeof(float));
    s->xb = alignedCheck(T * c->dim * sizeof(float));
    s->qkv = alignedCheck(T * (c->q_dim + 2 * c->kv_dim) * sizeof(float));
    s->att = alignedCheck(T * c->q_dim * sizeof(float));
    s->hb = alignedCheck(T * 2 * c->hidden_dim * sizeof(float));
    s->score_threads = omp_get_max_threads();
    /* a task's scores: up to FWD_ATTN_TOKENS tokens times a whole group */
    s->score_cap = (size_t)ctx * FWD_ATTN_TOKENS * (c->n_heads / c->n_kv_heads);
    s->scores = alignedCheck((size_t)s->score_threads * s->score_cap * sizeof(float));
    s->row_cap = 2 * ctx;
    s->rows = mallocCheck((size_t)s->score_threads * s->row_cap * sizeof(f16_t *));
    s->attn_tasks = mallocCheck(T * c->n_heads * sizeof(struct fwd_attn_task));
    s->run_cap = ctx / KV_BLOCK + 3 + FWD_TREE_MAX;   /* pool blocks, the scratch's, a partial one,
                                                          a tree token's ancestors */
    s->runs = mallocCheck((size_t)s->score_threads * s->run_cap * sizeof(attn_run));
    int32_t half = c->head_dim / 2;
    s->rope_cap = ctx;
    int32_t maxc = c->hidden_dim > c->dim ? c->hidden_dim : c->dim;
    if (c->q_dim > maxc)
        maxc = c->q_dim;
    /* every product of up to max_tokens goes through the integer kernel */
    s->qscratch = alignedCheck(qmat_scratch_bytes(maxc, max_tokens));
    s->head_row = alignedCheck(((size_t)c->vocab_size + QMAT_ROWS) * sizeof(float));
    s->tok_seq = mallocCheck(T * sizeof(int32_t));
    s->tok_pos = mallocCheck(T * sizeof(int32_t));
    s->tok_slot = mallocCheck(T * sizeof(int32_t));
    s->rope_cos = alignedCheck((size_t)ctx * half * sizeof(float));
    s->rope_sin = alignedCheck((size_t)ctx * half * sizeof(float));
    rope_table(s->rope_cos, s->rope_sin, ctx, c, c->rope_base);
    s->rope_cos_swa = s->rope_cos;
    s->rope_sin_swa = s->rope_sin;
    if (c->swa_window > 0 && c->rope_base_swa != c->rope_base) {
        s->rope_cos_swa = alignedCheck((size_t)ctx * half * sizeof(float));
        s->rope_sin_swa = alignedCheck((size_t)ctx * half * sizeof(float));
        rope_table(s->rope_cos_swa, s->rope_sin_swa, ctx, c, c->rope_base_swa);
    }
}

void fwd_state_free(fwd_state *s)
{
    free(s->x);
    free(s->xb);
    free(s->qkv);
    free(s->att);
    free(s->hb);
    free(s->scores);
    free(s->runs);
    free(s->rows);
    free(s->attn_tasks);
    if (s->rope_cos_swa != s->rope_cos) {
        free(s->rope_cos_swa);
        free(s->rope_sin_swa);
    }
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->tok_seq);
    free(s->tok_pos);
    free(s->tok_slot);
    free(s->qscratch);
    free(s->head_row);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------ */
/* Forward pass                                                              */

/* out = x / rms(x) * w, for T rows of dim. */
static void rmsnorm(float *out, const float *x, const float *w, int32_t T, int32_t dim, float eps)
{
    for (int32_t t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * dim;
        float *ot = out + (size_t)t * dim;
        float ss = 0.0f;
        for (int32_t i = 0; i < dim; i++)
            ss += xt[i] * xt[i];
        float inv = 1.0f / sqrtf(ss / dim + eps);
        for (int32_t i = 0; i < dim; i++)
            ot[i] = xt[i] * inv * w[i];
    }
}

/* The per-token loops of a pass (norms, RoPE and the KV writes, the gated
 * activation) are shared out among the threads from this many tokens on;
 * below it a fork costs more than the work. Each token's arithmetic is its
 * own, so the split changes no bits. */
#define FWD_PAR_TOKENS 8

/* rmsnorm of T token rows, the rows shared out among the threads */
static void rmsnorm_tokens(float *out, const float *x, const float *w, int32_t T, int32_t dim, float eps)
{
    #pragma omp parallel for schedule(static) if (T >= FWD_PAR_TOKENS)
    for (int32_t t = 0; t < T; t++)
        rmsnorm(out + (size_t)t * dim, x + (size_t)t * dim, w, 1, dim, eps);
}

/* Rotate each head's pairs by the position's angles: adjacent pairs
 * (2i, 2i+1) (GGUF "normal" RoPE, llama.cpp's llama), or with neox the
 * pairs (i, i + head_dim/2) (llama.cpp's qwen2). */
static void rope(float *v, int32_t n_heads, int32_t head_dim, const float *cs, const float *sn, int neox)
{
    int32_t half = head_dim / 2;
    int32_t stride = neox ? 1 : 2, other = neox ? half : 1;
    for (int32_t h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * head_dim;
        for (int32_t i = 0; i < half; i++) {
            float *pa = x + (size_t)i * stride, *pb = pa + other;
            float a = *pa, b = *pb;
            *pa = a * cs[i] - b * sn[i];
            *pb = a * sn[i] + b * cs[i];
        }
    }
}

/* Where KV head h of position p of layer l lives for sequence sq: in its
 * cache (one contiguous array, or the pool block holding p), or in its draft
 * scratch for positions >= scratch_base. which: 0 keys, 1 values. *stride:
 * elements from this head's row to the next position's, within the same
 * block (pool: head_dim, the block keeps each head's rows together;
 * contiguous: kv_dim). */
static inline kv_elem *kv_head_row(const fwd_seq *sq, int which, int32_t l, int32_t p, int32_t h, int32_t *stride)
{
    const kv_cache *kv = sq->kv;
    int32_t idx = p;
    if (sq->scratch && p >= sq->scratch_base) {
        kv = sq->scratch;
        idx = p - sq->scratch_base;
    }
    if (kv->pool) {
        const kv_pool *pl = kv->pool;
        kv_elem *base = which ? pl->v : pl->k;
        size_t blk = (size_t)kv->blocks[idx / KV_BLOCK], n_kvh = (size_t)(pl->kv_dim / pl->head_dim);
        *stride = pl->head_dim;
        return base + (((blk * pl->n_layers + l) * n_kvh + h) * KV_BLOCK + idx % KV_BLOCK) * pl->head_dim;
    }
    assert(kv->head_dim > 0 && kv->kv_dim % kv->head_dim == 0);   /* a cache built by hand must say its head size */
    *stride = kv->kv_dim;
    return (which ? kv->v : kv->k) + ((size_t)l * kv->cap + idx) * kv->kv_dim + (size_t)h * kv->head_dim;
}

/* Whether slot p of sq's cache may be written: a draft scratch's, a
 * contiguous cache's, or in a pool block no one else holds (a shared prompt
 * prefix is read-only). For asserts. */
static inline int kv_slot_private(const fwd_seq *sq, int32_t p)
{
    if ((sq->scratch && p >= sq->scratch_base) || !sq->kv->pool)
        return 1;
    return sq->kv->pool->refs[sq->kv->blocks[p / KV_BLOCK]] == 1;
}

/* Positions first..n-1 of KV head h of layer l of sq as runs of consecutive
 * rows (a pool block, the contiguous cache, the draft scratch). Returns the
 * number of runs. */
static int32_t kv_runs(const fwd_seq *sq, int32_t l, int32_t first, int32_t n, int32_t h, attn_run *runs)
{
    int32_t nr = 0;
    for (int32_t p = first; p < n;) {
        const kv_cache *kv = sq->kv;
        int32_t idx = p, end = n;
        if (sq->scratch && p >= sq->scratch_base) {
            kv = sq->scratch;
            idx = p - sq->scratch_base;
        } else if (sq->scratch && end > sq->scratch_base) {
            end = sq->scratch_base;
        }
        int32_t len = end - p;
        if (kv->pool && len > KV_BLOCK - idx % KV_BLOCK)
            len = KV_BLOCK - idx % KV_BLOCK;
        int32_t stride;
        const kv_elem *k = kv_head_row(sq, 0, l, p, h, &stride), *v = kv_head_row(sq, 1, l, p, h, &stride);
        runs[nr++] = (attn_run){k, v, len, stride};
        p += len;
    }
    return nr;
}

/* The keys of tree token j of sq (fwd_seq.parent) from position first on:
 * the cache's positions before sq->pos, then j's ancestors and j itself in
 * position order, one row each. The same keys in the same order as the
 * chain of those tokens, so the same arithmetic (attn.h). */
static int32_t tree_runs(const fwd_seq *sq, int32_t l, int32_t first, int32_t j, int32_t h, attn_run *runs)
{
    int32_t path[FWD_TREE_MAX], depth = 0;
    for (int32_t a = j; a >= 0; a = sq->parent[a])
        path[depth++] = a;   /* j, its parent, ..., the root: positions pos + depth - 1 down to pos */
    int32_t nr = first < sq->pos ? kv_runs(sq, l, first, sq->pos, h, runs) : 0;
    for (int32_t d = 0; d < depth; d++) {
        if (sq->pos + d < first)
            continue;   /* outside a local layer's window */
        int32_t slot = sq->pos + path[depth - 1 - d], stride;
        const kv_elem *k = kv_head_row(sq, 0, l, slot, h, &stride), *v = kv_head_row(sq, 1, l, slot, h, &stride);
        runs[nr++] = (attn_run){k, v, 1, stride};
    }
    return nr;
}

void kv_copy_slot(kv_cache *kv, int32_t from, int32_t to)
{
    assert(from >= 0 && to >= 0 && from < kv->cap && to < kv->cap && kv->head_dim > 0);
    if (from == to)
        return;
    const fwd_seq sq = {.kv = kv};
    assert(kv_slot_private(&sq, to));
    for (int32_t l = 0; l < kv->n_layers; l++)
        for (int32_t h = 0; h < kv->kv_dim / kv->head_dim; h++)
            for (int which = 0; which < 2; which++) {
                int32_t stride;
                const kv_elem *src = kv_head_row(&sq, which, l, from, h, &stride);
                memcpy(kv_head_row(&sq, which, l, to, h, &stride), src, (size_t)kv->head_dim * sizeof(kv_elem));
            }
}

int32_t model_argmax(const float *x, int32_t n)
{
    int32_t best = 0, i = 1;
#ifdef __AVX512F__
    /* the largest value by 16-lane maxima, then its first index; a NaN
     * anywhere (which max would not see the scalar way) takes the loop */
    if (n >= 32) {
        __m512 m = _mm512_loadu_ps(x);
        __mmask16 nan = _mm512_cmp_ps_mask(m, m, _CMP_UNORD_Q);
        int32_t j = 16;
        for (; j + 16 <= n; j += 16) {
            __m512 v = _mm512_loadu_ps(x + j);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            m = _mm512_max_ps(m, v);
        }
        if (!nan) {
            float mx = _mm512_reduce_max_ps(m);
            for (; j < n; j++)
                mx = x[j] > mx ? x[j] : mx;
            for (best = 0; !(x[best] == mx); best++)
                ;
            return best;
        }
    }
#endif
    for (; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Tokens from t on that one task takes: up to per consecutive tokens of
 * t's sequence, 1 for a tree token (its keys are its own ancestors). */
static int32_t attn_task_len(const fwd_state *s, const fwd_seq *seqs, int32_t T, int32_t t, int32_t per)
{
    int32_t len = 1;
    while (t + len < T && len < per && !seqs[s->tok_seq[t]].parent && s->tok_seq[t + len] == s->tok_seq[t])
        len++;
    return len;
}

/* Split the batch's attention into tasks (s->attn_tasks), once per call.
 * A chain's tokens go FWD_ATTN_TOKENS to a task, which reads each key once
 * for all of them; fewer while that leaves under four tasks per thread. A
 * group's heads split only while there are fewer tasks than threads: they
 * share each key row's reads, which is worth more than the balance (one
 * token at 2048 positions, SmolLM2, 2 threads: 10.5 -> 9.9 ms a step).
 * No split changes any query's arithmetic (attn.h). */
static void attn_plan(const model_config *c, fwd_state *s, const fwd_seq *seqs, int32_t T)
{
    int32_t group = c->n_heads / c->n_kv_heads, want = 4 * s->score_threads;
    int32_t per = FWD_ATTN_TOKENS, n_units = 0;
    for (; per >= 1; per--) {   /* tokens per task: the most that leaves every thread work */
        n_units = 0;
        for (int32_t t = 0; t < T; t += attn_task_len(s, seqs, T, t, per))
            n_units++;
        if (n_units * c->n_kv_heads >= want)
            break;
    }
    if (per < 1)
        per = 1;
    int32_t split = (s->score_threads + n_units * c->n_kv_heads - 1) / (n_units * c->n_kv_heads);
    split = split > group ? group : split < 1 ? 1 : split;
    int32_t hpt = (group + split - 1) / split;   /* heads per task */
    int32_t n = 0;
    for (int32_t t = 0, len; t < T; t += len) {
        len = attn_task_len(s, seqs, T, t, per);
        for (int32_t kvh = 0; kvh < c->n_kv_heads; kvh++)
            for (int32_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += hpt) {
                int32_t nh = (kvh + 1) * group - h0 < hpt ? (kvh + 1) * group - h0 : hpt;
                s->attn_tasks[n++] = (struct fwd_attn_task){t, len, kvh, h0, nh};
            }
    }
    assert(n <= s->max_tokens * c->n_heads);
    s->n_attn_tasks = n;
}

/* Attention for every token of the batch, one attn_block call per task of
 * attn_plan. qkv rows are (q | k | v); K/V of this block were already
 * written to the caches. A local layer's query at position p sees the keys
 * p - swa_window < k <= p (llama.cpp's standard window). */
static void attention(const model *m, fwd_state *s, const fwd_seq *seqs, int32_t l)
{
    const model_config *c = &m->config;
    int32_t hd = c->head_dim, qkv_w = c->q_dim + 2 * c->kv_dim, window = model_layer_local(c, l) ? c->swa_window : 0;
    float scale = 1.0f / sqrtf((float)hd);
    #pragma omp parallel for schedule(dynamic, 1) num_threads(s->score_threads)
    for (int32_t k = 0; k < s->n_attn_tasks; k++) {
        const struct fwd_attn_task *a = &s->attn_tasks[k];
        const fwd_seq *sq = &seqs[s->tok_seq[a->t0]];
        /* token i sees positions lo[i]..hi[i]-1 counted from the task's first key */
        int32_t lo[FWD_ATTN_TOKENS], hi[FWD_ATTN_TOKENS];
        int32_t end0 = s->tok_pos[a->t0] + 1, first = window && end0 > window ? end0 - window : 0;
        for (int32_t i = 0; i < a->nt; i++) {
            int32_t end = s->tok_pos[a->t0 + i] + 1;
            lo[i] = (window && end > window ? end - window : 0) - first;
            hi[i] = end - first;
        }
        int th = omp_get_thread_num();
        attn_run *runs = s->runs + (size_t)th * s->run_cap;
        int32_t nr = sq->parent ? tree_runs(sq, l, first, s->tok_slot[a->t0] - sq->pos, a->kvh, runs)
                                : kv_runs(sq, l, first, first + hi[a->nt - 1], a->kvh, runs);
        assert(nr <= s->run_cap && hi[a->nt - 1] <= s->row_cap / 2);
        attn_queries qs = {.q = s->qkv + (size_t)a->t0 * qkv_w + (size_t)a->h0 * hd,
                           .out = s->att + (size_t)a->t0 * c->q_dim + (size_t)a->h0 * hd,
                           .q_stride = qkv_w, .out_stride = c->q_dim, .nt = a->nt, .nh = a->nh, .lo = lo, .hi = hi};
        attn_block(&qs, hd, runs, nr, hi[a->nt - 1], scale, s->scores + (size_t)th * s->score_cap,
                   s->rows + (size_t)th * s->row_cap);
    }
}

/* x += post_norm(the sublayer's output in xb), or x += xb without one. */
static void residual_add(const model_config *c, fwd_state *s, int32_t T, const float *post_norm)
{
    if (post_norm)
        rmsnorm_tokens(s->xb, s->xb, post_norm, T, c->dim, c->norm_eps);
    for (size_t i = 0; i < (size_t)T * c->dim; i++)
        s->x[i] += s->xb[i];
}

static void attn_sublayer(const model *m, fwd_state *s, const fwd_seq *seqs, int32_t T,
                          int32_t l)
{
    const model_config *c = &m->config;
    const layer_weights *L = &m->w.layers[l];
    int32_t qkv_w = c->q_dim + 2 * c->kv_dim, half = c->head_dim / 2;
    int local = model_layer_local(c, l);
    const float *rcos = local ? s->rope_cos_swa : s->rope_cos, *rsin = local ? s->rope_sin_swa : s->rope_sin;
    rmsnorm_tokens(s->xb, s->x, L->attn_norm, T, c->dim, c->norm_eps);
    qmat_matmul(&L->wqkv, s->xb, c->dim, T, s->qkv, qkv_w, s->qscratch);
    #pragma omp parallel for schedule(static) if (T >= FWD_PAR_TOKENS)
    for (int32_t t = 0; t < T; t++) {
        float *q = s->qkv + (size_t)t * qkv_w, *k = q + c->q_dim;
        if (L->bqkv)
            for (int32_t i = 0; i < qkv_w; i++)
                q[i] += L->bqkv[i];
        if (L->q_norm) {   /* per head, before RoPE */
            rmsnorm(q, q, L->q_norm, c->n_heads, c->head_dim, c->norm_eps);
            rmsnorm(k, k, L->k_norm, c->n_kv_heads, c->head_dim, c->norm_eps);
        }
        const float *cs = rcos + (size_t)s->tok_pos[t] * half;
        const float *sn = rsin + (size_t)s->tok_pos[t] * half;
        rope(q, c->n_heads, c->head_dim, cs, sn, c->rope_neox);
        rope(k, c->n_kv_heads, c->head_dim, cs, sn, c->rope_neox);
        const fwd_seq *sq = &seqs[s->tok_seq[t]];
        assert(kv_slot_private(sq, s->tok_slot[t]));
        for (int32_t h = 0; h < c->n_kv_heads; h++) {
            int32_t stride;
            kv_elem *kd = kv_head_row(sq, 0, l, s->tok_slot[t], h, &stride);
            kv_elem *vd = kv_head_row(sq, 1, l, s->tok_slot[t], h, &stride);
            const float *kq = k + (size_t)h * c->head_dim, *vq = kq + c->kv_dim;
            for (int32_t i = 0; i < c->head_dim; i++) {
                kd[i] = f16_from_f32(kq[i]);
                vd[i] = f16_from_f32(vq[i]);
            }
        }
    }
    attention(m, s, seqs, l);
    qmat_matmul(&L->wo, s->att, c->q_dim, T, s->xb, c->dim, s->qscratch);
    residual_add(c, s, T, L->attn_post_norm);
}

static void mlp_sublayer(const model *m, fwd_state *s, int32_t T, int32_t l)
{
    const model_config *c = &m->config;
    const layer_weights *L = &m->w.layers[l];
    int32_t H = c->hidden_dim;
    rmsnorm_tokens(s->xb, s->x, L->ffn_norm, T, c->dim, c->norm_eps);
    qmat_matmul(&L->w_gate_up, s->xb, c->dim, T, s->hb, 2 * H, s->qscratch);
    int act = c->mlp_act == MODEL_MLP_GEGLU ? ACT_GELU_TANH : ACT_SILU;
    #pragma omp parallel for schedule(static) if (T >= FWD_PAR_TOKENS)
    for (int32_t t = 0; t < T; t++) {
        float *g = s->hb + (size_t)t * 2 * H;
        act_gated(act, g, g + H, H);
    }
    qmat_matmul(&L->w_down, s->hb, 2 * H, T, s->xb, c->dim, s->qscratch);
    residual_add(c, s, T, L->ffn_post_norm);
}

/* logits (n_out, width) = xb (n_out, dim) . head^T, dropping the padding
 * rows of the vocabulary (head->rows >= width). */
static void logits_project(const qmat *head, fwd_state *s, int32_t n_out, int32_t dim, int32_t width,
                           float *logits)
{
    if (head->rows == width) {
        qmat_matmul(head, s->xb, dim, n_out, logits, width, s->qscratch);
        return;
    }
    for (int32_t t = 0; t < n_out; t++) {   /* padded vocabulary: via a full-width row */
        qmat_matmul(head, s->xb + (size_t)t * dim, dim, 1, s->head_row, head->rows, s->qscratch);
        memcpy(logits + (size_t)t * width, s->head_row, (size_t)width * sizeof(float));
    }
}

static size_t qmat_bytes_of(const qmat *W)
{
    return qmat_q_bytes_fmt(W->rows, W->cols, W->fmt) + 2 * qmat_dm_bytes(W->rows, W->cols);
}

size_t model_step_bytes(const model *m, const layer_mask *mask, const qmat *head)
{
    const model_config *c = &m->config;
    size_t vec = (size_t)c->dim * sizeof(float), bias = (size_t)(c->q_dim + 2 * c->kv_dim) * sizeof(float);
    size_t norms = (size_t)(c->post_norms ? 2 : 1) * vec, qk = (size_t)(c->qk_norm ? 2 * c->head_dim : 0) * sizeof(float);
    size_t n = qmat_bytes_of(head ? head : &m->w.output) + vec;
    for (int32_t l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m->w.layers[l];
        if (!mask || mask->attn[l])
            n += norms + qk + qmat_bytes_of(&L->wqkv) + qmat_bytes_of(&L->wo) + (L->bqkv ? bias : 0);
        if (!mask || mask->mlp[l])
            n += norms + qmat_bytes_of(&L->w_gate_up) + qmat_bytes_of(&L->w_down);
    }
    return n;
}

/* Validate the batch and flatten it into per-token (seq, pos). */
int model_check_block(const model_config *c, int i, const int32_t *tokens, int32_t n_tokens, int32_t pos,
                      int32_t logits_from, int32_t kv_cap, int32_t scratch_cap, int32_t scratch_base,
                      int32_t ctx_cap, char *err, size_t errlen)
{
    if (n_tokens <= 0 || pos < 0 || logits_from < 0 || logits_from > n_tokens)
        return util_err(err, errlen, "batch entry %d: bad block (n=%d pos=%d)", i, n_tokens, pos);
    int32_t end = pos + n_tokens;
    int32_t cap = scratch_cap >= 0 ? scratch_base + scratch_cap : kv_cap;
    if (scratch_cap >= 0 && scratch_base > kv_cap)
        return util_err(err, errlen, "batch entry %d: scratch base past the cache", i);
    if (end > cap || end > ctx_cap)
        return util_err(err, errlen, "context full: positions up to %d requested, the cache holds %d",
                        end, cap < ctx_cap ? cap : ctx_cap);
    for (int32_t j = 0; j < n_tokens; j++)
        if (tokens[j] < 0 || tokens[j] >= c->vocab_size)
            return util_err(err, errlen, "token id %d out of range", tokens[j]);
    return 0;
}

/* A tree block's shape (fwd_seq.parent): at most FWD_TREE_MAX tokens, the
 * root first, every other token after its parent; no draft scratch. */
static int tree_check(const fwd_seq *sq, int i, char *err, size_t errlen)
{
    if (sq->scratch || sq->n_tokens > FWD_TREE_MAX || sq->parent[0] != -1)
        return util_err(err, errlen, "batch entry %d: bad tree block", i);
    for (int32_t j = 1; j < sq->n_tokens; j++)
        if (sq->parent[j] < 0 || sq->parent[j] >= j)
            return util_err(err, errlen, "batch entry %d: tree token %d has parent %d", i, j, sq->parent[j]);
    return 0;
}

/* Validate a batch and fill the per-token sequence and position tables. */
static int batch_check(const model *m, fwd_state *s, const fwd_seq *seqs, int n_seqs,
                       int32_t *T_out, char *err, size_t errlen)
{
    int32_t T = 0;
    for (int i = 0; i < n_seqs; i++) {
        const fwd_seq *sq = &seqs[i];
        if (model_check_block(&m->config, i, sq->tokens, sq->n_tokens, sq->pos, sq->logits_from, sq->kv->cap,
                              sq->scratch ? sq->scratch->cap : -1, sq->scratch_base, s->rope_cap, err, errlen) != 0)
            return -1;
        if (T + sq->n_tokens > s->max_tokens)
            return util_err(err, errlen, "batch of more than %d tokens", s->max_tokens);
        if (sq->parent && tree_check(sq, i, err, errlen) != 0)
            return -1;
        for (int32_t j = 0; j < sq->n_tokens; j++) {
            int32_t depth = 0;
            for (int32_t a = j; sq->parent && sq->parent[a] >= 0; a = sq->parent[a])
                depth++;
            s->tok_seq[T + j] = i;
            s->tok_pos[T + j] = sq->pos + (sq->parent ? depth : j);
            s->tok_slot[T + j] = sq->pos + j;
        }
        T += sq->n_tokens;
    }
    *T_out = T;
    return 0;
}

int model_forward(const model *m, fwd_state *s, fwd_seq *seqs, int n_seqs,
                  const layer_mask *mask, const qmat *head, float *logits, char *err, size_t errlen)
{
    const model_config *c = &m->config;
    int32_t T = 0;
    if (batch_check(m, s, seqs, n_seqs, &T, err, errlen) != 0)
        return -1;
    attn_plan(c, s, seqs, T);
    float embd_scale = c->embd_scale ? sqrtf((float)c->dim) : 1.0f;
    for (int32_t t = 0; t < T; t++) {
        const fwd_seq *sq = &seqs[s->tok_seq[t]];
        float *xt = s->x + (size_t)t * c->dim;
        qmat_dequant_row(&m->w.tok_embd, sq->tokens[s->tok_slot[t] - sq->pos], xt);
        if (c->embd_scale)
            for (int32_t i = 0; i < c->dim; i++)
                xt[i] *= embd_scale;
    }
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (!mask || mask->attn[l])
            attn_sublayer(m, s, seqs, T, l);
        if (!mask || mask->mlp[l])
            mlp_sublayer(m, s, T, l);
    }
    /* Gather the rows that want logits, normalize, project. */
    int32_t n_out = 0;
    for (int i = 0, t0 = 0; i < n_seqs; t0 += seqs[i].n_tokens, i++)
        for (int32_t j = seqs[i].logits_from; j < seqs[i].n_tokens; j++, n_out++)
            rmsnorm(s->xb + (size_t)n_out * c->dim, s->x + (size_t)(t0 + j) * c->dim,
                    m->w.out_norm, 1, c->dim, c->norm_eps);
    if (!head)
        head = &m->w.output;
    int32_t width = head == &m->w.output ? c->vocab_size : head->rows;
    logits_project(head, s, n_out, c->dim, width, logits);
    if (c->final_softcap > 0.0f)
        for (size_t i = 0; i < (size_t)n_out * width; i++)
            logits[i] = c->final_softcap * tanhf(logits[i] / c->final_softcap);
    return 0;
}
