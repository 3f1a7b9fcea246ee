#!/usr/bin/env python3
"""End-to-end tests of `selfspec generate --mode pipeline` (verifier process +
bin/selfspec-drafter), run as `python3 tests/test_pipeline.py [--model M]`.

  1. identical greedy output: pipeline (overlapped and sequential) vs
     self-spec vs plain, on several prompts;
  2. the drafter is SIGKILLed at random points (several times per run), and
     once stopped (SIGSTOP: hung): output still identical, restarts counted;
  3. malformed, foreign, replayed, stale and unexpected messages are sent to
     both processes' sockets (libzmq through ctypes, protobuf encoded by
     hand): rejected and counted in --stats, no crash, no hang, same output;
  4. SIGTERM to the verifier: drains, exits 0, prints a prefix of the output;
     SIGKILL to the verifier: the drafter follows it out;
  5. after every run: no /dev/shm/selfspec-<pid>-* segment and no drafter left.

The endpoints, session and drafter pids come from SELFSPEC_PIPELINE_DEBUG=1
lines on stderr. Skips (exit 0) when the model file is absent.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SELFSPEC_BIN") or os.path.join(ROOT, "bin", "selfspec")
PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Write a short poem about the sea.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
# A skip set for the tests (any set gives identical output; this one drafts
# reasonably on SmolLM2-135M). A config from configs/ is not needed.
SKIP = {"model": {"name": "test", "n_layers": 30, "dim": 576, "vocab_size": 49152},
        "attn_skip": [8, 10, 12, 14, 16, 18, 20, 22, 24, 26], "mlp_skip": [11, 17, 23]}

ALWAYS = {"SELFSPEC_PIPELINE_SPECULATE": "always"}
FAILS: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILS.append(what)


# ---------------------------------------------------------------- protobuf by hand

def varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v)


def f_bytes(num: int, b: bytes) -> bytes:
    return varint((num << 3) | 2) + varint(len(b)) + b


def f_fixed64(num: int, v: int) -> bytes:
    return varint((num << 3) | 1) + struct.pack("<Q", v)


def f_float(num: int, v: float) -> bytes:
    return varint((num << 3) | 5) + struct.pack("<f", v)


def envelope(session: int, inc: int, msg_no: int, epoch: int, body_num: int, body: bytes) -> bytes:
    return (f_varint(1, 1) + f_fixed64(2, session) + f_varint(3, inc) + f_varint(4, msg_no) +
            f_varint(5, 0) + f_varint(6, epoch) + f_bytes(body_num, body))


def request(pos: int, cur: int, k_max: int, end_pos: int, gamma: float = 0.6) -> bytes:
    return f_varint(1, 1) + f_varint(2, pos) + f_varint(3, cur) + f_varint(5, k_max) + f_varint(6, end_pos) + f_float(7, gamma)


def block(pos: int, cur: int, toks: list[int]) -> bytes:
    return f_varint(1, pos) + f_varint(2, cur) + f_bytes(3, b"".join(varint(t) for t in toks))


# ---------------------------------------------------------------- libzmq via ctypes

class Zmq:
    PUSH, LINGER, SNDMORE = 8, 17, 2

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libzmq.so.5")
        self.lib.zmq_ctx_new.restype = ctypes.c_void_p
        self.lib.zmq_socket.restype = ctypes.c_void_p
        self.lib.zmq_socket.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.zmq_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib.zmq_setsockopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.zmq_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.zmq_close.argtypes = [ctypes.c_void_p]
        self.lib.zmq_ctx_term.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.zmq_ctx_new()

    def push(self, endpoint: str):
        s = self.lib.zmq_socket(self.ctx, self.PUSH)
        linger = ctypes.c_int(1000)
        self.lib.zmq_setsockopt(s, self.LINGER, ctypes.byref(linger), ctypes.sizeof(linger))
        assert self.lib.zmq_connect(s, endpoint.encode()) == 0
        return s

    def send(self, s, data: bytes, more: bool = False) -> None:
        self.lib.zmq_send(s, data, len(data), self.SNDMORE if more else 0)

    def close(self, s) -> None:
        self.lib.zmq_close(s)

    def term(self) -> None:
        self.lib.zmq_ctx_term(self.ctx)


# ---------------------------------------------------------------- running

class Run:
    """bin/selfspec generate in the background, stderr parsed as it comes."""

    def __init__(self, args: list[str], debug: bool = True, env_extra: dict | None = None) -> None:
        env = dict(os.environ)
        env.update(env_extra or {})
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # two processes share the cores
        if debug:
            env["SELFSPEC_PIPELINE_DEBUG"] = "1"
        self.p = subprocess.Popen([BIN, "generate"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.lines: list[str] = []
        self.spawns: list[dict] = []
        self.ready: list[int] = []
        self.cv = threading.Condition()
        self.out = ""
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.to = threading.Thread(target=self._read_out, daemon=True)
        self.to.start()

    def _read_out(self) -> None:
        self.out = self.p.stdout.read()

    def _read(self) -> None:
        for line in self.p.stderr:
            with self.cv:
                self.lines.append(line)
                if line.startswith("selfspec-pipeline: spawn "):
                    self.spawns.append(dict(kv.split("=", 1) for kv in line.split()[2:]))
                elif "Sanitizer" in line or "runtime error" in line or "ssertion" in line:
                    check(False, "no sanitizer report / assertion: " + line.rstrip())
                elif line.startswith("selfspec-drafter:"):
                    print("     (stderr) " + line.rstrip(), flush=True)
                elif line.startswith("selfspec-pipeline: ready "):
                    self.ready.append(int(line.split()[2].split("=")[1]))
                self.cv.notify_all()

    def wait_ready(self, n: int, timeout: float = 60) -> int | None:
        """pid of the n-th (1-based) drafter that became ready."""
        with self.cv:
            self.cv.wait_for(lambda: len(self.ready) >= n or self.p.poll() is not None, timeout)
            return self.ready[n - 1] if len(self.ready) >= n else None

    def finish(self, timeout: float = 300) -> tuple[int, str, dict | None]:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            check(False, "run finished within %d s (hang)" % timeout)
        self.t.join(5)
        self.to.join(5)
        out = self.out
        stats = None
        for line in self.lines:
            if line.startswith("{"):
                try:
                    stats = json.loads(line)
                except ValueError:
                    check(False, "stats line is JSON: %r" % line)
        return self.p.returncode, out.strip(), stats


def run_sync(args: list[str]) -> tuple[int, str, dict | None]:
    return Run(args, debug=False).finish()


def pid_alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def no_leftovers(vpid: int, drafter_pids: list[int], what: str) -> None:
    deadline = time.time() + 3
    while time.time() < deadline and any(pid_alive(p) for p in drafter_pids):
        time.sleep(0.05)
    check(not any(pid_alive(p) for p in drafter_pids), what + ": no drafter process left")
    segs = [n for n in os.listdir("/dev/shm") if n.startswith("selfspec-%d-" % vpid)]
    check(not segs, what + ": no /dev/shm segment left %s" % segs)


# ---------------------------------------------------------------- tests

def test_identical(base: list[str]) -> None:
    for i, prompt in enumerate(PROMPTS):
        outs = {}
        for mode, extra in [("plain", []), ("self-spec", []), ("pipeline", []),
                            ("pipeline-seq", ["--pipeline-sequential"]), ("pipeline-always", []),
                            ("pipeline-3seqs", ["--pipeline-seqs", "3"])]:
            # pipeline-always: speculate after every block, so that the
            # speculative / continue / abort paths run on every step
            cli_mode = "pipeline" if mode.startswith("pipeline") else mode
            r = Run(base + ["-p", prompt, "-n", "48", "--mode", cli_mode] + extra,
                    env_extra=ALWAYS if mode == "pipeline-always" else None)
            rc, out, st = r.finish()
            check(rc == 0, "prompt %d %s: exit 0" % (i, mode))
            outs[mode] = out
            if mode.startswith("pipeline"):
                pids = [int(s["pid"]) for s in r.spawns]
                no_leftovers(r.p.pid, pids, "prompt %d %s" % (i, mode))
                if st and i == 0 and mode == "pipeline":
                    pl = st["pipeline"]
                    print("     PSS kB: verifier %d (anon %d, shmem %d), drafter %d (anon %d, shmem %d); arena %d kB"
                          % (pl["verifier_mem"]["pss_kb"], pl["verifier_mem"]["pss_anon_kb"],
                             pl["verifier_mem"]["pss_shmem_kb"], pl["drafter_mem"]["pss_kb"],
                             pl["drafter_mem"]["pss_anon_kb"], pl["drafter_mem"]["pss_shmem_kb"], pl["arena_kb"]))
                    if os.environ.get("SELFSPEC_BIN"):   # sanitizer builds: shadow memory is anonymous
                        print("     (PSS check skipped for SELFSPEC_BIN)")
                    else:
                        check(pl["drafter_mem"]["pss_anon_kb"] < pl["arena_kb"] / 4,
                              "drafter holds no private copy of the weights (Pss_Anon << arena)")
        check(len(set(outs.values())) == 1 and outs["plain"],
              "prompt %d: pipeline == -seq == -always == -3seqs == self-spec == plain (%d ids)"
              % (i, len(outs["plain"].split())))


def test_kill_drafter(base: list[str], reference: str, seed: int) -> None:
    rnd = random.Random(seed)
    for variant, extra in (("overlapped", []), ("sequential", ["--pipeline-sequential"]),
                           ("2 sequences", ["--pipeline-seqs", "2"])):
        overlap = variant == "overlapped"
        what = "kill drafter (%s)" % variant
        r = Run(base + ["--hb-timeout-ms", "300"] + extra, env_extra=ALWAYS if overlap else None)
        kills = 0
        for n in range(1, 4):
            pid = r.wait_ready(n)
            if pid is None:
                break
            time.sleep(rnd.uniform(0.0, 0.5))
            try:
                if n == 3:
                    os.kill(pid, signal.SIGSTOP)   # hung, not dead: found by the heartbeat timeout
                else:
                    os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        rc, out, st = r.finish()
        check(rc == 0, what + ": exit 0")
        check(out == reference, what + ": output identical to plain after %d kills" % kills)
        if st:
            pl = st["pipeline"]
            check(pl["drafter_deaths"] >= 1 and pl["drafter_starts"] >= 2,
                  what + ": deaths %d, starts %d, timeouts %d, plain steps %d"
                  % (pl["drafter_deaths"], pl["drafter_starts"], pl["drafter_timeouts"], pl["plain_steps"]))
        for s in r.spawns:   # the stopped one was killed by the verifier; let nothing linger
            try:
                os.kill(int(s["pid"]), signal.SIGCONT)
            except ProcessLookupError:
                pass
        no_leftovers(r.p.pid, [int(s["pid"]) for s in r.spawns], what)


def test_malformed(base: list[str], reference: str) -> None:
    r = Run(base + ["--hb-timeout-ms", "300"], env_extra=ALWAYS)
    pid = r.wait_ready(1)
    check(pid is not None, "malformed: drafter ready")
    sp = r.spawns[0]
    session, inc = int(sp["session"], 16), int(sp["incarnation"])
    z = Zmq()
    sv, sd = z.push(sp["verifier"]), z.push(sp["drafter"])
    big = 1 << 40
    for s in (sv, sd):
        z.send(s, b"\xff\xff\xff\xff garbage")                       # malformed
        z.send(s, b"")                                               # empty: parses, foreign (version 0)
        z.send(s, b"part one", more=True)                            # multipart: malformed
        z.send(s, b"part two")
        z.send(s, envelope(session ^ 1, inc, big, 1, 16, b""))        # foreign session
        z.send(s, envelope(session, inc + 7, big, 1, 16, b""))        # foreign incarnation
    z.send(sv, envelope(session, inc, 1, 1, 14, block(1, 1, [1, 2])))   # replayed (msg 1)
    z.send(sd, envelope(session, inc, 1, 1, 13, request(5, 1, 4, 40)))  # replayed
    z.send(sv, envelope(session, inc, big, 1, 14, block(1, 1, [10 ** 7])))    # token out of range: malformed
    z.send(sd, envelope(session, inc, big, big, 13, request(-5, 1, 4, 40)))  # bad position: malformed
    z.send(sv, envelope(session, inc, big + 1, 1, 13, request(5, 1, 4, 40)))  # a request to the verifier: unexpected
    z.send(sd, envelope(session, inc, big + 1, 1, 14, block(5, 1, [1])))      # a block to the drafter: unexpected
    z.send(sv, envelope(session, inc, big + 2, 0, 14, block(5, 1, [1])))      # epoch 0: stale
    z.send(sd, envelope(session, inc, big + 2, 0, 13, request(5, 1, 4, 40)))  # epoch 0: stale
    # replaying the same stale messages again: now replays
    z.send(sv, envelope(session, inc, big + 2, 0, 14, block(5, 1, [1])))
    z.send(sd, envelope(session, inc, big + 2, 0, 13, request(5, 1, 4, 40)))
    time.sleep(0.3)
    z.close(sv)
    z.close(sd)
    z.term()
    rc, out, st = r.finish()
    check(rc == 0, "malformed: verifier exit 0 (no crash)")
    check(out == reference, "malformed: output identical to plain")
    if st:
        v, d = st["pipeline"]["verifier_rejected"], st["pipeline"]["drafter_rejected"]
        print("     verifier rejected %s\n     drafter rejected %s" % (v, d))
        for side, c in (("verifier", v), ("drafter", d)):
            check(c["malformed"] >= 2 and c["foreign"] >= 3 and c["replayed"] >= 2 and c["stale"] >= 1
                  and c["unexpected"] >= 1, "malformed: %s counted every kind" % side)
    no_leftovers(r.p.pid, [int(s["pid"]) for s in r.spawns], "malformed")


def test_signals(base: list[str], reference: str) -> None:
    r = Run(base)
    r.wait_ready(1)
    time.sleep(0.3)
    r.p.send_signal(signal.SIGTERM)
    rc, out, st = r.finish()
    check(rc == 0, "SIGTERM: verifier drains and exits 0")
    check(reference.startswith(out) and (st or {}).get("pipeline", {}).get("terminated") is True,
          "SIGTERM: output is a prefix of the full output (%d of %d ids), stats say terminated"
          % (len(out.split()), len(reference.split())))
    no_leftovers(r.p.pid, [int(s["pid"]) for s in r.spawns], "SIGTERM")

    r = Run(base)
    r.wait_ready(1)
    time.sleep(0.3)
    r.p.kill()
    rc, _, _ = r.finish()
    check(rc != 0, "SIGKILL of the verifier: non-zero exit (%d)" % rc)
    no_leftovers(r.p.pid, [int(s["pid"]) for s in r.spawns], "SIGKILL of the verifier")


def test_device_flags(base: list[str]) -> None:
    """--draft-device (the two-GPU pipeline) is refused with a clear error
    where it cannot run: without --mode pipeline or --device cuda, and on a
    machine without that GPU; the CPU pipeline's stats name no devices."""
    for extra, want in [(["--mode", "pipeline", "--draft-device", "cuda:1"], "needs --mode pipeline and --device"),
                        (["--mode", "self-spec", "--device", "cuda", "--draft-device", "cuda:1"], "needs --mode pipeline"),
                        (["--mode", "pipeline", "--draft-device", "cpu"], "must be cuda"),
                        (["--mode", "pipeline", "--device", "cuda:0", "--draft-device", "cuda:7"], "")]:
        p = subprocess.run([BIN, "generate"] + base + ["-p", "Hi", "-n", "4"] + extra,
                           capture_output=True, text=True, timeout=60)
        check(p.returncode != 0 and "selfspec:" in p.stderr and want in p.stderr,
              "%s: refused with a clear error (%s)" % (" ".join(extra), p.stderr.strip()[:120]))
    rc, _, st = run_sync(base + ["-p", "Hi", "-n", "8", "--mode", "pipeline"])
    check(rc == 0 and st is not None and st["pipeline"]["device"] == -1 and st["pipeline"]["draft_device"] == -1
          and st["pipeline"]["overlap"] is True, "CPU pipeline stats: device -1, draft_device -1, overlap on")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print("SKIP: model %s not found" % args.model)
        return 0
    if not os.path.exists(BIN) or not os.path.exists(BIN + "-drafter"):
        print("FAIL: build bin/selfspec and bin/selfspec-drafter first (make)")
        return 1
    print("seed %d" % args.seed)
    with tempfile.TemporaryDirectory() as td:
        skip = os.path.join(td, "skip.json")
        with open(skip, "w") as f:
            json.dump(SKIP, f)
        base = ["-m", args.model, "--skip", skip, "--ids", "--stats", "-t", "2"]
        test_identical(base)
        test_device_flags(base)
        long_args = base + ["-p", "Write a long story about a dragon and a knight.", "-n", "160", "--ignore-eos"]
        rc, reference, _ = run_sync(long_args + ["--mode", "plain"])
        check(rc == 0 and len(reference.split()) == 160, "reference run (plain, 160 tokens)")
        pipe_args = long_args + ["--mode", "pipeline"]
        test_kill_drafter(pipe_args, reference, args.seed)
        test_malformed(pipe_args, reference)
        test_signals(pipe_args, reference)
    print("%d failure(s)" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
