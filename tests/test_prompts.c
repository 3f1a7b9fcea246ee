/*
 * test_prompts.c - JSONL prompt files (common/text/prompts.h): good files
 * (blank lines, CRLF, other members, escapes), each kind of bad line with
 * its line number, overflow past the caller's room, empty and missing
 * files; and prompts_encode on a tiny byte-level vocabulary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "testutil_model.h"
#include "text/prompts.h"
#include "text/tokenizer.h"

/* Write text to a fresh temporary file; its name into path. */
static void write_temp(char *path, size_t n, const char *text, size_t len)
{
    snprintf(path, n, "/tmp/selfspec-prompts-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/* Load text as a prompts file with room for max; returns the count. */
static int load(const char *text, size_t len, char **out, int max, char *err, size_t errlen)
{
    char path[64];
    write_temp(path, sizeof path, text, len);
    int n = prompts_load_jsonl(path, out, max, err, errlen);
    unlink(path);
    return n;
}

static void test_good_file(void **state)
{
    (void)state;
    char err[256] = "", *out[8];
    const char text[] = "{\"prompt\": \"Hello\"}\n"
                        "\n"
                        "   \t\r\n"
                        "{\"id\": 3, \"prompt\": \"a \\\"quoted\\\"\\nline \\u00e9\"}\r\n"
                        "{\"prompt\": \"\"}\n"
                        "{\"prompt\": \"last, no newline\"}";
    int n = load(text, sizeof text - 1, out, 8, err, sizeof err);
    if (n < 0)
        fail_msg("%s", err);
    assert_int_equal(n, 4);
    assert_string_equal(out[0], "Hello");
    assert_string_equal(out[1], "a \"quoted\"\nline \xc3\xa9");
    assert_string_equal(out[2], "");
    assert_string_equal(out[3], "last, no newline");
    prompts_free(out, n);
    /* exactly as many as there is room for */
    n = load("{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n", 32, out, 2, err, sizeof err);
    assert_int_equal(n, 2);
    prompts_free(out, n);
}

static void test_bad_lines(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int line;
    } bad[] = {
        {"{\"prompt\": \"ok\"}\nnot json\n", 2},
        {"{\"prompt\": 5}\n", 1},
        {"{\"text\": \"no prompt member\"}\n", 1},
        {"\"a bare string\"\n", 1},
        {"[\"prompt\"]\n", 1},
        {"{\"prompt\": \"ok\"}\n\n{\"prompt\": \"ok\"} trailing\n", 3},
        {"{\"prompt\": \"unterminated\n", 1},
        {"{\"prompt\": null}\n", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "", path[64], want[128], *out[4] = {0};
        write_temp(path, sizeof path, bad[i].text, strlen(bad[i].text));
        assert_int_equal(prompts_load_jsonl(path, out, 4, err, sizeof err), -1);
        snprintf(want, sizeof want, "%s:%d: expected {\"prompt\": \"...\"}", path, bad[i].line);
        assert_string_equal(err, want);
        unlink(path);
    }
    /* a NUL byte inside a line */
    char err[256] = "", *out[4];
    const char nul[] = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\0c\"}\n";
    assert_int_equal(load(nul, sizeof nul - 1, out, 4, err, sizeof err), -1);
    assert_non_null(strstr(err, ":2: expected"));
}

static void test_overflow_and_empty(void **state)
{
    (void)state;
    char err[256] = "", *out[4];
    const char three[] = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \"c\"}\n";
    assert_int_equal(load(three, sizeof three - 1, out, 2, err, sizeof err), -1);
    assert_non_null(strstr(err, ": more than 2 prompts"));
    assert_int_equal(load("", 0, out, 4, err, sizeof err), -1);
    assert_non_null(strstr(err, ": no prompts"));
    assert_int_equal(load("\n \n\r\n", 5, out, 4, err, sizeof err), -1);
    assert_non_null(strstr(err, ": no prompts"));
    assert_int_equal(prompts_load_jsonl("/nonexistent/prompts.jsonl", out, 4, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/prompts.jsonl"));
}

/* The repository's own prompt files all load. */
static void test_repository_files(void **state)
{
    (void)state;
    const char *files[] = {"configs/prompts/calibration.jsonl", "configs/prompts/heldout.jsonl",
                           "configs/prompts/code_calibration.jsonl"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char err[256] = "", *out[256];
        if (access(files[i], R_OK) != 0)
            continue;   /* not run from the repository root */
        int n = prompts_load_jsonl(files[i], out, 256, err, sizeof err);
        if (n < 1)
            fail_msg("%s", err);
        prompts_free(out, n);
    }
}

/* Plain text through a byte-level vocabulary: one id per byte (no merges),
 * no BOS (the tiny vocabulary has none); an empty prompt has no tokens. */
static void test_encode(void **state)
{
    (void)state;
    char path[128], err[256] = "";
    tmodel_spec spec = tmodel_default(GGUF_TT_F32);
    assert_int_equal(tmodel_write_temp(&spec, path, sizeof path), 0);
    gguf_file *g = NULL;
    tokenizer *tok = NULL;
    if (gguf_open(path, &g, err, sizeof err) != 0 || tokenizer_build(&tok, g, err, sizeof err) != 0)
        fail_msg("tokenizer: %s", err);
    gguf_close(g);
    unlink(path);
    char *texts[] = {"ab", "hello", ""};
    int32_t *ids[3], lens[3];
    assert_int_equal(prompts_encode(tok, texts, 2, 0, ids, lens, err, sizeof err), 0);
    int bos = tokenizer_add_bos(tok) && tokenizer_bos(tok) >= 0;
    assert_int_equal(lens[0], 2 + bos);
    assert_int_equal(lens[1], 5 + bos);
    for (int i = 0; i < 2; i++) {   /* the pieces spell the text back */
        char back[16] = "";
        for (int32_t k = bos; k < lens[i]; k++) {
            size_t pl;
            const char *p = tokenizer_piece(tok, ids[i][k], &pl);
            strncat(back, p, pl);
        }
        assert_string_equal(back, texts[i]);
        free(ids[i]);
    }
    /* an empty prompt is refused by number, nothing left allocated */
    assert_int_equal(prompts_encode(tok, texts, 3, 0, ids, lens, err, sizeof err), -1);
    assert_non_null(strstr(err, "prompt 3"));
    tokenizer_free(tok);
}

/* generate's prompt: given or from a file, valid UTF-8 only (the offset of
 * the first bad byte), a missing file named. */
static void test_user_text(void **state)
{
    (void)state;
    char err[256], path[] = "/tmp/selfspec-test-prompt-XXXXXX";
    size_t len;
    char *p = prompts_user_text(NULL, "caf\xc3\xa9", NULL, 0, NULL, &len, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(len, 5);
    assert_string_equal(p, "caf\xc3\xa9");
    free(p);
    assert_null(prompts_user_text(NULL, "ab\xff", NULL, 0, NULL, &len, err, sizeof err));
    assert_non_null(strstr(err, "offset 2"));
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "from a file\n", 12), 12);
    close(fd);
    p = prompts_user_text(NULL, NULL, path, 0, NULL, &len, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(len, 12);
    assert_memory_equal(p, "from a file\n", 12);
    free(p);
    unlink(path);
    assert_null(prompts_user_text(NULL, NULL, path, 0, NULL, &len, err, sizeof err));
    assert_non_null(strstr(err, path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_overflow_and_empty),
        cmocka_unit_test(test_repository_files),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_user_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
