"""trtrun.runtime.load_gemm_cache on files it must refuse: each a clear InputError naming the file and the
field, raised before anything reaches the GPU runtime (so these run without a GPU). Saving and loading real
tuned entries is tested on the GPU (tests/gpu/test_runtime_basics.py)."""

from __future__ import annotations

import json

import pytest

from trtrun.errors import InputError
from trtrun.runtime import GEMM_CACHE_FORMAT, GEMM_CACHE_VERSION, load_gemm_cache, save_gemm_cache

GOOD = {"device": "NVIDIA H200", "cc": 90, "cublaslt": 130100, "m": 128, "n": 768, "k": 768, "operand_t": "float16",
        "out_t": "float16", "epilogue": "bias", "tf32": False, "add_c": False, "workspace": 4194304,
        "search": "exhaustive",
        "algo": [66, 1, 2, 3, 4, 5, 6, 7], "algo_workspace": 0}


def _doc(**changes):
    e = dict(GOOD)
    e.update(changes)
    return {"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION, "entries": [e]}


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    (b"{not json", "is not JSON (line 1"),
    (b"\xff\xfe\x00", "cannot read"),
    ({"format": "trtrun-plan", "version": GEMM_CACHE_VERSION, "entries": []}, "is not a trtrun GEMM cache"),
    ({"format": GEMM_CACHE_FORMAT, "version": 7, "entries": []}, "version 7 is not supported (2 is)"),
    # version 1 stored the enums as integer codes (its search order differed from trtrun.types.GEMM_SEARCHES)
    ({"format": GEMM_CACHE_FORMAT, "version": 1, "entries": []}, "version 1 is not supported (2 is); it stores its "
                                                                 "choices by integer code: delete it and tune again"),
    (_doc(search=1), "entries[0].search must be str, got 1"),
    (_doc(operand_t=1), "entries[0].operand_t must be str, got 1"),
    ({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION, "entries": {}}, "'entries' must be a list"),
    ({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION, "entries": [3]}, "entries[0] must be an object"),
    (_doc(m="128"), "entries[0].m must be int, got '128'"),
    (_doc(tf32=1), "entries[0].tf32 must be bool"),
    (_doc(cc=True), "entries[0].cc must be int, got True"),
    (_doc(algo=[1, 2, 3]), "entries[0].algo must be 8 unsigned 64-bit integers"),
    (_doc(algo=[-1, 0, 0, 0, 0, 0, 0, 0]), "entries[0].algo must be 8 unsigned"),
    (_doc(algo=[2**64, 0, 0, 0, 0, 0, 0, 0]), "entries[0].algo must be 8 unsigned"),
    (_doc(workspace=-4), "entries[0].workspace must be >= 0"),
    (_doc(split=0), "entries[0].split must be an integer >= 1 dividing k, got 0"),
    (_doc(split=5), "entries[0].split must be an integer >= 1 dividing k, got 5"),   # k = 768
    (_doc(split=True), "entries[0].split must be an integer"),
    ({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION,
      "entries": [{k: v for k, v in GOOD.items() if k != "search"}]}, "entries[0].search must be str, got None"),
])
def test_bad_gemm_cache_files(tmp_path, content, needle):
    path = tmp_path / "gemm.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(InputError) as err:
        load_gemm_cache(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_save_refuses_to_replace_a_file_it_cannot_read(tmp_path):
    """save_gemm_cache merges with the file already there; one that is not a GEMM cache is an InputError and
    stays as it was (checked before the GPU runtime is touched)."""
    path = tmp_path / "gemm.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="is not a trtrun GEMM cache"):
        save_gemm_cache(path)
    assert path.read_text() == '{"format": "something else"}'


def test_split_is_optional_and_kept(tmp_path):
    """Files written before the split field existed hold unsplit GEMMs: an entry without it reads as split 1;
    one with split 4 (a Linear whose K slices its LayerNorm sums) is read as it is."""
    from trtrun.runtime import read_gemm_cache

    path = tmp_path / "gemm.json"
    path.write_text(json.dumps({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION,
                                "entries": [dict(GOOD),
                                            dict(GOOD, k=3072, out_t="float32", epilogue="none", split=4)]}))
    a, b = read_gemm_cache(path)
    assert a["split"] == 1 and b["split"] == 4


def test_an_oversized_gemm_cache_is_refused(tmp_path):
    """A GEMM cache file has a size bound, as a cost table has (trtrun._io.read_json_file): a valid cache padded
    past MAX_GEMM_CACHE_BYTES (64 MiB, ~160,000 entries) is refused naming the file and the bound, by the
    reader, the loader and the saver (which leaves it as it is), before any of it is decoded; one within the
    bound is read."""
    from trtrun.runtime import read_gemm_cache
    from trtrun.runtime.gemm_cache import MAX_GEMM_CACHE_BYTES

    path = tmp_path / "gemm.json"
    doc = json.dumps(_doc()).encode()
    path.write_bytes(doc.ljust(MAX_GEMM_CACHE_BYTES))
    assert read_gemm_cache(path)[0]["m"] == GOOD["m"]
    path.write_bytes(doc.ljust(MAX_GEMM_CACHE_BYTES + 1))
    for fn in (read_gemm_cache, load_gemm_cache, save_gemm_cache):
        with pytest.raises(InputError) as err:
            fn(path)
        assert f"GEMM cache {path} is larger than 64 MiB" in str(err.value), (fn.__name__, str(err.value))
    assert path.stat().st_size == MAX_GEMM_CACHE_BYTES + 1
