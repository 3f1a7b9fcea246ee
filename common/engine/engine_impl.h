/*
 * engine_impl.h - the engine's own types, shared by its three files and by
 * nothing outside the engine layer:
 *   engine.c       set-up, admission, the step (one full pass, acceptance,
 *                  emission), the one-prompt runners;
 *   engine_cost.c  the measured cost model (seconds of a full pass of T
 *                  tokens, of a draft pass of n sequences) and calibration;
 *   engine_plan.c  the speculation policy's plan for a step (which
 *                  sequence drafts how far, from which source) and the
 *                  batched drafting itself.
 */
#ifndef SELFSPEC_ENGINE_IMPL_H
#define SELFSPEC_ENGINE_IMPL_H

#include "engine/engine.h"
#include "decode/dtree.h"
#include "engine/prefix.h"
#include "decode/jobindex.h"
#include "decode/ngram.h"
#include "decode/sampler.h"
#include "model/backend.h"

enum { SEQ_FREE, SEQ_PREFILL, SEQ_DECODE };

/* The longest prompt prefix looked up in the prefix cache, in blocks. */
#define ENGINE_MAX_PREFIX_BLOCKS 1024

/* One live sequence. */
typedef struct {
    int state;
    int32_t *prompt;           /* (n_prompt) owned copy */
    int32_t n_prompt, n_prefilled;
    gen_params gp;
    engine_callbacks cb;
    sampler smp;
    kv_cache kv;               /* paged: prompt + max_tokens positions; or the slot's (slot_kv) */
    int borrowed_kv;           /* kv is the caller's (engine_params.slot_kv): not freed here */
    kv_cache scratch;          /* draft scratch (max_draft + 1), when the engine drafts */
    float *q;                  /* (max_draft, draft width) draft distributions (sampling) */
    int q_dev;                 /* this step's layer-draft q rows are on the device (draft_take) */
    int32_t cur;               /* last final token, at position kv.len */
    spec_exit ex;              /* adaptive draft exit */
    float alpha;               /* acceptance-rate estimate (policy) */
    int spec_mode;             /* this sequence drafts: 0 never, 1 by the policy, 2 always */
    spec_block blk;            /* this step's draft (context tokens first) */
    int32_t k_max;             /* this step's draft length cap */
    int drafting;
    /* context drafts (when the engine may draft from context) */
    ngram_index ng;            /* the history: prompt + final tokens */
    int has_ng;
    float alpha_ctx;           /* context drafts' acceptance estimate */
    int32_t ctx_avail;         /* this step: context tokens proposed */
    int32_t ctx_hist;          /* ... of them read from the history itself */
    int32_t plan_ctx, plan_n;  /* this step (ENGINE_AUTO): the choice, context tokens and block length */
    const ngram_index *ctx_ix; /* this step: the index its context draft came from (own, job's, another's) */
    dtree tree;                /* this step's candidate tree (has_tree), from the context's matches */
    int has_tree;
    int32_t dtok[SPEC_MAX_DRAFT + 1];   /* a chained draft's first pass: [cur, ctx...] */
    /* a constrained request (gp.gram): where its output is in the schema */
    js_state *gst;
    int plan_forced;           /* this step's block is the constraint's forced tokens */
    /* rows chosen from by proc_choose: a constraint or logits processors */
    int proc;
    int32_t *pen_count;        /* (vocab) generated tokens' counts (penalties), or NULL */
    int32_t *pen_ids;          /* (vocab) the distinct tokens among them, in order */
    int32_t n_pen_ids;
    int32_t *eog_ids;          /* min_tokens: the end-of-generation ids */
    int32_t n_eog;
    engine_result res;
} eseq;

/* A request waiting for admission. */
typedef struct {
    int32_t *prompt;
    int32_t n_prompt;
    gen_params gp;
    engine_callbacks cb;
    double t_submit;
} ewait;

#define COST_MAX_T 1024
/* Seconds of a pass as a function of its tokens: a table (measured T,
 * interpolated between), learned from the passes; or, once calibrated at
 * start, the calibration's table as the shape times a scale that follows
 * the real passes. */
typedef struct {
    double s[COST_MAX_T + 1];
    uint8_t n[COST_MAX_T + 1];
    int shape_only;
    double scale;
    uint32_t n_scale;
} cost_curve;
#define RATE_BUCKETS 12
#define RATE_MIN_SAMPLES 4       /* steps of each kind before measurements overrule */
#define RATE_EXPLORE 64          /* try the other choice again after this many steps */

struct engine {
    const model *m;
    engine_params p;
    kv_pool pool;              /* the CPU backend's (no engine_params.backend) */
    fwd_state fs;
    cpu_backend cpu;
    model_backend *be;         /* the device: engine_params.backend, else &cpu.b */
    eseq *seqs;                /* (max_seqs) */
    int32_t n_live;
    ewait *wait;               /* FIFO ring of cap_wait */
    int32_t n_wait, head_wait, cap_wait;
    /* drafting, shared by every sequence: mask and pruned head */
    int can_draft;             /* some draft source is on: can_layers || can_ctx */
    int can_layers;            /* layer-skipping drafts (a skip set, sp.draft != context) */
    int can_ctx;               /* context drafts (sp.draft != layers) */
    spec_costs nominal;        /* forced mode's draft-source choice, as gen_selfspec */
    job_index jix;             /* drafts from the job's finished requests, when has_jix */
    int has_jix;
    int can_tree;              /* greedy context drafts may be token trees (engine_params.trees) */
    prefix_cache pc;           /* computed prompt blocks kept for later prompts, when has_pc */
    int has_pc;
    layer_mask mask;
    qmat head;                 /* rows == 0: full head */
    const int32_t *head_tokens;
    int32_t dwidth;
    float *dlogits;            /* (max_seqs, dwidth) */
    float *logits;             /* (max_batch_tokens, vocab) */
    float *graw;               /* (max_draft + 1, vocab) a constrained sampled block's raw rows (logprobs) */
    gram_scratch *gsc;         /* full walks of a constrained sequence's vocabulary trie */
    gram_vocab *gv;            /* engine_gram_vocab's, of tokenizer gv_tok */
    const tokenizer *gv_tok;
    int32_t *am;               /* (max_batch_tokens) argmax of each output row of a full pass */
    samp_req *srq;             /* (max_batch_tokens) their sampling requests (a backend that samples) */
    uint8_t *acc;              /* (max_batch_tokens) test rows: accepted (a backend that samples) */
    int32_t *dcand;            /* (max_batch_tokens, 2) device log-probabilities: candidates per row */
    lp_row *dlp;               /* (max_batch_tokens) ... and their numbers (a backend with .logprobs) */
    int dev_draft;             /* draft tokens are taken on the device (backend.draft_take) */
    samp_req *drq;             /* (max_seqs) a draft pass's requests, */
    int32_t *dslot, *dids;     /* (max_seqs) q slots and tokens, */
    float *dconf;              /* (max_seqs) top-1 probabilities (dev_draft) */
    fwd_seq *batch;            /* (max_seqs) */
    int32_t *bseq;             /* (max_seqs) sequence index of each batch entry */
    /* cost model: seconds of a full pass of T tokens, of a draft pass of n */
    cost_curve full, draft;
    /* what speculation really delivered: tokens emitted per second of pure
     * decode steps, [0] plain and [1] speculating, by log2 of the number of
     * policy sequences; the policy's prediction is overruled by these */
    double rate[2][RATE_BUCKETS];
    uint32_t rate_n[2][RATE_BUCKETS];
    uint32_t since_other[RATE_BUCKETS];   /* steps since the other choice was tried */
    int32_t step_bucket;                  /* this step: the bucket, or -1 (not pure decode) */
    int32_t step_n;                       /* ... its policy sequences */
    int step_spec;
    engine_totals tot;
};

/* ---- engine_cost.c ---- */

/* Add one measurement: a pass of T tokens (or draft sequences) took s seconds. */
void curve_observe(cost_curve *c, int32_t T, double s);
/* Predicted seconds of a pass of T. */
double curve_get(const cost_curve *c, int32_t T);
/* Seconds of a pass's d decode tokens (prompt chunks left out). */
double plain_cost(const engine *e, int32_t d);
/* What x more tokens add to a pass that already holds T tokens. */
double extra_cost(const engine *e, int32_t T, int32_t x);
/* Time a few passes at start (ENGINE_AUTO). Returns 0 or -1 with err. */
int calibrate(engine *e, char *err, size_t errlen);

/* ---- engine_plan.c ---- */

/* Decide each decoding sequence's draft cap (and context tokens) for this step. */
void plan_drafts(engine *e);
/* Batched drafting of every sequence the plan lets draft. Returns 0 or -1 with err. */
int draft(engine *e, char *err, size_t errlen);
/* Drafts from the remote source (engine_params.remote). */
void remote_drafts(engine *e);
/* The q slot of draft row `step` of the sequence in slot i (a device's q store). */
int32_t q_slot(const engine *e, int32_t i, int32_t step);
/* A constrained sequence's draft cut at its first token the schema does not allow. */
void gram_trim_draft(eseq *s);

#endif
