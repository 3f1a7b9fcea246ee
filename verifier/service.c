/*
 * service.c - engine options and set-up shared by `worker` and `serve`
 * (service.h); the same choices as `batch` (verifier/batch.c): the model's
 * context capped at 4096, the skip set from configs/, --mode auto decoding
 * plainly where the set's own search measured no speedup.
 */
#include "service.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <cblas.h>
#include <omp.h>

#include "cli.h"
#include "gen_cuda.h"
#include "model/backend.h"
#include "model/cuda_backend.h"

void svc_opts_default(svc_opts *o)
{
    memset(o, 0, sizeof *o);
    engine_params_default(&o->ep);
    o->ep.max_seqs = 32;
    o->ep.kv_mem = (size_t)512 << 20;
    o->ep.ctx = 0;
    o->draft_head = -1;
    o->device = -1;
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
    case SVC_OPT_GAMMA: {
        float g;
        if (cli_parse_float(optarg, "--gamma", &g)) return -1;
        if (!(g >= 0.0f && g <= 1.0f)) {
            fprintf(stderr, "selfspec: --gamma must be in [0, 1], got %g\n", g);
            return -1;
        }
        o->ep.sp.gamma_init = g;
        o->exit_given |= SPEC_GIVEN_GAMMA_INIT;
        return 1;
    }
    case 't':
        if (cli_parse_int(optarg, "--threads", 1, 1024, &v)) return -1;
        o->threads = (int)v;
        return 1;
    default:
        return 0;
    }
}

int svc_engine_init(svc_engine *s, svc_opts *o)
{
    char err[512], mbuf[PATH_MAX + 64], dir[PATH_MAX];
    memset(s, 0, sizeof *s);
    if (o->threads)
        omp_set_num_threads(o->threads);
    openblas_set_num_threads(1);
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
    s->model_name = s->m.config.name[0] ? s->m.config.name : "selfspec";
    if (!o->ep.ctx)
        o->ep.ctx = s->m.config.ctx_train < 4096 ? s->m.config.ctx_train : 4096;
    if (o->ep.mode != ENGINE_PLAIN) {
        cli_configs_dir(dir, sizeof dir);
        int c = skipset_choose(&s->ss, o->skip, o->draft_head, dir, &s->m.config, err, sizeof err);
        if (c < 0) {
            fprintf(stderr, "selfspec: bad skip set: %s\n", err);
            return -1;
        }
        s->have_ss = c == 0;
        if (s->have_ss)   /* the exit the config's search tuned, under --gamma */
            spec_params_apply_exit(&o->ep.sp, &s->ss.exit, o->exit_given);
        if (c > 0 && !o->quiet)
            fprintf(stderr, "selfspec: %s; decoding plainly\n", err);
    }
    if (s->have_ss && o->ep.mode == ENGINE_AUTO && !o->skip && !skipset_pays(&s->ss)) {
        if (!o->quiet)
            fprintf(stderr, "selfspec: the skip set in %s measured %.2fx plain decoding; --mode auto decodes "
                    "plainly (--mode self-spec forces speculation)\n", s->ss.source, s->ss.speedup);
        skipset_free(&s->ss);
        s->have_ss = 0;
    }
    o->ep.ss = s->have_ss ? &s->ss : NULL;
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
    if (s->have_ss)
        skipset_free(&s->ss);
    tokenizer_free(s->tok);
    if (s->loaded)
        model_free(&s->m);
    memset(s, 0, sizeof *s);
}
