/*
 * gguf.h - read-only GGUF model files (versions 2 and 3), memory-mapped.
 *
 * gguf_open() maps the whole file, parses and validates the header, every
 * metadata key/value pair and every tensor info, and checks that every tensor's
 * data lies inside the file, is aligned, and does not overlap another tensor.
 * After a successful open, every pointer handed out by this module points into
 * the mapping (or into arrays owned by the gguf_file) and stays valid until
 * gguf_close(). Nothing here reads outside the mapping, whatever the file says.
 *
 * Errors: functions that can fail return 0 on success and -1 on failure, and
 * write a one-line, human-readable reason into err (naming the problem, e.g.
 * "tensor 'blk.3.attn_q.weight': data [x, y) past end of file (size z)").
 */
#ifndef SELFSPEC_GGUF_H
#define SELFSPEC_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as numbered in the GGUF specification. */
enum gguf_vtype {
    GGUF_VT_U8 = 0, GGUF_VT_I8 = 1, GGUF_VT_U16 = 2, GGUF_VT_I16 = 3,
    GGUF_VT_U32 = 4, GGUF_VT_I32 = 5, GGUF_VT_F32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_U64 = 10, GGUF_VT_I64 = 11,
    GGUF_VT_F64 = 12,
};

/* Tensor types (ggml numbering). Only those listed are supported. */
enum gguf_ttype {
    GGUF_TT_F32 = 0, GGUF_TT_F16 = 1, GGUF_TT_Q4_0 = 2, GGUF_TT_Q4_1 = 3,
    GGUF_TT_Q5_0 = 6, GGUF_TT_Q5_1 = 7, GGUF_TT_Q8_0 = 8, GGUF_TT_Q2_K = 10,
    GGUF_TT_Q3_K = 11, GGUF_TT_Q4_K = 12, GGUF_TT_Q5_K = 13, GGUF_TT_Q6_K = 14,
    GGUF_TT_IQ4_NL = 20, GGUF_TT_IQ4_XS = 23, GGUF_TT_BF16 = 30,
};

/* A string inside the mapping: NOT NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} gguf_str;

/* One metadata key/value pair. For arrays, `arr_type` is the element type,
 * `arr_count` the element count and `arr_data` points at the first element in
 * the mapping; string arrays are indexed through `arr_strs` (arr_count
 * entries, built at open time) and arr_data is then NULL. */
typedef struct {
    gguf_str key;
    uint32_t type;                /* enum gguf_vtype */
    union {
        uint64_t u64;             /* every unsigned integer type and bool */
        int64_t i64;              /* every signed integer type */
        double f64;               /* f32 and f64 */
        gguf_str str;
    } v;
    uint32_t arr_type;
    uint64_t arr_count;
    const void *arr_data;
    gguf_str *arr_strs;
} gguf_kv;

typedef struct {
    char name[128];               /* NUL-terminated copy (names > 127 bytes are rejected) */
    uint32_t n_dims;              /* 1..4 */
    uint64_t ne[4];               /* ne[0] is the contiguous (row) dimension; unused = 1 */
    uint32_t type;                /* enum gguf_ttype */
    uint64_t offset;              /* relative to the data section */
    uint64_t n_elements;
    uint64_t n_bytes;
    const void *data;             /* inside the mapping */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Open and validate a GGUF file. On success *out owns the mapping. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);

/* Parse a GGUF image already in memory (no copy; buf must outlive the file
 * object). Same validation as gguf_open; used by the fuzzer and tests. */
int gguf_open_memory(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen);

void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint64_t gguf_kv_count(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i);
uint64_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);

/* Look-ups by exact key / tensor name; NULL when absent. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters. Integers of any width and signedness convert when the value
 * fits; f32/f64 convert to either float type. Return 0 on success, -1 if the
 * key is absent or has an incompatible type or out-of-range value. */
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out);

/* Block geometry of a tensor type: weights per block and bytes per block.
 * Returns 0, or -1 for an unsupported type. */
int gguf_type_block(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);
const char *gguf_type_name(uint32_t type);   /* "Q4_1", or "unknown" */

/* Exact affine form of a quantized type: every 32 consecutive weights
 * (a "sub-block") as w = level * d + m, with integer levels 0..max_level,
 * equal as real numbers to the weights gguf_dequantize gives (the engine's
 * integer kernels then use the levels as they are: no re-quantization).
 * The largest level of the type's affine form: 15 (Q4_0, Q4_1, Q4_K),
 * 31 (Q5_0, Q5_1, Q5_K), 255 (Q8_0, Q3_K, IQ4_NL, IQ4_XS), or -1 where the
 * type has none (floats, Q2_K, whose two 16-weight halves of a sub-block
 * have their own offsets, and Q6_K, whose level range exceeds 8 bits). */
int gguf_affine_max_level(uint32_t type);
/* One block of `type` (block_elems weights, gguf_type_block) as
 * block_elems / 32 sub-blocks: levels[block_elems], d and m[block_elems/32].
 * Returns 0, or -1 where gguf_affine_max_level is -1. */
int gguf_affine(uint32_t type, const uint8_t *block, uint8_t *levels, float *d, float *m);

/* Dequantize n consecutive elements of a tensor of `type` starting at src
 * (which must be the start of a block; n a multiple of the block size) into
 * dst. Returns 0, or -1 for an unsupported type or a bad n. */
int gguf_dequantize(uint32_t type, const void *src, float *dst, uint64_t n);

/* IEEE half and bfloat16 conversions (exact). */
float gguf_f16_to_f32(uint16_t h);
float gguf_bf16_to_f32(uint16_t h);
uint16_t gguf_f32_to_f16(float f);

#endif
