/*
 * engine_cost.c - the engine's measured cost model (engine_impl.h): seconds
 * of a full pass as a function of its tokens and of a draft pass as a
 * function of the sequences drafting, calibrated briefly at start and then
 * updated from every pass; and the joint layer-draft length it implies
 * (engine_policy_k).
 */
#include "engine/engine_impl.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "util/util.h"

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
void curve_observe(cost_curve *c, int32_t T, double s)
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

double curve_get(const cost_curve *c, int32_t T)
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
double plain_cost(const engine *e, int32_t d)
{
    double c = curve_get(&e->full, d);
    return c > 1e-9 ? c : 1e-9;
}

/* What x more tokens add to a pass that already holds T tokens. */
double extra_cost(const engine *e, int32_t T, int32_t x)
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
int calibrate(engine *e, char *err, size_t errlen)
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

