// native/include/trtrun/errors.h: the error classes every part of the native code throws, and the check macros.
//
//   std::invalid_argument
//     InputError        a bad argument, plan description, option or name     -> trtrun.errors.InputError
//       ShapeError      a shape outside what the plan or a kernel allows      -> trtrun.errors.ShapeError
//   std::runtime_error
//     DeviceError       a device that cannot run this build, out of memory   -> trtrun.errors.DeviceError
//     CudaError         a CUDA runtime call failed (its code, name and text)  -> trtrun.errors.DeviceError
//     CublasError       a cuBLAS(Lt) call failed (its status and text)        -> trtrun.errors.DeviceError
//
// The Python module (native/python/module.cpp) maps them as shown. Library code throws; it never exits or aborts,
// and destructors never throw (TRTRUN_CUDA_IGNORE). No CUDA headers here: the macros expand to CUDA calls only
// where they are used, so host-only code and tests include this file as it is.
#pragma once

#include <stdexcept>
#include <string>

namespace trtrun {

class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class ShapeError : public InputError {
 public:
  using InputError::InputError;
};
class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// code: the cudaError_t value; name and text: cudaGetErrorName / cudaGetErrorString of it.
class CudaError : public std::runtime_error {
 public:
  CudaError(const char* file, int line, const char* expr, int code, const char* name, const char* text)
      : std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) + " (" + expr +
                           "): " + name + ": " + text),
        code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// status: the cublasStatus_t value; text: cublas_status_text(status).
class CublasError : public std::runtime_error {
 public:
  CublasError(const char* file, int line, const char* expr, int status, const char* text)
      : std::runtime_error(std::string("cuBLAS error at ") + file + ":" + std::to_string(line) + " (" + expr +
                           "): " + text),
        status_(status) {}
  int status() const noexcept { return status_; }

 private:
  int status_;
};

// The name of a cublasStatus_t value with a hint of its usual cause (native/runtime/device.cpp).
const char* cublas_status_text(int status);

// Throws InputError("<op>: <msg>") when cond is false: the argument checks of kernel launchers.
inline void require(bool cond, const char* op, const std::string& msg) {
  if (!cond) throw InputError(std::string(op) + ": " + msg);
}

}  // namespace trtrun

// Throws trtrun::CudaError (file, line, the expression, the CUDA error name and text) when a CUDA runtime call
// fails.
#define TRTRUN_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                   \
    cudaError_t trtrun_err_ = (expr);                                                                    \
    if (trtrun_err_ != cudaSuccess) {                                                                    \
      throw ::trtrun::CudaError(__FILE__, __LINE__, #expr, static_cast<int>(trtrun_err_),                \
                                cudaGetErrorName(trtrun_err_), cudaGetErrorString(trtrun_err_));         \
    }                                                                                                    \
  } while (0)

// After every kernel launch: reports launch-configuration errors (and earlier asynchronous errors).
#define TRTRUN_LAUNCH_CHECK() TRTRUN_CUDA_CHECK(cudaGetLastError())

// Throws trtrun::CublasError when a cuBLAS(Lt) call does not return CUBLAS_STATUS_SUCCESS.
#define TRTRUN_CUBLAS_CHECK(expr)                                                                        \
  do {                                                                                                   \
    cublasStatus_t trtrun_st_ = (expr);                                                                  \
    if (trtrun_st_ != CUBLAS_STATUS_SUCCESS) {                                                           \
      throw ::trtrun::CublasError(__FILE__, __LINE__, #expr, static_cast<int>(trtrun_st_),               \
                                  ::trtrun::cublas_status_text(static_cast<int>(trtrun_st_)));           \
    }                                                                                                    \
  } while (0)

// For destructors and cleanup paths: never throw, drop the error (and clear CUDA's last-error slot).
#define TRTRUN_CUDA_IGNORE(expr) \
  do {                           \
    (void)(expr);                \
    (void)cudaGetLastError();    \
  } while (0)
