/*
 * jobindex.h - drafts from the whole job: an index over the prompts and
 * outputs of the requests this engine has finished, so that a request can
 * draft what earlier requests wrote (the keys of a JSON extraction job, the
 * boilerplate of code edits, the labels of a classification job), not only
 * what its own history holds (decode/ngram.h).
 *
 * The corpus is the finished requests' token streams one after another,
 * each followed by a separator (JOBINDEX_SEP, never a token id), indexed by
 * the n-gram index of ngram.h: for every n in [n_min, n_max] each n-gram
 * with a successor maps to the end of its most recent occurrence, and a
 * probe compares the tokens themselves, so a hash collision cannot fake a
 * match. A draft is what followed the longest suffix of the sequence's
 * history found in the corpus, up to the end of that request's text (a
 * draft never crosses into another request).
 *
 * Bounded memory: the corpus holds at most cap tokens. When a new request
 * would not fit, the index is rebuilt from the newest requests that fill
 * half of it (older ones are dropped whole; a request longer than half the
 * bound keeps its last half-bound tokens). Amortized, each token is indexed
 * a constant number of times.
 *
 * Exactness: drafts only propose; the full model verifies every token, so
 * greedy output never depends on what the index holds. Under sampling a
 * request's draws would depend on it, so the engine gives sampled requests
 * drafts from their own history only (engine/engine_plan.c).
 *
 * One index per engine, touched only by the thread that drives the engine.
 */
#ifndef SELFSPEC_JOBINDEX_H
#define SELFSPEC_JOBINDEX_H

#include <stddef.h>
#include <stdint.h>

#include "decode/ngram.h"

#define JOBINDEX_SEP (-1)

typedef struct {
    ngram_index ix;            /* over the corpus (documents separated by JOBINDEX_SEP) */
    int32_t cap;               /* corpus tokens at most (separators included) */
    int64_t docs, evicted_docs;/* requests added; of them dropped by the bound */
} job_index;

/* An empty index of at most cap tokens (cap >= 64; n_min, n_max as
 * ngram_params_check accepts). */
void jobindex_init(job_index *j, int32_t n_min, int32_t n_max, int32_t cap);
void jobindex_free(job_index *j);

/* Add one finished request's tokens (prompt, then output). */
void jobindex_add(job_index *j, const int32_t *toks, int32_t n);

/* The draft after hist[0..len): for n = n_max down to n_min, the tokens
 * that followed the most recent occurrence in the corpus of hist's last n
 * tokens, up to k_max or the end of that request's text, into out. Returns
 * how many (0: no match); *match_n (may be NULL) receives n. */
int32_t jobindex_draft(const job_index *j, const int32_t *hist, int32_t len, int32_t k_max, int32_t *out,
                       int32_t *match_n);

/* Corpus tokens held now (separators included). */
int32_t jobindex_tokens(const job_index *j);

#endif
