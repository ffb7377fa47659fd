// native/kernels/attention/attention.cu: flash-attention style fused attention for sm_90.
//
// Tensor-core kernel (HYBRID, FP16): a block owns BQ = 16 * warps query rows of one (batch, head); each
// warp owns 16 rows. Key/value tiles of 64 rows stream through shared memory (cp.async, a ring of 3 tiles
// for head sizes 32/64, 2 for 128), their mask values with them (unless the unmasked keys
// are one run: then a key's flag comes from the run's ends). Per tile and warp: S = Q K^T with mma.sync
// m16n8k16 (fp16 x fp16 -> fp32), mask, online softmax (running max m and sum l per row), P rounded to fp16
// and fed from registers straight into O += P V (mma.sync again). The seq x seq score matrix never leaves registers.
// FP32 kernel: the same online softmax with plain FFMA (no tensor cores, so no TF32).
// Score biases by distance (relative-position tables, ALiBi) and sliding windows: the EXTRA instantiations of the
// tensor-core kernel (the usual ones compile as before) and run-time arguments of the FP32 kernel.
#include "attention.h"

#include "kernels/common/device.cuh"

#include <cstdint>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

namespace trtrun {
namespace {

constexpr int BK = 64;         // keys per tile (tensor-core kernel)
// K/V tiles in the tensor-core kernel's shared-memory ring: NST - 1 in flight while one is computed. Measured
// (H200, tools/kernels_attention.py --sweep; results/kernels-h200/attn-ring-depths-sweep.txt): for head sizes 32 and 64, 3 beats 2 at every shape
// timed (by 4-12%: at few blocks a block's chain of tile loads is the kernel's time; at many, other blocks do
// not hide it all either) and beats 4 wherever more shared memory costs resident blocks (32 x 512: 4 is 25%
// slower than 3). Head size 128: 3 costs half the resident blocks (122 KB a block) and was 34% slower: 2.
constexpr int ring_depth(int D) { return D >= 128 ? 2 : 3; }
constexpr int FLAG_MASKED = 0;  // key flags kept in shared memory per tile
constexpr int FLAG_VALID = 1;
constexpr int FLAG_OUT = 2;     // past the sequence end: contributes exactly nothing

// ------------------------------------------------------------------------------------------------
// PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int sz = valid ? 16 : 0;  // 0: nothing read, 16 zero bytes written
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// D(16x8, f32) += A(16x16, f16, row) * B(16x8, f16, col)
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx: ~2^-22 relative, exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// ------------------------------------------------------------------------------------------------
// Score bias by distance and sliding window (AttentionExtras), as the kernels take them: `bias` points at distance 0
// of head 0 (the table + bias_max_seq - 1), heads `bias_stride` floats apart, or is null; `window` < 0: none.
struct Extras {
  const float* bias;
  int bias_stride;
  int window;
  float softcap;  // > 0: scaled scores soft-capped to softcap * tanh(s / softcap) before the bias; 0: none
  // Rotary of Q and K applied as their tiles land in shared memory (fp16 qkv only): fp32 cos/sin [>= S, R/2], null
  // for none; R = rotary_dim, a multiple of 16 <= D; rope_half: launch_rotary's half_math arithmetic.
  const float* rope_cos;
  const float* rope_sin;
  int rotary_dim;
  bool rope_half;
  // Masks of a dense key range (no padding holes) as one interval of keys a row (softmax_tile); false: key by key,
  // as before (TRTRUN_ATTN_MASK=keys, measurements only).
  bool mask_intervals;
};

// The contract's order on one fp32 score: scaled (one rounding), soft-capped, then the bias added; no contraction.
__device__ __forceinline__ float capped(float s, float scale, float cap) {
  const float x = __fmul_rn(s, scale);
  return cap > 0.f ? __fmul_rn(cap, tanhf(__fdiv_rn(x, cap))) : x;
}

// Bias of query i and key j = i + d of one head (bh: its distance-0 entry). d is clamped to the run's distances
// [-(S-1), S-1]: only keys j >= S (scores replaced by -inf after) and query rows i >= S (never stored) reach past them,
// and the table holds at least those (bias_max_seq >= S).
__device__ __forceinline__ float bias_at(const float* bh, int d, int S) {
  return __ldg(bh + min(max(d, 1 - S), S - 1));
}

// Is some query row q0..qe (< S) without an unmasked key within `window` (>= 0) of it (before it only, when causal)?
// The mask row's unmasked keys lie in [first, last]. Each thread scans its rows' windows outward from the diagonal,
// stopping at the first unmasked key (one or two reads unless the row sits in a hole). Block-uniform result; every
// thread of the block must call it.
__device__ __forceinline__ bool rows_without_key(const int32_t* mrow, int S, int q0, int qe, bool causal, int window,
                                                 int first, int last) {
  bool none = false;
  for (int i = q0 + static_cast<int>(threadIdx.x); i <= qe; i += blockDim.x) {
    const int lo = max(max(0, i - window), first), hi = min(causal ? i : min(S - 1, i + window), last);
    bool found = false;
    int a = min(i, hi), c = max(i + 1, lo);  // keys [lo, i] downward, [i + 1, hi] upward, alternately
    while (!found && (a >= lo || c <= hi)) {
      if (a >= lo) found = mrow[a--] != 0;
      if (!found && c <= hi) found = mrow[c++] != 0;
    }
    none |= !found;
  }
  return __syncthreads_or(none) != 0;
}

// ------------------------------------------------------------------------------------------------
// Shared pieces of both kernels

// Does row q0 of batch b have at least one unmasked key among 0..q0? If not (and the op is causal),
// rows q0.. of this block may be fully masked; they must then be uniform over ALL seq keys, so the
// block walks every key tile instead of stopping at the diagonal. Block-uniform result.
__device__ __forceinline__ bool block_has_fully_masked_rows(const int32_t* mask, int b, int S, int q0) {
  bool found = false;
  const int last = min(q0, S - 1);
  for (int j = threadIdx.x; j <= last; j += blockDim.x) found |= mask[static_cast<long long>(b) * S + j] != 0;
  return !__syncthreads_or(found);
}

// Loads `rows` rows (tokens r0..) of `D` elements starting at column `col` of the packed qkv tensor into
// shared memory (fp16, row pitch LD elements). fp16 input: cp.async (asynchronous; caller commits/waits);
// fp32 input: synchronous load + convert. Rows past the sequence end are zero-filled.
// tid/nthr: this thread's index among the nthr threads that share the copy (the block, or a key group).
template <int D, int LD>
__device__ __forceinline__ void load_rows_f16(__half* dst, const void* qkv, bool in_half, long long tok_base,
                                              int r0, int rows, int S, long long row_stride, int col, int tid,
                                              int nthr) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row (fp16)
  const int total = rows * CPR;
  for (int i = tid; i < total; i += nthr) {
    const int r = i / CPR, c = i % CPR;
    const int tok = r0 + r;
    const bool valid = tok < S;
    const long long off = (tok_base + (valid ? tok : 0)) * row_stride + col + c * 8;
    __half* d = dst + r * LD + c * 8;
    if (in_half) {
      cp_async16(smem_u32(d), static_cast<const __half*>(qkv) + off, valid);
    } else {
      uint4 out = make_uint4(0, 0, 0, 0);
      if (valid) {
        const float4* s = reinterpret_cast<const float4*>(static_cast<const float*>(qkv) + off);
        const float4 a = s[0], b = s[1];
        out.x = pack_half2(a.x, a.y);
        out.y = pack_half2(a.z, a.w);
        out.z = pack_half2(b.x, b.y);
        out.w = pack_half2(b.z, b.w);
      }
      *reinterpret_cast<uint4*>(d) = out;
    }
  }
}

// The rotary fused into the tile loads (Extras::rope_cos): launch_rotary's rotation of the pairs (i, R/2 + i), i < R/2,
// of each row, done in shared memory by the thread that copied both halves of the pair, right after its own cp.async
// wait (a thread's completed copies are visible to it) and before the barrier that publishes the tile, so it costs
// no barrier of its own. The work items of a row: the R/16 chunk pairs (chunk c < R/16 with chunk c + R/16), then
// the D/8 - R/8 chunks past the rotary, one each; load_rows_rope and rotate_rows walk the same items in the same
// thread order, so a thread rotates exactly the pairs it loaded.
template <int D, int LD>
__device__ __forceinline__ void load_rows_rope(__half* dst, const void* qkv, long long tok_base, int r0, int rows,
                                               int S, long long row_stride, int col, int R, int tid, int nthr) {
  constexpr int CPR = D / 8;
  const int P = R >> 4, IPR = CPR - P;
  const int total = rows * IPR;
  for (int i = tid; i < total; i += nthr) {
    const int r = i / IPR, c = i % IPR;
    const int tok = r0 + r;
    const bool valid = tok < S;
    const __half* src = static_cast<const __half*>(qkv) + (tok_base + (valid ? tok : 0)) * row_stride + col;
    __half* d = dst + r * LD;
    if (c < P) {
      cp_async16(smem_u32(d + c * 8), src + c * 8, valid);
      cp_async16(smem_u32(d + (c + P) * 8), src + (c + P) * 8, valid);
    } else {
      cp_async16(smem_u32(d + (c + P) * 8), src + (c + P) * 8, valid);
    }
  }
}

template <int D, int LD>
__device__ __forceinline__ void rotate_rows(__half* dst, int r0, int rows, int S, const Extras& ex, int tid,
                                            int nthr) {
  constexpr int CPR = D / 8;
  const int R = ex.rotary_dim, h2 = R >> 1;
  const int P = R >> 4, IPR = CPR - P;
  const int total = rows * IPR;
  for (int i = tid; i < total; i += nthr) {
    const int r = i / IPR, c = i % IPR;
    const int tok = r0 + r;
    if (c >= P || tok >= S) continue;  // past the rotary, or a zero-filled row past the sequence
    __half* a = dst + r * LD + c * 8;
    __half* b = a + h2;
    const uint4 ua = *reinterpret_cast<const uint4*>(a), ub = *reinterpret_cast<const uint4*>(b);
    const float4* cp = reinterpret_cast<const float4*>(ex.rope_cos + static_cast<long long>(tok) * h2 + c * 8);
    const float4* sp = reinterpret_cast<const float4*>(ex.rope_sin + static_cast<long long>(tok) * h2 + c * 8);
    const float4 c0 = __ldg(cp), c1 = __ldg(cp + 1), n0 = __ldg(sp), n1 = __ldg(sp + 1);
    const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
    const float sn[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
    const __half* xa = reinterpret_cast<const __half*>(&ua);
    const __half* xb = reinterpret_cast<const __half*>(&ub);
    uint4 oa, ob;
    __half* ya = reinterpret_cast<__half*>(&oa);
    __half* yb = reinterpret_cast<__half*>(&ob);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (ex.rope_half) {  // launch_rotary's half_math: every product and sum an fp16 operation
        const __half ch = __float2half_rn(cs[j]), nh = __float2half_rn(sn[j]);
        ya[j] = __hsub_rn(__hmul_rn(xa[j], ch), __hmul_rn(xb[j], nh));
        yb[j] = __hadd_rn(__hmul_rn(xb[j], ch), __hmul_rn(xa[j], nh));
      } else {  // fp32, each product and sum rounded, nothing contracted; rounded once to fp16
        const float x1 = __half2float(xa[j]), x2 = __half2float(xb[j]);
        ya[j] = __float2half_rn(__fsub_rn(__fmul_rn(x1, cs[j]), __fmul_rn(x2, sn[j])));
        yb[j] = __float2half_rn(__fadd_rn(__fmul_rn(x2, cs[j]), __fmul_rn(x1, sn[j])));
      }
    }
    *reinterpret_cast<uint4*>(a) = oa;
    *reinterpret_cast<uint4*>(b) = ob;
  }
}

// Key flags of tile j0..j0+n-1 into shared memory; returns whether all of this thread's are VALID.
__device__ __forceinline__ bool load_flags(int* flags, const int32_t* mask, int b, int S, int j0, int n) {
  bool all_valid = true;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int j = j0 + i;
    int f;
    if (j >= S) f = FLAG_OUT;
    else if (mask != nullptr && mask[static_cast<long long>(b) * S + j] == 0) f = FLAG_MASKED;
    else f = FLAG_VALID;
    flags[i] = f;
    all_valid &= (f == FLAG_VALID);
  }
  return all_valid;
}

// Mask values of keys j0..j0+n-1 into shared memory without waiting for them: cp.async (4 bytes each; part of
// the caller's commit group), so a tile's mask travels with its K/V rows instead of stalling the loop. No mask:
// 1 (valid) is stored. Keys >= S are not read (TileFlags marks them FLAG_OUT).
__device__ __forceinline__ void stage_mask(int* dst, const int32_t* mask, int b, int S, int j0, int n, int tid,
                                           int nthr) {
  for (int i = tid; i < n; i += nthr) {
    const int j = j0 + i;
    if (mask != nullptr && j < S) cp_async4(smem_u32(dst + i), mask + static_cast<long long>(b) * S + j);
    else dst[i] = 1;
  }
}

// The flag (FLAG_*) of key j0 + jl of a staged tile: from its mask values in shared memory, or, where the mask's
// unmasked keys are one run [lo, hi) (KeyRange::dense: right or left padding, or no padding at all), from that run
// alone, with the same flags the mask values would give (nothing staged, nothing read).
struct TileFlags {
  const int* raw;
  int j0, S;
  bool dense;
  int lo, hi;
  __device__ __forceinline__ int operator()(int jl) const {
    const int j = j0 + jl;
    if (j >= S) return FLAG_OUT;
    if (dense) return (j >= lo && j < hi) ? FLAG_VALID : FLAG_MASKED;
    return raw[jl] != 0 ? FLAG_VALID : FLAG_MASKED;
  }
};

// ------------------------------------------------------------------------------------------------
// Which key tiles a block must visit when there is a padding mask. One pass over mask[b, :] gives the
// first and last unmasked key. Rows with no unmasked key (all keys masked; with causal: rows i < first)
// must come out uniform over ALL seq keys, so such a block walks every tile; otherwise the tiles before
// `first` and after `last` hold only masked keys, add exactly zero, and are not visited at all.
struct KeyRange {
  int begin, end;  // key tiles [begin, end)
  bool walk_all;   // some row of the block is fully masked
  bool dense;      // the unmasked keys are exactly [first, last] (and there is at least one)
  int first, last;
};

// With a window (>= 0), only tiles within `window` of some row of the block can hold an attended key; a row is fully
// masked when no unmasked key lies within its window (one run of unmasked keys: its ends say; otherwise a scan).
__device__ __forceinline__ KeyRange key_range(const int32_t* mask, int b, int S, int q0, int BQ, int bk,
                                              bool causal, int window, int* red /* 3 ints of shared memory */) {
  const int nkt_all = (S + bk - 1) / bk;
  const int qe = min(q0 + BQ, S) - 1;  // the block's last query row inside the sequence
  KeyRange kr{0, nkt_all, false, false, 0, -1};
  if (causal) kr.end = min(nkt_all, qe / bk + 1);
  if (window >= 0) {
    kr.begin = max(0, q0 - window) / bk;
    if (!causal) kr.end = min(kr.end, min(S - 1, qe + window) / bk + 1);
  }
  if (mask == nullptr) {  // every row attends at least its own key
    kr.dense = true;  // every key valid
    kr.last = S - 1;
    return kr;
  }
  if (threadIdx.x == 0) {
    red[0] = S;
    red[1] = -1;
    red[2] = 0;
  }
  __syncthreads();
  int f = S, l = -1, count = 0;
  const int32_t* mrow = mask + static_cast<long long>(b) * S;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    if (mrow[j] != 0) {
      f = min(f, j);
      l = max(l, j);
      ++count;
    }
  }
  f = __reduce_min_sync(0xffffffffu, f);
  l = __reduce_max_sync(0xffffffffu, l);
  count = __reduce_add_sync(0xffffffffu, count);
  if ((threadIdx.x & 31) == 0) {
    atomicMin(&red[0], f);
    atomicMax(&red[1], l);
    atomicAdd(&red[2], count);
  }
  __syncthreads();
  const int first = red[0], last = red[1];
  kr.first = first;
  kr.last = last;
  kr.dense = last >= first && red[2] == last - first + 1;
  bool rows_live;
  if (window < 0) rows_live = causal ? (q0 >= first) : (first < S);
  else if (last < first) rows_live = false;  // no unmasked key at all
  else if (kr.dense) rows_live = q0 >= (causal ? first : first - window) && qe - window <= last;
  else rows_live = !rows_without_key(mrow, S, q0, qe, causal, window, first, last);
  if (rows_live) {
    kr.begin = window >= 0 ? max(kr.begin, first / bk) : first / bk;
    kr.end = min(kr.end, last / bk + 1);
  } else {
    kr.begin = 0;
    kr.end = nkt_all;
    kr.walk_all = true;
  }
  return kr;
}

// A row's keys in one tile (tile-local indices) where the key range is dense (TileFlags::dense): every mask is an
// interval, so key jl is beyond the sequence when jl >= out, else attended exactly when lo <= jl <= hi (the padding
// range [ft.lo, ft.hi), the window's |key - query| <= window, causality's key <= query). The same verdicts as
// TileFlags + masked_at key by key, with two compares a key instead of the chain of tests.
struct KeySpan {
  int lo, hi, out;
};
__device__ __forceinline__ KeySpan key_span(const TileFlags& ft, int j0, int qi, bool causal, int window) {
  KeySpan k{ft.lo - j0, ft.hi - 1 - j0, ft.S - j0};
  if (window >= 0) {
    const int w = min(window, ft.S);  // |key - query| < S always: a wider window masks nothing more (and cannot overflow)
    k.lo = max(k.lo, qi - w - j0);
    k.hi = min(k.hi, qi + w - j0);
  }
  if (causal) k.hi = min(k.hi, qi - j0);
  return k;
}

// One key tile's online-softmax step for one m16 tile of a warp (rows g and g+8 of this thread):
// s holds the raw scores (fp32 accumulators of Q K^T) and becomes the fp16 P fragments pf; o (the output
// accumulators), the running max m and the thread-partial sums l are rescaled. HALF_SOFTMAX: the FP16 mode
// (scores rounded to fp16 after scaling, max/exp/sum in fp16); else fp32 (hybrid), see `folded` below.
// EXTRA: bh (this head's distance-0 bias entry, or null) is added to the scaled scores before masking, and keys
// further than `window` (>= 0) from the query are masked like causal ones.
template <int NB, int DB, bool HALF_SOFTMAX, bool EXTRA>
__device__ __forceinline__ void softmax_tile(float (&s)[NB][4], float (&o)[DB][4], float (&m_f)[2], float (&l_f)[2],
                                             __half (&m_h)[2], __half (&l_h)[2], uint32_t (&pf)[NB / 2][4],
                                             bool need_mask, const TileFlags& ft, int j0, int qm0, int g, int t4,
                                             bool causal, bool folded, float sl2, float mult, float masked_val,
                                             float scale, const float* bh, int S, int window, float cap,
                                             bool intervals) {
  // intervals (EXTRA, a dense key range): a row's masks as one span of keys (key_span), not key by key
  intervals = intervals && ft.dense;
  // key j0 + jl masked for query qi by causality or the window (the padding flags are the caller's)
  auto masked_at = [&](int jl, int qi) {
    if constexpr (EXTRA) return (causal && j0 + jl > qi) || (window >= 0 && abs(j0 + jl - qi) > window);
    else return causal && j0 + jl > qi;
  };
  if constexpr (!HALF_SOFTMAX) {
    // ---- fp32 softmax
    if (EXTRA && (bh != nullptr || cap > 0.f)) {
      // the contract's order: scores scaled (one fp32 rounding), soft-capped, then the bias added (another); no fma
      // contraction. The kernel then runs unfolded: mult = log2(e), see the kernel.
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jl = i * 8 + 2 * t4 + (e & 1);
          const int qi = qm0 + g + (e >> 1) * 8;
          const float x = capped(s[i][e], scale, cap);
          s[i][e] = bh != nullptr ? __fadd_rn(x, bias_at(bh, j0 + jl - qi, S)) : x;
        }
    } else if (!folded) {
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] *= sl2;
    }
    if (EXTRA && need_mask && intervals) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const KeySpan k = key_span(ft, j0, qm0 + g + r * 8, causal, window);
#pragma unroll
        for (int i = 0; i < NB; ++i)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int jl = i * 8 + 2 * t4 + c;
            if (jl >= k.out) s[i][2 * r + c] = -INFINITY;
            else if (jl < k.lo || jl > k.hi) s[i][2 * r + c] = masked_val;
          }
      }
    } else if (need_mask) {
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jl = i * 8 + 2 * t4 + (e & 1);
          const int qi = qm0 + g + (e >> 1) * 8;
          const int f = ft(jl);
          if (f == FLAG_OUT) s[i][e] = -INFINITY;
          else if (f == FLAG_MASKED || masked_at(jl, qi)) s[i][e] = masked_val;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < NB; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_f[r], mx);
      // m_new is finite: the first visited tile holds an in-range (unmasked, or all-masked) key
      const float alpha = fast_exp2((m_f[r] - m_new) * mult);
      m_f[r] = m_new;
      const float mb = m_new * mult;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const float p0 = fast_exp2(fmaf(s[i][2 * r], mult, -mb));
        const float p1 = fast_exp2(fmaf(s[i][2 * r + 1], mult, -mb));
        s[i][2 * r] = p0;
        s[i][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      l_f[r] = l_f[r] * alpha + sum;
#pragma unroll
      for (int i = 0; i < DB; ++i) {
        o[i][2 * r] *= alpha;
        o[i][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int kc2 = 0; kc2 < BK / 16; ++kc2) {
      pf[kc2][0] = pack_half2(s[2 * kc2][0], s[2 * kc2][1]);
      pf[kc2][1] = pack_half2(s[2 * kc2][2], s[2 * kc2][3]);
      pf[kc2][2] = pack_half2(s[2 * kc2 + 1][0], s[2 * kc2 + 1][1]);
      pf[kc2][3] = pack_half2(s[2 * kc2 + 1][2], s[2 * kc2 + 1][3]);
    }
  } else {
    // ---- fp16 softmax: scores rounded to fp16 after scaling (and soft-capping, in fp32); max, exp, sum in fp16
    __half2 sh[NB][2];  // [i][r]: the pair of row r
    if (EXTRA && cap > 0.f) {
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          sh[i][r] = __floats2half2_rn(capped(s[i][2 * r], scale, cap), capped(s[i][2 * r + 1], scale, cap));
    } else {
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          sh[i][r] = __floats2half2_rn(s[i][2 * r] * scale, s[i][2 * r + 1] * scale);
    }
    if (EXTRA && bh != nullptr) {  // the bias rounded to fp16 and added in fp16, as the contract says
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int d = j0 + i * 8 + 2 * t4 - (qm0 + g + r * 8);
          sh[i][r] = __hadd2(sh[i][r], __floats2half2_rn(bias_at(bh, d, S), bias_at(bh, d + 1, S)));
        }
    }
    if (EXTRA && need_mask && intervals) {
      const __half hmin = __ushort_as_half(0xFBFFu);   // -65504: float32 min saturated to fp16
      const __half hninf = __ushort_as_half(0xFC00u);  // -inf
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const KeySpan k = key_span(ft, j0, qm0 + g + r * 8, causal, window);
#pragma unroll
        for (int i = 0; i < NB; ++i) {
          const int jl = i * 8 + 2 * t4;
          __half lo = __low2half(sh[i][r]), hi = __high2half(sh[i][r]);
          if (jl >= k.out) lo = hninf;
          else if (jl < k.lo || jl > k.hi) lo = hmin;
          if (jl + 1 >= k.out) hi = hninf;
          else if (jl + 1 < k.lo || jl + 1 > k.hi) hi = hmin;
          sh[i][r] = __halves2half2(lo, hi);
        }
      }
    } else if (need_mask) {
      const __half hmin = __ushort_as_half(0xFBFFu);   // -65504: float32 min saturated to fp16
      const __half hninf = __ushort_as_half(0xFC00u);  // -inf
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          __half lo = __low2half(sh[i][r]), hi = __high2half(sh[i][r]);
          const int qi = qm0 + g + r * 8;
          const int jl = i * 8 + 2 * t4;
          const int fa = ft(jl), fb = ft(jl + 1);
          if (fa == FLAG_OUT) lo = hninf;
          else if (fa == FLAG_MASKED || masked_at(jl, qi)) lo = hmin;
          if (fb == FLAG_OUT) hi = hninf;
          else if (fb == FLAG_MASKED || masked_at(jl + 1, qi)) hi = hmin;
          sh[i][r] = __halves2half2(lo, hi);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      __half2 mx2 = sh[0][r];
#pragma unroll
      for (int i = 1; i < NB; ++i) mx2 = __hmax2(mx2, sh[i][r]);
      __half mx = __hmax(__low2half(mx2), __high2half(mx2));
      mx = __hmax(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = __hmax(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const __half m_new = __hmax(m_h[r], mx);
      const __half alpha = hexp(__hsub(m_h[r], m_new));  // exp(-inf) = 0 on the first tile
      m_h[r] = m_new;
      const __half2 m2 = __half2half2(m_new);
      __half2 sum2 = __float2half2_rn(0.f);
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        sh[i][r] = h2exp(__hsub2(sh[i][r], m2));
        sum2 = __hadd2(sum2, sh[i][r]);
      }
      l_h[r] = __hadd(__hmul(l_h[r], alpha), __hadd(__low2half(sum2), __high2half(sum2)));
      const float af = __half2float(alpha);
#pragma unroll
      for (int i = 0; i < DB; ++i) {
        o[i][2 * r] *= af;
        o[i][2 * r + 1] *= af;
      }
    }
#pragma unroll
    for (int kc2 = 0; kc2 < BK / 16; ++kc2) {
      pf[kc2][0] = as_u32(sh[2 * kc2][0]);
      pf[kc2][1] = as_u32(sh[2 * kc2][1]);
      pf[kc2][2] = as_u32(sh[2 * kc2 + 1][0]);
      pf[kc2][3] = as_u32(sh[2 * kc2 + 1][1]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Tensor-core kernel. Each warp owns MT * 16 query rows (MT m16 tiles share every K/V fragment it loads
// from shared memory). HALF_SOFTMAX: Precision::FP16 (scores and softmax in fp16); else HYBRID.
// KS key groups (1 or 2; 2 only with MT = 1 and the fp32 softmax): the block's warps form KS groups over the
// same query rows; group k walks its own share of the key tiles with its own K/V ring and barrier, and
// group 0 merges the other group's running max, sum and output at the end (the online softmax's own rescaling).
// Used where the grid has fewer blocks than the GPU has multiprocessors: each block's chain of key tiles,
// its time, halves.
// EXTRA: with a score bias by distance and/or a sliding window (ex); window tiles outside every row's reach are
// skipped like the causal ones. Never with SHARE_KV.
template <int D, int MT, bool HALF_SOFTMAX, int KS, bool SHARE_KV = false, bool EXTRA = false, bool ROPE = false>
__global__ void __launch_bounds__(128 * KS, MT == 2 ? 2 : (SHARE_KV && D <= 64 ? 3 : 1))
    attention_tc_kernel(const void* __restrict__ qkv, bool in_half, const int32_t* __restrict__ mask,
                        void* __restrict__ y, bool out_half, int H, int Hkv, int S, float scale, bool causal,
                        int nqt, int nqb, Extras ex) {
  static_assert(KS == 1 || (KS == 2 && MT == 1 && !HALF_SOFTMAX), "key groups: MT = 1, fp32 softmax");
  static_assert(!SHARE_KV || KS == 1, "query tiles sharing K/V: one key group");
  static_assert(!SHARE_KV || !EXTRA, "query tiles sharing K/V: no bias or window");
  static_assert(!SHARE_KV || !ROPE, "query tiles sharing K/V: no rotary");
  if constexpr (!SHARE_KV) nqb = 1;
  constexpr int LD = D + 8;  // +16 bytes per row: the 8 rows of an ldmatrix fall in distinct banks
  constexpr int KC = D / 16;  // k-steps of QK^T
  constexpr int NB = BK / 8;  // 8-key blocks of a score tile
  constexpr int DB = D / 8;   // 8-column blocks of the output
  constexpr int WR = 16 * MT;  // query rows per warp
  constexpr int NST = ring_depth(D);
  const int gwarps = (blockDim.x >> 5) / KS;  // warps of a key group
  const int BQ = WR * gwarps;
  const int warp_all = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = warp_all / gwarps, warp = warp_all % gwarps;  // key group; warp within it (its query rows)
  const int gthreads = 32 * gwarps, gtid = threadIdx.x - grp * gthreads;
  const int g = lane >> 2, t4 = lane & 3;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* Qs = reinterpret_cast<__half*>(smem_raw);
  __half* Ks = Qs + nqb * BQ * LD + grp * (2 * NST * BK * LD);  // this group's [NST][BK][LD]
  __half* Vs = Ks + NST * BK * LD;                        // [NST][BK][LD]
  // [NST][BK] mask values of this group's staged tiles, after every group's K/V
  int* mraw = reinterpret_cast<int*>(Qs + nqb * BQ * LD + KS * (2 * NST * BK * LD)) + grp * (NST * BK);
  __shared__ int red[3];
  // the group's barrier: the whole block, or named barrier 1 + grp over the group's threads (immediate ids)
  auto group_sync = [&] {
    if constexpr (KS == 1) {
      __syncthreads();
    } else if (grp == 0) {
      asm volatile("bar.sync 1, %0;\n" ::"r"(gthreads) : "memory");
    } else {
      asm volatile("bar.sync 2, %0;\n" ::"r"(gthreads) : "memory");
    }
  };

  // nqb query tiles a block (nqb > 1: no causal mask, KS = 1, and every key tile fits the ring at once, so the
  // K/V tiles are staged once and every query tile of the block reads them; the launcher checks all three).
  const int nqg = (nqt + nqb - 1) / nqb;  // blocks per (batch, head)
  const int bh = blockIdx.x / nqg;
  const int qt0 = (nqg - 1 - static_cast<int>(blockIdx.x % nqg)) * nqb;  // longest (causal) tiles first
  const int nq_here = SHARE_KV ? min(nqb, nqt - qt0) : 1;  // a constant 1 keeps the usual kernel as it was
  const int b = bh / H, h = bh % H;
  const long long HD = static_cast<long long>(H) * D;
  // grouped-query attention: query head h reads K/V head h / (H / Hkv), at its columns of the K and V parts
  const long long row_stride = HD + 2LL * Hkv * D;
  const long long k_col = HD + static_cast<long long>(h / (H / Hkv)) * D;
  const long long v_col = k_col + static_cast<long long>(Hkv) * D;
  const long long tok_base = static_cast<long long>(b) * S;
  // a constant -1 and null without EXTRA: the usual kernel compiles as before
  const int window = EXTRA ? ex.window : -1;
  const float* hbias = EXTRA && ex.bias != nullptr ? ex.bias + static_cast<long long>(h) * ex.bias_stride : nullptr;
  const float cap = EXTRA ? ex.softcap : 0.f;

  if constexpr (ROPE)  // (the launcher allows it with fp16 qkv only)
    load_rows_rope<D, LD>(Qs, qkv, tok_base, qt0 * BQ, nq_here * BQ, S, row_stride, h * D, ex.rotary_dim,
                          threadIdx.x, blockDim.x);
  else
    load_rows_f16<D, LD>(Qs, qkv, in_half, tok_base, qt0 * BQ, nq_here * BQ, S, row_stride, h * D, threadIdx.x,
                         blockDim.x);
  // (with nqb > 1 there is no causal mask and no window, and the range does not depend on the query rows)
  const KeyRange kr = key_range(mask, b, S, qt0 * BQ, BQ, BK, causal, window, red);
  // This group's key tiles [tb, te): group 0 the first ceil(n / KS) of the block's n, group 1 the rest.
  int tb = kr.begin, te = kr.end;
  if constexpr (KS == 2) {
    const int split = kr.begin + (kr.end - kr.begin + 1) / 2;
    if (grp == 0) te = split;
    else tb = split;
  }
  // Key tile `tile` into ring slot `slot`: K and V rows and the mask values, all asynchronous.
  auto stage = [&](int slot, int tile) {
    const int j = tile * BK;
    if constexpr (ROPE)
      load_rows_rope<D, LD>(Ks + slot * BK * LD, qkv, tok_base, j, BK, S, row_stride, static_cast<int>(k_col),
                            ex.rotary_dim, gtid, gthreads);
    else
      load_rows_f16<D, LD>(Ks + slot * BK * LD, qkv, in_half, tok_base, j, BK, S, row_stride,
                           static_cast<int>(k_col), gtid, gthreads);
    load_rows_f16<D, LD>(Vs + slot * BK * LD, qkv, in_half, tok_base, j, BK, S, row_stride, static_cast<int>(v_col),
                         gtid, gthreads);
    if (!kr.dense) stage_mask(mraw + slot * BK, mask, b, S, j, BK, gtid, gthreads);
  };
  // Prologue: tiles tb .. tb+NST-2 in flight (one commit group each; this thread's part of Q travels in the first).
#pragma unroll
  for (int st = 0; st < NST - 1; ++st) {
    if (tb + st < te) stage(st, tb + st);
    cp_async_commit();
  }
  if constexpr (KS > 1) {  // Q is read by every group: all of it landed and visible before any group starts
    cp_async_wait<NST - 2>();
    if constexpr (ROPE) rotate_rows<D, LD>(Qs, qt0 * BQ, nq_here * BQ, S, ex, threadIdx.x, blockDim.x);
    __syncthreads();
  }

  // Hybrid: exp(scale*x - max) = exp2(mult*x - mult*max'), with mult = scale*log2(e) folded into one
  // FFMA per score (max' taken on raw scores, valid for mult > 0). A masked raw score is MASKED_RAW = -2^64:
  // a power of two, so MASKED_RAW*mult is exact and a fully masked row gets exp2(0) = 1 for every key
  // (uniform, as the contract's float32 minimum gives); for 2^-40 <= mult <= 2^40 it lies > 2^24 below
  // any real score, so a masked key's weight is exactly 0 beside an unmasked one. Any other scale: scores
  // are multiplied first (mult becomes 1, masked -2^100), the contract's arithmetic step by step. With a score bias
  // the scores are scaled and biased first (softmax_tile), so mult = log2(e) and masked -2^100 (a power of two:
  // exact times mult, far below any scaled and biased score). Soft-capped scores likewise (|score| < cap).
  const float sl2 = scale * 1.4426950408889634f;
  const bool biased = hbias != nullptr || cap > 0.f;
  const bool folded = !biased && sl2 >= 0x1p-40f && sl2 <= 0x1p40f;
  const float mult = biased ? 1.4426950408889634f : folded ? sl2 : 1.f;
  const float masked_val = folded ? -0x1p64f : -0x1p100f;

  for (int qi = 0; qi < nq_here; ++qi) {  // the block's query tiles (one unless nqb > 1)
    const int q0 = (qt0 + qi) * BQ;
    const int qw0 = q0 + warp * WR;  // first query row of this warp
    uint32_t qf[MT][KC][4];
    float o[MT][DB][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < DB; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    // running max and (thread-partial) sum of rows g and g+8 of each m-tile
    float m_f[MT][2], l_f[MT][2];
    __half m_h[MT][2], l_h[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        m_f[mt][r] = -INFINITY;
        l_f[mt][r] = 0.f;
        m_h[mt][r] = __ushort_as_half(0xFC00u);  // -inf
        l_h[mt][r] = __float2half(0.f);
      }

    for (int it = tb; it < te; ++it) {
      if (qi == 0) {  // later query tiles find every key tile staged and visible (nqb > 1: see above)
        // Groups committed so far: NST - 1 + (it - tb); tile `it` is group (it - tb), so NST - 2 may pend.
        cp_async_wait<NST - 2>();
        if constexpr (ROPE) {  // this thread's pairs of tile `it` (and, first, of Q) rotated before the barrier publishes them
          if (KS == 1 && it == tb) rotate_rows<D, LD>(Qs, qt0 * BQ, nq_here * BQ, S, ex, threadIdx.x, blockDim.x);
          rotate_rows<D, LD>(Ks + ((it - tb) % NST) * BK * LD, it * BK, BK, S, ex, gtid, gthreads);
        }
        group_sync();  // tile `it` is visible to the group; its warps are done with the slot computed last iteration
        const int nxt = it + NST - 1;  // into that slot: (nxt - tb) % NST == (it - 1 - tb) % NST
        if (nxt < te) stage((nxt - tb) % NST, nxt);
        cp_async_commit();
      }
      const int buf = (it - tb) % NST;

      if (it == tb) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kc = 0; kc < KC; ++kc) {
            const __half* p = Qs + (qi * BQ + warp * WR + mt * 16 + (lane & 15)) * LD + kc * 16 + (lane >> 4) * 8;
            ldmatrix_x4(qf[mt][kc], smem_u32(p));
          }
      }
      const int j0 = it * BK;
      const TileFlags ft{mraw + buf * BK, j0, S, kr.dense, kr.first, kr.last + 1};
      const int f0 = ft(lane), f1 = ft(lane + 32);
      const bool tile_all_valid = __all_sync(0xffffffffu, f0 == FLAG_VALID && f1 == FLAG_VALID);
      const bool tile_any_valid = __any_sync(0xffffffffu, f0 == FLAG_VALID || f1 == FLAG_VALID);
      // A tile adds exactly zero to this warp's rows when it is wholly above their causal diagonal, wholly outside
      // their windows or holds no unmasked key, unless fully masked rows need every key (walk_all).
      bool skip = !kr.walk_all && ((causal && j0 > qw0 + WR - 1) || !tile_any_valid);
      if constexpr (EXTRA)  // (kept apart: the usual kernel's code, and its registers, stay as they were)
        skip = skip || (!kr.walk_all && window >= 0 && (j0 > qw0 + WR - 1 + window || j0 + BK - 1 < qw0 - window));
      if (!skip) {
        const __half* Kt = Ks + buf * BK * LD;
        const __half* Vt = Vs + buf * BK * LD;
        // ---- S = Q K^T (fp32 accumulation); each K fragment feeds MT m-tiles
        float s[MT][NB][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int i = 0; i < NB; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
          for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
            uint32_t kb[4];
            const int m = lane >> 3;
            const __half* p = Kt + (nb2 * 16 + (m >> 1) * 8 + (lane & 7)) * LD + kc * 16 + (m & 1) * 8;
            ldmatrix_x4(kb, smem_u32(p));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              mma_16816(s[mt][2 * nb2], qf[mt][kc], kb[0], kb[1]);
              mma_16816(s[mt][2 * nb2 + 1], qf[mt][kc], kb[2], kb[3]);
            }
          }
        }
        bool need_mask = !tile_all_valid || (causal && j0 + BK - 1 > qw0);
        if constexpr (EXTRA)
          need_mask = need_mask || (window >= 0 && (qw0 + WR - 1 - j0 > window || j0 + BK - 1 - qw0 > window));
        uint32_t pf[MT][BK / 16][4];  // P as mma A-fragments (fp16)

#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int qm0 = qw0 + mt * 16;  // first row of this m-tile
          softmax_tile<NB, DB, HALF_SOFTMAX, EXTRA>(s[mt], o[mt], m_f[mt], l_f[mt], m_h[mt], l_h[mt], pf[mt],
                                                    need_mask, ft, j0, qm0, g, t4, causal, folded, sl2, mult,
                                                    masked_val, scale, hbias, S, window, cap, ex.mask_intervals);
        }
        // ---- O += P V (fp16 operands, fp32 accumulation); each V fragment feeds MT m-tiles
#pragma unroll
        for (int kc2 = 0; kc2 < BK / 16; ++kc2) {
#pragma unroll
          for (int db2 = 0; db2 < DB / 2; ++db2) {
            uint32_t vb[4];
            const int m = lane >> 3;
            const __half* p = Vt + (kc2 * 16 + (m & 1) * 8 + (lane & 7)) * LD + db2 * 16 + (m >> 1) * 8;
            ldmatrix_x4_trans(vb, smem_u32(p));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              mma_16816(o[mt][2 * db2], pf[mt][kc2], vb[0], vb[1]);
              mma_16816(o[mt][2 * db2 + 1], pf[mt][kc2], vb[2], vb[3]);
            }
          }
        }
      }
    }

    if constexpr (KS == 2) {
      // ---- merge: group 1 leaves its running max, partial sums and output in a scratch area of its own (after
      // the mask values; no ldmatrix ever reads it); group 0 rescales both to the larger max, as the online
      // softmax does between tiles. A group that visited nothing for a warp has max -inf and weighs exactly 0 (group
      // 0 too, with a window whose keys lie in group 1's tiles); a row of the sequence has an attended key in one of
      // the two groups' visited tiles (or walk_all), so at least one max is finite.
      // (The first version put the scratch over group 0's idle K ring, after the same block-wide barrier: correct
      // by the barrier, and the SASS has the stores after it, but compute-sanitizer racecheck reported hazards
      // against that ring's ldmatrix reads. A separate area costs 18 KB at D = 64 and removes the
      // question.)
      constexpr int PW = DB * 4 + 4;  // floats a thread leaves
      __syncthreads();  // group 0 is done with its loop (group 1's values are final)
      float* part = reinterpret_cast<float*>(reinterpret_cast<int*>(Qs + BQ * LD + KS * (2 * NST * BK * LD)) +
                                             KS * (NST * BK)) + (warp * 32 + lane) * PW;
      if (grp == 1) {
#pragma unroll
        for (int i = 0; i < DB; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[i * 4 + e] = o[0][i][e];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          part[DB * 4 + r] = m_f[0][r];
          part[DB * 4 + 2 + r] = l_f[0][r];
        }
      }
      __syncthreads();
      if (grp == 1) return;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m1 = part[DB * 4 + r], l1 = part[DB * 4 + 2 + r];
        const float m = fmaxf(m_f[0][r], m1);
        const float a0 = fast_exp2((m_f[0][r] - m) * mult), a1 = fast_exp2((m1 - m) * mult);
        l_f[0][r] = l_f[0][r] * a0 + l1 * a1;
#pragma unroll
        for (int i = 0; i < DB; ++i) {
          o[0][i][2 * r] = o[0][i][2 * r] * a0 + part[i * 4 + 2 * r] * a1;
          o[0][i][2 * r + 1] = o[0][i][2 * r + 1] * a0 + part[i * 4 + 2 * r + 1] * a1;
        }
      }
    }

    // ---- epilogue: full row sums across the quad, divide, store
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float inv;
        if constexpr (HALF_SOFTMAX) {
          __half l = l_h[mt][r];
          l = __hadd(l, __shfl_xor_sync(0xffffffffu, l, 1));
          l = __hadd(l, __shfl_xor_sync(0xffffffffu, l, 2));
          inv = 1.f / __half2float(l);
        } else {
          float l = l_f[mt][r];
          l += __shfl_xor_sync(0xffffffffu, l, 1);
          l += __shfl_xor_sync(0xffffffffu, l, 2);
          inv = 1.f / l;
        }
        const int q = qw0 + mt * 16 + g + r * 8;
        if (q >= S) continue;
        const long long base = (tok_base + q) * HD + h * D + 2 * t4;
#pragma unroll
        for (int i = 0; i < DB; ++i) {
          const float a = o[mt][i][2 * r] * inv, c = o[mt][i][2 * r + 1] * inv;
          if (out_half) {
            *reinterpret_cast<__half2*>(static_cast<__half*>(y) + base + i * 8) = __floats2half2_rn(a, c);
          } else {
            *reinterpret_cast<float2*>(static_cast<float*>(y) + base + i * 8) = make_float2(a, c);
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// FP32 kernel: 4 warps x 8 query rows, 32-key tiles, all arithmetic fp32 FFMA, accurate expf.
constexpr int F_ROWS = 8;   // query rows per warp
constexpr int F_BK = 32;    // keys per tile (one per lane)
constexpr int F_WARPS = 4;

// EXTRA: with a score bias by distance (added after the scale, before masking) and/or a window (ex), as the
// tensor-core kernel.
template <int D, bool EXTRA>
__global__ void __launch_bounds__(128) attention_f32_kernel(const void* __restrict__ qkv, bool in_half,
                                                            const int32_t* __restrict__ mask,
                                                            void* __restrict__ y, bool out_half, int H, int Hkv,
                                                            int S, float scale, bool causal, int nqt, Extras ex) {
  constexpr int BQ = F_WARPS * F_ROWS;
  constexpr int KD = (D + 31) / 32;  // output columns per lane (the last partial where D % 32 != 0: 80)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);  // [BQ][D]
  float* Ks = Qs + BQ * D;                         // [F_BK][D+1]: lane j reads row j without conflicts
  float* Vs = Ks + F_BK * (D + 1);                 // [F_BK][D]
  float* Ps = Vs + F_BK * D;                       // [F_WARPS][F_ROWS][F_BK]
  int* flags = reinterpret_cast<int*>(Ps + F_WARPS * F_ROWS * F_BK);  // [F_BK]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int bh = blockIdx.x / nqt;
  const int qt = nqt - 1 - static_cast<int>(blockIdx.x % nqt);
  const int b = bh / H, h = bh % H;
  const int q0 = qt * BQ;
  const long long HD = static_cast<long long>(H) * D;
  // grouped-query attention: query head h reads K/V head h / (H / Hkv)
  const long long row_stride = HD + 2LL * Hkv * D;
  const long long k_col = HD + static_cast<long long>(h / (H / Hkv)) * D;
  const long long v_col = k_col + static_cast<long long>(Hkv) * D;
  const long long tok_base = static_cast<long long>(b) * S;

  auto load_elem = [&](long long off) -> float {
    return in_half ? __half2float(static_cast<const __half*>(qkv)[off]) : static_cast<const float*>(qkv)[off];
  };
  for (int i = threadIdx.x; i < BQ * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    const int tok = q0 + r;
    Qs[i] = tok < S ? load_elem((tok_base + tok) * row_stride + h * D + c) : 0.f;
  }

  const int nkt_all = (S + F_BK - 1) / F_BK;
  const int qe = min(q0 + BQ, S) - 1;
  const int window = EXTRA ? ex.window : -1;  // constants without EXTRA: the usual kernel compiles as before
  const float* hbias = EXTRA && ex.bias != nullptr ? ex.bias + static_cast<long long>(h) * ex.bias_stride : nullptr;
  const float cap = EXTRA ? ex.softcap : 0.f;
  int kt0 = 0, nkt = nkt_all;  // key tiles [kt0, nkt)
  if (causal) nkt = min(nkt_all, qe / F_BK + 1);
  if (window >= 0) {
    kt0 = max(0, q0 - window) / F_BK;
    if (!causal) nkt = min(nkt, min(S - 1, qe + window) / F_BK + 1);
    // fully masked rows (no unmasked key within the window) are uniform over all keys: every tile
    if (mask != nullptr &&
        rows_without_key(mask + static_cast<long long>(b) * S, S, q0, qe, causal, window, 0, S - 1)) {
      kt0 = 0;
      nkt = nkt_all;
    }
  } else if (causal && mask != nullptr && nkt < nkt_all && block_has_fully_masked_rows(mask, b, S, q0)) {
    nkt = nkt_all;
  }

  float o[F_ROWS][KD], m[F_ROWS], l[F_ROWS];
#pragma unroll
  for (int r = 0; r < F_ROWS; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int k = 0; k < KD; ++k) o[r][k] = 0.f;
  }
  const float* Qw = Qs + warp * F_ROWS * D;
  float* Pw = Ps + warp * F_ROWS * F_BK;

  for (int it = kt0; it < nkt; ++it) {
    const int j0 = it * F_BK;
    __syncthreads();  // previous tile fully consumed (and Qs written, on the first pass)
    for (int i = threadIdx.x; i < F_BK * D; i += blockDim.x) {
      const int r = i / D, c = i % D;
      const int tok = j0 + r;
      const bool valid = tok < S;
      const long long off = (tok_base + (valid ? tok : 0)) * row_stride + c;
      Ks[r * (D + 1) + c] = valid ? load_elem(off + k_col) : 0.f;
      Vs[r * D + c] = valid ? load_elem(off + v_col) : 0.f;
    }
    load_flags(flags, mask, b, S, j0, F_BK);
    __syncthreads();

    // scores: lane = key j0 + lane, F_ROWS query rows
    float s[F_ROWS];
#pragma unroll
    for (int r = 0; r < F_ROWS; ++r) s[r] = 0.f;
    const float* krow = Ks + lane * (D + 1);
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
      const float k0 = krow[d], k1 = krow[d + 1], k2 = krow[d + 2], k3 = krow[d + 3];
#pragma unroll
      for (int r = 0; r < F_ROWS; ++r) {
        const float4 q = *reinterpret_cast<const float4*>(Qw + r * D + d);  // broadcast
        s[r] = fmaf(q.x, k0, s[r]);
        s[r] = fmaf(q.y, k1, s[r]);
        s[r] = fmaf(q.z, k2, s[r]);
        s[r] = fmaf(q.w, k3, s[r]);
      }
    }
    const int f = flags[lane];
#pragma unroll
    for (int r = 0; r < F_ROWS; ++r) {
      const int qi = q0 + warp * F_ROWS + r;
      float x = EXTRA ? capped(s[r], scale, cap) : s[r] * scale;
      if (hbias != nullptr) x = __fadd_rn(x, bias_at(hbias, j0 + lane - qi, S));  // after the scale's rounding, unfused
      if (f == FLAG_OUT) x = -INFINITY;
      else if (f == FLAG_MASKED || (causal && j0 + lane > qi) || (window >= 0 && abs(j0 + lane - qi) > window))
        x = -FLT_MAX;
      float mx = x;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[r], mx);
      const float alpha = expf(m[r] - m_new);  // 0 on the first tile
      m[r] = m_new;
      const float p = expf(x - m_new);
      l[r] = l[r] * alpha + p;  // lane-partial; summed across the warp at the end
#pragma unroll
      for (int k = 0; k < KD; ++k) o[r][k] *= alpha;
      Pw[r * F_BK + lane] = p;
    }
    __syncwarp();
#pragma unroll 2
    for (int j = 0; j < F_BK; j += 4) {
      float v[4][KD];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int k = 0; k < KD; ++k) v[jj][k] = lane + 32 * k < D ? Vs[(j + jj) * D + lane + 32 * k] : 0.f;
#pragma unroll
      for (int r = 0; r < F_ROWS; ++r) {
        const float4 p = *reinterpret_cast<const float4*>(Pw + r * F_BK + j);
#pragma unroll
        for (int k = 0; k < KD; ++k) {
          o[r][k] = fmaf(p.x, v[0][k], o[r][k]);
          o[r][k] = fmaf(p.y, v[1][k], o[r][k]);
          o[r][k] = fmaf(p.z, v[2][k], o[r][k]);
          o[r][k] = fmaf(p.w, v[3][k], o[r][k]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < F_ROWS; ++r) {
    const float lt = dev::warp_sum(l[r]);
    const int q = q0 + warp * F_ROWS + r;
    if (q >= S) continue;
    const long long base = (tok_base + q) * HD + h * D;
#pragma unroll
    for (int k = 0; k < KD; ++k) {
      if (lane + 32 * k >= D) continue;
      const float val = o[r][k] / lt;
      if (out_half) static_cast<__half*>(y)[base + lane + 32 * k] = __float2half_rn(val);
      else static_cast<float*>(y)[base + lane + 32 * k] = val;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The dynamic shared-memory limit is a property of the kernel function, shared by every thread and context of
// the process. Setting it per launch races: a context launching a small configuration could lower the limit
// between another context's setting and its launch, whose launch then fails with cudaErrorInvalidValue (seen on
// an H200 under the serve load test). So the limit only ever rises, under one lock per process.
template <typename Kernel>
void ensure_dynamic_smem(Kernel kern, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> raised;  // (device, kernel) -> limit set so far
  int dev = 0;
  TRTRUN_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  size_t& cur = raised[{dev, reinterpret_cast<const void*>(kern)}];
  if (smem <= cur) return;
  TRTRUN_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  cur = smem;
}

// ------------------------------------------------------------------------------------------------
size_t tc_smem_bytes(int D, int BQ, int KS = 1, int nqb = 1) {
  const int nst = ring_depth(D);
  // Q (nqb query tiles), each key group's K/V ring, each group's staged mask values; with two groups, the merge
  // scratch (D/2 + 4 floats a thread of one group of BQ/16 warps)
  const size_t merge = KS > 1 ? static_cast<size_t>(BQ / 16) * 32 * (D / 2 + 4) * sizeof(float) : 0;
  return static_cast<size_t>(nqb * BQ + KS * 2 * nst * BK) * (D + 8) * sizeof(__half) +
         static_cast<size_t>(KS) * nst * BK * sizeof(int) + merge;
}

int sm_count() {
  int dev = 0, n = 0;
  TRTRUN_CUDA_CHECK(cudaGetDevice(&dev));
  TRTRUN_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// Whether a block may walk several query tiles over K/V tiles staged once (nqb > 1): no causal mask (the key
// range would depend on the query rows), no score bias or window (no such instantiation), one key group, and every
// key tile of the sequence in the ring at once.
bool can_share_kv(int D, int S, bool causal, int KS, bool extra) {
  return !causal && !extra && KS == 1 && (S + BK - 1) / BK <= ring_depth(D) - 1;
}

// nw warps per key group, KS key groups a block, nqb query tiles a block; EXTRA: the kernel with a score bias and/or
// a window (ex).
template <int D, int MT, bool HALF_SOFTMAX, int KS, bool EXTRA, bool ROPE = false>
void launch_tc_cfg(int nw, const void* qkv, bool in_half, const int32_t* mask, void* y, bool out_half, int B, int S,
                   int H, int Hkv, float scale, bool causal, cudaStream_t stream, Extras ex, int nqb = 1) {
  const int BQ = 16 * MT * nw;
  const int nqt = (S + BQ - 1) / BQ;
  require(nqb == 1 || can_share_kv(D, S, causal, KS, EXTRA || ROPE), "attention",
          "internal: query tiles sharing K/V not allowed here");
  nqb = std::max(1, std::min(nqb, nqt));
  const int nqg = (nqt + nqb - 1) / nqb;
  const long long blocks = static_cast<long long>(B) * H * nqg;
  require(blocks <= 0x7fffffffLL, "attention", "batch * heads * query tiles too large");
  const size_t smem = tc_smem_bytes(D, BQ, KS, nqb);
  auto kern = attention_tc_kernel<D, MT, HALF_SOFTMAX, KS, false, EXTRA, ROPE>;
  if constexpr (!EXTRA && !ROPE) {
    if (nqb > 1) kern = attention_tc_kernel<D, MT, HALF_SOFTMAX, KS, KS == 1>;
  }
  ensure_dynamic_smem(kern, smem);
  kern<<<static_cast<unsigned>(blocks), 32 * nw * KS, smem, stream>>>(qkv, in_half, mask, y, out_half, H, Hkv, S,
                                                                       scale, causal, nqt, nqb, ex);
  TRTRUN_LAUNCH_CHECK();
}

// Resident blocks per multiprocessor of one configuration, nqb query tiles a block (cached per device and
// configuration); EXTRA: of the kernel with a score bias or window (its registers may differ).
template <int D, int MT, bool HALF_SOFTMAX, bool EXTRA = false, bool ROPE = false>
int resident_blocks(int nw, int nqb = 1) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int>, int> cache;
  int dev = 0;
  TRTRUN_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({dev, nw, nqb});
  if (it != cache.end()) return it->second;
  auto kern = attention_tc_kernel<D, MT, HALF_SOFTMAX, 1, false, EXTRA, ROPE>;
  if constexpr (!EXTRA && !ROPE) {
    if (nqb > 1) kern = attention_tc_kernel<D, MT, HALF_SOFTMAX, 1, true>;
  }
  const size_t smem = tc_smem_bytes(D, 16 * MT * nw, 1, nqb);
  ensure_dynamic_smem(kern, smem);
  int n = 0;
  TRTRUN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, 32 * nw, smem));
  n = std::max(n, 1);
  cache[{dev, nw, nqb}] = n;
  return n;
}

// The tensor-core kernel's launch configuration: 16*mt rows a warp, nw warps a key group, ks key groups a block,
// nqb query tiles a block.
struct TcConfig {
  int mt, nw, ks, nqb;
};

// Which tensor-core kernel variants exist for a head size and softmax precision (choose_tc picks among them,
// launch_tc instantiates them).
template <int D, bool HALF_SOFTMAX>
struct TcTraits {
  static constexpr bool kHasMT2 = D <= 64;  // D = 128 with 32 rows per warp does not fit the registers
  static constexpr int MT2 = kHasMT2 ? 2 : 1;
  static constexpr bool kHasKS2 = D <= 64 && !HALF_SOFTMAX;  // two key groups: fp32 softmax, D <= 64
};

template <int D, bool HALF_SOFTMAX>
TcConfig choose_tc(int B, int S, int H, bool causal, bool extra, bool rope = false, int window = -1) {
  // Candidates: (rows per warp 16*MT, warps per block nw). A model of the time: full waves of blocks over
  // the multiprocessors times the work of one block's warp (MT=2 reuses each K/V fragment twice, so a
  // 32-row warp takes about kMT2Cost times as long as a 16-row one). Ties go to the larger block.
  // Under a sliding window that leaves blocks fewer key tiles than the sequence has, 16-row warps only: a block's
  // reach grows with its rows (bq + 2 * window keys), and the model above, which counts waves, does not see it.
  // Measured (H100, tools/kernels_attention.py --window 64 --sweep, hybrid, 12 heads of 64): B = 32, S = 512
  // MT=1 4 warps 0.125 ms against MT=2 4 warps (the model's pick) 0.231; B = 8 and B = 1 at S = 512 already MT=1.
  // Then two key groups a block (KS = 2) where the blocks do not fill the multiprocessors and a block has at
  // least two key tiles: see attention_tc_kernel.
  // TRTRUN_ATTN_CFG="MT,nw[,KS]" forces one (tuning and tests only).
  using T = TcTraits<D, HALF_SOFTMAX>;
  constexpr bool kHasMT2 = T::kHasMT2, kHasKS2 = T::kHasKS2;
  constexpr int MT2 = T::MT2;
  constexpr double kMT2Cost = 1.15;  // measured: H200 (tools/kernels_attention.py --sweep)
  const int sms = sm_count();
  // resident blocks of the instantiation that will run (with a score bias or window: the EXTRA one)
  auto resident = [&](int mt, int nw, int nqb) {
    if constexpr (attention_takes_rotary(D, 16)) {
      if (rope && extra)
        return mt == 2 ? resident_blocks<D, MT2, HALF_SOFTMAX, true, true>(nw)
                       : resident_blocks<D, 1, HALF_SOFTMAX, true, true>(nw);
      if (rope)
        return mt == 2 ? resident_blocks<D, MT2, HALF_SOFTMAX, false, true>(nw)
                       : resident_blocks<D, 1, HALF_SOFTMAX, false, true>(nw);
    }
    if (extra)
      return mt == 2 ? resident_blocks<D, MT2, HALF_SOFTMAX, true>(nw) : resident_blocks<D, 1, HALF_SOFTMAX, true>(nw);
    return mt == 2 ? resident_blocks<D, MT2, HALF_SOFTMAX>(nw, nqb) : resident_blocks<D, 1, HALF_SOFTMAX>(nw, nqb);
  };
  int best_mt = 1, best_nw = 4, best_ks = 1;
  const char* forced = std::getenv("TRTRUN_ATTN_CFG");
  int fmt = 0, fnw = 0, fks = 1;
  const int nf = forced != nullptr ? std::sscanf(forced, "%d,%d,%d", &fmt, &fnw, &fks) : 0;
  if (nf >= 2 && (fmt == 1 || (fmt == 2 && kHasMT2)) && (fnw == 1 || fnw == 2 || fnw == 4) &&
      (fks == 1 || (fks == 2 && fmt == 1 && kHasKS2))) {
    best_mt = fmt;
    best_nw = fnw;
    best_ks = fks;
  } else {
    const long long bhs = static_cast<long long>(B) * H;
    double best = 1e300;
    const bool narrow_window = window >= 0 && S > 2 * window + BK;
    for (int mt = kHasMT2 && !narrow_window ? 2 : 1; mt >= 1; --mt) {
      for (int nw = 4; nw >= 1; nw /= 2) {
        const int bq = 16 * mt * nw;
        const long long blocks = bhs * ((S + bq - 1) / bq);
        const int res = resident(mt, nw, 1);
        const long long waves = (blocks + static_cast<long long>(res) * sms - 1) / (static_cast<long long>(res) * sms);
        const double cost = static_cast<double>(waves) * (mt == 2 ? kMT2Cost : 1.0) * (1.0 + 0.02 * (4 / nw));
        if (cost < best * 0.999) {
          best = cost;
          best_mt = mt;
          best_nw = nw;
        }
      }
    }
    // Two key groups where blocks of 2 (else 4) warps a group still leave multiprocessors idle. Measured (H200,
    // results/kernels-h200/attn-key-groups-sweep.txt; one group -> two of 4 warps / of 2 warps):
    // B=1 S=128 4.9 -> 4.7 / 4.1 us, S=256 causal 7.6 -> 6.3 / 5.8, S=512 causal 12.5 -> 9.8 / 13.5 (2 warps a
    // group: 192 blocks, more than the 132 multiprocessors).
    if (kHasKS2 && best_mt == 1 && S > BK) {
      for (int nw = 2; nw <= 4; nw *= 2) {
        if (bhs * ((S + 16 * nw - 1) / (16 * nw)) <= sms) {
          best_nw = nw;
          best_ks = 2;
          break;
        }
      }
    }
  }
  // Two query tiles a block over K/V staged once (kernel above) where one tile a block needs more than one wave
  // of blocks: the block's loads are shared and the grid halves, but a block works about kQB2Cost times as long.
  // Cost model in waves, fractional, at least 1. Measured (H200, kernel, 12 heads, S = 128; one query
  // tile -> two): B = 32, D = 64: 16.9 -> 16.2 us (mask of ones), 16.3 -> 15.8 (no mask), 17.8 -> 16.9 (right
  // padding); D = 32: 12.3 -> 11.1; B = 16 (one wave): 9.9 -> 12.0, which the rule leaves alone; B = 16 with one
  // tile against B = 32 with two (each one wave of 384 blocks) gives kQB2Cost. TRTRUN_ATTN_QB=n forces n where
  // allowed (tuning and tests only).
  constexpr double kQB2Cost = 1.7;
  const int nqt = (S + 16 * best_mt * best_nw - 1) / (16 * best_mt * best_nw);
  int nqb = 1;
  if (const char* fq = std::getenv("TRTRUN_ATTN_QB"); fq != nullptr) {
    if (can_share_kv(D, S, causal, best_ks, extra || rope)) nqb = std::max(1, std::atoi(fq));
  } else if (nf < 2 && nqt >= 2 && can_share_kv(D, S, causal, best_ks, extra || rope)) {
    const long long bhs = static_cast<long long>(B) * H;
    const int res1 = resident(best_mt, best_nw, 1), res2 = resident(best_mt, best_nw, 2);
    const double waves1 = static_cast<double>(bhs * nqt) / (static_cast<double>(res1) * sms);
    const double waves2 = static_cast<double>(bhs * ((nqt + 1) / 2)) / (static_cast<double>(res2) * sms);
    if (waves1 > 1.0 && kQB2Cost * std::max(1.0, waves2) < waves1) nqb = 2;
  }
  return TcConfig{best_mt, best_nw, best_ks, std::min(nqb, std::max(nqt, 1))};
}

template <int D, bool HALF_SOFTMAX, bool EXTRA, bool ROPE = false>
void launch_tc_as(const TcConfig& c, const void* qkv, bool in_half, const int32_t* mask, void* y, bool out_half, int B,
                  int S, int H, int Hkv, float scale, bool causal, cudaStream_t stream, Extras ex) {
  constexpr int MT2 = TcTraits<D, HALF_SOFTMAX>::MT2;
  constexpr bool kHasKS2 = TcTraits<D, HALF_SOFTMAX>::kHasKS2;
  if (c.mt == 2) {
    launch_tc_cfg<D, MT2, HALF_SOFTMAX, 1, EXTRA, ROPE>(c.nw, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal,
                                                  stream, ex, c.nqb);
  } else if (c.ks == 2) {
    launch_tc_cfg<D, 1, HALF_SOFTMAX, kHasKS2 ? 2 : 1, EXTRA, ROPE>(c.nw, qkv, in_half, mask, y, out_half, B, S, H, Hkv,
                                                               scale, causal, stream, ex);
  } else {
    launch_tc_cfg<D, 1, HALF_SOFTMAX, 1, EXTRA, ROPE>(c.nw, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale,
                                                      causal, stream, ex, c.nqb);
  }
}

template <int D, bool HALF_SOFTMAX>
void launch_tc(const void* qkv, bool in_half, const int32_t* mask, void* y, bool out_half, int B, int S, int H,
               int Hkv, float scale, bool causal, cudaStream_t stream, Extras ex) {
  const bool extra = ex.bias != nullptr || ex.window >= 0 || ex.softcap > 0.f;
  const bool rope = ex.rope_cos != nullptr;
  const TcConfig c = choose_tc<D, HALF_SOFTMAX>(B, S, H, causal, extra, rope, ex.window);
  if constexpr (attention_takes_rotary(D, 16)) {
    if (rope && extra)
      return launch_tc_as<D, HALF_SOFTMAX, true, true>(c, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal,
                                                       stream, ex);
    if (rope)
      return launch_tc_as<D, HALF_SOFTMAX, false, true>(c, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale,
                                                        causal, stream, ex);
  }
  require(!rope, "attention", "internal: no rotary kernel for head_size " + std::to_string(D));
  if (extra)
    launch_tc_as<D, HALF_SOFTMAX, true>(c, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal, stream, ex);
  else
    launch_tc_as<D, HALF_SOFTMAX, false>(c, qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal, stream, ex);
}

template <int D>
void launch_f32(const void* qkv, bool in_half, const int32_t* mask, void* y, bool out_half, int B, int S, int H,
                int Hkv, float scale, bool causal, cudaStream_t stream, Extras ex) {
  constexpr int BQ = F_WARPS * F_ROWS;
  const int nqt = (S + BQ - 1) / BQ;
  const long long blocks = static_cast<long long>(B) * H * nqt;
  require(blocks <= 0x7fffffffLL, "attention", "batch * heads * query tiles too large");
  const size_t smem =
      sizeof(float) * (BQ * D + F_BK * (D + 1) + F_BK * D + F_WARPS * F_ROWS * F_BK) + F_BK * sizeof(int);
  auto kern = ex.bias != nullptr || ex.window >= 0 || ex.softcap > 0.f ? attention_f32_kernel<D, true>
                                                                        : attention_f32_kernel<D, false>;
  ensure_dynamic_smem(kern, smem);
  kern<<<static_cast<unsigned>(blocks), 32 * F_WARPS, smem, stream>>>(qkv, in_half, mask, y, out_half, H, Hkv, S,
                                                                       scale, causal, nqt, ex);
  TRTRUN_LAUNCH_CHECK();
}

template <int D>
void dispatch(const void* qkv, bool in_half, const int32_t* mask, void* y, bool out_half, int B, int S, int H,
              int Hkv, float scale, bool causal, Precision prec, cudaStream_t stream, Extras ex) {
  switch (prec) {
    case Precision::FP32:
      launch_f32<D>(qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal, stream, ex);
      break;
    case Precision::FP16:
      launch_tc<D, true>(qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal, stream, ex);
      break;
    case Precision::HYBRID:
      launch_tc<D, false>(qkv, in_half, mask, y, out_half, B, S, H, Hkv, scale, causal, stream, ex);
      break;
  }
}

template <int D>
std::string config_of(int B, int S, int H, bool causal, Precision prec, bool extra, int window) {
  if (prec == Precision::FP32) return "fp32";
  const TcConfig c = prec == Precision::FP16 ? choose_tc<D, true>(B, S, H, causal, extra, false, window)
                                             : choose_tc<D, false>(B, S, H, causal, extra, false, window);
  return "mt=" + std::to_string(c.mt) + " nw=" + std::to_string(c.nw) + " ks=" + std::to_string(c.ks) +
         " qb=" + std::to_string(c.nqb);
}

// Where the rotary inside the kernel pays (attention_rotary_pays). Each block rotates its own Q rows once but every K
// tile it visits, with CUDA-core arithmetic of the order of the tile's MMAs, so the rotation lengthens every block's
// chain of key tiles; the separate pass costs a launch and a read and write of Q and K. Same-run A/B on an H100
// (ModernBERT-base and SmolLM2-135M shapes, hybrid, batch {1, 8, 32} x seq {128, 512}; docs/performance.md, "Decoders
// and ModernBERT"): inside was 1.4-1.8% faster at 1 x 128, where the grid is under one wave of blocks and a block
// visits two key tiles, and 1.1% at SmolLM2's 8 x 128; up to 6% slower at 512 tokens and at SmolLM2's 32 x 128;
// within 1% elsewhere. So: inside where the blocks fit the multiprocessors at once and the sequence is at most two key
// tiles.
template <int D>
bool rope_pays(int B, int S, int H, bool causal, Precision prec, bool extra) {
  if (S > 2 * BK) return false;
  const TcConfig c = prec == Precision::FP16 ? choose_tc<D, true>(B, S, H, causal, extra, true)
                                             : choose_tc<D, false>(B, S, H, causal, extra, true);
  const int bq = 16 * c.mt * c.nw;
  const long long blocks = static_cast<long long>(B) * H * ((S + bq - 1) / bq);
  return blocks <= sm_count();
}

void check_head_size(int head_size, const char* op) {
  require(attention_takes_head_size(head_size), op,
          "head_size must be 32, 64, 80, 96, 128 or 256, got " + std::to_string(head_size));
}

}  // namespace

std::string attention_config(int batch, int seq, int heads, int head_size, bool causal, Precision prec, bool extras,
                             int window) {
  const char* op = "attention";
  check_head_size(head_size, op);
  require(batch >= 1 && seq >= 1 && heads >= 1, op, "batch, seq and heads must be >= 1");
  check_precision(prec, op);
  const bool ex = extras || window >= 0;  // a window takes the kernel with extras
  switch (head_size) {
    case 32: return config_of<32>(batch, seq, heads, causal, prec, ex, window);
    case 64: return config_of<64>(batch, seq, heads, causal, prec, ex, window);
    case 80: return config_of<80>(batch, seq, heads, causal, prec, ex, window);
    case 96: return config_of<96>(batch, seq, heads, causal, prec, ex, window);
    case 128: return config_of<128>(batch, seq, heads, causal, prec, ex, window);
    default: return config_of<256>(batch, seq, heads, causal, prec, ex, window);
  }
}

bool attention_rotary_pays(int batch, int seq, int heads, int kv_heads, int head_size, int rotary_dim, bool causal,
                           Precision prec, const AttentionExtras& extras) {
  if (!attention_takes_rotary(head_size, rotary_dim) || prec == Precision::FP32 || batch < 1 || seq < 1 ||
      heads < 1 || kv_heads < 1 || heads % kv_heads != 0)
    return false;
  if (const char* f = std::getenv("TRTRUN_ATTN_ROPE"); f != nullptr && (f[0] == '0' || f[0] == '1') && f[1] == 0)
    return f[0] == '1';
  const bool extra = extras.bias != nullptr || (extras.window >= 0 && extras.window < seq - 1) || extras.softcap > 0.f;
  return head_size == 64 ? rope_pays<64>(batch, seq, heads, causal, prec, extra)
                         : rope_pays<128>(batch, seq, heads, causal, prec, extra);
}

void launch_attention(const void* qkv, DType qkv_t, const int32_t* mask, void* y, DType y_t, int batch, int seq,
                      int heads, int head_size, float scale, bool causal, Precision prec, cudaStream_t stream) {
  launch_attention_gqa(qkv, qkv_t, mask, y, y_t, batch, seq, heads, heads, head_size, scale, causal, prec, stream);
}

void launch_attention_gqa(const void* qkv, DType qkv_t, const int32_t* mask, void* y, DType y_t, int batch, int seq,
                          int heads, int kv_heads, int head_size, float scale, bool causal, Precision prec,
                          cudaStream_t stream, const AttentionExtras& extras) {
  const char* op = "attention";
  check_head_size(head_size, op);
  require(heads >= 1, op, "num_heads must be >= 1, got " + std::to_string(heads));
  require(kv_heads >= 1 && heads % kv_heads == 0, op,
          "num_kv_heads must divide num_heads " + std::to_string(heads) + ", got " + std::to_string(kv_heads));
  require(batch >= 0 && seq >= 0, op,
          "batch and seq must be >= 0, got batch=" + std::to_string(batch) + " seq=" + std::to_string(seq));
  require(std::isfinite(scale), op, "scale must be finite");
  check_dtype(qkv_t, op, "qkv");
  check_dtype(y_t, op, "y");
  check_precision(prec, op);
  if (extras.bias != nullptr) {
    // 2 * max_seq - 1 table entries a head must fit an int
    require(extras.bias_max_seq >= seq && extras.bias_max_seq >= 1 && extras.bias_max_seq <= kAttentionBiasMaxSeq, op,
            "a score bias table [heads, 2*bias_max_seq - 1] needs 1 <= seq " + std::to_string(seq) +
                " <= bias_max_seq <= 2^30, got bias_max_seq=" + std::to_string(extras.bias_max_seq));
    require((reinterpret_cast<uintptr_t>(extras.bias) & 3u) == 0, op, "the score bias table must be 4-byte aligned");
  }
  if (batch == 0 || seq == 0) return;
  require(qkv != nullptr && y != nullptr, op, "qkv and y must not be null");
  require((reinterpret_cast<uintptr_t>(qkv) & 15u) == 0 && (reinterpret_cast<uintptr_t>(y) & 15u) == 0, op,
          "qkv and y must be 16-byte aligned");
  const bool in_half = qkv_t == DType::F16, out_half = y_t == DType::F16;
  require(std::isfinite(extras.softcap) && extras.softcap >= 0.f, op,
          "softcap must be a finite float >= 0 (0: none), got " + std::to_string(extras.softcap));
  Extras ex{nullptr, 0, -1, extras.softcap, nullptr, nullptr, 0, false, true};
  // read at every launch, so graphs captured with and without it compare in one process (tools/profile_point.py)
  if (const char* m = std::getenv("TRTRUN_ATTN_MASK"); m != nullptr && std::string(m) == "keys") ex.mask_intervals = false;
  if (extras.rope_cos != nullptr || extras.rope_sin != nullptr) {
    require(extras.rope_cos != nullptr && extras.rope_sin != nullptr, op, "the rotary needs both cos and sin tables");
    require(in_half && prec != Precision::FP32, op,
            "the rotary inside attention takes fp16 qkv in hybrid or fp16 precision (rotate first otherwise: "
            "launch_rotary)");
    require(attention_takes_rotary(head_size, extras.rotary_dim), op,
            "the rotary inside attention takes head_size 64 or 128 and a rotary_dim that is a multiple of 16 and at "
            "most head_size, got head_size " + std::to_string(head_size) + ", rotary_dim " +
                std::to_string(extras.rotary_dim));
    require((reinterpret_cast<uintptr_t>(extras.rope_cos) & 15u) == 0 &&
                (reinterpret_cast<uintptr_t>(extras.rope_sin) & 15u) == 0, op,
            "the rotary cos/sin tables must be 16-byte aligned");
    ex.rope_cos = extras.rope_cos;
    ex.rope_sin = extras.rope_sin;
    ex.rotary_dim = extras.rotary_dim;
    ex.rope_half = prec == Precision::FP16;
  }
  if (extras.bias != nullptr) {
    ex.bias = extras.bias + (extras.bias_max_seq - 1);  // distance 0 of head 0
    ex.bias_stride = 2 * extras.bias_max_seq - 1;
  }
  // a window of seq - 1 or more masks nothing: the kernels without one
  if (extras.window >= 0 && extras.window < seq - 1) ex.window = extras.window;
  switch (head_size) {
    case 32:
      dispatch<32>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
    case 64:
      dispatch<64>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
    case 80:
      dispatch<80>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
    case 96:
      dispatch<96>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
    case 128:
      dispatch<128>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
    default:
      dispatch<256>(qkv, in_half, mask, y, out_half, batch, seq, heads, kv_heads, scale, causal, prec, stream, ex);
      break;
  }
}

}  // namespace trtrun
