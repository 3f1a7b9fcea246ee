/*
 * oracle.h - the sequential references the engine is tested against: plain
 * decoding one token per full pass (gen_plain) and self-speculative decoding
 * of one sequence, draft then verify per block (gen_selfspec). They are test
 * code: no command decodes with them; the engine (engine/engine.h) must
 * give their tokens exactly (greedy) and their draws (forced self-spec
 * under sampling) for every batch composition.
 */
#ifndef SELFSPEC_TESTS_ORACLE_H
#define SELFSPEC_TESTS_ORACLE_H

#include <stddef.h>
#include <stdint.h>

#include "decode/generate.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "model/model.h"

/* Plain decoding: prefill, then one full forward pass per token. The
 * simplest sequential loop: the reference the engine (engine/engine.h, which
 * `generate`, `batch` and `search` decode with) is tested against. */
int gen_plain(const model *m, fwd_state *s, kv_cache *kv, const int32_t *prompt, int32_t n_prompt,
              const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st,
              char *err, size_t errlen);

/* One sequence being decoded speculatively: what spec_begin_run and
 * spec_step need (gen_selfspec's loop). */
typedef struct {
    const model *m;
    fwd_state *fs;
    kv_cache *kv;
    const spec_params *sp;
    const spec_drafter *d;
    sampler *smp;
    float *logits;            /* (SPEC_MAX_DRAFT + 1, vocab) scratch */
    const gen_params *gp;
    gen_emit_fn emit;
    void *ctx;
    gen_stats *st;
    spec_stats *ss;
    spec_exit ex;             /* set by spec_begin_run */
    spec_src_state src;       /* set by spec_begin_run */
    int32_t cur;              /* last accepted token, at position kv->len */
} spec_run;

/* spec_begin on r (prefill, first token into r->cur, emitted) and the exit
 * threshold at its starting values. Returns as spec_begin. */
int spec_begin_run(spec_run *r, const int32_t *prompt, int32_t n_prompt, double *t_decode, char *err, size_t errlen);

/* One decoding step after the draft b (b->n may be 0: a plain step) whose
 * drafting began at clock t_draft: spec_verify, the draft and verification
 * times into r->ss, spec_record, spec_emit_block; r->cur becomes the full
 * model's next token. *accepted (may be NULL) receives the accepted count.
 * Returns 1 when generation must stop, 0 to go on, -1 on error. */
int spec_step(spec_run *r, const spec_block *b, double t_draft, int32_t *accepted, char *err, size_t errlen);

/* Self-speculative generation of one sequence, spec_draft then spec_step
 * per block; same contract as gen_plain. The sequential reference of the
 * engine's forced self-spec mode (tests/test_engine.c). The draft source
 * per step is spec_choose over sp->draft with the nominal costs; ss may be
 * NULL when sp->draft is SPEC_DRAFT_CONTEXT or AUTO (context drafts only). */
int gen_selfspec(const model *m, fwd_state *fs, kv_cache *kv, const skip_set *ss, const spec_params *sp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                 void *ctx, gen_stats *st, spec_stats *ss_out, char *err, size_t errlen);

#endif
