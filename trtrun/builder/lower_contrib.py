"""Lower onnxruntime's com.microsoft fused ops into standard ONNX ops, checked against onnxruntime.

onnxruntime's transformer optimizer (`onnxruntime.transformers.optimizer.optimize_model`, and Hugging
Face Optimum's O1-O4 levels, which call it) rewrites a BERT or GPT-2 graph into fused contrib ops. Each one
is written back here as the standard-op spelling an exporter would have produced, which the fusion passes
then turn into the same IR ops (and the same kernels and precision rules) as a plain export:

    SkipLayerNormalization(x, skip, gamma, beta?, bias?)  -> LayerNorm(x + bias + skip)  (+ the sum output)
    EmbedLayerNormalization(ids, seg?, word, pos, seg_t?, gamma, beta, mask?, pos_ids?)
                                                         -> Gather + Gather + Gather, Add, LayerNorm
    Attention(x, W, bias?, mask_index?)                   -> MatMul + bias, Split, heads, Softmax, MatMul
    MultiHeadAttention(q, k, v, bias?, key_padding_mask?) (or packed QKV [B,S,H,3,D]) -> the same
    GroupQueryAttention(qkv or q, k, v, empty cache, ..., cos_cache, sin_cache) (onnxruntime-genai's decoders)
                                                         -> heads, rotary, K/V heads expanded, causal + padding masks
    BiasGelu, Gelu, FastGelu, GemmFastGelu, BiasAdd, FusedMatMul -> their elementwise formulas
    SimplifiedLayerNormalization(x, gamma), SkipSimplifiedLayerNormalization(x, skip, gamma, bias?)
                                                         -> RMSNorm (of x + bias + skip, + the sum output)
    LayerNormalization below opset 17                     -> the LayerNorm decomposition
    QuickGelu with alpha 1 or 1.702                       -> x * Sigmoid(alpha * x) (silu, CLIP's quick_gelu)

ONNX's own Attention (opset 23 and later: torch's dynamo exporter writes it for scaled_dot_product_attention
when asked for opset 23 or newer) is lowered the same way, in the form torch's TorchScript exporter gives
SDPA: MatMul(Q, K^T) * scale, a boolean mask as Where(mask, 0, float32's lowest) added (a float mask added as it is),
is_causal as the causal Where, Softmax, MatMul V; 3-D inputs through their heads. Q and K/V of different head
counts, softcap, a KV cache and the qk_matmul output are refused by name; so is ONNX's RotaryEmbedding.

SimplifiedLayerNormalization and (below opset 17) LayerNormalization are onnxruntime ops it registers in the
ONNX domain; load_model lets them through its check, and they are lowered here with the com.microsoft ones.

Semantics follow onnxruntime's contrib-op schemas: SkipLayerNormalization's epsilon defaults to 1e-12,
Attention's scale to 1/sqrt(head size) and its mask_filter_value to -10000; `unidirectional=1` is a causal
mask. Attention masks: a raw [batch, keys] 0/1 mask, or the 1-D key lengths EmbedLayerNormalization
computes from its mask input, or that ReduceSum counts from a raw mask (then the raw mask is used: for right-padded batches, the only ones onnxruntime's
key lengths describe, the two agree; for others trtrun follows the original model's padding mask).

Confirmed by values: onnxruntime runs the graph before and after the rewrite on the probe inputs, and
every rewritten node's outputs must agree (probe.agree) on the batch rows whose mask is right-padded (all
rows when no key-length mask is involved). Forms the IR cannot express (past state, attention bias,
rotary, QuickGelu's sigmoid with another alpha, cross-attention, 3-D masks) stop the build with an
UnsupportedOpError naming the node and what is unsupported.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BuildError, UnsupportedOpError
from ..reference import QUICK_GELU_ALPHA
from . import _graph as G
from .load import is_ort_onnx_op
from .probe import agree, make_feeds, run_graph

DOMAIN = "com.microsoft"
_MASK_FILTER = -10000.0
_LOWEST = np.finfo(np.float32).min
# what each refused op is, for its one-line error
_REFUSED = {
    "RotaryEmbedding": "rotary position embeddings are not in the IR",
    "BiasSplitGelu": "a split-GELU gate is not an IR activation",
}


class _Refuse(Exception):
    pass


def _onnx_fused(n, opset) -> bool:
    """One of ONNX's own fused ops (not onnxruntime's), which this pass lowers too."""
    return (n.domain or "") in ("", "ai.onnx") and n.op in _ONNX_LOWER and not is_ort_onnx_op(n, opset)


def _where(n, opset) -> str:
    return "ONNX domain" if _onnx_fused(n, opset) else f"domain {n.domain or DOMAIN!r}"


def _lowering(n, opset):
    return _ONNX_LOWER[n.op] if _onnx_fused(n, opset) else _LOWER[n.op]


def lower_contrib(graph) -> dict:
    """Rewrite every com.microsoft node (and ONNX's own fused ops); returns {op type: count} of what was lowered."""
    nodes = [n for n in graph.nodes if n.domain == DOMAIN or is_ort_onnx_op(n, graph.opset)
             or _onnx_fused(n, graph.opset)]
    if not nodes:
        return {}
    for n in nodes:
        if n.op not in _LOWER and not _onnx_fused(n, graph.opset):
            why = _REFUSED.get(n.op, "an onnxruntime contrib op trtrun does not lower")
            raise UnsupportedOpError(n.op, n.name, f"{_where(n, graph.opset)}: {why}")
    for n in nodes:  # what attributes and inputs alone refuse, before onnxruntime runs anything
        try:
            if not _onnx_fused(n, graph.opset):
                _static_refusal(n)
            elif n.op == "RotaryEmbedding":
                raise _Refuse("ONNX's RotaryEmbedding is not lowered yet (torch's dynamo exporter writes it at opset "
                              "23 and later): export at opset 18-22 (`trtrun export --exporter dynamo` uses 18), "
                              "where the rotary is spelled out")
        except _Refuse as e:
            raise UnsupportedOpError(n.op, n.name, f"{_where(n, graph.opset)}: {e}") from None
    opset = graph.opset
    feeds = make_feeds(graph)
    # their inputs and outputs, and the inputs of what computes their inputs (a mask's source)
    around = [t for n in nodes for t in list(n.inputs) + list(n.outputs)]
    around += [i for t in list(around) if G.producer(t) is not None for i in G.producer(t).inputs]
    watch = {t.name for t in around if not t.is_empty() and G.const_value(t) is None}
    before = list(run_graph(graph, feeds, sorted(watch)))
    ctx = _Ctx(graph, before, int(opset))
    counts: dict[str, int] = {}
    checks = []
    for n in nodes:
        try:
            outs = _lowering(n, opset)(ctx, n)
        except _Refuse as e:
            raise UnsupportedOpError(n.op, n.name, f"{_where(n, opset)}: {e}") from None
        checks.append((n, outs))
        key = f"ONNX {n.op}" if _onnx_fused(n, opset) else n.op
        counts[key] = counts.get(key, 0) + 1
    G.finish(graph)
    _check(graph, feeds, before, checks, ctx.right_padded_only)
    return counts


def _static_refusal(n):
    if n.op == "Attention":
        for i, what in ((4, "past state"), (5, "attention_bias"), (6, "past_sequence_length")):
            if _present(n, i) is not None:
                raise _Refuse(f"its {what} input is not supported (IR attention: padding/causal masks, no cache)")
        if int(n.attrs.get("do_rotary", 0)):
            raise _Refuse("do_rotary=1: rotary position embeddings are not in the IR")
        sizes = list(n.attrs.get("qkv_hidden_sizes", []) or [])
        if sizes and len(set(sizes)) != 1:
            raise _Refuse(f"qkv_hidden_sizes {sizes}: query, key and value of different widths are not in the IR")
    elif n.op == "GroupQueryAttention":
        _gqa_refusal(n)
    elif n.op == "MultiHeadAttention":
        if any(_present(n, i) is not None for i in range(5, len(n.inputs))):
            raise _Refuse("attention_bias, past state and cache inputs are not supported "
                          "(IR attention: padding/causal masks, no cache)")


# ---------------------------------------------------------------------- helpers
class _Ctx:
    def __init__(self, graph, values, opset):
        self.graph = graph
        self.values = values  # onnxruntime's values before the rewrite, one dict per probe
        self.opset = opset
        self.key_length_masks = {}  # EmbedLayerNormalization mask_index tensor name -> raw mask tensor
        self.right_padded_only = False

    def rank(self, t) -> int:
        c = G.const_value(t)
        return c.ndim if c is not None else self.values[0][t.name].ndim

    def shape(self, t):
        c = G.const_value(t)
        return c.shape if c is not None else self.values[0][t.name].shape

    def const(self, name, values):
        return G.new_constant(self.graph, name, np.asarray(values))

    def op(self, op, name, inputs, out=None, attrs=None, dtype=np.float32):
        """Append a standard node; `out` is the tensor it writes (a new Variable if None)."""
        if out is None:
            out = G.new_variable(self.graph, name + "_out", dtype)
        node = G.gs().Node(op, G.unique_name(self.graph, name), attrs=dict(attrs or {}), inputs=list(inputs),
                           outputs=[out])
        self.graph.nodes.append(node)
        return out


def _present(node, i):
    return node.inputs[i] if i < len(node.inputs) and not node.inputs[i].is_empty() else None


def _take_outputs(ctx, node):
    """Detach node's outputs (the lowering writes them) and return them."""
    outs = list(node.outputs)
    node.outputs.clear()
    node.inputs.clear()
    return outs


def _float_const(ctx, name, v):
    return ctx.const(name, np.asarray(v, np.float32))


def _add(ctx, name, a, b, out=None):
    return ctx.op("Add", name, [a, b], out)


def _layernorm(ctx, name, x, gamma, beta, eps, out):
    """LayerNormalization (opset >= 17) or the decomposition fuse_layernorm recognizes."""
    N = ctx.shape(gamma)[-1]
    if beta is None:
        beta = _float_const(ctx, name + ".beta", np.zeros(N, np.float32))
    if ctx.opset >= 17:
        return ctx.op("LayerNormalization", name, [x, gamma, beta], out, {"axis": -1, "epsilon": float(eps)})
    mean = ctx.op("ReduceMean", name + ".mean", [x], attrs={"axes": [-1], "keepdims": 1})
    d = ctx.op("Sub", name + ".sub", [x, mean])
    sq = ctx.op("Mul", name + ".sq", [d, d])
    var = ctx.op("ReduceMean", name + ".var", [sq], attrs={"axes": [-1], "keepdims": 1})
    std = ctx.op("Sqrt", name + ".sqrt", [ctx.op("Add", name + ".eps", [var, _float_const(ctx, name + ".epsilon",
                                                                                     np.float32(eps))])])
    n = ctx.op("Div", name + ".div", [d, std])
    g = ctx.op("Mul", name + ".gamma", [n, gamma])
    return ctx.op("Add", name + ".beta", [g, beta], out)


def _gelu(ctx, name, x, form, out):
    """GELU in the elementwise spelling fuse_linear recognizes (erf or tanh form)."""
    if form == "erf":
        z = ctx.op("Div", name + ".div", [x, _float_const(ctx, name + ".sqrt2", np.float32(math.sqrt(2.0)))])
        e = ctx.op("Erf", name + ".erf", [z])
    else:
        x3 = ctx.op("Mul", name + ".x2", [x, x])
        x3 = ctx.op("Mul", name + ".x3", [x3, x])
        inner = ctx.op("Mul", name + ".c3", [x3, _float_const(ctx, name + ".k", np.float32(0.044715))])
        inner = ctx.op("Add", name + ".sum", [x, inner])
        inner = ctx.op("Mul", name + ".c", [inner, _float_const(ctx, name + ".a",
                                                                 np.float32(math.sqrt(2.0 / math.pi)))])
        e = ctx.op("Tanh", name + ".tanh", [inner])
    one = ctx.op("Add", name + ".one", [e, _float_const(ctx, name + ".1", np.float32(1.0))])
    h = ctx.op("Mul", name + ".x", [x, one])
    return ctx.op("Mul", name + ".half", [h, _float_const(ctx, name + ".05", np.float32(0.5))], out)


def _rmsnorm(ctx, name, x, gamma, eps, out):
    """The RMSNorm decomposition fuse_rmsnorm recognizes: x / sqrt(mean(x * x) + eps) * gamma."""
    sq = ctx.op("Mul", name + ".sq", [x, x])
    ms = ctx.op("ReduceMean", name + ".ms", [sq], attrs={"axes": [-1], "keepdims": 1}) if ctx.opset < 18 else \
        ctx.op("ReduceMean", name + ".ms", [sq, ctx.const(name + ".axes", np.array([-1], np.int64))],
               attrs={"keepdims": 1})
    r = ctx.op("Sqrt", name + ".sqrt", [ctx.op("Add", name + ".eps", [ms, _float_const(ctx, name + ".epsilon",
                                                                                     np.float32(eps))])])
    return ctx.op("Mul", name + ".gamma", [ctx.op("Div", name + ".div", [x, r]), gamma], out)


def _need_unused(node, names_idx: dict):
    for i, what in names_idx.items():
        if i < len(node.outputs) and not node.outputs[i].is_empty() and node.outputs[i].outputs:
            raise _Refuse(f"its {what} output is used")


# ---------------------------------------------------------------------- the ops
def _skip_norm(rms: bool):
    """SkipLayerNormalization(x, skip, gamma, beta?, bias?) -> LayerNorm(x + bias + skip), or with rms
    SkipSimplifiedLayerNormalization(x, skip, gamma, bias?) -> RMSNorm(x + bias + skip); the sum is output 3."""
    def lower(ctx, n):
        x, skip, gamma = n.inputs[0], n.inputs[1], n.inputs[2]
        beta, bias = (None, _present(n, 3)) if rms else (_present(n, 3), _present(n, 4))
        _need_unused(n, {1: "mean", 2: "inv_std_var"})
        if ctx.shape(skip) != ctx.shape(x):
            raise _Refuse(f"a skip input of shape {list(ctx.shape(skip))} broadcast over the input "
                          f"{list(ctx.shape(x))} is not a residual")
        eps = float(n.attrs.get("epsilon", 1e-12))
        outs = _take_outputs(ctx, n)
        name = n.name or ("skip_simplified_layernorm" if rms else "skip_layernorm")
        if bias is not None:
            x = _add(ctx, name + ".bias", x, bias)
        s_out = outs[3] if len(outs) > 3 and not outs[3].is_empty() else None
        s = _add(ctx, name + ".skip", x, skip, s_out)
        if rms:
            _rmsnorm(ctx, name, s, gamma, eps, outs[0])
        else:
            _layernorm(ctx, name, s, gamma, beta, eps, outs[0])
        return [outs[0]] + ([s_out] if s_out is not None else [])
    return lower


def _simplified_layernorm(ctx, n):
    """SimplifiedLayerNormalization(x, gamma): RMSNorm over the last axis (onnxruntime registers it in the
    ONNX domain). Its statistics outputs must be unused."""
    x, gamma = n.inputs[0], n.inputs[1]
    _need_unused(n, {1: "inv_std_var"})
    if int(n.attrs.get("axis", -1)) not in (-1, ctx.rank(x) - 1):
        raise _Refuse(f"axis {n.attrs.get('axis')}: only the last axis is an IR RMSNorm")
    outs = _take_outputs(ctx, n)
    _rmsnorm(ctx, n.name or "simplified_layernorm", x, gamma, float(n.attrs.get("epsilon", 1e-5)), outs[0])
    return [outs[0]]


def _layernorm_op(ctx, n):
    """LayerNormalization below opset 17, as onnxruntime registers it in the ONNX domain: the same formula as
    ONNX's, with its statistics outputs unused."""
    x, gamma, beta = n.inputs[0], n.inputs[1], _present(n, 2)
    _need_unused(n, {1: "mean", 2: "inv_std_var"})
    if int(n.attrs.get("axis", -1)) not in (-1, ctx.rank(x) - 1):
        raise _Refuse(f"axis {n.attrs.get('axis')}: only the last axis is an IR LayerNorm")
    outs = _take_outputs(ctx, n)
    _layernorm(ctx, n.name or "layernorm", x, gamma, beta, float(n.attrs.get("epsilon", 1e-5)), outs[0])
    return [outs[0]]


def _quick_gelu(ctx, n):
    """QuickGelu(x) = x * sigmoid(alpha * x). onnxruntime's optimizer writes it with alpha 1 for SiLU (Llama's
    MLP) and with CLIP's 1.702 (quick_gelu): both IR activations, which fuse_linear reads off the rewrite."""
    alpha = np.float32(n.attrs.get("alpha", 1.702))  # a float attribute: float32 in the file
    x = n.inputs[0]
    name = n.name or "quick_gelu"
    if alpha == np.float32(1.0):
        z = x
    elif alpha == np.float32(QUICK_GELU_ALPHA):
        z = ctx.op("Mul", name + ".alpha", [x, _float_const(ctx, name + ".a", alpha)])
    else:
        raise _Refuse(f"alpha {float(alpha):g}: x * sigmoid(alpha * x) is an IR activation only for alpha 1 (silu) "
                      f"and 1.702 (quick_gelu)")
    outs = _take_outputs(ctx, n)
    ctx.op("Mul", name + ".act", [x, ctx.op("Sigmoid", name + ".sigmoid", [z])], outs[0])
    return [outs[0]]


def _embed_layernorm(ctx, n):
    ids, seg = n.inputs[0], _present(n, 1)
    word, pos, seg_t = n.inputs[2], n.inputs[3], _present(n, 4)
    gamma, beta = n.inputs[5], n.inputs[6]
    mask, pos_ids = _present(n, 7), _present(n, 8)
    _need_unused(n, {2: "embedding_sum"})
    eps = float(n.attrs.get("epsilon", 1e-12))
    outs = _take_outputs(ctx, n)
    name = n.name or "embed_layernorm"
    if len(outs) > 1 and not outs[1].is_empty() and outs[1].outputs:
        if mask is None:
            raise _Refuse("a mask_index output without a mask input")
        ctx.key_length_masks[outs[1].name] = mask
    if pos_ids is None:
        shape = ctx.op("Shape", name + ".shape", [ids], dtype=np.int64)
        S = ctx.op("Gather", name + ".seq", [shape, ctx.const(name + ".axis1", np.int64(1))], attrs={"axis": 0},
                   dtype=np.int64)
        pos_ids = ctx.op("Range", name + ".positions", [ctx.const(name + ".zero", np.int64(0)), S,
                                                         ctx.const(name + ".step", np.int64(1))], dtype=np.int64)
    e = ctx.op("Gather", name + ".word", [word, ids], attrs={"axis": 0})
    e = _add(ctx, name + ".add_position", e, ctx.op("Gather", name + ".position", [pos, pos_ids], attrs={"axis": 0}))
    if seg_t is not None:
        if seg is None:
            raise _Refuse("a segment table without segment ids")
        e = _add(ctx, name + ".add_segment", e, ctx.op("Gather", name + ".segment", [seg_t, seg], attrs={"axis": 0}))
    _layernorm(ctx, name + ".layernorm", e, gamma, beta, eps, outs[0])
    return [outs[0]]


def _additive_mask(ctx, name, logits, mask, filter_value):
    """logits + (1 - mask) * filter over keys, mask a raw [B, S] 0/1 tensor."""
    m = ctx.op("Cast", name + ".mask_float", [mask], attrs={"to": 1})
    m = ctx.op("Sub", name + ".mask_inv", [_float_const(ctx, name + ".one", np.float32(1.0)), m])
    m = ctx.op("Mul", name + ".mask_fill", [m, _float_const(ctx, name + ".filter", np.float32(filter_value))])
    m = ctx.op("Unsqueeze", name + ".mask_4d", [m, ctx.const(name + ".mask_axes", np.array([1, 2], np.int64))])
    return _add(ctx, name + ".masked", logits, m)


def _causal(ctx, name, logits, ids_like, filter_value):
    """Where(j <= i, logits, filter): the causal mask, built from the sequence length only."""
    shape = ctx.op("Shape", name + ".shape", [ids_like], dtype=np.int64)
    S = ctx.op("Gather", name + ".seq", [shape, ctx.const(name + ".axis1", np.int64(1))], attrs={"axis": 0},
               dtype=np.int64)
    r = ctx.op("Range", name + ".range", [ctx.const(name + ".zero", np.int64(0)), S,
                                           ctx.const(name + ".step", np.int64(1))], dtype=np.int64)
    rows = ctx.op("Unsqueeze", name + ".rows", [r, ctx.const(name + ".axis", np.array([1], np.int64))],
                  dtype=np.int64)
    allowed = ctx.op("LessOrEqual", name + ".allowed", [r, rows], dtype=np.bool_)
    return ctx.op("Where", name + ".causal", [allowed, logits, _float_const(ctx, name + ".fill",
                                                                            np.float32(filter_value))])


def _mask_tensor(ctx, n, mask):
    """The raw [B, S] mask an attention mask input stands for (None: no mask)."""
    if mask is None:
        return None
    if mask.name in ctx.key_length_masks:
        ctx.right_padded_only = True
        return ctx.key_length_masks[mask.name]
    r = ctx.rank(mask)
    if r == 2:
        return mask
    p = G.producer(mask)
    if r == 1 and p is not None and p.op == "ReduceSum" and ctx.rank(p.inputs[0]) == 2 and \
            int(p.attrs.get("keepdims", 1)) == 0 and _reduce_axes(p) in ([1], [-1]):
        ctx.right_padded_only = True  # key lengths counted from a raw mask: see the module docstring
        return p.inputs[0]
    if r == 1:
        raise _Refuse("a 1-D mask_index (key lengths or start/end positions) that EmbedLayerNormalization did "
                      "not compute from a mask is not supported; use a raw [batch, sequence] mask "
                      "(FusionOptions.use_raw_attention_mask)")
    raise _Refuse(f"a {r}-D attention mask is not supported (IR: padding [batch, keys] and causal)")


def _reduce_axes(node):
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        v = G.const_value(node.inputs[1])
        axes = None if v is None else v.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def _heads(ctx, name, t, H, D, perm):
    r = ctx.op("Reshape", name + ".heads", [t, ctx.const(name + ".shape", np.array([0, 0, H, D], np.int64))])
    return ctx.op("Transpose", name + ".perm", [r], attrs={"perm": perm})


def _attention_core(ctx, n, name, q, k, v, H, D, scale, mask, causal, filter_value, out, ids_like, packed=False):
    if packed:  # q, k, v already [B, S, H, D]
        q4 = ctx.op("Transpose", name + ".q.perm", [q], attrs={"perm": [0, 2, 1, 3]})
        kt = ctx.op("Transpose", name + ".k.perm", [k], attrs={"perm": [0, 2, 3, 1]})
        v4 = ctx.op("Transpose", name + ".v.perm", [v], attrs={"perm": [0, 2, 1, 3]})
    else:
        q4 = _heads(ctx, name + ".q", q, H, D, [0, 2, 1, 3])
        kt = _heads(ctx, name + ".k", k, H, D, [0, 2, 3, 1])
        v4 = _heads(ctx, name + ".v", v, H, D, [0, 2, 1, 3])
    s = ctx.op("MatMul", name + ".scores", [q4, kt])
    s = ctx.op("Mul", name + ".scale", [s, _float_const(ctx, name + ".scale_value", np.float32(scale))])
    if mask is not None:
        s = _additive_mask(ctx, name, s, mask, filter_value)
    if causal:
        s = _causal(ctx, name, s, ids_like, filter_value)
    p = ctx.op("Softmax", name + ".softmax", [s], attrs={"axis": -1})
    o = ctx.op("MatMul", name + ".context", [p, v4])
    o = ctx.op("Transpose", name + ".context.perm", [o], attrs={"perm": [0, 2, 1, 3]})
    return ctx.op("Reshape", name + ".merge", [o, ctx.const(name + ".merge_shape", np.array([0, 0, H * D], np.int64))],
                  out)


def _ids_input(ctx):
    return next(i for i in ctx.graph.inputs if i.name == "input_ids")


def _attention(ctx, n):
    x, W = n.inputs[0], n.inputs[1]
    bias, mask = _present(n, 2), _present(n, 3)
    for i, what in ((4, "past state"), (5, "attention_bias"), (6, "past_sequence_length")):
        if _present(n, i) is not None:
            raise _Refuse(f"its {what} input is not supported (IR attention: padding/causal masks, no cache)")
    _need_unused(n, {1: "present"})
    if int(n.attrs.get("do_rotary", 0)):
        raise _Refuse("do_rotary=1: rotary position embeddings are not in the IR")
    H = int(n.attrs["num_heads"])
    Wv = G.const_value(W)
    if Wv is None or Wv.ndim != 2:
        raise _Refuse("its weights are not a constant [in, 3 * hidden] matrix")
    sizes = list(n.attrs.get("qkv_hidden_sizes", []) or [])
    if sizes and len(set(sizes)) != 1:
        raise _Refuse(f"qkv_hidden_sizes {sizes}: query, key and value of different widths are not in the IR")
    if Wv.shape[1] % 3 or (Wv.shape[1] // 3) % H:
        raise _Refuse(f"weights of width {Wv.shape[1]} are not 3 x num_heads ({H}) x head size")
    HD = Wv.shape[1] // 3
    D = HD // H
    scale = float(n.attrs.get("scale", 0.0)) or 1.0 / math.sqrt(D)
    raw = _mask_tensor(ctx, n, mask)
    filt = float(n.attrs.get("mask_filter_value", _MASK_FILTER))
    outs = _take_outputs(ctx, n)
    name = n.name or "attention"
    qkv = ctx.op("MatMul", name + ".qkv", [x, W])
    if bias is not None:
        qkv = _add(ctx, name + ".qkv_bias", qkv, bias)
    split = [G.new_variable(ctx.graph, f"{name}.{p}") for p in "qkv"]
    ctx.graph.nodes.append(G.gs().Node("Split", G.unique_name(ctx.graph, name + ".split"), attrs={"axis": -1},
                                       inputs=[qkv, ctx.const(name + ".split_sizes", np.array([HD] * 3, np.int64))],
                                       outputs=split))
    _attention_core(ctx, n, name, *split, H, D, scale, raw, bool(int(n.attrs.get("unidirectional", 0))), filt,
                    outs[0], _ids_input(ctx))
    return [outs[0]]


def _multihead_attention(ctx, n):
    q, k, v = n.inputs[0], _present(n, 1), _present(n, 2)
    bias, mask = _present(n, 3), _present(n, 4)
    for i in range(5, len(n.inputs)):
        if _present(n, i) is not None:
            raise _Refuse("attention_bias, past state and cache inputs are not supported "
                          "(IR attention: padding/causal masks, no cache)")
    _need_unused(n, {1: "present_key", 2: "present_value", 3: "qk"})
    H = int(n.attrs["num_heads"])
    raw = _mask_tensor(ctx, n, mask)
    filt = float(n.attrs.get("mask_filter_value", _MASK_FILTER))
    causal = bool(int(n.attrs.get("unidirectional", 0)))
    name = n.name or "multihead_attention"
    if ctx.rank(q) == 5 and k is None and v is None:  # packed QKV [B, S, H, 3, D]
        if bias is not None:
            raise _Refuse("a bias with packed QKV is not supported")
        D = ctx.shape(q)[-1]
        scale = float(n.attrs.get("scale", 0.0)) or 1.0 / math.sqrt(D)
        outs = _take_outputs(ctx, n)
        parts = [G.new_variable(ctx.graph, f"{name}.{p}5") for p in "qkv"]
        ctx.graph.nodes.append(G.gs().Node("Split", G.unique_name(ctx.graph, name + ".split"), attrs={"axis": 3},
                                           inputs=[q, ctx.const(name + ".split_sizes", np.ones(3, np.int64))],
                                           outputs=parts))
        sq = [ctx.op("Squeeze", f"{name}.{p}", [t, ctx.const(f"{name}.{p}.axis", np.array([3], np.int64))])
              for p, t in zip("qkv", parts)]
        _attention_core(ctx, n, name, *sq, H, D, scale, raw, causal, filt, outs[0], _ids_input(ctx), packed=True)
        return [outs[0]]
    if k is None or v is None or ctx.rank(q) != 3 or ctx.rank(k) != 3 or ctx.rank(v) != 3:
        raise _Refuse("only separate [batch, sequence, hidden] query, key and value, or packed QKV "
                      "[batch, sequence, heads, 3, head size], are supported (not packed KV or past state)")
    if not (ctx.shape(q) == ctx.shape(k) == ctx.shape(v)):
        raise _Refuse(f"query {list(ctx.shape(q))}, key {list(ctx.shape(k))} and value {list(ctx.shape(v))} "
                      f"differ in shape (cross-attention is not in the IR)")
    HD = ctx.shape(q)[-1]
    D = HD // H
    scale = float(n.attrs.get("scale", 0.0)) or 1.0 / math.sqrt(D)
    outs = _take_outputs(ctx, n)
    if bias is not None:
        b = G.const_value(bias)
        if b is None or b.shape != (3 * HD,):
            raise _Refuse("its bias is not a constant [3 * hidden] vector")
        q = _add(ctx, name + ".q_bias", q, _float_const(ctx, name + ".q_bias_value", b[:HD]))
        k = _add(ctx, name + ".k_bias", k, _float_const(ctx, name + ".k_bias_value", b[HD:2 * HD]))
        v = _add(ctx, name + ".v_bias", v, _float_const(ctx, name + ".v_bias_value", b[2 * HD:]))
    _attention_core(ctx, n, name, q, k, v, H, D, scale, raw, causal, filt, outs[0], _ids_input(ctx))
    return [outs[0]]


def _onnx_attention(ctx, n):
    """ONNX's Attention (opset 23+): Q, K, V as [B, H, S, D] (or [B, S, H*D] with q_num_heads/kv_num_heads), an
    optional boolean or additive mask broadcastable to [B, H, S, S], is_causal, scale (default 1/sqrt(D))."""
    q, k, v, mask = n.inputs[0], n.inputs[1], n.inputs[2], _present(n, 3)
    for i in range(4, len(n.inputs)):
        if _present(n, i) is not None:
            raise _Refuse("past key/value (a KV cache) and sequence-length inputs are not supported "
                          "(IR attention: whole sequences, padding/causal masks)")
    _need_unused(n, {1: "present_key", 2: "present_value", 3: "qk_matmul_output"})
    if float(n.attrs.get("softcap", 0.0) or 0.0) != 0.0:
        raise _Refuse(f"softcap={n.attrs['softcap']}: soft-capped scores through ONNX's Attention are not lowered yet")
    r = ctx.rank(q)
    if r not in (3, 4) or ctx.rank(k) != r or ctx.rank(v) != r:
        raise _Refuse(f"query, key and value of ranks {ctx.rank(q)}, {ctx.rank(k)}, {ctx.rank(v)}: expected all 4-D "
                      f"[batch, heads, sequence, head size] or all 3-D [batch, sequence, hidden]")
    if r == 4:
        Hq, Hkv, D, Dv = ctx.shape(q)[1], ctx.shape(k)[1], ctx.shape(q)[3], ctx.shape(v)[3]
    else:
        if "q_num_heads" not in n.attrs or "kv_num_heads" not in n.attrs:
            raise _Refuse("3-D query, key and value without q_num_heads and kv_num_heads")
        Hq, Hkv = int(n.attrs["q_num_heads"]), int(n.attrs["kv_num_heads"])
        D, Dv = ctx.shape(q)[2] // Hq, ctx.shape(v)[2] // Hkv
    if Hq != Hkv:
        raise _Refuse(f"{Hq} query heads on {Hkv} key/value heads: grouped K/V heads through ONNX's Attention are not "
                      f"lowered yet")
    if D != Dv or ctx.shape(q)[-2 if r == 4 else 1] != ctx.shape(k)[-2 if r == 4 else 1]:
        raise _Refuse("keys of another length than the queries, or values of another head size (cross-attention) "
                      "are not in the IR")
    scale = float(n.attrs.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(D)
    if mask is not None or int(n.attrs.get("is_causal", 0)):
        # a query whose every key is masked (a left-padded row's first tokens under a causal mask) is zeros in
        # onnxruntime's kernel and an average of V here; no valid token reads it, so the check compares the batch
        # rows that are right-padded, where no such query exists
        ctx.right_padded_only = True
    name = n.name or "onnx_attention"
    outs = _take_outputs(ctx, n)
    if r == 3:
        q4 = _heads(ctx, name + ".q", q, Hq, D, [0, 2, 1, 3])
        kt = _heads(ctx, name + ".k", k, Hq, D, [0, 2, 3, 1])
        v4 = _heads(ctx, name + ".v", v, Hq, D, [0, 2, 1, 3])
    else:
        q4, v4 = q, v
        kt = ctx.op("Transpose", name + ".k.perm", [k], attrs={"perm": [0, 1, 3, 2]})
    s = ctx.op("MatMul", name + ".scores", [q4, kt])
    s = ctx.op("Mul", name + ".scale", [s, _float_const(ctx, name + ".scale_value", np.float32(scale))])
    if mask is not None:
        m = mask
        mv = G.const_value(mask)
        if (mv if mv is not None else ctx.values[0][mask.name]).dtype == np.bool_:
            # float32's lowest rather than -inf, as transformers' eager masks: a query with every key masked then
            # averages V instead of becoming NaN (onnxruntime's kernel writes zeros there; see right_padded_only)
            m = ctx.op("Where", name + ".mask_bias", [mask, _float_const(ctx, name + ".zero", np.float32(0.0)),
                                                      _float_const(ctx, name + ".lowest", _LOWEST)])
        s = _add(ctx, name + ".masked", s, m)
    if int(n.attrs.get("is_causal", 0)):
        s = _causal(ctx, name, s, _ids_input(ctx), _LOWEST)
    p = ctx.op("Softmax", name + ".softmax", [s], attrs={"axis": -1})
    if r == 4:
        ctx.op("MatMul", name + ".context", [p, v4], outs[0])
    else:
        o = ctx.op("MatMul", name + ".context", [p, v4])
        o = ctx.op("Transpose", name + ".context.perm", [o], attrs={"perm": [0, 2, 1, 3]})
        ctx.op("Reshape", name + ".merge", [o, ctx.const(name + ".merge_shape", np.array([0, 0, Hq * D], np.int64))],
               outs[0])
    return [outs[0]]


def _bias_gelu(form, with_bias=True):
    def lower(ctx, n):
        x, bias = n.inputs[0], (_present(n, 1) if with_bias else None)
        outs = _take_outputs(ctx, n)
        name = n.name or "gelu"
        if bias is not None:
            x = _add(ctx, name + ".bias", x, bias)
        _gelu(ctx, name, x, form, outs[0])
        return [outs[0]]
    return lower


def _gemm_fast_gelu(ctx, n):
    x, W, bias = n.inputs[0], n.inputs[1], _present(n, 2)
    outs = _take_outputs(ctx, n)
    name = n.name or "gemm_fast_gelu"
    h = ctx.op("MatMul", name + ".matmul", [x, W])
    if bias is not None:
        h = _add(ctx, name + ".bias", h, bias)
    _gelu(ctx, name, h, "tanh", outs[0])
    return [outs[0]]


def _bias_add(ctx, n):
    x, bias, skip = n.inputs[0], n.inputs[1], n.inputs[2]
    outs = _take_outputs(ctx, n)
    name = n.name or "bias_add"
    _add(ctx, name + ".skip", _add(ctx, name + ".bias", x, bias), skip, outs[0])
    return [outs[0]]


def _fused_matmul(ctx, n):
    a, b = n.inputs[0], n.inputs[1]
    if int(n.attrs.get("transBatchA", 0)) or int(n.attrs.get("transBatchB", 0)):
        raise _Refuse("transBatchA/transBatchB are not supported")
    alpha = float(n.attrs.get("alpha", 1.0))
    outs = _take_outputs(ctx, n)
    name = n.name or "fused_matmul"

    def trans(t, what):
        r = ctx.rank(t)
        c = G.const_value(t)
        if c is not None:
            return ctx.const(name + "." + what, np.ascontiguousarray(np.swapaxes(c, -1, -2)))
        return ctx.op("Transpose", name + "." + what, [t], attrs={"perm": list(range(r - 2)) + [r - 1, r - 2]})
    if int(n.attrs.get("transA", 0)):
        a = trans(a, "a_t")
    if int(n.attrs.get("transB", 0)):
        b = trans(b, "b_t")
    if alpha == 1.0:
        ctx.op("MatMul", name, [a, b], outs[0])
    else:
        ctx.op("Mul", name + ".alpha", [ctx.op("MatMul", name, [a, b]), _float_const(ctx, name + ".alpha_value",
                                                                                       np.float32(alpha))], outs[0])
    return [outs[0]]


def _slice(ctx, name, x, start, end, axis=-1):
    return ctx.op("Slice", name, [x, ctx.const(name + ".starts", np.array([start], np.int64)),
                                  ctx.const(name + ".ends", np.array([end], np.int64)),
                                  ctx.const(name + ".axes", np.array([axis], np.int64))])


def _rotate(ctx, name, x4, cos_cache, sin_cache, D, ids_like):
    """x4 [B, S, h, D] rotated at positions 0..S-1 by cos/sin tables [positions, R/2] (rotate_half: the first and second
    halves of the first R dims paired, as Llama's), the spelling the rotary pass reads by value."""
    R = 2 * int(ctx.shape(cos_cache)[1])
    shape = ctx.op("Shape", name + ".shape", [ids_like], dtype=np.int64)
    S = ctx.op("Gather", name + ".seq", [shape, ctx.const(name + ".axis1", np.int64(1))], attrs={"axis": 0},
               dtype=np.int64)
    pos = ctx.op("Range", name + ".positions", [ctx.const(name + ".zero", np.int64(0)), S,
                                                ctx.const(name + ".step", np.int64(1))], dtype=np.int64)
    tables = []
    for what, cache in (("cos", cos_cache), ("sin", sin_cache)):
        t = ctx.op("Gather", f"{name}.{what}", [cache, pos], attrs={"axis": 0})
        t = ctx.op("Concat", f"{name}.{what}2", [t, t], attrs={"axis": -1})
        tables.append(ctx.op("Unsqueeze", f"{name}.{what}3", [t, ctx.const(f"{name}.{what}.axes",
                                                                             np.array([1], np.int64))]))
    xr = x4 if R == D else _slice(ctx, name + ".rot_part", x4, 0, R)
    x1, x2 = _slice(ctx, name + ".x1", xr, 0, R // 2), _slice(ctx, name + ".x2", xr, R // 2, R)
    half = ctx.op("Concat", name + ".rotate_half", [ctx.op("Neg", name + ".neg", [x2]), x1], attrs={"axis": -1})
    y = _add(ctx, name + ".rotated", ctx.op("Mul", name + ".mul_cos", [xr, tables[0]]),
             ctx.op("Mul", name + ".mul_sin", [half, tables[1]]))
    if R < D:
        y = ctx.op("Concat", name + ".with_pass", [y, _slice(ctx, name + ".pass", x4, R, D)], attrs={"axis": -1})
    return y


def _gqa_refusal(n):
    a = n.attrs
    if int(a.get("local_window_size", -1)) != -1:
        raise _Refuse(f"local_window_size={a['local_window_size']}: a sliding window through GroupQueryAttention is "
                      f"not lowered yet")
    if float(a.get("softcap", 0.0) or 0.0) != 0.0:
        raise _Refuse(f"softcap={a['softcap']}: soft-capped scores through GroupQueryAttention are not lowered yet")
    if int(a.get("do_rotary", 0)) and int(a.get("rotary_interleaved", 0)):
        raise _Refuse("rotary_interleaved=1: rotary on interleaved pairs through GroupQueryAttention is not lowered "
                      "yet")
    if int(a.get("smooth_softmax", 0)):
        raise _Refuse("smooth_softmax=1 (a softmax with an extra zero logit) is not in the IR")
    for i, what in ((9, "position_ids"), (10, "attention_bias"), (11, "head_sink")):
        if _present(n, i) is not None:
            raise _Refuse(f"its {what} input is not supported (IR attention: positions 0..S-1, padding/causal masks)")


def _group_query_attention(ctx, n):
    """onnxruntime's GroupQueryAttention, as onnxruntime-genai's decoder files hold it, over a whole sequence: its KV
    cache empty (builder/prefill.py makes it so), query/key/value packed in the query or apart, rotary from its
    cos/sin tables at positions 0..S-1, causal, keys past each row's length masked (the raw attention mask: the
    same for right-padded rows, which the check compares), each K/V head repeated over its group of query heads."""
    _gqa_refusal(n)
    q, k, v = n.inputs[0], _present(n, 1), _present(n, 2)
    for i in (3, 4):
        p = _present(n, i)
        if p is not None and ctx.shape(p)[2] != 0:
            raise _Refuse("a key/value cache that is not empty (trtrun runs whole sequences: the prefill)")
    _need_unused(n, {1: "present_key", 2: "present_value"})
    H, Hkv = int(n.attrs["num_heads"]), int(n.attrs["kv_num_heads"])
    if H % Hkv:
        raise _Refuse(f"num_heads {H} is not a multiple of kv_num_heads {Hkv}")
    width = ctx.shape(q)[-1]
    D = width // (H + 2 * Hkv) if k is None else width // H
    if (k is None and width != (H + 2 * Hkv) * D) or (k is not None and (width != H * D or v is None)):
        raise _Refuse(f"a query of width {width} is not {H} heads (+ 2 x {Hkv} packed K/V heads) of one size")
    scale = float(n.attrs.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(D)
    name = n.name or "group_query_attention"
    ids = _ids_input(ctx)
    mask = next((i for i in ctx.graph.inputs if i.name == "attention_mask"), None)
    rotary = int(n.attrs.get("do_rotary", 0))
    cos_cache, sin_cache = _present(n, 7), _present(n, 8)
    if rotary and (cos_cache is None or sin_cache is None or G.const_value(cos_cache) is None):
        raise _Refuse("do_rotary=1 without constant cos_cache/sin_cache tables")
    ctx.right_padded_only = True  # its key lengths (seqlens_k) describe right-padded rows only
    outs = _take_outputs(ctx, n)
    if k is None:
        split = [G.new_variable(ctx.graph, f"{name}.{p}") for p in "qkv"]
        ctx.graph.nodes.append(G.gs().Node(
            "Split", G.unique_name(ctx.graph, name + ".split"), attrs={"axis": -1},
            inputs=[q, ctx.const(name + ".split_sizes", np.array([H * D, Hkv * D, Hkv * D], np.int64))],
            outputs=split))
        q, k, v = split

    def heads(t, h, what, rotate):
        t4 = ctx.op("Reshape", f"{name}.{what}.heads", [t, ctx.const(f"{name}.{what}.shape",
                                                                      np.array([0, 0, h, D], np.int64))])
        if rotate:
            t4 = _rotate(ctx, f"{name}.{what}.rotary", t4, cos_cache, sin_cache, D, ids)
        if h != H:  # [B, S, Hkv, D] -> [B, S, Hkv, H/Hkv, D]: each K/V head over its group of query heads
            t4 = ctx.op("Unsqueeze", f"{name}.{what}.group", [t4, ctx.const(f"{name}.{what}.group_axis",
                                                                             np.array([3], np.int64))])
            t4 = ctx.op("Expand", f"{name}.{what}.repeat", [t4, ctx.const(f"{name}.{what}.repeat_shape",
                                                                           np.array([1, 1, 1, H // h, 1], np.int64))])
        return ctx.op("Reshape", f"{name}.{what}.merge", [t4, ctx.const(f"{name}.{what}.merge_shape",
                                                                         np.array([0, 0, H * D], np.int64))])

    q = heads(q, H, "q", rotary)
    k = heads(k, Hkv, "k", rotary)
    v = heads(v, Hkv, "v", False)
    _attention_core(ctx, n, name, q, k, v, H, D, scale, mask, True, _LOWEST, outs[0], ids)
    return [outs[0]]


_LOWER = {
    "SkipLayerNormalization": _skip_norm(rms=False),
    "SkipSimplifiedLayerNormalization": _skip_norm(rms=True),
    "SimplifiedLayerNormalization": _simplified_layernorm,
    "LayerNormalization": _layernorm_op,
    "QuickGelu": _quick_gelu,
    "EmbedLayerNormalization": _embed_layernorm,
    "Attention": _attention,
    "MultiHeadAttention": _multihead_attention,
    "GroupQueryAttention": _group_query_attention,
    "BiasGelu": _bias_gelu("erf"),
    "Gelu": _bias_gelu("erf", with_bias=False),
    "FastGelu": _bias_gelu("tanh"),
    "GemmFastGelu": _gemm_fast_gelu,
    "BiasAdd": _bias_add,
    "FusedMatMul": _fused_matmul,
}


# ONNX's own fused ops (domain "", by op type; onnxruntime's ONNX-domain ops above take precedence where the
# opset makes the name theirs). RotaryEmbedding is refused before anything runs (lower_contrib).
_ONNX_LOWER = {
    "Attention": _onnx_attention,
    "RotaryEmbedding": None,  # never called: refused with its reason before onnxruntime runs (lower_contrib)
}


# ---------------------------------------------------------------------- the check
def _right_padded_rows(mask) -> np.ndarray:
    m = np.asarray(mask) != 0
    n = m.sum(1)
    return np.array([bool(np.all(row[:k]) and not np.any(row[k:])) for row, k in zip(m, n)])


def _check(graph, feeds, before, checks, right_padded_only):
    """Every rewritten node's outputs, recomputed by the standard ops, against onnxruntime's contrib kernels."""
    names = [t.name for _, outs in checks for t in outs]
    after = list(run_graph(graph, feeds, names))
    for node, outs in checks:  # in graph order: the first disagreement names the node that is wrong
        for t in outs:
            ours, theirs = [], []
            for f, a, b in zip(feeds, after, before):
                if t.name not in b:
                    continue
                x, y = a[t.name], b[t.name]
                if right_padded_only and "attention_mask" in f and x.ndim >= 1 and x.shape[0] == len(f["attention_mask"]):
                    rows = _right_padded_rows(f["attention_mask"])
                    x, y = x[rows], y[rows]
                ours.append(x)
                theirs.append(y)
            if not agree(ours, theirs):
                raise BuildError(f"{node.op} node {node.name!r}: its lowering to standard ops does not reproduce "
                                 f"onnxruntime's output {t.name!r} on the probe inputs (an attribute or input form "
                                 f"read wrongly)")
