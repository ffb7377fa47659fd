"""The sweep: every (model, engine, batch, seq, cuda_graphs) point of the configuration, measured in one
process on one card, appended to results.jsonl as it finishes; then results.csv, summary.md and plots.

Order: model by model; within a model, shape by shape (batch, then sequence); at each shape every engine
(trtrun's precisions, then the baselines). So a sweep stopped anywhere (deadline, Ctrl-C, a lost machine)
leaves whole shapes with all their engines measured in the same session, side by side.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelTooLargeError
from .config import DEFAULT_GEMM_SEARCH, BenchConfig, BenchConfigError, PRECISIONS, engine_name
from .inputs import make_sets, token_stream
from .models import ModelSpec, ensure_onnx, ensure_plan, load_torch_model, plan_cache_path, resolve_model
from .progress import ProgressBar
from .results import ResultStore, point_key
from .runners import (OrtCpuRunner, Timing, TorchRunner, TrtrunRunner, Unavailable, output_cosine)
from .stats import throughput

BASELINE_PRECISION = {"torch-fp32": "fp32", "torch-fp16": "fp16", "torch-compile": "fp16", "cpu": "fp32"}
# first guesses of a point's cost (s) before any point of that engine was measured (deadline, ETA)
_GUESS_S = {"torch-compile": 45.0, "cpu": 8.0}
_GUESS_DEFAULT_S = 2.5
# one-off costs of a BERT-base-sized model (measured on 2 busy CPU cores: export 27 s, hybrid build 29 s)
_SETUP_GUESS_S = {"export": 30.0, "build": 30.0, "torch": 10.0, "cpu": 5.0}


@dataclass
class Point:
    spec: ModelSpec
    engine: str
    precision: str
    batch: int
    seq: int
    cuda_graphs: str

    @property
    def key(self):
        return (self.spec.name, self.engine, self.batch, self.seq, self.cuda_graphs)

    @property
    def label(self) -> str:
        g = f" graphs {self.cuda_graphs}" if self.engine.startswith("trtrun") and self.cuda_graphs in ("on", "off") else ""
        return f"{self.spec.name} {self.engine} b{self.batch} s{self.seq}{g}"


@dataclass
class SweepOutcome:
    measured: int
    skipped: int
    left: int
    stopped: str | None  # why the sweep stopped early (deadline), None when every point is done
    store: ResultStore


def precisions_of(spec: ModelSpec, cfg: BenchConfig) -> list[str]:
    if cfg.precisions is not None:
        return list(cfg.precisions)
    return [spec.plan_precision] if spec.kind == "plan" else list(PRECISIONS)


def plan_points(cfg: BenchConfig, specs: list[ModelSpec]) -> list[Point]:
    pts = []
    for spec in specs:
        precs = precisions_of(spec, cfg)
        trt_graphs = cfg.graph_modes() if cfg.backend == "gpu" else ["n/a"]
        shapes = {b: set(cfg.baseline_shapes(b)) for b in cfg.baselines}
        for b in cfg.batch:
            for s in cfg.seq:
                for p in precs:
                    for g in trt_graphs:
                        pts.append(Point(spec, engine_name("trtrun", p), p, b, s, g))
                for base in cfg.baselines:
                    if (b, s) in shapes[base]:
                        g = "on" if base == "torch-compile" else "off" if (base.startswith("torch") and
                                                                           cfg.backend == "gpu") else "n/a"
                        pts.append(Point(spec, base, BASELINE_PRECISION[base], b, s, g))
    return pts


class _SetupFailed(RuntimeError):
    """A runner could not be created (recorded as status error at each of its points, not retried)."""


class _ModelState:
    """Runners, token stream and failures of the model being measured (freed when it is done)."""

    def __init__(self, spec: ModelSpec, cfg: BenchConfig, log):
        self.spec, self.cfg, self.log = spec, cfg, log
        self.runners: dict = {}
        self.unavailable: dict = {}
        self.failed: dict = {}  # (engine, graphs) -> why its runner could not be made (points: status error)
        self.engines: dict = {}  # precision -> shared runtime Engine (contexts per graph mode)
        self.torch_base = None
        self.torch_info: dict = {}
        self.stream = None
        self.stream_desc = None
        self.input_names = None
        self.type_vocab = None

    def setup_guess(self, pt: Point) -> float:
        """Seconds the runner of `pt` still needs before its first point (export, build, model load)."""
        k = (pt.engine, pt.cuda_graphs)
        if k in self.runners or k in self.unavailable or k in self.failed:
            return 0.0
        t = 0.0
        spec, cfg = self.spec, self.cfg
        if spec.kind == "arch" and spec.onnx is None and not (spec.cache_dir(cfg) / "model.onnx").is_file():
            t += _SETUP_GUESS_S["export"]
        if pt.engine.startswith("trtrun-") and pt.precision not in spec.plans:
            t += 0.0 if plan_cache_path(spec, pt.precision, cfg).is_file() else _SETUP_GUESS_S["build"]
        elif pt.engine.startswith("torch") and self.torch_base is None:
            t += _SETUP_GUESS_S["torch"]
        elif pt.engine == "cpu":
            t += _SETUP_GUESS_S["cpu"]
        return t

    def tokens(self):
        if self.stream is None:
            plan = ensure_plan(self.spec, precisions_of(self.spec, self.cfg)[0], self.cfg, self.log)
            from ..plan import load_plan

            pl = load_plan(plan)
            self.input_names = [i["name"] for i in pl.inputs]
            self.type_vocab = pl.type_vocab_size
            tf = self.cfg.tokens.get(self.spec.name) or self.cfg.tokens.get(self.spec.source)
            self.stream, self.stream_desc = token_stream(plan, tf)
        return self.stream

    def runner(self, pt: Point):
        k = (pt.engine, pt.cuda_graphs)
        if k in self.unavailable:
            raise Unavailable(self.unavailable[k])
        if k in self.failed:
            raise _SetupFailed(self.failed[k])
        if k in self.runners:
            return self.runners[k]
        cfg, spec = self.cfg, self.spec
        try:
            if pt.engine.startswith("trtrun-"):
                if pt.precision == "fp8" and cfg.backend == "gpu":
                    raise Unavailable("fp8: the GPU runtime has no fp8 GEMM path yet (the reference backend runs "
                                      "fp8 plans)")
                plan = ensure_plan(spec, pt.precision, cfg, self.log)
                shared = self.engines.get(pt.precision)
                r = TrtrunRunner(plan, pt.precision, pt.cuda_graphs, cfg.backend, cfg.device, engine=shared,
                                 gemm_search=cfg.gemm_search)
                if r.engine is not None:
                    self.engines[pt.precision] = r.engine
            elif pt.engine.startswith("torch"):
                if spec.torch_unavailable:
                    raise Unavailable(spec.torch_unavailable)
                if self.torch_base is None:
                    self.log(f"loading the PyTorch model of {spec.name} for the torch baselines")
                    self.torch_base, self.torch_info = load_torch_model(spec)
                r = TorchRunner(self.torch_base, pt.engine, cfg.backend, cfg.device)
                r.extra.update(self.torch_info)
            elif pt.engine == "cpu":
                if spec.cpu_unavailable:
                    raise Unavailable(f"baseline unavailable: {spec.cpu_unavailable}")
                r = OrtCpuRunner(ensure_onnx(spec, cfg, self.log), cfg.cpu_threads)
            else:  # pragma: no cover - plan_points makes no other engine
                raise AssertionError(pt.engine)
        except Unavailable as e:
            self.unavailable[k] = str(e)
            raise
        except (BenchConfigError, ModelTooLargeError, KeyboardInterrupt):  # (a named shape refused for its size)
            raise
        except ImportError as e:
            self.unavailable[k] = f"{type(e).__name__}: {e}"
            raise Unavailable(self.unavailable[k]) from e
        except Exception as e:  # noqa: BLE001 - e.g. the context's arena does not fit: every point of it fails
            self.failed[k] = f"setting up {pt.engine}: {type(e).__name__}: {e}"
            raise _SetupFailed(self.failed[k]) from e
        self.runners[k] = r
        return r

    def close(self):
        for r in self.runners.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - freeing must not hide the sweep's result
                pass
        self.runners.clear()
        self.engines.clear()
        self.torch_base = None
        gc.collect()


def _cross_checks(state: _ModelState, store: ResultStore, session: int, sets, batch, seq) -> None:
    """Once per model: do the engines compute the same function? Cosine of outputs on one real-text set."""
    have = {(c["model"], c["a"], c["b"]) for c in store.checks}
    cands = {}
    for (eng, _g), r in state.runners.items():
        if eng not in cands and (eng in ("torch-fp32", "cpu") or eng.startswith("trtrun-")):
            cands[eng] = r
    names = sorted(cands)
    feeds = sets[0]
    outs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a.startswith("trtrun-") and b.startswith("trtrun-"):
                continue  # precisions differ by design; trtrun check covers their accuracy
            if (state.spec.name, a, b) in have:
                continue
            try:
                for n in (a, b):
                    if n not in outs:
                        outs[n] = cands[n].outputs_for(feeds)
                cos = output_cosine(outs[a], outs[b])
                note = None
            except Exception as e:  # noqa: BLE001 - a check that cannot run is recorded, not fatal
                cos, note = None, f"{type(e).__name__}: {e}"
            store.add_check({"session": session, "model": state.spec.name, "a": a, "b": b, "batch": batch,
                             "seq": seq, "cosine": cos, "note": note})


def _record(pt: Point, session: int, card, backend: str, res: dict | None, status: str, note: str | None,
            timer, mem_source, duration: float, input_sets: int) -> dict:
    rec = {"session": session, "model": pt.spec.name, "engine": pt.engine, "precision": pt.precision,
           "batch": pt.batch, "seq": pt.seq, "cuda_graphs": pt.cuda_graphs, "status": status,
           "device": ("cpu" if pt.engine == "cpu" or backend == "reference" else f"gpu: {card}"),
           "backend": backend, "note": note}
    if res is not None:
        gpu, e2e = res.get("gpu_ms"), res.get("e2e_ms")
        basis = gpu or e2e
        rec.update(gpu_ms=gpu, gpu_timer=timer if gpu else None, e2e_ms=e2e)
        rec.update(throughput(pt.batch, pt.seq, basis["mean"]) if basis else {})
        if e2e:
            t = throughput(pt.batch, pt.seq, e2e["mean"])
            rec.update(e2e_seq_per_s=t["seq_per_s"], e2e_tokens_per_s=t["tokens_per_s"])
        rec.update(peak_mem_bytes=res.get("peak_mem_bytes"), mem_source=mem_source if res.get("peak_mem_bytes") else None,
                   warmup=res.get("warmup"), input_sets=input_sets,
                   first_call_s=round(res.get("first_call_s") or 0.0, 4), extra=res.get("extra") or {})
    rec["duration_s"] = round(duration, 3)
    rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return rec


def run_sweep(cfg: BenchConfig, *, log=None, progress: bool = True) -> SweepOutcome:
    """Measure every point of `cfg` not yet in cfg.out/results.jsonl; write the CSV, summary and plots."""
    from . import meta as meta_mod
    from .report import write_report

    t_start = time.perf_counter()
    log = log or (lambda m: None)
    cfg.validate()
    specs = [resolve_model(m, cfg) for m in cfg.models]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BenchConfigError(f"two MODELs have the same name {names}: rename one file")
    if cfg.backend == "gpu":
        from ..backends import choose_backend

        choose_backend("gpu", cfg.device, hint=" (--backend reference times the numpy backend on the CPU)")
    store = ResultStore(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    if store.torn:
        log(f"{store.path}: the last line was cut off (a killed run); dropped it")
    prev = {s.get("backend") for s in store.sessions}
    if prev and cfg.backend not in prev:
        raise BenchConfigError(f"{store.path} holds {', '.join(sorted(map(str, prev)))}-backend results; "
                               f"resuming them with --backend {cfg.backend} would mix them (use another --out)")
    points = plan_points(cfg, specs)
    done = store.done_keys(cfg.retry_failed)
    todo = [p for p in points if p.key not in done]
    skipped = len(points) - len(todo)
    meta = meta_mod.collect(cfg.backend, cfg.command_line, cfg.device)
    cards = {s.get("card") for s in store.sessions}
    if store.sessions and meta.get("card") not in cards:
        log(f"warning: earlier sessions of this sweep ran on {', '.join(map(str, cards))}, this one on "
            f"{meta.get('card')}; the summary compares engines within one card only")
    meta["points_planned"] = len(points)
    meta["points_todo"] = len(todo)
    meta["config"] = _config_doc(cfg)
    if cfg.backend == "gpu" and cfg.gemm_search == "exhaustive":
        log("exhaustive GEMM search: the first run of each GEMM shape times every configuration cuBLASLt accepts "
            "(about a minute for the first shape in a process, 1-16 s for each after; shapes in the GEMM cache "
            "are not timed again)")
    elif cfg.backend != "gpu" and (cfg.gemm_search != DEFAULT_GEMM_SEARCH or cfg.gemm_cache is not None):
        log(f"note: --gemm-search and --gemm-cache apply to --backend gpu only; --backend {cfg.backend} ignores them")
    gemm_cache_note = _load_gemm_cache(cfg, log)
    if gemm_cache_note:
        meta["gemm_cache"] = gemm_cache_note
    session = store.add_session(meta)
    if skipped:
        log(f"resuming: {skipped} of {len(points)} points already in {store.path}")
    timing = Timing(cfg.warmup, cfg.iters, cfg.min_iters, cfg.max_time)
    cpu_timing = Timing(min(cfg.warmup, 3), cfg.iters, min(cfg.cpu_min_iters, cfg.iters), cfg.max_time)
    bar = ProgressBar(len(todo), enabled=progress)
    costs: dict[str, list[float]] = {}

    def guess(pt: Point) -> float:
        c = costs.get(pt.engine)
        return sum(c) / len(c) if c else _GUESS_S.get(pt.engine, _GUESS_DEFAULT_S)

    def eta(i: int) -> float:
        return sum(guess(p) for p in todo[i:])

    measured, stopped = 0, None
    state: _ModelState | None = None
    sets_cache: dict = {}
    bar_log = bar.note if progress else log
    interrupted = True  # until the loop ends normally
    try:
        for i, pt in enumerate(todo):
            if state is None or state.spec is not pt.spec:
                if state is not None:
                    state.close()
                state = _ModelState(pt.spec, cfg, bar_log)
                sets_cache.clear()
            if cfg.deadline is not None:
                elapsed = time.perf_counter() - t_start
                need = guess(pt) + state.setup_guess(pt)
                if elapsed + need > cfg.deadline:
                    stopped = (f"deadline: {elapsed:.0f} s of {cfg.deadline:.0f} s used, the next point "
                               f"({pt.label}) needs about {need:.0f} s")
                    break
            bar.start(pt.label, eta(i))
            t0 = time.perf_counter()
            res = None
            status, note, timer, mem_source = "ok", None, None, None
            try:
                runner = state.runner(pt)
                state.tokens()
                sk = (pt.batch, pt.seq)
                if sk not in sets_cache:
                    sets_cache.clear()
                    sets_cache[sk] = make_sets(state.stream, pt.batch, pt.seq, cfg.input_sets, state.input_names,
                                               seed=cfg.seed, type_vocab=state.type_vocab)
                sets = sets_cache[sk]
                res = runner.measure(pt.batch, pt.seq, sets, cpu_timing if pt.engine == "cpu" else timing)
                timer, mem_source = runner.timer, runner.mem_source
            except Unavailable as e:
                status, note = "unavailable", str(e)
            except (KeyboardInterrupt, BenchConfigError, ModelTooLargeError):  # every point of the model would fail
                raise
            except _SetupFailed as e:
                status, note = "error", str(e)[:2000]
            except Exception as e:  # noqa: BLE001 - a failed point (OOM, a device error) is recorded
                status, note = "error", f"{type(e).__name__}: {e}".strip()[:2000]
                _free_device_memory()
            dt = time.perf_counter() - t0
            rec = _record(pt, session, meta.get("card"), cfg.backend, res, status, note, timer, mem_source, dt,
                          cfg.input_sets)
            if state.stream_desc:
                rec["inputs"] = state.stream_desc
            store.add_point(rec)
            if status == "ok":
                measured += 1
                costs.setdefault(pt.engine, []).append(dt)
                t = rec.get("gpu_ms") or rec.get("e2e_ms")
                result = f"p50 {t['p50']:.3f} ms" if t else "ok"
                if len(state.runners) > 1 and (pt.batch, pt.seq) == (min(cfg.batch), min(cfg.seq)):
                    _cross_checks(state, store, session, sets, pt.batch, pt.seq)
            else:
                result = status + (f" ({note[:60]})" if note else "")
            bar.finish(pt.label, result, eta(i + 1))
        interrupted = False
    finally:
        bar.close()
        if state is not None:
            state.close()
        _save_gemm_cache(cfg, log)
        try:
            store.write_csv()
            write_report(store, cfg, plots=cfg.plots, log=log)
        except Exception as e:  # noqa: BLE001
            if not interrupted:
                raise
            # never hide why the sweep stopped; results.jsonl is intact
            log(f"the report could not be written ({type(e).__name__}: {e}); "
                f"`trtrun bench --report-only --out {cfg.out}` retries it")
    finished = {point_key(r) for r in store.points}
    left = sum(1 for p in points if p.key not in finished)
    return SweepOutcome(measured=measured, skipped=skipped, left=left, stopped=stopped, store=store)


def _load_gemm_cache(cfg: BenchConfig, log) -> dict | None:
    """--gemm-cache: take the GEMM choices a previous run saved (none yet: the file is written at the end)."""
    if cfg.gemm_cache is None or cfg.backend != "gpu":
        return None
    from .. import runtime

    path = Path(cfg.gemm_cache)
    if not path.exists():
        log(f"GEMM cache {path}: not there yet; it is written when the sweep ends")
        return {"path": str(path), "loaded": 0}
    n = runtime.load_gemm_cache(path)
    log(f"GEMM cache {path}: took {n} tuned GEMM choices")
    return {"path": str(path), "loaded": n}


def _save_gemm_cache(cfg: BenchConfig, log) -> None:
    if cfg.gemm_cache is None or cfg.backend != "gpu":
        return
    from .. import runtime

    try:
        n = runtime.save_gemm_cache(cfg.gemm_cache)
        log(f"GEMM cache {cfg.gemm_cache}: saved {n} tuned GEMM choices")
    except Exception as e:  # noqa: BLE001 (a cache that cannot be written must not lose the results)
        log(f"GEMM cache {cfg.gemm_cache} not written: {type(e).__name__}: {e}")


def _free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _config_doc(cfg: BenchConfig) -> dict:
    return {"models": cfg.models, "batch": cfg.batch, "seq": cfg.seq, "precisions": cfg.precisions,
            "baselines": cfg.baselines, "cuda_graphs": cfg.cuda_graphs, "warmup": cfg.warmup, "iters": cfg.iters,
            "min_iters": cfg.min_iters, "max_time": cfg.max_time, "input_sets": cfg.input_sets,
            "compile_grid": cfg.compile_grid, "compile_batch": cfg.compile_batch, "compile_seq": cfg.compile_seq,
            "cpu_grid": cfg.cpu_grid, "cpu_batch": cfg.cpu_batch, "cpu_seq": cfg.cpu_seq,
            "cpu_min_iters": cfg.cpu_min_iters, "cpu_threads": cfg.cpu_threads, "overrides": cfg.overrides,
            "allow_large": cfg.allow_large,
            "gemm_search": cfg.gemm_search, "gemm_cache": str(cfg.gemm_cache) if cfg.gemm_cache else None,
            "seed": cfg.seed, "tokens": cfg.tokens, "config_file": cfg.config_file}
