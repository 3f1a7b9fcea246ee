/*
 * k_argmax.cu - the argmax of logits rows on the device (k_argmax: one
 * block per row), exactly sampler_argmax's rule (decode/sampler.c), NaN
 * and ties included: what a greedy row of every pass returns.
 * Launcher: kernels.cuh.
 */
#include "cuda/kernels.cuh"

#include <math.h>

/* a better than b: larger value, or equal value and smaller index. A NaN
 * candidate loses every comparison, so NaN entries are skipped (k_argmax
 * adds the rule for a NaN at index 0). */
static __device__ __forceinline__ bool am_better(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && ai < bi);
}

/* One block per row: the index of the largest of row[0..n), ties to the
 * smaller index -- exactly sampler_argmax (decode/sampler.c), NaN included.
 * That loop starts from index 0 and moves only on `row[i] > row[best]`, so:
 * row[0] NaN -> 0 (no comparison with a NaN is true); otherwise NaN
 * entries are skipped and the first maximum of the others wins (row[0]
 * not NaN is a candidate, so a row of -inf and NaN gives 0 as well). */
__global__ void k_argmax(const float *logits, int ld, int n, int32_t *out)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *row = logits + (size_t)blockIdx.x * ld;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (am_better(row[i], i, bv, bi)) {
            bv = row[i];
            bi = i;
        }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < nw; k++)
            if (am_better(sv[k], si[k], bv, bi)) {
                bv = sv[k];
                bi = si[k];
            }
        /* row[0] NaN (all NaN included): token 0, as the CPU */
        out[blockIdx.x] = bi == 0x7fffffff || isnan(row[0]) ? 0 : bi;
    }
}

void launch_argmax(cudaStream_t st, const float *logits, int ld, int n, int rows, int32_t *out)
{
    k_argmax<<<rows, 1024, 0, st>>>(logits, ld, n, out);
}
