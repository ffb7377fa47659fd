"""trtrun._io: the one atomic file write every writer of the package uses."""

from __future__ import annotations

import pytest

from trtrun._io import atomic_path, atomic_write


def test_writes_bytes_text_and_through_a_function(tmp_path):
    p = tmp_path / "f.bin"
    assert atomic_write(p, b"\x00\x01") == p and p.read_bytes() == b"\x00\x01"
    atomic_write(p, "é\n")  # str: text in UTF-8, replacing the old content
    assert p.read_bytes() == "é\n".encode("utf-8")
    atomic_write(p, lambda f: f.write("a\nb\n"), text=True, newline="", fsync=True)
    assert p.read_bytes() == b"a\nb\n"
    atomic_write(p, lambda f: f.write(memoryview(b"xyz")))
    assert p.read_bytes() == b"xyz"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "report.json"
    p.write_text("old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt  # an interrupt too: BaseException, not only Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, fail)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.json"]


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    p = tmp_path / "model.onnx"
    with atomic_path(p, suffix=".onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.suffix == ".onnx"
        tmp.write_bytes(b"new")
    assert p.read_bytes() == b"new" and not tmp.exists()
    with pytest.raises(ValueError):
        with atomic_path(p) as tmp2:
            tmp2.write_bytes(b"partial")
            raise ValueError("exporter failed")
    assert p.read_bytes() == b"new" and not tmp2.exists()
