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

int main() {
  cublasLtHandle_t h;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) { std::printf("no cuBLASLt handle\n"); return 1; }
  std::printf("cuBLASLt version %zu\n", cublasLtGetVersion());
  const long m = 4096, n = 768, k = 768;
  struct { cudaDataType_t t; const char* name; } outs[] = {{CUDA_R_32F, "f32"}, {CUDA_R_16F, "f16"}, {CUDA_R_16BF, "bf16"}};
  struct { int mode; const char* name; } scales[] = {
      {-1, "none"}, {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, "scalar"},
      {CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, "outer_vec"}};
  struct { cublasLtEpilogue_t e; const char* name; } epis[] = {{CUBLASLT_EPILOGUE_DEFAULT, "none"},
                                                             {CUBLASLT_EPILOGUE_BIAS, "bias"},
                                                             {CUBLASLT_EPILOGUE_GELU_BIAS, "gelu_bias"}};
  size_t ws = 32u << 20;
  for (auto o : outs)
    for (auto sc : scales)
      for (auto ep : epis)
        for (int bias_as_bf16 = 0; bias_as_bf16 < 2; ++bias_as_bf16) {
          if (bias_as_bf16 && (ep.e == CUBLASLT_EPILOGUE_DEFAULT || o.t == CUDA_R_16BF)) continue;
          cublasLtMatmulDesc_t op;
          cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
          cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn));
          if (sc.mode >= 0) {
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sc.mode, sizeof(sc.mode));
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sc.mode, sizeof(sc.mode));
          }
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep.e, sizeof(ep.e));
          if (ep.e != CUBLASLT_EPILOGUE_DEFAULT) {
            int32_t bt = bias_as_bf16 ? CUDA_R_16BF : o.t;
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
          }
          cublasLtMatrixLayout_t a, b, d;
          cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, k, n, k);
          cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, k, m, k);
          cublasLtMatrixLayoutCreate(&d, o.t, n, m, n);
          cublasLtMatmulPreference_t pref;
          cublasLtMatmulPreferenceCreate(&pref);
          cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
          cublasLtMatmulHeuristicResult_t r[8];
          int found = 0;
          cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, a, b, d, d, pref, 8, r, &found);
          std::printf("D %-4s scales %-9s epilogue %-9s bias %-4s: %s, %d algorithms\n", o.name, sc.name, ep.name,
                      ep.e == CUBLASLT_EPILOGUE_DEFAULT ? "-" : (bias_as_bf16 ? "bf16" : o.name), status_name(st),
                      st == CUBLAS_STATUS_SUCCESS ? found : 0);
          cublasLtMatmulPreferenceDestroy(pref);
          cublasLtMatrixLayoutDestroy(a);
          cublasLtMatrixLayoutDestroy(b);
          cublasLtMatrixLayoutDestroy(d);
          cublasLtMatmulDescDestroy(op);
        }
  for (auto o : outs)
    for (auto sc : scales)
      for (auto ep : epis) {
        if (sc.mode == CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) continue;
        cublasLtMatmulDesc_t op;
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn));
        int32_t pm = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof(pm));
        if (sc.mode >= 0) {
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sc.mode, sizeof(sc.mode));
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sc.mode, sizeof(sc.mode));
        }
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep.e, sizeof(ep.e));
        const int32_t bt = o.t == CUDA_R_32F ? CUDA_R_16BF : o.t;  // the bias types offered above
        if (ep.e != CUBLASLT_EPILOGUE_DEFAULT)
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
        cublasLtMatrixLayout_t a, b, d;
        cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, k, n, k);
        cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, k, m, k);
        cublasLtMatrixLayoutCreate(&d, o.t, n, m, n);
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
        cublasLtMatmulHeuristicResult_t r[8];
        int found = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, a, b, d, d, pref, 8, r, &found);
        std::printf("alpha vector: D %-4s scales %-9s epilogue %-9s: %s, %d algorithms\n", o.name, sc.name, ep.name,
                    status_name(st), st == CUBLAS_STATUS_SUCCESS ? found : 0);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(a);
        cublasLtMatrixLayoutDestroy(b);
        cublasLtMatrixLayoutDestroy(d);
        cublasLtMatmulDescDestroy(op);
      }
  cublasLtDestroy(h);
  return 0;
}
