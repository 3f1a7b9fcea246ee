/*
 * httpd.h - the HTTP front of `serve` and of the worker's metrics, on
 * libmicrohttpd (one thread per connection; MHD parses HTTP, we never do).
 *
 * What this layer does itself: collects a request body up to body_limit
 * (413 beyond it), checks `Authorization: Bearer <api_key>` on /v1/ paths
 * when a key is set (401), answers GET /metrics from a metrics set and
 * GET /health from a health callback (200 "ok" / 503 with the reason), and
 * hands every other request to the handler, which fills an httpd_response:
 * a whole body, or a stream (server-sent events) that a reader callback
 * produces, blocking in the connection's own thread until data is ready.
 * Idle connections are closed after conn_timeout_s (slow clients).
 * No global state.
 */
#ifndef SELFSPEC_HTTPD_H
#define SELFSPEC_HTTPD_H

#include <stddef.h>
#include <sys/types.h>

#include "api/metrics.h"

/* A stream's next bytes into buf[0..max): returns how many (> 0), 0 to be
 * called again (no data yet), or -1 at the end of the stream. */
typedef ssize_t (*httpd_reader)(void *ctx, char *buf, size_t max);

typedef struct {
    int status;                  /* HTTP status */
    const char *content_type;    /* static string; NULL: application/json */
    char *body;                  /* malloc'd (whole responses); httpd frees it */
    size_t body_len;
    httpd_reader reader;         /* non-NULL: a streamed response instead */
    void *reader_ctx;
    void (*reader_done)(void *ctx, int completed);  /* always called once after a stream */
} httpd_response;

/* Handle method + url (path only) with the body (NUL-terminated, len bytes)
 * into *out (zeroed on entry). Runs in a connection thread. */
typedef void (*httpd_handler)(void *ctx, const char *method, const char *url, const char *body, size_t len,
                              httpd_response *out);

/* 0 when healthy, else -1 with the reason in why. */
typedef int (*httpd_health)(void *ctx, char *why, size_t whylen);

typedef struct {
    const char *host;            /* address to listen on (default 127.0.0.1) */
    int port;                    /* 0: any free port (httpd_port says which) */
    metrics *metrics;            /* GET /metrics; NULL: 404 */
    httpd_health health;         /* GET /health; NULL: always ok */
    httpd_handler handler;       /* everything else; NULL: 404 */
    void *ctx;                   /* for health and handler */
    const char *api_key;         /* NULL or "": no auth */
    size_t body_limit;           /* 0: 1 MiB */
    int conn_timeout_s;          /* 0: 30 */
    int max_connections;         /* 0: 256 */
    int engine_thread;           /* unused by httpd (documentation of the caller's set-up) */
} httpd_config;

typedef struct httpd httpd;

/* Listen and serve in MHD's threads. Returns 0, or -1 with err (bad address,
 * port taken). The config's strings and pointers must outlive the server. */
int httpd_start(httpd **out, const httpd_config *cfg, char *err, size_t errlen);

/* The port listened on. */
int httpd_port(const httpd *h);

/* Stop listening, wait for the connection threads, free (NULL-safe). */
void httpd_stop(httpd *h);

/* An OpenAI-style error body {"error":{"message","type","param","code"}}
 * into out (malloc'd). */
void httpd_error(httpd_response *out, int status, const char *message);

#endif
