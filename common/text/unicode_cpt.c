/*
 * unicode_cpt.c - UTF-8 decoding/encoding, character classes (via
 * libutf8proc) and the GPT-2 byte <-> unicode mapping. See unicode_cpt.h.
 */
#include "text/unicode_cpt.h"

#include <utf8proc.h>

/* Is cp in Unicode's White_Space property? This is the set llama.cpp's
 * unicode tables use for \s. */
static int ucpt_is_space(uint32_t cp)
{
    if (cp >= 0x09 && cp <= 0x0D) {
        return 1;
    }
    if (cp >= 0x2000 && cp <= 0x200A) {
        return 1;
    }
    switch (cp) {
    case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028:
    case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return 0;
    }
}

unsigned ucpt_flags(uint32_t cp)
{
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    unsigned f = UCPT_DEFINED;
    if (ucpt_is_space(cp)) {
        f |= UCPT_SPACE;
    }
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        f |= UCPT_LETTER;
        break;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        f |= UCPT_NUMBER;
        break;
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        f |= UCPT_PUNCT;
        break;
    default:
        break;
    }
    return f;
}

/* Sequence length announced by lead byte b, and the allowed range of the
 * second byte (which rules out overlongs, surrogates and > U+10FFFF).
 * Returns 0 for a byte that cannot start a sequence. */
static int ucpt_lead(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b < 0x80) {
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        return 2;
    }
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) {
            *lo = 0xA0;
        } else if (b == 0xED) {
            *hi = 0x9F;
        }
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) {
            *lo = 0x90;
        } else if (b == 0xF4) {
            *hi = 0x8F;
        }
        return 4;
    }
    return 0;
}

int ucpt_next(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char lo, hi;
    int need = ucpt_lead(s[0], &lo, &hi);
    if (need == 0) {
        return -1;
    }
    if (need == 1) {
        *cp = s[0];
        return 1;
    }
    uint32_t v = s[0] & (0xFFu >> (need + 1));
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= len) {
            return 0;
        }
        unsigned char c = s[i];
        if (c < lo || c > hi) {
            return -i;
        }
        lo = 0x80;
        hi = 0xBF;
        v = (v << 6) | (c & 0x3Fu);
    }
    *cp = v;
    return need;
}

size_t ucpt_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2 keeps bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF as themselves and
 * maps the other 68 bytes, in order, to U+0100.. U+0143. */
uint32_t ucpt_gpt2_byte_to_cpt(unsigned char b)
{
    if (b <= 0x20) {
        return 0x100u + b;
    }
    if (b >= 0x7F && b <= 0xA0) {
        return 0x100u + 0x21u + (b - 0x7Fu);
    }
    if (b == 0xAD) {
        return 0x143u;
    }
    return b;
}

int ucpt_gpt2_cpt_to_byte(uint32_t cp)
{
    if (cp <= 0xFF) {
        if (cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) {
            return -1;
        }
        return (int)cp;
    }
    if (cp <= 0x120) {
        return (int)(cp - 0x100);
    }
    if (cp <= 0x142) {
        return (int)(cp - 0x121 + 0x7F);
    }
    if (cp == 0x143) {
        return 0xAD;
    }
    return -1;
}
