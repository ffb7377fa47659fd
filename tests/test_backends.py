"""trtrun.backends: the one backend chooser (auto, gpu, reference) every entry point uses."""

from __future__ import annotations

import pytest

from trtrun import backends, runtime
from trtrun.errors import RuntimeUnavailableError, TrtrunError


@pytest.fixture
def gpu(monkeypatch):
    """Set what runtime.gpu_available answers (the machine's real answer is not needed to test the choice)."""
    def set_(ok, why):
        monkeypatch.setattr(runtime, "gpu_available", lambda device=0: (ok, why))
    return set_


def test_auto_takes_the_gpu_where_usable_else_the_reference(gpu):
    gpu(True, "NVIDIA H200; trtrun._C built for sm_90")
    assert backends.choose_backend("auto") == ("gpu", "NVIDIA H200; trtrun._C built for sm_90")
    gpu(False, "no NVIDIA GPU or driver on this machine: cudaErrorNoDevice")
    assert backends.choose_backend("auto") == ("reference", "no NVIDIA GPU or driver on this machine: cudaErrorNoDevice")


def test_reference_asks_the_gpu_nothing(monkeypatch):
    def boom(device=0):
        raise AssertionError("asked the GPU")
    monkeypatch.setattr(runtime, "gpu_available", boom)
    assert backends.choose_backend("reference") == ("reference", "asked for")


def test_gpu_without_a_gpu_is_an_error_naming_the_option_and_the_hint(gpu):
    gpu(False, "the CUDA extension trtrun._C is not built")
    with pytest.raises(RuntimeUnavailableError, match=r"^--backend gpu: the GPU runtime is not usable: the CUDA "
                       r"extension trtrun._C is not built \(use --backend reference\)$"):
        backends.choose_backend("gpu", hint=" (use --backend reference)")
    with pytest.raises(RuntimeUnavailableError, match=r"^backend='gpu': "):
        backends.choose_backend("gpu", option="backend='gpu'")
    with pytest.raises(ValueError, match="auto, gpu, reference"):
        backends.choose_backend("cuda")


def test_a_failing_probe_counts_as_not_usable(monkeypatch):
    def broken(device=0):
        raise OSError("driver gone")
    monkeypatch.setattr(runtime, "gpu_available", broken)
    assert backends.choose_backend("auto") == ("reference", "OSError: driver gone")


def test_entry_points_word_the_fallback_as_before(gpu):
    from trtrun.check.backends import choose_backend as check_choose

    gpu(False, "no GPU")
    assert check_choose("auto") == ("reference", "GPU runtime not usable (no GPU)")
    assert check_choose("reference") == ("reference", "asked for")
    gpu(True, "")
    assert check_choose("gpu") == ("gpu", "GPU runtime usable")


def test_cluster_backend():
    assert backends.choose_cluster_backend("auto", 2) == "gpu"
    assert backends.choose_cluster_backend("auto", 0) == "reference"
    assert backends.choose_cluster_backend("reference", 4) == "reference"
    with pytest.raises(TrtrunError, match="the Ray cluster has no GPU"):
        backends.choose_cluster_backend("gpu", 0)


def test_a_plan_the_gpu_cannot_run_falls_back_under_auto(gpu):
    # a usable GPU, but a plan with an op it has no kernel for (here a Linear ending in tanh, a pooler's): auto runs
    # the reference backend and says why; gpu raises the lowering's own PlanError naming the op, before any engine
    # is built. A Pool at the end (a sentence-transformers export's pooled output) is the host tail: the GPU's.
    import copy
    import json
    from types import SimpleNamespace

    from handmade_plans import GPU_TINY, tiny_plan

    from trtrun.errors import PlanError
    from trtrun.plan import Plan

    gpu(True, "NVIDIA H200; trtrun._C built for sm_90")
    plan = tiny_plan("hybrid", layers=1, **GPU_TINY)
    assert backends.choose_backend("auto", plan=plan)[0] == "gpu"
    ops = copy.deepcopy(plan.ops)
    lin = next(op for op in ops if op["type"] == "Linear")
    lin["attrs"]["activation"] = "tanh"
    unrun = SimpleNamespace(precision=plan.precision, ops=ops, tensors=plan.tensors, header=plan.header)
    name, why = backends.choose_backend("auto", plan=unrun)
    want = f"op {lin['name']!r}: the GPU runtime does not run Linear ops with activation 'tanh' yet"
    assert name == "reference" and why == f"this plan: {want} (the reference backend does)"
    with pytest.raises(PlanError, match=want):
        backends.choose_backend("gpu", plan=unrun)
    hdr = json.loads(json.dumps({k: v for k, v in plan.header.items() if k != "weights"}))
    hdr["ops"].append({"type": "Pool", "name": "pool", "inputs": ["last_hidden_state", "attention_mask"],
                       "outputs": ["pooled"], "weights": {}, "attrs": {"mode": "mean"}, "precision": "fp32"})
    hdr["tensors"]["pooled"] = {"dtype": "float32", "shape": ["B", GPU_TINY["hidden"]]}
    hdr["outputs"] = [{"name": "pooled", "dtype": "float32", "shape": ["B", GPU_TINY["hidden"]]}]
    assert backends.choose_backend("auto", plan=Plan.from_parts(hdr, plan.weights))[0] == "gpu"
    # fp8 Linears and mixed plans (--precision auto) run on the GPU runtime: auto takes it for them
    ops = copy.deepcopy(plan.ops)
    for op in ops:
        if op["type"] == "Linear":
            op["precision"] = "fp8"
    # (weight shapes: the header's, multiples of 16 as cuBLASLt's fp8 GEMMs need)
    mixed = SimpleNamespace(precision="mixed", ops=ops, header=plan.header, profile=plan.profile, tensors=plan.tensors)
    assert backends.choose_backend("auto", plan=mixed)[0] == "gpu"
    gpu(False, "no NVIDIA GPU or driver on this machine: cudaErrorNoDevice")  # no GPU: the plan is not asked about
    assert backends.choose_backend("auto", plan=unrun) == ("reference",
                                                           "no NVIDIA GPU or driver on this machine: cudaErrorNoDevice")


@pytest.mark.parametrize("head_size", [48, 16, 512])
def test_a_head_size_the_kernels_lack_falls_back_under_auto(gpu, head_size):
    # heads of 48, 16, 512: the attention kernels take 32, 64, 80, 96, 128 and 256 only. With a usable GPU, auto
    # runs the reference backend saying which op and head size; gpu raises that PlanError before any engine is built
    # (both used to take the GPU, whose first launch then failed naming no op)
    from handmade_plans import tiny_plan

    from trtrun.errors import PlanError

    gpu(True, "NVIDIA H200; trtrun._C built for sm_90")
    plan = tiny_plan("hybrid", hidden=head_size, heads=1, layers=1)
    why = (f"op 'l0.attn': the GPU runtime does not run Attention ops with head size {head_size} (the attention "
           f"kernels take 32, 64, 80, 96, 128, 256) yet (the reference backend does)")
    assert backends.choose_backend("auto", plan=plan) == ("reference", f"this plan: {why}")
    with pytest.raises(PlanError) as err:
        backends.choose_backend("gpu", plan=plan)
    assert str(err.value) == why
    assert backends.choose_backend("reference", plan=plan) == ("reference", "asked for")


@pytest.mark.parametrize("head_size", [32, 64, 80, 96, 128, 256])
def test_the_kernels_head_sizes_take_the_gpu_under_auto(gpu, head_size):
    from handmade_plans import tiny_plan

    gpu(True, "NVIDIA H200; trtrun._C built for sm_90")
    plan = tiny_plan("hybrid", hidden=head_size, heads=1, layers=1)
    assert backends.choose_backend("auto", plan=plan) == ("gpu", "NVIDIA H200; trtrun._C built for sm_90")
    assert backends.choose_backend("gpu", plan=plan) == ("gpu", "NVIDIA H200; trtrun._C built for sm_90")
