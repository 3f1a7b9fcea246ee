/*
 * job.c - a parsed OpenAI request into the engine, its text out (job.h).
 * The prompt path: chat_render for chat, tokenizer_encode with the model's BOS rule (and
 * special tokens parsed for chat), sampler_params_check, engine_submit.
 */
#include "serve/job.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "decode/output.h"
#include "decode/sampler.h"
#include "text/chat.h"
#include "util/util.h"

_Static_assert(BATCH_MAX_TOP_LOGPROBS == SAMPLER_MAX_TOP_LOGPROBS, "one limit on top_logprobs");

typedef struct {
    job_hooks hooks;
    char *custom_id;
    batch_kind kind;
    char *stops[BATCH_MAX_STOP];
    int n_stops;
    out_text text;
    const tokenizer *tok;
    int want_logprobs, ignore_eos;
    sampler_logprob *lp;       /* (cap_lp) every emitted token's, when asked */
    size_t *lp_off;            /* (cap_lp) the text's length when it was emitted */
    int n_lp, cap_lp;
} job;

static void job_free(job *j)
{
    free(j->lp);
    free(j->lp_off);
    out_text_free(&j->text);
    for (int i = 0; i < j->n_stops; i++)
        free(j->stops[i]);
    free(j->custom_id);
    free(j);
}

static void job_on_logprob(void *user, const sampler_logprob *lp)
{
    job *j = user;
    if (j->n_lp == j->cap_lp) {
        j->cap_lp = j->cap_lp ? 2 * j->cap_lp : 64;
        j->lp = reallocCheck(j->lp, (size_t)j->cap_lp * sizeof *j->lp);
        j->lp_off = reallocCheck(j->lp_off, (size_t)j->cap_lp * sizeof *j->lp_off);
    }
    j->lp[j->n_lp] = *lp;
    j->lp_off[j->n_lp++] = j->text.len;
}

/* How many of the job's tokens the response reports log-probabilities for:
 * those whose text starts before a stop string, and not a final
 * end-of-generation token (its text is not output). */
static int job_lp_count(const job *j)
{
    int n = j->n_lp;
    if (j->text.stopped)
        while (n > 0 && j->lp_off[n - 1] >= j->text.final)
            n--;
    else if (n > 0 && !j->ignore_eos && tokenizer_is_eog(j->tok, j->lp[n - 1].token))
        n--;
    return n;
}

static int job_on_token(void *user, int32_t token)
{
    job *j = user;
    int stop = out_text_push(&j->text, token);
    if (j->hooks.on_text) {
        const char *s;
        size_t n = out_text_take(&j->text, &s);
        if (n)
            j->hooks.on_text(j->hooks.user, s, n);
    }
    return stop || (j->hooks.should_stop && j->hooks.should_stop(j->hooks.user));
}

static void job_on_done(void *user, const engine_result *res)
{
    job *j = user;
    out_text_finish(&j->text);
    if (j->hooks.on_text) {
        const char *s;
        size_t n = out_text_take(&j->text, &s);
        if (n)
            j->hooks.on_text(j->hooks.user, s, n);
    }
    j->text.text[j->text.final] = '\0';   /* the text ends before any stop string */
    job_outcome o = {.custom_id = j->custom_id, .kind = j->kind, .text = j->text.text,
                     .finish = res->finish == ENGINE_FINISH_LENGTH ? BATCH_FINISH_LENGTH : BATCH_FINISH_STOP,
                     .res = *res, .tok = j->tok, .want_logprobs = j->want_logprobs, .lp = j->lp,
                     .lp_off = j->lp_off, .n_lp = j->want_logprobs ? job_lp_count(j) : 0};
    j->hooks.on_done(j->hooks.user, &o);
    job_free(j);
}

int job_is_eog(const void *ctx, int32_t token)
{
    return tokenizer_is_eog((const tokenizer *)ctx, token);
}

char *job_prompt_text(const tokenizer *tok, const batch_request *q, char *err, size_t errlen)
{
    if (q->kind == BATCH_COMPLETION)
        return strdup(q->prompt);
    chat_msg *msgs = callocCheck((size_t)q->n_messages, sizeof(chat_msg));
    for (int i = 0; i < q->n_messages; i++) {
        msgs[i].role = q->messages[i].role == BATCH_ROLE_SYSTEM ? CHAT_SYSTEM
                     : q->messages[i].role == BATCH_ROLE_USER ? CHAT_USER : CHAT_ASSISTANT;
        msgs[i].content = q->messages[i].content;
    }
    char *s = chat_render(tok, msgs, (size_t)q->n_messages, err, errlen);
    free(msgs);
    return s;
}

int job_submit(engine *e, const tokenizer *tok, const batch_request *q, const job_hooks *hooks, char *err,
               size_t errlen)
{
    if (!q->custom_id || !hooks || !hooks->on_done)
        return util_err(err, errlen, "job_submit: custom_id and on_done are required");
    gen_params gp = {.max_tokens = q->max_tokens, .ignore_eos = q->ignore_eos, .is_eog = job_is_eog,
                     .eog_ctx = tok, .want_logprobs = q->want_logprobs, .top_logprobs = q->top_logprobs,
                     .sampling = {.temperature = (float)q->temperature, .top_k = q->top_k, .top_p = (float)q->top_p,
                                  .seed = q->has_seed ? q->seed : 0}};
    if (sampler_params_check(&gp.sampling, err, errlen) != 0)
        return -1;
    char *text = job_prompt_text(tok, q, err, errlen);
    if (!text)
        return -1;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = tokenizer_encode(tok, text, strlen(text), tokenizer_add_bos(tok), q->kind == BATCH_CHAT, &ids, &n_ids,
                              err, errlen);
    free(text);
    if (rc != 0)
        return -1;
    job *j = callocCheck(1, sizeof *j);
    j->hooks = *hooks;
    j->kind = q->kind;
    j->tok = tok;
    j->want_logprobs = q->want_logprobs;
    j->ignore_eos = q->ignore_eos;
    j->custom_id = strdup(q->custom_id);
    j->n_stops = q->n_stop;
    for (int i = 0; i < q->n_stop; i++)
        j->stops[i] = strdup(q->stop[i]);
    rc = out_text_init(&j->text, tok, (const char *const *)j->stops, j->n_stops, q->ignore_eos, err, errlen);
    if (rc == 0) {
        engine_callbacks cb = {.on_token = job_on_token, .on_done = job_on_done, .user = j,
                               .on_logprob = job_on_logprob};
        rc = engine_submit(e, ids, (int32_t)n_ids, &gp, &cb, err, errlen);
    }
    free(ids);
    if (rc != 0) {
        job_free(j);
        return -1;
    }
    return 0;
}

char *job_format_result(const job_outcome *o, const char *model, int64_t created, char *err, size_t errlen)
{
    batch_result br = {.custom_id = o->custom_id, .kind = o->kind, .model = model, .created = created,
                       .text = o->text, .finish = o->finish, .prompt_tokens = o->res.prompt_tokens,
                       .completion_tokens = o->res.generated_tokens};
    batch_logprob *lp = NULL;
    if (o->want_logprobs) {   /* token ids to their bytes */
        lp = callocCheck((size_t)(o->n_lp > 0 ? o->n_lp : 1), sizeof *lp);
        for (int i = 0; i < o->n_lp; i++) {
            const sampler_logprob *s = &o->lp[i];
            lp[i].text = tokenizer_piece(o->tok, s->token, &lp[i].len);
            lp[i].logprob = s->logprob;
            lp[i].text_offset = o->lp_off[i];
            lp[i].n_top = s->n_top;
            for (int k = 0; k < s->n_top; k++) {
                lp[i].top_text[k] = tokenizer_piece(o->tok, s->top_ids[k], &lp[i].top_len[k]);
                lp[i].top_lp[k] = s->top_lps[k];
            }
        }
        br.logprobs = lp;
        br.n_logprobs = o->n_lp;
    }
    char *line = batch_format_result(&br, err, errlen);
    free(lp);
    return line;
}

char *job_format_body(const job_outcome *o, const char *model, int64_t created, char *err, size_t errlen)
{
    char *line = job_format_result(o, model, created, err, errlen);
    if (!line)
        return NULL;
    /* the line's response.body, printed again: the same fields and order */
    cJSON *root = cJSON_Parse(line);
    free(line);
    cJSON *resp = root ? cJSON_GetObjectItemCaseSensitive(root, "response") : NULL;
    cJSON *body = resp ? cJSON_GetObjectItemCaseSensitive(resp, "body") : NULL;
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(root);
    if (!s)
        util_err(err, errlen, "out of memory formatting a response body");
    return s;
}

void job_metrics_snapshot(const engine *e, metrics_engine *out)
{
    const engine_totals *t = engine_get_totals(e);
    memset(out, 0, sizeof *out);
    out->running = engine_live(e);
    out->waiting = engine_waiting(e);
    engine_kv_usage(e, &out->kv_used, &out->kv_total);
    out->spec = t->spec;
}
