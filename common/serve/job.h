/*
 * job.h - one OpenAI request (a parsed batch_request) into the engine and
 * its text back out: the path every front end of the engine shares (`batch`,
 * the Redis worker, the HTTP server).
 *
 * job_submit renders the prompt (chat: the model's template), tokenizes it,
 * checks the sampling parameters and queues it on the engine with
 * callbacks that push each final token into an out_text (stop strings,
 * complete UTF-8). The caller's hooks see the text as it becomes final
 * (streaming) and the whole outcome once. job_format_result turns an outcome
 * into the batch output line (`selfspec batch`'s bytes for the same request
 * and `created`); job_format_body into just the OpenAI response body.
 *
 * Not thread-safe (the engine thread calls everything). No global state.
 */
#ifndef SELFSPEC_JOB_H
#define SELFSPEC_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "api/batchio.h"
#include "api/metrics.h"
#include "engine/engine.h"
#include "text/tokenizer.h"

/* One choice of a request with n > 1. */
typedef struct {
    const char *text;
    batch_finish finish;
    const sampler_logprob *lp;
    const size_t *lp_off;
    int n_lp;
} job_choice;

/* What a finished job reports to its hook (valid during the call only). */
typedef struct {
    const char *custom_id;
    batch_kind kind;
    const char *text;          /* the whole generated text, NUL-terminated */
    batch_finish finish;
    engine_result res;         /* token counts and times (util_now clock) */
    const tokenizer *tok;
    int want_logprobs;         /* the request asked: lp[0..n_lp) are its tokens' */
    const sampler_logprob *lp; /* each token of the text (not a final EOG token, not past a stop string) */
    const size_t *lp_off;      /* (n_lp) byte offset of each in the text */
    int n_lp;
    /* n > 1: every choice (text, finish and lp above are choice 0's; res
     * sums the generated tokens of all, the prompt counted once) */
    const job_choice *choices;
    int n_choices;
} job_outcome;

/* Text of one choice that became final (streaming). */
typedef struct {
    int index;                 /* the choice: 0, or 0..n-1 with n > 1 */
    const char *text;          /* n bytes (may be 0 with logprobs) */
    size_t n;
    /* when the request asked: the choice's "logprobs" object (the shape of
     * batch_format_logprobs) for the tokens whose text starts in these
     * bytes -- the last delta of a choice carries the rest -- else NULL */
    const char *logprobs_json;
} job_delta;

typedef struct {
    /* Optional: text became final (streaming). The last delta of every
     * choice comes before on_done. */
    void (*on_text)(void *user, const job_delta *d);
    /* Optional: nonzero to end the job now (its client went away); the job
     * then finishes as if a stop string had been found. */
    int (*should_stop)(void *user);
    /* Required: the job finished; called once per successful job_submit. */
    void (*on_done)(void *user, const job_outcome *o);
    void *user;
} job_hooks;

/* gen_params.is_eog for a request: ctx is the tokenizer. */
int job_is_eog(const void *ctx, int32_t token);

/* The request's prompt as text, malloc'd (chat: through the model's
 * template); NULL with err set when the template cannot render it. */
char *job_prompt_text(const tokenizer *tok, const batch_request *q, char *err, size_t errlen);

/* Queue request q on e: tok is the model's tokenizer (outlives the job).
 * q is only read (its strings are copied). Returns 0 (hooks->on_done will
 * be called from a later engine_step, or from engine_free's teardown never:
 * a job still live when the engine is freed is lost), or -1 with the reason
 * in err (the request cannot be run: template, tokenization, sampling
 * parameters, prompt + max_tokens over the context or the KV pool). */
int job_submit(engine *e, const tokenizer *tok, const batch_request *q, const job_hooks *hooks, char *err,
               size_t errlen);

/* How a front end formats its results: every front end of one model and
 * set of options writes the same bytes for the same request and created. */
typedef struct {
    const char *model;         /* the served model id ("model", /v1/models) */
    int64_t created;           /* Unix seconds */
    const char *fingerprint;   /* "system_fingerprint" (NULL: null) */
    int usage_details;         /* usage.completion_tokens_details: accepted and rejected draft
                                  tokens (they vary with speculation and timing, so they make
                                  lines differ between modes and runs: off by default) */
} job_format_opts;

/* The batch output line of a finished job (malloc'd, ending in '\n'), as
 * batch_format_result gives it with f's fields; NULL with err on failure. */
char *job_format_result(const job_outcome *o, const job_format_opts *f, char *err, size_t errlen);

/* The OpenAI response body alone (the "body" member of that line, one line,
 * no '\n'), malloc'd; NULL with err on failure. */
char *job_format_body(const job_outcome *o, const job_format_opts *f, char *err, size_t errlen);

/* The system_fingerprint of an engine: "fp_" and 16 hex digits of a hash
 * of what decides its output (selfspec's output format version, the model
 * file's size and shape), into out[24]. */
void job_fingerprint(const model_config *c, uint64_t file_size, char out[24]);

/* The engine's gauges and speculation counters now, for metrics_set_engine. */
void job_metrics_snapshot(const engine *e, metrics_engine *out);

#endif
