/*
 * lines.c - JSONL input read as it arrives (lines.h).
 */
#include "api/lines.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/batchio.h"
#include "util/util.h"

void lines_init(lines_reader *r, int fd, volatile sig_atomic_t *stop)
{
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->stop = stop;
}

void lines_free(lines_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = r->start = 0;
}

/* Drop bytes up to and including the next '\n' (the rest of an over-long
 * line); returns 1 once it is gone, 0 when more input is needed. */
static int skip_rest(lines_reader *r)
{
    char *nl = memchr(r->buf + r->start, '\n', r->len - r->start);
    if (!nl) {
        r->start = r->len;
        return 0;
    }
    r->start = (size_t)(nl - r->buf) + 1;
    return 1;
}

int lines_next(lines_reader *r, int wait, const char **line, size_t *n)
{
    for (;;) {
        if (r->skipping && r->len > r->start)
            r->skipping = !skip_rest(r);
        char *nl = !r->skipping && r->len > r->start ? memchr(r->buf + r->start, '\n', r->len - r->start) : NULL;
        if (nl || (!r->skipping && r->eof && r->len > r->start)) {
            size_t end = nl ? (size_t)(nl - r->buf) : r->len;
            *line = r->buf + r->start;
            *n = end - r->start;
            r->start = nl ? end + 1 : end;
            return 1;
        }
        if (r->eof)
            return 0;
        if (r->start > 0) {   /* compact */
            memmove(r->buf, r->buf + r->start, r->len - r->start);
            r->len -= r->start;
            r->start = 0;
        }
        if (r->len == r->cap) {
            if (r->cap >= BATCH_MAX_LINE + 2) {
                /* longer than any request may be: its first piece goes out (the
                 * parser refuses it, one error line), the rest is dropped */
                *line = r->buf;
                *n = r->len;
                r->start = r->len;
                r->skipping = 1;
                return 1;
            }
            r->cap = r->cap ? 2 * r->cap : 65536;
            r->buf = reallocCheck(r->buf, r->cap);
        }
        if (!wait) {
            struct pollfd p = {r->fd, POLLIN, 0};
            if (poll(&p, 1, 0) <= 0)
                return 0;
        }
        ssize_t k = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (k < 0 && errno == EINTR) {
            if (r->stop && *r->stop)
                return 0;
            continue;
        }
        if (k <= 0) {
            r->eof = 1;
            continue;
        }
        r->len += (size_t)k;
    }
}
