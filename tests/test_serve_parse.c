/*
 * test_serve_parse.c - what the server and the worker parse beyond batch
 * lines: HTTP request bodies (batch_parse_body: stream allowed, the batch
 * checks kept, the caller's id), Redis URLs (redisq_parse_url: user,
 * password, percent-escapes, port, db, every malformed part), and a replay
 * of the fuzzer's seeds (tests/fuzz/oaibody_seeds/) through the fuzz target
 * itself under ASan/UBSan. Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/batchio.h"
#include "serve/redisq.h"

#include "fuzz/fuzz_oaibody.c"

#define SEEDS_DIR "tests/fuzz/oaibody_seeds"

static int body(const char *s, batch_kind kind, batch_request *r, int *stream, char *err)
{
    return batch_parse_body(s, strlen(s), kind, "srv-7", r, stream, err, 256);
}

static void test_body_ok(void **state)
{
    batch_request r;
    int stream = -1;
    char err[256];
    assert_int_equal(body("{\"prompt\": \"Hi\", \"max_tokens\": 5, \"temperature\": 0, \"stream\": true, "
                          "\"stream_options\": {\"include_usage\": true}}", BATCH_COMPLETION, &r, &stream, err), 0);
    assert_int_equal(stream, 1);
    assert_string_equal(r.custom_id, "srv-7");
    assert_string_equal(r.prompt, "Hi");
    assert_int_equal(r.max_tokens, 5);
    batch_request_free(&r);
    assert_int_equal(body("{\"messages\": [{\"role\": \"user\", \"content\": \"Yo\"}], \"stream\": false}", BATCH_CHAT,
                          &r, &stream, err), 0);
    assert_int_equal(stream, 0);
    assert_int_equal(r.kind, BATCH_CHAT);
    assert_int_equal(r.n_messages, 1);
    assert_int_equal(r.max_tokens, BATCH_DEFAULT_MAX_TOKENS_CHAT);
    batch_request_free(&r);
}

static void test_body_bad(void **state)
{
    static const struct {
        const char *body;
        batch_kind kind;
        const char *want;
    } cases[] = {
        {"{\"prompt\": \"x\", \"top_p\": 1.5}", BATCH_COMPLETION, "top_p"},
        {"{\"prompt\": \"x\", \"max_tokens\": \"8\"}", BATCH_COMPLETION, "max_tokens"},
        {"{\"prompt\": \"x\", \"stream\": 1}", BATCH_COMPLETION, "stream"},
        {"{\"messages\": \"hi\"}", BATCH_CHAT, "messages"},
        {"{\"prompt\": \"x\"}", BATCH_CHAT, "messages"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", BATCH_COMPLETION, "prompt"},
        {"[1]", BATCH_COMPLETION, "not a JSON object"},
        {"{\"prompt\": ", BATCH_COMPLETION, "not JSON"},
        {"", BATCH_COMPLETION, "not JSON"},
        {"{\"prompt\": \"\\u0000\"}", BATCH_COMPLETION, "u0000"},
        {"{\"prompt\": \"\xff\"}", BATCH_COMPLETION, "UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        batch_request r;
        int stream = -1;
        char err[256] = "";
        assert_int_equal(body(cases[i].body, cases[i].kind, &r, &stream, err), -1);
        if (!strstr(err, cases[i].want))
            fail_msg("body %s: error '%s' does not mention '%s'", cases[i].body, err, cases[i].want);
        assert_null(r.custom_id);
        assert_int_equal(stream, 0);
        batch_request_free(&r);
    }
    /* a NUL byte inside the length */
    batch_request r;
    int stream;
    char err[256];
    assert_int_equal(batch_parse_body("{\"prompt\":\"a\0\"}", 15, BATCH_COMPLETION, "x", &r, &stream, err,
                                      sizeof err), -1);
    assert_non_null(strstr(err, "NUL"));
    batch_request_free(&r);
}

static void test_redis_url(void **state)
{
    redisq_url u;
    char err[256];
    assert_int_equal(redisq_parse_url("redis://127.0.0.1", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "");
    assert_int_equal(redisq_parse_url("redis://alice:p%40ss%3Aw@cache.local:6380/3", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "p@ss:w");
    assert_string_equal(u.host, "cache.local");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_int_equal(redisq_parse_url("redis://:secret@h:1/", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "secret");
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 0);
    assert_int_equal(redisq_parse_url("redis://a:b@c@h", &u, err, sizeof err), 0);   /* last '@' ends userinfo */
    assert_string_equal(u.password, "b@c");
    assert_string_equal(u.host, "h");
    static const char *bad[] = {"http://h", "redis://", "redis://:6379", "redis://h:0", "redis://h:65536",
                                "redis://h:12x", "redis://h:", "redis://h/x", "redis://h/-1", "redis://u:p%00@h",
                                NULL, "rediss://h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(redisq_parse_url(bad[i], &u, err, sizeof err), -1);
        assert_true(err[0] != '\0');
    }
}

static void test_replay_seeds(void **state)
{
    DIR *d = opendir(SEEDS_DIR);
    if (!d)
        fail_msg("cannot open %s (run tests from the repository root)", SEEDS_DIR);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", SEEDS_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        uint8_t buf[65536];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        uint8_t *exact = malloc(len ? len : 1);   /* exactly sized: ASan sees any overread */
        memcpy(exact, buf, len);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        n++;
    }
    closedir(d);
    assert_true(n >= 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_ok),
        cmocka_unit_test(test_body_bad),
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_replay_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
