/*
 * test_job.c - the serve layer's engine path (common/serve/job.h) on a tiny
 * random model: requests parsed from batch lines go through job_submit and
 * engine_step; the streamed text (on_text) adds up to the final text; a
 * request's text does not depend on what shares its batch; job_format_result
 * is batch_format_result of the same fields and job_format_body its
 * response.body; should_stop ends a request early; requests that can never
 * run are refused with a reason and call no hook. response_format: the
 * constrained text is the same in plain, self-spec (forced, context, layer
 * and chained drafts) and auto, alone and batched, and is in the schema;
 * gram_best's shortcuts equal the argmax of the fully masked row; a schema
 * outside the subset is refused at submit.
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
#include "decode/grammar.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
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

/* An engine over the tiny model: mode, skip set, draft sources, context
 * and KV MiB as given; no calibration. */
static engine *tiny_engine_with(const tiny *t, int32_t max_seqs, engine_mode mode, const skip_set *ss, int32_t draft,
                                int32_t ctx, size_t kv_mib)
{
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = max_seqs;
    p.ctx = ctx;
    p.kv_mem = kv_mib << 20;
    p.mode = mode;
    p.ss = ss;
    p.sp.draft = draft;
    p.calibrate = 0;
    engine *e = NULL;
    char err[256];
    if (engine_init(&e, &t->m, &p, err, sizeof err) != 0)
        fail_msg("engine_init: %s", err);
    return e;
}

static engine *tiny_engine(const tiny *t, int32_t max_seqs)
{
    return tiny_engine_with(t, max_seqs, ENGINE_PLAIN, NULL, SPEC_DRAFT_AUTO, 128, 4);
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

static void on_text(void *user, const job_delta *d)
{
    rec *r = user;
    const char *s = d->text;
    size_t n = d->n;
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
    job_format_opts f = {.model = "tiny", .created = 1700000000, .fingerprint = "fp_test"};
    r->line = job_format_result(o, &f, err, sizeof err);
    r->body = job_format_body(o, &f, err, sizeof err);
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
                           .prompt_tokens = a->prompt_tokens, .completion_tokens = a->generated_tokens,
                           .system_fingerprint = "fp_test"};
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

/* ---- response_format ---- */

static engine *tiny_engine_mode(const tiny *t, int32_t max_seqs, engine_mode mode, const skip_set *ss,
                                int32_t draft)
{
    return tiny_engine_with(t, max_seqs, mode, ss, draft, 256, 8);
}

#define PERSON "{\"type\": \"object\", \"properties\": {\"name\": {\"type\": \"string\", \"maxLength\": 6}, " \
               "\"age\": {\"type\": \"integer\"}, \"ok\": {\"type\": \"boolean\"}, \"kind\": {\"enum\": " \
               "[\"alpha\", \"beta\", \"gamma\"]}}, \"required\": [\"name\", \"age\", \"ok\", \"kind\"], " \
               "\"additionalProperties\": false}"

/* Request i: a schema or json_object, greedy or sampled. */
static void schema_line(char *buf, size_t n, int i)
{
    const char *rf = i % 3 == 2 ? "{\"type\": \"json_object\"}"
                                : "{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\", \"schema\": " PERSON "}}";
    snprintf(buf, n,
             "{\"custom_id\": \"s%d\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
             "{\"prompt\": \"record %d:\", \"max_tokens\": 90, \"temperature\": %s, \"seed\": %d, "
             "\"response_format\": %s}}",
             i, i, i % 4 == 3 ? "0.9" : "0", 50 + i, rf);
}

/* Every request line through an engine of each configuration: plain at
 * 1 and 4 sequences, forced self-spec with context drafts (forced text
 * included), with layer drafts and chained drafts over a skip set, and
 * auto; r[c][i] is line i's record in configuration c, and every text must
 * equal plain alone's (configuration 0). */
enum { MODE_CFGS = 6, MODE_MAX_REQ = 8 };
static void run_mode_configs(tiny *t, char lines[][1024], int n, rec r[MODE_CFGS][MODE_MAX_REQ])
{
    assert_true(n <= MODE_MAX_REQ);
    skip_set ss;
    skipset_init(&ss, t->m.config.n_layers);
    for (int32_t l = 0; l < ss.n_layers; l += 2)
        ss.mlp_skip[l] = 1;
    const struct {
        engine_mode mode;
        const skip_set *ss;
        int32_t draft, seqs;
    } cfg[MODE_CFGS] = {{ENGINE_PLAIN, NULL, SPEC_DRAFT_AUTO, 1}, {ENGINE_PLAIN, NULL, SPEC_DRAFT_AUTO, 4},
                        {ENGINE_SPEC, NULL, SPEC_DRAFT_CONTEXT, 1}, {ENGINE_SPEC, &ss, SPEC_DRAFT_LAYERS, 3},
                        {ENGINE_SPEC, &ss, SPEC_DRAFT_CHAIN, 8}, {ENGINE_AUTO, &ss, SPEC_DRAFT_AUTO, 4}};
    memset(r, 0, MODE_CFGS * sizeof r[0]);
    char err[256];
    for (int c = 0; c < MODE_CFGS; c++) {
        engine *e = tiny_engine_mode(t, cfg[c].seqs, cfg[c].mode, cfg[c].ss, cfg[c].draft);
        for (int i = 0; i < n; i++)
            if (submit_line(e, t, lines[i], &r[c][i], err, sizeof err) != 0)
                fail_msg("submit %d: %s", i, err);
        run_all(e);
        engine_free(e);
    }
    for (int i = 0; i < n; i++)
        for (int c = 1; c < MODE_CFGS; c++)
            if (strcmp(r[c][i].text, r[0][i].text) != 0)
                fail_msg("request %d, config %d: '%s' != plain alone '%s'", i, c, r[c][i].text, r[0][i].text);
    skipset_free(&ss);
}

static void free_mode_configs(rec r[MODE_CFGS][MODE_MAX_REQ], int n)
{
    for (int c = 0; c < MODE_CFGS; c++)
        for (int i = 0; i < n; i++)
            rec_free(&r[c][i]);
}

/* Constrained output through the engine: the same text in every
 * configuration of run_mode_configs; every text a prefix the matcher
 * accepts, a complete document where the request stopped by itself. */
static void test_constrained_modes(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    enum { N = 8 };
    static char lines[N][1024];
    static rec r[MODE_CFGS][MODE_MAX_REQ];
    for (int i = 0; i < N; i++)
        schema_line(lines[i], sizeof lines[i], i);
    run_mode_configs(&t, lines, N, r);
    char err[256];
    jschema *person, *obj;
    assert_int_equal(jschema_compile(&person, PERSON, strlen(PERSON), 0, err, sizeof err), 0);
    assert_int_equal(jschema_compile(&obj, "", 0, 1, err, sizeof err), 0);
    static js_state st;
    int complete = 0;
    for (int i = 0; i < N; i++) {
        const jschema *js = i % 3 == 2 ? obj : person;
        js_start(js, &st);
        if (!js_feed(js, &st, r[0][i].text, strlen(r[0][i].text)))
            fail_msg("request %d: '%s' is not in the schema", i, r[0][i].text);
        if (r[0][i].finish == BATCH_FINISH_STOP) {
            assert_true(js_accepting(js, &st));
            complete++;
        }
    }
    print_message("%d of %d constrained requests complete documents, e.g. %s\n", complete, N, r[0][0].text);
    assert_true(complete >= 1);
    free_mode_configs(r, N);
    jschema_free(person);
    jschema_free(obj);
    tiny_close(&t);
}

/* gram_best's shortcuts (the raw argmax, the top candidates) agree with
 * the argmax of the fully masked row, and the mask with gram_allows token
 * by token, from many states (strings with and without maxLength), on
 * random rows; gram_forced's tokens are allowed in order. */
static void test_gram_best(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    char err[256];
    gram_vocab *gv;
    assert_int_equal(gram_vocab_build(&gv, t.tok, err, sizeof err), 0);
    const int32_t V = gram_vocab_size(gv);
    gram_scratch *sc = gram_scratch_new(gv);
    jschema *person, *obj;   /* strings with maxLength; any object: keys and strings without */
    assert_int_equal(jschema_compile(&person, PERSON, strlen(PERSON), 0, err, sizeof err), 0);
    assert_int_equal(jschema_compile(&obj, "", 0, 1, err, sizeof err), 0);
    float *row = malloc((size_t)V * sizeof(float)), *masked = malloc((size_t)V * sizeof(float));
    uint64_t rng = 12345;
    static js_state st;
    int checked = 0, forced_seen = 0;
    for (int walk = 0; walk < 40; walk++) {
        jschema *js = walk % 2 ? obj : person;
        gram g = {gv, js};
        js_start(js, &st);
        for (int step = 0; step < 64 && !gram_done(&g, &st); step++) {
            for (int32_t i = 0; i < V; i++) {
                rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                row[i] = (float)((rng >> 40) % 1000) / 100.0f;   /* ties happen */
            }
            memcpy(masked, row, (size_t)V * sizeof(float));
            int32_t n_ok = gram_mask(&g, &st, masked, V, sc);
            assert_true(n_ok > 0);
            for (int32_t i = 0; i < V; i++)   /* the mask (trie walks, the plain-string shortcut) = token by token */
                if (gram_allows(&g, &st, i) != (masked[i] != -INFINITY))
                    fail_msg("walk %d step %d token %d: mask %d, gram_allows %d", walk, step, i,
                             masked[i] != -INFINITY, gram_allows(&g, &st, i));
            int32_t want = sampler_argmax(masked, V);
            int32_t got = gram_best(&g, &st, row, V, -1, sc);
            if (got != want)
                fail_msg("walk %d step %d: gram_best %d, masked argmax %d", walk, step, got, want);
            int32_t f[16];
            int32_t nf = gram_forced(&g, &st, f, 16);
            forced_seen += nf > 0;
            assert_int_equal(gram_valid_prefix(&g, &st, f, nf), nf);
            checked++;
            assert_true(gram_advance(&g, &st, got));
        }
    }
    print_message("%d rows checked, %d with forced tokens\n", checked, forced_seen);
    assert_true(checked > 500 && forced_seen > 0);
    free(row);
    free(masked);
    jschema_free(person);
    jschema_free(obj);
    gram_scratch_free(sc);
    gram_vocab_free(gv);
    tiny_close(&t);
}

/* Logits processors (penalties, logit_bias, min_tokens) and a schema with
 * them: the same text in every configuration of run_mode_configs; a +100
 * bias makes its token the only one chosen. */
static void test_processors_modes(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    enum { N = 6 };
    static const char *const extra[N] = {
        "\"frequency_penalty\": 1.5, \"presence_penalty\": 0.5",
        "\"presence_penalty\": -1.0, \"logit_bias\": {\"65\": 3.5, \"66\": -2}",
        "\"frequency_penalty\": 0.7, \"top_p\": 0.9, \"seed\": 3",
        "\"min_tokens\": 20, \"frequency_penalty\": 2",
        "\"frequency_penalty\": 1.0, \"response_format\": {\"type\": \"json_object\"}",
        "\"logit_bias\": {\"97\": 100}",
    };
    static char lines[N][1024];
    static rec r[MODE_CFGS][MODE_MAX_REQ];
    for (int i = 0; i < N; i++)
        snprintf(lines[i], sizeof lines[i],
                 "{\"custom_id\": \"p%d\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
                 "{\"prompt\": \"abab abab %d\", \"max_tokens\": 40, \"temperature\": %s, %s}}", i, i,
                 i == 2 ? "0.9" : "0", extra[i]);
    run_mode_configs(&t, lines, N, r);
    for (const char *p = r[0][5].text; *p; p++)   /* token 97 is the byte 'a' */
        assert_int_equal(*p, 'a');
    assert_int_equal(strlen(r[0][5].text), 40);
    free_mode_configs(r, N);
    tiny_close(&t);
}

/* A schema the subset refuses fails the submit with the reason, no hook. */
static void test_constrained_refused(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    engine *e = tiny_engine(&t, 2);
    rec r;
    memset(&r, 0, sizeof r);
    char err[256] = "";
    const char *line = "{\"custom_id\": \"x\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": "
                       "{\"prompt\": \"a\", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": "
                       "{\"name\": \"n\", \"schema\": {\"type\": \"string\", \"pattern\": \"^a\"}}}}}";
    assert_int_equal(submit_line(e, &t, line, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "'pattern' is not supported"));
    assert_int_equal(engine_pending(e), 0);
    assert_false(r.done);
    engine_free(e);
    tiny_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_texts_lines_and_batch_invariance),
        cmocka_unit_test(test_should_stop_and_refusals),
        cmocka_unit_test(test_constrained_modes),
        cmocka_unit_test(test_gram_best),
        cmocka_unit_test(test_constrained_refused),
        cmocka_unit_test(test_processors_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
