"""Probing: run the simplified graph in onnxruntime on small made-up inputs and keep every tensor.

The fusion passes match a pattern by its structure, then *check* the fused op's formula against
these values (a wrong pattern gives errors of order 1, a right one agrees to fp32 rounding), and
read semantics off them that exporters spell in many ways: what a mask-producing subgraph means
(padding from attention_mask? causal?), what a position-id subgraph computes, which columns of a
projection are the queries of which head. Two probes with different batch and sequence sizes
(2x5 and 3x7, none equal to another or to a model dimension we rely on) also give each tensor's
symbolic shape: a dim equal to the batch in both probes is "B", to the sequence "S", fixed otherwise.

Attention-mask rows are chosen so that padding and causal masking can be told apart: all ones,
right-padded, left-padded, and holes in the middle.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G

PROBE_SHAPES = ((2, 5), (3, 7))
_MASKS = {
    (2, 5): [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],
    (3, 7): [[1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]],
}
_LAYOUT_FROM_INPUT = {"Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


class Facts:
    """Probe feeds and the value of every tensor for each probe (by tensor name)."""

    def __init__(self, feeds: list[dict], values: list[dict]):
        self.feeds = feeds
        self.values = values

    def has(self, name: str) -> bool:
        return all(name in v for v in self.values)

    def get(self, t) -> list[np.ndarray]:
        name = t if isinstance(t, str) else t.name
        try:
            return [v[name] for v in self.values]
        except KeyError:
            raise BuildError(f"no probe value for tensor {name!r} (internal: a pass lost track of it)") \
                from None

    def put(self, name: str, arrays: list[np.ndarray]) -> None:
        for v, a in zip(self.values, arrays):
            v[name] = a

    def rank(self, t) -> int:
        return self.get(t)[0].ndim

    def sym_shape_or_none(self, t) -> list | None:
        """sym_shape, or None where the tensor has no such shape (a pattern that needs one does not match)."""
        try:
            return self.sym_shape(t)
        except BuildError:
            return None

    def sym_shape(self, t) -> list:
        """Shape with "B"/"S" symbols (BuildError if a dim follows neither nor stays fixed)."""
        shapes = [a.shape for a in self.get(t)]
        name = t if isinstance(t, str) else t.name
        if len({len(s) for s in shapes}) != 1:
            raise BuildError(f"tensor {name!r} changes rank with the input shape: {shapes}")
        out = []
        for dims in zip(*shapes):
            if all(d == bs[0] for d, bs in zip(dims, PROBE_SHAPES)):
                out.append("B")
            elif all(d == bs[1] for d, bs in zip(dims, PROBE_SHAPES)):
                out.append("S")
            elif len(set(dims)) == 1:
                out.append(int(dims[0]))
            else:
                raise BuildError(f"tensor {name!r}: a dimension is neither batch, sequence nor fixed "
                                 f"(shapes {shapes} for inputs {PROBE_SHAPES})")
        return out

    def value_inputs(self, graph, t) -> set[str]:
        """Graph inputs whose *values* (not just shapes) flow into t (walk stops at Shape/Size)."""
        seen, out, stack = set(), set(), [t]
        inputs = {i.name for i in graph.inputs}
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if x.name in inputs:
                out.add(x.name)
            p = G.producer(x)
            if p is None or p.op in ("Shape", "Size"):
                continue
            stack.extend(p.inputs)
        return out


def _table_rows(graph, input_name: str) -> int | None:
    """Rows of the smallest constant table a Gather indexes with this input's values."""
    inp = next((i for i in graph.inputs if i.name == input_name), None)
    if inp is None:
        return None
    rows, stack, seen = [], [inp], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for n in t.outputs:
            if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] is t:
                v = G.const_value(n.inputs[0])
                if v is not None and v.ndim == 2:
                    rows.append(v.shape[0])
            elif n.op in _LAYOUT_FROM_INPUT:
                stack.extend(n.outputs)
    return min(rows) if rows else None


def make_feeds(graph, seed: int = 0) -> list[dict]:
    vocab = _table_rows(graph, "input_ids") or 100
    types = _table_rows(graph, "token_type_ids") or 1
    rng = np.random.default_rng(seed)
    feeds = []
    for B, S in PROBE_SHAPES:
        f = {}
        for i in graph.inputs:
            if i.name == "input_ids":
                f[i.name] = rng.integers(0, vocab, (B, S))
            elif i.name == "attention_mask":
                f[i.name] = np.array(_MASKS[(B, S)])
            elif i.name == "token_type_ids":
                f[i.name] = rng.integers(0, types, (B, S))
        for i in graph.inputs:
            dt = np.dtype(i.dtype) if i.dtype is not None else np.dtype(np.int64)
            f[i.name] = f[i.name].astype(dt)
        feeds.append(f)
    return feeds


def probe(graph, progress=None) -> Facts:
    """Run the graph in onnxruntime on the probe inputs, keeping every tensor's value."""
    feeds = make_feeds(graph)
    values = []
    for k, (f, v) in enumerate(zip(feeds, run_graph(graph, feeds))):
        v.update(f)
        for t in graph.tensors().values():
            c = G.const_value(t)
            if c is not None:
                v[t.name] = c
        values.append(v)
        if progress:
            progress("probe", k + 1, len(feeds))
    return Facts(feeds, values)


def run_graph(graph, feeds: list[dict], names=None):
    """Run a gs graph in onnxruntime (CPU, no graph optimizations) on each feed; yield {tensor: value}.

    names: the tensors to return (default: every node output)."""
    import onnx
    import onnxruntime as ort

    from .._ort import session as ort_session

    model = G.gs().export_onnx(graph.copy())
    del model.graph.output[:]
    if names is None:
        names = [o for n in model.graph.node for o in n.output if o]
    names = list(dict.fromkeys(names))
    for o in names:
        model.graph.output.append(onnx.ValueInfoProto(name=o))
    del model.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    # probes are tiny: one thread, and no spinning threads left competing with numpy afterwards
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort_session(model, opts)
    except Exception as e:
        raise BuildError(f"onnxruntime cannot load the graph to probe it: {e}") from None
    del model
    for k, f in enumerate(feeds):
        try:
            outs = sess.run(names, f)
        except Exception as e:
            raise BuildError(f"onnxruntime failed running the graph on a probe input of shape "
                             f"{f['input_ids'].shape}: {e}") from None
        yield dict(zip(names, outs))


def agree(ours, theirs, rtol: float = 1e-4) -> bool:
    """Do a pattern's formula and the graph's own values agree?

    Used to confirm a match, not to grade accuracy: both sides are fp32 (or better) computations of
    the same function in a different order, so they differ by rounding, ~1e-6 of the tensor's
    magnitude even after a 4096-term dot product; a wrong pattern (a missing bias, a swapped
    gamma/beta, another scale or activation) is off by 1e-3..1 of it. 1e-4 of the largest
    magnitude separates the two.
    """
    ours = [np.asarray(o, np.float64) for o in ours]
    theirs = [np.asarray(t, np.float64) for t in theirs]
    for a, b in zip(ours, theirs):
        if a.shape != b.shape:
            return False
        scale = max(float(np.abs(b[np.isfinite(b)]).max(initial=0.0)), 1e-6)
        if not np.all(np.isfinite(a) == np.isfinite(b)):
            return False
        fin = np.isfinite(b)
        if fin.any() and float(np.abs(a[fin] - b[fin]).max()) > rtol * scale:
            return False
    return True
