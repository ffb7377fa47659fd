// tools/cuda/bench_graph.h: what the standalone GEMM probes (smallm_stream.cu, cutlass_probe/) share: random fp16
// fill, the time of one launch in a CUDA graph of dependent launches, and cuBLASLt's best heuristic candidate for
// the runtime's Linear layout timed that way. Command-line tools: a failed call prints where and exits
// (bench_check.h).
#pragma once

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "bench_check.h"

// Uniform in [-scale, scale), from a hash of the index: never zeros, reproducible per seed.
static __global__ void fill_random(__half* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2half(scale * ((h & 0xffff) / 32768.0f - 1.0f));
  }
}

// GPU ms of `reps` replays of an instantiated graph (CUDA events around each), after `warm` untimed ones; sorted.
inline std::vector<float> replay_samples(cudaGraphExec_t ge, cudaStream_t st, int warm, int reps) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int w = 0; w < warm; ++w) CK(cudaGraphLaunch(ge, st));
  CK(cudaStreamSynchronize(st));
  std::vector<float> v;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    v.push_back(t);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  std::sort(v.begin(), v.end());
  return v;
}

// ms per launch of a graph of `n` launches made by body(i) (which returns false on a failed launch): median of
// 50 replays after 5 warm-ups; -1 when the capture or a launch failed.
template <class Body>
float graph_ms_per_launch(cudaStream_t st, int n, Body body) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  bool ok = true;
  for (int i = 0; i < n && ok; ++i) ok = body(i);
  const cudaError_t ce = cudaStreamEndCapture(st, &g);
  if (!ok || ce != cudaSuccess) {
    (void)cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    return -1.f;
  }
  if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaGraphDestroy(g);
    return -1.f;
  }
  const std::vector<float> v = replay_samples(ge, st, 5, 50);
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  return v[v.size() / 2] / n;
}

// cuBLASLt for y[m, n] = x[m, k] @ w[k, n] (+ bias, GELU), row-major, fp16 in and out, fp32 accumulation, as
// native/runtime/gemm.cpp sets it up (column-major y^T = w^T x^T): the best of the heuristic's top 8, each timed in a graph
// over the weight copies w[0..].
struct LtBest {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t algo_ws = 0;
  float us = 1e9f;
  cublasStatus_t run(cublasLtHandle_t lt, const __half* x, const __half* w, __half* y, void* ws,
                     cudaStream_t st) const {
    const float alpha = 1.f, beta = 0.f;
    return cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, y, ld, y, ld, &algo, ws, algo_ws, st);
  }
};

// `label` prefixes each candidate's line (nullptr: print nothing). timed = false: the heuristic's first, untimed
// (for profiler runs).
inline LtBest lt_best(cublasLtHandle_t lt, int m, int n, int k, cublasLtEpilogue_t epi, const __half* bias,
                      const std::vector<__half*>& w, const __half* x, __half* y, void* ws, size_t ws_bytes,
                      cudaStream_t st, const char* label, bool timed = true) {
  LtBest b;
  LK(cublasLtMatmulDescCreate(&b.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LK(cublasLtMatmulDescSetAttribute(b.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (bias) {
    int32_t bt = CUDA_R_16F;
    LK(cublasLtMatmulDescSetAttribute(b.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    LK(cublasLtMatmulDescSetAttribute(b.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  LK(cublasLtMatrixLayoutCreate(&b.la, CUDA_R_16F, n, k, n));
  LK(cublasLtMatrixLayoutCreate(&b.lb, CUDA_R_16F, k, m, k));
  LK(cublasLtMatrixLayoutCreate(&b.ld, CUDA_R_16F, n, m, n));
  cublasLtMatmulPreference_t pref;
  LK(cublasLtMatmulPreferenceCreate(&pref));
  LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                          sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t res[8];
  int found = 0;
  LK(cublasLtMatmulAlgoGetHeuristic(lt, b.op, b.la, b.lb, b.ld, b.ld, pref, 8, res, &found));
  LK(cublasLtMatmulPreferenceDestroy(pref));
  const float alpha = 1.f, beta = 0.f;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (!timed) {
      b.algo = res[i].algo;
      b.algo_ws = res[i].workspaceSize;
      b.us = 0;
      break;
    }
    const float t = graph_ms_per_launch(st, (int)w.size(), [&](int c) {
      return cublasLtMatmul(lt, b.op, &alpha, w[c], b.la, x, b.lb, &beta, y, b.ld, y, b.ld, &res[i].algo, ws,
                            res[i].workspaceSize, st) == CUBLAS_STATUS_SUCCESS;
    });
    if (label) std::printf("%-10s cublasLt heur %-8d %10.2f\n", label, i, t * 1e3);
    if (t > 0 && t * 1e3f < b.us) {
      b.us = t * 1e3f;
      b.algo = res[i].algo;
      b.algo_ws = res[i].workspaceSize;
    }
  }
  if (b.us >= 1e9f) {
    std::fprintf(stderr, "cuBLASLt ran no candidate for %dx%dx%d\n", m, n, k);
    std::exit(1);
  }
  return b;
}
