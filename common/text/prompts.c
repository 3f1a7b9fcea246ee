/*
 * prompts.c - JSONL prompt files and their token ids (see prompts.h).
 */
#include "text/prompts.h"

#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "text/chat.h"
#include "text/utf8.h"
#include "util/util.h"

void prompts_free(char **texts, int n)
{
    for (int i = 0; i < n; i++) {
        free(texts[i]);
        texts[i] = NULL;
    }
}

int prompts_load_jsonl(const char *path, char **out, int max, char *err, size_t errlen)
{
    size_t len;
    char *text = util_read_file(path, &len, err, errlen);
    if (!text)
        return -1;
    int n = 0, rc = 0, line_no = 0;
    char *p = text, *end = text + len;
    while (p < end && rc == 0) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        *line_end = '\0';   /* the buffer is ours: each line a string of its own */
        line_no++;
        size_t ll = (size_t)(line_end - p);
        if (strlen(p) != ll || p[strspn(p, " \t\r")] != '\0') {   /* not blank (a NUL inside: bad) */
            /* the whole line one JSON value, nothing after it */
            cJSON *j = strlen(p) == ll ? cJSON_ParseWithOpts(p, NULL, 1) : NULL;
            const cJSON *pr = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "prompt") : NULL;
            if (!cJSON_IsString(pr)) {
                rc = util_err(err, errlen, "%s:%d: expected {\"prompt\": \"...\"}", path, line_no);
            } else if (n == max) {
                rc = util_err(err, errlen, "%s: more than %d prompts", path, max);
            } else {
                size_t sl = strlen(pr->valuestring);
                out[n] = mallocCheck(sl + 1);
                memcpy(out[n++], pr->valuestring, sl + 1);
            }
            cJSON_Delete(j);
        }
        p = line_end + 1;
    }
    free(text);
    if (rc == 0 && n == 0)
        rc = util_err(err, errlen, "%s: no prompts", path);
    if (rc != 0) {
        prompts_free(out, n);
        return -1;
    }
    return n;
}

int prompts_encode(const tokenizer *tok, char *const *texts, int n, int chat, int32_t **ids, int32_t *lens,
                   char *err, size_t errlen)
{
    char e[256];
    for (int i = 0; i < n; i++) {
        char *s = chat ? tokenizer_chat_prompt(tok, NULL, texts[i], e, sizeof e) : NULL;
        const char *src = chat ? s : texts[i];
        size_t nid = 0;
        int ok = src && tokenizer_encode(tok, src, strlen(src), tokenizer_add_bos(tok), chat, &ids[i], &nid, e,
                                         sizeof e) == 0;
        free(s);
        if (ok && nid == 0) {
            free(ids[i]);
            snprintf(e, sizeof e, "no tokens");
            ok = 0;
        }
        if (!ok) {
            for (int k = 0; k < i; k++)
                free(ids[k]);
            return util_err(err, errlen, "prompt %d: %s", i + 1, e);
        }
        lens[i] = (int32_t)nid;
    }
    return 0;
}

char *prompts_user_text(const tokenizer *tok, const char *text, const char *path, int chat, const char *system,
                        size_t *len, char *err, size_t errlen)
{
    char *raw;
    if (text) {
        raw = strdup(text);
        *len = strlen(raw);
    } else {
        raw = util_read_file(strcmp(path, "-") ? path : "/dev/stdin", len, err, errlen);
        if (!raw)
            return NULL;
    }
    size_t bad = utf8_validate(raw, *len);
    if (bad != *len) {
        util_err(err, errlen, "the prompt is not valid UTF-8 (first bad byte at offset %zu)", bad);
        free(raw);
        return NULL;
    }
    if (!chat)
        return raw;
    if (system && utf8_validate(system, strlen(system)) != strlen(system)) {
        util_err(err, errlen, "the system message is not valid UTF-8");
        free(raw);
        return NULL;
    }
    char *out = tokenizer_chat_prompt(tok, system, raw, err, errlen);
    free(raw);
    if (out)
        *len = strlen(out);
    return out;
}
