#!/usr/bin/env python3
"""End-to-end tests of `selfspec batch` (OpenAI batch files) on the real model.

Run from the repository root (make test does):
    python3 tests/test_batch.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]

  - 64 varied requests (chat and completion, different max_tokens, stop
    strings, EOS, some sampled with seeds): every result's text is identical
    to `selfspec generate` alone with the same parameters, at --max-seqs 1,
    7 and 64, and in --mode plain, auto and self-spec;
  - a file with every kind of bad line: one error line (status 400) each,
    every good line done;
  - kill -9 in the middle of a job, twice, then finish it: each custom_id
    exactly once, each result byte-identical to an uninterrupted run;
  - SIGTERM finishes what is in flight and exits 0; a rerun completes the job;
  - `-i -`: requests read from a pipe as they arrive, results written as
    they finish (before the pipe is closed).
Skips with a message when the model file is absent.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.path.join("bin", "selfspec")
FAILURES = []

TOPICS = ["the ocean", "a small town", "bread", "the moon", "trains", "winter", "a violin", "rivers",
          "bees", "chess", "rain", "a library"]


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        FAILURES.append(f"{name}: {detail}")


def requests_64():
    """64 varied requests and, for each, the generate arguments that must give the same text."""
    reqs = []
    for i in range(64):
        topic = TOPICS[i % len(TOPICS)]
        body = {"max_tokens": 4 + (i * 7) % 21, "temperature": 0}
        gen = ["--mode", "plain", "-n", str(body["max_tokens"])]
        if i % 2 == 0:
            url = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": f"Write one sentence about {topic}."}]
            gen += ["--chat", "-p", f"Write one sentence about {topic}."]
            if i % 8 == 0:
                body["messages"].insert(0, {"role": "system", "content": "You are terse."})
                gen += ["--system", "You are terse."]
                body["max_tokens"] = 60          # long enough to reach EOS
                gen[gen.index("-n") + 1] = "60"
        else:
            url = "/v1/completions"
            body["prompt"] = f"Here are some facts about {topic}:"
            gen += ["-p", body["prompt"]]
        if i % 5 == 0:
            body["stop"] = [".", "\n"]
            gen += ["--stop", ".", "--stop", "\n"]
        if i % 6 == 1:
            body.update(temperature=0.8, top_p=0.9, top_k=40, seed=100 + i)
            gen += ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "40", "--seed", str(100 + i)]
        reqs.append(({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}, gen))
    return reqs


def write_jsonl(path, objs):
    with open(path, "w") as f:
        for o in objs:
            f.write((o if isinstance(o, str) else json.dumps(o)) + "\n")


def run_batch(model, inp, out, extra=(), timeout=900):
    p = subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", out, "-q"] + list(extra),
                       capture_output=True, timeout=timeout)
    if p.returncode < 0:
        FAILURES.append(f"batch {extra}: killed by signal {-p.returncode}")
    return p.returncode, p.stderr.decode(errors="replace")


def read_results(path):
    """custom_id -> list of parsed lines (errors with no custom_id under None)."""
    res = {}
    with open(path, "rb") as f:
        for raw in f:
            o = json.loads(raw)
            res.setdefault(o["custom_id"], []).append((o, raw))
    return res


def text_of(o):
    body = o["response"]["body"]
    ch = body["choices"][0]
    return ch["text"] if body["object"] == "text_completion" else ch["message"]["content"]


def test_identical_to_generate(model, tmp):
    reqs = requests_64()
    inp = os.path.join(tmp, "in.jsonl")
    write_jsonl(inp, [r for r, _ in reqs])
    def generate(gen):
        p = subprocess.run([BIN, "generate", "-m", model] + gen, capture_output=True, timeout=300)
        out = p.stdout.decode("utf-8", errors="replace")
        return out[:-1] if out.endswith("\n") else out
    # plain decoding for everything; a sampled request under forced speculation
    # draws its random numbers for drafts too, so its reference is generate
    # --mode self-spec (greedy requests are the same in every mode)
    plain = {r["custom_id"]: generate(gen) for r, gen in reqs}
    spec = {r["custom_id"]: generate(gen[:1] + ["self-spec"] + gen[2:]) if r["body"]["temperature"] > 0
            else plain[r["custom_id"]] for r, gen in reqs}
    for seqs, mode in [(1, "plain"), (7, "auto"), (64, "auto"), (7, "self-spec")]:
        want = spec if mode == "self-spec" else plain
        out = os.path.join(tmp, f"out-{seqs}-{mode}.jsonl")
        rc, err = run_batch(model, inp, out, ["--max-seqs", str(seqs), "--mode", mode])
        check(f"batch --max-seqs {seqs} --mode {mode} exits 0", rc == 0, err[-400:])
        if rc != 0:
            continue
        res = read_results(out)
        bad = [cid for cid in want if cid not in res or len(res[cid]) != 1 or
               res[cid][0][0]["response"]["status_code"] != 200 or text_of(res[cid][0][0]) != want[cid]]
        check(f"max-seqs {seqs} {mode}: 64 results, each identical to generate alone", not bad,
              "; ".join(f"{c}: batch {text_of(res[c][0][0]) if c in res else None!r} vs generate {want[c]!r}"
                        for c in bad[:3]))
        fin = [res[f"req-{i}"][0][0]["response"]["body"]["choices"][0]["finish_reason"] for i in range(64)]
        check(f"max-seqs {seqs} {mode}: finish reasons stop and length both occur", "stop" in fin and "length" in fin)


def test_bad_lines(model, tmp):
    good = {"custom_id": "good-1", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "Hello", "max_tokens": 5, "temperature": 0}}
    lines = [
        json.dumps(good),
        "this is not json",
        json.dumps({"custom_id": "u1", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps({"custom_id": "t1", "method": "POST", "url": "/v1/completions", "body": {"prompt": 5}}),
        json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "top_p": 1.5}}),
        json.dumps({"custom_id": "r2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 0}}),
        json.dumps({"custom_id": "r3", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "temperature": -1}}),
        json.dumps({"custom_id": "ctx", "method": "POST", "url": "/v1/completions",
                    "body": {"prompt": "word " * 3000, "max_tokens": 2000}}),
        json.dumps({"custom_id": "good-1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "dup"}}),
        json.dumps({"custom_id": "m1", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}}),
        json.dumps({"custom_id": "s1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "stream": True}}),
        json.dumps({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}),
        # a line longer than any request may be (3 MiB): one error line, not one per piece
        json.dumps({"custom_id": "big", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x" * 3000000}}),
        json.dumps({"custom_id": "good-2", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0}}),
    ]
    inp, out = os.path.join(tmp, "bad.jsonl"), os.path.join(tmp, "bad.out")
    write_jsonl(inp, lines)
    rc, err = run_batch(model, inp, out)
    check("batch with bad lines exits 0", rc == 0, err[-300:])
    rows = [json.loads(l) for l in open(out, "rb")]
    check("one output line per input line", len(rows) == len(lines), f"{len(rows)} lines")
    ok = [r for r in rows if r["response"]["status_code"] == 200]
    errs = [r for r in rows if r["response"]["status_code"] == 400]
    check("the good lines are done", sorted(r["custom_id"] for r in ok) == ["good-1", "good-2"],
          str([r["custom_id"] for r in ok]))
    check("every bad line has its own 400 with a message", len(errs) == len(lines) - 2 and
          all(r["error"] and r["error"]["message"] for r in errs))
    msg = {r["custom_id"]: r["error"]["message"] for r in errs}
    check("messages name the problem", "top_p" in msg.get("r1", "") and "url" in msg.get("u1", "").lower() and
          "context" in msg.get("ctx", "") and any("duplicate" in r["error"]["message"] for r in errs)
          and any("over the limit" in r["error"]["message"] for r in errs), json.dumps(msg)[:500])


def wait_lines(path, n, proc, limit=300):
    t0 = time.time()
    while time.time() - t0 < limit and proc.poll() is None:
        if os.path.exists(path) and sum(1 for _ in open(path, "rb")) >= n:
            return True
        time.sleep(0.05)
    return False


def test_kill_and_resume(model, tmp):
    reqs = [{"custom_id": f"k-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"prompt": f"Story {i}: once upon a time", "max_tokens": 12 + i % 9, "temperature": 0}}
            for i in range(20)]
    inp = os.path.join(tmp, "kill.jsonl")
    write_jsonl(inp, reqs)
    ref = os.path.join(tmp, "kill-ref.out")
    rc, err = run_batch(model, inp, ref, ["--max-seqs", "4"])
    check("uninterrupted run", rc == 0, err[-300:])
    out = os.path.join(tmp, "kill.out")
    args = [BIN, "batch", "-m", model, "-i", inp, "-o", out, "-q", "--max-seqs", "4"]
    for target in (4, 10):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = wait_lines(out, target, p)
        p.send_signal(signal.SIGKILL)
        p.wait()
        check(f"killed with -9 after >= {target} results", reached)
    with open(out, "ab") as f:      # a torn last line, as a kill mid-write leaves
        f.write(b'{"id":"batch_req_0123","custom_id":"k-2')
    rc, err = run_batch(model, inp, out, ["--max-seqs", "4"])
    check("the resumed run finishes", rc == 0, err[-300:])
    got, want = read_results(out), read_results(ref)
    check("each custom_id exactly once", sorted(got) == sorted(want) and all(len(v) == 1 for v in got.values()),
          str({k: len(v) for k, v in got.items() if len(v) != 1}))
    check("results byte-identical to the uninterrupted run",
          all(got[k][0][1] == want[k][0][1] for k in want if k in got))
    # SIGTERM: finish in flight, exit 0; a rerun completes the rest
    out2 = os.path.join(tmp, "term.out")
    p = subprocess.Popen(args[:7] + [out2] + args[8:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_lines(out2, 3, p)
    p.send_signal(signal.SIGTERM)
    _, e = p.communicate(timeout=300)
    check("SIGTERM: exits 0 after finishing what was in flight", p.returncode == 0, e.decode()[-300:])
    partial = read_results(out2)
    check("SIGTERM: every written line is complete and good",
          all(len(v) == 1 and v[0][1] == want[k][0][1] for k, v in partial.items()))
    rc, _ = run_batch(model, inp, out2, ["--max-seqs", "4"])
    check("after SIGTERM a rerun completes the job", rc == 0 and sorted(read_results(out2)) == sorted(want))


def test_stdin_pipe(model, tmp):
    out = os.path.join(tmp, "pipe.out")
    p = subprocess.Popen([BIN, "batch", "-m", model, "-i", "-", "-o", out, "-q"], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    req = {"custom_id": "p-1", "method": "POST", "url": "/v1/completions",
           "body": {"prompt": "One, two,", "max_tokens": 6, "temperature": 0}}
    p.stdin.write((json.dumps(req) + "\n").encode())
    p.stdin.flush()
    first = wait_lines(out, 1, p, limit=120)
    check("-i -: a result is written while the pipe is still open", first)
    req["custom_id"] = "p-2"
    p.stdin.write((json.dumps(req) + "\n").encode())
    p.stdin.close()
    p.wait(timeout=300)
    e = p.stderr.read()
    res = read_results(out)
    check("-i -: both requests done, exit 0", p.returncode == 0 and sorted(res) == ["p-1", "p-2"], e.decode()[-300:])


def test_logprobs(model, tmp):
    """Greedy requests with logprobs (chat and completions, stop strings, EOS):
    the choices (text, finish reason, log-probabilities) are identical across
    --mode plain / self-spec / auto and --max-seqs 1 / 5 (the log-probabilities are the full model's,
    never a draft's, and a token's logits do not depend on its batch); they
    are well-formed and consistent (top-1 first, the chosen token's value
    among the top when it is the argmax, probabilities <= 1, text offsets
    rising through the text)."""
    reqs = []
    for i in range(10):
        chat = i % 2 == 0
        body = {"model": "m", "max_tokens": 12 + 3 * i, "temperature": 0}
        if chat:
            body["messages"] = [{"role": "user", "content": f"List {i + 2} fruits, one per line."}]
            body["logprobs"] = True
            body["top_logprobs"] = i % 4
        else:
            body["prompt"] = f"Counting: {i}, {i + 1}, {i + 2},"
            body["logprobs"] = i % 6
        if i % 3 == 1:
            body["stop"] = ["\n"]
        reqs.append({"custom_id": f"lp-{i}", "method": "POST",
                     "url": "/v1/chat/completions" if chat else "/v1/completions", "body": body})
    inp = os.path.join(tmp, "lp.jsonl")
    write_jsonl(inp, reqs)
    outs = {}
    for seqs, mode in [(1, "plain"), (5, "plain"), (5, "self-spec"), (5, "auto")]:
        out = os.path.join(tmp, f"lp-{seqs}-{mode}.jsonl")
        rc, err = run_batch(model, inp, out, ["--max-seqs", str(seqs), "--mode", mode])
        check(f"logprobs: batch --max-seqs {seqs} --mode {mode} exits 0", rc == 0, err[-400:])
        if rc == 0:   # the choice as printed (the line's "created" is the run's start)
            outs[(seqs, mode)] = {c: (v[0][1], json.dumps(v[0][0]["response"]["body"]["choices"]))
                                  for c, v in read_results(out).items()}
    ref = outs.get((1, "plain"), {})
    for key, got in outs.items():
        check(f"logprobs: max-seqs {key[0]} {key[1]}: every choice identical to plain's at max-seqs 1",
              {c: v[1] for c, v in got.items()} == {c: v[1] for c, v in ref.items()},
              str([c for c in ref if got.get(c, (0, 0))[1] != ref[c][1]][:3]))
    ref = {c: v[0] for c, v in ref.items()}
    ok, why = len(ref) == 10, ""
    for cid, raw in sorted(ref.items()):
        o = json.loads(raw)
        body = o["response"]["body"]
        lp = body["choices"][0]["logprobs"]
        text = text_of(o)
        if body["object"] == "chat.completion":
            ents = lp["content"]
            vals = [e["logprob"] for e in ents]
            joined = b"".join(bytes(e["bytes"]) for e in ents).decode("utf-8", errors="replace")
            good = all(len(e["top_logprobs"]) <= 3 and all(t["logprob"] <= 0 for t in e["top_logprobs"]) and
                       (not e["top_logprobs"] or e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-6)
                       for e in ents) and text.startswith(joined[:len(text)]) and len(joined) >= len(text)
        else:
            vals = lp["token_logprobs"]
            offs = lp["text_offset"]
            good = (len(lp["tokens"]) == len(vals) == len(offs) == len(lp["top_logprobs"]) and
                    offs == sorted(offs) and all(v <= 0 for v in vals) and
                    all(not d or max(d.values()) >= v - 1e-6 for d, v in zip(lp["top_logprobs"], vals)))
        if not (good and vals and all(v <= 1e-6 for v in vals)):
            ok, why = False, f"{cid}: {json.dumps(lp)[:300]}"
    check("logprobs: every response well-formed and consistent", ok, why)


def test_n_choices(model, tmp):
    """n > 1: greedy choices are identical; sampled choice i is the request
    with seed + i alone (distinct draws, each reproducible); usage sums the
    choices' tokens; the same at --max-seqs 1 and 8."""
    base = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 1.0}
    reqs = [{"custom_id": "greedy", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 10,
                      "temperature": 0, "n": 3}},
            {"custom_id": "sampled", "method": "POST", "url": "/v1/completions", "body": dict(base, seed=40, n=4)}]
    reqs += [{"custom_id": f"alone-{i}", "method": "POST", "url": "/v1/completions", "body": dict(base, seed=40 + i)}
             for i in range(4)]
    inp = os.path.join(tmp, "n.jsonl")
    write_jsonl(inp, reqs)
    for seqs in (1, 8):
        out = os.path.join(tmp, f"n-{seqs}.jsonl")
        rc, err = run_batch(model, inp, out, ["--max-seqs", str(seqs)])
        check(f"n > 1: batch --max-seqs {seqs} exits 0", rc == 0, err[-400:])
        if rc != 0:
            continue
        res = {c: v[0][0]["response"]["body"] for c, v in read_results(out).items()}
        g = [c["message"]["content"] for c in res["greedy"]["choices"]]
        check(f"n > 1 (max-seqs {seqs}): 3 greedy choices, indexed, identical",
              len(g) == 3 and len(set(g)) == 1 and [c["index"] for c in res["greedy"]["choices"]] == [0, 1, 2], str(g))
        smp = [c["text"] for c in res["sampled"]["choices"]]
        alone = [res[f"alone-{i}"]["choices"][0]["text"] for i in range(4)]
        check(f"n > 1 (max-seqs {seqs}): sampled choice i is the request with seed + i alone, and they differ",
              smp == alone and len(set(smp)) > 1, f"{smp} vs {alone}")
        check(f"n > 1 (max-seqs {seqs}): usage counts every choice's tokens",
              res["sampled"]["usage"]["completion_tokens"] == sum(res[f"alone-{i}"]["usage"]["completion_tokens"]
                                                                   for i in range(4)))


def test_processors(model, tmp):
    """presence/frequency penalties, logit_bias and min_tokens: the same
    bytes in plain, auto and self-spec at --max-seqs 1 and 8; a frequency
    penalty changes a repetitive continuation; min_tokens holds off the end
    of a reply that ends early without it; a +100 logit_bias forces its token."""
    chat = [{"role": "user", "content": "Say OK."}]
    reqs = [
        {"custom_id": "rep", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "1, 2, 1, 2, 1, 2, 1, 2,", "max_tokens": 24, "temperature": 0}},
        {"custom_id": "rep-pen", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "1, 2, 1, 2, 1, 2, 1, 2,", "max_tokens": 24, "temperature": 0,
                  "frequency_penalty": 1.5, "presence_penalty": 0.3}},
        {"custom_id": "short", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": chat, "max_tokens": 40, "temperature": 0}},
        {"custom_id": "short-min", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": chat, "max_tokens": 40, "temperature": 0, "min_tokens": 30}},
        {"custom_id": "bias", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "The sky is", "max_tokens": 6, "temperature": 0, "logit_bias": {"1000": 100},
                  "logprobs": 1}},
        {"custom_id": "sampled-pen", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "Here is a list of fruits:", "max_tokens": 24, "temperature": 0.8, "seed": 9,
                  "frequency_penalty": 1.0, "logit_bias": {"1000": -5}}},
    ]
    inp = os.path.join(tmp, "proc.jsonl")
    write_jsonl(inp, reqs)
    outs = {}
    for mode in ("plain", "auto", "self-spec"):
        for seqs in (1, 8):
            out = os.path.join(tmp, f"proc-{mode}-{seqs}.jsonl")
            rc, err = run_batch(model, inp, out, ["--mode", mode, "--max-seqs", str(seqs)])
            check(f"processors: batch --mode {mode} --max-seqs {seqs} exits 0", rc == 0, err[-400:])
            outs[(mode, seqs)] = sorted(open(out, "rb").readlines()) if rc == 0 else []
    out = os.path.join(tmp, "proc-noamx.jsonl")   # the build's kernel instead of AMX: the same bits
    rc, err = run_batch(model, inp, out, ["--mode", "auto", "--max-seqs", "8", "--amx", "off"])
    outs[("auto", "amx off")] = sorted(open(out, "rb").readlines()) if rc == 0 else []
    ref = outs[("plain", 1)]
    check("processors: the same bytes in plain/auto/self-spec at max-seqs 1 and 8, and with --amx off",
          ref and all(v == ref for v in outs.values()), str([k for k, v in outs.items() if v != ref]))
    res = {c: v[0][0] for c, v in read_results(os.path.join(tmp, "proc-plain-1.jsonl")).items()}
    check("processors: a frequency penalty changes a repetitive continuation",
          text_of(res["rep"]) != text_of(res["rep-pen"]), f"{text_of(res['rep'])!r}")
    u = lambda c: res[c]["response"]["body"]["usage"]["completion_tokens"]
    check("processors: min_tokens holds off the end (at least 30 tokens; without it "
          f"{u('short')})", u("short-min") >= 30, f"{u('short')} / {u('short-min')}")
    btoks = res["bias"]["response"]["body"]["choices"][0]["logprobs"]["tokens"]
    check("processors: a +100 logit_bias makes its token the only one chosen",
          u("bias") == 6 and len(btoks) == 6 and len(set(btoks)) == 1, repr(btoks))
    # --usage-details: the draft tokens accepted and rejected, in usage
    out = os.path.join(tmp, "proc-details.jsonl")
    rc, err = run_batch(model, inp, out, ["--mode", "self-spec", "--usage-details", "--max-seqs", "1"])
    dets = [v[0][0]["response"]["body"] for v in read_results(out).values()] if rc == 0 else []
    check("--usage-details: completion_tokens_details with accepted/rejected draft tokens; a fingerprint",
          dets and all(0 <= b["usage"]["completion_tokens_details"]["accepted_prediction_tokens"]
                       <= b["usage"]["completion_tokens"] and
                       b["usage"]["completion_tokens_details"]["rejected_prediction_tokens"] >= 0 and
                       b["system_fingerprint"].startswith("fp_") for b in dets)
          and sum(b["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] for b in dets) > 0,
          str(dets[:1])[:400])
    # one request after another: the two with the same chat start from the prefix cache
    check("--usage-details: prompt_tokens_details.cached_tokens, > 0 where prompts repeat",
          dets and all(0 <= b["usage"]["prompt_tokens_details"]["cached_tokens"] < b["usage"]["prompt_tokens"]
                       for b in dets)
          and sum(b["usage"]["prompt_tokens_details"]["cached_tokens"] for b in dets) >= 16,
          str([b["usage"] for b in dets])[:400])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print(f"skip: {a.model} not found (run make setup)")
        return 0
    if not os.access(BIN, os.X_OK):
        print("FAIL: build bin/selfspec first (make)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        test_bad_lines(a.model, tmp)
        test_stdin_pipe(a.model, tmp)
        test_kill_and_resume(a.model, tmp)
        test_identical_to_generate(a.model, tmp)
        test_logprobs(a.model, tmp)
        test_n_choices(a.model, tmp)
        test_processors(a.model, tmp)
    total = sum(1 for _ in FAILURES)
    print(f"test_batch: {'FAILED' if FAILURES else 'all passed'}")
    for f in FAILURES:
        print("  " + f[:2000])
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
