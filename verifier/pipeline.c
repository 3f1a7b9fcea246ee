/*
 * pipeline.c - the verifier process of the two-process pipeline (see
 * pipeline.h for the contract, proto/selfspec.proto for the messages).
 *
 * One sequence. Per step, with the verified prefix of length L and the last
 * accepted token cur (at position L):
 *   sequential: send a fresh DraftRequest (epoch e+1), wait for its block,
 *               verify it (spec_verify), emit the accepted tokens + next.
 *   overlapped: the drafter, having sent block n, goes straight on to draft
 *               block n+1, assuming block n is accepted whole and its own
 *               guess g of the bonus token is right. After verifying block n
 *               the verifier adopts that speculative block if all of block n
 *               was accepted and next == g, and sends a "continue" request
 *               so the drafter drafts block n+2 while block n+1 is verified.
 *               Otherwise it sends a fresh request; the drafter drops its
 *               speculation (it polls between draft steps), and a block that
 *               still arrives for the old epoch is rejected as stale.
 * A step without a usable block is a plain step (spec_verify of an empty
 * draft: one full forward pass, the same logits as plain decoding).
 *
 * The drafter is alive while it sends something at least every
 * hb_timeout_ms (it heartbeats every hb_ms); one that exits, stays silent
 * or fails its start is killed (SIGKILL) and restarted, up to max_restarts.
 */
#include "pipeline.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>
#include <omp.h>
#include <zmq.h>

#include "decode/sampler.h"
#include "util/util.h"

#define STARTUP_TIMEOUT_S 20.0
#define BLOCK_TIMEOUTS 5      /* a block later than 5 heartbeat timeouts: stuck */
#define MAX_SEQS 64

static volatile sig_atomic_t g_term;
static void on_term(int sig) { (void)sig; g_term = 1; }

void pipe_params_default(pipe_params *p)
{
    memset(p, 0, sizeof *p);
    p->overlap = 1;
    p->hb_ms = 100;
    p->hb_timeout_ms = 1000;
    p->max_restarts = 8;
    p->skip_path = "none";
    p->draft_head = -1;
}

static uint64_t rand64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)(util_now() * 1e9);
    return v | 1;
}

void pipeline_prepare(char *shm_name, size_t n)
{
    pipe_reap_orphans();
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    snprintf(shm_name, n, "/selfspec-%d-%016llx-w", (int)getpid(), (unsigned long long)rand64());
}

void pipeline_loaded(const char *shm_name)
{
    shm_unlink(shm_name);   /* the mapping and descriptor stay; nothing is left behind */
}

enum { D_NONE, D_STARTING, D_SETUP, D_READY, D_FAILED };

typedef struct {
    int have;
    uint64_t epoch;
    int32_t pos, cur, n;
    int32_t toks[SPEC_MAX_DRAFT];
} slot;

typedef struct {
    const pipe_params *pp;
    const spec_params *sp;
    const model *m;
    pipe_stats *ps;
    void *zctx, *in, *out;
    char v_ep[108], d_ep[108], exe[PATH_MAX];
    uint64_t session, tx_no, rx_last, rx_last_hb, epoch;
    uint32_t inc;
    pid_t pid;
    int state, restarts, debug, threads;
    double t_spawn, last_heard;
    int w_ro, kv_ro;          /* read-only descriptors the drafter inherits */
    int32_t ctx;
    slot blk[2];              /* [0] answer to a fresh request, [1] speculative */
    int n_seqs;
    uint64_t seq_epoch[MAX_SEQS];   /* several sequences: epoch of each one's request */
    uint32_t req_inc[MAX_SEQS];     /* ... and the drafter incarnation it went to */
    slot mblk[MAX_SEQS];            /* ... and its block */
    pipe_counters drx_base;   /* drafter-side rejections of earlier incarnations */
    pipe_counters drx_cur;    /* ... of this one (its last heartbeat) */
} vproc;

static void counters_add(pipe_counters *d, const pipe_counters *a, const pipe_counters *b)
{
    d->malformed = a->malformed + b->malformed;
    d->foreign = a->foreign + b->foreign;
    d->replayed = a->replayed + b->replayed;
    d->stale = a->stale + b->stale;
    d->unexpected = a->unexpected + b->unexpected;
}

static void env_init(vproc *V, Selfspec__Envelope *e, uint64_t epoch)
{
    selfspec__envelope__init(e);
    e->version = PIPE_VERSION;
    e->session = V->session;
    e->incarnation = V->inc;
    e->msg_no = ++V->tx_no;
    e->seq_id = 0;
    e->epoch = epoch;
}

static void drafter_gone(vproc *V, int killed)
{
    if (V->pid > 0) {
        if (killed)
            kill(V->pid, SIGKILL);
        waitpid(V->pid, NULL, 0);
    }
    V->pid = 0;
    if (V->out)
        zmq_close(V->out);
    V->out = NULL;
    V->state = D_NONE;
    counters_add(&V->drx_base, &V->drx_base, &V->drx_cur);
    memset(&V->drx_cur, 0, sizeof V->drx_cur);
    V->ps->drafter_deaths++;
    memset(V->blk, 0, sizeof V->blk);
}

static void spawn(vproc *V)
{
    char err[256];
    V->inc++;
    V->tx_no = 0;
    V->rx_last = V->rx_last_hb = 0;
    snprintf(V->d_ep, sizeof V->d_ep, "ipc://@selfspec-%d-%016llx-d%u", (int)getpid(),
             (unsigned long long)V->session, V->inc);
    if (V->out)
        zmq_close(V->out);
    if (!(V->out = pipe_socket(V->zctx, ZMQ_PUSH, V->d_ep, 0, err, sizeof err))) {
        fprintf(stderr, "selfspec: pipeline: %s\n", err);
        V->state = D_FAILED;
        return;
    }
    char sess[32], inc[16], parent[16];
    snprintf(sess, sizeof sess, "%016llx", (unsigned long long)V->session);
    snprintf(inc, sizeof inc, "%u", V->inc);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    char *argv[] = {V->exe, "--connect", V->v_ep, "--bind", V->d_ep, "--session", sess,
                    "--incarnation", inc, "--parent", parent, NULL};
    /* Two OpenMP teams share the cores: a drafter whose idle workers spin
     * (libgomp's default) takes the cores from the verifier. Unless the user
     * chose a policy, the drafter's workers spin briefly, then sleep. */
    extern char **environ;
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **envp = mallocCheck((ne + 2) * sizeof(char *));
    memcpy(envp, environ, ne * sizeof(char *));
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT"))
        envp[ne++] = "GOMP_SPINCOUNT=3000";
    envp[ne] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        fcntl(V->w_ro, F_SETFD, 0);     /* inherited across exec */
        fcntl(V->kv_ro, F_SETFD, 0);
        execve(V->exe, argv, envp);
        _exit(127);
    }
    free(envp);
    if (pid < 0) {
        fprintf(stderr, "selfspec: pipeline: fork: %s\n", strerror(errno));
        V->state = D_FAILED;
        return;
    }
    V->pid = pid;
    V->state = D_STARTING;
    V->t_spawn = V->last_heard = util_now();
    V->ps->drafter_starts++;
    V->ps->last_drafter_pid = pid;
    if (V->debug)
        fprintf(stderr, "selfspec-pipeline: spawn pid=%d incarnation=%u verifier=%s drafter=%s session=%s\n",
                (int)pid, V->inc, V->v_ep, V->d_ep, sess);
}

static void send_setup(vproc *V)
{
    const model_config *c = &V->m->config;
    Selfspec__Envelope e;
    Selfspec__Setup s = SELFSPEC__SETUP__INIT;
    Selfspec__ModelIdentity id = SELFSPEC__MODEL_IDENTITY__INIT;
    id.name = (char *)c->name;
    id.n_layers = (uint32_t)c->n_layers;
    id.dim = (uint32_t)c->dim;
    id.vocab_size = (uint32_t)c->vocab_size;
    id.arena_bytes = V->m->arena.size;
    s.model = &id;
    s.model_path = (char *)V->pp->model_path;
    s.weights_shm = (char *)V->m->arena.shm_name;
    s.weights_fd = V->w_ro;
    s.kv_shm = "(kv)";
    s.kv_fd = V->kv_ro;
    s.kv_cap = (uint32_t)V->ctx;
    s.n_seqs = (uint32_t)V->n_seqs;
    s.skip_path = (char *)V->pp->skip_path;
    s.max_draft = (uint32_t)V->sp->max_draft;
    s.overlap = (uint32_t)(V->pp->overlap && V->n_seqs == 1);   /* several: overlap across sequences */
    s.heartbeat_ms = (uint32_t)V->pp->hb_ms;
    s.threads = (uint32_t)V->threads;
    s.draft_head = V->pp->draft_head;
    const char *pol = getenv("SELFSPEC_PIPELINE_SPECULATE");   /* benchmark knob: "always" */
    s.speculate = pol && !strcmp(pol, "always");
    env_init(V, &e, 0);
    e.body_case = SELFSPEC__ENVELOPE__BODY_SETUP;
    e.setup = &s;
    pipe_send(V->out, &e);
}

static void send_request_seq(vproc *V, uint32_t seq, uint32_t kind, int32_t pos, int32_t cur, const int32_t *acc,
                             int n_acc, int32_t k_max, int32_t end_pos, float gamma)
{
    Selfspec__Envelope e;
    Selfspec__DraftRequest r = SELFSPEC__DRAFT_REQUEST__INIT;
    r.kind = kind;
    r.pos = pos;
    r.cur = cur;
    r.n_accepted = (size_t)n_acc;
    r.accepted = (int32_t *)acc;
    r.k_max = k_max;
    r.end_pos = end_pos;
    r.gamma = gamma;
    env_init(V, &e, ++V->epoch);
    e.seq_id = seq;
    e.body_case = SELFSPEC__ENVELOPE__BODY_REQUEST;
    e.request = &r;
    if (V->n_seqs > 1) {
        V->seq_epoch[seq] = V->epoch;
        V->req_inc[seq] = V->inc;
        memset(&V->mblk[seq], 0, sizeof V->mblk[seq]);
    } else {
        memset(V->blk, 0, sizeof V->blk);
    }
    if (pipe_send(V->out, &e) != 0)
        V->last_heard = 0;   /* cannot even queue it: treat as dead at the next check */
}

static void send_request(vproc *V, uint32_t kind, int32_t pos, int32_t cur, const int32_t *acc, int n_acc,
                         int32_t k_max, int32_t end_pos, float gamma)
{
    send_request_seq(V, 0, kind, pos, cur, acc, n_acc, k_max, end_pos, gamma);
}

static void counters_from(pipe_counters *d, const Selfspec__Counters *c)
{
    if (!c)
        return;
    d->malformed = c->malformed;
    d->foreign = c->foreign;
    d->replayed = c->replayed;
    d->stale = c->stale;
    d->unexpected = c->unexpected;
}

static void handle(vproc *V, Selfspec__Envelope *e)
{
    pipe_counters *rx = &V->ps->rx;
    /* heartbeats come on their own socket: a separate increasing stream */
    uint64_t *last = e->body_case == SELFSPEC__ENVELOPE__BODY_HEARTBEAT ? &V->rx_last_hb : &V->rx_last;
    if (pipe_check(e, V->session, V->inc, last, rx) != 0)
        goto out;
    if (V->state == D_NONE || V->state == D_FAILED) {
        rx->stale++;
        goto out;
    }
    switch (e->body_case) {
    case SELFSPEC__ENVELOPE__BODY_HELLO:
        V->last_heard = util_now();
        if (V->state == D_STARTING && e->hello->pid == (uint32_t)V->pid) {
            send_setup(V);
            V->state = D_SETUP;
        } else {
            rx->unexpected++;
        }
        break;
    case SELFSPEC__ENVELOPE__BODY_HELLO_ACK:
        V->last_heard = util_now();
        if (V->state != D_SETUP) {
            rx->unexpected++;
        } else if (e->hello_ack->ok) {
            V->state = D_READY;
            if (V->debug)
                fprintf(stderr, "selfspec-pipeline: ready pid=%d incarnation=%u\n", (int)V->pid, V->inc);
        } else {
            fprintf(stderr, "selfspec: pipeline: the drafter cannot start: %s\n", e->hello_ack->error);
            drafter_gone(V, 1);
            V->state = D_FAILED;   /* a setup error would repeat: no restarts */
        }
        break;
    case SELFSPEC__ENVELOPE__BODY_BLOCK: {
        const Selfspec__DraftBlock *b = e->block;
        int ok = V->state == D_READY && e->seq_id < (uint32_t)V->n_seqs && b->n_tokens <= SPEC_MAX_DRAFT &&
                 (b->n_probs == b->n_tokens || b->n_probs == 0);
        for (size_t i = 0; ok && i < b->n_tokens; i++)
            ok = b->tokens[i] >= 0 && b->tokens[i] < V->m->config.vocab_size;
        if (!ok) {
            rx->malformed++;
            break;
        }
        V->last_heard = util_now();
        if (e->epoch != (V->n_seqs > 1 ? V->seq_epoch[e->seq_id] : V->epoch)) {
            rx->stale++;
            break;
        }
        slot *s = V->n_seqs > 1 ? &V->mblk[e->seq_id] : &V->blk[b->speculative ? 1 : 0];
        s->have = 1;
        s->epoch = e->epoch;
        s->pos = b->pos;
        s->cur = b->cur;
        s->n = (int32_t)b->n_tokens;
        if (b->n_tokens)
            memcpy(s->toks, b->tokens, b->n_tokens * sizeof(int32_t));
        V->ps->blocks++;
        V->ps->drafter_seconds += b->draft_seconds;
        break;
    }
    case SELFSPEC__ENVELOPE__BODY_HEARTBEAT:
        V->last_heard = util_now();
        if (e->heartbeat)
            counters_from(&V->drx_cur, e->heartbeat->counters);
        counters_add(&V->ps->drafter_rx, &V->drx_base, &V->drx_cur);
        break;
    default:
        rx->unexpected++;
        break;
    }
out:
    selfspec__envelope__free_unpacked(e, NULL);
}

/* Take what is in the inbox, waiting up to timeout_ms for the first. */
static void pump_inbox(vproc *V, int timeout_ms)
{
    for (;;) {
        int got;
        Selfspec__Envelope *e = pipe_recv(V->in, timeout_ms, &got, &V->ps->rx);
        if (!got)
            return;
        if (e)
            handle(V, e);
        timeout_ms = 0;
    }
}

/* Liveness: reap an exited drafter, kill a silent one, restart. */
static void check_drafter(vproc *V)
{
    if (V->pid > 0) {
        int st;
        if (waitpid(V->pid, &st, WNOHANG) == V->pid) {
            V->pid = 0;
            if (V->debug)
                fprintf(stderr, "selfspec-pipeline: drafter exited (status %d)\n", st);
            if (V->state != D_FAILED)
                drafter_gone(V, 0);
        }
    }
    double now = util_now();
    if (V->state == D_READY && (now - V->last_heard) * 1000.0 > V->pp->hb_timeout_ms) {
        pump_inbox(V, 0);   /* late messages first */
        if ((util_now() - V->last_heard) * 1000.0 > V->pp->hb_timeout_ms) {
            if (V->debug)
                fprintf(stderr, "selfspec-pipeline: drafter pid=%d silent: killed\n", (int)V->pid);
            V->ps->drafter_timeouts++;
            drafter_gone(V, 1);
        }
    }
    if ((V->state == D_STARTING || V->state == D_SETUP) && now - V->t_spawn > STARTUP_TIMEOUT_S) {
        V->ps->drafter_timeouts++;
        drafter_gone(V, 1);
    }
    if (V->state == D_NONE && !g_term) {
        if (V->restarts < V->pp->max_restarts) {
            if (V->ps->drafter_starts > 0)
                V->restarts++;
            spawn(V);
        } else {
            V->state = D_FAILED;
        }
    }
}

/* Wait for the block of the current epoch in slot `which`. Returns 1 when
 * it is there, 0 when the drafter died / went silent or we are stopping. */
static int wait_block(vproc *V, int which)
{
    double t0 = util_now();
    int r = 0;
    for (;;) {
        if (V->blk[which].have && V->blk[which].epoch == V->epoch) {
            r = 1;
            break;
        }
        if (V->state != D_READY || g_term)
            break;
        if ((util_now() - t0) * 1000.0 > BLOCK_TIMEOUTS * V->pp->hb_timeout_ms) {
            /* alive (heartbeats) but no block: stuck, or its channel broken */
            if (V->debug)
                fprintf(stderr, "selfspec-pipeline: drafter pid=%d sent no block: killed\n", (int)V->pid);
            V->ps->drafter_timeouts++;
            drafter_gone(V, 1);
            break;
        }
        pump_inbox(V, 20);
        if (!(V->blk[which].have && V->blk[which].epoch == V->epoch))
            check_drafter(V);
    }
    V->ps->wait_seconds += util_now() - t0;
    return r;
}

/* Several sequences: wait for sequence s's block. */
static int wait_mblock(vproc *V, int s)
{
    double t0 = util_now();
    int r = 0;
    for (;;) {
        if (V->mblk[s].have && V->mblk[s].epoch == V->seq_epoch[s]) {
            r = 1;
            break;
        }
        if (V->state != D_READY || V->req_inc[s] != V->inc || g_term)
            break;
        if ((util_now() - t0) * 1000.0 > BLOCK_TIMEOUTS * V->pp->hb_timeout_ms) {
            V->ps->drafter_timeouts++;
            drafter_gone(V, 1);
            break;
        }
        pump_inbox(V, 20);
        if (!(V->mblk[s].have && V->mblk[s].epoch == V->seq_epoch[s]))
            check_drafter(V);
    }
    V->ps->wait_seconds += util_now() - t0;
    return r;
}

static int emit_none(void *ctx, int32_t tok)
{
    (void)ctx;
    (void)tok;
    return 0;
}

/*
 * Several sequences (--pipeline-seqs N, the same prompt N times: a
 * throughput benchmark; only sequence 0 is printed). No speculation: every
 * sequence has its fresh request queued at the drafter, which drafts them in
 * turn, so while the verifier verifies sequence s the drafter drafts the next
 * one; s is re-requested as soon as it is verified.
 */
static int multi_loop(vproc *V, const model *m, fwd_state *fs, kv_cache *kvs, const spec_params *sp, sampler *smp,
                      float *logits, const int32_t *prompt, int32_t n_prompt, const gen_params *gp,
                      gen_emit_fn emit, void *ectx, gen_stats *st, spec_stats *ss_out, char *err, size_t errlen)
{
    int n = V->n_seqs;
    int32_t cur[MAX_SEQS];
    int stop[MAX_SEQS];
    spec_exit ex[MAX_SEQS];
    gen_stats gs[MAX_SEQS];
    memset(gs, 0, sizeof gs);
    double t0 = util_now();
    for (int s = 0; s < n; s++) {
        if (gen_prefill(m, fs, &kvs[s], prompt, n_prompt, logits, err, errlen) != 0)
            return -1;
        cur[s] = sampler_sample(smp, logits);
        ex[s] = (spec_exit){sp->gamma_init, sp->ar_init};
        stop[s] = spec_emit(gp, s ? emit_none : emit, ectx, &gs[s], cur[s]);
    }
    st->prompt_tokens = n_prompt * n;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    while (!g_term && V->state != D_READY && V->state != D_FAILED && V->ps->drafter_deaths == 0) {
        pump_inbox(V, 20);
        check_drafter(V);
    }
    int32_t end_pos = n_prompt + gp->max_tokens - 2;
    if (end_pos > kvs[0].cap - 2)
        end_pos = kvs[0].cap - 2;
    for (int s = 0;; s = (s + 1) % n) {
        int active = 0;
        for (int i = 0; i < n; i++)
            active += !stop[i];
        if (!active)
            break;
        if (g_term) {
            V->ps->terminated = 1;
            break;
        }
        if (stop[s])
            continue;
        kv_cache *kv = &kvs[s];
        int32_t L = kv->len;
        if (L + 1 >= kv->cap) {
            stop[s] = 1;
            continue;
        }
        pump_inbox(V, 0);
        check_drafter(V);
        /* keep a request queued for every live sequence */
        for (int i = 0; i < n && V->state == D_READY; i++) {
            int32_t Li = kvs[i].len, ki = sp->max_draft < end_pos - Li ? sp->max_draft : end_pos - Li;
            if (!stop[i] && ki > 0 && V->req_inc[i] != V->inc)
                send_request_seq(V, (uint32_t)i, 1, Li, cur[i], NULL, 0, ki, end_pos, ex[i].gamma);
        }
        int32_t k_max = sp->max_draft < end_pos - L ? sp->max_draft : end_pos - L;
        spec_block b = {0};
        double ta = util_now();
        if (k_max > 0 && V->state == D_READY && wait_mblock(V, s) && V->mblk[s].pos == L && V->mblk[s].cur == cur[s]) {
            b.n = V->mblk[s].n < k_max ? V->mblk[s].n : k_max;
            memcpy(b.tokens, V->mblk[s].toks, (size_t)b.n * sizeof(int32_t));
        }
        V->req_inc[s] = 0;   /* consumed: re-requested after verification */
        if (k_max > 0 && b.n == 0)
            V->ps->plain_steps++;
        double tb = util_now();
        int32_t acc, next;
        if (spec_verify(m, fs, kv, cur[s], &b, NULL, smp, logits, &acc, &next, err, errlen) != 0)
            return -1;
        ss_out->draft_seconds += tb - ta;
        ss_out->verify_seconds += util_now() - tb;
        spec_record(ss_out, &ex[s], sp, b.n, acc);
        stop[s] = spec_emit_block(&b, acc, next, gp, s ? emit_none : emit, ectx, &gs[s], NULL, NULL);
        cur[s] = next;
        int32_t L2 = kv->len, k2 = sp->max_draft < end_pos - L2 ? sp->max_draft : end_pos - L2;
        if (!stop[s] && k2 > 0 && V->state == D_READY)
            send_request_seq(V, (uint32_t)s, 1, L2, next, NULL, 0, k2, end_pos, ex[s].gamma);
    }
    st->decode_seconds = util_now() - t1;
    st->generated_tokens = 0;
    for (int s = 0; s < n; s++)
        st->generated_tokens += gs[s].generated_tokens;
    ss_out->final_gamma = ex[0].gamma;
    return 0;
}

static void exe_path(char *buf, size_t n)
{
    const char *env = getenv("SELFSPEC_DRAFTER");
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return;
    }
    char self[PATH_MAX];
    if (util_exe_dir(self, sizeof self) != 0) {
        snprintf(buf, n, "selfspec-drafter");
        return;
    }
    snprintf(buf, n, "%s/selfspec-drafter", self);
}

static int reopen_ro(int fd)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    return open(p, O_RDONLY | O_CLOEXEC);
}

static void shutdown_drafter(vproc *V)
{
    if (V->pid <= 0)
        return;
    if (V->out && V->state != D_FAILED) {
        Selfspec__Envelope e;
        Selfspec__Shutdown s = SELFSPEC__SHUTDOWN__INIT;
        env_init(V, &e, V->epoch);
        e.body_case = SELFSPEC__ENVELOPE__BODY_SHUTDOWN;
        e.shutdown = &s;
        pipe_send(V->out, &e);
        double t0 = util_now();
        while (util_now() - t0 < 2.0) {
            pump_inbox(V, 10);
            if (waitpid(V->pid, NULL, WNOHANG) == V->pid) {
                V->pid = 0;
                pump_inbox(V, 0);
                break;
            }
        }
    }
    if (V->pid > 0) {
        kill(V->pid, SIGKILL);
        waitpid(V->pid, NULL, 0);
        V->pid = 0;
    }
}

int gen_pipeline(const model *m, fwd_state *fs, int32_t ctx, const spec_params *sp, const pipe_params *pp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                 void *ectx, gen_stats *st, spec_stats *ss_out, pipe_stats *ps, char *err, size_t errlen)
{
    int rc = -1;
    memset(st, 0, sizeof *st);
    memset(ss_out, 0, sizeof *ss_out);
    memset(ps, 0, sizeof *ps);
    if (gp->sampling.temperature != 0.0f)
        return util_err(err, errlen, "--mode pipeline decodes greedily only (use --temperature 0, or --mode self-spec)");
    if (!m->arena.shm_name[0] || m->arena.shm_fd < 0)
        return util_err(err, errlen, "the pipeline needs the weights in shared memory (pipeline_prepare)");
    if (spec_params_check(sp, err, errlen) != 0)
        return -1;
    sampler smp;
    if (sampler_init(&smp, &gp->sampling, m->config.vocab_size, err, errlen) != 0)
        return -1;

    vproc V;
    memset(&V, 0, sizeof V);
    V.pp = pp;
    V.sp = sp;
    V.m = m;
    V.ps = ps;
    V.ctx = ctx;
    V.w_ro = V.kv_ro = -1;
    V.debug = getenv("SELFSPEC_PIPELINE_DEBUG") ? atoi(getenv("SELFSPEC_PIPELINE_DEBUG")) : 0;
    V.threads = pp->drafter_threads > 0 ? pp->drafter_threads : omp_get_max_threads();
    V.session = rand64();
    exe_path(V.exe, sizeof V.exe);
    int nseq = pp->n_seqs > 1 ? (pp->n_seqs < MAX_SEQS ? pp->n_seqs : MAX_SEQS) : 1;
    V.n_seqs = nseq;
    kv_cache kvs[MAX_SEQS];
    kv_cache kv = {0};
    pipe_shm kvshm = {.fd = -1};
    float *logits = NULL;

    char kvname[64];
    snprintf(kvname, sizeof kvname, "/selfspec-%d-%016llx-kv", (int)getpid(), (unsigned long long)rand64());
    if (pipe_kv_create(&kvshm, kvname, &m->config, ctx, nseq, kvs, err, errlen) != 0)
        goto out;
    kv = kvs[0];
    shm_unlink(kvname);                  /* mapped here, inherited by the drafter */
    V.w_ro = reopen_ro(m->arena.shm_fd);
    V.kv_ro = reopen_ro(kvshm.fd);
    if (V.w_ro < 0 || V.kv_ro < 0) {
        util_err(err, errlen, "reopening the shared memory read-only: %s", strerror(errno));
        goto out;
    }
    V.zctx = zmq_ctx_new();
    snprintf(V.v_ep, sizeof V.v_ep, "ipc://@selfspec-%d-%016llx-v", (int)getpid(), (unsigned long long)V.session);
    if (!(V.in = pipe_socket(V.zctx, ZMQ_PULL, V.v_ep, 1, err, errlen)))
        goto out;
    ps->arena_kb = (long)(m->arena.size >> 10);
    ps->kv_kb = (long)(kvshm.size >> 10);

    spawn(&V);                           /* starts while the prompt is prefilled */
    logits = mallocCheck((size_t)(SPEC_MAX_DRAFT + 1) * m->config.vocab_size * sizeof(float));
    if (nseq > 1) {
        rc = multi_loop(&V, m, fs, kvs, sp, &smp, logits, prompt, n_prompt, gp, emit, ectx, st, ss_out, err, errlen);
        goto mem;
    }
    double t1;
    int32_t cur;
    int stop = spec_begin(m, fs, &kv, &smp, prompt, n_prompt, gp, emit, ectx, st, logits, &cur, &t1, err, errlen);
    if (stop < 0)
        goto out;
    spec_exit ex = {sp->gamma_init, sp->ar_init};
    /* wait for the first drafter to be ready (later restarts do not block) */
    while (!stop && !g_term && V.state != D_READY && V.state != D_FAILED && V.ps->drafter_deaths == 0) {
        pump_inbox(&V, 20);
        check_drafter(&V);
    }
    int32_t end_pos = n_prompt + gp->max_tokens - 2;
    if (end_pos > kv.cap - 2)
        end_pos = kv.cap - 2;
    slot adopted = {0};
    int32_t acc_toks[SPEC_MAX_DRAFT + 1];
    int n_acc_toks = 0;
    while (!stop) {
        if (g_term) {
            ps->terminated = 1;
            break;
        }
        int32_t L = kv.len;
        if (L + 1 >= kv.cap) {
            fprintf(stderr, "selfspec: context full after %d tokens; stopping\n", L + 1);
            break;
        }
        int32_t k_max = sp->max_draft < end_pos - L ? sp->max_draft : end_pos - L;
        spec_block b = {0};
        pump_inbox(&V, 0);
        check_drafter(&V);
        double ta = util_now();
        if (k_max > 0 && V.state == D_READY) {
            if (adopted.have && adopted.pos == L && adopted.cur == cur) {
                b.n = adopted.n < k_max ? adopted.n : k_max;
                memcpy(b.tokens, adopted.toks, (size_t)b.n * sizeof(int32_t));
            } else {
                send_request(&V, 1, L, cur, acc_toks, n_acc_toks, k_max, end_pos, ex.gamma);
                if (wait_block(&V, 0) && V.blk[0].pos == L && V.blk[0].cur == cur) {
                    b.n = V.blk[0].n < k_max ? V.blk[0].n : k_max;
                    memcpy(b.tokens, V.blk[0].toks, (size_t)b.n * sizeof(int32_t));
                }
            }
        }
        adopted.have = 0;
        if (k_max > 0 && b.n == 0)
            ps->plain_steps++;
        double tb = util_now();
        int32_t acc, next;
        if (spec_verify(m, fs, &kv, cur, &b, NULL, &smp, logits, &acc, &next, err, errlen) != 0)
            goto out;
        ss_out->draft_seconds += tb - ta;
        ss_out->verify_seconds += util_now() - tb;
        spec_record(ss_out, &ex, sp, b.n, acc);
        stop = spec_emit_block(&b, acc, next, gp, emit, ectx, st, acc_toks, &n_acc_toks);
        if (!stop && pp->overlap && b.n > 0 && V.state == D_READY) {
            /* the drafter has been drafting the block after this one */
            int32_t L2 = kv.len;
            int32_t k2 = sp->max_draft < end_pos - L2 ? sp->max_draft : end_pos - L2;
            if (acc == b.n && k2 > 0 && wait_block(&V, 1) && V.blk[1].pos == L2 && V.blk[1].cur == next &&
                V.blk[1].n > 0) {
                adopted = V.blk[1];
                send_request(&V, 2, L2, next, acc_toks, n_acc_toks, k2, end_pos, ex.gamma);
                ps->spec_adopted++;
            } else {
                ps->spec_missed++;
                if (V.debug > 1)
                    fprintf(stderr, "selfspec-pipeline: miss acc=%d n=%d k2=%d have=%d epoch=%llu/%llu pos=%d/%d cur=%d/%d n=%d\n",
                            acc, b.n, k2, V.blk[1].have, (unsigned long long)V.blk[1].epoch,
                            (unsigned long long)V.epoch, V.blk[1].pos, L2, V.blk[1].cur, next, V.blk[1].n);
            }
        }
        cur = next;
    }
    st->decode_seconds = util_now() - t1;
    ss_out->final_gamma = ex.gamma;
    rc = 0;
mem:
    if (g_term)
        ps->terminated = 1;
    pipe_mem_read(getpid(), &ps->verifier_mem);
    if (V.pid > 0 && V.state == D_READY)
        pipe_mem_read(V.pid, &ps->drafter_mem);
out:
    shutdown_drafter(&V);
    if (V.out) zmq_close(V.out);
    if (V.in) zmq_close(V.in);
    if (V.zctx) zmq_ctx_term(V.zctx);
    if (V.w_ro >= 0) close(V.w_ro);
    if (V.kv_ro >= 0) close(V.kv_ro);
    pipe_shm_unmap(&kvshm);
    free(logits);
    sampler_free(&smp);
    return rc;
}

static void print_counters(FILE *f, const char *name, const pipe_counters *c)
{
    fprintf(f, "\"%s\": {\"malformed\": %llu, \"foreign\": %llu, \"replayed\": %llu, \"stale\": %llu, "
            "\"unexpected\": %llu}", name, (unsigned long long)c->malformed, (unsigned long long)c->foreign,
            (unsigned long long)c->replayed, (unsigned long long)c->stale, (unsigned long long)c->unexpected);
}

static void print_mem(FILE *f, const char *name, const pipe_mem *m)
{
    fprintf(f, "\"%s\": {\"rss_kb\": %ld, \"pss_kb\": %ld, \"pss_anon_kb\": %ld, \"pss_file_kb\": %ld, "
            "\"pss_shmem_kb\": %ld}", name, m->rss, m->pss, m->pss_anon, m->pss_file, m->pss_shmem);
}

void pipeline_print_stats(FILE *f, const pipe_params *pp, const pipe_stats *ps)
{
    fprintf(f, "\"pipeline\": {\"overlap\": %s, \"blocks\": %lld, \"spec_adopted\": %lld, \"spec_missed\": %lld, "
            "\"plain_steps\": %lld, \"wait_seconds\": %.4f, \"drafter_seconds\": %.4f, "
            "\"drafter_starts\": %lld, \"drafter_deaths\": %lld, "
            "\"drafter_timeouts\": %lld, \"last_drafter_pid\": %d, \"terminated\": %s, \"arena_kb\": %ld, "
            "\"kv_kb\": %ld, ",
            pp->overlap ? "true" : "false", (long long)ps->blocks, (long long)ps->spec_adopted,
            (long long)ps->spec_missed, (long long)ps->plain_steps, ps->wait_seconds, ps->drafter_seconds,
            (long long)ps->drafter_starts, (long long)ps->drafter_deaths, (long long)ps->drafter_timeouts,
            ps->last_drafter_pid, ps->terminated ? "true" : "false", ps->arena_kb, ps->kv_kb);
    print_counters(f, "verifier_rejected", &ps->rx);
    fprintf(f, ", ");
    print_counters(f, "drafter_rejected", &ps->drafter_rx);
    fprintf(f, ", ");
    print_mem(f, "verifier_mem", &ps->verifier_mem);
    fprintf(f, ", ");
    print_mem(f, "drafter_mem", &ps->drafter_mem);
    fprintf(f, "}");
}
