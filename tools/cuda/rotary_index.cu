// tools/cuda/rotary_index.cu: the runtime's rotary pass (native/kernels/rotary/rotary.cu, compiled in here) with
// 64-bit against 32-bit step indices, per shape: the outputs compared byte for byte, then each timed in CUDA graphs
// of 20 dependent launches (in place, as the runtime runs it), alternated over 3 rounds; median us per launch and the
// bandwidth its bytes need (Q and K read and written once; the cos/sin tables from cache).
//   nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -Inative -Inative/include -Itools/cuda \
//        tools/cuda/rotary_index.cu native/core/types.cpp -o /tmp/rotary_index && /tmp/rotary_index
// Shapes: ModernBERT-base (12 heads of 64, full rotary), SmolLM2-135M (9 on 3 K/V heads), a Llama-7B layer (32 on 8,
// D 128), GPT-NeoX's quarter rotary; batch x seq 1 x 128, 8 x 512, 32 x 512.
#include "kernels/rotary/rotary.cu"

#include "bench_graph.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

struct Shape {
  const char* name;
  int heads, kv_heads, head_size, rotary_dim;
};

template <typename Idx>
bool launch(void* qkv, const float* cos, const float* sin, int B, int S, const Shape& sh, cudaStream_t st) {
  using namespace trtrun;
  const long long tokens = 1LL * B * S;
  const int qk = sh.heads + sh.kv_heads, h2 = sh.rotary_dim / 2;
  const int width = (sh.heads + 2 * sh.kv_heads) * sh.head_size;
  const long long pairs = tokens * qk * h2;
  rotary_kernel<false, 4, Idx><<<grid_for(pairs / 4), kThreads, 0, st>>>(
      qkv, DType::F16, qkv, DType::F16, cos, sin, tokens, S, qk, width, sh.head_size, h2);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

int main() {
  const Shape shapes[] = {{"modernbert-base", 12, 12, 64, 64},
                          {"smollm2-135m", 9, 3, 64, 64},
                          {"llama-7b-layer", 32, 8, 128, 128},
                          {"gpt-neox-quarter", 12, 12, 64, 16}};
  const int points[][2] = {{1, 128}, {8, 512}, {32, 512}};
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s; rotary pass, fp32 math on fp16 qkv in place; us per launch (median of graph replays, 3 rounds "
              "alternated), GB/s of Q and K read and written\n", prop.name);
  std::printf("%-18s %9s | %9s %9s | %9s %9s | %s\n", "shape", "BxS", "64-bit", "GB/s", "32-bit", "GB/s", "same bytes");
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  bool all_same = true;
  for (const Shape& sh : shapes) {
    for (const auto& pt : points) {
      const int B = pt[0], S = pt[1];
      const size_t width = size_t(sh.heads + 2 * sh.kv_heads) * sh.head_size;
      const size_t n = size_t(B) * S * width;
      const int h2 = sh.rotary_dim / 2;
      std::vector<float> c(size_t(S) * h2), s(size_t(S) * h2);
      for (int p = 0; p < S; ++p)
        for (int i = 0; i < h2; ++i) {
          const double a = p / std::pow(10000.0, 2.0 * i / sh.rotary_dim);
          c[size_t(p) * h2 + i] = float(std::cos(a));
          s[size_t(p) * h2 + i] = float(std::sin(a));
        }
      float *dc, *ds;
      __half *a, *b;
      CK(cudaMalloc(&dc, c.size() * 4));
      CK(cudaMalloc(&ds, s.size() * 4));
      CK(cudaMalloc(&a, n * 2));
      CK(cudaMalloc(&b, n * 2));
      CK(cudaMemcpy(dc, c.data(), c.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(ds, s.data(), s.size() * 4, cudaMemcpyHostToDevice));
      fill_random<<<1024, 256>>>(a, n, 7u, 2.0f);
      CK(cudaMemcpy(b, a, n * 2, cudaMemcpyDeviceToDevice));
      launch<unsigned long long>(a, dc, ds, B, S, sh, st);
      launch<unsigned>(b, dc, ds, B, S, sh, st);
      CK(cudaStreamSynchronize(st));
      std::vector<unsigned char> ha(n * 2), hb(n * 2);
      CK(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
      const bool same = std::memcmp(ha.data(), hb.data(), n * 2) == 0;
      all_same &= same;
      std::vector<float> t64, t32;
      for (int r = 0; r < 3; ++r) {
        t64.push_back(graph_ms_per_launch(st, 20, [&](int) { return launch<unsigned long long>(a, dc, ds, B, S, sh, st); }));
        t32.push_back(graph_ms_per_launch(st, 20, [&](int) { return launch<unsigned>(b, dc, ds, B, S, sh, st); }));
      }
      std::sort(t64.begin(), t64.end());
      std::sort(t32.begin(), t32.end());
      const double bytes = 2.0 * 2.0 * B * S * double(sh.heads + sh.kv_heads) * sh.rotary_dim;  // Q, K: read + write
      const double u64 = t64[1] * 1e3, u32 = t32[1] * 1e3;
      char bxs[16];
      std::snprintf(bxs, sizeof bxs, "%dx%d", B, S);
      std::printf("%-18s %9s | %9.2f %9.0f | %9.2f %9.0f | %s\n", sh.name, bxs, u64, bytes / u64 / 1e3, u32,
                  bytes / u32 / 1e3, same ? "yes" : "NO");
      CK(cudaFree(dc));
      CK(cudaFree(ds));
      CK(cudaFree(a));
      CK(cudaFree(b));
    }
  }
  std::printf("%s\n", all_same ? "outputs identical at every shape" : "OUTPUTS DIFFER");
  return all_same ? 0 : 1;
}
