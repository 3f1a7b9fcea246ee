/*
 * dtree.h - draft trees: the continuations of every earlier occurrence of a
 * sequence's last tokens (in its own history or in the job's index), merged
 * into one trie whose nodes count how many occurrences went that way, and
 * the choice of which nodes to verify in one pass.
 *
 * Why a tree: where the text matched in several places that went on
 * differently (the keys of a JSON object after `",\n  "`, the labels of a
 * classification job), a single draft is a single guess. The full model
 * verifies a small tree of candidates in one forward pass (fwd_seq.parent,
 * model.h) and keeps the longest path it agrees with (SpecInfer, Medusa,
 * SuffixDecoding do the same).
 *
 * The estimate: a node at depth d that c of the root's n occurrences
 * reached is accepted with probability about alpha^d * c / n, alpha the
 * sequence's measured per-token acceptance of context drafts: with one
 * occurrence (n = c = 1) that is the chain model spec_choose uses, and
 * where occurrences disagree the frequencies split it (SuffixDecoding's
 * frequency-weighted support). The choice takes nodes in order of their
 * estimate (a child never beats its parent, so the set is a tree) and keeps
 * the count m with the most expected tokens per unit of measured cost,
 * 1 + sum of the estimates over cost(base + extra[m]), as spec_choose does
 * for chains: the tree's size follows its support and the cost model, not
 * a fixed maximum.
 *
 * Block layout (spec_block): nodes in depth-first order, the most supported
 * child first, so the main path is tokens[0..depth) and a block whose
 * accepted path is the main one needs no KV move. parent[i] is the block
 * row of node i's parent (0: the sequence's current token, row i + 1 for
 * node i).
 *
 * Greedy only: the full model's argmax decides each step of the walk
 * (spec_accept_tree), so output is plain decoding's whatever the tree.
 */
#ifndef SELFSPEC_DTREE_H
#define SELFSPEC_DTREE_H

#include <stdint.h>

#include "decode/ngram.h"
#include "decode/spec.h"

#define DTREE_NODES 64    /* trie nodes kept (the root excluded) */
#define DTREE_OCC 32      /* occurrences merged at most, the most recent first */
#define DTREE_DEPTH 16    /* tokens of each continuation at most */

typedef struct {
    int32_t n;                       /* nodes */
    int32_t n_occ;                   /* occurrences merged (the root's count) */
    int32_t tok[DTREE_NODES];
    int32_t parent[DTREE_NODES];     /* -1: the root */
    int32_t count[DTREE_NODES];      /* occurrences through this node */
    int32_t depth[DTREE_NODES];      /* 1 for the root's children */
} dtree;

void dtree_reset(dtree *t);

/* Merge one continuation toks[0..n) (n >= 1) into t: one more occurrence.
 * Nodes past DTREE_NODES are dropped (their prefix still counts). */
void dtree_add(dtree *t, const int32_t *toks, int32_t n);

/* Merge the continuations of the most recent occurrences (at most
 * DTREE_OCC, each at most DTREE_DEPTH tokens, up to a stop token or the
 * end of the text) of ix's last n tokens (the history's own suffix, n in
 * [n_min, n_max]) into t. stop: a token value that ends a continuation
 * (JOBINDEX_SEP), or any value no token takes. q, qn: the suffix to look
 * up (the history's last n tokens). Returns the occurrences merged. */
int32_t dtree_from_index(dtree *t, const ngram_index *ix, const int32_t *q, int32_t qn, int32_t stop);

/* The tree to verify, into b (tokens, parent, n = n_ctx, tree_depth; a
 * choice that is one path is a chain, tree_depth 0): the m <= lim nodes with the best expected tokens per unit of cost (spec_costs
 * as spec_choose), when that rate beats beat_rate; returns m, or 0 (b
 * untouched). */
int32_t dtree_choose(const dtree *t, const spec_costs *c, float alpha, int32_t lim, double beat_rate,
                     spec_block *b);

/* Greedy acceptance of a tree block b: am[r] is the full model's argmax of
 * block row r (row 0: the current token, row i + 1: node i). Walks from the
 * root while the argmax is a child's token; *acc receives the accepted
 * path's length, path[0..acc) its node indices (depth order), *next the
 * full model's token after it. */
void spec_accept_tree(const int32_t *am, const spec_block *b, int32_t *acc, int32_t *path, int32_t *next);

#endif
