// plugins/layernorm/layernorm.h: LayerNorm fused with the residual add (docs/plan-format.md, LayerNorm op).
#pragma once

#include "../common/common.h"

namespace trtrun {

// s = x (+ residual); y = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta; sum_out = s (optional).
// x, residual, y, sum_out: [rows, n] contiguous, each in its own dtype; gamma, beta: [n] in param_t.
// prec FP32/HYBRID: the add and the statistics in fp32. FP16: the add and every statistics step in fp16.
// Throws std::invalid_argument on bad sizes/enums/null pointers, trtrun::CudaError on a launch failure.
void launch_layernorm(const void* x, DType x_t, const void* residual /*nullable*/, DType r_t,
                      const void* gamma, const void* beta, DType param_t,
                      void* y, DType y_t, void* sum_out /*nullable*/, DType sum_t,
                      int rows, int n, float eps, Precision prec, cudaStream_t stream);

}  // namespace trtrun
