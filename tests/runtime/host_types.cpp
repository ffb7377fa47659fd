// tests/runtime/host_types.cpp: the native enum names (native/core/types.cpp) and the context options
// (native/core/context_options.cpp) on the host, no CUDA needed. tests/runtime/test_native_host.py compiles and runs
// it and checks what it prints; the program itself exits 1 on the first failed round trip.
//
// Output, one item a line:
//   enum <Enum> <name> <int>       every value of every enum, in the order of its table
//   error <Enum> <message>         from_string's error for a name that is not one
//   invalid <Enum> <to_string>     to_string of a value outside the enum
//   option <name> <default>        ContextOptions() (gemm_search by name)
//   options_error <message>        check_options on ffn_chunks = 0
#include <cstdio>
#include <exception>
#include <string>

#include "trtrun/context_options.h"
#include "trtrun/errors.h"
#include "trtrun/types.h"

using namespace trtrun;

namespace {

int failures = 0;

template <typename E>
void check_enum(const char* enum_name, int count) {
  for (int v = 0; v < count; ++v) {
    const E e = static_cast<E>(v);
    const std::string name = to_string(e);
    std::printf("enum %s %s %d\n", enum_name, name.c_str(), v);
    if (from_string<E>(name, enum_name) != e) {
      std::printf("FAIL %s %s does not parse back to %d\n", enum_name, name.c_str(), v);
      ++failures;
    }
  }
  try {
    (void)from_string<E>("no-such-name", std::string("the ") + enum_name);
    std::printf("FAIL %s accepted no-such-name\n", enum_name);
    ++failures;
  } catch (const InputError& err) {
    std::printf("error %s %s\n", enum_name, err.what());
  }
  std::printf("invalid %s %s\n", enum_name, to_string(static_cast<E>(count + 4)));
}

}  // namespace

int main() {
  check_enum<DType>("DType", 5);
  check_enum<OpType>("OpType", 5);
  check_enum<Precision>("Precision", 4);
  check_enum<Activation>("Activation", 7);
  check_enum<GemmSearch>("GemmSearch", 3);
  check_enum<GemmEpilogue>("GemmEpilogue", 4);
  check_enum<GemmScale>("GemmScale", 3);

  const ContextOptions o;
  std::printf("option use_graphs %d\n", o.use_graphs ? 1 : 0);
  std::printf("option workspace_bytes %zu\n", o.workspace_bytes);
  std::printf("option max_graphs %zu\n", o.max_graphs);
  std::printf("option ffn_chunks %d\n", o.ffn_chunks);
  std::printf("option ffn_chunk_min_rows %lld\n", static_cast<long long>(o.ffn_chunk_min_rows));
  std::printf("option fuse_residual %d\n", o.fuse_residual ? 1 : 0);
  std::printf("option fuse_residual_min_rows %lld\n", static_cast<long long>(o.fuse_residual_min_rows));
  std::printf("option gemm_search %s\n", to_string(o.gemm_search));
  std::printf("option split_ln_max_rows %lld\n", static_cast<long long>(o.split_ln_max_rows));
  std::printf("option split_ln_slice %lld\n", static_cast<long long>(o.split_ln_slice));
  check_options(o);
  ContextOptions bad;
  bad.ffn_chunks = 0;
  try {
    check_options(bad);
    std::printf("FAIL check_options accepted ffn_chunks = 0\n");
    ++failures;
  } catch (const InputError& err) {
    std::printf("options_error %s\n", err.what());
  }
  return failures == 0 ? 0 : 1;
}
