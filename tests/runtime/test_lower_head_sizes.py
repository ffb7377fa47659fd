"""The head sizes the GPU runtime takes (trtrun.runtime.lower.GPU_HEAD_SIZES: 32, 64, 80, 96, 128, 256, the sizes
native/kernels/attention is instantiated for), on the host: no GPU needed.

A plan with another head size (48, 16, 512) used to pass check_gpu_support and lower, so
`--backend auto` took the GPU and the run failed at the attention launcher's first launch with an error naming no op.
check_gpu_support now refuses it as a PlanError naming the op and its head size (trtrun.backends.choose_backend's
fallback: tests/test_backends.py), and the reference backend still runs the plan.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from handmade_plans import tiny_plan

from trtrun.errors import PlanError
from trtrun.plan import Plan
from trtrun.reference import ReferenceBackend
from trtrun.runtime.lower import GPU_HEAD_SIZES, check_gpu_support, gpu_missing, lower_plan


def _refusal(op: str, head_size: int) -> str:
    return (f"op '{op}': the GPU runtime does not run Attention ops with head size {head_size} (the attention kernels "
            f"take 32, 64, 80, 96, 128, 256) yet (the reference backend does)")


def test_the_sizes_are_the_launchers():
    """GPU_HEAD_SIZES is what the attention kernels take (attention_takes_head_size in attention.h, which the launcher
    and the Engine both ask): a size added or dropped on one side only fails here."""
    import re
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "native" / "kernels" / "attention" / "attention.h").read_text()
    body = re.search(r"bool attention_takes_head_size\(int head_size\) \{(.*?)\n\}", src, re.S)
    assert body, "no attention_takes_head_size in native/kernels/attention/attention.h"
    assert tuple(int(n) for n in re.findall(r"head_size == (\d+)", body.group(1))) == GPU_HEAD_SIZES


@pytest.mark.parametrize("head_size", [48, 16, 512])
def test_other_head_sizes_are_refused_naming_the_op_and_the_size(head_size):
    """One head of `head_size` (fewer heads keep the plan small; the size is what is checked): check_gpu_support and
    lower_plan raise the PlanError naming the op and the size, before anything is made; the reference backend, which
    'auto' falls back to, runs the plan."""
    plan = tiny_plan("hybrid", hidden=head_size, heads=1, layers=1)
    att = next(op for op in plan.ops if op["type"] == "Attention")
    assert att["attrs"]["head_size"] == head_size
    assert gpu_missing(att) == f"head size {head_size} (the attention kernels take 32, 64, 80, 96, 128, 256)"
    with pytest.raises(PlanError) as err:
        check_gpu_support(plan)
    assert str(err.value) == _refusal("l0.attn", head_size)
    with pytest.raises(PlanError) as err:
        lower_plan(plan)
    assert str(err.value) == _refusal("l0.attn", head_size)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64)
    y = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})["last_hidden_state"]
    assert y.shape == (2, 4, head_size) and np.isfinite(y).all()


@pytest.mark.parametrize("head_size,heads", [(32, 1), (32, 2), (64, 1), (128, 1)])
def test_the_kernels_head_sizes_lower(head_size, heads):
    """32, 64 and 128 pass check_gpu_support and reach the Engine's description as they are, encoder and decoder."""
    for arch in ("encoder", "decoder"):
        plan = tiny_plan("hybrid", arch, hidden=head_size * heads, heads=heads, layers=2)
        check_gpu_support(plan)
        att = [d for d in lower_plan(plan)["ops"] if d["type"] == "Attention"]
        assert len(att) == 2 and all((d["head_size"], d["num_heads"]) == (head_size, heads) for d in att), arch


def test_the_refusal_names_the_op_with_the_size():
    """A plan whose second layer alone has heads of 16 (four of them, the same width as the first layer's two of
    32): the refusal names that layer's Attention, not the first one."""
    base = tiny_plan("hybrid", hidden=64, heads=2, layers=2)
    hdr = copy.deepcopy({k: v for k, v in base.header.items() if k != "weights"})
    attrs = next(op for op in hdr["ops"] if op["name"] == "l1.attn")["attrs"]
    attrs.update(num_heads=4, head_size=16, scale=0.25)
    plan = Plan.from_parts(hdr, base.weights)
    with pytest.raises(PlanError) as err:
        check_gpu_support(plan)
    assert str(err.value) == _refusal("l1.attn", 16)
