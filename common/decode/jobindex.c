/*
 * jobindex.c - drafts from the whole job's finished requests (jobindex.h).
 */
#include "decode/jobindex.h"

#include <assert.h>
#include <string.h>

#include "util/util.h"

void jobindex_init(job_index *j, int32_t n_min, int32_t n_max, int32_t cap)
{
    assert(cap >= 64);
    memset(j, 0, sizeof *j);
    ngram_init(&j->ix, n_min, n_max);
    j->cap = cap;
}

void jobindex_free(job_index *j)
{
    ngram_free(&j->ix);
    memset(j, 0, sizeof *j);
}

int32_t jobindex_tokens(const job_index *j)
{
    return j->ix.len;
}

/* Keep the newest whole requests that fit `keep` tokens: a fresh index over
 * them (the old one's positions all change). */
static void rebuild(job_index *j, int32_t keep)
{
    const ngram_index *old = &j->ix;
    int32_t start = old->len;
    /* walk back over whole documents (each ends with a separator) */
    for (int32_t p = old->len - 1; p >= 0; p--)
        if (old->toks[p] == JOBINDEX_SEP && old->len - (p + 1) <= keep)
            start = p + 1;
        else if (old->len - (p + 1) > keep)
            break;
    int64_t dropped = 0;
    for (int32_t p = 0; p < start; p++)
        dropped += old->toks[p] == JOBINDEX_SEP;
    ngram_index fresh;
    ngram_init(&fresh, old->n_min, old->n_max);
    for (int32_t p = start; p < old->len; p++)
        if (old->toks[p] == JOBINDEX_SEP)
            ngram_push_boundary(&fresh, JOBINDEX_SEP);
        else
            ngram_push(&fresh, old->toks[p]);
    ngram_free(&j->ix);
    j->ix = fresh;
    j->evicted_docs += dropped;
}

void jobindex_add(job_index *j, const int32_t *toks, int32_t n)
{
    int32_t half = j->cap / 2;
    if (n <= 0)
        return;
    if (n + 1 > half) {   /* a request longer than half the bound: its last part */
        toks += n - (half - 1);
        n = half - 1;
    }
    if (j->ix.len + n + 1 > j->cap)
        rebuild(j, half - (n + 1));
    ngram_push_many(&j->ix, toks, n);
    ngram_push_boundary(&j->ix, JOBINDEX_SEP);
    j->docs++;
    assert(j->ix.len <= j->cap);
}

int32_t jobindex_draft(const job_index *j, const int32_t *hist, int32_t len, int32_t k_max, int32_t *out,
                       int32_t *match_n)
{
    const ngram_index *ix = &j->ix;
    if (k_max <= 0 || ix->len == 0)
        return 0;
    for (int32_t n = ix->n_max; n >= ix->n_min; n--) {
        if (n > len)
            continue;
        int32_t e = ngram_find(ix, hist + len - n, n);
        if (e < 0)
            continue;
        int32_t k = 0;
        while (k < k_max && e + 1 + k < ix->len && ix->toks[e + 1 + k] != JOBINDEX_SEP) {
            out[k] = ix->toks[e + 1 + k];
            k++;
        }
        assert(k > 0);   /* an indexed n-gram has a successor in its own request */
        if (match_n)
            *match_n = n;
        return k;
    }
    return 0;
}
