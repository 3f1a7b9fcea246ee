/*
 * test_jobindex.c - drafts from the whole job (decode/jobindex.h):
 *  - a request drafts what an earlier request wrote after the same tokens,
 *    the most recent one winning, the longest suffix first;
 *  - a draft never crosses into the next request (it stops at the end of
 *    the matched request's text) and never proposes a token that is not in
 *    the matched text: against a brute-force scan of the documents on
 *    random jobs over small vocabularies;
 *  - memory stays bounded: a job many times larger than the bound keeps at
 *    most the bound, drops the oldest requests whole, and still drafts from
 *    the newest;
 *  - a request longer than half the bound keeps its last part.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "decode/jobindex.h"

static void test_basic(void **state)
{
    (void)state;
    job_index j;
    jobindex_init(&j, 1, 3, 1024);
    int32_t out[8], n;
    const int32_t h[] = {7, 8, 9};
    assert_int_equal(jobindex_draft(&j, h, 3, 4, out, &n), 0);   /* empty */
    const int32_t a[] = {1, 2, 7, 8, 9, 10, 11, 12};
    const int32_t b[] = {5, 8, 9, 20, 21};
    jobindex_add(&j, a, 8);
    assert_int_equal(jobindex_draft(&j, h, 3, 2, out, &n), 2);   /* "7 8 9" -> 10 11 (k_max 2) */
    assert_int_equal(jobindex_draft(&j, h, 3, 4, out, &n), 3);   /* -> 10 11 12, then a's end */
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[2], 12);
    jobindex_add(&j, b, 5);
    /* the longest suffix still wins over the more recent "8 9" */
    assert_int_equal(jobindex_draft(&j, h, 3, 8, out, &n), 3);   /* ... and stops at a's end */
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 10);
    const int32_t h2[] = {4, 8, 9};   /* only "8 9" matches: the most recent, in b */
    assert_int_equal(jobindex_draft(&j, h2, 3, 8, out, &n), 2);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 20);
    assert_int_equal(out[1], 21);
    const int32_t h3[] = {21};        /* the last token of b: nothing follows it there */
    assert_int_equal(jobindex_draft(&j, h3, 1, 8, out, &n), 0);
    assert_int_equal(jobindex_draft(&j, h, 3, 0, out, &n), 0);
    assert_int_equal(j.docs, 2);
    jobindex_free(&j);
}

/* The definition over the documents as they are held. */
static int32_t ref_draft(int32_t docs[][64], const int32_t *lens, int nd, int32_t n_min, int32_t n_max,
                         const int32_t *h, int32_t len, int32_t k_max, int32_t *out)
{
    for (int32_t n = n_max; n >= n_min; n--) {
        if (n > len)
            continue;
        for (int d = nd - 1; d >= 0; d--)
            for (int32_t e = lens[d] - 2; e >= n - 1; e--) {
                if (memcmp(docs[d] + e - n + 1, h + len - n, (size_t)n * sizeof(int32_t)))
                    continue;
                int32_t k = 0;
                while (k < k_max && e + 1 + k < lens[d]) {
                    out[k] = docs[d][e + 1 + k];
                    k++;
                }
                return k;
            }
    }
    return 0;
}

static void test_against_scan(void **state)
{
    (void)state;
    srand(11);
    for (int trial = 0; trial < 300; trial++) {
        int32_t docs[12][64], lens[12];
        int nd = 1 + rand() % 12, vocab = 2 + rand() % 5;
        job_index j;
        jobindex_init(&j, 1, 3, 4096);
        for (int d = 0; d < nd; d++) {
            lens[d] = 1 + rand() % 64;
            for (int32_t i = 0; i < lens[d]; i++)
                docs[d][i] = rand() % vocab;
            jobindex_add(&j, docs[d], lens[d]);
        }
        for (int q = 0; q < 20; q++) {
            int32_t h[6], len = 1 + rand() % 6, out[12], want[12], n;
            for (int32_t i = 0; i < len; i++)
                h[i] = rand() % vocab;
            int32_t got = jobindex_draft(&j, h, len, 12, out, &n);
            int32_t ref = ref_draft(docs, lens, nd, 1, 3, h, len, 12, want);
            assert_int_equal(got, ref);
            assert_memory_equal(out, want, (size_t)got * sizeof(int32_t));
            for (int32_t i = 0; i < got; i++)
                assert_true(out[i] >= 0 && out[i] < vocab);
        }
        jobindex_free(&j);
    }
}

static void test_bounded(void **state)
{
    (void)state;
    job_index j;
    jobindex_init(&j, 1, 3, 1000);
    int32_t doc[40];
    for (int d = 0; d < 500; d++) {   /* 500 requests of 40 tokens: 20x the bound */
        for (int i = 0; i < 40; i++)
            doc[i] = 1000 * d + i;
        jobindex_add(&j, doc, 40);
        assert_true(jobindex_tokens(&j) <= 1000);
    }
    assert_true(j.evicted_docs > 400);
    int32_t out[8], n;
    const int32_t newest[] = {499000 + 10};
    assert_int_equal(jobindex_draft(&j, newest, 1, 3, out, &n), 3);
    assert_int_equal(out[0], 499000 + 11);
    const int32_t oldest[] = {10};
    assert_int_equal(jobindex_draft(&j, oldest, 1, 3, out, &n), 0);   /* dropped whole */
    /* one request longer than half the bound: its last part stays */
    int32_t big[800];
    for (int i = 0; i < 800; i++)
        big[i] = 5000000 + i;
    jobindex_add(&j, big, 800);
    assert_true(jobindex_tokens(&j) <= 1000);
    const int32_t tail[] = {5000000 + 700};
    assert_int_equal(jobindex_draft(&j, tail, 1, 3, out, &n), 3);
    assert_int_equal(out[0], 5000000 + 701);
    jobindex_free(&j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_against_scan),
        cmocka_unit_test(test_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
