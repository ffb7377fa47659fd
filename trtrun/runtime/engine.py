"""Engine (a plan's weights on one GPU), Context (runs it: own stream, arena, pinned I/O, CUDA graphs),
DeviceArray, and reading device arrays and streams handed in by torch, cupy and others."""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from ..errors import InputError, RuntimeUnavailableError, ShapeError
from . import extension
from .lower import bucket_seq, has_fully_masked_rows, lower_plan
from .tail import HostTail, split_host_tail
from .options import ContextOptions, native_options


class Engine:
    """A plan's weights on one GPU (uploaded once, immutable) and its ops; make Contexts to run it."""

    def __init__(self, plan, device: int = 0):
        c = extension.load_extension()
        device = int(device)
        n = c.device_count()
        if n == 0:
            raise RuntimeUnavailableError(c.device_problem(device) or "no CUDA device is visible")
        if not 0 <= device < n:
            raise RuntimeUnavailableError(f"device {device} does not exist ({n} CUDA device(s) visible)")
        self.plan = plan
        self.device = device
        # the ops after the token states writing rank-2 tensors (Pool, a classification or QA head) run on the host
        device_plan, host_ops = split_host_tail(plan)
        self._tail = HostTail(plan, host_ops) if host_ops else None
        low = lower_plan(device_plan)
        # _C.Engine checks the device (architecture of this build vs the GPU) and raises DeviceError
        self._c = c.Engine(low["tensors"], low["ops"], low["weights"], low["inputs"], low["outputs"],
                           low["batch_max"], low["seq_max"], low["tf32"], device)
        self._seq_max = low["seq_max"]
        info = self._c.input_info()  # per graph input: (tensor, used, is_mask, limit)
        self._inputs = [(i["name"], bool(used), bool(is_mask))
                        for i, (_, used, is_mask, _) in zip(plan.inputs, info)]
        self._outputs = []
        # outputs that pass a graph input through (no kernel writes them): name -> (input, dtype)
        self._passthrough = {o["name"]: (o["input"], np.dtype(o["dtype"])) for o in plan.outputs if "input" in o}
        for o in device_plan.outputs:
            if "input" in o:
                continue
            inner = tuple(int(d) for d in o["shape"][2:])
            self._outputs.append((o["name"], np.dtype(o["dtype"]), inner))
        # which attention kinds read the mask (padding exactness, see Context._bucket)
        # (causal, window) of each kind of Attention that reads the mask
        self._mask_rules = sorted({(bool(op.get("attrs", {}).get("causal", False)), op.get("attrs", {}).get("window"))
                                   for op in plan.ops if op["type"] == "Attention" and len(op["inputs"]) > 1
                                   and op["inputs"][1]}, key=repr)

    @classmethod
    def load(cls, path, device: int = 0) -> "Engine":
        """Load and validate a plan file (trtrun.plan.load_plan; PlanError on a bad file) onto `device`."""
        from ..plan import load_plan

        return cls(load_plan(path), device)

    @property
    def weight_bytes(self) -> int:
        """Device bytes of the uploaded weights."""
        return int(self._c.weight_bytes)

    def create_context(self, options: ContextOptions | None = None, **overrides) -> "Context":
        """A Context: own CUDA stream, activation arena (allocated now, at the profile's maximum shapes:
        DeviceError if it does not fit), pinned host buffers, cuBLASLt workspace and CUDA-graph cache.

        options: a ContextOptions (None: the defaults); keyword overrides change some of them, e.g.
        create_context(gemm_search="heuristic", use_graphs=False). ContextOptions says what each one does.
        """
        return Context(self, options, **overrides)

    @property
    def host_ops(self) -> list[str]:
        """Names of the ops run on the host after the device's part (Pool, a classification or question-answering
        head: trtrun.runtime.tail); empty when the device runs every op."""
        return [op["name"] for op in self._tail.ops] if self._tail else []

    def __repr__(self) -> str:
        tail = f", {len(self._tail.ops)} on the host" if self._tail else ""
        return (f"<trtrun.runtime.Engine {self.plan.precision} on cuda:{self.device}, "
                f"{len(self.plan.ops)} ops{tail}, {self.weight_bytes / 2**20:.1f} MiB of weights>")


# ------------------------------------------------------------------------------------------------ device arrays
_TYPESTR = {"<i8": "int64", "<i4": "int32", "<f4": "float32", "<f2": "float16"}
_DLPACK = {(0, 64): "int64", (0, 32): "int32", (2, 32): "float32", (2, 16): "float16"}


class DeviceArray:
    """Device memory that run_device returns when the caller gives no output tensors and the inputs are
    neither torch nor cupy. Readable by torch (`torch.as_tensor(a, device="cuda")`) and cupy
    (`cupy.asarray(a)`) through __cuda_array_interface__, or copied to numpy with `.numpy()`."""

    def __init__(self, shape, dtype, device: int = 0):
        c = extension.load_extension()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self._mem = c.DeviceMemory(int(np.prod(self.shape)) * self.dtype.itemsize, self.device)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (int(self._mem.ptr), False),
                "version": 3, "strides": None}

    def numpy(self) -> np.ndarray:
        """A host copy (synchronous; call after the run's stream has finished)."""
        return np.frombuffer(self._mem.to_host(), dtype=self.dtype).reshape(self.shape).copy()

    def __repr__(self) -> str:
        return f"<trtrun.runtime.DeviceArray {self.dtype.name}{list(self.shape)} on cuda:{self.device}>"


def _describe(name: str, x) -> dict:
    """ptr, shape, strides (elements), dtype name, device index (None if unknown), framework of a device array."""
    mod = type(x).__module__.split(".")[0]
    if isinstance(x, np.ndarray):  # numpy speaks DLPack too, but lives on the host
        raise InputError(f"input {name!r} is a numpy (host) array: use Context.run, or pass device tensors")
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        dtype = _TYPESTR.get(cai["typestr"])
        if dtype is None:
            raise InputError(f"input {name!r}: dtype {cai['typestr']!r} is not supported (int64, int32, "
                             f"float32, float16)")
        shape = tuple(int(s) for s in cai["shape"])
        item = np.dtype(cai["typestr"]).itemsize
        if cai.get("strides") is None:
            strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        else:
            if any(s % item for s in cai["strides"]):
                raise InputError(f"input {name!r}: strides {cai['strides']} are not whole elements")
            strides = tuple(int(s) // item for s in cai["strides"])
        dev = getattr(x, "device", None)
        index = getattr(dev, "index", None)
        if index is None:
            index = getattr(dev, "id", None)
        return {"ptr": int(cai["data"][0]), "shape": shape, "strides": strides, "dtype": dtype,
                "device": index, "framework": mod, "keep": x}
    if hasattr(x, "__dlpack__"):
        cap = x.__dlpack__()
        info = extension.load_extension().dlpack_info(cap)
        if info["device_type"] not in (2, 13):  # kDLCUDA, kDLCUDAManaged
            raise InputError(f"input {name!r} is not in GPU memory (DLPack device type {info['device_type']}); "
                             f"use Context.run for host arrays")
        dtype = _DLPACK.get((info["code"], info["bits"])) if info["lanes"] == 1 else None
        if dtype is None:
            raise InputError(f"input {name!r}: DLPack dtype (code {info['code']}, {info['bits']} bits) is not "
                             f"supported (int64, int32, float32, float16)")
        return {"ptr": int(info["ptr"]), "shape": tuple(info["shape"]), "strides": tuple(info["strides"]),
                "dtype": dtype, "device": int(info["device_id"]), "framework": mod, "keep": (x, cap)}
    raise InputError(f"input {name!r} ({type(x).__name__}) is not a device array: run_device takes objects "
                     f"with __cuda_array_interface__ or __dlpack__ (torch, cupy, ...)")


def _stream_handle(stream) -> int:
    """The cudaStream_t of `stream`: an int, or any object that names one.

    The CUDA stream protocol (`__cuda_stream__()` -> (version, handle): cuda-python's cuda.core Stream and
    cuda.bindings' CUstream, and libraries that adopt it) is asked first; then torch's `.cuda_stream`, cupy's
    `.ptr`, and a `.handle` that is an int or itself speaks the protocol.
    """
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    proto = getattr(stream, "__cuda_stream__", None)
    if callable(proto):
        try:
            version, handle = proto()
            return int(handle)
        except (TypeError, ValueError) as e:
            raise InputError(f"stream {type(stream).__name__}: __cuda_stream__() must return (version, handle), "
                             f"got an error: {e}") from None
    for attr in ("cuda_stream", "ptr", "handle"):  # torch.cuda.Stream, cupy Stream, others
        v = getattr(stream, attr, None)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
        if v is not None and callable(getattr(v, "__cuda_stream__", None)):
            return _stream_handle(v)
    raise InputError(f"stream must be an int (cudaStream_t) or a stream object (__cuda_stream__, "
                     f".cuda_stream, .ptr), got {type(stream).__name__}")


# ------------------------------------------------------------------------------------------------ context
class Context:
    """Runs an Engine: own CUDA stream, activation arena, pinned I/O buffers, cuBLASLt, CUDA graphs.

    Thread-safe (calls on one Context are serialized); for parallel work, one Context per thread.
    """

    def __init__(self, engine: Engine, options: ContextOptions | None = None, **overrides):
        if options is not None and not isinstance(options, ContextOptions):
            raise InputError(f"options must be a ContextOptions, got {type(options).__name__}")
        options = (options or ContextOptions()).replace(**overrides)  # InputError naming a bad option
        c = extension.load_extension()
        self.engine = engine
        self.options = options
        self.bucket = options.bucket
        self.workspace_bytes = options.workspace_bytes
        self._lock = threading.Lock()
        self._c = c.Context(engine._c, native_options(options, c))
        self.gemm_search = options.gemm_search
        self._in_views = [self._c.host_input(i) for i in range(len(engine._inputs))]
        self._out_views = [self._c.host_output(i) for i in range(len(engine._outputs))]

    # ---------------------------------------------------------------- helpers
    def _require_open(self) -> None:
        if self._c is None:
            raise InputError("this Context was closed")

    def _seq_bucket(self, S: int, mask: np.ndarray | None) -> int:
        if not self.bucket:
            return S
        Sb = bucket_seq(S, self.engine._seq_max)
        if Sb > S and mask is not None:
            # A query row whose keys are all masked is uniform over *all* keys, so its output depends on
            # the padded length: run such batches at the exact length (only pad positions are affected).
            # Bidirectional: a sample with an all-zero mask; causal: one whose first key is masked; a window: a
            # row whose keys within the window are all masked (padding longer than the window).
            if any(has_fully_masked_rows(mask, causal, window) for causal, window in self.engine._mask_rules):
                return S
        return Sb

    def _shape_error(self, B: int, S: int) -> None:
        prof = self.engine.plan.profile
        for axis, n in (("batch", B), ("seq", S)):
            lo, opt, hi = prof[axis]
            if not lo <= n <= hi:
                what = "batch size" if axis == "batch" else "sequence length"
                raise ShapeError(
                    f"input 'input_ids' has shape {(B, S)}: {what} {n} is outside the plan's profile "
                    f"{axis} range [{lo}, {hi}] (opt {opt}); rebuild the plan with a wider profile")

    # ---------------------------------------------------------------- host arrays
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on host (numpy) inputs; return the outputs as new numpy arrays (fp32 for graph outputs).

        Inputs are checked by Plan.check_feeds (names, dtypes, rank, profile -> ShapeError, id ranges ->
        InputError), converted to int32 into pinned buffers, padded to the sequence bucket, copied in,
        run (CUDA graph after the first run at a shape), copied out; the call waits for the result. A plan ending
        in ops writing rank-2 tensors (Pool, a classification or question-answering head) runs those on the host
        after the copy (trtrun.runtime.tail; Engine.host_ops names them).
        """
        plan = self.engine.plan
        self._require_open()
        arrays = plan.check_feeds(feeds)
        B, S = arrays["input_ids"].shape
        Sb = self._seq_bucket(S, arrays.get("attention_mask"))
        with self._lock:
            for slot, (name, used, is_mask) in enumerate(self.engine._inputs):
                if not used:
                    continue
                view = self._in_views[slot][: B * Sb].reshape(B, Sb)
                a = arrays[name]
                # ids were range-checked by check_feeds, so int32 holds them; masks are 0/1
                view[:, :S] = (a != 0) if is_mask else a
                if Sb > S:
                    view[:, S:] = 0
            self._c.run_host(B, S, Sb)  # releases the GIL while the GPU works
            out = {}
            for slot, (name, dtype, inner) in enumerate(self.engine._outputs):
                n = B * S * int(np.prod(inner, dtype=np.int64)) * dtype.itemsize
                out[name] = self._out_views[slot][:n].view(dtype).reshape((B, S) + inner).copy()
        # the graph's output is its input (ONNX Identity): the array check_feeds gave the run, at the output's
        # declared dtype (int64 from int32 is exact), holds the same values the run read
        for name, (src, dtype) in self.engine._passthrough.items():
            out[name] = np.array(arrays[src], dtype=dtype)
        if self.engine._tail is not None:  # outside the lock: host arithmetic on this call's own arrays
            out = self.engine._tail.run({**arrays, **out})
        return {o["name"]: out[o["name"]] for o in plan.outputs}

    # ---------------------------------------------------------------- device arrays
    def run_device(self, feeds_dev: Mapping[str, Any], outputs_dev: Mapping[str, Any] | None = None,
                   stream=None) -> dict[str, Any]:
        """Run on device tensors without host copies (torch, cupy, anything with __cuda_array_interface__
        or __dlpack__). Inputs: [batch, seq] int64 or int32 on this engine's device, contiguous along the
        sequence axis; attention_mask and token_type_ids default to ones and zeros as in run().

        outputs_dev: name -> preallocated contiguous [batch, seq, ...] tensors of the output's dtype (any
        missing ones are allocated: torch/cupy like the inputs, else DeviceArray).
        stream: None runs on the context's own stream and waits for the result; otherwise a cudaStream_t
        (int, 0 = legacy default stream) or a stream object (torch.cuda.Stream, cupy Stream, cuda-python's
        cuda.core Stream or cuda.bindings CUstream: anything with __cuda_stream__): the work is enqueued on it after the work already there, and the call returns without waiting.

        Token ids are checked on the device: an id outside the vocabulary is replaced by 0 and reported
        as InputError by this call (stream=None) or by the next synchronize(). The rules that read the ids' and
        the mask's values on the host (an Embedding's padding_id and refused_id, ones-then-zeros masks for
        mask_positions: Plan.check_feeds) are run() checks only: here the caller keeps them.
        Sequence bucketing: outputs at positions whose attention row is entirely masked (a sample whose
        mask is all zeros; left padding in a causal model) are computed over the padded length; pass a
        Context made with bucket=False for exact unpadded semantics there. Valid positions are unaffected.
        """
        eng = self.engine
        self._require_open()
        if eng._tail is not None:
            raise InputError(f"this plan ends in ops the runtime runs on the host ({', '.join(eng._tail.types)}, after "
                             f"the token states), which run_device does not do; use run(), or build the plan with "
                             f"--outputs naming token-state outputs only")
        if not isinstance(feeds_dev, Mapping):
            raise InputError(f"inputs must be a dict of name -> device array, got {type(feeds_dev).__name__}")
        names = [n for n, _, _ in eng._inputs]
        unknown = [k for k in feeds_dev if k not in names]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}: this plan takes {', '.join(names)}")
        if "input_ids" not in feeds_dev:
            raise InputError(f"missing required input 'input_ids' (this plan takes {', '.join(names)})")
        desc = {k: _describe(k, v) for k, v in feeds_dev.items()}
        for k, d in desc.items():
            if d["dtype"] not in ("int64", "int32"):
                raise InputError(f"input {k!r} has dtype {d['dtype']}; token ids and masks must be int64 or int32")
            if len(d["shape"]) != 2:
                raise ShapeError(f"input {k!r} has shape {d['shape']}; expected rank 2 [batch, sequence]")
            if d["device"] is not None and d["device"] != eng.device:
                raise InputError(f"input {k!r} is on cuda:{d['device']} but the engine is on cuda:{eng.device}")
        shape = desc["input_ids"]["shape"]
        for k, d in desc.items():
            if d["shape"] != shape:
                raise ShapeError(f"input {k!r} has shape {d['shape']} but input_ids has {shape}; all inputs "
                                 f"must have the same [batch, sequence] shape")
        B, S = shape
        self._shape_error(B, S)
        for k, d in desc.items():
            if S > 1 and d["strides"][1] != 1:
                raise InputError(f"input {k!r} must be contiguous along the sequence axis (strides "
                                 f"{d['strides']} in elements)")
            if B > 1 and d["strides"][0] < S:
                raise InputError(f"input {k!r} has overlapping rows (strides {d['strides']})")
        feeds = []
        for name, used, is_mask in eng._inputs:
            d = desc.get(name)
            if d is None or not used:
                feeds.append((0, True, S))  # absent: the runtime fills ones (mask) or zeros (types)
            else:
                feeds.append((d["ptr"], d["dtype"] == "int64", int(d["strides"][0]) if B > 1 else S))

        outputs = dict(outputs_dev or {})
        given = [k for k in outputs if k in eng._passthrough]
        if given:
            raise InputError(f"output {given[0]!r} is the input {eng._passthrough[given[0]][0]!r} passed through: "
                             f"nothing writes it on the device; its value is the tensor fed as that input")
        missing = [(k, src) for k, (src, _) in eng._passthrough.items() if src not in feeds_dev]
        if missing:
            raise InputError(f"output {missing[0][0]!r} passes the input {missing[0][1]!r} through: feed it (on the "
                             f"device it is returned as the tensor fed)")
        unknown = [k for k in outputs if k not in [o[0] for o in eng._outputs]]
        if unknown:
            raise InputError(f"unknown output {unknown[0]!r}: this plan produces "
                             f"{', '.join(o[0] for o in eng._outputs)}")
        out_ptrs, keep = [], [desc]
        first = feeds_dev["input_ids"]
        for name, dtype, inner in eng._outputs:
            want = (B, S) + inner
            if name not in outputs:
                outputs[name] = self._allocate(first, desc["input_ids"], want, dtype)
            od = _describe(name, outputs[name])
            if od["dtype"] != dtype.name or od["shape"] != want:
                raise InputError(f"output {name!r} must be {dtype.name}{list(want)}, got {od['dtype']}"
                                 f"{list(od['shape'])}")
            contiguous = tuple(int(np.prod(want[i + 1:], dtype=np.int64)) for i in range(len(want)))
            if any(w > 1 and s != c for w, s, c in zip(want, od["strides"], contiguous)):
                raise InputError(f"output {name!r} must be contiguous (strides {od['strides']} in elements)")
            if od["device"] is not None and od["device"] != eng.device:
                raise InputError(f"output {name!r} is on cuda:{od['device']} but the engine is on "
                                 f"cuda:{eng.device}")
            out_ptrs.append(od["ptr"])
            keep.append(od)
        handle = None if stream is None else _stream_handle(stream)
        Sb = S if not self.bucket else bucket_seq(S, eng._seq_max)
        with self._lock:
            self._c.run_device(B, S, Sb, feeds, out_ptrs, handle, handle is None)
        del keep
        for name, (src, _) in eng._passthrough.items():
            outputs[name] = feeds_dev[src]  # the graph's output is its input: the very tensor fed, no copy
        return outputs

    def _allocate(self, like, like_desc: dict, shape, dtype: np.dtype):
        fw = like_desc["framework"]
        if fw == "torch":
            import torch

            return torch.empty(shape, dtype=getattr(torch, dtype.name), device=like.device)
        if fw == "cupy":
            import cupy

            with cupy.cuda.Device(self.engine.device):
                return cupy.empty(shape, dtype=dtype)
        return DeviceArray(shape, dtype, self.engine.device)

    def synchronize(self) -> None:
        """Wait for this context's last run; InputError if a device-side run met out-of-range token ids."""
        self._c.synchronize()

    # ---------------------------------------------------------------- introspection
    def stats(self) -> dict:
        """arena_bytes (activations at the profile's maxima), arena_naive_bytes (without reuse),
        workspace_bytes (cuBLASLt), fused_residuals (GEMMs adding a LayerNorm's residual), split_linears
        (Linears whose K slices their LayerNorm sums, at runs of few enough rows), graph_count,
        gemm_plans (cached cuBLASLt algorithms), graph_note (why graphs were turned off, if they were),
        gemm_search (how GEMM algorithms are chosen)."""
        c = self._c
        return {"arena_bytes": int(c.arena_bytes), "arena_naive_bytes": int(c.arena_naive_bytes),
                "workspace_bytes": self.workspace_bytes,
                "graph_count": int(c.graph_count), "gemm_plans": int(c.gemm_plans), "graph_note": c.graph_note,
                "fused_residuals": int(c.fused_residuals), "gemm_search": self.gemm_search,
                "split_linears": int(c.split_linears)}

    def close(self) -> None:
        """Free the context's device and pinned memory now (it is freed on garbage collection otherwise)."""
        with self._lock:
            self._in_views = []
            self._out_views = []
            self._c = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

