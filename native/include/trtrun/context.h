// native/include/trtrun/context.h: a Context executes an Engine on its own CUDA stream.
//
// It owns: an activation arena (one cudaMalloc, offsets from a liveness-based plan at the profile's maxima),
// pinned host buffers for inputs and outputs, a cuBLASLt handle with one workspace, and a cache of CUDA graphs
// keyed by (batch, sequence bucket). A run at sequence length S executes at a bucket length Sb >= S chosen by
// the caller (trtrun/runtime/engine.py): inputs are padded with zeros (pad keys are masked: the attention mask is 0
// there, or a valid-length mask is made for attention without a mask input; causal attention never looks at
// later keys) and the padded rows are sliced off the outputs.
//
// One Context serves one caller at a time (its methods lock a mutex); use one Context per thread.
#pragma once

#include <cstdint>
#include <cstddef>
#include <cuda_runtime.h>

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "trtrun/context_options.h"
#include "trtrun/device.h"
#include "trtrun/engine.h"
#include "trtrun/plan.h"

namespace trtrun {

class GemmRunner;  // native/runtime/gemm.h
struct StageJob;   // native/runtime/runtime_ops.h

// How a Linear that kernels/epilogue finishes (gate product, silu, residual input) runs: its GEMM writes h = x @ W
// (+ bias) and launch_linear_epilogue makes y from it (context.cpp, linear_post).
struct LinearPost {
  bool on = false;      // this Linear runs GEMM + launch_linear_epilogue
  bool direct = false;  // the GEMM's bias epilogue writes h exactly as the reference rounds it (else an fp32 acc)
  DType h_t = DType::F32;
  bool round_h = false;  // the epilogue kernel rounds h to y's dtype before the activation/gate
};

// How an fp8 Linear runs (context.cpp, fp8 planning): native/kernels/quantize makes x's E4M3 codes and per-row
// scales in an arena scratch, then cuBLASLt's fp8 GEMM. With `scale` Scalar or OuterVec cuBLASLt applies the scales
// (and, when `fused`, the bias/GELU epilogue into y); with None (no scaled algorithm offered: cuBLAS before 12.9)
// the GEMM writes the codes' product into an fp32 accumulator, which the runtime's bias/activation pass scales and
// finishes (launch_bias_act with the scales), or launch_fp8_rescale then kernels/epilogue where a gate, silu or
// residual follows.
struct Fp8Linear {
  bool on = false;
  GemmScale scale = GemmScale::None;
  bool fused = false;      // the GEMM writes y with its epilogue (not gated/silu/residual ones: LinearPost)
  size_t offset = SIZE_MAX;  // arena: q [rows, k] float8 codes, then (at scales_at) the per-row scales [rows] fp32
  size_t scales_at = 0;
};

class Context {
 public:
  Context(std::shared_ptr<const Engine> engine, ContextOptions options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Engine& engine() const { return *engine_; }

  // ---- host path: the caller writes each used input as int32 [batch, seq_bucket] (zero-padded) into
  // host_input(slot), calls run_host, and reads each output as [batch, seq, ...] from host_output(slot).
  int32_t* host_input(size_t slot) const;   // nullptr for an input no op reads
  size_t host_input_elems(size_t slot) const;
  void* host_output(size_t slot) const;
  size_t host_output_bytes(size_t slot) const;
  void run_host(int batch, int seq, int seq_bucket);

  // ---- device path: inputs are device arrays [batch, seq] of int64 or int32 (row stride in elements, the
  // sequence axis contiguous; a null ptr: not given, filled with a ones mask or zero token types); outputs are
  // contiguous device arrays [batch, seq, ...] of the output's dtype.
  // The work is enqueued on `stream` (any handle, 0 = the legacy default stream) or, with own_stream, on this
  // context's stream; it is ordered after this context's previous run. With sync, the call waits for it.
  struct Feed {
    const void* ptr = nullptr;
    bool is_int64 = true;
    int64_t row_stride = 0;
  };
  void run_device(int batch, int seq, int seq_bucket, const std::vector<Feed>& feeds,
                  const std::vector<void*>& outputs, cudaStream_t stream, bool own_stream, bool sync);
  // Waits for this context's last run; throws InputError if a device-path run met out-of-range token ids.
  void synchronize();

  // ---- introspection (tests, reports)
  size_t arena_bytes() const { return arena_.size(); }
  size_t arena_naive_bytes() const { return arena_naive_bytes_; }
  size_t graph_count() const;
  size_t gemm_plans() const;
  size_t fused_residuals() const;  // Linear -> LayerNorm pairs whose GEMM adds the residual
  size_t split_linears() const;    // Linear -> LayerNorm pairs that run split (at runs of few enough rows)
  std::string graph_note() const;  // why graphs are off, if they were turned off after a capture failure
  cudaStream_t stream() const { return stream_; }

 private:
  void init();
  void release_handles() noexcept;
  void check_shape(int batch, int seq, int seq_bucket) const;
  void begin(cudaStream_t s);
  void finish(cudaStream_t s);
  // Stages stage_jobs_ (the run's inputs, filled by the caller) and the valid-column mask when the plan needs one,
  // in one kernel launch (kMaxStageJobs a launch).
  void stage_common(int batch, int seq, int seq_bucket, cudaStream_t s);
  void execute(int batch, int seq_bucket, cudaStream_t s);
  void enqueue_ops(int batch, int seq_bucket, cudaStream_t s);
  void enqueue_linear(size_t op_index, int batch, int seq_bucket, cudaStream_t s);
  void enqueue_linear_fp8(size_t op_index, int batch, int seq_bucket, cudaStream_t s);
  // A fused Linear (no cast, no unfused epilogue, no GELU pass) on `rows` rows from x into y.
  void enqueue_linear_rows(size_t op_index, const void* x, void* y, int64_t rows, cudaStream_t s,
                           const void* c = nullptr);
  void enqueue_ffn_chunked(size_t first_op, int batch, int seq_bucket, cudaStream_t s);
  bool resid_fused_at(size_t linear_op, int64_t rows) const;
  bool split_at(size_t linear_op, int64_t rows) const;
  void check_input_flag();
  char* tensor_ptr(int t) const;

  std::shared_ptr<const Engine> engine_;
  ContextOptions options_;
  int device_ = 0;
  mutable std::mutex mutex_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  bool have_done_ = false;
  std::unique_ptr<GemmRunner> gemm_;

  DeviceBuffer arena_;
  size_t arena_naive_bytes_ = 0;
  std::vector<size_t> tensor_offset_;     // per tensor; SIZE_MAX when no op touches it
  std::vector<size_t> cast_offset_;       // per op: x converted to the GEMM operand type (SIZE_MAX: none)
  std::vector<size_t> acc_offset_;        // per op: fp32 accumulator for the unfused epilogue (SIZE_MAX: none)
  size_t valid_mask_offset_ = SIZE_MAX;   // int32 [B, S] key mask for attention without a mask input
  std::vector<char> ffn_first_;           // per op: first Linear of a row-chunked feed-forward pair
  // Linear -> LayerNorm with an fp32 residual: the GEMM adds the residual in its epilogue (cuBLASLt's
  // D = x @ w + bias + C, C = the residual), writing the sum where the LayerNorm's sum output (or, without one,
  // the Linear's output) lives; the LayerNorm then reads that sum with no residual. Saves the LayerNorm a
  // read of the residual and the write of the sum (GPT-2's fp32 residual stream in hybrid plans).
  std::vector<int> resid_dst_;            // per Linear op: the tensor its GEMM writes the sum to (-1: not fused)
  int64_t ffn_chunk_rows_ = 0;            // rows per chunk (0: no chunking)
  // Linear -> LayerNorm split into K slices (ContextOptions::split_ln_max_rows): per Linear op, the slice count
  // (0: not split) and the arena offset of its [split, rows, n] fp32 slices.
  std::vector<int> split_;
  std::vector<size_t> split_offset_;
  // Linear ops finished by kernels/epilogue (LinearPost); the h scratch (gated, or h in fp32) lives at acc_offset_.
  std::vector<LinearPost> post_;
  std::vector<Fp8Linear> fp8_;  // per op: how an fp8 Linear runs (on = false for every other op)
  // Attention ops with rotary embeddings whose qkv another op also reads (or fp32 ops on fp16 qkv): the rotated
  // copy's arena offset (SIZE_MAX: rotated in place, the attention op being the qkv tensor's only reader).
  std::vector<size_t> rotary_offset_;

  std::vector<PinnedBuffer> host_in_;
  std::vector<PinnedBuffer> host_out_;
  PinnedBuffer input_flag_;               // mapped: the device sets it when it met out-of-range ids
  int32_t* input_flag_dev_ = nullptr;

  using GraphKey = std::pair<int, int>;
  std::map<GraphKey, std::pair<cudaGraphExec_t, std::list<GraphKey>::iterator>> graphs_;
  std::list<GraphKey> lru_;
  bool graphs_on_ = true;
  std::vector<StageJob> stage_jobs_;  // a run's staging jobs; reused (under mutex_) so a run allocates nothing
  bool separate_staging_ = false;  // TRTRUN_STAGE_SEPARATE=1 at creation: a launch per staged buffer (measurement)
  std::string graph_note_;
};

}  // namespace trtrun
