/*
 * backend.cuh - the CUDA backend's objects (model/cuda_backend.h keeps them
 * opaque) and what its files share. One file per job:
 *   device.cu    devices: count, properties, selection
 *   weights.cu   the weight allocation: layout, upload, synthetic weights
 *   kv.cu        KV caches: contiguous, the paged pool and its views,
 *                download, shift and copy
 *   forward.cu   activation state, the forward pass (cuda_forward)
 *   graphs.cu    CUDA graphs of passes, cuda_time_step
 *   sample.cu    sampling and draft rows on the device
 *   ipc.cu       CUDA IPC between the verifier and the drafter
 *   checks.cu    cuda_argmax_host, cuda_proj_check (tests, gpu_check)
 * and the kernels by family (k_*.cu, launchers in kernels.cuh). There is
 * no decoding loop here: the engine (engine/engine.h) drives the device
 * through model/backend.h (model/backend_cuda.c).
 */
#ifndef SELFSPEC_CUDA_BACKEND_CUH
#define SELFSPEC_CUDA_BACKEND_CUH

#include "cuda/kernels.cuh"

extern "C" {
#include "model/cuda_backend.h"
}

#define ALIGN_PIECE 256
#define ALIGN_ALLOC ((size_t)2 << 20)

struct dev_layer {
    float *attn_norm, *ffn_norm;
    float *bqkv;                  /* (dim + 2 kv_dim) Q/K/V biases, or NULL */
    wt *wqkv, *wo, *wgu, *wdown;
};

struct cuda_model {
    model_config c;
    int device;
    int tied;
    int32_t vrows;                /* vocabulary rounded up to 16 */
    void *base;                   /* the weight allocation */
    size_t bytes;
    int imported;                 /* base came from cudaIpcOpenMemHandle */
    wt *tok_embd, *output;
    float *out_norm;
    dev_layer *layers;
    cudaStream_t stream;
    cudaEvent_t ipc_event;        /* interprocess event (export or import) */
    int has_ipc_event;
    void *ipc_kv_base;            /* importer: opened KV allocation */
    uint8_t *keep;                /* (2 n_layers: attention, then MLP) the sublayers this
                                   * copy holds (cuda_model_load_masked); NULL: all */
};

struct cuda_kv {
    cuda_model *cm;
    void *base;                   /* K (n_layers, cap, kv_dim) then V; NULL for a paged view */
    size_t bytes;
    kvt *k, *v;                   /* a paged view: the pool's K and V */
    int32_t cap, len;
    int imported;                 /* aliases another process's cache */
    const int32_t *blocks;        /* a paged view: host (cap / CO_KV_BLOCK) pool blocks, borrowed */
};

/* Paged KV: one allocation of n_blocks blocks, K then V, each
 * (n_blocks, n_layers, CO_KV_BLOCK, kv_dim) (kv_where, cuda_order.h). The
 * pool only holds memory; which block belongs to whom is the caller's
 * ledger (kv_ledger_init, model.h). */
struct cuda_kv_pool {
    cuda_model *cm;
    void *base;
    size_t bytes;
    kvt *k, *v;
    int32_t n_blocks;
};

/* Passes of up to STEP_GRAPH_T tokens in which every token is an output
 * row are captured as graphs (graphs.cu). */
#define STEP_GRAPH_T 64

enum { GRAPH_TIME = 1, GRAPH_PASS = 2 };

struct graph_slot {
    cudaGraphExec_t exec;
    int valid;
    int kind;                     /* GRAPH_TIME (cuda_time_step) or GRAPH_PASS (cuda_forward) */
    int32_t T;
    uint8_t *mask;                /* copy of the mask (2 n_layers), NULL = full */
};

/* Per-batch metadata, laid out identically in pinned host and device memory
 * (meta_layout): tok, pos, seq, outrow (max_tokens each), seqs (max_tokens
 * dev_seq). */
struct cuda_state {
    cuda_model *cm;
    int32_t max_tokens, ctx;
    float *x, *qkv, *hb, *logits;
    wt *xb, *att, *hs;
    float *att_part;              /* attention splits: (max_tokens, n_heads, att_splits) x (2 + head_dim) */
    int32_t att_span, att_splits; /* positions per split (att_span(ctx)), splits per token at most */
    float2 *rope;
    void *meta_d, *meta_h;        /* metadata block (device / pinned host) */
    size_t meta_bytes;
    int32_t *tok, *pos, *seq, *outrow;   /* device views into meta_d */
    dev_seq *seqs;
    int32_t *am;                  /* device argmax per output row */
    graph_slot g_time;            /* cuda_time_step's graph */
    /* cuda_forward's passes in which every token is an output row (decode
     * and verification steps, draft passes) of up to STEP_GRAPH_T tokens:
     * captured at their first run, replayed after ([0] full model, [1] a
     * mask, recaptured when the mask changes); none when graphs is 0 */
    graph_slot g_step[2][STEP_GRAPH_T];
    int graphs;                   /* cuda_state_init's choice */
    int32_t last_out;             /* output rows of the last cuda_forward (logits, am) */
    samp_req *samp;               /* device: (max_tokens) sampling requests */
    int32_t *samp_ids;            /* device: (max_tokens) their tokens */
    uint8_t *samp_acc;            /* device: (max_tokens) test rows: accepted */
    int32_t *samp_slot;           /* device: (max_tokens) draft rows' q slots */
    float *samp_conf;             /* device: (max_tokens) draft rows' top-1 probabilities */
    int32_t *lp_cand;             /* device: (max_tokens, 2) log-probability rows' candidate tokens */
    lp_row *lp_out;               /* device: (max_tokens) their numbers (cuda_logprob_rows) */
    float *qstore;                /* device: (q_slots, vocab_size) sampled drafts' warped distributions */
    int32_t q_slots;
    uint8_t *q_filled;            /* host: (q_slots) a draft has filled the slot */
    /* paged caches' block tables of the current pass: pinned host and
     * device, bt_cap entries, grown as a pass needs (dev_seq.w.bt points
     * into bt_d; values, not kernel arguments, so graphs stay valid) */
    int32_t *bt_h, *bt_d;
    size_t bt_cap, bt_used;
};

/* ---- shared between the files ---- */

/* device.cu: select device (0), or -1 with err when it does not exist. */
int check_device(int device, char *err, size_t errlen);

/* weights.cu: assign every weight pointer of cm from base (NULL while
 * sizing); returns the allocation's bytes. */
size_t weights_plan(cuda_model *cm, uint8_t *base);
/* weights.cu: a model of config c on device with its stream and layer
 * table, no weights yet; NULL with err. */
cuda_model *model_new(const model_config *c, int tied, int device, char *err, size_t errlen);

/* kv.cu: the operations that address a cache as one (n_layers, cap,
 * kv_dim) allocation (cuda_time_step, shifts, copies, IPC) refuse a paged
 * one: -1 with err naming what. */
int contiguous_only(const cuda_kv *kv, const char *what, char *err, size_t errlen);

/* forward.cu: the metadata block's offsets for M tokens; returns its bytes. */
size_t meta_layout(int32_t M, size_t *o_pos, size_t *o_seq, size_t *o_out, size_t *o_seqs);
/* forward.cu: the descriptor of one sequence; bt: where a paged kv's block
 * table is in device memory (NULL for a contiguous one). */
dev_seq seq_desc(const cuda_kv *kv, const int32_t *bt, const cuda_kv *scratch, int32_t scratch_base);
/* forward.cu: copy the pinned metadata (and block tables) to the device. */
int upload_meta(cuda_state *s, char *err, size_t errlen);
/* forward.cu: the whole forward pass for T tokens whose metadata is in the
 * state's device buffers, n_out output rows: logits into s->logits and
 * argmax ids into s->am (n_out = 0: the layers only). Launch configuration
 * depends only on (T, n_out, mask): capturable. */
int forward_core(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err, size_t errlen);

/* graphs.cu: free what g holds and clear it. */
void graph_reset(graph_slot *g);
/* graphs.cu: one cuda_forward pass over the uploaded metadata, replayed
 * from its graph where it can be (see graphs.cu). */
int step_graph_run(cuda_state *s, int32_t T, int32_t n_out, const layer_mask *mask, char *err, size_t errlen);

#endif
