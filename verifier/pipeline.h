/*
 * pipeline.h - the verifier side of the two-process Draft & Verify pipeline
 * (`selfspec generate --mode pipeline`). This process owns the weight arena
 * (in POSIX shared memory), the verified KV cache (a second shared object),
 * the sequence and every verification; bin/selfspec-drafter, started and
 * restarted from here, maps both read-only and drafts blocks on request.
 * Messages: proto/selfspec.proto over ZeroMQ (see common/ipc/pipe.h); the
 * protocol, supervision and the drafter as a draft source are
 * common/ipc/protocol.h, supervisor.h and pipe_source.h; decoding is the
 * one engine loop (common/engine/engine.h); this is the generate-mode glue.
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
#include "decode/spec.h"
#include "ipc/pipe.h"
#include "ipc/supervisor.h"

/* pipe_params, pipe_stats and pipe_params_default: ipc/supervisor.h. */

/* Before model_load: pick the weight arena's shared-memory name
 * (/selfspec-<pid>-<random>-w), remove orphans of dead verifiers, and catch
 * SIGTERM/SIGINT (they end generation early, cleanly). Call
 * pipeline_loaded(name) right after model_load: it unlinks the name (the
 * drafter inherits a descriptor), so no segment outlives the processes. */
void pipeline_prepare(char *shm_name, size_t n);
void pipeline_loaded(const char *shm_name);

/* Greedy generation through the drafter process, decoded by the engine
 * (engine_run, pp->n_seqs copies of the prompt); same contract as
 * engine_generate. m must have been loaded with the name from
 * pipeline_prepare. SIGTERM/SIGINT end it early (ps->terminated).
 * device >= 0: on that GPU (one sequence, no speculation past a block): the
 * engine verifies over the CUDA backend and the drafter opens its weights
 * and verified KV through CUDA IPC (never run here: no GPU). */
int gen_pipeline(const model *m, int device, int32_t ctx, const spec_params *sp, const pipe_params *pp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *ectx,
                 gen_stats *st, spec_stats *ss_out, pipe_stats *ps, char *err, size_t errlen);

/* The "pipeline" member of the --stats JSON (no braces around it). */
void pipeline_print_stats(FILE *f, const pipe_params *pp, const pipe_stats *ps);

#endif
