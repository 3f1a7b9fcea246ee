#!/usr/bin/env python3
"""End-to-end tests of `response_format` (JSON output constrained by a schema).

Run from the repository root (make test does):
    python3 tests/test_schema.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]

  - the matcher alone: random documents of every schema in
    tests/schemas/suite.json (build/test/schema_walk) parse and validate
    with the `jsonschema` package;
  - batch: every schema of the suite as a greedy chat request, some of them
    sampled with seeds too, and json_object requests, in --mode plain, auto
    and self-spec at --max-seqs 1 and 8: the six output files are
    byte-identical, every output that ended by itself ("stop") parses and
    validates, and the forced text was proposed as drafts (source "grammar"
    in the stats) and mostly accepted;
  - logprobs of a constrained request are the raw model's (the same as
    the unconstrained request's where the text agrees);
  - serve (the openai client) gives the same content as batch for
    json_schema and json_object; an unsupported schema is a 400 naming the
    keyword, an invalid response_format a 400;
  - worker (Redis Streams): the same result lines as batch, byte for byte.
Skips what needs what is absent (the model, jsonschema, openai, redis).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BIN = os.path.join("bin", "selfspec")
WALK = os.path.join("build", "test", "schema_walk")
SUITE = os.path.join("tests", "schemas", "suite.json")
FAILURES = []
CREATED = 1700000000


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        FAILURES.append(f"{name}: {detail}")


def load_suite():
    with open(SUITE) as f:
        return json.load(f)


def test_walk(suite):
    import jsonschema
    p = subprocess.run([WALK, SUITE, "40", "7"], capture_output=True, timeout=600)
    check("schema_walk runs without an inconsistency", p.returncode == 0, p.stderr.decode()[-800:])
    schemas = {s["name"]: s["schema"] for s in suite}
    n, bad, names = 0, [], set()
    for line in p.stdout.decode().split("\n"):   # not splitlines: U+2028 may be in a document
        if not line:
            continue
        d = json.loads(line)
        if "error" in d:
            bad.append(f"{d['name']}: refused: {d['error']}")
            continue
        n += 1
        names.add(d["name"])
        try:
            jsonschema.validate(json.loads(d["doc"]), schemas[d["name"]])
        except Exception as e:  # noqa: BLE001 - any failure is reported
            bad.append(f"{d['name']}: {d['doc'][:120]!r}: {str(e)[:200]}")
    check(f"{n} random documents of {len(names)} schemas parse and validate with jsonschema",
          not bad and len(names) == len(suite) and n >= 30 * len(suite), "\n".join(bad[:5]))


def requests(suite):
    reqs = []
    for i, s in enumerate(suite):
        body = {"messages": [{"role": "user", "content": s["prompt"]}], "max_tokens": 160, "temperature": 0,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": s["name"], "schema": s["schema"], "strict": True}}}
        reqs.append({"custom_id": s["name"], "method": "POST", "url": "/v1/chat/completions", "body": body})
        if i % 4 == 1:   # sampled, seeded: the same draws in every mode
            b = json.loads(json.dumps(body))
            b.update(temperature=0.7, top_p=0.95, seed=1000 + i)
            reqs.append({"custom_id": s["name"] + "-sampled", "method": "POST", "url": "/v1/chat/completions",
                         "body": b})
    for i, what in enumerate(["a book", "a city", "a recipe"]):
        reqs.append({"custom_id": f"object-{i}", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"messages": [{"role": "user", "content": f"Describe {what} as a JSON object."}],
                              "max_tokens": 120, "temperature": 0, "response_format": {"type": "json_object"}}})
    reqs.append({"custom_id": "completion", "method": "POST", "url": "/v1/completions",
                 "body": {"prompt": "A JSON record of a cat named Tom:", "max_tokens": 60, "temperature": 0,
                          "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "schema": {
                              "type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                               "age": {"type": "integer"}},
                              "required": ["name", "age"], "additionalProperties": False}}}}})
    return reqs


def run_batch(model, inp, out, extra):
    if os.path.exists(out):
        os.remove(out)
    t0 = time.time()
    p = subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", out] + extra, capture_output=True, timeout=1200)
    with open(out, newline="\n") as f:
        lines = sorted(f.read().split("\n")[:-1])
    stats = {}   # the summary: the last line on stderr
    try:
        stats = json.loads(p.stderr.decode().strip().rsplit("\n", 1)[-1])
    except ValueError:
        pass
    return p, lines, stats, time.time() - t0


def content(line):
    d = json.loads(line)
    if d["error"]:
        return None, None
    c = d["response"]["body"]["choices"][0]
    return (c["message"]["content"] if "message" in c else c["text"]), c["finish_reason"]


def test_batch(model, tmp, suite):
    import jsonschema
    reqs = requests(suite)
    inp = os.path.join(tmp, "schema.jsonl")
    with open(inp, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    os.utime(inp, (CREATED, CREATED))
    runs = {}
    for mode in ["plain", "auto", "self-spec"]:
        for seqs in ["1", "8"]:
            out = os.path.join(tmp, f"out-{mode}-{seqs}.jsonl")
            p, lines, stats, secs = run_batch(model, inp, out, ["--mode", mode, "--max-seqs", seqs])
            print(f"     ({mode}, max-seqs {seqs}: {secs:.1f}s)", flush=True)
            check(f"batch --mode {mode} --max-seqs {seqs} exits 0", p.returncode == 0, p.stderr.decode()[-500:])
            runs[(mode, seqs)] = (lines, stats)
    ref = runs[("plain", "1")][0]
    diff = [k for k, (lines, _) in runs.items() if lines != ref]
    check("result lines identical in plain/auto/self-spec at max-seqs 1 and 8", not diff, f"differ: {diff}")
    schemas = {s["name"]: s["schema"] for s in suite}
    by_id = {json.loads(l)["custom_id"]: l for l in ref}
    bad, length, stopped = [], [], 0
    for r in reqs:
        cid = r["custom_id"]
        text, finish = content(by_id[cid])
        if text is None:
            bad.append(f"{cid}: error {by_id[cid][:200]}")
            continue
        if finish != "stop":
            length.append(cid)
            continue
        stopped += 1
        rf = r["body"]["response_format"]
        try:
            v = json.loads(text)
            if rf["type"] == "json_schema":
                jsonschema.validate(v, rf["json_schema"]["schema"])
            else:
                assert isinstance(v, dict), "not an object"
        except Exception as e:  # noqa: BLE001
            bad.append(f"{cid}: {text[:150]!r}: {str(e)[:200]}")
    check(f"{stopped} outputs that ended by themselves parse and validate ({len(length)} hit max_tokens)",
          not bad and stopped >= 0.8 * len(reqs), "\n".join(bad[:6]) + f"\nlength: {length}")
    names = set(schemas)
    check("every schema of the suite ran", names <= set(by_id), str(names - set(by_id)))
    st = runs[("self-spec", "1")][1]
    src = st.get("sources", {})
    g = src.get("grammar", {})
    check("forced text is drafted for free (source 'grammar') and mostly accepted",
          g.get("blocks", 0) > 0 and g.get("acceptance_rate", 0) > 0.5, json.dumps(st)[:800])
    return reqs, by_id, inp


def test_logprobs(model, tmp):
    """A constrained greedy request's logprobs are the raw model's: where the
    unconstrained request emits the same tokens, the same numbers."""
    body = {"messages": [{"role": "user", "content": "Give a JSON object with a key 'a' set to 1."}],
            "max_tokens": 20, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    free = {"custom_id": "free", "method": "POST", "url": "/v1/chat/completions", "body": body}
    con = json.loads(json.dumps(free))
    con["custom_id"] = "con"
    con["body"]["response_format"] = {"type": "json_object"}
    inp = os.path.join(tmp, "lp.jsonl")
    with open(inp, "w") as f:
        f.write(json.dumps(free) + "\n" + json.dumps(con) + "\n")
    out = os.path.join(tmp, "lp-out.jsonl")
    p, lines, _, _ = run_batch(model, inp, out, ["--mode", "auto"])
    got = {json.loads(l)["custom_id"]: json.loads(l)["response"]["body"]["choices"][0]["logprobs"]["content"]
           for l in lines}
    a, b = got.get("free", []), got.get("con", [])
    same = 0
    for x, y in zip(a, b):
        if x["token"] != y["token"]:
            break
        if abs(x["logprob"] - y["logprob"]) > 1e-6:
            same = -1
            break
        same += 1
    check("constrained logprobs are the raw model's log-softmax (the common prefix agrees)",
          p.returncode == 0 and same >= 1 and len(b) > 0, f"{same}; {a[:3]} / {b[:3]}")


def test_serve(model, reqs, by_id):
    import openai
    from test_serve import KEY, free_port, raw, wait_up
    port = free_port()
    srv = subprocess.Popen([BIN, "serve", "-m", model, "--port", str(port), "--api-key", KEY, "-t", "1",
                            "--max-seqs", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up = wait_up(port)
        check("serve starts", up)
        if not up:
            return
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=300)
        chats = [r for r in reqs if r["url"] == "/v1/chat/completions"][::3]
        diff = []
        for r in chats:
            b = r["body"]
            kw = {k: b[k] for k in ("temperature", "top_p", "seed") if k in b}
            got = client.chat.completions.create(model="selfspec", messages=b["messages"], max_tokens=b["max_tokens"],
                                                 response_format=b["response_format"], **kw)
            if got.choices[0].message.content != content(by_id[r["custom_id"]])[0]:
                diff.append(r["custom_id"])
        check(f"serve: {len(chats)} constrained chat requests through the openai client = batch's content",
              not diff, str(diff))
        stream = client.chat.completions.create(model="selfspec", messages=chats[0]["body"]["messages"],
                                                max_tokens=chats[0]["body"]["max_tokens"], stream=True,
                                                response_format=chats[0]["body"]["response_format"])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        check("serve: streamed constrained output = batch's", text == content(by_id[chats[0]["custom_id"]])[0], text)
        msgs = [{"role": "user", "content": "hi"}]
        st, data = raw(port, "POST", "/v1/chat/completions", {"messages": msgs, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3}}}})
        check("serve: an unsupported keyword is a 400 naming it", st == 400 and b"minimum" in data, data[:300])
        st, data = raw(port, "POST", "/v1/chat/completions", {"messages": msgs, "response_format": {"type": "yaml"}})
        check("serve: an unknown response_format type is a 400", st == 400, data[:300])
        st, data = raw(port, "POST", "/v1/chat/completions", {"messages": msgs, "response_format": {
            "type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}})
        check("serve: json_schema without a name is a 400", st == 400 and b"name" in data, data[:300])
        st, data = raw(port, "GET", "/health", key=None)
        check("serve: still healthy after the bad requests", st == 200)
    finally:
        srv.terminate()
        srv.wait(timeout=60)


def test_worker(model, tmp, inp, by_id):
    import redis
    import test_worker as tw
    rd = tw.Redis(tmp)
    try:
        sub = subprocess.run([sys.executable, tw.QUEUE, "--redis", rd.url(), "--stream", "jobs", "submit", inp],
                             capture_output=True, timeout=120)
        check("worker: jobs submitted", sub.returncode == 0, sub.stderr.decode()[-300:])
        w = tw.Worker(model, rd.url(), "w0", tmp)
        r = redis.Redis(port=rd.port)
        n = len(by_id)
        done = tw.wait_until(lambda: r.xlen("jobs:results") >= n, 900, 0.5)
        res = {f[b"custom_id"].decode(): f[b"result"].decode() for _, f in r.xrange("jobs:results")}
        mism = [k for k, v in res.items() if v.rstrip("\n") != by_id.get(k)]
        check(f"worker: {len(res)} constrained results byte-identical to batch's", done and len(res) == n and not mism,
              f"{len(res)}/{n}, differ: {mism[:4]}")
        w.stop()
    finally:
        rd.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        print("skip: the jsonschema package is not installed (scripts/setup.sh installs it)")
        return 0
    t0 = time.time()
    suite = load_suite()
    check(f"the suite has at least 30 schemas ({len(suite)})", len(suite) >= 30)
    test_walk(suite)
    if not os.path.exists(a.model):
        print(f"skip the model tests: no model at {a.model}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            reqs, by_id, inp = test_batch(a.model, tmp, suite)
            test_logprobs(a.model, tmp)
            try:
                import openai  # noqa: F401
                test_serve(a.model, reqs, by_id)
            except ImportError:
                print("skip serve: no openai package")
            if shutil.which("redis-server"):
                test_worker(a.model, tmp, inp, by_id)
            else:
                print("skip worker: no redis-server")
    print(f"test_schema: {time.time() - t0:.1f}s")
    if FAILURES:
        print("\n".join(["FAILURES:"] + FAILURES))
        return 1
    print("test_schema: all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
