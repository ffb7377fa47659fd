// native/kernels/common/checks.h: the argument checks every kernel launcher makes (host code, no CUDA).
#pragma once

#include <string>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// A float tensor's dtype: InputError("<op>: <what> dtype must be float32 or float16, got int32") otherwise.
inline void check_dtype(DType t, const char* op, const char* what) {
  require(t == DType::F32 || t == DType::F16, op,
          std::string(what) + " dtype must be float32 or float16, got " + to_string(t));
}

// The precisions these kernels compute in: fp8 is a Linear's only (its GEMM is cuBLASLt's; native/kernels/quantize
// makes its operand), so a kernel handed it says so.
inline void check_precision(Precision p, const char* op) {
  require(p == Precision::FP32 || p == Precision::FP16 || p == Precision::HYBRID, op,
          std::string("precision must be fp32, fp16 or hybrid (fp8 is a Linear's only), got ") + to_string(p));
}

}  // namespace trtrun
