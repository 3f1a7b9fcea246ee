/*
 * ngram.c - drafts from a sequence's own context (see ngram.h): an open-
 * addressing hash table from (n, the n tokens) to the end position of the
 * n-gram's most recent occurrence with a successor.
 *
 * Why a hash updated incrementally rather than a rescan: a rescan for the
 * longest suffix match is O(len · n_max) per decode step; the index costs
 * n_max inserts per final token and n_max probes per lookup, whatever the
 * history's length. Keys are not stored: a slot keeps the end position and
 * n, and a probe compares the tokens themselves in the history, so a hash
 * collision can never produce a wrong match.
 */
#include "decode/ngram.h"

#include <stdlib.h>
#include <string.h>

#include "util/util.h"

int ngram_params_check(int32_t n_min, int32_t n_max, char *err, size_t errlen)
{
    if (n_min < 1 || n_max > NGRAM_MAX_N || n_min > n_max)
        return util_err(err, errlen, "context-draft n-gram lengths must satisfy 1 <= min <= max <= %d, got %d..%d",
                        NGRAM_MAX_N, n_min, n_max);
    return 0;
}

void ngram_init(ngram_index *ix, int32_t n_min, int32_t n_max)
{
    memset(ix, 0, sizeof *ix);
    ix->n_min = n_min;
    ix->n_max = n_max;
    ix->n_slots = 64;
    ix->slot_end = mallocCheck((size_t)ix->n_slots * sizeof(int32_t));
    ix->slot_n = mallocCheck((size_t)ix->n_slots);
    for (int32_t i = 0; i < ix->n_slots; i++)
        ix->slot_end[i] = -1;
}

void ngram_free(ngram_index *ix)
{
    free(ix->toks);
    free(ix->slot_end);
    free(ix->slot_n);
    free(ix->prev);
    memset(ix, 0, sizeof *ix);
}

/* Hash of the n tokens ending at s[n - 1]. */
static uint32_t gram_hash(const int32_t *s, int32_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)s[i];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    return (uint32_t)(h ^ (h >> 32));
}

/* The slot holding the n-gram equal to s[0..n), or the empty slot where it
 * belongs. */
static int32_t find_slot(const ngram_index *ix, const int32_t *s, int32_t n)
{
    uint32_t mask = (uint32_t)ix->n_slots - 1, i = gram_hash(s, n) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t e = ix->slot_end[i];
        if (e < 0)
            return (int32_t)i;
        if (ix->slot_n[i] == n && !memcmp(ix->toks + e - n + 1, s, (size_t)n * sizeof(int32_t)))
            return (int32_t)i;
    }
}

static void grow_table(ngram_index *ix)
{
    int32_t old_n = ix->n_slots, *old_end = ix->slot_end;
    uint8_t *old_len = ix->slot_n;
    ix->n_slots = old_n * 2;
    ix->slot_end = mallocCheck((size_t)ix->n_slots * sizeof(int32_t));
    ix->slot_n = mallocCheck((size_t)ix->n_slots);
    for (int32_t i = 0; i < ix->n_slots; i++)
        ix->slot_end[i] = -1;
    for (int32_t i = 0; i < old_n; i++) {
        int32_t e = old_end[i];
        if (e < 0)
            continue;
        int32_t n = old_len[i], j = find_slot(ix, ix->toks + e - n + 1, n);
        ix->slot_end[j] = e;
        ix->slot_n[j] = (uint8_t)n;
    }
    free(old_end);
    free(old_len);
}

/* Index every n-gram (n_min..n_max) ending at position e: it is the most
 * recent occurrence, so it replaces an older one. */
static void index_end(ngram_index *ix, int32_t e)
{
    for (int32_t n = ix->n_min; n <= ix->n_max && n <= e + 1; n++) {
        if (2 * (ix->n_used + 1) > ix->n_slots)
            grow_table(ix);
        int32_t j = find_slot(ix, ix->toks + e - n + 1, n);
        if (ix->slot_end[j] < 0)
            ix->n_used++;
        ix->prev[(size_t)e * (ix->n_max - ix->n_min + 1) + (n - ix->n_min)] = ix->slot_end[j];
        ix->slot_end[j] = e;
        ix->slot_n[j] = (uint8_t)n;
    }
}

/* Append tok to the history (growing it). */
static void append(ngram_index *ix, int32_t tok)
{
    if (ix->len == ix->cap) {
        ix->cap = ix->cap ? 2 * ix->cap : 256;
        size_t w = (size_t)(ix->n_max - ix->n_min + 1);
        int32_t *nt = mallocCheck((size_t)ix->cap * sizeof(int32_t));
        int32_t *np = mallocCheck((size_t)ix->cap * w * sizeof(int32_t));
        if (ix->len) {
            memcpy(nt, ix->toks, (size_t)ix->len * sizeof(int32_t));
            memcpy(np, ix->prev, (size_t)ix->len * w * sizeof(int32_t));
        }
        free(ix->toks);
        free(ix->prev);
        ix->toks = nt;
        ix->prev = np;
    }
    ix->toks[ix->len++] = tok;
}

void ngram_push(ngram_index *ix, int32_t tok)
{
    append(ix, tok);
    if (ix->len >= 2)   /* the n-grams ending at the previous token now have a successor */
        index_end(ix, ix->len - 2);
}

void ngram_push_boundary(ngram_index *ix, int32_t tok)
{
    append(ix, tok);
}

void ngram_push_many(ngram_index *ix, const int32_t *toks, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        ngram_push(ix, toks[i]);
}

int32_t ngram_draft(const ngram_index *ix, int32_t k_max, int32_t *out, int32_t *match_n, int32_t *n_hist)
{
    if (k_max <= 0)
        return 0;
    for (int32_t n = ix->n_max; n >= ix->n_min; n--) {
        if (n > ix->len - 1)
            continue;   /* an earlier occurrence needs n tokens before the last */
        int32_t j = find_slot(ix, ix->toks + ix->len - n, n);
        int32_t e = ix->slot_end[j];
        if (e < 0)
            continue;
        /* copy what followed; past the history's end the copy reads the
         * tokens it has just written (e + 1 <= len - 1, so src < i there) */
        for (int32_t i = 0; i < k_max; i++) {
            int32_t src = e + 1 + i;
            out[i] = src < ix->len ? ix->toks[src] : out[src - ix->len];
        }
        if (match_n)
            *match_n = n;
        if (n_hist)
            *n_hist = ix->len - 1 - e < k_max ? ix->len - 1 - e : k_max;
        return k_max;
    }
    return 0;
}

int32_t ngram_find(const ngram_index *ix, const int32_t *s, int32_t n)
{
    if (n < ix->n_min || n > ix->n_max)
        return -1;
    return ix->slot_end[find_slot(ix, s, n)];
}

int32_t ngram_occurrences(const ngram_index *ix, const int32_t *s, int32_t n, int32_t max, int32_t *ends)
{
    int32_t k = 0;
    for (int32_t e = ngram_find(ix, s, n); e >= 0 && k < max;
         e = ix->prev[(size_t)e * (ix->n_max - ix->n_min + 1) + (n - ix->n_min)])
        ends[k++] = e;
    return k;
}
