// tools/cuda/cutlass_probe/main.cu: CUTLASS 3 Hopper GEMMs (TMA, wgmma, warp-specialized, stream-K / split-K) against
// cuBLASLt at BERT-base's four Linear shapes and few rows, in CUDA graphs with cold weights, with and without
// Programmatic Dependent Launch between the GEMMs. See README.md (how to build and run, and why).
//
//   main [M=128]
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../bench_graph.h"
#include "probe.h"

namespace {

struct Shape {
  const char* name;
  int n, k;
};

struct Choice {
  int cfg = -1, mode = 0, splits = 1;
  float us = 1e9f;
};

const char* mode_name(int mode) {
  switch (mode) {
    case 1: return "data-par";
    case 2: return "split-K";
    case 3: return "stream-K";
    default: return "heuristic";
  }
}

float max_rel_err(const std::vector<__half>& got, const std::vector<__half>& ref) {
  float ref_max = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ref_max = std::max(ref_max, std::fabs(__half2float(ref[i])));
    err = std::max(err, std::fabs(__half2float(got[i]) - __half2float(ref[i])));
  }
  return ref_max > 0 ? err / ref_max : err;
}

}  // namespace

int main(int argc, char** argv) {
  const int M = argc > 1 ? std::atoi(argv[1]) : 128;
  if (M < 1 || M > 4096) {
    std::fprintf(stderr, "M must be 1..4096\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line as it is measured (a run may be cut off)
  const ProbeConfig cfgs[kProbeConfigs] = {probe_config_0(), probe_config_1(), probe_config_2(), probe_config_3(),
                                           probe_config_4(), probe_config_5(), probe_config_6(), probe_config_7()};
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs, L2 %d MB; M = %d rows; y = x @ w, fp16 in/out, fp32 accumulation, no epilogue; "
              "weights cold (copies over > 200 MB)\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, M);
  const Shape shapes[4] = {{"qkv", 2304, 768}, {"attn_out", 768, 768}, {"ffn1", 3072, 768}, {"ffn2", 768, 3072}};
  cublasLtHandle_t lt;
  LK(cublasLtCreate(&lt));
  const size_t ws_bytes = 4u << 20;
  void* wsp;
  CK(cudaMalloc(&wsp, ws_bytes));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  std::vector<std::vector<__half*>> W(4);
  std::vector<__half*> X(4), Y(4);
  std::vector<LtBest> lts(4);
  std::vector<Choice> best_plain(4), best_pdl(4);
  std::printf("%-9s %-28s %-10s %6s %10s %10s %10s\n", "gemm", "candidate", "mode", "splits", "us", "us_pdl",
              "max_err");
  for (int si = 0; si < 4; ++si) {
    const Shape& s = shapes[si];
    const size_t wn = (size_t)s.k * s.n;
    const int copies = (int)std::max<size_t>(12, (200u << 20) / (wn * 2));
    W[si].resize(copies);
    for (int c = 0; c < copies; ++c) {
      CK(cudaMalloc(&W[si][c], wn * 2));
      fill_random<<<264, 256>>>(W[si][c], wn, 1234u + 77u * c + si, 0.05f);
    }
    CK(cudaMalloc(&X[si], (size_t)M * s.k * 2));
    fill_random<<<264, 256>>>(X[si], (size_t)M * s.k, 99u + si, 1.0f);
    CK(cudaMalloc(&Y[si], (size_t)M * s.n * 2));
    __half* yref;
    CK(cudaMalloc(&yref, (size_t)M * s.n * 2));
    CK(cudaDeviceSynchronize());
    lts[si] = lt_best(lt, M, s.n, s.k, CUBLASLT_EPILOGUE_DEFAULT, nullptr, W[si], X[si], Y[si], wsp, ws_bytes, st,
                      s.name);
    std::vector<__half> ref((size_t)M * s.n), got(ref.size()), ref_last(ref.size());
    LK(lts[si].run(lt, X[si], W[si][0], yref, wsp, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(ref.data(), yref, ref.size() * 2, cudaMemcpyDeviceToHost));
    LK(lts[si].run(lt, X[si], W[si][copies - 1], yref, wsp, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(ref_last.data(), yref, ref.size() * 2, cudaMemcpyDeviceToHost));

    const int ktiles = s.k / 64;
    std::vector<std::pair<int, int>> modes = {{1, 1}, {0, 1}, {3, 1}};
    for (int sp : {2, 3, 4, 6, 8, 12})
      if (sp <= ktiles) modes.push_back({2, sp});
    for (int ci = 0; ci < kProbeConfigs; ++ci) {
      for (auto [mode, splits] : modes) {
        std::string why;
        std::vector<void*> ops(copies, nullptr);
        bool ok = true;
        for (int c = 0; c < copies && ok; ++c) {
          ops[c] = cfgs[ci].make(M, s.n, s.k, X[si], W[si][c], Y[si], mode, splits, &why);
          ok = ops[c] != nullptr;
        }
        float err = -1, us = -1, us_pdl = -1;
        if (ok) {
          CK(cudaMemset(Y[si], 0xff, (size_t)M * s.n * 2));
          ok = cfgs[ci].run(ops[0], st, false) == cudaSuccess && cudaStreamSynchronize(st) == cudaSuccess;
          if (!ok) why = "launch failed";
        }
        if (ok) {
          CK(cudaMemcpy(got.data(), Y[si], got.size() * 2, cudaMemcpyDeviceToHost));
          err = max_rel_err(got, ref);
          // fp16 output rounding (2^-11 relative) plus fp32 summation order: 4e-3 of max |y| is far above both
          ok = err < 4e-3f;
          if (!ok) why = "WRONG result";
        }
        if (ok) {
          us = 1e3f * graph_ms_per_launch(st, copies, [&](int c) { return cfgs[ci].run(ops[c], st, false) == cudaSuccess; });
          us_pdl = 1e3f * graph_ms_per_launch(st, copies, [&](int c) { return cfgs[ci].run(ops[c], st, true) == cudaSuccess; });
          // the PDL graph's last launch wrote copy copies-1's product: it must be right too
          CK(cudaMemcpy(got.data(), Y[si], got.size() * 2, cudaMemcpyDeviceToHost));
          const float err_pdl = max_rel_err(got, ref_last);
          if (!(err_pdl < 4e-3f)) {
            ok = false;
            why = "WRONG result with PDL";
          }
        }
        if (ok) {
          std::printf("%-9s %-28s %-10s %6d %10.2f %10.2f %10.2e\n", s.name, cfgs[ci].name, mode_name(mode), splits,
                      us, us_pdl, err);
          if (us > 0 && us < best_plain[si].us) best_plain[si] = {ci, mode, splits, us};
          if (us_pdl > 0 && us_pdl < best_pdl[si].us) best_pdl[si] = {ci, mode, splits, us_pdl};
        } else {
          std::printf("%-9s %-28s %-10s %6d   -- %s\n", s.name, cfgs[ci].name, mode_name(mode), splits, why.c_str());
        }
        for (void* op : ops)
          if (op) cfgs[ci].destroy(op);
      }
    }
    std::printf("%-9s best: cublasLt %.2f us; CUTLASS %.2f us (%s, %s %d); CUTLASS with PDL %.2f us (%s, %s %d)\n\n",
                s.name, lts[si].us, best_plain[si].us,
                best_plain[si].cfg >= 0 ? cfgs[best_plain[si].cfg].name : "-", mode_name(best_plain[si].mode),
                best_plain[si].splits, best_pdl[si].us, best_pdl[si].cfg >= 0 ? cfgs[best_pdl[si].cfg].name : "-",
                mode_name(best_pdl[si].mode), best_pdl[si].splits);
    CK(cudaFree(yref));
  }

  // 12 layers x the 4 GEMMs in one graph, layer l on weight copy l: cuBLASLt's best, CUTLASS's best without PDL,
  // and CUTLASS's best with PDL on every launch
  const float t_lt = graph_ms_per_launch(st, 48, [&](int i) {
    return lts[i % 4].run(lt, X[i % 4], W[i % 4][i / 4], Y[i % 4], wsp, st) == CUBLAS_STATUS_SUCCESS;
  });
  float t_chain[2] = {-1, -1};
  for (int pdl = 0; pdl < 2; ++pdl) {
    const std::vector<Choice>& best = pdl ? best_pdl : best_plain;
    if (std::any_of(best.begin(), best.end(), [](const Choice& c) { return c.cfg < 0; })) continue;
    std::vector<void*> ops(48);
    std::string why;
    for (int i = 0; i < 48; ++i) {
      const int si = i % 4;
      const Choice& c = best[si];
      ops[i] = cfgs[c.cfg].make(M, shapes[si].n, shapes[si].k, X[si], W[si][i / 4], Y[si], c.mode, c.splits, &why);
      if (!ops[i]) {
        std::fprintf(stderr, "chain: %s\n", why.c_str());
        return 1;
      }
    }
    t_chain[pdl] = graph_ms_per_launch(st, 48, [&](int i) {
      return cfgs[best[i % 4].cfg].run(ops[i], st, pdl != 0) == cudaSuccess;
    });
    for (int i = 0; i < 48; ++i) cfgs[best[i % 4].cfg].destroy(ops[i]);
  }
  std::printf("12-layer chain of the 4 GEMMs (48 launches, one graph): cuBLASLt %.1f us, CUTLASS %.1f us, "
              "CUTLASS with PDL %.1f us\n",
              t_lt * 48e3, t_chain[0] * 48e3, t_chain[1] * 48e3);
  return 0;
}
