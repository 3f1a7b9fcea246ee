/*
 * search.c - skip-set search: calibration data, the measured cost model,
 * the replay objective, and the search strategy (see search.h).
 *
 * Strategy (deterministic for a seed, anytime, resumable):
 *   1. sensitivity: score every sublayer skipped alone (2L evaluations);
 *   2. greedy prefix: skip sublayers in order of least harm, scoring every
 *      prefix, keep the best;
 *   3. local search until the budget ends: flip one sublayer, or swap a
 *      skipped one for a kept one, drawn with a bias towards harmless
 *      sublayers; keep improvements.
 * Every evaluation is appended to a checkpoint file, so an interrupted
 * search restarts with its cache of scores and its best set.
 *
 * Tuning (search_tune), for a chosen set: every draft head size drafts the
 * calibration once (one batched pass), every exit threshold replays those
 * drafts, and each head's base cost is timed in interleaved rounds.
 */
#include "tune/search.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "decode/generate.h"
#include "decode/sampler.h"
#include "util/util.h"

#define EVAL_BATCH 31   /* positions per forward pass: stays on the few-token kernel */

/* ------------------------------------------------------------------------ */
/* Calibration set                                                           */

static int calib_one(calib_set *cs, int i, const model *m, fwd_state *fs, const int32_t *prompt,
                     int32_t np, int32_t n_new, float *logits, char *err, size_t errlen)
{
    int32_t cap = np + n_new + 1, V = m->config.vocab_size;
    if (kv_init(&cs->kv[i], &m->config, cap, err, errlen) != 0)
        return -1;
    cs->tokens[i] = mallocCheck((size_t)cap * sizeof(int32_t));
    cs->full_top1[i] = mallocCheck((size_t)cap * sizeof(int32_t));
    memcpy(cs->tokens[i], prompt, (size_t)np * sizeof(int32_t));
    kv_cache *kv = &cs->kv[i];
    if (gen_prefill(m, fs, kv, prompt, np, logits, err, errlen) != 0)
        return -1;
    int32_t len = np;
    for (;;) {
        int32_t next = sampler_argmax(logits, V);
        cs->full_top1[i][len - 1] = next;
        if (len == np + n_new)
            break;
        cs->tokens[i][len] = next;
        fwd_seq sq = {.tokens = &cs->tokens[i][len], .n_tokens = 1, .pos = len, .kv = kv, .logits_from = 0};
        if (model_forward(m, fs, &sq, 1, NULL, NULL, logits, err, errlen) != 0)
            return -1;
        kv->len = ++len;
    }
    cs->len[i] = len;
    cs->start[i] = np - 1;
    cs->n_positions += len - (np - 1);
    return 0;
}

int calib_build(calib_set *cs, const model *m, fwd_state *fs, int32_t **prompts, const int32_t *prompt_len,
                int32_t n_prompts, int32_t n_new, char *err, size_t errlen)
{
    memset(cs, 0, sizeof *cs);
    cs->n_seqs = n_prompts;
    cs->len = callocCheck((size_t)n_prompts, sizeof(int32_t));
    cs->start = callocCheck((size_t)n_prompts, sizeof(int32_t));
    cs->tokens = callocCheck((size_t)n_prompts, sizeof(int32_t *));
    cs->full_top1 = callocCheck((size_t)n_prompts, sizeof(int32_t *));
    cs->kv = callocCheck((size_t)n_prompts, sizeof(kv_cache));
    float *logits = mallocCheck((size_t)m->config.vocab_size * sizeof(float));
    int rc = 0;
    for (int32_t i = 0; i < n_prompts && rc == 0; i++)
        rc = calib_one(cs, i, m, fs, prompts[i], prompt_len[i], n_new, logits, err, errlen);
    free(logits);
    if (rc != 0)
        calib_free(cs);
    return rc;
}

void calib_free(calib_set *cs)
{
    for (int32_t i = 0; i < cs->n_seqs; i++) {
        if (cs->kv)
            kv_free(&cs->kv[i]);
        if (cs->tokens)
            free(cs->tokens[i]);
        if (cs->full_top1)
            free(cs->full_top1[i]);
    }
    free(cs->len);
    free(cs->start);
    free(cs->tokens);
    free(cs->full_top1);
    free(cs->kv);
    memset(cs, 0, sizeof *cs);
}

/* ------------------------------------------------------------------------ */
/* Cost model                                                                */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One timed forward pass of n tokens at position 64. */
static double time_once(const model *m, fwd_state *fs, kv_cache *kv, int32_t n, const layer_mask *mask,
                        const qmat *head, float *logits)
{
    int32_t toks[SPEC_MAX_DRAFT + 2] = {0};
    fwd_seq sq = {.tokens = toks, .n_tokens = n, .pos = 64, .kv = kv, .logits_from = 0};
    double t0 = util_now();
    model_forward(m, fs, &sq, 1, mask, head, logits, NULL, 0);
    return util_now() - t0;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return v[n / 2];
}

/*
 * Every configuration is timed once per round, rounds repeated `reps`
 * times, medians taken: noise on a shared machine then hits all of them
 * alike. Per-sublayer costs come from the attention-only and MLP-only
 * passes and are scaled so that base + L * (attn + mlp) equals the measured
 * full step: the model stays consistent with what it predicts.
 */
int cost_measure(cost_model *cm, const model *m, const qmat *pruned_head, int32_t max_k, int reps,
                 char *err, size_t errlen)
{
    enum { C_NONE, C_NONE_PRUNED, C_ATTN, C_MLP, C_VERIFY };
    const model_config *c = &m->config;
    kv_cache kv;
    fwd_state fs;
    memset(cm, 0, sizeof *cm);
    max_k = max_k > SPEC_MAX_DRAFT ? SPEC_MAX_DRAFT : max_k;
    reps = reps > 64 ? 64 : reps < 1 ? 1 : reps;
    if (kv_init(&kv, c, 128, err, errlen) != 0)
        return -1;
    fwd_state_init(&fs, c, SPEC_MAX_DRAFT + 2, 128);
    kv.len = 64;
    float *logits = mallocCheck((size_t)(SPEC_MAX_DRAFT + 2) * (c->vocab_size + QMAT_ROWS) * sizeof(float));
    uint8_t *on = mallocCheck((size_t)c->n_layers), *off = callocCheck((size_t)c->n_layers, 1);
    memset(on, 1, (size_t)c->n_layers);
    layer_mask none = {off, off}, attn_only = {on, off}, mlp_only = {off, on};
    int n_cfg = C_VERIFY + max_k + 1;
    double *t = mallocCheck((size_t)n_cfg * reps * sizeof(double));
    for (int w = 0; w < 3; w++)   /* warm-up */
        time_once(m, &fs, &kv, 1, NULL, NULL, logits);
    for (int r = 0; r < reps; r++) {
        t[C_NONE * reps + r] = time_once(m, &fs, &kv, 1, &none, NULL, logits);
        t[C_NONE_PRUNED * reps + r] = pruned_head ? time_once(m, &fs, &kv, 1, &none, pruned_head, logits) : 0;
        t[C_ATTN * reps + r] = time_once(m, &fs, &kv, 1, &attn_only, NULL, logits);
        t[C_MLP * reps + r] = time_once(m, &fs, &kv, 1, &mlp_only, NULL, logits);
        for (int32_t k = 0; k <= max_k; k++)
            t[(C_VERIFY + k) * reps + r] = time_once(m, &fs, &kv, k + 1, NULL, NULL, logits);
    }
    for (int32_t k = 0; k <= max_k; k++)
        cm->verify[k] = median(t + (C_VERIFY + k) * reps, reps);
    cm->max_k = max_k;
    cm->base = median(t + C_NONE * reps, reps);
    cm->base_pruned = pruned_head ? median(t + C_NONE_PRUNED * reps, reps) : cm->base;
    double a = fmax(1e-7, median(t + C_ATTN * reps, reps) - cm->base);
    double f = fmax(1e-7, median(t + C_MLP * reps, reps) - cm->base);
    double scale = fmax(0.0, cm->verify[0] - cm->base) / (a + f);
    cm->attn = a * scale / c->n_layers;
    cm->mlp = f * scale / c->n_layers;
    free(t);
    free(on);
    free(off);
    free(logits);
    fwd_state_free(&fs);
    kv_free(&kv);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Objective                                                                 */

/* Draft every calibration position once: match[p] and conf[p]. */
static int draft_all(const calib_set *cs, const model *m, fwd_state *fs, const layer_mask *mask,
                     const qmat *head, const int32_t *head_tokens, uint8_t *match, float *conf,
                     char *err, size_t errlen)
{
    const model_config *c = &m->config;
    int32_t width = head ? head->rows : c->vocab_size;
    size_t per = (size_t)c->n_layers * c->kv_dim;
    kv_elem *pool_k = mallocCheck(EVAL_BATCH * per * sizeof(kv_elem));
    kv_elem *pool_v = mallocCheck(EVAL_BATCH * per * sizeof(kv_elem));
    kv_cache scratch[EVAL_BATCH];
    fwd_seq seqs[EVAL_BATCH];
    int32_t want[EVAL_BATCH];
    float *logits = mallocCheck((size_t)EVAL_BATCH * (width + QMAT_ROWS) * sizeof(float));
    for (int j = 0; j < EVAL_BATCH; j++)
        scratch[j] = (kv_cache){.k = pool_k + j * per, .v = pool_v + j * per, .cap = 1, .len = 0,
                                .n_layers = c->n_layers, .kv_dim = c->kv_dim, .head_dim = c->head_dim};
    int rc = 0;
    int32_t p = 0, nb = 0;
    for (int32_t s = 0; s < cs->n_seqs && rc == 0; s++)
        for (int32_t i = cs->start[s]; i < cs->len[s] && rc == 0; i++) {
            seqs[nb] = (fwd_seq){.tokens = &cs->tokens[s][i], .n_tokens = 1, .pos = i, .kv = &cs->kv[s],
                                 .scratch = &scratch[nb], .scratch_base = i, .logits_from = 0};
            want[nb] = cs->full_top1[s][i];
            if (++nb < EVAL_BATCH && !(s == cs->n_seqs - 1 && i == cs->len[s] - 1))
                continue;
            rc = model_forward(m, fs, seqs, nb, mask, head, logits, err, errlen);
            for (int32_t j = 0; j < nb && rc == 0; j++) {
                const float *row = logits + (size_t)j * width;
                int32_t a;
                conf[p + j] = sampler_top1_prob(row, width, &a);
                int32_t tok = head_tokens ? head_tokens[a] : a;
                match[p + j] = tok == want[j];
            }
            p += nb;
            nb = 0;
        }
    free(pool_k);
    free(pool_v);
    free(logits);
    return rc;
}

/* Replay the adaptive draft exit over one sequence's positions. */
static void replay(const uint8_t *match, const float *conf, int32_t n, const spec_params *sp, const cost_model *cm,
                   double t_draft, double *tokens, double *seconds, int64_t *drafted, int64_t *accepted,
                   int64_t *verifs)
{
    spec_exit ex = {sp->gamma_init, sp->ar_init};
    int32_t kmax = sp->max_draft < cm->max_k ? sp->max_draft : cm->max_k;
    for (int32_t pos = 0; pos < n;) {
        int32_t k = 0;
        while (k < kmax && pos + k < n) {
            k++;
            if (conf[pos + k - 1] < ex.gamma)
                break;
        }
        int32_t acc = 0;
        while (acc < k && match[pos + acc])
            acc++;
        *tokens += acc + 1;
        *seconds += k * t_draft + cm->verify[k];
        *drafted += k;
        *accepted += acc;
        (*verifs)++;
        if (k > 0)
            spec_exit_update(&ex, sp, k, acc);
        pos += acc + 1;
    }
}

/* The objective from drafted positions: match[p], conf[p] over cs's
 * positions, drafts costing t_draft each under cm. */
static void score_drafts(const calib_set *cs, const uint8_t *match, const float *conf, double t_draft,
                         const cost_model *cm, const spec_params *sp, search_score *out)
{
    double tokens = 0, seconds = 0;
    int64_t drafted = 0, accepted = 0, verifs = 0, matches = 0;
    for (int32_t p = 0; p < cs->n_positions; p++)
        matches += match[p];
    for (int32_t s = 0, off = 0; s < cs->n_seqs; off += cs->len[s] - cs->start[s], s++)
        replay(match + off, conf + off, cs->len[s] - cs->start[s], sp, cm, t_draft, &tokens, &seconds,
               &drafted, &accepted, &verifs);
    out->tokens_per_s = tokens / seconds;
    out->speedup = out->tokens_per_s * cm->verify[0];
    out->match_rate = (double)matches / cs->n_positions;
    out->accept_rate = drafted ? (double)accepted / drafted : 0.0;
    out->mean_accepted = verifs ? (double)accepted / verifs : 0.0;
}

/* Seconds of one draft step of ss: base + the kept sublayers. */
static double draft_seconds(const skip_set *ss, double base, const cost_model *cm)
{
    int32_t kept_attn = 0, kept_mlp = 0;
    for (int32_t l = 0; l < ss->n_layers; l++) {
        kept_attn += !ss->attn_skip[l];
        kept_mlp += !ss->mlp_skip[l];
    }
    return base + kept_attn * cm->attn + kept_mlp * cm->mlp;
}

int search_score_set(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss,
                     const qmat *head, const int32_t *head_tokens, const cost_model *cm,
                     const spec_params *sp, search_score *out, char *err, size_t errlen)
{
    uint8_t *match = mallocCheck((size_t)cs->n_positions);
    float *conf = mallocCheck((size_t)cs->n_positions * sizeof(float));
    layer_mask mask;
    skipset_mask(ss, &mask);
    int rc = draft_all(cs, m, fs, &mask, head, head_tokens, match, conf, err, errlen);
    if (rc == 0)
        score_drafts(cs, match, conf, draft_seconds(ss, head ? cm->base_pruned : cm->base, cm), cm, sp, out);
    skipset_mask_free(&mask);
    free(match);
    free(conf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Draft head by token frequency                                             */

typedef struct {
    int64_t count;
    int32_t id;
} tok_count;

static int by_count(const void *a, const void *b)
{
    const tok_count *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return x->id - y->id;   /* BPE ids follow merge order: a frequency prior */
}

void search_head_tokens(const calib_set *cs, const model *m, int32_t n, skip_set *ss)
{
    int32_t V = m->config.vocab_size;
    n = n > V ? V : n;
    n -= n % QMAT_ROWS;
    tok_count *tc = mallocCheck((size_t)V * sizeof(tok_count));
    for (int32_t i = 0; i < V; i++)
        tc[i] = (tok_count){0, i};
    for (int32_t s = 0; s < cs->n_seqs; s++)
        for (int32_t i = 0; i < cs->len[s]; i++)
            tc[cs->tokens[s][i]].count++;
    qsort(tc, (size_t)V, sizeof *tc, by_count);
    free(ss->head_tokens);
    ss->head_tokens = mallocCheck((size_t)n * sizeof(int32_t));
    for (int32_t i = 0; i < n; i++)
        ss->head_tokens[i] = tc[i].id;
    ss->n_head_tokens = n;
    free(tc);
}

/* ------------------------------------------------------------------------ */
/* Search                                                                    */


typedef struct {
    const calib_set *cs;
    const model *m;
    fwd_state *fs;
    const cost_model *cm;
    const spec_params *sp;
    const search_opts *o;
    qmat head;
    const int32_t *head_tokens;
    int32_t L;
    search_entry *cache;
    int32_t n_cache, cap_cache;
    search_entry best;
    double t_start;
    int32_t trials;
    FILE *state;
} search_ctx;

static void set_to_bits(const skip_set *s, char *bits)
{
    for (int32_t l = 0; l < s->n_layers; l++) {
        bits[l] = s->attn_skip[l] ? '1' : '0';
        bits[s->n_layers + l] = s->mlp_skip[l] ? '1' : '0';
    }
    bits[2 * s->n_layers] = '\0';
}

static search_entry *cache_find(search_ctx *x, const char *bits)
{
    for (int32_t i = 0; i < x->n_cache; i++)
        if (!strcmp(x->cache[i].bits, bits))
            return &x->cache[i];
    return NULL;
}

static void cache_add(search_ctx *x, const char *bits, const search_score *sc)
{
    if (x->n_cache == x->cap_cache) {
        x->cap_cache = x->cap_cache ? 2 * x->cap_cache : 256;
        x->cache = reallocCheck(x->cache, (size_t)x->cap_cache * sizeof *x->cache);
    }
    search_entry *e = &x->cache[x->n_cache++];
    snprintf(e->bits, sizeof e->bits, "%s", bits);
    e->sc = *sc;
    if (sc->tokens_per_s > x->best.sc.tokens_per_s)
        x->best = *e;
}

static void progress(search_ctx *x, const char *phase)
{
    if (x->o->quiet)
        return;
    double el = util_now() - x->t_start, left = x->o->budget_seconds - el;
    fprintf(stderr, "\rsearch [%s] trials %d  best %.1f tok/s est (%.2fx, match %.2f)  %.0fs elapsed, %.0fs left   ",
            phase, x->trials, x->best.sc.tokens_per_s, x->best.sc.speedup, x->best.sc.match_rate, el,
            left > 0 ? left : 0);
    fflush(stderr);
}

/* Score a bit string, through the cache. Returns NULL on error. */
static const search_score *evaluate(search_ctx *x, const char *bits, const char *phase, char *err, size_t errlen)
{
    search_entry *e = cache_find(x, bits);
    if (e)
        return &e->sc;
    skip_set s;
    skipset_init(&s, x->L);
    search_bits_to_set(bits, &s);
    search_score sc;
    int rc = search_score_set(x->cs, x->m, x->fs, &s, x->head.rows ? &x->head : NULL, x->head_tokens, x->cm,
                              x->sp, &sc, err, errlen);
    skipset_free(&s);
    if (rc != 0)
        return NULL;
    x->trials++;
    cache_add(x, bits, &sc);
    if (x->state)
        search_state_write(x->state, &x->cache[x->n_cache - 1]);
    progress(x, phase);
    return &x->cache[x->n_cache - 1].sc;
}

static int time_left(const search_ctx *x)
{
    return util_now() - x->t_start < x->o->budget_seconds;
}

int search_state_read(const char *path, int32_t n_layers, search_entry **out)
{
    *out = NULL;
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return 0;
    search_entry e, *rows = NULL;
    int n = 0, cap = 0;
    char line[2 * SEARCH_MAX_LAYERS + 256];
    while (fgets(line, sizeof line, f)) {
        char bits[2 * SEARCH_MAX_LAYERS + 2];
        search_score *sc = &e.sc;
        if (sscanf(line, "%513s %lf %lf %lf %lf %lf", bits, &sc->tokens_per_s, &sc->speedup, &sc->match_rate,
                   &sc->accept_rate, &sc->mean_accepted) != 6 || (int32_t)strlen(bits) != 2 * n_layers ||
            strspn(bits, "01") != strlen(bits))
            continue;   /* a torn last line, or another model's rows */
        snprintf(e.bits, sizeof e.bits, "%s", bits);
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            rows = reallocCheck(rows, (size_t)cap * sizeof *rows);
        }
        rows[n++] = e;
    }
    fclose(f);
    *out = rows;
    return n;
}

void search_state_write(FILE *f, const search_entry *e)
{
    fprintf(f, "%s %.6f %.6f %.6f %.6f %.6f\n", e->bits, e->sc.tokens_per_s, e->sc.speedup, e->sc.match_rate,
            e->sc.accept_rate, e->sc.mean_accepted);
    fflush(f);
}

void search_bits_to_set(const char *bits, skip_set *s)
{
    for (int32_t l = 0; l < s->n_layers; l++) {
        s->attn_skip[l] = bits[l] == '1';
        s->mlp_skip[l] = bits[s->n_layers + l] == '1';
    }
}

/* Reload the checkpoint's evaluated sets into the cache. */
static void resume(search_ctx *x)
{
    search_entry *rows;
    int n = search_state_read(x->o->state_path, x->L, &rows), added = 0;
    for (int i = 0; i < n; i++)
        if (!cache_find(x, rows[i].bits)) {
            cache_add(x, rows[i].bits, &rows[i].sc);
            added++;
        }
    free(rows);
    if (added && !x->o->quiet)
        fprintf(stderr, "search: resumed %d evaluated sets from %s\n", added, x->o->state_path);
}

typedef struct {
    int32_t idx;
    double tps;
} sub_rank;

static int by_tps_desc(const void *a, const void *b)
{
    const sub_rank *x = a, *y = b;
    return (x->tps < y->tps) - (x->tps > y->tps);
}

/* Phases 1 and 2: sensitivity of each sublayer alone, then the best prefix
 * of the least-harmful-first order. rank receives the order. */
static int sensitivity_and_prefix(search_ctx *x, sub_rank *rank, double *alone_match, char *err, size_t errlen)
{
    size_t n = (size_t)(2 * x->L);
    if (n > 512)
        return util_err(err, errlen, "too many layers");
    char bits[2 * SEARCH_MAX_LAYERS + 1];
    for (size_t i = 0; i < n; i++) {
        memset(bits, '0', n);
        bits[n] = '\0';
        bits[i] = '1';
        const search_score *sc = evaluate(x, bits, "sensitivity", err, errlen);
        if (!sc)
            return -1;
        rank[i] = (sub_rank){(int32_t)i, sc->tokens_per_s};
        alone_match[i] = sc->match_rate;
    }
    qsort(rank, n, sizeof *rank, by_tps_desc);
    memset(bits, '0', n);
    bits[n] = '\0';
    double prev_match = 1.0;
    for (size_t i = 0; i < n && time_left(x) && prev_match > 0.2; i++) {
        bits[rank[i].idx] = '1';
        const search_score *sc = evaluate(x, bits, "prefix", err, errlen);
        if (!sc)
            return -1;
        prev_match = sc->match_rate;
    }
    return 0;
}

/* Phase 3: local search around the best set until the budget ends. */
static int local_search(search_ctx *x, const sub_rank *rank, char *err, size_t errlen)
{
    int32_t n = 2 * x->L;
    uint64_t rng = x->o->seed * 0x9E3779B97F4A7C15ull + 1;
    char bits[2 * SEARCH_MAX_LAYERS + 1];
    int32_t stale = 0;
    while (time_left(x) && stale < 40 * n) {
        snprintf(bits, sizeof bits, "%s", x->best.bits);
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        /* bias towards harmless sublayers: draw a rank index from a skewed distribution */
        double u = (double)(rng >> 11) / 9007199254740992.0;
        int32_t a = rank[(int32_t)(u * u * n)].idx;
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        int32_t b = (int32_t)((rng >> 11) % (uint64_t)n);
        bits[a] = bits[a] == '1' ? '0' : '1';
        if ((rng & 1) && bits[b] != bits[a] && b != a)   /* a swap: flip a second one the other way */
            bits[b] = bits[b] == '1' ? '0' : '1';
        double before = x->best.sc.tokens_per_s;
        int32_t t0 = x->trials;
        if (!evaluate(x, bits, "local", err, errlen))
            return -1;
        stale = x->best.sc.tokens_per_s > before ? 0 : stale + (x->trials > t0 ? 1 : 0) + 1;
    }
    return 0;
}

/* Baseline strategy for comparisons: uniformly random sets, each with a
 * random share (0..60%) of sublayers skipped, until the budget ends. */
static int random_search(search_ctx *x, char *err, size_t errlen)
{
    int32_t n = 2 * x->L;
    uint64_t rng = x->o->seed * 0x9E3779B97F4A7C15ull + 7;
    char bits[2 * SEARCH_MAX_LAYERS + 1];
    while (time_left(x)) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        double share = 0.6 * (double)(rng >> 11) / 9007199254740992.0;
        for (int32_t i = 0; i < n; i++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            bits[i] = (double)(rng >> 11) / 9007199254740992.0 < share ? '1' : '0';
        }
        bits[n] = '\0';
        if (!evaluate(x, bits, "random", err, errlen))
            return -1;
    }
    return 0;
}

static int by_score_desc(const void *a, const void *b)
{
    const search_entry *x = a, *y = b;
    return (x->sc.tokens_per_s < y->sc.tokens_per_s) - (x->sc.tokens_per_s > y->sc.tokens_per_s);
}

/* Per-sublayer table: match rate when skipped alone, frequency in the top
 * 10 sets found. */
static char *make_report(search_ctx *x, const double *alone_match, double full_match)
{
    int32_t n = 2 * x->L, top = x->n_cache < 10 ? x->n_cache : 10;
    qsort(x->cache, (size_t)x->n_cache, sizeof *x->cache, by_score_desc);
    size_t cap = 256 + (size_t)n * 96, len = 0;
    char *out = mallocCheck(cap);
    len += (size_t)snprintf(out + len, cap - len, "{\"n_layers\": %d, \"full_match\": %.4f, \"top_sets\": %d, \"sublayers\": [",
                            x->L, full_match, top);
    for (int32_t i = 0; i < n; i++) {
        int32_t freq = 0;
        for (int32_t t = 0; t < top; t++)
            freq += x->cache[t].bits[i] == '1';
        len += (size_t)snprintf(out + len, cap - len,
                                "%s{\"kind\": \"%s\", \"layer\": %d, \"match_alone\": %.4f, \"in_top\": %.2f}",
                                i ? ", " : "", i < x->L ? "attn" : "mlp", i % x->L, alone_match[i],
                                top ? (double)freq / top : 0.0);
    }
    snprintf(out + len, cap - len, "]}");
    return out;
}

int search_run(const calib_set *cs, const model *m, fwd_state *fs, const cost_model *cm,
               const spec_params *sp, const search_opts *o, skip_set *best, search_score *score,
               char **report_json, char *err, size_t errlen)
{
    search_ctx x = {.cs = cs, .m = m, .fs = fs, .cm = cm, .sp = sp, .o = o, .L = m->config.n_layers};
    if (x.L > SEARCH_MAX_LAYERS || x.L < 1)
        return util_err(err, errlen, "search supports 1 to %d layers", SEARCH_MAX_LAYERS);
    size_t n = (size_t)(2 * x.L);
    int rc = -1;
    skipset_init(best, x.L);
    if (o->head_size > 0) {
        search_head_tokens(cs, m, o->head_size, best);
        if (qmat_gather(&m->w.output, best->head_tokens, best->n_head_tokens, &x.head) != 0)
            return util_err(err, errlen, "cannot build the draft head");
        x.head_tokens = best->head_tokens;
    }
    x.t_start = util_now();
    resume(&x);
    x.state = o->state_path ? fopen(o->state_path, "a") : NULL;
    sub_rank *rank = mallocCheck(n * sizeof *rank);
    double *alone = callocCheck(n, sizeof(double));
    char bits[2 * SEARCH_MAX_LAYERS + 1];
    memset(bits, '0', n);
    bits[n] = '\0';
    const search_score *full = evaluate(&x, bits, "baseline", err, errlen);
    if (!full)
        goto out;
    double full_match = full->match_rate;
    if (o->seed_set) {
        set_to_bits(o->seed_set, bits);
        if (!evaluate(&x, bits, "seed", err, errlen))
            goto out;
    }
    if (o->random_only ? random_search(&x, err, errlen) != 0
                       : sensitivity_and_prefix(&x, rank, alone, err, errlen) != 0 || local_search(&x, rank, err, errlen) != 0)
        goto out;
    if (!o->quiet)
        fprintf(stderr, "\n");
    search_bits_to_set(x.best.bits, best);
    *score = x.best.sc;
    if (report_json)
        *report_json = make_report(&x, alone, full_match);
    rc = 0;
out:
    if (x.state)
        fclose(x.state);
    if (x.head.rows)
        qmat_free_owned(&x.head);
    free(rank);
    free(alone);
    free(x.cache);
    return rc;
}

void skipset_transfer(const skip_set *src, int32_t n_layers, skip_set *dst)
{
    skipset_init(dst, n_layers);
    for (int32_t l = 0; l < src->n_layers; l++) {
        double depth = src->n_layers > 1 ? (double)l / (src->n_layers - 1) : 0.0;
        int32_t t = (int32_t)lround(depth * (n_layers - 1));
        dst->attn_skip[t] |= src->attn_skip[l];
        dst->mlp_skip[t] |= src->mlp_skip[l];
    }
}

/* ------------------------------------------------------------------------ */
/* Tuning: draft head size x exit threshold                                  */

int cost_measure_heads(const model *m, const qmat *heads, int32_t n, int reps, double *out, char *err,
                       size_t errlen)
{
    const model_config *c = &m->config;
    assert(n >= 1 && n <= SEARCH_TUNE_MAX);
    reps = reps > 64 ? 64 : reps < 1 ? 1 : reps;
    kv_cache kv;
    fwd_state fs;
    if (kv_init(&kv, c, 128, err, errlen) != 0)
        return -1;
    fwd_state_init(&fs, c, SPEC_MAX_DRAFT + 2, 128);
    kv.len = 64;
    float *logits = mallocCheck((size_t)(SPEC_MAX_DRAFT + 2) * (c->vocab_size + QMAT_ROWS) * sizeof(float));
    uint8_t *off = callocCheck((size_t)c->n_layers, 1);
    layer_mask none = {off, off};
    double *t = mallocCheck((size_t)n * reps * sizeof(double));   /* (n, reps) */
    for (int w = 0; w < 3; w++)   /* warm-up */
        time_once(m, &fs, &kv, 1, &none, NULL, logits);
    for (int r = 0; r < reps; r++)
        for (int32_t j = 0; j < n; j++) {
            int32_t i = (j + r) % n;   /* each round starts one further: no head always follows another */
            t[(size_t)i * reps + r] = time_once(m, &fs, &kv, 1, &none, heads[i].rows ? &heads[i] : NULL, logits);
        }
    for (int32_t i = 0; i < n; i++) {   /* the fastest round: other processes only ever add time */
        out[i] = t[(size_t)i * reps];
        for (int r = 1; r < reps; r++)
            out[i] = fmin(out[i], t[(size_t)i * reps + r]);
    }
    free(t);
    free(off);
    free(logits);
    fwd_state_free(&fs);
    kv_free(&kv);
    return 0;
}

/* The candidate head sizes as they can be built: multiples of QMAT_ROWS
 * below the vocabulary, the full head (0) for anything at or above it,
 * each size once, in the order given. Returns their count. */
static int32_t tune_head_sizes(const int32_t *in, int32_t n, int32_t vocab, int32_t *out)
{
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t h = in[i] >= vocab - vocab % QMAT_ROWS ? 0 : in[i] - in[i] % QMAT_ROWS;
        if (in[i] > 0 && h == 0 && in[i] < vocab)
            continue;   /* under one row group */
        int dup = 0;
        for (int32_t j = 0; j < k; j++)
            dup |= out[j] == h;
        if (!dup && k < SEARCH_TUNE_MAX)
            out[k++] = h;
    }
    return k;
}

void calib_view(const calib_set *cs, const int32_t *seqs, int32_t n, calib_set *v)
{
    memset(v, 0, sizeof *v);
    v->n_seqs = n;
    v->len = mallocCheck((size_t)(n ? n : 1) * sizeof(int32_t));
    v->start = mallocCheck((size_t)(n ? n : 1) * sizeof(int32_t));
    v->tokens = mallocCheck((size_t)(n ? n : 1) * sizeof(int32_t *));
    v->full_top1 = mallocCheck((size_t)(n ? n : 1) * sizeof(int32_t *));
    v->kv = mallocCheck((size_t)(n ? n : 1) * sizeof(kv_cache));
    for (int32_t i = 0; i < n; i++) {
        int32_t s = seqs[i];
        assert(s >= 0 && s < cs->n_seqs);
        v->len[i] = cs->len[s];
        v->start[i] = cs->start[s];
        v->tokens[i] = cs->tokens[s];
        v->full_top1[i] = cs->full_top1[s];
        v->kv[i] = cs->kv[s];   /* the same buffers: drafts only read the verified KV */
        v->n_positions += cs->len[s] - cs->start[s];
    }
}

void calib_view_free(calib_set *v)
{
    free(v->len);
    free(v->start);
    free(v->tokens);
    free(v->full_top1);
    free(v->kv);
    memset(v, 0, sizeof *v);
}

/* The two folds of cs (sequences of even / odd index) and both in that
 * order. */
static void tune_folds(const calib_set *cs, calib_set fold[2], calib_set *both)
{
    int32_t *idx = mallocCheck((size_t)(cs->n_seqs ? cs->n_seqs : 1) * sizeof(int32_t)), n = 0;
    for (int f = 0; f < 2; f++) {
        int32_t n0 = n;
        for (int32_t s = f; s < cs->n_seqs; s += 2)
            idx[n++] = s;
        calib_view(cs, idx + n0, n - n0, &fold[f]);
    }
    calib_view(cs, idx, n, both);
    free(idx);
}

int search_tune(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss, const cost_model *cm,
                const spec_params *sp, const tune_opts *o, tune_point *grid, int32_t *n_grid, int32_t *best,
                char *err, size_t errlen)
{
    assert(o->n_heads >= 1 && o->n_heads <= SEARCH_TUNE_MAX && o->n_gammas >= 1 && o->n_gammas <= SEARCH_TUNE_MAX);
    assert(cs->n_seqs >= 2);
    int32_t sizes[SEARCH_TUNE_MAX], nh = tune_head_sizes(o->head_sizes, o->n_heads, m->config.vocab_size, sizes);
    int32_t max_size = 0;
    for (int32_t i = 0; i < nh; i++)
        max_size = sizes[i] > max_size ? sizes[i] : max_size;
    calib_set fold[2], both;
    tune_folds(cs, fold, &both);
    /* ranked[f]: the token ranking of fold f's text, for drafting the other
     * fold: a head is never scored on the text it was counted on (counted and
     * scored on one text, a 1024-token head covers nearly every token of a
     * thousand-position calibration and looks perfect) */
    skip_set ranked[2];
    for (int f = 0; f < 2; f++) {
        skipset_init(&ranked[f], ss->n_layers);
        if (max_size > 0)
            search_head_tokens(&fold[f], m, max_size, &ranked[f]);
    }
    qmat heads[SEARCH_TUNE_MAX];         /* for timing (rows matter, not which): heads[i].rows == 0: the full head */
    memset(heads, 0, sizeof heads);
    int rc = 0;
    for (int32_t i = 0; i < nh && rc == 0; i++)
        if (sizes[i] > 0 && qmat_gather(&m->w.output, ranked[0].head_tokens, sizes[i], &heads[i]) != 0)
            rc = util_err(err, errlen, "cannot build a draft head of %d tokens", sizes[i]);
    /* one more column: the full head, timed in the same rounds, so each head's
     * base is cm->base scaled by its cost relative to the full head's here and
     * now (a ratio: a machine busier than when cm was measured moves both) */
    double base[SEARCH_TUNE_MAX + 1];
    qmat timed[SEARCH_TUNE_MAX + 1];
    memcpy(timed, heads, sizeof heads);
    memset(&timed[nh], 0, sizeof timed[nh]);
    if (rc == 0)
        rc = cost_measure_heads(m, timed, nh + 1, o->reps, base, err, errlen);
    uint8_t *match = mallocCheck((size_t)both.n_positions);           /* (n_positions), both's order */
    float *conf = mallocCheck((size_t)both.n_positions * sizeof(float));
    layer_mask mask;
    skipset_mask(ss, &mask);
    int32_t n = 0;
    *best = -1;
    for (int32_t i = 0; i < nh && rc == 0; i++) {
        if (sizes[i] == 0) {
            rc = draft_all(&both, m, fs, &mask, NULL, NULL, match, conf, err, errlen);
        } else {
            for (int f = 0, off = 0; f < 2 && rc == 0; off += fold[f].n_positions, f++) {
                const skip_set *r = &ranked[1 - f];   /* counted on the other fold */
                qmat h;
                if (qmat_gather(&m->w.output, r->head_tokens, sizes[i], &h) != 0) {
                    rc = util_err(err, errlen, "cannot build a draft head of %d tokens", sizes[i]);
                    break;
                }
                rc = draft_all(&fold[f], m, fs, &mask, &h, r->head_tokens, match + off, conf + off, err, errlen);
                qmat_free_owned(&h);
            }
        }
        cost_model ci = *cm;
        ci.base_pruned = sizes[i] ? cm->base * base[i] / fmax(base[nh], 1e-9) : cm->base;
        for (int32_t j = 0; j < o->n_gammas && rc == 0; j++) {
            spec_params pj = *sp;
            pj.gamma_init = o->gammas[j];
            tune_point *g = &grid[n];
            *g = (tune_point){.head_size = sizes[i], .gamma_init = o->gammas[j], .draft_base = ci.base_pruned};
            score_drafts(&both, match, conf, draft_seconds(ss, ci.base_pruned, &ci), &ci, &pj, &g->sc);
            if (*best < 0 || g->sc.tokens_per_s > grid[*best].sc.tokens_per_s)
                *best = n;
            n++;
        }
    }
    *n_grid = n;
    skipset_mask_free(&mask);
    free(match);
    free(conf);
    for (int32_t i = 0; i < nh; i++)
        if (heads[i].rows)
            qmat_free_owned(&heads[i]);
    for (int f = 0; f < 2; f++) {
        skipset_free(&ranked[f]);
        calib_view_free(&fold[f]);
    }
    calib_view_free(&both);
    return rc;
}

int search_report_print(const char *path, FILE *out, char *err, size_t errlen)
{
    size_t len;
    char *text = util_read_file(path, &len, NULL, 0);
    cJSON *r = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    const cJSON *subs = cJSON_GetObjectItemCaseSensitive(r, "sublayers");
    int L = cJSON_GetArraySize(subs) / 2;
    int ok = cJSON_IsArray(subs);
    for (int i = 0; ok && i < 2 * L; i++) {
        const cJSON *e = cJSON_GetArrayItem(subs, i);
        ok = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(e, "match_alone")) &&
             cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(e, "in_top"));
    }
    if (!ok) {
        cJSON_Delete(r);
        return util_err(err, errlen, "no report at %s (run the search first)", path);
    }
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(r, "full_match");
    fprintf(out, "Per-sublayer skippability (draft top-1 match with the full model when only\n"
            "that sublayer is skipped; nothing skipped = %.3f), and how often each\n"
            "sublayer is skipped in the 10 best sets found.\n\n", cJSON_IsNumber(fm) ? fm->valuedouble : 1.0);
    fprintf(out, "layer   attn match  attn in-best   mlp match  mlp in-best\n");
    for (int l = 0; l < L; l++) {
        const cJSON *a = cJSON_GetArrayItem(subs, l), *f = cJSON_GetArrayItem(subs, L + l);
        fprintf(out, "%5d   %10.3f  %12.2f  %10.3f  %11.2f\n", l,
                cJSON_GetObjectItemCaseSensitive(a, "match_alone")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(a, "in_top")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(f, "match_alone")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(f, "in_top")->valuedouble);
    }
    cJSON_Delete(r);
    return 0;
}

int search_base_build(search_base *b, const model *m, fwd_state *fs, int32_t **prompts, const int32_t *prompt_len,
                      int32_t n, int32_t n_new, int32_t head_size, FILE *log, char *err, size_t errlen)
{
    memset(b, 0, sizeof *b);
    double t0 = util_now();
    char e[384];
    if (calib_build(&b->cs, m, fs, prompts, prompt_len, n, n_new, e, sizeof e) != 0)
        return util_err(err, errlen, "calibration: %s", e);
    if (log)
        fprintf(log, "search: calibration done (%.0f s)\n", util_now() - t0);
    skipset_init(&b->head_only, m->config.n_layers);
    if (head_size > 0) {
        search_head_tokens(&b->cs, m, head_size, &b->head_only);
        if (qmat_gather(&m->w.output, b->head_only.head_tokens, b->head_only.n_head_tokens, &b->head) != 0) {
            search_base_free(b);
            return util_err(err, errlen, "cannot build the pruned head of %d tokens", head_size);
        }
    }
    if (cost_measure(&b->cm, m, head_size > 0 ? &b->head : NULL, 12, 15, err, errlen) != 0) {
        search_base_free(b);
        return -1;
    }
    const cost_model *cm = &b->cm;
    if (log)
        fprintf(log, "search: cost model (ms, at %.0f s): full step %.2f; draft: base %.2f (pruned head %.2f) + %.3f "
                "per attention + %.3f per MLP; verify k+1 tokens: k=1 %.2f, k=4 %.2f, k=8 %.2f, k=12 %.2f\n",
                util_now() - t0, cm->verify[0] * 1e3, cm->base * 1e3, cm->base_pruned * 1e3, cm->attn * 1e3,
                cm->mlp * 1e3, cm->verify[1] * 1e3, cm->verify[4] * 1e3, cm->verify[8] * 1e3, cm->verify[12] * 1e3);
    return 0;
}

void search_base_free(search_base *b)
{
    if (b->head.rows)
        qmat_free_owned(&b->head);
    if (b->head_only.attn_skip)
        skipset_free(&b->head_only);
    calib_free(&b->cs);
    memset(b, 0, sizeof *b);
}
