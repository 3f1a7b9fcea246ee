/*
 * selfspec.c - the command-line entry point, bin/selfspec.
 *
 *   selfspec generate [options]   generate a continuation of a prompt
 *
 * The generate subcommand loads the model (the weight arena), tokenizes the
 * prompt (optionally through the model's chat template), runs one of the
 * decoding loops and streams the result: text, or token ids with --ids.
 * All per-run state lives in a gen_run struct; nothing global.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cblas.h>
#include <omp.h>

#include "cli.h"
#include "model/cuda_backend.h"
#include "gen_cuda.h"
#include "decode/generate.h"
#include "model/model.h"
#include "pipeline.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "text/chat.h"
#include "text/tokenizer.h"
#include "text/utf8.h"
#include "util/util.h"

#define MAX_STOPS 8

typedef struct {
    const char *model_path;
    const char *prompt;
    const char *prompt_file;
    const char *system;
    const char *mode;
    int mode_given;            /* --mode on the command line */
    const char *skip;          /* --skip FILE|none; NULL = the model's config */
    int32_t draft_head;        /* --draft-head N: -1 = the config's, 0 = full head */
    pipe_params pl;            /* --mode pipeline */
    spec_params sp;
    int chat;
    int ids;
    int stats;
    int threads;
    int32_t ctx;
    int ignore_eos;
    int device;                /* --device: -1 cpu, else the CUDA device */
    gen_params gp;
    const char *stops[MAX_STOPS];
    int n_stops;
} gen_opts;

/* Output state shared with the emit callback. */
typedef struct {
    const tokenizer *tok;
    const gen_opts *o;
    utf8_stream us;
    char *text;          /* complete UTF-8 generated so far */
    size_t len, cap;
    size_t printed;      /* bytes of text already written to stdout */
    int n_ids;
    int stopped;         /* a stop string was found */
    char *piece;         /* (piece_cap) one token's complete UTF-8 */
    size_t piece_cap;
} gen_out;

int cmd_search(int argc, char **argv);   /* search_cmd.c */

static void usage_generate(FILE *f)
{
    fprintf(f,
"usage: selfspec generate [options]\n"
"\n"
"Generate a continuation of a prompt and stream it to stdout.\n"
"\n"
"  -m, --model FILE       GGUF model (default: $SELFSPEC_MODEL, else\n"
"                         " DEFAULT_MODEL_REL " next to bin/)\n"
"  -p, --prompt TEXT      the prompt\n"
"  -f, --prompt-file FILE read the prompt from FILE ('-' = stdin)\n"
"      --chat             wrap the prompt in the model's chat template\n"
"      --system TEXT      system message for --chat (default: the template's)\n"
"  -n, --max-tokens N     new tokens at most (default 256)\n"
"      --temperature T    0 = greedy (default 0)\n"
"      --top-k K          keep the K most likely tokens (0 = off, default)\n"
"      --top-p P          nucleus sampling mass in (0, 1] (default 1 = off)\n"
"      --seed S           random seed for sampling (default 0)\n"
"      --stop STR         stop when STR is generated (repeatable, up to %d)\n"
"      --ignore-eos       do not stop at end-of-generation tokens\n"
"      --ids              print generated token ids (space-separated), not text\n"
"      --stats            print one JSON line of statistics on stderr\n"
"      --mode MODE        self-spec (default), plain, or pipeline: self-spec with the\n"
"                         draft in a second process (bin/selfspec-drafter, started\n"
"                         here) sharing the weights; greedy only\n"
"      --pipeline-sequential  pipeline without overlap (draft, then verify)\n"
"      --hb-ms MS         drafter heartbeat interval (default 100)\n"
"      --hb-timeout-ms MS drafter silence before it is killed and restarted (1000)\n"
"      --drafter-threads N  drafter threads (default: as --threads)\n"
"      --pipeline-seqs N  benchmark: decode the prompt as N sequences at once (the\n"
"                         drafter drafts one while another is verified); prints\n"
"                         sequence 0, --stats counts all\n"
"      --skip FILE|none   skip-set config for self-spec (default: the config in\n"
"                         configs/ matching the model; 'none' drafts with the\n"
"                         full model); without a config, plain decoding is used\n"
"      --draft-head N     pruned draft head: the config's N most frequent tokens\n"
"                         (0 = full vocabulary; default: the config's size)\n"
"      --draft-max K      most tokens per draft (default 12, at most %d)\n"
"      --gamma G          initial draft-exit threshold on the draft's top-1\n"
"                         probability (default 0.6; adapted while decoding)\n"
"      --ar-target A      acceptance-rate target of the adaptive exit (0.9)\n"
"      --gamma-step S     adaptive exit step (0.01)\n"
"      --device DEV       cpu (default) or cuda[:N]: greedy decoding on a GPU\n"
"  -t, --threads N        worker threads (default: all cores)\n"
"  -c, --ctx N            context length in tokens (default min(model's, 4096))\n"
"  -h, --help             this help\n"
"\n"
"Output is exactly the full model's: self-spec only changes speed. --stats adds\n"
"drafted/accepted counts, acceptance by draft position and the final threshold.\n",
            MAX_STOPS, SPEC_MAX_DRAFT);
}

static void usage_main(FILE *f)
{
    fprintf(f,
"usage: selfspec <command> [options]\n"
"\n"
"commands:\n"
"  generate   generate text from a prompt (selfspec generate --help)\n"
"  search     find the sublayers the draft skips (selfspec search --help)\n");
}

enum { OPT_CHAT = 256, OPT_SYSTEM, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_SEED, OPT_STOP,
       OPT_IGNORE_EOS, OPT_IDS, OPT_STATS, OPT_MODE, OPT_SKIP, OPT_DRAFT_MAX, OPT_GAMMA,
       OPT_AR_TARGET, OPT_GAMMA_STEP, OPT_DEVICE, OPT_DRAFT_HEAD, OPT_PIPE_SEQ, OPT_HB_MS,
       OPT_HB_TIMEOUT, OPT_DRAFTER_THREADS, OPT_PIPE_SEQS };

static int parse_generate(int argc, char **argv, gen_opts *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"prompt-file", required_argument, 0, 'f'}, {"chat", no_argument, 0, OPT_CHAT},
        {"system", required_argument, 0, OPT_SYSTEM}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, OPT_TEMP}, {"top-k", required_argument, 0, OPT_TOPK},
        {"top-p", required_argument, 0, OPT_TOPP}, {"seed", required_argument, 0, OPT_SEED},
        {"stop", required_argument, 0, OPT_STOP}, {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"ids", no_argument, 0, OPT_IDS}, {"stats", no_argument, 0, OPT_STATS},
        {"mode", required_argument, 0, OPT_MODE}, {"threads", required_argument, 0, 't'},
        {"ctx", required_argument, 0, 'c'}, {"help", no_argument, 0, 'h'},
        {"skip", required_argument, 0, OPT_SKIP}, {"draft-max", required_argument, 0, OPT_DRAFT_MAX},
        {"gamma", required_argument, 0, OPT_GAMMA}, {"ar-target", required_argument, 0, OPT_AR_TARGET},
        {"gamma-step", required_argument, 0, OPT_GAMMA_STEP}, {"device", required_argument, 0, OPT_DEVICE},
        {"draft-head", required_argument, 0, OPT_DRAFT_HEAD},
        {"pipeline-sequential", no_argument, 0, OPT_PIPE_SEQ}, {"hb-ms", required_argument, 0, OPT_HB_MS},
        {"hb-timeout-ms", required_argument, 0, OPT_HB_TIMEOUT},
        {"drafter-threads", required_argument, 0, OPT_DRAFTER_THREADS},
        {"pipeline-seqs", required_argument, 0, OPT_PIPE_SEQS},
        {0, 0, 0, 0}};
    long v;
    int c;
    o->gp.max_tokens = 256;
    o->gp.sampling = (sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    o->mode = "self-spec";
    pipe_params_default(&o->pl);
    o->device = -1;
    spec_params_default(&o->sp);
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->prompt_file = optarg; break;
        case OPT_CHAT: o->chat = 1; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case 'n':
            if (cli_parse_int(optarg, "--max-tokens", 1, 1 << 24, &v)) return -1;
            o->gp.max_tokens = (int32_t)v;
            break;
        case OPT_TEMP: if (cli_parse_float(optarg, "--temperature", &o->gp.sampling.temperature)) return -1; break;
        case OPT_TOPK:
            if (cli_parse_int(optarg, "--top-k", 0, INT32_MAX, &v)) return -1;
            o->gp.sampling.top_k = (int32_t)v;
            break;
        case OPT_TOPP: if (cli_parse_float(optarg, "--top-p", &o->gp.sampling.top_p)) return -1; break;
        case OPT_SEED:
            if (cli_parse_int(optarg, "--seed", 0, LONG_MAX, &v)) return -1;
            o->gp.sampling.seed = (uint64_t)v;
            break;
        case OPT_STOP:
            if (o->n_stops == MAX_STOPS || !*optarg) {
                fprintf(stderr, "selfspec: --stop takes a non-empty string, at most %d times\n", MAX_STOPS);
                return -1;
            }
            o->stops[o->n_stops++] = optarg;
            break;
        case OPT_IGNORE_EOS: o->ignore_eos = 1; break;
        case OPT_IDS: o->ids = 1; break;
        case OPT_STATS: o->stats = 1; break;
        case OPT_MODE: o->mode = optarg; o->mode_given = 1; break;
        case OPT_PIPE_SEQ: o->pl.overlap = 0; break;
        case OPT_HB_MS:
            if (cli_parse_int(optarg, "--hb-ms", 1, 60000, &v)) return -1;
            o->pl.hb_ms = (int)v;
            break;
        case OPT_HB_TIMEOUT:
            if (cli_parse_int(optarg, "--hb-timeout-ms", 10, 600000, &v)) return -1;
            o->pl.hb_timeout_ms = (int)v;
            break;
        case OPT_PIPE_SEQS:
            if (cli_parse_int(optarg, "--pipeline-seqs", 1, 64, &v)) return -1;
            o->pl.n_seqs = (int)v;
            break;
        case OPT_DRAFTER_THREADS:
            if (cli_parse_int(optarg, "--drafter-threads", 1, 1024, &v)) return -1;
            o->pl.drafter_threads = (int)v;
            break;
        case OPT_SKIP: o->skip = optarg; break;
        case OPT_DRAFT_HEAD:
            if (cli_parse_int(optarg, "--draft-head", 0, 1 << 24, &v)) return -1;
            if (v % 16) {
                fprintf(stderr, "selfspec: --draft-head must be a multiple of 16\n");
                return -1;
            }
            o->draft_head = (int32_t)v;
            break;
        case OPT_DRAFT_MAX:
            if (cli_parse_int(optarg, "--draft-max", 1, SPEC_MAX_DRAFT, &v)) return -1;
            o->sp.max_draft = (int32_t)v;
            break;
        case OPT_GAMMA: if (cli_parse_float(optarg, "--gamma", &o->sp.gamma_init)) return -1; break;
        case OPT_AR_TARGET: if (cli_parse_float(optarg, "--ar-target", &o->sp.ar_target)) return -1; break;
        case OPT_GAMMA_STEP: if (cli_parse_float(optarg, "--gamma-step", &o->sp.gamma_step)) return -1; break;
        case OPT_DEVICE:
            if (cuda_parse_device(optarg, &o->device)) {
                fprintf(stderr, "selfspec: --device must be cpu, cuda or cuda:N, got '%s'\n", optarg);
                return -1;
            }
            break;
        case 't':
            if (cli_parse_int(optarg, "--threads", 1, 1024, &v)) return -1;
            o->threads = (int)v;
            break;
        case 'c':
            if (cli_parse_int(optarg, "--ctx", 16, 1 << 20, &v)) return -1;
            o->ctx = (int32_t)v;
            break;
        case 'h': usage_generate(stdout); exit(0);
        default: usage_generate(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "selfspec: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->prompt == !o->prompt_file) {
        fprintf(stderr, "selfspec: give exactly one of -p/--prompt and -f/--prompt-file\n");
        return -1;
    }
    if (strcmp(o->mode, "plain") != 0 && strcmp(o->mode, "self-spec") != 0 && strcmp(o->mode, "pipeline") != 0) {
        fprintf(stderr, "selfspec: unknown --mode '%s' (available: self-spec, plain, pipeline)\n", o->mode);
        return -1;
    }
    char err[256];
    if (sampler_params_check(&o->gp.sampling, err, sizeof err) != 0 ||
        spec_params_check(&o->sp, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    return 0;
}

/* ---- output: streaming text with stop strings ---- */

static void out_append(gen_out *g, const char *s, size_t n)
{
    if (g->len + n + 1 > g->cap) {
        g->cap = (g->len + n + 1) * 2;
        char *nt = realloc(g->text, g->cap);
        if (!nt) {
            fprintf(stderr, "selfspec: out of memory\n");
            exit(1);
        }
        g->text = nt;
    }
    memcpy(g->text + g->len, s, n);
    g->len += n;
    g->text[g->len] = '\0';
}

/* Print text up to `upto` (not past a possible stop-string prefix). */
static void out_print(gen_out *g, size_t upto)
{
    if (!g->o->ids && upto > g->printed) {
        fwrite(g->text + g->printed, 1, upto - g->printed, stdout);
        fflush(stdout);
    }
    if (upto > g->printed)
        g->printed = upto;
}

/* Look for a stop string in the new text; print what is safe to print. */
static void out_check_stops(gen_out *g, int final)
{
    size_t maxlen = 0, start = 0;
    for (int i = 0; i < g->o->n_stops; i++) {
        size_t sl = strlen(g->o->stops[i]);
        maxlen = sl > maxlen ? sl : maxlen;
    }
    start = g->printed > maxlen ? g->printed - maxlen : 0;
    for (int i = 0; i < g->o->n_stops; i++) {
        const char *hit = strstr(g->text + start, g->o->stops[i]);
        if (hit) {
            g->stopped = 1;
            out_print(g, (size_t)(hit - g->text));
            return;
        }
    }
    size_t hold = final || maxlen == 0 ? 0 : maxlen - 1;
    size_t safe = g->len > hold ? g->len - hold : 0;
    while (safe > g->printed && safe < g->len && ((unsigned char)g->text[safe] & 0xC0) == 0x80)
        safe--;   /* never split a UTF-8 character */
    out_print(g, safe);
}

static int emit_token(void *ctx, int32_t token)
{
    gen_out *g = ctx;
    /* the end-of-generation token ends the text; its own text is not output */
    if (g->o->ignore_eos || !tokenizer_is_eog(g->tok, token)) {
        size_t n = utf8_stream_push(&g->us, g->tok, token, g->piece, g->piece_cap);
        out_append(g, g->piece, n);
    }
    if (g->o->ids) {
        printf(g->n_ids++ ? " %d" : "%d", token);
        fflush(stdout);
    }
    out_check_stops(g, 0);
    return g->stopped;
}

static int is_eog_cb(const void *ctx, int32_t token)
{
    return tokenizer_is_eog((const tokenizer *)ctx, token);
}

/* ---- prompt ---- */

static char *load_prompt(const gen_opts *o, const tokenizer *tok, size_t *len)
{
    char err[256];
    char *raw;
    if (o->prompt) {
        raw = strdup(o->prompt);
        *len = strlen(raw);
    } else {
        raw = util_read_file(strcmp(o->prompt_file, "-") ? o->prompt_file : "/dev/stdin", len, err, sizeof err);
        if (!raw) {
            fprintf(stderr, "selfspec: %s\n", err);
            return NULL;
        }
    }
    size_t bad = utf8_validate(raw, *len);
    if (bad != *len) {
        fprintf(stderr, "selfspec: the prompt is not valid UTF-8 (first bad byte at offset %zu)\n", bad);
        free(raw);
        return NULL;
    }
    if (!o->chat)
        return raw;
    if (o->system && utf8_validate(o->system, strlen(o->system)) != strlen(o->system)) {
        fprintf(stderr, "selfspec: the system message is not valid UTF-8\n");
        free(raw);
        return NULL;
    }
    char *chat = tokenizer_chat_prompt(tok, o->system, raw, err, sizeof err);
    free(raw);
    if (!chat) {
        fprintf(stderr, "selfspec: %s\n", err);
        return NULL;
    }
    *len = strlen(chat);
    return chat;
}

static void print_stats(const gen_opts *o, const gen_stats *st, const spec_stats *sp, const char *skip_src,
                        const pipe_stats *pst)
{
    double total = st->prefill_seconds + st->decode_seconds;
    int32_t decoded = st->generated_tokens > 1 ? st->generated_tokens - 1 : 0;
    fprintf(stderr,
            "{\"mode\": \"%s\", \"threads\": %d, \"prompt_tokens\": %d, \"generated_tokens\": %d, "
            "\"seconds\": %.4f, \"tokens_per_s\": %.2f, \"prefill_seconds\": %.4f, "
            "\"prefill_tokens_per_s\": %.2f, \"decode_seconds\": %.4f, \"decode_tokens_per_s\": %.2f",
            o->mode, omp_get_max_threads(), st->prompt_tokens, st->generated_tokens, total,
            total > 0 ? st->generated_tokens / total : 0.0, st->prefill_seconds,
            st->prefill_seconds > 0 ? st->prompt_tokens / st->prefill_seconds : 0.0,
            st->decode_seconds, st->decode_seconds > 0 ? decoded / st->decode_seconds : 0.0);
    if (sp) {
        fprintf(stderr,
                ", \"skip_config\": \"%s\", \"drafted\": %lld, \"accepted\": %lld, \"verifications\": %lld, "
                "\"acceptance_rate\": %.4f, \"mean_accepted_per_verify\": %.3f, \"final_gamma\": %.4f, "
                "\"draft_seconds\": %.4f, \"verify_seconds\": %.4f, \"acceptance_by_position\": [",
                skip_src, (long long)sp->drafted, (long long)sp->accepted, (long long)sp->verifications,
                sp->drafted ? (double)sp->accepted / sp->drafted : 0.0,
                sp->verifications ? (double)sp->accepted / sp->verifications : 0.0, sp->final_gamma,
                sp->draft_seconds, sp->verify_seconds);
        for (int i = 0; i < SPEC_MAX_DRAFT && sp->drafted_at[i]; i++)
            fprintf(stderr, "%s%.4f", i ? ", " : "", (double)sp->accepted_at[i] / sp->drafted_at[i]);
        fprintf(stderr, "]");
    }
    if (pst) {
        fprintf(stderr, ", ");
        pipeline_print_stats(stderr, &o->pl, pst);
    }
    fprintf(stderr, "}\n");
}

/* The skip set for self-spec: --skip FILE|none, else the model's config.
 * Returns 0 and fills ss, 1 when there is no config (use plain), -1 on error. */
static int choose_skipset(const gen_opts *o, const model *m, skip_set *ss)
{
    char err[512], dir[PATH_MAX], path[PATH_MAX + 300];
    if (o->skip && !strcmp(o->skip, "none")) {
        skipset_init(ss, m->config.n_layers);
        return 0;
    }
    if (o->skip) {
        snprintf(path, sizeof path, "%s", o->skip);
    } else {
        cli_configs_dir(dir, sizeof dir);
        if (skipset_find(dir, &m->config, path, sizeof path) != 0) {
            fprintf(stderr, "selfspec: no skip-set config for model '%s' in %s; using plain decoding "
                    "(make one with 'selfspec search', or pass --skip)\n", m->config.name, dir);
            return 1;
        }
    }
    if (skipset_load(ss, path, &m->config, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: bad skip set: %s\n", err);
        return -1;
    }
    if (o->draft_head == 0) {           /* full head */
        free(ss->head_tokens);
        ss->head_tokens = NULL;
        ss->n_head_tokens = 0;
    } else if (o->draft_head > 0 && o->draft_head < ss->n_head_tokens) {
        ss->n_head_tokens = o->draft_head;
    } else if (o->draft_head > ss->n_head_tokens) {
        fprintf(stderr, "selfspec: --draft-head %d: the config lists %d tokens\n", o->draft_head, ss->n_head_tokens);
        return -1;
    }
    return 0;
}

/* ---- generate ---- */

static int run_generate(gen_opts *o)
{
    char err[512], mbuf[PATH_MAX + 64];
    int rc = 1;
    model m;
    tokenizer *tok = NULL;
    kv_cache kv = {0};
    fwd_state fs = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0, plen = 0;
    char *prompt = NULL;
    gen_out out = {0};

    if (o->threads)
        omp_set_num_threads(o->threads);
    openblas_set_num_threads(1);   /* we parallelize around BLAS ourselves */
    if (o->device >= 0 && gen_cuda_check_device(o->device, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return 1;
    }
    if (!o->model_path)
        o->model_path = cli_default_model(mbuf, sizeof mbuf);
    char shm_name[64] = "";
    int pipeline = !strcmp(o->mode, "pipeline") && o->device < 0;
    if (pipeline)
        pipeline_prepare(shm_name, sizeof shm_name);
    if (model_load(&m, o->model_path, pipeline ? shm_name : NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot load model '%s': %s\n", o->model_path, err);
        return 1;
    }
    if (pipeline)
        pipeline_loaded(shm_name);
    if (!(tok = cli_load_tokenizer(o->model_path)))
        goto free_model;
    if (!(prompt = load_prompt(o, tok, &plen)))
        goto free_tok;
    if (tokenizer_encode(tok, prompt, plen, tokenizer_add_bos(tok), o->chat, &ids, &n_ids, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot tokenize the prompt: %s\n", err);
        goto free_prompt;
    }
    if (n_ids == 0) {
        fprintf(stderr, "selfspec: the prompt is empty\n");
        goto free_ids;
    }
    int32_t ctx = o->ctx ? o->ctx : (m.config.ctx_train < 4096 ? m.config.ctx_train : 4096);
    if ((int64_t)n_ids + o->gp.max_tokens > ctx) {
        fprintf(stderr, "selfspec: prompt (%zu tokens) + max tokens (%d) exceed the context of %d tokens; "
                "shorten the prompt, lower -n or raise --ctx\n", n_ids, o->gp.max_tokens, ctx);
        goto free_ids;
    }
    if (kv_init(&kv, &m.config, ctx, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_ids;
    }
    fwd_state_init(&fs, &m.config, 256, ctx);
    o->gp.ignore_eos = o->ignore_eos;
    o->gp.is_eog = is_eog_cb;
    o->gp.eog_ctx = tok;
    out.tok = tok;
    out.o = o;
    out.piece_cap = 3 * (tokenizer_max_piece_len(tok) + 8);   /* enough for any piece (tokenizer.h) */
    out.piece = mallocCheck(out.piece_cap);
    utf8_stream_init(&out.us);
    gen_stats st;
    spec_stats sps;
    skip_set ss = {0};
    pipe_stats pst;
    int use_spec = !strcmp(o->mode, "self-spec") || !strcmp(o->mode, "pipeline");
    if (use_spec) {
        int c = choose_skipset(o, &m, &ss);
        if (c < 0)
            goto free_all;
        if (c > 0)
            use_spec = 0, pipeline = 0, o->mode = "plain";
        if (c == 0 && !o->mode_given && !o->skip && ss.speedup > 0.0f && ss.speedup < 1.0f) {
            /* speculation switches itself off where its own search found it costs */
            fprintf(stderr, "selfspec: the skip set in %s measured %.2fx plain decoding for this model on the "
                    "machine it was searched on; decoding plainly (--mode self-spec forces speculation)\n",
                    ss.source, ss.speedup);
            skipset_free(&ss);
            use_spec = 0, o->mode = "plain";
        }
    }
    o->pl.model_path = o->model_path;
    o->pl.skip_path = ss.source;
    o->pl.draft_head = o->draft_head;
    int grc = pipeline && use_spec
        ? gen_pipeline(&m, &fs, ctx, &o->sp, &o->pl, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st, &sps,
                       &pst, err, sizeof err)
        : o->device >= 0
        ? gen_cuda(&m, o->device, ctx, use_spec ? &ss : NULL, o->sp.max_draft, ids, (int32_t)n_ids, &o->gp,
                   emit_token, &out, &st, use_spec ? &sps : NULL, err, sizeof err)
        : use_spec
        ? gen_selfspec(&m, &fs, &kv, &ss, &o->sp, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st, &sps,
                       err, sizeof err)
        : gen_plain(&m, &fs, &kv, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st, err, sizeof err);
    if (grc != 0) {
        fprintf(stderr, "\nselfspec: generation failed: %s\n", err);
        if (use_spec)
            skipset_free(&ss);
        goto free_all;
    }
    if (!out.stopped) {
        char tail[64];
        size_t n = utf8_stream_flush(&out.us, tail, sizeof tail);
        out_append(&out, tail, n);
        out_check_stops(&out, 1);
    }
    printf("\n");
    fflush(stdout);
    if (o->stats)
        print_stats(o, &st, use_spec ? &sps : NULL, use_spec ? ss.source : "", pipeline ? &pst : NULL);
    if (use_spec)
        skipset_free(&ss);
    rc = 0;
free_all:
    free(out.text);
    free(out.piece);
    fwd_state_free(&fs);
    kv_free(&kv);
free_ids:
    free(ids);
free_prompt:
    free(prompt);
free_tok:
    tokenizer_free(tok);
free_model:
    model_free(&m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage_main(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage_main(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "search"))
        return cmd_search(argc - 1, argv + 1);
    if (!strcmp(argv[1], "generate")) {
        gen_opts o = {0};
        if (parse_generate(argc - 1, argv + 1, &o) != 0)
            return 2;
        return run_generate(&o);
    }
    fprintf(stderr, "selfspec: unknown command '%s'\n", argv[1]);
    usage_main(stderr);
    return 2;
}
