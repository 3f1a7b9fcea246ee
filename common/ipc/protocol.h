/*
 * protocol.h - the pipeline protocol (proto/selfspec.proto) as a state
 * machine without sockets or processes, so tests can feed it crafted
 * envelopes.
 *
 * The verifier's side, proto_link: the drafter link's states (STARTING ->
 * SETUP -> READY, or NONE / FAILED), outgoing envelopes (session,
 * incarnation, message number), draft requests (each one a new epoch of its
 * sequence), and the checks of every received message: foreign session or
 * incarnation, replayed message number, a message of the wrong kind or in
 * the wrong state, a malformed block (sequence, size, token out of range),
 * a stale block (an older epoch). Each rejection is counted by kind; a block
 * that passes lands in its sequence's slot. The drafter's side: the range
 * check of a request (proto_request_valid).
 *
 * The process around the link (spawning, liveness, sending) is
 * ipc/supervisor.h.
 */
#ifndef SELFSPEC_PROTOCOL_H
#define SELFSPEC_PROTOCOL_H

#include <stdint.h>

#include "decode/spec.h"
#include "ipc/pipe.h"

#define PROTO_MAX_SEQS 64

typedef enum { PROTO_NONE, PROTO_STARTING, PROTO_SETUP, PROTO_READY, PROTO_FAILED } proto_state;

/* What proto_receive made of a message. PROTO_REJECTED: counted, not a sign
 * of life; every other event means the drafter was heard from. */
typedef enum {
    PROTO_REJECTED,
    PROTO_HEARD,        /* nothing to do (heartbeat, stale block, a hello or ack out of turn) */
    PROTO_HELLO,        /* the new drafter's hello: send it the Setup (state is now SETUP) */
    PROTO_ACK_OK,       /* set up: state is now READY */
    PROTO_ACK_FAILED,   /* it cannot start (e->hello_ack->error says why) */
    PROTO_BLOCK,        /* a block of the current epoch, now in its slot */
} proto_event;

/* A received draft block. */
typedef struct {
    int have;
    uint64_t epoch;
    int32_t pos, cur, n;
    int32_t toks[SPEC_MAX_DRAFT];
} proto_block;

typedef struct {
    uint64_t session;
    uint32_t inc;                        /* current drafter incarnation (0: none yet) */
    int32_t pid;                         /* its process id, which its Hello must carry */
    proto_state state;
    uint64_t tx_no;                      /* last message number sent to this incarnation */
    uint64_t rx_last, rx_last_hb;        /* last received: messages, heartbeats (own stream) */
    uint64_t epoch;                      /* of the last request sent, any sequence */
    int n_seqs;
    int32_t vocab;
    uint64_t seq_epoch[PROTO_MAX_SEQS];  /* epoch of each sequence's last request */
    uint32_t req_inc[PROTO_MAX_SEQS];    /* incarnation it went to; 0: none outstanding */
    proto_block fresh[PROTO_MAX_SEQS];   /* each sequence's answer to its request */
    proto_block spec;                    /* one sequence: the speculative block after fresh[0] */
    pipe_counters rx;                    /* what this side rejected */
    pipe_counters drx_base, drx_cur;     /* drafter's rejections: earlier incarnations, this one */
    int64_t blocks;                      /* blocks accepted into a slot */
    double drafter_seconds;              /* drafting time those blocks report */
} proto_link;

/* A link for session `session` (nonzero), n_seqs in [1, PROTO_MAX_SEQS]
 * sequences and a vocabulary of `vocab` tokens; no drafter yet (NONE). */
void proto_init(proto_link *L, uint64_t session, int n_seqs, int32_t vocab);

/* A drafter incarnation `inc` (greater than any before) was started as
 * process `pid`: message numbers start again from 1, state STARTING. */
void proto_start(proto_link *L, uint32_t inc, int32_t pid);

/* The drafter is gone: its reported rejections are kept (drx_base), state
 * NONE. With one sequence its blocks are dropped; with several, a block
 * already received for a sequence's current epoch stays usable (it is only
 * a proposal). */
void proto_lost(proto_link *L);

/* Fill an outgoing envelope: version, session, incarnation, the next
 * message number, seq_id and epoch. The body is the caller's. */
void proto_envelope(proto_link *L, Selfspec__Envelope *e, uint32_t seq, uint64_t epoch);

/* Fill a DraftRequest r for sequence seq (< n_seqs) and its envelope e
 * under a new epoch, which becomes the sequence's current one (earlier
 * blocks of that sequence are dropped and later ones of older epochs will be
 * stale); records the incarnation it goes to. */
void proto_request(proto_link *L, Selfspec__Envelope *e, Selfspec__DraftRequest *r, uint32_t seq,
                   Selfspec__RequestKind kind, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos,
                   float gamma);

/* Check and take one received envelope (not freed here): the common checks
 * (pipe_check, on the heartbeat stream for heartbeats), then the state and
 * the body. Every rejection bumps one counter of L->rx. */
proto_event proto_receive(proto_link *L, const Selfspec__Envelope *e);

/* 1 when slot b (fresh[seq], or spec for seq 0) holds the block answering
 * sequence seq's current request. */
int proto_has_block(const proto_link *L, const proto_block *b, uint32_t seq);

/* The drafter's rejections so far, all incarnations. */
void proto_drafter_rx(const proto_link *L, pipe_counters *out);

/* The drafter's check of a request for sequence seq_id: a known kind, a
 * sequence it has, pos in [1, kv_cap - 2], cur a token, k_max in
 * [0, max_draft], end_pos <= kv_cap - 2, gamma in [0, 1]. 1 if it passes. */
int proto_request_valid(const Selfspec__DraftRequest *r, uint32_t seq_id, int n_seqs, int32_t kv_cap,
                        int32_t vocab, int32_t max_draft);

#endif
