/*
 * stats.h - a generation's figures as one JSON object: what `generate
 * --stats` prints on stderr, and what batch summaries build on.
 *
 * Fields: mode, threads, prompt_tokens, generated_tokens, seconds,
 * tokens_per_s, prefill_seconds, prefill_tokens_per_s, decode_seconds,
 * decode_tokens_per_s; with self-spec also skip_config, drafted, accepted,
 * verifications, acceptance_rate, mean_accepted_per_verify, final_gamma,
 * draft_seconds, verify_seconds, sources (per draft source that produced a
 * block -- layers, context, chain -- its blocks, drafted, accepted,
 * acceptance_rate and mean_accepted tokens per block),
 * acceptance_by_position (one rate per draft position that was ever
 * drafted).
 */
#ifndef SELFSPEC_STATS_H
#define SELFSPEC_STATS_H

#include <cjson/cJSON.h>

#include "decode/generate.h"
#include "decode/spec.h"

/* A new cJSON object (free with cJSON_Delete). sp and skip_src may be NULL
 * (plain decoding: no speculation fields). */
cJSON *stats_json(const char *mode, int threads, const gen_stats *st, const spec_stats *sp, const char *skip_src);

/* Add a number rounded to `digits` decimals (keeps the line readable). */
void stats_add_number(cJSON *obj, const char *key, double v, int digits);

#endif
