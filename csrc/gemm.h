// csrc/gemm.h: Linear layers through cuBLASLt. One handle and one preallocated workspace per Context; the
// algorithm for a GEMM shape is chosen by cuBLASLt's heuristic once and cached (with its descriptors).
#pragma once

#include <cstdint>
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "runtime_common.h"

namespace trtrun {

// y[m, n] = epilogue(x[m, k] @ w[k, n] (+ bias[n])), all row-major, contiguous.
enum class GemmEpilogue : int { None = 0, Bias = 1, Gelu = 2, GeluBias = 3 };  // Gelu = cuBLASLt's tanh form

struct GemmKey {
  int64_t m = 0, n = 0, k = 0;
  ElemType operand_t = ElemType::F16;  // x and w
  ElemType out_t = ElemType::F32;      // y; bias has this type too
  GemmEpilogue epilogue = GemmEpilogue::None;
  bool tf32 = false;  // only for float32 operands
  bool add_c = false;  // y = x @ w (+ bias) + c, c [m, n] of y's type, out of place (c != y)
  bool operator<(const GemmKey& o) const {
    return std::tie(m, n, k, operand_t, out_t, epilogue, tf32, add_c) <
           std::tie(o.m, o.n, o.k, o.operand_t, o.out_t, o.epilogue, o.tf32, o.add_c);
  }
};

class GemmRunner {
 public:
  GemmRunner(size_t workspace_bytes);
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Chooses (once) and caches the algorithm; false when cuBLASLt has none for this key (e.g. an epilogue that
  // this dtype combination does not support): the caller then runs an unfused epilogue instead.
  bool prepare(const GemmKey& key);
  // Enqueues the GEMM (prepare(key) must have returned true). No allocation, no sync: capturable.
  // key.add_c: c must be given (and differ from y); otherwise c is ignored.
  void run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y, cudaStream_t stream,
           const void* c = nullptr);
  size_t cached() const { return plans_.size(); }
  // Time cuBLASLt's top candidates on the first run of each shape (default on; TRTRUN_GEMM_TUNE=0 turns it off).
  void set_tuning(bool on) { tune_enabled_ = on; }

 private:
  struct Plan;
  static constexpr int kTuneCandidates = 8;
  static constexpr int kTuneRounds = 5;
  void tune(Plan& p, const void* x, const void* w, void* y, const void* c, cudaStream_t stream);
  bool tune_enabled_ = true;
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<GemmKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace trtrun
