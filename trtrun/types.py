"""The names trtrun's settings take, each defined once; every module and option imports them from here.

Standard library only: the command line builds its options from these before numpy or the extension loads.
The plan format (trtrun.plan) validates against the same tuples; the C++ extension takes these names too (what
of them its kernels run: trtrun.plan.format's GPU_* names).
"""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "hybrid")  # a plan's (and an op's) precision: docs/plan-format.md
# fp8 (E4M3 Linear layers, the rest as hybrid: docs/precision.md) is an op's and a plan's precision too, kept
# apart from PRECISIONS since only the reference backend runs it yet; "mixed" is the plan a precision search
# (`--precision auto`) writes, each Linear with its own precision; "auto" asks the builder for one.
FP8 = "fp8"
OP_PRECISIONS = PRECISIONS + (FP8,)
PLAN_PRECISIONS = OP_PRECISIONS + ("mixed",)
BUILD_PRECISIONS = OP_PRECISIONS + ("auto",)
FP8_WEIGHT_SCALES = ("channel", "tensor")  # one scale per output channel, or one for the whole weight
FP8_ACTIVATION_SCALES = ("dynamic", "static")  # per token at run time, or calibrated on text at build time

BACKENDS = ("gpu", "reference")  # what runs a plan: the CUDA runtime, or the numpy reference on the CPU
BACKEND_CHOICES = ("auto",) + BACKENDS  # auto: the GPU runtime where usable, else the reference backend

POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "last")  # the Embedder's sentence poolings
TRUNCATIONS = ("truncate", "reject")  # what the Embedder does with a text longer than the plan's profile
DEFAULT_CONTEXTS = 2  # the Embedder's engine runners (GPU contexts or reference backends): embed, serve, Ray
# Text Embeddings Inference's default --max-batch-tokens; the Embedder caps it by what the plan's profile can hold.
DEFAULT_MAX_TOKENS_PER_BATCH = 16384
# `trtrun embed`: rows per shard, the unit of resumption and of Ray's work items. 4096 texts are seconds of work on
# one GPU (so a killed job loses little) and a few MB of vectors (well under Ray Data's block size, so a shard stays
# one block from its read task to its write task).
DEFAULT_SHARD_ROWS = 4096
# Texts per Embedder call within a shard: it sorts them by length and packs engine batches; more texts pack
# tighter, fewer bound the memory of one call.
DEFAULT_CHUNK_ROWS = 1024

NAMED_ARCHS = ("bert-base", "gpt2")  # full-size architectures built from a default config (export, check, bench)
# what export_model takes by name
EXPORT_ARCHS = NAMED_ARCHS + ("llama", "qwen2", "mistral", "qwen3", "gpt-neox", "mpnet", "deberta-v2", "modernbert")
ENCODER_ARCHS = ("bert-base", "mpnet", "deberta-v2", "modernbert")  # of EXPORT_ARCHS: bidirectional; the rest causal

# torch.onnx.export(dynamo=False), the torch.export-based exporter, or auto: torchscript, and dynamo where torchscript
# fails on the model or writes a file that runs only at the shape it traced
EXPORTERS = ("auto", "torchscript", "dynamo")
ATTENTIONS = ("eager", "sdpa")  # the attention transformers traces for `trtrun export` (eager: the default)

TEXT_SETS = ("rt", "wiki", "imdb")  # bundled text sets (trtrun.data has their files)

BASELINES = ("torch-fp32", "torch-fp16", "torch-compile", "cpu")  # what `trtrun bench` compares against
BENCH_BATCHES = (1, 2, 4, 8, 16, 32)  # `trtrun bench`'s default grid: batch sizes
BENCH_SEQS = (32, 64, 128, 256, 384, 512)  # and sequence lengths

CORPUS_FORMATS = ("jsonl", "parquet", "text")  # what `trtrun embed` reads
ON_ERROR = ("fail", "skip")  # what `trtrun embed` does with a bad row

CUDA_GRAPHS = ("on", "off", "both")  # `trtrun bench`: trtrun's GPU runs with CUDA graphs on, off, or both
GRID_MODES = ("subset", "full")  # `trtrun bench`: the shapes a slow baseline (torch.compile, the CPU) runs

# How a GPU context chooses the cuBLASLt algorithm of a GEMM shape it meets first; handed to the extension by
# name (native/core/types.cpp parses it), so this order is no code. docs/runtime.md has what each costs.
GEMM_SEARCHES = ("heuristic", "focused", "exhaustive")
# Each entry point's default, chosen for how often it runs a shape: "focused" times 3-5 s for a process's first
# shape and pays off over many runs (the runtime's contexts, as the binding's own default, and `trtrun bench`);
# "heuristic" (~0.1 s a shape) where someone waits for the first run (the Embedder and with it `trtrun serve`
# and `trtrun embed`, and `trtrun run`'s single run).
GEMM_SEARCH_DEFAULTS = {"runtime": "focused", "bench": "focused", "embedder": "heuristic", "serve": "heuristic",
                        "run": "heuristic"}


def check_gemm_search(value: str, error: type[Exception] = ValueError) -> str:
    """`value` if it names a GEMM search; else `error` saying which ones do."""
    if value not in GEMM_SEARCHES:
        raise error(f"gemm_search must be one of {', '.join(GEMM_SEARCHES)}, got {value!r}")
    return value
