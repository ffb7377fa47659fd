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


# ---------------------------------------------------------------------------------------- versioned JSON files

def _read(path, **kw):
    from trtrun._io import read_json_file

    args = dict(what="test file", format="trtrun-test", version=2, max_bytes=200_000, size_hint="one takes bytes",
                version_hints={1: "it is old: make it again"})
    args.update(kw)
    return read_json_file(path, **args)


def test_read_json_file_returns_the_document(tmp_path):
    p = tmp_path / "f.json"
    doc = {"format": "trtrun-test", "version": 2, "entries": [1, "é"]}
    p.write_text(__import__("json").dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert _read(p) == doc
    p.write_bytes(b'{"format": "trtrun-test", "version": 2}'.ljust(200_000))  # exactly the bound
    assert _read(p) == {"format": "trtrun-test", "version": 2}


@pytest.mark.parametrize("content, needle", [
    (None, "test file {p} does not exist"),
    ("dir", "test file {p} is a directory, not a file"),
    (b'{"format": "trtrun-test", "version": 2, "x": "caf\xe9"}', "cannot read the test file {p}: not UTF-8 text "
                                                                "(byte 0xe9 at offset 49)"),
    (b"\xff\xfe{\x00}\x00", "cannot read the test file {p}: not UTF-8 text (byte 0xff at offset 0)"),
    (b'{"format": "trtrun-test",\n "version": 2,,}', "test file {p} is not JSON (line 2, column 15: Expecting"),
    (b"", "test file {p} is not JSON (line 1, column 1: Expecting value)"),
    (b"[" * 100_000, "test file {p} is not JSON this reader takes: nested too deeply"),
    (b" " * 200_001, "test file {p} is larger than 200000 bytes; one takes bytes"),
    (b"[1, 2]", "{p} is not a trtrun test file (field 'format' is not 'trtrun-test')"),
    (b'{"format": "trtrun-plan", "version": 2}', "{p} is not a trtrun test file (field 'format' is not 'trtrun-test')"),
    (b'{"format": "trtrun-test"}', "test file {p}: version None is not supported (2 is)"),
    (b'{"format": "trtrun-test", "version": 7}', "test file {p}: version 7 is not supported (2 is)"),
    (b'{"format": "trtrun-test", "version": "2"}', "test file {p}: version '2' is not supported (2 is)"),
    (b'{"format": "trtrun-test", "version": 2.0}', "test file {p}: version 2.0 is not supported (2 is)"),
    (b'{"format": "trtrun-test", "version": "' + b"v" * 200 + b'"}', "version 'vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv... is"),
    (b'{"format": "trtrun-test", "version": 1}', "test file {p}: version 1 is not supported (2 is); it is old: "
                                                  "make it again"),
    (b'{"format": "trtrun-test", "version": true}', "test file {p}: version True is not supported (2 is)"),
])
def test_read_json_file_names_the_file_and_what_is_wrong(tmp_path, content, needle):
    from trtrun.errors import InputError

    p = tmp_path / "f.json"
    if content == "dir":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError) as err:
        _read(p)
    assert needle.format(p=p) in str(err.value), str(err.value)


def test_read_json_file_reads_at_most_its_bound(tmp_path):
    """A large file (sparse here: 1 GiB of zeros costs no disk) is refused after reading max_bytes + 1 of it,
    never read whole; the message gives the bound in MiB where it is one."""
    from trtrun.errors import InputError

    p = tmp_path / "big.json"
    with open(p, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(InputError, match=r"test file .*big.json is larger than 2 MiB; one takes bytes$"):
        _read(p, max_bytes=2 << 20)
