#!/usr/bin/env python3
"""Benchmark one batch file through `selfspec batch` under several engine
flags and batch sizes, side by side.

    python3 scripts/bench_job.py -i JOB.jsonl [--model GGUF] [--seqs 1,8,32] [--runs 3]
        [--config NAME=FLAGS ...]

Default configurations: "plain" (--mode plain), "own" (--job-index 0: context
drafts from each request's own history only, as before the job's index
existed) and "job" (the defaults: --mode auto with the job's index). For
every repetition, every (max-seqs, configuration) pair runs once, in turn
(interleaved); medians are reported: output tokens/s and total tokens/s
(prompt + output over the batch's wall time, from its JSON summary), the
ratio to plain at the same max-seqs, and the accepted tokens per draft
source. Output lines must be byte-identical across configurations and
batch sizes (compared sorted: lines are written as requests finish); the
script says so and exits 1 when they are not.
Make a job with scripts/make_templated_job.py.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

BIN = os.path.join("bin", "selfspec")


def run(model, inp, seqs, flags, threads, lines=None):
    """One batch run: its JSON summary and the digest of its output lines
    (sorted: lines are written as requests finish); lines (a list), when
    given, receives them."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.jsonl")
        p = subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", out, "--max-seqs", str(seqs),
                            "-t", str(threads)] + flags, capture_output=True, timeout=7200)
        if p.returncode != 0:
            raise RuntimeError(p.stderr.decode(errors="replace")[-500:])
        summary = json.loads(p.stderr.decode().strip().split("\n")[-1])
        got = sorted(open(out, "rb").read().split(b"\n")[:-1])
        if lines is not None:
            lines.extend(got)
    return summary, hashlib.sha256(b"\n".join(got)).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-i", "--input", required=True)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--seqs", default="1,8,32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--config", action="append", default=[], help="NAME=FLAGS; repeatable")
    a = ap.parse_args()
    configs = [c.split("=", 1) for c in a.config] or [["plain", "--mode plain"], ["own", "--job-index 0"],
                                                      ["job", ""]]
    seqs = [int(s) for s in a.seqs.split(",")]
    res, digests = {}, set()
    for r in range(a.runs):
        for b in seqs:
            for name, flags in configs:
                s, dg = run(a.model, a.input, b, flags.split(), a.threads)
                digests.add(dg)
                res.setdefault((b, name), []).append(s)
                print(f"run {r + 1}/{a.runs} max-seqs {b:<3} {name:<6} {s['output_tokens_per_s']:8.2f} out tok/s "
                      f"{s['seconds']:7.1f} s  sources {json.dumps(s.get('sources', {}))}", flush=True)
    n_req = res[(seqs[0], configs[0][0])][0]["requests"]
    print(f"\n{a.input}: {n_req} requests, {a.model}, {a.threads} threads, medians of {a.runs} interleaved runs")
    print(f"{'max-seqs':>8} {'config':<8} {'out tok/s':>10} {'total tok/s':>12} {'x plain':>8}  accepted by source")
    for b in seqs:
        base = None
        for name, _ in configs:
            runs = res[(b, name)]
            out = statistics.median(s["output_tokens_per_s"] for s in runs)
            tot = statistics.median((s["prompt_tokens"] + s["output_tokens"]) / s["seconds"] for s in runs)
            if base is None:
                base = out
            acc = {k: v["accepted"] for k, v in runs[len(runs) // 2].get("sources", {}).items()}
            print(f"{b:>8} {name:<8} {out:10.2f} {tot:12.2f} {out / base:8.2f}  {acc}")
    same = len(digests) == 1
    print("exactness: " + ("every run wrote the same bytes" if same else f"OUTPUTS DIFFER ({len(digests)} digests)"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
