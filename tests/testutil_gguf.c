/*
 * testutil_gguf.c - in-memory GGUF writer and reference quantizers for tests.
 * See testutil_gguf.h. Metadata pairs are serialised as they are added into a
 * growable byte buffer; tensors are kept as (info, data copy) until the image
 * is built. All multi-byte values are written little-endian byte by byte.
 */
#include "testutil_gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *p;
    size_t len, cap;
} tgguf__buf;

typedef struct {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[8];
    uint8_t *data;
    size_t nbytes;
    uint64_t offset_override;
    int has_override;
} tgguf__tensor;

struct tgguf {
    uint32_t version, alignment;
    uint64_t n_kv;
    tgguf__buf kv;
    tgguf__tensor *tensors;
    size_t n_tensors, cap_tensors;
};

static void tgguf__die(const char *msg)
{
    fprintf(stderr, "testutil_gguf: %s\n", msg);
    abort();
}

static void *tgguf__xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        tgguf__die("out of memory");
    return q;
}

/* ----------------------------------------------------------- byte buffer */

static void tgguf__put(tgguf__buf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = tgguf__xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void tgguf__put_le(tgguf__buf *b, uint64_t v, int nbytes)
{
    uint8_t tmp[8];
    for (int i = 0; i < nbytes; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    tgguf__put(b, tmp, (size_t)nbytes);
}

static void tgguf__put_zeros(tgguf__buf *b, size_t n)
{
    static const uint8_t z[64];
    while (n) {
        size_t k = n < sizeof z ? n : sizeof z;
        tgguf__put(b, z, k);
        n -= k;
    }
}

static void tgguf__put_str(tgguf__buf *b, const char *s, size_t len)
{
    tgguf__put_le(b, len, 8);
    tgguf__put(b, s, len);
}

static uint32_t tgguf__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static uint64_t tgguf__f64_bits(double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ------------------------------------------------------------- lifecycle */

tgguf *tgguf_new(void)
{
    tgguf *g = calloc(1, sizeof *g);
    if (!g)
        tgguf__die("out of memory");
    g->version = 3;
    g->alignment = 32;
    return g;
}

void tgguf_free(tgguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_tensors; i++) {
        free(g->tensors[i].name);
        free(g->tensors[i].data);
    }
    free(g->tensors);
    free(g->kv.p);
    free(g);
}

void tgguf_set_version(tgguf *g, uint32_t version) { g->version = version; }

void tgguf_set_alignment(tgguf *g, uint32_t alignment)
{
    if (alignment == 0)
        tgguf__die("alignment 0");
    g->alignment = alignment;
}

/* ---------------------------------------------------------------- kv pairs */

/* Start a pair: key + type. */
static void tgguf__kv_head(tgguf *g, const char *key, uint32_t type)
{
    tgguf__put_str(&g->kv, key, strlen(key));
    tgguf__put_le(&g->kv, type, 4);
    g->n_kv++;
}

static void tgguf__kv_scalar(tgguf *g, const char *key, uint32_t type, uint64_t bits, int n)
{
    tgguf__kv_head(g, key, type);
    tgguf__put_le(&g->kv, bits, n);
}

void tgguf_kv_u8(tgguf *g, const char *k, uint8_t v) { tgguf__kv_scalar(g, k, GGUF_VT_U8, v, 1); }
void tgguf_kv_i8(tgguf *g, const char *k, int8_t v) { tgguf__kv_scalar(g, k, GGUF_VT_I8, (uint8_t)v, 1); }
void tgguf_kv_u16(tgguf *g, const char *k, uint16_t v) { tgguf__kv_scalar(g, k, GGUF_VT_U16, v, 2); }
void tgguf_kv_i16(tgguf *g, const char *k, int16_t v) { tgguf__kv_scalar(g, k, GGUF_VT_I16, (uint16_t)v, 2); }
void tgguf_kv_i32(tgguf *g, const char *k, int32_t v) { tgguf__kv_scalar(g, k, GGUF_VT_I32, (uint32_t)v, 4); }
void tgguf_kv_u64(tgguf *g, const char *k, uint64_t v) { tgguf__kv_scalar(g, k, GGUF_VT_U64, v, 8); }
void tgguf_kv_i64(tgguf *g, const char *k, int64_t v) { tgguf__kv_scalar(g, k, GGUF_VT_I64, (uint64_t)v, 8); }
void tgguf_kv_f32(tgguf *g, const char *k, float v) { tgguf__kv_scalar(g, k, GGUF_VT_F32, tgguf__f32_bits(v), 4); }
void tgguf_kv_f64(tgguf *g, const char *k, double v) { tgguf__kv_scalar(g, k, GGUF_VT_F64, tgguf__f64_bits(v), 8); }
void tgguf_kv_bool(tgguf *g, const char *k, int v) { tgguf__kv_scalar(g, k, GGUF_VT_BOOL, v ? 1 : 0, 1); }

void tgguf_kv_u32(tgguf *g, const char *key, uint32_t v)
{
    tgguf__kv_scalar(g, key, GGUF_VT_U32, v, 4);
    if (strcmp(key, "general.alignment") == 0 && v != 0)
        g->alignment = v;
}

void tgguf_kv_str(tgguf *g, const char *key, const char *s)
{
    tgguf_kv_strn(g, key, s, strlen(s));
}

void tgguf_kv_strn(tgguf *g, const char *key, const char *s, size_t len)
{
    tgguf__kv_head(g, key, GGUF_VT_STRING);
    tgguf__put_str(&g->kv, s, len);
}

static int tgguf__vsize(uint32_t t)
{
    switch (t) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

void tgguf_kv_arr(tgguf *g, const char *key, uint32_t elem_type, const void *elems, size_t n)
{
    int sz = tgguf__vsize(elem_type);
    const uint8_t *e = elems;
    if (!sz)
        tgguf__die("tgguf_kv_arr: element type must be fixed-size");
    tgguf__kv_head(g, key, GGUF_VT_ARRAY);
    tgguf__put_le(&g->kv, elem_type, 4);
    tgguf__put_le(&g->kv, n, 8);
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        switch (sz) {       /* host value -> bits, then little-endian */
        case 1: v = e[i]; break;
        case 2: { uint16_t x; memcpy(&x, e + 2 * i, 2); v = x; break; }
        case 4: { uint32_t x; memcpy(&x, e + 4 * i, 4); v = x; break; }
        default: memcpy(&v, e + 8 * i, 8); break;
        }
        tgguf__put_le(&g->kv, v, sz);
    }
}

void tgguf_kv_arr_str(tgguf *g, const char *key, const char *const *strs, size_t n)
{
    tgguf__kv_head(g, key, GGUF_VT_ARRAY);
    tgguf__put_le(&g->kv, GGUF_VT_STRING, 4);
    tgguf__put_le(&g->kv, n, 8);
    for (size_t i = 0; i < n; i++)
        tgguf__put_str(&g->kv, strs[i], strlen(strs[i]));
}

void tgguf_kv_arr_i32(tgguf *g, const char *key, const int32_t *v, size_t n)
{
    tgguf_kv_arr(g, key, GGUF_VT_I32, v, n);
}

void tgguf_kv_arr_u32(tgguf *g, const char *key, const uint32_t *v, size_t n)
{
    tgguf_kv_arr(g, key, GGUF_VT_U32, v, n);
}

void tgguf_kv_arr_f32(tgguf *g, const char *key, const float *v, size_t n)
{
    tgguf_kv_arr(g, key, GGUF_VT_F32, v, n);
}

void tgguf_kv_raw(tgguf *g, const char *key, uint32_t type, const void *payload, size_t n)
{
    tgguf__kv_head(g, key, type);
    tgguf__put(&g->kv, payload, n);
}

/* ----------------------------------------------------------------- tensors */

size_t tgguf_tensor(tgguf *g, const char *name, uint32_t type, uint32_t n_dims,
                    const uint64_t *ne, const void *data, size_t nbytes)
{
    tgguf__tensor *t;
    if (n_dims > 8)
        tgguf__die("tgguf_tensor: n_dims > 8");
    if (g->n_tensors == g->cap_tensors) {
        g->cap_tensors = g->cap_tensors ? 2 * g->cap_tensors : 8;
        g->tensors = tgguf__xrealloc(g->tensors, g->cap_tensors * sizeof *g->tensors);
    }
    t = &g->tensors[g->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = calloc(nbytes ? nbytes : 1, 1);
    if (!t->name || !t->data)
        tgguf__die("out of memory");
    if (data && nbytes)
        memcpy(t->data, data, nbytes);
    t->nbytes = nbytes;
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++)
        t->ne[d] = ne[d];
    return g->n_tensors++;
}

size_t tgguf_tensor_f32(tgguf *g, const char *name, uint32_t type, uint32_t n_dims,
                        const uint64_t *ne, const float *values)
{
    uint64_t n = 1;
    size_t nbytes, idx;
    for (uint32_t d = 0; d < n_dims; d++)
        n *= ne[d];
    void *q = tgguf_quantize_alloc(type, values, n, &nbytes);
    idx = tgguf_tensor(g, name, type, n_dims, ne, q, nbytes);
    free(q);
    return idx;
}

void tgguf_set_tensor_offset(tgguf *g, size_t idx, uint64_t offset)
{
    if (idx >= g->n_tensors)
        tgguf__die("tgguf_set_tensor_offset: bad index");
    g->tensors[idx].offset_override = offset;
    g->tensors[idx].has_override = 1;
}

/* ------------------------------------------------------------------ image */

static size_t tgguf__pad(size_t pos, uint32_t align)
{
    return (align - pos % align) % align;
}

static size_t tgguf__info_size(const tgguf__tensor *t)
{
    return 8 + strlen(t->name) + 4 + 8 * (size_t)t->n_dims + 4 + 8;
}

size_t tgguf_tensor_info_pos(tgguf *g, size_t idx)
{
    size_t pos = 24 + g->kv.len;
    for (size_t i = 0; i < idx && i < g->n_tensors; i++)
        pos += tgguf__info_size(&g->tensors[i]);
    return pos;
}

size_t tgguf_data_pos(tgguf *g)
{
    size_t pos = tgguf_tensor_info_pos(g, g->n_tensors);
    return pos + tgguf__pad(pos, g->alignment);
}

void *tgguf_image(tgguf *g, size_t *size)
{
    tgguf__buf b = { 0 };
    uint64_t off = 0;
    tgguf__put(&b, "GGUF", 4);
    tgguf__put_le(&b, g->version, 4);
    tgguf__put_le(&b, g->n_tensors, 8);
    tgguf__put_le(&b, g->n_kv, 8);
    tgguf__put(&b, g->kv.p, g->kv.len);
    for (size_t i = 0; i < g->n_tensors; i++) {
        const tgguf__tensor *t = &g->tensors[i];
        tgguf__put_str(&b, t->name, strlen(t->name));
        tgguf__put_le(&b, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++)
            tgguf__put_le(&b, t->ne[d], 8);
        tgguf__put_le(&b, t->type, 4);
        tgguf__put_le(&b, t->has_override ? t->offset_override : off, 8);
        off += t->nbytes + tgguf__pad(t->nbytes, g->alignment);
    }
    tgguf__put_zeros(&b, tgguf__pad(b.len, g->alignment));
    for (size_t i = 0; i < g->n_tensors; i++) {
        const tgguf__tensor *t = &g->tensors[i];
        tgguf__put(&b, t->data, t->nbytes);
        if (i + 1 < g->n_tensors)
            tgguf__put_zeros(&b, tgguf__pad(t->nbytes, g->alignment));
    }
    *size = b.len;
    return b.p;
}

int tgguf_write(tgguf *g, const char *path)
{
    size_t size;
    int rc = -1;
    void *img = tgguf_image(g, &size);
    FILE *fp = fopen(path, "wb");
    if (!fp)
        goto done;
    if (fwrite(img, 1, size, fp) == size)
        rc = 0;
    if (fclose(fp) != 0)
        rc = -1;
done:
    free(img);
    return rc;
}

/* ------------------------------------------------------------ quantizers */

size_t tgguf_type_nbytes(uint32_t type, uint64_t n)
{
    uint32_t be, bb;
    if (gguf_type_block(type, &be, &bb) || n % be != 0)
        return 0;
    return (size_t)(n / be * bb);
}

uint16_t tgguf_f32_to_bf16(float f)
{
    uint32_t u = tgguf__f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 64);              /* quiet NaN */
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

static void tgguf__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ggml quantize_row_q8_0_ref */
static void tgguf__q8_0(const float *x, uint8_t *b)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    tgguf__put16(b, gguf_f32_to_f16(d));
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

/* ggml quantize_row_q4_0_ref */
static void tgguf__q4_0(const float *x, uint8_t *b)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    tgguf__put16(b, gguf_f32_to_f16(d));
    for (int j = 0; j < 16; j++) {
        int q0 = (int)(int8_t)(x[j] * id + 8.5f), q1 = (int)(int8_t)(x[j + 16] * id + 8.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

/* ggml quantize_row_q4_1_ref */
static void tgguf__q4_1(const float *x, uint8_t *b)
{
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; j++) {
        mn = fminf(mn, x[j]);
        mx = fmaxf(mx, x[j]);
    }
    float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    tgguf__put16(b, gguf_f32_to_f16(d));
    tgguf__put16(b + 2, gguf_f32_to_f16(mn));
    for (int j = 0; j < 16; j++) {
        int q0 = (int)(int8_t)((x[j] - mn) * id + 0.5f);
        int q1 = (int)(int8_t)((x[j + 16] - mn) * id + 0.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b[4 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

size_t tgguf_quantize(uint32_t type, const float *src, uint64_t n, void *dst)
{
    size_t nbytes = tgguf_type_nbytes(type, n);
    uint8_t *o = dst;
    if (!nbytes && n)
        tgguf__die("tgguf_quantize: unsupported type or n not a multiple of the block");
    for (uint64_t i = 0; i < n; i++) {
        if (type == GGUF_TT_F32) {
            uint32_t u = tgguf__f32_bits(src[i]);
            for (int k = 0; k < 4; k++)
                o[4 * i + k] = (uint8_t)(u >> (8 * k));
        } else if (type == GGUF_TT_F16) {
            tgguf__put16(o + 2 * i, gguf_f32_to_f16(src[i]));
        } else if (type == GGUF_TT_BF16) {
            tgguf__put16(o + 2 * i, tgguf_f32_to_bf16(src[i]));
        } else if (i % 32 == 0) {
            uint8_t *b = o + i / 32 * tgguf_type_nbytes(type, 32);
            if (type == GGUF_TT_Q8_0)
                tgguf__q8_0(src + i, b);
            else if (type == GGUF_TT_Q4_0)
                tgguf__q4_0(src + i, b);
            else if (type == GGUF_TT_Q4_1)
                tgguf__q4_1(src + i, b);
            else
                tgguf__die("tgguf_quantize: Q4_K/Q6_K not supported (use tgguf_random_blocks)");
        }
    }
    return nbytes;
}

void *tgguf_quantize_alloc(uint32_t type, const float *src, uint64_t n, size_t *nbytes)
{
    size_t sz = tgguf_type_nbytes(type, n);
    void *p;
    if (!sz && n)
        tgguf__die("tgguf_quantize_alloc: unsupported type or bad n");
    p = tgguf__xrealloc(NULL, sz);
    *nbytes = tgguf_quantize(type, src, n, p);
    return p;
}

/* ----------------------------------------------------------- random blocks */

static uint64_t tgguf__rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform float in [0, 1). */
static float tgguf__rngf(uint64_t *s)
{
    return (float)(tgguf__rng(s) >> 40) * 0x1p-24f;
}

/* Small positive f16 scale in about [1e-3, 3e-2]. */
static uint16_t tgguf__rng_scale(uint64_t *s)
{
    return gguf_f32_to_f16(1e-3f + 0.029f * tgguf__rngf(s));
}

static void tgguf__rng_bytes(uint64_t *s, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(tgguf__rng(s) >> 56);
}

/* One random block of a quantized type (bb bytes). */
static void tgguf__random_block(uint32_t type, uint64_t *s, uint8_t *b, uint32_t bb)
{
    tgguf__rng_bytes(s, b, bb);
    switch (type) {
    case GGUF_TT_Q4_0: case GGUF_TT_Q8_0: case GGUF_TT_Q5_0: case GGUF_TT_IQ4_NL: case GGUF_TT_IQ4_XS:
        tgguf__put16(b, tgguf__rng_scale(s));
        break;
    case GGUF_TT_Q4_1: case GGUF_TT_Q4_K: case GGUF_TT_Q5_1: case GGUF_TT_Q5_K:
        tgguf__put16(b, tgguf__rng_scale(s));
        tgguf__put16(b + 2, tgguf__rng_scale(s));
        break;
    case GGUF_TT_Q2_K:
        tgguf__put16(b + 80, tgguf__rng_scale(s));
        tgguf__put16(b + 82, tgguf__rng_scale(s));
        break;
    case GGUF_TT_Q3_K:
        tgguf__put16(b + 108, tgguf__rng_scale(s));
        break;
    case GGUF_TT_Q6_K:
        tgguf__put16(b + 208, tgguf__rng_scale(s));
        break;
    default:
        break;
    }
}

size_t tgguf_random_blocks(uint32_t type, uint64_t seed, uint64_t n, void *dst)
{
    uint32_t be, bb;
    uint64_t s = seed;
    uint8_t *o = dst;
    if (gguf_type_block(type, &be, &bb) || n % be != 0)
        tgguf__die("tgguf_random_blocks: unsupported type or bad n");
    if (be == 1) {
        for (uint64_t i = 0; i < n; i++) {
            float v = 2.0f * tgguf__rngf(&s) - 1.0f;
            tgguf_quantize(type, &v, 1, o + i * bb);
        }
    } else {
        for (uint64_t i = 0; i < n / be; i++)
            tgguf__random_block(type, &s, o + i * bb, bb);
    }
    return (size_t)(n / be * bb);
}
