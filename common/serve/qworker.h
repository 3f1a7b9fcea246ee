/*
 * qworker.h - the loop of `selfspec worker`: jobs from a Redis stream
 * consumer group through the one engine loop, results back to Redis.
 *
 * One thread does everything, in turns: (re)connect with backoff; flush
 * finished jobs (redisq_finish: result + ack, deduplicated by custom_id, in
 * one atomic script); when the batch has room, XAUTOCLAIM entries idle over
 * claim_idle_ms (a dead worker's) and XREADGROUP at most `room` entries (this
 * consumer's own pending entries first, id 0, after a restart; then ">");
 * refresh the idle time of the jobs in flight (XCLAIM JUSTID) so that a live
 * worker's jobs are not claimed; one engine_step. A request that is not
 * valid, cannot run, or was delivered more than max_deliveries times goes to
 * the dead-letter stream with its reason and is acknowledged.
 *
 * Redis down: the engine keeps decoding what it has; finished results wait
 * in memory and are written after the reconnect; nothing is read meanwhile.
 * *stop set (SIGTERM): read nothing more, finish and flush what is in
 * flight, return 0 (when Redis stays down past drain_timeout_s while draining,
 * return 1: the unacknowledged entries stay pending for another worker).
 * No global state (stop is the caller's signal flag).
 */
#ifndef SELFSPEC_QWORKER_H
#define SELFSPEC_QWORKER_H

#include <signal.h>
#include <stdint.h>

#include "api/metrics.h"
#include "engine/engine.h"
#include "serve/redisq.h"
#include "text/tokenizer.h"

typedef struct {
    redisq_url url;
    redisq_names names;           /* all set */
    int64_t claim_idle_ms;        /* >= 1 */
    int64_t max_deliveries;       /* >= 1 */
    int32_t max_jobs;             /* jobs in flight at most (the engine's max_seqs) */
    const char *model_name;       /* echoed in results */
    const char *fingerprint;      /* results' "system_fingerprint" (job_fingerprint), or NULL */
    int usage_details;            /* usage.completion_tokens_details (job_format_opts) */
    double drain_timeout_s;       /* Redis down while draining: give up after this */
    int quiet;
} qworker_opts;

/* What a run did. */
typedef struct {
    int64_t done;                 /* results written (or deduplicated) and acked */
    int64_t dead;                 /* entries dead-lettered */
    int64_t claimed;              /* entries taken over with XAUTOCLAIM */
    int64_t reconnects;
    int64_t prompt_tokens, output_tokens;
} qworker_stats;

/* Run until *stop and drained. mx (may be NULL) receives the request
 * metrics and the worker's series (stream_lag, stream_pending,
 * dead_lettered_total). Returns 0, or 1 with err (the engine failed, or the
 * drain could not reach Redis). */
int qworker_run(engine *e, const tokenizer *tok, const qworker_opts *o, metrics *mx, volatile sig_atomic_t *stop,
                qworker_stats *st, char *err, size_t errlen);

#endif
