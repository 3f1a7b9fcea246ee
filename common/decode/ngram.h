/*
 * ngram.h - drafts from a sequence's own context (prompt lookup): when the
 * last n tokens of the history (prompt + every final token so far) occurred
 * earlier in it, propose the tokens that followed the most recent earlier
 * occurrence. No weights, no forward pass: a few hash probes per step.
 *
 * The index holds, for every n in [1, n_max], each n-gram of the history
 * that has a successor (ends before the last token), mapped to the end of
 * its most recent occurrence. It is updated incrementally as tokens become
 * final (ngram_push: n_max inserts, O(1) each), so a lookup costs n_max
 * probes instead of a rescan of the whole history (O(len · n) per step,
 * which for a 4k-token prompt and a 12-token draft budget would dominate a
 * small model's draft cost). Tokens are only ever appended -- only final
 * (verified) tokens enter the history -- so nothing is ever removed.
 *
 * Overlapping matches: the continuation is copied LZ77-style, so when the
 * match runs into the end of the history the copy continues with the tokens
 * it has just proposed; a period-p repeat ("a b a b a b") keeps proposing
 * the period for the whole draft length.
 *
 * One index per sequence; no shared state. Not thread-safe.
 */
#ifndef SELFSPEC_NGRAM_H
#define SELFSPEC_NGRAM_H

#include <stddef.h>
#include <stdint.h>

#define NGRAM_MAX_N 8

typedef struct {
    int32_t n_max, n_min;      /* longest / shortest suffix tried, longest first */
    int32_t *toks;             /* (cap) the history */
    int32_t len, cap;
    int32_t *slot_end;         /* (n_slots) end position of the n-gram, -1 empty */
    uint8_t *slot_n;           /* (n_slots) its length */
    int32_t n_slots, n_used;   /* n_slots a power of two, n_used <= n_slots / 2 */
    int32_t *prev;             /* (cap, n_max - n_min + 1) for the n-gram of length n
                                  ending at e: the end of its previous occurrence, -1 */
} ngram_index;

/* Check n_min <= n_max, both in [1, NGRAM_MAX_N]. Returns 0 or -1 with err. */
int ngram_params_check(int32_t n_min, int32_t n_max, char *err, size_t errlen);

/* An empty index (parameters must pass ngram_params_check). */
void ngram_init(ngram_index *ix, int32_t n_min, int32_t n_max);
void ngram_free(ngram_index *ix);

/* Append one token / n tokens to the history and index the n-grams that
 * now have a successor. */
void ngram_push(ngram_index *ix, int32_t tok);
void ngram_push_many(ngram_index *ix, const int32_t *toks, int32_t n);

/* Append a boundary token (a value no token id takes, e.g. -1): the
 * n-grams ending just before it get no successor, so no draft runs into
 * it, and no query of token ids matches an n-gram containing it. */
void ngram_push_boundary(ngram_index *ix, int32_t tok);

/*
 * The context draft after the current history: for n = n_max down to
 * n_min, if the last n tokens occurred earlier (ending before the last
 * token), write the k_max tokens that followed the most recent such
 * occurrence into out (copied on past the history's end) and return k_max;
 * *match_n (may be NULL) receives n and *n_hist (may be NULL) how many of
 * them were read from the history itself (min(k_max, tokens after the
 * occurrence)), the rest repeating the proposal. Returns 0 (no match, or
 * k_max <= 0).
 */
int32_t ngram_draft(const ngram_index *ix, int32_t k_max, int32_t *out, int32_t *match_n, int32_t *n_hist);

/* The end position of the most recent occurrence (with a successor) of the
 * n tokens s[0..n) in the history, or -1 (n in [n_min, n_max]). */
int32_t ngram_find(const ngram_index *ix, const int32_t *s, int32_t n);

/* The end positions of the most recent occurrences (with a successor) of
 * s[0..n), newest first, at most max of them, into ends. Returns how many. */
int32_t ngram_occurrences(const ngram_index *ix, const int32_t *s, int32_t n, int32_t max, int32_t *ends);

#endif
