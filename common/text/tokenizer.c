/*
 * tokenizer.c - byte-level BPE ("gpt2") and SentencePiece-style ("llama")
 * tokenizers built from GGUF metadata, following llama.cpp's
 * src/llama-vocab.cpp so that token ids match llama_tokenize:
 *
 *  - special tokens (control, user-defined, unknown) are split out of the raw
 *    text first, longest token text first, each splitting every remaining
 *    text fragment at its leftmost non-overlapping occurrences
 *    (llama.cpp's tokenizer_st_partition); user-defined tokens are split out
 *    even without parse_special;
 *  - gpt2: each text fragment is pre-tokenized (unicode_pretok.c), each
 *    pre-token is mapped byte-by-byte through GPT-2's byte->unicode table and
 *    merged pair by pair, lowest merge rank first (ties: leftmost);
 *  - llama: spaces become U+2581, a space is prefixed to a fragment that
 *    follows a special token or starts the text (add_space_prefix), adjacent
 *    symbols are merged greedily by the score of the merged token, and
 *    symbols that are not tokens fall back to <0xNN> byte tokens.
 *
 * Everything the tokenizer needs is copied out of the gguf_file at build time
 * (tokenizer.chat_template too, raw, for chat.c). This file holds the
 * vocabulary (loading, text -> id look-up, specials, EOG flags), encoding,
 * and the per-token pieces; chat templates are in chat.c, streaming UTF-8
 * detokenization and validation in utf8.c.
 */
#include "text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/unicode_cpt.h"
#include "text/unicode_pretok.h"
#include "text/utf8.h"
#include "util/util.h"

/* tokenizer.ggml.token_type values */
enum {
    TOK_T_NORMAL = 1, TOK_T_UNKNOWN = 2, TOK_T_CONTROL = 3,
    TOK_T_USER = 4, TOK_T_UNUSED = 5, TOK_T_BYTE = 6,
};

typedef enum { TOK_MODEL_GPT2, TOK_MODEL_SPM } tok_model;

/* Open-addressing hash set of indices (slot = index + 1, 0 = empty). */
typedef struct {
    uint32_t *slot;
    size_t mask;
} tok_hmap;

/* A pool of byte strings: string i is buf[off[i] .. off[i + 1]). */
typedef struct {
    char *buf;
    size_t *off;
    size_t n;
} tok_pool;

struct tokenizer {
    tok_model model;
    upretok_kind pre;
    int32_t n_vocab;
    tok_pool text;           /* token texts as stored in the vocabulary */
    tok_pool piece;          /* detokenized bytes of each token */
    int8_t *ttype;           /* token types */
    uint8_t *eog;            /* end-of-generation flags */
    float *scores;           /* llama only */
    tok_hmap text_map;       /* token text -> id (last id wins, as llama.cpp) */
    tok_pool merges;         /* "left right" strings, index = rank */
    size_t *merge_split;     /* byte length of the left part of each merge */
    tok_hmap merge_map;      /* (left, right) -> rank (first rank wins) */
    int32_t *special;        /* control/user/unknown ids, longest text first */
    size_t n_special;
    int32_t byte_id[256];    /* llama: id of <0xNN> (or the 1-byte token), -1 */
    int32_t bos, eos, unk;
    int add_bos;
    int add_space_prefix;
    size_t max_piece;
    char *chat_template;     /* tokenizer.chat_template, NUL-terminated; NULL when absent */
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

/* 64-bit FNV-1a over len bytes, continuing from h. */
static uint64_t tok_hash(uint64_t h, const void *p, size_t len)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

#define TOK_HASH_SEED 0xCBF29CE484222325ull

/* Length of string i of a pool. */
static size_t tok_pool_len(const tok_pool *p, size_t i)
{
    return p->off[i + 1] - p->off[i];
}

static const char *tok_pool_str(const tok_pool *p, size_t i)
{
    return p->buf + p->off[i];
}

static void tok_pool_free(tok_pool *p)
{
    free(p->buf);
    free(p->off);
    p->buf = NULL;
    p->off = NULL;
    p->n = 0;
}

/* Allocate a hash set with room for n entries at load <= 1/2.
 * Returns 0 or -1 on overflow / allocation failure. */
static int tok_hmap_init(tok_hmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4) {
            return -1;
        }
        cap *= 2;
    }
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    return m->slot ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Look-ups                                                                 */

/* Id of the token whose text is s[0..len), or -1. */
static int32_t tok_find(const tokenizer *t, const char *s, size_t len)
{
    size_t i = (size_t)tok_hash(TOK_HASH_SEED, s, len) & t->text_map.mask;
    for (;; i = (i + 1) & t->text_map.mask) {
        uint32_t v = t->text_map.slot[i];
        if (v == 0) {
            return -1;
        }
        size_t id = v - 1;
        if (tok_pool_len(&t->text, id) == len && memcmp(tok_pool_str(&t->text, id), s, len) == 0) {
            return (int32_t)id;
        }
    }
}

/* Hash of a merge pair; equal to the hash of the merge string "a b". */
static uint64_t tok_pair_hash(const char *a, size_t alen, const char *b, size_t blen)
{
    uint64_t h = tok_hash(TOK_HASH_SEED, a, alen);
    h = tok_hash(h, " ", 1);
    return tok_hash(h, b, blen);
}

/* Does merge r have left part a[0..alen) and right part b[0..blen)? */
static int tok_merge_is(const tokenizer *t, size_t r, const char *a, size_t alen,
                        const char *b, size_t blen)
{
    const char *m = tok_pool_str(&t->merges, r);
    size_t mlen = tok_pool_len(&t->merges, r);
    size_t split = t->merge_split[r];
    return split == alen && mlen - split - 1 == blen && memcmp(m, a, alen) == 0 &&
           memcmp(m + split + 1, b, blen) == 0;
}

/* Rank of the merge (a, b), or -1. */
static int32_t tok_merge_rank(const tokenizer *t, const char *a, size_t alen,
                              const char *b, size_t blen)
{
    size_t i = (size_t)tok_pair_hash(a, alen, b, blen) & t->merge_map.mask;
    for (;; i = (i + 1) & t->merge_map.mask) {
        uint32_t v = t->merge_map.slot[i];
        if (v == 0) {
            return -1;
        }
        if (tok_merge_is(t, v - 1, a, alen, b, blen)) {
            return (int32_t)(v - 1);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Building                                                                 */

/* Copy n GGUF strings into pool p. Returns 0 or -1 (allocation/overflow). */
static int tok_pool_fill(tok_pool *p, const gguf_str *s, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i].len > SIZE_MAX - total - 1) {
            return -1;
        }
        total += (size_t)s[i].len;
    }
    p->off = malloc((n + 1) * sizeof *p->off);
    p->buf = malloc(total + 1);
    if (!p->off || !p->buf) {
        return -1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        p->off[i] = o;
        memcpy(p->buf + o, s[i].ptr, (size_t)s[i].len);
        o += (size_t)s[i].len;
    }
    p->off[n] = o;
    p->n = n;
    return 0;
}

/* Find a string-array key; NULL when absent. *bad set when present but not
 * a string array. */
static const gguf_kv *tok_str_array(const gguf_file *g, const char *key, int *bad)
{
    const gguf_kv *kv = gguf_find_kv(g, key);
    *bad = kv && (kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING || !kv->arr_strs);
    return (kv && !*bad) ? kv : NULL;
}

/* Load tokens and (optional) token types and scores. */
static int tok_load_vocab(tokenizer *t, const gguf_file *g, char *err, size_t errlen)
{
    int bad;
    const gguf_kv *kv = tok_str_array(g, "tokenizer.ggml.tokens", &bad);
    if (!kv || kv->arr_count == 0 || kv->arr_count > INT32_MAX - 1) {
        return util_err(err, errlen, "tokenizer.ggml.tokens: missing, empty or not a string array");
    }
    size_t n = (size_t)kv->arr_count;
    t->n_vocab = (int32_t)n;
    if (tok_pool_fill(&t->text, kv->arr_strs, n) != 0) {
        return util_err(err, errlen, "tokenizer: out of memory loading %zu tokens", n);
    }
    t->ttype = malloc(n);
    t->eog = calloc(n, 1);
    t->scores = calloc(n, sizeof *t->scores);
    if (!t->ttype || !t->eog || !t->scores) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    memset(t->ttype, TOK_T_NORMAL, n);
    const gguf_kv *ty = gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (ty) {
        if (ty->type != GGUF_VT_ARRAY || ty->arr_type != GGUF_VT_I32 || ty->arr_count != n) {
            return util_err(err, errlen, "tokenizer.ggml.token_type: expected %zu i32 values", n);
        }
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)ty->arr_data + i * 4, 4);
            t->ttype[i] = (int8_t)(v >= 0 && v <= TOK_T_BYTE ? v : 0);
        }
    }
    const gguf_kv *sc = gguf_find_kv(g, "tokenizer.ggml.scores");
    if (sc) {
        if (sc->type != GGUF_VT_ARRAY || sc->arr_type != GGUF_VT_F32 || sc->arr_count != n) {
            return util_err(err, errlen, "tokenizer.ggml.scores: expected %zu f32 values", n);
        }
        memcpy(t->scores, sc->arr_data, n * sizeof *t->scores);
    }
    return 0;
}

/* Build the text -> id map (a later duplicate overrides an earlier one). */
static int tok_build_text_map(tokenizer *t, char *err, size_t errlen)
{
    if (tok_hmap_init(&t->text_map, (size_t)t->n_vocab) != 0) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    for (size_t id = 0; id < (size_t)t->n_vocab; id++) {
        const char *s = tok_pool_str(&t->text, id);
        size_t len = tok_pool_len(&t->text, id);
        size_t i = (size_t)tok_hash(TOK_HASH_SEED, s, len) & t->text_map.mask;
        for (;; i = (i + 1) & t->text_map.mask) {
            uint32_t v = t->text_map.slot[i];
            if (v == 0 || (tok_pool_len(&t->text, v - 1) == len &&
                           memcmp(tok_pool_str(&t->text, v - 1), s, len) == 0)) {
                t->text_map.slot[i] = (uint32_t)id + 1;
                break;
            }
        }
    }
    return 0;
}

/* Insert merge r into the merge map unless its pair is already there. */
static void tok_merge_insert(tokenizer *t, size_t r)
{
    const char *m = tok_pool_str(&t->merges, r);
    size_t split = t->merge_split[r];
    size_t mlen = tok_pool_len(&t->merges, r);
    size_t i = (size_t)tok_hash(TOK_HASH_SEED, m, mlen) & t->merge_map.mask;
    for (;; i = (i + 1) & t->merge_map.mask) {
        uint32_t v = t->merge_map.slot[i];
        if (v == 0) {
            t->merge_map.slot[i] = (uint32_t)r + 1;
            return;
        }
        if (tok_merge_is(t, v - 1, m, split, m + split + 1, mlen - split - 1)) {
            return;
        }
    }
}

/* Load tokenizer.ggml.merges ("left right", split at the first space at
 * index >= 1; entries without one are ignored, as llama.cpp does). */
static int tok_load_merges(tokenizer *t, const gguf_file *g, char *err, size_t errlen)
{
    int bad;
    const gguf_kv *kv = tok_str_array(g, "tokenizer.ggml.merges", &bad);
    if (!kv) {
        return util_err(err, errlen, "tokenizer.ggml.merges: missing or not a string array");
    }
    if (kv->arr_count > INT32_MAX - 1) {
        return util_err(err, errlen, "tokenizer.ggml.merges: too many merges");
    }
    size_t n = (size_t)kv->arr_count;
    if (tok_pool_fill(&t->merges, kv->arr_strs, n) != 0 ||
        !(t->merge_split = malloc((n + 1) * sizeof *t->merge_split)) ||
        tok_hmap_init(&t->merge_map, n) != 0) {
        return util_err(err, errlen, "tokenizer: out of memory loading merges");
    }
    for (size_t r = 0; r < n; r++) {
        const char *m = tok_pool_str(&t->merges, r);
        size_t len = tok_pool_len(&t->merges, r);
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
        t->merge_split[r] = sp ? (size_t)(sp - m) : SIZE_MAX;
        if (sp) {
            tok_merge_insert(t, r);
        }
    }
    return 0;
}

/* Read an optional token id key into *out (left alone when absent).
 * Fails when present but out of range. */
static int tok_load_id(tokenizer *t, const gguf_file *g, const char *key, int32_t *out,
                       char *err, size_t errlen)
{
    if (!gguf_find_kv(g, key)) {
        return 0;
    }
    uint32_t v;
    if (gguf_get_u32(g, key, &v) != 0 || v >= (uint32_t)t->n_vocab) {
        return util_err(err, errlen, "%s: not a token id below %d", key, (int)t->n_vocab);
    }
    *out = (int32_t)v;
    return 0;
}

/* Read an optional bool key into *out (left alone when absent). */
static int tok_load_bool(const gguf_file *g, const char *key, int *out, char *err, size_t errlen)
{
    if (!gguf_find_kv(g, key)) {
        return 0;
    }
    if (gguf_get_bool(g, key, out) != 0) {
        return util_err(err, errlen, "%s: not a bool", key);
    }
    return 0;
}

/* Special ids, BOS/EOS, add_bos / add_space_prefix, with llama.cpp's
 * defaults for SentencePiece vocabularies (bos 1, eos 2, unk 0, add bos). */
static int tok_load_specials(tokenizer *t, const gguf_file *g, char *err, size_t errlen)
{
    t->bos = t->eos = t->unk = -1;
    t->add_bos = 0;
    t->add_space_prefix = 1;
    if (t->model == TOK_MODEL_SPM) {
        t->bos = t->n_vocab > 1 ? 1 : -1;
        t->eos = t->n_vocab > 2 ? 2 : -1;
        t->unk = 0;
        t->add_bos = 1;
    }
    if (tok_load_id(t, g, "tokenizer.ggml.bos_token_id", &t->bos, err, errlen) != 0 ||
        tok_load_id(t, g, "tokenizer.ggml.eos_token_id", &t->eos, err, errlen) != 0 ||
        tok_load_id(t, g, "tokenizer.ggml.unknown_token_id", &t->unk, err, errlen) != 0 ||
        tok_load_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err, errlen) != 0 ||
        tok_load_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err, errlen) != 0) {
        return -1;
    }
    return 0;
}

/* Pre-tokenizer from tokenizer.ggml.pre (gpt2 only). */
static void tok_load_pre(tokenizer *t, const gguf_file *g)
{
    gguf_str s;
    int known = 1;
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s) != 0) {
        t->pre = UPRETOK_DEFAULT;
        return;
    }
    t->pre = upretok_from_name(s.ptr, (size_t)s.len, &known);
    if (!known) {
        fprintf(stderr, "tokenizer: warning: unknown pre-tokenizer '%.*s', using GPT-2's\n",
                (int)(s.len > 64 ? 64 : s.len), s.ptr);
    }
}

/* Is the token one that parse_special may match in text? */
static int tok_is_special_type(int type)
{
    return type == TOK_T_CONTROL || type == TOK_T_USER || type == TOK_T_UNKNOWN;
}

/* Sort key of a special token: longer text first, then lower id. */
typedef struct {
    size_t len;
    int32_t id;
} tok_special_key;

static int tok_special_cmp(const void *a, const void *b)
{
    const tok_special_key *x = a, *y = b;
    if (x->len != y->len) {
        return x->len > y->len ? -1 : 1;
    }
    return (x->id > y->id) - (x->id < y->id);
}

int tokenizer_is_special(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && tok_is_special_type(t->ttype[id]);
}

/* Collect the special tokens, longest text first. */
static int tok_build_specials(tokenizer *t, char *err, size_t errlen)
{
    size_t n = 0;
    tok_special_key *keys = malloc((size_t)t->n_vocab * sizeof *keys);
    if (!keys) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len = tok_pool_len(&t->text, (size_t)id);
        if (tok_is_special_type(t->ttype[id]) && len > 0) {
            keys[n].len = len;
            keys[n].id = id;
            n++;
        }
    }
    qsort(keys, n, sizeof *keys, tok_special_cmp);
    t->special = malloc((n + 1) * sizeof *t->special);
    if (!t->special) {
        free(keys);
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        t->special[i] = keys[i].id;
    }
    t->n_special = n;
    free(keys);
    return 0;
}

/* End of generation, as llama.cpp decides it (src/llama-vocab.cpp): EOS,
 * every token named like an end of turn or text, and the first token of
 * each fill-in-the-middle group of pad / repository / file-separator names.
 * Like llama.cpp, a token so chosen is made a control token whatever its
 * stored type (Qwen2.5 stores "</s>" as a normal token), so special-token
 * parsing matches it too. Runs before tok_build_specials. */
static void tok_build_eog(tokenizer *t)
{
    static const char *const names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    };
    static const char *const fim_groups[][6] = {
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
        {"<|file_sep|>", NULL},
    };
    if (t->eos >= 0) {
        t->eog[t->eos] = 1;
    }
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        int32_t id = tok_find(t, names[i], strlen(names[i]));
        if (id >= 0) {
            t->eog[id] = 1;
            t->ttype[id] = TOK_T_CONTROL;
        }
    }
    for (size_t g = 0; g < sizeof fim_groups / sizeof *fim_groups; g++) {
        for (size_t i = 0; fim_groups[g][i]; i++) {
            int32_t id = tok_find(t, fim_groups[g][i], strlen(fim_groups[g][i]));
            if (id >= 0) {
                t->eog[id] = 1;
                t->ttype[id] = TOK_T_CONTROL;
                break;
            }
        }
    }
}

/* Parse "<0xNN>" into the byte value; -1 when s is not of that form. */
static int tok_parse_byte_token(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') {
        return -1;
    }
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0) {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

/* llama: byte -> "<0xNN>" token, else the token made of that single byte. */
static void tok_build_byte_ids(tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char buf[7];
        char one = (char)b;
        snprintf(buf, sizeof buf, "<0x%02X>", (unsigned)b);
        int32_t id = tok_find(t, buf, 6);
        t->byte_id[b] = id >= 0 ? id : tok_find(t, &one, 1);
    }
}

/* Append the detokenized bytes of token id to buf at *o (never more bytes
 * than the token text has). Special tokens give their text; gpt2 normal
 * tokens undo the byte mapping (a code point outside it is copied as is,
 * where llama.cpp writes an "[UNK_BYTE_...]" marker); llama normal tokens
 * turn U+2581 into spaces and <0xNN> byte tokens give the byte; tokens of any
 * other type (unused, undefined) give nothing, as in llama.cpp. */
static void tok_piece_of(const tokenizer *t, int32_t id, char *buf, size_t *o)
{
    const char *s = tok_pool_str(&t->text, (size_t)id);
    size_t len = tok_pool_len(&t->text, (size_t)id);
    int type = t->ttype[id];
    if (tok_is_special_type(type)) {
        memcpy(buf + *o, s, len);
        *o += len;
        return;
    }
    if (t->model == TOK_MODEL_SPM && type == TOK_T_BYTE) {
        int b = tok_parse_byte_token(s, len);
        if (b >= 0) {
            buf[(*o)++] = (char)b;
        }
        return;
    }
    if (type != TOK_T_NORMAL) {
        return;
    }
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int r = ucpt_next((const unsigned char *)s + i, len - i, &cp);
        size_t step = r > 0 ? (size_t)r : 1;
        int b = r > 0 ? ucpt_gpt2_cpt_to_byte(cp) : -1;
        if (t->model == TOK_MODEL_GPT2 && b >= 0) {
            buf[(*o)++] = (char)b;
        } else if (t->model == TOK_MODEL_SPM && r > 0 && cp == 0x2581) {
            buf[(*o)++] = ' ';
        } else {
            memcpy(buf + *o, s + i, step);
            *o += step;
        }
        i += step;
    }
}

/* Precompute every token's piece. */
static int tok_build_pieces(tokenizer *t, char *err, size_t errlen)
{
    size_t total = t->text.off[t->n_vocab];
    if (total > SIZE_MAX - 16) {
        return util_err(err, errlen, "tokenizer: vocabulary too large");
    }
    t->piece.buf = malloc(total + 16);
    t->piece.off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece.off);
    if (!t->piece.buf || !t->piece.off) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    size_t o = 0;
    t->max_piece = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece.off[id] = o;
        tok_piece_of(t, id, t->piece.buf, &o);
        if (o - t->piece.off[id] > t->max_piece) {
            t->max_piece = o - t->piece.off[id];
        }
    }
    t->piece.off[t->n_vocab] = o;
    t->piece.n = (size_t)t->n_vocab;
    return 0;
}

/* Copy tokenizer.chat_template (optional) for chat.c to recognize. */
static int tok_load_chat(tokenizer *t, const gguf_file *g, char *err, size_t errlen)
{
    gguf_str s;
    if (gguf_get_str(g, "tokenizer.chat_template", &s) != 0) {
        return 0;
    }
    if (s.len > SIZE_MAX - 1) {
        return util_err(err, errlen, "tokenizer.chat_template: too long");
    }
    t->chat_template = malloc((size_t)s.len + 1);
    if (!t->chat_template) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    memcpy(t->chat_template, s.ptr, (size_t)s.len);
    t->chat_template[s.len] = '\0';
    return 0;
}

/* Choose the model type from tokenizer.ggml.model. */
static int tok_load_model(tokenizer *t, const gguf_file *g, char *err, size_t errlen)
{
    gguf_str s;
    if (gguf_get_str(g, "tokenizer.ggml.model", &s) != 0) {
        return util_err(err, errlen, "tokenizer.ggml.model: missing");
    }
    if (s.len == 4 && memcmp(s.ptr, "gpt2", 4) == 0) {
        t->model = TOK_MODEL_GPT2;
    } else if (s.len == 5 && memcmp(s.ptr, "llama", 5) == 0) {
        t->model = TOK_MODEL_SPM;
    } else {
        return util_err(err, errlen, "tokenizer.ggml.model '%.*s' is not supported (gpt2, llama)",
                        (int)(s.len > 64 ? 64 : s.len), s.ptr);
    }
    return 0;
}

int tokenizer_build(tokenizer **out, const gguf_file *g, char *err, size_t errlen)
{
    tokenizer *t = calloc(1, sizeof *t);
    *out = NULL;
    if (!t) {
        return util_err(err, errlen, "tokenizer: out of memory");
    }
    if (tok_load_model(t, g, err, errlen) != 0 || tok_load_vocab(t, g, err, errlen) != 0 ||
        tok_build_text_map(t, err, errlen) != 0 || tok_load_specials(t, g, err, errlen) != 0) {
        goto fail;
    }
    if (t->model == TOK_MODEL_GPT2) {
        if (tok_load_merges(t, g, err, errlen) != 0) {
            goto fail;
        }
        tok_load_pre(t, g);
    } else {
        tok_build_byte_ids(t);
    }
    tok_build_eog(t);
    if (tok_build_specials(t, err, errlen) != 0 || tok_build_pieces(t, err, errlen) != 0 ||
        tok_load_chat(t, g, err, errlen) != 0) {
        goto fail;
    }
    *out = t;
    return 0;
fail:
    tokenizer_free(t);
    return -1;
}

void tokenizer_free(tokenizer *t)
{
    if (!t) {
        return;
    }
    tok_pool_free(&t->text);
    tok_pool_free(&t->piece);
    tok_pool_free(&t->merges);
    free(t->merge_split);
    free(t->merge_map.slot);
    free(t->text_map.slot);
    free(t->ttype);
    free(t->eog);
    free(t->scores);
    free(t->special);
    free(t->chat_template);
    free(t);
}

int32_t tokenizer_vocab_size(const tokenizer *t)
{
    return t->n_vocab;
}

int32_t tokenizer_bos(const tokenizer *t)
{
    return t->bos;
}

int32_t tokenizer_eos(const tokenizer *t)
{
    return t->eos;
}

int tokenizer_add_bos(const tokenizer *t)
{
    return t->add_bos;
}

int tokenizer_is_eog(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = tok_pool_len(&t->piece, (size_t)id);
    return tok_pool_str(&t->piece, (size_t)id);
}

size_t utf8_stream_push(utf8_stream *s, const tokenizer *t, int32_t id, char *out, size_t cap)
{
    size_t plen = 0;
    const char *p = tokenizer_piece(t, id, &plen);
    return utf8_stream_push_bytes(s, p, p ? plen : 0, out, cap);
}

size_t tokenizer_max_piece_len(const tokenizer *t)
{
    return t->max_piece;
}

int32_t tokenizer_token_id(const tokenizer *t, const char *text, size_t len)
{
    return tok_find(t, text, len);
}

const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = tok_pool_len(&t->text, (size_t)id);
    return tok_pool_str(&t->text, (size_t)id);
}

const char *tokenizer_chat_template(const tokenizer *t)
{
    return t->chat_template;
}

/* ------------------------------------------------------------------------ */
/* Encoding: shared scratch state                                           */

/* Growable id array. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} tok_ids;

static int tok_ids_push(tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        if (cap < a->cap || cap > SIZE_MAX / sizeof *a->v) {
            return -1;
        }
        a->v = reallocCheck(a->v, cap * sizeof *a->v);
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* A symbol of a word being merged: bytes [off, off + n) of the word buffer,
 * linked to its neighbours (-1 at the ends); n == 0 once merged away. */
typedef struct {
    int prev, next;
    size_t off, n;
} tok_sym;

/* A candidate merge of symbols left and right (adjacent when queued). For
 * gpt2 `rank` orders the queue (lower first), for llama `score` (higher
 * first); ties go to the leftmost. `size` is the merged byte length, used to
 * drop entries that went stale when a neighbour merged. */
typedef struct {
    float score;
    int32_t rank;
    int left, right;
    size_t size;
} tok_bigram;

/* Per-call scratch buffers (reused across words). */
typedef struct {
    char *buf;              /* current word (mapped / escaped) */
    size_t buf_cap;
    tok_sym *sym;
    size_t sym_cap;
    tok_bigram *heap;
    size_t heap_n, heap_cap;
    uint32_t *cps;
    size_t cps_cap;
    size_t *cpo;            /* byte offset of each code point (+1 entry) */
    size_t cpo_cap;
    upretok_pieces pieces;
} tok_work;

static void tok_work_free(tok_work *w)
{
    free(w->buf);
    free(w->sym);
    free(w->heap);
    free(w->cps);
    free(w->cpo);
    upretok_pieces_free(&w->pieces);
}

/* Make sure *p (of *cap elements of size elem) holds at least n elements. */
static int tok_reserve(void **p, size_t *cap, size_t n, size_t elem)
{
    if (n <= *cap) {
        return 0;
    }
    size_t c = *cap ? *cap : 64;
    while (c < n) {
        if (c > SIZE_MAX / 2) {
            return -1;
        }
        c *= 2;
    }
    if (c > SIZE_MAX / elem) {
        return -1;
    }
    *p = reallocCheck(*p, c * elem);
    *cap = c;
    return 0;
}

/* Does bigram a come out of the queue before b? */
static int tok_bigram_before(const tokenizer *t, const tok_bigram *a, const tok_bigram *b)
{
    if (t->model == TOK_MODEL_GPT2) {
        if (a->rank != b->rank) {
            return a->rank < b->rank;
        }
    } else if (a->score != b->score) {
        return a->score > b->score;
    }
    return a->left < b->left;
}

static int tok_heap_push(const tokenizer *t, tok_work *w, const tok_bigram *b)
{
    void *h = w->heap;
    if (tok_reserve(&h, &w->heap_cap, w->heap_n + 1, sizeof *w->heap) != 0) {
        return -1;
    }
    w->heap = h;
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!tok_bigram_before(t, b, &w->heap[parent])) {
            break;
        }
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = *b;
    return 0;
}

/* Pop the first bigram into *out (heap must be non-empty). */
static void tok_heap_pop(const tokenizer *t, tok_work *w, tok_bigram *out)
{
    *out = w->heap[0];
    tok_bigram last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && tok_bigram_before(t, &w->heap[c + 1], &w->heap[c])) {
            c++;
        }
        if (!tok_bigram_before(t, &w->heap[c], &last)) {
            break;
        }
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) {
        w->heap[i] = last;
    }
}

/* Queue the merge of symbols left and right if the vocabulary has one. */
static int tok_try_bigram(const tokenizer *t, tok_work *w, int left, int right)
{
    if (left < 0 || right < 0) {
        return 0;
    }
    const tok_sym *l = &w->sym[left], *r = &w->sym[right];
    tok_bigram b = {0.0f, 0, left, right, l->n + r->n};
    if (t->model == TOK_MODEL_GPT2) {
        b.rank = tok_merge_rank(t, w->buf + l->off, l->n, w->buf + r->off, r->n);
        if (b.rank < 0) {
            return 0;
        }
    } else {
        int32_t id = tok_find(t, w->buf + l->off, l->n + r->n);
        if (id < 0) {
            return 0;
        }
        b.score = t->scores[id];
    }
    return tok_heap_push(t, w, &b);
}

/* Split w->buf[0..len) into one symbol per UTF-8 character. Returns the
 * number of symbols, or -1 on allocation failure / too many symbols. */
static int tok_make_symbols(tok_work *w, size_t len)
{
    void *p = w->sym;
    if (len > (size_t)INT32_MAX || tok_reserve(&p, &w->sym_cap, len, sizeof *w->sym) != 0) {
        return -1;
    }
    w->sym = p;
    int n = 0;
    for (size_t o = 0; o < len; n++) {
        uint32_t cp;
        int r = ucpt_next((const unsigned char *)w->buf + o, len - o, &cp);
        size_t step = r > 0 ? (size_t)r : 1;
        w->sym[n] = (tok_sym){n - 1, o + step < len ? n + 1 : -1, o, step};
        o += step;
    }
    return n;
}

/* Merge the symbols of w->buf[0..len) until no queued merge applies.
 * Returns the number of symbols (walk from 0 via next), or -1. */
static int tok_merge_word(const tokenizer *t, tok_work *w, size_t len)
{
    int n = tok_make_symbols(w, len);
    if (n < 0) {
        return -1;
    }
    w->heap_n = 0;
    for (int i = 1; i < n; i++) {
        if (tok_try_bigram(t, w, i - 1, i) != 0) {
            return -1;
        }
    }
    while (w->heap_n > 0) {
        tok_bigram b;
        tok_heap_pop(t, w, &b);
        tok_sym *l = &w->sym[b.left], *r = &w->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) {
            continue;
        }
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) {
            w->sym[r->next].prev = b.left;
        }
        if (tok_try_bigram(t, w, l->prev, b.left) != 0 ||
            tok_try_bigram(t, w, b.left, l->next) != 0) {
            return -1;
        }
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Encoding: gpt2                                                           */

/* Emit the ids of the merged symbols of the current word: the symbol's
 * token, or else (as llama.cpp) the tokens of its single bytes that exist. */
static int tok_gpt2_emit(const tokenizer *t, tok_work *w, int n, tok_ids *out)
{
    for (int i = n > 0 ? 0 : -1; i >= 0; i = w->sym[i].next) {
        const tok_sym *s = &w->sym[i];
        if (s->n == 0) {
            continue;
        }
        int32_t id = tok_find(t, w->buf + s->off, s->n);
        if (id >= 0) {
            if (tok_ids_push(out, id) != 0) {
                return -1;
            }
            continue;
        }
        for (size_t k = 0; k < s->n; k++) {
            id = tok_find(t, w->buf + s->off + k, 1);
            if (id >= 0 && tok_ids_push(out, id) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

/* BPE-encode one pre-token (raw bytes s[0..len)). */
static int tok_gpt2_word(const tokenizer *t, tok_work *w, const char *s, size_t len, tok_ids *out)
{
    void *p = w->buf;
    if (len > SIZE_MAX / 2 || tok_reserve(&p, &w->buf_cap, len * 2, 1) != 0) {
        return -1;
    }
    w->buf = p;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        o += ucpt_encode(ucpt_gpt2_byte_to_cpt((unsigned char)s[i]), w->buf + o);
    }
    int n = tok_merge_word(t, w, o);
    return n < 0 ? -1 : tok_gpt2_emit(t, w, n, out);
}

/* Decode valid UTF-8 s[0..len) into w->cps / w->cpo. Returns the number of
 * code points, or (size_t)-1 on allocation failure. */
static size_t tok_decode_cps(tok_work *w, const char *s, size_t len)
{
    void *a = w->cps, *b = w->cpo;
    if (len == SIZE_MAX || tok_reserve(&a, &w->cps_cap, len + 1, sizeof *w->cps) != 0) {
        return (size_t)-1;
    }
    w->cps = a;
    if (tok_reserve(&b, &w->cpo_cap, len + 1, sizeof *w->cpo) != 0) {
        return (size_t)-1;
    }
    w->cpo = b;
    size_t n = 0;
    for (size_t o = 0; o < len; n++) {
        int r = ucpt_next((const unsigned char *)s + o, len - o, &w->cps[n]);
        w->cpo[n] = o;
        o += r > 0 ? (size_t)r : 1;
    }
    w->cpo[n] = len;
    return n;
}

/* Tokenize a raw-text fragment with the byte-level BPE. */
static int tok_gpt2_fragment(const tokenizer *t, tok_work *w, const char *s, size_t len,
                             tok_ids *out)
{
    size_t n = tok_decode_cps(w, s, len);
    if (n == (size_t)-1 || upretok_split(t->pre, w->cps, n, &w->pieces) != 0) {
        return -1;
    }
    size_t start = 0;
    for (size_t k = 0; k < w->pieces.n; k++) {
        size_t end = start + w->pieces.v[k];
        size_t b0 = w->cpo[start], b1 = w->cpo[end];
        if (tok_gpt2_word(t, w, s + b0, b1 - b0, out) != 0) {
            return -1;
        }
        start = end;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding: llama (SentencePiece)                                          */

/* Emit a final symbol: its token, or its bytes as byte tokens. */
static int tok_spm_emit_sym(const tokenizer *t, const tok_work *w, const tok_sym *s, tok_ids *out)
{
    int32_t id = tok_find(t, w->buf + s->off, s->n);
    if (id >= 0) {
        return tok_ids_push(out, id);
    }
    for (size_t k = 0; k < s->n; k++) {
        id = t->byte_id[(unsigned char)w->buf[s->off + k]];
        if (id < 0) {
            id = t->unk;
        }
        if (id >= 0 && tok_ids_push(out, id) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Tokenize a raw-text fragment with the SentencePiece-style merge; a space
 * is prefixed when `prefix` is set. Spaces become U+2581. */
static int tok_spm_fragment(const tokenizer *t, tok_work *w, const char *s, size_t len,
                            int prefix, tok_ids *out)
{
    void *p = w->buf;
    if (len > SIZE_MAX / 3 - 1 || tok_reserve(&p, &w->buf_cap, 3 * (len + 1), 1) != 0) {
        return -1;
    }
    w->buf = p;
    size_t o = 0;
    for (size_t i = 0; i < len + (prefix != 0); i++) {
        char c = (prefix && i == 0) ? ' ' : s[i - (prefix != 0)];
        if (c == ' ') {
            memcpy(w->buf + o, "\xE2\x96\x81", 3);
            o += 3;
        } else {
            w->buf[o++] = c;
        }
    }
    int n = tok_merge_word(t, w, o);
    if (n < 0) {
        return -1;
    }
    for (int i = n > 0 ? 0 : -1; i >= 0; i = w->sym[i].next) {
        if (w->sym[i].n > 0 && tok_spm_emit_sym(t, w, &w->sym[i], out) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding: special-token partition                                        */

/* A piece of the input: raw text [off, off + len) when id < 0, else a token. */
typedef struct {
    size_t off, len;
    int32_t id;
} tok_frag;

typedef struct {
    tok_frag *v;
    size_t n, cap;
} tok_frags;

static int tok_frags_push(tok_frags *f, size_t off, size_t len, int32_t id)
{
    void *p = f->v;
    if (tok_reserve(&p, &f->cap, f->n + 1, sizeof *f->v) != 0) {
        return -1;
    }
    f->v = p;
    f->v[f->n++] = (tok_frag){off, len, id};
    return 0;
}

/* Split every raw fragment of `in` at the occurrences of special token id,
 * writing the result to `out`. */
static int tok_split_special(const tokenizer *t, const char *text, int32_t id,
                             const tok_frags *in, tok_frags *out)
{
    const char *st = tok_pool_str(&t->text, (size_t)id);
    size_t sl = tok_pool_len(&t->text, (size_t)id);
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        tok_frag f = in->v[k];
        if (f.id >= 0) {
            if (tok_frags_push(out, f.off, f.len, f.id) != 0) {
                return -1;
            }
            continue;
        }
        size_t pos = f.off, end = f.off + f.len;
        const char *m;
        while (pos < end && (m = memmem(text + pos, end - pos, st, sl)) != NULL) {
            size_t at = (size_t)(m - text);
            if ((at > pos && tok_frags_push(out, pos, at - pos, -1) != 0) ||
                tok_frags_push(out, at, sl, id) != 0) {
                return -1;
            }
            pos = at + sl;
        }
        if (pos < end && tok_frags_push(out, pos, end - pos, -1) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Partition text[0..len) into raw fragments and special tokens. */
static int tok_partition(const tokenizer *t, const char *text, size_t len, int parse_special,
                         tok_frags *f)
{
    tok_frags tmp = {0};
    int rc = -1;
    f->n = 0;
    if (len > 0 && tok_frags_push(f, 0, len, -1) != 0) {
        goto cleanup;
    }
    for (size_t i = 0; i < t->n_special && f->n > 0; i++) {
        int32_t id = t->special[i];
        if (!parse_special && t->ttype[id] != TOK_T_USER) {
            continue;
        }
        if (tok_split_special(t, text, id, f, &tmp) != 0) {
            goto cleanup;
        }
        tok_frags swap = *f;
        *f = tmp;
        tmp = swap;
    }
    rc = 0;
cleanup:
    free(tmp.v);
    return rc;
}

/* Tokenize the partitioned fragments into out. */
static int tok_encode_frags(const tokenizer *t, const char *text, const tok_frags *f,
                            tok_ids *out)
{
    tok_work w = {0};
    int rc = -1;
    int prev_special = 1;
    for (size_t k = 0; k < f->n; k++) {
        const tok_frag *g = &f->v[k];
        if (g->id >= 0) {
            if (tok_ids_push(out, g->id) != 0) {
                goto cleanup;
            }
            prev_special = 1;
            continue;
        }
        int r = t->model == TOK_MODEL_GPT2
              ? tok_gpt2_fragment(t, &w, text + g->off, g->len, out)
              : tok_spm_fragment(t, &w, text + g->off, g->len,
                                 t->add_space_prefix && prev_special, out);
        if (r != 0) {
            goto cleanup;
        }
        prev_special = 0;
    }
    rc = 0;
cleanup:
    tok_work_free(&w);
    return rc;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos,
                     int parse_special, int32_t **ids, size_t *n, char *err, size_t errlen)
{
    tok_ids out = {0};
    tok_frags f = {0};
    int rc = -1;
    *ids = NULL;
    *n = 0;
    size_t bad = utf8_validate(text, len);
    if (bad != len) {
        return util_err(err, errlen, "tokenizer: invalid UTF-8 at byte offset %zu of %zu", bad, len);
    }
    if ((add_bos && t->bos >= 0 && tok_ids_push(&out, t->bos) != 0) ||
        tok_partition(t, text, len, parse_special, &f) != 0 ||
        tok_encode_frags(t, text, &f, &out) != 0) {
        util_err(err, errlen, "tokenizer: out of memory encoding %zu bytes", len);
        goto cleanup;
    }
    if (!out.v && !(out.v = malloc(sizeof *out.v))) {   /* empty result: still an array */
        util_err(err, errlen, "tokenizer: out of memory");
        goto cleanup;
    }
    *ids = out.v;
    *n = out.n;
    out.v = NULL;
    rc = 0;
cleanup:
    free(out.v);
    free(f.v);
    return rc;
}
