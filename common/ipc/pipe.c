/*
 * pipe.c - sockets, envelopes, shared KV and memory figures for the
 * two-process pipeline (see pipe.h).
 */
#include "ipc/pipe.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "util/util.h"

void *pipe_socket(void *zctx, int type, const char *endpoint, int bind, char *err, size_t errlen)
{
    void *s = zmq_socket(zctx, type);
    if (!s) {
        util_err(err, errlen, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int zero = 0, ivl = 10, hwm = 1000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    int64_t maxsz = PIPE_MAX_MSG;   /* bigger frames: the peer is disconnected by zmq */
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxsz, sizeof maxsz);
    if ((bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint)) != 0) {
        util_err(err, errlen, "zmq_%s('%s'): %s", bind ? "bind" : "connect", endpoint,
                 zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

int pipe_send(void *sock, const Selfspec__Envelope *env)
{
    uint8_t stackbuf[4096];
    size_t n = selfspec__envelope__get_packed_size(env);
    uint8_t *buf = n <= sizeof stackbuf ? stackbuf : mallocCheck(n);
    selfspec__envelope__pack(env, buf);
    int rc = zmq_send(sock, buf, n, ZMQ_DONTWAIT);
    if (buf != stackbuf)
        free(buf);
    return rc == (int)n ? 0 : -1;
}

Selfspec__Envelope *pipe_recv(void *sock, int timeout_ms, int *got, pipe_counters *c)
{
    *got = 0;
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    int r = zmq_poll(&it, 1, timeout_ms);
    if (r <= 0 || !(it.revents & ZMQ_POLLIN))
        return NULL;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return NULL;
    }
    *got = 1;
    int multipart = zmq_msg_more(&msg);
    Selfspec__Envelope *e = NULL;
    if (!multipart && zmq_msg_size(&msg) <= PIPE_MAX_MSG)
        e = selfspec__envelope__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
    while (zmq_msg_more(&msg)) {          /* drop the rest of a multipart message */
        zmq_msg_close(&msg);
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0)
            break;
    }
    zmq_msg_close(&msg);
    if (!e || multipart) {
        if (e)
            selfspec__envelope__free_unpacked(e, NULL);
        c->malformed++;
        return NULL;
    }
    return e;
}

int pipe_check(const Selfspec__Envelope *e, uint64_t session, uint32_t incarnation, uint64_t *last_no,
               pipe_counters *c)
{
    if (e->version != PIPE_VERSION || e->session != session || e->incarnation != incarnation) {
        c->foreign++;
        return -1;
    }
    if (e->msg_no <= *last_no) {
        c->replayed++;
        return -1;
    }
    *last_no = e->msg_no;
    return 0;
}

static size_t kv_bytes_per_seq(const model_config *c, int32_t cap)
{
    return 2 * (size_t)c->n_layers * (size_t)cap * (size_t)c->kv_dim * sizeof(kv_elem);
}

static void kv_views(pipe_shm *s, const model_config *c, int32_t cap, int n_seqs, kv_cache *kvs)
{
    size_t half = kv_bytes_per_seq(c, cap) / 2;
    for (int i = 0; i < n_seqs; i++) {
        uint8_t *p = (uint8_t *)s->base + (size_t)i * 2 * half;
        memset(&kvs[i], 0, sizeof kvs[i]);
        kvs[i].k = (kv_elem *)p;
        kvs[i].v = (kv_elem *)(p + half);
        kvs[i].cap = cap;
        kvs[i].n_layers = c->n_layers;
        kvs[i].kv_dim = c->kv_dim;
        kvs[i].head_dim = c->head_dim;
    }
}

int pipe_kv_create(pipe_shm *s, const char *name, const model_config *c, int32_t cap, int n_seqs,
                   kv_cache *kvs, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->size = kv_bytes_per_seq(c, cap) * (size_t)n_seqs;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return util_err(err, errlen, "shm_open('%s'): %s", name, strerror(errno));
    if (ftruncate(fd, (off_t)s->size) != 0) {
        int e = errno;
        close(fd);
        shm_unlink(name);
        return util_err(err, errlen, "sizing shared KV '%s': %s", name, strerror(e));
    }
    void *p = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        close(fd);
        shm_unlink(name);
        return util_err(err, errlen, "mapping shared KV '%s': %s", name, strerror(e));
    }
    s->base = p;
    s->fd = fd;
    kv_views(s, c, cap, n_seqs, kvs);
    return 0;
}

int pipe_kv_attach(pipe_shm *s, int fd, const model_config *c, int32_t cap, int n_seqs,
                   kv_cache *kvs, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->size = kv_bytes_per_seq(c, cap) * (size_t)n_seqs;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < s->size)
        return util_err(err, errlen, "shared KV (fd %d) is missing or smaller than %zu bytes", fd, s->size);
    void *p = mmap(NULL, s->size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return util_err(err, errlen, "mapping shared KV: %s", strerror(errno));
    s->base = p;
    s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    kv_views(s, c, cap, n_seqs, kvs);
    return 0;
}

void pipe_shm_unmap(pipe_shm *s)
{
    if (s->base)
        munmap(s->base, s->size);
    if (s->fd >= 0)
        close(s->fd);
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

int pipe_mem_read(pid_t pid, pipe_mem *m)
{
    memset(m, 0, sizeof *m);
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        long v;
        if (sscanf(line, "Rss: %ld", &v) == 1) m->rss = v;
        else if (sscanf(line, "Pss: %ld", &v) == 1) m->pss = v;
        else if (sscanf(line, "Pss_Anon: %ld", &v) == 1) m->pss_anon = v;
        else if (sscanf(line, "Pss_File: %ld", &v) == 1) m->pss_file = v;
        else if (sscanf(line, "Pss_Shmem: %ld", &v) == 1) m->pss_shmem = v;
    }
    fclose(f);
    return 0;
}

void pipe_reap_orphans(void)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        int pid;
        if (sscanf(de->d_name, "selfspec-%d-", &pid) != 1 || pid <= 0)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;   /* its creator lives (or is not ours to judge) */
        char name[300];
        snprintf(name, sizeof name, "/%s", de->d_name);
        shm_unlink(name);
    }
    closedir(d);
}
