// native/kernels/epilogue/epilogue.h: what a Linear does after its GEMM when cuBLASLt's epilogues cannot do it
// (docs/plan-format.md, Linear: activation silu, relu, relu2 or quick_gelu, gated SwiGLU/GeGLU, residual input).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// For r < rows, c < m, with width = 2m when gated, else m:
//   h(j)  = src[r, j] (+ bias[j])                              in fp32, j < width
//   round_h: h rounded to y_t first (the plan's fp16/hybrid rule: the biased GEMM output is rounded to the
//            output dtype before an activation or a gate reads it; false for fp32 ops, or when src already holds
//            rounded values)
//   gated:   v = act(h(c)) * h(m + c)   ([gate | up] halves; act None: the plain product)
//   else:    v = act(h(c))              (act None: h(c) itself)
//   residual: v += residual[r, c]       (fp32), then y[r, c] = v rounded once to y_t.
// Activations in fp32 from the cancellation-free forms trtrun.reference._gelu32 uses: silu x / (1 + e^-x), gelu_erf
// 0.5 x erfc(-x / sqrt 2), gelu_tanh x / (1 + e^(-2 a)), relu max(x, 0), quick_gelu x / (1 + e^(-1.702 x)). src may
// be y itself when not gated (in place, one read and one write per element). src [rows, width] in src_t, bias
// [width] in bias_t (nullable), residual [rows, m] in r_t (nullable), y [rows, m] in y_t, all contiguous. Throws trtrun::InputError / trtrun::CudaError.
void launch_linear_epilogue(const void* src, DType src_t, const void* bias /*nullable*/, DType bias_t,
                            const void* residual /*nullable*/, DType r_t, void* y, DType y_t, long long rows, int m,
                            bool gated, Activation act, bool round_h, cudaStream_t stream);

}  // namespace trtrun
