#!/usr/bin/env python3
"""bench_models.py - plain decoding and prefill, selfspec against llama.cpp's
own `llama-bench` (built natively: scripts/build_llama_cpp.sh), on every model
present, side by side.

Per model and run, interleaved (selfspec, llama-bench, selfspec, ...):
  selfspec:    bin/selfspec generate -m MODEL --mode plain -f PROMPT -n 128
               --ignore-eos --stats --threads T   (a ~256-token prompt;
               its own prefill and decode tokens/s from the stats line)
  llama-bench: llama-bench -m MODEL -t T -p 256 -n 128 -r 1 -o json
               (pp256 and tg128 tokens/s)
Medians over the runs, the ratios selfspec / llama.cpp, and selfspec's share
of its bandwidth bound: weight bytes streamed per decoded token (the
arena_bytes_per_token field of the stats line) x decode tokens/s, against the
machine's read bandwidth measured by scripts/bench_plain.py's C probe.

Usage:
    python3 scripts/bench_models.py [--runs 5] [--threads 2] [--models smollm2,qwen,gemma3]
Output: a table on stdout and build/bench_models.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "smollm2": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen": "models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
    "gemma3": "models/gemma-3-270m-q4_k_m.gguf",
}
LLAMA_BENCH = ".deps/llama.cpp/build/bin/llama-bench"
PROMPT = ("The history of computing is a story of abstraction. " * 4 +
          "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n"
          "    pivot = xs[0]\n    return quicksort([x for x in xs[1:] if x < pivot]) + [pivot] + "
          "quicksort([x for x in xs[1:] if x >= pivot])\n") * 3


def selfspec_run(binary, model, prompt_file, threads, n_gen):
    cmd = [binary, "generate", "-m", model, "--mode", "plain", "-f", prompt_file, "-n", str(n_gen),
           "--ignore-eos", "--stats", "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise RuntimeError("selfspec failed: %s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    for line in reversed(p.stderr.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no stats line from selfspec")


def llama_bench_run(exe, model, threads, n_gen):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.path.dirname(exe) + ":" + env.get("LD_LIBRARY_PATH", "")
    cmd = [exe, "-m", model, "-t", str(threads), "-p", "256", "-n", str(n_gen), "-r", "1", "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    if p.returncode != 0:
        raise RuntimeError("llama-bench failed: %s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    rows = json.loads(p.stdout)
    out = {}
    for r in rows:
        if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
            out["prefill"] = r["avg_ts"]
        elif r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
            out["decode"] = r["avg_ts"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,qwen")
    ap.add_argument("--selfspec", default="bin/selfspec")
    ap.add_argument("--llama-bench", default=LLAMA_BENCH)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--out", default="build/bench_models.json")
    args = ap.parse_args()
    os.chdir(REPO)
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from bench_plain import bandwidth_c   # the same C probe as bench_plain.py
    os.makedirs("build", exist_ok=True)
    prompt_file = "build/bench_models_prompt.txt"
    with open(prompt_file, "w") as f:
        f.write(PROMPT)
    have_llama = os.path.exists(args.llama_bench)
    if not have_llama:
        print("note: %s not found (scripts/build_llama_cpp.sh builds it): selfspec only" % args.llama_bench)
    bw = bandwidth_c(1024, args.threads, 5, "build")
    results = {"threads": args.threads, "runs": args.runs, "bandwidth_gbs": bw, "models": {}}
    for name in args.models.split(","):
        model = MODELS.get(name, name)
        if not os.path.exists(model):
            print("note: %s absent, skipped (make setup MODELS=\"smollm2 qwen\")" % model)
            continue
        ss, lb = [], []
        for r in range(args.runs):
            ss.append(selfspec_run(args.selfspec, model, prompt_file, args.threads, args.n))
            if have_llama:
                lb.append(llama_bench_run(args.llama_bench, model, args.threads, args.n))
            print("  %s run %d: selfspec prefill %.1f decode %.2f%s" % (
                name, r + 1, ss[-1]["prefill_tokens_per_s"], ss[-1]["decode_tokens_per_s"],
                "; llama-bench pp %.1f tg %.2f" % (lb[-1]["prefill"], lb[-1]["decode"]) if lb else ""),
                file=sys.stderr)
        med = lambda xs: statistics.median(xs)   # noqa: E731
        m = {"selfspec_prefill": med([s["prefill_tokens_per_s"] for s in ss]),
             "selfspec_decode": med([s["decode_tokens_per_s"] for s in ss]),
             "prompt_tokens": ss[0]["prompt_tokens"]}
        bpt = ss[0].get("arena_bytes_per_token")
        if bpt:
            m["arena_bytes_per_token"] = bpt
            m["bandwidth_bound_tok_s"] = bw * 1e9 / bpt if bw else None
            m["share_of_bound"] = m["selfspec_decode"] * bpt / (bw * 1e9) if bw else None
        if lb:
            m["llama_prefill"] = med([x["prefill"] for x in lb])
            m["llama_decode"] = med([x["decode"] for x in lb])
            m["prefill_ratio"] = m["selfspec_prefill"] / m["llama_prefill"]
            m["decode_ratio"] = m["selfspec_decode"] / m["llama_decode"]
        results["models"][name] = m
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("threads %d, median of %d interleaved runs, read bandwidth %s GB/s" % (
        args.threads, args.runs, "%.1f" % bw if bw else "?"))
    print("%-8s %12s %12s %7s %12s %12s %7s %10s" % ("model", "ss prefill", "llama pp256", "ratio",
                                                      "ss decode", "llama tg128", "ratio", "of bound"))
    for name, m in results["models"].items():
        f = lambda k, s="%.1f": s % m[k] if m.get(k) is not None else "-"   # noqa: E731
        print("%-8s %12s %12s %7s %12s %12s %7s %10s" % (
            name, f("selfspec_prefill"), f("llama_prefill"), f("prefill_ratio", "%.2fx"),
            f("selfspec_decode", "%.2f"), f("llama_decode", "%.2f"), f("decode_ratio", "%.2fx"),
            f("share_of_bound", "%.0f%%") if m.get("share_of_bound") is None else
            "%.0f%%" % (100 * m["share_of_bound"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
