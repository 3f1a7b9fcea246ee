/*
 * qmat_amx.h - the Intel AMX-INT8 kernel of qmat_matmul (kernels layer,
 * included by qmat.c only; the public switch is qmat_set_amx in qmat.h).
 *
 * The kernel computes what every qmat kernel computes (qmat.h): per
 * (row, token), for blocks b = 0, 1, ... in order,
 *   acc = fma((float)ia_b, d_b * sx_b, acc); acc = fma(m_b, sxs_b, acc)
 * with ia_b the exact integer dot product of block b, here from one AMX
 * tile product per block (tdpbsud, K = 32), or per two blocks in the
 * paired layout (K = 64, T <= 8; below). Its rows equal
 * qmat_matmul_portable's bit for bit, for every T.
 *
 * It is compiled for its own functions only (target attributes), so a
 * binary holding it runs on a CPU without AMX: qmat_amx_usable() is 0 there
 * and the kernel is never reached.
 */
#ifndef SELFSPEC_QMAT_AMX_H
#define SELFSPEC_QMAT_AMX_H

#include <stdint.h>

#include "kernels/qmat.h"

/* 1 when this CPU has AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24, 25)
 * and Linux granted this process the tile data (arch_prctl
 * ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); else 0. The check and the
 * request are made once per process, the first call (thread-safe); later
 * calls read the answer. */
int qmat_amx_usable(void);

/* Tokens per AMX token tile: one A tile holds 16 tokens x 32 bytes. The
 * activation rows past T up to the next multiple of 16 are read (never
 * used for a kept result): qmat_scratch_bytes reserves them. */
#define QMAT_AMX_TOKENS 16

/* Y rows t = 0..T-1, columns 16g..16g+15 of X . W^T for 16-row group g,
 * from the quantized activations: xq (T, W->cols) int8 row-major, readable
 * up to row ceil(T/16)*16 - 1; sx, sxs in the epilogue's layout
 * (ceil(T/16), W->cols/32, 16): token t, block b at
 * ((t / 16) * nb + b) * 16 + t % 16. Requires
 * qmat_amx_usable() == 1. The calling thread loads its tile configuration
 * on its first call. */
void qmat_amx_group(const qmat *W, int32_t g, const int8_t *xq, const int8_t *xp, const float *sx,
                    const float *sxs, int T, float *Y, int ldy);

/* The paired layout, for T <= QMAT_AMX_PAIR_T tokens and cols a multiple of
 * 64 (an even number of blocks): per pair of blocks p, one A tile of 16
 * rows x 64 bytes, row 2j = token j's block 2p then 32 zero bytes, row
 * 2j + 1 = 32 zero bytes then its block 2p + 1 (rows past 2T zero), so one
 * K = 64 tile product gives the two blocks' sums apart. xp receives
 * cols * 16 bytes (QMAT_AMX_PAIR_BYTES). qmat_amx_group with xp non-NULL
 * takes this layout (xq unused). */
#define QMAT_AMX_PAIR_T 8
#define QMAT_AMX_PAIR_BYTES(cols) ((size_t)(cols) * 16)
void qmat_amx_pair_layout(const int8_t *xq, int T, int32_t cols, int8_t *xp);

#endif
