"""The runtime's pieces that need no GPU (they run in CI too): the availability report, the arena planner,
the plan lowering, sequence buckets; and, on a machine without a GPU, the error an Engine gives."""

from __future__ import annotations

import numpy as np
import pytest

import rt_helpers as h
from trtrun.errors import RuntimeUnavailableError


def _ext_or_skip():
    try:
        from trtrun import _C  # type: ignore[attr-defined]
    except ImportError as e:
        pytest.skip(f"the CUDA extension is not built here ({e})")
    return _C


def test_gpu_available_says_why():
    from trtrun.runtime import gpu_available

    ok, why = gpu_available()
    assert isinstance(ok, bool) and isinstance(why, str) and why


def test_bucket_seq_policy():
    from trtrun.runtime import bucket_seq

    for seq_max in (1, 7, 64, 130, 512):
        prev = 0
        for s in range(1, seq_max + 1):
            b = bucket_seq(s, seq_max)
            assert s <= b <= seq_max and b >= prev
            assert b - s < max(8, s // 4 + 1)  # bounded padding
            prev = b
    assert len({bucket_seq(s, 512) for s in range(1, 513)}) <= 20  # few graphs serve every length


def test_arena_plan_never_overlaps_live_buffers():
    _C = _ext_or_skip()
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 40))
        lives = []
        for _ in range(n):
            a = int(rng.integers(-1, 20))
            b = int(rng.integers(a, 21))
            lives.append((int(rng.integers(0, 5000)), a, b))
        offsets, total, naive = _C.plan_arena(lives, 256)
        assert total <= naive
        for i, (sz, a, b) in enumerate(lives):
            assert offsets[i] % 256 == 0 and offsets[i] + sz <= max(total, 1)
            for j in range(i):
                sz2, a2, b2 = lives[j]
                if sz and sz2 and a <= b2 and a2 <= b:  # alive together: disjoint bytes
                    assert offsets[i] + sz <= offsets[j] or offsets[j] + sz2 <= offsets[i], (trial, i, j)
    # a chain where each buffer dies when the next is made reuses memory
    offsets, total, naive = _C.plan_arena([(1024, i, i + 1) for i in range(10)], 256)
    assert total == 2048 and naive == 10240


def test_lower_plan_converts_weights_exactly():
    from trtrun.runtime.lower import lower_plan

    plan = h.handmade_plan(precision="hybrid", bias32_out16=True)
    low = lower_plan(plan)
    names = {n: a for n, a in low["weights"]}
    # an fp16 bias feeding an fp32 output is widened (exactly) so cuBLASLt's epilogue adds it
    assert names["bp (as float32)"].dtype == np.float32
    np.testing.assert_array_equal(names["bp (as float32)"], plan.weights["bp"].astype(np.float32))
    # an fp32 bias with an fp16 output stays fp32 (the runtime's own epilogue kernel adds it in fp32)
    assert names["bfc"].dtype == np.float32
    ops = {o["name"]: o for o in low["ops"]}
    # enums cross by name (native/core/types.cpp parses them)
    assert ops["fc"]["activation"] == "gelu_erf" and ops["fc"]["precision"] == "hybrid"
    assert ops["attn"]["num_heads"] == 2
    assert low["batch_max"] == 8 and low["seq_max"] == 160


def test_engine_without_gpu_is_a_clear_error():
    from trtrun.runtime import Engine, gpu_available

    ok, why = gpu_available()
    if ok:
        pytest.skip("a GPU is available here")
    with pytest.raises(RuntimeUnavailableError) as e:
        Engine(h.handmade_plan())
    assert str(e.value)


def test_architecture_list_check():
    """The build's CMAKE_CUDA_ARCHITECTURES list against a device's compute capability (machine code runs on
    the same major version with an equal or higher minor; PTX is compiled for any newer chip)."""
    _C = _ext_or_skip()
    cases = [("90", 9, 0, 1), ("80-real", 9, 0, 0), ("80", 9, 0, 1), ("80-real", 8, 6, 1), ("86-real", 8, 0, 0),
             ("90a", 9, 0, 1), ("90a", 10, 0, 0), ("80-real,90-virtual", 9, 0, 1), ("90-virtual", 8, 0, 0),
             ("all", 9, 0, -1), ("native", 9, 0, -1)]
    for archs, major, minor, want in cases:
        assert _C.archs_cover_device(archs, major, minor) == want, (archs, major, minor)
    assert _C.archs_cover_device(_C.cuda_architectures, 9, 0) == 1  # this build runs on H100/H200


def test_error_texts():
    """The out-of-memory and wrong-architecture messages name the sizes, the device and the fix."""
    _C = _ext_or_skip()
    m = _C._alloc_error_message(10**13, "the activation arena", True, 140 << 30, 141 << 30,
                                "cudaErrorMemoryAllocation", "context.cpp", 12)
    assert m.startswith("out of memory: the activation arena needs 9536743 MiB") and "143360 MiB free" in m
    a = _C._arch_error_message("80-real", 0, "NVIDIA H200", 9, 0, "by the build's list")
    assert "80-real" in a and "sm_90" in a and "CMAKE_CUDA_ARCHITECTURES=90" in a and "NVIDIA H200" in a
