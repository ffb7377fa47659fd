// Which fp8 (E4M3) GEMM forms cuBLASLt offers on this GPU: for the runtime's "TN" layout (A = w^T [n, k],
// B = x^T [k, m]), each output type x scale mode x epilogue, the heuristic's status and number of algorithms.
// The runtime plans an fp8 Linear from these answers (native/runtime/context.cpp); this shows them directly.
// The last block asks for one alpha per output channel (CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO), the
// other way per-channel weight scales could reach the epilogue.
//   nvcc -std=c++17 -arch=sm_90 tools/cuda/fp8_modes.cpp -lcublasLt -o /tmp/fp8_modes && /tmp/fp8_modes
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cstdio>

static const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "ok";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    default: return "other error";
  }
}

// One question to cuBLASLt's heuristic: an fp8 GEMM of D = op(A) B at m x n x k in the runtime's TN layout, with
// output type out_t, the scale mode (-1: none) on A and B, the epilogue and its bias type, and the pointer mode
// (alpha_vector: one alpha per output channel). Prints the answer after `label`.
void probe(cublasLtHandle_t h, const char* label, cudaDataType_t out_t, int scale_mode, cublasLtEpilogue_t epilogue,
           int32_t bias_t, bool alpha_vector) {
  const long m = 4096, n = 768, k = 768;
  size_t ws = 32u << 20;
  cublasLtMatmulDesc_t op;
  cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn));
  if (alpha_vector) {
    int32_t pm = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof(pm));
  }
  if (scale_mode >= 0) {
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &scale_mode, sizeof(scale_mode));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &scale_mode, sizeof(scale_mode));
  }
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  if (epilogue != CUBLASLT_EPILOGUE_DEFAULT)
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_t, sizeof(bias_t));
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, k, n, k);
  cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, k, m, k);
  cublasLtMatrixLayoutCreate(&d, out_t, n, m, n);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t r[8];
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, a, b, d, d, pref, 8, r, &found);
  std::printf("%s: %s, %d algorithms\n", label, status_name(st), st == CUBLAS_STATUS_SUCCESS ? found : 0);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(d);
  cublasLtMatmulDescDestroy(op);
}

int main() {
  cublasLtHandle_t h;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) { std::printf("no cuBLASLt handle\n"); return 1; }
  std::printf("cuBLASLt version %zu\n", cublasLtGetVersion());
  struct { cudaDataType_t t; const char* name; } outs[] = {{CUDA_R_32F, "f32"}, {CUDA_R_16F, "f16"}, {CUDA_R_16BF, "bf16"}};
  struct { int mode; const char* name; } scales[] = {
      {-1, "none"}, {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, "scalar"},
      {CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, "outer_vec"}};
  struct { cublasLtEpilogue_t e; const char* name; } epis[] = {{CUBLASLT_EPILOGUE_DEFAULT, "none"},
                                                             {CUBLASLT_EPILOGUE_BIAS, "bias"},
                                                             {CUBLASLT_EPILOGUE_GELU_BIAS, "gelu_bias"}};
  char label[160];
  for (auto o : outs)
    for (auto sc : scales)
      for (auto ep : epis)
        for (int bias_as_bf16 = 0; bias_as_bf16 < 2; ++bias_as_bf16) {
          if (bias_as_bf16 && (ep.e == CUBLASLT_EPILOGUE_DEFAULT || o.t == CUDA_R_16BF)) continue;
          std::snprintf(label, sizeof(label), "D %-4s scales %-9s epilogue %-9s bias %-4s", o.name, sc.name, ep.name,
                        ep.e == CUBLASLT_EPILOGUE_DEFAULT ? "-" : (bias_as_bf16 ? "bf16" : o.name));
          probe(h, label, o.t, sc.mode, ep.e, bias_as_bf16 ? CUDA_R_16BF : o.t, false);
        }
  for (auto o : outs)
    for (auto sc : scales)
      for (auto ep : epis) {
        if (sc.mode == CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) continue;
        std::snprintf(label, sizeof(label), "alpha vector: D %-4s scales %-9s epilogue %-9s", o.name, sc.name,
                      ep.name);
        probe(h, label, o.t, sc.mode, ep.e, o.t == CUDA_R_32F ? CUDA_R_16BF : o.t, true);  // the bias types offered above
      }
  cublasLtDestroy(h);
  return 0;
}
