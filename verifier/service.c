/*
 * service.c - the engine options every command shares and the set-up of
 * what a command decodes with (service.h).
 */
#include "service.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <omp.h>

#include "cli.h"
#include "decode/ngram.h"
#include "gen_cuda.h"
#include "model/backend.h"
#include "model/cuda_backend.h"
#include "kernels/qmat.h"
#include "serve/job.h"

void svc_opts_default(svc_opts *o)
{
    memset(o, 0, sizeof *o);
    engine_params_default(&o->ep);
    o->draft_head = -1;
    o->device = -1;
}

/* A float in [0, 1] for option `what`. */
static int parse_unit(const char *arg, const char *what, float *out)
{
    float g;
    if (cli_parse_float(arg, what, &g))
        return -1;
    if (!(g >= 0.0f && g <= 1.0f)) {
        fprintf(stderr, "selfspec: %s must be in [0, 1], got %g\n", what, g);
        return -1;
    }
    *out = g;
    return 0;
}

int svc_parse_opt(svc_opts *o, int c, const char *optarg)
{
    long v;
    switch (c) {
    case 'm': o->model_path = optarg; return 1;
    case 'q': o->quiet = 1; return 1;
    case SVC_OPT_DEVICE:
        if (cuda_parse_device(optarg, &o->device)) {
            fprintf(stderr, "selfspec: --device must be cpu, cuda or cuda:N, got '%s'\n", optarg);
            return -1;
        }
        return 1;
    case SVC_OPT_SKIP: o->skip = optarg; return 1;
    case SVC_OPT_MAX_SEQS:
        if (cli_parse_int(optarg, "--max-seqs", 1, 1024, &v)) return -1;
        o->ep.max_seqs = (int32_t)v;
        return 1;
    case SVC_OPT_MAX_BATCH_TOKENS:
        if (cli_parse_int(optarg, "--max-batch-tokens", 1, 8192, &v)) return -1;
        o->ep.max_batch_tokens = (int32_t)v;
        return 1;
    case SVC_OPT_KV_MEM:
        if (cli_parse_int(optarg, "--kv-mem", 1, 1 << 20, &v)) return -1;
        o->ep.kv_mem = (size_t)v << 20;
        return 1;
    case 'c':
        if (cli_parse_int(optarg, "--ctx", 16, 1 << 20, &v)) return -1;
        o->ep.ctx = (int32_t)v;
        return 1;
    case SVC_OPT_MODE:
        if (engine_parse_mode(optarg, &o->ep.mode) != 0) {
            fprintf(stderr, "selfspec: unknown --mode '%s' (available: auto, plain, self-spec)\n", optarg);
            return -1;
        }
        return 1;
    case SVC_OPT_DRAFT_HEAD:
        if (cli_parse_int(optarg, "--draft-head", 0, 1 << 24, &v)) return -1;
        o->draft_head = (int32_t)v;
        return 1;
    case SVC_OPT_DRAFT_MAX:
        if (cli_parse_int(optarg, "--draft-max", 1, SPEC_MAX_DRAFT, &v)) return -1;
        o->ep.sp.max_draft = (int32_t)v;
        return 1;
    case SVC_OPT_GAMMA:
        if (parse_unit(optarg, "--gamma", &o->ep.sp.gamma_init)) return -1;
        o->exit_given |= SPEC_GIVEN_GAMMA_INIT;
        return 1;
    case SVC_OPT_GAMMA_STEP:
        if (parse_unit(optarg, "--gamma-step", &o->ep.sp.gamma_step)) return -1;
        o->exit_given |= SPEC_GIVEN_GAMMA_STEP;
        return 1;
    case SVC_OPT_AR_TARGET:
        if (parse_unit(optarg, "--ar-target", &o->ep.sp.ar_target)) return -1;
        return 1;
    case SVC_OPT_DRAFT:
        if (spec_parse_draft(optarg, &o->ep.sp.draft) != 0) {
            fprintf(stderr, "selfspec: unknown --draft '%s' (available: auto, layers, context, chain)\n", optarg);
            return -1;
        }
        return 1;
    case SVC_OPT_NGRAM_MIN:
        if (cli_parse_int(optarg, "--ngram-min", 1, NGRAM_MAX_N, &v)) return -1;
        o->ep.sp.ngram_min = (int32_t)v;
        return 1;
    case SVC_OPT_NGRAM_MAX:
        if (cli_parse_int(optarg, "--ngram-max", 1, NGRAM_MAX_N, &v)) return -1;
        o->ep.sp.ngram_max = (int32_t)v;
        return 1;
    case SVC_OPT_SERVED_NAME:
        if (!optarg[0] || strlen(optarg) > 200) {
            fprintf(stderr, "selfspec: --served-model-name must be 1 to 200 bytes\n");
            return -1;
        }
        o->served_name = optarg;
        return 1;
    case SVC_OPT_JOB_INDEX:
        if (cli_parse_int(optarg, "--job-index", 0, 1 << 28, &v)) return -1;
        o->ep.job_index_tokens = (int32_t)v;
        return 1;
    case SVC_OPT_FORCED_DRAFTS:
    case SVC_OPT_TREES:
    case SVC_OPT_PREFIX_CACHE:
        if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
            fprintf(stderr, "selfspec: --%s takes on or off, got '%s'\n",
                    c == SVC_OPT_TREES ? "trees" : c == SVC_OPT_PREFIX_CACHE ? "prefix-cache" : "forced-drafts", optarg);
            return -1;
        }
        *(c == SVC_OPT_TREES ? &o->ep.trees : c == SVC_OPT_PREFIX_CACHE ? &o->ep.prefix_cache : &o->ep.forced_drafts) =
            optarg[1] == 'n';
        return 1;
    case SVC_OPT_AMX:
        if (!strcmp(optarg, "auto")) {
            qmat_set_amx(QMAT_AMX_MIN_T_DEFAULT);
        } else if (!strcmp(optarg, "off")) {
            qmat_set_amx(0);
        } else {
            if (cli_parse_int(optarg, "--amx", 1, 1 << 16, &v)) return -1;
            qmat_set_amx((int)v);
        }
        return 1;
    case SVC_OPT_USAGE_DETAILS:
        o->usage_details = 1;
        return 1;
    case SVC_OPT_TOKEN_COST:
        if (cli_parse_float(optarg, "--token-cost", &o->ep.sp.token_cost)) return -1;
        return 1;
    case 't':
        if (cli_parse_int(optarg, "--threads", 1, 1024, &v)) return -1;
        o->threads = (int)v;
        return 1;
    default:
        return 0;
    }
}

spec_want svc_spec_want(const svc_opts *o)
{
    return (spec_want){.skip = o->skip, .draft_head = o->draft_head, .exit_given = o->exit_given,
                       .plain = o->ep.mode == ENGINE_PLAIN, .forced = o->ep.mode == ENGINE_SPEC};
}

int svc_engine_init(svc_engine *s, svc_opts *o)
{
    char err[512], mbuf[PATH_MAX + 64], dir[PATH_MAX];
    memset(s, 0, sizeof *s);
    if (o->threads)
        omp_set_num_threads(o->threads);
    if (!o->model_path)
        o->model_path = cli_default_model(mbuf, sizeof mbuf);
    if (model_load(&s->m, o->model_path, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot load model '%s': %s\n", o->model_path, err);
        return -1;
    }
    s->loaded = 1;
    s->tok = cli_load_tokenizer(o->model_path);
    if (!s->tok)
        return -1;
    if (o->served_name) {
        snprintf(s->model_name_buf, sizeof s->model_name_buf, "%s", o->served_name);
    } else {   /* the file's base name: models/gemma-3-270m-q4_k_m.gguf -> gemma-3-270m-q4_k_m */
        const char *base = strrchr(o->model_path, '/');
        snprintf(s->model_name_buf, sizeof s->model_name_buf, "%s", base ? base + 1 : o->model_path);
        size_t n = strlen(s->model_name_buf);
        if (n > 5 && strcmp(s->model_name_buf + n - 5, ".gguf") == 0)
            s->model_name_buf[n - 5] = '\0';
    }
    s->model_name = s->model_name_buf;
    struct stat stt;
    job_fingerprint(&s->m.config, stat(o->model_path, &stt) == 0 ? (uint64_t)stt.st_size : 0, s->fingerprint);
    engine_params_resolve(&o->ep, &s->m.config);
    cli_configs_dir(dir, sizeof dir);
    spec_want w = svc_spec_want(o);
    if (spec_setup_choose(&s->setup, &w, &s->m.config, dir, &o->ep.sp, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    if (s->setup.note[0] && !o->quiet)
        fprintf(stderr, "selfspec: %s\n", s->setup.note);
    o->ep.ss = spec_setup_skipset(&s->setup);
    if (o->device >= 0 && !(s->be = gen_cuda_backend(&s->m, o->device, &o->ep, err, sizeof err))) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    if (engine_init(&s->e, &s->m, &o->ep, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return -1;
    }
    return 0;
}

void svc_engine_free(svc_engine *s)
{
    engine_free(s->e);
    backend_cuda_close(s->be);
    spec_setup_free(&s->setup);
    tokenizer_free(s->tok);
    if (s->loaded)
        model_free(&s->m);
    memset(s, 0, sizeof *s);
}
