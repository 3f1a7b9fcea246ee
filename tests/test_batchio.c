/*
 * test_batchio.c - the OpenAI batch file I/O (common/api/batchio.h):
 * input lines of both kinds with every field and every kind of bad line,
 * the custom_id set, output lines (shape, round trip through cJSON, byte
 * determinism, escaping of any text), the resume scan (torn last line,
 * garbage in the middle or at the end, a line spanning read chunks), and a
 * replay of the fuzzer's seed corpus (tests/fuzz/batchline_seeds/).
 * Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/batchio.h"

#define SEEDS_DIR "tests/fuzz/batchline_seeds"

static int parse(const char *line, batch_request *r, char *err, size_t errlen)
{
    return batch_parse_line(line, strlen(line), r, err, errlen);
}

static void parse_ok(const char *line, batch_request *r)
{
    char err[256] = "";
    int rc = parse(line, r, err, sizeof err);
    if (rc != 0)
        fail_msg("expected a valid line, got rc %d: %s\n  line: %s", rc, err, line);
}

/* ---- good lines ---- */

static void test_completion_every_field(void **state)
{
    batch_request r;
    parse_ok("{\"custom_id\": \"req-1\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
             "\"body\": {\"model\": \"smollm2\", \"prompt\": \"Once upon\", \"max_tokens\": 40, "
             "\"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 50, \"seed\": 1234, "
             "\"stop\": [\"\\n\\n\", \"END\"], \"n\": 1, \"stream\": false, \"ignore_eos\": true, "
             "\"frequency_penalty\": 0, \"logit_bias\": {}, \"user\": \"u1\"}, \"extra\": [1]}",
             &r);
    assert_string_equal(r.custom_id, "req-1");
    assert_int_equal(r.kind, BATCH_COMPLETION);
    assert_string_equal(r.model, "smollm2");
    assert_string_equal(r.prompt, "Once upon");
    assert_null(r.messages);
    assert_int_equal(r.max_tokens, 40);
    assert_true(r.max_tokens_given);
    assert_true(r.temperature == 0.7);
    assert_true(r.top_p == 0.9);
    assert_int_equal(r.top_k, 50);
    assert_true(r.has_seed);
    assert_true(r.seed == 1234);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n\n");
    assert_string_equal(r.stop[1], "END");
    assert_true(r.ignore_eos);
    batch_request_free(&r);
    assert_null(r.custom_id);
    batch_request_free(&r);              /* idempotent */
}

static void test_chat_every_field(void **state)
{
    batch_request r;
    parse_ok("{\"custom_id\":\"c-7\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
             "\"body\":{\"model\":\"m\",\"messages\":["
             "{\"role\":\"system\",\"content\":\"Be brief.\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},"
             "{\"type\":\"text\",\"text\":\"there\"}],\"name\":\"bob\"},"
             "{\"role\":\"assistant\",\"content\":\"Hello!\"},"
             "{\"role\":\"user\",\"content\":\"\\u00e9\\ud83d\\ude00 \\\"q\\\"\"}],"
             "\"max_completion_tokens\":12,\"max_tokens\":99,\"temperature\":0,\"top_p\":1,"
             "\"top_k\":-1,\"seed\":0,\"stop\":\"###\",\"n\":1,\"stream\":false,\"ignore_eos\":false,"
             "\"tools\":[]}}",
             &r);
    assert_string_equal(r.custom_id, "c-7");
    assert_int_equal(r.kind, BATCH_CHAT);
    assert_string_equal(r.model, "m");
    assert_null(r.prompt);
    assert_int_equal(r.n_messages, 4);
    assert_int_equal(r.messages[0].role, BATCH_ROLE_SYSTEM);
    assert_string_equal(r.messages[0].content, "Be brief.");
    assert_int_equal(r.messages[1].role, BATCH_ROLE_USER);
    assert_string_equal(r.messages[1].content, "Hi\nthere");
    assert_int_equal(r.messages[2].role, BATCH_ROLE_ASSISTANT);
    assert_string_equal(r.messages[2].content, "Hello!");
    assert_string_equal(r.messages[3].content, "\xC3\xA9\xF0\x9F\x98\x80 \"q\"");
    assert_int_equal(r.max_tokens, 12);      /* max_completion_tokens wins */
    assert_true(r.temperature == 0.0);
    assert_true(r.top_p == 1.0);
    assert_int_equal(r.top_k, 0);            /* -1 = off */
    assert_true(r.has_seed);
    assert_true(r.seed == 0);
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "###");
    assert_false(r.ignore_eos);
    batch_request_free(&r);
}

static void test_defaults_and_leniency(void **state)
{
    batch_request r;
    /* minimal completion: OpenAI's defaults */
    parse_ok("{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"x\"}}", &r);
    assert_int_equal(r.max_tokens, BATCH_DEFAULT_MAX_TOKENS_COMPLETION);
    assert_int_equal(r.max_tokens, 16);
    assert_false(r.max_tokens_given);
    assert_true(r.temperature == 1.0);
    assert_true(r.top_p == 1.0);
    assert_int_equal(r.top_k, 0);
    assert_false(r.has_seed);
    assert_int_equal(r.n_stop, 0);
    assert_false(r.ignore_eos);
    assert_null(r.model);
    batch_request_free(&r);
    /* minimal chat */
    parse_ok("{\"custom_id\":\"b\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
             "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}}", &r);
    assert_int_equal(r.max_tokens, BATCH_DEFAULT_MAX_TOKENS_CHAT);
    assert_int_equal(r.n_messages, 1);
    assert_string_equal(r.messages[0].content, "");
    batch_request_free(&r);
    /* null = not given, for every optional field; integral floats are ints;
     * a prompt array of one; top_k 0 = off; empty stop array; CRLF */
    parse_ok("{\"custom_id\":\"\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{"
             "\"prompt\":[\"only\"],\"model\":null,\"max_tokens\":null,\"max_completion_tokens\":null,"
             "\"temperature\":null,\"top_p\":null,\"top_k\":0,\"seed\":null,\"stop\":[],\"n\":null,"
             "\"stream\":null,\"ignore_eos\":null}}\r\n", &r);
    assert_string_equal(r.custom_id, "");
    assert_string_equal(r.prompt, "only");
    assert_int_equal(r.max_tokens, 16);
    assert_int_equal(r.n_stop, 0);
    batch_request_free(&r);
    parse_ok("  {\"custom_id\":\"f\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{"
             "\"prompt\":\"p\",\"max_tokens\":16.0,\"n\":1.0,\"seed\":9007199254740991,"
             "\"top_k\":1,\"temperature\":2,\"top_p\":1e-9,"
             "\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\"]}}\n", &r);
    assert_int_equal(r.max_tokens, 16);
    assert_true(r.seed == 9007199254740991ull);
    assert_int_equal(r.top_k, 1);
    assert_int_equal(r.n_stop, 8);
    assert_string_equal(r.stop[7], "8");
    batch_request_free(&r);
    /* a backslash-escaped "\u0000" is text, not a NUL */
    parse_ok("{\"custom_id\":\"g\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"\\\\u0000\"}}", &r);
    assert_string_equal(r.prompt, "\\u0000");
    batch_request_free(&r);
}

static void test_blank_lines(void **state)
{
    batch_request r;
    char err[64];
    assert_int_equal(parse("", &r, err, sizeof err), 1);
    assert_int_equal(parse("\n", &r, err, sizeof err), 1);
    assert_int_equal(parse("  \t\r\n", &r, err, sizeof err), 1);
    assert_null(r.custom_id);
    batch_request_free(&r);
}

/* ---- bad lines ---- */

typedef struct {
    const char *line;
    const char *want;         /* a substring of the error */
    const char *custom_id;    /* what out->custom_id must be (NULL: none) */
} bad_case;

#define C_HEAD "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":"
#define H_HEAD "{\"custom_id\":\"r2\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":"
#define CB(fields) C_HEAD "{\"prompt\":\"hi\"," fields "}}"
#define HB(msgs) H_HEAD "{\"messages\":" msgs "}}"
#define USER "{\"role\":\"user\",\"content\":\"hi\"}"

static const bad_case BAD[] = {
    { "not json", "line is not JSON", NULL },
    { "{\"custom_id\":\"r1\"", "line is not JSON", NULL },
    { C_HEAD "{\"prompt\":\"hi\"}} x", "line is not JSON", NULL },
    { "{\"custom_id\":\"r1\",}", "line is not JSON", NULL },
    { "{\"custom_id\":\"r1\",\"x\":\"\\ud800\"}", "line is not JSON", NULL },   /* lone surrogate */
    { "[1,2]", "line is not a JSON object (got array)", NULL },
    { "\"str\"", "line is not a JSON object (got string)", NULL },
    { "42", "line is not a JSON object (got number)", NULL },
    { "null", "line is not a JSON object", NULL },
    { "{\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"hi\"}}", "missing custom_id", NULL },
    { "{\"custom_id\":null,\"method\":\"POST\"}", "missing custom_id", NULL },
    { "{\"custom_id\":5,\"method\":\"POST\"}", "custom_id must be a string, got number", NULL },
    { "{\"custom_id\":[\"a\"]}", "custom_id must be a string, got array", NULL },
    { "{\"custom_id\":\"a\",\"custom_id\":\"b\"}", "duplicate key custom_id", NULL },
    { "{\"custom_id\":\"r1\",\"method\":\"GET\",\"url\":\"/v1/completions\",\"body\":{}}",
      "method must be \"POST\", got 'GET'", "r1" },
    { "{\"custom_id\":\"r1\",\"url\":\"/v1/completions\",\"body\":{}}", "missing method", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":1}", "method must be a string, got number", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":\"POST\",\"body\":{}}", "missing url", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{}}",
      "unknown url '/v1/embeddings'", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":3}", "url must be a string, got number", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/completions\"}", "missing body", "r1" },
    { C_HEAD "null}", "missing body", "r1" },
    { C_HEAD "[]}", "body must be an object, got array", "r1" },
    { C_HEAD "\"x\"}", "body must be an object, got string", "r1" },
    { "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{},\"body\":{}}",
      "duplicate key body", "r1" },
    /* completions: prompt */
    { C_HEAD "{}}", "missing body.prompt", "r1" },
    { C_HEAD "{\"prompt\":null}}", "missing body.prompt", "r1" },
    { C_HEAD "{\"prompt\":5}}", "body.prompt must be a string, got number", "r1" },
    { C_HEAD "{\"prompt\":{}}}", "body.prompt must be a string, got object", "r1" },
    { C_HEAD "{\"prompt\":[]}}", "body.prompt is an empty array", "r1" },
    { C_HEAD "{\"prompt\":[\"a\",\"b\"]}}", "body.prompt holds 2 prompts", "r1" },
    { C_HEAD "{\"prompt\":[[1,2]]}}", "body.prompt[0] must be a string", "r1" },
    { C_HEAD "{\"prompt\":[7]}}", "token-id prompts are not supported", "r1" },
    { C_HEAD "{\"prompt\":\"a\",\"prompt\":\"b\"}}", "duplicate key body.prompt", "r1" },
    /* chat: messages */
    { H_HEAD "{}}", "missing body.messages", "r2" },
    { HB("{}"), "body.messages must be an array, got object", "r2" },
    { HB("\"hi\""), "body.messages must be an array, got string", "r2" },
    { HB("[]"), "body.messages must not be empty", "r2" },
    { HB("[\"x\"]"), "body.messages[0] must be an object, got string", "r2" },
    { HB("[{\"role\":\"tool\",\"content\":\"x\"}]"),
      "body.messages[0].role must be one of system, user, assistant, got 'tool'", "r2" },
    { HB("[" USER ",{\"role\":\"developer\",\"content\":\"x\"}]"),
      "body.messages[1].role must be one of system, user, assistant, got 'developer'", "r2" },
    { HB("[{\"content\":\"x\"}]"), "missing body.messages[0].role", "r2" },
    { HB("[{\"role\":1,\"content\":\"x\"}]"), "body.messages[0].role must be a string, got number", "r2" },
    { HB("[" USER ",{\"role\":\"assistant\"}]"), "missing body.messages[1].content", "r2" },
    { HB("[{\"role\":\"user\",\"content\":null}]"), "missing body.messages[0].content", "r2" },
    { HB("[{\"role\":\"user\",\"content\":5}]"),
      "body.messages[0].content must be a string or an array of text parts, got number", "r2" },
    { HB("[{\"role\":\"user\",\"content\":[\"x\"]}]"),
      "body.messages[0].content[0] must be an object, got string", "r2" },
    { HB("[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]"),
      "body.messages[0].content[0].type must be \"text\" (only text parts are supported), got 'image_url'", "r2" },
    { HB("[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]"), "missing body.messages[0].content[0].type", "r2" },
    { HB("[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]"), "missing body.messages[0].content[0].text", "r2" },
    { HB("[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":3}]}]"),
      "body.messages[0].content[0].text must be a string, got number", "r2" },
    { HB("[{\"role\":\"user\",\"role\":\"user\",\"content\":\"x\"}]"), "duplicate key body.messages[0].role", "r2" },
    /* sampling fields: wrong types */
    { CB("\"max_tokens\":\"16\""), "body.max_tokens must be a number, got string", "r1" },
    { CB("\"max_completion_tokens\":true"), "body.max_completion_tokens must be a number, got boolean", "r1" },
    { CB("\"temperature\":\"hot\""), "body.temperature must be a number, got string", "r1" },
    { CB("\"top_p\":true"), "body.top_p must be a number, got boolean", "r1" },
    { CB("\"top_k\":\"5\""), "body.top_k must be a number, got string", "r1" },
    { CB("\"seed\":\"1\""), "body.seed must be a number, got string", "r1" },
    { CB("\"stop\":5"), "body.stop must be a string or an array of strings, got number", "r1" },
    { CB("\"stop\":{}"), "body.stop must be a string or an array of strings, got object", "r1" },
    { CB("\"stop\":[\"a\",1]"), "body.stop[1] must be a string, got number", "r1" },
    { CB("\"n\":\"1\""), "body.n must be a number, got string", "r1" },
    { CB("\"stream\":\"no\""), "body.stream must be a boolean, got string", "r1" },
    { CB("\"stream\":0"), "body.stream must be a boolean, got number", "r1" },
    { CB("\"ignore_eos\":1"), "body.ignore_eos must be a boolean, got number", "r1" },
    { CB("\"model\":5"), "body.model must be a string, got number", "r1" },
    { CB("\"model\":[]"), "body.model must be a string, got array", "r1" },
    /* sampling fields: ranges */
    { CB("\"max_tokens\":0"), "body.max_tokens must be >= 1, got 0", "r1" },
    { CB("\"max_tokens\":-5"), "body.max_tokens must be >= 1, got -5", "r1" },
    { CB("\"max_tokens\":1.5"), "body.max_tokens must be an integer, got 1.5", "r1" },
    { CB("\"max_tokens\":3e9"), "body.max_tokens must be <= 2147483647, got 3e+09", "r1" },
    { CB("\"max_completion_tokens\":0"), "body.max_completion_tokens must be >= 1, got 0", "r1" },
    { CB("\"temperature\":-0.1"), "body.temperature must be in [0, 2], got -0.1", "r1" },
    { CB("\"temperature\":2.5"), "body.temperature must be in [0, 2], got 2.5", "r1" },
    { CB("\"temperature\":1e999"), "body.temperature must be a finite number", "r1" },
    { CB("\"top_p\":1.5"), "body.top_p must be in (0, 1], got 1.5", "r1" },
    { CB("\"top_p\":0"), "body.top_p must be in (0, 1], got 0", "r1" },
    { CB("\"top_p\":-1"), "body.top_p must be in (0, 1], got -1", "r1" },
    { CB("\"top_k\":-2"), "body.top_k must be -1 or 0 (off) or in [1, 2147483647], got -2", "r1" },
    { CB("\"top_k\":1e10"), "body.top_k must be -1 or 0 (off)", "r1" },
    { CB("\"top_k\":2.5"), "body.top_k must be an integer, got 2.5", "r1" },
    { CB("\"seed\":-1"), "body.seed must be >= 0, got -1", "r1" },
    { CB("\"seed\":0.5"), "body.seed must be an integer, got 0.5", "r1" },
    { CB("\"seed\":1e300"), "body.seed must be <= 9007199254740991", "r1" },
    { CB("\"stop\":\"\""), "body.stop must not be an empty string", "r1" },
    { CB("\"stop\":[\"a\",\"\"]"), "body.stop[1] must not be empty", "r1" },
    { CB("\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]"),
      "body.stop holds 9 strings; at most 8 are supported", "r1" },
    { CB("\"n\":17"), "body.n must be <= 16", "r1" },
    { CB("\"n\":0"), "body.n must be >= 1", "r1" },
    { CB("\"n\":1.5"), "body.n must be an integer", "r1" },
    { CB("\"stream\":true"), "body.stream must be false (batch output is not streamed)", "r1" },
    { CB("\"top_p\":0.5,\"top_p\":0.6"), "duplicate key body.top_p", "r1" },
    /* the same checks on a chat body */
    { H_HEAD "{\"messages\":[" USER "],\"temperature\":3}}", "body.temperature must be in [0, 2], got 3", "r2" },
    { H_HEAD "{\"messages\":[" USER "],\"n\":-2}}", "body.n must be >= 1", "r2" },
    { H_HEAD "{\"messages\":[" USER "],\"stream\":true}}", "body.stream must be false", "r2" },
    /* \u0000 would cut a string short: refused, and custom_id not trusted */
    { C_HEAD "{\"prompt\":\"a\\u0000b\"}}", "strings may not hold \\u0000", NULL },
    { "{\"custom_id\":\"r\\u0000x\",\"method\":\"POST\"}", "strings may not hold \\u0000", NULL },
    /* invalid UTF-8 (raw bytes: cJSON passes them through) */
    { C_HEAD "{\"prompt\":\"\xff\"}}", "line is not valid UTF-8 (at byte 76)", "r1" },
    { C_HEAD "{\"prompt\":\"\xC0\xAF\"}}", "not valid UTF-8", "r1" },          /* overlong '/' */
    { C_HEAD "{\"prompt\":\"\xED\xA0\x80\"}}", "not valid UTF-8", "r1" },      /* a surrogate */
    { C_HEAD "{\"prompt\":\"\xE2\x82\"}}", "not valid UTF-8", "r1" },          /* truncated */
    { C_HEAD "{\"prompt\":\"\xF4\x90\x80\x80\"}}", "not valid UTF-8", "r1" },  /* > U+10FFFF */
    { C_HEAD "{\"prompt\":\"\x80\"}}", "not valid UTF-8", "r1" },              /* lone continuation */
    { C_HEAD "{\"prompt\":\"hi\",\"unknown\":\"\xfe\"}}", "not valid UTF-8", "r1" },
    { "{\"custom_id\":\"\xC3\x28\",\"method\":\"POST\"}", "custom_id is not valid UTF-8", NULL },
};

static void test_bad_lines(void **state)
{
    size_t n = sizeof BAD / sizeof BAD[0];
    for (size_t i = 0; i < n; i++) {
        batch_request r;
        char err[256] = "";
        int rc = parse(BAD[i].line, &r, err, sizeof err);
        if (rc != -1)
            fail_msg("case %zu: expected an error, got rc %d\n  line: %s", i, rc, BAD[i].line);
        if (!strstr(err, BAD[i].want))
            fail_msg("case %zu: error \"%s\" does not contain \"%s\"\n  line: %s", i, err, BAD[i].want,
                     BAD[i].line);
        if (BAD[i].custom_id == NULL ? r.custom_id != NULL
                                     : (r.custom_id == NULL || strcmp(r.custom_id, BAD[i].custom_id) != 0))
            fail_msg("case %zu: custom_id %s, want %s\n  line: %s", i, r.custom_id ? r.custom_id : "NULL",
                     BAD[i].custom_id ? BAD[i].custom_id : "NULL", BAD[i].line);
        /* nothing but custom_id survives an error */
        assert_null(r.prompt);
        assert_null(r.messages);
        assert_null(r.model);
        assert_int_equal(r.n_stop, 0);
        batch_request_free(&r);
    }
    printf("test_batchio: %zu bad lines rejected with the expected messages\n", n);
}

static void test_nul_byte_and_oversize(void **state)
{
    batch_request r;
    char err[256];
    static const char with_nul[] = C_HEAD "{\"prompt\":\"a\0b\"}}";
    assert_int_equal(batch_parse_line(with_nul, sizeof with_nul - 1, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "NUL byte"));
    batch_request_free(&r);

    /* a line of exactly BATCH_MAX_LINE bytes is fine, one more is not */
    const char *head = C_HEAD "{\"prompt\":\"";
    const char *tail = "\"}}";
    size_t fixed = strlen(head) + strlen(tail);
    char *line = malloc(BATCH_MAX_LINE + 3);
    assert_non_null(line);
    for (int extra = 0; extra <= 1; extra++) {
        size_t total = BATCH_MAX_LINE + (size_t)extra, k = strlen(head);
        memcpy(line, head, k);
        memset(line + k, 'a', total - fixed);
        memcpy(line + k + (total - fixed), tail, strlen(tail));
        line[total] = '\n';
        int rc = batch_parse_line(line, total + 1, &r, err, sizeof err);
        if (extra == 0) {
            assert_int_equal(rc, 0);
            assert_int_equal(strlen(r.prompt), total - fixed);
        } else {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(err, "over the limit"));
        }
        batch_request_free(&r);
    }
    free(line);
}

/* ---- the custom_id set ---- */

static void test_idset(void **state)
{
    batch_idset *s = batch_idset_new();
    assert_int_equal(batch_idset_count(s), 0);
    assert_int_equal(batch_idset_add(s, "a"), 0);
    assert_int_equal(batch_idset_add(s, "b"), 0);
    assert_int_equal(batch_idset_add(s, "a"), 1);
    assert_int_equal(batch_idset_add(s, ""), 0);
    assert_int_equal(batch_idset_add(s, ""), 1);
    assert_true(batch_idset_has(s, "a"));
    assert_false(batch_idset_has(s, "c"));
    assert_int_equal(batch_idset_count(s), 3);
    char id[32];
    for (int i = 0; i < 20000; i++) {         /* many growths */
        snprintf(id, sizeof id, "req-%d", i);
        assert_int_equal(batch_idset_add(s, id), 0);
    }
    for (int i = 0; i < 20000; i += 7) {
        snprintf(id, sizeof id, "req-%d", i);
        assert_int_equal(batch_idset_add(s, id), 1);
        assert_true(batch_idset_has(s, id));
    }
    assert_false(batch_idset_has(s, "req-20000"));
    assert_int_equal(batch_idset_count(s), 20003);
    batch_idset_free(s);
    batch_idset_free(NULL);

    /* duplicate detection across parsed lines */
    const char *lines[] = {
        "{\"custom_id\":\"x\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"1\"}}",
        "{\"custom_id\":\"y\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"2\"}}",
        "{\"custom_id\":\"x\",\"method\":\"POST\",\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"3\"}}",
    };
    int want[] = { 0, 0, 1 };
    s = batch_idset_new();
    for (int i = 0; i < 3; i++) {
        batch_request r;
        parse_ok(lines[i], &r);
        assert_int_equal(batch_idset_add(s, r.custom_id), want[i]);
        batch_request_free(&r);
    }
    batch_idset_free(s);
}

/* ---- output lines ---- */

/* Parse an output line: exactly one '\n', at the end. */
static cJSON *parse_output(const char *line)
{
    size_t n = strlen(line);
    assert_true(n > 1);
    assert_int_equal(line[n - 1], '\n');
    assert_ptr_equal(strchr(line, '\n'), line + n - 1);
    assert_null(strchr(line, '\r'));
    cJSON *j = cJSON_Parse(line);
    assert_non_null(j);
    return j;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        fail_msg("no member %s", k);
    return v;
}

/* "logprobs" / "top_logprobs": parsed per endpoint, refused out of range
 * or in the wrong place, and formatted as OpenAI's two shapes. */
static void test_logprobs(void **state)
{
    (void)state;
    static const char *head_c = "{\"custom_id\": \"c\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
                                "\"body\": {\"prompt\": \"x\", ";
    static const char *head_h = "{\"custom_id\": \"h\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
                                "\"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], ";
    struct { const char *head, *tail; int rc, want, top; const char *err; } cases[] = {
        {head_c, "\"logprobs\": 3}}", 0, 1, 3, NULL},
        {head_c, "\"logprobs\": 0}}", 0, 1, 0, NULL},
        {head_c, "\"logprobs\": null}}", 0, 0, 0, NULL},
        {head_c, "\"max_tokens\": 2}}", 0, 0, 0, NULL},
        {head_c, "\"logprobs\": 21}}", -1, 0, 0, "body.logprobs must be <= 20"},
        {head_c, "\"logprobs\": true}}", -1, 0, 0, "body.logprobs"},
        {head_c, "\"top_logprobs\": 2}}", -1, 0, 0, "body.top_logprobs is a chat field"},
        {head_h, "\"logprobs\": true, \"top_logprobs\": 5}}", 0, 1, 5, NULL},
        {head_h, "\"logprobs\": true}}", 0, 1, 0, NULL},
        {head_h, "\"logprobs\": false}}", 0, 0, 0, NULL},
        {head_h, "\"top_logprobs\": 2}}", -1, 0, 0, "needs \"logprobs\": true"},
        {head_h, "\"logprobs\": true, \"top_logprobs\": 21}}", -1, 0, 0, "body.top_logprobs must be <= 20"},
        {head_h, "\"logprobs\": 1}}", -1, 0, 0, "body.logprobs"},
    };
    /* fields selfspec does not support: a 400 naming them unless at their no-op value */
    static const char *unsupported[][2] = {
        {"\"response_format\": {\"type\": \"yaml\"}}}", "body.response_format.type must be"},
        {"\"tools\": [{\"type\": \"function\"}]}}", "body.tools is not supported"},
        {"\"best_of\": 2}}", "body.best_of must be 1"},
        {"\"echo\": true}}", "body.echo is not supported"},
    };
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        char line[512], err[256] = "";
        snprintf(line, sizeof line, "%s%s", head_c, unsupported[i][0]);
        batch_request r;
        if (parse(line, &r, err, sizeof err) != -1 || !strstr(err, unsupported[i][1]))
            fail_msg("unsupported %zu: err \"%s\"\n  line: %s", i, err, line);
        batch_request_free(&r);
    }
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char line[512], err[256] = "";
        snprintf(line, sizeof line, "%s%s", cases[i].head, cases[i].tail);
        batch_request r;
        int rc = parse(line, &r, err, sizeof err);
        if (rc != cases[i].rc || (rc == 0 && (r.want_logprobs != cases[i].want || r.top_logprobs != cases[i].top)) ||
            (rc != 0 && !strstr(err, cases[i].err)))
            fail_msg("case %zu: rc %d want %d top %d err \"%s\"\n  line: %s", i, rc, r.want_logprobs,
                     r.top_logprobs, err, line);
        batch_request_free(&r);
    }
    /* formatting: one token with two alternatives, one with none; a
     * partial UTF-8 byte token shows as U+FFFD, its bytes exactly */
    batch_logprob lp[2] = {
        {.text = " Paris", .len = 6, .logprob = -0.25f, .text_offset = 0, .n_top = 2,
         .top_text = {" Paris", " the"}, .top_len = {6, 4}, .top_lp = {-0.25f, -2.0f}},
        {.text = "\xe2", .len = 1, .logprob = -1.5f, .text_offset = 6, .n_top = 0},
    };
    for (int chat = 0; chat <= 1; chat++) {
        batch_result res = {.custom_id = "q", .kind = chat ? BATCH_CHAT : BATCH_COMPLETION, .created = 1,
                            .text = " Paris", .finish = BATCH_FINISH_STOP, .prompt_tokens = 1,
                            .completion_tokens = 2, .logprobs = lp, .n_logprobs = 2};
        char err[128];
        char *line = batch_format_result(&res, err, sizeof err);
        assert_non_null(line);
        cJSON *j = parse_output(line);
        const cJSON *c0 = cJSON_GetArrayItem(get(get(get(j, "response"), "body"), "choices"), 0);
        const cJSON *l = get(c0, "logprobs");
        if (chat) {
            const cJSON *content = get(l, "content"), *e0 = cJSON_GetArrayItem(content, 0);
            const cJSON *e1 = cJSON_GetArrayItem(content, 1);
            assert_int_equal(cJSON_GetArraySize(content), 2);
            assert_string_equal(get(e0, "token")->valuestring, " Paris");
            assert_true(get(e0, "logprob")->valuedouble == -0.25);
            assert_int_equal(cJSON_GetArraySize(get(e0, "bytes")), 6);
            assert_int_equal(cJSON_GetArraySize(get(e0, "top_logprobs")), 2);
            assert_string_equal(get(cJSON_GetArrayItem(get(e0, "top_logprobs"), 1), "token")->valuestring, " the");
            assert_string_equal(get(e1, "token")->valuestring, "\xef\xbf\xbd");
            assert_int_equal(cJSON_GetArrayItem(get(e1, "bytes"), 0)->valueint, 0xe2);
            assert_int_equal(cJSON_GetArraySize(get(e1, "top_logprobs")), 0);
        } else {
            assert_int_equal(cJSON_GetArraySize(get(l, "tokens")), 2);
            assert_true(cJSON_GetArrayItem(get(l, "token_logprobs"), 1)->valuedouble == -1.5);
            assert_int_equal(cJSON_GetArrayItem(get(l, "text_offset"), 1)->valueint, 6);
            const cJSON *t0 = cJSON_GetArrayItem(get(l, "top_logprobs"), 0);
            assert_true(get(t0, " the")->valuedouble == -2.0);
            assert_int_equal(cJSON_GetArraySize(cJSON_GetArrayItem(get(l, "top_logprobs"), 1)), 0);
        }
        cJSON_Delete(j);
        free(line);
    }
}

static void test_format_completion(void **state)
{
    batch_result res = { .custom_id = "req-1", .kind = BATCH_COMPLETION, .model = "smollm2",
                         .created = 1700000000, .text = " there was", .finish = BATCH_FINISH_LENGTH,
                         .prompt_tokens = 3, .completion_tokens = 16 };
    char err[128];
    char *line = batch_format_result(&res, err, sizeof err);
    assert_non_null(line);
    char hex[17];
    batch_output_hex("req-1", 0, hex);
    assert_int_equal(strlen(hex), 16);
    char want_id[64];
    cJSON *j = parse_output(line);
    snprintf(want_id, sizeof want_id, "batch_req_%s", hex);
    assert_string_equal(get(j, "id")->valuestring, want_id);
    assert_string_equal(get(j, "custom_id")->valuestring, "req-1");
    assert_true(cJSON_IsNull(get(j, "error")));
    const cJSON *resp = get(j, "response");
    assert_int_equal(get(resp, "status_code")->valueint, 200);
    snprintf(want_id, sizeof want_id, "req_%s", hex);
    assert_string_equal(get(resp, "request_id")->valuestring, want_id);
    const cJSON *body = get(resp, "body");
    snprintf(want_id, sizeof want_id, "cmpl-%s", hex);
    assert_string_equal(get(body, "id")->valuestring, want_id);
    assert_string_equal(get(body, "object")->valuestring, "text_completion");
    assert_true(get(body, "created")->valuedouble == 1700000000.0);
    assert_string_equal(get(body, "model")->valuestring, "smollm2");
    const cJSON *choices = get(body, "choices");
    assert_int_equal(cJSON_GetArraySize(choices), 1);
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0);
    assert_int_equal(get(c0, "index")->valueint, 0);
    assert_string_equal(get(c0, "text")->valuestring, " there was");
    assert_true(cJSON_IsNull(get(c0, "logprobs")));
    assert_string_equal(get(c0, "finish_reason")->valuestring, "length");
    const cJSON *usage = get(body, "usage");
    assert_int_equal(get(usage, "prompt_tokens")->valueint, 3);
    assert_int_equal(get(usage, "completion_tokens")->valueint, 16);
    assert_int_equal(get(usage, "total_tokens")->valueint, 19);
    cJSON_Delete(j);
    /* the exact bytes (member order is part of the format) */
    char want[1024];
    snprintf(want, sizeof want,
             "{\"id\":\"batch_req_%s\",\"custom_id\":\"req-1\",\"response\":{\"status_code\":200,"
             "\"request_id\":\"req_%s\",\"body\":{\"id\":\"cmpl-%s\",\"object\":\"text_completion\","
             "\"created\":1700000000,\"model\":\"smollm2\",\"choices\":[{\"index\":0,\"text\":\" there was\","
             "\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,"
             "\"completion_tokens\":16,\"total_tokens\":19},\"system_fingerprint\":null}},\"error\":null}\n", hex,
             hex, hex);
    assert_string_equal(line, want);
    /* a fingerprint, and usage details when asked */
    res.system_fingerprint = "fp_0123456789abcdef";
    res.usage_details = 1;
    res.accepted_prediction_tokens = 9;
    res.rejected_prediction_tokens = 4;
    res.cached_tokens = 2;
    char *det = batch_format_result(&res, err, sizeof err);
    assert_non_null(strstr(det, "\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":2},"
                                "\"completion_tokens_details\":{\"accepted_prediction_tokens\":9,"
                                "\"rejected_prediction_tokens\":4}},\"system_fingerprint\":\"fp_0123456789abcdef\"}"));
    free(det);
    res.system_fingerprint = NULL;
    res.usage_details = 0;
    /* determinism: same inputs, same bytes; another custom_id, another id */
    char *again = batch_format_result(&res, err, sizeof err);
    assert_string_equal(line, again);
    free(again);
    res.custom_id = "req-2";
    again = batch_format_result(&res, err, sizeof err);
    assert_string_not_equal(line, again);
    char hex2[17];
    batch_output_hex("req-2", 0, hex2);
    assert_string_not_equal(hex, hex2);
    free(again);
    free(line);
}

static void test_format_chat(void **state)
{
    batch_result res = { .custom_id = "c-7", .kind = BATCH_CHAT, .model = NULL, .created = 5,
                         .text = "Hello!", .finish = BATCH_FINISH_STOP, .prompt_tokens = 20,
                         .completion_tokens = 2 };
    char err[128], hex[17];
    char *line = batch_format_result(&res, err, sizeof err);
    assert_non_null(line);
    batch_output_hex("c-7", 0, hex);
    cJSON *j = parse_output(line);
    const cJSON *body = get(get(j, "response"), "body");
    char want_id[64];
    snprintf(want_id, sizeof want_id, "chatcmpl-%s", hex);
    assert_string_equal(get(body, "id")->valuestring, want_id);
    assert_string_equal(get(body, "object")->valuestring, "chat.completion");
    assert_string_equal(get(body, "model")->valuestring, "");
    const cJSON *c0 = cJSON_GetArrayItem(get(body, "choices"), 0);
    assert_int_equal(get(c0, "index")->valueint, 0);
    const cJSON *msg = get(c0, "message");
    assert_string_equal(get(msg, "role")->valuestring, "assistant");
    assert_string_equal(get(msg, "content")->valuestring, "Hello!");
    assert_null(cJSON_GetObjectItemCaseSensitive(c0, "text"));
    assert_string_equal(get(c0, "finish_reason")->valuestring, "stop");
    assert_int_equal(get(get(body, "usage"), "total_tokens")->valueint, 22);
    cJSON_Delete(j);
    char *again = batch_format_result(&res, err, sizeof err);
    assert_string_equal(line, again);
    free(again);
    free(line);
}

static void test_format_any_text(void **state)
{
    /* every byte 1..127, then non-ASCII, U+2028/2029, quotes, backslashes */
    char text[512];
    size_t o = 0;
    for (int c = 1; c < 128; c++)
        text[o++] = (char)c;
    const char *more = "\"q\" \\ \\n \xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80 \xE2\x80\xA8\xE2\x80\xA9 \r\n\r\n end";
    memcpy(text + o, more, strlen(more) + 1);
    char err[128];
    for (int kind = 0; kind < 2; kind++) {
        batch_result res = { .custom_id = "id \"with\" quotes\n\ttab \xE2\x9C\x93", .kind = (batch_kind)kind,
                             .model = "m\x01", .created = 0, .text = text, .finish = BATCH_FINISH_STOP };
        char *line = batch_format_result(&res, err, sizeof err);
        assert_non_null(line);
        cJSON *j = parse_output(line);
        const cJSON *c0 = cJSON_GetArrayItem(get(get(get(j, "response"), "body"), "choices"), 0);
        const char *got = kind == BATCH_CHAT ? get(get(c0, "message"), "content")->valuestring
                                             : get(c0, "text")->valuestring;
        assert_string_equal(got, text);
        assert_string_equal(get(j, "custom_id")->valuestring, res.custom_id);
        assert_string_equal(get(get(get(j, "response"), "body"), "model")->valuestring, "m\x01");
        cJSON_Delete(j);
        /* only printable ASCII or UTF-8 lead/continuation bytes in the line */
        for (const unsigned char *p = (const unsigned char *)line; *p; p++)
            assert_true(*p >= 0x20 || *p == '\n');
        free(line);
    }
    /* invalid UTF-8 in text becomes U+FFFD (one per maximal subpart) */
    batch_result res = { .custom_id = "u", .kind = BATCH_COMPLETION, .model = "m",
                         .text = "a\xff" "b\xE2\x82" "c\xF0\x9F\x98", .finish = BATCH_FINISH_STOP };
    char *line = batch_format_result(&res, err, sizeof err);
    assert_non_null(line);
    cJSON *j = parse_output(line);
    const cJSON *c0 = cJSON_GetArrayItem(get(get(get(j, "response"), "body"), "choices"), 0);
    assert_string_equal(get(c0, "text")->valuestring,
                        "a\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD");
    cJSON_Delete(j);
    free(line);
}

static void test_format_error(void **state)
{
    char hex[17], want[512];
    char *line = batch_format_error("r1", 7, 400, "body.top_p must be in (0, 1], got 1.5");
    assert_non_null(line);
    batch_output_hex("r1", 0, hex);
    snprintf(want, sizeof want,
             "{\"id\":\"batch_req_%s\",\"custom_id\":\"r1\",\"response\":{\"status_code\":400,"
             "\"request_id\":\"req_%s\",\"body\":null},\"error\":{\"message\":"
             "\"body.top_p must be in (0, 1], got 1.5\",\"type\":\"invalid_request_error\","
             "\"param\":null,\"code\":null}}\n", hex, hex);
    assert_string_equal(line, want);
    cJSON *j = parse_output(line);
    assert_true(cJSON_IsNull(get(get(j, "response"), "body")));
    cJSON_Delete(j);
    char *again = batch_format_error("r1", 99, 400, "body.top_p must be in (0, 1], got 1.5");
    assert_string_equal(line, again);           /* line_no only matters without custom_id */
    free(again);
    free(line);

    /* no custom_id: null, and ids that differ by input line */
    char *a = batch_format_error(NULL, 3, 400, "line is not JSON (error near byte 0)");
    char *b = batch_format_error(NULL, 4, 400, "line is not JSON (error near byte 0)");
    char *a2 = batch_format_error(NULL, 3, 400, "line is not JSON (error near byte 0)");
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, a2);
    assert_string_not_equal(a, b);
    j = parse_output(a);
    assert_true(cJSON_IsNull(get(j, "custom_id")));
    assert_int_equal(get(get(j, "response"), "status_code")->valueint, 400);
    assert_string_equal(get(get(j, "error"), "type")->valuestring, "invalid_request_error");
    cJSON_Delete(j);
    free(a);
    free(b);
    free(a2);

    /* a server error; a message with newlines and invalid UTF-8 */
    line = batch_format_error("r\"2", 1, 500, "boom\nline2 \xff");
    j = parse_output(line);
    assert_string_equal(get(j, "custom_id")->valuestring, "r\"2");
    assert_int_equal(get(get(j, "response"), "status_code")->valueint, 500);
    assert_string_equal(get(get(j, "error"), "type")->valuestring, "server_error");
    assert_string_equal(get(get(j, "error"), "message")->valuestring, "boom\nline2 \xEF\xBF\xBD");
    cJSON_Delete(j);
    free(line);
    assert_null(batch_format_error("r", 1, 99, "x"));
    assert_null(batch_format_error("r", 1, 600, "x"));
}

static void test_format_bad_args(void **state)
{
    char err[128];
    batch_result ok = { .custom_id = "a", .kind = BATCH_CHAT, .text = "t" };
    batch_result r = ok;
    r.custom_id = NULL;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.text = NULL;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.kind = (batch_kind)7;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.created = -1;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.created = 1000000000000000ll;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.prompt_tokens = -1;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.completion_tokens = (int64_t)1 << 31;
    assert_null(batch_format_result(&r, err, sizeof err));
    r = ok, r.finish = (batch_finish)3;
    assert_null(batch_format_result(&r, err, sizeof err));
    assert_null(batch_format_result(NULL, err, sizeof err));
    /* the largest values print as plain integers */
    r = ok, r.created = 999999999999999ll, r.prompt_tokens = INT32_MAX, r.completion_tokens = INT32_MAX;
    char *line = batch_format_result(&r, err, sizeof err);
    assert_non_null(line);
    assert_non_null(strstr(line, "\"created\":999999999999999,"));
    assert_non_null(strstr(line, "\"total_tokens\":4294967294}"));
    free(line);
}

/* ---- resume ---- */

static void write_file(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* The output of an uninterrupted run over ids[0..n) (malloc'd). */
static char *run_output(const char **ids, int n)
{
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (int i = 0; i < n; i++) {
        char err[128], text[64];
        char *line;
        if (i % 3 == 2) {
            line = batch_format_error(i == 5 ? NULL : ids[i], (size_t)i + 1, 400, "bad line");
        } else {
            snprintf(text, sizeof text, "answer %d\n\"quoted\"", i);
            batch_result r = { .custom_id = ids[i], .kind = (batch_kind)(i & 1), .model = "m",
                               .created = 1700000000, .text = text, .prompt_tokens = i,
                               .completion_tokens = 2 * i };
            line = batch_format_result(&r, err, sizeof err);
        }
        assert_non_null(line);
        size_t k = strlen(line);
        assert_true(len + k < cap);
        memcpy(out + len, line, k);
        len += k;
        free(line);
    }
    out[len] = '\0';
    return out;
}

static void test_scan_resume(void **state)
{
    const char *ids[] = { "a", "b", "c", "d", "e", "f", "g" };
    char path[] = "/tmp/test_batchio_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char *full = run_output(ids, 7);
    size_t full_len = strlen(full);

    /* kill points: the file holds a prefix of the full output; every byte
     * around each line end, a stride elsewhere */
    for (size_t cut = 0; cut <= full_len; cut++) {
        int near_end = 0;
        for (size_t k = cut > 2 ? cut - 2 : 0; k <= cut + 2 && k < full_len; k++)
            near_end |= full[k] == '\n';
        if (!near_end && cut % 41 != 0 && cut != full_len)
            continue;
        char err[256] = "";
        write_file(path, full, cut);
        batch_idset *done = batch_idset_new();
        off_t valid = -1;
        size_t lines = 99;
        if (batch_scan_output(path, done, &valid, &lines, err, sizeof err) != 0)
            fail_msg("cut %zu: %s", cut, err);
        /* the valid prefix ends at the last newline within the cut */
        size_t want = 0, want_lines = 0;
        for (size_t i = 0; i < cut; i++)
            if (full[i] == '\n')
                want = i + 1, want_lines++;
        assert_int_equal((size_t)valid, want);
        assert_int_equal(lines, want_lines);
        /* the ids of the complete lines (line 6 has no custom_id) */
        size_t want_ids = want_lines - (want_lines >= 6);
        assert_int_equal(batch_idset_count(done), want_ids);
        for (size_t i = 0; i < 7; i++)
            assert_int_equal(batch_idset_has(done, ids[i]), i < want_lines && i != 5);
        /* the buffer variant agrees */
        size_t bvalid = 0, blines = 0;
        batch_idset *done2 = batch_idset_new();
        assert_int_equal(batch_scan_buffer(full, cut, done2, &bvalid, &blines, err, sizeof err), 0);
        assert_int_equal(bvalid, want);
        assert_int_equal(blines, want_lines);
        assert_int_equal(batch_idset_count(done2), want_ids);
        batch_idset_free(done2);
        /* resume: truncate, redo the rest; byte-identical to the full run */
        assert_int_equal(truncate(path, valid), 0);
        FILE *f = fopen(path, "ab");
        assert_non_null(f);
        char *rest = run_output(ids, 7);     /* regenerated, not copied */
        size_t off = 0;
        for (size_t i = 0; i < want_lines; i++)
            off = (size_t)(strchr(rest + off, '\n') - rest) + 1;
        fputs(rest + off, f);
        fclose(f);
        free(rest);
        size_t got_len;
        FILE *g = fopen(path, "rb");
        char *got = malloc(full_len + 16);
        got_len = fread(got, 1, full_len + 16, g);
        fclose(g);
        assert_int_equal(got_len, full_len);
        assert_memory_equal(got, full, full_len);
        free(got);
        batch_idset_free(done);
    }
    free(full);
    unlink(path);

    /* a missing file is empty */
    batch_idset *done = batch_idset_new();
    off_t valid = 5;
    size_t lines = 5;
    char err[256];
    assert_int_equal(batch_scan_output("/tmp/test_batchio_no_such_file", done, &valid, &lines, err,
                                       sizeof err), 0);
    assert_int_equal(valid, 0);
    assert_int_equal(lines, 0);
    assert_int_equal(batch_idset_count(done), 0);
    /* a folder is not a file to resume into */
    assert_int_equal(batch_scan_output("/tmp", done, &valid, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    batch_idset_free(done);
}

static void expect_scan_error(const char *data, const char *want)
{
    char path[] = "/tmp/test_batchio_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, data, strlen(data));
    batch_idset *done = batch_idset_new();
    off_t valid;
    size_t bvalid;
    char err[512] = "";
    assert_int_equal(batch_scan_output(path, done, &valid, NULL, err, sizeof err), -1);
    if (!strstr(err, want))
        fail_msg("scan error \"%s\" does not contain \"%s\"", err, want);
    assert_int_equal(batch_scan_buffer(data, strlen(data), done, &bvalid, NULL, err, sizeof err), -1);
    if (!strstr(err, want))
        fail_msg("buffer scan error \"%s\" does not contain \"%s\"", err, want);
    batch_idset_free(done);
    unlink(path);
}

static void test_scan_garbage(void **state)
{
    char *good = batch_format_error("x", 1, 400, "m");
    char *good2 = batch_format_error("y", 2, 400, "m");
    char buf[4096];
    snprintf(buf, sizeof buf, "%sgarbage\n%s", good, good2);
    expect_scan_error(buf, "line 2 is not a batch output line (not JSON)");
    snprintf(buf, sizeof buf, "%s\n%s", good, good2);
    expect_scan_error(buf, "line 2 is not a batch output line (it is empty)");
    snprintf(buf, sizeof buf, "%s{\"a\":1}\n", good);
    expect_scan_error(buf, "line 2 is not a batch output line (no \"id\"");
    snprintf(buf, sizeof buf, "{\"id\":\"batch_req_1\",\"custom_id\":5,\"response\":null,\"error\":null}\n");
    expect_scan_error(buf, "line 1 is not a batch output line (no \"custom_id\"");
    snprintf(buf, sizeof buf, "{\"id\":\"batch_req_1\",\"custom_id\":\"a\"}\n");
    expect_scan_error(buf, "no \"response\" and \"error\"");
    snprintf(buf, sizeof buf, "%s[1]\n", good);
    expect_scan_error(buf, "line 2 is not a batch output line (not a JSON object)");
    snprintf(buf, sizeof buf, "{\"id\":\"batch_req_\xff\",\"custom_id\":\"a\",\"response\":null,\"error\":null}\n");
    expect_scan_error(buf, "invalid UTF-8");
    /* a tail that is not the start of an output line: not ours, keep it */
    expect_scan_error("hello", "ends with 5 bytes without a newline that do not start an output line");
    snprintf(buf, sizeof buf, "%s%s{\"foo\"", good, good2);
    expect_scan_error(buf, "ends with 6 bytes");
    /* a short tail that is a prefix of the line head is torn, not garbage */
    batch_idset *done = batch_idset_new();
    size_t valid;
    char err[256];
    snprintf(buf, sizeof buf, "%s{\"id\":\"bat", good);
    assert_int_equal(batch_scan_buffer(buf, strlen(buf), done, &valid, NULL, err, sizeof err), 0);
    assert_int_equal(valid, strlen(good));
    batch_idset_free(done);
    free(good);
    free(good2);
}

static void test_scan_long_lines(void **state)
{
    /* lines far longer than the reader's chunk */
    size_t tlen = 300000;
    char *text = malloc(tlen + 1);
    assert_non_null(text);
    for (size_t i = 0; i < tlen; i++)
        text[i] = (char)('a' + i % 26);
    text[tlen] = '\0';
    char err[128];
    batch_result r = { .custom_id = "long-1", .kind = BATCH_COMPLETION, .model = "m", .text = text };
    char *l1 = batch_format_result(&r, err, sizeof err);
    r.custom_id = "long-2";
    char *l2 = batch_format_result(&r, err, sizeof err);
    size_t n1 = strlen(l1), n2 = strlen(l2);
    char *all = malloc(n1 + n2 + 1);
    memcpy(all, l1, n1);
    memcpy(all + n1, l2, n2 + 1);
    char path[] = "/tmp/test_batchio_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, all, n1 + n2 - 1000);   /* torn second line */
    batch_idset *done = batch_idset_new();
    off_t valid;
    size_t lines;
    assert_int_equal(batch_scan_output(path, done, &valid, &lines, err, sizeof err), 0);
    assert_int_equal((size_t)valid, n1);
    assert_int_equal(lines, 1);
    assert_true(batch_idset_has(done, "long-1"));
    assert_false(batch_idset_has(done, "long-2"));
    write_file(path, all, n1 + n2);
    assert_int_equal(batch_scan_output(path, done, &valid, &lines, err, sizeof err), 0);
    assert_int_equal((size_t)valid, n1 + n2);
    assert_int_equal(lines, 2);
    assert_true(batch_idset_has(done, "long-2"));
    batch_idset_free(done);
    unlink(path);
    free(all);
    free(l1);
    free(l2);
    free(text);
}

/* ---- the fuzzer's seeds ---- */

static void test_seed_corpus(void **state)
{
    DIR *d = opendir(SEEDS_DIR);
    if (!d)
        fail_msg("cannot open %s (run tests from the repository root)", SEEDS_DIR);
    struct dirent *e;
    int n = 0, ok = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[512], buf[8192], err[256];
        snprintf(path, sizeof path, "%s/%s", SEEDS_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        batch_request r;
        int rc = batch_parse_line(buf, len, &r, err, sizeof err);
        assert_true(rc >= -1 && rc <= 1);
        if (rc == -1)
            assert_true(err[0] != '\0');
        ok += rc == 0;
        batch_request_free(&r);
        n++;
    }
    closedir(d);
    assert_true(n > 0);
    assert_true(ok > 0);
}

/* response_format: text, json_object, json_schema (the schema kept as
 * compact text for the job to compile), and every malformed shape. */
static void test_response_format(void **state)
{
    (void)state;
    const char *head = "{\"custom_id\": \"c\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": "
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": ";
    static const struct {
        const char *rf;
        int rc;
        batch_format fmt;
        const char *schema_or_err;
    } cases[] = {
        {"{\"type\": \"text\"}", 0, BATCH_TEXT, NULL},
        {"{\"type\": \"json_object\"}", 0, BATCH_JSON_OBJECT, NULL},
        {"{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\", \"strict\": true, "
         "\"schema\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}",
         0, BATCH_JSON_SCHEMA, "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}"},
        {"{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\"}}", 0, BATCH_JSON_OBJECT, NULL},
        {"null", 0, BATCH_TEXT, NULL},
        {"\"json\"", -1, 0, "body.response_format must be an object"},
        {"{}", -1, 0, "body.response_format.type must be a string"},
        {"{\"type\": \"json_schema\"}", -1, 0, "json_schema must be an object"},
        {"{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {}}}", -1, 0, "name must be a string"},
        {"{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\", \"schema\": 3}}", -1, 0,
         "schema must be an object"},
        {"{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\", \"strict\": 1, \"schema\": {}}}", -1, 0,
         "strict must be a boolean"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char line[1024], err[256] = "";
        snprintf(line, sizeof line, "%s%s}}", head, cases[i].rf);
        batch_request r;
        int rc = parse(line, &r, err, sizeof err);
        if (rc != cases[i].rc || (rc == 0 && r.response_format != cases[i].fmt) ||
            (rc == 0 && cases[i].schema_or_err && (!r.json_schema || strcmp(r.json_schema, cases[i].schema_or_err))) ||
            (rc != 0 && !strstr(err, cases[i].schema_or_err)))
            fail_msg("case %zu: rc %d format %d schema %s err \"%s\"\n  line: %s", i, rc, (int)r.response_format,
                     r.json_schema ? r.json_schema : "-", err, line);
        batch_request_free(&r);
    }
}

/* The logits processors: penalties, logit_bias, min_tokens parsed and
 * range-checked. */
static void test_processors(void **state)
{
    (void)state;
    const char *head = "{\"custom_id\": \"c\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
                       "{\"prompt\": \"x\", \"max_tokens\": 10, ";
    char line[1024], err[256];
    batch_request r;
    snprintf(line, sizeof line, "%s%s", head,
             "\"presence_penalty\": 0.5, \"frequency_penalty\": -1.5, \"min_tokens\": 4, "
             "\"logit_bias\": {\"5\": 1, \"70000\": -100}}}");
    assert_int_equal(parse(line, &r, err, sizeof err), 0);
    assert_true(r.presence_penalty == 0.5 && r.frequency_penalty == -1.5 && r.min_tokens == 4);
    assert_int_equal(r.n_bias, 2);
    assert_true(r.bias_ids[0] == 5 && r.bias_vals[0] == 1.0f && r.bias_ids[1] == 70000 && r.bias_vals[1] == -100.0f);
    batch_request_free(&r);
    static const char *const bad[][2] = {
        {"\"presence_penalty\": 2.5}}", "body.presence_penalty must be in [-2, 2]"},
        {"\"frequency_penalty\": \"a\"}}", "body.frequency_penalty"},
        {"\"min_tokens\": 11}}", "must not exceed max_tokens"},
        {"\"min_tokens\": -1}}", "body.min_tokens"},
        {"\"logit_bias\": {\"x\": 1}}}", "keys must be token ids"},
        {"\"logit_bias\": {\"-3\": 1}}}", "keys must be token ids"},
        {"\"logit_bias\": {\"3\": 101}}}", "values must be in [-100, 100]"},
        {"\"logit_bias\": [1]}}", "must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(line, sizeof line, "%s%s", head, bad[i][0]);
        err[0] = '\0';
        if (parse(line, &r, err, sizeof err) != -1 || !strstr(err, bad[i][1]))
            fail_msg("bad %zu: err \"%s\"\n  line: %s", i, err, line);
        batch_request_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_every_field),
        cmocka_unit_test(test_chat_every_field),
        cmocka_unit_test(test_defaults_and_leniency),
        cmocka_unit_test(test_blank_lines),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_nul_byte_and_oversize),
        cmocka_unit_test(test_idset),
        cmocka_unit_test(test_format_completion),
        cmocka_unit_test(test_format_chat),
        cmocka_unit_test(test_format_any_text),
        cmocka_unit_test(test_format_error),
        cmocka_unit_test(test_format_bad_args),
        cmocka_unit_test(test_scan_resume),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_response_format),
        cmocka_unit_test(test_processors),
        cmocka_unit_test(test_scan_garbage),
        cmocka_unit_test(test_scan_long_lines),
        cmocka_unit_test(test_seed_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
