"""GEMM cache files: the cuBLASLt algorithms one process tuned, saved as JSON for other processes on the same
kind of GPU and cuBLASLt version (docs/runtime.md, "GEMM search")."""

from __future__ import annotations

import json
from pathlib import Path

from .._io import atomic_write, read_json_file
from ..errors import InputError
from . import extension

GEMM_CACHE_FORMAT = "trtrun-gemm-cache"
# Version 2 names its enums (operand_t, out_t, epilogue, search: "float16", "bias", "focused", ...; _C parses them).
# Version 1 stored them as integer codes whose search order differed from GEMM_SEARCHES: refused, not converted.
GEMM_CACHE_VERSION = 2
_GEMM_CACHE_VERSION_HINTS = {1: "it stores its choices by integer code: delete it and tune again (trtrun bench "
                                "--gemm-cache writes a new one)"}
# An entry is at most ~410 bytes of JSON; 64 MiB holds ~160,000, more than every (batch, sequence bucket) GEMM
# shape of a large profile's dozen distinct Linear shapes on several GPUs, while a wrong file (a plan, a model)
# is refused before json builds it in memory (several times its size as Python objects).
MAX_GEMM_CACHE_BYTES = 64 << 20
_GEMM_CACHE_FIELDS = {"device": str, "cc": int, "cublaslt": int, "m": int, "n": int, "k": int, "operand_t": str,
                      "out_t": str, "epilogue": str, "tf32": bool, "add_c": bool, "workspace": int, "search": str,
                      "algo": list, "algo_workspace": int}


_GEMM_CACHE_IDENTITY = ("device", "cc", "cublaslt", "m", "n", "k", "operand_t", "out_t", "epilogue", "tf32", "add_c",
                        "split", "workspace", "search")


def read_gemm_cache(path) -> list[dict]:
    """The entries of a GEMM cache file, every field checked; InputError naming the file and the field. Needs no
    GPU: a caller without one can still refuse a bad file at once."""
    path = Path(path)
    doc = read_json_file(path, what="GEMM cache", format=GEMM_CACHE_FORMAT, version=GEMM_CACHE_VERSION,
                         max_bytes=MAX_GEMM_CACHE_BYTES, size_hint="a GEMM cache takes ~300 bytes an entry",
                         version_hints=_GEMM_CACHE_VERSION_HINTS)
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise InputError(f"GEMM cache {path}: field 'entries' must be a list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(f"GEMM cache {path}: entries[{i}] must be an object")
        for f, t in _GEMM_CACHE_FIELDS.items():
            v = e.get(f)
            ok = isinstance(v, t) and (t is bool or not isinstance(v, bool))
            if not ok:
                raise InputError(f"GEMM cache {path}: entries[{i}].{f} must be {t.__name__}, got {v!r}")
        split = e.setdefault("split", 1)  # optional: files written before it existed hold unsplit GEMMs only
        if isinstance(split, bool) or not isinstance(split, int) or split < 1 or e["k"] % split != 0:
            raise InputError(f"GEMM cache {path}: entries[{i}].split must be an integer >= 1 dividing k, got {split!r}")
        if len(e["algo"]) != 8 or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 2**64
                                          for a in e["algo"]):
            raise InputError(f"GEMM cache {path}: entries[{i}].algo must be 8 unsigned 64-bit integers")
        for f in ("cc", "cublaslt", "m", "n", "k", "workspace", "algo_workspace"):
            if e[f] < 0:
                raise InputError(f"GEMM cache {path}: entries[{i}].{f} must be >= 0, got {e[f]}")
    return entries


def save_gemm_cache(path) -> int:
    """Write every GEMM algorithm this process has tuned (all engines and contexts; exhaustive and heuristic
    choices, and loaded ones it did not reject) to `path` (JSON), so another process on the same kind of GPU
    and cuBLASLt version can skip the timing: load_gemm_cache(path) before its first runs. Entries already in
    the file for other GPUs, cuBLASLt versions or shapes are kept (this process's choice wins for the same
    key), so one file can serve several machines. Returns the number of entries written. The file is replaced
    atomically; an existing file that is not a valid GEMM cache raises InputError and is left alone."""
    import datetime

    path = Path(path)
    old = read_gemm_cache(path) if path.exists() else []  # before anything: a bad file stops the save
    entries = list(extension.load_extension().gemm_cache_export())
    mine = {tuple(e[f] for f in _GEMM_CACHE_IDENTITY) for e in entries}
    entries += [e for e in old if tuple(e[f] for f in _GEMM_CACHE_IDENTITY) not in mine]
    doc = {"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "entries": entries}
    try:
        atomic_write(path, json.dumps(doc, indent=None, separators=(",", ":")) + "\n")
    except OSError as e:
        raise InputError(f"cannot write the GEMM cache {path}: {e.strerror or e}") from None
    return len(entries)


def load_gemm_cache(path) -> int:
    """Take the GEMM algorithms tuned by another process (save_gemm_cache) for this process's GPUs: a shape
    found there is not timed again, by contexts of either gemm_search (an exhaustive choice serves heuristic
    contexts too). Entries from another GPU model or cuBLASLt version are skipped; each taken entry is checked
    with cuBLASLt before its first use, and one that fails is tuned as usual. Choices this process already made
    stay. Returns how many entries were taken. A missing, unreadable or malformed file raises InputError naming
    the file and the field; nothing is taken from it then."""
    path = Path(path)
    entries = read_gemm_cache(path)
    try:
        return int(extension.load_extension().gemm_cache_import(entries))
    except InputError as e:  # the extension's own checks (m, n, k > 0, enum names)
        raise InputError(f"GEMM cache {path}: {e}") from None

