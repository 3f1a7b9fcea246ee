/*
 * output.c - a sequence's generated text with stop strings (see output.h).
 */
#include "decode/output.h"

#include <assert.h>
#include <string.h>

#include "util/util.h"

int out_text_init(out_text *o, const tokenizer *tok, const char *const *stops, int n_stops, int ignore_eos,
                  char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    if (n_stops < 0 || n_stops > OUT_MAX_STOPS)
        return util_err(err, errlen, "at most %d stop strings, got %d", OUT_MAX_STOPS, n_stops);
    for (int i = 0; i < n_stops; i++) {
        size_t n = stops[i] ? strlen(stops[i]) : 0;
        if (n == 0)
            return util_err(err, errlen, "stop strings must be non-empty");
        o->stops[i] = stops[i];
        o->max_stop = n > o->max_stop ? n : o->max_stop;
    }
    o->n_stops = n_stops;
    o->tok = tok;
    o->ignore_eos = ignore_eos;
    o->piece_cap = 3 * (tokenizer_max_piece_len(tok) + 8);   /* enough for any piece (tokenizer.h) */
    o->piece = mallocCheck(o->piece_cap);
    o->cap = 256;
    o->text = mallocCheck(o->cap);
    o->text[0] = '\0';
    utf8_stream_init(&o->us);
    return 0;
}

void out_text_free(out_text *o)
{
    free(o->text);
    free(o->piece);
    memset(o, 0, sizeof *o);
}

static void append(out_text *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        char *nt = realloc(o->text, o->cap);
        if (!nt) {
            fprintf(stderr, "selfspec: out of memory\n");
            abort();
        }
        o->text = nt;
    }
    memcpy(o->text + o->len, s, n);
    o->len += n;
    o->text[o->len] = '\0';
}

/* Look for a stop string in the text not yet final, then advance `final`
 * to what can no longer be the start of one (all of it when at_end). */
static int check_stops(out_text *o, int at_end)
{
    size_t start = o->final > o->max_stop ? o->final - o->max_stop : 0;
    for (int i = 0; i < o->n_stops; i++) {
        const char *hit = strstr(o->text + start, o->stops[i]);
        if (hit) {
            o->stopped = 1;
            o->final = (size_t)(hit - o->text);
            return 1;
        }
    }
    size_t hold = at_end || o->max_stop == 0 ? 0 : o->max_stop - 1;
    size_t safe = o->len > hold ? o->len - hold : 0;
    while (safe > o->final && safe < o->len && ((unsigned char)o->text[safe] & 0xC0) == 0x80)
        safe--;   /* never split a UTF-8 character */
    if (safe > o->final)
        o->final = safe;
    return 0;
}

int out_text_push(out_text *o, int32_t token)
{
    if (o->stopped)
        return 1;
    if (o->ignore_eos || !tokenizer_is_eog(o->tok, token)) {
        size_t n = utf8_stream_push(&o->us, o->tok, token, o->piece, o->piece_cap);
        append(o, o->piece, n);
    }
    return check_stops(o, 0);
}

void out_text_finish(out_text *o)
{
    if (o->stopped)
        return;
    char tail[64];
    size_t n = utf8_stream_flush(&o->us, tail, sizeof tail);
    append(o, tail, n);
    check_stops(o, 1);
}

size_t out_text_take(out_text *o, const char **s)
{
    assert(o->taken <= o->final && o->final <= o->len);
    *s = o->text + o->taken;
    size_t n = o->final - o->taken;
    o->taken = o->final;
    return n;
}
