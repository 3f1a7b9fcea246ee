/*
 * devices.h - `selfspec worker --devices LIST`: one worker process per
 * device, supervised.
 *
 * Contract. The supervisor execs this executable (/proc/self/exe) once per
 * device as "selfspec worker" with the command line it was given, minus
 * --devices, --consumer, --metrics-port and --pin-cpus, plus
 *   --consumer <base>-<device>   (':' in it becomes '-'; stable, so a
 *                                 restarted child reads its own pending
 *                                 entries first)
 *   --pin-cpus LIST              for cpu:LIST (the child pins itself with
 *                                 sched_setaffinity, one OpenMP thread per core)
 *   --metrics-port N + i         device i, when a metrics port was given
 *   --device cuda:0              for cuda:N, with CUDA_VISIBLE_DEVICES=N
 * Each child gets PR_SET_PDEATHSIG SIGTERM (it drains if the supervisor
 * dies) and starts with SIGTERM and SIGINT blocked: a stop sent before the
 * worker has installed its handlers stays pending, and the worker unblocks
 * them once it has (so it drains, exit 0, instead of dying by the signal). A child that exits is restarted after its backoff (1 s, doubling
 * to 30 s; back to 1 s once it had run over 60 s). When *stop becomes
 * nonzero (the caller's SIGTERM/SIGINT flag: the library owns no signal
 * handling) every child gets SIGTERM, none is restarted, and the
 * supervisor returns once all have exited: 0 when each exited with 0, else 1.
 */
#ifndef SELFSPEC_SERVE_DEVICES_H
#define SELFSPEC_SERVE_DEVICES_H

#include <sched.h>
#include <signal.h>
#include <sys/types.h>

#define DEVICES_MAX 64

/* One device and its child process. */
typedef struct {
    char name[64];       /* as listed: "cpu:0-3", "cuda:1" */
    char pin[64];        /* cores for --pin-cpus ("0-1,4-5"), or "" */
    char cuda[16];       /* CUDA_VISIBLE_DEVICES ("1"), or "" */
    pid_t pid;           /* the running child, or 0 */
    double started, backoff, restart_at;
} device_child;

/* "0", "0-3", "0,2,5-6" into set (*count distinct cores). Returns 0, or -1
 * when malformed (a trailing comma too), empty, descending or outside
 * 0..CPU_SETSIZE-1. */
int devices_parse_cpus(const char *s, cpu_set_t *set, int *count);

/* A device list: comma-separated "cpu:CORES" (within one device "+" joins
 * core ranges: cpu:0-1+4-5) or "cuda:N" (N in 0..1024), at most
 * DEVICES_MAX, into ch[0..*n) (backoff 1, no process). Returns 0, or -1
 * when an entry is malformed or there are none or too many. */
int devices_parse(const char *list, device_child *ch, int *n);

typedef struct {
    const char *consumer_base;   /* children's consumer names: <base>-<device> */
    long metrics_port;           /* 0: none; else device i gets metrics_port + i */
    int argc;                    /* the worker's own command line (argv[0] = "worker") */
    char **argv;
    int quiet;                   /* no progress lines on stderr */
} devices_opts;

/* Start ch[0..n)'s children and supervise them as above until *stop is set
 * and all have exited. Returns 0 when every child exited 0 after the stop,
 * else 1. */
int devices_supervise(device_child *ch, int n, const devices_opts *o, const volatile sig_atomic_t *stop);

#endif
