"""The inputs `trtrun check` runs: real text (or a user's file) tokenized, and random token ids of matched
lengths; batching by length.

A `SampleSet` holds N samples as right-padded int64 arrays [N, L] (input_ids, attention_mask and, for
BERT, token_type_ids) plus each sample's source ("rt", "wiki", "random", a file name). Batches are cut
from samples sorted by length, so a batch carries little padding; results are mapped back by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

I64 = np.int64
ID_SUFFIXES = (".npy", ".npz", ".json")


@dataclass
class SampleSet:
    name: str                           # "real" or "random" (the report's name for this set)
    feeds: dict[str, np.ndarray]        # int64 [N, L], right-padded
    sources: list[str] = field(default_factory=list)
    texts: list[str] | None = None
    note: str = ""

    @property
    def n(self) -> int:
        return int(self.feeds["input_ids"].shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.feeds["attention_mask"].sum(axis=1).astype(I64)

    def subset(self, idx) -> "SampleSet":
        idx = np.asarray(idx, dtype=I64)
        feeds = {k: v[idx] for k, v in self.feeds.items()}
        return SampleSet(self.name, feeds, [self.sources[i] for i in idx],
                         None if self.texts is None else [self.texts[i] for i in idx], self.note)


def _left_aligned(mask: np.ndarray) -> bool:
    """Every row's valid tokens come first (right padding), which trtrun's profile and length buckets assume."""
    lengths = mask.sum(axis=1)
    cols = np.arange(mask.shape[1])[None, :]
    return bool(np.array_equal(mask.astype(bool), cols < lengths[:, None]))


def check_data_spec(spec: str, *, present: bool = True) -> None:
    """Refuse a --data SPEC that names nothing before any slow work: it must be 'random', an existing file,
    or a comma list of data sets (rt, wiki, imdb). present=True also asks that those sets' files are in the
    data folder (DataError with how to fetch them)."""
    from .. import data

    if spec == "random" or Path(spec).is_file():
        return
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in data.TEXT_SETS]
    if not names or bad:
        raise InputError(f"--data {spec!r}: not a file, and {bad or [spec]} not among the data sets "
                         f"{', '.join(data.TEXT_SETS)} (or 'random')")
    if present:
        for name in names:
            data.text_set_file(name)


def real_samples(spec: str, n: int, *, tokenizer, max_len: int, seed: int = 0) -> SampleSet:
    """Real inputs: spec is a comma list of data sets (rt, wiki, imdb; n split evenly among them, a
    seeded draw from each), a text file (one text a line), or an ids file (.npy/.npz/.json)."""
    from .. import data

    p = Path(spec)
    if p.suffix.lower() in ID_SUFFIXES and p.is_file():
        feeds = data.load_ids(p)
        if feeds["input_ids"].shape[1] > max_len:
            raise InputError(f"{p}: sequences of {feeds['input_ids'].shape[1]} tokens exceed the plan's "
                             f"largest sequence {max_len}")
        if not _left_aligned(feeds["attention_mask"]):
            raise InputError(f"{p}: attention_mask must be right-padded (ones first, then zeros) in every row")
        if (feeds["attention_mask"].sum(axis=1) == 0).any():
            raise InputError(f"{p}: a row has no valid token (attention_mask all 0)")
        k = min(n, feeds["input_ids"].shape[0])
        feeds = {key: v[:k] for key, v in feeds.items()}
        return SampleSet("real", feeds, [p.name] * k, None, f"token ids from {p.name}")
    if p.is_file():
        texts = data.load_text_file(p)[:n]
        sources = [p.name] * len(texts)
        note = f"{len(texts)} texts from {p.name}"
    else:
        check_data_spec(spec, present=False)
        names = [s.strip() for s in spec.split(",") if s.strip()]
        texts, sources = [], []
        for i, name in enumerate(names):
            k = n // len(names) + (1 if i < n % len(names) else 0)
            try:
                got = data.load_texts(name, n=k, seed=seed)
            except ValueError:  # fewer texts than asked for: take them all
                got = data.load_texts(name, n=None, seed=seed)
            k = len(got)
            texts += got
            sources += [name] * k
        note = ", ".join(f"{sources.count(s)} from {s}" for s in names)
    if not texts:
        raise InputError(f"--data {spec!r} gives no text")
    if tokenizer is None:
        raise InputError("real text needs a tokenizer: pass --tokenizer DIR (or use --data random)")
    feeds = data.encode(tokenizer, texts, max_len)
    return SampleSet("real", feeds, sources, texts, note)


def _special_ids(tokenizer) -> set[int]:
    if tokenizer is None:
        return set()
    try:
        return {int(i) for i in tokenizer.all_special_ids}
    except Exception:  # noqa: BLE001 - a tokenizer without the attribute simply has none we know
        return set()


def random_like(real: SampleSet, vocab_size: int, *, tokenizer=None, seed: int = 1) -> SampleSet:
    """Random token ids with exactly the real samples' lengths and masks.

    Every position holding a special token in the real sample ([CLS], [SEP], ...) keeps it; every other
    valid position gets an id drawn uniformly from the vocabulary without the special ids; padding
    stays padding; token_type_ids are kept. So the two sets differ in content only."""
    special = _special_ids(tokenizer)
    pool = np.setdiff1d(np.arange(vocab_size, dtype=I64), np.fromiter(special, I64, len(special)))
    rng = np.random.default_rng(seed)
    ids = real.feeds["input_ids"].copy()
    mask = real.feeds["attention_mask"].astype(bool)
    keep = np.isin(ids, list(special)) if special else np.zeros_like(mask)
    draw = mask & ~keep
    ids[draw] = pool[rng.integers(0, pool.size, size=int(draw.sum()))]
    ids[~mask] = real.feeds["input_ids"][~mask]
    feeds = dict(real.feeds)
    feeds["input_ids"] = ids
    note = (f"uniform random ids over {pool.size} non-special vocabulary entries, lengths, masks and special "
            f"tokens as the real samples")
    return SampleSet("random", feeds, ["random"] * real.n, None, note)


def random_samples(n: int, vocab_size: int, *, max_len: int, min_len: int = 8, seed: int = 1,
                   token_types: bool = False) -> SampleSet:
    """n samples of uniform random ids with lengths drawn log-uniformly from [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    lo = max(1, min(min_len, max_len))
    lengths = np.round(np.exp(rng.uniform(np.log(lo), np.log(max_len), size=n))).astype(I64).clip(lo, max_len)
    L = int(lengths.max())
    ids = rng.integers(0, vocab_size, size=(n, L), dtype=I64)
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(I64)
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        feeds["token_type_ids"] = np.zeros_like(ids)
    note = f"uniform random ids over all {vocab_size} vocabulary entries, lengths log-uniform in [{lo}, {max_len}]"
    return SampleSet("random", feeds, ["random"] * n, None, note)


def batches(samples: SampleSet, batch_size: int, *, seq_min: int = 1, batch_min: int = 1):
    """Yield (indices, feeds): samples sorted by length (longest first), batch_size at a time, each batch
    cut to its longest sample (at least seq_min columns) and topped up to batch_min rows with copies of
    its first row (results of those rows are to be dropped: len(indices) rows are real)."""
    lengths = samples.lengths
    order = np.argsort(-lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        L = max(int(lengths[idx].max()), seq_min)
        feeds = {k: np.ascontiguousarray(_fit(v[idx], L)) for k, v in samples.feeds.items()}
        if len(idx) < batch_min:
            extra = batch_min - len(idx)
            feeds = {k: np.concatenate([v, np.repeat(v[:1], extra, axis=0)]) for k, v in feeds.items()}
        yield idx, feeds


def _fit(a: np.ndarray, L: int) -> np.ndarray:
    if a.shape[1] >= L:
        return a[:, :L]
    return np.pad(a, ((0, 0), (0, L - a.shape[1])))
