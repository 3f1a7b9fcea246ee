/*
 * test_ngram.c - context drafts (decode/ngram.h):
 *  - edge cases: an empty history, one token, a suffix whose only
 *    occurrence is itself (no match), a match at the very end (the previous
 *    position), k_max 0 and 1, the n_min/n_max limits (a match shorter than
 *    n_min is not taken; the longest suffix wins over a more recent shorter
 *    one), ngram_params_check;
 *  - overlapping matches and long repeats: a period-p history proposes the
 *    period for the whole draft (the LZ77-style copy past the end);
 *  - the most recent earlier occurrence wins;
 *  - against a brute-force rescan (the definition) on thousands of random
 *    histories over small vocabularies, after every push, for several
 *    (n_min, n_max), with the hash table growing many times; and with a huge
 *    vocabulary of ids (no collision can fake a match);
 *  - every occurrence, newest first (ngram_occurrences), against a rescan;
 *  - draft trees (decode/dtree.h): counts, the choice by expected tokens per
 *    unit of cost (a bar it must beat, the main path first, parents before
 *    children), and the greedy walk (a side branch, every branch rejected).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "decode/dtree.h"
#include "decode/ngram.h"

/* The definition, by rescan: for n = n_max..n_min (n <= len - 1), the
 * latest e < len - 1 with h[e-n+1..e] == h[len-n..len-1]; the draft copies
 * h[e+1..], reading its own output past the end. */
static int32_t ref_draft(const int32_t *h, int32_t len, int32_t n_min, int32_t n_max, int32_t k_max, int32_t *out,
                         int32_t *match_n, int32_t *n_hist)
{
    if (k_max <= 0)
        return 0;
    for (int32_t n = n_max; n >= n_min; n--) {
        if (n > len - 1)
            continue;
        for (int32_t e = len - 2; e >= n - 1; e--) {
            if (memcmp(h + e - n + 1, h + len - n, (size_t)n * sizeof(int32_t)))
                continue;
            for (int32_t i = 0; i < k_max; i++) {
                int32_t src = e + 1 + i;
                out[i] = src < len ? h[src] : out[src - len];
            }
            *match_n = n;
            *n_hist = len - 1 - e < k_max ? len - 1 - e : k_max;
            return k_max;
        }
    }
    return 0;
}

static void push_all(ngram_index *ix, const int32_t *t, int32_t n)
{
    ngram_push_many(ix, t, n);
    assert_int_equal(ix->len, n);
}

static void test_edges(void **state)
{
    (void)state;
    ngram_index ix;
    int32_t out[16], mn = -1, nh = -1;
    ngram_init(&ix, 1, 3);
    assert_int_equal(ngram_draft(&ix, 8, out, &mn, NULL), 0);        /* empty */
    ngram_push(&ix, 5);
    assert_int_equal(ngram_draft(&ix, 8, out, &mn, NULL), 0);        /* one token: nothing earlier */
    ngram_push(&ix, 6);
    assert_int_equal(ngram_draft(&ix, 8, out, &mn, NULL), 0);        /* 5 6: 6 never seen before */
    ngram_push(&ix, 6);
    /* 5 6 6: the suffix "6" ends at 1, right before the end */
    assert_int_equal(ngram_draft(&ix, 3, out, &mn, &nh), 3);
    assert_int_equal(mn, 1);
    assert_int_equal(nh, 1);       /* one token after the occurrence */
    assert_int_equal(out[0], 6);
    assert_int_equal(out[1], 6);   /* past the end: the copy repeats itself */
    assert_int_equal(out[2], 6);
    assert_int_equal(ngram_draft(&ix, 0, out, &mn, &nh), 0);        /* no room */
    assert_int_equal(ngram_draft(&ix, 1, out, &mn, &nh), 1);
    ngram_free(&ix);

    /* the longest suffix wins, even over a more recent shorter match */
    const int32_t h[] = {1, 2, 3, 40, 9, 3, 50, 1, 2, 3};
    ngram_init(&ix, 1, 3);
    push_all(&ix, h, 10);
    assert_int_equal(ngram_draft(&ix, 2, out, &mn, &nh), 2);
    assert_int_equal(mn, 3);
    assert_int_equal(out[0], 40);
    assert_int_equal(out[1], 9);
    ngram_free(&ix);
    ngram_init(&ix, 1, 1);   /* n_max 1: only "3", most recent at 5 */
    push_all(&ix, h, 10);
    assert_int_equal(ngram_draft(&ix, 2, out, &mn, &nh), 2);
    assert_int_equal(mn, 1);
    assert_int_equal(out[0], 50);
    assert_int_equal(out[1], 1);
    ngram_free(&ix);
    /* n_min 2: "3" alone never counts */
    const int32_t g[] = {7, 3, 8, 9, 3};
    ngram_init(&ix, 2, 3);
    push_all(&ix, g, 5);
    assert_int_equal(ngram_draft(&ix, 4, out, &mn, &nh), 0);
    ngram_free(&ix);
    ngram_init(&ix, 1, 3);
    push_all(&ix, g, 5);
    assert_int_equal(ngram_draft(&ix, 4, out, &mn, &nh), 4);
    assert_int_equal(nh, 3);
    assert_int_equal(out[0], 8);
    assert_int_equal(out[1], 9);
    assert_int_equal(out[2], 3);   /* the end of the history, then the copy goes on */
    assert_int_equal(out[3], 8);
    ngram_free(&ix);

    char err[128];
    assert_int_equal(ngram_params_check(1, 3, err, sizeof err), 0);
    assert_int_equal(ngram_params_check(1, NGRAM_MAX_N, err, sizeof err), 0);
    assert_int_equal(ngram_params_check(0, 3, err, sizeof err), -1);
    assert_int_equal(ngram_params_check(3, 2, err, sizeof err), -1);
    assert_int_equal(ngram_params_check(1, NGRAM_MAX_N + 1, err, sizeof err), -1);
}

static void test_repeats(void **state)
{
    (void)state;
    ngram_index ix;
    int32_t out[32], mn, nh;
    /* a long run of one token: "a a a a": match ending at len-2 */
    ngram_init(&ix, 1, 3);
    for (int i = 0; i < 100; i++)
        ngram_push(&ix, 4);
    assert_int_equal(ngram_draft(&ix, 32, out, &mn, &nh), 32);
    assert_int_equal(mn, 3);
    for (int i = 0; i < 32; i++)
        assert_int_equal(out[i], 4);
    ngram_free(&ix);
    /* period 5, over many periods: the draft continues the period */
    const int32_t per[5] = {10, 11, 12, 13, 14};
    ngram_init(&ix, 1, 3);
    for (int i = 0; i < 43; i++)
        ngram_push(&ix, per[i % 5]);
    assert_int_equal(ngram_draft(&ix, 32, out, &mn, &nh), 32);
    for (int i = 0; i < 32; i++)
        assert_int_equal(out[i], per[(43 + i) % 5]);
    ngram_free(&ix);
    /* the most recent occurrence: "1 2 x" twice with different x */
    const int32_t h[] = {1, 2, 70, 5, 1, 2, 71, 6, 1, 2};
    ngram_init(&ix, 1, 3);
    push_all(&ix, h, 10);
    assert_int_equal(ngram_draft(&ix, 2, out, &mn, &nh), 2);
    assert_int_equal(mn, 2);
    assert_int_equal(out[0], 71);
    assert_int_equal(out[1], 6);
    ngram_free(&ix);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_against_rescan(void **state)
{
    (void)state;
    uint64_t rng = 12345;
    const int32_t ranges[][2] = {{1, 3}, {1, 1}, {2, 4}, {1, NGRAM_MAX_N}, {3, 3}};
    int64_t matches = 0, checks = 0;
    for (int trial = 0; trial < 60; trial++) {
        int32_t n_min = ranges[trial % 5][0], n_max = ranges[trial % 5][1];
        int32_t vocab = trial % 3 == 0 ? 2 : trial % 3 == 1 ? 5 : 1000000007;
        int32_t len = 1 + (int32_t)(rng_next(&rng) % 600);
        int32_t *h = malloc((size_t)len * sizeof *h);
        ngram_index ix;
        ngram_init(&ix, n_min, n_max);
        for (int32_t i = 0; i < len; i++) {
            /* mostly random, sometimes a copy of an earlier stretch */
            if (i > 8 && rng_next(&rng) % 4 == 0)
                h[i] = h[rng_next(&rng) % (uint64_t)i];
            else
                h[i] = (int32_t)(rng_next(&rng) % (uint64_t)vocab);
            ngram_push(&ix, h[i]);
            int32_t k = (int32_t)(rng_next(&rng) % 13), a[16], b[16], ma = -1, mb = -1, ha = -1, hb = -1;
            int32_t na = ngram_draft(&ix, k, a, &ma, &ha), nb = ref_draft(h, i + 1, n_min, n_max, k, b, &mb, &hb);
            assert_int_equal(na, nb);
            if (na) {
                assert_int_equal(ma, mb);
                assert_int_equal(ha, hb);
                assert_true(ha >= 1 && ha <= na);
                assert_memory_equal(a, b, (size_t)na * sizeof(int32_t));
                matches++;
            }
            checks++;
        }
        assert_true(ix.n_used * 2 <= ix.n_slots);
        ngram_free(&ix);
        free(h);
    }
    assert_true(matches > checks / 4);   /* the comparison exercised real matches */
    assert_true(matches < checks);       /* ... and misses */
}

/* ngram_occurrences lists every earlier occurrence, newest first, as a
 * rescan finds them; random histories over 3 symbols, n = 1..3. */
static void test_occurrences(void **state)
{
    (void)state;
    uint32_t rng = 5;
    ngram_index ix;
    ngram_init(&ix, 1, 3);
    int32_t h[400];
    for (int32_t len = 0; len < 400; len++) {
        rng = rng * 1103515245u + 12345u;
        h[len] = (int32_t)(rng >> 16) % 3;
        ngram_push(&ix, h[len]);
        for (int32_t n = 1; n <= 3 && n <= len + 1; n++) {
            int32_t ends[64], want[64], k = ngram_occurrences(&ix, h + len + 1 - n, n, 64, ends), w = 0;
            for (int32_t e = len - 1; e >= n - 1 && w < 64; e--)   /* with a successor: e < len */
                if (!memcmp(h + e - n + 1, h + len + 1 - n, (size_t)n * sizeof(int32_t)))
                    want[w++] = e;
            assert_int_equal(k, w);
            assert_memory_equal(ends, want, (size_t)k * sizeof(int32_t));
        }
    }
    ngram_free(&ix);
}

static void test_dtree(void **state)
{
    (void)state;
    /* three occurrences: "a b c" twice, "a d" once */
    dtree t;
    dtree_reset(&t);
    const int32_t abc[] = {10, 11, 12}, ad[] = {10, 13};
    dtree_add(&t, abc, 3);
    dtree_add(&t, ad, 2);
    dtree_add(&t, abc, 3);
    assert_int_equal(t.n_occ, 3);
    assert_int_equal(t.n, 4);   /* a, b, c, d */
    assert_int_equal(t.count[0], 3);
    assert_int_equal(t.count[1], 2);
    assert_int_equal(t.depth[2], 3);
    assert_int_equal(t.parent[3], 0);
    /* free verification (extra 0): every node pays; the main path first */
    spec_costs c;
    memset(&c, 0, sizeof c);
    c.base = c.n_base = 1.0;
    spec_block b;
    assert_int_equal(dtree_choose(&t, &c, 1.0f, 8, 0.0, &b), 4);
    const int32_t want_tok[] = {10, 11, 12, 13}, want_par[] = {0, 1, 2, 1};
    assert_memory_equal(b.tokens, want_tok, sizeof want_tok);
    assert_memory_equal(b.parent, want_par, sizeof want_par);
    assert_int_equal(b.tree_depth, 3);
    assert_int_equal(b.n, 4);
    assert_int_equal(b.n_ctx, 4);
    /* at most 2 nodes: a and the better child b, one path: a chain */
    assert_int_equal(dtree_choose(&t, &c, 1.0f, 2, 0.0, &b), 2);
    assert_int_equal(b.tree_depth, 0);
    assert_int_equal(b.tokens[1], 11);
    /* tokens that cost 0.4 of a step each: a (estimate 1), b and c (2/3
     * each) raise the rate, d (1/3) would lower it: the chain a b c */
    for (int32_t x = 0; x <= SPEC_MAX_DRAFT; x++)
        c.extra[x] = 0.4 * x;
    assert_int_equal(dtree_choose(&t, &c, 1.0f, 8, 0.0, &b), 3);
    assert_int_equal(b.tree_depth, 0);
    /* a bar no choice reaches: nothing (b untouched) */
    b.n = 77;
    assert_int_equal(dtree_choose(&t, &c, 1.0f, 8, 100.0, &b), 0);
    assert_int_equal(b.n, 77);
    /* the walk: the argmax rows of [cur, a, b, c, d] */
    memset(&c, 0, sizeof c);
    c.base = c.n_base = 1.0;
    assert_int_equal(dtree_choose(&t, &c, 1.0f, 8, 0.0, &b), 4);
    int32_t acc, next, path[8];
    const int32_t side[] = {10, 13, 99, 99, 42};   /* a, then d (row 1's argmax), then d's row says 42 */
    spec_accept_tree(side, &b, &acc, path, &next);
    assert_int_equal(acc, 2);
    assert_int_equal(path[0], 0);
    assert_int_equal(path[1], 3);
    assert_int_equal(next, 42);
    const int32_t main_path[] = {10, 11, 12, 7, 0};
    spec_accept_tree(main_path, &b, &acc, path, &next);
    assert_int_equal(acc, 3);
    assert_int_equal(path[2], 2);
    assert_int_equal(next, 7);
    const int32_t none[] = {5, 11, 12, 7, 0};   /* every branch rejected */
    spec_accept_tree(none, &b, &acc, path, &next);
    assert_int_equal(acc, 0);
    assert_int_equal(next, 5);
    /* from an index: the continuations up to the separator, newest first */
    ngram_index ix;
    ngram_init(&ix, 1, 2);
    const int32_t doc[] = {1, 2, 3, -1, 1, 2, 4, 5, -1, 1, 2, 3, 6};
    for (size_t i = 0; i < sizeof doc / sizeof doc[0]; i++)
        if (doc[i] < 0)
            ngram_push_boundary(&ix, doc[i]);
        else
            ngram_push(&ix, doc[i]);
    const int32_t q[] = {1, 2};
    dtree_reset(&t);
    assert_int_equal(dtree_from_index(&t, &ix, q, 2, -1), 3);
    assert_int_equal(t.n_occ, 3);
    assert_int_equal(t.tok[0], 3);     /* the newest occurrence first: 3 6 */
    assert_int_equal(t.count[0], 2);   /* 3 twice */
    assert_int_equal(t.tok[2], 4);
    assert_int_equal(t.n, 4);          /* 3, 6, 4, 5: nothing past a separator */
    ngram_free(&ix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_repeats),
        cmocka_unit_test(test_against_rescan),
        cmocka_unit_test(test_occurrences),
        cmocka_unit_test(test_dtree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
