"""A plan's host tail: the ops after the token states that write rank-2 tensors (one vector a sample, [B, N]; one
value a token, [B, S]), which the GPU runtime leaves to the host.

A sentence-embedding or classification plan ends in a Pool (mean or first token, [B, S, N] -> [B, N]) and, for a
classification head, a few row ops on the pooled vectors: BERT's pooler (Linear + tanh), RoBERTa's head (Linear +
tanh, Linear), DistilBERT's (Linear + ReLU, Linear), ModernBERT's (Linear + GELU, LayerNorm, Linear); an extractive
question-answering plan in single-column Linears writing [B, S] start and end scores. The GPU
runtime's kernels take [B, S, ...] tensors, so the Engine runs the plan up to the token states these ops read on
the device (`split_host_tail`: a plan of the device ops whose outputs are the plan's own outputs there plus those
token states) and the tail on the host, op by op, with the reference backend's functions: the same formulas and
roundings per op precision (a hybrid head's Linears: fp16 operands, fp32 sums), on a handful of rows (B x N x N
multiply-adds a Linear; the token states' copy to the host costs more than the arithmetic).
"""

from __future__ import annotations

from ..errors import PlanError


def is_host_tensor(plan, name: str) -> bool:
    """Whether a plan tensor is one the host tail writes: rank 2, one vector a sample ([B, N]) or one value a token
    ([B, S]: a question-answering head's start/end scores). The kernels write [B, S, ...] tensors."""
    return len(plan.tensors[name]["shape"]) == 2


def on_host(plan, op: dict) -> bool:
    """Whether an op of the plan belongs to its host tail: it writes a tensor is_host_tensor names."""
    return any(t and is_host_tensor(plan, t) for t in op["outputs"])


def split_host_tail(plan) -> tuple:
    """(the plan of the ops the device runs, the host tail's ops in plan order); (plan, []) when there is no tail.

    The tail is every op writing a rank-2 tensor (is_host_tensor); the device plan keeps the other ops, the plan's
    outputs they write (or pass through), and adds as outputs the token states the tail reads. PlanError if a device op
    reads a tail op's output (no valid plan does: the GPU kernels' inputs are [B, S, ...]).
    """
    host = [op for op in plan.ops if on_host(plan, op)]
    if not host:
        return plan, []
    host_ids = {id(op) for op in host}
    device = [op for op in plan.ops if id(op) not in host_ids]
    written_on_host = {t for op in host for t in op["outputs"] if t}
    for op in device:
        bad = [t for t in op["inputs"] if t in written_on_host]
        if bad:
            raise PlanError(f"op {op['name']!r} reads {bad[0]!r}, one vector a sample, which only ops after the token "
                            f"states write; the GPU runtime's kernels take [B, S, ...] tensors")
    inputs = {i["name"] for i in plan.inputs}
    outputs = [o for o in plan.outputs if "input" in o or o["name"] not in written_on_host]
    have = {o["name"] for o in outputs}
    for op in host:
        for t in op["inputs"]:
            if t and t not in inputs and t not in written_on_host and t not in have:
                have.add(t)
                outputs.append({"name": t, **plan.tensors[t]})
    if not device or not any("input" not in o for o in outputs):
        raise PlanError("the plan computes nothing on the device before its one-vector-a-sample ops")
    return plan.subplan(device, outputs), host


class HostTail:
    """Runs a plan's host tail on numpy arrays: `run(env)` adds the tail's tensors to `env` (name -> array: the
    device part's outputs and the checked feeds) and returns it."""

    def __init__(self, plan, ops: list[dict]):
        from ..reference import ReferenceBackend

        self.ops = ops
        self.types = sorted({op["type"] for op in ops})
        self._ref = ReferenceBackend(plan)

    def run(self, env: dict) -> dict:
        for op in self.ops:
            for name, arr in zip(op["outputs"], self._ref.run_op(op, env)):
                if name:
                    env[name] = arr
        return env
