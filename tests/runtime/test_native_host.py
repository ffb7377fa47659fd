"""The native code's enum names and options, without a GPU.

- tests/runtime/host_types.cpp, compiled here with the host C++ compiler against native/core (no CUDA): every enum
  value's name parses back to it, each name keeps its integer value (below), a bad name is an error naming it and
  the valid ones, and ContextOptions' defaults are trtrun.runtime.ContextOptions'.
- The built extension (where it is importable): the Engine, ContextOptions, GEMM cache and kernel entry points
  take those names and refuse others with trtrun's InputError, before any device work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from trtrun import runtime
from trtrun.errors import DeviceError, InputError
from trtrun.plan import format as plan_format
from trtrun.runtime import ContextOptions
from trtrun.runtime.lower import lower_plan

REPO = Path(__file__).resolve().parents[2]
from conftest import engine_args, engine_refusal, native_extension  # noqa: E402  (tests/conftest.py)
from handmade_plans import GPU_TINY, tiny_plan  # noqa: E402  (tests/handmade_plans.py)

# The integer value of each name, fixed (docs/runtime.md lists them): GEMM cache files of format 1 stored the
# dtypes, epilogues and searches as these codes, and C++ callers of the runtime's API see them. Integer graph
# inputs (int64 too) live on the device as int32.
CODES_DEVICE_DTYPE = {"float32": 0, "float16": 1, "int32": 2, "int64": 2}  # as lowered
CODES_DTYPE = {"float32": 0, "float16": 1, "int32": 2, "int64": 3, "float8_e4m3fn": 4}
CODES_OP = {"Embedding": 0, "Linear": 1, "Attention": 2, "LayerNorm": 3, "RMSNorm": 4}
CODES_PREC = {"fp32": 0, "fp16": 1, "hybrid": 2, "fp8": 3}
CODES_ACT = {"none": 0, "gelu_erf": 1, "gelu_tanh": 2, "silu": 3, "relu": 4, "relu2": 5, "quick_gelu": 6}
CODES_GEMM_SEARCH = {"heuristic": 0, "exhaustive": 1, "focused": 2}
CODES_GEMM_EPILOGUE = {"none": 0, "bias": 1, "gelu": 2, "gelu_bias": 3}
CODES_GEMM_SCALE = {"none": 0, "scalar": 1, "outer_vec": 2}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """What tests/runtime/host_types.cpp prints: {"enum": {Enum: {name: int}}, "error": {Enum: msg}, ...}."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++, c++ or clang++) on PATH")
    exe = tmp_path_factory.mktemp("native") / "host_types"
    native = REPO / "native"
    # -Werror: no warning under CMakeLists.txt's flags for the C++ core (-Wall), nor under -Wextra
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{native / 'include'}",
           str(REPO / "tests" / "runtime" / "host_types.cpp"), str(native / "core" / "types.cpp"),
           str(native / "core" / "context_options.cpp"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict = {"enum": {}, "error": {}, "invalid": {}, "option": {}, "options_error": None}
    for line in r.stdout.splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "enum":
            enum, name, value = rest.split(" ")
            out["enum"].setdefault(enum, {})[name] = int(value)
        elif kind in ("error", "invalid"):
            enum, msg = rest.split(" ", 1)
            out[kind][enum] = msg
        elif kind == "option":
            name, value = rest.split(" ", 1)
            out["option"][name] = value
        else:
            out["options_error"] = rest
    return out


def test_every_name_keeps_its_code(host):
    e = host["enum"]
    assert e["OpType"] == CODES_OP and e["Precision"] == CODES_PREC and e["Activation"] == CODES_ACT
    assert e["DType"] == CODES_DTYPE
    assert e["GemmSearch"] == CODES_GEMM_SEARCH and e["GemmEpilogue"] == CODES_GEMM_EPILOGUE
    assert e["GemmScale"] == CODES_GEMM_SCALE
    # the lowering names a tensor's device dtype; C++ parses it to the device dtype's code
    for name, code in CODES_DEVICE_DTYPE.items():
        assert e["DType"][plan_format.DEVICE_DTYPES.get(name, name)] == code, name
    # the op types, precisions and activations the lowering lets through are exactly those C++ has names for
    assert set(plan_format.GPU_OP_TYPES) == set(e["OpType"])
    assert set(plan_format.GPU_PRECISIONS) == set(e["Precision"])
    assert set(plan_format.GPU_ACTIVATIONS) == set(e["Activation"])
    # GEMM searches: the names Python offers (errors list them in Python's order: the next test)
    assert set(e["GemmSearch"]) == set(runtime.GEMM_SEARCHES)


def test_bad_names_are_errors_naming_the_valid_ones(host):
    assert host["error"]["Precision"] == "the Precision must be one of fp32, fp16, hybrid, fp8; got 'no-such-name'"
    assert host["error"]["GemmSearch"] == (f"the GemmSearch must be one of {', '.join(runtime.GEMM_SEARCHES)}; "
                                           "got 'no-such-name'")
    assert host["error"]["DType"].startswith("the DType must be one of float32, float16, int32, int64, float8_e4m3fn;")
    assert host["invalid"]["Activation"] == "<invalid Activation 11>"  # a bad cast (4 past the end): named, no crash


def test_context_option_defaults_are_the_runtimes(host):
    from trtrun.runtime.options import NATIVE_FIELDS

    d = ContextOptions()  # C++ prints the switches as 0/1
    want = {k: int(v) if isinstance(v, bool) else v for k in NATIVE_FIELDS for v in [getattr(d, k)]}
    assert host["option"] == {k: str(v) for k, v in want.items()}
    assert host["options_error"] == "ffn_chunks must be >= 1, got 0"


# ---------------------------------------------------------------------------------------------- the extension
def test_engine_takes_the_lowered_names():
    """The lowered plan (names throughout) passes the Engine's description checks: on a machine without a GPU the
    first error is the device's, after them; a name the native code does not know is an InputError naming the op
    or tensor, the bad name and the valid ones, raised before the device is asked."""
    c = native_extension()
    for precision in ("fp32", "fp16", "hybrid"):
        low = lower_plan(tiny_plan(precision, layers=1, activation="gelu_tanh", **GPU_TINY))
        assert {o["precision"] for o in low["ops"]} == {precision}
        assert any(o.get("activation") == "gelu_tanh" for o in low["ops"])
        assert {t[1] for t in low["tensors"]} <= {"float32", "float16", "int32"}
        if c.device_count() == 0:
            with pytest.raises(DeviceError):
                c.Engine(*engine_args(low))
    low = lower_plan(tiny_plan("hybrid", layers=1, **GPU_TINY))
    op = low["ops"][1]
    for field, bad, needle in [
            ("type", "Conv", "type must be one of Embedding, Linear, Attention, LayerNorm, RMSNorm; got 'Conv'"),
            ("precision", "int8", "precision must be one of fp32, fp16, hybrid, fp8; got 'int8'"),
            ("activation", "mish",
             "activation must be one of none, gelu_erf, gelu_tanh, silu, relu, relu2, quick_gelu; got 'mish'")]:
        bad_low = json.loads(json.dumps({k: v for k, v in low.items() if k != "weights"}))
        bad_low["ops"][1][field] = bad
        with pytest.raises(InputError) as err:
            c.Engine(*engine_args(dict(bad_low, weights=low["weights"])))
        assert str(err.value) == f"op '{op['name']}': {needle}"
    tensors = [list(t) for t in low["tensors"]]
    tensors[0][1] = "bfloat16"
    with pytest.raises(InputError, match=rf"tensor {tensors[0][0]}: dtype must be one of float32, float16, int32, "
                                         rf"int64, float8_e4m3fn; got 'bfloat16'"):
        c.Engine(*engine_args(dict(low, tensors=[tuple(t) for t in tensors])))


def test_context_options_by_name():
    c = native_extension()
    o, d = c.ContextOptions(), ContextOptions()
    assert (o.gemm_search, o.ffn_chunks, o.split_ln_slice) == (d.gemm_search, d.ffn_chunks, d.split_ln_slice)
    o = c.ContextOptions(gemm_search="exhaustive", ffn_chunks=3, use_graphs=False)
    assert (o.gemm_search, o.ffn_chunks, o.use_graphs, o.max_graphs) == ("exhaustive", 3, False, 256)
    with pytest.raises(InputError, match="gemm_search must be one of heuristic, focused, exhaustive; got 'fast'"):
        c.ContextOptions(gemm_search="fast")
    with pytest.raises(InputError, match="unknown option 'chunks'; the options are use_graphs, "):
        c.ContextOptions(chunks=2)


def test_the_runtimes_options_reach_the_binding_by_name():
    """trtrun.runtime's one hand-over (options.native_options) sets every field of the real _C.ContextOptions by
    name, with the binding's types (switches, sizes, the search by name): none left at its default."""
    from trtrun.runtime.options import NATIVE_FIELDS, native_options

    c = native_extension()
    every = ContextOptions(use_graphs=False, workspace_bytes=1 << 20, max_graphs=8, ffn_chunks=3, fuse_residual=False,
                           fuse_residual_min_rows=7, ffn_chunk_min_rows=9, gemm_search="exhaustive",
                           split_ln_max_rows=0, split_ln_slice=256)
    o = native_options(every, c)
    assert {k: getattr(o, k) for k in NATIVE_FIELDS} == {k: getattr(every, k) for k in NATIVE_FIELDS}
    d = c.ContextOptions()
    assert all(getattr(o, k) != getattr(d, k) for k in NATIVE_FIELDS)


def test_gemm_cache_entries_by_name(tmp_path):
    """A version-2 entry names its enums; a name the native code does not know is refused naming the file, the
    entry and the field (the file's other checks are tests/runtime/test_gemm_cache.py's)."""
    native_extension()
    entry = {"device": "NVIDIA H200", "cc": 90, "cublaslt": 130100, "m": 128, "n": 768, "k": 768,
             "operand_t": "float16", "out_t": "float16", "epilogue": "bias", "tf32": False, "add_c": False,
             "workspace": 4194304, "search": "exhaustive", "algo": [66, 1, 2, 3, 4, 5, 6, 7], "algo_workspace": 0}
    for field, bad, needle in [("search", "fastest", "search must be one of heuristic, focused, exhaustive; got "
                                                     "'fastest'"),
                               ("epilogue", "relu", "epilogue must be one of none, bias, gelu, gelu_bias; got 'relu'"),
                               ("out_t", "int32", "out_t must be float32 or float16, got 'int32'"),
                               ("out_t", "float8_e4m3fn", "out_t must be float32 or float16, got 'float8_e4m3fn'"),
                               ("scale", "vector", "scale must be one of none, scalar, outer_vec; got 'vector'"),
                               # an fp8 GEMM's scale mode on fp16 operands: no GEMM has that key
                               ("scale", "outer_vec", "scale and operand_t float8_e4m3fn go together, unsplit and "
                                                      "without add_c")]:
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps({"format": runtime.GEMM_CACHE_FORMAT, "version": runtime.GEMM_CACHE_VERSION,
                                    "entries": [entry, dict(entry, **{field: bad})]}))
        with pytest.raises(InputError) as err:
            runtime.load_gemm_cache(path)
        assert str(err.value) == f"GEMM cache {path}: entry 1: {needle}"
    # fp8 entries (operand float8_e4m3fn with a scale mode) and entries written before them (no scale: none) are
    # taken; on a machine without a GPU the import stops at the device count, after the field checks
    fp8 = dict(entry, operand_t="float8_e4m3fn", scale="outer_vec")
    path = tmp_path / "fp8.json"
    path.write_text(json.dumps({"format": runtime.GEMM_CACHE_FORMAT, "version": runtime.GEMM_CACHE_VERSION,
                                "entries": [entry, fp8]}))
    assert [e["scale"] for e in runtime.read_gemm_cache(path)] == ["none", "outer_vec"]
    try:
        runtime.load_gemm_cache(path)
    except DeviceError:
        pass


def test_kernel_entry_points_take_names():
    """_C.plugins parses dtype and precision names before its launchers run (which check their pointers first:
    null pointers here, so nothing reaches a device)."""
    p = native_extension().plugins
    assert (p.F32, p.F16, p.FP32, p.FP16, p.HYBRID) == ("float32", "float16", "fp32", "fp16", "hybrid")
    with pytest.raises(InputError, match="gelu: y must not be null"):
        p.gelu(0, "float16", 8, False, 0)
    with pytest.raises(InputError, match="gelu: y_dtype must be one of float32, float16, int32, int64, float8_e4m3fn; got 'half'"):
        p.gelu(0, "half", 8, False, 0)
    with pytest.raises(InputError, match="gelu: y dtype must be float32 or float16, got int32"):
        p.gelu(0, "int32", 8, False, 0)
    with pytest.raises(InputError, match="attention_config: precision must be one of fp32, fp16, hybrid, fp8; got 'tf32'"):
        p.attention_config(1, 128, 12, 64, False, "tf32")
    with pytest.raises(InputError, match="layernorm: x, gamma, beta and y must not be null"):
        p.layernorm(0, "float32", 0, "float32", 0, 0, "float32", 0, "float16", 0, "float32", 4, 64, 1e-5, "hybrid", 0)


# ---------------------------------------------------------------------------------------- Llama-family ops
def test_decoder_kernel_entry_points_take_names():
    """The Llama-family kernels' entry points (rmsnorm, linear_epilogue, rotary, attention_gqa) parse dtype,
    precision and activation names before their launchers run; the launchers' own checks come next (null pointers
    here, so nothing reaches a device)."""
    p = native_extension().plugins
    with pytest.raises(InputError, match="rmsnorm: x, gamma and y must not be null"):
        p.rmsnorm(0, "float16", 0, "float32", 0, "float32", 0, "float16", 0, "float32", 4, 64, 1e-5, "hybrid", 0)
    with pytest.raises(InputError, match="rmsnorm: precision must be one of fp32, fp16, hybrid, fp8; got 'bf16'"):
        p.rmsnorm(0, "float16", 0, "float32", 0, "float32", 0, "float16", 0, "float32", 4, 64, 1e-5, "bf16", 0)
    with pytest.raises(InputError, match="linear_epilogue: activation must be one of none, gelu_erf, gelu_tanh, "
                                         "silu, relu, relu2, quick_gelu; got 'mish'"):
        p.linear_epilogue(0, "float16", 0, "float32", 0, "float32", 0, "float16", 4, 8, True, "mish", True, 0)
    with pytest.raises(InputError, match="linear_epilogue: src and y must not be null"):
        p.linear_epilogue(0, "float16", 0, "float32", 0, "float32", 0, "float16", 4, 8, True, "silu", True, 0)
    with pytest.raises(InputError, match="rotary: dst_dtype must be one of float32, float16, int32, int64, float8_e4m3fn; got 'f16'"):
        p.rotary(0, "float16", 0, "f16", 0, 0, 1, 4, 4, 2, 32, 32, False, 0)
    with pytest.raises(InputError, match="rotary: src, dst, cos and sin must not be null"):
        p.rotary(0, "float16", 0, "float16", 0, 0, 1, 4, 4, 2, 32, 32, False, 0)
    with pytest.raises(InputError, match="attention: num_kv_heads must divide num_heads 4, got 3"):
        p.attention_gqa(0, "float16", 0, 0, "float16", 1, 4, 4, 3, 32, 0.17, True, "hybrid", 0)
    with pytest.raises(InputError, match="attention: qkv and y must not be null"):
        p.attention_gqa(0, "float16", 0, 0, "float16", 1, 4, 4, 2, 32, 0.17, True, "hybrid", 0)
    # fp8 activation quantization: checked before any pointer is read
    with pytest.raises(InputError, match="quantize_fp8: x_dtype must be one of float32, .*; got 'bfloat16'"):
        p.quantize_fp8(0, "bfloat16", 0, 0, 0, 4, 8, 0)
    with pytest.raises(InputError, match="quantize_fp8: x dtype must be float32 or float16, got float8_e4m3fn"):
        p.quantize_fp8(0, "float8_e4m3fn", 0, 0, 0, 4, 8, 0)
    with pytest.raises(InputError, match=r"quantize_fp8: per-token scales \(no x_scale\) need a scales buffer"):
        p.quantize_fp8(0, "float16", 0, 0, 0, 4, 8, 0)
    with pytest.raises(InputError, match="quantize_fp8: k must be >= 1, got 0"):
        p.quantize_fp8(0, "float16", 0, 0, 8, 4, 0, 0)
    with pytest.raises(InputError, match="quantize_fp8: x and q must not be null"):
        p.quantize_fp8(0, "float16", 0, 0, 8, 4, 8, 0)
    with pytest.raises(InputError, match="fp8_rescale: acc, sx and sw must not be null"):
        p.fp8_rescale(0, 0, 0, True, 4, 8, 0)


@pytest.fixture(scope="module")
def decoder_plans(tmp_path_factory):
    """Hybrid plans of tiny random Llama (grouped K/V heads, full rotary, gated silu MLP) and GPT-NeoX (partial
    rotary, the parallel branches' residual-input Linear) exports."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trtrun.builder import build
    from trtrun.export import export_model

    size = dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=4, intermediate_size=192, vocab_size=300,
                max_position_embeddings=128)
    root = tmp_path_factory.mktemp("decoders")
    plans = {}
    for arch, extra in (("llama", dict(num_key_value_heads=2)), ("gpt-neox", dict(rotary_pct=0.25))):
        path = export_model(arch, root / f"{arch}.onnx", overrides={**size, **extra}, seed=0)
        plans[arch] = build(path, precision="hybrid", profile={"batch": (1, 2, 4), "seq": (1, 16, 64)})
    return plans


@pytest.mark.parametrize("arch", ["llama", "gpt-neox"])
def test_engine_takes_the_decoder_ops(decoder_plans, arch):
    """A lowered Llama or GPT-NeoX plan passes the Engine's description checks (RMSNorm and silu by name, gated and
    residual-input Linears, grouped K/V heads, rotary tables): without a GPU the first error is the device's. Broken
    copies are InputErrors naming the op, raised before the device is asked: a rotary table shorter than the
    profile's longest sequence, K/V heads that do not divide the query heads, a gate on a weight of odd width."""
    c = native_extension()
    low = lower_plan(decoder_plans[arch])
    att = next(o for o in low["ops"] if o["type"] == "Attention")
    assert att["rotary_dim"] == (32 if arch == "llama" else 8) and att["num_kv_heads"] == (2 if arch == "llama" else 4)
    if c.device_count() == 0:
        with pytest.raises(DeviceError):
            c.Engine(*engine_args(low))

    def broken(change):
        return engine_refusal(c, low, change)

    def short_table(bad, weights):
        i = att["weights"]["rotary_cos"]
        weights[i] = (weights[i][0], weights[i][1][:-1].copy())

    assert broken(short_table) == (f"op '{att['name']}': weight 'rotary_cos' must be float32 [>= max sequence, "
                                   f"rotary_dim/2]")

    def kv_heads(bad, weights):
        next(o for o in bad["ops"] if o["name"] == att["name"])["num_kv_heads"] = 3

    assert broken(kv_heads) == f"op '{att['name']}': num_kv_heads must divide num_heads"
    if arch == "llama":
        lin = next(o for o in low["ops"] if o["type"] == "Linear" and o.get("gated"))
        assert lin["activation"] == "silu"

        def odd_gate(bad, weights):
            i = lin["weights"]["weight"]
            weights[i] = (weights[i][0], weights[i][1][:, :-1].copy())

        assert broken(odd_gate) == f"op '{lin['name']}': a gated weight needs an even width N"
    else:
        assert any(o["type"] == "Linear" and len([i for i in o["inputs"] if i >= 0]) == 2 for o in low["ops"])
