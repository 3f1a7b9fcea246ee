#!/usr/bin/env bash
# gpu_pack_deps.sh - run HERE (a Debian 12 machine with network), before a
# GPU check: fill .gpudeps/ with the runtime + development files of the C
# libraries selfspec links (OpenBLAS, utf8proc, cJSON, ZeroMQ, protobuf-c,
# hiredis, libmicrohttpd, cmocka and their shared-library dependencies),
# for a GPU machine that may lack them and has no network, and pack it as
# .gpucarry/call1/gpudeps.tar.xz (what the first device call carries; see
# the header of scripts/gpu_check.sh). `apt-get download` fetches the .deb
# files of the installed versions (no root needed), `dpkg -x` unpacks them;
# nothing is installed. Documentation, man pages, static libraries and
# LAPACK are dropped to keep it small: one device call carries 64 MiB.
# .gpudeps is its own folder: .deps holds other things (llama.cpp) and is
# never touched here.
#
# Also regenerates build/proto (make -B ...pb-c.c) so that the carried
# generated sources come with their .proto.sha256.
# gpu_check.sh uses .gpudeps only for what the GPU machine's system lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="libutf8proc2 libutf8proc-dev libcjson1 libcjson-dev
libzmq5 libzmq3-dev libsodium23 libpgm-5.3-0 libnorm1
libprotobuf-c1 libprotobuf-c-dev libhiredis0.14 libhiredis-dev
libmicrohttpd12 libmicrohttpd-dev libcmocka0 libcmocka-dev"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download $PKGS >/dev/null )
rm -rf .gpudeps
mkdir -p .gpudeps
for d in "$tmp"/*.deb; do dpkg -x "$d" .gpudeps; done
rm -rf .gpudeps/usr/share .gpudeps/usr/lib/x86_64-linux-gnu/*.a
mkdir -p .gpucarry/call1
tar cJf .gpucarry/call1/gpudeps.tar.xz -C .gpudeps .
make -B build/proto/selfspec.pb-c.c >/dev/null
echo "gpu_pack_deps: .gpudeps holds $(du -sh .gpudeps | cut -f1) from $(ls "$tmp"/*.deb | wc -l) packages;" \
     ".gpucarry/call1/gpudeps.tar.xz is $(du -h .gpucarry/call1/gpudeps.tar.xz | cut -f1)"
