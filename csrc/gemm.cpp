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
  size_t workspace = 0;
  bool ok = false;
  ~Plan() {
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

GemmRunner::GemmRunner(size_t workspace_bytes) : workspace_(workspace_bytes, "cuBLASLt workspace") {
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
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle_, p->op, p->a, p->b, p->d, p->d, pref, 1, &result, &found);
  (void)cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    p->algo = result.algo;
    p->workspace = result.workspaceSize;
    p->ok = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    TRTRUN_CUBLAS_CHECK(st);  // a real failure (no device, out of memory, ...): report it
  }
  bool ok = p->ok;
  plans_.emplace(key, std::move(p));
  return ok;
}

void GemmRunner::run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y,
                     cudaStream_t stream) {
  auto it = plans_.find(key);
  if (it == plans_.end() || !it->second->ok) throw std::logic_error("GEMM run before a successful prepare");
  Plan& p = *it->second;
  if (has_bias(key.epilogue)) {
    // The bias pointer lives in the descriptor: set per call (cheap, host only; a captured graph keeps it).
    TRTRUN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f, beta = 0.0f;
  TRTRUN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &p.algo,
                                     workspace_.get(), p.workspace, stream));
}

}  // namespace trtrun
