/*
 * search.h - finding skip sets: a cheap objective and the search over it.
 *
 * Objective. Calibration text is the full model's own greedy continuation
 * of a few prompts, with its verified KV cache kept. For a candidate skip
 * set, one batched pass drafts every position of that text from the full
 * model's KV of the prefix (each position its own one-token "sequence"),
 * giving whether the draft's top-1 matches the full model's and the draft's
 * confidence there. Replaying the adaptive draft exit over those runs of
 * matches gives drafted/accepted counts per verification; dividing the
 * tokens produced by the time a measured per-sublayer cost model assigns
 * them gives estimated tokens/s. No decoding is timed per candidate.
 */
#ifndef SELFSPEC_SEARCH_H
#define SELFSPEC_SEARCH_H

#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "decode/skipset.h"
#include "decode/spec.h"

typedef struct {
    int32_t n_seqs;
    int32_t *len;          /* (n_seqs) tokens in each sequence */
    int32_t *start;        /* (n_seqs) first position drafted (prompt length - 1) */
    int32_t **tokens;      /* (n_seqs, len) */
    int32_t **full_top1;   /* (n_seqs, len) full model's argmax after each position */
    kv_cache *kv;          /* (n_seqs) full KV of every position */
    int32_t n_positions;   /* positions drafted in total */
} calib_set;

/* Per-sublayer cost model, seconds, measured on this machine. */
typedef struct {
    double base;           /* a draft step with every sublayer skipped (embed + full head) */
    double base_pruned;    /* the same with the pruned head (if any) */
    double attn;           /* one attention sublayer */
    double mlp;            /* one MLP sublayer */
    double verify[SPEC_MAX_DRAFT + 2];   /* full pass over k + 1 tokens, k = 0..max */
    int32_t max_k;
} cost_model;

typedef struct {
    double tokens_per_s;   /* estimated */
    double speedup;        /* over plain decoding (1 / verify[0]) */
    double match_rate;     /* draft top-1 == full top-1, over all positions */
    double accept_rate;    /* accepted / drafted in the replay */
    double mean_accepted;  /* accepted per verification */
} search_score;

/* Generate n_new greedy tokens after each prompt and keep the full KV. */
int calib_build(calib_set *cs, const model *m, fwd_state *fs, int32_t **prompts, const int32_t *prompt_len,
                int32_t n_prompts, int32_t n_new, char *err, size_t errlen);
void calib_free(calib_set *cs);

/* Measure the cost model (median of reps timings). */
int cost_measure(cost_model *cm, const model *m, const qmat *pruned_head, int32_t max_k, int reps,
                 char *err, size_t errlen);

/* Score a skip set. head: NULL or the pruned draft head with head_tokens. */
int search_score_set(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss,
                     const qmat *head, const int32_t *head_tokens, const cost_model *cm,
                     const spec_params *sp, search_score *out, char *err, size_t errlen);

typedef struct {
    const char *state_path;    /* checkpoint of evaluated sets, for resuming */
    double budget_seconds;     /* wall-clock budget of the search */
    int32_t head_size;         /* pruned draft head size (0 = full head) */
    uint64_t seed;
    const skip_set *seed_set;  /* NULL, or a transferred set to start from */
    int random_only;           /* baseline strategy: random sets for the whole budget */
    int quiet;
} search_opts;

#define SEARCH_MAX_LAYERS 256

/* One evaluated candidate. bits: '1' = skipped; bit l is the attention of
 * layer l, bit L + l its MLP (L layers, 2L characters). */
typedef struct {
    char bits[2 * SEARCH_MAX_LAYERS + 1];
    search_score sc;
} search_entry;

/* The search checkpoint (search_opts.state_path), owned here: one line per
 * evaluated set, "bits tokens_per_s speedup match_rate accept_rate
 * mean_accepted". search_state_read returns the rows for a model of
 * n_layers in *out (malloc'd; NULL when there are none) and their count;
 * a missing file is 0 rows, and lines that do not parse (a torn last line)
 * or are another model's are passed over. */
int search_state_read(const char *path, int32_t n_layers, search_entry **out);
void search_state_write(FILE *f, const search_entry *e);

/* Set s's skip flags from a candidate's bits (s->n_layers layers). */
void search_bits_to_set(const char *bits, skip_set *s);

/* Token frequency ranking over the calibration set (ties by id); fills
 * ss->head_tokens with the first n. */
void search_head_tokens(const calib_set *cs, const model *m, int32_t n, skip_set *ss);

/* Run the search; best set into best (allocated), its score into score.
 * report_json: malloc'd JSON text with per-sublayer sensitivities and
 * frequency in the best sets (caller frees), or NULL. */
int search_run(const calib_set *cs, const model *m, fwd_state *fs, const cost_model *cm,
               const spec_params *sp, const search_opts *o, skip_set *best, search_score *score,
               char **report_json, char *err, size_t errlen);

/* Print the per-sublayer table of a search_run report (its JSON text, as
 * written to OUT.report.json) at path to out. Returns 0, or -1 with err
 * when there is no readable report there. */
int search_report_print(const char *path, FILE *out, char *err, size_t errlen);

/* What every step of `selfspec search` starts from: the calibration of the
 * prompts (calib_build), the pruned draft head of head_size tokens
 * (search_head_tokens' ranking; head_size 0: none) and the cost model
 * measured with it (cost_measure, max_k 12, 15 reps). */
typedef struct {
    calib_set cs;
    skip_set head_only;    /* no skips; head_tokens: the pruned head's vocabulary (NULL: none) */
    qmat head;             /* the pruned head (rows 0: none) */
    cost_model cm;
} search_base;

/* Build b for prompts[0..n) with n_new calibration tokens each; log:
 * progress lines (the cost model), or NULL. Returns 0, or -1 with err
 * (nothing left to free). */
int search_base_build(search_base *b, const model *m, fwd_state *fs, int32_t **prompts, const int32_t *prompt_len,
                      int32_t n, int32_t n_new, int32_t head_size, FILE *log, char *err, size_t errlen);
void search_base_free(search_base *b);

/* ---- Tuning the draft's constants for a chosen set ----
 *
 * The skip set fixed, a grid of pruned-head sizes x starting exit
 * thresholds (gamma_init) is scored with the replay objective above. The
 * head changes both the draft's predictions (tokens outside it cannot be
 * drafted; its confidence is a softmax over its rows) and its cost, so each
 * head drafts the calibration text once and its base cost is timed; gamma
 * changes only the replay. */

#define SEARCH_TUNE_MAX 32   /* head sizes, and thresholds, at most */

typedef struct {
    int32_t head_size;     /* draft head rows; 0 = the full head */
    float gamma_init;      /* the exit's starting threshold */
    double draft_base;     /* a draft step's base cost with this head, s: the cost model's
                              full-head base times this head's measured cost over the
                              full head's (timed in the same rounds) */
    search_score sc;       /* the replay objective at this point */
} tune_point;

typedef struct {
    const int32_t *head_sizes;   /* (n_heads) candidates: 0 = the full head; sizes are
                                    rounded down to a multiple of 16, those at or above
                                    the vocabulary become the full head, repeats and
                                    sizes under 16 are dropped */
    int32_t n_heads;             /* 1..SEARCH_TUNE_MAX */
    const float *gammas;         /* (n_gammas) gamma_init candidates, each in [0, 1] */
    int32_t n_gammas;            /* 1..SEARCH_TUNE_MAX */
    int reps;                    /* timing rounds of the head costs (median) */
} tune_opts;

/* Time a draft step with every sublayer skipped (embedding, norm, head) for
 * each of heads[0..n) (rows == 0: the full head), in reps interleaved
 * rounds (each round in a rotated order); each head's fastest round into
 * out (n), seconds: on a shared machine other processes only add time, and
 * a sub-millisecond step is hit hardest. n in 1..SEARCH_TUNE_MAX + 1. */
int cost_measure_heads(const model *m, const qmat *heads, int32_t n, int reps, double *out, char *err,
                       size_t errlen);

/* The sequences seqs[0..n) of cs, in that order, as a calibration set of
 * their own that shares cs's buffers (cs must outlive it); free with
 * calib_view_free, which frees only the view's arrays. */
void calib_view(const calib_set *cs, const int32_t *seqs, int32_t n, calib_set *v);
void calib_view_free(calib_set *v);

/* Score the grid head sizes x gammas for ss's sublayers (its own head is
 * not used), other exit constants from sp, drafts costed with cm's sublayer
 * costs and each head's measured base. Two folds, cs's sequences of even
 * and of odd index: a pruned head of N is the first N tokens of
 * search_head_tokens' ranking of one fold and drafts the other fold, so no
 * head is scored on the text it was counted on; the full head drafts both.
 * The score is over both folds (tokens over seconds, summed). cs needs at
 * least 2 sequences. grid: room for n_heads * n_gammas points, filled
 * head-major; *n_grid: how many; *best: the index of the highest estimated
 * tokens/s (the first on ties). Returns 0, or -1 with err. */
int search_tune(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss, const cost_model *cm,
                const spec_params *sp, const tune_opts *o, tune_point *grid, int32_t *n_grid, int32_t *best,
                char *err, size_t errlen);

/* Map a set to a model of n_layers by normalized depth l / (L - 1). */
void skipset_transfer(const skip_set *src, int32_t n_layers, skip_set *dst);

#endif
