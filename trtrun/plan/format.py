"""The plan format's constants: the file layout, the loader's limits, dtypes, op schemas and attributes, and the
names of what the GPU runtime's kernels run (each defined once here).

docs/plan-format.md is the contract. In short, a plan file is

    offset 0   8 bytes   magic b"TRTRUNPL"
           8   u32 LE    format version (1)
          12   u32 LE    reserved, 0
          16   u64 LE    header length H (bytes of UTF-8 JSON)
          24   u64 LE    blob length W
          32   H bytes   header JSON
               zero pad to a multiple of 256
               W bytes   weights blob (each weight at its `offset`, offsets multiples of 256)
               32 bytes  SHA-256 of every byte before it


Setting names (PRECISIONS, ...) live in trtrun.types; what validates against them imports them from there.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..types import OP_PRECISIONS, PLAN_PRECISIONS, PRECISIONS

MAGIC = b"TRTRUNPL"
FORMAT_VERSION = 6  # the newest this trtrun reads and writes; a plan is written at the version it needs
FP8_FORMAT_VERSION = 2  # fp8 ops and float8 weights: a trtrun that reads version 1 only says "newer", not "bad field"
# Attributes that change what an op computes and that a trtrun reading versions 1 and 2 would take for annotations
# (it tolerates unknown scalar attributes) and silently compute without: a plan using one is version 3, which such
# a trtrun refuses as newer. (attribute, its value that means "absent")
V3_ATTRS = (("softcap", None), ("residual_after", False), ("qk_norm_kind", "rms"), ("refused_id", None))
# Version 4: ops after the pooling (a classification head, a sentence-transformers Dense and Normalize): a Linear,
# LayerNorm or RMSNorm writing one vector a sample, the tanh activation, the Normalize op; a trtrun reading version 3
# refuses such a plan as newer rather than as a bad field
HEAD_FORMAT_VERSION = 4
# Version 5: a query/key norm after the rotary (HunYuan's; qk_norm_after_rotary) instead of before it: a trtrun
# reading version 4 would take the attribute for an annotation and normalize before rotating
V5_ATTRS = (("qk_norm_after_rotary", False),)
QK_AFTER_FORMAT_VERSION = 5
# Version 6: the Pool modes V6_POOL_MODES: the last token the mask keeps, or a token the token ids pick (POOL_ID_MODES:
# CLIP's end-of-text token, reading input_ids); a trtrun reading version 5 refuses such a plan as newer rather than
# as a bad field
POOL_MODES_FORMAT_VERSION = 6
FORMAT_NAME = "trtrun-plan"
ALIGN = 256
PREAMBLE = struct.Struct("<8sIIQQ")  # magic, version, reserved, header length, blob length: 32 bytes
TRAILER_BYTES = 32  # SHA-256
MIN_FILE_BYTES = 64  # preamble + trailer: nothing shorter can be a plan

# Bounds the loader enforces before it trusts a number (docs/plan-format.md, "Hostile plan files")
# real headers take ~5 KiB a layer (MiniLM's 29 KiB); json.loads may build ~25x a header's size in objects
MAX_HEADER_BYTES = 4 << 20
MAX_JSON_DEPTH = 64  # real headers nest 4 deep; json.loads recurses once a level
MAX_RANK = 8
INT32_MAX = 2 ** 31 - 1  # the runtime's int: profile values, inner dimensions, heads, offsets
MAX_WEIGHT_DIM = 2 ** 62  # weight dims, offsets, byte counts: int64 on the runtime's side
FLOAT32_MAX = float(np.finfo(np.float32).max)  # attributes are float32 in the kernels
READ_CHUNK = 1 << 20  # bytes hashed a read while streaming a file whose header did not validate

DTYPES = ("float32", "float16", "int64", "int32")
# fp8 Linear weights (docs/precision.md) are stored as float8_e4m3fn bytes; no activation tensor is fp8
FP8_DTYPE = "float8_e4m3fn"
WEIGHT_DTYPES = DTYPES + (FP8_DTYPE,)
FLOAT_DTYPES = ("float32", "float16")
INT_DTYPES = ("int64", "int32")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SYMBOLS = ("B", "S")
ACTIVATIONS = ("none", "gelu_erf", "gelu_tanh", "silu", "relu", "relu2", "quick_gelu", "tanh")

# Per op type: inputs (slot name, required), outputs (slot name, required), weight roles (role: required).
OP_SCHEMAS: dict[str, dict[str, Any]] = {
    "Embedding": {
        "inputs": (("input_ids", True), ("token_type_ids", False)),
        "outputs": (("y", True),),
        "weights": {"word": True, "position": False, "token_type": False, "gamma": False, "beta": False},
    },
    "Linear": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True),),
        # weight_scale ([N] or [1], float32) and x_scale ([1], float32, a static activation scale): fp8 only
        "weights": {"weight": True, "bias": False, "weight_scale": False, "x_scale": False},
    },
    "Attention": {
        "inputs": (("qkv", True), ("attention_mask", False)),
        "outputs": (("y", True),),
        "weights": {"inv_freq": False, "relative_bias": False, "alibi_slopes": False, "q_norm": False, "k_norm": False,
                    "q_norm_bias": False, "k_norm_bias": False},
    },
    "LayerNorm": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True), ("sum", False)),
        "weights": {"gamma": True, "beta": True},
    },
    "Pool": {
        "inputs": (("x", True), ("attention_mask", False), ("input_ids", False)),
        "outputs": (("y", True),),
        "weights": {},
    },
    "RMSNorm": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True), ("sum", False)),
        "weights": {"gamma": True},
    },
    "Normalize": {
        "inputs": (("x", True),),
        "outputs": (("y", True),),
        "weights": {},
    },
}
# first: the first token the mask keeps (cls where rows are right-padded); last: the last one (sentence-transformers'
# last-token pooling: e5-mistral, gte-Qwen2, Qwen3-Embedding); token: the first token whose id is the op's token_id
# (CLIP's end-of-text token), max_id: the first token of the row's largest id (CLIP's older exports, whose
# end-of-text id is the vocabulary's last)
POOL_ID_MODES = ("token", "max_id")
V6_POOL_MODES = ("last",) + POOL_ID_MODES
POOL_MODES = ("mean", "cls", "first") + V6_POOL_MODES
# ops that may write one vector a sample, [B, N] (a tensor without the sequence axis): Pool, and the row ops that
# may follow it (a classification head: BERT's pooler, RoBERTa's and ModernBERT's heads; a sentence-transformers Dense
# and Normalize)
SENTENCE_OPS = ("Pool", "Linear", "LayerNorm", "RMSNorm", "Normalize")
OP_TYPES = tuple(OP_SCHEMAS)

HEADER_KEYS = ("format", "version", "precision", "tf32", "profile", "source", "model", "inputs", "outputs",
               "tensors", "weights", "ops", "builder")
OP_KEYS = ("type", "name", "inputs", "outputs", "weights", "attrs", "precision")
MODEL_INTS = ("hidden", "num_heads", "num_layers", "vocab_size", "max_position")
ARCHS = ("encoder", "decoder")
# What the runtime reads from each op's attrs. Other attributes (e.g. the builder's `source_activation`)
# are annotations nothing reads: tolerated when they are plain JSON scalars.
OP_ATTRS = {
    "Embedding": ("epsilon", "position_offset", "padding_id", "mask_positions", "refused_id"),
    "Linear": ("activation", "gated"),
    "Attention": ("num_heads", "head_size", "scale", "causal", "num_kv_heads", "rotary_dim", "rotary_scale",
                  "relative_max_distance", "relative_bidirectional", "alibi_symmetric", "mask_positions", "window",
                  "qk_norm_epsilon", "qk_norm_kind", "qk_norm_after_rotary", "softcap"),
    "LayerNorm": ("epsilon", "residual_after"),
    "Pool": ("mode", "normalize", "token_id"),
    "RMSNorm": ("epsilon", "residual_after"),
    "Normalize": ("epsilon",),
}
# Graph inputs an op slot may read, where the slot indexes a table or masks (checked at run time by
# Plan.check_feeds against exactly these tables and values)
OP_INPUT_NAMES = {
    ("Embedding", 0): ("input_ids",),
    ("Embedding", 1): ("token_type_ids",),
    ("Attention", 1): ("attention_mask",),
    ("Pool", 1): ("attention_mask",),
    ("Pool", 2): ("input_ids",),
}
# header.source.weights: the dtype the source file stored its weights in, where not float32
SOURCE_WEIGHTS = ("float16", "int8", "int4")

# What the GPU runtime's kernels run, by the plan's own names: the extension parses them (native/core/types.cpp,
# which keeps each name's integer value); trtrun.runtime.lower refuses anything else by name before the extension
# is asked.
GPU_OP_TYPES = ("Embedding", "Linear", "Attention", "LayerNorm", "RMSNorm")  # Pool: on the host (runtime.tail)
# silu, relu, squared ReLU, quick_gelu and gates in native/kernels/epilogue
GPU_ACTIVATIONS = ("none", "gelu_erf", "gelu_tanh", "silu", "relu", "relu2", "quick_gelu")
GPU_PRECISIONS = OP_PRECISIONS  # fp8 Linears through cuBLASLt's fp8 GEMMs (native/kernels/quantize makes x's codes)
GPU_PLAN_PRECISIONS = PLAN_PRECISIONS  # "mixed" too: each Linear runs in its own op's precision
DEVICE_DTYPES = {"int64": "int32"}  # a tensor's dtype on the device, where not its plan dtype: integer inputs


def np_dtype(name: str) -> np.dtype:
    """numpy's little-endian dtype for a plan dtype name (float8_e4m3fn from ml_dtypes, which numpy lacks)."""
    if name == FP8_DTYPE:
        import ml_dtypes

        return np.dtype(ml_dtypes.float8_e4m3fn)
    return np.dtype(name).newbyteorder("<")


def _after_pooling(op: dict, tensors) -> bool:
    """A version-4 op: Normalize, a tanh activation, a Pool of mode first, or a non-Pool op writing a rank-2 tensor
    ([B, N] one vector a sample; [B, S] a single-column Linear's squeezed scores)."""
    attrs = op.get("attrs") if isinstance(op.get("attrs"), dict) else {}
    if op.get("type") == "Normalize" or attrs.get("activation") == "tanh" or attrs.get("mode") == "first":
        return True
    outs = op.get("outputs")
    if op.get("type") == "Pool" or not isinstance(outs, list) or not outs or not isinstance(tensors, dict):
        return False
    t = tensors.get(outs[0]) if isinstance(outs[0], str) else None
    shape = t.get("shape") if isinstance(t, dict) else None
    return isinstance(shape, list) and len(shape) == 2 and shape[0] == "B"  # [B, N], or a squeezed [B, S] column


def required_version(header) -> int:
    """The format version a header needs: 6 with a Pool of V6_POOL_MODES, else 5 with an attribute of V5_ATTRS, else
    4 with an op after the pooling (_after_pooling), else 3 with an attribute of V3_ATTRS, else 2 with an fp8 op or a
    float8 weight, else 1 (older trtruns read those). Defensive: the header may be a hostile file's, not yet
    validated."""
    ops = header.get("ops") if isinstance(header, dict) else None
    weights = header.get("weights") if isinstance(header, dict) else None
    tensors = header.get("tensors") if isinstance(header, dict) else None

    def uses(attrs) -> bool:
        return isinstance(ops, list) and any(isinstance(o, dict) and isinstance(o.get("attrs"), dict) and
                                             o["attrs"].get(a, absent) != absent for o in ops for a, absent in attrs)

    if isinstance(ops, list) and any(isinstance(o, dict) and o.get("type") == "Pool" and isinstance(o.get("attrs"), dict)
                                     and o["attrs"].get("mode") in V6_POOL_MODES for o in ops):
        return POOL_MODES_FORMAT_VERSION
    if uses(V5_ATTRS):
        return QK_AFTER_FORMAT_VERSION
    if isinstance(ops, list) and any(isinstance(o, dict) and _after_pooling(o, tensors) for o in ops):
        return HEAD_FORMAT_VERSION
    if uses(V3_ATTRS):
        return 3
    fp8 = isinstance(ops, list) and any(isinstance(o, dict) and o.get("precision") == "fp8" for o in ops)
    fp8 = fp8 or (isinstance(weights, dict) and any(isinstance(e, dict) and e.get("dtype") == FP8_DTYPE
                                                    for e in weights.values()))
    return FP8_FORMAT_VERSION if fp8 else 1


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def json_default(o):
    # Builders naturally hand us numpy scalars and tuples; JSON gets plain Python values.
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
