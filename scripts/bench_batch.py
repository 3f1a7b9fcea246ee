#!/usr/bin/env python3
"""Batch-throughput benchmark: selfspec's batching engine vs llama.cpp.

The workload: 64 completion requests (a fixed, deterministic prompt set in
this file: 16 paragraphs on different topics x 4 framings, about 128 prompt
tokens each), each generating 128 tokens (max_tokens 128, ignore_eos,
temperature 0), SmolLM2-135M, 2 threads.

selfspec runs the whole set as one OpenAI batch file:
    bin/selfspec batch -i IN.jsonl -o OUT.jsonl --max-seqs B --mode MODE -t 2
and its figure is output tokens per second summed over the batch, taken from
the JSON summary line it prints on stderr: output_tokens / seconds (the clock
starts after the model is loaded and includes prefill and all decoding).
The output file is deleted before every run (batch resumes from it).

llama.cpp runs its own tool, built natively by scripts/build_llama_cpp.sh:
    llama-batched-bench -m MODEL -c 33000 -b 2048 -ub 512 -npp 128 -ntg 128
        -npl 1,4,16,32,64 -t 2
and its figure is the S_TG t/s column (generation tokens/s summed over the
B parallel sequences) of the row for each parallel count B.

Runs are interleaved (for each repetition: every selfspec config, then one
llama-batched-bench invocation covering all B) so all configs see the same
machine noise; the table reports medians over --runs repetitions.

Whole work is also reported: (prompt + output tokens) over the same seconds
for selfspec, llama-batched-bench's S column (all tokens over its total
time) for llama.cpp, and with --base-bin PATH the same for a second selfspec
binary (an older commit's build) run interleaved with the same modes.

Floors checked (pass/fail lines at the end):
  * selfspec (auto, the default mode) >= 2x llama.cpp S_TG at B=32 (goal 3x);
  * auto within 3% of plain (auto/plain >= 0.97) at every max-seqs;
  * at max-seqs 1, auto within 3% of the better of plain and self-spec
    (self-spec is run at max-seqs 1 for this even when not in --modes).

Usage:
    python3 scripts/bench_batch.py                      # full: 3 runs, 64 requests
    python3 scripts/bench_batch.py --runs 5 --json build/bench_batch.json
    python3 scripts/bench_batch.py --modes plain,auto,self-spec
    python3 scripts/bench_batch.py --quick --runs 1 --seqs 1,4   # smoke test
    python3 scripts/bench_batch.py --no-llama           # selfspec only
    python3 scripts/bench_batch.py --seqs 32 --base-bin /tmp/base/bin/selfspec   # against an older build
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_BIN = os.path.join(REPO, "bin", "selfspec")
DEFAULT_LLAMA = os.path.join(REPO, ".deps", "llama.cpp", "build", "bin", "llama-batched-bench")

# ----------------------------------------------------------------------------
# the prompt set: 16 topics x 4 framings = 64 prompts of about 128 tokens

TOPICS = [
    "The printing press, developed by Johannes Gutenberg in Mainz around 1450, combined movable metal type, "
    "oil-based ink and an adapted screw press into a system that could reproduce text quickly and cheaply. "
    "Within a few decades print shops had opened in hundreds of European towns, and millions of books were in "
    "circulation. Scholars could now compare identical copies of a text, reformers spread pamphlets far beyond "
    "the reach of any preacher, and merchants, governments and scientists all found new uses for cheap printed paper.",

    "Honeybees live in colonies of tens of thousands of workers, a few hundred drones and a single queen. The "
    "workers change jobs as they age: young bees clean cells and feed larvae, middle-aged bees build comb and "
    "guard the entrance, and the oldest forage for nectar and pollen. A forager that finds a rich patch of "
    "flowers returns to the hive and performs a waggle dance whose angle and duration tell her sisters the "
    "direction and distance of the food, a language decoded by Karl von Frisch in the twentieth century.",

    "Plate tectonics explains why earthquakes and volcanoes cluster along narrow belts. The outer shell of the "
    "Earth is broken into about a dozen large plates that move a few centimetres a year over the hotter, softer "
    "mantle beneath. Where plates pull apart, as along the Mid-Atlantic Ridge, molten rock rises and forms new "
    "ocean floor. Where they collide, one plate may sink beneath the other, building chains of volcanoes, or "
    "the crust may crumple upward into mountain ranges such as the Himalayas, which are still rising today.",

    "Sourdough bread is leavened by a culture of wild yeasts and lactic acid bacteria rather than by commercial "
    "yeast. A baker keeps the starter alive by feeding it flour and water every day or two, discarding part of "
    "it each time. The bacteria produce lactic and acetic acids that give the loaf its tang and help it keep "
    "longer, while the yeasts produce the carbon dioxide that makes the dough rise. A long, cool fermentation "
    "develops flavour, and baking in a covered pot traps steam so that the crust stays thin, glossy and crisp.",

    "The Apollo program carried twelve astronauts to the surface of the Moon between 1969 and 1972. Each mission "
    "launched on a Saturn V rocket, the most powerful machine built at the time, which sent a command module and "
    "a lunar module toward the Moon. While one astronaut stayed in orbit, two descended to the surface, collected "
    "rocks, set up experiments and drove an electric rover on the later flights. The samples they brought home "
    "revealed that the Moon probably formed from debris thrown out when a large body struck the young Earth.",

    "Coral reefs cover less than one percent of the ocean floor yet shelter about a quarter of all marine "
    "species. The reef is built by tiny animals called polyps, which secrete skeletons of calcium carbonate and "
    "host microscopic algae in their tissues. The algae supply the polyps with sugars made by photosynthesis, "
    "and in return receive shelter and nutrients. When the water becomes too warm the partnership breaks down: "
    "the polyps expel their algae and turn white, and if the heat lasts long enough the bleached coral starves.",

    "A compiler translates a program written in a high-level language into instructions a processor can execute. "
    "It usually works in stages. The front end reads the source text, splits it into tokens, and parses them "
    "into a syntax tree, reporting errors along the way. The middle end converts the tree into an intermediate "
    "representation and applies optimisations such as constant folding, inlining and loop unrolling. The back "
    "end then chooses machine instructions, assigns variables to registers, and writes out an object file.",

    "The Silk Road was not a single road but a web of caravan routes linking China with Central Asia, Persia, "
    "India and the Mediterranean. Merchants rarely travelled its whole length; goods passed from hand to hand "
    "through oasis cities such as Samarkand and Kashgar. Silk, porcelain and paper moved west, while horses, "
    "glassware, silver and wool moved east. Just as important were the ideas that travelled with the traders: "
    "Buddhism spread into China along these routes, and techniques for making paper eventually reached Europe.",

    "Vaccines train the immune system to recognise a pathogen without causing the disease itself. Some contain a "
    "weakened or inactivated virus, others only a fragment such as a surface protein, and newer designs deliver "
    "genetic instructions that let the body's own cells make that protein for a short time. In each case the "
    "immune system responds by producing antibodies and memory cells. If the real pathogen appears later, the "
    "memory cells recognise it quickly and mount a strong defence before the infection can take hold and spread.",

    "Chess originated in India around the sixth century as a game called chaturanga, then spread to Persia and "
    "the Islamic world, and from there to Europe. The modern rules, including the powerful queen and the long "
    "diagonal moves of the bishop, were settled in Spain and Italy near the end of the fifteenth century. In the "
    "twentieth century the game became a field of study for computer scientists, and in 1997 the IBM machine "
    "Deep Blue defeated the world champion Garry Kasparov in a six-game match played in New York.",

    "Wind turbines convert the kinetic energy of moving air into electricity. The blades are shaped like aircraft "
    "wings, so that the wind creates lift and turns the rotor, which drives a generator through a gearbox or "
    "directly. Because the power in the wind rises with the cube of its speed, turbines are placed on tall towers "
    "and in windy places such as ridges, plains and offshore sites. A modern offshore turbine can be taller than "
    "two hundred metres and supply enough electricity for several thousand homes over the course of a year.",

    "The human heart is a muscular pump about the size of a fist that beats roughly one hundred thousand times a "
    "day. It has four chambers: the two upper atria receive blood and the two lower ventricles push it out. The "
    "right side sends oxygen-poor blood to the lungs, and the left side sends oxygen-rich blood to the rest of the "
    "body. Valves between the chambers keep the blood flowing in one direction, and an electrical signal that "
    "starts in a small cluster of cells called the sinoatrial node sets the rhythm of every single heartbeat.",

    "Impressionism began in Paris in the 1860s and 1870s, when a group of painters including Claude Monet, "
    "Pierre-Auguste Renoir and Camille Pissarro rejected the polished historical scenes favoured by the official "
    "Salon. They painted outdoors, in quick visible brushstrokes, trying to capture the changing effects of "
    "light and weather on ordinary scenes: railway stations, boating parties, haystacks and city boulevards. "
    "Critics at first mocked their work as unfinished, but within a few decades the style had become popular.",

    "Glaciers form where more snow falls in winter than melts in summer. Over many years the snow is compressed "
    "into dense ice, which begins to flow slowly downhill under its own weight. As it moves, a glacier plucks "
    "rocks from its bed and grinds them against the bedrock, carving U-shaped valleys, sharp ridges and deep "
    "basins that later fill with lakes. When the ice retreats it leaves behind piles of rubble called moraines. "
    "Many of the world's mountain glaciers are now shrinking quickly as average temperatures continue to rise.",

    "Double-entry bookkeeping records every transaction twice, once as a debit in one account and once as a "
    "credit in another, so that the books always balance. The method was described in print by the Italian "
    "mathematician Luca Pacioli in 1494, although merchants in Venice and Florence had used it for generations. "
    "Because errors show up as an imbalance, the system made it easier to run large trading firms with many "
    "partners and agents, and its basic structure still underlies the accounts of every modern company today.",

    "Octopuses are among the most intelligent invertebrates. An octopus has about five hundred million neurons, "
    "most of them in its eight arms, which can taste and touch and even act with some independence from the "
    "central brain. In laboratories octopuses have learned to open jars, find their way through mazes and "
    "recognise individual keepers. They can change the colour and texture of their skin in a fraction of a "
    "second to hide from predators, although, strangely, their eyes seem to contain only one type of light receptor.",
]

FRAMINGS = [
    "Read the following passage and continue it with a further paragraph in the same style.\n\n{p}\n\n",
    "Summarise the main points of this text for a student, then explain one of them in more detail.\n\n{p}\n\nSummary:",
    "Here is an encyclopedia excerpt.\n\n{p}\n\nWrite three questions a reader might ask about it, with answers.",
    "Passage: {p}\n\nTask: rewrite the passage in simpler words for a ten-year-old reader.\n\nRewritten passage:",
]


def prompt_set(n: int) -> list[str]:
    """The first n prompts of the fixed set (cycling if n > 64)."""
    out = []
    for i in range(n):
        k = i % (len(TOPICS) * len(FRAMINGS))
        topic, framing = k % len(TOPICS), k // len(TOPICS)
        out.append(FRAMINGS[framing].format(p=TOPICS[topic]))
    return out


def write_batch_file(path: str, prompts: list[str], max_tokens: int) -> None:
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            req = {"custom_id": f"req-{i:03d}", "method": "POST", "url": "/v1/completions",
                   "body": {"prompt": p, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
            f.write(json.dumps(req) + "\n")


# ----------------------------------------------------------------------------
# helpers

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec="{:.1f}"):
    return spec.format(x) if x is not None else "-"


def print_table(hdr: list[str], rows: list[list[str]]) -> None:
    """A plain-text table, columns right-aligned to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    print(" | ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))


def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "avx2": None, "avx512f": None,
            "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", txt, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
        m = re.search(r"^flags\s*:\s*(.+)$", txt, re.M)
        if m:
            flags = set(m.group(1).split())
            info["avx2"] = "avx2" in flags
            info["avx512f"] = "avx512f" in flags
            info["avx512_flags"] = sorted(f for f in flags if f.startswith("avx512"))
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------
# selfspec

def run_selfspec(args, in_path: str, tmp: str, mode: str, seqs: int, n_req: int, binary: str | None = None) -> dict:
    out_path = os.path.join(tmp, f"out-{mode}-{seqs}.jsonl")
    if os.path.exists(out_path):
        os.remove(out_path)   # batch resumes from an existing output file
    cmd = [binary or args.bin, "batch", "-m", args.model, "-i", in_path, "-o", out_path, "--max-seqs", str(seqs),
           "--mode", mode, "-t", str(args.threads)]
    if args.max_batch_tokens:
        cmd += ["--max-batch-tokens", str(args.max_batch_tokens)]
    if args.kv_mem:
        cmd += ["--kv-mem", str(args.kv_mem)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    summary = None
    for line in reversed(p.stderr.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line.startswith("{") and '"output_tokens"' in line:
            try:
                summary = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    rec = {"engine": "selfspec", "mode": mode, "max_seqs": seqs, "rc": p.returncode, "wall_s": round(wall, 3),
           "cmd": " ".join(cmd)}
    if p.returncode != 0 or summary is None:
        rec["error"] = (p.stderr.strip().splitlines() or ["no summary line"])[-1][:500]
        rec["tok_s"] = None
        return rec
    rec["summary"] = summary
    secs = summary.get("seconds") or 0
    rec["tok_s"] = summary["output_tokens"] / secs if secs else None
    rec["total_s"] = (summary["output_tokens"] + summary.get("prompt_tokens", 0)) / secs if secs else None
    want = n_req * args.max_tokens
    if summary.get("output_tokens") != want or summary.get("succeeded", n_req) != n_req:
        rec["warning"] = (f"expected {n_req} requests x {args.max_tokens} tokens = {want}, got "
                          f"{summary.get('succeeded')} requests, {summary.get('output_tokens')} tokens")
    if os.path.exists(out_path):
        os.remove(out_path)
    return rec


# ----------------------------------------------------------------------------
# llama.cpp

def parse_batched_bench(text: str) -> dict[int, dict]:
    """Rows of llama-batched-bench's table (markdown, or JSONL with -o jsonl),
    keyed by the parallel count B.  Each row: pp, tg, b, s_tg, s_pp, t_tg, ..."""
    rows: dict[int, dict] = {}
    header = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{") and "speed_tg" in line:      # -o jsonl
            try:
                d = json.loads(line)
                b = int(d["pl"])
                rows[b] = {"pp": d.get("pp"), "tg": d.get("tg"), "b": b, "n_kv": d.get("n_kv"),
                           "t_pp": d.get("t_pp"), "s_pp": d.get("speed_pp"), "t_tg": d.get("t_tg"),
                           "s_tg": d.get("speed_tg"), "t": d.get("t"), "s": d.get("speed")}
            except (ValueError, KeyError, TypeError):
                pass
            continue
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if any(re.fullmatch(r"S_TG\s*t/s", c, re.I) for c in cells):
            header = [re.sub(r"\s+", " ", c).upper() for c in cells]
            continue
        if header is None or all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue
        if len(cells) != len(header):
            continue
        d = dict(zip(header, cells))
        try:
            b = int(d["B"])
            row = {"pp": int(d.get("PP", 0)), "tg": int(d.get("TG", 0)), "b": b}
            for key, col in (("n_kv", "N_KV"), ("t_pp", "T_PP S"), ("s_pp", "S_PP T/S"), ("t_tg", "T_TG S"),
                             ("s_tg", "S_TG T/S"), ("t", "T S"), ("s", "S T/S")):
                if col in d:
                    row[key] = float(d[col])
        except (ValueError, KeyError):
            continue
        rows[b] = row
    return rows


def run_llama(args, seqs: list[int]) -> dict:
    ctx = max(33000, max(seqs) * (args.prompt_tokens + args.max_tokens) + 64)
    cmd = [args.llama_bin, "-m", args.model, "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", str(args.prompt_tokens), "-ntg", str(args.max_tokens), "-npl", ",".join(map(str, seqs)),
           "-t", str(args.threads)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    rows = parse_batched_bench(p.stdout + "\n" + p.stderr)
    rec = {"engine": "llama.cpp", "rc": p.returncode, "wall_s": round(wall, 3), "cmd": " ".join(cmd),
           "rows": {str(b): r for b, r in rows.items()}}
    if p.returncode != 0 or not rows:
        rec["error"] = ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1][:500]
        rec["output_tail"] = (p.stdout + p.stderr)[-3000:]
    return rec


# ----------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--seqs", default="1,4,16,32,64", help="max-seqs / parallel counts (default 1,4,16,32,64)")
    ap.add_argument("--modes", default="plain,auto", help="selfspec modes (default plain,auto; also self-spec)")
    ap.add_argument("--quick", action="store_true", help="16 requests instead of 64 (smoke test)")
    ap.add_argument("--requests", type=int, default=None, help="number of requests (default 64, 16 with --quick)")
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument("--json", metavar="OUT", help="write all raw figures as JSON")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="llama-batched-bench -npp (default 128)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="pass --max-batch-tokens to selfspec")
    ap.add_argument("--kv-mem", type=int, default=None, help="pass --kv-mem MB to selfspec")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--bin", default=DEFAULT_BIN, help="selfspec binary")
    ap.add_argument("--llama-bin", default=DEFAULT_LLAMA, help="llama-batched-bench binary")
    ap.add_argument("--base-bin", default=None,
                    help="a second selfspec binary (e.g. an older commit's) run with the same modes, interleaved; "
                         "its total tokens/s is the baseline of the total-throughput table")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run at most")
    args = ap.parse_args()

    seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("plain", "auto", "self-spec"):
            ap.error(f"unknown mode {m!r}")
    n_req = args.requests or (16 if args.quick else 64)

    for path, what in ((args.bin, "selfspec binary (make -j2 all)"), (args.model, "model (scripts/setup.sh)")):
        if not os.path.exists(path):
            print(f"bench_batch: missing {what}: {path}", file=sys.stderr)
            return 1
    use_llama = not args.no_llama
    if use_llama and not os.access(args.llama_bin, os.X_OK):
        print(f"bench_batch: no llama-batched-bench at {args.llama_bin} (run scripts/build_llama_cpp.sh); "
              "skipping llama.cpp", file=sys.stderr)
        use_llama = False

    if args.base_bin and not os.access(args.base_bin, os.X_OK):
        print(f"bench_batch: no selfspec binary at {args.base_bin}", file=sys.stderr)
        return 1
    configs = [(m, s) for s in seqs for m in modes]
    base_configs = [(m, s) for s in seqs for m in modes] if args.base_bin else []
    # the max-seqs 1 floor compares auto with self-spec, so run self-spec at 1 too
    if 1 in seqs and "auto" in modes and "self-spec" not in modes:
        configs.append(("self-spec", 1))

    mach = machine_info()
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# bench_batch  {date}  selfspec {git_rev() or '?'}")
    print(f"# machine: {mach['cpu']}, {mach['cores']} logical cores, AVX2 {'yes' if mach['avx2'] else 'no'}, "
          f"AVX-512 {'yes' if mach['avx512f'] else 'no'}; load average at start "
          f"{', '.join(f'{x:.2f}' for x in mach.get('loadavg', ()))}")
    print(f"# workload: {n_req} requests x {args.max_tokens} tokens (ignore_eos, temperature 0), "
          f"{args.threads} threads, model {os.path.basename(args.model)}; {args.runs} interleaved run(s)")
    sys.stdout.flush()

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_batch-") as tmp:
        in_path = os.path.join(tmp, "batch.jsonl")
        write_batch_file(in_path, prompt_set(n_req), args.max_tokens)
        for rep in range(args.runs):
            for mode, s in configs:
                r = run_selfspec(args, in_path, tmp, mode, s, n_req)
                r["rep"] = rep
                results.append(r)
                extra = ""
                if r.get("summary"):
                    sm = r["summary"]
                    extra = (f" prompt {sm.get('prompt_tokens')} tok, {sm.get('seconds')} s, "
                             f"acc.len {sm.get('mean_acceptance_length')}")
                print(f"  run {rep + 1}/{args.runs} selfspec {mode:<9} max-seqs {s:>3}: "
                      f"{fmt(r['tok_s'])} tok/s{extra}" + (f"  ERROR {r['error']}" if r.get("error") else "")
                      + (f"  WARNING {r['warning']}" if r.get("warning") else ""), flush=True)
            for mode, s in base_configs:
                r = run_selfspec(args, in_path, tmp, mode, s, n_req, args.base_bin)
                r["rep"], r["engine"] = rep, "base"
                results.append(r)
                print(f"  run {rep + 1}/{args.runs} base     {mode:<9} max-seqs {s:>3}: {fmt(r['tok_s'])} tok/s, "
                      f"total {fmt(r.get('total_s'))} tok/s" + (f"  ERROR {r['error']}" if r.get("error") else ""),
                      flush=True)
            if use_llama:
                r = run_llama(args, seqs)
                r["rep"] = rep
                results.append(r)
                got = ", ".join(f"B={b}: {fmt(row.get('s_tg'))}" for b, row in sorted(
                    ((int(k), v) for k, v in r["rows"].items())))
                print(f"  run {rep + 1}/{args.runs} llama.cpp S_TG t/s: {got}"
                      + (f"  ERROR {r['error']}" if r.get("error") else ""), flush=True)
                if r.get("error") and r.get("output_tail"):
                    print(r["output_tail"], file=sys.stderr)

    # medians
    def sel(mode, s):
        return median([r["tok_s"] for r in results if r["engine"] == "selfspec" and r["mode"] == mode
                       and r["max_seqs"] == s])

    def lla(s):
        return median([r["rows"].get(str(s), {}).get("s_tg") for r in results if r["engine"] == "llama.cpp"])

    all_modes = modes + (["self-spec"] if ("self-spec", 1) in configs and "self-spec" not in modes else [])
    med = {s: {m: sel(m, s) for m in all_modes} for s in seqs}
    llm = {s: lla(s) for s in seqs} if use_llama else {s: None for s in seqs}
    prompt_tok = median([r["summary"]["prompt_tokens"] / r["summary"]["requests"] for r in results
                         if r.get("summary") and r["summary"].get("requests")])

    print()
    print(f"selfspec output tok/s summed over the batch (median of {args.runs}); mean prompt "
          f"{fmt(prompt_tok)} tokens; llama.cpp: llama-batched-bench S_TG t/s, -npp {args.prompt_tokens} "
          f"-ntg {args.max_tokens}")
    has_ss = "self-spec" in modes
    hdr = ["max-seqs", "plain tok/s", "auto tok/s", "auto/plain"] + (["self-spec tok/s"] if has_ss else []) + \
          ["llama.cpp S_TG", "plain/llama.cpp", "auto/llama.cpp"]
    rows = []
    for s in seqs:
        p, a = med[s].get("plain"), med[s].get("auto")
        row = [str(s), fmt(p), fmt(a), fmt(ratio(a, p), "{:.3f}")]
        if has_ss:
            row.append(fmt(med[s].get("self-spec")))
        row += [fmt(llm[s]), fmt(ratio(p, llm[s]), "{:.2f}x"), fmt(ratio(a, llm[s]), "{:.2f}x")]
        rows.append(row)
    print_table(hdr, rows)
    if ("self-spec", 1) in configs and not has_ss:
        print(f"(self-spec at max-seqs 1: {fmt(med[1].get('self-spec'))} tok/s)")

    # whole work: prompt + output tokens over the same seconds, against the
    # base binary and against llama-batched-bench's S column (total tokens
    # over its total time)
    def tot(engine, mode, s):
        return median([r.get("total_s") for r in results if r["engine"] == engine and r.get("mode") == mode
                       and r.get("max_seqs") == s])

    tmed = {s: {m: tot("selfspec", m, s) for m in modes} for s in seqs}
    bmed = {s: {m: tot("base", m, s) for m in modes} for s in seqs}
    lls = {s: median([r["rows"].get(str(s), {}).get("s") for r in results if r["engine"] == "llama.cpp"])
           for s in seqs} if use_llama else {s: None for s in seqs}
    print()
    print(f"whole work: (prompt + output tokens) / seconds, median of {args.runs}"
          + (f"; base = {args.base_bin}" if args.base_bin else "") + "; llama.cpp: S t/s (total)")
    hdr = ["max-seqs"] + [f"{m} total" for m in modes] + ([f"base {m}" for m in modes] + ["best/base"]
                                                         if args.base_bin else []) + ["llama.cpp S", "best/llama.cpp"]
    rows = []
    for s in seqs:
        best = max([x for x in tmed[s].values() if x is not None], default=None)
        bbest = max([x for x in bmed[s].values() if x is not None], default=None)
        row = [str(s)] + [fmt(tmed[s][m]) for m in modes]
        if args.base_bin:
            row += [fmt(bmed[s][m]) for m in modes] + [fmt(ratio(best, bbest), "{:.2f}x")]
        row += [fmt(lls[s]), fmt(ratio(best, lls[s]), "{:.2f}x")]
        rows.append(row)
    print_table(hdr, rows)

    # floors
    print()
    checks = []

    def check(name, ok, detail):
        status = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        checks.append({"check": name, "status": status.strip(), "detail": detail})
        print(f"{status} {name}: {detail}")

    if 32 in seqs and use_llama:
        best = med[32].get("auto") if med[32].get("auto") is not None else med[32].get("plain")
        r = ratio(best, llm[32])
        check("selfspec >= 2x llama.cpp at B=32 (goal 3x)", None if r is None else r >= 2.0,
              f"{'auto' if med[32].get('auto') is not None else 'plain'} {fmt(best)} / llama.cpp {fmt(llm[32])}"
              f" = {fmt(r, '{:.2f}x')}" + ("" if r is None else ("; goal 3x met" if r >= 3.0 else "; goal 3x not met")))
    else:
        check("selfspec >= 2x llama.cpp at B=32 (goal 3x)", None, "needs max-seqs 32 and llama.cpp")
    if 32 in seqs and args.base_bin:
        best = max([x for x in tmed[32].values() if x is not None], default=None)
        bbest = max([x for x in bmed[32].values() if x is not None], default=None)
        r = ratio(best, bbest)
        check("whole work >= 2x the base binary at max-seqs 32", None if r is None else r >= 2.0,
              f"{fmt(best)} / {fmt(bbest)} total tok/s = {fmt(r, '{:.2f}x')}")
    if 32 in seqs and use_llama:
        best = max([x for x in tmed[32].values() if x is not None], default=None)
        r = ratio(best, lls[32])
        check("whole work >= 6x llama.cpp at B=32 (total over total time)", None if r is None else r >= 6.0,
              f"{fmt(best)} / llama.cpp S {fmt(lls[32])} = {fmt(r, '{:.2f}x')}")
    if "plain" in modes and "auto" in modes:
        for s in seqs:
            r = ratio(med[s]["auto"], med[s]["plain"])
            check(f"auto within 3% of plain at max-seqs {s}", None if r is None else r >= 0.97,
                  f"auto/plain = {fmt(r, '{:.3f}')}" + ("" if r is None or r >= 1.0 else " (slower)"))
    else:
        check("auto within 3% of plain", None, "needs --modes plain,auto")
    if 1 in seqs and "auto" in modes:
        a, p, sp = med[1].get("auto"), med[1].get("plain"), med[1].get("self-spec")
        better = max([x for x in (p, sp) if x is not None], default=None)
        r = ratio(a, better)
        check("auto at max-seqs 1 as fast as max(plain, self-spec)", None if r is None else r >= 0.97,
              f"auto {fmt(a)} vs plain {fmt(p)}, self-spec {fmt(sp)}: auto/best = {fmt(r, '{:.3f}')}"
              " (3% tolerance)")
    print(f"# finished {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"date": date, "machine": mach, "git": git_rev(), "args": vars(args), "requests": n_req,
                       "configs": configs, "results": results,
                       "medians": {"selfspec": {str(s): med[s] for s in seqs},
                                   "llama_cpp_s_tg": {str(s): llm[s] for s in seqs},
                                   "selfspec_total": {str(s): tmed[s] for s in seqs},
                                   "base_total": {str(s): bmed[s] for s in seqs},
                                   "llama_cpp_s": {str(s): lls[s] for s in seqs},
                                   "mean_prompt_tokens": prompt_tok},
                       "checks": checks}, f, indent=1)
        print(f"# raw figures in {args.json}")
    failed = any(r.get("error") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
