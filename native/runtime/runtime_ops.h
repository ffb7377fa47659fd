// native/runtime/runtime_ops.h: the runtime's own small kernels (not ops of the plan: input staging, casts, the unfused
// GEMM epilogue used when cuBLASLt has no fused one for a dtype combination, and the architecture probe).
// Launchers: plain pointers, no allocation, no sync; they throw trtrun::CudaError on a launch failure.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "trtrun/device.h"
#include "trtrun/plan.h"

namespace trtrun {

// dst[i] = (dst type) src[i] for float32 <-> float16 (same type: a device copy).
void launch_cast(const void* src, DType src_t, void* dst, DType dst_t, size_t count, cudaStream_t stream);

// y[r, c] = act(acc[r, c] + bias[c]) following docs/plan-format.md "hybrid": the biased value is rounded to
// y's dtype first, then GELU is computed in fp32 from that rounded value and rounded again. bias may be null.
// With sx and sw (an fp8 Linear's unscaled product of codes): acc[r, c] * (sx[r] * sw[c]) first (sw[0] for every c
// unless sw_per_channel), in separate fp32 roundings, so one pass gives what launch_fp8_rescale then this would.
void launch_bias_act(const float* acc, const void* bias, DType bias_t, void* y, DType y_t, int64_t rows,
                     int64_t cols, Activation act, cudaStream_t stream, const float* sx = nullptr,
                     const float* sw = nullptr, bool sw_per_channel = false);

// Device-side staging, in one kernel launch (a launch outside the CUDA graph costs ~2-3 us at batch 1:
// docs/performance.md), of every int32 [batch, seq_bucket] buffer a run needs; columns >= seq are padding (0):
//   Ids: an integer input [batch, seq] (int64 or int32, row stride in elements); ids outside [0, limit) are
//     replaced by 0 (memory safety) and flagged: *error_flag gets 1 (it lives in mapped pinned memory the host
//     reads after a sync).
//   Mask: an integer mask input, as (v != 0).
//   ValidMask: (j < seq), the key mask of padded columns for attention without a mask input (src unused).
//   Zeros: token types not given (src unused).
enum class StageKind : int { Ids = 0, Mask = 1, ValidMask = 2, Zeros = 3 };
struct StageJob {
  const void* src = nullptr;  // [batch, seq] with row stride src_row_stride; unused by ValidMask and Zeros
  bool src_is_int64 = false;
  int64_t src_row_stride = 0;
  int32_t* dst = nullptr;
  StageKind kind = StageKind::Zeros;
  int64_t limit = 0;  // Ids: valid ids are [0, limit)
};
constexpr int kMaxStageJobs = 8;
// jobs: at most kMaxStageJobs (more: InputError). Out-of-range ids set *error_flag as above.
void launch_stage_inputs(const StageJob* jobs, int n_jobs, int batch, int seq, int seq_bucket, int32_t* error_flag,
                         cudaStream_t stream);

// cudaFuncGetAttributes on a kernel of this build: cudaErrorNoKernelImageForDevice (or
// cudaErrorInvalidDeviceFunction) when the build has no code for the current device's architecture.
cudaError_t probe_kernel_image();

}  // namespace trtrun
