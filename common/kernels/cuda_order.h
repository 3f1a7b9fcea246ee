/*
 * cuda_order.h - how the CUDA backend's fixed-order kernels split their work
 * and in which order they sum, shared by the kernels (common/cuda/k_proj.cu,
 * k_attention.cu) and tests/test_cuda_order.c (host ports of the same
 * decomposition in plain C, run by `make unit` on every machine). Plain C: no CUDA types, nothing that
 * needs nvcc. CO_FN marks the helpers both sides call, so the index math the
 * test checks is the very code the device runs.
 *
 * Every multiply-add below is an explicit fmaf (one rounding, on the device
 * and on the host alike): nvcc fuses a * b + c on its own (--fmad=true) and
 * gcc does with -ffp-contract=fast, each where it pleases, so a written-out
 * a * b + c would not pin the arithmetic down on either side.
 *
 * Projections (k_proj): Y (T, rows) = X (T, cols) . W^T, fp16 W and X, fp32
 * sums. A block has PROJ_WARPS warps; warp w owns PROJ_RPW consecutive rows;
 * blockIdx.y takes a tile of tokens. Lane l of a warp walks the chunks
 * c = l, l + 32, l + 64, ... of PROJ_VEC consecutive columns (one 128-bit
 * load of fp16), and for every token of the tile adds that chunk's PROJ_VEC
 * products into the (row, token) accumulator in column order
 * (proj_lane_step). The 32 lane sums of one (row, token) are then combined
 * by the xor butterfly 16, 8, 4, 2, 1 (each lane adds its partner's value:
 * a + b == b + a exactly, so all lanes end with the same bits).
 * Why that is T-independent: the sequence of operations that produces
 * (t, r) reads only row r of W, row t of X and cols; it does not mention T,
 * the tile size, t's place in the tile or the other tokens. Tokens share
 * the weight registers a lane loaded, never a partial sum. So a token gives
 * the same bits alone (T = 1), in a verification block (T = k + 1) or in a
 * batch of 256, and the tile size (PROJ_TT_FOR) may be chosen per T for
 * speed.
 *
 * Decode attention (k_attention + k_att_combine): positions 0..p of a token
 * are cut at multiples of span = att_span(ctx) (ctx: the state's context,
 * fixed for its lifetime) into splits; a split is walked in tiles of
 * ATT_TILE positions from its start. One block per (token, KV head, group
 * of up to ATT_MAX_GROUP query heads, split): the block loads each tile's
 * keys and values once for all its query heads (the next tile's loads are
 * issued before the current tile is computed). Per (query head g,
 * position i) one thread forms q.k in att_dot's order; per head, one warp
 * (lane = position in the tile) takes the tile's max, e = exp(s - m_new) and
 * their butterfly sum, and updates (m, l); per output element one thread
 * sums e_i v_i over the tile in position order and rescales its running sum
 * (att_acc_step). Each split's (m, l, acc) goes to a fixed slot
 * (att_part_slot); k_att_combine merges the splits in position order
 * (split 0, 1, ...), every exponent against the overall max. All of it is a
 * function of (p, ctx, the token's q, the cached rows): never of T or of
 * the batch.
 */
#ifndef SELFSPEC_CUDA_ORDER_H
#define SELFSPEC_CUDA_ORDER_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define CO_FN static __host__ __device__ __forceinline__
#else
#define CO_FN static inline
#endif

/* ---- projections ---- */

/* Every pass of cuda_forward goes through k_proj, whatever its T (plain
 * and draft steps, verification blocks, the engine's mixed passes of
 * decode blocks and prompt chunks, prompt chunks alone); cuBLAS is only
 * the reference of cuda_proj_check. The kernel takes any T (grid.y = T / 16 blocks); PROJ_T_MAX is
 * what the checks go up to: the engine's --max-batch-tokens limit. */
#define PROJ_T_MAX 8192
#define PROJ_WARPS 4                          /* warps per block */
#define PROJ_RPW 2                            /* rows per warp */
#define PROJ_ROWS (PROJ_WARPS * PROJ_RPW)     /* rows per block */
#define PROJ_VEC 8                            /* columns per lane step: 16 bytes of fp16 */
/* token tile (blockIdx.y) by T; any choice gives the same bits */
#define PROJ_TT_FOR(T) ((T) <= 1 ? 1 : (T) <= 4 ? 4 : (T) <= 8 ? 8 : 16)

/* One lane step: acc += w[e] * x[e] for e = 0 .. PROJ_VEC - 1, in order. */
CO_FN float proj_lane_step(float acc, const float *w, const float *x)
{
    for (int e = 0; e < PROJ_VEC; e++)
        acc = fmaf(w[e], x[e], acc);
    return acc;
}

/* Blocks of the grid: x over rows, y over token tiles. */
CO_FN int proj_grid_x(int rows) { return (rows + PROJ_ROWS - 1) / PROJ_ROWS; }
CO_FN int proj_grid_y(int T, int tt) { return (T + tt - 1) / tt; }

/* ---- decode attention ---- */

#define ATT_MAX_HD 256      /* head_dim limit (a multiple of 8) */
#define ATT_THREADS 256
#define ATT_TILE 32         /* positions per tile: one per lane */
#define ATT_MAX_GROUP 8     /* query heads per block: one warp each */
#define ATT_SPAN_MIN 256    /* positions per split at least */
#define ATT_MAX_SPLITS 16   /* splits of the longest context at most */
#define ATT_OUTS (ATT_MAX_GROUP * ATT_MAX_HD / ATT_THREADS)   /* outputs per thread */
#define ATT_DOT_ILP 4       /* q.k: independent partial sums (d mod 4) */
#define ATT_KPAD 2          /* shared key row stride head_dim + 2 halves */

/* 16-byte pieces (8 halves) one thread moves per tile: the tile's keys and
 * values, ATT_TILE rows of up to ATT_MAX_HD halves each. */
#define ATT_PIECES (2 * ATT_TILE * ATT_MAX_HD / 8 / ATT_THREADS)

/* Piece pc (= thread + u * ATT_THREADS) of a tile with vpr = head_dim / 8
 * pieces per row: values (1) or keys (0), row (position in the tile) and
 * 8-half chunk of the row. Pieces 0 .. 2 ATT_TILE vpr - 1 cover every
 * (keys/values, row, chunk) once. */
CO_FN void att_piece(int pc, int vpr, int *isv, int *row, int *chunk)
{
    *isv = pc >= ATT_TILE * vpr;
    *row = (pc % (ATT_TILE * vpr)) / vpr;
    *chunk = pc % vpr;
}

/* Positions per split for a state of ctx positions: at least ATT_SPAN_MIN,
 * a multiple of ATT_TILE, so that no context needs more than
 * ATT_MAX_SPLITS splits. */
CO_FN int att_span(int ctx)
{
    int s = (ctx + ATT_MAX_SPLITS - 1) / ATT_MAX_SPLITS;
    s = (s + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    return s < ATT_SPAN_MIN ? ATT_SPAN_MIN : s;
}

/* Split slots per (token, query head) in the partial buffer. */
CO_FN int att_splits(int ctx, int span) { return (ctx + span - 1) / span; }

/* Splits a token at position p uses. */
CO_FN int att_nsplit(int p, int span) { return p / span + 1; }

/* Slot of (token t, query head h, split s): m and l at 2 * slot, acc
 * (head_dim floats) at slot * head_dim. */
CO_FN size_t att_part_slot(int t, int h, int s, int n_heads, int n_splits)
{
    return ((size_t)t * n_heads + h) * n_splits + s;
}

/* q . k over head_dim (a multiple of ATT_DOT_ILP): ATT_DOT_ILP running sums
 * over d = j, j + 4, ..., then (a0 + a1) + (a2 + a3). kf(d) is the key
 * element as a float. */
#define ATT_DOT_BODY(q, kf, hd, out)                                             \
    do {                                                                         \
        float a_[ATT_DOT_ILP] = {0.0f, 0.0f, 0.0f, 0.0f};                       \
        for (int d_ = 0; d_ < (hd); d_ += ATT_DOT_ILP)                           \
            for (int j_ = 0; j_ < ATT_DOT_ILP; j_++)                             \
                a_[j_] = fmaf((q)[d_ + j_], kf(d_ + j_), a_[j_]);                \
        (out) = (a_[0] + a_[1]) + (a_[2] + a_[3]);                               \
    } while (0)

/* One tile's value sum for one output element, then the running sum:
 * a = sum_i p[i] v(i) in position order; return acc * corr + a. */
#define ATT_ACC_BODY(p, vf, nk, acc, corr)                                       \
    do {                                                                         \
        float a_ = 0.0f;                                                         \
        for (int i_ = 0; i_ < (nk); i_++)                                        \
            a_ = fmaf((p)[i_], vf(i_), a_);                                      \
        (acc) = fmaf((acc), (corr), a_);                                         \
    } while (0)

/* ---- where a cache row lives ---- */

/* Positions per block of a paged device cache (= KV_BLOCK of model.h). */
#define CO_KV_BLOCK 16

/* The integer part of a sequence's cache descriptor (dev_seq in
 * cuda/cuda_common.cuh adds the K and V pointers). Three places a row of
 * (layer, position p) can be:
 *   scratch     scap > 0 and p >= scratch_base: the draft scratch cache,
 *               (n_layers, scap, kv_dim), at p - scratch_base;
 *   paged       bt != NULL: a block of the device pool, the pool laid out
 *               (n_blocks, n_layers, CO_KV_BLOCK, kv_dim); bt[p / CO_KV_BLOCK]
 *               is the block of p;
 *   contiguous  else: (n_layers, cap, kv_dim). */
typedef struct {
    const int32_t *bt;        /* paged: block table (device memory), else NULL */
    int32_t cap;              /* contiguous: positions per layer */
    int32_t scap;             /* scratch positions per layer; 0: no scratch */
    int32_t scratch_base;
    int32_t n_layers;         /* paged: layers per block */
} kv_where;

/* Element offset of the row of (layer, p), and whether it is in the
 * scratch (*scr). */
CO_FN size_t kv_row(const kv_where *w, int layer, int p, int kv_dim, int *scr)
{
    if (w->scap > 0 && p >= w->scratch_base) {
        *scr = 1;
        return ((size_t)layer * w->scap + (size_t)(p - w->scratch_base)) * kv_dim;
    }
    *scr = 0;
    if (w->bt) {
        size_t blk = (size_t)w->bt[p / CO_KV_BLOCK];
        return ((blk * w->n_layers + layer) * CO_KV_BLOCK + p % CO_KV_BLOCK) * kv_dim;
    }
    return ((size_t)layer * w->cap + p) * kv_dim;
}

#endif
