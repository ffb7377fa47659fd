// tools/cuda/cutlass_probe/probe.h: what a CUTLASS configuration offers the probe's main (main.cu). See README.md.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

// y[m, n] = x[m, k] @ w[k, n], row-major, fp16 in and out, fp32 accumulation (the runtime's Linear layout).
struct ProbeConfig {
  const char* name;
  // nullptr (and *why) when CUTLASS cannot run this shape. mode: 0 heuristic, 1 data-parallel, 2 split-K
  // (`splits` slices), 3 stream-K. The op (opaque: its arguments, workspace and CUTLASS operator) owns its
  // workspace.
  void* (*make)(int m, int n, int k, const __half* x, const __half* w, __half* y, int mode, int splits,
                   std::string* why);
  cudaError_t (*run)(void* op, cudaStream_t stream, bool pdl);
  void (*destroy)(void* op);
};

// one per configuration file (cfg.cu compiled with -DCFG=0..7)
ProbeConfig probe_config_0();
ProbeConfig probe_config_1();
ProbeConfig probe_config_2();
ProbeConfig probe_config_3();
ProbeConfig probe_config_4();
ProbeConfig probe_config_5();
ProbeConfig probe_config_6();
ProbeConfig probe_config_7();
constexpr int kProbeConfigs = 8;
