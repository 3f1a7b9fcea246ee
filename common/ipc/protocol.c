/*
 * protocol.c - the pipeline protocol's state machine and message checks
 * (see protocol.h): envelopes, requests and epochs, and what the verifier
 * accepts from the drafter.
 */
#include "ipc/protocol.h"

#include <string.h>

static void counters_add(pipe_counters *d, const pipe_counters *a, const pipe_counters *b)
{
    d->malformed = a->malformed + b->malformed;
    d->foreign = a->foreign + b->foreign;
    d->replayed = a->replayed + b->replayed;
    d->stale = a->stale + b->stale;
    d->unexpected = a->unexpected + b->unexpected;
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

void proto_init(proto_link *L, uint64_t session, int n_seqs, int32_t vocab)
{
    memset(L, 0, sizeof *L);
    L->session = session;
    L->n_seqs = n_seqs;
    L->vocab = vocab;
    L->state = PROTO_NONE;
}

void proto_start(proto_link *L, uint32_t inc, int32_t pid)
{
    L->inc = inc;
    L->pid = pid;
    L->tx_no = 0;
    L->rx_last = L->rx_last_hb = 0;
    L->state = PROTO_STARTING;
}

void proto_lost(proto_link *L)
{
    L->state = PROTO_NONE;
    counters_add(&L->drx_base, &L->drx_base, &L->drx_cur);
    memset(&L->drx_cur, 0, sizeof L->drx_cur);
    if (L->n_seqs == 1) {
        memset(&L->fresh[0], 0, sizeof L->fresh[0]);
        memset(&L->spec, 0, sizeof L->spec);
    }
}

void proto_envelope(proto_link *L, Selfspec__Envelope *e, uint32_t seq, uint64_t epoch)
{
    selfspec__envelope__init(e);
    e->version = PIPE_VERSION;
    e->session = L->session;
    e->incarnation = L->inc;
    e->msg_no = ++L->tx_no;
    e->seq_id = seq;
    e->epoch = epoch;
}

void proto_request(proto_link *L, Selfspec__Envelope *e, Selfspec__DraftRequest *r, uint32_t seq,
                   Selfspec__RequestKind kind, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos,
                   float gamma)
{
    selfspec__draft_request__init(r);
    r->kind = kind;
    r->pos = pos;
    r->cur = cur;
    r->k_max = k_max;
    r->end_pos = end_pos;
    r->gamma = gamma;
    proto_envelope(L, e, seq, ++L->epoch);
    e->body_case = SELFSPEC__ENVELOPE__BODY_REQUEST;
    e->request = r;
    L->seq_epoch[seq] = L->epoch;
    L->req_inc[seq] = L->inc;
    memset(&L->fresh[seq], 0, sizeof L->fresh[seq]);
    if (seq == 0)
        memset(&L->spec, 0, sizeof L->spec);
}

static proto_event take_block(proto_link *L, const Selfspec__Envelope *e)
{
    const Selfspec__DraftBlock *b = e->block;
    int ok = L->state == PROTO_READY && e->seq_id < (uint32_t)L->n_seqs && b->n_tokens <= SPEC_MAX_DRAFT &&
             (b->n_probs == b->n_tokens || b->n_probs == 0);
    for (size_t i = 0; ok && i < b->n_tokens; i++)
        ok = b->tokens[i] >= 0 && b->tokens[i] < L->vocab;
    if (!ok) {
        L->rx.malformed++;
        return PROTO_REJECTED;
    }
    if (e->epoch != L->seq_epoch[e->seq_id]) {
        L->rx.stale++;
        return PROTO_HEARD;
    }
    proto_block *s = L->n_seqs > 1 ? &L->fresh[e->seq_id] : b->speculative ? &L->spec : &L->fresh[0];
    s->have = 1;
    s->epoch = e->epoch;
    s->pos = b->pos;
    s->cur = b->cur;
    s->n = (int32_t)b->n_tokens;
    if (b->n_tokens)
        memcpy(s->toks, b->tokens, b->n_tokens * sizeof(int32_t));
    L->blocks++;
    L->drafter_seconds += b->draft_seconds;
    return PROTO_BLOCK;
}

proto_event proto_receive(proto_link *L, const Selfspec__Envelope *e)
{
    pipe_counters *rx = &L->rx;
    /* heartbeats come on their own socket: a separate increasing stream */
    uint64_t *last = e->body_case == SELFSPEC__ENVELOPE__BODY_HEARTBEAT ? &L->rx_last_hb : &L->rx_last;
    if (pipe_check(e, L->session, L->inc, last, rx) != 0)
        return PROTO_REJECTED;
    if (L->state == PROTO_NONE || L->state == PROTO_FAILED) {
        rx->stale++;
        return PROTO_REJECTED;
    }
    switch (e->body_case) {
    case SELFSPEC__ENVELOPE__BODY_HELLO:
        if (L->state == PROTO_STARTING && e->hello->pid == (uint32_t)L->pid) {
            L->state = PROTO_SETUP;
            return PROTO_HELLO;
        }
        rx->unexpected++;
        return PROTO_HEARD;
    case SELFSPEC__ENVELOPE__BODY_HELLO_ACK:
        if (L->state != PROTO_SETUP) {
            rx->unexpected++;
            return PROTO_HEARD;
        }
        if (!e->hello_ack->ok)
            return PROTO_ACK_FAILED;
        L->state = PROTO_READY;
        return PROTO_ACK_OK;
    case SELFSPEC__ENVELOPE__BODY_BLOCK:
        return take_block(L, e);
    case SELFSPEC__ENVELOPE__BODY_HEARTBEAT:
        if (e->heartbeat)
            counters_from(&L->drx_cur, e->heartbeat->counters);
        return PROTO_HEARD;
    default:
        rx->unexpected++;
        return PROTO_REJECTED;
    }
}

int proto_has_block(const proto_link *L, const proto_block *b, uint32_t seq)
{
    return b->have && b->epoch == L->seq_epoch[seq];
}

void proto_drafter_rx(const proto_link *L, pipe_counters *out)
{
    counters_add(out, &L->drx_base, &L->drx_cur);
}

int proto_request_valid(const Selfspec__DraftRequest *r, uint32_t seq_id, int n_seqs, int32_t kv_cap,
                        int32_t vocab, int32_t max_draft)
{
    return (r->kind == SELFSPEC__REQUEST_KIND__REQUEST_FRESH || r->kind == SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE) &&
           seq_id < (uint32_t)n_seqs && r->pos >= 1 && r->pos <= kv_cap - 2 && r->cur >= 0 && r->cur < vocab &&
           r->k_max >= 0 && r->k_max <= max_draft && r->end_pos <= kv_cap - 2 &&
           r->gamma >= 0.0f && r->gamma <= 1.0f;
}
