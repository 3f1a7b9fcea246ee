/*
 * gguf_walk.h - exercise everything a parsed gguf_file hands out.
 *
 * Shared by the libFuzzer target (fuzz_gguf.c) and the corpus replay test
 * (tests/test_fuzz_corpus.c): reads every key, string, array element and the
 * first block of every tensor, and cross-checks the look-ups. Under ASan any
 * pointer that escapes the image is caught. Returns a checksum (meaningless,
 * only there so the reads are not optimised away) and aborts on an
 * inconsistency.
 */
#ifndef SELFSPEC_GGUF_WALK_H
#define SELFSPEC_GGUF_WALK_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "format/gguf.h"

static uint64_t gguf_walk__bytes(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t gguf_walk__elem_size(uint32_t t)
{
    switch (t) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

/* Look the key up by name (when it is a plain C string) and call getters. */
static uint64_t gguf_walk__lookup(const gguf_file *f, const gguf_kv *kv)
{
    char key[256];
    uint64_t u = 0, h = 0;
    uint32_t u32 = 0;
    int64_t i = 0;
    float x = 0.0f;
    int b = 0;
    gguf_str s = { 0 };
    if (kv->key.len == 0 || kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len))
        return 0;
    memcpy(key, kv->key.ptr, kv->key.len);
    key[kv->key.len] = '\0';
    if (gguf_find_kv(f, key) != kv)
        abort();
    h += (uint64_t)gguf_get_u64(f, key, &u) + u;
    h += (uint64_t)gguf_get_i64(f, key, &i) + (uint64_t)i;
    h += (uint64_t)gguf_get_u32(f, key, &u32) + u32;
    h += (uint64_t)gguf_get_f32(f, key, &x) + (x > 0);
    h += (uint64_t)gguf_get_bool(f, key, &b) + (uint64_t)b;
    if (gguf_get_str(f, key, &s) == 0)
        h += gguf_walk__bytes(s.ptr, s.len);
    return h;
}

static uint64_t gguf_walk__kv(const gguf_file *f, const gguf_kv *kv)
{
    uint64_t h = gguf_walk__bytes(kv->key.ptr, kv->key.len);
    if (kv->type == GGUF_VT_STRING)
        h += gguf_walk__bytes(kv->v.str.ptr, kv->v.str.len);
    if (kv->type == GGUF_VT_ARRAY) {
        if (kv->arr_type == GGUF_VT_STRING) {
            for (uint64_t j = 0; j < kv->arr_count; j++)
                h += gguf_walk__bytes(kv->arr_strs[j].ptr, kv->arr_strs[j].len);
        } else {
            uint64_t es = gguf_walk__elem_size(kv->arr_type);
            if (es == 0)
                abort();
            h += gguf_walk__bytes(kv->arr_data, kv->arr_count * es);
        }
    }
    return h + gguf_walk__lookup(f, kv);
}

static uint64_t gguf_walk__tensor(const gguf_file *f, const gguf_tensor *t)
{
    float y[256];
    uint32_t be = 0, bb = 0;
    if (gguf_find_tensor(f, t->name) != t || gguf_type_block(t->type, &be, &bb) != 0)
        abort();
    if (t->n_bytes < bb || gguf_dequantize(t->type, t->data, y, be) != 0)
        abort();
    uint64_t h = gguf_walk__bytes(t->data, bb);
    /* the last byte of the tensor must be readable too */
    h += ((const uint8_t *)t->data)[t->n_bytes - 1];
    for (uint32_t i = 0; i < be; i++)
        h += (y[i] > 0.0f);
    return h;
}

static uint64_t gguf_walk(const gguf_file *f)
{
    uint64_t h = gguf_version(f);
    for (uint64_t i = 0; i < gguf_kv_count(f); i++)
        h += gguf_walk__kv(f, gguf_kv_at(f, i));
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++)
        h += gguf_walk__tensor(f, gguf_tensor_at(f, i));
    return h;
}

#endif
