/*
 * sampler.c - greedy / temperature / top-k / top-p sampling (see sampler.h).
 */
#include "decode/sampler.h"

#include <assert.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util/util.h"

/* qsort context-free comparison: order ids by descending logit, ties by id. */
typedef struct {
    float v;
    int32_t id;
} scored;

int sampler_params_check(const sampler_params *p, char *err, size_t errlen)
{
    if (!(p->temperature >= 0.0f) || p->temperature > 100.0f)
        return util_err(err, errlen, "temperature must be in [0, 100], got %g", p->temperature);
    if (p->top_k < 0)
        return util_err(err, errlen, "top-k must be >= 0 (0 = off), got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return util_err(err, errlen, "top-p must be in (0, 1], got %g", p->top_p);
    return 0;
}

int sampler_init(sampler *s, const sampler_params *p, int32_t n_vocab, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (sampler_params_check(p, err, errlen) != 0)
        return -1;
    s->p = *p;
    s->rng = p->seed ^ 0x9E3779B97F4A7C15ull;
    s->n_vocab = n_vocab;
    s->probs = mallocCheck((size_t)n_vocab * sizeof(float));
    s->order = mallocCheck((size_t)n_vocab * sizeof(int32_t));
    s->cand = mallocCheck((size_t)n_vocab * sizeof(scored));
    return 0;
}

void sampler_free(sampler *s)
{
    free(s->probs);
    free(s->order);
    free(s->cand);
    memset(s, 0, sizeof *s);
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float sampler_uniform(sampler *s)
{
    return (float)(splitmix64(&s->rng) >> 40) * (1.0f / 16777216.0f);
}

int32_t sampler_argmax(const float *logits, int32_t n)
{
    return model_argmax(logits, n);
}

void sampler_logprobs(const float *logits, int32_t n, int32_t token, int32_t n_top, sampler_logprob *out)
{
    assert(token >= 0 && token < n && n_top >= 0 && n_top <= SAMPLER_MAX_TOP_LOGPROBS);
    float mx = logits[model_argmax(logits, n)];
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    out->token = token;
    out->logprob = (float)(logits[token] - lse);
    if (n_top > n)
        n_top = n;
    out->n_top = n_top;
    /* the n_top largest by insertion (n_top <= 20): larger first, ties to the smaller id */
    int32_t k = 0;
    for (int32_t i = 0; i < n && n_top > 0; i++) {
        float v = logits[i];
        if (k == n_top && !(v > logits[out->top_ids[k - 1]]))
            continue;
        int32_t j = k < n_top ? k++ : k - 1;
        while (j > 0 && v > logits[out->top_ids[j - 1]]) {
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_ids[j] = i;
    }
    for (int32_t j = 0; j < n_top; j++)
        out->top_lps[j] = (float)(logits[out->top_ids[j]] - lse);
}

float sampler_top1_prob(const float *logits, int32_t n, int32_t *arg)
{
    int32_t a = sampler_argmax(logits, n);
    float mx = logits[a], sum = 0.0f;
    for (int32_t i = 0; i < n; i++)
        sum += expf(logits[i] - mx);
    if (arg)
        *arg = a;
    return 1.0f / sum;
}

static int scored_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? 1 : -1;
    return x->id - y->id;
}

/* Candidate set after top-k and top-p, into s->order; returns its size.
 * probs holds softmax(logits / T) over the full vocabulary on entry.
 * Sorting all of a 50k vocabulary per token is slow, so only entries above a
 * tiny threshold are sorted; when they cannot reach top_p on their own, the
 * whole vocabulary is sorted instead, so the kept set is always exact. */
static int32_t keep_set(sampler *s, const float *probs, int32_t n)
{
    int32_t k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
    scored *c = (scored *)s->cand;
    for (float thresh = 1e-9f;; thresh = 0.0f) {
        int32_t nc = 0;
        double mass = 0.0;
        for (int32_t i = 0; i < n; i++)
            if (probs[i] >= thresh) {
                c[nc++] = (scored){probs[i], i};
                mass += probs[i];
            }
        if (thresh > 0.0f && nc < k && !(s->p.top_p < 1.0f && mass >= s->p.top_p))
            continue;               /* the candidates might not suffice */
        qsort(c, (size_t)nc, sizeof *c, scored_desc);
        double cum = 0.0;
        int32_t kept = 0;
        while (kept < k && kept < nc) {
            cum += c[kept].v;
            s->order[kept] = c[kept].id;
            kept++;
            if (s->p.top_p < 1.0f && cum >= s->p.top_p)
                break;
        }
        /* all candidates used without reaching top-p or top-k: the entries
         * below the threshold belong in the set too (rounding) */
        if (thresh > 0.0f && kept == nc && nc < k && !(s->p.top_p < 1.0f && cum >= s->p.top_p))
            continue;
        return kept;
    }
}

void sampler_probs(sampler *s, const float *logits, int32_t n, float *probs)
{
    if (s->p.temperature == 0.0f) {
        memset(probs, 0, (size_t)n * sizeof(float));
        probs[sampler_argmax(logits, n)] = 1.0f;
        return;
    }
    float mx = logits[sampler_argmax(logits, n)];
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        probs[i] = expf((logits[i] - mx) / s->p.temperature);
        sum += probs[i];
    }
    for (int32_t i = 0; i < n; i++)
        probs[i] = (float)(probs[i] / sum);
    if (s->p.top_k == 0 && s->p.top_p >= 1.0f)
        return;
    int32_t kept = keep_set(s, probs, n);
    scored *c = (scored *)s->cand;   /* reuse: kept probabilities */
    double ksum = 0.0;
    for (int32_t j = 0; j < kept; j++) {
        c[j].v = probs[s->order[j]];
        ksum += c[j].v;
    }
    memset(probs, 0, (size_t)n * sizeof(float));
    for (int32_t j = 0; j < kept; j++)
        probs[s->order[j]] = (float)(c[j].v / ksum);
}

int32_t sampler_draw(sampler *s, const float *probs, int32_t n)
{
    float u = sampler_uniform(s);
    double cum = 0.0;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        if (probs[i] <= 0.0f)
            continue;
        cum += probs[i];
        last = i;
        if (u < cum)
            return i;
    }
    return last;   /* rounding: fall back to the last candidate */
}

int32_t sampler_sample(sampler *s, const float *logits)
{
    if (s->p.temperature == 0.0f)
        return sampler_argmax(logits, s->n_vocab);
    sampler_probs(s, logits, s->n_vocab, s->probs);
    return sampler_draw(s, s->probs, s->n_vocab);
}
