"""The architectures trtrun export does not name (tests/producers_corpus.py FAMILY: the BERT family, ERNIE, Gemma,
Gemma 2, Gemma 3, Granite, Phi, Phi-3, StableLM, OLMo, OLMo-2, OLMo 3, Falcon, StarCoder2, GPT-J, CodeGen, OPT,
RoFormer, GPT-Neo, MPT, Nemotron, ESM-2, Persimmon, StableLM-2 with qk_layernorm, BLOOM, XGLM, SmolLM3, EXAONE 4,
Seed-OSS, Arcee, Cohere, GLM, ERNIE 4.5, Helium) and the T5 encoders (gated-GELU and ReLU), end to end on the GPU
runtime: each tiny random-weight model (hidden 128, 2 layers, 4 heads of 32) exported with eager attention by
torch.onnx (the dynamo exporter for DYNAMO_FAMILIES), built in fp32 and hybrid, run on right-padded random ids and
compared per token with onnxruntime fp32 on the same file. CI checks that each builds and matches onnxruntime on
the reference backend and lowers to the same GPU program as before; this runs that program.

Tolerances: the models' acceptance (rt_helpers.COS_MIN, per sample over valid tokens: fp32 >= 0.99999, hybrid >=
0.9998), here per token, which is stricter. A family the GPU runtime does not lower (an op or attribute it lacks)
is skipped naming the reason, so the gap is visible in -rs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import rt_helpers as h

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from producers_corpus import FAMILY, TORCH_ONNX_EXPORTS, family_baseline  # noqa: E402

ARCHS = list(FAMILY) + ["t5-gated-gelu", "t5-relu"]
# several lengths: past GPT-Neo's and Gemma 2's 8-token windows, one query tile and more
SHAPES = [(3, 11), (2, 40), (4, 77)]
_onnx: dict = {}


def _export(arch: str) -> Path:
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if arch not in _onnx:
        import torch

        from producers_corpus import family_dir
        from trtrun.export import _randomize, export_model

        d = h._CACHE / f"family-{arch}"
        if arch.startswith("t5-"):
            cfg = transformers.T5Config(vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                                        feed_forward_proj=arch[3:])
            torch.manual_seed(0)
            model = transformers.T5Model(cfg)
            _randomize(torch, model, 0)
            model.save_pretrained(d / "hf")
            src = d / "hf"
            how = {}
        else:
            src = family_dir(arch, d / "hf")
            attention, exporter = TORCH_ONNX_EXPORTS[family_baseline(arch)]
            how = {"attention": attention, "exporter": exporter}
        _onnx[arch] = export_model(src, d / "model.onnx", **how)
    return _onnx[arch]


def _feeds(names, B, S, seed):
    """Ids past the special ones (no padding id inside a row), right padding of random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (B, S)).astype(np.int64)
    mask = np.ones((B, S), np.int64)
    for b in range(1, B):
        mask[b, int(rng.integers(1, S + 1)):] = 0
    f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((B, S), np.int64)}
    return {k: v for k, v in f.items() if k in names}, mask


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
@pytest.mark.parametrize("arch", ARCHS)
def test_family_on_gpu_vs_onnxruntime(arch, precision):
    h.need_runtime()
    import onnxruntime as ort

    import trtrun
    from trtrun.runtime import Engine

    path = _export(arch)
    plan = trtrun.build(path, precision=precision)
    try:
        ctx = Engine(plan, device=0).create_context()
    except trtrun.PlanError as e:
        pytest.skip(f"{arch}: the GPU runtime does not lower it: {e}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_names = [i.name for i in sess.get_inputs()]
    out = plan.outputs[0]["name"]
    for i, (B, S) in enumerate(SHAPES):
        feeds, mask = _feeds([x["name"] for x in plan.inputs], B, S, seed=300 + i)
        got = ctx.run(feeds)[out]
        want = sess.run(None, {k: v for k, v in _feeds(ort_names, B, S, seed=300 + i)[0].items()})[0]
        assert not np.isnan(got).any(), (arch, precision, B, S)
        a, b = got[mask != 0].astype(np.float64), want[mask != 0].astype(np.float64)
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        h.report("families", f"{arch:14s} {precision:6s} B={B} S={S:3d} worst token cos {cos.min():.8f}")
        assert cos.min() >= h.COS_MIN[precision], (arch, precision, B, S, float(cos.min()))
