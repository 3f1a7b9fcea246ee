/*
 * device.cu - the CUDA devices: whether the library has CUDA, how many
 * devices are visible, their properties, and selecting one (check_device,
 * used by every constructor). See model/cuda_backend.h.
 */
#include "cuda/backend.cuh"

#include <stdio.h>
#include <string.h>

extern "C" int cuda_available(void)
{
    return 1;
}

extern "C" int cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();        /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

int check_device(int device, char *err, size_t errlen)
{
    int n = cuda_device_count();
    if (n == 0)
        return util_err(err, errlen, "no CUDA device available");
    if (device < 0 || device >= n)
        return util_err(err, errlen, "CUDA device %d does not exist (%d visible)", device, n);
    cudaCheck(cudaSetDevice(device));
    return 0;
}

extern "C" int cuda_get_device_info(int device, cuda_device_info *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    if (check_device(device, err, errlen) != 0)
        return -1;
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, device));
    snprintf(info->name, sizeof info->name, "%.127s", p.name);
    info->total_mem = p.totalGlobalMem;
    info->sm_major = p.major;
    info->sm_minor = p.minor;
    info->multiprocessors = p.multiProcessorCount;
    int clk_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
        cudaGetLastError();
        clk_khz = bus_bits = 0;
    }
    /* bytes/s = 2 (double data rate) * clock (Hz) * bus width (bytes) */
    info->peak_bw_gbs = 2.0 * clk_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    return 0;
}
