/*
 * test_sampler.c - unit tests for common/sampler.c: argmax ties, the top-1
 * probability, greedy, the top-k / top-p kept sets against a sort-based
 * reference, the warped distribution, seeded reproducibility, draw frequencies (chi-square) and
 * parameter checks.
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

#include "decode/sampler.h"
#include "testutil_model.h"

static sampler make(float temp, int32_t top_k, float top_p, uint64_t seed, int32_t n)
{
    sampler s;
    char err[256] = "";
    sampler_params p = {.temperature = temp, .top_k = top_k, .top_p = top_p, .seed = seed};
    if (sampler_init(&s, &p, n, err, sizeof err) != 0)
        fail_msg("sampler_init(T=%g k=%d p=%g): %s", temp, top_k, top_p, err);
    return s;
}

/* ------------------------------------------------------------------ argmax */

static void test_argmax(void **state)
{
    (void)state;
    float a[] = {1.0f, 3.0f, 3.0f, 2.0f};
    assert_int_equal(sampler_argmax(a, 4), 1);
    float b[] = {5.0f, 5.0f, 5.0f};
    assert_int_equal(sampler_argmax(b, 3), 0);
    float c[] = {-7.0f, -2.0f, -INFINITY, -2.0f};
    assert_int_equal(sampler_argmax(c, 4), 1);
    float d[] = {-INFINITY, -INFINITY, 0.5f};
    assert_int_equal(sampler_argmax(d, 3), 2);
    float e[] = {42.0f};
    assert_int_equal(sampler_argmax(e, 1), 0);
    float f[] = {0.0f, -0.0f, 0.0f};   /* -0 == +0: a tie, lowest index */
    assert_int_equal(sampler_argmax(f, 3), 0);
    float g[] = {1.0f, 2.0f, 2.0f, 2.0f, 1.5f, 2.0f};
    assert_int_equal(sampler_argmax(g, 6), 1);
    /* the tie at the end of a long row */
    float h[100];
    for (int i = 0; i < 100; i++)
        h[i] = (float)(i % 10);
    assert_int_equal(sampler_argmax(h, 100), 9);
}

/* ------------------------------------------------------------ top-1 prob */

static void test_top1_prob(void **state)
{
    (void)state;
    int32_t arg = -1;
    /* uniform: 1/n, the first index */
    float u[4] = {2.0f, 2.0f, 2.0f, 2.0f};
    assert_float_equal(sampler_top1_prob(u, 4, &arg), 0.25f, 1e-7f);
    assert_int_equal(arg, 0);
    /* against a double-precision softmax, and the argmax as sampler_argmax */
    float a[5] = {0.5f, -1.0f, 3.0f, 2.9f, -INFINITY};
    double sum = 0.0;
    for (int i = 0; i < 5; i++)
        sum += exp((double)a[i] - 3.0);
    assert_float_equal(sampler_top1_prob(a, 5, &arg), (float)(1.0 / sum), 1e-6f);
    assert_int_equal(arg, sampler_argmax(a, 5));
    assert_int_equal(arg, 2);
    /* one entry, huge logits (no overflow: shifted by the max), NULL arg */
    float one[1] = {-50.0f};
    assert_true(sampler_top1_prob(one, 1, NULL) == 1.0f);
    float big[3] = {1000.0f, 0.0f, 990.0f};
    float p = sampler_top1_prob(big, 3, &arg);
    assert_int_equal(arg, 0);
    assert_float_equal(p, (float)(1.0 / (1.0 + exp(-10.0))), 1e-6f);
    /* the same bits as the sum written out (every caller gets the same) */
    float r[7] = {0.1f, 0.7f, -0.3f, 0.69f, 0.2f, 0.0f, 0.65f};
    float mx = r[1], s = 0.0f;
    for (int i = 0; i < 7; i++)
        s += expf(r[i] - mx);
    assert_true(sampler_top1_prob(r, 7, &arg) == 1.0f / s);
    assert_int_equal(arg, 1);
}

/* ------------------------------------------------------------------ greedy */

static void test_greedy(void **state)
{
    (void)state;
    enum { N = 300 };
    float logits[N], probs[N];
    uint64_t rng = 7;
    sampler s = make(0.0f, 0, 1.0f, 1, N);
    sampler s2 = make(0.0f, 5, 0.3f, 2, N);   /* top-k/top-p do not matter */
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < N; i++)
            logits[i] = 10.0f * tmodel_rngf(&rng) - 5.0f;
        if (round % 5 == 0)
            logits[N - 1] = logits[sampler_argmax(logits, N)];   /* a tie */
        int32_t want = sampler_argmax(logits, N);
        assert_int_equal(sampler_sample(&s, logits), want);
        assert_int_equal(sampler_sample(&s2, logits), want);
        sampler_probs(&s, logits, N, probs);
        for (int i = 0; i < N; i++)
            assert_true(probs[i] == (i == want ? 1.0f : 0.0f));
    }
    sampler_free(&s);
    sampler_free(&s2);
}

/* ------------------------------------------------- kept sets vs reference */

typedef struct {
    double p;
    int32_t id;
} ref_entry;

static int ref_cmp(const void *a, const void *b)
{
    const ref_entry *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* Reference kept set: softmax(logits / T) in double, sort by probability
 * (ties by id), keep the first top_k, then cut after the first entry whose
 * cumulative probability reaches top_p. keep[i] = 1 for kept ids; returns
 * the count; *boundary_gap = |cum before the last kept entry - top_p|, the
 * distance of the decision from a tie (for top_p cuts). */
static int ref_keep(const float *logits, int n, float temp, int top_k, float top_p, uint8_t *keep,
                    double *probs, double *boundary_gap)
{
    ref_entry *e = malloc((size_t)n * sizeof *e);
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, logits[i]);
    for (int i = 0; i < n; i++) {
        e[i].p = exp((logits[i] - mx) / temp);
        e[i].id = i;
        sum += e[i].p;
    }
    for (int i = 0; i < n; i++) {
        e[i].p /= sum;
        probs[i] = e[i].p;
    }
    qsort(e, (size_t)n, sizeof *e, ref_cmp);
    int k = top_k > 0 && top_k < n ? top_k : n;
    int kept = 0;
    double cum = 0.0;
    *boundary_gap = INFINITY;
    memset(keep, 0, (size_t)n);
    while (kept < k) {
        double before = cum;
        cum += e[kept].p;
        keep[e[kept].id] = 1;
        kept++;
        if (top_p < 1.0f) {
            *boundary_gap = fmin(fabs(before - top_p), fabs(cum - top_p));
            if (cum >= top_p)
                break;
        }
    }
    free(e);
    return kept;
}

static void test_keep_sets(void **state)
{
    (void)state;
    enum { N = 200 };
    const float temps[] = {0.5f, 1.0f, 1.7f};
    const int ks[] = {0, 1, 2, 5, 50, 199, 200, 500};
    const float ps[] = {1.0f, 0.999f, 0.9f, 0.5f, 0.1f, 1e-4f};
    float logits[N], probs[N];
    double rprobs[N];
    uint8_t keep[N];
    uint64_t rng = 2024;
    int cases = 0, skipped = 0;
    for (int dist = 0; dist < 4; dist++) {
        for (int i = 0; i < N; i++) {
            float u = tmodel_rngf(&rng);
            switch (dist) {
            case 0: logits[i] = 30.0f * u - 15.0f; break;         /* wide: probs < 1e-9 exist */
            case 1: logits[i] = 2.0f * u; break;                  /* flat-ish */
            case 2: logits[i] = 0.01f * u; break;                 /* nearly uniform */
            default: logits[i] = (i < 3 ? 12.0f : 0.0f) + u; break;  /* a few dominant */
            }
        }
        for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++)
            for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
                for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
                    float T = temps[ti], P = ps[pi];
                    int K = ks[ki];
                    sampler s = make(T, K, P, 1, N);
                    sampler_probs(&s, logits, N, probs);
                    double gap;
                    int nk = ref_keep(logits, N, T, K, P, keep, rprobs, &gap);
                    int got = 0, diff = 0;
                    double psum = 0.0, rsum = 0.0;
                    for (int i = 0; i < N; i++) {
                        assert_true(probs[i] >= 0.0f);
                        got += probs[i] > 0.0f;
                        diff += (probs[i] > 0.0f) != (keep[i] != 0);
                        psum += probs[i];
                        rsum += keep[i] ? rprobs[i] : 0.0;
                    }
                    cases++;
                    if (diff) {
                        /* only acceptable when the top-p decision is a
                         * near-tie that float vs double can flip */
                        if (!(gap < 1e-5))
                            fail_msg("dist %d T=%g k=%d p=%g: kept %d ids, reference %d (%d differ, gap %g)",
                                     dist, T, K, P, got, nk, diff, gap);
                        skipped++;
                        sampler_free(&s);
                        continue;
                    }
                    assert_int_equal(got, nk);
                    assert_true(fabs(psum - 1.0) < 1e-4);
                    /* kept probabilities are the renormalized softmax */
                    for (int i = 0; i < N; i++)
                        if (keep[i] && fabs(probs[i] - rprobs[i] / rsum) > 1e-5 + 1e-4 * rprobs[i] / rsum)
                            fail_msg("dist %d T=%g k=%d p=%g: P(%d) = %g, reference %g", dist, T, K, P, i,
                                     probs[i], rprobs[i] / rsum);
                    sampler_free(&s);
                }
    }
    printf("  %d parameter sets compared, %d near-tie boundaries tolerated\n", cases, skipped);
    assert_true(skipped * 20 < cases);
}

/* ------------------------------------------------------ reproducibility */

static void test_seed_reproducible(void **state)
{
    (void)state;
    enum { N = 64, DRAWS = 2000 };
    float logits[N];
    uint64_t rng = 5;
    for (int i = 0; i < N; i++)
        logits[i] = 4.0f * tmodel_rngf(&rng);
    sampler a = make(0.8f, 20, 0.95f, 1234, N), b = make(0.8f, 20, 0.95f, 1234, N);
    sampler c = make(0.8f, 20, 0.95f, 1235, N);
    int same_c = 0;
    for (int i = 0; i < DRAWS; i++) {
        int32_t x = sampler_sample(&a, logits), y = sampler_sample(&b, logits), z = sampler_sample(&c, logits);
        assert_int_equal(x, y);
        assert_true(x >= 0 && x < N);
        same_c += x == z;
    }
    assert_true(same_c < DRAWS);   /* another seed, another sequence */
    /* re-initializing with the same seed restarts the sequence */
    sampler_free(&b);
    b = make(0.8f, 20, 0.95f, 1234, N);
    sampler d = make(0.8f, 20, 0.95f, 1234, N);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sampler_sample(&b, logits), sampler_sample(&d, logits));
    /* uniform draws are in [0, 1) */
    double mean = 0.0;
    for (int i = 0; i < 100000; i++) {
        float u = sampler_uniform(&a);
        assert_true(u >= 0.0f && u < 1.0f);
        mean += u;
    }
    mean /= 100000;
    assert_true(fabs(mean - 0.5) < 0.005);
    sampler_free(&a);
    sampler_free(&b);
    sampler_free(&c);
    sampler_free(&d);
}

/* -------------------------------------------------------------- chi-square */

/* Pearson's statistic of counts against expected probabilities (entries
 * with p = 0 must have no draws at all). */
static double chi2(const int *count, const double *p, int n, int draws, int *df)
{
    double x = 0.0;
    *df = -1;
    for (int i = 0; i < n; i++) {
        if (p[i] <= 0.0) {
            if (count[i] != 0)
                fail_msg("id %d drawn %d times with probability 0", i, count[i]);
            continue;
        }
        double e = p[i] * draws;
        x += (count[i] - e) * (count[i] - e) / e;
        (*df)++;
    }
    return x;
}

static void check_frequencies(float temp, int top_k, float top_p, uint64_t seed, double crit)
{
    enum { N = 12, DRAWS = 40000 };
    float logits[N] = {2.0f, 1.5f, 1.2f, 1.0f, 0.7f, 0.5f, 0.3f, 0.0f, -0.4f, -1.0f, -2.0f, -3.0f};
    double want[N], rp[N];
    uint8_t keep[N];
    double gap;
    ref_keep(logits, N, temp, top_k, top_p, keep, rp, &gap);
    double ksum = 0.0;
    for (int i = 0; i < N; i++)
        ksum += keep[i] ? rp[i] : 0.0;
    for (int i = 0; i < N; i++)
        want[i] = keep[i] ? rp[i] / ksum : 0.0;
    sampler s = make(temp, top_k, top_p, seed, N);
    int count[N] = {0};
    for (int i = 0; i < DRAWS; i++) {
        int32_t t = sampler_sample(&s, logits);
        assert_true(t >= 0 && t < N);
        count[t]++;
    }
    int df;
    double x = chi2(count, want, N, DRAWS, &df);
    /* Upper 0.1% points of chi-square: df 2: 13.82, 4: 18.47, 11: 31.26;
     * crit is chosen per call from those. */
    printf("  T=%g k=%d p=%g: chi-square %.2f with %d degrees of freedom\n", temp, top_k, top_p, x, df);
    if (!(x < crit))
        fail_msg("chi-square %.2f >= %.2f (df %d)", x, crit, df);
    sampler_free(&s);
}

static void test_frequencies(void **state)
{
    (void)state;
    check_frequencies(1.0f, 0, 1.0f, 11, 31.26);     /* df 11 */
    check_frequencies(0.7f, 0, 1.0f, 12, 31.26);     /* df 11 */
    check_frequencies(1.3f, 3, 1.0f, 13, 13.82);     /* df 2 */
    check_frequencies(1.0f, 0, 0.8f, 14, 31.26);     /* df <= 11 */
    check_frequencies(1.0f, 5, 0.9f, 15, 18.47);     /* df <= 4 */
}

/* ----------------------------------------------------- invalid parameters */

/* sampler_logprobs: the log-softmax of the raw row (in double, checked here
 * independently), the top N largest first with ties to the smaller id. */
static void test_logprobs(void **state)
{
    (void)state;
    enum { N = 300 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)((i * 37) % 101) * 0.05f - 2.0f;   /* many ties */
    double mx = -1e30, sum = 0;
    for (int i = 0; i < N; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < N; i++)
        sum += exp(x[i] - mx);
    sampler_logprob lp;
    sampler_logprobs(x, N, 7, 20, &lp);
    assert_int_equal(lp.token, 7);
    assert_true(fabs(lp.logprob - (x[7] - mx - log(sum))) < 1e-5);
    assert_int_equal(lp.n_top, 20);
    for (int k = 0; k < 20; k++) {
        assert_true(fabs(lp.top_lps[k] - (x[lp.top_ids[k]] - mx - log(sum))) < 1e-5);
        if (k > 0) {
            float a = x[lp.top_ids[k - 1]], b = x[lp.top_ids[k]];
            assert_true(a > b || (a == b && lp.top_ids[k - 1] < lp.top_ids[k]));
        }
    }
    /* nothing outside the top is larger than its last, or equal with a smaller id */
    float last = x[lp.top_ids[19]];
    for (int i = 0; i < N; i++) {
        int in = 0;
        for (int k = 0; k < 20; k++)
            in |= lp.top_ids[k] == i;
        assert_true(in || x[i] < last || (x[i] == last && i > lp.top_ids[19]));
    }
    sampler_logprobs(x, N, 0, 0, &lp);
    assert_int_equal(lp.n_top, 0);
    sampler_logprobs(x, 5, 4, 20, &lp);   /* more asked than the row has */
    assert_int_equal(lp.n_top, 5);
}

static void test_invalid_params(void **state)
{
    (void)state;
    struct {
        float t;
        int32_t k;
        float p;
        const char *needle;
    } bad[] = {
        {-0.1f, 0, 1.0f, "temperature"}, {NAN, 0, 1.0f, "temperature"}, {1000.0f, 0, 1.0f, "temperature"},
        {INFINITY, 0, 1.0f, "temperature"}, {1.0f, -1, 1.0f, "top-k"}, {1.0f, 0, 0.0f, "top-p"},
        {1.0f, 0, -0.5f, "top-p"}, {1.0f, 0, 1.01f, "top-p"}, {1.0f, 0, NAN, "top-p"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "";
        sampler_params p = {.temperature = bad[i].t, .top_k = bad[i].k, .top_p = bad[i].p, .seed = 1};
        assert_int_equal(sampler_params_check(&p, err, sizeof err), -1);
        if (!strstr(err, bad[i].needle))
            fail_msg("case %zu: error '%s' does not mention '%s'", i, err, bad[i].needle);
        sampler s;
        err[0] = 0;
        assert_int_equal(sampler_init(&s, &p, 10, err, sizeof err), -1);
        assert_true(strlen(err) > 0);
    }
    sampler_params ok[] = {
        {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f}, {.temperature = 100.0f, .top_k = 1, .top_p = 1e-6f},
        {.temperature = 0.5f, .top_k = 1000000, .top_p = 0.5f},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char err[256] = "";
        assert_int_equal(sampler_params_check(&ok[i], err, sizeof err), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_top1_prob),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_keep_sets),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_logprobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
