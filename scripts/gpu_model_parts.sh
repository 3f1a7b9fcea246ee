#!/usr/bin/env bash
# gpu_model_parts.sh - bring a model larger than one device call's 64 MiB to
# the GPU machine in two calls (scripts/gpu_check.sh's header gives the two
# `run` commands).
#
#   scripts/gpu_model_parts.sh split [MODEL]   HERE: cut MODEL (default
#       models/SmolLM2-135M-Instruct.Q4_1.gguf) into two parts, each under
#       GPU_PARTS_MAX_MIB (60) MiB: $D/call1/model.part1 and
#       $D/call2/model.part2, with the manifest $D/call{1,2}/model.manifest
#       (name, size, sha256 of the whole file and of each part).
#       D = GPU_PARTS_DIR, default .gpucarry (ignored by git, so it may be
#       carried). The cut is at the middle unless GPU_PARTS_PART1_BYTES says
#       where. Leaves the library tarball of gpu_pack_deps.sh in call1/.
#   scripts/gpu_model_parts.sh join [OUT]      THERE: find part 1 (call1/ or
#       the stash GPU_CHECK_STASH, default /tmp/selfspec-gpu-stash) and
#       part 2 (call2/ or the stash), check each part's sha256, concatenate
#       into OUT (default models/<name>), check the whole file's size and
#       sha256, and only then rename it into place. Exit 1 with a reason
#       when a part is missing or a checksum differs.
#   scripts/gpu_model_parts.sh plan            HERE: what each of the two
#       calls carries (tracked + untracked files, call1/ or call2/,
#       build/proto) against the 64 MiB limit; exit 1 if one is over.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${GPU_PARTS_DIR:-.gpucarry}
STASH=${GPU_CHECK_STASH:-/tmp/selfspec-gpu-stash}
MAX_MIB=${GPU_PARTS_MAX_MIB:-60}
LIMIT=$((64 * 1024 * 1024))

die() { echo "gpu_model_parts: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
field() { sed -n "s/^$2=//p" "$1" | head -n 1; }   # field MANIFEST KEY
first() { local f; for f in "$@"; do [ -f "$f" ] && { echo "$f"; return 0; }; done; return 1; }

split_model() {
    local model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
    [ -f "$model" ] || die "no model file $model"
    local size p1 p2 max
    size=$(stat -L -c %s "$model")
    p1=${GPU_PARTS_PART1_BYTES:-$(((size + 1) / 2))}
    p2=$((size - p1))
    max=$((MAX_MIB * 1024 * 1024))
    [ "$p1" -gt 0 ] && [ "$p2" -gt 0 ] || die "bad cut at $p1 of $size bytes"
    [ "$p1" -lt "$max" ] && [ "$p2" -lt "$max" ] ||
        die "$model ($size bytes) does not split into two parts under $MAX_MIB MiB (cut at $p1)"
    mkdir -p "$D/call1" "$D/call2"
    rm -f "$D"/call1/model.* "$D"/call2/model.*
    head -c "$p1" "$model" >"$D/call1/model.part1"
    tail -c +"$((p1 + 1))" "$model" >"$D/call2/model.part2"
    local m="$D/call1/model.manifest"
    {
        echo "name=$(basename "$model")"
        echo "size=$size"
        echo "sha256=$(sha "$model")"
        echo "part1_size=$p1"
        echo "part1_sha256=$(sha "$D/call1/model.part1")"
        echo "part2_size=$p2"
        echo "part2_sha256=$(sha "$D/call2/model.part2")"
    } >"$m"
    cp "$m" "$D/call2/model.manifest"
    echo "gpu_model_parts: $model ($size bytes) -> $D/call1/model.part1 ($p1) + $D/call2/model.part2 ($p2)"
}

join_model() {
    local man p1 p2 name out size want got
    man=$(first "$D/call2/model.manifest" "$D/call1/model.manifest" "$STASH/model.manifest") ||
        die "no model.manifest in $D/call2, $D/call1 or $STASH"
    name=$(field "$man" name)
    out=${1:-models/$name}
    [ "$(basename "$out")" = "$name" ] || echo "gpu_model_parts: note: joining $name into $out"
    size=$(field "$man" size)
    want=$(field "$man" sha256)
    if [ -f "$out" ] && [ "$(stat -L -c %s "$out")" = "$size" ] && [ "$(sha "$out")" = "$want" ]; then
        echo "gpu_model_parts: $out is already there (sha256 matches)"
        return 0
    fi
    p1=$(first "$D/call1/model.part1" "$STASH/model.part1") ||
        die "part 1 not found in $D/call1 or $STASH (was the machine still warm from call 1?)"
    p2=$(first "$D/call2/model.part2" "$STASH/model.part2") || die "part 2 not found in $D/call2 or $STASH"
    got=$(sha "$p1")
    [ "$got" = "$(field "$man" part1_sha256)" ] || die "part 1 ($p1) sha256 $got differs from the manifest"
    got=$(sha "$p2")
    [ "$got" = "$(field "$man" part2_sha256)" ] || die "part 2 ($p2) sha256 $got differs from the manifest"
    mkdir -p "$(dirname "$out")"
    local tmp="$out.join.$$"
    trap 'rm -f "$tmp"' EXIT
    cat "$p1" "$p2" >"$tmp"
    got=$(stat -c %s "$tmp")
    [ "$got" = "$size" ] || die "joined file has $got bytes, the manifest says $size"
    got=$(sha "$tmp")
    [ "$got" = "$want" ] || die "joined file sha256 $got differs from the manifest's $want"
    mv -f "$tmp" "$out"
    trap - EXIT
    echo "gpu_model_parts: joined $out ($size bytes, sha256 $want)"
}

bytes_of() {   # total bytes of the files under the given paths (missing: 0)
    local t=0 p n
    for p in "$@"; do
        [ -e "$p" ] || continue
        n=$(find -L "$p" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
        t=$((t + n))
    done
    echo "$t"
}

plan() {
    local tree call1 call2 proto ok=0
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -L -c %s 2>/dev/null |
        awk '{s += $1} END {print s + 0}')
    proto=$(bytes_of build/proto)
    call1=$((tree + proto + $(bytes_of "$D/call1")))
    call2=$((tree + proto + $(bytes_of "$D/call2")))
    mib() { awk "BEGIN{printf \"%.1f MiB\", $1 / 1048576}"; }
    echo "tree (tracked + untracked, not ignored): $(mib "$tree"); build/proto: $(mib "$proto")"
    for c in 1 2; do
        local n=$([ $c = 1 ] && echo "$call1" || echo "$call2")
        printf 'call %d: carry [".gpucarry/call%d", "build/proto"]: %s of 64 MiB' "$c" "$c" "$(mib "$n")"
        if [ "$n" -le "$LIMIT" ]; then echo " -- fits"; else echo " -- OVER THE LIMIT"; ok=1; fi
        ls -l "$D/call$c" 2>/dev/null | sed 1d | sed 's/^/    /'
    done
    [ -f "$D/call1/gpudeps.tar.xz" ] || echo "note: no $D/call1/gpudeps.tar.xz (scripts/gpu_pack_deps.sh)"
    ls build/proto/*.pb-c.c >/dev/null 2>&1 || echo "note: no build/proto (make build/proto/selfspec.pb-c.c)"
    echo "(this counts the checkout you run it in; the device tool sends the session's own checkout)"
    return $ok
}

case ${1:-} in
    split) shift; split_model "$@" ;;
    join) shift; join_model "$@" ;;
    plan) plan ;;
    *) echo "usage: $0 split [MODEL] | join [OUT] | plan" >&2; exit 2 ;;
esac
