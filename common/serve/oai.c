/*
 * oai.c - the OpenAI-compatible API over the engine loop (oai.h).
 *
 * Lock order: s->mu only (every oai_req field that both threads touch is
 * guarded by it; each request's cv is waited on with s->mu).
 */
#include "serve/oai.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/job.h"
#include "util/util.h"

typedef struct oai_req oai_req;

struct oai_server {
    engine *e;
    const tokenizer *tok;
    metrics *mx;
    oai_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* the engine thread waits here for requests */
    oai_req *head, *tail;         /* submitted by handlers, not yet taken */
    int32_t in_flight;            /* accepted by a handler, not done */
    uint64_t next_id;
    int stopping, failed, has_work;
    double last_progress;
    int64_t created_at;
};

struct oai_req {
    oai_server *s;
    oai_req *next;
    pthread_cond_t cv;
    int refs;
    batch_request q;
    int stream;
    int include_usage;            /* stream_options.include_usage */
    char id[32];                  /* the request's custom_id: "srv-<n>" */
    char hex[17];
    int64_t created;
    double t_arrival;
    /* guarded by s->mu */
    int accepted, done, cancelled;
    uint32_t sent_role;           /* chat: the choices whose first chunk (with the role) went out */
    int status;                   /* 0 until known; 200 or the error */
    char *error;                  /* status != 200 */
    char *body;                   /* a whole response */
    char *sse;                    /* streamed bytes not yet sent */
    size_t sse_len, sse_cap, sse_off;
};

/* ---- requests ---- */

static void oai_req_release(oai_req *r)
{
    oai_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    int last = --r->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (!last)
        return;
    batch_request_free(&r->q);
    pthread_cond_destroy(&r->cv);
    free(r->error);
    free(r->body);
    free(r->sse);
    free(r);
}

/* Append to the stream buffer (under s->mu). */
static void oai_sse_append(oai_req *r, const char *s, size_t n)
{
    if (r->sse_off > 0 && r->sse_off == r->sse_len)
        r->sse_off = r->sse_len = 0;
    if (r->sse_len + n + 1 > r->sse_cap) {
        r->sse_cap = 2 * (r->sse_len + n) + 256;
        r->sse = realloc(r->sse, r->sse_cap);
        if (!r->sse) {
            fprintf(stderr, "selfspec: out of memory (stream buffer)\n");
            exit(1);
        }
    }
    memcpy(r->sse + r->sse_len, s, n);
    r->sse_len += n;
}

/* One SSE chunk of choice `index`: text (may be NULL), its logprobs object
 * as JSON text (NULL: null) and finish reason (NULL: not the end). */
static void oai_sse_chunk(oai_req *r, int index, const char *text, size_t n, const char *logprobs, const char *finish)
{
    const oai_server *s = r->s;
    int chat = r->q.kind == BATCH_CHAT;
    char id[48];
    snprintf(id, sizeof id, "%s%s", chat ? "chatcmpl-" : "cmpl-", r->hex);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object", chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", s->cfg.model_name);
    if (s->cfg.fingerprint)
        cJSON_AddStringToObject(root, "system_fingerprint", s->cfg.fingerprint);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", index);
    char *t = mallocCheck(n + 1);
    if (n)
        memcpy(t, text, n);
    t[n] = '\0';
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (!(r->sent_role >> index & 1)) {
            cJSON_AddStringToObject(d, "role", "assistant");
            r->sent_role |= 1u << index;
        }
        if (n || !finish)
            cJSON_AddStringToObject(d, "content", t);
    } else {
        cJSON_AddStringToObject(c, "text", t);
    }
    free(t);
    cJSON *lp = logprobs ? cJSON_Parse(logprobs) : NULL;
    if (lp)
        cJSON_AddItemToObject(c, "logprobs", lp);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) {
        fprintf(stderr, "selfspec: out of memory (stream chunk)\n");
        exit(1);
    }
    oai_sse_append(r, "data: ", 6);
    oai_sse_append(r, js, strlen(js));
    oai_sse_append(r, "\n\n", 2);
    free(js);
}

/* The usage chunk of stream_options.include_usage: no choices, the counts. */
static void oai_sse_usage(oai_req *r, int64_t prompt, int64_t completion)
{
    int chat = r->q.kind == BATCH_CHAT;
    char id[48];
    snprintf(id, sizeof id, "%s%s", chat ? "chatcmpl-" : "cmpl-", r->hex);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object", chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", r->s->cfg.model_name);
    if (r->s->cfg.fingerprint)
        cJSON_AddStringToObject(root, "system_fingerprint", r->s->cfg.fingerprint);
    cJSON_AddArrayToObject(root, "choices");
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt + completion));
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) {
        fprintf(stderr, "selfspec: out of memory (stream chunk)\n");
        exit(1);
    }
    oai_sse_append(r, "data: ", 6);
    oai_sse_append(r, js, strlen(js));
    oai_sse_append(r, "\n\n", 2);
    free(js);
}

/* ---- engine-thread hooks ---- */

static void oai_on_text(void *user, const job_delta *d)
{
    oai_req *r = user;
    if (!r->stream)
        return;
    pthread_mutex_lock(&r->s->mu);
    oai_sse_chunk(r, d->index, d->text, d->n, d->logprobs_json, NULL);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->s->mu);
}

static int oai_should_stop(void *user)
{
    oai_req *r = user;
    pthread_mutex_lock(&r->s->mu);
    int c = r->cancelled;
    pthread_mutex_unlock(&r->s->mu);
    return c;
}

static void oai_on_done(void *user, const job_outcome *o)
{
    oai_req *r = user;
    oai_server *s = r->s;
    char err[256];
    job_format_opts f = {.model = s->cfg.model_name, .created = r->created, .fingerprint = s->cfg.fingerprint,
                         .usage_details = s->cfg.usage_details};
    char *body = r->stream ? NULL : job_format_body(o, &f, err, sizeof err);
    if (s->mx) {
        metrics_request_done(s->mx, o->finish == BATCH_FINISH_LENGTH, o->res.prompt_tokens, o->res.generated_tokens,
                             o->res.t_first > 0 ? o->res.t_first - r->t_arrival : -1, o->res.t_done - r->t_arrival);
        metrics_prefix_cache(s->mx, o->res.prompt_tokens, o->res.cached_tokens);
    }
    pthread_mutex_lock(&s->mu);
    if (r->stream) {
        for (int i = 0; i < (o->n_choices > 0 ? o->n_choices : 1); i++) {
            batch_finish fin = o->n_choices > 0 ? o->choices[i].finish : o->finish;
            oai_sse_chunk(r, i, NULL, 0, NULL, fin == BATCH_FINISH_LENGTH ? "length" : "stop");
        }
        if (r->include_usage)
            oai_sse_usage(r, o->res.prompt_tokens, o->res.generated_tokens);
        oai_sse_append(r, "data: [DONE]\n\n", 14);
        r->status = 200;
    } else if (body) {
        r->body = body;
        r->status = 200;
    } else {
        r->status = 500;
        r->error = strdup(err);
    }
    r->done = 1;
    s->in_flight--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&s->mu);
    oai_req_release(r);   /* the engine's reference */
}

/* ---- the engine loop ---- */

static void oai_fail(oai_req *r, int status, const char *msg)
{
    oai_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    r->status = status;
    free(r->error);
    r->error = strdup(msg);
    r->done = 1;
    s->in_flight--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&s->mu);
    oai_req_release(r);
}

static void oai_publish(oai_server *s)
{
    if (!s->mx)
        return;
    metrics_engine m;
    job_metrics_snapshot(s->e, &m);
    metrics_set_engine(s->mx, &m);
}

int oai_run(oai_server *s, volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    int rc = 0;
    double t_pub = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (*stop)
            s->stopping = 1;
        while (!s->head && engine_pending(s->e) == 0 && !*stop) {
            s->has_work = 0;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        if (*stop)
            s->stopping = 1;
        oai_req *list = s->head;
        s->head = s->tail = NULL;
        s->has_work = list || engine_pending(s->e) > 0;
        if (!s->has_work)
            s->last_progress = util_now();
        int done = s->stopping && !list && engine_pending(s->e) == 0 && s->in_flight == 0;
        pthread_mutex_unlock(&s->mu);
        if (done)
            break;
        while (list) {
            oai_req *r = list;
            list = r->next;
            char jerr[512];
            job_hooks h = {.on_text = oai_on_text, .should_stop = oai_should_stop, .on_done = oai_on_done,
                           .user = r};
            if (job_submit(s->e, s->tok, &r->q, &h, jerr, sizeof jerr) != 0) {
                if (s->mx)
                    metrics_request_failed(s->mx, "invalid");
                oai_fail(r, 400, jerr);
                continue;
            }
            pthread_mutex_lock(&s->mu);
            r->accepted = 1;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&s->mu);
        }
        if (engine_pending(s->e) > 0) {
            if (engine_step(s->e, err, errlen) < 0) {
                rc = 1;
                pthread_mutex_lock(&s->mu);
                s->failed = 1;
                s->stopping = 1;
                pthread_mutex_unlock(&s->mu);
                break;
            }
            pthread_mutex_lock(&s->mu);
            s->last_progress = util_now();
            pthread_mutex_unlock(&s->mu);
        }
        double now = util_now();
        if (now - t_pub > 0.25 || engine_pending(s->e) == 0) {
            oai_publish(s);
            t_pub = now;
        }
    }
    oai_publish(s);
    return rc;
}

/* ---- connection threads ---- */

/* Wait on r->cv (s->mu held) for at most half a second; 1 when the engine
 * has failed (the request will never finish). */
static int oai_wait(oai_req *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 500 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv, &r->s->mu, &ts);
    return r->s->failed;
}

static void oai_json(httpd_response *out, int status, cJSON *root)
{
    out->status = status;
    out->body = cJSON_PrintUnformatted(root);
    out->body_len = out->body ? strlen(out->body) : 0;
    cJSON_Delete(root);
    if (!out->body)
        httpd_error(out, 500, "out of memory");
}

static ssize_t oai_stream_read(void *ctx, char *buf, size_t max)
{
    oai_req *r = ctx;
    oai_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    int failed = 0;
    while (r->sse_off == r->sse_len && !r->done && !failed)
        failed = oai_wait(r);
    ssize_t n;
    if (r->sse_off < r->sse_len) {
        size_t k = r->sse_len - r->sse_off;
        if (k > max)
            k = max;
        memcpy(buf, r->sse + r->sse_off, k);
        r->sse_off += k;
        n = (ssize_t)k;
    } else {
        n = -1;   /* done and everything sent */
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void oai_stream_done(void *ctx, int completed)
{
    oai_req *r = ctx;
    if (!completed) {
        pthread_mutex_lock(&r->s->mu);
        r->cancelled = 1;   /* the client went away: end it at the next token */
        pthread_mutex_unlock(&r->s->mu);
    }
    oai_req_release(r);
}

static void oai_models(const oai_server *s, httpd_response *out)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", s->cfg.model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created_at);
    cJSON_AddStringToObject(m, "owned_by", "selfspec");
    oai_json(out, 200, root);
}

void oai_handle(void *ctx, const char *method, const char *url, const char *body, size_t len, httpd_response *out)
{
    oai_server *s = ctx;
    batch_kind kind;
    if (!strcmp(url, "/v1/models")) {
        if (strcmp(method, "GET") != 0)
            return httpd_error(out, 405, "use GET for /v1/models");
        return oai_models(s, out);
    }
    if (!strcmp(url, "/v1/completions"))
        kind = BATCH_COMPLETION;
    else if (!strcmp(url, "/v1/chat/completions"))
        kind = BATCH_CHAT;
    else
        return httpd_error(out, 404, "not found (endpoints: /v1/completions, /v1/chat/completions, /v1/models, "
                           "/health, /metrics)");
    if (strcmp(method, "POST") != 0)
        return httpd_error(out, 405, "use POST");
    oai_req *r = callocCheck(1, sizeof *r);
    r->s = s;
    pthread_cond_init(&r->cv, NULL);
    r->t_arrival = util_now();
    r->created = (int64_t)time(NULL);
    pthread_mutex_lock(&s->mu);
    snprintf(r->id, sizeof r->id, "srv-%llu", (unsigned long long)s->next_id++);
    pthread_mutex_unlock(&s->mu);
    batch_output_hex(r->id, 0, r->hex);
    char err[512];
    if (batch_parse_body(body, len, kind, r->id, &r->q, &r->stream, err, sizeof err) != 0) {
        if (s->mx)
            metrics_request_failed(s->mx, "invalid");
        httpd_error(out, 400, err);
        r->refs = 1;
        oai_req_release(r);
        return;
    }
    if (r->stream) {   /* stream_options.include_usage (batchio does not know it) */
        cJSON *root = cJSON_ParseWithLength(body, len);
        const cJSON *so = root ? cJSON_GetObjectItemCaseSensitive(root, "stream_options") : NULL;
        const cJSON *iu = cJSON_IsObject(so) ? cJSON_GetObjectItemCaseSensitive(so, "include_usage") : NULL;
        r->include_usage = cJSON_IsTrue(iu);
        cJSON_Delete(root);
    }
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->failed || s->in_flight >= s->cfg.max_seqs + s->cfg.queue_cap) {
        int stopping = s->stopping || s->failed;
        pthread_mutex_unlock(&s->mu);
        if (s->mx)
            metrics_request_failed(s->mx, "overloaded");
        httpd_error(out, 503, stopping ? "the server is shutting down" : "too many requests in flight; retry later");
        r->refs = 1;
        oai_req_release(r);
        return;
    }
    r->refs = 2;   /* this thread (or the stream) and the engine */
    s->in_flight++;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    pthread_cond_signal(&s->cv);
    if (r->stream) {
        int failed = 0;
        while (!r->accepted && !r->done && !failed)
            failed = oai_wait(r);
        if (failed && !r->done) {
            r->status = 500;
            free(r->error);
            r->error = strdup("the engine failed");
        }
        if (r->status && r->status != 200) {   /* refused at submit: a real error status */
            char *e = strdup(r->error ? r->error : "error");
            int st = r->status;
            pthread_mutex_unlock(&s->mu);
            httpd_error(out, st, e);
            free(e);
            oai_req_release(r);
            return;
        }
        pthread_mutex_unlock(&s->mu);
        out->status = 200;
        out->content_type = "text/event-stream";
        out->reader = oai_stream_read;
        out->reader_ctx = r;
        out->reader_done = oai_stream_done;
        return;
    }
    int failed = 0;
    while (!r->done && !failed)
        failed = oai_wait(r);
    if (!r->done) {
        r->status = 500;
        r->error = strdup("the engine failed");
    }
    int st = r->status;
    char *b = r->body, *e = r->error;
    r->body = r->error = NULL;
    pthread_mutex_unlock(&s->mu);
    if (st == 200) {
        out->status = 200;
        out->body = b;
        out->body_len = strlen(b);
    } else {
        httpd_error(out, st, e ? e : "error");
    }
    free(e);
    oai_req_release(r);
}

int oai_health(void *ctx, char *why, size_t whylen)
{
    oai_server *s = ctx;
    pthread_mutex_lock(&s->mu);
    double idle = util_now() - s->last_progress;
    int failed = s->failed, work = s->has_work || s->head;
    pthread_mutex_unlock(&s->mu);
    if (failed)
        return util_err(why, whylen, "the engine failed\n");
    if (work && idle > s->cfg.stall_s)
        return util_err(why, whylen, "the decode loop has made no progress for %.1f s with work to do\n", idle);
    return 0;
}

oai_server *oai_new(engine *e, const tokenizer *tok, metrics *mx, const oai_config *cfg)
{
    oai_server *s = callocCheck(1, sizeof *s);
    s->e = e;
    s->tok = tok;
    s->mx = mx;
    s->cfg = *cfg;
    if (s->cfg.stall_s <= 0)
        s->cfg.stall_s = 30;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->last_progress = util_now();
    s->created_at = (int64_t)time(NULL);
    return s;
}

void oai_free(oai_server *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
