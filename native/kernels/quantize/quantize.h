// native/kernels/quantize/quantize.h: an fp8 Linear's activation quantization (docs/plan-format.md, "fp8";
// trtrun/fp8.py quantize_activation is the reference) and the rescaling of an unscaled fp8 GEMM product.
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// Rows of x [rows, k] (float32 or float16, contiguous) -> q [rows, k] float8_e4m3fn and their scales [rows] float32:
//   s_r = *x_scale                       static (x_scale: one float32 on the device), or else per token
//   s_r = amax_r / 448                   amax_r = max |float32(x[r, c])| (NaN if the row holds a NaN), one fp32
//                                        division; 1 when amax_r == 0
//   q[r, c] = e4m3(float32(x[r, c]) / s_r)   one fp32 division, rounded to nearest even onto E4M3, saturated to
//                                        +-448 (infinities too); NaN stays NaN
// scales may be null only with a static x_scale (a scalar-scaled GEMM reads x_scale itself). k >= 1, rows >= 0.
// Throws trtrun::InputError / trtrun::CudaError.
void launch_quantize_fp8(const void* x, DType x_t, const float* x_scale /*nullable: per token*/, void* q,
                         float* scales /*nullable with x_scale*/, long long rows, int k, cudaStream_t stream);

// acc [rows, n] float32, in place: acc[r, c] *= (sx[r] * sw[c])  (sw[0] for every c unless sw_per_channel): the
// scale product in fp32 first, then the accumulator times it, as trtrun/fp8.py fp8_gemm. For a GEMM of the E4M3
// codes without cuBLASLt's scales (native/runtime/context.cpp uses it where cuBLASLt offers no scaled algorithm).
void launch_fp8_rescale(float* acc, const float* sx, const float* sw, bool sw_per_channel, long long rows, int n,
                        cudaStream_t stream);

}  // namespace trtrun
