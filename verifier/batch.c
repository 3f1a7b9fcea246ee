/*
 * batch.c - `selfspec batch -i FILE|- -o FILE|-`: OpenAI batch files in and
 * out (vLLM's run-batch format), every request through the one engine loop.
 *
 * Input lines are read as they arrive (with -i - a pipe any queue system can
 * drive), at most 2 x --max-seqs requests ahead of the engine; each result
 * is written and flushed as its request finishes (one write() per line). A
 * bad line gets its own error line (status 400) and the job goes on.
 *
 * Resuming: with -o FILE, the custom_ids already complete in FILE are
 * skipped and a torn last line (a kill -9 mid-write) is cut off and redone,
 * so after any number of kills and restarts the file holds each custom_id
 * once. Output bytes depend only on the request and the input file (ids are
 * hashes of custom_id, `created` is the input file's mtime), so a resumed
 * job writes the same bytes as an uninterrupted one. SIGTERM/SIGINT: stop
 * reading, finish what is in flight, write it, exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cblas.h>
#include <omp.h>

#include "api/batchio.h"
#include "cli.h"
#include "commands.h"
#include "decode/output.h"
#include "decode/sampler.h"
#include "decode/skipset.h"
#include "decode/ngram.h"
#include "engine/engine.h"
#include "gen_cuda.h"
#include "model/backend.h"
#include "model/cuda_backend.h"
#include "model/model.h"
#include "serve/job.h"
#include "text/tokenizer.h"
#include "util/util.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

typedef struct {
    const char *in_path, *out_path, *model_path, *skip;
    engine_params ep;
    int32_t draft_head;
    unsigned exit_given;       /* SPEC_GIVEN_*: --gamma given (else the config's exit) */
    int threads;
    int quiet;
    int device;                /* --device: -1 the CPU, else the CUDA device */
} batch_opts;

/* The job: everything the per-request callbacks need. */
typedef struct {
    const batch_opts *o;
    const tokenizer *tok;
    const char *model_name;
    int64_t created;
    int out_fd;
    batch_idset *done;      /* complete in the output file before this run */
    batch_idset *seen;      /* custom_ids read in this run */
    size_t line_no;
    int64_t n_read, n_ok, n_err, n_skipped;
    int64_t prompt_tokens, output_tokens;
    int write_failed;
} batch_job;

/* One request in flight. */
typedef struct {
    batch_job *job;
    char *custom_id;
    batch_kind kind;
    char *stops[BATCH_MAX_STOP];
    int n_stops;
    out_text text;
} batch_req;

static void usage_batch(FILE *f)
{
    fprintf(f,
"usage: selfspec batch -i FILE|- -o FILE|- [options]\n"
"\n"
"Run an OpenAI batch file (JSONL; /v1/completions and /v1/chat/completions)\n"
"through the continuous-batching engine and write one result line per\n"
"request as it finishes. With -o FILE an interrupted job resumes: requests\n"
"already in FILE are skipped.\n"
"\n"
"  -i, --input FILE       requests, one JSON object a line ('-' = stdin, read as it arrives)\n"
"  -o, --output FILE      results ('-' = stdout)\n"
"  -m, --model FILE       GGUF model (default: the default model)\n"
"      --max-seqs N       sequences decoded at once (default 32)\n"
"      --max-batch-tokens N  tokens in one forward pass at most (default 256)\n"
"      --kv-mem MB        KV memory in MiB (default 512)\n"
"  -c, --ctx N            longest request, prompt + max_tokens (default min(model's, 4096))\n"
"      --mode MODE        auto (default: speculation where the measured cost model says\n"
"                         it pays), plain, or self-spec (always draft)\n"
"      --skip FILE|none   skip-set config (default: the model's config in configs/)\n"
"      --draft-head N     pruned draft head size (default: the config's)\n"
"      --draft SRC        draft sources: auto (default: per step and sequence the source\n"
"                         with the most expected tokens per unit of measured cost),\n"
"                         layers (layer-skipping draft), context (what followed the\n"
"                         last tokens earlier in the prompt or output), chain\n"
"      --ngram-max N      context drafts: longest suffix matched (3); --ngram-min N (1)\n"
"      --token-cost C     --mode self-spec --draft auto: nominal cost of one more verified\n"
"                         token, a share of a step (0.2; auto measures its own)\n"
"      --draft-max K      most tokens per draft (default 12)\n"
"      --gamma G          initial draft-exit threshold (default: the skip-set\n"
"                         config's tuned \"exit\", else 0.6)\n"
"      --device DEV       cpu (default) or cuda[:N]: the same engine on a GPU\n"
"  -t, --threads N        worker threads (default: all cores)\n"
"  -q, --quiet            no progress on stderr\n"
"  -h, --help             this help\n");
}

enum { OPT_MAX_SEQS = 400, OPT_MAX_BATCH_TOKENS, OPT_KV_MEM, OPT_MODE, OPT_SKIP, OPT_DRAFT_HEAD, OPT_DRAFT_MAX,
       OPT_DRAFT, OPT_NGRAM_MIN, OPT_NGRAM_MAX, OPT_TOKEN_COST, OPT_DEVICE, OPT_GAMMA };

static int parse_batch(int argc, char **argv, batch_opts *o)
{
    static const struct option lo[] = {
        {"input", required_argument, 0, 'i'}, {"output", required_argument, 0, 'o'},
        {"model", required_argument, 0, 'm'}, {"max-seqs", required_argument, 0, OPT_MAX_SEQS},
        {"max-batch-tokens", required_argument, 0, OPT_MAX_BATCH_TOKENS},
        {"kv-mem", required_argument, 0, OPT_KV_MEM}, {"ctx", required_argument, 0, 'c'},
        {"mode", required_argument, 0, OPT_MODE}, {"skip", required_argument, 0, OPT_SKIP},
        {"draft-head", required_argument, 0, OPT_DRAFT_HEAD}, {"draft-max", required_argument, 0, OPT_DRAFT_MAX},
        {"threads", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'},
        {"draft", required_argument, 0, OPT_DRAFT}, {"ngram-min", required_argument, 0, OPT_NGRAM_MIN},
        {"ngram-max", required_argument, 0, OPT_NGRAM_MAX},
        {"token-cost", required_argument, 0, OPT_TOKEN_COST}, {"device", required_argument, 0, OPT_DEVICE},
        {"gamma", required_argument, 0, OPT_GAMMA},
        {0, 0, 0, 0}};
    long v;
    int c;
    memset(o, 0, sizeof *o);
    engine_params_default(&o->ep);
    o->ep.max_seqs = 32;
    o->ep.kv_mem = (size_t)512 << 20;
    o->ep.ctx = 0;   /* the model's, capped, once it is loaded */
    o->draft_head = -1;
    o->device = -1;
    o->ep.sp.draft = SPEC_DRAFT_AUTO;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:o:m:c:t:qh", lo, NULL)) != -1) {
        switch (c) {
        case 'i': o->in_path = optarg; break;
        case 'o': o->out_path = optarg; break;
        case 'm': o->model_path = optarg; break;
        case OPT_MAX_SEQS:
            if (cli_parse_int(optarg, "--max-seqs", 1, 1024, &v)) return -1;
            o->ep.max_seqs = (int32_t)v;
            break;
        case OPT_MAX_BATCH_TOKENS:
            if (cli_parse_int(optarg, "--max-batch-tokens", 1, 8192, &v)) return -1;
            o->ep.max_batch_tokens = (int32_t)v;
            break;
        case OPT_KV_MEM:
            if (cli_parse_int(optarg, "--kv-mem", 1, 1 << 20, &v)) return -1;
            o->ep.kv_mem = (size_t)v << 20;
            break;
        case 'c':
            if (cli_parse_int(optarg, "--ctx", 16, 1 << 20, &v)) return -1;
            o->ep.ctx = (int32_t)v;
            break;
        case OPT_MODE:
            if (engine_parse_mode(optarg, &o->ep.mode) != 0) {
                fprintf(stderr, "selfspec: unknown --mode '%s' (available: auto, plain, self-spec)\n", optarg);
                return -1;
            }
            break;
        case OPT_SKIP: o->skip = optarg; break;
        case OPT_DRAFT:
            if (spec_parse_draft(optarg, &o->ep.sp.draft) != 0) {
                fprintf(stderr, "selfspec: unknown --draft '%s' (available: auto, layers, context, chain)\n", optarg);
                return -1;
            }
            break;
        case OPT_NGRAM_MIN:
            if (cli_parse_int(optarg, "--ngram-min", 1, NGRAM_MAX_N, &v)) return -1;
            o->ep.sp.ngram_min = (int32_t)v;
            break;
        case OPT_TOKEN_COST: if (cli_parse_float(optarg, "--token-cost", &o->ep.sp.token_cost)) return -1; break;
        case OPT_GAMMA:
            if (cli_parse_float(optarg, "--gamma", &o->ep.sp.gamma_init)) return -1;
            o->exit_given |= SPEC_GIVEN_GAMMA_INIT;
            break;
        case OPT_NGRAM_MAX:
            if (cli_parse_int(optarg, "--ngram-max", 1, NGRAM_MAX_N, &v)) return -1;
            o->ep.sp.ngram_max = (int32_t)v;
            break;
        case OPT_DRAFT_HEAD:
            if (cli_parse_int(optarg, "--draft-head", 0, 1 << 24, &v)) return -1;
            o->draft_head = (int32_t)v;
            break;
        case OPT_DRAFT_MAX:
            if (cli_parse_int(optarg, "--draft-max", 1, SPEC_MAX_DRAFT, &v)) return -1;
            o->ep.sp.max_draft = (int32_t)v;
            break;
        case 't':
            if (cli_parse_int(optarg, "--threads", 1, 1024, &v)) return -1;
            o->threads = (int)v;
            break;
        case 'q': o->quiet = 1; break;
        case OPT_DEVICE:
            if (cuda_parse_device(optarg, &o->device)) {
                fprintf(stderr, "selfspec: --device must be cpu, cuda or cuda:N, got '%s'\n", optarg);
                return -1;
            }
            break;
        case 'h': usage_batch(stdout); exit(0);
        default: usage_batch(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "selfspec: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->in_path || !o->out_path) {
        fprintf(stderr, "selfspec: batch needs -i FILE|- and -o FILE|-\n");
        return -1;
    }
    return 0;
}

/* ---- output ---- */

/* Write one line whole (a line is torn only if the process dies inside
 * this call; the resume scan cuts such a tail). */
static void write_line(batch_job *j, char *line)
{
    if (!line) {
        j->write_failed = 1;
        return;
    }
    size_t n = strlen(line), off = 0;
    while (off < n) {
        ssize_t k = write(j->out_fd, line + off, n - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            fprintf(stderr, "selfspec: cannot write the output: %s\n", strerror(errno));
            j->write_failed = 1;
            break;
        }
        off += (size_t)k;
    }
    free(line);
}

static void write_error(batch_job *j, const char *custom_id, const char *msg)
{
    j->n_err++;
    write_line(j, batch_format_error(custom_id, j->line_no, 400, msg));
}

static int on_token(void *user, int32_t token)
{
    batch_req *r = user;
    return out_text_push(&r->text, token);
}

static void on_done(void *user, const engine_result *res)
{
    batch_req *r = user;
    batch_job *j = r->job;
    out_text_finish(&r->text);
    r->text.text[r->text.final] = '\0';   /* the text ends before any stop string */
    batch_result br = {.custom_id = r->custom_id, .kind = r->kind, .model = j->model_name,
                       .created = j->created, .text = r->text.text,
                       .finish = res->finish == ENGINE_FINISH_LENGTH ? BATCH_FINISH_LENGTH : BATCH_FINISH_STOP,
                       .prompt_tokens = res->prompt_tokens, .completion_tokens = res->generated_tokens};
    char err[256];
    char *line = batch_format_result(&br, err, sizeof err);
    if (!line)
        fprintf(stderr, "selfspec: cannot format the result of '%s': %s\n", r->custom_id, err);
    write_line(j, line);
    j->n_ok++;
    j->prompt_tokens += res->prompt_tokens;
    j->output_tokens += res->generated_tokens;
    out_text_free(&r->text);
    for (int i = 0; i < r->n_stops; i++)
        free(r->stops[i]);
    free(r->custom_id);
    free(r);
}

/* ---- one input line ---- */

static void handle_line(batch_job *j, engine *e, const char *line, size_t len)
{
    char err[512];
    batch_request q;
    j->line_no++;
    int rc = batch_parse_line(line, len, &q, err, sizeof err);
    if (rc == 1)
        return;   /* blank */
    j->n_read++;
    if (rc != 0) {
        if (!q.custom_id || !batch_idset_has(j->done, q.custom_id))
            write_error(j, q.custom_id, err);
        batch_request_free(&q);
        return;
    }
    if (batch_idset_has(j->done, q.custom_id)) {   /* finished before a restart */
        j->n_skipped++;
        batch_request_free(&q);
        return;
    }
    if (batch_idset_add(j->seen, q.custom_id) == 1) {
        /* no custom_id on this error line: it must not make the first one look done */
        snprintf(err, sizeof err, "duplicate custom_id '%.200s'", q.custom_id);
        write_error(j, NULL, err);
        batch_request_free(&q);
        return;
    }
    gen_params gp = {.max_tokens = q.max_tokens, .ignore_eos = q.ignore_eos, .is_eog = job_is_eog, .eog_ctx = j->tok,
                     .sampling = {.temperature = (float)q.temperature, .top_k = q.top_k, .top_p = (float)q.top_p,
                                  .seed = q.has_seed ? q.seed : 0}};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *text = job_prompt_text(j->tok, &q, err, sizeof err);
    int ok = text && sampler_params_check(&gp.sampling, err, sizeof err) == 0 &&
             tokenizer_encode(j->tok, text, strlen(text), tokenizer_add_bos(j->tok), q.kind == BATCH_CHAT, &ids,
                              &n_ids, err, sizeof err) == 0;
    free(text);
    batch_req *r = NULL;
    if (ok) {
        r = callocCheck(1, sizeof *r);
        r->job = j;
        r->kind = q.kind;
        r->n_stops = q.n_stop;
        for (int i = 0; i < q.n_stop; i++)
            r->stops[i] = strdup(q.stop[i]);
        ok = out_text_init(&r->text, j->tok, (const char *const *)r->stops, r->n_stops, q.ignore_eos, err,
                           sizeof err) == 0;
        engine_callbacks cb = {on_token, on_done, r};
        ok = ok && engine_submit(e, ids, (int32_t)n_ids, &gp, &cb, err, sizeof err) == 0;
        if (ok) {
            r->custom_id = q.custom_id;
            q.custom_id = NULL;   /* owned by r now */
        }
    }
    if (!ok) {
        write_error(j, q.custom_id, err);
        if (r) {
            out_text_free(&r->text);
            for (int i = 0; i < r->n_stops; i++)
                free(r->stops[i]);
            free(r);
        }
    }
    free(ids);
    batch_request_free(&q);
}

/* ---- reading lines as they arrive ---- */

typedef struct {
    int fd;
    char *buf;
    size_t len, cap, start;
    int eof;
    int too_long;           /* skipping the rest of an over-long line */
} line_reader;

/* The next complete line (without its '\n') into *line and *n, waiting for
 * input only when `wait`. Returns 1 with a line, 0 when none is ready (or
 * at EOF: r->eof). A last line without '\n' counts at EOF. */
static int next_line(line_reader *r, int wait, const char **line, size_t *n)
{
    for (;;) {
        char *nl = r->len > r->start ? memchr(r->buf + r->start, '\n', r->len - r->start) : NULL;
        if (nl || (r->eof && r->len > r->start)) {
            size_t end = nl ? (size_t)(nl - r->buf) : r->len;
            *line = r->buf + r->start;
            *n = end - r->start;
            r->start = nl ? end + 1 : end;
            return 1;
        }
        if (r->eof)
            return 0;
        if (r->start > 0) {   /* compact */
            memmove(r->buf, r->buf + r->start, r->len - r->start);
            r->len -= r->start;
            r->start = 0;
        }
        if (r->len == r->cap) {
            if (r->cap >= BATCH_MAX_LINE + 2) {
                /* a line longer than any request may be: hand it over whole-ish so
                 * the parser reports it, then drop bytes up to its end */
                *line = r->buf;
                *n = r->len;
                r->start = r->len;
                return 1;
            }
            r->cap = r->cap ? 2 * r->cap : 65536;
            r->buf = realloc(r->buf, r->cap);
            if (!r->buf) {
                fprintf(stderr, "selfspec: out of memory reading the input\n");
                exit(1);
            }
        }
        if (!wait) {
            struct pollfd p = {r->fd, POLLIN, 0};
            if (poll(&p, 1, 0) <= 0)
                return 0;
        }
        ssize_t k = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (k < 0 && errno == EINTR) {
            if (g_stop)
                return 0;
            continue;
        }
        if (k <= 0) {
            r->eof = 1;
            continue;
        }
        r->len += (size_t)k;
    }
}

/* ---- progress ---- */

static void progress(const batch_job *j, const engine *e, double t0, int final)
{
    if (j->o->quiet)
        return;
    double el = util_now() - t0;
    int64_t done = j->n_ok + j->n_err;
    int32_t used, total;
    engine_kv_usage(e, &used, &total);
    if (isatty(2)) {
        int64_t all = j->n_read - j->n_skipped;
        double frac = all > 0 ? (double)done / all : 0;
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        double eta = done > 0 && frac > 0 ? el / frac - el : 0;
        fprintf(stderr, "\r[%s] %lld/%lld requests  %.1f tok/s  running %d  waiting %d  KV %d%%  ETA %.0fs ", bar,
                (long long)done, (long long)all, el > 0 ? j->output_tokens / el : 0.0, engine_live(e),
                engine_waiting(e), total ? 100 * used / total : 0, eta);
        if (final)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "batch: %lld done (%lld errors), %d running, %d waiting, %.1f output tok/s, %.0fs\n",
                (long long)done, (long long)j->n_err, engine_live(e), engine_waiting(e),
                el > 0 ? j->output_tokens / el : 0.0, el);
    }
}

static void print_summary(const batch_job *j, const engine *e, double secs, const char *skip_src)
{
    const engine_totals *t = engine_get_totals(e);
    fprintf(stderr,
            "{\"requests\": %lld, \"succeeded\": %lld, \"failed\": %lld, \"skipped_done\": %lld, \"seconds\": %.3f, "
            "\"requests_per_s\": %.3f, \"prompt_tokens\": %lld, \"output_tokens\": %lld, "
            "\"prompt_tokens_per_s\": %.2f, \"output_tokens_per_s\": %.2f, \"mode\": \"%s\", \"skip_config\": \"%s\", "
            "\"steps\": %lld, \"spec_steps\": %lld, \"num_drafts\": %lld, \"num_draft_tokens\": %lld, "
            "\"num_accepted_tokens\": %lld, \"mean_acceptance_length\": %.3f, \"num_accepted_tokens_per_pos\": [",
            (long long)j->n_read, (long long)j->n_ok, (long long)j->n_err, (long long)j->n_skipped, secs,
            secs > 0 ? (j->n_ok + j->n_err) / secs : 0.0, (long long)j->prompt_tokens, (long long)j->output_tokens,
            secs > 0 ? j->prompt_tokens / secs : 0.0, secs > 0 ? j->output_tokens / secs : 0.0,
            engine_mode_name(j->o->ep.mode), skip_src, (long long)t->steps, (long long)t->spec_steps,
            (long long)t->num_drafts, (long long)t->num_draft_tokens, (long long)t->num_accepted_tokens,
            t->num_drafts ? 1.0 + (double)t->num_accepted_tokens / t->num_drafts : 0.0);
    int last = 0;
    for (int i = 0; i < SPEC_MAX_DRAFT; i++)
        if (t->accepted_per_pos[i])
            last = i + 1;
    for (int i = 0; i < last; i++)
        fprintf(stderr, "%s%lld", i ? ", " : "", (long long)t->accepted_per_pos[i]);
    fprintf(stderr, "], \"draft\": \"%s\", \"sources\": {", spec_draft_name(j->o->ep.sp.draft));
    int first = 1;
    for (int i = 0; i < SPEC_SRC_N; i++) {
        if (!t->src_blocks[i])
            continue;
        fprintf(stderr, "%s\"%s\": {\"blocks\": %lld, \"drafted\": %lld, \"accepted\": %lld, "
                "\"acceptance_rate\": %.4f, \"mean_accepted\": %.3f}", first ? "" : ", ", spec_source_name(i),
                (long long)t->src_blocks[i], (long long)t->src_drafted[i], (long long)t->src_accepted[i],
                t->src_drafted[i] ? (double)t->src_accepted[i] / t->src_drafted[i] : 0.0,
                (double)t->src_accepted[i] / t->src_blocks[i]);
        first = 0;
    }
    fprintf(stderr, "}}\n");
}

/* ---- the command ---- */

static int run_batch(batch_opts *o)
{
    char err[512], mbuf[PATH_MAX + 64], dir[PATH_MAX];
    int rc = 1;
    if (o->threads)
        omp_set_num_threads(o->threads);
    openblas_set_num_threads(1);
    if (!o->model_path)
        o->model_path = cli_default_model(mbuf, sizeof mbuf);
    batch_job j = {.o = o, .out_fd = -1};
    line_reader rd = {.fd = -1};
    model m;
    if (model_load(&m, o->model_path, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: cannot load model '%s': %s\n", o->model_path, err);
        return 1;
    }
    tokenizer *tok = cli_load_tokenizer(o->model_path);
    engine *e = NULL;
    skip_set ss = {0};
    int have_ss = 0;
    if (!tok)
        goto out;
    j.tok = tok;
    j.model_name = m.config.name[0] ? m.config.name : "selfspec";
    if (!o->ep.ctx)
        o->ep.ctx = m.config.ctx_train < 4096 ? m.config.ctx_train : 4096;
    if (o->ep.mode != ENGINE_PLAIN) {
        cli_configs_dir(dir, sizeof dir);
        int c = skipset_choose(&ss, o->skip, o->draft_head, dir, &m.config, err, sizeof err);
        if (c < 0) {
            fprintf(stderr, "selfspec: bad skip set: %s\n", err);
            goto out;
        }
        have_ss = c == 0;
        if (have_ss)   /* the exit the config's search tuned, under --gamma */
            spec_params_apply_exit(&o->ep.sp, &ss.exit, o->exit_given);
        if (c > 0 && !o->quiet)
            fprintf(stderr, "selfspec: %s; %s\n", err,
                    o->ep.sp.draft != SPEC_DRAFT_LAYERS ? "drafting from the context only" : "decoding plainly");
    }
    if (have_ss && o->ep.mode == ENGINE_AUTO && !o->skip && !skipset_pays(&ss)) {
        /* as generate: where the set's own search measured speculation
         * slower than plain decoding, auto starts from that measurement */
        if (!o->quiet)
            fprintf(stderr, "batch: the skip set in %s measured %.2fx plain decoding on the machine it was searched "
                    "on; --mode auto %s (--mode self-spec forces speculation)\n", ss.source, ss.speedup,
                    o->ep.sp.draft != SPEC_DRAFT_LAYERS ? "drafts from the context only" : "decodes plainly");
        skipset_free(&ss);
        have_ss = 0;
    }
    o->ep.ss = have_ss ? &ss : NULL;
    if (o->device >= 0 && !gen_cuda_backend(&m, o->device, &o->ep, err, sizeof err)) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto out;
    }
    if (engine_init(&e, &m, &o->ep, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto out;
    }
    /* output, resuming a killed job */
    j.done = batch_idset_new();
    j.seen = batch_idset_new();
    if (strcmp(o->out_path, "-") != 0) {
        off_t valid = 0;
        if (batch_scan_output(o->out_path, j.done, &valid, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: %s\n", err);
            goto out;
        }
        j.out_fd = open(o->out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (j.out_fd < 0 || ftruncate(j.out_fd, valid) != 0) {
            fprintf(stderr, "selfspec: cannot open '%s' for writing: %s\n", o->out_path, strerror(errno));
            goto out;
        }
        if (batch_idset_count(j.done) && !o->quiet)
            fprintf(stderr, "batch: resuming: %zu requests already done in %s\n", batch_idset_count(j.done),
                    o->out_path);
    } else {
        j.out_fd = 1;
    }
    /* input; `created` is the file's time, so a rerun writes the same bytes */
    struct stat st;
    if (strcmp(o->in_path, "-") != 0) {
        rd.fd = open(o->in_path, O_RDONLY);
        if (rd.fd < 0) {
            fprintf(stderr, "selfspec: cannot open '%s': %s\n", o->in_path, strerror(errno));
            goto out;
        }
        j.created = fstat(rd.fd, &st) == 0 ? (int64_t)st.st_mtime : 0;
    } else {
        rd.fd = 0;
        j.created = (int64_t)time(NULL);
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    double t0 = util_now(), t_prog = t0;
    int32_t ahead = 2 * o->ep.max_seqs;
    for (;;) {
        const char *line;
        size_t n;
        while (!g_stop && !j.write_failed && engine_pending(e) < ahead &&
               next_line(&rd, engine_pending(e) == 0, &line, &n))
            handle_line(&j, e, line, n);
        if (j.write_failed)
            break;
        if (engine_pending(e) == 0) {
            if (rd.eof || g_stop)
                break;
            continue;
        }
        if (engine_step(e, err, sizeof err) < 0) {
            fprintf(stderr, "\nselfspec: decoding failed: %s\n", err);
            goto out;
        }
        double now = util_now();
        if (now - t_prog > (isatty(2) ? 0.5 : 5.0)) {
            progress(&j, e, t0, 0);
            t_prog = now;
        }
    }
    progress(&j, e, t0, 1);
    if (!o->quiet)
        print_summary(&j, e, util_now() - t0, have_ss ? ss.source : "");
    rc = j.write_failed ? 1 : 0;
out:
    engine_free(e);   /* (on error: requests still in flight are not written) */
    backend_cuda_close(o->ep.backend);
    if (have_ss)
        skipset_free(&ss);
    batch_idset_free(j.done);
    batch_idset_free(j.seen);
    if (j.out_fd > 1)
        close(j.out_fd);
    if (rd.fd > 0)
        close(rd.fd);
    free(rd.buf);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}

int cmd_batch(int argc, char **argv)
{
    batch_opts o;
    if (parse_batch(argc, argv, &o) != 0)
        return 2;
    return run_batch(&o);
}
