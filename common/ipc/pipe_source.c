/*
 * pipe_source.c - the drafter process as the engine's remote draft source
 * (see pipe_source.h): which request to send, which block to take, when to
 * adopt a speculative block.
 */
#include "ipc/pipe_source.h"

#include <stdio.h>
#include <string.h>

#include "util/util.h"

/* The first k_max tokens of a received block into toks; returns how many. */
static int32_t take(int32_t *toks, const proto_block *b, int32_t k_max)
{
    int32_t n = b->n < k_max ? b->n : k_max;
    memcpy(toks, b->toks, (size_t)n * sizeof(int32_t));
    return n;
}

static void ask(pipe_source *P, int32_t slot, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos, float gamma)
{
    if (P->before_send)
        P->before_send(P->before_ctx);
    sup_request(P->S, (uint32_t)slot, SELFSPEC__REQUEST_KIND__REQUEST_FRESH, pos, cur, k_max, end_pos, gamma);
    P->asked_pos[slot] = pos;
    P->asked_cur[slot] = cur;
}

static int32_t source_propose(void *user, int32_t slot, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos,
                              float gamma, int32_t *toks)
{
    pipe_source *P = user;
    pipe_sup *S = P->S;
    proto_link *L = &S->link;
    if (slot < 0 || slot >= L->n_seqs)
        return 0;
    if (!P->waited) {          /* only the first start blocks generation */
        sup_wait_ready(S);
        P->waited = 1;
    }
    sup_pump(S, 0);
    sup_check(S);
    proto_block *ad = &P->adopted[slot], *fr = &L->fresh[slot];
    int32_t n = 0;
    if (ad->have && ad->pos == pos && ad->cur == cur) {
        n = take(toks, ad, k_max);
    } else if (sup_ready(S)) {
        /* a block already here for this state, or a request queued for it */
        int queued = L->req_inc[slot] == L->inc && P->asked_pos[slot] == pos && P->asked_cur[slot] == cur;
        int here = proto_has_block(L, fr, (uint32_t)slot) && fr->pos == pos && fr->cur == cur;
        if (!here && !queued)
            ask(P, slot, pos, cur, k_max, end_pos, gamma);
        if ((here || sup_wait_block(S, (uint32_t)slot, 0)) && fr->pos == pos && fr->cur == cur)
            n = take(toks, fr, k_max);
    }
    ad->have = 0;
    if (n == 0)
        S->ps->plain_steps++;
    return n;
}

static void source_verified(void *user, int32_t slot, int32_t n, int32_t acc, int32_t pos, int32_t cur,
                            int32_t k_next, int32_t end_pos, float gamma)
{
    pipe_source *P = user;
    pipe_sup *S = P->S;
    proto_link *L = &S->link;
    if (slot < 0 || slot >= L->n_seqs || !sup_ready(S))
        return;
    if (L->n_seqs > 1) {       /* queue the next request now: drafted while the others are gathered */
        if (k_next > 0)
            ask(P, slot, pos, cur, k_next, end_pos, gamma);
        return;
    }
    if (!P->overlap || n == 0)
        return;
    /* the drafter has been drafting the block after this one */
    if (acc == n && k_next > 0 && sup_wait_block(S, 0, 1) && L->spec.pos == pos && L->spec.cur == cur &&
        L->spec.n > 0) {
        P->adopted[0] = L->spec;
        if (P->before_send)
            P->before_send(P->before_ctx);
        sup_request(S, 0, SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE, pos, cur, k_next, end_pos, gamma);
        S->ps->spec_adopted++;
    } else {
        S->ps->spec_missed++;
        if (S->debug > 1)
            fprintf(stderr, "selfspec-pipeline: miss acc=%d n=%d k2=%d have=%d epoch=%llu/%llu pos=%d/%d cur=%d/%d "
                    "n=%d\n", acc, n, k_next, L->spec.have, (unsigned long long)L->spec.epoch,
                    (unsigned long long)L->epoch, L->spec.pos, pos, L->spec.cur, cur, L->spec.n);
    }
}

void pipe_source_init(pipe_source *src, pipe_sup *S, int overlap)
{
    memset(src, 0, sizeof *src);
    src->S = S;
    src->overlap = overlap;
    for (int i = 0; i < PROTO_MAX_SEQS; i++)
        src->asked_pos[i] = -1;
    src->remote = (spec_remote){source_propose, source_verified, src};
}
