#!/usr/bin/env bash
# test_gpu_check.sh - scripts/gpu_check.sh and scripts/gpu_model_parts.sh on
# a machine without a GPU (a few seconds; nothing is compiled):
#   - the check's JSON parses and names the failed steps when steps fail,
#     crash (with a truncated fragment of the measuring program) or time
#     out, through python3's assembly and through the pure-bash path;
#   - a run killed with SIGKILL in the middle of a step leaves a JSON file
#     that parses and shows that step "running";
#   - a dry run with nothing forced passes (exit 0, no failed steps), and
#     --stage1 stops after the builds;
#   - the model split/join round trip: two parts under the limit, join from
#     the call folders and from the stash, sha256 mismatches refused.
# Uses GPU_CHECK_DRY (every step simulated) and GPU_CHECK_SIMULATE_FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fails=$((fails + 1)); }

# check JSON_FILE PYTHON_EXPR DESCRIPTION: the file parses and the expression
# over it (d) is true
check() {
    if python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
    then ok "$3"; else bad "$3 ($1: $2)"; fi
}

run_check() {   # run_check NAME [ENV=...]... -- [ARGS]: a dry check into $T/NAME.json; echoes the exit status
    local name=$1
    shift
    local envs=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    env GPU_CHECK_DRY=1 GPU_CHECK_DIR="$T/$name.run" GPU_CHECK_JSON="$T/$name/gpu_check.json" \
        GPU_CHECK_STASH="$T/stash-$name" OUT= "${envs[@]}" scripts/gpu_check.sh "$@" >"$T/$name.log" 2>&1
    echo $?
}

echo "== gpu_check.sh: failing, crashing and timing-out steps (python3 assembly)"
for py in 0 1; do
    what=$([ $py = 1 ] && echo "pure bash" || echo "python3")
    rc=$(run_check "fail$py" GPU_CHECK_NO_PYTHON=$py \
        GPU_CHECK_SIMULATE_FAIL="unit_build,measure:crash,cli_cuda_plain:timeout")
    J="$T/fail$py/gpu_check.json"
    [ "$rc" = 1 ] && ok "$what: exit status 1" || bad "$what: exit status $rc, wanted 1"
    check "$J" 'd["failed_steps"] == ["unit_build", "measure", "cli_cuda_plain"]' "$what: failed_steps names the three"
    check "$J" 'd["steps"]["unit_build"]["status"] == "failed" and d["steps"]["unit_build"]["rc"] == 1' \
        "$what: unit_build failed, rc 1"
    check "$J" 'd["steps"]["unit_test_cuda"]["status"] == "skipped"' "$what: unit_test_cuda skipped after it"
    check "$J" 'd["steps"]["measure"]["status"] == "crashed" and d["steps"]["measure"]["rc"] == 139' \
        "$what: measure crashed (SIGSEGV)"
    check "$J" 'd["measure"]["device"]["name"] == "simulated device"' "$what: measure's complete fragment kept"
    check "$J" 'd["measure"]["model"]["invalid_fragment"] is True' "$what: measure's truncated fragment kept as text"
    check "$J" 'd["steps"]["cli_cuda_plain"]["status"] == "timeout" and d["steps"]["cli_cuda_plain"]["rc"] == 124' \
        "$what: cli_cuda_plain timed out (rc 124)"
    check "$J" 'd["steps"]["cli_cuda_selfspec"]["status"] == "ok" and d["complete"] is True' \
        "$what: later steps still ran, run complete"
    check "$J" 'all(isinstance(s["seconds"], (int, float)) for s in d["steps"].values() if s["status"] != "skipped")' \
        "$what: every step that ran has its seconds"
done

echo "== gpu_check.sh: a build failure skips what needs it"
rc=$(run_check build GPU_CHECK_SIMULATE_FAIL="build")
check "$T/build/gpu_check.json" 'd["failed_steps"] == ["build"] and all(d["steps"][k]["status"] == "skipped" for k in ("unit_build", "driver_build", "unit_test_cuda", "measure")) and d["cli"]["skipped"] == "build failed"' \
    "build failed: builds, tests, measure and CLI skipped"
[ "$rc" = 1 ] && ok "exit status 1" || bad "exit status $rc"

echo "== gpu_check.sh: all steps simulated ok; --stage1"
rc=$(run_check pass)
check "$T/pass/gpu_check.json" 'd["failed_steps"] == [] and d["complete"] and d["stage"] == "check" and "cli_cuda_selfspec" in d["steps"]' \
    "dry run: no failed steps"
[ "$rc" = 0 ] && ok "exit status 0" || bad "exit status $rc"
rc=$(run_check stage1 -- --stage1)
check "$T/stage1/gpu_check.json" 'd["stage"] == "stage1" and list(d["steps"]) == ["stash", "deps", "build", "unit_build", "driver_build"] and d["failed_steps"] == []' \
    "--stage1: stash, deps and the builds only"
[ "$rc" = 0 ] && ok "stage 1 exit status 0" || bad "stage 1 exit status $rc"

echo "== gpu_check.sh: killed with SIGKILL inside a step"
setsid env GPU_CHECK_DRY=1 GPU_CHECK_DIR="$T/kill.run" GPU_CHECK_JSON="$T/kill/gpu_check.json" OUT= \
    GPU_CHECK_SIMULATE_FAIL="measure:timeout" GPU_CHECK_SIM_TIMEOUT=60 scripts/gpu_check.sh >"$T/kill.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    grep -q '"measure": {"status": "running"' "$T/kill/gpu_check.json" 2>/dev/null && break
    sleep 0.1
done
kill -KILL -- "-$pid" 2>/dev/null
wait "$pid" 2>/dev/null
check "$T/kill/gpu_check.json" 'd["steps"]["measure"]["status"] == "running" and d["complete"] is False and "measure" in d["failed_steps"]' \
    "the file left behind parses and shows measure running"

echo "== gpu_model_parts.sh: split / join round trip"
P="$T/parts"
head -c 3500000 /dev/urandom >"$T/m.gguf"
if GPU_PARTS_DIR="$P" GPU_PARTS_MAX_MIB=2 scripts/gpu_model_parts.sh split "$T/m.gguf" >"$T/split.log" 2>&1; then
    ok "split into two parts under 2 MiB"
else
    bad "split: $(cat "$T/split.log")"
fi
s1=$(stat -c %s "$P/call1/model.part1" 2>/dev/null || echo 0)
s2=$(stat -c %s "$P/call2/model.part2" 2>/dev/null || echo 0)
[ $((s1 + s2)) = 3500000 ] && [ "$s1" -lt 2097152 ] && [ "$s2" -lt 2097152 ] && ok "parts $s1 + $s2 bytes" ||
    bad "part sizes $s1 + $s2"
cmp -s "$P/call1/model.manifest" "$P/call2/model.manifest" && ok "the manifest travels with both parts" ||
    bad "manifests differ"
j() { GPU_PARTS_DIR="$P" GPU_CHECK_STASH="$T/stash" scripts/gpu_model_parts.sh join "$@" >"$T/join.log" 2>&1; }
j "$T/out/m.gguf" && cmp -s "$T/m.gguf" "$T/out/m.gguf" && ok "join from the call folders: identical" ||
    bad "join: $(cat "$T/join.log")"
mkdir -p "$T/stash" && mv "$P/call1/model.part1" "$T/stash/" && cp "$P/call1/model.manifest" "$T/stash/"
rm -f "$T/out/m.gguf"
j "$T/out/m.gguf" && cmp -s "$T/m.gguf" "$T/out/m.gguf" && ok "join with part 1 from the stash: identical" ||
    bad "join from the stash: $(cat "$T/join.log")"
rm -f "$T/out/m.gguf"
printf 'x' | dd of="$P/call2/model.part2" bs=1 seek=1000 conv=notrunc status=none
if j "$T/out/m.gguf"; then bad "a corrupted part 2 was joined"; else
    grep -q "part 2 .* sha256" "$T/join.log" && [ ! -e "$T/out/m.gguf" ] && ok "corrupted part 2 refused, no file left" ||
        bad "corruption: $(cat "$T/join.log")"
fi
rm -f "$T/stash/model.part1"
if j "$T/out/m.gguf"; then bad "joined without part 1"; else
    grep -q "part 1 not found" "$T/join.log" && ok "missing part 1 reported" || bad "missing part 1: $(cat "$T/join.log")"
fi
if GPU_PARTS_DIR="$T/p2" GPU_PARTS_MAX_MIB=1 scripts/gpu_model_parts.sh split "$T/m.gguf" >/dev/null 2>&1; then
    bad "split accepted parts over the limit"
else
    ok "split refuses parts over the limit"
fi

if [ "$fails" -ne 0 ]; then
    echo "test_gpu_check: $fails FAILED"
    exit 1
fi
echo "test_gpu_check: all passed"
