/*
 * setup.h - the one place that decides how a run speculates.
 *
 * Every command (`generate`, `batch`, `serve`, `worker`, the pipeline)
 * turns a model, its skip-set config and the user's flags into a draft
 * set-up here, and nowhere else:
 *
 *   --mode plain              no speculation at all;
 *   otherwise the skip set:   --skip FILE|none, else the model's config in
 *                             configs/ (skipset_choose), its tuned exit
 *                             constants under the ones given on the command
 *                             line, its draft head under --draft-head;
 *   does it pay?              with no --skip and --mode auto, a set whose own
 *                             search measured it slower than plain decoding
 *                             is dropped (skipset_pays);
 *   without a set             context drafts still run when the draft
 *                             sources allow them (--draft auto|context|
 *                             chain); with --draft layers the run decodes
 *                             plainly.
 *
 * The outcome says what to tell the user (one line, "" when nothing is
 * worth saying); the caller prints it unless asked to be quiet.
 */
#ifndef SELFSPEC_SETUP_H
#define SELFSPEC_SETUP_H

#include <stddef.h>
#include <stdint.h>

#include "decode/skipset.h"
#include "decode/spec.h"
#include "model/model.h"

/* What the user asked for. */
typedef struct {
    const char *skip;          /* --skip FILE|none; NULL: the model's config in configs_dir */
    int32_t draft_head;        /* --draft-head N; -1: the config's */
    unsigned exit_given;       /* SPEC_GIVEN_*: exit constants set on the command line */
    int plain;                 /* --mode plain: never speculate */
    int forced;                /* --mode self-spec (or pipeline): speculate even where the
                                  set's own record says it costs */
    int layers_only;           /* the draft source must be the layer-skipping draft (the
                                  pipeline's drafter process drafts nothing else) */
} spec_want;

/* What the run does. */
typedef struct {
    skip_set ss;               /* the draft's skip set and head, when have_ss */
    int have_ss;
    int speculate;             /* 0: plain decoding (then sp->draft is SPEC_DRAFT_LAYERS) */
    char note[1024];           /* one line for the user, "" for none */
} spec_setup;

/*
 * Decide. sp holds the user's spec_params (draft sources, --gamma, ...);
 * on return its exit constants are the config's (except those in
 * w->exit_given) and its draft sources what the run can use. c: the
 * model's config; configs_dir: where the model's config is looked up.
 * Returns 0 (s filled; spec_setup_free after), or -1 with err (a bad
 * --skip file, a bad --draft-head; s holds nothing).
 */
int spec_setup_choose(spec_setup *s, const spec_want *w, const model_config *c, const char *configs_dir,
                      spec_params *sp, char *err, size_t errlen);

/* The set-up's skip set for the engine (NULL: none). */
const skip_set *spec_setup_skipset(const spec_setup *s);

/* Where the draft's skip set came from, for statistics ("" without one). */
const char *spec_setup_source(const spec_setup *s);

void spec_setup_free(spec_setup *s);

#endif
