// tools/cuda/graph_overhead.cu: what a kernel costs in a CUDA graph when it does (almost) nothing, on this card.
//
// BERT-base at batch 1 x 128 tokens runs ~85 kernels a forward pass in one graph (docs/performance.md). This measures
// the floor such a chain has from the kernel count alone: a graph of N dependent launches of a kernel that reads
// one value its predecessor wrote and writes one (so each must wait for the one before, as the model's ops do),
// at a few grid sizes, with and without Programmatic Dependent Launch (the secondary kernel calls
// griddepcontrol.wait before its read; the primary triggers launch_dependents at its start). A measurement tool
// for docs/performance.md, not part of the runtime.
//
//   nvcc -O2 -std=c++17 -arch=sm_90 tools/cuda/graph_overhead.cu -o /tmp/graph_overhead && /tmp/graph_overhead
//
// Prints, per (grid, PDL): GPU time of one graph launch (median of 200 launches, CUDA events) and that divided
// by N: the per-kernel cost of a dependent chain in a graph.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "bench_check.h"

// Block 0 thread 0 reads the slot its predecessor wrote and writes the next one; every block also touches its
// own slot so that all blocks do a global load and store (as a row kernel's blocks do).
template <bool PDL>
__global__ void step(float* __restrict__ chain, float* __restrict__ scratch, int i) {
  if constexpr (PDL) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
  if (threadIdx.x == 0) {
    if (blockIdx.x == 0) chain[i + 1] = chain[i] + 1.0f;
    scratch[blockIdx.x] += 1.0f;
  }
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 85;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs; a chain of %d dependent kernels in one CUDA graph\n", prop.name,
              prop.multiProcessorCount, n);
  float *chain, *scratch;
  CK(cudaMalloc(&chain, (n + 1) * sizeof(float)));
  CK(cudaMalloc(&scratch, 4096 * sizeof(float)));
  CK(cudaMemset(chain, 0, (n + 1) * sizeof(float)));
  CK(cudaMemset(scratch, 0, 4096 * sizeof(float)));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::printf("%8s %5s %12s %12s %12s\n", "blocks", "PDL", "graph_us", "per_kernel_us", "chain_ok");
  for (int blocks : {1, 32, 132, 264}) {
    for (int pdl = 0; pdl < 2; ++pdl) {
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < n; ++i) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks);
        cfg.blockDim = dim3(128);
        cfg.stream = st;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = (pdl && i > 0) ? 1 : 0;
        if (pdl)
          CK(cudaLaunchKernelEx(&cfg, step<true>, chain, scratch, i));
        else
          CK(cudaLaunchKernelEx(&cfg, step<false>, chain, scratch, i));
      }
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      for (int w = 0; w < 20; ++w) CK(cudaGraphLaunch(ge, st));
      CK(cudaStreamSynchronize(st));
      std::vector<float> ms;
      for (int r = 0; r < 200; ++r) {
        CK(cudaMemsetAsync(chain, 0, sizeof(float), st));
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
      }
      float last = 0;
      CK(cudaMemcpy(&last, chain + n, sizeof(float), cudaMemcpyDeviceToHost));
      std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
      const float med = ms[ms.size() / 2] * 1e3f;
      std::printf("%8d %5s %12.1f %12.2f %12s\n", blocks, pdl ? "yes" : "no", med, med / n,
                  last == static_cast<float>(n) ? "yes" : "NO");
      CK(cudaGraphExecDestroy(ge));
      CK(cudaGraphDestroy(g));
    }
  }
  return 0;
}
