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
  exported by torch.onnx, outputs token_embeddings and sentence_embedding;
- Hugging Face Optimum itself (`optimum-cli export onnx`, then its ORTOptimizer at O1-O3), run by
  tests/optimum_run.py in its own environment (scripts/optimum-env.sh: Optimum's ONNX exporter needs
  transformers < 4.58, trtrun's environment has transformers 5). Its exports use transformers' default
  scaled-dot-product attention, unlike `trtrun export`'s eager one. O4 needs a CUDA device to export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def _int4(src, dst, arch, form="nbits"):
    """onnxruntime's MatMulNBitsQuantizer (4-bit blocks of 32, asymmetric): `nbits` its default MatMulNBits ops,
    `gather` the embedding tables too (GatherBlockQuantized), `qdq` its QDQ form (blocked DequantizeLinear of int4
    constants, opset 21)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    kw = {"nbits": {}, "qdq": {"quant_format": QuantFormat.QDQ},
          "gather": {"op_types_to_quantize": ("MatMul", "Gather"), "quant_axes": (("MatMul", 0), ("Gather", 1))}}[form]
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=False, **kw)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


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


def sentence_transformers_export(model_dir, dst, tokenizer_dir=None, pooling="mean", dense=None):
    """A SentenceTransformer (Transformer + Pooling (mean) + Normalize) exported by torch.onnx. dense: a Dense module
    after the pooling, as LaBSE ("tanh": CLS pooling, a tanh Dense) and sentence-T5/GTR ("identity": a projection
    without bias) have: (activation, out_features)."""
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
        mods = [tr, models.Pooling(tr.get_embedding_dimension(), pooling)]
        if dense is not None:
            act, width = dense
            torch.manual_seed(0)
            mods.append(models.Dense(tr.get_embedding_dimension(), width, bias=act != "identity",
                                     activation_function=torch.nn.Tanh() if act == "tanh" else torch.nn.Identity()))
        st = SentenceTransformer(modules=mods + [models.Normalize()], device="cpu")
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
    # the int4 quantizer takes MatMuls only (GPT-2's export has Gemms: it would quantize nothing); its qdq and
    # gather forms raise a file to opset 21, which an opset-17 export's ReduceMean attributes (Llama's RMSNorm) do
    # not survive: those two for the LayerNorm models
    "int4-nbits": (_int4, ("bert", "minilm", "llama")),
    "int4-gather": (lambda s, d, a: _int4(s, d, a, "gather"), ("bert", "minilm")),
    "int4-qdq": (lambda s, d, a: _int4(s, d, a, "qdq"), ("bert", "minilm")),
    "external-data": (_external, ("bert", "gpt2", "minilm")),
    "renamed-inputs": (_renamed_inputs, ("bert", "gpt2")),
}
INT8 = ("int8-dynamic", "int8-qdq", "int8-qoperator", "ort-O2-int8-dynamic")
INT4 = ("int4-nbits", "int4-gather", "int4-qdq")
QUANTIZED = INT8 + INT4  # compared with onnxruntime on the quantized file too

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


def new_arch_model(arch: str):
    """(trtrun export's name, size overrides) of one of NEW_ARCHS at the corpus's tiny size."""
    name, extra = NEW_ARCHS[arch]
    sizes = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    return name, {**sizes, **extra}


def export_new_arch(arch: str, dst, exporter: str = "torchscript") -> Path:
    """A tiny random-weight export of one of NEW_ARCHS (seed 0)."""
    from trtrun.export import export_model

    name, overrides = new_arch_model(arch)
    return export_model(name, dst, exporter=exporter, overrides=overrides, seed=0)


# ---------------------------------------------------------------------- Optimum
OPTIMUM_LEVELS = ("O1", "O2", "O3")
OPTIMUM_VARIANTS = ("optimum", *(f"optimum-{lv}" for lv in OPTIMUM_LEVELS))
# Optimum's ORTOptimizer refuses these model types ("ONNX Runtime doesn't support the graph optimization of
# qwen2 yet"): their export only
OPTIMUM_NO_LEVELS = ("qwen2", "qwen3")
_OPTIMUM_PIN = Path(__file__).resolve().parents[1] / "scripts" / "optimum-env.txt"


# torch.onnx exports of transformers' default attention (scaled_dot_product_attention); MPNet has none
SDPA_VARIANTS = ("sdpa", "sdpa-dynamo")
SDPA_NONE = ("mpnet",)


def model_args(arch: str):
    """(trtrun export's source name, size overrides) of a corpus architecture (seed 0 gives its weights)."""
    if arch in NEW_ARCHS:
        return new_arch_model(arch)
    from conftest import TINY

    return {"bert": "bert-base", "gpt2": "gpt2"}[arch], dict(TINY)


# Architectures `trtrun export` names none of, tiny random configs straight from transformers (vocabulary 1000,
# seed 0), their own folders exported by torch.onnx (eager and sdpa attention) and, for the BERT family, Optimum:
# the rest of the BERT family, and decoders whose forms the named architectures do not cover (Gemma's and
# Granite's scalar multipliers, Phi's and StableLM's partial rotary with LayerNorm, OLMo's LayerNorm without
# parameters, Falcon's multi-query attention, StarCoder2's biased GQA, GPT-J's and CodeGen's interleaved rotary).
_S = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
FAMILY = {
    "roberta": ("RobertaConfig", _S),
    "xlm-roberta": ("XLMRobertaConfig", _S),
    "distilbert": ("DistilBertConfig", dict(dim=128, n_layers=2, n_heads=4, hidden_dim=256)),
    "electra": ("ElectraConfig", dict(_S, embedding_size=64)),
    "albert": ("AlbertConfig", dict(_S, embedding_size=64)),
    "gemma": ("GemmaConfig", dict(_S, num_key_value_heads=2, head_dim=32)),
    "granite": ("GraniteConfig", dict(_S, num_key_value_heads=2, embedding_multiplier=12.0, residual_multiplier=0.22,
                                      attention_multiplier=0.0078125)),
    "phi": ("PhiConfig", dict(_S, partial_rotary_factor=0.5)),
    "stablelm": ("StableLmConfig", dict(_S, num_key_value_heads=4)),
    "olmo": ("OlmoConfig", _S),
    "falcon": ("FalconConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                                    new_decoder_architecture=False)),
    "starcoder2": ("Starcoder2Config", dict(_S, num_key_value_heads=2)),
    "gptj": ("GPTJConfig", dict(n_embd=128, n_layer=2, n_head=4, rotary_dim=16)),  # interleaved rotary pairs
    "codegen": ("CodeGenConfig", dict(n_embd=128, n_layer=2, n_head=4, rotary_dim=16)),
    # positions counted along the attention mask, the MLP on flattened [B*S, H] rows, ReLU
    "opt": ("OPTConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                              word_embed_proj_dim=128, max_position_embeddings=256)),
    # rotary from a sinusoidal table on interleaved pairs, in an encoder
    "roformer": ("RoFormerConfig", dict(_S, embedding_size=128)),
    # global and local (8-token window) layers, both masks sliced from boolean buffers; no score scale
    "gpt-neo": ("GPTNeoConfig", dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                                     attention_types=[[["global", "local"], 1]], window_size=8)),
    # ALiBi with the bias as [heads, 1, S] (broadcast over batch and queries)
    "mpt": ("MptConfig", dict(d_model=128, n_layers=2, n_heads=4, expansion_ratio=2)),
    # alternating sliding-window and global layers, pre- and post-norms, GeGLU; soft-capping off (the IR has none)
    "gemma2": ("Gemma2Config", dict(_S, num_key_value_heads=2, head_dim=32, sliding_window=8,
                                    attn_logit_softcapping=None, final_logit_softcapping=None)),
    # as OPT-350m: post-LayerNorm, word embeddings projected up to the hidden size and the output down again
    "opt-350m": ("OPTConfig", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                                   word_embed_proj_dim=64, max_position_embeddings=256, do_layer_norm_before=False)),
    # as published: attention scores soft-capped at 50 (the GPU runtime has no soft cap yet)
    "gemma2-softcap": ("Gemma2Config", dict(_S, num_key_value_heads=2, head_dim=32, sliding_window=8,
                                            final_logit_softcapping=None)),
    # query and key RMSNorms over the whole projection (grouped K), each block's output normalized, then added
    "olmo2": ("Olmo2Config", dict(_S, num_key_value_heads=2)),
    # squared ReLU MLP (no GPU kernel yet), partial rotary, LayerNorm with (1 + w) gains
    "nemotron": ("NemotronConfig", dict(_S, num_key_value_heads=2)),
    # ESM-2: rotary encoder, embeddings times the mask and token dropout's 0.88 / (1 - share of <mask>) (id 2)
    "esm": ("EsmConfig", dict(_S, position_embedding_type="rotary", pad_token_id=1, mask_token_id=2,
                              token_dropout=True)),
    # a LayerNorm (gain and bias) over each query and key head before a partial rotary (no GPU kernel yet)
    "persimmon": ("PersimmonConfig", _S),
    # StableLM-2's qk_layernorm: query and key heads split apart, one LayerNorm (own gain) each (no GPU kernel yet)
    "stablelm2-qk": ("StableLmConfig", dict(_S, num_key_value_heads=2, qk_layernorm=True)),
    # attention with the heads folded into the batch ([B*H, S, S]); ALiBi over positions counted along the mask
    "bloom": ("BloomConfig", dict(hidden_size=128, n_layer=2, n_head=4)),
    # the same folded attention; sinusoidal positions looked up at flattened [B*S] indices
    "xglm": ("XGLMConfig", dict(d_model=128, num_layers=2, attention_heads=4, ffn_dim=256)),
    # fused qkv_proj and gate_up_proj split in the graph
    "phi3": ("Phi3Config", dict(_S, num_key_value_heads=2, pad_token_id=0)),
    # layers without rotary (NoPE) between rotary ones
    "smollm3": ("SmolLM3Config", dict(_S, num_key_value_heads=2)),
    # per-head q/k RMSNorm, local and global layers with their own rotary bases
    "gemma3": ("Gemma3TextConfig", dict(_S, num_key_value_heads=2, head_dim=32, sliding_window=8)),
    # post-norm blocks (the norm after each sublayer, then the residual) and per-head q/k RMSNorm
    "exaone4": ("Exaone4Config", dict(_S, num_key_value_heads=2)),
    # LayerNorm without bias, parallel attention and MLP, rotary on interleaved pairs (dynamo: DYNAMO_FAMILIES)
    "cohere": ("CohereConfig", dict(_S, num_key_value_heads=2)),
    # partial rotary on interleaved pairs, fused gate_up_proj (dynamo)
    "glm": ("GlmConfig", dict(_S, num_key_value_heads=2)),
    # RMSNorm with epsilon 1e-8, which the dynamo exporter leaves out (dynamo)
    "helium": ("HeliumConfig", dict(_S, num_key_value_heads=2, head_dim=32)),
    # Llama's blocks with biased q/k/v and heads wider than hidden / heads
    "seed-oss": ("SeedOssConfig", dict(_S, num_key_value_heads=2, head_dim=32)),
    # OLMo-2's blocks with sliding-window layers
    "olmo3": ("Olmo3Config", dict(_S, num_key_value_heads=2, sliding_window=8)),
    # an ungated squared-ReLU MLP on Llama's blocks
    "arcee": ("ArceeConfig", dict(_S, num_key_value_heads=2)),
    # BERT with an optional task-type embedding (off by default)
    "ernie": ("ErnieConfig", _S),
    # Llama's blocks with rotary on interleaved pairs (dynamo: DYNAMO_FAMILIES)
    "ernie4_5": ("Ernie4_5Config", dict(_S, num_key_value_heads=2, head_dim=32)),
    # nomic-embed-text's blocks: BERT with rotary positions and a SwiGLU MLP, bias-free
    "nomic-bert": ("NomicBertConfig", _S),
    # StarCoder 1 / SantaCoder: GPT-2's blocks with one K/V head (multi-query) in a fused c_attn
    "gpt-bigcode": ("GPTBigCodeConfig", dict(n_embd=128, n_layer=2, n_head=4, n_inner=256, multi_query=True)),
    # pre-norm GPT with learned positions offset by 2 and embeddings scaled by sqrt(hidden)
    "biogpt": ("BioGptConfig", _S),
    # pre-norm BERT (LayerNorm before each sublayer, one after the last layer)
    "megatron-bert": ("MegatronBertConfig", _S),
    # pre-norm RoBERTa (XLM-R XL/XXL), positions counted past the padding
    "xlm-roberta-xl": ("XLMRobertaXLConfig", dict(_S, type_vocab_size=1)),
    # GLM-4: norms after the attention and MLP as well as before, partial interleaved rotary (dynamo)
    "glm4": ("Glm4Config", dict(_S, num_key_value_heads=2)),
    # Command R7B: LayerNorm without bias, sliding-window layers with rotary and a global one without (dynamo)
    "cohere2": ("Cohere2Config", dict(_S, num_key_value_heads=2, sliding_window=8)),
    # Ministral: Mistral's blocks with per-layer sliding or full attention
    "ministral": ("MinistralConfig", dict(_S, num_key_value_heads=2, head_dim=32, sliding_window=8,
                                          layer_types=["sliding_attention", "full_attention"])),
    # EmbeddingGemma: Gemma 3's blocks with bidirectional attention, symmetric sliding windows (dynamo: the
    # torchscript exporter fails on it)
    "gemma3-bidirectional": ("Gemma3TextConfig", dict(_S, num_key_value_heads=2, head_dim=32, sliding_window=8,
                                                      use_bidirectional_attention=True)),
    # HunYuan (dense): per-head q/k RMSNorm after the rotary, not before it
    "hunyuan-dense": ("HunYuanDenseV1Config", dict(_S, num_key_value_heads=2, head_dim=32)),
    # the causal ModernBERT (Ettin decoders): ModernBERT's blocks with a causal mask and local/global layers
    "modernbert-decoder": ("ModernBertDecoderConfig", dict(_S, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                           cls_token_id=3, sep_token_id=4)),
    # CLIP's text tower (also OpenCLIP's, Stable Diffusion's text encoder): pre-norm causal blocks, quick_gelu MLP
    "clip-text": ("CLIPTextConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4)),
}
BERT_FAMILY = ("roberta", "xlm-roberta", "distilbert", "electra", "albert")
# transformers implements only eager attention for these
NO_SDPA = ("mpt", "gemma2", "gemma2-softcap", "roformer", "gpt-neo", "bloom", "xglm", "megatron-bert")


# families whose Optimum export (transformers 4, as Optimum pins it) differs in form from transformers 5's: Falcon's
# one K/V head broadcast by the MatMuls, Gemma 2's embedding scale on a tensor whose shape is read too, Nemotron's
# Q and K scaled by sqrt(1 / sqrt(head_dim)) computed from a Shape, OLMo-2's, BLOOM's and ESM-2's own forms
OPTIMUM_FAMILIES = ("falcon", "gemma2", "nemotron", "olmo2", "bloom", "esm")


# families whose torchscript export runs only at the shape it was traced at (trtrun export refuses it so, naming
# the shape onnxruntime fails at: Cohere's, GLM's and ERNIE 4.5's interleaved rotary, Helium's attention
# reshapes): their files come from torch.onnx's dynamo exporter. (Mixtral and Qwen2-MoE have none at all: their expert routing fails
# both exporters, aten::histc and a dynamo conversion error.)
DYNAMO_FAMILIES = ("cohere", "glm", "helium", "ernie4_5", "glm4", "cohere2", "gemma3-bidirectional")
# the variant names of torch.onnx's exports: (attention transformers traces, exporter)
TORCH_ONNX_EXPORTS = {"eager": ("eager", "torchscript"), "sdpa": ("sdpa", "torchscript"),
                      "dynamo": ("eager", "dynamo"), "sdpa-dynamo": ("sdpa", "dynamo")}


def family_variants(arch: str) -> tuple:
    """The exports test_family_producers takes of FAMILY's `arch`."""
    if arch in BERT_FAMILY:
        return ("sdpa", "optimum-O2")
    if arch in DYNAMO_FAMILIES:
        return ("dynamo", "sdpa-dynamo")
    torch_onnx = ("eager",) if arch in NO_SDPA else ("eager", "sdpa")
    return torch_onnx + (("optimum",) if arch in OPTIMUM_FAMILIES else ())


def family_baseline(arch: str) -> str:
    """The export of FAMILY's `arch` that onnxruntime runs as the reference: torch.onnx with eager attention."""
    return "dynamo" if arch in DYNAMO_FAMILIES else "eager"


def family_dir(arch: str, dst, causal_lm: bool = False) -> Path:
    """A tiny random-weight `arch` of FAMILY as a Hugging Face folder (causal_lm: with its language-model head, as
    generation exporters take it)."""
    import torch
    import transformers

    from trtrun.export import _randomize

    cls, sizes = FAMILY[arch]
    torch.manual_seed(0)
    config = getattr(transformers, cls)(vocab_size=1000, **sizes)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # some defaults lie past a vocabulary of 1000
        if isinstance(getattr(config, key, None), int) and getattr(config, key) >= 1000:
            setattr(config, key, 0)
    auto = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
    model = auto.from_config(config, attn_implementation="eager") if causal_lm else auto.from_config(config)
    _randomize(torch, model, 0)
    return save_model_dir(model.float().eval(), dst)


def optimum_variants(arch: str) -> tuple:
    return OPTIMUM_VARIANTS[:1] if arch in OPTIMUM_NO_LEVELS else OPTIMUM_VARIANTS


def optimum_env() -> Path | None:
    """The folder scripts/optimum-env.sh installed Optimum into ($TRTRUN_OPTIMUM_ENV, else .optimum-env in the
    repository), if it is there and complete."""
    env = Path(os.environ.get("TRTRUN_OPTIMUM_ENV") or Path(__file__).resolve().parents[1] / ".optimum-env")
    marker = env / ".trtrun-pins"
    if marker.exists() and marker.read_text() == _OPTIMUM_PIN.read_text():
        return env
    return None


def _v4_config(model_dir) -> None:
    """Write the rotary settings of a transformers-5 config.json also where transformers 4 reads them (v5 keeps
    them in rope_parameters; v4 would take its defaults and build another model than the torch.onnx export)."""
    p = Path(model_dir) / "config.json"
    c = json.loads(p.read_text())
    rope = c.get("rope_parameters") or {}
    if "rope_theta" in rope:
        c.setdefault("rope_theta", rope["rope_theta"])
    if "partial_rotary_factor" in rope:
        c.setdefault("rotary_pct", rope["partial_rotary_factor"])
    for kind, key in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
        if "rope_theta" in rope.get(kind, {}):
            c.setdefault(key, rope[kind]["rope_theta"])
    p.write_text(json.dumps(c, indent=1))


def save_model_dir(model, dst) -> Path:
    """A torch model as the Hugging Face folder Optimum reads."""
    dst = Path(dst)
    model.save_pretrained(dst)
    _v4_config(dst)
    return dst


def _run_optimum(spec: dict, env: Path | None) -> None:
    env = env or optimum_env()
    if env is None:
        raise RuntimeError("Optimum's environment is missing: bash scripts/optimum-env.sh")
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(env), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("optimum_run.py")), json.dumps(spec)],
                       env=run_env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"Optimum's export of {spec['model']} failed:\n{r.stderr[-3000:]}")


def causal_lm_dir(arch: str, dst) -> Path:
    """The corpus model `arch` (seed 0) with a language-model head, as a Hugging Face folder: what Optimum's
    text-generation tasks export (the head's own weights are transformers' seeded initialization, or tied)."""
    import torch
    import transformers

    from trtrun.export import load_torch_model

    name, overrides = model_args(arch)
    base = load_torch_model(name, overrides=overrides, seed=0)
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(base.config, attn_implementation="eager")
    lm.base_model.load_state_dict(base.state_dict())
    return save_model_dir(lm.float().eval(), dst)


def optimum_export(model_dir, out_dir, levels=OPTIMUM_LEVELS, env: Path | None = None,
                   task: str = "feature-extraction") -> dict:
    """Optimum's export of a Hugging Face folder (and its ORTOptimizer levels): {variant: model.onnx path}.
    The library (transformers or sentence_transformers) is Optimum's own choice from the folder."""
    out_dir = Path(out_dir)
    _run_optimum({"model": str(model_dir), "out": str(out_dir), "levels": list(levels), "task": task}, env)
    return {"optimum": out_dir / "plain" / "model.onnx",
            **{f"optimum-{lv}": out_dir / lv / "model.onnx" for lv in levels}}


# sentence-transformers' own ONNX backend (through Optimum) and its dynamic int8 export for a CPU configuration
ST_ONNX_VARIANTS = ("st-onnx", "st-qint8-avx512_vnni")


def st_onnx_export(model_dir, out_dir, env: Path | None = None) -> dict:
    """sentence-transformers' ONNX files of a sentence-transformers folder: {variant: path}."""
    out_dir = Path(out_dir)
    configs = [v.split("st-qint8-")[1] for v in ST_ONNX_VARIANTS if v.startswith("st-qint8-")]
    _run_optimum({"model": str(model_dir), "out": str(out_dir), "sentence_transformers": configs}, env)
    onnx_dir = out_dir / "st" / "onnx"
    return {"st-onnx": onnx_dir / "model.onnx", **{f"st-qint8-{c}": onnx_dir / f"model_qint8_{c}.onnx" for c in configs}}


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
