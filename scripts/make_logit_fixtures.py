#!/usr/bin/env python3
"""Generate reference logit fixtures for selfspec from llama.cpp.

Runs the default GGUF model through llama.cpp (via the `llama_cpp` Python
binding, PyPI package `llama-cpp-python`) and writes tests/fixtures/logits.json,
which the C tests use to check selfspec's tokenizer, forward pass and greedy
decoding against an independent implementation.

For each of a handful of prompts the fixture holds:
  * the prompt text and its token ids
    (llm.tokenize(text.encode(), add_bos=<the model's
    tokenizer.ggml.add_bos_token>, special=True); special=True makes
    "<|im_start|>" etc. map to their special ids; a vocabulary with Gemma's
    <start_of_turn> gets the chat prompt in Gemma's turn format);
  * the top-5 (token id, raw logit) at EVERY prompt position, from a single
    batched llm.eval(prompt_ids) on a fresh context with logits_all=True,
    plus the max |logit| over the full vocabulary at each position, and the
    largest difference between those logits and a token-by-token evaluation
    of the same prompt (llama.cpp's own batch-vs-single numerical noise);
  * the 64-token greedy continuation: after the prompt, argmax of the last
    logits row is taken here in Python (no llama.cpp sampler involved) and fed
    back with llm.eval([tok]) one token at a time.  EOS does not stop
    generation; the index of the first EOS (if any) is recorded.  For every
    generated position the top-2 ids/logits and the top-1 minus top-2 margin
    are recorded so a test can treat near-ties leniently.

Logits are raw (pre-softmax) float32 values rounded to 4 decimals.

KV cache type: by default llama.cpp is run with an F32 KV cache
(type_k = type_v = GGML_TYPE_F32), like selfspec's own float KV cache.  With
llama.cpp's default F16 KV cache its logits move by up to ~1.7 (mean 0.1-0.5)
after a few positions, and batched and token-by-token evaluation of the same
prompt disagree by that much; with F32 they are bit-identical.  Each prompt
also records kv_f16_max_abs_diff: the largest difference between the fixture's
logits and those of llama.cpp's default F16-KV configuration (batched prompt),
as a measure of how much "llama.cpp itself" varies with settings.

Usage:
    python3 scripts/make_logit_fixtures.py                # writes tests/fixtures/logits.json
    python3 scripts/make_logit_fixtures.py --check        # also re-run and verify determinism
    python3 scripts/make_logit_fixtures.py -m other.gguf -o /tmp/x.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "logits.json")

# (name, text).  Every prompt is tokenized with special=True, so the ChatML
# markers in "chat" become single special tokens.  A model whose vocabulary
# has Gemma's turn markers gets "chat" in its own format instead (CHAT_GEMMA).
CHAT_GEMMA = ("<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
              "<start_of_turn>model\n")
PROMPTS: list[tuple[str, str]] = [
    ("english",
     "The quick brown fox jumps over the lazy dog. Meanwhile, in a small "
     "village by the sea, the fishermen were getting their boats ready for"),
    ("chat",
     "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
     "<|im_start|>assistant\n"),
    ("python",
     "def fibonacci(n):\n"
     "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
     "    a, b = 0, 1\n"
     "    for _ in range(n):\n"),
    ("french",
     "Le petit prince regardait les étoiles en se demandant pourquoi les "
     "grandes personnes ne comprennent jamais rien toutes seules, et"),
    ("numbers",
     "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,"),
]

TOP_K = 5          # top-k recorded at every prompt position
N_GEN = 64         # greedy continuation length
N_CTX = 2048
N_THREADS = 2
DECIMALS = 4       # rounding of logits in the JSON
GGML_TYPE = {"f32": 0, "f16": 1}   # ggml_type values for type_k / type_v


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r(x: float) -> float:
    """Round a logit for JSON output."""
    return round(float(x), DECIMALS)


def topk(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Top-k (id, logit) of one logits row, sorted by logit desc, then id asc."""
    idx = np.argpartition(-row, k)[:k]
    # stable tie order: larger logit first, then smaller id
    idx = sorted(idx.tolist(), key=lambda i: (-float(row[i]), i))
    return [(int(i), float(row[i])) for i in idx]


def long_text() -> str:
    """About 700 tokens of varied text with facts stated early and asked about
    late (--long): past a 512-token sliding window, so a model with local
    attention layers (Gemma 3) is checked where the window matters."""
    animals = ["otter", "heron", "badger", "lynx", "marten", "plover", "vole", "ibis"]
    colors = ["amber", "slate", "crimson", "olive", "ivory", "teal", "ochre", "violet"]
    lines = ["Field notes from the northern marsh survey."]
    for i in range(56):
        a, c = animals[i % 8], colors[(i * 3) % 8]
        lines.append(f"Day {i + 1}: the {c} {a} was seen {i % 5 + 2} times near post {17 * i % 41}.")
    lines.append("Question: on day 3, which animal was seen, and what color was it? Answer:")
    return "\n".join(lines)


def add_bos_of(llm) -> bool:
    """The model's own tokenizer.ggml.add_bos_token (false when absent)."""
    return str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"


def prompts_for(llm, long: bool) -> list[tuple[str, str]]:
    """PROMPTS, with "chat" in Gemma's turn format where the vocabulary has
    it, and the long prompt with --long."""
    gemma = len(llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)) == 1
    out = [(n, CHAT_GEMMA if gemma and n == "chat" else t) for n, t in PROMPTS]
    return out + [("long", long_text())] if long else out


def run_prompt(llm, text: str, eos_id: int, alt=None) -> dict:
    """Evaluate one prompt and its greedy continuation on a fresh context."""
    ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos_of(llm), special=True)
    llm.reset()  # n_tokens = 0; eval() drops the KV cache beyond n_tokens
    llm.eval(ids)
    n_vocab = llm.n_vocab()
    # llm.scores is the (n_ctx, n_vocab) float32 array llama_cpp fills from
    # llama_get_logits(); with logits_all=True row i holds the raw logits
    # produced at prompt position i (predicting token i+1).
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32, copy=True)
    assert scores.shape == (len(ids), n_vocab), scores.shape

    prompt_top = []
    prompt_maxabs = []
    for pos in range(len(ids)):
        row = scores[pos]
        prompt_top.append([[i, r(v)] for i, v in topk(row, TOP_K)])
        prompt_maxabs.append(r(np.max(np.abs(row))))

    # Sanity: these must be raw logits, not probabilities.
    last = scores[-1]
    assert not (np.all(last >= 0) and abs(float(last.sum()) - 1.0) < 1e-3), \
        "scores look softmaxed"

    # Greedy continuation: argmax ourselves, eval one token at a time.
    gen, gen_top2, gen_margin, gen_maxabs, gen_lp = [], [], [], [], []
    row = last
    for _ in range(N_GEN):
        (i1, l1), (i2, l2) = topk(row, 2)
        gen.append(i1)
        # llama.cpp's log-softmax of the row (float64): the top 5 log-probabilities
        r64 = row.astype(np.float64)
        lse = float(r64.max() + np.log(np.exp(r64 - r64.max()).sum()))
        gen_lp.append([[i, r(v - lse)] for i, v in topk(row, TOP_K)])
        gen_top2.append([i1, r(l1), i2, r(l2)])
        gen_margin.append(r(l1 - l2))
        gen_maxabs.append(r(np.max(np.abs(row))))
        llm.eval([i1])
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32, copy=True)

    # llama.cpp's own numerical noise: the same prompt evaluated one token at
    # a time instead of in one batch (different kernels / accumulation order).
    # A useful floor for the tolerance of the C comparison.
    llm.reset()
    inc_diff, inc_top1_same = 0.0, True
    for pos, t in enumerate(ids):
        llm.eval([t])
        inc = np.asarray(llm.scores[pos], dtype=np.float32)
        inc_diff = max(inc_diff, float(np.max(np.abs(inc - scores[pos]))))
        inc_top1_same &= int(np.argmax(inc)) == int(np.argmax(scores[pos]))

    # Same prompt under the other KV-cache type (see module docstring).
    alt_diff = None
    if alt is not None:
        alt.reset()
        alt.eval(ids)
        alt_diff = float(np.max(np.abs(np.asarray(alt.scores[: len(ids)]) - scores)))

    first_eos = next((k for k, t in enumerate(gen) if t == eos_id), None)
    all_maxabs = max(prompt_maxabs + gen_maxabs)
    return {
        "text": text,
        "ids": [int(t) for t in ids],
        "n_tokens": len(ids),
        # prompt_top5[pos] = [[id, logit] x5], logits at prompt position pos
        "prompt_top5": prompt_top,
        "prompt_max_abs_logit": prompt_maxabs,
        # gen_ids[k] = argmax of the logits after prompt + gen_ids[:k]
        "gen_ids": gen,
        "gen_text": llm.detokenize(gen, special=True).decode("utf-8", "replace"),
        "gen_first_eos_index": first_eos,
        # gen_top2[k] = [id1, logit1, id2, logit2] of the logits that chose gen_ids[k]
        "gen_top2": gen_top2,
        "gen_margin": gen_margin,
        # gen_top5_logprobs[k] = [[id, log-probability] x5] of the logits that chose gen_ids[k]
        "gen_top5_logprobs": gen_lp,
        "gen_max_abs_logit": gen_maxabs,
        "max_abs_logit": all_maxabs,
        # max |batched - token-by-token| logit over all prompt positions, full vocab
        "incremental_max_abs_diff": r(inc_diff),
        "incremental_top1_same": bool(inc_top1_same),
        # max |logit diff| vs llama.cpp with the other KV-cache type, prompt positions
        "kv_alt_max_abs_diff": None if alt_diff is None else r(alt_diff),
    }


def dump_json(data: dict) -> str:
    """Header pretty-printed; each per-prompt field compact on its own line
    (keeps the file small but diffable)."""
    c = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    out = ['{', '"header":' + json.dumps(data["header"], ensure_ascii=False, indent=1) + ',',
           '"prompts":{']
    names = list(data["prompts"])
    for n, name in enumerate(names):
        fields = data["prompts"][name]
        out.append(c(name) + ':{')
        keys = list(fields)
        for k, key in enumerate(keys):
            out.append(c(key) + ':' + c(fields[key]) + (',' if k + 1 < len(keys) else ''))
        out.append('}' + (',' if n + 1 < len(names) else ''))
    out.append('}}')
    text = "\n".join(out)
    json.loads(text)  # must round-trip
    return text


def make_llm(model: str, kv: str):
    import llama_cpp

    return llama_cpp.Llama(model_path=model, n_ctx=N_CTX, logits_all=True,
                           n_threads=N_THREADS, seed=0, verbose=False,
                           type_k=GGML_TYPE[kv], type_v=GGML_TYPE[kv])


def build(model: str, kv: str, compare: bool = True, long: bool = False) -> tuple[dict, object]:
    import llama_cpp

    llm = make_llm(model, kv)
    alt_kv = "f16" if kv == "f32" else "f32"
    alt = make_llm(model, alt_kv) if compare else None
    eos_id = llm.token_eos()
    prompts = {}
    for name, text in prompts_for(llm, long):
        prompts[name] = run_prompt(llm, text, eos_id, alt)
        p = prompts[name]
        print(f"{name:8s} prompt={p['n_tokens']:3d} tok  first_eos={p['gen_first_eos_index']}"
              f"  min_margin={min(p['gen_margin']):.4f}  inc_diff={p['incremental_max_abs_diff']}"
              f"  kv_alt_diff={p['kv_alt_max_abs_diff']}"
              f"  gen={p['gen_text'][:40]!r}",
              file=sys.stderr)

    del alt
    header = {
        "description": "Reference logits for selfspec tests, produced by llama.cpp",
        "script": "scripts/make_logit_fixtures.py",
        "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "model_file": os.path.relpath(model, REPO) if model.startswith(REPO) else model,
        "model_sha256": sha256_file(model),
        "llama_params": {"n_ctx": N_CTX, "logits_all": True, "n_threads": N_THREADS,
                         "seed": 0, "n_batch": llm.n_batch, "flash_attn": False,
                         "type_k": kv, "type_v": kv},
        "kv_alt": (f"kv_alt_max_abs_diff compares against the same llama.cpp with a "
                   f"{alt_kv.upper()} KV cache (batched prompt eval, all positions, full vocab)"
                   if compare else None),
        "tokenize": f"llm.tokenize(text.encode('utf-8'), add_bos={add_bos_of(llm)}, special=True)",
        "prompt_logits": ("fresh context (llm.reset()), one batched llm.eval(ids); raw "
                          "pre-softmax logits from llm.scores[pos]; top-5 sorted by "
                          "logit desc then id asc"),
        "incremental_check": ("prompt re-evaluated token by token on a fresh context; "
                              "per prompt, incremental_max_abs_diff = max |logit diff| vs "
                              "the batched eval over all positions and the full vocab"),
        "greedy": (f"{N_GEN} tokens; argmax of the last logits row computed in Python "
                   "(ties -> smaller id), fed back with llm.eval([tok]) one token at a "
                   "time; EOS does not stop generation"),
        "n_vocab": llm.n_vocab(),
        "bos_id": llm.token_bos(),
        "eos_id": eos_id,
        "add_bos": add_bos_of(llm),
        "top_k": TOP_K,
        "n_gen": N_GEN,
        "logit_decimals": DECIMALS,
        "max_abs_logit": max(p["max_abs_logit"] for p in prompts.values()),
    }
    return {"header": header, "prompts": prompts}, llm


def N_GEN_SET(n: int) -> None:
    """Set the greedy continuation length (--n-gen)."""
    global N_GEN
    N_GEN = n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL, help="GGUF model path")
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, help="output JSON path")
    ap.add_argument("--kv", choices=sorted(GGML_TYPE), default="f32",
                    help="llama.cpp KV-cache type for the fixture (default: %(default)s; "
                         "see the KV cache note below)")
    ap.add_argument("--n-gen", type=int, default=64,
                    help="greedy continuation length (default: %(default)s; "
                         "tests/fixtures/qwen_logits.json uses 32)")
    ap.add_argument("--long", action="store_true",
                    help="add a ~700-token prompt (past Gemma 3's 512-token sliding window; "
                         "tests/fixtures/gemma_logits.json has it)")
    ap.add_argument("--check", action="store_true",
                    help="build twice and fail if the two runs differ (determinism check)")
    args = ap.parse_args()

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("error: python package llama_cpp missing (pip install llama-cpp-python)",
              file=sys.stderr)
        return 1
    if not os.path.exists(args.model):
        print(f"error: model {args.model} not found (run scripts/setup.sh)", file=sys.stderr)
        return 1

    N_GEN_SET(args.n_gen)
    data, llm = build(args.model, args.kv, long=args.long)
    del llm
    if args.check:
        again, llm = build(args.model, args.kv, compare=False, long=args.long)
        del llm
        strip = lambda d: {n: {k: v for k, v in p.items() if k != "kv_alt_max_abs_diff"}  # noqa: E731
                           for n, p in d["prompts"].items()}
        if json.dumps(strip(again), sort_keys=True) != json.dumps(strip(data), sort_keys=True):
            print("error: two runs gave different results (non-deterministic)", file=sys.stderr)
            return 1
        print("check: two runs identical", file=sys.stderr)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    text = dump_json(data)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.out} ({len(text) / 1024:.1f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
