/*
 * engine.c - the continuous-batching engine (see engine.h): admission,
 * batched drafting, one full forward pass per step, acceptance, emission,
 * and the measured cost model behind the speculation policy.
 */
#include "engine/engine.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "decode/ngram.h"
#include "decode/sampler.h"
#include "model/backend.h"
#include "util/util.h"

enum { SEQ_FREE, SEQ_PREFILL, SEQ_DECODE };

/* One live sequence. */
typedef struct {
    int state;
    int32_t *prompt;           /* (n_prompt) owned copy */
    int32_t n_prompt, n_prefilled;
    gen_params gp;
    engine_callbacks cb;
    sampler smp;
    kv_cache kv;               /* paged: prompt + max_tokens positions; or the slot's (slot_kv) */
    int borrowed_kv;           /* kv is the caller's (engine_params.slot_kv): not freed here */
    kv_cache scratch;          /* draft scratch (max_draft + 1), when the engine drafts */
    float *q;                  /* (max_draft, draft width) draft distributions (sampling) */
    int q_dev;                 /* this step's layer-draft q rows are on the device (draft_take) */
    int32_t cur;               /* last final token, at position kv.len */
    spec_exit ex;              /* adaptive draft exit */
    float alpha;               /* acceptance-rate estimate (policy) */
    int spec_mode;             /* this sequence drafts: 0 never, 1 by the policy, 2 always */
    spec_block blk;            /* this step's draft (context tokens first) */
    int32_t k_max;             /* this step's draft length cap */
    int drafting;
    /* context drafts (when the engine may draft from context) */
    ngram_index ng;            /* the history: prompt + final tokens */
    int has_ng;
    float alpha_ctx;           /* context drafts' acceptance estimate */
    int32_t ctx_avail;         /* this step: context tokens proposed */
    int32_t ctx_hist;          /* ... of them read from the history itself */
    int32_t plan_ctx, plan_n;  /* this step (ENGINE_AUTO): the choice, context tokens and block length */
    int32_t dtok[SPEC_MAX_DRAFT + 1];   /* a chained draft's first pass: [cur, ctx...] */
    engine_result res;
} eseq;

/* A request waiting for admission. */
typedef struct {
    int32_t *prompt;
    int32_t n_prompt;
    gen_params gp;
    engine_callbacks cb;
    double t_submit;
} ewait;

#define COST_MAX_T 1024
/* Seconds of a pass as a function of its tokens: a table (measured T,
 * interpolated between), learned from the passes; or, once calibrated at
 * start, the calibration's table as the shape times a scale that follows
 * the real passes. */
typedef struct {
    double s[COST_MAX_T + 1];
    uint8_t n[COST_MAX_T + 1];
    int shape_only;
    double scale;
    uint32_t n_scale;
} cost_curve;
#define RATE_BUCKETS 12
#define RATE_MIN_SAMPLES 4       /* steps of each kind before measurements overrule */
#define RATE_EXPLORE 64          /* try the other choice again after this many steps */

struct engine {
    const model *m;
    engine_params p;
    kv_pool pool;              /* the CPU backend's (no engine_params.backend) */
    fwd_state fs;
    cpu_backend cpu;
    model_backend *be;         /* the device: engine_params.backend, else &cpu.b */
    eseq *seqs;                /* (max_seqs) */
    int32_t n_live;
    ewait *wait;               /* FIFO ring of cap_wait */
    int32_t n_wait, head_wait, cap_wait;
    /* drafting, shared by every sequence: mask and pruned head */
    int can_draft;             /* some draft source is on: can_layers || can_ctx */
    int can_layers;            /* layer-skipping drafts (a skip set, sp.draft != context) */
    int can_ctx;               /* context drafts (sp.draft != layers) */
    spec_costs nominal;        /* forced mode's draft-source choice, as gen_selfspec */
    layer_mask mask;
    qmat head;                 /* rows == 0: full head */
    const int32_t *head_tokens;
    int32_t dwidth;
    float *dlogits;            /* (max_seqs, dwidth) */
    float *logits;             /* (max_batch_tokens, vocab) */
    int32_t *am;               /* (max_batch_tokens) argmax of each output row of a full pass */
    samp_req *srq;             /* (max_batch_tokens) their sampling requests (a backend that samples) */
    uint8_t *acc;              /* (max_batch_tokens) test rows: accepted (a backend that samples) */
    int dev_draft;             /* draft tokens are taken on the device (backend.draft_take) */
    samp_req *drq;             /* (max_seqs) a draft pass's requests, */
    int32_t *dslot, *dids;     /* (max_seqs) q slots and tokens, */
    float *dconf;              /* (max_seqs) top-1 probabilities (dev_draft) */
    fwd_seq *batch;            /* (max_seqs) */
    int32_t *bseq;             /* (max_seqs) sequence index of each batch entry */
    /* cost model: seconds of a full pass of T tokens, of a draft pass of n */
    cost_curve full, draft;
    /* what speculation really delivered: tokens emitted per second of pure
     * decode steps, [0] plain and [1] speculating, by log2 of the number of
     * policy sequences; the policy's prediction is overruled by these */
    double rate[2][RATE_BUCKETS];
    uint32_t rate_n[2][RATE_BUCKETS];
    uint32_t since_other[RATE_BUCKETS];   /* steps since the other choice was tried */
    int32_t step_bucket;                  /* this step: the bucket, or -1 (not pure decode) */
    int32_t step_n;                       /* ... its policy sequences */
    int step_spec;
    engine_totals tot;
};

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
    p->calibrate = 1;
}

void engine_params_resolve(engine_params *p, const model_config *c)
{
    if (p->ctx <= 0)
        p->ctx = c->ctx_train > 0 && c->ctx_train < ENGINE_DEFAULT_CTX ? c->ctx_train : ENGINE_DEFAULT_CTX;
}

/* ---- cost model ---- */

static void cost_add(double *tab, uint8_t *cnt, int32_t T, double s)
{
    if (T < 1 || T > COST_MAX_T || !(s > 0))
        return;
    /* the first few samples are averaged, then an EMA follows drift */
    double w = cnt[T] < 4 ? 1.0 / (cnt[T] + 1) : 0.2;
    tab[T] = cnt[T] ? (1 - w) * tab[T] + w * s : s;
    if (cnt[T] < 255)
        cnt[T]++;
}

/* Estimated seconds for T: measured, else interpolated between the nearest
 * measured neighbours, else extrapolated linearly from the two largest. */
static double cost_get(const double *tab, const uint8_t *cnt, int32_t T)
{
    if (T < 1)
        return 0.0;
    if (T > COST_MAX_T)
        T = COST_MAX_T;
    if (cnt[T])
        return tab[T];
    int32_t lo = T - 1, hi = T + 1;
    while (lo >= 1 && !cnt[lo])
        lo--;
    while (hi <= COST_MAX_T && !cnt[hi])
        hi++;
    if (lo >= 1 && hi <= COST_MAX_T)
        return tab[lo] + (tab[hi] - tab[lo]) * (T - lo) / (double)(hi - lo);
    if (lo >= 1) {   /* beyond the largest measured: slope of the last two */
        int32_t lo2 = lo - 1;
        while (lo2 >= 1 && !cnt[lo2])
            lo2--;
        double slope = lo2 >= 1 ? (tab[lo] - tab[lo2]) / (lo - lo2) : tab[lo] / lo;
        return tab[lo] + slope * (T - lo);
    }
    if (hi <= COST_MAX_T)
        return tab[hi] * T / hi;
    return 1e-3 * T;  /* nothing measured yet */
}

/* A pass of T took s seconds. A calibrated curve keeps its table as the
 * shape and follows the passes with one scale: the calibration ran at
 * position 0, real passes attend over hundreds of positions and share the
 * machine, and mixing the two in one table made the few-token steps beyond
 * the last real measurement look nearly free. */
static void curve_observe(cost_curve *c, int32_t T, double s)
{
    if (!c->shape_only) {
        cost_add(c->s, c->n, T, s);
        return;
    }
    double ref = cost_get(c->s, c->n, T);
    if (!(ref > 0) || !(s > 0))
        return;
    double w = c->n_scale < 4 ? 1.0 / (c->n_scale + 1) : 0.1;
    c->scale = c->n_scale ? (1 - w) * c->scale + w * (s / ref) : s / ref;
    if (c->n_scale < UINT32_MAX)
        c->n_scale++;
}

static double curve_get(const cost_curve *c, int32_t T)
{
    double v = cost_get(c->s, c->n, T);
    return c->shape_only && c->n_scale ? v * c->scale : v;
}

void engine_cost_observe(engine *e, int draft, int32_t T, double seconds)
{
    curve_observe(draft ? &e->draft : &e->full, T, seconds);
}

/* Seconds of a pass's decode tokens (d of them, prompt chunks left out):
 * the plain cost a draft is weighed against. Prompt chunks are in the
 * pass whatever the policy decides; charging them to the plain choice
 * would make every extra token look cheap in a prefill step. */
static double plain_cost(const engine *e, int32_t d)
{
    double c = curve_get(&e->full, d);
    return c > 1e-9 ? c : 1e-9;
}

/* What x more tokens add to a pass that already holds T tokens. */
static double extra_cost(const engine *e, int32_t T, int32_t x)
{
    double d = curve_get(&e->full, T + x) - curve_get(&e->full, T);
    return d > 0 ? d : 0;
}

int32_t engine_policy_k(const engine *e, int32_t n_spec, float alpha, int32_t n_other, int32_t d_other,
                        int32_t t_prompt)
{
    if (!e->can_layers || n_spec <= 0)
        return 0;
    int32_t best_k = 0, T0 = d_other + t_prompt + n_spec;
    double base = plain_cost(e, d_other + n_spec), best = (n_spec + n_other) / base;
    for (int32_t k = 1; k <= e->p.sp.max_draft; k++) {
        if (T0 + n_spec * k > e->p.max_batch_tokens)
            break;
        double secs = base + extra_cost(e, T0, n_spec * k) + k * curve_get(&e->draft, n_spec);
        double rate = (n_spec * spec_expected_tokens(alpha, k) + n_other) / secs;
        if (rate > best * SPEC_PAY_MARGIN) {
            best = rate;
            best_k = k;
        }
    }
    return best_k;
}

/* Time a few passes at start: full passes of T tokens, draft passes of n
 * one-token sequences, at position 0 of a throwaway paged cache. */
static int calibrate(engine *e, char *err, size_t errlen)
{
    const model_config *c = &e->m->config;
    int32_t top = e->p.max_batch_tokens < 64 ? e->p.max_batch_tokens : 64;
    kv_cache kv;
    int o = e->be->kv_open(e->be, &kv, top, 0, err, errlen);
    if (o != 0)
        return o < 0 ? -1 : 0;   /* no room: the online estimates will do */
    int32_t *toks = callocCheck((size_t)top, sizeof(int32_t));
    for (int32_t i = 0; i < top; i++)
        toks[i] = (int32_t)((i * 7919u) % (uint32_t)c->vocab_size);
    int rc = 0;
    for (int32_t T = 1; T <= top && rc == 0; T *= 2) {
        for (int rep = 0; rep < 3 && rc == 0; rep++) {
            fwd_seq sq = {.tokens = toks, .n_tokens = T, .pos = 0, .kv = &kv, .logits_from = T - 1};
            double t0 = util_now();
            rc = e->be->forward(e->be, &sq, 1, NULL, NULL, e->logits, NULL, err, errlen);
            if (rep > 0)   /* the first pass warms caches */
                cost_add(e->full.s, e->full.n, T, util_now() - t0);
        }
        if (e->can_layers && T <= e->p.max_seqs && rc == 0) {
            /* T one-token draft sequences sharing the throwaway cache, each
             * at its own position (no two write the same KV row) */
            for (int32_t i = 0; i < T; i++)
                e->batch[i] = (fwd_seq){.tokens = &toks[i], .n_tokens = 1, .pos = i, .kv = &kv,
                                        .logits_from = 0};
            for (int rep = 0; rep < 3 && rc == 0; rep++) {
                double t0 = util_now();
                rc = e->be->forward(e->be, e->batch, T, &e->mask, e->head.rows ? &e->head : NULL, e->dlogits,
                                    NULL, err, errlen);
                if (rep > 0)
                    cost_add(e->draft.s, e->draft.n, T, util_now() - t0);
            }
        }
    }
    free(toks);
    e->be->kv_close(e->be, &kv);
    e->full.shape_only = rc == 0 && e->full.n[1];
    e->draft.shape_only = rc == 0 && e->draft.n[1];
    return rc;
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
    e->seqs = callocCheck((size_t)p->max_seqs, sizeof(eseq));
    e->batch = callocCheck((size_t)p->max_seqs, sizeof(fwd_seq));
    e->bseq = callocCheck((size_t)p->max_seqs, sizeof(int32_t));
    e->logits = mallocCheck((size_t)e->p.max_batch_tokens * m->config.vocab_size * sizeof(float));
    e->am = mallocCheck((size_t)e->p.max_batch_tokens * sizeof(int32_t));
    e->srq = mallocCheck((size_t)e->p.max_batch_tokens * sizeof(samp_req));
    e->acc = mallocCheck((size_t)e->p.max_batch_tokens);
    e->can_layers = p->mode != ENGINE_PLAIN && p->ss != NULL && p->sp.draft != SPEC_DRAFT_CONTEXT && !p->remote;
    e->can_ctx = p->mode != ENGINE_PLAIN && p->sp.draft != SPEC_DRAFT_LAYERS && !p->remote;
    e->can_draft = e->can_layers || e->can_ctx || p->remote;
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
    free(e->am);
    free(e->srq);
    free(e->acc);
    free(e->drq);
    free(e->dslot);
    free(e->dids);
    free(e->dconf);
    backend_cpu_free(&e->cpu);
    free(e->batch);
    free(e->bseq);
    free(e->seqs);
    fwd_state_free(&e->fs);
    kv_pool_free(&e->pool);
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

int engine_pending(const engine *e) { return e->n_live + e->n_wait; }
int engine_live(const engine *e) { return e->n_live; }
int engine_waiting(const engine *e) { return e->n_wait; }
const engine_totals *engine_get_totals(const engine *e) { return &e->tot; }

void engine_kv_usage(const engine *e, int32_t *used, int32_t *total)
{
    e->be->kv_usage(e->be, used, total);
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
        if (e->p.slot_kv) {
            s->kv = e->p.slot_kv[slot];
            s->kv.len = 0;
            s->borrowed_kv = 1;
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
        s->n_prefilled = 0;
        s->gp = w->gp;
        s->cb = w->cb;
        s->ex = (spec_exit){e->p.sp.gamma_init, e->p.sp.ar_init};
        s->alpha = e->p.ss && e->p.ss->speedup > 0 ? 0.8f : 0.7f;
        s->res = (engine_result){.prompt_tokens = w->n_prompt, .t_submit = w->t_submit};
        e->head_wait = (e->head_wait + 1) % e->cap_wait;
        e->n_wait--;
        e->n_live++;
    }
    return 0;
}

/* A match went unused this step: alpha_ctx drifts back (spec_src_idle). */
static void ctx_idle(engine *e, eseq *s)
{
    spec_src_state st = {s->alpha_ctx};
    spec_src_idle(&st, &e->p.sp);
    s->alpha_ctx = st.alpha_ctx;
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
        if (s->state != SEQ_DECODE || s->spec_mode != 1)
            continue;
        int32_t cap = s->k_max < budget ? s->k_max : budget;
        if (cap < 0)
            cap = 0;
        spec_choice ch = spec_choose(e->p.sp.draft, &c, s->alpha_ctx, s->alpha, s->ctx_avail, s->ctx_hist, k, cap,
                                     e->can_layers && k > 0, 0);
        s->plan_ctx = ch.n_ctx;
        s->plan_n = ch.n_ctx + ch.k_layers;
        budget -= s->plan_n;
        want |= s->plan_n > 0;
    }
    return want;
}

/* Decide each decoding sequence's draft cap (and context tokens) for this
 * step. */
static void plan_drafts(engine *e)
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
        s->ctx_hist = 0;
        s->ctx_avail = s->has_ng ? ngram_draft(&s->ng, lim, s->blk.tokens, NULL, &s->ctx_hist) : 0;
        if (s->spec_mode == 2 && e->p.sp.draft != SPEC_DRAFT_LAYERS) {
            /* forced: the source by the nominal rule, exactly as gen_selfspec */
            spec_choice ch = spec_choose(e->p.sp.draft, &e->nominal, s->alpha_ctx, s->ex.ar, s->ctx_avail, s->ctx_hist,
                                         lim, lim, e->can_layers, 1);
            s->blk.n = s->blk.n_ctx = ch.n_ctx;
            s->k_max = ch.n_ctx + ch.k_layers;
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
        if (s->state != SEQ_DECODE || s->spec_mode != 1)
            continue;
        if (!ctx_policy) {
            if (s->k_max > k)
                s->k_max = k;
        } else if (!want) {
            s->k_max = 0;
        } else {
            s->blk.n = s->blk.n_ctx = s->plan_ctx;
            s->k_max = s->plan_n;
        }
        if (ctx_policy && s->ctx_avail > 0 && s->blk.n_ctx == 0)
            ctx_idle(e, s);
    }
}

/* The q slot of draft row `step` of the sequence in slot i. */
static int32_t q_slot(const engine *e, int32_t i, int32_t step) { return i * e->p.sp.max_draft + step; }

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
static int draft(engine *e, char *err, size_t errlen)
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
static void remote_drafts(engine *e)
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

/* Emit one final token of s; returns 1 when s is finished. */
static int emit(eseq *s, int32_t tok)
{
    if (s->has_ng)
        ngram_push(&s->ng, tok);
    s->res.generated_tokens++;
    if (s->res.generated_tokens == 1)
        s->res.t_first = util_now();
    if (s->cb.on_token && s->cb.on_token(s->cb.user, tok)) {
        s->res.finish = ENGINE_FINISH_STOP;
        return 1;
    }
    if (gen_is_stop(&s->gp, tok)) {
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
    if (s->cb.on_done)
        s->cb.on_done(s->cb.user, &s->res);
    seq_release(e, s);
    e->n_live--;
}

/* Record a verification of s that accepted acc of its blk.n draft tokens. */
static void record(engine *e, eseq *s, int32_t acc)
{
    int32_t k = s->blk.n, c = s->blk.n_ctx;
    if (k <= 0)
        return;
    int32_t src = spec_block_source(&s->blk);
    e->tot.src_blocks[src]++;
    e->tot.src_drafted[src] += k;
    e->tot.src_accepted[src] += acc;
    e->tot.num_drafts++;
    e->tot.num_draft_tokens += k;
    e->tot.num_accepted_tokens += acc;
    for (int32_t i = 0; i < acc; i++)
        e->tot.accepted_per_pos[i]++;
    for (int32_t i = 0; i < k; i++)
        e->tot.drafted_per_pos[i]++;
    s->res.drafts++;
    s->res.draft_tokens += k;
    s->res.accepted_tokens += acc;
    /* the exit threshold and alpha_ctx as gen_selfspec (spec_record_block);
     * the layer-skip estimate only from its tokens, when they were tested */
    spec_src_state st = {s->alpha_ctx};
    spec_record_block(NULL, &s->ex, &st, &e->p.sp, &s->blk, acc);
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
    /* the full pass: decode blocks first, then prompt chunks in the budget left */
    int n = 0, any_draft = 0;
    int32_t T = 0;
    for (int32_t i = 0; i < e->p.max_seqs; i++) {
        eseq *s = &e->seqs[i];
        if (s->state != SEQ_DECODE)
            continue;
        any_draft |= s->blk.n > 0;
        e->batch[n] = (fwd_seq){.tokens = NULL, .n_tokens = 1 + s->blk.n, .pos = s->kv.len, .kv = &s->kv,
                                .logits_from = 0};
        e->bseq[n++] = i;
        T += 1 + s->blk.n;
    }
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
    /* decode blocks read [cur, d1..dk]: gather them into one array */
    int32_t *blocks = mallocCheck((size_t)T * sizeof(int32_t));
    int32_t off = 0;
    for (int j = 0; j < n; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        if (s->state == SEQ_DECODE) {
            blocks[off] = s->cur;
            memcpy(blocks + off + 1, s->blk.tokens, (size_t)s->blk.n * sizeof(int32_t));
            e->batch[j].tokens = blocks + off;
        }
        off += e->batch[j].n_tokens;
    }
    /* a pass whose output rows are all greedy needs only their argmax (a
     * device keeps its logits); a sampled sequence's rows need the logits */
    int need_logits = 0;
    for (int j = 0; j < n && !need_logits; j++) {
        eseq *s = &e->seqs[e->bseq[j]];
        need_logits = s->gp.sampling.temperature != 0.0f && e->batch[j].logits_from < e->batch[j].n_tokens;
    }
    /* a backend that samples (a device) draws the sampled rows of plain
     * steps and of first tokens itself: only ids come back. Speculative
     * sampling (a sampled sequence's draft block) needs the rows here. */
    int dev_sample = need_logits && e->be->sample;
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
            s->cur = need_logits ? sampler_sample(&s->smp, row) : *am;
            row += V;
            am++;
            af++;
            s->state = SEQ_DECODE;
            if (emit(s, s->cur))
                finish(e, s);
            continue;
        }
        int32_t acc = 0, next;
        if (dev_sample && s->gp.sampling.temperature != 0.0f) {   /* the device's verdicts */
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
        for (int32_t i = 0; i <= acc && !done; i++)
            done = emit(s, i < acc ? s->blk.tokens[i] : next);
        s->cur = next;
        if (done) {
            finish(e, s);
        } else if (e->p.remote && s->spec_mode) {
            int32_t end = spec_end_pos(s->kv.cap, s->kv.len, s->gp.max_tokens - s->res.generated_tokens);
            e->p.remote->verified(e->p.remote->user, e->bseq[j], s->blk.n, acc, s->kv.len, s->cur,
                                  spec_draft_limit(e->p.sp.max_draft, s->kv.len, end), end, s->ex.gamma);
        }
    }
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
        engine_callbacks cb = {one_token, one_done, &o[i]};
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
            sps->drafted = t->num_draft_tokens;
            sps->accepted = t->num_accepted_tokens;
            sps->verifications = verifications;
            for (int i = 0; i < SPEC_MAX_DRAFT; i++) {
                sps->drafted_at[i] = t->drafted_per_pos[i];
                sps->accepted_at[i] = t->accepted_per_pos[i];
            }
            sps->draft_seconds = t->draft_seconds;
            sps->verify_seconds = st->decode_seconds > t->draft_seconds ? st->decode_seconds - t->draft_seconds : 0;
            sps->final_gamma = o[0].done ? o[0].res.final_gamma : p->sp.gamma_init;
            for (int i = 0; i < SPEC_SRC_N; i++) {
                sps->src_blocks[i] = t->src_blocks[i];
                sps->src_drafted[i] = t->src_drafted[i];
                sps->src_accepted[i] = t->src_accepted[i];
            }
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
