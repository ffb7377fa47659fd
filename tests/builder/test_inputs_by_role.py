"""Graph inputs matched by role, position_ids as an input, fixed batch/sequence dims (builder/input_roles.py).

The files are made with public tools: torch.onnx with the caller's own input names (and with / without
dynamic axes), onnx.compose to rename, onnxruntime's make_dim_param_fixed to fix a dim. Each plan is run on
the reference backend and compared with onnxruntime running the file itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import TINY  # noqa: E402


def _feeds(B=3, S=11, vocab=1000):
    rng = np.random.default_rng(7)
    mask = np.ones((B, S), np.int64)
    if B > 1:
        mask[1, S - 3:] = 0
    if B > 2:
        mask[2, 4:] = 0
    return rng.integers(0, vocab, (B, S)), mask


def _worst_cos(a, b, mask):
    a, b = a[mask != 0].astype(np.float64), b[mask != 0].astype(np.float64)
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


def _ort(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _export_bert(path, names, with_positions=True, dynamic=True, B=2, S=8):
    """A tiny random BERT through torch.onnx with the caller's input names (ids, mask, types, positions)."""
    import torch

    from trtrun.export import load_torch_model

    model = load_torch_model("bert-base", overrides=dict(TINY), seed=0)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types, pos=None):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=pos).last_hidden_state

    ids = torch.randint(0, 1000, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    args = [ids, mask, torch.zeros(B, S, dtype=torch.long)]
    if with_positions:
        args.append(torch.arange(S).expand(B, S).contiguous())
    dyn = {n: {0: "b", 1: "s"} for n in names} if dynamic else None
    if dyn:
        dyn["out"] = {0: "b", 1: "s"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model).eval(), tuple(args), str(path), input_names=names, output_names=["out"],
                          dynamic_axes=dyn, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def own_names(tmp_path_factory):
    return _export_bert(tmp_path_factory.mktemp("roles") / "m.onnx", ["ids", "attention_mask_0", "segment", "pos"])


def test_inputs_found_by_role_and_positions_as_arange(own_names):
    import trtrun
    from trtrun.reference import ReferenceBackend

    plan = trtrun.build(own_names, precision="hybrid")
    assert [i["name"] for i in plan.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    notes = " | ".join(plan.source["conversions"])
    assert "graph input 'ids' is input_ids (it indexes the largest table" in notes
    assert "graph input 'segment' is token_type_ids" in notes
    assert "graph input 'attention_mask_0' is attention_mask" in notes
    assert "graph input 'pos' is position_ids" in notes and "arange(S)" in notes
    ids, mask = _feeds()
    out = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    B, S = ids.shape
    ref = _ort(own_names, {"ids": ids, "attention_mask_0": mask, "segment": np.zeros_like(ids),
                           "pos": np.broadcast_to(np.arange(S), (B, S)).copy()})
    # hybrid against onnxruntime fp32 on the same file: fp16 GEMM operands cost ~1e-7 in cosine (docs/models.md)
    assert _worst_cos(out["out"], ref, mask) >= 0.9999


def test_renamed_by_onnx_compose_fused_file(exported, tmp_path):
    """onnxruntime's optimizer output (EmbedLayerNormalization: roles by slot) with inputs renamed by onnx."""
    pytest.importorskip("onnxruntime.transformers")
    import onnx
    from onnx.compose import add_prefix

    import trtrun
    from producers_corpus import make_variant
    from trtrun.reference import ReferenceBackend

    fused = make_variant("ort-O2", exported("bert"), tmp_path / "o2.onnx", "bert")
    m = add_prefix(onnx.load(str(fused)), "enc.", rename_nodes=False, rename_edges=False, rename_inputs=True,
                   rename_outputs=False, rename_initializers=False, rename_value_infos=False, rename_functions=False)
    onnx.save(m, str(tmp_path / "r.onnx"))
    plan = trtrun.build(tmp_path / "r.onnx", precision="fp32")
    assert {i["name"] for i in plan.inputs} == {"input_ids", "attention_mask", "token_type_ids"}
    assert any("'enc.input_ids' is input_ids (its slot in onnxruntime's fused ops)" in c
               for c in plan.source["conversions"])
    ids, mask = _feeds()
    f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    out = ReferenceBackend(plan).run(f)[plan.outputs[0]["name"]]
    # fp32 plan against onnxruntime fp32 on the original export: rounding only (docs/models.md: 1.0000000)
    assert _worst_cos(out, _ort(exported("bert"), f), mask) >= 0.99999


def test_input_of_unknown_role_is_named(exported, tmp_path):
    import onnx
    from onnx import helper

    import trtrun

    m = onnx.load(str(exported("bert")))
    m.graph.input.append(helper.make_tensor_value_info("cache_index", onnx.TensorProto.INT64, ["b", "s"]))
    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(trtrun.ModelError, match="graph input 'cache_index': its role cannot be determined"):
        trtrun.build(tmp_path / "m.onnx")


def test_fixed_batch_clamps_the_profile(exported, tmp_path, capsys):
    """A file whose batch was fixed at 1 by onnxruntime's own tool (as for mobile/static runtimes)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    import trtrun
    from trtrun.cli.main import main
    from trtrun.reference import ReferenceBackend

    m = onnx.load(str(exported("bert")))
    make_dim_param_fixed(m.graph, "batch", 1)
    fix_output_shapes(m)
    path = tmp_path / "b1.onnx"
    onnx.save(m, str(path))
    plan = trtrun.build(path, precision="fp32")
    assert plan.header["profile"]["batch"] == [1, 1, 1]
    assert any("fixes the batch at 1: profile batch clamped to [1, 1, 1]" in c for c in plan.source["conversions"])
    ids, mask = _feeds(B=1, S=9)
    f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    out = ReferenceBackend(plan).run(f)["last_hidden_state"]
    assert _worst_cos(out, _ort(path, f), mask) >= 0.99999  # fp32 vs fp32, rounding only
    with pytest.raises(trtrun.TrtrunError):  # batch 2 is outside the clamped profile
        ReferenceBackend(plan).run({k: np.concatenate([v, v]) for k, v in f.items()})
    with pytest.raises(ValueError, match="excludes the file's fixed batch 1"):
        trtrun.build(path, profile={"batch": (2, 4, 8), "seq": (1, 16, 64)})
    capsys.readouterr()
    assert main(["build", str(path), "-o", str(tmp_path / "p.plan"), "--precision", "fp32"]) == 0
    assert "note: the file fixes the batch at 1" in capsys.readouterr().err


def test_static_export_is_refused_with_how_to_reexport(tmp_path):
    """torch.onnx without dynamic_axes bakes batch 1 x sequence 16 into the graph's reshapes."""
    import trtrun

    path = _export_bert(tmp_path / "static.onnx", ["input_ids", "attention_mask", "token_type_ids"],
                        with_positions=False, dynamic=False, B=1, S=16)
    with pytest.raises(trtrun.BuildError, match=r"fixed batch 1 and sequence 16 .*re-export with dynamic axes"):
        trtrun.build(path)


def test_llama_position_ids_input_feeds_rotary(tmp_path):
    """A decoder exported with position_ids (rotary cos/sin computed from them): arange, as transformers' default."""
    import torch

    import trtrun
    from trtrun.export import load_torch_model
    from trtrun.reference import ReferenceBackend

    over = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                num_key_value_heads=2, vocab_size=1000)
    model = load_torch_model("llama", overrides=over, seed=0)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, position_ids):
            return self.m(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state

    B, S = 2, 8
    args = (torch.randint(0, 1000, (B, S)), torch.ones(B, S, dtype=torch.long), torch.arange(S).expand(B, S))
    names = ["ids", "mask", "position_ids"]
    dyn = {n: {0: "b", 1: "s"} for n in names + ["out"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model).eval(), args, str(tmp_path / "l.onnx"), input_names=names,
                          output_names=["out"], dynamic_axes=dyn, opset_version=17, dynamo=False)
    plan = trtrun.build(tmp_path / "l.onnx", precision="fp32")
    assert [i["name"] for i in plan.inputs] == ["input_ids", "attention_mask"]
    assert any("'position_ids' is taken as arange(S)" in c for c in plan.source["conversions"])
    ids, mask = _feeds(B=2, S=11)
    mask[:] = 1  # a decoder's rows: the positions arange is right for unpadded and right-padded rows
    mask[1, 7:] = 0
    out = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": mask})["out"]
    ref = _ort(tmp_path / "l.onnx", {"ids": ids, "mask": mask, "position_ids": np.broadcast_to(np.arange(11), (2, 11)).copy()})
    assert _worst_cos(out, ref, mask) >= 0.99999  # fp32 vs fp32, rounding only


def test_position_ids_given_to_a_run_are_checked_against_the_arange(own_names):
    """A plan whose file took position_ids takes them from a caller (transformers' users pass them): the arange on
    every unmasked token is accepted (padded tokens may hold anything, as transformers writes 1 there), other
    positions are refused by row and place; a plan whose file had no such input refuses the name."""
    import trtrun
    from trtrun.errors import InputError, ShapeError
    from trtrun.reference import ReferenceBackend

    plan = trtrun.build(own_names, precision="fp32")
    assert plan.header["source"]["position_ids"] == "arange"
    ids, mask = _feeds()
    B, S = ids.shape
    base = {"input_ids": ids, "attention_mask": mask}
    want = ReferenceBackend(plan).run(base)["out"]
    pos = np.broadcast_to(np.arange(S), (B, S)).copy()
    pos[mask == 0] = 1  # transformers' masked_fill for padded tokens
    got = ReferenceBackend(plan).run({**base, "position_ids": pos})["out"]
    np.testing.assert_array_equal(got, want)  # the same run: the positions are checked, not fed

    left = pos.copy()
    r = int(np.argmin(mask.sum(1)))  # a padded row, shifted as left padding would number it
    n = int(mask[r].sum())
    left[r] = np.concatenate([np.zeros(S - n, np.int64), np.arange(n)])
    with pytest.raises(InputError, match=rf"'position_ids' has \d+ at position \[{r}, \d+\] where this plan computes"):
        ReferenceBackend(plan).run({**base, "position_ids": left})
    with pytest.raises(ShapeError, match="'position_ids' has shape"):
        plan.check_feeds({**base, "position_ids": pos[:, :-1]})
    with pytest.raises(InputError, match="'position_ids' has dtype float"):
        plan.check_feeds({**base, "position_ids": pos.astype(np.float32)})

    header = dict(plan.header, source={k: v for k, v in plan.header["source"].items() if k != "position_ids"})
    other = trtrun.Plan(header, plan.weights)
    with pytest.raises(InputError, match="unknown input 'position_ids'"):
        other.check_feeds({**base, "position_ids": pos})


def test_plan_refuses_another_position_rule(own_names):
    import trtrun
    from trtrun.errors import PlanError

    plan = trtrun.build(own_names, precision="fp32")
    header = dict(plan.header, source=dict(plan.header["source"], position_ids="zeros"))
    with pytest.raises(PlanError, match=r'header.source.position_ids.*not "arange"'):
        trtrun.Plan(header, plan.weights).validate()
