#!/usr/bin/env bash
# Regenerates fastpath.bpf.o, the committed object of the in-kernel fast path, from
# fastpath.bpf.c (bpf2go convention: building the workspace needs no clang).
#
# Needs Debian's clang 14 and libbpf-dev (`apt-get install -y clang libbpf-dev`). The output
# is byte-identical wherever the repository is cloned: the compiler runs in this directory on
# a relative path and the working directory is mapped to "." in the debug info (-g is needed:
# the BTF it produces describes the .maps section aya loads). No llvm-strip: CI installs clang
# without its recommended llvm tools.
#
# Usage: build.sh [OUTPUT]   (default: fastpath.bpf.o beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/fastpath.bpf.o}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
clang="${CLANG:-clang}"
tmp="$(mktemp "${TMPDIR:-/tmp}/fastpath.XXXXXX.o")"
trap 'rm -f "$tmp"' EXIT
cd "$here"
"$clang" -O2 -g -mcpu=v3 -target bpf \
  -I/usr/include/x86_64-linux-gnu \
  -fdebug-prefix-map="$here"=. -fno-ident \
  -Wall -Werror \
  -c fastpath.bpf.c -o "$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
