/*
 * prefix.c - the prefix cache (prefix.h): entries in one array, found by a
 * scan that compares the parent id first (a pool has a few thousand blocks
 * at most, and a lookup happens once per prompt block at admission).
 */
#include "engine/prefix.h"

#include <assert.h>
#include <string.h>

#include "util/util.h"

void prefix_init(prefix_cache *pc, kv_pool *p)
{
    memset(pc, 0, sizeof *pc);
    pc->pool = p;
    pc->cap = p->n_blocks;
    pc->e = callocCheck((size_t)pc->cap, sizeof(prefix_entry));
    pc->next_id = 1;
}

void prefix_free(prefix_cache *pc)
{
    for (int32_t i = 0; i < pc->cap; i++)
        if (pc->e[i].id)
            kv_block_drop(pc->pool, pc->e[i].block);
    free(pc->e);
    memset(pc, 0, sizeof *pc);
}

/* The entry of the block toks[0..KV_BLOCK) after entry `parent`, or -1. */
static int32_t find(const prefix_cache *pc, uint64_t parent, const int32_t *toks)
{
    for (int32_t i = 0; i < pc->cap; i++) {
        const prefix_entry *x = &pc->e[i];
        if (x->id && x->parent == parent && !memcmp(x->toks, toks, sizeof x->toks))
            return i;
    }
    return -1;
}

int32_t prefix_match(prefix_cache *pc, const int32_t *toks, int32_t n_blocks, int32_t *blocks)
{
    uint64_t parent = 0;
    int32_t b = 0;
    pc->clock++;
    for (; b < n_blocks; b++) {
        int32_t i = find(pc, parent, toks + (size_t)b * KV_BLOCK);
        if (i < 0)
            break;
        pc->e[i].used = pc->clock;
        blocks[b] = pc->e[i].block;
        parent = pc->e[i].id;
    }
    return b;
}

void prefix_insert(prefix_cache *pc, const int32_t *toks, int32_t n_blocks, const int32_t *blocks)
{
    uint64_t parent = 0;
    pc->clock++;
    for (int32_t b = 0; b < n_blocks; b++) {
        const int32_t *t = toks + (size_t)b * KV_BLOCK;
        int32_t i = find(pc, parent, t);
        if (i < 0) {
            if (pc->n == pc->cap)
                return;   /* every pool block is an entry already */
            for (i = 0; pc->e[i].id; i++)
                ;
            prefix_entry *x = &pc->e[i];
            x->id = pc->next_id++;
            x->parent = parent;
            x->block = blocks[b];
            memcpy(x->toks, t, sizeof x->toks);
            kv_block_hold(pc->pool, blocks[b]);
            pc->n++;
        }
        pc->e[i].used = pc->clock;
        parent = pc->e[i].id;
    }
}

int prefix_evict(prefix_cache *pc)
{
    int32_t best = -1;
    for (int32_t i = 0; i < pc->cap; i++) {
        const prefix_entry *x = &pc->e[i];
        if (!x->id || pc->pool->refs[x->block] != 1)
            continue;
        /* oldest first; among equals the later entry (a child is made after its parent) */
        if (best < 0 || x->used < pc->e[best].used || (x->used == pc->e[best].used && x->id > pc->e[best].id))
            best = i;
    }
    if (best < 0)
        return 0;
    kv_block_drop(pc->pool, pc->e[best].block);
    memset(&pc->e[best], 0, sizeof pc->e[best]);
    pc->n--;
    pc->evicted++;
    return 1;
}

int32_t prefix_idle_blocks(const prefix_cache *pc)
{
    int32_t n = 0;
    for (int32_t i = 0; i < pc->cap; i++)
        n += pc->e[i].id && pc->pool->refs[pc->e[i].block] == 1;
    return n;
}
