/*
 * k_pointwise.cu - the kernels that work row by row or element by element:
 * the embedding lookup (k_embed), RMSNorm (k_rmsnorm: one block per row,
 * the sum of squares in block_sum's fixed order) and SwiGLU (k_swiglu).
 * Launchers: kernels.cuh.
 */
#include "cuda/kernels.cuh"
#include "cuda/reduce.cuh"

__global__ void k_embed(const wt *E, int dim, const int32_t *tok, float *x)
{
    int t = blockIdx.x;
    const wt *row = E + (size_t)tok[t] * dim;
    float *xt = x + (size_t)t * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        xt[i] = from_wt(row[i]);
}

void launch_embed(cudaStream_t st, const wt *E, int dim, const int32_t *tok, float *x, int T)
{
    k_embed<<<T, 256, 0, st>>>(E, dim, tok, x);
}

__global__ void k_rmsnorm(const float *x, const int32_t *map, const float *w, wt *out, int dim, float eps)
{
    __shared__ float red[32];
    int r = blockIdx.x;
    const float *xr = x + (size_t)(map ? map[r] : r) * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / dim + eps);
    wt *o = out + (size_t)r * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[i] = to_wt(xr[i] * inv * w[i]);
}

void launch_rmsnorm(cudaStream_t st, const float *x, const int32_t *map, const float *w, wt *out,
                    int rows, int dim, float eps)
{
    k_rmsnorm<<<rows, 256, 0, st>>>(x, map, w, out, dim, eps);
}

__global__ void k_swiglu(const float *hb, wt *out, int H)
{
    int t = blockIdx.y;
    const float *g = hb + (size_t)t * 2 * H, *u = g + H;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x) {
        float x = g[i];
        out[(size_t)t * H + i] = to_wt(x / (1.0f + expf(-x)) * u[i]);
    }
}

void launch_swiglu(cudaStream_t st, const float *hb, wt *out, int T, int H)
{
    int bx = (H + 255) / 256;
    k_swiglu<<<dim3(bx < 64 ? bx : 64, T), 256, 0, st>>>(hb, out, H);
}
