/*
 * test_job.c - the serve layer's engine path (common/serve/job.h) on a tiny
 * random model: requests parsed from batch lines go through job_submit and
 * engine_step; the streamed text (on_text) adds up to the final text; a
 * request's text does not depend on what shares its batch; job_format_result
 * is batch_format_result of the same fields and job_format_body its
 * response.body; should_stop ends a request early; requests that can never
 * run are refused with a reason and call no hook.
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
#include <unistd.h>

#include "api/batchio.h"
#include "engine/engine.h"
#include "format/gguf.h"
#include "model/model.h"
#include "serve/job.h"
#include "text/tokenizer.h"
#include "testutil_model.h"

typedef struct {
    char path[128];
    model m;
    gguf_file *g;
    tokenizer *tok;
} tiny;

static void tiny_open(tiny *t)
{
    char err[512] = "";
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.seed = 5;
    memset(t, 0, sizeof *t);
    assert_int_equal(tmodel_write_temp(&sp, t->path, sizeof t->path), 0);
    if (model_load(&t->m, t->path, NULL, err, sizeof err) != 0)
        fail_msg("model_load: %s", err);
    if (gguf_open(t->path, &t->g, err, sizeof err) != 0 || tokenizer_build(&t->tok, t->g, err, sizeof err) != 0)
        fail_msg("tokenizer: %s", err);
}

static void tiny_close(tiny *t)
{
    tokenizer_free(t->tok);
    gguf_close(t->g);
    model_free(&t->m);
    unlink(t->path);
}

static engine *tiny_engine(const tiny *t, int32_t max_seqs)
{
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = max_seqs;
    p.ctx = 128;
    p.kv_mem = (size_t)4 << 20;
    p.mode = ENGINE_PLAIN;
    p.calibrate = 0;
    engine *e = NULL;
    char err[256];
    if (engine_init(&e, &t->m, &p, err, sizeof err) != 0)
        fail_msg("engine_init: %s", err);
    return e;
}

/* One request's record. */
typedef struct {
    char streamed[4096];
    size_t n_streamed;
    int n_text_calls, done, stop_after;
    char *text, *line, *body;
    char custom_id[32];
    batch_kind kind;
    batch_finish finish;
    int32_t prompt_tokens, generated_tokens;
} rec;

static void on_text(void *user, const char *s, size_t n)
{
    rec *r = user;
    assert_true(r->n_streamed + n < sizeof r->streamed);
    memcpy(r->streamed + r->n_streamed, s, n);
    r->n_streamed += n;
    r->n_text_calls++;
}

static int should_stop(void *user)
{
    rec *r = user;
    return r->stop_after && r->n_text_calls >= r->stop_after;
}

static void on_done(void *user, const job_outcome *o)
{
    rec *r = user;
    char err[256];
    assert_false(r->done);
    r->done = 1;
    r->text = strdup(o->text);
    snprintf(r->custom_id, sizeof r->custom_id, "%s", o->custom_id);
    r->kind = o->kind;
    r->finish = o->finish;
    r->prompt_tokens = o->res.prompt_tokens;
    r->generated_tokens = o->res.generated_tokens;
    r->line = job_format_result(o, "tiny", 1700000000, err, sizeof err);
    r->body = job_format_body(o, "tiny", 1700000000, err, sizeof err);
    assert_non_null(r->line);
    assert_non_null(r->body);
}

static void rec_free(rec *r)
{
    free(r->text);
    free(r->line);
    free(r->body);
}

static int submit_line(engine *e, const tiny *t, const char *line, rec *r, char *err, size_t errlen)
{
    batch_request q;
    if (batch_parse_line(line, strlen(line), &q, err, errlen) != 0)
        fail_msg("bad test line: %s", err);
    job_hooks h = {.on_text = on_text, .should_stop = should_stop, .on_done = on_done, .user = r};
    int rc = job_submit(e, t->tok, &q, &h, err, errlen);
    batch_request_free(&q);
    return rc;
}

static void run_all(engine *e)
{
    char err[256];
    for (int i = 0; i < 10000 && engine_pending(e) > 0; i++)
        if (engine_step(e, err, sizeof err) < 0)
            fail_msg("engine_step: %s", err);
    assert_int_equal(engine_pending(e), 0);
}

static void line_of(char *buf, size_t n, int i, int max_tokens)
{
    snprintf(buf, n,
             "{\"custom_id\": \"c%d\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
             "{\"prompt\": \"abc %d xyz\", \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true}}",
             i, i, max_tokens);
}

static void test_texts_lines_and_batch_invariance(void **state)
{
    tiny t;
    tiny_open(&t);
    enum { N = 5 };
    rec alone[N], together[N];
    memset(alone, 0, sizeof alone);
    memset(together, 0, sizeof together);
    char line[512], err[256];
    /* each alone */
    for (int i = 0; i < N; i++) {
        engine *e = tiny_engine(&t, 1);
        line_of(line, sizeof line, i, 6 + 3 * i);
        assert_int_equal(submit_line(e, &t, line, &alone[i], err, sizeof err), 0);
        run_all(e);
        engine_free(e);
    }
    /* all at once */
    engine *e = tiny_engine(&t, 4);
    for (int i = 0; i < N; i++) {
        line_of(line, sizeof line, i, 6 + 3 * i);
        assert_int_equal(submit_line(e, &t, line, &together[i], err, sizeof err), 0);
    }
    run_all(e);
    engine_free(e);
    for (int i = 0; i < N; i++) {
        rec *a = &alone[i], *b = &together[i];
        assert_true(a->done && b->done);
        assert_int_equal(a->generated_tokens, 6 + 3 * i);
        assert_int_equal(a->finish, BATCH_FINISH_LENGTH);
        assert_string_equal(a->text, b->text);              /* batch invariance */
        assert_string_equal(a->line, b->line);
        assert_int_equal(a->n_streamed, strlen(a->text));  /* the stream adds up to the text */
        assert_memory_equal(a->streamed, a->text, a->n_streamed);
        /* the line is batch_format_result's, the body its response.body */
        batch_result br = {.custom_id = a->custom_id, .kind = BATCH_COMPLETION, .model = "tiny",
                           .created = 1700000000, .text = a->text, .finish = a->finish,
                           .prompt_tokens = a->prompt_tokens, .completion_tokens = a->generated_tokens};
        char *want = batch_format_result(&br, err, sizeof err);
        assert_non_null(want);
        assert_string_equal(a->line, want);
        free(want);
        cJSON *root = cJSON_Parse(a->line), *body = cJSON_Parse(a->body);
        assert_non_null(root);
        assert_non_null(body);
        assert_true(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(
                                      cJSON_GetObjectItemCaseSensitive(root, "response"), "body"),
                                  body, 1));
        cJSON_Delete(root);
        cJSON_Delete(body);
        rec_free(a);
        rec_free(b);
    }
    tiny_close(&t);
}

static void test_should_stop_and_refusals(void **state)
{
    tiny t;
    tiny_open(&t);
    engine *e = tiny_engine(&t, 2);
    char line[512], err[256];
    rec r;
    memset(&r, 0, sizeof r);
    r.stop_after = 3;
    line_of(line, sizeof line, 1, 40);
    assert_int_equal(submit_line(e, &t, line, &r, err, sizeof err), 0);
    run_all(e);
    assert_true(r.done);
    assert_true(r.generated_tokens < 40);   /* ended early: the client went away */
    assert_int_equal(r.finish, BATCH_FINISH_STOP);
    rec_free(&r);
    /* prompt + max_tokens over the context: refused, no hook */
    rec bad;
    memset(&bad, 0, sizeof bad);
    line_of(line, sizeof line, 2, 1000);
    err[0] = '\0';
    assert_int_equal(submit_line(e, &t, line, &bad, err, sizeof err), -1);
    assert_non_null(strstr(err, "context"));
    /* sampling parameters the sampler refuses are refused here too */
    batch_request q;
    line_of(line, sizeof line, 3, 4);
    assert_int_equal(batch_parse_line(line, strlen(line), &q, err, sizeof err), 0);
    q.top_p = 7;   /* (batchio would have refused it) */
    job_hooks h = {.on_done = on_done, .user = &bad};
    err[0] = '\0';
    assert_int_equal(job_submit(e, t.tok, &q, &h, err, sizeof err), -1);
    assert_true(err[0] != '\0');
    /* no on_done: refused */
    h.on_done = NULL;
    q.top_p = 1;
    assert_int_equal(job_submit(e, t.tok, &q, &h, err, sizeof err), -1);
    batch_request_free(&q);
    run_all(e);
    assert_false(bad.done);
    engine_free(e);
    tiny_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_texts_lines_and_batch_invariance),
        cmocka_unit_test(test_should_stop_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
