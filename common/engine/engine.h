/*
 * engine.h - the continuous-batching engine: many sequences decoded at once,
 * one forward pass per step over every live sequence's block.
 *
 * The engine owns the live sequences (prompt, paged KV cache, seeded
 * sampler, parameters, draft state) and a FIFO of waiting requests. One
 * engine_step():
 *   1. admits waiting requests while there is room (--max-seqs) and the KV
 *      pool can hold the request's whole reservation (prompt + max_tokens
 *      positions: a live sequence never runs out of KV, the pool never
 *      overcommits); a request that could never fit is refused at submit;
 *   2. decides, per decoding sequence, whether to draft and how far (the
 *      speculation policy below), and drafts: up to k masked forward passes,
 *      each over every drafting sequence at once, writing only their draft
 *      scratch caches;
 *   3. runs ONE full forward pass over: each decoding sequence's block
 *      [cur, d1..dk] (k = 0: a plain step) and chunks of prefilling prompts,
 *      under a per-step token budget (--max-batch-tokens) that decode and
 *      verification tokens take first, so a long prompt never stalls others;
 *   4. accepts (spec_accept: greedy, or speculative sampling), emits each
 *      sequence's final tokens through its callback, finishes sequences at
 *      EOG, max_tokens or a stop the callback reports, returning their KV.
 *
 * Exactness and batch invariance: a token's logits do not depend on what
 * shares its forward pass (kernels/qmat.h: per-token sums in a fixed order;
 * attention per (token, head)), so a greedy sequence's tokens are the same
 * as decoding it alone, whatever else is in the batch and however its prompt
 * was chunked. Each request has its own sampler seeded by its seed; under
 * sampling a sequence's random draws depend only on its own tokens and on
 * whether it speculates. So the policy never lets a sampled sequence's
 * speculation depend on the batch: in ENGINE_AUTO sampled sequences decode
 * plainly (as `generate --mode plain`), in ENGINE_SPEC they always draft by
 * their own adaptive exit (as `generate --mode self-spec`).
 *
 * Speculation policy (ENGINE_AUTO, greedy sequences): from a cost model the
 * engine measures -- seconds of a full pass as a function of its token
 * count, and of a draft pass as a function of the sequences drafting
 * (calibrated briefly at start, then updated from every pass) -- and each
 * sequence's acceptance rate so far, pick the draft length k (0 = plain)
 * that maximizes expected emitted tokens per second of the whole step.
 * As the batch fills and passes become compute-bound, k falls to 0. What
 * the choice really delivers is measured too: tokens emitted per second and
 * sequence of decode-only steps, plain and speculating, by batch size (log2
 * buckets); once both have been seen at a batch size the measurement
 * overrules the prediction, and the other choice is retried every 64 steps.
 *
 * Draft sources (sp.draft, decode/spec.h): besides the layer-skipping draft
 * a sequence may draft from its own context (decode/ngram.h, an index of
 * its prompt and final tokens) or chain both. With sp.draft != LAYERS each
 * policy sequence picks its source per step with spec_choose, priced by the
 * cost model above (the layer option's k is the joint policy's; decode
 * tokens stay within the pass budget); the goodput overrule applies to
 * "any draft this step". Forced (ENGINE_SPEC) sequences choose with the
 * nominal costs, as gen_selfspec does, so their draws never depend on the
 * batch. SPEC_DRAFT_LAYERS is the behaviour before context drafts.
 *
 * Not thread-safe: one thread drives an engine. No global state.
 */
#ifndef SELFSPEC_ENGINE_H
#define SELFSPEC_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "decode/generate.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "model/backend.h"
#include "model/model.h"

typedef enum { ENGINE_AUTO, ENGINE_PLAIN, ENGINE_SPEC } engine_mode;

/* Parse "auto", "plain", "self-spec"; -1 for anything else. */
int engine_parse_mode(const char *s, engine_mode *out);
const char *engine_mode_name(engine_mode m);

typedef struct {
    int32_t max_seqs;          /* live sequences at most (vLLM's max-num-seqs) */
    int32_t max_batch_tokens;  /* tokens in one forward pass at most */
    size_t kv_mem;             /* bytes of the KV pool */
    int32_t ctx;               /* longest sequence, prompt + generated */
    engine_mode mode;
    const skip_set *ss;        /* the draft's skip set and head; NULL: never draft */
    spec_params sp;            /* draft length cap, adaptive exit */
    int calibrate;             /* ENGINE_AUTO: time a few passes at start (1) */
    /* Where drafts and KV live when the drafter is another process (the
     * pipeline): remote != NULL makes every greedy sequence take its drafts
     * from it (decode/spec.h: spec_remote; the engine then drafts nothing
     * itself and ss is unused), sampled ones decode plainly; slot_kv, when
     * given, holds max_seqs contiguous caches of one capacity, owned by
     * the caller, that the sequence in slot i uses instead of pool blocks
     * (the drafter maps them). kv_mem is then unused. */
    const spec_remote *remote;
    kv_cache *slot_kv;
    /* The device (model/backend.h): NULL for the CPU, over a paged pool of
     * kv_mem bytes that the engine owns; else a backend the caller opened
     * (e.g. backend_cuda_open, with its own KV budget) that outlives the
     * engine. The loop above it is the same. */
    model_backend *backend;
    /* Drafts from the whole job (decode/jobindex.h): the finished requests'
     * prompts and outputs, at most this many tokens (0: off). Greedy
     * sequences that draft from context take its draft where it matches a
     * longer suffix than their own history (n-grams up to NGRAM_MAX_N), or
     * from a request in flight whose history matches longer still;
     * sampled sequences draft from their own history only, so their draws
     * never depend on other requests. */
    int32_t job_index_tokens;
    /* Constrained requests (gen_params.gram): where the schema leaves one
     * text, its tokens are the step's draft (no draft pass; greedy or
     * sampled), in every mode but ENGINE_PLAIN (1). 0: they draft as
     * unconstrained requests do, trimmed to what the schema allows. */
    int forced_drafts;
    /* Token trees (decode/dtree.h): a greedy sequence drafting from context
     * (its own history or the job's index) may verify a tree of the
     * continuations its match had, when the measured cost model says the
     * tree pays more than the chain (1). Needs a backend with kv_copy (the
     * CPU's); never with a remote source. 0: chains only. */
    int trees;
    /* The prefix cache (engine/prefix.h): full blocks of computed prompt KV
     * are kept after their request and reused by a later prompt that starts
     * with the same tokens (1). CPU backend with the engine's own pool only;
     * output is the same either way. 0: off. */
    int prefix_cache;
} engine_params;

/* The defaults of every command (the one place they are set): 32
 * sequences, 256 tokens a pass, 512 MiB of KV, the model's context capped
 * at ENGINE_DEFAULT_CTX (ctx 0 until engine_params_resolve), ENGINE_AUTO,
 * spec_params_default with every draft source (SPEC_DRAFT_AUTO), a job
 * index of 131072 tokens, forced drafts, token trees and the prefix cache
 * on, no skip set. */
#define ENGINE_DEFAULT_CTX 4096
void engine_params_default(engine_params *p);

/* Fill what the defaults leave to the model: ctx 0 becomes the model's
 * training context, at most ENGINE_DEFAULT_CTX. engine_init does it on its
 * copy; a caller that sizes things by p->ctx first (a device backend) calls
 * it itself. */
void engine_params_resolve(engine_params *p, const model_config *c);

/* Tokens one forward pass of an engine with parameters p may hold:
 * max_batch_tokens, raised so that every sequence's block fits (a device
 * backend's buffers are sized by it). */
int32_t engine_pass_tokens(const engine_params *p);

/* What a finished request reports. */
typedef enum { ENGINE_FINISH_LENGTH, ENGINE_FINISH_STOP } engine_finish;

typedef struct {
    int32_t prompt_tokens;
    int32_t cached_tokens;     /* of them: found in the prefix cache (not computed) */
    int32_t generated_tokens;
    engine_finish finish;      /* STOP: EOG token or a stop string; LENGTH: max_tokens */
    int64_t drafts, draft_tokens, accepted_tokens;
    int64_t verifications;     /* decode steps (each one full pass over its block) */
    float final_gamma;         /* the adaptive exit threshold at the end */
    double t_submit, t_first, t_done;   /* util_now() clock */
} engine_result;

typedef struct {
    /* A final token, in order. Return nonzero to finish the request now
     * (a stop string was completed). */
    int (*on_token)(void *user, int32_t token);
    /* The request finished (always called once per accepted submit). */
    void (*on_done)(void *user, const engine_result *r);
    void *user;
    /* Optional, with gp.want_logprobs: a final token's log-probability under
     * the full model (the verifier's logits row that chose it, never a
     * draft's), called just before on_token for that token. */
    void (*on_logprob)(void *user, const sampler_logprob *lp);
} engine_callbacks;

/* What the engine did since it started. */
typedef struct {
    spec_counts spec;                         /* speculation counters (decode/spec.h) */
    int64_t steps, spec_steps;                /* forward passes; of them with drafts */
    int64_t prompt_tokens, generation_tokens;
    int64_t cached_prompt_tokens;             /* of prompt_tokens: found in the prefix cache */
    int64_t prefix_evictions;                 /* cached blocks given back for room */
    int64_t requests_done;
    double forward_seconds, draft_seconds;
} engine_totals;

typedef struct engine engine;

/* An engine over a loaded model (which must outlive it). Returns 0, or -1
 * with err (bad parameters, out of memory). */
int engine_init(engine **out, const model *m, const engine_params *p, char *err, size_t errlen);
void engine_free(engine *e);

/* Queue a request. The prompt is copied; gp's callbacks (is_eog) and cb
 * must stay valid until on_done. Returns 0, or -1 with err when the request
 * is invalid or can never fit (prompt + max_tokens over the context, or
 * more KV than the whole pool). */
int engine_submit(engine *e, const int32_t *prompt, int32_t n_prompt, const gen_params *gp,
                  const engine_callbacks *cb, char *err, size_t errlen);

/* One step (see the top of this file). Returns the number of requests
 * still live or waiting afterwards, or -1 with err (a forward pass failed:
 * the engine should not be stepped again). */
int engine_step(engine *e, char *err, size_t errlen);

/* The vocabulary trie constrained requests of this engine use
 * (decode/grammar.h), built from tok at the first call and kept until
 * engine_free (so it outlives every request); later calls must pass the
 * same tokenizer. NULL with err when it cannot be built. */
const gram_vocab *engine_gram_vocab(engine *e, const tokenizer *tok, char *err, size_t errlen);

/* Requests live + waiting; live; waiting. */
int engine_pending(const engine *e);
int engine_live(const engine *e);
int engine_waiting(const engine *e);

/* KV pool blocks in use and in all. */
void engine_kv_usage(const engine *e, int32_t *used, int32_t *total);

const engine_totals *engine_get_totals(const engine *e);

/* Feed the cost model one measurement: a full pass (draft 0) of T tokens,
 * or a draft pass (draft 1) of T sequences, took `seconds`. The engine
 * calls it after every pass; tests use it to set up a machine. */
void engine_cost_observe(engine *e, int draft, int32_t T, double seconds);

/* The draft length the policy would pick now for n_spec greedy sequences
 * with acceptance rate alpha, next to n_other other decoding sequences
 * (d_other tokens) and t_prompt prompt-chunk tokens in the pass (tests and
 * the benchmark's explanation). Drafts are weighed against the pass's
 * decode tokens alone: prompt chunks are in the pass either way. */
int32_t engine_policy_k(const engine *e, int32_t n_spec, float alpha, int32_t n_other, int32_t d_other,
                        int32_t t_prompt);

/*
 * n copies of one prompt decoded through an engine with parameters p
 * (p->max_seqs >= n): how `generate` runs one prompt (n = 1, below) and the
 * pipeline its benchmark of several sequences. emit receives copy 0's
 * tokens. should_stop (may be NULL) is asked between steps; nonzero ends
 * the run early, which is not an error. st receives the totals over the
 * copies (prompt and generated tokens of all; prefill until the last
 * copy's first token, decode from there to the end), sps (may be NULL) the
 * speculation figures of decode/stats.h. Returns 0, or -1 with err.
 */
int engine_run(const model *m, const engine_params *p, int n, const int32_t *prompt, int32_t n_prompt,
               const gen_params *gp, gen_emit_fn emit, void *emit_ctx, int (*should_stop)(void), gen_stats *st,
               spec_stats *sps, char *err, size_t errlen);

/*
 * One request decoded alone through the engine, with the contract of
 * gen_plain (ss == NULL and sp->draft == SPEC_DRAFT_LAYERS) or gen_selfspec
 * (ss given, or a context draft source: forced self-spec): `generate` runs
 * this, so one prompt takes the same path as a batch. ctx: the longest sequence. st and sps (may be NULL) receive the
 * figures of decode/stats.h.
 */
int engine_generate(const model *m, int32_t ctx, const skip_set *ss, const spec_params *sp, const int32_t *prompt,
                    int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *emit_ctx, gen_stats *st,
                    spec_stats *sps, char *err, size_t errlen);

#endif
