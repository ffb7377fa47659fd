// tools/cuda/pdl_probe.cu: may trtrun's CUDA graphs use Programmatic Dependent Launch (PDL) edges, and what do they
// buy at batch 1?  A measurement tool for docs/performance.md, not part of the runtime.
//
//   nvcc -O2 -std=c++17 -arch=sm_90 tools/cuda/pdl_probe.cu -lcublasLt -o /tmp/pdl_probe && /tmp/pdl_probe
//
// 1. Safety of a cuBLASLt GEMM as the *secondary* of a programmatic edge. A programmatic edge lets the next
//    kernel start before the previous one finishes; it is only correct when the next kernel executes
//    griddepcontrol.wait (cudaGridDependencySynchronize) before it reads the previous kernel's output. Our own
//    kernels can do that; whether cuBLASLt's kernels do is not documented. Test: a one-block producer kernel
//    triggers its dependents at once, spins 30 us, then writes the GEMM's input X. Graph: producer -> GEMM with
//    the edge made programmatic. A GEMM that waits computes from the new X (equal to a plain graph's result);
//    one that does not reads the old X (different). Every top-8 algorithm of each shape is tried.
// 2. Timing: a chain like BERT-base at M=128 rows (12 x [GEMM qkv, "op", GEMM out, "op", GEMM ffn1, GEMM ffn2,
//    "op"], "op" = a small PDL-aware row kernel of ours) as a graph with (a) plain edges, (b) programmatic
//    edges into our kernels only, (c) programmatic edges everywhere (only meaningful if test 1 passed).
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_graph.h"

__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ float hval(size_t i, unsigned seed) {
  unsigned h = (unsigned)(i * 2654435761u) ^ (seed * 0x9e3779b9u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return ((h & 0xffff) / 65535.0f - 0.5f);
}

__global__ void producer(__half* x, size_t n, unsigned seed, unsigned spin_ns) {
  asm volatile("griddepcontrol.launch_dependents;");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  unsigned long long t0 = gtimer();
  while (gtimer() - t0 < spin_ns) {
  }
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = __float2half(hval(i, seed) * 2.f);
}

__global__ void fill(__half* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2half(hval(i, seed) * scale);
}

// a LayerNorm-sized row op of ours, PDL-aware: y[r, :] = half(x[r, :] * 0.5) (one block per 4 rows)
__global__ void rowop(const void* x, bool x_f32, __half* y, int rows, int n) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  int r = blockIdx.x * 4 + threadIdx.y;
  if (r >= rows) return;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = x_f32 ? static_cast<const float*>(x)[(size_t)r * n + c]
                    : __half2float(static_cast<const __half*>(x)[(size_t)r * n + c]);
    y[(size_t)r * n + c] = __float2half(v * 0.5f);
  }
}

struct Gemm {
  int m, n, k;
  bool out_f32;
  cublasLtEpilogue_t epi;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, ld;
  std::vector<cublasLtMatmulHeuristicResult_t> algos;
  void* bias;
};

static void make_gemm(cublasLtHandle_t lt, Gemm& g, size_t ws_bytes) {
  LK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t nn = CUBLAS_OP_N;
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSA, &nn, sizeof(nn)));
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn)));
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epi, sizeof(g.epi)));
  int32_t bt = g.out_f32 ? CUDA_R_32F : CUDA_R_16F;
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  CK(cudaMalloc(&g.bias, (size_t)g.n * 4));
  CK(cudaMemset(g.bias, 0, (size_t)g.n * 4));
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  LK(cublasLtMatrixLayoutCreate(&g.la, CUDA_R_16F, g.n, g.k, g.n));
  LK(cublasLtMatrixLayoutCreate(&g.lb, CUDA_R_16F, g.k, g.m, g.k));
  LK(cublasLtMatrixLayoutCreate(&g.ld, g.out_f32 ? CUDA_R_32F : CUDA_R_16F, g.n, g.m, g.n));
  cublasLtMatmulPreference_t pref;
  LK(cublasLtMatmulPreferenceCreate(&pref));
  LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t res[8];
  int found = 0;
  LK(cublasLtMatmulAlgoGetHeuristic(lt, g.op, g.la, g.lb, g.ld, g.ld, pref, 8, res, &found));
  for (int i = 0; i < found; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) g.algos.push_back(res[i]);
  cublasLtMatmulPreferenceDestroy(pref);
}

// every kernel->kernel edge of `graph` whose target satisfies pick(target index in capture order) becomes
// programmatic
static int make_programmatic(cudaGraph_t graph, const std::vector<bool>& pdl_target) {
  size_t n = 0;
  CK(cudaGraphGetNodes(graph, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  CK(cudaGraphGetNodes(graph, nodes.data(), &n));
  size_t ne = 0;
  CK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &ne));
  std::vector<cudaGraphNode_t> from(ne), to(ne);
  std::vector<cudaGraphEdgeData> ed(ne);
  CK(cudaGraphGetEdges(graph, from.data(), to.data(), ed.data(), &ne));
  auto idx = [&](cudaGraphNode_t x) { return (int)(std::find(nodes.begin(), nodes.end(), x) - nodes.begin()); };
  int changed = 0;
  for (size_t e = 0; e < ne; ++e) {
    cudaGraphNodeType tf, tt;
    CK(cudaGraphNodeGetType(from[e], &tf));
    CK(cudaGraphNodeGetType(to[e], &tt));
    if (tf != cudaGraphNodeTypeKernel || tt != cudaGraphNodeTypeKernel) continue;
    int ti = idx(to[e]);
    if (ti >= (int)pdl_target.size() || !pdl_target[ti]) continue;
    CK(cudaGraphRemoveDependencies(graph, &from[e], &to[e], &ed[e], 1));
    cudaGraphEdgeData p{};
    p.from_port = cudaGraphKernelNodePortProgrammatic;
    p.type = cudaGraphDependencyTypeProgrammatic;
    CK(cudaGraphAddDependencies(graph, &from[e], &to[e], &p, 1));
    ++changed;
  }
  return changed;
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s\n", prop.name);
  cublasLtHandle_t lt;
  LK(cublasLtCreate(&lt));
  const size_t ws_bytes = 32u << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const float alpha = 1.f, beta = 0.f;

  // ---------------------------------------------------------------- 1. safety of GEMMs as PDL secondaries
  int n_wait = 0, n_nowait = 0;
  for (int M : {128, 1024, 4096}) {
    Gemm shapes[] = {{M, 2304, 768, false, CUBLASLT_EPILOGUE_BIAS},
                     {M, 768, 768, true, CUBLASLT_EPILOGUE_BIAS},
                     {M, 3072, 768, false, CUBLASLT_EPILOGUE_GELU_BIAS},
                     {M, 768, 3072, true, CUBLASLT_EPILOGUE_BIAS}};
    for (Gemm& g : shapes) {
      make_gemm(lt, g, ws_bytes);
      __half *X, *W;
      void *Y, *Yref;
      size_t ysz = (size_t)g.m * g.n * (g.out_f32 ? 4 : 2);
      CK(cudaMalloc(&X, (size_t)g.m * g.k * 2));
      CK(cudaMalloc(&W, (size_t)g.k * g.n * 2));
      CK(cudaMalloc(&Y, ysz));
      CK(cudaMalloc(&Yref, ysz));
      fill<<<132, 256>>>(W, (size_t)g.k * g.n, 7, 0.1f);
      std::vector<char> h1(ysz), h2(ysz);
      for (size_t a = 0; a < g.algos.size(); ++a) {
        bool ok_all = true;
        for (int pdl = 0; pdl < 2; ++pdl) {
          // stale X first, so a GEMM that does not wait computes from it
          fill<<<132, 256>>>(X, (size_t)g.m * g.k, 12345, 2.f);
          CK(cudaDeviceSynchronize());
          cudaGraph_t graph;
          CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
          producer<<<1, 1024, 0, st>>>(X, (size_t)g.m * g.k, 77u, 30000u);
          LK(cublasLtMatmul(lt, g.op, &alpha, W, g.la, X, g.lb, &beta, pdl ? Y : Yref, g.ld, pdl ? Y : Yref, g.ld,
                            &g.algos[a].algo, ws, g.algos[a].workspaceSize, st));
          CK(cudaStreamEndCapture(st, &graph));
          size_t nn = 0;
          CK(cudaGraphGetNodes(graph, nullptr, &nn));
          std::vector<bool> tgt(nn, pdl == 1);
          tgt[0] = false;  // never the producer itself
          int ch = make_programmatic(graph, tgt);
          cudaGraphExec_t ex;
          CK(cudaGraphInstantiate(&ex, graph, 0));
          CK(cudaGraphLaunch(ex, st));
          CK(cudaStreamSynchronize(st));
          CK(cudaGraphExecDestroy(ex));
          CK(cudaGraphDestroy(graph));
          if (pdl && ch == 0) std::printf("  (no kernel->kernel edge to convert: %zu nodes)\n", nn);
        }
        CK(cudaMemcpy(h1.data(), Y, ysz, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(h2.data(), Yref, ysz, cudaMemcpyDeviceToHost));
        ok_all = h1 == h2;
        (ok_all ? n_wait : n_nowait)++;
        std::printf("GEMM-as-secondary M=%5d n=%4d k=%4d algo#%zu: %s\n", g.m, g.n, g.k, a,
                    ok_all ? "waits (result equal)" : "DOES NOT WAIT (stale input read)");
      }
      cudaFree(X);
      cudaFree(W);
      cudaFree(Y);
      cudaFree(Yref);
    }
  }
  std::printf("SAFETY: %d algorithms waited, %d did not\n", n_wait, n_nowait);

  // ---------------------------------------------------------------- 2. timing of a BERT-like chain, M = 128
  for (int M : {128, 1024}) {
    Gemm qkv{M, 2304, 768, false, CUBLASLT_EPILOGUE_BIAS}, out{M, 768, 768, true, CUBLASLT_EPILOGUE_BIAS},
        f1{M, 3072, 768, false, CUBLASLT_EPILOGUE_GELU_BIAS}, f2{M, 768, 3072, true, CUBLASLT_EPILOGUE_BIAS};
    for (Gemm* g : {&qkv, &out, &f1, &f2}) make_gemm(lt, *g, ws_bytes);
    const int L = 12;
    std::vector<__half*> Wq(L), Wo(L), W1(L), W2(L);
    for (int l = 0; l < L; ++l) {
      CK(cudaMalloc(&Wq[l], 768 * 2304 * 2));
      CK(cudaMalloc(&Wo[l], 768 * 768 * 2));
      CK(cudaMalloc(&W1[l], 768 * 3072 * 2));
      CK(cudaMalloc(&W2[l], 3072 * 768 * 2));
      fill<<<132, 256>>>(Wq[l], 768 * 2304, l, 0.05f);
      fill<<<132, 256>>>(Wo[l], 768 * 768, l + 100, 0.05f);
      fill<<<132, 256>>>(W1[l], 768 * 3072, l + 200, 0.05f);
      fill<<<132, 256>>>(W2[l], 3072 * 768, l + 300, 0.05f);
    }
    __half *h, *q, *a, *f;
    float* o;
    CK(cudaMalloc(&h, (size_t)M * 768 * 2));
    CK(cudaMalloc(&q, (size_t)M * 2304 * 2));
    CK(cudaMalloc(&a, (size_t)M * 768 * 2));
    CK(cudaMalloc(&f, (size_t)M * 3072 * 2));
    CK(cudaMalloc(&o, (size_t)M * 768 * 4));
    fill<<<132, 256>>>(h, (size_t)M * 768, 5, 1.f);
    CK(cudaDeviceSynchronize());
    auto gemm = [&](Gemm& g, const void* x, const void* w, void* y) {
      LK(cublasLtMatmul(lt, g.op, &alpha, w, g.la, x, g.lb, &beta, y, g.ld, y, g.ld, &g.algos[0].algo, ws,
                        g.algos[0].workspaceSize, st));
    };
    dim3 rb(128, 4);
    std::vector<bool> ours;  // per captured kernel node: is it one of ours (rowop)
    cudaGraph_t graph;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < L; ++l) {
      gemm(qkv, h, Wq[l], q);
      rowop<<<(M + 3) / 4, rb, 0, st>>>(q, false, a, M, 768);  // stands for attention
      gemm(out, a, Wo[l], o);
      rowop<<<(M + 3) / 4, rb, 0, st>>>(o, true, h, M, 768);  // LayerNorm
      gemm(f1, h, W1[l], f);
      gemm(f2, f, W2[l], o);
      rowop<<<(M + 3) / 4, rb, 0, st>>>(o, true, h, M, 768);  // LayerNorm
    }
    CK(cudaStreamEndCapture(st, &graph));
    size_t nn = 0;
    CK(cudaGraphGetNodes(graph, nullptr, &nn));
    std::vector<cudaGraphNode_t> nodes(nn);
    CK(cudaGraphGetNodes(graph, nodes.data(), &nn));
    // which nodes are our rowop kernels: compare the kernel function
    cudaFunction_t fn_row = nullptr;
    CK(cudaGetFuncBySymbol(&fn_row, (const void*)rowop));
    std::vector<bool> is_ours(nn), all(nn, true), none(nn, false);
    int n_kernels = 0, n_ours = 0;
    for (size_t i = 0; i < nn; ++i) {
      cudaGraphNodeType t;
      CK(cudaGraphNodeGetType(nodes[i], &t));
      if (t != cudaGraphNodeTypeKernel) continue;
      ++n_kernels;
      cudaKernelNodeParams kp{};
      if (cudaGraphKernelNodeGetParams(nodes[i], &kp) == cudaSuccess) {
        cudaFunction_t f2_ = nullptr;
        if (cudaGetFuncBySymbol(&f2_, kp.func) == cudaSuccess && f2_ == fn_row) is_ours[i] = true;
      } else {
        (void)cudaGetLastError();
      }
      n_ours += is_ours[i];
    }
    std::printf("chain M=%d: %zu nodes, %d kernels, %d ours\n", M, nn, n_kernels, n_ours);
    const char* names[] = {"plain edges", "PDL into our kernels", "PDL everywhere"};
    for (int v = 0; v < 3; ++v) {
      cudaGraph_t g2;
      CK(cudaGraphClone(&g2, graph));
      std::vector<cudaGraphNode_t> n2(nn);
      CK(cudaGraphGetNodes(g2, n2.data(), &nn));
      int ch = make_programmatic(g2, v == 0 ? none : v == 1 ? is_ours : all);
      cudaGraphExec_t ex;
      CK(cudaGraphInstantiate(&ex, g2, 0));
      const std::vector<float> ts = replay_samples(ex, st, 20, 200);
      std::printf("  %-22s (%2d edges programmatic): p50 %.4f ms  p10 %.4f  p90 %.4f\n", names[v], ch,
                  ts[ts.size() / 2], ts[ts.size() / 10], ts[ts.size() * 9 / 10]);
      CK(cudaGraphExecDestroy(ex));
      CK(cudaGraphDestroy(g2));
    }
  }
  return 0;
}
