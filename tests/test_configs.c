/*
 * test_configs.c - the library pieces the subcommands are thin shells over:
 * the skip-set choice (skipset_choose, skipset_set_head, skipset_pays), a
 * foreign config read for --seed-config (skipset_load with no model), the
 * search checkpoint (search_state_read / search_state_write), and the stats
 * JSON line (stats_json), and the tuned exit constants a config records
 * ("exit": saved, read back, validated, applied under the command line's).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <math.h>

#include "decode/setup.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "decode/stats.h"
#include "tune/search.h"
#include "util/util.h"
#include <cjson/cJSON.h>

static model_config cfg(void)
{
    model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "tiny");
    c.n_layers = 4;
    c.dim = 64;
    c.vocab_size = 100;
    return c;
}

/* A fresh temporary folder holding one config file with body text. */
static void write_config(char *dir, size_t n, const char *file, const char *text)
{
    snprintf(dir, n, "/tmp/selfspec-test-configs-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_dir(const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    unlink(path);
    rmdir(dir);
}

#define TINY_CONFIG \
    "{\"model\": {\"name\": \"tiny\", \"n_layers\": 4, \"dim\": 64, \"vocab_size\": 100}," \
    " \"attn_skip\": [1], \"mlp_skip\": [2, 3], \"draft_head_size\": 32," \
    " \"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31]," \
    " \"measured\": {\"speedup\": 0.9}}"

static void test_choose(void **state)
{
    (void)state;
    model_config c = cfg();
    char dir[128], err[256], path[256];
    write_config(dir, sizeof dir, "tiny.json", TINY_CONFIG);
    skip_set s;
    /* the model's own config, found by its "model" entry */
    assert_int_equal(skipset_choose(&s, NULL, -1, dir, &c, err, sizeof err), 0);
    assert_int_equal(skipset_count(&s), 3);
    assert_int_equal(s.n_head_tokens, 32);
    assert_int_equal(skipset_pays(&s), 0);              /* measured 0.9x: speculation off by default */
    skipset_free(&s);
    /* draft-head sizes: a smaller head, the full head, and the two errors */
    assert_int_equal(skipset_choose(&s, NULL, 16, dir, &c, err, sizeof err), 0);
    assert_int_equal(s.n_head_tokens, 16);
    skipset_free(&s);
    assert_int_equal(skipset_choose(&s, NULL, 0, dir, &c, err, sizeof err), 0);
    assert_int_equal(s.n_head_tokens, 0);
    assert_null(s.head_tokens);
    skipset_free(&s);
    assert_int_equal(skipset_choose(&s, NULL, 17, dir, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "multiple of 16"));
    assert_int_equal(skipset_choose(&s, NULL, 48, dir, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "lists 32"));
    /* "none": the empty set; a named file; no match for another model */
    assert_int_equal(skipset_choose(&s, "none", -1, dir, &c, err, sizeof err), 0);
    assert_int_equal(skipset_count(&s), 0);
    assert_int_equal(skipset_pays(&s), 1);
    skipset_free(&s);
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    assert_int_equal(skipset_choose(&s, path, -1, "/nonexistent", &c, err, sizeof err), 0);
    skipset_free(&s);
    model_config other = c;
    other.n_layers = 5;
    assert_int_equal(skipset_choose(&s, NULL, -1, dir, &other, err, sizeof err), 1);
    assert_non_null(strstr(err, "no skip-set config"));
    assert_int_equal(skipset_choose(&s, path, -1, dir, &other, err, sizeof err), -1);
    /* a foreign config (seed for another model): its own layer count, no head */
    assert_int_equal(skipset_load(&s, path, NULL, err, sizeof err), 0);
    assert_int_equal(s.n_layers, 4);
    assert_int_equal(skipset_count(&s), 3);
    assert_int_equal(s.n_head_tokens, 0);
    skipset_free(&s);
    remove_dir(dir, "tiny.json");
}

static void test_foreign_config_errors(void **state)
{
    (void)state;
    char dir[128], err[256], path[256];
    skip_set s;
    const char *bad[] = {
        "{\"attn_skip\": [1]}",                                         /* no model entry */
        "{\"model\": {\"n_layers\": 0}}",                               /* no layers */
        "{\"model\": {\"n_layers\": 2.5}}",
        "{\"model\": {\"n_layers\": 3}, \"mlp_skip\": [3]}",            /* index out of range */
        "[1, 2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_config(dir, sizeof dir, "x.json", bad[i]);
        snprintf(path, sizeof path, "%s/x.json", dir);
        if (skipset_load(&s, path, NULL, err, sizeof err) == 0)
            fail_msg("accepted %s", bad[i]);
        remove_dir(dir, "x.json");
    }
}

static void test_checkpoint(void **state)
{
    (void)state;
    char path[] = "/tmp/selfspec-test-state-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    search_entry e = {.bits = "01000011", .sc = {.tokens_per_s = 123.5, .speedup = 1.1, .match_rate = 0.9,
                                                  .accept_rate = 0.8, .mean_accepted = 2.5}};
    search_state_write(f, &e);
    snprintf(e.bits, sizeof e.bits, "11110000");
    e.sc.tokens_per_s = 99;
    search_state_write(f, &e);
    fputs("0101 1 1 1 1 1\n", f);              /* another model's row (4 bits) */
    fputs("01x00011 1 1 1 1 1\n", f);          /* not bits */
    fputs("00000001 5.0 1.0", f);              /* a torn last line */
    fclose(f);
    search_entry *rows;
    int n = search_state_read(path, 4, &rows);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].bits, "01000011");
    assert_true(rows[0].sc.tokens_per_s == 123.5 && rows[0].sc.mean_accepted == 2.5);
    assert_true(rows[1].sc.tokens_per_s == 99);
    skip_set s;
    skipset_init(&s, 4);
    search_bits_to_set(rows[0].bits, &s);
    assert_int_equal(s.attn_skip[1], 1);
    assert_int_equal(s.mlp_skip[2] + s.mlp_skip[3], 2);
    assert_int_equal(skipset_count(&s), 3);
    skipset_free(&s);
    free(rows);
    unlink(path);
    assert_int_equal(search_state_read(path, 4, &rows), 0);   /* missing = no rows */
    assert_null(rows);
}

static void test_stats_json(void **state)
{
    (void)state;
    gen_stats st = {.prompt_tokens = 10, .generated_tokens = 21, .prefill_seconds = 0.5, .decode_seconds = 2.0};
    spec_stats sp;
    memset(&sp, 0, sizeof sp);
    sp.counts.num_draft_tokens = 40;
    sp.counts.num_accepted_tokens = 30;
    sp.verifications = 10;
    sp.counts.drafted_per_pos[0] = 10, sp.counts.accepted_per_pos[0] = 9;
    sp.counts.drafted_per_pos[1] = 8, sp.counts.accepted_per_pos[1] = 6;
    cJSON *j = stats_json("self-spec", 2, &st, &sp, "configs/x.json");
    char *s = cJSON_PrintUnformatted(j);
    cJSON *back = cJSON_Parse(s);
    assert_non_null(back);
    assert_string_equal(cJSON_GetObjectItem(back, "mode")->valuestring, "self-spec");
    assert_true(cJSON_GetObjectItem(back, "decode_tokens_per_s")->valuedouble == 10.0);   /* 20 decoded / 2 s */
    assert_true(cJSON_GetObjectItem(back, "acceptance_rate")->valuedouble == 0.75);
    assert_true(cJSON_GetObjectItem(back, "mean_accepted_per_verify")->valuedouble == 3.0);
    cJSON *by = cJSON_GetObjectItem(back, "acceptance_by_position");
    assert_int_equal(cJSON_GetArraySize(by), 2);
    assert_true(cJSON_GetArrayItem(by, 0)->valuedouble == 0.9);
    assert_true(cJSON_GetArrayItem(by, 1)->valuedouble == 0.75);
    free(s);
    cJSON_Delete(back);
    cJSON_Delete(j);
    j = stats_json("plain", 1, &st, NULL, NULL);
    assert_null(cJSON_GetObjectItem(j, "drafted"));
    cJSON_Delete(j);
}


/* The exit constants and the head size a tuned config records survive
 * skipset_save / skipset_load exactly; the provenance members ride along,
 * and one named like a member save writes itself does not replace it. */
static void test_exit_round_trip(void **state)
{
    (void)state;
    model_config c = cfg();
    char dir[128], err[256], path[256];
    write_config(dir, sizeof dir, "tiny.json", TINY_CONFIG);
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    skip_set s, back;
    assert_int_equal(skipset_load(&s, path, &c, err, sizeof err), 0);
    s.exit = (skip_exit){0.75f, 0.02f, 0.85f, 0.8f};
    assert_int_equal(skipset_save(&s, path, &c, 16, "{\"tune\": {\"grid\": [1, 2]}, \"exit\": {\"gamma_init\": 0.1},"
                                  " \"measured\": {\"speedup\": 1.2}}", err, sizeof err), 0);
    assert_int_equal(skipset_load(&back, path, &c, err, sizeof err), 0);
    assert_true(back.exit.gamma_init == 0.75f && back.exit.gamma_step == 0.02f);
    assert_true(back.exit.gamma_ema == 0.85f && back.exit.ar_init == 0.8f);
    assert_int_equal(back.n_head_tokens, 16);                   /* draft_head_size 16 of the 32 */
    assert_int_equal(skipset_count(&back), 3);
    assert_true(fabsf(back.speedup - 1.2f) < 1e-6f);
    skipset_free(&back);
    size_t len;
    char *text = util_read_file(path, &len, err, sizeof err);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(cJSON_GetObjectItem(j, "tune"));
    assert_true(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "exit"), "gamma_init")->valuedouble == 0.75);
    cJSON_Delete(j);
    /* applied: the config's constants, except those the command line set */
    spec_params p;
    spec_params_default(&p);
    p.gamma_init = 0.33f;
    spec_params_apply_exit(&p, &s.exit, SPEC_GIVEN_GAMMA_INIT);
    assert_true(p.gamma_init == 0.33f && p.gamma_step == 0.02f && p.gamma_ema == 0.85f && p.ar_init == 0.8f);
    assert_int_equal(spec_params_check(&p, err, sizeof err), 0);
    spec_params_apply_exit(&p, &s.exit, 0);
    assert_true(p.gamma_init == 0.75f);
    skip_exit e;
    spec_params_to_exit(&p, &e);
    assert_true(e.gamma_init == 0.75f && e.ar_init == 0.8f);
    /* a set with no exit constants writes no "exit" */
    skipset_free(&s);
    skipset_init(&s, 4);
    assert_int_equal(skipset_save(&s, path, &c, 0, NULL, err, sizeof err), 0);
    text = util_read_file(path, &len, err, sizeof err);
    assert_null(strstr(text, "\"exit\""));
    free(text);
    skipset_free(&s);
    remove_dir(dir, "tiny.json");
}

/* A config from before the tune step (no "exit") keeps the defaults; a
 * partial "exit" sets only its members. */
static void test_exit_old_and_partial(void **state)
{
    (void)state;
    model_config c = cfg();
    char dir[128], err[256];
    write_config(dir, sizeof dir, "tiny.json", TINY_CONFIG);
    skip_set s;
    assert_int_equal(skipset_choose(&s, NULL, -1, dir, &c, err, sizeof err), 0);
    assert_true(isnan(s.exit.gamma_init) && isnan(s.exit.gamma_step) && isnan(s.exit.gamma_ema) &&
                isnan(s.exit.ar_init));
    spec_params p, d;
    spec_params_default(&p);
    spec_params_default(&d);
    spec_params_apply_exit(&p, &s.exit, 0);
    assert_memory_equal(&p, &d, sizeof p);
    skipset_free(&s);
    remove_dir(dir, "tiny.json");
    write_config(dir, sizeof dir, "tiny.json",
                 "{\"model\": {\"name\": \"tiny\", \"n_layers\": 4, \"dim\": 64, \"vocab_size\": 100},"
                 " \"exit\": {\"gamma_init\": 0.8}}");
    assert_int_equal(skipset_choose(&s, NULL, -1, dir, &c, err, sizeof err), 0);
    spec_params_apply_exit(&p, &s.exit, 0);
    assert_true(p.gamma_init == 0.8f && p.gamma_step == d.gamma_step && p.ar_init == d.ar_init);
    skipset_free(&s);
    skipset_init(&s, 4);   /* "none": no constants either */
    assert_true(isnan(s.exit.gamma_init));
    skipset_free(&s);
    remove_dir(dir, "tiny.json");
}

/* Bad exit constants are refused with a message naming the member. */
static void test_exit_bad_values(void **state)
{
    (void)state;
    model_config c = cfg();
    char dir[128], err[256], path[256];
    const struct {
        const char *exit, *says;
    } bad[] = {
        {"{\"gamma_init\": 1.5}", "gamma_init must be a number in [0, 1]"},
        {"{\"gamma_init\": -0.1}", "gamma_init"},
        {"{\"gamma_step\": 1}", "gamma_step must be a number in [0, 1)"},
        {"{\"gamma_ema\": \"0.9\"}", "gamma_ema"},
        {"{\"ar_init\": null}", "ar_init"},
        {"{\"gamma\": 0.5}", "unknown \"exit\" member \"gamma\""},
        {"[0.6]", "must be an object"},
        {"0.6", "must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"model\": {\"name\": \"tiny\", \"n_layers\": 4, \"dim\": 64, \"vocab_size\": 100},"
                 " \"exit\": %s}", bad[i].exit);
        write_config(dir, sizeof dir, "x.json", text);
        snprintf(path, sizeof path, "%s/x.json", dir);
        skip_set s;
        if (skipset_load(&s, path, &c, err, sizeof err) == 0)
            fail_msg("accepted \"exit\": %s", bad[i].exit);
        if (!strstr(err, bad[i].says))
            fail_msg("\"exit\": %s: message '%s' lacks '%s'", bad[i].exit, err, bad[i].says);
        assert_int_equal(skipset_choose(&s, path, -1, dir, &c, err, sizeof err), -1);
        remove_dir(dir, "x.json");
    }
}

/* The one speculation set-up every command calls (decode/setup.h): mode,
 * the set's own record, the draft sources, --skip, the exit constants. */
static void setup_case(const spec_want *w, const char *dir, int32_t draft, spec_setup *s, spec_params *p)
{
    model_config c = cfg();
    char err[256];
    spec_params_default(p);
    p->draft = draft;
    assert_int_equal(spec_setup_choose(s, w, &c, dir, p, err, sizeof err), 0);
}

static void test_setup(void **state)
{
    (void)state;
    char dir[128], path[256], err[256];
    write_config(dir, sizeof dir, "tiny.json",
                 "{\"model\": {\"name\": \"tiny\", \"n_layers\": 4, \"dim\": 64, \"vocab_size\": 100},"
                 " \"attn_skip\": [1], \"mlp_skip\": [2], \"exit\": {\"gamma_init\": 0.8, \"gamma_step\": 0.05},"
                 " \"measured\": {\"speedup\": 0.9}}");
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    spec_setup s;
    spec_params p;
    /* plain: nothing at all, whatever the sources */
    setup_case(&(spec_want){.draft_head = -1, .plain = 1}, dir, SPEC_DRAFT_AUTO, &s, &p);
    assert_int_equal(s.speculate, 0);
    assert_null(spec_setup_skipset(&s));
    assert_int_equal(p.draft, SPEC_DRAFT_LAYERS);
    assert_string_equal(s.note, "");
    spec_setup_free(&s);
    /* auto, the set measured 0.9x: dropped; context drafts go on ... */
    setup_case(&(spec_want){.draft_head = -1}, dir, SPEC_DRAFT_AUTO, &s, &p);
    assert_int_equal(s.speculate, 1);
    assert_null(spec_setup_skipset(&s));
    assert_int_equal(p.draft, SPEC_DRAFT_AUTO);
    assert_non_null(strstr(s.note, "measured 0.90x"));
    assert_non_null(strstr(s.note, "context only"));
    assert_string_equal(spec_setup_source(&s), "");
    spec_setup_free(&s);
    /* ... and with layer drafts only it decodes plainly */
    setup_case(&(spec_want){.draft_head = -1}, dir, SPEC_DRAFT_LAYERS, &s, &p);
    assert_int_equal(s.speculate, 0);
    assert_non_null(strstr(s.note, "decoding plainly"));
    spec_setup_free(&s);
    /* forced: the set is kept, its tuned exit applied under the user's gamma */
    spec_want forced = {.draft_head = -1, .forced = 1, .exit_given = SPEC_GIVEN_GAMMA_INIT};
    setup_case(&forced, dir, SPEC_DRAFT_LAYERS, &s, &p);
    assert_int_equal(s.speculate, 1);
    assert_non_null(spec_setup_skipset(&s));
    assert_int_equal(skipset_count(spec_setup_skipset(&s)), 2);
    assert_true(p.gamma_init == 0.6f);    /* given on the command line: kept */
    assert_true(p.gamma_step == 0.05f);   /* from the config */
    assert_string_equal(spec_setup_source(&s), path);
    assert_string_equal(s.note, "");
    spec_setup_free(&s);
    /* an explicit --skip is what the user asked for: never dropped */
    setup_case(&(spec_want){.skip = path, .draft_head = -1}, dir, SPEC_DRAFT_AUTO, &s, &p);
    assert_non_null(spec_setup_skipset(&s));
    assert_true(p.gamma_init == 0.8f);
    spec_setup_free(&s);
    /* the pipeline: layer drafts only, whatever was asked */
    setup_case(&(spec_want){.draft_head = -1, .forced = 1, .layers_only = 1}, dir, SPEC_DRAFT_AUTO, &s, &p);
    assert_int_equal(p.draft, SPEC_DRAFT_LAYERS);
    assert_non_null(spec_setup_skipset(&s));
    spec_setup_free(&s);
    /* no config for the model: context drafts, or plain with layers only */
    setup_case(&(spec_want){.draft_head = -1}, "/nonexistent", SPEC_DRAFT_CHAIN, &s, &p);
    assert_int_equal(s.speculate, 1);
    assert_int_equal(p.draft, SPEC_DRAFT_CHAIN);
    assert_non_null(strstr(s.note, "no skip-set config"));
    spec_setup_free(&s);
    setup_case(&(spec_want){.draft_head = -1, .layers_only = 1}, "/nonexistent", SPEC_DRAFT_AUTO, &s, &p);
    assert_int_equal(s.speculate, 0);
    assert_non_null(strstr(s.note, "selfspec search"));
    spec_setup_free(&s);
    /* errors: a bad --skip file, a bad head size */
    model_config c = cfg();
    spec_params_default(&p);
    assert_int_equal(spec_setup_choose(&s, &(spec_want){.skip = "/nonexistent.json", .draft_head = -1}, &c, dir, &p,
                                       err, sizeof err), -1);
    assert_non_null(strstr(err, "bad skip set"));
    assert_int_equal(spec_setup_choose(&s, &(spec_want){.draft_head = 17}, &c, dir, &p, err, sizeof err), -1);
    remove_dir(dir, "tiny.json");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_choose),
        cmocka_unit_test(test_setup),
        cmocka_unit_test(test_foreign_config_errors),
        cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_stats_json),
        cmocka_unit_test(test_exit_round_trip),
        cmocka_unit_test(test_exit_old_and_partial),
        cmocka_unit_test(test_exit_bad_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
