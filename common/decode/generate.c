/*
 * generate.c - prompt prefill and plain decoding (see generate.h).
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

int gen_plain(const model *m, fwd_state *s, kv_cache *kv, const int32_t *prompt, int32_t n_prompt,
              const gen_params *gp, gen_emit_fn emit, void *ctx, gen_stats *st,
              char *err, size_t errlen)
{
    int rc = -1;
    sampler smp;
    memset(st, 0, sizeof *st);
    if (sampler_init(&smp, &gp->sampling, m->config.vocab_size, err, errlen) != 0)
        return -1;
    float *logits = mallocCheck((size_t)m->config.vocab_size * sizeof(float));
    double t0 = util_now();
    if (gen_prefill(m, s, kv, prompt, n_prompt, logits, err, errlen) != 0)
        goto out;
    st->prompt_tokens = n_prompt;
    double t1 = util_now();
    st->prefill_seconds = t1 - t0;
    for (int32_t i = 0; i < gp->max_tokens; i++) {
        int32_t tok = sampler_sample(&smp, logits);
        st->generated_tokens++;
        if (emit(ctx, tok) || gen_is_stop(gp, tok) || i + 1 == gp->max_tokens)
            break;
        if (kv->len + 1 >= kv->cap) {
            fprintf(stderr, "selfspec: context full after %d tokens; stopping\n", kv->len + 1);
            break;
        }
        fwd_seq sq = {.tokens = &tok, .n_tokens = 1, .pos = kv->len, .kv = kv, .logits_from = 0};
        if (model_forward(m, s, &sq, 1, NULL, NULL, logits, err, errlen) != 0)
            goto out;
        kv->len++;
    }
    st->decode_seconds = util_now() - t1;
    rc = 0;
out:
    free(logits);
    sampler_free(&smp);
    return rc;
}
