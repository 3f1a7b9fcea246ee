/*
 * metrics.c - Prometheus text exposition of the serving metrics (see
 * metrics.h): counters, gauges and cumulative histograms with vLLM's bucket
 * bounds, guarded by one mutex, rendered into a growing buffer.
 */
#include "api/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define METRICS_NAME_MAX 96
#define METRICS_HELP_MAX 160
#define METRICS_MAX_BUCKETS 24

/* vLLM's bucket bounds (vllm/engine/metrics.py). */
static const double METRICS_TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                             1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double METRICS_TPOT_BOUNDS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                             0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double METRICS_E2E_BOUNDS[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                                            30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

typedef struct {
    const double *bounds;
    int n;                                  /* bounds; counts has n + 1 (+Inf) */
    int64_t counts[METRICS_MAX_BUCKETS + 1]; /* per bucket, not cumulative */
    double sum;
    int64_t count;
} metrics_hist;

typedef struct {
    char name[METRICS_NAME_MAX];
    char help[METRICS_HELP_MAX];
    metrics_type type;
    double value;
} metrics_extra;

struct metrics {
    pthread_mutex_t mu;
    char prefix[METRICS_NAME_MAX];
    char *model_label;                      /* escaped label value */
    int64_t prompt_tokens, generation_tokens;
    int64_t cache_queries, cache_hits;      /* prefix cache, in prompt tokens */
    int64_t success_stop, success_length;
    char reasons[METRICS_MAX_REASONS][32];
    int64_t reason_counts[METRICS_MAX_REASONS];
    int n_reasons;
    metrics_hist ttft, tpot, e2e;
    metrics_engine eng;
    metrics_extra extra[METRICS_MAX_EXTRA];
    int n_extra;
};

/* [A-Za-z_:][A-Za-z0-9_:]* (empty allowed when `empty_ok`). */
static int metrics_name_ok(const char *s, int empty_ok)
{
    if (!s || strlen(s) >= METRICS_NAME_MAX)
        return 0;
    if (!*s)
        return empty_ok;
    for (const char *p = s; *p; p++) {
        int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':';
        int digit = *p >= '0' && *p <= '9';
        if (!alpha && !(digit && p != s))
            return 0;
    }
    return 1;
}

/* A label value with \, " and newline escaped (malloc'd). */
static char *metrics_escape(const char *s)
{
    size_t n = strlen(s);
    char *o = mallocCheck(2 * n + 1), *q = o;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            *q++ = '\\';
            *q++ = *s;
        } else if (*s == '\n') {
            *q++ = '\\';
            *q++ = 'n';
        } else {
            *q++ = *s;
        }
    }
    *q = '\0';
    return o;
}

static void metrics_hist_init(metrics_hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n;
}

static void metrics_hist_observe(metrics_hist *h, double v)
{
    if (!(v >= 0) || !isfinite(v))
        return;
    int i = 0;
    while (i < h->n && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

metrics *metrics_new(const char *prefix, const char *model_name)
{
    if (!metrics_name_ok(prefix ? prefix : "", 1))
        return NULL;
    metrics *m = callocCheck(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix ? prefix : "");
    m->model_label = metrics_escape(model_name ? model_name : "");
    metrics_hist_init(&m->ttft, METRICS_TTFT_BOUNDS, (int)(sizeof METRICS_TTFT_BOUNDS / sizeof(double)));
    metrics_hist_init(&m->tpot, METRICS_TPOT_BOUNDS, (int)(sizeof METRICS_TPOT_BOUNDS / sizeof(double)));
    metrics_hist_init(&m->e2e, METRICS_E2E_BOUNDS, (int)(sizeof METRICS_E2E_BOUNDS / sizeof(double)));
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m->model_label);
    free(m);
}

void metrics_request_done(metrics *m, int finish_length, int64_t prompt_tokens, int64_t gen_tokens, double ttft,
                          double e2e)
{
    pthread_mutex_lock(&m->mu);
    if (finish_length)
        m->success_length++;
    else
        m->success_stop++;
    if (prompt_tokens > 0)
        m->prompt_tokens += prompt_tokens;
    if (gen_tokens > 0)
        m->generation_tokens += gen_tokens;
    if (ttft >= 0)
        metrics_hist_observe(&m->ttft, ttft);
    if (e2e >= 0)
        metrics_hist_observe(&m->e2e, e2e);
    if (ttft >= 0 && e2e >= ttft && gen_tokens > 1)
        metrics_hist_observe(&m->tpot, (e2e - ttft) / (double)(gen_tokens - 1));
    pthread_mutex_unlock(&m->mu);
}

void metrics_prefix_cache(metrics *m, int64_t queried, int64_t hit)
{
    pthread_mutex_lock(&m->mu);
    m->cache_queries += queried > 0 ? queried : 0;
    m->cache_hits += hit > 0 ? hit : 0;
    pthread_mutex_unlock(&m->mu);
}

void metrics_request_failed(metrics *m, const char *reason)
{
    char r[32];
    size_t k = 0;
    for (const char *p = reason ? reason : ""; *p && k + 1 < sizeof r; p++)
        if ((*p >= 'a' && *p <= 'z') || *p == '_')
            r[k++] = *p;
    r[k] = '\0';
    if (!k)
        snprintf(r, sizeof r, "other");
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_reasons; i++)
        if (!strcmp(m->reasons[i], r))
            break;
    if (i == m->n_reasons && m->n_reasons >= METRICS_MAX_REASONS - 1) {
        /* the last slot is kept for "other" */
        for (i = 0; i < m->n_reasons; i++)
            if (!strcmp(m->reasons[i], "other"))
                break;
        snprintf(r, sizeof r, "other");
    }
    if (i == m->n_reasons) {
        snprintf(m->reasons[i], sizeof m->reasons[i], "%s", r);
        m->n_reasons++;
    }
    m->reason_counts[i]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_set_engine(metrics *m, const metrics_engine *s)
{
    pthread_mutex_lock(&m->mu);
    m->eng = *s;
    pthread_mutex_unlock(&m->mu);
}

int metrics_set_extra(metrics *m, const char *name, const char *help, metrics_type type, double value)
{
    if (!metrics_name_ok(name, 0) || strlen(m->prefix) + strlen(name) >= METRICS_NAME_MAX)
        return -1;
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name))
            break;
    if (i == m->n_extra) {
        if (m->n_extra == METRICS_MAX_EXTRA) {
            pthread_mutex_unlock(&m->mu);
            return -1;
        }
        metrics_extra *x = &m->extra[m->n_extra++];
        snprintf(x->name, sizeof x->name, "%s", name);
        /* help text: one line */
        size_t k = 0;
        for (const char *p = help ? help : ""; *p && k + 1 < sizeof x->help; p++)
            x->help[k++] = (*p == '\n' || *p == '\\') ? ' ' : *p;
        x->help[k] = '\0';
        x->type = type;
    }
    m->extra[i].value = value;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

/* ---- rendering ---- */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} metrics_buf;

static void metrics_printf(metrics_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metrics_printf(metrics_buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = 2 * b->cap + (size_t)n + 1;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

static void metrics_head(metrics_buf *b, const metrics *m, const char *name, const char *type, const char *help)
{
    metrics_printf(b, "# HELP %s%s %s\n# TYPE %s%s %s\n", m->prefix, name, help, m->prefix, name, type);
}

/* %.17g, but Prometheus spellings for the non-finite values. */
static const char *metrics_num(double v, char *buf, size_t n)
{
    if (isnan(v))
        return "NaN";
    if (isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    snprintf(buf, n, "%.17g", v);
    return buf;
}

static void metrics_scalar(metrics_buf *b, const metrics *m, const char *name, const char *type, const char *help,
                           double v)
{
    char nb[40];
    metrics_head(b, m, name, type, help);
    metrics_printf(b, "%s%s{model_name=\"%s\"} %s\n", m->prefix, name, m->model_label, metrics_num(v, nb, sizeof nb));
}

static void metrics_hist_render(metrics_buf *b, const metrics *m, const char *name, const char *help,
                                const metrics_hist *h)
{
    char nb[40];
    metrics_head(b, m, name, "histogram", help);
    int64_t cum = 0;
    for (int i = 0; i <= h->n; i++) {
        cum += h->counts[i];
        if (i < h->n)
            metrics_printf(b, "%s%s_bucket{le=\"%s\",model_name=\"%s\"} %lld\n", m->prefix, name,
                           metrics_num(h->bounds[i], nb, sizeof nb), m->model_label, (long long)cum);
        else
            metrics_printf(b, "%s%s_bucket{le=\"+Inf\",model_name=\"%s\"} %lld\n", m->prefix, name, m->model_label,
                           (long long)cum);
    }
    metrics_printf(b, "%s%s_sum{model_name=\"%s\"} %s\n", m->prefix, name, m->model_label,
                   metrics_num(h->sum, nb, sizeof nb));
    metrics_printf(b, "%s%s_count{model_name=\"%s\"} %lld\n", m->prefix, name, m->model_label, (long long)h->count);
}

char *metrics_render(metrics *m)
{
    metrics_buf b = {0};
    b.cap = 8192;
    b.s = malloc(b.cap);
    if (!b.s)
        return NULL;
    b.s[0] = '\0';
    pthread_mutex_lock(&m->mu);
    const metrics_engine *e = &m->eng;
    metrics_scalar(&b, m, "num_requests_running", "gauge", "Number of requests being decoded.", e->running);
    metrics_scalar(&b, m, "num_requests_waiting", "gauge", "Number of requests waiting to be admitted.", e->waiting);
    metrics_scalar(&b, m, "kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
                   e->kv_total > 0 ? (double)e->kv_used / e->kv_total : 0.0);
    metrics_scalar(&b, m, "prompt_tokens_total", "counter", "Number of prefill tokens processed.",
                   (double)m->prompt_tokens);
    metrics_scalar(&b, m, "generation_tokens_total", "counter", "Number of generation tokens processed.",
                   (double)m->generation_tokens);
    metrics_scalar(&b, m, "prefix_cache_queries_total", "counter",
                   "Prompt tokens looked up in the prefix cache.", (double)m->cache_queries);
    metrics_scalar(&b, m, "prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
                   (double)m->cache_hits);
    metrics_head(&b, m, "request_success_total", "counter", "Count of successfully processed requests.");
    metrics_printf(&b, "%srequest_success_total{finished_reason=\"stop\",model_name=\"%s\"} %lld\n", m->prefix,
                   m->model_label, (long long)m->success_stop);
    metrics_printf(&b, "%srequest_success_total{finished_reason=\"length\",model_name=\"%s\"} %lld\n", m->prefix,
                   m->model_label, (long long)m->success_length);
    metrics_head(&b, m, "request_failure_total", "counter", "Count of requests that failed, by reason.");
    for (int i = 0; i < m->n_reasons; i++)
        metrics_printf(&b, "%srequest_failure_total{reason=\"%s\",model_name=\"%s\"} %lld\n", m->prefix,
                       m->reasons[i], m->model_label, (long long)m->reason_counts[i]);
    metrics_hist_render(&b, m, "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                        &m->ttft);
    metrics_hist_render(&b, m, "time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                        &m->tpot);
    metrics_hist_render(&b, m, "e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                        &m->e2e);
    metrics_scalar(&b, m, "spec_decode_num_drafts_total", "counter", "Number of spec decoding drafts.",
                   (double)e->spec.num_drafts);
    metrics_scalar(&b, m, "spec_decode_num_draft_tokens_total", "counter", "Number of draft tokens.",
                   (double)e->spec.num_draft_tokens);
    metrics_scalar(&b, m, "spec_decode_num_accepted_tokens_total", "counter", "Number of accepted tokens.",
                   (double)e->spec.num_accepted_tokens);
    metrics_head(&b, m, "spec_decode_num_accepted_tokens_per_pos_total", "counter",
                 "Accepted tokens per draft position.");
    int n_pos = 0;   /* positions ever drafted */
    while (n_pos < SPEC_MAX_DRAFT && e->spec.drafted_per_pos[n_pos])
        n_pos++;
    for (int i = 0; i < n_pos; i++)
        metrics_printf(&b, "%sspec_decode_num_accepted_tokens_per_pos_total{model_name=\"%s\",position=\"%d\"} %lld\n",
                       m->prefix, m->model_label, i, (long long)e->spec.accepted_per_pos[i]);
    static const struct { const char *name, *help; } by_src[3] = {
        {"spec_decode_num_drafts_by_source_total", "Spec decoding drafts, by draft source."},
        {"spec_decode_num_draft_tokens_by_source_total", "Draft tokens, by draft source."},
        {"spec_decode_num_accepted_tokens_by_source_total", "Accepted tokens, by draft source."}};
    for (int k = 0; k < 3; k++) {
        const int64_t *v = k == 0 ? e->spec.src_blocks : k == 1 ? e->spec.src_drafted : e->spec.src_accepted;
        metrics_head(&b, m, by_src[k].name, "counter", by_src[k].help);
        for (int i = 0; i < SPEC_SRC_N; i++)
            metrics_printf(&b, "%s%s{model_name=\"%s\",source=\"%s\"} %lld\n", m->prefix, by_src[k].name,
                           m->model_label, spec_source_name(i), (long long)v[i]);
    }
    for (int i = 0; i < m->n_extra; i++)
        metrics_scalar(&b, m, m->extra[i].name, m->extra[i].type == METRICS_COUNTER ? "counter" : "gauge",
                       m->extra[i].help[0] ? m->extra[i].help : "-", m->extra[i].value);
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
