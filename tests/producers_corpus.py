"""The producer corpus: ONNX files as other public tools write them, made from a plain torch.onnx export.

Each variant is one function (src: the plain fp32 export, dst: where to write, arch: "bert" | "gpt2" |
"minilm") calling the tool a user would call:

- onnxruntime's transformer optimizer (`optimize_model`), as Optimum's O1-O4 levels drive it: O1/O2 = its
  fusions at opt_level 1/2, O3 = O2 + GELU approximation (FastGelu), O4 = O3 for the GPU + fp16
  (`convert_float_to_float16(keep_io_types=True)`); beside them the fusion options that change the op forms
  (raw attention mask, MultiHeadAttention, no EmbedLayerNormalization). Optimum itself (optimum-onnx 0.1.0,
  the only release) pins transformers < 4.58 and cannot be installed beside transformers 5, so its levels
  are reproduced through the same onnxruntime calls;
- onnxruntime's fp16 converter with and without fp32 inputs/outputs;
- onnxruntime.quantization: dynamic int8 (`quantize_dynamic`, also of the optimizer's O2 output: QAttention,
  QEmbedLayerNormalization) and static (`quantize_static`) in QDQ and QOperator format;
- the same model with its weights in an external data file;
- the same model with its graph inputs renamed by onnx.compose.add_prefix (inputs matched by role);
- sentence-transformers (encoders): its SentenceTransformer module (Transformer + mean Pooling + Normalize)
  exported by torch.onnx, outputs token_embeddings and sentence_embedding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

HEADS = {"bert": 4, "gpt2": 4, "minilm": 12}
HIDDEN = {"bert": 128, "gpt2": 128, "minilm": 384}


def _model_type(arch):
    return "gpt2" if arch == "gpt2" else "bert"


def _optimize(src, dst, arch, opt_level=1, use_gpu=False, fp16=False, **fusion):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fo = FusionOptions(_model_type(arch))
    if fusion.pop("raw_mask", False):
        fo.use_raw_attention_mask(True)
    for k, v in fusion.items():
        setattr(fo, k, v)
    m = optimize_model(str(src), model_type=_model_type(arch), num_heads=HEADS[arch], hidden_size=HIDDEN[arch],
                       optimization_options=fo, opt_level=opt_level, use_gpu=use_gpu)
    if fp16:
        m.convert_float_to_float16(keep_io_types=True)
    m.save_model_to_file(str(dst))


def _fp16(src, dst, arch, keep_io_types):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types), str(dst))


def _int8_dynamic(src, dst, arch):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _int8_optimized(src, dst, arch):
    """onnxruntime's optimizer (O2) then quantize_dynamic: its fused ops become QEmbedLayerNormalization and
    QAttention. The quantizer's shape inference cannot type the contrib ops' outputs; DefaultTensorType is the
    setting its error message names for that."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _optimize(src, dst, arch, opt_level=2)
    quantize_dynamic(str(dst), str(dst), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _int8_qdq(src, dst, arch, quant_format="QDQ"):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{n: (rng.integers(0, 1000, (2, 16)) if n == "input_ids" else
                                 np.ones((2, 16), np.int64) if n == "attention_mask" else
                                 np.zeros((2, 16), np.int64)) for n in names} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    if quant_format == "QDQ":
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"])
    else:  # every op the quantizer has a QOperator form for: QLinearMatMul, QLinearAdd, QLinearMul, QLinearSoftmax
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator)


def _external(src, dst, arch):
    import onnx

    m = onnx.load(str(src))
    onnx.save(m, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=Path(dst).name + ".data", size_threshold=1024)


def _renamed_inputs(src, dst, arch):
    """onnx's own renaming tool: every graph input gets a prefix (roles then come from the graph, not names)."""
    import onnx
    from onnx.compose import add_prefix

    m = add_prefix(onnx.load(str(src)), "model.", rename_nodes=False, rename_edges=False, rename_inputs=True,
                   rename_outputs=False, rename_initializers=False, rename_value_infos=False, rename_functions=False)
    onnx.save(m, str(dst))


def sentence_transformers_export(model_dir, dst, tokenizer_dir=None):
    """A SentenceTransformer (Transformer + mean Pooling + Normalize) exported by torch.onnx."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    model_dir = Path(model_dir)
    if (model_dir / "modules.json").exists():
        st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"})
    else:
        tr = models.Transformer(str(model_dir), model_args={"attn_implementation": "eager"},
                                tokenizer_name_or_path=str(tokenizer_dir or model_dir))
        st = SentenceTransformer(modules=[tr, models.Pooling(tr.get_embedding_dimension(), "mean"),
                                          models.Normalize()], device="cpu")
    st.eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m({"input_ids": input_ids, "attention_mask": attention_mask})
            return out["token_embeddings"], out["sentence_embedding"]

    ids = torch.randint(0, 1000, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    dyn = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
           "token_embeddings": {0: "b", 1: "s"}, "sentence_embedding": {0: "b"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(st), (ids, mask), str(dst), input_names=["input_ids", "attention_mask"],
                          output_names=["token_embeddings", "sentence_embedding"], opset_version=17,
                          dynamo=False, dynamic_axes=dyn)


# variant -> (function(src, dst, arch), archs it applies to)
VARIANTS = {
    "ort-O1": (lambda s, d, a: _optimize(s, d, a, opt_level=1), ("bert", "gpt2", "minilm")),
    "ort-O2": (lambda s, d, a: _optimize(s, d, a, opt_level=2), ("bert", "gpt2", "minilm")),
    "ort-O3": (lambda s, d, a: _optimize(s, d, a, opt_level=2, enable_gelu_approximation=True),
               ("bert", "gpt2", "minilm")),
    "ort-O4": (lambda s, d, a: _optimize(s, d, a, opt_level=2, use_gpu=True, fp16=True,
                                         enable_gelu_approximation=True), ("bert", "gpt2", "minilm")),
    "ort-raw-mask": (lambda s, d, a: _optimize(s, d, a, raw_mask=True), ("bert", "minilm")),
    "ort-no-embed-ln": (lambda s, d, a: _optimize(s, d, a, enable_embed_layer_norm=False), ("bert", "minilm")),
    "ort-mha": (lambda s, d, a: _optimize(s, d, a, use_multi_head_attention=True), ("bert", "minilm")),
    "fp16": (lambda s, d, a: _fp16(s, d, a, keep_io_types=False), ("bert", "gpt2", "minilm")),
    "fp16-io32": (lambda s, d, a: _fp16(s, d, a, keep_io_types=True), ("bert", "gpt2", "minilm", "llama")),
    "int8-dynamic": (_int8_dynamic, ("bert", "gpt2", "minilm", "llama")),
    "int8-qdq": (_int8_qdq, ("bert", "gpt2", "minilm")),
    # GPT-2's QOperator file also has QGemm and a Split of quantized values: refused in one line (not a row)
    "int8-qoperator": (lambda s, d, a: _int8_qdq(s, d, a, "QOperator"), ("bert", "minilm")),
    "ort-O2-int8-dynamic": (_int8_optimized, ("bert", "gpt2", "minilm")),
    "external-data": (_external, ("bert", "gpt2", "minilm")),
    "renamed-inputs": (_renamed_inputs, ("bert", "gpt2")),
}
INT8 = ("int8-dynamic", "int8-qdq", "int8-qoperator", "ort-O2-int8-dynamic")

# The newer architectures (issue 20), tiny random-weight configs of `trtrun export`'s named architectures:
# hidden 128, 2 layers, 4 heads (Llama/Qwen2/Mistral/Qwen3: 2 K/V heads), a 32000-token vocabulary (MPNet its own 30527).
# torch.onnx's two exporters for each; `fp16-io32` and `int8-dynamic` for Llama. `REFUSED`: architectures the
# IR does not express, with the words their one-line refusal must contain.
NEW_ARCHS = {
    "llama": ("llama", dict(num_key_value_heads=2, vocab_size=32000)),
    "qwen2": ("qwen2", dict(num_key_value_heads=2, vocab_size=32000)),
    # a causal window of 8 tokens (keys at most 7 behind the query): the 3 x 11 test batch crosses it, the probes
    # (5, 7 tokens) do not
    "mistral": ("mistral", dict(num_key_value_heads=2, vocab_size=32000, sliding_window=8)),
    "qwen3": ("qwen3", dict(num_key_value_heads=2, vocab_size=32000, head_dim=32)),  # RMSNorm on each q/k head
    "gpt-neox": ("gpt-neox", dict(vocab_size=32000)),  # partial rotary (a quarter of each head), parallel residual
    "mpnet": ("mpnet", dict(vocab_size=30527, max_position_embeddings=514)),
    "deberta-v2": ("deberta-v2", dict(vocab_size=32000, max_position_embeddings=512)),
    # layers global, local; a local window of 16 (keys within 8 of the query) that the probes (5, 7) cannot see
    "modernbert": ("modernbert", dict(vocab_size=32000, local_attention=16, global_attn_every_n_layers=2)),
}
REFUSED = {"deberta-v2": "disentangled attention"}


def export_new_arch(arch: str, dst, exporter: str = "torchscript") -> Path:
    """A tiny random-weight export of one of NEW_ARCHS (seed 0)."""
    from trtrun.export import export_model

    name, extra = NEW_ARCHS[arch]
    sizes = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    return export_model(name, dst, exporter=exporter, overrides={**sizes, **extra}, seed=0)


def make_variant(variant: str, src, dst, arch: str) -> Path:
    import logging
    import warnings

    fn, archs = VARIANTS[variant]
    if arch not in archs:
        raise ValueError(f"variant {variant} does not apply to {arch}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(Path(src), dst, arch)
    return dst


def tokenizer_files(src_dir, dst_dir):
    """Copy a tokenizer's files (for a random-weight model saved without one)."""
    for f in Path(src_dir).iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens", "merges")):
            shutil.copy(f, Path(dst_dir) / f.name)
