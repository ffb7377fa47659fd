"""Engine batches of texts under a token budget: padding is wasted compute, so texts are sorted by token count
(longest first) and cut into batches whose padded size (rows x longest row) stays under the budget."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pack_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int, min_seq: int = 1) -> list[list[int]]:
    """Indices of texts grouped into engine batches, longest texts first.

    A batch's cost is rows x its longest text (what the engine computes, padding included); a batch grows
    while that stays <= max_tokens and rows <= max_rows. Sorting first makes texts of similar length share
    a batch, so padding is small. A text longer than max_tokens still gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order.tolist():
        n = max(int(lengths[i]), min_seq)
        if cur and ((len(cur) + 1) * width > max_tokens or len(cur) + 1 > max_rows):
            batches.append(cur)
            cur = []
        if not cur:
            width = n
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
