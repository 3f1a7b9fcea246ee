/*
 * prefix.h - the prefix cache: prompt KV blocks kept after their sequence
 * has gone, found again by content, so that a request whose prompt starts
 * as an earlier one's does not compute that part again (vLLM's automatic
 * prefix caching, over the engine's paged KV pool).
 *
 * What a block's KV depends on: every token at or before its positions. So
 * an entry names one full block of KV_BLOCK prompt tokens *and* its parent
 * entry (the block before it, 0: none), and a match walks a prompt's
 * blocks from the first: block b matches the entry whose parent is block
 * b - 1's entry and whose tokens are block b's. Entries have ids that are
 * never reused, and the tokens are compared, so no hash collision and no
 * eviction of a parent can make a wrong match.
 *
 * Exactness: the KV a block holds is what computing those tokens at those
 * positions writes, whatever chunk or batch computed it (model.h, attention
 * and every projection are per token), so a sequence that starts from
 * cached blocks computes the same logits as one that computed them.
 *
 * Memory: an entry holds its block (kv_block_hold). A block only the cache
 * holds is idle: it counts as free for admission (prefix_evict gives the
 * least recently used one back) and is not counted in use. The cache never
 * takes a block a live sequence would need: it only keeps blocks that
 * sequences had, and gives idle ones back on demand.
 *
 * One per engine, on the CPU backend's pool (the engine's thread only).
 */
#ifndef SELFSPEC_PREFIX_H
#define SELFSPEC_PREFIX_H

#include <stdint.h>

#include "model/model.h"

typedef struct {
    uint64_t id;               /* 0: an empty entry */
    uint64_t parent;           /* the previous block's entry id, 0 for a prompt's first block */
    uint64_t used;             /* the cache's clock at its last match or insert (LRU) */
    int32_t block;             /* the pool block it holds */
    int32_t toks[KV_BLOCK];
} prefix_entry;

typedef struct {
    kv_pool *pool;
    prefix_entry *e;           /* (cap) */
    int32_t cap, n;
    uint64_t next_id, clock;
    int64_t hit_tokens;        /* prompt tokens found in the cache, in all */
    int64_t evicted;           /* entries given back */
} prefix_cache;

/* An empty cache over pool p, of at most p->n_blocks entries. */
void prefix_init(prefix_cache *pc, kv_pool *p);
/* Give every block back and free. */
void prefix_free(prefix_cache *pc);

/* The longest run of toks' first n_blocks full blocks in the cache: their
 * pool blocks into blocks[]; returns how many (their entries count as used
 * now). */
int32_t prefix_match(prefix_cache *pc, const int32_t *toks, int32_t n_blocks, int32_t *blocks);

/* Register the first n_blocks full blocks of a prompt toks whose KV a
 * sequence has just computed (its cache's blocks[]); blocks already cached
 * (the same tokens after the same parent) are kept as they are. */
void prefix_insert(prefix_cache *pc, const int32_t *toks, int32_t n_blocks, const int32_t *blocks);

/* Give back the least recently used idle entry (a block only the cache
 * holds), deepest first among equals. Returns 0 when none is idle. */
int prefix_evict(prefix_cache *pc);

/* Blocks only the cache holds. */
int32_t prefix_idle_blocks(const prefix_cache *pc);

#endif
