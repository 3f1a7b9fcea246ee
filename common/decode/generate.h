/*
 * generate.h - what every decoding loop shares: the request's generation
 * parameters, the callback that receives each final token, the figures a
 * run reports, prompt prefill and the stop rule. The one loop that decodes
 * is the engine's (engine/engine.h); tests/oracle.h keeps the sequential
 * references it is tested against.
 */
#ifndef SELFSPEC_GENERATE_H
#define SELFSPEC_GENERATE_H

#include <stdint.h>

#include "model/model.h"
#include "decode/grammar.h"
#include "decode/sampler.h"

/* Called once per final token, in order. Return nonzero to stop generation
 * (e.g. a stop string was completed). */
typedef int (*gen_emit_fn)(void *ctx, int32_t token);

typedef struct {
    int32_t max_tokens;        /* new tokens at most */
    sampler_params sampling;
    int ignore_eos;            /* keep going past end-of-generation tokens */
    int (*is_eog)(const void *ctx, int32_t token);  /* NULL: never */
    const void *eog_ctx;
    int want_logprobs;         /* report each emitted token's log-probability (sampler_logprobs) */
    int32_t top_logprobs;      /* and the top N (<= SAMPLER_MAX_TOP_LOGPROBS) */
    const gram *gram;          /* output constrained to a JSON schema (decode/grammar.h), or NULL;
                                  the engine only: it must outlive the request */
    /* Logits processors (the engine only), applied to the full model's rows
     * before the choice, per position of a block (OpenAI's semantics): */
    float presence_penalty;    /* minus this for every token already generated, [-2, 2] */
    float frequency_penalty;   /* minus this times its count in the generated tokens, [-2, 2] */
    const int32_t *bias_ids;   /* logit_bias: (n_bias) token ids, their values added */
    const float *bias_vals;    /* (n_bias) in [-100, 100]; both outlive the request */
    int32_t n_bias;
    int32_t min_tokens;        /* end-of-generation tokens are not chosen before this many */
} gen_params;

/* Does gp change the full model's rows before the choice (penalties,
 * logit_bias, min_tokens)? */
static inline int gen_has_processors(const gen_params *gp)
{
    return gp->presence_penalty != 0.0f || gp->frequency_penalty != 0.0f || gp->n_bias > 0 || gp->min_tokens > 0;
}

typedef struct {
    int32_t prompt_tokens;
    int32_t generated_tokens;
    double prefill_seconds;
    double decode_seconds;
} gen_stats;

/* Run the prompt through the full model, filling kv from position 0.
 * Leaves the logits of the last prompt position in last_logits (vocab).
 * Chunks the prompt by s->max_tokens. */
int gen_prefill(const model *m, fwd_state *s, kv_cache *kv, const int32_t *prompt, int32_t n,
                float *last_logits, char *err, size_t errlen);

/* Whether generation must stop after `token` (EOG unless ignored). */
int gen_is_stop(const gen_params *gp, int32_t token);

#endif
