"""Real text and tokenizers for tests, reports and the CLI, read from a local data folder only.

The folder is `$TRTRUN_DATA`, else `.data` in the current directory, else `.data` in the repository
root (the parent of this package in a source checkout). ../shared/data/get-data.sh fills it:

    rt_polarity.tsv    label<TAB>text, 8,530 Rotten Tomatoes sentences (1 = positive)
    imdb.tsv           label<TAB>text, 25,000 IMDB reviews
    wiki.txt           Wikipedia paragraphs, one a line
    minilm/            all-MiniLM-L6-v2 (BERT, real weights) with its tokenizer
    gpt2-tokenizer/    GPT-2 byte-level BPE (vocab.json + merges.txt)

Tokenizers are loaded with transformers from local folders only, never from a hub (HF_HUB_OFFLINE is
set before transformers is imported, and every load passes local_files_only). transformers is imported
lazily, inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, TrtrunError

FETCH_HINT = "fetch it with: ../shared/data/get-data.sh {dest}"

_TEXT_FILES = {"rt": "rt_polarity.tsv", "imdb": "imdb.tsv", "wiki": "wiki.txt"}
TEXT_SETS = tuple(_TEXT_FILES)

# Tokenizer folders get-data.sh provides, by the vocabulary size of the model they belong to:
# 30522 is BERT-base-uncased's WordPiece vocabulary (all-MiniLM-L6-v2 uses it), 50257 GPT-2's BPE.
_TOKENIZER_BY_VOCAB = {30522: "minilm", 50257: "gpt2-tokenizer"}


class DataError(TrtrunError):
    """A data file or tokenizer folder is missing or unreadable; the message says how to fetch it."""


def data_dir() -> Path:
    """The data folder: $TRTRUN_DATA, else ./.data, else <repository root>/.data (may not exist yet)."""
    env = os.environ.get("TRTRUN_DATA")
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd() / ".data"
    if cwd.exists():
        return cwd
    repo = Path(__file__).resolve().parent.parent / ".data"
    if repo.exists():
        return repo
    return cwd


def _data_file(name: str) -> Path:
    d = data_dir()
    p = d / name
    if not p.exists():
        raise DataError(f"data file {p} is missing; " + FETCH_HINT.format(dest=d))
    return p


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}: {e.reason}); "
                        f"save it as UTF-8") from None


def _read_labeled(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: expected 'label<TAB>text' with label 0 or 1, got {line[:60]!r}")
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def _sample(items: list, n: int | None, seed: int, what: str) -> list:
    if n is None:
        return list(items)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > len(items):
        raise ValueError(f"asked for {n} texts from {what}, which has only {len(items)}")
    idx = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in idx]


def text_set_file(name: str) -> Path:
    """The file of data set `name` ('rt', 'wiki', 'imdb'); DataError (how to fetch it) where it is missing."""
    if name not in _TEXT_FILES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(TEXT_SETS)}")
    return _data_file(_TEXT_FILES[name])


def load_texts(name: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Texts of data set `name` ('rt', 'wiki', 'imdb').

    n=None: every text, in file order. Otherwise n texts drawn without replacement by a generator
    seeded with `seed` (same n and seed, same texts), so samples mix lengths and sources.
    """
    path = text_set_file(name)
    if name == "wiki":
        texts = [line for line in _read_lines(path) if line.strip()]
    else:
        texts = _read_labeled(path)[0]
    return _sample(texts, n, seed, path.name)


def load_rt_labeled() -> tuple[list[str], np.ndarray]:
    """All Rotten Tomatoes sentences and their labels (int64, 1 = positive), in file order."""
    texts, labels = _read_labeled(_data_file(_TEXT_FILES["rt"]))
    return texts, np.asarray(labels, dtype=np.int64)


def load_text_file(path: str | os.PathLike) -> list[str]:
    """One text a line from a user's file (blank lines skipped); a .tsv keeps the text after the last tab."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text file {p} does not exist")
    lines = [line for line in _read_lines(p) if line.strip()]
    if p.suffix == ".tsv":
        lines = [line.rsplit("\t", 1)[-1] for line in lines]
    if not lines:
        raise InputError(f"text file {p} has no non-empty line")
    return lines


# ---------------------------------------------------------------------------------------------- tokenizers

def _import_transformers():
    # Never reach a hub: these must be set before transformers (huggingface_hub) is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from ._optional import require

    return require("transformers", "tokenizing text")


def is_tokenizer_dir(d: Path) -> bool:
    """Whether folder `d` holds a tokenizer load_tokenizer can read."""
    d = Path(d)
    return d.is_dir() and (
        (d / "tokenizer.json").exists()
        or (d / "vocab.txt").exists()
        or ((d / "vocab.json").exists() and (d / "merges.txt").exists())
    )


_is_tokenizer_dir = is_tokenizer_dir  # old private name, still used by callers


def load_tokenizer(directory: str | os.PathLike):
    """A fast tokenizer from a local folder (tokenizer.json / vocab.txt, or GPT-2's vocab.json + merges.txt)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"tokenizer folder {d} does not exist")
    if not is_tokenizer_dir(d):
        raise DataError(f"{d} holds no tokenizer (expected tokenizer.json, vocab.txt, or vocab.json + merges.txt)")
    transformers = _import_transformers()
    try:
        if (d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists() or (d / "vocab.txt").exists():
            tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        else:
            tok = transformers.GPT2TokenizerFast.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for broken folders
        raise DataError(f"cannot load the tokenizer in {d}: {type(e).__name__}: {e}") from e
    if tok.pad_token is None:  # GPT-2 has none; padded positions are masked out anyway
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def tokenizer_for(plan_or_model_dir: Any):
    """The tokenizer that belongs to a plan, a model folder, or a tokenizer folder.

    A path to a folder: that folder's tokenizer. A Plan (or a path to a .plan file): a tokenizer folder
    beside the plan's source ONNX if there is one, else the data folder's tokenizer for the plan's
    vocabulary size (30522 -> minilm/, 50257 -> gpt2-tokenizer/).
    """
    obj = plan_or_model_dir
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir():
            return load_tokenizer(p)
        if p.suffix == ".plan" and p.is_file():
            from .plan import load_plan

            obj = load_plan(p)
        else:
            raise DataError(f"{p} is neither a tokenizer/model folder nor a .plan file")
    header = getattr(obj, "header", None)
    if not isinstance(header, dict):
        raise TypeError(f"tokenizer_for expects a Plan or a folder path, got {type(obj).__name__}")
    src = (header.get("source") or {}).get("path")
    if src:
        for cand in (Path(src).parent, Path(src).parent / "tokenizer"):
            if is_tokenizer_dir(cand):
                return load_tokenizer(cand)
    vocab = (header.get("model") or {}).get("vocab_size")
    sub = _TOKENIZER_BY_VOCAB.get(vocab)
    if sub is None:
        raise DataError(
            f"no tokenizer known for a model with vocabulary size {vocab}; pass a tokenizer folder (--tokenizer DIR)"
        )
    d = data_dir() / sub
    if not d.exists():
        raise DataError(f"tokenizer folder {d} is missing; " + FETCH_HINT.format(dest=data_dir()))
    return load_tokenizer(d)


def encode(tokenizer, texts: list[str], max_len: int) -> dict[str, np.ndarray]:
    """Tokenize `texts` into one right-padded int64 batch, truncated to `max_len` tokens.

    Returns input_ids and attention_mask [B, S] (S = the longest text, at most max_len), and
    token_type_ids when the tokenizer makes them (BERT). A text that gives no token is an error
    (a row with every key masked has no meaning).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise InputError("no text to encode")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="np")
    out = {k: np.ascontiguousarray(np.asarray(v, dtype=np.int64)) for k, v in enc.items()
           if k in ("input_ids", "attention_mask", "token_type_ids")}
    lengths = out["attention_mask"].sum(axis=1)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InputError(f"text {int(empty[0])} ({texts[empty[0]][:40]!r}) gives no token")
    return out


# ---------------------------------------------------------------------------------------------- token ids

def _int_array(value, what: str, source) -> np.ndarray:
    if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
        lengths = {len(r) for r in value}
        if len(lengths) > 1:
            raise InputError(f"{source}: rows of {what} have different lengths {sorted(lengths)}; "
                             "give attention_mask with padded rows, or use input_ids only (padded for you)")
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as e:
        raise InputError(f"{source}: {what} is not a rectangular integer array: {e}") from e
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{source}: {what} must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{source}: {what} must be [batch, sequence], got shape {list(arr.shape)}")
    if arr.size == 0:
        raise InputError(f"{source}: {what} is empty (shape {list(arr.shape)})")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{source}: {what} has values beyond int64")
    return np.ascontiguousarray(arr.astype(np.int64))


def load_ids(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Token ids from a file, as int64 [B, S] feeds.

    .npy: input_ids [B, S] (or [S]); .npz: named arrays (input_ids, attention_mask, token_type_ids);
    .json: a list of id lists (rows may differ in length: right-padded with 0 and masked), or an object
    with those names. attention_mask defaults to all ones where not given and rows are equal.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ids file {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            raw = {"input_ids": np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        elif suffix == ".json":
            with open(p, encoding="utf-8") as f:
                obj = json.load(f)
            raw = obj if isinstance(obj, dict) else {"input_ids": obj}
        else:
            raise InputError(f"ids file {p}: expected .npy, .npz or .json, got {suffix or 'no suffix'}")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read ids file {p}: {e}") from e
    if "input_ids" not in raw:
        raise InputError(f"ids file {p} has no input_ids (it has: {', '.join(raw) or 'nothing'})")
    ragged = (isinstance(raw["input_ids"], list) and "attention_mask" not in raw
              and len({len(r) for r in raw["input_ids"] if isinstance(r, list)}) > 1)
    if ragged and not all(isinstance(r, list) for r in raw["input_ids"]):
        bad = next(i for i, r in enumerate(raw["input_ids"]) if not isinstance(r, list))
        raise InputError(f"ids file {p}: input_ids row {bad} is {raw['input_ids'][bad]!r}, not a list of ids")
    if ragged:
        rows = raw["input_ids"]
        width = max(len(r) for r in rows)
        raw = dict(raw)
        raw["attention_mask"] = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        raw["input_ids"] = [list(r) + [0] * (width - len(r)) for r in rows]
    feeds = {k: _int_array(v, k, p) for k, v in raw.items()}
    shape = feeds["input_ids"].shape
    for k, v in feeds.items():
        if v.shape != shape:
            raise InputError(f"ids file {p}: {k} has shape {list(v.shape)}, input_ids {list(shape)}")
    feeds.setdefault("attention_mask", np.ones(shape, dtype=np.int64))
    return feeds
