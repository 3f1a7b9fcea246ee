#!/usr/bin/env python3
"""check_llama_quantize.py - selfspec against llama.cpp on files that
llama.cpp's own `llama-quantize` wrote, one per quantization type.

tests/test_tiny_llama.c holds every tensor type to llama.cpp on random valid
blocks (what CI can regenerate without building llama.cpp). This script is
the complement, run by hand where scripts/build_llama_cpp.sh has built
llama.cpp: it writes a small random Llama model in F32 with gguf-py (dim 256,
hidden 768, 4 layers, 4 heads / 2 KV heads, a 256-token byte vocabulary),
quantizes it with `llama-quantize` to each type (llama-quantize picks its own
mix, as for real models: e.g. Q6_K or Q8_0 for the output head), records
llama.cpp's logits on it with scripts/make_logit_fixtures.py and runs
selfspec's fixture test (build/e2e/test_fixtures) on each, printing the
test's verdict and its measured differences.

Usage (after scripts/build_llama_cpp.sh and make build/e2e/test_fixtures):
    PYTHONPATH=.deps/llama.cpp/src:.deps/llama.cpp/src/vendor/llama.cpp/gguf-py \\
    LLAMA_CPP_LIB_PATH=.deps/llama.cpp/build/bin python3 scripts/check_llama_quantize.py
"""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANTIZE = os.path.join(REPO, ".deps", "llama.cpp", "build", "bin", "llama-quantize")
TEST = os.path.join(REPO, "build", "e2e", "test_fixtures")
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
         "IQ4_NL", "IQ4_XS"]


def byte_vocab():
    """GPT-2's bytes_to_unicode alphabet: token i is byte i."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra, toks = 0, []
    for b in range(256):
        if b in printable:
            toks.append(chr(b))
        else:
            toks.append(chr(256 + extra))
            extra += 1
    return toks


def write_f32_model(path, seed=7):
    import gguf
    rng = np.random.default_rng(seed)
    dim, hidden, layers, heads, kv_heads, vocab = 256, 768, 4, 4, 2, 256
    hd = dim // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-f32-llama")
    w.add_block_count(layers)
    w.add_context_length(4096)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(byte_vocab())
    w.add_token_types([1] * vocab)
    w.add_token_merges(["\u0100 \u0101"])   # one merge (of bytes 0 and 1, in no prompt): llama.cpp needs the key

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (0.8 + 0.4 * rng.random(n)).astype(np.float32)
    w.add_tensor("token_embd.weight", mat(vocab, dim, 4.0 * np.sqrt(dim) / 16))
    w.add_tensor("output_norm.weight", norm(dim))
    w.add_tensor("output.weight", mat(vocab, dim, 4.0))
    for l in range(layers):
        p = "blk.%d." % l
        w.add_tensor(p + "attn_norm.weight", norm(dim))
        w.add_tensor(p + "attn_q.weight", mat(dim, dim))
        w.add_tensor(p + "attn_k.weight", mat(kv_heads * hd, dim))
        w.add_tensor(p + "attn_v.weight", mat(kv_heads * hd, dim))
        w.add_tensor(p + "attn_output.weight", mat(dim, dim))
        w.add_tensor(p + "ffn_norm.weight", norm(dim))
        w.add_tensor(p + "ffn_gate.weight", mat(hidden, dim))
        w.add_tensor(p + "ffn_up.weight", mat(hidden, dim))
        w.add_tensor(p + "ffn_down.weight", mat(dim, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    for need in (QUANTIZE, TEST):
        if not os.path.exists(need):
            sys.exit("missing %s (scripts/build_llama_cpp.sh; make build/e2e/test_fixtures)" % need)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        f32 = os.path.join(d, "f32.gguf")
        write_f32_model(f32)
        for t in TYPES:
            q = os.path.join(d, t + ".gguf")
            r = subprocess.run([QUANTIZE, f32, q, t], capture_output=True, text=True)
            if r.returncode != 0:
                rows.append((t, "llama-quantize failed", r.stderr.strip().splitlines()[-1:]))
                continue
            types = sorted(set(re.findall(r"converting to (\w+)", r.stdout + r.stderr)))
            fx = os.path.join(d, t + ".json")
            subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_logit_fixtures.py"), "-m", q,
                            "-o", fx, "--n-gen", "32"], check=True, capture_output=True)
            env = dict(os.environ, SELFSPEC_MODEL=q, SELFSPEC_LOGIT_FIXTURE=fx)
            r = subprocess.run([TEST], capture_output=True, text=True, env=env)
            summary = [ln.strip() for ln in r.stdout.splitlines() if "all prompts" in ln or "greedy:" in ln]
            rows.append((t, "passed" if r.returncode == 0 else "FAILED", types + summary))
    for t, verdict, detail in rows:
        print("%-8s %s" % (t, verdict))
        for line in detail:
            print("         " + line)
    return 0 if all(v == "passed" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
