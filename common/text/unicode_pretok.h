/*
 * unicode_pretok.h - pre-tokenizers of byte-level BPE vocabularies: the
 * regex splits llama.cpp applies before BPE (src/llama-vocab.cpp, selected by
 * tokenizer.ggml.pre), implemented by hand over code points.
 */
#ifndef SELFSPEC_UNICODE_PRETOK_H
#define SELFSPEC_UNICODE_PRETOK_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    UPRETOK_GPT2 = 0,  /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    UPRETOK_DIGITS,    /* \p{N} (each digit alone), then the GPT-2 regex ("smollm", "starcoder", ...) */
    UPRETOK_DEFAULT,   /* llama.cpp's "default": [\p{P}$+<=>^~|]+, GPT-2, \p{N}+, [0-9][0-9][0-9] */
    UPRETOK_QWEN2,     /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
                          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+  ("qwen2") */
    UPRETOK_LLAMA3,    /* the same with \p{N}{1,3} for \p{N} ("llama-bpe": Llama 3) */
} upretok_kind;

/* Kind for a tokenizer.ggml.pre name (len bytes, not NUL-terminated).
 * *known is set to 0 when the name is not recognized (GPT-2 is returned). */
upretok_kind upretok_from_name(const char *name, size_t len, int *known);

/* Growable array of piece lengths (in code points). Zero-initialize. */
typedef struct {
    size_t *v;
    size_t n;
    size_t cap;
} upretok_pieces;

void upretok_pieces_free(upretok_pieces *p);

/* Split the code points cps[0..n) into pre-tokens. On success p->v[0..p->n)
 * holds the piece lengths (each >= 1, summing to n) and 0 is returned; -1 on
 * allocation failure. p's storage is reused across calls. */
int upretok_split(upretok_kind kind, const uint32_t *cps, size_t n, upretok_pieces *p);

#endif
