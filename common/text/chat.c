/*
 * chat.c - chat templates (see chat.h): recognizing the family of a model's
 * tokenizer.chat_template, finding a ChatML template's literal default
 * system message, and rendering a conversation in that family's format.
 *
 * Nothing is cached: the family and the default system message are read
 * from the template text on every call (a few strstr over a few KB, small
 * next to tokenizing the result).
 */
#include "text/chat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define CHAT_ERR_OOM "tokenizer: out of memory"

/* ------------------------------------------------------------------------ */
/* Template recognition                                                     */

chat_template_kind chat_template_of(const tokenizer *t)
{
    const char *tmpl = tokenizer_chat_template(t);
    if (!tmpl) {
        if (tokenizer_token_id(t, "<|im_start|>", 12) >= 0) {
            return CHAT_TEMPLATE_CHATML;
        }
        return tokenizer_token_id(t, "<start_of_turn>", 15) >= 0 ? CHAT_TEMPLATE_GEMMA
                                                                  : CHAT_TEMPLATE_NONE;
    }
    if (strstr(tmpl, "<|im_start|>")) {
        return CHAT_TEMPLATE_CHATML;
    }
    if (strstr(tmpl, "<|start_header_id|>")) {
        return CHAT_TEMPLATE_LLAMA3;
    }
    if (strstr(tmpl, "[INST]")) {
        return CHAT_TEMPLATE_LLAMA2;
    }
    if (strstr(tmpl, "<start_of_turn>")) {
        return CHAT_TEMPLATE_GEMMA;
    }
    if (strstr(tmpl, "<|assistant|>") && strstr(tmpl, "<|end|>")) {
        return CHAT_TEMPLATE_PHI3;
    }
    return CHAT_TEMPLATE_NONE;
}

/* Does s[0..len) contain Jinja code (an expression or the end of a string
 * literal being concatenated) rather than plain literal text? */
static int chat_looks_like_code(const char *s, size_t len)
{
    static const char *const marks[] = { "{{", "{%", "'+", "' +", "\"+", "\" +" };
    for (size_t i = 0; i < sizeof marks / sizeof *marks; i++) {
        if (memmem(s, len, marks[i], strlen(marks[i]))) {
            return 1;
        }
    }
    return 0;
}

/* ChatML default system message: the text the template writes literally
 * after "<|im_start|>system" + newline (real or escaped) up to <|im_end|>,
 * still Jinja-escaped, as *s / *len: the first such occurrence that is plain
 * text (Qwen2.5's template first writes the header alone, then header +
 * messages[0]['content'], then the literal default). Returns 0 when the
 * template has none. */
static int chat_default_system(const char *tmpl, const char **s, size_t *len)
{
    static const char head[] = "<|im_start|>system";
    for (const char *p = tmpl ? strstr(tmpl, head) : NULL; p; p = strstr(p, head)) {
        p += sizeof head - 1;
        if (*p == '\n') {
            p++;
        } else if (p[0] == '\\' && p[1] == 'n') {
            p += 2;
        } else {
            continue;
        }
        const char *e = strstr(p, "<|im_end|>");
        if (!e) {
            return 0;
        }
        if (chat_looks_like_code(p, (size_t)(e - p))) {
            continue;
        }
        *s = p;
        *len = (size_t)(e - p);
        return 1;
    }
    return 0;
}

/* Does the model's template mention a Jinja variable (bos_token, ...)? */
static int chat_template_uses(const tokenizer *t, const char *name)
{
    const char *tmpl = tokenizer_chat_template(t);
    return tmpl && strstr(tmpl, name) != NULL;
}

/* ------------------------------------------------------------------------ */
/* Output buffer                                                            */

/* A growing string; `oom` sticks once an append would overflow size_t
 * (allocation failure exits, reallocCheck). */
typedef struct {
    char *v;
    size_t n, cap;
    int oom;
} chat_buf;

static void chat_put(chat_buf *b, const char *s, size_t len)
{
    if (b->oom) {
        return;
    }
    if (len > SIZE_MAX - b->n - 1) {
        b->oom = 1;
        return;
    }
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1) {
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        }
        b->v = reallocCheck(b->v, cap);
        b->cap = cap;
    }
    memcpy(b->v + b->n, s, len);
    b->n += len;
    b->v[b->n] = '\0';
}

static void chat_puts(chat_buf *b, const char *s)
{
    chat_put(b, s, strlen(s));
}

/* Append the text of token id ("" when id < 0). */
static void chat_put_token(chat_buf *b, const tokenizer *t, int32_t id)
{
    size_t len = 0;
    const char *s = id >= 0 ? tokenizer_token_text(t, id, &len) : NULL;
    if (s) {
        chat_put(b, s, len);
    }
}

/* Append Jinja string-literal text s[0..len), turning the escapes
 * \n \t \' \" \\ into their characters. */
static void chat_put_unescaped(chat_buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < len) {
            c = s[++i];
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        }
        chat_put(b, &c, 1);
    }
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                */

int chat_role_parse(const char *name, chat_role *out)
{
    static const char *const names[] = { "system", "user", "assistant" };
    for (int i = 0; i < 3; i++) {
        if (name && strcmp(name, names[i]) == 0) {
            *out = (chat_role)i;
            return 0;
        }
    }
    return -1;
}

static const char *chat_role_name(chat_role r)
{
    return r == CHAT_SYSTEM ? "system" : r == CHAT_USER ? "user" : "assistant";
}

/* Check the rules every family shares (chat.h). Returns 0 / -1 + err. */
static int chat_check(const chat_msg *msgs, size_t n, char *err, size_t errlen)
{
    if (n > 0 && !msgs) {
        return util_err(err, errlen, "chat: NULL message list");
    }
    for (size_t i = 0; i < n; i++) {
        chat_role r = msgs[i].role;
        if (r != CHAT_SYSTEM && r != CHAT_USER && r != CHAT_ASSISTANT) {
            return util_err(err, errlen, "chat: message %zu: unknown role %d", i, (int)r);
        }
        if (!msgs[i].content) {
            return util_err(err, errlen, "chat: message %zu: NULL content", i);
        }
        if (r == CHAT_SYSTEM && i > 0) {
            return util_err(err, errlen, "chat: message %zu: a system message must come first", i);
        }
    }
    return 0;
}

/* The families that write every message the same way: open + ROLE + mid +
 * CONTENT + close per message (ROLE system, user or assistant), then the
 * assistant's turn opened (tail). */
static void chat_render_turns(chat_buf *b, const chat_msg *msgs, size_t n, const char *open, const char *mid,
                              const char *close, const char *tail)
{
    for (size_t i = 0; i < n; i++) {
        chat_puts(b, open);
        chat_puts(b, chat_role_name(msgs[i].role));
        chat_puts(b, mid);
        chat_puts(b, msgs[i].content);
        chat_puts(b, close);
    }
    chat_puts(b, tail);
}

static void chat_render_chatml(chat_buf *b, const tokenizer *t, const chat_msg *msgs, size_t n)
{
    const char *def;
    size_t def_len;
    if ((n == 0 || msgs[0].role != CHAT_SYSTEM) &&
        chat_default_system(tokenizer_chat_template(t), &def, &def_len)) {
        chat_puts(b, "<|im_start|>system\n");
        chat_put_unescaped(b, def, def_len);
        chat_puts(b, "<|im_end|>\n");
    }
    chat_render_turns(b, msgs, n, "<|im_start|>", "\n", "<|im_end|>\n", "<|im_start|>assistant\n");
}

static void chat_render_llama3(chat_buf *b, const tokenizer *t, const chat_msg *msgs, size_t n)
{
    if (chat_template_uses(t, "bos_token")) {
        chat_put_token(b, t, tokenizer_bos(t));
    }
    chat_render_turns(b, msgs, n, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>",
                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Turns after the optional system message alternate user / assistant,
 * starting with user (Llama-2, Gemma). Returns 0 / -1 + err. */
static int chat_check_alternating(const chat_msg *msgs, size_t n, size_t first, const char *family,
                                  char *err, size_t errlen)
{
    for (size_t i = first; i < n; i++) {
        if (msgs[i].role != ((i - first) % 2 == 0 ? CHAT_USER : CHAT_ASSISTANT)) {
            return util_err(err, errlen, "chat: message %zu: %s turns must alternate "
                            "user/assistant, starting with user", i, family);
        }
    }
    return 0;
}

/* s[0..len) without leading and trailing ASCII whitespace (Jinja's trim). */
static void chat_put_trimmed(chat_buf *b, const char *s)
{
    size_t len = strlen(s);
    while (len > 0 && strchr(" \t\n\r\f\v", s[0])) {
        s++;
        len--;
    }
    while (len > 0 && strchr(" \t\n\r\f\v", s[len - 1])) {
        len--;
    }
    chat_put(b, s, len);
}

static void chat_render_phi3(chat_buf *b, const chat_msg *msgs, size_t n)
{
    chat_render_turns(b, msgs, n, "<|", "|>\n", "<|end|>\n", "<|assistant|>\n");
}

static int chat_render_gemma(chat_buf *b, const chat_msg *msgs, size_t n, char *err, size_t errlen)
{
    const char *system = n > 0 && msgs[0].role == CHAT_SYSTEM ? msgs[0].content : NULL;
    size_t first = system ? 1 : 0;
    if (chat_check_alternating(msgs, n, first, "Gemma", err, errlen) != 0) {
        return -1;
    }
    for (size_t i = first; i < n; i++) {
        chat_puts(b, msgs[i].role == CHAT_USER ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
        if (system && i == first) {
            chat_put_trimmed(b, system);
            chat_puts(b, "\n\n");
        }
        chat_put_trimmed(b, msgs[i].content);
        chat_puts(b, "<end_of_turn>\n");
    }
    chat_puts(b, "<start_of_turn>model\n");
    return 0;
}

static int chat_render_llama2(chat_buf *b, const tokenizer *t, const chat_msg *msgs, size_t n,
                              char *err, size_t errlen)
{
    const char *system = n > 0 && msgs[0].role == CHAT_SYSTEM ? msgs[0].content : NULL;
    size_t first = system ? 1 : 0;
    if (n == first || msgs[n - 1].role != CHAT_USER) {
        return util_err(err, errlen, "chat: a Llama-2 conversation must end with a user message");
    }
    if (chat_check_alternating(msgs, n, first, "Llama-2", err, errlen) != 0) {
        return -1;
    }
    int bos = chat_template_uses(t, "bos_token");
    int eos = chat_template_uses(t, "eos_token");
    for (size_t i = first; i < n; i++) {
        if (msgs[i].role == CHAT_ASSISTANT) {
            chat_puts(b, " ");
            chat_puts(b, msgs[i].content);
            chat_puts(b, " ");
            if (eos) {
                chat_put_token(b, t, tokenizer_eos(t));
            }
            continue;
        }
        if (bos) {
            chat_put_token(b, t, tokenizer_bos(t));
        }
        chat_puts(b, "[INST] ");
        if (system && i == first) {
            chat_puts(b, "<<SYS>>\n");
            chat_puts(b, system);
            chat_puts(b, "\n<</SYS>>\n\n");
        }
        chat_puts(b, msgs[i].content);
        chat_puts(b, " [/INST]");
    }
    return 0;
}

char *chat_render(const tokenizer *t, const chat_msg *msgs, size_t n, char *err, size_t errlen)
{
    chat_template_kind kind = chat_template_of(t);
    chat_buf b = {0};
    if (kind == CHAT_TEMPLATE_NONE) {
        util_err(err, errlen, "tokenizer: chat template not recognized (ChatML, Llama-2, Llama-3, Phi-3, Gemma)");
        return NULL;
    }
    if (chat_check(msgs, n, err, errlen) != 0) {
        return NULL;
    }
    switch (kind) {
    case CHAT_TEMPLATE_CHATML:
        chat_render_chatml(&b, t, msgs, n);
        break;
    case CHAT_TEMPLATE_LLAMA3:
        chat_render_llama3(&b, t, msgs, n);
        break;
    case CHAT_TEMPLATE_PHI3:
        chat_render_phi3(&b, msgs, n);
        break;
    case CHAT_TEMPLATE_GEMMA:
        if (chat_render_gemma(&b, msgs, n, err, errlen) != 0) {
            free(b.v);
            return NULL;
        }
        break;
    default:
        if (chat_render_llama2(&b, t, msgs, n, err, errlen) != 0) {
            free(b.v);
            return NULL;
        }
        break;
    }
    chat_put(&b, "", 0);                 /* an empty render is still a string */
    if (b.oom || !b.v) {
        free(b.v);
        util_err(err, errlen, CHAT_ERR_OOM);
        return NULL;
    }
    return b.v;
}

char *tokenizer_chat_prompt(const tokenizer *t, const char *system, const char *user,
                            char *err, size_t errlen)
{
    chat_msg msgs[2];
    size_t n = 0;
    if (system) {
        msgs[n++] = (chat_msg){CHAT_SYSTEM, system};
    }
    msgs[n++] = (chat_msg){CHAT_USER, user};
    return chat_render(t, msgs, n, err, errlen);
}
