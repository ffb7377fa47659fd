// csrc/gemm.cpp: cuBLASLt GEMMs (see gemm.h).
//
// Row-major y[m,n] = x[m,k] @ w[k,n] is computed as the column-major product y^T[n,m] = w^T[n,k] x^T[k,m]: the
// row-major buffers of w, x and y *are* the column-major matrices w^T (ld n), x^T (ld k) and y^T (ld n), so no
// transposes are needed, and cuBLASLt's bias (one value per row of its D = one per output feature) is ours.
//
// Precision (docs/plan-format.md): fp16 operands always accumulate in fp32 (CUBLAS_COMPUTE_32F, fp32 alpha/beta,
// bias added to the fp32 accumulator before the single rounding to y's type). fp32 operands use
// CUBLAS_COMPUTE_32F (true fp32 FMA) unless the plan's tf32 flag asks for CUBLAS_COMPUTE_32F_FAST_TF32.
#include <memory>
#include <string>
#include <utility>
#include "gemm.h"

#include <cstdlib>
#include <mutex>

namespace trtrun {

namespace {
cudaDataType_t cuda_type(ElemType t) {
  switch (t) {
    case ElemType::F32: return CUDA_R_32F;
    case ElemType::F16: return CUDA_R_16F;
    default: throw InputError(std::string("GEMM: unsupported element type ") + elem_name(t));
  }
}
cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::Gelu: return CUBLASLT_EPILOGUE_GELU;
    case GemmEpilogue::GeluBias: return CUBLASLT_EPILOGUE_GELU_BIAS;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}
bool has_bias(GemmEpilogue e) { return e == GemmEpilogue::Bias || e == GemmEpilogue::GeluBias; }
}  // namespace

struct GemmRunner::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  // cuBLASLt's heuristic ranks candidates by a model, not by measurement; the top few are timed on the
  // first run outside stream capture (as TensorRT times tactics) and the fastest kept.
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;
  bool tuned = false;
  GemmKey key;
  size_t workspace = 0;
  bool ok = false;
  ~Plan() {
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

namespace {
// The tuned choice per (device, shape key, workspace size), shared by every context in the process: contexts of
// one engine then run identical algorithms (bitwise-equal outputs across threads), and each shape is timed once.
struct TunedKey {
  int device;
  GemmKey key;
  size_t workspace;
  bool operator<(const TunedKey& o) const {
    if (device != o.device) return device < o.device;
    if (key < o.key) return true;
    if (o.key < key) return false;
    return workspace < o.workspace;
  }
};
std::mutex g_tuned_mutex;
std::map<TunedKey, cublasLtMatmulHeuristicResult_t>& tuned_cache() {
  static auto* cache = new std::map<TunedKey, cublasLtMatmulHeuristicResult_t>();  // never destroyed: no exit-order issues
  return *cache;
}
}  // namespace

GemmRunner::GemmRunner(size_t workspace_bytes) : workspace_(workspace_bytes, "cuBLASLt workspace") {
  const char* tune = std::getenv("TRTRUN_GEMM_TUNE");  // "0": keep cuBLASLt's first heuristic choice
  tune_enabled_ = !(tune && tune[0] == '0');
  TRTRUN_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

GemmRunner::~GemmRunner() {
  plans_.clear();
  if (handle_) (void)cublasLtDestroy(handle_);
}

bool GemmRunner::prepare(const GemmKey& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second->ok;
  if (key.m <= 0 || key.n <= 0 || key.k <= 0) throw InputError("GEMM: empty shape");
  auto p = std::make_unique<Plan>();
  const cudaDataType_t ab = cuda_type(key.operand_t);
  const cudaDataType_t dt = cuda_type(key.out_t);
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (key.operand_t == ElemType::F32 && key.tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F));
  cublasOperation_t opn = CUBLAS_OP_N;
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opn, sizeof(opn)));
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opn, sizeof(opn)));
  cublasLtEpilogue_t epi = lt_epilogue(key.epilogue);
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (has_bias(key.epilogue)) {
    int32_t bias_type = dt;  // the bias has y's type (the runtime converts it when the plan's differs)
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  // column-major: A = w^T [n x k] ld n, B = x^T [k x m] ld k, D = y^T [n x m] ld n
  TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, ab, key.n, key.k, key.n));
  TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, ab, key.k, key.m, key.k));
  TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, key.n, key.m, key.n));

  cublasLtMatmulPreference_t pref = nullptr;
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = workspace_.size();
  cublasStatus_t st =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates] = {};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle_, p->op, p->a, p->b, p->d, p->d, pref, kTuneCandidates, results,
                                        &found);
  (void)cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (key.add_c) {  // c != y: only algorithms that write D out of place
      int32_t oop = 1;
      size_t written = 0;
      if (cublasLtMatmulAlgoCapGetAttribute(&results[i].algo, CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT, &oop,
                                            sizeof(oop), &written) == CUBLAS_STATUS_SUCCESS &&
          oop == 0)
        continue;
    }
    p->candidates.push_back(results[i]);
  }
  p->key = key;
  if (!p->candidates.empty()) {
    p->algo = p->candidates[0].algo;  // the heuristic's first choice until timed
    p->workspace = p->candidates[0].workspaceSize;
    p->tuned = p->candidates.size() == 1 || !tune_enabled_;
    p->ok = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    TRTRUN_CUBLAS_CHECK(st);  // a real failure (no device, out of memory, ...): report it
  }
  bool ok = p->ok;
  plans_.emplace(key, std::move(p));
  return ok;
}

void GemmRunner::run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y,
                     cudaStream_t stream, const void* c) {
  auto it = plans_.find(key);
  if (it == plans_.end() || !it->second->ok) throw std::logic_error("GEMM run before a successful prepare");
  if (key.add_c && (c == nullptr || c == y)) throw std::logic_error("GEMM add_c needs a c distinct from y");
  if (!key.add_c) c = y;
  Plan& p = *it->second;
  if (has_bias(key.epilogue)) {
    // The bias pointer lives in the descriptor: set per call (cheap, host only; a captured graph keeps it).
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f, beta = key.add_c ? 1.0f : 0.0f;
  if (!p.tuned) tune(p, x, w, y, c, stream);
  TRTRUN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, c, p.d, y, p.d, &p.algo,
                                     workspace_.get(), p.workspace, stream));
}

// Times each candidate on the real operands (y is overwritten; the caller's run right after writes the
// result; with add_c, c is only read, so every timing run writes the same y). Skipped while the stream is being
// captured (timing needs a sync): the run after capture tunes.
void GemmRunner::tune(Plan& p, const void* x, const void* w, void* y, const void* c, cudaStream_t stream) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  TRTRUN_CUDA_CHECK(cudaStreamIsCapturing(stream, &cs));
  if (cs != cudaStreamCaptureStatusNone) return;
  int device = 0;
  TRTRUN_CUDA_CHECK(cudaGetDevice(&device));
  const TunedKey tk{device, p.key, workspace_.size()};
  std::lock_guard<std::mutex> lock(g_tuned_mutex);  // one tuning at a time: timings undisturbed by other contexts
  auto hit = tuned_cache().find(tk);
  if (hit != tuned_cache().end()) {
    p.algo = hit->second.algo;
    p.workspace = hit->second.workspaceSize;
    p.tuned = true;
    return;
  }
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  TRTRUN_CUDA_CHECK(cudaEventCreate(&t0));
  cudaError_t ce = cudaEventCreate(&t1);
  if (ce != cudaSuccess) {
    TRTRUN_CUDA_IGNORE(cudaEventDestroy(t0));
    TRTRUN_CUDA_CHECK(ce);
  }
  const float alpha = 1.0f, beta = p.key.add_c ? 1.0f : 0.0f;
  auto launch = [&](size_t i) {
    const auto& cand = p.candidates[i];
    return cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, c, p.d, y, p.d, &cand.algo,
                          workspace_.get(), cand.workspaceSize, stream);
  };
  // Candidates are timed round-robin (kTuneRounds rounds of one run each, the minimum kept per candidate), not
  // one after another: a shape is often tuned right after the GPU idled (model loading, another library's
  // compilation) while its clocks are still rising, and timing candidate by candidate then favours the later
  // ones. Suspected on an H200 (bench/NOTES.md): the same plan at 1 x 512 ran 0.59 ms in standalone processes
  // and 0.68 ms in the issue-3 bench process, which tuned its M = 512 GEMMs right after torch.compile work.
  const size_t nc = p.candidates.size();
  std::vector<float> ms_min(nc, -1.0f);  // -1: not timed (failed)
  std::vector<char> ok(nc, 0);
  cudaError_t failure = cudaSuccess;
  for (size_t i = 0; i < nc; ++i) ok[i] = launch(i) == CUBLAS_STATUS_SUCCESS;  // warm-up (and load) each
  for (int r = 0; r < kTuneRounds && failure == cudaSuccess; ++r) {
    for (size_t i = 0; i < nc && failure == cudaSuccess; ++i) {
      if (!ok[i]) continue;
      cudaError_t e = cudaEventRecord(t0, stream);
      const cublasStatus_t bs = launch(i);
      if (e == cudaSuccess) e = cudaEventRecord(t1, stream);
      if (e == cudaSuccess) e = cudaEventSynchronize(t1);
      float ms = 0.0f;
      if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, t0, t1);
      if (e != cudaSuccess) {
        failure = e;
        break;
      }
      if (bs != CUBLAS_STATUS_SUCCESS) {
        ok[i] = 0;
        continue;
      }
      if (ms_min[i] < 0.0f || ms < ms_min[i]) ms_min[i] = ms;
    }
  }
  float best = 0.0f;
  size_t best_i = 0;
  for (size_t i = 0; i < nc; ++i)
    if (ok[i] && ms_min[i] >= 0.0f && (best == 0.0f || ms_min[i] < best)) {
      best = ms_min[i];
      best_i = i;
    }
  TRTRUN_CUDA_IGNORE(cudaEventDestroy(t0));
  TRTRUN_CUDA_IGNORE(cudaEventDestroy(t1));
  if (failure != cudaSuccess) throw CudaError(__FILE__, __LINE__, "GEMM tuning (cudaEvent*)", failure);
  p.algo = p.candidates[best_i].algo;
  p.workspace = p.candidates[best_i].workspaceSize;
  p.tuned = true;
  tuned_cache().emplace(tk, p.candidates[best_i]);
}

}  // namespace trtrun
