/*
 * setup.c - how a run speculates, decided once (see setup.h).
 */
#include "decode/setup.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

/* What a run without a skip set does: context drafts where the sources
 * allow them, else plain decoding. */
static void without_set(spec_setup *s, spec_params *sp, int layers_only)
{
    s->speculate = !layers_only && sp->draft != SPEC_DRAFT_LAYERS;
    if (!s->speculate)
        sp->draft = SPEC_DRAFT_LAYERS;
}

int spec_setup_choose(spec_setup *s, const spec_want *w, const model_config *c, const char *configs_dir,
                      spec_params *sp, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (w->layers_only)
        sp->draft = SPEC_DRAFT_LAYERS;
    if (w->plain) {
        sp->draft = SPEC_DRAFT_LAYERS;
        return 0;
    }
    char why[512];
    int rc = skipset_choose(&s->ss, w->skip, w->draft_head, configs_dir, c, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "bad skip set: %s", why);
        memset(s, 0, sizeof *s);
        return -1;
    }
    if (rc > 0) {   /* no config for this model */
        without_set(s, sp, w->layers_only);
        snprintf(s->note, sizeof s->note, "%s; %s", why,
                 s->speculate ? "drafting from the context only"
                              : "decoding plainly (make one with 'selfspec search', or pass --skip)");
        return 0;
    }
    s->have_ss = 1;
    s->speculate = 1;
    spec_params_apply_exit(sp, &s->ss.exit, w->exit_given);   /* the exit the config's search tuned */
    if (!w->forced && !w->skip && !skipset_pays(&s->ss)) {
        /* speculation switches itself off where its own search found it costs */
        float speedup = s->ss.speedup;
        char src[sizeof s->ss.source];
        snprintf(src, sizeof src, "%s", s->ss.source);
        skipset_free(&s->ss);
        s->have_ss = 0;
        without_set(s, sp, w->layers_only);
        snprintf(s->note, sizeof s->note,
                 "the skip set in %s measured %.2fx plain decoding for this model on the machine it was searched "
                 "on; %s (--mode self-spec forces speculation)",
                 src, speedup, s->speculate ? "drafting from the context only" : "decoding plainly");
    }
    assert(s->speculate || sp->draft == SPEC_DRAFT_LAYERS);
    return 0;
}

const skip_set *spec_setup_skipset(const spec_setup *s)
{
    return s->have_ss ? &s->ss : NULL;
}

const char *spec_setup_source(const spec_setup *s)
{
    return s->have_ss ? s->ss.source : "";
}

void spec_setup_free(spec_setup *s)
{
    if (s->have_ss)
        skipset_free(&s->ss);
    memset(s, 0, sizeof *s);
}
