/*
 * worker.c - `selfspec worker`: a Redis Streams consumer that decodes the
 * jobs of a stream in the engine (common/serve/qworker.h does the loop), or
 * with --devices a supervisor of one such worker process per device.
 *
 * A job is a stream entry whose field `request` is one line of the batch
 * input format (and optionally `created`, the Unix time its result carries,
 * as `batch` uses the input file's mtime). Its result, the batch output line,
 * goes to the results stream with fields custom_id and result.
 *
 * --devices cpu:0,cpu:1 (or cpu:0-3, cuda:0, ...): the supervisor
 * (common/serve/devices.h, which states its contract) execs this binary once
 * per device with the same options; SIGTERM/SIGINT is passed to every
 * child, which drains, and the supervisor exits when all have.
 *
 * Signals come first: the SIGTERM/SIGINT handlers are installed before
 * anything is parsed or loaded, so a worker stopped while it loads the model
 * exits 0 with nothing in flight instead of dying by the signal.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/metrics.h"
#include "cli.h"
#include "commands.h"
#include "service.h"
#include "serve/devices.h"
#include "serve/httpd.h"
#include "serve/qworker.h"
#include "util/util.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

/* SIGTERM/SIGINT set g_stop (a worker drains, the supervisor passes it on);
 * a peer gone mid-write is an error return, not a signal. */
static void catch_signals(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t term;   /* a --devices child starts with them blocked (serve/devices.h) */
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigprocmask(SIG_UNBLOCK, &term, NULL);
}

typedef struct {
    svc_opts so;
    const char *redis, *stream, *group, *consumer, *results, *dead, *done, *devices, *pin, *metrics_host;
    long claim_idle_ms, max_deliveries, metrics_port;
    double drain_timeout_s;
} worker_opts;

static void usage_worker(FILE *f)
{
    fprintf(f,
"usage: selfspec worker --redis URL --stream KEY --group NAME [options]\n"
"\n"
"Decode the jobs of a Redis stream (consumer group) in the batching engine.\n"
"A job is an entry with a field `request` holding one batch input line; its\n"
"result (the batch output line) is added to the results stream, fields\n"
"custom_id and result, and the entry acknowledged, atomically and once per\n"
"custom_id. More workers (on more machines) simply join the same group.\n"
"\n"
"  --redis URL            redis://[user:password@]host[:port][/db]\n"
"  --stream KEY           the jobs stream\n"
"  --group NAME           the consumer group (created at 0 when missing)\n"
"  --consumer NAME        this worker's name in the group (default host-pid; give a\n"
"                         stable one so a restarted worker resumes its own pending jobs)\n"
"  --results KEY          results stream (default <stream>:results)\n"
"  --dead-letter KEY      dead-letter stream (default <stream>:dead)\n"
"  --done KEY             set of finished custom_ids (default <stream>:done)\n"
"  --claim-idle-ms N      take over entries idle this long (default 60000)\n"
"  --max-deliveries N     dead-letter an entry delivered more often (default 5)\n"
"  --drain-timeout S      on SIGTERM, give up on an unreachable Redis after S s (default 60)\n"
"  --metrics-port N       serve Prometheus metrics on http://HOST:N/metrics (default off;\n"
"                         with --devices, device i's worker on N + i)\n"
"  --metrics-host HOST    address to listen on for metrics (default 127.0.0.1)\n"
"  --devices LIST         supervise one worker per device: cpu:0,cpu:1 (cores; cpu:0-3 a\n"
"                         range) or cuda:0,cuda:1 (CUDA_VISIBLE_DEVICES)\n"
SVC_HELP
"  -h, --help             this help\n");
}

enum { OPT_REDIS = 500, OPT_STREAM, OPT_GROUP, OPT_CONSUMER, OPT_RESULTS, OPT_DEAD, OPT_DONE, OPT_CLAIM, OPT_MAXDEL,
       OPT_DRAIN, OPT_METRICS_PORT, OPT_METRICS_HOST, OPT_DEVICES, OPT_PIN };

static int parse_worker(int argc, char **argv, worker_opts *o)
{
    static const struct option lo[] = {
        {"redis", required_argument, 0, OPT_REDIS}, {"stream", required_argument, 0, OPT_STREAM},
        {"group", required_argument, 0, OPT_GROUP}, {"consumer", required_argument, 0, OPT_CONSUMER},
        {"results", required_argument, 0, OPT_RESULTS}, {"dead-letter", required_argument, 0, OPT_DEAD},
        {"done", required_argument, 0, OPT_DONE}, {"claim-idle-ms", required_argument, 0, OPT_CLAIM},
        {"max-deliveries", required_argument, 0, OPT_MAXDEL}, {"drain-timeout", required_argument, 0, OPT_DRAIN},
        {"metrics-port", required_argument, 0, OPT_METRICS_PORT},
        {"metrics-host", required_argument, 0, OPT_METRICS_HOST}, {"devices", required_argument, 0, OPT_DEVICES},
        {"pin-cpus", required_argument, 0, OPT_PIN}, SVC_LONG_OPTIONS, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    long v;
    memset(o, 0, sizeof *o);
    svc_opts_default(&o->so);
    o->claim_idle_ms = 60000;
    o->max_deliveries = 5;
    o->drain_timeout_s = 60;
    o->metrics_host = "127.0.0.1";
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:c:t:qh", lo, NULL)) != -1) {
        int r = svc_parse_opt(&o->so, c, optarg);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        switch (c) {
        case OPT_REDIS: o->redis = optarg; break;
        case OPT_STREAM: o->stream = optarg; break;
        case OPT_GROUP: o->group = optarg; break;
        case OPT_CONSUMER: o->consumer = optarg; break;
        case OPT_RESULTS: o->results = optarg; break;
        case OPT_DEAD: o->dead = optarg; break;
        case OPT_DONE: o->done = optarg; break;
        case OPT_DEVICES: o->devices = optarg; break;
        case OPT_PIN: o->pin = optarg; break;
        case OPT_METRICS_HOST: o->metrics_host = optarg; break;
        case OPT_CLAIM:
            if (cli_parse_int(optarg, "--claim-idle-ms", 1, 1L << 40, &o->claim_idle_ms)) return -1;
            break;
        case OPT_MAXDEL:
            if (cli_parse_int(optarg, "--max-deliveries", 1, 1L << 40, &o->max_deliveries)) return -1;
            break;
        case OPT_DRAIN:
            if (cli_parse_int(optarg, "--drain-timeout", 0, 1L << 30, &v)) return -1;
            o->drain_timeout_s = (double)v;
            break;
        case OPT_METRICS_PORT:
            if (cli_parse_int(optarg, "--metrics-port", 1, 65535, &o->metrics_port)) return -1;
            break;
        case 'h': usage_worker(stdout); exit(0);
        default: usage_worker(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "selfspec: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->redis || !o->stream || !o->group) {
        fprintf(stderr, "selfspec: worker needs --redis URL, --stream KEY and --group NAME\n");
        return -1;
    }
    if (!o->stream[0] || !o->group[0] || (o->consumer && !o->consumer[0])) {
        fprintf(stderr, "selfspec: --stream, --group and --consumer may not be empty\n");
        return -1;
    }
    return 0;
}

/* ---- one worker ---- */

static int run_worker(worker_opts *o)
{
    char err[512], host[128], consumer[256], results[512], dead[512], done[512];
    if (o->pin) {
        cpu_set_t set;
        int n = 0;
        if (devices_parse_cpus(o->pin, &set, &n) != 0) {
            fprintf(stderr, "selfspec: bad --pin-cpus '%s'\n", o->pin);
            return 2;
        }
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            fprintf(stderr, "selfspec: cannot pin to cpus %s: %s\n", o->pin, strerror(errno));
            return 1;
        }
        if (!o->so.threads)
            o->so.threads = n;
    }
    qworker_opts q = {.claim_idle_ms = o->claim_idle_ms, .max_deliveries = o->max_deliveries,
                      .drain_timeout_s = o->drain_timeout_s, .quiet = o->so.quiet};
    if (redisq_parse_url(o->redis, &q.url, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        return 2;
    }
    if (!o->consumer) {
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "worker");
        host[sizeof host - 1] = '\0';
        snprintf(consumer, sizeof consumer, "%s-%d", host, (int)getpid());
        o->consumer = consumer;
    }
    snprintf(results, sizeof results, "%s:results", o->stream);
    snprintf(dead, sizeof dead, "%s:dead", o->stream);
    snprintf(done, sizeof done, "%s:done", o->stream);
    q.names = (redisq_names){.stream = o->stream, .group = o->group, .consumer = o->consumer,
                             .results = o->results ? o->results : results, .dead = o->dead ? o->dead : dead,
                             .done = o->done ? o->done : done};
    svc_engine se;
    int rc = 1;
    metrics *mx = NULL;
    httpd *hd = NULL;
    if (svc_engine_init(&se, &o->so) != 0)
        goto out;
    if (g_stop) {   /* stopped while loading: nothing was read, nothing is in flight */
        if (!o->so.quiet)
            fprintf(stderr, "selfspec: worker: stopped before its first read\n");
        rc = 0;
        goto out;
    }
    q.max_jobs = o->so.ep.max_seqs;
    q.model_name = se.model_name;
    q.fingerprint = se.fingerprint;
    q.usage_details = o->so.usage_details;
    mx = metrics_new("selfspec:", se.model_name);
    if (o->metrics_port) {
        httpd_config hc = {.host = o->metrics_host, .port = (int)o->metrics_port, .metrics = mx,
                           .engine_thread = 0};
        if (httpd_start(&hd, &hc, err, sizeof err) != 0) {
            fprintf(stderr, "selfspec: %s\n", err);
            goto out;
        }
    }
    qworker_stats st;
    double t0 = util_now();
    rc = qworker_run(se.e, se.tok, &q, mx, &g_stop, &st, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "selfspec: worker: %s\n", err);
    double secs = util_now() - t0;
    if (!o->so.quiet)
        fprintf(stderr,
                "{\"consumer\": \"%s\", \"done\": %lld, \"dead_lettered\": %lld, \"claimed\": %lld, "
                "\"reconnects\": %lld, \"prompt_tokens\": %lld, \"output_tokens\": %lld, \"seconds\": %.3f, "
                "\"output_tokens_per_s\": %.2f}\n",
                o->consumer, (long long)st.done, (long long)st.dead, (long long)st.claimed,
                (long long)st.reconnects, (long long)st.prompt_tokens, (long long)st.output_tokens, secs,
                secs > 0 ? st.output_tokens / secs : 0.0);
out:
    httpd_stop(hd);
    metrics_free(mx);
    svc_engine_free(&se);
    return rc;
}

/* ---- the supervisor (serve/devices.h) ---- */

static int run_supervisor(worker_opts *o, int argc, char **argv)
{
    device_child ch[DEVICES_MAX];
    int n = 0;
    if (devices_parse(o->devices, ch, &n) != 0) {
        fprintf(stderr, "selfspec: bad --devices '%s' (e.g. cpu:0,cpu:1 or cpu:0-3,cpu:4-7 or cuda:0,cuda:1)\n",
                o->devices);
        return 2;
    }
    if (o->metrics_port && o->metrics_port + n - 1 > 65535) {
        fprintf(stderr, "selfspec: --metrics-port %ld + %d devices runs past port 65535\n", o->metrics_port, n);
        return 2;
    }
    char host[128], base[192];
    if (o->consumer)
        snprintf(base, sizeof base, "%s", o->consumer);
    else {
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "worker");
        host[sizeof host - 1] = '\0';
        snprintf(base, sizeof base, "%s", host);
    }
    devices_opts d = {.consumer_base = base, .metrics_port = o->metrics_port, .argc = argc, .argv = argv,
                      .quiet = o->so.quiet};
    return devices_supervise(ch, n, &d, &g_stop);
}

int cmd_worker(int argc, char **argv)
{
    catch_signals();   /* first: a stop while loading drains (exit 0), not a death by the signal */
    worker_opts o;
    if (parse_worker(argc, argv, &o) != 0)
        return 2;
    if (o.devices) {
        redisq_url u;
        char err[512];
        if (redisq_parse_url(o.redis, &u, err, sizeof err) != 0) {   /* before any child exits 2 in a loop */
            fprintf(stderr, "selfspec: %s\n", err);
            return 2;
        }
        return run_supervisor(&o, argc, argv);
    }
    return run_worker(&o);
}
