"""Text embeddings from a trtrun plan: tokenize, pack by length under a token budget, run, pool, normalize.

    from trtrun.embed import Embedder
    emb = Embedder("minilm.hybrid.plan", ".data/minilm")       # or an .onnx (a hybrid plan is built)
    vectors = emb.embed(["a fine film", "a dull one"])         # float32 [2, dim], rows in input order

    text.py      what the tokenizer can take (check_texts, InvalidTextError), InputTooLongError, TextEncoder
    batching.py  pack_batches: engine batches of texts under a token budget
    pooling.py   pool, and a sentence-transformers folder's pooling and max_seq_length
    plans.py     the plan for an ONNX file, built once and cached beside it
    embedder.py  Embedder, EmbedResult, Encoded
"""

from __future__ import annotations

from .batching import pack_batches
from .embedder import BatchObserver, EmbedResult, Embedder, Encoded
from .pooling import pool, read_st_pooling
from .text import InputTooLongError, InvalidTextError, TextEncoder, check_texts, text_problem

__all__ = ["Embedder", "EmbedResult", "Encoded", "BatchObserver", "InputTooLongError", "InvalidTextError", "TextEncoder",
           "check_texts", "text_problem", "pack_batches", "pool", "read_st_pooling"]
