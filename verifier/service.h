/*
 * service.h - what `worker` and `serve` share in the verifier: the engine
 * options (those of `batch`), and loading model + tokenizer + skip set +
 * engine from them the way `batch` does.
 */
#ifndef SELFSPEC_SERVICE_H
#define SELFSPEC_SERVICE_H

#include <getopt.h>

#include "decode/skipset.h"
#include "engine/engine.h"
#include "model/model.h"
#include "text/tokenizer.h"

typedef struct {
    const char *model_path, *skip;
    engine_params ep;
    int32_t draft_head;
    unsigned exit_given;   /* SPEC_GIVEN_*: --gamma given (else the config's exit) */
    int threads;
    int quiet;
    int device;                /* --device: -1 the CPU, else the CUDA device */
} svc_opts;

/* The long options of svc_opts (ids from SVC_OPT_FIRST), to append to a
 * command's own; the short ones are "m:c:t:q". */
enum { SVC_OPT_FIRST = 300, SVC_OPT_MAX_SEQS = SVC_OPT_FIRST, SVC_OPT_MAX_BATCH_TOKENS, SVC_OPT_KV_MEM,
       SVC_OPT_MODE, SVC_OPT_SKIP, SVC_OPT_DRAFT_HEAD, SVC_OPT_DRAFT_MAX, SVC_OPT_DEVICE, SVC_OPT_GAMMA, SVC_OPT_LAST };
#define SVC_LONG_OPTIONS                                                                                      \
    {"model", required_argument, 0, 'm'}, {"max-seqs", required_argument, 0, SVC_OPT_MAX_SEQS},              \
        {"max-batch-tokens", required_argument, 0, SVC_OPT_MAX_BATCH_TOKENS},                                 \
        {"kv-mem", required_argument, 0, SVC_OPT_KV_MEM}, {"ctx", required_argument, 0, 'c'},                 \
        {"mode", required_argument, 0, SVC_OPT_MODE}, {"skip", required_argument, 0, SVC_OPT_SKIP},           \
        {"draft-head", required_argument, 0, SVC_OPT_DRAFT_HEAD},                                             \
        {"draft-max", required_argument, 0, SVC_OPT_DRAFT_MAX}, {"threads", required_argument, 0, 't'},       \
        {"gamma", required_argument, 0, SVC_OPT_GAMMA},                                                       \
        {"quiet", no_argument, 0, 'q'}, {"device", required_argument, 0, SVC_OPT_DEVICE}
#define SVC_HELP                                                                                              \
    "  -m, --model FILE       GGUF model (default: the default model)\n"                                     \
    "      --max-seqs N       sequences decoded at once (default 32)\n"                                      \
    "      --max-batch-tokens N  tokens in one forward pass at most (default 256)\n"                         \
    "      --kv-mem MB        KV memory in MiB (default 512)\n"                                              \
    "  -c, --ctx N            longest request, prompt + max_tokens (default min(model's, 4096))\n"           \
    "      --mode MODE        auto (default), plain, or self-spec\n"                                         \
    "      --skip FILE|none   skip-set config (default: the model's config in configs/)\n"                   \
    "      --draft-head N     pruned draft head size (default: the config's)\n"                              \
    "      --draft-max K      most tokens per draft (default 12)\n"                                          \
    "      --device DEV       cpu (default) or cuda[:N]: the same engine on a GPU\n"                        \
    "      --gamma G          initial draft-exit threshold (default: the config's tuned exit, else 0.6)\n"   \
    "  -t, --threads N        decoding threads (default: all cores)\n"                                       \
    "  -q, --quiet            no progress on stderr\n"

/* Defaults (batch's). */
void svc_opts_default(svc_opts *o);

/* Handle option c (with optarg) when it is one of svc_opts': 1 handled,
 * 0 not one of them, -1 bad value (printed). */
int svc_parse_opt(svc_opts *o, int c, const char *optarg);

/* Everything a front end decodes with. */
typedef struct {
    model m;
    tokenizer *tok;
    skip_set ss;
    int have_ss;
    engine *e;
    model_backend *be;         /* --device cuda: the engine's backend */
    const char *model_name;
    int loaded;
} svc_engine;

/* Load the model, tokenizer and skip set and build the engine (messages on
 * stderr). Returns 0 or -1; svc_engine_free is right after either. */
int svc_engine_init(svc_engine *s, svc_opts *o);
void svc_engine_free(svc_engine *s);

#endif
