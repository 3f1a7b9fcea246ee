/*
 * schema_walk.c - random documents from the JSON matcher (decode/jschema.h),
 * for tests/test_schema.py to validate with the `jsonschema` package: the
 * matcher is held to a validator nobody here wrote, without the model.
 *
 *   schema_walk SUITE.json DOCS_PER_SCHEMA SEED > docs.jsonl
 *
 * SUITE.json is a list of {"name", "schema"} (tests/schemas/suite.json).
 * Each document is a random walk over the allowed bytes: at each step one
 * allowed byte (closing ones more likely as the text grows), stopping at
 * an accepting state with probability 1/2; walks over 4000 bytes are
 * dropped. Every document is checked here too: fed again from the start
 * it is accepted, and js_forced's text is the only continuation wherever
 * it says so. Output lines: {"name": ..., "doc": "..."}; a schema that does
 * not compile gives {"name": ..., "error": "..."}. Exit status 1 on an
 * internal inconsistency.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode/jschema.h"

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *b = malloc((size_t)len + 1);
    if (fread(b, 1, (size_t)len, f) != (size_t)len)
        len = 0;
    b[len] = '\0';
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* One random document into doc (cap); its length, or 0 when dropped. */
static size_t walk(const jschema *s, char *doc, size_t cap, int *bad)
{
    static js_state st, t, chk;
    js_start(s, &st);
    size_t n = 0;
    for (;;) {
        if (js_accepting(s, &st) && (js_finished(s, &st) || rnd() % 2 == 0))
            break;
        char forced[64];
        size_t nf = js_forced(s, &st, forced, sizeof forced);
        uint8_t ok[256];
        int n_ok = 0, n_close = 0;
        uint8_t close[8];
        for (int b = 0; b < 256; b++) {
            js_copy(&t, &st);
            if (js_step(s, &t, (uint8_t)b)) {
                ok[n_ok++] = (uint8_t)b;
                if ((b == '"' || b == '}' || b == ']' || b == ',') && n_close < 8)
                    close[n_close++] = (uint8_t)b;
            }
        }
        if (n_ok == 0) {
            fprintf(stderr, "schema_walk: a dead state after %zu bytes: %.*s\n", n, (int)n, doc);
            *bad = 1;
            return 0;
        }
        if (nf > 0 && (n_ok != 1 || ok[0] != (uint8_t)forced[0])) {
            fprintf(stderr, "schema_walk: forced '%c' but %d bytes allowed after: %.*s\n", forced[0], n_ok, (int)n, doc);
            *bad = 1;
            return 0;
        }
        uint8_t b;
        if (n_close && rnd() % 1000 < (n < 900 ? n : 900))
            b = close[rnd() % n_close];
        else
            b = ok[rnd() % n_ok];
        if (n + 1 >= cap)
            return 0;
        doc[n++] = (char)b;
        js_step(s, &st, b);
    }
    js_start(s, &chk);
    if (!js_feed(s, &chk, doc, n) || !js_accepting(s, &chk)) {
        fprintf(stderr, "schema_walk: the document is not accepted when fed again: %.*s\n", (int)n, doc);
        *bad = 1;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: schema_walk SUITE.json DOCS_PER_SCHEMA SEED\n");
        return 2;
    }
    size_t len;
    char *text = read_file(argv[1], &len);
    cJSON *suite = text ? cJSON_Parse(text) : NULL;
    if (!cJSON_IsArray(suite)) {
        fprintf(stderr, "schema_walk: cannot read %s\n", argv[1]);
        return 2;
    }
    int per = atoi(argv[2]), bad = 0;
    rng_state = strtoull(argv[3], NULL, 10) * 2 + 1;
    static char doc[4096];
    for (cJSON *c = suite->child; c; c = c->next) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
        const cJSON *sch = cJSON_GetObjectItemCaseSensitive(c, "schema");
        char *stext = cJSON_PrintUnformatted(sch);
        char err[512];
        jschema *s;
        cJSON *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "name", name->valuestring);
        if (jschema_compile(&s, stext, strlen(stext), 0, err, sizeof err) != 0) {
            cJSON_AddStringToObject(out, "error", err);
            char *line = cJSON_PrintUnformatted(out);
            puts(line);
            free(line);
        } else {
            for (int i = 0; i < per; i++) {
                size_t n = walk(s, doc, sizeof doc, &bad);
                if (!n)
                    continue;
                doc[n] = '\0';
                cJSON_DeleteItemFromObject(out, "doc");
                cJSON_AddStringToObject(out, "doc", doc);
                char *line = cJSON_PrintUnformatted(out);
                puts(line);
                free(line);
            }
            jschema_free(s);
        }
        cJSON_Delete(out);
        free(stext);
    }
    cJSON_Delete(suite);
    free(text);
    return bad;
}
