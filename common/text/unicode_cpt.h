/*
 * unicode_cpt.h - code point level helpers for the tokenizer: strict UTF-8
 * decoding/encoding, the character classes the pre-tokenizer regexes use
 * (\p{L}, \p{N}, \p{P}, \s as llama.cpp defines them) and GPT-2's
 * byte <-> unicode mapping used by byte-level BPE vocabularies.
 */
#ifndef SELFSPEC_UNICODE_CPT_H
#define SELFSPEC_UNICODE_CPT_H

#include <stddef.h>
#include <stdint.h>

/* Character class bits returned by ucpt_flags(). */
enum {
    UCPT_DEFINED = 1u << 0,   /* set for every valid code point */
    UCPT_LETTER  = 1u << 1,   /* \p{L}: Lu Ll Lt Lm Lo */
    UCPT_NUMBER  = 1u << 2,   /* \p{N}: Nd Nl No */
    UCPT_PUNCT   = 1u << 3,   /* \p{P}: Pc Pd Ps Pe Pi Pf Po */
    UCPT_SPACE   = 1u << 4,   /* \s: Unicode White_Space */
};

/* Class bits of code point cp (0 for values that are not code points). */
unsigned ucpt_flags(uint32_t cp);

/* Decode the UTF-8 sequence at s[0..len) (len > 0), strictly: no overlongs,
 * no surrogates, nothing above U+10FFFF.
 * Returns n > 0: a valid sequence of n bytes, *cp set;
 *         0:     s[0..len) is a valid but incomplete prefix of a sequence;
 *         -k:    invalid; its maximal ill-formed subpart is k >= 1 bytes
 *                (the caller replaces those with U+FFFD and resumes at s[k]). */
int ucpt_next(const unsigned char *s, size_t len, uint32_t *cp);

/* UTF-8 encode cp (must be a valid code point) into out; returns 1..4. */
size_t ucpt_encode(uint32_t cp, char out[4]);

/* GPT-2 byte-level mapping: every byte has a printable code point. */
uint32_t ucpt_gpt2_byte_to_cpt(unsigned char b);
/* Inverse mapping: the byte for cp, or -1 when cp is not in the image. */
int ucpt_gpt2_cpt_to_byte(uint32_t cp);

#endif
