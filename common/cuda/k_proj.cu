/*
 * k_proj.cu - the fixed-order projection (k_proj), which every projection
 * and the output head of cuda_forward run: each (token, row) is summed in
 * the same order whatever T (kernels/cuda_order.h; ported to the host in
 * tests/test_cuda_order.c), so a token's logits are the same bits in a
 * plain step, a verification block or a batch. cuBLAS remains only in
 * cuda_proj_check (checks.cu), as the reference it is measured against.
 * Launcher: kernels.cuh.
 */
#include "cuda/kernels.cuh"
#include "cuda/reduce.cuh"

/*
 * Fixed-order projection (cuda_order.h): Y (T, rows) = X . W^T (+ Y), one
 * block of PROJ_WARPS warps per PROJ_ROWS rows and TT tokens. Lane l reads
 * 16 bytes of each of its warp's rows per step (chunks l, l + 32, ...: a
 * warp streams 512 contiguous bytes per row per step) and reuses them for
 * the TT tokens of the tile, whose chunk it reads through the read-only
 * cache (every warp of the block reads the same X rows). At T = 1 the
 * weights stream once; up to TT tokens share each weight load.
 */
static __device__ __forceinline__ void unpack8(uint4 u, float *f)
{
    const wt *h = (const wt *)&u;
#pragma unroll
    for (int e = 0; e < PROJ_VEC; e++)
        f[e] = from_wt(h[e]);
}

template <int TT>
__global__ void __launch_bounds__(PROJ_WARPS * 32)
k_proj(const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate)
{
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r0 = blockIdx.x * PROJ_ROWS + w * PROJ_RPW;
    int t0 = blockIdx.y * TT;
    int nt = T - t0 < TT ? T - t0 : TT;
    int nchunk = cols / PROJ_VEC;
    float acc[PROJ_RPW][TT];
#pragma unroll
    for (int j = 0; j < PROJ_RPW; j++)
#pragma unroll
        for (int tt = 0; tt < TT; tt++)
            acc[j][tt] = 0.0f;
    const uint4 *Xv = (const uint4 *)(X + (size_t)t0 * cols);
    for (int c = lane; c < nchunk; c += 32) {
        float wf[PROJ_RPW][PROJ_VEC];
#pragma unroll
        for (int j = 0; j < PROJ_RPW; j++) {
            int r = r0 + j < rows ? r0 + j : rows - 1;          /* a row past the end: computed, not stored */
            unpack8(__ldg((const uint4 *)(W + (size_t)r * cols) + c), wf[j]);
        }
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            if (tt < nt) {
                float xf[PROJ_VEC];
                unpack8(__ldg(Xv + (size_t)tt * nchunk + c), xf);
#pragma unroll
                for (int j = 0; j < PROJ_RPW; j++)
                    acc[j][tt] = proj_lane_step(acc[j][tt], wf[j], xf);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < PROJ_RPW; j++)
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            float v = warp_sum(acc[j][tt]);
            int r = r0 + j;
            if (lane == 0 && r < rows && tt < nt) {
                float *y = Y + (size_t)(t0 + tt) * rows + r;
                *y = accumulate ? *y + v : v;
            }
        }
}

void launch_proj(cudaStream_t st, const wt *W, int rows, int cols, const wt *X, int T, float *Y, int accumulate)
{
    int tt = PROJ_TT_FOR(T);
    dim3 grid(proj_grid_x(rows), proj_grid_y(T, tt));
    switch (tt) {
    case 1: k_proj<1><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    case 4: k_proj<4><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    case 8: k_proj<8><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    default: k_proj<16><<<grid, PROJ_WARPS * 32, 0, st>>>(W, rows, cols, X, T, Y, accumulate); break;
    }
}
