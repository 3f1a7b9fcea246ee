/*
 * generate.c - prompt prefill and the stop rule (see generate.h).
 */
#include "decode/generate.h"

#include <string.h>

#include "util/util.h"

int gen_is_stop(const gen_params *gp, int32_t token)
{
    return !gp->ignore_eos && gp->is_eog && gp->is_eog(gp->eog_ctx, token);
}

int gen_prefill(const model *m, fwd_state *s, kv_cache *kv, const int32_t *prompt, int32_t n,
                float *last_logits, char *err, size_t errlen)
{
    if (n <= 0)
        return util_err(err, errlen, "empty prompt");
    if (n >= kv->cap)
        return util_err(err, errlen, "prompt of %d tokens does not fit the context of %d tokens", n, kv->cap);
    kv_truncate(kv, 0);
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < s->max_tokens ? n - done : s->max_tokens;
        fwd_seq sq = {.tokens = prompt + done, .n_tokens = chunk, .pos = done, .kv = kv,
                      .logits_from = chunk - 1};
        if (model_forward(m, s, &sq, 1, NULL, NULL, last_logits, err, errlen) != 0)
            return -1;
        done += chunk;
        kv->len = done;
    }
    return 0;
}
