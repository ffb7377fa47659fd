// native/kernels/rmsnorm/rmsnorm.h: RMSNorm fused with the residual add (docs/plan-format.md, RMSNorm op).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// s = x (+ residual); y = s / sqrt(mean(s^2) + eps) * gamma; sum_out = s (optional).
// x, residual, y, sum_out: [rows, n] contiguous, each in its own dtype; gamma: [n] in gamma_t.
// prec FP32/HYBRID: the add, the mean of squares and the scaling in fp32 (s / sqrt(ms + eps) divided, not
// multiplied by rsqrt, as trtrun.reference.ref_rmsnorm does). FP16: the add, every square, their sum, the mean,
// + eps, sqrt, the division and * gamma each rounded to fp16.
// residual_after (OLMo-2's and EXAONE 4's post-norm blocks; a residual, no sum_out): y = residual + RMSNorm(x), the
// add in the statistics' precision (fp32, or fp16 in FP16) on the unrounded norm, then one rounding to y_t.
// Throws trtrun::InputError on bad sizes/enums/null pointers, trtrun::CudaError on a launch failure.
void launch_rmsnorm(const void* x, DType x_t, const void* residual /*nullable*/, DType r_t, const void* gamma,
                    DType gamma_t, void* y, DType y_t, void* sum_out /*nullable*/, DType sum_t, int rows, int n,
                    float eps, Precision prec, cudaStream_t stream, bool residual_after = false);

}  // namespace trtrun
