"""Rotary position embeddings, recognized by value (a helper of fuse_attention, not a pass of its own).

Hugging Face's Llama/Qwen2/Mistral/GPT-NeoX attention rotates each query and key head before the scores:

    q' = q * cos + rotate_half(q) * sin        on the first R dims of a head (R < D: partial, GPT-NeoX)
    cos, sin = cos(s * inv_freq), sin(s * inv_freq) (each repeated twice), times an attention scaling

with cos/sin computed from the positions (0..S-1) alone. Exporters spell this with Slice/Neg/Concat/Mul/Add
around tables that depend on the sequence length only. `match_rotary(t)` walks back from a query or key
tensor t over such ops to the one activation u they rotate (the tables are whatever depends on no input's
values), then reads the rotation off the probe values: the dims that are not copied give R; for every
position s and frequency i, the least-squares (c, s) of the pair rotation of (u_i, u_{i+R/2}) give the
angle, whose value at s = 1 is inv_freq_i (every rope variant keeps inv_freq in (0, 1], so the angle at
s = 1 is not wrapped) and whose length is the attention scaling. GPT-J and CodeGen rotate the pairs
(u_2i, u_2i+1) instead: when the half-split fit finds no rotation, that one is tried (interleave_perm).
inv_freq is then taken exactly from the graph's own constant when one in the tables' subgraph equals it (the
model's float32 buffer), so angles at long positions are the model's to the last bit. The result is confirmed
by recomputing t from u.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .probe import PROBE_SHAPES, agree

ROT_OPS = {"Add", "Sub", "Mul", "Neg", "Slice", "Concat", "Split", "Cast"}


class NotRotary(Exception):
    pass


def value_deps(graph) -> dict[str, frozenset]:
    """Graph inputs whose values (not just shapes) flow into each tensor, by tensor name (one forward sweep)."""
    deps: dict[str, frozenset] = {i.name: frozenset([i.name]) for i in graph.inputs}
    for n in graph.nodes:
        if n.op in ("Shape", "Size"):
            d = frozenset()
        else:
            d = frozenset().union(*(deps.get(i.name, frozenset()) for i in n.inputs if not i.is_empty()))
        for o in n.outputs:
            deps[o.name] = d
    return deps


def match_rotary(graph, facts, t, deps, order) -> tuple:
    """(u, rotary) with t = rotary(u) on every probe, rotary = {"dim", "inv_freq", "scale", "axis"}; raises
    NotRotary if t is not reached from one activation through rotary-shaped ops, BuildError if it is, but
    its values are no rotary embedding the IR can express."""
    p = G.producer(t)
    if p is None or p.op not in ("Add", "Sub", "Concat"):
        raise NotRotary
    acts, tables, seen, stack = [], [], set(), [t]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        q = G.producer(x)
        if q is None or q.op not in ROT_OPS:
            acts.append(x)
            continue
        if x is not t:
            acts.append(x)
        for i in q.inputs:
            if i.is_empty() or G.const_value(i) is not None:
                continue
            d = deps.get(i.name)
            if d is None:
                raise NotRotary
            if "input_ids" in d:  # hidden states
                stack.append(i)
            elif not d:  # depends on shapes only: cos/sin of the positions 0..S-1
                tables.append(i)
            else:
                raise BuildError(f"tensor {t.name!r}: a rotary position embedding whose positions depend on the "
                                 f"values of {sorted(d)}; the IR's rotary positions are 0..S-1")
    if not tables:
        raise NotRotary
    shape = [a.shape for a in facts.get(t)]
    cands = [x for x in acts if [a.shape for a in facts.get(x)] == shape]
    if not cands:
        raise NotRotary
    u = min(cands, key=lambda x: order.get(id(G.producer(x)), -1))
    if u is t:
        raise NotRotary
    try:
        rot = fit_rotary(facts.get(u), facts.get(t), t.name)
    except BuildError as e:  # not a rotation of the half-split pairs: of the interleaved ones?
        try:
            rot = fit_rotary(facts.get(u), facts.get(t), t.name, interleaved=True)
        except (BuildError, NotRotary):
            raise e from None
    rot["inv_freq"] = _exact_inv_freq(tables, rot["inv_freq"])
    rot["axes"] = [_seq_axis(a, k) for k, a in enumerate(facts.get(u))]
    ours = [apply_rotary(a, rot, ax) for a, ax in zip(facts.get(u), rot["axes"])]
    if not agree(ours, facts.get(t)):
        raise BuildError(f"tensor {t.name!r}: looks like a rotary position embedding of {u.name!r} "
                         f"(rotary dims {rot['dim']}) but recomputing it does not reproduce the graph's values")
    return u, rot


def _seq_axis(a: np.ndarray, probe: int) -> int:
    """The sequence axis of a probe value (the one of the probe's length; the last but one if several)."""
    S = PROBE_SHAPES[probe][1]
    if a.ndim >= 2 and a.shape[-2] == S:
        return a.ndim - 2
    axes = [k for k in range(a.ndim - 1) if a.shape[k] == S]
    if len(axes) != 1:
        raise NotRotary
    return axes[0]


def _to_msd(a, axis):
    """[..., S (at axis), ..., D] -> [M, S, D] float64."""
    a = np.moveaxis(np.asarray(a, np.float64), axis, -2)
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def interleave_perm(D: int, R: int) -> np.ndarray:
    """The column order that makes GPT-J's interleaved rotary pairs (0, 1), (2, 3), ... of the first R of D dims
    the half-split pairs (i, i + R/2) the IR rotates: [0, 2, ..., R-2, 1, 3, ..., R-1, R, ..., D-1]."""
    return np.concatenate([np.arange(0, R, 2), np.arange(1, R, 2), np.arange(R, D)])


def fit_rotary(us, ts, name, interleaved: bool = False) -> dict:
    """Read R, inv_freq and the scaling off u and t = rotary(u) (probe values); interleaved: rotating the pairs
    (2i, 2i + 1) (GPT-J, CodeGen) instead of (i, i + R/2)."""
    axes = [_seq_axis(u, k) for k, u in enumerate(us)]
    if [_seq_axis(t, k) for k, t in enumerate(ts)] != axes:
        raise NotRotary
    D = us[0].shape[-1]
    changed = np.zeros(D, bool)
    for u, t in zip(us, ts):
        changed |= np.any(np.asarray(u, np.float32) != np.asarray(t, np.float32),
                          axis=tuple(range(u.ndim - 1)))
    if not changed.any():
        raise NotRotary
    R = int(np.nonzero(changed)[0].max()) + 1
    R += R % 2
    h = R // 2
    if interleaved:
        perm = interleave_perm(D, R)
        us, ts = [np.asarray(u)[..., perm] for u in us], [np.asarray(t)[..., perm] for t in ts]
    Smax = max(u.shape[ax] for u, ax in zip(us, axes))
    num_c, num_s, den = (np.zeros((Smax, h)) for _ in range(3))
    for u, t, ax in zip(us, ts, axes):
        U, T = _to_msd(u, ax), _to_msd(t, ax)
        S = U.shape[1]
        u1, u2, t1, t2 = U[..., :h], U[..., h:R], T[..., :h], T[..., h:R]
        num_c[:S] += (t1 * u1 + t2 * u2).sum(0)
        num_s[:S] += (t2 * u1 - t1 * u2).sum(0)
        den[:S] += (u1 * u1 + u2 * u2).sum(0)
    if np.any(den <= 0):
        raise NotRotary
    c, s = num_c / den, num_s / den
    scale = np.hypot(c, s)
    m = float(np.median(scale))
    if m <= 0 or float(np.abs(scale - m).max()) > 1e-3 * m:
        raise BuildError(f"tensor {name!r}: the query/key transform is not a rotation by position (its length "
                         f"varies by {float(np.abs(scale - m).max() / max(m, 1e-30)):.2g}); not a rotary "
                         f"embedding the IR can express")
    inv = np.arctan2(s[1], c[1])
    if np.any(inv <= 0) or np.any(inv > np.pi):
        raise BuildError(f"tensor {name!r}: rotary frequencies outside (0, pi] ({inv.min():.3g}..{inv.max():.3g}); "
                         f"not a rotary embedding the IR can express")
    if abs(m - 1.0) < 1e-5:
        m = 1.0
    return {"dim": R, "inv_freq": inv.astype(np.float32), "scale": float(np.float32(m)), "interleaved": interleaved}


def _exact_inv_freq(tables, fitted):
    """The graph's own constant equal to the fitted frequencies (to 1e-5: the fit's error is ~1e-7), else
    the fitted values."""
    seen, stack = set(), list(tables)
    n = fitted.size
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        v = G.const_value(x)
        if v is not None:
            if v.dtype.kind == "f" and v.size == n and np.allclose(v.reshape(-1), fitted, rtol=0, atol=1e-5):
                return np.asarray(v, np.float32).reshape(-1)
            continue
        q = G.producer(x)
        if q is not None:
            stack.extend(i for i in q.inputs if not i.is_empty())
    return fitted


def apply_rotary(u, rot, axis: int, inverse: bool = False):
    """rotary(u) in float64, positions along `axis`, rotated dims last; inverse=True undoes it. With
    rot["interleaved"], the pairs (2i, 2i + 1) are rotated (the IR's half-split rotary between two column
    permutations)."""
    from ..reference import rotary_tables

    u = np.asarray(u, np.float64)
    if rot.get("interleaved"):
        perm = interleave_perm(u.shape[-1], rot["dim"])
        out = np.empty_like(u)
        out[..., perm] = apply_rotary(u[..., perm], {**rot, "interleaved": False}, axis, inverse)
        return out
    S = u.shape[axis]
    c, s = (a.astype(np.float64) for a in rotary_tables(S, rot["inv_freq"], rot["scale"]))
    if inverse:
        c, s = c / rot["scale"] ** 2, -s / rot["scale"] ** 2
    shape = [1] * u.ndim
    shape[axis], shape[-1] = S, c.shape[-1]
    c, s = c.reshape(shape), s.reshape(shape)
    h = c.shape[-1]
    out = u.copy()
    u1, u2 = u[..., :h], u[..., h:2 * h]
    out[..., :h] = u1 * c - u2 * s
    out[..., h:2 * h] = u2 * c + u1 * s
    return out
