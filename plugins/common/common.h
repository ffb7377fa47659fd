// plugins/common/common.h: types, error macros and small device helpers shared by every plugin.
// The launcher contract between plugins/ and csrc/ is in plugins/common/README.md. No Python, no allocation here.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace trtrun {

// Storage type of a float tensor (docs/plan-format.md "Dtypes").
enum class DType : int { F32 = 0, F16 = 1 };
// How an op computes inside (docs/plan-format.md "Precision").
enum class Precision : int { FP32 = 0, FP16 = 1, HYBRID = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
  }
  return "unknown-dtype";
}

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::FP16: return "fp16";
    case Precision::HYBRID: return "hybrid";
  }
  return "unknown-precision";
}

// A CUDA runtime failure. The runtime maps it to trtrun.DeviceError.
class CudaError : public std::runtime_error {
 public:
  CudaError(const char* file, int line, const char* expr, cudaError_t code)
      : std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) + " (" +
                           expr + "): " + cudaGetErrorName(code) + ": " + cudaGetErrorString(code)),
        code_(code) {}
  cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

// Throws std::invalid_argument("<op>: <msg>") when cond is false. Used for size/enum checks in launchers.
inline void require(bool cond, const char* op, const std::string& msg) {
  if (!cond) throw std::invalid_argument(std::string(op) + ": " + msg);
}

inline void check_dtype(DType t, const char* op, const char* what) {
  require(t == DType::F32 || t == DType::F16, op,
          std::string(what) + " dtype must be F32 (0) or F16 (1), got " + std::to_string(static_cast<int>(t)));
}

inline void check_precision(Precision p, const char* op) {
  require(p == Precision::FP32 || p == Precision::FP16 || p == Precision::HYBRID, op,
          "precision must be FP32 (0), FP16 (1) or HYBRID (2), got " + std::to_string(static_cast<int>(p)));
}

}  // namespace trtrun

// Throws trtrun::CudaError(file, line, error text) when a CUDA runtime call fails.
#define TRTRUN_CUDA_CHECK(expr)                                              \
  do {                                                                       \
    cudaError_t trtrun_err_ = (expr);                                        \
    if (trtrun_err_ != cudaSuccess) {                                        \
      throw ::trtrun::CudaError(__FILE__, __LINE__, #expr, trtrun_err_);     \
    }                                                                        \
  } while (0)

// After every kernel launch: reports launch-configuration errors (and earlier asynchronous errors).
#define TRTRUN_LAUNCH_CHECK() TRTRUN_CUDA_CHECK(cudaGetLastError())

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
