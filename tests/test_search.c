/*
 * test_search.c - skip-set transfer across model depths (normalized depth),
 * and the tune step (search_tune: draft head size x exit threshold) on a
 * tiny random model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "tune/search.h"
#include "decode/skipset.h"
#include "format/gguf.h"
#include "testutil_model.h"

/* A set on 30 layers maps to 60 and 15 layers by l / (L - 1); first and
 * last layers map to first and last. */
static void test_transfer_depths(void **state)
{
    (void)state;
    skip_set src, up, down, same;
    skipset_init(&src, 30);
    src.attn_skip[0] = 1;       /* depth 0 */
    src.attn_skip[29] = 1;      /* depth 1 */
    src.mlp_skip[10] = 1;       /* depth 10/29 */
    skipset_transfer(&src, 60, &up);
    assert_int_equal(up.n_layers, 60);
    assert_true(up.attn_skip[0] && up.attn_skip[59]);
    assert_true(up.mlp_skip[20]);           /* round(10/29 * 59) = 20 */
    assert_int_equal(skipset_count(&up), 3);
    skipset_transfer(&src, 15, &down);
    assert_true(down.attn_skip[0] && down.attn_skip[14]);
    assert_true(down.mlp_skip[5]);          /* round(10/29 * 14) = 5 */
    skipset_transfer(&src, 30, &same);      /* identity at equal depth */
    for (int l = 0; l < 30; l++) {
        assert_int_equal(same.attn_skip[l], src.attn_skip[l]);
        assert_int_equal(same.mlp_skip[l], src.mlp_skip[l]);
    }
    skipset_free(&src);
    skipset_free(&up);
    skipset_free(&down);
    skipset_free(&same);
}

/* Collapsing depth merges neighbours: never more skips than the target has. */
static void test_transfer_collapse(void **state)
{
    (void)state;
    skip_set src, dst;
    skipset_init(&src, 40);
    for (int l = 0; l < 40; l++)
        src.attn_skip[l] = src.mlp_skip[l] = 1;
    skipset_transfer(&src, 4, &dst);
    assert_int_equal(skipset_count(&dst), 8);
    skipset_free(&src);
    skipset_free(&dst);
}

/*
 * The tune step on a tiny model (vocabulary 256): the head sizes are
 * clipped to what can be built (100 -> 96; 256 and 1024 -> the full head,
 * once; 8 dropped), every point's score is the replay objective of that
 * head and threshold (the full head: search_score_set bit for bit; a
 * pruned head: scored per fold with the head counted on the other fold,
 * the point's score between the folds'), and the point chosen is the
 * grid's best.
 */
static void test_tune_grid(void **state)
{
    (void)state;
    char path[128], err[512] = "";
    tmodel_spec spec = tmodel_default(GGUF_TT_Q8_0);
    assert_int_equal(tmodel_write_temp(&spec, path, sizeof path), 0);
    model m;
    if (model_load(&m, path, NULL, err, sizeof err) != 0)
        fail_msg("model_load: %s", err);
    fwd_state fs;
    fwd_state_init(&fs, &m.config, 64, 128);
    enum { NP = 3, PLEN = 6, NEW = 24 };
    int32_t buf[NP][PLEN], *prompts[NP], lens[NP];
    uint64_t rng = 7;
    for (int i = 0; i < NP; i++) {
        for (int j = 0; j < PLEN; j++)
            buf[i][j] = (int32_t)(tmodel_rng(&rng) % 256);
        prompts[i] = buf[i];
        lens[i] = PLEN;
    }
    calib_set cs;
    if (calib_build(&cs, &m, &fs, prompts, lens, NP, NEW, err, sizeof err) != 0)
        fail_msg("calib_build: %s", err);
    assert_int_equal(cs.n_positions, NP * (NEW + 1));
    cost_model cm;
    assert_int_equal(cost_measure(&cm, &m, NULL, 12, 3, err, sizeof err), 0);
    spec_params sp;
    spec_params_default(&sp);
    skip_set ss;
    skipset_init(&ss, m.config.n_layers);
    ss.mlp_skip[1] = 1;   /* a draft that disagrees sometimes */
    const int32_t heads[] = {0, 64, 100, 256, 1024, 8};
    const float gammas[] = {0.0f, 0.5f, 0.9f, 1.0f};
    tune_opts to = {.head_sizes = heads, .n_heads = 6, .gammas = gammas, .n_gammas = 4, .reps = 3};
    tune_point grid[6 * 4];
    int32_t n = -1, best = -1;
    assert_int_equal(search_tune(&cs, &m, &fs, &ss, &cm, &sp, &to, grid, &n, &best, err, sizeof err), 0);
    assert_int_equal(n, 3 * 4);
    const int32_t want_heads[] = {0, 64, 96};
    for (int32_t i = 0; i < n; i++) {
        assert_int_equal(grid[i].head_size, want_heads[i / 4]);
        assert_true(grid[i].gamma_init == gammas[i % 4]);
        assert_true(grid[i].draft_base > 0);
        assert_true(grid[i].sc.tokens_per_s <= grid[best].sc.tokens_per_s);
        if (grid[i].sc.tokens_per_s == grid[best].sc.tokens_per_s)
            assert_true(i >= best);                       /* the first on ties */
        /* the same point scored on its own: the full head over all the text;
         * a pruned head per fold, counted on the other fold (odd / even
         * sequences), the grid's score between the two folds' */
        spec_params pi = sp;
        pi.gamma_init = grid[i].gamma_init;
        search_score sc;
        if (grid[i].head_size == 0) {
            assert_true(grid[i].draft_base == cm.base);   /* the full head is the cost model's own */
            const int32_t order[] = {0, 2, 1};   /* the folds' order: the same sums in the same order */
            calib_set both;
            calib_view(&cs, order, 3, &both);
            assert_int_equal(search_score_set(&both, &m, &fs, &ss, NULL, NULL, &cm, &pi, &sc, err, sizeof err), 0);
            calib_view_free(&both);
            assert_true(sc.tokens_per_s == grid[i].sc.tokens_per_s);
            assert_true(sc.accept_rate == grid[i].sc.accept_rate && sc.match_rate == grid[i].sc.match_rate);
            continue;
        }
        const int32_t even[] = {0, 2}, odd[] = {1};
        calib_set fold[2];
        calib_view(&cs, even, 2, &fold[0]);
        calib_view(&cs, odd, 1, &fold[1]);
        assert_int_equal(fold[0].n_positions + fold[1].n_positions, cs.n_positions);
        double lo = 1e300, hi = 0;
        for (int f = 0; f < 2; f++) {
            skip_set h;
            skipset_init(&h, m.config.n_layers);
            search_head_tokens(&fold[1 - f], &m, grid[i].head_size, &h);
            assert_int_equal(h.n_head_tokens, grid[i].head_size);
            qmat q;
            assert_int_equal(qmat_gather(&m.w.output, h.head_tokens, h.n_head_tokens, &q), 0);
            cost_model ci = cm;
            ci.base_pruned = grid[i].draft_base;
            assert_int_equal(search_score_set(&fold[f], &m, &fs, &ss, &q, h.head_tokens, &ci, &pi, &sc, err,
                                              sizeof err), 0);
            lo = sc.tokens_per_s < lo ? sc.tokens_per_s : lo;
            hi = sc.tokens_per_s > hi ? sc.tokens_per_s : hi;
            qmat_free_owned(&q);
            skipset_free(&h);
        }
        assert_true(grid[i].sc.tokens_per_s >= lo * (1 - 1e-12) && grid[i].sc.tokens_per_s <= hi * (1 + 1e-12));
        calib_view_free(&fold[0]);
        calib_view_free(&fold[1]);
    }
    int varies = 0;   /* the grid is not flat: choosing its best means something */
    for (int32_t i = 0; i < n; i++)
        varies |= grid[i].sc.tokens_per_s != grid[0].sc.tokens_per_s;
    assert_true(varies);
    /* gamma 1.0 stops after every draft token (top-1 below 1): one token per block */
    assert_true(grid[3].sc.mean_accepted <= 1.0);
    /* one head timed against another: each head its own measurement */
    double base[2];
    qmat none[2] = {{0}};
    assert_int_equal(cost_measure_heads(&m, none, 2, 3, base, err, sizeof err), 0);
    assert_true(base[0] > 0 && base[1] > 0);
    skipset_free(&ss);
    calib_free(&cs);
    fwd_state_free(&fs);
    model_free(&m);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transfer_depths),
        cmocka_unit_test(test_transfer_collapse),
        cmocka_unit_test(test_tune_grid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
