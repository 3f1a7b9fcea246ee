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
 */
#include <getopt.h>
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
} search_cli;

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
"      --validate N         measure real decoding for N evaluated sets and\n"
"                           report the objective's rank correlation (default 6)\n"
"      --seed S             search seed (default 1)\n"
"      --strategy S         search (default) or random: random sets for the same\n"
"                           budget, the baseline the search is compared with\n"
"      --report             print the per-sublayer table of OUT.report.json and exit\n"
"  -t, --threads N          worker threads (default: all cores)\n"
"  -h, --help               this help\n");
}

enum { OPT_NOCHAT = 300, OPT_BUDGET, OPT_HEAD, OPT_SEEDCFG, OPT_VALIDATE, OPT_SEED, OPT_REPORT, OPT_STRATEGY, OPT_TRANSFER };

static int parse_search(int argc, char **argv, search_cli *o)
{
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'}, {"prompts", required_argument, 0, 'p'},
        {"out", required_argument, 0, 'o'}, {"no-chat", no_argument, 0, OPT_NOCHAT},
        {"new-tokens", required_argument, 0, 'n'}, {"budget", required_argument, 0, OPT_BUDGET},
        {"head-size", required_argument, 0, OPT_HEAD}, {"seed-config", required_argument, 0, OPT_SEEDCFG},
        {"validate", required_argument, 0, OPT_VALIDATE}, {"seed", required_argument, 0, OPT_SEED},
        {"report", no_argument, 0, OPT_REPORT}, {"strategy", required_argument, 0, OPT_STRATEGY}, {"threads", required_argument, 0, 't'},
        {"transfer-only", no_argument, 0, OPT_TRANSFER},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    long v;
    float f;
    int c;
    *o = (search_cli){.chat = 1, .n_new = 64, .budget = 420, .head_size = 8192, .seed = 1, .validate = 6};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:o:n:t:h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompts_path = optarg; break;
        case 'o': o->out_path = optarg; break;
        case OPT_NOCHAT: o->chat = 0; break;
        case 'n': if (cli_parse_int(optarg, "--new-tokens", 8, 4096, &v)) return -1; o->n_new = (int32_t)v; break;
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

/* Real decoding over the prompts: total new tokens / total decode time.
 * (fs is unused: the engine has its own.) */
static int measure(const model *m, fwd_state *fs, kv_cache *kv, const skip_set *ss, int32_t **ids,
                   const int32_t *lens, int32_t n, int32_t n_new, measured *out)
{
    char err[256];
    gen_params gp = {.max_tokens = n_new, .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1};
    spec_params sp;
    spec_params_default(&sp);
    double secs = 0, toks = 0, drafted = 0, accepted = 0;
    for (int32_t i = 0; i < n; i++) {
        gen_stats st;
        spec_stats sps;
        /* as `generate` decodes: through the engine */
        int rc = engine_generate(m, kv->cap, ss, &sp, ids[i], lens[i], &gp, null_emit, NULL, &st, ss ? &sps : NULL,
                                 err, sizeof err);
        if (rc != 0) {
            fprintf(stderr, "selfspec: measuring: %s\n", err);
            return -1;
        }
        secs += st.decode_seconds;
        toks += st.generated_tokens - 1;
        if (ss) {
            drafted += (double)sps.drafted;
            accepted += (double)sps.accepted;
        }
    }
    out->tps = toks / secs;
    out->accept_rate = drafted > 0 ? accepted / drafted : 0;
    return 0;
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
        measure(m, fs, kv, &s, ids, lens, np, n_new, &me);
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

/* Provenance added to the config. */
static char *provenance(const search_cli *o, const calib_set *cs, const cost_model *cm, const search_score *sc,
                        const measured *plain, const measured *spec, double rho)
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
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
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
    skip_set head_only;
    skipset_init(&head_only, m.config.n_layers);
    qmat head = {0};
    if (o.head_size > 0) {
        search_head_tokens(&cs, &m, o.head_size, &head_only);
        qmat_gather(&m.w.output, head_only.head_tokens, head_only.n_head_tokens, &head);
    }
    cost_model cm;
    cost_measure(&cm, &m, o.head_size > 0 ? &head : NULL, 12, 15, err, sizeof err);
    fprintf(stderr, "search: cost model (ms): full step %.2f; draft: base %.2f (pruned head %.2f) + %.3f per attention"
            " + %.3f per MLP; verify k+1 tokens: k=1 %.2f, k=4 %.2f, k=8 %.2f, k=12 %.2f\n",
            cm.verify[0] * 1e3, cm.base * 1e3, cm.base_pruned * 1e3, cm.attn * 1e3, cm.mlp * 1e3,
            cm.verify[1] * 1e3, cm.verify[4] * 1e3, cm.verify[8] * 1e3, cm.verify[12] * 1e3);
    spec_params sp;
    spec_params_default(&sp);
    skip_set seed_set = {0};
    if (o.seed_config) {
        skip_set src;
        if (skipset_load(&src, o.seed_config, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: --seed-config: %s\n", err);
            goto free_calib;
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
    skip_set best;
    search_score sc;
    char *report = NULL;
    if (search_run(&cs, &m, &fs, &cm, &sp, &so, &best, &sc, &report, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: search: %s\n", err);
        goto free_seed;
    }
    fprintf(stderr, "search: best set skips %d sublayers: estimated %.1f tok/s (%.2fx plain), match %.3f, "
            "acceptance %.3f\n", skipset_count(&best), sc.tokens_per_s, sc.speedup, sc.match_rate, sc.accept_rate);
    kv_cache kv;
    kv_init(&kv, &m.config, ctx, err, sizeof err);
    double est[128], meas[128];
    double rho = validate_objective(statebuf, &m, &fs, &kv, &best, ids, lens, np < 4 ? np : 4, 48, o.validate,
                                    est, meas);
    if (!isnan(rho))
        fprintf(stderr, "search: objective vs measured tokens/s, Spearman rank correlation %.3f over %d sets\n",
                rho, o.validate);
    measured mp = {0}, ms = {0};
    fprintf(stderr, "search: confirming with real decoding (plain vs self-spec, %d prompts)...\n", np);
    measure(&m, &fs, &kv, NULL, ids, lens, np, o.n_new, &mp);
    measure(&m, &fs, &kv, &best, ids, lens, np, o.n_new, &ms);
    fprintf(stderr, "search: measured plain %.1f tok/s, self-spec %.1f tok/s (%.2fx), acceptance %.3f\n",
            mp.tps, ms.tps, ms.tps / mp.tps, ms.accept_rate);
    kv_free(&kv);
    char *prov = provenance(&o, &cs, &cm, &sc, &mp, &ms, rho);
    if (skipset_save(&best, o.out_path, &m.config, o.head_size, prov, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
    } else {
        FILE *f = fopen(repbuf, "w");
        if (f && report) {
            fputs(report, f);
            fputc('\n', f);
        }
        if (f)
            fclose(f);
        fprintf(stderr, "search: wrote %s and %s (%.0f s in all)\n", o.out_path, repbuf, util_now() - t0);
        rc = 0;
    }
    free(prov);
    free(report);
    skipset_free(&best);
free_seed:
    if (seed_set.attn_skip)
        skipset_free(&seed_set);
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
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}
