"""tools/ncu_shares.py on a synthetic ncu --csv table: noise lines skipped, units converted, kernels grouped by
name and by kind, shares summing to the total; a file that is not an ncu table is refused clearly."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import ncu_shares  # noqa: E402

HEADER = '"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'


def _table(tmp_path, rows, noise=True):
    p = tmp_path / "ncu.csv"
    text = ("==PROF== Connected to process 1\nPOINT bert-base hybrid 1x128 : p50 7.9 ms\n" if noise else "")
    text += HEADER + "".join(f'"{i}","{k}","{m}","{u}","{v}"\n' for i, (k, m, u, v) in enumerate(rows))
    p.write_text(text)
    return p


def test_units_order_and_skipped_rows(tmp_path):
    p = _table(tmp_path, [("nvjet_sm90_hsh_64x16_bias_NNT", "gpu__time_duration.sum", "nsecond", "6,000"),
                          ("void trtrun::layernorm_kernel<8>", "gpu__time_duration.sum", "usecond", "3.5"),
                          ("void trtrun::layernorm_kernel<8>", "dram__bytes_read.sum", "byte", "999"),
                          ("void trtrun::attention_tc_kernel<64>", "gpu__time_duration.sum", "msecond", "0.005")])
    k = ncu_shares.read(str(p))
    assert [n for n, _ in k] == ["nvjet_sm90_hsh_64x16_bias_NNT", "void trtrun::layernorm_kernel<8>",
                                 "void trtrun::attention_tc_kernel<64>"]
    assert [us for _, us in k] == pytest.approx([6.0, 3.5, 5.0])


def test_families_and_shares(tmp_path):
    rows = [("nvjet_a", "gpu__time_duration.sum", "nsecond", "6000")] * 4 + \
           [("void trtrun::layernorm_kernel<8>", "gpu__time_duration.sum", "nsecond", "3000")] * 2 + \
           [("void trtrun::stage_inputs_kernel", "gpu__time_duration.sum", "nsecond", "1000"),
            ("void something_else", "gpu__time_duration.sum", "nsecond", "500")]
    k = ncu_shares.read(str(_table(tmp_path, rows)))
    fam = ncu_shares.shares(k, families=True)
    assert fam[0] == ("cuBLASLt GEMM", 4, pytest.approx(24.0))
    assert fam[1] == ("LayerNorm", 2, pytest.approx(6.0))
    assert {f[0] for f in fam} == {"cuBLASLt GEMM", "LayerNorm", "input staging", "other"}
    assert sum(f[2] for f in fam) == pytest.approx(sum(us for _, us in k))
    by_name = ncu_shares.shares(k, families=False)
    assert by_name[0][:2] == ("nvjet_a", 4)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "ncu_shares.py"), str(tmp_path / "ncu.csv"),
                        "--families"], capture_output=True, text=True)
    assert r.returncode == 0 and "8 kernels, sum of kernel times 31.5 us" in r.stdout
    assert "76.2%" in r.stdout  # 24 of 31.5 us


def test_not_an_ncu_table(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text('"a","b"\n"1","2"\n')
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "ncu_shares.py"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not an ncu --csv table" in r.stderr
    p = _table(tmp_path, [("k", "dram__bytes_read.sum", "byte", "1")])
    with pytest.raises(ValueError, match="no gpu__time_duration.sum rows"):
        ncu_shares.read(str(p))
    p = _table(tmp_path, [("k", "gpu__time_duration.sum", "cycle", "1")])
    with pytest.raises(ValueError, match="unknown time unit"):
        ncu_shares.read(str(p))
