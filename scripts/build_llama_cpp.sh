#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-bench, llama-batched-bench,
# llama-quantize) and its shared library (libllama.so, which the sdist's
# Python binding loads through LLAMA_CPP_LIB_PATH: see llama_cpp_env below)
# from the llama.cpp sources vendored in the llama-cpp-python sdist on PyPI,
# into the ignored folder .deps/llama.cpp/. Idempotent: when every target
# exists it does nothing.
#
# On a CPU with AMX, llama.cpp's AMX path faults on these VMs (ldtilecfg in
# its worker threads), so there it is built for the CPU's own flags one by
# one with AMX off instead of -DGGML_NATIVE=ON.
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
TARGETS="llama-bench llama-batched-bench llama-quantize"

have_all() {
    for t in $TARGETS; do
        [ -x "$BUILD/bin/$t" ] || return 1
    done
    [ -f "$BUILD/bin/libllama.so" ]
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

CPU_FLAGS="-DGGML_NATIVE=ON"
if grep -q amx_int8 /proc/cpuinfo; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    for pair in avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 \
                avx512_vnni:AVX512_VNNI avx512vbmi:AVX512_VBMI \
                avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
        case " $flags " in *" ${pair%%:*} "*) CPU_FLAGS="$CPU_FLAGS -DGGML_${pair#*:}=ON" ;; esac
    done
    echo "build_llama_cpp: AMX CPU, building without AMX: $CPU_FLAGS"
fi
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release $CPU_FLAGS -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=ON
cmake --build "$BUILD" -j"$JOBS" --target $TARGETS llama

have_all || { echo "build_llama_cpp: build finished but binaries missing" >&2; exit 1; }
echo "build_llama_cpp: built $(for t in $TARGETS; do printf '%s ' "$BUILD/bin/$t"; done)"
echo "build_llama_cpp: Python binding without building it again:"
echo "  PYTHONPATH=$SRC LLAMA_CPP_LIB_PATH=$BUILD/bin python3 -c 'import llama_cpp'"
