"""The names trtrun's settings take, each defined once; every module and option imports them from here.

Standard library only: the command line builds its options from these before numpy or the extension loads.
The plan format (trtrun.plan) validates against the same tuples; the integer codes handed to the C++
extension stay in trtrun.runtime, keyed by these names.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "hybrid")  # a plan's (and an op's) precision: docs/plan-format.md

BACKENDS = ("gpu", "reference")  # what runs a plan: the CUDA runtime, or the numpy reference on the CPU
BACKEND_CHOICES = ("auto",) + BACKENDS  # auto: the GPU runtime where usable, else the reference backend

POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "last")  # the Embedder's sentence poolings
TRUNCATIONS = ("truncate", "reject")  # what the Embedder does with a text longer than the plan's profile

NAMED_ARCHS = ("bert-base", "gpt2")  # full-size architectures built from a default config (export, check, bench)
EXPORT_ARCHS = NAMED_ARCHS + ("llama", "qwen2", "gpt-neox", "mpnet", "deberta-v2")  # what export_model takes

TEXT_SETS = ("rt", "wiki", "imdb")  # bundled text sets (trtrun.data has their files)

BASELINES = ("torch-fp32", "torch-fp16", "torch-compile", "cpu")  # what `trtrun bench` compares against

CORPUS_FORMATS = ("jsonl", "parquet", "text")  # what `trtrun embed` reads
ON_ERROR = ("fail", "skip")  # what `trtrun embed` does with a bad row

CUDA_GRAPHS = ("on", "off", "both")  # `trtrun bench`: trtrun's GPU runs with CUDA graphs on, off, or both
GRID_MODES = ("subset", "full")  # `trtrun bench`: the shapes a slow baseline (torch.compile, the CPU) runs
