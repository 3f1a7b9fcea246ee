/*
 * dtree.c - draft trees (dtree.h): a trie of the continuations of earlier
 * occurrences, the choice of the nodes to verify by expected tokens per
 * unit of cost, and the greedy walk that accepts a path.
 */
#include "decode/dtree.h"

#include <assert.h>
#include <math.h>
#include <string.h>

void dtree_reset(dtree *t)
{
    t->n = 0;
    t->n_occ = 0;
}

/* The child of node p (-1: the root) with token tok, or -1. */
static int32_t child(const dtree *t, int32_t p, int32_t tok)
{
    for (int32_t i = 0; i < t->n; i++)
        if (t->parent[i] == p && t->tok[i] == tok)
            return i;
    return -1;
}

void dtree_add(dtree *t, const int32_t *toks, int32_t n)
{
    assert(n >= 1);
    t->n_occ++;
    for (int32_t d = 0, p = -1; d < n; d++) {
        int32_t c = child(t, p, toks[d]);
        if (c < 0) {
            if (t->n == DTREE_NODES)
                return;
            c = t->n++;
            t->tok[c] = toks[d];
            t->parent[c] = p;
            t->count[c] = 0;
            t->depth[c] = p < 0 ? 1 : t->depth[p] + 1;
        }
        t->count[c]++;
        p = c;
    }
}

int32_t dtree_from_index(dtree *t, const ngram_index *ix, const int32_t *q, int32_t qn, int32_t stop)
{
    int32_t ends[DTREE_OCC];
    int32_t k = ngram_occurrences(ix, q, qn, DTREE_OCC, ends);
    for (int32_t i = 0; i < k; i++) {
        int32_t from = ends[i] + 1, n = 0;
        while (n < DTREE_DEPTH && from + n < ix->len && ix->toks[from + n] != stop)
            n++;
        if (n > 0)
            dtree_add(t, ix->toks + from, n);
    }
    return k;
}

/* Node estimates e[i] = alpha^depth * count / n_occ. */
static void estimates(const dtree *t, float alpha, double *e)
{
    for (int32_t i = 0; i < t->n; i++)
        e[i] = pow(alpha, t->depth[i]) * t->count[i] / t->n_occ;
}

/* Depth-first, the most supported child first (ties: the earlier node),
 * over the chosen nodes: their block order. */
static int32_t layout(const dtree *t, const uint8_t *chosen, int32_t p, int32_t prow, spec_block *b,
                      int32_t *row_of)
{
    uint8_t done[DTREE_NODES] = {0};
    for (;;) {
        int32_t best = -1;
        for (int32_t i = 0; i < t->n; i++)
            if (chosen[i] && !done[i] && t->parent[i] == p && (best < 0 || t->count[i] > t->count[best]))
                best = i;
        if (best < 0)
            return b->n;
        done[best] = 1;
        b->tokens[b->n] = t->tok[best];
        b->parent[b->n] = prow;
        row_of[best] = ++b->n;   /* node i sits at block row i + 1 */
        layout(t, chosen, best, row_of[best], b, row_of);
    }
}

int32_t dtree_choose(const dtree *t, const spec_costs *c, float alpha, int32_t lim, double beat_rate,
                     spec_block *b)
{
    if (t->n == 0 || t->n_occ == 0 || lim <= 0)
        return 0;
    double e[DTREE_NODES];
    estimates(t, alpha, e);
    /* nodes by estimate, a parent before its children (its estimate is at
     * least theirs; ties go to the shallower, then the earlier node) */
    uint8_t chosen[DTREE_NODES] = {0};
    int32_t order[DTREE_NODES], m = 0;
    double sum = 0.0, best_rate = beat_rate, more = c->n_base - 1.0;
    int32_t best_m = 0;
    while (m < lim && m < t->n && m < SPEC_MAX_DRAFT) {
        int32_t pick = -1;
        for (int32_t i = 0; i < t->n; i++) {
            if (chosen[i] || (t->parent[i] >= 0 && !chosen[t->parent[i]]))
                continue;
            if (pick < 0 || e[i] > e[pick] || (e[i] == e[pick] && t->depth[i] < t->depth[pick]))
                pick = i;
        }
        if (pick < 0)
            break;
        chosen[pick] = 1;
        order[m++] = pick;
        sum += e[pick];
        double r = (more + 1.0 + sum) / (c->base + c->extra[m]);
        if (r > best_rate)
            best_rate = r, best_m = m;
    }
    if (best_m == 0)
        return 0;
    memset(chosen, 0, sizeof chosen);
    int32_t depth = 0, row_of[DTREE_NODES];
    for (int32_t i = 0; i < best_m; i++) {
        chosen[order[i]] = 1;
        if (t->depth[order[i]] > depth)
            depth = t->depth[order[i]];
    }
    b->n = 0;
    layout(t, chosen, -1, 0, b, row_of);
    assert(b->n == best_m);
    b->n_ctx = b->n;
    b->tree_depth = depth < b->n ? depth : 0;   /* one path: a plain chain */
    return best_m;
}

void spec_accept_tree(const int32_t *am, const spec_block *b, int32_t *acc, int32_t *path, int32_t *next)
{
    int32_t row = 0, a = 0;
    for (;;) {
        int32_t c = am[row], hit = -1;
        for (int32_t i = row; i < b->n && hit < 0; i++)   /* a child comes after its parent */
            if (b->parent[i] == row && b->tokens[i] == c)
                hit = i;
        if (hit < 0) {
            *next = c;
            break;
        }
        path[a++] = hit;
        row = hit + 1;
    }
    *acc = a;
}
