#!/usr/bin/env python3
"""Benchmark self-speculative decoding against plain decoding, side by side.

For every prompt of a prompt set (default: the held-out set, which the skip-set
search never sees), every mode runs back to back (interleaved, so machine noise
hits all modes alike), greedy, N new tokens, end-of-sequence ignored. Each mode's
tokens/s is total generated tokens / total decode seconds over the prompt set;
the script repeats that --runs times and reports medians, and the median of the
per-run ratios to plain. It also checks that every mode's token ids equal plain
decoding's (self-spec must be exact).

Modes: plain; self-spec with the model's shipped config; the same without the
pruned draft head (--draft-head 0); plus any --config NAME=FILE given; with
--sources also the draft sources: context drafts alone (--draft context),
chained context + layer drafts (--draft chain) and the per-step choice
(--draft auto, generate's default). A model without a shipped config (Qwen
before its search) runs plain, context and auto with --no-default --sources.

    python3 scripts/bench_selfspec.py                       # defaults
    python3 scripts/bench_selfspec.py --runs 5 -n 128 --config uniform=configs/extra/every_other_mlp.json

Writes build/bench_selfspec.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def load_prompts(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line)["prompt"])
    return out


def run_one(binary, model, prompt, n, extra, threads):
    args = [binary, "generate", "-m", model, "--chat", "-p", prompt, "-n", str(n), "--ids", "--stats",
            "--ignore-eos", "-t", str(threads)] + extra
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{p.stderr[-2000:]}")
    stats = json.loads([l for l in p.stderr.splitlines() if l.startswith("{")][-1])
    return p.stdout.split(), stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--binary", default="bin/selfspec")
    ap.add_argument("--prompts", default="configs/prompts/heldout.jsonl")
    ap.add_argument("-n", type=int, default=128, help="new tokens per prompt (default 128)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=FILE",
                    help="extra self-spec configuration to compare (repeatable)")
    ap.add_argument("--no-default", action="store_true", help="skip the shipped-config modes")
    ap.add_argument("--sources", action="store_true",
                    help="also --draft context, chain (with a config) and auto")
    ap.add_argument("--modes", default="", help="comma-separated mode names to keep (plain always runs)")
    ap.add_argument("--out", default="build/bench_selfspec.json")
    a = ap.parse_args()
    if not os.path.exists(a.binary):
        sys.exit(f"{a.binary} missing: run make first")
    prompts = load_prompts(a.prompts)
    if a.limit:
        prompts = prompts[:a.limit]
    # skip-set modes draft with the layer-skipping draft alone (--draft layers):
    # generate's default source choice (auto) would mix in context drafts
    modes = [("plain", ["--mode", "plain"])]
    if not a.no_default:
        modes += [("self-spec", ["--mode", "self-spec", "--draft", "layers"]),
                  ("self-spec, full head", ["--mode", "self-spec", "--draft", "layers", "--draft-head", "0"])]
    for c in a.config:
        name, path = c.split("=", 1)
        modes.append((name, ["--mode", "self-spec", "--draft", "layers", "--skip", path]))
    if a.sources:
        modes.append(("context drafts", ["--mode", "self-spec", "--draft", "context"]))
        if not a.no_default:
            modes.append(("chained context+layers", ["--mode", "self-spec", "--draft", "chain"]))
        modes.append(("auto", ["--draft", "auto"]))
    if a.modes:
        keep = set(a.modes.split(","))
        modes = [m for m in modes if m[0] in keep or m[0] == "plain"]
    runs = []
    mismatches = []
    for r in range(a.runs):
        tot = {m: [0.0, 0.0, 0, 0, 0] for m, _ in modes}   # tokens, seconds, drafted, accepted, verifications
        for i, p in enumerate(prompts):
            ref = None
            for name, extra in modes:
                ids, st = run_one(a.binary, a.model, p, a.n, extra, a.threads)
                if ref is None:
                    ref = ids
                elif ids != ref:
                    mismatches.append((name, i))
                t = tot[name]
                t[0] += st["generated_tokens"] - 1
                t[1] += st["decode_seconds"]
                t[2] += st.get("drafted", 0)
                t[3] += st.get("accepted", 0)
                t[4] += st.get("verifications", 0)
            print(f"\rrun {r + 1}/{a.runs}: prompt {i + 1}/{len(prompts)}", end="", file=sys.stderr, flush=True)
        runs.append({m: {"tokens_per_s": t[0] / t[1], "drafted": t[2], "accepted": t[3], "verifications": t[4]}
                     for m, t in tot.items()})
    print(file=sys.stderr)
    summary = {}
    for name, _ in modes:
        tps = [run[name]["tokens_per_s"] for run in runs]
        ratio = [run[name]["tokens_per_s"] / run["plain"]["tokens_per_s"] for run in runs]
        last = runs[-1][name]
        summary[name] = {
            "tokens_per_s_median": statistics.median(tps),
            "ratio_to_plain_median": statistics.median(ratio),
            "tokens_per_s_runs": tps,
            "acceptance_rate": last["accepted"] / last["drafted"] if last["drafted"] else None,
            "mean_accepted_per_verification": last["accepted"] / last["verifications"] if last["verifications"] else None,
        }
    print(f"\n{len(prompts)} prompts x {a.n} new tokens, greedy, {a.threads} threads, {a.runs} runs (medians)")
    print(f"{'mode':<28} {'tok/s':>8} {'x plain':>8} {'accept':>8} {'acc/verify':>10}")
    for name, s in summary.items():
        acc = f"{s['acceptance_rate']:.3f}" if s["acceptance_rate"] is not None else "-"
        mal = f"{s['mean_accepted_per_verification']:.2f}" if s["mean_accepted_per_verification"] is not None else "-"
        print(f"{name:<28} {s['tokens_per_s_median']:>8.1f} {s['ratio_to_plain_median']:>8.2f} {acc:>8} {mal:>10}")
    print("exactness: " + ("all modes produced plain decoding's tokens" if not mismatches
                           else f"MISMATCH in {len(mismatches)} runs: {mismatches[:5]}"))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"prompts": a.prompts, "n_prompts": len(prompts), "new_tokens": a.n, "runs": a.runs,
                   "threads": a.threads, "summary": summary, "mismatches": mismatches}, f, indent=1)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
