/*
 * grammar.c - the JSON matcher lifted to tokens (grammar.h): the
 * vocabulary trie in preorder, the per-token check, the constrained
 * argmax, the full mask, forced tokens.
 */
#include "decode/grammar.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode/sampler.h"
#include "util/util.h"

/* Token pieces in a trie laid out in preorder: node i spells byte[i] at
 * depth[i] (1-based); skip[i] is the first node after its subtree; first[i]
 * the first token whose piece ends there (then next[...]), or -1. */
typedef struct {
    int32_t n_nodes;
    uint8_t *byte;
    uint16_t *depth;
    int32_t *skip, *first;
    int32_t *next;             /* (V) */
} gram_trie;

struct gram_vocab {
    const tokenizer *tok;
    int32_t V;
    uint8_t *kind;             /* (V) TK_* */
    gram_trie all;             /* every text token */
    /* plain string text: tokens of whole UTF-8 characters, none of them a
     * quote, a backslash or a control character -- inside a JSON string
     * each is allowed exactly when its code points fit (cps) -- and the
     * trie of the other text tokens, the only ones a string state walks */
    uint8_t *plain;            /* (V) */
    uint16_t *cps;             /* (V) code points of a plain token */
    int32_t *plain_ids;        /* the plain tokens */
    int32_t n_plain;
    gram_trie rest;
    int32_t max_depth;
    int32_t *eog;              /* the end-of-generation ids */
    int32_t n_eog;
};

enum { TK_NEVER, TK_TEXT, TK_EOG };

struct gram_scratch {
    js_state *path;            /* (max_depth + 1) */
    uint8_t *ok;               /* (V) */
    int32_t V, max_depth;
};

typedef struct {
    const char *p;
    size_t len;
    int32_t id;
} piece_key;

static int piece_cmp(const void *a, const void *b)
{
    const piece_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The trie of keys[0..n) (sorted by piece_cmp) over a vocabulary of V. */
static void trie_build(gram_trie *t, const piece_key *keys, int32_t n, int32_t V)
{
    size_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += keys[i].len;
    t->byte = mallocCheck(total + 1);   /* at most one node per byte of every piece */
    t->depth = mallocCheck((total + 1) * sizeof(uint16_t));
    t->skip = mallocCheck((total + 1) * sizeof(int32_t));
    t->first = mallocCheck((total + 1) * sizeof(int32_t));
    t->next = mallocCheck((size_t)V * sizeof(int32_t));
    for (int32_t i = 0; i < V; i++)
        t->next[i] = -1;
    int32_t *path = mallocCheck((65536 + 1) * sizeof(int32_t));   /* node at each depth of the current piece */
    int32_t *last_tok = mallocCheck((total + 1) * sizeof(int32_t));
    int32_t nn = 0;
    const piece_key *prev = NULL;
    for (int32_t i = 0; i < n; i++) {
        const piece_key *k = &keys[i];
        size_t lcp = 0;
        if (prev)
            while (lcp < prev->len && lcp < k->len && prev->p[lcp] == k->p[lcp])
                lcp++;
        for (size_t d = lcp; d < k->len; d++) {
            t->byte[nn] = (uint8_t)k->p[d];
            t->depth[nn] = (uint16_t)(d + 1);
            t->first[nn] = -1;
            last_tok[nn] = -1;
            path[d + 1] = nn++;
        }
        int32_t at = path[k->len];
        if (t->first[at] < 0)
            t->first[at] = k->id;
        else
            t->next[last_tok[at]] = k->id;
        last_tok[at] = k->id;
        prev = k;
    }
    t->n_nodes = nn;
    int32_t sp = 0;   /* skip[i]: the next node at a depth <= depth[i] */
    for (int32_t i = 0; i < nn; i++) {
        while (sp > 0 && t->depth[path[sp - 1]] >= t->depth[i])
            t->skip[path[--sp]] = i;
        path[sp++] = i;
    }
    while (sp > 0)
        t->skip[path[--sp]] = nn;
    free(path);
    free(last_tok);
}

static void trie_free(gram_trie *t)
{
    free(t->byte);
    free(t->depth);
    free(t->skip);
    free(t->first);
    free(t->next);
}

/* Code points of p[0..len) when it is plain string text (whole UTF-8
 * characters, well formed, no '"', '\\' or control character), else -1. */
static int32_t plain_cps(const uint8_t *p, size_t len)
{
    int32_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint8_t b = p[i], lo = 0x80, hi = 0xbf;
        size_t k;   /* continuation bytes */
        if (b < 0x80) {
            if (b < 0x20 || b == 0x7f || b == '"' || b == '\\')
                return -1;
            k = 0;
        } else if (b >= 0xc2 && b <= 0xdf) {
            k = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
            k = 2, lo = b == 0xe0 ? 0xa0 : 0x80, hi = b == 0xed ? 0x9f : 0xbf;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 3, lo = b == 0xf0 ? 0x90 : 0x80, hi = b == 0xf4 ? 0x8f : 0xbf;
        } else {
            return -1;
        }
        if (i + k >= len)
            return -1;   /* a character cut off */
        for (size_t j = 1; j <= k; j++, lo = 0x80, hi = 0xbf)
            if (p[i + j] < lo || p[i + j] > hi)
                return -1;
        i += k + 1;
    }
    return n;
}

int gram_vocab_build(gram_vocab **out, const tokenizer *tok, char *err, size_t errlen)
{
    *out = NULL;
    int32_t V = tokenizer_vocab_size(tok);
    if (V <= 0)
        return util_err(err, errlen, "the vocabulary is empty");
    gram_vocab *gv = callocCheck(1, sizeof *gv);
    gv->tok = tok;
    gv->V = V;
    gv->kind = callocCheck((size_t)V, 1);
    gv->plain = callocCheck((size_t)V, 1);
    gv->cps = callocCheck((size_t)V, sizeof(uint16_t));
    gv->plain_ids = mallocCheck((size_t)V * sizeof(int32_t));
    gv->eog = mallocCheck((size_t)V * sizeof(int32_t));
    piece_key *keys = mallocCheck((size_t)V * sizeof *keys), *rest = mallocCheck((size_t)V * sizeof *rest);
    int32_t n = 0, n_rest = 0;
    for (int32_t id = 0; id < V; id++) {
        if (tokenizer_is_eog(tok, id)) {
            gv->kind[id] = TK_EOG;
            gv->eog[gv->n_eog++] = id;
            continue;
        }
        size_t len = 0;
        const char *p = tokenizer_piece(tok, id, &len);
        if (!p || len == 0 || len > 65535 || tokenizer_is_special(tok, id))
            continue;
        gv->kind[id] = TK_TEXT;
        keys[n++] = (piece_key){p, len, id};
        if (len > (size_t)gv->max_depth)
            gv->max_depth = (int32_t)len;
        int32_t c = plain_cps((const uint8_t *)p, len);
        if (c > 0) {
            gv->plain[id] = 1;
            gv->cps[id] = (uint16_t)(c > 65535 ? 65535 : c);
            gv->plain_ids[gv->n_plain++] = id;
        } else {
            rest[n_rest++] = (piece_key){p, len, id};
        }
    }
    qsort(keys, (size_t)n, sizeof *keys, piece_cmp);
    qsort(rest, (size_t)n_rest, sizeof *rest, piece_cmp);
    trie_build(&gv->all, keys, n, V);
    trie_build(&gv->rest, rest, n_rest, V);
    free(keys);
    free(rest);
    *out = gv;
    return 0;
}

void gram_vocab_free(gram_vocab *gv)
{
    if (!gv)
        return;
    free(gv->kind);
    free(gv->plain);
    free(gv->cps);
    free(gv->plain_ids);
    free(gv->eog);
    trie_free(&gv->all);
    trie_free(&gv->rest);
    free(gv);
}

int32_t gram_vocab_size(const gram_vocab *gv) { return gv->V; }

gram_scratch *gram_scratch_new(const gram_vocab *gv)
{
    gram_scratch *sc = callocCheck(1, sizeof *sc);
    sc->path = mallocCheck((size_t)(gv->max_depth + 1) * sizeof(js_state));
    sc->ok = mallocCheck((size_t)gv->V);
    sc->V = gv->V;
    sc->max_depth = gv->max_depth;
    return sc;
}

int gram_scratch_fits(const gram_scratch *sc, const gram_vocab *gv)
{
    return sc && sc->V == gv->V && sc->max_depth == gv->max_depth;
}

void gram_scratch_free(gram_scratch *sc)
{
    if (!sc)
        return;
    free(sc->path);
    free(sc->ok);
    free(sc);
}

int gram_allows(const gram *g, const js_state *st, int32_t tok)
{
    if (tok < 0 || tok >= g->gv->V)
        return 0;
    switch (g->gv->kind[tok]) {
    case TK_EOG:
        return js_accepting(g->js, st);
    case TK_TEXT: {
        size_t len;
        const char *p = tokenizer_piece(g->gv->tok, tok, &len);
        js_state t;
        js_copy(&t, st);
        return js_feed(g->js, &t, p, len);
    }
    default:
        return 0;
    }
}

int gram_advance(const gram *g, js_state *st, int32_t tok)
{
    if (tok < 0 || tok >= g->gv->V || g->gv->kind[tok] == TK_NEVER) {
        st->n = 0;
        return 0;
    }
    if (g->gv->kind[tok] == TK_EOG) {
        if (!js_accepting(g->js, st))
            st->n = 0;
        return st->n > 0;
    }
    size_t len;
    const char *p = tokenizer_piece(g->gv->tok, tok, &len);
    return js_feed(g->js, st, p, len);
}

/* The tokens of trie t that st allows, flagged in sc->ok; returns how many. */
static int32_t walk_trie(const gram *g, const gram_trie *t, const js_state *st, gram_scratch *sc)
{
    int32_t n = 0;
    js_copy(&sc->path[0], st);
    for (int32_t i = 0; i < t->n_nodes;) {
        int32_t d = t->depth[i];
        if (!js_step_into(g->js, &sc->path[d - 1], &sc->path[d], t->byte[i])) {
            i = t->skip[i];
            continue;
        }
        for (int32_t k = t->first[i]; k >= 0; k = t->next[k], n++)
            sc->ok[k] = 1;
        i++;
    }
    return n;
}

/* Every allowed token of st flagged in sc->ok; returns how many. Inside a
 * string's text the plain tokens are decided by their code points alone
 * (js_string_room) and only the rest walk the trie. */
static int32_t walk(const gram *g, const js_state *st, gram_scratch *sc)
{
    const gram_vocab *gv = g->gv;
    assert(sc->V == gv->V);
    memset(sc->ok, 0, (size_t)gv->V);
    int32_t n = 0;
    if (js_accepting(g->js, st))
        for (int32_t i = 0; i < gv->n_eog; i++, n++)
            sc->ok[gv->eog[i]] = 1;
    uint32_t room;
    if (!js_string_room(g->js, st, &room))
        return n + walk_trie(g, &gv->all, st, sc);
    for (int32_t k = 0; k < gv->n_plain; k++) {
        int32_t id = gv->plain_ids[k];
        if (gv->cps[id] <= room) {
            sc->ok[id] = 1;
            n++;
        }
    }
    return n + walk_trie(g, &gv->rest, st, sc);
}

int32_t gram_mask(const gram *g, const js_state *st, float *row, int32_t V, gram_scratch *sc)
{
    assert(V == g->gv->V);
    int32_t n = walk(g, st, sc);
    for (int32_t i = 0; i < V; i++)
        if (!sc->ok[i])
            row[i] = -INFINITY;
    return n;
}

#define GRAM_TOP 16

int32_t gram_best(const gram *g, const js_state *st, const float *row, int32_t V, int32_t hint, gram_scratch *sc)
{
    assert(V == g->gv->V);
    if (hint < 0)
        hint = sampler_argmax(row, V);
    if (gram_allows(g, st, hint))
        return hint;
    /* the GRAM_TOP best by (logit desc, id asc) */
    int32_t top[GRAM_TOP], nt = 0;
    for (int32_t i = 0; i < V; i++) {
        if (nt == GRAM_TOP && !(row[i] > row[top[nt - 1]]))
            continue;   /* ties keep the lower id already held */
        int32_t j = nt < GRAM_TOP ? nt++ : nt - 1;
        while (j > 0 && row[i] > row[top[j - 1]]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
    for (int32_t k = 0; k < nt; k++)
        if (gram_allows(g, st, top[k]))
            return top[k];
    if (walk(g, st, sc) == 0)
        return g->gv->n_eog > 0 ? g->gv->eog[0] : -1;
    int32_t best = -1;
    for (int32_t i = 0; i < V; i++)
        if (sc->ok[i] && (best < 0 || row[i] > row[best]))
            best = i;
    return best;
}

int32_t gram_valid_prefix(const gram *g, const js_state *st, const int32_t *toks, int32_t n)
{
    js_state t;
    js_copy(&t, st);
    int32_t i = 0;
    while (i < n && g->gv->kind[toks[i]] == TK_TEXT && gram_advance(g, &t, toks[i]))
        i++;
    return i;
}

int32_t gram_forced(const gram *g, const js_state *st, int32_t *out, int32_t max)
{
    char text[64];
    size_t len = js_forced(g->js, st, text, sizeof text);
    if (len == 0 || max <= 0)
        return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    char err[128];
    if (tokenizer_encode(g->gv->tok, text, len, 0, 0, &ids, &n, err, sizeof err) != 0)
        return 0;   /* a partial UTF-8 sequence: no forced draft this time */
    if ((int32_t)n > max)
        n = (size_t)max;
    int32_t k = gram_valid_prefix(g, st, ids, (int32_t)n);
    memcpy(out, ids, (size_t)k * sizeof(int32_t));
    free(ids);
    return k;
}

int gram_done(const gram *g, const js_state *st)
{
    return js_finished(g->js, st);
}
