// csrc/kernels.h: the runtime's own small kernels (not ops of the plan: input staging, casts, the unfused
// GEMM epilogue used when cuBLASLt has no fused one for a dtype combination, and the architecture probe).
// Launchers: plain pointers, no allocation, no sync; they throw trtrun::CudaError on a launch failure.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "runtime_common.h"

namespace trtrun {

// dst[i] = (dst type) src[i] for float32 <-> float16 (same type: a device copy).
void launch_cast(const void* src, ElemType src_t, void* dst, ElemType dst_t, size_t count, cudaStream_t stream);

// y[r, c] = act(acc[r, c] + bias[c]) following docs/plan-format.md "hybrid": the biased value is rounded to
// y's dtype first, then GELU is computed in fp32 from that rounded value and rounded again. bias may be null.
void launch_bias_act(const float* acc, const void* bias, ElemType bias_t, void* y, ElemType y_t, int64_t rows,
                     int64_t cols, Activation act, cudaStream_t stream);

// How an integer graph input is converted to the device's int32.
enum class InputKind : int { Ids = 0, Mask = 1 };

// Device-side staging of an integer input [batch, seq] (int64 or int32, row stride in elements) into an int32
// [batch, seq_bucket] buffer: columns >= seq are padding (0). Ids outside [0, limit) are replaced by 0 (memory
// safety) and flagged: *error_flag gets 1 (it lives in mapped pinned memory the host reads after a sync).
// Masks become (v != 0).
void launch_stage_input(const void* src, bool src_is_int64, int64_t src_row_stride, int32_t* dst, int batch,
                        int seq, int seq_bucket, InputKind kind, int64_t limit, int32_t* error_flag,
                        cudaStream_t stream);

// mask[b, j] = (j < seq) for j < seq_bucket: the key mask of padded columns for attention without a mask input.
void launch_valid_mask(int32_t* mask, int batch, int seq, int seq_bucket, cudaStream_t stream);

// cudaFuncGetAttributes on a kernel of this build: cudaErrorNoKernelImageForDevice (or
// cudaErrorInvalidDeviceFunction) when the build has no code for the current device's architecture.
cudaError_t probe_kernel_image();

}  // namespace trtrun
