/*
 * pipeline.c - `selfspec generate --mode pipeline`, the verifier's glue (see
 * pipeline.h): the shared-memory names and signals before the model loads,
 * the verified KV in shared memory, the supervisor (common/ipc/supervisor.h),
 * the drafter as the engine's draft source (common/ipc/pipe_source.h) and
 * the --stats JSON. The process's side of the supervisor lives here: its
 * SIGTERM/SIGINT flag and the environment it reads (the library reads
 * neither; pipe_params carries them).
 */
#include "pipeline.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "decode/sampler.h"
#include "engine/engine.h"
#include "ipc/pipe_source.h"
#include "model/backend.h"
#include "model/cuda_backend.h"
#include "util/util.h"

static volatile sig_atomic_t g_term;
static void on_term(int sig) { (void)sig; g_term = 1; }

void pipeline_prepare(char *shm_name, size_t n)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pipe_reap_orphans();
    snprintf(shm_name, n, "/selfspec-%d-%016llx-w", (int)getpid(), (unsigned long long)sup_random64());
}

void pipeline_loaded(const char *shm_name)
{
    shm_unlink(shm_name);   /* the mapping and descriptor stay; nothing is left behind */
}

static int stop_requested(void)
{
    return g_term != 0;
}

/* What the supervisor takes from this process's environment and signals
 * (pipe_params' caller fields), for a drafter on a GPU or not. */
static void env_params(pipe_params *lp, int gpu)
{
    const char *dbg = getenv("SELFSPEC_PIPELINE_DEBUG");
    const char *pol = getenv("SELFSPEC_PIPELINE_SPECULATE");   /* benchmark knob: "always" */
    lp->drafter_exe = getenv(gpu ? "SELFSPEC_DRAFTER_CUDA" : "SELFSPEC_DRAFTER");
    lp->debug = dbg ? atoi(dbg) : 0;
    lp->speculate_always = pol && !strcmp(pol, "always");
    /* Two OpenMP teams share the cores: a drafter whose idle workers spin
     * (libgomp's default) takes the cores from the verifier. Unless the user
     * chose a policy, the drafter's workers spin briefly, then sleep. */
    lp->drafter_env = !getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") ? "GOMP_SPINCOUNT=3000" : NULL;
    lp->stop = &g_term;
}

/* Before a request goes out on a GPU: the verified KV changed (the
 * engine's pass has synchronized its stream); record the interprocess event
 * the drafter's stream waits on. */
static void signal_kv(void *ctx)
{
    char err[256];
    if (backend_cuda_ipc_signal((model_backend *)ctx, err, sizeof err) != 0)
        fprintf(stderr, "selfspec-pipeline: %s\n", err);
}

int gen_pipeline(const model *m, int device, int32_t ctx, const spec_params *sp, const pipe_params *pp,
                 const int32_t *prompt, int32_t n_prompt, const gen_params *gp, gen_emit_fn emit, void *ectx,
                 gen_stats *st, spec_stats *ss_out, pipe_stats *ps, char *err, size_t errlen)
{
    int rc = -1;
    memset(st, 0, sizeof *st);
    memset(ss_out, 0, sizeof *ss_out);
    memset(ps, 0, sizeof *ps);
    if (gp->sampling.temperature != 0.0f)
        return util_err(err, errlen, "--mode pipeline decodes greedily only (use --temperature 0, or --mode self-spec)");
    if (!m->arena.shm_name[0] || m->arena.shm_fd < 0)
        return util_err(err, errlen, "the pipeline needs the weights in shared memory (pipeline_prepare)");
    if (spec_params_check(sp, err, errlen) != 0)
        return -1;
    int nseq = pp->n_seqs > 1 ? (pp->n_seqs < PROTO_MAX_SEQS ? pp->n_seqs : PROTO_MAX_SEQS) : 1;
    /* the verified caches: one per sequence slot, a position to spare past
     * the last token (the engine reserves it for a verification block) */
    int32_t kv_cap = ctx + 1;
    kv_cache kvs[PROTO_MAX_SEQS];
    memset(kvs, 0, sizeof kvs);
    pipe_shm kvshm = {.fd = -1};
    pipe_sup S = {.w_ro = -1, .kv_ro = -1};
    pipe_params lp = *pp;                /* what the supervisor sends (a GPU changes a few fields) */
    model_backend *be = NULL;
    uint8_t blob[CUDA_IPC_BLOB_BYTES];
    engine_params ep;
    engine_params_default(&ep);
    ep.max_seqs = nseq;
    ep.ctx = ctx;
    ep.mode = ENGINE_SPEC;
    ep.sp = *sp;
    ep.calibrate = 0;
    ep.slot_kv = kvs;

    if (device >= 0) {
        /* one GPU: the verified KV is a device cache of this backend, the
         * drafter opens it and the weights through CUDA IPC and drafts on
         * the device; sequential (no speculation past a block: without MPS
         * its kernels would only queue behind the verifier's). Two GPUs
         * (--draft-device): the drafter loads its own copy of the sublayers
         * it runs on its device, copies the verified KV as it grows over
         * peer access, and overlaps as on the CPU. */
        size_t kv_bytes = (size_t)kv_cap * 2 * m->config.n_layers * m->config.kv_dim * sizeof(kv_elem);
        if (nseq > 1)
            return util_err(err, errlen, "--pipeline-seqs runs on the CPU only; on a GPU the pipeline decodes one "
                            "sequence");
        memset(blob, 0, sizeof blob);
        be = backend_cuda_open(m, device, engine_pass_tokens(&ep), ctx + SPEC_MAX_DRAFT + 2, kv_bytes, err, errlen);
        if (!be)
            return -1;
        if (backend_cuda_kv_open_shared(be, &kvs[0], kv_cap, err, errlen) != 0 ||
            backend_cuda_ipc_export(be, &kvs[0], blob, err, errlen) != 0)
            goto out;
        lp.cuda_ipc = blob;
        lp.cuda_ipc_len = sizeof blob;
        lp.cuda_device = device;
        if (lp.cuda_draft_device == device)
            lp.cuda_draft_device = -1;
        if (lp.cuda_draft_device < 0)
            lp.overlap = 0;
        ep.backend = be;
        ps->kv_kb = (long)(kv_bytes >> 10);
    } else {
        char kvname[64];
        snprintf(kvname, sizeof kvname, "/selfspec-%d-%016llx-kv", (int)getpid(), (unsigned long long)sup_random64());
        if (pipe_kv_create(&kvshm, kvname, &m->config, kv_cap, nseq, kvs, err, errlen) != 0)
            goto out;
        shm_unlink(kvname);              /* mapped here, inherited by the drafter */
        ps->kv_kb = (long)(kvshm.size >> 10);
    }
    env_params(&lp, lp.cuda_ipc_len > 0);
    ps->overlap = lp.overlap;
    ps->device = device;
    ps->draft_device = device < 0 ? -1 : lp.cuda_draft_device >= 0 ? lp.cuda_draft_device : device;
    if (sup_open(&S, m, kvshm.fd, kv_cap, nseq, sp->max_draft, &lp, ps, err, errlen) != 0)
        goto out;
    ps->arena_kb = (long)(m->arena.size >> 10);

    sup_spawn(&S);                       /* starts while the prompt is prefilled */
    pipe_source src;
    pipe_source_init(&src, &S, lp.overlap);
    if (be) {
        src.before_send = signal_kv;
        src.before_ctx = be;
    }
    /* the one engine loop, with the drafter process as its draft source and
     * the shared caches as its sequences' KV; only sequence 0 is printed */
    ep.remote = &src.remote;
    rc = engine_run(m, &ep, nseq, prompt, n_prompt, gp, emit, ectx, stop_requested, st, ss_out, err, errlen);
    if (rc != 0)
        goto out;
    if (g_term)
        ps->terminated = 1;
    pipe_mem_read(getpid(), &ps->verifier_mem);
    if (S.pid > 0 && sup_ready(&S))
        pipe_mem_read(S.pid, &ps->drafter_mem);
out:
    sup_close(&S);                       /* the drafter exits before its memory goes */
    pipe_shm_unmap(&kvshm);
    if (be) {
        be->kv_close(be, &kvs[0]);
        backend_cuda_close(be);
    }
    return rc;
}

static void print_counters(FILE *f, const char *name, const pipe_counters *c)
{
    fprintf(f, "\"%s\": {\"malformed\": %llu, \"foreign\": %llu, \"replayed\": %llu, \"stale\": %llu, "
            "\"unexpected\": %llu}", name, (unsigned long long)c->malformed, (unsigned long long)c->foreign,
            (unsigned long long)c->replayed, (unsigned long long)c->stale, (unsigned long long)c->unexpected);
}

static void print_mem(FILE *f, const char *name, const pipe_mem *m)
{
    fprintf(f, "\"%s\": {\"rss_kb\": %ld, \"pss_kb\": %ld, \"pss_anon_kb\": %ld, \"pss_file_kb\": %ld, "
            "\"pss_shmem_kb\": %ld}", name, m->rss, m->pss, m->pss_anon, m->pss_file, m->pss_shmem);
}

void pipeline_print_stats(FILE *f, const pipe_params *pp, const pipe_stats *ps)
{
    fprintf(f, "\"pipeline\": {\"overlap\": %s, \"blocks\": %lld, \"spec_adopted\": %lld, \"spec_missed\": %lld, "
            "\"plain_steps\": %lld, \"wait_seconds\": %.4f, \"drafter_seconds\": %.4f, "
            "\"drafter_starts\": %lld, \"drafter_deaths\": %lld, "
            "\"drafter_timeouts\": %lld, \"last_drafter_pid\": %d, \"terminated\": %s, \"arena_kb\": %ld, "
            "\"kv_kb\": %ld, \"device\": %d, \"draft_device\": %d, ",
            ps->overlap ? "true" : "false", (long long)ps->blocks, (long long)ps->spec_adopted,
            (long long)ps->spec_missed, (long long)ps->plain_steps, ps->wait_seconds, ps->drafter_seconds,
            (long long)ps->drafter_starts, (long long)ps->drafter_deaths, (long long)ps->drafter_timeouts,
            ps->last_drafter_pid, ps->terminated ? "true" : "false", ps->arena_kb, ps->kv_kb, ps->device, ps->draft_device);
    print_counters(f, "verifier_rejected", &ps->rx);
    fprintf(f, ", ");
    print_counters(f, "drafter_rejected", &ps->drafter_rx);
    fprintf(f, ", ");
    print_mem(f, "verifier_mem", &ps->verifier_mem);
    fprintf(f, ", ");
    print_mem(f, "drafter_mem", &ps->drafter_mem);
    fprintf(f, "}");
}
