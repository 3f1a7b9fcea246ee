/*
 * pipe.h - pieces shared by the two processes of the Draft & Verify
 * pipeline (common/ipc/supervisor.c, drafter/drafter.c): ZeroMQ sockets and the
 * protobuf-c envelope (proto/selfspec.proto), the checks every received
 * message goes through, the verified KV cache in POSIX shared memory, and
 * per-process memory figures (/proc/<pid>/smaps_rollup).
 */
#ifndef SELFSPEC_PIPE_H
#define SELFSPEC_PIPE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "model/model.h"
#include "selfspec.pb-c.h"

#define PIPE_VERSION 1
#define PIPE_MAX_MSG (1u << 20)     /* larger messages are malformed */

/* What a receiver rejected (see Counters in the .proto). */
typedef struct {
    uint64_t malformed, foreign, replayed, stale, unexpected;
} pipe_counters;

/* A socket with linger 0 and a short reconnect interval; bind or connect. */
void *pipe_socket(void *zctx, int type, const char *endpoint, int bind, char *err, size_t errlen);

/* Pack and send without blocking. Returns 0, or -1 (queue full / closed). */
int pipe_send(void *sock, const Selfspec__Envelope *env);

/* Wait up to timeout_ms (0: do not wait) for one message. Returns the
 * unpacked envelope, or NULL: *got says whether something arrived (a
 * message that did not parse, was multipart or too big is counted as
 * malformed and dropped). Free with selfspec__envelope__free_unpacked. */
Selfspec__Envelope *pipe_recv(void *sock, int timeout_ms, int *got, pipe_counters *c);

/* The checks common to both sides: version, session and incarnation
 * (foreign), message number strictly increasing (replayed). Returns 0 when
 * the message passes; *last_no is advanced. */
int pipe_check(const Selfspec__Envelope *e, uint64_t session, uint32_t incarnation, uint64_t *last_no,
               pipe_counters *c);

/* Verified KV caches of n_seqs sequences in one shared-memory object.
 * create: the verifier (read-write); else map fd read-only (drafter). */
typedef struct {
    void *base;
    size_t size;
    int fd;
} pipe_shm;

int pipe_kv_create(pipe_shm *s, const char *name, const model_config *c, int32_t cap, int n_seqs,
                   kv_cache *kvs, char *err, size_t errlen);
int pipe_kv_attach(pipe_shm *s, int fd, const model_config *c, int32_t cap, int n_seqs,
                   kv_cache *kvs, char *err, size_t errlen);
void pipe_shm_unmap(pipe_shm *s);

/* Memory of a process in kB from /proc/<pid>/smaps_rollup (0 = unknown). */
typedef struct {
    long rss, pss, pss_anon, pss_file, pss_shmem;
} pipe_mem;
int pipe_mem_read(pid_t pid, pipe_mem *m);

/* Remove /dev/shm/selfspec-<pid>-* objects whose creator <pid> is gone
 * (left by a verifier killed while it was loading the model). */
void pipe_reap_orphans(void);

#endif
