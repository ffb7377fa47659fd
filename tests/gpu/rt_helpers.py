"""Helpers of the GPU runtime tests (tests/gpu/test_runtime_*.py): skip reasons, model and plan factories
(cached for the session), hand-made plans that reach every branch of native/runtime/, feeds and comparisons.

Models:
  "bert-base": BertConfig() (hidden 768, 12 layers, 12 heads, vocab 30522, 512 positions), random weights
  "gpt2":      GPT2Config() (hidden 768, 12 layers, 12 heads, vocab 50257, 1024 positions), random weights
  "minilm":    all-MiniLM-L6-v2, real weights from the data folder (TRTRUN_DATA)
  "bert-tiny", "gpt2-tiny": hidden 128, 2 layers, 4 heads (fast; concurrency, endurance, errors)
Random weights come from trtrun.export (seeded, non-trivial biases and LayerNorm gains); the PyTorch model
with the same weights is rebuilt from the same seed (trtrun.export._load_model), never re-read from ONNX.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}
# exported models and plans; TRTRUN_TEST_CACHE shares them between pytest processes (tests/gpu/device_run.sh)
_CACHE = Path(os.environ.get("TRTRUN_TEST_CACHE") or tempfile.mkdtemp(prefix="trtrun-gpu-tests-"))
_CACHE.mkdir(parents=True, exist_ok=True)


def runtime_reason() -> str | None:
    """None when trtrun's GPU runtime can run here, else why not (asks the extension, not torch)."""
    from trtrun.runtime import gpu_available

    ok, why = gpu_available()
    return None if ok else why


def need_runtime():
    why = runtime_reason()
    if why:
        pytest.skip(f"GPU runtime unavailable: {why}")


def need_torch_cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device (PyTorch comparisons need one)")
    return torch


def _source(kind: str):
    if kind == "bert-base":
        return "bert-base", {}
    if kind == "gpt2":
        return "gpt2", {}
    if kind == "bert-tiny":
        return "bert-base", dict(TINY)
    if kind == "gpt2-tiny":
        return "gpt2", dict(TINY)
    if kind == "minilm":
        from trtrun.data import data_dir

        d = data_dir() / "minilm"
        if not (d / "config.json").exists():
            pytest.skip(f"MiniLM is not in the data folder ({d})")
        return d, {}
    raise AssertionError(kind)


@functools.lru_cache(maxsize=None)
def onnx_path(kind: str) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trtrun.export import export_model

    src, over = _source(kind)
    path = _CACHE / f"{kind}.onnx"
    if not path.exists():  # written under another name first: a killed run leaves no half file behind
        tmp = _CACHE / f".{kind}.{os.getpid()}.onnx"
        export_model(src, tmp, overrides=over or None, seed=0)
        os.replace(tmp, path)
    return path


PROFILE = {"batch": (1, 8, 32), "seq": (1, 128, 512)}


@functools.lru_cache(maxsize=None)
def plan_of(kind: str, precision: str, tf32: bool = False):
    """The plan (built once per session, saved and re-loaded through the file format)."""
    from trtrun.builder import build
    from trtrun.plan import load_plan

    path = _CACHE / f"{kind}-{precision}{'-tf32' if tf32 else ''}.plan"
    if not path.exists():
        plan = build(onnx_path(kind), precision=precision, profile=PROFILE)
        if tf32:
            plan.header["tf32"] = True
        plan.save(path)
    return load_plan(path)


@functools.lru_cache(maxsize=None)
def engine_of(kind: str, precision: str, tf32: bool = False):
    from trtrun.runtime import Engine

    return Engine(plan_of(kind, precision, tf32), device=0)


@functools.lru_cache(maxsize=None)
def torch_model(kind: str):
    """The PyTorch fp32 model with the plan's weights, on the GPU (TF32 off)."""
    torch = need_torch_cuda()
    import transformers

    from trtrun.export import _load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    src, over = _source(kind)
    model, _ = _load_model(torch, transformers, src, over, 0)
    return model.cuda().eval()


def torch_run(kind: str, feeds: dict) -> np.ndarray:
    torch = need_torch_cuda()
    model = torch_model(kind)
    kw = {k: torch.as_tensor(v).cuda() for k, v in feeds.items()}
    with torch.no_grad():
        out = model(**kw, use_cache=False) if kind.startswith("gpt2") else model(**kw)
    return out.last_hidden_state.float().cpu().numpy()


def vocab_of(plan) -> int:
    return int(plan.vocab_size)


def random_feeds(plan, batch: int, seq: int, *, padded: bool = False, seed: int = 0) -> dict:
    """Random ids in the vocabulary (never all zeros); right padding of random lengths when `padded`
    (sample 0 keeps the full length, every sample at least one token)."""
    rng = np.random.default_rng(seed)
    names = [i["name"] for i in plan.inputs]
    ids = rng.integers(1, vocab_of(plan), (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    if padded and seq > 1:
        for b in range(1, batch):
            n = int(rng.integers(1, seq + 1))
            mask[b, n:] = 0
            ids[b, n:] = 0
    feeds = {"input_ids": ids}
    if "attention_mask" in names:
        feeds["attention_mask"] = mask
    if "token_type_ids" in names:
        tt = rng.integers(0, plan.type_vocab_size or 1, (batch, seq)).astype(np.int64)
        feeds["token_type_ids"] = tt * mask
    return feeds


def valid_mask(feeds) -> np.ndarray:
    m = feeds.get("attention_mask")
    return np.ones(feeds["input_ids"].shape, bool) if m is None else np.asarray(m).astype(bool)


def cosine_per_sample(a, b, mask) -> np.ndarray:
    """Cosine similarity of each sample's outputs over its valid (mask == 1) tokens, in float64."""
    out = []
    for i in range(a.shape[0]):
        m = np.asarray(mask[i]).astype(bool)
        x = np.asarray(a[i][m], np.float64).ravel()
        y = np.asarray(b[i][m], np.float64).ravel()
        out.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
    return np.array(out)


def rel_l2(a, b, mask) -> float:
    m = np.asarray(mask).astype(bool)
    x = np.asarray(a[m], np.float64)
    y = np.asarray(b[m], np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# Acceptance thresholds (issue 3), per sample over valid tokens. fp32: the runtime and the baseline do the
# same fp32 arithmetic in a different order (GEMM tiling, reduction trees), a relative error of ~1e-6 per op
# that grows slowly through 12 layers: 1 - cos ~ err^2 / 2 is far below 1e-5. hybrid: fp16 operands
# (relative rounding 2^-11 ~ 4.9e-4 per GEMM operand) give ~1e-3 relative error after 12 layers, 1 - cos ~
# 5e-7..1e-4: 2e-4 is the bound the issue sets.
COS_MIN = {"fp32": 0.99999, "hybrid": 0.9998, "fp16": 0.999}


def report_dir() -> Path | None:
    d = os.environ.get("TRTRUN_REPORT_DIR")
    if not d:
        return None
    p = Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


def report(name: str, text: str) -> None:
    """Print a result line (pytest -s shows it) and append it to $TRTRUN_REPORT_DIR/<name>.txt."""
    print(text)
    d = report_dir()
    if d is not None:
        with open(d / f"{name}.txt", "a") as f:
            f.write(text + "\n")


# ------------------------------------------------------------------------------------------------ hand-made plans
def handmade_plan(*, precision="hybrid", causal=False, mask_input=True, x32_linear=False, bias32_out16=False,
                  activation="gelu_erf", tf32=False, token_types=True, embed_ln=True, position_offset=0,
                  hidden=64, heads=2, vocab=1000, positions=160, profile=None, seed=0, ffn_input_dies=False,
                  residual32=False):
    """A one-layer transformer plan written by hand, to reach the runtime's less common branches:
    x32_linear: a hybrid Linear whose input is an fp32 tensor (the runtime rounds it to fp16 in a scratch);
    bias32_out16: a Linear with an fp32 bias and an fp16 output (cuBLASLt's epilogue wants the bias in y's
        type, so the runtime runs its own fp32 bias/activation kernel after an fp32-output GEMM);
    mask_input=False, causal=False: attention without a mask input (the runtime makes a valid-length mask
        for the padded bucket);
    activation: gelu_erf (bias epilogue + gelu plugin) or gelu_tanh (cuBLASLt GELU_BIAS epilogue);
    ffn_input_dies: ln2 adds the embedding output instead of ln1's, so the FFN input is read by fc only (as in
        GPT-2's pre-norm blocks): its memory may be reused from fc2 on;
    residual32: the embedding output (a residual of both LayerNorms) is fp32 in a hybrid plan, as GPT-2's
        residual stream is."""
    from trtrun.plan import Plan

    rng = np.random.default_rng(seed)
    f16 = precision != "fp32"
    act_dt = "float16" if f16 else "float32"
    wdt = "float16" if f16 else "float32"
    N, H = hidden, heads
    D = N // H
    ffn = 4 * N
    W = {}

    def w(name, shape, scale=0.05, dtype=wdt, offset=0.0):
        W[name] = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        return name

    tensors = {"input_ids": {"dtype": "int64", "shape": ["B", "S"]}}
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["B", "S"]}]
    if mask_input:
        tensors["attention_mask"] = {"dtype": "int64", "shape": ["B", "S"]}
        inputs.append({"name": "attention_mask", "dtype": "int64", "shape": ["B", "S"]})
    if token_types:
        tensors["token_type_ids"] = {"dtype": "int64", "shape": ["B", "S"]}
        inputs.append({"name": "token_type_ids", "dtype": "int64", "shape": ["B", "S"]})

    def t(name, n, dtype):
        tensors[name] = {"dtype": dtype, "shape": ["B", "S", n]}
        return name

    ops = []
    # residual-stream dtype: fp32 in hybrid/fp32 (and for x32_linear), fp16 in fp16 plans
    emb_dt = "float32" if (precision == "fp32" or x32_linear or residual32) else act_dt
    ew = {"word": w("word", (vocab, N), 0.5, wdt), "position": w("pos", (positions, N), 0.5, wdt)}
    if token_types:
        ew["token_type"] = w("tt", (2, N), 0.5, wdt)
    if embed_ln:
        ew["gamma"] = w("eg", (N,), 0.1, "float32", 1.0)
        ew["beta"] = w("eb", (N,), 0.1, "float32")
    ops.append({"type": "Embedding", "name": "emb",
                "inputs": ["input_ids", "token_type_ids" if token_types else ""],
                "outputs": [t("e", N, emb_dt)], "weights": ew,
                "attrs": ({"epsilon": 1e-12} if embed_ln else {}) | {"position_offset": position_offset},
                "precision": precision})
    ops.append({"type": "Linear", "name": "qkv", "inputs": ["e"], "outputs": [t("qkv", 3 * N, act_dt)],
                "weights": {"weight": w("wqkv", (N, 3 * N)), "bias": w("bqkv", (3 * N,))},
                "attrs": {"activation": "none"}, "precision": precision})
    ops.append({"type": "Attention", "name": "attn",
                "inputs": ["qkv", "attention_mask" if mask_input else ""], "outputs": [t("a", N, act_dt)],
                "weights": {}, "attrs": {"num_heads": H, "head_size": D, "scale": 1.0 / np.sqrt(D),
                                         "causal": causal}, "precision": precision})
    proj_dt = "float32" if precision != "fp16" else act_dt
    ops.append({"type": "Linear", "name": "proj", "inputs": ["a"], "outputs": [t("p", N, proj_dt)],
                "weights": {"weight": w("wp", (N, N)), "bias": w("bp", (N,))},
                "attrs": {"activation": "none"}, "precision": precision})
    ln_dt = "float32" if (precision == "fp32" or x32_linear) else act_dt
    ops.append({"type": "LayerNorm", "name": "ln1", "inputs": ["p", "e"], "outputs": [t("h", N, ln_dt)],
                "weights": {"gamma": w("g1", (N,), 0.1, "float32", 1.0), "beta": w("b1", (N,), 0.1, "float32")},
                "attrs": {"epsilon": 1e-5}, "precision": precision})
    fc_bias = w("bfc", (4 * N,), 0.05, "float32" if bias32_out16 else wdt)
    ops.append({"type": "Linear", "name": "fc", "inputs": ["h"], "outputs": [t("f", ffn, act_dt)],
                "weights": {"weight": w("wfc", (N, ffn)), "bias": fc_bias},
                "attrs": {"activation": activation}, "precision": precision})
    ops.append({"type": "Linear", "name": "fc2", "inputs": ["f"], "outputs": [t("f2", N, proj_dt)],
                "weights": {"weight": w("wfc2", (ffn, N)), "bias": w("bfc2", (N,))},
                "attrs": {"activation": "none"}, "precision": precision})
    ops.append({"type": "LayerNorm", "name": "ln2", "inputs": ["f2", "e" if ffn_input_dies else "h"], "outputs": [t("out", N, "float32")],
                "weights": {"gamma": w("g2", (N,), 0.1, "float32", 1.0), "beta": w("b2", (N,), 0.1, "float32")},
                "attrs": {"epsilon": 1e-5}, "precision": precision})
    header = {
        "precision": precision, "tf32": tf32,
        "profile": profile or {"batch": [1, 2, 8], "seq": [1, 16, positions - position_offset]},
        "source": {"path": "handmade", "sha256": "", "producer": "tests/gpu/rt_helpers.py", "opset": 0},
        "model": {"arch": "decoder" if causal else "encoder", "hidden": N, "num_heads": H, "num_layers": 1,
                  "vocab_size": vocab, "max_position": positions},
        "inputs": inputs, "outputs": [{"name": "out", "dtype": "float32", "shape": ["B", "S", N]}],
        "tensors": tensors, "ops": ops, "builder": {"trtrun": "tests", "passes": []},
    }
    return Plan.from_parts(header, W)
