// tools/cuda/cutlass_probe/cfg.cu: one CUTLASS 3 Hopper GEMM configuration per compilation (-DCFG=0..7), so the slow
// template instantiations compile in parallel. See README.md.
#include <cutlass/cutlass.h>
#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>
#include <cutlass/util/packed_stride.hpp>

#include <type_traits>

#include "probe.h"

using namespace cute;

namespace {

// SWAP: D'(n x m) = W^T(n x k) X^T: the output features fill the tile's M side (64/128 wide), the tokens its N.
template <bool SWAP, int TM, int TN, class MainSched, class EpiSched, class TileSchedT, int CM = 1, int CN = 1>
struct Cfg {
  using E = cutlass::half_t;
  using LayoutA = std::conditional_t<SWAP, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using LayoutB = std::conditional_t<SWAP, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using LayoutD = std::conditional_t<SWAP, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using TileShape = Shape<Int<TM>, Int<TN>, _64>;
  using ClusterShape = Shape<Int<CM>, Int<CN>, _1>;
  using Epi = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, E, LayoutD, 8, E, LayoutD, 8,
      EpiSched>::CollectiveOp;
  using Main = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E, LayoutA, 8, E, LayoutB, 8, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epi::SharedStorage))>,
      MainSched>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Main, Epi, TileSchedT>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using TileSched = TileSchedT;
};

#if CFG == 0
using C = Cfg<false, 128, 64, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
              cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
constexpr const char* kName = "x.w coop 128x64 streamK";
#elif CFG == 1
using C = Cfg<false, 128, 128, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
              cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
constexpr const char* kName = "x.w coop 128x128 streamK";
#elif CFG == 2
using C = Cfg<true, 128, 128, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
              cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
constexpr const char* kName = "wT.xT coop 128x128 streamK";
#elif CFG == 3
using C = Cfg<true, 128, 64, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
              cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
constexpr const char* kName = "wT.xT coop 128x64 streamK";
// Below: the shape of cuBLASLt's own choice at 128 rows (nvjet_sm90_hsh_64x16..., cluster 2x4;
// results/batch1-h200/ncu-durations-h200.txt): output features on the tile's M side, a few tokens on N, one
// consumer warpgroup, non-persistent; a cluster multicasts each weight tile to the CTAs of other token blocks.
#elif CFG == 4
using C = Cfg<true, 64, 16, cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized, void>;
constexpr const char* kName = "wT.xT ws 64x16 c1x1";
#elif CFG == 5
using C = Cfg<true, 64, 16, cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized, void,
              2, 4>;
constexpr const char* kName = "wT.xT ws 64x16 c2x4";
#elif CFG == 6
using C = Cfg<true, 64, 32, cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized, void>;
constexpr const char* kName = "wT.xT ws 64x32 c1x1";
#else
using C = Cfg<true, 64, 32, cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized, void,
              2, 2>;
constexpr const char* kName = "wT.xT ws 64x32 c2x2";
#endif

using Gemm = typename C::Gemm;
using Kernel = typename C::Kernel;

struct ProbeOp {
  Gemm gemm;
  typename Gemm::Arguments args;
  void* workspace = nullptr;
};

template <class CC>  // a template so that `if constexpr` drops the stream-K branch for other schedulers
ProbeOp* make_op(int m, int n, int k, const __half* x, const __half* w, __half* y, int mode, int splits,
                 std::string* why) {
  using Kernel = typename CC::Kernel;
  // SWAP: (M', N') = (n, m), A' = w, B' = x; else (m, n), A = x, B = w
  constexpr bool kSwap = std::is_same_v<typename CC::LayoutA, cutlass::layout::ColumnMajor>;
  const int Mp = kSwap ? n : m, Np = kSwap ? m : n;
  const auto* A = reinterpret_cast<const cutlass::half_t*>(kSwap ? w : x);
  const auto* B = reinterpret_cast<const cutlass::half_t*>(kSwap ? x : w);
  auto* D = reinterpret_cast<cutlass::half_t*>(y);
  using SA = typename Kernel::StrideA;
  using SB = typename Kernel::StrideB;
  using SC = typename Kernel::StrideC;
  using SD = typename Kernel::StrideD;
  const SA sa = cutlass::make_cute_packed_stride(SA{}, cute::make_shape(Mp, k, 1));
  const SB sb = cutlass::make_cute_packed_stride(SB{}, cute::make_shape(Np, k, 1));
  const SC sc = cutlass::make_cute_packed_stride(SC{}, cute::make_shape(Mp, Np, 1));
  const SD sd = cutlass::make_cute_packed_stride(SD{}, cute::make_shape(Mp, Np, 1));
  auto* op = new ProbeOp;
  cutlass::KernelHardwareInfo hw;
  hw.device_id = 0;
  hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
  op->args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGemm, {Mp, Np, k, 1}, {A, sa, B, sb},
                                      {{}, D, sc, D, sd}, hw};
  op->args.epilogue.thread.alpha = 1.0f;
  op->args.epilogue.thread.beta = 0.0f;
  constexpr bool kStreamK = std::is_same_v<typename CC::TileSched, cutlass::gemm::StreamKScheduler>;
  if constexpr (kStreamK) {
    using DM = typename Kernel::TileScheduler::DecompositionMode;
    auto& sched = static_cast<typename CC::Gemm::Arguments&>(op->args).scheduler;  // dependent: dropped otherwise
    sched.splits = splits;
    sched.decomposition_mode = mode == 1 ? DM::DataParallel : mode == 2 ? DM::SplitK
                               : mode == 3 ? DM::StreamK : DM::Heuristic;
  } else if (mode != 1) {
    *why = "data-parallel only (no stream-K scheduler)";
    delete op;
    return nullptr;
  }
  if (op->gemm.can_implement(op->args) != cutlass::Status::kSuccess) {
    *why = "can_implement refused";
    delete op;
    return nullptr;
  }
  const size_t ws = Gemm::get_workspace_size(op->args);
  if (ws && cudaMalloc(&op->workspace, ws) != cudaSuccess) {
    *why = "workspace allocation failed";
    delete op;
    return nullptr;
  }
  if (op->gemm.initialize(op->args, op->workspace) != cutlass::Status::kSuccess ||
      cudaDeviceSynchronize() != cudaSuccess) {  // initialize() zeroes the workspace on the legacy stream
    *why = "initialize failed";
    if (op->workspace) cudaFree(op->workspace);
    delete op;
    return nullptr;
  }
  return op;
}

void* make(int m, int n, int k, const __half* x, const __half* w, __half* y, int mode, int splits,
           std::string* why) {
  return make_op<C>(m, n, k, x, w, y, mode, splits, why);
}

cudaError_t run(void* p, cudaStream_t stream, bool pdl) {
  auto* op = static_cast<ProbeOp*>(p);
  // split-K / stream-K reduce through workspace flags that initialize() zeroes (a memset on the stream; the
  // kernels do not reset them): once per launch, as CUTLASS's own examples do. Data-parallel needs none.
  if (op->workspace && op->gemm.initialize(op->args, op->workspace, stream) != cutlass::Status::kSuccess)
    return cudaErrorUnknown;
  const cutlass::Status s = op->gemm.run(stream, nullptr, pdl);
  if (s != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

void destroy(void* p) {
  auto* op = static_cast<ProbeOp*>(p);
  if (op->workspace) cudaFree(op->workspace);
  delete op;
}

}  // namespace

#define PROBE_CAT2(a, b) a##b
#define PROBE_CAT(a, b) PROBE_CAT2(a, b)
ProbeConfig PROBE_CAT(probe_config_, CFG)() { return ProbeConfig{kName, make, run, destroy}; }
