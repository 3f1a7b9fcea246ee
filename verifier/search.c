/*
 * search.c - `selfspec search`: find the skip set that maximizes
 * self-speculative tokens/s for a model on this machine, validate the
 * objective against real decoding, and write the config.
 *
 * Steps: calibration text (the model's own continuations of the prompts),
 * a measured cost model (search_base_build), optionally a transferred seed
 * set, the search (tune/search.h), then validation: rank correlation
 * between estimated and measured tokens/s over a sample of evaluated sets
 * (tune/validate.h), and a measured plain-vs-self-spec comparison of the
 * final choice.
 *
 * The tune step (after the search, or alone on an existing config with
 * --tune-only) then scores draft head sizes x exit thresholds for the
 * chosen set (tune_confirm), keeps the best, confirms it with real
 * decoding and records every constant it chose, and the grid, in the
 * config (tune/provenance.h). This file parses options and calls those.
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "cli.h"
#include "commands.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "engine/engine.h"
#include "model/model.h"
#include "text/prompts.h"
#include "tune/provenance.h"
#include "tune/search.h"
#include "tune/validate.h"
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

/* --tune-heads / --tune-gammas (tune_parse_list). */
static int parse_list(const char *arg, const char *what, int32_t *ints, float *floats, int32_t *n)
{
    char err[256];
    if (tune_parse_list(arg, ints, floats, n, err, sizeof err) == 0)
        return 0;
    fprintf(stderr, "selfspec: %s %s\n", what, err);
    return -1;
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

/* --tune-only: the calibration the seed config recorded, where -p / -n
 * were not given. */
static int seed_calibration(search_cli *o, const char *configs_dir, char *pbuf, size_t plen)
{
    char err[256];
    int32_t n_new = 0;
    if (prov_read_calibration(o->seed_config, configs_dir, pbuf, plen, &n_new, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: --seed-config: %s\n", err);
        return -1;
    }
    if (!o->prompts_given && !pbuf[0]) {
        fprintf(stderr, "selfspec: %s records no calibration prompts; give -p\n", o->seed_config);
        return -1;
    }
    if (!o->prompts_given)
        o->prompts_path = pbuf;
    if (!o->n_new_given && !n_new) {
        fprintf(stderr, "selfspec: %s records no calibration length (8..4096); give -n\n", o->seed_config);
        return -1;
    }
    if (!o->n_new_given)
        o->n_new = n_new;
    return 0;
}

/* The prompts file, tokenized (through the chat template). */
static int32_t load_prompts(const search_cli *o, const tokenizer *tok, int32_t **ids, int32_t *lens)
{
    char err[512], *texts[MAX_PROMPTS];
    int n = prompts_load_jsonl(o->prompts_path, texts, MAX_PROMPTS, err, sizeof err);
    int rc = n > 0 ? prompts_encode(tok, texts, n, o->chat, ids, lens, err, sizeof err) : -1;
    if (rc != 0)
        fprintf(stderr, "selfspec: %s%s%s\n", n > 0 ? o->prompts_path : "", n > 0 ? ": " : "", err);
    prompts_free(texts, n);
    return rc == 0 ? n : -1;
}

/* The search proper (not --tune-only): a transferred seed set scored as it
 * is, search_run, the objective validated. best, sc, report, rho filled. */
static int run_search(const search_cli *o, const char *statebuf, const search_base *sb, fwd_state *fs,
                      const tune_bench *tb, const spec_params *sp, int32_t **ids, const int32_t *lens, int32_t np,
                      skip_set *best, search_score *sc, char **report, double *rho)
{
    const model *m = tb->m;
    char err[512];
    skip_set seed_set = {0};
    if (o->seed_config) {
        skip_set src;
        if (skipset_load(&src, o->seed_config, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: --seed-config: %s\n", err);
            return -1;
        }
        skipset_transfer(&src, m->config.n_layers, &seed_set);
        search_score ts;
        if (search_score_set(&sb->cs, m, fs, &seed_set, o->head_size ? &sb->head : NULL, sb->head_only.head_tokens,
                             &sb->cm, sp, &ts, err, sizeof err) == 0)
            fprintf(stderr, "search: transferred set from %s (%d -> %d layers, %d sublayers skipped): estimated "
                    "%.1f tok/s (%.2fx), match %.3f, before any search\n", o->seed_config, src.n_layers,
                    m->config.n_layers, skipset_count(&seed_set), ts.tokens_per_s, ts.speedup, ts.match_rate);
        skipset_free(&src);
    }
    search_opts so = {.state_path = statebuf, .budget_seconds = o->budget, .head_size = o->head_size,
                      .seed = o->seed, .seed_set = o->seed_config ? &seed_set : NULL, .random_only = o->random_only};
    int rc = search_run(&sb->cs, m, fs, &sb->cm, sp, &so, best, sc, report, err, sizeof err);
    if (seed_set.attn_skip)
        skipset_free(&seed_set);
    if (rc != 0) {
        fprintf(stderr, "selfspec: search: %s\n", err);
        return -1;
    }
    fprintf(stderr, "search: best set skips %d sublayers: estimated %.1f tok/s (%.2fx plain), match %.3f, "
            "acceptance %.3f\n", skipset_count(best), sc->tokens_per_s, sc->speedup, sc->match_rate, sc->accept_rate);
    double est[128], meas[128];
    *rho = tune_validate_objective(statebuf, tb, best, ids, lens, np < 4 ? np : 4, 48, o->validate, est, meas, stderr);
    if (!isnan(*rho))
        fprintf(stderr, "search: objective vs measured tokens/s, Spearman rank correlation %.3f over %d sets\n",
                *rho, o->validate);
    return 0;
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
        skipset_default_path(dir, &m.config, outbuf, sizeof outbuf);
        o.out_path = outbuf;
    }
    snprintf(statebuf, sizeof statebuf, "%s.state", o.out_path);
    snprintf(repbuf, sizeof repbuf, "%s.report.json", o.out_path);
    if (o.report_only || o.transfer_only) {   /* no calibration, no search */
        prov_transfer_info ti;
        int r = o.transfer_only ? prov_write_transfer(o.seed_config, &m.config, dir, o.out_path, o.head_size, &ti, err,
                                                      sizeof err)
                                : search_report_print(repbuf, stdout, err, sizeof err);
        if (r != 0)
            fprintf(stderr, "selfspec: %s\n", err);
        else if (o.transfer_only)
            fprintf(stderr, "search: %s (%d layers, %d skipped) -> %s (%d layers, %d skipped)\n", o.seed_config,
                    ti.from_layers, ti.from_skipped, o.out_path, m.config.n_layers, ti.to_skipped);
        model_free(&m);
        return o.transfer_only && r != 0;
    }
    skip_set best = {0};   /* --tune-only: the model's config as it is */
    if (o.tune_only && skipset_load(&best, o.seed_config, &m.config, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: --tune-only: %s\n", err);
        model_free(&m);
        return 1;
    }
    if (o.tune_only && seed_calibration(&o, dir, pbuf, sizeof pbuf) != 0) {
        skipset_free(&best);
        model_free(&m);
        return 1;
    }
    if (o.tune_only)
        o.head_size = best.n_head_tokens;
    int rc = 1;
    tokenizer *tok = cli_load_tokenizer(o.model_path);
    int32_t *ids[MAX_PROMPTS], lens[MAX_PROMPTS], np = -1;
    if (!tok || (np = load_prompts(&o, tok, ids, lens)) < 0)
        goto free_model;
    int32_t maxlen = 0;
    for (int32_t i = 0; i < np; i++)
        maxlen = lens[i] > maxlen ? lens[i] : maxlen;
    int32_t ctx = maxlen + o.n_new + SPEC_MAX_DRAFT + 4;
    double t0 = util_now();
    fwd_state fs;
    fwd_state_init(&fs, &m.config, 256, ctx);
    search_base sb;
    fprintf(stderr, "search: model '%s', %d layers; calibration: %d prompts x %d tokens\n", m.config.name,
            m.config.n_layers, np, o.n_new);
    if (search_base_build(&sb, &m, &fs, ids, lens, np, o.n_new, o.head_size, stderr, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_fs;
    }
    spec_params sp;
    spec_params_default(&sp);
    search_score sc = {0};
    char *report = NULL;
    double rho = NAN;
    tune_bench tb = {.m = &m, .kv_cap = ctx, .decode = engine_generate};
    if (o.tune_only) {
        spec_params_apply_exit(&sp, &best.exit, 0);
        fprintf(stderr, "search: --tune-only on %s: %d sublayers skipped, draft head %d, gamma_init %.2f\n",
                o.seed_config, skipset_count(&best), best.n_head_tokens, sp.gamma_init);
    } else if (run_search(&o, statebuf, &sb, &fs, &tb, &sp, ids, lens, np, &best, &sc, &report, &rho) != 0) {
        goto free_base;
    }
    tune_result *tr = o.no_tune ? NULL : callocCheck(1, sizeof *tr);
    tune_measured mp = {0}, ms = {0};
    if (tune_confirm(&tb, &sb.cs, &fs, &best, &sb.cm, &sp, o.tune_heads, o.n_tune_heads, o.tune_gammas,
                     o.n_tune_gammas, ids, lens, np, o.n_new, tr, &mp, &ms, stderr, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: tune: %s\n", err);
    } else {
        if (tr)
            sc = tr->grid[tr->best].sc;
        prov_search ps = {.prompts_path = o.prompts_path, .n_new = o.n_new, .random_only = o.random_only,
                          .budget = o.budget, .head_size = o.head_size, .seed = o.seed,
                          .threads = omp_get_max_threads()};
        char *prov = o.tune_only ? prov_tuned_json(o.seed_config, tr, &sb.cm, &sp, ps.threads)
                                 : prov_search_json(&ps, &sb.cs, &sb.cm, &sc, &mp, &ms, rho, tr, &sp);
        FILE *f = NULL;
        int wrote = 0;
        if (skipset_save(&best, o.out_path, &m.config, best.head_tokens ? best.n_head_tokens : 0, prov, err,
                         sizeof err) != 0) {
            fprintf(stderr, "selfspec: %s\n", err);
        } else {
            if (report && (f = fopen(repbuf, "w"))) {
                wrote = fprintf(f, "%s\n", report) > 0;
                wrote = fclose(f) == 0 && wrote;
            }
            fprintf(stderr, "search: wrote %s%s%s (%.0f s in all)\n", o.out_path, wrote ? " and " : "",
                    wrote ? repbuf : "", util_now() - t0);
            rc = 0;
        }
        free(prov);
    }
    free(tr);
    free(report);
free_base:
    search_base_free(&sb);
free_fs:
    fwd_state_free(&fs);
    for (int32_t i = 0; i < np; i++)
        free(ids[i]);
free_model:
    skipset_free(&best);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}
