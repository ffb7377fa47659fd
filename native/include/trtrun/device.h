// native/include/trtrun/device.h: RAII holders of CUDA objects (device selection, device and pinned memory), the
// texts of out-of-memory and wrong-architecture errors, and the checks that a device can run this build.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "trtrun/errors.h"

namespace trtrun {

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

// The texts of the out-of-memory and wrong-architecture errors (no iostreams; see native/runtime/device.cpp).
std::string alloc_error_message(size_t nbytes, const char* what, bool have_info, size_t free_b, size_t total_b,
                                const char* code_name, const char* file, int line);
std::string arch_error_message(const char* archs, int device, const char* name, int major, int minor,
                               const char* how);
// Throws trtrun::DeviceError with a readable out-of-memory message ("... needs N MiB, M MiB free").
[[noreturn]] void throw_alloc_error(cudaError_t code, size_t nbytes, const char* what, const char* file, int line);

// ---- Device checks --------------------------------------------------------------------------------------------
// 1 when a CMAKE_CUDA_ARCHITECTURES list ("90", "80-real,90-virtual", ...) has code a device of compute
// capability major.minor can run, 0 when it has none, -1 when the list cannot be read ("all", "native").
int archs_cover_device(const std::string& archs, int major, int minor);
// "" when this build's kernels run on `device`; otherwise why not (no device, wrong architecture, ...).
std::string device_problem(int device);
// Throws DeviceError with device_problem()'s text when it is not empty.
void require_usable_device(int device);

}  // namespace trtrun
