/*
 * test_output.c - decode/output.h: a sequence's text with stop strings, on
 * a tiny byte-level BPE vocabulary built in memory: streaming holds back
 * what may start a stop string, never splits a UTF-8 character, cuts at
 * the first stop string (also across tokens), leaves out the text of an
 * end-of-generation token unless EOS is ignored, and flushes at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decode/output.h"
#include "format/gguf.h"
#include "testutil_gguf.h"
#include "testutil_model.h"

/* ids of the tiny vocabulary */
enum { T_EOS, T_A, T_B, T_S, T_T, T_C3, T_A9, T_AB, T_SP, T_N };

static tokenizer *build_vocab(void)
{
    /* gpt2 byte-level pieces: ASCII letters are themselves, U+0120 a space,
     * U+00C3 and U+00A9 the bytes 0xC3 0xA9 (the two halves of "é") */
    const char *toks[T_N] = {"<|endoftext|>", "a", "b", "S", "T", "\xC3\x83", "\xC2\xA9", "ab", "\xC4\xA0"};
    int32_t types[T_N] = {3, 1, 1, 1, 1, 1, 1, 1, 1};
    const char *merges[] = {"a b"};
    tgguf *g = tgguf_new();
    tgguf_kv_str(g, "general.architecture", "llama");
    tgguf_kv_str(g, "tokenizer.ggml.model", "gpt2");
    tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", toks, T_N);
    tgguf_kv_arr_i32(g, "tokenizer.ggml.token_type", types, T_N);
    tgguf_kv_arr_str(g, "tokenizer.ggml.merges", merges, 1);
    tgguf_kv_u32(g, "tokenizer.ggml.bos_token_id", T_EOS);
    tgguf_kv_u32(g, "tokenizer.ggml.eos_token_id", T_EOS);
    char err[256] = "";
    tokenizer *t = tmodel_tokenizer(g, err, sizeof err);
    if (!t)
        fail_msg("tokenizer: %s", err);
    return t;
}

/* Push ids one by one, collecting what out_text_take hands out after each
 * (as `generate` streams it); returns the index of the id that stopped, or
 * -1. The streamed bytes must always equal the final text. */
static int run(out_text *o, const int32_t *ids, int n, char *streamed, size_t cap)
{
    size_t len = 0;
    int stopped_at = -1;
    for (int i = 0; i < n && stopped_at < 0; i++) {
        if (out_text_push(o, ids[i]))
            stopped_at = i;
        const char *s;
        size_t k = out_text_take(o, &s);
        assert_true(len + k < cap);
        memcpy(streamed + len, s, k);
        len += k;
        /* what was handed out never ends inside a UTF-8 character */
        if (len)
            assert_true(((unsigned char)streamed[len - 1] & 0xC0) != 0xC0);
    }
    out_text_finish(o);
    const char *s;
    size_t k = out_text_take(o, &s);
    memcpy(streamed + len, s, k);
    len += k;
    streamed[len] = '\0';
    return stopped_at;
}

static void test_plain_text_and_eos(void **state)
{
    tokenizer *t = build_vocab();
    out_text o;
    char err[128], got[256];
    assert_int_equal(out_text_init(&o, t, NULL, 0, 0, err, sizeof err), 0);
    int32_t ids[] = {T_A, T_SP, T_AB, T_EOS};
    assert_int_equal(run(&o, ids, 4, got, sizeof got), -1);
    assert_string_equal(got, "a ab");              /* the EOS token's text is not output */
    out_text_free(&o);
    assert_int_equal(out_text_init(&o, t, NULL, 0, 1, err, sizeof err), 0);
    run(&o, ids, 4, got, sizeof got);
    assert_string_equal(got, "a ab<|endoftext|>"); /* ... unless EOS is ignored */
    out_text_free(&o);
    tokenizer_free(t);
}

static void test_stop_across_tokens(void **state)
{
    tokenizer *t = build_vocab();
    const char *stops[] = {"ST", "zzz"};
    out_text o;
    char err[128], got[256];
    assert_int_equal(out_text_init(&o, t, stops, 2, 0, err, sizeof err), 0);
    int32_t ids[] = {T_A, T_B, T_S, T_T, T_A, T_A};
    assert_int_equal(run(&o, ids, 6, got, sizeof got), 3);   /* "ST" completes at the 4th id */
    assert_string_equal(got, "ab");
    assert_int_equal(o.stopped, 1);
    assert_int_equal(out_text_push(&o, T_A), 1);              /* stays stopped */
    out_text_free(&o);
    tokenizer_free(t);
}

static void test_prefix_held_then_released(void **state)
{
    tokenizer *t = build_vocab();
    const char *stops[] = {"STS"};
    out_text o;
    char err[128];
    assert_int_equal(out_text_init(&o, t, stops, 1, 0, err, sizeof err), 0);
    assert_int_equal(out_text_push(&o, T_A), 0);
    assert_int_equal(out_text_push(&o, T_S), 0);
    assert_int_equal(out_text_push(&o, T_T), 0);
    const char *s;
    size_t n = out_text_take(&o, &s);
    assert_int_equal(n, 1);                                  /* "ST" is held: it may start "STS" */
    assert_memory_equal(s, "a", 1);
    assert_int_equal(out_text_push(&o, T_A), 0);              /* "aSTa": no stop yet; the last */
    n = out_text_take(&o, &s);                                 /* len("STS") - 1 bytes stay held */
    assert_int_equal(n, 1);
    assert_memory_equal(s, "S", 1);
    out_text_finish(&o);
    out_text_take(&o, &s);
    assert_string_equal(o.text, "aSTa");
    assert_int_equal(o.final, 4);
    out_text_free(&o);
    tokenizer_free(t);
}

static void test_utf8_never_split(void **state)
{
    tokenizer *t = build_vocab();
    out_text o;
    char err[128], got[256];
    assert_int_equal(out_text_init(&o, t, NULL, 0, 0, err, sizeof err), 0);
    int32_t ids[] = {T_A, T_C3, T_A9, T_B, T_C3};          /* "a é b" and a dangling half */
    run(&o, ids, 5, got, sizeof got);
    assert_memory_equal(got, "a\xC3\xA9" "b", 4);           /* the dangling byte is flushed as U+FFFD or dropped */
    out_text_free(&o);
    tokenizer_free(t);
}

static void test_bad_stops(void **state)
{
    tokenizer *t = build_vocab();
    out_text o;
    char err[128];
    const char *empty[] = {""};
    assert_int_equal(out_text_init(&o, t, empty, 1, 0, err, sizeof err), -1);
    const char *many[OUT_MAX_STOPS + 1] = {"a", "a", "a", "a", "a", "a", "a", "a", "a"};
    assert_int_equal(out_text_init(&o, t, many, OUT_MAX_STOPS + 1, 0, err, sizeof err), -1);
    tokenizer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text_and_eos),
        cmocka_unit_test(test_stop_across_tokens),
        cmocka_unit_test(test_prefix_held_then_released),
        cmocka_unit_test(test_utf8_never_split),
        cmocka_unit_test(test_bad_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
