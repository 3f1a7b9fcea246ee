#!/usr/bin/env python3
"""What response_format costs and what its forced-token drafts gain, on a
templated extraction job of our own, side by side.

    python3 scripts/bench_schema.py [--model GGUF] [--kind extract] [-n 48] [--seqs 1,32] [--runs 3]

Two files of the same requests (scripts/make_templated_job.py): without
response_format, and with the kind's JSON schema. Per repetition, every
(max-seqs, configuration) runs once, in turn (interleaved); medians:
  free/plain      no schema, --mode plain (the baseline)
  schema/plain    the schema, --mode plain: what constraining costs
  schema/noforced the schema, --mode auto --forced-drafts off: speculation
                  as for unconstrained requests, drafts trimmed to the schema
  schema/auto     the schema, the defaults (forced text as free drafts)
Reported: output tokens/s, total tokens/s (prompt + output over wall time),
the ratio to schema/plain, and the share of output tokens that were
accepted forced-text drafts (source "grammar"). The three schema runs must
write the same bytes (checked; exit 1 otherwise); so must free/plain with
itself.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_job  # noqa: E402 - the shared batch runner


def run(model, inp, seqs, flags, threads):
    """bench_job's run, and how many answers parse as JSON."""
    lines = []
    summary, digest = bench_job.run(model, inp, seqs, flags, threads, lines)
    valid = 0
    for l in lines:
        try:
            json.loads(json.loads(l)["response"]["body"]["choices"][0]["message"]["content"])
            valid += 1
        except (ValueError, TypeError, KeyError):
            pass
    return summary, digest, valid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--kind", default="extract", choices=["extract", "label"])
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--seqs", default="1,32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    files = {}
    for rf in ["none", "schema"]:
        files[rf] = os.path.join(tmp, f"{rf}.jsonl")
        subprocess.run([sys.executable, "scripts/make_templated_job.py", "--kind", a.kind, "-n", str(a.n),
                        "--response-format", rf, "-o", files[rf]], check=True)
    configs = [("free/plain", "none", "--mode plain"), ("schema/plain", "schema", "--mode plain"),
               ("schema/noforced", "schema", "--forced-drafts off"), ("schema/auto", "schema", "")]
    seqs = [int(s) for s in a.seqs.split(",")]
    res, digests, valid = {}, {}, {}
    for r in range(a.runs):
        for b in seqs:
            for name, f, flags in configs:
                s, dg, v = run(a.model, files[f], b, flags.split(), a.threads)
                digests.setdefault(f, set()).add(dg)
                valid[name] = v
                res.setdefault((b, name), []).append(s)
                print(f"run {r + 1}/{a.runs} max-seqs {b:<3} {name:<16} {s['output_tokens_per_s']:8.2f} out tok/s "
                      f"{s['seconds']:7.2f} s  sources {json.dumps(s.get('sources', {}))}", flush=True)
    print(f"\n{a.kind} job: {a.n} requests, {a.model}, {a.threads} threads, medians of {a.runs} interleaved runs")
    print(f"{'max-seqs':>8} {'config':<16} {'out tok/s':>10} {'total tok/s':>12} {'x schema/plain':>15} "
          f"{'out tokens':>10} {'forced accepted':>16} {'valid JSON':>10}")
    for b in seqs:
        base = statistics.median(s["output_tokens_per_s"] for s in res[(b, "schema/plain")])
        for name, _, _ in configs:
            runs = res[(b, name)]
            out = statistics.median(s["output_tokens_per_s"] for s in runs)
            tot = statistics.median((s["prompt_tokens"] + s["output_tokens"]) / s["seconds"] for s in runs)
            mid = runs[len(runs) // 2]
            g = mid.get("sources", {}).get("grammar", {}).get("accepted", 0)
            print(f"{b:>8} {name:<16} {out:10.2f} {tot:12.2f} {out / base:15.2f} {mid['output_tokens']:>10} "
                  f"{g / max(1, mid['output_tokens']):>15.1%} {valid[name]:>7}/{a.n}")
    same = all(len(d) == 1 for d in digests.values())
    print("exactness: " + ("the schema runs wrote the same bytes in every configuration and batch size" if same
                           else f"OUTPUTS DIFFER: {[len(d) for d in digests.values()]}"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
