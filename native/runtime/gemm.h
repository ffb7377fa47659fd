// native/runtime/gemm.h: Linear layers through cuBLASLt. One handle and one preallocated workspace per Context; the
// algorithm for a GEMM shape is chosen by cuBLASLt's heuristic once and cached (with its descriptors).
#pragma once

#include <cstdint>
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "trtrun/device.h"
#include "trtrun/gemm_cache.h"
#include "trtrun/types.h"

namespace trtrun {

// How the algorithm of a GEMM shape is chosen on its first run (GemmSearch, trtrun/types.h).
//   Heuristic: cuBLASLt's top kTuneCandidates heuristic results, timed (weights as the run leaves them in L2).
//   Exhaustive: those, plus every configuration cuBLASLt accepts of the same algorithms (tile x thread-block
//     cluster shape x custom option), ranked by one quick pass and the fastest kExhaustiveFinalists timed with
//     the rest; every timed launch follows an L2 flush after which the GEMM's inputs (x, and c with add_c) are
//     copied through the L2 again, as in a forward pass, where a GEMM's weights are never L2-resident and its
//     activations are. ~60 s for the first shape in a process, seconds after (docs/performance.md).
//   Focused: the heuristic's candidates, plus a two-stage walk of the exhaustive space of the heuristic's first
//     algorithm: every tile with a 1x1 cluster and the custom options kFocusCustoms (quick pass), then the
//     kFocusTiles fastest tiles with the 1x1, 2x1 and 1x2 clusters and every custom option (quick pass); the
//     fastest kExhaustiveFinalists of both stages are timed with the heuristic's candidates, each timed launch
//     after an L2 flush as in Exhaustive. ~300 configurations a shape instead of ~7,000: on an H200 its best
//     was within 0-1.3% of the exhaustive best at BERT-base's GEMMs of 128 and 4096 rows (quick-pass times of
//     tools/cuda/gemm_explore --dump read by tools/gemm_space.py; docs/performance.md).
// Whether this build and the cuBLASLt it loaded have outer-vector fp8 scaling (cuBLAS 12.9 and later).
bool outer_vec_scaling();

class GemmRunner {
 public:
  GemmRunner(size_t workspace_bytes, GemmSearch search = GemmSearch::Heuristic);
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Chooses (once) and caches the algorithm; false when cuBLASLt has none for this key (e.g. an epilogue that
  // this dtype combination does not support): the caller then runs an unfused epilogue instead.
  bool prepare(const GemmKey& key);
  // Enqueues the GEMM (prepare(key) must have returned true). No allocation, no sync: capturable.
  // key.add_c: c must be given (and differ from y); otherwise c is ignored.
  // fp8 keys with a scale: w_scale (the weight's, cuBLASLt's A scale: one float32, or [n] with OuterVec) and
  // x_scale (the activation's, B scale: one float32, or [m]) device pointers, both given.
  void run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y, cudaStream_t stream,
           const void* c = nullptr, const float* w_scale = nullptr, const float* x_scale = nullptr);
  size_t cached() const { return plans_.size(); }
  // Time cuBLASLt's top candidates on the first run of each shape (default on; TRTRUN_GEMM_TUNE=0 turns it off).
  void set_tuning(bool on) { tune_enabled_ = on; }

 private:
  struct Plan;
  static constexpr int kTuneCandidates = 8;
  static constexpr int kTuneRounds = 5;
  static constexpr size_t kExhaustiveFinalists = 12;
  void tune(Plan& p, const void* x, const void* w, void* y, const void* c, cudaStream_t stream);
  void add_configs(Plan& p);
  // Focused search, stage 1 (tiles at cluster 1x1 and kFocusCustoms) and stage 2 (the given tiles with the
  // clusters and custom options); appends accepted configurations not yet in p.candidates.
  void add_focus_tiles(Plan& p);
  void add_focus_variants(Plan& p, const std::vector<uint32_t>& tiles);
  // `seen`: the configurations already among the candidates (cublasLtMatmulAlgo_t::data), so none is added twice.
  bool add_config(Plan& p, std::set<std::array<uint64_t, 8>>& seen, const cublasLtMatmulAlgo_t& base, uint32_t tile,
                  uint16_t cluster, uint32_t custom);
  static constexpr size_t kFocusTiles = 4;
  bool tune_enabled_ = true;
  GemmSearch search_ = GemmSearch::Heuristic;
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<GemmKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace trtrun
