/*
 * serve.c - `selfspec serve`: an OpenAI-compatible HTTP server over the one
 * engine loop (common/serve/oai.h: the API and the engine thread;
 * common/serve/httpd.h: libmicrohttpd, body limits, auth, /metrics).
 * The engine runs in this process's main thread; libmicrohttpd's threads
 * hand it requests. SIGTERM/SIGINT: new requests get 503, the ones in
 * flight finish, then the server stops and exits 0.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/metrics.h"
#include "cli.h"
#include "commands.h"
#include "service.h"
#include "serve/httpd.h"
#include "serve/oai.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static void usage_serve(FILE *f)
{
    fprintf(f,
"usage: selfspec serve [--host 127.0.0.1] [--port 8000] [options]\n"
"\n"
"An OpenAI-compatible server: POST /v1/completions, POST /v1/chat/completions\n"
"(\"stream\": true for server-sent events), GET /v1/models, GET /health (503 when\n"
"the decode loop is stuck), GET /metrics (Prometheus). Every request is decoded\n"
"in the one batching engine.\n"
"\n"
"  --host ADDR            address to listen on (default 127.0.0.1: loopback only)\n"
"  --port N               port (default 8000; 0 = any free port, printed)\n"
"  --api-key KEY          require 'Authorization: Bearer KEY' on /v1/ (default: none)\n"
"  --queue N              requests waiting beyond --max-seqs before 503 (default 64)\n"
"  --body-limit BYTES     largest request body; larger gets 413 (default 1048576)\n"
"  --timeout S            close a connection idle this long (default 30)\n"
"  --stall S              /health fails when no step completed for S s with work (default 30)\n"
SVC_HELP
"  -h, --help             this help\n");
}

enum { OPT_HOST = 600, OPT_PORT, OPT_API_KEY, OPT_QUEUE, OPT_BODY_LIMIT, OPT_TIMEOUT, OPT_STALL };

int cmd_serve(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", required_argument, 0, OPT_HOST}, {"port", required_argument, 0, OPT_PORT},
        {"api-key", required_argument, 0, OPT_API_KEY}, {"queue", required_argument, 0, OPT_QUEUE},
        {"body-limit", required_argument, 0, OPT_BODY_LIMIT}, {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"stall", required_argument, 0, OPT_STALL}, SVC_LONG_OPTIONS, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    svc_opts so;
    svc_opts_default(&so);
    const char *host = "127.0.0.1", *api_key = getenv("SELFSPEC_API_KEY");
    long port = 8000, queue = 64, body_limit = 1 << 20, timeout = 30, stall = 30;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:c:t:qh", lo, NULL)) != -1) {
        int r = svc_parse_opt(&so, c, optarg);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (c) {
        case OPT_HOST: host = optarg; break;
        case OPT_API_KEY: api_key = optarg; break;
        case OPT_PORT:
            if (cli_parse_int(optarg, "--port", 0, 65535, &port)) return 2;
            break;
        case OPT_QUEUE:
            if (cli_parse_int(optarg, "--queue", 0, 1 << 20, &queue)) return 2;
            break;
        case OPT_BODY_LIMIT:
            if (cli_parse_int(optarg, "--body-limit", 64, 1 << 30, &body_limit)) return 2;
            break;
        case OPT_TIMEOUT:
            if (cli_parse_int(optarg, "--timeout", 1, 86400, &timeout)) return 2;
            break;
        case OPT_STALL:
            if (cli_parse_int(optarg, "--stall", 1, 86400, &stall)) return 2;
            break;
        case 'h': usage_serve(stdout); return 0;
        default: usage_serve(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "selfspec: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    svc_engine se;
    int rc = 1;
    metrics *mx = NULL;
    oai_server *os = NULL;
    httpd *hd = NULL;
    char err[512];
    if (svc_engine_init(&se, &so) != 0)
        goto out;
    mx = metrics_new("selfspec:", se.model_name);
    oai_config oc = {.model_name = se.model_name, .fingerprint = se.fingerprint, .usage_details = so.usage_details,
                     .max_seqs = so.ep.max_seqs, .queue_cap = (int32_t)queue,
                     .stall_s = (double)stall};
    os = oai_new(se.e, se.tok, mx, &oc);
    httpd_config hc = {.host = host, .port = (int)port, .metrics = mx, .health = oai_health,
                       .handler = oai_handle, .ctx = os, .api_key = api_key, .body_limit = (size_t)body_limit,
                       .conn_timeout_s = (int)timeout, .engine_thread = 1};
    if (httpd_start(&hd, &hc, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: %s\n", err);
        goto out;
    }
    fprintf(stderr, "serve: listening on http://%s:%d (model '%s')\n", host, httpd_port(hd), se.model_name);
    rc = oai_run(os, &g_stop, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "selfspec: serve: decoding failed: %s\n", err);
    else
        fprintf(stderr, "serve: stopped\n");
out:
    httpd_stop(hd);
    oai_free(os);
    metrics_free(mx);
    svc_engine_free(&se);
    return rc;
}
