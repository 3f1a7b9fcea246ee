/*
 * metrics.h - Prometheus metrics of the worker and the server, rendered in
 * the text exposition format (version 0.0.4), with vLLM's metric names
 * under a prefix of the caller's (e.g. "selfspec:" for "vllm:"):
 *
 *   <p>num_requests_running, <p>num_requests_waiting          gauges
 *   <p>kv_cache_usage_perc                                     gauge, [0, 1]
 *   <p>prompt_tokens_total, <p>generation_tokens_total         counters
 *   <p>request_success_total{finished_reason="stop"|"length"}  counter
 *   <p>request_failure_total{reason="..."}                     counter
 *   <p>time_to_first_token_seconds                             histogram
 *   <p>time_per_output_token_seconds                           histogram
 *   <p>e2e_request_latency_seconds                             histogram
 *   <p>spec_decode_num_drafts_total, <p>spec_decode_num_draft_tokens_total,
 *   <p>spec_decode_num_accepted_tokens_total                   counters
 *   <p>spec_decode_num_accepted_tokens_per_pos_total{position="i"} counter
 *   <p>spec_decode_num_drafts_by_source_total{source="layers"|"context"|"chain"},
 *   <p>spec_decode_num_draft_tokens_by_source_total{source=...},
 *   <p>spec_decode_num_accepted_tokens_by_source_total{source=...} counters
 *                                      (selfspec's own: which draft source paid)
 *
 * plus up to METRICS_MAX_EXTRA gauges or counters of the caller's own (the
 * worker's stream lag, pending and dead-lettered entries). Every series
 * carries model_name="...". The engine-side figures (running, waiting, KV,
 * speculation counters) arrive as a snapshot (metrics_set_engine) taken by
 * the thread that drives the engine; this layer does not know the engine.
 *
 * Thread-safe: one mutex inside the struct guards every field, so the
 * engine thread updates while an HTTP thread renders. No global state.
 */
#ifndef SELFSPEC_METRICS_H
#define SELFSPEC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "decode/spec.h"

#define METRICS_MAX_EXTRA 16     /* caller-defined series */
#define METRICS_MAX_REASONS 8    /* distinct failure reasons */

/* What the engine thread reports: gauges now, counters since the start. */
typedef struct {
    int32_t running, waiting;
    int32_t kv_used, kv_total;          /* blocks */
    spec_counts spec;                   /* speculation counters (decode/spec.h) */
} metrics_engine;

typedef enum { METRICS_GAUGE = 0, METRICS_COUNTER = 1 } metrics_type;

typedef struct metrics metrics;

/* A new, empty set of metrics. prefix: prepended to every name (e.g.
 * "selfspec:"; [A-Za-z_:][A-Za-z0-9_:]*); model_name: the label value
 * (any UTF-8; escaped on output). Returns NULL on a bad prefix. */
metrics *metrics_new(const char *prefix, const char *model_name);

/* Free it (NULL-safe). */
void metrics_free(metrics *m);

/* A request finished: finish_length 1 for "length", 0 for "stop"; its token
 * counts; ttft = first token - arrival, e2e = done - arrival, in seconds
 * (negative: not known, not observed). The per-output-token latency
 * observed is (e2e - ttft) / (gen_tokens - 1) when gen_tokens > 1. */
void metrics_request_done(metrics *m, int finish_length, int64_t prompt_tokens, int64_t gen_tokens,
                          double ttft, double e2e);

/* A finished request's prompt: queried tokens looked up in the prefix
 * cache, hit of them found there (vLLM's prefix_cache_queries / _hits). */
void metrics_prefix_cache(metrics *m, int64_t queried, int64_t hit);

/* A request failed (invalid, rejected, aborted, ...): counted under the
 * label reason ([a-z_]+; anything past METRICS_MAX_REASONS distinct
 * reasons is counted as "other"). */
void metrics_request_failed(metrics *m, const char *reason);

/* Replace the engine snapshot. */
void metrics_set_engine(metrics *m, const metrics_engine *s);

/* Set (gauge) or set the running total of (counter) the caller's series
 * `name` (appended to the prefix; counters should end in "_total"), creating
 * it with `help` on first use. Returns 0, or -1 when the name is invalid or
 * METRICS_MAX_EXTRA series exist already. */
int metrics_set_extra(metrics *m, const char *name, const char *help, metrics_type type, double value);

/* The whole exposition text, malloc'd and NUL-terminated (ends in '\n'),
 * or NULL when out of memory. */
char *metrics_render(metrics *m);

#endif
