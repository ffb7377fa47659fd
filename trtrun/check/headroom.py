"""Overflow headroom: how close each value inside a plan comes to fp16's largest finite number, 65504, and
where in plan order fp16 first overflowed (Inf/NaN in an output, or silently inside an op).

`HeadroomAccumulator(plan).update(feeds, tensors, rows)` takes one batch's captured tensors (from
`ReferenceBackend(plan).run(feeds, capture=True)`, which keeps every activation in its plan dtype) and
records, per sample (valid tokens only), the largest |value| at these points, in plan order:

  every op output                      "output"     (the tensor as the plan stores it)
  LayerNorm  s = x + residual          "sum"        the residual stream / LayerNorm input
             |sum_i s_i| per token     "row_sum"    what the mean's reduction must hold
             max_i (s_i - mean)^2      "dev_sq"     each squared deviation
             sum_i (s_i - mean)^2      "var_sum"    N * variance: what the variance's reduction holds
  Embedding  word + position + type    "sum"        (and row_sum/dev_sq/var_sum when it has a LayerNorm)
  Attention  scale * Q K^T             "scores"     over the pairs the mask (and causality) allows

The internal quantities are recomputed in float64 from the op's captured inputs, in the dtype the plan
gave them, so they are the values the op had to represent. Where the op computes them in fp16 (the fp16
mode's LayerNorm statistics, embedding sums and attention scores), a value above 65504 is an fp16
overflow even when the op's output stays finite: a variance sum of Inf makes (s - mean)/sqrt(var) zero,
so the LayerNorm silently outputs beta. Each point records the dtype that holds the value (`held`):
"float16" for fp16 tensors, for every GEMM operand of an fp16/hybrid op (Linear x, Attention qkv, which
the kernel rounds to fp16), and for internal values of fp16-precision ops; "float32" otherwise.

65504 is fp16's largest finite value; round-to-nearest only turns values from 65520 up into Inf, so the
test `> 65504` flags a few values that would still round down to 65504: a margin of 0.02%, on the safe side.
"""

from __future__ import annotations

import re

import numpy as np

FP16_MAX = 65504.0
F32_MAX = float(np.finfo(np.float32).max)
F64 = np.float64
_LAYER_RE = re.compile(r"(?:^|[._/])(?:layers?|h|blocks?|l)[._]?(\d+)(?=[._/]|$)")
_GEMM_SLOTS = {("Linear", 0), ("Attention", 0)}


def layer_of(op_name: str, op_type: str = "") -> str:
    """The layer an op belongs to, from its name (`layer.3`, `h.3`, `blocks.3`, `l3.`): "3"; embeddings
    "emb"; ops outside every layer (a final LayerNorm) "final"."""
    m = _LAYER_RE.search(op_name)
    if m:
        return m.group(1)
    if op_type == "Embedding":
        return "emb"
    return "final"


def _absmax_rows(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per sample [B]: the largest |value| over valid tokens (NaN ignored unless all NaN; Inf kept)."""
    a = np.abs(np.asarray(a))
    tok = np.fmax.reduce(a.reshape(a.shape[0], a.shape[1], -1), axis=-1).astype(F64)  # [B, S]
    tok = np.where(valid, tok, -np.inf)
    return np.fmax.reduce(tok, axis=1)


def _nonfinite_rows(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    bad = ~np.isfinite(a.reshape(a.shape[0], a.shape[1], -1)).all(axis=-1)
    return (bad & valid).any(axis=1)


def _ln_stats(s: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample maxima of the LayerNorm reductions' values for s [B, S, N] (float64)."""
    with np.errstate(over="ignore", invalid="ignore"):
        n = s.shape[-1]
        row = s.sum(axis=-1)
        d = s - (row / n)[..., None]
        d2 = d * d
        out = {"sum": _absmax_rows(s, valid), "row_sum": _absmax_rows(row[..., None], valid),
               "dev_sq": _absmax_rows(d2, valid), "var_sum": _absmax_rows(d2.sum(axis=-1)[..., None], valid)}
    return out


def _headroom(limit: float, mx: float) -> float:
    """limit / max: how many times larger the value could grow before it overflows (inf for 0, 0 for Inf)."""
    if np.isnan(mx):
        return float("nan")
    if mx == 0:
        return float("inf")
    return 0.0 if np.isinf(mx) else limit / mx


class HeadroomAccumulator:
    """Collects per-sample maxima at every point of one plan over many batches; `result()` summarizes."""

    def __init__(self, plan):
        self.plan = plan
        self.precision = plan.precision
        self.dtypes = {n: t["dtype"] for n, t in plan.tensors.items()}
        gemm_operands = set()
        for op in plan.ops:
            for j, t in enumerate(op["inputs"]):
                if t and (op["type"], j) in _GEMM_SLOTS and op["precision"] != "fp32":
                    gemm_operands.add(t)
        self.points: list[dict] = []
        self._index: dict[tuple[str, str], int] = {}
        for i, op in enumerate(plan.ops):
            internal16 = op["precision"] == "fp16"
            typ = op["type"]
            quantities = []
            if typ in ("LayerNorm",) or (typ == "Embedding" and op["weights"].get("gamma")):
                quantities += ["sum", "row_sum", "dev_sq", "var_sum"]
            elif typ == "Embedding":
                quantities += ["sum"]
            elif typ == "Attention":
                quantities += ["scores"]
            for q in quantities:
                self._add(i, op, q, "float16" if internal16 else "float32", None)
            for t in op["outputs"]:
                if not t:
                    continue
                held = "float16" if (self.dtypes[t] == "float16" or t in gemm_operands) else "float32"
                self._add(i, op, "output", held, t)
        self._per_sample: list[list[np.ndarray]] = [[] for _ in self.points]
        self._nonfinite_first: list[np.ndarray] = []  # per batch: first op index with non-finite output, -1
        self._overflow_first: list[np.ndarray] = []   # per batch: first point index over its dtype's max, -1
        self.samples = 0

    def _add(self, i, op, quantity, held, tensor):
        key = (op["name"], quantity if tensor is None else f"output:{tensor}")
        self._index[key] = len(self.points)
        self.points.append({"op_index": i, "op": op["name"], "type": op["type"],
                            "layer": layer_of(op["name"], op["type"]), "quantity": quantity,
                            "tensor": tensor, "held": held})

    def _w(self, op, role):
        name = op.get("weights", {}).get(role)
        return None if not name else self.plan.weights[name]

    # ------------------------------------------------------------------------------------- per batch
    def update(self, feeds: dict, tensors: dict, rows: int | None = None) -> None:
        """Add one batch: feeds (int64 inputs), tensors (every captured tensor by name); only the first
        `rows` rows are real samples (the others were added to fill the profile's minimum batch)."""
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(feeds["input_ids"])))
        B = mask.shape[0] if rows is None else int(rows)
        valid = mask[:B].astype(bool)
        vals: dict[int, np.ndarray] = {}
        first_nf = np.full(B, -1, np.int64)
        for i, op in enumerate(self.plan.ops):
            typ = op["type"]
            ins = [tensors.get(t)[:B] if t else None for t in op["inputs"]]
            if typ == "LayerNorm":
                x = ins[0].astype(F64)
                if len(ins) > 1 and ins[1] is not None:
                    x = x + ins[1].astype(F64)
                x, v_ = (x[:, None], np.ones((B, 1), bool)) if x.ndim == 2 else (x, valid)  # one vector a sample
                for q, v in _ln_stats(x, v_).items():
                    vals[self._index[(op["name"], q)]] = v
            elif typ == "Embedding":
                ids = np.asarray(feeds["input_ids"])[:B]
                S = ids.shape[1]
                off = int(op.get("attrs", {}).get("position_offset", 0))
                e = self._w(op, "word")[ids].astype(F64) + self._w(op, "position")[off:off + S].astype(F64)[None]
                tt_w = self._w(op, "token_type")
                if tt_w is not None:
                    tt = ins[1] if len(ins) > 1 and ins[1] is not None else np.zeros_like(ids)
                    e = e + tt_w[tt].astype(F64)
                if op["weights"].get("gamma"):
                    for q, v in _ln_stats(e, valid).items():
                        vals[self._index[(op["name"], q)]] = v
                else:
                    vals[self._index[(op["name"], "sum")]] = _absmax_rows(e, valid)
            elif typ == "Attention":
                vals[self._index[(op["name"], "scores")]] = self._scores(op, ins[0], valid)
            for t in op["outputs"]:
                if not t:
                    continue
                a, v_ = tensors[t][:B], valid
                if len(self.plan.tensors[t]["shape"]) == 2 and self.plan.tensors[t]["shape"][1] == "S":
                    a = a[..., None]  # one value a token ([B, S]: question answering's scores)
                elif a.ndim == 2:  # one vector a sample (a Pool, a classification head): no token axis to mask
                    a, v_ = a[:, None], np.ones((B, 1), bool)
                vals[self._index[(op["name"], f"output:{t}")]] = _absmax_rows(a, v_)
                nf = _nonfinite_rows(a, v_)
                first_nf = np.where((first_nf < 0) & nf, i, first_nf)
        first_of = np.full(B, -1, np.int64)
        for k, p in enumerate(self.points):
            v = vals[k]
            self._per_sample[k].append(v)
            limit = FP16_MAX if p["held"] == "float16" else F32_MAX
            over = ~(v <= limit)  # NaN counts as over
            first_of = np.where((first_of < 0) & over, k, first_of)
        self._nonfinite_first.append(first_nf)
        self._overflow_first.append(first_of)
        self.samples += B

    def _scores(self, op, qkv, valid) -> np.ndarray:
        a = op["attrs"]
        H, D = int(a["num_heads"]), int(a["head_size"])
        scale = float(a["scale"])
        causal = bool(a.get("causal", False))
        B, S, _ = qkv.shape
        out = np.empty(B)
        tri = np.tril(np.ones((S, S), bool)) if causal else None
        HD = H * D
        for b in range(B):
            # float32 products with float32 accumulation: what every precision's QK^T computes (fp16 operands
            # are exact in float32); 2-D BLAS calls per head (numpy's stacked matmul is far slower)
            x = np.ascontiguousarray(qkv[b], dtype=np.float32)
            allowed = valid[b][:, None] & valid[b][None, :]
            if tri is not None:
                allowed &= tri
            m = -np.inf
            for h in range(H):
                q = x[:, h * D:(h + 1) * D]
                k = x[:, HD + h * D:HD + (h + 1) * D]
                with np.errstate(over="ignore", invalid="ignore"):
                    sc = np.abs((q @ k.T).astype(F64) * scale)
                m = np.fmax(m, np.fmax.reduce(np.where(allowed, sc, -np.inf), axis=None))
            out[b] = m
        return out

    # ------------------------------------------------------------------------------------- summary
    def result(self) -> dict:
        """Per point: max and median over samples of each sample's max |value|, headroom against the
        dtype holding it, and how many samples went past fp16's max there; plus where fp16 broke first."""
        pts = []
        for p, chunks in zip(self.points, self._per_sample):
            v = np.concatenate(chunks) if chunks else np.zeros(0)
            fin = v[np.isfinite(v)]
            mx = float(np.fmax.reduce(v)) if v.size else float("nan")  # NaN only where every sample is NaN
            limit = FP16_MAX if p["held"] == "float16" else F32_MAX
            pts.append({**p,
                        "max": mx,
                        "median": float(np.median(fin)) if fin.size else float("nan"),
                        "headroom": _headroom(limit, mx),
                        "headroom_fp16": _headroom(FP16_MAX, mx),
                        "samples_over_fp16": int((~(v <= FP16_MAX)).sum()),
                        "samples_nonfinite": int((~np.isfinite(v)).sum())})
        first_nf = np.concatenate(self._nonfinite_first) if self._nonfinite_first else np.zeros(0, np.int64)
        first_of = np.concatenate(self._overflow_first) if self._overflow_first else np.zeros(0, np.int64)
        ops = self.plan.ops

        def count(first, names):
            c: dict[str, int] = {}
            for f in first[first >= 0]:
                c[names(int(f))] = c.get(names(int(f)), 0) + 1
            return c

        nf = {"samples": int((first_nf >= 0).sum()),
              "first_op_counts": count(first_nf, lambda i: ops[i]["name"])}
        if nf["samples"]:
            i = int(first_nf[first_nf >= 0].min())
            nf["first_op"] = {"op_index": i, "op": ops[i]["name"], "type": ops[i]["type"],
                              "layer": layer_of(ops[i]["name"], ops[i]["type"])}
        of = {"samples": int((first_of >= 0).sum()),
              "first_point_counts": count(first_of, lambda k: f"{self.points[k]['op']} {self.points[k]['quantity']}")}
        if of["samples"]:
            k = int(first_of[first_of >= 0].min())
            p = self.points[k]
            of["first_point"] = {key: p[key] for key in ("op_index", "op", "type", "layer", "quantity", "held")}
            of["first_point"]["max"] = pts[k]["max"]
        return {"plan_precision": self.precision, "samples": self.samples, "points": pts,
                "first_nonfinite": nf, "first_overflow": of, "fp16_max": FP16_MAX}


def why_hybrid_is_safe(fp16_result: dict | None, hybrid_result: dict) -> dict:
    """Cross-reference the two plans' points: where fp16 overflowed, what the hybrid plan holds there
    (dtype and max); and the largest |value| at every point the hybrid plan keeps in fp16."""
    by_key = {(p["op"], p["quantity"], p["tensor"]): p for p in hybrid_result["points"]}
    by_pos = {(p["op_index"], p["quantity"]): p for p in hybrid_result["points"]}
    at_overflow = []
    if fp16_result is not None:
        for p in fp16_result["points"]:
            if p["samples_over_fp16"] == 0:
                continue
            h = by_key.get((p["op"], p["quantity"], p["tensor"])) or by_pos.get((p["op_index"], p["quantity"]))
            at_overflow.append({"op": p["op"], "layer": p["layer"], "quantity": p["quantity"],
                                "fp16_samples_over": p["samples_over_fp16"], "fp16_max": p["max"],
                                "hybrid_held": None if h is None else h["held"],
                                "hybrid_max": None if h is None else h["max"],
                                "hybrid_headroom": None if h is None else h["headroom"]})
    fp16_points = [p for p in hybrid_result["points"] if p["held"] == "float16"]
    worst = min(fp16_points, key=lambda p: p["headroom_fp16"]) if fp16_points else None
    ln32 = [p for p in hybrid_result["points"] if p["quantity"] in ("sum", "row_sum", "dev_sq", "var_sum")
            and p["held"] == "float32"]
    worst32 = max(ln32, key=lambda p: p["max"] if np.isfinite(p["max"]) else -1.0) if ln32 else None
    return {"at_fp16_overflow_points": at_overflow,
            "hybrid_fp16_points": len(fp16_points),
            "hybrid_fp16_over": sum(p["samples_over_fp16"] for p in fp16_points),
            "hybrid_fp16_min_headroom": None if worst is None else
            {k: worst[k] for k in ("op", "layer", "quantity", "tensor", "max", "headroom_fp16")},
            "hybrid_fp32_largest_reduction": None if worst32 is None else
            {k: worst32[k] for k in ("op", "layer", "quantity", "max", "headroom_fp16")}}
