/*
 * test_spec.c - unit tests for common/spec.c (self-speculative decoding) and
 * common/skipset.c, on tiny random Llama models written by testutil_model.
 *
 *  - greedy exactness: gen_selfspec emits exactly gen_plain's ids (and the
 *    same number of them) for many skip sets (none, all, all MLP, all
 *    attention, all but one sublayer, random), several prompts, with and
 *    without a pruned draft head, max_draft 1..12, with ignore_eos and with
 *    EOS / max_tokens / emit-callback / context-full stops;
 *  - the verified KV cache after gen_selfspec is byte-identical to gen_plain's
 *    over positions < kv->len (the draft scratch never leaks into it);
 *  - speculative sampling: the distribution of the first generated tokens
 *    under self-spec equals plain sampling (chi-square homogeneity test on
 *    N seeds each, p > 0.001) for T=1, T=0.7+top-k, top-p 0.9 and a pruned
 *    draft head, with a draft that really disagrees (acceptance rate in
 *    (0.05, 0.95)); and the test has power: sampling from the draft alone
 *    (an "accept everything" rule) is detected as different (p < 1e-6), and
 *    so is a subtly wrong rule that resamples a rejected token from p
 *    instead of norm(max(0, p - q)) (p < 0.001);
 *  - a fixed seed reproduces a sampling run; spec_exit_update follows the
 *    adaptive-exit rule numerically; spec_params_check; the draft-length
 *    clamp (spec_end_pos, spec_draft_limit) equals the inline formulas;
 *  - skipset_load rejects bad configs and accepts good ones; skipset_save /
 *    skipset_load / skipset_find round-trip.
 * spec_draft_from (drafting on top of unverified scratch) continues a draft.
 *  - context drafts and chains (decode/ngram.h): greedy output and verified
 *    KV identical to plain for context, chain and auto drafts on prompts
 *    with repeats, with and without a skip set; spec_choose's forced kinds
 *    and rule; spec_accept on point-q tokens (p ~ 1 accepted, p ~ 0
 *    rejected and never redrawn, frequency p(x)); speculative sampling with point-distribution context drafts
 *    (alone and chained) equal in distribution to plain (chi-square), with
 *    a wrong rejection rule detected.
 * Runs single-threaded unless OMP_NUM_THREADS is set; TEST_SPEC_FILTER
 * (a cmocka pattern, e.g. "test_sampling*") runs a subset.
 * Run from the repository root. Every random choice is seeded: a run is
 * deterministic, so a statistical test that passes once passes always.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decode/generate.h"
#include "decode/ngram.h"
#include "format/gguf.h"
#include "model/model.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "oracle.h"
#include "testutil_gguf.h"
#include "testutil_model.h"

/* ---------------------------------------------------------------- helpers */

typedef struct {
    char path[128];
    model m;
    fwd_state fs;
} tiny;

static void tiny_open(tiny *t, const tmodel_spec *sp, int ctx)
{
    char err[512] = "";
    memset(t, 0, sizeof *t);
    assert_int_equal(tmodel_write_temp(sp, t->path, sizeof t->path), 0);
    if (model_load(&t->m, t->path, NULL, err, sizeof err) != 0)
        fail_msg("model_load(%s): %s", t->path, err);
    fwd_state_init(&t->fs, &t->m.config, 64, ctx);
}

static void tiny_close(tiny *t)
{
    fwd_state_free(&t->fs);
    model_free(&t->m);
    unlink(t->path);
}

static void kv_open(kv_cache *kv, const model *m, int cap)
{
    char err[256] = "";
    if (kv_init(kv, &m->config, cap, err, sizeof err) != 0)
        fail_msg("kv_init: %s", err);
}

/* Fill a cache with junk, so that a run cannot pass by finding the values
 * an earlier run left behind. */
static void kv_scribble(kv_cache *kv, uint8_t byte)
{
    size_t nb = (size_t)kv->n_layers * kv->cap * kv->kv_dim * sizeof(kv_elem);
    memset(kv->k, byte, nb);
    memset(kv->v, byte ^ 0x3c, nb);
}

/* Compare two caches of the same shape over positions [0, len). */
static void kv_assert_prefix_equal(const kv_cache *a, const kv_cache *b, int32_t len, const char *what)
{
    assert_int_equal(a->cap, b->cap);
    assert_int_equal(a->kv_dim, b->kv_dim);
    size_t row = (size_t)a->kv_dim;
    for (int32_t l = 0; l < a->n_layers; l++) {
        size_t off = (size_t)l * a->cap * row, nb = (size_t)len * row * sizeof(kv_elem);
        if (memcmp(a->k + off, b->k + off, nb) != 0 || memcmp(a->v + off, b->v + off, nb) != 0) {
            int32_t pos = 0;
            while (pos < len && !memcmp(a->k + off + pos * row, b->k + off + pos * row, row * sizeof(kv_elem)) &&
                   !memcmp(a->v + off + pos * row, b->v + off + pos * row, row * sizeof(kv_elem)))
                pos++;
            fail_msg("%s: verified KV differs from plain decoding's at layer %d, position %d (len %d)", what, l,
                     pos, len);
        }
    }
}

/* Collects emitted tokens; stop_after > 0 makes the callback ask to stop
 * after that many tokens (a stop string). */
#define SINK_CAP 512
typedef struct {
    int32_t ids[SINK_CAP];
    int32_t n;
    int32_t stop_after;
} sink;

static int sink_emit(void *ctx, int32_t tok)
{
    sink *s = ctx;
    assert_true(s->n < SINK_CAP);
    s->ids[s->n++] = tok;
    return s->stop_after > 0 && s->n >= s->stop_after;
}

/* EOG callback: one token id (ctx points at it) ends generation. */
static int eog_one(const void *ctx, int32_t tok)
{
    return tok == *(const int32_t *)ctx;
}

static void run_plain(tiny *t, kv_cache *kv, const int32_t *prompt, int32_t n, const gen_params *gp, sink *out)
{
    char err[256] = "";
    gen_stats st;
    int32_t stop_after = out->stop_after;
    memset(out, 0, sizeof *out);
    out->stop_after = stop_after;
    if (gen_plain(&t->m, &t->fs, kv, prompt, n, gp, sink_emit, out, &st, err, sizeof err) != 0)
        fail_msg("gen_plain: %s", err);
    assert_int_equal(st.generated_tokens, out->n);
    assert_int_equal(st.prompt_tokens, n);
}

static void run_spec(tiny *t, kv_cache *kv, const skip_set *ss, const spec_params *sp, const int32_t *prompt,
                     int32_t n, const gen_params *gp, sink *out, spec_stats *sps)
{
    char err[256] = "";
    gen_stats st;
    int32_t stop_after = out->stop_after;
    memset(out, 0, sizeof *out);
    out->stop_after = stop_after;
    if (gen_selfspec(&t->m, &t->fs, kv, ss, sp, prompt, n, gp, sink_emit, out, &st, sps, err, sizeof err) != 0)
        fail_msg("gen_selfspec: %s", err);
    assert_int_equal(st.generated_tokens, out->n);
    assert_int_equal(st.prompt_tokens, n);
    assert_true(sps->counts.num_accepted_tokens <= sps->counts.num_draft_tokens);
    assert_true(sps->counts.num_draft_tokens <= (int64_t)sps->verifications * sp->max_draft);
}

static void assert_same_ids(const sink *want, const sink *got, const char *what)
{
    int32_t n = want->n < got->n ? want->n : got->n, i = 0;
    while (i < n && want->ids[i] == got->ids[i])
        i++;
    if (i < n)
        fail_msg("%s: first difference at token %d: plain %d, self-spec %d", what, i, want->ids[i], got->ids[i]);
    if (want->n != got->n)
        fail_msg("%s: plain emitted %d tokens, self-spec %d", what, want->n, got->n);
}

static void random_tokens(uint64_t *rng, int32_t *toks, int n, int vocab)
{
    for (int i = 0; i < n; i++)
        toks[i] = (int32_t)(tmodel_rng(rng) % (uint64_t)vocab);
}

/* A random subset of n distinct ids of [0, vocab) (n a multiple of 16),
 * malloc'd (a skip_set owns its head_tokens). */
static int32_t *random_head(uint64_t *rng, int32_t n, int32_t vocab)
{
    int32_t *perm = malloc((size_t)vocab * sizeof *perm);
    for (int32_t i = 0; i < vocab; i++)
        perm[i] = i;
    for (int32_t i = vocab - 1; i > 0; i--) {
        int32_t j = (int32_t)(tmodel_rng(rng) % (uint64_t)(i + 1)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    int32_t *h = malloc((size_t)n * sizeof *h);
    memcpy(h, perm, (size_t)n * sizeof *h);
    free(perm);
    return h;
}

static void set_head(skip_set *ss, int32_t *head, int32_t n)
{
    free(ss->head_tokens);
    ss->head_tokens = head;
    ss->n_head_tokens = head ? n : 0;
}

static void describe(const skip_set *ss, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "attn_skip [");
    for (int32_t l = 0; l < ss->n_layers && o < len; l++)
        if (ss->attn_skip[l])
            o += (size_t)snprintf(buf + o, len - o, " %d", l);
    if (o < len)
        o += (size_t)snprintf(buf + o, len - o, " ] mlp_skip [");
    for (int32_t l = 0; l < ss->n_layers && o < len; l++)
        if (ss->mlp_skip[l])
            o += (size_t)snprintf(buf + o, len - o, " %d", l);
    if (o < len)
        snprintf(buf + o, len - o, " ] head %d", ss->n_head_tokens);
}

/* ------------------------------------------------------ greedy exactness */

#define G_LAYERS 4
#define G_PROMPTS 3
#define G_NEW 72          /* tokens generated per run (>= 64) */
#define G_CTX 160

/* The skip sets of the greedy tests: fixed extremes, every "all but one
 * sublayer" set, and random ones. Returns how many were written. */
static int greedy_skip_sets(skip_set *sets, int max, uint64_t *rng)
{
    int n = 0;
    const int L = G_LAYERS;
    skipset_init(&sets[n++], L);                         /* skip nothing */
    skipset_init(&sets[n], L);                           /* skip everything */
    memset(sets[n].attn_skip, 1, L), memset(sets[n].mlp_skip, 1, L), n++;
    skipset_init(&sets[n], L);                           /* every MLP */
    memset(sets[n].mlp_skip, 1, L), n++;
    skipset_init(&sets[n], L);                           /* every attention */
    memset(sets[n].attn_skip, 1, L), n++;
    for (int keep = 0; keep < 2 * L; keep++) {           /* all but one sublayer */
        skipset_init(&sets[n], L);
        memset(sets[n].attn_skip, 1, L), memset(sets[n].mlp_skip, 1, L);
        if (keep < L)
            sets[n].attn_skip[keep] = 0;
        else
            sets[n].mlp_skip[keep - L] = 0;
        n++;
    }
    for (int only = 0; only < 2 * L; only++) {           /* exactly one sublayer */
        skipset_init(&sets[n], L);
        if (only < L)
            sets[n].attn_skip[only] = 1;
        else
            sets[n].mlp_skip[only - L] = 1;
        n++;
    }
    while (n < max) {                                    /* random */
        skipset_init(&sets[n], L);
        for (int l = 0; l < L; l++) {
            sets[n].attn_skip[l] = (uint8_t)(tmodel_rng(rng) & 1);
            sets[n].mlp_skip[l] = (uint8_t)(tmodel_rng(rng) & 1);
        }
        n++;
    }
    return n;
}

typedef struct {
    tiny t;
    int32_t prompts[G_PROMPTS][24];
    int32_t plens[G_PROMPTS];
    kv_cache kv_plain[G_PROMPTS];
    sink plain[G_PROMPTS];      /* ignore_eos, G_NEW tokens */
    kv_cache kv;                /* self-spec runs */
} greedy_fixture;

static void greedy_setup(greedy_fixture *g, uint32_t wtype, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    tmodel_spec sp = tmodel_default(wtype);
    sp.n_layers = G_LAYERS;
    sp.seed = seed;
    tiny_open(&g->t, &sp, G_CTX);
    uint64_t rng = seed * 7 + 1;
    const int32_t lens[G_PROMPTS] = {1, 7, 23};          /* one token, short, a longer prompt */
    gen_params gp = {.max_tokens = G_NEW, .sampling = {.temperature = 0.0f, .top_p = 1.0f}, .ignore_eos = 1};
    for (int p = 0; p < G_PROMPTS; p++) {
        g->plens[p] = lens[p];
        random_tokens(&rng, g->prompts[p], lens[p], g->t.m.config.vocab_size);
        kv_open(&g->kv_plain[p], &g->t.m, G_CTX);
        kv_scribble(&g->kv_plain[p], 0x00);
        run_plain(&g->t, &g->kv_plain[p], g->prompts[p], g->plens[p], &gp, &g->plain[p]);
        assert_int_equal(g->plain[p].n, G_NEW);
        assert_int_equal(g->kv_plain[p].len, g->plens[p] + G_NEW - 1);
    }
    kv_open(&g->kv, &g->t.m, G_CTX);
}

static void greedy_teardown(greedy_fixture *g)
{
    for (int p = 0; p < G_PROMPTS; p++)
        kv_free(&g->kv_plain[p]);
    kv_free(&g->kv);
    tiny_close(&g->t);
}

/* Distinct tokens of a greedy output: with a random model it could
 * repeat one token forever, which would make the test weak. */
static int distinct(const sink *s)
{
    uint8_t seen[4096] = {0};
    int n = 0;
    for (int32_t i = 0; i < s->n; i++)
        if (s->ids[i] < 4096 && !seen[s->ids[i]]++)
            n++;
    return n;
}

static void greedy_all_sets(uint32_t wtype, uint64_t seed)
{
    greedy_fixture *g = malloc(sizeof *g);
    greedy_setup(g, wtype, seed);
    int32_t V = g->t.m.config.vocab_size;
    for (int p = 0; p < G_PROMPTS; p++)
        assert_true(distinct(&g->plain[p]) >= 8);
    uint64_t rng = seed ^ 0xabcdef;
    enum { N_SETS = 4 + 4 * G_LAYERS + 8 };
    skip_set sets[N_SETS];
    int n_sets = greedy_skip_sets(sets, N_SETS, &rng);
    gen_params gp = {.max_tokens = G_NEW, .sampling = {.temperature = 0.0f, .top_p = 1.0f}, .ignore_eos = 1};
    sink got;
    int runs = 0;
    int64_t drafted = 0, accepted = 0;
    int partial_runs = 0;
    double ar_none = -1.0, ar_all = -1.0;
    for (int s = 0; s < n_sets; s++) {
        /* head variants: the full head, pruned heads of 64 and 16 ids (of
         * 192 and 128 when nothing is skipped: a draft that is the full
         * model on part of the vocabulary, so blocks are partly accepted) */
        for (int h = 0; h < 3; h++) {
            int32_t hn = h == 0 ? 0 : h == 1 ? (s == 0 ? 192 : 64) : (s == 0 ? 128 : 16);
            set_head(&sets[s], hn ? random_head(&rng, hn, V) : NULL, hn);
            for (int p = 0; p < G_PROMPTS; p++) {
                spec_params sp;
                spec_params_default(&sp);
                sp.max_draft = 1 + (runs % 12);
                if (runs % 3 == 1)
                    sp.gamma_init = 0.0f;        /* always draft the full K */
                else if (runs % 3 == 2)
                    sp.gamma_init = 0.95f;       /* exit early */
                spec_stats sps;
                kv_scribble(&g->kv, (uint8_t)(0x11 * (runs % 7 + 1)));
                got.stop_after = 0;
                run_spec(&g->t, &g->kv, &sets[s], &sp, g->prompts[p], g->plens[p], &gp, &got, &sps);
                char what[256];
                describe(&sets[s], what, sizeof what);
                size_t o = strlen(what);
                snprintf(what + o, sizeof what - o, ", prompt %d, max_draft %d, gamma %.2f", p, sp.max_draft,
                         sp.gamma_init);
                assert_same_ids(&g->plain[p], &got, what);
                assert_int_equal(g->kv.len, g->kv_plain[p].len);
                kv_assert_prefix_equal(&g->kv, &g->kv_plain[p], g->kv.len, what);
                /* the statistics add up */
                int64_t sum_d = 0, sum_a = 0;
                for (int i = 0; i < SPEC_MAX_DRAFT; i++) {
                    sum_d += sps.counts.drafted_per_pos[i];
                    sum_a += sps.counts.accepted_per_pos[i];
                    assert_true(sps.counts.accepted_per_pos[i] <= sps.counts.drafted_per_pos[i]);
                    if (i >= sp.max_draft)
                        assert_int_equal(sps.counts.drafted_per_pos[i], 0);
                }
                assert_int_equal(sum_d, sps.counts.num_draft_tokens);
                assert_int_equal(sum_a, sps.counts.num_accepted_tokens);
                /* the first token, then each counted verification emits its
                 * accepted tokens plus one; a last verification with nothing
                 * drafted (one token left) is not counted */
                int64_t emitted = 1 + sps.counts.num_accepted_tokens + sps.verifications;
                assert_true(emitted == G_NEW || emitted + 1 == G_NEW);
                drafted += sps.counts.num_draft_tokens;
                accepted += sps.counts.num_accepted_tokens;
                /* a run with blocks accepted in part, two tokens or more */
                if (sps.counts.num_accepted_tokens < sps.counts.num_draft_tokens && sps.counts.accepted_per_pos[1] > 0)
                    partial_runs++;
                if (s == 0 && h == 0 && p == 0 && sps.counts.num_draft_tokens)
                    ar_none = (double)sps.counts.num_accepted_tokens / sps.counts.num_draft_tokens;
                if (s == 1 && h == 0 && p == 0 && sps.counts.num_draft_tokens)
                    ar_all = (double)sps.counts.num_accepted_tokens / sps.counts.num_draft_tokens;
                /* skip nothing, full head: the draft is the full model, so
                 * every drafted token is accepted */
                if (s == 0 && h == 0)
                    assert_int_equal(sps.counts.num_accepted_tokens, sps.counts.num_draft_tokens);
                runs++;
            }
        }
    }
    printf("  %s: %d greedy runs over %d skip sets, all identical to plain; acceptance %.3f overall, "
           "%.3f skipping nothing, %.3f skipping everything; %d runs with partly accepted blocks\n",
           gguf_type_name(wtype), runs, n_sets, drafted ? (double)accepted / drafted : 0.0, ar_none, ar_all,
           partial_runs);
    assert_true(partial_runs >= 5);   /* acceptance paths beyond all-or-nothing were exercised */
    for (int s = 0; s < n_sets; s++)
        skipset_free(&sets[s]);
    greedy_teardown(g);
    free(g);
}

static void test_greedy_matches_plain(void **state)
{
    (void)state;
    greedy_all_sets(GGUF_TT_Q8_0, 4242);
    greedy_all_sets(GGUF_TT_Q4_1, 777);
}

/* Stops: EOS, max_tokens, the emit callback asking to stop, context full.
 * The number of tokens emitted must match plain decoding too. */
static void test_greedy_stops(void **state)
{
    (void)state;
    greedy_fixture *g = malloc(sizeof *g);
    greedy_setup(g, GGUF_TT_Q8_0, 99);
    int32_t V = g->t.m.config.vocab_size;
    uint64_t rng = 5;
    enum { N_SETS = 4 + 4 * G_LAYERS + 2 };
    skip_set sets[N_SETS];
    int n_sets = greedy_skip_sets(sets, N_SETS, &rng);
    set_head(&sets[n_sets - 1], random_head(&rng, 32, V), 32);
    sink want, got;
    int checks = 0;
    for (int p = 0; p < G_PROMPTS; p++) {
        const sink *full = &g->plain[p];
        for (int s = 0; s < n_sets; s++) {
            for (int variant = 0; variant < 12; variant++) {
                if (variant == 11 && s % 3 != 0)
                    continue;                       /* context full: a few sets (it prints a line) */
                gen_params gp = {.max_tokens = G_NEW, .sampling = {.temperature = 0.0f, .top_p = 1.0f}};
                int32_t eog = -1, cap = G_CTX;
                want.stop_after = got.stop_after = 0;
                const int mt[] = {1, 2, 3, 5, 13, 40};
                if (variant < 6) {                  /* max_tokens */
                    gp.max_tokens = mt[variant];
                    gp.ignore_eos = 1;
                } else if (variant < 9) {           /* EOS: a token plain decoding emits */
                    const int at[] = {0, 9, 47};
                    eog = full->ids[at[variant - 6]];
                    gp.is_eog = eog_one;
                    gp.eog_ctx = &eog;
                    gp.ignore_eos = 0;
                } else if (variant < 11) {          /* the emit callback stops */
                    want.stop_after = got.stop_after = variant == 9 ? 4 : 31;
                    gp.ignore_eos = 1;
                } else {                            /* context full */
                    cap = g->plens[p] + 29;
                    gp.max_tokens = 200;
                    gp.ignore_eos = 1;
                }
                kv_cache kvs;
                kv_open(&kvs, &g->t.m, cap);
                kv_cache kvq;
                kv_open(&kvq, &g->t.m, cap);
                spec_params sp;
                spec_params_default(&sp);
                sp.max_draft = 1 + (variant + s) % 12;
                sp.gamma_init = variant % 2 ? 0.0f : 0.6f;
                spec_stats sps;
                run_plain(&g->t, &kvq, g->prompts[p], g->plens[p], &gp, &want);
                run_spec(&g->t, &kvs, &sets[s], &sp, g->prompts[p], g->plens[p], &gp, &got, &sps);
                char what[256];
                describe(&sets[s], what, sizeof what);
                size_t o = strlen(what);
                snprintf(what + o, sizeof what - o, ", prompt %d, stop variant %d (max_tokens %d, eog %d, cap %d)",
                         p, variant, gp.max_tokens, eog, cap);
                assert_same_ids(&want, &got, what);
                /* and the stop happened where it should */
                if (variant < 6)
                    assert_int_equal(got.n, gp.max_tokens);
                else if (variant < 9)
                    assert_int_equal(got.ids[got.n - 1], eog);
                else if (variant < 11)
                    assert_int_equal(got.n, got.stop_after);
                else
                    assert_int_equal(got.n, cap - g->plens[p]);
                /* the verified cache agrees wherever both hold positions
                 * (after an EOS or a callback stop in mid-block, self-spec
                 * may have verified more positions than plain fed) */
                assert_true(kvs.len >= kvq.len);
                kv_assert_prefix_equal(&kvs, &kvq, kvq.len, what);
                if (variant < 6 || variant == 11)
                    assert_int_equal(kvs.len, kvq.len);
                kv_free(&kvs);
                kv_free(&kvq);
                checks++;
            }
        }
    }
    printf("  %d stop checks identical to plain\n", checks);
    for (int s = 0; s < n_sets; s++)
        skipset_free(&sets[s]);
    greedy_teardown(g);
    free(g);
}

/* The pieces directly: a draft never touches the verified cache, and
 * spec_verify accepts exactly the prefix that matches the full model. */
static void test_draft_and_verify_pieces(void **state)
{
    (void)state;
    tmodel_spec ms = tmodel_default(GGUF_TT_Q8_0);
    ms.n_layers = G_LAYERS;
    ms.seed = 31337;
    tiny t;
    tiny_open(&t, &ms, 64);
    int32_t V = t.m.config.vocab_size;
    char err[256] = "";
    kv_cache kv, ref;
    kv_open(&kv, &t.m, 64);
    kv_open(&ref, &t.m, 64);
    int32_t prompt[9];
    uint64_t rng = 8;
    random_tokens(&rng, prompt, 9, V);
    float *logits = malloc((size_t)(SPEC_MAX_DRAFT + 1) * V * sizeof(float));
    assert_int_equal(gen_prefill(&t.m, &t.fs, &kv, prompt, 9, logits, err, sizeof err), 0);
    int32_t cur = sampler_argmax(logits, V);
    size_t nb = (size_t)kv.n_layers * kv.cap * kv.kv_dim * sizeof(kv_elem);
    uint8_t *snap_k = malloc(nb), *snap_v = malloc(nb);
    memcpy(snap_k, kv.k, nb);
    memcpy(snap_v, kv.v, nb);
    skip_set ss;
    skipset_init(&ss, G_LAYERS);
    ss.attn_skip[1] = ss.mlp_skip[2] = ss.mlp_skip[3] = 1;
    spec_drafter d;
    assert_int_equal(spec_drafter_init(&d, &t.m, &ss, 8, err, sizeof err), 0);
    sampler smp;
    sampler_params greedy = {.temperature = 0.0f, .top_p = 1.0f};
    assert_int_equal(sampler_init(&smp, &greedy, V, err, sizeof err), 0);
    spec_block b;
    assert_int_equal(spec_draft(&d, &t.fs, &kv, 9, cur, 8, 0.0f, &smp, &b, err, sizeof err), 0);
    assert_int_equal(b.n, 8);            /* gamma 0: never exits early */
    assert_int_equal(kv.len, 9);
    assert_memory_equal(kv.k, snap_k, nb);
    assert_memory_equal(kv.v, snap_v, nb);
    /* spec_draft_from: continuing a draft whose first tokens are still in
     * the scratch (base = 9 < L) gives the rest of the same draft */
    for (int j = 1; j <= 3; j++) {
        spec_block c;
        assert_int_equal(spec_draft_from(&d, &t.fs, &kv, 9, 9 + j, b.tokens[j - 1], 8 - j, 0.0f, &smp, &c, err,
                                         sizeof err), 0);
        assert_int_equal(c.n, 8 - j);
        assert_memory_equal(c.tokens, b.tokens + j, (size_t)(8 - j) * sizeof(int32_t));
    }
    assert_memory_equal(kv.k, snap_k, nb);
    assert_memory_equal(kv.v, snap_v, nb);
    /* gamma 1: stops after the first token (its top-1 probability is < 1) */
    spec_block b1;
    assert_int_equal(spec_draft(&d, &t.fs, &kv, 9, cur, 8, 1.0f, &smp, &b1, err, sizeof err), 0);
    assert_int_equal(b1.n, 1);
    assert_int_equal(b1.tokens[0], b.tokens[0]);
    /* splice the full model's greedy token into the draft at position 3:
     * spec_verify must accept exactly the matching prefix */
    kv_cache kv2;
    kv_open(&kv2, &t.m, 64);
    assert_int_equal(gen_prefill(&t.m, &t.fs, &ref, prompt, 9, logits, err, sizeof err), 0);
    int32_t full[10];
    full[0] = cur;
    for (int i = 0; i < 9; i++) {        /* plain greedy continuation */
        fwd_seq sq = {.tokens = &full[i], .n_tokens = 1, .pos = ref.len, .kv = &ref, .logits_from = 0};
        assert_int_equal(model_forward(&t.m, &t.fs, &sq, 1, NULL, NULL, logits, err, sizeof err), 0);
        ref.len++;
        full[i + 1] = sampler_argmax(logits, V);
    }
    for (int agree = 0; agree <= 8; agree++) {
        spec_block vb = {.n = 8};
        for (int i = 0; i < 8; i++)
            vb.tokens[i] = vb.q_index[i] = i < agree ? full[i + 1] : (full[i + 1] + 1) % V;
        assert_int_equal(gen_prefill(&t.m, &t.fs, &kv2, prompt, 9, logits, err, sizeof err), 0);
        int32_t acc = -1, next = -1;
        assert_int_equal(spec_verify(&t.m, &t.fs, &kv2, cur, &vb, NULL, &smp, logits, &acc, &next, err,
                                     sizeof err), 0);
        assert_int_equal(acc, agree);
        assert_int_equal(next, full[agree + 1]);   /* the bonus token when all agree */
        assert_int_equal(kv2.len, 9 + agree + 1);
        kv_assert_prefix_equal(&kv2, &ref, kv2.len < ref.len ? kv2.len : ref.len, "spec_verify");
    }
    sampler_free(&smp);
    spec_drafter_free(&d);
    skipset_free(&ss);
    kv_free(&kv);
    kv_free(&kv2);
    kv_free(&ref);
    free(snap_k);
    free(snap_v);
    free(logits);
    tiny_close(&t);
}

/* ------------------------------------------------------------ chi-square */

/* Regularized upper incomplete gamma Q(a, x) (Numerical Recipes: series
 * for x < a + 1, continued fraction otherwise). */
static double gamma_q(double a, double x)
{
    if (x <= 0.0)
        return 1.0;
    double gln = lgamma(a);
    if (x < a + 1.0) {
        double ap = a, sum = 1.0 / a, del = sum;
        for (int n = 0; n < 10000; n++) {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if (fabs(del) < fabs(sum) * 1e-15)
                break;
        }
        return 1.0 - sum * exp(-x + a * log(x) - gln);
    }
    double b = x + 1.0 - a, c = 1.0 / 1e-300, d = 1.0 / b, h = d;
    for (int i = 1; i < 10000; i++) {
        double an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if (fabs(d) < 1e-300)
            d = 1e-300;
        c = b + an / c;
        if (fabs(c) < 1e-300)
            c = 1e-300;
        d = 1.0 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < 1e-15)
            break;
    }
    return exp(-x + a * log(x) - gln) * h;
}

/* P(chi-square with df degrees of freedom > x). */
static double chi2_sf(double x, int df)
{
    return gamma_q(0.5 * df, 0.5 * x);
}

/*
 * Chi-square test of homogeneity of two count tables over the same n
 * categories (2 x n contingency table). Categories whose expected count (in
 * either table) is below 5 are merged into one; if that merged category is
 * still below 5 it joins the smallest remaining one. Returns the p-value;
 * *stat and *df_out get the statistic and degrees of freedom.
 */
static double homogeneity(const int *a, const int *b, int n, double *stat, int *df_out)
{
    double na = 0, nb = 0;
    for (int i = 0; i < n; i++)
        na += a[i], nb += b[i];
    double fa = na / (na + nb), fb = nb / (na + nb);
    int m = 0;
    double *ca = calloc((size_t)n + 1, sizeof(double)), *cb = calloc((size_t)n + 1, sizeof(double));
    double rare_a = 0, rare_b = 0;
    for (int i = 0; i < n; i++) {
        double tot = a[i] + b[i];
        if (tot == 0)
            continue;
        if (tot * fa < 5.0 || tot * fb < 5.0)
            rare_a += a[i], rare_b += b[i];
        else
            ca[m] = a[i], cb[m] = b[i], m++;
    }
    if (rare_a + rare_b > 0) {
        double tot = rare_a + rare_b;
        if ((tot * fa < 5.0 || tot * fb < 5.0) && m > 0) {
            int s = 0;
            for (int i = 1; i < m; i++)
                if (ca[i] + cb[i] < ca[s] + cb[s])
                    s = i;
            ca[s] += rare_a, cb[s] += rare_b;
        } else {
            ca[m] = rare_a, cb[m] = rare_b, m++;
        }
    }
    double x = 0;
    for (int i = 0; i < m; i++) {
        double tot = ca[i] + cb[i], ea = tot * fa, eb = tot * fb;
        x += (ca[i] - ea) * (ca[i] - ea) / ea + (cb[i] - eb) * (cb[i] - eb) / eb;
    }
    free(ca);
    free(cb);
    *stat = x;
    *df_out = m - 1;
    return m > 1 ? chi2_sf(x, m - 1) : 1.0;
}

static void test_chi2_cdf(void **state)
{
    (void)state;
    /* upper 5% / 0.1% points */
    assert_true(fabs(chi2_sf(3.841459, 1) - 0.05) < 1e-5);
    assert_true(fabs(chi2_sf(10.827566, 1) - 0.001) < 1e-6);
    assert_true(fabs(chi2_sf(18.307038, 10) - 0.05) < 1e-5);
    assert_true(fabs(chi2_sf(29.588298, 10) - 0.001) < 1e-6);
    assert_true(fabs(chi2_sf(124.342113, 100) - 0.05) < 1e-5);
    assert_true(fabs(chi2_sf(2.0, 2) - exp(-1.0)) < 1e-9);   /* df 2: exp(-x/2) */
    assert_true(fabs(chi2_sf(0.454936, 1) - 0.5) < 1e-5);
    /* identical tables: statistic 0, p 1; very different: p tiny */
    int a[4] = {100, 200, 300, 3}, b[4] = {100, 200, 300, 1}, c[4] = {300, 200, 100, 2};
    double x;
    int df;
    assert_true(homogeneity(a, a, 4, &x, &df) > 0.999);
    assert_int_equal(df, 2);   /* the rare category merged into the smallest */
    assert_true(homogeneity(a, b, 4, &x, &df) > 0.5);
    assert_true(homogeneity(a, c, 4, &x, &df) < 1e-20);
}

/* ------------------------------------------------ speculative sampling */

#define S_VOCAB 32
#define S_PROMPT 4
#define S_TOKENS 4        /* tokens recorded per run: t0 (not speculative), t1..t3 */
#define S_MAX_TOKENS 5
#define S_N 3000          /* seeds per method */

typedef struct {
    int joint01[S_VOCAB * S_VOCAB];
    int joint12[S_VOCAB * S_VOCAB];
    int marg3[S_VOCAB];
} tables;

static void tables_add(tables *tb, const int32_t *t)
{
    tb->joint01[t[0] * S_VOCAB + t[1]]++;
    tb->joint12[t[1] * S_VOCAB + t[2]]++;
    tb->marg3[t[3]]++;
}

typedef struct {
    tiny t;
    kv_cache kv;
    int32_t prompt[S_PROMPT];
    skip_set ss;
} sampling_fixture;

static void sampling_setup(sampling_fixture *f, int head)
{
    memset(f, 0, sizeof *f);
    tmodel_spec ms = tmodel_default(GGUF_TT_Q8_0);
    ms.vocab = S_VOCAB;
    ms.n_layers = 4;
    ms.seed = 2024;
    tiny_open(&f->t, &ms, 32);
    kv_open(&f->kv, &f->t.m, 32);
    const int32_t prompt[S_PROMPT] = {3, 17, 9, 28};
    memcpy(f->prompt, prompt, sizeof prompt);
    /* a draft that disagrees with the full model often, but not always */
    skipset_init(&f->ss, 4);
    f->ss.mlp_skip[3] = 1;    /* acceptance about 0.38 at T=1 (0.27 with the 16-token head) */
    if (head) {
        uint64_t rng = 12;
        set_head(&f->ss, random_head(&rng, 16, S_VOCAB), 16);
    }
}

static void sampling_teardown(sampling_fixture *f)
{
    skipset_free(&f->ss);
    kv_free(&f->kv);
    tiny_close(&f->t);
}

static void sample_plain(sampling_fixture *f, const sampler_params *smp, uint64_t seed, int32_t *out)
{
    gen_params gp = {.max_tokens = S_MAX_TOKENS, .sampling = *smp, .ignore_eos = 1};
    gp.sampling.seed = seed;
    sink s = {.stop_after = 0};
    run_plain(&f->t, &f->kv, f->prompt, S_PROMPT, &gp, &s);
    assert_int_equal(s.n, S_MAX_TOKENS);
    memcpy(out, s.ids, S_TOKENS * sizeof(int32_t));
}

static void sample_spec(sampling_fixture *f, const sampler_params *smp, uint64_t seed, int32_t *out,
                        spec_stats *acc)
{
    gen_params gp = {.max_tokens = S_MAX_TOKENS, .sampling = *smp, .ignore_eos = 1};
    gp.sampling.seed = seed;
    spec_params sp;
    spec_params_default(&sp);
    sp.max_draft = 4;
    sp.gamma_init = 0.0f;     /* draft as far as allowed: rejections at every depth */
    sink s = {.stop_after = 0};
    spec_stats st;
    run_spec(&f->t, &f->kv, &f->ss, &sp, f->prompt, S_PROMPT, &gp, &s, &st);
    assert_int_equal(s.n, S_MAX_TOKENS);
    memcpy(out, s.ids, S_TOKENS * sizeof(int32_t));
    acc->counts.num_draft_tokens += st.counts.num_draft_tokens;
    acc->counts.num_accepted_tokens += st.counts.num_accepted_tokens;
    acc->verifications += st.verifications;
}

/* The draft alone ("accept every draft token"): t0 from the full model,
 * then t1..t3 drawn from the draft's warped distributions. */
static void sample_draft_only(sampling_fixture *f, const sampler_params *smp, uint64_t seed, int32_t *out)
{
    char err[256] = "";
    int32_t V = f->t.m.config.vocab_size;
    sampler_params p = *smp;
    p.seed = seed;
    sampler s;
    assert_int_equal(sampler_init(&s, &p, V, err, sizeof err), 0);
    spec_drafter d;
    assert_int_equal(spec_drafter_init(&d, &f->t.m, &f->ss, 4, err, sizeof err), 0);
    float logits[S_VOCAB];
    assert_int_equal(gen_prefill(&f->t.m, &f->t.fs, &f->kv, f->prompt, S_PROMPT, logits, err, sizeof err), 0);
    out[0] = sampler_sample(&s, logits);
    spec_block b;
    assert_int_equal(spec_draft(&d, &f->t.fs, &f->kv, S_PROMPT, out[0], S_TOKENS - 1, 0.0f, &s, &b, err,
                                sizeof err), 0);
    assert_int_equal(b.n, S_TOKENS - 1);
    memcpy(out + 1, b.tokens, (S_TOKENS - 1) * sizeof(int32_t));
    spec_drafter_free(&d);
    sampler_free(&s);
}

/* A subtly wrong rule: speculative sampling that, on a rejection, draws
 * the replacement from the full model's p instead of norm(max(0, p - q)).
 * Otherwise as gen_selfspec (same draft, same acceptance test). */
static void sample_wrong_residual(sampling_fixture *f, const sampler_params *smp, uint64_t seed, int32_t *out)
{
    char err[256] = "";
    int32_t V = f->t.m.config.vocab_size;
    sampler_params sp = *smp;
    sp.seed = seed;
    sampler s;
    assert_int_equal(sampler_init(&s, &sp, V, err, sizeof err), 0);
    spec_drafter d;
    assert_int_equal(spec_drafter_init(&d, &f->t.m, &f->ss, 4, err, sizeof err), 0);
    float logits[(SPEC_MAX_DRAFT + 1) * S_VOCAB], p[S_VOCAB];
    assert_int_equal(gen_prefill(&f->t.m, &f->t.fs, &f->kv, f->prompt, S_PROMPT, logits, err, sizeof err), 0);
    int n = 0;
    int32_t cur = out[n++] = sampler_sample(&s, logits);
    while (n < S_TOKENS) {
        int32_t L = f->kv.len, k = S_MAX_TOKENS - n - 1 < 4 ? S_MAX_TOKENS - n - 1 : 4;
        spec_block b = {0};
        if (k > 0)
            assert_int_equal(spec_draft(&d, &f->t.fs, &f->kv, L, cur, k, 0.0f, &s, &b, err, sizeof err), 0);
        int32_t toks[SPEC_MAX_DRAFT + 1];
        toks[0] = cur;
        memcpy(toks + 1, b.tokens, (size_t)b.n * sizeof(int32_t));
        fwd_seq sq = {.tokens = toks, .n_tokens = b.n + 1, .pos = L, .kv = &f->kv, .logits_from = 0};
        assert_int_equal(model_forward(&f->t.m, &f->t.fs, &sq, 1, NULL, NULL, logits, err, sizeof err), 0);
        int32_t i, next;
        for (i = 0;; i++) {
            sampler_probs(&s, logits + (size_t)i * V, V, p);
            if (i == b.n) {
                next = sampler_draw(&s, p, V);
                break;
            }
            float q = d.q[(size_t)i * d.width + b.q_index[i]];
            if (sampler_uniform(&s) * q < p[b.tokens[i]])
                continue;
            next = sampler_draw(&s, p, V);   /* wrong: p, not the residual */
            break;
        }
        for (int32_t j = 0; j < i && n < S_TOKENS; j++)
            out[n++] = b.tokens[j];
        if (n < S_TOKENS)
            out[n++] = next;
        f->kv.len = L + i + 1;
        cur = next;
    }
    spec_drafter_free(&d);
    sampler_free(&s);
}

static double min3(double a, double b, double c)
{
    return fmin(a, fmin(b, c));
}

/* Runs S_N seeds each of plain and self-spec sampling, checks homogeneity. */
static void check_sampling(const char *name, const sampler_params *smp, int head, int wrong_rule)
{
    sampling_fixture *f = malloc(sizeof *f);
    sampling_setup(f, head);
    tables *plain = calloc(1, sizeof *plain), *spec = calloc(1, sizeof *spec), *draft = calloc(1, sizeof *draft);
    tables *wrong = calloc(1, sizeof *wrong);
    spec_stats acc = {0};
    int32_t toks[S_TOKENS];
    for (int i = 0; i < S_N; i++) {
        sample_plain(f, smp, 1000003ull * i + 1, toks);
        tables_add(plain, toks);
        /* different seeds for the two methods: independent samples */
        sample_spec(f, smp, 7000009ull * i + 5, toks, &acc);
        tables_add(spec, toks);
        if (i < S_N / 2) {
            sample_draft_only(f, smp, 3000017ull * i + 11, toks);
            tables_add(draft, toks);
            if (wrong_rule) {
                sample_wrong_residual(f, smp, 5000011ull * i + 13, toks);
                tables_add(wrong, toks);
            }
        }
    }
    double ar = acc.counts.num_draft_tokens ? (double)acc.counts.num_accepted_tokens / acc.counts.num_draft_tokens : 0.0;
    double x[3];
    int df[3];
    double p01 = homogeneity(plain->joint01, spec->joint01, S_VOCAB * S_VOCAB, &x[0], &df[0]);
    double p12 = homogeneity(plain->joint12, spec->joint12, S_VOCAB * S_VOCAB, &x[1], &df[1]);
    double p3 = homogeneity(plain->marg3, spec->marg3, S_VOCAB, &x[2], &df[2]);
    printf("  %s: acceptance %.3f (%lld/%lld); plain vs self-spec p = %.4f (t0,t1: chi2 %.1f df %d), "
           "%.4f (t1,t2: %.1f df %d), %.4f (t3: %.1f df %d)\n",
           name, ar, (long long)acc.counts.num_accepted_tokens, (long long)acc.counts.num_draft_tokens, p01, x[0], df[0], p12, x[1], df[1], p3,
           x[2], df[2]);
    /* power: the draft alone (half as many runs) must be told apart */
    double xd[3];
    int dfd[3];
    double q01 = homogeneity(plain->joint01, draft->joint01, S_VOCAB * S_VOCAB, &xd[0], &dfd[0]);
    double q12 = homogeneity(plain->joint12, draft->joint12, S_VOCAB * S_VOCAB, &xd[1], &dfd[1]);
    double q3 = homogeneity(plain->marg3, draft->marg3, S_VOCAB, &xd[2], &dfd[2]);
    printf("  %s: plain vs draft alone p = %.3g, %.3g, %.3g (must be detected)\n", name, q01, q12, q3);
    if (!(ar > 0.05 && ar < 0.95))
        fail_msg("%s: acceptance rate %.3f outside (0.05, 0.95): the draft does not test rejection", name, ar);
    if (!(min3(p01, p12, p3) > 0.001))
        fail_msg("%s: self-spec sampling distribution differs from plain (p = %.3g, %.3g, %.3g <= 0.001)", name,
                 p01, p12, p3);
    if (!(min3(q01, q12, q3) < 1e-6))
        fail_msg("%s: the test cannot tell the draft alone from the full model (p = %.3g, %.3g, %.3g)", name,
                 q01, q12, q3);
    if (wrong_rule) {
        double w01 = homogeneity(plain->joint01, wrong->joint01, S_VOCAB * S_VOCAB, &xd[0], &dfd[0]);
        double w12 = homogeneity(plain->joint12, wrong->joint12, S_VOCAB * S_VOCAB, &xd[1], &dfd[1]);
        double w3 = homogeneity(plain->marg3, wrong->marg3, S_VOCAB, &xd[2], &dfd[2]);
        printf("  %s: plain vs resampling from p instead of the residual: p = %.3g, %.3g, %.3g (must be detected)\n",
               name, w01, w12, w3);
        if (!(min3(w01, w12, w3) < 0.001))
            fail_msg("%s: the test cannot tell a wrong residual rule from the right one (p = %.3g, %.3g, %.3g)",
                     name, w01, w12, w3);
    }
    free(wrong);
    free(plain);
    free(spec);
    free(draft);
    sampling_teardown(f);
    free(f);
}

static void test_sampling_t1(void **state)
{
    (void)state;
    sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    check_sampling("T=1", &p, 0, 1);
}

static void test_sampling_t07_topk(void **state)
{
    (void)state;
    sampler_params p = {.temperature = 0.7f, .top_k = 8, .top_p = 1.0f};
    check_sampling("T=0.7 top-k 8", &p, 0, 0);
}

static void test_sampling_topp(void **state)
{
    (void)state;
    sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 0.9f};
    check_sampling("T=1 top-p 0.9", &p, 0, 1);
}

static void test_sampling_pruned_head(void **state)
{
    (void)state;
    sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    check_sampling("T=1, 16-token draft head", &p, 1, 0);
}

/* A fixed seed reproduces a self-spec sampling run exactly. */
static void test_seed_reproduces(void **state)
{
    (void)state;
    greedy_fixture *g = malloc(sizeof *g);
    greedy_setup(g, GGUF_TT_Q8_0, 555);
    skip_set ss;
    skipset_init(&ss, G_LAYERS);
    ss.attn_skip[0] = ss.mlp_skip[2] = ss.attn_skip[3] = 1;
    spec_params sp;
    spec_params_default(&sp);
    sink a, b, c;
    spec_stats sa, sb, sc;
    gen_params gp = {.max_tokens = 64, .sampling = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 42},
                     .ignore_eos = 1};
    a.stop_after = b.stop_after = c.stop_after = 0;
    run_spec(&g->t, &g->kv, &ss, &sp, g->prompts[1], g->plens[1], &gp, &a, &sa);
    run_spec(&g->t, &g->kv, &ss, &sp, g->prompts[1], g->plens[1], &gp, &b, &sb);
    assert_int_equal(a.n, 64);
    assert_same_ids(&a, &b, "same seed");
    assert_int_equal(sa.counts.num_draft_tokens, sb.counts.num_draft_tokens);
    assert_int_equal(sa.counts.num_accepted_tokens, sb.counts.num_accepted_tokens);
    assert_int_equal(sa.verifications, sb.verifications);
    assert_true(sa.final_gamma == sb.final_gamma);
    assert_memory_equal(sa.counts.drafted_per_pos, sb.counts.drafted_per_pos, sizeof sa.counts.drafted_per_pos);
    assert_memory_equal(sa.counts.accepted_per_pos, sb.counts.accepted_per_pos, sizeof sa.counts.accepted_per_pos);
    /* another seed gives another run */
    gp.sampling.seed = 43;
    run_spec(&g->t, &g->kv, &ss, &sp, g->prompts[1], g->plens[1], &gp, &c, &sc);
    assert_int_equal(c.n, 64);
    assert_true(memcmp(a.ids, c.ids, 64 * sizeof(int32_t)) != 0);
    skipset_free(&ss);
    greedy_teardown(g);
    free(g);
}

/* ------------------------------------------------------ context drafts */

/* A prompt with repeats: a random segment of seg tokens repeated to len,
 * one token in `noise` changed (0: none), so context drafts hit in the
 * prompt as well as in the output. */
static void repeat_prompt(uint64_t *rng, int32_t *p, int32_t len, int32_t seg, int32_t noise, int32_t vocab)
{
    int32_t s[32];
    random_tokens(rng, s, seg, vocab);
    for (int32_t i = 0; i < len; i++)
        p[i] = noise && i % noise == noise - 1 ? (int32_t)(tmodel_rng(rng) % (uint64_t)vocab) : s[i % seg];
}

/* Greedy: every draft source (context, chain, auto; with a skip set and,
 * for context and auto, without one), several n-gram ranges and draft
 * lengths, random and extreme skip sets, a pruned head: gen_selfspec emits
 * exactly gen_plain's ids and its verified KV is byte-identical; the
 * per-source statistics add up; context and chained blocks really happened
 * and were accepted in part. */
static void test_context_greedy_matches_plain(void **state)
{
    (void)state;
    enum { NP = 3 };
    tmodel_spec ms = tmodel_default(GGUF_TT_Q8_0);
    ms.n_layers = G_LAYERS;
    ms.seed = 9090;
    tiny t;
    tiny_open(&t, &ms, G_CTX);
    int32_t V = t.m.config.vocab_size;
    uint64_t rng = 4711;
    int32_t prompts[NP][32], plens[NP] = {24, 30, 1};
    repeat_prompt(&rng, prompts[0], 24, 6, 0, V);
    repeat_prompt(&rng, prompts[1], 30, 4, 7, V);
    random_tokens(&rng, prompts[2], 1, V);
    gen_params gp = {.max_tokens = G_NEW, .sampling = {.temperature = 0.0f, .top_p = 1.0f}, .ignore_eos = 1};
    kv_cache kv_plain[NP], kv;
    sink plain[NP], got;
    for (int p = 0; p < NP; p++) {
        kv_open(&kv_plain[p], &t.m, G_CTX);
        kv_scribble(&kv_plain[p], 0x00);
        plain[p].stop_after = 0;
        run_plain(&t, &kv_plain[p], prompts[p], plens[p], &gp, &plain[p]);
        assert_int_equal(plain[p].n, G_NEW);
    }
    kv_open(&kv, &t.m, G_CTX);
    enum { NS = 5 };
    skip_set sets[NS];
    skipset_init(&sets[0], G_LAYERS);                                  /* nothing skipped */
    skipset_init(&sets[1], G_LAYERS);                                  /* everything */
    memset(sets[1].attn_skip, 1, G_LAYERS), memset(sets[1].mlp_skip, 1, G_LAYERS);
    for (int s = 2; s < NS; s++) {                                     /* random */
        skipset_init(&sets[s], G_LAYERS);
        for (int l = 0; l < G_LAYERS; l++) {
            sets[s].attn_skip[l] = (uint8_t)(tmodel_rng(&rng) & 1);
            sets[s].mlp_skip[l] = (uint8_t)(tmodel_rng(&rng) & 1);
        }
    }
    set_head(&sets[NS - 1], random_head(&rng, 16, V), 16);
    const int32_t kinds[] = {SPEC_DRAFT_CONTEXT, SPEC_DRAFT_CHAIN, SPEC_DRAFT_AUTO};
    const int32_t ngr[3][2] = {{1, 3}, {2, 2}, {1, 1}};
    int64_t src_b[SPEC_SRC_N] = {0}, src_d[SPEC_SRC_N] = {0}, src_a[SPEC_SRC_N] = {0};
    int partial_ctx = 0, runs = 0;
    for (int s = 0; s <= NS; s++) {          /* s == NS: no skip set */
        for (int ki = 0; ki < 3; ki++) {
            if (s == NS && kinds[ki] == SPEC_DRAFT_CHAIN)
                continue;
            for (int p = 0; p < NP; p++) {
                spec_params sp;
                spec_params_default(&sp);
                sp.draft = kinds[ki];
                sp.max_draft = 1 + (runs * 5) % 12;
                sp.ngram_min = ngr[runs % 3][0];
                sp.ngram_max = ngr[runs % 3][1];
                if (runs % 4 == 1)
                    sp.gamma_init = 0.0f;
                spec_stats sps;
                kv_scribble(&kv, (uint8_t)(0x11 * (runs % 7 + 1)));
                got.stop_after = 0;
                run_spec(&t, &kv, s < NS ? &sets[s] : NULL, &sp, prompts[p], plens[p], &gp, &got, &sps);
                char what[256];
                if (s < NS)
                    describe(&sets[s], what, sizeof what);
                else
                    snprintf(what, sizeof what, "no skip set");
                size_t o = strlen(what);
                snprintf(what + o, sizeof what - o, ", draft %s, prompt %d, max_draft %d, ngram %d..%d",
                         spec_draft_name(sp.draft), p, sp.max_draft, sp.ngram_min, sp.ngram_max);
                assert_same_ids(&plain[p], &got, what);
                assert_int_equal(kv.len, kv_plain[p].len);
                kv_assert_prefix_equal(&kv, &kv_plain[p], kv.len, what);
                int64_t b = 0, d = 0, a = 0;
                for (int i = 0; i < SPEC_SRC_N; i++) {
                    b += sps.counts.src_blocks[i], d += sps.counts.src_drafted[i], a += sps.counts.src_accepted[i];
                    assert_true(sps.counts.src_accepted[i] <= sps.counts.src_drafted[i]);
                    src_b[i] += sps.counts.src_blocks[i], src_d[i] += sps.counts.src_drafted[i], src_a[i] += sps.counts.src_accepted[i];
                }
                assert_int_equal(d, sps.counts.num_draft_tokens);
                assert_int_equal(a, sps.counts.num_accepted_tokens);
                assert_true(b <= sps.verifications);
                if (kinds[ki] == SPEC_DRAFT_CONTEXT || s == NS)   /* no drafter: context blocks only */
                    assert_int_equal(sps.counts.src_blocks[SPEC_SRC_LAYERS] + sps.counts.src_blocks[SPEC_SRC_CHAIN], 0);
                if (sps.counts.src_accepted[SPEC_SRC_CONTEXT] > 0 &&
                    sps.counts.src_accepted[SPEC_SRC_CONTEXT] < sps.counts.src_drafted[SPEC_SRC_CONTEXT])
                    partial_ctx++;
                runs++;
            }
        }
    }
    printf("  %d greedy runs with context drafts, all identical to plain; blocks / acceptance: layers %lld / %.3f, "
           "context %lld / %.3f, chain %lld / %.3f\n", runs, (long long)src_b[0],
           src_d[0] ? (double)src_a[0] / src_d[0] : 0.0, (long long)src_b[1],
           src_d[1] ? (double)src_a[1] / src_d[1] : 0.0, (long long)src_b[2],
           src_d[2] ? (double)src_a[2] / src_d[2] : 0.0);
    assert_true(src_b[SPEC_SRC_CONTEXT] >= 20 && src_a[SPEC_SRC_CONTEXT] > 0);
    assert_true(src_b[SPEC_SRC_CHAIN] >= 5 && src_a[SPEC_SRC_CHAIN] > 0);
    assert_true(partial_ctx >= 3);
    for (int s = 0; s < NS; s++)
        skipset_free(&sets[s]);
    for (int p = 0; p < NP; p++)
        kv_free(&kv_plain[p]);
    kv_free(&kv);
    tiny_close(&t);
}

/* spec_choose: the forced kinds, and the rule on hand-made costs. */
static void test_choose_rule(void **state)
{
    (void)state;
    spec_costs c;
    memset(&c, 0, sizeof c);
    c.base = 1.0;
    c.n_base = 1.0;
    c.draft = 0.2;
    for (int x = 0; x <= SPEC_MAX_DRAFT; x++)
        c.extra[x] = 0.01 * x;
    spec_choice ch;
    /* forced */
    ch = spec_choose(SPEC_DRAFT_LAYERS, &c, 0.9f, 0.9f, 5, 3, 6, 8, 1, 1);
    assert_int_equal(ch.n_ctx, 0), assert_int_equal(ch.k_layers, 6);
    ch = spec_choose(SPEC_DRAFT_CONTEXT, &c, 0.9f, 0.9f, 5, 3, 6, 8, 1, 1);   /* good context: all of it */
    assert_int_equal(ch.n_ctx, 5), assert_int_equal(ch.k_layers, 0);
    ch = spec_choose(SPEC_DRAFT_CONTEXT, &c, 0.0f, 0.9f, 5, 3, 6, 8, 1, 1);   /* useless: still one token */
    assert_int_equal(ch.n_ctx, 1), assert_int_equal(ch.k_layers, 0);
    ch = spec_choose(SPEC_DRAFT_CONTEXT, &c, 0.9f, 0.9f, 0, 0, 6, 8, 1, 1);   /* no match: plain */
    assert_int_equal(ch.n_ctx, 0), assert_int_equal(ch.k_layers, 0);
    ch = spec_choose(SPEC_DRAFT_CHAIN, &c, 0.9f, 0.9f, 8, 3, 8, 8, 1, 1);
    assert_int_equal(ch.n_ctx, 3), assert_int_equal(ch.k_layers, 5);
    ch = spec_choose(SPEC_DRAFT_CHAIN, &c, 0.9f, 0.9f, 0, 0, 8, 8, 1, 1);
    assert_int_equal(ch.n_ctx, 0), assert_int_equal(ch.k_layers, 8);
    ch = spec_choose(SPEC_DRAFT_CHAIN, &c, 0.9f, 0.9f, 8, 3, 8, 8, 0, 1);   /* no drafter */
    assert_int_equal(ch.n_ctx, 8), assert_int_equal(ch.k_layers, 0);
    /* the rule: good context, poor layers -> context; nearly free verification -> long */
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 0.9f, 0.1f, 8, 8, 8, 8, 1, 0);
    assert_true(ch.n_ctx >= 6 && ch.k_layers == 0);
    /* poor context, good layers -> layers */
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 0.02f, 0.9f, 8, 8, 8, 8, 1, 0);
    assert_true(ch.n_ctx == 0 && ch.k_layers >= 2);
    /* a short context match that is always right, good layers -> chain */
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 1.0f, 0.9f, 2, 2, 8, 8, 1, 0);
    assert_true(ch.n_ctx == 2 && ch.k_layers >= 1);
    /* nothing pays: plain */
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 0.0f, 0.0f, 8, 8, 8, 8, 1, 0);
    assert_true(ch.n_ctx == 0 && ch.k_layers == 0);
    /* compute-bound verification: each token costs as much as the pass -> plain */
    for (int x = 0; x <= SPEC_MAX_DRAFT; x++)
        c.extra[x] = 1.0 * x;
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 0.7f, 0.7f, 8, 8, 8, 8, 1, 0);
    assert_true(ch.n_ctx == 0 && ch.k_layers == 0);
    /* kind restricts the rule: layers only never takes context */
    for (int x = 0; x <= SPEC_MAX_DRAFT; x++)
        c.extra[x] = 0.01 * x;
    ch = spec_choose(SPEC_DRAFT_LAYERS, &c, 1.0f, 0.5f, 8, 8, 8, 8, 1, 0);
    assert_int_equal(ch.n_ctx, 0);
    ch = spec_choose(SPEC_DRAFT_CONTEXT, &c, 0.5f, 1.0f, 8, 8, 8, 8, 1, 0);
    assert_int_equal(ch.k_layers, 0);
    /* a limit of 0 (one token left): plain */
    ch = spec_choose(SPEC_DRAFT_AUTO, &c, 1.0f, 1.0f, 8, 8, 8, 0, 1, 0);
    assert_true(ch.n_ctx == 0 && ch.k_layers == 0);
}

/* spec_accept on hand-made logits with context (point-q) tokens: a token
 * the model gives probability ~1 is always accepted, one it gives ~0 always
 * rejected and never redrawn, and acceptance frequency equals p(x); a
 * rejected token is never the replacement; greedy takes the matching
 * prefix whatever the source. */
static void test_accept_point_q(void **state)
{
    (void)state;
    enum { V = 8, N = 20000 };
    char err[128];
    sampler smp;
    sampler_params sp = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 77};
    assert_int_equal(sampler_init(&smp, &sp, V, err, sizeof err), 0);
    float base[2 * V], logits[2 * V];
    for (int i = 0; i < 2 * V; i++)
        base[i] = 0.1f * (float)(i % V);
    spec_qdist qd = {NULL, 0, NULL};   /* context tokens never read q */
    spec_block b = {.n = 1, .n_ctx = 1, .tokens = {3}};
    int32_t acc, next;
    /* p(3) ~ 1 */
    memcpy(logits, base, sizeof logits);
    logits[3] = 60.0f;
    for (int i = 0; i < 200; i++) {
        memcpy(logits, base, sizeof logits), logits[3] = 60.0f;
        spec_accept(V, logits, &b, &qd, &smp, &acc, &next);
        assert_int_equal(acc, 1);
    }
    /* p(3) ~ 0: rejected, and the replacement is never 3 */
    for (int i = 0; i < 200; i++) {
        memcpy(logits, base, sizeof logits), logits[3] = -60.0f;
        spec_accept(V, logits, &b, &qd, &smp, &acc, &next);
        assert_int_equal(acc, 0);
        assert_true(next != 3 && next >= 0 && next < V);
    }
    /* p(3) moderate: acceptance frequency p(3) (5 sigma), replacement != 3 */
    double e[V], z = 0;
    for (int j = 0; j < V; j++)
        z += e[j] = exp(base[j]);
    double p3 = e[3] / z;
    int hits = 0;
    for (int i = 0; i < N; i++) {
        memcpy(logits, base, sizeof logits);
        spec_accept(V, logits, &b, &qd, &smp, &acc, &next);
        hits += acc;
        if (!acc)
            assert_true(next != 3);
    }
    double sd = sqrt(N * p3 * (1 - p3));
    if (fabs(hits - N * p3) > 5 * sd)
        fail_msg("context token accepted %d of %d times, want about %.0f (p = %.3f)", hits, N, N * p3, p3);
    sampler_free(&smp);
    /* greedy: the prefix equal to the argmax, context or not */
    sampler_params gp = {.temperature = 0.0f, .top_p = 1.0f};
    assert_int_equal(sampler_init(&smp, &gp, V, err, sizeof err), 0);
    memcpy(logits, base, sizeof logits);   /* argmax 7 in both rows */
    spec_block g = {.n = 1, .n_ctx = 1, .tokens = {7}};
    spec_accept(V, logits, &g, &qd, &smp, &acc, &next);
    assert_int_equal(acc, 1), assert_int_equal(next, 7);
    g.tokens[0] = 2;
    spec_accept(V, logits, &g, &qd, &smp, &acc, &next);
    assert_int_equal(acc, 0), assert_int_equal(next, 7);
    sampler_free(&smp);
}

/* Speculative sampling with context drafts (point distributions q): the
 * first tokens' distribution equals plain sampling, with context drafts
 * alone (no skip set) and chained with the layer-skipping draft; acceptance
 * of the context tokens in (0.05, 0.95) so rejections are exercised; and the
 * test has power: a wrong rule that resamples a rejected context token from
 * p (instead of p without it) is detected. The prompt is the model's own
 * greedy continuation, so the context proposes likely tokens. */
#define C_PROMPT 24
#define C_N 2000          /* seeds per method (the wrong rule: half) */
typedef struct {
    tiny t;
    kv_cache kv;
    int32_t prompt[C_PROMPT];
    skip_set ss;
} ctx_fixture;

static void sample_ctx_spec(ctx_fixture *f, const sampler_params *smp, uint64_t seed, int32_t kind,
                            const skip_set *ss, int32_t *out, spec_stats *acc)
{
    gen_params gp = {.max_tokens = S_MAX_TOKENS, .sampling = *smp, .ignore_eos = 1};
    gp.sampling.seed = seed;
    spec_params sp;
    spec_params_default(&sp);
    sp.max_draft = 4;
    sp.gamma_init = 0.0f;
    sp.draft = kind;
    sink s = {.stop_after = 0};
    spec_stats st;
    run_spec(&f->t, &f->kv, ss, &sp, f->prompt, C_PROMPT, &gp, &s, &st);
    assert_int_equal(s.n, S_MAX_TOKENS);
    memcpy(out, s.ids, S_TOKENS * sizeof(int32_t));
    for (int i = 0; i < SPEC_SRC_N; i++) {
        acc->counts.src_blocks[i] += st.counts.src_blocks[i];
        acc->counts.src_drafted[i] += st.counts.src_drafted[i];
        acc->counts.src_accepted[i] += st.counts.src_accepted[i];
    }
}

/* The wrong rule, context drafts only: accept x with probability p(x), but
 * on a rejection draw from p itself. */
static void sample_ctx_wrong(ctx_fixture *f, const sampler_params *smp, uint64_t seed, int32_t *out)
{
    char err[256] = "";
    int32_t V = f->t.m.config.vocab_size;
    sampler_params spp = *smp;
    spp.seed = seed;
    sampler s;
    assert_int_equal(sampler_init(&s, &spp, V, err, sizeof err), 0);
    ngram_index ng;
    ngram_init(&ng, 1, 3);
    ngram_push_many(&ng, f->prompt, C_PROMPT);
    float logits[(SPEC_MAX_DRAFT + 1) * S_VOCAB], p[S_VOCAB];
    assert_int_equal(gen_prefill(&f->t.m, &f->t.fs, &f->kv, f->prompt, C_PROMPT, logits, err, sizeof err), 0);
    int n = 0;
    int32_t cur = out[n++] = sampler_sample(&s, logits);
    ngram_push(&ng, cur);
    while (n < S_TOKENS) {
        int32_t L = f->kv.len, k = S_MAX_TOKENS - n - 1 < 4 ? S_MAX_TOKENS - n - 1 : 4;
        spec_block b = {0};
        b.n = b.n_ctx = ngram_draft(&ng, k, b.tokens, NULL, NULL);
        int32_t toks[SPEC_MAX_DRAFT + 1];
        toks[0] = cur;
        memcpy(toks + 1, b.tokens, (size_t)b.n * sizeof(int32_t));
        fwd_seq sq = {.tokens = toks, .n_tokens = b.n + 1, .pos = L, .kv = &f->kv, .logits_from = 0};
        assert_int_equal(model_forward(&f->t.m, &f->t.fs, &sq, 1, NULL, NULL, logits, err, sizeof err), 0);
        int32_t i, next;
        for (i = 0;; i++) {
            sampler_probs(&s, logits + (size_t)i * V, V, p);
            if (i == b.n) {
                next = sampler_draw(&s, p, V);
                break;
            }
            if (sampler_uniform(&s) < p[b.tokens[i]])
                continue;
            next = sampler_draw(&s, p, V);   /* wrong: p, not p without the token */
            break;
        }
        for (int32_t j = 0; j < i; j++) {
            if (n < S_TOKENS)
                out[n++] = b.tokens[j];
            ngram_push(&ng, b.tokens[j]);
        }
        if (n < S_TOKENS)
            out[n++] = next;
        ngram_push(&ng, next);
        f->kv.len = L + i + 1;
        cur = next;
    }
    ngram_free(&ng);
    sampler_free(&s);
}

static void test_sampling_context(void **state)
{
    (void)state;
    ctx_fixture *f = calloc(1, sizeof *f);
    tmodel_spec ms = tmodel_default(GGUF_TT_Q8_0);
    ms.vocab = S_VOCAB;
    ms.n_layers = 4;
    ms.seed = 2026;   /* a model on which chained blocks and rejections both happen often (the checks below say so) */
    tiny_open(&f->t, &ms, 48);
    kv_open(&f->kv, &f->t.m, 48);
    /* the prompt: 4 tokens and the model's greedy continuation */
    const int32_t head[4] = {3, 17, 9, 28};
    gen_params gg = {.max_tokens = C_PROMPT - 4, .sampling = {.temperature = 0.0f, .top_p = 1.0f}, .ignore_eos = 1};
    sink gs = {.stop_after = 0};
    run_plain(&f->t, &f->kv, head, 4, &gg, &gs);
    memcpy(f->prompt, head, sizeof head);
    memcpy(f->prompt + 4, gs.ids, (C_PROMPT - 4) * sizeof(int32_t));
    skipset_init(&f->ss, 4);
    f->ss.mlp_skip[3] = 1;
    sampler_params smp = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    tables *plain = calloc(1, sizeof *plain), *ctx = calloc(1, sizeof *ctx), *chain = calloc(1, sizeof *chain);
    tables *wrong = calloc(1, sizeof *wrong);
    spec_stats acx = {0}, ach = {0};
    int32_t toks[S_TOKENS];
    gen_params gp = {.max_tokens = S_MAX_TOKENS, .sampling = smp, .ignore_eos = 1};
    for (int i = 0; i < C_N; i++) {
        gp.sampling.seed = 1000003ull * i + 1;
        sink s = {.stop_after = 0};
        run_plain(&f->t, &f->kv, f->prompt, C_PROMPT, &gp, &s);
        tables_add(plain, s.ids);
        sample_ctx_spec(f, &smp, 7000009ull * i + 5, SPEC_DRAFT_CONTEXT, NULL, toks, &acx);
        tables_add(ctx, toks);
        sample_ctx_spec(f, &smp, 9000011ull * i + 3, SPEC_DRAFT_CHAIN, &f->ss, toks, &ach);
        tables_add(chain, toks);
        if (i < C_N / 2) {
            sample_ctx_wrong(f, &smp, 5000011ull * i + 13, toks);
            tables_add(wrong, toks);
        }
    }
    double ar = acx.counts.src_drafted[SPEC_SRC_CONTEXT] ? (double)acx.counts.src_accepted[SPEC_SRC_CONTEXT] /
                                                        acx.counts.src_drafted[SPEC_SRC_CONTEXT] : 0.0;
    double x[3];
    int df[3];
    const char *names[2] = {"context", "chain"};
    tables *got[2] = {ctx, chain};
    double pmin[2];
    for (int g = 0; g < 2; g++) {
        double p01 = homogeneity(plain->joint01, got[g]->joint01, S_VOCAB * S_VOCAB, &x[0], &df[0]);
        double p12 = homogeneity(plain->joint12, got[g]->joint12, S_VOCAB * S_VOCAB, &x[1], &df[1]);
        double p3 = homogeneity(plain->marg3, got[g]->marg3, S_VOCAB, &x[2], &df[2]);
        printf("  T=1 %s drafts: plain vs spec p = %.4f (t0,t1: chi2 %.1f df %d), %.4f (t1,t2), %.4f (t3)\n",
               names[g], p01, x[0], df[0], p12, p3);
        pmin[g] = min3(p01, p12, p3);
    }
    double w01 = homogeneity(plain->joint01, wrong->joint01, S_VOCAB * S_VOCAB, &x[0], &df[0]);
    double w12 = homogeneity(plain->joint12, wrong->joint12, S_VOCAB * S_VOCAB, &x[1], &df[1]);
    double w3 = homogeneity(plain->marg3, wrong->marg3, S_VOCAB, &x[2], &df[2]);
    printf("  context acceptance %.3f (%lld blocks); chain blocks %lld, context-only %lld; wrong rule p = %.3g, "
           "%.3g, %.3g (must be detected)\n", ar, (long long)acx.counts.src_blocks[SPEC_SRC_CONTEXT],
           (long long)ach.counts.src_blocks[SPEC_SRC_CHAIN], (long long)ach.counts.src_blocks[SPEC_SRC_CONTEXT], w01, w12, w3);
    if (!(ar > 0.05 && ar < 0.95))
        fail_msg("context acceptance %.3f outside (0.05, 0.95): rejections not exercised", ar);
    assert_true(ach.counts.src_blocks[SPEC_SRC_CHAIN] > C_N / 4);   /* chained blocks really happened */
    if (!(pmin[0] > 0.001 && pmin[1] > 0.001))
        fail_msg("sampling with context drafts differs from plain (p = %.3g context, %.3g chain)", pmin[0], pmin[1]);
    if (!(min3(w01, w12, w3) < 0.001))
        fail_msg("the test cannot tell the wrong context rule from the right one (p = %.3g, %.3g, %.3g)", w01, w12, w3);
    free(plain);
    free(ctx);
    free(chain);
    free(wrong);
    skipset_free(&f->ss);
    kv_free(&f->kv);
    tiny_close(&f->t);
    free(f);
}

/* ------------------------------------------------- draft-length clamp */

/* spec_end_pos + spec_draft_limit give what the one-process loop computed
 * inline (k_max against context room and the tokens left) and what the
 * pipeline computed from its end position, over a grid. */
static void test_draft_limit(void **state)
{
    (void)state;
    assert_int_equal(spec_end_pos(64, 10, 100), 62);        /* the context binds */
    assert_int_equal(spec_end_pos(64, 10, 5), 14);          /* the token limit binds */
    assert_int_equal(spec_draft_limit(12, 10, 14), 4);
    assert_int_equal(spec_draft_limit(3, 10, 14), 3);
    assert_int_equal(spec_draft_limit(12, 14, 14), 0);
    assert_int_equal(spec_draft_limit(12, 20, 14), 0);      /* never negative */
    for (int32_t cap = 4; cap <= 40; cap += 3)
        for (int32_t n_prompt = 1; n_prompt < cap; n_prompt += 2)
            for (int32_t max_tokens = 1; max_tokens <= 50; max_tokens += 4)
                for (int32_t gen = 1; gen <= max_tokens; gen++)
                    for (int32_t K = 1; K <= 13; K += 4) {
                        int32_t L = n_prompt + gen - 1;
                        int32_t old = K;
                        old = old < cap - 2 - L ? old : cap - 2 - L;
                        old = old < max_tokens - gen - 1 ? old : max_tokens - gen - 1;
                        int32_t end_old = n_prompt + max_tokens - 2;
                        if (end_old > cap - 2)
                            end_old = cap - 2;
                        int32_t pipe_old = K < end_old - L ? K : end_old - L;
                        int32_t k = spec_draft_limit(K, L, spec_end_pos(cap, L, max_tokens - gen));
                        int32_t end = spec_end_pos(cap, n_prompt, max_tokens - 1);
                        assert_int_equal(k, old > 0 ? old : 0);
                        assert_int_equal(spec_draft_limit(K, L, end), pipe_old > 0 ? pipe_old : 0);
                        assert_int_equal(end, end_old);
                    }
}

/* --------------------------------------------------- adaptive exit rule */

static void exit_ref(double *gamma, double *ar, const spec_params *p, int drafted, int accepted)
{
    if (drafted <= 0)
        return;
    *ar = p->ar_decay * *ar + (1.0 - p->ar_decay) * accepted / (double)drafted;
    double target = *ar < p->ar_target ? *gamma + p->gamma_step
                  : drafted == p->max_draft ? *gamma : *gamma - p->gamma_step;
    *gamma = p->gamma_ema * *gamma + (1.0 - p->gamma_ema) * target;
    *gamma = fmin(fmax(*gamma, 0.0), 1.0);
}

static void test_exit_update(void **state)
{
    (void)state;
    spec_params p;
    spec_params_default(&p);
    assert_true(p.gamma_init == 0.6f && p.max_draft == 12 && p.ar_target == 0.9f && p.gamma_step == 0.01f &&
                p.gamma_ema == 0.9f && p.ar_decay == 0.5f && p.ar_init == 0.9f);

    /* by hand: AR 0.9, 4 of 4 accepted (drafted < K): AR = 0.95 >= 0.9, so
     * gamma' = 0.6 - 0.01 and gamma = 0.9*0.6 + 0.1*0.59 = 0.599 */
    spec_exit e = {0.6f, 0.9f};
    spec_exit_update(&e, &p, 4, 4);
    assert_float_equal(e.ar, 0.95f, 1e-6f);
    assert_float_equal(e.gamma, 0.599f, 1e-6f);
    /* 12 of 12 (drafted == K): AR = 0.975, gamma' = gamma: unchanged */
    spec_exit_update(&e, &p, 12, 12);
    assert_float_equal(e.ar, 0.975f, 1e-6f);
    assert_float_equal(e.gamma, 0.599f, 1e-6f);
    /* 1 of 4: AR = 0.5*0.975 + 0.5*0.25 = 0.6125 < 0.9: gamma' = gamma + 0.01 */
    spec_exit_update(&e, &p, 4, 1);
    assert_float_equal(e.ar, 0.6125f, 1e-6f);
    assert_float_equal(e.gamma, 0.6f, 1e-6f);
    /* nothing drafted: no change */
    spec_exit_update(&e, &p, 0, 0);
    assert_float_equal(e.ar, 0.6125f, 1e-6f);
    assert_float_equal(e.gamma, 0.6f, 1e-6f);

    /* a long random sequence against the rule computed in double */
    uint64_t rng = 77;
    for (int variant = 0; variant < 3; variant++) {
        spec_params q = p;
        if (variant == 1)
            q.max_draft = 5, q.gamma_step = 0.05f, q.gamma_ema = 0.7f, q.ar_decay = 0.8f, q.ar_target = 0.6f;
        if (variant == 2)
            q.max_draft = 1, q.gamma_step = 0.2f, q.gamma_ema = 0.0f;   /* hits the clamps */
        spec_exit f = {q.gamma_init, q.ar_init};
        double g = q.gamma_init, ar = q.ar_init;
        for (int i = 0; i < 500; i++) {
            int d = 1 + (int)(tmodel_rng(&rng) % (uint64_t)q.max_draft);
            int a = (int)(tmodel_rng(&rng) % (uint64_t)(d + 1));
            if (i % 50 < 20)
                a = d;                               /* runs of full acceptance */
            spec_exit_update(&f, &q, d, a);
            exit_ref(&g, &ar, &q, d, a);
            if (fabs(f.gamma - g) > 1e-4 || fabs(f.ar - ar) > 1e-5)
                fail_msg("variant %d step %d (d=%d a=%d): gamma %.6f ar %.6f, want %.6f %.6f", variant, i, d, a,
                         f.gamma, f.ar, g, ar);
            assert_true(f.gamma >= 0.0f && f.gamma <= 1.0f);
        }
    }
}

static void test_params_check(void **state)
{
    (void)state;
    char err[256];
    spec_params p;
    spec_params_default(&p);
    assert_int_equal(spec_params_check(&p, err, sizeof err), 0);
#define BAD(field, value)                                             \
    do {                                                              \
        spec_params q = p;                                            \
        q.field = value;                                              \
        err[0] = 0;                                                   \
        if (spec_params_check(&q, err, sizeof err) != -1)             \
            fail_msg("spec_params_check accepted " #field " = " #value); \
        assert_true(strlen(err) > 0);                                 \
    } while (0)
    BAD(max_draft, 0);
    BAD(max_draft, -3);
    BAD(max_draft, SPEC_MAX_DRAFT + 1);
    BAD(gamma_init, -0.01f);
    BAD(gamma_init, 1.01f);
    BAD(gamma_init, NAN);
    BAD(ar_target, 0.0f);
    BAD(ar_target, 1.5f);
    BAD(ar_target, NAN);
    BAD(gamma_step, -0.1f);
    BAD(gamma_step, 1.0f);
    BAD(gamma_step, NAN);
    BAD(gamma_ema, -0.1f);
    BAD(gamma_ema, 1.1f);
    BAD(gamma_ema, NAN);
    BAD(ar_decay, -0.5f);
    BAD(ar_decay, 2.0f);
    BAD(ar_decay, INFINITY);
#undef BAD
    /* the limits themselves are fine */
    spec_params q = p;
    q.max_draft = 1;
    q.gamma_init = 0.0f;
    assert_int_equal(spec_params_check(&q, err, sizeof err), 0);
    q.max_draft = SPEC_MAX_DRAFT;
    q.gamma_init = 1.0f;
    q.ar_target = 1.0f;
    q.gamma_ema = 1.0f;
    q.ar_decay = 0.0f;
    assert_int_equal(spec_params_check(&q, err, sizeof err), 0);
    /* gen_selfspec refuses bad parameters before doing anything */
    tmodel_spec ms = tmodel_default(GGUF_TT_Q8_0);
    tiny t;
    tiny_open(&t, &ms, 32);
    kv_cache kv;
    kv_open(&kv, &t.m, 32);
    skip_set ss;
    skipset_init(&ss, t.m.config.n_layers);
    q = p;
    q.max_draft = 0;
    int32_t prompt[2] = {1, 2};
    gen_params gp = {.max_tokens = 4, .sampling = {.temperature = 0.0f, .top_p = 1.0f}};
    gen_stats st;
    spec_stats sps;
    sink s = {.stop_after = 0};
    err[0] = 0;
    assert_int_equal(gen_selfspec(&t.m, &t.fs, &kv, &ss, &q, prompt, 2, &gp, sink_emit, &s, &st, &sps, err,
                                  sizeof err), -1);
    assert_true(strstr(err, "max draft") != NULL);
    assert_int_equal(s.n, 0);
    /* and bad sampling parameters */
    gp.sampling.top_p = 0.0f;
    err[0] = 0;
    assert_int_equal(gen_selfspec(&t.m, &t.fs, &kv, &ss, &p, prompt, 2, &gp, sink_emit, &s, &st, &sps, err,
                                  sizeof err), -1);
    assert_true(strlen(err) > 0);
    assert_int_equal(s.n, 0);
    skipset_free(&ss);
    kv_free(&kv);
    tiny_close(&t);
}

/* ------------------------------------------------------------ skip sets */

static model_config tiny_config(void)
{
    model_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = 4;
    c.dim = 64;
    c.vocab_size = 256;
    snprintf(c.name, sizeof c.name, "tiny-test");
    return c;
}

static void write_text(char *path, size_t len, const char *text)
{
    snprintf(path, len, "/tmp/selfspec_skipXXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static void expect_load_fails(const char *text, const char *needle)
{
    model_config c = tiny_config();
    char path[64], err[512] = "";
    write_text(path, sizeof path, text);
    skip_set s;
    int rc = skipset_load(&s, path, &c, err, sizeof err);
    unlink(path);
    if (rc != -1)
        fail_msg("skipset_load accepted %s", text);
    if (strlen(err) == 0 || (needle && !strstr(err, needle)))
        fail_msg("skipset_load(%s): message '%s' lacks '%s'", text, err, needle ? needle : "");
    /* a failed load leaves nothing allocated (and a zeroed set) */
    assert_null(s.attn_skip);
    assert_null(s.head_tokens);
}

static void test_skipset_load_errors(void **state)
{
    (void)state;
    /* malformed JSON, wrong top-level type */
    expect_load_fails("{\"attn_skip\": [1, 2", "JSON");
    expect_load_fails("", "JSON");
    expect_load_fails("[1, 2, 3]", "JSON");
    expect_load_fails("\"attn_skip\"", "JSON");
    /* wrong layer count */
    expect_load_fails("{\"model\": {\"n_layers\": 5}, \"attn_skip\": [1]}", "layer");
    expect_load_fails("{\"model\": {\"n_layers\": \"4\"}}", "layer");
    /* out-of-range, duplicate, non-integer indices */
    expect_load_fails("{\"attn_skip\": [4]}", "layer 4");
    expect_load_fails("{\"mlp_skip\": [-1]}", "layer -1");
    expect_load_fails("{\"mlp_skip\": [0, 100000]}", "100000");
    expect_load_fails("{\"attn_skip\": [1, 2, 1]}", "twice");
    expect_load_fails("{\"mlp_skip\": [3, 3]}", "twice");
    expect_load_fails("{\"attn_skip\": [1.5]}", "non-integer");
    expect_load_fails("{\"attn_skip\": [\"2\"]}", "non-integer");
    expect_load_fails("{\"mlp_skip\": [true]}", "non-integer");
    expect_load_fails("{\"mlp_skip\": [null]}", "non-integer");
    expect_load_fails("{\"mlp_skip\": [1e20]}", NULL);
    expect_load_fails("{\"attn_skip\": 3}", "array");
    expect_load_fails("{\"mlp_skip\": {\"0\": 1}}", "array");
    /* bad draft_head entries (16 of them, so none is trimmed away) */
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,256]}", "draft_head");
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,-1]}", "draft_head");
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,3]}", "draft_head");
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,\"15\"]}", "draft_head");
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,null]}", "draft_head");
    expect_load_fails("{\"draft_head\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15.5]}", "draft_head");
    expect_load_fails("{\"draft_head\": 7}", "draft_head");
}

static void test_skipset_load_valid(void **state)
{
    (void)state;
    model_config c = tiny_config();
    char path[64], err[512] = "";
    skip_set s;
    write_text(path, sizeof path,
               "{\"model\": {\"name\": \"tiny-test\", \"n_layers\": 4, \"dim\": 64, \"vocab_size\": 256},\n"
               " \"attn_skip\": [3, 0], \"mlp_skip\": [2],\n"
               " \"draft_head\": [5,4,3,2,1,0,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,"
               "31,32,33,34,35,36],\n"
               " \"draft_head_size\": 35, \"search\": {\"anything\": [1, 2]}}\n");
    if (skipset_load(&s, path, &c, err, sizeof err) != 0)
        fail_msg("skipset_load: %s", err);
    assert_int_equal(s.n_layers, 4);
    const uint8_t attn[4] = {1, 0, 0, 1}, mlp[4] = {0, 0, 1, 0};
    assert_memory_equal(s.attn_skip, attn, 4);
    assert_memory_equal(s.mlp_skip, mlp, 4);
    assert_int_equal(skipset_count(&s), 3);
    /* draft_head_size 35 of 37 entries, trimmed to a multiple of 16 */
    assert_int_equal(s.n_head_tokens, 32);
    assert_int_equal(s.head_tokens[0], 5);
    assert_int_equal(s.head_tokens[5], 0);
    assert_int_equal(s.head_tokens[31], 31);
    assert_string_equal(s.source, path);
    layer_mask m;
    skipset_mask(&s, &m);
    for (int l = 0; l < 4; l++) {
        assert_int_equal(m.attn[l], !attn[l]);
        assert_int_equal(m.mlp[l], !mlp[l]);
    }
    skipset_mask_free(&m);
    skipset_free(&s);
    unlink(path);
    /* an empty object: skip nothing, no head */
    write_text(path, sizeof path, "{}");
    assert_int_equal(skipset_load(&s, path, &c, err, sizeof err), 0);
    assert_int_equal(skipset_count(&s), 0);
    assert_null(s.head_tokens);
    skipset_free(&s);
    unlink(path);
    /* a draft head shorter than 16 entries is no head */
    write_text(path, sizeof path, "{\"attn_skip\": [], \"draft_head\": [1, 2, 3]}");
    assert_int_equal(skipset_load(&s, path, &c, err, sizeof err), 0);
    assert_int_equal(s.n_head_tokens, 0);
    skipset_free(&s);
    unlink(path);
    /* a missing file */
    assert_int_equal(skipset_load(&s, "/nonexistent/skip.json", &c, err, sizeof err), -1);
    assert_true(strstr(err, "/nonexistent/skip.json") != NULL);
}

static void test_skipset_roundtrip(void **state)
{
    (void)state;
    model_config c = tiny_config();
    char dir[] = "/tmp/selfspec_cfgXXXXXX", path[256], other[256], found[512], err[512] = "";
    assert_non_null(mkdtemp(dir));
    skip_set s, r;
    skipset_init(&s, 4);
    s.attn_skip[1] = s.attn_skip[2] = s.mlp_skip[0] = s.mlp_skip[3] = 1;
    uint64_t rng = 3;
    set_head(&s, random_head(&rng, 48, 256), 48);
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    if (skipset_save(&s, path, &c, 0, "{\"calibration\": {\"prompts\": 3}, \"measured\": 1.5}", err, sizeof err) != 0)
        fail_msg("skipset_save: %s", err);
    if (skipset_load(&r, path, &c, err, sizeof err) != 0)
        fail_msg("skipset_load of a saved set: %s", err);
    assert_int_equal(r.n_layers, 4);
    assert_memory_equal(r.attn_skip, s.attn_skip, 4);
    assert_memory_equal(r.mlp_skip, s.mlp_skip, 4);
    assert_int_equal(r.n_head_tokens, 48);
    assert_memory_equal(r.head_tokens, s.head_tokens, 48 * sizeof(int32_t));
    skipset_free(&r);
    /* a head_size below the list: the load uses that many (rounded to 16) */
    if (skipset_save(&s, path, &c, 40, NULL, err, sizeof err) != 0)
        fail_msg("skipset_save: %s", err);
    assert_int_equal(skipset_load(&r, path, &c, err, sizeof err), 0);
    assert_int_equal(r.n_head_tokens, 32);
    assert_memory_equal(r.head_tokens, s.head_tokens, 32 * sizeof(int32_t));
    skipset_free(&r);
    /* no head, nothing skipped */
    skip_set e;
    skipset_init(&e, 4);
    assert_int_equal(skipset_save(&e, path, &c, 0, NULL, err, sizeof err), 0);
    assert_int_equal(skipset_load(&r, path, &c, err, sizeof err), 0);
    assert_int_equal(skipset_count(&r), 0);
    assert_int_equal(r.n_head_tokens, 0);
    skipset_free(&r);
    skipset_free(&e);
    /* skipset_find: a config for another model is not picked */
    model_config c2 = c;
    c2.n_layers = 6;
    snprintf(other, sizeof other, "%s/other.json", dir);
    skip_set s6;
    skipset_init(&s6, 6);
    assert_int_equal(skipset_save(&s6, other, &c2, 0, NULL, err, sizeof err), 0);
    skipset_free(&s6);
    assert_int_equal(skipset_save(&s, path, &c, 0, NULL, err, sizeof err), 0);
    assert_int_equal(skipset_find(dir, &c, found, sizeof found), 0);
    assert_string_equal(found, path);
    assert_int_equal(skipset_find(dir, &c2, found, sizeof found), 0);
    assert_string_equal(found, other);
    model_config c3 = c;
    snprintf(c3.name, sizeof c3.name, "another-model");
    assert_int_equal(skipset_find(dir, &c3, found, sizeof found), -1);
    assert_int_equal(skipset_find("/nonexistent-dir", &c, found, sizeof found), -1);
    /* the 6-layer config does not load for the 4-layer model */
    assert_int_equal(skipset_load(&r, other, &c, err, sizeof err), -1);
    skipset_free(&s);
    unlink(path);
    unlink(other);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_matches_plain),
        cmocka_unit_test(test_greedy_stops),
        cmocka_unit_test(test_draft_and_verify_pieces),
        cmocka_unit_test(test_chi2_cdf),
        cmocka_unit_test(test_sampling_t1),
        cmocka_unit_test(test_sampling_t07_topk),
        cmocka_unit_test(test_sampling_topp),
        cmocka_unit_test(test_sampling_pruned_head),
        cmocka_unit_test(test_seed_reproduces),
        cmocka_unit_test(test_context_greedy_matches_plain),
        cmocka_unit_test(test_choose_rule),
        cmocka_unit_test(test_accept_point_q),
        cmocka_unit_test(test_sampling_context),
        cmocka_unit_test(test_draft_limit),
        cmocka_unit_test(test_exit_update),
        cmocka_unit_test(test_params_check),
        cmocka_unit_test(test_skipset_load_errors),
        cmocka_unit_test(test_skipset_load_valid),
        cmocka_unit_test(test_skipset_roundtrip),
    };
    /* One thread unless asked otherwise: these models are tiny, and with two
     * OpenMP threads on a busy 2-core machine the barriers of each forward
     * pass made the run 7x slower (4m50s instead of 40 s). */
    if (!getenv("OMP_NUM_THREADS"))
        omp_set_num_threads(1);
    const char *filter = getenv("TEST_SPEC_FILTER");   /* e.g. "test_sampling*" */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
