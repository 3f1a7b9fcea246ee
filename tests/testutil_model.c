/*
 * testutil_model.c - tiny random Llama GGUF models and a naive float
 * reference forward pass (see testutil_model.h).
 */
#include "testutil_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "testutil_gguf.h"
#include "text/tokenizer.h"

/* ------------------------------------------------------------------ rng */

uint64_t tmodel_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float tmodel_rngf(uint64_t *s)
{
    return (float)(tmodel_rng(s) >> 40) * 0x1p-24f;
}

static void *tm_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "testutil_model: out of memory\n");
        abort();
    }
    return p;
}

/* ----------------------------------------------------------------- spec */

tmodel_spec tmodel_default(uint32_t wtype)
{
    tmodel_spec s;
    memset(&s, 0, sizeof s);
    int kquant = wtype == GGUF_TT_Q4_K || wtype == GGUF_TT_Q6_K;
    s.dim = kquant ? 256 : 64;
    s.hidden = kquant ? 512 : 128;
    s.n_layers = 2;
    s.n_heads = 4;
    s.n_kv_heads = 2;
    s.vocab = 256;
    s.ctx = 128;
    s.rope_base = 10000.0f;
    s.norm_eps = 1e-5f;
    s.wtype = wtype;
    s.tied = 0;
    s.seed = 12345;
    s.nonfinite_value = NAN;
    return s;
}

/* ------------------------------------------------------------- writing */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Byte offsets of the f16 scale fields in one block of a quantized type
 * (n of them); 0 for a type without an entry. */
static int scale_fields(uint32_t type, int off[2])
{
    switch (type) {
    case GGUF_TT_Q5_0: case GGUF_TT_IQ4_NL: case GGUF_TT_IQ4_XS:
        off[0] = 0;
        return 1;
    case GGUF_TT_Q5_1: case GGUF_TT_Q5_K:
        off[0] = 0, off[1] = 2;
        return 2;
    case GGUF_TT_Q2_K:
        off[0] = 80, off[1] = 82;
        return 2;
    case GGUF_TT_Q3_K:
        off[0] = 108;
        return 1;
    default:
        return 0;
    }
}

/* Random valid blocks of a quantized type with every f16 scale field
 * multiplied by one power of two, so that the tensor's rms is within a
 * factor sqrt(2) of `rms` (a power of two: the product is exact, and a
 * last-bit difference in the measured rms does not change the file). */
static void add_random_blocks(tgguf *g, const tmodel_spec *sp, const char *name, const uint64_t ne[2],
                              uint64_t n, float rms, uint64_t *rng)
{
    uint32_t be, bb;
    int off[2], nf = scale_fields(sp->wtype, off);
    if (gguf_type_block(sp->wtype, &be, &bb) != 0 || nf == 0 || n % be != 0) {
        fprintf(stderr, "testutil_model: type %u not supported\n", sp->wtype);
        abort();
    }
    size_t nb = tgguf_type_nbytes(sp->wtype, n);
    uint8_t *buf = tm_xmalloc(nb);
    float *y = tm_xmalloc(n * sizeof(float));
    tgguf_random_blocks(sp->wtype, tmodel_rng(rng), n, buf);
    gguf_dequantize(sp->wtype, buf, y, n);
    double ss = 0.0;
    for (uint64_t i = 0; i < n; i++)
        ss += (double)y[i] * y[i];
    float k = ldexpf(1.0f, (int)lround(log2(rms / sqrt(ss / (double)n))));
    for (uint64_t b = 0; b < n / be; b++)
        for (int f = 0; f < nf; f++) {
            uint8_t *p = buf + b * bb + off[f];
            put16(p, gguf_f32_to_f16(gguf_f16_to_f32((uint16_t)(p[0] | p[1] << 8)) * k));
        }
    tgguf_tensor(g, name, sp->wtype, 2, ne, buf, nb);
    free(y);
    free(buf);
}

/* A matrix (rows, cols) of type `type` with rms gain/sqrt(cols). */
static void add_matrix(tgguf *g, const tmodel_spec *sp, const char *name, int64_t rows,
                       int64_t cols, float gain, uint64_t *rng)
{
    if (sp->omit && strcmp(sp->omit, name) == 0)
        return;
    uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
    if (sp->reshape && strcmp(sp->reshape, name) == 0)
        ne[1] += 16;
    uint64_t n = ne[0] * ne[1];
    float rms = gain / sqrtf((float)cols);
    if (sp->wtype == GGUF_TT_Q4_K || sp->wtype == GGUF_TT_Q6_K) {
        size_t nb = tgguf_type_nbytes(sp->wtype, n);
        uint8_t *buf = tm_xmalloc(nb);
        tgguf_random_blocks(sp->wtype, tmodel_rng(rng), n, buf);
        size_t nblk = (size_t)(n / 256);
        for (size_t b = 0; b < nblk; b++) {
            float u = 0.5f + tmodel_rngf(rng);
            if (sp->wtype == GGUF_TT_Q4_K) {
                /* w = d*sc*q - dmin*m; sc, m in 0..63, q in 0..15:
                 * rms(d*sc*q) ~ 320 d, mean ~ 236 d, mean(dmin*m) ~ 31.5 dmin */
                float d = rms / 320.0f * u;
                put16(buf + b * 144, gguf_f32_to_f16(d));
                put16(buf + b * 144 + 2, gguf_f32_to_f16(d * 7.5f));
            } else {
                /* w = d * sc * (q - 32); sc int8, q in 0..63: rms ~ 1370 d */
                float d = rms / 1370.0f * u;
                put16(buf + b * 210 + 208, gguf_f32_to_f16(d));
            }
        }
        tgguf_tensor(g, name, sp->wtype, 2, ne, buf, nb);
        free(buf);
        return;
    }
    if (!(sp->wtype <= GGUF_TT_Q4_1 || sp->wtype == GGUF_TT_Q8_0 || sp->wtype == GGUF_TT_BF16)) {
        add_random_blocks(g, sp, name, ne, n, rms, rng);
        return;
    }
    float *v = tm_xmalloc(n * sizeof(float));
    float a = rms * sqrtf(3.0f);
    for (uint64_t i = 0; i < n; i++)
        v[i] = a * (2.0f * tmodel_rngf(rng) - 1.0f);
    tgguf_tensor_f32(g, name, sp->wtype, 2, ne, v);
    free(v);
}

static void add_norm(tgguf *g, const tmodel_spec *sp, const char *name, int64_t n, uint64_t *rng)
{
    if (sp->omit && strcmp(sp->omit, name) == 0)
        return;
    uint64_t ne[1] = {(uint64_t)n};
    if (sp->reshape && strcmp(sp->reshape, name) == 0)
        ne[0] += 16;
    float *v = tm_xmalloc(ne[0] * sizeof(float));
    for (uint64_t i = 0; i < ne[0]; i++)
        v[i] = 0.8f + 0.4f * tmodel_rngf(rng);
    if (sp->nonfinite && strcmp(sp->nonfinite, name) == 0)
        v[ne[0] / 2] = sp->nonfinite_value;
    tgguf_tensor_f32(g, name, GGUF_TT_F32, 1, ne, v);
    free(v);
}

/* UTF-8 encode cp into out; returns the length. */
static int utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Merges (in the byte-mapped alphabet: \xc4\xa0 is the space) that make a
 * pre-tokenizer's splits visible in the ids: digit runs, a space and a
 * word, a contraction, newlines. Merge i makes token 256 + i. */
static const char *const tmodel_merges[][2] = {
    {"1", "2"}, {"12", "3"}, {"4", "5"}, {"45", "6"}, {"7", "8"}, {"78", "9"},
    {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"'", "s"}, {"\xc4\x8a", "\xc4\x8a"},
    {"\xc4\xa0", "\xc4\xa0"}, {"c", "a"}, {"ca", "t"},
};

/* gpt2-style byte vocabulary (bytes_to_unicode), then "<extra_i>" tokens;
 * with pre set, ids 256.. are tmodel_merges' tokens and the merges are
 * written. */
static void add_tokenizer(tgguf *g, int32_t vocab, const char *pre)
{
    char **toks = tm_xmalloc((size_t)vocab * sizeof(char *));
    int32_t *types = tm_xmalloc((size_t)vocab * sizeof(int32_t));
    uint32_t extra = 0;
    for (int32_t i = 0; i < vocab; i++) {
        toks[i] = tm_xmalloc(24);
        types[i] = 1;
        if (i < 256) {
            int printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
            uint32_t cp = printable ? (uint32_t)i : 256 + extra++;
            int len = utf8_put(cp, toks[i]);
            toks[i][len] = 0;
        } else if (pre && (size_t)(i - 256) < sizeof tmodel_merges / sizeof *tmodel_merges) {
            snprintf(toks[i], 24, "%s%s", tmodel_merges[i - 256][0], tmodel_merges[i - 256][1]);
        } else {
            snprintf(toks[i], 24, "<extra_%d>", i);
            types[i] = 3;
        }
    }
    size_t n_merges = pre ? sizeof tmodel_merges / sizeof *tmodel_merges : 0;
    char merges[sizeof tmodel_merges / sizeof *tmodel_merges][24];
    const char *mp[sizeof tmodel_merges / sizeof *tmodel_merges];
    for (size_t i = 0; i < n_merges; i++) {
        snprintf(merges[i], sizeof merges[i], "%s %s", tmodel_merges[i][0], tmodel_merges[i][1]);
        mp[i] = merges[i];
    }
    tgguf_kv_str(g, "tokenizer.ggml.model", "gpt2");
    tgguf_kv_str(g, "tokenizer.ggml.pre", pre ? pre : "default");
    tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)vocab);
    tgguf_kv_arr_i32(g, "tokenizer.ggml.token_type", types, (size_t)vocab);
    tgguf_kv_arr_str(g, "tokenizer.ggml.merges", n_merges ? mp : NULL, n_merges);
    for (int32_t i = 0; i < vocab; i++)
        free(toks[i]);
    free(toks);
    free(types);
}

static void kv_u32_unless(tgguf *g, const tmodel_spec *sp, const char *key, uint32_t v)
{
    if (sp->omit_key && strcmp(sp->omit_key, key) == 0)
        return;
    tgguf_kv_u32(g, key, v);
}

int tmodel_write(const tmodel_spec *sp, const char *path)
{
    uint64_t rng = sp->seed;
    tgguf *g = tgguf_new();
    if (!(sp->omit_key && strcmp(sp->omit_key, "general.architecture") == 0))
        tgguf_kv_str(g, "general.architecture", sp->arch ? sp->arch : "llama");
    tgguf_kv_str(g, "general.name", "tiny-random-llama");
    const char *a = sp->arch ? sp->arch : "llama";
    char key[128];
#define KEY(s) (snprintf(key, sizeof key, "%s.%s", a, s), key)
    kv_u32_unless(g, sp, KEY("block_count"),
                  sp->meta_layers_set ? (uint32_t)sp->meta_layers : (uint32_t)sp->n_layers);
    kv_u32_unless(g, sp, KEY("context_length"), (uint32_t)sp->ctx);
    kv_u32_unless(g, sp, KEY("embedding_length"), (uint32_t)sp->dim);
    kv_u32_unless(g, sp, KEY("feed_forward_length"), (uint32_t)sp->hidden);
    kv_u32_unless(g, sp, KEY("attention.head_count"),
                  sp->meta_heads_set ? (uint32_t)sp->meta_heads : (uint32_t)sp->n_heads);
    kv_u32_unless(g, sp, KEY("attention.head_count_kv"),
                  sp->meta_kv_heads_set ? (uint32_t)sp->meta_kv_heads : (uint32_t)sp->n_kv_heads);
    kv_u32_unless(g, sp, KEY("vocab_size"), (uint32_t)sp->vocab);
    int32_t head_dim = sp->head_dim ? sp->head_dim : sp->dim / sp->n_heads;
    kv_u32_unless(g, sp, KEY("rope.dimension_count"), (uint32_t)head_dim);
    if (sp->head_dim) {
        tgguf_kv_u32(g, KEY("attention.key_length"), (uint32_t)sp->head_dim);
        tgguf_kv_u32(g, KEY("attention.value_length"), (uint32_t)sp->head_dim);
    }
    if (sp->swa_window)
        tgguf_kv_u32(g, KEY("attention.sliding_window"), (uint32_t)sp->swa_window);
    if (sp->rope_linear > 0.0f) {
        tgguf_kv_str(g, KEY("rope.scaling.type"), "linear");
        tgguf_kv_f32(g, KEY("rope.scaling.factor"), sp->rope_linear);
    }
    tgguf_kv_f32(g, KEY("rope.freq_base"), sp->rope_base);
    tgguf_kv_f32(g, KEY("attention.layer_norm_rms_epsilon"), sp->norm_eps);
#undef KEY
    add_tokenizer(g, sp->vocab, sp->pre);

    int32_t kv_dim = sp->n_kv_heads * head_dim, q_dim = sp->n_heads * head_dim;
    add_matrix(g, sp, "token_embd.weight", sp->vocab, sp->dim, 4.0f, &rng);
    add_norm(g, sp, "output_norm.weight", sp->dim, &rng);
    if (sp->rope_freqs) {   /* factors 1 .. 8 over the pairs, as Llama 3.1's low frequencies */
        uint64_t ne[1] = {(uint64_t)head_dim / 2};
        float f[128];
        for (int32_t i = 0; i < head_dim / 2; i++)
            f[i] = 1.0f + 7.0f * (float)i / (float)(head_dim / 2);
        tgguf_tensor_f32(g, "rope_freqs.weight", GGUF_TT_F32, 1, ne, f);
    }
    if (!sp->tied)
        add_matrix(g, sp, "output.weight", sp->vocab, sp->dim, 4.0f, &rng);
    for (int32_t l = 0; l < sp->n_layers; l++) {
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        add_norm(g, sp, NAME("attn_norm.weight"), sp->dim, &rng);
        if (sp->fused) {
            add_matrix(g, sp, NAME("attn_qkv.weight"), q_dim + 2 * kv_dim, sp->dim, 1.0f, &rng);
        } else {
            add_matrix(g, sp, NAME("attn_q.weight"), q_dim, sp->dim, 1.0f, &rng);
            add_matrix(g, sp, NAME("attn_k.weight"), kv_dim, sp->dim, 1.0f, &rng);
            add_matrix(g, sp, NAME("attn_v.weight"), kv_dim, sp->dim, 1.0f, &rng);
        }
        add_matrix(g, sp, NAME("attn_output.weight"), sp->dim, q_dim, 1.0f, &rng);
        add_norm(g, sp, NAME("ffn_norm.weight"), sp->dim, &rng);
        if (sp->fused) {
            add_matrix(g, sp, NAME("ffn_up.weight"), 2 * sp->hidden, sp->dim, 1.0f, &rng);
        } else {
            add_matrix(g, sp, NAME("ffn_gate.weight"), sp->hidden, sp->dim, 1.0f, &rng);
            add_matrix(g, sp, NAME("ffn_up.weight"), sp->hidden, sp->dim, 1.0f, &rng);
        }
        add_matrix(g, sp, NAME("ffn_down.weight"), sp->dim, sp->hidden, 1.0f, &rng);
        if (sp->qk_norm) {
            add_norm(g, sp, NAME("attn_q_norm.weight"), head_dim, &rng);
            add_norm(g, sp, NAME("attn_k_norm.weight"), head_dim, &rng);
        }
        if (sp->post_norms) {
            add_norm(g, sp, NAME("post_attention_norm.weight"), sp->dim, &rng);
            add_norm(g, sp, NAME("post_ffw_norm.weight"), sp->dim, &rng);
        }
#undef NAME
    }
    int rc = tgguf_write(g, path);
    tgguf_free(g);
    return rc;
}

int tmodel_write_temp(const tmodel_spec *spec, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "/tmp/selfspec_tmodel_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    close(fd);
    if (tmodel_write(spec, path) != 0) {
        unlink(path);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ reference */

static float *load_tensor(const gguf_file *f, const char *name, uint64_t ne0, uint64_t ne1,
                          char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        snprintf(err, errlen, "reference: no tensor '%s'", name);
        return NULL;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->n_elements != ne0 * ne1) {
        snprintf(err, errlen, "reference: tensor '%s' has an unexpected shape", name);
        return NULL;
    }
    float *v = tm_xmalloc(t->n_elements * sizeof(float));
    if (gguf_dequantize(t->type, t->data, v, t->n_elements) != 0) {
        snprintf(err, errlen, "reference: cannot dequantize '%s'", name);
        free(v);
        return NULL;
    }
    return v;
}

static int meta_u32(const gguf_file *f, const char *key, int32_t *out, char *err, size_t errlen)
{
    uint32_t v;
    if (gguf_get_u32(f, key, &v) != 0) {
        snprintf(err, errlen, "reference: no '%s'", key);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

int tref_load(tref_model *r, const char *path, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, errlen) != 0)
        return -1;
    int rc = -1;
    if (meta_u32(f, "llama.block_count", &r->n_layers, err, errlen) ||
        meta_u32(f, "llama.embedding_length", &r->dim, err, errlen) ||
        meta_u32(f, "llama.feed_forward_length", &r->hidden, err, errlen) ||
        meta_u32(f, "llama.attention.head_count", &r->n_heads, err, errlen) ||
        meta_u32(f, "llama.attention.head_count_kv", &r->n_kv_heads, err, errlen))
        goto out;
    if (gguf_get_f32(f, "llama.rope.freq_base", &r->rope_base) != 0)
        r->rope_base = 10000.0f;
    if (gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &r->norm_eps) != 0)
        r->norm_eps = 1e-5f;
    r->head_dim = r->dim / r->n_heads;
    r->kv_dim = r->n_kv_heads * r->head_dim;
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb) {
        snprintf(err, errlen, "reference: no token_embd.weight");
        goto out;
    }
    r->vocab = (int32_t)emb->ne[1];
    uint64_t D = (uint64_t)r->dim, H = (uint64_t)r->hidden, KV = (uint64_t)r->kv_dim;
    r->layers = calloc((size_t)r->n_layers, sizeof(tref_layer));
    if (!(r->tok_embd = load_tensor(f, "token_embd.weight", D, (uint64_t)r->vocab, err, errlen)) ||
        !(r->out_norm = load_tensor(f, "output_norm.weight", D, 1, err, errlen)))
        goto out;
    if (gguf_find_tensor(f, "output.weight")) {
        if (!(r->output = load_tensor(f, "output.weight", D, (uint64_t)r->vocab, err, errlen)))
            goto out;
    } else {
        r->output = r->tok_embd;
    }
    for (int32_t l = 0; l < r->n_layers; l++) {
        tref_layer *L = &r->layers[l];
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        if (!(L->attn_norm = load_tensor(f, NAME("attn_norm.weight"), D, 1, err, errlen)) ||
            !(L->ffn_norm = load_tensor(f, NAME("ffn_norm.weight"), D, 1, err, errlen)) ||
            !(L->wq = load_tensor(f, NAME("attn_q.weight"), D, D, err, errlen)) ||
            !(L->wk = load_tensor(f, NAME("attn_k.weight"), D, KV, err, errlen)) ||
            !(L->wv = load_tensor(f, NAME("attn_v.weight"), D, KV, err, errlen)) ||
            !(L->wo = load_tensor(f, NAME("attn_output.weight"), D, D, err, errlen)) ||
            !(L->wg = load_tensor(f, NAME("ffn_gate.weight"), D, H, err, errlen)) ||
            !(L->wu = load_tensor(f, NAME("ffn_up.weight"), D, H, err, errlen)) ||
            !(L->wd = load_tensor(f, NAME("ffn_down.weight"), H, D, err, errlen)))
            goto out;
#undef NAME
    }
    rc = 0;
out:
    gguf_close(f);
    if (rc != 0)
        tref_free(r);
    return rc;
}

void tref_free(tref_model *r)
{
    if (r->output != r->tok_embd)
        free(r->output);
    free(r->tok_embd);
    free(r->out_norm);
    if (r->layers) {
        for (int32_t l = 0; l < r->n_layers; l++) {
            tref_layer *L = &r->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->wq);
            free(L->wk);
            free(L->wv);
            free(L->wo);
            free(L->wg);
            free(L->wu);
            free(L->wd);
        }
        free(r->layers);
    }
    memset(r, 0, sizeof *r);
}

/* out (n) = W (rows=n, cols) . x (cols), double accumulation. */
static void ref_matvec(const float *W, int32_t rows, int32_t cols, const double *x, double *out)
{
    for (int32_t i = 0; i < rows; i++) {
        const float *w = W + (size_t)i * cols;
        double s = 0.0;
        for (int32_t j = 0; j < cols; j++)
            s += (double)w[j] * x[j];
        out[i] = s;
    }
}

static void ref_rmsnorm(const double *x, const float *w, int32_t n, float eps, double *out)
{
    double ss = 0.0;
    for (int32_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / n + (double)eps);
    for (int32_t i = 0; i < n; i++)
        out[i] = x[i] * inv * (double)w[i];
}

static void ref_rope(double *v, int32_t n_heads, int32_t head_dim, int32_t pos, double base)
{
    for (int32_t h = 0; h < n_heads; h++) {
        double *x = v + (size_t)h * head_dim;
        for (int32_t i = 0; i < head_dim / 2; i++) {
            double theta = pos * pow(base, -2.0 * i / head_dim);
            double c = cos(theta), s = sin(theta);
            double a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * c - b * s;
            x[2 * i + 1] = a * s + b * c;
        }
    }
}

static void ref_head(const tref_model *r, const double *x, float *logits)
{
    double *xn = tm_xmalloc((size_t)r->dim * sizeof(double));
    double *o = tm_xmalloc((size_t)r->vocab * sizeof(double));
    ref_rmsnorm(x, r->out_norm, r->dim, r->norm_eps, xn);
    ref_matvec(r->output, r->vocab, r->dim, xn, o);
    for (int32_t i = 0; i < r->vocab; i++)
        logits[i] = (float)o[i];
    free(xn);
    free(o);
}

void tref_forward(const tref_model *r, const int32_t *tokens, int32_t n,
                  const uint8_t *attn_mask, const uint8_t *mlp_mask, float *logits)
{
    int32_t D = r->dim, KV = r->kv_dim, H = r->hidden, hd = r->head_dim;
    int32_t group = r->n_heads / r->n_kv_heads;
    double *x = tm_xmalloc((size_t)n * D * sizeof(double));
    double *xb = tm_xmalloc((size_t)D * sizeof(double));
    double *q = tm_xmalloc((size_t)n * D * sizeof(double));
    double *k = tm_xmalloc((size_t)n * KV * sizeof(double));
    double *v = tm_xmalloc((size_t)n * KV * sizeof(double));
    double *att = tm_xmalloc((size_t)D * sizeof(double));
    double *o = tm_xmalloc((size_t)D * sizeof(double));
    double *g = tm_xmalloc((size_t)H * sizeof(double));
    double *u = tm_xmalloc((size_t)H * sizeof(double));
    double *sc = tm_xmalloc((size_t)n * sizeof(double));
    for (int32_t t = 0; t < n; t++)
        for (int32_t i = 0; i < D; i++)
            x[(size_t)t * D + i] = r->tok_embd[(size_t)tokens[t] * D + i];
    for (int32_t l = 0; l < r->n_layers; l++) {
        const tref_layer *L = &r->layers[l];
        if (!attn_mask || attn_mask[l]) {
            for (int32_t t = 0; t < n; t++) {
                ref_rmsnorm(x + (size_t)t * D, L->attn_norm, D, r->norm_eps, xb);
                ref_matvec(L->wq, D, D, xb, q + (size_t)t * D);
                ref_matvec(L->wk, KV, D, xb, k + (size_t)t * KV);
                ref_matvec(L->wv, KV, D, xb, v + (size_t)t * KV);
                ref_rope(q + (size_t)t * D, r->n_heads, hd, t, r->rope_base);
                ref_rope(k + (size_t)t * KV, r->n_kv_heads, hd, t, r->rope_base);
            }
            for (int32_t t = 0; t < n; t++) {
                for (int32_t h = 0; h < r->n_heads; h++) {
                    const double *qh = q + (size_t)t * D + (size_t)h * hd;
                    int32_t kvh = h / group;
                    double mx = -INFINITY, sum = 0.0;
                    for (int32_t p = 0; p <= t; p++) {
                        const double *kp = k + (size_t)p * KV + (size_t)kvh * hd;
                        double s = 0.0;
                        for (int32_t i = 0; i < hd; i++)
                            s += qh[i] * kp[i];
                        sc[p] = s / sqrt((double)hd);
                        if (sc[p] > mx)
                            mx = sc[p];
                    }
                    for (int32_t p = 0; p <= t; p++) {
                        sc[p] = exp(sc[p] - mx);
                        sum += sc[p];
                    }
                    double *out = att + (size_t)h * hd;
                    for (int32_t i = 0; i < hd; i++)
                        out[i] = 0.0;
                    for (int32_t p = 0; p <= t; p++) {
                        const double *vp = v + (size_t)p * KV + (size_t)kvh * hd;
                        for (int32_t i = 0; i < hd; i++)
                            out[i] += sc[p] / sum * vp[i];
                    }
                }
                ref_matvec(L->wo, D, D, att, o);
                /* residual added after every token's attention is done:
                 * keep the sublayer input of later tokens intact */
                for (int32_t i = 0; i < D; i++)
                    q[(size_t)t * D + i] = o[i];   /* q row t is no longer needed */
            }
            for (int32_t t = 0; t < n; t++)
                for (int32_t i = 0; i < D; i++)
                    x[(size_t)t * D + i] += q[(size_t)t * D + i];
        }
        if (!mlp_mask || mlp_mask[l]) {
            for (int32_t t = 0; t < n; t++) {
                double *xt = x + (size_t)t * D;
                ref_rmsnorm(xt, L->ffn_norm, D, r->norm_eps, xb);
                ref_matvec(L->wg, H, D, xb, g);
                ref_matvec(L->wu, H, D, xb, u);
                for (int32_t i = 0; i < H; i++)
                    g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
                ref_matvec(L->wd, D, H, g, o);
                for (int32_t i = 0; i < D; i++)
                    xt[i] += o[i];
            }
        }
    }
    for (int32_t t = 0; t < n; t++)
        ref_head(r, x + (size_t)t * D, logits + (size_t)t * r->vocab);
    free(x);
    free(xb);
    free(q);
    free(k);
    free(v);
    free(att);
    free(o);
    free(g);
    free(u);
    free(sc);
}

void tref_head_of_embedding(const tref_model *r, int32_t token, float *logits)
{
    double *x = tm_xmalloc((size_t)r->dim * sizeof(double));
    for (int32_t i = 0; i < r->dim; i++)
        x[i] = r->tok_embd[(size_t)token * r->dim + i];
    ref_head(r, x, logits);
    free(x);
}

tokenizer *tmodel_tokenizer(tgguf *g, char *err, size_t errlen)
{
    size_t size;
    void *img = tgguf_image(g, &size);
    tgguf_free(g);
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    if (gguf_open_memory(img, size, &f, err, errlen) == 0 && tokenizer_build(&t, f, err, errlen) != 0)
        t = NULL;
    gguf_close(f);
    free(img);
    return t;
}
