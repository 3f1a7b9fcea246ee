#!/usr/bin/env python3
"""Layering check: no file includes a header of a layer it may not use.

The engine library is common/<layer>/, one folder per layer (ARCHITECTURE.md
draws them). A file may include headers of its own layer and of the layers
listed for it in ALLOWED below, always spelled "<layer>/<header>"; the
generated protobuf header belongs to ipc. The processes (verifier/, drafter/)
may include any layer of common/ but not each other; tests/ and scripts/ may
include anything. Run by `make test`; `--self-test` checks the checker on a
made-up tree with one violation of each kind.

Exit 0 when the tree is clean; 1 with one line per violation otherwise.
"""
import os
import re
import sys
import tempfile

ALLOWED = {
    "util": [],
    "format": ["util"],
    "kernels": ["util", "format"],
    "model": ["util", "format", "kernels"],
    # the CUDA backend's sources (model/cuda_backend.h is their API; nothing
    # but the processes includes a header of this folder)
    "cuda": ["util", "format", "kernels", "model"],
    "text": ["util", "format"],
    "decode": ["util", "format", "kernels", "model", "text"],
    "tune": ["util", "format", "kernels", "model", "text", "decode"],
    "ipc": ["util", "format", "kernels", "model", "text", "decode"],
    "api": ["util", "format", "kernels", "model", "text", "decode"],
    "engine": ["util", "format", "kernels", "model", "text", "decode"],
    "serve": ["util", "format", "kernels", "model", "text", "decode", "api", "engine"],
}
GENERATED = {"selfspec.pb-c.h": "ipc"}
PROCESSES = ["verifier", "drafter"]
SOURCE = re.compile(r"\.(c|h|cu|cuh)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def header_owner(inc):
    """The layer (or process folder) a quoted include names, or None."""
    if inc in GENERATED:
        return GENERATED[inc]
    head = inc.split("/", 1)[0]
    if "/" in inc and (head in ALLOWED or head in PROCESSES):
        return head
    return None


def check(root):
    problems = []
    for top in ["common"] + PROCESSES:
        base = os.path.join(root, top)
        for dirpath, _, names in os.walk(base):
            for name in sorted(names):
                if not SOURCE.search(name):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                parts = rel.split(os.sep)
                if top == "common":
                    if len(parts) != 3 or parts[1] not in ALLOWED:
                        problems.append(f"{rel}: not inside a layer folder common/<layer>/")
                        continue
                    mine = parts[1]
                    may = set(ALLOWED[mine]) | {mine}
                else:
                    mine = top
                    may = set(ALLOWED) | {top}
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                for m in INCLUDE.finditer(text):
                    inc = m.group(1)
                    line = text.count("\n", 0, m.start()) + 1
                    owner = header_owner(inc)
                    if owner is None:
                        local = os.path.join(dirpath, inc)
                        if top != "common" and os.path.exists(local):
                            continue   # a process's own header, beside it
                        problems.append(f'{rel}:{line}: #include "{inc}" names no layer (write "<layer>/{inc}")')
                    elif owner not in may:
                        problems.append(f'{rel}:{line}: {mine} may not include "{inc}" ({owner})')
    return problems


def self_test():
    bad = {
        "common/util/util.h": '#include "model/model.h"\n',          # util above nothing
        "common/model/model.h": '#include "util/util.h"\n#include "decode/spec.h"\n',
        "common/text/tok.c": '#include "tok.h"\n',                    # no layer prefix
        "common/loose.c": "",                                         # outside a layer
        "drafter/d.c": '#include "verifier/cli.h"\n',                 # process to process
        "verifier/v.c": '#include "v.h"\n#include "decode/spec.h"\n', # both fine
        "verifier/v.h": "",
        "common/ipc/pipe.c": '#include "selfspec.pb-c.h"\n#include "model/model.h"\n',  # fine
    }
    with tempfile.TemporaryDirectory() as d:
        for rel, body in bad.items():
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                f.write(body)
        got = check(d)
    want = ["common/util/util.h:1", "common/model/model.h:2", "common/text/tok.c:1",
            "common/loose.c", "drafter/d.c:1"]
    ok = len(got) == len(want) and all(any(g.startswith(w) for g in got) for w in want)
    print("check_layers self-test:", "ok" if ok else "FAILED")
    for g in got:
        print("   ", g)
    return 0 if ok else 1


def main():
    if "--self-test" in sys.argv:
        return self_test()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if self_test() != 0:
        return 1
    problems = check(root)
    for p in problems:
        print("layering:", p)
    if problems:
        print(f"layering: {len(problems)} violation(s); see scripts/check_layers.py and ARCHITECTURE.md")
        return 1
    print("layering: ok (" + ", ".join(f"{k} <- {{{','.join(v)}}}" for k, v in ALLOWED.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
