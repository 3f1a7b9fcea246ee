/*
 * prompts.h - prompts from the command line and from files: one prompt
 * (`generate -p/-f`), JSONL with one {"prompt": "..."} object per line (the
 * files in configs/prompts/, `selfspec search -p`), read strictly, and
 * their token ids (through the chat template or as they are).
 */
#ifndef SELFSPEC_PROMPTS_H
#define SELFSPEC_PROMPTS_H

#include <stddef.h>
#include <stdint.h>

#include "text/tokenizer.h"

/* Read the prompts of the JSONL file at path into out[0..max) (malloc'd
 * NUL-terminated strings; free with prompts_free). Lines that are empty or
 * only blanks are skipped; every other line must be a JSON object with a
 * string member "prompt" (other members are ignored). Returns the number
 * read (>= 1), or -1 with err, out holding nothing to free: the file
 * cannot be read; "PATH:LINE: expected {"prompt": "..."}" for the first
 * bad line; "PATH: more than MAX prompts" when the file holds more than
 * max; "PATH: no prompts" when it holds none. */
int prompts_load_jsonl(const char *path, char **out, int max, char *err, size_t errlen);

/* Free texts[0..n) (n may be <= 0). */
void prompts_free(char **texts, int n);

/* Token ids of texts[0..n): with chat, each as the user turn of the
 * model's chat template (tokenizer_chat_prompt, specials parsed), else as
 * it is; a BOS where the vocabulary adds one. ids[i] malloc'd (free each),
 * lens[i] > 0. Returns 0, or -1 with err ("prompt I: ..."), nothing left to
 * free. */
int prompts_encode(const tokenizer *tok, char *const *texts, int n, int chat, int32_t **ids, int32_t *lens,
                   char *err, size_t errlen);

/* One prompt as `generate` takes it: text given (not NULL) or read from
 * path ("-": standard input); it must be valid UTF-8 (as system, when
 * given). With chat it becomes the user turn of the model's chat template
 * (tokenizer_chat_prompt) with system as the system message (NULL: the
 * template's). Returns the malloc'd prompt with its length in *len, or
 * NULL with err (unreadable file, the offset of the first bad byte, a
 * template that cannot render). */
char *prompts_user_text(const tokenizer *tok, const char *text, const char *path, int chat, const char *system,
                        size_t *len, char *err, size_t errlen);

#endif
