"""`trtrun check`: numerical fidelity of fp16 and hybrid plans against fp32, where fp16 overflows, random
against real inputs, and downstream accuracy. docs/check.md describes the command and every number.

    from trtrun.check import CheckOptions, run_check, write_reports
    report = run_check(CheckOptions(model="model.onnx", out_dir=Path("out")))
    write_reports(report, "out")          # report.json, report.md, cosine_hist.png, ...

The metric functions (trtrun.check.metrics) and the headroom accumulator (trtrun.check.headroom) are
plain numpy and usable alone.
"""

from .core import BudgetError, CheckOptions, run_check
from .headroom import FP16_MAX, HeadroomAccumulator, why_hybrid_is_safe
from .metrics import (compare_batch, compare_sample, cosine, distribution, mcnemar_exact, nan_ratio,
                      paired_bootstrap_diff, rates, row_cosines, summarize, wilson_interval)
from .report import markdown, write_reports

__all__ = ["BudgetError", "CheckOptions", "run_check", "write_reports", "markdown", "HeadroomAccumulator",
           "why_hybrid_is_safe", "FP16_MAX", "compare_batch", "compare_sample", "cosine", "row_cosines",
           "distribution", "rates", "summarize", "wilson_interval", "paired_bootstrap_diff", "mcnemar_exact",
           "nan_ratio"]
