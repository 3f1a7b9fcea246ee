#!/usr/bin/env bash
# gpu_check.sh - the GPU check of the CUDA backend. Runs on a machine with an
# NVIDIA GPU (written for one H100/H200), nvcc and cuBLAS, from a bare
# machine with no network, apt or protoc-c. Writes every figure into ONE JSON
# file, build/gpu_check.json, that parses whatever happens: each step's
# result is a small fragment of its own, and the file is re-assembled (temp
# file + rename) before and after every step and on exit, so a failed,
# crashed or timed-out step leaves a valid file that names it, with the
# partial results kept. A copy goes to $OUT/ when that names a folder (the
# device runner's), with build/gpu_check_logs.tar.gz.
#
# ---- THE TWO DEVICE CALLS (the real model is 94 MB; a call carries 64 MiB) --
# Here, once (needs apt-get download and protoc-c, which this machine has):
#     scripts/gpu_pack_deps.sh                 # .gpudeps/ + .gpucarry/call1/gpudeps.tar.xz
#     make build/proto/selfspec.pb-c.c         # generated protobuf sources
#     scripts/gpu_model_parts.sh split         # .gpucarry/call1/ + call2/, sha256 manifest
#     scripts/gpu_model_parts.sh plan          # sizes of each call against 64 MiB
# Then two `run` calls of the device tool, the second AT ONCE after the first
# returns (the machine stays warm only ~30 s after a call):
#   call 1: leaves part 1 and the libraries on the warm machine, builds there
#     run(command="scripts/gpu_check.sh --stage1",
#         carry=[".gpucarry/call1", "build/proto"], timeout_s=420)
#   call 2: brings part 2, joins the model (sha256 checked), runs the check
#     run(command="scripts/gpu_check.sh",
#         carry=[".gpucarry/call2", "build/proto"], timeout_s=600)
# Both carry paths are ignored (.gitignore: /.gpucarry/, /build/); 3 paths of
# the 8 allowed. Each call carries the tracked tree (~2.3 MB) plus its
# paths; `gpu_model_parts.sh plan` prints the totals (each under 64 MiB).
# Call 1 copies part 1 and the library tarball into $GPU_CHECK_STASH
# (default /tmp/selfspec-gpu-stash), outside the working tree, so call 2
# finds them even where the runner replaced the tree. If call 2 lands on a
# fresh machine, the join step fails, and the check runs the synthetic
# models only; the JSON says why. Without the model at all (one call):
#     run(command="scripts/gpu_check.sh", carry=[".gpucarry/call1", "build/proto"])
# ------------------------------------------------------------------------------
#
# Usage:  scripts/gpu_check.sh [--stage1] [MODEL.gguf]
#   MODEL defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf; when it is
#   absent and both parts are at hand, it is joined from them first.
#   --stage1: stash what call 1 carried, unpack the libraries, build; no
#   measuring.
#
# Libraries: the GPU machine may lack OpenBLAS, utf8proc, cJSON, ZeroMQ,
# protobuf-c, hiredis, libmicrohttpd and cmocka. The script probes the
# compiler for each and, when one is missing, points CPATH / LIBRARY_PATH /
# LD_LIBRARY_PATH at .gpudeps (unpacked from gpudeps.tar.xz if needed).
# Generated sources: build/proto is carried; without protoc-c its files are
# touched (after checking build/proto/*.proto.sha256 against proto/*.proto)
# so make does not try to regenerate them. Warnings are not fatal there
# (make WERROR=): the machine's gcc may warn about more than this one's.
#
# Steps (each: status ok|failed|timeout|crashed|killed|interrupted|skipped|
# running, rc, seconds, timeout_s, log tail; "failed_steps" lists the rest):
#   deps, model_join, build (make all), unit_build + unit_test_cuda
#   (build/test/test_cuda: CUDA vs CPU on tiny random models, the GPU
#   against itself bit for bit, fixed-order projection vs cuBLAS), driver_build
#   (scripts/gpu_check.c -> build/gpu_check), measure (build/gpu_check:
#   device, model, synthetic_small, projection (the fixed-order kernel vs
#   cuBLAS: ms of each), llama2_7b, llama2_13b; its sections land
#   under "measure", a crashed section shows {"status": "started"}),
#   cli_cpu_plain / cli_cuda_plain / cli_cuda_selfspec / cli_cuda_pipeline
#   (bin/selfspec generate --ids, 64 tokens; the pipeline's drafter over CUDA
#   IPC) compared under "cli"; cli_batch_* (bin/selfspec
#   batch --device cuda, 64 requests x 64 tokens at max-seqs 1/8/32/64 plain,
#   auto at 1 and 64): output tokens/s and batch invariance under "cli.batch".
#
# Knobs (environment):
#   GPU_CHECK_BUDGET=570     seconds for the whole run (400 with --stage1),
#                            under the calls' timeout_s; each step's timeout
#                            is cut to what is left (steps past it: skipped)
#   GPU_CHECK_STEP_TIMEOUT=N cap every step's timeout at N seconds
#   GPU_CHECK_DRY=1          simulate every step as ok (nothing is built or
#                            run; for tests of this script on any machine)
#   GPU_CHECK_SIMULATE_FAIL=name[:fail|timeout|crash],...
#                            force those steps to fail (exit 1), time out
#                            (a real timeout of GPU_CHECK_SIM_TIMEOUT=1 s)
#                            or crash (SIGSEGV; measure first leaves one
#                            good and one truncated fragment)
#   GPU_CHECK_NO_PYTHON=1    do not use python3 (the pure-bash path)
#   GPU_CHECK_DIR, GPU_CHECK_JSON  fragments/logs folder, the JSON file
#   GPU_CHECK_STASH          where call 1 leaves part 1 and the libraries
# Exit status: 0 when every step that ran passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$EPOCHSECONDS
STAGE1=false
if [ "${1:-}" = "--stage1" ]; then STAGE1=true; shift; fi
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DIR=${GPU_CHECK_DIR:-build/gpu_check_run}
JSON=${GPU_CHECK_JSON:-build/gpu_check.json}
STASH=${GPU_CHECK_STASH:-/tmp/selfspec-gpu-stash}
export GPU_CHECK_STASH=$STASH STASH
if $STAGE1; then BUDGET=${GPU_CHECK_BUDGET:-400}; else BUDGET=${GPU_CHECK_BUDGET:-570}; fi
DRY=${GPU_CHECK_DRY:-0}
SIM=${GPU_CHECK_SIMULATE_FAIL:-}
export PATH="$PATH:/usr/local/cuda/bin"
JOBS=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
USE_PY=false
if [ "${GPU_CHECK_NO_PYTHON:-0}" != 1 ] && command -v python3 >/dev/null 2>&1; then USE_PY=true; fi

rm -rf "$DIR"
mkdir -p "$DIR/steps" "$DIR/core" "$DIR/measure" "$(dirname "$JSON")"
STEP_N=0
CUR_STEP=""          # name of the step running now (for the exit trap)
CUR_FRAG=""
declare -A STATUS    # step name -> status
ORDER=()             # step names in order
COMPLETE=false

# ---- JSON helpers (pure bash, no forks: assemble runs after every step) ----
jstr() {   # jstr VAR STRING: VAR = a JSON string literal of STRING (printable ASCII kept, the rest escaped or dropped)
    local s=$2 LC_ALL=C
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    s=${s//[^ -~]/}
    printf -v "$1" '"%s"' "$s"
}
json_str() { local v; jstr v "$1"; printf '%s' "$v"; }
cat_line() {   # print a file's lines joined into one (no fork)
    local -a l=()
    mapfile -t l <"$1"
    printf '%s' "${l[@]}"
}
members() {   # members DIR: its NN_name.json fragments as JSON object members "name": {...}
    local f n q sep=""
    for f in "$1"/*.json; do
        [ -e "$f" ] || continue
        n=${f##*/}; n=${n%.json}; n=${n#*_}
        jstr q "$n"
        printf '%s\n    %s: ' "$sep" "$q"
        cat_line "$f"
        sep=","
    done
}
now() {   # now VAR: seconds since the epoch with 6 decimals
    local t=${EPOCHREALTIME:-}
    if [ -z "$t" ]; then t=$(date +%s.%N); t=${t:0:${#t}-3}; fi
    printf -v "$1" '%s' "$t"
}
json_bool() { if [ "$1" = true ]; then printf true; else printf false; fi; }
json_num() {   # $1 if it is a plain number, else null
    if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then printf '%s' "$1"; else printf null; fi
}

# ---- the JSON file: assembled from the fragments, atomically ----
CORE_DIRTY=false   # measure ran since the last sanitize_core
sanitize_core() {   # measure's fragments (core/) -> measure/, each one valid JSON
    $CORE_DIRTY || return 0
    CORE_DIRTY=false
    local f n head
    rm -f "$DIR"/measure/*.json
    if $USE_PY && python3 - "$DIR/core" "$DIR/measure" <<'EOF'
import json, os, sys
src, dst = sys.argv[1:3]
for name in sorted(os.listdir(src)):
    if not name.endswith(".json") or ".tmp." in name:
        continue
    raw = open(os.path.join(src, name), "rb").read()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except Exception as e:
        obj = {"invalid_fragment": True, "error": str(e)[:200],
               "raw_head": raw[:400].decode("utf-8", "replace")}
    with open(os.path.join(dst, name), "w") as f:
        json.dump(obj, f)
        f.write("\n")
EOF
    then return 0; fi
    for f in "$DIR"/core/*.json; do
        [ -e "$f" ] || continue
        case $f in *.tmp.*) continue ;; esac
        n=${f##*/}
        # pure bash: the C program writes each fragment whole and atomically;
        # anything not shaped {...} is kept as an escaped string
        local body
        body=$(cat_line "$f")
        if [[ $body =~ ^[[:space:]]*\{.*\}[[:space:]]*$ ]]; then
            cp "$f" "$DIR/measure/$n"
        else
            head=$(head -c 400 "$f")
            printf '{"invalid_fragment": true, "raw_head": %s}\n' "$(json_str "$head")" >"$DIR/measure/$n"
        fi
    done
}

GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
assemble() {
    local tmp="$JSON.tmp.$$" f n sep name failed="" q q2 now_s
    for name in "${ORDER[@]}"; do
        case ${STATUS[$name]} in ok | skipped) ;; *) jstr q "$name"; failed="$failed${failed:+, }$q" ;; esac
    done
    printf -v now_s '%(%Y-%m-%dT%H:%M:%SZ)T' -1
    jstr q "$GIT_COMMIT"
    jstr q2 "$SIM"
    {
        printf '{\n  "script": "scripts/gpu_check.sh",\n  "format": 2,\n'
        if $STAGE1; then printf '  "stage": "stage1",\n'; else printf '  "stage": "check",\n'; fi
        printf '  "date_utc": "%s",\n' "$now_s"
        printf '  "git_commit": %s,\n' "$q"
        printf '  "complete": %s,\n' "$COMPLETE"
        printf '  "dry_run": %s, "simulated": %s,\n' "$([ "$DRY" = 1 ] && printf true || printf false)" "$q2"
        printf '  "total_seconds": %s,\n' "$((EPOCHSECONDS - T0))"
        printf '  "failed_steps": [%s],\n' "$failed"
        printf '  "environment": '
        if [ -s "$DIR/env.json" ]; then cat_line "$DIR/env.json"; else printf '{}'; fi
        printf ',\n  "model": '
        if [ -s "$DIR/model.json" ]; then cat_line "$DIR/model.json"; else printf '{}'; fi
        printf ',\n  "steps": {'
        members "$DIR/steps"
        printf '\n  },\n  "cli": '
        if [ -s "$DIR/cli.json" ]; then cat_line "$DIR/cli.json"; else printf '{"skipped": "not run"}'; fi
        printf ',\n  "measure": {'
        members "$DIR/measure"
        printf '\n  }\n}\n'
    } >"$tmp" && mv -f "$tmp" "$JSON"
    if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$JSON" "$OUT/" 2>/dev/null; fi
}

validate_final() {   # belt and braces: with python3, prove the file parses
    $USE_PY || return 0
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$JSON" 2>"$DIR/json_error.txt" && return 0
    local e
    e=$(cat "$DIR/json_error.txt")
    printf '{"script": "scripts/gpu_check.sh", "complete": false, "error": %s, "raw_head": %s}\n' \
        "$(json_str "assembled JSON did not parse: $e")" "$(json_str "$(head -c 2000 "$JSON")")" >"$JSON.tmp.$$"
    mv -f "$JSON.tmp.$$" "$JSON"
    [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$JSON" "$OUT/" 2>/dev/null
    return 0
}

ship_logs() {
    local t
    t="$(dirname "$JSON")/gpu_check_logs.tar.gz"
    tar czf "$t" -C "$DIR" . 2>/dev/null
    if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$t" "$OUT/" 2>/dev/null; fi
}

on_exit() {
    trap - EXIT INT TERM
    if [ -n "$CUR_STEP" ]; then   # killed inside a step: say so
        write_step "$CUR_FRAG" "$CUR_STEP" interrupted null null null false "the script was stopped during this step"
    fi
    sanitize_core
    assemble
    validate_final
    ship_logs
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# write_step FRAG NAME STATUS RC SECONDS TIMEOUT SIMULATED [REASON [LOG]]
write_step() {
    local frag=$1 name=$2 st=$3 rc=$4 sec=$5 to=$6 sim=$7 reason=${8:-} log=${9:-} q r t l tail_s
    STATUS[$name]=$st
    jstr q "$st"
    [[ $rc =~ ^-?[0-9]+$ ]] || rc=null
    [[ $sec =~ ^[0-9]+(\.[0-9]+)?$ ]] || sec=null
    [[ $to =~ ^[0-9]+$ ]] || to=null
    [ "$sim" = true ] || sim=false
    printf -v r '{"status": %s, "rc": %s, "seconds": %s, "timeout_s": %s, "simulated": %s' "$q" "$rc" "$sec" "$to" "$sim"
    if [ -n "$reason" ]; then jstr q "$reason"; r="$r, \"reason\": $q"; fi
    if [ -n "$log" ]; then
        local -a lines=()
        [ -f "$log" ] && mapfile -t lines <"$log"
        tail_s=""
        local from=$((${#lines[@]} > 6 ? ${#lines[@]} - 6 : 0))
        for l in "${lines[@]:from}"; do tail_s="$tail_s${tail_s:+$'\n'}${l:0:300}"; done
        jstr q "$log"
        jstr t "$tail_s"
        r="$r, \"log\": $q, \"log_tail\": $t"
    fi
    printf '%s}\n' "$r" >"$frag.tmp" && mv -f "$frag.tmp" "$frag"
}

FRAG=""
new_frag() {   # new_frag NAME: FRAG = the path of its fragment (numbered in order of first use)
    local name=$1
    if [ -z "${STATUS[$name]+x}" ]; then
        STEP_N=$((STEP_N + 1))
        ORDER+=("$name")
        STATUS[$name]=pending
        FRAG=$(printf '%s/steps/%02d_%s.json' "$DIR" "$STEP_N" "$name")
        return
    fi
    local f
    for f in "$DIR"/steps/*_"$name".json; do [ -e "$f" ] && FRAG=$f; done
}

sim_mode() {   # the simulated outcome of step $1: fail|timeout|crash|ok (dry) or empty
    local item
    local -a items=()
    IFS=',' read -ra items <<<"$SIM"
    for item in "${items[@]}"; do
        item=${item// /}
        if [ "${item%%:*}" = "$1" ]; then
            if [ "$item" = "$1" ]; then echo fail; else echo "${item#*:}"; fi
            return
        fi
    done
    [ "$DRY" = 1 ] && echo ok
}

skip_step() {   # skip_step NAME REASON
    new_frag "$1"
    write_step "$FRAG" "$1" skipped null null null false "$2"
    echo "gpu_check: $1 skipped: $2"
    assemble
}

crash_measure() {   # the simulated crash of measure: one good, one truncated fragment
    printf '{"name": "simulated device", "memory_bytes": 0}\n' >"$DIR/core/01_device.json"
    printf '{"path": "models/x.gguf", "forward": {"positions": 12' >"$DIR/core/02_model.json"
    kill -SEGV "$BASHPID"
}

# step NAME TIMEOUT CMD... : run (or simulate), log, record; returns rc
step() {
    local name=$1 to=$2 frag log sim s e rc st reason="" left
    shift 2
    new_frag "$name"
    frag=$FRAG
    log="$DIR/$name.log"
    left=$((BUDGET - (EPOCHSECONDS - T0) - 5))
    if [ "$left" -lt 5 ]; then
        write_step "$frag" "$name" skipped null null null false "time budget of ${BUDGET} s spent"
        echo "gpu_check: $name skipped (time budget spent)"
        assemble
        return 125
    fi
    [ "$to" -gt "$left" ] && to=$left
    [ -n "${GPU_CHECK_STEP_TIMEOUT:-}" ] && [ "$to" -gt "$GPU_CHECK_STEP_TIMEOUT" ] && to=$GPU_CHECK_STEP_TIMEOUT
    sim=$(sim_mode "$name")
    write_step "$frag" "$name" running null null "$to" "$([ -n "$sim" ] && echo true)"
    CUR_STEP=$name
    CUR_FRAG=$frag
    assemble
    [ "$name" = measure ] && CORE_DIRTY=true
    now s
    case $sim in
        ok) echo "simulated: ok" >"$log"; rc=0 ;;
        fail) echo "simulated: failure" >"$log"; rc=1 ;;
        timeout) to=${GPU_CHECK_SIM_TIMEOUT:-1}; timeout -k 2 "$to" sleep 600 >"$log" 2>&1; rc=$? ;;
        crash)
            if [ "$name" = measure ]; then (crash_measure) >"$log" 2>&1; else bash -c 'kill -SEGV $$' >"$log" 2>&1; fi
            rc=$? ;;
        "")
            if declare -F "$1" >/dev/null; then   # a function of this script: in a child bash
                timeout -k 10 "$to" bash -c "$(declare -f "$1")"'; "$0" "$@"' "$@" >"$log" 2>&1
            else
                timeout -k 10 "$to" "$@" >"$log" 2>&1
            fi
            rc=$? ;;
        *) echo "unknown simulation '$sim'" >"$log"; rc=1 ;;
    esac
    now e
    case $rc in
        0) st=ok ;;
        124) st=timeout; reason="no result within ${to} s" ;;
        137) st=killed; reason="SIGKILL (after a timeout's grace, or out of memory)" ;;
        126 | 127) st=failed; reason="command not found or not executable" ;;
        *) if [ "$rc" -gt 128 ]; then st=crashed; reason="signal $((rc - 128))"; else st=failed; fi ;;
    esac
    CUR_STEP=""
    local us=$(( (${e%.*} - ${s%.*}) * 1000000 + 10#${e#*.} - 10#${s#*.} ))
    printf -v e '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
    write_step "$frag" "$name" "$st" "$rc" "$e" "$to" \
        "$([ -n "$sim" ] && echo true)" "$reason" "$log"
    echo "gpu_check: $name $st rc=$rc (log: $log)"
    tail -n 5 "$log" | sed 's/^/    /'
    assemble
    return "$rc"
}

# ---- environment: stash, libraries, generated sources ----
stash_call1() {   # what call 1 carried -> $STASH (outside the tree)
    mkdir -p "$STASH" || return 1
    local f any=false
    for f in .gpucarry/call1/*; do
        [ -e "$f" ] || continue
        cp -f "$f" "$STASH/" || return 1
        any=true
    done
    $any || { echo "nothing under .gpucarry/call1 to stash"; return 1; }
    ls -l "$STASH"
}

unpack_deps() {   # .gpudeps from the first gpudeps.tar.xz found
    local t
    for t in .gpucarry/call1/gpudeps.tar.xz .gpucarry/call2/gpudeps.tar.xz "$STASH/gpudeps.tar.xz"; do
        if [ -f "$t" ]; then
            rm -rf .gpudeps && mkdir -p .gpudeps && tar xJf "$t" -C .gpudeps && echo "unpacked $t" && return 0
        fi
    done
    echo "no gpudeps.tar.xz carried or stashed"
    return 1
}

MISSING=""
DEPS_USED=false
PROTO_MODE="protoc-c"
probe_libs() {
    local h l
    for h in utf8proc.h:utf8proc cjson/cJSON.h:cjson zmq.h:zmq \
             protobuf-c/protobuf-c.h:protobuf-c hiredis/hiredis.h:hiredis microhttpd.h:microhttpd; do
        l=${h#*:}
        printf '#include <stddef.h>\n#include <stdint.h>\n#include <sys/socket.h>\n#include <%s>\nint main(void){return 0;}\n' \
            "${h%%:*}" >"$DIR/probe.c"
        gcc "$DIR/probe.c" -o "$DIR/probe" "-l$l" >/dev/null 2>&1 || MISSING="$MISSING $l"
    done
    printf '#include <stdarg.h>\n#include <stddef.h>\n#include <setjmp.h>\n#include <cmocka.h>\nint main(void){return 0;}\n' >"$DIR/probe.c"
    gcc "$DIR/probe.c" -o "$DIR/probe" -lcmocka >/dev/null 2>&1 || MISSING="$MISSING cmocka"
}

use_deps() {
    local D=$PWD/.gpudeps L
    export CPATH="$D/usr/include:$D/usr/include/x86_64-linux-gnu:$D/usr/include/x86_64-linux-gnu/openblas-pthread${CPATH:+:$CPATH}"
    L="$D/usr/lib/x86_64-linux-gnu:$D/usr/lib/x86_64-linux-gnu/openblas-pthread"
    export LIBRARY_PATH="$L${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    DEPS_USED=true
}

prebuilt_proto() {   # carried build/proto, no protoc-c: make must not regenerate
    if command -v protoc-c >/dev/null 2>&1; then PROTO_MODE="protoc-c"; return; fi
    if ! ls build/proto/*.pb-c.c >/dev/null 2>&1; then
        PROTO_MODE="missing: no protoc-c and no carried build/proto"
        return
    fi
    if ls build/proto/*.proto.sha256 >/dev/null 2>&1; then
        if cat build/proto/*.proto.sha256 | sha256sum -c --quiet - >/dev/null 2>&1; then
            PROTO_MODE="carried build/proto (its .proto.sha256 matches proto/)"
        else
            PROTO_MODE="carried build/proto, STALE: proto/ changed since it was generated"
        fi
    else
        PROTO_MODE="carried build/proto (no proto.sha256 to check)"
    fi
    touch build/proto/*.pb-c.c build/proto/*.pb-c.h
}

write_env() {
    local gpu nv cc
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
    nv=$(nvcc --version 2>/dev/null | tail -n 1)
    cc=$(gcc --version 2>/dev/null | head -n 1)
    printf '{"gpu": %s, "nvcc": %s, "gcc": %s, "jobs": %s, "system_lacks": %s, "deps_from_gpudeps": %s, "proto": %s, "werror": false, "python3": %s, "budget_s": %s}\n' \
        "$(json_str "${gpu:-none}")" "$(json_str "${nv:-none}")" "$(json_str "${cc:-none}")" "$(json_num "$JOBS")" \
        "$(json_str "${MISSING# }")" "$(json_bool $DEPS_USED)" "$(json_str "$PROTO_MODE")" "$(json_bool $USE_PY)" \
        "$(json_num "$BUDGET")" >"$DIR/env.json"
}

have_parts() {   # a model manifest was carried or stashed
    local m
    for m in .gpucarry/call1/model.manifest .gpucarry/call2/model.manifest "$STASH/model.manifest"; do
        [ -f "$m" ] && return 0
    done
    return 1
}

model_info() {   # model_info PRESENT SOURCE [NOTE]
    printf '{"file": %s, "present": %s, "source": %s, "note": %s}\n' "$(json_str "$MODEL")" "$(json_bool "$1")" \
        "$(json_str "$2")" "$(json_str "${3:-}")" >"$DIR/model.json"
}

assemble
if $STAGE1; then
    step stash 60 stash_call1
fi
DEPS_TAR=""
for t in .gpucarry/call1/gpudeps.tar.xz .gpucarry/call2/gpudeps.tar.xz "$STASH/gpudeps.tar.xz"; do
    [ -f "$t" ] && { DEPS_TAR=$t; break; }
done
if [ "$DRY" = 1 ]; then
    step deps 60 true
elif [ -d .gpudeps ]; then
    skip_step deps ".gpudeps already there"
elif [ -n "$DEPS_TAR" ]; then
    step deps 120 unpack_deps
else
    skip_step deps "no gpudeps.tar.xz carried or stashed (system libraries only)"
fi
if [ "$DRY" != 1 ]; then
    probe_libs
    if [ -n "$MISSING" ]; then
        echo "gpu_check: system lacks:$MISSING"
        if [ -d .gpudeps ]; then use_deps; else echo "gpu_check: no .gpudeps either (scripts/gpu_pack_deps.sh here)"; fi
    fi
    prebuilt_proto
fi
write_env
assemble

# ---- the model: present, or joined from the two parts ----
HAVE_MODEL=false
if $STAGE1; then
    model_info false "not needed in stage 1" "part 1 stashed in $STASH"
elif [ -f "$MODEL" ] && [ "$DRY" != 1 ]; then
    HAVE_MODEL=true
    model_info true "present"
elif [ "$DRY" != 1 ] && ! have_parts; then
    skip_step model_join "no $MODEL and no model parts carried: synthetic models only"
    model_info false "absent" "no model parts carried"
else
    if step model_join 120 scripts/gpu_model_parts.sh join "$MODEL"; then
        HAVE_MODEL=true
        model_info true "joined from two parts (sha256 checked)"
    else
        model_info false "join failed" "see steps.model_join: without both parts the check runs the synthetic models only"
    fi
fi
[ "$DRY" = 1 ] && HAVE_MODEL=true   # a dry run walks every step
assemble

# ---- build (warnings not fatal: another gcc) ----
MK=(make -j"$JOBS" WERROR=)
BUILD_OK=false
step build 300 "${MK[@]}" all && BUILD_OK=true
CUDA_OK=false
if $BUILD_OK; then
    step unit_build 180 "${MK[@]}" build/test/test_cuda && CUDA_OK=true
else
    skip_step unit_build "build failed"
fi
NVCC_BIN=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
CUDA_LIBDIR=$(dirname "$(dirname "$(readlink -f "$NVCC_BIN")")")/lib64
[ -d "$CUDA_LIBDIR" ] || CUDA_LIBDIR=/usr/local/cuda/lib64
DRIVER_OK=false
if $BUILD_OK; then
    step driver_build 120 gcc -std=c11 -O2 -march=native -Wall -Wextra -Wno-unused-parameter \
        -Wno-format-truncation -D_GNU_SOURCE -Icommon -fopenmp -pthread scripts/gpu_check.c build/libselfspec.a \
        -lutf8proc -lcjson -lzmq -lprotobuf-c -lhiredis -lmicrohttpd -lm -lpthread -lrt \
        -L"$CUDA_LIBDIR" -Wl,-rpath,"$CUDA_LIBDIR" -lcublas -lcudart -lstdc++ -o build/gpu_check && DRIVER_OK=true
else
    skip_step driver_build "build failed"
fi
if $STAGE1; then
    COMPLETE=true
    echo "gpu_check: stage 1 done in $((EPOCHSECONDS - T0)) s; run the second call now"
    ok=true
    for n in "${ORDER[@]}"; do case ${STATUS[$n]} in ok | skipped) ;; *) ok=false ;; esac; done
    $ok
    exit $?
fi

# ---- unit tests of the CUDA backend ----
if $CUDA_OK; then
    step unit_test_cuda 150 env OMP_NUM_THREADS=1 build/test/test_cuda
else
    skip_step unit_test_cuda "unit_build did not succeed"
fi

# ---- the measuring program ----
ARGS=(--parts "$DIR/core" --out "$DIR/gpu_check_core.json")
if $HAVE_MODEL && $USE_PY && [ "$DRY" != 1 ]; then
    python3 -c '
import json
d = json.load(open("tests/fixtures/logits.json"))
ps = d["prompts"]
ps = ps.values() if isinstance(ps, dict) else ps
with open("build/gpu_prompts.txt", "w") as f:
    for p in ps:
        f.write(" ".join(str(i) for i in p["ids"]) + "\n")
' && ARGS+=(--model "$MODEL" --prompts build/gpu_prompts.txt)
fi
if $DRIVER_OK; then
    step measure 330 build/gpu_check "${ARGS[@]}"
    sanitize_core
else
    skip_step measure "driver_build did not succeed"
fi
assemble

# ---- the CLI on the real model ----
if $HAVE_MODEL && $BUILD_OK; then
    P="The quick brown fox jumps over the lazy dog. Meanwhile, in a small village by the sea,"
    gen() {   # gen NAME ARGS...: ids of 64 greedy tokens into $DIR/NAME.ids
        local name=$1
        shift
        : >"$DIR/$name.ids"
        step "$name" 120 bash -c 'o=$1; shift; exec "$@" >"$o"' _ "$DIR/$name.ids" \
            bin/selfspec generate -m "$MODEL" -p "$P" -n 64 --ignore-eos --ids "$@"
    }
    gen cli_cpu_plain --mode plain --device cpu
    gen cli_cuda_plain --mode plain --device cuda
    gen cli_cuda_selfspec --mode self-spec --device cuda
    gen cli_cuda_pipeline --mode pipeline --device cuda   # drafter over CUDA IPC (bin/selfspec-drafter-cuda)
    # two GPUs: the drafter on its own device (its own copy of the draft's
    # sublayers, the verified KV copied over peer access), overlapped
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "${NGPU:-0}" -ge 2 ]; then
        gen cli_cuda_pipeline_2gpu --mode pipeline --device cuda:0 --draft-device cuda:1
    else
        skip_step cli_cuda_pipeline_2gpu "fewer than two GPUs"
    fi
    : >"$DIR/cli_cuda_plain_nograph.ids"                    # the engine's passes launched directly, no graphs
    step cli_cuda_plain_nograph 120 bash -c 'o=$1; shift; exec env SELFSPEC_CUDA_GRAPHS=0 "$@" >"$o"' _ \
        "$DIR/cli_cuda_plain_nograph.ids" bin/selfspec generate -m "$MODEL" -p "$P" -n 64 --ignore-eos --ids \
        --mode plain --device cuda
    eq() { [ -s "$DIR/$1.ids" ] && cmp -s "$DIR/$1.ids" "$DIR/$2.ids" && echo true || echo false; }
    # batch through the same engine on the GPU: 64 requests x 64 tokens at
    # max-seqs 1, 8, 32, 64 (plain) and auto at 1 and 64; output tokens/s
    # from each run's summary, and batch invariance (every result line of a
    # batched run byte-identical to the max-seqs 1 run's)
    python3 - "$DIR/batch_in.jsonl" <<'EOF'
import json, sys
words = "the of and to in is that for it as with was on be by at this from".split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(90))
        f.write(json.dumps({"custom_id": "r%02d" % i, "method": "POST", "url": "/v1/completions",
                            "body": {"prompt": text, "max_tokens": 64, "temperature": 0}}) + "\n")
# the same requests sampled on the device (temperature 0.8, top-p 0.95, a seed each)
with open(sys.argv[1].replace("batch_in", "batch_samp"), "w") as f:
    for i in range(64):
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(90))
        f.write(json.dumps({"custom_id": "s%02d" % i, "method": "POST", "url": "/v1/completions",
                            "body": {"prompt": text, "max_tokens": 64, "temperature": 0.8, "top_p": 0.95,
                                     "seed": 100 + i}}) + "\n")
EOF
    bat() {   # bat NAME MAX_SEQS MODE [INPUT]: results into $DIR/NAME.jsonl, summary into $DIR/NAME.sum
        local name=$1 seqs=$2 mode=$3 in=${4:-batch_in}
        rm -f "$DIR/$name.jsonl"
        step "$name" 120 bash -c 'o=$1; shift; exec "$@" 2>"$o"' _ "$DIR/$name.sum" \
            bin/selfspec batch -m "$MODEL" -i "$DIR/$in.jsonl" -o "$DIR/$name.jsonl" --device cuda \
            --max-seqs "$seqs" --mode "$mode"
    }
    for n in 1 8 32 64; do bat "cli_batch_plain_$n" "$n" plain; done
    bat cli_batch_auto_1 1 auto
    bat cli_batch_auto_64 64 auto
    bat cli_batch_sampled_1 1 auto batch_samp     # sampled on the device, alone and in a batch of 64
    bat cli_batch_sampled_64 64 auto batch_samp
    # speculative sampling on the device: drafts, q rows and acceptance tests
    # stay there (k_draft, k_sample's test rows); alone and in a batch of 64
    bat cli_batch_spec_sampled_1 1 self-spec batch_samp
    bat cli_batch_spec_sampled_64 64 self-spec batch_samp
    tps() { tail -n 1 "$DIR/$1.sum" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["output_tokens_per_s"])' 2>/dev/null || echo null; }
    same() { [ -s "$DIR/$1.jsonl" ] && cmp -s <(sort "$DIR/$1.jsonl") <(sort "$DIR/$2.jsonl") && echo true || echo false; }
    printf '{"new_tokens": 64, "cuda_plain_equals_cpu_plain": %s, "cuda_selfspec_equals_cuda_plain": %s, "checks": %s, "note": %s, "batch": {"requests": 64, "max_tokens": 64, "output_tokens_per_s": {"plain_1": %s, "plain_8": %s, "plain_32": %s, "plain_64": %s, "auto_1": %s, "auto_64": %s}, "plain_8_equals_plain_1": %s, "plain_64_equals_plain_1": %s, "auto_64_equals_plain_1": %s}}\n' \
        "$(eq cli_cuda_plain cli_cpu_plain)" "$(eq cli_cuda_selfspec cli_cuda_plain)" \
        "{\"cuda_pipeline_equals_cuda_plain\": $(eq cli_cuda_pipeline cli_cuda_plain), \"cuda_plain_graphs_equal_no_graphs\": $(eq cli_cuda_plain_nograph cli_cuda_plain), \"cuda_pipeline_2gpu_equals_cuda_plain\": $([ "${NGPU:-0}" -ge 2 ] && eq cli_cuda_pipeline_2gpu cli_cuda_plain || echo null), \"sampled_64_equals_sampled_1\": $(same cli_batch_sampled_64 cli_batch_sampled_1), \"spec_sampled_64_equals_spec_sampled_1\": $(same cli_batch_spec_sampled_64 cli_batch_spec_sampled_1)}" \
        "$(json_str "CPU vs CUDA may part at a near-tie; measure.model.greedy applies the margin rule")" \
        "$(tps cli_batch_plain_1)" "$(tps cli_batch_plain_8)" "$(tps cli_batch_plain_32)" "$(tps cli_batch_plain_64)" \
        "$(tps cli_batch_auto_1)" "$(tps cli_batch_auto_64)" \
        "$(same cli_batch_plain_8 cli_batch_plain_1)" "$(same cli_batch_plain_64 cli_batch_plain_1)" \
        "$(same cli_batch_auto_64 cli_batch_plain_1)" >"$DIR/cli.json"
else
    printf '{"skipped": %s}\n' "$(json_str "$($HAVE_MODEL && echo "build failed" || echo "no model")")" >"$DIR/cli.json"
fi

COMPLETE=true
echo "gpu_check: wrote $JSON in $((EPOCHSECONDS - T0)) s"
ok=true
for n in "${ORDER[@]}"; do case ${STATUS[$n]} in ok | skipped) ;; *) ok=false ;; esac; done
$ok
