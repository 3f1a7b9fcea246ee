/*
 * k_fill.cu - random fills of device memory from a hash of (seed, index):
 * the synthetic weights of cuda_synthetic_model (timing only).
 * Launchers: kernels.cuh.
 */
#include "cuda/kernels.cuh"

static __device__ __forceinline__ uint64_t splitmix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__global__ void k_fill_uniform(wt *p, size_t n, uint64_t seed, float a)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u = (float)(splitmix(seed * 0x100000001B3ull + i) >> 40) * (1.0f / 16777216.0f);
        p[i] = to_wt((2.0f * u - 1.0f) * a);
    }
}

void launch_fill_uniform(cudaStream_t st, wt *p, size_t n, uint64_t seed, float a)
{
    k_fill_uniform<<<1024, 256, 0, st>>>(p, n, seed, a);
}

__global__ void k_fill_f32(float *p, size_t n, float v)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

void launch_fill_f32(cudaStream_t st, float *p, size_t n, float v)
{
    k_fill_f32<<<64, 256, 0, st>>>(p, n, v);
}
