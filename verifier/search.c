/*
 * search.c - `selfspec search`: find the skip set that maximizes
 * self-speculative tokens/s for a model on this machine, validate the
 * objective against real decoding, and write the config.
 *
 * Steps: calibration text (the model's own continuations of the prompts),
 * a measured cost model, optionally a transferred seed set, the search
 * (search.h), then validation: rank correlation between estimated and
 * measured tokens/s over a sample of evaluated sets, and a measured
 * plain-vs-self-spec comparison of the final choice.
 *
 * The tune step (after the search, or alone on an existing config with
 * --tune-only) then scores draft head sizes x exit thresholds for the
 * chosen set (search_tune), keeps the best, confirms it with real decoding
 * and records every constant it chose, and the grid, in the config.
 */
#include <assert.h>
#include <getopt.h>
#include <unistd.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include <cjson/cJSON.h>
#include <omp.h>

#include "cli.h"
#include "commands.h"
#include "decode/generate.h"
#include "engine/engine.h"
#include "model/model.h"
#include "text/chat.h"
#include "tune/search.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "util/util.h"

#define MAX_PROMPTS 256

typedef struct {
    const char *model_path;
    const char *prompts_path;
    const char *out_path;
    const char *seed_config;
    int chat;
    int32_t n_new;
    double budget;
    int32_t head_size;
    uint64_t seed;
    int validate;
    int threads;
    int report_only;
    int random_only;
    int transfer_only;
    int tune_only;             /* --tune-only: tune an existing config (--seed-config) */
    int no_tune;               /* --no-tune: the search's head and the default exit */
    int prompts_given, n_new_given;
    int32_t tune_heads[SEARCH_TUNE_MAX];
    int32_t n_tune_heads;
    float tune_gammas[SEARCH_TUNE_MAX];
    int32_t n_tune_gammas;
} search_cli;

static const int32_t default_tune_heads[] = {0, 1024, 2048, 4096, 8192, 16384, 32768};
static const float default_tune_gammas[] = {0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f};

static void usage_search(FILE *f)
{
    fprintf(f,
"usage: selfspec search [options]\n"
"\n"
"Find the attention/MLP sublayers the draft should skip to maximize\n"
"self-speculative tokens/s for a model on this machine, and write a config\n"
"that `selfspec generate` then uses by default. Prints progress (trials,\n"
"best so far, time left); an interrupted search resumes from OUT.state.\n"
"\n"
"  -m, --model FILE         GGUF model (default: the default model)\n"
"  -p, --prompts FILE       calibration prompts, JSONL: {\"prompt\": \"...\"} per line\n"
"                           (default configs/prompts/calibration.jsonl)\n"
"  -o, --out FILE           config to write (default configs/<model>.json)\n"
"      --no-chat            do not wrap prompts in the chat template\n"
"  -n, --new-tokens N       calibration continuation per prompt (default 64)\n"
"      --budget SECONDS     time for the search phase (default 420)\n"
"      --head-size N        pruned draft head: the N most frequent tokens\n"
"                           (multiple of 16; 0 = full head; default 8192)\n"
"      --seed-config FILE   start from a config of another model, mapped by\n"
"                           normalized depth; reports how good it is as is\n"
"      --transfer-only      with --seed-config and -o: write the mapped set as a\n"
"                           config and stop (no calibration, no search)\n"
"      --tune-only          with --seed-config (this model's own config) and -o:\n"
"                           no search; re-run the config's calibration (its\n"
"                           \"calibration\" member unless -p/-n are given) and the\n"
"                           tune step on its skip set\n"
"      --no-tune            skip the tune step: the --head-size head, default exit\n"
"      --tune-heads LIST    tune step's draft head sizes, comma-separated (0 = full\n"
"                           head; default 0,1024,2048,4096,8192,16384,32768)\n"
"      --tune-gammas LIST   tune step's exit thresholds gamma_init in [0, 1]\n"
"                           (default 0.4,0.5,0.6,0.7,0.8,0.9)\n"
"      --validate N         measure real decoding for N evaluated sets and\n"
"                           report the objective's rank correlation (default 6)\n"
"      --seed S             search seed (default 1)\n"
"      --strategy S         search (default) or random: random sets for the same\n"
"                           budget, the baseline the search is compared with\n"
"      --report             print the per-sublayer table of OUT.report.json and exit\n"
"  -t, --threads N          worker threads (default: all cores)\n"
"  -h, --help               this help\n");
}

enum { OPT_NOCHAT = 300, OPT_BUDGET, OPT_HEAD, OPT_SEEDCFG, OPT_VALIDATE, OPT_SEED, OPT_REPORT, OPT_STRATEGY, OPT_TRANSFER,
       OPT_TUNE_ONLY, OPT_NO_TUNE, OPT_TUNE_HEADS, OPT_TUNE_GAMMAS };

/* A comma-separated list of at most SEARCH_TUNE_MAX head sizes (ints,
 * 0..2^24) or thresholds (floats in [0, 1]) into ints or floats. */
static int parse_list(const char *arg, const char *what, int32_t *ints, float *floats, int32_t *n)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", arg);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        long v;
        float f;
        if (*n == SEARCH_TUNE_MAX) {
            fprintf(stderr, "selfspec: %s takes at most %d values\n", what, SEARCH_TUNE_MAX);
            return -1;
        }
        if (ints) {
            if (cli_parse_int(t, what, 0, 1 << 24, &v)) return -1;
            ints[(*n)++] = (int32_t)v;
        } else {
            if (cli_parse_float(t, what, &f)) return -1;
            if (!(f >= 0.0f && f <= 1.0f)) {
                fprintf(stderr, "selfspec: %s values must be in [0, 1], got %g\n", what, f);
                return -1;
            }
            floats[(*n)++] = f;
        }
    }
    if (*n == 0) {
        fprintf(stderr, "selfspec: %s needs at least one value\n", what);
        return -1;
    }
    return 0;
}

static int parse_search(int argc, char **argv, search_cli *o)
{
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'}, {"prompts", required_argument, 0, 'p'},
        {"out", required_argument, 0, 'o'}, {"no-chat", no_argument, 0, OPT_NOCHAT},
        {"new-tokens", required_argument, 0, 'n'}, {"budget", required_argument, 0, OPT_BUDGET},
        {"head-size", required_argument, 0, OPT_HEAD}, {"seed-config", required_argument, 0, OPT_SEEDCFG},
        {"validate", required_argument, 0, OPT_VALIDATE}, {"seed", required_argument, 0, OPT_SEED},
        {"report", no_argument, 0, OPT_REPORT}, {"strategy", required_argument, 0, OPT_STRATEGY}, {"threads", required_argument, 0, 't'},
        {"transfer-only", no_argument, 0, OPT_TRANSFER}, {"tune-only", no_argument, 0, OPT_TUNE_ONLY},
        {"no-tune", no_argument, 0, OPT_NO_TUNE}, {"tune-heads", required_argument, 0, OPT_TUNE_HEADS},
        {"tune-gammas", required_argument, 0, OPT_TUNE_GAMMAS},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    long v;
    float f;
    int c;
    *o = (search_cli){.chat = 1, .n_new = 64, .budget = 420, .head_size = 8192, .seed = 1, .validate = 6};
    o->n_tune_heads = (int32_t)(sizeof default_tune_heads / sizeof default_tune_heads[0]);
    memcpy(o->tune_heads, default_tune_heads, sizeof default_tune_heads);
    o->n_tune_gammas = (int32_t)(sizeof default_tune_gammas / sizeof default_tune_gammas[0]);
    memcpy(o->tune_gammas, default_tune_gammas, sizeof default_tune_gammas);
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:o:n:t:h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompts_path = optarg; o->prompts_given = 1; break;
        case 'o': o->out_path = optarg; break;
        case OPT_NOCHAT: o->chat = 0; break;
        case 'n':
            if (cli_parse_int(optarg, "--new-tokens", 8, 4096, &v)) return -1;
            o->n_new = (int32_t)v;
            o->n_new_given = 1;
            break;
        case OPT_BUDGET:
            if (cli_parse_float(optarg, "--budget", &f) || f < 0) return -1;
            o->budget = f;
            break;
        case OPT_HEAD:
            if (cli_parse_int(optarg, "--head-size", 0, 1 << 24, &v)) return -1;
            if (v % 16) {
                fprintf(stderr, "selfspec: --head-size must be a multiple of 16\n");
                return -1;
            }
            o->head_size = (int32_t)v;
            break;
        case OPT_SEEDCFG: o->seed_config = optarg; break;
        case OPT_VALIDATE: if (cli_parse_int(optarg, "--validate", 0, 100, &v)) return -1; o->validate = (int)v; break;
        case OPT_SEED: if (cli_parse_int(optarg, "--seed", 0, LONG_MAX, &v)) return -1; o->seed = (uint64_t)v; break;
        case OPT_REPORT: o->report_only = 1; break;
        case OPT_TRANSFER: o->transfer_only = 1; break;
        case OPT_TUNE_ONLY: o->tune_only = 1; break;
        case OPT_NO_TUNE: o->no_tune = 1; break;
        case OPT_TUNE_HEADS:
            if (parse_list(optarg, "--tune-heads", o->tune_heads, NULL, &o->n_tune_heads)) return -1;
            break;
        case OPT_TUNE_GAMMAS:
            if (parse_list(optarg, "--tune-gammas", NULL, o->tune_gammas, &o->n_tune_gammas)) return -1;
            break;
        case OPT_STRATEGY:
            if (strcmp(optarg, "search") && strcmp(optarg, "random")) {
                fprintf(stderr, "selfspec: --strategy must be 'search' or 'random'\n");
                return -1;
            }
            o->random_only = !strcmp(optarg, "random");
            break;
        case 't': if (cli_parse_int(optarg, "--threads", 1, 1024, &v)) return -1; o->threads = (int)v; break;
        case 'h': usage_search(stdout); exit(0);
        default: usage_search(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "selfspec: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (o->transfer_only && (!o->seed_config || !o->out_path)) {
        fprintf(stderr, "selfspec: --transfer-only needs --seed-config and -o\n");
        return -1;
    }
    if (o->tune_only && (!o->seed_config || !o->out_path || o->transfer_only || o->no_tune)) {
        fprintf(stderr, "selfspec: --tune-only needs --seed-config (this model's config) and -o, and goes with "
                "neither --transfer-only nor --no-tune\n");
        return -1;
    }
    return 0;
}

/* --transfer-only: the seed config's skip set mapped onto m by normalized
 * depth (skipset_transfer), written as a config of its own, nothing
 * measured. The draft head is a per-model vocabulary, not part of the
 * pattern: it is taken from m's own config in dir when there is one. */
static int write_transfer(const search_cli *o, const model *m, const char *dir)
{
    char err[256], own[1024];
    skip_set src, dst, mine = {0};
    if (skipset_load(&src, o->seed_config, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: --seed-config: %s\n", err);
        return 1;
    }
    skipset_transfer(&src, m->config.n_layers, &dst);
    if (skipset_find(dir, &m->config, own, sizeof own) == 0 && skipset_load(&mine, own, &m->config, err, sizeof err) == 0 &&
        mine.head_tokens) {
        dst.head_tokens = mine.head_tokens;
        dst.n_head_tokens = mine.n_head_tokens;
        mine.head_tokens = NULL;
    }
    skipset_free(&mine);
    cJSON *root = cJSON_CreateObject();
    cJSON *t = cJSON_AddObjectToObject(root, "transferred");
    const char *rel = strstr(o->seed_config, "configs/");
    cJSON_AddStringToObject(t, "from", rel ? rel : o->seed_config);
    cJSON_AddNumberToObject(t, "from_layers", src.n_layers);
    cJSON_AddStringToObject(t, "mapping", "layer l of L -> round(l / (L - 1) * (L' - 1)), no search");
    char *extra = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    int rc = skipset_save(&dst, o->out_path, &m->config, o->head_size, extra, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "selfspec: %s\n", err);
    else
        fprintf(stderr, "search: %s (%d layers, %d skipped) -> %s (%d layers, %d skipped)\n", o->seed_config,
                src.n_layers, skipset_count(&src), o->out_path, m->config.n_layers, skipset_count(&dst));
    free(extra);
    skipset_free(&src);
    skipset_free(&dst);
    return rc != 0;
}

/* Read prompts (JSONL) and tokenize them (through the chat template). */
static int32_t load_prompts(const char *path, const tokenizer *tok, int chat, int32_t **ids, int32_t *lens)
{
    char err[256];
    size_t len;
    char *text = util_read_file(path, &len, err, sizeof err);
    if (!text) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    int32_t n = 0, line_no = 0;
    for (char *line = strtok(text, "\n"); line && n < MAX_PROMPTS; line = strtok(NULL, "\n")) {
        line_no++;
        if (!*line)
            continue;
        cJSON *j = cJSON_Parse(line);
        const cJSON *p = cJSON_IsString(j) ? j : cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (!cJSON_IsString(p)) {
            fprintf(stderr, "selfspec: %s:%d: expected {\"prompt\": \"...\"}\n", path, line_no);
            cJSON_Delete(j);
            continue;
        }
        char *s = chat ? tokenizer_chat_prompt(tok, NULL, p->valuestring, err, sizeof err) : strdup(p->valuestring);
        size_t nid = 0;
        if (s && tokenizer_encode(tok, s, strlen(s), tokenizer_add_bos(tok), chat, &ids[n], &nid, err, sizeof err) == 0 &&
            nid > 0) {
            lens[n++] = (int32_t)nid;
        } else {
            fprintf(stderr, "selfspec: %s:%d: %s\n", path, line_no, s ? err : "chat template failed");
        }
        free(s);
        cJSON_Delete(j);
    }
    free(text);
    if (n == 0)
        fprintf(stderr, "selfspec: no usable prompts in %s\n", path);
    return n ? n : -1;
}

static int null_emit(void *ctx, int32_t token)
{
    (void)ctx;
    (void)token;
    return 0;
}

typedef struct {
    double tps;
    double accept_rate;
} measured;

/* Real decoding of n_cfg draft configurations (ss[c] NULL: plain; sp[c]
 * NULL: the default exit) over the prompts, greedy: per configuration the
 * total new tokens / total decode time. The configurations take turns
 * prompt by prompt, in an order rotated per prompt, so a machine that gets
 * busier or quieter in between moves them all alike. (fs is unused: the
 * engine has its own.) */
static int measure_many(const model *m, fwd_state *fs, kv_cache *kv, int n_cfg, const skip_set *const *ss,
                        const spec_params *const *sp, int32_t **ids, const int32_t *lens, int32_t n, int32_t n_new,
                        measured *out)
{
    char err[256];
    gen_params gp = {.max_tokens = n_new, .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1};
    double secs[8] = {0}, toks[8] = {0}, drafted[8] = {0}, accepted[8] = {0};
    assert(n_cfg >= 1 && n_cfg <= 8);
    for (int32_t i = 0; i < n; i++)
        for (int k = 0; k < n_cfg; k++) {
            int c = (k + i) % n_cfg;   /* each configuration first, second, ... equally often */
            spec_params p;
            spec_params_default(&p);
            if (sp[c])
                p = *sp[c];
            gen_stats st;
            spec_stats sps;
            /* as `generate` decodes: through the engine */
            int rc = engine_generate(m, kv->cap, ss[c], &p, ids[i], lens[i], &gp, null_emit, NULL, &st,
                                     ss[c] ? &sps : NULL, err, sizeof err);
            if (rc != 0) {
                fprintf(stderr, "selfspec: measuring: %s\n", err);
                return -1;
            }
            secs[c] += st.decode_seconds;
            toks[c] += st.generated_tokens - 1;
            if (ss[c]) {
                drafted[c] += (double)sps.drafted;
                accepted[c] += (double)sps.accepted;
            }
        }
    for (int c = 0; c < n_cfg; c++) {
        out[c].tps = toks[c] / secs[c];
        out[c].accept_rate = drafted[c] > 0 ? accepted[c] / drafted[c] : 0;
    }
    return 0;
}

/* One configuration: measure_many of one. */
static int measure(const model *m, fwd_state *fs, kv_cache *kv, const skip_set *ss, const spec_params *sp,
                   int32_t **ids, const int32_t *lens, int32_t n, int32_t n_new, measured *out)
{
    return measure_many(m, fs, kv, 1, &ss, &sp, ids, lens, n, n_new, out);
}

/* A copy of s (its own arrays). */
static void skipset_copy(skip_set *dst, const skip_set *s)
{
    skipset_init(dst, s->n_layers);
    memcpy(dst->attn_skip, s->attn_skip, (size_t)s->n_layers);
    memcpy(dst->mlp_skip, s->mlp_skip, (size_t)s->n_layers);
    if (s->head_tokens) {
        dst->head_tokens = mallocCheck((size_t)s->n_head_tokens * sizeof(int32_t));
        memcpy(dst->head_tokens, s->head_tokens, (size_t)s->n_head_tokens * sizeof(int32_t));
    }
    dst->n_head_tokens = s->n_head_tokens;
    dst->exit = s->exit;
    dst->speedup = s->speedup;
    snprintf(dst->source, sizeof dst->source, "%s", s->source);
}

/* Spearman rank correlation of two arrays of n values. */
static double spearman(const double *a, const double *b, int n)
{
    double ra[128], rb[128];
    for (int i = 0; i < n; i++) {
        ra[i] = rb[i] = 1;
        for (int j = 0; j < n; j++) {
            ra[i] += (a[j] < a[i]) + 0.5 * (j != i && a[j] == a[i]);
            rb[i] += (b[j] < b[i]) + 0.5 * (j != i && b[j] == b[i]);
        }
    }
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        ma += ra[i] / n;
        mb += rb[i] / n;
    }
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0.0;
}

static int by_est(const void *a, const void *b)
{
    const search_entry *x = a, *y = b;
    return (x->sc.tokens_per_s > y->sc.tokens_per_s) - (x->sc.tokens_per_s < y->sc.tokens_per_s);
}

/* Validation: pick n sets spread over the range of estimated tokens/s from
 * the checkpoint, measure each, correlate. */
static double validate_objective(const char *state_path, const model *m, fwd_state *fs, kv_cache *kv,
                                 const skip_set *best, int32_t **ids, const int32_t *lens, int32_t np,
                                 int32_t n_new, int nsets, double *est_out, double *meas_out)
{
    if (nsets < 3)
        return NAN;
    search_entry *rows;
    int n = search_state_read(state_path, m->config.n_layers, &rows);
    if (n < nsets) {
        free(rows);
        return NAN;
    }
    qsort(rows, (size_t)n, sizeof *rows, by_est);
    fprintf(stderr, "search: validating the objective on %d sets (real decoding)...\n", nsets);
    for (int i = 0; i < nsets; i++) {
        const search_entry *r = &rows[(size_t)((double)i * (n - 1) / (nsets - 1))];
        skip_set s;
        skipset_init(&s, m->config.n_layers);
        search_bits_to_set(r->bits, &s);
        if (best->head_tokens) {
            s.head_tokens = mallocCheck((size_t)best->n_head_tokens * sizeof(int32_t));
            memcpy(s.head_tokens, best->head_tokens, (size_t)best->n_head_tokens * sizeof(int32_t));
            s.n_head_tokens = best->n_head_tokens;
        }
        measured me = {0};
        measure(m, fs, kv, &s, NULL, ids, lens, np, n_new, &me);
        est_out[i] = r->sc.tokens_per_s;
        meas_out[i] = me.tps;
        fprintf(stderr, "  set %d: estimated %.1f tok/s, measured %.1f tok/s\n", i + 1, est_out[i], me.tps);
        skipset_free(&s);
    }
    free(rows);
    return spearman(est_out, meas_out, nsets);
}

static void print_report(const char *path)
{
    char err[256];
    size_t len;
    char *text = util_read_file(path, &len, err, sizeof err);
    cJSON *r = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *subs = r ? cJSON_GetObjectItemCaseSensitive(r, "sublayers") : NULL;
    if (!cJSON_IsArray(subs)) {
        fprintf(stderr, "selfspec: no report at %s (run the search first)\n", path);
        cJSON_Delete(r);
        return;
    }
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(r, "full_match");
    printf("Per-sublayer skippability (draft top-1 match with the full model when only\n"
           "that sublayer is skipped; nothing skipped = %.3f), and how often each\n"
           "sublayer is skipped in the 10 best sets found.\n\n", cJSON_IsNumber(fm) ? fm->valuedouble : 1.0);
    printf("layer   attn match  attn in-best   mlp match  mlp in-best\n");
    int L = cJSON_GetArraySize(subs) / 2;
    for (int l = 0; l < L; l++) {
        const cJSON *a = cJSON_GetArrayItem(subs, l), *f = cJSON_GetArrayItem(subs, L + l);
        printf("%5d   %10.3f  %12.2f  %10.3f  %11.2f\n", l,
               cJSON_GetObjectItemCaseSensitive(a, "match_alone")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(a, "in_top")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(f, "match_alone")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(f, "in_top")->valuedouble);
    }
    cJSON_Delete(r);
}

/* ---- the tune step ---- */

typedef struct {
    tune_point grid[SEARCH_TUNE_MAX * SEARCH_TUNE_MAX];
    int32_t n, best;
    int32_t before;            /* the point of the set's head and exit as they were */
    int32_t heads[SEARCH_TUNE_MAX + 1], n_heads;
    float gammas[SEARCH_TUNE_MAX + 1];
    int32_t n_gammas;
    double seconds;
    measured plain, m_before, m_tuned;   /* confirming runs (tps 0: not run) */
} tune_result;

/* Head size as search_tune builds it (0 = full). */
static int32_t norm_head(int32_t h, int32_t vocab)
{
    return h >= vocab - vocab % 16 ? 0 : h - h % 16;
}

/* Score the grid (the CLI's lists plus the set's own head and gamma, so the
 * "before" point is always measured) and print it as a table. */
static int run_tune(const search_cli *o, const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss,
                    int32_t before_head, float before_gamma, const cost_model *cm, const spec_params *sp,
                    tune_result *tr)
{
    char err[256];
    int32_t V = m->config.vocab_size;
    memset(tr, 0, sizeof *tr);
    double t0 = util_now();
    memcpy(tr->heads, o->tune_heads, (size_t)o->n_tune_heads * sizeof(int32_t));
    tr->n_heads = o->n_tune_heads;
    memcpy(tr->gammas, o->tune_gammas, (size_t)o->n_tune_gammas * sizeof(float));
    tr->n_gammas = o->n_tune_gammas;
    int have_h = 0, have_g = 0;
    for (int32_t i = 0; i < tr->n_heads; i++)
        have_h |= norm_head(tr->heads[i], V) == norm_head(before_head, V);
    for (int32_t j = 0; j < tr->n_gammas; j++)
        have_g |= tr->gammas[j] == before_gamma;
    if (!have_h && tr->n_heads < SEARCH_TUNE_MAX)
        tr->heads[tr->n_heads++] = before_head;
    if (!have_g && tr->n_gammas < SEARCH_TUNE_MAX)
        tr->gammas[tr->n_gammas++] = before_gamma;
    if (cs->n_seqs < 2) {
        fprintf(stderr, "selfspec: the tune step needs at least 2 calibration prompts (its heads are counted on one "
                "half and scored on the other); --no-tune skips it\n");
        return -1;
    }
    tune_opts to = {.head_sizes = tr->heads, .n_heads = tr->n_heads, .gammas = tr->gammas,
                    .n_gammas = tr->n_gammas, .reps = 41};
    fprintf(stderr, "search: tune step: %d head sizes x %d exit thresholds for the chosen set...\n", tr->n_heads,
            tr->n_gammas);
    if (search_tune(cs, m, fs, ss, cm, sp, &to, tr->grid, &tr->n, &tr->best, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: tune: %s\n", err);
        return -1;
    }
    tr->before = -1;
    for (int32_t i = 0; i < tr->n; i++)
        if (tr->grid[i].head_size == norm_head(before_head, V) && tr->grid[i].gamma_init == before_gamma)
            tr->before = i;
    tr->seconds = util_now() - t0;
    fprintf(stderr, "search: estimated speedup over plain (rows: draft head, 0 = full %d; columns: gamma_init)\n"
            "  head   base ms", V);
    for (int32_t j = 0; j < tr->n_gammas; j++)
        fprintf(stderr, "  %5.2f", tr->gammas[j]);
    for (int32_t i = 0; i < tr->n; i++) {
        const tune_point *g = &tr->grid[i];
        if (i % tr->n_gammas == 0)
            fprintf(stderr, "\n  %5d  %7.3f ", g->head_size, g->draft_base * 1e3);
        fprintf(stderr, "  %4.3f%s", g->sc.speedup, i == tr->best ? "*" : i == tr->before ? "o" : " ");
    }
    fprintf(stderr, "\n  (* chosen, o before the tune; %.1f s)\n", tr->seconds);
    return 0;
}

/* The chosen point into ss (its head: the first head_size tokens of the
 * calibration's ranking; 0: the full head) and sp (gamma_init), and every
 * exit constant into ss->exit. */
static void apply_tune(const tune_result *tr, const calib_set *cs, const model *m, skip_set *ss, spec_params *sp)
{
    const tune_point *b = &tr->grid[tr->best];
    if (b->head_size > 0) {
        search_head_tokens(cs, m, b->head_size, ss);
    } else {
        free(ss->head_tokens);
        ss->head_tokens = NULL;
        ss->n_head_tokens = 0;
    }
    sp->gamma_init = b->gamma_init;
    spec_params_to_exit(sp, &ss->exit);
}

static cJSON *score_json(const search_score *sc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens_per_s", sc->tokens_per_s);
    cJSON_AddNumberToObject(o, "speedup", sc->speedup);
    cJSON_AddNumberToObject(o, "match_rate", sc->match_rate);
    cJSON_AddNumberToObject(o, "acceptance_rate", sc->accept_rate);
    cJSON_AddNumberToObject(o, "mean_accepted", sc->mean_accepted);
    return o;
}

static cJSON *point_json(const tune_point *g, int full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "head_size", g->head_size);
    cJSON_AddNumberToObject(o, "gamma_init", round(g->gamma_init * 1e4) / 1e4);
    cJSON_AddNumberToObject(o, "draft_base_ms", round(g->draft_base * 1e7) / 1e4);
    cJSON_AddNumberToObject(o, "speedup", round(g->sc.speedup * 1e4) / 1e4);
    if (full) {
        cJSON_AddNumberToObject(o, "tokens_per_s", round(g->sc.tokens_per_s * 100) / 100);
        cJSON_AddNumberToObject(o, "acceptance_rate", round(g->sc.accept_rate * 1e4) / 1e4);
        cJSON_AddNumberToObject(o, "mean_accepted", round(g->sc.mean_accepted * 1e3) / 1e3);
    }
    return o;
}

/* The config's "tune" member: what was measured, the grid with each point's
 * estimated speedup, the point before and the one chosen, the confirming
 * runs. */
static cJSON *tune_json(const tune_result *tr, const cost_model *cm, const spec_params *sp)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "what", "draft head size x exit threshold gamma_init for the chosen skip set, "
                            "each scored by the replay objective, the draft base cost timed per head size");
    cJSON_AddNumberToObject(t, "seconds", round(tr->seconds * 10) / 10);
    cJSON_AddNumberToObject(t, "threads", omp_get_max_threads());
    cJSON *cost = cJSON_AddObjectToObject(t, "cost_model_ms");
    cJSON_AddNumberToObject(cost, "full_step", cm->verify[0] * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base_full_head", cm->base * 1e3);
    cJSON_AddNumberToObject(cost, "attn_sublayer", cm->attn * 1e3);
    cJSON_AddNumberToObject(cost, "mlp_sublayer", cm->mlp * 1e3);
    cJSON *ver = cJSON_AddArrayToObject(cost, "verify_k_plus_1");
    for (int k = 0; k <= cm->max_k; k++)
        cJSON_AddItemToArray(ver, cJSON_CreateNumber(round(cm->verify[k] * 1e5) / 1e2));
    cJSON *fixed = cJSON_AddObjectToObject(t, "fixed");
    cJSON_AddNumberToObject(fixed, "max_draft", sp->max_draft);
    cJSON_AddNumberToObject(fixed, "ar_target", round(sp->ar_target * 1e4) / 1e4);
    cJSON_AddNumberToObject(fixed, "ar_decay", round(sp->ar_decay * 1e4) / 1e4);
    cJSON *hs = cJSON_AddArrayToObject(t, "head_sizes");
    for (int32_t i = 0; i < tr->n; i += tr->n_gammas)
        cJSON_AddItemToArray(hs, cJSON_CreateNumber(tr->grid[i].head_size));
    cJSON *gs = cJSON_AddArrayToObject(t, "gamma_inits");
    for (int32_t j = 0; j < tr->n_gammas; j++)
        cJSON_AddItemToArray(gs, cJSON_CreateNumber(round(tr->gammas[j] * 1e4) / 1e4));
    cJSON *grid = cJSON_AddArrayToObject(t, "grid");
    for (int32_t i = 0; i < tr->n; i++)
        cJSON_AddItemToArray(grid, point_json(&tr->grid[i], 0));
    if (tr->before >= 0)
        cJSON_AddItemToObject(t, "before", point_json(&tr->grid[tr->before], 1));
    cJSON_AddItemToObject(t, "chosen", point_json(&tr->grid[tr->best], 1));
    if (tr->plain.tps > 0) {
        cJSON *me = cJSON_AddObjectToObject(t, "measured");
        cJSON_AddStringToObject(me, "on", "calibration prompts, greedy");
        cJSON_AddNumberToObject(me, "plain_tokens_per_s", tr->plain.tps);
        if (tr->m_before.tps > 0) {
            cJSON_AddNumberToObject(me, "before_tokens_per_s", tr->m_before.tps);
            cJSON_AddNumberToObject(me, "before_speedup", tr->m_before.tps / tr->plain.tps);
        }
        cJSON_AddNumberToObject(me, "tuned_tokens_per_s", tr->m_tuned.tps);
        cJSON_AddNumberToObject(me, "tuned_speedup", tr->m_tuned.tps / tr->plain.tps);
        cJSON_AddNumberToObject(me, "tuned_acceptance_rate", tr->m_tuned.accept_rate);
    }
    return t;
}

/* Provenance added to the config. */
static char *provenance(const search_cli *o, const calib_set *cs, const cost_model *cm, const search_score *sc,
                        const measured *plain, const measured *spec, double rho, const tune_result *tr,
                        const spec_params *sp)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *cal = cJSON_AddObjectToObject(root, "calibration");
    const char *rel = strstr(o->prompts_path, "configs/");   /* repository-relative when possible */
    cJSON_AddStringToObject(cal, "prompts", rel ? rel : o->prompts_path);
    cJSON_AddNumberToObject(cal, "n_prompts", cs->n_seqs);
    cJSON_AddNumberToObject(cal, "new_tokens_per_prompt", o->n_new);
    cJSON_AddNumberToObject(cal, "positions", cs->n_positions);
    cJSON_AddStringToObject(cal, "text", "the model's own greedy continuations of the prompts (chat template applied)");
    cJSON *se = cJSON_AddObjectToObject(root, "search");
    cJSON_AddStringToObject(se, "strategy", o->random_only ? "random sets on the replay objective (baseline)"
                                           : "sensitivity + least-harm prefix + local search on the replay objective");
    cJSON_AddNumberToObject(se, "budget_seconds", o->budget);
    cJSON_AddNumberToObject(se, "head_size", o->head_size);
    cJSON_AddNumberToObject(se, "seed", (double)o->seed);
    cJSON_AddNumberToObject(se, "threads", omp_get_max_threads());
    cJSON *cost = cJSON_AddObjectToObject(root, "cost_model_ms");
    cJSON_AddNumberToObject(cost, "full_step", cm->verify[0] * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base", cm->base * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base_pruned_head", cm->base_pruned * 1e3);
    cJSON_AddNumberToObject(cost, "attn_sublayer", cm->attn * 1e3);
    cJSON_AddNumberToObject(cost, "mlp_sublayer", cm->mlp * 1e3);
    cJSON *ver = cJSON_AddArrayToObject(cost, "verify_k_plus_1");
    for (int k = 0; k <= cm->max_k; k++)
        cJSON_AddItemToArray(ver, cJSON_CreateNumber(round(cm->verify[k] * 1e5) / 1e2));
    cJSON *est = cJSON_AddObjectToObject(root, "estimated");
    cJSON_AddNumberToObject(est, "tokens_per_s", sc->tokens_per_s);
    cJSON_AddNumberToObject(est, "speedup", sc->speedup);
    cJSON_AddNumberToObject(est, "match_rate", sc->match_rate);
    cJSON_AddNumberToObject(est, "acceptance_rate", sc->accept_rate);
    cJSON_AddNumberToObject(est, "mean_accepted", sc->mean_accepted);
    if (plain->tps > 0) {
        cJSON *me = cJSON_AddObjectToObject(root, "measured");
        cJSON_AddStringToObject(me, "on", "calibration prompts, greedy");
        cJSON_AddNumberToObject(me, "plain_tokens_per_s", plain->tps);
        cJSON_AddNumberToObject(me, "selfspec_tokens_per_s", spec->tps);
        cJSON_AddNumberToObject(me, "speedup", spec->tps / plain->tps);
        cJSON_AddNumberToObject(me, "acceptance_rate", spec->accept_rate);
    }
    if (!isnan(rho))
        cJSON_AddNumberToObject(root, "objective_rank_correlation", rho);
    if (tr)
        cJSON_AddItemToObject(root, "tune", tune_json(tr, cm, sp));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* --tune-only: the seed config's own members carried over (calibration,
 * search, cost model, rank correlation), "estimated" and "measured"
 * replaced by the tuned point's, "tune" added; what skipset_save writes
 * itself (skip lists, head, exit) is dropped here. */
static char *tuned_provenance(const char *seed_path, const tune_result *tr, const cost_model *cm,
                              const spec_params *sp)
{
    char err[256];
    size_t len;
    char *text = util_read_file(seed_path, &len, err, sizeof err);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        root = cJSON_CreateObject();
    }
    const char *drop[] = {"model", "attn_skip", "mlp_skip", "draft_head", "draft_head_size", "exit",
                          "estimated", "measured", "tune"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(root, drop[i]);
    cJSON_AddItemToObject(root, "estimated", score_json(&tr->grid[tr->best].sc));
    if (tr->plain.tps > 0) {
        cJSON *me = cJSON_AddObjectToObject(root, "measured");
        cJSON_AddStringToObject(me, "on", "calibration prompts, greedy (the tune step's confirming run)");
        cJSON_AddNumberToObject(me, "plain_tokens_per_s", tr->plain.tps);
        cJSON_AddNumberToObject(me, "selfspec_tokens_per_s", tr->m_tuned.tps);
        cJSON_AddNumberToObject(me, "speedup", tr->m_tuned.tps / tr->plain.tps);
        cJSON_AddNumberToObject(me, "acceptance_rate", tr->m_tuned.accept_rate);
    }
    cJSON_AddItemToObject(root, "tune", tune_json(tr, cm, sp));
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* --tune-only: the calibration the seed config recorded ("calibration":
 * "prompts", a path relative to the repository or to configs_dir's parent,
 * and "new_tokens_per_prompt"), where -p / -n were not given. */
static int seed_calibration(search_cli *o, const char *configs_dir, char *pbuf, size_t plen)
{
    char err[256];
    size_t len;
    char *text = util_read_file(o->seed_config, &len, err, sizeof err);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    const cJSON *cal = cJSON_GetObjectItemCaseSensitive(root, "calibration");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(cal, "prompts");
    const cJSON *nn = cJSON_GetObjectItemCaseSensitive(cal, "new_tokens_per_prompt");
    int rc = 0;
    if (!o->prompts_given) {
        if (!cJSON_IsString(pr)) {
            fprintf(stderr, "selfspec: %s records no calibration prompts; give -p\n", o->seed_config);
            rc = -1;
        } else if (access(pr->valuestring, R_OK) == 0 || strncmp(pr->valuestring, "configs/", 8) != 0) {
            snprintf(pbuf, plen, "%s", pr->valuestring);
        } else {
            snprintf(pbuf, plen, "%s/%s", configs_dir, pr->valuestring + 8);
        }
        o->prompts_path = pbuf;
    }
    if (rc == 0 && !o->n_new_given) {
        if (!cJSON_IsNumber(nn) || nn->valueint < 8 || nn->valueint > 4096) {
            fprintf(stderr, "selfspec: %s records no calibration length (8..4096); give -n\n", o->seed_config);
            rc = -1;
        } else {
            o->n_new = nn->valueint;
        }
    }
    cJSON_Delete(root);
    return rc;
}

int cmd_search(int argc, char **argv)
{
    search_cli o;
    char err[512], mbuf[PATH_MAX + 64], dir[PATH_MAX], outbuf[PATH_MAX + 128], statebuf[PATH_MAX + 160],
        repbuf[PATH_MAX + 160], pbuf[PATH_MAX + 64];
    if (parse_search(argc, argv, &o) != 0)
        return 2;
    if (o.threads)
        omp_set_num_threads(o.threads);
    openblas_set_num_threads(1);
    if (!o.model_path)
        o.model_path = cli_default_model(mbuf, sizeof mbuf);
    cli_configs_dir(dir, sizeof dir);
    if (!o.prompts_path) {
        snprintf(pbuf, sizeof pbuf, "%s/prompts/calibration.jsonl", dir);
        o.prompts_path = pbuf;
    }
    model m;
    if (model_load(&m, o.model_path, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot load model '%s': %s\n", o.model_path, err);
        return 1;
    }
    if (!o.out_path) {
        char slug[128];
        size_t k = 0;
        for (const char *p = m.config.name; *p && k < sizeof slug - 1; p++)
            slug[k++] = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')) ? *p : '-');
        slug[k] = '\0';
        snprintf(outbuf, sizeof outbuf, "%s/%s.json", dir, k ? slug : "model");
        o.out_path = outbuf;
    }
    snprintf(statebuf, sizeof statebuf, "%s.state", o.out_path);
    snprintf(repbuf, sizeof repbuf, "%s.report.json", o.out_path);
    if (o.report_only) {
        print_report(repbuf);
        model_free(&m);
        return 0;
    }
    if (o.transfer_only) {
        int trc = write_transfer(&o, &m, dir);
        model_free(&m);
        return trc;
    }
    skip_set own = {0};   /* --tune-only: the model's config as it is */
    if (o.tune_only) {
        if (skipset_load(&own, o.seed_config, &m.config, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: --tune-only: %s\n", err);
            model_free(&m);
            return 1;
        }
        if (seed_calibration(&o, dir, pbuf, sizeof pbuf) != 0) {
            skipset_free(&own);
            model_free(&m);
            return 1;
        }
        o.head_size = own.n_head_tokens;
    }
    int rc = 1;
    tokenizer *tok = cli_load_tokenizer(o.model_path);
    int32_t *ids[MAX_PROMPTS], lens[MAX_PROMPTS], np = -1;
    if (!tok || (np = load_prompts(o.prompts_path, tok, o.chat, ids, lens)) < 0)
        goto free_model;
    int32_t maxlen = 0;
    for (int32_t i = 0; i < np; i++)
        maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    int32_t ctx = maxlen + o.n_new + SPEC_MAX_DRAFT + 4;
    double t0 = util_now();
    fwd_state fs;
    fwd_state_init(&fs, &m.config, 256, ctx);
    calib_set cs;
    fprintf(stderr, "search: model '%s', %d layers; calibration: %d prompts x %d tokens\n", m.config.name,
            m.config.n_layers, np, o.n_new);
    if (calib_build(&cs, &m, &fs, ids, lens, np, o.n_new, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: calibration: %s\n", err);
        goto free_fs;
    }
    fprintf(stderr, "search: calibration done (%.0f s)\n", util_now() - t0);
    skip_set head_only;
    skipset_init(&head_only, m.config.n_layers);
    qmat head = {0};
    if (o.head_size > 0) {
        search_head_tokens(&cs, &m, o.head_size, &head_only);
        qmat_gather(&m.w.output, head_only.head_tokens, head_only.n_head_tokens, &head);
    }
    cost_model cm;
    cost_measure(&cm, &m, o.head_size > 0 ? &head : NULL, 12, 15, err, sizeof err);
    fprintf(stderr, "search: cost model (ms, at %.0f s): full step %.2f; draft: base %.2f (pruned head %.2f) + %.3f per "
            "attention + %.3f per MLP; verify k+1 tokens: k=1 %.2f, k=4 %.2f, k=8 %.2f, k=12 %.2f\n",
            util_now() - t0, cm.verify[0] * 1e3, cm.base * 1e3, cm.base_pruned * 1e3, cm.attn * 1e3, cm.mlp * 1e3,
            cm.verify[1] * 1e3, cm.verify[4] * 1e3, cm.verify[8] * 1e3, cm.verify[12] * 1e3);
    spec_params sp;
    spec_params_default(&sp);
    skip_set seed_set = {0};
    skip_set best = {0};
    search_score sc = {0};
    char *report = NULL;
    double rho = NAN;
    kv_cache kv;
    if (kv_init(&kv, &m.config, ctx, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_calib;
    }
    if (o.tune_only) {
        best = own;   /* taken over: freed as best */
        own = (skip_set){0};
        spec_params_apply_exit(&sp, &best.exit, 0);
        fprintf(stderr, "search: --tune-only on %s: %d sublayers skipped, draft head %d, gamma_init %.2f\n",
                o.seed_config, skipset_count(&best), best.n_head_tokens, sp.gamma_init);
        goto tune;
    }
    if (o.seed_config) {
        skip_set src;
        if (skipset_load(&src, o.seed_config, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: --seed-config: %s\n", err);
            goto free_kv;
        }
        int32_t src_layers = src.n_layers;
        skipset_transfer(&src, m.config.n_layers, &seed_set);
        skipset_free(&src);
        search_score ts;
        if (search_score_set(&cs, &m, &fs, &seed_set, o.head_size ? &head : NULL, head_only.head_tokens, &cm, &sp,
                             &ts, err, sizeof err) == 0)
            fprintf(stderr, "search: transferred set from %s (%d -> %d layers, %d sublayers skipped): estimated "
                    "%.1f tok/s (%.2fx), match %.3f, before any search\n", o.seed_config, src_layers,
                    m.config.n_layers, skipset_count(&seed_set), ts.tokens_per_s, ts.speedup, ts.match_rate);
    }
    search_opts so = {.state_path = statebuf, .budget_seconds = o.budget,
                      .head_size = o.head_size, .seed = o.seed, .seed_set = o.seed_config ? &seed_set : NULL,
                      .random_only = o.random_only};
    if (search_run(&cs, &m, &fs, &cm, &sp, &so, &best, &sc, &report, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: search: %s\n", err);
        goto free_seed;
    }
    fprintf(stderr, "search: best set skips %d sublayers: estimated %.1f tok/s (%.2fx plain), match %.3f, "
            "acceptance %.3f\n", skipset_count(&best), sc.tokens_per_s, sc.speedup, sc.match_rate, sc.accept_rate);
    double est[128], meas[128];
    rho = validate_objective(statebuf, &m, &fs, &kv, &best, ids, lens, np < 4 ? np : 4, 48, o.validate, est, meas);
    if (!isnan(rho))
        fprintf(stderr, "search: objective vs measured tokens/s, Spearman rank correlation %.3f over %d sets\n",
                rho, o.validate);
tune:;
    tune_result *tr = NULL;
    measured mp = {0}, ms = {0};
    int32_t head_size = best.head_tokens ? best.n_head_tokens : 0;
    skip_set before = {0};
    spec_params sp_before = sp;
    if (!o.no_tune) {
        tr = callocCheck(1, sizeof *tr);
        if (run_tune(&o, &cs, &m, &fs, &best, head_size, sp.gamma_init, &cm, &sp, tr) != 0)
            goto free_tune;
        skipset_copy(&before, &best);   /* the set as it was, measured beside the tuned one */
        apply_tune(tr, &cs, &m, &best, &sp);
        head_size = tr->grid[tr->best].head_size;
        fprintf(stderr, "search: tuned: draft head %d, gamma_init %.2f: estimated %.3fx (before %.3fx)\n", head_size,
                sp.gamma_init, tr->grid[tr->best].sc.speedup, tr->before >= 0 ? tr->grid[tr->before].sc.speedup : NAN);
        sc = tr->grid[tr->best].sc;
    }
    int with_before = tr && tr->best != tr->before;
    fprintf(stderr, "search: confirming with real decoding (plain vs self-spec%s, %d prompts, interleaved)...\n",
            with_before ? " before and after the tune" : "", np);
    const skip_set *cfg_ss[3] = {NULL, &best, &before};
    const spec_params *cfg_sp[3] = {NULL, &sp, &sp_before};
    measured mm[3] = {{0}};
    measure_many(&m, &fs, &kv, with_before ? 3 : 2, cfg_ss, cfg_sp, ids, lens, np, o.n_new, mm);
    mp = mm[0], ms = mm[1];
    fprintf(stderr, "search: measured plain %.1f tok/s, self-spec %.1f tok/s (%.2fx), acceptance %.3f (at %.0f s)\n",
            mp.tps, ms.tps, ms.tps / mp.tps, ms.accept_rate, util_now() - t0);
    if (tr) {
        tr->plain = mp;
        tr->m_tuned = ms;
        tr->m_before = with_before ? mm[2] : ms;
        if (with_before)
            fprintf(stderr, "search: before the tune: self-spec %.1f tok/s (%.2fx), acceptance %.3f\n",
                    mm[2].tps, mm[2].tps / mp.tps, mm[2].accept_rate);
    }
    char *prov = o.tune_only ? tuned_provenance(o.seed_config, tr, &cm, &sp)
                             : provenance(&o, &cs, &cm, &sc, &mp, &ms, rho, tr, &sp);
    if (skipset_save(&best, o.out_path, &m.config, head_size, prov, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
    } else {
        FILE *f = report ? fopen(repbuf, "w") : NULL;
        int wrote_report = f != NULL;
        if (f) {
            fputs(report, f);
            fputc('\n', f);
            fclose(f);
        }
        fprintf(stderr, "search: wrote %s%s%s (%.0f s in all)\n", o.out_path, wrote_report ? " and " : "",
                wrote_report ? repbuf : "", util_now() - t0);
        rc = 0;
    }
    free(prov);
free_tune:
    free(tr);
    if (before.attn_skip)
        skipset_free(&before);
    free(report);
    skipset_free(&best);
free_seed:
    if (seed_set.attn_skip)
        skipset_free(&seed_set);
free_kv:
    kv_free(&kv);
free_calib:
    if (head.rows)
        qmat_free_owned(&head);
    skipset_free(&head_only);
    calib_free(&cs);
free_fs:
    fwd_state_free(&fs);
    for (int32_t i = 0; i < np; i++)
        free(ids[i]);
free_model:
    skipset_free(&own);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}
