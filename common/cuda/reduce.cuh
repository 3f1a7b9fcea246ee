/*
 * reduce.cuh - the warp and block reductions the kernel families share
 * (k_pointwise.cu, k_attention.cu, k_proj.cu, k_sample.cu). Device code
 * only; each summation order is fixed (butterfly within a warp, then warp
 * by warp), so a row's result does not depend on anything but its inputs.
 */
#ifndef SELFSPEC_CUDA_REDUCE_CUH
#define SELFSPEC_CUDA_REDUCE_CUH

#include "cuda/cuda_common.cuh"

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block; every thread gets the result. red: 32 floats. */
static __device__ inline float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();               /* red may be in use by a previous call */
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

/* Max over the block; every thread gets the result. red: 32 floats. */
static __device__ inline float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max(v);
}

#endif
