#!/usr/bin/env bash
# Builds llama.cpp's own benchmark tools (llama-bench, llama-batched-bench)
# natively from the llama.cpp sources vendored in the llama-cpp-python sdist
# on PyPI, into the ignored folder .deps/llama.cpp/. Idempotent: when both
# binaries exist it does nothing.
#
#   scripts/build_llama_cpp.sh            # build (about 15+ minutes on 2 cores)
#   JOBS=4 scripts/build_llama_cpp.sh     # more parallel compile jobs
#
# The binaries end up in .deps/llama.cpp/build/bin/ (path printed at the end).
# Needs cmake and a C/C++ compiler; installs cmake with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
DEST=.deps/llama.cpp
BUILD=$DEST/build
JOBS=${JOBS:-2}
TARGETS="llama-bench llama-batched-bench"

have_all() {
    for t in $TARGETS; do
        [ -x "$BUILD/bin/$t" ] || return 1
    done
}

if have_all; then
    echo "build_llama_cpp: already built in $BUILD/bin"
    exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
    echo "build_llama_cpp: installing cmake"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi

mkdir -p "$DEST"
SRC=$DEST/src
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "build_llama_cpp: fetching the llama-cpp-python==$VERSION sdist from PyPI"
    # --no-binary for this package only: the sdist is the same, but its build
    # dependencies (needed by pip to read the sdist's metadata) may then come
    # as wheels instead of being built from source too (minutes faster).
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$tmp"
    sdist=$(find "$tmp" -maxdepth 1 -name 'llama[-_]cpp[-_]python-*.tar.gz' | head -1)
    [ -n "$sdist" ] || { echo "build_llama_cpp: no sdist downloaded" >&2; exit 1; }
    tar -xzf "$sdist" -C "$tmp"
    unpacked=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'llama*' | head -1)
    [ -f "$unpacked/vendor/llama.cpp/CMakeLists.txt" ] || {
        echo "build_llama_cpp: $unpacked has no vendor/llama.cpp" >&2; exit 1; }
    rm -rf "$SRC"
    mv "$unpacked" "$SRC"
fi

cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF
cmake --build "$BUILD" -j"$JOBS" --target $TARGETS

have_all || { echo "build_llama_cpp: build finished but binaries missing" >&2; exit 1; }
echo "build_llama_cpp: built $(for t in $TARGETS; do printf '%s ' "$BUILD/bin/$t"; done)"
