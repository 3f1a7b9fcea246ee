/*
 * qworker.c - the Redis Streams worker loop (qworker.h).
 *
 * The jobs in flight are one array of qjob (at most max_jobs): a job is
 * decoding (in the engine), finished (its result line waits to be written
 * and acked) or dead (its reason waits to be dead-lettered). Only finished
 * and dead jobs touch Redis, so a Redis outage never loses a decoded result:
 * it stays here until a flush succeeds.
 */
#include "serve/qworker.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/job.h"
#include "util/util.h"

typedef enum { QJOB_DECODING, QJOB_FINISHED, QJOB_DEAD } qjob_state;

typedef struct qworker qworker;

typedef struct {
    qworker *w;
    qjob_state state;
    char id[48];
    char *custom_id;
    char *line;               /* FINISHED: the result line */
    char *request;            /* DEAD: the raw request (may be NULL) */
    size_t request_len;
    char reason[512];         /* DEAD */
    int64_t deliveries;
    int64_t created;
} qjob;

struct qworker {
    const qworker_opts *o;
    engine *e;
    const tokenizer *tok;
    metrics *mx;
    qworker_stats *st;
    redisContext *c;
    qjob **jobs;
    int n_jobs;
};

static void qjob_free(qjob *j)
{
    free(j->custom_id);
    free(j->line);
    free(j->request);
    free(j);
}

static void qworker_log(const qworker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void qworker_log(const qworker *w, const char *fmt, ...)
{
    if (w->o->quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "worker %s: ", w->o->names.consumer);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void qworker_broken(qworker *w, const char *err)
{
    qworker_log(w, "%s; reconnecting", err);
    if (w->c)
        redisFree(w->c);
    w->c = NULL;
}

static int qworker_has(const qworker *w, const char *id)
{
    for (int i = 0; i < w->n_jobs; i++)
        if (!strcmp(w->jobs[i]->id, id))
            return 1;
    return 0;
}

static qjob *qworker_add(qworker *w, const redisq_entry *en)
{
    qjob *j = callocCheck(1, sizeof *j);
    j->w = w;
    snprintf(j->id, sizeof j->id, "%s", en->id);
    j->created = en->created;
    w->jobs[w->n_jobs++] = j;
    return j;
}

static void qworker_dead(qjob *j, const redisq_entry *en, const char *reason)
{
    j->state = QJOB_DEAD;
    snprintf(j->reason, sizeof j->reason, "%s", reason);
    if (en->request) {
        j->request = mallocCheck(en->request_len + 1);
        memcpy(j->request, en->request, en->request_len + 1);
        j->request_len = en->request_len;
    }
    if (j->w->mx)
        metrics_request_failed(j->w->mx, "dead_letter");
}

/* ---- engine side ---- */

static void qworker_on_done(void *user, const job_outcome *o)
{
    qjob *j = user;
    qworker *w = j->w;
    char err[256];
    job_format_opts f = {.model = w->o->model_name, .created = j->created, .fingerprint = w->o->fingerprint,
                         .usage_details = w->o->usage_details};
    j->line = job_format_result(o, &f, err, sizeof err);
    if (!j->line) {
        j->state = QJOB_DEAD;
        snprintf(j->reason, sizeof j->reason, "cannot format the result: %s", err);
        return;
    }
    j->state = QJOB_FINISHED;
    w->st->prompt_tokens += o->res.prompt_tokens;
    w->st->output_tokens += o->res.generated_tokens;
    if (w->mx) {
        metrics_request_done(w->mx, o->finish == BATCH_FINISH_LENGTH, o->res.prompt_tokens, o->res.generated_tokens,
                             o->res.t_first > 0 ? o->res.t_first - o->res.t_submit : -1,
                             o->res.t_done - o->res.t_submit);
        metrics_prefix_cache(w->mx, o->res.prompt_tokens, o->res.cached_tokens);
    }
}

/* One entry read or claimed: into the engine, or dead. */
static void qworker_take(qworker *w, const redisq_entry *en, int64_t deliveries)
{
    char err[512];
    if (qworker_has(w, en->id))
        return;   /* already ours and in flight (claimed back from ourselves) */
    if (w->n_jobs == w->o->max_jobs)
        return;   /* (never: reads ask for the room left) it stays pending, claimed later */
    qjob *j = qworker_add(w, en);
    j->deliveries = deliveries;
    if (deliveries > w->o->max_deliveries) {
        snprintf(err, sizeof err, "delivered %lld times (over --max-deliveries %lld)", (long long)deliveries,
                 (long long)w->o->max_deliveries);
        qworker_dead(j, en, err);
        return;
    }
    if (!en->request) {
        qworker_dead(j, en, "the entry has no 'request' field");
        return;
    }
    batch_request q;
    int rc = batch_parse_line(en->request, en->request_len, &q, err, sizeof err);
    if (rc == 1)
        snprintf(err, sizeof err, "the request is empty");
    if (rc != 0) {
        char why[600];
        snprintf(why, sizeof why, "invalid request: %s", err);
        qworker_dead(j, en, why);
        batch_request_free(&q);
        return;
    }
    j->custom_id = strdup(q.custom_id);
    job_hooks h = {.on_text = NULL, .on_done = qworker_on_done, .user = j};
    if (job_submit(w->e, w->tok, &q, &h, err, sizeof err) != 0) {
        char why[600];
        snprintf(why, sizeof why, "cannot run the request: %s", err);
        qworker_dead(j, en, why);
    }
    batch_request_free(&q);
}

/* ---- Redis side ---- */

/* Write and ack every finished or dead job; stops at a broken connection. */
static void qworker_flush(qworker *w)
{
    char err[512];
    for (int i = 0; i < w->n_jobs && w->c;) {
        qjob *j = w->jobs[i];
        int broken = 0, rc = 0;
        if (j->state == QJOB_FINISHED)
            rc = redisq_finish(w->c, &w->o->names, j->id, j->custom_id, j->line, &broken, err, sizeof err);
        else if (j->state == QJOB_DEAD)
            rc = redisq_dead_letter(w->c, &w->o->names, j->id, j->request, j->request_len, j->reason,
                                    j->deliveries, &broken, err, sizeof err);
        else {
            i++;
            continue;
        }
        if (broken) {
            qworker_broken(w, err);
            return;
        }
        if (rc != 0) {
            /* an error reply (e.g. a key of the wrong type): keep the job, say so */
            qworker_log(w, "cannot finish entry %s: %s (retrying)", j->id, err);
            i++;
            continue;
        }
        if (j->state == QJOB_FINISHED)
            w->st->done++;
        else {
            w->st->dead++;
            qworker_log(w, "dead-lettered entry %s: %s", j->id, j->reason);
        }
        qjob_free(j);
        w->jobs[i] = w->jobs[--w->n_jobs];
    }
}

static void qworker_touch(qworker *w)
{
    const char *ids[1024];
    int n = 0;
    for (int i = 0; i < w->n_jobs && n < 1024; i++)
        if (w->jobs[i]->state == QJOB_DECODING)
            ids[n++] = w->jobs[i]->id;
    char err[512];
    int broken = 0;
    if (n && redisq_touch(w->c, &w->o->names, ids, n, &broken, err, sizeof err) != 0 && broken)
        qworker_broken(w, err);
}

/* Entries from a read or claim; with `check`, their delivery counts. */
static void qworker_take_all(qworker *w, redisq_entry *en, int n, int check)
{
    char err[512];
    for (int i = 0; i < n; i++) {
        int64_t d = 1;
        if (check && w->c) {
            int broken = 0;
            d = redisq_deliveries(w->c, &w->o->names, en[i].id, &broken, err, sizeof err);
            if (broken) {
                qworker_broken(w, err);
                d = 1;   /* counted again when it is claimed again */
            }
            if (d == 0)
                continue;   /* acked meanwhile by someone else */
            if (d < 0)
                d = 1;
        }
        qworker_take(w, &en[i], d);
    }
}

static void qworker_metrics(qworker *w, double *t_info)
{
    if (!w->mx)
        return;
    metrics_engine s;
    job_metrics_snapshot(w->e, &s);
    metrics_set_engine(w->mx, &s);
    metrics_set_extra(w->mx, "worker_dead_lettered_total", "Stream entries this worker dead-lettered.",
                      METRICS_COUNTER, (double)w->st->dead);
    metrics_set_extra(w->mx, "worker_jobs_done_total", "Jobs this worker finished and acknowledged.",
                      METRICS_COUNTER, (double)w->st->done);
    metrics_set_extra(w->mx, "worker_claimed_total", "Entries this worker took over (XAUTOCLAIM).",
                      METRICS_COUNTER, (double)w->st->claimed);
    metrics_set_extra(w->mx, "worker_reconnects_total", "Reconnections to Redis.", METRICS_COUNTER,
                      (double)w->st->reconnects);
    metrics_set_extra(w->mx, "worker_redis_connected", "1 while connected to Redis.", METRICS_GAUGE,
                      w->c ? 1.0 : 0.0);
    double now = util_now();
    if (w->c && now - *t_info >= 1.0) {
        *t_info = now;
        int64_t pending, lag;
        int broken = 0;
        char err[512];
        if (redisq_group_info(w->c, &w->o->names, &pending, &lag, &broken, err, sizeof err) == 0) {
            metrics_set_extra(w->mx, "stream_pending", "Entries of the group delivered and not acknowledged.",
                              METRICS_GAUGE, (double)pending);
            metrics_set_extra(w->mx, "stream_lag", "Entries of the stream not yet delivered to the group.",
                              METRICS_GAUGE, (double)lag);
        } else if (broken) {
            qworker_broken(w, err);
        }
    }
}

static void qworker_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int qworker_run(engine *e, const tokenizer *tok, const qworker_opts *o, metrics *mx, volatile sig_atomic_t *stop,
                qworker_stats *st, char *err, size_t errlen)
{
    qworker w = {.o = o, .e = e, .tok = tok, .mx = mx, .st = st};
    memset(st, 0, sizeof *st);
    w.jobs = callocCheck((size_t)o->max_jobs, sizeof *w.jobs);
    double backoff = 0.1, next_connect = 0, next_claim = 0, next_touch = 0, t_info = 0, t_log = util_now();
    double drain_since = -1, claim_every = o->claim_idle_ms / 4000.0, touch_every = o->claim_idle_ms / 3000.0;
    if (claim_every < 0.05)
        claim_every = 0.05;
    if (claim_every > 5)
        claim_every = 5;
    char cursor[48] = "0-0";
    /* this consumer's own pending entries are walked once, after the last id
     * seen (reading history bumps delivery counts, so never twice) */
    char own[48] = "0";
    int own_first = 1, ever = 0, rc = 0;
    for (;;) {
        double now = util_now();
        int stopping = *stop != 0;
        if (stopping && drain_since < 0) {
            drain_since = now;
            qworker_log(&w, "draining %d job(s) in flight", w.n_jobs);
        }
        if (!w.c && now >= next_connect) {
            char cerr[512];
            w.c = redisq_connect(&o->url, 2000, cerr, sizeof cerr);
            int broken = 0;
            if (w.c && redisq_ensure_group(w.c, &o->names, &broken, cerr, sizeof cerr) != 0) {
                redisFree(w.c);
                w.c = NULL;
            }
            if (w.c) {
                qworker_log(&w, "connected to redis %s:%d, stream '%s', group '%s'", o->url.host, o->url.port,
                            o->names.stream, o->names.group);
                st->reconnects += ever;
                ever = 1;
                backoff = 0.1;
                next_touch = 0;
            } else {
                qworker_log(&w, "%s; retrying in %.1fs", cerr, backoff);
                next_connect = now + backoff;
                backoff = backoff * 2 > 5 ? 5 : backoff * 2;
            }
        }
        if (w.c)
            qworker_flush(&w);
        if (w.c && !stopping) {
            int room = o->max_jobs - w.n_jobs;
            char rerr[512];
            int broken = 0;
            if (room > 0 && now >= next_claim) {
                redisq_entry *en = NULL;
                int n = 0;
                if (redisq_autoclaim(w.c, &o->names, o->claim_idle_ms, cursor, room, &en, &n, &broken, rerr,
                                     sizeof rerr) == 0) {
                    st->claimed += n;
                    if (n)
                        qworker_log(&w, "claimed %d idle entr%s", n, n == 1 ? "y" : "ies");
                    qworker_take_all(&w, en, n, 1);
                    redisq_entries_free(en, n);
                    if (!strcmp(cursor, "0-0"))
                        next_claim = now + claim_every;   /* walked the whole pending list */
                } else if (broken) {
                    qworker_broken(&w, rerr);
                } else {
                    qworker_log(&w, "%s", rerr);
                    next_claim = now + claim_every;
                }
                room = o->max_jobs - w.n_jobs;
            }
            if (w.c && room > 0) {
                redisq_entry *en = NULL;
                int n = 0;
                int idle = engine_pending(e) == 0;
                if (redisq_read(w.c, &o->names, own_first ? own : ">", room, own_first || !idle ? -1 : 250, &en,
                                &n, &broken, rerr, sizeof rerr) == 0) {
                    if (own_first && n > 0)
                        snprintf(own, sizeof own, "%s", en[n - 1].id);
                    qworker_take_all(&w, en, n, own_first);
                    redisq_entries_free(en, n);
                    if (own_first && n == 0)
                        own_first = 0;
                } else if (broken) {
                    qworker_broken(&w, rerr);
                } else {
                    qworker_log(&w, "%s", rerr);
                    qworker_sleep_ms(100);
                }
            }
            if (w.c && now >= next_touch) {
                qworker_touch(&w);
                next_touch = now + touch_every;
            }
        }
        qworker_metrics(&w, &t_info);
        if (engine_pending(e) > 0) {
            if (engine_step(e, err, errlen) < 0) {
                rc = 1;
                break;
            }
        } else if (stopping && w.n_jobs == 0) {
            break;
        } else if (!w.c || stopping) {
            if (stopping && drain_since >= 0 && now - drain_since > o->drain_timeout_s) {
                util_err(err, errlen, "Redis unreachable for %.0fs while draining: %d result(s) not written "
                         "(their entries stay pending)", o->drain_timeout_s, w.n_jobs);
                rc = 1;
                break;
            }
            qworker_sleep_ms(20);
        }
        if (!o->quiet && now - t_log > 5) {
            t_log = now;
            qworker_log(&w, "%lld done, %lld dead-lettered, %d in flight, %d running", (long long)st->done,
                        (long long)st->dead, w.n_jobs, engine_live(e));
        }
    }
    for (int i = 0; i < w.n_jobs; i++)
        qjob_free(w.jobs[i]);   /* (on error only) */
    free(w.jobs);
    if (w.c)
        redisFree(w.c);
    return rc;
}
