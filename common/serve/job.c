/*
 * job.c - a parsed OpenAI request into the engine, its text out (job.h).
 * The prompt path: chat_render for chat, tokenizer_encode with the model's BOS rule (and
 * special tokens parsed for chat), sampler_params_check, engine_submit.
 */
#include "serve/job.h"

#include <cjson/cJSON.h>
#include <stdio.h>
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
    int index;                 /* the choice (n > 1) */
    int n_lp_sent;             /* log-probabilities already streamed */
    gram gram;                 /* response_format: the engine's vocabulary and this request's schema */
    jschema *js;
    int32_t *bias_ids;         /* logit_bias: the engine reads them until on_done */
    float *bias_vals;
    sampler_logprob *lp;       /* (cap_lp) every emitted token's, when asked */
    size_t *lp_off;            /* (cap_lp) the text's length when it was emitted */
    int n_lp, cap_lp;
} job;

static void job_free(job *j)
{
    free(j->lp);
    free(j->lp_off);
    jschema_free(j->js);
    free(j->bias_ids);
    free(j->bias_vals);
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

/* The response's log-probability entries of one choice (token bytes from
 * the tokenizer), malloc'd. */
static batch_logprob *job_logprobs(const tokenizer *tok, const sampler_logprob *in, const size_t *off, int n)
{
    batch_logprob *lp = callocCheck((size_t)(n > 0 ? n : 1), sizeof *lp);
    for (int i = 0; i < n; i++) {
        lp[i].text = tokenizer_piece(tok, in[i].token, &lp[i].len);
        lp[i].logprob = in[i].logprob;
        lp[i].text_offset = off[i];
        lp[i].n_top = in[i].n_top;
        for (int k = 0; k < in[i].n_top; k++) {
            lp[i].top_text[k] = tokenizer_piece(tok, in[i].top_ids[k], &lp[i].top_len[k]);
            lp[i].top_lp[k] = in[i].top_lps[k];
        }
    }
    return lp;
}

/* Hand the text that became final (and, when asked, the log-probabilities
 * of the tokens it starts; last: all that are left) to on_text. */
static void job_stream(job *j, int last)
{
    const char *s;
    size_t n = out_text_take(&j->text, &s);
    int upto = j->n_lp_sent;
    if (j->want_logprobs) {
        size_t end = j->text.final;   /* bytes final so far */
        int lim = last ? job_lp_count(j) : j->n_lp;
        while (upto < lim && (last || j->lp_off[upto] < end))
            upto++;
    }
    if (!n && upto == j->n_lp_sent && !last)
        return;
    char *lp_json = NULL;
    if (j->want_logprobs) {
        batch_logprob *lp = job_logprobs(j->tok, j->lp + j->n_lp_sent, j->lp_off + j->n_lp_sent,
                                         upto - j->n_lp_sent);
        lp_json = batch_format_logprobs(lp, upto - j->n_lp_sent, j->kind == BATCH_CHAT);
        free(lp);
        if (!lp_json) {
            fprintf(stderr, "selfspec: out of memory (streamed log-probabilities)\n");
            exit(1);
        }
        j->n_lp_sent = upto;
    }
    job_delta d = {.index = j->index, .text = s, .n = n, .logprobs_json = lp_json};
    if (n || lp_json || last)
        j->hooks.on_text(j->hooks.user, &d);
    cJSON_free(lp_json);
}

static int job_on_token(void *user, int32_t token)
{
    job *j = user;
    int stop = out_text_push(&j->text, token);
    if (j->hooks.on_text)
        job_stream(j, 0);
    return stop || (j->hooks.should_stop && j->hooks.should_stop(j->hooks.user));
}

static void job_on_done(void *user, const engine_result *res)
{
    job *j = user;
    out_text_finish(&j->text);
    if (j->hooks.on_text)
        job_stream(j, 1);
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

static void *job_memdup(const void *p, size_t n)
{
    void *q = mallocCheck(n ? n : 1);
    if (n)
        memcpy(q, p, n);
    return q;
}

/* One engine request for choice `index` of q (its seed: the request's + index). */
static int job_submit_one(engine *e, const tokenizer *tok, const batch_request *q, const job_hooks *hooks, int index,
                          char *err, size_t errlen)
{
    gen_params gp = {.max_tokens = q->max_tokens, .ignore_eos = q->ignore_eos, .is_eog = job_is_eog,
                     .eog_ctx = tok, .want_logprobs = q->want_logprobs, .top_logprobs = q->top_logprobs,
                     .sampling = {.temperature = (float)q->temperature, .top_k = q->top_k, .top_p = (float)q->top_p,
                                  .seed = (q->has_seed ? q->seed : 0) + (uint64_t)index},
                     .presence_penalty = (float)q->presence_penalty, .frequency_penalty = (float)q->frequency_penalty,
                     .min_tokens = q->min_tokens, .n_bias = q->n_bias};
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
    if (q->response_format != BATCH_TEXT) {   /* the schema, compiled for this request */
        const char *sch = q->json_schema ? q->json_schema : "";
        j->gram.gv = engine_gram_vocab(e, tok, err, errlen);
        if (!j->gram.gv ||
            jschema_compile(&j->js, sch, strlen(sch), q->response_format == BATCH_JSON_OBJECT, err, errlen) != 0) {
            free(ids);
            job_free(j);
            return -1;
        }
        j->gram.js = j->js;
        gp.gram = &j->gram;
    }
    if (q->n_bias > 0) {
        j->bias_ids = job_memdup(q->bias_ids, (size_t)q->n_bias * sizeof(int32_t));
        j->bias_vals = job_memdup(q->bias_vals, (size_t)q->n_bias * sizeof(float));
        gp.bias_ids = j->bias_ids;
        gp.bias_vals = j->bias_vals;
    }
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

/* ---- n > 1: one engine request per choice, one outcome when all are done ---- */

typedef struct job_group job_group;

typedef struct {
    job_group *g;
    int index;
} job_member;

struct job_group {
    job_hooks hooks;           /* the caller's */
    int n, n_submitted, n_done;
    char *custom_id;
    batch_kind kind;
    const tokenizer *tok;
    int want_logprobs;
    engine_result res;         /* choice 0's, the generated tokens summed */
    job_member *members;       /* (n) */
    struct {
        char *text;
        batch_finish finish;
        sampler_logprob *lp;
        size_t *lp_off;
        int n_lp;
    } *c;                      /* (n) */
};


static void group_free(job_group *g)
{
    for (int i = 0; i < g->n; i++) {
        free(g->c[i].text);
        free(g->c[i].lp);
        free(g->c[i].lp_off);
    }
    free(g->c);
    free(g->members);
    free(g->custom_id);
    free(g);
}

static void group_on_text(void *user, const job_delta *d)
{
    job_member *m = user;
    job_delta md = *d;
    md.index = m->index;
    m->g->hooks.on_text(m->g->hooks.user, &md);
}

static int group_should_stop(void *user)
{
    job_member *m = user;
    return m->g->hooks.should_stop && m->g->hooks.should_stop(m->g->hooks.user);
}

static void group_on_done(void *user, const job_outcome *o)
{
    job_member *m = user;
    job_group *g = m->g;
    g->c[m->index].text = strdup(o->text);
    g->c[m->index].finish = o->finish;
    g->c[m->index].n_lp = o->n_lp;
    g->c[m->index].lp = job_memdup(o->lp, (size_t)o->n_lp * sizeof *o->lp);
    g->c[m->index].lp_off = job_memdup(o->lp_off, (size_t)o->n_lp * sizeof *o->lp_off);
    if (m->index == 0) {
        int64_t gen = g->res.generated_tokens;
        g->res = o->res;
        g->res.generated_tokens += gen;
    } else {
        g->res.generated_tokens += o->res.generated_tokens;
    }
    if (++g->n_done < g->n_submitted)
        return;
    job_choice *ch = callocCheck((size_t)g->n_submitted, sizeof *ch);
    for (int i = 0; i < g->n_submitted; i++)
        ch[i] = (job_choice){g->c[i].text, g->c[i].finish, g->c[i].lp, g->c[i].lp_off, g->c[i].n_lp};
    job_outcome all = {.custom_id = g->custom_id, .kind = g->kind, .text = ch[0].text, .finish = ch[0].finish,
                       .res = g->res, .tok = g->tok, .want_logprobs = g->want_logprobs, .lp = ch[0].lp,
                       .lp_off = ch[0].lp_off, .n_lp = ch[0].n_lp, .choices = ch, .n_choices = g->n_submitted};
    g->hooks.on_done(g->hooks.user, &all);
    free(ch);
    group_free(g);
}

int job_submit(engine *e, const tokenizer *tok, const batch_request *q, const job_hooks *hooks, char *err,
               size_t errlen)
{
    if (!q->custom_id || !hooks || !hooks->on_done)
        return util_err(err, errlen, "job_submit: custom_id and on_done are required");
    if (q->n <= 1)
        return job_submit_one(e, tok, q, hooks, 0, err, errlen);
    job_group *g = callocCheck(1, sizeof *g);
    g->hooks = *hooks;
    g->n = q->n;
    g->custom_id = strdup(q->custom_id);
    g->kind = q->kind;
    g->tok = tok;
    g->want_logprobs = q->want_logprobs;
    g->members = callocCheck((size_t)q->n, sizeof *g->members);
    g->c = callocCheck((size_t)q->n, sizeof *g->c);
    for (int i = 0; i < q->n; i++) {
        g->members[i] = (job_member){g, i};
        job_hooks mh = {.on_text = hooks->on_text ? group_on_text : NULL, .should_stop = group_should_stop,
                        .on_done = group_on_done, .user = &g->members[i]};
        if (job_submit_one(e, tok, q, &mh, i, err, errlen) != 0) {
            if (i == 0) {   /* nothing in flight: the request fails as a whole */
                group_free(g);
                return -1;
            }
            /* the same request was accepted i times: the engine's checks do
             * not depend on the seed, so this is out of memory or shutdown */
            fprintf(stderr, "selfspec: '%s': choice %d of %d not started (%s); answering with %d\n",
                    q->custom_id, i, q->n, err, i);
            break;
        }
        g->n_submitted = i + 1;
    }
    return 0;
}


char *job_format_result(const job_outcome *o, const job_format_opts *f, char *err, size_t errlen)
{
    batch_result br = {.custom_id = o->custom_id, .kind = o->kind, .model = f->model, .created = f->created,
                       .text = o->text, .finish = o->finish, .prompt_tokens = o->res.prompt_tokens,
                       .completion_tokens = o->res.generated_tokens, .system_fingerprint = f->fingerprint,
                       .usage_details = f->usage_details, .accepted_prediction_tokens = o->res.accepted_tokens,
                       .rejected_prediction_tokens = o->res.draft_tokens - o->res.accepted_tokens,
                       .cached_tokens = o->res.cached_tokens};
    int n_ch = o->n_choices > 0 ? o->n_choices : 1;
    job_choice one = {o->text, o->finish, o->lp, o->lp_off, o->n_lp};
    const job_choice *jc = o->n_choices > 0 ? o->choices : &one;
    batch_choice *bc = callocCheck((size_t)n_ch, sizeof *bc);
    batch_logprob **lps = callocCheck((size_t)n_ch, sizeof *lps);
    for (int c = 0; c < n_ch; c++) {
        bc[c] = (batch_choice){.text = jc[c].text, .finish = jc[c].finish};
        if (o->want_logprobs) {   /* token ids to their bytes */
            lps[c] = job_logprobs(o->tok, jc[c].lp, jc[c].lp_off, jc[c].n_lp);
            bc[c].logprobs = lps[c];
            bc[c].n_logprobs = jc[c].n_lp;
        }
    }
    br.text = bc[0].text;
    br.logprobs = bc[0].logprobs;
    br.n_logprobs = bc[0].n_logprobs;
    if (o->n_choices > 0) {
        br.choices = bc;
        br.n_choices = n_ch;
    }
    char *line = batch_format_result(&br, err, errlen);
    for (int c = 0; c < n_ch; c++)
        free(lps[c]);
    free(lps);
    free(bc);
    return line;
}

char *job_format_body(const job_outcome *o, const job_format_opts *f, char *err, size_t errlen)
{
    char *line = job_format_result(o, f, err, errlen);
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

void job_fingerprint(const model_config *c, uint64_t file_size, char out[24])
{
    /* bump the leading version when selfspec's output for a request changes */
    char key[256], hex[17];
    snprintf(key, sizeof key, "selfspec-output-1|%llu|%d|%d|%d|%d|%d", (unsigned long long)file_size, c->vocab_size,
             c->n_layers, c->dim, c->hidden_dim, c->n_heads);
    batch_output_hex(key, 0, hex);
    snprintf(out, 24, "fp_%s", hex);
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
