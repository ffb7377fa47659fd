"""scripts/models_matrix.py's section-only mode: the matrix is kept byte for byte, a section is added or replaced,
and a GPU section refuses results that did not run on the GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("models_matrix", ROOT / "scripts" / "models_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _smollm2_doc(backend: str, hybrid_cos: float) -> dict:
    row = {"hidden_cos_vs_torch_worst": hybrid_cos, "hidden_cos_vs_torch_mean": hybrid_cos,
           "logits_cos_vs_torch_worst": hybrid_cos, "top1_agreement": 0.99, "top1_positions": 2000, "nan": 0,
           "inf": 0, "backend": backend, "backend_why": "Card X (sm_90)"}
    return {"texts": 3, "seq_max": 16, "positions": 2000, "precisions": {"hybrid": row}}


def test_sections_only_keeps_the_matrix_and_replaces_the_gpu_section(tmp_path):
    mm = _script()
    out = tmp_path / "models.md"
    shutil.copy(ROOT / "docs" / "models.md", out)
    before = out.read_text()
    assert mm.main(["--sections-only", "-o", str(out)]) == 0
    assert out.read_text() == before  # nothing named: the file is rendered back unchanged

    for cos in (0.9999123, 0.9999456):  # the second run replaces the first section rather than adding one
        js = tmp_path / "s.json"
        js.write_text(json.dumps(_smollm2_doc("gpu", cos)))
        assert mm.main(["--sections-only", "--smollm2-gpu", str(js), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.count(mm.SMOLLM2_GPU_TITLE) == 1
    assert "0.9999456" in text and "0.9999123" not in text
    assert "(Card X (sm_90))" in text
    cut, old_cut = text.find("\n" + mm.SMOLLM2_GPU_TITLE), before.find("\n" + mm.SMOLLM2_GPU_TITLE)
    # the matrix and the other sections byte for byte, then the new section (last, as main() writes it)
    assert text[:cut] == before[:old_cut if old_cut >= 0 else len(before)]


def test_gpu_section_refuses_a_reference_run(tmp_path):
    mm = _script()
    out = tmp_path / "models.md"
    shutil.copy(ROOT / "docs" / "models.md", out)
    js = tmp_path / "s.json"
    js.write_text(json.dumps(_smollm2_doc("reference", 0.9999)))
    with pytest.raises(SystemExit, match="not the GPU"):
        mm.main(["--sections-only", "--smollm2-gpu", str(js), "-o", str(out)])
