#!/usr/bin/env python3
"""make_tiny_fixtures.py - llama.cpp's logits on the small random models of
tests/test_tiny_llama.c, for the architectures and tensor types that no
downloadable model covers (Qwen3, Gemma 3 with short sliding windows, Q5_0,
Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS).

The test binary writes the models (`build/check/test_tiny_llama --write DIR`,
from fixed seeds) and prints the token sequence; for each model this script
runs llama.cpp (the llama-cpp-python binding on the libllama of
scripts/build_llama_cpp.sh, f32 KV cache) on that sequence in one batched
eval, and records in tests/fixtures/tiny_llama.json:
  fnv64                 the file's FNV-1a 64 hash (the test checks that it
                        writes the same file);
  tokens                llama.cpp's ids for TEXTS (add_bos=False);
  top5[pos]             [[id, logit] x 5] at every position;
  kv_alt_max_abs_diff   the largest difference between those logits and
                        llama.cpp's own with an f16 KV cache (all positions,
                        full vocabulary): its own numerical noise;
  gen_ids, gen_margin   16 greedy tokens (argmax here, one eval per token)
                        and the top-1 minus top-2 margin of each choice;
  exact_top5[pos]       the logits of those top-5 ids in exact float64
                        arithmetic (scripts/make_exact_reference.py's model
                        from gguf-py's dequantized tensors): where llama.cpp's
                        own activation rounding (Q8_K, one scale per 256
                        values, for the K-quants and IQ4_XS) moves it further
                        than the test's tolerance, the test holds us to these.

Usage:
    make build/check/test_tiny_llama
    PYTHONPATH=.deps/llama.cpp/src:.deps/llama.cpp/src/vendor/llama.cpp/gguf-py \\
        LLAMA_CPP_LIB_PATH=.deps/llama.cpp/build/bin python3 scripts/make_tiny_fixtures.py
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "tiny_llama.json")
WRITER = os.path.join(REPO, "build", "check", "test_tiny_llama")
N_GEN = 16
# texts tokenized by llama.cpp for every model (the Qwen3 and Llama-3 models
# have merges: digit runs, " the", "'s", "cat", newlines, spaces)
TEXTS = ["123456789 12345", "the cat's 4567 the\n\n  cats", "I'm 78 the 1234567\r\n\t x",
         "  the  123 'S 'll ca", "9\u00e9t\u00e9 123\u0661\u0662\u0663 45"]


def fnv64(path):
    h = 1469598103934665603
    with open(path, "rb") as f:
        for b in f.read():
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def logits_of(llama_cpp, path, ids, kv_type):
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, logits_all=True, n_threads=2, seed=0,
                          verbose=False, type_k=kv_type, type_v=kv_type)
    llm.eval(ids)
    return llm, np.array(llm.scores[:len(ids)], dtype=np.float32, copy=True)


def exact_of(path, ids):
    """Exact float64 logits (T, vocab) of the model."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import make_exact_reference as mer
    return mer.Model(path).forward([(ids, lambda h: h, np.float64)])[0]


def run_model(llama_cpp, path, ids):
    exact = exact_of(path, ids)
    llm, scores = logits_of(llama_cpp, path, ids, 0)      # GGML_TYPE_F32
    _, alt = logits_of(llama_cpp, path, ids, 1)           # GGML_TYPE_F16
    top5 = []
    for row in scores:
        idx = sorted(np.argsort(-row)[:5].tolist(), key=lambda i: (-float(row[i]), i))
        top5.append([[int(i), round(float(row[i]), 5)] for i in idx])
    gen, margin = [], []
    row = scores[-1]
    for _ in range(N_GEN):
        o = sorted(np.argsort(-row)[:2].tolist(), key=lambda i: (-float(row[i]), i))
        gen.append(int(o[0]))
        margin.append(round(float(row[o[0]] - row[o[1]]), 5))
        llm.eval([o[0]])
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32, copy=True)
    tokens = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)} for t in TEXTS]
    return {
        "fnv64": fnv64(path),
        "tokens": tokens,
        "top5": top5,
        "kv_alt_max_abs_diff": round(float(np.max(np.abs(alt - scores))), 5),
        "gen_ids": gen,
        "gen_margin": margin,
        "exact_top5": [[round(float(exact[t, i]), 5) for i, _ in row] for t, row in enumerate(top5)],
    }


def main():
    import llama_cpp
    if not os.path.exists(WRITER):
        sys.exit("build the writer first: make build/check/test_tiny_llama")
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([WRITER, "--write", d], check=True, capture_output=True, text=True)
        ids = [int(x) for x in out.stdout.split()]
        models = {}
        for name in sorted(os.listdir(d)):
            key = name[:-len(".gguf")]
            models[key] = run_model(llama_cpp, os.path.join(d, name), ids)
            m = models[key]
            print("%-14s kv_alt %.4f greedy %s" % (key, m["kv_alt_max_abs_diff"], m["gen_ids"][:8]),
                  file=sys.stderr)
    data = {"generator": "scripts/make_tiny_fixtures.py",
            "llama_cpp_python_version": llama_cpp.__version__,
            "tokens": ids, "models": models}
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print("wrote %s (%d models)" % (OUT, len(models)), file=sys.stderr)


if __name__ == "__main__":
    main()
