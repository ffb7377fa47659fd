"""trtrun.runtime.Context refuses bad options with an InputError naming the option, before the GPU runtime or
the engine is touched (so these run without a GPU; the GPU tests check the same errors on a real engine)."""

from __future__ import annotations

import pytest

from trtrun.errors import InputError
from trtrun.runtime import Context


@pytest.mark.parametrize("kw, needle", [
    ({"split_ln_max_rows": -1}, "split_ln_max_rows must be an integer >= 0, got -1"),
    ({"split_ln_max_rows": True}, "split_ln_max_rows must be an integer >= 0, got True"),
    ({"split_ln_slice": 12}, "split_ln_slice must be a multiple of 8 (>= 8), got 12"),
    ({"split_ln_slice": 0}, "split_ln_slice must be a multiple of 8 (>= 8), got 0"),
    ({"split_ln_slice": 768.0}, "split_ln_slice must be a multiple of 8"),
    ({"ffn_chunks": 0}, "ffn_chunks must be an integer >= 1"),
    ({"fuse_residual_min_rows": 0}, "fuse_residual_min_rows must be an integer >= 1"),
    ({"workspace_bytes": -1}, "workspace_bytes must be an integer >= 0"),
    ({"gemm_search": "fast"}, "gemm_search must be one of heuristic, focused, exhaustive"),
])
def test_bad_context_options(kw, needle):
    with pytest.raises(InputError) as err:
        Context(object(), **kw)  # the engine is not reached: the options are checked first
    assert needle in str(err.value)
