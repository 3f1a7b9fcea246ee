#!/usr/bin/env python3
"""Benchmark `selfspec serve` under different engine flags, side by side.

    python3 scripts/bench_serve.py [--model GGUF] [--prompts JSONL] [--limit N]
        [-n TOKENS] [--runs R] [--concurrency C] [--config NAME=FLAGS ...]

Starts one server per configuration (default: "auto" = the defaults, "layers"
= --draft layers, how serve set speculation up before every command shared
one set-up, and "plain" = --mode plain), sends the prompts as greedy chat
requests through the OpenAI API (C at a time), and measures whole work:
completion tokens over wall time from the first request to the last answer.
Configurations are interleaved run by run; medians are printed, with each
one's ratio to plain, the context-draft counters from /metrics, and whether
every configuration returned the same texts (it must: output is exact).
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

BIN = os.path.join("bin", "selfspec")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def request(port, path, body=None, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if body is None:
        c.request("GET", path)
    else:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def start(model, flags, threads):
    port = free_port()
    p = subprocess.Popen([BIN, "serve", "-m", model, "--port", str(port), "-t", str(threads), "-q"] + flags,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if request(port, "/health", timeout=2)[0] == 200:
                return p, port
        except OSError:
            pass
        if p.poll() is not None:
            break
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"serve {' '.join(flags)} did not start")


def one(port, prompt, n):
    body = {"model": "selfspec", "messages": [{"role": "user", "content": prompt}], "max_tokens": n,
            "temperature": 0}
    st, data = request(port, "/v1/chat/completions", body)
    if st != 200:
        raise RuntimeError(f"HTTP {st}: {data[:200]!r}")
    r = json.loads(data)
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]


def context_accepted(port):
    _, data = request(port, "/metrics")
    for line in data.decode().splitlines():
        if line.startswith("selfspec:spec_decode_num_accepted_tokens_by_source_total{") and 'source="context"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def run(model, flags, prompts, n, threads, conc):
    p, port = start(model, flags, threads)
    try:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(conc) as ex:
            outs = list(ex.map(lambda q: one(port, q, n), prompts))
        wall = time.time() - t0
        ctx = context_accepted(port)
    finally:
        p.terminate()
        p.wait(timeout=60)
    return [o[0] for o in outs], sum(o[1] for o in outs), wall, ctx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf")
    ap.add_argument("--prompts", default="configs/prompts/code_heldout.jsonl")
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--config", action="append", default=[],
                    help="NAME=FLAGS (space-separated serve flags); repeatable")
    a = ap.parse_args()
    prompts = [json.loads(l)["prompt"] for l in open(a.prompts) if l.strip()][:a.limit]
    configs = [c.split("=", 1) for c in a.config] or [["auto", ""], ["layers", "--draft layers"],
                                                      ["plain", "--mode plain"]]
    res = {name: [] for name, _ in configs}
    texts = {}
    for r in range(a.runs):
        for name, flags in configs:
            out, toks, wall, ctx = run(a.model, flags.split(), prompts, a.n, a.threads, a.concurrency)
            res[name].append((toks / wall, ctx))
            texts.setdefault(name, out)
            print(f"run {r + 1}/{a.runs} {name:<8} {toks / wall:7.2f} tok/s  ({toks} tokens, {wall:.1f} s, "
                  f"context tokens accepted {ctx})", flush=True)
    base = statistics.median(t for t, _ in res["plain"]) if "plain" in res else None
    print(f"\n{len(prompts)} prompts ({a.prompts}) x {a.n} tokens, greedy chat, concurrency {a.concurrency}, "
          f"{a.threads} threads, medians of {a.runs} interleaved runs")
    for name, _ in configs:
        med = statistics.median(t for t, _ in res[name])
        ratio = f"{med / base:.2f}x plain" if base else ""
        ctx = statistics.median(c for _, c in res[name])
        print(f"  {name:<8} {med:7.2f} tok/s  {ratio}  context tokens accepted {ctx:.0f} (median)")
    same = all(texts[n] == texts[configs[0][0]] for n, _ in configs)
    print("exactness: " + ("every configuration returned the same texts" if same else "TEXTS DIFFER"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
