/*
 * lines.h - JSONL input read as it arrives: complete lines from a file
 * descriptor (a file, or a pipe a queue system writes to), without waiting
 * when asked not to, so a caller can interleave reading with decoding.
 *
 * A line longer than BATCH_MAX_LINE (api/batchio.h) is handed over once, cut
 * at about that size (the batch parser refuses it: one error line), and the
 * rest of it up to its '\n' is dropped, so the buffer never grows past it.
 * No global state; one reader per fd.
 */
#ifndef SELFSPEC_LINES_H
#define SELFSPEC_LINES_H

#include <signal.h>
#include <stddef.h>

typedef struct {
    int fd;
    char *buf;                  /* (cap) bytes read, [start, len) not yet handed out */
    size_t len, cap, start;
    int eof;                    /* the fd reached its end (or a read error) */
    int skipping;               /* dropping the rest of an over-long line */
    volatile sig_atomic_t *stop;/* may be NULL: a set flag ends a read interrupted by a signal */
} lines_reader;

/* A reader of fd (not owned: the caller closes it). stop as above. */
void lines_init(lines_reader *r, int fd, volatile sig_atomic_t *stop);

/* The next complete line, without its '\n', into *line and *n (valid until
 * the next call). With wait, blocks until a line or the end; without, only
 * reads what is ready now. Returns 1 with a line, 0 when none is ready, at
 * the end (r->eof), or when a signal set *stop. A last line without '\n'
 * counts at the end. */
int lines_next(lines_reader *r, int wait, const char **line, size_t *n);

void lines_free(lines_reader *r);

#endif
