/*
 * schema_walk.h - what fuzz_schema does with one input, shared with its
 * replay in tests/test_jschema.c: the input is a schema text; it must
 * compile or be refused with a message. A compiled schema is then walked:
 * the input's bytes, reused as choices, pick allowed bytes for up to 2048
 * steps, and at each step the forced text must be the only continuation
 * and an accepting state must stay accepting when fed nothing.
 */
#ifndef SELFSPEC_SCHEMA_WALK_H
#define SELFSPEC_SCHEMA_WALK_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode/jschema.h"

#define SW_CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* 0: refused, 1: compiled and walked. */
static inline int schema_walk_one(const uint8_t *data, size_t size)
{
    char err[512] = "";
    jschema *s = NULL;
    int any = size > 0 && data[0] == '!';   /* "!" first: the json_object matcher */
    if (jschema_compile(&s, (const char *)data, size, any, err, sizeof err) != 0) {
        SW_CHECK(s == NULL && err[0] != '\0');
        return 0;
    }
    static js_state st, t;
    js_start(s, &st);
    size_t choice = 0;
    for (int step = 0; step < 2048; step++) {
        char forced[16];
        size_t nf = js_forced(s, &st, forced, sizeof forced);
        int allowed[256], n = 0;
        for (int b = 0; b < 256; b++) {
            js_copy(&t, &st);
            if (js_step(s, &t, (uint8_t)b))
                allowed[n++] = b;
        }
        SW_CHECK(nf == 0 || (n == 1 && allowed[0] == (uint8_t)forced[0]));
        SW_CHECK(n > 0 || js_accepting(s, &st));   /* never a dead end */
        if (n == 0)
            break;
        uint8_t pick = size ? data[choice++ % size] : 0;
        SW_CHECK(js_step(s, &st, (uint8_t)allowed[pick % n]));
    }
    jschema_free(s);
    return 1;
}

#endif
