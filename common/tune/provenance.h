/*
 * provenance.h - the provenance members `selfspec search` writes into a
 * config beside what skipset_save writes itself (decode/skipset.h: the
 * model, skip lists, draft head, exit), and the one member it reads back.
 *
 * Written (each a JSON object's text for skipset_save's extra_json):
 *   search run    "calibration" {prompts, n_prompts, new_tokens_per_prompt,
 *                 positions, text}, "search" {strategy, budget_seconds,
 *                 head_size, seed, threads}, "cost_model_ms", "estimated",
 *                 "measured" (when the confirming run ran),
 *                 "objective_rank_correlation" (when validated), "tune"
 *   --tune-only   the seed config's own members carried over, "estimated"
 *                 and "measured" replaced by the tuned point's, "tune"
 *   --transfer-only  "transferred" {from, from_layers, mapping}
 * "tune": what the grid was, the cost model, the exit constants held fixed,
 * head sizes, thresholds, each point's estimate, "before" and "chosen" with
 * their full scores, the confirming runs.
 * Read back: "calibration" (prompts path, tokens per prompt), which
 * --tune-only re-runs.
 *
 * These live in tune/ and not beside skipset_save in decode/: they are
 * made of the tune layer's types (search_score, cost_model, tune_point,
 * tune_result), and decode may not include tune.
 */
#ifndef SELFSPEC_TUNE_PROVENANCE_H
#define SELFSPEC_TUNE_PROVENANCE_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "decode/spec.h"
#include "tune/search.h"
#include "tune/validate.h"

/* A replay score: tokens_per_s, speedup, match_rate, acceptance_rate,
 * mean_accepted (as measured, not rounded). */
cJSON *prov_score_json(const search_score *sc);

/* One tune grid point: head_size, gamma_init, draft_base_ms, speedup;
 * with full, also tokens_per_s, acceptance_rate, mean_accepted (rounded to
 * 4 or fewer decimals). */
cJSON *prov_point_json(const tune_point *g, int full);

/* The "tune" member (threads: the OpenMP threads it ran with). */
cJSON *prov_tune_json(const tune_result *tr, const cost_model *cm, const spec_params *sp, int threads);

/* How the search ran (the command line's part of the provenance). */
typedef struct {
    const char *prompts_path;  /* written repository-relative ("configs/...") when it can be */
    int32_t n_new;             /* calibration tokens per prompt */
    int random_only;           /* --strategy random */
    double budget;             /* seconds */
    int32_t head_size;
    uint64_t seed;
    int threads;
} prov_search;

/* A search run's provenance (malloc'd JSON text). plain / spec: the
 * confirming run ("measured" only when plain->tps > 0); rho: NAN leaves
 * "objective_rank_correlation" out; tr: NULL leaves "tune" out. */
char *prov_search_json(const prov_search *p, const calib_set *cs, const cost_model *cm, const search_score *sc,
                       const tune_measured *plain, const tune_measured *spec, double rho, const tune_result *tr,
                       const spec_params *sp);

/* --tune-only's provenance (malloc'd JSON text): the members of the config
 * at seed_path (none when it cannot be read as a JSON object) without those
 * skipset_save writes and without "estimated", "measured", "tune"; then the
 * chosen point's "estimated", "measured" from tr's confirming runs (when
 * tr->plain.tps > 0) and "tune". */
char *prov_tuned_json(const char *seed_path, const tune_result *tr, const cost_model *cm, const spec_params *sp,
                      int threads);

/* --transfer-only's provenance (malloc'd JSON text): "transferred" with the
 * seed config (repository-relative when it can be) and its layer count. */
char *prov_transfer_json(const char *seed_config, int32_t from_layers);

/* --transfer-only as one call: the skip set of the config at seed_path
 * (another model's, skipset_load without a model) mapped onto a model of c
 * by normalized depth (skipset_transfer), with the draft head of c's own
 * config in configs_dir when there is one (a head is a vocabulary, not part
 * of the pattern), written to out_path by skipset_save (head_size) with
 * prov_transfer_json's provenance; nothing measured. *info (may be NULL):
 * the seed's layers and skipped sublayers, and those of the written set.
 * Returns 0, or -1 with err. */
typedef struct {
    int32_t from_layers, from_skipped, to_skipped;
} prov_transfer_info;
int prov_write_transfer(const char *seed_path, const model_config *c, const char *configs_dir, const char *out_path,
                        int32_t head_size, prov_transfer_info *info, char *err, size_t errlen);

/* The calibration a config recorded: prompts (the "calibration"."prompts"
 * path as written; one under "configs/" that is not readable from here is
 * looked up in configs_dir instead), "" when absent; *n_new its
 * "new_tokens_per_prompt", 0 when absent or outside 8..4096. Returns 0, or
 * -1 with err when the file cannot be read or is not a JSON object. */
int prov_read_calibration(const char *config_path, const char *configs_dir, char *prompts, size_t plen,
                          int32_t *n_new, char *err, size_t errlen);

#endif
