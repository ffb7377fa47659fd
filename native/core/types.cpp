// native/core/types.cpp: the names of every enum in types.h, the only place that turns a name into a value.
#include "trtrun/types.h"

#include <string>

#include "trtrun/errors.h"

namespace trtrun {

namespace {

template <typename E>
struct Name {
  E value;
  const char* name;
};

// One table per enum: to_string, from_string and valid_names read only these.
constexpr Name<DType> kDTypes[] = {
    {DType::F32, "float32"}, {DType::F16, "float16"}, {DType::I32, "int32"}, {DType::I64, "int64"},
    {DType::F8E4M3, "float8_e4m3fn"}};
constexpr Name<OpType> kOpTypes[] = {{OpType::Embedding, "Embedding"},
                                     {OpType::Linear, "Linear"},
                                     {OpType::Attention, "Attention"},
                                     {OpType::LayerNorm, "LayerNorm"},
                                     {OpType::RMSNorm, "RMSNorm"}};
constexpr Name<Precision> kPrecisions[] = {
    {Precision::FP32, "fp32"}, {Precision::FP16, "fp16"}, {Precision::HYBRID, "hybrid"}, {Precision::FP8, "fp8"}};
constexpr Name<Activation> kActivations[] = {{Activation::None, "none"},
                                             {Activation::GeluErf, "gelu_erf"},
                                             {Activation::GeluTanh, "gelu_tanh"},
                                             {Activation::Silu, "silu"},
                                             {Activation::Relu, "relu"},
                                             {Activation::Relu2, "relu2"},
                                             {Activation::QuickGelu, "quick_gelu"}};
// Listed by cost, as trtrun.types.GEMM_SEARCHES lists them.
constexpr Name<GemmSearch> kGemmSearches[] = {
    {GemmSearch::Heuristic, "heuristic"}, {GemmSearch::Focused, "focused"}, {GemmSearch::Exhaustive, "exhaustive"}};
constexpr Name<GemmEpilogue> kGemmEpilogues[] = {{GemmEpilogue::None, "none"},
                                                 {GemmEpilogue::Bias, "bias"},
                                                 {GemmEpilogue::Gelu, "gelu"},
                                                 {GemmEpilogue::GeluBias, "gelu_bias"}};
constexpr Name<GemmScale> kGemmScales[] = {
    {GemmScale::None, "none"}, {GemmScale::Scalar, "scalar"}, {GemmScale::OuterVec, "outer_vec"}};

template <typename E> struct Table;
template <> struct Table<DType> {
  static constexpr const auto& names = kDTypes;
  static constexpr const char* enum_name = "DType";
};
template <> struct Table<OpType> {
  static constexpr const auto& names = kOpTypes;
  static constexpr const char* enum_name = "OpType";
};
template <> struct Table<Precision> {
  static constexpr const auto& names = kPrecisions;
  static constexpr const char* enum_name = "Precision";
};
template <> struct Table<Activation> {
  static constexpr const auto& names = kActivations;
  static constexpr const char* enum_name = "Activation";
};
template <> struct Table<GemmSearch> {
  static constexpr const auto& names = kGemmSearches;
  static constexpr const char* enum_name = "GemmSearch";
};
template <> struct Table<GemmEpilogue> {
  static constexpr const auto& names = kGemmEpilogues;
  static constexpr const char* enum_name = "GemmEpilogue";
};
template <> struct Table<GemmScale> {
  static constexpr const auto& names = kGemmScales;
  static constexpr const char* enum_name = "GemmScale";
};

template <typename E>
const char* name_of(E v) {
  for (const auto& n : Table<E>::names)
    if (n.value == v) return n.name;
  // A value no table holds came from a bad cast. The text is kept per thread, so the pointer stays valid until
  // this thread names another such value.
  static thread_local std::string invalid;
  invalid = std::string("<invalid ") + Table<E>::enum_name + " " + std::to_string(static_cast<int>(v)) + ">";
  return invalid.c_str();
}

template <typename E>
E value_of(const std::string& name, const std::string& what) {
  for (const auto& n : Table<E>::names)
    if (name == n.name) return n.value;
  throw InputError(what + " must be one of " + valid_names<E>() + "; got '" + name + "'");
}

}  // namespace

template <typename E>
std::string valid_names() {
  std::string s;
  for (const auto& n : Table<E>::names) {
    if (!s.empty()) s += ", ";
    s += n.name;
  }
  return s;
}
template std::string valid_names<DType>();
template std::string valid_names<OpType>();
template std::string valid_names<Precision>();
template std::string valid_names<Activation>();
template std::string valid_names<GemmSearch>();
template std::string valid_names<GemmEpilogue>();
template std::string valid_names<GemmScale>();

const char* to_string(DType v) { return name_of(v); }
const char* to_string(OpType v) { return name_of(v); }
const char* to_string(Precision v) { return name_of(v); }
const char* to_string(Activation v) { return name_of(v); }
const char* to_string(GemmSearch v) { return name_of(v); }
const char* to_string(GemmEpilogue v) { return name_of(v); }
const char* to_string(GemmScale v) { return name_of(v); }

template <> DType from_string<DType>(const std::string& name, const std::string& what) {
  return value_of<DType>(name, what);
}
template <> OpType from_string<OpType>(const std::string& name, const std::string& what) {
  return value_of<OpType>(name, what);
}
template <> Precision from_string<Precision>(const std::string& name, const std::string& what) {
  return value_of<Precision>(name, what);
}
template <> Activation from_string<Activation>(const std::string& name, const std::string& what) {
  return value_of<Activation>(name, what);
}
template <> GemmSearch from_string<GemmSearch>(const std::string& name, const std::string& what) {
  return value_of<GemmSearch>(name, what);
}
template <> GemmEpilogue from_string<GemmEpilogue>(const std::string& name, const std::string& what) {
  return value_of<GemmEpilogue>(name, what);
}
template <> GemmScale from_string<GemmScale>(const std::string& name, const std::string& what) {
  return value_of<GemmScale>(name, what);
}

}  // namespace trtrun
