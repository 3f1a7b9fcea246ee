/*
 * gguf.c - reader for GGUF model files (versions 2 and 3, little-endian).
 *
 * Layout of a GGUF file:
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset },
 *   padding up to general.alignment (default 32), tensor data.
 * Strings are { u64 len, bytes }; arrays are { u32 elem_type, u64 count, elems }.
 *
 * Everything is read through a bounds-checked cursor (gguf__cur). Every count
 * read from the file is bounded by the bytes that remain before anything is
 * allocated, every size computation is overflow-checked, and every tensor's
 * data range is checked against the file size, the alignment and the other
 * tensors. On any violation, parsing stops with a one-line message naming the
 * problem and where it is (key, tensor name, byte offset).
 *
 * Multi-byte values are assembled byte by byte, so the reader does not depend
 * on the host's byte order or on the alignment of values inside the mapping.
 */
#include "format/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#define GGUF_MAGIC 0x46554747u            /* "GGUF" read as little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_KEY_LEN 65535u
#define GGUF_MAX_NAME_LEN 127u
#define GGUF_MAX_DIMS 4u
/* Smallest encodings, used to bound counts before allocating. */
#define GGUF_MIN_KV_BYTES 14u       /* u64 len + 1 key byte + u32 type + 1 value byte */
#define GGUF_MIN_TENSOR_BYTES 33u   /* u64 len + 1 + u32 n_dims + u64 ne + u32 type + u64 off */

struct gguf_file {
    const uint8_t *base;
    uint64_t size;
    void *map;                    /* non-NULL when we own an mmap */
    size_t map_len;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    gguf_kv *kvs;
    uint64_t *kv_sorted;          /* indices into kvs, sorted by key */
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint64_t *tn_sorted;          /* indices into tensors, sorted by name */
};

/* Bounds-checked reader over [base, base + size). */
typedef struct {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t errlen;
} gguf__cur;

/* ------------------------------------------------------------------ errors */

/* Report an error through the cursor (util_err into the cursor's err
 * buffer); always returns -1. */
__attribute__((format(printf, 2, 3)))
static int gguf__cfail(gguf__cur *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    util_verr(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Prefix the message already in the cursor's error buffer with context. */
__attribute__((format(printf, 2, 3)))
static void gguf__context(gguf__cur *c, const char *fmt, ...)
{
    char msg[512], pre[192];
    va_list ap;
    if (!c->err || c->errlen == 0)
        return;
    va_start(ap, fmt);
    util_verr(pre, sizeof pre, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s", c->err);
    snprintf(c->err, c->errlen, "%s%s", pre, msg);
}

/* ------------------------------------------------------------ byte helpers */

static uint16_t gguf__le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t gguf__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t gguf__le64(const uint8_t *p)
{
    return (uint64_t)gguf__le32(p) | ((uint64_t)gguf__le32(p + 4) << 32);
}

static float gguf__f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double gguf__f64_bits(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* ------------------------------------------------------------------ cursor */

static uint64_t gguf__remaining(const gguf__cur *c)
{
    return c->size - c->pos;
}

/* Take n bytes at the cursor (*p points at them) and advance. `what` names the
 * field for the error message. */
static int gguf__take(gguf__cur *c, uint64_t n, const uint8_t **p, const char *what)
{
    if (n > gguf__remaining(c))
        return gguf__cfail(c, "truncated file: %s at offset %llu needs %llu bytes, "
                           "only %llu left", what, (unsigned long long)c->pos,
                           (unsigned long long)n, (unsigned long long)gguf__remaining(c));
    *p = c->base + c->pos;
    c->pos += n;
    return 0;
}

static int gguf__u32(gguf__cur *c, uint32_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (gguf__take(c, 4, &p, what))
        return -1;
    *v = gguf__le32(p);
    return 0;
}

static int gguf__u64(gguf__cur *c, uint64_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (gguf__take(c, 8, &p, what))
        return -1;
    *v = gguf__le64(p);
    return 0;
}

/* Read a GGUF string: u64 length then bytes; the length is checked against
 * both `max_len` and the bytes remaining. */
static int gguf__str(gguf__cur *c, gguf_str *s, uint64_t max_len, const char *what)
{
    uint64_t at = c->pos, len;
    const uint8_t *p = NULL;
    if (gguf__u64(c, &len, what))
        return -1;
    if (len > max_len)
        return gguf__cfail(c, "%s at offset %llu: length %llu exceeds limit %llu", what,
                           (unsigned long long)at, (unsigned long long)len,
                           (unsigned long long)max_len);
    if (len > gguf__remaining(c))
        return gguf__cfail(c, "%s at offset %llu: length %llu past end of file "
                           "(%llu bytes left)", what, (unsigned long long)at,
                           (unsigned long long)len, (unsigned long long)gguf__remaining(c));
    if (gguf__take(c, len, &p, what))
        return -1;
    s->ptr = (const char *)p;
    s->len = len;
    return 0;
}

/* ------------------------------------------------------------ value types */

/* Size in bytes of a fixed-size metadata type; 0 for string, array, unknown. */
static uint32_t gguf__vtype_size(uint32_t t)
{
    switch (t) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

static bool gguf__vtype_known(uint32_t t)
{
    return t <= GGUF_VT_F64;
}

/* Decode a fixed-size scalar of type t at p into kv->v. Returns -1 (without
 * a message) for an invalid bool. */
static int gguf__decode_scalar(uint32_t t, const uint8_t *p, gguf_kv *kv)
{
    switch (t) {
    case GGUF_VT_U8: kv->v.u64 = p[0]; break;
    case GGUF_VT_I8: kv->v.i64 = (int8_t)p[0]; break;
    case GGUF_VT_BOOL:
        if (p[0] > 1)
            return -1;
        kv->v.u64 = p[0];
        break;
    case GGUF_VT_U16: kv->v.u64 = gguf__le16(p); break;
    case GGUF_VT_I16: kv->v.i64 = (int16_t)gguf__le16(p); break;
    case GGUF_VT_U32: kv->v.u64 = gguf__le32(p); break;
    case GGUF_VT_I32: kv->v.i64 = (int32_t)gguf__le32(p); break;
    case GGUF_VT_F32: kv->v.f64 = gguf__f32_bits(gguf__le32(p)); break;
    case GGUF_VT_U64: kv->v.u64 = gguf__le64(p); break;
    case GGUF_VT_I64: kv->v.i64 = (int64_t)gguf__le64(p); break;
    case GGUF_VT_F64: kv->v.f64 = gguf__f64_bits(gguf__le64(p)); break;
    default: return -1;
    }
    return 0;
}

/* Printable, truncated form of a key for error messages. */
static const char *gguf__keyname(const gguf_str *k, char *buf, size_t n)
{
    size_t len = k->len < n - 1 ? (size_t)k->len : n - 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)k->ptr[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    buf[len] = '\0';
    return buf;
}

/* ---------------------------------------------------------------- kv parse */

/* Parse the string elements of an array whose header has been read. */
static int gguf__parse_str_array(gguf__cur *c, gguf_kv *kv, const char *key)
{
    if (kv->arr_count > gguf__remaining(c) / 8)
        return gguf__cfail(c, "key '%s': string array count %llu too large for the "
                           "%llu bytes left (offset %llu)", key,
                           (unsigned long long)kv->arr_count,
                           (unsigned long long)gguf__remaining(c), (unsigned long long)c->pos);
    kv->arr_strs = calloc(kv->arr_count ? (size_t)kv->arr_count : 1, sizeof *kv->arr_strs);
    if (!kv->arr_strs)
        return gguf__cfail(c, "key '%s': out of memory for %llu strings", key,
                           (unsigned long long)kv->arr_count);
    for (uint64_t i = 0; i < kv->arr_count; i++) {
        if (gguf__str(c, &kv->arr_strs[i], UINT64_MAX, "array string")) {
            gguf__context(c, "key '%s', element %llu: ", key, (unsigned long long)i);
            return -1;
        }
    }
    return 0;
}

/* Parse an array value (element type, count, elements) into kv. */
static int gguf__parse_array(gguf__cur *c, gguf_kv *kv, const char *key)
{
    uint64_t at = c->pos;
    const uint8_t *p = NULL;
    if (gguf__u32(c, &kv->arr_type, "array element type") ||
        gguf__u64(c, &kv->arr_count, "array count"))
        return -1;
    if (kv->arr_type == GGUF_VT_ARRAY)
        return gguf__cfail(c, "key '%s': nested arrays are not supported (offset %llu)",
                           key, (unsigned long long)at);
    if (!gguf__vtype_known(kv->arr_type))
        return gguf__cfail(c, "key '%s': unknown array element type %u (offset %llu)",
                           key, kv->arr_type, (unsigned long long)at);
    if (kv->arr_type == GGUF_VT_STRING)
        return gguf__parse_str_array(c, kv, key);
    uint32_t esz = gguf__vtype_size(kv->arr_type);
    if (kv->arr_count > gguf__remaining(c) / esz)
        return gguf__cfail(c, "key '%s': array of %llu elements of %u bytes past end "
                           "of file (offset %llu, %llu bytes left)", key,
                           (unsigned long long)kv->arr_count, esz, (unsigned long long)at,
                           (unsigned long long)gguf__remaining(c));
    if (gguf__take(c, kv->arr_count * esz, &p, "array data"))
        return -1;
    kv->arr_data = p;
    if (kv->arr_type == GGUF_VT_BOOL) {
        for (uint64_t i = 0; i < kv->arr_count; i++)
            if (p[i] > 1)
                return gguf__cfail(c, "key '%s': invalid bool value %u at element %llu",
                                   key, p[i], (unsigned long long)i);
    }
    return 0;
}

/* Parse the value of kv (whose key and type are already read). */
static int gguf__parse_value(gguf__cur *c, gguf_kv *kv, const char *key)
{
    uint64_t at = c->pos;
    const uint8_t *p = NULL;
    if (kv->type == GGUF_VT_STRING)
        return gguf__str(c, &kv->v.str, UINT64_MAX, "string value");
    if (kv->type == GGUF_VT_ARRAY)
        return gguf__parse_array(c, kv, key);
    uint32_t sz = gguf__vtype_size(kv->type);
    if (sz == 0)
        return gguf__cfail(c, "key '%s': unknown value type %u (offset %llu)", key,
                           kv->type, (unsigned long long)at - 4);
    if (gguf__take(c, sz, &p, "value"))
        return -1;
    if (gguf__decode_scalar(kv->type, p, kv))
        return gguf__cfail(c, "key '%s': invalid bool value %u (offset %llu)", key, p[0],
                           (unsigned long long)at);
    return 0;
}

/* Parse one key/value pair. */
static int gguf__parse_kv(gguf__cur *c, gguf_kv *kv, uint64_t index)
{
    char key[96];
    uint64_t at = c->pos;
    if (gguf__str(c, &kv->key, GGUF_MAX_KEY_LEN, "key"))
        return -1;
    if (kv->key.len == 0)
        return gguf__cfail(c, "metadata pair %llu at offset %llu: empty key",
                           (unsigned long long)index, (unsigned long long)at);
    gguf__keyname(&kv->key, key, sizeof key);
    if (gguf__u32(c, &kv->type, "value type") || gguf__parse_value(c, kv, key)) {
        /* Messages from the cursor do not know the key: add it. */
        if (c->err && c->errlen && strncmp(c->err, "key '", 5) != 0)
            gguf__context(c, "key '%s': ", key);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------- sorting */

/* Order a key against b[0..blen) bytewise, shorter first on a tie (memcmp order). */
static int gguf__key_cmp(const gguf_str *a, const char *b, size_t blen)
{
    size_t n = a->len < blen ? (size_t)a->len : blen;
    int r = memcmp(a->ptr, b, n);
    if (r)
        return r;
    return a->len < blen ? -1 : a->len > blen ? 1 : 0;
}

/* qsort_r comparators over index arrays; arg is the gguf_file. */
static int gguf__kv_idx_cmp(const void *pa, const void *pb, void *arg)
{
    const gguf_file *f = arg;
    const gguf_str *b = &f->kvs[*(const uint64_t *)pb].key;
    return gguf__key_cmp(&f->kvs[*(const uint64_t *)pa].key, b->ptr, (size_t)b->len);
}

static int gguf__tn_idx_cmp(const void *pa, const void *pb, void *arg)
{
    const gguf_file *f = arg;
    return strcmp(f->tensors[*(const uint64_t *)pa].name,
                  f->tensors[*(const uint64_t *)pb].name);
}

static int gguf__off_idx_cmp(const void *pa, const void *pb, void *arg)
{
    const gguf_file *f = arg;
    uint64_t a = f->tensors[*(const uint64_t *)pa].offset;
    uint64_t b = f->tensors[*(const uint64_t *)pb].offset;
    return a < b ? -1 : a > b ? 1 : 0;
}

/* Allocate an identity index array of n entries, sorted with cmp. */
static uint64_t *gguf__sorted_index(gguf_file *f, uint64_t n,
                                    int (*cmp)(const void *, const void *, void *))
{
    uint64_t *idx = malloc((n ? (size_t)n : 1) * sizeof *idx);
    if (!idx)
        return NULL;
    for (uint64_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, (size_t)n, sizeof *idx, cmp, f);
    return idx;
}

/* ------------------------------------------------------------ header + kv */

/* Parse magic, version and counts; bound the counts by the file size. */
static int gguf__parse_header(gguf__cur *c, gguf_file *f)
{
    uint32_t magic;
    if (gguf__u32(c, &magic, "magic"))
        return -1;
    if (magic != GGUF_MAGIC)
        return gguf__cfail(c, "bad magic 0x%08x at offset 0 (expected \"GGUF\")", magic);
    if (gguf__u32(c, &f->version, "version"))
        return -1;
    if (f->version != 2 && f->version != 3)
        return gguf__cfail(c, "unsupported GGUF version %u (only 2 and 3 are supported)",
                           f->version);
    if (gguf__u64(c, &f->n_tensors, "tensor count") || gguf__u64(c, &f->n_kv, "kv count"))
        return -1;
    if (f->n_kv > gguf__remaining(c) / GGUF_MIN_KV_BYTES)
        return gguf__cfail(c, "kv count %llu too large for a file of %llu bytes",
                           (unsigned long long)f->n_kv, (unsigned long long)c->size);
    if (f->n_tensors > gguf__remaining(c) / GGUF_MIN_TENSOR_BYTES)
        return gguf__cfail(c, "tensor count %llu too large for a file of %llu bytes",
                           (unsigned long long)f->n_tensors, (unsigned long long)c->size);
    return 0;
}

/* Parse all key/value pairs, reject duplicate keys, build the key index. */
static int gguf__parse_kvs(gguf__cur *c, gguf_file *f)
{
    char key[96];
    f->kvs = calloc(f->n_kv ? (size_t)f->n_kv : 1, sizeof *f->kvs);
    if (!f->kvs)
        return gguf__cfail(c, "out of memory for %llu metadata pairs",
                           (unsigned long long)f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf__parse_kv(c, &f->kvs[i], i))
            return -1;
    f->kv_sorted = gguf__sorted_index(f, f->n_kv, gguf__kv_idx_cmp);
    if (!f->kv_sorted)
        return gguf__cfail(c, "out of memory for the key index");
    for (uint64_t i = 1; i < f->n_kv; i++) {
        const gguf_str *a = &f->kvs[f->kv_sorted[i - 1]].key;
        if (gguf__key_cmp(a, f->kvs[f->kv_sorted[i]].key.ptr,
                          (size_t)f->kvs[f->kv_sorted[i]].key.len) == 0)
            return gguf__cfail(c, "duplicate key '%s'", gguf__keyname(a, key, sizeof key));
    }
    return 0;
}

/* Apply general.alignment if present: must be a non-zero power-of-two u32. */
static int gguf__parse_alignment(gguf__cur *c, gguf_file *f)
{
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv)
        return 0;
    if (kv->type != GGUF_VT_U32)
        return gguf__cfail(c, "key 'general.alignment': type %u, expected u32", kv->type);
    if (kv->v.u64 == 0 || (kv->v.u64 & (kv->v.u64 - 1)) != 0)
        return gguf__cfail(c, "key 'general.alignment': %llu is not a non-zero power of two",
                           (unsigned long long)kv->v.u64);
    f->alignment = (uint32_t)kv->v.u64;
    return 0;
}

/* ---------------------------------------------------------- tensor infos */

/* Read the name of tensor `index` into t->name (1..127 bytes, no NUL). */
static int gguf__parse_tensor_name(gguf__cur *c, gguf_tensor *t, uint64_t index)
{
    uint64_t at = c->pos;
    gguf_str s;
    if (gguf__str(c, &s, GGUF_MAX_NAME_LEN, "tensor name"))
        return -1;
    if (s.len == 0)
        return gguf__cfail(c, "tensor %llu at offset %llu: empty name",
                           (unsigned long long)index, (unsigned long long)at);
    if (memchr(s.ptr, '\0', (size_t)s.len))
        return gguf__cfail(c, "tensor %llu at offset %llu: name contains a NUL byte",
                           (unsigned long long)index, (unsigned long long)at);
    memcpy(t->name, s.ptr, (size_t)s.len);
    t->name[s.len] = '\0';
    return 0;
}

/* Read n_dims and ne[]; compute n_elements with overflow checks. */
static int gguf__parse_tensor_dims(gguf__cur *c, gguf_tensor *t)
{
    uint64_t at = c->pos;
    if (gguf__u32(c, &t->n_dims, "tensor n_dims"))
        return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return gguf__cfail(c, "tensor '%s': n_dims %u out of range 1..4 (offset %llu)",
                           t->name, t->n_dims, (unsigned long long)at);
    t->n_elements = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims)
            continue;
        if (gguf__u64(c, &t->ne[d], "tensor dimension"))
            return -1;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return gguf__cfail(c, "tensor '%s': dimension %u is %llu (must be 1..2^63-1)",
                               t->name, d, (unsigned long long)t->ne[d]);
        if (__builtin_mul_overflow(t->n_elements, t->ne[d], &t->n_elements) ||
            t->n_elements > (uint64_t)INT64_MAX)
            return gguf__cfail(c, "tensor '%s': element count overflows at dimension %u",
                               t->name, d);
    }
    return 0;
}

/* Read type and offset; compute n_bytes from the block geometry. */
static int gguf__parse_tensor_type(gguf__cur *c, gguf_tensor *t)
{
    uint32_t be, bb;
    uint64_t at = c->pos;
    if (gguf__u32(c, &t->type, "tensor type"))
        return -1;
    if (gguf_type_block(t->type, &be, &bb))
        return gguf__cfail(c, "tensor '%s': unsupported tensor type %u (offset %llu)",
                           t->name, t->type, (unsigned long long)at);
    if (t->ne[0] % be != 0)
        return gguf__cfail(c, "tensor '%s': ne[0] = %llu is not a multiple of the %s "
                           "block size %u", t->name, (unsigned long long)t->ne[0],
                           gguf_type_name(t->type), be);
    if (__builtin_mul_overflow(t->n_elements / be, (uint64_t)bb, &t->n_bytes))
        return gguf__cfail(c, "tensor '%s': byte size overflows", t->name);
    return gguf__u64(c, &t->offset, "tensor offset");
}

/* Parse all tensor infos (name, dims, type, offset); errors name the tensor. */
static int gguf__parse_tensor_infos(gguf__cur *c, gguf_file *f)
{
    f->tensors = calloc(f->n_tensors ? (size_t)f->n_tensors : 1, sizeof *f->tensors);
    if (!f->tensors)
        return gguf__cfail(c, "out of memory for %llu tensor infos",
                           (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (gguf__parse_tensor_name(c, t, i))
            return -1;
        if (gguf__parse_tensor_dims(c, t) || gguf__parse_tensor_type(c, t)) {
            if (c->err && c->errlen && strncmp(c->err, "tensor '", 8) != 0)
                gguf__context(c, "tensor '%s': ", t->name);
            return -1;
        }
    }
    return 0;
}

/* Check one tensor's data range against alignment and file size. */
static int gguf__place_tensor(gguf__cur *c, gguf_file *f, gguf_tensor *t)
{
    uint64_t start, end;
    if (t->offset % f->alignment != 0)
        return gguf__cfail(c, "tensor '%s': offset %llu is not a multiple of the "
                           "alignment %u", t->name, (unsigned long long)t->offset,
                           f->alignment);
    if (__builtin_add_overflow(f->data_offset, t->offset, &start) ||
        __builtin_add_overflow(start, t->n_bytes, &end) || end > f->size)
        return gguf__cfail(c, "tensor '%s': data (offset %llu, %llu bytes, data section "
                           "at %llu) past end of file (size %llu)", t->name,
                           (unsigned long long)t->offset, (unsigned long long)t->n_bytes,
                           (unsigned long long)f->data_offset, (unsigned long long)f->size);
    t->data = f->base + start;
    return 0;
}

/* Locate the data section, place every tensor, reject duplicates/overlaps. */
static int gguf__layout_tensors(gguf__cur *c, gguf_file *f)
{
    uint64_t pad = (f->alignment - c->pos % f->alignment) % f->alignment;
    uint64_t *by_off = NULL;
    int rc = -1;
    f->data_offset = c->pos + pad;     /* c->pos <= size < 2^63: no overflow */
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf__place_tensor(c, f, &f->tensors[i]))
            return -1;
    f->tn_sorted = gguf__sorted_index(f, f->n_tensors, gguf__tn_idx_cmp);
    by_off = gguf__sorted_index(f, f->n_tensors, gguf__off_idx_cmp);
    if (!f->tn_sorted || !by_off) {
        gguf__cfail(c, "out of memory for the tensor index");
        goto done;
    }
    for (uint64_t i = 1; i < f->n_tensors; i++) {
        const gguf_tensor *a = &f->tensors[f->tn_sorted[i - 1]];
        if (strcmp(a->name, f->tensors[f->tn_sorted[i]].name) == 0) {
            gguf__cfail(c, "duplicate tensor name '%s'", a->name);
            goto done;
        }
    }
    for (uint64_t i = 1; i < f->n_tensors; i++) {
        const gguf_tensor *a = &f->tensors[by_off[i - 1]], *b = &f->tensors[by_off[i]];
        if (a->offset + a->n_bytes > b->offset) {
            gguf__cfail(c, "tensor '%s' [%llu, %llu) overlaps tensor '%s' at %llu",
                        a->name, (unsigned long long)a->offset,
                        (unsigned long long)(a->offset + a->n_bytes), b->name,
                        (unsigned long long)b->offset);
            goto done;
        }
    }
    rc = 0;
done:
    free(by_off);
    return rc;
}

/* ------------------------------------------------------------ open/close */

/* Parse and validate an image into a new gguf_file (map not yet attached). */
static int gguf__parse(const void *buf, size_t size, gguf_file **out, char *err,
                       size_t errlen)
{
    gguf__cur c = { .base = buf, .size = size, .pos = 0, .err = err, .errlen = errlen };
    gguf_file *f;
    *out = NULL;
    if (!buf && size)
        return util_err(err, errlen, "NULL buffer");
    f = calloc(1, sizeof *f);
    if (!f)
        return util_err(err, errlen, "out of memory");
    f->base = buf;
    f->size = size;
    if (gguf__parse_header(&c, f) || gguf__parse_kvs(&c, f) ||
        gguf__parse_alignment(&c, f) || gguf__parse_tensor_infos(&c, f) ||
        gguf__layout_tensors(&c, f))
        goto fail;
    *out = f;
    return 0;
fail:
    gguf_close(f);
    return -1;
}

int gguf_open_memory(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!out)
        return util_err(err, errlen, "NULL output pointer");
    return gguf__parse(buf, size, out, err, errlen);
}

/* Open path read-only and map it; *len gets the file size. */
static int gguf__map_file(const char *path, void **map, size_t *len, char *err,
                          size_t errlen)
{
    struct stat st;
    int rc = -1, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return util_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        util_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode) || st.st_size <= 0) {
        util_err(err, errlen, "%s: not a regular, non-empty file", path);
        goto done;
    }
    *len = (size_t)st.st_size;
    *map = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (*map == MAP_FAILED) {
        *map = NULL;
        util_err(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    close(fd);
    return rc;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen)
{
    void *map = NULL;
    size_t len = 0;
    if (err && errlen)
        err[0] = '\0';
    if (!out || !path)
        return util_err(err, errlen, "NULL argument");
    *out = NULL;
    if (gguf__map_file(path, &map, &len, err, errlen))
        return -1;
    if (gguf__parse(map, len, out, err, errlen)) {
        /* Prefix the path so the caller knows which file. */
        if (err && errlen) {
            char tmp[512];
            snprintf(tmp, sizeof tmp, "%s", err);
            snprintf(err, errlen, "%s: %s", path, tmp);
        }
        munmap(map, len);
        return -1;
    }
    (*out)->map = map;
    (*out)->map_len = len;
    return 0;
}

/* Free everything; unmap when the file owns a mapping. NULL is a no-op. */
void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    if (f->kvs)
        for (uint64_t i = 0; i < f->n_kv; i++)
            free(f->kvs[i].arr_strs);
    free(f->kvs);
    free(f->kv_sorted);
    free(f->tensors);
    free(f->tn_sorted);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f);
}

/* --------------------------------------------------------------- access */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint64_t gguf_kv_count(const gguf_file *f) { return f->n_kv; }
uint64_t gguf_tensor_count(const gguf_file *f) { return f->n_tensors; }

const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_kv ? &f->kvs[i] : NULL;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

/* Binary search over the key index. Usable during parsing once kv_sorted
 * exists (it is built before general.alignment is looked up). */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    size_t klen;
    uint64_t lo = 0, hi;
    if (!f || !key || !f->kv_sorted)
        return NULL;
    klen = strlen(key);
    hi = f->n_kv;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const gguf_kv *kv = &f->kvs[f->kv_sorted[mid]];
        int r = gguf__key_cmp(&kv->key, key, klen);
        if (r == 0)
            return kv;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    uint64_t lo = 0, hi;
    if (!f || !name || !f->tn_sorted)
        return NULL;
    hi = f->n_tensors;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const gguf_tensor *t = &f->tensors[f->tn_sorted[mid]];
        int r = strcmp(t->name, name);
        if (r == 0)
            return t;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ------------------------------------------------------------- getters */

static bool gguf__is_unsigned(uint32_t t)
{
    return t == GGUF_VT_U8 || t == GGUF_VT_U16 || t == GGUF_VT_U32 || t == GGUF_VT_U64;
}

static bool gguf__is_signed(uint32_t t)
{
    return t == GGUF_VT_I8 || t == GGUF_VT_I16 || t == GGUF_VT_I32 || t == GGUF_VT_I64;
}

/* Getters: see gguf.h for the conversion rules. */
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return -1;
    if (gguf__is_unsigned(kv->type)) {
        *out = kv->v.u64;
        return 0;
    }
    if (gguf__is_signed(kv->type) && kv->v.i64 >= 0) {
        *out = (uint64_t)kv->v.i64;
        return 0;
    }
    return -1;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    uint64_t v;
    if (gguf_get_u64(f, key, &v) || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv)
        return -1;
    if (gguf__is_signed(kv->type)) {
        *out = kv->v.i64;
        return 0;
    }
    if (gguf__is_unsigned(kv->type) && kv->v.u64 <= (uint64_t)INT64_MAX) {
        *out = (int64_t)kv->v.u64;
        return 0;
    }
    return -1;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || (kv->type != GGUF_VT_F32 && kv->type != GGUF_VT_F64))
        return -1;
    if (isfinite(kv->v.f64) && fabs(kv->v.f64) > FLT_MAX)
        return -1;                        /* finite f64 beyond float range */
    *out = (float)kv->v.f64;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_VT_BOOL)
        return -1;
    *out = kv->v.u64 != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_VT_STRING)
        return -1;
    *out = kv->v.str;
    return 0;
}

/* ---------------------------------------------------------- tensor types */

int gguf_type_block(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes)
{
    uint32_t be, bb;
    switch (type) {
    case GGUF_TT_F32: be = 1; bb = 4; break;
    case GGUF_TT_F16: be = 1; bb = 2; break;
    case GGUF_TT_BF16: be = 1; bb = 2; break;
    case GGUF_TT_Q4_0: be = 32; bb = 18; break;
    case GGUF_TT_Q4_1: be = 32; bb = 20; break;
    case GGUF_TT_Q5_0: be = 32; bb = 22; break;
    case GGUF_TT_Q5_1: be = 32; bb = 24; break;
    case GGUF_TT_Q8_0: be = 32; bb = 34; break;
    case GGUF_TT_Q2_K: be = 256; bb = 84; break;
    case GGUF_TT_Q3_K: be = 256; bb = 110; break;
    case GGUF_TT_Q4_K: be = 256; bb = 144; break;
    case GGUF_TT_Q5_K: be = 256; bb = 176; break;
    case GGUF_TT_Q6_K: be = 256; bb = 210; break;
    case GGUF_TT_IQ4_NL: be = 32; bb = 18; break;
    case GGUF_TT_IQ4_XS: be = 256; bb = 136; break;
    default: return -1;
    }
    if (block_elems)
        *block_elems = be;
    if (block_bytes)
        *block_bytes = bb;
    return 0;
}

const char *gguf_type_name(uint32_t type)
{
    switch (type) {
    case GGUF_TT_F32: return "F32";
    case GGUF_TT_F16: return "F16";
    case GGUF_TT_BF16: return "BF16";
    case GGUF_TT_Q4_0: return "Q4_0";
    case GGUF_TT_Q4_1: return "Q4_1";
    case GGUF_TT_Q5_0: return "Q5_0";
    case GGUF_TT_Q5_1: return "Q5_1";
    case GGUF_TT_Q8_0: return "Q8_0";
    case GGUF_TT_Q2_K: return "Q2_K";
    case GGUF_TT_Q3_K: return "Q3_K";
    case GGUF_TT_Q4_K: return "Q4_K";
    case GGUF_TT_Q5_K: return "Q5_K";
    case GGUF_TT_Q6_K: return "Q6_K";
    case GGUF_TT_IQ4_NL: return "IQ4_NL";
    case GGUF_TT_IQ4_XS: return "IQ4_XS";
    default: return "unknown";
    }
}

/* ------------------------------------------------------ float conversion */

/* Exact IEEE half -> single, including subnormals, inf and NaN. */
float gguf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);          /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  /* normal: bias 15 -> 127 */
    } else if (man == 0) {
        bits = sign;                                      /* +-0 */
    } else {
        /* subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return gguf__f32_bits(bits);
}

float gguf_bf16_to_f32(uint16_t h)
{
    return gguf__f32_bits((uint32_t)h << 16);
}

/* f32 -> f16 with round-to-nearest-even; overflow gives inf, NaN stays NaN. */
uint16_t gguf_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return sign | 0x7e00;                             /* NaN */
    if (ax >= 0x477ff000u)
        return sign | 0x7c00;                             /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {
        /* below the smallest normal f16 (2^-14): subnormal or zero.
         * nearbyintf rounds half to even in the default rounding mode. */
        float v = gguf__f32_bits(ax) * 0x1p24f;
        return sign | (uint16_t)nearbyintf(v);
    }
    uint32_t man = ax & 0x7fffff, exp = (ax >> 23) - 112;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;                                              /* carry into exp is correct */
    return sign | (uint16_t)h;
}

/* --------------------------------------------------------- dequantization */

static float gguf__f16_at(const uint8_t *p)
{
    return gguf_f16_to_f32(gguf__le16(p));
}

/* 6-bit scale and min number j (0..7) of a Q4_K / Q5_K block's 12 packed
 * bytes. */
static void gguf__q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The 5-bit quants of a Q5_0 / Q5_1 block (qh: 32 high bits, qs: 16 bytes of
 * nibble pairs): weight j has (qs[j] & 15) | bit j of qh << 4, weight j + 16
 * (qs[j] >> 4) | bit j + 16 of qh << 4. */
static void gguf__q5_levels(const uint8_t *qh4, const uint8_t *qs, uint8_t *lv)
{
    uint32_t qh = gguf__le32(qh4);
    for (int j = 0; j < 16; j++) {
        lv[j] = (uint8_t)((qs[j] & 0xf) | (((qh >> j) & 1) << 4));
        lv[j + 16] = (uint8_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
}

/* Q4_K (144 bytes) and Q5_K (176 bytes): d, dmin, 12 bytes of 6-bit scales
 * and mins, Q5_K's 32 bytes of high bits, 128 bytes of low nibbles. Weight
 * 64i + l (l < 32) is the low nibble of qs[32i + l], 64i + 32 + l its high
 * nibble; Q5_K adds 16 where bit 2i (resp. 2i + 1) of qh[l] is set. */
static void gguf__k_affine(const uint8_t *b, int five, uint8_t *lv, float *d, float *m)
{
    float dd = gguf__f16_at(b), dmin = gguf__f16_at(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
    for (int i = 0; i < 4; i++) {             /* 4 chunks of 64 weights */
        for (int h = 0; h < 2; h++) {
            uint8_t sc, mn;
            gguf__q4k_scale_min(2 * i + h, scales, &sc, &mn);
            d[2 * i + h] = dd * sc;
            m[2 * i + h] = -(dmin * mn);
        }
        for (int l = 0; l < 32; l++) {
            int hi0 = five ? ((qh[l] >> (2 * i)) & 1) << 4 : 0;
            int hi1 = five ? ((qh[l] >> (2 * i + 1)) & 1) << 4 : 0;
            lv[64 * i + l] = (uint8_t)((qs[32 * i + l] & 0xf) | hi0);
            lv[64 * i + 32 + l] = (uint8_t)((qs[32 * i + l] >> 4) | hi1);
        }
    }
}

/* The 16 six-bit scales of a Q3_K block (12 packed bytes), each minus 32. */
static void gguf__q3k_scales(const uint8_t *p, int sc[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (p[j] & 0xf) : (p[j - 8] >> 4);
        int hi = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | (hi << 4)) - 32;
    }
}

/* Q3_K (110 bytes): hmask[32], qs[64], scales[12], d. Weight 128n + 32j +
 * 16h + l has the 2-bit quant (qs[32n + 16h + l] >> 2j) & 3, minus 4 unless
 * bit 4n + j of hmask[16h + l] is set, times d * scale[8n + 2j + h]. */
static int gguf__q3k_quant(const uint8_t *b, int i)
{
    int n = i / 128, j = (i % 128) / 32, h = (i % 32) / 16, l = i % 16;
    int q = (b[32 + 32 * n + 16 * h + l] >> (2 * j)) & 3;
    return q - ((b[16 * h + l] >> (4 * n + j)) & 1 ? 0 : 4);
}

static const int8_t gguf__iq4nl_values[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* The 6-bit scale (minus 32) of IQ4_XS sub-block ib (0..7). */
static int gguf__iq4xs_scale(const uint8_t *b, int ib)
{
    int lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
    int hi = (gguf__le16(b + 2) >> (2 * ib)) & 3;
    return (lo | (hi << 4)) - 32;
}

int gguf_affine_max_level(uint32_t type)
{
    switch (type) {
    case GGUF_TT_Q4_0: case GGUF_TT_Q4_1: case GGUF_TT_Q4_K: return 15;
    case GGUF_TT_Q5_0: case GGUF_TT_Q5_1: case GGUF_TT_Q5_K: return 31;
    case GGUF_TT_Q8_0: case GGUF_TT_Q3_K: case GGUF_TT_IQ4_NL: case GGUF_TT_IQ4_XS: return 255;
    default: return -1;
    }
}

/* Each form keeps the type's own integers as levels, offset to be >= 0:
 *   Q4_0 nibble, m = -8d        Q5_0 5-bit quant, m = -16d
 *   Q4_1 / Q5_1 quant, m = the block's min
 *   Q8_0 q + 128, m = -128d     IQ4 table value + 128, m = -128d
 *   Q4_K / Q5_K quant, d = d*sc, m = -(dmin*min)
 *   Q3_K scale*quant + 127 (-124..128 -> 3..255), d = d, m = -127d
 * (Q3_K's two 16-weight halves of a sub-block have their own 6-bit scales;
 * with the scale folded into the level they share d.) */
int gguf_affine(uint32_t type, const uint8_t *b, uint8_t *lv, float *d, float *m)
{
    switch (type) {
    case GGUF_TT_Q4_0:
    case GGUF_TT_Q4_1: {
        int has_min = type == GGUF_TT_Q4_1;
        const uint8_t *qs = b + (has_min ? 4 : 2);
        d[0] = gguf__f16_at(b);
        m[0] = has_min ? gguf__f16_at(b + 2) : -8.0f * d[0];
        for (int j = 0; j < 16; j++) {
            lv[j] = qs[j] & 0xF;
            lv[j + 16] = qs[j] >> 4;
        }
        return 0;
    }
    case GGUF_TT_Q5_0:
        d[0] = gguf__f16_at(b);
        m[0] = -16.0f * d[0];
        gguf__q5_levels(b + 2, b + 6, lv);
        return 0;
    case GGUF_TT_Q5_1:
        d[0] = gguf__f16_at(b);
        m[0] = gguf__f16_at(b + 2);
        gguf__q5_levels(b + 4, b + 8, lv);
        return 0;
    case GGUF_TT_Q8_0:
        d[0] = gguf__f16_at(b);
        m[0] = -128.0f * d[0];
        for (int i = 0; i < 32; i++)
            lv[i] = (uint8_t)((int)(int8_t)b[2 + i] + 128);
        return 0;
    case GGUF_TT_Q4_K:
    case GGUF_TT_Q5_K:
        gguf__k_affine(b, type == GGUF_TT_Q5_K, lv, d, m);
        return 0;
    case GGUF_TT_Q3_K: {
        int sc[16];
        gguf__q3k_scales(b + 96, sc);
        float dd = gguf__f16_at(b + 108);
        for (int i = 0; i < 256; i++) {
            int n = i / 128, j = (i % 128) / 32, h = (i % 32) / 16;
            lv[i] = (uint8_t)(sc[8 * n + 2 * j + h] * gguf__q3k_quant(b, i) + 127);
        }
        for (int s = 0; s < 8; s++) {
            d[s] = dd;
            m[s] = -127.0f * dd;
        }
        return 0;
    }
    case GGUF_TT_IQ4_NL:
    case GGUF_TT_IQ4_XS: {
        int xs = type == GGUF_TT_IQ4_XS, n_sub = xs ? 8 : 1;
        const uint8_t *qs = b + (xs ? 8 : 2);
        for (int s = 0; s < n_sub; s++, qs += 16) {
            d[s] = xs ? gguf__f16_at(b) * (float)gguf__iq4xs_scale(b, s) : gguf__f16_at(b);
            m[s] = -128.0f * d[s];
            for (int j = 0; j < 16; j++) {
                lv[32 * s + j] = (uint8_t)(gguf__iq4nl_values[qs[j] & 0xf] + 128);
                lv[32 * s + j + 16] = (uint8_t)(gguf__iq4nl_values[qs[j] >> 4] + 128);
            }
        }
        return 0;
    }
    default:
        return -1;
    }
}

/* Block dequantizers: b is one block, y receives its weights, with ggml's
 * own float expressions (dequantize_row_* in ggml-quants.c), so that the
 * values are bit for bit llama.cpp's. */
static void gguf__deq_q4_0(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0xf) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void gguf__deq_q4_1(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b), m = gguf__f16_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 0xf) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

static void gguf__deq_q5_0(const uint8_t *b, float *y)
{
    uint8_t lv[32];
    float d = gguf__f16_at(b);
    gguf__q5_levels(b + 2, b + 6, lv);
    for (int j = 0; j < 32; j++)
        y[j] = (float)(lv[j] - 16) * d;
}

static void gguf__deq_q5_1(const uint8_t *b, float *y)
{
    uint8_t lv[32];
    float d = gguf__f16_at(b), m = gguf__f16_at(b + 2);
    gguf__q5_levels(b + 4, b + 8, lv);
    for (int j = 0; j < 32; j++)
        y[j] = (float)lv[j] * d + m;
}

static void gguf__deq_q8_0(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b);
    for (int j = 0; j < 32; j++)
        y[j] = (float)(int8_t)b[2 + j] * d;
}

/* Q4_K / Q5_K: y = level * d + m, the same float as d*sc*q - dmin*m
 * (a - b == a + (-b)). */
static void gguf__deq_k(const uint8_t *b, float *y, int five)
{
    uint8_t lv[256];
    float d[8], m[8];
    gguf__k_affine(b, five, lv, d, m);
    for (int i = 0; i < 256; i++)
        y[i] = d[i / 32] * (float)lv[i] + m[i / 32];
}

static void gguf__deq_q4_k(const uint8_t *b, float *y) { gguf__deq_k(b, y, 0); }
static void gguf__deq_q5_k(const uint8_t *b, float *y) { gguf__deq_k(b, y, 1); }

/* Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64],
 * d, dmin; 16-weight groups. */
static void gguf__deq_q2_k(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b + 80), mn = gguf__f16_at(b + 82);
    for (int i = 0; i < 256; i++) {
        int n = i / 128, j = (i % 128) / 32, h = (i % 32) / 16, l = i % 16;
        uint8_t sc = b[8 * n + 2 * j + h];
        int q = (b[16 + 32 * n + 16 * h + l] >> (2 * j)) & 3;
        float dl = d * (float)(sc & 0xF), ml = mn * (float)(sc >> 4);
        y[i] = dl * (float)q - ml;
    }
}

static void gguf__deq_q3_k(const uint8_t *b, float *y)
{
    int sc[16];
    gguf__q3k_scales(b + 96, sc);
    float dd = gguf__f16_at(b + 108);
    for (int i = 0; i < 256; i++) {
        int n = i / 128, j = (i % 128) / 32, h = (i % 32) / 16;
        float dl = dd * (float)sc[8 * n + 2 * j + h];
        y[i] = dl * (float)gguf__q3k_quant(b, i);
    }
}

static void gguf__deq_iq4_nl(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)gguf__iq4nl_values[b[2 + j] & 0xf];
        y[j + 16] = d * (float)gguf__iq4nl_values[b[2 + j] >> 4];
    }
}

static void gguf__deq_iq4_xs(const uint8_t *b, float *y)
{
    float d = gguf__f16_at(b);
    for (int s = 0; s < 8; s++) {
        float dl = d * (float)gguf__iq4xs_scale(b, s);
        const uint8_t *qs = b + 8 + 16 * s;
        for (int j = 0; j < 16; j++) {
            y[32 * s + j] = dl * (float)gguf__iq4nl_values[qs[j] & 0xf];
            y[32 * s + j + 16] = dl * (float)gguf__iq4nl_values[qs[j] >> 4];
        }
    }
}

static void gguf__deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = gguf__f16_at(b + 208);
    for (int half = 0; half < 2; half++) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

/* Dequantize element-wise types (F32, F16, BF16). */
static void gguf__deq_plain(uint32_t type, const uint8_t *s, float *dst, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if (type == GGUF_TT_F32)
            dst[i] = gguf__f32_bits(gguf__le32(s + 4 * i));
        else if (type == GGUF_TT_F16)
            dst[i] = gguf_f16_to_f32(gguf__le16(s + 2 * i));
        else
            dst[i] = gguf_bf16_to_f32(gguf__le16(s + 2 * i));
    }
}

/* Dispatch on type; n must be a whole number of blocks. */
int gguf_dequantize(uint32_t type, const void *src, float *dst, uint64_t n)
{
    uint32_t be, bb;
    const uint8_t *s = src;
    void (*blk)(const uint8_t *, float *) = NULL;
    if (gguf_type_block(type, &be, &bb) || n % be != 0 || (n && (!src || !dst)))
        return -1;
    switch (type) {
    case GGUF_TT_Q4_0: blk = gguf__deq_q4_0; break;
    case GGUF_TT_Q4_1: blk = gguf__deq_q4_1; break;
    case GGUF_TT_Q5_0: blk = gguf__deq_q5_0; break;
    case GGUF_TT_Q5_1: blk = gguf__deq_q5_1; break;
    case GGUF_TT_Q8_0: blk = gguf__deq_q8_0; break;
    case GGUF_TT_Q2_K: blk = gguf__deq_q2_k; break;
    case GGUF_TT_Q3_K: blk = gguf__deq_q3_k; break;
    case GGUF_TT_Q4_K: blk = gguf__deq_q4_k; break;
    case GGUF_TT_Q5_K: blk = gguf__deq_q5_k; break;
    case GGUF_TT_Q6_K: blk = gguf__deq_q6_k; break;
    case GGUF_TT_IQ4_NL: blk = gguf__deq_iq4_nl; break;
    case GGUF_TT_IQ4_XS: blk = gguf__deq_iq4_xs; break;
    default:
        gguf__deq_plain(type, s, dst, n);
        return 0;
    }
    for (uint64_t i = 0; i < n / be; i++)
        blk(s + i * bb, dst + i * be);
    return 0;
}
