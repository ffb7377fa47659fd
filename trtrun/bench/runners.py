"""The engines a sweep times, each behind one small interface, and the timing loops they share.

Every runner measures one point (batch, seq) on rotated input sets and returns:
    gpu_ms   {min, mean, p50, p90, p99, max, std, n}: device time of one batch, by CUDA events recorded on
             the stream the work runs on, around the engine's work only (inputs already on the device,
             outputs written to preallocated device buffers); host-clock time where there is no device
             (the reference backend); None for the CPU baseline.
    e2e_ms   the same statistics for one call from host numpy inputs to host numpy outputs, through pinned
             host buffers (host-to-device and device-to-host copies counted), host clock, synchronous.
    peak_mem_bytes and mem_source: see each runner.

Timing loop (`_measure`): one untimed first call (graph capture, torch.compile, lazy initialization), then
warm-up iterations whose cost calibrates the loop, then N timed iterations, N = --iters, fewer when they
would take more than --max-time seconds, never fewer than --min-iters. Device iterations are enqueued back
to back (each between its own pair of events), so an engine whose host side cannot keep up with its GPU
work shows the gaps as device time, as its users would see them.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_GEMM_SEARCH
from .stats import iterations_for, summarize



@dataclass
class Timing:
    warmup: int = 50
    iters: int = 200
    min_iters: int = 10
    max_time: float | None = 1.0


class Unavailable(Exception):
    """This engine cannot run here (the message says why); recorded as status 'unavailable'."""


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e}): pip install torch==2.13.0 (the CPU build) or "
                          f"'trtrun[export]'") from None
    return torch


def _elapsed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def _measure(*, host_call, n_sets: int, timing: Timing, dev_enqueue=None, dev_sync=None, stream=None,
             torch=None, device_timer: bool = True, min_warmup: int = 2) -> dict:
    """Run the timing protocol (module docstring). host_call(i): one synchronous end-to-end call on set
    i % n_sets. dev_enqueue(i): enqueue one device iteration on `stream` (async); dev_sync(): wait for it.
    Returns {"gpu_ms", "e2e_ms", "warmup", "first_call_s"}."""
    budget = timing.max_time
    out: dict = {"gpu_ms": None}
    counter = iter(range(1 << 62))

    def nxt():
        return next(counter) % n_sets

    if dev_enqueue is not None:
        def dev_once():
            dev_enqueue(nxt())

        t0 = time.perf_counter()
        dev_once()
        dev_sync()
        out["first_call_s"] = time.perf_counter() - t0
        # warm-up: a few synchronized iterations measure the cost, the rest are enqueued back to back
        probe = min(3, max(timing.warmup, 1))
        per = (_elapsed(lambda: (dev_once(), dev_sync()), probe)) / probe
        n_warm = max(probe, min(timing.warmup, int(0.25 * budget / per) if budget else timing.warmup))
        for _ in range(n_warm - probe):
            dev_once()
        dev_sync()
        out["warmup"] = n_warm
        n = iterations_for(per, iters=timing.iters, min_iters=timing.min_iters, max_time=budget)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for i in range(n):
            starts[i].record(stream)
            dev_once()
            ends[i].record(stream)
        dev_sync()
        for e in ends:
            e.synchronize()
        out["gpu_ms"] = summarize(s.elapsed_time(e) for s, e in zip(starts, ends))
        warm_e2e = min_warmup
    else:
        t0 = time.perf_counter()
        host_call(nxt())
        out["first_call_s"] = time.perf_counter() - t0
        warm_e2e = max(min_warmup, 1)

    # end-to-end, host clock (the call is synchronous)
    probe = max(1, min(warm_e2e, timing.warmup))
    per = _elapsed(lambda: host_call(nxt()), probe) / probe
    if dev_enqueue is None:
        n_warm = max(probe, min(timing.warmup, int(0.25 * budget / per) if budget else timing.warmup))
        for _ in range(n_warm - probe):
            host_call(nxt())
        out["warmup"] = n_warm
    n = iterations_for(per, iters=timing.iters, min_iters=timing.min_iters, max_time=budget)
    samples = []
    for _ in range(n):
        i = nxt()
        t0 = time.perf_counter_ns()
        host_call(i)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    out["e2e_ms"] = summarize(samples)
    if dev_enqueue is None and device_timer:
        out["gpu_ms"] = out["e2e_ms"]  # host-only backends: compute time is the call's time
    return out


def _output_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of two [B, S, H] outputs (float64)."""
    a = np.asarray(a, np.float64).reshape(a.shape[0], -1)
    b = np.asarray(b, np.float64).reshape(b.shape[0], -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(num / den))


# ------------------------------------------------------------------------------------------ trtrun
class TrtrunRunner:
    """trtrun on the GPU runtime (backend gpu) or the numpy reference backend (backend reference)."""

    def __init__(self, plan_path, precision: str, cuda_graphs: str, backend: str, device: int = 0,
                 engine=None, gemm_search: str = DEFAULT_GEMM_SEARCH):
        from ..plan import load_plan

        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.backend = backend
        self.device = device
        self.plan = load_plan(plan_path)
        self.input_names = [i["name"] for i in self.plan.inputs]
        self.extra: dict = {}
        if backend == "reference":
            from ..reference import ReferenceBackend

            self.ref = ReferenceBackend(self.plan)
            self.timer = "host clock (numpy reference backend on the CPU)"
            self.mem_source = None
            self.engine = None
            return
        from .. import runtime
        from ..backends import choose_backend

        choose_backend("gpu", device, hint=" (use --backend reference to time the numpy backend)")
        self.torch = torch = _torch_or_none()
        free = _mem_free(torch, device)
        self.engine = engine if engine is not None else runtime.Engine(self.plan, device)
        free_e = _mem_free(torch, device)
        self.ctx = self.engine.create_context(use_graphs=(cuda_graphs == "on"), gemm_search=gemm_search)
        free_c = _mem_free(torch, device)
        stats = self.ctx.stats()
        self.weight_bytes = int(self.engine.weight_bytes)
        self.arena_bytes = int(stats["arena_bytes"])
        self.workspace_bytes = int(stats["workspace_bytes"])
        self.mem_bytes = self.weight_bytes + self.arena_bytes + self.workspace_bytes
        self.mem_source = ("runtime: engine weights + context arena (sized for the profile's largest shape) "
                           f"+ {self.workspace_bytes / 2**20:g} MiB cuBLASLt workspace")
        self.extra = {"weight_bytes": self.weight_bytes, "arena_bytes": self.arena_bytes,
                      "workspace_bytes": self.workspace_bytes}
        if free is not None and engine is None:
            self.extra["mem_getinfo_engine_bytes"] = free - free_e
        if free_e is not None:
            self.extra["mem_getinfo_context_bytes"] = free_e - free_c
        self.timer = "CUDA events on the stream the context runs on" if torch else "host clock (no torch: no events)"

    def outputs_for(self, feeds) -> np.ndarray:
        """The first output for one feed dict (the cross-engine check)."""
        if self.backend == "reference":
            return next(iter(self.ref.run(self.plan.check_feeds(feeds)).values()))
        return next(iter(self.ctx.run(feeds).values()))

    def measure(self, batch: int, seq: int, sets: list, timing: Timing) -> dict:
        if self.backend == "reference":
            checked = [self.plan.check_feeds(s) for s in sets]
            res = _measure(host_call=lambda i: self.ref.run(checked[i]), n_sets=len(sets), timing=timing)
            res["peak_mem_bytes"] = None
            return res
        torch = self.torch
        if torch is None or self.ctx.engine.host_ops:  # a host tail (trtrun.runtime.tail): run() times it too
            res = _measure(host_call=lambda i: self.ctx.run(sets[i]), n_sets=len(sets), timing=timing,
                           device_timer=False)
        else:
            dev = torch.device("cuda", self.device)
            dsets = [{k: torch.from_numpy(v).to(dev) for k, v in s.items()} for s in sets]
            outs = {}
            for o in self.plan.outputs:
                if "input" in o:  # an input passed through: run_device returns the tensor fed, no buffer
                    continue
                inner = tuple(int(d) for d in o["shape"][2:])
                outs[o["name"]] = torch.empty((batch, seq) + inner, dtype=getattr(torch, o["dtype"]), device=dev)
            stream = torch.cuda.Stream(dev)
            ctx = self.ctx

            def dev_enqueue(i):
                ctx.run_device(dsets[i], outs, stream=stream)

            def dev_sync():
                stream.synchronize()
                ctx.synchronize()  # raises if a device-side check failed

            res = _measure(host_call=lambda i: ctx.run(sets[i]), n_sets=len(sets), timing=timing,
                           dev_enqueue=dev_enqueue, dev_sync=dev_sync, stream=stream, torch=torch)
            del dsets, outs
        st = self.ctx.stats()
        res["peak_mem_bytes"] = self.mem_bytes
        res["extra"] = dict(self.extra, graph_count=st["graph_count"], graph_note=st["graph_note"] or None)
        return res

    def close(self):
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()
            self.ctx = None


def _torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _mem_free(torch, device):
    if torch is None:
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.mem_get_info(device)[0])


# ------------------------------------------------------------------------------------------ PyTorch
class TorchRunner:
    """PyTorch on the same weights: eager fp32, eager fp16, or torch.compile(mode="reduce-overhead",
    dynamic=False) fp16 (CUDA graphs), compiled afresh per shape (torch._dynamo.reset() first, so no
    recompile limit is hit and each shape gets its own graphs)."""

    def __init__(self, base_model, kind: str, backend: str, device: int = 0):
        torch = _torch()
        self.torch = torch
        self.kind = kind
        self.compile = kind == "torch-compile"
        self.dtype = torch.float32 if kind == "torch-fp32" else torch.float16
        if backend == "gpu":
            if not torch.cuda.is_available():
                raise Unavailable("torch has no CUDA device here (a CPU-only torch build or no GPU)")
            self.dev = torch.device("cuda", device)
        else:
            if self.compile:
                raise Unavailable("torch.compile(mode='reduce-overhead') needs CUDA graphs: not run with "
                                  "--backend reference")
            if self.dtype == torch.float16:
                raise Unavailable("torch fp16 is not timed on the CPU (--backend reference)")
            self.dev = torch.device("cpu")
        self.gpu = self.dev.type == "cuda"
        self.model = copy.deepcopy(base_model).to(device=self.dev, dtype=self.dtype).eval()
        self.param_bytes = sum(t.numel() * t.element_size()
                               for t in list(self.model.parameters()) + list(self.model.buffers()))
        self.takes_token_types = "token_type_ids" in _forward_params(self.model)
        self.timer = "CUDA events on torch's current stream" if self.gpu else "host clock (torch on the CPU)"
        self.mem_source = ("torch: parameter and buffer bytes + (torch.cuda.max_memory_allocated during the "
                           "point - memory_allocated at its start)") if self.gpu else None
        self.extra = {"param_bytes": self.param_bytes}

    def _forward(self):
        model = self.model

        def fwd(input_ids, attention_mask=None, token_type_ids=None):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return model(**kw).last_hidden_state

        return fwd

    def _feeds(self, s: dict) -> dict:
        return {k: v for k, v in s.items() if k in ("input_ids", "attention_mask")
                or (k == "token_type_ids" and self.takes_token_types)}

    def outputs_for(self, feeds) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            t = {k: torch.from_numpy(v).to(self.dev) for k, v in self._feeds(feeds).items()}
            return self._forward()(**t).float().cpu().numpy()

    def measure(self, batch: int, seq: int, sets: list, timing: Timing) -> dict:
        torch = self.torch
        sets = [self._feeds(s) for s in sets]
        fn = self._forward()
        extra = dict(self.extra)
        if self.compile:
            torch._dynamo.reset()
            fn = torch.compile(fn, mode="reduce-overhead", dynamic=False)
            mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        else:
            mark = None
        dsets = [{k: torch.from_numpy(v).to(self.dev) for k, v in s.items()} for s in sets]
        if self.gpu:
            torch.cuda.synchronize(self.dev)
            alloc0 = torch.cuda.memory_allocated(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            pinned_in = [{k: torch.empty(v.shape, dtype=torch.int64).pin_memory() for k, v in s.items()}
                         for s in sets]
            out_pinned = {}
            stream = torch.cuda.current_stream(self.dev)

            def call(d):
                if mark is not None:
                    mark()
                return fn(**d)

            def dev_enqueue(i):
                call(dsets[i])

            def host_call(i):
                # numpy -> pinned host -> device (async) -> run -> pinned host -> numpy, then wait
                hin = pinned_in[i]
                for k, v in sets[i].items():
                    np.copyto(hin[k].numpy(), v)
                d = {k: v.to(self.dev, non_blocking=True) for k, v in hin.items()}
                y = call(d)
                buf = out_pinned.get(i)
                if buf is None or buf.shape != y.shape or buf.dtype != y.dtype:
                    buf = out_pinned[i] = torch.empty(y.shape, dtype=y.dtype).pin_memory()
                buf.copy_(y, non_blocking=True)
                stream.synchronize()
                return buf.numpy().copy()

            with torch.no_grad():
                t0 = time.perf_counter()
                call(dsets[0])  # compiles and captures (torch.compile); loads kernels (eager)
                torch.cuda.synchronize(self.dev)
                if self.compile:
                    extra["compile_s"] = round(time.perf_counter() - t0, 2)
                res = _measure(host_call=host_call, n_sets=len(sets), timing=timing, dev_enqueue=dev_enqueue,
                               dev_sync=stream.synchronize, stream=stream, torch=torch)
            torch.cuda.synchronize(self.dev)
            res["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.dev) - alloc0 + self.param_bytes)
        else:
            with torch.no_grad():
                res = _measure(host_call=lambda i: fn(**{k: torch.from_numpy(v) for k, v in sets[i].items()}).numpy(),
                               n_sets=len(sets), timing=timing)
            res["peak_mem_bytes"] = None
        res["extra"] = extra
        del dsets, fn
        if self.compile:
            torch._dynamo.reset()
        gc.collect()
        if self.gpu:
            torch.cuda.empty_cache()
        return res

    def close(self):
        self.model = None
        gc.collect()
        if self.gpu:
            self.torch.cuda.empty_cache()


def _forward_params(model) -> set:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


# ------------------------------------------------------------------------------------------ CPU
class OrtCpuRunner:
    """onnxruntime fp32 on the CPU on the fp32 ONNX, every host core (intra-op threads = os.cpu_count()
    unless cpu.threads says otherwise), all graph optimizations."""

    def __init__(self, onnx_path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise Unavailable(f"onnxruntime is not installed ({e})") from None
        so = ort.SessionOptions()
        self.threads = threads or os.cpu_count() or 1
        so.intra_op_num_threads = self.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        from .._ort import session

        self.sess = session(onnx_path, so)
        self.names = {i.name for i in self.sess.get_inputs()}
        self.timer = None
        self.mem_source = None
        self.extra = {"threads": self.threads, "onnxruntime": ort.__version__}

    def outputs_for(self, feeds) -> np.ndarray:
        return self.sess.run(None, {k: v for k, v in feeds.items() if k in self.names})[0]

    def measure(self, batch: int, seq: int, sets: list, timing: Timing) -> dict:
        sets = [{k: v for k, v in s.items() if k in self.names} for s in sets]
        res = _measure(host_call=lambda i: self.sess.run(None, sets[i]), n_sets=len(sets), timing=timing,
                       device_timer=False, min_warmup=1)
        res["peak_mem_bytes"] = None
        res["extra"] = dict(self.extra)
        return res

    def close(self):
        self.sess = None


def output_cosine(a, b) -> float:
    return _output_cosine(a, b)
