/*
 * output.h - one sequence's generated text as it becomes final.
 *
 * Tokens are pushed as the decoder makes them final; the text grows by each
 * token's bytes (complete UTF-8 characters only, through a utf8_stream), and
 * a prefix of it is "final": safe to show, because it can no longer turn
 * out to be the start of a stop string and it never splits a character.
 * The first stop string found ends the text just before it. The text of an
 * end-of-generation token is not part of the output (unless EOS is ignored).
 *
 * `generate` streams out_text_take() to stdout after each token; `batch`
 * and the server read the whole text at the end. One out_text per sequence;
 * no global state.
 */
#ifndef SELFSPEC_OUTPUT_H
#define SELFSPEC_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "text/tokenizer.h"
#include "text/utf8.h"

#define OUT_MAX_STOPS 8

typedef struct {
    const tokenizer *tok;
    const char *stops[OUT_MAX_STOPS];  /* not owned: the caller keeps them alive */
    int n_stops;
    size_t max_stop;        /* longest stop string in bytes */
    int ignore_eos;         /* an EOG token's text is output too */
    utf8_stream us;
    char *text;             /* (cap) the text so far, NUL-terminated */
    size_t len, cap;
    size_t final;           /* text[0..final) is final */
    size_t taken;           /* text[0..taken) was handed out by out_text_take */
    int stopped;            /* a stop string was found: text ends at final */
    char *piece;            /* (piece_cap) one token's complete UTF-8 */
    size_t piece_cap;
} out_text;

/* Start an empty text. stops: n_stops (<= OUT_MAX_STOPS) non-empty strings,
 * or NULL when n_stops is 0. Returns 0, or -1 with err on bad stops. */
int out_text_init(out_text *o, const tokenizer *tok, const char *const *stops, int n_stops, int ignore_eos,
                  char *err, size_t errlen);
void out_text_free(out_text *o);

/* Add one final token. Returns 1 when the text is complete (a stop string
 * was found; the stop string and anything after it are not part of the
 * text), 0 otherwise. Pushing after a stop does nothing and returns 1. */
int out_text_push(out_text *o, int32_t token);

/* The sequence ended (length, EOG or stop): flush any incomplete UTF-8 and
 * make everything before a stop string final. */
void out_text_finish(out_text *o);

/* The bytes that became final since the last call: *s points into the text
 * (valid until the next push), the return value is their count. */
size_t out_text_take(out_text *o, const char **s);

#endif
