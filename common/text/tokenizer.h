/*
 * tokenizer.h - tokenizers built from GGUF metadata.
 *
 * Supports byte-level BPE (tokenizer.ggml.model == "gpt2", pre-tokenizer from
 * tokenizer.ggml.pre; "smollm" among others) and the SentencePiece-style
 * "llama" vocabulary (scores, byte-fallback tokens <0xNN>). Token ids match
 * llama.cpp's llama_tokenize on the same file.
 */
#ifndef SELFSPEC_TOKENIZER_H
#define SELFSPEC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "format/gguf.h"

typedef struct tokenizer tokenizer;

/* Build from the tokenizer.* keys of an open GGUF file. Returns 0 / -1 + err.
 * The tokenizer copies what it needs; the gguf_file may be closed afterwards. */
int tokenizer_build(tokenizer **out, const gguf_file *g, char *err, size_t errlen);
void tokenizer_free(tokenizer *t);

int32_t tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);      /* -1 when none */
int32_t tokenizer_eos(const tokenizer *t);      /* -1 when none */
int tokenizer_add_bos(const tokenizer *t);      /* tokenizer.ggml.add_bos_token */
/* Is id an end-of-generation token (EOS, <|im_end|>, <|endoftext|>, ...)? */
int tokenizer_is_eog(const tokenizer *t, int32_t id);

/* Encode len bytes of UTF-8 text. When parse_special is set, the text of
 * control/special tokens (e.g. "<|im_start|>") is matched and emitted as that
 * token, as llama.cpp does with parse_special=true. When add_bos is set and
 * the vocabulary has a BOS token, it is prepended.
 * On success *ids is a malloc'd array of *n ids (caller frees).
 * Fails (-1 + err) on invalid UTF-8. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos,
                     int parse_special, int32_t **ids, size_t *n, char *err, size_t errlen);

/* The raw bytes a token stands for when detokenized (byte-level BPE mapping
 * undone, SentencePiece "\xe2\x96\x81" turned into spaces, <0xNN> turned into
 * the byte). Special/control tokens give their text (e.g. "<|im_end|>").
 * Returns NULL for an out-of-range id. Not NUL-terminated; *len set. */
const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len);

/* Length of the longest piece in the vocabulary (for sizing buffers: a
 * utf8_stream_push output buffer of 3 * (tokenizer_max_piece_len() + 8)
 * bytes always suffices). */
size_t tokenizer_max_piece_len(const tokenizer *t);

/* Chat template. Formats one user message (and an optional system message;
 * NULL gives the model's default, if its template has one) as the model's
 * chat prompt ending with the assistant header, e.g. ChatML:
 * "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n".
 * Returns a malloc'd NUL-terminated string, or NULL + err if the model's
 * template is not recognized. */
char *tokenizer_chat_prompt(const tokenizer *t, const char *system, const char *user,
                            char *err, size_t errlen);

/* Streaming detokenizer: feed tokens, get back only complete UTF-8 sequences;
 * bytes of an incomplete character wait for the next token. */
typedef struct {
    unsigned char pending[8];
    size_t n_pending;
} utf8_stream;

void utf8_stream_init(utf8_stream *s);
/* Appends the bytes of token id to the stream; writes to out (capacity cap)
 * the longest prefix of pending bytes that is complete UTF-8, returns its
 * length. Invalid byte sequences are emitted as U+FFFD. Characters that do
 * not fit in cap are dropped: cap >= 3 * (piece length + 8) is always enough
 * (see tokenizer_max_piece_len). */
size_t utf8_stream_push(utf8_stream *s, const tokenizer *t, int32_t id, char *out, size_t cap);
/* Flush whatever is left at the end (incomplete sequences become U+FFFD). */
size_t utf8_stream_flush(utf8_stream *s, char *out, size_t cap);

/* Validate UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the byte
 * offset of the first invalid sequence, or len when valid. */
size_t utf8_validate(const char *s, size_t len);

#endif
