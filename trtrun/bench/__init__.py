"""`trtrun bench`: the latency table users choose an engine by, measured honestly in one command.

    from trtrun.bench import BenchConfig, run_sweep
    outcome = run_sweep(BenchConfig(models=["bert-base"], out="out/bench", backend="gpu"))

Modules: config (what to measure, validation, config files), models (MODEL -> ONNX/plans/torch model,
cached), inputs (real token ids), runners (trtrun, torch eager/compile, onnxruntime CPU; the timing loop),
stats (min/mean/percentiles), results (results.jsonl / results.csv, resume), sweep (the loop), report
(summary.md), plots (PNG). docs/bench.md describes the method and the outputs. Heavy imports (torch,
onnxruntime, matplotlib) happen inside the functions that need them.
"""

from .config import BASELINES, BenchConfig, BenchConfigError, read_config_file
from .stats import percentile, summarize, throughput

__all__ = ["BenchConfig", "BenchConfigError", "BASELINES", "read_config_file", "run_sweep", "write_report",
           "summarize", "percentile", "throughput"]


def run_sweep(cfg, **kw):
    from .sweep import run_sweep as _run

    return _run(cfg, **kw)


def write_report(store, cfg=None, **kw):
    from .report import write_report as _write

    return _write(store, cfg, **kw)
