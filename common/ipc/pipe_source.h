/*
 * pipe_source.h - the drafter process as a draft source of the engine's
 * loop (decode/spec.h: spec_remote; engine/engine.h drives it): the
 * verifier side of the pipeline's decoding. The protocol and the drafter's
 * process are ipc/protocol.h's and ipc/supervisor.h's; verification,
 * acceptance and emission are the engine's, exactly as for every other
 * draft source. Greedy only.
 *
 * Per sequence and step, with the verified prefix of length pos and the last
 * accepted token cur (at position pos):
 *   sequential: propose sends a fresh DraftRequest (a new epoch) and waits
 *               for its block.
 *   overlapped (one sequence): the drafter, having sent block n, goes
 *               straight on to draft block n+1, assuming block n is accepted
 *               whole and its own guess g of the bonus token is right. When
 *               the engine reports block n verified, the source adopts that
 *               speculative block if all of block n was accepted and
 *               next == g, and sends a "continue" request so the drafter
 *               drafts block n+2 while block n+1 is verified. Otherwise the
 *               next propose sends a fresh request; the drafter drops its
 *               speculation (it polls between draft steps), and a block that
 *               still arrives for the old epoch is stale.
 * Several sequences (--pipeline-seqs N, a throughput benchmark): no
 * speculation; as soon as a sequence's block is verified its next request
 * is queued at the drafter, which drafts them in turn while the engine
 * gathers the others' blocks.
 * The drafter not ready, dead, silent or restarting: propose returns 0 and
 * the engine takes a plain step; the supervisor restarts it.
 */
#ifndef SELFSPEC_PIPE_SOURCE_H
#define SELFSPEC_PIPE_SOURCE_H

#include <stdint.h>

#include "decode/spec.h"
#include "ipc/supervisor.h"

typedef struct {
    pipe_sup *S;
    int overlap;                            /* speculate past fully accepted blocks (one sequence) */
    int waited;                             /* the first start was waited for */
    proto_block adopted[PROTO_MAX_SEQS];    /* a speculative block taken over as the next one */
    int32_t asked_pos[PROTO_MAX_SEQS];      /* what each queued fresh request was for */
    int32_t asked_cur[PROTO_MAX_SEQS];
    spec_remote remote;                     /* the engine's view: propose / verified on this */
    /* called before every request goes out, after the verified KV changed
     * (on a GPU: record the interprocess event the drafter waits on) */
    void (*before_send)(void *ctx);
    void *before_ctx;
} pipe_source;

/* A source over supervisor S (opened, its drafter spawned), which must
 * outlive it; src->remote is what engine_params.remote points to. overlap
 * applies when S has one sequence. */
void pipe_source_init(pipe_source *src, pipe_sup *S, int overlap);

#endif
