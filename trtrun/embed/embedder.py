"""Text embeddings from a trtrun plan: tokenize, pack by length under a token budget, run, pool, normalize.

    from trtrun import Embedder
    emb = Embedder("minilm.hybrid.plan", ".data/minilm")       # or an .onnx (a hybrid plan is built)
    vectors = emb.embed(["a fine film", "a dull one"])         # float32 [2, dim], rows in input order
    result = emb.embed_result(texts)                           # + .truncated, .num_tokens per text

Why it is built this way:
- Padding is wasted compute. Texts are sorted by token count (longest first) and cut into engine batches
  whose padded size (rows x longest row) stays under `max_tokens_per_batch` and whose row count stays
  under the plan's batch maximum; each batch is padded only to its own longest text. Padded keys are
  masked, so a text's vector does not depend on its batch mates (up to floating-point rounding of
  differently shaped GEMMs).
- Thread safety: the Hugging Face fast tokenizer mutates its Rust backend's truncation/padding settings
  on every call (concurrent calls fail with "Already borrowed"), so the Embedder keeps its own copy of the
  backend tokenizer, configured once and only read afterwards. Engine work goes through a pool of
  `contexts` runners (GPU execution contexts, or reference backends on the CPU); a caller takes one per
  engine batch and gives it back, so any number of threads may call `embed` at once.
- Truncation is explicit. The default, "reject", follows OpenAI's embeddings API: a text over
  `max_seq_len` tokens raises InputTooLongError naming it, with its token count and the limit (a vector
  of a silently cut text is a vector of some other text). "truncate" cuts such a text to `max_seq_len`
  tokens (special tokens kept) and says so in EmbedResult.truncated.
- Bad text fails alone. check_texts refuses what the tokenizer cannot take (non-str items, and str
  that is not valid Unicode: lone surrogates, which JSON's "\ud800" escapes let through) with
  InvalidTextError naming the index, before the text joins a batch; and embed_groups, if a shared batch
  still fails, runs each caller's texts again alone, so one caller's failure is not its batch mates'.
- Pooling defaults to what a sentence-transformers folder says (modules.json / 1_Pooling/config.json);
  without one, mean pooling.

The micro-batcher for services (gathering concurrent callers' requests) is trtrun.serve.MicroBatcher;
it calls `embed_groups`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..backends import choose_backend
from ..errors import InputError, ShapeError, TrtrunError
from ..runtime.options import ContextOptions
from ..types import (BACKEND_CHOICES as BACKENDS, DEFAULT_CONTEXTS, DEFAULT_MAX_TOKENS_PER_BATCH, GEMM_SEARCH_DEFAULTS,
                     POOLINGS, TRUNCATIONS)
from .batching import pack_batches
from .plans import plan_for_onnx
from .pooling import pool, read_st_pooling, sentence_head, st_max_seq_length
from .text import InputTooLongError, InvalidTextError, TextEncoder, check_texts

# observer(rows, seq_len, real_tokens, seconds): called after every engine batch (metrics)
BatchObserver = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class EmbedResult:
    """What `Embedder.embed_result` returns: one row per input text, in the caller's order."""

    embeddings: np.ndarray  # float32 [n, dim]
    truncated: np.ndarray  # bool [n]: the text was cut to max_seq_len tokens
    num_tokens: np.ndarray  # int64 [n]: tokens the model saw (special tokens included, after truncation)

    @classmethod
    def empty(cls, dim: int) -> "EmbedResult":
        """The result for no texts."""
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, bool), np.zeros(0, np.int64))

    @property
    def total_tokens(self) -> int:
        return int(self.num_tokens.sum())

    @property
    def any_truncated(self) -> bool:
        return bool(self.truncated.any())

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class Encoded:
    """Tokenized texts, unpadded: ids[i] (the token ids of text i: a list of ints or an int64 array),
    type_ids[i] likewise, or type_ids None when they are all 0; truncated[i]; lengths[i]."""

    ids: list
    type_ids: list | None
    truncated: np.ndarray
    lengths: np.ndarray

    def take(self, idx: Sequence[int]) -> "Encoded":
        idx = list(idx)
        return Encoded([self.ids[i] for i in idx],
                       [self.type_ids[i] for i in idx] if self.type_ids is not None else None,
                       self.truncated[idx], self.lengths[idx])



class Embedder:
    """Sentence embeddings from an encoder plan (or an ONNX file, built to a hybrid plan on first use).

    plan_or_onnx: a trtrun Plan, a .plan file, or an .onnx file (a plan is built with `precision` and
        `profile` and cached beside it as <stem>.<precision>.plan, or in the temp folder when that
        folder is not writable; reused while the ONNX file's SHA-256 matches).
    tokenizer_dir: folder with the tokenizer; None = the one trtrun.data.tokenizer_for(plan) finds.
    pooling: "mean", "cls", "max", "mean_sqrt_len", or None = read the sentence-transformers pooling
        config in the tokenizer folder (or beside the model) where there is one, else "mean".
    normalize: L2-normalize each vector (sentence-transformers' Normalize module; cosine = dot product).
    contexts: engine runners in the pool (GPU execution contexts or reference backends): how many engine
        batches may run at once.
    max_tokens_per_batch: padded tokens (rows x longest row) per engine batch; default 16384 capped by
        the profile's batch max x sequence max, never below one maximum-length text.
    max_batch_size: rows per engine batch (default and maximum: the profile's batch max).
    max_seq_len: tokens per text (default: the profile's sequence max, capped by the sentence-transformers
        max_seq_length and the tokenizer's model_max_length where those exist).
    truncation: "reject" (default, as OpenAI's API: a text over max_seq_len tokens raises InputTooLongError
        with its token count and the limit) or "truncate" (cut longer texts, reported in
        EmbedResult.truncated).
    backend: "auto" (GPU runtime where usable, else the numpy reference backend), "gpu", "reference".
    gemm_cache: a GEMM cache file (trtrun.runtime.save_gemm_cache) whose choices the GPU contexts take.
    gemm_search: how the GPU contexts choose a GEMM algorithm for a shape they meet for the first time
        (trtrun.runtime Engine.create_context). Default "heuristic" (~0.1 s a shape), not the runtime's
        "focused" (3-5 s for the first shape, up to ~2 s for later ones; 1-4% faster end to end on H200s,
        mixed on H100s): a service meets each (batch, sequence bucket) shape
        first in a request, which would wait for the tuning. To serve with focused choices, tune them
        before (e.g. `trtrun bench --gemm-cache FILE` over the shapes served) and pass gemm_cache=FILE with
        gemm_search="focused": shapes found there are not timed again.
    """

    def __init__(self, plan_or_onnx: Any, tokenizer_dir=None, *, pooling: str | None = None,
                 normalize: bool = True, contexts: int = DEFAULT_CONTEXTS,
                 max_tokens_per_batch: int | None = None, max_batch_size: int | None = None,
                 max_seq_len: int | None = None, truncation: str = "reject", backend: str = "auto",
                 precision: str = "hybrid", profile: dict | None = None, device: int = 0,
                 output: str | None = None, progress=None, gemm_cache=None,
                 gemm_search: str = GEMM_SEARCH_DEFAULTS["embedder"]):
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} or None, got {pooling!r}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not isinstance(contexts, int) or contexts < 1:
            raise ValueError(f"contexts must be a positive integer, got {contexts!r}")
        # the GPU contexts' options, checked here on every backend (InputError naming a bad one)
        self.context_options = ContextOptions(gemm_search=gemm_search)
        self.gemm_search = self.context_options.gemm_search

        self.plan, self.plan_path, self.from_onnx = self._resolve_plan(plan_or_onnx, precision, profile, progress)
        # A plan whose sentence vector passes modules after the pooling (a sentence-transformers Dense, as in
        # sentence-T5, GTR, LaBSE) gives that vector: pooling the token states here would skip those modules.
        # Otherwise the Embedder pools the token states itself, and outputs it does not read (a plain pooled
        # sentence_embedding) are dropped, so they cost no time.
        head = sentence_head(self.plan) if output is None and pooling is None else None
        self.output = head or self._pick_output(self.plan, output)
        self.plan = plan = self.plan.keep_outputs([self.output])
        self.dim = int(plan.outputs[0]["shape"][-1])
        self.input_names = [i["name"] for i in plan.inputs]

        # tokenizer
        self.tokenizer, self.tokenizer_dir, self._model_max_length = self._load_tokenizer(tokenizer_dir)

        # pooling
        self.pooling, self.pooling_source = pooling, "given"
        if head is not None:
            tail = [op["type"] for op in plan.ops if len(plan.tensors[op["outputs"][0]]["shape"]) == 2]
            self.pooling, self.pooling_source = "plan", f"the plan's own {head!r} ({' -> '.join(tail)})"
        elif pooling is None:
            self.pooling, self.pooling_source = "mean", "default (no sentence-transformers pooling config found)"
            for d in self._model_dirs():
                mode, where = read_st_pooling(d)
                if mode is not None:
                    self.pooling, self.pooling_source = mode, where
                    break
        self.normalize = bool(normalize)
        self.truncation = truncation

        # limits from the profile
        b_lo, _, b_hi = (int(v) for v in plan.profile["batch"])
        s_lo, _, s_hi = (int(v) for v in plan.profile["seq"])
        self.min_batch, self.min_seq = b_lo, s_lo
        if max_batch_size is None:
            max_batch_size = b_hi
        if not isinstance(max_batch_size, int) or not b_lo <= max_batch_size <= b_hi:
            raise ShapeError(f"max_batch_size {max_batch_size!r} is outside the plan's profile batch range "
                             f"[{b_lo}, {b_hi}]; rebuild the plan with a wider profile")
        self.max_batch_size = max_batch_size
        limit, why = s_hi, f"the plan's profile sequence max {s_hi}"
        for d in self._model_dirs():
            st = st_max_seq_length(d)
            if st is not None and st < limit:
                limit, why = st, f"sentence-transformers max_seq_length {st} ({d})"
                break
        mml = self._model_max_length
        if isinstance(mml, int) and 0 < mml < limit:
            limit, why = mml, f"the tokenizer's model_max_length {mml}"
        if max_seq_len is not None:
            if not isinstance(max_seq_len, int) or max_seq_len < 1:
                raise ValueError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
            if max_seq_len > s_hi:
                raise ShapeError(f"max_seq_len {max_seq_len} exceeds the plan's profile sequence max {s_hi}; "
                                 f"rebuild the plan with a wider profile")
            limit, why = max_seq_len, "given"
        if limit < max(2, s_lo):
            raise ShapeError(f"max sequence length {limit} ({why}) is below what a text needs "
                             f"(at least 2 tokens, and the profile's sequence min {s_lo})")
        self.max_seq_len, self.max_seq_len_source = limit, why
        if max_tokens_per_batch is None:
            max_tokens_per_batch = max(min(DEFAULT_MAX_TOKENS_PER_BATCH, self.max_batch_size * limit), limit)
        if not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch < limit:
            raise ValueError(f"max_tokens_per_batch must be an integer >= max_seq_len ({limit}) so that every "
                             f"text fits a batch, got {max_tokens_per_batch!r}")
        self.max_tokens_per_batch = max_tokens_per_batch

        self._setup_tokenizer()

        # runners
        self.contexts = contexts
        self.backend, self.backend_reason = self._pick_backend(backend, device, plan)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        self._closers: list = []
        self._engine = None
        # GEMM algorithms tuned elsewhere (trtrun.runtime.save_gemm_cache, e.g. an exhaustive search): taken before
        # the first runs, so this process times none of those shapes again. Checked on every backend (a wrong
        # path is an error at once), used only by the GPU one.
        self.gemm_cache, self.gemm_cache_entries = (str(gemm_cache) if gemm_cache is not None else None), None
        if gemm_cache is not None:
            from .. import runtime

            if self.backend == "gpu":
                self.gemm_cache_entries = runtime.load_gemm_cache(gemm_cache)
            else:
                runtime.read_gemm_cache(gemm_cache)
        if self.backend == "gpu":
            from .. import runtime

            self._engine = runtime.Engine(plan, device=device)  # the plan in memory: no file written or read again
            for _ in range(contexts):
                ctx = self._engine.create_context(self.context_options)
                self._closers.append(getattr(ctx, "close", None))
                self._pool.put(ctx.run)
        else:
            from ..reference import ReferenceBackend

            for _ in range(contexts):
                self._pool.put(ReferenceBackend(plan).run)
        self._fanout = ThreadPoolExecutor(max_workers=contexts, thread_name_prefix="trtrun-embed") \
            if contexts > 1 else None
        self._closed = False

    # ---------------------------------------------------------------- setup
    @staticmethod
    def _resolve_plan(obj, precision, profile, progress):
        from ..plan import Plan, load_plan

        if isinstance(obj, Plan):
            return obj, obj.path, False
        if not isinstance(obj, (str, os.PathLike)):
            raise TypeError(f"Embedder needs a Plan or a path to a .plan or .onnx file, got {type(obj).__name__}")
        p = Path(obj)
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.suffix.lower() == ".onnx":
            return (*plan_for_onnx(p, precision, profile, progress), True)
        plan = load_plan(p)
        return plan, p, False

    def _model_dirs(self) -> list[Path]:
        dirs = []
        if self.tokenizer_dir is not None:
            dirs.append(self.tokenizer_dir)
        src = (self.plan.header.get("source") or {}).get("path")
        for p in (Path(src) if src else None, self.plan_path):
            if p is not None:
                dirs.append(p.parent)
        out = []
        for d in dirs:
            if d not in out and d.is_dir():
                out.append(d)
        return out

    def _pick_output(self, plan, output):
        """The token-state output [B, S, N] the Embedder pools (`output`, else last_hidden_state, else the first of
        rank 3); InputError for an output of another shape."""
        outs = {o["name"]: o for o in plan.outputs}
        if output is not None:
            if output not in outs:
                raise InputError(f"the plan has no output {output!r} (it has {', '.join(outs)})")
            name = output
        elif "last_hidden_state" in outs:
            name = "last_hidden_state"
        else:
            name = next((n for n, o in outs.items() if len(o["shape"]) == 3), next(iter(outs)))
        shape = outs[name]["shape"]
        if len(shape) != 3 or shape[:2] != ["B", "S"] or not isinstance(shape[2], int):
            raise InputError(f"output {name!r} has shape {shape}; embeddings need hidden states [B, S, N]")
        self._out_shape = shape
        return name

    def _load_tokenizer(self, tokenizer_dir):
        """-> (Hugging Face tokenizer or None, its folder or None, model_max_length or None).

        A folder with tokenizer.json is read by the `tokenizers` library directly (what a Hugging Face fast
        tokenizer wraps; the same ids, checked on 9,000 texts), which spares importing transformers and
        torch: seconds at every server start. Otherwise transformers loads it (trtrun.data).
        """
        from .. import data

        self._backend_tok_src = None
        if tokenizer_dir is not None:
            d = Path(tokenizer_dir)
            if (d / "tokenizer.json").is_file():
                try:
                    from tokenizers import Tokenizer
                except ImportError:
                    Tokenizer = None
                if Tokenizer is not None:
                    try:
                        self._backend_tok_src = Tokenizer.from_file(str(d / "tokenizer.json"))
                    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception
                        raise data.DataError(f"cannot load the tokenizer in {d}: {e}") from e
                    mml = None
                    try:
                        conf = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
                        mml = conf.get("model_max_length")
                    except (OSError, ValueError):
                        pass
                    return None, d, mml if isinstance(mml, int) else None
            tok = data.load_tokenizer(d)
        else:
            tok = data.tokenizer_for(self.plan)
            name = getattr(tok, "name_or_path", None)
            d = Path(name) if name and Path(name).is_dir() else None
        if getattr(tok, "is_fast", False):
            from tokenizers import Tokenizer

            self._backend_tok_src = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        mml = getattr(tok, "model_max_length", None)
        return tok, d, mml if isinstance(mml, int) else None

    def _setup_tokenizer(self):
        self._tok_lock = None
        self._backend_tok = None
        self._encoder = None
        if self._backend_tok_src is not None:
            self._encoder = TextEncoder(self._backend_tok_src, self.max_seq_len)
            self._backend_tok = self._encoder.tokenizer
        else:  # a slow tokenizer: its Python calls are serialized
            self._tok_lock = threading.Lock()

    def _pick_backend(self, backend: str, device: int, plan) -> tuple[str, str]:
        name, reason = choose_backend(backend, device, option="backend='gpu'", plan=plan)
        if name == "reference" and backend != "reference":
            reason = f"GPU runtime not usable: {reason}"
        return name, reason

    @property
    def model_name(self) -> str:
        p = self.plan_path or (self.plan.header.get("source") or {}).get("path") or "model"
        name = Path(p).name
        for suf in (".plan", ".onnx"):
            if name.endswith(suf):
                name = name[: -len(suf)]
        return name

    def describe(self) -> dict:
        return {"model": self.model_name, "plan": str(self.plan_path) if self.plan_path else None,
                "precision": self.plan.precision, "backend": self.backend, "backend_reason": self.backend_reason,
                "contexts": self.contexts, "dim": self.dim, "pooling": self.pooling,
                "pooling_source": self.pooling_source, "normalize": self.normalize,
                "max_seq_len": self.max_seq_len, "max_seq_len_source": self.max_seq_len_source,
                "max_batch_size": self.max_batch_size, "max_tokens_per_batch": self.max_tokens_per_batch,
                "truncation": self.truncation,
                "gemm_search": self.gemm_search,
                **({"gemm_cache": self.gemm_cache, "gemm_cache_entries_taken": self.gemm_cache_entries}
                   if self.gemm_cache is not None else {})}

    def __repr__(self) -> str:
        d = self.describe()
        return (f"<trtrun.Embedder {d['model']} {d['precision']} on {d['backend']}, dim {d['dim']}, "
                f"pooling {d['pooling']}, max_seq_len {d['max_seq_len']}, contexts {d['contexts']}>")

    # ---------------------------------------------------------------- tokenize
    check_texts = staticmethod(check_texts)


    def tokenize(self, texts) -> Encoded:
        """Token ids per text (special tokens added, cut to max_seq_len), unpadded; no policy applied."""
        texts = self.check_texts(texts)
        if not texts:
            return Encoded([], None, np.zeros(0, bool), np.zeros(0, np.int64))
        want_types = "token_type_ids" in self.input_names
        if self._encoder is not None:
            encs = self._encoder.encode(texts)
            ids = [e.ids for e in encs]  # lists of ints: numpy arrays per text cost more than they save
            types = [e.type_ids for e in encs] if want_types and not self._encoder.types_zero else None
            truncated = np.fromiter((len(e.overflowing) > 0 for e in encs), bool, len(encs))
        else:
            with self._tok_lock:
                full = self.tokenizer(texts, truncation=False, add_special_tokens=True)
                cut = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len, add_special_tokens=True)
            ids = [np.asarray(x, dtype=np.int64) for x in cut["input_ids"]]
            tt = cut.get("token_type_ids")
            types = [np.asarray(x, dtype=np.int64) for x in tt] if (want_types and tt is not None) else None
            if want_types and types is None:
                types = [np.zeros_like(x) for x in ids]
            truncated = np.array([len(a) > len(b) for a, b in zip(full["input_ids"], ids)], bool)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise InputError(f"text {int(empty[0])} ({texts[empty[0]][:40]!r}) gives no token")
        return Encoded(ids, types, truncated, lengths)

    def count_tokens(self, texts) -> list[int]:
        """Token counts of texts without truncation (special tokens included): what a text would need."""
        texts = self.check_texts(texts)
        if self._encoder is not None:
            return self._encoder.count_tokens(texts)
        with self._tok_lock:
            return [len(x) for x in self.tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]]

    def _too_long(self, enc: Encoded, texts: Sequence[str]) -> InputTooLongError | None:
        bad = [int(i) for i in np.flatnonzero(enc.truncated)]
        if not bad:
            return None
        counts = self.count_tokens([texts[i] for i in bad])  # only the rejected texts are counted again
        first = ", ".join(f"text {i} has {n} tokens" for i, n in zip(bad[:5], counts))
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        return InputTooLongError(
            f"{first}{more}, more than the limit of {self.max_seq_len} tokens per text ({self.max_seq_len_source}); "
            f"shorten {'them' if len(bad) > 1 else 'it'}, or pass truncation='truncate' to cut long texts",
            bad, counts, self.max_seq_len)

    # ---------------------------------------------------------------- run
    def _run_batch(self, enc: Encoded, rows: list[int], observer: BatchObserver | None) -> np.ndarray:
        n = len(rows)
        lens = enc.lengths[rows]
        S = max(int(lens.max()), self.min_seq)
        B = max(n, self.min_batch)  # rows beyond n copy row 0 and are dropped
        real = int(lens.sum())
        valid = np.arange(S) < lens[:, None]  # [n, S]: the text's tokens, then padding
        # Each matrix is filled in one go: the rows' ids concatenated land on the valid positions in row-major
        # order (a boolean-mask assignment), instead of one numpy call per row and matrix.
        ids = np.zeros((B, S), np.int64)
        ids[:n][valid] = np.fromiter(chain.from_iterable(enc.ids[i] for i in rows), np.int64, real)
        mask = np.zeros((B, S), np.int64)
        mask[:n] = valid
        types = np.zeros((B, S), np.int64) if "token_type_ids" in self.input_names else None
        if types is not None and enc.type_ids is not None:
            types[:n][valid] = np.fromiter(chain.from_iterable(enc.type_ids[i] for i in rows), np.int64, real)
        if B > n:
            ids[n:], mask[n:] = ids[0], mask[0]
            if types is not None:
                types[n:] = types[0]
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        if types is not None:
            feeds["token_type_ids"] = types
        runner = self._pool.get()
        try:
            t0 = time.perf_counter()
            out = runner(feeds)[self.output]
            dt = time.perf_counter() - t0
        finally:
            self._pool.put(runner)
        if observer is not None:
            observer(n, S, real, dt)
        if self.pooling == "plan":  # one vector a sample already (sentence_head)
            y = np.asarray(out[:n], np.float32)
            if self.normalize:
                y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), np.float32(1e-12))
            return y
        return pool(out[:n], valid, self.pooling, self.normalize)

    def run_encoded(self, enc: Encoded, observer: BatchObserver | None = None) -> np.ndarray:
        """Embeddings [n, dim] of tokenized texts, rows in `enc`'s order (no truncation policy applied)."""
        if self._closed:
            raise TrtrunError("this Embedder is closed")
        n = len(enc.ids)
        out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return out
        batches = pack_batches(enc.lengths, max_tokens=self.max_tokens_per_batch, max_rows=self.max_batch_size,
                               min_seq=self.min_seq)
        if self._fanout is not None and len(batches) > 1:
            futs = [(rows, self._fanout.submit(self._run_batch, enc, rows, observer)) for rows in batches]
            for rows, f in futs:
                out[rows] = f.result()
        else:
            for rows in batches:
                out[rows] = self._run_batch(enc, rows, observer)
        return out

    def embed_result(self, texts) -> EmbedResult:
        """Embed texts -> EmbedResult (embeddings in the caller's order, truncated flags, token counts)."""
        texts = self.check_texts(texts)
        enc = self.tokenize(texts)
        if self.truncation == "reject":
            err = self._too_long(enc, texts)
            if err is not None:
                raise err
        return EmbedResult(self.run_encoded(enc), enc.truncated, enc.lengths)

    def embed(self, texts) -> np.ndarray:
        """Embed texts -> float32 [n, dim], row i for texts[i] (a str is one text: [1, dim])."""
        return self.embed_result(texts).embeddings

    __call__ = embed

    def embed_groups(self, groups: Sequence[Sequence[str]], observer: BatchObserver | None = None
                     ) -> list[EmbedResult | BaseException]:
        """Embed several callers' text lists in shared engine batches; one result (or error) per group.

        Tokenizes everything in one call, applies the truncation policy per group (a rejected group gets
        its InputTooLongError, the others still run), packs all surviving texts together and splits the
        rows back. The micro-batcher's worker calls this. A group's failure is its own: a group with a text
        the tokenizer refuses gets that error, and if the shared run fails anyway (the tokenizer or the
        engine raised for a reason no check foresaw), every group is run again alone, so only the group
        that causes the failure gets it. Never raises (but for BaseExceptions such as KeyboardInterrupt).
        """
        try:
            return self._embed_shared(groups, observer)
        except Exception as e:  # noqa: BLE001 - whose was it? each group alone says
            if len(groups) == 1:
                return [e]
        return [self._embed_alone(g, observer) for g in groups]

    def _embed_alone(self, texts: Sequence[str], observer: BatchObserver | None) -> EmbedResult | BaseException:
        try:
            return self._embed_shared([texts], observer)[0]
        except Exception as e:  # noqa: BLE001 - answered to this group's caller
            return e

    def _tokenize_group(self, texts: Sequence[str]) -> Encoded:
        """tokenize() for one group; a tokenizer failure that no check foresaw becomes an InputError naming the
        text (found by tokenizing the group's texts one at a time)."""
        try:
            return self.tokenize(texts)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises TypeError/Exception
            for i, t in enumerate(texts):
                try:
                    self.tokenize([t])
                except Exception as e1:  # noqa: BLE001
                    raise InvalidTextError(f"text {i} cannot be tokenized: {type(e1).__name__}: {e1}", [i]) from e1
            raise TrtrunError(f"the tokenizer failed on these texts: {type(e).__name__}: {e}") from e

    def _embed_shared(self, groups: Sequence[Sequence[str]], observer: BatchObserver | None
                      ) -> list[EmbedResult | BaseException]:
        results: list[EmbedResult | BaseException | None] = [None] * len(groups)
        flat = [t for g in groups for t in g]
        spans = []  # (group, first, end) in flat
        at = 0
        for gi, g in enumerate(groups):
            spans.append((gi, at, at + len(g)))
            at += len(g)
        try:
            enc = self.tokenize(flat)
        except Exception:  # noqa: BLE001 - find which group(s) it was: tokenize them alone
            enc = None
        if enc is None:
            parts = []
            for gi, g in enumerate(groups):
                try:
                    parts.append((gi, self._tokenize_group(g)))
                except TrtrunError as e:
                    results[gi] = e
            if self.truncation == "reject":
                parts = self._reject_long(parts, results, groups)
            if not parts:
                return results  # type: ignore[return-value]
            keep = [gi for gi, _ in parts]
            ps = [p for _, p in parts]
            run = Encoded([x for p in ps for x in p.ids],
                          [x for p in ps for x in p.type_ids] if ps[0].type_ids is not None else None,
                          np.concatenate([p.truncated for p in ps]), np.concatenate([p.lengths for p in ps]))
            sizes = [len(p.ids) for p in ps]
        else:
            # the common case: one tokenizer call and one engine run for the whole window, split by slicing
            keep, sizes, run = [gi for gi, _, _ in spans], [b - a for _, a, b in spans], enc
            if self.truncation == "reject" and enc.truncated.any():
                parts = self._reject_long([(gi, enc.take(range(a, b))) for gi, a, b in spans], results, groups)
                if not parts:
                    return results  # type: ignore[return-value]
                kept = {gi for gi, _ in parts}
                keep = [gi for gi in keep if gi in kept]
                sizes = [len(p.ids) for _, p in parts]
                run = enc.take([i for gi, a, b in spans if gi in kept for i in range(a, b)])
        vecs = self.run_encoded(run, observer)
        at = 0
        for gi, k in zip(keep, sizes):
            results[gi] = EmbedResult(vecs[at:at + k], run.truncated[at:at + k], run.lengths[at:at + k])
            at += k
        return results  # type: ignore[return-value]

    def _reject_long(self, parts: list, results: list, groups: Sequence[Sequence[str]]) -> list:
        """truncation="reject": groups (index, Encoded) with a text over the limit get their InputTooLongError
        in results; the others are returned."""
        keep = []
        for gi, e in parts:
            err = self._too_long(e, groups[gi])
            if err is not None:
                results[gi] = err
            else:
                keep.append((gi, e))
        return keep

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the engine's contexts and worker threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._fanout is not None:
            self._fanout.shutdown(wait=True)
        for c in self._closers:
            if c is not None:
                try:
                    c()
                except Exception:  # noqa: BLE001 - closing must not raise
                    pass

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
