/*
 * test_engine.c - the continuous-batching engine (engine/engine.h) on tiny
 * random models:
 *  - a paged KV cache gives the same logits, bit for bit, as a contiguous one;
 *  - every request's tokens equal decoding it alone (gen_plain, or
 *    gen_selfspec for forced speculation), whatever shares the batch:
 *    greedy and seeded sampling, --max-seqs 1, 3 and all, mixed lengths,
 *    EOS, prompts longer than one step's token budget (chunked prefill);
 *  - admission: a request that can never fit is refused at submit; a pool
 *    that holds two requests at a time still finishes them all, and every
 *    KV block comes back;
 *  - the speculation policy: on where passes are bandwidth-bound (flat
 *    cost), off where they are compute-bound (cost linear in tokens);
 *  - context drafts and chains: forced, equal to gen_selfspec with the same
 *    draft source (greedy and sampled, with and without a skip set); auto,
 *    equal to gen_plain and really drafting from context; per-source totals;
 *  - a remote draft source (the pipeline's drafter, faked: good and bad
 *    proposals), with paged KV and with the caller's own caches: equal to
 *    gen_plain; it is asked about exactly the state it was told of;
 *  - the backend interface: an engine over a backend the caller opened (the
 *    CPU one, wrapped and counted) decodes exactly the same, closes every
 *    cache it opened, asks greedy-only passes for argmax ids alone (a
 *    device keeps its logits); the CUDA backend fails cleanly without a GPU.
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

#include "decode/generate.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "oracle.h"
#include "engine/engine.h"
#include "format/gguf.h"
#include "model/backend.h"
#include "model/model.h"
#include "testutil_model.h"

#define N_REQ 10
#define MAX_OUT 48

typedef struct {
    char path[128];
    model m;
    fwd_state fs;
} tiny;

static void tiny_open(tiny *t)
{
    char err[512] = "";
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.seed = 11;
    memset(t, 0, sizeof *t);
    assert_int_equal(tmodel_write_temp(&sp, t->path, sizeof t->path), 0);
    if (model_load(&t->m, t->path, NULL, err, sizeof err) != 0)
        fail_msg("model_load: %s", err);
    fwd_state_init(&t->fs, &t->m.config, 64, 128);
}

static void tiny_close(tiny *t)
{
    fwd_state_free(&t->fs);
    model_free(&t->m);
    unlink(t->path);
}

/* ---- requests and their reference outputs ---- */

typedef struct {
    int32_t prompt[80];
    int32_t n_prompt;
    gen_params gp;
    int32_t out[MAX_OUT];       /* the engine's tokens */
    int32_t n_out;
    int32_t ref[MAX_OUT];       /* decoded alone */
    int32_t n_ref;
    int done;
    engine_result res;
} req;

static int eog_7(const void *ctx, int32_t token)
{
    (void)ctx;
    return token == 7;
}

static void make_requests(req *r, int n, int sampled)
{
    uint64_t rng = 99;
    for (int i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].n_prompt = 1 + (int32_t)(tmodel_rng(&rng) % (i == 3 ? 75 : 20));   /* one long prompt */
        for (int32_t j = 0; j < r[i].n_prompt; j++)
            r[i].prompt[j] = (int32_t)(tmodel_rng(&rng) % 256);
        r[i].gp.max_tokens = 4 + (int32_t)(tmodel_rng(&rng) % (MAX_OUT - 4));
        r[i].gp.sampling = (sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
        if (sampled && i % 2) {
            r[i].gp.sampling.temperature = 0.9f;
            r[i].gp.sampling.top_p = 0.95f;
            r[i].gp.sampling.seed = 1000 + (uint64_t)i;
        }
        if (i % 3 == 0)
            r[i].gp.is_eog = eog_7;   /* some stop at a token */
    }
}

static int collect(void *ctx, int32_t tok)
{
    req *r = ctx;
    if (r->n_ref < MAX_OUT)
        r->ref[r->n_ref++] = tok;
    return 0;
}

/* Each request alone: gen_plain, or gen_selfspec with ss and/or a draft
 * source other than layers. */
static void reference_draft(tiny *t, req *r, int n, const skip_set *ss, int32_t draft)
{
    char err[256];
    for (int i = 0; i < n; i++) {
        kv_cache kv;
        assert_int_equal(kv_init(&kv, &t->m.config, 128, err, sizeof err), 0);
        gen_stats st;
        spec_stats sps;
        spec_params sp;
        spec_params_default(&sp);
        sp.max_draft = 4;
        sp.draft = draft;
        r[i].n_ref = 0;
        int rc = ss || draft != SPEC_DRAFT_LAYERS ? gen_selfspec(&t->m, &t->fs, &kv, ss, &sp, r[i].prompt, r[i].n_prompt, &r[i].gp, collect, &r[i],
                                   &st, &sps, err, sizeof err)
                    : gen_plain(&t->m, &t->fs, &kv, r[i].prompt, r[i].n_prompt, &r[i].gp, collect, &r[i], &st, err,
                                sizeof err);
        if (rc != 0)
            fail_msg("reference %d: %s", i, err);
        kv_free(&kv);
    }
}

static void reference(tiny *t, req *r, int n, const skip_set *ss)
{
    reference_draft(t, r, n, ss, SPEC_DRAFT_LAYERS);
}

static int on_token(void *user, int32_t tok)
{
    req *r = user;
    assert_true(r->n_out < MAX_OUT);
    r->out[r->n_out++] = tok;
    return 0;
}

static void on_done(void *user, const engine_result *res)
{
    req *r = user;
    assert_int_equal(r->done, 0);
    r->done = 1;
    r->res = *res;
}

/* Run every request through one engine and compare with the references. */
/* Run the requests through one engine; with check, each output must equal
 * its reference (ref); requests with n_ref < 0 take their output as it. */
static void run_engine(tiny *t, req *r, int n, engine_params *p, const char *what, engine_totals *tot)
{
    char err[256];
    engine *e;
    if (engine_init(&e, &t->m, p, err, sizeof err) != 0)
        fail_msg("engine_init: %s", err);
    for (int i = 0; i < n; i++) {
        r[i].n_out = 0;
        r[i].done = 0;
        engine_callbacks cb = {.on_token = on_token, .on_done = on_done, .user = &r[i]};
        if (engine_submit(e, r[i].prompt, r[i].n_prompt, &r[i].gp, &cb, err, sizeof err) != 0)
            fail_msg("submit %d: %s", i, err);
    }
    int steps = 0;
    while (engine_pending(e) > 0) {
        assert_true(engine_step(e, err, sizeof err) >= 0);
        assert_true(++steps < 10000);
        assert_true(engine_live(e) <= p->max_seqs);
    }
    int32_t used, total;
    engine_kv_usage(e, &used, &total);
    assert_int_equal(used, 0);                       /* every block came back */
    for (int i = 0; i < n; i++) {
        assert_int_equal(r[i].done, 1);
        if (r[i].n_ref < 0) {   /* no reference yet: this run makes it */
            memcpy(r[i].ref, r[i].out, (size_t)r[i].n_out * sizeof(int32_t));
            r[i].n_ref = r[i].n_out;
        }
        int32_t d = 0;
        while (d < r[i].n_out && d < r[i].n_ref && r[i].out[d] == r[i].ref[d])
            d++;
        if (r[i].n_out != r[i].n_ref || d < r[i].n_ref)
            fail_msg("%s: request %d (prompt %d, max %d, T=%.1f): %d tokens, alone %d; first difference at %d", what,
                     i, r[i].n_prompt, r[i].gp.max_tokens, r[i].gp.sampling.temperature, r[i].n_out, r[i].n_ref, d);
        assert_int_equal(r[i].res.generated_tokens, r[i].n_out);
        assert_int_equal(r[i].res.prompt_tokens, r[i].n_prompt);
    }
    if (tot)
        *tot = *engine_get_totals(e);
    engine_free(e);
}

static void base_params(engine_params *p, int max_seqs, engine_mode mode, const skip_set *ss)
{
    engine_params_default(p);
    p->max_seqs = max_seqs;
    p->max_batch_tokens = 32;     /* < the long prompt: prefill in chunks */
    p->kv_mem = (size_t)4 << 20;
    p->ctx = 128;
    p->mode = mode;
    p->ss = ss;
    p->sp.max_draft = 4;
    p->sp.draft = SPEC_DRAFT_LAYERS;   /* the references below draft layers unless a test says otherwise */
    p->calibrate = 0;
}

/* A set skipping half the sublayers, so drafts are often wrong. */
static void half_skip(skip_set *ss, int32_t L)
{
    skipset_init(ss, L);
    ss->attn_skip[0] = 1;
    ss->mlp_skip[L - 1] = 1;
}

/* Give the even requests prompts with repeats (a segment of 5 tokens
 * repeated), so that context drafts hit in the prompt too. */
static void add_repeats(req *r, int n)
{
    for (int i = 0; i < n; i += 2) {
        if (r[i].n_prompt < 12)
            r[i].n_prompt = 12 + i;
        for (int32_t j = 5; j < r[i].n_prompt; j++)
            r[i].prompt[j] = r[i].prompt[j % 5];
    }
}

/* Every request through an engine with parameters p on a machine where
 * speculation pays (flat costs: a verification block costs no more than a
 * step); each output must equal its reference. Returns the engine, for its
 * totals (the caller frees it). */
static engine *run_flat(tiny *t, req *r, int n, const engine_params *p)
{
    char err[256];
    engine *e;
    assert_int_equal(engine_init(&e, &t->m, p, err, sizeof err), 0);
    for (int32_t T = 1; T <= 64; T++) {
        engine_cost_observe(e, 0, T, 1e-3);
        engine_cost_observe(e, 1, T, 1e-4);
    }
    for (int i = 0; i < n; i++) {
        r[i].n_out = 0;
        r[i].done = 0;
        engine_callbacks cb = {.on_token = on_token, .on_done = on_done, .user = &r[i]};
        assert_int_equal(engine_submit(e, r[i].prompt, r[i].n_prompt, &r[i].gp, &cb, err, sizeof err), 0);
    }
    while (engine_pending(e) > 0)
        assert_true(engine_step(e, err, sizeof err) >= 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(r[i].n_out, r[i].n_ref);
        assert_memory_equal(r[i].out, r[i].ref, (size_t)r[i].n_ref * sizeof(int32_t));
    }
    return e;
}

/* ---- tests ---- */

static void test_paged_kv_same_logits(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    char err[256];
    int32_t V = t.m.config.vocab_size, toks[40];
    for (int i = 0; i < 40; i++)
        toks[i] = (i * 37) % V;
    kv_cache a, b;
    kv_pool pool;
    assert_int_equal(kv_init(&a, &t.m.config, 64, err, sizeof err), 0);
    assert_int_equal(kv_pool_init(&pool, &t.m.config, 8 * kv_pool_block_bytes(&t.m.config), err, sizeof err), 0);
    assert_int_equal(pool.n_blocks, 8);
    kv_cache hold;   /* take a block first so b's blocks are not 0, 1, 2 */
    assert_int_equal(kv_init_paged(&hold, &pool, 1), 0);
    assert_int_equal(kv_init_paged(&b, &pool, 50), 0);
    assert_int_equal(b.cap, 64);
    assert_int_equal(pool.n_free, 3);
    kv_cache no;
    assert_int_equal(kv_init_paged(&no, &pool, 64), -1);     /* 4 blocks asked, 3 free */
    assert_int_equal(pool.n_free, 3);
    float *la = malloc((size_t)40 * V * sizeof(float)), *lb = malloc((size_t)40 * V * sizeof(float));
    /* 23 tokens in one pass, then 17 one at a time */
    fwd_seq sa = {.tokens = toks, .n_tokens = 23, .pos = 0, .kv = &a, .logits_from = 0};
    fwd_seq sb = {.tokens = toks, .n_tokens = 23, .pos = 0, .kv = &b, .logits_from = 0};
    assert_int_equal(model_forward(&t.m, &t.fs, &sa, 1, NULL, NULL, la, err, sizeof err), 0);
    assert_int_equal(model_forward(&t.m, &t.fs, &sb, 1, NULL, NULL, lb, err, sizeof err), 0);
    assert_memory_equal(la, lb, (size_t)23 * V * sizeof(float));
    for (int p = 23; p < 40; p++) {
        fwd_seq qa = {.tokens = toks + p, .n_tokens = 1, .pos = p, .kv = &a, .logits_from = 0};
        fwd_seq qb = {.tokens = toks + p, .n_tokens = 1, .pos = p, .kv = &b, .logits_from = 0};
        assert_int_equal(model_forward(&t.m, &t.fs, &qa, 1, NULL, NULL, la, err, sizeof err), 0);
        assert_int_equal(model_forward(&t.m, &t.fs, &qb, 1, NULL, NULL, lb, err, sizeof err), 0);
        assert_memory_equal(la, lb, (size_t)V * sizeof(float));
    }
    kv_free(&b);
    kv_free(&hold);
    assert_int_equal(pool.n_free, 8);
    kv_free(&a);
    kv_pool_free(&pool);
    /* a ledger (the CUDA backend's): the same ids, no memory */
    kv_pool led;
    kv_ledger_init(&led, &t.m.config, 4);
    assert_null(led.k);
    assert_int_equal(kv_init_paged(&hold, &led, 20), 0);
    assert_int_equal(hold.cap, 32);
    assert_int_equal(hold.blocks[0], 0);
    assert_int_equal(hold.blocks[1], 1);
    assert_int_equal(kv_init_paged(&no, &led, 40), -1);      /* 3 blocks asked, 2 free */
    kv_free(&hold);
    assert_int_equal(led.n_free, 4);
    kv_pool_free(&led);
    free(la);
    free(lb);
    tiny_close(&t);
}

static void test_batch_invariant_plain(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    reference(&t, r, N_REQ, NULL);
    int seqs[] = {1, 3, N_REQ};
    engine_mode modes[] = {ENGINE_PLAIN, ENGINE_AUTO};
    for (int mi = 0; mi < 2; mi++)
        for (int k = 0; k < 3; k++) {
            engine_params p;
            base_params(&p, seqs[k], modes[mi], NULL);
            char what[64];
            snprintf(what, sizeof what, "%s, max-seqs %d", engine_mode_name(modes[mi]), seqs[k]);
            run_engine(&t, r, N_REQ, &p, what, NULL);
        }
    free(r);
    tiny_close(&t);
}

static void test_batch_invariant_spec(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    req *r = calloc(N_REQ, sizeof *r);
    /* forced speculation: equal to gen_selfspec alone, greedy and sampled */
    make_requests(r, N_REQ, 1);
    reference(&t, r, N_REQ, &ss);
    int seqs[] = {1, 3, N_REQ};
    for (int k = 0; k < 3; k++) {
        engine_params p;
        base_params(&p, seqs[k], ENGINE_SPEC, &ss);
        char what[64];
        snprintf(what, sizeof what, "self-spec, max-seqs %d", seqs[k]);
        run_engine(&t, r, N_REQ, &p, what, NULL);
    }
    /* auto: greedy sequences may speculate, sampled ones decode plainly;
     * both equal gen_plain alone. Make the policy speculate: flat cost. */
    reference(&t, r, N_REQ, NULL);
    engine_params p;
    base_params(&p, 4, ENGINE_AUTO, &ss);
    engine *e = run_flat(&t, r, N_REQ, &p);
    assert_true(engine_get_totals(e)->spec.num_drafts > 0);   /* it did speculate */
    engine_free(e);
    skipset_free(&ss);
    free(r);
    tiny_close(&t);
}

/* Drafts from the whole job (decode/jobindex.h): the second half of the
 * requests repeats the first half's prompts (greedy), so once a request has
 * finished its twin can draft its output from the job's index. Forced
 * context drafts (nominal costs: the same choices on every machine), then
 * auto on a machine where verification is cheap: every output equals
 * gen_plain alone, at one sequence at a time (the twins draft from the job,
 * and with forced drafts they are accepted) and all at once (drafting from
 * whatever finished before); with the index off, no job drafts. */
static void test_job_index(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 0);
    for (int i = N_REQ / 2; i < N_REQ; i++) {
        int keep = r[i].gp.max_tokens;
        r[i] = r[i - N_REQ / 2];
        r[i].gp.max_tokens = keep;   /* another length: the twin's text is a prefix or runs past it */
    }
    reference(&t, r, N_REQ, NULL);
    const int seqs[] = {1, N_REQ, 1, 1, N_REQ};
    for (int k = 0; k < 5; k++) {
        engine_params p;
        base_params(&p, seqs[k], k < 3 ? ENGINE_SPEC : ENGINE_AUTO, NULL);
        p.sp.draft = k < 3 ? SPEC_DRAFT_CONTEXT : SPEC_DRAFT_AUTO;
        p.job_index_tokens = k == 2 ? 0 : 4096;
        engine *e = run_flat(&t, r, N_REQ, &p);
        const spec_counts *c = &engine_get_totals(e)->spec;
        printf("  %s, job index %s, max-seqs %d: job blocks %lld, accepted %lld of %lld\n",
               k < 3 ? "forced context" : "auto", k == 2 ? "off" : "on", seqs[k], (long long)c->src_blocks[SPEC_SRC_JOB], (long long)c->src_accepted[SPEC_SRC_JOB],
               (long long)c->src_drafted[SPEC_SRC_JOB]);
        if (k == 0)
            assert_true(c->src_blocks[SPEC_SRC_JOB] > 0 && c->src_accepted[SPEC_SRC_JOB] > 0);
        if (k == 2)
            assert_int_equal(c->src_blocks[SPEC_SRC_JOB], 0);
        engine_free(e);
    }
    free(r);
    tiny_close(&t);
}

/* Token trees (decode/dtree.h, engine_params.trees): near-duplicate
 * requests (the first half's prompts again with the last token changed, so
 * the job's index and the histories hold matches that went on in several
 * ways) and prompts with repeats, greedy and sampled, forced context
 * drafts and auto on a machine where verification is cheap. With trees on,
 * the engine verifies trees (source "tree") and every output equals
 * gen_plain alone, at one sequence and at all at once; with trees off it
 * verifies none. */
static void test_trees(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    add_repeats(r, N_REQ);
    for (int i = N_REQ / 2; i < N_REQ; i++) {
        int keep = r[i].gp.max_tokens;
        r[i] = r[i - N_REQ / 2];
        r[i].prompt[r[i].n_prompt - 1] = (r[i].prompt[r[i].n_prompt - 1] + 1) % 256;
        r[i].gp.max_tokens = keep;
    }
    const int seqs[] = {1, N_REQ, 1, N_REQ, 1};
    int64_t tree_blocks = 0, tree_acc = 0;
    for (int k = 0; k < 5; k++) {   /* forced context drafts (nominal costs), then auto */
        if (k == 0)   /* sampled requests: gen_selfspec's context drafts alone */
            reference_draft(&t, r, N_REQ, NULL, SPEC_DRAFT_CONTEXT);
        if (k == 3)   /* auto: sampled requests decode plainly */
            reference(&t, r, N_REQ, NULL);
        engine_params p;
        base_params(&p, seqs[k], k < 3 ? ENGINE_SPEC : ENGINE_AUTO, NULL);
        p.sp.draft = SPEC_DRAFT_CONTEXT;
        p.sp.max_draft = 12;
        p.trees = k != 2;
        engine *e = run_flat(&t, r, N_REQ, &p);
        const spec_counts *c = &engine_get_totals(e)->spec;
        printf("  trees %s, max-seqs %d: tree blocks %lld, accepted %lld of %lld; chains %lld + %lld\n",
               p.trees ? "on" : "off", seqs[k], (long long)c->src_blocks[SPEC_SRC_TREE],
               (long long)c->src_accepted[SPEC_SRC_TREE], (long long)c->src_drafted[SPEC_SRC_TREE],
               (long long)c->src_blocks[SPEC_SRC_CONTEXT], (long long)c->src_blocks[SPEC_SRC_JOB]);
        if (p.trees) {
            tree_blocks += c->src_blocks[SPEC_SRC_TREE];
            tree_acc += c->src_accepted[SPEC_SRC_TREE];
        } else {
            assert_int_equal(c->src_blocks[SPEC_SRC_TREE], 0);
        }
        engine_free(e);
    }
    assert_true(tree_blocks > 0 && tree_acc > 0);   /* the test exercised trees */
    free(r);
    tiny_close(&t);
}

/* The prefix cache (engine/prefix.h): requests that share long prompt
 * prefixes (several blocks, a prompt that is exactly whole blocks, exact
 * repeats, and a prompt that is a prefix of another), greedy and sampled:
 * every output equals the request alone with the cache on, at one sequence
 * and at several, cached tokens are found, and every block a sequence held
 * comes back (run_engine). With a pool that holds the largest request
 * alone, idle cached blocks are given back for room (evictions) and the
 * outputs stay the same; with the cache off nothing is cached. */
static void test_prefix_cache(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    uint64_t rng = 7;
    int32_t common[48];
    for (int j = 0; j < 48; j++)
        common[j] = (int32_t)(tmodel_rng(&rng) % 256);
    for (int i = 0; i < N_REQ; i++) {
        int32_t head = i % 3 == 0 ? 48 : i % 3 == 1 ? 32 : 20;   /* 3 blocks, 2 blocks, 1 and a part */
        int32_t tail = i == 4 ? 0 : 3 + (int32_t)(tmodel_rng(&rng) % 9);
        memcpy(r[i].prompt, common, (size_t)head * sizeof(int32_t));
        for (int32_t j = 0; j < tail; j++)
            r[i].prompt[head + j] = (int32_t)(tmodel_rng(&rng) % 256);
        r[i].n_prompt = head + tail;
    }
    r[N_REQ - 1] = r[0];   /* an exact repeat */
    reference(&t, r, N_REQ, NULL);
    const int seqs[] = {1, 3, N_REQ, 1, 1};
    for (int k = 0; k < 5; k++) {
        engine_params p;
        base_params(&p, seqs[k], ENGINE_AUTO, NULL);
        p.prefix_cache = k != 4;
        if (k == 3) {   /* room for the largest request alone: cached blocks must make way */
            int32_t most = 0;
            for (int i = 0; i < N_REQ; i++)
                if (kv_blocks_for(r[i].n_prompt + r[i].gp.max_tokens + 1) > most)
                    most = kv_blocks_for(r[i].n_prompt + r[i].gp.max_tokens + 1);
            p.kv_mem = kv_pool_block_bytes(&t.m.config) * (size_t)most;
        }
        char what[64];
        snprintf(what, sizeof what, "prefix cache %s, max-seqs %d", p.prefix_cache ? "on" : "off", seqs[k]);
        engine_totals totals;
        run_engine(&t, r, N_REQ, &p, what, &totals);   /* outputs, and every block back */
        const engine_totals *tot = &totals;
        printf("  %s: cached %lld of %lld prompt tokens, evictions %lld\n", what, (long long)tot->cached_prompt_tokens,
               (long long)tot->prompt_tokens, (long long)tot->prefix_evictions);
        int64_t want = 0;
        for (int i = 0; i < N_REQ; i++)
            want += r[i].n_prompt;
        assert_int_equal(tot->prompt_tokens, want);
        if (k == 4)
            assert_int_equal(tot->cached_prompt_tokens, 0);
        else if (seqs[k] == 1)
            assert_true(tot->cached_prompt_tokens >= KV_BLOCK * (N_REQ - 1));   /* each after the first: its first block at least */
        if (k == 3)
            assert_true(tot->prefix_evictions > 0);
    }
    free(r);
    tiny_close(&t);
}

/* Context drafts and chains in the engine: forced (ENGINE_SPEC) equals
 * gen_selfspec alone with the same draft source, greedy and sampled, at
 * every --max-seqs; auto equals gen_plain alone and does draft from context;
 * the per-source totals add up. */
static void test_batch_invariant_context(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    add_repeats(r, N_REQ);
    const int32_t kinds[] = {SPEC_DRAFT_CONTEXT, SPEC_DRAFT_CHAIN, SPEC_DRAFT_AUTO, SPEC_DRAFT_CONTEXT};
    int seqs[] = {1, 3, N_REQ};
    for (int ki = 0; ki < 4; ki++) {
        const skip_set *use = ki == 3 ? NULL : &ss;   /* context drafts without any skip set too */
        reference_draft(&t, r, N_REQ, use, kinds[ki]);
        for (int k = 0; k < 3; k++) {
            engine_params p;
            base_params(&p, seqs[k], ENGINE_SPEC, use);
            p.sp.draft = kinds[ki];
            char what[96];
            snprintf(what, sizeof what, "self-spec, draft %s%s, max-seqs %d", spec_draft_name(kinds[ki]),
                     use ? "" : " (no skip set)", seqs[k]);
            run_engine(&t, r, N_REQ, &p, what, NULL);
        }
    }
    /* auto: greedy sequences choose their source by the measured costs
     * (flat: speculation pays), sampled ones decode plainly */
    reference(&t, r, N_REQ, NULL);
    for (int ki = 0; ki < 3; ki++) {
        engine_params p;
        base_params(&p, 4, ENGINE_AUTO, &ss);
        p.sp.draft = kinds[ki];
        engine *e = run_flat(&t, r, N_REQ, &p);
        const engine_totals *tot = engine_get_totals(e);
        int64_t b = 0, d = 0, a = 0;
        for (int i = 0; i < SPEC_SRC_N; i++)
            b += tot->spec.src_blocks[i], d += tot->spec.src_drafted[i], a += tot->spec.src_accepted[i];
        assert_int_equal(b, tot->spec.num_drafts);
        assert_int_equal(d, tot->spec.num_draft_tokens);
        assert_int_equal(a, tot->spec.num_accepted_tokens);
        printf("  auto, draft %s: blocks layers %lld, context %lld, chain %lld; accepted %lld of %lld\n",
               spec_draft_name(kinds[ki]), (long long)tot->spec.src_blocks[0], (long long)tot->spec.src_blocks[1],
               (long long)tot->spec.src_blocks[2], (long long)a, (long long)d);
        assert_true(tot->spec.src_blocks[SPEC_SRC_CONTEXT] + tot->spec.src_blocks[SPEC_SRC_CHAIN] > 0);
        if (kinds[ki] == SPEC_DRAFT_CONTEXT)
            assert_int_equal(tot->spec.src_blocks[SPEC_SRC_LAYERS] + tot->spec.src_blocks[SPEC_SRC_CHAIN], 0);
        engine_free(e);
    }
    skipset_free(&ss);
    free(r);
    tiny_close(&t);
}

static void test_admission(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    char err[256];
    engine_params p;
    base_params(&p, 8, ENGINE_PLAIN, NULL);
    /* a pool of 6 blocks (96 positions): requests of up to 65 positions,
     * so only one or two fit at a time */
    p.kv_mem = 6 * kv_pool_block_bytes(&t.m.config);
    engine *e;
    assert_int_equal(engine_init(&e, &t.m, &p, err, sizeof err), 0);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 0);
    for (int i = 0; i < N_REQ; i++) {
        r[i].n_prompt = 20;
        r[i].gp.max_tokens = 44;
        r[i].gp.is_eog = NULL;
    }
    reference(&t, r, N_REQ, NULL);
    for (int i = 0; i < N_REQ; i++) {
        engine_callbacks cb = {.on_token = on_token, .on_done = on_done, .user = &r[i]};
        assert_int_equal(engine_submit(e, r[i].prompt, r[i].n_prompt, &r[i].gp, &cb, err, sizeof err), 0);
    }
    /* never fits: more than the context, more than the whole pool */
    gen_params big = r[0].gp;
    big.max_tokens = 120;
    engine_callbacks none = {0};
    assert_int_equal(engine_submit(e, r[0].prompt, 20, &big, &none, err, sizeof err), -1);
    assert_non_null(strstr(err, "context"));
    engine_params p2 = p;
    p2.ctx = 1000;
    engine *e2;
    assert_int_equal(engine_init(&e2, &t.m, &p2, err, sizeof err), 0);
    big.max_tokens = 200;
    assert_int_equal(engine_submit(e2, r[0].prompt, 20, &big, &none, err, sizeof err), -1);
    assert_non_null(strstr(err, "KV memory"));
    assert_int_equal(engine_submit(e2, r[0].prompt, 0, &r[0].gp, &none, err, sizeof err), -1);
    engine_free(e2);
    int max_live = 0;
    while (engine_pending(e) > 0) {
        assert_true(engine_step(e, err, sizeof err) >= 0);
        int32_t used, total;
        engine_kv_usage(e, &used, &total);
        assert_true(used <= total);
        max_live = engine_live(e) > max_live ? engine_live(e) : max_live;
    }
    assert_int_equal(max_live, 1);      /* 65 positions = 5 blocks: one at a time */
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(r[i].n_out, r[i].n_ref);
        assert_memory_equal(r[i].out, r[i].ref, (size_t)r[i].n_ref * sizeof(int32_t));
    }
    engine_free(e);
    free(r);
    tiny_close(&t);
}

static void test_policy(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    char err[256];
    engine_params p;
    base_params(&p, 16, ENGINE_AUTO, &ss);
    p.max_batch_tokens = 256;
    engine *e;
    assert_int_equal(engine_init(&e, &t.m, &p, err, sizeof err), 0);
    /* bandwidth-bound: a pass costs the same for 1..64 tokens; drafts 1/5 */
    for (int32_t T = 1; T <= 64; T++) {
        engine_cost_observe(e, 0, T, 10e-3);
        engine_cost_observe(e, 1, T, 2e-3);
    }
    assert_true(engine_policy_k(e, 1, 0.9f, 0, 0, 0) >= 2);   /* lonely, good drafts: speculate */
    assert_int_equal(engine_policy_k(e, 1, 0.05f, 0, 0, 0), 0); /* drafts that fail: do not */
    engine_free(e);
    /* compute-bound: each token costs the same */
    assert_int_equal(engine_init(&e, &t.m, &p, err, sizeof err), 0);
    for (int32_t T = 1; T <= 256; T++) {
        engine_cost_observe(e, 0, T, 1e-3 * T);
        engine_cost_observe(e, 1, T, 0.5e-3 * T);
    }
    assert_int_equal(engine_policy_k(e, 16, 0.9f, 0, 0, 0), 0);
    /* a prompt chunk in the pass does not make drafting look cheap: the
     * decode token is weighed against its own cost, not the chunk's */
    assert_int_equal(engine_policy_k(e, 1, 0.9f, 0, 0, 200), 0);
    engine_free(e);
    skipset_free(&ss);
    tiny_close(&t);
}

/* ---- a remote draft source (the pipeline's drafter, faked) ---- */

typedef struct {
    req *r;
    int n;
    uint64_t rng;
    int32_t last_pos[16], last_cur[16];   /* what verified() said, per slot; -1: nothing yet */
    int64_t proposed, calls, verified, accepted;
} fake_remote;

/* Propose the reference continuation of a request in this state (the
 * sequence is recognized by its prompt length and its last token), with a
 * wrong token now and then, or random tokens. */
static int32_t fake_propose(void *user, int32_t slot, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos,
                            float gamma, int32_t *toks)
{
    fake_remote *f = user;
    assert_true(slot >= 0 && slot < 16);
    assert_true(k_max >= 1 && pos + k_max <= end_pos + 1);
    assert_true(gamma >= 0.0f && gamma <= 1.0f);
    /* the state verified() reported is the one asked about, unless a new
     * request took the slot (its first block: right after its prompt) */
    int fresh = 0;
    for (int i = 0; i < f->n; i++)
        fresh |= pos == f->r[i].n_prompt && f->r[i].n_ref > 0 && cur == f->r[i].ref[0];
    if (f->last_pos[slot] >= 0 && !fresh) {
        assert_int_equal(pos, f->last_pos[slot]);
        assert_int_equal(cur, f->last_cur[slot]);
    }
    f->calls++;
    int32_t n = 1 + (int32_t)(tmodel_rng(&f->rng) % (uint64_t)k_max);
    const req *hit = NULL;
    int32_t j = 0;
    for (int i = 0; i < f->n && !hit; i++) {
        j = pos - f->r[i].n_prompt;
        if (j >= 0 && j + 1 < f->r[i].n_ref && f->r[i].ref[j] == cur && f->r[i].gp.sampling.temperature == 0.0f)
            hit = &f->r[i];
    }
    for (int32_t x = 0; x < n; x++)
        toks[x] = hit && j + 1 + x < hit->n_ref && tmodel_rng(&f->rng) % 5 ? hit->ref[j + 1 + x]
                                                                           : (int32_t)(tmodel_rng(&f->rng) % 256);
    f->proposed += n;
    return n;
}

static void fake_verified(void *user, int32_t slot, int32_t n, int32_t acc, int32_t pos, int32_t cur, int32_t k_next,
                          int32_t end_pos, float gamma)
{
    fake_remote *f = user;
    assert_true(acc >= 0 && acc <= n);
    assert_true(k_next >= 0 && (k_next == 0 || pos + k_next <= end_pos + 1));
    f->last_pos[slot] = pos;
    f->last_cur[slot] = cur;
    f->verified++;
    f->accepted += acc;
}

/* Drafts from a remote source (greedy requests; sampled ones decode
 * plainly): every output equals decoding alone, with the engine's own paged
 * KV or the caller's contiguous caches (the pipeline's shared ones). */
static void test_remote_source(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    reference(&t, r, N_REQ, NULL);
    int seqs[] = {1, 3, N_REQ};
    for (int own = 0; own < 2; own++)
        for (int k = 0; k < 3; k++) {
            char err[256];
            fake_remote f = {.r = r, .n = N_REQ, .rng = 5};
            for (int i = 0; i < 16; i++)
                f.last_pos[i] = -1;
            spec_remote rem = {fake_propose, fake_verified, &f};
            kv_cache kvs[N_REQ];
            engine_params p;
            base_params(&p, seqs[k], ENGINE_SPEC, NULL);
            p.remote = &rem;
            if (own) {
                for (int i = 0; i < seqs[k]; i++)
                    assert_int_equal(kv_init(&kvs[i], &t.m.config, p.ctx + 1, err, sizeof err), 0);
                p.slot_kv = kvs;
            }
            char what[64];
            snprintf(what, sizeof what, "remote source, %s KV, max-seqs %d", own ? "caller's" : "paged", seqs[k]);
            run_engine(&t, r, N_REQ, &p, what, NULL);
            assert_true(f.proposed > 0 && f.verified > 0 && f.accepted > 0);
            print_message("  %s: proposed %lld, accepted %lld\n", what, (long long)f.proposed, (long long)f.accepted);
            if (own)
                for (int i = 0; i < seqs[k]; i++)
                    kv_free(&kvs[i]);
        }
    free(r);
    tiny_close(&t);
}

/* ---- the backend interface ---- */

/* The CPU backend behind a wrapper that counts what the engine asks of it. */
typedef struct {
    model_backend b;
    cpu_backend cpu;
    int64_t opens, closes, forwards, argmax_only;
    int64_t samples, sampled_rows;   /* sample calls, rows drawn (temperature > 0) */
    int64_t drafts, tests, accepted; /* draft_take calls; test rows and their acceptances */
    int64_t ctx_tests;               /* test rows of context tokens */
    float *qs;                       /* (q_slots, V) the stand-in's q store */
    int32_t q_slots;
} counting_backend;

static int cnt_kv_open(model_backend *b, kv_cache *kv, int32_t cap, int scratch, char *err, size_t errlen)
{
    counting_backend *c = (counting_backend *)b;
    int r = c->cpu.b.kv_open(&c->cpu.b, kv, cap, scratch, err, errlen);
    c->opens += r == 0;
    return r;
}

static void cnt_kv_close(model_backend *b, kv_cache *kv)
{
    counting_backend *c = (counting_backend *)b;
    c->closes += kv->cap > 0;
    c->cpu.b.kv_close(&c->cpu.b, kv);
}

static int32_t cnt_kv_max(const model_backend *b)
{
    const counting_backend *c = (const counting_backend *)b;
    return c->cpu.b.kv_max(&c->cpu.b);
}

static void cnt_kv_usage(const model_backend *b, int32_t *used, int32_t *total)
{
    const counting_backend *c = (const counting_backend *)b;
    c->cpu.b.kv_usage(&c->cpu.b, used, total);
}

static int cnt_forward(model_backend *b, fwd_seq *seqs, int n, const layer_mask *mask, const qmat *head,
                       float *logits, int32_t *argmax, char *err, size_t errlen)
{
    counting_backend *c = (counting_backend *)b;
    c->forwards++;
    c->argmax_only += logits == NULL;
    return c->cpu.b.forward(&c->cpu.b, seqs, n, mask, head, logits, argmax, err, errlen);
}

/* A stand-in for a device that samples: the rule of kernels/cuda_sample.h
 * (samp_reference) over the logits the CPU backend kept from the last
 * forward (argmax only: its own rows). */
static int cnt_sample(model_backend *b, const samp_req *rq, int32_t n_rows, int32_t *ids, uint8_t *accepted,
                      char *err, size_t errlen)
{
    counting_backend *c = (counting_backend *)b;
    int32_t V = c->cpu.m->config.vocab_size;
    assert_true((size_t)n_rows * V <= c->cpu.cap_rows);
    c->samples++;
    for (int32_t i = 0; i < n_rows; i++) {
        c->sampled_rows += rq[i].temperature > 0.0f;
        const float *qrow = NULL;
        if (rq[i].kind == SAMP_TEST) {
            assert_true(rq[i].q_slot >= 0 && rq[i].q_slot < c->q_slots);
            qrow = c->qs + (size_t)rq[i].q_slot * V;
        }
        int a;
        ids[i] = samp_reference_row(c->cpu.rows + (size_t)i * V, V, &rq[i], ids[i], qrow, &a);
        if (rq[i].kind != SAMP_DRAW) {
            assert_non_null(accepted);
            accepted[i] = (uint8_t)a;
            c->tests++;
            c->accepted += a;
            c->ctx_tests += rq[i].kind == SAMP_TEST_CTX;
        }
    }
    return 0;
}

/* ... and one that takes draft tokens: samp_draft_reference over the
 * CPU backend's kept rows, q rows into the stand-in's store. */
static int cnt_draft_take(model_backend *b, const samp_req *rq, const int32_t *slot, int32_t n_rows, int32_t *ids,
                          float *conf, char *err, size_t errlen)
{
    counting_backend *c = (counting_backend *)b;
    int32_t V = c->cpu.m->config.vocab_size;
    assert_true((size_t)n_rows * V <= c->cpu.cap_rows);
    c->drafts++;
    for (int32_t i = 0; i < n_rows; i++) {
        float *qrow = NULL;
        if (rq[i].temperature > 0.0f) {
            if (slot[i] >= c->q_slots) {
                int32_t n = slot[i] + 1;
                c->qs = realloc(c->qs, (size_t)n * V * sizeof(float));
                c->q_slots = n;
            }
            qrow = c->qs + (size_t)slot[i] * V;
        }
        ids[i] = samp_draft_reference(c->cpu.rows + (size_t)i * V, V, &rq[i], ids[i], qrow, &conf[i]);
    }
    return 0;
}

/* ... and one that computes log-probabilities: lp_reference_row over the
 * CPU backend's kept rows. */
static int cnt_logprobs(model_backend *b, const int32_t *cand, int32_t n_rows, int32_t n_top, lp_row *out, char *err,
                        size_t errlen)
{
    counting_backend *c = (counting_backend *)b;
    int32_t V = c->cpu.m->config.vocab_size;
    assert_true((size_t)n_rows * V <= c->cpu.cap_rows);
    for (int32_t i = 0; i < n_rows; i++)
        lp_reference_row(c->cpu.rows + (size_t)i * V, V, n_top, cand + 2 * i, &out[i]);
    return 0;
}

/* A counting backend over the CPU backend, with its own pool and forward
 * state sized for p; sampling: also a stand-in device sampler (cnt_sample),
 * and with sampling 2 one that takes draft tokens too (cnt_draft_take; no
 * pruned head, as a device). p->backend is set to it. */
static void counting_open(counting_backend *cb, tiny *t, engine_params *p, kv_pool *pool, fwd_state *fs,
                          int sampling)
{
    char err[256];
    assert_int_equal(kv_pool_init(pool, &t->m.config, p->kv_mem, err, sizeof err), 0);
    fwd_state_init(fs, &t->m.config, engine_pass_tokens(p), p->ctx + SPEC_MAX_DRAFT + 2);
    *cb = (counting_backend){.b = {.name = sampling ? "sampling" : "counting", .pruned_head = sampling < 2,
                                   .kv_open = cnt_kv_open, .kv_close = cnt_kv_close, .kv_max = cnt_kv_max,
                                   .kv_usage = cnt_kv_usage, .forward = cnt_forward,
                                   .sample = sampling ? cnt_sample : NULL,
                                   .draft_take = sampling == 2 ? cnt_draft_take : NULL}};
    backend_cpu_init(&cb->cpu, &t->m, fs, pool);
    p->backend = &cb->b;
}

/* Sampling on the device (a backend with .sample): the engine hands it the
 * sampled rows of plain steps and first tokens and takes only ids, never
 * logits; each draw takes its sequence's own uniforms, so a request's
 * tokens are the same alone and in batches of 3 and 7, and greedy requests
 * keep plain decoding's tokens. */
/* One request's log-probabilities (on_logprob). */
typedef struct {
    req *r;
    sampler_logprob lp[MAX_OUT];
    int n;
} lp_rec;

static int lp_on_token(void *user, int32_t tok)
{
    lp_rec *l = user;
    l->r->out[l->r->n_out++] = tok;
    return 0;
}

static void lp_on_done(void *user, const engine_result *res)
{
    lp_rec *l = user;
    l->r->done = 1;
    l->r->res = *res;
}

static void lp_on_logprob(void *user, const sampler_logprob *lp)
{
    lp_rec *l = user;
    assert_true(l->n < MAX_OUT);
    l->lp[l->n++] = *lp;
}

/* Run r[0..n) with log-probabilities asked (top 5) on p; into l. */
static void run_logprobs(tiny *t, req *r, lp_rec *l, int n, engine_params *p)
{
    char err[256];
    engine *e;
    if (engine_init(&e, &t->m, p, err, sizeof err) != 0)
        fail_msg("engine_init: %s", err);
    for (int i = 0; i < n; i++) {
        r[i].n_out = 0;
        r[i].done = 0;
        r[i].gp.want_logprobs = 1;
        r[i].gp.top_logprobs = 5;
        l[i] = (lp_rec){.r = &r[i]};
        engine_callbacks cb = {.on_token = lp_on_token, .on_done = lp_on_done, .on_logprob = lp_on_logprob,
                               .user = &l[i]};
        if (engine_submit(e, r[i].prompt, r[i].n_prompt, &r[i].gp, &cb, err, sizeof err) != 0)
            fail_msg("submit %d: %s", i, err);
    }
    while (engine_pending(e) > 0)
        assert_true(engine_step(e, err, sizeof err) >= 0);
    engine_free(e);
}

/* Log-probabilities on the device (a backend with .logprobs): no logits
 * row comes back, and every emitted token's log-probability and top 5 are
 * the host's (sampler_logprobs over the CPU engine's rows: the same ids,
 * values within float rounding), for greedy and sampled requests, plain
 * and speculative (layer, context and chained drafts: the emitted token is
 * a row's draft token or its chosen one), at 1 and 4 sequences. */
static void test_device_logprobs(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r), *d = calloc(N_REQ, sizeof *d);
    lp_rec *lh = calloc(N_REQ, sizeof *lh), *ld = calloc(N_REQ, sizeof *ld);
    make_requests(r, N_REQ, 1);
    add_repeats(r, N_REQ);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    struct { engine_mode mode; const skip_set *ss; int32_t draft; int seqs; } cfg[] = {
        {ENGINE_PLAIN, NULL, SPEC_DRAFT_LAYERS, 1}, {ENGINE_PLAIN, NULL, SPEC_DRAFT_LAYERS, 4},
        {ENGINE_SPEC, &ss, SPEC_DRAFT_CHAIN, 4}, {ENGINE_SPEC, NULL, SPEC_DRAFT_CONTEXT, 1}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        memcpy(d, r, N_REQ * sizeof *r);
        engine_params p;
        base_params(&p, cfg[c].seqs, cfg[c].mode, cfg[c].ss);
        p.sp.draft = cfg[c].draft;
        run_logprobs(&t, r, lh, N_REQ, &p);   /* the CPU engine: rows on the host */
        engine_params pd;
        base_params(&pd, cfg[c].seqs, cfg[c].mode, cfg[c].ss);
        pd.sp.draft = cfg[c].draft;
        kv_pool pool;
        fwd_state fs;
        counting_backend cb;
        counting_open(&cb, &t, &pd, &pool, &fs, 2);
        cb.b.pruned_head = 0;
        cb.b.logprobs = cnt_logprobs;
        run_logprobs(&t, d, ld, N_REQ, &pd);
        assert_int_equal(cb.argmax_only, cb.forwards);   /* no logits row ever came back */
        for (int i = 0; i < N_REQ; i++) {
            if (r[i].gp.sampling.temperature == 0.0f) {   /* greedy: the same tokens */
                assert_int_equal(d[i].n_out, r[i].n_out);
                assert_memory_equal(d[i].out, r[i].out, (size_t)r[i].n_out * sizeof(int32_t));
            }
            assert_int_equal(ld[i].n, d[i].n_out);
            for (int k = 0; k < ld[i].n; k++) {   /* the device's numbers = the host rule on the same row */
                const sampler_logprob *a = &ld[i].lp[k];
                assert_int_equal(a->token, d[i].out[k]);
                assert_true(a->logprob <= 1e-5f && a->n_top == 5);
                if (r[i].gp.sampling.temperature == 0.0f) {
                    const sampler_logprob *h = &lh[i].lp[k];
                    assert_int_equal(a->token, h->token);
                    if (fabsf(a->logprob - h->logprob) > 1e-4f)
                        fail_msg("config %zu request %d token %d: device %f host %f", c, i, k, a->logprob,
                                 h->logprob);
                    assert_memory_equal(a->top_ids, h->top_ids, 5 * sizeof(int32_t));
                }
            }
        }
        backend_cpu_free(&cb.cpu);
        free(cb.qs);
        fwd_state_free(&fs);
        kv_pool_free(&pool);
    }
    skipset_free(&ss);
    free(r);
    free(d);
    free(lh);
    free(ld);
    tiny_close(&t);
}

static void test_device_sampling(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    reference(&t, r, N_REQ, NULL);   /* greedy requests: plain's tokens */
    int n_sampled = 0;
    for (int i = 0; i < N_REQ; i++)
        if (r[i].gp.sampling.temperature > 0.0f) {   /* hot enough that draws differ from the argmax */
            r[i].gp.sampling = (sampler_params){.temperature = 2.0f, .top_k = i % 4 == 1 ? 24 : 0,
                                                .top_p = 0.98f, .seed = 500 + (uint64_t)i};
            r[i].n_ref = -1;   /* the run alone sets it */
            n_sampled++;
        }
    assert_true(n_sampled >= 3);
    int max_seqs[] = {1, 3, 7};
    for (int k = 0; k < 3; k++) {
        engine_params p;
        base_params(&p, max_seqs[k], ENGINE_AUTO, NULL);
        kv_pool pool;
        fwd_state fs;
        counting_backend cb;
        counting_open(&cb, &t, &p, &pool, &fs, 1);
        run_engine(&t, r, N_REQ, &p, "device sampling", NULL);
        assert_int_equal(cb.argmax_only, cb.forwards);   /* no logits ever came back */
        assert_true(cb.samples > 0 && cb.sampled_rows > 0);
        backend_cpu_free(&cb.cpu);
        free(cb.qs);
        fwd_state_free(&fs);
        kv_pool_free(&pool);
    }
    /* the draws are draws: a sampled request does not follow greedy decoding */
    int differs = 0;
    for (int i = 0; i < N_REQ; i++)
        if (r[i].gp.sampling.temperature > 0.0f) {
            req g = r[i];
            g.gp.sampling = (sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
            reference(&t, &g, 1, NULL);
            differs |= g.n_ref != r[i].n_out || memcmp(g.ref, r[i].out, (size_t)g.n_ref * sizeof(int32_t)) != 0;
        }
    assert_true(differs);
    free(r);
    tiny_close(&t);
}

/* Speculative sampling on the device (a backend with .draft_take and
 * .sample): sampled requests draft from the skip set and from context on
 * the device (their q stays there), the verification's test rows decide
 * acceptance there, and no pass ever returns logits; each request's tokens
 * are the same alone and in batches of 3 and 7 (every decision takes only
 * its own row and its own generator's uniforms), greedy requests keep
 * plain decoding's tokens, and drafts are both accepted and rejected. That
 * the rule keeps the target distribution: test_cuda_order's
 * test_spec_rule. */
static void test_device_spec_sampling(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    add_repeats(r, N_REQ);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    reference(&t, r, N_REQ, NULL);   /* greedy requests: plain's tokens */
    for (int i = 0; i < N_REQ; i++)
        if (r[i].gp.sampling.temperature > 0.0f) {
            r[i].gp.sampling = (sampler_params){.temperature = 0.7f, .top_k = i % 4 == 1 ? 24 : 0,
                                                .top_p = 0.95f, .seed = 900 + (uint64_t)i};
            r[i].n_ref = -1;   /* the run alone sets it */
        }
    int max_seqs[] = {1, 3, 7};
    spec_draft_kind kinds[] = {SPEC_DRAFT_LAYERS, SPEC_DRAFT_CHAIN, SPEC_DRAFT_CONTEXT};
    for (int d = 0; d < 3; d++) {
        for (int i = 0; i < N_REQ; i++)   /* each draft source makes its own draws */
            if (r[i].gp.sampling.temperature > 0.0f)
                r[i].n_ref = -1;
        for (int k = 0; k < 3; k++) {
            engine_params p;
            base_params(&p, max_seqs[k], ENGINE_SPEC, &ss);
            p.sp.draft = kinds[d];
            kv_pool pool;
            fwd_state fs;
            counting_backend cb;
            counting_open(&cb, &t, &p, &pool, &fs, 2);
            run_engine(&t, r, N_REQ, &p, "device speculative sampling", NULL);
            assert_int_equal(cb.argmax_only, cb.forwards);   /* no logits ever came back */
            assert_true(cb.tests > 0 && cb.accepted > 0 && cb.accepted < cb.tests);
            assert_true(kinds[d] == SPEC_DRAFT_CONTEXT ? cb.drafts == 0 : cb.drafts > 0);
            assert_true(kinds[d] == SPEC_DRAFT_LAYERS ? cb.ctx_tests == 0 : cb.ctx_tests > 0);
            print_message("  %s drafts, max-seqs %d: %lld draft passes, %lld test rows (%lld of context "
                          "tokens), %lld accepted\n", spec_draft_name(kinds[d]), max_seqs[k], (long long)cb.drafts,
                          (long long)cb.tests, (long long)cb.ctx_tests, (long long)cb.accepted);
            backend_cpu_free(&cb.cpu);
            free(cb.qs);
            fwd_state_free(&fs);
            kv_pool_free(&pool);
        }
    }
    skipset_free(&ss);
    free(r);
    tiny_close(&t);
}

/* An engine over a backend the caller opened decodes exactly as over its
 * own (every output equal to decoding alone), opens and closes every cache
 * it takes, and runs every pass through the backend; the CUDA backend
 * fails cleanly where there is no GPU. */
static void test_backend_interface(void **state)
{
    (void)state;
    tiny t;
    tiny_open(&t);
    req *r = calloc(N_REQ, sizeof *r);
    make_requests(r, N_REQ, 1);
    skip_set ss;
    half_skip(&ss, t.m.config.n_layers);
    reference(&t, r, N_REQ, &ss);
    engine_mode modes[] = {ENGINE_SPEC, ENGINE_AUTO};
    for (int mi = 0; mi < 2; mi++) {
        if (modes[mi] == ENGINE_AUTO) {   /* greedy requests only, outputs are plain's */
            make_requests(r, N_REQ, 0);
            reference(&t, r, N_REQ, NULL);
        }
        engine_params p;
        base_params(&p, 3, modes[mi], &ss);
        kv_pool pool;
        fwd_state fs;
        counting_backend cb;
        counting_open(&cb, &t, &p, &pool, &fs, 0);
        run_engine(&t, r, N_REQ, &p, modes[mi] == ENGINE_SPEC ? "backend, self-spec" : "backend, auto", NULL);
        assert_true(cb.forwards > 0);
        if (modes[mi] == ENGINE_AUTO)   /* passes of greedy sequences ask for ids, not logits */
            assert_true(cb.argmax_only > 0);
        backend_cpu_free(&cb.cpu);
        free(cb.qs);
        assert_true(cb.opens >= N_REQ);
        assert_int_equal(cb.opens, cb.closes);
        assert_int_equal(pool.n_free, pool.n_blocks);
        fwd_state_free(&fs);
        kv_pool_free(&pool);
    }
    char err[256] = "";
    model_backend *g = backend_cuda_open(&t.m, 0, 64, 256, (size_t)1 << 20, err, sizeof err);
    if (g)
        backend_cuda_close(g);   /* a machine with a GPU */
    else
        assert_true(err[0] != 0);
    skipset_free(&ss);
    free(r);
    tiny_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged_kv_same_logits),
        cmocka_unit_test(test_batch_invariant_plain),
        cmocka_unit_test(test_batch_invariant_spec),
        cmocka_unit_test(test_batch_invariant_context),
        cmocka_unit_test(test_job_index),
        cmocka_unit_test(test_trees),
        cmocka_unit_test(test_prefix_cache),
        cmocka_unit_test(test_admission),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_remote_source),
        cmocka_unit_test(test_backend_interface),
        cmocka_unit_test(test_device_sampling),
        cmocka_unit_test(test_device_logprobs),
        cmocka_unit_test(test_device_spec_sampling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
