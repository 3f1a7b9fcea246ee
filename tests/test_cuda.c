/*
 * test_cuda.c - the CUDA backend (cuda_backend.h) against the CPU forward
 * pass (model_forward) on tiny random Llama models (testutil_model.h).
 *
 * Without a CUDA device (or in a build without nvcc) only the "graceful"
 * test runs: device counting, parsing and every constructor must fail with
 * a message, never crash. The GPU tests then print why and are skipped.
 *
 * Tolerances: the CPU quantizes activations to int8 for short blocks and the
 * GPU runs fp16 weights/activations with fp32 accumulation, so logits are
 * compared with |gpu - cpu| <= LOGIT_TOL * max(1, max|cpu|), and top-1 ids
 * must agree wherever the CPU's top-2 margin exceeds twice that bound.
 *
 * GPU against itself, no tolerance: cuda_forward runs the fixed-order
 * kernels (kernels/cuda_order.h), so a token's logits and
 * KV are the same bits as a plain T = 1 step, in a verification block, in a
 * batch with another sequence and in a masked draft batch
 * (test_exact_blocks, over a context cut into several attention splits),
 * and through the engine (the one decode loop) over the CUDA backend
 * self-spec output equals plain output by construction, graph replay
 * equals direct launches (test_generate). test_proj_vs_cublas compares the
 * fixed-order kernel with cuBLAS (tolerance) and prints what each costs.
 * The host ports of the same kernels (tests/test_cuda_order.c) check the
 * order on every machine. test_engine_on_gpu runs the engine over the CUDA
 * backend: alone = batched, plain = forced self-spec = auto, under a KV
 * budget. test_backend_device_caches drafts as the GPU drafter does: the
 * backend over a borrowed (masked) device model and caches it views.
 *
 * ASan: CUDA's runtime needs the shadow gap unprotected and leaks driver
 * state at exit, hence the default options below (this binary only).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "model/cuda_backend.h"
#include "decode/generate.h"
#include "decode/skipset.h"
#include "engine/engine.h"
#include "model/backend.h"
#include "decode/sampler.h"
#include "model/model.h"
#include "testutil_model.h"

#define LOGIT_TOL 0.03f

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "protect_shadow_gap=0:detect_leaks=0";
}

static int have_gpu(void)
{
    static int printed;
    int n = cuda_device_count();
    if (n == 0 && !printed) {
        printed = 1;
        printf("test_cuda: %s; GPU tests skipped\n",
               cuda_available() ? "no CUDA device available" : "built without CUDA (no nvcc)");
    }
    return n > 0;
}

/* ---- helpers ---- */

typedef struct {
    char path[128];
    model m;
    fwd_state s;
    cuda_model *cm;
    cuda_state *cs;
} fixture;

static void fixture_open(fixture *f, const tmodel_spec *sp, int32_t max_tokens, int32_t ctx)
{
    char err[512];
    memset(f, 0, sizeof *f);
    assert_int_equal(tmodel_write_temp(sp, f->path, sizeof f->path), 0);
    if (model_load(&f->m, f->path, NULL, err, sizeof err) != 0)
        fail_msg("model_load: %s", err);
    fwd_state_init(&f->s, &f->m.config, max_tokens, ctx);
    f->cm = cuda_model_load(&f->m, 0, err, sizeof err);
    if (!f->cm)
        fail_msg("cuda_model_load: %s", err);
    f->cs = cuda_state_init(f->cm, max_tokens, ctx, 1, err, sizeof err);
    if (!f->cs)
        fail_msg("cuda_state_init: %s", err);
}

/* The three-layer Q8_0 test model, passes of up to 64 tokens, context 128. */
static void fixture_open_small(fixture *f)
{
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.n_layers = 3;
    fixture_open(f, &sp, 64, 128);
}

static void fixture_close(fixture *f)
{
    cuda_state_free(f->cs);
    cuda_model_free(f->cm);
    fwd_state_free(&f->s);
    model_free(&f->m);
    unlink(f->path);
}

static int32_t argmax_row(const float *x, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static float margin_row(const float *x, int32_t n)
{
    int32_t b = argmax_row(x, n);
    float second = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (i != b && x[i] > second)
            second = x[i];
    return x[b] - second;
}

/* Compare rows of logits; returns the max abs difference. */
static float compare_logits(const float *cpu, const float *gpu, const int32_t *gpu_am, int32_t rows, int32_t V,
                            const char *what)
{
    float maxd = 0.0f, maxabs = 1.0f;
    for (size_t i = 0; i < (size_t)rows * V; i++) {
        maxabs = fmaxf(maxabs, fabsf(cpu[i]));
        assert_true(isfinite(gpu[i]));
    }
    float tol = LOGIT_TOL * maxabs;
    for (int32_t r = 0; r < rows; r++) {
        const float *c = cpu + (size_t)r * V, *g = gpu + (size_t)r * V;
        for (int32_t i = 0; i < V; i++)
            maxd = fmaxf(maxd, fabsf(c[i] - g[i]));
        if (margin_row(c, V) > 2 * tol) {
            if (argmax_row(g, V) != argmax_row(c, V))
                fail_msg("%s: row %d top-1 differs (cpu %d, gpu %d)", what, r, argmax_row(c, V), argmax_row(g, V));
            if (gpu_am && gpu_am[r] != argmax_row(c, V))
                fail_msg("%s: row %d device argmax %d, cpu %d", what, r, gpu_am[r], argmax_row(c, V));
        }
    }
    if (maxd > tol)
        fail_msg("%s: max |logit diff| %g exceeds %g", what, maxd, tol);
    return maxd;
}

static void make_tokens(int32_t *t, int32_t n, int32_t vocab, uint64_t seed)
{
    uint64_t st = seed;
    for (int32_t i = 0; i < n; i++)
        t[i] = (int32_t)(tmodel_rng(&st) % (uint64_t)vocab);
}

/* ---- tests ---- */

static void test_graceful(void **state)
{
    (void)state;
    char err[256] = "";
    int dev = 7;
    assert_int_equal(cuda_parse_device("cpu", &dev), 0);
    assert_int_equal(dev, -1);
    assert_int_equal(cuda_parse_device("cuda", &dev), 0);
    assert_int_equal(dev, 0);
    assert_int_equal(cuda_parse_device("cuda:3", &dev), 0);
    assert_int_equal(dev, 3);
    assert_int_equal(cuda_parse_device("cuda:", &dev), -1);
    assert_int_equal(cuda_parse_device("cuda:x", &dev), -1);
    assert_int_equal(cuda_parse_device("gpu", &dev), -1);
    int n = cuda_device_count();
    assert_true(n >= 0);
    if (!cuda_available())
        assert_int_equal(n, 0);
    if (n > 0)
        return;
    model_config c = {.dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                      .head_dim = 16, .kv_dim = 32, .vocab_size = 256, .rope_base = 10000.0f, .norm_eps = 1e-5f};
    assert_null(cuda_synthetic_model(&c, 0, 1, 0, err, sizeof err));
    assert_true(strlen(err) > 0);
    cuda_device_info info;
    assert_int_equal(cuda_get_device_info(0, &info, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    float row[3] = {1.0f, 2.0f, 3.0f};
    int32_t am = -1;
    err[0] = '\0';
    assert_int_equal(cuda_argmax_host(0, row, 1, 3, &am, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    backend_cuda_params bp = {.device = 0, .max_tokens = 8, .ctx = 64, .kv_mem = 1 << 20, .graphs = 1, .cm = NULL};
    err[0] = '\0';
    assert_null(backend_cuda_open_params(NULL, &bp, err, sizeof err));
    assert_true(strlen(err) > 0);
}

/* The device argmax picks what sampler_argmax picks, NaN and ties included
 * (rows longer than one block of threads, so the strided loop and the
 * warp/block reductions all take part). */
static void test_argmax_like_cpu(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    enum { ROWS = 10, N = 5000 };
    float *x = malloc((size_t)ROWS * N * sizeof(float));
    uint64_t st = 99;
    for (size_t i = 0; i < (size_t)ROWS * N; i++)
        x[i] = (float)(tmodel_rng(&st) % 2000) / 100.0f - 10.0f;
    float *r;
    r = x + 0 * N;   /* NaN at 0, a clear maximum elsewhere: the CPU says 0 */
    r[0] = NAN;
    r[17] = 50.0f;
    r = x + 1 * N;   /* NaN in the middle, after the maximum and before it */
    r[100] = NAN;
    r[4000] = 60.0f;
    r[4001] = NAN;
    r = x + 2 * N;   /* all NaN */
    for (int i = 0; i < N; i++)
        r[i] = NAN;
    r = x + 3 * N;   /* -inf at 0, NaN everywhere else */
    for (int i = 0; i < N; i++)
        r[i] = i ? NAN : -INFINITY;
    r = x + 4 * N;   /* a tie far apart: the smaller index */
    r[3333] = 70.0f;
    r[1234] = 70.0f;
    r = x + 5 * N;   /* all -inf */
    for (int i = 0; i < N; i++)
        r[i] = -INFINITY;
    r = x + 6 * N;   /* +inf after a NaN, and a second +inf */
    r[5] = NAN;
    r[2500] = INFINITY;
    r[4999] = INFINITY;
    r = x + 7 * N;   /* the maximum at the last index */
    r[N - 1] = 80.0f;
    int32_t am[ROWS];
    if (cuda_argmax_host(0, x, ROWS, N, am, err, sizeof err) != 0)
        fail_msg("cuda_argmax_host: %s", err);
    for (int i = 0; i < ROWS; i++)
        if (am[i] != sampler_argmax(x + (size_t)i * N, N))
            fail_msg("row %d: device argmax %d, sampler_argmax %d", i, am[i], sampler_argmax(x + (size_t)i * N, N));
    assert_int_equal(am[0], 0);
    assert_int_equal(am[1], 4000);
    assert_int_equal(am[4], 1234);
    assert_int_equal(am[6], 2500);
    free(x);
}

/* A block with no output rows (logits_from == n_tokens) writes its KV and
 * launches no head or argmax (a zero-block grid is an error); the next step
 * then sees that KV as the CPU does. */
static void test_forward_no_logits(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    fixture f;
    fixture_open(&f, &sp, 64, 128);
    int32_t V = f.m.config.vocab_size, n = 11;
    int32_t toks[11];
    make_tokens(toks, n, V, 8);
    kv_cache kv;
    assert_int_equal(kv_init(&kv, &f.m.config, 128, err, sizeof err), 0);
    cuda_kv *gkv = cuda_kv_init(f.cm, 128, err, sizeof err);
    assert_non_null(gkv);
    float *lc = malloc((size_t)V * sizeof(float)), *lg = malloc((size_t)V * sizeof(float));
    lg[0] = 12345.0f;
    int32_t am = -7;
    fwd_seq sq = {.tokens = toks, .n_tokens = n, .pos = 0, .kv = &kv, .logits_from = n};
    assert_int_equal(model_forward(&f.m, &f.s, &sq, 1, NULL, NULL, lc, err, sizeof err), 0);
    cuda_seq gq = {toks, n, 0, gkv, NULL, 0, n};
    if (cuda_forward(f.cm, f.cs, &gq, 1, NULL, lg, &am, err, sizeof err) != 0)
        fail_msg("cuda_forward without output rows: %s", err);
    assert_int_equal(am, -7);              /* nothing copied back */
    assert_true(lg[0] == 12345.0f);
    kv.len = n;
    cuda_kv_set_len(gkv, n);
    int32_t t = toks[3];
    fwd_seq s1 = {.tokens = &t, .n_tokens = 1, .pos = n, .kv = &kv, .logits_from = 0};
    assert_int_equal(model_forward(&f.m, &f.s, &s1, 1, NULL, NULL, lc, err, sizeof err), 0);
    cuda_seq g1 = {&t, 1, n, gkv, NULL, 0, 0};
    if (cuda_forward(f.cm, f.cs, &g1, 1, NULL, lg, &am, err, sizeof err) != 0)
        fail_msg("cuda_forward after a KV-only block: %s", err);
    compare_logits(lc, lg, &am, 1, V, "step after a KV-only block");
    cuda_kv_free(gkv);
    kv_free(&kv);
    free(lc);
    free(lg);
    fixture_close(&f);
}

/* Prefill-sized and short blocks, logits at every position. */
static void check_forward(const tmodel_spec *sp, int32_t n)
{
    char err[512];
    fixture f;
    fixture_open(&f, sp, 64, 128);
    int32_t V = f.m.config.vocab_size;
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    make_tokens(toks, n, V, 42);
    float *lc = malloc((size_t)n * V * sizeof(float)), *lg = malloc((size_t)n * V * sizeof(float));
    int32_t *am = malloc((size_t)n * sizeof(int32_t));
    kv_cache kv;
    assert_int_equal(kv_init(&kv, &f.m.config, 128, err, sizeof err), 0);
    cuda_kv *gkv = cuda_kv_init(f.cm, 128, err, sizeof err);
    assert_non_null(gkv);
    fwd_seq sq = {.tokens = toks, .n_tokens = n, .pos = 0, .kv = &kv, .logits_from = 0};
    assert_int_equal(model_forward(&f.m, &f.s, &sq, 1, NULL, NULL, lc, err, sizeof err), 0);
    cuda_seq gq = {toks, n, 0, gkv, NULL, 0, 0};
    if (cuda_forward(f.cm, f.cs, &gq, 1, NULL, lg, am, err, sizeof err) != 0)
        fail_msg("cuda_forward: %s", err);
    float d = compare_logits(lc, lg, am, n, V, "block");
    printf("  block of %d: max |logit diff| %.4g\n", n, d);

    /* the KV written matches the CPU's (half precision both) */
    kv_cache back;
    assert_int_equal(kv_init(&back, &f.m.config, 128, err, sizeof err), 0);
    if (cuda_kv_download(gkv, &back, n, err, sizeof err) != 0)
        fail_msg("cuda_kv_download: %s", err);
    float kd = 0.0f, kmax = 1.0f;
    for (int32_t l = 0; l < f.m.config.n_layers; l++)
        for (size_t i = 0; i < (size_t)n * f.m.config.kv_dim; i++) {
            size_t o = (size_t)l * 128 * f.m.config.kv_dim + i;
            float a = gguf_f16_to_f32(kv.k[o]), b = gguf_f16_to_f32(back.k[o]);
            kd = fmaxf(kd, fabsf(a - b));
            kmax = fmaxf(kmax, fabsf(a));
        }
    if (kd > LOGIT_TOL * kmax)
        fail_msg("KV differs by %g (scale %g)", kd, kmax);
    kv_free(&back);

    /* incremental T = 1 continuation of 4 tokens */
    kv.len = n;
    cuda_kv_set_len(gkv, n);
    for (int32_t j = 0; j < 4; j++) {
        int32_t t = (toks[j] * 7 + 3) % V;
        fwd_seq s1 = {.tokens = &t, .n_tokens = 1, .pos = n + j, .kv = &kv, .logits_from = 0};
        assert_int_equal(model_forward(&f.m, &f.s, &s1, 1, NULL, NULL, lc, err, sizeof err), 0);
        cuda_seq g1 = {&t, 1, n + j, gkv, NULL, 0, 0};
        if (cuda_forward(f.cm, f.cs, &g1, 1, NULL, lg, am, err, sizeof err) != 0)
            fail_msg("cuda_forward T=1: %s", err);
        compare_logits(lc, lg, am, 1, V, "step");
    }
    cuda_kv_free(gkv);
    kv_free(&kv);
    free(lc);
    free(lg);
    free(am);
    free(toks);
    fixture_close(&f);
}

static void test_forward_q8(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    check_forward(&sp, 40);      /* >= 32: the CPU's BLAS path */
    check_forward(&sp, 5);       /* the CPU's integer kernel */
}

static void test_forward_tied_padded_mha(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    tmodel_spec sp = tmodel_default(GGUF_TT_Q4_1);
    sp.vocab = 250;               /* padded to 256 rows on both backends */
    sp.tied = 1;
    sp.n_kv_heads = sp.n_heads;   /* plain multi-head attention */
    check_forward(&sp, 17);
}

/* Masked draft steps with a scratch cache, several sequences in one batch. */
static void test_mask_scratch_batch(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    const model_config *c = &f.m.config;
    int32_t V = c->vocab_size, n = 12;
    int32_t toks[2][12];
    make_tokens(toks[0], n, V, 1);
    make_tokens(toks[1], n, V, 2);
    kv_cache kv[2], scr[2];
    cuda_kv *gkv[2], *gscr[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kv_init(&kv[i], c, 64, err, sizeof err), 0);
        assert_int_equal(kv_init(&scr[i], c, 8, err, sizeof err), 0);
        gkv[i] = cuda_kv_init(f.cm, 64, err, sizeof err);
        gscr[i] = cuda_kv_init(f.cm, 8, err, sizeof err);
        assert_non_null(gkv[i]);
        assert_non_null(gscr[i]);
    }
    float *lc = malloc((size_t)4 * V * sizeof(float)), *lg = malloc((size_t)4 * V * sizeof(float));
    int32_t am[4];
    /* full-model prefill of both sequences in one batch, logits of the last 2 */
    fwd_seq cs[2];
    cuda_seq gs[2];
    for (int i = 0; i < 2; i++) {
        cs[i] = (fwd_seq){.tokens = toks[i], .n_tokens = n, .pos = 0, .kv = &kv[i], .logits_from = n - 2};
        gs[i] = (cuda_seq){toks[i], n, 0, gkv[i], NULL, 0, n - 2};
    }
    assert_int_equal(model_forward(&f.m, &f.s, cs, 2, NULL, NULL, lc, err, sizeof err), 0);
    if (cuda_forward(f.cm, f.cs, gs, 2, NULL, lg, am, err, sizeof err) != 0)
        fail_msg("cuda_forward batch: %s", err);
    compare_logits(lc, lg, am, 4, V, "batch of 2");
    /* draft: skip attention of layer 1 and the MLP of layer 2 */
    uint8_t attn[3] = {1, 0, 1}, mlp[3] = {1, 1, 0};
    layer_mask mask = {attn, mlp};
    int32_t d[2] = {toks[0][0], toks[1][1]};
    for (int j = 0; j < 3; j++) {
        for (int i = 0; i < 2; i++) {
            cs[i] = (fwd_seq){.tokens = &d[i], .n_tokens = 1, .pos = n + j, .kv = &kv[i], .scratch = &scr[i],
                              .scratch_base = n, .logits_from = 0};
            gs[i] = (cuda_seq){&d[i], 1, n + j, gkv[i], gscr[i], n, 0};
        }
        assert_int_equal(model_forward(&f.m, &f.s, cs, 2, &mask, NULL, lc, err, sizeof err), 0);
        if (cuda_forward(f.cm, f.cs, gs, 2, &mask, lg, am, err, sizeof err) != 0)
            fail_msg("cuda_forward draft: %s", err);
        compare_logits(lc, lg, am, 2, V, "draft step");
        d[0] = argmax_row(lc, V);
        d[1] = argmax_row(lc + V, V);
    }
    /* errors: past the cache, bad token */
    int32_t bad = V;
    cuda_seq e1 = {&bad, 1, 0, gkv[0], NULL, 0, 0};
    assert_int_equal(cuda_forward(f.cm, f.cs, &e1, 1, NULL, NULL, NULL, err, sizeof err), -1);
    int32_t ok = 1;
    cuda_seq e2 = {&ok, 1, 64, gkv[0], NULL, 0, 0};
    assert_int_equal(cuda_forward(f.cm, f.cs, &e2, 1, NULL, NULL, NULL, err, sizeof err), -1);
    for (int i = 0; i < 2; i++) {
        cuda_kv_free(gkv[i]);
        cuda_kv_free(gscr[i]);
        kv_free(&kv[i]);
        kv_free(&scr[i]);
    }
    free(lc);
    free(lg);
    fixture_close(&f);
}

/* Sampling on the device: for the rows of one pass and a grid of
 * uniforms, k_sample draws what samp_reference (the rule's sequential
 * host form, checked against the host sampler in test_cuda_order) draws
 * from the same logits, but for a rare u at a boundary, where the device's
 * tree-ordered sums round differently; greedy rows keep the argmax; a
 * request for more rows than the pass left is refused. */
static void test_sample_on_gpu(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    int32_t V = f.m.config.vocab_size, toks[4], am[4], ids[4];
    make_tokens(toks, 4, V, 5);
    cuda_kv *kv = cuda_kv_init(f.cm, 64, err, sizeof err);
    assert_non_null(kv);
    cuda_seq sq = {toks, 4, 0, kv, NULL, 0, 0};
    float *lg = malloc((size_t)4 * V * sizeof(float));
    assert_int_equal(cuda_forward(f.cm, f.cs, &sq, 1, NULL, lg, am, err, sizeof err), 0);
    int differ = 0, n = 0;
    for (int j = 0; j < 64; j++) {
        samp_req rq[4] = {{.temperature = 0.0f, .top_p = 1.0f, .u = 0.3f},
                          {.temperature = 1.0f, .top_p = 1.0f, .u = (j + 0.5f) / 64},
                          {.temperature = 0.8f, .top_k = 10, .top_p = 0.9f, .u = (j + 0.5f) / 64},
                          {.temperature = 2.0f, .top_p = 0.95f, .u = (j + 0.25f) / 64}};
        assert_int_equal(cuda_sample_rows(f.cs, rq, 4, ids, NULL, err, sizeof err), 0);
        assert_int_equal(ids[0], am[0]);
        for (int r = 1; r < 4; r++, n++)
            differ += ids[r] != samp_reference(lg + (size_t)r * V, V, &rq[r], am[r]);
    }
    if (differ > 2)
        fail_msg("device draws differ from the rule's in %d of %d", differ, n);
    samp_req five[5] = {{0}};
    assert_int_equal(cuda_sample_rows(f.cs, five, 5, ids, NULL, err, sizeof err), -1);
    free(lg);
    cuda_kv_free(kv);
    fixture_close(&f);
}

/* Speculative sampling on the device: a draft pass's rows through
 * k_draft (cuda_draft_rows) give samp_draft_reference's conf and q rows
 * (to float rounding of sums taken in another order) and mostly its
 * tokens; a verification's test rows through k_sample give
 * samp_reference_row's verdicts and replacements but for a rare boundary;
 * a test row whose slot no draft filled is refused. */
static void test_spec_on_gpu(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    int32_t V = f.m.config.vocab_size, toks[4], am[4], ids[4];
    float conf[4], rconf;
    make_tokens(toks, 4, V, 9);
    cuda_kv *kv = cuda_kv_init(f.cm, 64, err, sizeof err);
    assert_non_null(kv);
    cuda_seq sq = {toks, 4, 0, kv, NULL, 0, 0};
    float *lg = malloc((size_t)4 * V * sizeof(float)), *qr = malloc((size_t)4 * V * sizeof(float));
    assert_int_equal(cuda_forward(f.cm, f.cs, &sq, 1, NULL, lg, am, err, sizeof err), 0);
    samp_req te = {.temperature = 1.0f, .top_p = 1.0f, .kind = SAMP_TEST, .x = 1, .q_slot = 5, .u = 0.5f,
                   .u_acc = 0.5f};
    assert_int_equal(cuda_sample_rows(f.cs, &te, 1, ids, NULL, err, sizeof err), -1);   /* slot 5 is empty */
    samp_req dq[4] = {{.temperature = 0.0f, .top_p = 1.0f},
                      {.temperature = 0.9f, .top_p = 0.95f, .u = 0.3f},
                      {.temperature = 1.1f, .top_k = 20, .top_p = 1.0f, .u = 0.7f},
                      {.temperature = 0.7f, .top_p = 0.9f, .u = 0.1f}};
    int32_t slot[4] = {-1, 0, 1, 2};
    assert_int_equal(cuda_draft_rows(f.cs, dq, slot, 4, ids, conf, err, sizeof err), 0);
    int differ = 0;
    for (int r = 0; r < 4; r++) {
        int32_t t = samp_draft_reference(lg + (size_t)r * V, V, &dq[r], am[r], qr + (size_t)r * V, &rconf);
        assert_true(fabsf(conf[r] - rconf) <= 1e-5f * rconf);
        differ += t != ids[r];
    }
    assert_int_equal(ids[0], am[0]);
    assert_true(differ <= 1);
    /* test rows against those slots, and a context token's */
    int mismatch = 0, n = 0;
    for (int j = 0; j < 32; j++) {
        samp_req tr[4];
        for (int r = 0; r < 4; r++)
            tr[r] = (samp_req){.temperature = r ? dq[r].temperature : 0.8f, .top_k = dq[r].top_k,
                               .top_p = dq[r].top_p, .u = (j + 0.5f) / 32, .kind = r ? SAMP_TEST : SAMP_TEST_CTX,
                               .x = (am[r] + j % 3) % V, .q_slot = r ? slot[r] : -1, .u_acc = (j + 0.25f) / 32};
        uint8_t acc[4];
        assert_int_equal(cuda_sample_rows(f.cs, tr, 4, ids, acc, err, sizeof err), 0);
        for (int r = 0; r < 4; r++, n++) {
            int a;
            int32_t t = samp_reference_row(lg + (size_t)r * V, V, &tr[r], am[r], qr + (size_t)r * V, &a);
            mismatch += t != ids[r] || a != acc[r];
        }
    }
    if (mismatch > 3)
        fail_msg("device test rows differ from the rule's in %d of %d", mismatch, n);
    free(lg);
    free(qr);
    cuda_kv_free(kv);
    fixture_close(&f);
}

/* Paged KV on the device: two sequences over views of pool blocks handed
 * out by a ledger, as the backend keeps one (not starting at block 0),
 * give the bits of the same passes over contiguous caches -- prompt blocks
 * cut at an odd place, then single steps across a block edge, batched
 * together -- and the KV they wrote downloads the same; the
 * contiguous-only operations refuse a paged cache. */
static void test_paged_kv(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    int32_t V = f.m.config.vocab_size, toks[2][40];
    make_tokens(toks[0], 40, V, 11);
    make_tokens(toks[1], 40, V, 12);
    cuda_kv_pool *pool = cuda_kv_pool_init(f.cm, 16, err, sizeof err);
    assert_non_null(pool);
    kv_pool ledger;
    kv_ledger_init(&ledger, &f.m.config, 16);
    kv_cache spare, hk[2];
    assert_int_equal(kv_init_paged(&spare, &ledger, 3 * KV_BLOCK), 0);   /* the others start mid-pool */
    cuda_kv *pg[2], *ct[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kv_init_paged(&hk[i], &ledger, 48), 0);
        pg[i] = cuda_kv_paged(pool, hk[i].blocks, 3, err, sizeof err);
        ct[i] = cuda_kv_init(f.cm, 48, err, sizeof err);
        assert_non_null(pg[i]);
        assert_non_null(ct[i]);
        assert_int_equal(cuda_kv_is_paged(pg[i]), 1);
    }
    kv_free(&spare);
    int32_t bad = 99;
    assert_null(cuda_kv_paged(pool, &bad, 1, err, sizeof err));
    float *la = malloc((size_t)40 * V * sizeof(float)), *lb = malloc((size_t)40 * V * sizeof(float));
    int32_t ama[40], amb[40];
    /* prompts of 19 and 23 tokens in one pass, then steps to position 36 */
    int32_t len[2] = {19, 23};
    for (int step = 0; step < 15; step++) {
        cuda_seq a[2], b[2];
        for (int i = 0; i < 2; i++) {
            int32_t pos = step == 0 ? 0 : len[i] + step - 1, n = step == 0 ? len[i] : 1;
            a[i] = (cuda_seq){toks[i] + pos, n, pos, pg[i], NULL, 0, 0};
            b[i] = (cuda_seq){toks[i] + pos, n, pos, ct[i], NULL, 0, 0};
        }
        assert_int_equal(cuda_forward(f.cm, f.cs, a, 2, NULL, la, ama, err, sizeof err), 0);
        assert_int_equal(cuda_forward(f.cm, f.cs, b, 2, NULL, lb, amb, err, sizeof err), 0);
        int32_t rows = a[0].n_tokens + a[1].n_tokens;
        if (memcmp(la, lb, (size_t)rows * V * sizeof(float)) || memcmp(ama, amb, (size_t)rows * sizeof(int32_t)))
            fail_msg("paged and contiguous caches differ at step %d", step);
    }
    for (int i = 0; i < 2; i++) {
        kv_cache x, y;
        assert_int_equal(kv_init(&x, &f.m.config, 48, err, sizeof err), 0);
        assert_int_equal(kv_init(&y, &f.m.config, 48, err, sizeof err), 0);
        int32_t n = len[i] + 14;
        assert_int_equal(cuda_kv_download(pg[i], &x, n, err, sizeof err), 0);
        assert_int_equal(cuda_kv_download(ct[i], &y, n, err, sizeof err), 0);
        for (int32_t l = 0; l < f.m.config.n_layers; l++) {
            size_t o = (size_t)l * 48 * f.m.config.kv_dim, bytes = (size_t)n * f.m.config.kv_dim * sizeof(kv_elem);
            assert_memory_equal(x.k + o, y.k + o, bytes);
            assert_memory_equal(x.v + o, y.v + o, bytes);
        }
        kv_free(&x);
        kv_free(&y);
    }
    assert_int_equal(cuda_kv_shift(pg[0], 1, 4, err, sizeof err), -1);
    assert_int_equal(cuda_kv_copy(f.cm, ct[0], pg[0], NULL, 0, 4, err, sizeof err), -1);
    for (int i = 0; i < 2; i++) {
        cuda_kv_free(pg[i]);
        cuda_kv_free(ct[i]);
        kv_free(&hk[i]);
    }
    assert_int_equal(ledger.n_free, 16);
    kv_pool_free(&ledger);
    cuda_kv_pool_free(pool);
    free(la);
    free(lb);
    fixture_close(&f);
}

/* The drafter's pieces on a second GPU, run here on device 0: a copy of
 * the model with only the draft's sublayers (cuda_model_load_masked) drafts
 * the same bits as the full copy under the same mask and refuses a pass
 * that needs what it lacks; the verified KV copied to its own cache
 * (cuda_kv_copy, in two increments) serves the same draft; cuda_kv_shift
 * moves scratch rows as the drafter's rebase does. */
static void test_partial_copy_kv_ops(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    const model_config *c = &f.m.config;
    int32_t V = c->vocab_size, n = 12;
    uint8_t attn[3] = {1, 0, 1}, mlp[3] = {1, 1, 0};
    layer_mask mask = {attn, mlp};
    cuda_model *pm = cuda_model_load_masked(&f.m, 0, &mask, err, sizeof err);
    if (!pm)
        fail_msg("cuda_model_load_masked: %s", err);
    assert_true(cuda_model_weight_bytes(pm) < cuda_model_weight_bytes(f.cm));
    cuda_state *ps = cuda_state_init(pm, 64, 128, 1, err, sizeof err);
    assert_non_null(ps);
    int32_t toks[12];
    make_tokens(toks, n, V, 3);
    cuda_kv *vkv = cuda_kv_init(f.cm, 64, err, sizeof err), *scr = cuda_kv_init(f.cm, 8, err, sizeof err);
    cuda_kv *own = cuda_kv_init(pm, 64, err, sizeof err), *pscr = cuda_kv_init(pm, 8, err, sizeof err);
    assert_true(vkv && scr && own && pscr);
    /* the verifier prefills; the drafter's copy follows in two increments */
    cuda_seq pre = {toks, n, 0, vkv, NULL, 0, n - 1};
    assert_int_equal(cuda_forward(f.cm, f.cs, &pre, 1, NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(cuda_kv_copy(pm, own, vkv, &mask, 0, 5, err, sizeof err), 0);
    assert_int_equal(cuda_kv_copy(pm, own, vkv, &mask, 5, n, err, sizeof err), 0);
    assert_int_equal(cuda_kv_copy(pm, own, vkv, &mask, 3, 65, err, sizeof err), -1);   /* past the cache */
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    int32_t d = toks[n - 1], ama, amb;
    for (int j = 0; j < 3; j++) {
        cuda_seq qa = {&d, 1, n + j, vkv, scr, n, 0}, qb = {&d, 1, n + j, own, pscr, n, 0};
        if (cuda_forward(f.cm, f.cs, &qa, 1, &mask, la, &ama, err, sizeof err) != 0 ||
            cuda_forward(pm, ps, &qb, 1, &mask, lb, &amb, err, sizeof err) != 0)
            fail_msg("draft step: %s", err);
        assert_memory_equal(la, lb, (size_t)V * sizeof(float));
        assert_int_equal(ama, amb);
        d = ama;
    }
    /* the full model on the partial copy: a clear error */
    cuda_seq full = {&d, 1, n, own, NULL, 0, 0};
    assert_int_equal(cuda_forward(pm, ps, &full, 1, NULL, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not hold"));
    /* shift the drafter's scratch by 2 (its rows 0..2 hold the three draft
     * positions): row 2 moves to row 0, in every layer, K and V */
    kv_cache before, after;
    assert_int_equal(kv_init(&before, c, 8, err, sizeof err), 0);
    assert_int_equal(kv_init(&after, c, 8, err, sizeof err), 0);
    assert_int_equal(cuda_kv_download(pscr, &before, 3, err, sizeof err), 0);
    assert_int_equal(cuda_kv_shift(pscr, 2, 3, err, sizeof err), 0);
    assert_int_equal(cuda_kv_shift(pscr, 4, 3, err, sizeof err), -1);
    assert_int_equal(cuda_kv_download(pscr, &after, 1, err, sizeof err), 0);
    size_t row = (size_t)c->kv_dim;
    for (int l = 0; l < c->n_layers; l++) {
        size_t at = (size_t)l * 8 * row;
        assert_memory_equal(after.k + at, before.k + at + 2 * row, row * sizeof(kv_elem));
        assert_memory_equal(after.v + at, before.v + at + 2 * row, row * sizeof(kv_elem));
    }
    kv_free(&before);
    kv_free(&after);
    free(la);
    free(lb);
    cuda_kv_free(own);
    cuda_kv_free(pscr);
    cuda_kv_free(vkv);
    cuda_kv_free(scr);
    cuda_state_free(ps);
    cuda_model_free(pm);
    fixture_close(&f);
}

/* A token's logits and KV do not depend on the pass it is in: a prompt
 * prefilled in chunks of 64 or of 37, plain T = 1 steps, one verification
 * block, that block batched with another sequence, and masked draft steps
 * alone and batched, all bit for bit.
 * The prompt (300 positions, ctx 1024: attention span 256) puts the block
 * past the first attention split. */
static void test_exact_blocks(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    enum { N = 300, K = 5, CTX = 1024, CH = 64 };
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.n_layers = 3;
    sp.ctx = CTX;
    fixture f;
    fixture_open(&f, &sp, CH, CTX);
    const model_config *c = &f.m.config;
    int32_t V = c->vocab_size;
    int32_t *prompt = malloc(N * sizeof(int32_t)), other[40], d[K];
    make_tokens(prompt, N, V, 71);
    make_tokens(other, 40, V, 72);
    make_tokens(d, K, V, 73);
    cuda_kv *kv = cuda_kv_init(f.cm, CTX, err, sizeof err), *kv2 = cuda_kv_init(f.cm, CTX, err, sizeof err);
    cuda_kv *scr = cuda_kv_init(f.cm, 8, err, sizeof err), *scr2 = cuda_kv_init(f.cm, 8, err, sizeof err);
    assert_non_null(kv);
    assert_non_null(kv2);
    assert_non_null(scr);
    assert_non_null(scr2);
    for (int32_t done = 0; done < N; done += CH) {
        int32_t n = N - done < CH ? N - done : CH;
        cuda_seq q = {prompt + done, n, done, kv, NULL, 0, n};
        if (cuda_forward(f.cm, f.cs, &q, 1, NULL, NULL, NULL, err, sizeof err) != 0)
            fail_msg("prefill: %s", err);
    }
    /* the same prompt in chunks of 37 (kv2 is free until the next step)
     * leaves the same KV bits */
    for (int32_t done = 0; done < N; done += 37) {
        int32_t n = N - done < 37 ? N - done : 37;
        cuda_seq q = {prompt + done, n, done, kv2, NULL, 0, n};
        if (cuda_forward(f.cm, f.cs, &q, 1, NULL, NULL, NULL, err, sizeof err) != 0)
            fail_msg("prefill in 37s: %s", err);
    }
    {
        kv_cache a, b;
        assert_int_equal(kv_init(&a, c, CTX, err, sizeof err), 0);
        assert_int_equal(kv_init(&b, c, CTX, err, sizeof err), 0);
        if (cuda_kv_download(kv, &a, N, err, sizeof err) != 0 || cuda_kv_download(kv2, &b, N, err, sizeof err) != 0)
            fail_msg("download: %s", err);
        for (int32_t l = 0; l < c->n_layers; l++) {
            size_t o = (size_t)l * CTX * c->kv_dim, n = (size_t)N * c->kv_dim;
            assert_memory_equal(a.k + o, b.k + o, n * sizeof(a.k[0]));
            assert_memory_equal(a.v + o, b.v + o, n * sizeof(a.v[0]));
        }
        kv_free(&a);
        kv_free(&b);
    }
    cuda_seq q2 = {other, 40, 0, kv2, NULL, 0, 40};
    if (cuda_forward(f.cm, f.cs, &q2, 1, NULL, NULL, NULL, err, sizeof err) != 0)
        fail_msg("prefill 2: %s", err);
    float *plain = malloc((size_t)K * V * sizeof(float)), *blk = malloc((size_t)(K + 1) * V * sizeof(float));
    float *one = malloc((size_t)V * sizeof(float));
    int32_t am_plain[K], am_blk[K + 1];
    /* plain: K steps of one token */
    for (int j = 0; j < K; j++) {
        cuda_seq q = {&d[j], 1, N + j, kv, NULL, 0, 0};
        if (cuda_forward(f.cm, f.cs, &q, 1, NULL, plain + (size_t)j * V, &am_plain[j], err, sizeof err) != 0)
            fail_msg("plain step %d: %s", j, err);
    }
    kv_cache k_plain, k_blk;
    assert_int_equal(kv_init(&k_plain, c, CTX, err, sizeof err), 0);
    assert_int_equal(kv_init(&k_blk, c, CTX, err, sizeof err), 0);
    if (cuda_kv_download(kv, &k_plain, N + K, err, sizeof err) != 0)
        fail_msg("download: %s", err);
    /* verification: the same K tokens as one block (it rewrites their KV) */
    cuda_seq qb = {d, K, N, kv, NULL, 0, 0};
    if (cuda_forward(f.cm, f.cs, &qb, 1, NULL, blk, am_blk, err, sizeof err) != 0)
        fail_msg("block: %s", err);
    assert_memory_equal(plain, blk, (size_t)K * V * sizeof(float));
    assert_memory_equal(am_plain, am_blk, K * sizeof(int32_t));
    if (cuda_kv_download(kv, &k_blk, N + K, err, sizeof err) != 0)
        fail_msg("download: %s", err);
    for (int32_t l = 0; l < c->n_layers; l++) {
        size_t o = (size_t)l * CTX * c->kv_dim, n = (size_t)(N + K) * c->kv_dim;
        assert_memory_equal(k_plain.k + o, k_blk.k + o, n * sizeof(k_plain.k[0]));
        assert_memory_equal(k_plain.v + o, k_blk.v + o, n * sizeof(k_plain.v[0]));
    }
    /* the other sequence's next token alone, then both in one batch */
    int32_t e = other[3];
    cuda_seq q1 = {&e, 1, 40, kv2, NULL, 0, 0};
    if (cuda_forward(f.cm, f.cs, &q1, 1, NULL, one, NULL, err, sizeof err) != 0)
        fail_msg("other alone: %s", err);
    cuda_seq bq[2] = {{&e, 1, 40, kv2, NULL, 0, 0}, {d, K, N, kv, NULL, 0, 0}};
    if (cuda_forward(f.cm, f.cs, bq, 2, NULL, blk, am_blk, err, sizeof err) != 0)
        fail_msg("batch: %s", err);
    assert_memory_equal(one, blk, (size_t)V * sizeof(float));
    assert_memory_equal(plain, blk + V, (size_t)K * V * sizeof(float));
    /* masked draft steps: alone, then batched with the other sequence */
    uint8_t attn[3] = {1, 0, 1}, mlp[3] = {1, 1, 0};
    layer_mask mask = {attn, mlp};
    cuda_seq dq = {&d[0], 1, N, kv, scr, N, 0};
    if (cuda_forward(f.cm, f.cs, &dq, 1, &mask, plain, NULL, err, sizeof err) != 0)
        fail_msg("draft alone: %s", err);
    cuda_seq db[2] = {{&e, 1, 40, kv2, scr2, 40, 0}, {&d[0], 1, N, kv, scr, N, 0}};
    if (cuda_forward(f.cm, f.cs, db, 2, &mask, blk, NULL, err, sizeof err) != 0)
        fail_msg("draft batch: %s", err);
    assert_memory_equal(plain, blk + V, (size_t)V * sizeof(float));
    printf("  chunks of 64 = chunks of 37 (KV); plain = block = batch (logits, argmax, KV); draft alone = draft "
           "batched: bit for bit\n");
    kv_free(&k_plain);
    kv_free(&k_blk);
    cuda_kv_free(kv);
    cuda_kv_free(kv2);
    cuda_kv_free(scr);
    cuda_kv_free(scr2);
    free(prompt);
    free(plain);
    free(blk);
    free(one);
    fixture_close(&f);
}

/* The fixed-order projection against cuBLAS: within tolerance, every
 * token's row its T = 1 bits; the cost of each printed. */
static void test_proj_vs_cublas(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    static const struct { int32_t rows, cols, T; } cases[] = {
        {576, 576, 1}, {576, 576, 5}, {1536, 576, 64}, {49152, 576, 1}, {1000, 1544, 256}, {1536, 576, 1000},
        {4096, 4096, 1}, {4096, 4096, 5}, {11008, 4096, 16}, {4096, 11008, 64}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cuda_proj_report r;
        if (cuda_proj_check(0, cases[i].rows, cases[i].cols, cases[i].T, 20, &r, err, sizeof err) != 0)
            fail_msg("cuda_proj_check: %s", err);
        printf("  proj %5d x %5d, T %3d: fixed %.4f ms, cuBLAS %.4f ms (x%.2f), max |diff| %.3g of %.3g\n",
               cases[i].rows, cases[i].cols, cases[i].T, r.ms_fixed, r.ms_cublas,
               r.ms_cublas > 0 ? r.ms_fixed / r.ms_cublas : 0.0, r.max_abs_diff, r.max_abs);
        assert_true(r.rows_identical);
        assert_true(r.max_abs_diff <= 1e-3 * fmax(1.0, r.max_abs));
    }
}

typedef struct {
    int32_t ids[256];
    int n;
} collect;

static int collect_emit(void *ctx, int32_t t)
{
    collect *c = ctx;
    if (c->n < 256)
        c->ids[c->n++] = t;
    return 0;
}

/* One greedy request through the engine (the one decode loop) over a CUDA
 * backend on f's device model: plain when ss is NULL, else forced
 * self-spec (drafts of at most 4); graphs: the backend's choice. */
static void engine_greedy(fixture *f, const skip_set *ss, int graphs, const int32_t *prompt, int32_t n_prompt,
                          int32_t max_new, collect *out, spec_stats *sps)
{
    char err[512];
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = 1;
    p.ctx = 128;
    p.mode = ss ? ENGINE_SPEC : ENGINE_PLAIN;
    p.ss = ss;
    p.sp.max_draft = 4;
    p.calibrate = 0;
    p.kv_mem = kv_pool_block_bytes(&f->m.config) * (size_t)kv_blocks_for(p.ctx);
    backend_cuda_params bp = {.device = 0, .max_tokens = engine_pass_tokens(&p), .ctx = p.ctx + SPEC_MAX_DRAFT + 2,
                              .kv_mem = p.kv_mem, .graphs = graphs, .cm = f->cm};
    p.backend = backend_cuda_open_params(&f->m, &bp, err, sizeof err);
    if (!p.backend)
        fail_msg("backend_cuda_open_params: %s", err);
    gen_params gp = {.max_tokens = max_new, .ignore_eos = 1,
                     .sampling = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0}};
    gen_stats st;
    memset(out, 0, sizeof *out);
    if (engine_run(&f->m, &p, 1, prompt, n_prompt, &gp, collect_emit, out, NULL, &st, sps, err, sizeof err) != 0)
        fail_msg("engine_run on the GPU: %s", err);
    backend_cuda_close(p.backend);   /* f->cm is borrowed: it stays */
}

/* Greedy decoding through the engine on the GPU: graph replay = direct
 * launches = self-spec (exact by construction: the fixed-order kernels
 * give the verification block the plain steps' logits); and the CPU's
 * greedy tokens wherever its margins are clear. */
static void test_generate(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.n_layers = 4;
    fixture f;
    fixture_open(&f, &sp, 64, 128);
    int32_t prompt[9];
    make_tokens(prompt, 9, f.m.config.vocab_size, 5);
    collect a, b, c;
    spec_stats sps;
    engine_greedy(&f, NULL, 1, prompt, 9, 40, &a, NULL);
    assert_int_equal(a.n, 40);
    engine_greedy(&f, NULL, 0, prompt, 9, 40, &b, NULL);
    assert_int_equal(b.n, 40);
    assert_memory_equal(a.ids, b.ids, 40 * sizeof(int32_t));
    skip_set ss;
    skipset_init(&ss, 4);
    ss.attn_skip[1] = 1;   /* the mask {1, 0, 1, 1} / {1, 1, 0, 1} */
    ss.mlp_skip[2] = 1;
    for (int g = 0; g < 2; g++) {
        engine_greedy(&f, &ss, g, prompt, 9, 40, &c, &sps);
        assert_int_equal(c.n, 40);
        assert_memory_equal(a.ids, c.ids, 40 * sizeof(int32_t));
        printf("  self-spec (graphs %d): %lld drafted, %lld accepted in %lld verifications\n", g,
               (long long)sps.counts.num_draft_tokens, (long long)sps.counts.num_accepted_tokens, (long long)sps.verifications);
    }
    skipset_free(&ss);
    /* CPU greedy, compared while the CPU's top-2 margin is clear */
    kv_cache ckv;
    assert_int_equal(kv_init(&ckv, &f.m.config, 128, err, sizeof err), 0);
    float *lg = malloc((size_t)f.m.config.vocab_size * sizeof(float));
    assert_int_equal(gen_prefill(&f.m, &f.s, &ckv, prompt, 9, lg, err, sizeof err), 0);
    for (int i = 0; i < 40; i++) {
        int32_t t = argmax_row(lg, f.m.config.vocab_size);
        if (margin_row(lg, f.m.config.vocab_size) < 0.1f) {
            printf("  CPU/GPU greedy compared for %d tokens (near tie next)\n", i);
            break;
        }
        assert_int_equal(t, a.ids[i]);
        fwd_seq s1 = {.tokens = &t, .n_tokens = 1, .pos = ckv.len, .kv = &ckv, .logits_from = 0};
        assert_int_equal(model_forward(&f.m, &f.s, &s1, 1, NULL, NULL, lg, err, sizeof err), 0);
        ckv.len++;
    }
    free(lg);
    kv_free(&ckv);
    fixture_close(&f);
}

/* The GPU drafter's path (drafter/drafter.c): the backend over a device
 * model it does not own (here the masked copy, as on a second GPU) and
 * caches it only views (backend_cuda_kv_wrap); masked passes with the
 * draft rows taken on the device (draft_take) give the tokens of
 * cuda_forward's argmax on the same caches, and the top-1 probability of
 * its logits row. Closing the views and the backend leaves model and
 * caches usable. */
static void test_backend_device_caches(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    fixture f;
    fixture_open_small(&f);
    const model_config *c = &f.m.config;
    int32_t V = c->vocab_size, n = 12;
    uint8_t attn[3] = {1, 0, 1}, mlp[3] = {1, 1, 0};
    layer_mask mask = {attn, mlp};
    cuda_model *pm = cuda_model_load_masked(&f.m, 0, &mask, err, sizeof err);
    if (!pm)
        fail_msg("cuda_model_load_masked: %s", err);
    int32_t toks[12];
    make_tokens(toks, n, V, 3);
    cuda_kv *vkv = cuda_kv_init(f.cm, 64, err, sizeof err), *scr = cuda_kv_init(f.cm, 8, err, sizeof err);
    cuda_kv *own = cuda_kv_init(pm, 64, err, sizeof err), *pscr = cuda_kv_init(pm, 8, err, sizeof err);
    assert_true(vkv && scr && own && pscr);
    cuda_seq pre = {toks, n, 0, vkv, NULL, 0, n - 1};
    assert_int_equal(cuda_forward(f.cm, f.cs, &pre, 1, NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(cuda_kv_copy(pm, own, vkv, &mask, 0, n, err, sizeof err), 0);
    backend_cuda_params bp = {.device = 0, .max_tokens = 1, .ctx = 64, .kv_mem = 0, .graphs = 1, .cm = pm};
    model_backend *be = backend_cuda_open_params(&f.m, &bp, err, sizeof err);
    if (!be)
        fail_msg("backend over a borrowed model: %s", err);
    kv_cache gk, gs;
    assert_int_equal(backend_cuda_kv_wrap(be, &gk, own, err, sizeof err), 0);
    assert_int_equal(backend_cuda_kv_wrap(be, &gs, pscr, err, sizeof err), 0);
    assert_int_equal(gk.cap, 64);
    float *la = malloc((size_t)V * sizeof(float));
    int32_t d = toks[n - 1], e = d, ama, amb, slot = -1;
    const samp_req greedy = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .kind = SAMP_DRAW};
    gk.len = n;
    for (int j = 0; j < 3; j++) {
        cuda_seq qa = {&d, 1, n + j, vkv, scr, n, 0};
        fwd_seq qb = {.tokens = &e, .n_tokens = 1, .pos = n + j, .kv = &gk, .scratch = &gs, .scratch_base = n,
                      .logits_from = 0};
        float conf = -1.0f;
        if (cuda_forward(f.cm, f.cs, &qa, 1, &mask, la, &ama, err, sizeof err) != 0 ||
            be->forward(be, &qb, 1, &mask, NULL, NULL, &amb, err, sizeof err) != 0 ||
            be->draft_take(be, &greedy, &slot, 1, &e, &conf, err, sizeof err) != 0)
            fail_msg("draft step: %s", err);
        assert_int_equal(ama, amb);
        assert_int_equal(e, ama);
        assert_true(fabsf(conf - sampler_top1_prob(la, V, NULL)) <= 1e-5f);
        d = ama;
    }
    be->kv_close(be, &gk);
    be->kv_close(be, &gs);
    backend_cuda_close(be);
    /* model and caches are still the caller's and still work */
    cuda_seq again = {&d, 1, n, own, pscr, n, 0};
    cuda_state *ps = cuda_state_init(pm, 8, 64, 0, err, sizeof err);
    assert_non_null(ps);
    assert_int_equal(cuda_forward(pm, ps, &again, 1, &mask, NULL, &ama, err, sizeof err), 0);
    free(la);
    cuda_state_free(ps);
    cuda_kv_free(vkv);
    cuda_kv_free(scr);
    cuda_kv_free(own);
    cuda_kv_free(pscr);
    cuda_model_free(pm);
    fixture_close(&f);
}

/* ---- the engine over the CUDA backend (model/backend.h) ---- */

typedef struct {
    int32_t prompt[40], n_prompt;
    gen_params gp;
    int32_t out[64], n_out;
    int done;
} ereq;

static int ereq_token(void *user, int32_t tok)
{
    ereq *r = user;
    assert_true(r->n_out < 64);
    r->out[r->n_out++] = tok;
    return 0;
}

static void ereq_done(void *user, const engine_result *res)
{
    ereq *r = user;
    assert_int_equal(res->generated_tokens, r->n_out);
    r->done = 1;
}

/* Every request through one engine on the GPU; outputs into r[i].out. */
static void engine_gpu_run(const model *m, ereq *r, int n, int32_t max_seqs, engine_mode mode, const skip_set *ss)
{
    char err[512];
    engine_params p;
    engine_params_default(&p);
    p.max_seqs = max_seqs;
    p.max_batch_tokens = 32;
    p.ctx = 128;
    p.mode = mode;
    p.ss = ss;
    p.sp.max_draft = 4;
    p.calibrate = mode == ENGINE_AUTO;
    p.kv_mem = (size_t)3 * 128 * 2 * m->config.n_layers * m->config.kv_dim * sizeof(kv_elem);
    p.backend = backend_cuda_open(m, 0, engine_pass_tokens(&p), p.ctx + SPEC_MAX_DRAFT + 2, p.kv_mem, err,
                                  sizeof err);
    if (!p.backend)
        fail_msg("backend_cuda_open: %s", err);
    engine *e;
    if (engine_init(&e, m, &p, err, sizeof err) != 0)
        fail_msg("engine_init: %s", err);
    for (int i = 0; i < n; i++) {
        r[i].n_out = 0;
        r[i].done = 0;
        engine_callbacks cb = {.on_token = ereq_token, .on_done = ereq_done, .user = &r[i]};
        if (engine_submit(e, r[i].prompt, r[i].n_prompt, &r[i].gp, &cb, err, sizeof err) != 0)
            fail_msg("submit: %s", err);
    }
    while (engine_pending(e) > 0)
        if (engine_step(e, err, sizeof err) < 0)
            fail_msg("engine_step: %s", err);
    int32_t used, total;
    engine_kv_usage(e, &used, &total);
    assert_int_equal(used, 0);   /* every device cache came back */
    engine_free(e);
    backend_cuda_close(p.backend);
    for (int i = 0; i < n; i++)
        assert_int_equal(r[i].done, 1);
}

/* The one engine loop on the GPU: every request's tokens are the same bits
 * alone (max-seqs 1) and batched (6), plain, forced self-spec and auto
 * (greedy ones; sampled ones with their seeds), and a KV budget of three
 * sequences makes the others wait, not fail. */
static void test_engine_on_gpu(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.n_layers = 4;
    fixture f;
    fixture_open(&f, &sp, 64, 128);
    enum { N = 8 };
    ereq ref[N], got[N];
    memset(ref, 0, sizeof ref);
    for (int i = 0; i < N; i++) {
        ref[i].n_prompt = 3 + 4 * i;
        make_tokens(ref[i].prompt, ref[i].n_prompt, f.m.config.vocab_size, 100 + (uint64_t)i);
        ref[i].gp.max_tokens = 10 + 6 * i;
        ref[i].gp.sampling = (sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
        if (i % 4 == 3)
            ref[i].gp.sampling = (sampler_params){.temperature = 0.8f, .top_k = 0, .top_p = 0.95f,
                                                  .seed = 7 + (uint64_t)i};
    }
    engine_gpu_run(&f.m, ref, N, 1, ENGINE_PLAIN, NULL);
    skip_set ss;
    skipset_init(&ss, f.m.config.n_layers);
    ss.attn_skip[1] = 1;
    ss.mlp_skip[2] = 1;
    struct { int32_t seqs; engine_mode mode; const skip_set *ss; const char *what; } runs[] = {
        {6, ENGINE_PLAIN, NULL, "plain, 6 sequences"},
        {3, ENGINE_SPEC, &ss, "forced self-spec, 3 sequences"},
        {6, ENGINE_AUTO, &ss, "auto, 6 sequences"},
    };
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        memcpy(got, ref, sizeof got);
        engine_gpu_run(&f.m, got, N, runs[k].seqs, runs[k].mode, runs[k].ss);
        for (int i = 0; i < N; i++) {
            /* forced self-spec draws differently under sampling (its own
             * stream, as on the CPU): only greedy requests must match there */
            if (runs[k].mode == ENGINE_SPEC && ref[i].gp.sampling.temperature > 0.0f)
                continue;
            if (got[i].n_out != ref[i].n_out || memcmp(got[i].out, ref[i].out, (size_t)ref[i].n_out * sizeof(int32_t)))
                fail_msg("%s: request %d differs from decoding it alone", runs[k].what, i);
        }
        printf("  engine on the GPU, %s: every output as alone\n", runs[k].what);
    }
    skipset_free(&ss);
    fixture_close(&f);
}

static void test_synthetic_timing(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    char err[512];
    model_config c = {.dim = 256, .hidden_dim = 512, .n_layers = 4, .n_heads = 4, .n_kv_heads = 2,
                      .head_dim = 64, .kv_dim = 128, .vocab_size = 1000, .rope_base = 10000.0f, .norm_eps = 1e-5f};
    cuda_model *cm = cuda_synthetic_model(&c, 0, 3, 0, err, sizeof err);
    if (!cm)
        fail_msg("synthetic: %s", err);
    assert_true(cuda_model_weight_bytes(cm) % (2u << 20) == 0);
    cuda_state *s = cuda_state_init(cm, 8, 256, 1, err, sizeof err);
    cuda_kv *kv = cuda_kv_init(cm, 256, err, sizeof err), *scr = cuda_kv_init(cm, 8, err, sizeof err);
    assert_non_null(s);
    assert_non_null(kv);
    assert_non_null(scr);
    double ms = 0;
    if (cuda_time_step(cm, s, kv, NULL, NULL, 1, 100, 10, &ms, err, sizeof err) != 0)
        fail_msg("time full: %s", err);
    assert_true(ms > 0);
    uint8_t attn[4] = {1, 0, 0, 1}, mlp[4] = {1, 1, 0, 1};
    layer_mask mask = {attn, mlp};
    if (cuda_time_step(cm, s, kv, scr, &mask, 1, 100, 10, &ms, err, sizeof err) != 0)
        fail_msg("time draft: %s", err);
    cuda_kv_free(scr);
    cuda_kv_free(kv);
    cuda_state_free(s);
    cuda_model_free(cm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graceful),
        cmocka_unit_test(test_argmax_like_cpu),
        cmocka_unit_test(test_forward_no_logits),
        cmocka_unit_test(test_forward_q8),
        cmocka_unit_test(test_forward_tied_padded_mha),
        cmocka_unit_test(test_mask_scratch_batch),
        cmocka_unit_test(test_spec_on_gpu),
        cmocka_unit_test(test_paged_kv),
        cmocka_unit_test(test_partial_copy_kv_ops),
        cmocka_unit_test(test_sample_on_gpu),
        cmocka_unit_test(test_exact_blocks),
        cmocka_unit_test(test_proj_vs_cublas),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_backend_device_caches),
        cmocka_unit_test(test_engine_on_gpu),
        cmocka_unit_test(test_synthetic_timing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
