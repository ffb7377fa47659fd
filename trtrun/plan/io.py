"""Plan files on disk: writing one (atomically, with its checksum) and reading one back, trusting nothing in it.

`read_plan_file` checks, in this order: size, magic, version, lengths against the file size, checksum, JSON,
schema. Every failure is a PlanError whose message starts with the file and names the field. Loaded weights
are read-only numpy views into one 256-byte-aligned buffer holding the whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np

from .._io import atomic_write
from ..errors import PlanError
from .format import (
    ALIGN,
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MIN_FILE_BYTES,
    PREAMBLE,
    READ_CHUNK,
    TRAILER_BYTES,
    align,
    json_default,
    np_dtype,
)
from .validate import fmt_shape, validate_header


def write_plan_file(path: Path, header: dict, weights: dict[str, np.ndarray], blob_nbytes: int, where: str) -> None:
    """Write a validated plan's header and weights to `path` atomically (a temporary file in the same folder,
    then rename), flushed to the disk."""
    hjson = json.dumps(header, separators=(",", ":"), allow_nan=False, default=json_default).encode("utf-8")
    blob_start = align(PREAMBLE.size + len(hjson))
    entries = sorted(header["weights"].items(), key=lambda kv: kv[1]["offset"])
    W = blob_nbytes
    sha = hashlib.sha256()

    def write(f):
        def put(b):
            sha.update(b)
            f.write(b)
        put(PREAMBLE.pack(MAGIC, header["version"], 0, len(hjson), W))
        put(hjson)
        put(b"\0" * (blob_start - PREAMBLE.size - len(hjson)))
        pos = 0
        for name, e in entries:
            if e["offset"] > pos:
                put(b"\0" * (e["offset"] - pos))
            a = np.ascontiguousarray(weights[name])
            if a.dtype.name != e["dtype"] or a.nbytes != e["nbytes"]:
                raise PlanError(f"{where}: weights.{name}: array {a.dtype.name}"
                                f"{fmt_shape(a.shape)} does not match its header entry")
            # the bytes through a uint8 view: float8 (ml_dtypes) has no buffer-protocol format to cast from
            put(memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)))
            pos = e["offset"] + e["nbytes"]
        f.write(sha.digest())

    atomic_write(path, write, fsync=True)


def _aligned_buffer(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


def _looks_like(head: bytes) -> str:
    if head.startswith(b"\x08") and len(head) > 1:
        return " (it looks like an ONNX model: build a plan from it with `trtrun build`)"
    if head[:4] == b"PK\x03\x04":
        return " (it looks like a zip archive, e.g. a PyTorch checkpoint)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it looks like a text file)" if text and all(c.isprintable() or c in "\t\r\n" for c in text) else ""


def json_depth(raw: bytes, chunk: int = 1 << 18) -> int:
    """The deepest nesting of [ and { outside strings, in linear time, without recursion, a chunk at a time
    (a few MiB of work arrays whatever the header's size).

    A quote ends a string unless an odd run of backslashes precedes it. Where the text is not JSON this
    count may be off, but only after the point where the parser would stop with an error, so what it says
    about the part the parser walks is exact.
    """
    deepest = depth = 0
    inside = False  # within a string at the end of the previous chunk
    run = 0  # backslashes ending the previous chunk
    for start in range(0, len(raw), chunk):
        a = np.frombuffer(raw, np.uint8, count=min(chunk, len(raw) - start), offset=start)
        n = a.size
        idx = np.arange(n, dtype=np.int32)
        backslash = a == 0x5C
        last_other = np.maximum.accumulate(np.where(backslash, np.int32(-1), idx))  # last non-backslash <= i
        before = np.empty(n, np.int64)  # backslashes directly before i (those ending the last chunk too)
        before[0] = run
        before[1:] = idx[:-1] - last_other[:-1]
        before[1:][last_other[:-1] < 0] += run
        quote = a == 0x22
        real = quote & (before % 2 == 0)
        opened = np.cumsum(real, dtype=np.int64) - real + inside
        step = np.zeros(n, np.int8)
        step[(a == 0x5B) | (a == 0x7B)] = 1
        step[(a == 0x5D) | (a == 0x7D)] = -1
        step[(opened % 2 == 1) | quote] = 0
        levels = np.cumsum(step, dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        inside = bool((int(real.sum()) + inside) % 2)
        run = run + n if last_other[-1] < 0 else int(n - 1 - last_other[-1])
    return deepest


def _open_regular(p: Path, where: str) -> tuple[int, int]:
    """(fd, size) of a regular file opened for reading; PlanError at once for anything else.

    A FIFO would block open() until a writer came, a device would be read forever: stat first, open
    without blocking (O_NONBLOCK), and fstat what was opened (the path may have changed in between).
    """
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise PlanError(f"{where}: no such file") from None
    except (OSError, ValueError) as e:
        raise PlanError(f"{where}: cannot read: {getattr(e, 'strerror', None) or e}") from None

    def refuse(mode):
        if stat.S_ISDIR(mode):
            raise PlanError(f"{where}: is a directory, not a plan file")
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a file")
        raise PlanError(f"{where}: not a regular file ({kind}); a plan is a regular file")

    if not stat.S_ISREG(st.st_mode):
        refuse(st.st_mode)
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            refuse(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size




def read_plan_file(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, weights) of a plan file, read and fully validated (trtrun.plan.load_plan makes a Plan of them).
 Raises PlanError naming the file and field on any problem.

    Nothing in the file is trusted: only a regular file is opened; the preamble's magic, version and
    lengths are checked against the file's size before anything else is read; the header (at most
    MAX_HEADER_BYTES, nested at most MAX_JSON_DEPTH deep) is parsed and validated before the weights blob
    is kept in memory. When the header does not validate, the rest of the file is only streamed through
    the checksum (a damaged file says so rather than naming the field the damage hit), so memory stays
    bounded by the header limit whatever the file's size.
    """
    p = Path(path)
    where = str(p)
    fd, size = _open_regular(p, where)
    with os.fdopen(fd, "rb", buffering=0) as f:
        def read_into(mv: memoryview) -> None:
            got = 0
            while got < len(mv):
                try:
                    n = f.readinto(mv[got:])
                except OSError as e:
                    raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
                if not n:
                    raise PlanError(f"{where}: file size: the file ended early (changed while reading?)")
                got += n

        head = bytearray(min(size, PREAMBLE.size))
        read_into(memoryview(head))
        head = bytes(head)
        if size < MIN_FILE_BYTES:
            raise PlanError(f"{where}: file size: {size} bytes is too small to be a trtrun plan "
                            f"(at least {MIN_FILE_BYTES})"
                            f"{'; not a trtrun plan' + _looks_like(head[:16]) if head[:8] != MAGIC else ''}")
        magic, version, reserved, H, W = PREAMBLE.unpack(head)
        if magic != MAGIC:
            raise PlanError(f"{where}: magic: not a trtrun plan (starts with {magic!r}, a plan starts with "
                            f"{MAGIC!r}){_looks_like(head[:16])}")
        if version > FORMAT_VERSION:
            raise PlanError(f"{where}: version: plan format version {version} is newer than this trtrun "
                            f"supports ({FORMAT_VERSION}): rebuild the plan or upgrade trtrun")
        if version < 1:
            raise PlanError(f"{where}: version: plan format version {version} is not valid "
                            f"(this trtrun reads version {FORMAT_VERSION})")
        if reserved != 0:
            raise PlanError(f"{where}: reserved: must be 0, got {reserved} (corrupted file?)")
        blob_start = align(PREAMBLE.size + H)
        expected = blob_start + W + TRAILER_BYTES
        if expected != size:
            if expected > size:
                raise PlanError(f"{where}: lengths: file is truncated: header length {H} and blob length {W} "
                                f"need {expected} bytes but the file has {size}")
            raise PlanError(f"{where}: lengths: the file has {size} bytes but header length {H} and blob "
                            f"length {W} account for {expected} (trailing data or corrupted lengths)")
        if H > MAX_HEADER_BYTES:
            raise PlanError(f"{where}: lengths: header length {H} exceeds the limit of {MAX_HEADER_BYTES} bytes "
                            f"(real headers take kilobytes)")
        sha = hashlib.sha256(head)
        region = bytearray(blob_start - PREAMBLE.size)  # header JSON and its zero padding
        read_into(memoryview(region))
        sha.update(region)

        problem: PlanError | None = None
        try:
            raw = bytes(region[:H])
            depth = json_depth(raw)
            if depth > MAX_JSON_DEPTH:
                raise PlanError(f"{where}: header JSON: nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise PlanError(f"{where}: header JSON: cannot parse: {_short_error(e)}") from None
            if not isinstance(header, dict):
                raise PlanError(f"{where}: header: must be a JSON object, got {type(header).__name__}")
            validate_header(header, where, W)
            if header["version"] != version:
                raise PlanError(f"{where}: version: the preamble says format version {version}, the header "
                                f"{header['version']}")
        except PlanError as e:
            problem = e

        if problem is None:
            blob = _aligned_buffer(W)
            read_into(memoryview(blob))
            sha.update(blob)
        else:  # only the checksum needs these bytes: stream them through it
            chunk = memoryview(bytearray(min(READ_CHUNK, W) or 1))
            left = W
            while left:
                part = chunk[:min(left, len(chunk))]
                read_into(part)
                sha.update(part)
                left -= len(part)
        stored = bytearray(TRAILER_BYTES)
        read_into(memoryview(stored))
    digest = sha.digest()
    if digest != bytes(stored):
        raise PlanError(f"{where}: checksum: SHA-256 mismatch, the file is corrupted "
                        f"(computed {digest.hex()[:16]}…, stored {bytes(stored).hex()[:16]}…)")
    if problem is not None:
        raise problem
    blob.flags.writeable = False
    weights = {}
    for name, e in header["weights"].items():
        dt = np_dtype(e["dtype"])
        weights[name] = blob[e["offset"]:e["offset"] + e["nbytes"]].view(dt).reshape(e["shape"])
    return header, weights


def _short_error(e: Exception) -> str:
    s = str(e)
    return s if len(s) <= 200 else s[:200] + "…"
