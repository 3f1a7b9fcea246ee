#!/usr/bin/env python3
"""bench_queue.py - what the queue and the server cost next to `selfspec batch`.

    python3 scripts/bench_queue.py [--model M] [--jobs 200] [--max-tokens 64]
                                   [--clients 1,8,32] [--requests 64] [--json OUT]

Queue (one redis-server of its own on a free port, appendonly off):
  1. `selfspec batch` on a file of --jobs requests (2 threads);
  2. 1 worker with 2 threads (`selfspec worker -t 2`) on the same requests;
  3. 2 workers of 1 thread each (`selfspec worker --devices cpu:0,cpu:1`);
jobs/s and output tokens/s each, the worker figures measured from the first
XADD to the last result (model loading included, as a queue user sees it),
and the queue's cost against batch (the issue's floor: <= 5%).

Server (`selfspec serve`, 2 threads): --requests completions at each
concurrency in --clients, requests/s and latency p50/p90/p99.

Run it on an idle machine: it takes minutes at the defaults. A smoke run:
    python3 scripts/bench_queue.py --jobs 8 --max-tokens 8 --clients 1,2 --requests 4
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.join("bin", "selfspec")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_jobs(n, max_tokens):
    topics = ["the ocean", "bread", "the moon", "trains", "winter", "a violin", "rivers", "chess"]
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        if i % 2:
            body = {"prompt": f"Here are some facts about {t}:", "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True}
            url = "/v1/completions"
        else:
            body = {"messages": [{"role": "user", "content": f"Tell me about {t}."}], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            url = "/v1/chat/completions"
        out.append({"custom_id": f"b-{i}", "method": "POST", "url": url, "body": body})
    return out


def output_tokens(lines):
    return sum(json.loads(ln)["response"]["body"]["usage"]["completion_tokens"] for ln in lines)


def bench_batch(model, inp, tmp):
    out = os.path.join(tmp, "batch.out")
    t0 = time.time()
    subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", out, "-q", "-t", "2"], check=True)
    secs = time.time() - t0
    with open(out) as f:
        lines = f.readlines()
    return {"seconds": secs, "jobs": len(lines), "output_tokens": output_tokens(lines)}


def bench_worker(model, jobs, port, stream, extra):
    import redis
    r = redis.Redis(port=port)
    r.delete(stream, f"{stream}:results", f"{stream}:done", f"{stream}:dead")
    w = subprocess.Popen([BIN, "worker", "-m", model, "--redis", f"redis://127.0.0.1:{port}", "--stream", stream,
                          "--group", "g", "-q"] + extra, stdout=subprocess.DEVNULL)
    try:
        t0 = time.time()
        pipe = r.pipeline(transaction=False)
        for j in jobs:
            pipe.xadd(stream, {"request": json.dumps(j)})
        pipe.execute()
        while r.xlen(f"{stream}:results") < len(jobs):
            if w.poll() is not None:
                raise RuntimeError(f"worker exited with {w.returncode}")
            time.sleep(0.05)
        secs = time.time() - t0
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=120)
    lines = [f[b"result"].decode() for _, f in r.xrange(f"{stream}:results")]
    return {"seconds": secs, "jobs": len(lines), "output_tokens": output_tokens(lines)}


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return 0.0
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def bench_server(model, clients, n_requests, max_tokens):
    port = free_port()
    srv = subprocess.Popen([BIN, "serve", "-m", model, "--port", str(port), "-t", "2", "-q",
                            "--max-seqs", str(max(clients)), "--queue", str(max(clients))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"prompt": "Here are some facts about the moon:", "max_tokens": max_tokens,
                           "temperature": 0, "ignore_eos": True})
        for n in clients:
            lat, lock, todo = [], threading.Lock(), [n_requests]

            def client():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                while True:
                    with lock:
                        if todo[0] == 0:
                            break
                        todo[0] -= 1
                    t = time.time()
                    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    with lock:
                        lat.append((time.time() - t, resp.status))
                conn.close()
            t0 = time.time()
            th = [threading.Thread(target=client) for _ in range(n)]
            for t in th:
                t.start()
            for t in th:
                t.join()
            secs = time.time() - t0
            ok = [x for x, st in lat if st == 200]
            rows.append({"clients": n, "requests": len(lat), "ok": len(ok), "seconds": secs,
                         "requests_per_s": len(ok) / secs if secs > 0 else 0.0,
                         "p50_s": pct(ok, 50), "p90_s": pct(ok, 90), "p99_s": pct(ok, 99)})
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=120)
        except subprocess.TimeoutExpired:
            srv.kill()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="server requests per concurrency level")
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    clients = [int(x) for x in a.clients.split(",")]
    jobs = make_jobs(a.jobs, a.max_tokens)
    res = {"jobs": a.jobs, "max_tokens": a.max_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "jobs.jsonl")
        with open(inp, "w") as f:
            for j in jobs:
                f.write(json.dumps(j) + "\n")
        port = free_port()
        rs = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            res["batch"] = bench_batch(a.model, inp, tmp)
            res["worker_1x2"] = bench_worker(a.model, jobs, port, "bq1", ["-t", "2"])
            res["worker_devices_2x1"] = bench_worker(a.model, jobs, port, "bq2", ["--devices", "cpu:0,cpu:1"])
        finally:
            rs.send_signal(signal.SIGTERM)
            rs.wait(timeout=30)
    for k in ("batch", "worker_1x2", "worker_devices_2x1"):
        r = res[k]
        r["jobs_per_s"] = r["jobs"] / r["seconds"]
        r["output_tokens_per_s"] = r["output_tokens"] / r["seconds"]
    for k in ("worker_1x2", "worker_devices_2x1"):
        res[k]["cost_vs_batch"] = 1.0 - res[k]["output_tokens_per_s"] / res["batch"]["output_tokens_per_s"]
    res["server"] = bench_server(a.model, clients, a.requests, a.max_tokens)
    print(f"{'run':<22} {'jobs':>5} {'seconds':>8} {'jobs/s':>8} {'out tok/s':>10} {'cost vs batch':>14}")
    for k in ("batch", "worker_1x2", "worker_devices_2x1"):
        r = res[k]
        cost = f"{100 * r['cost_vs_batch']:.1f}%" if "cost_vs_batch" in r else "-"
        print(f"{k:<22} {r['jobs']:>5} {r['seconds']:>8.2f} {r['jobs_per_s']:>8.2f} {r['output_tokens_per_s']:>10.1f}"
              f" {cost:>14}")
    print(f"\n{'clients':>7} {'ok':>5} {'req/s':>8} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8}")
    for r in res["server"]:
        print(f"{r['clients']:>7} {r['ok']:>5} {r['requests_per_s']:>8.2f} {r['p50_s']:>8.3f} {r['p90_s']:>8.3f}"
              f" {r['p99_s']:>8.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
