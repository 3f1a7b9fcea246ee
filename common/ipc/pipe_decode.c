/*
 * pipe_decode.c - the pipeline's decoding loops: one sequence (sequential or
 * overlapped) and several (see pipe_decode.h). The protocol and the
 * drafter's process are supervisor.c's and protocol.c's; verification and
 * emission are spec_step's.
 */
#include "ipc/pipe_decode.h"

#include <stdio.h>
#include <string.h>

#include "util/util.h"

/* The first k_max tokens of a received block as the draft. */
static void take(spec_block *b, const proto_block *s, int32_t k_max)
{
    b->n = s->n < k_max ? s->n : k_max;
    memcpy(b->tokens, s->toks, (size_t)b->n * sizeof(int32_t));
}

int pipe_decode_one(pipe_sup *S, spec_run *r, int overlap, const int32_t *prompt, int32_t n_prompt,
                    char *err, size_t errlen)
{
    proto_link *L = &S->link;
    pipe_stats *ps = S->ps;
    const spec_params *sp = r->sp;
    double t1;
    int stop = spec_begin_run(r, prompt, n_prompt, &t1, err, errlen);
    if (stop < 0)
        return -1;
    if (!stop)
        sup_wait_ready(S);   /* later restarts do not block */
    int32_t end_pos = spec_end_pos(r->kv->cap, r->kv->len, r->gp->max_tokens - r->st->generated_tokens);
    proto_block adopted = {0};
    while (!stop) {
        if (sup_stopping()) {
            ps->terminated = 1;
            break;
        }
        int32_t pos = r->kv->len;
        if (pos + 1 >= r->kv->cap) {
            fprintf(stderr, "selfspec: context full after %d tokens; stopping\n", pos + 1);
            break;
        }
        int32_t k_max = spec_draft_limit(sp->max_draft, pos, end_pos);
        spec_block b = {0};
        sup_pump(S, 0);
        sup_check(S);
        double ta = util_now();
        if (k_max > 0 && sup_ready(S)) {
            if (adopted.have && adopted.pos == pos && adopted.cur == r->cur) {
                take(&b, &adopted, k_max);
            } else {
                sup_request(S, 0, SELFSPEC__REQUEST_KIND__REQUEST_FRESH, pos, r->cur, k_max, end_pos, r->ex.gamma);
                if (sup_wait_block(S, 0, 0) && L->fresh[0].pos == pos && L->fresh[0].cur == r->cur)
                    take(&b, &L->fresh[0], k_max);
            }
        }
        adopted.have = 0;
        if (k_max > 0 && b.n == 0)
            ps->plain_steps++;
        int32_t acc;
        if ((stop = spec_step(r, &b, ta, &acc, err, errlen)) < 0)
            return -1;
        if (!stop && overlap && b.n > 0 && sup_ready(S)) {
            /* the drafter has been drafting the block after this one */
            int32_t pos2 = r->kv->len, next = r->cur;
            int32_t k2 = spec_draft_limit(sp->max_draft, pos2, end_pos);
            if (acc == b.n && k2 > 0 && sup_wait_block(S, 0, 1) && L->spec.pos == pos2 && L->spec.cur == next &&
                L->spec.n > 0) {
                adopted = L->spec;
                sup_request(S, 0, SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE, pos2, next, k2, end_pos, r->ex.gamma);
                ps->spec_adopted++;
            } else {
                ps->spec_missed++;
                if (S->debug > 1)
                    fprintf(stderr, "selfspec-pipeline: miss acc=%d n=%d k2=%d have=%d epoch=%llu/%llu pos=%d/%d cur=%d/%d n=%d\n",
                            acc, b.n, k2, L->spec.have, (unsigned long long)L->spec.epoch,
                            (unsigned long long)L->epoch, L->spec.pos, pos2, L->spec.cur, next, L->spec.n);
            }
        }
    }
    r->st->decode_seconds = util_now() - t1;
    r->ss->final_gamma = r->ex.gamma;
    return 0;
}

int pipe_decode_many(pipe_sup *S, spec_run *rs, int n, const int32_t *prompt, int32_t n_prompt, gen_stats *st,
                     char *err, size_t errlen)
{
    proto_link *L = &S->link;
    pipe_stats *ps = S->ps;
    const spec_params *sp = rs[0].sp;
    int stop[PROTO_MAX_SEQS];
    double t0 = util_now(), t_decode;
    for (int s = 0; s < n; s++)
        if ((stop[s] = spec_begin_run(&rs[s], prompt, n_prompt, &t_decode, err, errlen)) < 0)
            return -1;
    st->prompt_tokens = n_prompt * n;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    sup_wait_ready(S);
    int32_t end_pos = spec_end_pos(rs[0].kv->cap, rs[0].kv->len, rs[0].gp->max_tokens - rs[0].st->generated_tokens);
    for (int s = 0;; s = (s + 1) % n) {
        int active = 0;
        for (int i = 0; i < n; i++)
            active += !stop[i];
        if (!active)
            break;
        if (sup_stopping()) {
            ps->terminated = 1;
            break;
        }
        if (stop[s])
            continue;
        spec_run *r = &rs[s];
        int32_t pos = r->kv->len;
        if (pos + 1 >= r->kv->cap) {
            stop[s] = 1;
            continue;
        }
        sup_pump(S, 0);
        sup_check(S);
        /* keep a request queued for every live sequence */
        for (int i = 0; i < n && sup_ready(S); i++) {
            int32_t pi = rs[i].kv->len, ki = spec_draft_limit(sp->max_draft, pi, end_pos);
            if (!stop[i] && ki > 0 && L->req_inc[i] != L->inc)
                sup_request(S, (uint32_t)i, SELFSPEC__REQUEST_KIND__REQUEST_FRESH, pi, rs[i].cur, ki, end_pos,
                            rs[i].ex.gamma);
        }
        int32_t k_max = spec_draft_limit(sp->max_draft, pos, end_pos);
        spec_block b = {0};
        double ta = util_now();
        if (k_max > 0 && sup_ready(S) && sup_wait_block(S, (uint32_t)s, 0) && L->fresh[s].pos == pos &&
            L->fresh[s].cur == r->cur)
            take(&b, &L->fresh[s], k_max);
        L->req_inc[s] = 0;   /* consumed: re-requested after verification */
        if (k_max > 0 && b.n == 0)
            ps->plain_steps++;
        if ((stop[s] = spec_step(r, &b, ta, NULL, err, errlen)) < 0)
            return -1;
        int32_t pos2 = r->kv->len, k2 = spec_draft_limit(sp->max_draft, pos2, end_pos);
        if (!stop[s] && k2 > 0 && sup_ready(S))
            sup_request(S, (uint32_t)s, SELFSPEC__REQUEST_KIND__REQUEST_FRESH, pos2, r->cur, k2, end_pos, r->ex.gamma);
    }
    st->decode_seconds = util_now() - t1;
    st->generated_tokens = 0;
    for (int s = 0; s < n; s++)
        st->generated_tokens += rs[s].st->generated_tokens;
    rs[0].ss->final_gamma = rs[0].ex.gamma;
    return 0;
}
