/*
 * unicode_pretok.c - hand-written equivalents of the pre-tokenizer regexes
 * llama.cpp uses for byte-level BPE. Like llama.cpp's unicode_regex_split,
 * each regex of a kind is applied in turn to every piece produced by the
 * previous one; both the matches and the text between matches become pieces,
 * and a regex never looks across a piece boundary (so "\s+(?!\S)" sees the
 * end of a piece as the end of the text). The GPT-2 regex follows llama.cpp's
 * unicode_regex_split_custom_gpt2 step by step (contractions are
 * case-sensitive); the Qwen2 regex is the Llama-3 one with digits taken one
 * at a time and ASCII-case-insensitive contractions (llama.cpp's
 * unicode_regex_split_custom_qwen2).
 */
#include "text/unicode_pretok.h"

#include <stdlib.h>
#include <string.h>

#include "text/unicode_cpt.h"
#include "util/util.h"

static const char *const upretok_digit_names[] = {
    "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva",
};
static const char *const upretok_qwen2_names[] = {
    "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2",
};
static const char *const upretok_llama3_names[] = {
    "llama3", "llama-v3", "llama-bpe", "falcon3",
};
static const char *const upretok_gpt2_names[] = {
    "gpt2", "gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais", "trillion",
};

/* Does the len-byte name equal the NUL-terminated s? */
static int upretok_name_is(const char *name, size_t len, const char *s)
{
    return strlen(s) == len && memcmp(name, s, len) == 0;
}

upretok_kind upretok_from_name(const char *name, size_t len, int *known)
{
    *known = 1;
    for (size_t i = 0; i < sizeof upretok_digit_names / sizeof *upretok_digit_names; i++) {
        if (upretok_name_is(name, len, upretok_digit_names[i])) {
            return UPRETOK_DIGITS;
        }
    }
    for (size_t i = 0; i < sizeof upretok_gpt2_names / sizeof *upretok_gpt2_names; i++) {
        if (upretok_name_is(name, len, upretok_gpt2_names[i])) {
            return UPRETOK_GPT2;
        }
    }
    for (size_t i = 0; i < sizeof upretok_qwen2_names / sizeof *upretok_qwen2_names; i++) {
        if (upretok_name_is(name, len, upretok_qwen2_names[i])) {
            return UPRETOK_QWEN2;
        }
    }
    for (size_t i = 0; i < sizeof upretok_llama3_names / sizeof *upretok_llama3_names; i++) {
        if (upretok_name_is(name, len, upretok_llama3_names[i])) {
            return UPRETOK_LLAMA3;
        }
    }
    if (upretok_name_is(name, len, "default")) {
        return UPRETOK_DEFAULT;
    }
    *known = 0;
    return UPRETOK_GPT2;
}

void upretok_pieces_free(upretok_pieces *p)
{
    free(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

/* Append piece length len (> 0) to p. Returns 0, or -1 when the size would overflow
 * (out of memory exits: reallocCheck). */
static int upretok_push(upretok_pieces *p, size_t len)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        if (cap < p->cap || cap > SIZE_MAX / sizeof *p->v) {
            return -1;
        }
        p->v = reallocCheck(p->v, cap * sizeof *p->v);
        p->cap = cap;
    }
    p->v[p->n++] = len;
    return 0;
}

/* A regex that is a single character-class run: returns the length of the
 * match starting at cps[pos] (not reaching end), 0 when none starts there. */
typedef size_t (*upretok_matcher)(const uint32_t *cps, size_t pos, size_t end);

/* \p{N}: one number code point. */
static size_t upretok_match_one_number(const uint32_t *cps, size_t pos, size_t end)
{
    (void)end;
    return (ucpt_flags(cps[pos]) & UCPT_NUMBER) ? 1 : 0;
}

/* \p{N}+ */
static size_t upretok_match_numbers(const uint32_t *cps, size_t pos, size_t end)
{
    size_t i = pos;
    while (i < end && (ucpt_flags(cps[i]) & UCPT_NUMBER)) {
        i++;
    }
    return i - pos;
}

/* [0-9][0-9][0-9] (ASCII digits only) */
static size_t upretok_match_three_digits(const uint32_t *cps, size_t pos, size_t end)
{
    if (end - pos < 3) {
        return 0;
    }
    for (size_t i = pos; i < pos + 3; i++) {
        if (cps[i] < '0' || cps[i] > '9') {
            return 0;
        }
    }
    return 3;
}

/* Member of [\p{P}\$\+<=>\^~\|]? llama.cpp matches ASCII through its own
 * table of ASCII punctuation, which leaves out the backtick. */
static int upretok_is_punct_class(uint32_t c)
{
    if (c < 0x80) {
        return c > 0x20 && c < 0x7F && c != '`' && !(c >= '0' && c <= '9') &&
               !((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    }
    return (ucpt_flags(c) & (UCPT_PUNCT | UCPT_SPACE)) == UCPT_PUNCT;
}

/* [\p{P}\$\+<=>\^~\|]+ */
static size_t upretok_match_punct(const uint32_t *cps, size_t pos, size_t end)
{
    size_t i = pos;
    while (i < end && upretok_is_punct_class(cps[i])) {
        i++;
    }
    return i - pos;
}

/* Apply a character-class regex to the pieces in `in`, writing to `out`:
 * matches (leftmost, greedy) and the gaps between them become pieces. */
static int upretok_apply_class(upretok_matcher m, const uint32_t *cps,
                               const upretok_pieces *in, upretok_pieces *out)
{
    size_t start = 0;
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t end = start + in->v[k];
        size_t gap = start;
        for (size_t pos = start; pos < end;) {
            size_t len = m(cps, pos, end);
            if (len == 0) {
                pos++;
                continue;
            }
            if (pos > gap && upretok_push(out, pos - gap) != 0) {
                return -1;
            }
            if (upretok_push(out, len) != 0) {
                return -1;
            }
            pos += len;
            gap = pos;
        }
        if (end > gap && upretok_push(out, end - gap) != 0) {
            return -1;
        }
        start = end;
    }
    return 0;
}

/* Class bits of the code point at pos, or 0 outside [ini, end). */
static unsigned upretok_flags_at(const uint32_t *cps, size_t pos, size_t end)
{
    return pos < end ? ucpt_flags(cps[pos]) : 0;
}

/* Length of a contraction ('s 't 'm 'd 're 've 'll) at pos, or 0. */
static size_t upretok_contraction(const uint32_t *cps, size_t pos, size_t end)
{
    if (cps[pos] != '\'' || pos + 1 >= end) {
        return 0;
    }
    uint32_t c1 = cps[pos + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        return 2;
    }
    if (pos + 2 >= end) {
        return 0;
    }
    uint32_t c2 = cps[pos + 2];
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        return 3;
    }
    return 0;
}

/* Is f the class of a [^\s\p{L}\p{N}] code point inside the piece? */
static int upretok_is_other(unsigned f)
{
    return (f & UCPT_DEFINED) && !(f & (UCPT_SPACE | UCPT_LETTER | UCPT_NUMBER));
}

/* End of the GPT-2 regex match that starts at pos (< end). */
static size_t upretok_gpt2_match(const uint32_t *cps, size_t pos, size_t end)
{
    size_t len = upretok_contraction(cps, pos, end);
    if (len) {
        return pos + len;
    }
    uint32_t c = cps[pos];
    unsigned f = (c == ' ') ? upretok_flags_at(cps, pos + 1, end) : ucpt_flags(c);
    size_t p = pos + (c == ' ');
    if (f & UCPT_LETTER) {                  /*  ?\p{L}+ */
        while (upretok_flags_at(cps, p, end) & UCPT_LETTER) {
            p++;
        }
        return p;
    }
    if (f & UCPT_NUMBER) {                  /*  ?\p{N}+ */
        while (upretok_flags_at(cps, p, end) & UCPT_NUMBER) {
            p++;
        }
        return p;
    }
    if (upretok_is_other(f)) {              /*  ?[^\s\p{L}\p{N}]+ */
        while (upretok_is_other(upretok_flags_at(cps, p, end))) {
            p++;
        }
        return p;
    }
    size_t nws = 0;
    while (upretok_flags_at(cps, pos + nws, end) & UCPT_SPACE) {
        nws++;
    }
    if (nws > 1 && pos + nws < end) {       /* \s+(?!\S) */
        return pos + nws - 1;
    }
    if (nws > 0) {                          /* \s+ */
        return pos + nws;
    }
    return pos + 1;                         /* no match: one code point */
}

/* ASCII lower case (the contractions' letters are ASCII). */
static uint32_t upretok_lower(uint32_t c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Length of a contraction at pos, ASCII case ignored ('S, 'Re, ...), or 0. */
static size_t upretok_contraction_ci(const uint32_t *cps, size_t pos, size_t end)
{
    if (cps[pos] != '\'' || pos + 1 >= end) {
        return 0;
    }
    uint32_t c1 = upretok_lower(cps[pos + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        return 2;
    }
    if (pos + 2 >= end) {
        return 0;
    }
    uint32_t c2 = upretok_lower(cps[pos + 2]);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        return 3;
    }
    return 0;
}

static int upretok_is_newline(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* End of the Qwen2 regex match that starts at pos (< end). */
/* The Qwen2 / Llama-3 regex (unicode_pretok.h), digits taken up to
 * max_digits at a time (1: Qwen2's \p{N}; 3: Llama-3's \p{N}{1,3}). */
static size_t upretok_qwen2_like(const uint32_t *cps, size_t pos, size_t end, size_t max_digits)
{
    size_t len = upretok_contraction_ci(cps, pos, end);
    if (len) {
        return pos + len;
    }
    uint32_t c = cps[pos];
    unsigned f = ucpt_flags(c);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!upretok_is_newline(c) && !(f & UCPT_NUMBER) &&
        ((f & UCPT_LETTER) || (upretok_flags_at(cps, pos + 1, end) & UCPT_LETTER))) {
        size_t p = pos + 1;
        while (upretok_flags_at(cps, p, end) & UCPT_LETTER) {
            p++;
        }
        return p;
    }
    if (f & UCPT_NUMBER) {                  /* \p{N}{1,max_digits} */
        size_t p = pos + 1;
        while (p - pos < max_digits && (upretok_flags_at(cps, p, end) & UCPT_NUMBER)) {
            p++;
        }
        return p;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* (the optional space needs a defined code point after it) */
    unsigned f2 = c == ' ' ? upretok_flags_at(cps, pos + 1, end) : f;
    if (upretok_is_other(f2) && f) {
        size_t p = pos + (c == ' ');
        while (upretok_is_other(upretok_flags_at(cps, p, end))) {
            p++;
        }
        while (p < end && upretok_is_newline(cps[p])) {
            p++;
        }
        return p;
    }
    size_t nws = 0, last_nl = 0;
    while (upretok_flags_at(cps, pos + nws, end) & UCPT_SPACE) {
        if (upretok_is_newline(cps[pos + nws])) {
            last_nl = pos + nws + 1;
        }
        nws++;
    }
    if (last_nl) {                          /* \s*[\r\n]+ */
        return last_nl;
    }
    if (nws > 1 && pos + nws < end) {       /* \s+(?!\S) */
        return pos + nws - 1;
    }
    if (nws > 0) {                          /* \s+ */
        return pos + nws;
    }
    return pos + 1;                         /* no match: one code point */
}

static size_t upretok_qwen2_match(const uint32_t *cps, size_t pos, size_t end)
{
    return upretok_qwen2_like(cps, pos, end, 1);
}

static size_t upretok_llama3_match(const uint32_t *cps, size_t pos, size_t end)
{
    return upretok_qwen2_like(cps, pos, end, 3);
}

typedef size_t (*upretok_regex)(const uint32_t *cps, size_t pos, size_t end);

/* Apply a whole-regex matcher to every piece of `in`, writing to `out`. */
static int upretok_apply_regex(upretok_regex match, const uint32_t *cps, const upretok_pieces *in,
                               upretok_pieces *out)
{
    size_t start = 0;
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t end = start + in->v[k];
        for (size_t pos = start; pos < end;) {
            size_t next = match(cps, pos, end);
            if (upretok_push(out, next - pos) != 0) {
                return -1;
            }
            pos = next;
        }
        start = end;
    }
    return 0;
}

/* Swap the contents of two piece arrays. */
static void upretok_swap(upretok_pieces *a, upretok_pieces *b)
{
    upretok_pieces t = *a;
    *a = *b;
    *b = t;
}

int upretok_split(upretok_kind kind, const uint32_t *cps, size_t n, upretok_pieces *p)
{
    upretok_pieces tmp = {0};
    int rc = -1;
    p->n = 0;
    if (n == 0) {
        return 0;
    }
    if (upretok_push(p, n) != 0) {
        goto cleanup;
    }
    if (kind == UPRETOK_DIGITS || kind == UPRETOK_DEFAULT) {
        upretok_matcher first = kind == UPRETOK_DIGITS ? upretok_match_one_number
                                                       : upretok_match_punct;
        if (upretok_apply_class(first, cps, p, &tmp) != 0) {
            goto cleanup;
        }
        upretok_swap(p, &tmp);
    }
    upretok_regex regex = kind == UPRETOK_QWEN2    ? upretok_qwen2_match
                          : kind == UPRETOK_LLAMA3 ? upretok_llama3_match
                                                   : upretok_gpt2_match;
    if (upretok_apply_regex(regex, cps, p, &tmp) != 0) {
        goto cleanup;
    }
    upretok_swap(p, &tmp);
    if (kind == UPRETOK_DEFAULT) {
        if (upretok_apply_class(upretok_match_numbers, cps, p, &tmp) != 0) {
            goto cleanup;
        }
        upretok_swap(p, &tmp);
        if (upretok_apply_class(upretok_match_three_digits, cps, p, &tmp) != 0) {
            goto cleanup;
        }
        upretok_swap(p, &tmp);
    }
    rc = 0;
cleanup:
    upretok_pieces_free(&tmp);
    return rc;
}
