/*
 * cuda_common.cuh - what every CUDA source of common/cuda/ shares: the
 * weight element type, the per-sequence cache descriptor the kernels read,
 * and the error-checking macros (each carries __FILE__ / __LINE__ into the
 * one-line error). The kernel launchers are declared in kernels.cuh, the
 * backend's own objects in backend.cuh.
 *
 * Weight/activation element type: fp16 by default. Define
 * SELFSPEC_CUDA_BF16=1 (nvcc -D) to use bf16 instead; nothing else changes.
 * fp16 keeps 11 significant bits, which represents the 8-bit U8A levels
 * times their scale more closely than bf16's 8 bits; the activations of
 * Llama models fit its range (llama.cpp's CUDA backend also runs fp16).
 */
#ifndef SELFSPEC_CUDA_COMMON_CUH
#define SELFSPEC_CUDA_COMMON_CUH

#include "kernels/cuda_sample.h"
#include <stdint.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>

extern "C" {
#include "util/util.h"
}
#include "kernels/cuda_order.h"

#if SELFSPEC_CUDA_BF16
typedef __nv_bfloat16 wt;
#define WT_CUDA_R CUDA_R_16BF
#define WT_NAME "bf16"
static __host__ __device__ inline wt to_wt(float f) { return __float2bfloat16(f); }
static __host__ __device__ inline float from_wt(wt h) { return __bfloat162float(h); }
#else
typedef __half wt;
#define WT_CUDA_R CUDA_R_16F
#define WT_NAME "fp16"
static __host__ __device__ inline wt to_wt(float f) { return __float2half(f); }
static __host__ __device__ inline float from_wt(wt h) { return __half2float(h); }
#endif

/* KV entries: IEEE half, as the CPU kv_elem. */
typedef __half kvt;

/* Where one sequence of a batch keeps its keys and values: k and v are its
 * contiguous cache or the device pool's K and V (w.bt set), sk and sv its
 * scratch (w.scap > 0); kv_row (cuda_order.h) finds a row. */
struct dev_seq {
    kvt *k, *v;
    kvt *sk, *sv;
    kv_where w;
};

/* Errors: record "file:line: call: reason" into (err, errlen), which must be
 * in scope, and return -1 from the enclosing int function. */
#define cudaCheck(call)                                                                   \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess)                                                            \
            return util_err(err, errlen, "%s:%d: %s: %s", __FILE__, __LINE__, #call,      \
                            cudaGetErrorString(e_));                                      \
    } while (0)

#define cublasCheck(call)                                                                 \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                  \
            return util_err(err, errlen, "%s:%d: %s: %s", __FILE__, __LINE__, #call,      \
                            cublasGetStatusString(s_));                                   \
    } while (0)

/* After a kernel launch: a bad configuration shows up here. */
#define launchCheck() cudaCheck(cudaGetLastError())

/* ATT_MAX_HD, PROJ_T_MAX and the other constants of the fixed-order
 * kernels: kernels/cuda_order.h. */

#endif
