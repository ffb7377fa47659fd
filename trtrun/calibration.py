"""Calibration and held-apart text for `trtrun build --precision fp8|auto`: texts in, token-id batches out.

`--calib rt|wiki|imdb|FILE --calib-samples N` names the calibration text; the precision search also needs
held-apart text (`--holdout`, default: other texts of the calibration set, none of them among the calibration
ones; `--holdout-samples`, default HOLDOUT_SAMPLES). Texts are drawn by trtrun.data.load_texts' seeded sampling (same set, count and seed: the same texts),
tokenized by the model's tokenizer, right-padded, in batches of BATCH at most `max_len` tokens.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .types import TEXT_SETS

BATCH = 16
SEED = 0
# The search's check runs the chosen plan once a round on these texts, cheap next to the sensitivity runs (two a
# Linear on the calibration text); a worst sample read off 256 texts is nearer the population's tail than one off
# 64 (docs/precision.md: MiniLM's worst of 64 met a budget its worst of 256 missed)
HOLDOUT_SAMPLES = 256


def _texts(spec: str, n: int, seed: int) -> list[str]:
    from . import data

    if spec in TEXT_SETS:
        return data.load_texts(spec, n=None if n is None else n, seed=seed)
    p = Path(spec)
    if not p.is_file():
        raise InputError(f"calibration text {spec!r}: not one of {', '.join(TEXT_SETS)} and no such file")
    texts = data.load_text_file(p)
    return texts if n is None else data._sample(texts, min(n, len(texts)), seed, p.name)


def text_sets(calib: str, n: int, holdout: str | None = None, n_holdout: int | None = None, seed: int = SEED):
    """(calibration texts, held-apart texts or None). holdout None: none; "same" (or the calibration set's own
    name): the next n_holdout texts (default HOLDOUT_SAMPLES) of the calibration set's seeded draw, disjoint from
    the calibration ones."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"--calib-samples must be a positive integer, got {n!r}")
    if holdout is None:
        return _texts(calib, n, seed), None
    m = n_holdout or HOLDOUT_SAMPLES
    if holdout in ("same", calib):
        allt = _texts(calib, None, seed)
        if len(allt) < n + m:
            raise InputError(f"{calib}: {len(allt)} texts, fewer than {n} calibration + {m} held-apart ones; "
                             f"name other held-apart text (--holdout) or ask for fewer")
        from . import data
        drawn = data._sample(allt, n + m, seed, str(calib))
        return drawn[:n], drawn[n:]
    return _texts(calib, n, seed), _texts(holdout, m, seed + 1)


def batches(tokenizer, texts: list[str], max_len: int, batch: int = BATCH) -> list[dict]:
    """Right-padded token-id batches of the texts (trtrun.data.encode)."""
    from .data import encode

    return [encode(tokenizer, texts[i:i + batch], max_len) for i in range(0, len(texts), batch)]


def tokenizer_for_onnx(onnx_path, tokenizer_dir=None):
    """The tokenizer for an ONNX file: `tokenizer_dir`, else a tokenizer folder beside the file, else the data
    folder's tokenizer for the model's vocabulary (the rows of its word table: 30522 BERT, 50257 GPT-2)."""
    from . import data

    if tokenizer_dir:
        return data.load_tokenizer(tokenizer_dir)
    p = Path(onnx_path)
    for cand in (p.parent, p.parent / "tokenizer"):
        if data.is_tokenizer_dir(cand):
            return data.load_tokenizer(cand)
    import onnx

    g = onnx.load(str(p), load_external_data=False).graph
    vocabs = {int(t.dims[0]) for t in g.initializer if len(t.dims) == 2} & set(data._TOKENIZER_BY_VOCAB)
    if len(vocabs) == 1:
        return data.load_tokenizer(data.data_dir() / data._TOKENIZER_BY_VOCAB[vocabs.pop()])
    raise InputError(f"no tokenizer for {p}'s calibration text: none beside it and no known vocabulary size; "
                     f"pass --tokenizer DIR")
