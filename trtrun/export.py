"""Export a Hugging Face transformer (encoder or decoder) to ONNX.

`export_model` takes a model directory (config.json + weights), a GGUF file (or a folder holding one:
transformers dequantizes its weights to fp32 with the `gguf` package), or a named architecture with random
weights (`bert-base`, `gpt2`, `llama`, `qwen2`, `mistral`, `qwen3`, `gpt-neox`, `mpnet`, `deberta-v2`,
`modernbert`, with size overrides for small test models) and writes an ONNX graph with inputs `input_ids`, `attention_mask` (+ `token_type_ids`
for BERT-like models), output `last_hidden_state`, and dynamic batch and sequence axes.

torch and transformers are optional dependencies, imported only inside the functions here.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

from ._io import atomic_path
from .errors import ModelError, ModelTooLargeError
from .types import ATTENTIONS, EXPORT_ARCHS, EXPORTERS, NAMED_ARCHS  # named by check and bench too

# torch's TorchScript exporter: opsets we accept here. 14 is the first with the ops our graphs need
# (Trilu for causal masks etc.), 20 the newest we check.
OPSET_RANGE = (14, 20)
# the dynamo exporter reaches opset 23, where it writes SDPA as ONNX's own Attention op (the builder lowers it)
DYNAMO_OPSET_MAX = 23

# Names of overrides users may pass, and their GPT-2 config spelling.
_GPT2_KEYS = {
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "intermediate_size": "n_inner",
    "max_position_embeddings": "n_positions",
}
_BERT_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
              "hidden_act"}


def _import_torch():
    from ._optional import require

    return require("torch", "exporting"), require("transformers", "exporting")


# The newer named architectures: their config class, the shape of a real model of the family (the default,
# so `trtrun export llama` is a model people run), and the config keys an override may set beyond the sizes.
_FAMILIES = {
    # SmolLM2-135M's shape (the decoder whose real weights the data set has)
    "llama": ("LlamaConfig", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                  intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    # Qwen2-0.5B's shape
    "qwen2": ("Qwen2Config", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
    # pythia-160m's shape
    "gpt-neox": ("GPTNeoXConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, vocab_size=50304, max_position_embeddings=2048,
                                       rotary_pct=0.25, use_parallel_residual=True)),
    # all-mpnet-base-v2's shape
    "mpnet": ("MPNetConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                  vocab_size=30527, max_position_embeddings=514)),
    # deberta-v3-small's shape
    "deberta-v2": ("DebertaV2Config", dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                                           intermediate_size=3072, vocab_size=128100, max_position_embeddings=512,
                                           relative_attention=True, position_buckets=256, max_relative_positions=-1,
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                           norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0)),
    # There is no small official Mistral (transformers' docs name Mistral-7B-v0.1, 28 GB of fp32 weights): the
    # sizes of SmolLM2-135M (the llama default's) with the rest of Mistral-7B-v0.1's config, its vocabulary, rope
    # theta, positions and the sliding attention window of 4096 tokens that makes the family
    "mistral": ("MistralConfig", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                      num_key_value_heads=3, intermediate_size=1536, vocab_size=32000,
                                      max_position_embeddings=32768,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096)),
    # Qwen3-0.6B's shape (Qwen3-Embedding-0.6B's too): Qwen2 without q/k/v biases, with an RMSNorm on each head's
    # query and key
    "qwen3": ("Qwen3Config", dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                                  head_dim=128, intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960,
                                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
    # ModernBERT-base's shape: local (128-token window) and global attention alternating, rotary, GeGLU, no biases
    "modernbert": ("ModernBertConfig", dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                                            intermediate_size=1152, vocab_size=50368, max_position_embeddings=8192,
                                            local_attention=128, global_attn_every_n_layers=3)),
}
_SIZE_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings"}
_FAMILY_KEYS = {
    "llama": {"num_key_value_heads", "rope_theta", "rope_scaling", "rms_norm_eps", "hidden_act", "attention_bias",
              "mlp_bias", "head_dim"},
    "qwen2": {"num_key_value_heads", "rope_theta", "rope_scaling", "rms_norm_eps", "hidden_act"},
    "mistral": {"num_key_value_heads", "rope_theta", "rope_scaling", "rms_norm_eps", "hidden_act", "head_dim",
                "sliding_window"},
    "qwen3": {"num_key_value_heads", "rope_theta", "rope_scaling", "rms_norm_eps", "hidden_act", "head_dim",
              "attention_bias"},
    "gpt-neox": {"rotary_pct", "rope_theta", "rope_scaling", "use_parallel_residual", "hidden_act", "layer_norm_eps"},
    "mpnet": {"relative_attention_num_buckets", "layer_norm_eps", "hidden_act"},
    "deberta-v2": {"relative_attention", "position_buckets", "pos_att_type", "type_vocab_size"},
    "modernbert": {"local_attention", "global_attn_every_n_layers", "global_rope_theta", "local_rope_theta",
                   "hidden_activation", "norm_eps"},
}
# A named architecture is built in memory with random fp32 weights and then exported: a shape whose weights
# exceed this is refused unless allowed (allow_large, `trtrun export --allow-large`), so that a 7B-class shape
# asked for by mistake fails at once instead of filling the RAM and the disk. 4 GiB is ~1.07e9 parameters; the
# torchscript export of the llama default (0.5 GiB of weights) peaked at 2.3 GiB over the interpreter's own
# memory, ~4.6 times the weights, so 4 GiB of weights already asks ~18 GiB of RAM. The largest default shape
# (qwen3, Qwen3-0.6B's) has 2.2 GiB.
MAX_RANDOM_WEIGHT_BYTES = 4 << 30

# rope variants whose frequencies are fixed at load time (what a plan holds); "dynamic" and "longrope" change
# them with the sequence length at run time
STATIC_ROPE = ("default", "linear", "yarn", "llama3")


def _make_config(transformers, source: str, overrides: dict):
    if source == "bert-base":
        bad = set(overrides) - _BERT_KEYS
        if bad:
            raise ValueError(f"unknown override(s) for bert-base: {sorted(bad)}; known: {sorted(_BERT_KEYS)}")
        # bert-base-uncased's shape, with dropout irrelevant (eval mode).
        return transformers.BertConfig(**overrides)
    if source == "gpt2":
        kw = {}
        for k, v in overrides.items():
            if k in _GPT2_KEYS:
                kw[_GPT2_KEYS[k]] = v
            elif k in ("vocab_size", "layer_norm_epsilon", "activation_function") or k in _GPT2_KEYS.values():
                kw[k] = v
            else:
                raise ValueError(f"unknown override {k!r} for gpt2; known: "
                                 f"{sorted(_GPT2_KEYS) + ['vocab_size', 'layer_norm_epsilon']}")
        if "vocab_size" in kw:  # keep the special tokens inside a shrunken vocabulary
            kw.setdefault("bos_token_id", kw["vocab_size"] - 1)
            kw.setdefault("eos_token_id", kw["vocab_size"] - 1)
        return transformers.GPT2Config(**kw)
    if source in _FAMILIES:
        cls, defaults = _FAMILIES[source]
        known = _SIZE_KEYS | _FAMILY_KEYS[source]
        bad = set(overrides) - known
        if bad:
            raise ValueError(f"unknown override(s) for {source}: {sorted(bad)}; known: {sorted(known)}")
        kw = {**defaults, **overrides}
        if "num_attention_heads" in overrides and "num_key_value_heads" in defaults \
                and "num_key_value_heads" not in overrides:
            kw["num_key_value_heads"] = kw["num_attention_heads"]  # a head count given alone: plain multi-head
        if "vocab_size" in overrides:  # keep the special tokens inside a shrunken vocabulary
            for key in ("bos_token_id", "eos_token_id", "pad_token_id") + \
                    (("cls_token_id", "sep_token_id") if source == "modernbert" else ()):
                kw.setdefault(key, min(1, kw["vocab_size"] - 1))
        return _checked_config(getattr(transformers, cls), source, kw)
    raise AssertionError(source)


def _checked_config(cls, source: str, kw: dict):
    """cls(**kw), with sizes that cannot make a model refused as ValueError naming the sizes, rather than as
    transformers' own validation errors (not ValueErrors in every version) or a failure deep inside the export."""
    heads, kv = kw.get("num_attention_heads"), kw.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and (kv < 1 or heads % kv):
        raise ValueError(f"{source}: num_attention_heads {heads} (--heads) is not a multiple of num_key_value_heads "
                         f"{kv} (--kv-heads): each key/value head serves a whole group of query heads")
    try:
        return cls(**kw)
    except Exception as e:  # noqa: BLE001 - transformers' config validators raise several classes
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Error:" in ln), lines[-1] if lines else type(e).__name__)
        raise ValueError(f"{source}: these sizes do not make a valid {cls.__name__}: {why}") from None


def check_rope(config, source) -> None:
    """Refuse a config whose rotary frequencies change with the sequence length at run time, naming its
    rope_type (a plan holds one frequency table), or whose attention has a sliding window longer than the
    builder reads off the mask (builder.fuse_attention.WINDOW_MAX)."""
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rp, dict) and "rope_type" not in rp and all(isinstance(v, dict) for v in rp.values()):
        kinds = [v.get("rope_type", v.get("type", "default")) for v in rp.values()]  # per attention type
    else:
        kinds = [rp.get("rope_type", rp.get("type", "default"))] if isinstance(rp, dict) else ["default"]
    from .builder.fuse_attention import WINDOW_MAX

    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window > WINDOW_MAX:
        # the builder reads a window off the mask at the window's length; past WINDOW_MAX that costs too much
        raise ModelError(f"{source}: sliding-window attention (window {window}) is not supported: the builder reads "
                         f"windows of at most {WINDOW_MAX} tokens off the mask")
    for kind in kinds:
        if kind not in STATIC_ROPE:
            raise ModelError(f"{source}: rope_type {kind!r} is not supported: its rotary frequencies depend on the "
                             f"sequence length at run time, and a plan holds one frequency table (supported: "
                             f"{', '.join(STATIC_ROPE)})")


def _parameter_count(torch, transformers, config) -> int:
    """The parameters of the model `config` describes, built on PyTorch's meta device (shapes, no storage):
    exact for every family, and nothing the size of the weights is allocated."""
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    return sum(p.numel() for p in model.parameters())


def estimate_parameters(source: str, overrides: dict | None = None) -> int:
    """The parameter count of the named architecture `source` with `overrides` (4 bytes each in fp32), from
    its config alone, allocating no weights."""
    torch, transformers = _import_torch()
    return _parameter_count(torch, transformers, named_config(source, overrides))


def named_config(source: str, overrides: dict | None = None):
    """The transformers config of the named architecture `source` with `overrides`, allocating no weights."""
    if str(source) not in EXPORT_ARCHS:
        raise ValueError(f"{source}: not a named architecture ({', '.join(EXPORT_ARCHS)})")
    _, transformers = _import_torch()
    return _make_config(transformers, str(source), overrides or {})


def check_size(torch, transformers, config, source, allow_large: bool = False) -> None:
    """Refuse (ModelTooLargeError, an InputError) a named architecture whose random fp32 weights exceed
    MAX_RANDOM_WEIGHT_BYTES, before they are allocated, naming the size, the shape and how to shrink it, unless
    allow_large."""
    n = _parameter_count(torch, transformers, config)
    if allow_large or 4 * n <= MAX_RANDOM_WEIGHT_BYTES:
        return
    sizes = (("hidden", "hidden_size"), ("layers", "num_hidden_layers"), ("intermediate", "intermediate_size"),
             ("vocabulary", "vocab_size"))
    shape = ", ".join(f"{label} {getattr(config, key)}" for label, key in sizes
                      if isinstance(getattr(config, key, None), int))
    # (the command-line layer restates the advice in the options of the command that was run: for_command)
    raise ModelTooLargeError(f"{source}: {n / 1e9:.2f}B parameters ({shape}) are {4 * n / 2**30:.1f} GiB of fp32 "
                             f"weights to build in memory and write, over the {MAX_RANDOM_WEIGHT_BYTES >> 30} GiB "
                             f"allowed without asking")


def _randomize(torch, model, seed):
    """Give every parameter a non-trivial random value.

    Hugging Face's init leaves biases at 0 and LayerNorm gains at 1; a graph with those values hides
    bugs (a bias dropped, gamma and beta swapped) and lets exporters deduplicate the constants.
    Scales stay close to a trained model's: weights N(0, 0.02) as HF's init, biases N(0, 0.02),
    gains 1 + N(0, 0.1), LayerNorm shifts N(0, 0.05). Frozen parameters keep their values: they are computed,
    not learned (RoFormer's sinusoidal position table, from which its rotary is read).
    """
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            low = name.lower()
            is_ln = ("layernorm" in low or ".ln_" in low or low.startswith("ln_")
                     or "layer_norm" in low or ".ln" in low or "norm." in low)
            if is_ln and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif is_ln and name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(0.02 * noise)


def _load_model(torch, transformers, source, overrides, seed, allow_large=False, attention="eager"):
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    attn = {"attn_implementation": attention}
    if str(source) in EXPORT_ARCHS:
        config = _make_config(transformers, str(source), overrides or {})
        check_rope(config, source)
        check_size(torch, transformers, config, source, allow_large)
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config, **attn)
        _randomize(torch, model, seed)
        return model.float().eval(), config
    path = Path(source)
    gguf = gguf_file(path)
    if gguf is None and (not path.is_dir() or not (path / "config.json").is_file()):
        raise ModelError(
            f"{source}: not a named architecture ({', '.join(EXPORT_ARCHS)}), a Hugging Face model "
            "directory with a config.json, nor a GGUF file")
    if overrides:
        # a folder's sizes are its weights' shapes: an override either fails to load (hidden size),
        # silently adds randomly initialized layers (more layers), or is a typo nobody reads
        raise ValueError(f"{source}: size overrides ({', '.join(sorted(overrides))}) apply to the named "
                         f"architectures ({', '.join(EXPORT_ARCHS)}), not to a model folder, whose sizes come "
                         f"from its config.json and weights")
    try:
        if gguf is not None:
            from ._optional import require

            require("gguf", "reading GGUF files")
            kw = {"gguf_file": gguf.name}
            config = transformers.AutoConfig.from_pretrained(str(gguf.parent), **kw)
            check_rope(config, source)
            model = transformers.AutoModel.from_pretrained(str(gguf.parent), config=config, dtype=torch.float32,
                                                           **kw, **attn)
            # dequantized to fp32 already; transformers marks it quantized and refuses .float()
            return model.eval(), config
        else:
            config = transformers.AutoConfig.from_pretrained(str(path))
            check_rope(config, source)
            model = _model_class(transformers, config).from_pretrained(str(path), config=config, **attn)
    except (OSError, ValueError) as e:
        raise ModelError(f"{source}: cannot load the model: {e}") from e
    return model.float().eval(), config


def _model_class(transformers, config):
    """AutoModel, or for a T5-family folder (encoder-decoder) its encoder alone: what sentence-t5, GTR and
    Instructor embed with (trtrun runs an encoder or a decoder, not the pair)."""
    encoder = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}.get(config.model_type)
    return getattr(transformers, encoder, transformers.AutoModel) if encoder else transformers.AutoModel


def gguf_file(path: Path) -> Path | None:
    """The GGUF file `path` names, or the one GGUF file in the folder `path` (without a config.json), or None.
    ModelError for a folder with several."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ModelError(f"{path}: holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}); "
                             f"name the one to export")
        if found:
            return found[0]
    return None


def load_torch_model(source, *, overrides: dict | None = None, seed: int = 0, allow_large: bool = False,
                     attention: str = "eager"):
    """The PyTorch model `export_model` would export (fp32, eval mode).

    The same weights for the same (source, overrides, seed): tests and the GPU baseline compare
    against it. allow_large, attention: as for export_model.
    """
    torch, transformers = _import_torch()
    model, _ = _load_model(torch, transformers, source, overrides, seed, allow_large, attention)
    return model


def export_model(source, out_path, *, exporter: str = "auto", opset: int | None = None,
                 overrides: dict | None = None, seed: int = 0, allow_large: bool = False,
                 attention: str = "eager", log: Callable[[str], None] | None = None) -> Path:
    """Export `source` to ONNX at `out_path`, in fp32, and return the path.

    source: a Hugging Face model directory or a named architecture (random weights from `seed`;
    `overrides` such as hidden_size=128, num_hidden_layers=2 set the size; for gpt2 they map to
    n_embd/n_layer/n_head/n_inner). A named architecture whose fp32 weights would exceed
    MAX_RANDOM_WEIGHT_BYTES (4 GiB) is refused with a ModelTooLargeError (an InputError) before they are
    allocated, unless allow_large. exporter: "torchscript" (torch.onnx.export(dynamo=False), opset 17 by default, 14..20
    accepted), "dynamo" (torch.export with dynamic batch and sequence Dims; opset 18 by default), or "auto" (the
    default): torchscript, then dynamo where torchscript fails on the model or writes a file that runs only at the
    shape it traced (Cohere's, GLM's, EmbeddingGemma's forms), saying so through `log`; an opset below 18 keeps it
    to torchscript. Every file is run by onnxruntime at another shape than the traced one before it is kept.
    attention: the attention implementation transformers traces: "eager" (explicit matmul, softmax, matmul) or
    "sdpa" (torch's scaled_dot_product_attention, transformers' default and so what most other exports hold;
    not every architecture has it). The builder takes both.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    tries = [exporter]
    if exporter == "auto":  # the exporters that can write this opset (dynamo: 18+, with onnxscript installed)
        tries = [e for e in ("torchscript", "dynamo") if _opset_error(e, opset) is None]
        if len(tries) == 2 and importlib.util.find_spec("onnxscript") is None:
            tries = ["torchscript"]
        if not tries:
            raise ValueError(f"opset {opset} is written by neither exporter (torchscript {OPSET_RANGE[0]}.."
                             f"{OPSET_RANGE[1]}, dynamo 18..{DYNAMO_OPSET_MAX})")
    elif _opset_error(exporter, opset):
        raise ValueError(_opset_error(exporter, opset))
    if tries == ["dynamo"] and importlib.util.find_spec("onnxscript") is None:
        # torch imports it only deep inside the export, after the model is built: say so before any work
        from ._optional import missing

        raise missing("onnxscript", "the dynamo exporter (--exporter dynamo)")
    torch, transformers = _import_torch()

    model, config = _load_model(torch, transformers, source, overrides, seed, allow_large, attention)
    has_tt = getattr(config, "type_vocab_size", 0) and config.model_type != "gpt2"
    # Inputs passed positionally to the wrapper, then by keyword to the HF model (positional use
    # maps them onto other parameters), with use_cache=False so no past-key-values are returned.
    if has_tt:
        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids, use_cache=False).last_hidden_state
        names = ["input_ids", "attention_mask", "token_type_ids"]
    else:
        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
        names = ["input_ids", "attention_mask"]
    wrapper = Wrapper(model).eval()

    # Example inputs: batch 2, sequence 8, some padding, so no dimension is specialised to 1.
    g = torch.Generator().manual_seed(seed)
    b, s = 2, 8
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (b, s), generator=g, dtype=torch.long)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 5:] = 0
    args = [ids, mask]
    if has_tt:
        args.append(torch.zeros(b, s, dtype=torch.long))
    args = tuple(args)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for exp in tries:
        if failed and log is not None:
            log(f"{failed[0]}; trying the dynamo exporter")
        try:
            _export_checked(torch, wrapper, args, names, config, exp,
                            opset if opset is not None else (17 if exp == "torchscript" else 18), out_path, vocab,
                            has_tt, seed, advise=len(tries) == 1)
        except ModelError as e:
            failed.append(str(e))
            continue
        if failed and log is not None:
            log("exported with the dynamo exporter")
        return out_path
    if len(failed) == 1:
        raise ModelError(failed[0])
    raise ModelError(f"neither exporter works on this model: torchscript: {failed[0]}; dynamo: {failed[1]}")


def _opset_error(exporter: str, opset: int | None) -> str | None:
    """Why `exporter` cannot write `opset` (None: its default), or None."""
    if opset is None:
        return None
    if exporter == "dynamo" and opset < 18:
        return "the dynamo exporter writes opset 18 or newer"
    top = DYNAMO_OPSET_MAX if exporter == "dynamo" else OPSET_RANGE[1]
    if not OPSET_RANGE[0] <= opset <= top:
        return f"opset {opset} outside the {exporter} exporter's supported range {OPSET_RANGE[0]}..{top}"
    return None


def _export_checked(torch, wrapper, args, names, config, exporter, opset, out_path, vocab, has_tt, seed, advise):
    """One exporter's file at out_path, run at another shape first (_check_other_shape); ModelError naming what
    failed (with advice naming the other exporter when `advise`), leaving any existing file intact."""
    other = "dynamo" if exporter == "torchscript" else "torchscript"
    # written beside the target and renamed, so a failed or interrupted export leaves an existing file intact
    with atomic_path(out_path) as tmp:
        try:
            _export(torch, wrapper, args, names, config, exporter, opset, tmp)
        except (MemoryError, ModelError):
            raise
        except Exception as e:  # torch.onnx's own failures (assertions inside its passes) have no common class
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"torch.onnx's {exporter} exporter failed on this model ({type(e).__name__}: "
                             f"{first[:300]})" + (f"; try --exporter {other}" if advise else "")) from e
        _check_other_shape(torch, wrapper, names, vocab, has_tt, tmp, exporter, seed, advise)


def _check_other_shape(torch, wrapper, names, vocab, has_tt, path, exporter, seed, advise=True):
    """Run the written file with onnxruntime at batch 3 x sequence 5 (the trace used 2 x 8) against the model
    itself. A trace can bake a size it met into the graph (torch.onnx's torchscript exporter does for some
    architectures, e.g. Cohere's interleaved rotary): such a file fails, or computes something else, at any other
    shape. Raises ModelError naming the failure, before the file is kept."""
    import numpy as np
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed + 1)
    b, s = 3, 5
    ids = torch.randint(0, vocab, (b, s), generator=g, dtype=torch.long)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[2, 3:] = 0
    args = [ids, mask] + ([torch.zeros(b, s, dtype=torch.long)] if has_tt else [])
    with torch.no_grad():
        want = wrapper(*args).float().numpy()
    advice = ("; export with --exporter dynamo (torch.export keeps batch and sequence symbolic)"
              if exporter == "torchscript" and advise else "")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
    except Exception as e:  # onnxruntime's own errors (shape mismatches of baked sizes) have no common class
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the {exporter} export runs only at the traced shape (batch 2, sequence 8): onnxruntime "
                         f"fails at batch 3, sequence 5: {first[:300]}{advice}") from None
    # fp32 against fp32 of the same function: ~1e-6 apart; a baked size changes values by far more than 1e-3
    keep = mask.numpy() != 0
    if got.shape != want.shape or not np.allclose(got[keep], want[keep], rtol=1e-3, atol=1e-3 * float(
            np.abs(want[keep]).max(initial=1.0))):
        raise ModelError(f"the {exporter} export computes another function at batch 3, sequence 5 than the model "
                         f"(a size of the traced shape baked in){advice}")


def _export(torch, wrapper, args, names, config, exporter, opset, out_path):
    # The exporters warn about things that do not apply here (tracer warnings on Python bools
    # that are constant for our wrapper, torchvision ops); the graph is checked by the caller.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            dyn = {n: {0: "batch", 1: "sequence"} for n in names}
            dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
            torch.onnx.export(wrapper, args, str(out_path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=dyn,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            seq = torch.export.Dim("sequence", min=2, max=getattr(config, "max_position_embeddings",
                                                                   None) or config.n_positions)
            dyn = {n: {0: batch, 1: seq} for n in names}
            prog = torch.onnx.export(wrapper, args, input_names=names,
                                     output_names=["last_hidden_state"], dynamic_shapes=dyn,
                                     opset_version=opset, dynamo=True, external_data=False,
                                     verbose=False, optimize=True)
            prog.save(str(out_path), external_data=False)
