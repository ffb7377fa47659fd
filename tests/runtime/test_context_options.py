"""A GPU context's options (trtrun.runtime.ContextOptions): checked once, before the GPU runtime or the engine is
touched, and handed to the extension by name, as its ContextOptions. A recording stand-in for trtrun._C shows what
reaches the extension without a GPU (the GPU tests run the same calls on the real one)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import EMBED_PROFILE, EMBED_TINY

from trtrun.errors import InputError
from trtrun.runtime import Context, ContextOptions, Engine, extension
from trtrun.runtime.options import NATIVE_FIELDS

ROOT = Path(__file__).resolve().parents[2]

# The defaults as docs/runtime.md states them, by the names _C.ContextOptions takes
DEFAULT_NATIVE = {"use_graphs": True, "workspace_bytes": 4 << 20, "max_graphs": 256, "ffn_chunks": 2,
                  "fuse_residual": True, "fuse_residual_min_rows": 1024, "ffn_chunk_min_rows": 4096,
                  "gemm_search": "focused", "split_ln_max_rows": 384, "split_ln_slice": 768}
BINDING = ROOT / "native" / "python" / "context.cpp"


def binding_option_names() -> list[str]:
    """The names _C.ContextOptions(**options) accepts: the binding's kOptionNames table (any other name is its
    InputError)."""
    src = BINDING.read_text()
    table = re.search(r"kOptionNames\[\] = \{(.*?)\};", src, re.S)
    assert table, f"no kOptionNames table in {BINDING}"
    return re.findall(r'"(\w+)"', table.group(1))


class RecordingExtension:
    """Stands in for trtrun._C: records the arguments of Engine(...), the options of Context(engine, options) and
    run_host(...). Its ContextOptions takes the binding's names only, as the real one does."""

    cuda_architectures = "90"

    def __init__(self):
        self.calls = []
        ext = self

        class Engine_:
            def __init__(self, *args):
                ext.calls.append(("Engine", args))
                self.names = [args[0][i][0] for i in args[3]]
                self.weight_bytes = sum(a.nbytes for _, a in args[2])

            def input_info(self):
                return [(i, True, n == "attention_mask", 0) for i, n in enumerate(self.names)]

        names = binding_option_names()

        class ContextOptions_:
            def __init__(self, **options):
                unknown = set(options) - set(names)
                assert not unknown, f"_C.ContextOptions refuses {sorted(unknown)}"
                self.options = options

        class Context_:
            def __init__(self, engine, options):
                assert isinstance(engine, Engine_) and isinstance(options, ContextOptions_)
                ext.calls.append(("Context", options.options))
                self.ins = [np.zeros(1 << 12, np.int32) for _ in engine.names]
                self.outs = [np.zeros(1 << 20, np.uint8) for _ in range(4)]

            def host_input(self, i):
                return self.ins[i]

            def host_output(self, i):
                return self.outs[i]

            def run_host(self, B, S, Sb):
                ext.calls.append(("run_host", (B, S, Sb)))

        self.Engine, self.Context, self.ContextOptions = Engine_, Context_, ContextOptions_

    def device_count(self):
        return 1

    def device_problem(self, device):
        return ""

    def device_name(self, device):
        return "stand-in GPU"

    def of(self, kind):
        return [args for k, args in self.calls if k == kind]


@pytest.fixture
def ext(monkeypatch):
    rec = RecordingExtension()
    monkeypatch.setattr(extension, "_ext", rec)  # load_extension() answers it from now on
    return rec


@pytest.fixture(scope="module")
def gpu_model(tiny_embed_model, tmp_path_factory):
    """{"plan", "tok"}: the shared tiny BERT (tiny_embed_model) with one head of 32 in place of two of 16, built the
    same way, and the shared tokenizer: the GPU runtime lowers only the head sizes its attention kernels take."""
    from trtrun.builder import build
    from trtrun.export import export_model

    d = tmp_path_factory.mktemp("embed-tiny-gpu")
    onnx_path = export_model("bert-base", d / "tiny.onnx", overrides=dict(EMBED_TINY, num_attention_heads=1), seed=3)
    plan_path = build(onnx_path, precision="fp32", profile=EMBED_PROFILE).save(d / "tiny.fp32.plan")
    return {"plan": plan_path, "tok": tiny_embed_model["tok"]}


@pytest.fixture(scope="module")
def plan(gpu_model):
    from trtrun.plan import load_plan

    return load_plan(gpu_model["plan"])


def test_the_native_fields_are_the_bindings():
    """NATIVE_FIELDS, read against the names native/python/context.cpp's ContextOptions accepts and exposes: an
    option added or renamed on one side only fails here, without a GPU. Order plays no part (set by name)."""
    names = binding_option_names()
    assert len(names) == len(set(names)) and set(names) == set(NATIVE_FIELDS)
    exposed = re.findall(r'\.def_(?:readwrite|property)\(\s*"(\w+)"', BINDING.read_text())
    assert sorted(exposed) == sorted(NATIVE_FIELDS)
    fields = [f.name for f in dataclasses.fields(ContextOptions)]
    assert len(fields) == 11 and set(fields) == set(NATIVE_FIELDS) | {"bucket"}  # bucket is Python's own


def test_defaults_reach_the_extension_by_name(ext, plan):
    ctx = Engine(plan).create_context()
    (options,) = ext.of("Context")
    assert options == DEFAULT_NATIVE
    assert {k: type(v) for k, v in options.items()} == {k: type(v) for k, v in DEFAULT_NATIVE.items()}
    assert ctx.options == ContextOptions() and ctx.bucket is True and ctx.gemm_search == "focused"
    ctx.run({"input_ids": np.ones((2, 5), np.int64)})
    assert ext.of("run_host") == [(2, 5, 8)]  # bucketed: 5 tokens run at 8 (bucket_seq)


def test_overrides_reach_the_extension_by_name(ext, plan):
    eng = Engine(plan)
    eng.create_context(gemm_search="heuristic", use_graphs=False)
    every = dict(use_graphs=False, bucket=False, workspace_bytes=1 << 20, max_graphs=8, ffn_chunks=3,
                 fuse_residual=False, fuse_residual_min_rows=7, ffn_chunk_min_rows=9, gemm_search="exhaustive",
                 split_ln_max_rows=0, split_ln_slice=256)
    ctx = eng.create_context(**every)
    base = ContextOptions(gemm_search="heuristic", max_graphs=16)
    eng.create_context(base, ffn_chunks=1)  # an options object, one field overridden
    Context(eng, base)
    assert ext.of("Context") == [
        dict(DEFAULT_NATIVE, use_graphs=False, gemm_search="heuristic"),
        {k: v for k, v in every.items() if k != "bucket"},
        dict(DEFAULT_NATIVE, max_graphs=16, ffn_chunks=1, gemm_search="heuristic"),
        dict(DEFAULT_NATIVE, max_graphs=16, gemm_search="heuristic"),
    ]
    ctx.run({"input_ids": np.ones((2, 5), np.int64)})
    assert ext.of("run_host") == [(2, 5, 5)]  # bucket=False: the exact length


@pytest.mark.parametrize("kw, needle", [
    ({"split_ln_max_rows": -1}, "split_ln_max_rows must be an integer >= 0, got -1"),
    ({"split_ln_max_rows": True}, "split_ln_max_rows must be an integer >= 0, got True"),
    ({"split_ln_slice": 12}, "split_ln_slice must be a multiple of 8 (>= 8), got 12"),
    ({"split_ln_slice": 0}, "split_ln_slice must be a multiple of 8 (>= 8), got 0"),
    ({"split_ln_slice": 768.0}, "split_ln_slice must be a multiple of 8 (>= 8), got 768.0"),
    ({"ffn_chunks": 0}, "ffn_chunks must be an integer >= 1, got 0"),
    ({"fuse_residual_min_rows": 0}, "fuse_residual_min_rows must be an integer >= 1, got 0"),
    ({"ffn_chunk_min_rows": 2.5}, "ffn_chunk_min_rows must be an integer >= 1, got 2.5"),
    ({"workspace_bytes": -1}, "workspace_bytes must be an integer >= 0, got -1"),
    ({"gemm_search": "fast"}, "gemm_search must be one of heuristic, focused, exhaustive, got 'fast'"),
    # past the C++ field (an int, else 64 bits): this error, not the binding's type mismatch
    ({"ffn_chunks": 2**31}, "ffn_chunks must be at most 2147483647, got 2147483648"),
    ({"max_graphs": 2**63}, "max_graphs must be at most 9223372036854775807, got 9223372036854775808"),
    ({"split_ln_slice": 2**70}, "split_ln_slice must be at most 9223372036854775807, got 1180591620717411303424"),
    ({"max_graphs": -1}, "max_graphs must be an integer >= 0, got -1"),
    ({"max_graphs": 1.5}, "max_graphs must be an integer >= 0, got 1.5"),
    ({"max_graphs": "16"}, "max_graphs must be an integer >= 0, got '16'"),
])
def test_bad_context_options(kw, needle, ext):
    (name,) = kw
    for make in (lambda: ContextOptions(**kw), lambda: Context(object(), **kw),  # the engine is not reached
                 lambda: ContextOptions().replace(**kw)):
        with pytest.raises(InputError) as err:
            make()
        assert str(err.value) == needle and str(err.value).count(name) == 1
    assert ext.calls == []  # refused before the extension saw anything


def test_numpy_integers_are_taken_as_ints():
    o = ContextOptions(max_graphs=np.int64(16), ffn_chunks=np.int32(3), split_ln_slice=np.int64(256))
    assert (o.max_graphs, o.ffn_chunks, o.split_ln_slice) == (16, 3, 256)
    assert all(type(v) is int for v in (o.max_graphs, o.ffn_chunks, o.split_ln_slice))


def test_unknown_option_is_a_type_error(ext):
    with pytest.raises(TypeError, match="use_graph"):
        Context(object(), use_graph=False)
    with pytest.raises(InputError, match="options must be a ContextOptions, got dict"):
        Context(object(), {"use_graphs": False})
    assert ext.calls == []


def test_embedder_hands_its_plan_in_memory_and_its_options(ext, plan, gpu_model, monkeypatch):
    """Embedder(backend="gpu"): the Engine gets the plan as lowered from memory (no plan file is written to be
    read back) and each context the Embedder's gemm_search; a bad gemm_search is the options' one InputError."""
    from trtrun.embed import Embedder
    from trtrun.plan import Plan, load_plan
    from trtrun.runtime.lower import lower_plan

    in_memory = Plan.from_parts({k: v for k, v in plan.header.items() if k != "weights"}, plan.weights)

    def no_save(self, path):
        raise AssertionError(f"the Embedder wrote the plan to {path}")

    monkeypatch.setattr(Plan, "save", no_save)
    with Embedder(in_memory, gpu_model["tok"], backend="gpu", contexts=2) as e:
        assert e.backend == "gpu" and e.gemm_search == "heuristic"
    (engine_args,) = ext.of("Engine")
    low = lower_plan(load_plan(gpu_model["plan"]))
    assert engine_args[:2] == (low["tensors"], low["ops"])
    assert [n for n, _ in engine_args[2]] == [n for n, _ in low["weights"]]
    for (_, a), (_, b) in zip(engine_args[2], low["weights"]):
        np.testing.assert_array_equal(a, b)  # the same bytes as from the file: exact
    assert engine_args[3:] == (low["inputs"], low["outputs"], low["batch_max"], low["seq_max"], low["tf32"], 0)
    assert ext.of("Context") == [dict(DEFAULT_NATIVE, gemm_search="heuristic")] * 2
    n = len(ext.calls)
    with pytest.raises(InputError, match=r"^gemm_search must be one of heuristic, focused, exhaustive, got 'fast'$"):
        Embedder(in_memory, gpu_model["tok"], backend="gpu", gemm_search="fast")
    assert len(ext.calls) == n
