#!/usr/bin/env python3
"""Plain-decoding benchmark: selfspec vs llama.cpp, side by side.

Both engines run the same GGUF with the same thread count.  Runs are
interleaved (selfspec, llama.cpp, selfspec, llama.cpp, ...) so that both see
the same machine noise; the script reports medians and the ratio
selfspec / llama.cpp for

  * prefill tokens/s: a ~200-token prompt evaluated from a fresh context;
  * decode tokens/s:  128 greedy tokens generated one at a time (only the
                      decode loop is timed, not the prefill).

selfspec is run as a subprocess:
    bin/selfspec generate -m MODEL --mode plain -f PROMPTFILE -n 128 --ids \
        --stats --threads 2 --ignore-eos
which prints the generated ids on stdout and one JSON line on stderr with at
least prompt_tokens, generated_tokens, seconds, tokens_per_s,
prefill_tokens_per_s and decode_tokens_per_s (the figures used here are the
ones it reports, so its model load is not counted).

llama.cpp is run in-process through the `llama_cpp` binding (PyPI
llama-cpp-python): Llama(n_threads=T, n_threads_batch=T, n_batch=512); a
run is llm.reset(); llm.eval(prompt) (timed as prefill); then 128 x
(argmax of the last logits in numpy; llm.eval([tok])) (timed as decode).  The
per-token Python overhead of the binding is included in its decode figure.

The script also measures the machine's memory read bandwidth (a small C probe
compiled on the fly into build/, summing a 1 GiB buffer, best of 5, with 1
thread and with T threads; numpy as a fallback / cross-check) and the weight
bytes read per decoded token (from the GGUF tensor table, via the `gguf`
package), and from those the bandwidth bound on decode tokens/s for the GGUF
weights as stored and for an 8-bit arena (1.25 bytes/weight for matrices, f32
norms).

Results: a table on stdout and JSON in build/bench_plain.json.

Usage:
    python3 scripts/bench_plain.py                 # 5 interleaved runs of each
    python3 scripts/bench_plain.py --runs 9
    python3 scripts/bench_plain.py --skip-selfspec # llama.cpp + bandwidth only
    python3 scripts/bench_plain.py --only-bandwidth
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_BIN = os.path.join(REPO, "bin", "selfspec")
DEFAULT_OUT = os.path.join(REPO, "build", "bench_plain.json")

# Source text for the prefill prompt; it is cut to --prompt-tokens tokens.
PROMPT_SOURCE = (
    "The history of the printing press begins in the middle of the fifteenth "
    "century, when Johannes Gutenberg, a goldsmith from Mainz, combined several "
    "existing technologies into a system that could reproduce text quickly and "
    "cheaply. Movable type had been used before in East Asia, but Gutenberg's "
    "metal alloy, his oil-based ink and his adaptation of the screw press made "
    "mass production practical in Europe. Within a few decades printing shops "
    "had spread to hundreds of towns, and millions of books were in circulation. "
    "The consequences were profound. Scholars could compare identical copies of "
    "a text, which encouraged the standardisation of spelling and grammar. "
    "Religious reformers used pamphlets to spread their arguments far beyond "
    "the reach of any single preacher. Merchants printed price lists, "
    "governments printed laws, and scientists exchanged detailed descriptions "
    "of their experiments, which allowed results to be checked and extended by "
    "others. Literacy rates slowly rose as books became affordable to people "
    "outside the clergy and the nobility. Historians still debate how quickly "
    "these changes happened and how much credit belongs to the press itself "
    "rather than to the wider economic and social forces of the period, but "
    "few doubt that the ability to copy words mechanically changed the way "
    "knowledge was stored, shared and questioned. In the centuries that "
    "followed, improvements in paper making, steam power and typesetting "
    "machines lowered costs even further, preparing the ground for newspapers, "
    "public libraries and universal schooling."
)

BW_PROBE_C = r"""
/* Memory read-bandwidth probe: sum a large uint64 buffer, best of R passes. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: bwprobe MIB THREADS REPS\n"); return 2; }
    size_t bytes = ((size_t)atol(argv[1]) * (1u << 20) + (1u << 21) - 1) & ~(size_t)((1u << 21) - 1);
    size_t n = bytes / 8;  /* buffer rounded up to whole 2 MiB pages */
    int threads = atoi(argv[2]), reps = atoi(argv[3]);
    uint64_t *a = aligned_alloc(1u << 21, bytes);
    if (!a) { perror("aligned_alloc"); return 1; }
    /* 2 MiB pages where the kernel allows (as numpy does for big arrays):
       fewer TLB misses, so the probe measures DRAM rather than page walks. */
    madvise(a, bytes, MADV_HUGEPAGE);
    /* first touch with the same static schedule as the timed loop */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i;
    double best = 1e30; uint64_t sink = 0;
    for (int r = 0; r < reps; r++) {
        uint64_t s = 0;
        double t0 = now();
        #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double t = now() - t0;
        if (t < best) best = t;
        sink += s;
    }
    printf("%.4f %llu\n", (double)n * 8 / best / 1e9, (unsigned long long)sink);
    free(a);
    return 0;
}
"""


# ----------------------------------------------------------------------------
# helpers

def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "nproc": os.cpu_count(),
            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "L2 cache", "L3 cache", "CPU(s)"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# ----------------------------------------------------------------------------
# memory bandwidth

def bandwidth_c(mib: int, threads: int, reps: int, build_dir: str) -> float | None:
    """GB/s from the C probe, or None if it cannot be compiled/run."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not cc:
        return None
    os.makedirs(build_dir, exist_ok=True)
    src = os.path.join(build_dir, "bwprobe.c")
    exe = os.path.join(build_dir, "bwprobe")
    stale = not os.path.exists(exe) or not os.path.exists(src)
    if not stale:
        with open(src) as f:
            stale = f.read() != BW_PROBE_C
    if stale:
        with open(src, "w") as f:
            f.write(BW_PROBE_C)
        r = subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-o", exe, src],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"warning: bandwidth probe did not compile: {r.stderr.strip()}", file=sys.stderr)
            return None
    r = subprocess.run([exe, str(mib), str(threads), str(reps)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"warning: bandwidth probe failed: {r.stderr.strip()}", file=sys.stderr)
        return None
    return float(r.stdout.split()[0])


def bandwidth_numpy(mib: int, reps: int) -> float:
    """GB/s of np.sum over a float64 array (single thread; may be compute bound)."""
    a = np.ones(mib * (1 << 20) // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    gbs = a.nbytes / best / 1e9
    del a
    return gbs


def weight_bytes(model: str) -> dict:
    """Bytes of weights read per decoded token, from the GGUF tensor table.

    Every block tensor is read once per token.  The token embedding is only
    read one row per token, unless there is no output.weight: then the
    embedding is tied and read in full as the LM head.
    """
    import gguf

    reader = gguf.GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in tensors
    gguf_bytes = 0          # bytes per token as stored in the GGUF
    mat_weights = 0         # elements of matrices read per token
    vec_weights = 0         # elements of 1-D tensors (norms, biases)
    by_type: dict[str, int] = {}
    for name, t in tensors.items():
        n_el, n_by = int(t.n_elements), int(t.n_bytes)
        if name == "token_embd.weight" and not tied:
            rows = int(t.shape[-1])
            n_el, n_by = n_el // rows, n_by // rows   # one row per token
        gguf_bytes += n_by
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + n_by
        if len(t.shape) >= 2 and int(min(t.shape)) > 1 and not (name == "token_embd.weight" and not tied):
            mat_weights += n_el
        else:
            vec_weights += n_el
    arena8 = int(mat_weights * 1.25 + vec_weights * 4)
    return {"tied_embeddings": tied, "file_bytes": os.path.getsize(model),
            "gguf_bytes_per_token": gguf_bytes, "gguf_bytes_per_token_by_type": by_type,
            "matrix_weights_per_token": mat_weights, "vector_weights_per_token": vec_weights,
            "arena8_bytes_per_token": arena8,
            "note": "weights only; KV-cache and activation traffic not included"}


# ----------------------------------------------------------------------------
# llama.cpp

class LlamaBench:
    def __init__(self, model: str, threads: int, n_ctx: int):
        import llama_cpp
        self.version = llama_cpp.__version__
        self.llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, n_batch=512, logits_all=False,
                                   seed=0, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8")

    def last_logits(self) -> np.ndarray:
        """Logits of the last evaluated token, as a zero-copy numpy view.

        With logits_all=False the binding does not copy logits into
        llm.scores, so read llama.cpp's output buffer directly."""
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def run(self, prompt_ids: list[int], n_gen: int) -> dict:
        llm = self.llm
        llm.reset()  # fresh context: eval() drops KV cells beyond n_tokens (=0)
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        ids = []
        tok = int(np.argmax(self.last_logits()))
        t2 = time.perf_counter()
        for _ in range(n_gen):
            ids.append(tok)
            llm.eval([tok])
            tok = int(np.argmax(self.last_logits()))
        t3 = time.perf_counter()
        return {"prompt_tokens": len(prompt_ids), "generated_tokens": n_gen,
                "prefill_s": t1 - t0, "decode_s": t3 - t2,
                "prefill_tokens_per_s": len(prompt_ids) / (t1 - t0),
                "decode_tokens_per_s": n_gen / (t3 - t2), "ids": ids}


# ----------------------------------------------------------------------------
# selfspec

STATS_KEYS = ("prompt_tokens", "generated_tokens", "seconds", "tokens_per_s",
              "prefill_tokens_per_s", "decode_tokens_per_s")


def selfspec_run(binary: str, model: str, prompt_file: str, n_gen: int, threads: int,
                 timeout: float) -> dict:
    cmd = [binary, "generate", "-m", model, "--mode", "plain", "-f", prompt_file,
           "-n", str(n_gen), "--ids", "--stats", "--threads", str(threads), "--ignore-eos"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"selfspec exited {p.returncode}: {' '.join(cmd)}\n"
                           f"stderr:\n{p.stderr[-2000:]}")
    stats = None
    for line in reversed(p.stderr.splitlines()):   # the last JSON object line
        line = line.strip()
        if line.startswith("{"):
            try:
                stats = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if stats is None:
        raise RuntimeError(f"selfspec printed no JSON stats line on stderr:\n{p.stderr[-2000:]}")
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise RuntimeError(f"selfspec stats line lacks {missing}: {stats}")
    stats["ids"] = [int(x) for x in re.findall(r"-?\d+", p.stdout)]
    stats["wall_s"] = wall
    return stats


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------

def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL, help="GGUF model (default: %(default)s)")
    ap.add_argument("--selfspec", default=DEFAULT_BIN, help="selfspec binary (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per engine (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per engine (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both engines (default: %(default)s)")
    ap.add_argument("--prompt-tokens", type=int, default=200, help="prefill prompt length (default: %(default)s)")
    ap.add_argument("-n", "--gen", type=int, default=128, help="tokens to decode (default: %(default)s)")
    ap.add_argument("--bw-mib", type=int, default=1024, help="bandwidth probe buffer MiB (default: %(default)s)")
    ap.add_argument("--skip-selfspec", action="store_true", help="benchmark llama.cpp only")
    ap.add_argument("--skip-llama", action="store_true", help="benchmark selfspec only")
    ap.add_argument("--skip-bandwidth", action="store_true", help="do not run the bandwidth probe")
    ap.add_argument("--only-bandwidth", action="store_true",
                    help="only measure bandwidth and the decode bound")
    ap.add_argument("--timeout", type=float, default=300, help="per selfspec run timeout, s")
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    args = ap.parse_args()

    do_self = not args.skip_selfspec and not args.only_bandwidth
    do_llama = not args.skip_llama and not args.only_bandwidth
    if not os.path.exists(args.model):
        sys.exit(f"error: model {args.model} not found (run scripts/setup.sh)")
    if do_self and not os.access(args.selfspec, os.X_OK):
        sys.exit(f"error: selfspec binary {args.selfspec} not found or not executable.\n"
                 f"       Build it with `make`, point --selfspec at it, or pass "
                 f"--skip-selfspec to benchmark llama.cpp only.")
    build_dir = os.path.join(REPO, "build")
    os.makedirs(build_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    result: dict = {
        "script": "scripts/bench_plain.py",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": os.path.relpath(args.model, REPO) if args.model.startswith(REPO) else args.model,
        "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
        "gen_tokens": args.gen, "cpu": cpu_info(),
        "order": "interleaved: selfspec, llama.cpp, selfspec, llama.cpp, ...",
        "loadavg_start": os.getloadavg(),   # other work on the machine skews results
    }

    # --- weights per token and bandwidth ---------------------------------
    wb = weight_bytes(args.model)
    result["weights"] = wb
    if not args.skip_bandwidth:
        print(f"measuring memory bandwidth ({args.bw_mib} MiB buffer, best of 5) ...", file=sys.stderr)
        bw = {"method": f"C probe: uint64 sum over {args.bw_mib} MiB, best of 5 (build/bwprobe)",
              "gb_s_1thread": bandwidth_c(args.bw_mib, 1, 5, build_dir),
              f"gb_s_{args.threads}threads": bandwidth_c(args.bw_mib, args.threads, 5, build_dir),
              "numpy_sum_gb_s_1thread": bandwidth_numpy(args.bw_mib, 5)}
        # An upper bound on decode speed uses the best bandwidth seen by any probe.
        best = max(v for k, v in bw.items() if k != "method" and v)
        bw["bound_basis_gb_s"] = best
        result["bandwidth"] = bw
        result["decode_bound_tokens_per_s"] = {
            "gguf": best * 1e9 / wb["gguf_bytes_per_token"],
            "arena8": best * 1e9 / wb["arena8_bytes_per_token"],
        }

    # --- engines ------------------------------------------------------------
    self_runs: list[dict] = []
    llama_runs: list[dict] = []
    if do_self or do_llama:
        # The tokenizer of llama.cpp defines the prompt; write its text for selfspec.
        if do_llama:
            lb = LlamaBench(args.model, args.threads, n_ctx=max(1024, args.prompt_tokens + args.gen + 16))
            result["llama_cpp_python_version"] = lb.version
            ids = lb.tokenize(PROMPT_SOURCE)
            if len(ids) < args.prompt_tokens:
                sys.exit(f"error: built-in prompt is only {len(ids)} tokens")
            prompt_text = lb.detokenize(ids[: args.prompt_tokens])
            prompt_ids = lb.tokenize(prompt_text)
        else:
            lb = None
            words = PROMPT_SOURCE.split()   # rough: ~1.3 tokens per word
            prompt_text = " ".join(words[: int(args.prompt_tokens / 1.3)])
            prompt_ids = []
        pf = os.path.join(build_dir, "bench_prompt.txt")
        with open(pf, "w", encoding="utf-8") as f:
            f.write(prompt_text)
        result["prompt_file"] = os.path.relpath(pf, REPO) if pf.startswith(REPO) else pf
        result["prompt_tokens_llama"] = len(prompt_ids) or None

        for r in range(args.warmup + args.runs):
            timed = r >= args.warmup
            tag = f"run {r - args.warmup + 1}/{args.runs}" if timed else f"warm-up {r + 1}"
            if do_self:
                s = selfspec_run(args.selfspec, args.model, pf, args.gen, args.threads, args.timeout)
                print(f"{tag} selfspec : prefill {s['prefill_tokens_per_s']:8.1f} t/s  "
                      f"decode {s['decode_tokens_per_s']:7.1f} t/s", file=sys.stderr)
                if timed:
                    self_runs.append(s)
            if do_llama:
                lr = lb.run(prompt_ids, args.gen)
                print(f"{tag} llama.cpp: prefill {lr['prefill_tokens_per_s']:8.1f} t/s  "
                      f"decode {lr['decode_tokens_per_s']:7.1f} t/s", file=sys.stderr)
                if timed:
                    llama_runs.append(lr)

    def summary(runs: list[dict]) -> dict | None:
        if not runs:
            return None
        return {"prefill_tokens_per_s": median([x["prefill_tokens_per_s"] for x in runs]),
                "decode_tokens_per_s": median([x["decode_tokens_per_s"] for x in runs]),
                # best run: the least disturbed one on a shared machine
                "prefill_tokens_per_s_best": max(x["prefill_tokens_per_s"] for x in runs),
                "decode_tokens_per_s_best": max(x["decode_tokens_per_s"] for x in runs),
                "prefill_runs": [x["prefill_tokens_per_s"] for x in runs],
                "decode_runs": [x["decode_tokens_per_s"] for x in runs]}

    ss, ls = summary(self_runs), summary(llama_runs)
    result["selfspec"] = ss
    result["llama_cpp"] = ls
    if ss:
        result["selfspec"]["prompt_tokens"] = self_runs[0]["prompt_tokens"]
        result["selfspec"]["last_stats"] = {k: v for k, v in self_runs[-1].items() if k != "ids"}
    if ls:
        result["llama_cpp"]["prompt_tokens"] = llama_runs[0]["prompt_tokens"]
        result["llama_cpp"]["definition"] = (
            "prefill: llm.reset(); llm.eval(prompt) wall time; decode: n x "
            "(numpy argmax of llama_get_logits_ith(-1) + llm.eval([tok])) wall time, "
            "binding overhead included; KV cache F16 (llama.cpp default), flash_attn off")
    if ss and ls:
        result["ratio_selfspec_over_llama"] = {
            "prefill": ratio(ss["prefill_tokens_per_s"], ls["prefill_tokens_per_s"]),
            "decode": ratio(ss["decode_tokens_per_s"], ls["decode_tokens_per_s"])}
        if self_runs[0]["prompt_tokens"] != llama_runs[0]["prompt_tokens"]:
            print(f"warning: prompt token counts differ: selfspec {self_runs[0]['prompt_tokens']}"
                  f" vs llama.cpp {llama_runs[0]['prompt_tokens']}", file=sys.stderr)
        # Greedy outputs should agree up to numerical near-ties.
        result["greedy_first_divergence"] = first_divergence(self_runs[0]["ids"], llama_runs[0]["ids"])

    result["loadavg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)

    # --- table ---------------------------------------------------------------
    print(f"\nplain decoding, {args.threads} threads, median of {args.runs} runs, "
          f"model {os.path.basename(args.model)}")
    if ss or ls:
        print(f"{'':12s} {'prefill t/s':>12s} {'decode t/s':>11s}   {'(best runs)':>22s}")
        for name, s in (("selfspec", ss), ("llama.cpp", ls)):
            if s:
                print(f"{name:12s} {s['prefill_tokens_per_s']:12.1f} {s['decode_tokens_per_s']:11.1f}"
                      f"   {s['prefill_tokens_per_s_best']:11.1f} {s['decode_tokens_per_s_best']:10.1f}")
        if ss and ls:
            rr = result["ratio_selfspec_over_llama"]
            print(f"{'ratio s/l':12s} {rr['prefill']:12.3f} {rr['decode']:11.3f}   (of medians)")
            print(f"greedy ids first divergence: {result['greedy_first_divergence']}")
    print(f"weights read per token: GGUF {wb['gguf_bytes_per_token'] / 1e6:.1f} MB, "
          f"8-bit arena {wb['arena8_bytes_per_token'] / 1e6:.1f} MB "
          f"(tied embeddings: {wb['tied_embeddings']})")
    if "bandwidth" in result:
        bw = result["bandwidth"]
        print(f"read bandwidth: 1 thread {fmt(bw['gb_s_1thread'])} GB/s, "
              f"{args.threads} threads {fmt(bw[f'gb_s_{args.threads}threads'])} GB/s, "
              f"numpy sum {fmt(bw['numpy_sum_gb_s_1thread'])} GB/s")
        b = result["decode_bound_tokens_per_s"]
        print(f"decode bound (weights only): GGUF {b['gguf']:.1f} t/s, 8-bit arena {b['arena8']:.1f} t/s")
    print(f"load average: start {result['loadavg_start'][0]:.2f}, end {result['loadavg_end'][0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print(f"wrote {os.path.relpath(args.out, REPO) if args.out.startswith(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
