"""Atomic file writes: a reader, a rerun or a crash sees the old file or the whole new one, never a part.

The new content goes to a temporary file beside the target (same folder, so same file system), named
`.NAME.PID.RANDOM.tmp` (hidden, and unique across processes and threads), which is then renamed over the
target with os.replace; on any error, or an interrupt, the temporary file is removed and the target is
left as it was.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


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
