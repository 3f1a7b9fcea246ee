/*
 * skipset.h - skip sets: which attention and MLP sublayers the draft skips,
 * and the optional pruned draft head, read from / written to the JSON
 * configs in configs/.
 *
 * Config format (configs/<model>.json):
 *   {
 *     "model": {"name": "...", "n_layers": 30, "dim": 576, "vocab_size": 49152},
 *     "attn_skip": [layer, ...],          indices in [0, n_layers)
 *     "mlp_skip": [layer, ...],
 *     "draft_head": [token id, ...],      optional: most frequent tokens first
 *     "draft_head_size": 8192,            optional: how many of them to use
 *     "exit": {"gamma_init": 0.6,         optional: the adaptive draft exit's
 *              "gamma_step": 0.01,        constants the search tuned (each
 *              "gamma_ema": 0.9,          member optional, each in range;
 *              "ar_init": 0.9},           absent = spec_params_default's)
 *     ... free-form provenance: "calibration", "search", "measured"
 *   }
 */
#ifndef SELFSPEC_SKIPSET_H
#define SELFSPEC_SKIPSET_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* The adaptive draft exit's constants a config records (spec_params'
 * fields of the same names). NAN: not in the config (the default stays). */
typedef struct {
    float gamma_init;       /* starting exit threshold, [0, 1] */
    float gamma_step;       /* adaptive step, [0, 1) */
    float gamma_ema;        /* smoothing of the threshold, [0, 1] */
    float ar_init;          /* starting acceptance-rate estimate, [0, 1] */
} skip_exit;

typedef struct {
    int32_t n_layers;
    uint8_t *attn_skip;     /* (n_layers) 1 = skipped by the draft */
    uint8_t *mlp_skip;      /* (n_layers) */
    int32_t *head_tokens;   /* (n_head_tokens) draft-head vocabulary, or NULL */
    int32_t n_head_tokens;
    skip_exit exit;         /* the config's exit constants (NAN members: not given) */
    float speedup;          /* speedup over plain decoding the search measured (else
                               estimated) for this set; 0 = unknown */
    char source[512];       /* file it came from, or "none" */
} skip_set;

/* An empty set (skip nothing, no exit constants) for a model of n_layers. */
void skipset_init(skip_set *s, int32_t n_layers);
void skipset_free(skip_set *s);
/* dst = a copy of s with arrays of its own (free both). */
void skipset_copy(skip_set *dst, const skip_set *s);

#define SKIPSET_MAX_LAYERS 4096

/* Parse a config file and check it against the model (layer count, indices
 * in range, no duplicates, token ids in the vocabulary, the "exit" object's
 * members known numbers in range). c == NULL: a config
 * of another model (seed configs), taken as it is: n_layers from its
 * "model" entry, its layers checked against that, no draft head. On error s
 * holds nothing to free. */
int skipset_load(skip_set *s, const char *path, const model_config *c, char *err, size_t errlen);

/* The one check of a requested draft-head size: -1 keeps the config's head,
 * 0 means the full head, N (a multiple of 16, at most the config's size)
 * keeps the N most frequent tokens. Returns 0, or -1 with err. */
int skipset_set_head(skip_set *s, int32_t draft_head, char *err, size_t errlen);

/*
 * The skip set self-spec drafts with: skip "none" = the empty set (a draft
 * with the full model), a file path, or NULL = the config in configs_dir
 * whose "model" entry matches c; then skipset_set_head(draft_head).
 * Returns 0 (s filled), 1 when no config matches (err says so; decode
 * plainly), -1 on error (err).
 */
int skipset_choose(skip_set *s, const char *skip, int32_t draft_head, const char *configs_dir,
                   const model_config *c, char *err, size_t errlen);

/* Whether speculation pays by the set's own record: 0 when its search
 * measured (or estimated) a speedup below 1x, else 1 (unknown counts as
 * paying: the user asked for it). */
int skipset_pays(const skip_set *s);

/* Find the config in dir whose "model" entry matches c (name, layers, dim,
 * vocabulary). Writes its path into out. Returns 0 if found, -1 if none. */
int skipset_find(const char *dir, const model_config *c, char *out, size_t outlen);

/* The path a new config of the model c gets in dir: "<dir>/<slug>.json",
 * the slug c->name lower-cased with every other character than a-z and
 * 0-9 as '-' (at most 127 of them; "model" for an empty name). */
void skipset_default_path(const char *dir, const model_config *c, char *out, size_t outlen);

/* Write a config: the model, the skip lists, the draft head and the exit
 * constants s->exit holds (an "exit" object of its non-NAN members, none
 * when all are NAN). extra_json: NULL or the text of a JSON object whose
 * members are added (provenance: calibration, search, measured, tune);
 * a member named like one written above is left out. */
int skipset_save(const skip_set *s, const char *path, const model_config *c, int32_t head_size,
                 const char *extra_json, char *err, size_t errlen);

/* The layer mask the draft computes (the complement of the skip set).
 * mask arrays are allocated; free with skipset_mask_free. */
void skipset_mask(const skip_set *s, layer_mask *mask);
void skipset_mask_free(layer_mask *mask);

/* Number of skipped sublayers. */
int32_t skipset_count(const skip_set *s);

#endif
