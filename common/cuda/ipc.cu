/*
 * ipc.cu - CUDA IPC between the verifier and the drafter process (see
 * model/cuda_backend.h): the exporter's blob (handles of the weight
 * allocation and of a contiguous KV cache, an interprocess event, the
 * model shape), the event's signal and wait, and the importer's side: the
 * whole model and KV on the same device (cuda_ipc_import), or only the KV
 * over peer access into the drafter's own copy on a second device
 * (cuda_ipc_import_kv).
 */
#include "cuda/backend.cuh"

#include <stdlib.h>
#include <string.h>

#define IPC_MAGIC 0x53534950u   /* "SSIP" */

struct ipc_blob {
    uint32_t magic, version;
    model_config c;
    int32_t tied, kv_cap;
    uint64_t weight_bytes, kv_bytes;
    cudaIpcMemHandle_t weights, kv;
    cudaIpcEventHandle_t event;
};
static_assert(sizeof(ipc_blob) <= CUDA_IPC_BLOB_BYTES, "IPC blob too large");

extern "C" int cuda_ipc_export(cuda_model *cm, cuda_kv *kv, void *blob, char *err, size_t errlen)
{
    if (cm->imported || kv->imported || kv->cm != cm)
        return util_err(err, errlen, "cuda_ipc_export: only the owner of the allocations can export them");
    if (cm->keep)
        return util_err(err, errlen, "cuda_ipc_export: a partial copy of the model cannot be exported");
    if (contiguous_only(kv, "cuda_ipc_export", err, errlen) != 0)
        return -1;
    cudaCheck(cudaSetDevice(cm->device));
    ipc_blob b;
    memset(&b, 0, sizeof b);
    b.magic = IPC_MAGIC;
    b.version = 1;
    b.c = cm->c;
    b.tied = cm->tied;
    b.kv_cap = kv->cap;
    b.weight_bytes = cm->bytes;
    b.kv_bytes = kv->bytes;
    /* both are bases of cudaMalloc allocations of 2 MiB multiples */
    cudaCheck(cudaIpcGetMemHandle(&b.weights, cm->base));
    cudaCheck(cudaIpcGetMemHandle(&b.kv, kv->base));
    if (!cm->has_ipc_event) {
        cudaCheck(cudaEventCreateWithFlags(&cm->ipc_event, cudaEventInterprocess | cudaEventDisableTiming));
        cm->has_ipc_event = 1;
        /* record once so a wait before the first signal is well-defined */
        cudaCheck(cudaEventRecord(cm->ipc_event, cm->stream));
    }
    cudaCheck(cudaIpcGetEventHandle(&b.event, cm->ipc_event));
    memset(blob, 0, CUDA_IPC_BLOB_BYTES);
    memcpy(blob, &b, sizeof b);
    cudaCheck(cudaStreamSynchronize(cm->stream));
    return 0;
}

extern "C" int cuda_ipc_signal(cuda_model *cm, char *err, size_t errlen)
{
    if (!cm->has_ipc_event)
        return util_err(err, errlen, "cuda_ipc_signal: no event (export or import first)");
    cudaCheck(cudaEventRecord(cm->ipc_event, cm->stream));
    return 0;
}

extern "C" int cuda_ipc_wait(cuda_model *cm, char *err, size_t errlen)
{
    if (!cm->has_ipc_event)
        return util_err(err, errlen, "cuda_ipc_wait: no event (export or import first)");
    cudaCheck(cudaStreamWaitEvent(cm->stream, cm->ipc_event, 0));
    return 0;
}

static int ipc_open(cuda_model *cm, const ipc_blob *b, cuda_kv *kv, char *err, size_t errlen)
{
    /* only in another process: opening in the exporter fails */
    cudaCheck(cudaIpcOpenMemHandle(&cm->base, b->weights, cudaIpcMemLazyEnablePeerAccess));
    cm->imported = 1;
    size_t need = weights_plan(cm, NULL);
    if (need != b->weight_bytes)
        return util_err(err, errlen, "IPC: weight layout differs (%zu vs %llu bytes)", need,
                        (unsigned long long)b->weight_bytes);
    cm->bytes = need;
    weights_plan(cm, (uint8_t *)cm->base);
    cudaCheck(cudaIpcOpenMemHandle(&cm->ipc_kv_base, b->kv, cudaIpcMemLazyEnablePeerAccess));
    size_t n = (size_t)cm->c.n_layers * b->kv_cap * cm->c.kv_dim;
    kv->cm = cm;
    kv->base = cm->ipc_kv_base;
    kv->bytes = b->kv_bytes;
    kv->cap = b->kv_cap;
    kv->k = (kvt *)kv->base;
    kv->v = kv->k + n;
    kv->imported = 1;
    cudaCheck(cudaIpcOpenEventHandle(&cm->ipc_event, b->event));
    cm->has_ipc_event = 1;
    return 0;
}

extern "C" cuda_model *cuda_ipc_import(const void *blob, int device, cuda_kv **kv_out, char *err, size_t errlen)
{
    ipc_blob b;
    memcpy(&b, blob, sizeof b);
    *kv_out = NULL;
    if (b.magic != IPC_MAGIC || b.version != 1 || b.kv_cap <= 0) {
        util_err(err, errlen, "IPC: not a selfspec CUDA IPC blob");
        return NULL;
    }
    cuda_model *cm = model_new(&b.c, b.tied, device, err, errlen);
    if (!cm)
        return NULL;
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv || ipc_open(cm, &b, kv, err, errlen) != 0) {
        if (!kv)
            util_err(err, errlen, "out of memory");
        cudaGetLastError();
        free(kv);
        cuda_model_free(cm);
        return NULL;
    }
    *kv_out = kv;
    return cm;
}

/* Two GPUs: the drafter's own model (on its device) opens only the
 * exporter's verified KV and event; the weights stay where they are. */
extern "C" cuda_kv *cuda_ipc_import_kv(cuda_model *cm, const void *blob, char *err, size_t errlen)
{
    ipc_blob b;
    memcpy(&b, blob, sizeof b);
    if (b.magic != IPC_MAGIC || b.version != 1 || b.kv_cap <= 0) {
        util_err(err, errlen, "IPC: not a selfspec CUDA IPC blob");
        return NULL;
    }
    const model_config *c = &cm->c;
    if (b.c.n_layers != c->n_layers || b.c.kv_dim != c->kv_dim || b.c.dim != c->dim ||
        b.c.vocab_size != c->vocab_size) {
        util_err(err, errlen, "IPC: the exporter's model differs from this one");
        return NULL;
    }
    size_t n = (size_t)c->n_layers * b.kv_cap * c->kv_dim;
    if (b.kv_bytes < 2 * n * sizeof(kvt) || cm->ipc_kv_base || cm->has_ipc_event) {
        util_err(err, errlen, "IPC: bad KV size, or this model has imported already");
        return NULL;
    }
    cuda_kv *kv = (cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) {
        util_err(err, errlen, "out of memory");
        return NULL;
    }
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess)   /* another device's memory: peer access, enabled as needed */
        e = cudaIpcOpenMemHandle(&cm->ipc_kv_base, b.kv, cudaIpcMemLazyEnablePeerAccess);
    if (e == cudaSuccess && (e = cudaIpcOpenEventHandle(&cm->ipc_event, b.event)) == cudaSuccess)
        cm->has_ipc_event = 1;
    if (e != cudaSuccess) {
        util_err(err, errlen, "IPC: opening the verifier's KV on device %d: %s (are the devices peers?)", cm->device,
                 cudaGetErrorString(e));
        cudaGetLastError();
        free(kv);
        return NULL;
    }
    kv->cm = cm;
    kv->base = cm->ipc_kv_base;
    kv->bytes = b.kv_bytes;
    kv->cap = b.kv_cap;
    kv->k = (kvt *)kv->base;
    kv->v = kv->k + n;
    kv->imported = 1;
    return kv;
}
