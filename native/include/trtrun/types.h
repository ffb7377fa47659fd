// native/include/trtrun/types.h: every enum the native code shares, and the one place that names them.
//
// Names are what crosses into Python and into files (plan lowering, GEMM cache, kernel test entry points);
// from_string (native/core/types.cpp) is the only parser. The integer values are fixed (docs/runtime.md) but
// never leave C++. No CUDA and no Python in here, so host-only code and tests can use it.
#pragma once

#include <cstddef>
#include <string>

namespace trtrun {

// Element type of a tensor or weight (docs/plan-format.md "Dtypes"). Kernels take the float types; integer graph
// inputs live as I32 on the device. F8E4M3 (float8_e4m3fn, one byte) is only an fp8 Linear's weight and the
// quantized activation its GEMM reads: never a plan tensor.
enum class DType : int { F32 = 0, F16 = 1, I32 = 2, I64 = 3, F8E4M3 = 4 };
// Ops the runtime executes (docs/plan-format.md "Ops"), named as in the plan.
enum class OpType : int { Embedding = 0, Linear = 1, Attention = 2, LayerNorm = 3, RMSNorm = 4 };
// How an op computes inside (docs/plan-format.md "Precision"). FP8 is a Linear's only (E4M3 operands, fp32
// accumulation, the rest as HYBRID); the other ops' kernels take FP32, FP16 and HYBRID.
enum class Precision : int { FP32 = 0, FP16 = 1, HYBRID = 2, FP8 = 3 };
// A Linear op's activation (plan attribute `activation`).
enum class Activation : int {
  None = 0, GeluErf = 1, GeluTanh = 2, Silu = 3, Relu = 4, Relu2 = 5, QuickGelu = 6
};
// How a GEMM shape's cuBLASLt algorithm is chosen on its first run (native/runtime/gemm.h says what each does).
enum class GemmSearch : int { Heuristic = 0, Exhaustive = 1, Focused = 2 };
// What cuBLASLt adds to a GEMM's product (Gelu is cuBLASLt's tanh form).
enum class GemmEpilogue : int { None = 0, Bias = 1, Gelu = 2, GeluBias = 3 };
// How an fp8 GEMM's operand scales reach cuBLASLt (native/runtime/gemm.h): None (no scales: the product of the
// E4M3 codes), Scalar (one fp32 scale each for A and B, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F), OuterVec (a
// vector for each: one scale per output channel and one per token, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F).
enum class GemmScale : int { None = 0, Scalar = 1, OuterVec = 2 };

// The name of each value: DType "float32" "float16" "int32" "int64" "float8_e4m3fn"; OpType "Embedding" "Linear"
// "Attention" "LayerNorm" "RMSNorm"; Precision "fp32" "fp16" "hybrid" "fp8"; Activation "none" "gelu_erf" "gelu_tanh"
// "silu" "relu" "relu2" "quick_gelu"; GemmSearch "heuristic" "focused" "exhaustive"; GemmEpilogue "none" "bias"
// "gelu" "gelu_bias"; GemmScale "none" "scalar" "outer_vec". A value outside the enum (a cast from a bad int) reads "<invalid DType 7>".
const char* to_string(DType v);
const char* to_string(OpType v);
const char* to_string(Precision v);
const char* to_string(Activation v);
const char* to_string(GemmSearch v);
const char* to_string(GemmEpilogue v);
const char* to_string(GemmScale v);

// The value of a name, exact and case-sensitive; otherwise InputError (native/include/trtrun/errors.h) naming
// `what` (e.g. "op 'fc1': precision"), the bad name and the valid ones:
//   op 'fc1': precision must be one of fp32, fp16, hybrid; got 'int8'
template <typename E> E from_string(const std::string& name, const std::string& what);
template <> DType from_string<DType>(const std::string& name, const std::string& what);
template <> OpType from_string<OpType>(const std::string& name, const std::string& what);
template <> Precision from_string<Precision>(const std::string& name, const std::string& what);
template <> Activation from_string<Activation>(const std::string& name, const std::string& what);
template <> GemmSearch from_string<GemmSearch>(const std::string& name, const std::string& what);
template <> GemmEpilogue from_string<GemmEpilogue>(const std::string& name, const std::string& what);
template <> GemmScale from_string<GemmScale>(const std::string& name, const std::string& what);

// Every valid name of an enum, comma separated, in the order listed above ("fp32, fp16, hybrid").
template <typename E> std::string valid_names();

// Bytes of one element; 0 for a value outside the enum.
inline size_t elem_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::F8E4M3: return 1;
  }
  return 0;
}
// The float types of tensors and of every weight but an fp8 Linear's (F8E4M3 is not one: no kernel but the fp8
// GEMM reads it).
inline bool is_float(DType t) { return t == DType::F32 || t == DType::F16; }

}  // namespace trtrun
