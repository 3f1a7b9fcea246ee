/*
 * utf8.c - the UTF-8 byte stream and UTF-8 validation (see utf8.h).
 *
 * A token's piece may end inside a multi-byte character (byte-level BPE and
 * <0xNN> byte tokens split characters freely), so the stream keeps the bytes
 * of an incomplete character pending until the following bytes complete
 * it. Decoding is unicode_cpt.c's strict ucpt_next, so "valid" here means
 * the same as for the tokenizer's input. Nothing here knows tokens: the
 * tokenizer feeds a token's piece (utf8_stream_push, tokenizer.c).
 */
#include "text/utf8.h"

#include <string.h>

#include "text/unicode_cpt.h"

size_t utf8_validate(const char *s, size_t len)
{
    size_t o = 0;
    while (o < len) {
        uint32_t cp;
        int r = ucpt_next((const unsigned char *)s + o, len - o, &cp);
        if (r <= 0) {
            return o;
        }
        o += (size_t)r;
    }
    return len;
}

void utf8_stream_init(utf8_stream *s)
{
    s->n_pending = 0;
}

/* Append n bytes to out (capacity cap) at *o when they fit. */
static void utf8_out(char *out, size_t cap, size_t *o, const void *p, size_t n)
{
    if (cap - *o >= n) {
        memcpy(out + *o, p, n);
        *o += n;
    }
}

size_t utf8_stream_push_bytes(utf8_stream *s, const char *p, size_t plen, char *out, size_t cap)
{
    size_t o = 0;
    size_t total = s->n_pending + plen;
    size_t pos = 0;
    while (pos < total) {
        unsigned char win[4];
        size_t avail = total - pos < 4 ? total - pos : 4;
        for (size_t i = 0; i < avail; i++) {
            size_t k = pos + i;
            win[i] = k < s->n_pending ? s->pending[k] : (unsigned char)p[k - s->n_pending];
        }
        uint32_t cp;
        int r = ucpt_next(win, avail, &cp);
        if (r == 0) {
            break;                      /* incomplete: keep for the next token */
        }
        if (r > 0) {
            utf8_out(out, cap, &o, win, (size_t)r);
        } else {
            utf8_out(out, cap, &o, "\xEF\xBF\xBD", 3);
        }
        pos += r > 0 ? (size_t)r : (size_t)-r;
    }
    unsigned char keep[sizeof s->pending];
    size_t nk = total - pos;
    for (size_t i = 0; i < nk; i++) {
        size_t k = pos + i;
        keep[i] = k < s->n_pending ? s->pending[k] : (unsigned char)p[k - s->n_pending];
    }
    memcpy(s->pending, keep, nk);
    s->n_pending = nk;
    return o;
}

size_t utf8_stream_flush(utf8_stream *s, char *out, size_t cap)
{
    size_t o = 0;
    if (s->n_pending > 0) {
        utf8_out(out, cap, &o, "\xEF\xBF\xBD", 3);
    }
    s->n_pending = 0;
    return o;
}
