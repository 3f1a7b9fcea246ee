/*
 * engine.c - the continuous-batching engine (see engine.h): set-up,
 * admission, one full forward pass per step, acceptance, emission; the
 * cost model is engine_cost.c, the step's plan and drafting engine_plan.c.
 */
#include "engine/engine_impl.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "util/util.h"

int engine_parse_mode(const char *s, engine_mode *out)
{
    if (!strcmp(s, "auto"))
        *out = ENGINE_AUTO;
    else if (!strcmp(s, "plain"))
        *out = ENGINE_PLAIN;
    else if (!strcmp(s, "self-spec"))
        *out = ENGINE_SPEC;
    else
        return -1;
    return 0;
}

const char *engine_mode_name(engine_mode m)
{
    return m == ENGINE_PLAIN ? "plain" : m == ENGINE_SPEC ? "self-spec" : "auto";
}

void engine_params_default(engine_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_seqs = 32;
    p->max_batch_tokens = 256;
    p->kv_mem = (size_t)512 << 20;
    p->ctx = 0;                       /* the model's, at most ENGINE_DEFAULT_CTX */
    p->mode = ENGINE_AUTO;
    spec_params_default(&p->sp);
    p->sp.draft = SPEC_DRAFT_AUTO;    /* every source, chosen per step by cost */
    p->job_index_tokens = 1 << 17;
    p->forced_drafts = 1;
    p->trees = 1;
    p->prefix_cache = 1;
    p->calibrate = 1;
}

void engine_params_resolve(engine_params *p, const model_config *c)
{
    if (p->ctx <= 0)
        p->ctx = c->ctx_train > 0 && c->ctx_train < ENGINE_DEFAULT_CTX ? c->ctx_train : ENGINE_DEFAULT_CTX;
}

/* ---- set-up ---- */

int32_t engine_pass_tokens(const engine_params *p)
{
    /* a pass holds every live sequence's block and a verification needs
     * k + 1 rows, so never fewer than max_seqs or max_draft + 1 tokens */
    int32_t need = p->max_seqs > p->sp.max_draft + 1 ? p->max_seqs : p->sp.max_draft + 1;
    /* forced speculation: every sequence's full block in one pass, so that a
     * sequence's draft length never depends on what else is in the batch */
    if ((p->mode == ENGINE_SPEC && (p->ss || p->sp.draft != SPEC_DRAFT_LAYERS)) || p->remote)
        need = p->max_seqs * (p->sp.max_draft + 1);
    return p->max_batch_tokens > need ? p->max_batch_tokens : need;
}

int engine_init(engine **out, const model *m, const engine_params *params, char *err, size_t errlen)
{
    *out = NULL;
    engine_params resolved = *params;
    engine_params_resolve(&resolved, &m->config);
    const engine_params *p = &resolved;
    if (p->max_seqs < 1 || p->max_seqs > 4096)
        return util_err(err, errlen, "max-seqs must be in [1, 4096], got %d", p->max_seqs);
    if (p->max_batch_tokens < 1 || p->max_batch_tokens > 8192)
        return util_err(err, errlen, "max-batch-tokens must be in [1, 8192], got %d", p->max_batch_tokens);
    if (p->ctx < 2)
        return util_err(err, errlen, "context must be at least 2 tokens");
    if (spec_params_check(&p->sp, err, errlen) != 0)
        return -1;
    for (int32_t i = 0; p->slot_kv && i < p->max_seqs; i++)
        if (p->slot_kv[i].cap != p->slot_kv[0].cap || p->slot_kv[i].pool || p->slot_kv[i].cap < 2)
            return util_err(err, errlen, "the sequences' own KV caches must be contiguous, of one capacity");
    engine *e = callocCheck(1, sizeof *e);
    e->m = m;
    e->p = *p;
    if (p->remote)   /* the remote source drafts by skipping layers; nothing is drafted here */
        e->p.sp.draft = SPEC_DRAFT_LAYERS;
    if (!p->slot_kv && !p->backend && kv_pool_init(&e->pool, &m->config, p->kv_mem, err, errlen) != 0) {
        free(e);
        return -1;
    }
    e->p.max_batch_tokens = engine_pass_tokens(p);
    fwd_state_init(&e->fs, &m->config, e->p.max_batch_tokens, p->ctx + SPEC_MAX_DRAFT + 2);
    e->be = p->backend ? p->backend : backend_cpu_init(&e->cpu, m, &e->fs, &e->pool);
    if (p->prefix_cache && !p->backend && !p->slot_kv) {
        prefix_init(&e->pc, &e->pool);
        e->has_pc = 1;
    }
    e->seqs = callocCheck((size_t)p->max_seqs, sizeof(eseq));
    e->batch = callocCheck((size_t)p->max_seqs, sizeof(fwd_seq));
    e->bseq = callocCheck((size_t)p->max_seqs, sizeof(int32_t));
    e->logits = mallocCheck((size_t)e->p.max_batch_tokens * m->config.vocab_size * sizeof(float));
    e->am = mallocCheck((size_t)e->p.max_batch_tokens * sizeof(int32_t));
    e->srq = mallocCheck((size_t)e->p.max_batch_tokens * sizeof(samp_req));
    e->acc = mallocCheck((size_t)e->p.max_batch_tokens);
    e->dcand = mallocCheck((size_t)e->p.max_batch_tokens * 2 * sizeof(int32_t));
    e->dlp = mallocCheck((size_t)e->p.max_batch_tokens * sizeof(lp_row));
    e->can_layers = p->mode != ENGINE_PLAIN && p->ss != NULL && p->sp.draft != SPEC_DRAFT_CONTEXT && !p->remote;
    e->can_ctx = p->mode != ENGINE_PLAIN && p->sp.draft != SPEC_DRAFT_LAYERS && !p->remote;
    e->can_draft = e->can_layers || e->can_ctx || p->remote;
    e->can_tree = e->can_ctx && p->trees && e->be->kv_copy != NULL;
    if (e->can_ctx && p->job_index_tokens > 0) {
        /* longer matches than a sequence's own (NGRAM_MAX_N): across requests a
         * short n-gram's most recent occurrence is often in unrelated text */
        jobindex_init(&e->jix, p->sp.ngram_min, NGRAM_MAX_N, p->job_index_tokens < 64 ? 64 : p->job_index_tokens);
        e->has_jix = 1;
    }
    spec_nominal_costs(&p->sp, p->ss, &e->nominal);
    e->dwidth = m->config.vocab_size;
    if (e->can_layers) {
        skipset_mask(p->ss, &e->mask);
        if (p->ss->n_head_tokens > 0 && e->be->pruned_head) {
            if (qmat_gather(&m->w.output, p->ss->head_tokens, p->ss->n_head_tokens, &e->head) != 0) {
                engine_free(e);
                return util_err(err, errlen, "cannot build a draft head of %d tokens", p->ss->n_head_tokens);
            }
            e->head_tokens = p->ss->head_tokens;
            e->dwidth = p->ss->n_head_tokens;
        }
    }
    e->dlogits = mallocCheck((size_t)p->max_seqs * e->dwidth * sizeof(float));
    /* a device that takes draft tokens itself keeps the draft rows there
     * (full-width drafts only: no device has a pruned head) */
    e->dev_draft = e->be->draft_take && e->be->sample && !e->head.rows;
    e->drq = mallocCheck((size_t)p->max_seqs * sizeof(samp_req));
    e->dslot = mallocCheck((size_t)p->max_seqs * sizeof(int32_t));
    e->dids = mallocCheck((size_t)p->max_seqs * sizeof(int32_t));
    e->dconf = mallocCheck((size_t)p->max_seqs * sizeof(float));
    if (e->p.mode == ENGINE_AUTO && p->calibrate && calibrate(e, err, errlen) != 0) {
        engine_free(e);
        return -1;
    }
    *out = e;
    return 0;
}

static void seq_release(engine *e, eseq *s)
{
    free(s->prompt);
    sampler_free(&s->smp);
    if (!s->borrowed_kv)
        e->be->kv_close(e->be, &s->kv);
    e->be->kv_close(e->be, &s->scratch);
    free(s->q);
    if (s->has_ng)
        ngram_free(&s->ng);
    free(s->gst);
    free(s->pen_count);
    free(s->pen_ids);
    free(s->eog_ids);
    memset(s, 0, sizeof *s);
}

void engine_free(engine *e)
{
    if (!e)
        return;
    for (int32_t i = 0; i < e->p.max_seqs && e->seqs; i++)
        if (e->seqs[i].state != SEQ_FREE)
            seq_release(e, &e->seqs[i]);
    for (int32_t i = 0; i < e->n_wait; i++)
        free(e->wait[(e->head_wait + i) % e->cap_wait].prompt);
    free(e->wait);
    if (e->can_layers)
        skipset_mask_free(&e->mask);
    if (e->head.rows)
        qmat_free_owned(&e->head);
    free(e->dlogits);
    free(e->logits);
    free(e->graw);
    gram_scratch_free(e->gsc);
    gram_vocab_free(e->gv);
    free(e->am);
    free(e->srq);
    free(e->acc);
    free(e->dcand);
    free(e->dlp);
    free(e->drq);
    free(e->dslot);
    free(e->dids);
    free(e->dconf);
    if (e->has_pc)
        prefix_free(&e->pc);
    backend_cpu_free(&e->cpu);
    free(e->batch);
    free(e->bseq);
    free(e->seqs);
    fwd_state_free(&e->fs);
    kv_pool_free(&e->pool);
    if (e->has_jix)
        jobindex_free(&e->jix);
    free(e);
}

/* KV positions a request reserves: its prompt, its tokens, and the one
 * slot past the last token that a verification block may touch. */
static int32_t seq_cap(int32_t n_prompt, int32_t max_tokens)
{
    return n_prompt + max_tokens + 1;
}

int engine_submit(engine *e, const int32_t *prompt, int32_t n_prompt, const gen_params *gp,
                  const engine_callbacks *cb, char *err, size_t errlen)
{
    if (n_prompt <= 0)
        return util_err(err, errlen, "the prompt is empty");
    if (gp->max_tokens < 1)
        return util_err(err, errlen, "max_tokens must be at least 1, got %d", gp->max_tokens);
    if ((int64_t)n_prompt + gp->max_tokens > e->p.ctx)
        return util_err(err, errlen, "prompt (%d tokens) + max_tokens (%d) exceed the context of %d tokens",
                        n_prompt, gp->max_tokens, e->p.ctx);
    if (e->p.slot_kv && seq_cap(n_prompt, gp->max_tokens) > e->p.slot_kv[0].cap)
        return util_err(err, errlen, "prompt (%d tokens) + max_tokens (%d) need more positions than a sequence's "
                        "KV cache holds (%d)", n_prompt, gp->max_tokens, e->p.slot_kv[0].cap - 1);
    if (!e->p.slot_kv && seq_cap(n_prompt, gp->max_tokens) > e->be->kv_max(e->be))
        return util_err(err, errlen, "prompt (%d tokens) + max_tokens (%d) need more KV memory than the whole "
                        "pool holds (%d positions); raise --kv-mem", n_prompt, gp->max_tokens,
                        e->be->kv_max(e->be));
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->m->config.vocab_size)
            return util_err(err, errlen, "token id %d out of range", prompt[i]);
    if (sampler_params_check(&gp->sampling, err, errlen) != 0)
        return -1;
    if (gp->gram && gram_vocab_size(gp->gram->gv) != e->m->config.vocab_size)
        return util_err(err, errlen, "the constraint's vocabulary is not the model's");
    if (!(fabsf(gp->presence_penalty) <= 2.0f) || !(fabsf(gp->frequency_penalty) <= 2.0f))
        return util_err(err, errlen, "presence_penalty and frequency_penalty must be in [-2, 2]");
    if (gp->min_tokens < 0 || gp->min_tokens > gp->max_tokens)
        return util_err(err, errlen, "min_tokens must be in [0, max_tokens], got %d", gp->min_tokens);
    for (int32_t k = 0; k < gp->n_bias; k++) {
        if (gp->bias_ids[k] < 0 || gp->bias_ids[k] >= e->m->config.vocab_size)
            return util_err(err, errlen, "logit_bias: token id %d is not in the vocabulary (%d tokens)",
                            gp->bias_ids[k], e->m->config.vocab_size);
        if (!(fabsf(gp->bias_vals[k]) <= 100.0f))
            return util_err(err, errlen, "logit_bias values must be in [-100, 100]");
    }
    if (e->n_wait == e->cap_wait) {   /* grow the ring, keeping FIFO order */
        int32_t nc = e->cap_wait ? 2 * e->cap_wait : 64;
        ewait *nw = mallocCheck((size_t)nc * sizeof *nw);
        for (int32_t i = 0; i < e->n_wait; i++)
            nw[i] = e->wait[(e->head_wait + i) % e->cap_wait];
        free(e->wait);
        e->wait = nw;
        e->cap_wait = nc;
        e->head_wait = 0;
    }
    ewait *w = &e->wait[(e->head_wait + e->n_wait++) % e->cap_wait];
    w->prompt = mallocCheck((size_t)n_prompt * sizeof(int32_t));
    memcpy(w->prompt, prompt, (size_t)n_prompt * sizeof(int32_t));
    w->n_prompt = n_prompt;
    w->gp = *gp;
    w->cb = *cb;
    w->t_submit = util_now();
    return 0;
}

const gram_vocab *engine_gram_vocab(engine *e, const tokenizer *tok, char *err, size_t errlen)
{
    if (e->gv && e->gv_tok != tok) {
        util_err(err, errlen, "engine_gram_vocab: another tokenizer than the first one");
        return NULL;
    }
    if (!e->gv) {
        if (tokenizer_vocab_size(tok) != e->m->config.vocab_size) {
            util_err(err, errlen, "the tokenizer has %d tokens, the model %d", tokenizer_vocab_size(tok),
                     e->m->config.vocab_size);
            return NULL;
        }
        if (gram_vocab_build(&e->gv, tok, err, errlen) != 0)
            return NULL;
        e->gv_tok = tok;
    }
    return e->gv;
}

int engine_pending(const engine *e) { return e->n_live + e->n_wait; }
int engine_live(const engine *e) { return e->n_live; }
int engine_waiting(const engine *e) { return e->n_wait; }
const engine_totals *engine_get_totals(const engine *e) { return &e->tot; }

void engine_kv_usage(const engine *e, int32_t *used, int32_t *total)
{
    e->be->kv_usage(e->be, used, total);
    if (e->has_pc)   /* blocks only the prefix cache holds are free on demand */
        *used -= prefix_idle_blocks(&e->pc);
}

/* A paged cache of cap positions for a prompt, its first full blocks taken
 * from the prefix cache where they are there (at least the last prompt
 * token is computed: its logits row chooses the first token), idle cached
 * blocks given back while the pool lacks room. Returns the positions it
 * starts with (>= 0), or -1 when the pool has no room now (nothing taken). */
static int32_t open_with_prefix(engine *e, kv_cache *kv, int32_t cap, const int32_t *prompt, int32_t n_prompt)
{
    int32_t n_blocks = kv_blocks_for(cap), shared[ENGINE_MAX_PREFIX_BLOCKS];
    int32_t want = (n_prompt - 1) / KV_BLOCK;
    if (want > ENGINE_MAX_PREFIX_BLOCKS)
        want = ENGINE_MAX_PREFIX_BLOCKS;
    int32_t got = prefix_match(&e->pc, prompt, want, shared);
    for (int32_t i = 0; i < got; i++)   /* ours while the pool makes room */
        kv_block_hold(&e->pool, shared[i]);
    while (e->pool.n_free < n_blocks - got && prefix_evict(&e->pc))
        e->tot.prefix_evictions++;
    int rc = kv_init_paged_shared(kv, &e->pool, cap, shared, got);
    for (int32_t i = 0; i < got; i++)
        kv_block_drop(&e->pool, shared[i]);
    return rc == 0 ? got * KV_BLOCK : -1;
}

/* ---- one step ---- */

/* Admit waiting requests, oldest first, while a slot and their KV are free. */
static int admit(engine *e, char *err, size_t errlen)
{
    while (e->n_wait > 0 && e->n_live < e->p.max_seqs) {
        ewait *w = &e->wait[e->head_wait];
        int32_t slot = 0;
        while (e->seqs[slot].state != SEQ_FREE)
            slot++;
        assert(slot < e->p.max_seqs);
        eseq *s = &e->seqs[slot];
        int32_t cached = 0;   /* prompt positions the prefix cache holds */
        if (e->p.slot_kv) {
            s->kv = e->p.slot_kv[slot];
            s->kv.len = 0;
            s->borrowed_kv = 1;
        } else if (e->has_pc) {
            cached = open_with_prefix(e, &s->kv, seq_cap(w->n_prompt, w->gp.max_tokens), w->prompt, w->n_prompt);
            if (cached < 0)
                break;   /* wait for a running sequence to return its KV */
        } else {
            int o = e->be->kv_open(e->be, &s->kv, seq_cap(w->n_prompt, w->gp.max_tokens), 0, err, errlen);
            if (o < 0)
                return -1;
            if (o > 0)
                break;   /* wait for a running sequence to return its KV */
        }
        if (sampler_init(&s->smp, &w->gp.sampling, e->m->config.vocab_size, err, errlen) != 0) {
            seq_release(e, s);
            return -1;
        }
        int greedy = w->gp.sampling.temperature == 0.0f;
        s->spec_mode = !e->can_draft ? 0 : e->p.remote ? 2 * greedy : e->p.mode == ENGINE_SPEC ? 2 : greedy ? 1 : 0;
        s->proc = w->gp.gram || gen_has_processors(&w->gp);
        if (s->proc && !greedy)   /* processed rows, sampled: drafts are forced text only (proc_choose) */
            s->spec_mode = 0;
        if (w->gp.gram) {
            s->gst = mallocCheck(sizeof *s->gst);
            js_start(w->gp.gram->js, s->gst);
        }
        if (w->gp.presence_penalty != 0.0f || w->gp.frequency_penalty != 0.0f) {
            s->pen_count = callocCheck((size_t)e->m->config.vocab_size, sizeof(int32_t));
            s->pen_ids = mallocCheck((size_t)e->m->config.vocab_size * sizeof(int32_t));
        }
        if (w->gp.min_tokens > 0 && w->gp.is_eog) {
            for (int32_t t = 0; t < e->m->config.vocab_size; t++)
                if (w->gp.is_eog(w->gp.eog_ctx, t)) {
                    s->eog_ids = reallocCheck(s->eog_ids, (size_t)(s->n_eog + 1) * sizeof(int32_t));
                    s->eog_ids[s->n_eog++] = t;
                }
        }
        if (s->spec_mode && e->can_layers) {
            if (e->be->kv_open(e->be, &s->scratch, e->p.sp.max_draft + 1, 1, err, errlen) != 0) {
                seq_release(e, s);
                return -1;
            }
            if (!greedy)
                s->q = mallocCheck((size_t)e->p.sp.max_draft * e->dwidth * sizeof(float));
        }
        if (s->spec_mode && e->can_ctx) {
            ngram_init(&s->ng, e->p.sp.ngram_min, e->p.sp.ngram_max);
            ngram_push_many(&s->ng, w->prompt, w->n_prompt);
            s->has_ng = 1;
        }
        s->alpha_ctx = e->p.sp.ctx_alpha_init;
        s->state = SEQ_PREFILL;
        s->prompt = w->prompt;
        s->n_prompt = w->n_prompt;
        s->n_prefilled = cached;
        s->kv.len = cached;
        s->gp = w->gp;
        s->cb = w->cb;
        s->ex = (spec_exit){e->p.sp.gamma_init, e->p.sp.ar_init};
        s->alpha = e->p.ss && e->p.ss->speedup > 0 ? 0.8f : 0.7f;
        s->res = (engine_result){.prompt_tokens = w->n_prompt, .cached_tokens = cached, .t_submit = w->t_submit};
        e->tot.cached_prompt_tokens += cached;
        e->tot.prompt_tokens += cached;   /* the rest is counted as it is computed */
        if (e->has_pc)
            e->pc.hit_tokens += cached;
        e->head_wait = (e->head_wait + 1) % e->cap_wait;
        e->n_wait--;
        e->n_live++;
    }
    return 0;
}

/* The penalties' count of one more (d = 1) or one fewer (d = -1) token;
 * pen_ids keeps the distinct tokens in order of first use. */
static void pen_count(eseq *s, int32_t tok, int d)
{
    if (!s->pen_count)
        return;
    if (d > 0 && s->pen_count[tok]++ == 0)
        s->pen_ids[s->n_pen_ids++] = tok;
    if (d < 0 && --s->pen_count[tok] == 0) {
        assert(s->n_pen_ids > 0 && s->pen_ids[s->n_pen_ids - 1] == tok);   /* undone in reverse order */
        s->n_pen_ids--;
    }
}

/* A token's log-probabilities from a device's numbers for its row (dl,
 * with the row's candidates dc: tok is one of them). */
static void lp_from_device(const lp_row *dl, const int32_t *dc, int32_t tok, int32_t n_top, sampler_logprob *out)
{
    assert(tok == dc[0] || tok == dc[1]);
    out->token = tok;
    out->logprob = (tok == dc[0] ? dl->cand_logit[0] : dl->cand_logit[1]) - dl->lse;
    out->n_top = n_top < dl->n_top ? n_top : dl->n_top;
    for (int32_t k = 0; k < out->n_top; k++) {
        out->top_ids[k] = dl->top_ids[k];
        out->top_lps[k] = dl->top_logit[k] - dl->lse;
    }
}

/* Emit one final token of s, chosen from the full model's logits row `row`
 * (NULL when the pass kept no logits: then dl, dc are its row's numbers
 * from a device, when log-probabilities are asked); returns 1 when s is
 * finished. */
static int emit(eseq *s, int32_t tok, const float *row, const lp_row *dl, const int32_t *dc, int32_t V)
{
    if (s->gp.want_logprobs && s->cb.on_logprob) {
        assert(row || dl);
        sampler_logprob lp;
        if (row)
            sampler_logprobs(row, V, tok, s->gp.top_logprobs, &lp);
        else
            lp_from_device(dl, dc, tok, s->gp.top_logprobs, &lp);
        s->cb.on_logprob(s->cb.user, &lp);
    }
    if (s->has_ng)
        ngram_push(&s->ng, tok);
    pen_count(s, tok, 1);
    int gram_end = 0;   /* a constrained document ends at end of generation, ignore_eos or not */
    if (s->gst) {
        gram_end = s->gp.is_eog && s->gp.is_eog(s->gp.eog_ctx, tok);
        gram_end |= !gram_advance(s->gp.gram, s->gst, tok);
    }
    s->res.generated_tokens++;
    if (s->res.generated_tokens == 1)
        s->res.t_first = util_now();
    if (s->cb.on_token && s->cb.on_token(s->cb.user, tok)) {
        s->res.finish = ENGINE_FINISH_STOP;
        return 1;
    }
    if (gen_is_stop(&s->gp, tok) || gram_end) {
        s->res.finish = ENGINE_FINISH_STOP;
        return 1;
    }
    if (s->res.generated_tokens >= s->gp.max_tokens) {
        s->res.finish = ENGINE_FINISH_LENGTH;
        return 1;
    }
    return 0;
}

static void finish(engine *e, eseq *s)
{
    s->res.t_done = util_now();
    s->res.final_gamma = s->ex.gamma;
    e->tot.requests_done++;
    e->tot.generation_tokens += s->res.generated_tokens;
    if (e->has_jix && s->has_ng)   /* what it read and wrote, for later requests */
        jobindex_add(&e->jix, s->ng.toks, s->ng.len);
    if (s->cb.on_done)
        s->cb.on_done(s->cb.user, &s->res);
    seq_release(e, s);
    e->n_live--;
}

/* The engine's scratch for full walks of a vocabulary trie (made for the
 * first constrained sequence, remade for another vocabulary). */
static gram_scratch *engine_gram_scratch(engine *e, const gram_vocab *gv)
{
    if (!gram_scratch_fits(e->gsc, gv)) {
        gram_scratch_free(e->gsc);
        e->gsc = gram_scratch_new(gv);
    }
    return e->gsc;
}

/* The logits processors on row i of s's block (its tokens before i
 * already counted): logit_bias, then the presence and frequency penalties
 * over the generated tokens, then min_tokens (end-of-generation tokens out
 * while fewer than min_tokens would precede them). */
static void proc_row(const eseq *s, float *row, int32_t i)
{
    const gen_params *gp = &s->gp;
    for (int32_t k = 0; k < gp->n_bias; k++)
        row[gp->bias_ids[k]] += gp->bias_vals[k];
    for (int32_t k = 0; k < s->n_pen_ids; k++) {
        int32_t t = s->pen_ids[k];
        row[t] -= gp->presence_penalty + gp->frequency_penalty * (float)s->pen_count[t];
    }
    if (s->res.generated_tokens + i < gp->min_tokens)
        for (int32_t k = 0; k < s->n_eog; k++)
            row[s->eog_ids[k]] = -INFINITY;
}

/* A processed sequence's choice (s->proc: a constraint, logits processors)
 * over the n + 1 full-model rows of its block [cur, d1..dn] (n = 0: one
 * row, a plain step or a first token): row i is judged after the block's
 * tokens before it (the schema state, the penalties' counts; the draft
 * tokens are all allowed: gram_trim_draft). Greedy: the argmax of each
 * processed row -- under a schema the constrained argmax, the raw argmax
 * when it is allowed (am: the raw argmaxes, hints for unmodified rows) --
 * until one differs from the draft. Sampled (its drafts are forced text
 * only): each row processed (masked) in place and drawn from as a plain
 * step draws (one uniform of its own generator) until a draw differs from
 * the draft: exact for point-mass drafts, and the draws of plain decoding.
 * Rows the processors change are copied to *lp_rows first when
 * log-probabilities are asked (they are the raw model's). *next < 0: no
 * token is allowed (a complete document in a vocabulary without an end
 * token). */
static void proc_choose(engine *e, eseq *s, float *rows, const int32_t *am, int32_t n, int32_t *acc, int32_t *next,
                        const float **lp_rows)
{
    const gram *g = s->gp.gram;
    const int32_t V = e->m->config.vocab_size;
    const int greedy = s->gp.sampling.temperature == 0.0f;
    const int modify = gen_has_processors(&s->gp) || (g && !greedy);
    gram_scratch *sc = g ? engine_gram_scratch(e, g->gv) : NULL;
    js_state st;
    if (g)
        js_copy(&st, s->gst);
    *lp_rows = rows;
    if (modify && s->gp.want_logprobs) {
        if (!e->graw)
            e->graw = mallocCheck((size_t)(e->p.sp.max_draft + 1) * V * sizeof(float));
        memcpy(e->graw, rows, (size_t)(n + 1) * V * sizeof(float));
        *lp_rows = e->graw;
    }
    int32_t i = 0, c;
    for (;; i++) {
        float *r = rows + (size_t)i * V;
        proc_row(s, r, i);
        if (greedy)
            c = g ? gram_best(g, &st, r, V, modify ? -1 : am[i], sc) : sampler_argmax(r, V);
        else
            c = !g || gram_mask(g, &st, r, V, sc) > 0 ? sampler_sample(&s->smp, r) : -1;
        if (i == n || c != s->blk.tokens[i])
            break;
        if (g)
            gram_advance(g, &st, c);
        pen_count(s, c, 1);
    }
    for (int32_t k = i - 1; k >= 0; k--)   /* emit counts them for good */
        pen_count(s, s->blk.tokens[k], -1);
    *acc = i;
    *next = c;
}

/* Record a verification of s that accepted acc of its blk.n draft tokens. */
static void record(engine *e, eseq *s, int32_t acc)
{
    int32_t k = s->blk.n, c = s->blk.n_ctx;
    if (k <= 0)
        return;
    spec_counts_add(&e->tot.spec, &s->blk, acc);
    s->res.drafts++;
    s->res.draft_tokens += k;
    s->res.accepted_tokens += acc;
    if (s->blk.forced)
        return;   /* a schema's forced text: not evidence about any draft source */
    /* the exit threshold and alpha_ctx as gen_selfspec (spec_record_block);
     * the layer-skip estimate only from its tokens, when they were tested */
    spec_src_state st = {s->alpha_ctx};
    spec_block path = {.n = s->blk.tree_depth, .n_ctx = s->blk.tree_depth};
    /* a tree: evidence about the context as a chain as deep as the tree */
    spec_record_block(NULL, &s->ex, &st, &e->p.sp, s->blk.tree_depth > 0 ? &path : &s->blk, acc);
    s->alpha_ctx = st.alpha_ctx;
    if (k > c && acc >= c)
        s->alpha = spec_alpha_update(s->alpha, k - c, acc - c);
}

/* The requests of the last pass's output rows, in batch order (a decode
 * block's 1 + n rows, a last prompt chunk's one), to the backend's sampler;
 * the tokens replace e->am, e->acc says which test rows accepted. A
 * sampled decode block's row i < n tests its draft token (speculative
 * sampling on the device: against the q its draft row left, or a one-hot q
 * for a context token), its last row draws the next token; other sampled
 * rows draw. Every row takes its uniforms from its sequence's own
 * generator, so what it decides does not depend on the batch. */
static int sample_on_device(engine *e, int n, char *err, size_t errlen)
{
    int32_t rows = 0;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        const fwd_seq *sq = &e->batch[j];
        const sampler_params *p = &s->smp.p;
        int block = s->state == SEQ_DECODE;
        for (int32_t t = sq->logits_from; t < sq->n_tokens; t++, rows++) {
            int sampled = p->temperature != 0.0f;
            samp_req *q = &e->srq[rows];
            *q = (samp_req){.temperature = sampled ? p->temperature : 0.0f, .top_k = p->top_k, .top_p = p->top_p};
            if (!sampled)
                continue;
            if (block && t < s->blk.n) {
                q->kind = t < s->blk.n_ctx ? SAMP_TEST_CTX : SAMP_TEST;
                q->x = s->blk.tokens[t];
                q->q_slot = t < s->blk.n_ctx ? -1 : q_slot(e, e->bseq[j], t - s->blk.n_ctx);
                q->u_acc = sampler_uniform(&s->smp);
            }
            q->u = sampler_uniform(&s->smp);
        }
    }
    return rows ? e->be->sample(e->be, e->srq, rows, e->am, e->acc, err, errlen) : 0;
}

/* Log-probabilities of every output row of the last pass from the device
 * (engine_params.backend with .logprobs) into e->dlp: its candidates are
 * the row's draft token (a decode block's row i < n) and the token the
 * pass gave it (e->am: the argmax, or the device's draw); the token a row
 * emits is one of the two. */
static int logprobs_on_device(engine *e, int n, int32_t n_top, char *err, size_t errlen)
{
    int32_t rows = 0;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        const fwd_seq *sq = &e->batch[j];
        for (int32_t t = sq->logits_from; t < sq->n_tokens; t++, rows++) {
            e->dcand[2 * rows] = s->state == SEQ_DECODE && t < s->blk.n ? s->blk.tokens[t] : -1;
            e->dcand[2 * rows + 1] = e->am[rows];
        }
    }
    return rows ? e->be->logprobs(e->be, e->dcand, rows, n_top, e->dlp, err, errlen) : 0;
}

int engine_step(engine *e, char *err, size_t errlen)
{
    if (admit(e, err, errlen) != 0)
        return -1;
    if (e->n_live == 0)
        return engine_pending(e);
    e->step_bucket = -1;
    double t_step = util_now();
    plan_drafts(e);
    if (e->can_layers && draft(e, err, errlen) != 0)
        return -1;
    if (e->p.remote)
        remote_drafts(e);
    for (int32_t i = 0; i < e->p.max_seqs; i++)
        if (e->seqs[i].state == SEQ_DECODE && e->seqs[i].gst)
            gram_trim_draft(&e->seqs[i]);
    /* the full pass: decode blocks first, then prompt chunks in the budget left */
    int n = 0, any_draft = 0;
    int32_t T = 0;
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_DECODE)
            continue;
        /* the block: at most the plan's cap, context tokens first, room in the KV */
        assert(s->blk.n >= 0 && s->blk.n <= s->k_max && s->k_max <= e->p.sp.max_draft);
        assert(s->blk.n_ctx >= 0 && s->blk.n_ctx <= s->blk.n);
        assert(s->kv.len + 1 + s->blk.n <= s->kv.cap);
        any_draft |= s->blk.n > 0;
        e->batch[n] = (fwd_seq){.tokens = NULL, .n_tokens = 1 + s->blk.n, .pos = s->kv.len, .kv = &s->kv,
                                .logits_from = 0};
        e->bseq[n++] = i;
        T += 1 + s->blk.n;
    }
    assert(T <= e->p.max_batch_tokens);   /* decode and verification tokens fit the pass */
    for (int32_t i = 0; i < e->p.max_seqs && T < e->p.max_batch_tokens; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_PREFILL)
            continue;
        int32_t chunk = s->n_prompt - s->n_prefilled;
        if (chunk > e->p.max_batch_tokens - T)
            chunk = e->p.max_batch_tokens - T;
        int last = s->n_prefilled + chunk == s->n_prompt;
        e->batch[n] = (fwd_seq){.tokens = s->prompt + s->n_prefilled, .n_tokens = chunk, .pos = s->n_prefilled,
                                .kv = &s->kv, .logits_from = last ? chunk - 1 : chunk};
        e->bseq[n++] = i;
        T += chunk;
    }
    /* decode blocks read [cur, d1..dk]: gather them into one array (a
     * tree's parents beside them: [-1, its parent rows]) */
    int32_t *blocks = mallocCheck((size_t)2 * T * sizeof(int32_t)), *parents = blocks + T;
    int32_t off = 0;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        if (s->state == SEQ_DECODE) {
            blocks[off] = s->cur;
            memcpy(blocks + off + 1, s->blk.tokens, (size_t)s->blk.n * sizeof(int32_t));
            e->batch[j].tokens = blocks + off;
            if (s->blk.tree_depth > 0) {
                assert(s->blk.n == s->blk.n_ctx && s->gp.sampling.temperature == 0.0f && !s->proc);
                parents[off] = -1;
                memcpy(parents + off + 1, s->blk.parent, (size_t)s->blk.n * sizeof(int32_t));
                e->batch[j].parent = parents + off;
            }
        }
        off += e->batch[j].n_tokens;
    }
    /* a pass whose output rows are all greedy needs only their argmax (a
     * device keeps its logits); a sampled sequence's rows need the logits */
    int need_logits = 0, want_lp = 0, any_proc = 0, lp_top = 0;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        int rows = e->batch[j].logits_from < e->batch[j].n_tokens;
        need_logits |= s->gp.sampling.temperature != 0.0f && rows;
        any_proc |= s->proc && rows;              /* processed rows are chosen on the host */
        if (s->gp.want_logprobs && rows) {
            want_lp = 1;
            lp_top = s->gp.top_logprobs > lp_top ? s->gp.top_logprobs : lp_top;
        }
    }
    /* log-probabilities: from a device that computes them (only their
     * numbers come back), else from the rows here */
    int dev_lp = want_lp && !any_proc && e->be->logprobs;
    int host_rows = any_proc || (want_lp && !dev_lp);
    need_logits |= host_rows;
    /* a backend that samples (a device) draws the sampled rows of plain
     * steps and of first tokens itself: only ids come back. Speculative
     * sampling (a sampled sequence's draft block) needs the rows here. */
    int dev_sample = need_logits && !host_rows && e->be->sample;
    for (int j = 0; j < n && dev_sample; j++) {   /* ... and tests draft tokens whose q it holds */
        eseq *s = &e->seqs[e->bseq[j]];
        dev_sample = !(s->state == SEQ_DECODE && s->gp.sampling.temperature != 0.0f && s->blk.n > s->blk.n_ctx &&
                       !s->q_dev);
    }
    double t0 = util_now();
    int rc = e->be->forward(e->be, e->batch, n, NULL, NULL, need_logits && !dev_sample ? e->logits : NULL, e->am,
                            err, errlen);
    if (rc == 0 && dev_sample) {
        rc = sample_on_device(e, n, err, errlen);
        need_logits = 0;   /* e->am holds every output row's token */
    }
    int use_dlp = dev_lp && !need_logits;   /* no rows came back: the device's numbers */
    if (rc == 0 && use_dlp)
        rc = logprobs_on_device(e, n, lp_top, err, errlen);
    double dt = util_now() - t0;
    free(blocks);
    if (rc != 0)
        return -1;
    curve_observe(&e->full, T, dt);
    e->tot.forward_seconds += dt;
    e->tot.steps++;
    e->tot.spec_steps += any_draft;
    /* acceptance and emission, in batch order */
    const int32_t V = e->m->config.vocab_size;
    int64_t emitted = 0;
    float *row = e->logits;
    const int32_t *am = e->am;   /* row's argmax (or the device's token) */
    const uint8_t *af = e->acc;  /* a device test row's verdict */
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        fwd_seq *sq = &e->batch[j];
        if (s->state == SEQ_PREFILL) {
            s->n_prefilled += sq->n_tokens;
            s->kv.len = s->n_prefilled;
            e->tot.prompt_tokens += sq->n_tokens;
            if (s->n_prefilled < s->n_prompt)
                continue;   /* no logits row for a middle chunk */
            if (e->has_pc)   /* its full prompt blocks, for later prompts */
                prefix_insert(&e->pc, s->prompt, s->n_prompt / KV_BLOCK, s->kv.blocks);
            const float *first_row = need_logits ? row : NULL;
            const size_t ri = (size_t)(am - e->am);   /* the output row */
            if (s->proc) {
                int32_t acc0;
                proc_choose(e, s, row, am, 0, &acc0, &s->cur, &first_row);
            } else {
                s->cur = need_logits ? sampler_sample(&s->smp, row) : *am;
            }
            row += V;
            am++;
            af++;
            s->state = SEQ_DECODE;
            if (s->cur < 0)   /* a constraint allows nothing at all */
                s->res.finish = ENGINE_FINISH_STOP;
            if (s->cur < 0 || emit(s, s->cur, first_row, use_dlp ? &e->dlp[ri] : NULL, &e->dcand[2 * ri], V))
                finish(e, s);
            continue;
        }
        int32_t acc = 0, next;
        const float *rows = need_logits ? row : NULL;   /* row i chose the block's token i */
        const size_t r0 = (size_t)(am - e->am);           /* the block's first output row */
        const int32_t *acc_toks = s->blk.tokens;          /* the accepted tokens, in order */
        int32_t path_toks[SPEC_MAX_DRAFT];
        if (s->blk.tree_depth > 0) {   /* greedy: the longest path the argmax rows agree with */
            int32_t path[SPEC_MAX_DRAFT];
            spec_accept_tree(am, &s->blk, &acc, path, &next);
            for (int32_t d = 0; d < acc; d++) {   /* its KV to consecutive slots (path[d] >= d) */
                e->be->kv_copy(e->be, &s->kv, s->kv.len + 1 + path[d], s->kv.len + 1 + d);
                path_toks[d] = s->blk.tokens[path[d]];
            }
            acc_toks = path_toks;
            rows = NULL;   /* no row is read: no log-probabilities for tree sequences (plan_tree) */
        } else if (s->proc) {   /* a schema or logits processors: the choice per position */
            proc_choose(e, s, row, am, s->blk.n, &acc, &next, &rows);
        } else if (dev_sample && s->gp.sampling.temperature != 0.0f) {   /* the device's verdicts */
            while (acc < s->blk.n && af[acc])
                acc++;
            next = am[acc];
        } else if (!need_logits) {   /* greedy: the argmax rows are all it takes (spec_accept's rule) */
            spec_accept_ids(am, &s->blk, &acc, &next);
        } else if (s->spec_mode == 2 || s->blk.n > 0) {
            spec_qdist qd = {s->q, e->dwidth, e->head_tokens};
            spec_accept(V, row, &s->blk, &qd, &s->smp, &acc, &next);
        } else {
            next = sampler_sample(&s->smp, row);   /* a plain step, as gen_plain */
        }
        row += (size_t)(1 + s->blk.n) * V;
        am += 1 + s->blk.n;
        af += 1 + s->blk.n;
        s->q_dev = 0;
        emitted += acc + 1;
        s->res.verifications++;
        record(e, s, acc);
        s->kv.len += acc + 1;
        int done = 0;
        for (int32_t i = 0; i <= acc && !done; i++) {
            if (i == acc && next < 0) {   /* a constraint allows nothing more: the end */
                s->res.finish = ENGINE_FINISH_STOP;
                done = 1;
                break;
            }
            done = emit(s, i < acc ? acc_toks[i] : next, rows ? rows + (size_t)i * V : NULL,
                        use_dlp ? &e->dlp[r0 + i] : NULL, &e->dcand[2 * (r0 + i)], V);
        }
        s->cur = next;
        if (done) {
            finish(e, s);
        } else if (e->p.remote && s->spec_mode) {
            int32_t end = spec_end_pos(s->kv.cap, s->kv.len, s->gp.max_tokens - s->res.generated_tokens);
            e->p.remote->verified(e->p.remote->user, e->bseq[j], s->blk.n, acc, s->kv.len, s->cur,
                                  spec_draft_limit(e->p.sp.max_draft, s->kv.len, end), end, s->ex.gamma);
        }
    }
    assert(T <= e->p.max_batch_tokens);
#ifndef NDEBUG
    int32_t used, total;   /* the pool: nothing held beyond what it has */
    e->be->kv_usage(e->be, &used, &total);
    assert(used >= 0 && used <= total);
#endif
    if (e->step_bucket >= 0 && e->step_n > 0) {   /* what this choice delivered, per sequence */
        int c = e->step_spec, b = e->step_bucket;
        double r = emitted / (util_now() - t_step) / e->step_n;
        double w = e->rate_n[c][b] < RATE_MIN_SAMPLES ? 1.0 / (e->rate_n[c][b] + 1) : 0.1;
        e->rate[c][b] = e->rate_n[c][b] ? (1 - w) * e->rate[c][b] + w * r : r;
        if (e->rate_n[c][b] < UINT32_MAX)
            e->rate_n[c][b]++;
    }
    return engine_pending(e);
}

/* ---- one prompt, alone or as copies ---- */

typedef struct {
    gen_emit_fn emit;          /* copy 0's tokens, else NULL */
    void *ctx;
    int32_t generated;         /* tokens emitted so far */
    double t_submit, t_first;  /* t_first: 0 until the first token */
    engine_result res;
    int done;
} one_req;

static int one_token(void *user, int32_t tok)
{
    one_req *o = user;
    if (o->generated++ == 0)
        o->t_first = util_now();
    return o->emit ? o->emit(o->ctx, tok) : 0;
}

static void one_done(void *user, const engine_result *r)
{
    one_req *o = user;
    o->res = *r;
    o->done = 1;
}

int engine_run(const model *m, const engine_params *p, int n, const int32_t *prompt, int32_t n_prompt,
               const gen_params *gp, gen_emit_fn emit, void *emit_ctx, int (*should_stop)(void), gen_stats *st,
               spec_stats *sps, char *err, size_t errlen)
{
    if (n < 1 || n > p->max_seqs)
        return util_err(err, errlen, "%d copies do not fit %d sequences", n, p->max_seqs);
    engine *e;
    if (engine_init(&e, m, p, err, errlen) != 0)
        return -1;
    one_req *o = callocCheck((size_t)n, sizeof *o);
    int rc = 0;
    double t0 = util_now();
    for (int i = 0; i < n && rc == 0; i++) {
        o[i] = (one_req){.emit = i ? NULL : emit, .ctx = emit_ctx, .t_submit = t0};
        engine_callbacks cb = {.on_token = one_token, .on_done = one_done, .user = &o[i]};
        rc = engine_submit(e, prompt, n_prompt, gp, &cb, err, errlen);
    }
    while (rc == 0 && engine_pending(e) > 0 && !(should_stop && should_stop()))
        rc = engine_step(e, err, errlen) < 0 ? -1 : 0;
    if (rc == 0) {
        const engine_totals *t = engine_get_totals(e);
        double t_first = t0, t_end = util_now();
        memset(st, 0, sizeof *st);
        int64_t verifications = 0;
        for (int i = 0; i < n; i++) {
            st->prompt_tokens += n_prompt;
            st->generated_tokens += o[i].generated;
            if (o[i].t_first > t_first)
                t_first = o[i].t_first;
            verifications += o[i].done ? o[i].res.verifications : 0;
        }
        if (o[0].done)
            t_end = o[0].res.t_done;
        for (int i = 1; i < n; i++)
            if (o[i].done && o[i].res.t_done > t_end)
                t_end = o[i].res.t_done;
        st->prefill_seconds = t_first - t0;
        st->decode_seconds = t_end > t_first ? t_end - t_first : 0;
        if (sps) {
            memset(sps, 0, sizeof *sps);
            sps->counts = t->spec;
            sps->verifications = verifications;
            sps->draft_seconds = t->draft_seconds;
            sps->verify_seconds = st->decode_seconds > t->draft_seconds ? st->decode_seconds - t->draft_seconds : 0;
            sps->final_gamma = o[0].done ? o[0].res.final_gamma : p->sp.gamma_init;
        }
    }
    free(o);
    engine_free(e);
    return rc;
}

int engine_generate(const model *m, int32_t ctx, const skip_set *ss, const spec_params *sp, const int32_t *prompt,
                    int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *emit_ctx, gen_stats *st,
                    spec_stats *sps, char *err, size_t errlen)
{
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = 1;
    p.ctx = ctx;
    p.mode = ss || sp->draft != SPEC_DRAFT_LAYERS ? ENGINE_SPEC : ENGINE_PLAIN;
    p.ss = ss;
    p.sp = *sp;
    p.calibrate = 0;
    p.kv_mem = kv_pool_block_bytes(&m->config) * (size_t)kv_blocks_for(n_prompt + gp->max_tokens + 1);
    return engine_run(m, &p, 1, prompt, n_prompt, gp, emit, emit_ctx, NULL, st, sps, err, errlen);
}
