#!/usr/bin/env python3
"""End-to-end tests of `selfspec worker` (Redis Streams) on the real model.

Run from the repository root (make test does):
    python3 tests/test_worker.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--jobs 200]

Starts its own redis-server on a free port (append-only file, fsync always,
in a temporary folder) and stops it at the end.

  - N jobs (default 200: chat and completion, greedy and seeded sampling,
    4-12 tokens) submitted by scripts/selfspec_queue.py, 3 workers; two of
    them are SIGKILLed at random moments and restarted, and redis-server is
    restarted in the middle of the run: every custom_id has exactly one
    result, each byte-identical to `selfspec batch`'s line for the same file;
    nothing is left pending; the collected output file is in input order;
  - poison entries (not JSON, wrong types, an oversized prompt, no request
    field) land in the dead-letter stream with their reasons and are acked;
    the good entries around them are done;
  - the worker's /metrics (--metrics-port) reports the stream and the jobs;
  - SIGTERM: every worker drains and exits 0;
  - --devices cpu:0,cpu:1 against a Redis with an ACL user, URL
    redis://alice:pw@host:port/2: two children pinned to one core each (consumers
    <name>-cpu-0/1), one SIGKILLed and restarted, all jobs done once, SIGTERM
    drains both and the supervisor exits 0.
Skips with a message when the model file, redis-server or redis-py is absent.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.path.join("bin", "selfspec")
QUEUE = os.path.join("scripts", "selfspec_queue.py")
FAILURES = []
CLEANUP = []   # objects with a stop()/kill path, ended whatever happens
CREATED = 1700000000   # the batch file's mtime = the `created` of every result

TOPICS = ["the ocean", "a small town", "bread", "the moon", "trains", "winter", "a violin", "rivers"]


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        FAILURES.append(f"{name}: {detail}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_jobs(n):
    jobs = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        body = {"max_tokens": 4 + (i * 5) % 9, "temperature": 0}
        if i % 2 == 0:
            url = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": f"Write one sentence about {t} ({i})."}]
        else:
            url = "/v1/completions"
            body["prompt"] = f"Here are facts about {t}, number {i}:"
        if i % 7 == 3:
            body.update(temperature=0.8, top_p=0.9, seed=i)
        if i % 11 == 5:
            body["stop"] = ["."]
        jobs.append({"custom_id": f"job-{i}", "method": "POST", "url": url, "body": body})
    return jobs


class Redis:
    """A redis-server of our own: append-only, so a restart keeps the streams."""

    def __init__(self, tmp, extra=(), auth=None, db=0):
        self.port = free_port()
        self.extra = list(extra)
        self.auth = auth or {}
        self.db = db
        self.dir = os.path.join(tmp, f"redis-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.p = None
        CLEANUP.append(self)
        self.start()

    def start(self):
        self.p = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
                                   "--save", "", "--logfile", os.path.join(self.dir, "log")] + self.extra,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                self.client().ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, sig=signal.SIGTERM):
        if self.p and self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p = None

    def client(self):
        import redis
        return redis.Redis(port=self.port, db=self.db, **self.auth)

    def url(self):
        cred = ""
        if self.auth:
            cred = f"{self.auth.get('username', '')}:{self.auth['password']}@"
        return f"redis://{cred}127.0.0.1:{self.port}/{self.db}"


class Worker:
    def __init__(self, model, url, name, tmp, extra=()):
        self.args = [BIN, "worker", "-m", model, "--redis", url, "--stream", "jobs", "--group", "g",
                     "--consumer", name, "-t", "1", "--max-seqs", "8", "--claim-idle-ms", "3000",
                     "--max-deliveries", "5"] + list(extra)
        self.name = name
        self.log = open(os.path.join(tmp, f"{name}.log"), "ab")
        self.p = None
        CLEANUP.append(self)
        self.start()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def start(self):
        self.p = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=self.log)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def wait_until(cond, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_kills_and_restart(model, tmp, n_jobs):
    import redis
    jobs = make_jobs(n_jobs)
    inp = os.path.join(tmp, "jobs.jsonl")
    with open(inp, "w") as f:
        for j in jobs:
            f.write(json.dumps(j) + "\n")
    os.utime(inp, (CREATED, CREATED))
    t0 = time.time()
    ref_out = os.path.join(tmp, "batch.jsonl")
    p = subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", ref_out, "-q", "-t", "1"], capture_output=True,
                       timeout=600)
    check("reference batch run", p.returncode == 0, p.stderr.decode()[-500:])
    ref = {}
    with open(ref_out) as f:
        for line in f:
            ref[json.loads(line)["custom_id"]] = line
    print(f"     (batch: {time.time() - t0:.1f}s)", flush=True)

    rd = Redis(tmp)
    r = redis.Redis(port=rd.port)
    t0 = time.time()
    sub = subprocess.run([sys.executable, QUEUE, "--redis", rd.url(), "--stream", "jobs", "submit", inp],
                         capture_output=True, timeout=120)
    check("selfspec_queue.py submit", sub.returncode == 0 and r.xlen("jobs") == n_jobs, sub.stderr.decode()[-500:])
    metrics_port = free_port()
    workers = [Worker(model, rd.url(), f"w{i}", tmp,
                      ["--metrics-port", str(metrics_port)] if i == 0 else []) for i in range(3)]
    rng = random.Random(13)
    kill_at = sorted(rng.sample(range(n_jobs // 10, n_jobs * 6 // 10), 2))
    restart_redis_at = n_jobs // 2
    events = [(kill_at[0], "kill", 1), (kill_at[1], "kill", 2), (restart_redis_at, "redis", None)]
    events.sort(key=lambda e: e[0])
    killed, redis_restarted = 0, False
    metrics_text = ""
    deadline = time.time() + 420

    def n_results():
        try:
            return r.xlen("jobs:results")
        except Exception:
            return -1

    for at, what, idx in events:
        wait_until(lambda: n_results() >= at, max(1, deadline - time.time()))
        if what == "kill":
            time.sleep(rng.random() * 0.5)
            workers[idx].kill()
            killed += 1
            time.sleep(0.3)
            workers[idx].start()
        else:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                    metrics_text = resp.read().decode()
            except Exception as e:
                metrics_text = f"error: {e}"
            rd.stop()
            time.sleep(1.0)
            rd.start()
            redis_restarted = True
    check("two workers SIGKILLed and restarted, redis-server restarted", killed == 2 and redis_restarted)

    def all_done():
        try:
            return r.scard("jobs:done") >= n_jobs and r.xpending("jobs", "g")["pending"] == 0
        except Exception:
            return False

    done = wait_until(all_done, max(1, deadline - time.time()), 0.5)
    secs = time.time() - t0
    check(f"all {n_jobs} jobs done and acked ({secs:.1f}s)", done,
          f"done {r.scard('jobs:done')}, pending {r.xpending('jobs', 'g')}")
    results = r.xrange("jobs:results")
    ids = [fields[b"custom_id"].decode() for _, fields in results]
    check("exactly one result per custom_id", len(ids) == n_jobs and set(ids) == set(ref),
          f"{len(ids)} results, {len(set(ids))} distinct, {n_jobs} jobs")
    mism = [fields[b"custom_id"].decode() for _, fields in results
            if fields[b"result"].decode() != ref.get(fields[b"custom_id"].decode())]
    check("every result byte-identical to selfspec batch", not mism, f"{len(mism)} differ, e.g. {mism[:3]}")
    check("nothing pending", r.xpending("jobs", "g")["pending"] == 0)
    check("no dead letters among good jobs", r.xlen("jobs:dead") == 0 if r.exists("jobs:dead") else True)
    check("worker /metrics (--metrics-port) reports the stream and jobs",
          "selfspec:worker_jobs_done_total{" in metrics_text and "selfspec:stream_pending{" in metrics_text
          and "selfspec:generation_tokens_total{" in metrics_text, metrics_text[:300])

    # collect: the output file in input order, each line batch's
    out = os.path.join(tmp, "collected.jsonl")
    col = subprocess.run([sys.executable, QUEUE, "--redis", rd.url(), "--stream", "jobs", "collect", inp, "-o", out,
                          "--timeout", "30"], capture_output=True, timeout=120)
    with open(out) as f:
        lines = f.readlines()
    check("selfspec_queue.py collect: input order, batch's lines",
          col.returncode == 0 and lines == [ref[j["custom_id"]] for j in jobs], col.stderr.decode()[-500:])

    # poison entries between good ones
    good = [{"custom_id": f"good-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0}} for i in range(3)]
    poison = [
        ("not json", "not JSON"),
        (json.dumps({"custom_id": "p-types", "method": "POST", "url": "/v1/completions",
                     "body": {"prompt": "x", "max_tokens": "eight"}}), "body.max_tokens"),
        (json.dumps({"custom_id": "p-long", "method": "POST", "url": "/v1/completions",
                     "body": {"prompt": "word " * 6000, "max_tokens": 8}}), "context"),
        (None, "no 'request' field"),
    ]
    r.xadd("jobs", {"request": json.dumps(good[0])})
    for line, _ in poison:
        r.xadd("jobs", {"request": line} if line is not None else {"other": "x"})
    for g in good[1:]:
        r.xadd("jobs", {"request": json.dumps(g)})
    ok = wait_until(lambda: r.scard("jobs:done") >= n_jobs + 3 and r.xlen("jobs:dead") >= len(poison)
                    and r.xpending("jobs", "g")["pending"] == 0, 120, 0.3)
    dead = r.xrange("jobs:dead")
    by_request = {f.get(b"request", b"").decode("utf-8", "replace"): f[b"reason"].decode() for _, f in dead}
    check("poison entries dead-lettered, good ones done, nothing pending", ok and len(dead) == len(poison),
          f"{len(dead)} dead: {list(by_request.values())}")
    for line, want in poison:
        why = by_request.get(line if line is not None else "", "(not dead-lettered)")
        check(f"dead letter reason mentions {want!r}", want in why, why)

    # SIGTERM drains
    for w in workers:
        w.p.send_signal(signal.SIGTERM)
    codes = []
    for w in workers:
        try:
            codes.append(w.p.wait(timeout=60))
        except subprocess.TimeoutExpired:
            w.p.kill()
            codes.append("hung")
    check("SIGTERM: every worker exits 0", codes == [0, 0, 0], str(codes))
    logs = "".join(open(os.path.join(tmp, f"w{i}.log"), errors="replace").read() for i in range(3))
    check("workers reconnected after the redis restart", "reconnecting" in logs and logs.count("connected to redis") > 3)
    rd.stop()


REPEAT_PROMPT = ("The list: apple, banana, cherry, grape, lemon, mango, apple, banana, cherry, grape, lemon, mango, "
                 "apple, banana, cherry, grape, lemon, mango, apple, banana,")


def metric_sum(text, prefix):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def test_context_drafts(model, tmp):
    """A queued job on a prompt with repeats drafts from the context (the worker
    sets speculation up as batch does) and its result is plain decoding's."""
    import redis
    jobs = [{"custom_id": f"rep-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"prompt": REPEAT_PROMPT + (" apple," * i), "max_tokens": 40, "temperature": 0}}
            for i in range(2)]
    inp = os.path.join(tmp, "repeat.jsonl")
    with open(inp, "w") as f:
        for j in jobs:
            f.write(json.dumps(j) + "\n")
    os.utime(inp, (CREATED, CREATED))
    ref_out = os.path.join(tmp, "repeat-plain.jsonl")
    p = subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", ref_out, "-q", "-t", "1", "--mode", "plain"],
                       capture_output=True, timeout=300)
    ref = {json.loads(l)["custom_id"]: l for l in open(ref_out)} if p.returncode == 0 else {}
    rd = Redis(tmp)
    r = redis.Redis(port=rd.port)
    subprocess.run([sys.executable, QUEUE, "--redis", rd.url(), "--stream", "jobs", "submit", inp],
                   capture_output=True, timeout=120)
    port = free_port()
    w = Worker(model, rd.url(), "ctx", tmp, ["--metrics-port", str(port)])
    done = wait_until(lambda: r.xlen("jobs:results") >= len(jobs), 180)
    text = ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except Exception as e:
        text = f"error: {e}"
    w.p.send_signal(signal.SIGTERM)
    w.p.wait(timeout=60)
    got = {f[b"custom_id"].decode(): f[b"result"].decode() for _, f in r.xrange("jobs:results")}
    check("worker on prompts with repeats: results identical to plain decoding",
          done and len(ref) == len(jobs) and got == ref, f"{len(got)} results")
    drafts = metric_sum(text, 'selfspec:spec_decode_num_drafts_by_source_total{') if text else 0
    ctx = [l for l in text.splitlines() if l.startswith("selfspec:spec_decode_num_accepted_tokens_by_source_total{")
           and 'source="context"' in l]
    check("worker /metrics reports context drafts (drafted and accepted)",
          drafts > 0 and ctx and float(ctx[0].rsplit(" ", 1)[1]) > 0, text[-800:])
    rd.stop()


def sigterm_caught(pid):
    """Whether the process has installed a SIGTERM handler (/proc SigCgt)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def test_stop_while_loading(model, tmp):
    """SIGTERM while a worker (or a --devices supervisor) is still loading:
    it exits 0 with nothing in flight, not by the signal. No Redis needed:
    it stops before its first read."""
    qwen = "models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
    big = qwen if os.path.exists(qwen) else model   # a longer load, a wider window
    base = [BIN, "worker", "-m", big, "--redis", "redis://127.0.0.1:1", "--stream", "s", "--group", "g", "-t", "1"]
    for extra, delay in (([], 0.0), ([], 0.05), (["--devices", "cpu:0,cpu:1"], 0.0), (["--devices", "cpu:0,cpu:1"], 0.5)):
        log_path = os.path.join(tmp, "stop-loading.log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen(base + extra, stdout=subprocess.DEVNULL, stderr=log)
            # before main() no program can catch a signal (the dynamic loader is
            # still mapping libraries): wait until SIGTERM is caught, then hit the load
            wait_until(lambda: sigterm_caught(p.pid), 10, 0.002)
            time.sleep(delay)
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "hung"
        text = open(log_path, errors="replace").read()
        check(f"SIGTERM {delay}s after its handler is in, while loading{' (' + extra[1] + ')' if extra else ''}: exits 0",
              rc == 0,
              f"rc {rc}: {text[-400:]}")


def test_devices(model, tmp):
    """--devices cpu:0,cpu:1: two pinned children; one SIGKILLed is restarted; SIGTERM drains both.
    The Redis here wants an ACL user (alice) and the workers use db 2: redis://alice:pw@host:port/2."""
    rd = Redis(tmp, extra=["--user", "default", "off", "--user", "alice", "on", ">pw", "~*", "&*", "+@all"],
               auth={"username": "alice", "password": "pw"}, db=2)
    r = rd.client()
    jobs = make_jobs(16)
    for j in jobs:
        r.xadd("dj", {"request": json.dumps(j)})
    log = open(os.path.join(tmp, "sup.log"), "ab")
    sup = subprocess.Popen([BIN, "worker", "-m", model, "--redis", rd.url(), "--stream", "dj", "--group", "g",
                            "--devices", "cpu:0,cpu:1", "--max-seqs", "4", "--consumer", "node"],
                           stdout=subprocess.DEVNULL, stderr=log)

    class Sup:
        def stop(self):
            if sup.poll() is None:
                sup.kill()
                sup.wait()
    CLEANUP.append(Sup())

    def children():
        try:
            with open(f"/proc/{sup.pid}/task/{sup.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []
    def cpus_of(kids):
        cpus = []
        for k in kids:
            try:
                with open(f"/proc/{k}/status") as f:
                    cpus += [ln.split()[1] for ln in f if ln.startswith("Cpus_allowed_list")]
            except OSError:
                pass
        return sorted(cpus)
    # (a child pins itself once it has parsed its options)
    wait_until(lambda: len(children()) == 2 and cpus_of(children()) == ["0", "1"], 30)
    kids = children()
    cpus = cpus_of(kids)
    check("--devices cpu:0,cpu:1: two children pinned to cores 0 and 1", sorted(cpus) == ["0", "1"], str(cpus))
    wait_until(lambda: r.xlen("dj:results") >= 4, 120)
    if kids:
        os.kill(kids[0], signal.SIGKILL)
    restarted = wait_until(lambda: len(children()) == 2 and kids[0] not in children(), 30)
    check("a child SIGKILLed is restarted", restarted, str(children()))
    done = wait_until(lambda: r.scard("dj:done") >= len(jobs) and r.xpending("dj", "g")["pending"] == 0, 180)
    check("--devices: every job done once, nothing pending", done and r.xlen("dj:results") == len(jobs),
          f"{r.xlen('dj:results')} results")
    consumers = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                 for c in r.xinfo_consumers("dj", "g")}
    check("children are consumers node-cpu-0 and node-cpu-1", consumers == {"node-cpu-0", "node-cpu-1"},
          str(consumers))
    left = children()
    sup.send_signal(signal.SIGTERM)
    try:
        rc = sup.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = "hung"
    gone = all(not os.path.exists(f"/proc/{k}") or open(f"/proc/{k}/status").read().find("zombie") >= 0
               for k in left)
    check("SIGTERM: the supervisor drains its children and exits 0", rc == 0 and gone, str(rc))
    check("redis://alice:pw@host:port/2: ACL user and db honoured (the jobs live in db 2)",
          r.xlen("dj:results") == len(jobs) and rd.url().startswith("redis://alice:pw@"))
    rd.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--jobs", type=int, default=200)
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print(f"skip: no model at {a.model}")
        return 0
    if not shutil.which("redis-server"):
        print("skip: redis-server not installed (scripts/setup.sh installs it)")
        return 0
    try:
        import redis  # noqa: F401
    except ImportError:
        print("skip: redis-py not installed (scripts/setup.sh installs it)")
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            test_stop_while_loading(a.model, tmp)
            test_context_drafts(a.model, tmp)
            test_kills_and_restart(a.model, tmp, a.jobs)
            test_devices(a.model, tmp)
        finally:
            for obj in reversed(CLEANUP):
                obj.stop()
            if FAILURES:
                for i in range(3):
                    p = os.path.join(tmp, f"w{i}.log")
                    if os.path.exists(p):
                        print(f"--- {p} (tail)")
                        print(open(p, errors="replace").read()[-2000:])
    print(f"test_worker: {time.time() - t0:.1f}s")
    if FAILURES:
        print("\n".join(["FAILURES:"] + FAILURES))
        return 1
    print("test_worker: all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
