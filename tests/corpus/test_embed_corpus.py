"""trtrun embed in-process (trtrun.corpus): formats, ids, bad rows, resumption, the manifest, the command.

The tiny BERT of conftest (fp32, reference backend) on real Rotten Tomatoes and Wikipedia text; the
expected vectors come from the Embedder itself on the same texts. Tolerance 1e-6: a text's fp32 vector does
not depend on its batch mates but for the rounding of differently shaped GEMMs (~1e-7 on unit vectors).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from trtrun import data  # noqa: E402
from trtrun.errors import TrtrunError  # noqa: E402

ATOL = 1e-6


@pytest.fixture(scope="module")
def corpus():
    return data.load_texts("rt", n=50, seed=5) + data.load_texts("wiki", n=10, seed=5)


def _vectors(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_three_formats_give_the_embedders_vectors_in_input_order(tmp_path, emb, corpus):
    from trtrun.corpus import embed_corpus, read_output

    want = emb.embed(corpus)
    ids = [f"doc-{i}" for i in range(len(corpus))]
    inputs = {
        "jsonl": (_jsonl(tmp_path / "c.jsonl", [{"id": d, "body": t} for d, t in zip(ids, corpus)]), "body", "id"),
        "text": (tmp_path / "c.txt", "text", None),
        "parquet": (tmp_path / "c.parquet", "body", "id"),
    }
    (tmp_path / "c.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"id": ids, "body": corpus}), tmp_path / "c.parquet", row_group_size=7)
    for fmt, (path, col, idc) in inputs.items():
        out = tmp_path / f"out-{fmt}"
        s = embed_corpus(path, out, embedder=emb, text_column=col, id_column=idc, shard_rows=16, chunk_rows=8)
        assert (s.rows_total, s.rows_embedded, s.bad_rows, s.shards_written) == (60, 60, 0, 4), fmt
        t = read_output(out)
        assert t.column("id").to_pylist() == (ids if idc else list(range(60))), fmt
        np.testing.assert_allclose(_vectors(t), want, atol=ATOL, err_msg=fmt)
        lens = emb.tokenize(corpus).lengths
        assert t.column("num_tokens").to_pylist() == lens.tolist()
        assert t.column("truncated").to_pylist() == emb.tokenize(corpus).truncated.tolist()
        assert any(t.column("truncated").to_pylist())  # the wiki paragraphs exceed the tiny model's 32 tokens
        assert s.tokens == int(lens.sum())
        assert t.schema.field("embedding").type == pa.list_(pa.float32(), emb.dim)
        man = json.loads((out / "_manifest.json").read_text())
        assert man["identity"]["input"]["rows"] == 60 and man["identity"]["model"]["dim"] == emb.dim


@pytest.fixture(scope="module")
def short(emb):
    """40 Rotten Tomatoes sentences within the tiny model's 32 tokens."""
    rt = data.load_texts("rt", n=200, seed=6)
    lens = emb.tokenize(rt).lengths
    return [t for t, n in zip(rt, lens) if n < 32][:40]


def _bad_corpus(tmp_path, corpus, short):
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(short)]
    rows[3]["text"] = ""
    rows[9]["text"] = 7
    rows[12]["text"] = "bad \ud800 text"
    rows[20] = "{not json"
    rows[25] = {"text": "no id here"}
    rows[33]["text"] = corpus[55]  # a wiki paragraph: over 32 tokens, refused under truncation "reject"
    return _jsonl(tmp_path / "bad.jsonl", rows)


def test_bad_rows_are_skipped_and_listed_or_stop_the_job(tmp_path, tiny_embed_model, corpus, short):
    from trtrun.corpus import embed_corpus, read_output
    from trtrun.corpus.job import BadRowError
    from trtrun.embed import Embedder

    path = _bad_corpus(tmp_path, corpus, short)
    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                  truncation="reject") as e:
        seen = []
        s = embed_corpus(path, tmp_path / "skip", embedder=e, id_column="id", shard_rows=16, chunk_rows=8,
                         on_error="skip", on_bad_row=lambda *a: seen.append(a))
        assert s.bad_rows == 6 and s.rows_embedded == 34
        bad = {r for r, _, _ in seen}
        assert bad == {3, 9, 12, 20, 25, 33}
        listed = [json.loads(x) for p in sorted((tmp_path / "skip" / "_errors").glob("*.jsonl"))
                  for x in p.read_text().splitlines()]
        assert [b["row"] for b in listed] == [3, 9, 12, 20, 25, 33]
        why = {b["row"]: (b["id"], b["error"]) for b in listed}
        assert why[3] == ("d3", "is an empty text")
        assert why[9] == ("d9", "field 'text' is a number, expected a string")
        assert "lone surrogate U+D800" in why[12][1] and "not valid JSON" in why[20][1]
        assert why[25][0] is None and "no field id field 'id'" in why[25][1].replace("has ", "")
        assert why[33][0] == "d33" and "more than the limit of 32 tokens" in why[33][1]
        t = read_output(tmp_path / "skip")
        good = [i for i in range(40) if i not in bad]
        assert t.column("id").to_pylist() == [f"d{i}" for i in good]
        np.testing.assert_allclose(_vectors(t), e.embed([short[i] for i in good]), atol=ATOL)

        with pytest.raises(BadRowError, match=r"row 3 \(id 'd3'\): is an empty text.*0 of 3 shards are written"):
            embed_corpus(path, tmp_path / "fail", embedder=e, id_column="id", shard_rows=16, on_error="fail")
        # a bad row in the second shard: the first one is kept
        with pytest.raises(BadRowError, match=r"row 20: is not valid JSON.*1 of 3 shards are written"):
            _fail_from(path, tmp_path, e)
        assert sorted(p.name for p in (tmp_path / "fail2").glob("part-*")) == ["part-00000.parquet"]


def _fail_from(path, tmp_path, e):
    """The bad corpus with its first-shard problems fixed, so the job fails in shard 1 (row 20)."""
    from trtrun.corpus import embed_corpus

    lines = path.read_text(encoding="utf-8").splitlines()
    for i in (3, 9, 12):
        lines[i] = json.dumps({"id": f"d{i}", "text": "fine"})
    fixed = tmp_path / "bad2.jsonl"
    fixed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return embed_corpus(fixed, tmp_path / "fail2", embedder=e, id_column="id", shard_rows=16, on_error="fail")


def test_a_failed_job_reruns_only_its_unfinished_shards(tmp_path, emb, corpus, monkeypatch):
    from trtrun.corpus import embed_corpus, read_output

    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    calls = []
    real = emb.embed_result

    def failing(texts):  # the engine "dies" on the 4th chunk (shard 1 of 8-row chunks, 16-row shards)
        calls.append(len(texts))
        if len(calls) == 4:
            raise TrtrunError("injected engine failure")
        return real(texts)

    monkeypatch.setattr(emb, "embed_result", failing)
    with pytest.raises(TrtrunError, match="injected"):
        embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("part-*.parquet")}
    assert list(first) == ["part-00000.parquet"]
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind

    calls.clear()
    monkeypatch.setattr(emb, "embed_result", lambda texts: (calls.append(len(texts)), real(texts))[1])
    s = embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)
    assert (s.shards_skipped, s.shards_written, s.rows_resumed, s.rows_embedded) == (1, 3, 16, 44)
    assert sum(calls) == 44  # only the rows of shards 1-3 were embedded again
    assert {n: (p.stat().st_mtime_ns, p.stat().st_ino) for n in first for p in [out / n]} == first
    monkeypatch.setattr(emb, "embed_result", real)
    np.testing.assert_allclose(_vectors(read_output(out)), emb.embed(corpus), atol=ATOL)
    s = embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)  # all done: nothing to do
    assert (s.shards_written, s.rows_embedded, s.shards_skipped) == (0, 0, 4)


def test_a_rerun_with_another_model_or_input_refuses(tmp_path, tiny_embed_model, emb, corpus):
    from trtrun.corpus import embed_corpus
    from trtrun.embed import Embedder

    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus[:20]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    embed_corpus(path, out, embedder=emb, shard_rows=8)
    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                  truncation="truncate", max_seq_len=16) as other:
        with pytest.raises(TrtrunError, match=r"another job \(model.max_seq_len: 32 there, 16 now\)"):
            embed_corpus(path, out, embedder=other, shard_rows=8)
    with pytest.raises(TrtrunError, match="shard_rows: 8 there, 4 now"):
        embed_corpus(path, out, embedder=emb, shard_rows=4)
    path.write_text("\n".join(corpus[:21]) + "\n", encoding="utf-8")
    with pytest.raises(TrtrunError, match=r"input\.(rows|sha256|size)"):
        embed_corpus(path, out, embedder=emb, shard_rows=8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrtrunError, match="not the output of a trtrun embed job"):
        embed_corpus(path, tmp_path / "other", embedder=emb)


def test_embed_command_writes_shards_and_reports_rate(tmp_path, tiny_embed_model, corpus, capsys):
    from trtrun.cli.main import main
    from trtrun.corpus import read_output

    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus[:30]) + "\n\n", encoding="utf-8")  # a blank last line: a bad (empty) row
    args = ["embed", str(path), "-o", str(tmp_path / "out"), "-m", str(tiny_embed_model["plan"]), "--tokenizer",
            str(tiny_embed_model["tok"]), "--backend", "reference", "--truncation", "truncate", "--shard-rows", "8"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "row 30: is an empty text" in err and "3 of 4 shards are written" in err
    assert main(args + ["--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "texts/s" in err and "tokens/s" in err and "3 shard(s) (24 rows) were done already" in err
    assert "skipped row 30: is an empty text" in err
    assert read_output(tmp_path / "out").num_rows == 30
    assert main(["embed", str(path), "-o", str(tmp_path / "o2"), "-m", str(tiny_embed_model["plan"]),
                 "--id-column", "x"]) == 1
    assert "a plain-text input has no columns" in capsys.readouterr().err


# A corpus job that stops in the middle of shard 2 (16-row shards, 8-row chunks: the 5th chunk; shard 0 is
# written by then and shard 1 is being written by the writer thread) and waits there holding the output
# folder's lock, as a long job would, until the test kills it.
_PAUSED_JOB = """
import sys
from trtrun.corpus import embed_corpus
from trtrun.embed import Embedder

plan, tok, path, out = sys.argv[1:5]
emb = Embedder(plan, tok, backend="reference", contexts=1, truncation="truncate")
real, calls = emb.embed_result, []

def paused(texts):
    calls.append(len(texts))
    if len(calls) == 5:
        print("paused", flush=True)
        sys.stdin.readline()  # (the test kills this process instead of writing a line)
    return real(texts)

emb.embed_result = paused
embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)
"""


def test_one_job_per_output_folder_and_a_killed_jobs_folder_resumes(tmp_path, tiny_embed_model, emb, corpus,
                                                                   capsys):
    """A job (another process) is in the middle of writing OUTPUT. A second job on the same folder fails at
    once, in one line naming the folder and the first job's pid, and touches nothing there: not the first
    job's temporary files (before: it deleted them as leftovers of a killed run, and both jobs wrote the same
    shards at once). Then the first job is killed (SIGKILL: no clean-up of its own runs); the OS has dropped
    its lock, so a rerun takes the folder, skips the shards it finished and embeds only the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from trtrun.cli.main import main
    from trtrun.corpus import embed_corpus, read_output
    from trtrun.corpus.job import LOCK_NAME, OutputLockedError

    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_JOB, str(tiny_embed_model["plan"]),
                             str(tiny_embed_model["tok"]), str(path), str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "paused"
        end = time.monotonic() + 30
        while not (out / "part-00001.parquet").is_file() and time.monotonic() < end:
            time.sleep(0.05)
        assert (out / "part-00000.parquet").is_file() and not (out / "part-00002.parquet").exists()
        in_flight = out / ".part-00002.parquet.1.feed.tmp"  # as atomic_write names a shard being written
        in_flight.write_bytes(b"half a shard")
        before = sorted(p.name for p in out.iterdir())

        t0 = time.monotonic()
        with pytest.raises(OutputLockedError) as e:
            embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)
        took = time.monotonic() - t0
        assert f"{out}: another trtrun embed (pid {proc.pid}) is writing this folder" in str(e.value)
        assert took < 1.0, took  # at once: no waiting for the lock, no hashing of the input first
        args = ["embed", str(path), "-o", str(out), "-m", str(tiny_embed_model["plan"]), "--tokenizer",
                str(tiny_embed_model["tok"]), "--backend", "reference", "--shard-rows", "16", "--chunk-rows", "8"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {proc.pid}" in err and str(out) in err, err
        assert sorted(p.name for p in out.iterdir()) == before and in_flight.read_bytes() == b"half a shard"
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    finally:
        proc.kill()  # SIGKILL: a crash, not a clean exit
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = {p.name: p.stat().st_ino for p in out.glob("part-*.parquet")}
    assert sorted(finished) == ["part-00000.parquet", "part-00001.parquet"]

    calls = []
    real = emb.embed_result
    emb_calls = lambda texts: (calls.append(len(texts)), real(texts))[1]  # noqa: E731
    try:
        emb.embed_result = emb_calls
        s = embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)
    finally:
        del emb.embed_result
    assert (s.shards_skipped, s.shards_written) == (len(finished), 4 - len(finished))
    assert sum(calls) == 60 - 16 * len(finished) == s.rows_embedded
    assert {n: (out / n).stat().st_ino for n in finished} == finished  # the finished shards were not rewritten
    assert not list(out.glob(".*.tmp"))  # the killed job's temporary files are gone
    np.testing.assert_allclose(_vectors(read_output(out)), emb.embed(corpus), atol=ATOL)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()  # the rerun held it
    s = embed_corpus(path, out, embedder=emb, shard_rows=16, chunk_rows=8)  # and released it when it ended
    assert s.shards_skipped == 4
