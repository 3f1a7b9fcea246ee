/*
 * validate.h - what `selfspec search` measures by real decoding beside its
 * replay objective (tune/search.h), and its tune step as one call.
 *
 * Measuring: greedy decoding of the calibration prompts by the caller's
 * decoder (`selfspec search` passes engine_generate, so configurations are
 * measured as `generate` decodes; the engine is a layer above this one, so
 * it comes in as a function), several draft configurations
 * taking turns prompt by prompt, so a machine that gets busier or quieter
 * moves them all alike. Validating the objective: sets spread over the
 * search checkpoint's range of estimated tokens/s are decoded for real, and
 * the estimate and the measurement are rank-correlated (Spearman). The tune
 * step: the CLI's grid of draft head sizes x exit thresholds plus the set's
 * own point ("before"), scored by search_tune, and the chosen point put into
 * the set and the spec_params.
 *
 * Progress goes to a caller's FILE (NULL: silent); nothing here reads the
 * environment or writes files.
 */
#ifndef SELFSPEC_TUNE_VALIDATE_H
#define SELFSPEC_TUNE_VALIDATE_H

#include <stdint.h>
#include <stdio.h>

#include "decode/generate.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "model/model.h"
#include "tune/search.h"

/* One configuration's real decoding: new tokens per decode second, and
 * accepted / drafted (0 for plain or when nothing was drafted). */
typedef struct {
    double tps;
    double accept_rate;
} tune_measured;

#define TUNE_MEASURE_MAX 8   /* configurations one tune_measure_many takes turns between */

/* A decoder of one prompt: engine_generate's signature (the one passed in
 * production). ss NULL: plain; sps is filled when ss is not NULL. */
typedef int (*tune_decode_fn)(const model *m, int32_t ctx, const skip_set *ss, const spec_params *sp,
                              const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                              void *emit_ctx, gen_stats *st, spec_stats *sps, char *err, size_t errlen);

/* What measuring decodes with: the model, the positions per sequence (at
 * least the longest prompt + n_new + SPEC_MAX_DRAFT + 2) and the decoder. */
typedef struct {
    const model *m;
    int32_t kv_cap;
    tune_decode_fn decode;
} tune_bench;

/* Greedy decoding (ignore_eos, n_new tokens per prompt, output dropped) of
 * prompts ids[0..n) for n_cfg configurations (1..TUNE_MEASURE_MAX): ss[c]
 * NULL is plain, sp[c] NULL the default spec_params. Each prompt is decoded
 * once per configuration, in an order rotated per prompt (each
 * configuration first, second, ... equally often). out[c]: total new tokens
 * (after the first) / total decode seconds, and the acceptance rate.
 * Returns 0, or -1 with err (a decode failed; out untouched). */
int tune_measure_many(const tune_bench *b, int n_cfg, const skip_set *const *ss, const spec_params *const *sp,
                      int32_t **ids, const int32_t *lens, int32_t n, int32_t n_new, tune_measured *out, char *err,
                      size_t errlen);

/* tune_measure_many of one configuration. */
int tune_measure(const tune_bench *b, const skip_set *ss, const spec_params *sp, int32_t **ids, const int32_t *lens,
                 int32_t n, int32_t n_new, tune_measured *out, char *err, size_t errlen);

/* Spearman rank correlation of a[0..n) and b[0..n) (ties get their mean
 * rank); 0 when either is constant or n < 2. */
double tune_spearman(const double *a, const double *b, int n);

/* Validate the objective: the checkpoint's rows (search_state_read of
 * state_path for b->m) sorted by estimated tokens/s, nsets of them picked
 * evenly over that range (first and last included), each decoded for real
 * (tune_measure, no exit constants, best's draft head) over ids[0..np)
 * with n_new tokens; est_out / meas_out (room for nsets) get the estimated
 * and measured tokens/s. Returns their Spearman correlation, or NAN when
 * nsets < 3, the checkpoint holds fewer than nsets rows, or a decode
 * failed. log: progress lines, or NULL. */
double tune_validate_objective(const char *state_path, const tune_bench *b, const skip_set *best, int32_t **ids,
                               const int32_t *lens, int32_t np, int32_t n_new, int nsets, double *est_out,
                               double *meas_out, FILE *log);

/* ---- the tune step ---- */

typedef struct {
    tune_point grid[SEARCH_TUNE_MAX * SEARCH_TUNE_MAX];
    int32_t n, best;           /* grid points; the chosen one */
    int32_t before;            /* the point of the set's head and exit as they were, or -1 */
    int32_t heads[SEARCH_TUNE_MAX + 1], n_heads;
    float gammas[SEARCH_TUNE_MAX + 1];
    int32_t n_gammas;
    double seconds;            /* the tune step's time */
    tune_measured plain, m_before, m_tuned;   /* confirming runs (tps 0: not run) */
} tune_result;

/* A tune grid axis from the command line: comma-separated, 1..SEARCH_TUNE_MAX
 * values; with ints, head sizes (decimal integers in [0, 2^24]) into ints,
 * else thresholds (numbers in [0, 1]) into floats; *n of them. Returns 0,
 * or -1 with err (why, and the value). */
int tune_parse_list(const char *arg, int32_t *ints, float *floats, int32_t *n, char *err, size_t errlen);

/* A head size as search_tune builds it: 0 (the full head) at or above the
 * vocabulary's multiple of 16, else rounded down to a multiple of 16. */
int32_t tune_norm_head(int32_t head, int32_t vocab);

/* Score heads[0..n_heads) x gammas[0..n_gammas) (1..SEARCH_TUNE_MAX each)
 * for ss's sublayers, plus the set's own before_head / before_gamma where
 * the lists lack them (so the "before" point is always scored, room
 * permitting), with search_tune (reps 41); tr (zeroed here) gets the grid,
 * the best point, the before point and the time. log: the grid as a table,
 * or NULL. cs needs at least 2 sequences. Returns 0, or -1 with err. */
int tune_run(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss, const int32_t *heads,
             int32_t n_heads, const float *gammas, int32_t n_gammas, int32_t before_head, float before_gamma,
             const cost_model *cm, const spec_params *sp, tune_result *tr, FILE *log, char *err, size_t errlen);

/* The chosen point into ss (its head: the first head_size tokens of the
 * calibration's ranking, search_head_tokens; 0: the full head) and sp
 * (gamma_init), and every exit constant of sp into ss->exit. */
void tune_apply(const tune_result *tr, const calib_set *cs, const model *m, skip_set *ss, spec_params *sp);

/* The tune step and the confirming run, as `selfspec search` ends. With tr:
 * tune_run over heads x gammas (before: best's own head and sp->gamma_init)
 * and tune_apply into best and sp. Then real decoding, in turns
 * (tune_measure_many, n_new tokens over ids[0..np)), of plain, best under
 * sp and, when the tune moved the point, the set as it was under the
 * spec_params as they were; plain and tuned into *mp and *ms (and tr's
 * plain, m_tuned, m_before: m_tuned when the point did not move). A failed
 * measurement is logged and leaves them 0. tr NULL: only plain vs best.
 * log: progress, or NULL. Returns 0, or -1 with err (the tune step failed;
 * best and sp unchanged). */
int tune_confirm(const tune_bench *b, const calib_set *cs, fwd_state *fs, skip_set *best, const cost_model *cm,
                 spec_params *sp, const int32_t *heads, int32_t n_heads, const float *gammas, int32_t n_gammas,
                 int32_t **ids, const int32_t *lens, int32_t np, int32_t n_new, tune_result *tr, tune_measured *mp,
                 tune_measured *ms, FILE *log, char *err, size_t errlen);

#endif
