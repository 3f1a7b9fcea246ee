/*
 * utf8.h - UTF-8 on the way out of the model: a byte stream that gives back
 * only complete, valid UTF-8 (bytes of a character split across pushes
 * wait for the next push), and a strict validator (used on prompts before
 * they are tokenized). A leaf of the text layer: it knows bytes, not
 * tokens; the streaming detokenizer over it, utf8_stream_push (a token's
 * piece into the stream), is the tokenizer's (text/tokenizer.h).
 */
#ifndef SELFSPEC_UTF8_H
#define SELFSPEC_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Stream state: push bytes, get back only complete UTF-8 sequences; bytes
 * of an incomplete character wait for the next push. */
typedef struct {
    unsigned char pending[8];
    size_t n_pending;
} utf8_stream;

/* Start a stream with nothing pending. */
void utf8_stream_init(utf8_stream *s);

/* Appends bytes p[0..n) (p may be NULL when n is 0) to the stream; writes
 * to out (capacity cap) the longest prefix of pending bytes that is
 * complete UTF-8, returns its length. Invalid byte sequences are emitted
 * as U+FFFD. Characters that do not fit in cap are dropped: cap >= 3 * (n
 * + 8) is always enough. */
size_t utf8_stream_push_bytes(utf8_stream *s, const char *p, size_t n, char *out, size_t cap);

/* Flush whatever is left at the end (an incomplete sequence becomes one
 * U+FFFD; needs cap >= 3) and leave the stream empty. Returns the number of
 * bytes written to out. */
size_t utf8_stream_flush(utf8_stream *s, char *out, size_t cap);

/* Validate UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the byte
 * offset of the first invalid sequence, or len when valid. */
size_t utf8_validate(const char *s, size_t len);

#endif
