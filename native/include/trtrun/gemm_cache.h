// native/include/trtrun/gemm_cache.h: the key of a GEMM shape and the process-wide cache of tuned cuBLASLt
// choices that trtrun.runtime.save_gemm_cache / load_gemm_cache move between processes. The GEMMs themselves are
// native/runtime/gemm.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "trtrun/types.h"

namespace trtrun {

// A GEMM shape: y[m, n] = epilogue(x[m, k] @ w[k, n] (+ bias[n])), all row-major, contiguous.
// fp8 (operand_t F8E4M3): w is stored transposed, w^T [n, k] row-major (the layout cuBLASLt's fp8 GEMMs take on
// Hopper: A transposed, B not), and y = (sx * sw) * (x @ w) (+ bias) with the scales `scale` says.
struct GemmKey {
  int64_t m = 0, n = 0, k = 0;
  DType operand_t = DType::F16;  // x and w
  DType out_t = DType::F32;      // y; bias has this type too
  GemmEpilogue epilogue = GemmEpilogue::None;
  bool tf32 = false;  // only for float32 operands
  bool add_c = false;  // y = x @ w (+ bias) + c, c [m, n] of y's type, out of place (c != y)
  // split > 1: K cut into `split` slices of k / split, one product each, as one strided-batched GEMM:
  // y[s] = x[:, s*k/split : (s+1)*k/split] @ w[s*k/split : (s+1)*k/split, :], y = [split, m, n] contiguous,
  // left unsummed (the reader sums them: launch_layernorm_parts). No epilogue, no add_c.
  int split = 1;
  // fp8 only: None (the product of the E4M3 codes), Scalar (sw, sx one float32 each) or OuterVec (sw [n], sx [m]).
  GemmScale scale = GemmScale::None;
  bool operator<(const GemmKey& o) const {
    return std::tie(m, n, k, operand_t, out_t, epilogue, tf32, add_c, split, scale) <
           std::tie(o.m, o.n, o.k, o.operand_t, o.out_t, o.epilogue, o.tf32, o.add_c, o.split, o.scale);
  }
};

// One tuned choice of the process-wide cache, as trtrun.runtime.save_gemm_cache / load_gemm_cache move it
// between processes (the way TensorRT keeps a timing cache): exhaustive search costs seconds a shape, once.
struct GemmCacheEntry {
  std::string device;     // cudaDeviceProp::name
  int cc = 0;             // compute capability, major * 10 + minor
  size_t cublaslt = 0;    // cublasLtGetVersion() of the process that tuned it
  GemmKey key;
  size_t workspace = 0;   // the workspace size the choice was made under
  GemmSearch search = GemmSearch::Heuristic;
  std::array<uint64_t, 8> algo{};  // cublasLtMatmulAlgo_t::data
  size_t algo_workspace = 0;       // workspace bytes that algorithm needs
};
// Every tuned choice of this process, and every loaded one it has not rejected (so that saving after a run that
// used some shapes keeps the others).
std::vector<GemmCacheEntry> gemm_cache_export();
// Takes the entries made on a device of the same name and compute capability as a visible device, with this
// process's cuBLASLt version (the rest are skipped); returns how many were taken. A taken entry is checked with
// cublasLtMatmulAlgoCheck on its first use, and a shape whose entry fails the check is tuned as if it had none.
// Choices already made in this process are kept (contexts of one engine run identical algorithms).
size_t gemm_cache_import(const std::vector<GemmCacheEntry>& entries);

}  // namespace trtrun
