"""The plan as the GPU runtime takes it: ops, dtypes, precisions and activations by the plan's names (the
extension parses them: native/core/types.cpp), weights in the dtype each kernel reads, and what of a plan the
runtime's kernels cannot run yet (refused by name, against trtrun.plan.format's GPU_* names)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PlanError
from ..plan.format import DEVICE_DTYPES, GPU_ACTIVATIONS, GPU_OP_TYPES, GPU_PLAN_PRECISIONS, GPU_PRECISIONS
from .tail import on_host

# The fp32 tables lowering makes for the runtime (rotary cos/sin [seq_max, R/2] per inv_freq and scale, a score bias
# [H, 2*seq_max - 1] per relative table or slopes) grow with the profile's longest sequence, which nothing in a plan
# file bounds where no position table does (rotary, relative and ALiBi models). Real plans need megabytes (a
# 131,072-token Llama 3 profile: 64 MiB of rotary tables; 524,288 tokens: 256 MiB); a crafted profile of 2^31 - 1
# tokens would ask tens of GiB of host memory before the Engine could refuse anything. Lowering refuses tables over
# this, in all, before it makes any: making rotary tables takes about 3 times their size for a while (float64 cos and
# sin) and 10 s a GiB on one core.
MAX_TABLE_BYTES = 256 << 20
# The head sizes native/kernels/attention is instantiated for (attention.h). The Engine does not check them: the
# attention launcher refuses any other at the first run, naming no op, so lowering refuses them by op beforehand.
GPU_HEAD_SIZES = (32, 64, 80, 96, 128, 256)


def bucket_seq(seq: int, seq_max: int) -> int:
    """The padded sequence length a run at `seq` executes at (so that few CUDA graphs serve all lengths).

    The step is a quarter of the largest power of two below `seq` (at least 8): 8 up to 64, 16 up to 128,
    32 up to 256, 64 up to 512, ...: four buckets per octave (20 up to 512), padding below 25% beyond 32
    tokens; never above the profile's maximum. Powers of two are their own buckets.
    """
    seq = int(seq)
    step = max(8, (1 << max(0, (seq - 1).bit_length() - 1)) // 4)
    return min(-(-seq // step) * step, seq_max)


def gpu_missing(op) -> str | None:
    """What of a known op type the GPU runtime's kernels lack, or None. Llama-family ops (RMSNorm, silu and gated
    Linears, Linear residual inputs, grouped-query and rotary attention, query/key norms (qk_norm_missing),
    embeddings without positions) and the Attention's score biases (relative-position tables, ALiBi) and sliding
    windows have kernels: native/kernels/rmsnorm, epilogue, rotary and attention. The attention kernels take head
    sizes 32, 64, 80 (phi-2), 96 (Phi-3), 128 and 256 (Gemma) only (GPU_HEAD_SIZES): an Attention of another is
    refused with its head size (which also keeps a q/k-normed head within the rotary pass's one warp, 256 values).
    Soft-capped scores (Gemma 2) are the attention kernels' too, and an RMSNorm with the residual added after it
    (OLMo-2, EXAONE 4) the RMSNorm kernel's. A LayerNorm with the residual after it has no kernel yet."""
    a = op.get("attrs", {})
    if op["type"] == "Linear":
        if a.get("activation", "none") not in GPU_ACTIVATIONS:
            return f"activation {a['activation']!r}"
    if op["type"] == "LayerNorm" and a.get("residual_after"):
        return "LayerNorm with the residual added after the norm (residual_after)"
    if op["type"] == "Attention":
        if int(a.get("head_size", 0)) not in GPU_HEAD_SIZES:
            return f"head size {a.get('head_size')} (the attention kernels take {', '.join(map(str, GPU_HEAD_SIZES))})"
    return None


def rotary_key(op) -> tuple[str, float]:
    """What makes an Attention's rotary tables: its inv_freq weight and rotary_scale (layers sharing both share them)."""
    return op["weights"]["inv_freq"], float(op.get("attrs", {}).get("rotary_scale", 1.0))


def bias_key(op) -> tuple:
    """What makes an Attention's score-bias table: its slopes or relative table with the attributes read with it (layers
    naming the same table and attributes share one device table)."""
    a, w = op.get("attrs", {}), op.get("weights", {})
    if w.get("alibi_slopes"):
        return "alibi", w["alibi_slopes"], bool(a.get("alibi_symmetric", False))
    return "relative", w["relative_bias"], int(a["relative_max_distance"]), bool(a["relative_bidirectional"])


def check_table_bytes(plan) -> None:
    """PlanError naming the op whose position tables (rotary_key, bias_key) take the lowering past MAX_TABLE_BYTES;
    reads only the header, so it runs before any table is made."""
    seen: set = set()
    total = 0
    for op in plan.ops:
        w = op.get("weights", {})
        if op["type"] != "Attention" or not (w.get("inv_freq") or w.get("alibi_slopes") or w.get("relative_bias")):
            continue
        seq_max = int(plan.profile["seq"][2])
        tables = []
        if w.get("inv_freq"):  # cos and sin [seq_max, R/2] (the validated inv_freq holds R/2 values)
            tables.append((("rotary",) + rotary_key(op), 2 * seq_max * (int(op["attrs"]["rotary_dim"]) // 2) * 4,
                           "rotary cos/sin [max seq, rotary_dim/2] x 2"))
        if w.get("alibi_slopes") or w.get("relative_bias"):
            tables.append((bias_key(op), int(op["attrs"]["num_heads"]) * (2 * seq_max - 1) * 4,
                           "score bias [num_heads, 2 * max seq - 1]"))
        for key, nbytes, what in tables:
            if key in seen:
                continue
            seen.add(key)
            total += nbytes
            if total > MAX_TABLE_BYTES:
                raise PlanError(f"op {op['name']!r}: the GPU runtime's fp32 tables by position ({what} here) would take "
                                f"{total / 2 ** 20:,.0f} MiB at the profile's max sequence {seq_max:,}, more than the "
                                f"{MAX_TABLE_BYTES >> 20:,} MiB lowering makes; build the plan for shorter sequences "
                                f"(trtrun build --max BATCH,SEQ) or run it on the reference backend")


def distance_table(plan, op, seq_max: int) -> np.ndarray:
    """An Attention's score bias as the GPU kernel reads it: float32 [H, 2*seq_max - 1], entry d + seq_max - 1 the
    bias at distance d = j - i (key - query). Made by the reference's own function (trtrun.reference.distance_bias),
    so the kernel adds the reference's values bit for bit; a relative or ALiBi bias depends on the distance alone,
    so one table serves every sequence length up to seq_max, padded to a bucket or not."""
    from ..reference import distance_bias

    a, w = op.get("attrs", {}), op.get("weights", {})
    rel = np.arange(-(seq_max - 1), seq_max)
    if w.get("alibi_slopes"):
        t = distance_bias(rel, alibi_slopes=plan.weights[w["alibi_slopes"]],
                          alibi_symmetric=bool(a.get("alibi_symmetric", False)))
    else:
        t = distance_bias(rel, relative_bias=plan.weights[w["relative_bias"]], max_distance=a["relative_max_distance"],
                          bidirectional=bool(a["relative_bidirectional"]))
    return np.ascontiguousarray(t, np.float32)


def has_fully_masked_rows(mask: np.ndarray, causal: bool = False, window: int | None = None) -> bool:
    """Whether some query row of a [B, S] attention mask has every key masked under an Attention's rules (padding,
    `causal`: keys after the query, `window`: keys further than `window` from it). Such a row is uniform over all
    keys (docs/plan-format.md), so its output depends on the length the runtime pads a run to."""
    m = np.asarray(mask) != 0
    B, S = m.shape
    if window is None and not causal:
        return bool((~m.any(axis=1)).any())
    W = S if window is None else min(int(window), S)
    csum = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(m, axis=1)], axis=1)  # csum[:, k] = keys < k
    i = np.arange(S)
    lo = np.maximum(i - W, 0)
    hi = i + 1 if causal else np.minimum(i + W + 1, S)  # keys [lo, hi) are the row's own
    return bool(((csum[:, hi] - csum[:, lo]) == 0).any())


def qk_norm_missing(plan: Plan, op: dict) -> str | None:
    """What the GPU runtime lacks for an Attention's query/key norm (None: it runs it). Its forms (native/kernels/rotary,
    QkNorm): gains of head_size values shared by the heads (RMS: Qwen3; LayerNorm: Persimmon), or a gain per column
    of the heads, [H*D] for Q and [Hkv*D] for K (LayerNorm: a row per head, StableLM-2; RMS: one norm over each
    token's whole Q and K part, OLMo-2). The reference backend also takes Q and K gains of different forms."""
    a = op["attrs"]
    H, D = int(a["num_heads"]), int(a["head_size"])
    Hkv = int(a.get("num_kv_heads") or H)
    shape = {r: [int(d) for d in plan.header["weights"][op["weights"][r]]["shape"]] for r in ("q_norm", "k_norm")}
    per_column = H > 1 and shape["q_norm"] == [H * D]
    if shape["q_norm"] != [H * D if per_column else D] or shape["k_norm"] != [Hkv * D if per_column else D]:
        return (f"query/key norm gains of different forms (q_norm {shape['q_norm']}, k_norm {shape['k_norm']}; "
                f"the kernel takes [{D}] for both, or [{H * D}] and [{Hkv * D}])")
    return None  # head sizes beyond the per-head pass's 256 values are refused by gpu_missing already


def check_gpu_support(plan) -> None:
    """PlanError naming the first op (or the plan's precision) the GPU runtime cannot run; None when it can.

    Reads only the plan's header: nothing is converted and the extension is not loaded, so a caller can choose
    the backend before it builds an engine (trtrun.backends.choose_backend). The host tail's ops (rank-2 outputs:
    Pool, a classification or question-answering head; trtrun.runtime.tail) are not the device's to run and pass.
    """
    for op in plan.ops:
        if on_host(plan, op):
            continue  # the host tail: runs on the host (trtrun.runtime.tail)
        if op["type"] not in GPU_OP_TYPES:
            raise PlanError(f"op {op['name']!r}: the GPU runtime does not run {op['type']} ops yet (the reference "
                            f"backend does); run it on the reference backend")
        if op["precision"] not in GPU_PRECISIONS:
            raise PlanError(f"op {op['name']!r}: precision {op['precision']}: the GPU runtime has no "
                            f"{op['precision']} path yet; run this plan on the reference backend (--backend reference)")
        missing = gpu_missing(op)
        if not missing and op["type"] == "Attention" and op.get("weights", {}).get("q_norm"):
            missing = qk_norm_missing(plan, op)
        if not missing and op["type"] == "Linear" and op["precision"] == "fp8":
            # cuBLASLt's fp8 GEMMs need 16-byte leading dimensions (docs/runtime.md "fp8 Linears")
            K, N = (int(d) for d in plan.header["weights"][op["weights"]["weight"]]["shape"])
            if K % 16 or N % 16:
                missing = f"an fp8 weight of {K} x {N} (cuBLASLt's fp8 GEMMs need both multiples of 16)"
        if missing:
            raise PlanError(f"op {op['name']!r}: the GPU runtime does not run {op['type']} ops with {missing} yet "
                            f"(the reference backend does)")
    if plan.precision not in GPU_PLAN_PRECISIONS:
        raise PlanError(f"plan precision {plan.precision}: the GPU runtime does not run {plan.precision} plans yet; "
                        f"run this plan on the reference backend (--backend reference)")
    check_table_bytes(plan)


def lower_plan(plan) -> dict:
    """The plan as simple lists for _C.Engine: tensors, ops (dicts; types, dtypes, precisions and activations by
    name), weights (name, array).

    Weights are converted where the kernels need one dtype per op (exactly what the reference computes):
    Linear weights to the GEMM operand type (fp32 for fp32 ops, fp16 otherwise; the reference rounds
    operands the same way), a fp16 bias to fp32 when the output is fp32 (exact), embedding tables,
    gamma/beta and an Attention's q_norm/k_norm to a common type (fp32 when they differ; exact).

    An fp8 Linear's weight keeps its E4M3 codes, transposed once here to [N, K] (cuBLASLt's fp8 GEMMs on Hopper
    take the weight as the transposed operand: native/runtime/gemm.cpp); its `weight_scale` goes as it is, except
    that a per-tensor [1] scale without a static `x_scale` is broadcast to [N] (the GEMM then takes both scales as
    outer vectors, one per output channel and one per token: the same products); `x_scale` [1] as it is.
    """
    check_gpu_support(plan)
    tail = [op["name"] for op in plan.ops if on_host(plan, op)]
    if tail:
        raise PlanError(f"op {tail[0]!r} belongs to the plan's host tail (a rank-2 output): lower the device part "
                        f"that trtrun.runtime.tail.split_host_tail returns")
    tensors = plan.tensors
    names = list(tensors)
    tindex = {n: i for i, n in enumerate(names)}
    tlist = []
    for n in names:
        t = tensors[n]
        dims = [-1 if d == "B" else -2 if d == "S" else int(d) for d in t["shape"]]
        tlist.append((n, DEVICE_DTYPES.get(t["dtype"], t["dtype"]), dims))

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

    def fp8_weight(name: str) -> int:
        """The E4M3 codes of an fp8 Linear's weight [K, N] as [N, K] row-major (bytes moved, never re-rounded)."""
        key = (name, "fp8 [N, K]")
        if key not in windex:
            a = np.asarray(plan.weights[name])
            windex[key] = len(weights)
            weights.append((f"{name} (fp8, transposed to [N, K])", np.ascontiguousarray(a.T)))
        return windex[key]

    def broadcast_scale(name: str, n: int) -> int:
        """A per-tensor weight scale [1] as [n] equal values (outer-vector scaling takes one per channel)."""
        key = (name, f"float32 [{n}]")
        if key not in windex:
            windex[key] = len(weights)
            v = np.full(n, np.asarray(plan.weights[name], np.float32).reshape(-1)[0], np.float32)
            weights.append((f"{name} (broadcast to [{n}])", v))
        return windex[key]

    seq_max = int(plan.profile["seq"][2])
    rotary_index: dict[tuple[str, float], tuple[int, int]] = {}

    def rotary(inv_freq: str, scale: float) -> tuple[int, int]:
        """Weight indices of the fp32 cos/sin tables [seq_max, R/2] of one inv_freq and scale, made once per
        engine by the reference's own function (so the angles and the scaling are its values, bit for bit) and
        shared by every layer naming the same table."""
        key = (inv_freq, scale)
        if key not in rotary_index:
            from ..reference import rotary_tables

            cos, sin = rotary_tables(seq_max, np.asarray(plan.weights[inv_freq]), scale)
            rotary_index[key] = (len(weights), len(weights) + 1)
            weights.append((f"{inv_freq} (rotary cos, scale {scale:g})", np.ascontiguousarray(cos, np.float32)))
            weights.append((f"{inv_freq} (rotary sin, scale {scale:g})", np.ascontiguousarray(sin, np.float32)))
        return rotary_index[key]

    bias_index: dict[tuple, int] = {}

    def bias_table(op) -> int:
        """Weight index of an Attention's per-distance score bias (distance_table), made once per engine for each
        table and its attributes: layers naming the same relative_bias table (MPNet: all of them) or the same
        slopes share one device table."""
        key = bias_key(op)
        if key not in bias_index:
            bias_index[key] = len(weights)
            weights.append((f"{key[1]} (score bias by distance, {key[0]})", distance_table(plan, op, seq_max)))
        return bias_index[key]

    def common(*names_):
        dts = {plan.weights[n].dtype.name for n in names_ if n}
        return dts.pop() if len(dts) == 1 else "float32"

    ops = []
    for op in plan.ops:
        attrs = op.get("attrs", {})
        w = {k: v for k, v in op.get("weights", {}).items() if v}
        d: dict[str, Any] = {
            "type": op["type"],
            "name": op["name"],
            "inputs": [tindex[t] if t else -1 for t in op["inputs"]],
            "outputs": [tindex[t] if t else -1 for t in op["outputs"]],
            "precision": op["precision"],
        }
        wmap: dict[str, int] = {}
        typ = op["type"]
        if typ == "Embedding":
            tdt = common(w["word"], w.get("position"), w.get("token_type"))  # no position table: rotary models
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
            if op["precision"] == "fp8":
                wmap["weight"] = fp8_weight(w["weight"])
                n = int(plan.weights[w["weight"]].shape[1])
                scale = np.asarray(plan.weights[w["weight_scale"]])
                wmap["weight_scale"] = (weight(w["weight_scale"], "float32") if scale.size == n or "x_scale" in w
                                        else broadcast_scale(w["weight_scale"], n))
                if "x_scale" in w:
                    wmap["x_scale"] = weight(w["x_scale"], "float32")
            else:
                operand = "float32" if op["precision"] == "fp32" else "float16"
                wmap["weight"] = weight(w["weight"], operand)
            if "bias" in w:
                y_dt = tensors[op["outputs"][0]]["dtype"]
                b_dt = plan.weights[w["bias"]].dtype.name
                # same type as y: fused into cuBLASLt's epilogue; fp16 bias for fp32 y: widened (exact);
                # fp32 bias for fp16 y: kept, the runtime adds it in its own fp32 epilogue kernel
                wmap["bias"] = weight(w["bias"], "float32" if y_dt == "float32" else b_dt)
            d["activation"] = attrs.get("activation", "none")
            d["gated"] = bool(attrs.get("gated", False))
        elif typ == "Attention":
            d["num_heads"] = int(attrs["num_heads"])
            d["head_size"] = int(attrs["head_size"])
            d["scale"] = float(attrs["scale"])
            d["causal"] = bool(attrs.get("causal", False))
            d["num_kv_heads"] = int(attrs.get("num_kv_heads") or attrs["num_heads"])
            if "inv_freq" in w:
                d["rotary_dim"] = int(attrs["rotary_dim"])
                cos_i, sin_i = rotary(*rotary_key(op))
                wmap["rotary_cos"], wmap["rotary_sin"] = cos_i, sin_i
            if w.get("q_norm"):  # gains and biases in one dtype (the kernel reads them alike; widening is exact)
                roles = [r for r in ("q_norm", "k_norm", "q_norm_bias", "k_norm_bias") if w.get(r)]
                ndt = common(*(w[r] for r in roles))
                wmap.update({r: weight(w[r], ndt) for r in roles})
                d["qk_norm_epsilon"] = float(attrs.get("qk_norm_epsilon", 1e-6))  # the reference's default
                if attrs.get("qk_norm_kind", "rms") == "layer":
                    d["qk_norm_layer"] = True
                if attrs.get("qk_norm_after_rotary"):  # HunYuan: rotated first, normalised after
                    d["qk_norm_after_rotary"] = True
            if w.get("relative_bias") or w.get("alibi_slopes"):
                wmap["score_bias"] = bias_table(op)
            # -1: no window; a window of S - 1 or more masks nothing (the kernel's launcher treats it so too)
            d["window"] = -1 if attrs.get("window") is None else min(int(attrs["window"]), seq_max)
            if attrs.get("softcap") is not None:  # Gemma 2: scaled scores soft-capped before any bias
                d["softcap"] = float(attrs["softcap"])
        elif typ == "LayerNorm":
            pdt = common(w["gamma"], w["beta"])
            wmap["gamma"] = weight(w["gamma"], pdt)
            wmap["beta"] = weight(w["beta"], pdt)
            d["epsilon"] = float(attrs["epsilon"])
        elif typ == "RMSNorm":
            wmap["gamma"] = weight(w["gamma"], plan.weights[w["gamma"]].dtype.name)
            d["epsilon"] = float(attrs["epsilon"])
            if attrs.get("residual_after"):  # OLMo-2, EXAONE 4: y = residual + norm(x)
                d["residual_after"] = True
        d["weights"] = wmap
        ops.append(d)

    prof = plan.profile
    return {
        "tensors": tlist,
        "ops": ops,
        "weights": weights,
        "inputs": [tindex[i["name"]] for i in plan.inputs],
        # an output passing a graph input through needs no kernel and no buffer: Context returns the fed array
        "outputs": [tindex[o["name"]] for o in plan.outputs if "input" not in o],
        "batch_max": int(prof["batch"][2]),
        "seq_max": int(prof["seq"][2]),
        "tf32": bool(plan.tf32),
    }
