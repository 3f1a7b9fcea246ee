/*
 * test_attn.c - the attention kernel (kernels/attn.c): close to a
 * double-precision softmax attention, and bit-identical however its keys are
 * split into runs, however many heads one call takes and however many
 * tokens share a call with their own key ranges (what makes a token's
 * attention independent of its batch, its verification block and the
 * cache's layout).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attn.h"

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* keys/values of n positions, row stride `stride` halves, head at offset off */
typedef struct {
    f16_t *k, *v;
    int32_t n, stride, off;
} kvbuf;

static void kv_fill(kvbuf *b, int32_t n, int32_t stride, int32_t off, int32_t hd, unsigned seed, float kscale)
{
    b->n = n, b->stride = stride, b->off = off;
    b->k = calloc((size_t)n * stride, sizeof(f16_t));
    b->v = calloc((size_t)n * stride, sizeof(f16_t));
    for (int32_t i = 0; i < n; i++)
        for (int32_t d = 0; d < hd; d++) {
            b->k[(size_t)i * stride + off + d] = f16_from_f32(kscale * frand(&seed));
            b->v[(size_t)i * stride + off + d] = f16_from_f32(frand(&seed));
        }
}

/* runs of the given lengths (cycled) over the buffer */
static int32_t make_runs(const kvbuf *b, const int32_t *lens, int32_t n_lens, attn_run *runs)
{
    int32_t nr = 0;
    for (int32_t p = 0, j = 0; p < b->n; j++) {
        int32_t len = lens[j % n_lens];
        if (len > b->n - p)
            len = b->n - p;
        runs[nr++] = (attn_run){b->k + (size_t)p * b->stride + b->off, b->v + (size_t)p * b->stride + b->off, len,
                                b->stride};
        p += len;
    }
    return nr;
}

static void test_exp(void **state)
{
    (void)state;
    double worst = 0;
    for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
        double rel = fabs(attn_exp(x) - exp((double)x)) / exp((double)x);
        worst = rel > worst ? rel : worst;
    }
    assert_true(worst < 1e-6);
    assert_true(attn_exp(0.0f) == 1.0f);
    assert_true(attn_exp(-1000.0f) < 1e-37f);   /* clamped, not garbage */
    assert_true(attn_exp(5.0f) == 1.0f);        /* arguments are <= 0 */
}

static void test_attention(void **state)
{
    (void)state;
    const int32_t hds[] = {16, 64, 80, 128};
    const int32_t ns[] = {1, 3, 4, 5, 17, 64, 203};
    for (size_t a = 0; a < sizeof hds / sizeof hds[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
            int32_t hd = hds[a], n = ns[b], nh = 3, stride = 3 * hd + 16, off = hd;
            kvbuf kv;
            kv_fill(&kv, n, stride, off, hd, 7u + (unsigned)(a * 31 + b), 4.0f);
            float *q = malloc((size_t)nh * hd * sizeof(float));
            unsigned s = 99u + (unsigned)b;
            for (int32_t i = 0; i < nh * hd; i++)
                q[i] = frand(&s);
            float scale = 1.0f / sqrtf((float)hd);
            attn_run runs[512];
            float *scores = malloc((size_t)nh * n * sizeof(float));
            const f16_t **rows = malloc((size_t)2 * n * sizeof(*rows));
            float *out = malloc((size_t)nh * hd * sizeof(float));
            float *alt = malloc((size_t)nh * hd * sizeof(float));
            /* one run of everything, all heads in one call */
            int32_t whole[] = {n};
            int32_t nr = make_runs(&kv, whole, 1, runs);
            attn_heads(q, nh, hd, runs, nr, n, scale, scores, rows, out);
            /* against double precision */
            for (int32_t h = 0; h < nh; h++) {
                double *w = malloc((size_t)n * sizeof(double)), mx = -1e300, sum = 0;
                for (int32_t i = 0; i < n; i++) {
                    double d = 0;
                    for (int32_t j = 0; j < hd; j++)
                        d += (double)q[h * hd + j] * f16_to_f32(kv.k[(size_t)i * stride + off + j]);
                    w[i] = d * scale;
                    mx = w[i] > mx ? w[i] : mx;
                }
                for (int32_t i = 0; i < n; i++)
                    sum += (w[i] = exp(w[i] - mx));
                for (int32_t j = 0; j < hd; j++) {
                    double o = 0;
                    for (int32_t i = 0; i < n; i++)
                        o += w[i] / sum * f16_to_f32(kv.v[(size_t)i * stride + off + j]);
                    assert_true(fabs(o - out[h * hd + j]) < 2e-5);
                }
                free(w);
            }
            /* other run splits (pool blocks of 16, odd pieces), heads one at a time: same bits */
            int32_t blocks[] = {16}, odd[] = {1, 5, 2, 16, 3};
            int32_t *splits[] = {blocks, odd};
            int32_t n_splits[] = {1, 5};
            for (int v = 0; v < 2; v++) {
                nr = make_runs(&kv, splits[v], n_splits[v], runs);
                for (int32_t h = 0; h < nh; h++)
                    attn_heads(q + h * hd, 1, hd, runs, nr, n, scale, scores, rows, alt + h * hd);
                assert_memory_equal(out, alt, (size_t)nh * hd * sizeof(float));
            }
            /* the same rows copied into blocks of 16 that keep one head's rows
             * together (the pool's layout, stride hd): same bits */
            f16_t *pk = calloc((size_t)n * hd, sizeof(f16_t)), *pv = calloc((size_t)n * hd, sizeof(f16_t));
            for (int32_t i = 0; i < n; i++) {
                memcpy(pk + (size_t)i * hd, kv.k + (size_t)i * stride + off, (size_t)hd * sizeof(f16_t));
                memcpy(pv + (size_t)i * hd, kv.v + (size_t)i * stride + off, (size_t)hd * sizeof(f16_t));
            }
            nr = 0;
            for (int32_t p = 0; p < n; p += 16)
                runs[nr++] = (attn_run){pk + (size_t)p * hd, pv + (size_t)p * hd, n - p < 16 ? n - p : 16, hd};
            attn_heads(q, nh, hd, runs, nr, n, scale, scores, rows, alt);
            assert_memory_equal(out, alt, (size_t)nh * hd * sizeof(float));
            free(pk), free(pv);
            free(q), free(scores), free(rows), free(out), free(alt), free(kv.k), free(kv.v);
        }
}

/* attn_block: nt tokens times nh heads with their own key ranges (causal
 * prefixes, windows, disjoint ranges) against each query alone through
 * attn_heads over its own keys: same bits. */
static void test_block(void **state)
{
    (void)state;
    const int32_t hds[] = {16, 64, 80, 128, 256}, nhs[] = {1, 3, 6};
    unsigned seed = 5u;
    for (size_t a = 0; a < sizeof hds / sizeof hds[0]; a++)
        for (size_t b = 0; b < sizeof nhs / sizeof nhs[0]; b++)
            for (int32_t nt = 1; nt <= 5; nt++)
                for (int shape = 0; shape < 4; shape++) {
                    int32_t hd = hds[a], nh = nhs[b], n0 = 1 + (int32_t)(seed % 70), n = n0 + nt;
                    int32_t stride = nh * hd + 8, lo[5], hi[5];
                    for (int32_t i = 0; i < nt; i++) {
                        hi[i] = n0 + i + 1;   /* causal: token i sees its prefix and itself */
                        lo[i] = 0;
                        if (shape == 1)   /* a window of 7 keys */
                            lo[i] = hi[i] > 7 ? hi[i] - 7 : 0;
                        if (shape == 2)   /* ranges that may share nothing */
                            lo[i] = hi[i] - 1 - (int32_t)((seed >> (4 * i)) % 3);
                        if (shape == 3 && i % 2)   /* every other token sees only itself */
                            lo[i] = hi[i] - 1;
                        lo[i] = lo[i] < 0 ? 0 : lo[i];
                    }
                    kvbuf kv;
                    kv_fill(&kv, n, stride, 4, hd, seed, 3.0f);
                    int32_t q_stride = nh * hd + 16, out_stride = nh * hd + 32;
                    float *q = malloc((size_t)nt * q_stride * sizeof(float));
                    float *out = calloc((size_t)nt * out_stride, sizeof(float));
                    float *alt = malloc((size_t)hd * sizeof(float));
                    for (int32_t i = 0; i < nt * q_stride; i++)
                        q[i] = frand(&seed);
                    float *scores = malloc((size_t)nt * nh * n * sizeof(float));
                    const f16_t **rows = malloc((size_t)2 * n * sizeof(*rows));
                    attn_run runs[512];
                    int32_t odd[] = {3, 16, 1, 5};
                    int32_t nr = make_runs(&kv, odd, 4, runs);
                    attn_queries qs = {.q = q, .out = out, .q_stride = q_stride, .out_stride = out_stride,
                                       .nt = nt, .nh = nh, .lo = lo, .hi = hi};
                    float scale = 1.0f / sqrtf((float)hd);
                    attn_block(&qs, hd, runs, nr, n, scale, scores, rows);
                    for (int32_t i = 0; i < nt; i++)
                        for (int32_t h = 0; h < nh; h++) {
                            attn_run own = {kv.k + (size_t)lo[i] * stride + 4, kv.v + (size_t)lo[i] * stride + 4,
                                            hi[i] - lo[i], stride};
                            attn_heads(q + (size_t)i * q_stride + (size_t)h * hd, 1, hd, &own, 1, hi[i] - lo[i],
                                       scale, scores, rows, alt);
                            assert_memory_equal(out + (size_t)i * out_stride + (size_t)h * hd, alt,
                                                (size_t)hd * sizeof(float));
                        }
                    seed = seed * 1103515245u + 12345u;
                    free(q), free(out), free(alt), free(scores), free(rows), free(kv.k), free(kv.v);
                }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
