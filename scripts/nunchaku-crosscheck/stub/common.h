// Stand-in for nunchaku's src/common.h when only its zgemm kernel headers are
// compiled (scripts/nunchaku-crosscheck): the few helpers those headers use,
// without spdlog, cuBLAS or the Tensor class. Written for svdq; nothing of
// nunchaku's is copied here.
#pragma once
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <array>
#include <tuple>
#include <cuda_runtime_api.h>

inline cudaError_t checkCUDA(cudaError_t e) {
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(e));
        exit(3);
    }
    return e;
}

template<typename T>
constexpr T ceilDiv(T a, T b) {
    return (a + b - 1) / b;
}
