/*
 * checks.cu - device functions for tests and scripts/gpu_check.c, outside
 * any pass: the argmax kernel over host rows (cuda_argmax_host), and the
 * fixed-order projection against cuBLAS on random data, bits and time
 * (cuda_proj_check; the one place cuBLAS is used).
 */
#include "cuda/backend.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" int cuda_argmax_host(int device, const float *logits, int32_t rows, int32_t n, int32_t *out,
                                char *err, size_t errlen)
{
    if (rows <= 0 || n <= 0 || !logits || !out)
        return util_err(err, errlen, "cuda_argmax_host: bad arguments (rows %d, n %d)", rows, n);
    cudaCheck(cudaSetDevice(device));
    float *d = NULL;
    int32_t *am = NULL;
    size_t bytes = (size_t)rows * (size_t)n * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&d, bytes);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&am, (size_t)rows * sizeof(int32_t));
    if (e == cudaSuccess)
        e = cudaMemcpy(d, logits, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        launch_argmax(0, d, n, n, rows, am);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaMemcpy(out, am, (size_t)rows * sizeof(int32_t), cudaMemcpyDeviceToHost);
    cudaFree(d);
    cudaFree(am);
    if (e != cudaSuccess)
        return util_err(err, errlen, "%s:%d: cuda_argmax_host: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    return 0;
}

/* Buffers of cuda_proj_check; freed by proj_check_free. */
struct proj_bufs {
    wt *W, *X;
    float *Yf, *Y1, *Yc;          /* (T, rows): fixed, token by token, cuBLAS */
    float *hf, *h1, *hc;          /* host copies */
    cudaStream_t st;
    cublasHandle_t blas;
    void *ws;
    cudaEvent_t a, b;
    int have_events;
};

static void proj_check_free(proj_bufs *p)
{
    if (p->st)
        cudaStreamSynchronize(p->st);
    void *dev[] = {p->W, p->X, p->Yf, p->Y1, p->Yc, p->ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            cudaFree(dev[i]);
    free(p->hf);
    free(p->h1);
    free(p->hc);
    if (p->have_events) {
        cudaEventDestroy(p->a);
        cudaEventDestroy(p->b);
    }
    if (p->blas)
        cublasDestroy(p->blas);
    if (p->st)
        cudaStreamDestroy(p->st);
    cudaGetLastError();
}

static int proj_check_run(proj_bufs *p, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                          char *err, size_t errlen)
{
    size_t ny = (size_t)T * rows;
    cudaCheck(cudaStreamCreateWithFlags(&p->st, cudaStreamNonBlocking));
    cudaCheck(cudaMalloc((void **)&p->W, (size_t)rows * cols * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&p->X, (size_t)T * cols * sizeof(wt)));
    cudaCheck(cudaMalloc((void **)&p->Yf, ny * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&p->Y1, ny * sizeof(float)));
    cudaCheck(cudaMalloc((void **)&p->Yc, ny * sizeof(float)));
    p->hf = (float *)malloc(ny * sizeof(float));
    p->h1 = (float *)malloc(ny * sizeof(float));
    p->hc = (float *)malloc(ny * sizeof(float));
    if (!p->hf || !p->h1 || !p->hc)
        return util_err(err, errlen, "out of memory");
    size_t ws = (size_t)32 << 20;
    cudaCheck(cudaMalloc(&p->ws, ws));
    cublasCheck(cublasCreate(&p->blas));
    cublasCheck(cublasSetStream(p->blas, p->st));
    cublasCheck(cublasSetWorkspace(p->blas, p->ws, ws));
    cudaCheck(cudaEventCreate(&p->a));
    cudaCheck(cudaEventCreate(&p->b));
    p->have_events = 1;
    launch_fill_uniform(p->st, p->W, (size_t)rows * cols, 17, sqrtf(3.0f / cols));
    launch_fill_uniform(p->st, p->X, (size_t)T * cols, 29, 1.0f);
    launchCheck();
    const float alpha = 1.0f, beta = 0.0f;
#define PROJ_CUBLAS()                                                                                   \
    cublasCheck(cublasGemmEx(p->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols, &alpha, p->W, WT_CUDA_R, cols, \
                             p->X, WT_CUDA_R, cols, &beta, p->Yc, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,    \
                             CUBLAS_GEMM_DEFAULT))
    launch_proj(p->st, p->W, rows, cols, p->X, T, p->Yf, 0);
    for (int32_t t = 0; t < T; t++)
        launch_proj(p->st, p->W, rows, cols, p->X + (size_t)t * cols, 1, p->Y1 + (size_t)t * rows, 0);
    launchCheck();
    PROJ_CUBLAS();
    cudaCheck(cudaMemcpyAsync(p->hf, p->Yf, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaMemcpyAsync(p->h1, p->Y1, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaMemcpyAsync(p->hc, p->Yc, ny * sizeof(float), cudaMemcpyDeviceToHost, p->st));
    cudaCheck(cudaStreamSynchronize(p->st));
    r->rows_identical = memcmp(p->hf, p->h1, ny * sizeof(float)) == 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)p->hf[i] - p->hc[i]);
        r->max_abs_diff = d > r->max_abs_diff || d != d ? d : r->max_abs_diff;
        r->max_abs = fabs((double)p->hc[i]) > r->max_abs ? fabs((double)p->hc[i]) : r->max_abs;
    }
    float ms = 0.0f;
    cudaCheck(cudaEventRecord(p->a, p->st));
    for (int i = 0; i < iters; i++)
        launch_proj(p->st, p->W, rows, cols, p->X, T, p->Yf, 0);
    cudaCheck(cudaEventRecord(p->b, p->st));
    cudaCheck(cudaEventSynchronize(p->b));
    launchCheck();
    cudaCheck(cudaEventElapsedTime(&ms, p->a, p->b));
    r->ms_fixed = (double)ms / iters;
    cudaCheck(cudaEventRecord(p->a, p->st));
    for (int i = 0; i < iters; i++)
        PROJ_CUBLAS();
    cudaCheck(cudaEventRecord(p->b, p->st));
    cudaCheck(cudaEventSynchronize(p->b));
    cudaCheck(cudaEventElapsedTime(&ms, p->a, p->b));
    r->ms_cublas = (double)ms / iters;
#undef PROJ_CUBLAS
    return 0;
}

extern "C" int cuda_proj_check(int device, int32_t rows, int32_t cols, int32_t T, int iters, cuda_proj_report *r,
                               char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    if (rows <= 0 || cols <= 0 || cols % PROJ_VEC != 0 || T < 1 || T > PROJ_T_MAX || iters <= 0)
        return util_err(err, errlen, "cuda_proj_check: bad arguments (rows %d, cols %d, T %d)", rows, cols, T);
    if (check_device(device, err, errlen) != 0)
        return -1;
    proj_bufs p;
    memset(&p, 0, sizeof p);
    int rc = proj_check_run(&p, rows, cols, T, iters, r, err, errlen);
    proj_check_free(&p);
    return rc;
}
