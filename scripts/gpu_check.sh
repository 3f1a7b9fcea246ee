#!/usr/bin/env bash
# gpu_check.sh - the GPU check of the CUDA backend. Runs on a machine with an
# NVIDIA GPU (written for one H100), nvcc and cuBLAS; finishes in well under
# 5 minutes. Writes every figure into ONE JSON file: build/gpu_check.json
# (and a copy into $OUT/ when the variable names a folder, as the device
# runner sets it).
#
# Usage:  scripts/gpu_check.sh [MODEL.gguf]
#   MODEL defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf when present.
#   The default model (~94 MB) exceeds the device runner's 64 MiB transfer
#   limit, so without it the check runs on synthetic models only and says so
#   in the JSON ("model": {"skipped": ...}).
#
# Missing libraries: the GPU machine may lack OpenBLAS, utf8proc, cJSON,
# ZeroMQ, protobuf-c and cmocka, and has no network. Run
# scripts/gpu_pack_deps.sh HERE first (it unpacks the Debian packages into
# .deps/), and carry .deps (plus build/proto if it exists) to the device.
# This script probes the compiler for each header/library and, when one is
# missing and .deps/ exists, points CPATH / LIBRARY_PATH / LD_LIBRARY_PATH
# at .deps.
#
# What it runs (each step's status and time go into the JSON "steps"):
#   1. make -j all                      CPU build + CUDA objects (nvcc)
#   2. make build/test/test_cuda && build/test/test_cuda
#                                       cmocka: CUDA vs CPU forward on tiny
#                                       random models, masks, scratch KV,
#                                       batches, graph / self-spec decoding
#   3. gcc scripts/gpu_check.c -> build/gpu_check, then
#      build/gpu_check --out build/gpu_check_core.json [--model M --prompts P]
#        model:  CUDA vs CPU forward at every position of the fixture prompts
#                (tests/fixtures/logits.json): top-1 identical, max |logit
#                diff| <= 0.03 x max(1, max|logit|); greedy GPU plain vs CPU
#                plain vs GPU self-spec (64 tokens per prompt); plain and
#                self-spec tokens/s for one sequence and the achieved memory
#                bandwidth as a fraction of the device's peak
#        synthetic_small: same decode figures on SmolLM2-shaped random
#                weights, and the CUDA IPC check (a child process imports the
#                weights + verified KV and drafts the same tokens)
#        llama2_7b / llama2_13b: random weights of those shapes generated on
#                the device; ms per full T=1 step, draft step, T=5 verify
#   4. with a model: bin/selfspec generate --device cuda vs --device cpu
#      (--mode plain, --ids, 64 tokens), and --mode self-spec vs plain on
#      cuda; a pipeline mode is checked the same way if the CLI has one.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
mkdir -p build
JSON=build/gpu_check.json
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export PATH="$PATH:/usr/local/cuda/bin"
NPROC=$(nproc 2>/dev/null || echo 4)
STEPS=""

step() {   # step NAME TIMEOUT CMD... : run, log, record status and seconds
    local name=$1 to=$2; shift 2
    local s=$(date +%s.%N) rc
    timeout "$to" "$@" >"build/gpu_check_$name.log" 2>&1
    rc=$?
    local e=$(date +%s.%N)
    STEPS="$STEPS${STEPS:+, }\"$name\": {\"rc\": $rc, \"seconds\": $(awk "BEGIN{printf \"%.2f\", $e - $s}")}"
    echo "gpu_check: $name rc=$rc (log: build/gpu_check_$name.log)"
    tail -n 5 "build/gpu_check_$name.log" | sed 's/^/    /'
    return $rc
}

# ---- libraries: system first, .deps for what is missing ----
missing=""
probe() {  # probe HEADER LIB
    printf '#include <%s>\nint main(void){return 0;}\n' "$1" > build/probe.c
    gcc build/probe.c -o build/probe "-l$2" >/dev/null 2>&1 || missing="$missing $2"
}
probe cblas.h openblas; probe utf8proc.h utf8proc; probe cjson/cJSON.h cjson
probe zmq.h zmq; probe protobuf-c/protobuf-c.h protobuf-c
printf '#include <stdarg.h>\n#include <stddef.h>\n#include <setjmp.h>\n#include <cmocka.h>\nint main(void){return 0;}\n' > build/probe.c
gcc build/probe.c -o build/probe -lcmocka >/dev/null 2>&1 || missing="$missing cmocka"
DEPS_USED=false
if [ -n "$missing" ]; then
    echo "gpu_check: system lacks:$missing"
    if [ -d .deps ]; then
        D=$PWD/.deps
        export CPATH="$D/usr/include:$D/usr/include/x86_64-linux-gnu:$D/usr/include/x86_64-linux-gnu/openblas-pthread${CPATH:+:$CPATH}"
        L="$D/usr/lib/x86_64-linux-gnu:$D/usr/lib/x86_64-linux-gnu/openblas-pthread"
        export LIBRARY_PATH="$L${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        DEPS_USED=true
    else
        echo "gpu_check: no .deps/ folder either (run scripts/gpu_pack_deps.sh where apt works, carry .deps)"
    fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# ---- 1. build ----
step build 240 make -j"$NPROC" all
BUILD_RC=$?
LIBS="-lopenblas -lutf8proc -lcjson -lm -lpthread -lrt"
NVCC_BIN=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
CUDA_LIBDIR=$(dirname "$(dirname "$(readlink -f "$NVCC_BIN")")")/lib64
[ -d "$CUDA_LIBDIR" ] || CUDA_LIBDIR=/usr/local/cuda/lib64
[ -f build/libselfspec.a ] || step build_lib 240 make -j"$NPROC" build/libselfspec.a

# ---- 2. unit tests of the CUDA backend ----
step unit_build 120 make -j"$NPROC" build/test/test_cuda && step unit_test_cuda 120 build/test/test_cuda

# ---- 3. the measuring program ----
step driver_build 120 gcc -std=c11 -O2 -march=native -Wall -Wextra -Werror -Wno-unused-parameter \
    -Wno-format-truncation -D_GNU_SOURCE -Icommon -fopenmp -pthread scripts/gpu_check.c build/libselfspec.a \
    $LIBS -L"$CUDA_LIBDIR" -Wl,-rpath,"$CUDA_LIBDIR" -lcublas -lcudart -lstdc++ -o build/gpu_check
HAVE_MODEL=false
ARGS=(--out build/gpu_check_core.json)
if [ -f "$MODEL" ] && command -v python3 >/dev/null; then
    python3 -c '
import json, sys
d = json.load(open("tests/fixtures/logits.json"))
ps = d["prompts"]
ps = ps.values() if isinstance(ps, dict) else ps
with open("build/gpu_prompts.txt", "w") as f:
    for p in ps:
        f.write(" ".join(str(i) for i in p["ids"]) + "\n")
' && HAVE_MODEL=true && ARGS+=(--model "$MODEL" --prompts build/gpu_prompts.txt)
fi
rm -f build/gpu_check_core.json
step measure 300 build/gpu_check "${ARGS[@]}"

# ---- 4. the CLI on the real model ----
CLI="\"skipped\": \"no model\""
if $HAVE_MODEL && [ -x bin/selfspec ]; then
    P="The quick brown fox jumps over the lazy dog. Meanwhile, in a small village by the sea,"
    gen() { timeout 120 bin/selfspec generate -m "$MODEL" -p "$P" -n 64 --ignore-eos --ids "$@" 2>>build/gpu_check_cli.log; }
    cpu=$(gen --mode plain --device cpu); gpu=$(gen --mode plain --device cuda)
    spec=$(gen --mode self-spec --device cuda)
    eq() { [ -n "$1" ] && [ "$1" = "$2" ] && echo true || echo false; }
    CLI="\"cuda_plain_equals_cpu_plain\": $(eq "$gpu" "$cpu"), \"cuda_selfspec_equals_cuda_plain\": $(eq "$spec" "$gpu")"
    if bin/selfspec generate --help 2>&1 | grep -q pipeline; then
        pipe=$(gen --mode pipeline --device cuda)
        CLI="$CLI, \"cuda_pipeline_equals_cuda_plain\": $(eq "$pipe" "$gpu")"
    else
        CLI="$CLI, \"pipeline\": \"skipped: this build has no --mode pipeline\""
    fi
fi

# ---- one JSON file ----
{
    echo "{"
    echo "  \"script\": \"scripts/gpu_check.sh\", \"date_utc\": \"$(date -u +%FT%TZ)\","
    echo "  \"git_commit\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\","
    echo "  \"model_file\": \"$($HAVE_MODEL && echo "$MODEL" || echo none)\", \"deps_from_dot_deps\": $DEPS_USED,"
    echo "  \"steps\": {$STEPS},"
    echo "  \"cli\": {$CLI},"
    printf '  "measure": '
    if [ -s build/gpu_check_core.json ]; then cat build/gpu_check_core.json; else echo "null"; fi
    echo "  , \"total_seconds\": $(( $(date +%s) - T0 ))"
    echo "}"
} > "$JSON"
echo "gpu_check: wrote $JSON in $(( $(date +%s) - T0 )) s"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$JSON" build/gpu_check_*.log "$OUT"/ 2>/dev/null; fi
[ -s build/gpu_check_core.json ] && [ "$BUILD_RC" -eq 0 ]
