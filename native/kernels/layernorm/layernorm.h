// native/kernels/layernorm/layernorm.h: LayerNorm fused with the residual add (docs/plan-format.md, LayerNorm op).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// s = x (+ residual); y = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta; sum_out = s (optional).
// x, residual, y, sum_out: [rows, n] contiguous, each in its own dtype; gamma, beta: [n] in param_t.
// prec FP32/HYBRID: the add and the statistics in fp32. FP16: the add and every statistics step in fp16.
// Throws trtrun::InputError on bad sizes/enums/null pointers, trtrun::CudaError on a launch failure.
void launch_layernorm(const void* x, DType x_t, const void* residual /*nullable*/, DType r_t,
                      const void* gamma, const void* beta, DType param_t,
                      void* y, DType y_t, void* sum_out /*nullable*/, DType sum_t,
                      int rows, int n, float eps, Precision prec, cudaStream_t stream);

// The same with x given as the slices of a split-K GEMM that are still to be summed (the GEMM's reduction and bias
// epilogue done here, so that a Linear feeding a LayerNorm at few rows takes one kernel less):
//   x[r, c] = sum_{s < n_parts} parts[s * part_stride + r * n + c] + bias[c]   (fp32, in slice order)
// then as above (residual, statistics in fp32, y, sum_out). parts: fp32, 16-byte aligned; bias nullable, [n] in
// bias_t. prec must be FP32 or HYBRID (fp16 statistics would round x first: not this).
void launch_layernorm_parts(const float* parts, int n_parts, long long part_stride, const void* bias, DType bias_t,
                            const void* residual /*nullable*/, DType r_t, const void* gamma, const void* beta,
                            DType param_t, void* y, DType y_t, void* sum_out /*nullable*/, DType sum_t, int rows,
                            int n, float eps, Precision prec, cudaStream_t stream);

}  // namespace trtrun
