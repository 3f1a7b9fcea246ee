/*
 * redisq.c - hiredis connection and the worker's stream commands (redisq.h).
 * Every command goes through redisq_cmd (binary-safe argv), which maps a
 * NULL reply to "connection broken" and an error reply to a plain failure.
 */
#include "serve/redisq.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "util/util.h"

/* Finish one job atomically. Redis runs a script as one transaction (nothing
 * else runs between its commands), which is what MULTI/EXEC gives, plus the
 * branch MULTI cannot express: XADD only when SADD added the custom_id.
 * KEYS: stream, results, done set. ARGV: group, entry id, custom_id, result. */
static const char REDISQ_FINISH_LUA[] =
    "if redis.call('SADD', KEYS[3], ARGV[3]) == 1 then\n"
    "  redis.call('XADD', KEYS[2], '*', 'custom_id', ARGV[3], 'result', ARGV[4])\n"
    "end\n"
    "return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n";

/* Dead-letter one entry atomically. KEYS: stream, dead-letter stream.
 * ARGV: group, entry id, request, reason, deliveries. */
static const char REDISQ_DEAD_LUA[] =
    "redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'request', ARGV[3], 'reason', ARGV[4], "
    "'deliveries', ARGV[5])\n"
    "return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n";

/* "%XX" decoding of a URL part into out[0..n). */
static int redisq_unescape(const char *s, size_t len, char *out, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < len && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char h[3] = {s[i + 1], s[i + 2], 0};
            c = (char)strtol(h, NULL, 16);
            i += 2;
        }
        if (c == '\0' || k + 1 >= n)
            return -1;
        out[k++] = c;
    }
    out[k] = '\0';
    return 0;
}

int redisq_parse_url(const char *url, redisq_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (!url || strncmp(url, "redis://", 8) != 0)
        return util_err(err, errlen, "redis URL must start with redis:// (got '%.100s')", url ? url : "");
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at && (!slash || at < slash)) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        if (colon) {
            if (redisq_unescape(p, ulen, u->user, sizeof u->user) ||
                redisq_unescape(colon + 1, (size_t)(at - colon - 1), u->password, sizeof u->password))
                return util_err(err, errlen, "bad user or password in the redis URL");
        } else if (redisq_unescape(p, ulen, u->password, sizeof u->password)) {
            /* redis://password@host: a password alone (as redis-py reads it: a user) */
            return util_err(err, errlen, "bad password in the redis URL");
        }
        p = at + 1;
    }
    size_t hlen = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = memchr(p, ':', hlen);
    size_t name_len = colon ? (size_t)(colon - p) : hlen;
    if (name_len == 0 || name_len >= sizeof u->host)
        return util_err(err, errlen, "no host in the redis URL");
    memcpy(u->host, p, name_len);
    u->host[name_len] = '\0';
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end != p + hlen || end == colon + 1 || port < 1 || port > 65535)
            return util_err(err, errlen, "bad port in the redis URL");
        u->port = (int)port;
    }
    if (slash && slash[1]) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end || db < 0 || db > 1000000)
            return util_err(err, errlen, "bad database number in the redis URL");
        u->db = (int)db;
    }
    return 0;
}

/* Run one command; the reply (not an error reply) in *out, to free. */
static int redisq_cmd(redisContext *c, int argc, const char **argv, const size_t *lens, redisReply **out,
                      int *broken, char *err, size_t errlen)
{
    *out = NULL;
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    if (!r) {
        *broken = 1;
        return util_err(err, errlen, "redis: %s", c->errstr[0] ? c->errstr : "connection lost");
    }
    if (r->type == REDIS_REPLY_ERROR) {
        util_err(err, errlen, "redis %s: %s", argv[0], r->str);
        freeReplyObject(r);
        return -1;
    }
    *out = r;
    return 0;
}

/* redisq_cmd with NUL-terminated arguments. */
static int redisq_cmdv(redisContext *c, redisReply **out, int *broken, char *err, size_t errlen, int argc,
                       const char **argv)
{
    size_t lens[32];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return redisq_cmd(c, argc, argv, lens, out, broken, err, errlen);
}

redisContext *redisq_connect(const redisq_url *u, int timeout_ms, char *err, size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(u->host, u->port, tv);
    if (!c) {
        util_err(err, errlen, "redis %s:%d: out of memory", u->host, u->port);
        return NULL;
    }
    if (c->err) {
        util_err(err, errlen, "redis %s:%d: %s", u->host, u->port, c->errstr);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    int broken = 0;
    redisReply *r = NULL;
    if (u->password[0]) {
        const char *a[3] = {"AUTH", u->user[0] ? u->user : u->password, u->password};
        if (redisq_cmdv(c, &r, &broken, err, errlen, u->user[0] ? 3 : 2, a) != 0)
            goto fail;
        freeReplyObject(r);
    }
    if (u->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        const char *a[2] = {"SELECT", db};
        if (redisq_cmdv(c, &r, &broken, err, errlen, 2, a) != 0)
            goto fail;
        freeReplyObject(r);
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}

int redisq_ensure_group(redisContext *c, const redisq_names *n, int *broken, char *err, size_t errlen)
{
    const char *a[6] = {"XGROUP", "CREATE", n->stream, n->group, "0", "MKSTREAM"};
    redisReply *r = NULL;
    if (redisq_cmdv(c, &r, broken, err, errlen, 6, a) != 0)
        return *broken || !strstr(err, "BUSYGROUP") ? -1 : 0;
    freeReplyObject(r);
    return 0;
}

int redisq_finish(redisContext *c, const redisq_names *n, const char *entry_id, const char *custom_id,
                  const char *result, int *broken, char *err, size_t errlen)
{
    const char *a[] = {"EVAL", REDISQ_FINISH_LUA, "3", n->stream, n->results, n->done, n->group,
                       entry_id, custom_id, result};
    redisReply *r = NULL;
    if (redisq_cmdv(c, &r, broken, err, errlen, (int)(sizeof a / sizeof a[0]), a) != 0)
        return -1;
    freeReplyObject(r);
    return 0;
}

int redisq_dead_letter(redisContext *c, const redisq_names *n, const char *entry_id, const char *request,
                       size_t request_len, const char *reason, int64_t deliveries, int *broken, char *err,
                       size_t errlen)
{
    char dl[24];
    snprintf(dl, sizeof dl, "%lld", (long long)deliveries);
    const char *a[] = {"EVAL", REDISQ_DEAD_LUA, "2", n->stream, n->dead, n->group, entry_id,
                       request ? request : "", reason, dl};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = strlen(a[i]);
    lens[7] = request ? request_len : 0;
    redisReply *r = NULL;
    if (redisq_cmd(c, 10, a, lens, &r, broken, err, errlen) != 0)
        return -1;
    freeReplyObject(r);
    return 0;
}

int redisq_is_done(redisContext *c, const redisq_names *n, const char *custom_id, int *broken, char *err,
                   size_t errlen)
{
    const char *a[3] = {"SISMEMBER", n->done, custom_id};
    redisReply *r = NULL;
    if (redisq_cmdv(c, &r, broken, err, errlen, 3, a) != 0)
        return -1;
    int v = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return v;
}

int64_t redisq_deliveries(redisContext *c, const redisq_names *n, const char *entry_id, int *broken, char *err,
                          size_t errlen)
{
    const char *a[6] = {"XPENDING", n->stream, n->group, entry_id, entry_id, "1"};
    redisReply *r = NULL;
    if (redisq_cmdv(c, &r, broken, err, errlen, 6, a) != 0)
        return -1;
    int64_t v = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements >= 4 && r->element[0]->element[3]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->element[3]->integer;
    freeReplyObject(r);
    return v;
}

int redisq_group_info(redisContext *c, const redisq_names *n, int64_t *pending, int64_t *lag, int *broken,
                      char *err, size_t errlen)
{
    const char *a[3] = {"XINFO", "GROUPS", n->stream};
    redisReply *r = NULL;
    *pending = 0;
    *lag = -1;
    if (redisq_cmdv(c, &r, broken, err, errlen, 3, a) != 0)
        return -1;
    for (size_t g = 0; r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        redisReply *gr = r->element[g];
        if (gr->type != REDIS_REPLY_ARRAY)
            continue;
        int mine = 0;
        int64_t p = 0, l = -1;
        for (size_t i = 0; i + 1 < gr->elements; i += 2) {
            redisReply *k = gr->element[i], *v = gr->element[i + 1];
            if (k->type != REDIS_REPLY_STRING && k->type != REDIS_REPLY_STATUS)
                continue;
            if (!strcmp(k->str, "name") && v->type == REDIS_REPLY_STRING && !strcmp(v->str, n->group))
                mine = 1;
            else if (!strcmp(k->str, "pending") && v->type == REDIS_REPLY_INTEGER)
                p = v->integer;
            else if (!strcmp(k->str, "lag") && v->type == REDIS_REPLY_INTEGER)
                l = v->integer;
        }
        if (mine) {
            *pending = p;
            *lag = l;
        }
    }
    freeReplyObject(r);
    return 0;
}

int redisq_touch(redisContext *c, const redisq_names *n, const char *const *ids, int n_ids, int *broken, char *err,
                 size_t errlen)
{
    if (n_ids <= 0)
        return 0;
    int argc = 5 + n_ids + 1;
    const char **a = callocCheck((size_t)argc, sizeof *a);
    size_t *lens = callocCheck((size_t)argc, sizeof *lens);
    a[0] = "XCLAIM", a[1] = n->stream, a[2] = n->group, a[3] = n->consumer, a[4] = "0";
    for (int i = 0; i < n_ids; i++)
        a[5 + i] = ids[i];
    a[argc - 1] = "JUSTID";
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(a[i]);
    redisReply *r = NULL;
    int rc = redisq_cmd(c, argc, a, lens, &r, broken, err, errlen);
    free(a);
    free(lens);
    if (rc == 0)
        freeReplyObject(r);
    return rc;
}

/* Entries of an XREADGROUP / XAUTOCLAIM entry array: [[id, [f, v, ...]], ...]. */
static void redisq_take_entries(const redisReply *arr, redisq_entry **out, int *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!arr || arr->type != REDIS_REPLY_ARRAY || arr->elements == 0)
        return;
    redisq_entry *e = callocCheck(arr->elements, sizeof *e);
    int k = 0;
    for (size_t i = 0; i < arr->elements; i++) {
        const redisReply *it = arr->element[i];
        if (it->type != REDIS_REPLY_ARRAY || it->elements < 2 || it->element[0]->type != REDIS_REPLY_STRING ||
            it->element[0]->len >= sizeof e[k].id)
            continue;
        const redisReply *f = it->element[1];
        if (f->type != REDIS_REPLY_ARRAY)
            continue;   /* deleted while pending (nil fields): nothing to do */
        redisq_entry *x = &e[k++];
        memcpy(x->id, it->element[0]->str, it->element[0]->len);
        x->id[it->element[0]->len] = '\0';
        x->created = strtoll(x->id, NULL, 10) / 1000;
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            const redisReply *key = f->element[j], *val = f->element[j + 1];
            if (key->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(key->str, "request") && !x->request) {
                x->request = mallocCheck(val->len + 1);
                memcpy(x->request, val->str, val->len);
                x->request[val->len] = '\0';
                x->request_len = val->len;
            } else if (!strcmp(key->str, "created")) {
                char *end;
                long long cr = strtoll(val->str, &end, 10);
                if (end != val->str && *end == '\0' && cr >= 0 && cr < 1000000000000000LL)
                    x->created = cr;
            }
        }
    }
    if (k == 0) {
        free(e);
        return;
    }
    *out = e;
    *n_out = k;
}

int redisq_read(redisContext *c, const redisq_names *n, const char *from, int count, int block_ms,
                redisq_entry **out, int *n_out, int *broken, char *err, size_t errlen)
{
    char cnt[16], blk[16];
    snprintf(cnt, sizeof cnt, "%d", count > 0 ? count : 1);
    snprintf(blk, sizeof blk, "%d", block_ms);
    const char *a[11];
    int argc = 0;
    a[argc++] = "XREADGROUP", a[argc++] = "GROUP", a[argc++] = n->group, a[argc++] = n->consumer;
    a[argc++] = "COUNT", a[argc++] = cnt;
    if (block_ms >= 0)
        a[argc++] = "BLOCK", a[argc++] = blk;
    a[argc++] = "STREAMS", a[argc++] = n->stream, a[argc++] = from;
    redisReply *r = NULL;
    *out = NULL;
    *n_out = 0;
    if (redisq_cmdv(c, &r, broken, err, errlen, argc, a) != 0)
        return -1;
    /* [[stream, [entries]]] or nil on timeout */
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements >= 2)
        redisq_take_entries(r->element[0]->element[1], out, n_out);
    freeReplyObject(r);
    return 0;
}

int redisq_autoclaim(redisContext *c, const redisq_names *n, int64_t min_idle_ms, char cursor[48], int count,
                     redisq_entry **out, int *n_out, int *broken, char *err, size_t errlen)
{
    char idle[24], cnt[16];
    snprintf(idle, sizeof idle, "%lld", (long long)min_idle_ms);
    snprintf(cnt, sizeof cnt, "%d", count > 0 ? count : 1);
    const char *a[8] = {"XAUTOCLAIM", n->stream, n->group, n->consumer, idle, cursor, "COUNT", cnt};
    redisReply *r = NULL;
    *out = NULL;
    *n_out = 0;
    if (redisq_cmdv(c, &r, broken, err, errlen, 8, a) != 0)
        return -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
        if (r->element[0]->type == REDIS_REPLY_STRING && r->element[0]->len < 48) {
            memcpy(cursor, r->element[0]->str, r->element[0]->len);
            cursor[r->element[0]->len] = '\0';
        }
        redisq_take_entries(r->element[1], out, n_out);
    }
    freeReplyObject(r);
    return 0;
}

void redisq_entries_free(redisq_entry *e, int n)
{
    for (int i = 0; e && i < n; i++)
        free(e[i].request);
    free(e);
}
