// csrc/runtime_common.h: what the runtime (engine, context, GEMMs) shares: error classes and macros, the plan
// description the Python side hands over (already validated by trtrun.plan), and RAII holders of CUDA objects.
// No Python in here: the pybind11 layer (bind_*.cpp) converts to and from these structs.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/common.h"  // plugins/common/common.h: DType, Precision, CudaError, TRTRUN_CUDA_CHECK

namespace trtrun {

// ---- Errors -------------------------------------------------------------------------------------------------
// Mapped by the binding: InputError -> trtrun.errors.InputError, ShapeError -> trtrun.errors.ShapeError,
// std::invalid_argument -> trtrun.errors.InputError (both ValueError), CudaError/CublasError/DeviceError ->
// trtrun.errors.DeviceError.
class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class ShapeError : public InputError {
 public:
  using InputError::InputError;
};
// A device-side failure that is not a CUDA API return code (wrong architecture, unusable device).
class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

const char* cublas_status_text(cublasStatus_t s);

class CublasError : public std::runtime_error {
 public:
  CublasError(const char* file, int line, const char* expr, cublasStatus_t s)
      : std::runtime_error(std::string("cuBLAS error at ") + file + ":" + std::to_string(line) + " (" + expr +
                           "): " + cublas_status_text(s)),
        status_(s) {}
  cublasStatus_t status() const noexcept { return status_; }

 private:
  cublasStatus_t status_;
};

}  // namespace trtrun

#define TRTRUN_CUBLAS_CHECK(expr)                                           \
  do {                                                                      \
    cublasStatus_t trtrun_st_ = (expr);                                     \
    if (trtrun_st_ != CUBLAS_STATUS_SUCCESS) {                              \
      throw ::trtrun::CublasError(__FILE__, __LINE__, #expr, trtrun_st_);   \
    }                                                                       \
  } while (0)

// For destructors and cleanup paths: never throw, drop the error (and clear CUDA's last-error slot).
#define TRTRUN_CUDA_IGNORE(expr) \
  do {                           \
    (void)(expr);                \
    (void)cudaGetLastError();    \
  } while (0)

namespace trtrun {

// ---- Element types of tensors and weights -------------------------------------------------------------------
// Float tensors use plugins' DType (F32 = 0, F16 = 1); integer graph inputs live as int32 on the device.
enum class ElemType : int { F32 = 0, F16 = 1, I32 = 2, I64 = 3 };

inline size_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::F32: return 4;
    case ElemType::F16: return 2;
    case ElemType::I32: return 4;
    case ElemType::I64: return 8;
  }
  return 0;
}
inline const char* elem_name(ElemType t) {
  switch (t) {
    case ElemType::F32: return "float32";
    case ElemType::F16: return "float16";
    case ElemType::I32: return "int32";
    case ElemType::I64: return "int64";
  }
  return "?";
}
inline bool is_float(ElemType t) { return t == ElemType::F32 || t == ElemType::F16; }
inline DType to_dtype(ElemType t) { return t == ElemType::F16 ? DType::F16 : DType::F32; }

// ---- The plan, as Python hands it over ----------------------------------------------------------------------
// A dimension is a fixed size (> 0) or a symbol: DIM_B (batch) or DIM_S (sequence).
constexpr int64_t DIM_B = -1;
constexpr int64_t DIM_S = -2;

struct TensorDesc {
  std::string name;
  ElemType type = ElemType::F32;  // on the device: graph inputs of int64 are stored as I32
  std::vector<int64_t> dims;
  // Elements at a given (batch, seq); throws on overflow.
  size_t numel(int64_t batch, int64_t seq) const;
};

enum class OpType : int { Embedding = 0, Linear = 1, Attention = 2, LayerNorm = 3 };
enum class Activation : int { None = 0, GeluErf = 1, GeluTanh = 2 };

constexpr int NO_TENSOR = -1;
constexpr int NO_WEIGHT = -1;

struct OpDesc {
  OpType type = OpType::Linear;
  std::string name;
  std::vector<int> inputs;   // tensor indices, NO_TENSOR for an absent optional input
  std::vector<int> outputs;  // tensor indices, NO_TENSOR for an absent optional output
  std::map<std::string, int> weights;  // role -> weight index
  Precision precision = Precision::HYBRID;
  // attributes (the ones an op type does not use stay at their defaults)
  Activation activation = Activation::None;
  float epsilon = 1e-5f;
  int position_offset = 0;
  int num_heads = 0;
  int head_size = 0;
  float scale = 1.0f;
  bool causal = false;

  int weight(const std::string& role) const {
    auto it = weights.find(role);
    return it == weights.end() ? NO_WEIGHT : it->second;
  }
};

struct WeightDesc {
  std::string name;
  ElemType type = ElemType::F32;
  std::vector<int64_t> shape;
  const void* host = nullptr;  // valid only while the Engine is being built
  size_t nbytes = 0;
};

struct EngineDesc {
  std::vector<TensorDesc> tensors;
  std::vector<OpDesc> ops;
  std::vector<WeightDesc> weights;
  std::vector<int> inputs;   // graph inputs (tensor indices)
  std::vector<int> outputs;  // graph outputs (tensor indices)
  int64_t batch_max = 1;
  int64_t seq_max = 1;       // the largest sequence (bucket) a context must hold
  bool tf32 = false;
};

// ---- Small RAII helpers --------------------------------------------------------------------------------------
// Sets the current device for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool changed_ = false;
};

// cudaMalloc'd memory; an allocation failure becomes a CudaError naming the size and purpose.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t nbytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// cudaHostAlloc'd (page-locked) memory for asynchronous copies.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(size_t nbytes, const char* what, unsigned flags = cudaHostAllocDefault);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// The texts of the out-of-memory and wrong-architecture errors (no iostreams; see runtime_common.cpp).
std::string alloc_error_message(size_t nbytes, const char* what, bool have_info, size_t free_b, size_t total_b,
                                const char* code_name, const char* file, int line);
std::string arch_error_message(const char* archs, int device, const char* name, int major, int minor,
                               const char* how);
// Throws trtrun::DeviceError with a readable out-of-memory message ("... needs N MiB, M MiB free").
[[noreturn]] void throw_alloc_error(cudaError_t code, size_t nbytes, const char* what, const char* file, int line);

// Overflow-checked arithmetic for sizes computed from user shapes.
size_t checked_mul(size_t a, size_t b, const char* what);
size_t checked_add(size_t a, size_t b, const char* what);
inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// ---- Device checks --------------------------------------------------------------------------------------------
// 1 when a CMAKE_CUDA_ARCHITECTURES list ("90", "80-real,90-virtual", ...) has code a device of compute
// capability major.minor can run, 0 when it has none, -1 when the list cannot be read ("all", "native").
int archs_cover_device(const std::string& archs, int major, int minor);
// "" when this build's kernels run on `device`; otherwise why not (no device, wrong architecture, ...).
std::string device_problem(int device);
// Throws DeviceError with device_problem()'s text when it is not empty.
void require_usable_device(int device);

}  // namespace trtrun
