#!/usr/bin/env python3
"""Run test suites one after another and say how each went.

    python3 tests/run_suites.py [--keep-going] NAME=COMMAND ...

Each COMMAND is a shell command line (run from the current folder). Its
output streams through; after it, one line gives the suite's verdict and
time. At the end: a table of every suite's time and the closing line
`N passed, N failed`. The exit status is 1 when any suite failed.

With --keep-going every suite runs even after a failure (`make test`);
without it the run stops at the first failure (`make check`, where a
failure usually means a broken build of everything after it).
"""
import subprocess
import sys
import time


def main(argv):
    keep_going = False
    suites = []
    for a in argv:
        if a == "--keep-going":
            keep_going = True
        elif "=" in a:
            name, cmd = a.split("=", 1)
            suites.append((name, cmd))
        else:
            print(f"run_suites: expected NAME=COMMAND, got {a!r}", file=sys.stderr)
            return 2
    results = []
    t_all = time.time()
    for name, cmd in suites:
        print(f"== {name}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, shell=True)
        secs = time.time() - t0
        results.append((name, rc, secs))
        print(f"-- {name}: {'ok' if rc == 0 else f'FAILED (exit status {rc})'} in {secs:.1f} s", flush=True)
        if rc != 0 and not keep_going:
            break
    width = max((len(n) for n, _, _ in results), default=4)
    print("\nsuite times:")
    for name, rc, secs in results:
        print(f"  {name:<{width}}  {secs:7.1f} s  {'ok' if rc == 0 else 'FAILED'}")
    passed = sum(1 for _, rc, _ in results if rc == 0)
    failed = len(results) - passed
    not_run = len(suites) - len(results)
    tail = f", {not_run} not run" if not_run else ""
    print(f"total {time.time() - t_all:.1f} s")
    print(f"{passed} passed, {failed} failed{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
