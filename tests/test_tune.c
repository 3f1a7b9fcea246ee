/*
 * test_tune.c - what `selfspec search` does around its search, as library
 * code: the measuring harness (common/tune/validate.h: tune_measure_many's
 * turns and sums with a stand-in decoder, the objective's validation and
 * the tune step on a tiny model through the engine), Spearman, the tune
 * grid's command-line lists, search_base_build and the report table
 * (tune/search.h), and the config provenance (tune/provenance.h): its
 * members and their round trip through skipset_save / skipset_load /
 * prov_read_calibration, --tune-only's carried-over members, --transfer-only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "decode/skipset.h"
#include "engine/engine.h"
#include "format/gguf.h"
#include "testutil_model.h"
#include "tune/provenance.h"
#include "tune/search.h"
#include "tune/validate.h"
#include "util/util.h"

/* ---------------------------------------------------------------- helpers */

static void temp_path(char *buf, size_t n, const char *suffix)
{
    char tmpl[] = "/tmp/selfspec-tune-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    close(fd);
    unlink(tmpl);
    snprintf(buf, n, "%s%s", tmpl, suffix);
}

static cJSON *parse_file(const char *path)
{
    size_t len;
    char err[256];
    char *text = util_read_file(path, &len, err, sizeof err);
    if (!text)
        fail_msg("%s", err);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("no number '%s'", key);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v))
        fail_msg("no string '%s'", key);
    return v->valuestring;
}

/* ---------------------------------------------------------------- spearman */

static void test_spearman(void **state)
{
    (void)state;
    const double a[] = {1, 2, 3, 4, 5};
    const double up[] = {10, 20, 30, 40, 50}, down[] = {5, 4, 3, 2, 1}, mono[] = {1, 4, 9, 16, 1000};
    assert_true(fabs(tune_spearman(a, up, 5) - 1.0) < 1e-12);
    assert_true(fabs(tune_spearman(a, down, 5) + 1.0) < 1e-12);
    assert_true(fabs(tune_spearman(a, mono, 5) - 1.0) < 1e-12);   /* ranks, not values */
    /* d = (1,-1,0,1,-1): 1 - 6*4 / (5*24) = 0.8 */
    const double b[] = {2, 1, 3, 5, 4};
    assert_true(fabs(tune_spearman(a, b, 5) - 0.8) < 1e-12);
    /* ties take their mean rank: x ranks (1.5, 1.5, 3, 4); y ranks (1,2,3,4);
     * Pearson of the ranks = 4.5 / sqrt(4.5 * 5) */
    const double x[] = {7, 7, 8, 9}, y[] = {1, 2, 3, 4};
    assert_true(fabs(tune_spearman(x, y, 4) - 4.5 / sqrt(4.5 * 5.0)) < 1e-12);
    /* a constant side has no correlation; neither have fewer than 2 values */
    const double c[] = {3, 3, 3, 3};
    assert_true(tune_spearman(c, y, 4) == 0.0);
    assert_true(tune_spearman(a, up, 1) == 0.0);
    /* more values than the old fixed 128-entry buffers */
    enum { N = 300 };
    double *p = malloc(N * sizeof *p), *q = malloc(N * sizeof *q);
    for (int i = 0; i < N; i++) {
        p[i] = i;
        q[i] = -2.0 * i;
    }
    assert_true(fabs(tune_spearman(p, q, N) + 1.0) < 1e-12);
    free(p);
    free(q);
}

/* ---------------------------------------------------------------- lists */

static void test_parse_list(void **state)
{
    (void)state;
    char err[256];
    int32_t ints[SEARCH_TUNE_MAX], n = -1;
    float fl[SEARCH_TUNE_MAX];
    assert_int_equal(tune_parse_list("0,1024,16777216", ints, NULL, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ints[0], 0);
    assert_int_equal(ints[2], 1 << 24);
    assert_int_equal(tune_parse_list("0.4,1,0", NULL, fl, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_true(fl[0] == 0.4f && fl[1] == 1.0f && fl[2] == 0.0f);
    assert_int_equal(tune_parse_list("16777217", ints, NULL, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "16777217"));
    assert_int_equal(tune_parse_list("-1", ints, NULL, &n, err, sizeof err), -1);
    assert_int_equal(tune_parse_list("12x", ints, NULL, &n, err, sizeof err), -1);
    assert_int_equal(tune_parse_list("1.5", NULL, fl, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "[0, 1]"));
    assert_int_equal(tune_parse_list("nan", NULL, fl, &n, err, sizeof err), -1);
    assert_int_equal(tune_parse_list(",,", ints, NULL, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "at least one"));
    char many[512] = "";
    for (int i = 0; i <= SEARCH_TUNE_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s%d", i ? "," : "", i);
    assert_int_equal(tune_parse_list(many, ints, NULL, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "at most"));
}

/* ---------------------------------------------------------------- measuring */

/* A stand-in decoder: prompt i under configuration c "takes" (c + 1) s per
 * new token for 1 + prompt length tokens, drafts 10 and accepts c + 1; it
 * records the order of its calls. */
typedef struct {
    const skip_set *cfg[4];
    int order[64], n_calls;
    int fail_at;   /* fail this call (-1: never) */
} fake_log;
static fake_log g_fake;

static int fake_decode(const model *m, int32_t ctx, const skip_set *ss, const spec_params *sp, const int32_t *prompt,
                       int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *emit_ctx, gen_stats *st,
                       spec_stats *sps, char *err, size_t errlen)
{
    int c = 0;
    while (c < 4 && g_fake.cfg[c] != ss)
        c++;
    assert_true(c < 4);
    assert_int_equal(ctx, 77);
    assert_true(gp->ignore_eos && gp->sampling.temperature == 0.0f);
    assert_int_equal(gp->max_tokens, 5);
    assert_int_equal(sps != NULL, ss != NULL);
    if (g_fake.n_calls == g_fake.fail_at)
        return util_err(err, errlen, "fake failure");
    g_fake.order[g_fake.n_calls++] = c;
    memset(st, 0, sizeof *st);
    st->generated_tokens = 1 + n_prompt;
    st->decode_seconds = (double)(c + 1) * n_prompt;
    if (sps) {
        sps->counts.num_draft_tokens = 10;
        sps->counts.num_accepted_tokens = c + 1;
    }
    return 0;
}

static void test_measure_many_turns(void **state)
{
    (void)state;
    char err[256];
    skip_set a, b;
    skipset_init(&a, 2);
    skipset_init(&b, 2);
    memset(&g_fake, 0, sizeof g_fake);
    g_fake.cfg[0] = NULL;   /* plain */
    g_fake.cfg[1] = &a;
    g_fake.cfg[2] = &b;
    g_fake.fail_at = -1;
    int32_t p0[] = {1, 2}, p1[] = {3, 4, 5}, p2[] = {6}, *ids[] = {p0, p1, p2}, lens[] = {2, 3, 1};
    tune_bench tb = {.m = NULL, .kv_cap = 77, .decode = fake_decode};
    const skip_set *ss[] = {NULL, &a, &b};
    const spec_params *sp[] = {NULL, NULL, NULL};
    tune_measured out[3];
    assert_int_equal(tune_measure_many(&tb, 3, ss, sp, ids, lens, 3, 5, out, err, sizeof err), 0);
    /* prompt i starts with configuration i % 3 and goes round */
    const int want[] = {0, 1, 2, 1, 2, 0, 2, 0, 1};
    assert_int_equal(g_fake.n_calls, 9);
    for (int k = 0; k < 9; k++)
        assert_int_equal(g_fake.order[k], want[k]);
    /* tokens after the first = 6 per configuration; seconds (c + 1) * 6 */
    for (int c = 0; c < 3; c++)
        assert_true(fabs(out[c].tps - 6.0 / ((c + 1) * 6.0)) < 1e-12);
    assert_true(out[0].accept_rate == 0.0);                   /* plain drafts nothing */
    assert_true(fabs(out[1].accept_rate - 2.0 / 10) < 1e-12);
    assert_true(fabs(out[2].accept_rate - 3.0 / 10) < 1e-12);
    /* one configuration */
    g_fake.n_calls = 0;
    assert_int_equal(tune_measure(&tb, &a, NULL, ids, lens, 3, 5, &out[0], err, sizeof err), 0);
    assert_int_equal(g_fake.n_calls, 3);
    assert_true(fabs(out[0].tps - 0.5) < 1e-12);
    /* a failing decode fails the measurement with its error, out untouched */
    g_fake.n_calls = 0;
    g_fake.fail_at = 4;
    out[0].tps = -7;
    assert_int_equal(tune_measure_many(&tb, 3, ss, sp, ids, lens, 3, 5, out, err, sizeof err), -1);
    assert_string_equal(err, "fake failure");
    assert_true(out[0].tps == -7);
    /* configuration counts outside 1..TUNE_MEASURE_MAX */
    assert_int_equal(tune_measure_many(&tb, 0, ss, sp, ids, lens, 3, 5, out, err, sizeof err), -1);
    assert_int_equal(tune_measure_many(&tb, TUNE_MEASURE_MAX + 1, ss, sp, ids, lens, 3, 5, out, err, sizeof err), -1);
    skipset_free(&a);
    skipset_free(&b);
}

/* ---------------------------------------------------------------- a tiny model */

typedef struct {
    char path[128];
    model m;
    fwd_state fs;
    int32_t buf[4][6], *ids[4], lens[4];
} tiny;

static void tiny_open(tiny *t)
{
    char err[512] = "";
    tmodel_spec spec = tmodel_default(GGUF_TT_Q8_0);
    assert_int_equal(tmodel_write_temp(&spec, t->path, sizeof t->path), 0);
    if (model_load(&t->m, t->path, NULL, err, sizeof err) != 0)
        fail_msg("model_load: %s", err);
    fwd_state_init(&t->fs, &t->m.config, 64, 128);
    uint64_t rng = 11;
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 6; j++)
            t->buf[i][j] = (int32_t)(tmodel_rng(&rng) % 256);
        t->ids[i] = t->buf[i];
        t->lens[i] = 6;
    }
}

static void tiny_close(tiny *t)
{
    fwd_state_free(&t->fs);
    model_free(&t->m);
    unlink(t->path);
}

/* search_base_build: the calibration, the pruned head and the cost model
 * in one; the objective validated by real decoding through the engine on
 * sets of a checkpoint; the tune step, its application and the confirming
 * run (tune_confirm); every number a real decode's. */
static void test_validate_on_tiny_model(void **state)
{
    (void)state;
    char err[512] = "", st_path[96];
    tiny t;
    tiny_open(&t);
    const int32_t L = t.m.config.n_layers;
    search_base sb;
    if (search_base_build(&sb, &t.m, &t.fs, t.ids, t.lens, 4, 16, 64, NULL, err, sizeof err) != 0)
        fail_msg("search_base_build: %s", err);
    assert_int_equal(sb.cs.n_seqs, 4);
    assert_int_equal(sb.cs.n_positions, 4 * 17);
    assert_int_equal(sb.head_only.n_head_tokens, 64);
    assert_int_equal(sb.head.rows, 64);
    assert_true(sb.cm.verify[0] > 0 && sb.cm.base > 0 && sb.cm.base_pruned > 0);

    /* a checkpoint of 5 sets (2 layers: 4 bits) whose estimates rise */
    temp_path(st_path, sizeof st_path, ".state");
    FILE *f = fopen(st_path, "w");
    assert_non_null(f);
    const char *bits[] = {"1111", "0000", "0110", "1000", "0011"};
    for (int i = 0; i < 5; i++) {
        search_entry e = {.sc = {.tokens_per_s = 100.0 * (5 - i), .speedup = 1}};
        snprintf(e.bits, sizeof e.bits, "%s", bits[i]);
        search_state_write(f, &e);
    }
    fclose(f);
    tune_bench tb = {.m = &t.m, .kv_cap = 6 + 16 + SPEC_MAX_DRAFT + 4, .decode = engine_generate};
    skip_set best;
    skipset_init(&best, L);
    best.mlp_skip[1] = 1;
    double est[5], meas[5];
    double rho = tune_validate_objective(st_path, &tb, &best, t.ids, t.lens, 2, 8, 3, est, meas, NULL);
    assert_false(isnan(rho));
    assert_true(rho >= -1.0 && rho <= 1.0);
    /* first, middle and last of the sorted estimates */
    assert_true(est[0] == 100 && est[1] == 300 && est[2] == 500);
    for (int i = 0; i < 3; i++)
        assert_true(meas[i] > 0);
    assert_true(isnan(tune_validate_objective(st_path, &tb, &best, t.ids, t.lens, 2, 8, 6, est, meas, NULL)));
    assert_true(isnan(tune_validate_objective(st_path, &tb, &best, t.ids, t.lens, 2, 8, 2, est, meas, NULL)));
    assert_true(isnan(tune_validate_objective("/nonexistent/x.state", &tb, &best, t.ids, t.lens, 2, 8, 3, est,
                                              meas, NULL)));
    unlink(st_path);

    /* the tune step: the set's own point (head 48, gamma 0.7) joins the grid */
    spec_params sp;
    spec_params_default(&sp);
    sp.gamma_init = 0.7f;
    search_head_tokens(&sb.cs, &t.m, 48, &best);
    const int32_t heads[] = {0, 32};
    const float gammas[] = {0.5f, 0.9f};
    tune_result *tr = callocCheck(1, sizeof *tr);
    tune_measured mp, ms;
    skip_set kept;
    skipset_copy(&kept, &best);
    if (tune_confirm(&tb, &sb.cs, &t.fs, &best, &sb.cm, &sp, heads, 2, gammas, 2, t.ids, t.lens, 2, 8, tr, &mp, &ms,
                     NULL, err, sizeof err) != 0)
        fail_msg("tune_confirm: %s", err);
    assert_int_equal(tr->n_heads, 3);
    assert_int_equal(tr->n_gammas, 3);
    assert_int_equal(tr->n, 9);
    assert_true(tr->before >= 0);
    assert_int_equal(tr->grid[tr->before].head_size, 48);
    assert_true(tr->grid[tr->before].gamma_init == 0.7f);
    for (int32_t i = 0; i < tr->n; i++)
        assert_true(tr->grid[i].sc.tokens_per_s <= tr->grid[tr->best].sc.tokens_per_s);
    /* the chosen point is in the set and the spec_params, the exit recorded */
    const tune_point *bp = &tr->grid[tr->best];
    assert_int_equal(best.n_head_tokens, bp->head_size);
    assert_int_equal(best.head_tokens != NULL, bp->head_size > 0);
    assert_true(sp.gamma_init == bp->gamma_init && best.exit.gamma_init == bp->gamma_init);
    for (int32_t l = 0; l < L; l++)   /* the sublayers stay */
        assert_true(best.attn_skip[l] == kept.attn_skip[l] && best.mlp_skip[l] == kept.mlp_skip[l]);
    assert_true(mp.tps > 0 && ms.tps > 0);
    assert_true(tr->plain.tps == mp.tps && tr->m_tuned.tps == ms.tps);
    assert_true(tr->m_before.tps > 0);
    if (tr->best == tr->before)
        assert_true(tr->m_before.tps == ms.tps);
    /* only plain vs the set (no tune step) */
    spec_params sp2 = sp;
    assert_int_equal(tune_confirm(&tb, &sb.cs, &t.fs, &best, &sb.cm, &sp2, heads, 2, gammas, 2, t.ids, t.lens, 2, 8,
                                  NULL, &mp, &ms, NULL, err, sizeof err), 0);
    assert_true(mp.tps > 0 && ms.tps > 0 && sp2.gamma_init == sp.gamma_init);
    /* the tune step needs two calibration prompts; bad grids are refused */
    calib_set one;
    const int32_t first[] = {0};
    calib_view(&sb.cs, first, 1, &one);
    assert_int_equal(tune_run(&one, &t.m, &t.fs, &best, heads, 2, gammas, 2, 0, 0.5f, &sb.cm, &sp, tr, NULL, err,
                              sizeof err), -1);
    assert_non_null(strstr(err, "at least 2"));
    calib_view_free(&one);
    assert_int_equal(tune_run(&sb.cs, &t.m, &t.fs, &best, heads, 0, gammas, 2, 0, 0.5f, &sb.cm, &sp, tr, NULL, err,
                              sizeof err), -1);
    assert_int_equal(tune_norm_head(256, 256), 0);
    assert_int_equal(tune_norm_head(100, 256), 96);
    assert_int_equal(tune_norm_head(260, 250), 0);
    free(tr);
    skipset_free(&kept);
    skipset_free(&best);
    search_base_free(&sb);
    tiny_close(&t);
}

/* ---------------------------------------------------------------- provenance */

static void fill_tune(tune_result *tr)
{
    memset(tr, 0, sizeof *tr);
    const int32_t hs[] = {0, 1024};
    const float gs[] = {0.5f, 0.75f, 0.9f};
    tr->n_heads = 2;
    tr->n_gammas = 3;
    memcpy(tr->heads, hs, sizeof hs);
    memcpy(tr->gammas, gs, sizeof gs);
    for (int32_t i = 0; i < 6; i++) {
        tune_point *g = &tr->grid[i];
        g->head_size = hs[i / 3];
        g->gamma_init = gs[i % 3];
        g->draft_base = 0.00123456 * (1 + i);
        g->sc = (search_score){.tokens_per_s = 100 + i + 0.123456, .speedup = 1.0 + i / 10.0 + 0.000049,
                               .match_rate = 0.5, .accept_rate = 0.612345, .mean_accepted = 2.34567};
    }
    tr->n = 6;
    tr->best = 4;
    tr->before = 1;
    tr->seconds = 12.345;
    tr->plain.tps = 50;
    tr->m_before = (tune_measured){60, 0.5};
    tr->m_tuned = (tune_measured){75, 0.625};
}

static void fill_cost(cost_model *cm)
{
    memset(cm, 0, sizeof *cm);
    cm->base = 0.002;
    cm->base_pruned = 0.001;
    cm->attn = 0.0003;
    cm->mlp = 0.0004;
    cm->max_k = 2;
    cm->verify[0] = 0.01;
    cm->verify[1] = 0.0111111;
    cm->verify[2] = 0.0122222;
}

static void test_provenance_members(void **state)
{
    (void)state;
    tune_result *tr = callocCheck(1, sizeof *tr);
    fill_tune(tr);
    cost_model cm;
    fill_cost(&cm);
    spec_params sp;
    spec_params_default(&sp);
    /* a score as it is; a grid point rounded, with its full score or not */
    cJSON *s = prov_score_json(&tr->grid[0].sc);
    assert_true(num(s, "tokens_per_s") == 100.123456 && num(s, "acceptance_rate") == 0.612345);
    assert_true(num(s, "mean_accepted") == 2.34567 && num(s, "match_rate") == 0.5);
    cJSON_Delete(s);
    cJSON *p = prov_point_json(&tr->grid[1], 0);
    assert_true(num(p, "head_size") == 0 && num(p, "gamma_init") == 0.75);
    assert_true(num(p, "draft_base_ms") == 2.4691 && num(p, "speedup") == 1.1);
    assert_null(cJSON_GetObjectItemCaseSensitive(p, "tokens_per_s"));
    cJSON_Delete(p);
    p = prov_point_json(&tr->grid[1], 1);
    assert_true(num(p, "tokens_per_s") == 101.12 && num(p, "acceptance_rate") == 0.6123);
    assert_true(num(p, "mean_accepted") == 2.346);
    cJSON_Delete(p);
    /* "tune" */
    cJSON *t = prov_tune_json(tr, &cm, &sp, 3);
    assert_true(num(t, "seconds") == 12.3 && num(t, "threads") == 3);
    const cJSON *cost = cJSON_GetObjectItemCaseSensitive(t, "cost_model_ms");
    assert_true(num(cost, "full_step") == 10.0 && num(cost, "draft_base_full_head") == 2.0);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(cost, "verify_k_plus_1");
    assert_int_equal(cJSON_GetArraySize(ver), 3);
    assert_true(cJSON_GetArrayItem(ver, 1)->valuedouble == 11.11);
    const cJSON *fixed = cJSON_GetObjectItemCaseSensitive(t, "fixed");
    assert_true(num(fixed, "max_draft") == sp.max_draft);
    const cJSON *hs = cJSON_GetObjectItemCaseSensitive(t, "head_sizes");
    assert_int_equal(cJSON_GetArraySize(hs), 2);
    assert_true(cJSON_GetArrayItem(hs, 1)->valuedouble == 1024);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(t, "gamma_inits")), 3);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(t, "grid")), 6);
    const cJSON *chosen = cJSON_GetObjectItemCaseSensitive(t, "chosen");
    assert_true(num(chosen, "head_size") == 1024 && num(chosen, "gamma_init") == 0.75);
    assert_true(num(chosen, "tokens_per_s") == 104.12);
    const cJSON *before = cJSON_GetObjectItemCaseSensitive(t, "before");
    assert_true(num(before, "head_size") == 0 && num(before, "gamma_init") == 0.75);
    const cJSON *me = cJSON_GetObjectItemCaseSensitive(t, "measured");
    assert_true(num(me, "plain_tokens_per_s") == 50 && num(me, "tuned_speedup") == 1.5);
    assert_true(num(me, "before_speedup") == 1.2 && num(me, "tuned_acceptance_rate") == 0.625);
    cJSON_Delete(t);
    /* no confirming run, no before point: neither member */
    tr->plain.tps = 0;
    tr->before = -1;
    t = prov_tune_json(tr, &cm, &sp, 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(t, "measured"));
    assert_null(cJSON_GetObjectItemCaseSensitive(t, "before"));
    cJSON_Delete(t);
    free(tr);
}

/* A search run's provenance, saved in a config beside the skip set,
 * loads back as the same set; its members are there, and --tune-only reads
 * the calibration it records. */
static void test_provenance_round_trip(void **state)
{
    (void)state;
    char err[512], cfg[96], dir[96], prompts[512];
    model_config c = {.n_layers = 4, .dim = 64, .vocab_size = 256};
    snprintf(c.name, sizeof c.name, "Tiny Test-Model 1");
    tune_result *tr = callocCheck(1, sizeof *tr);
    fill_tune(tr);
    cost_model cm;
    fill_cost(&cm);
    spec_params sp;
    spec_params_default(&sp);
    sp.gamma_init = 0.75f;
    calib_set cs = {.n_seqs = 16, .n_positions = 1040};
    prov_search ps = {.prompts_path = "/somewhere/configs/prompts/no-such-file.jsonl", .n_new = 64,
                      .random_only = 0, .budget = 420, .head_size = 8192, .seed = 5, .threads = 2};
    search_score sc = tr->grid[tr->best].sc;
    tune_measured plain = {50, 0}, spec = {75, 0.625};
    char *prov = prov_search_json(&ps, &cs, &cm, &sc, &plain, &spec, 0.6, tr, &sp);
    assert_non_null(prov);

    temp_path(dir, sizeof dir, "");
    skipset_default_path(dir, &c, cfg, sizeof cfg);
    char want[160];
    snprintf(want, sizeof want, "%s/tiny-test-model-1.json", dir);
    assert_string_equal(cfg, want);
    temp_path(cfg, sizeof cfg, ".json");
    skip_set s;
    skipset_init(&s, 4);
    s.attn_skip[1] = s.mlp_skip[3] = 1;
    spec_params_to_exit(&sp, &s.exit);
    if (skipset_save(&s, cfg, &c, 0, prov, err, sizeof err) != 0)
        fail_msg("skipset_save: %s", err);
    free(prov);
    skip_set back;
    if (skipset_load(&back, cfg, &c, err, sizeof err) != 0)
        fail_msg("skipset_load: %s", err);
    assert_int_equal(skipset_count(&back), 2);
    assert_true(back.attn_skip[1] && back.mlp_skip[3]);
    assert_true(back.exit.gamma_init == 0.75f);
    assert_true(fabsf(back.speedup - 1.5f) < 1e-6f);   /* the measured speedup */
    skipset_free(&back);

    cJSON *j = parse_file(cfg);
    const cJSON *cal = cJSON_GetObjectItemCaseSensitive(j, "calibration");
    assert_string_equal(str(cal, "prompts"), "configs/prompts/no-such-file.jsonl");   /* repository-relative */
    assert_true(num(cal, "n_prompts") == 16 && num(cal, "new_tokens_per_prompt") == 64);
    assert_true(num(cal, "positions") == 1040);
    const cJSON *se = cJSON_GetObjectItemCaseSensitive(j, "search");
    assert_non_null(strstr(str(se, "strategy"), "local search"));
    assert_true(num(se, "budget_seconds") == 420 && num(se, "head_size") == 8192 && num(se, "seed") == 5);
    assert_true(num(se, "threads") == 2);
    const cJSON *cost = cJSON_GetObjectItemCaseSensitive(j, "cost_model_ms");
    assert_true(num(cost, "draft_base_pruned_head") == 1.0);
    const cJSON *est = cJSON_GetObjectItemCaseSensitive(j, "estimated");
    assert_true(num(est, "tokens_per_s") == sc.tokens_per_s);
    const cJSON *me = cJSON_GetObjectItemCaseSensitive(j, "measured");
    assert_true(num(me, "speedup") == 1.5 && num(me, "acceptance_rate") == 0.625);
    assert_true(num(j, "objective_rank_correlation") == 0.6);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "tune"));
    cJSON_Delete(j);

    /* the calibration read back: a configs/ path not readable from here is
     * looked up in the configs folder given */
    int32_t n_new = 0;
    assert_int_equal(prov_read_calibration(cfg, "/my/configs", prompts, sizeof prompts, &n_new, err, sizeof err), 0);
    assert_string_equal(prompts, "/my/configs/prompts/no-such-file.jsonl");
    assert_int_equal(n_new, 64);

    /* --tune-only: the seed's own members carried, the tuned ones replaced */
    tr->grid[tr->best].sc.tokens_per_s = 999;
    char *tuned = prov_tuned_json(cfg, tr, &cm, &sp, 4);
    cJSON *tj = cJSON_Parse(tuned);
    free(tuned);
    assert_non_null(tj);
    assert_true(num(cJSON_GetObjectItemCaseSensitive(tj, "calibration"), "n_prompts") == 16);
    assert_true(num(tj, "objective_rank_correlation") == 0.6);
    assert_true(num(cJSON_GetObjectItemCaseSensitive(tj, "estimated"), "tokens_per_s") == 999);
    assert_non_null(strstr(str(cJSON_GetObjectItemCaseSensitive(tj, "measured"), "on"), "confirming"));
    assert_true(num(cJSON_GetObjectItemCaseSensitive(tj, "tune"), "threads") == 4);
    const char *gone[] = {"model", "attn_skip", "mlp_skip", "exit"};
    for (int i = 0; i < 4; i++)
        assert_null(cJSON_GetObjectItemCaseSensitive(tj, gone[i]));
    cJSON_Delete(tj);
    /* no readable seed: only the tuned members */
    tuned = prov_tuned_json("/nonexistent/seed.json", tr, &cm, &sp, 4);
    tj = cJSON_Parse(tuned);
    free(tuned);
    assert_null(cJSON_GetObjectItemCaseSensitive(tj, "calibration"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(tj, "tune"));
    cJSON_Delete(tj);

    /* a config without a calibration, or not JSON */
    FILE *f = fopen(cfg, "w");
    fputs("{\"calibration\": {\"new_tokens_per_prompt\": 4}}", f);
    fclose(f);
    assert_int_equal(prov_read_calibration(cfg, "/my/configs", prompts, sizeof prompts, &n_new, err, sizeof err), 0);
    assert_string_equal(prompts, "");
    assert_int_equal(n_new, 0);   /* out of 8..4096 */
    f = fopen(cfg, "w");
    fputs("[1, 2]", f);
    fclose(f);
    assert_int_equal(prov_read_calibration(cfg, "/my/configs", prompts, sizeof prompts, &n_new, err, sizeof err), -1);
    assert_int_equal(prov_read_calibration("/nonexistent/c.json", "/my/configs", prompts, sizeof prompts, &n_new, err,
                                           sizeof err), -1);
    unlink(cfg);
    skipset_free(&s);
    free(tr);
}

/* --transfer-only: another model's set mapped by depth, its provenance */
static void test_transfer_config(void **state)
{
    (void)state;
    char err[512], seed[96], out[96];
    model_config big = {.n_layers = 8, .dim = 64, .vocab_size = 256}, small = {.n_layers = 4, .dim = 64,
                                                                                   .vocab_size = 256};
    snprintf(big.name, sizeof big.name, "big");
    snprintf(small.name, sizeof small.name, "small");
    temp_path(seed, sizeof seed, ".json");
    temp_path(out, sizeof out, ".json");
    skip_set s;
    skipset_init(&s, 8);
    s.attn_skip[0] = s.attn_skip[7] = s.mlp_skip[3] = 1;
    assert_int_equal(skipset_save(&s, seed, &big, 0, NULL, err, sizeof err), 0);
    skipset_free(&s);
    prov_transfer_info ti;
    if (prov_write_transfer(seed, &small, "/nonexistent-configs", out, 0, &ti, err, sizeof err) != 0)
        fail_msg("prov_write_transfer: %s", err);
    assert_int_equal(ti.from_layers, 8);
    assert_int_equal(ti.from_skipped, 3);
    assert_int_equal(ti.to_skipped, 3);
    skip_set back;
    if (skipset_load(&back, out, &small, err, sizeof err) != 0)
        fail_msg("skipset_load: %s", err);
    assert_true(back.attn_skip[0] && back.attn_skip[3] && back.mlp_skip[1]);   /* round(3/7*3) = 1 */
    skipset_free(&back);
    cJSON *j = parse_file(out);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "transferred");
    assert_string_equal(str(t, "from"), seed);
    assert_true(num(t, "from_layers") == 8);
    cJSON_Delete(j);
    assert_int_equal(prov_write_transfer("/nonexistent/seed.json", &small, "/x", out, 0, NULL, err, sizeof err), -1);
    char *pj = prov_transfer_json("/a/b/configs/x.json", 30);
    assert_non_null(strstr(pj, "\"from\":\"configs/x.json\""));
    free(pj);
    unlink(seed);
    unlink(out);
}

/* The report table of OUT.report.json, and a missing or broken report. */
static void test_report_print(void **state)
{
    (void)state;
    char err[256], path[96], outp[96];
    temp_path(path, sizeof path, ".report.json");
    temp_path(outp, sizeof outp, ".txt");
    FILE *f = fopen(path, "w");
    fputs("{\"full_match\": 0.5, \"sublayers\": [{\"match_alone\": 0.9, \"in_top\": 0.1},"
          "{\"match_alone\": 0.8, \"in_top\": 0.2}, {\"match_alone\": 0.7, \"in_top\": 0.3},"
          "{\"match_alone\": 0.6, \"in_top\": 0.4}]}", f);
    fclose(f);
    FILE *o = fopen(outp, "w");
    assert_int_equal(search_report_print(path, o, err, sizeof err), 0);
    fclose(o);
    size_t len;
    char *text = util_read_file(outp, &len, err, sizeof err);
    assert_non_null(strstr(text, "nothing skipped = 0.500"));
    assert_non_null(strstr(text, "    0        0.900          0.10       0.700         0.30"));
    assert_non_null(strstr(text, "    1        0.800          0.20       0.600         0.40"));
    free(text);
    f = fopen(path, "w");
    fputs("{\"sublayers\": [{\"match_alone\": 0.9}, {}]}", f);   /* members missing */
    fclose(f);
    assert_int_equal(search_report_print(path, stdout, err, sizeof err), -1);
    assert_non_null(strstr(err, "no report"));
    unlink(path);
    assert_int_equal(search_report_print(path, stdout, err, sizeof err), -1);
    unlink(outp);
}

/* skipset_copy: equal, and its own arrays. */
static void test_skipset_copy(void **state)
{
    (void)state;
    skip_set a, b;
    skipset_init(&a, 3);
    a.attn_skip[2] = a.mlp_skip[0] = 1;
    a.head_tokens = mallocCheck(2 * sizeof(int32_t));
    a.head_tokens[0] = 7;
    a.head_tokens[1] = 9;
    a.n_head_tokens = 2;
    a.exit.gamma_init = 0.3f;
    a.speedup = 1.25f;
    snprintf(a.source, sizeof a.source, "somewhere.json");
    skipset_copy(&b, &a);
    assert_int_equal(b.n_layers, 3);
    assert_true(b.attn_skip[2] && b.mlp_skip[0] && skipset_count(&b) == 2);
    assert_true(b.head_tokens != a.head_tokens && b.head_tokens[1] == 9 && b.n_head_tokens == 2);
    assert_true(b.attn_skip != a.attn_skip);
    assert_true(b.exit.gamma_init == 0.3f && b.speedup == 1.25f);
    assert_string_equal(b.source, "somewhere.json");
    skipset_free(&a);
    skipset_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spearman),
        cmocka_unit_test(test_parse_list),
        cmocka_unit_test(test_measure_many_turns),
        cmocka_unit_test(test_provenance_members),
        cmocka_unit_test(test_provenance_round_trip),
        cmocka_unit_test(test_transfer_config),
        cmocka_unit_test(test_report_print),
        cmocka_unit_test(test_skipset_copy),
        cmocka_unit_test(test_validate_on_tiny_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
