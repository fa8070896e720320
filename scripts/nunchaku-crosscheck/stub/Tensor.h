// Stand-in for nunchaku's src/Tensor.h (scripts/nunchaku-crosscheck): only
// the scalar-type enum that src/kernels/dispatch_utils.h names.
#pragma once
struct Tensor {
    enum ScalarType { INVALID_SCALAR_TYPE, INT8, INT16, INT32, INT64, FP16, FP32, BF16, FP8_E4M3, FP8_E5M2 };
};
