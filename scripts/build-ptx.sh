#!/usr/bin/env bash
# build-ptx.sh compiles kernels/cuda/svdq.cu to the PTX that kernels/ embeds:
#   kernels/ptx/svdq_sm90a.ptx  -gencode=arch=compute_90a,code=sm_90a (Hopper)
#   kernels/ptx/svdq_sm80.ptx   -gencode=arch=compute_80,code=sm_80   (Ampere, Ada, and JIT for newer)
# Each file starts with one header line naming the target, the nvcc version
# and the SHA-256 of the CUDA sources, which kernels/ptx.go parses (a test
# fails in CI when the sources changed and the PTX was not rebuilt).
# Needs nvcc (CUDA 12.4 or newer). Usage: scripts/build-ptx.sh [REPORT_DIR]
# With REPORT_DIR, ptxas's per-kernel resource report is written there.
set -euo pipefail
cd "$(dirname "$0")/.."
src=kernels/cuda/svdq.cu
report=${1:-}
ver=$(nvcc --version | grep -i 'release' | head -1 | tr -d '\r')
hash=$(cd kernels/cuda && for f in $(LC_ALL=C ls); do printf '%s\n' "$f"; cat "$f"; done | sha256sum | cut -d' ' -f1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-O3 -std=c++17 -Ikernels/cuda)

build() {
  local target=$1 gencode=$2 virt=$3 out=kernels/ptx/svdq_$1.ptx
  # Older nvcc refuses -ptx with a real code= target: fall back to the virtual arch.
  nvcc -ptx "${flags[@]}" "$gencode" -o "$tmp/$target.ptx" "$src" ||
    nvcc -ptx "${flags[@]}" -arch="$virt" -o "$tmp/$target.ptx" "$src"
  { printf '// svdq-ptx target=%s source-sha256=%s nvcc="%s"\n' "$target" "$hash" "$ver"; cat "$tmp/$target.ptx"; } >"$out"
  echo "wrote $out ($(wc -c <"$out") bytes)"
  if [ -n "$report" ]; then
    mkdir -p "$report"
    nvcc -cubin "${flags[@]}" "$gencode" -Xptxas -v -o "$tmp/$target.cubin" "$src" >"$report/ptxas_$target.txt" 2>&1
    echo "$target: max registers $(grep -o 'Used [0-9]* registers' "$report/ptxas_$target.txt" | awk '{print $2}' | sort -n | tail -1)," \
      "spills: $(grep -c '[1-9][0-9]* bytes spill' "$report/ptxas_$target.txt" || true) kernels"
  fi
}
mkdir -p kernels/ptx
build sm90a -gencode=arch=compute_90a,code=sm_90a compute_90a
build sm80 -gencode=arch=compute_80,code=sm_80 compute_80
