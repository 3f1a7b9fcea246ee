/*
 * service.h - the engine options every command shares, and loading what a
 * command decodes with (model, tokenizer, the draft set-up, the engine).
 *
 * Two groups of flags, parsed and documented here once:
 *   SVC_SPEC_*   what and how to speculate, the model, the device: taken
 *                by generate, batch, serve and worker;
 *   SVC_BATCH_*  how many sequences at once and their memory: taken by
 *                batch, serve and worker (generate decodes one sequence).
 * Their defaults are engine_params_default's. Whether and what to draft is
 * decided by spec_setup_choose (decode/setup.h), for every command.
 */
#ifndef SELFSPEC_SERVICE_H
#define SELFSPEC_SERVICE_H

#include <getopt.h>

#include "decode/setup.h"
#include "engine/engine.h"
#include "model/model.h"
#include "text/tokenizer.h"

typedef struct {
    const char *model_path, *skip;
    engine_params ep;          /* engine_params_default, then the flags */
    int32_t draft_head;        /* --draft-head: -1 the config's */
    unsigned exit_given;       /* SPEC_GIVEN_*: exit constants set on the command line */
    int threads;
    int quiet;
    int device;                /* --device: -1 the CPU, else the CUDA device */
    const char *served_name;   /* --served-model-name: NULL = the model file's base name */
    int usage_details;         /* --usage-details: usage.completion_tokens_details in results */
} svc_opts;

/* The long options (ids from SVC_OPT_FIRST), to append to a command's own;
 * the short ones are "m:c:t:" (+ "q" with the batch group). */
enum { SVC_OPT_FIRST = 300, SVC_OPT_MAX_SEQS = SVC_OPT_FIRST, SVC_OPT_MAX_BATCH_TOKENS, SVC_OPT_KV_MEM,
       SVC_OPT_MODE, SVC_OPT_SKIP, SVC_OPT_DRAFT_HEAD, SVC_OPT_DRAFT_MAX, SVC_OPT_DEVICE, SVC_OPT_GAMMA,
       SVC_OPT_GAMMA_STEP, SVC_OPT_AR_TARGET, SVC_OPT_DRAFT, SVC_OPT_NGRAM_MIN, SVC_OPT_NGRAM_MAX,
       SVC_OPT_TOKEN_COST, SVC_OPT_JOB_INDEX, SVC_OPT_SERVED_NAME, SVC_OPT_FORCED_DRAFTS, SVC_OPT_USAGE_DETAILS,
       SVC_OPT_AMX, SVC_OPT_TREES, SVC_OPT_PREFIX_CACHE, SVC_OPT_LAST };
#define SVC_SPEC_LONG_OPTIONS                                                                                 \
    {"model", required_argument, 0, 'm'}, {"ctx", required_argument, 0, 'c'},                                 \
        {"threads", required_argument, 0, 't'}, {"device", required_argument, 0, SVC_OPT_DEVICE},             \
        {"mode", required_argument, 0, SVC_OPT_MODE}, {"skip", required_argument, 0, SVC_OPT_SKIP},           \
        {"draft", required_argument, 0, SVC_OPT_DRAFT}, {"ngram-min", required_argument, 0, SVC_OPT_NGRAM_MIN}, \
        {"ngram-max", required_argument, 0, SVC_OPT_NGRAM_MAX},                                               \
        {"token-cost", required_argument, 0, SVC_OPT_TOKEN_COST},                                             \
        {"amx", required_argument, 0, SVC_OPT_AMX},                                                           \
        {"draft-head", required_argument, 0, SVC_OPT_DRAFT_HEAD},                                             \
        {"draft-max", required_argument, 0, SVC_OPT_DRAFT_MAX}, {"gamma", required_argument, 0, SVC_OPT_GAMMA}, \
        {"gamma-step", required_argument, 0, SVC_OPT_GAMMA_STEP},                                             \
        {"ar-target", required_argument, 0, SVC_OPT_AR_TARGET}
#define SVC_BATCH_LONG_OPTIONS                                                                                \
    {"max-seqs", required_argument, 0, SVC_OPT_MAX_SEQS},                                                     \
        {"max-batch-tokens", required_argument, 0, SVC_OPT_MAX_BATCH_TOKENS},                                 \
        {"kv-mem", required_argument, 0, SVC_OPT_KV_MEM}, {"quiet", no_argument, 0, 'q'},                  \
        {"job-index", required_argument, 0, SVC_OPT_JOB_INDEX},                                              \
        {"forced-drafts", required_argument, 0, SVC_OPT_FORCED_DRAFTS},                                      \
        {"trees", required_argument, 0, SVC_OPT_TREES},                                                       \
        {"prefix-cache", required_argument, 0, SVC_OPT_PREFIX_CACHE},                                         \
        {"usage-details", no_argument, 0, SVC_OPT_USAGE_DETAILS},                                            \
        {"served-model-name", required_argument, 0, SVC_OPT_SERVED_NAME}
#define SVC_LONG_OPTIONS SVC_SPEC_LONG_OPTIONS, SVC_BATCH_LONG_OPTIONS

#define SVC_SPEC_HELP                                                                                         \
    "  -m, --model FILE       GGUF model (default: $SELFSPEC_MODEL, else the default model)\n"              \
    "  -c, --ctx N            longest request, prompt + max_tokens (default min(model's, 4096))\n"           \
    "  -t, --threads N        decoding threads (default: all cores)\n"                                       \
    "      --device DEV       cpu (default) or cuda[:N]: the same engine on a GPU\n"                        \
    "      --mode MODE        auto (default: speculate where it pays), plain, or self-spec\n"               \
    "                         (always draft, even where the skip set's search measured a loss)\n"           \
    "      --draft SRC        draft sources: auto (default: per step and sequence the source\n"             \
    "                         with the most expected tokens per unit of measured cost), layers\n"            \
    "                         (layer-skipping draft), context (what followed the last tokens\n"             \
    "                         earlier in the prompt or output), chain (context, then layers)\n"             \
    "      --ngram-max N      context drafts: longest suffix matched (3); --ngram-min N (1)\n"              \
    "      --amx auto|off|T   Intel AMX for passes of at least T tokens (auto: the measured default;\n"   \
    "                         off: the build's kernel everywhere; same output either way)\n"            \
    "      --token-cost C     what one more verified token costs, a share of a step, where the\n"           \
    "                         choice must not depend on timings (0.2; auto measures its own)\n"            \
    "      --skip FILE|none   skip-set config (default: the model's config in configs/;\n"                   \
    "                         none: draft with the full model)\n"                                           \
    "      --draft-head N     pruned draft head size (0 = full vocabulary; default: the config's)\n"       \
    "      --draft-max K      most tokens per draft (default 12)\n"                                          \
    "      --gamma G          initial draft-exit threshold (default: the config's tuned exit, else 0.6)\n"   \
    "      --gamma-step S     adaptive exit step (default: the config's, else 0.01)\n"                       \
    "      --ar-target A      acceptance-rate target of the adaptive exit (0.9)\n"
#define SVC_BATCH_HELP                                                                                        \
    "      --max-seqs N       sequences decoded at once (default 32)\n"                                      \
    "      --max-batch-tokens N  tokens in one forward pass at most (default 256)\n"                         \
    "      --kv-mem MB        KV memory in MiB (default 512)\n"                                              \
    "      --job-index N      drafts from the job's finished requests: tokens kept (default 131072; 0 off)\n" \
    "      --forced-drafts on|off  response_format: the schema's forced text as free drafts (on)\n"      \
    "      --trees on|off     greedy context drafts: verify a tree of the match's continuations\n"      \
    "                         where the cost model says it pays (on; the CPU backend only)\n"          \
    "      --prefix-cache on|off  keep computed prompt blocks for later prompts that start\n"      \
    "                         the same way (on; the CPU backend only; same output)\n"                \
    "      --usage-details    usage.completion_tokens_details: accepted and rejected draft tokens\n"     \
    "                         (they depend on speculation and timing: results then differ by mode)\n"  \
    "      --served-model-name NAME  the model id in responses and /v1/models (default: the\n"              \
    "                         model file's name without directory and .gguf)\n"                              \
    "  -q, --quiet            no progress on stderr\n"
#define SVC_HELP SVC_SPEC_HELP SVC_BATCH_HELP

/* The defaults: engine_params_default, no skip path (the model's config),
 * the config's draft head, the CPU. */
void svc_opts_default(svc_opts *o);

/* Handle option c (with optarg) when it is one of svc_opts': 1 handled,
 * 0 not one of them, -1 bad value (printed). */
int svc_parse_opt(svc_opts *o, int c, const char *optarg);

/* What o asks of the speculation set-up (decode/setup.h). */
spec_want svc_spec_want(const svc_opts *o);

/* Everything a front end decodes with. */
typedef struct {
    model m;
    tokenizer *tok;
    spec_setup setup;
    engine *e;
    model_backend *be;         /* --device cuda: the engine's backend */
    const char *model_name;    /* --served-model-name, else the file's base name */
    char model_name_buf[256];
    char fingerprint[24];      /* system_fingerprint (job_fingerprint) */
    int loaded;
} svc_engine;

/* Load the model, tokenizer and draft set-up and build the engine
 * (messages on stderr). Returns 0 or -1; svc_engine_free is right after
 * either. */
int svc_engine_init(svc_engine *s, svc_opts *o);
void svc_engine_free(svc_engine *s);

#endif
