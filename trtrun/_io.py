"""File helpers: atomic writes, and the bounded read of trtrun's own versioned JSON files.

Atomic writes: a reader, a rerun or a crash sees the old file or the whole new one, never a part. The new
content goes to a temporary file beside the target (same folder, so same file system), named
`.NAME.PID.RANDOM.tmp` (hidden, and unique across processes and threads), which is then renamed over the
target with os.replace; on any error, or an interrupt, the temporary file is removed and the target is
left as it was.

Versioned JSON files (a GEMM cache, a cost table: `{"format": NAME, "version": N, ...}`): read_json_file reads
one whole, at most a given size, and checks its format and version, each failure an InputError naming the
kind of file, the file and what is wrong; the caller checks the rest of the document.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a file name (onnx.save, an exporter): renamed
    over `path` when the block ends without error, removed when it raises. `suffix` ends the temporary
    name, for writers that choose a format by the file's extension."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[Any]], Any], *, text: bool = False,
                 encoding: str = "utf-8", newline: str | None = None, fsync: bool = False) -> Path:
    """Write `path` atomically and return it. `data` is bytes, a str (written as text in `encoding`), or a
    function that writes into the open file object (binary unless text=True). fsync=True flushes the file
    to the disk before the rename, for files that must survive a power loss once the call returns."""
    path = Path(path)
    if isinstance(data, str):
        text = True
    with atomic_path(path) as tmp:
        f = open(tmp, "x", encoding=encoding, newline=newline) if text else open(tmp, "xb")
        with f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return path


def _shown(value: Any, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters (a file's field can be anything, and long)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def read_json_file(path: str | os.PathLike, *, what: str, format: str, version: int, max_bytes: int,
                   size_hint: str = "", version_hints: Mapping[int, str] | None = None) -> dict:
    """The JSON object in `path`, a trtrun file of kind `what` ("GEMM cache") whose "format" field must be
    `format` and "version" field `version`. Read whole, at most `max_bytes` (read, not stat'ed: a pipe or a
    device has no size), so a wrong path never fills the memory. Raises InputError naming `what`, the file and
    what is wrong: it does not exist, is a directory, cannot be read, is larger than max_bytes (`size_hint`
    follows, e.g. how large such a file is), is not UTF-8, not JSON, not an object of this format, or of
    another version (`version_hints[found]` follows, e.g. how to replace an old file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        mib = f"{max_bytes / (1 << 20):g} MiB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
        raise InputError(f"{what} {path} is larger than {mib}" + (f"; {size_hint}" if size_hint else ""))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"cannot read the {what} {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:  # json's decoder recurses once per nested bracket
        raise InputError(f"{what} {path} is not JSON this reader takes: nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != format:
        raise InputError(f"{path} is not a trtrun {what} (field 'format' is not {format!r})")
    found = doc.get("version")
    if type(found) is not int or found != version:  # (True == 1 and 1.0 == 1 in Python: no version)
        hint = (version_hints or {}).get(found) if type(found) is int else None
        raise InputError(f"{what} {path}: version {_shown(found)} is not supported ({version} is)"
                         + (f"; {hint}" if hint else ""))
    return doc
