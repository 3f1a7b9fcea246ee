/*
 * test_model.c - unit tests for common/model.c (and the qmat kernels under
 * it), on tiny random Llama models written by testutil_model.
 *
 *  - every supported tensor type loads, and the engine's logits match a
 *    naive double-precision reference (testutil_model.c) within a tolerance
 *    relative to the logits' scale;
 *  - bit-exactness: a block of T tokens gives the same bytes as T single-token
 *    calls, alone or batched with another sequence (self-speculative decoding
 *    relies on this);
 *  - sublayer masks, the draft scratch cache, kv_truncate;
 *  - argument errors and hostile model files fail with a message;
 *  - the shared-memory arena (model_load with a name, model_attach).
 * Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "format/gguf.h"
#include "model/model.h"
#include "kernels/qmat.h"
#include "util/util.h"
#include "testutil_gguf.h"
#include "testutil_model.h"

/*
 * Tolerance against the reference, relative to the logits' scale:
 *   max |engine - reference| <= REF_TOL * max |reference|
 * over every position and vocabulary entry. The engine quantizes each
 * activation vector to int8 per block of 32, for blocks of every size
 * (relative error ~0.5% per product; f16-rounded scales), stores F32/F16/
 * BF16/Q6_K weights re-quantized to 8-bit affine blocks (~0.4% per
 * product), and keeps the KV cache in f16. Measured on these 2-3 layer
 * random models (printed by the tests): 1.0-3.5%. REF_TOL = 6% leaves
 * headroom; a real mistake (wrong RoPE pairing, a missing norm weight, a
 * transposed or misplaced matrix) gives errors of the order of the logits.
 */
#define REF_TOL 0.06f

/* ---------------------------------------------------------------- helpers */

typedef struct {
    char path[128];
    model m;
    tref_model r;
    fwd_state s;
} tiny;

static void tiny_open(tiny *t, const tmodel_spec *sp, int max_tokens, int ctx)
{
    char err[512] = "";
    memset(t, 0, sizeof *t);
    assert_int_equal(tmodel_write_temp(sp, t->path, sizeof t->path), 0);
    int rc = model_load(&t->m, t->path, NULL, err, sizeof err);
    if (rc != 0)
        fail_msg("model_load(%s, type %s): %s", t->path, gguf_type_name(sp->wtype), err);
    rc = sp->arch ? 0 : tref_load(&t->r, t->path, err, sizeof err);   /* the reference is Llama's */
    if (rc != 0)
        fail_msg("tref_load: %s", err);
    fwd_state_init(&t->s, &t->m.config, max_tokens, ctx);
}

static void tiny_close(tiny *t)
{
    fwd_state_free(&t->s);
    tref_free(&t->r);
    model_free(&t->m);
    unlink(t->path);
}

static void kv_open(kv_cache *kv, const model *m, int cap)
{
    char err[256] = "";
    if (kv_init(kv, &m->config, cap, err, sizeof err) != 0)
        fail_msg("kv_init: %s", err);
}

/* One sequence block; logits for every token. Advances nothing. */
static void fwd1(tiny *t, kv_cache *kv, const int32_t *toks, int n, int pos, const layer_mask *mask,
                 float *logits)
{
    char err[256] = "";
    fwd_seq sq = {.tokens = toks, .n_tokens = n, .pos = pos, .kv = kv, .logits_from = 0};
    int rc = model_forward(&t->m, &t->s, &sq, 1, mask, NULL, logits, err, sizeof err);
    if (rc != 0)
        fail_msg("model_forward(n=%d pos=%d): %s", n, pos, err);
}

/* Run toks as one block at kv->len and advance kv->len. */
static void feed(tiny *t, kv_cache *kv, const int32_t *toks, int n, float *logits)
{
    fwd1(t, kv, toks, n, kv->len, NULL, logits);
    kv->len += n;
}

static void random_tokens(uint64_t *rng, int32_t *toks, int n, int vocab)
{
    for (int i = 0; i < n; i++)
        toks[i] = (int32_t)(tmodel_rng(rng) % (uint64_t)vocab);
}

static float max_abs(const float *v, size_t n)
{
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++)
        mx = fmaxf(mx, fabsf(v[i]));
    return mx;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= mx))
            mx = isnan(d) ? INFINITY : d;
    }
    return mx;
}

static size_t kv_bytes(const kv_cache *kv)
{
    return (size_t)kv->n_layers * kv->cap * kv->kv_dim * sizeof(kv_elem);
}

/* ------------------------------------------- types against the reference */

static const uint32_t all_types[] = {
    GGUF_TT_F32, GGUF_TT_F16, GGUF_TT_BF16, GGUF_TT_Q8_0,
    GGUF_TT_Q4_0, GGUF_TT_Q4_1, GGUF_TT_Q4_K, GGUF_TT_Q6_K,
};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

/* Compare a prompt of n tokens (one block: the few-token kernel for n < 32,
 * BLAS for n >= 32) against the reference. Returns err / scale. */
static float compare_to_reference(tiny *t, int n, uint64_t seed, const uint8_t *am, const uint8_t *mm)
{
    int32_t V = t->m.config.vocab_size;
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    float *got = malloc((size_t)n * V * sizeof(float)), *want = malloc((size_t)n * V * sizeof(float));
    uint64_t rng = seed;
    random_tokens(&rng, toks, n, V);
    kv_cache kv;
    kv_open(&kv, &t->m, n + 4);
    layer_mask mask = {(uint8_t *)am, (uint8_t *)mm};
    fwd1(t, &kv, toks, n, 0, am ? &mask : NULL, got);
    tref_forward(&t->r, toks, n, am, mm, want);
    float scale = max_abs(want, (size_t)n * V), e = max_abs_diff(got, want, (size_t)n * V);
    assert_true(scale > 1.0f);   /* the test means something */
    kv_free(&kv);
    free(toks);
    free(got);
    free(want);
    return e / scale;
}

static void test_types_vs_reference(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_TYPES; i++) {
        for (int tied = 0; tied <= 1; tied++) {
            tmodel_spec sp = tmodel_default(all_types[i]);
            sp.tied = tied;
            sp.seed = 1000 + i * 2 + (uint64_t)tied;
            tiny t;
            tiny_open(&t, &sp, 48, 64);
            assert_int_equal(t.m.config.dim, sp.dim);
            assert_int_equal(t.m.config.hidden_dim, sp.hidden);
            assert_int_equal(t.m.config.n_layers, sp.n_layers);
            assert_int_equal(t.m.config.n_heads, sp.n_heads);
            assert_int_equal(t.m.config.n_kv_heads, sp.n_kv_heads);
            assert_int_equal(t.m.config.head_dim, sp.dim / sp.n_heads);
            assert_int_equal(t.m.config.vocab_size, sp.vocab);
            /* 4-bit sources are stored packed (qmat.h), everything else as bytes */
            int32_t want_fmt = all_types[i] == GGUF_TT_Q4_0 || all_types[i] == GGUF_TT_Q4_1 || all_types[i] == GGUF_TT_Q4_K
                                   ? QMAT_U4 : QMAT_U8;
            for (int32_t l = 0; l < t.m.config.n_layers; l++) {
                const layer_weights *L = &t.m.w.layers[l];
                assert_int_equal(L->wqkv.fmt, want_fmt);
                assert_int_equal(L->wo.fmt, want_fmt);
                assert_int_equal(L->w_gate_up.fmt, want_fmt);
                assert_int_equal(L->w_down.fmt, want_fmt);
                assert_int_equal(L->w_down.tier, want_fmt == QMAT_U4 ? QMAT_TIER_NIBBLE : QMAT_TIER_8BIT);
            }
            assert_int_equal(t.m.w.tok_embd.fmt, want_fmt);
            assert_int_equal(t.m.w.output.fmt, want_fmt);
            float e_small = compare_to_reference(&t, 12, 77 + i, NULL, NULL);
            float e_long = compare_to_reference(&t, 40, 99 + i, NULL, NULL);
            printf("  %-5s %s: max |err| / max |logit| = %.4f (T=12), %.4f (T=40)\n",
                   gguf_type_name(all_types[i]), tied ? "tied    " : "separate", e_small, e_long);
            if (!(e_small <= REF_TOL) || !(e_long <= REF_TOL))
                fail_msg("type %s (tied=%d): relative error %.4f / %.4f above %.3f",
                         gguf_type_name(all_types[i]), tied, e_small, e_long, REF_TOL);
            tiny_close(&t);
        }
    }
}

/* A vocabulary that is not a multiple of 16 (padded head rows) and a
 * different head layout (MHA: n_kv_heads = n_heads). */
static void test_padded_vocab_and_mha(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.vocab = 250;
    sp.n_kv_heads = 4;
    tiny t;
    tiny_open(&t, &sp, 48, 64);
    assert_int_equal(t.m.config.vocab_size, 250);
    float e1 = compare_to_reference(&t, 9, 5, NULL, NULL);
    float e2 = compare_to_reference(&t, 33, 6, NULL, NULL);
    printf("  vocab 250, MHA: %.4f (T=9), %.4f (T=33)\n", e1, e2);
    assert_true(e1 <= REF_TOL);
    assert_true(e2 <= REF_TOL);
    tiny_close(&t);
}

/* ------------------------------------------------------- bit-exactness */

/* Token arrays of check_block_vs_steps, and the forward-pass capacity its
 * models need: a block of up to MAX_BLOCK tokens batched with up to 6 others. */
#define BLOCK_TOKS 128
#define MAX_BLOCK 64

static void check_block_vs_steps(tiny *t, int prefix, int T, uint64_t seed)
{
    int32_t V = t->m.config.vocab_size;
    int32_t toks[BLOCK_TOKS], other[BLOCK_TOKS];   /* prefix + T <= BLOCK_TOKS */
    assert_true(prefix + T <= BLOCK_TOKS);
    uint64_t rng = seed;
    random_tokens(&rng, toks, prefix + T, V);
    random_tokens(&rng, other, BLOCK_TOKS, V);
    float *lp = malloc((size_t)BLOCK_TOKS * V * sizeof(float));
    float *block = malloc((size_t)T * V * sizeof(float));
    float *steps = malloc((size_t)T * V * sizeof(float));
    float *batched = malloc((size_t)BLOCK_TOKS * V * sizeof(float));
    float *other_steps = malloc((size_t)BLOCK_TOKS * V * sizeof(float));
    kv_cache a, b, c, d, e;
    int cap = prefix + T + 8;
    kv_open(&a, &t->m, cap);
    kv_open(&b, &t->m, cap);
    kv_open(&c, &t->m, cap);
    kv_open(&d, &t->m, cap);
    kv_open(&e, &t->m, cap);
    /* the same prefix in every cache, each as one block */
    feed(t, &a, toks, prefix, lp);
    feed(t, &b, toks, prefix, lp);
    feed(t, &c, toks, prefix, lp);
    /* a: the block at once */
    fwd1(t, &a, toks + prefix, T, prefix, NULL, block);
    /* b: one token at a time */
    for (int j = 0; j < T; j++)
        fwd1(t, &b, toks + prefix + j, 1, prefix + j, NULL, steps + (size_t)j * V);
    if (memcmp(block, steps, (size_t)T * V * sizeof(float)) != 0)
        fail_msg("prefix %d, T=%d: block logits differ from single steps (max diff %g)", prefix, T,
                 max_abs_diff(block, steps, (size_t)T * V));
    /* the KV entries written are the same bytes too */
    assert_memory_equal(a.k, b.k, kv_bytes(&a));
    assert_memory_equal(a.v, b.v, kv_bytes(&a));

    /* c: the block batched with another sequence (its own cache d, at its
     * own positions, with a short prefix of 2 tokens, logits for all) */
    int n_other = 3 + (T % 4);
    feed(t, &d, other, 2, lp);
    feed(t, &e, other, 2, lp);
    for (int j = 0; j < n_other; j++)
        fwd1(t, &e, other + 2 + j, 1, 2 + j, NULL, other_steps + (size_t)j * V);
    for (int order = 0; order < 2; order++) {
        char err[256] = "";
        fwd_seq sq[2];
        fwd_seq blk = {.tokens = toks + prefix, .n_tokens = T, .pos = prefix, .kv = &c, .logits_from = 0};
        fwd_seq oth = {.tokens = other + 2, .n_tokens = n_other, .pos = 2, .kv = &d, .logits_from = 0};
        sq[order] = blk;
        sq[1 - order] = oth;
        int rc = model_forward(&t->m, &t->s, sq, 2, NULL, NULL, batched, err, sizeof err);
        if (rc != 0)
            fail_msg("batched forward: %s", err);
        const float *mine = batched + (order == 0 ? 0 : (size_t)n_other * V);
        const float *theirs = batched + (order == 0 ? (size_t)T * V : 0);
        if (memcmp(mine, steps, (size_t)T * V * sizeof(float)) != 0)
            fail_msg("prefix %d, T=%d, order %d: batched block logits differ from single steps (max diff %g)",
                     prefix, T, order, max_abs_diff(mine, steps, (size_t)T * V));
        if (memcmp(theirs, other_steps, (size_t)n_other * V * sizeof(float)) != 0)
            fail_msg("T=%d: the other sequence's batched logits differ from its single steps", T);
    }
    assert_memory_equal(c.k, b.k, kv_bytes(&b));
    assert_memory_equal(c.v, b.v, kv_bytes(&b));
    assert_memory_equal(d.k, e.k, kv_bytes(&d));

    /* logits_from: only the last rows, same bytes */
    {
        char err[256] = "";
        fwd_seq sq = {.tokens = toks + prefix, .n_tokens = T, .pos = prefix, .kv = &c,
                      .logits_from = T - 1};
        assert_int_equal(model_forward(&t->m, &t->s, &sq, 1, NULL, NULL, lp, err, sizeof err), 0);
        assert_memory_equal(lp, steps + (size_t)(T - 1) * V, (size_t)V * sizeof(float));
    }
    kv_free(&a);
    kv_free(&b);
    kv_free(&c);
    kv_free(&d);
    kv_free(&e);
    free(lp);
    free(block);
    free(steps);
    free(batched);
    free(other_steps);
}

/* Blocks of every size up to 13, then the sizes around the old BLAS switch
 * (16), a full verification block (SPEC_MAX_DRAFT + 1 = 33) and beyond:
 * a token's logits must not depend on what shares its forward pass. */
static void test_block_bit_exact(void **state)
{
    (void)state;
    const int long_T[] = {16, 17, 20, 24, 32, 33, 40, MAX_BLOCK};
    const uint32_t types[] = {GGUF_TT_Q4_1, GGUF_TT_F16, GGUF_TT_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        tmodel_spec sp = tmodel_default(types[i]);
        sp.seed = 500 + i;
        tiny t;
        tiny_open(&t, &sp, MAX_BLOCK + 8, 96);
        for (int T = 1; T <= 13; T++)
            check_block_vs_steps(&t, 1 + (T * 7) % 17, T, 31 * T + i);
        for (size_t k = 0; k < sizeof long_T / sizeof long_T[0]; k++)
            check_block_vs_steps(&t, 1 + (long_T[k] * 7) % 17, long_T[k], 31 * long_T[k] + i);
        tiny_close(&t);
    }
    /* padded vocabulary: the head goes row by row */
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    sp.vocab = 250;
    tiny t;
    tiny_open(&t, &sp, MAX_BLOCK + 8, 96);
    for (int T = 1; T <= 13; T += 4)
        check_block_vs_steps(&t, 3, T, 7 * T);
    check_block_vs_steps(&t, 3, 33, 7 * 33);
    tiny_close(&t);
}

/* qmat_matmul alone: row t of a T-token product is, bit for bit, the row
 * of token t multiplied alone, for T = 1..40, 64, 100, with strided X and
 * Y; and the build's vector kernel equals the portable one bit for bit.
 * Three matrices: levels spanning 0..255 (re-quantized floats), levels
 * <= 127, levels <= 15 (the 4-bit formats) -- the AVX2 kernel takes a
 * different instruction sequence for each. */
static void check_matmul_rows(int max_level)
{
    enum { ROWS = 80, COLS = 160, NTOK = 100, LDX = COLS + 8, LDY = ROWS + 16 };
    qmat W = {.rows = ROWS, .cols = COLS};
    uint8_t *q = alignedCheck(qmat_q_bytes(ROWS, COLS));
    float *d = alignedCheck(qmat_dm_bytes(ROWS, COLS)), *m = alignedCheck(qmat_dm_bytes(ROWS, COLS));
    W.q = q, W.d = d, W.m = m;
    uint64_t x = 7;
    for (int32_t r = 0; r < ROWS; r++) {
        float row[COLS];   /* (COLS) */
        for (int32_t c = 0; c < COLS; c++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            row[c] = (float)((x >> 40) % 2001) / 1000.0f - 1.0f;
        }
        uint8_t lv[COLS];
        float bd[COLS / QMAT_BLOCK], bm[COLS / QMAT_BLOCK];
        qmat_quantize_row(row, COLS, lv, bd, bm);
        for (int32_t c = 0; c < COLS; c++)   /* rescale the levels to 0..max_level */
            lv[c] = (uint8_t)(lv[c] * max_level / 255);
        qmat_set_row(&W, r, lv, bd, bm);
    }
    W.tier = qmat_scan_tier(&W);   /* the narrowest instruction sequence that is exact */
    float *X = alignedCheck((size_t)NTOK * LDX * sizeof(float));        /* (NTOK, LDX) */
    float *alone = alignedCheck((size_t)NTOK * ROWS * sizeof(float));   /* (NTOK, ROWS) */
    float *Y = alignedCheck((size_t)NTOK * LDY * sizeof(float));        /* (NTOK, LDY) */
    for (int i = 0; i < NTOK * LDX; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        /* a few large outliers, as real activations have */
        X[i] = (float)((x >> 40) % 20001) / 10000.0f - 1.0f;
        if ((x >> 20) % 97 == 0)
            X[i] *= 30.0f;
    }
    void *scratch = alignedCheck(qmat_scratch_bytes(COLS, NTOK));
    for (int t = 0; t < NTOK; t++)
        qmat_matmul(&W, X + (size_t)t * LDX, LDX, 1, alone + (size_t)t * ROWS, ROWS, scratch);
    int Ts[42];
    int nT = 0;
    for (int T = 1; T <= 40; T++)
        Ts[nT++] = T;
    Ts[nT++] = 64;
    Ts[nT++] = NTOK;
    int bad = 0;
    for (int k = 0; k < nT; k++) {
        int T = Ts[k], t0 = (NTOK - T) / 2;   /* a window of the tokens */
        qmat_matmul(&W, X + (size_t)t0 * LDX, LDX, T, Y, LDY, scratch);
        for (int t = 0; t < T; t++)
            if (memcmp(Y + (size_t)t * LDY, alone + (size_t)(t0 + t) * ROWS, ROWS * sizeof(float)) != 0) {
                if (bad++ < 5)
                    printf("  T=%d: row %d differs from the token alone (max diff %g)\n", T, t,
                           max_abs_diff(Y + (size_t)t * LDY, alone + (size_t)(t0 + t) * ROWS, ROWS));
            }
    }
    if (bad)
        fail_msg("levels <= %d: %d rows of multi-token products differ from the same token alone",
                 max_level, bad);
    /* the vector kernel of this build against the portable definition */
    float *port = alignedCheck((size_t)NTOK * LDY * sizeof(float));   /* (NTOK, LDY) */
    qmat_matmul(&W, X, LDX, NTOK, Y, LDY, scratch);
    qmat_matmul_portable(&W, X, LDX, NTOK, port, LDY, scratch);
    for (int t = 0; t < NTOK; t++)
        if (memcmp(Y + (size_t)t * LDY, port + (size_t)t * LDY, ROWS * sizeof(float)) != 0)
            fail_msg("levels <= %d: token %d: qmat_matmul differs from qmat_matmul_portable (max diff %g)",
                     max_level, t, max_abs_diff(Y + (size_t)t * LDY, port + (size_t)t * LDY, ROWS));
    free(port);
    free(scratch);
    free(X);
    free(alone);
    free(Y);
    free(q);
    free(d);
    free(m);
}

/* The kernel settings the qmat tests run under: the build's kernel alone
 * (AMX off), the default (the build's kernel for T = 1, AMX from
 * QMAT_AMX_MIN_T_DEFAULT tokens on, where the CPU has AMX: so a token alone
 * and the same token in a block come from different kernels), and AMX for
 * every T (1 included). Without AMX the last two are the first again:
 * "skipped: no AMX" is printed once. */
enum { KS_BUILD, KS_DEFAULT, KS_AMX_ALL, N_KSET };
static const char *kset_name[N_KSET] = {"build kernel", "default (AMX from T >= QMAT_AMX_MIN_T_DEFAULT)", "AMX for every T"};

/* Sets kernel setting k; returns 0 when it would repeat KS_BUILD (no AMX). */
static int kset_apply(int k)
{
    static int said;
    if (k != KS_BUILD && !qmat_amx_available()) {
        if (!said++)
            printf("  AMX kernel: skipped: no AMX on this CPU (or the OS refused the tile data)\n");
        qmat_set_amx(QMAT_AMX_MIN_T_DEFAULT);
        return 0;
    }
    qmat_set_amx(k == KS_BUILD ? 0 : k == KS_DEFAULT ? QMAT_AMX_MIN_T_DEFAULT : 1);
    return 1;
}

static void test_matmul_rows_independent_of_T(void **state)
{
    (void)state;
    for (int k = 0; k < N_KSET; k++) {
        if (!kset_apply(k))
            continue;
        printf("  qmat rows independent of T: %s\n", kset_name[k]);
        check_matmul_rows(255);
        check_matmul_rows(127);
        check_matmul_rows(15);
    }
    qmat_set_amx(QMAT_AMX_MIN_T_DEFAULT);
}

/* ------------------------------------------------------------ skip mask */

static void test_mask(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q4_0);
    sp.n_layers = 3;
    tiny t;
    tiny_open(&t, &sp, 16, 64);
    int32_t V = t.m.config.vocab_size, L = t.m.config.n_layers, D = t.m.config.dim;
    int32_t toks[10];
    uint64_t rng = 4242;
    random_tokens(&rng, toks, 10, V);
    float *a = malloc((size_t)10 * V * sizeof(float)), *b = malloc((size_t)10 * V * sizeof(float));
    float *ref = malloc((size_t)10 * V * sizeof(float));
    uint8_t ones[8], zeros[8];
    memset(ones, 1, sizeof ones);
    memset(zeros, 0, sizeof zeros);
    kv_cache kv1, kv2;
    kv_open(&kv1, &t.m, 16);
    kv_open(&kv2, &t.m, 16);

    /* 1. all-ones mask == NULL, bit for bit (logits and KV) */
    layer_mask all = {ones, ones};
    fwd1(&t, &kv1, toks, 10, 0, NULL, a);
    fwd1(&t, &kv2, toks, 10, 0, &all, b);
    assert_memory_equal(a, b, (size_t)10 * V * sizeof(float));
    assert_memory_equal(kv1.k, kv2.k, kv_bytes(&kv1));
    assert_memory_equal(kv1.v, kv2.v, kv_bytes(&kv1));

    /* 2. everything skipped: logits = head(norm(embedding)), at any position */
    layer_mask none = {zeros, zeros};
    memset(kv2.k, 0x5A, kv_bytes(&kv2));
    memset(kv2.v, 0x5A, kv_bytes(&kv2));
    fwd1(&t, &kv2, toks, 10, 0, &none, b);
    for (size_t i = 0; i < kv_bytes(&kv2); i++)
        assert_true(((uint8_t *)kv2.k)[i] == 0x5A && ((uint8_t *)kv2.v)[i] == 0x5A);
    {
        float *x = malloc((size_t)D * sizeof(float)), *xn = malloc((size_t)D * sizeof(float));
        float *row = malloc((size_t)(t.m.w.output.rows) * sizeof(float));
        void *scr = NULL;
        assert_int_equal(posix_memalign(&scr, 64, qmat_scratch_bytes(D, 1) + 64), 0);
        for (int j = 0; j < 10; j++) {
            /* engine-side recomputation: dequantized embedding row, RMSNorm,
             * the head through qmat_matmul */
            qmat_dequant_row(&t.m.w.tok_embd, toks[j], x);
            float ss = 0.0f;
            for (int32_t i = 0; i < D; i++)
                ss += x[i] * x[i];
            float inv = 1.0f / sqrtf(ss / D + t.m.config.norm_eps);
            for (int32_t i = 0; i < D; i++)
                xn[i] = x[i] * inv * t.m.w.out_norm[i];
            qmat_matmul(&t.m.w.output, xn, D, 1, row, t.m.w.output.rows, scr);
            float sc = max_abs(row, (size_t)V);
            float e = max_abs_diff(row, b + (size_t)j * V, (size_t)V);
            if (!(e <= 1e-3f * sc))
                fail_msg("all-skipped logits of token %d differ from head(norm(emb)) by %g", j, e);
            /* and the float reference of the same thing */
            tref_head_of_embedding(&t.r, toks[j], ref);
            e = max_abs_diff(ref, b + (size_t)j * V, (size_t)V);
            if (!(e <= REF_TOL * max_abs(ref, (size_t)V)))
                fail_msg("all-skipped logits of token %d differ from the reference by %g", j, e);
        }
        /* position-independent: the same token at position 7 gives the same bytes */
        fwd1(&t, &kv2, toks, 1, 7, &none, a);
        assert_memory_equal(a, b, (size_t)V * sizeof(float));
        free(scr);
        free(x);
        free(xn);
        free(row);
    }

    /* 3. skipped attention writes no KV for that layer; computed ones do */
    uint8_t am[3] = {1, 0, 1}, mm[3] = {0, 1, 1};
    layer_mask some = {am, mm};
    memset(kv2.k, 0x5A, kv_bytes(&kv2));
    memset(kv2.v, 0x5A, kv_bytes(&kv2));
    fwd1(&t, &kv2, toks, 10, 0, &some, b);
    size_t layer_elems = (size_t)kv2.cap * kv2.kv_dim;
    for (int32_t l = 0; l < L; l++) {
        const uint8_t *k = (const uint8_t *)(kv2.k + l * layer_elems);
        const uint8_t *v = (const uint8_t *)(kv2.v + l * layer_elems);
        size_t written = (size_t)10 * kv2.kv_dim * sizeof(kv_elem);
        size_t untouched = 0, total = layer_elems * sizeof(kv_elem);
        for (size_t i = 0; i < total; i++)
            untouched += (k[i] == 0x5A) + (v[i] == 0x5A);
        if (!am[l]) {
            assert_true(untouched == 2 * total);
        } else {
            /* rows 0..9 written (almost no byte can stay 0x5A), the rest untouched */
            for (size_t i = written; i < total; i++)
                assert_true(k[i] == 0x5A && v[i] == 0x5A);
            assert_true(untouched - 2 * (total - written) < written / 8);
        }
    }
    /* 4. the reference with the same mask agrees */
    float e = compare_to_reference(&t, 10, 4242, am, mm);
    printf("  mask {attn 1,0,1; mlp 0,1,1}: relative error %.4f\n", e);
    assert_true(e <= REF_TOL);
    uint8_t am2[3] = {0, 0, 1}, mm2[3] = {1, 0, 0};
    e = compare_to_reference(&t, 7, 17, am2, mm2);
    assert_true(e <= REF_TOL);
    /* and the masked model really is a different function */
    tref_forward(&t.r, toks, 10, NULL, NULL, ref);
    assert_true(max_abs_diff(ref, b, (size_t)10 * V) > 0.1f * max_abs(ref, (size_t)10 * V));

    kv_free(&kv1);
    kv_free(&kv2);
    free(a);
    free(b);
    free(ref);
    tiny_close(&t);
}

/* ------------------------------------------------------- draft scratch */

static void test_draft_scratch(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    tiny t;
    tiny_open(&t, &sp, 16, 64);
    int32_t V = t.m.config.vocab_size;
    int32_t toks[20];
    uint64_t rng = 99;
    random_tokens(&rng, toks, 20, V);
    float *lp = malloc((size_t)16 * V * sizeof(float)), *x = malloc((size_t)16 * V * sizeof(float));
    float *y = malloc((size_t)16 * V * sizeof(float));
    kv_cache kv, copy, scr;
    kv_open(&kv, &t.m, 32);
    kv_open(&copy, &t.m, 32);
    kv_open(&scr, &t.m, 8);
    feed(&t, &kv, toks, 9, lp);
    feed(&t, &copy, toks, 9, lp);
    size_t nb = kv_bytes(&kv);
    uint8_t *snap_k = malloc(nb), *snap_v = malloc(nb);
    memcpy(snap_k, kv.k, nb);
    memcpy(snap_v, kv.v, nb);
    char err[256] = "";

    /* full model through the scratch: same bytes as writing kv itself */
    fwd_seq sq = {.tokens = toks + 9, .n_tokens = 4, .pos = 9, .kv = &kv, .scratch = &scr,
                  .scratch_base = kv.len, .logits_from = 0};
    assert_int_equal(model_forward(&t.m, &t.s, &sq, 1, NULL, NULL, x, err, sizeof err), 0);
    assert_memory_equal(kv.k, snap_k, nb);
    assert_memory_equal(kv.v, snap_v, nb);
    fwd1(&t, &copy, toks + 9, 4, 9, NULL, y);
    assert_memory_equal(x, y, (size_t)4 * V * sizeof(float));
    /* the scratch got what the copy's rows 9..12 got */
    for (int32_t l = 0; l < t.m.config.n_layers; l++) {
        size_t row = (size_t)kv.kv_dim;
        assert_memory_equal(scr.k + (size_t)l * scr.cap * row, copy.k + ((size_t)l * copy.cap + 9) * row,
                            4 * row * sizeof(kv_elem));
        assert_memory_equal(scr.v + (size_t)l * scr.cap * row, copy.v + ((size_t)l * copy.cap + 9) * row,
                            4 * row * sizeof(kv_elem));
    }

    /* drafting: T=1 steps with a mask, continuing in the scratch (positions
     * 9, 10, 11 -> scratch rows 0, 1, 2; reads of 0..8 come from kv) */
    uint8_t am[2] = {1, 0}, mm[2] = {0, 1};
    layer_mask mask = {am, mm};
    kv_cache copy2;
    kv_open(&copy2, &t.m, 32);
    feed(&t, &copy2, toks, 9, lp);
    for (int j = 0; j < 3; j++) {
        fwd_seq d = {.tokens = toks + 9 + j, .n_tokens = 1, .pos = 9 + j, .kv = &kv, .scratch = &scr,
                     .scratch_base = 9, .logits_from = 0};
        assert_int_equal(model_forward(&t.m, &t.s, &d, 1, &mask, NULL, x + (size_t)j * V, err, sizeof err), 0);
        fwd1(&t, &copy2, toks + 9 + j, 1, 9 + j, &mask, y + (size_t)j * V);
    }
    assert_memory_equal(x, y, (size_t)3 * V * sizeof(float));
    assert_memory_equal(kv.k, snap_k, nb);
    assert_memory_equal(kv.v, snap_v, nb);

    /* reads below scratch_base really come from kv: disturb kv row 3 of
     * layer 0 and the drafted logits change (and kv stays as we left it) */
    kv.k[3 * kv.kv_dim] ^= 0x4000;
    kv.k[3 * kv.kv_dim + 1] ^= 0x4000;
    memcpy(snap_k, kv.k, nb);
    fwd_seq d = {.tokens = toks + 9, .n_tokens = 1, .pos = 9, .kv = &kv, .scratch = &scr,
                 .scratch_base = 9, .logits_from = 0};
    assert_int_equal(model_forward(&t.m, &t.s, &d, 1, &mask, NULL, lp, err, sizeof err), 0);
    assert_true(memcmp(lp, y, (size_t)V * sizeof(float)) != 0);
    assert_memory_equal(kv.k, snap_k, nb);
    assert_memory_equal(kv.v, snap_v, nb);

    kv_free(&kv);
    kv_free(&copy);
    kv_free(&copy2);
    kv_free(&scr);
    free(snap_k);
    free(snap_v);
    free(lp);
    free(x);
    free(y);
    tiny_close(&t);
}

/* --------------------------------------------------------- kv_truncate */

static void test_kv_truncate(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q4_1);
    tiny t;
    tiny_open(&t, &sp, 16, 64);
    int32_t V = t.m.config.vocab_size;
    int32_t toks[12], alt[12];
    uint64_t rng = 3;
    random_tokens(&rng, toks, 12, V);
    random_tokens(&rng, alt, 12, V);
    float *first = malloc((size_t)6 * V * sizeof(float)), *again = malloc((size_t)6 * V * sizeof(float));
    float *lp = malloc((size_t)16 * V * sizeof(float));
    kv_cache kv;
    kv_open(&kv, &t.m, 24);
    feed(&t, &kv, toks, 6, lp);
    feed(&t, &kv, toks + 6, 6, first);
    assert_int_equal(kv.len, 12);
    for (int round = 0; round < 3; round++) {
        kv_truncate(&kv, 6);
        assert_int_equal(kv.len, 6);
        feed(&t, &kv, alt, 5, lp);          /* overwrite rows 6..10 */
        kv_truncate(&kv, 6);
        if (round == 2) {                   /* also in single steps */
            for (int j = 0; j < 6; j++)
                feed(&t, &kv, toks + 6 + j, 1, again + (size_t)j * V);
        } else {
            feed(&t, &kv, toks + 6, 6, again);
        }
        assert_memory_equal(first, again, (size_t)6 * V * sizeof(float));
    }
    kv_truncate(&kv, 0);
    assert_int_equal(kv.len, 0);
    kv_free(&kv);
    free(first);
    free(again);
    free(lp);
    tiny_close(&t);
}

/* -------------------------------------------------------------- errors */

static void expect_forward_fail(tiny *t, fwd_seq *sq, int n, const char *needle)
{
    char err[256] = "";
    float *lp = malloc((size_t)64 * t->m.config.vocab_size * sizeof(float));
    int rc = model_forward(&t->m, &t->s, sq, n, NULL, NULL, lp, err, sizeof err);
    free(lp);
    if (rc != -1)
        fail_msg("model_forward accepted a bad batch (expected '%s')", needle);
    if (!strstr(err, needle))
        fail_msg("error '%s' does not mention '%s'", err, needle);
}

static void test_forward_errors(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q8_0);
    tiny t;
    tiny_open(&t, &sp, 8, 40);
    kv_cache kv, kv2, scr;
    kv_open(&kv, &t.m, 16);
    kv_open(&kv2, &t.m, 64);
    kv_open(&scr, &t.m, 4);
    int32_t toks[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    /* past the cache: 14 + 3 > 16 */
    fwd_seq a = {.tokens = toks, .n_tokens = 3, .pos = 14, .kv = &kv};
    expect_forward_fail(&t, &a, 1, "context full");
    /* the last position that fits is fine */
    a.pos = 13;
    {
        char err[256] = "";
        float *lp = malloc((size_t)8 * t.m.config.vocab_size * sizeof(float));
        assert_int_equal(model_forward(&t.m, &t.s, &a, 1, NULL, NULL, lp, err, sizeof err), 0);
        free(lp);
    }
    /* past the fwd_state's RoPE table (ctx 40) though the cache holds 64 */
    fwd_seq r = {.tokens = toks, .n_tokens = 2, .pos = 39, .kv = &kv2};
    expect_forward_fail(&t, &r, 1, "context full");
    /* past the draft scratch: 10 + 5 > 10 + 4 */
    fwd_seq s = {.tokens = toks, .n_tokens = 5, .pos = 10, .kv = &kv, .scratch = &scr, .scratch_base = 10};
    expect_forward_fail(&t, &s, 1, "context full");
    s.scratch_base = 17;   /* base past the cache */
    s.pos = 17;
    s.n_tokens = 1;
    expect_forward_fail(&t, &s, 1, "scratch");
    /* token ids */
    int32_t bad[2] = {3, 256};
    fwd_seq b = {.tokens = bad, .n_tokens = 2, .pos = 0, .kv = &kv};
    expect_forward_fail(&t, &b, 1, "out of range");
    bad[1] = -1;
    expect_forward_fail(&t, &b, 1, "out of range");
    /* batch bigger than max_tokens (8), alone and as two entries */
    fwd_seq c = {.tokens = toks, .n_tokens = 9, .pos = 0, .kv = &kv};
    expect_forward_fail(&t, &c, 1, "batch of more than 8");
    fwd_seq two[2] = {{.tokens = toks, .n_tokens = 5, .pos = 0, .kv = &kv},
                      {.tokens = toks, .n_tokens = 4, .pos = 0, .kv = &kv2}};
    expect_forward_fail(&t, two, 2, "batch of more than 8");
    /* empty block, negative position, bad logits_from */
    fwd_seq e = {.tokens = toks, .n_tokens = 0, .pos = 0, .kv = &kv};
    expect_forward_fail(&t, &e, 1, "bad block");
    e.n_tokens = 1;
    e.pos = -1;
    expect_forward_fail(&t, &e, 1, "bad block");
    e.pos = 0;
    e.logits_from = 2;
    expect_forward_fail(&t, &e, 1, "bad block");
    /* kv_init */
    char err[256] = "";
    kv_cache z;
    assert_int_equal(kv_init(&z, &t.m.config, 0, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    kv_free(&kv);
    kv_free(&kv2);
    kv_free(&scr);
    tiny_close(&t);
}

/* ---------------------------------------------------- hostile model files */

static void expect_load_fail(const tmodel_spec *sp, const char *needle, const char *needle2)
{
    char path[128], err[512] = "";
    assert_int_equal(tmodel_write_temp(sp, path, sizeof path), 0);
    model m;
    int rc = model_load(&m, path, NULL, err, sizeof err);
    unlink(path);
    if (rc == 0) {
        model_free(&m);
        fail_msg("model_load accepted a bad file (expected an error naming '%s')", needle);
    }
    assert_int_equal(rc, -1);
    if (!strstr(err, needle) || (needle2 && !strstr(err, needle2)))
        fail_msg("error '%s' does not name '%s'%s%s", err, needle, needle2 ? " / " : "",
                 needle2 ? needle2 : "");
}

static void test_hostile_models(void **state)
{
    (void)state;
    tmodel_spec sp;
    /* missing tensors */
    const char *missing[] = {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight",
                             "blk.1.attn_norm.weight", "blk.1.ffn_down.weight", "blk.0.attn_v.weight"};
    for (size_t i = 0; i < sizeof missing / sizeof *missing; i++) {
        sp = tmodel_default(GGUF_TT_Q8_0);
        sp.omit = missing[i];
        expect_load_fail(&sp, missing[i], NULL);
    }
    /* wrong shapes */
    const char *reshaped[] = {"blk.0.attn_k.weight", "blk.1.ffn_up.weight", "blk.0.ffn_norm.weight",
                              "output.weight", "output_norm.weight"};
    for (size_t i = 0; i < sizeof reshaped / sizeof *reshaped; i++) {
        sp = tmodel_default(GGUF_TT_Q4_0);
        sp.reshape = reshaped[i];
        expect_load_fail(&sp, reshaped[i], "shape");
    }
    /* unsupported architecture */
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.arch = "gpt2";
    expect_load_fail(&sp, "gpt2", "architecture");
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.omit_key = "general.architecture";
    expect_load_fail(&sp, "general.architecture", NULL);
    /* missing metadata */
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.omit_key = "llama.block_count";
    expect_load_fail(&sp, "llama.block_count", NULL);
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.omit_key = "llama.attention.head_count";
    expect_load_fail(&sp, "llama.attention.head_count", NULL);
    /* zero / huge / non-dividing head counts */
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.meta_heads_set = 1;
    sp.meta_heads = 0;
    expect_load_fail(&sp, "head_count", NULL);
    sp.meta_heads = 0xFFFFFFFFll;
    expect_load_fail(&sp, "head_count", NULL);
    sp.meta_heads = 1 << 24;
    expect_load_fail(&sp, "head counts", NULL);
    sp.meta_heads = 3;
    expect_load_fail(&sp, "head counts", NULL);
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.meta_kv_heads_set = 1;
    sp.meta_kv_heads = 0;
    expect_load_fail(&sp, "head_count_kv", NULL);
    sp.meta_kv_heads = 0x80000000ll;
    expect_load_fail(&sp, "head_count_kv", NULL);
    sp.meta_kv_heads = 3;
    expect_load_fail(&sp, "head counts", NULL);
    /* head_dim 8 (8 heads of a 64-wide model): unsupported */
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.meta_heads_set = 1;
    sp.meta_heads = 8;
    expect_load_fail(&sp, "head_dim", NULL);
    /* zero layers */
    sp = tmodel_default(GGUF_TT_Q8_0);
    sp.meta_layers_set = 1;
    sp.meta_layers = 0;
    expect_load_fail(&sp, "block_count", NULL);
    /* more layers claimed than present */
    sp.meta_layers = 3;
    expect_load_fail(&sp, "blk.2.", NULL);
    /* non-finite norm weights */
    const char *norms[] = {"blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight"};
    for (size_t i = 0; i < 3; i++) {
        sp = tmodel_default(GGUF_TT_Q8_0);
        sp.nonfinite = norms[i];
        sp.nonfinite_value = i == 1 ? INFINITY : NAN;
        expect_load_fail(&sp, norms[i], "non-finite");
    }
    /* not a file */
    model m;
    char err[256] = "";
    assert_int_equal(model_load(&m, "/nonexistent/selfspec.gguf", NULL, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
}

/* ------------------------------------------------------- shared memory */

static int shm_exists(const char *name)
{
    char p[128];
    snprintf(p, sizeof p, "/dev/shm%s", name);
    return access(p, F_OK) == 0;
}

/* Permissions of the mapping containing addr, from /proc/self/maps. */
static int mapping_perms(const void *addr, char perms[5])
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char p[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, p) == 3 && (unsigned long)addr >= lo &&
            (unsigned long)addr < hi) {
            memcpy(perms, p, 5);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

static void test_shared_memory(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q4_1);
    char path[128], err[512] = "", name[64];
    assert_int_equal(tmodel_write_temp(&sp, path, sizeof path), 0);
    snprintf(name, sizeof name, "/selfspec_test_%d", (int)getpid());
    shm_unlink(name);
    model m, m2;
    if (model_load(&m, path, name, err, sizeof err) != 0)
        fail_msg("model_load with shm: %s", err);
    assert_true(shm_exists(name));
    assert_string_equal(m.arena.shm_name, name);
    /* a second creator with the same name fails cleanly */
    model m3;
    assert_int_equal(model_load(&m3, path, name, err, sizeof err), -1);
    assert_true(strstr(err, name) != NULL);
    assert_true(shm_exists(name));
    if (model_attach(&m2, path, name, err, sizeof err) != 0)
        fail_msg("model_attach: %s", err);
    assert_int_equal(m2.arena.size, m.arena.size);
    assert_true(m2.arena.base != m.arena.base);
    assert_memory_equal(m2.arena.base, m.arena.base, m.arena.size);
    char perms[5] = "";
    assert_int_equal(mapping_perms(m2.arena.base, perms), 0);
    assert_true(perms[0] == 'r' && perms[1] == '-' && perms[3] == 's');
    /* pointers of the attached model point into its own mapping, at the
     * same offsets */
    assert_true((const uint8_t *)m2.w.layers[1].w_down.q - m2.arena.base ==
                (const uint8_t *)m.w.layers[1].w_down.q - m.arena.base);
    /* the attached model computes the same logits */
    {
        fwd_state s;
        kv_cache k1, k2;
        int32_t toks[5] = {1, 50, 100, 150, 200};
        int32_t V = m.config.vocab_size;
        float *a = malloc((size_t)5 * V * sizeof(float)), *b = malloc((size_t)5 * V * sizeof(float));
        fwd_state_init(&s, &m.config, 8, 16);
        assert_int_equal(kv_init(&k1, &m.config, 8, err, sizeof err), 0);
        assert_int_equal(kv_init(&k2, &m.config, 8, err, sizeof err), 0);
        fwd_seq q1 = {.tokens = toks, .n_tokens = 5, .kv = &k1}, q2 = {.tokens = toks, .n_tokens = 5, .kv = &k2};
        assert_int_equal(model_forward(&m, &s, &q1, 1, NULL, NULL, a, err, sizeof err), 0);
        assert_int_equal(model_forward(&m2, &s, &q2, 1, NULL, NULL, b, err, sizeof err), 0);
        assert_memory_equal(a, b, (size_t)5 * V * sizeof(float));
        kv_free(&k1);
        kv_free(&k2);
        fwd_state_free(&s);
        free(a);
        free(b);
    }
    /* the attacher does not own the segment */
    model_free(&m2);
    assert_true(shm_exists(name));
    model_free(&m);
    assert_false(shm_exists(name));
    /* attaching to nothing fails */
    assert_int_equal(model_attach(&m2, path, name, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
    assert_int_equal(model_attach(&m2, path, NULL, err, sizeof err), -1);
    /* a bad name */
    assert_int_equal(model_load(&m, path, "no_slash", err, sizeof err), -1);
    assert_true(strstr(err, "no_slash") != NULL);
    unlink(path);
    /* a load that fails after creating the segment removes it */
    sp.omit = "blk.1.ffn_up.weight";
    assert_int_equal(tmodel_write_temp(&sp, path, sizeof path), 0);
    assert_int_equal(model_load(&m, path, name, err, sizeof err), -1);
    assert_true(strstr(err, "blk.1.ffn_up.weight") != NULL);
    assert_false(shm_exists(name));
    unlink(path);
}

/* The forms and tiers of qmat.h: over random shapes (rows 16..112, cols
 * 32..352), for each of
 *   U8, no promise, levels 0..255      U8, tier 7BIT, levels <= 127
 *   U8, no promise, levels <= 15       U8, tier NIBBLE, levels <= 15
 *   U4 (packed), the same levels <= 15
 * every T = 1..70 (odd and even, windows of 70 strided tokens) of
 * qmat_matmul equals qmat_matmul_portable on all 70 tokens, bit for bit,
 * under every kernel setting (the build's kernel; the default; the AMX
 * kernel for every T where the CPU has it, else "skipped: no AMX"), also at
 * the models' widths (576, 1536, 8960 columns); the
 * three matrices holding levels <= 15 give the same bits as each other; the
 * U4 form reads back (qmat_get_row, qmat_dequant_row, qmat_gather) exactly
 * as the U8 form; qmat_scan_tier finds each matrix's tier. */
typedef struct {
    qmat W;
    uint8_t *q;
    float *d, *m;
} form_mat;

static void form_alloc(form_mat *f, int32_t rows, int32_t cols, int32_t fmt, int32_t tier)
{
    memset(f, 0, sizeof *f);
    f->W.rows = rows;
    f->W.cols = cols;
    f->W.fmt = fmt;
    f->W.tier = tier;
    f->q = alignedCheck(qmat_q_bytes_fmt(rows, cols, fmt));
    f->d = alignedCheck(qmat_dm_bytes(rows, cols));
    f->m = alignedCheck(qmat_dm_bytes(rows, cols));
    f->W.q = f->q, f->W.d = f->d, f->W.m = f->m;
}

static void form_free(form_mat *f)
{
    free(f->q);
    free(f->d);
    free(f->m);
}

static uint64_t form_rng(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return *x >> 33;
}

static void test_matmul_forms_and_tiers(void **state)
{
    (void)state;
    enum { NTOK = 70, NV = 5, NTRIAL = 7 };
    static const int32_t fmt[NV] = {QMAT_U8, QMAT_U8, QMAT_U8, QMAT_U8, QMAT_U4};
    static const int32_t tier[NV] = {QMAT_TIER_8BIT, QMAT_TIER_7BIT, QMAT_TIER_8BIT, QMAT_TIER_NIBBLE, QMAT_TIER_NIBBLE};
    static const int maxl[NV] = {255, 127, 15, 15, 15};
    static const int32_t scanned[NV] = {QMAT_TIER_8BIT, QMAT_TIER_7BIT, QMAT_TIER_NIBBLE, QMAT_TIER_NIBBLE, QMAT_TIER_NIBBLE};
    uint64_t x = 2024;
    /* trials 4..6: the models' block widths (SmolLM2 576 and 1536, Qwen2.5
     * 1536 and 8960: 18, 48 and 280 blocks, so the AMX kernel's batches of 4
     * blocks end full and partial), few rows (each 16-row group is alone) */
    static const int32_t model_cols[NTRIAL] = {0, 0, 0, 0, 576, 1536, 8960};
    for (int trial = 0; trial < NTRIAL; trial++) {
        int32_t rows = 16 * (int32_t)(1 + form_rng(&x) % 7), cols = 32 * (int32_t)(1 + form_rng(&x) % 11);
        if (trial == 0)
            rows = 16, cols = 32;   /* the smallest matrix */
        if (model_cols[trial])
            rows = 48, cols = model_cols[trial];
        int32_t nb = cols / QMAT_BLOCK, ldx = cols + 5, ldy = rows + 3;
        float *X = alignedCheck((size_t)NTOK * ldx * sizeof(float));   /* (NTOK, ldx) */
        for (int i = 0; i < NTOK * ldx; i++) {
            X[i] = (float)(form_rng(&x) % 20001) / 10000.0f - 1.0f;
            if (form_rng(&x) % 61 == 0)
                X[i] *= 40.0f;   /* outliers */
            if (form_rng(&x) % 97 == 0)
                X[i] = 0.0f;
        }
        for (int i = 0; i < cols; i++)   /* one all-zero token */
            X[(size_t)3 * ldx + i] = 0.0f;
        uint8_t *lv = mallocCheck((size_t)cols), *lv2 = mallocCheck((size_t)cols);
        float *d = mallocCheck((size_t)nb * sizeof(float)), *m = mallocCheck((size_t)nb * sizeof(float));
        float *d2 = mallocCheck((size_t)nb * sizeof(float)), *m2 = mallocCheck((size_t)nb * sizeof(float));
        form_mat f[NV];
        for (int v = 0; v < NV; v++)
            form_alloc(&f[v], rows, cols, fmt[v], tier[v]);
        uint64_t seed_nib = form_rng(&x);
        for (int v = 0; v < NV; v++) {
            /* variants 2..4 share their levels, d and m (the same matrix) */
            uint64_t y = v >= 2 ? seed_nib : form_rng(&x);
            for (int32_t r = 0; r < rows; r++) {
                for (int32_t c = 0; c < cols; c++)
                    lv[c] = (uint8_t)(form_rng(&y) % (uint64_t)(maxl[v] + 1));
                if (r == 0)
                    for (int32_t c = 0; c < cols; c++)
                        lv[c] = (uint8_t)maxl[v];   /* the extreme level everywhere */
                for (int32_t b = 0; b < nb; b++) {
                    d[b] = ((float)(form_rng(&y) % 2001) - 1000.0f) * 1e-5f;
                    m[b] = ((float)(form_rng(&y) % 2001) - 1000.0f) * 1e-3f;
                }
                qmat_set_row(&f[v].W, r, lv, d, m);
            }
            assert_int_equal(qmat_scan_tier(&f[v].W), scanned[v]);
        }
        /* U4 reads back as the U8 form of the same matrix */
        for (int32_t r = 0; r < rows; r++) {
            qmat_get_row(&f[3].W, r, lv, d, m);
            qmat_get_row(&f[4].W, r, lv2, d2, m2);
            assert_memory_equal(lv, lv2, (size_t)cols);
            assert_memory_equal(d, d2, (size_t)nb * sizeof(float));
            assert_memory_equal(m, m2, (size_t)nb * sizeof(float));
            float *o1 = mallocCheck((size_t)cols * sizeof(float)), *o2 = mallocCheck((size_t)cols * sizeof(float));
            qmat_dequant_row(&f[3].W, r, o1);
            qmat_dequant_row(&f[4].W, r, o2);
            assert_memory_equal(o1, o2, (size_t)cols * sizeof(float));
            free(o1);
            free(o2);
        }
        void *scratch = alignedCheck(qmat_scratch_bytes(cols, NTOK));
        float *ref[NV];
        float *Y = alignedCheck((size_t)NTOK * ldy * sizeof(float));   /* (NTOK, ldy) */
        for (int v = 0; v < NV; v++) {
            ref[v] = alignedCheck((size_t)NTOK * ldy * sizeof(float));
            qmat_matmul_portable(&f[v].W, X, ldx, NTOK, ref[v], ldy, scratch);
        }
        for (int v = 3; v < NV; v++)
            for (int t = 0; t < NTOK; t++)
                if (memcmp(ref[v] + (size_t)t * ldy, ref[2] + (size_t)t * ldy, (size_t)rows * sizeof(float)) != 0)
                    fail_msg("%dx%d: portable product of variant %d differs from the same matrix as U8", rows, cols, v);
        /* every kernel setting: the build's kernel, the default, AMX for every T */
        for (int k = 0; k < N_KSET; k++) {
            if (!kset_apply(k))
                continue;
            if (trial == 0)
                printf("  qmat forms and tiers, T = 1..%d: %s\n", NTOK, kset_name[k]);
            for (int v = 0; v < NV; v++)
                for (int T = 1; T <= NTOK; T++) {
                    int t0 = (int)(form_rng(&x) % (uint64_t)(NTOK - T + 1));
                    qmat_matmul(&f[v].W, X + (size_t)t0 * ldx, ldx, T, Y, ldy, scratch);
                    for (int t = 0; t < T; t++)
                        if (memcmp(Y + (size_t)t * ldy, ref[v] + (size_t)(t0 + t) * ldy, (size_t)rows * sizeof(float)) != 0)
                            fail_msg("%dx%d variant %d (fmt %d tier %d), %s, T=%d: token %d differs from the portable kernel (max diff %g)",
                                     rows, cols, v, fmt[v], tier[v], kset_name[k], T, t0 + t,
                                     max_abs_diff(Y + (size_t)t * ldy, ref[v] + (size_t)(t0 + t) * ldy, (size_t)rows));
                }
        }
        qmat_set_amx(QMAT_AMX_MIN_T_DEFAULT);
        /* gather keeps the form: rows reversed, then the product row by row */
        int32_t *idx = mallocCheck((size_t)rows * sizeof(int32_t));
        for (int32_t r = 0; r < rows; r++)
            idx[r] = rows - 1 - r;
        qmat gu;
        assert_int_equal(qmat_gather(&f[4].W, idx, rows, &gu), 0);
        assert_int_equal(gu.fmt, QMAT_U4);
        assert_int_equal(gu.tier, QMAT_TIER_NIBBLE);
        qmat_matmul(&gu, X, ldx, NTOK, Y, ldy, scratch);
        for (int t = 0; t < NTOK; t++)
            for (int32_t r = 0; r < rows; r++)
                assert_memory_equal(&Y[(size_t)t * ldy + r], &ref[4][(size_t)t * ldy + rows - 1 - r], sizeof(float));
        qmat_free_owned(&gu);
        free(idx);
        for (int v = 0; v < NV; v++) {
            free(ref[v]);
            form_free(&f[v]);
        }
        free(Y);
        free(scratch);
        free(lv);
        free(lv2);
        free(d);
        free(m);
        free(d2);
        free(m2);
        free(X);
    }
}

/* A token tree (fwd_seq.parent) in one pass: every token's logits equal,
 * bit for bit, those of the chain of its ancestors fed as a block after the
 * same prefix; after kv_copy_slot moves one root-to-leaf path to
 * consecutive slots, the cache's bytes for those positions equal the
 * chain's. Contiguous and paged caches; a model with local (sliding
 * window) layers whose window the tree's depth crosses. */
static void check_tree(tiny *t, int paged, int prefix, uint64_t seed)
{
    enum { N = 14 };
    const int32_t V = t->m.config.vocab_size;
    int32_t pre[64], tok[N], parent[N], depth[N];
    assert_true(prefix <= 64);
    uint64_t rng = seed;
    random_tokens(&rng, pre, prefix, V);
    random_tokens(&rng, tok, N, V);
    parent[0] = -1;
    depth[0] = 0;
    for (int j = 1; j < N; j++) {   /* a long first branch, then random attachments */
        parent[j] = j < 5 ? j - 1 : (int32_t)(tmodel_rng(&rng) % (uint64_t)j);
        depth[j] = depth[parent[j]] + 1;
    }
    /* (N + 64, V): room for the prefix's logits too */
    float *tl = malloc((size_t)(N + 64) * V * sizeof(float)), *cl = malloc((size_t)(N + 64) * V * sizeof(float));
    kv_pool pool;
    kv_cache kv, ref;
    char err[256] = "";
    int cap = prefix + N + 4;
    if (paged) {
        assert_int_equal(kv_pool_init(&pool, &t->m.config, 2 * (size_t)kv_pool_block_bytes(&t->m.config) *
                                      (size_t)kv_blocks_for(cap), err, sizeof err), 0);
        assert_int_equal(kv_init_paged(&kv, &pool, cap), 0);
    } else {
        kv_open(&kv, &t->m, cap);
    }
    if (prefix)
        feed(t, &kv, pre, prefix, tl);
    fwd_seq sq = {.tokens = tok, .n_tokens = N, .pos = prefix, .kv = &kv, .parent = parent};
    if (model_forward(&t->m, &t->s, &sq, 1, NULL, NULL, tl, err, sizeof err) != 0)
        fail_msg("tree forward: %s", err);
    int32_t path[N], leaf = N - 1;
    for (int j = 0; j < N; j++) {
        int32_t n = 0, chain[N];
        for (int32_t a = j; a >= 0; a = parent[a])
            path[n++] = a;
        for (int32_t d = 0; d < n; d++)
            chain[d] = tok[path[n - 1 - d]];
        kv_open(&ref, &t->m, cap);
        if (prefix)
            feed(t, &ref, pre, prefix, cl);
        fwd1(t, &ref, chain, n, prefix, NULL, cl);
        if (memcmp(tl + (size_t)j * V, cl + (size_t)(n - 1) * V, (size_t)V * sizeof(float)) != 0)
            fail_msg("tree token %d (depth %d): logits differ from its chain's (max diff %g)", j, n - 1,
                     max_abs_diff(tl + (size_t)j * V, cl + (size_t)(n - 1) * V, (size_t)V));
        if (j == leaf) {   /* the accepted path to consecutive slots, as the engine moves it */
            for (int32_t d = 1; d < n; d++)
                kv_copy_slot(&kv, prefix + path[n - 1 - d], prefix + d);
            /* the moved cache continues as the chain's: the next token's logits agree */
            int32_t nxt = (int32_t)(tmodel_rng(&rng) % (uint64_t)V);
            kv.len = ref.len = prefix + n;
            fwd1(t, &kv, &nxt, 1, prefix + n, NULL, tl);
            fwd1(t, &ref, &nxt, 1, prefix + n, NULL, cl);
            if (memcmp(tl, cl, (size_t)V * sizeof(float)) != 0)
                fail_msg("after moving the path of depth %d: the next step differs from the chain's", n - 1);
            kv_free(&ref);
            break;
        }
        kv_free(&ref);
    }
    assert_int_equal(depth[leaf] >= 1, 1);
    kv_free(&kv);
    if (paged)
        kv_pool_free(&pool);
    free(tl);
    free(cl);
}

static void test_tree_block(void **state)
{
    (void)state;
    tmodel_spec sp = tmodel_default(GGUF_TT_Q4_1);
    sp.seed = 71;
    tiny t;
    tiny_open(&t, &sp, MAX_BLOCK + 8, 96);
    for (int paged = 0; paged < 2; paged++)
        for (int prefix = 0; prefix <= 37; prefix += 37)
            check_tree(&t, paged, prefix, 900 + 10 * paged + prefix);
    /* a malformed tree is an error, not a crash */
    int32_t tok[3] = {1, 2, 3}, bad[3] = {-1, 2, 0};
    kv_cache kv;
    kv_open(&kv, &t.m, 8);
    char err[256] = "";
    float *lg = malloc((size_t)3 * t.m.config.vocab_size * sizeof(float));
    fwd_seq sq = {.tokens = tok, .n_tokens = 3, .pos = 0, .kv = &kv, .parent = bad};
    assert_int_equal(model_forward(&t.m, &t.s, &sq, 1, NULL, NULL, lg, err, sizeof err), -1);
    assert_non_null(strstr(err, "parent"));
    free(lg);
    kv_free(&kv);
    tiny_close(&t);
    /* local layers: a window of 8 positions, crossed by the prefix and the tree */
    tmodel_spec g = tmodel_default(GGUF_TT_Q8_0);
    g.arch = "gemma3";
    g.seed = 72;
    g.n_heads = 4;
    g.n_kv_heads = 1;
    g.head_dim = 32;
    g.qk_norm = 1;
    g.post_norms = 1;
    g.swa_window = 8;
    g.n_layers = 6;
    g.tied = 1;
    tiny_open(&t, &g, MAX_BLOCK + 8, 96);
    check_tree(&t, 1, 5, 990);
    check_tree(&t, 0, 11, 991);
    tiny_close(&t);
}

/* model_argmax against the plain loop's rule (the first index holding the
 * largest value; NaNs after the first element never win) for lengths around
 * the vector width, ties, signed zeros and NaNs. */
static int32_t argmax_ref(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void test_argmax(void **state)
{
    (void)state;
    unsigned seed = 3u;
    float *x = malloc(300 * sizeof(float));
    for (int32_t n = 1; n <= 300; n += (n < 70 ? 1 : 23))
        for (int kind = 0; kind < 6; kind++) {
            for (int32_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                x[i] = (float)((seed >> 8) % 7) - 3.0f;   /* many ties */
            }
            if (kind == 1)
                x[n - 1] = 9.0f;   /* the maximum in the tail */
            if (kind == 2)
                for (int32_t i = 0; i < n; i++)
                    x[i] = (i % 3) ? -0.0f : 0.0f;   /* signed zeros tie */
            if (kind == 3)
                x[n / 2] = NAN;
            if (kind == 4)
                x[0] = NAN;
            if (kind == 5)
                x[n / 3] = -INFINITY, x[(2 * n) / 3] = INFINITY;
            assert_int_equal(model_argmax(x, n), argmax_ref(x, n));
        }
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types_vs_reference),
        cmocka_unit_test(test_padded_vocab_and_mha),
        cmocka_unit_test(test_block_bit_exact),
        cmocka_unit_test(test_matmul_rows_independent_of_T),
        cmocka_unit_test(test_matmul_forms_and_tiers),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_draft_scratch),
        cmocka_unit_test(test_tree_block),
        cmocka_unit_test(test_kv_truncate),
        cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_hostile_models),
        cmocka_unit_test(test_shared_memory),
        cmocka_unit_test(test_argmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
