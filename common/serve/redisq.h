/*
 * redisq.h - the Redis side of `selfspec worker` (hiredis): connection URLs,
 * connecting with AUTH/SELECT, and the atomic stream operations a job needs.
 *
 *  - redisq_parse_url: redis://[user[:password]@]host[:port][/db]
 *    (a password alone: redis://:password@host). Percent-escapes in the
 *    user and password are decoded.
 *  - redisq_connect: TCP connect with a timeout, AUTH (ACL user + password,
 *    or the password alone), SELECT db; every command then times out too.
 *  - redisq_finish: one finished job, atomically (one Lua script, which Redis
 *    runs as a transaction, like MULTI/EXEC but able to branch): SADD the
 *    custom_id to the done set; only if it was not there, XADD the result to
 *    the results stream; always XACK the entry. A job delivered twice (a
 *    worker killed after finishing, its entry claimed) yields one result.
 *  - redisq_dead_letter: XADD the entry's request, id and reason to the
 *    dead-letter stream and XACK it, atomically (one script).
 *
 * Each function returns 0, or -1 with err; *broken is set to 1 when the
 * connection is unusable (I/O error, timeout): the caller frees it and
 * reconnects. A Redis error reply (wrong type, NOSCRIPT ...) is -1 with
 * *broken left 0. No global state.
 */
#ifndef SELFSPEC_REDISQ_H
#define SELFSPEC_REDISQ_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

typedef struct {
    char host[256];
    int port;                 /* default 6379 */
    char user[128];           /* empty: no ACL user */
    char password[256];       /* empty: no AUTH */
    int db;                   /* default 0 */
} redisq_url;

/* Parse url into *u. Returns 0, or -1 with err ("unknown scheme ..."). */
int redisq_parse_url(const char *url, redisq_url *u, char *err, size_t errlen);

/* Connect, authenticate and select the db; commands time out after
 * timeout_ms. Returns the context, or NULL with err. */
redisContext *redisq_connect(const redisq_url *u, int timeout_ms, char *err, size_t errlen);

/* The names a worker uses. */
typedef struct {
    const char *stream, *group, *consumer, *results, *dead, *done;
} redisq_names;

/* XGROUP CREATE stream group 0 MKSTREAM; an existing group is fine. */
int redisq_ensure_group(redisContext *c, const redisq_names *n, int *broken, char *err, size_t errlen);

/* See the top of this file. */
int redisq_finish(redisContext *c, const redisq_names *n, const char *entry_id, const char *custom_id,
                  const char *result, int *broken, char *err, size_t errlen);
int redisq_dead_letter(redisContext *c, const redisq_names *n, const char *entry_id, const char *request,
                       size_t request_len, const char *reason, int64_t deliveries, int *broken, char *err,
                       size_t errlen);

/* One stream entry as the worker reads it. */
typedef struct {
    char id[48];              /* "<ms>-<seq>" */
    char *request;            /* the `request` field (malloc'd), NULL when absent */
    size_t request_len;
    int64_t created;          /* the `created` field, else the id's seconds */
} redisq_entry;

/* XREADGROUP GROUP group consumer COUNT count [BLOCK block_ms] STREAMS
 * stream from (from: "0" = this consumer's pending entries, ">" = new ones;
 * block_ms < 0: do not block). *out: *n_out entries (free with
 * redisq_entries_free); entries deleted from the stream while pending are
 * skipped. */
int redisq_read(redisContext *c, const redisq_names *n, const char *from, int count, int block_ms,
                redisq_entry **out, int *n_out, int *broken, char *err, size_t errlen);

/* XAUTOCLAIM stream group consumer min_idle_ms cursor COUNT count: entries
 * other consumers left idle; cursor (in/out, "0-0" to start) walks the
 * pending list. */
int redisq_autoclaim(redisContext *c, const redisq_names *n, int64_t min_idle_ms, char cursor[48], int count,
                     redisq_entry **out, int *n_out, int *broken, char *err, size_t errlen);

void redisq_entries_free(redisq_entry *e, int n);

/* 1 when custom_id is in the done set, 0 when not, -1 on error. */
int redisq_is_done(redisContext *c, const redisq_names *n, const char *custom_id, int *broken, char *err,
                   size_t errlen);

/* How many times the group delivered entry_id (XPENDING), 0 when it is not
 * pending any more, -1 on error. */
int64_t redisq_deliveries(redisContext *c, const redisq_names *n, const char *entry_id, int *broken, char *err,
                          size_t errlen);

/* The group's pending count and lag (XINFO GROUPS; lag -1 when the server
 * does not report it). */
int redisq_group_info(redisContext *c, const redisq_names *n, int64_t *pending, int64_t *lag, int *broken,
                      char *err, size_t errlen);

/* Reset the idle time of entries this consumer holds (XCLAIM ... 0 ids
 * JUSTID: the delivery count is unchanged), so no other worker claims jobs
 * still being decoded. */
int redisq_touch(redisContext *c, const redisq_names *n, const char *const *ids, int n_ids, int *broken, char *err,
                 size_t errlen);

#endif
