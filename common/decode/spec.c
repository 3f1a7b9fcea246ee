/*
 * spec.c - self-speculative decoding: drafting with skipped sublayers,
 * context drafts and their chaining, verification in one pass, adaptive
 * draft exit, the choice among draft sources (see spec.h).
 */
#include "decode/spec.h"

#include "decode/ngram.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "util/util.h"

void spec_params_default(spec_params *p)
{
    p->gamma_init = 0.6f;
    p->max_draft = 12;
    p->ar_target = 0.9f;
    p->gamma_step = 0.01f;
    p->gamma_ema = 0.9f;
    p->ar_decay = 0.5f;
    p->ar_init = 0.9f;
    p->draft = SPEC_DRAFT_LAYERS;
    p->ngram_min = 1;
    p->ngram_max = 3;
    p->ctx_alpha_init = 0.6f;
    p->token_cost = 0.2f;
    p->draft_cost = 0.0f;
}

void spec_params_apply_exit(spec_params *p, const skip_exit *e, unsigned given)
{
    if (!e)
        return;
    if (!isnan(e->gamma_init) && !(given & SPEC_GIVEN_GAMMA_INIT))
        p->gamma_init = e->gamma_init;
    if (!isnan(e->gamma_step) && !(given & SPEC_GIVEN_GAMMA_STEP))
        p->gamma_step = e->gamma_step;
    if (!isnan(e->gamma_ema) && !(given & SPEC_GIVEN_GAMMA_EMA))
        p->gamma_ema = e->gamma_ema;
    if (!isnan(e->ar_init) && !(given & SPEC_GIVEN_AR_INIT))
        p->ar_init = e->ar_init;
}

void spec_params_to_exit(const spec_params *p, skip_exit *e)
{
    *e = (skip_exit){p->gamma_init, p->gamma_step, p->gamma_ema, p->ar_init};
}

int spec_parse_draft(const char *s, int32_t *out)
{
    static const char *names[] = {"layers", "context", "chain", "auto"};
    for (int32_t i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    return -1;
}

const char *spec_draft_name(int32_t kind)
{
    return kind == SPEC_DRAFT_CONTEXT ? "context" : kind == SPEC_DRAFT_CHAIN ? "chain"
         : kind == SPEC_DRAFT_AUTO ? "auto" : "layers";
}

int spec_params_check(const spec_params *p, char *err, size_t errlen)
{
    if (p->max_draft < 1 || p->max_draft > SPEC_MAX_DRAFT)
        return util_err(err, errlen, "max draft length must be in [1, %d], got %d", SPEC_MAX_DRAFT, p->max_draft);
    if (!(p->gamma_init >= 0.0f && p->gamma_init <= 1.0f))
        return util_err(err, errlen, "draft exit threshold must be in [0, 1], got %g", p->gamma_init);
    if (!(p->ar_target > 0.0f && p->ar_target <= 1.0f) || !(p->gamma_step >= 0.0f && p->gamma_step < 1.0f) ||
        !(p->gamma_ema >= 0.0f && p->gamma_ema <= 1.0f) || !(p->ar_decay >= 0.0f && p->ar_decay <= 1.0f) ||
        !(p->ar_init >= 0.0f && p->ar_init <= 1.0f))
        return util_err(err, errlen, "adaptive exit constants out of range");
    if (p->draft < SPEC_DRAFT_LAYERS || p->draft > SPEC_DRAFT_AUTO)
        return util_err(err, errlen, "unknown draft source %d", p->draft);
    if (ngram_params_check(p->ngram_min, p->ngram_max, err, errlen) != 0)
        return -1;
    if (!(p->ctx_alpha_init >= 0.0f && p->ctx_alpha_init <= 1.0f) || !(p->token_cost >= 0.0f && p->token_cost <= 10.0f) ||
        !(p->draft_cost >= 0.0f && p->draft_cost <= 10.0f))
        return util_err(err, errlen, "context-draft constants out of range");
    return 0;
}

void spec_exit_update(spec_exit *e, const spec_params *p, int32_t drafted, int32_t accepted)
{
    if (drafted <= 0)
        return;
    e->ar = p->ar_decay * e->ar + (1.0f - p->ar_decay) * (float)accepted / (float)drafted;
    float target;
    if (e->ar < p->ar_target)
        target = e->gamma + p->gamma_step;           /* too many rejections: draft less */
    else if (drafted == p->max_draft)
        target = e->gamma;                           /* at the length cap already */
    else
        target = e->gamma - p->gamma_step;           /* doing well: draft longer */
    e->gamma = p->gamma_ema * e->gamma + (1.0f - p->gamma_ema) * target;
    e->gamma = fminf(fmaxf(e->gamma, 0.0f), 1.0f);
}

int spec_drafter_init(spec_drafter *d, const model *m, const skip_set *ss, int32_t max_draft,
                      char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    d->m = m;
    skipset_mask(ss, &d->mask);
    d->width = m->config.vocab_size;
    if (ss->n_head_tokens > 0) {
        if (qmat_gather(&m->w.output, ss->head_tokens, ss->n_head_tokens, &d->head) != 0) {
            skipset_mask_free(&d->mask);
            return util_err(err, errlen, "cannot build a draft head of %d tokens", ss->n_head_tokens);
        }
        d->head_tokens = ss->head_tokens;
        d->width = ss->n_head_tokens;
    }
    if (kv_init(&d->scratch, &m->config, max_draft + 1, err, errlen) != 0) {
        spec_drafter_free(d);
        return -1;
    }
    d->logits = mallocCheck((size_t)d->width * sizeof(float));
    d->q = mallocCheck((size_t)max_draft * d->width * sizeof(float));
    return 0;
}

void spec_drafter_free(spec_drafter *d)
{
    skipset_mask_free(&d->mask);
    if (d->head.rows)
        qmat_free_owned(&d->head);
    kv_free(&d->scratch);
    free(d->logits);
    free(d->q);
    memset(d, 0, sizeof *d);
}

int spec_draft(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t L, int32_t cur, int32_t k_max,
               float gamma, sampler *smp, spec_block *out, char *err, size_t errlen)
{
    return spec_draft_from(d, fs, kv, L, L, cur, k_max, gamma, smp, out, err, errlen);
}

float spec_draft_token(const float *row, int32_t width, sampler *smp, float *q, int32_t *index)
{
    float conf = sampler_top1_prob(row, width, index);
    if (q) {
        sampler_probs(smp, row, width, q);
        *index = sampler_draw(smp, q, width);
    }
    return conf;
}

/* Append the draft token of the logits in d->logits to out (q row
 * out->n - out->n_ctx under sampling); returns its top-1 probability. */
static float take_token(spec_drafter *d, sampler *smp, spec_block *out)
{
    int32_t j;
    float *q = smp->p.temperature != 0.0f ? d->q + (size_t)(out->n - out->n_ctx) * d->width : NULL;
    float conf = spec_draft_token(d->logits, d->width, smp, q, &j);
    spec_block_push(out, d->head_tokens, j);
    return conf;
}

static int draft_pass(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t base, int32_t pos,
                      const int32_t *toks, int32_t n, char *err, size_t errlen)
{
    fwd_seq sq = {.tokens = toks, .n_tokens = n, .pos = pos, .kv = kv,
                  .scratch = &d->scratch, .scratch_base = base, .logits_from = n - 1};
    return model_forward(d->m, fs, &sq, 1, &d->mask, d->head.rows ? &d->head : NULL, d->logits, err, errlen);
}

int spec_draft_from(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t base, int32_t L, int32_t cur,
                    int32_t k_max, float gamma, sampler *smp, spec_block *out, char *err, size_t errlen)
{
    assert(base <= L && L - base + k_max <= d->scratch.cap - 1 && k_max <= SPEC_MAX_DRAFT);
    int32_t tok = cur;
    out->n = 0;
    out->n_ctx = 0;
    for (int32_t i = 0; i < k_max; i++) {
        if (draft_pass(d, fs, kv, base, L + i, &tok, 1, err, errlen) != 0)
            return -1;
        float conf = take_token(d, smp, out);
        tok = out->tokens[i];
        if (spec_exit_now(conf, gamma))
            break;
    }
    return 0;
}

int spec_draft_chain(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t L, int32_t cur, int32_t n_max,
                     float gamma, sampler *smp, spec_block *b, char *err, size_t errlen)
{
    int32_t c = b->n_ctx;
    if (c == 0)
        return spec_draft(d, fs, kv, L, cur, n_max, gamma, smp, b, err, errlen);
    assert(b->n == c && n_max <= d->scratch.cap - 1 && n_max <= SPEC_MAX_DRAFT);
    if (n_max <= c)
        return 0;
    /* one pass over [cur, ctx_1..ctx_c]: the scratch holds the context
     * tokens' draft KV, the last row drafts the token after them */
    int32_t toks[SPEC_MAX_DRAFT + 1];
    toks[0] = cur;
    memcpy(toks + 1, b->tokens, (size_t)c * sizeof(int32_t));
    if (draft_pass(d, fs, kv, L, L, toks, c + 1, err, errlen) != 0)
        return -1;
    for (;;) {
        float conf = take_token(d, smp, b);
        if (b->n >= n_max || spec_exit_now(conf, gamma))
            return 0;
        if (draft_pass(d, fs, kv, L, L + b->n, &b->tokens[b->n - 1], 1, err, errlen) != 0)
            return -1;
    }
}

/* Speculative-sampling test of draft token i against the full model's
 * distribution p (vocab). Returns 1 if accepted; else draws the
 * replacement from norm(max(0, p - q)) into *next and returns 0. */
static int accept_sampled(const spec_qdist *qd, sampler *smp, float *p, int32_t V, int32_t i,
                          const spec_block *b, int32_t *next)
{
    if (i < b->n_ctx) {
        /* a context token: q is one-hot at x, so min(1, p(x)/1) and the
         * residual max(0, p - q) is p with x removed */
        int32_t x = b->tokens[i];
        if (sampler_uniform(smp) < p[x])
            return 1;
        p[x] = 0.0f;
        double sum = 0.0;
        for (int32_t t = 0; t < V; t++)
            sum += p[t];
        if (sum <= 0.0) {   /* p(x) == 1 (rounding): x is the only choice */
            *next = x;
            return 0;
        }
        for (int32_t t = 0; t < V; t++)
            p[t] = (float)(p[t] / sum);
        *next = sampler_draw(smp, p, V);
        return 0;
    }
    const float *q = qd->q + (size_t)(i - b->n_ctx) * qd->width;
    float qx = q[b->q_index[i]], px = p[b->tokens[i]];
    if (sampler_uniform(smp) * qx < px)
        return 1;
    /* residual: p - q where q is nonzero (q lives on the head's rows) */
    for (int32_t j = 0; j < qd->width; j++) {
        int32_t tok = qd->head_tokens ? qd->head_tokens[j] : j;
        p[tok] = fmaxf(0.0f, p[tok] - q[j]);
    }
    double sum = 0.0;
    for (int32_t x = 0; x < V; x++)
        sum += p[x];
    if (sum <= 0.0) {   /* p == q: any draw from p is right; p is lost, so take the draft */
        *next = b->tokens[i];
        return 0;
    }
    for (int32_t x = 0; x < V; x++)
        p[x] = (float)(p[x] / sum);
    *next = sampler_draw(smp, p, V);
    return 0;
}

int spec_verify(const model *m, fwd_state *fs, kv_cache *kv, int32_t cur, const spec_block *b,
                const spec_drafter *d, sampler *smp, float *logits, int32_t *accepted, int32_t *next,
                char *err, size_t errlen)
{
    int32_t k = b->n, L = kv->len;
    int32_t toks[SPEC_MAX_DRAFT + 1];
    toks[0] = cur;
    memcpy(toks + 1, b->tokens, (size_t)k * sizeof(int32_t));
    fwd_seq sq = {.tokens = toks, .n_tokens = k + 1, .pos = L, .kv = kv, .logits_from = 0};
    if (model_forward(m, fs, &sq, 1, NULL, NULL, logits, err, errlen) != 0)
        return -1;
    spec_qdist qd = {d ? d->q : NULL, d ? d->width : 0, d ? d->head_tokens : NULL};
    spec_accept(m->config.vocab_size, logits, b, &qd, smp, accepted, next);
    kv->len = L + *accepted + 1;
    return 0;
}

void spec_accept_ids(const int32_t *ids, const spec_block *b, int32_t *accepted, int32_t *next)
{
    int32_t n = 0;
    while (n < b->n && ids[n] == b->tokens[n])
        n++;
    *accepted = n;
    *next = ids[n];
}

void spec_accept(int32_t V, float *logits, const spec_block *b, const spec_qdist *qd, sampler *smp,
                 int32_t *accepted, int32_t *next)
{
    int32_t n = 0, k = b->n;
    if (smp->p.temperature == 0.0f) {
        while (n < k && sampler_argmax(logits + (size_t)n * V, V) == b->tokens[n])
            n++;
        *next = sampler_argmax(logits + (size_t)n * V, V);
    } else {
        for (;; n++) {
            sampler_probs(smp, logits + (size_t)n * V, V, smp->probs);
            if (n == k) {
                *next = sampler_draw(smp, smp->probs, V);   /* bonus token from p */
                break;
            }
            if (!accept_sampled(qd, smp, smp->probs, V, n, b, next))
                break;
        }
    }
    *accepted = n;
}

int spec_emit(const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st, int32_t tok)
{
    st->generated_tokens++;
    return emit(ctx, tok) || gen_is_stop(gp, tok) || st->generated_tokens >= gp->max_tokens;
}

int spec_emit_block(const spec_block *b, int32_t accepted, int32_t next, const gen_params *gp,
                    gen_emit_fn emit, void *ctx, gen_stats *st, int32_t *out, int32_t *n_out)
{
    int32_t n = 0;
    int stop = 0;
    for (int32_t i = 0; i <= accepted && !stop; i++) {
        int32_t tok = i < accepted ? b->tokens[i] : next;
        if (out)
            out[n] = tok;
        n++;
        stop = spec_emit(gp, emit, ctx, st, tok);
    }
    if (n_out)
        *n_out = n;
    return stop;
}

int spec_begin(const model *m, fwd_state *fs, kv_cache *kv, sampler *smp, const int32_t *prompt,
               int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st,
               float *logits, int32_t *cur, double *t_decode, char *err, size_t errlen)
{
    double t0 = util_now();
    if (gen_prefill(m, fs, kv, prompt, n_prompt, logits, err, errlen) != 0)
        return -1;
    st->prompt_tokens = n_prompt;
    *t_decode = util_now();
    st->prefill_seconds = *t_decode - t0;
    *cur = sampler_sample(smp, logits);
    return spec_emit(gp, emit, ctx, st, *cur);
}

void spec_counts_add(spec_counts *c, const spec_block *b, int32_t accepted)
{
    assert(accepted >= 0 && accepted <= b->n);
    if (b->n <= 0)
        return;
    int32_t s = spec_block_source(b);
    c->num_drafts++;
    c->num_draft_tokens += b->n;
    c->num_accepted_tokens += accepted;
    for (int32_t i = 0; i < (b->tree_depth > 0 ? b->tree_depth : b->n); i++)   /* a tree: by depth */
        c->drafted_per_pos[i]++;
    for (int32_t i = 0; i < accepted; i++)
        c->accepted_per_pos[i]++;
    c->src_blocks[s]++;
    c->src_drafted[s] += b->n;
    c->src_accepted[s] += accepted;
}

float spec_alpha_update(float a, int32_t drafted, int32_t accepted)
{
    return drafted > 0 ? 0.7f * a + 0.3f * (float)accepted / (float)drafted : a;
}

void spec_src_idle(spec_src_state *src, const spec_params *sp)
{
    src->alpha_ctx += 0.02f * (sp->ctx_alpha_init - src->alpha_ctx);
}

void spec_record_block(spec_stats *ss, spec_exit *ex, spec_src_state *src, const spec_params *sp,
                       const spec_block *b, int32_t accepted)
{
    int32_t c = b->n_ctx, k = b->n - c;
    if (ss) {
        ss->verifications++;
        spec_counts_add(&ss->counts, b, accepted);
    }
    if (c > 0)
        src->alpha_ctx = spec_alpha_update(src->alpha_ctx, c, accepted < c ? accepted : c);
    if (k > 0 && accepted >= c)   /* the drafter's tokens were tested */
        spec_exit_update(ex, sp, k, accepted - c);
}

double spec_expected_tokens(double a, int32_t k)
{
    double s = 1.0, t = 1.0;
    for (int32_t i = 0; i < k; i++)
        s += (t *= a);
    return s;
}

spec_choice spec_choose(int32_t kind, const spec_costs *c, float alpha_ctx, float alpha_layers,
                        int32_t n_ctx_avail, int32_t n_ctx_hist, int32_t k_layers, int32_t lim, int can_layers,
                        int force)
{
    spec_choice best = {0, 0, 0.0};
    if (lim < 0)
        lim = 0;
    n_ctx_avail = n_ctx_avail < 0 ? 0 : n_ctx_avail > lim ? lim : n_ctx_avail;
    n_ctx_hist = n_ctx_hist < 0 ? 0 : n_ctx_hist > n_ctx_avail ? n_ctx_avail : n_ctx_hist;
    k_layers = !can_layers || k_layers < 0 ? 0 : k_layers > lim ? lim : k_layers;
    double plain = c->n_base / c->base, best_rate = plain * SPEC_PAY_MARGIN, more = c->n_base - 1.0;
    if (force && kind != SPEC_DRAFT_AUTO) {
        if (kind == SPEC_DRAFT_LAYERS || (kind == SPEC_DRAFT_CHAIN && n_ctx_avail == 0)) {
            best.k_layers = k_layers;
        } else if (kind == SPEC_DRAFT_CONTEXT || !can_layers) {
            /* context: the length with the best rate, at least one token */
            best.n_ctx = n_ctx_avail > 0;
            for (int32_t x = 1, r0 = 0; x <= n_ctx_avail; x++) {
                double r = (more + spec_expected_tokens(alpha_ctx, x)) / (c->base + c->extra[x]);
                if (!r0 || r > best_rate)
                    best_rate = r, best.n_ctx = x, r0 = 1;
            }
        } else {   /* chain: the tokens the history shows, then the drafter */
            best = (spec_choice){n_ctx_hist, lim - n_ctx_hist, 0.0};
        }
        return best;
    }
    int ctx_ok = kind == SPEC_DRAFT_CONTEXT || kind == SPEC_DRAFT_AUTO;
    int lay_ok = kind == SPEC_DRAFT_LAYERS || kind == SPEC_DRAFT_AUTO || (kind == SPEC_DRAFT_CHAIN && !n_ctx_avail);
    int chain_ok = kind == SPEC_DRAFT_CHAIN || kind == SPEC_DRAFT_AUTO;
    for (int32_t x = 1; (ctx_ok || chain_ok) && x <= n_ctx_avail; x++) {
        /* x context tokens alone (for a chain: its k = 0) */
        double e_ctx = spec_expected_tokens(alpha_ctx, x), r = (more + e_ctx) / (c->base + c->extra[x]);
        if (r > best_rate)
            best_rate = r, best = (spec_choice){x, 0, 0.0};
        /* then k drafted tokens, tested only when all x were accepted */
        double all = pow(alpha_ctx, x);
        for (int32_t k = 1; chain_ok && k <= k_layers && x + k <= lim; k++) {
            double e = e_ctx + all * (spec_expected_tokens(alpha_layers, k) - 1.0);
            r = (more + e) / (c->base + c->extra[x + k] + k * c->draft);
            if (r > best_rate)
                best_rate = r, best = (spec_choice){x, k, 0.0};
        }
    }
    for (int32_t k = 1; lay_ok && k <= k_layers; k++) {
        double r = (more + spec_expected_tokens(alpha_layers, k)) / (c->base + c->extra[k] + k * c->draft);
        if (r > best_rate)
            best_rate = r, best = (spec_choice){0, k, 0.0};
    }
    best.rate = best_rate;
    return best;
}

void spec_nominal_costs(const spec_params *sp, const skip_set *ss, spec_costs *c)
{
    memset(c, 0, sizeof *c);
    c->base = 1.0;
    c->n_base = 1.0;
    for (int32_t x = 0; x <= SPEC_MAX_DRAFT; x++)
        c->extra[x] = sp->token_cost * x;
    double d = sp->draft_cost;
    if (d <= 0.0 && ss && ss->n_layers > 0) {
        int32_t kept = 0;
        for (int32_t l = 0; l < ss->n_layers; l++)
            kept += !ss->attn_skip[l] + !ss->mlp_skip[l];
        d = (double)kept / (2.0 * ss->n_layers);
    }
    c->draft = d > 0.05 ? d : 0.05;
}

int32_t spec_end_pos(int32_t cap, int32_t pos, int32_t tokens_left)
{
    int32_t end = pos + tokens_left - 1;
    return end < cap - 2 ? end : cap - 2;
}

int32_t spec_draft_limit(int32_t k_max, int32_t pos, int32_t end_pos)
{
    int32_t k = k_max < end_pos - pos ? k_max : end_pos - pos;
    return k > 0 ? k : 0;
}
