/*
 * supervisor.h - the verifier's supervision of the drafter process: its
 * parameters and the pipeline's statistics, spawning bin/selfspec-drafter
 * (inheriting read-only descriptors of the weight arena and the verified KV),
 * the Setup it gets, the inbox pump that feeds the protocol
 * (ipc/protocol.h), liveness (heartbeats, startup and block deadlines), kill
 * and restart, waiting for a block, sending requests, and shutdown.
 * The library reads no environment and owns no signal flag: the caller
 * passes what it read (drafter path, debug, the speculation knob, the
 * drafter's extra environment) and its stop flag in pipe_params.
 */
#ifndef SELFSPEC_SUPERVISOR_H
#define SELFSPEC_SUPERVISOR_H

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ipc/pipe.h"
#include "ipc/protocol.h"
#include "model/model.h"

typedef struct {
    int overlap;            /* 1: draft block n+1 while block n is verified */
    int hb_ms;              /* drafter heartbeat interval (100) */
    int hb_timeout_ms;      /* silence after which the drafter is dead (1000) */
    int drafter_threads;    /* 0: as many as the verifier */
    int max_restarts;       /* (8) then plain decoding to the end */
    const char *model_path;
    const char *skip_path;  /* skip-set config for the drafter, or "none" */
    int32_t draft_head;     /* --draft-head: -1 the config's, 0 full head, N first N */
    int n_seqs;             /* --pipeline-seqs: the prompt as N sequences (benchmark) */
    /* on a GPU (gen_pipeline sets these): the CUDA IPC blob the drafter
     * opens instead of the shared KV, and its device; cuda_ipc_len 0: CPU */
    const uint8_t *cuda_ipc;
    size_t cuda_ipc_len;
    int cuda_device;
    int cuda_draft_device;  /* --draft-device: the drafter's own GPU (-1: cuda_device) */
    /* what the caller read from its environment and its signal flag (the
     * verifier's pipeline.c: $SELFSPEC_DRAFTER / $SELFSPEC_DRAFTER_CUDA,
     * $SELFSPEC_PIPELINE_DEBUG, $SELFSPEC_PIPELINE_SPECULATE, its
     * SIGTERM/SIGINT flag); pipe_params_default leaves them 0 / NULL */
    const char *drafter_exe;    /* NULL or "": selfspec-drafter (with cuda_ipc_len > 0
                                   selfspec-drafter-cuda) beside this executable */
    const char *drafter_env;    /* NULL, or one "NAME=value" added to the drafter's
                                   environment (which is this process's otherwise) */
    int debug;                  /* > 0: spawns, deaths and kills on stderr; > 1: more */
    int speculate_always;       /* the Setup's speculate flag (a benchmark knob) */
    const volatile sig_atomic_t *stop;   /* nonzero: stop waiting and restarting
                                            (the caller's SIGTERM flag); NULL: never */
} pipe_params;

typedef struct {
    pipe_counters rx;           /* rejected by the verifier */
    pipe_counters drafter_rx;   /* rejected by the drafter (its last report) */
    int64_t blocks, spec_adopted, spec_missed, plain_steps;
    int64_t drafter_starts, drafter_deaths, drafter_timeouts;
    double wait_seconds;        /* verifier waiting for blocks */
    double drafter_seconds;     /* drafting time the drafter reports in its blocks */
    int last_drafter_pid;
    pipe_mem verifier_mem, drafter_mem;   /* at the end of generation */
    long arena_kb, kv_kb;
    int terminated;             /* stopped early by SIGTERM/SIGINT */
    int overlap;                /* what ran (a GPU pipeline on one device is sequential) */
    int device, draft_device;   /* CUDA devices of the verifier and the drafter, -1: CPU */
} pipe_stats;

/* The defaults noted above; overlap on, skip_path "none", draft_head -1,
 * no stop flag, nothing from the environment. */
void pipe_params_default(pipe_params *p);

typedef struct {
    const pipe_params *pp;
    pipe_stats *ps;
    proto_link link;
    const model *m;
    int32_t kv_cap;             /* positions per verified KV cache */
    int32_t max_draft;          /* K, for the Setup */
    void *zctx, *in, *out;      /* inbox (PULL, bound) and the drafter's (PUSH) */
    char v_ep[108], d_ep[108], exe[PATH_MAX];
    pid_t pid;                  /* the drafter, or 0 */
    int restarts, debug, threads;
    double t_spawn, last_heard;
    int w_ro, kv_ro;            /* read-only descriptors the drafter inherits */
} pipe_sup;

/* A random nonzero 64-bit number (getrandom, else pid and clock). */
uint64_t sup_random64(void);

/* Ready S for a drafter of model m (its arena in shared memory) reading
 * n_seqs verified caches of kv_cap positions from the shared object kv_fd
 * (-1 on a GPU: the caches are in pp->cuda_ipc):
 * a new session, read-only copies of both descriptors, the inbox socket, the
 * drafter's path (pp->drafter_exe, else beside this executable). No
 * process yet (sup_spawn). pp and ps must outlive S. Returns 0, or -1 with
 * err; sup_close(S) is safe either way. */
int sup_open(pipe_sup *S, const model *m, int kv_fd, int32_t kv_cap, int n_seqs, int32_t max_draft,
             const pipe_params *pp, pipe_stats *ps, char *err, size_t errlen);

/* Start a new drafter incarnation (state STARTING; FAILED if it cannot). */
void sup_spawn(pipe_sup *S);

/* Take every message in the inbox, waiting up to timeout_ms for the first,
 * through proto_receive; answers a Hello with the Setup, drops a drafter
 * whose setup failed (no restarts: FAILED). */
void sup_pump(pipe_sup *S, int timeout_ms);

/* Liveness: reap an exited drafter, kill one silent for hb_timeout_ms or
 * not set up within the startup deadline, and restart (up to max_restarts,
 * then FAILED). */
void sup_check(pipe_sup *S);

/* 1 when the drafter is set up and answering. */
int sup_ready(const pipe_sup *S);

/* Wait until the drafter is ready, has failed, has died once, or the stop
 * flag is set (only the first start blocks generation). */
void sup_wait_ready(pipe_sup *S);

/* Send sequence seq's request (proto_request); a request that cannot even
 * be queued makes the drafter look dead at the next sup_check. */
void sup_request(pipe_sup *S, uint32_t seq, Selfspec__RequestKind kind, int32_t pos, int32_t cur, int32_t k_max,
                 int32_t end_pos, float gamma);

/* Wait for the block answering sequence seq's current request: its fresh
 * slot, or (speculative, seq 0) the speculative slot. Returns 1 when it is
 * there; 0 when the drafter died or went silent, the request went to an
 * earlier incarnation, or the stop flag is set. A live drafter that sends no block
 * for 5 heartbeat timeouts is killed. The wait counts into wait_seconds. */
int sup_wait_block(pipe_sup *S, uint32_t seq, int speculative);

/* End: a Shutdown and up to 2 s for the drafter to exit, else SIGKILL;
 * close sockets and descriptors; the protocol's counts into S->ps. */
void sup_close(pipe_sup *S);

#endif
