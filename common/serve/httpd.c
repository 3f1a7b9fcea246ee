/*
 * httpd.c - libmicrohttpd glue (httpd.h): per-connection body collection
 * with the size limit, bearer-key check, /metrics and /health, the
 * handler's whole or streamed responses.
 */
#include "serve/httpd.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "util/util.h"

struct httpd {
    httpd_config cfg;
    struct MHD_Daemon *d;
    int port;
};

/* One request's state across the access handler's calls. */
typedef struct {
    char *body;
    size_t len, cap;
    int too_big;
} httpd_conn;

/* A streamed response's wrapper. */
typedef struct {
    httpd_response r;
    int ended;
} httpd_stream;

void httpd_error(httpd_response *out, int status, const char *message)
{
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", status == 401 ? "authentication_error"
                                       : status >= 500 ? (status == 503 ? "overloaded_error" : "internal_error")
                                       : "invalid_request_error");
    cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    free(out->body);
    out->body = cJSON_PrintUnformatted(root);
    out->body_len = out->body ? strlen(out->body) : 0;
    out->status = status;
    out->content_type = NULL;
    cJSON_Delete(root);
}

static ssize_t httpd_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    httpd_stream *s = cls;
    for (;;) {
        ssize_t n = s->r.reader(s->r.reader_ctx, buf, max);
        if (n > 0)
            return n;
        if (n < 0) {
            s->ended = 1;
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void httpd_stream_free(void *cls)
{
    httpd_stream *s = cls;
    if (s->r.reader_done)
        s->r.reader_done(s->r.reader_ctx, s->ended);
    free(s);
}

static enum MHD_Result httpd_queue(struct MHD_Connection *c, httpd_response *r)
{
    struct MHD_Response *resp;
    if (r->reader) {
        httpd_stream *s = callocCheck(1, sizeof *s);
        s->r = *r;
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, httpd_stream_read, s, httpd_stream_free);
        if (!resp) {
            httpd_stream_free(s);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", r->content_type ? r->content_type : "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    } else {
        if (!r->body) {
            r->body = strdup("");
            r->body_len = 0;
        }
        resp = MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
            free(r->body);
            return MHD_NO;
        }
        r->body = NULL;
        MHD_add_response_header(resp, "Content-Type", r->content_type ? r->content_type : "application/json");
    }
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static int httpd_auth_ok(const httpd *h, struct MHD_Connection *c)
{
    if (!h->cfg.api_key || !h->cfg.api_key[0])
        return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncmp(a, "Bearer ", 7) != 0)
        return 0;
    const char *k = a + 7, *want = h->cfg.api_key;
    size_t kl = strlen(k), wl = strlen(want);
    unsigned diff = (unsigned)(kl ^ wl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned)(unsigned char)want[i] ^ (unsigned)(unsigned char)(i < kl ? k[i] : 0);
    return diff == 0;
}

static enum MHD_Result httpd_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                    const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    httpd *h = cls;
    httpd_conn *st = *con_cls;
    size_t limit = h->cfg.body_limit ? h->cfg.body_limit : ((size_t)1 << 20);
    if (!st) {
        st = callocCheck(1, sizeof *st);
        *con_cls = st;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long clen = cl ? strtoull(cl, NULL, 10) : 0;
        if (clen > limit)
            st->too_big = 1;   /* read and dropped, then 413: the client sees the answer */
        if (clen / 16 > limit) {
            /* far over: answer before reading it (MHD then closes the connection) */
            httpd_response r = {0};
            char why[128];
            snprintf(why, sizeof why, "request body over the limit of %zu bytes", limit);
            httpd_error(&r, 413, why);
            return httpd_queue(c, &r);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!st->too_big && st->len + *upload_size > limit)
            st->too_big = 1;
        if (!st->too_big) {
            if (st->len + *upload_size + 1 > st->cap) {
                st->cap = 2 * (st->len + *upload_size) + 1;
                st->body = realloc(st->body, st->cap);
                if (!st->body)
                    return MHD_NO;
            }
            memcpy(st->body + st->len, upload, *upload_size);
            st->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    httpd_response r = {0};
    char why[512];
    if (st->too_big) {
        snprintf(why, sizeof why, "request body over the limit of %zu bytes", limit);
        httpd_error(&r, 413, why);
    } else if (!strcmp(url, "/metrics") && h->cfg.metrics) {
        r.status = 200;
        r.body = metrics_render(h->cfg.metrics);
        r.body_len = r.body ? strlen(r.body) : 0;
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        if (!r.body)
            httpd_error(&r, 500, "out of memory");
    } else if (!strcmp(url, "/health")) {
        int ok = !h->cfg.health || h->cfg.health(h->cfg.ctx, why, sizeof why) == 0;
        r.status = ok ? 200 : 503;
        r.body = strdup(ok ? "ok\n" : why);
        r.body_len = strlen(r.body);
        r.content_type = "text/plain";
    } else if (!strncmp(url, "/v1/", 4) && !httpd_auth_ok(h, c)) {
        httpd_error(&r, 401, "invalid or missing API key (Authorization: Bearer <key>)");
    } else if (h->cfg.handler) {
        if (!st->body)
            st->body = callocCheck(1, 1);
        st->body[st->len] = '\0';
        h->cfg.handler(h->cfg.ctx, method, url, st->body, st->len, &r);
        if (!r.status)
            httpd_error(&r, 500, "no response");
    } else {
        httpd_error(&r, 404, "not found");
    }
    return httpd_queue(c, &r);
}

static void httpd_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    httpd_conn *st = *con_cls;
    if (st) {
        free(st->body);
        free(st);
        *con_cls = NULL;
    }
}

int httpd_start(httpd **out, const httpd_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    const char *host = cfg->host && cfg->host[0] ? cfg->host : "127.0.0.1";
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0 || !ai)
        return util_err(err, errlen, "cannot listen on '%s': %s", host, gai_strerror(g));
    httpd *h = callocCheck(1, sizeof *h);
    h->cfg = *cfg;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, httpd_access, h, MHD_OPTION_SOCK_ADDR,
                            ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)(cfg->conn_timeout_s > 0 ? cfg->conn_timeout_s : 30),
                            MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)(cfg->max_connections > 0 ? cfg->max_connections : 256),
                            MHD_OPTION_NOTIFY_COMPLETED, httpd_completed, h, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        free(h);
        return util_err(err, errlen, "cannot listen on %s:%d (address in use or not available)", host, cfg->port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : cfg->port;
    *out = h;
    return 0;
}

int httpd_port(const httpd *h)
{
    return h->port;
}

void httpd_stop(httpd *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
