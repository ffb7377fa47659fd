"""Sentence vectors from token states: the poolings (mean, cls, max, mean_sqrt_len, last) and what a
sentence-transformers folder says (its Pooling module's mode, its max_seq_length)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import TrtrunError
from ..plan.format import POOL_ID_MODES
from ..types import POOLINGS

# sentence-transformers' pooling config keys -> our pooling names
_ST_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
}
_ST_UNSUPPORTED = ("pooling_mode_weightedmean_tokens",)


def read_st_pooling(directory) -> tuple[str | None, str]:
    """(pooling, where it was read) from a sentence-transformers folder, or (None, reason) if it has none.

    modules.json names the Pooling module's folder (usually 1_Pooling); its config.json says the mode.
    Modes we cannot compute (weighted mean, last token, several at once) raise a TrtrunError.
    """
    d = Path(directory)
    cands = []
    modules = d / "modules.json"
    if modules.is_file():
        try:
            mods = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrtrunError(f"{modules}: cannot read sentence-transformers modules: {e}") from e
        for m in mods if isinstance(mods, list) else []:
            if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling"):
                cands.append(d / str(m.get("path", "")) / "config.json")
    cands.append(d / "1_Pooling" / "config.json")
    for cfg in cands:
        if not cfg.is_file():
            continue
        try:
            conf = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrtrunError(f"{cfg}: cannot read the pooling config: {e}") from e
        bad = [k for k in _ST_UNSUPPORTED if conf.get(k)]
        modes = [name for key, name in _ST_POOLING_KEYS.items() if conf.get(key)]
        if isinstance(conf.get("pooling_mode"), str) and not modes:  # newer single-key form
            m = conf["pooling_mode"].replace("mean_sqrt_len_tokens", "mean_sqrt_len").replace("lasttoken", "last")
            modes = [m] if m in POOLINGS else []
            if not modes:
                bad.append(f"pooling_mode={conf['pooling_mode']!r}")
        if bad:
            raise TrtrunError(f"{cfg}: pooling {', '.join(bad)} is not supported (supported: {', '.join(POOLINGS)})")
        if len(modes) != 1:
            raise TrtrunError(f"{cfg}: expected exactly one pooling mode, found {modes or 'none'} "
                              f"(sentence-transformers concatenates several; trtrun does not)")
        return modes[0], str(cfg)
    return None, f"no sentence-transformers pooling config in {d}"


def st_max_seq_length(directory) -> int | None:
    """sentence_bert_config.json's max_seq_length in a sentence-transformers folder, or None."""
    cfg = Path(directory) / "sentence_bert_config.json"
    if not cfg.is_file():
        return None
    try:
        v = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(v) if isinstance(v, int) and v > 0 else None


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Pool hidden states [b, S, N] over the valid (mask = 1) tokens -> float32 [b, N].

    last: the state of each row's last valid token (decoder embedders such as Qwen3-Embedding, whose causal
    attention lets only that token see the whole text), whichever side the padding is on.

    Mean pooling is one batched float32 matrix product (mask row x hidden states: BLAS, which releases the
    GIL, so pooling does not stall a server's other threads). Its accumulation error is ~sqrt(S) fp32
    ulps, ~1e-6 relative at S = 256: a cosine change of ~1e-12, nothing beside the 2e-4 our accuracy bound
    allows the engine. The division and the normalization run in float64 on [b, N]. Zero-norm vectors stay
    zero (F.normalize's eps).
    """
    m32 = (mask != 0).astype(np.float32)
    if pooling == "cls":
        v = hidden[:, 0, :].astype(np.float64)
    elif pooling == "last":
        S = mask.shape[1]
        last = S - 1 - np.argmax(m32[:, ::-1] != 0, axis=1)  # a row without a valid token takes its last
        v = hidden[np.arange(hidden.shape[0]), last, :].astype(np.float64)
    elif pooling == "max":
        h = np.where(m32[:, :, None] != 0, hidden, -np.inf)
        v = h.max(axis=1).astype(np.float64)
    else:
        s = np.matmul(m32[:, None, :], hidden.astype(np.float32, copy=False))[:, 0, :].astype(np.float64)
        cnt = np.maximum(m32.sum(axis=1, keepdims=True, dtype=np.float64), 1e-9)
        v = s / (np.sqrt(cnt) if pooling == "mean_sqrt_len" else cnt)
    if normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v.astype(np.float32)


def sentence_head(plan) -> str | None:
    """The plan's sentence embedding that modules after the pooling compute (a sentence-transformers Dense between
    its Pool and its Normalize), or that a Pool by token id picks (CLIP's text_embeds: the end-of-text token's state,
    projected), or None: no such output (a classifier's logits are no embedding: an output is one when a Normalize
    writes it or it is named sentence_embedding), or a plain pooled output, which the Embedder's own pooling of the
    token states reproduces."""
    writer = {t: op for op in plan.ops for t in op["outputs"] if t}

    def pools(op) -> dict | None:
        """The Pool the one-vector-a-sample op `op` computes from, walking back."""
        seen, stack = set(), [op]
        while stack:
            cur = stack.pop()
            if cur["type"] == "Pool":
                return cur
            for t in cur["inputs"]:
                if t and t in writer and t not in seen and len(plan.tensors[t]["shape"]) == 2:
                    seen.add(t)
                    stack.append(writer[t])
        return None

    for o in plan.outputs:  # by token id first: no pooling of the Embedder's own reproduces it
        op = writer.get(o["name"])
        p = pools(op) if op is not None and len(o["shape"]) == 2 else None
        if p is not None and p["attrs"].get("mode") in POOL_ID_MODES:
            return o["name"]
    for o in plan.outputs:
        op = writer.get(o["name"])
        if op is None or len(o["shape"]) != 2 or op["type"] == "Pool" or \
                not (op["type"] == "Normalize" or o["name"] == "sentence_embedding"):
            continue
        if pools(op) is not None:  # a Pool before it means a head after the pooling
            return o["name"]
    return None
