/*
 * generate.c - `selfspec generate`: one prompt, its continuation streamed
 * to stdout (text, or token ids with --ids), figures on stderr (--stats).
 *
 * A thin shell: options, then the library does the work -- the prompt
 * through the chat template (text/), the skip-set choice (skipset_choose),
 * one of the decoding loops (decode/, ipc/ for the pipeline, the CUDA
 * backend), the text with its stop strings (decode/output.h) and the stats
 * line (decode/stats.h). All per-run state is local; nothing global.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <omp.h>

#include "cli.h"
#include "service.h"
#include "commands.h"
#include "model/cuda_backend.h"
#include "gen_cuda.h"
#include "decode/generate.h"
#include "decode/ngram.h"
#include "decode/output.h"
#include "decode/stats.h"
#include "engine/engine.h"
#include "model/model.h"
#include "pipeline.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "text/chat.h"
#include "text/prompts.h"
#include "text/tokenizer.h"
#include "util/util.h"

#define MAX_STOPS OUT_MAX_STOPS

typedef struct {
    svc_opts so;               /* the engine options every command shares (so.ep.sp: speculation) */
    const char *prompt;
    const char *prompt_file;
    const char *system;
    int pipeline;              /* --mode pipeline: the draft in a second process */
    pipe_params pl;            /* --mode pipeline */
    int chat;
    int ids;
    int stats;
    int ignore_eos;
    gen_params gp;
    const char *stops[MAX_STOPS];
    int n_stops;
} gen_opts;

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

/* What the emit callback needs: the text with its stop strings, and the
 * ids already printed (--ids). */
typedef struct {
    const gen_opts *o;
    out_text text;
    int n_ids;
} gen_out;


static void usage_generate(FILE *f)
{
    fprintf(f,
"usage: selfspec generate [options]\n"
"\n"
"Generate a continuation of a prompt and stream it to stdout.\n"
"\n"
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
"      --mode pipeline    self-spec with the draft in a second process\n"
"                         (bin/selfspec-drafter, started here) sharing the weights;\n"
"                         greedy, layer drafts only (other modes: below)\n"
"      --pipeline-sequential  pipeline without overlap (draft, then verify)\n"
"      --hb-ms MS         drafter heartbeat interval (default 100)\n"
"      --hb-timeout-ms MS drafter silence before it is killed and restarted (1000)\n"
"      --drafter-threads N  drafter threads (default: as --threads)\n"
"      --pipeline-seqs N  benchmark: decode the prompt as N sequences at once (the\n"
"                         drafter drafts one while another is verified); prints\n"
"                         sequence 0, --stats counts all\n"
"      --draft-device cuda:N  with --device cuda: the drafter on its own GPU (its\n"
"                         own copy of the sublayers it runs, the verified KV\n"
"                         copied to it as it grows; the GPUs must be peers)\n"
SVC_SPEC_HELP
"  -h, --help             this help\n"
"\n"
"Output is exactly the full model's: self-spec only changes speed. --stats adds\n"
"drafted/accepted counts, acceptance by draft position and the final threshold.\n",
            MAX_STOPS);
}

enum { OPT_CHAT = 256, OPT_SYSTEM, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_SEED, OPT_STOP, OPT_IGNORE_EOS, OPT_IDS,
       OPT_STATS, OPT_PIPE_SEQ, OPT_HB_MS, OPT_HB_TIMEOUT, OPT_DRAFTER_THREADS, OPT_PIPE_SEQS, OPT_DRAFT_DEVICE };
_Static_assert((int)OPT_DRAFT_DEVICE < (int)SVC_OPT_FIRST, "generate's option ids collide with the engine options'");

static int parse_generate(int argc, char **argv, gen_opts *o)
{
    static const struct option longopts[] = {
        {"prompt", required_argument, 0, 'p'},
        {"prompt-file", required_argument, 0, 'f'}, {"chat", no_argument, 0, OPT_CHAT},
        {"system", required_argument, 0, OPT_SYSTEM}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, OPT_TEMP}, {"top-k", required_argument, 0, OPT_TOPK},
        {"top-p", required_argument, 0, OPT_TOPP}, {"seed", required_argument, 0, OPT_SEED},
        {"stop", required_argument, 0, OPT_STOP}, {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"ids", no_argument, 0, OPT_IDS}, {"stats", no_argument, 0, OPT_STATS},
        {"help", no_argument, 0, 'h'},
        {"pipeline-sequential", no_argument, 0, OPT_PIPE_SEQ}, {"hb-ms", required_argument, 0, OPT_HB_MS},
        {"hb-timeout-ms", required_argument, 0, OPT_HB_TIMEOUT},
        {"drafter-threads", required_argument, 0, OPT_DRAFTER_THREADS},
        {"pipeline-seqs", required_argument, 0, OPT_PIPE_SEQS},
        {"draft-device", required_argument, 0, OPT_DRAFT_DEVICE},
        SVC_SPEC_LONG_OPTIONS,
        {0, 0, 0, 0}};
    long v;
    int c;
    o->gp.max_tokens = 256;
    o->gp.sampling = (sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    pipe_params_default(&o->pl);
    svc_opts_default(&o->so);
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:c:h", longopts, NULL)) != -1) {
        if (c == SVC_OPT_MODE && !strcmp(optarg, "pipeline")) {
            o->pipeline = 1;
            o->so.ep.mode = ENGINE_SPEC;   /* the drafter always drafts */
            continue;
        }
        if (c == SVC_OPT_MODE)
            o->pipeline = 0;
        int r = svc_parse_opt(&o->so, c, optarg);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        switch (c) {
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
        case OPT_DRAFT_DEVICE:
            if (cuda_parse_device(optarg, &o->pl.cuda_draft_device) || o->pl.cuda_draft_device < 0) {
                fprintf(stderr, "selfspec: --draft-device must be cuda or cuda:N, got '%s'\n", optarg);
                return -1;
            }
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
    char err[256];
    if (sampler_params_check(&o->gp.sampling, err, sizeof err) != 0 ||
        spec_params_check(&o->so.ep.sp, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    return 0;
}

/* ---- output ---- */

/* Print what became final (not with --ids). */
static void print_final(gen_out *g)
{
    const char *s;
    size_t n = out_text_take(&g->text, &s);
    if (!g->o->ids && n) {
        fwrite(s, 1, n, stdout);
        fflush(stdout);
    }
}

static int emit_token(void *ctx, int32_t token)
{
    gen_out *g = ctx;
    int stop = out_text_push(&g->text, token);
    if (g->o->ids) {
        printf(g->n_ids++ ? " %d" : "%d", token);
        fflush(stdout);
    }
    print_final(g);
    return stop || g_stop;   /* SIGINT/SIGTERM: end here, what was generated stays printed */
}

static int is_eog_cb(const void *ctx, int32_t token)
{
    return tokenizer_is_eog((const tokenizer *)ctx, token);
}

static void print_stats(const char *mode, const model *m, const gen_stats *st, const spec_stats *sp,
                        const char *skip_src, const pipe_params *pp, const pipe_stats *pst)
{
    cJSON *j = stats_json(mode, omp_get_max_threads(), st, sp, skip_src);
    /* weight bytes one full step streams (the bandwidth bound of plain decoding) */
    cJSON_AddNumberToObject(j, "arena_bytes_per_token", (double)model_step_bytes(m, NULL, NULL));
    if (pst) {   /* the pipeline's own fields, merged in */
        char *buf = NULL;
        size_t len = 0;
        FILE *mf = open_memstream(&buf, &len);
        if (mf) {
            fputc('{', mf);
            pipeline_print_stats(mf, pp, pst);
            fputc('}', mf);
            fclose(mf);
            cJSON *pj = cJSON_Parse(buf);
            for (cJSON *it = pj ? pj->child : NULL; it; it = it->next)
                cJSON_AddItemToObject(j, it->string, cJSON_Duplicate(it, 1));
            cJSON_Delete(pj);
        }
        free(buf);
    }
    char *line = cJSON_PrintUnformatted(j);
    fprintf(stderr, "%s\n", line);
    free(line);
    cJSON_Delete(j);
}

/* ---- generate ---- */

static int run_generate(gen_opts *o)
{
    char err[512], mbuf[PATH_MAX + 64];
    int rc = 1;
    model m;
    tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, plen = 0;
    char *prompt = NULL;
    gen_out out = {0};

    svc_opts *so = &o->so;
    if (so->threads)
        omp_set_num_threads(so->threads);
    if (o->pl.cuda_draft_device >= 0 && (!o->pipeline || so->device < 0)) {
        fprintf(stderr, "selfspec: --draft-device needs --mode pipeline and --device cuda[:N]\n");
        return 1;
    }
    if (so->device >= 0 && gen_cuda_check_device(so->device, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return 1;
    }
    if (!so->model_path)
        so->model_path = cli_default_model(mbuf, sizeof mbuf);
    char shm_name[64] = "";
    int pipeline = o->pipeline;
    if (o->pl.cuda_draft_device >= 0 && gen_cuda_check_device(o->pl.cuda_draft_device, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: --draft-device: %s\n", err);
        return 1;
    }
    if (pipeline)
        pipeline_prepare(shm_name, sizeof shm_name);
    if (model_load(&m, so->model_path, pipeline ? shm_name : NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot load model '%s': %s\n", so->model_path, err);
        return 1;
    }
    if (pipeline)
        pipeline_loaded(shm_name);
    if (!(tok = cli_load_tokenizer(so->model_path)))
        goto free_model;
    if (!(prompt = prompts_user_text(tok, o->prompt, o->prompt_file, o->chat, o->system, &plen, err, sizeof err))) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_tok;
    }
    if (tokenizer_encode(tok, prompt, plen, tokenizer_add_bos(tok), o->chat, &ids, &n_ids, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot tokenize the prompt: %s\n", err);
        goto free_prompt;
    }
    if (n_ids == 0) {
        fprintf(stderr, "selfspec: the prompt is empty\n");
        goto free_ids;
    }
    engine_params_resolve(&so->ep, &m.config);
    int32_t ctx = so->ep.ctx;
    if ((int64_t)n_ids + o->gp.max_tokens > ctx) {
        fprintf(stderr, "selfspec: prompt (%zu tokens) + max tokens (%d) exceed the context of %d tokens; "
                "shorten the prompt, lower -n or raise --ctx\n", n_ids, o->gp.max_tokens, ctx);
        goto free_ids;
    }
    o->gp.ignore_eos = o->ignore_eos;
    o->gp.is_eog = is_eog_cb;
    o->gp.eog_ctx = tok;
    out.o = o;
    if (out_text_init(&out.text, tok, o->stops, o->n_stops, o->ignore_eos, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_all;
    }
    gen_stats st;
    spec_stats sps;
    pipe_stats pst;
    spec_setup setup;
    char dir[PATH_MAX];
    cli_configs_dir(dir, sizeof dir);
    spec_want w = svc_spec_want(so);
    w.layers_only = pipeline;   /* the drafter process drafts by skipping layers only */
    if (spec_setup_choose(&setup, &w, &m.config, dir, &so->ep.sp, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto free_all;
    }
    if (setup.note[0])
        fprintf(stderr, "selfspec: %s\n", setup.note);
    int use_spec = setup.speculate;
    pipeline = pipeline && use_spec;
    const char *mode = pipeline ? "pipeline" : use_spec ? "self-spec" : "plain";
    const skip_set *ss = spec_setup_skipset(&setup);
    o->pl.model_path = so->model_path;
    o->pl.skip_path = ss ? ss->source : "none";
    o->pl.draft_head = so->draft_head;
    int grc = pipeline
        ? gen_pipeline(&m, so->device, ctx, &so->ep.sp, &o->pl, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st,
                       &sps, &pst, err, sizeof err)
        : so->device >= 0
        ? gen_cuda(&m, so->device, ctx, ss, &so->ep.sp, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st,
                   use_spec ? &sps : NULL, err, sizeof err)
        : engine_generate(&m, ctx, ss, &so->ep.sp, ids, (int32_t)n_ids, &o->gp, emit_token, &out, &st,
                          use_spec ? &sps : NULL, err, sizeof err);
    if (grc != 0) {
        fprintf(stderr, "\nselfspec: generation failed: %s\n", err);
        spec_setup_free(&setup);
        goto free_all;
    }
    out_text_finish(&out.text);
    print_final(&out);
    printf("\n");
    fflush(stdout);
    if (o->stats)
        print_stats(mode, &m, &st, use_spec ? &sps : NULL, spec_setup_source(&setup), &o->pl,
                    pipeline ? &pst : NULL);
    spec_setup_free(&setup);
    rc = 0;
free_all:
    out_text_free(&out.text);
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

int cmd_generate(int argc, char **argv)
{
    gen_opts o = {0};
    if (parse_generate(argc, argv, &o) != 0)
        return 2;
    /* before anything is loaded: a signal ends generation at its next token */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    return run_generate(&o);
}
