"""The package's structure: each setting's names defined once (trtrun.types), and no import cycle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from trtrun import types
from trtrun.errors import InputError

PKG = Path(__file__).resolve().parents[1] / "trtrun"


def test_each_choice_tuple_is_defined_once():
    # a tuple literal of a setting's names written anywhere but trtrun/types.py is a second home for it
    names = {"PRECISIONS", "BACKENDS", "BACKEND_CHOICES", "POOLINGS", "TRUNCATIONS", "NAMED_ARCHS", "EXPORT_ARCHS",
             "BASELINES", "CUDA_GRAPHS", "GRID_MODES", "CORPUS_FORMATS", "ON_ERROR"}
    values = {getattr(types, n) for n in names}
    found = []
    for path in PKG.rglob("*.py"):
        if path.name == "types.py" and path.parent == PKG:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                if tuple(e.value for e in node.elts) in values:
                    found.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert found == []


def test_the_gpu_runtimes_names_are_defined_once():
    # what the GPU lowering lets through (the extension parses these names) lives in trtrun/plan/format.py only
    from trtrun.plan import format as plan_format
    from trtrun.runtime import lower

    values = {plan_format.GPU_OP_TYPES, plan_format.GPU_ACTIVATIONS}
    found = []
    for path in PKG.rglob("*.py"):
        if path == PKG / "plan" / "format.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                if tuple(e.value for e in node.elts) in values:
                    found.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert found == []
    # every op precision (fp8 Linears too) and every plan precision ("mixed" too) runs on the GPU runtime
    assert plan_format.GPU_PRECISIONS is types.OP_PRECISIONS
    assert plan_format.GPU_PLAN_PRECISIONS is types.PLAN_PRECISIONS
    assert lower.GPU_OP_TYPES is plan_format.GPU_OP_TYPES and lower.GPU_ACTIVATIONS is plan_format.GPU_ACTIVATIONS


def test_modules_share_the_one_definition():
    from trtrun import export, reference
    from trtrun.bench import config, models
    from trtrun.builder import precision
    from trtrun.check import core
    from trtrun.cli import bench, options
    from trtrun.corpus import job
    from trtrun.embed import embedder

    for mod in (reference, precision, options, bench, config):
        assert mod.PRECISIONS is types.PRECISIONS
    assert embedder.BACKENDS is options.BACKENDS is types.BACKEND_CHOICES
    assert config.BACKENDS is types.BACKENDS
    assert export.NAMED_ARCHS is core.NAMED_ARCHS is options.NAMED_ARCHS is types.NAMED_ARCHS
    assert models.NAMED is export.EXPORT_ARCHS is options.EXPORT_ARCHS is types.EXPORT_ARCHS
    assert job.FORMATS is types.CORPUS_FORMATS and job.ON_ERROR is types.ON_ERROR


def test_text_sets_match_the_data_files():
    from trtrun import data

    # data.TEXT_SETS is the key view of its file table (its error message lists them in that table's order)
    assert set(data.TEXT_SETS) == set(types.TEXT_SETS)


def test_gemm_search_defaults_are_one_table():
    import inspect

    from trtrun import runtime
    from trtrun.embed import embedder
    from trtrun.bench import config
    from trtrun.cli import serve

    d = types.GEMM_SEARCH_DEFAULTS
    # the documented per-entry-point choices: tuning pays off over a bench's many runs; a service's first
    # shapes are met in requests
    assert d == {"runtime": "focused", "bench": "focused", "embedder": "heuristic", "serve": "heuristic",
                 "run": "heuristic"}
    bench_default = next(f.default for f in dataclasses.fields(config.BenchConfig) if f.name == "gemm_search")
    assert runtime.ContextOptions().gemm_search == "focused" and bench_default == "focused"
    assert inspect.signature(embedder.Embedder).parameters["gemm_search"].default == "heuristic"
    opt = next(p for p in serve.command.params if p.name == "gemm_search")
    assert opt.default == "heuristic" and tuple(opt.type.choices) == types.GEMM_SEARCHES
    assert types.check_gemm_search("exhaustive") == "exhaustive"
    with pytest.raises(InputError, match="gemm_search must be one of heuristic, focused, exhaustive, got 'fast'"):
        types.check_gemm_search("fast", InputError)


def _import_cycles_tool():
    import importlib.util

    path = PKG.parent / "tools" / "import_cycles.py"
    spec = importlib.util.spec_from_file_location("import_cycles", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_in_the_package_lazy_imports_included():
    tool = _import_cycles_tool()
    graph = tool.import_graph(PKG)
    assert len(graph) > 50 and "trtrun.bench.analysis" in graph["trtrun.bench.plots"]
    assert tool.cycles(graph) == []


def test_the_cycle_finder_sees_a_lazy_cycle(tmp_path):
    # a cycle closed only by an import inside a function, and one through `from . import x`, are both found
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import d\n")
    (pkg / "d.py").write_text("import p.sub.c\n")
    (pkg / "e.py").write_text("from . import a\n")  # a one-way edge: no cycle
    tool = _import_cycles_tool()
    assert tool.cycles(tool.import_graph(pkg)) == [["p.a", "p.b"], ["p.d", "p.sub.c"]]


def test_no_module_reaches_into_the_runtimes_private_names():
    # outside trtrun/runtime/, the GPU runtime is used through its public names (GEMM caches, context options)
    found = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "runtime" and path.parent.parent == PKG:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and "runtime" in (node.module or "").split("."):
                found += [f"{path.relative_to(PKG)}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "runtime" \
                    and node.attr.startswith("_"):
                found.append(f"{path.relative_to(PKG)}:{node.lineno} runtime.{node.attr}")
    assert found == []


def test_tests_are_arranged_like_the_package():
    # a test folder names the package folder it tests (gpu: the GPU runtime's tests, tools: tools/'s scripts);
    # test files of modules at trtrun's top level stay at tests/'s root
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert folders - packages - {"gpu", "tools"} == set()
    for f in folders - {"gpu"}:
        assert any((tests / f).glob("test_*.py")), f"tests/{f}/ holds no tests"
