"""tools/pyspy_summary.py on a raw py-spy file written here: per-process and per-thread seconds, the import time of a
matched process by package chain, and the time under trtrun functions; a missing file is a clear error."""
from __future__ import annotations

import importlib.util
import lzma
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RAW = """\
process 10:"python -m trtrun embed";thread (10): MainThread;run (trtrun/cli/embed.py:5) 30
process 10:"python -m trtrun embed";process 20:"raylet";process 30:"default_worker.py";thread (30): MainThread;<module> (ray/_private/workers/default_worker.py:8);<module> (ray/data/__init__.py:3);<module> (pandas/__init__.py:1) 220
process 10:"python -m trtrun embed";process 20:"raylet";process 30:"default_worker.py";thread (30): MainThread;<module> (ray/_private/workers/default_worker.py:8) 80
process 10:"python -m trtrun embed";process 20:"raylet";process 30:"default_worker.py";thread (31): trtrun-embed_0;EmbedActor.__call__ (trtrun/corpus/ray_job.py:140);Embedder._run_batch (trtrun/embed/embedder.py:470) 50
"""


def _tool():
    spec = importlib.util.spec_from_file_location("pyspy_summary", ROOT / "tools" / "pyspy_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_by_process_thread_import_and_function(tmp_path, capsys):
    raw = tmp_path / "p.txt.xz"
    with lzma.open(raw, "wt") as f:
        f.write(RAW)
    assert _tool().main([str(raw), "--rate", "100", "--match", "EmbedActor"]) == 0
    out = capsys.readouterr().out
    assert "process 30: 350 samples, 3.50 s  default_worker.py" in out           # the innermost process owns it
    assert "process 10: 30 samples, 0.30 s" in out
    assert "3.00 s  thread (30): MainThread" in out and "0.50 s  thread (31): trtrun-embed_0" in out
    assert "process 30: importing 3.00 s" in out                                 # only process 30 matches
    assert "2.20 s  ray > pandas" in out and "0.80 s  ray\n" in out
    assert "0.50 s  EmbedActor.__call__" in out and "process 10: importing" not in out


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert _tool().main([str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
