/*
 * utf8.h - UTF-8 on the way out of the model: a streaming detokenizer that
 * turns token ids into text that is always complete, valid UTF-8 (bytes of a
 * character split across tokens wait for the next token), and a strict
 * validator (used on prompts before they are tokenized).
 */
#ifndef SELFSPEC_UTF8_H
#define SELFSPEC_UTF8_H

#include <stddef.h>
#include <stdint.h>

struct tokenizer;   /* text/tokenizer.h */

/* Streaming detokenizer state: feed tokens, get back only complete UTF-8
 * sequences; bytes of an incomplete character wait for the next token. */
typedef struct {
    unsigned char pending[8];
    size_t n_pending;
} utf8_stream;

/* Start a stream with nothing pending. */
void utf8_stream_init(utf8_stream *s);

/* Appends the bytes of token id (tokenizer_piece; an out-of-range id adds
 * none) to the stream; writes to out (capacity cap) the longest prefix of
 * pending bytes that is complete UTF-8, returns its length. Invalid byte
 * sequences are emitted as U+FFFD. Characters that do not fit in cap are
 * dropped: cap >= 3 * (piece length + 8) is always enough (see
 * tokenizer_max_piece_len). */
size_t utf8_stream_push(utf8_stream *s, const struct tokenizer *t, int32_t id, char *out,
                        size_t cap);

/* Flush whatever is left at the end (an incomplete sequence becomes one
 * U+FFFD; needs cap >= 3) and leave the stream empty. Returns the number of
 * bytes written to out. */
size_t utf8_stream_flush(utf8_stream *s, char *out, size_t cap);

/* Validate UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the byte
 * offset of the first invalid sequence, or len when valid. */
size_t utf8_validate(const char *s, size_t len);

#endif
