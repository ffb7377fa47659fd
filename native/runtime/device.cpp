// native/runtime/device.cpp: error texts, RAII buffers, device checks (see trtrun/device.h).
#include "trtrun/device.h"

#include <cublasLt.h>
#include <unistd.h>

#include <string>

#include "runtime/runtime_ops.h"

namespace trtrun {

const char* cublas_status_text(int status) {
  switch (static_cast<cublasStatus_t>(status)) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED (no usable device or driver?)";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED (out of memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH (feature not supported by this GPU)";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED (kernel failed to run)";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

// ---- DeviceGuard ----
DeviceGuard::DeviceGuard(int device) {
  TRTRUN_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    TRTRUN_CUDA_CHECK(cudaSetDevice(device));
    changed_ = true;
  }
}
DeviceGuard::~DeviceGuard() {
  if (changed_) TRTRUN_CUDA_IGNORE(cudaSetDevice(previous_));
}

// ---- allocation errors ----
// Messages are built with std::string and std::to_string only: no iostreams. On the GPU machine the only two
// paths that formatted with std::ostringstream (this one and the architecture message) crashed the process
// (SIGSEGV on an H200), while string building elsewhere worked; iostreams also pull in locales.
std::string alloc_error_message(size_t nbytes, const char* what, bool have_info, size_t free_b, size_t total_b,
                                const char* code_name, const char* file, int line) {
  std::string msg = std::string("out of memory: ") + what + " needs " + std::to_string(nbytes >> 20) + " MiB (" +
                    std::to_string(nbytes) + " bytes)";
  if (have_info)
    msg += "; the device has " + std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
           " MiB";
  msg += std::string(" [") + code_name + " at " + file + ":" + std::to_string(line) + "]";
  return msg;
}

void throw_alloc_error(cudaError_t code, size_t nbytes, const char* what, const char* file, int line) {
  (void)cudaGetLastError();  // an allocation failure is not sticky; clear the slot so later calls are unaffected
  size_t free_b = 0, total_b = 0;
  const bool have_info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
  if (!have_info) (void)cudaGetLastError();
  throw DeviceError(alloc_error_message(nbytes, what, have_info, free_b, total_b, cudaGetErrorName(code), file, line));
}

// ---- DeviceBuffer ----
DeviceBuffer::DeviceBuffer(size_t nbytes, const char* what) : size_(nbytes) {
  if (nbytes == 0) return;
  // More than the device has in total is refused before asking the driver: an absurd size is an input
  // problem to report, not something to hand to cudaMalloc.
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    if (nbytes > total_b) throw_alloc_error(cudaErrorMemoryAllocation, nbytes, what, __FILE__, __LINE__);
  } else {
    (void)cudaGetLastError();
  }
  cudaError_t e = cudaMalloc(&ptr_, nbytes);
  if (e != cudaSuccess) {
    ptr_ = nullptr;
    if (e == cudaErrorMemoryAllocation) throw_alloc_error(e, nbytes, what, __FILE__, __LINE__);
    throw CudaError(__FILE__, __LINE__, "cudaMalloc", static_cast<int>(e), cudaGetErrorName(e),
                    cudaGetErrorString(e));
  }
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) TRTRUN_CUDA_IGNORE(cudaFree(ptr_));
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
  o.ptr_ = nullptr;
  o.size_ = 0;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) TRTRUN_CUDA_IGNORE(cudaFree(ptr_));
    ptr_ = o.ptr_;
    size_ = o.size_;
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

// ---- PinnedBuffer ----
PinnedBuffer::PinnedBuffer(size_t nbytes, const char* what, unsigned flags) : size_(nbytes) {
  if (nbytes == 0) return;
  // Page-locking most of the host's memory would starve everything else on it: refuse above half of it.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const size_t ram = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  if (ram > 0 && nbytes > ram / 2)
    throw DeviceError(std::string("out of pinned host memory: ") + what + " needs " + std::to_string(nbytes >> 20) +
                      " MiB, more than half of this host's " + std::to_string(ram >> 20) + " MiB");
  cudaError_t e = cudaHostAlloc(&ptr_, nbytes, flags);
  if (e != cudaSuccess) {
    ptr_ = nullptr;
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw DeviceError(std::string("out of pinned host memory: ") + what + " needs " +
                        std::to_string(nbytes >> 20) + " MiB (" + std::to_string(nbytes) + " bytes)");
    }
    throw CudaError(__FILE__, __LINE__, "cudaHostAlloc", static_cast<int>(e), cudaGetErrorName(e),
                    cudaGetErrorString(e));
  }
}
PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) TRTRUN_CUDA_IGNORE(cudaFreeHost(ptr_));
}
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
  o.ptr_ = nullptr;
  o.size_ = 0;
}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) TRTRUN_CUDA_IGNORE(cudaFreeHost(ptr_));
    ptr_ = o.ptr_;
    size_ = o.size_;
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

// ---- device checks ----
int archs_cover_device(const std::string& archs, int major, int minor) {
  // CMAKE_CUDA_ARCHITECTURES entries, comma separated: NN[a|f][-real|-virtual]. Plain NN builds machine code
  // (sm_NN) and PTX (compute_NN). Machine code runs on the same major version with an equal or higher minor
  // (exactly the same chip for the 'a' variants); PTX is compiled by the driver for any newer chip.
  const int dev = major * 10 + minor;
  bool parsed_any = false;
  size_t pos = 0;
  while (pos <= archs.size()) {
    size_t end = archs.find(',', pos);
    if (end == std::string::npos) end = archs.size();
    std::string item = archs.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    size_t i = 0;
    while (i < item.size() && item[i] >= '0' && item[i] <= '9') ++i;
    if (i < 2) return -1;  // "all", "native", ...: cannot tell from the list
    const int nn = std::stoi(item.substr(0, i));
    std::string rest = item.substr(i);
    bool specific = false;
    if (!rest.empty() && (rest[0] == 'a' || rest[0] == 'f')) {
      specific = true;
      rest = rest.substr(1);
    }
    bool real = true, virt = true;
    if (rest == "-real") virt = false;
    else if (rest == "-virtual") real = false;
    else if (!rest.empty()) return -1;
    parsed_any = true;
    if (real && (specific ? nn == dev : (nn / 10 == major && nn % 10 <= minor))) return 1;
    if (virt && (specific ? nn == dev : nn <= dev)) return 1;
  }
  return parsed_any ? 0 : -1;
}

std::string arch_error_message(const char* archs, int device, const char* name, int major, int minor,
                               const char* how) {
  const std::string cc = std::to_string(major) + std::to_string(minor);
  return std::string("this trtrun build has GPU code for CUDA architecture(s) ") + archs +
         " (CMAKE_CUDA_ARCHITECTURES) only, but device " + std::to_string(device) + " (" + name + ") is sm_" + cc +
         "; rebuild with CMAKE_ARGS=\"-DCMAKE_CUDA_ARCHITECTURES=" + cc + "\" pip install . [" + how + "]";
}

std::string device_problem(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(e) + " (" +
           cudaGetErrorString(e) + ")";
  }
  if (count == 0) return "no CUDA device is visible";
  if (device < 0 || device >= count)
    return "device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
           " CUDA device(s) visible)";
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(e);
  }
  auto wrong_arch = [&](const char* how) {
    return arch_error_message(TRTRUN_CUDA_ARCHS, device, prop.name, prop.major, prop.minor, how);
  };
  // First from the list the build was made for (no kernel touched), then by asking the runtime about one of
  // this build's kernels (cudaFuncGetAttributes: cudaErrorNoKernelImageForDevice).
  if (archs_cover_device(TRTRUN_CUDA_ARCHS, prop.major, prop.minor) == 0) return wrong_arch("by the build's list");
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) (void)cudaGetLastError();
  if (cudaSetDevice(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "cannot select device " + std::to_string(device);
  }
  e = probe_kernel_image();
  if (previous != device) TRTRUN_CUDA_IGNORE(cudaSetDevice(previous));
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction ||
      e == cudaErrorUnsupportedPtxVersion)
    return wrong_arch(cudaGetErrorName(e));
  if (e != cudaSuccess)
    return std::string("device ") + std::to_string(device) + " (" + prop.name + ") cannot run kernels: " +
           cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  return "";
}

void require_usable_device(int device) {
  std::string p = device_problem(device);
  if (!p.empty()) throw DeviceError(p);
}

}  // namespace trtrun
