"""The builder's GELU form choice (trtrun/builder/gelu_form.py): the bound its docstring argues, and that
plans record and compute the form they claim, checked against onnxruntime fp32 on the original graph."""

import math

import numpy as np
import pytest

from trtrun.reference import ref_gelu


def test_tanh_form_error_bound_is_below_an_fp16_step():
    # dense grid over where GELU is non-trivial; beyond |x| = 12 both forms equal x or 0 in float32
    x = np.linspace(-12, 12, 2_000_001).astype(np.float32)
    erf = ref_gelu(x, "gelu_erf").astype(np.float64)
    tanh = ref_gelu(x, "gelu_tanh").astype(np.float64)
    diff = np.abs(erf - tanh)
    assert diff.max() < 4.8e-4, diff.max()  # the docstring says 4.7e-4
    # where the difference peaks, an fp16 value's rounding step is larger than the difference
    at = float(abs(x[np.argmax(diff)]))
    step = 2.0 ** (math.floor(math.log2(at)) - 10)
    assert diff.max() < step


@pytest.mark.parametrize("precision,gelu,expect", [
    ("hybrid", "auto", "gelu_tanh"), ("fp16", "auto", "gelu_tanh"), ("fp32", "auto", "gelu_erf"),
    ("hybrid", "exact", "gelu_erf"), ("fp32", "tanh", "gelu_tanh"),
])
def test_plan_records_the_form(exported, precision, gelu, expect):
    from trtrun.builder import build

    plan = build(exported("bert"), precision=precision, gelu=gelu)
    acts = {op["attrs"].get("activation") for op in plan.ops if op["type"] == "Linear"}
    assert expect in acts and ({"gelu_erf", "gelu_tanh"} - {expect}).isdisjoint(acts)
    if expect == "gelu_tanh":  # every rewritten op says what the source graph computed
        srcs = {op["attrs"].get("source_activation") for op in plan.ops
                if op["attrs"].get("activation") == "gelu_tanh"}
        assert srcs == {"gelu_erf"}


def test_bad_choice_is_a_clear_error(exported):
    from trtrun.builder import build

    with pytest.raises(ValueError, match="gelu must be one of"):
        build(exported("bert"), precision="hybrid", gelu="fast")
