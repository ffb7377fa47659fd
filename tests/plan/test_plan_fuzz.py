"""A bounded, seeded fuzz run of the plan loader in CI: scripts/fuzz_plan.py's mutator on tiny hand-made
plans (tests/plan/test_plan.py). Loading must raise nothing but PlanError, and a plan that loads must run on a
tiny input raising nothing but PlanError/InputError. Long runs: `python scripts/fuzz_plan.py --help`.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_plan", REPO / "scripts" / "fuzz_plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_plan", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fuzz_plan():
    return _fuzz_module()


def test_fuzz_5000_mutated_plans(fuzz_plan, tmp_path):
    """5,000 mutants (about 45% structured header edits with a fresh checksum, 10% edits of the fp8 and Attention
    fields, 4% Engine descriptions), seeded: ~5-6 s on CI's cores."""
    out = io.StringIO()
    r = fuzz_plan.fuzz(fuzz_plan.default_seeds(), execs=5000, seed=18, crashes=tmp_path / "crashes",
                       exec_timeout=20.0, out=out)
    assert r["execs"] == 5000
    assert not r["crashes"] and not r["hangs"], out.getvalue()[-5000:]
    outcomes = r["outcomes"]
    unexpected = {k: v for k, v in outcomes.items()
                  if not k.startswith(("PlanError", "loaded, ", "engine description: "))}
    assert not unexpected, (unexpected, out.getvalue()[-5000:])  # incl. FUZZER ERROR: the mutator's own bugs

    def count(prefix):
        return sum(v for k, v in outcomes.items() if k.startswith(prefix))

    # the mutants reach every stage: the preamble checks, the checksum, the JSON parser and depth limit,
    # the schema (ops, tensors, weights), the values of scales and Attention parameters, and files that load and run
    for stage in ("PlanError lengths", "PlanError checksum", "PlanError header JSON", "PlanError header.ops",
                  "PlanError header.tensors", "PlanError header.weights", "loaded, ran"):
        assert count(stage) >= 20, (stage, dict(outcomes))
    assert count("PlanError weights") >= 5, dict(outcomes)  # check_values: NaN/inf/zero scales, slopes, ...
    assert r["kinds"]["structured"] >= 2000 and r["kinds"]["fields"] >= 400 and r["kinds"]["engine"] >= 150
    if fuzz_plan.native_engine() is not None:  # the Engine's description checks, passed and refused
        # (what lowers, the Engine takes: lowering refuses the head sizes and fp8 shapes the kernels lack first, by
        # op; the Engine's own refusals are reached through the edited descriptions below)
        assert count("loaded, ran, engine ok") >= 20 and count("loaded, ran, not lowerable") >= 20, dict(outcomes)
        assert count("engine description: refused") >= 50, dict(outcomes)


def test_fuzz_is_reproducible(fuzz_plan):
    seeds = fuzz_plan.default_seeds()
    a = fuzz_plan.fuzz(seeds, execs=300, seed=7, out=io.StringIO())
    b = fuzz_plan.fuzz(seeds, execs=300, seed=7, out=io.StringIO())
    assert a["outcomes"] == b["outcomes"] and a["kinds"] == b["kinds"]


def test_fuzz_saves_a_crash(fuzz_plan, tmp_path, monkeypatch):
    """An unexpected exception is a finding: counted, its input saved under --crashes, its path printed."""
    real = fuzz_plan.execute
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise IndexError("planted")
        return real(path, data)

    monkeypatch.setattr(fuzz_plan, "execute", flaky)
    out = io.StringIO()
    r = fuzz_plan.fuzz(fuzz_plan.default_seeds(), execs=5, seed=1, crashes=tmp_path / "c", out=out)
    assert r["outcomes"]["CRASH IndexError"] == 1 and len(r["crashes"]) == 1
    saved = Path(r["crashes"][0])
    assert saved.parent == tmp_path / "c" and saved.stat().st_size > 0
    assert f"saved {saved}" in out.getvalue() and "IndexError: planted" in out.getvalue()


def test_fuzz_script_cli(tmp_path):
    """The script's command line: a short run prints the counts, the rate and the peak RSS, exit 0."""
    import subprocess

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz_plan.py"), "--execs", "200", "--seed", "3",
                        "--crashes", str(tmp_path / "crashes"), "--progress", "0"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "200 executions in" in r.stdout and "/s over 1 process(es)" in r.stdout
    assert "peak RSS per process:" in r.stdout and "crashes: 0, hangs: 0" in r.stdout
