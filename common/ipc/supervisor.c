/*
 * supervisor.c - the drafter process seen from the verifier: spawn, Setup,
 * inbox pump, liveness, kill and restart, block waits, requests, shutdown
 * (see supervisor.h; the message rules are protocol.c's).
 */
#include "ipc/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>
#include <omp.h>
#include <zmq.h>

#include "util/util.h"

#define STARTUP_TIMEOUT_S 20.0
#define BLOCK_TIMEOUTS 5      /* a block later than 5 heartbeat timeouts: stuck */

/* The caller's stop flag (pipe_params.stop) is set. */
static int stopping(const pipe_sup *S)
{
    return S->pp->stop && *S->pp->stop != 0;
}

uint64_t sup_random64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)(util_now() * 1e9);
    return v | 1;
}

void pipe_params_default(pipe_params *p)
{
    memset(p, 0, sizeof *p);
    p->overlap = 1;
    p->hb_ms = 100;
    p->hb_timeout_ms = 1000;
    p->max_restarts = 8;
    p->skip_path = "none";
    p->draft_head = -1;
    p->cuda_device = -1;
    p->cuda_draft_device = -1;
}

/* The drafter's executable: the caller's (pp->drafter_exe), else
 * selfspec-drafter (selfspec-drafter-cuda, the same source built with its
 * GPU path, so that the CPU drafter never loads the CUDA libraries) beside
 * this executable. */
static void exe_path(char *buf, size_t n, const char *given, int gpu)
{
    const char *name = gpu ? "selfspec-drafter-cuda" : "selfspec-drafter";
    if (given && *given) {
        snprintf(buf, n, "%s", given);
        return;
    }
    char self[PATH_MAX];
    if (util_exe_dir(self, sizeof self) != 0) {
        snprintf(buf, n, "%s", name);
        return;
    }
    snprintf(buf, n, "%s/%s", self, name);
}

static int reopen_ro(int fd)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    return open(p, O_RDONLY | O_CLOEXEC);
}

int sup_open(pipe_sup *S, const model *m, int kv_fd, int32_t kv_cap, int n_seqs, int32_t max_draft,
             const pipe_params *pp, pipe_stats *ps, char *err, size_t errlen)
{
    memset(S, 0, sizeof *S);
    S->pp = pp;
    S->ps = ps;
    S->m = m;
    S->kv_cap = kv_cap;
    S->max_draft = max_draft;
    S->w_ro = S->kv_ro = -1;
    S->debug = pp->debug;
    S->threads = pp->drafter_threads > 0 ? pp->drafter_threads : omp_get_max_threads();
    proto_init(&S->link, sup_random64(), n_seqs, m->config.vocab_size);
    exe_path(S->exe, sizeof S->exe, pp->drafter_exe, pp->cuda_ipc_len > 0);
    S->w_ro = reopen_ro(m->arena.shm_fd);
    S->kv_ro = kv_fd >= 0 ? reopen_ro(kv_fd) : -1;
    if (S->w_ro < 0 || (kv_fd >= 0 && S->kv_ro < 0))
        return util_err(err, errlen, "reopening the shared memory read-only: %s", strerror(errno));
    S->zctx = zmq_ctx_new();
    snprintf(S->v_ep, sizeof S->v_ep, "ipc://@selfspec-%d-%016llx-v", (int)getpid(),
             (unsigned long long)S->link.session);
    if (!(S->in = pipe_socket(S->zctx, ZMQ_PULL, S->v_ep, 1, err, errlen)))
        return -1;
    return 0;
}

/* The drafter is gone (exited, or killed here when `killed`). */
static void gone(pipe_sup *S, int killed)
{
    if (S->pid > 0) {
        if (killed)
            kill(S->pid, SIGKILL);
        waitpid(S->pid, NULL, 0);
    }
    S->pid = 0;
    if (S->out)
        zmq_close(S->out);
    S->out = NULL;
    proto_lost(&S->link);
    S->ps->drafter_deaths++;
}

void sup_spawn(pipe_sup *S)
{
    char err[256];
    uint32_t inc = S->link.inc + 1;
    snprintf(S->d_ep, sizeof S->d_ep, "ipc://@selfspec-%d-%016llx-d%u", (int)getpid(),
             (unsigned long long)S->link.session, inc);
    if (S->out)
        zmq_close(S->out);
    if (!(S->out = pipe_socket(S->zctx, ZMQ_PUSH, S->d_ep, 0, err, sizeof err))) {
        fprintf(stderr, "selfspec: pipeline: %s\n", err);
        S->link.state = PROTO_FAILED;
        return;
    }
    char sess[32], incs[16], parent[16];
    snprintf(sess, sizeof sess, "%016llx", (unsigned long long)S->link.session);
    snprintf(incs, sizeof incs, "%u", inc);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    char *argv[] = {S->exe, "--connect", S->v_ep, "--bind", S->d_ep, "--session", sess,
                    "--incarnation", incs, "--parent", parent, NULL};
    /* This process's environment, plus the caller's one extra entry (the
     * pipeline's: two OpenMP teams share the cores, so unless the user chose
     * a wait policy the drafter's idle workers spin briefly, then sleep). */
    extern char **environ;
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **envp = mallocCheck((ne + 2) * sizeof(char *));
    memcpy(envp, environ, ne * sizeof(char *));
    if (S->pp->drafter_env && *S->pp->drafter_env)
        envp[ne++] = (char *)S->pp->drafter_env;
    envp[ne] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        fcntl(S->w_ro, F_SETFD, 0);     /* inherited across exec */
        if (S->kv_ro >= 0)
            fcntl(S->kv_ro, F_SETFD, 0);
        execve(S->exe, argv, envp);
        _exit(127);
    }
    free(envp);
    if (pid < 0) {
        fprintf(stderr, "selfspec: pipeline: fork: %s\n", strerror(errno));
        S->link.state = PROTO_FAILED;
        return;
    }
    S->pid = pid;
    proto_start(&S->link, inc, (int32_t)pid);
    S->t_spawn = S->last_heard = util_now();
    S->ps->drafter_starts++;
    S->ps->last_drafter_pid = pid;
    if (S->debug)
        fprintf(stderr, "selfspec-pipeline: spawn pid=%d incarnation=%u verifier=%s drafter=%s session=%s\n",
                (int)pid, inc, S->v_ep, S->d_ep, sess);
}

static void send_setup(pipe_sup *S)
{
    const model_config *c = &S->m->config;
    Selfspec__Envelope e;
    Selfspec__Setup s = SELFSPEC__SETUP__INIT;
    Selfspec__ModelIdentity id = SELFSPEC__MODEL_IDENTITY__INIT;
    id.name = (char *)c->name;
    id.n_layers = (uint32_t)c->n_layers;
    id.dim = (uint32_t)c->dim;
    id.vocab_size = (uint32_t)c->vocab_size;
    id.arena_bytes = S->m->arena.size;
    s.model = &id;
    s.model_path = (char *)S->pp->model_path;
    s.weights_shm = (char *)S->m->arena.shm_name;
    s.weights_fd = S->w_ro;
    s.kv_shm = "(kv)";
    s.kv_fd = S->kv_ro;
    s.kv_cap = (uint32_t)S->kv_cap;
    s.n_seqs = (uint32_t)S->link.n_seqs;
    s.skip_path = (char *)S->pp->skip_path;
    s.max_draft = (uint32_t)S->max_draft;
    s.overlap = (uint32_t)(S->pp->overlap && S->link.n_seqs == 1);   /* several: overlap across sequences */
    s.cuda_ipc.data = (uint8_t *)S->pp->cuda_ipc;
    s.cuda_ipc.len = S->pp->cuda_ipc_len;
    s.cuda_device = S->pp->cuda_device;
    s.cuda_draft_device = S->pp->cuda_draft_device >= 0 ? S->pp->cuda_draft_device + 1 : 0;
    s.heartbeat_ms = (uint32_t)S->pp->hb_ms;
    s.threads = (uint32_t)S->threads;
    s.draft_head = S->pp->draft_head;
    s.speculate = S->pp->speculate_always != 0;   /* benchmark knob */
    proto_envelope(&S->link, &e, 0, 0);
    e.body_case = SELFSPEC__ENVELOPE__BODY_SETUP;
    e.setup = &s;
    pipe_send(S->out, &e);
}

static void handle(pipe_sup *S, const Selfspec__Envelope *e)
{
    proto_event ev = proto_receive(&S->link, e);
    if (ev != PROTO_REJECTED)
        S->last_heard = util_now();
    switch (ev) {
    case PROTO_HELLO:
        send_setup(S);
        break;
    case PROTO_ACK_OK:
        if (S->debug)
            fprintf(stderr, "selfspec-pipeline: ready pid=%d incarnation=%u\n", (int)S->pid, S->link.inc);
        break;
    case PROTO_ACK_FAILED:
        fprintf(stderr, "selfspec: pipeline: the drafter cannot start: %s\n", e->hello_ack->error);
        gone(S, 1);
        S->link.state = PROTO_FAILED;   /* a setup error would repeat: no restarts */
        break;
    default:
        break;
    }
}

void sup_pump(pipe_sup *S, int timeout_ms)
{
    for (;;) {
        int got;
        Selfspec__Envelope *e = pipe_recv(S->in, timeout_ms, &got, &S->link.rx);
        if (!got)
            return;
        if (e) {
            handle(S, e);
            selfspec__envelope__free_unpacked(e, NULL);
        }
        timeout_ms = 0;
    }
}

void sup_check(pipe_sup *S)
{
    proto_link *L = &S->link;
    if (S->pid > 0) {
        int st;
        if (waitpid(S->pid, &st, WNOHANG) == S->pid) {
            S->pid = 0;
            if (S->debug)
                fprintf(stderr, "selfspec-pipeline: drafter exited (status %d)\n", st);
            if (L->state != PROTO_FAILED)
                gone(S, 0);
        }
    }
    double now = util_now();
    if (L->state == PROTO_READY && (now - S->last_heard) * 1000.0 > S->pp->hb_timeout_ms) {
        sup_pump(S, 0);   /* late messages first */
        if ((util_now() - S->last_heard) * 1000.0 > S->pp->hb_timeout_ms) {
            if (S->debug)
                fprintf(stderr, "selfspec-pipeline: drafter pid=%d silent: killed\n", (int)S->pid);
            S->ps->drafter_timeouts++;
            gone(S, 1);
        }
    }
    if ((L->state == PROTO_STARTING || L->state == PROTO_SETUP) && now - S->t_spawn > STARTUP_TIMEOUT_S) {
        S->ps->drafter_timeouts++;
        gone(S, 1);
    }
    if (L->state == PROTO_NONE && !stopping(S)) {
        if (S->restarts < S->pp->max_restarts) {
            if (S->ps->drafter_starts > 0)
                S->restarts++;
            sup_spawn(S);
        } else {
            L->state = PROTO_FAILED;
        }
    }
}

int sup_ready(const pipe_sup *S)
{
    return S->link.state == PROTO_READY;
}

void sup_wait_ready(pipe_sup *S)
{
    while (!stopping(S) && S->link.state != PROTO_READY && S->link.state != PROTO_FAILED && S->ps->drafter_deaths == 0) {
        sup_pump(S, 20);
        sup_check(S);
    }
}

void sup_request(pipe_sup *S, uint32_t seq, Selfspec__RequestKind kind, int32_t pos, int32_t cur, int32_t k_max,
                 int32_t end_pos, float gamma)
{
    Selfspec__Envelope e;
    Selfspec__DraftRequest r;
    proto_request(&S->link, &e, &r, seq, kind, pos, cur, k_max, end_pos, gamma);
    if (pipe_send(S->out, &e) != 0)
        S->last_heard = 0;   /* cannot even queue it: treat as dead at the next check */
}

int sup_wait_block(pipe_sup *S, uint32_t seq, int speculative)
{
    proto_link *L = &S->link;
    const proto_block *b = speculative ? &L->spec : &L->fresh[seq];
    double t0 = util_now();
    int r = 0;
    for (;;) {
        if (proto_has_block(L, b, seq)) {
            r = 1;
            break;
        }
        if (L->state != PROTO_READY || L->req_inc[seq] != L->inc || stopping(S))
            break;
        if ((util_now() - t0) * 1000.0 > BLOCK_TIMEOUTS * S->pp->hb_timeout_ms) {
            /* alive (heartbeats) but no block: stuck, or its channel broken */
            if (S->debug)
                fprintf(stderr, "selfspec-pipeline: drafter pid=%d sent no block: killed\n", (int)S->pid);
            S->ps->drafter_timeouts++;
            gone(S, 1);
            break;
        }
        sup_pump(S, 20);
        if (!proto_has_block(L, b, seq))
            sup_check(S);
    }
    S->ps->wait_seconds += util_now() - t0;
    return r;
}

static void shutdown_drafter(pipe_sup *S)
{
    if (S->pid <= 0)
        return;
    if (S->out && S->link.state != PROTO_FAILED) {
        Selfspec__Envelope e;
        Selfspec__Shutdown s = SELFSPEC__SHUTDOWN__INIT;
        proto_envelope(&S->link, &e, 0, S->link.epoch);
        e.body_case = SELFSPEC__ENVELOPE__BODY_SHUTDOWN;
        e.shutdown = &s;
        pipe_send(S->out, &e);
        double t0 = util_now();
        while (util_now() - t0 < 2.0) {
            sup_pump(S, 10);
            if (waitpid(S->pid, NULL, WNOHANG) == S->pid) {
                S->pid = 0;
                sup_pump(S, 0);
                break;
            }
        }
    }
    if (S->pid > 0) {
        kill(S->pid, SIGKILL);
        waitpid(S->pid, NULL, 0);
        S->pid = 0;
    }
}

void sup_close(pipe_sup *S)
{
    shutdown_drafter(S);
    if (S->out) zmq_close(S->out);
    if (S->in) zmq_close(S->in);
    if (S->zctx) zmq_ctx_term(S->zctx);
    if (S->w_ro >= 0) close(S->w_ro);
    if (S->kv_ro >= 0) close(S->kv_ro);
    S->out = S->in = S->zctx = NULL;
    S->w_ro = S->kv_ro = -1;
    if (S->ps) {
        S->ps->rx = S->link.rx;
        proto_drafter_rx(&S->link, &S->ps->drafter_rx);
        S->ps->blocks = S->link.blocks;
        S->ps->drafter_seconds = S->link.drafter_seconds;
    }
}
