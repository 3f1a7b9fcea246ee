#!/usr/bin/env python3
"""Pipeline benchmark: single-process self-spec vs the two-process pipeline,
sequential and overlapped, side by side in one run.

Configurations (all greedy, same prompt, same skip set, same -t):
  plain          bin/selfspec generate --mode plain               (reference)
  self-spec      --mode self-spec                                 (one process)
  pipe-seq       --mode pipeline --pipeline-sequential            (two processes, draft then verify)
  pipe-overlap   --mode pipeline                                  (drafter threads = -t)
                 default policy: speculate past a block only when it ended confident
  pipe-overlap-always  the same with SELFSPEC_PIPELINE_SPECULATE=always: speculate
                 after every block (block n+1 drafted while block n is verified)
  pipe-overlap-always-d1  ... with --drafter-threads 1

Runs are interleaved (each round runs every configuration once) so all see
the same machine noise; the figures are medians of the decode tokens/s that
bin/selfspec reports in --stats (model load and prefill not counted), with
ratios to self-spec. Every run's ids are compared with plain's: a mismatch
is reported (it would be a bug).

Several sequences: pipe-Nseqs decodes the prompt as N sequences at once
(--pipeline-seqs N) and reports the aggregate decode tokens/s of all N; the
drafter drafts one sequence while the verifier verifies another (no
speculation). The single-process modes have no batching, so their aggregate
over N sequences equals their one-sequence figure.

OpenMP wait policy: libgomp's default (spin ~300k iterations before
sleeping) is best for one process; with two processes' teams on two cores an
idle spinning team starves the busy one. Each configuration is run with the
policy named in its row (see `configs` below); --passive forces PASSIVE for all.

Usage:
    python3 scripts/bench_pipeline.py                  # 5 rounds, 128 tokens
    python3 scripts/bench_pipeline.py --runs 7 -n 192 --skip configs/x.json
Results: a table (markdown) on stdout, JSON in build/bench_pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "selfspec")
DEFAULT_PROMPTS = [
    "Write a long story about a dragon and a knight.",
    "Explain in detail how a steam engine works.",
    "Count from 1 to 200, separated by commas: 1, 2, 3, 4, 5, 6,",
]
TEST_SKIP = {"model": {"name": "bench", "n_layers": 30, "dim": 576, "vocab_size": 49152},
             "attn_skip": [8, 10, 12, 14, 16, 18, 20, 22, 24, 26], "mlp_skip": [11, 17, 23]}


def run(args: list[str], passive: bool, extra_env: dict) -> tuple[str, dict]:
    env = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(k, None)
    env.update(extra_env)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    p = subprocess.run([BIN, "generate"] + args, capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("selfspec failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    st = None
    for line in p.stderr.splitlines():
        if line.startswith("{"):
            st = json.loads(line)
    return p.stdout.strip(), st


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--skip", help="skip-set config (default: the built-in hand-made test set, acceptance ~0.6 on SmolLM2)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE for every configuration")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--prompt", action="append", help="prompt (repeatable)")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print("model %s not found" % args.model)
        return 1
    skip = args.skip
    if not skip:
        os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
        skip = os.path.join(ROOT, "build", "bench_pipeline_skip.json")
        with open(skip, "w") as f:
            json.dump(TEST_SKIP, f)
    prompts = args.prompt or DEFAULT_PROMPTS
    t = str(args.threads)
    # each configuration with the OpenMP wait policy that suits it (measured):
    # one process computing at a time: libgomp's default spinning (one
    # process) or a short spin (two processes taking turns, so the idle
    # team sleeps soon); two processes computing at once: passive.
    short = {"GOMP_SPINCOUNT": "3000"}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    always = {"SELFSPEC_PIPELINE_SPECULATE": "always"}
    configs = {
        "plain": (["--mode", "plain"], {}),
        "self-spec": (["--mode", "self-spec"], {}),
        "self-spec (short spin)": (["--mode", "self-spec"], short),
        "pipe-seq": (["--mode", "pipeline", "--pipeline-sequential"], short),
        "pipe-overlap": (["--mode", "pipeline"], short),
        "pipe-overlap-always": (["--mode", "pipeline"], dict(short, **always)),
        "pipe-overlap-always (passive)": (["--mode", "pipeline"], dict(passive, **always)),
        "pipe-overlap-always-d1": (["--mode", "pipeline", "--drafter-threads", "1"], dict(short, **always)),
        "pipe-2seqs (passive)": (["--mode", "pipeline", "--pipeline-seqs", "2"], passive),
        "pipe-4seqs (passive)": (["--mode", "pipeline", "--pipeline-seqs", "4"], passive),
        "pipe-2seqs (short spin)": (["--mode", "pipeline", "--pipeline-seqs", "2"], short),
    }
    res: dict = {c: {"tps": [], "acc": [], "adopted": [], "missed": [], "wait": [], "verify": [], "by_prompt": {}}
                 for c in configs}
    mismatches = []
    for r in range(args.runs):
        for pi, prompt in enumerate(prompts):
            base = ["-m", args.model, "--skip", skip, "-p", prompt, "-n", str(args.n), "--ignore-eos",
                    "--ids", "--stats", "-t", t] + (["--chat"] if args.chat else [])
            ref = None
            for name, (extra, extra_env) in configs.items():
                out, st = run(base + extra, args.passive, extra_env)
                if ref is None:
                    ref = out
                elif out != ref:
                    mismatches.append((r, pi, name))
                d = res[name]
                d["tps"].append(st["decode_tokens_per_s"])
                d["by_prompt"].setdefault(pi, []).append(st["decode_tokens_per_s"])
                if "acceptance_rate" in st:
                    d["acc"].append(st["acceptance_rate"])
                    d["verify"].append(st["verify_seconds"])
                pl = st.get("pipeline")
                if pl:
                    d["adopted"].append(pl["spec_adopted"])
                    d["missed"].append(pl["spec_missed"])
                    d["wait"].append(pl["wait_seconds"])
            print("round %d prompt %d: %s" % (r + 1, pi, "  ".join("%s %.1f" % (c, res[c]["tps"][-1]) for c in configs)),
                  file=sys.stderr, flush=True)
    ss = statistics.median(res["self-spec"]["tps"])
    print("\n| configuration | decode tok/s (median, all) | vs self-spec | %s | acceptance | spec blocks adopted / missed |"
          % " | ".join("prompt %d" % i for i in range(len(prompts))))
    print("|---|---|---|%s---|---|" % ("---|" * len(prompts)))
    for c in configs:
        d = res[c]
        med = statistics.median(d["tps"])
        acc = "%.2f" % statistics.median(d["acc"]) if d["acc"] else "-"
        sp = "%d / %d" % (sum(d["adopted"]), sum(d["missed"])) if d["adopted"] else "-"
        per = " | ".join("%.1f (%.2fx)" % (statistics.median(d["by_prompt"][i]),
                                            statistics.median(d["by_prompt"][i]) /
                                            statistics.median(res["self-spec"]["by_prompt"][i]))
                         for i in range(len(prompts)))
        print("| %s | %.1f | %.2fx | %s | %s | %s |" % (c, med, med / ss, per, acc, sp))
    for i, p in enumerate(prompts):
        print("prompt %d: %r" % (i, p))
    print("\n%d runs x %d prompts, -n %d, -t %s, skip set %s%s; output identical to plain in every run: %s"
          % (args.runs, len(prompts), args.n, t, os.path.relpath(skip, ROOT), ", all PASSIVE" if args.passive else "",
             "yes" if not mismatches else "NO %s" % mismatches))
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "bench_pipeline.json"), "w") as f:
        json.dump({"args": vars(args), "skip": skip, "results": res, "mismatches": mismatches}, f, indent=1)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
