/*
 * make_seeds.c - write small valid GGUF files as a seed corpus for fuzz_gguf.
 *
 * Usage: make_seeds DIR   (writes DIR/seed_*.gguf)
 * Built and run by `make unit` (build/make_seeds, into build/fuzz-seeds/):
 * the seeds are build outputs, never tracked. test_fuzz_corpus replays them
 * with the fuzzer's minimised inputs in tests/fuzz/corpus/.
 */
#include <stdio.h>
#include <stdlib.h>

#include "testutil_gguf.h"

static int seeds_save(tgguf *g, const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/seed_%s.gguf", dir, name);
    int rc = tgguf_write(g, path);
    if (rc != 0)
        fprintf(stderr, "make_seeds: cannot write %s\n", path);
    tgguf_free(g);
    return rc;
}

/* Metadata of every type, including arrays. */
static tgguf *seeds_metadata(uint32_t version)
{
    static const char *strs[] = { "<s>", "</s>", "a", "" };
    int32_t i32s[] = { 1, -2, 3 };
    float f32s[] = { 0.5f, 2.0f };
    uint8_t bools[] = { 0, 1 };
    tgguf *g = tgguf_new();
    tgguf_set_version(g, version);
    tgguf_kv_str(g, "general.architecture", "llama");
    tgguf_kv_u8(g, "a.u8", 1);
    tgguf_kv_i8(g, "a.i8", -1);
    tgguf_kv_u16(g, "a.u16", 2);
    tgguf_kv_i16(g, "a.i16", -2);
    tgguf_kv_u32(g, "a.u32", 3);
    tgguf_kv_i32(g, "a.i32", -3);
    tgguf_kv_u64(g, "a.u64", 4);
    tgguf_kv_i64(g, "a.i64", -4);
    tgguf_kv_f32(g, "a.f32", 0.25f);
    tgguf_kv_f64(g, "a.f64", 0.125);
    tgguf_kv_bool(g, "a.bool", 1);
    tgguf_kv_arr_str(g, "a.strs", strs, 4);
    tgguf_kv_arr_i32(g, "a.i32s", i32s, 3);
    tgguf_kv_arr_f32(g, "a.f32s", f32s, 2);
    tgguf_kv_arr(g, "a.bools", GGUF_VT_BOOL, bools, 2);
    return g;
}

/* One small tensor of each supported type. */
static tgguf *seeds_tensors(uint32_t alignment)
{
    static const uint32_t types[] = { GGUF_TT_F32, GGUF_TT_F16, GGUF_TT_BF16, GGUF_TT_Q8_0,
                                      GGUF_TT_Q4_0, GGUF_TT_Q4_1, GGUF_TT_Q4_K, GGUF_TT_Q6_K };
    static uint8_t buf[4 * 256];
    tgguf *g = tgguf_new();
    if (alignment)
        tgguf_kv_u32(g, "general.alignment", alignment);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        uint32_t be, bb;
        char name[32];
        gguf_type_block(types[i], &be, &bb);
        uint64_t ne[4] = { be == 1 ? 4 : be, 1, 1, 1 };
        uint32_t n_dims = (uint32_t)(i % 4) + 1;
        size_t nb = tgguf_random_blocks(types[i], i, ne[0], buf);
        snprintf(name, sizeof name, "t.%s", gguf_type_name(types[i]));
        tgguf_tensor(g, name, types[i], n_dims, ne, buf, nb);
    }
    return g;
}

/* A tiny Llama-like file: hyper-parameters, vocabulary, a few tensors. */
static tgguf *seeds_llama(void)
{
    static const char *toks[] = { "<unk>", "<s>", "</s>", "h", "i", "hi" };
    static const char *merges[] = { "h i" };
    int32_t ttype[] = { 2, 3, 3, 1, 1, 1 };
    float v[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)(i % 7) - 3.0f;
    tgguf *g = tgguf_new();
    tgguf_kv_str(g, "general.architecture", "llama");
    tgguf_kv_u32(g, "llama.block_count", 1);
    tgguf_kv_u32(g, "llama.embedding_length", 32);
    tgguf_kv_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    tgguf_kv_str(g, "tokenizer.ggml.model", "gpt2");
    tgguf_kv_arr_str(g, "tokenizer.ggml.tokens", toks, 6);
    tgguf_kv_arr_i32(g, "tokenizer.ggml.token_type", ttype, 6);
    tgguf_kv_arr_str(g, "tokenizer.ggml.merges", merges, 1);
    uint64_t ne_e[2] = { 32, 2 }, ne_n[1] = { 32 };
    tgguf_tensor_f32(g, "token_embd.weight", GGUF_TT_Q8_0, 2, ne_e, v);
    tgguf_tensor_f32(g, "output_norm.weight", GGUF_TT_F32, 1, ne_n, v);
    tgguf_tensor_f32(g, "blk.0.attn_q.weight", GGUF_TT_Q4_1, 2, ne_e, v);
    return g;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    rc |= seeds_save(tgguf_new(), argv[1], "empty");
    rc |= seeds_save(seeds_metadata(3), argv[1], "metadata_v3");
    rc |= seeds_save(seeds_metadata(2), argv[1], "metadata_v2");
    rc |= seeds_save(seeds_tensors(0), argv[1], "tensors");
    rc |= seeds_save(seeds_tensors(64), argv[1], "tensors_align64");
    rc |= seeds_save(seeds_llama(), argv[1], "llama");
    return rc ? 1 : 0;
}
