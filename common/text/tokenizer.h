/*
 * tokenizer.h - tokenizers built from GGUF metadata: the vocabulary, text ->
 * token ids, token ids -> bytes.
 *
 * Supports byte-level BPE (tokenizer.ggml.model == "gpt2", pre-tokenizer from
 * tokenizer.ggml.pre; "smollm" among others) and the SentencePiece-style
 * "llama" vocabulary (scores, byte-fallback tokens <0xNN>). Token ids match
 * llama.cpp's llama_tokenize on the same file.
 *
 * Related modules of this layer: text/chat.h (chat templates: messages ->
 * prompt text) and text/utf8.h (the UTF-8 byte stream, validation), which
 * this module builds the streaming detokenizer on (utf8_stream_push).
 */
#ifndef SELFSPEC_TOKENIZER_H
#define SELFSPEC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "format/gguf.h"
#include "text/utf8.h"

typedef struct tokenizer tokenizer;

/* Build from the tokenizer.* keys of an open GGUF file. Returns 0 / -1 + err.
 * The tokenizer copies what it needs; the gguf_file may be closed afterwards. */
int tokenizer_build(tokenizer **out, const gguf_file *g, char *err, size_t errlen);
/* Free a tokenizer from tokenizer_build; NULL is a no-op. */
void tokenizer_free(tokenizer *t);

/* Number of tokens in the vocabulary (ids are 0 .. size - 1). */
int32_t tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);      /* -1 when none */
int32_t tokenizer_eos(const tokenizer *t);      /* -1 when none */
int tokenizer_add_bos(const tokenizer *t);      /* tokenizer.ggml.add_bos_token */
/* Is id an end-of-generation token (EOS, <|im_end|>, <|endoftext|>, ...)?
 * 0 for an out-of-range id. */
int tokenizer_is_eog(const tokenizer *t, int32_t id);

/* Is id a special token (control, user-defined or unknown: the tokens
 * parse_special matches in text)? 0 for an out-of-range id. */
int tokenizer_is_special(const tokenizer *t, int32_t id);

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

/* The streaming detokenizer: appends the bytes of token id (its
 * tokenizer_piece; an out-of-range id adds none) to the stream s and writes
 * to out (capacity cap) what is complete UTF-8 (utf8_stream_push_bytes;
 * utf8_stream_flush at the end). cap >= 3 * (tokenizer_max_piece_len + 8)
 * is always enough. */
size_t utf8_stream_push(utf8_stream *s, const tokenizer *t, int32_t id, char *out, size_t cap);

/* Id of the token whose vocabulary text is exactly text[0..len) (e.g.
 * "<|im_start|>"; for byte-level BPE the text is in the mapped alphabet),
 * or -1 when there is none. Where the vocabulary holds a text twice, the
 * later id, as llama.cpp. */
int32_t tokenizer_token_id(const tokenizer *t, const char *text, size_t len);

/* The text of token id as stored in the vocabulary (not detokenized: see
 * tokenizer_piece). Returns NULL (*len = 0) for an out-of-range id; not
 * NUL-terminated; *len set. */
const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len);

/* The model's tokenizer.chat_template (Jinja source) as a NUL-terminated
 * string owned by the tokenizer, or NULL when the file has none. Read by
 * text/chat.h, which recognizes the template family. */
const char *tokenizer_chat_template(const tokenizer *t);

#endif
