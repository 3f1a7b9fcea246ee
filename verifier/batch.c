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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/batchio.h"
#include "api/lines.h"
#include "cli.h"
#include "commands.h"
#include "engine/engine.h"
#include "serve/job.h"
#include "service.h"
#include "util/util.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

typedef struct {
    const char *in_path, *out_path;
    svc_opts so;               /* the engine options every command shares */
} batch_opts;

/* The job: everything the per-request callbacks need. */
typedef struct {
    const batch_opts *o;
    job_format_opts fmt;       /* the served name, created (the input's time), fingerprint */
    int out_fd;
    batch_idset *done;      /* complete in the output file before this run */
    batch_idset *seen;      /* custom_ids read in this run */
    size_t line_no;
    int64_t n_read, n_ok, n_err, n_skipped;
    int64_t prompt_tokens, output_tokens;
    int write_failed;
} batch_job;

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
SVC_HELP
"  -h, --help             this help\n");
}

static int parse_batch(int argc, char **argv, batch_opts *o)
{
    static const struct option lo[] = {
        {"input", required_argument, 0, 'i'}, {"output", required_argument, 0, 'o'}, SVC_LONG_OPTIONS,
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof *o);
    svc_opts_default(&o->so);
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:o:m:c:t:qh", lo, NULL)) != -1) {
        int r = svc_parse_opt(&o->so, c, optarg);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        switch (c) {
        case 'i': o->in_path = optarg; break;
        case 'o': o->out_path = optarg; break;
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

/* A job finished: its line goes out. */
static void on_done(void *user, const job_outcome *o)
{
    batch_job *j = user;
    char err[256];
    char *line = job_format_result(o, &j->fmt, err, sizeof err);
    if (!line)
        fprintf(stderr, "selfspec: cannot format the result of '%s': %s\n", o->custom_id, err);
    write_line(j, line);
    j->n_ok++;
    j->prompt_tokens += o->res.prompt_tokens;
    j->output_tokens += o->res.generated_tokens;
}

/* ---- one input line ---- */

static void handle_line(batch_job *j, engine *e, const tokenizer *tok, const char *line, size_t len)
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
    job_hooks hooks = {.on_done = on_done, .user = j};
    if (job_submit(e, tok, &q, &hooks, err, sizeof err) != 0)
        write_error(j, q.custom_id, err);
    batch_request_free(&q);
}

/* ---- progress ---- */

static void progress(const batch_job *j, const engine *e, double t0, int final)
{
    if (j->o->so.quiet)
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
            "\"requests_per_s\": %.3f, \"prompt_tokens\": %lld, \"cached_prompt_tokens\": %lld, \"output_tokens\": %lld, "
            "\"prompt_tokens_per_s\": %.2f, \"output_tokens_per_s\": %.2f, \"mode\": \"%s\", \"skip_config\": \"%s\", "
            "\"steps\": %lld, \"spec_steps\": %lld, \"num_drafts\": %lld, \"num_draft_tokens\": %lld, "
            "\"num_accepted_tokens\": %lld, \"mean_acceptance_length\": %.3f, \"num_accepted_tokens_per_pos\": [",
            (long long)j->n_read, (long long)j->n_ok, (long long)j->n_err, (long long)j->n_skipped, secs,
            secs > 0 ? (j->n_ok + j->n_err) / secs : 0.0, (long long)j->prompt_tokens, (long long)t->cached_prompt_tokens,
            (long long)j->output_tokens,
            secs > 0 ? j->prompt_tokens / secs : 0.0, secs > 0 ? j->output_tokens / secs : 0.0,
            engine_mode_name(j->o->so.ep.mode), skip_src, (long long)t->steps, (long long)t->spec_steps,
            (long long)t->spec.num_drafts, (long long)t->spec.num_draft_tokens, (long long)t->spec.num_accepted_tokens,
            t->spec.num_drafts ? 1.0 + (double)t->spec.num_accepted_tokens / t->spec.num_drafts : 0.0);
    int last = 0;
    for (int i = 0; i < SPEC_MAX_DRAFT; i++)
        if (t->spec.accepted_per_pos[i])
            last = i + 1;
    for (int i = 0; i < last; i++)
        fprintf(stderr, "%s%lld", i ? ", " : "", (long long)t->spec.accepted_per_pos[i]);
    fprintf(stderr, "], \"draft\": \"%s\", \"sources\": {", spec_draft_name(j->o->so.ep.sp.draft));
    int first = 1;
    for (int i = 0; i < SPEC_SRC_N; i++) {
        if (!t->spec.src_blocks[i])
            continue;
        fprintf(stderr, "%s\"%s\": {\"blocks\": %lld, \"drafted\": %lld, \"accepted\": %lld, "
                "\"acceptance_rate\": %.4f, \"mean_accepted\": %.3f}", first ? "" : ", ", spec_source_name(i),
                (long long)t->spec.src_blocks[i], (long long)t->spec.src_drafted[i], (long long)t->spec.src_accepted[i],
                t->spec.src_drafted[i] ? (double)t->spec.src_accepted[i] / t->spec.src_drafted[i] : 0.0,
                (double)t->spec.src_accepted[i] / t->spec.src_blocks[i]);
        first = 0;
    }
    fprintf(stderr, "}}\n");
}

/* ---- the command ---- */

static int run_batch(batch_opts *o)
{
    char err[512];
    int rc = 1;
    batch_job j = {.o = o, .out_fd = -1};
    lines_reader rd;
    lines_init(&rd, -1, &g_stop);
    svc_engine se;
    if (svc_engine_init(&se, &o->so) != 0)
        goto out;
    engine *e = se.e;
    j.fmt = (job_format_opts){.model = se.model_name, .fingerprint = se.fingerprint,
                              .usage_details = o->so.usage_details};
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
        if (batch_idset_count(j.done) && !o->so.quiet)
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
        j.fmt.created = fstat(rd.fd, &st) == 0 ? (int64_t)st.st_mtime : 0;
    } else {
        rd.fd = 0;
        j.fmt.created = (int64_t)time(NULL);
    }
    double t0 = util_now(), t_prog = t0;
    int32_t ahead = 2 * o->so.ep.max_seqs;
    for (;;) {
        const char *line;
        size_t n;
        while (!g_stop && !j.write_failed && engine_pending(e) < ahead &&
               lines_next(&rd, engine_pending(e) == 0, &line, &n))
            handle_line(&j, e, se.tok, line, n);
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
    if (!o->so.quiet)
        print_summary(&j, e, util_now() - t0, spec_setup_source(&se.setup));
    rc = j.write_failed ? 1 : 0;
out:
    svc_engine_free(&se);   /* (on error: requests still in flight are not written) */
    batch_idset_free(j.done);
    batch_idset_free(j.seen);
    if (j.out_fd > 1)
        close(j.out_fd);
    if (rd.fd > 0)
        close(rd.fd);
    lines_free(&rd);
    return rc;
}

int cmd_batch(int argc, char **argv)
{
    batch_opts o;
    if (parse_batch(argc, argv, &o) != 0)
        return 2;
    /* before anything is loaded: a signal during the load ends the job cleanly */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return run_batch(&o);
}
