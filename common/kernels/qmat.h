/*
 * qmat.h - the engine's weight-matrix format ("U8A": 8-bit affine blocks in
 * 16-row interleaved panels) and the matrix products over it.
 *
 * A matrix W of shape (rows, cols) -- rows = output features, a multiple of
 * 16; cols = input features, a multiple of 32 -- holds
 *   W[r][c] = q[r][c] * d[r][c/32] + m[r][c/32],   q an unsigned byte.
 * Every 4-bit affine GGUF format (Q4_0, Q4_1, Q4_K) maps onto this exactly
 * (the nibble is the byte), Q8_0 maps exactly (q + 128, m = -128 d), and
 * F32/F16/BF16/Q6_K are re-quantized to 256 levels per block of 32.
 *
 * Layout, chosen for the VNNI dot-product instruction (one 512-bit register
 * holds 4 consecutive columns of 16 consecutive rows), in one of two forms
 * (qmat.fmt), the same in every build:
 *  - QMAT_U8, one byte per level:
 *    q: uint8 (rows/16, cols/32, 8, 16, 4)  [group][block][col quad][row][col]
 *  - QMAT_U4, packed nibbles, for matrices whose levels are all <= 15 (every
 *    Q4_0 / Q4_1 / Q4_K source; half the bytes streamed per token):
 *    q: uint8 (rows/16, cols/32, 4, 16, 4)  [group][block][col quad][row][col]
 *    where the low nibble is the level of column quad c (0..3) and the high
 *    nibble that of quad c + 4 (so columns j and j + 16 of a block share a
 *    byte, as in GGUF's Q4 blocks). Unpacking is one and / shift + and on
 *    the register the U8 form would have loaded.
 *   d: float (rows/16, cols/32, 16)        [group][block][row]
 *   m: float (rows/16, cols/32, 16)
 * qmat.tier promises a bound on every level of a U8 matrix (QMAT_TIER_8BIT,
 * 0: none; QMAT_TIER_7BIT: <= 127; QMAT_TIER_NIBBLE: <= 15), so the AVX2
 * kernel picks its instruction sequence once per matrix rather than per
 * block; qmat_set_row asserts it. U4 matrices are nibble-tier by definition.
 * A zero-initialized qmat is U8 with no promise: always correct.
 *
 * Products, Y(T, rows) = X(T, cols) . W^T, for every T (one token, a
 * verification block, a prompt chunk, many sequences batched): activations
 * are quantized per block of 32 to int8 (as llama.cpp does), and a
 * hand-written kernel streams each weight panel from memory once per call
 * (tiles of tokens re-read it from cache) and applies it with integer dot
 * products:
 *  - AVX512-VNNI builds: vpdpbusd, tiles of 8 tokens, both forms (the U4
 *    unpack there is written and compiled but NOT run on the development
 *    machines, which lack AVX-512: see qmat.c);
 *  - AVX2 + FMA builds (x86-64-v3): vpmaddubsw + vpmaddwd, with no int16
 *    saturation (qmat.c says how), tiles of at most 4 tokens x 8 rows (or
 *    2 tokens x 16 rows) so that the accumulators fit 16 ymm registers;
 *  - anything else: a portable loop (qmat_matmul_portable, also exposed so
 *    tests can hold the vector kernels to it);
 *  - and, chosen at run time over any of them (qmat_set_amx below), the
 *    Intel AMX-INT8 kernel (kernels/qmat_amx.c): one 16-token x 16-row x
 *    32-column tile product (tdpbsud) per block, where the CPU has it and
 *    T is large enough to pay.
 * Each 32-column block's integer sum is exact whatever order it is added in
 * (and exact in float: |sum| < 2^24); the float combination of the blocks is
 * the same fixed sequence per (row, token) in all of them:
 *   for b = 0, 1, ...: acc = fma((float)ia_b, d_b * sx_b, acc);
 *                      acc = fma(m_b, sxs_b, acc)
 * So a token's output row does not depend on T or on the other tokens --
 * logits are bit-identical whether a token is decoded alone, inside a
 * verification block or batched with other sequences, which is what makes
 * self-speculative output exactly plain greedy output -- and the three
 * builds, and the two forms of one matrix, agree bit for bit. There is no
 * limit on T but the scratch size.
 * BLAS (dequantized panels + sgemm) sums floats in an order that depends on
 * T; it is on no forward path (scripts/bench_kernels.c times it).
 * Threads: qmat_matmul parallelizes over 16-row groups with OpenMP (dynamic
 * chunks of consecutive groups, about 8 per thread; from 16 tokens on the
 * threads also share the activation quantization).
 * Where the 4-bit form comes from: model.c stores a matrix as QMAT_U4 when
 * all its GGUF sources are Q4_0 / Q4_1 / Q4_K (converted to their own 4-bit
 * levels exactly; decided from the tensor types, so that sizing, filling and
 * attaching agree). VNNI builds use the same form (see above).
 */
#ifndef SELFSPEC_QMAT_H
#define SELFSPEC_QMAT_H

#include <stddef.h>
#include <stdint.h>

#define QMAT_BLOCK 32
#define QMAT_ROWS 16

enum { QMAT_U8 = 0, QMAT_U4 = 1 };                                     /* qmat.fmt */
enum { QMAT_TIER_8BIT = 0, QMAT_TIER_7BIT = 1, QMAT_TIER_NIBBLE = 2 };  /* qmat.tier */

typedef struct {
    int32_t rows, cols;
    const uint8_t *q;
    const float *d;
    const float *m;
    int32_t fmt;    /* QMAT_U8 or QMAT_U4 (sizes q; fixed before the arrays are filled) */
    int32_t tier;   /* U8: a promised bound on every level (see above); U4: ignored */
} qmat;

/* Bytes of the q array (U8 form; qmat_q_bytes_fmt for either form), and of
 * each of the d and m arrays. */
size_t qmat_q_bytes(int32_t rows, int32_t cols);
size_t qmat_q_bytes_fmt(int32_t rows, int32_t cols, int32_t fmt);
size_t qmat_dm_bytes(int32_t rows, int32_t cols);

/* The narrowest tier that holds every level of W (a scan of q): for callers
 * that fill a U8 matrix with levels of unknown range and then promise it. */
int32_t qmat_scan_tier(const qmat *W);

/* Store row r of W (writable arrays) from 8-bit levels and per-block d, m:
 * levels (cols), d and m (cols/32). Every level must fit W->tier (<= 15 for
 * U4; asserted). Rows share no bytes: rows may be stored concurrently. */
void qmat_set_row(const qmat *W, int32_t r, const uint8_t *levels, const float *d, const float *m);

/* Read row r of W back as levels + d + m (the inverse of qmat_set_row). */
void qmat_get_row(const qmat *W, int32_t r, uint8_t *levels, float *d, float *m);

/* A new matrix holding rows rows[0..n-1] of src (n a multiple of 16), in
 * malloc'd arrays released with qmat_free_owned, in src's form and tier.
 * Exact copy of the levels, d and m. */
int qmat_gather(const qmat *src, const int32_t *rows, int32_t n, qmat *dst);
void qmat_free_owned(qmat *W);

/* Quantize cols floats to levels + d + m (affine, 256 levels per block). */
void qmat_quantize_row(const float *x, int32_t cols, uint8_t *levels, float *d, float *m);

/* Dequantize row r of W into out (cols floats). */
void qmat_dequant_row(const qmat *W, int32_t r, float *out);

/* Scratch bytes qmat_matmul needs for T tokens of up to cols inputs. */
size_t qmat_scratch_bytes(int32_t cols, int T);

/* Y = X . W^T. X: (T, cols) row stride ldx; Y: (T, rows) row stride ldy;
 * scratch: qmat_scratch_bytes(W->cols, T) bytes, 64-byte aligned. Row t of
 * Y depends only on row t of X (same bits for any T and any other rows). */
void qmat_matmul(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch);

/* The portable kernel, whatever the build targets: the same arguments and
 * the same bits as qmat_matmul (tests compare them), one (row, token) at a
 * time, slow. */
void qmat_matmul_portable(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy, void *scratch);

/* The AMX kernel (Intel AMX-INT8, kernels/qmat_amx.c): qmat_matmul takes
 * it for calls of T >= min_t tokens when the CPU has AMX-INT8 and Linux
 * grants this process the tile data (checked, and the permission requested,
 * once per process on the first such call); otherwise the build's kernel
 * (VNNI, AVX2, portable) as before. The same bits either way (qmat_amx.c
 * says why). The setting is process-wide; min_t <= 0 turns AMX off; the
 * default is QMAT_AMX_MIN_T_DEFAULT (T = 1 and 2 stay on the build's
 * kernel, where AMX does not win; T <= 8 tokens take its paired layout,
 * two blocks per tile product: measured in docs/performance.md). A pass
 * of more than 16 tokens whose last tile would hold fewer than
 * max(min_t, 8) tokens stays on the build's kernel (that tile costs nearly
 * a whole pass). Returns the
 * previous setting. The library reads no environment: a caller that wants
 * a switch maps its own flag to this call. */
#ifndef QMAT_AMX_MIN_T_DEFAULT   /* a build may set it (-D), e.g. 1 to test AMX at every T */
#define QMAT_AMX_MIN_T_DEFAULT 3
#endif
int qmat_set_amx(int min_t);

/* 1 when the AMX kernel can run here (CPU and OS; requests the permission,
 * once per process). */
int qmat_amx_available(void);

#endif
