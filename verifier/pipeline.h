/*
 * pipeline.h - the verifier side of the two-process Draft & Verify pipeline
 * (`selfspec generate --mode pipeline`). This process owns the weight arena
 * (in POSIX shared memory), the verified KV cache (a second shared object),
 * the sequence and every verification; bin/selfspec-drafter, started and
 * restarted from here, maps both read-only and drafts blocks on request.
 * Messages: proto/selfspec.proto over ZeroMQ (see common/pipe.h).
 *
 * Output is exactly the full model's (greedy): the drafter only proposes.
 * A dead or hung drafter (no heartbeat within the timeout) is killed; the
 * verifier goes on with plain decoding steps and restarts it.
 */
#ifndef SELFSPEC_PIPELINE_H
#define SELFSPEC_PIPELINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "decode/generate.h"
#include "model/model.h"
#include "ipc/pipe.h"
#include "decode/spec.h"

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
} pipe_stats;

void pipe_params_default(pipe_params *p);

/* Before model_load: pick the weight arena's shared-memory name
 * (/selfspec-<pid>-<random>-w), remove orphans of dead verifiers, and catch
 * SIGTERM/SIGINT (they end generation early, cleanly). Call
 * pipeline_loaded(name) right after model_load: it unlinks the name (the
 * drafter inherits a descriptor), so no segment outlives the processes. */
void pipeline_prepare(char *shm_name, size_t n);
void pipeline_loaded(const char *shm_name);

/* Greedy generation through the drafter process; same contract as
 * gen_selfspec. m must have been loaded with the name from pipeline_prepare. */
int gen_pipeline(const model *m, fwd_state *fs, int32_t ctx, const spec_params *sp, const pipe_params *pp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit,
                 void *ectx, gen_stats *st, spec_stats *ss_out, pipe_stats *ps, char *err, size_t errlen);

/* The "pipeline" member of the --stats JSON (no braces around it). */
void pipeline_print_stats(FILE *f, const pipe_params *pp, const pipe_stats *ps);

#endif
