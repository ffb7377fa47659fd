"""What a sweep measures: models, grids, engines, timing knobs. Built from the command line and/or a
config file (TOML or JSON, e.g. bench/paper.toml), validated before any work starts.

Every bad setting raises BenchConfigError (a ValueError) naming the setting, the value and what is allowed:
an empty grid, an unknown baseline or precision, a non-positive size, a sequence above the model's
positions, a batch above a plan's profile (the last two once the model is known: see models.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import TrtrunError
from ..types import (BACKENDS, BASELINES, BENCH_BATCHES, BENCH_SEQS, CUDA_GRAPHS, EXPORT_ARCHS, GEMM_SEARCH_DEFAULTS,
                     GEMM_SEARCHES, GRID_MODES, OP_PRECISIONS, PRECISIONS)

DEFAULT_GEMM_SEARCH = GEMM_SEARCH_DEFAULTS["bench"]

# torch.compile compiles once per shape (dynamic=False), 10-30 s each for BERT-base: by default only this
# 3 x 3 subset (the speed grid's shapes, bench/grid.toml), intersected with the grid.
DEFAULT_COMPILE_SUBSET = {"batch": (1, 8, 32), "seq": (32, 128, 512)}
# onnxruntime fp32 on the CPU takes seconds per run at batch 32 x 512: the same subset by default.
DEFAULT_CPU_SUBSET = {"batch": (1, 8, 32), "seq": (32, 128, 512)}


class BenchConfigError(TrtrunError, ValueError):
    """A bench setting is invalid (the message names the setting and the value)."""


def engine_name(kind: str, precision: str | None = None) -> str:
    """'trtrun-hybrid', 'torch-fp32', ... : the engine column of the results."""
    return f"trtrun-{precision}" if kind == "trtrun" else kind


@dataclass
class BenchConfig:
    models: list[str]
    out: Path
    batch: list[int] = field(default_factory=lambda: list(BENCH_BATCHES))
    seq: list[int] = field(default_factory=lambda: list(BENCH_SEQS))
    precisions: list[str] | None = None  # None: all three (or a plan's own precision)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    cuda_graphs: str = "on"
    backend: str = "gpu"
    gemm_search: str = DEFAULT_GEMM_SEARCH  # Context gemm_search of trtrun's GPU runs
    gemm_cache: Path | None = None  # GEMM cache file: loaded (if it exists) before the sweep, saved after
    resume: bool = False
    overwrite: bool = False
    retry_failed: bool = False
    warmup: int = 50
    iters: int = 200
    min_iters: int = 10
    max_time: float | None = 1.0  # seconds per timed phase of a point (GPU loop; end-to-end loop)
    input_sets: int = 4
    compile_grid: str = "subset"
    compile_batch: list[int] = field(default_factory=lambda: list(DEFAULT_COMPILE_SUBSET["batch"]))
    compile_seq: list[int] = field(default_factory=lambda: list(DEFAULT_COMPILE_SUBSET["seq"]))
    cpu_grid: str = "subset"
    cpu_batch: list[int] = field(default_factory=lambda: list(DEFAULT_CPU_SUBSET["batch"]))
    cpu_seq: list[int] = field(default_factory=lambda: list(DEFAULT_CPU_SUBSET["seq"]))
    cpu_min_iters: int = 3
    cpu_threads: int | None = None  # None: every host core
    overrides: dict = field(default_factory=dict)  # named architectures: hidden_size=..., ...
    allow_large: bool = False  # named architectures over 4 GiB of fp32 weights (trtrun.export.export_model)
    seed: int = 0
    tokens: dict = field(default_factory=dict)  # model name -> token-id file (.npz), else the data folder
    torch_model: str | None = None  # HF model folder the ONNX came from (torch baselines for ONNX/plan input)
    cache_dir: Path | None = None  # exported ONNX and built plans (default OUT/cache)
    deadline: float | None = None  # stop starting points after this many seconds (resume later)
    device: int = 0
    plots: bool = True
    command_line: str = ""
    config_file: str | None = None

    # ---------------------------------------------------------------- derived
    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"

    def graph_modes(self) -> list[str]:
        return ["on", "off"] if self.cuda_graphs == "both" else [self.cuda_graphs]

    def baseline_shapes(self, baseline: str) -> list[tuple[int, int]]:
        """The (batch, seq) points a baseline runs at: the grid, or its subset (intersected with the grid)."""
        grid = [(b, s) for b in self.batch for s in self.seq]
        if baseline == "torch-compile" and self.compile_grid == "subset":
            return [(b, s) for b, s in grid if b in self.compile_batch and s in self.compile_seq]
        if baseline == "cpu" and self.cpu_grid == "subset":
            return [(b, s) for b, s in grid if b in self.cpu_batch and s in self.cpu_seq]
        return grid

    def validate(self) -> "BenchConfig":
        if not self.models:
            raise BenchConfigError("no MODEL given (an ONNX file, a .plan, or a named architecture such as bert-base), "
                                   "neither on the command line nor in the config file's `models`")
        for name in ("batch", "seq"):
            vals = getattr(self, name)
            _positive_ints(vals, f"--{name}", allow_empty=False)
            if len(set(vals)) != len(vals):
                raise BenchConfigError(f"--{name}: duplicate values in {vals}")
            setattr(self, name, sorted(vals))
        for name in ("compile_batch", "compile_seq", "cpu_batch", "cpu_seq"):
            _positive_ints(getattr(self, name), name.replace("_", "-"), allow_empty=True)
        if self.precisions is not None:
            if not self.precisions:
                raise BenchConfigError("--precision: empty list; choose from " + ", ".join(OP_PRECISIONS))
            bad = [p for p in self.precisions if p not in OP_PRECISIONS]
            if bad:
                raise BenchConfigError(f"--precision: unknown {bad}; choose from {', '.join(OP_PRECISIONS)}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise BenchConfigError(f"--baselines: unknown baseline {', '.join(map(repr, bad))}; choose from "
                                   f"{', '.join(BASELINES)} (or none)")
        if len(set(self.baselines)) != len(self.baselines):
            raise BenchConfigError(f"--baselines: duplicates in {self.baselines}")
        for name, allowed in (("cuda_graphs", CUDA_GRAPHS), ("backend", BACKENDS), ("gemm_search", GEMM_SEARCHES),
                              ("compile_grid", GRID_MODES), ("cpu_grid", GRID_MODES)):
            if getattr(self, name) not in allowed:
                raise BenchConfigError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not one of "
                                       f"{', '.join(allowed)}")
        for name, lo in (("warmup", 0), ("iters", 1), ("min_iters", 1), ("input_sets", 1), ("cpu_min_iters", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise BenchConfigError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if self.min_iters > self.iters:
            raise BenchConfigError(f"--min-iters {self.min_iters} is above --iters {self.iters}")
        for name in ("max_time", "deadline"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise BenchConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v!r}")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise BenchConfigError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}")
        if self.resume and self.overwrite:
            raise BenchConfigError("--resume and --overwrite contradict each other")
        self.out = Path(self.out)
        return self


def _positive_ints(vals, what: str, allow_empty: bool) -> None:
    if not isinstance(vals, (list, tuple)):
        raise BenchConfigError(f"{what} must be a list of positive integers, got {vals!r}")
    if not vals and not allow_empty:
        raise BenchConfigError(f"{what}: the grid is empty; give one or more positive integers")
    for v in vals:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BenchConfigError(f"{what} must hold positive integers, got {v!r} in {list(vals)}")


# ------------------------------------------------------------------------------------------ config files
# keys a config file may hold (a subset of BenchConfig's fields, plus tables `compile`, `cpu`, `tokens`,
# `model_size`); unknown keys are errors, so a typo does not silently run the defaults.
_FILE_KEYS = {"models", "batch", "seq", "precision", "precisions", "baselines", "cuda_graphs", "backend", "warmup",
              "gemm_search", "gemm_cache",
              "iters", "min_iters", "max_time", "input_sets", "compile", "cpu", "tokens", "model_size", "allow_large",
              "seed", "torch_model", "description"}


def read_config_file(path) -> dict:
    """A config file (.toml or .json) as keyword arguments for BenchConfig (paths made absolute, relative
    to the file). Unknown keys and wrong types are BenchConfigErrors naming the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise BenchConfigError(f"config file {p} does not exist")
    try:
        if p.suffix == ".toml":
            import tomllib

            with open(p, "rb") as f:
                raw = tomllib.load(f)
        elif p.suffix == ".json":
            with open(p, encoding="utf-8") as f:
                raw = json.load(f)
        else:
            raise BenchConfigError(f"config file {p}: expected a .toml or .json file")
    except BenchConfigError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError
        raise BenchConfigError(f"config file {p}: cannot parse it: {e}") from e
    if not isinstance(raw, dict):
        raise BenchConfigError(f"config file {p}: the top level must be a table/object")
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise BenchConfigError(f"config file {p}: unknown key(s) {unknown}; known: {sorted(_FILE_KEYS)}")
    kw: dict[str, Any] = {}

    def take(key, dest=None, types=(list,)):
        if key in raw:
            v = raw[key]
            if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
                raise BenchConfigError(f"config file {p}: `{key}` has the wrong type ({type(v).__name__})")
            kw[dest or key] = v

    take("models")
    take("batch")
    take("seq")
    take("precision", "precisions")
    take("precisions")
    take("baselines")
    take("cuda_graphs", types=(str,))
    take("backend", types=(str,))
    take("gemm_search", types=(str,))
    if "gemm_cache" in raw:
        if not isinstance(raw["gemm_cache"], str):
            raise BenchConfigError(f"config file {p}: `gemm_cache` has the wrong type ({type(raw['gemm_cache']).__name__})")
        kw["gemm_cache"] = (p.parent / raw["gemm_cache"]).resolve()
    for k in ("warmup", "iters", "min_iters", "input_sets", "seed"):
        take(k, types=(int,))
    take("max_time", types=(int, float))
    take("allow_large", types=(bool,))
    take("torch_model", types=(str,))
    for table, prefix in (("compile", "compile"), ("cpu", "cpu")):
        if table in raw:
            t = raw[table]
            if not isinstance(t, dict):
                raise BenchConfigError(f"config file {p}: `{table}` must be a table")
            bad = sorted(set(t) - {"grid", "batch", "seq", "min_iters", "threads"})
            if bad or (table == "compile" and {"min_iters", "threads"} & set(t)):
                raise BenchConfigError(f"config file {p}: unknown key(s) in [{table}]: {bad or sorted(t)}")
            for k in ("grid", "batch", "seq"):
                if k in t:
                    kw[f"{prefix}_{k}"] = t[k]
            if "min_iters" in t:
                kw["cpu_min_iters"] = t["min_iters"]
            if "threads" in t:
                kw["cpu_threads"] = t["threads"]
    if "tokens" in raw:
        t = raw["tokens"]
        if not isinstance(t, dict) or not all(isinstance(v, str) for v in t.values()):
            raise BenchConfigError(f"config file {p}: `tokens` must map model names to token files")
        kw["tokens"] = {k: str((p.parent / v).resolve()) for k, v in t.items()}
    if "model_size" in raw:
        t = raw["model_size"]
        if not isinstance(t, dict) or not all(isinstance(v, int) for v in t.values()):
            raise BenchConfigError(f"config file {p}: `model_size` must map config keys to integers")
        kw["overrides"] = dict(t)
    if "torch_model" in kw:
        kw["torch_model"] = str((p.parent / kw["torch_model"]).resolve())
    if "models" in kw:
        # a model that names a file is relative to the config file; named architectures stay as they are
        kw["models"] = [m if (m in EXPORT_ARCHS or Path(m).is_absolute()
                              or not (p.parent / m).exists()) else str((p.parent / m).resolve())
                        for m in kw["models"]]
    kw["config_file"] = str(p)
    return kw


def config_fields() -> set[str]:
    return {f.name for f in fields(BenchConfig)}
