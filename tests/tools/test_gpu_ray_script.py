"""scripts/gpu/ray.sh (issue 22's GPU acceptance) runs unattended in one device call, so what can be checked
without a GPU is checked here: the scripts parse, every function ray.sh runs as a step is exported to the
child shell that runs it, the Ray pack's default part fits a call beside the checkout, and the Python steps
(scripts/gpu/ray_accept.py) work on the CPU: the corpus, the random-weight model and the PyTorch baseline, a
real `trtrun embed` run whose summary line is parsed, the vector comparison, Ray's overhead and the table.

The whole dry run (`RAY_SH_DRY=1 bash scripts/gpu/ray.sh`: every step on the reference backend, Ray from the
venv) takes ~75 s on a 2-core machine, too long for CI; docs/ray.md shows its output.
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "scripts/gpu/ray.sh", ROOT / "scripts/gpu/ray-prep.sh", ROOT / "scripts/pack_ray.sh",
           ROOT / "scripts/gpu/fetch-wheels.sh"]
CALL_LIMIT = 64 << 20  # what one device call carries: the checkout and the carried paths


def _accept():
    spec = importlib.util.spec_from_file_location("ray_accept", ROOT / "scripts/gpu/ray_accept.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_function_run_as_a_step_is_exported():
    """`step NAME EST CAP fn` runs fn in `bash -c` under `timeout`: a function that is not exported (with the
    variables it reads) is "command not found" there, on the GPU machine, after the build."""
    text = (ROOT / "scripts/gpu/ray.sh").read_text()
    defined = set(re.findall(r"^([a-z_]+)\(\) \{", text, re.M))
    exported = {f for line in re.findall(r"^export -f (.+)$", text, re.M) for f in line.split()}
    stepped = {m for m in re.findall(r"^\s*step \"[^\"]+\" \S+ \S+ ([a-z_]+)", text, re.M)} | \
              {m for m in re.findall(r"^\s*step [a-z]+ \S+ \S+ ([a-z_]+)", text, re.M)}
    stepped &= defined
    assert {"assemble", "unpack", "install_wheels", "build", "prepare", "serve_all"} <= stepped
    assert stepped <= exported, f"run as steps but not exported: {sorted(stepped - exported)}"


def test_the_default_ray_part_fits_a_call_beside_the_checkout():
    """pack_ray.sh's default PART_MB + the checkout (what every call sends) stays under 64 MiB, with 4 MiB to
    spare for the checkout to grow: a part of 60 MiB did not fit."""
    m = re.search(r"part_mb=\$\{PART_MB:-(\d+)\}", (ROOT / "scripts/pack_ray.sh").read_text())
    assert m, "pack_ray.sh sets no default PART_MB"
    part = int(m.group(1)) << 20
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the checkout's size is unknown")
    archive = len(subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout)
    assert part + archive + (4 << 20) <= CALL_LIMIT, (part, archive)


def test_corpus_from_imdb_tsv_xz(tmp_path):
    acc = _accept()
    src = tmp_path / "imdb.tsv.xz"
    with lzma.open(src, "wt", encoding="utf-8") as f:
        f.write("0\tfirst review, with a \"quote\"\n1\tsecond\ttab inside\n\n0\tthird é\n")
    d = acc.make_corpus(src, tmp_path / "c.jsonl", None)
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()]
    assert d["texts"] == 3
    assert rows == [{"id": 0, "text": 'first review, with a "quote"'}, {"id": 1, "text": "second\ttab inside"},
                    {"id": 2, "text": "third é"}]
    assert acc.make_corpus(src, tmp_path / "c2.jsonl", 2)["texts"] == 2
    d = acc.make_corpus(src, tmp_path / "c3.jsonl", 2, repeat=3)  # the list over again, ids counting on
    rows = [json.loads(x) for x in (tmp_path / "c3.jsonl").read_text(encoding="utf-8").splitlines()]
    assert d["texts"] == 6 and d["repeat"] == 3 and [r["id"] for r in rows] == list(range(6))
    assert [r["text"] for r in rows] == [rows[0]["text"], rows[1]["text"]] * 3


def test_random_model_and_pytorch_baseline_on_the_cpu(tmp_path):
    """The model step (MiniLM's config, here shrunk) and the sentence-transformers-style baseline: unit
    vectors in input order (each text's vector does not depend on the order the batches took)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trtrun import data

    tok = data.data_dir() / "minilm"
    if not (tok / "tokenizer.json").is_file():
        pytest.skip(f"MiniLM tokenizer not in {tok}")
    acc = _accept()
    info = acc.make_model(tok, tmp_path / "m", tiny=True, seed=0)
    assert (info["hidden"], info["layers"]) == (32, 2)
    assert (tmp_path / "m" / "tokenizer.json").is_file() and (tmp_path / "m" / "1_Pooling").is_dir()
    texts = data.load_texts("rt", n=12, seed=1)
    row, vecs = acc.baseline(tmp_path / "m", texts, 5, 32, "cpu", "fp32")
    assert row["texts"] == 12 and row["tokens"] > 12 and row["texts_per_s"] > 0
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    _, one = acc.baseline(tmp_path / "m", texts[3:4], 5, 32, "cpu", "fp32")
    # fp32 on the CPU; a text alone against within a padded batch: ~1e-7 on a unit vector
    np.testing.assert_allclose(one[0], vecs[3], atol=1e-5)


def test_embed_run_summary_compare_and_table(tmp_path, tiny_embed_model):
    """One real `trtrun embed` (a child process, as ray.sh runs it): its summary line parses (a change of its
    wording fails here, not on the GPU machine), the counts come from its Parquet output; then the comparison,
    Ray's overhead and the table on results that name the same output twice."""
    pytest.importorskip("pyarrow")
    from trtrun import data

    acc = _accept()
    texts = data.load_texts("rt", n=40, seed=2)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    args = [str(corpus), "-m", str(tiny_embed_model["plan"]), "--tokenizer", str(tiny_embed_model["tok"]),
            "--id-column", "id", "--backend", "reference", "--shard-rows", "16", "--truncation", "truncate"]
    with open(tmp_path / "embed.log", "w") as log:
        row = acc.run_embed("inproc-1", tmp_path / "out", args, log, timeout=120)
    assert row["rc"] == 0, row
    assert row["texts"] == 40 and row["shards"] == 3 and row["where"].startswith("in-process (reference")
    assert row["tokens"] > 40 and row["texts_per_s"] > 0 and row["texts_per_s_wall"] > 0
    assert "steady_texts_per_s" in row or row.get("steady_s") is None  # (equal mtimes on a coarse clock)
    res = {"embed": [row, dict(row, name="ray-1")], "gpu": "none", "mode": "test"}
    v = acc.compare(res, None)
    assert v["inproc-1 vs ray-1"]["identical"] and v["inproc-1 vs ray-1"]["same_ids_in_order"]
    res["vectors"] = v
    ov = acc.overhead(res)
    assert ov["job"]["overhead_pct"] == 0.0 and ov["job"]["within_10pct"]
    res["serve"] = {"clients": 64, "duration": 20, "warmup": 5, "ok": True, "reference": "ray_serve",
                    "targets": [{"target": "ray_serve", "requests_per_s": 1000.0, "latency_ms": {"p50": 1, "p99": 2},
                                 "checked_requests": 5, "failed": 0, "mismatched": 0, "min_cosine": 1.0}]}
    res["skipped"] = ["serve_w4: too little time"]
    table = acc.summary(res)
    assert "| inproc-1 | in-process (reference" in table and "| inproc-1 vs ray-1 | 40 | True | 0 |" in table
    assert "| ray_serve | 1,000 |" in table and "SKIPPED: serve_w4" in table
    assert "Ray's overhead (job time)" in table


def test_parse_summary_of_a_failed_run_is_none():
    assert _accept().parse_summary("trtrun: error: something\n") is None


def test_overhead_of_a_second_ray_variant_is_apart():
    """RAY_EMBED_ARGS_B's runs (rayb-N) get their own overhead lines; the default Ray runs keep the plain ones."""
    acc = _accept()
    runs = [{"name": "inproc-1", "rc": 0, "texts_per_s": 100.0}, {"name": "inproc-2", "rc": 0, "texts_per_s": 100.0},
            {"name": "ray-1", "rc": 0, "texts_per_s": 80.0}, {"name": "ray-2", "rc": 0, "texts_per_s": 80.0},
            {"name": "rayb-1", "rc": 0, "texts_per_s": 95.0}, {"name": "rayb-2", "rc": 1, "texts_per_s": 1.0}]
    ov = acc.overhead({"embed": runs})
    assert ov["job"]["overhead_pct"] == 20.0 and not ov["job"]["within_10pct"]
    assert ov["job, rayb"]["ray_texts_per_s"] == 95.0 and ov["job, rayb"]["within_10pct"]  # the failed run is left out
    assert set(ov) == {"job", "job, rayb"}
