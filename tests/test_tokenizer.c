/*
 * test_tokenizer.c - unit tests for common/text/: tokenizer.c, chat.c, utf8.c
 * (the byte stream on its own, and the detokenizer over it).
 *
 * The real-model tests load the vocabulary of a GGUF (path from
 * $SELFSPEC_MODEL, default models/SmolLM2-135M-Instruct.Q4_1.gguf; skipped
 * when absent) and compare with that model's fixture ($SELFSPEC_TOKEN_FIXTURE,
 * default tests/fixtures/tokens.json; tests/fixtures/qwen_tokens.json for
 * Qwen2.5-Coder), produced by llama.cpp (scripts/make_token_fixtures.py):
 * vocabulary facts (size, BOS/EOS, every end-of-generation id), token ids
 * for every fixture text, per-token pieces, the ChatML prompts. Tiny synthetic vocabularies
 * (SentencePiece "llama" and byte-level "gpt2"), built with the test GGUF
 * writer, cover the other code paths; their expected ids were also taken
 * from llama.cpp on the same vocabularies. Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "format/gguf.h"
#include "testutil_gguf.h"
#include "testutil_model.h"
#include "text/chat.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIXTURE_PATH "tests/fixtures/tokens.json"

/* Shared state of the real-model group. */
typedef struct {
    tokenizer *tok;      /* NULL when the model file is absent */
    cJSON *fixtures;
} model_state;

/* ---------------------------------------------------------------- helpers */

static const char *model_path(void)
{
    const char *p = getenv("SELFSPEC_MODEL");
    return (p && *p) ? p : DEFAULT_MODEL;
}

static const char *fixture_path(void)
{
    const char *p = getenv("SELFSPEC_TOKEN_FIXTURE");
    return (p && *p) ? p : FIXTURE_PATH;
}

/* Read a whole file into a malloc'd NUL-terminated buffer (NULL on error). */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
            }
        }
    }
    fclose(f);
    return buf;
}

/* Decode a hex string into a malloc'd buffer; *len gets its length. */
static unsigned char *from_hex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    unsigned char *out = malloc(n + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
    *len = n;
    return out;
}

static void skip_without_model(const model_state *st)
{
    if (!st->tok) {
        print_message("SKIP: model %s not found (set SELFSPEC_MODEL)\n", model_path());
        skip();
    }
}

/* Fixture text entry by name (fails the test when absent). */
static const cJSON *fixture_text(const model_state *st, const char *name)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "texts")) {
        if (strcmp(cJSON_GetObjectItem(e, "name")->valuestring, name) == 0)
            return e;
    }
    fail_msg("fixture text '%s' missing", name);
    return NULL;
}

/* Encode, asserting success. */
static int32_t *encode_ok(const tokenizer *t, const void *text, size_t len, int add_bos,
                          int special, size_t *n)
{
    char err[256] = "";
    int32_t *ids = NULL;
    int rc = tokenizer_encode(t, text, len, add_bos, special, &ids, n, err, sizeof err);
    if (rc != 0)
        fail_msg("encode failed: %s", err);
    assert_non_null(ids);
    return ids;
}

/* Concatenate the pieces of ids into a malloc'd buffer. */
static char *decode_all(const tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 64, o = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_piece(t, ids[i], &pl);
        assert_non_null(p);
        while (o + pl > cap) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
        memcpy(out + o, p, pl);
        o += pl;
    }
    *len = o;
    return out;
}

/* ------------------------------------------------------- group set-up */

static int model_setup(void **state)
{
    model_state *st = calloc(1, sizeof *st);
    char err[256] = "";
    gguf_file *g = NULL;
    if (!st)
        return -1;
    *state = st;
    if (access(model_path(), R_OK) != 0)
        return 0;
    if (gguf_open(model_path(), &g, err, sizeof err) != 0) {
        fprintf(stderr, "gguf_open(%s): %s\n", model_path(), err);
        return -1;
    }
    int rc = tokenizer_build(&st->tok, g, err, sizeof err);
    gguf_close(g);
    if (rc != 0) {
        fprintf(stderr, "tokenizer_build: %s\n", err);
        return -1;
    }
    char *json = read_file(fixture_path());
    st->fixtures = json ? cJSON_Parse(json) : NULL;
    free(json);
    if (!st->fixtures) {
        fprintf(stderr, "cannot read %s\n", fixture_path());
        return -1;
    }
    return 0;
}

static int model_teardown(void **state)
{
    model_state *st = *state;
    tokenizer_free(st->tok);
    cJSON_Delete(st->fixtures);
    free(st);
    return 0;
}

/* ------------------------------------------------------ real-model tests */

static void test_metadata(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const tokenizer *t = st->tok;
    const cJSON *v = cJSON_GetObjectItem(st->fixtures, "vocab");
    assert_non_null(v);
    int32_t n = cJSON_GetObjectItem(v, "n_vocab")->valueint;
    size_t len;
    assert_int_equal(tokenizer_vocab_size(t), n);
    assert_int_equal(tokenizer_bos(t), cJSON_GetObjectItem(v, "bos")->valueint);
    assert_int_equal(tokenizer_eos(t), cJSON_GetObjectItem(v, "eos")->valueint);
    assert_int_equal(tokenizer_add_bos(t), cJSON_IsTrue(cJSON_GetObjectItem(v, "add_bos")));
    /* end of generation: exactly llama.cpp's set */
    uint8_t *eog = calloc((size_t)n, 1);
    assert_non_null(eog);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(v, "eog")) {
        assert_true(e->valueint >= 0 && e->valueint < n);
        eog[e->valueint] = 1;
    }
    for (int32_t id = 0; id < n; id++)
        if (tokenizer_is_eog(t, id) != eog[id])
            fail_msg("token %d: is_eog %d, llama.cpp says %d", (int)id, tokenizer_is_eog(t, id), eog[id]);
    free(eog);
    assert_false(tokenizer_is_eog(t, -1));
    assert_false(tokenizer_is_eog(t, n));
    assert_null(tokenizer_piece(t, -1, &len));
    assert_null(tokenizer_piece(t, n, &len));
    assert_true(tokenizer_max_piece_len(t) >= 12);
}

/* Every fixture text gives llama.cpp's ids. llama.cpp's add_bos (its
 * add_special) only adds BOS when the vocabulary says so. */
static void test_fixture_ids(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const cJSON *e;
    int total = 0, matched = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "texts")) {
        size_t len, n;
        unsigned char *text = from_hex(cJSON_GetObjectItem(e, "hex")->valuestring, &len);
        int add_bos = cJSON_IsTrue(cJSON_GetObjectItem(e, "add_bos")) && tokenizer_add_bos(st->tok);
        int special = cJSON_IsTrue(cJSON_GetObjectItem(e, "parse_special"));
        int32_t *ids = encode_ok(st->tok, text, len, add_bos, special, &n);
        const cJSON *exp = cJSON_GetObjectItem(e, "ids");
        int ok = (size_t)cJSON_GetArraySize(exp) == n;
        for (size_t i = 0; ok && i < n; i++)
            ok = cJSON_GetArrayItem(exp, (int)i)->valueint == ids[i];
        if (!ok)
            print_message("MISMATCH %s: %zu ids, expected %d\n",
                          cJSON_GetObjectItem(e, "name")->valuestring, n, cJSON_GetArraySize(exp));
        matched += ok;
        total++;
        free(ids);
        free(text);
    }
    print_message("fixture texts matching llama.cpp: %d/%d\n", matched, total);
    assert_true(total >= 40);
    assert_int_equal(matched, total);
}

static void test_fixture_pieces(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "pieces")) {
        size_t elen, plen;
        int32_t id = cJSON_GetObjectItem(e, "id")->valueint;
        unsigned char *exp = from_hex(cJSON_GetObjectItem(e, "hex")->valuestring, &elen);
        const char *p = tokenizer_piece(st->tok, id, &plen);
        assert_non_null(p);
        if (plen != elen || memcmp(p, exp, elen) != 0)
            fail_msg("piece of token %d differs", (int)id);
        free(exp);
        n++;
    }
    assert_true(n > 100);
}

/* decode(encode(text)) == text for every fixture text. */
static void test_roundtrip(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "texts")) {
        size_t len, n, dlen;
        unsigned char *text = from_hex(cJSON_GetObjectItem(e, "hex")->valuestring, &len);
        int special = cJSON_IsTrue(cJSON_GetObjectItem(e, "parse_special"));
        int32_t *ids = encode_ok(st->tok, text, len, 0, special, &n);
        char *back = decode_all(st->tok, ids, n, &dlen);
        if (dlen != len || memcmp(back, text, len) != 0)
            fail_msg("round trip of '%s' differs", cJSON_GetObjectItem(e, "name")->valuestring);
        free(back);
        free(ids);
        free(text);
    }
}

/* Feed the tokens of a text one at a time; each chunk must be valid UTF-8
 * and the chunks must add up to the text. Returns how many pushes left
 * bytes pending. */
static int stream_text(const tokenizer *t, const unsigned char *text, size_t len)
{
    size_t n, o = 0;
    int32_t *ids = encode_ok(t, text, len, 0, 0, &n);
    size_t cap = 3 * (tokenizer_max_piece_len(t) + 8);
    char *chunk = malloc(cap);
    char *all = malloc(len + 1);
    int pending = 0;
    utf8_stream s;
    assert_non_null(chunk);
    assert_non_null(all);
    utf8_stream_init(&s);
    for (size_t i = 0; i < n; i++) {
        size_t k = utf8_stream_push(&s, t, ids[i], chunk, cap);
        assert_int_equal(utf8_validate(chunk, k), k);
        assert_true(o + k <= len);
        memcpy(all + o, chunk, k);
        o += k;
        pending += s.n_pending > 0;
    }
    assert_int_equal(utf8_stream_flush(&s, chunk, cap), 0);
    assert_int_equal(o, len);
    assert_memory_equal(all, text, len);
    free(all);
    free(chunk);
    free(ids);
    return pending;
}

static void test_stream_utf8(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    static const char *const names[] = {
        "emoji", "emoji_zwj_flags", "chinese", "japanese", "hindi", "korean", "arabic",
        "unicode_misc", "prose",
    };
    int pending = 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t len;
        const cJSON *e = fixture_text(st, names[i]);
        unsigned char *text = from_hex(cJSON_GetObjectItem(e, "hex")->valuestring, &len);
        pending += stream_text(st->tok, text, len);
        free(text);
    }
    assert_true(pending > 0);   /* some characters did span several tokens */
}

/* Id of the gpt2 token whose piece is the single byte b. */
static int32_t byte_token(const tokenizer *t, unsigned char b)
{
    for (int32_t id = 0; id < tokenizer_vocab_size(t); id++) {
        size_t len;
        const char *p = tokenizer_piece(t, id, &len);
        if (len == 1 && (unsigned char)p[0] == b)
            return id;
    }
    fail_msg("no token for byte 0x%02x", b);
    return -1;
}

/* Invalid sequences come out as U+FFFD; a truncated one at the end too. */
static void test_stream_invalid(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const tokenizer *t = st->tok;
    int32_t f0 = byte_token(t, 0xF0), a = byte_token(t, 'a'), c3 = byte_token(t, 0xC3);
    int32_t x80 = byte_token(t, 0x80);
    char out[64];
    utf8_stream s;
    utf8_stream_init(&s);
    assert_int_equal(utf8_stream_push(&s, t, f0, out, sizeof out), 0);
    assert_int_equal(s.n_pending, 1);
    size_t k = utf8_stream_push(&s, t, a, out, sizeof out);
    assert_int_equal(k, 4);
    assert_memory_equal(out, "\xEF\xBF\xBD" "a", 4);
    k = utf8_stream_push(&s, t, x80, out, sizeof out);        /* lone continuation */
    assert_int_equal(k, 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    assert_int_equal(utf8_stream_push(&s, t, c3, out, sizeof out), 0);
    k = utf8_stream_flush(&s, out, sizeof out);
    assert_int_equal(k, 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    assert_int_equal(utf8_stream_flush(&s, out, sizeof out), 0);
}

static void test_encode_invalid_utf8(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    static const char *const bad[] = {
        "abc\xC0\xAF", "\xED\xA0\x80", "trunc\xE4\xB8", "\xF4\x90\x80\x80", "\x80", "\xFF",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "";
        int32_t *ids = (int32_t *)&err;
        size_t n = 99;
        int rc = tokenizer_encode(st->tok, bad[i], strlen(bad[i]), 0, 1, &ids, &n, err, sizeof err);
        assert_int_equal(rc, -1);
        assert_null(ids);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err, "UTF-8"));
    }
}

static void test_chat_prompt(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "chat")) {
        char err[256] = "";
        const cJSON *sys = cJSON_GetObjectItem(e, "system");
        char *p = tokenizer_chat_prompt(st->tok, cJSON_IsString(sys) ? sys->valuestring : NULL,
                                        cJSON_GetObjectItem(e, "user")->valuestring, err, sizeof err);
        if (!p)
            fail_msg("chat prompt: %s", err);
        assert_string_equal(p, cJSON_GetObjectItem(e, "prompt")->valuestring);
        free(p);
        n++;
    }
    assert_int_equal(n, 2);
}

/* chat_render on the real template: the fixture prompts again, and a
 * multi-turn conversation with the template's default system message. */
static void test_chat_render_model(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    assert_int_not_equal(chat_template_of(st->tok), CHAT_TEMPLATE_NONE);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(st->fixtures, "chat")) {
        char err[256] = "";
        const cJSON *sys = cJSON_GetObjectItem(e, "system");
        chat_msg m[2];
        size_t n = 0;
        if (cJSON_IsString(sys))
            m[n++] = (chat_msg){CHAT_SYSTEM, sys->valuestring};
        m[n++] = (chat_msg){CHAT_USER, cJSON_GetObjectItem(e, "user")->valuestring};
        char *p = chat_render(st->tok, m, n, err, sizeof err);
        if (!p)
            fail_msg("chat_render: %s", err);
        assert_string_equal(p, cJSON_GetObjectItem(e, "prompt")->valuestring);
        free(p);
    }
    const cJSON *conv = cJSON_GetObjectItem(st->fixtures, "conversation");
    chat_msg turns[8];
    size_t n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(conv, "messages")) {
        assert_true(n < sizeof turns / sizeof *turns);
        assert_int_equal(chat_role_parse(cJSON_GetObjectItem(e, "role")->valuestring, &turns[n].role), 0);
        turns[n++].content = cJSON_GetObjectItem(e, "content")->valuestring;
    }
    assert_int_equal(n, 3);
    char err[256] = "";
    char *p = chat_render(st->tok, turns, n, err, sizeof err);
    assert_non_null(p);
    assert_string_equal(p, cJSON_GetObjectItem(conv, "prompt")->valuestring);
    free(p);
}

/* Tokenizing a 4 KB prompt takes milliseconds (generous bound: sanitizers). */
static void test_speed(void **state)
{
    const model_state *st = *state;
    skip_without_model(st);
    size_t len, n;
    const cJSON *e = fixture_text(st, "long_4k");
    unsigned char *text = from_hex(cJSON_GetObjectItem(e, "hex")->valuestring, &len);
    assert_true(len >= 4000);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 10; i++)
        free(encode_ok(st->tok, text, len, 0, 1, &n));
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = ((double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6) / 10;
    print_message("encode %zu bytes: %.2f ms\n", len, ms);
    assert_true(ms < 100.0);
    free(text);
}

/* ------------------------------------------------------ tests without a model */

/* The byte stream alone (no tokenizer: utf8.c is a leaf of the text
 * layer): a character split over pushes waits, invalid bytes become
 * U+FFFD, an empty push changes nothing, the flush ends a cut character. */
static void test_utf8_stream_bytes(void **state)
{
    (void)state;
    char out[64];
    utf8_stream s;
    utf8_stream_init(&s);
    assert_int_equal(utf8_stream_push_bytes(&s, "h\xC3", 2, out, sizeof out), 1);
    assert_memory_equal(out, "h", 1);
    assert_int_equal(s.n_pending, 1);
    assert_int_equal(utf8_stream_push_bytes(&s, NULL, 0, out, sizeof out), 0);
    assert_int_equal(s.n_pending, 1);
    assert_int_equal(utf8_stream_push_bytes(&s, "\xA9\xE2\x82", 3, out, sizeof out), 2);   /* é, then 2 of € */
    assert_memory_equal(out, "\xC3\xA9", 2);
    assert_int_equal(utf8_stream_push_bytes(&s, "\xAC!", 2, out, sizeof out), 4);
    assert_memory_equal(out, "\xE2\x82\xAC!", 4);
    assert_int_equal(utf8_stream_push_bytes(&s, "\xFFx", 2, out, sizeof out), 4);
    assert_memory_equal(out, "\xEF\xBF\xBDx", 4);
    assert_int_equal(utf8_stream_push_bytes(&s, "\xF0\x9F", 2, out, sizeof out), 0);
    assert_int_equal(utf8_stream_flush(&s, out, sizeof out), 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    assert_int_equal(s.n_pending, 0);
}

static void test_utf8_validate(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t at;    /* expected result; SIZE_MAX = valid (length) */
    } cases[] = {
        {"", SIZE_MAX},
        {"plain ascii", SIZE_MAX},
        {"caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80", SIZE_MAX},
        {"\xF4\x8F\xBF\xBF", SIZE_MAX},                 /* U+10FFFF */
        {"\xED\x9F\xBF\xEE\x80\x80", SIZE_MAX},         /* U+D7FF, U+E000 */
        {"ab\xC0\xAF", 2},                              /* overlong '/' */
        {"\xC1\xBF", 0},                                /* overlong */
        {"x\xE0\x80\xAF", 1},                           /* overlong 3-byte */
        {"\xF0\x80\x80\xAF", 0},                        /* overlong 4-byte */
        {"ok\xED\xA0\x80", 2},                          /* surrogate U+D800 */
        {"\xED\xBF\xBF", 0},                            /* surrogate U+DFFF */
        {"abc\xE4\xB8", 3},                             /* truncated */
        {"\xF0\x9F\x98", 0},                            /* truncated 4-byte */
        {"\xE4\xB8x", 0},                               /* truncated, then ASCII */
        {"\xF4\x90\x80\x80", 0},                        /* U+110000 */
        {"\xF5\x80\x80\x80", 0},
        {"a\x80", 1},                                   /* lone continuation */
        {"\xFE\xFF", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len = strlen(cases[i].s);
        size_t exp = cases[i].at == SIZE_MAX ? len : cases[i].at;
        assert_int_equal(utf8_validate(cases[i].s, len), exp);
    }
    assert_int_equal(utf8_validate("a\0b", 3), 3);      /* NUL is valid UTF-8 */
}

/* Tiny SentencePiece vocabulary; expected ids from llama.cpp on the same
 * vocabulary (written with gguf-py). */
#define SPM_N (3 + 256 + 22)

static const char *const spm_extra[] = {
    "\xE2\x96\x81", "a", "b", "c", "h", "e", "l", "o", "\xE2\x96\x81" "a", "ab",
    "\xE2\x96\x81" "ab", "he", "ll", "llo", "hello", "\xE2\x96\x81" "hello",
    "\xE2\x96\x81" "h", "bc", "<|user|>", "\xE2\x96\x81\xE2\x96\x81", "w", "\xE2\x96\x81" "w",
};
static const float spm_extra_scores[] = {
    -1, -2, -2, -3, -3, -3, -3, -3, -1.5f, -1.0f, -0.5f, -2, -2, -1.5f, -0.2f, -0.1f,
    -2.5f, -0.8f, 0, -1, -4, -3.5f,
};

/* Build the tiny "llama" vocabulary. */
static tokenizer *build_spm(void)
{
    static char bytes[256][8];
    const char *toks[SPM_N];
    float scores[SPM_N] = {0};
    int32_t types[SPM_N];
    toks[0] = "<unk>";
    toks[1] = "<s>";
    toks[2] = "</s>";
    types[0] = 2;
    types[1] = types[2] = 3;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", (unsigned)b);
        toks[3 + b] = bytes[b];
        types[3 + b] = 6;
    }
    for (int i = 0; i < 22; i++) {
        toks[259 + i] = spm_extra[i];
        scores[259 + i] = spm_extra_scores[i];
        types[259 + i] = strcmp(spm_extra[i], "<|user|>") == 0 ? 4 : 1;
    }
    tgguf *g = tgguf_new();
    tgguf_kv_str(g, "general.architecture", "llama");
    tgguf_kv_str(g, "tokenizer.ggml.model", "llama");
    tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", toks, SPM_N);
    tgguf_kv_arr_f32(g, "tokenizer.ggml.scores", scores, SPM_N);
    tgguf_kv_arr_i32(g, "tokenizer.ggml.token_type", types, SPM_N);
    tgguf_kv_u32(g, "tokenizer.ggml.bos_token_id", 1);
    tgguf_kv_u32(g, "tokenizer.ggml.eos_token_id", 2);
    tgguf_kv_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    char err[256] = "";
    tokenizer *t = tmodel_tokenizer(g, err, sizeof err);
    if (!t)
        fail_msg("tokenizer: %s", err);
    return t;
}

/* Assert that encoding text gives exactly the n ids in exp. */
static void expect_ids(const tokenizer *t, const char *text, int add_bos, int special,
                       const int32_t *exp, size_t n_exp)
{
    size_t n;
    int32_t *ids = encode_ok(t, text, strlen(text), add_bos, special, &n);
    if (n != n_exp)
        fail_msg("'%s': %zu ids, expected %zu", text, n, n_exp);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != exp[i])
            fail_msg("'%s': id %zu is %d, expected %d", text, i, (int)ids[i], (int)exp[i]);
    }
    free(ids);
}

#define EXPECT(t, text, bos, sp, ...) do { \
        static const int32_t exp_[] = {__VA_ARGS__}; \
        expect_ids(t, text, bos, sp, exp_, sizeof exp_ / sizeof *exp_); \
    } while (0)

static void expect_piece(const tokenizer *t, int32_t id, const char *exp, size_t exp_len)
{
    size_t len;
    const char *p = tokenizer_piece(t, id, &len);
    assert_non_null(p);
    assert_int_equal(len, exp_len);
    assert_memory_equal(p, exp, exp_len);
}

static void test_spm_vocab(void **state)
{
    (void)state;
    tokenizer *t = build_spm();
    size_t n;
    assert_int_equal(tokenizer_vocab_size(t), SPM_N);
    assert_int_equal(tokenizer_add_bos(t), 1);      /* llama default */
    EXPECT(t, "hello", 1, 0, 1, 274);
    EXPECT(t, "hello", 0, 0, 274);
    EXPECT(t, "abc", 0, 0, 267, 276);               /* bc (-0.8) beats ab (-1.0) */
    EXPECT(t, "a b", 0, 0, 267, 259, 261);
    EXPECT(t, "hello world", 0, 0, 274, 280, 266, 117, 265, 103);  /* byte fallback */
    EXPECT(t, "ab<|user|>ab", 0, 0, 269, 277, 269); /* user-defined, space prefixed again */
    EXPECT(t, "<s>hello</s>hello", 0, 1, 1, 274, 2, 274);
    EXPECT(t, "<s>hello", 0, 0, 259, 63, 118, 65, 273);
    EXPECT(t, "\xC3\xA9", 0, 0, 259, 198, 172);      /* é as <0xC3><0xA9> */
    EXPECT(t, "  a", 0, 0, 278, 267);
    EXPECT(t, "", 1, 0, 1);
    EXPECT(t, "hello\n", 0, 0, 274, 13);
    free(encode_ok(t, "", 0, 0, 0, &n));
    assert_int_equal(n, 0);
    expect_piece(t, 3, "\0", 1);                     /* <0x00> */
    expect_piece(t, 259, " ", 1);
    expect_piece(t, 274, " hello", 6);
    expect_piece(t, 0, "<unk>", 5);
    expect_piece(t, 2, "</s>", 4);
    expect_piece(t, 277, "<|user|>", 8);
    assert_true(tokenizer_is_eog(t, 2));
    assert_false(tokenizer_is_eog(t, 1));
    char err[256] = "";
    assert_null(tokenizer_chat_prompt(t, NULL, "hi", err, sizeof err));
    assert_non_null(strstr(err, "template"));
    tokenizer_free(t);
}

/* GPT-2's byte -> code point table, computed as in the reference code. */
static uint32_t gpt2_cp(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++)
        n += !((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255));
    return 256u + (uint32_t)n;
}

/* UTF-8 of a code point below U+0800. */
static void utf8_2(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = '\0';
    }
}

/* Tiny byte-level BPE vocabulary: 256 byte tokens, a few merges, control
 * tokens, an unknown pre-tokenizer name and the given chat template. */
static tokenizer *build_gpt2(const char *chat_template)
{
    static char bytes[256][4];
    static const char *const extra[] = {
        "he", "ll", "hell", "hello", "<|begin_of_text|>", "<|eot_id|>",
    };
    static const char *const merges[] = { "h e", "l l", "he ll", "hell o", "x" };
    const char *toks[262];
    int32_t types[262];
    for (int b = 0; b < 256; b++) {
        utf8_2(gpt2_cp(b), bytes[b]);
        toks[b] = bytes[b];
        types[b] = 1;
    }
    for (int i = 0; i < 6; i++) {
        toks[256 + i] = extra[i];
        types[256 + i] = i >= 4 ? 3 : 1;
    }
    tgguf *g = tgguf_new();
    tgguf_kv_str(g, "tokenizer.ggml.model", "gpt2");
    tgguf_kv_str(g, "tokenizer.ggml.pre", "no-such-pre");
    tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", toks, 262);
    tgguf_kv_arr_i32(g, "tokenizer.ggml.token_type", types, 262);
    tgguf_kv_arr_str(g, "tokenizer.ggml.merges", merges, 5);
    tgguf_kv_u32(g, "tokenizer.ggml.bos_token_id", 260);
    tgguf_kv_u32(g, "tokenizer.ggml.eos_token_id", 261);
    tgguf_kv_bool(g, "tokenizer.ggml.add_bos_token", 1);
    if (chat_template)
        tgguf_kv_str(g, "tokenizer.chat_template", chat_template);
    char err[256] = "";
    tokenizer *t = tmodel_tokenizer(g, err, sizeof err);
    if (!t)
        fail_msg("tokenizer: %s", err);
    return t;
}

static void test_gpt2_synthetic(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{{ bos_token }}{% for m in messages %}<|start_header_id|>"
                              "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                              "{% endfor %}");
    assert_int_equal(tokenizer_add_bos(t), 1);
    /* " hello" is "Ġ" + "hello": no merge joins the space. */
    EXPECT(t, "hello hello", 1, 0, 260, 259, 32, 259);
    EXPECT(t, "hell<|eot_id|>o", 0, 1, 258, 261, 'o' );
    EXPECT(t, "hex", 0, 0, 256, 'x');
    assert_true(tokenizer_is_eog(t, 261));
    expect_piece(t, 32, " ", 1);                   /* byte 0x20 is "Ġ" */
    expect_piece(t, 0, "\0", 1);
    expect_piece(t, 259, "hello", 5);
    expect_piece(t, 261, "<|eot_id|>", 10);
    char err[256] = "";
    char *p = tokenizer_chat_prompt(t, "sys", "hi", err, sizeof err);
    assert_non_null(p);
    assert_string_equal(p, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys"
                           "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(p);
    tokenizer_free(t);

    t = build_gpt2("{% for m in messages %}### {{ m.content }}{% endfor %}");
    assert_null(tokenizer_chat_prompt(t, NULL, "hi", err, sizeof err));
    assert_non_null(strstr(err, "not recognized"));
    tokenizer_free(t);

    /* ChatML templates without a default system message. */
    static const char *const chatml[] = {
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
        "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + "
        "messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}",
    };
    for (size_t i = 0; i < 2; i++) {
        t = build_gpt2(chatml[i]);
        p = tokenizer_chat_prompt(t, NULL, "hi", err, sizeof err);
        assert_non_null(p);
        assert_string_equal(p, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        free(p);
        p = tokenizer_chat_prompt(t, "S", "hi", err, sizeof err);
        assert_non_null(p);
        assert_string_equal(p, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                               "<|im_start|>assistant\n");
        free(p);
        tokenizer_free(t);
    }

    t = build_gpt2("{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]");
    p = tokenizer_chat_prompt(t, NULL, "hi", err, sizeof err);
    assert_non_null(p);
    assert_string_equal(p, "<|begin_of_text|>[INST] hi [/INST]");
    free(p);
    tokenizer_free(t);
}

/* chat_render / tokenizer_chat_prompt for each template family on the tiny
 * gpt2 vocabulary (BOS "<|begin_of_text|>", EOS "<|eot_id|>"). */
static char *render_ok(const tokenizer *t, const chat_msg *m, size_t n)
{
    char err[256] = "";
    char *p = chat_render(t, m, n, err, sizeof err);
    if (!p)
        fail_msg("chat_render: %s", err);
    return p;
}

/* chat_render fails with an error containing needle. */
static void render_fails(const tokenizer *t, const chat_msg *m, size_t n, const char *needle)
{
    char err[256] = "";
    char *p = chat_render(t, m, n, err, sizeof err);
    if (p)
        fail_msg("chat_render succeeded: '%s'", p);
    if (!strstr(err, needle))
        fail_msg("error '%s' lacks '%s'", err, needle);
}

/* tokenizer_chat_prompt(system, user) equals chat_render of the same pair. */
static void expect_prompt_is_render(const tokenizer *t, const char *system, const char *user)
{
    char err[256] = "";
    chat_msg m[2];
    size_t n = 0;
    if (system)
        m[n++] = (chat_msg){CHAT_SYSTEM, system};
    m[n++] = (chat_msg){CHAT_USER, user};
    char *a = tokenizer_chat_prompt(t, system, user, err, sizeof err);
    char *b = render_ok(t, m, n);
    assert_non_null(a);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

static void test_chat_chatml(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
                              "You are \\'Bob\\'.<|im_end|>\\n' }}{% endif %}{% for m in messages %}"
                              "{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
                              "{% endfor %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_CHATML);
    static const chat_msg conv[] = {
        {CHAT_USER, "q1"}, {CHAT_ASSISTANT, "a1"}, {CHAT_USER, "q2"},
    };
    char *p = render_ok(t, conv, 3);
    assert_string_equal(p, "<|im_start|>system\nYou are 'Bob'.<|im_end|>\n"
                           "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
                           "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    static const chat_msg with_sys[] = { {CHAT_SYSTEM, ""}, {CHAT_USER, "q"} };
    p = render_ok(t, with_sys, 2);
    assert_string_equal(p, "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
                           "<|im_start|>assistant\n");
    free(p);
    p = render_ok(t, NULL, 0);                       /* default system, assistant opened */
    assert_string_equal(p, "<|im_start|>system\nYou are 'Bob'.<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    expect_prompt_is_render(t, NULL, "hi");
    expect_prompt_is_render(t, "S", "hi");
    char err[256] = "";
    p = tokenizer_chat_prompt(t, NULL, "hi", err, sizeof err);
    assert_string_equal(p, "<|im_start|>system\nYou are 'Bob'.<|im_end|>\n<|im_start|>user\nhi"
                           "<|im_end|>\n<|im_start|>assistant\n");
    free(p);

    /* Rules shared by every family. */
    static const chat_msg late_sys[] = { {CHAT_USER, "q"}, {CHAT_SYSTEM, "s"} };
    render_fails(t, late_sys, 2, "system message must come first");
    static const chat_msg null_content[] = { {CHAT_USER, NULL} };
    render_fails(t, null_content, 1, "NULL content");
    static const chat_msg bad_role[] = { {(chat_role)7, "q"} };
    render_fails(t, bad_role, 1, "unknown role");
    render_fails(t, NULL, 1, "NULL message list");
    tokenizer_free(t);
}

static void test_chat_llama3(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{{ bos_token }}{% for m in messages %}<|start_header_id|>"
                              "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                              "{% endfor %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_LLAMA3);
    static const chat_msg conv[] = {
        {CHAT_SYSTEM, "S"}, {CHAT_USER, "q1"}, {CHAT_ASSISTANT, "a1"}, {CHAT_USER, "q2"},
    };
    char *p = render_ok(t, conv, 4);
    assert_string_equal(p, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS"
                           "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nq1<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\na1<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nq2<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(p);
    expect_prompt_is_render(t, NULL, "hi");
    expect_prompt_is_render(t, "sys", "hi");
    tokenizer_free(t);

    /* Without bos_token in the template: no BOS text. */
    t = build_gpt2("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                   "{% endfor %}");
    p = render_ok(t, conv + 1, 1);
    assert_string_equal(p, "<|start_header_id|>user<|end_header_id|>\n\nq1<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(p);
    tokenizer_free(t);
}

static void test_chat_gemma(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_GEMMA);
    static const chat_msg conv[] = {
        {CHAT_SYSTEM, " S\n"}, {CHAT_USER, "q1 "}, {CHAT_ASSISTANT, "\ta1"}, {CHAT_USER, "q2"},
    };
    char *p = render_ok(t, conv, 4);
    assert_string_equal(p, "<start_of_turn>user\nS\n\nq1<end_of_turn>\n"
                           "<start_of_turn>model\na1<end_of_turn>\n"
                           "<start_of_turn>user\nq2<end_of_turn>\n<start_of_turn>model\n");
    free(p);
    p = render_ok(t, conv + 1, 1);
    assert_string_equal(p, "<start_of_turn>user\nq1<end_of_turn>\n<start_of_turn>model\n");
    free(p);
    expect_prompt_is_render(t, NULL, "hi");
    expect_prompt_is_render(t, "sys", "hi");
    /* turns must alternate, starting with the user */
    static const chat_msg twice[] = {{CHAT_USER, "a"}, {CHAT_USER, "b"}};
    render_fails(t, twice, 2, "chat: message 1: Gemma turns must alternate user/assistant, starting with user");
    render_fails(t, conv + 2, 1, "chat: message 0: Gemma turns must alternate user/assistant, starting with user");
    tokenizer_free(t);
}

/* Phi-3's template, as its GGUFs carry it. */
static void test_chat_phi3(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{% for message in messages %}{% if message['role'] == 'system' %}"
                              "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == "
                              "'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
                              "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
                              "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
                              "{{ '<|assistant|>\n' }}{% endif %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_PHI3);
    static const chat_msg conv[] = {
        {CHAT_SYSTEM, "S"}, {CHAT_USER, "q1"}, {CHAT_ASSISTANT, "a1"}, {CHAT_USER, "q2"},
    };
    char *p = render_ok(t, conv, 4);
    assert_string_equal(p, "<|system|>\nS<|end|>\n<|user|>\nq1<|end|>\n<|assistant|>\na1<|end|>\n"
                           "<|user|>\nq2<|end|>\n<|assistant|>\n");
    free(p);
    expect_prompt_is_render(t, NULL, "hi");
    expect_prompt_is_render(t, "sys", "hi");
    tokenizer_free(t);
}

static void test_chat_llama2(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + "
                              "'[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + "
                              "m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_LLAMA2);
    static const chat_msg conv[] = {
        {CHAT_SYSTEM, "S"}, {CHAT_USER, "q1"}, {CHAT_ASSISTANT, "a1"}, {CHAT_USER, "q2"},
    };
    char *p = render_ok(t, conv, 4);
    assert_string_equal(p, "<|begin_of_text|>[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 "
                           "<|eot_id|><|begin_of_text|>[INST] q2 [/INST]");
    free(p);
    p = render_ok(t, conv + 1, 3);
    assert_string_equal(p, "<|begin_of_text|>[INST] q1 [/INST] a1 <|eot_id|>"
                           "<|begin_of_text|>[INST] q2 [/INST]");
    free(p);
    expect_prompt_is_render(t, NULL, "hi");
    expect_prompt_is_render(t, "sys", "hi");
    char err[256] = "";
    p = tokenizer_chat_prompt(t, "sys", "hi", err, sizeof err);
    assert_string_equal(p, "<|begin_of_text|>[INST] <<SYS>>\nsys\n<</SYS>>\n\nhi [/INST]");
    free(p);
    render_fails(t, conv, 3, "end with a user message");     /* ends with assistant */
    render_fails(t, conv, 1, "end with a user message");     /* system only */
    render_fails(t, NULL, 0, "end with a user message");
    static const chat_msg two_users[] = { {CHAT_USER, "a"}, {CHAT_USER, "b"} };
    render_fails(t, two_users, 2, "alternate");
    static const chat_msg starts_assistant[] = { {CHAT_ASSISTANT, "a"}, {CHAT_USER, "b"} };
    render_fails(t, starts_assistant, 2, "alternate");
    tokenizer_free(t);

    /* Neither bos_token nor eos_token in the template: no BOS / EOS text. */
    t = build_gpt2("[INST] {{ messages[0]['content'] }} [/INST]");
    p = render_ok(t, conv + 1, 3);
    assert_string_equal(p, "[INST] q1 [/INST] a1 [INST] q2 [/INST]");
    free(p);
    tokenizer_free(t);
}

static void test_chat_unrecognized(void **state)
{
    (void)state;
    tokenizer *t = build_gpt2("{% for m in messages %}### {{ m.content }}{% endfor %}");
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_NONE);
    static const chat_msg m[] = { {CHAT_USER, "hi"} };
    render_fails(t, m, 1, "tokenizer: chat template not recognized (ChatML, Llama-2, Llama-3, Phi-3, Gemma)");
    tokenizer_free(t);
    t = build_gpt2(NULL);                            /* no template, no <|im_start|> token */
    assert_int_equal(chat_template_of(t), CHAT_TEMPLATE_NONE);
    render_fails(t, m, 1, "not recognized");
    tokenizer_free(t);

    chat_role r = CHAT_SYSTEM;
    assert_int_equal(chat_role_parse("assistant", &r), 0);
    assert_int_equal(r, CHAT_ASSISTANT);
    assert_int_equal(chat_role_parse("user", &r), 0);
    assert_int_equal(r, CHAT_USER);
    assert_int_equal(chat_role_parse("system", &r), 0);
    assert_int_equal(r, CHAT_SYSTEM);
    assert_int_equal(chat_role_parse("tool", &r), -1);
    assert_int_equal(chat_role_parse("User", &r), -1);
    assert_int_equal(chat_role_parse(NULL, &r), -1);
    assert_int_equal(r, CHAT_SYSTEM);
}

static void test_build_errors(void **state)
{
    (void)state;
    static const char *const toks[] = { "a", "b" };
    static const struct {
        const char *model;
        int with_tokens;
        const char *needle;
    } cases[] = {
        {NULL, 1, "tokenizer.ggml.model"},
        {"bert", 1, "not supported"},
        {"llama", 0, "tokenizer.ggml.tokens"},
        {"gpt2", 1, "merges"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tgguf *g = tgguf_new();
        if (cases[i].model)
            tgguf_kv_str(g, "tokenizer.ggml.model", cases[i].model);
        if (cases[i].with_tokens)
            tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", toks, 2);
        size_t size;
        void *img = tgguf_image(g, &size);
        tgguf_free(g);
        gguf_file *f = NULL;
        tokenizer *t = (tokenizer *)img;
        char err[256] = "";
        assert_int_equal(gguf_open_memory(img, size, &f, err, sizeof err), 0);
        assert_int_equal(tokenizer_build(&t, f, err, sizeof err), -1);
        assert_null(t);
        if (!strstr(err, cases[i].needle))
            fail_msg("case %zu: error '%s' lacks '%s'", i, err, cases[i].needle);
        gguf_close(f);
        free(img);
    }
}

int main(void)
{
    const struct CMUnitTest model_tests[] = {
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_fixture_ids),
        cmocka_unit_test(test_fixture_pieces),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_stream_utf8),
        cmocka_unit_test(test_stream_invalid),
        cmocka_unit_test(test_encode_invalid_utf8),
        cmocka_unit_test(test_chat_prompt),
        cmocka_unit_test(test_chat_render_model),
        cmocka_unit_test(test_speed),
    };
    const struct CMUnitTest unit_tests[] = {
        cmocka_unit_test(test_utf8_validate),
        cmocka_unit_test(test_utf8_stream_bytes),
        cmocka_unit_test(test_spm_vocab),
        cmocka_unit_test(test_gpt2_synthetic),
        cmocka_unit_test(test_chat_chatml),
        cmocka_unit_test(test_chat_llama3),
        cmocka_unit_test(test_chat_llama2),
        cmocka_unit_test(test_chat_gemma),
        cmocka_unit_test(test_chat_phi3),
        cmocka_unit_test(test_chat_unrecognized),
        cmocka_unit_test(test_build_errors),
    };
    int failed = cmocka_run_group_tests_name("tokenizer (synthetic)", unit_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("tokenizer (model)", model_tests, model_setup,
                                          model_teardown);
    return failed ? 1 : 0;
}
