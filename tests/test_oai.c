/*
 * test_oai.c - the server's API over the engine thread (common/serve/oai.h)
 * on a tiny random model, without HTTP: oai_run in its own thread, requests
 * through oai_handle from this one (as libmicrohttpd's threads do). A whole
 * completion; the same request streamed (chunks add up to the same text,
 * then a finish chunk and [DONE]); a stream abandoned after one chunk ends
 * early and is freed; /v1/models; 400/404/405 errors, including a request
 * the engine refuses (over the context); /health, and /health failing while
 * a request waits and the decode loop makes no progress; stopping drains.
 * Under ASan/UBSan this checks the hand-over and the reference counting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "format/gguf.h"
#include "model/model.h"
#include "serve/oai.h"
#include "text/tokenizer.h"
#include "testutil_model.h"

typedef struct {
    oai_server *s;
    volatile sig_atomic_t stop;
    int rc;
} runner;

static void *run_thread(void *p)
{
    runner *r = p;
    char err[256];
    r->rc = oai_run(r->s, &r->stop, err, sizeof err);
    return NULL;
}

static void call(oai_server *s, const char *method, const char *url, const char *body, httpd_response *out)
{
    memset(out, 0, sizeof *out);
    oai_handle(s, method, url, body, strlen(body), out);
}

/* The text of a whole completion body. */
static char *body_text(const char *body)
{
    cJSON *j = cJSON_Parse(body);
    assert_non_null(j);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    char *t = strdup(cJSON_GetObjectItemCaseSensitive(ch, "text")->valuestring);
    cJSON_Delete(j);
    return t;
}

/* Read a stream to its end; the concatenated texts of its chunks, and in
 * usage_completion the usage chunk's completion_tokens (-1: none). */
static int usage_completion;
static char *read_stream(httpd_response *r, int *saw_finish, int *saw_done)
{
    usage_completion = -1;
    size_t cap = 1 << 16, len = 0;
    char *all = calloc(1, cap);
    char buf[512];
    ssize_t n;
    while ((n = r->reader(r->reader_ctx, buf, sizeof buf)) != -1) {
        assert_true(n > 0 && len + (size_t)n < cap);
        memcpy(all + len, buf, (size_t)n);
        len += (size_t)n;
    }
    r->reader_done(r->reader_ctx, 1);
    char *text = calloc(1, cap);
    *saw_finish = *saw_done = 0;
    for (char *p = all; (p = strstr(p, "data: ")) != NULL;) {
        p += 6;
        char *end = strstr(p, "\n\n");
        assert_non_null(end);
        *end = '\0';
        if (!strcmp(p, "[DONE]")) {
            *saw_done = 1;
        } else {
            cJSON *j = cJSON_Parse(p);
            assert_non_null(j);
            cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
            if (!ch) {   /* the usage chunk of stream_options.include_usage */
                const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
                assert_non_null(u);
                assert_false(*saw_done);
                usage_completion = (int)cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valuedouble;
                cJSON_Delete(j);
                p = end + 2;
                continue;
            }
            strcat(text, cJSON_GetObjectItemCaseSensitive(ch, "text")->valuestring);
            if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ch, "finish_reason")))
                *saw_finish = 1;
            cJSON_Delete(j);
        }
        p = end + 2;
    }
    free(all);
    return text;
}

static void test_api(void **state)
{
    char path[128], err[512];
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.seed = 9;
    assert_int_equal(tmodel_write_temp(&sp, path, sizeof path), 0);
    model m;
    gguf_file *g = NULL;
    tokenizer *tok = NULL;
    if (model_load(&m, path, NULL, err, sizeof err) != 0 || gguf_open(path, &g, err, sizeof err) != 0 ||
        tokenizer_build(&tok, g, err, sizeof err) != 0)
        fail_msg("%s", err);
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = 4;
    p.ctx = 128;
    p.kv_mem = (size_t)4 << 20;
    p.mode = ENGINE_PLAIN;
    p.calibrate = 0;
    engine *e = NULL;
    assert_int_equal(engine_init(&e, &m, &p, err, sizeof err), 0);
    oai_config cfg = {.model_name = "tiny", .max_seqs = 4, .queue_cap = 8, .stall_s = 30};
    runner rn = {.s = oai_new(e, tok, NULL, &cfg)};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_thread, &rn), 0);

    httpd_response r;
    const char *req = "{\"prompt\": \"hello\", \"max_tokens\": 9, \"temperature\": 0, \"ignore_eos\": true}";
    call(rn.s, "POST", "/v1/completions", req, &r);
    assert_int_equal(r.status, 200);
    char *whole = body_text(r.body);
    assert_non_null(strstr(r.body, "\"completion_tokens\":9"));
    free(r.body);

    const char *sreq = "{\"prompt\": \"hello\", \"max_tokens\": 9, \"temperature\": 0, \"ignore_eos\": true, "
                       "\"stream\": true}";
    call(rn.s, "POST", "/v1/completions", sreq, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(r.reader);
    int fin, done;
    char *streamed = read_stream(&r, &fin, &done);
    assert_string_equal(streamed, whole);   /* the chunks add up to the whole text */
    assert_true(fin && done);
    assert_int_equal(usage_completion, -1);
    free(streamed);
    /* stream_options.include_usage: a usage chunk before [DONE] */
    call(rn.s, "POST", "/v1/completions",
         "{\"prompt\": \"hello\", \"max_tokens\": 9, \"temperature\": 0, \"ignore_eos\": true, "
         "\"stream\": true, \"stream_options\": {\"include_usage\": true}}", &r);
    assert_int_equal(r.status, 200);
    streamed = read_stream(&r, &fin, &done);
    assert_string_equal(streamed, whole);
    assert_int_equal(usage_completion, 9);
    free(streamed);

    /* a stream abandoned after its first bytes */
    call(rn.s, "POST", "/v1/completions",
         "{\"prompt\": \"x\", \"max_tokens\": 100, \"ignore_eos\": true, \"stream\": true}", &r);
    assert_int_equal(r.status, 200);
    char buf[64];
    assert_true(r.reader(r.reader_ctx, buf, sizeof buf) > 0);
    r.reader_done(r.reader_ctx, 0);

    call(rn.s, "GET", "/v1/models", "", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"tiny\""));
    free(r.body);
    static const struct {
        const char *method, *url, *body;
        int status;
        const char *want;
    } bad[] = {
        {"POST", "/v1/completions", "{\"prompt\": \"x\", \"top_p\": 2}", 400, "top_p"},
        {"POST", "/v1/completions", "nope", 400, "not JSON"},
        {"POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 500}", 400, "context"},
        {"POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 500, \"stream\": true}", 400, "context"},
        {"POST", "/v1/chat/completions", "{\"messages\": [1]}", 400, "messages"},
        {"GET", "/v1/completions", "", 405, "POST"},
        {"POST", "/v1/models", "", 405, "GET"},
        {"POST", "/v2/x", "{}", 404, "not found"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        call(rn.s, bad[i].method, bad[i].url, bad[i].body, &r);
        assert_int_equal(r.status, bad[i].status);
        assert_null(r.reader);
        cJSON *j = cJSON_Parse(r.body);
        assert_non_null(j);
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
        assert_true(cJSON_IsString(msg));
        if (!strstr(msg->valuestring, bad[i].want))
            fail_msg("%s %s: '%s' does not mention '%s'", bad[i].method, bad[i].url, msg->valuestring, bad[i].want);
        cJSON_Delete(j);
        free(r.body);
    }
    assert_int_equal(oai_health(rn.s, err, sizeof err), 0);
    rn.stop = 1;
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(rn.rc, 0);
    call(rn.s, "POST", "/v1/completions", req, &r);   /* stopped: 503 */
    assert_int_equal(r.status, 503);
    free(r.body);
    free(whole);
    oai_free(rn.s);
    engine_free(e);
    tokenizer_free(tok);
    gguf_close(g);
    model_free(&m);
    unlink(path);
}

typedef struct {
    oai_server *s;
    httpd_response r;
} caller;

static void *call_thread(void *p)
{
    caller *c = p;
    call(c->s, "POST", "/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": 3}", &c->r);
    return NULL;
}

/* /health fails while work waits and the decode loop makes no progress,
 * and recovers once it runs. */
static void test_health_stuck(void **state)
{
    char path[128], err[512];
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    assert_int_equal(tmodel_write_temp(&sp, path, sizeof path), 0);
    model m;
    gguf_file *g = NULL;
    tokenizer *tok = NULL;
    if (model_load(&m, path, NULL, err, sizeof err) != 0 || gguf_open(path, &g, err, sizeof err) != 0 ||
        tokenizer_build(&tok, g, err, sizeof err) != 0)
        fail_msg("%s", err);
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = 2;
    p.ctx = 128;
    p.kv_mem = (size_t)4 << 20;
    p.mode = ENGINE_PLAIN;
    p.calibrate = 0;
    engine *e = NULL;
    assert_int_equal(engine_init(&e, &m, &p, err, sizeof err), 0);
    oai_config cfg = {.model_name = "tiny", .max_seqs = 2, .queue_cap = 2, .stall_s = 1.0};
    runner rn = {.s = oai_new(e, tok, NULL, &cfg)};
    assert_int_equal(oai_health(rn.s, err, sizeof err), 0);   /* idle: fine however long */
    usleep(1200 * 1000);
    assert_int_equal(oai_health(rn.s, err, sizeof err), 0);
    caller c = {.s = rn.s};
    pthread_t ct, et;
    assert_int_equal(pthread_create(&ct, NULL, call_thread, &c), 0);   /* waits: no engine loop yet */
    usleep(1500 * 1000);
    err[0] = '\0';
    assert_int_equal(oai_health(rn.s, err, sizeof err), -1);
    assert_non_null(strstr(err, "no progress"));
    assert_int_equal(pthread_create(&et, NULL, run_thread, &rn), 0);
    assert_int_equal(pthread_join(ct, NULL), 0);
    assert_int_equal(c.r.status, 200);
    free(c.r.body);
    assert_int_equal(oai_health(rn.s, err, sizeof err), 0);
    rn.stop = 1;
    assert_int_equal(pthread_join(et, NULL), 0);
    oai_free(rn.s);
    engine_free(e);
    tokenizer_free(tok);
    gguf_close(g);
    model_free(&m);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api),
        cmocka_unit_test(test_health_stuck),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
