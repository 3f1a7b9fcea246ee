/*
 * testutil_gguf.h - in-memory GGUF writer and quantizers for tests.
 *
 * Build a GGUF image (v3 by default, v2 on request) key by key and tensor by
 * tensor, then get it as a malloc'd buffer (tgguf_image) or write it to a file
 * (tgguf_write):
 *
 *     tgguf *g = tgguf_new();
 *     tgguf_kv_str(g, "general.architecture", "llama");
 *     tgguf_kv_u32(g, "llama.block_count", 2);
 *     uint64_t ne[2] = { 64, 8 };
 *     tgguf_tensor_f32(g, "token_embd.weight", GGUF_TT_Q8_0, 2, ne, values);
 *     tgguf_write(g, "/tmp/tiny.gguf");
 *     tgguf_free(g);
 *
 * Layout follows the spec: header, kv pairs in insertion order, tensor infos
 * in insertion order, padding to the alignment, tensor data in insertion
 * order, each tensor's data padded to the alignment. The alignment is 32
 * unless tgguf_kv_u32(g, "general.alignment", a) or tgguf_set_alignment() says
 * otherwise. Misuse (bad type, n not a multiple of the block size) and
 * out-of-memory abort() with a message: this is test code.
 *
 * Nothing here validates what it writes, on purpose: tests use it to build
 * hostile files too (tgguf_kv_raw, tgguf_set_tensor_offset, patching the image).
 * This file has no main() and no cmocka dependency: it is linked into every
 * test binary.
 */
#ifndef SELFSPEC_TESTUTIL_GGUF_H
#define SELFSPEC_TESTUTIL_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "format/gguf.h"

typedef struct tgguf tgguf;

tgguf *tgguf_new(void);
void tgguf_free(tgguf *g);

/* Header version written (default 3). v2 and v3 share the same layout. */
void tgguf_set_version(tgguf *g, uint32_t version);
/* Alignment used to lay out the data section, without writing a key. */
void tgguf_set_alignment(tgguf *g, uint32_t alignment);

/* Scalar metadata. tgguf_kv_u32 with key "general.alignment" also sets the
 * layout alignment. */
void tgguf_kv_u8(tgguf *g, const char *key, uint8_t v);
void tgguf_kv_i8(tgguf *g, const char *key, int8_t v);
void tgguf_kv_u16(tgguf *g, const char *key, uint16_t v);
void tgguf_kv_i16(tgguf *g, const char *key, int16_t v);
void tgguf_kv_u32(tgguf *g, const char *key, uint32_t v);
void tgguf_kv_i32(tgguf *g, const char *key, int32_t v);
void tgguf_kv_u64(tgguf *g, const char *key, uint64_t v);
void tgguf_kv_i64(tgguf *g, const char *key, int64_t v);
void tgguf_kv_f32(tgguf *g, const char *key, float v);
void tgguf_kv_f64(tgguf *g, const char *key, double v);
void tgguf_kv_bool(tgguf *g, const char *key, int v);
void tgguf_kv_str(tgguf *g, const char *key, const char *s);
/* String value of explicit length (may contain NUL bytes). */
void tgguf_kv_strn(tgguf *g, const char *key, const char *s, size_t len);

/* Arrays. tgguf_kv_arr takes n elements of a fixed-size type (any of
 * GGUF_VT_U8..F64 except STRING/ARRAY) laid out in host memory as the C type
 * (uint8_t, int16_t, float, ...); they are written little-endian. */
void tgguf_kv_arr(tgguf *g, const char *key, uint32_t elem_type, const void *elems, size_t n);
void tgguf_kv_arr_str(tgguf *g, const char *key, const char *const *strs, size_t n);
void tgguf_kv_arr_i32(tgguf *g, const char *key, const int32_t *v, size_t n);
void tgguf_kv_arr_u32(tgguf *g, const char *key, const uint32_t *v, size_t n);
void tgguf_kv_arr_f32(tgguf *g, const char *key, const float *v, size_t n);

/* A pair with an arbitrary type number and raw value bytes (for hostile
 * files): writes key, type, then the payload verbatim. */
void tgguf_kv_raw(tgguf *g, const char *key, uint32_t type, const void *payload, size_t n);

/* Add a tensor with raw data of nbytes (copied; NULL data = zero-filled).
 * nbytes is not checked against the type/dims, on purpose. Returns the
 * tensor's index. ne has n_dims entries (n_dims 1..4 normally, but any value
 * up to 8 is written as given). */
size_t tgguf_tensor(tgguf *g, const char *name, uint32_t type, uint32_t n_dims,
                    const uint64_t *ne, const void *data, size_t nbytes);
/* Add a tensor from float values (prod(ne) of them), quantized to type with
 * tgguf_quantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1 only). Returns the index. */
size_t tgguf_tensor_f32(tgguf *g, const char *name, uint32_t type, uint32_t n_dims,
                        const uint64_t *ne, const float *values);
/* Override the data-section offset written for tensor idx (for hostile files).
 * The data itself is still placed where the writer would have put it. */
void tgguf_set_tensor_offset(tgguf *g, size_t idx, uint64_t offset);

/* The GGUF image as a malloc'd buffer (caller frees); *size gets its size. */
void *tgguf_image(tgguf *g, size_t *size);
/* Write the image to path. Returns 0, or -1 on I/O error. */
int tgguf_write(tgguf *g, const char *path);
/* Byte offset, within the image, of tensor idx's info record (its name
 * length), and of the data section. For patching images in tests. */
size_t tgguf_tensor_info_pos(tgguf *g, size_t idx);
size_t tgguf_data_pos(tgguf *g);

/* ---- quantization helpers ---- */

/* Bytes needed for n elements of type (n a multiple of the block size);
 * 0 for an unsupported type or bad n. */
size_t tgguf_type_nbytes(uint32_t type, uint64_t n);
/* Quantize n floats into dst (tgguf_type_nbytes(type, n) bytes), with the
 * round-to-nearest reference quantizers of ggml. Supported: F32, F16, BF16,
 * Q8_0, Q4_0, Q4_1. Returns the bytes written; aborts for other types. */
size_t tgguf_quantize(uint32_t type, const float *src, uint64_t n, void *dst);
/* Same, into a malloc'd buffer (caller frees). */
void *tgguf_quantize_alloc(uint32_t type, const float *src, uint64_t n, size_t *nbytes);
/* Fill dst with n elements' worth of random but valid blocks of type (any
 * supported type, including Q4_K and Q6_K): random quants, small positive f16
 * scales (about 1e-3..3e-2), floats in [-1, 1). Deterministic in seed.
 * Returns the bytes written. */
size_t tgguf_random_blocks(uint32_t type, uint64_t seed, uint64_t n, void *dst);

/* bf16 from f32, round to nearest even (NaN kept quiet). */
uint16_t tgguf_f32_to_bf16(float f);

#endif
