/*
 * oracle.c - the sequential reference loops (oracle.h).
 */
#include "oracle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode/ngram.h"
#include "decode/sampler.h"
#include "util/util.h"

int gen_plain(const model *m, fwd_state *s, kv_cache *kv, const int32_t *prompt, int32_t n_prompt,
              const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st,
              char *err, size_t errlen)
{
    int rc = -1;
    sampler smp;
    memset(st, 0, sizeof *st);
    if (sampler_init(&smp, &gp->sampling, m->config.vocab_size, err, errlen) != 0)
        return -1;
    float *logits = mallocCheck((size_t)m->config.vocab_size * sizeof(float));
    double t0 = util_now();
    if (gen_prefill(m, s, kv, prompt, n_prompt, logits, err, errlen) != 0)
        goto out;
    st->prompt_tokens = n_prompt;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    for (int32_t i = 0; i < gp->max_tokens; i++) {
        int32_t tok = sampler_sample(&smp, logits);
        st->generated_tokens++;
        if (emit(ctx, tok) || gen_is_stop(gp, tok) || i + 1 == gp->max_tokens)
            break;
        if (kv->len + 1 >= kv->cap) {
            fprintf(stderr, "selfspec: context full after %d tokens; stopping\n", kv->len + 1);
            break;
        }
        fwd_seq sq = {.tokens = &tok, .n_tokens = 1, .pos = kv->len, .kv = kv, .logits_from = 0};
        if (model_forward(m, s, &sq, 1, NULL, NULL, logits, err, errlen) != 0)
            goto out;
        kv->len++;
    }
    st->decode_seconds = util_now() - t1;
    rc = 0;
out:
    free(logits);
    sampler_free(&smp);
    return rc;
}

int spec_begin_run(spec_run *r, const int32_t *prompt, int32_t n_prompt, double *t_decode, char *err, size_t errlen)
{
    r->ex = (spec_exit){r->sp->gamma_init, r->sp->ar_init};
    r->src = (spec_src_state){r->sp->ctx_alpha_init};
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
    spec_record_block(r->ss, &r->ex, &r->src, r->sp, b, acc);
    int stop = spec_emit_block(b, acc, next, r->gp, r->emit, r->ctx, r->st, NULL, NULL);
    r->cur = next;
    if (accepted)
        *accepted = acc;
    return stop;
}

/* gen_selfspec's emit: every final token enters the context index first. */
typedef struct {
    gen_emit_fn emit;
    void *ctx;
    ngram_index *ng;
} ctx_emit;

static int ctx_emit_token(void *user, int32_t tok)
{
    ctx_emit *c = user;
    if (c->ng)
        ngram_push(c->ng, tok);
    return c->emit(c->ctx, tok);
}

int gen_selfspec(const model *m, fwd_state *fs, kv_cache *kv, const skip_set *ss, const spec_params *sp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                 void *ctx, gen_stats *st, spec_stats *ss_out, char *err, size_t errlen)
{
    int rc = -1;
    sampler smp;
    spec_drafter d;
    memset(&d, 0, sizeof d);
    memset(st, 0, sizeof *st);
    memset(ss_out, 0, sizeof *ss_out);
    if (spec_params_check(sp, err, errlen) != 0)
        return -1;
    int can_layers = ss != NULL && sp->draft != SPEC_DRAFT_CONTEXT;
    int can_ctx = sp->draft != SPEC_DRAFT_LAYERS;
    if (!ss && !can_ctx)
        return util_err(err, errlen, "layer-skipping drafts need a skip set");
    if (sampler_init(&smp, &gp->sampling, m->config.vocab_size, err, errlen) != 0)
        return -1;
    if (can_layers && spec_drafter_init(&d, m, ss, sp->max_draft, err, errlen) != 0)
        goto free_sampler;
    ngram_index ng;
    if (can_ctx) {
        ngram_init(&ng, sp->ngram_min, sp->ngram_max);
        ngram_push_many(&ng, prompt, n_prompt);
    }
    ctx_emit ce = {emit, ctx, can_ctx ? &ng : NULL};
    spec_costs nominal;
    spec_nominal_costs(sp, ss, &nominal);
    float *logits = mallocCheck((size_t)(SPEC_MAX_DRAFT + 1) * m->config.vocab_size * sizeof(float));
    spec_run r = {.m = m, .fs = fs, .kv = kv, .sp = sp, .d = can_layers ? &d : NULL, .smp = &smp,
                  .logits = logits, .gp = gp, .emit = ctx_emit_token, .ctx = &ce, .st = st, .ss = ss_out};
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
        int32_t hist = 0, avail = can_ctx ? ngram_draft(&ng, k_max, b.tokens, NULL, &hist) : 0;
        spec_choice ch = spec_choose(sp->draft, &nominal, r.src.alpha_ctx, r.ex.ar, avail, hist, k_max, k_max,
                                     can_layers, 1);
        b.n = b.n_ctx = ch.n_ctx;
        if (avail > 0 && ch.n_ctx == 0)
            spec_src_idle(&r.src, sp);
        if (ch.k_layers > 0 &&
            spec_draft_chain(&d, fs, kv, L, r.cur, ch.n_ctx + ch.k_layers, r.ex.gamma, &smp, &b, err, errlen) != 0)
            goto free_all;
        if ((stop = spec_step(&r, &b, ta, NULL, err, errlen)) < 0)
            goto free_all;
    }
    st->decode_seconds = util_now() - t1;
    ss_out->final_gamma = r.ex.gamma;
    rc = 0;
free_all:
    free(logits);
    if (can_ctx)
        ngram_free(&ng);
    if (can_layers)
        spec_drafter_free(&d);
free_sampler:
    sampler_free(&smp);
    return rc;
}
