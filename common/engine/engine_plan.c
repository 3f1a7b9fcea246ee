/*
 * engine_plan.c - one step's speculation plan and drafting (engine_impl.h):
 * per decoding sequence the draft cap and source (forced sequences by the
 * nominal rule, policy sequences by the measured cost model, overruled by
 * the goodput really measured), then the batched masked passes that draft
 * (or the remote source's proposals).
 */
#include "engine/engine_impl.h"

#include <assert.h>
#include <string.h>

#include "util/util.h"

/* A match went unused this step: alpha_ctx drifts back (spec_src_idle). */
static void ctx_idle(engine *e, eseq *s)
{
    spec_src_state st = {s->alpha_ctx};
    spec_src_idle(&st, &e->p.sp);
    s->alpha_ctx = st.alpha_ctx;
}

/* The tree of s (has_tree) by dtree_choose against costs c, at most lim
 * nodes, when it beats bar and branches: its tokens and parents into s->blk
 * (whose n the plan sets), its size into s->plan_ctx. Returns whether it is
 * taken. A choice that is one path is left to the chain choice, whose
 * draft may run on past the match's text (ngram.h). */
static int use_tree(eseq *s, const spec_costs *c, int32_t lim, double bar)
{
    spec_block tb;
    if (dtree_choose(&s->tree, c, s->alpha_ctx, lim, bar, &tb) <= 0 || tb.tree_depth == 0)
        return 0;
    memcpy(s->blk.tokens, tb.tokens, (size_t)tb.n * sizeof(int32_t));
    memcpy(s->blk.parent, tb.parent, (size_t)tb.n * sizeof(int32_t));
    s->blk.tree_depth = tb.tree_depth;
    s->plan_ctx = tb.n;
    return 1;
}

/* Context-draft choice for the policy sequences of an ENGINE_AUTO step,
 * from the measured cost model: per sequence, spec_choose with the step's
 * plain cost as the base (n_policy tokens), what more tokens add to the
 * full pass, and this sequence's share of a draft pass; the layer option
 * is the joint policy's k (0: layer drafts do not pay). Decode tokens stay
 * within the pass budget. Returns whether any sequence drafts. */
static int plan_context(engine *e, int32_t n_policy, int32_t n_other, int32_t t_prompt, int32_t dec_other,
                        int32_t k)
{
    spec_costs c;
    memset(&c, 0, sizeof c);
    int32_t T0 = dec_other + t_prompt + n_policy;
    c.base = plain_cost(e, dec_other + n_policy);
    c.n_base = n_policy + n_other;
    for (int32_t x = 0; x <= e->p.sp.max_draft; x++)
        c.extra[x] = extra_cost(e, T0, x);
    c.draft = curve_get(&e->draft, n_policy) / n_policy;
    int32_t budget = e->p.max_batch_tokens - dec_other - n_policy;
    int want = 0;
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_DECODE || s->spec_mode != 1 || s->plan_forced)
            continue;
        int32_t cap = s->k_max < budget ? s->k_max : budget;
        if (cap < 0)
            cap = 0;
        spec_choice ch = spec_choose(e->p.sp.draft, &c, s->alpha_ctx, s->alpha, s->ctx_avail, s->ctx_hist, k, cap,
                                     e->can_layers && k > 0, 0);
        /* a tree holds the context's chain with the frequencies of its
         * matches: it competes with the choices that draft no context */
        double bar = s->has_tree ? spec_choose(e->p.sp.draft, &c, s->alpha_ctx, s->alpha, 0, 0, k, cap,
                                               e->can_layers && k > 0, 0).rate : 0.0;
        if (s->has_tree && use_tree(s, &c, cap, bar))
            ch = (spec_choice){.n_ctx = s->plan_ctx};
        s->plan_ctx = ch.n_ctx;
        s->plan_n = ch.n_ctx + ch.k_layers;
        budget -= s->plan_n;
        want |= s->plan_n > 0;
    }
    return want;
}

/* The job's index against the sequence's own history (which matched own_n
 * tokens, or none): the job's draft replaces it where its match is longer,
 * or as long and with more tokens read from real text. Returns the length
 * of the match the step's context draft comes from (0: none). */
static int32_t job_context(engine *e, eseq *s, int32_t lim, int32_t own_n)
{
    int32_t toks[SPEC_MAX_DRAFT], job_n = 0;
    int32_t n = jobindex_draft(&e->jix, s->ng.toks, s->ng.len, lim, toks, &job_n);
    if (n <= 0 || (s->ctx_avail > 0 && (job_n < own_n || (job_n == own_n && n <= s->ctx_hist))))
        return s->ctx_avail > 0 ? own_n : 0;
    memcpy(s->blk.tokens, toks, (size_t)n * sizeof(int32_t));
    s->ctx_avail = s->ctx_hist = n;
    s->blk.ctx_job = 1;
    s->ctx_ix = &e->jix.ix;
    return job_n;
}

/* The requests in flight: where another live sequence's history (its
 * prompt and the tokens it has emitted so far) holds a longer match of s's
 * last tokens than the step's draft came from (match_n tokens), what
 * followed there is the draft (counted as the job's). Their indexes keep
 * n-grams up to --ngram-max, so this matters most before any request of
 * the job has finished. Returns the length of the match now used. */
static int32_t live_context(engine *e, eseq *s, int32_t lim, int32_t match_n)
{
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        const eseq *o = &e->seqs[i];
        if (o == s || o->state != SEQ_DECODE || !o->has_ng)
            continue;
        for (int32_t n = o->ng.n_max; n > match_n && n >= o->ng.n_min && n <= s->ng.len; n--) {
            int32_t end = ngram_find(&o->ng, s->ng.toks + s->ng.len - n, n), k = 0;
            if (end < 0)
                continue;
            while (k < lim && end + 1 + k < o->ng.len) {   /* an indexed n-gram has a successor */
                s->blk.tokens[k] = o->ng.toks[end + 1 + k];
                k++;
            }
            s->ctx_avail = s->ctx_hist = k;
            s->blk.ctx_job = 1;
            s->ctx_ix = &o->ng;
            match_n = n;
            break;
        }
    }
    return match_n;
}

/* The candidate tree of a greedy policy sequence whose context draft came
 * from a match of n tokens: every occurrence of that match in the same
 * source (s->ctx_ix: the job's index, a request in flight, or its own
 * history), merged (dtree.h). Only
 * where their continuations differ; requests that want log-probabilities
 * or choose their rows on the host (a schema, processors) keep chains. */
static void plan_tree(engine *e, eseq *s, int32_t n)
{
    s->has_tree = 0;
    if (!e->can_tree || !s->spec_mode || n <= 0 || s->proc || s->gst || s->gp.want_logprobs ||
        s->gp.sampling.temperature != 0.0f)
        return;
    dtree_reset(&s->tree);
    dtree_from_index(&s->tree, s->ctx_ix, s->ng.toks + s->ng.len - n, n, JOBINDEX_SEP);
    int32_t deepest = 0;   /* a trie with more nodes than its depth branches somewhere */
    for (int32_t i = 0; i < s->tree.n; i++)
        deepest = s->tree.depth[i] > deepest ? s->tree.depth[i] : deepest;
    s->has_tree = s->tree.n > deepest;
}

/* Decide each decoding sequence's draft cap (and context tokens) for this
 * step. */
void plan_drafts(engine *e)
{
    int32_t n_policy = 0, n_other = 0, t_prompt = 0, dec_other = 0;
    int any_prefill = 0;
    double alpha_sum = 0;
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state == SEQ_PREFILL) {
            t_prompt += s->n_prompt - s->n_prefilled;   /* an upper bound of its chunk */
            any_prefill = 1;
            continue;
        }
        if (s->state != SEQ_DECODE)
            continue;
        int32_t L = s->kv.len;
        int32_t lim = spec_draft_limit(e->p.sp.max_draft, L,
                                       spec_end_pos(s->kv.cap, L, s->gp.max_tokens - s->res.generated_tokens));
        s->k_max = s->spec_mode ? lim : 0;
        s->blk.n = 0;
        s->blk.n_ctx = 0;
        s->blk.ctx_job = 0;
        s->blk.forced = 0;
        s->blk.tree_depth = 0;
        s->has_tree = 0;
        s->ctx_hist = 0;
        s->ctx_avail = 0;
        s->plan_forced = 0;
        if (s->gst && e->p.forced_drafts && e->p.mode != ENGINE_PLAIN && !e->p.remote) {
            /* the schema leaves one text: its tokens are this step's draft,
             * free (no draft pass), greedy or sampled, whatever the policy */
            int32_t nf = gram_forced(s->gp.gram, s->gst, s->blk.tokens, lim);
            if (nf > 0) {
                s->blk.n = s->blk.n_ctx = nf;
                s->blk.forced = 1;
                s->k_max = nf;
                s->plan_forced = 1;
                n_other++;
                dec_other += 1 + nf;
                continue;
            }
        }
        int32_t own_n = 0;
        s->ctx_avail = s->has_ng ? ngram_draft(&s->ng, lim, s->blk.tokens, &own_n, &s->ctx_hist) : 0;
        int32_t match_n = s->ctx_avail > 0 ? own_n : 0;
        s->ctx_ix = &s->ng;
        if (e->has_jix && s->has_ng && s->gp.sampling.temperature == 0.0f && lim > 0) {   /* greedy only: see jobindex.h */
            match_n = job_context(e, s, lim, own_n);
            match_n = live_context(e, s, lim, match_n);
        }
        plan_tree(e, s, match_n);
        if (s->gst && s->ctx_avail > 0) {   /* a context draft only as far as the schema allows it */
            s->ctx_avail = gram_valid_prefix(s->gp.gram, s->gst, s->blk.tokens, s->ctx_avail);
            if (s->ctx_hist > s->ctx_avail)
                s->ctx_hist = s->ctx_avail;
        }
        if (s->spec_mode == 2 && e->p.sp.draft != SPEC_DRAFT_LAYERS) {
            /* forced: the source by the nominal rule, as gen_selfspec; a
             * context draft with a candidate tree takes the tree's best
             * nodes under the same nominal costs */
            spec_choice ch = spec_choose(e->p.sp.draft, &e->nominal, s->alpha_ctx, s->ex.ar, s->ctx_avail, s->ctx_hist,
                                         lim, lim, e->can_layers, 1);
            s->blk.n = s->blk.n_ctx = ch.n_ctx;
            s->k_max = ch.n_ctx + ch.k_layers;
            if (s->has_tree && ch.n_ctx > 0 && ch.k_layers == 0 && use_tree(s, &e->nominal, lim, 0.0))
                s->blk.n = s->blk.n_ctx = s->k_max = s->plan_ctx;
            if (s->ctx_avail > 0 && ch.n_ctx == 0)
                ctx_idle(e, s);
        }
        if (s->spec_mode == 1) {
            n_policy++;
            alpha_sum += s->alpha;
        } else {
            n_other++;
            dec_other += 1 + s->k_max;
        }
    }
    if (dec_other > e->p.max_batch_tokens)
        dec_other = e->p.max_batch_tokens;
    if (t_prompt > e->p.max_batch_tokens - dec_other)
        t_prompt = e->p.max_batch_tokens - dec_other;
    if (n_policy == 0)
        return;
    int32_t k = engine_policy_k(e, n_policy, (float)(alpha_sum / n_policy), n_other, dec_other, t_prompt);
    int ctx_policy = e->p.sp.draft != SPEC_DRAFT_LAYERS;
    int want = ctx_policy ? plan_context(e, n_policy, n_other, t_prompt, dec_other, k) : k > 0;
    /* measured goodput overrules the prediction once both choices have been
     * seen at this batch size; the other choice is retried now and then */
    int32_t b = 0;
    while (b + 1 < RATE_BUCKETS && (1 << (b + 1)) <= n_policy)
        b++;
    if (want && e->rate_n[0][b] < RATE_MIN_SAMPLES && !any_prefill) {
        if (++e->since_other[b] % 2 == 0)
            want = 0;   /* the prediction says speculate: measure plain steps here too */
    } else if (e->rate_n[0][b] >= RATE_MIN_SAMPLES && e->rate_n[1][b] >= RATE_MIN_SAMPLES) {
        int spec_pays = e->rate[1][b] > SPEC_PAY_MARGIN * e->rate[0][b];
        int explore = ++e->since_other[b] >= RATE_EXPLORE;
        if (want && !spec_pays && !explore)
            want = 0;
        else if (want && spec_pays && explore)
            want = 0;   /* refresh the plain figure */
        if (explore)
            e->since_other[b] = 0;
    }
    e->step_bucket = any_prefill ? -1 : b;   /* steps with prompt chunks are not compared */
    e->step_n = n_policy;
    e->step_spec = want;
    if (!want)
        k = 0;
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_DECODE || s->spec_mode != 1 || s->plan_forced)
            continue;
        if (!ctx_policy) {
            if (s->k_max > k)
                s->k_max = k;
        } else if (!want) {
            s->k_max = 0;
            s->blk.tree_depth = 0;
        } else {
            s->blk.n = s->blk.n_ctx = s->plan_ctx;
            s->k_max = s->plan_n;
        }
        if (ctx_policy && s->ctx_avail > 0 && s->blk.n_ctx == 0)
            ctx_idle(e, s);
    }
}

void gram_trim_draft(eseq *s)
{
    int32_t n = gram_valid_prefix(s->gp.gram, s->gst, s->blk.tokens, s->blk.n);
    if (n < s->blk.n) {
        s->blk.n = n;
        if (s->blk.n_ctx > n)
            s->blk.n_ctx = n;
    }
}

/* The q slot of draft row `step` of the sequence in slot i. */
int32_t q_slot(const engine *e, int32_t i, int32_t step) { return i * e->p.sp.max_draft + step; }

/* A draft pass on a device that takes its tokens itself: the forward keeps
 * its logits there, then per row its confidence and token (a sampled
 * sequence's draw, from its own generator's uniform, leaves its q on the
 * device for the verification's test rows) into e->dconf, e->dids. */
static int draft_on_device(engine *e, int n, int32_t step, char *err, size_t errlen)
{
    if (e->be->forward(e->be, e->batch, n, &e->mask, NULL, NULL, e->dids, err, errlen) != 0)
        return -1;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        const sampler_params *p = &s->smp.p;
        int sampled = s->q != NULL;
        e->drq[j] = (samp_req){.temperature = sampled ? p->temperature : 0.0f, .top_k = p->top_k, .top_p = p->top_p,
                               .u = sampled ? sampler_uniform(&s->smp) : 0.0f};
        e->dslot[j] = sampled ? q_slot(e, e->bseq[j], step) : -1;
    }
    return e->be->draft_take(e->be, e->drq, e->dslot, n, e->dids, e->dconf, err, errlen);
}

/* Batched drafting: pass i feeds every still-drafting sequence's token at
 * position L + i through the masked model; each stops at its cap or when
 * its draft's top-1 probability falls below its exit threshold. A chained
 * draft's first pass feeds [cur, ctx_1..ctx_c] (its scratch then holds the
 * context tokens' draft KV) and drafts on from the last of them. */
int draft(engine *e, char *err, size_t errlen)
{
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        s->drafting = s->state == SEQ_DECODE && s->k_max > s->blk.n;
    }
    for (int32_t step = 0;; step++) {
        int n = 0, multi = 0;
        for (int32_t i = 0; i < e->p.max_seqs; i++) {
            eseq *s = &e->seqs[i];
            if (!s->drafting)
                continue;
            if (step == 0) {
                int32_t c = s->blk.n_ctx;
                s->dtok[0] = s->cur;
                memcpy(s->dtok + 1, s->blk.tokens, (size_t)c * sizeof(int32_t));
                e->batch[n] = (fwd_seq){.tokens = s->dtok, .n_tokens = 1 + c, .pos = s->kv.len, .kv = &s->kv,
                                        .scratch = &s->scratch, .scratch_base = s->kv.len, .logits_from = c};
                multi |= c > 0;
            } else {
                e->batch[n] = (fwd_seq){.tokens = &s->blk.tokens[s->blk.n - 1], .n_tokens = 1,
                                        .pos = s->kv.len + s->blk.n, .kv = &s->kv, .scratch = &s->scratch,
                                        .scratch_base = s->kv.len, .logits_from = 0};
            }
            e->bseq[n++] = i;
        }
        if (n == 0)
            return 0;
        double t0 = util_now();
        if (e->dev_draft ? draft_on_device(e, n, step, err, errlen) != 0
                         : e->be->forward(e->be, e->batch, n, &e->mask, e->head.rows ? &e->head : NULL, e->dlogits,
                                          NULL, err, errlen) != 0)
            return -1;
        double dt = util_now() - t0;
        if (!multi)   /* the table is of one-token passes */
            curve_observe(&e->draft, n, dt);
        e->tot.draft_seconds += dt;
        for (int j = 0; j < n; j++) {
            eseq *s = &e->seqs[e->bseq[j]];
            const float *row = e->dlogits + (size_t)j * e->dwidth;
            int32_t arg;
            float conf;
            if (e->dev_draft) {
                arg = e->dids[j];
                conf = e->dconf[j];
                s->q_dev = s->q != NULL;
            } else {   /* sampling (s->q): drawn from the warped draft distribution */
                conf = spec_draft_token(row, e->dwidth, &s->smp, s->q ? s->q + (size_t)step * e->dwidth : NULL, &arg);
            }
            spec_block_push(&s->blk, e->head_tokens, arg);
            if (s->blk.n >= s->k_max || spec_exit_now(conf, s->ex.gamma))
                s->drafting = 0;
        }
    }
}

/* Drafts from the remote source (engine_params.remote): each decoding
 * sequence that may draft this step asks for its block. */
void remote_drafts(engine *e)
{
    const spec_remote *r = e->p.remote;
    double t0 = util_now();
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_DECODE || s->k_max <= 0)
            continue;
        int32_t end = spec_end_pos(s->kv.cap, s->kv.len, s->gp.max_tokens - s->res.generated_tokens);
        int32_t n = r->propose(r->user, i, s->kv.len, s->cur, s->k_max, end, s->ex.gamma, s->blk.tokens);
        s->blk.n = n < 0 ? 0 : n > s->k_max ? s->k_max : n;
        s->blk.n_ctx = 0;
        for (int32_t j = 0; j < s->blk.n; j++)   /* only a range check: a proposal is never trusted */
            if (s->blk.tokens[j] < 0 || s->blk.tokens[j] >= e->m->config.vocab_size)
                s->blk.n = j;
    }
    e->tot.draft_seconds += util_now() - t0;
}

