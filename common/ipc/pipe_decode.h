/*
 * pipe_decode.h - the pipeline's decoding loops, verifier side: each step
 * takes a block from the drafter (through ipc/supervisor.h) when there is a
 * usable one, else decodes plainly (an empty draft), and hands it to
 * spec_step, the same verify / record / emit step as one-process self-spec
 * (decode/spec.h). Greedy only.
 *
 * One sequence. Per step, with the verified prefix of length L and the last
 * accepted token cur (at position L):
 *   sequential: send a fresh DraftRequest (a new epoch), wait for its block,
 *               verify it, emit the accepted tokens + next.
 *   overlapped: the drafter, having sent block n, goes straight on to draft
 *               block n+1, assuming block n is accepted whole and its own
 *               guess g of the bonus token is right. After verifying block n
 *               the verifier adopts that speculative block if all of block n
 *               was accepted and next == g, and sends a "continue" request
 *               so the drafter drafts block n+2 while block n+1 is verified.
 *               Otherwise the next step sends a fresh request; the drafter
 *               drops its speculation (it polls between draft steps), and a
 *               block that still arrives for the old epoch is stale.
 * Several sequences (--pipeline-seqs N, a throughput benchmark): no
 * speculation; every live sequence keeps a fresh request queued at the
 * drafter, which drafts them in turn, so while the verifier verifies
 * sequence s the drafter drafts the next one.
 */
#ifndef SELFSPEC_PIPE_DECODE_H
#define SELFSPEC_PIPE_DECODE_H

#include <stdint.h>

#include "decode/spec.h"
#include "ipc/supervisor.h"

/* One sequence: spec_begin_run on r (r->d NULL: greedy), wait for the first
 * drafter (sup_wait_ready), then decode to the end; overlap as above. Sets
 * r->st->decode_seconds and r->ss->final_gamma. Returns 0, or -1 with err. */
int pipe_decode_one(pipe_sup *S, spec_run *r, int overlap, const int32_t *prompt, int32_t n_prompt,
                    char *err, size_t errlen);

/* n sequences (1 <= n <= S->link.n_seqs), each its own rs[i] (own kv, st,
 * emit; shared ss), the same prompt each. st receives the totals (prompt
 * tokens of all, prefill, decode time, generated tokens of all). Returns 0,
 * or -1 with err. */
int pipe_decode_many(pipe_sup *S, spec_run *rs, int n, const int32_t *prompt, int32_t n_prompt, gen_stats *st,
                     char *err, size_t errlen);

#endif
