/*
 * spec.c - self-speculative decoding: drafting with skipped sublayers,
 * verification in one pass, adaptive draft exit (see spec.h).
 */
#include "decode/spec.h"

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
}

int spec_params_check(const spec_params *p, char *err, size_t errlen)
{
    if (p->max_draft < 1 || p->max_draft > SPEC_MAX_DRAFT)
        return util_err(err, errlen, "max draft length must be in [1, %d], got %d", SPEC_MAX_DRAFT, p->max_draft);
    if (!(p->gamma_init >= 0.0f && p->gamma_init <= 1.0f))
        return util_err(err, errlen, "draft exit threshold must be in [0, 1], got %g", p->gamma_init);
    if (!(p->ar_target > 0.0f && p->ar_target <= 1.0f) || !(p->gamma_step >= 0.0f && p->gamma_step < 1.0f) ||
        !(p->gamma_ema >= 0.0f && p->gamma_ema <= 1.0f) || !(p->ar_decay >= 0.0f && p->ar_decay <= 1.0f))
        return util_err(err, errlen, "adaptive exit constants out of range");
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

int spec_draft_from(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t base, int32_t L, int32_t cur,
                    int32_t k_max, float gamma, sampler *smp, spec_block *out, char *err, size_t errlen)
{
    assert(base <= L && L - base + k_max <= d->scratch.cap - 1 && k_max <= SPEC_MAX_DRAFT);
    int greedy = smp->p.temperature == 0.0f;
    int32_t tok = cur;
    out->n = 0;
    for (int32_t i = 0; i < k_max; i++) {
        fwd_seq sq = {.tokens = &tok, .n_tokens = 1, .pos = L + i, .kv = kv,
                      .scratch = &d->scratch, .scratch_base = base, .logits_from = 0};
        if (model_forward(d->m, fs, &sq, 1, &d->mask, d->head.rows ? &d->head : NULL, d->logits,
                          err, errlen) != 0)
            return -1;
        int32_t j;
        float conf = sampler_top1_prob(d->logits, d->width, &j);
        if (!greedy) {
            float *q = d->q + (size_t)i * d->width;
            sampler_probs(smp, d->logits, d->width, q);
            j = sampler_draw(smp, q, d->width);
        }
        tok = d->head_tokens ? d->head_tokens[j] : j;
        out->tokens[i] = tok;
        out->q_index[i] = j;
        out->n++;
        if (conf < gamma)
            break;
    }
    return 0;
}

/* Speculative-sampling test of draft token i against the full model's
 * distribution p (vocab). Returns 1 if accepted; else draws the
 * replacement from norm(max(0, p - q)) into *next and returns 0. */
static int accept_sampled(const spec_qdist *qd, sampler *smp, float *p, int32_t V, int32_t i,
                          const spec_block *b, int32_t *next)
{
    const float *q = qd->q + (size_t)i * qd->width;
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

void spec_record(spec_stats *ss, spec_exit *ex, const spec_params *sp, int32_t drafted, int32_t accepted)
{
    ss->verifications++;
    if (drafted <= 0)
        return;
    ss->drafted += drafted;
    ss->accepted += accepted;
    for (int32_t i = 0; i < drafted; i++)
        ss->drafted_at[i]++;
    for (int32_t i = 0; i < accepted; i++)
        ss->accepted_at[i]++;
    spec_exit_update(ex, sp, drafted, accepted);
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

int spec_begin_run(spec_run *r, const int32_t *prompt, int32_t n_prompt, double *t_decode, char *err, size_t errlen)
{
    r->ex = (spec_exit){r->sp->gamma_init, r->sp->ar_init};
    return spec_begin(r->m, r->fs, r->kv, r->smp, prompt, n_prompt, r->gp, r->emit, r->ctx, r->st, r->logits,
                      &r->cur, t_decode, err, errlen);
}

int spec_step(spec_run *r, const spec_block *b, double t_draft, int32_t *accepted, char *err, size_t errlen)
{
    double tb = util_now();
    int32_t acc, next;
    if (spec_verify(r->m, r->fs, r->kv, r->cur, b, r->d, r->smp, r->logits, &acc, &next, err, errlen) != 0)
        return -1;
    r->ss->draft_seconds += tb - t_draft;
    r->ss->verify_seconds += util_now() - tb;
    spec_record(r->ss, &r->ex, r->sp, b->n, acc);
    int stop = spec_emit_block(b, acc, next, r->gp, r->emit, r->ctx, r->st, NULL, NULL);
    r->cur = next;
    if (accepted)
        *accepted = acc;
    return stop;
}

int gen_selfspec(const model *m, fwd_state *fs, kv_cache *kv, const skip_set *ss, const spec_params *sp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                 void *ctx, gen_stats *st, spec_stats *ss_out, char *err, size_t errlen)
{
    int rc = -1;
    sampler smp;
    spec_drafter d;
    memset(st, 0, sizeof *st);
    memset(ss_out, 0, sizeof *ss_out);
    if (spec_params_check(sp, err, errlen) != 0 ||
        sampler_init(&smp, &gp->sampling, m->config.vocab_size, err, errlen) != 0)
        return -1;
    if (spec_drafter_init(&d, m, ss, sp->max_draft, err, errlen) != 0)
        goto free_sampler;
    float *logits = mallocCheck((size_t)(SPEC_MAX_DRAFT + 1) * m->config.vocab_size * sizeof(float));
    spec_run r = {.m = m, .fs = fs, .kv = kv, .sp = sp, .d = &d, .smp = &smp, .logits = logits,
                  .gp = gp, .emit = emit, .ctx = ctx, .st = st, .ss = ss_out};
    double t1;
    int stop = spec_begin_run(&r, prompt, n_prompt, &t1, err, errlen);
    if (stop < 0)
        goto free_all;
    while (!stop) {
        int32_t L = kv->len;
        if (L + 1 >= kv->cap) {
            fprintf(stderr, "selfspec: context full after %d tokens; stopping\n", L + 1);
            break;
        }
        int32_t k_max = spec_draft_limit(sp->max_draft, L, spec_end_pos(kv->cap, L, gp->max_tokens - st->generated_tokens));
        spec_block b = {0};
        double ta = util_now();
        if (k_max > 0 && spec_draft(&d, fs, kv, L, r.cur, k_max, r.ex.gamma, &smp, &b, err, errlen) != 0)
            goto free_all;
        if ((stop = spec_step(&r, &b, ta, NULL, err, errlen)) < 0)
            goto free_all;
    }
    st->decode_seconds = util_now() - t1;
    ss_out->final_gamma = r.ex.gamma;
    rc = 0;
free_all:
    free(logits);
    spec_drafter_free(&d);
free_sampler:
    sampler_free(&smp);
    return rc;
}
