"""Texts into token ids: what the tokenizer can take (InvalidTextError otherwise), the error for a text over
the length limit, and TextEncoder, the Embedder's own thread-safe copy of a Hugging Face fast tokenizer.

Bad text fails alone: check_texts refuses what the tokenizer cannot take (non-str items, and str that is not
valid Unicode: lone surrogates, which JSON's "\\ud800" escapes let through) with InvalidTextError naming the
index, before the text joins a batch.
"""

from __future__ import annotations

import json
import threading
from typing import Sequence

from ..errors import InputError


class InputTooLongError(InputError):
    """truncation="reject" and a text has more tokens than the plan (or the model) takes.

    indices: the texts over the limit (in the caller's list); token_counts: their token counts (special
    tokens included), in the same order, where known; limit: the most tokens a text may have."""

    def __init__(self, message: str, indices: Sequence[int], token_counts: Sequence[int] | None = None,
                 limit: int | None = None):
        super().__init__(message)
        self.indices = list(indices)
        self.token_counts = list(token_counts) if token_counts is not None else None
        self.limit = limit


class InvalidTextError(InputError):
    """A text the tokenizer cannot take: not a str, or a str that is not valid Unicode (a lone surrogate).
    indices: the bad texts (in the caller's list); the message names the first."""

    def __init__(self, message: str, indices: Sequence[int], reason: str | None = None):
        super().__init__(message)
        self.indices = list(indices)
        self.reason = reason  # what is wrong with the first one ("holds a lone surrogate ...")


def text_problem(t) -> str | None:
    """Why the tokenizer cannot take t, or None. The Hugging Face tokenizers take any str that encodes to
    UTF-8 (control characters and NUL included: BERT's normalizer drops them) and refuse the rest with a
    TypeError: a str holding a lone surrogate (U+D800-U+DFFF, which "\\ud800" in JSON produces) has no
    UTF-8 form."""
    if not isinstance(t, str):
        return f"is a {type(t).__name__}, expected str"
    if t.isascii():
        return None
    try:
        t.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds a lone surrogate U+{ord(t[e.start]):04X} at character {e.start}: it is not valid Unicode "
                f"text (a surrogate escape such as \\ud83d must be followed by its low half)")
    return None



def check_texts(texts) -> list[str]:
    """A str is one text; otherwise a sequence of str. Raises InvalidTextError (an InputError) naming the
    first element the tokenizer cannot take (see text_problem), so that no bad text joins a batch."""
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    else:
        texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not (type(t) is str and t.isascii()) and text_problem(t)]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        why = text_problem(texts[i])
        raise InvalidTextError(f"text {i} {why}{more}", bad, why)
    return texts


class TextEncoder:
    """A Hugging Face `tokenizers.Tokenizer` configured once (no padding, truncation at max_len; the
    Embedder's own copy, only read afterwards, so threads may share it), with a cheaper path to the same ids
    for printable-ASCII texts where the tokenizer allows one.

    The fast path: BERT's normalizer (BertNormalizer: drop control characters, map whitespace to spaces,
    space out CJK characters, strip accents, lowercase) is ~1/3 of the tokenizer's CPU per text, and on a
    text of printable ASCII characters (0x20-0x7E) every one of its steps but lowercasing leaves the text as
    it is: no control characters, the only whitespace is the space, no CJK, and NFD changes no ASCII
    character. For such a text str.lower() (ASCII lowercasing, as Rust's to_lowercase on ASCII) is the
    normalized text, and a copy of the tokenizer without the normalizer gives the same ids (checked on every
    Rotten Tomatoes and wiki text and 2,000 IMDB reviews in tests/embed/test_embedder.py). A text holding the text
    of an added token that is matched before normalization (like "[MASK]") takes the full tokenizer, since
    lowercasing first would hide it; so do all texts of a tokenizer with any other normalizer.
    encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never read: the same ids, ~25% less
    CPU per text. Both paths release the GIL while they work.
    """

    def __init__(self, tokenizer, max_len: int):
        import re

        from tokenizers import Tokenizer

        bt = tokenizer
        bt.no_padding()
        bt.enable_truncation(max_len)
        self.tokenizer = bt
        self._full = getattr(bt, "encode_batch_fast", bt.encode_batch)
        self._untruncated = None
        self._count_lock = threading.Lock()
        conf = json.loads(bt.to_str())
        post = conf.get("post_processor")
        # types_zero: a single text's type ids are all 0 (what the template says), so none need reading back
        if post is None:
            self.types_zero = True
        elif post.get("type") == "TemplateProcessing":
            self.types_zero = all(v.get("type_id", 0) == 0 for item in post.get("single", [])
                                  for v in item.values() if isinstance(v, dict))
        else:
            self.types_zero = post.get("type") in ("BertProcessing", "RobertaProcessing")
        self._ascii = None
        norm = conf.get("normalizer")
        if not (isinstance(norm, dict) and norm.get("type") == "BertNormalizer"
                and set(norm) <= {"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"}):
            return
        fast = Tokenizer.from_str(bt.to_str())  # the same truncation and padding settings
        fast.normalizer = None
        raw = [t["content"] for t in conf.get("added_tokens", []) if not t.get("normalized", True) and t.get("content")]
        self._special = re.compile("|".join(map(re.escape, raw))) if raw else None
        self._lower = norm.get("lowercase", True) is not False
        self._ascii = getattr(fast, "encode_batch_fast", fast.encode_batch)

    def count_tokens(self, texts: list) -> list[int]:
        """Token counts without truncation (special tokens included), from a copy of the tokenizer without
        truncation, made on first use (only texts that were cut are counted again: rejected ones)."""
        with self._count_lock:
            if self._untruncated is None:
                from tokenizers import Tokenizer

                t = Tokenizer.from_str(self.tokenizer.to_str())
                t.no_truncation()
                self._untruncated = t
        return [len(e.ids) for e in self._untruncated.encode_batch(texts)]

    @property
    def has_fast_path(self) -> bool:
        return self._ascii is not None

    def fast_path_applies(self, text: str) -> bool:
        """This text goes through the normalizer-free copy."""
        return (self._ascii is not None and text.isascii() and text.isprintable()
                and (self._special is None or self._special.search(text) is None))

    def encode(self, texts: list) -> list:
        """The tokenizer's Encodings of texts (a list of str), in order."""
        if self._ascii is None:
            return self._full(texts)
        lower = self._lower
        easy = [self.fast_path_applies(t) for t in texts]
        if all(easy):
            return self._ascii([t.lower() for t in texts] if lower else texts)
        if not any(easy):
            return self._full(texts)
        out = [None] * len(texts)
        idx_a = [i for i, e in enumerate(easy) if e]
        idx_b = [i for i, e in enumerate(easy) if not e]
        for i, e in zip(idx_a, self._ascii([texts[i].lower() if lower else texts[i] for i in idx_a])):
            out[i] = e
        for i, e in zip(idx_b, self._full([texts[i] for i in idx_b])):
            out[i] = e
        return out
