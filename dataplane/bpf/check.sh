#!/usr/bin/env bash
# Fails when the committed fastpath.bpf.o is not what fastpath.bpf.c compiles to (someone
# edited the C without running build.sh, or the toolchain differs from Debian's clang 14).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp "${TMPDIR:-/tmp}/fastpath-check.XXXXXX.o")"
trap 'rm -f "$tmp"' EXIT
"$here/build.sh" "$tmp"
if ! cmp -s "$tmp" "$here/fastpath.bpf.o"; then
  echo "dataplane/bpf/fastpath.bpf.o is stale: run dataplane/bpf/build.sh and commit the result" >&2
  exit 1
fi
echo "dataplane/bpf/fastpath.bpf.o matches fastpath.bpf.c"
