#!/usr/bin/env python3
"""End-to-end tests of `selfspec serve` (OpenAI-compatible HTTP) on the real model.

Run from the repository root (make test does):
    python3 tests/test_serve.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]

  - the OpenAI Python client (`openai`): completions, chat, and both
    streamed; every text equals `selfspec generate --mode plain` alone (greedy);
    stream_options.include_usage gives the usage chunk;
  - 8 concurrent clients (streaming and not, chat and completion) each get
    the same tokens as `generate` alone;
  - /v1/models, /health, /metrics (counts what was served);
  - bad requests get their 4xx and the server goes on: wrong or missing API
    key (401), top_p out of range, wrong types, not JSON, prompt + max_tokens
    over the context (400), unknown path (404), wrong method (405), a body
    over --body-limit (413), more requests than --max-seqs + --queue (503),
    a client that disconnects mid-stream, a slow client (closed after
    --timeout);
  - SIGTERM: exits 0.
Skips with a message when the model file or the openai package is absent.
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
FAILURES = []
KEY = "sk-selfspec-test"


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


PROMPTS = [("completion", "The capital of France is"), ("chat", "Name a color."),
           ("completion", "Once upon a time, a fox"), ("chat", "Write one sentence about rivers."),
           ("completion", "def add(a, b):"), ("chat", "What is two plus two?"),
           ("completion", "The best way to learn is"), ("chat", "Say hello in French.")]
MAX_TOKENS = 12
REPEAT_PROMPT = ("The list: apple, banana, cherry, grape, lemon, mango, apple, banana, cherry, grape, lemon, mango, "
                 "apple, banana, cherry, grape, lemon, mango, apple, banana,")
REPEAT_TOKENS = 40


def generate(model, kind, prompt, max_tokens=MAX_TOKENS):
    args = [BIN, "generate", "-m", model, "--mode", "plain", "-t", "1", "-n", str(max_tokens), "-p", prompt]
    if kind == "chat":
        args.append("--chat")
    p = subprocess.run(args, capture_output=True, timeout=120)
    out = p.stdout.decode("utf-8", errors="replace")
    return out[:-1] if out.endswith("\n") else out


def raw(port, method, path, body=None, headers=None, key=KEY, timeout=60):
    """(status, body bytes) of one raw HTTP request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def wait_up(port, tries=300):
    """True once /health answers 200 (the server loaded its model)."""
    for _ in range(tries):
        try:
            if raw(port, "GET", "/health", key=None, timeout=2)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def ask(client, kind, prompt, stream):
    if kind == "completion":
        if stream:
            return "".join(ch.choices[0].text for ch in client.completions.create(
                model="selfspec", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True))
        return client.completions.create(model="selfspec", prompt=prompt, max_tokens=MAX_TOKENS,
                                         temperature=0).choices[0].text
    msgs = [{"role": "user", "content": prompt}]
    if stream:
        return "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
            model="selfspec", messages=msgs, max_tokens=MAX_TOKENS, temperature=0, stream=True))
    return client.chat.completions.create(model="selfspec", messages=msgs, max_tokens=MAX_TOKENS,
                                          temperature=0).choices[0].message.content


def run(model):
    import openai
    t0 = time.time()
    want = [generate(model, k, p) for k, p in PROMPTS]
    want_repeat = generate(model, "completion", REPEAT_PROMPT, REPEAT_TOKENS)
    print(f"     (generate references: {time.time() - t0:.1f}s)", flush=True)
    port = free_port()
    log = open(os.devnull, "wb") if not os.environ.get("SERVE_LOG") else open(os.environ["SERVE_LOG"], "wb")
    srv = subprocess.Popen([BIN, "serve", "-m", model, "--port", str(port), "--api-key", KEY, "-t", "1",
                            "--max-seqs", "8", "--queue", "4", "--body-limit", "65536", "--timeout", "2"],
                           stdout=subprocess.DEVNULL, stderr=log)
    try:
        up = wait_up(port)
        check("serve starts, /health 200", up)
        if not up:
            return
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
        # speculation as batch sets it up: a prompt with repeats drafts from the
        # context, and its text is plain decoding's (first: the measured policy
        # has seen nothing yet that could switch drafting off)
        got = client.completions.create(model="selfspec", prompt=REPEAT_PROMPT, max_tokens=REPEAT_TOKENS,
                                        temperature=0).choices[0].text
        check("a prompt with repeats: same text as plain generate", got == want_repeat, f"{got!r}")
        st, data = raw(port, "GET", "/metrics", key=None)
        ctx = [l for l in data.decode().splitlines()
               if l.startswith("selfspec:spec_decode_num_accepted_tokens_by_source_total{") and 'source="context"' in l]
        check("/metrics reports the context drafts that were accepted", ctx and float(ctx[0].rsplit(" ", 1)[1]) > 0,
              "\n".join(ctx))

        models = client.models.list()
        check("/v1/models lists the model", len(models.data) == 1 and models.data[0].id)
        for stream in (False, True):
            for i in (0, 1):
                kind, prompt = PROMPTS[i]
                got = ask(client, kind, prompt, stream)
                check(f"openai client {kind}{' stream' if stream else ''}: same text as generate", got == want[i],
                      f"{got!r} vs {want[i]!r}")

        # stream_options.include_usage: a last chunk with the usage, no choices
        chunks = list(client.completions.create(model="selfspec", prompt=PROMPTS[0][1], max_tokens=MAX_TOKENS,
                                                temperature=0, stream=True, stream_options={"include_usage": True}))
        whole = client.completions.create(model="selfspec", prompt=PROMPTS[0][1], max_tokens=MAX_TOKENS,
                                          temperature=0)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        last = chunks[-1]
        check("stream_options.include_usage: a usage chunk equal to the whole response's usage",
              not last.choices and last.usage is not None and text == want[0]
              and last.usage.completion_tokens == whole.usage.completion_tokens
              and last.usage.prompt_tokens == whole.usage.prompt_tokens, str(last))

        # logprobs through the openai client: chat (content entries) and
        # completions (the legacy shape), the text unchanged
        r = client.chat.completions.create(model="selfspec", messages=[{"role": "user", "content": PROMPTS[1][1]}],
                                           max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=3)
        ents = r.choices[0].logprobs.content if r.choices[0].logprobs else []
        check("openai client chat logprobs: an entry per token, top 3 each, the text unchanged",
              r.choices[0].message.content == want[1] and ents and all(len(e.top_logprobs) == 3 and e.logprob <= 0 and
              e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in ents), str(r.choices[0])[:500])
        c = client.completions.create(model="selfspec", prompt=PROMPTS[0][1], max_tokens=MAX_TOKENS, temperature=0,
                                      logprobs=2)
        lp = c.choices[0].logprobs
        check("openai client completion logprobs: tokens, token_logprobs, top_logprobs, text_offset",
              c.choices[0].text == want[0] and lp and len(lp.tokens) == len(lp.token_logprobs) ==
              len(lp.top_logprobs) == len(lp.text_offset) > 0, str(c.choices[0])[:500])

        # streamed: the same log-probabilities, chunk by chunk; n > 1 with
        # indexed choices; every response and chunk with system_fingerprint
        msgs = [{"role": "user", "content": PROMPTS[1][1]}]
        chunks = list(client.chat.completions.create(model="selfspec", messages=msgs, max_tokens=MAX_TOKENS,
                                                     temperature=0, logprobs=True, top_logprobs=3, stream=True))
        sents = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
        check("streamed chat logprobs: the entries of the whole response, in order, across the chunks",
              [(e.token, e.logprob) for e in sents] == [(e.token, e.logprob) for e in ents]
              and "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want[1],
              f"{len(sents)} vs {len(ents)}")
        sc = list(client.completions.create(model="selfspec", prompt=PROMPTS[0][1], max_tokens=MAX_TOKENS,
                                            temperature=0, logprobs=2, stream=True))
        stoks = [t for ch in sc if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
        check("streamed completion logprobs: the tokens of the whole response", stoks == lp.tokens,
              f"{stoks} vs {lp.tokens}")
        nch = list(client.chat.completions.create(model="selfspec", messages=msgs, max_tokens=MAX_TOKENS,
                                                  temperature=0, n=3, stream=True))
        texts = {}
        for ch in nch:
            for c in ch.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        fins = sorted(c.index for ch in nch for c in ch.choices if c.finish_reason)
        check("streamed n = 3: three indexed choices, each the greedy text, each finished",
              texts == {0: want[1], 1: want[1], 2: want[1]} and fins == [0, 1, 2], str(texts))
        check("system_fingerprint on responses and chunks",
              r.system_fingerprint and r.system_fingerprint.startswith("fp_")
              and all(ch.system_fingerprint == r.system_fingerprint for ch in chunks), str(r.system_fingerprint))

        # the rest of the body through the client: penalties, logit_bias,
        # max_completion_tokens, 4 stop strings, seed, user, min_tokens and
        # ignore_eos (extra_body): the same message as batch gives
        body = {"messages": [{"role": "user", "content": "List five animals."}], "max_completion_tokens": 30,
                "temperature": 0.7, "seed": 5, "frequency_penalty": 0.8, "presence_penalty": 0.4,
                "logit_bias": {"28": -3.0, "30": 2.0}, "stop": ["zebra", "Zebra", "###", "\n\n\n"], "user": "u-1"}
        extra = {"min_tokens": 6, "ignore_eos": False}
        got_full = client.chat.completions.create(model="selfspec", extra_body=extra, **body)
        with tempfile.TemporaryDirectory() as tmpd:
            inp, outp = os.path.join(tmpd, "in.jsonl"), os.path.join(tmpd, "out.jsonl")
            with open(inp, "w") as f:
                f.write(json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                                    "body": dict(body, **extra)}) + "\n")
            subprocess.run([BIN, "batch", "-m", model, "-i", inp, "-o", outp, "-q", "-t", "1"], timeout=300)
            with open(outp) as f:
                bline = json.loads(f.read())["response"]["body"]["choices"][0]["message"]["content"]
        check("penalties, logit_bias, max_completion_tokens, stop, seed, user, min_tokens through the client "
              "= batch", got_full.choices[0].message.content == bline, f"{got_full.choices[0].message.content!r} "
              f"vs {bline!r}")

        # concurrent clients
        got = [None] * len(PROMPTS)

        def one(i):
            try:
                got[i] = ask(client, PROMPTS[i][0], PROMPTS[i][1], stream=i % 3 == 0)
            except Exception as e:   # noqa: BLE001 - reported below
                got[i] = f"error: {e}"
        th = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
        for t in th:
            t.start()
        for t in th:
            t.join()
        bad = [i for i in range(len(PROMPTS)) if got[i] != want[i]]
        check(f"{len(PROMPTS)} concurrent clients: each the same text as generate alone", not bad,
              "; ".join(f"{i}: {got[i]!r} vs {want[i]!r}" for i in bad[:3]))

        # bad requests
        comp = {"prompt": "Hello", "max_tokens": 4}
        cases = [
            ("wrong API key", "POST", "/v1/completions", comp, "sk-wrong", 401),
            ("no API key", "POST", "/v1/completions", comp, None, 401),
            ("top_p out of range", "POST", "/v1/completions", dict(comp, top_p=1.5), KEY, 400),
            ("max_tokens of the wrong type", "POST", "/v1/completions", dict(comp, max_tokens="four"), KEY, 400),
            ("messages of the wrong type", "POST", "/v1/chat/completions", {"messages": "hi"}, KEY, 400),
            ("not JSON", "POST", "/v1/completions", "{not json", KEY, 400),
            ("prompt + max_tokens over the context", "POST", "/v1/completions",
             {"prompt": "Hello", "max_tokens": 100000}, KEY, 400),
            ("prompt + max_tokens over the context (stream)", "POST", "/v1/completions",
             {"prompt": "Hello", "max_tokens": 100000, "stream": True}, KEY, 400),
            ("top_logprobs over 20", "POST", "/v1/chat/completions",
             {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21}, KEY, 400),
            ("unknown path", "POST", "/v1/embeddings", comp, KEY, 404),
            ("wrong method", "GET", "/v1/completions", None, KEY, 405),
            ("body over --body-limit", "POST", "/v1/completions",
             {"prompt": "x" * 70000, "max_tokens": 1}, KEY, 413),
        ]
        for name, method, path, body, key, status in cases:
            st, data = raw(port, method, path, body, key=key)
            is_err = False
            try:
                is_err = "message" in json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            check(f"{name}: {status} with an OpenAI error body", st == status and is_err, f"{st} {data[:200]!r}")

        # over max_seqs + queue: some 503s, the rest done
        statuses = []
        lock = threading.Lock()

        def flood():
            try:
                st, _ = raw(port, "POST", "/v1/completions", {"prompt": "Tell me a story", "max_tokens": 24,
                                                              "temperature": 0})
            except OSError as e:
                st = str(e)
            with lock:
                statuses.append(st)
        th = [threading.Thread(target=flood) for _ in range(24)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        check("24 at once over --max-seqs 8 + --queue 4: some 503, the others 200",
              503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, str(statuses))

        # a client that goes away mid-stream
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"prompt": "List every country:", "max_tokens": 400, "stream": True})
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        first = s.recv(4096)
        s.close()
        check("a streaming client sees data, then hangs up", b"200" in first.split(b"\r\n")[0])

        # a slow client: headers never finished, closed after --timeout
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(15)
        t1 = time.time()
        try:
            closed = s.recv(100) is not None
        except socket.timeout:
            closed = False
        s.close()
        check(f"a slow client is disconnected after --timeout ({time.time() - t1:.1f}s)",
              closed and time.time() - t1 < 14)

        # still alive and right
        got = ask(client, PROMPTS[2][0], PROMPTS[2][1], False)
        check("after all that the server still answers, the same text", got == want[2], f"{got!r}")
        st, _ = raw(port, "GET", "/health", key=None)
        check("/health 200 after all that", st == 200)
        st, data = raw(port, "GET", "/metrics", key=None)
        text = data.decode()

        def val(prefix):
            for line in text.splitlines():
                if line.startswith(prefix):
                    return float(line.rsplit(" ", 1)[1])
            return -1
        check("/metrics counts the served requests and tokens",
              st == 200 and val("selfspec:request_success_total{finished_reason=\"length\"")
              + val("selfspec:request_success_total{finished_reason=\"stop\"") >= 20
              and val("selfspec:generation_tokens_total{") > 100
              and val("selfspec:time_to_first_token_seconds_count{") >= 20
              and val("selfspec:request_failure_total{reason=\"invalid\"") >= 5
              and "selfspec:spec_decode_num_drafts_total{" in text,
              " ".join(l for l in text.splitlines() if not l.startswith("#") and "bucket" not in l)[:1500])
        srv.send_signal(signal.SIGTERM)
        try:
            rc = srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = "hung"
        check("SIGTERM: serve exits 0", rc == 0, str(rc))
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print(f"skip: no model at {a.model}")
        return 0
    try:
        import openai  # noqa: F401
    except ImportError:
        print("skip: the openai package is not installed (scripts/setup.sh installs it)")
        return 0
    t0 = time.time()
    run(a.model)
    print(f"test_serve: {time.time() - t0:.1f}s")
    if FAILURES:
        print("\n".join(["FAILURES:"] + FAILURES))
        return 1
    print("test_serve: all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
