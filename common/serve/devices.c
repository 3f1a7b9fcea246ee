/*
 * devices.c - one worker process per device, pinned, restarted, drained
 * (see devices.h).
 */
#include "serve/devices.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

int devices_parse_cpus(const char *s, cpu_set_t *set, int *count)
{
    CPU_ZERO(set);
    *count = 0;
    const char *p = s;
    while (*p) {
        char *end;
        if (*p < '0' || *p > '9')   /* digits only: strtol would take blanks and signs */
            return -1;
        long a = strtol(p, &end, 10), b;
        if (a >= CPU_SETSIZE)
            return -1;
        b = a;
        if (*end == '-') {
            p = end + 1;
            if (*p < '0' || *p > '9')
                return -1;
            b = strtol(p, &end, 10);
            if (b < a || b >= CPU_SETSIZE)
                return -1;
        }
        for (long i = a; i <= b; i++)
            if (!CPU_ISSET((int)i, set)) {
                CPU_SET((int)i, set);
                (*count)++;
            }
        if (*end == ',' && end[1])
            end++;
        else if (*end)
            return -1;   /* junk, or a list ending in a comma */
        p = end;
    }
    return *count > 0 ? 0 : -1;
}

int devices_parse(const char *list, device_child *ch, int *n)
{
    *n = 0;
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", list) >= (int)sizeof buf)
        return -1;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        /* devices are split at commas; within cpu:, "+" joins core ranges (cpu:0-1+4-5) */
        if (*n == DEVICES_MAX)
            return -1;
        device_child *c = &ch[*n];
        memset(c, 0, sizeof *c);
        if (snprintf(c->name, sizeof c->name, "%s", tok) >= (int)sizeof c->name)
            return -1;
        cpu_set_t set;
        int cnt;
        if (!strncmp(tok, "cpu:", 4)) {
            snprintf(c->pin, sizeof c->pin, "%s", tok + 4);
            for (char *p = c->pin; *p; p++)
                if (*p == '+')
                    *p = ',';
            if (devices_parse_cpus(c->pin, &set, &cnt) != 0)
                return -1;
        } else if (!strncmp(tok, "cuda:", 5)) {
            char *end;
            long d = strtol(tok + 5, &end, 10);
            if (end == tok + 5 || *end || d < 0 || d > 1024)
                return -1;
            snprintf(c->cuda, sizeof c->cuda, "%ld", d);
        } else {
            return -1;
        }
        c->backoff = 1;
        (*n)++;
    }
    return *n > 0 ? 0 : -1;
}

/* Fork and exec device index's worker (the parent returns its pid, or -1). */
static pid_t spawn_child(device_child *c, int index, const devices_opts *o)
{
    char consumer[320], mport[16];
    snprintf(consumer, sizeof consumer, "%s-%s", o->consumer_base, c->name);
    for (char *p = consumer; *p; p++)
        if (*p == ':')
            *p = '-';
    char **av = callocCheck((size_t)o->argc + 12, sizeof *av);   /* before fork: the child only execs */
    int k = 0;
    av[k++] = "selfspec";
    av[k++] = "worker";
    for (int i = 1; i < o->argc; i++) {
        const char *a = o->argv[i];
        int skip_val = !strcmp(a, "--devices") || !strcmp(a, "--consumer") || !strcmp(a, "--metrics-port") ||
                       !strcmp(a, "--pin-cpus");
        if (skip_val) {
            i++;
            continue;
        }
        if (!strncmp(a, "--devices=", 10) || !strncmp(a, "--consumer=", 11) || !strncmp(a, "--metrics-port=", 15) ||
            !strncmp(a, "--pin-cpus=", 11))
            continue;
        av[k++] = o->argv[i];
    }
    av[k++] = "--consumer";
    av[k++] = consumer;
    if (c->pin[0]) {
        av[k++] = "--pin-cpus";
        av[k++] = c->pin;
    }
    if (o->metrics_port) {   /* child i serves its metrics on port + i */
        snprintf(mport, sizeof mport, "%ld", o->metrics_port + index);
        av[k++] = "--metrics-port";
        av[k++] = mport;
    }
    if (c->cuda[0]) {   /* its one visible GPU is device 0 */
        av[k++] = "--device";
        av[k++] = "cuda:0";
    }
    av[k] = NULL;
    /* the child starts with SIGTERM/SIGINT blocked, and execs so: a stop
     * sent before the worker has its handlers stays pending until it has */
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigprocmask(SIG_BLOCK, &term, &old);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (c->cuda[0])
            setenv("CUDA_VISIBLE_DEVICES", c->cuda, 1);
        execv("/proc/self/exe", av);
        fprintf(stderr, "selfspec: cannot exec the worker: %s\n", strerror(errno));
        _exit(127);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(av);
    if (pid < 0)
        fprintf(stderr, "selfspec: worker: fork: %s\n", strerror(errno));
    return pid;
}

int devices_supervise(device_child *ch, int n, const devices_opts *o, const volatile sig_atomic_t *stop)
{
    for (int i = 0; i < n; i++) {
        ch[i].pid = spawn_child(&ch[i], i, o);
        ch[i].started = util_now();
        if (ch[i].pid < 0) {   /* try again after the backoff */
            ch[i].pid = 0;
            ch[i].restart_at = ch[i].started + ch[i].backoff;
        } else if (!o->quiet) {
            fprintf(stderr, "worker: started %s (pid %d)\n", ch[i].name, (int)ch[i].pid);
        }
    }
    int draining = 0, rc = 0;
    for (;;) {
        if (*stop && !draining) {
            draining = 1;
            if (!o->quiet)
                fprintf(stderr, "worker: draining %d worker(s)\n", n);
            for (int i = 0; i < n; i++)
                if (ch[i].pid > 0)
                    kill(ch[i].pid, SIGTERM);
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (int i = 0; i < n; i++) {
                if (ch[i].pid != pid)
                    continue;
                ch[i].pid = 0;
                int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                if (draining) {
                    if (!ok)
                        rc = 1;
                    break;
                }
                double now = util_now();
                if (now - ch[i].started > 60)
                    ch[i].backoff = 1;   /* it ran a good while: not a crash loop */
                ch[i].restart_at = now + ch[i].backoff;
                if (!o->quiet)
                    fprintf(stderr, "worker: %s (pid %d) %s %d; restarting in %.0fs\n", ch[i].name, (int)pid,
                            WIFSIGNALED(status) ? "killed by signal" : "exited with",
                            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), ch[i].backoff);
                ch[i].backoff = ch[i].backoff * 2 > 30 ? 30 : ch[i].backoff * 2;
            }
            continue;
        }
        int alive = 0;
        double now = util_now();
        for (int i = 0; i < n; i++) {
            if (ch[i].pid > 0)
                alive++;
            else if (!draining && ch[i].restart_at > 0 && now >= ch[i].restart_at) {
                ch[i].restart_at = 0;
                ch[i].started = now;
                pid_t np = spawn_child(&ch[i], i, o);
                if (np < 0) {
                    ch[i].restart_at = now + ch[i].backoff;
                    continue;
                }
                ch[i].pid = np;
                alive++;
                if (!o->quiet)
                    fprintf(stderr, "worker: restarted %s (pid %d)\n", ch[i].name, (int)ch[i].pid);
            }
        }
        if (draining && alive == 0)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return rc;
}
