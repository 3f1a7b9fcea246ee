/*
 * chat.h - chat templates: a conversation (system / user / assistant
 * messages) rendered as the prompt text a model was trained on, ending with
 * the assistant's turn opened (Hugging Face's add_generation_prompt), ready
 * for tokenizer_encode with parse_special set.
 *
 * The template family is recognized from the model's
 * tokenizer.chat_template (no Jinja is run): ChatML (<|im_start|>; also
 * chosen when the file has no template but the vocabulary has
 * <|im_start|>), Llama-3 (<|start_header_id|>), Llama-2 ([INST]), Phi-3
 * (<|assistant|> with <|end|>) and Gemma
 * (<start_of_turn>; also chosen when the file has no template but the
 * vocabulary has <start_of_turn>, as Gemma-3-270M's GGUF). A
 * ChatML template that writes a literal default system message (SmolLM2's
 * does) has it used when the conversation does not start with one.
 */
#ifndef SELFSPEC_CHAT_H
#define SELFSPEC_CHAT_H

#include <stddef.h>

#include "text/tokenizer.h"

typedef enum { CHAT_SYSTEM, CHAT_USER, CHAT_ASSISTANT } chat_role;

/* One message of a conversation; content is NUL-terminated UTF-8. */
typedef struct {
    chat_role role;
    const char *content;
} chat_msg;

typedef enum {
    CHAT_TEMPLATE_NONE,      /* not recognized: chat_render fails */
    CHAT_TEMPLATE_CHATML,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_GEMMA,
    CHAT_TEMPLATE_PHI3,
} chat_template_kind;

/* The role named name ("system", "user", "assistant", as in OpenAI chat
 * messages) into *out. Returns 0, or -1 (*out untouched) for any other name. */
int chat_role_parse(const char *name, chat_role *out);

/* The template family of the tokenizer's model (see the top of this file). */
chat_template_kind chat_template_of(const tokenizer *t);

/* Render n messages as the model's chat prompt, ending with the assistant's
 * turn opened. Returns a malloc'd NUL-terminated string (caller frees), or
 * NULL + err when the template is not recognized, on a malformed
 * conversation, or out of memory. Rules: a system message may only be the
 * first message; every content is non-NULL. Per family:
 *   ChatML:   "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message (the
 *             template's default system message first when msgs[0] is not
 *             a system message), then "<|im_start|>assistant\n";
 *   Llama-3:  BOS text (when the template writes bos_token), then
 *             "<|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>"
 *             per message, then the assistant header;
 *   Llama-2:  after the optional system message, user and assistant turns
 *             alternate, starting and ending with a user message; a user
 *             turn is BOS text + "[INST] " + CONTENT + " [/INST]" (the first
 *             one carries "<<SYS>>\nSYSTEM\n<</SYS>>\n\n" before CONTENT),
 *             an assistant turn " CONTENT " + EOS text (when the template
 *             writes eos_token);
 *   Phi-3:    "<|ROLE|>\nCONTENT<|end|>\n" per message, ROLE system, user
 *             or assistant; then "<|assistant|>\n";
 *   Gemma:    user and assistant turns alternate, starting with a user
 *             message; "<start_of_turn>ROLE\nCONTENT<end_of_turn>\n" per
 *             turn, ROLE "user" or "model", CONTENT trimmed of ASCII
 *             whitespace (the template's | trim), a system message's text
 *             + "\n\n" put before the first user turn's content; then
 *             "<start_of_turn>model\n". No BOS text: the vocabulary's
 *             add_bos_token adds BOS when the prompt is tokenized.
 * Other families' contents are copied as they are (not trimmed). */
char *chat_render(const tokenizer *t, const chat_msg *msgs, size_t n, char *err, size_t errlen);

/* One user message (and an optional system message; NULL gives the model's
 * default, if its template has one) rendered by chat_render, e.g. ChatML:
 * "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n".
 * Returns a malloc'd NUL-terminated string, or NULL + err if the model's
 * template is not recognized. */
char *tokenizer_chat_prompt(const tokenizer *t, const char *system, const char *user,
                            char *err, size_t errlen);

#endif
