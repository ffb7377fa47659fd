"""trtrun.runtime: run plans on an NVIDIA GPU through trtrun's own C++/CUDA runtime (the extension trtrun._C).

    from trtrun.runtime import Engine, gpu_available
    ok, why = gpu_available()
    engine = Engine.load("model.plan", device=0)     # weights uploaded once
    ctx = engine.create_context()                    # own CUDA stream, activation arena, graph cache
    outputs = ctx.run({"input_ids": ids, "attention_mask": mask})          # numpy in, numpy out
    outputs = ctx.run_device({"input_ids": ids_cuda}, stream=torch.cuda.current_stream())  # device tensors

One Engine serves many Contexts; use one Context per thread (a Context serializes its own callers).
Nothing here imports torch or cupy (device tensors are read through __cuda_array_interface__ or DLPack), and
nothing touches the GPU at import time. docs/runtime.md describes the design. The package:

    extension.py   loading trtrun._C; gpu_available and why the GPU runtime is missing
    options.py     ContextOptions: a context's options, their defaults and checks, handed to _C by name
    lower.py       the plan as the extension takes it (by name; trtrun.plan.format's GPU_* names); bucket_seq
    engine.py      Engine, Context, DeviceArray; device arrays and streams handed in
    gemm_cache.py  GEMM cache files (save_gemm_cache, load_gemm_cache, read_gemm_cache)
"""

from __future__ import annotations

from ..types import GEMM_SEARCHES
from .engine import Context, DeviceArray, Engine
from .extension import gpu_available
from .gemm_cache import GEMM_CACHE_FORMAT, GEMM_CACHE_VERSION, load_gemm_cache, read_gemm_cache, save_gemm_cache
from .lower import bucket_seq
from .options import ContextOptions

__all__ = ["Engine", "Context", "ContextOptions", "DeviceArray", "gpu_available", "bucket_seq", "save_gemm_cache",
           "load_gemm_cache", "read_gemm_cache", "GEMM_CACHE_FORMAT", "GEMM_CACHE_VERSION", "GEMM_SEARCHES"]
