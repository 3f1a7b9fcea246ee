/*
 * drafter.c - bin/selfspec-drafter, the drafting process of the two-process
 * Draft & Verify pipeline. Started by the verifier (common/ipc/supervisor.c),
 * never by hand:
 *
 *   selfspec-drafter --connect EP --bind EP --session HEX --incarnation N --parent PID
 *
 * It maps the verifier's weight arena and verified KV cache read-only (shared
 * memory, inherited descriptors: no second copy of the weights), keeps its
 * own small draft scratch KV, and answers DraftRequests with DraftBlocks
 * (proto/selfspec.proto). With overlap on, after sending block n it goes on
 * to draft block n+1 assuming block n is accepted whole and its own guess of
 * the bonus token is right; any newer request aborts that speculation.
 *
 * On a GPU (the Setup carries a CUDA IPC blob) it opens the verifier's
 * device weights and verified KV through CUDA IPC instead, keeps its scratch
 * on the device, waits on the verifier's interprocess event before each
 * block and drafts through the CUDA backend's interface (model/backend.h:
 * masked forward passes, the draft rows' tokens and top-1 probabilities
 * taken on the device by draft_take, so no logits row comes back; full
 * head; no speculation past a block). Compiled, never run here (no GPU).
 *
 * Nothing it sends is trusted by the verifier beyond "a proposal", so a
 * wrong, late or missing block costs speed, never correctness.
 * Exit: 0 on Shutdown, SIGTERM or the verifier's death; 1 on a setup error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <omp.h>
#include <zmq.h>

#include "ipc/pipe.h"
#include "ipc/protocol.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "model/backend.h"
#include "model/cuda_backend.h"
#include "util/util.h"

#define CTX_MAX (2 * SPEC_MAX_DRAFT + 8)
#define MAX_SEQS 64

static volatile sig_atomic_t g_term;

static void on_term(int sig) { (void)sig; g_term = 1; }

typedef struct {
    int have;
    Selfspec__RequestKind kind;
    uint64_t epoch;
    uint32_t seq;
    int32_t pos, cur, k_max, end_pos;
    float gamma;
} request;

typedef struct {
    /* channel */
    void *zctx, *in, *out;
    uint64_t session, tx_no, rx_last;
    uint32_t incarnation;
    pid_t parent;
    pipe_counters rx;
    uint64_t blocks;
    /* heartbeats come from their own thread and socket (msg_no from the
     * same counter, checked as a separate stream by the verifier), so a long
     * draft step never looks like death; they stop when the main loop makes
     * no progress for stall_s (a hung drafter stays silent) */
    pthread_t hb_thread;
    int hb_running;
    void *hb_sock;
    pthread_mutex_t mu;          /* tx_no, published counters, progress */
    pipe_counters rx_pub;
    uint64_t blocks_pub;
    double progress;
    volatile int hb_stop;
    /* model */
    int attached;
    model m;
    pipe_shm kvshm;
    kv_cache *kvs;
    int n_seqs;
    int32_t kv_cap, vocab, max_draft;
    skip_set ss;
    spec_drafter d;
    fwd_state fs;
    sampler smp;
    int overlap, hb_ms, spec_always;
    /* drafting state: tokens ctx[0..n] at positions B..B+n of sequence seq;
     * ctx[0..n-1] have draft KV in the scratch, ctx[n] is pending */
    uint32_t seq;
    int32_t B, n;
    int32_t ctx[CTX_MAX];
    int spec_valid;          /* a speculative block starting at spec_pos was sent */
    int32_t spec_pos;
    float spec_last_conf;    /* confidence of its last token */
    uint64_t epoch;          /* of the request being served */
    int32_t end_pos;
    float gamma;
    request pending[MAX_SEQS];   /* newest request per sequence, served oldest first */
    uint64_t seq_epoch[MAX_SEQS];  /* epoch of the last request served per sequence */
    /* on a GPU (cuda_ipc in the Setup): the verifier's weights and verified
     * KV opened through CUDA IPC, a device scratch, the draft's mask. On a
     * second GPU (cuda_draft_device): cm is the drafter's own copy of the
     * sublayers it runs, pkv the verifier's KV over peer access, and vkv a
     * local copy of it, valid below position copied. The passes go through
     * be, the CUDA backend over cm, to which gvkv and gscr show vkv and scr */
    int on_gpu;
    cuda_model *cm;
    cuda_kv *vkv, *scr, *pkv;
    int32_t copied;
    model_backend *be;
    kv_cache gvkv, gscr;
    layer_mask mask;
} drafter;

static void env_init(drafter *D, Selfspec__Envelope *e, uint32_t seq, uint64_t epoch)
{
    selfspec__envelope__init(e);
    e->version = PIPE_VERSION;
    e->session = D->session;
    e->incarnation = D->incarnation;
    pthread_mutex_lock(&D->mu);
    e->msg_no = ++D->tx_no;
    pthread_mutex_unlock(&D->mu);
    e->seq_id = seq;
    e->epoch = epoch;
}

/* Publish counters and progress for the heartbeat thread. */
static void publish(drafter *D)
{
    pthread_mutex_lock(&D->mu);
    D->rx_pub = D->rx;
    D->blocks_pub = D->blocks;
    D->progress = util_now();
    pthread_mutex_unlock(&D->mu);
}

static void send_heartbeat(drafter *D, void *sock)
{
    Selfspec__Envelope e;
    Selfspec__Heartbeat hb = SELFSPEC__HEARTBEAT__INIT;
    Selfspec__Counters c = SELFSPEC__COUNTERS__INIT;
    pthread_mutex_lock(&D->mu);
    pipe_counters rx = D->rx_pub;
    hb.blocks = D->blocks_pub;
    pthread_mutex_unlock(&D->mu);
    c.malformed = rx.malformed;
    c.foreign = rx.foreign;
    c.replayed = rx.replayed;
    c.stale = rx.stale;
    c.unexpected = rx.unexpected;
    hb.counters = &c;
    env_init(D, &e, 0, 0);
    e.body_case = SELFSPEC__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    pipe_send(sock, &e);
}

#define STALL_S 10.0

static void *hb_main(void *arg)
{
    drafter *D = arg;
    while (!D->hb_stop) {
        pthread_mutex_lock(&D->mu);
        double since = util_now() - D->progress;
        pthread_mutex_unlock(&D->mu);
        if (since < STALL_S)
            send_heartbeat(D, D->hb_sock);
        usleep((useconds_t)D->hb_ms * 1000);
    }
    return NULL;
}

static void send_block(drafter *D, int32_t pos, int32_t cur, const int32_t *toks, const float *probs, int n,
                       int speculative, double secs)
{
    Selfspec__Envelope e;
    Selfspec__DraftBlock b = SELFSPEC__DRAFT_BLOCK__INIT;
    b.pos = pos;
    b.cur = cur;
    b.n_tokens = (size_t)n;
    b.tokens = (int32_t *)toks;
    b.n_probs = (size_t)n;
    b.probs = (float *)probs;
    b.speculative = speculative;
    b.draft_seconds = secs;
    env_init(D, &e, D->seq, D->epoch);
    e.body_case = SELFSPEC__ENVELOPE__BODY_BLOCK;
    e.block = &b;
    pipe_send(D->out, &e);
    D->blocks++;
}

/* ---- messages ---- */

/* Check and take one message. Requests newer than the one being served go
 * to D->pending. Returns -1 when the drafter must exit (Shutdown). */
static int handle(drafter *D, Selfspec__Envelope *e)
{
    int rc = 0;
    if (pipe_check(e, D->session, D->incarnation, &D->rx_last, &D->rx) != 0)
        goto out;
    switch (e->body_case) {
    case SELFSPEC__ENVELOPE__BODY_SHUTDOWN:
        rc = -1;
        break;
    case SELFSPEC__ENVELOPE__BODY_REQUEST: {
        const Selfspec__DraftRequest *r = e->request;
        if (!D->attached || !proto_request_valid(r, e->seq_id, D->n_seqs, D->kv_cap, D->vocab, D->max_draft)) {
            D->rx.malformed++;
            break;
        }
        request *pq = &D->pending[e->seq_id];
        uint64_t newest = pq->have ? pq->epoch : D->seq_epoch[e->seq_id];
        if (e->epoch <= newest) {
            D->rx.stale++;
            break;
        }
        *pq = (request){1, r->kind, e->epoch, e->seq_id, r->pos, r->cur, r->k_max, r->end_pos, r->gamma};
        break;
    }
    case SELFSPEC__ENVELOPE__BODY_SETUP:   /* only before attaching; see setup */
        if (D->attached)
            D->rx.unexpected++;
        break;
    default:
        D->rx.unexpected++;
        break;
    }
out:
    selfspec__envelope__free_unpacked(e, NULL);
    return rc;
}

/* Drain the inbox without waiting. Returns -1 on Shutdown. */
static int drain(drafter *D)
{
    for (;;) {
        int got;
        Selfspec__Envelope *e = pipe_recv(D->in, 0, &got, &D->rx);
        if (!got)
            return 0;
        if (e && handle(D, e) < 0)
            return -1;
    }
}

/* ---- drafting ---- */

/* Draft up to k_max tokens continuing cur at position pos of sequence
 * D->seq (draft KV in the scratch from base on) into b, stopping after a
 * token whose top-1 probability is below gamma; *last receives the last
 * token's. CPU: spec_draft_from; GPU: one masked pass of the backend per
 * token over the verifier's KV, after waiting on its event, its token and
 * top-1 probability taken on the device (draft_take, greedy). */
static int draft_from(drafter *D, int32_t base, int32_t pos, int32_t cur, int32_t k_max, float gamma, spec_block *b,
                      float *last, char *err, size_t errlen)
{
    b->n = 0;
    b->n_ctx = 0;
    *last = 0.0f;
    if (!D->on_gpu) {
        if (spec_draft_from(&D->d, &D->fs, &D->kvs[D->seq], base, pos, cur, k_max, gamma, &D->smp, b, err,
                            errlen) != 0)
            return -1;
        if (b->n > 0)
            *last = sampler_top1_prob(D->d.logits, D->d.width, NULL);
        return 0;
    }
#ifdef DRAFTER_CUDA
    if (cuda_ipc_wait(D->cm, err, errlen) != 0)
        return -1;
    if (D->pkv) {
        /* positions below base are verified and final (a verification only
         * writes at and past the verified length), so the local copy only
         * ever grows; a base below it means another sequence: copy anew */
        if (base < D->copied)
            D->copied = 0;
        if (cuda_kv_copy(D->cm, D->vkv, D->pkv, &D->mask, D->copied, base, err, errlen) != 0)
            return -1;
        D->copied = base;
    }
    int32_t tok = cur, am, slot = -1;
    const samp_req greedy = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .kind = SAMP_DRAW};
    D->gvkv.len = base;   /* verified below base; the draft's rows go to the scratch */
    while (b->n < k_max) {
        fwd_seq q = {.tokens = &tok, .n_tokens = 1, .pos = pos + b->n, .kv = &D->gvkv, .scratch = &D->gscr,
                     .scratch_base = base, .logits_from = 0};
        if (D->be->forward(D->be, &q, 1, &D->mask, NULL, NULL, &am, err, errlen) != 0 ||
            D->be->draft_take(D->be, &greedy, &slot, 1, &tok, last, err, errlen) != 0)
            return -1;
        spec_block_push(b, NULL, tok);
        if (spec_exit_now(*last, gamma))
            break;
    }
    return 0;
#else
    return util_err(err, errlen, "this drafter has no GPU path (selfspec-drafter-cuda has)");
#endif
}

/* One draft step: forward ctx[n] at B+n, append the draft's token. */
static int step(drafter *D, float *conf, char *err, size_t errlen)
{
    spec_block b;
    if (draft_from(D, D->B, D->B + D->n, D->ctx[D->n], 1, 0.0f, &b, conf, err, errlen) != 0)
        return -1;
    D->ctx[++D->n] = b.tokens[0];
    return 0;
}

/* Drop the scratch positions before new_base (now verified). Returns 0, or
 * -1 with err (a device copy failed). */
static int rebase(drafter *D, int32_t new_base, char *err, size_t errlen)
{
    int32_t shift = new_base - D->B;
#ifdef DRAFTER_CUDA
    if (D->on_gpu && cuda_kv_shift(D->scr, shift, D->n, err, errlen) != 0)
        return -1;
#endif
    kv_cache *s = &D->d.scratch;
    size_t row = (size_t)s->kv_dim;
    for (int32_t l = 0; l < s->n_layers; l++) {
        kv_elem *k = s->k + (size_t)l * s->cap * row, *v = s->v + (size_t)l * s->cap * row;
        memmove(k, k + shift * row, (size_t)(D->n - shift) * row * sizeof(kv_elem));
        memmove(v, v + shift * row, (size_t)(D->n - shift) * row * sizeof(kv_elem));
    }
    memmove(D->ctx, D->ctx + shift, (size_t)(D->n - shift + 1) * sizeof(int32_t));
    D->n -= shift;
    D->B = new_base;
    return 0;
}

/* Draft up to k_max tokens after ctx[n] with the usual exit rule (stop
 * after a token whose top-1 probability is below gamma), one spec_draft_from
 * step at a time so that the inbox is polled in between: a newer request
 * aborts. Returns the number drafted, DR_ABORT, DR_SHUTDOWN or DR_ERROR. */
enum { DR_ERROR = -1, DR_SHUTDOWN = -2, DR_ABORT = -3 };

static int draft_run(drafter *D, int32_t k_max, float *probs, char *err, size_t errlen)
{
    int32_t i = 0;
    while (i < k_max) {
        publish(D);
        if (drain(D) < 0)
            return DR_SHUTDOWN;
        if (D->pending[D->seq].have || g_term)
            return DR_ABORT;
        if (step(D, &probs[i], err, errlen) != 0)
            return DR_ERROR;
        if (spec_exit_now(probs[i++], D->gamma))
            break;
    }
    return i;
}

/* Speculate the block after the current one: guess the bonus token g (one
 * step), then draft after g. */
static int speculate(drafter *D, char *err, size_t errlen)
{
    D->spec_valid = 0;
    double t0 = util_now();
    int32_t gpos = D->B + D->n + 1;                 /* position of the guess */
    int32_t k_max = spec_draft_limit(D->max_draft, gpos, D->end_pos);
    /* and the scratch's room: the guess is at scratch row n + 1, rows up to cap - 2 */
    k_max = spec_draft_limit(k_max, D->n + 1, D->d.scratch.cap - 2);
    if (k_max <= 0) {
        send_block(D, gpos, -1, NULL, NULL, 0, 1, 0.0);   /* abstain */
        return 0;
    }
    float conf, probs[SPEC_MAX_DRAFT];
    if (drain(D) < 0)
        return DR_SHUTDOWN;
    if (D->pending[D->seq].have || g_term)
        return 0;
    if (step(D, &conf, err, errlen) != 0)
        return DR_ERROR;
    int32_t g = D->ctx[D->n], first = D->n + 1;
    int r = draft_run(D, k_max, probs, err, errlen);
    if (r == DR_ABORT)
        return 0;                                     /* superseded: dropped */
    if (r < 0)
        return r;
    send_block(D, gpos, g, D->ctx + first, probs, r, 1, util_now() - t0);
    D->spec_valid = 1;
    D->spec_pos = gpos;
    D->spec_last_conf = r > 0 ? probs[r - 1] : 0.0f;
    return 0;
}

/* Serve the pending request. Returns 0 or DR_ERROR / DR_SHUTDOWN. */
static int serve(drafter *D, char *err, size_t errlen)
{
    request *pq = NULL;   /* the oldest pending request (sequences in turn) */
    for (int i = 0; i < D->n_seqs; i++)
        if (D->pending[i].have && (!pq || D->pending[i].epoch < pq->epoch))
            pq = &D->pending[i];
    request r = *pq;
    pq->have = 0;
    D->seq_epoch[r.seq] = r.epoch;
    D->epoch = r.epoch;
    D->gamma = r.gamma;
    D->end_pos = r.end_pos;
    if (r.kind == SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE) {
        /* continue: the speculative block that started at r.pos was adopted */
        if (!D->overlap || !D->spec_valid || r.seq != D->seq || r.pos != D->spec_pos ||
            D->ctx[r.pos - D->B] != r.cur) {
            send_block(D, r.pos, -1, NULL, NULL, 0, 1, 0.0);   /* cannot: abstain */
            D->spec_valid = 0;
            return 0;
        }
        if (rebase(D, r.pos, err, errlen) != 0)
            return DR_ERROR;
        if (!D->spec_always && spec_exit_now(D->spec_last_conf, D->gamma)) {   /* it ended unsure: likely cut, do not build on it */
            D->spec_valid = 0;
            send_block(D, D->B + D->n + 1, -1, NULL, NULL, 0, 1, 0.0);
            return 0;
        }
        return speculate(D, err, errlen);
    }
    /* fresh: draft from (pos, cur) */
    D->seq = r.seq;
    D->B = r.pos;
    D->n = 0;
    D->ctx[0] = r.cur;
    D->spec_valid = 0;
    int32_t k_max = spec_draft_limit(r.k_max, r.pos, r.end_pos);
    /* The verifier waits for this block: one spec_draft call, as the
     * single-process loop drafts (no polling between steps needed). Only
     * the last token's confidence is recomputed (the speculation policy
     * needs it); the others are reported as 0 (unknown). */
    float probs[SPEC_MAX_DRAFT] = {0}, last = 0.0f;
    double t0 = util_now();
    spec_block b = {0};
    if (k_max > 0 && draft_from(D, D->B, D->B, r.cur, k_max, r.gamma, &b, &last, err, errlen) != 0)
        return DR_ERROR;
    int n = b.n;
    memcpy(D->ctx + 1, b.tokens, (size_t)n * sizeof(int32_t));
    D->n = n;
    if (n > 0)
        probs[n - 1] = last;
    send_block(D, r.pos, r.cur, D->ctx + 1, probs, n, 0, util_now() - t0);
    if (D->overlap && n > 0) {
        /* Speculate only past a block that ended confident (cut by the
         * length limit): one that ended on a token below gamma is likely to
         * be cut there, and the speculation would only take cores from the
         * verification. Abstain at once so the verifier does not wait. */
        if (D->spec_always || probs[n - 1] >= D->gamma)
            return speculate(D, err, errlen);
        send_block(D, D->B + D->n + 1, -1, NULL, NULL, 0, 1, 0.0);
    }
    return 0;
}

/* ---- setup ---- */

static int setup(drafter *D, const Selfspec__Setup *s, char *err, size_t errlen)
{
    int gpu = s->cuda_ipc.len > 0;
    if (!s->model || s->weights_fd < 0 || (s->kv_fd < 0 && !gpu) || s->n_seqs < 1 || s->n_seqs > MAX_SEQS ||
        s->max_draft < 1 || s->max_draft > SPEC_MAX_DRAFT || s->kv_cap < 16 || s->kv_cap > (1u << 24) ||
        (gpu && (s->cuda_ipc.len != CUDA_IPC_BLOB_BYTES || s->n_seqs != 1 || s->cuda_device < 0)))
        return util_err(err, errlen, "bad setup message");
    if (s->threads > 0)
        omp_set_num_threads((int)s->threads);
    if (model_attach_fd(&D->m, s->model_path, s->weights_shm, s->weights_fd, err, errlen) != 0)
        return -1;
    D->attached = 1;
    const model_config *c = &D->m.config;
    if (strcmp(c->name, s->model->name) != 0 || (uint32_t)c->n_layers != s->model->n_layers ||
        (uint32_t)c->dim != s->model->dim || (uint32_t)c->vocab_size != s->model->vocab_size ||
        D->m.arena.size != s->model->arena_bytes)
        return util_err(err, errlen, "model identity differs from the verifier's");
    D->n_seqs = (int)s->n_seqs;
    D->kv_cap = (int32_t)s->kv_cap;
    D->vocab = c->vocab_size;
    D->max_draft = (int32_t)s->max_draft;
    D->overlap = s->overlap != 0;
    D->spec_always = s->speculate == 1;
    D->hb_ms = s->heartbeat_ms ? (int)s->heartbeat_ms : 100;
    D->kvs = callocCheck((size_t)D->n_seqs, sizeof(kv_cache));
    if (!gpu && pipe_kv_attach(&D->kvshm, s->kv_fd, c, D->kv_cap, D->n_seqs, D->kvs, err, errlen) != 0)
        return -1;
    close(s->weights_fd);   /* mapped: the inherited descriptors are no longer needed */
    if (s->kv_fd >= 0)
        close(s->kv_fd);
    /* the verifier's choice, by the same function: "none" or the path, and its --draft-head */
    if (skipset_choose(&D->ss, s->skip_path[0] ? s->skip_path : "none", (int32_t)s->draft_head, "", c, err,
                       errlen) != 0)
        return -1;
    if (spec_drafter_init(&D->d, &D->m, &D->ss, D->max_draft, err, errlen) != 0)
        return -1;
    /* scratch for block n (K+1 positions) and the speculative block n+1 */
    kv_free(&D->d.scratch);
    if (kv_init(&D->d.scratch, c, 2 * (D->max_draft + 1) + 1, err, errlen) != 0)
        return -1;
    fwd_state_init(&D->fs, c, 1, D->kv_cap);
    sampler_params sp = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    if (sampler_init(&D->smp, &sp, c->vocab_size, err, errlen) != 0)
        return -1;
#ifndef DRAFTER_CUDA
    if (gpu)
        return util_err(err, errlen, "this drafter has no GPU path (selfspec-drafter-cuda has)");
#else
    if (gpu) {   /* the verifier's device memory, a device scratch, the mask */
        skipset_mask(&D->ss, &D->mask);
        int own = s->cuda_draft_device - 1;   /* two GPUs: the drafter's own device */
        if (own >= 0 && own != s->cuda_device) {
            /* its own copy of the sublayers it runs, the verified KV copied as it grows */
            if (!(D->cm = cuda_model_load_masked(&D->m, own, &D->mask, err, errlen)) ||
                !(D->pkv = cuda_ipc_import_kv(D->cm, s->cuda_ipc.data, err, errlen)) ||
                !(D->vkv = cuda_kv_init(D->cm, cuda_kv_cap(D->pkv), err, errlen)))
                return -1;
        } else if (!(D->cm = cuda_ipc_import(s->cuda_ipc.data, s->cuda_device, &D->vkv, err, errlen)))
            return -1;
        const model_config *g = cuda_model_get_config(D->cm);
        if (g->n_layers != c->n_layers || g->dim != c->dim || g->vocab_size != c->vocab_size)
            return util_err(err, errlen, "the CUDA IPC model differs from the verifier's");
        /* the backend over the device model (borrowed), no KV budget of its
         * own: the caches are the verifier's KV and this scratch, viewed;
         * SELFSPEC_CUDA_GRAPHS=0 launches every pass directly, as in the
         * verifier's commands */
        const char *gv = getenv("SELFSPEC_CUDA_GRAPHS");
        backend_cuda_params bp = {.device = own >= 0 ? own : (int)s->cuda_device, .max_tokens = 1,
                                  .ctx = D->kv_cap, .kv_mem = 0, .graphs = !(gv && !strcmp(gv, "0")),
                                  .cm = D->cm};
        if (!(D->scr = cuda_kv_init(D->cm, 2 * (D->max_draft + 1) + 1, err, errlen)) ||
            !(D->be = backend_cuda_open_params(&D->m, &bp, err, errlen)) ||
            backend_cuda_kv_wrap(D->be, &D->gvkv, D->vkv, err, errlen) != 0 ||
            backend_cuda_kv_wrap(D->be, &D->gscr, D->scr, err, errlen) != 0)
            return -1;
        /* one GPU: sequential (the drafter's kernels would only take the
         * verifier's SMs without MPS); two: the verifier's overlap choice */
        if (!D->pkv)
            D->overlap = 0;
        D->on_gpu = 1;
    }
#endif
    return 0;
}

static int parse_u64(const char *s, int base, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || !*s || *end)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"connect", required_argument, 0, 'c'}, {"bind", required_argument, 0, 'b'},
        {"session", required_argument, 0, 's'}, {"incarnation", required_argument, 0, 'i'},
        {"parent", required_argument, 0, 'p'}, {0, 0, 0, 0}};
    const char *connect_ep = NULL, *bind_ep = NULL;
    drafter *D = callocCheck(1, sizeof *D);
    pthread_mutex_init(&D->mu, NULL);
    uint64_t v;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'c': connect_ep = optarg; break;
        case 'b': bind_ep = optarg; break;
        case 's': if (parse_u64(optarg, 16, &D->session)) return 2; break;
        case 'i': if (parse_u64(optarg, 10, &v) || v > UINT32_MAX) return 2; D->incarnation = (uint32_t)v; break;
        case 'p': if (parse_u64(optarg, 10, &v)) return 2; D->parent = (pid_t)v; break;
        default:
            fprintf(stderr, "selfspec-drafter: started by 'selfspec generate --mode pipeline', not by hand\n");
            return 2;
        }
    }
    if (!connect_ep || !bind_ep || !D->session || !D->parent) {
        fprintf(stderr, "selfspec-drafter: started by 'selfspec generate --mode pipeline', not by hand\n");
        return 2;
    }
    /* Die with the verifier (SIGTERM: the same drain path as a shutdown). */
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != D->parent)
        return 0;

    char err[512];
    int rc = 1;
    D->zctx = zmq_ctx_new();
    if (!(D->in = pipe_socket(D->zctx, ZMQ_PULL, bind_ep, 1, err, sizeof err)) ||
        !(D->out = pipe_socket(D->zctx, ZMQ_PUSH, connect_ep, 0, err, sizeof err))) {
        fprintf(stderr, "selfspec-drafter: %s\n", err);
        goto done;
    }
    {   /* hello, then wait for the setup */
        Selfspec__Envelope e;
        Selfspec__Hello h = SELFSPEC__HELLO__INIT;
        h.role = 1;
        h.pid = (uint32_t)getpid();
        env_init(D, &e, 0, 0);
        e.body_case = SELFSPEC__ENVELOPE__BODY_HELLO;
        e.hello = &h;
        pipe_send(D->out, &e);
    }
    double t0 = util_now();
    while (!D->attached) {
        if (g_term || getppid() != D->parent || util_now() - t0 > 30.0) {
            rc = g_term ? 0 : 1;
            goto done;
        }
        int got;
        Selfspec__Envelope *e = pipe_recv(D->in, 100, &got, &D->rx);
        if (!e)
            continue;
        if (pipe_check(e, D->session, D->incarnation, &D->rx_last, &D->rx) == 0) {
            if (e->body_case == SELFSPEC__ENVELOPE__BODY_SETUP) {
                int ok = setup(D, e->setup, err, sizeof err) == 0;
                Selfspec__Envelope a;
                Selfspec__HelloAck ack = SELFSPEC__HELLO_ACK__INIT;
                ack.ok = ok;
                ack.error = ok ? "" : err;
                ack.pid = (uint32_t)getpid();
                env_init(D, &a, 0, 0);
                a.body_case = SELFSPEC__ENVELOPE__BODY_HELLO_ACK;
                a.hello_ack = &ack;
                pipe_send(D->out, &a);
                selfspec__envelope__free_unpacked(e, NULL);
                if (!ok) {
                    fprintf(stderr, "selfspec-drafter: %s\n", err);
                    usleep(100000);   /* let the ack leave (linger is 0) */
                    goto done;
                }
                break;
            } else if (e->body_case == SELFSPEC__ENVELOPE__BODY_SHUTDOWN) {
                selfspec__envelope__free_unpacked(e, NULL);
                rc = 0;
                goto done;
            }
            D->rx.unexpected++;
        }
        selfspec__envelope__free_unpacked(e, NULL);
    }

    publish(D);
    if (!(D->hb_sock = pipe_socket(D->zctx, ZMQ_PUSH, connect_ep, 0, err, sizeof err)) ||
        pthread_create(&D->hb_thread, NULL, hb_main, D) != 0) {
        fprintf(stderr, "selfspec-drafter: heartbeat: %s\n", err);
        goto done;
    }
    D->hb_running = 1;
    for (;;) {
        publish(D);
        if (g_term || getppid() != D->parent)
            break;
        int any = 0;
        for (int i = 0; i < D->n_seqs; i++)
            any |= D->pending[i].have;
        if (any) {
            int r = serve(D, err, sizeof err);
            if (r == DR_ERROR) {
                fprintf(stderr, "selfspec-drafter: %s\n", err);
                goto done;
            }
            if (r == DR_SHUTDOWN)
                break;
            continue;
        }
        int got;
        Selfspec__Envelope *e = pipe_recv(D->in, D->hb_ms, &got, &D->rx);
        if (e && handle(D, e) < 0)
            break;
    }
    rc = 0;
done:
    if (D->hb_running) {
        D->hb_stop = 1;
        pthread_join(D->hb_thread, NULL);
        publish(D);
        send_heartbeat(D, D->hb_sock);   /* final counters */
        usleep(20000);                   /* linger is 0: let it leave */
    }
    if (D->hb_sock) zmq_close(D->hb_sock);
    if (D->out) zmq_close(D->out);
    if (D->in) zmq_close(D->in);
    if (D->zctx) zmq_ctx_term(D->zctx);
#ifdef DRAFTER_CUDA
    /* the device objects (NULL when none), before the verifier frees what they alias */
    if (D->be) {
        D->be->kv_close(D->be, &D->gvkv);   /* the views only */
        D->be->kv_close(D->be, &D->gscr);
        backend_cuda_close(D->be);          /* not D->cm: borrowed */
    }
    cuda_kv_free(D->scr);
    cuda_kv_free(D->vkv);
    cuda_kv_free(D->pkv);
    cuda_model_free(D->cm);
#endif
    if (D->mask.attn)
        skipset_mask_free(&D->mask);
    if (D->smp.probs) sampler_free(&D->smp);
    if (D->fs.x) fwd_state_free(&D->fs);
    if (D->d.logits) spec_drafter_free(&D->d);
    if (D->ss.attn_skip) skipset_free(&D->ss);
    if (D->kvshm.base)
        pipe_shm_unmap(&D->kvshm);
    free(D->kvs);
    if (D->attached) model_free(&D->m);
    pthread_mutex_destroy(&D->mu);
    free(D);
    return rc;
}
