/*
 * oai.h - the OpenAI-compatible API of `selfspec serve` over the one engine
 * loop: /v1/completions and /v1/chat/completions (whole or streamed as
 * server-sent events), /v1/models, and the health check.
 *
 * Threads: libmicrohttpd runs each connection in its own thread, which
 * calls oai_handle; the engine is not thread-safe, so only oai_run's thread
 * (the caller's) touches it. A request crosses over as an oai_req in a
 * FIFO under one mutex (the engine thread waits on a condition variable
 * when idle); the engine thread submits it, and its hooks append the text
 * (streaming chunks) or the final body to the request, waking the
 * connection thread (a per-request condition variable). A request is freed
 * when both sides let go (a reference count under the mutex). A client that
 * goes away mid-stream ends its request at the next token.
 *
 * Errors, OpenAI-style ({"error": {...}}): 400 for an invalid body (the
 * batch-line parser's checks: types, ranges, unknown url), for a request
 * that can never run (prompt + max_tokens over the context); 404/405 for
 * other paths and methods; 503 when max_seqs + queue_cap requests are
 * already in flight or the server is stopping.
 * /health fails (503) when the engine failed, or when it has work and has
 * not completed a step for stall_s seconds.
 */
#ifndef SELFSPEC_OAI_H
#define SELFSPEC_OAI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "api/metrics.h"
#include "engine/engine.h"
#include "serve/httpd.h"
#include "text/tokenizer.h"

typedef struct {
    const char *model_name;   /* /v1/models and every response's "model" */
    const char *fingerprint;  /* every response's "system_fingerprint" (job_fingerprint), or NULL */
    int usage_details;        /* usage.completion_tokens_details (job_format_opts) */
    int32_t max_seqs;         /* the engine's */
    int32_t queue_cap;        /* requests waiting beyond max_seqs before 503 */
    double stall_s;           /* /health: no step for this long with work = stuck */
} oai_config;

typedef struct oai_server oai_server;

/* A server over e (driven only by oai_run's thread), tok and mx (may be
 * NULL). The config's strings must outlive it. */
oai_server *oai_new(engine *e, const tokenizer *tok, metrics *mx, const oai_config *cfg);

/* Free it (NULL-safe); no request may be in flight (oai_run returned). */
void oai_free(oai_server *s);

/* httpd_handler / httpd_health with ctx = the oai_server. */
void oai_handle(void *ctx, const char *method, const char *url, const char *body, size_t len, httpd_response *out);
int oai_health(void *ctx, char *why, size_t whylen);

/* The engine loop, in the calling thread, until *stop: then new requests get
 * 503 and the loop returns once the requests in flight are done. Returns 0,
 * or 1 with err when a step failed (every request in flight then gets a 500). */
int oai_run(oai_server *s, volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif
