/*
 * grammar.h - constrained decoding over a model's vocabulary: the byte
 * matcher of decode/jschema.h lifted to tokens.
 *
 * A gram_vocab is built once per tokenizer: every token's bytes (its
 * detokenized piece: byte-level BPE mapping undone, SentencePiece's
 * U+2581 as a space, <0xNN> as the byte) in a trie laid out in preorder,
 * so that one linear scan with subtree skips walks every token a state
 * allows (gram_mask); inside a string's text the tokens of whole plain
 * characters are decided by their code points and only the rest are
 * walked (their own trie). Special tokens (control, user-defined, unknown) are
 * never allowed; end-of-generation tokens are allowed exactly where the
 * document is complete, and there they are the only tokens allowed.
 *
 * A request's constraint is a `gram` (the vocabulary and its compiled
 * schema, both read-only and shared); each sequence keeps its js_state.
 * The engine applies it to the full model's rows only (engine/engine.c):
 *   greedy    the constrained argmax (gram_best): the raw argmax when it is
 *             allowed -- the usual case, one token's bytes walked -- else
 *             the best allowed among the top candidates, else a full mask;
 *   sampling  the row masked (gram_mask) before the sampler warps it;
 * and per position of a verification block, with the state after the
 * block's earlier tokens, so speculative output is the constrained plain
 * output. Drafts are trimmed at their first disallowed token
 * (gram_valid_prefix); where the schema leaves one text, gram_forced
 * turns it into tokens that are proposed as a draft for free.
 *
 * Nothing here is global; a gram_scratch is one thread's.
 */
#ifndef SELFSPEC_GRAMMAR_H
#define SELFSPEC_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "decode/jschema.h"
#include "text/tokenizer.h"

typedef struct gram_vocab gram_vocab;

/* Build the vocabulary trie of tok (which must outlive it). Returns 0 or
 * -1 with err. */
int gram_vocab_build(gram_vocab **out, const tokenizer *tok, char *err, size_t errlen);
void gram_vocab_free(gram_vocab *gv);
int32_t gram_vocab_size(const gram_vocab *gv);

/* A request's constraint. */
typedef struct {
    const gram_vocab *gv;
    const jschema *js;
} gram;

/* What a full walk of the trie needs: a state per trie depth and a
 * per-token flag (one per thread; gram_scratch_new sizes it for gv). */
typedef struct gram_scratch gram_scratch;
gram_scratch *gram_scratch_new(const gram_vocab *gv);
/* 1 when sc was made for a vocabulary of gv's shape. */
int gram_scratch_fits(const gram_scratch *sc, const gram_vocab *gv);
void gram_scratch_free(gram_scratch *sc);

/* Is token tok allowed in state st? */
int gram_allows(const gram *g, const js_state *st, int32_t tok);

/* Advance st by token tok (its bytes; an end-of-generation token leaves a
 * complete document as it is). Returns 1, or 0 when tok was not allowed
 * (st then dead). */
int gram_advance(const gram *g, js_state *st, int32_t tok);

/* The constrained argmax of a full-model row of V logits: the largest
 * logit among allowed tokens, the lowest id on ties (sampler_argmax's
 * rule). hint: the row's raw argmax when the caller has it, else -1.
 * When no token is allowed (never for a state reached by allowed tokens of
 * a vocabulary with every byte) an end-of-generation token, or -1 when the
 * vocabulary has none. */
int32_t gram_best(const gram *g, const js_state *st, const float *row, int32_t V, int32_t hint, gram_scratch *sc);

/* Set every disallowed token's logit of row (V) to -INFINITY. Returns how
 * many tokens are allowed. */
int32_t gram_mask(const gram *g, const js_state *st, float *row, int32_t V, gram_scratch *sc);

/* How many of toks[0..n), taken in order from st, are allowed. */
int32_t gram_valid_prefix(const gram *g, const js_state *st, const int32_t *toks, int32_t n);

/* The forced continuation from st as tokens (the forced text tokenized by
 * the model's tokenizer; its allowed prefix), at most max. Returns the
 * count (0: no forced text). */
int32_t gram_forced(const gram *g, const js_state *st, int32_t *out, int32_t max);

/* 1 when the document is complete and nothing but end of generation may follow. */
int gram_done(const gram *g, const js_state *st);

#endif
