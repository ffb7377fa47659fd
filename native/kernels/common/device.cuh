// native/kernels/common/device.cuh: what the kernels' .cu files share on the device: fp32/fp16 loads and stores,
// warp reductions, and the compile-time bool dispatch. Types, errors and launch checks are host code:
// trtrun/types.h, trtrun/errors.h (TRTRUN_LAUNCH_CHECK) and kernels/common/checks.h.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/common/checks.h"
#include "trtrun/errors.h"
#include "trtrun/types.h"

// Compile-time dispatch of a runtime bool to a constexpr (BOOL_SWITCH, as in flash-attention).
#define TRTRUN_BOOL_SWITCH(cond, NAME, ...) \
  [&] {                                     \
    if (cond) {                             \
      constexpr bool NAME = true;           \
      return __VA_ARGS__();                 \
    } else {                                \
      constexpr bool NAME = false;          \
      return __VA_ARGS__();                 \
    }                                       \
  }()

#ifdef __CUDACC__
namespace trtrun {
namespace dev {

// Load/store one element of a float tensor stored as T, converting to/from fp32.
template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ __half warp_sum_h(__half v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __hadd(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace dev
}  // namespace trtrun
#endif  // __CUDACC__
