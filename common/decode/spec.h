/*
 * spec.h - self-speculative decoding (Draft & Verify): the model drafts a
 * few tokens with some of its own sublayers skipped, then the full model
 * verifies the whole draft in one forward pass.
 *
 * The pieces are separate so the two-process pipeline reuses them:
 *   spec_draft   - draft up to K tokens from the verified cache, writing only
 *                  the drafter's scratch KV (never the verified cache);
 *   spec_verify  - one full-model pass over [cur, d1..dk], writing the
 *                  verified KV; greedy or speculative-sampling acceptance;
 *   spec_exit_update - the adaptive draft-exit threshold.
 * The engine (engine/engine.h) strings them together for many sequences;
 * tests/oracle.h holds the one-sequence reference loop (gen_selfspec).
 *
 * Draft sources (spec_draft_kind, spec_choose): the layer-skipping draft
 * above; a context draft (decode/ngram.h: what followed the last few tokens
 * where they occurred earlier in the prompt or output -- no forward pass);
 * or both chained (the context tokens first, then the layer-skipping draft
 * drafting on from them). A block records how many of its tokens came
 * from the context (spec_block.n_ctx): under sampling those are point
 * distributions q = 1 at the proposed token, so they are accepted with
 * probability p(x) and a rejection resamples from p with x removed,
 * renormalized -- the same min(1, p/q) rule, so output stays exact.
 *
 * Exactness: under greedy decoding the emitted tokens are the full model's
 * argmax at every position, because the verification pass computes the same
 * logits, bit for bit, that plain decoding computes one token at a time (see
 * qmat.h), and the draft only proposes. Under sampling, acceptance with
 * probability min(1, p/q) and resampling from norm(max(0, p - q)) make every
 * emitted token distributed exactly as the full model's.
 */
#ifndef SELFSPEC_SPEC_H
#define SELFSPEC_SPEC_H

#include <stdint.h>

#include "decode/generate.h"
#include "model/model.h"
#include "decode/sampler.h"
#include "decode/skipset.h"

#define SPEC_MAX_DRAFT 32

typedef struct {
    float gamma_init;     /* starting exit threshold γ (0.6) */
    int32_t max_draft;    /* K, most tokens per draft (12) */
    float ar_target;      /* acceptance-rate target (0.9) */
    float gamma_step;     /* γ' = γ ± step (0.01) */
    float gamma_ema;      /* γ ← ema·γ + (1 − ema)·γ' (0.9) */
    float ar_decay;       /* AR ← decay·AR + (1 − decay)·accepted/drafted (0.5) */
    float ar_init;        /* starting AR (0.9) */
    int32_t draft;        /* spec_draft_kind: the draft sources allowed (SPEC_DRAFT_LAYERS) */
    int32_t ngram_min;    /* context drafts: shortest suffix matched (1) */
    int32_t ngram_max;    /* ... longest, tried first (3) */
    float ctx_alpha_init; /* starting per-token acceptance estimate of context drafts (0.6) */
    float token_cost;     /* nominal cost of one more token in a verification, relative to
                             the pass (0.2: what the search measured on the AVX2 CPU, see
                             README; about 0 on a GPU); used where the choice must not
                             depend on timings (gen_selfspec, forced self-spec) */
    float draft_cost;     /* nominal cost of one draft pass relative to a verification;
                             0: the share of sublayers the skip set keeps (0) */
} spec_params;

/* Which draft sources a run may use. LAYERS: the layer-skipping draft
 * only (the behaviour before context drafts). CONTEXT: context drafts
 * only. CHAIN: context tokens then layer-skip drafting on from them (the
 * layer-skipping draft alone when the context has no match). AUTO: per
 * step the source with the most expected tokens per unit of cost
 * (spec_choose), plain when nothing pays. */
typedef enum { SPEC_DRAFT_LAYERS, SPEC_DRAFT_CONTEXT, SPEC_DRAFT_CHAIN, SPEC_DRAFT_AUTO } spec_draft_kind;

/* Parse "layers", "context", "chain", "auto"; -1 for anything else. */
int spec_parse_draft(const char *s, int32_t *out);
const char *spec_draft_name(int32_t kind);

/* The source of one block, for statistics: what its tokens came from. */
typedef enum { SPEC_SRC_LAYERS, SPEC_SRC_CONTEXT, SPEC_SRC_CHAIN, SPEC_SRC_JOB, SPEC_SRC_GRAMMAR, SPEC_SRC_TREE, SPEC_SRC_N } spec_source;
/* Inline, so that a layer linked without decode's objects (the metrics
 * exposition in its fuzzer) can name sources too. */
static inline const char *spec_source_name(int32_t src)
{
    return src == SPEC_SRC_CONTEXT ? "context" : src == SPEC_SRC_CHAIN ? "chain" : src == SPEC_SRC_JOB ? "job"
         : src == SPEC_SRC_GRAMMAR ? "grammar" : src == SPEC_SRC_TREE ? "tree" : "layers";
}

void spec_params_default(spec_params *p);

/* The policy's arithmetic, one definition for spec_choose and the engine.
 * Expected tokens one verification of a k-token draft emits when each
 * drafted token is accepted with probability a (and acceptance stops at
 * the first rejection): 1 + a + a^2 + ... + a^k. */
double spec_expected_tokens(double a, int32_t k);

/* A draft is taken only where its expected tokens per second beat plain
 * decoding's by this factor: a margin against noise in the measured costs. */
#define SPEC_PAY_MARGIN 1.02

/* The adaptive exit: drafting stops after a token whose draft top-1
 * probability conf is below the sequence's threshold gamma. */
static inline int spec_exit_now(float conf, float gamma)
{
    return conf < gamma;
}
int spec_params_check(const spec_params *p, char *err, size_t errlen);

/* Which exit constants the user set on the command line (bits of
 * spec_params_apply_exit's `given`): those keep the user's value. */
enum { SPEC_GIVEN_GAMMA_INIT = 1, SPEC_GIVEN_GAMMA_STEP = 2, SPEC_GIVEN_GAMMA_EMA = 4, SPEC_GIVEN_AR_INIT = 8 };

/* The exit constants a config recorded (skip_set.exit, validated by
 * skipset_load) become p's, member by member, except those not in the
 * config (NAN) and those in `given`. e == NULL changes nothing. */
void spec_params_apply_exit(spec_params *p, const skip_exit *e, unsigned given);

/* A config's exit constants from p's (all four members set). */
void spec_params_to_exit(const spec_params *p, skip_exit *e);

typedef struct {
    float gamma;
    float ar;
} spec_exit;

/* After a verification that accepted `accepted` of `drafted` tokens. */
void spec_exit_update(spec_exit *e, const spec_params *p, int32_t drafted, int32_t accepted);

/* The speculation counters, one vocabulary for every figure selfspec reports
 * (vLLM's names): the one-sequence figures (spec_stats), the engine's
 * totals, the stats JSON, the batch summary and the Prometheus metrics. */
typedef struct {
    int64_t num_drafts;                         /* verified blocks with >= 1 draft token */
    int64_t num_draft_tokens;
    int64_t num_accepted_tokens;
    int64_t drafted_per_pos[SPEC_MAX_DRAFT];    /* blocks that drafted position i */
    int64_t accepted_per_pos[SPEC_MAX_DRAFT];   /* ... in which it was accepted */
    /* per source (spec_source) of the blocks with >= 1 draft token */
    int64_t src_blocks[SPEC_SRC_N], src_drafted[SPEC_SRC_N], src_accepted[SPEC_SRC_N];
} spec_counts;

/* One sequence's (or a run's) figures. */
typedef struct {
    spec_counts counts;
    int64_t verifications;                 /* decode steps, each one full pass over its block */
    double draft_seconds, verify_seconds;
    float final_gamma;
} spec_stats;

/* The drafter's state: its mask, optional pruned head, and scratch KV. */
typedef struct {
    const model *m;
    layer_mask mask;
    qmat head;                 /* pruned head; head.rows == 0: the full head */
    const int32_t *head_tokens;/* (head.rows) token id of each pruned-head row */
    kv_cache scratch;          /* (max_draft + 1) positions of draft KV */
    int32_t width;             /* logits per draft step: head.rows or vocab */
    float *logits;             /* (width) */
    float *q;                  /* (max_draft, width) warped draft distributions */
} spec_drafter;

/* A draft block: tokens[0..n_ctx) from the context (point distributions),
 * tokens[n_ctx..n) from the layer-skipping draft, token i's distribution in
 * q row i - n_ctx at index q_index[i]. A zeroed block is empty (n_ctx 0). */
typedef struct {
    int32_t n;
    int32_t n_ctx;
    int32_t ctx_job;                   /* the context tokens came from the job's index (jobindex.h) */
    int32_t forced;                    /* the tokens are a constraint's forced text (grammar.h) */
    int32_t tree_depth;                /* > 0: a token tree of context tokens (dtree.h), this deep */
    int32_t tokens[SPEC_MAX_DRAFT];
    int32_t parent[SPEC_MAX_DRAFT];    /* a tree's: block row of token i's parent (0: the current token) */
    int32_t q_index[SPEC_MAX_DRAFT];   /* index of each token in its q row */
} spec_block;

static inline int32_t spec_block_source(const spec_block *b)
{
    return b->n_ctx == 0 ? SPEC_SRC_LAYERS : b->n_ctx < b->n ? SPEC_SRC_CHAIN
         : b->tree_depth > 0 ? SPEC_SRC_TREE : b->forced ? SPEC_SRC_GRAMMAR : b->ctx_job ? SPEC_SRC_JOB : SPEC_SRC_CONTEXT;
}

/* Count one verified block b of which `accepted` tokens were accepted (an
 * empty block, a plain step, counts nothing). */
void spec_counts_add(spec_counts *c, const spec_block *b, int32_t accepted);

/* One draft step's token, the same for one sequence (spec_draft) and for a
 * batch (the engine): from the draft's logits row (width entries), the
 * argmax under greedy; with q given (sampling), q receives the warped row
 * and the token is drawn from it with smp. *index: the row index taken.
 * Returns the row's top-1 probability, for spec_exit_now. */
float spec_draft_token(const float *row, int32_t width, sampler *smp, float *q, int32_t *index);

/* Append row index j of the draft head to b: token head_tokens[j] (a
 * pruned head) or j (head_tokens NULL: the full vocabulary). */
static inline void spec_block_push(spec_block *b, const int32_t *head_tokens, int32_t j)
{
    b->tokens[b->n] = head_tokens ? head_tokens[j] : j;
    b->q_index[b->n] = j;
    b->n++;
}

int spec_drafter_init(spec_drafter *d, const model *m, const skip_set *ss, int32_t max_draft,
                      char *err, size_t errlen);
void spec_drafter_free(spec_drafter *d);

/*
 * Draft after the verified prefix kv[0..L) with `cur` (at position L) the
 * last accepted token. Stops after k_max tokens, or after a token whose
 * draft top-1 probability is below gamma. With a sampling sampler, tokens
 * are drawn from the warped draft distribution and kept in d->q.
 */
int spec_draft(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t L, int32_t cur, int32_t k_max,
               float gamma, sampler *smp, spec_block *out, char *err, size_t errlen);

/*
 * The same with the scratch starting at `base` <= L: positions [base, L) are
 * read from the drafter's scratch (draft KV of tokens it drafted earlier and
 * that are not verified yet), positions < base from kv. The two-process
 * pipeline drafts block n+1 this way while block n is being verified.
 */
int spec_draft_from(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t base, int32_t L, int32_t cur,
                    int32_t k_max, float gamma, sampler *smp, spec_block *out, char *err, size_t errlen);

/*
 * Chained drafting: b already holds b->n = b->n_ctx context tokens after
 * cur; one masked pass over [cur, ctx...] at L.. fills the drafter's
 * scratch for them, then the layer-skipping draft goes on until the block
 * holds n_max tokens or the exit threshold stops it (q rows from 0). With
 * b->n_ctx == 0 it is spec_draft.
 */
int spec_draft_chain(spec_drafter *d, fwd_state *fs, kv_cache *kv, int32_t L, int32_t cur, int32_t n_max,
                     float gamma, sampler *smp, spec_block *b, char *err, size_t errlen);

/*
 * Verify: one full pass over [cur, d1..dk] at positions L..L+k, writing the
 * verified KV. Sets *accepted (0..k) and *next (the full model's own token
 * after the accepted prefix); kv->len becomes L + accepted + 1.
 * logits: (SPEC_MAX_DRAFT + 1, vocab) scratch. d: the drafter (for q and
 * the pruned-head mapping under sampling); may be NULL under greedy.
 */
int spec_verify(const model *m, fwd_state *fs, kv_cache *kv, int32_t cur, const spec_block *b,
                const spec_drafter *d, sampler *smp, float *logits, int32_t *accepted, int32_t *next,
                char *err, size_t errlen);

/* Greedy acceptance from the argmax of each verification row, ids[0..b->n]
 * (what spec_accept does with the logits under greedy decoding: the
 * longest prefix of b's tokens equal to the rows' argmax, then the next
 * row's argmax). */
void spec_accept_ids(const int32_t *ids, const spec_block *b, int32_t *accepted, int32_t *next);

/* The acceptance step of spec_verify on logits the caller computed: rows
 * (b->n + 1, V) of the full model for [cur, d1..dk]. Greedy: the longest
 * prefix equal to the argmax, then the argmax after it. Sampling: min(1, p/q)
 * per token, the residual norm(max(0, p - q)) at the first rejection, a
 * bonus token from p when all are accepted (qd gives q; may be NULL under
 * greedy or when every token is a context token). A context token
 * (i < b->n_ctx) has q = 1 at the token: accepted with probability p(x),
 * else resampled from p without x, renormalized. Sets *accepted (0..k)
 * and *next. */
typedef struct {
    const float *q;            /* (k, width) warped draft distributions */
    int32_t width;             /* the draft head's rows, or the vocabulary */
    const int32_t *head_tokens;/* (width) token of each row, or NULL: row = token */
} spec_qdist;
void spec_accept(int32_t V, float *logits, const spec_block *b, const spec_qdist *qd, sampler *smp,
                 int32_t *accepted, int32_t *next);

/* Emit one final token; returns 1 when generation must stop (the callback
 * asked, an end-of-generation token, or the token limit). */
int spec_emit(const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st, int32_t tok);

/* Emit the accepted draft tokens, then the full model's next token, stopping
 * early when spec_emit says so. out (may be NULL) receives the emitted
 * tokens and *n_out their count. Returns 1 when generation must stop. */
int spec_emit_block(const spec_block *b, int32_t accepted, int32_t next, const gen_params *gp,
                    gen_emit_fn emit, void *ctx, gen_stats *st, int32_t *out, int32_t *n_out);

/* The start of every speculative loop: prefill the prompt (timed into st),
 * sample the full model's first token into *cur and emit it. logits:
 * (vocab) scratch. Returns 1 when generation must already stop, 0 to go
 * on, -1 on error. *t_decode receives the clock at the end of prefill. */
int spec_begin(const model *m, fwd_state *fs, kv_cache *kv, sampler *smp, const int32_t *prompt,
               int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st,
               float *logits, int32_t *cur, double *t_decode, char *err, size_t errlen);

/* What a sequence has shown each source: running per-token acceptance
 * estimates (the layer-skipping draft's is the adaptive exit's ar). */
typedef struct {
    float alpha_ctx;
} spec_src_state;

/* After verifying b with `accepted` tokens accepted: the verification and
 * spec_counts_add into ss (may be NULL); alpha_ctx from the
 * context tokens (when any); the exit threshold from the layer-skipping
 * tokens, only when they were tested (every context token accepted). */
void spec_record_block(spec_stats *ss, spec_exit *ex, spec_src_state *src, const spec_params *sp,
                       const spec_block *b, int32_t accepted);

/* The per-token acceptance estimates' update: a <- 0.7 a + 0.3 acc/drafted. */
float spec_alpha_update(float a, int32_t drafted, int32_t accepted);

/* A step where the context had a match but no context token was drafted:
 * alpha_ctx drifts back toward sp->ctx_alpha_init (2% of the gap), so a
 * sequence whose context drafts once failed tries them again now and then
 * (repeats often start later in an output). */
void spec_src_idle(spec_src_state *src, const spec_params *sp);

/*
 * The choice among the draft sources for one sequence's step, by expected
 * emitted tokens per unit of cost. costs: base, the step's cost with this
 * sequence decoding plainly, emitting n_base tokens (1 alone); extra[x],
 * what x more tokens in its verification block add; draft, what one draft
 * pass adds. The context proposes n_ctx_avail tokens (<= lim, the block's
 * length cap), the first n_ctx_hist of them read from the history itself
 * (ngram_draft). Options: plain; x <= n_ctx_avail context tokens (no draft
 * pass); k <= k_layers layer-skipping tokens (k passes); a chain, x context
 * tokens then k <= k_layers drafted ones, x + k <= lim. Expected tokens
 * with per-token acceptance a over k tokens: 1 + a + ... + a^k; a chain's
 * drafted tokens count only after all x context tokens were accepted
 * (probability alpha_ctx^x). A draft must beat plain by 2%. kind restricts
 * the options (LAYERS: layers; CONTEXT: context; CHAIN: chains and context
 * alone, layers alone when the context has no match; AUTO: all) and the
 * best allowed one is taken. force (a forced self-spec run) with kind !=
 * AUTO skips the plain option: LAYERS -> {0, k_layers}; CONTEXT -> {x, 0}
 * with the x in 1..n_ctx_avail of the best rate; CHAIN -> {n_ctx_hist,
 * lim - n_ctx_hist} (the drafter's exit ends it), or {0, k_layers} without
 * a match. can_layers 0: no layer-skipping tokens in any option. Result:
 * n_ctx context tokens, then at most k_layers drafted ones (both 0: plain).
 */
typedef struct {
    double base, draft;
    double extra[SPEC_MAX_DRAFT + 1];
    double n_base;
} spec_costs;
typedef struct {
    int32_t n_ctx, k_layers;
    double rate;   /* its expected tokens per unit of cost (plain: the plain rate
                      times SPEC_PAY_MARGIN, the bar a draft must beat) */
} spec_choice;
spec_choice spec_choose(int32_t kind, const spec_costs *c, float alpha_ctx, float alpha_layers,
                        int32_t n_ctx_avail, int32_t n_ctx_hist, int32_t k_layers, int32_t lim, int can_layers,
                        int force);

/* The nominal costs of sp (token_cost, draft_cost; draft_cost 0: the share
 * of sublayers ss keeps, at least 0.05; ss may be NULL) for one sequence. */
void spec_nominal_costs(const spec_params *sp, const skip_set *ss, spec_costs *c);

/*
 * The draft-length clamp: no draft token at a position past end_pos.
 * spec_end_pos: the last position a draft token may take for a sequence
 * whose last accepted token is at pos with tokens_left tokens still to emit
 * (gp->max_tokens - st->generated_tokens): the verification writes
 * pos..pos+k and the full model's next token needs one more slot, so
 * min(pos + tokens_left - 1, cap - 2). spec_draft_limit: the most tokens to
 * draft after pos, min(k_max, end_pos - pos), never below 0 (0: a plain step).
 */
int32_t spec_end_pos(int32_t cap, int32_t pos, int32_t tokens_left);
int32_t spec_draft_limit(int32_t k_max, int32_t pos, int32_t end_pos);

/*
 * A draft source outside this process (the pipeline's drafter process,
 * ipc/pipe_source.h), driven by the engine's loop (engine/engine.h) for
 * greedy sequences: before each full pass the engine asks it for every
 * decoding sequence's block, after acceptance it tells it the outcome.
 * Slots are the engine's sequence slots (0 .. max_seqs - 1), whose verified
 * KV the source can read (the engine's caller hands those caches in).
 * Output never depends on what a source proposes, only speed does.
 */
typedef struct {
    /* The draft for the sequence in `slot` this step: up to k_max (>= 1)
     * tokens continuing cur at position pos (its verified KV holds the
     * positions before pos), into toks; returns how many (0: a plain step).
     * end_pos: the sequence's last draft position (spec_end_pos); gamma:
     * its adaptive exit threshold. */
    int32_t (*propose)(void *user, int32_t slot, int32_t pos, int32_t cur, int32_t k_max, int32_t end_pos,
                       float gamma, int32_t *toks);
    /* The sequence's block of n tokens was verified, acc accepted; it goes
     * on from cur at pos, drafting at most k_next tokens next step (0: none).
     * Not called for a sequence that finished. */
    void (*verified)(void *user, int32_t slot, int32_t n, int32_t acc, int32_t pos, int32_t cur, int32_t k_next,
                     int32_t end_pos, float gamma);
    void *user;
} spec_remote;

#endif
