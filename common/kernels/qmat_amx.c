/*
 * qmat_amx.c - the Intel AMX-INT8 kernel of qmat_matmul: Y = X . W^T over
 * the U8A weight format (qmat.h), for tokens in tiles of 16.
 *
 * What it holds: the run-time check (CPUID + the Linux permission for tile
 * data, once per process), each thread's tile configuration, and the kernel
 * for one 16-row group (both forms, U8 and U4).
 *
 * Why the layout fits: a U8 block of a group, [col quad 0..7][row 0..15][4
 * cols], is 8 rows of 64 bytes: exactly an AMX "B" tile in VNNI packing for
 * K = 32 (K/4 = 8 rows; N = 16 weight rows x 4 bytes). The quantized
 * activations are (T, cols) int8 row-major, so block b of tokens t0..t0+15
 * is an "A" tile (16 rows x 32 bytes, stride cols) in place. TDPBSUD (A
 * signed x B unsigned, int32 sums, no saturation) gives C[token][row] = the
 * exact integer dot product ia_b of block b: the same integer the VNNI,
 * AVX2 and portable kernels compute. U4 blocks (4 x 64 packed bytes) are
 * unpacked to the U8 bytes in a 64-byte-aligned buffer first (low nibble:
 * quad k, high nibble: quad k + 4), the same bytes qmat.c's VNNI kernel
 * unpacks into registers.
 *
 * Why the result is exact (bit-identical to qmat_matmul_portable): K = 32,
 * one tile product per 32-column block, so the block sums stay separate;
 * |ia_b| < 2^24 converts to float exactly; and the float combination is the
 * one fixed sequence of every qmat kernel, per (row, token), blocks in
 * order:
 *   acc = fma((float)ia_b, d_b * sx_b, acc);  acc = fma(m_b, sxs_b, acc)
 * with d_b * sx_b one rounded product (qmat.c's `scale`). Tiles change which
 * instruction forms ia_b and how many blocks' products are in flight, never
 * the float order; a token's row depends on its own activations only (row
 * m of C depends on row m of A only), so it does not depend on T or on the
 * other tokens in its tile (the rows of A past T are whatever the scratch
 * holds and their C rows are dropped).
 *
 * Passes of T <= 8 tokens (an even number of blocks) take the paired
 * layout instead (amx_tile_pair): one K = 64 product per two blocks, their
 * sums kept apart by zero halves in the A rows (qmat_amx.h), so such a
 * pass costs half the tile products and stores of a 16-row tile.
 *
 * Where the time goes: per (16-token tile, block, group) one tile product
 * (16 x 16 x 32) and, per token, the float epilogue (cvt, mul, 2 fma on a
 * 16-row vector) -- the epilogue, not the tile unit, is the bound. Blocks
 * go in batches of AMX_PAIR, software-pipelined over two sets of C tiles:
 * batch i + 1's products and stores are issued before batch i's epilogue,
 * so the tile unit works while the vector units combine; the scales are
 * laid out per token tile and block (qmat_amx.h) for the epilogue.
 *
 * Threads: tile configuration is per thread. Each thread loads it on its
 * first call, and again only when the token rows change (a _Thread_local
 * record of the rows it loaded: acceptable because a thread that has run
 * the kernel keeps its configuration, nothing else in the process
 * configures tiles, and a forked child's thread re-loads it), and keeps it
 * (no tilerelease: the next call would pay ldtilecfg again).
 */
#include "kernels/qmat_amx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checks that must hold whatever the build (NDEBUG too): report and abort. */
#define AMX_CHECK(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: AMX kernel: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define QMAT_HAVE_AMX 1
#endif

#ifdef QMAT_HAVE_AMX
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_XFEATURE_XTILEDATA 18

static int amx_ok;                               /* written once, under amx_once */
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static _Thread_local int amx_thread_rows;        /* token rows of this thread's configuration, 0: none */

static void amx_after_fork_child(void)
{
    amx_thread_rows = 0;   /* the child's thread loads its configuration again */
}

/* The tile configuration (palette 1), the same for every call:
 *   tmm0..3  C: n tokens x 16 rows int32 (n rows x 64 bytes), one per block in flight
 *   tmm4, 5  A: n tokens x 32 activation bytes
 *   tmm6, 7  B: 8 rows x 64 bytes (32 columns x 16 weight rows, VNNI-packed) */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) amx_tilecfg;
_Static_assert(sizeof(amx_tilecfg) == 64, "the tile configuration is 64 bytes");

/* amx_cfg[n]: A and C tiles of n token rows (n = 1..16), written once by
 * amx_probe. A call of T < 16 tokens loads and stores T rows only.
 * amx_cfg_pair[n] (n = 1..8): the paired layout's tiles (K = 64: A and C
 * of 2n rows x 64 bytes, B of 16 rows x 64 bytes). */
static amx_tilecfg amx_cfg[QMAT_AMX_TOKENS + 1];
static amx_tilecfg amx_cfg_pair[QMAT_AMX_PAIR_T + 1];

static uint64_t amx_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

static void amx_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1))   /* OSXSAVE */
        return;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return;
    int amx = (d >> 24 & 1) && (d >> 25 & 1);                        /* AMX-TILE, AMX-INT8 */
    int avx512 = (b >> 16 & 1) && (b >> 17 & 1) && (b >> 30 & 1) && (b >> 31 & 1);   /* F DQ BW VL */
    if (!amx || !avx512)
        return;
    /* the OS saves the AVX-512 state (XCR0 bits 1, 2, 5, 6, 7) and the tile
     * state (17: TILECFG, 18: TILEDATA) */
    uint64_t need = 0xe6ull | 3ull << 17;
    if ((amx_xgetbv0() & need) != need)
        return;
    if (syscall(SYS_arch_prctl, AMX_ARCH_REQ_XCOMP_PERM, AMX_XFEATURE_XTILEDATA) != 0)
        return;
    AMX_CHECK(pthread_atfork(NULL, NULL, amx_after_fork_child) == 0);
    for (int n = 1; n <= QMAT_AMX_TOKENS; n++) {
        amx_tilecfg *c = &amx_cfg[n];
        c->palette = 1;
        for (int t = 0; t < 8; t++) {
            c->colsb[t] = t == 4 || t == 5 ? 32 : 64;
            c->rows[t] = (uint8_t)(t >= 6 ? 8 : n);
        }
    }
    for (int n = 1; n <= QMAT_AMX_PAIR_T; n++) {
        amx_tilecfg *c = &amx_cfg_pair[n];
        c->palette = 1;
        for (int t = 0; t < 8; t++) {
            c->colsb[t] = 64;
            c->rows[t] = (uint8_t)(t >= 6 ? 16 : 2 * n);
        }
    }
    amx_ok = 1;
}

int qmat_amx_usable(void)
{
    AMX_CHECK(pthread_once(&amx_once, amx_probe) == 0);
    return amx_ok;
}

void qmat_amx_pair_layout(const int8_t *xq, int T, int32_t cols, int8_t *xp)
{
    AMX_CHECK(T >= 1 && T <= QMAT_AMX_PAIR_T && cols % 64 == 0);
    const int32_t np = cols / 64;
    for (int32_t p = 0; p < np; p++) {
        int8_t *tile = xp + (size_t)p * 1024;   /* 16 rows x 64 bytes */
        memset(tile, 0, 1024);
        for (int j = 0; j < T; j++) {
            const int8_t *x = xq + (size_t)j * cols + (size_t)p * 64;
            memcpy(tile + (2 * j) * 64, x, 32);
            memcpy(tile + (2 * j + 1) * 64 + 32, x + 32, 32);
        }
    }
}

#define AMX_FN __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define AMX_INLINE static inline __attribute__((always_inline)) AMX_FN
#define AMX_PAIR 2    /* blocks per batch: C tiles 0, 1 for even batches, 2, 3 for odd ones */
#define AMX_BLOCK 32
#define AMX_ROWS 16

/* A tile load that the compiler orders after every earlier store (the
 * header's _tile_loadd tells it of no memory access, and the U4 path loads
 * from a buffer it has just written). */
#define AMX_LOADD(tile, base, stride)                                       \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #tile                     \
                     :: "r"((const void *)(base)), "r"((long)(stride)) : "memory")

/* One block's product: C tile ct = A(at) . B(bt), A and B loaded first. */
#define AMX_PRODUCT(ct, at, bt, xa, ldx, w)  \
    do {                                     \
        AMX_LOADD(at, (xa), (ldx));          \
        AMX_LOADD(bt, (w), 64);              \
        _tile_zero(ct);                      \
        _tile_dpbsud(ct, at, bt);            \
    } while (0)

/* One U4 block (4 x 64 packed bytes) to its U8 bytes (8 x 64). */
AMX_INLINE void amx_unpack_u4(const uint8_t *src, uint8_t *dst)
{
    const __m512i lo4 = _mm512_set1_epi8(15);
    for (int k = 0; k < 4; k++) {
        __m512i pk = _mm512_load_si512((const void *)(src + 64 * k));
        _mm512_store_si512((void *)(dst + 64 * k), _mm512_and_si512(pk, lo4));
        _mm512_store_si512((void *)(dst + 64 * (k + 4)), _mm512_and_si512(_mm512_srli_epi16(pk, 4), lo4));
    }
}

/* The state of one (token tile, group) pass. */
typedef struct {
    const uint8_t *qg;    /* the group's q */
    const int8_t *xa;     /* the token tile's first activation row */
    int32_t cols, nb;
    size_t bbytes;        /* q bytes of one block of the group */
} amx_pass;

/* Batch i (blocks AMX_PAIR*i and the next, those < nb): the products into
 * C tiles c0, c1 and their stores into out[0], out[1]. */
#define AMX_BATCH_ISSUE(p, i, c0, c1, out, wbuf, fmt)                                              \
    do {                                                                                           \
        const int32_t b_ = AMX_PAIR * (i);                                                         \
        const int two_ = b_ + 1 < (p)->nb;                                                         \
        const uint8_t *w0_ = (p)->qg + (size_t)b_ * (p)->bbytes, *w1_ = w0_ + (p)->bbytes;         \
        if ((fmt) == QMAT_U4)   /* unpacked by AMX_BATCH_UNPACK a batch earlier */                 \
            w0_ = (wbuf)[0], w1_ = (wbuf)[1];                                                      \
        AMX_PRODUCT(c0, 4, 6, (p)->xa + (size_t)b_ * AMX_BLOCK, (p)->cols, w0_);                   \
        if (two_)                                                                                  \
            AMX_PRODUCT(c1, 5, 7, (p)->xa + (size_t)(b_ + 1) * AMX_BLOCK, (p)->cols, w1_);         \
        _tile_stored(c0, (out)[0], 64);                                                            \
        if (two_)                                                                                  \
            _tile_stored(c1, (out)[1], 64);                                                        \
    } while (0)

/* U4: batch i's blocks unpacked into wbuf[0], wbuf[1], one batch before
 * their tile loads (a tile load waits until the stores it reads have
 * reached the cache: the distance hides that). */
#define AMX_BATCH_UNPACK(p, i, wbuf)                                               \
    do {                                                                           \
        const int32_t b_ = AMX_PAIR * (i);                                         \
        if (b_ < (p)->nb)                                                          \
            amx_unpack_u4((p)->qg + (size_t)b_ * (p)->bbytes, (wbuf)[0]);          \
        if (b_ + 1 < (p)->nb)                                                      \
            amx_unpack_u4((p)->qg + (size_t)(b_ + 1) * (p)->bbytes, (wbuf)[1]);    \
    } while (0)

/* Tokens t0..t0+NT-1 (NT <= 16, a constant after inlining; t0 a multiple
 * of 16) against group g: rows 16g..16g+15 of Y. Batches of AMX_PAIR blocks
 * are software-pipelined: batch i + 1's products (C tiles of the other
 * parity) and their stores are issued before batch i's epilogue, so the
 * tile unit and the stores run while the vector units combine batch i. */
AMX_INLINE void amx_tile(const qmat *W, int32_t g, const int8_t *xq, const float *sx, const float *sxs,
                         int t0, float *Y, int ldy, const int NT, const int32_t fmt)
{
    amx_pass p;
    p.cols = W->cols;
    p.nb = W->cols / AMX_BLOCK;
    p.bbytes = fmt == QMAT_U4 ? AMX_ROWS * AMX_BLOCK / 2 : AMX_ROWS * AMX_BLOCK;
    p.qg = W->q + (size_t)g * p.nb * p.bbytes;
    p.xa = xq + (size_t)t0 * p.cols;
    const int32_t nb = p.nb, nbatch = (nb + AMX_PAIR - 1) / AMX_PAIR;
    const float *dg = W->d + (size_t)g * nb * AMX_ROWS, *mg = W->m + (size_t)g * nb * AMX_ROWS;
    /* this token tile's scales: block b's at [b * 16 + j] (qmat_amx.h) */
    const float *sxt = sx + (size_t)(t0 / QMAT_AMX_TOKENS) * nb * QMAT_AMX_TOKENS;
    const float *sxst = sxs + (size_t)(t0 / QMAT_AMX_TOKENS) * nb * QMAT_AMX_TOKENS;
    int32_t cbuf[2][AMX_PAIR][QMAT_AMX_TOKENS][AMX_ROWS] __attribute__((aligned(64)));
    uint8_t wbuf[2][AMX_PAIR][AMX_ROWS * AMX_BLOCK] __attribute__((aligned(64)));   /* U4 */
    __m512 acc[QMAT_AMX_TOKENS];
    for (int j = 0; j < NT; j++)
        acc[j] = _mm512_setzero_ps();
    if (fmt == QMAT_U4) {
        AMX_BATCH_UNPACK(&p, 0, wbuf[0]);
        AMX_BATCH_UNPACK(&p, 1, wbuf[1]);
    }
    AMX_BATCH_ISSUE(&p, 0, 0, 1, cbuf[0], wbuf[0], fmt);
    for (int32_t i = 0; i < nbatch; i++) {
        if (i + 1 < nbatch) {
            if ((i + 1) & 1)
                AMX_BATCH_ISSUE(&p, i + 1, 2, 3, cbuf[1], wbuf[1], fmt);
            else
                AMX_BATCH_ISSUE(&p, i + 1, 0, 1, cbuf[0], wbuf[0], fmt);
        }
        if (fmt == QMAT_U4 && i + 2 < nbatch)   /* into the buffer batch i's loads have read */
            AMX_BATCH_UNPACK(&p, i + 2, wbuf[i & 1]);
        /* batch i's epilogue, blocks in order for every token (qmat.h's sequence) */
        for (int k = 0; k < AMX_PAIR; k++) {
            const int32_t b = AMX_PAIR * i + k;
            if (b >= nb)
                break;
            const __m512 dv = _mm512_load_ps(dg + (size_t)b * AMX_ROWS);
            const __m512 mv = _mm512_load_ps(mg + (size_t)b * AMX_ROWS);
            const float *sxb = sxt + (size_t)b * QMAT_AMX_TOKENS, *sxsb = sxst + (size_t)b * QMAT_AMX_TOKENS;
            const int32_t(*c)[AMX_ROWS] = cbuf[i & 1][k];
            for (int j = 0; j < NT; j++) {
                __m512 ia = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)c[j]));
                __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(sxb[j]));
                acc[j] = _mm512_fmadd_ps(ia, scale, acc[j]);
                acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(sxsb[j]), acc[j]);
            }
        }
    }
    for (int j = 0; j < NT; j++)
        _mm512_storeu_ps(Y + (size_t)(t0 + j) * ldy + (size_t)g * AMX_ROWS, acc[j]);
}

/* Paired layout (T <= QMAT_AMX_PAIR_T, an even number of blocks): one
 * tile product per pair of blocks p = (2p, 2p + 1), K = 64. The A tile is
 * xp's pair p (qmat_amx.h): rows 2j and 2j + 1 hold token j's block 2p
 * then zeros, and zeros then its block 2p + 1; the B tile is the group's
 * two blocks as they lie (16 rows of 64 bytes: column quads 0..7 of block
 * 2p, then of block 2p + 1). So C row 2j is token j's integer sum of block
 * 2p and row 2j + 1 that of block 2p + 1, each exact and apart, and the
 * epilogue combines them in block order as every kernel does: the same
 * bits, with half the tile products and stores of a tile of T <= 8 rows. */
AMX_INLINE void amx_tile_pair(const qmat *W, int32_t g, const int8_t *xp, const float *sx, const float *sxs,
                              float *Y, int ldy, const int NT, const int32_t fmt)
{
    const int32_t nb = W->cols / AMX_BLOCK, np = nb / 2;
    const size_t bbytes = fmt == QMAT_U4 ? AMX_ROWS * AMX_BLOCK / 2 : AMX_ROWS * AMX_BLOCK;
    const uint8_t *qg = W->q + (size_t)g * nb * bbytes;
    const float *dg = W->d + (size_t)g * nb * AMX_ROWS, *mg = W->m + (size_t)g * nb * AMX_ROWS;
    int32_t cbuf[2][2 * QMAT_AMX_PAIR_T][AMX_ROWS] __attribute__((aligned(64)));
    uint8_t wbuf[2][2 * AMX_ROWS * AMX_BLOCK] __attribute__((aligned(64)));   /* U4: a pair unpacked */
    __m512 acc[QMAT_AMX_PAIR_T];
    for (int j = 0; j < NT; j++)
        acc[j] = _mm512_setzero_ps();
    /* pair p's product into C tile p & 1 (tiles 0, 1), stored to cbuf[p & 1] */
#define AMX_PAIR_ISSUE(p)                                                                          \
    do {                                                                                           \
        const uint8_t *w_ = qg + (size_t)(2 * (p)) * bbytes;                                       \
        if (fmt == QMAT_U4) {                                                                      \
            amx_unpack_u4(w_, wbuf[(p) & 1]);                                                      \
            amx_unpack_u4(w_ + bbytes, wbuf[(p) & 1] + AMX_ROWS * AMX_BLOCK);                      \
            w_ = wbuf[(p) & 1];                                                                    \
        }                                                                                          \
        if ((p) & 1) {                                                                             \
            AMX_PRODUCT(1, 5, 7, xp + (size_t)(p) * 1024, 64, w_);                                 \
            _tile_stored(1, cbuf[1], 64);                                                          \
        } else {                                                                                   \
            AMX_PRODUCT(0, 4, 6, xp + (size_t)(p) * 1024, 64, w_);                                 \
            _tile_stored(0, cbuf[0], 64);                                                          \
        }                                                                                          \
    } while (0)
    AMX_PAIR_ISSUE(0);
    for (int32_t p = 0; p < np; p++) {
        if (p + 1 < np)
            AMX_PAIR_ISSUE(p + 1);
        const int32_t(*c)[AMX_ROWS] = cbuf[p & 1];
        for (int k = 0; k < 2; k++) {   /* blocks 2p, 2p + 1, in order */
            const int32_t b = 2 * p + k;
            const __m512 dv = _mm512_load_ps(dg + (size_t)b * AMX_ROWS);
            const __m512 mv = _mm512_load_ps(mg + (size_t)b * AMX_ROWS);
            const float *sxb = sx + (size_t)b * QMAT_AMX_TOKENS, *sxsb = sxs + (size_t)b * QMAT_AMX_TOKENS;
            for (int j = 0; j < NT; j++) {
                __m512 ia = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)c[2 * j + k]));
                __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(sxb[j]));
                acc[j] = _mm512_fmadd_ps(ia, scale, acc[j]);
                acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(sxsb[j]), acc[j]);
            }
        }
    }
#undef AMX_PAIR_ISSUE
    for (int j = 0; j < NT; j++)
        _mm512_storeu_ps(Y + (size_t)j * ldy + (size_t)g * AMX_ROWS, acc[j]);
}

#define AMX_PAIR_CASE(n)                                                     \
    case n:                                                                  \
        if (W->fmt == QMAT_U4)                                               \
            amx_tile_pair(W, g, xp, sx, sxs, Y, ldy, n, QMAT_U4);            \
        else                                                                 \
            amx_tile_pair(W, g, xp, sx, sxs, Y, ldy, n, QMAT_U8);            \
        break

#define AMX_CASE(n)                                                          \
    case n:                                                                  \
        if (W->fmt == QMAT_U4)                                               \
            amx_tile(W, g, xq, sx, sxs, t0, Y, ldy, n, QMAT_U4);             \
        else                                                                 \
            amx_tile(W, g, xq, sx, sxs, t0, Y, ldy, n, QMAT_U8);             \
        break

AMX_FN void qmat_amx_group(const qmat *W, int32_t g, const int8_t *xq, const int8_t *xp, const float *sx,
                           const float *sxs, int T, float *Y, int ldy)
{
    if (xp) {   /* the paired layout: T <= QMAT_AMX_PAIR_T, an even number of blocks */
        AMX_CHECK(T >= 1 && T <= QMAT_AMX_PAIR_T && (W->cols / AMX_BLOCK) % 2 == 0);
        if (amx_thread_rows != 100 + T) {
            AMX_CHECK(qmat_amx_usable());
            _tile_loadconfig(&amx_cfg_pair[T]);
            amx_thread_rows = 100 + T;
        }
        switch (T) {
            AMX_PAIR_CASE(1); AMX_PAIR_CASE(2); AMX_PAIR_CASE(3); AMX_PAIR_CASE(4);
            AMX_PAIR_CASE(5); AMX_PAIR_CASE(6); AMX_PAIR_CASE(7);
        default:
            AMX_PAIR_CASE(8);
        }
        return;
    }
    /* tiles of T rows for a single token tile, else of 16 (the last tile's
     * rows past T are computed and dropped) */
    const int rows = T < QMAT_AMX_TOKENS ? T : QMAT_AMX_TOKENS;
    if (amx_thread_rows != rows) {
        AMX_CHECK(qmat_amx_usable() && rows >= 1);
        _tile_loadconfig(&amx_cfg[rows]);
        amx_thread_rows = rows;
    }
    for (int t0 = 0; t0 < T; t0 += QMAT_AMX_TOKENS) {
        switch (T - t0 < QMAT_AMX_TOKENS ? T - t0 : QMAT_AMX_TOKENS) {
            AMX_CASE(1); AMX_CASE(2); AMX_CASE(3); AMX_CASE(4);
            AMX_CASE(5); AMX_CASE(6); AMX_CASE(7); AMX_CASE(8);
            AMX_CASE(9); AMX_CASE(10); AMX_CASE(11); AMX_CASE(12);
            AMX_CASE(13); AMX_CASE(14); AMX_CASE(15);
        default:
            AMX_CASE(16);
        }
    }
}
#else
int qmat_amx_usable(void)
{
    return 0;
}

void qmat_amx_group(const qmat *W, int32_t g, const int8_t *xq, const int8_t *xp, const float *sx,
                    const float *sxs, int T, float *Y, int ldy)
{
    AMX_CHECK(!"AMX kernel reached in a build without it");
}

void qmat_amx_pair_layout(const int8_t *xq, int T, int32_t cols, int8_t *xp)
{
    AMX_CHECK(!"AMX kernel reached in a build without it");
}
#endif
