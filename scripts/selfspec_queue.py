#!/usr/bin/env python3
"""selfspec_queue.py - the producer's side of `selfspec worker` (redis-py).

    selfspec_queue.py --redis URL --stream KEY submit FILE
    selfspec_queue.py --redis URL --stream KEY collect FILE -o OUT [--timeout S]
    selfspec_queue.py --redis URL --stream KEY run FILE -o OUT      (submit, then collect)

FILE is an OpenAI batch file (one request a line, as `selfspec batch -i`).
`submit` adds one stream entry per non-blank line: field `request` = the line,
field `created` = the file's mtime (so every result carries the `created`
`selfspec batch -i FILE` would write: the lines are byte-identical).
`collect` reads the results stream (<stream>:results, fields custom_id and
result) and the dead-letter stream (<stream>:dead), and writes OUT in the
input's order: each request's result line, or for a dead-lettered one an
error line (status 400) with the worker's reason. It waits until every
custom_id of FILE is answered; --timeout S gives up after S seconds without
progress (exit 1, the missing ones listed). A progress bar goes to stderr.
"""
import argparse
import json
import os
import sys
import time


def connect(url):
    try:
        import redis
    except ImportError:
        sys.exit("selfspec_queue.py: needs redis-py (pip install redis)")
    return redis.Redis.from_url(url)


def progress(done, total, t0, what):
    frac = done / total if total else 1.0
    fill = int(frac * 30)
    el = time.time() - t0
    rate = done / el if el > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    sys.stderr.write(f"\r{what} [{'#' * fill}{'.' * (30 - fill)}] {done}/{total}  {rate:.1f}/s  ETA {eta:.0f}s ")
    sys.stderr.flush()


def read_lines(path):
    """(custom_id or None, raw line) for every non-blank line."""
    out = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            cid = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                    cid = obj["custom_id"]
            except ValueError:
                pass
            out.append((cid, line))
    return out


def submit(r, args):
    lines = read_lines(args.file)
    created = str(int(os.stat(args.file).st_mtime))
    t0 = time.time()
    pipe = r.pipeline(transaction=False)
    for i, (_, line) in enumerate(lines, 1):
        pipe.xadd(args.stream, {"request": line, "created": created})
        if i % 500 == 0 or i == len(lines):
            pipe.execute()
            if not args.quiet:
                progress(i, len(lines), t0, "submit ")
    if not args.quiet:
        sys.stderr.write("\n")
    print(f"submitted {len(lines)} jobs to {args.stream}", file=sys.stderr)
    return 0


def error_line(cid, entry_id, reason):
    return json.dumps({"id": f"batch_req_dead_{entry_id}", "custom_id": cid,
                       "response": {"status_code": 400, "request_id": f"req_dead_{entry_id}", "body": None},
                       "error": {"message": reason, "type": "invalid_request_error", "param": None,
                                 "code": None}}, separators=(",", ":")) + "\n"


def collect(r, args):
    lines = read_lines(args.file)
    want = [cid for cid, _ in lines if cid is not None]
    wanted = set(want)
    results_key = args.results or f"{args.stream}:results"
    dead_key = args.dead_letter or f"{args.stream}:dead"
    got = {}
    pos = {results_key: "0-0", dead_key: "0-0"}
    t0 = last = time.time()
    while len(got) < len(wanted):
        reply = r.xread(pos, count=1000, block=500)
        for key, entries in reply or []:
            key = key.decode() if isinstance(key, bytes) else key
            for eid, f in entries:
                pos[key] = eid
                if key == results_key:
                    cid = f.get(b"custom_id", b"").decode("utf-8", "replace")
                    if cid in wanted and cid not in got:
                        got[cid] = f.get(b"result", b"").decode("utf-8", "replace")
                else:
                    try:
                        cid = json.loads(f.get(b"request", b""))["custom_id"]
                    except (ValueError, KeyError, TypeError):
                        cid = None
                    if isinstance(cid, str) and cid in wanted and cid not in got:
                        got[cid] = error_line(cid, f.get(b"id", eid).decode(),
                                              f.get(b"reason", b"").decode("utf-8", "replace"))
                last = time.time()
        if not args.quiet:
            progress(len(got), len(wanted), t0, "collect")
        if args.timeout and time.time() - last > args.timeout:
            break
    if not args.quiet:
        sys.stderr.write("\n")
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        seen = set()
        for cid in want:
            if cid in got and cid not in seen:
                f.write(got[cid])
                seen.add(cid)
    os.replace(tmp, args.output)
    missing = [c for c in want if c not in got]
    if missing:
        print(f"selfspec_queue.py: {len(missing)} request(s) without a result, e.g. {missing[:5]}", file=sys.stderr)
        return 1
    print(f"collected {len(got)} results into {args.output}", file=sys.stderr)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--stream", required=True)
    ap.add_argument("--results", help="results stream (default <stream>:results)")
    ap.add_argument("--dead-letter", help="dead-letter stream (default <stream>:dead)")
    ap.add_argument("-q", "--quiet", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit")
    s.add_argument("file")
    for name in ("collect", "run"):
        c = sub.add_parser(name)
        c.add_argument("file")
        c.add_argument("-o", "--output", required=True)
        c.add_argument("--timeout", type=float, default=0, help="give up after S seconds without progress")
    args = ap.parse_args()
    r = connect(args.redis)
    if args.cmd == "submit":
        return submit(r, args)
    if args.cmd == "collect":
        return collect(r, args)
    rc = submit(r, args)
    return rc or collect(r, args)


if __name__ == "__main__":
    sys.exit(main())
