"""Qwen3's per-head query/key RMSNorm (an Attention's q_norm/k_norm and qk_norm_epsilon) as the GPU runtime takes it
(trtrun/runtime/lower.py, native/runtime/engine.cpp, the rotary_qk_norm kernel entry point), on the host: no GPU needed.

Lowering hands the two gains to the Engine as weights of the Attention (one dtype for both: the kernel reads them
alike) and the epsilon as an attribute; the Engine refuses a description that would make the kernel read a gain out
of bounds before it asks for a device; the kernel's entry point checks its arguments before it touches one; the
kernel's fp16 sum order, emulated here, is the reference's tree. The kernel itself runs in
tests/gpu/test_runtime_decoders.py (test_rotary_qk_norm, and the tiny Qwen3 end to end).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import engine_args, native_extension

from trtrun.errors import DeviceError, InputError, PlanError
from trtrun.plan import Plan
from trtrun.runtime.lower import GPU_HEAD_SIZES, check_gpu_support, gpu_missing, lower_plan

QK_NORM_MAX_HEAD = 256  # one warp of the rotary pass holds a head (native/kernels/rotary: kQkNormMaxHead)

# a tiny Qwen3: 2 query heads of 32 sharing 1 K/V head, two layers (each with its own q_norm/k_norm)
QWEN3 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
             intermediate_size=96, vocab_size=300, max_position_embeddings=128)
PROFILE = {"batch": (1, 2, 4), "seq": (1, 16, 48)}


@pytest.fixture(scope="module")
def qwen3_plan(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trtrun.builder import build
    from trtrun.export import export_model

    path = export_model("qwen3", tmp_path_factory.mktemp("qwen3") / "qwen3.onnx", overrides=QWEN3, seed=2)
    return build(path, precision="hybrid", profile=PROFILE)


def _edited(plan: Plan, change) -> Plan:
    """A copy of `plan` whose header and weights `change(header, weights)` edited (validated again on the way)."""
    hdr = copy.deepcopy({k: v for k, v in plan.header.items() if k != "weights"})
    w = dict(plan.weights)
    change(hdr, w)
    return Plan.from_parts(hdr, w)


def test_lowering_takes_the_norms_and_their_epsilon(qwen3_plan):
    """No refusal any more (the plan lowers, check_gpu_support passes); every Attention carries its own layer's
    q_norm and k_norm, bit for bit the plan's fp32 gains (no conversion: both are float32 in hybrid plans), the
    epsilon as the float the plan holds, and the rotary tables as before."""
    check_gpu_support(qwen3_plan)
    low = lower_plan(qwen3_plan)
    by_name = {o["name"]: o for o in qwen3_plan.ops}
    att = [d for d in low["ops"] if d["type"] == "Attention"]
    assert len(att) == 2
    for d in att:
        op = by_name[d["name"]]
        assert gpu_missing(op) is None
        assert d["qk_norm_epsilon"] == float(op["attrs"]["qk_norm_epsilon"]) > 0
        assert d["head_size"] == 32 and d["rotary_dim"] == 32 and d["num_kv_heads"] == 1
        assert {"q_norm", "k_norm", "rotary_cos", "rotary_sin"} <= set(d["weights"])
        for role in ("q_norm", "k_norm"):
            name, arr = low["weights"][d["weights"][role]]
            assert name == op["weights"][role]  # the plan's own weight, not a converted copy
            assert arr.dtype == np.float32 and arr.shape == (32,) and arr.flags.c_contiguous
            np.testing.assert_array_equal(arr, qwen3_plan.weights[op["weights"][role]])
        assert not np.array_equal(low["weights"][d["weights"]["q_norm"]][1], low["weights"][d["weights"]["k_norm"]][1])
    # four distinct gains: a swap of q and k, or of the layers, would show on the GPU
    assert len({d["weights"][r] for d in att for r in ("q_norm", "k_norm")}) == 4


def test_gains_of_two_dtypes_are_widened_together(qwen3_plan):
    """The kernel reads q_norm and k_norm in one dtype: an fp16 k_norm beside an fp32 q_norm is widened to fp32
    (exact), both as fp16 they stay fp16."""
    att = next(o for o in qwen3_plan.ops if o["type"] == "Attention")

    def half_k(hdr, w):
        w[att["weights"]["k_norm"]] = w[att["weights"]["k_norm"]].astype(np.float16)

    def half_both(hdr, w):
        half_k(hdr, w)
        w[att["weights"]["q_norm"]] = w[att["weights"]["q_norm"]].astype(np.float16)

    for change, want in ((half_k, np.float32), (half_both, np.float16)):
        plan = _edited(qwen3_plan, change)
        d = next(o for o in lower_plan(plan)["ops"] if o["name"] == att["name"])
        for role in ("q_norm", "k_norm"):
            arr = lower_plan(plan)["weights"][d["weights"][role]][1]
            assert arr.dtype == want, (change.__name__, role)
            np.testing.assert_array_equal(arr, plan.weights[att["weights"][role]].astype(want))


def test_a_norm_without_rotary_lowers(qwen3_plan):
    """The IR allows q_norm/k_norm on an Attention without a rotary (the reference normalises and rotates nothing):
    the lowering hands over the norms and no rotary tables, and the kernel's pass runs with rotary_dim 0."""
    att = next(o for o in qwen3_plan.ops if o["type"] == "Attention")

    def no_rotary(hdr, w):
        op = next(o for o in hdr["ops"] if o["name"] == att["name"])
        del op["weights"]["inv_freq"], op["attrs"]["rotary_dim"]
        op["attrs"].pop("rotary_scale", None)

    plan = _edited(qwen3_plan, no_rotary)
    d = next(o for o in lower_plan(plan)["ops"] if o["name"] == att["name"])
    assert "rotary_dim" not in d and "rotary_cos" not in d["weights"]
    assert {"q_norm", "k_norm"} <= set(d["weights"]) and d["qk_norm_epsilon"] > 0


def test_heads_beyond_the_kernel_are_refused_by_name():
    """A normed head is refused at lowering where the attention kernels do not take its size (naming the op and
    the size): every size they take (32, 64, 80, 96, 128, 256) is within the rotary pass's one-warp limit, which its
    launcher checks itself (test_qk_norm_entry_point_checks_its_arguments)."""
    assert max(GPU_HEAD_SIZES) <= QK_NORM_MAX_HEAD
    att = {"type": "Attention", "name": "big", "inputs": ["qkv", ""], "outputs": ["y"], "precision": "hybrid",
           "attrs": {"num_heads": 2, "head_size": 2 * QK_NORM_MAX_HEAD, "scale": 0.1, "causal": True,
                     "qk_norm_epsilon": 1e-6}, "weights": {"q_norm": "qn", "k_norm": "kn"}}
    assert gpu_missing(att) == "head size 512 (the attention kernels take 32, 64, 80, 96, 128, 256)"
    for D in GPU_HEAD_SIZES:
        assert gpu_missing(dict(att, attrs=dict(att["attrs"], head_size=D))) is None
    plan = type("P", (), {"ops": [att], "precision": "hybrid", "header": {"weights": {}}, "profile": None,
                          "tensors": {"y": {"dtype": "float16", "shape": ["B", "S", 1024]}}})()
    with pytest.raises(PlanError, match=r"op 'big': the GPU runtime does not run Attention ops with head size 512"):
        check_gpu_support(plan)


# ---------------------------------------------------------------------------------------------- the extension
def test_engine_checks_the_norms(qwen3_plan):
    """The lowered Qwen3 passes the Engine's description checks (without a GPU the first error is the device's);
    broken copies are InputErrors naming the op and what is wrong, raised before the device is asked: a q_norm of
    the wrong length, a k_norm missing, gains of two dtypes, a negative or NaN epsilon."""
    c = native_extension()
    low = lower_plan(qwen3_plan)
    att = next(d for d in low["ops"] if d["type"] == "Attention")
    if c.device_count() == 0:
        with pytest.raises(DeviceError):
            c.Engine(*engine_args(low))

    def broken(change):
        bad = json.loads(json.dumps({k: v for k, v in low.items() if k != "weights"}))
        weights = list(low["weights"])
        change(next(o for o in bad["ops"] if o["name"] == att["name"]), weights)
        with pytest.raises(InputError) as err:
            c.Engine(*engine_args(dict(bad, weights=weights)))
        return str(err.value)

    def short_q(op, weights):
        i = op["weights"]["q_norm"]
        weights[i] = (weights[i][0], weights[i][1][:-1].copy())

    qname = low["weights"][att["weights"]["q_norm"]][0]
    assert broken(short_q) == f"op '{att['name']}': weight 'q_norm' ({qname}) must be [head_size 32] (shared by the heads) or [num_heads * head_size 64] (a gain per column), got [31]"

    def no_k(op, weights):
        del op["weights"]["k_norm"]

    assert broken(no_k) == f"op '{att['name']}': a query/key norm needs both 'q_norm' and 'k_norm'"

    def half_k(op, weights):
        i = op["weights"]["k_norm"]
        weights[i] = (weights[i][0], weights[i][1].astype(np.float16))

    assert broken(half_k) == f"op '{att['name']}': q_norm and k_norm must share one dtype"

    def bias_without_layer(op, weights):  # an RMSNorm has no bias
        op["weights"]["q_norm_bias"] = op["weights"]["q_norm"]

    assert broken(bias_without_layer) == f"op '{att['name']}': 'q_norm_bias' belongs to a query/key LayerNorm"

    def long_k(op, weights):  # k_norm follows q_norm's form: [head_size] here
        i = op["weights"]["k_norm"]
        weights[i] = (weights[i][0], np.tile(weights[i][1], 2))

    assert broken(long_k) == (f"op '{att['name']}': weight 'k_norm' ({low['weights'][att['weights']['k_norm']][0]}) "
                              f"must be [32] as q_norm's [32] says, got [64]")
    for eps in (-1e-6, float("nan")):
        def bad_eps(op, weights, eps=eps):
            op["qk_norm_epsilon"] = eps

        assert broken(bad_eps) == f"op '{att['name']}': qk_norm_epsilon must be finite and >= 0"


def test_qk_norm_entry_point_checks_its_arguments():
    """_C.plugins.rotary_qk_norm parses the gains' dtype by name and its launcher checks the head (one warp holds
    it), the rotary width (0: none), the epsilon and the pointers before anything reaches a device (null or
    never-dereferenced pointers here)."""
    p = native_extension().plugins
    args = dict(src=0, src_dtype="float16", dst=0, dst_dtype="float16", cos=0, sin=0, q_gamma=0, k_gamma=0,
                gamma_dtype="float32", eps=1e-6, batch=1, seq=4, heads=4, kv_heads=2, head_size=64, rotary_dim=64,
                half_math=False)
    cases = [
        (dict(head_size=QK_NORM_MAX_HEAD + 1), "rotary_qk_norm: head_size must be 1..256 (one warp holds a head), "
                                               "got 257"),
        (dict(rotary_dim=33), "rotary_qk_norm: rotary_dim must be 0 (no rotation) or even, >= 2 and at most head_size "
                              "64, got 33"),
        (dict(rotary_dim=66), "rotary_qk_norm: rotary_dim must be 0 (no rotation) or even, >= 2 and at most head_size "
                              "64, got 66"),
        (dict(eps=-1.0), "rotary_qk_norm: epsilon must be finite and >= 0"),
        (dict(eps=float("inf")), "rotary_qk_norm: epsilon must be finite and >= 0"),
        (dict(kv_heads=3), "rotary_qk_norm: heads must be a multiple of kv_heads (both >= 1), got heads=4 kv_heads=3"),
        (dict(gamma_dtype="bf16"), "rotary_qk_norm: gamma_dtype must be one of float32, float16, "),  # (the list
        # is the dtype enum's, which grows with the runtime; the name given is checked below)
        (dict(gamma_dtype="int32"), "rotary_qk_norm: gamma"),
        (dict(), "rotary_qk_norm: src, dst, q_gamma and k_gamma must not be null"),
        (dict(src=256, dst=256, q_gamma=256, k_gamma=256), "rotary_qk_norm: cos and sin must not be null when "
                                                           "rotary_dim > 0"),
        (dict(src=256, dst=256, q_gamma=256, k_gamma=256, dst_dtype="float32"),
         "rotary_qk_norm: cos and sin must not be null when rotary_dim > 0"),
        (dict(src=256, dst=256, q_gamma=256, k_gamma=256, rotary_dim=0, dst_dtype="float32"),
         "rotary_qk_norm: in place needs one dtype for src and dst"),
        # the other forms: whole is an RMSNorm with a gain per column; biases are the LayerNorm's; a whole part is
        # a block's row, so it takes heads beyond the warp's 256 values
        (dict(whole=True, layer=True), "rotary_qk_norm: the whole-part form is an RMSNorm with one gain per column"),
        (dict(whole=True, gains_per_head=True), "rotary_qk_norm: the whole-part form is an RMSNorm"),
        (dict(q_beta=256), "rotary_qk_norm: biases belong to the layer form"),
        (dict(whole=True, after_rotary=True), "rotary_qk_norm: a norm after the rotary is per head"),
        (dict(whole=True, head_size=QK_NORM_MAX_HEAD + 2, rotary_dim=0),
         "rotary_qk_norm: src, dst, q_gamma and k_gamma must not be null"),
    ]
    for change, msg in cases:
        with pytest.raises(InputError) as err:
            p.rotary_qk_norm(**{**args, **change})
        assert str(err.value).startswith(msg), (change, str(err.value))
        if change.get("gamma_dtype") == "bf16":
            assert str(err.value).endswith("got 'bf16'"), str(err.value)
    p.rotary_qk_norm(**{**args, "batch": 0})  # nothing to do: returns before the pointers matter


def test_fp16_sum_order_is_the_references_tree():
    """native/kernels/rotary's fp16 sum of squares, in its order (lane l holds elements l, 32 + l, ... in 8 slots;
    the slots are halved, then the warp's xor tree over 16, 8, 4, 2, 1 lanes), is ref_rmsnorm's pairwise fp16 tree
    (_tree_sum_fp16) bit for bit for every power-of-two head size, and not for others: what the kernel's README and
    test_rotary_qk_norm's one-ulp bound rely on. numpy float16 additions round each step as the kernel's do."""
    from trtrun.reference import _tree_sum_fp16

    rng = np.random.default_rng(4)
    for D, same in ((16, True), (32, True), (64, True), (128, True), (256, True), (96, False)):
        x = (rng.normal(0, 2, (500, D)) * rng.uniform(0.1, 4, (500, 1))).astype(np.float16)
        sq = x * x
        slots = np.zeros((500, 8, 32), np.float16)
        slots.reshape(500, 256)[:, :D] = sq  # slot c, lane l: element 32c + l
        w = 4
        while w >= 1:
            slots[:, :w] = slots[:, :w] + slots[:, w:2 * w]
            w //= 2
        lanes = slots[:, 0]
        for o in (16, 8, 4, 2, 1):
            lanes = lanes + lanes[:, np.arange(32) ^ o]
        assert (lanes == lanes[:, :1]).all()  # every lane ends with the total
        equal = lanes[:, 0].view(np.uint16) == _tree_sum_fp16(sq).view(np.uint16)
        assert equal.all() if same else not equal.all(), D
