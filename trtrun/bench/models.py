"""The models a sweep measures: resolve MODEL (ONNX file, plan file, or named architecture), export and
build what is missing (cached), and recreate the PyTorch model for the torch baselines.

Cache layout (default OUT/cache; `--cache-dir` to share it between sweeps):
    <cache>/<model>-<tag>/model.onnx             exported fp32 ONNX (named architectures)
    <cache>/<model>-<tag>/<precision>-b<B>-s<S>.plan   plans built with profile batch (1, opt, B), seq (1, opt, S)
where <tag> hashes what the artifact depends on (architecture, size overrides, seed; the ONNX file's
path, size and mtime), so a changed input never reuses a stale artifact. Files are written to a
temporary name and renamed, so a sweep killed mid-build leaves no half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_path
from ..types import ENCODER_ARCHS, EXPORT_ARCHS as NAMED
from .config import BenchConfig, BenchConfigError

# positions of the two oldest named architectures' default configs (BertConfig 512, GPT2Config 1024), known
# without importing transformers; the others' come from their config (trtrun.export.named_config)
_NAMED_POSITIONS = {"bert-base": 512, "gpt2": 1024}
# size overrides in a model's result name: bert-base-h64-l1 (hidden 64, 1 layer)
_SHORT = {"hidden_size": "h", "num_hidden_layers": "l", "num_attention_heads": "a", "intermediate_size": "i",
          "vocab_size": "v", "max_position_embeddings": "p"}


@dataclass
class ModelSpec:
    """One MODEL of the sweep."""

    name: str  # the `model` column of the results
    kind: str  # "arch" | "onnx" | "plan"
    source: str  # as given
    onnx: Path | None = None  # fp32 ONNX (the CPU baseline and plan builds); None until exported / unknown
    plan_path: Path | None = None  # kind == "plan": the plan file
    plan_precision: str | None = None  # kind == "plan": its precision
    overrides: dict = field(default_factory=dict)
    allow_large: bool = False  # kind == "arch": over 4 GiB of fp32 weights is allowed (export, torch baselines)
    seed: int = 0
    max_positions: int | None = None
    profile: dict | None = None  # kind == "plan": the plan's profile
    torch_source: tuple | None = None  # ("arch", name, overrides, seed) | ("hf", folder) | None
    torch_unavailable: str | None = None  # why the torch baselines cannot run
    cpu_unavailable: str | None = None  # why the CPU baseline cannot run
    arch: str | None = None  # "encoder" | "decoder" once known
    tag: str = ""
    plans: dict = field(default_factory=dict)  # precision -> plan path (built or given)

    def cache_dir(self, cfg: BenchConfig) -> Path:
        return cfg.cache / f"{self.name}-{self.tag}"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _file_tag(p: Path) -> str:
    st = p.stat()
    return _hash([str(p.resolve()), st.st_size, int(st.st_mtime)])


def resolve_model(source: str, cfg: BenchConfig) -> ModelSpec:
    """A ModelSpec for MODEL, checked against the grid where the model's limits are known now
    (named architecture: positions; plan: its profile and precision). ONNX files are checked when built."""
    src = str(source)
    if src in NAMED:
        overrides = dict(cfg.overrides)
        positions = overrides.get("max_position_embeddings", _NAMED_POSITIONS.get(src))
        if positions is None:
            positions = _config_positions(src, overrides)
        name = src if not overrides else f"{src}-" + "-".join(
            f"{_SHORT.get(k, k)}{v}" for k, v in sorted(overrides.items()))
        spec = ModelSpec(name=name, kind="arch", source=src, overrides=overrides, seed=cfg.seed,
                         allow_large=cfg.allow_large, max_positions=int(positions),
                         tag=_hash([src, overrides, cfg.seed]), arch="encoder" if src in ENCODER_ARCHS else "decoder")
        spec.torch_source = ("arch", src, overrides, cfg.seed)
        _check_positions(spec, cfg)
        return spec
    p = Path(src)
    if not p.exists():
        raise BenchConfigError(f"MODEL {src!r}: no such file, and not a named architecture ({', '.join(NAMED)})")
    if p.is_dir():
        raise BenchConfigError(f"MODEL {src!r} is a folder: export it first (`trtrun export {src} -o model.onnx`) "
                               f"and pass the .onnx, or pass a .plan")
    if cfg.overrides:
        raise BenchConfigError("--hidden-size/--layers/... apply to named architectures only, not to "
                               f"{p.name}")
    if p.suffix == ".plan":
        from ..plan import load_plan

        plan = load_plan(p)
        spec = ModelSpec(name=p.stem, kind="plan", source=src, plan_path=p, plan_precision=plan.precision,
                         profile={k: tuple(v) for k, v in plan.profile.items()}, tag=_file_tag(p),
                         arch=plan.model.get("arch"), max_positions=plan.model.get("max_position"))
        spec.plans[plan.precision] = p
        if cfg.precisions is not None and set(cfg.precisions) != {plan.precision}:
            raise BenchConfigError(f"MODEL {p.name} is a {plan.precision} plan; --precision "
                                   f"{','.join(cfg.precisions)} cannot be measured from it (pass the ONNX to "
                                   f"build other precisions)")
        (bmin, _, bmax), (smin, _, smax) = spec.profile["batch"], spec.profile["seq"]
        for axis, vals, lo, hi in (("batch", cfg.batch, bmin, bmax), ("seq", cfg.seq, smin, smax)):
            out = [v for v in vals if not lo <= v <= hi]
            if out:
                raise BenchConfigError(f"--{axis} {','.join(map(str, out))} is outside the plan's profile: "
                                       f"{p.name} takes {axis} {lo}..{hi}")
        onnx = Path((plan.source or {}).get("path") or "")
        if onnx.suffix == ".onnx" and onnx.is_file():
            spec.onnx = onnx
        else:
            spec.cpu_unavailable = (f"the plan's source ONNX ({onnx if str(onnx) not in ('', '.') else 'not recorded'}) "
                                    f"is not there")
        _torch_from_flag(spec, cfg, "a plan of unknown origin")
        return spec
    if p.suffix == ".onnx":
        spec = ModelSpec(name=p.stem, kind="onnx", source=src, onnx=p, tag=_file_tag(p))
        _torch_from_flag(spec, cfg, "an ONNX file")
        return spec
    raise BenchConfigError(f"MODEL {src!r}: expected an .onnx or .plan file, or one of {', '.join(NAMED)}")


def _config_positions(src: str, overrides: dict) -> int:
    from ..export import named_config

    try:
        config = named_config(src, overrides)
    except ValueError as e:  # an override the architecture does not know
        raise BenchConfigError(str(e)) from None
    n = int(config.max_position_embeddings)
    if src == "mpnet":  # positions counted from padding_idx + 1, as RoBERTa's: 514 rows hold 512 tokens
        n -= int(config.pad_token_id) + 1
    return n


def _torch_from_flag(spec: ModelSpec, cfg: BenchConfig, what: str) -> None:
    if cfg.torch_model:
        d = Path(cfg.torch_model)
        if not (d / "config.json").is_file():
            raise BenchConfigError(f"--torch-model {d}: not a Hugging Face model folder (no config.json)")
        spec.torch_source = ("hf", str(d))
    else:
        spec.torch_unavailable = (f"baseline unavailable: {spec.name} is {what}, and the PyTorch model its "
                                  f"weights came from is unknown (pass --torch-model DIR)")


def _check_positions(spec: ModelSpec, cfg: BenchConfig) -> None:
    if spec.max_positions is not None:
        over = [s for s in cfg.seq if s > spec.max_positions]
        if over:
            raise BenchConfigError(f"--seq {','.join(map(str, over))} is above {spec.name}'s "
                                   f"{spec.max_positions} positions")


def grid_profile(cfg: BenchConfig) -> dict:
    """The build profile covering the grid: batch (1, opt, max), seq (1, opt, max)."""
    bmax, smax = max(cfg.batch), max(cfg.seq)
    return {"batch": (1, min(8, bmax), bmax), "seq": (1, min(128, smax), smax)}


def ensure_onnx(spec: ModelSpec, cfg: BenchConfig, log=None) -> Path:
    """The fp32 ONNX of `spec`, exporting a named architecture (once; cached)."""
    if spec.onnx is not None:
        return spec.onnx
    if spec.kind != "arch":
        raise BenchConfigError(f"{spec.name}: no ONNX model to build from ({spec.cpu_unavailable})")
    d = spec.cache_dir(cfg)
    path = d / "model.onnx"
    if not path.is_file():
        from ..export import export_model

        d.mkdir(parents=True, exist_ok=True)
        if log:
            log(f"exporting {spec.source} (random weights, seed {spec.seed}"
                f"{', ' + str(spec.overrides) if spec.overrides else ''}) to {path}")
        with atomic_path(path, suffix=".onnx") as tmp:
            export_model(spec.source, tmp, overrides=spec.overrides or None, seed=spec.seed,
                         allow_large=spec.allow_large)
    spec.onnx = path
    return path


def plan_cache_path(spec: ModelSpec, precision: str, cfg: BenchConfig) -> Path:
    prof = grid_profile(cfg)
    return spec.cache_dir(cfg) / f"{precision}-b{prof['batch'][2]}-s{prof['seq'][2]}.plan"


def ensure_plan(spec: ModelSpec, precision: str, cfg: BenchConfig, log=None) -> Path:
    """The plan of `spec` at `precision` covering the grid (built once; cached)."""
    if precision in spec.plans:
        return spec.plans[precision]
    if spec.kind == "plan":
        raise BenchConfigError(f"{spec.name} is a {spec.plan_precision} plan; it has no {precision} version")
    onnx = ensure_onnx(spec, cfg, log)
    prof = grid_profile(cfg)
    d = spec.cache_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    path = plan_cache_path(spec, precision, cfg)
    if not path.is_file():
        from ..builder import build

        if log:
            log(f"building {spec.name} {precision} (profile batch {prof['batch']}, seq {prof['seq']})")
        try:
            plan = build(onnx, precision=precision, profile=prof)
        except ValueError as e:
            if "positions" in str(e):
                raise BenchConfigError(f"--seq {max(cfg.seq)} is above the positions of {spec.name}: {e}") from e
            raise
        plan.save(path)  # atomic (temporary file, then rename)
    spec.plans[precision] = path
    if spec.arch is None:
        from ..plan import load_plan

        spec.arch = load_plan(path).model.get("arch")
    return path


# ------------------------------------------------------------------------------------------ PyTorch
def load_torch_model(spec: ModelSpec):
    """(fp32 torch model on the CPU in eval mode, description) for the torch baselines, same weights as
    the ONNX: named architectures are recreated exactly as trtrun.export made them (same config, seed
    and weight randomization); a Hugging Face folder is loaded from disk. Attention runs through
    PyTorch's SDPA where transformers offers it (HF's default and the faster path), else eager."""
    if spec.torch_source is None:
        raise BenchConfigError(spec.torch_unavailable or f"{spec.name}: no PyTorch model")
    from ..export import _import_torch, _load_model

    torch, transformers = _import_torch()
    kind = spec.torch_source[0]
    if kind == "arch":
        _, src, overrides, seed = spec.torch_source
        model, _ = _load_model(torch, transformers, src, overrides or None, seed, spec.allow_large)
    else:
        model, _ = _load_model(torch, transformers, spec.torch_source[1], None, 0)
    model = model.float().eval()
    attn = "eager"
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("sdpa")
            attn = "sdpa"
        except Exception:  # noqa: BLE001 - a model without SDPA support keeps eager attention
            attn = "eager"
    return model, {"torch_attention": attn, "torch_source": list(map(str, spec.torch_source))}
