#!/usr/bin/env bash
# gpu_pack_deps.sh - run HERE (a Debian 12 machine with network), before a
# GPU check: fill .deps/ with the runtime + development files of the C
# libraries selfspec links (OpenBLAS, utf8proc, cJSON, ZeroMQ, protobuf-c,
# cmocka and their shared-library dependencies), for a GPU machine that may
# lack them and has no network. `apt-get download` fetches the .deb files of
# the installed versions (no root needed), `dpkg -x` unpacks them; nothing
# is installed. Documentation, man pages and LAPACK are dropped to keep the
# folder small: the device runner carries at most 64 MiB.
#
# Then carry .deps (and build/proto when it exists) to the device and run
# scripts/gpu_check.sh there; it uses .deps only for what the system lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0
libutf8proc2 libutf8proc-dev libcjson1 libcjson-dev
libzmq5 libzmq3-dev libsodium23 libpgm-5.3-0 libnorm1
libprotobuf-c1 libprotobuf-c-dev libcmocka0 libcmocka-dev"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download $PKGS >/dev/null )
rm -rf .deps
mkdir -p .deps
for d in "$tmp"/*.deb; do dpkg -x "$d" .deps; done
rm -rf .deps/usr/share .deps/usr/lib/x86_64-linux-gnu/openblas-pthread/liblapack* \
       .deps/usr/lib/x86_64-linux-gnu/*.a .deps/usr/lib/x86_64-linux-gnu/openblas-pthread/*.a
# the dev package's libopenblas.so is reached through Debian's alternatives;
# give the linker plain names next to the library
ob=.deps/usr/lib/x86_64-linux-gnu/openblas-pthread
[ -e "$ob/libopenblas.so" ] || ln -sf libopenblas.so.0 "$ob/libopenblas.so"
echo "gpu_pack_deps: .deps holds $(du -sh .deps | cut -f1) from $(ls "$tmp"/*.deb | wc -l) packages"
