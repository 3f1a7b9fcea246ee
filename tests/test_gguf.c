/*
 * test_gguf.c - unit tests for common/gguf.c.
 *
 * Valid files are built with the test writer (testutil_gguf.h); hostile ones
 * either by patching a valid image or by assembling raw bytes (struct raw).
 * Every image is parsed from an exactly-sized heap copy so that ASan catches
 * any read past its end. Dequantization is checked against reference values
 * produced by gguf-py (tests/fixtures/dequant.json, see
 * scripts/make_dequant_fixtures.py). Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "testutil_gguf.h"

#define MODEL_PATH "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIXTURE_PATH "tests/fixtures/dequant.json"

/* ---------------------------------------------------------------- helpers */

/* Parse a copy of img[0..size) in a buffer of exactly that size. Returns the
 * result of gguf_open_memory; *out gets the file (and *copy the buffer, which
 * the caller frees after gguf_close) on success; on failure both are freed. */
static int open_copy(const void *img, size_t size, gguf_file **out, void **copy, char *err,
                     size_t errlen)
{
    void *buf = malloc(size ? size : 1);
    assert_non_null(buf);
    if (size)
        memcpy(buf, img, size);
    int rc = gguf_open_memory(buf, size, out, err, errlen);
    if (rc != 0) {
        assert_null(*out);
        free(buf);
        buf = NULL;
    }
    *copy = buf;
    return rc;
}

/* Assert that parsing fails with a non-empty message containing `needle`. */
static void expect_fail(const void *img, size_t size, const char *needle)
{
    char err[512] = "";
    gguf_file *f = NULL;
    void *copy = NULL;
    int rc = open_copy(img, size, &f, &copy, err, sizeof err);
    if (rc == 0) {
        gguf_close(f);
        free(copy);
        fail_msg("expected failure containing '%s', but parsing succeeded", needle);
    }
    assert_true(strlen(err) > 0);
    if (needle && !strstr(err, needle))
        fail_msg("error '%s' does not mention '%s'", err, needle);
}

static void expect_fail_g(tgguf *g, const char *needle)
{
    size_t size;
    void *img = tgguf_image(g, &size);
    expect_fail(img, size, needle);
    free(img);
    tgguf_free(g);
}

/* Open the writer's image; fails the test if parsing fails. */
static gguf_file *open_g(tgguf *g, void **copy)
{
    size_t size;
    char err[512] = "";
    gguf_file *f = NULL;
    void *img = tgguf_image(g, &size);
    int rc = open_copy(img, size, &f, copy, err, sizeof err);
    free(img);
    if (rc != 0)
        fail_msg("unexpected parse failure: %s", err);
    return f;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Raw byte assembly for files the writer cannot express. */
struct raw {
    uint8_t b[4096];
    size_t n;
};

static void r_u32(struct raw *r, uint32_t v) { put_le(r->b + r->n, v, 4); r->n += 4; }
static void r_u64(struct raw *r, uint64_t v) { put_le(r->b + r->n, v, 8); r->n += 8; }
static void r_bytes(struct raw *r, const void *p, size_t n) { memcpy(r->b + r->n, p, n); r->n += n; }
static void r_str(struct raw *r, const char *s) { r_u64(r, strlen(s)); r_bytes(r, s, strlen(s)); }

static void r_header(struct raw *r, uint64_t n_tensors, uint64_t n_kv)
{
    r->n = 0;
    r_bytes(r, "GGUF", 4);
    r_u32(r, 3);
    r_u64(r, n_tensors);
    r_u64(r, n_kv);
}

static int str_eq(gguf_str s, const char *c)
{
    return s.len == strlen(c) && memcmp(s.ptr, c, s.len) == 0;
}

/* A small valid file: metadata of every type plus three tensors. With
 * pad > 0, a first string pair of pad bytes makes the file long enough that
 * the header's kv-count bound does not catch truncations of the later pairs
 * (so that the cursor's own checks are exercised). */
static tgguf *make_small_padded(uint32_t version, size_t pad)
{
    tgguf *g = tgguf_new();
    if (pad) {
        char *s = malloc(pad + 1);
        assert_non_null(s);
        memset(s, 'p', pad);
        s[pad] = '\0';
        tgguf_kv_str(g, "pad", s);
        free(s);
    }
    const char *strs[] = { "a", "", "hello" };
    int32_t i32s[] = { -1, 0, 7 };
    float f32s[] = { 0.5f, -1.25f };
    uint8_t bools[] = { 1, 0, 1 };
    uint16_t u16s[] = { 1, 65535 };
    int64_t i64s[] = { INT64_MIN, INT64_MAX };
    double f64s[] = { 1e300, -2.5 };
    tgguf_set_version(g, version);
    tgguf_kv_str(g, "general.architecture", "llama");
    tgguf_kv_u8(g, "t.u8", 200);
    tgguf_kv_i8(g, "t.i8", -100);
    tgguf_kv_u16(g, "t.u16", 60000);
    tgguf_kv_i16(g, "t.i16", -30000);
    tgguf_kv_u32(g, "t.u32", 4000000000u);
    tgguf_kv_i32(g, "t.i32", -2000000000);
    tgguf_kv_u64(g, "t.u64", 0xfedcba9876543210ull);
    tgguf_kv_i64(g, "t.i64", -5000000000ll);
    tgguf_kv_f32(g, "t.f32", 1.5f);
    tgguf_kv_f64(g, "t.f64", -0.125);
    tgguf_kv_bool(g, "t.bool", 1);
    tgguf_kv_arr_str(g, "t.arr_str", strs, 3);
    tgguf_kv_arr_i32(g, "t.arr_i32", i32s, 3);
    tgguf_kv_arr_f32(g, "t.arr_f32", f32s, 2);
    tgguf_kv_arr(g, "t.arr_bool", GGUF_VT_BOOL, bools, 3);
    tgguf_kv_arr(g, "t.arr_u16", GGUF_VT_U16, u16s, 2);
    tgguf_kv_arr(g, "t.arr_i64", GGUF_VT_I64, i64s, 2);
    tgguf_kv_arr(g, "t.arr_f64", GGUF_VT_F64, f64s, 2);
    tgguf_kv_arr_str(g, "t.arr_empty", NULL, 0);
    float v[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)i / 8.0f - 4.0f;
    uint64_t ne1[1] = { 5 }, ne2[2] = { 32, 2 }, ne3[3] = { 32, 1, 2 };
    tgguf_tensor_f32(g, "norm.weight", GGUF_TT_F32, 1, ne1, v);
    tgguf_tensor_f32(g, "blk.0.w", GGUF_TT_Q8_0, 2, ne2, v);
    tgguf_tensor_f32(g, "blk.0.v", GGUF_TT_Q4_1, 3, ne3, v);
    return g;
}

static tgguf *make_small(uint32_t version)
{
    return make_small_padded(version, 0);
}

/* --------------------------------------------------------- valid files */

static void check_small_metadata(gguf_file *f)
{
    const gguf_kv *kv;
    uint64_t u64;
    int64_t i64;
    uint32_t u32;
    float f32;
    int b;
    gguf_str s;

    assert_int_equal(gguf_kv_count(f), 20);
    assert_int_equal(gguf_get_str(f, "general.architecture", &s), 0);
    assert_true(str_eq(s, "llama"));
    assert_int_equal(gguf_get_u64(f, "t.u8", &u64), 0);
    assert_int_equal(u64, 200);
    assert_int_equal(gguf_get_i64(f, "t.i8", &i64), 0);
    assert_int_equal(i64, -100);
    assert_int_equal(gguf_get_u32(f, "t.u16", &u32), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(gguf_get_i64(f, "t.i16", &i64), 0);
    assert_int_equal(i64, -30000);
    assert_int_equal(gguf_get_u32(f, "t.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(gguf_get_i64(f, "t.i32", &i64), 0);
    assert_int_equal(i64, -2000000000);
    assert_int_equal(gguf_get_u64(f, "t.u64", &u64), 0);
    assert_true(u64 == 0xfedcba9876543210ull);
    assert_int_equal(gguf_get_i64(f, "t.i64", &i64), 0);
    assert_true(i64 == -5000000000ll);
    assert_int_equal(gguf_get_f32(f, "t.f32", &f32), 0);
    assert_true(f32 == 1.5f);
    assert_int_equal(gguf_get_f32(f, "t.f64", &f32), 0);
    assert_true(f32 == -0.125f);
    assert_int_equal(gguf_get_bool(f, "t.bool", &b), 0);
    assert_int_equal(b, 1);

    /* conversions that must be refused */
    assert_int_equal(gguf_get_u64(f, "t.i8", &u64), -1);        /* negative */
    assert_int_equal(gguf_get_u32(f, "t.u64", &u32), -1);       /* too large */
    assert_int_equal(gguf_get_i64(f, "t.u64", &i64), -1);       /* > INT64_MAX */
    assert_int_equal(gguf_get_f32(f, "t.u32", &f32), -1);
    assert_int_equal(gguf_get_str(f, "t.u32", &s), -1);
    assert_int_equal(gguf_get_bool(f, "t.u8", &b), -1);
    assert_int_equal(gguf_get_u64(f, "no.such.key", &u64), -1);
    assert_null(gguf_find_kv(f, "t.u"));
    assert_null(gguf_find_kv(f, "t.u322"));

    kv = gguf_find_kv(f, "t.arr_str");
    assert_non_null(kv);
    assert_int_equal(kv->type, GGUF_VT_ARRAY);
    assert_int_equal(kv->arr_type, GGUF_VT_STRING);
    assert_int_equal(kv->arr_count, 3);
    assert_null(kv->arr_data);
    assert_true(str_eq(kv->arr_strs[0], "a"));
    assert_true(str_eq(kv->arr_strs[1], ""));
    assert_true(str_eq(kv->arr_strs[2], "hello"));

    kv = gguf_find_kv(f, "t.arr_i32");
    assert_non_null(kv);
    assert_int_equal(kv->arr_type, GGUF_VT_I32);
    assert_int_equal(kv->arr_count, 3);
    int32_t i32s[3];
    memcpy(i32s, kv->arr_data, sizeof i32s);
    assert_int_equal(i32s[0], -1);
    assert_int_equal(i32s[2], 7);

    kv = gguf_find_kv(f, "t.arr_f32");
    float f32s[2];
    memcpy(f32s, kv->arr_data, sizeof f32s);
    assert_true(f32s[0] == 0.5f && f32s[1] == -1.25f);

    kv = gguf_find_kv(f, "t.arr_bool");
    assert_int_equal(kv->arr_count, 3);
    assert_memory_equal(kv->arr_data, "\1\0\1", 3);

    kv = gguf_find_kv(f, "t.arr_i64");
    int64_t i64s[2];
    memcpy(i64s, kv->arr_data, sizeof i64s);
    assert_true(i64s[0] == INT64_MIN && i64s[1] == INT64_MAX);

    kv = gguf_find_kv(f, "t.arr_f64");
    double f64s[2];
    memcpy(f64s, kv->arr_data, sizeof f64s);
    assert_true(f64s[0] == 1e300 && f64s[1] == -2.5);

    kv = gguf_find_kv(f, "t.arr_u16");
    assert_int_equal(kv->arr_type, GGUF_VT_U16);
    kv = gguf_find_kv(f, "t.arr_empty");
    assert_int_equal(kv->arr_count, 0);

    /* kv_at order is file order */
    assert_true(str_eq(gguf_kv_at(f, 0)->key, "general.architecture"));
    assert_true(str_eq(gguf_kv_at(f, 19)->key, "t.arr_empty"));
    assert_null(gguf_kv_at(f, 20));
}

static void check_small_tensors(gguf_file *f)
{
    const gguf_tensor *t;
    float y[64];
    assert_int_equal(gguf_tensor_count(f), 3);
    assert_string_equal(gguf_tensor_at(f, 0)->name, "norm.weight");
    assert_null(gguf_tensor_at(f, 3));

    t = gguf_find_tensor(f, "norm.weight");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_TT_F32);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 5);
    assert_int_equal(t->ne[1], 1);
    assert_int_equal(t->n_elements, 5);
    assert_int_equal(t->n_bytes, 20);
    assert_int_equal(gguf_dequantize(t->type, t->data, y, 5), 0);
    assert_true(y[0] == -4.0f && y[4] == -3.5f);

    t = gguf_find_tensor(f, "blk.0.w");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_TT_Q8_0);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[1], 2);
    assert_int_equal(t->n_bytes, 68);
    assert_int_equal(t->offset % 32, 0);
    assert_int_equal(gguf_dequantize(t->type, t->data, y, 64), 0);
    for (int i = 0; i < 64; i++)
        assert_true(fabsf(y[i] - ((float)i / 8.0f - 4.0f)) < 0.03f);

    t = gguf_find_tensor(f, "blk.0.v");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[2], 2);
    assert_int_equal(t->n_elements, 64);
    assert_int_equal(t->n_bytes, 40);

    assert_null(gguf_find_tensor(f, "blk.0"));
    assert_null(gguf_find_tensor(f, "zzz"));
    assert_null(gguf_find_tensor(f, ""));
}

/* Build make_small(version) and open it. */
static gguf_file *open_small(uint32_t version, void **copy)
{
    tgguf *g = make_small(version);
    gguf_file *f = open_g(g, copy);
    tgguf_free(g);
    return f;
}

static void test_parse_all_types_v3(void **state)
{
    void *copy;
    gguf_file *f = open_small(3, &copy);
    assert_int_equal(gguf_version(f), 3);
    check_small_metadata(f);
    check_small_tensors(f);
    gguf_close(f);
    free(copy);
}

static void test_parse_all_types_v2(void **state)
{
    void *copy;
    gguf_file *f = open_small(2, &copy);
    assert_int_equal(gguf_version(f), 2);
    check_small_metadata(f);
    check_small_tensors(f);
    gguf_close(f);
    free(copy);
}

static void test_alignment_key(void **state)
{
    void *copy;
    uint8_t data[6] = { 1, 2, 3, 4, 5, 6 };
    uint64_t ne[1] = { 3 };
    tgguf *g = tgguf_new();
    tgguf_kv_u32(g, "general.alignment", 256);
    tgguf_tensor(g, "a", GGUF_TT_F16, 1, ne, data, 6);
    tgguf_tensor(g, "b", GGUF_TT_F16, 1, ne, data, 6);
    size_t dpos = tgguf_data_pos(g);
    gguf_file *f = open_g(g, &copy);
    assert_int_equal(dpos % 256, 0);
    const gguf_tensor *a = gguf_find_tensor(f, "a"), *b = gguf_find_tensor(f, "b");
    assert_int_equal(a->offset, 0);
    assert_int_equal(b->offset, 256);
    assert_ptr_equal(a->data, (uint8_t *)copy + dpos);
    assert_ptr_equal(b->data, (uint8_t *)copy + dpos + 256);
    assert_memory_equal(b->data, data, 6);
    gguf_close(f);
    free(copy);
    tgguf_free(g);
}

static void test_alignment_default_and_one(void **state)
{
    void *copy;
    uint64_t ne[1] = { 3 };
    uint8_t data[6] = { 0 };
    tgguf *g = tgguf_new();
    tgguf_kv_u32(g, "general.alignment", 1);
    tgguf_tensor(g, "a", GGUF_TT_F16, 1, ne, data, 6);
    tgguf_tensor(g, "b", GGUF_TT_F16, 1, ne, data, 6);
    gguf_file *f = open_g(g, &copy);
    assert_int_equal(gguf_find_tensor(f, "b")->offset, 6);
    gguf_close(f);
    free(copy);
    tgguf_free(g);

    /* default 32: an offset aligned to 16 only is rejected */
    g = tgguf_new();
    tgguf_set_alignment(g, 16);
    tgguf_tensor(g, "a", GGUF_TT_F16, 1, ne, data, 6);
    tgguf_tensor(g, "b", GGUF_TT_F16, 1, ne, data, 6);
    expect_fail_g(g, "alignment 32");
}

static void test_bad_alignment(void **state)
{
    tgguf *g = tgguf_new();
    tgguf_kv_u32(g, "general.alignment", 48);
    expect_fail_g(g, "power of two");
    g = tgguf_new();
    tgguf_kv_u32(g, "general.alignment", 0);
    expect_fail_g(g, "power of two");
    g = tgguf_new();
    tgguf_kv_u64(g, "general.alignment", 64);
    expect_fail_g(g, "general.alignment");
}

static void test_getter_ranges(void **state)
{
    void *copy;
    float x;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    tgguf *g = tgguf_new();
    tgguf_kv_f64(g, "big", 1e300);
    tgguf_kv_f64(g, "inf", INFINITY);
    tgguf_kv_f64(g, "max", 3.0e38);
    tgguf_kv_i32(g, "neg", -5);
    tgguf_kv_i64(g, "i64max", INT64_MAX);
    tgguf_kv_u64(g, "u32max", UINT32_MAX);
    gguf_file *f = open_g(g, &copy);
    assert_int_equal(gguf_get_f32(f, "big", &x), -1);
    assert_int_equal(gguf_get_f32(f, "inf", &x), 0);
    assert_true(isinf(x));
    assert_int_equal(gguf_get_f32(f, "max", &x), 0);
    assert_true(x == 3.0e38f);
    assert_int_equal(gguf_get_u32(f, "neg", &u32), -1);
    assert_int_equal(gguf_get_i64(f, "neg", &i64), 0);
    assert_true(i64 == -5);
    assert_int_equal(gguf_get_u64(f, "i64max", &u64), 0);
    assert_true(u64 == (uint64_t)INT64_MAX);
    assert_int_equal(gguf_get_u32(f, "u32max", &u32), 0);
    assert_true(u32 == UINT32_MAX);
    assert_int_equal(gguf_get_u32(f, "i64max", &u32), -1);
    assert_int_equal(gguf_get_i64(f, "u32max", &i64), 0);
    assert_true(i64 == UINT32_MAX);
    assert_null(gguf_find_kv(f, NULL));
    assert_null(gguf_find_tensor(f, NULL));
    gguf_close(f);
    gguf_close(NULL);
    free(copy);
    tgguf_free(g);
}

/* Truncation errors name the key or tensor being read. */
static void test_error_context(void **state)
{
    size_t size;
    uint64_t ne[2] = { 8, 2 };
    tgguf *g = tgguf_new();
    tgguf_kv_str(g, "my.key", "some value");
    size_t kv_end = tgguf_tensor_info_pos(g, 0);
    tgguf_tensor(g, "my.tensor", GGUF_TT_F32, 2, ne, NULL, 64);
    uint8_t *img = tgguf_image(g, &size);
    tgguf_free(g);
    expect_fail(img, kv_end - 3, "key 'my.key'");
    expect_fail(img, kv_end + 8 + 9 + 4 + 5, "tensor 'my.tensor'");
    free(img);
}

static void test_empty_file_ok(void **state)
{
    void *copy;
    tgguf *g = tgguf_new();
    gguf_file *f = open_g(g, &copy);
    assert_int_equal(gguf_kv_count(f), 0);
    assert_int_equal(gguf_tensor_count(f), 0);
    assert_null(gguf_find_kv(f, "x"));
    assert_null(gguf_find_tensor(f, "x"));
    gguf_close(f);
    free(copy);
    tgguf_free(g);
}

static void test_open_file(void **state)
{
    char path[] = "/tmp/test_gguf_XXXXXX";
    char err[512];
    gguf_file *f = NULL;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tgguf *g = make_small(3);
    assert_int_equal(tgguf_write(g, path), 0);
    tgguf_free(g);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), 0);
    check_small_metadata(f);
    check_small_tensors(f);
    gguf_close(f);

    /* truncate the file: error names the path */
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), -1);
    assert_null(f);
    assert_non_null(strstr(err, path));
    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    unlink(path);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(gguf_open("/tmp", &f, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
}

/* ----------------------------------------------------------- hostile files */

static void check_truncations(size_t pad)
{
    size_t size;
    tgguf *g = make_small_padded(3, pad);
    uint8_t *img = tgguf_image(g, &size);
    tgguf_free(g);
    for (size_t len = 0; len < size; len++) {
        char err[512] = "";
        gguf_file *f = NULL;
        void *copy = NULL;
        if (open_copy(img, len, &f, &copy, err, sizeof err) == 0) {
            gguf_close(f);
            free(copy);
            free(img);
            fail_msg("prefix of %zu/%zu bytes parsed", len, size);
        }
        if (strlen(err) == 0)
            fail_msg("empty error for prefix of %zu bytes", len);
    }
    /* the full image parses */
    void *copy;
    gguf_file *f = NULL;
    char err[512];
    assert_int_equal(open_copy(img, size, &f, &copy, err, sizeof err), 0);
    gguf_close(f);
    free(copy);
    free(img);
}

static void test_truncated_every_offset(void **state)
{
    check_truncations(0);
    check_truncations(600);
}

static void test_bad_magic_and_version(void **state)
{
    size_t size;
    tgguf *g = make_small(3);
    uint8_t *img = tgguf_image(g, &size);
    tgguf_free(g);
    img[0] = 'X';
    expect_fail(img, size, "bad magic");
    img[0] = 'G';
    put_le(img + 4, 1, 4);
    expect_fail(img, size, "version 1");
    put_le(img + 4, 4, 4);
    expect_fail(img, size, "version 4");
    put_le(img + 4, 0xffffffffu, 4);
    expect_fail(img, size, "version");
    free(img);
    expect_fail("GGU", 3, "truncated");
    expect_fail("", 0, "truncated");
    char err[64];
    gguf_file *f;
    assert_int_equal(gguf_open_memory(NULL, 0, &f, err, sizeof err), -1);
    assert_int_equal(gguf_open_memory(NULL, 10, &f, err, sizeof err), -1);
    /* a NULL or zero-length err buffer is tolerated */
    assert_int_equal(gguf_open_memory("GGUF", 4, &f, NULL, 0), -1);
    assert_int_equal(gguf_open_memory("GGUF", 4, &f, err, 0), -1);
}

static void test_huge_counts(void **state)
{
    size_t size;
    tgguf *g = make_small(3);
    uint8_t *img = tgguf_image(g, &size);
    tgguf_free(g);
    uint8_t *mod = malloc(size);
    uint64_t huge[] = { 1ull << 62, UINT64_MAX, 1ull << 32, 100000 };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        memcpy(mod, img, size);
        put_le(mod + 16, huge[i], 8);
        expect_fail(mod, size, "kv count");
        memcpy(mod, img, size);
        put_le(mod + 8, huge[i], 8);
        expect_fail(mod, size, "tensor count");
    }
    /* slightly too many: runs off the end (or misparses) but fails cleanly */
    memcpy(mod, img, size);
    put_le(mod + 16, 21, 8);
    expect_fail(mod, size, NULL);
    memcpy(mod, img, size);
    put_le(mod + 8, 4, 8);
    expect_fail(mod, size, NULL);
    free(mod);
    free(img);
}

static void test_huge_string_lengths(void **state)
{
    struct raw r;
    uint64_t lens[] = { 1ull << 63, UINT64_MAX, 1ull << 32, 70000, 1000 };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        /* key length */
        r_header(&r, 0, 1);
        r_u64(&r, lens[i]);
        r_bytes(&r, "abcdefgh", 8);
        r_u32(&r, GGUF_VT_U8);
        r_bytes(&r, "\0", 1);
        expect_fail(r.b, r.n, "key at offset 24");
        /* string value length */
        r_header(&r, 0, 1);
        r_str(&r, "k");
        r_u32(&r, GGUF_VT_STRING);
        r_u64(&r, lens[i]);
        r_bytes(&r, "abcdefgh", 8);
        expect_fail(r.b, r.n, "string value");
        /* tensor name length */
        r_header(&r, 1, 0);
        r_u64(&r, lens[i]);
        r_bytes(&r, "abcdefghabcdefghabcdefghabcdefghabcdefgh", 40);
        expect_fail(r.b, r.n, "tensor name");
    }
}

static void test_string_array_element_bad(void **state)
{
    struct raw r;
    r_header(&r, 0, 1);
    r_str(&r, "tok");
    r_u32(&r, GGUF_VT_ARRAY);
    r_u32(&r, GGUF_VT_STRING);
    r_u64(&r, 2);
    r_str(&r, "ok");
    r_u64(&r, 1ull << 63);
    r_bytes(&r, "xxxxxxxx", 8);
    expect_fail(r.b, r.n, "element 1");
}

static void test_huge_array_counts(void **state)
{
    struct raw r;
    uint32_t types[] = { GGUF_VT_U8, GGUF_VT_U32, GGUF_VT_F64, GGUF_VT_STRING, GGUF_VT_BOOL };
    uint64_t counts[] = { 1ull << 62, UINT64_MAX, 1ull << 61, 1ull << 32, 64 };
    for (size_t t = 0; t < 5; t++) {
        for (size_t c = 0; c < 5; c++) {
            r_header(&r, 0, 1);
            r_str(&r, "arr");
            r_u32(&r, GGUF_VT_ARRAY);
            r_u32(&r, types[t]);
            r_u64(&r, counts[c]);
            r_bytes(&r, "\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1", 16);
            expect_fail(r.b, r.n, "arr");
        }
    }
}

static void test_bad_value_types(void **state)
{
    struct raw r;
    /* unknown value type */
    r_header(&r, 0, 1);
    r_str(&r, "k.unknown");
    r_u32(&r, 13);
    r_u64(&r, 0);
    expect_fail(r.b, r.n, "unknown value type 13");
    r_header(&r, 0, 1);
    r_str(&r, "k");
    r_u32(&r, 0xffffffffu);
    r_u64(&r, 0);
    expect_fail(r.b, r.n, "unknown value type");
    /* unknown array element type */
    r_header(&r, 0, 1);
    r_str(&r, "k.arr");
    r_u32(&r, GGUF_VT_ARRAY);
    r_u32(&r, 99);
    r_u64(&r, 1);
    r_u64(&r, 0);
    expect_fail(r.b, r.n, "unknown array element type 99");
    /* nested array */
    r_header(&r, 0, 1);
    r_str(&r, "k.nested");
    r_u32(&r, GGUF_VT_ARRAY);
    r_u32(&r, GGUF_VT_ARRAY);
    r_u64(&r, 1);
    r_u32(&r, GGUF_VT_U8);
    r_u64(&r, 1);
    r_bytes(&r, "\0", 1);
    expect_fail(r.b, r.n, "nested");
    /* invalid bool */
    tgguf *g = tgguf_new();
    tgguf_kv_raw(g, "k.bool", GGUF_VT_BOOL, "\2", 1);
    expect_fail_g(g, "bool");
    uint8_t bools[3] = { 0, 1, 7 };
    g = tgguf_new();
    tgguf_kv_arr(g, "k.bools", GGUF_VT_BOOL, bools, 3);
    expect_fail_g(g, "bool");
    /* empty key */
    g = tgguf_new();
    tgguf_kv_u8(g, "", 1);
    expect_fail_g(g, "empty key");
    /* duplicate key */
    g = tgguf_new();
    tgguf_kv_u8(g, "dup.key", 1);
    tgguf_kv_u8(g, "other", 1);
    tgguf_kv_str(g, "dup.key", "x");
    expect_fail_g(g, "duplicate key 'dup.key'");
}

static void test_bad_dims(void **state)
{
    uint64_t ne5[5] = { 32, 1, 1, 1, 1 };
    tgguf *g = tgguf_new();
    tgguf_tensor(g, "t5", GGUF_TT_F32, 5, ne5, NULL, 128);
    expect_fail_g(g, "n_dims 5");
    g = tgguf_new();
    tgguf_tensor(g, "t0", GGUF_TT_F32, 0, ne5, NULL, 4);
    expect_fail_g(g, "n_dims 0");
    /* product overflows */
    uint64_t big[4] = { 1ull << 32, 1ull << 32, 1ull << 32, 1 };
    g = tgguf_new();
    tgguf_tensor(g, "big", GGUF_TT_F32, 3, big, NULL, 64);
    expect_fail_g(g, "overflow");
    uint64_t big2[2] = { 1ull << 32, 1ull << 31 };    /* = 2^63 > INT64_MAX */
    g = tgguf_new();
    tgguf_tensor(g, "big2", GGUF_TT_F32, 2, big2, NULL, 64);
    expect_fail_g(g, "overflow");
    uint64_t big3[1] = { UINT64_MAX };
    g = tgguf_new();
    tgguf_tensor(g, "big3", GGUF_TT_F32, 1, big3, NULL, 64);
    expect_fail_g(g, "big3");
    /* elements fit but bytes overflow */
    uint64_t big4[2] = { 1ull << 32, 1ull << 30 };
    g = tgguf_new();
    tgguf_tensor(g, "big4", GGUF_TT_F32, 2, big4, NULL, 64);
    expect_fail_g(g, "big4");
    /* zero dimension */
    uint64_t zero[2] = { 32, 0 };
    g = tgguf_new();
    tgguf_tensor(g, "zero", GGUF_TT_F32, 2, zero, NULL, 64);
    expect_fail_g(g, "dimension 1");
    /* ne[0] not a multiple of the block size */
    uint64_t odd[1] = { 48 };
    g = tgguf_new();
    tgguf_tensor(g, "odd", GGUF_TT_Q8_0, 1, odd, NULL, 64);
    expect_fail_g(g, "not a multiple of the Q8_0 block size");
    uint64_t kq[1] = { 128 };
    g = tgguf_new();
    tgguf_tensor(g, "kq", GGUF_TT_Q4_K, 1, kq, NULL, 144);
    expect_fail_g(g, "kq");
}

static void test_bad_tensor_names(void **state)
{
    uint64_t ne[1] = { 8 };
    char name[200];
    memset(name, 'n', sizeof name);
    name[128] = '\0';                              /* 128 bytes: too long */
    tgguf *g = tgguf_new();
    tgguf_tensor(g, name, GGUF_TT_F32, 1, ne, NULL, 32);
    expect_fail_g(g, "exceeds limit 127");
    name[127] = '\0';                              /* 127 bytes: fine */
    g = tgguf_new();
    tgguf_tensor(g, name, GGUF_TT_F32, 1, ne, NULL, 32);
    void *copy;
    gguf_file *f = open_g(g, &copy);
    assert_non_null(gguf_find_tensor(f, name));
    gguf_close(f);
    free(copy);
    tgguf_free(g);
    g = tgguf_new();
    tgguf_tensor(g, "", GGUF_TT_F32, 1, ne, NULL, 32);
    expect_fail_g(g, "empty name");
    /* name with an embedded NUL, assembled by hand */
    struct raw r;
    r_header(&r, 1, 0);
    r_u64(&r, 3);
    r_bytes(&r, "a\0b", 3);
    r_u32(&r, 1);
    r_u64(&r, 8);
    r_u32(&r, GGUF_TT_F32);
    r_u64(&r, 0);
    while (r.n % 32)
        r.b[r.n++] = 0;
    memset(r.b + r.n, 0, 32);
    r.n += 32;
    expect_fail(r.b, r.n, "NUL");
    /* duplicate names */
    g = tgguf_new();
    tgguf_tensor(g, "same", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_tensor(g, "other", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_tensor(g, "same", GGUF_TT_F32, 1, ne, NULL, 32);
    expect_fail_g(g, "duplicate tensor name 'same'");
}

static void test_unknown_tensor_type(void **state)
{
    uint64_t ne[1] = { 32 };
    uint32_t bad[] = { 4, 5, 9, 15, 16, 17, 18, 19, 21, 22, 24, 29, 31, 1000, 0xffffffffu };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tgguf *g = tgguf_new();
        tgguf_tensor(g, "weird", bad[i], 1, ne, NULL, 128);
        char needle[64];
        snprintf(needle, sizeof needle, "unsupported tensor type %u", bad[i]);
        expect_fail_g(g, needle);
    }
}

static void test_bad_offsets(void **state)
{
    uint64_t ne[1] = { 8 };
    /* past end of file */
    tgguf *g = tgguf_new();
    tgguf_tensor(g, "a", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_set_tensor_offset(g, 0, 64);
    expect_fail_g(g, "'a': data");
    g = tgguf_new();
    tgguf_tensor(g, "a", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_set_tensor_offset(g, 0, UINT64_MAX - 31);   /* aligned, and wraps */
    expect_fail_g(g, "past end of file");
    g = tgguf_new();
    tgguf_tensor(g, "a", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_set_tensor_offset(g, 0, 1ull << 62);
    expect_fail_g(g, "past end of file");
    /* data runs past the end by one element */
    uint64_t ne9[1] = { 9 };
    g = tgguf_new();
    tgguf_tensor(g, "short", GGUF_TT_F32, 1, ne9, NULL, 32);
    expect_fail_g(g, "'short': data");
    /* misaligned */
    g = tgguf_new();
    tgguf_tensor(g, "a", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_tensor(g, "b", GGUF_TT_F32, 1, ne, NULL, 32);
    tgguf_set_tensor_offset(g, 1, 4);
    expect_fail_g(g, "tensor 'b': offset 4 is not a multiple of the alignment 32");
    /* overlapping */
    uint64_t ne16[1] = { 16 };
    g = tgguf_new();
    tgguf_tensor(g, "first", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_tensor(g, "second", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_set_tensor_offset(g, 1, 32);
    expect_fail_g(g, "overlaps");
    g = tgguf_new();                                  /* identical offsets */
    tgguf_tensor(g, "first", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_tensor(g, "second", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_set_tensor_offset(g, 1, 0);
    expect_fail_g(g, "overlaps");
    /* out of order but disjoint is fine */
    g = tgguf_new();
    tgguf_tensor(g, "first", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_tensor(g, "second", GGUF_TT_F32, 1, ne16, NULL, 64);
    tgguf_set_tensor_offset(g, 0, 64);
    tgguf_set_tensor_offset(g, 1, 0);
    void *copy;
    gguf_file *f = open_g(g, &copy);
    assert_int_equal(gguf_find_tensor(f, "first")->offset, 64);
    gguf_close(f);
    free(copy);
    tgguf_free(g);
}

/* Flip every byte of the small file to a few values: must never crash. */
static void test_byte_flips(void **state)
{
    size_t size;
    tgguf *g = make_small(3);
    uint8_t *img = tgguf_image(g, &size);
    tgguf_free(g);
    uint8_t vals[] = { 0x00, 0xff, 0x80, 0x7f, 0x01 };
    uint8_t *mod = malloc(size);
    for (size_t i = 0; i < size; i++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            char err[512] = "";
            gguf_file *f = NULL;
            memcpy(mod, img, size);
            mod[i] = vals[v];
            if (gguf_open_memory(mod, size, &f, err, sizeof err) == 0) {
                for (uint64_t t = 0; t < gguf_tensor_count(f); t++) {
                    const gguf_tensor *tt = gguf_tensor_at(f, t);
                    uint32_t be;
                    float y[256];
                    assert_int_equal(gguf_type_block(tt->type, &be, NULL), 0);
                    assert_int_equal(gguf_dequantize(tt->type, tt->data, y, be), 0);
                }
                gguf_close(f);
            } else {
                assert_true(strlen(err) > 0);
            }
        }
    }
    free(mod);
    free(img);
}

/* ------------------------------------------------------ conversions/dequant */

static void test_f16_conversions(void **state)
{
    /* every non-NaN half round-trips exactly through f32 */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = gguf_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
            assert_true(isnan(gguf_f16_to_f32(gguf_f32_to_f16(f))));
            continue;
        }
        if (gguf_f32_to_f16(f) != h)
            fail_msg("f16 0x%04x -> %g -> 0x%04x", h, (double)f, gguf_f32_to_f16(f));
    }
    assert_true(gguf_f16_to_f32(0x3c00) == 1.0f);
    assert_true(gguf_f16_to_f32(0xc000) == -2.0f);
    assert_true(gguf_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(gguf_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(isinf(gguf_f16_to_f32(0x7c00)));
    /* rounding: halfway cases go to even, overflow to inf */
    assert_int_equal(gguf_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(gguf_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(gguf_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    assert_int_equal(gguf_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(gguf_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(gguf_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(gguf_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(gguf_f32_to_f16(0x1p-25f), 0x0000);             /* tie -> even 0 */
    assert_int_equal(gguf_f32_to_f16(0x1p-25f + 0x1p-30f), 0x0001);
    assert_int_equal(gguf_f32_to_f16(3 * 0x1p-25f), 0x0002);         /* tie -> even 2 */
    assert_int_equal(gguf_f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400);  /* rounds up to normal */
    assert_int_equal(gguf_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(gguf_f32_to_f16(1e-30f), 0x0000);
    /* bf16 */
    assert_true(gguf_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(gguf_bf16_to_f32(0xc0a0) == -5.0f);
    assert_true(gguf_bf16_to_f32(0x0001) == 0x1p-133f);
}

static void test_type_geometry(void **state)
{
    uint32_t be, bb;
    struct { uint32_t t, be, bb; const char *name; } tab[] = {
        { GGUF_TT_F32, 1, 4, "F32" }, { GGUF_TT_F16, 1, 2, "F16" },
        { GGUF_TT_BF16, 1, 2, "BF16" }, { GGUF_TT_Q4_0, 32, 18, "Q4_0" },
        { GGUF_TT_Q4_1, 32, 20, "Q4_1" }, { GGUF_TT_Q8_0, 32, 34, "Q8_0" },
        { GGUF_TT_Q4_K, 256, 144, "Q4_K" }, { GGUF_TT_Q6_K, 256, 210, "Q6_K" },
        { GGUF_TT_Q5_0, 32, 22, "Q5_0" }, { GGUF_TT_Q5_1, 32, 24, "Q5_1" },
        { GGUF_TT_Q2_K, 256, 84, "Q2_K" }, { GGUF_TT_Q3_K, 256, 110, "Q3_K" },
        { GGUF_TT_Q5_K, 256, 176, "Q5_K" }, { GGUF_TT_IQ4_NL, 32, 18, "IQ4_NL" },
        { GGUF_TT_IQ4_XS, 256, 136, "IQ4_XS" },
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        assert_int_equal(gguf_type_block(tab[i].t, &be, &bb), 0);
        assert_int_equal(be, tab[i].be);
        assert_int_equal(bb, tab[i].bb);
        assert_string_equal(gguf_type_name(tab[i].t), tab[i].name);
    }
    assert_int_equal(gguf_type_block(9, &be, &bb), -1);
    assert_string_equal(gguf_type_name(9), "unknown");
    float y[64];
    uint8_t blk[64] = { 0 };
    assert_int_equal(gguf_dequantize(9, blk, y, 32), -1);
    assert_int_equal(gguf_dequantize(GGUF_TT_Q8_0, blk, y, 31), -1);
    assert_int_equal(gguf_dequantize(GGUF_TT_Q8_0, blk, y, 0), 0);
    assert_int_equal(gguf_dequantize(GGUF_TT_Q4_K, blk, y, 32), -1);
}

static uint8_t *hex_decode(const char *hex, size_t *n)
{
    size_t len = strlen(hex);
    assert_int_equal(len % 2, 0);
    uint8_t *out = malloc(len / 2 ? len / 2 : 1);
    assert_non_null(out);
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    *n = len / 2;
    return out;
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *s = malloc((size_t)sz + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)sz, fp), (size_t)sz);
    s[sz] = '\0';
    fclose(fp);
    return s;
}

/* Compare one fixture case; returns the number of mismatches. */
/* A type's exact affine form (gguf_affine: level * d + m, as the engine
 * stores its weights) equals its dequantized values y (to the last bit the
 * float sum d * level + m keeps: the two are the same real number, computed
 * with one rounding each), and its levels stay within the type's range. */
static int check_affine(uint32_t type, const char *tname, const uint8_t *raw, const float *y, uint64_t n)
{
    int max_level = gguf_affine_max_level(type);
    if (max_level < 0) {
        assert_int_equal(gguf_affine(type, raw, NULL, NULL, NULL), -1);
        return 0;
    }
    uint32_t be, bb;
    assert_int_equal(gguf_type_block(type, &be, &bb), 0);
    uint8_t lv[256];
    float d[8], m[8];
    int bad = 0;
    for (uint64_t b = 0; b < n / be; b++) {
        assert_int_equal(gguf_affine(type, raw + b * bb, lv, d, m), 0);
        for (uint32_t i = 0; i < be; i++) {
            double v = (double)d[i / 32] * lv[i] + (double)m[i / 32], want = y[b * be + i];
            double tol = 6e-8 * (fabs(want) + fabs((double)m[i / 32]));
            if (lv[i] > max_level || !(fabs(v - want) <= tol)) {
                if (bad++ < 5)
                    print_error("%s affine[%llu]: level %d -> %.9g, dequantized %.9g\n", tname,
                                (unsigned long long)(b * be + i), lv[i], v, want);
            }
        }
    }
    return bad;
}

static int check_dequant_case(const cJSON *c)
{
    const cJSON *jt = cJSON_GetObjectItem(c, "type_id"), *jn = cJSON_GetObjectItem(c, "n");
    const cJSON *jraw = cJSON_GetObjectItem(c, "raw_hex"), *jexp = cJSON_GetObjectItem(c, "expected");
    const char *tname = cJSON_GetStringValue(cJSON_GetObjectItem(c, "type"));
    assert_true(cJSON_IsNumber(jt) && cJSON_IsNumber(jn) && cJSON_IsString(jraw));
    uint32_t type = (uint32_t)jt->valuedouble;
    uint64_t n = (uint64_t)jn->valuedouble;
    size_t nraw;
    uint8_t *raw = hex_decode(jraw->valuestring, &nraw);
    assert_int_equal(nraw, tgguf_type_nbytes(type, n));
    assert_int_equal(cJSON_GetArraySize(jexp), (int)n);
    assert_string_equal(gguf_type_name(type), tname);
    float *y = malloc(n * sizeof *y);
    assert_int_equal(gguf_dequantize(type, raw, y, n), 0);
    /* Exact in practice; allow 1e-6 relative to the element or, for values
     * near zero after cancellation (d*q - m, possibly fused), to the case's
     * largest magnitude. */
    float scale = 0.0f;
    for (uint64_t i = 0; i < n; i++)
        scale = fmaxf(scale, fabsf((float)cJSON_GetArrayItem(jexp, (int)i)->valuedouble));
    int bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        float want = (float)cJSON_GetArrayItem(jexp, (int)i)->valuedouble;
        float tol = 1e-6f * fmaxf(fabsf(want), n > 1 && type != GGUF_TT_F32 &&
                                  type != GGUF_TT_F16 && type != GGUF_TT_BF16 ? scale : 0.0f);
        if (!(y[i] == want || fabsf(y[i] - want) <= tol)) {
            if (bad++ < 5)
                print_error("%s[%llu]: got %.9g want %.9g\n", tname, (unsigned long long)i,
                            (double)y[i], (double)want);
        }
    }
    bad += check_affine(type, tname, raw, y, n);
    free(y);
    free(raw);
    return bad;
}

static void test_dequant_fixtures(void **state)
{
    char *text = read_text(FIXTURE_PATH);
    if (!text)
        fail_msg("cannot read %s (run tests from the repository root)", FIXTURE_PATH);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    assert_true(cJSON_IsArray(cases));
    int bad = 0, n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        bad += check_dequant_case(c);
        n_cases++;
    }
    assert_int_equal(n_cases, 15);
    assert_int_equal(bad, 0);
    cJSON_Delete(root);
    free(text);
}

/* The reference quantizers and dequantizers agree within quantization error. */
static void test_quantize_roundtrip(void **state)
{
    enum { N = 256 };
    float x[N], y[N];
    uint8_t buf[N * 4];
    uint32_t types[] = { GGUF_TT_F32, GGUF_TT_F16, GGUF_TT_BF16, GGUF_TT_Q8_0,
                         GGUF_TT_Q4_0, GGUF_TT_Q4_1 };
    float tol[] = { 0.0f, 1e-3f, 1e-2f, 0.02f, 0.25f, 0.15f };
    for (int i = 0; i < N; i++)
        x[i] = sinf((float)i * 0.37f) * 1.5f;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        size_t nb = tgguf_quantize(types[t], x, N, buf);
        assert_int_equal(nb, tgguf_type_nbytes(types[t], N));
        assert_int_equal(gguf_dequantize(types[t], buf, y, N), 0);
        for (int i = 0; i < N; i++)
            if (fabsf(y[i] - x[i]) > tol[t])
                fail_msg("%s: x[%d] = %g -> %g", gguf_type_name(types[t]), i,
                         (double)x[i], (double)y[i]);
    }
    /* random blocks of every type dequantize to finite, bounded values */
    uint32_t all[] = { GGUF_TT_F32, GGUF_TT_F16, GGUF_TT_BF16, GGUF_TT_Q8_0, GGUF_TT_Q4_0,
                       GGUF_TT_Q4_1, GGUF_TT_Q4_K, GGUF_TT_Q6_K, GGUF_TT_Q5_0, GGUF_TT_Q5_1,
                       GGUF_TT_Q2_K, GGUF_TT_Q3_K, GGUF_TT_Q5_K, GGUF_TT_IQ4_NL, GGUF_TT_IQ4_XS };
    for (size_t t = 0; t < sizeof all / sizeof all[0]; t++) {
        uint8_t b1[N * 4], b2[N * 4];
        size_t nb = tgguf_random_blocks(all[t], 42, N, b1);
        assert_int_equal(nb, tgguf_type_nbytes(all[t], N));
        tgguf_random_blocks(all[t], 42, N, b2);
        assert_memory_equal(b1, b2, nb);                 /* deterministic */
        assert_int_equal(gguf_dequantize(all[t], b1, y, N), 0);
        for (int i = 0; i < N; i++)
            assert_true(isfinite(y[i]) && fabsf(y[i]) < 200.0f);
    }
}

/* ------------------------------------------------------------- real model */

static void test_real_model(void **state)
{
    char err[512];
    gguf_file *f = NULL;
    if (access(MODEL_PATH, R_OK) != 0) {
        skip();
        return;
    }
    if (gguf_open(MODEL_PATH, &f, err, sizeof err) != 0)
        fail_msg("%s", err);
    uint32_t n;
    gguf_str s;
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_get_u32(f, "llama.block_count", &n), 0);
    assert_int_equal(n, 30);
    assert_int_equal(gguf_get_str(f, "general.architecture", &s), 0);
    assert_true(str_eq(s, "llama"));
    assert_int_equal(gguf_tensor_count(f), 272);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, GGUF_TT_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
    assert_non_null(kv);
    assert_int_equal(kv->arr_type, GGUF_VT_STRING);
    assert_int_equal(kv->arr_count, 49152);
    /* every tensor dequantizes its first row to finite values */
    float *row = malloc(576 * 4 * sizeof *row);
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *ti = gguf_tensor_at(f, i);
        assert_true(ti->type == GGUF_TT_Q4_1 || ti->type == GGUF_TT_Q8_0 ||
                    ti->type == GGUF_TT_F32);
        assert_true(ti->ne[0] <= 576 * 4);
        assert_int_equal(gguf_dequantize(ti->type, ti->data, row, ti->ne[0]), 0);
        for (uint64_t j = 0; j < ti->ne[0]; j++)
            assert_true(isfinite(row[j]));
    }
    free(row);
    gguf_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_all_types_v3),
        cmocka_unit_test(test_parse_all_types_v2),
        cmocka_unit_test(test_alignment_key),
        cmocka_unit_test(test_alignment_default_and_one),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_getter_ranges),
        cmocka_unit_test(test_error_context),
        cmocka_unit_test(test_empty_file_ok),
        cmocka_unit_test(test_open_file),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_huge_string_lengths),
        cmocka_unit_test(test_string_array_element_bad),
        cmocka_unit_test(test_huge_array_counts),
        cmocka_unit_test(test_bad_value_types),
        cmocka_unit_test(test_bad_dims),
        cmocka_unit_test(test_bad_tensor_names),
        cmocka_unit_test(test_unknown_tensor_type),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_f16_conversions),
        cmocka_unit_test(test_type_geometry),
        cmocka_unit_test(test_dequant_fixtures),
        cmocka_unit_test(test_quantize_roundtrip),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
