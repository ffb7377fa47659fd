"""Benchmark inputs: real token ids (tokenized real text, never zeros or random ids), rotated.

A token stream is Wikipedia paragraphs (the data folder's wiki.txt) tokenized by the model's own
tokenizer without special tokens and concatenated; or a token file (.npz with `ids`, written by
`write_token_file`, e.g. bench/tokens/*.npz, so the GPU machine needs neither the data folder nor a
tokenizer). An input set for (batch, seq) takes each row from a window of the stream at a seeded random
offset, so rows and sets differ; every engine at a point sees the same sets. attention_mask is all ones
(full-length rows, the paper's batch x sequence convention); token_type_ids, where the model takes them,
mark a sentence pair (first half 0, second half 1), as BERT's pretraining inputs do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import BenchConfigError

DEFAULT_STREAM_TOKENS = 32768  # 2x the largest default batch (32 x 512): windows rarely coincide


def write_token_file(path, ids, *, tokenizer: str, source: str) -> Path:
    """Save a token stream: ids (uint16 where the vocabulary fits, else int32) plus where they came from."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("a token stream is a non-empty 1-D array")
    dtype = np.uint16 if ids.max() < 2**16 and ids.min() >= 0 else np.int32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, ids=ids.astype(dtype), tokenizer=np.array(tokenizer), source=np.array(source))
    return path


def read_token_file(path) -> tuple[np.ndarray, str]:
    p = Path(path)
    if not p.is_file():
        raise BenchConfigError(f"token file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            ids = np.asarray(z["ids"], dtype=np.int64)
            desc = f"{p.name}: {z['source']} tokenized by {z['tokenizer']}" if "source" in z.files else p.name
    except (OSError, ValueError, KeyError) as e:
        raise BenchConfigError(f"token file {p}: cannot read `ids`: {e}") from e
    if ids.ndim != 1 or ids.size < 2:
        raise BenchConfigError(f"token file {p}: `ids` must be a 1-D array of token ids, got shape {ids.shape}")
    return ids, str(desc)


def tokenize_stream(tokenizer, texts, n_tokens: int = DEFAULT_STREAM_TOKENS) -> np.ndarray:
    """Texts tokenized without special tokens and concatenated until n_tokens ids (int64)."""
    out: list[int] = []
    for t in texts:
        out.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if len(out) >= n_tokens:
            break
    if len(out) < 2:
        raise BenchConfigError("the texts gave no tokens")
    return np.asarray(out[:n_tokens], dtype=np.int64)


def token_stream(plan_path, token_file: str | None = None) -> tuple[np.ndarray, str]:
    """(real token ids, where they come from) for the model of `plan_path`: the token file if given,
    else Wikipedia text tokenized by the plan's tokenizer (trtrun.data.tokenizer_for)."""
    from ..plan import load_plan

    plan = load_plan(plan_path)
    vocab = plan.vocab_size
    if token_file:
        ids, desc = read_token_file(token_file)
    else:
        from .. import data

        tok = data.tokenizer_for(plan)
        ids = tokenize_stream(tok, data.load_texts("wiki"))
        desc = f"wiki.txt tokenized by {type(tok).__name__} ({getattr(tok, 'name_or_path', '')})"
    if vocab is not None and int(ids.max()) >= vocab:
        raise BenchConfigError(f"token ids reach {int(ids.max())} but the model's vocabulary has {vocab} "
                               f"entries: the token source ({desc}) belongs to another tokenizer")
    return ids, desc


def make_sets(stream: np.ndarray, batch: int, seq: int, n_sets: int, input_names, *, seed: int = 0,
              type_vocab: int | None = 2) -> list[dict[str, np.ndarray]]:
    """n_sets feed dicts of [batch, seq] int64 arrays of real token ids (see the module docstring)."""
    stream = np.asarray(stream, dtype=np.int64)
    if stream.size < seq:
        reps = -(-seq // stream.size)
        stream = np.tile(stream, reps)
    rng = np.random.default_rng([seed, batch, seq])
    names = set(input_names)
    sets = []
    for _ in range(n_sets):
        offs = rng.integers(0, stream.size - seq + 1, size=batch)
        ids = np.stack([stream[o:o + seq] for o in offs]).astype(np.int64)
        feeds = {"input_ids": np.ascontiguousarray(ids)}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((batch, seq), np.int64)
        if "token_type_ids" in names:
            tt = np.zeros((batch, seq), np.int64)
            if (type_vocab or 1) >= 2:
                tt[:, seq // 2:] = 1
            feeds["token_type_ids"] = tt
        sets.append(feeds)
    return sets
