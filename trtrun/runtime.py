"""trtrun.runtime: run plans on an NVIDIA GPU through trtrun's own C++/CUDA runtime (the extension trtrun._C).

    from trtrun.runtime import Engine, gpu_available
    ok, why = gpu_available()
    engine = Engine.load("model.plan", device=0)     # weights uploaded once
    ctx = engine.create_context()                    # own CUDA stream, activation arena, graph cache
    outputs = ctx.run({"input_ids": ids, "attention_mask": mask})          # numpy in, numpy out
    outputs = ctx.run_device({"input_ids": ids_cuda}, stream=torch.cuda.current_stream())  # device tensors

One Engine serves many Contexts; use one Context per thread (a Context serializes its own callers).
Nothing here imports torch or cupy (device tensors are read through __cuda_array_interface__ or DLPack), and
nothing touches the GPU at import time. docs/runtime.md describes the design.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ._io import atomic_write
from .errors import DeviceError, InputError, PlanError, RuntimeUnavailableError, ShapeError
from .types import GEMM_SEARCH_DEFAULTS, GEMM_SEARCHES, check_gemm_search  # noqa: F401 - GEMM_SEARCHES: named here too

__all__ = ["Engine", "Context", "DeviceArray", "gpu_available", "bucket_seq"]

# codes shared with csrc/ (runtime_common.h: ElemType, OpType, Precision, Activation)
# Context defaults (csrc/context.h has the same; docs/performance.md has the measurements behind them)
DEFAULT_WORKSPACE_BYTES = 4 << 20  # cuBLASLt workspace: the fastest algorithms here need <= 768 KiB
DEFAULT_FFN_CHUNKS = 2  # feed-forward row chunks at the largest shapes (halves the FFN intermediate)
DEFAULT_FUSE_RESIDUAL_MIN_ROWS = 2048  # residual add in the GEMM epilogue from this many rows on
DEFAULT_FFN_CHUNK_MIN_ROWS = 4096  # feed-forward row chunks only where a chunk has this many rows
DEFAULT_SPLIT_LN_MAX_ROWS = 384  # Linear -> LayerNorm split into K slices at runs of at most this many tokens
DEFAULT_SPLIT_LN_SLICE = 768  # ...slices of this depth (K = 3072: 4 slices; K = 768: not split)
DEFAULT_GEMM_SEARCH = GEMM_SEARCH_DEFAULTS["runtime"]  # Context gemm_search (csrc/gemm.h, GemmSearch)

_ELEM = {"float32": 0, "float16": 1, "int32": 2, "int64": 2}  # integer inputs live as int32 on the device
_OP = {"Embedding": 0, "Linear": 1, "Attention": 2, "LayerNorm": 3}
_PREC = {"fp32": 0, "fp16": 1, "hybrid": 2}
_ACT = {"none": 0, "gelu_erf": 1, "gelu_tanh": 2}

_ext_lock = threading.Lock()
_ext = None


def _load_extension():
    """The extension module, or RuntimeUnavailableError saying why it is missing."""
    global _ext
    if _ext is not None:
        return _ext
    with _ext_lock:
        if _ext is None:
            try:
                from . import _C  # type: ignore[attr-defined]
            except ImportError as e:
                raise RuntimeUnavailableError(_missing_reason(e)) from None
            _ext = _C
    return _ext


def _missing_reason(err: Exception) -> str:
    info = Path(__file__).with_name("_build_info.json")
    if info.exists():
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("extension") is False:
            return f"the CUDA extension was not built: {data.get('reason', 'no reason recorded')}"
        return f"the CUDA extension was built but cannot be loaded: {err}"
    return (f"the CUDA extension trtrun._C is not built ({err}); install with a CUDA toolkit and cuBLAS "
            f"present (`pip install .`; see docs/runtime.md)")


def gpu_available(device: int = 0) -> tuple[bool, str]:
    """(True, description) when the extension is built and can run on `device`; else (False, why not).

    Asks the extension (CUDA runtime and a probe of this build's kernels), not torch.
    """
    try:
        c = _load_extension()
    except RuntimeUnavailableError as e:
        return False, str(e)
    problem = c.device_problem(int(device))
    if problem:
        code = re.search(r"cudaError(InsufficientDriver|NoDevice)\b", problem)
        if code:
            # what those codes mean on a machine without a GPU, in one short line; the code names the detail
            problem = f"no NVIDIA GPU or driver on this machine: {code.group(0)}"
        return False, problem
    return True, f"{c.device_name(int(device))}; trtrun._C built for sm_{c.cuda_architectures}"


GEMM_CACHE_FORMAT = "trtrun-gemm-cache"
_GEMM_CACHE_FIELDS = {"device": str, "cc": int, "cublaslt": int, "m": int, "n": int, "k": int, "operand_t": int,
                      "out_t": int, "epilogue": int, "tf32": bool, "add_c": bool, "workspace": int, "search": int,
                      "algo": list, "algo_workspace": int}


_GEMM_CACHE_IDENTITY = ("device", "cc", "cublaslt", "m", "n", "k", "operand_t", "out_t", "epilogue", "tf32", "add_c",
                        "split", "workspace", "search")


def _read_gemm_cache(path: Path) -> list[dict]:
    """The entries of a GEMM cache file, every field checked; InputError naming the file and the field."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"GEMM cache {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the GEMM cache {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"GEMM cache {path} is not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != GEMM_CACHE_FORMAT:
        raise InputError(f"{path} is not a trtrun GEMM cache (field 'format' is not {GEMM_CACHE_FORMAT!r})")
    if doc.get("version") != 1:
        raise InputError(f"GEMM cache {path}: version {doc.get('version')!r} is not supported (1 is)")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise InputError(f"GEMM cache {path}: field 'entries' must be a list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(f"GEMM cache {path}: entries[{i}] must be an object")
        for f, t in _GEMM_CACHE_FIELDS.items():
            v = e.get(f)
            ok = isinstance(v, t) and (t is bool or not isinstance(v, bool))
            if not ok:
                raise InputError(f"GEMM cache {path}: entries[{i}].{f} must be {t.__name__}, got {v!r}")
        split = e.setdefault("split", 1)  # optional: files written before it existed hold unsplit GEMMs only
        if isinstance(split, bool) or not isinstance(split, int) or split < 1 or e["k"] % split != 0:
            raise InputError(f"GEMM cache {path}: entries[{i}].split must be an integer >= 1 dividing k, got {split!r}")
        if len(e["algo"]) != 8 or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 2**64
                                          for a in e["algo"]):
            raise InputError(f"GEMM cache {path}: entries[{i}].algo must be 8 unsigned 64-bit integers")
        for f in ("cc", "cublaslt", "m", "n", "k", "workspace", "algo_workspace"):
            if e[f] < 0:
                raise InputError(f"GEMM cache {path}: entries[{i}].{f} must be >= 0, got {e[f]}")
    return entries


def save_gemm_cache(path) -> int:
    """Write every GEMM algorithm this process has tuned (all engines and contexts; exhaustive and heuristic
    choices, and loaded ones it did not reject) to `path` (JSON), so another process on the same kind of GPU
    and cuBLASLt version can skip the timing: load_gemm_cache(path) before its first runs. Entries already in
    the file for other GPUs, cuBLASLt versions or shapes are kept (this process's choice wins for the same
    key), so one file can serve several machines. Returns the number of entries written. The file is replaced
    atomically; an existing file that is not a valid GEMM cache raises InputError and is left alone."""
    import datetime

    path = Path(path)
    old = _read_gemm_cache(path) if path.exists() else []  # before anything: a bad file stops the save
    entries = list(_load_extension().gemm_cache_export())
    mine = {tuple(e[f] for f in _GEMM_CACHE_IDENTITY) for e in entries}
    entries += [e for e in old if tuple(e[f] for f in _GEMM_CACHE_IDENTITY) not in mine]
    doc = {"format": GEMM_CACHE_FORMAT, "version": 1,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "entries": entries}
    try:
        atomic_write(path, json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    except OSError as e:
        raise InputError(f"cannot write the GEMM cache {path}: {e.strerror or e}") from None
    return len(entries)


def load_gemm_cache(path) -> int:
    """Take the GEMM algorithms tuned by another process (save_gemm_cache) for this process's GPUs: a shape
    found there is not timed again, by contexts of either gemm_search (an exhaustive choice serves heuristic
    contexts too). Entries from another GPU model or cuBLASLt version are skipped; each taken entry is checked
    with cuBLASLt before its first use, and one that fails is tuned as usual. Choices this process already made
    stay. Returns how many entries were taken. A missing, unreadable or malformed file raises InputError naming
    the file and the field; nothing is taken from it then."""
    path = Path(path)
    entries = _read_gemm_cache(path)
    try:
        return int(_load_extension().gemm_cache_import(entries))
    except InputError as e:  # the extension's own checks (m, n, k > 0, enum ranges)
        raise InputError(f"GEMM cache {path}: {e}") from None


def bucket_seq(seq: int, seq_max: int) -> int:
    """The padded sequence length a run at `seq` executes at (so that few CUDA graphs serve all lengths).

    The step is a quarter of the largest power of two below `seq` (at least 8): 8 up to 64, 16 up to 128,
    32 up to 256, 64 up to 512, ...: four buckets per octave (20 up to 512), padding below 25% beyond 32
    tokens; never above the profile's maximum. Powers of two are their own buckets.
    """
    seq = int(seq)
    step = max(8, (1 << max(0, (seq - 1).bit_length() - 1)) // 4)
    return min(-(-seq // step) * step, seq_max)


# ------------------------------------------------------------------------------------------------ lowering
def _gpu_missing(op) -> str | None:
    """What of a known op type the GPU runtime's kernels lack (attributes the IR grew for Llama-family and
    relative-position models, which the reference backend runs), or None."""
    a, w = op.get("attrs", {}), op.get("weights", {})
    if op["type"] == "Embedding" and not w.get("position"):
        return "no position table (rotary or relative positions)"
    if op["type"] == "Linear":
        if a.get("activation", "none") not in _ACT:
            return f"activation {a['activation']!r}"
        if a.get("gated"):
            return "a gated epilogue (SwiGLU/GeGLU)"
        if len(op["inputs"]) > 1 and op["inputs"][1]:
            return "a residual input (parallel attention and MLP branches)"
    if op["type"] == "Attention":
        if a.get("num_kv_heads", a.get("num_heads")) != a.get("num_heads"):
            return "grouped-query K/V heads (num_kv_heads)"
        if a.get("rotary_dim") or w.get("inv_freq"):
            return "rotary position embeddings"
        if w.get("relative_bias"):
            return "a relative-position score bias"
        if w.get("alibi_slopes"):
            return "an ALiBi score bias (alibi_slopes)"
        if a.get("window") is not None:
            return "a sliding attention window (window)"
    return None


def _lower_plan(plan) -> dict:
    """The plan as simple lists for _C.Engine: tensors, ops (dicts of codes), weights (name, array).

    Weights are converted where the kernels need one dtype per op (exactly what the reference computes):
    Linear weights to the GEMM operand type (fp32 for fp32 ops, fp16 otherwise; the reference rounds
    operands the same way), a fp16 bias to fp32 when the output is fp32 (exact), embedding tables and
    gamma/beta to a common type (fp32 when they differ; exact).
    """
    for op in plan.ops:  # a valid plan may hold ops only the reference backend runs (Pool)
        if op["type"] not in _OP:
            hint = ("build the plan without the outputs that need it (--outputs)" if op["type"] == "Pool"
                    else "run it on the reference backend")
            raise PlanError(f"op {op['name']!r}: the GPU runtime does not run {op['type']} ops yet (the reference "
                            f"backend does); {hint}")
        missing = _gpu_missing(op)
        if missing:
            raise PlanError(f"op {op['name']!r}: the GPU runtime does not run {op['type']} ops with {missing} yet "
                            f"(the reference backend does)")
    tensors = plan.tensors
    names = list(tensors)
    tindex = {n: i for i, n in enumerate(names)}
    tlist = []
    for n in names:
        t = tensors[n]
        dims = [-1 if d == "B" else -2 if d == "S" else int(d) for d in t["shape"]]
        tlist.append((n, _ELEM[t["dtype"]], dims))

    weights: list[tuple[str, np.ndarray]] = []
    windex: dict[tuple[str, str], int] = {}

    def weight(name: str, dtype: str) -> int:
        key = (name, dtype)
        if key not in windex:
            a = np.asarray(plan.weights[name])
            label = name
            if a.dtype.name != dtype:
                a = a.astype(dtype)
                label = f"{name} (as {dtype})"
            windex[key] = len(weights)
            weights.append((label, np.ascontiguousarray(a)))
        return windex[key]

    def common(*names_):
        dts = {plan.weights[n].dtype.name for n in names_ if n}
        return dts.pop() if len(dts) == 1 else "float32"

    ops = []
    for op in plan.ops:
        attrs = op.get("attrs", {})
        w = {k: v for k, v in op.get("weights", {}).items() if v}
        d: dict[str, Any] = {
            "type": _OP[op["type"]],
            "name": op["name"],
            "inputs": [tindex[t] if t else -1 for t in op["inputs"]],
            "outputs": [tindex[t] if t else -1 for t in op["outputs"]],
            "precision": _PREC[op["precision"]],
        }
        wmap: dict[str, int] = {}
        typ = op["type"]
        if typ == "Embedding":
            tdt = common(w["word"], w["position"], w.get("token_type"))
            for role in ("word", "position", "token_type"):
                if role in w:
                    wmap[role] = weight(w[role], tdt)
            if "gamma" in w:
                pdt = common(w["gamma"], w["beta"])
                wmap["gamma"] = weight(w["gamma"], pdt)
                wmap["beta"] = weight(w["beta"], pdt)
                d["epsilon"] = float(attrs["epsilon"])
            d["position_offset"] = int(attrs.get("position_offset", 0))
        elif typ == "Linear":
            operand = "float32" if op["precision"] == "fp32" else "float16"
            wmap["weight"] = weight(w["weight"], operand)
            if "bias" in w:
                y_dt = tensors[op["outputs"][0]]["dtype"]
                b_dt = plan.weights[w["bias"]].dtype.name
                # same type as y: fused into cuBLASLt's epilogue; fp16 bias for fp32 y: widened (exact);
                # fp32 bias for fp16 y: kept, the runtime adds it in its own fp32 epilogue kernel
                wmap["bias"] = weight(w["bias"], "float32" if y_dt == "float32" else b_dt)
            d["activation"] = _ACT[attrs.get("activation", "none")]
        elif typ == "Attention":
            d["num_heads"] = int(attrs["num_heads"])
            d["head_size"] = int(attrs["head_size"])
            d["scale"] = float(attrs["scale"])
            d["causal"] = bool(attrs.get("causal", False))
        elif typ == "LayerNorm":
            pdt = common(w["gamma"], w["beta"])
            wmap["gamma"] = weight(w["gamma"], pdt)
            wmap["beta"] = weight(w["beta"], pdt)
            d["epsilon"] = float(attrs["epsilon"])
        d["weights"] = wmap
        ops.append(d)

    prof = plan.profile
    return {
        "tensors": tlist,
        "ops": ops,
        "weights": weights,
        "inputs": [tindex[i["name"]] for i in plan.inputs],
        "outputs": [tindex[o["name"]] for o in plan.outputs],
        "batch_max": int(prof["batch"][2]),
        "seq_max": int(prof["seq"][2]),
        "tf32": bool(plan.tf32),
    }


# ------------------------------------------------------------------------------------------------ engine
class Engine:
    """A plan's weights on one GPU (uploaded once, immutable) and its ops; make Contexts to run it."""

    def __init__(self, plan, device: int = 0):
        c = _load_extension()
        device = int(device)
        n = c.device_count()
        if n == 0:
            raise RuntimeUnavailableError(c.device_problem(device) or "no CUDA device is visible")
        if not 0 <= device < n:
            raise RuntimeUnavailableError(f"device {device} does not exist ({n} CUDA device(s) visible)")
        self.plan = plan
        self.device = device
        low = _lower_plan(plan)
        # _C.Engine checks the device (architecture of this build vs the GPU) and raises DeviceError
        self._c = c.Engine(low["tensors"], low["ops"], low["weights"], low["inputs"], low["outputs"],
                           low["batch_max"], low["seq_max"], low["tf32"], device)
        self._seq_max = low["seq_max"]
        info = self._c.input_info()  # per graph input: (tensor, used, is_mask, limit)
        self._inputs = [(i["name"], bool(used), bool(is_mask))
                        for i, (_, used, is_mask, _) in zip(plan.inputs, info)]
        self._outputs = []
        for o in plan.outputs:
            inner = tuple(int(d) for d in o["shape"][2:])
            self._outputs.append((o["name"], np.dtype(o["dtype"]), inner))
        # which attention kinds read the mask (padding exactness, see Context._bucket)
        self._mask_causal = any(op["type"] == "Attention" and len(op["inputs"]) > 1 and op["inputs"][1]
                                and op.get("attrs", {}).get("causal", False) for op in plan.ops)
        self._mask_bidir = any(op["type"] == "Attention" and len(op["inputs"]) > 1 and op["inputs"][1]
                               and not op.get("attrs", {}).get("causal", False) for op in plan.ops)

    @classmethod
    def load(cls, path, device: int = 0) -> "Engine":
        """Load and validate a plan file (trtrun.plan.load_plan; PlanError on a bad file) onto `device`."""
        from .plan import load_plan

        return cls(load_plan(path), device)

    @property
    def weight_bytes(self) -> int:
        """Device bytes of the uploaded weights."""
        return int(self._c.weight_bytes)

    def create_context(self, *, use_graphs: bool = True, bucket: bool = True,
                       workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, max_graphs: int = 256,
                       ffn_chunks: int = DEFAULT_FFN_CHUNKS, fuse_residual: bool = True,
                       fuse_residual_min_rows: int = DEFAULT_FUSE_RESIDUAL_MIN_ROWS,
                       ffn_chunk_min_rows: int = DEFAULT_FFN_CHUNK_MIN_ROWS,
                       gemm_search: str = DEFAULT_GEMM_SEARCH,
                       split_ln_max_rows: int = DEFAULT_SPLIT_LN_MAX_ROWS,
                       split_ln_slice: int = DEFAULT_SPLIT_LN_SLICE) -> "Context":
        """A Context: own CUDA stream, activation arena (allocated now, at the profile's maximum shapes:
        DeviceError if it does not fit), pinned host buffers, cuBLASLt workspace and CUDA-graph cache.

        use_graphs: capture each (batch, sequence bucket) shape into a CUDA graph on its first run.
        bucket: pad sequences up to bucket_seq(S) (pad keys masked, pad rows sliced off) so few graphs
            serve all lengths; False runs at the exact length.
        workspace_bytes: cuBLASLt workspace (default 4 MiB).
        ffn_chunks: feed-forward blocks run in row chunks of ceil(rows_max / ffn_chunks) rows, so their
            wide intermediate takes 1/ffn_chunks of its full size in the arena (1: off). Results are the
            same row for row; shapes up to rows_max / ffn_chunks rows run unchunked. Only where a chunk has at
            least ffn_chunk_min_rows rows (default 4096): below that every extra GEMM adds 5-10 us of mostly
            fixed cost (GPT-2 at 1 x 512 in 256-row chunks: ~+0.14 ms expected).
        fuse_residual: where an fp16 GEMM's Linear feeds a LayerNorm whose residual is fp32 (GPT-2's residual
            stream in hybrid plans), the GEMM adds the residual in its epilogue and the LayerNorm reads the sum:
            the same fp32 arithmetic in another order, fewer bytes moved. Used at runs of at least
            fuse_residual_min_rows tokens (batch x sequence bucket); below that it was slower on an H200.
        gemm_search: how each GEMM shape's cuBLASLt algorithm is chosen on its first run (once per process,
            shared by every context). "heuristic": cuBLASLt's top 8 proposals, timed (~0.1 s). "focused"
            (default): those, plus ~300 configurations of the heuristic's algorithm (every tile with a 1x1
            cluster, then the fastest 4 tiles with other cluster shapes and custom options), each timed after an
            L2 flush with the GEMM's inputs read back into the L2 (in a forward pass a GEMM's weights are never
            L2-resident, its activations are): 3-5 s for the first shape in a process (cuBLASLt loads the
            kernels), up to ~2 s for each later one. On an H200 BERT-base hybrid ran 2-4% faster at 1x128,
            8x128 and 32x128 than with "heuristic"; on H100s 1-4.5% faster at 1x128, but 2-5% slower at 8x128
            in two processes of three (docs/performance.md, "GEMMs"). "exhaustive": every tile x
            cluster-shape x custom-option configuration cuBLASLt accepts for the heuristic's algorithms (about a
            minute for the first shape, seconds after). save_gemm_cache / load_gemm_cache keep the choices
            across processes.
        split_ln_max_rows: at runs of at most this many tokens (batch x sequence bucket), a Linear whose output
            only a LayerNorm reads (fp16 operands, fp32 statistics: hybrid plans) runs as K slices of
            split_ln_slice in one batched cuBLASLt call, and the LayerNorm sums the fp32 slices and adds the
            bias: more thread blocks for a GEMM of few rows and one kernel less (no split-K reduction). The
            Linear's output is then not rounded to fp16 before the LayerNorm (one rounding fewer than the
            plan's hybrid contract; results differ from the unsplit path by about that rounding). 0: never.
        """
        return Context(self, use_graphs=use_graphs, bucket=bucket, workspace_bytes=workspace_bytes,
                       max_graphs=max_graphs, ffn_chunks=ffn_chunks, fuse_residual=fuse_residual,
                       fuse_residual_min_rows=fuse_residual_min_rows, ffn_chunk_min_rows=ffn_chunk_min_rows,
                       gemm_search=gemm_search, split_ln_max_rows=split_ln_max_rows, split_ln_slice=split_ln_slice)

    def __repr__(self) -> str:
        return (f"<trtrun.runtime.Engine {self.plan.precision} on cuda:{self.device}, "
                f"{len(self.plan.ops)} ops, {self.weight_bytes / 2**20:.1f} MiB of weights>")


# ------------------------------------------------------------------------------------------------ device arrays
_TYPESTR = {"<i8": "int64", "<i4": "int32", "<f4": "float32", "<f2": "float16"}
_DLPACK = {(0, 64): "int64", (0, 32): "int32", (2, 32): "float32", (2, 16): "float16"}


class DeviceArray:
    """Device memory that run_device returns when the caller gives no output tensors and the inputs are
    neither torch nor cupy. Readable by torch (`torch.as_tensor(a, device="cuda")`) and cupy
    (`cupy.asarray(a)`) through __cuda_array_interface__, or copied to numpy with `.numpy()`."""

    def __init__(self, shape, dtype, device: int = 0):
        c = _load_extension()
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
        info = _load_extension().dlpack_info(cap)
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
    if isinstance(stream, (int, np.integer)):
        return int(stream)
    for attr in ("cuda_stream", "ptr", "handle"):  # torch.cuda.Stream, cupy Stream, others
        v = getattr(stream, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    raise InputError(f"stream must be an int (cudaStream_t) or a stream object with .cuda_stream/.ptr, got "
                     f"{type(stream).__name__}")


# ------------------------------------------------------------------------------------------------ context
class Context:
    """Runs an Engine: own CUDA stream, activation arena, pinned I/O buffers, cuBLASLt, CUDA graphs.

    Thread-safe (calls on one Context are serialized); for parallel work, one Context per thread.
    """

    def __init__(self, engine: Engine, *, use_graphs: bool = True, bucket: bool = True,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, max_graphs: int = 256,
                 ffn_chunks: int = DEFAULT_FFN_CHUNKS, fuse_residual: bool = True,
                 fuse_residual_min_rows: int = DEFAULT_FUSE_RESIDUAL_MIN_ROWS,
                 ffn_chunk_min_rows: int = DEFAULT_FFN_CHUNK_MIN_ROWS, gemm_search: str = DEFAULT_GEMM_SEARCH,
                 split_ln_max_rows: int = DEFAULT_SPLIT_LN_MAX_ROWS, split_ln_slice: int = DEFAULT_SPLIT_LN_SLICE):
        check_gemm_search(gemm_search, InputError)
        if isinstance(ffn_chunks, bool) or not isinstance(ffn_chunks, int) or ffn_chunks < 1:
            raise InputError(f"ffn_chunks must be an integer >= 1, got {ffn_chunks!r}")
        if isinstance(fuse_residual_min_rows, bool) or not isinstance(fuse_residual_min_rows, int) \
                or fuse_residual_min_rows < 1:
            raise InputError(f"fuse_residual_min_rows must be an integer >= 1, got {fuse_residual_min_rows!r}")
        if isinstance(ffn_chunk_min_rows, bool) or not isinstance(ffn_chunk_min_rows, int) or ffn_chunk_min_rows < 1:
            raise InputError(f"ffn_chunk_min_rows must be an integer >= 1, got {ffn_chunk_min_rows!r}")
        if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes < 0:
            raise InputError(f"workspace_bytes must be an integer >= 0, got {workspace_bytes!r}")
        if isinstance(split_ln_max_rows, bool) or not isinstance(split_ln_max_rows, int) or split_ln_max_rows < 0:
            raise InputError(f"split_ln_max_rows must be an integer >= 0, got {split_ln_max_rows!r}")
        if isinstance(split_ln_slice, bool) or not isinstance(split_ln_slice, int) or split_ln_slice < 8 \
                or split_ln_slice % 8:
            raise InputError(f"split_ln_slice must be a multiple of 8 (>= 8), got {split_ln_slice!r}")
        c = _load_extension()
        self.engine = engine
        self.bucket = bool(bucket)
        self.workspace_bytes = int(workspace_bytes)
        self._lock = threading.Lock()
        self._c = c.Context(engine._c, bool(use_graphs), int(workspace_bytes), int(max_graphs), int(ffn_chunks),
                            bool(fuse_residual), int(fuse_residual_min_rows), int(ffn_chunk_min_rows), gemm_search,
                            int(split_ln_max_rows), int(split_ln_slice))
        self.gemm_search = gemm_search
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
            if self.engine._mask_bidir and (~mask.any(axis=1)).any():
                return S
            if self.engine._mask_causal and (mask[:, 0] == 0).any():
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
        run (CUDA graph after the first run at a shape), copied out; the call waits for the result.
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
        return out

    # ---------------------------------------------------------------- device arrays
    def run_device(self, feeds_dev: Mapping[str, Any], outputs_dev: Mapping[str, Any] | None = None,
                   stream=None) -> dict[str, Any]:
        """Run on device tensors without host copies (torch, cupy, anything with __cuda_array_interface__
        or __dlpack__). Inputs: [batch, seq] int64 or int32 on this engine's device, contiguous along the
        sequence axis; attention_mask and token_type_ids default to ones and zeros as in run().

        outputs_dev: name -> preallocated contiguous [batch, seq, ...] tensors of the output's dtype (any
        missing ones are allocated: torch/cupy like the inputs, else DeviceArray).
        stream: None runs on the context's own stream and waits for the result; otherwise a cudaStream_t
        (int, 0 = legacy default stream) or a stream object (torch.cuda.Stream, cupy Stream): the work is
        enqueued on it after the work already there, and the call returns without waiting.

        Token ids are checked on the device: an id outside the vocabulary is replaced by 0 and reported
        as InputError by this call (stream=None) or by the next synchronize().
        Sequence bucketing: outputs at positions whose attention row is entirely masked (a sample whose
        mask is all zeros; left padding in a causal model) are computed over the padded length; pass a
        Context made with bucket=False for exact unpadded semantics there. Valid positions are unaffected.
        """
        eng = self.engine
        self._require_open()
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
