/*
 * sampler.h - turning logits into the next token: greedy, temperature,
 * top-k, top-p, with a seeded generator (a fixed seed reproduces a run).
 *
 * sampler_probs() exposes the warped distribution itself, because
 * speculative sampling needs both the draft's and the full model's
 * distributions after the same warping.
 */
#ifndef SELFSPEC_SAMPLER_H
#define SELFSPEC_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temperature;   /* 0 = greedy (argmax) */
    int32_t top_k;       /* 0 = off */
    float top_p;         /* 1 = off; in (0, 1] */
    uint64_t seed;
} sampler_params;

typedef struct {
    sampler_params p;
    uint64_t rng;        /* splitmix64 state */
    int32_t n_vocab;
    float *probs;        /* (n_vocab) scratch */
    int32_t *order;      /* (n_vocab) scratch: kept ids, most probable first */
    void *cand;          /* (n_vocab) scratch: (prob, id) pairs being sorted */
} sampler;

/* Check parameters; a clear message for out-of-range values. */
int sampler_params_check(const sampler_params *p, char *err, size_t errlen);

int sampler_init(sampler *s, const sampler_params *p, int32_t n_vocab, char *err, size_t errlen);
void sampler_free(sampler *s);

/* Index of the largest logit (lowest index on ties). */
int32_t sampler_argmax(const float *logits, int32_t n);

/* Probability of the most likely entry under softmax(logits) (temperature 1,
 * no top-k / top-p): the draft's confidence, compared with the exit
 * threshold γ. *arg (may be NULL) receives that entry, as sampler_argmax.
 * Summed in float in index order, so every caller gets the same bits. */
float sampler_top1_prob(const float *logits, int32_t n, int32_t *arg);

/* Warped distribution: probs[i] = P(i) after temperature, top-k and top-p
 * (zero outside the kept set; sums to 1). Greedy (temperature 0) gives a
 * one-hot distribution at the argmax. Uses s->order as scratch. */
void sampler_probs(sampler *s, const float *logits, int32_t n, float *probs);

/* Draw from a distribution over n entries (sums to ~1). */
int32_t sampler_draw(sampler *s, const float *probs, int32_t n);

/* Next token: argmax when greedy, else a draw from the warped distribution. */
int32_t sampler_sample(sampler *s, const float *logits);

/* Log-probabilities of one emitted token under the model's own
 * distribution (log-softmax of the raw logits: temperature 1, no top-k /
 * top-p, whatever the request samples with), and of the n_top most likely
 * tokens (ties to the smaller id). A function of the row alone, summed in
 * double in index order: the same row gives the same bits wherever it was
 * computed (plain, verification block, batch). */
#define SAMPLER_MAX_TOP_LOGPROBS 20
typedef struct {
    int32_t token;
    float logprob;
    int32_t n_top;                               /* <= SAMPLER_MAX_TOP_LOGPROBS */
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];   /* most likely first */
    float top_lps[SAMPLER_MAX_TOP_LOGPROBS];
} sampler_logprob;
void sampler_logprobs(const float *logits, int32_t n, int32_t token, int32_t n_top, sampler_logprob *out);

/* Uniform float in [0, 1). */
float sampler_uniform(sampler *s);

#endif
