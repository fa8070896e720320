#!/usr/bin/env bash
# run.sh: cross-check svdq's emulation against nunchaku's own INT4 kernels
# (issue 20), on a GPU machine with nvcc (CUDA 12.4 or newer):
#
#   scripts/nunchaku-crosscheck/run.sh NUNCHAKU_SRC MODEL REFERENCE CALIB [WORKDIR] [-- svdq flags]
#
# NUNCHAKU_SRC is a nunchaku source tree (its src/kernels/zgemm headers are
# compiled; nothing of it is part of svdq); MODEL an svdq INT4 file,
# REFERENCE its 16-bit checkpoint and CALIB its calibration file. Builds
# crosscheck.cu against the tree (stub/ stands in for nunchaku's common.h
# and Tensor.h), exports the layers (`svdq crosscheck export`), runs
# nunchaku's kernels on them and compares (`svdq crosscheck compare`, which
# prints the histograms and sets the exit status). nunchaku's INT4 kernels
# are built for the GPU's own architecture on sm_75..sm_89; on newer GPUs
# (Hopper, where nunchaku does not run INT4) its sm_80 code is JIT-compiled
# from PTX, which runs there through the INT4 mma.sync (slowly).
# SVDQ names the svdq binary (default: svdq on PATH).
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
src=$1 model=$2 ref=$3 calib=$4
shift 4
work=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then work=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
svdq=${SVDQ:-svdq}
[ -f "$src/src/kernels/zgemm/gemm_w4a4.cuh" ] || { echo "$src: not a nunchaku source tree (no src/kernels/zgemm/gemm_w4a4.cuh)" >&2; exit 2; }
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.[:space:]')
if [ "$cc" -ge 75 ] && [ "$cc" -lt 90 ]; then
  gen="-gencode=arch=compute_$cc,code=sm_$cc"
else
  gen="-gencode=arch=compute_80,code=compute_80"
fi
bin=$work/crosscheck
if [ ! -x "$bin" ]; then
  echo "building nunchaku's kernels ($gen)"
  nvcc -O3 -std=c++20 $gen -DENABLE_BF16=1 --expt-relaxed-constexpr --expt-extended-lambda \
    -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__ \
    -U__CUDA_NO_HALF2_CONVERSIONS__ -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -U__CUDA_NO_BFLOAT162_OPERATORS__ -U__CUDA_NO_BFLOAT162_CONVERSIONS__ \
    -I"$here/stub" -I"$src/src/kernels/zgemm" -I"$src/src/kernels" \
    "$here/crosscheck.cu" -o "$bin"
fi
"$svdq" crosscheck export --model "$model" --reference "$ref" --calib "$calib" --dir "$work/layers" "$@"
"$bin" "$work/layers"
"$svdq" crosscheck compare --model "$model" --reference "$ref" --calib "$calib" --dir "$work/layers" "$@"
