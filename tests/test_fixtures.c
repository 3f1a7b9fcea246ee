/*
 * test_fixtures.c - the engine on the real model against llama.cpp
 * (tests/fixtures/logits.json, made by scripts/make_logit_fixtures.py).
 *
 *  - prompt logits: each prompt in one batched model_forward call, logits at
 *    every position. Where llama.cpp's top-1/top-2 margin exceeds
 *    MARGIN_TOL our top-1 must equal llama.cpp's; the logits of llama.cpp's
 *    top-5 ids must be within LOGIT_TOL of llama.cpp's.
 *  - greedy: 64 tokens of plain decoding (T = 1 steps, argmax with ties to
 *    the smaller id) must equal llama.cpp's gen_ids up to the first step
 *    where llama.cpp's own top-2 margin is below MARGIN_TOL (from there on
 *    the two engines may legitimately pick differently); and wherever the
 *    two first part, llama.cpp's margin there must be below MARGIN_TOL.
 * The measured figures are printed. The model path is
 * models/SmolLM2-135M-Instruct.Q4_1.gguf unless SELFSPEC_MODEL says
 * otherwise, its fixture tests/fixtures/logits.json unless
 * SELFSPEC_LOGIT_FIXTURE says otherwise (tests/fixtures/qwen_logits.json
 * for Qwen2.5-Coder-1.5B, `make test-qwen`); the tests are skipped when the
 * model is absent. The greedy length is the fixture's header n_gen.
 * Where the fixture has gen_top5_logprobs (llama.cpp's log-softmax along
 * its greedy continuation), the log-probabilities a response reports
 * (sampler_logprobs) of those 5 ids are held to them with the logit
 * tolerance, at every step where the two continuations still agree.
 * Set SELFSPEC_FIXTURE_VERBOSE=1 for per-position details.
 *
 * A second reference, where the fixture has one (exact_top5 / exact_top1,
 * scripts/make_exact_reference.py): the model in exact float64 arithmetic.
 * At Qwen2.5's first prompt tokens the residual stream carries entries near
 * 3,600 and llama.cpp's Q8_K activation rounding (one int8 scale per 256
 * values) moves its logits by up to 12 from the exact ones -- the script
 * reproduces llama.cpp's figures there to ~1e-3 by emulating that rounding,
 * and records the largest such difference (q8k_max_abs_diff). At a position
 * where llama.cpp itself is more than LOGIT_TOL from the exact value, a
 * logit of ours is checked against the exact value instead, and must be
 * within LOGIT_TOL of it or at least as close to it as llama.cpp's (our
 * int8 activations, one scale per 32 values, are distorted there too, less
 * than llama.cpp's per-256 ones: measured on Qwen2.5-Coder-1.5B, llama.cpp
 * 3.1-15.4 from the exact logits at those positions, ours at most 2.6); a
 * top-1 of ours is checked against the exact top-1 (same margin rule).
 * Likewise a top-1 disagreement where llama.cpp's margin is wide but the
 * exact model's is below MARGIN_TOL is a near-tie (Gemma-3-270M, long
 * prompt, position 720: llama.cpp 0.60, exact 0.18). These checks are
 * counted and printed.
 *
 * Why these tolerances: the fixture was computed by llama.cpp with an f32
 * KV cache; selfspec keeps it in f16 (and quantizes activations to int8
 * per block of 32 for short blocks, re-quantizes f32/f16 tensors to 8-bit
 * affine blocks, and sums in another order). The header's
 * kv_alt_max_abs_diff shows llama.cpp itself moving by up to 2.03 (max over
 * all positions and the full vocabulary) when only its KV cache becomes
 * f16, and its own batched vs token-by-token evaluation of the french
 * prompt differs by 0.96 (incremental_max_abs_diff).
 *
 * Measured with SmolLM2-135M-Instruct.Q4_1 (5 prompts, 168 positions; the
 * figures below are of 2026-11; on 2026-12-07, with single-precision
 * activation scales: max 0.93, mean 0.18, 6 near-tie top-1 differences):
 *   max |our logit - llama.cpp's| over llama.cpp's top-5 ids = 1.13
 *   (french pos 25; 0.78 over the top-1 ids alone), mean 0.17;
 *   top-1 disagreements: 4 positions, at llama.cpp margins 0.055, 0.137,
 *   0.056, 0.120;
 *   greedy: french and numbers match all 64 tokens; english diverges at
 *   step 6 (llama.cpp margin 0.024), chat at 33 (0.039), python at 49
 *   (0.032) -- all near-ties.
 * LOGIT_TOL = 1.6 (the order of llama.cpp's own f32/f16-KV difference, 40%
 * over our worst case); MARGIN_TOL = 0.5 (3.6x the largest margin at which
 * a disagreement was seen). A prompt on which llama.cpp's own f32/f16-KV
 * difference (kv_alt_max_abs_diff) exceeds LOGIT_TOL is held to that
 * difference instead: Gemma-3-270M's logits are larger and noisier
 * (llama.cpp moves by 1.6-3.2 between its own KV types; ours were at most
 * 2.10 from its f32-KV logits, on the english prompt, whose own figure is
 * 2.75).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "decode/sampler.h"
#include "util/util.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIXTURE_PATH "tests/fixtures/logits.json"

/* See the header comment for the measured figures behind these bounds. */
#define LOGIT_TOL 1.6f
#define MARGIN_TOL 0.5f

typedef struct {
    model m;
    cJSON *root;
    int loaded;
    int n_gen;            /* greedy tokens recorded per prompt */
} fixture_ctx;

static fixture_ctx ctx;

static int verbose(void)
{
    const char *v = getenv("SELFSPEC_FIXTURE_VERBOSE");
    return v && *v && strcmp(v, "0") != 0;
}

static int setup(void **state)
{
    (void)state;
    memset(&ctx, 0, sizeof ctx);
    const char *path = getenv("SELFSPEC_MODEL");
    if (!path || !*path)
        path = DEFAULT_MODEL;
    if (access(path, R_OK) != 0) {
        printf("  model %s not found: skipping the llama.cpp fixture tests "
               "(run `make setup` or set SELFSPEC_MODEL)\n", path);
        return 0;
    }
    char err[512] = "";
    size_t len = 0;
    const char *fixture = getenv("SELFSPEC_LOGIT_FIXTURE");
    if (!fixture || !*fixture)
        fixture = FIXTURE_PATH;
    char *text = util_read_file(fixture, &len, err, sizeof err);
    if (!text) {
        printf("  cannot read %s: %s\n", fixture, err);
        return -1;
    }
    ctx.root = cJSON_Parse(text);
    free(text);
    if (!ctx.root) {
        printf("  %s: JSON parse error\n", fixture);
        return -1;
    }
    if (model_load(&ctx.m, path, NULL, err, sizeof err) != 0) {
        printf("  model_load(%s): %s\n", path, err);
        cJSON_Delete(ctx.root);
        return -1;
    }
    const cJSON *hdr = cJSON_GetObjectItemCaseSensitive(ctx.root, "header");
    const cJSON *nv = cJSON_GetObjectItemCaseSensitive(hdr, "n_vocab");
    const cJSON *ng = cJSON_GetObjectItemCaseSensitive(hdr, "n_gen");
    ctx.n_gen = cJSON_IsNumber(ng) ? (int)ng->valuedouble : 0;
    if (!cJSON_IsNumber(nv) || (int)nv->valuedouble != ctx.m.config.vocab_size || ctx.n_gen <= 0) {
        printf("  fixture n_vocab does not match the model's %d, or no n_gen\n", ctx.m.config.vocab_size);
        model_free(&ctx.m);
        cJSON_Delete(ctx.root);
        return -1;
    }
    ctx.loaded = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (ctx.loaded)
        model_free(&ctx.m);
    cJSON_Delete(ctx.root);
    memset(&ctx, 0, sizeof ctx);
    return 0;
}

static int32_t *int_array(const cJSON *a, int *n)
{
    assert_true(cJSON_IsArray(a));
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        assert_true(cJSON_IsNumber(e));
        v[i++] = (int32_t)e->valuedouble;
    }
    return v;
}

static float *float_array(const cJSON *a, int *n)
{
    assert_true(cJSON_IsArray(a));
    *n = cJSON_GetArraySize(a);
    float *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        assert_true(cJSON_IsNumber(e));
        v[i++] = (float)e->valuedouble;
    }
    return v;
}

/* Top-2 margin of a logits row. */
static float top2_margin(const float *l, int32_t n)
{
    int32_t a = sampler_argmax(l, n);
    float second = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (i != a && l[i] > second)
            second = l[i];
    return l[a] - second;
}

/* ----------------------------------------------------------- prompt logits */

static void test_prompt_logits(void **state)
{
    (void)state;
    if (!ctx.loaded)
        skip();
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(ctx.root, "prompts");
    assert_true(cJSON_IsObject(prompts));
    int32_t V = ctx.m.config.vocab_size;
    float worst = 0.0f, worst_top1 = 0.0f;
    double sum_diff = 0.0;
    long n_diff = 0;
    int positions = 0, mismatches = 0, failures = 0, exact_used = 0;
    float exact_worst = 0.0f;
    const cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        int n = 0;
        int32_t *ids = int_array(cJSON_GetObjectItemCaseSensitive(p, "ids"), &n);
        const cJSON *top5 = cJSON_GetObjectItemCaseSensitive(p, "prompt_top5");
        assert_int_equal(cJSON_GetArraySize(top5), n);
        const cJSON *ex5 = cJSON_GetObjectItemCaseSensitive(p, "exact_top5");
        const cJSON *ex1 = cJSON_GetObjectItemCaseSensitive(p, "exact_top1");
        if (ex5)
            assert_true(cJSON_GetArraySize(ex5) == n && cJSON_GetArraySize(ex1) == n);
        fwd_state s;
        kv_cache kv;
        char err[512] = "";
        fwd_state_init(&s, &ctx.m.config, n, n + 1);
        assert_int_equal(kv_init(&kv, &ctx.m.config, n + 1, err, sizeof err), 0);
        float *logits = malloc((size_t)n * V * sizeof(float));
        fwd_seq sq = {.tokens = ids, .n_tokens = n, .pos = 0, .kv = &kv, .logits_from = 0};
        if (model_forward(&ctx.m, &s, &sq, 1, NULL, NULL, logits, err, sizeof err) != 0)
            fail_msg("model_forward: %s", err);
        /* the prompt's tolerance: LOGIT_TOL, or llama.cpp's own difference
         * between its f32 and f16 KV caches on this prompt where larger */
        const cJSON *kv_alt = cJSON_GetObjectItemCaseSensitive(p, "kv_alt_max_abs_diff");
        float ptol = LOGIT_TOL;
        if (cJSON_IsNumber(kv_alt) && kv_alt->valuedouble > ptol)
            ptol = (float)kv_alt->valuedouble;
        float pw = 0.0f;
        int pmis = 0;
        for (int t = 0; t < n; t++) {
            const float *l = logits + (size_t)t * V;
            const cJSON *row = cJSON_GetArrayItem(top5, t);
            int32_t tid[5];
            float tl[5];
            for (int k = 0; k < 5; k++) {
                const cJSON *pair = cJSON_GetArrayItem(row, k);
                tid[k] = (int32_t)cJSON_GetArrayItem(pair, 0)->valuedouble;
                tl[k] = (float)cJSON_GetArrayItem(pair, 1)->valuedouble;
                assert_true(tid[k] >= 0 && tid[k] < V);
                float d = fabsf(l[tid[k]] - tl[k]), tol = ptol;
                if (!(d <= ptol) && ex5) {
                    /* llama.cpp off the exact value here? then ours must be within the
                     * tolerance of the exact value, or at least as close to it as llama.cpp */
                    float ev = (float)cJSON_GetArrayItem(cJSON_GetArrayItem(ex5, t), k)->valuedouble;
                    float off = fabsf(tl[k] - ev);
                    if (off > ptol) {
                        d = fabsf(l[tid[k]] - ev);
                        tol = off;
                        exact_used++;
                        if (d > exact_worst)
                            exact_worst = d;
                        printf("  %s pos %d: id %d: llama.cpp %.4f is %.2f from the exact %.4f; ours %.4f (%.2f)\n",
                               p->string, t, tid[k], tl[k], off, ev, l[tid[k]], d);
                    }
                }
                sum_diff += d;
                n_diff++;
                if (tol == ptol && d > pw)
                    pw = d;
                if (tol == ptol && k == 0 && d > worst_top1)
                    worst_top1 = d;
                if (!(d <= tol)) {
                    failures++;
                    printf("  %s pos %d: logit of id %d is %.4f, llama.cpp %.4f (diff %.4f > %.2f)\n",
                           p->string, t, tid[k], l[tid[k]], tl[k], d, tol);
                }
            }
            int32_t ours = sampler_argmax(l, V);
            float margin = tl[0] - tl[1];
            if (ours != tid[0]) {
                mismatches++;
                pmis++;
                printf("  %s pos %d: top-1 %d (ours) vs %d (llama.cpp), llama.cpp margin %.4f, "
                       "our logits %.4f / %.4f\n", p->string, t, ours, tid[0], margin, l[ours], l[tid[0]]);
                const cJSON *e1 = ex1 ? cJSON_GetArrayItem(ex1, t) : NULL;
                int llama_off = e1 && (int32_t)cJSON_GetArrayItem(e1, 0)->valuedouble != tid[0];
                float emargin = e1 ? (float)cJSON_GetArrayItem(e1, 1)->valuedouble : 0.0f;
                if (llama_off) {
                    /* llama.cpp's own top-1 is not the exact one: hold ours to the exact one */
                    exact_used++;
                    int32_t eid = (int32_t)cJSON_GetArrayItem(e1, 0)->valuedouble;
                    printf("    llama.cpp's top-1 differs from the exact %d (exact margin %.4f)\n", eid, emargin);
                    if (ours != eid && emargin > MARGIN_TOL) {
                        failures++;
                        printf("    ^ ours is not the exact top-1 either: a real disagreement\n");
                    }
                } else if (margin > MARGIN_TOL && (!e1 || emargin > MARGIN_TOL)) {
                    failures++;
                    printf("    ^ margin above %.2f: a real disagreement\n", MARGIN_TOL);
                } else if (margin > MARGIN_TOL) {
                    /* llama.cpp's margin is wide, the exact model's is a near-tie */
                    exact_used++;
                    printf("    the exact model's margin there is %.4f: a near-tie\n", emargin);
                }
            }
            if (verbose())
                printf("    %s pos %3d: top-1 %6d margin %7.4f  max top-5 diff %.4f\n", p->string, t,
                       tid[0], margin, fabsf(l[tid[0]] - tl[0]));
        }
        printf("  %-8s %2d positions: max |diff| over llama.cpp's top-5 = %.4f (tolerance %.2f), top-1 mismatches %d\n",
               p->string, n, pw, ptol, pmis);
        if (pw > worst)
            worst = pw;
        positions += n;
        free(logits);
        free(ids);
        kv_free(&kv);
        fwd_state_free(&s);
    }
    printf("  all prompts: %d positions, max |diff| over top-5 = %.4f (top-1 ids only: %.4f), "
           "mean %.4f, top-1 mismatches %d; tolerances %.2f (logits), %.2f (margin); "
           "%d checks against the exact reference where llama.cpp's rounding is off by more "
           "(ours within %.4f of it there)\n",
           positions, worst, worst_top1, n_diff ? sum_diff / n_diff : 0.0, mismatches, LOGIT_TOL,
           MARGIN_TOL, exact_used, exact_worst);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ greedy */

static void test_greedy(void **state)
{
    (void)state;
    if (!ctx.loaded)
        skip();
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(ctx.root, "prompts");
    int32_t V = ctx.m.config.vocab_size;
    int full = 0, failures = 0, n_prompts = 0, lp_n = 0;
    float lp_worst = 0.0f;
    const cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        int n = 0, ng = 0, nm = 0;
        int32_t *ids = int_array(cJSON_GetObjectItemCaseSensitive(p, "ids"), &n);
        int32_t *gen = int_array(cJSON_GetObjectItemCaseSensitive(p, "gen_ids"), &ng);
        float *gmargin = float_array(cJSON_GetObjectItemCaseSensitive(p, "gen_margin"), &nm);
        const int N_GEN = ctx.n_gen;
        assert_int_equal(ng, N_GEN);
        assert_int_equal(nm, N_GEN);
        fwd_state s;
        kv_cache kv;
        char err[512] = "";
        int cap = n + N_GEN + 1;
        fwd_state_init(&s, &ctx.m.config, n, cap);
        assert_int_equal(kv_init(&kv, &ctx.m.config, cap, err, sizeof err), 0);
        float *logits = malloc((size_t)V * sizeof(float));
        fwd_seq sq = {.tokens = ids, .n_tokens = n, .pos = 0, .kv = &kv, .logits_from = n - 1};
        if (model_forward(&ctx.m, &s, &sq, 1, NULL, NULL, logits, err, sizeof err) != 0)
            fail_msg("model_forward: %s", err);
        kv.len = n;
        int agree = 0, checked_until = N_GEN, diverged = -1;
        /* the log-probabilities a response reports (sampler_logprobs) against
         * llama.cpp's log-softmax, where the fixture has them, while the two
         * continuations agree */
        const cJSON *glp = cJSON_GetObjectItemCaseSensitive(p, "gen_top5_logprobs");
        const cJSON *kv_alt = cJSON_GetObjectItemCaseSensitive(p, "kv_alt_max_abs_diff");
        float lp_tol = cJSON_IsNumber(kv_alt) && kv_alt->valuedouble > LOGIT_TOL ? (float)kv_alt->valuedouble : LOGIT_TOL;
        for (int i = 0; i < N_GEN; i++) {
            if (checked_until == N_GEN && gmargin[i] < MARGIN_TOL)
                checked_until = i;   /* llama.cpp near a tie from here on */
            int32_t tok = sampler_argmax(logits, V);
            if (glp && tok == gen[i]) {
                sampler_logprob lp;
                sampler_logprobs(logits, V, tok, 0, &lp);
                const cJSON *row = cJSON_GetArrayItem(glp, i);
                for (int k = 0; k < 5; k++) {
                    const cJSON *pair = cJSON_GetArrayItem(row, k);
                    int32_t id = (int32_t)cJSON_GetArrayItem(pair, 0)->valuedouble;
                    sampler_logprob o;
                    sampler_logprobs(logits, V, id, 0, &o);
                    float d = fabsf(o.logprob - (float)cJSON_GetArrayItem(pair, 1)->valuedouble);
                    lp_worst = d > lp_worst ? d : lp_worst;
                    lp_n++;
                    if (!(d <= lp_tol)) {
                        failures++;
                        printf("  %s step %d: log-probability of %d is %.4f, llama.cpp's %.4f\n", p->string, i, id,
                               o.logprob, cJSON_GetArrayItem(pair, 1)->valuedouble);
                    }
                }
            }
            if (tok != gen[i]) {
                diverged = i;
                printf("  %-8s diverges at step %d: ours %d, llama.cpp %d; llama.cpp margin %.4f, "
                       "ours %.4f (our logits %.4f / %.4f)\n", p->string, i, tok, gen[i], gmargin[i],
                       top2_margin(logits, V), logits[tok], logits[gen[i]]);
                if (i < checked_until || !(gmargin[i] < MARGIN_TOL)) {
                    failures++;
                    printf("    ^ llama.cpp's margin is not a near-tie here (first near-tie step %d): "
                           "a real disagreement\n", checked_until);
                }
                break;
            }
            agree++;
            if (i + 1 == N_GEN)
                break;
            fwd_seq d = {.tokens = &tok, .n_tokens = 1, .pos = kv.len, .kv = &kv, .logits_from = 0};
            if (model_forward(&ctx.m, &s, &d, 1, NULL, NULL, logits, err, sizeof err) != 0)
                fail_msg("model_forward: %s", err);
            kv.len++;
        }
        printf("  %-8s greedy: %2d/%d tokens identical to llama.cpp%s (first llama.cpp margin < %.2f at step %d)\n",
               p->string, agree, N_GEN, diverged < 0 ? " (all)" : "", MARGIN_TOL, checked_until);
        full += diverged < 0;
        n_prompts++;
        free(logits);
        free(ids);
        free(gen);
        free(gmargin);
        kv_free(&kv);
        fwd_state_free(&s);
    }
    printf("  greedy: %d of %d prompts match all %d tokens\n", full, n_prompts, ctx.n_gen);
    if (lp_n)
        printf("  log-probabilities of llama.cpp's top-5 along the agreeing steps: %d checked, max |diff| %.4f\n",
               lp_n, lp_worst);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_logits),
        cmocka_unit_test(test_greedy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
