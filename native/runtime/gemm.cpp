// native/runtime/gemm.cpp: cuBLASLt GEMMs (see gemm.h).
//
// Row-major y[m,n] = x[m,k] @ w[k,n] is computed as the column-major product y^T[n,m] = w^T[n,k] x^T[k,m]: the
// row-major buffers of w, x and y *are* the column-major matrices w^T (ld n), x^T (ld k) and y^T (ld n), so no
// transposes are needed, and cuBLASLt's bias (one value per row of its D = one per output feature) is ours.
//
// Precision (docs/plan-format.md): fp16 operands always accumulate in fp32 (CUBLAS_COMPUTE_32F, fp32 alpha/beta,
// bias added to the fp32 accumulator before the single rounding to y's type). fp32 operands use
// CUBLAS_COMPUTE_32F (true fp32 FMA) unless the plan's tf32 flag asks for CUBLAS_COMPUTE_32F_FAST_TF32.
//
// fp8 (E4M3 x and w, CUBLAS_COMPUTE_32F): cuBLASLt's fp8 GEMMs on Hopper take only the "TN" form, A transposed
// and B not, so the weight is uploaded transposed (w^T [n, k] row-major = the column-major [k, n] matrix A, ld k,
// used as op(A) = A^T [n, k]) and x is B as before. FAST_ACCUM stays off: the tensor cores' partial sums are then
// promoted to fp32 at intervals, the closest cuBLASLt comes to the reference's fp32 accumulation. The scales are
// cuBLASLt's A/B scale pointers: scalar (per-tensor weight scale with a static activation scale) or, from cuBLAS
// 12.9 on, outer vectors (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F: D[i, j] = sw[i] sx[j] sum_l A[i, l] B[l, j],
// one scale per output channel and one per token); the product (sw sx) acc is then the reference's acc (sx sw) up
// to the order of two fp32 multiplications.
#include <memory>
#include <string>
#include <utility>
#include "runtime/gemm.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <mutex>
#include <set>

namespace trtrun {

namespace {
cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::F8E4M3: return CUDA_R_8F_E4M3;
    default: throw InputError(std::string("GEMM: unsupported element type ") + to_string(t));
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
// Whether `algo` may serve `key`: with add_c (c != y) only algorithms that can write D out of place.
bool fits_key(const GemmKey& key, const cublasLtMatmulAlgo_t& algo) {
  if (!key.add_c) return true;
  int32_t oop = 1;
  size_t written = 0;
  return !(cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT, &oop, sizeof(oop),
                                             &written) == CUBLAS_STATUS_SUCCESS &&
           oop == 0);
}
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
  GemmSearch search;
  bool operator<(const TunedKey& o) const {
    if (device != o.device) return device < o.device;
    if (search != o.search) return search < o.search;
    if (key < o.key) return true;
    if (o.key < key) return false;
    return workspace < o.workspace;
  }
};
struct TunedValue {
  cublasLtMatmulHeuristicResult_t result;
  bool checked;  // false: loaded from a cache file, not yet validated with cublasLtMatmulAlgoCheck
};
std::mutex g_tuned_mutex;
std::map<TunedKey, TunedValue>& tuned_cache() {
  static auto* cache = new std::map<TunedKey, TunedValue>();  // never destroyed: no exit-order issues
  return *cache;
}
std::pair<std::string, int> device_identity(int device) {
  cudaDeviceProp prop{};
  TRTRUN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return {std::string(prop.name), prop.major * 10 + prop.minor};
}
}  // namespace

bool outer_vec_scaling() {
#if CUBLAS_VERSION >= 120900
  return cublasLtGetVersion() >= 120900;  // the library loaded, not only the header compiled against
#else
  return false;
#endif
}

GemmRunner::GemmRunner(size_t workspace_bytes, GemmSearch search)
    : search_(search), workspace_(workspace_bytes, "cuBLASLt workspace") {
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
  const bool fp8 = key.operand_t == DType::F8E4M3;
  if (key.out_t == DType::F8E4M3) throw InputError("GEMM: the output cannot be float8_e4m3fn");
  if (fp8 && (key.split > 1 || key.add_c))
    throw std::logic_error("GEMM: an fp8 GEMM is neither split nor adds c");
  if (!fp8 && key.scale != GemmScale::None) throw std::logic_error("GEMM: scales are an fp8 GEMM's only");
  auto p = std::make_unique<Plan>();
  if (key.scale == GemmScale::OuterVec && !outer_vec_scaling()) {  // before cuBLAS 12.9: no such mode here
    p->key = key;
    plans_.emplace(key, std::move(p));
    return false;
  }
  const cudaDataType_t ab = cuda_type(key.operand_t);
  const cudaDataType_t dt = cuda_type(key.out_t);
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (key.operand_t == DType::F32 && key.tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F));
  cublasOperation_t opn = CUBLAS_OP_N, opt = CUBLAS_OP_T;
  TRTRUN_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, fp8 ? &opt : &opn, sizeof(opn)));
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opn, sizeof(opn)));
#if CUBLAS_VERSION >= 120900
  if (key.scale == GemmScale::OuterVec) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
  }
#endif
  cublasLtEpilogue_t epi = lt_epilogue(key.epilogue);
  TRTRUN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (has_bias(key.epilogue)) {
    int32_t bias_type = dt;  // the bias has y's type (the runtime converts it when the plan's differs)
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  // column-major: A = w^T [n x k] ld n, B = x^T [k x m] ld k, D = y^T [n x m] ld n
  if (key.split > 1) {
    if (key.k % key.split != 0 || key.epilogue != GemmEpilogue::None || key.add_c)
      throw std::logic_error("GEMM split: k must divide into the slices, with no epilogue and no add_c");
    // slice s: A_s = w^T[:, s*ks : (s+1)*ks] (ld n), B_s = x^T[s*ks : (s+1)*ks, :] (ld k), D_s = y[s]
    const int64_t ks = key.k / key.split;
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, ab, key.n, ks, key.n));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, ab, ks, key.m, key.k));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, key.n, key.m, key.n));
    const int32_t count = key.split;
    const int64_t sa = ks * key.n, sb = ks, sd = key.m * key.n;
    for (auto [layout, stride] : {std::make_pair(p->a, sa), std::make_pair(p->b, sb), std::make_pair(p->d, sd)}) {
      TRTRUN_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                           &stride, sizeof(stride)));
    }
  } else if (fp8) {  // A = w^T stored [n, k] row-major: the column-major [k, n] (ld k) that TRANSA = T reads
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, ab, key.k, key.n, key.k));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, ab, key.k, key.m, key.k));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, key.n, key.m, key.n));
  } else {
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, ab, key.n, key.k, key.n));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, ab, key.k, key.m, key.k));
    TRTRUN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, key.n, key.m, key.n));
  }

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
    if (!fits_key(key, results[i].algo)) continue;
    p->candidates.push_back(results[i]);
  }
  p->key = key;
  if (!p->candidates.empty()) {
    p->algo = p->candidates[0].algo;  // the heuristic's first choice until timed
    p->workspace = p->candidates[0].workspaceSize;
    p->tuned = (p->candidates.size() == 1 && search_ == GemmSearch::Heuristic) || !tune_enabled_;
    p->ok = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED &&
             !(fp8 && st == CUBLAS_STATUS_INVALID_VALUE)) {
    // cuBLASLt answers an fp8 combination it has no kernel for (outer-vector scales with an fp32 D, an fp8 bias
    // epilogue into fp32; seen on an H200 with cuBLAS 13) with INVALID_VALUE rather than NOT_SUPPORTED: for
    // fp8 keys that means "not offered", and the caller takes its unscaled or unfused path
    TRTRUN_CUBLAS_CHECK(st);  // a real failure (no device, out of memory, ...): report it
  }
  bool ok = p->ok;
  plans_.emplace(key, std::move(p));
  return ok;
}

void GemmRunner::run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y,
                     cudaStream_t stream, const void* c, const float* w_scale, const float* x_scale) {
  auto it = plans_.find(key);
  if (it == plans_.end() || !it->second->ok) throw std::logic_error("GEMM run before a successful prepare");
  if (key.add_c && (c == nullptr || c == y)) throw std::logic_error("GEMM add_c needs a c distinct from y");
  if (!key.add_c) c = y;
  Plan& p = *it->second;
  if (key.scale != GemmScale::None) {
    if (w_scale == nullptr || x_scale == nullptr) throw std::logic_error("fp8 GEMM with scales needs both pointers");
    // like the bias pointer: in the descriptor, set per call (host only; a captured graph keeps the values)
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale)));
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof(x_scale)));
  }
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

namespace {
using AlgoBits = std::array<uint64_t, 8>;  // cublasLtMatmulAlgo_t::data: one configuration
AlgoBits algo_bits(const cublasLtMatmulAlgo_t& a) {
  AlgoBits b{};
  std::copy(std::begin(a.data), std::end(a.data), b.begin());
  return b;
}
std::set<AlgoBits> candidate_set(const std::vector<cublasLtMatmulHeuristicResult_t>& candidates) {
  std::set<AlgoBits> seen;
  for (const auto& c : candidates) seen.insert(algo_bits(c.algo));
  return seen;
}
// The custom options stage 1 of the focused search tries with every tile: on an H200, ranking the tiles with
// options 1 and 3 and widening the first 4 came within 0-1.3% of the best configuration at every BERT-base GEMM
// of 128 and 4096 rows (tools/gemm_space.py; docs/performance.md, "GEMMs").
constexpr uint32_t kFocusCustoms[] = {1, 3};
// The tile ids the algorithm `base` offers (empty when cuBLASLt does not say).
std::vector<uint32_t> algo_tiles(const cublasLtMatmulAlgo_t& base) {
  std::vector<uint32_t> tiles;
  size_t w = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_TILE_IDS, nullptr, 0, &w) == CUBLAS_STATUS_SUCCESS &&
      w >= sizeof(uint32_t)) {
    tiles.resize(w / sizeof(uint32_t));
    if (cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_TILE_IDS, tiles.data(), w, &w) !=
        CUBLAS_STATUS_SUCCESS)
      tiles.clear();
  }
  tiles.erase(std::remove(tiles.begin(), tiles.end(), static_cast<uint32_t>(CUBLASLT_MATMUL_TILE_UNDEFINED)),
              tiles.end());
  return tiles;
}
int32_t algo_custom_max(const cublasLtMatmulAlgo_t& base) {
  int32_t cust_max = 0;
  size_t w = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &cust_max, sizeof(cust_max), &w) !=
      CUBLAS_STATUS_SUCCESS)
    cust_max = 0;
  return std::max(0, std::min(cust_max, 15));
}
}  // namespace

// GemmSearch::Exhaustive: every configuration cuBLASLt accepts (cublasLtMatmulAlgoCheck) of the algorithms the
// heuristic proposed, varying the tile, the thread-block cluster shape and the custom option; stages, split-K,
// CTA swizzle and reduction scheme stay the heuristic's. (tools/cuda/gemm_explore.cpp --configs also varies stages and
// swizzle and every algorithm id: on an H200 every winner had the heuristic's stages and no swizzle.)
void GemmRunner::add_configs(Plan& p) {
  static const uint16_t kClusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                       CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1,
                                       CUBLASLT_CLUSTER_SHAPE_2x2x1, CUBLASLT_CLUSTER_SHAPE_4x1x1,
                                       CUBLASLT_CLUSTER_SHAPE_1x4x1};
  const size_t n_heur = p.candidates.size();
  std::set<AlgoBits> seen = candidate_set(p.candidates);
  std::vector<int32_t> seen_ids;
  for (size_t h = 0; h < n_heur; ++h) {
    const cublasLtMatmulAlgo_t base = p.candidates[h].algo;
    int32_t id = -1;
    size_t w = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&base, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w) !=
        CUBLAS_STATUS_SUCCESS)
      continue;
    if (std::find(seen_ids.begin(), seen_ids.end(), id) != seen_ids.end()) continue;
    seen_ids.push_back(id);
    const int32_t cust_max = algo_custom_max(base);
    for (uint32_t tile : algo_tiles(base))
      for (uint16_t cl : kClusters)
        for (int32_t cust = 0; cust <= cust_max; ++cust)
          (void)add_config(p, seen, base, tile, cl, static_cast<uint32_t>(cust));
  }
}

// `base` with this tile, cluster shape and custom option, appended to p.candidates when cuBLASLt accepts it for
// p's problem within the workspace (and, with add_c, it writes out of place). Returns whether it was appended.
bool GemmRunner::add_config(Plan& p, std::set<std::array<uint64_t, 8>>& seen, const cublasLtMatmulAlgo_t& base,
                            uint32_t tile, uint16_t cluster, uint32_t custom) {
  cublasLtMatmulAlgo_t a = base;
  if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile)) ||
      cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster)) ||
      cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom)))
    return false;
  if (!seen.insert(algo_bits(a)).second) return false;  // the heuristic's own proposals, earlier stages: once
  cublasLtMatmulHeuristicResult_t r{};
  if (cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.d, p.d, &a, &r) != CUBLAS_STATUS_SUCCESS) return false;
  if (r.workspaceSize > workspace_.size() || !fits_key(p.key, a)) return false;
  r.algo = a;
  r.state = CUBLAS_STATUS_SUCCESS;
  p.candidates.push_back(r);
  return true;
}

// Focused search, stage 1: the heuristic's first algorithm (its stages, split-K, swizzle and reduction scheme)
// with every tile it offers, a 1x1 cluster and the kFocusCustoms custom options.
void GemmRunner::add_focus_tiles(Plan& p) {
  if (p.candidates.empty()) return;
  const cublasLtMatmulAlgo_t base = p.candidates[0].algo;
  std::set<AlgoBits> seen = candidate_set(p.candidates);
  const int32_t cust_max = algo_custom_max(base);
  for (uint32_t tile : algo_tiles(base))
    for (uint32_t cust : kFocusCustoms)
      if (static_cast<int32_t>(cust) <= cust_max)
        (void)add_config(p, seen, base, tile, CUBLASLT_CLUSTER_SHAPE_1x1x1, cust);
}

// Focused search, stage 2: the given tiles with the 1x1, 2x1 and 1x2 clusters and every custom option.
void GemmRunner::add_focus_variants(Plan& p, const std::vector<uint32_t>& tiles) {
  if (p.candidates.empty()) return;
  static const uint16_t kFocusClusters[] = {CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
                                            CUBLASLT_CLUSTER_SHAPE_1x2x1};
  const cublasLtMatmulAlgo_t base = p.candidates[0].algo;
  std::set<AlgoBits> seen = candidate_set(p.candidates);
  const int32_t cust_max = algo_custom_max(base);
  for (uint32_t tile : tiles)
    for (uint16_t cl : kFocusClusters)
      for (int32_t cust = 0; cust <= cust_max; ++cust)
        (void)add_config(p, seen, base, tile, cl, static_cast<uint32_t>(cust));
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
  const TunedKey tk{device, p.key, workspace_.size(), search_};
  std::lock_guard<std::mutex> lock(g_tuned_mutex);  // one tuning at a time: timings undisturbed by other contexts
  auto& cache = tuned_cache();
  // A choice of this search, or else of a wider one (it was timed against everything this search would time):
  // exhaustive serves focused and heuristic contexts, focused serves heuristic ones.
  std::vector<GemmSearch> servers{search_};
  if (search_ != GemmSearch::Exhaustive) servers.push_back(GemmSearch::Exhaustive);
  if (search_ == GemmSearch::Heuristic) servers.push_back(GemmSearch::Focused);
  auto hit = cache.end();
  for (GemmSearch sv : servers) {
    TunedKey sk = tk;
    sk.search = sv;
    hit = cache.find(sk);
    if (hit == cache.end()) continue;
    if (hit->second.checked) break;
    cublasLtMatmulHeuristicResult_t r{};
    const bool valid =
        cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.d, p.d, &hit->second.result.algo, &r) ==
            CUBLAS_STATUS_SUCCESS &&
        r.workspaceSize <= workspace_.size() && fits_key(p.key, hit->second.result.algo);
    if (valid) {
      hit->second.result.workspaceSize = r.workspaceSize;
      hit->second.checked = true;
      break;
    }
    cache.erase(hit);  // loaded from a file and unusable here: tuned as if it had never been there
    hit = cache.end();
  }
  if (hit != cache.end()) {
    p.algo = hit->second.result.algo;
    p.workspace = hit->second.result.workspaceSize;
    p.tuned = true;
    return;
  }
  const bool exhaustive = search_ == GemmSearch::Exhaustive, focused = search_ == GemmSearch::Focused;
  const size_t n_heur = p.candidates.size();
  if (exhaustive) add_configs(p);
  if (focused) add_focus_tiles(p);
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  TRTRUN_CUDA_CHECK(cudaEventCreate(&t0));
  cudaError_t ce = cudaEventCreate(&t1);
  if (ce != cudaSuccess) {
    TRTRUN_CUDA_IGNORE(cudaEventDestroy(t0));
    TRTRUN_CUDA_CHECK(ce);
  }
  // Exhaustive and focused: an L2 flush (a memset of twice the L2) before every timed launch. Without room for
  // it, none.
  void* flush = nullptr;
  size_t flush_bytes = 0;
  if (exhaustive || focused) {
    int l2 = 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device) == cudaSuccess && l2 > 0) {
      flush_bytes = 2 * static_cast<size_t>(l2);
      if (cudaMalloc(&flush, flush_bytes) != cudaSuccess) {
        (void)cudaGetLastError();  // out of memory is not sticky: time without flushing
        flush = nullptr;
        flush_bytes = 0;
      }
    }
  }
  const float alpha = 1.0f, beta = p.key.add_c ? 1.0f : 0.0f;
  auto launch = [&](size_t i) {
    const auto& cand = p.candidates[i];
    return cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, c, p.d, y, p.d, &cand.algo,
                          workspace_.get(), cand.workspaceSize, stream);
  };
  cudaError_t failure = cudaSuccess;
  // After the flush, x (and c) are read back into the L2 by copying them into the flush buffer: in a forward pass
  // a GEMM's activations were just written by the op before it and are L2-resident; only its weights are not.
  // (Timed with everything flushed, GPT-2 hybrid 32x128 with focused choices ran 2-3% slower than with the
  // heuristic's on an H200: its residual-add GEMMs read a 12.6 MB fp32 c. docs/performance.md, "GEMMs".)
  const size_t x_bytes = static_cast<size_t>(p.key.m) * p.key.k * elem_size(p.key.operand_t);
  const size_t c_bytes = p.key.add_c ? static_cast<size_t>(p.key.m) * p.key.n * elem_size(p.key.out_t) : 0;
  auto flush_l2 = [&]() -> cudaError_t {
    cudaError_t e = cudaMemsetAsync(flush, 0, flush_bytes, stream);
    const size_t xb = std::min(x_bytes, flush_bytes / 2), cb = std::min(c_bytes, flush_bytes / 2);
    if (e == cudaSuccess && xb > 0) e = cudaMemcpyAsync(flush, x, xb, cudaMemcpyDeviceToDevice, stream);
    if (e == cudaSuccess && cb > 0)
      e = cudaMemcpyAsync(static_cast<char*>(flush) + flush_bytes / 2, c, cb, cudaMemcpyDeviceToDevice, stream);
    return e;
  };
  // One timed launch of candidate i (after a flush when there is one): its ms, -1 if cuBLASLt refused to launch it.
  auto time_one = [&](size_t i) -> float {
    cudaError_t e = flush ? flush_l2() : cudaSuccess;
    if (e == cudaSuccess) e = cudaEventRecord(t0, stream);
    const cublasStatus_t bs = e == cudaSuccess ? launch(i) : CUBLAS_STATUS_EXECUTION_FAILED;
    if (e == cudaSuccess) e = cudaEventRecord(t1, stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(t1);
    float ms = 0.0f;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, t0, t1);
    if (e != cudaSuccess) failure = e;
    return bs == CUBLAS_STATUS_SUCCESS ? ms : -1.0f;
  };
  // Quick pass over the candidates from index `from` on: two timed launches each (round-robin), after one
  // untimed launch that also loads the kernel. Returns (ms, index) of those that ran, fastest first.
  auto quick = [&](size_t from) {
    const size_t nq = p.candidates.size() - from;
    std::vector<float> q(nq, -1.0f);
    std::vector<char> qok(nq, 0);
    for (size_t j = 0; j < nq; ++j) qok[j] = launch(from + j) == CUBLAS_STATUS_SUCCESS;
    for (int r = 0; r < 2 && failure == cudaSuccess; ++r)
      for (size_t j = 0; j < nq && failure == cudaSuccess; ++j) {
        if (!qok[j]) continue;
        const float ms = time_one(from + j);
        if (ms < 0.0f) qok[j] = 0;
        else if (q[j] < 0.0f || ms < q[j]) q[j] = ms;
      }
    std::vector<std::pair<float, size_t>> order;
    for (size_t j = 0; j < nq; ++j)
      if (qok[j] && q[j] >= 0.0f) order.emplace_back(q[j], from + j);
    std::sort(order.begin(), order.end());
    return order;
  };
  if ((exhaustive || focused) && p.candidates.size() > n_heur) {
    std::vector<std::pair<float, size_t>> order = quick(n_heur);
    if (focused && failure == cudaSuccess) {
      // stage 2: the fastest tiles of stage 1 with the other cluster shapes and custom options
      std::vector<uint32_t> tiles;
      for (const auto& [ms, i] : order) {
        uint32_t tile = 0;
        size_t wr = 0;
        if (cublasLtMatmulAlgoConfigGetAttribute(&p.candidates[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                                 sizeof(tile), &wr) != CUBLAS_STATUS_SUCCESS)
          continue;
        if (std::find(tiles.begin(), tiles.end(), tile) == tiles.end()) tiles.push_back(tile);
        if (tiles.size() == kFocusTiles) break;
      }
      const size_t n1 = p.candidates.size();
      add_focus_variants(p, tiles);
      if (p.candidates.size() > n1) {
        std::vector<std::pair<float, size_t>> more = quick(n1);
        order.insert(order.end(), more.begin(), more.end());
        std::sort(order.begin(), order.end());
      }
    }
    // the fastest finalists join the heuristic's candidates for the full timing
    if (order.size() > kExhaustiveFinalists) order.resize(kExhaustiveFinalists);
    std::vector<cublasLtMatmulHeuristicResult_t> keep(p.candidates.begin(), p.candidates.begin() + n_heur);
    for (const auto& [ms, i] : order) keep.push_back(p.candidates[i]);
    p.candidates.swap(keep);
  }
  // Candidates are timed round-robin (kTuneRounds rounds of one run each, the minimum kept per candidate), not
  // one after another: a shape is often tuned right after the GPU idled (model loading, another library's
  // compilation) while its clocks are still rising, and timing candidate by candidate then favours the later
  // ones. Suspected on an H200 (docs/performance.md): the same plan at 1 x 512 ran 0.59 ms in standalone processes
  // and 0.68 ms in the issue-3 bench process, which tuned its M = 512 GEMMs right after torch.compile work.
  const size_t nc = p.candidates.size();
  std::vector<float> ms_min(nc, -1.0f);  // -1: not timed (failed)
  std::vector<char> ok(nc, 0);
  for (size_t i = 0; i < nc; ++i) ok[i] = launch(i) == CUBLAS_STATUS_SUCCESS;  // warm-up (and load) each
  for (int r = 0; r < kTuneRounds && failure == cudaSuccess; ++r) {
    for (size_t i = 0; i < nc && failure == cudaSuccess; ++i) {
      if (!ok[i]) continue;
      const float ms = time_one(i);
      if (failure != cudaSuccess) break;
      if (ms < 0.0f) {
        ok[i] = 0;
        continue;
      }
      if (ms_min[i] < 0.0f || ms < ms_min[i]) ms_min[i] = ms;
    }
  }
  if (flush) TRTRUN_CUDA_IGNORE(cudaFree(flush));
  float best = 0.0f;
  size_t best_i = 0;
  for (size_t i = 0; i < nc; ++i)
    if (ok[i] && ms_min[i] >= 0.0f && (best == 0.0f || ms_min[i] < best)) {
      best = ms_min[i];
      best_i = i;
    }
  TRTRUN_CUDA_IGNORE(cudaEventDestroy(t0));
  TRTRUN_CUDA_IGNORE(cudaEventDestroy(t1));
  if (failure != cudaSuccess)
    throw CudaError(__FILE__, __LINE__, "GEMM tuning (cudaEvent*)", static_cast<int>(failure),
                    cudaGetErrorName(failure), cudaGetErrorString(failure));
  p.algo = p.candidates[best_i].algo;
  p.workspace = p.candidates[best_i].workspaceSize;
  p.tuned = true;
  cache[tk] = TunedValue{p.candidates[best_i], true};
}

std::vector<GemmCacheEntry> gemm_cache_export() {
  std::lock_guard<std::mutex> lock(g_tuned_mutex);
  std::vector<GemmCacheEntry> out;
  std::map<int, std::pair<std::string, int>> ids;
  for (const auto& kv : tuned_cache()) {  // loaded entries this process never used pass through as they came
    auto id = ids.find(kv.first.device);
    if (id == ids.end()) id = ids.emplace(kv.first.device, device_identity(kv.first.device)).first;
    GemmCacheEntry e;
    e.device = id->second.first;
    e.cc = id->second.second;
    e.cublaslt = cublasLtGetVersion();
    e.key = kv.first.key;
    e.workspace = kv.first.workspace;
    e.search = kv.first.search;
    std::copy(std::begin(kv.second.result.algo.data), std::end(kv.second.result.algo.data), e.algo.begin());
    e.algo_workspace = kv.second.result.workspaceSize;
    out.push_back(e);
  }
  return out;
}

size_t gemm_cache_import(const std::vector<GemmCacheEntry>& entries) {
  int n_dev = 0;
  TRTRUN_CUDA_CHECK(cudaGetDeviceCount(&n_dev));
  std::vector<std::pair<std::string, int>> ids;
  for (int d = 0; d < n_dev; ++d) ids.push_back(device_identity(d));
  const size_t version = cublasLtGetVersion();
  std::lock_guard<std::mutex> lock(g_tuned_mutex);
  size_t taken = 0;
  for (const GemmCacheEntry& e : entries) {
    if (e.cublaslt != version) continue;
    bool any = false;
    for (int d = 0; d < n_dev; ++d) {
      if (ids[d].first != e.device || ids[d].second != e.cc) continue;
      const TunedKey tk{d, e.key, e.workspace, e.search};
      TunedValue v{};
      std::copy(e.algo.begin(), e.algo.end(), std::begin(v.result.algo.data));
      v.result.workspaceSize = e.algo_workspace;
      v.result.state = CUBLAS_STATUS_SUCCESS;
      v.checked = false;
      any |= tuned_cache().emplace(tk, v).second;  // a choice already made here stays
    }
    taken += any;
  }
  return taken;
}

}  // namespace trtrun
