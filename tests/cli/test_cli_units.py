"""CLI helpers: the build progress display (time charged to the step a call reports) and per-sample cosine."""

import io

from trtrun.cli._ui import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _builder_like(p, clock):
    """As trtrun.builder calls it: after each pass, overall count; within a long pass, its own count."""
    clock.t += 1.0
    p("load", 1, 3)
    for k in range(4):  # a long pass reporting 4 sub-steps of 0.5 s
        clock.t += 0.5
        p("lower (weights)", k + 1, 4)
    clock.t += 0.25
    p("lower", 2, 3)
    clock.t += 3.0
    p("plan", 3, 3)


def test_progress_charges_time_to_the_reported_step():
    s, clock = io.StringIO(), _Clock()
    p = Progress(stream=s, clock=clock)
    _builder_like(p, clock)
    assert p.close() == 6.25
    assert p.done_steps == [("load", 1.0), ("lower (weights)", 2.0), ("lower", 0.25), ("plan", 3.0)]
    assert s.getvalue().splitlines() == [
        "  load: 1/3, 1.0s", "  lower (weights): 4/4, 2.0s", "  lower: 2/3, 0.2s", "  plan: 3/3, 3.0s"]


def test_progress_logs_a_line_now_and_then_in_a_long_step():
    s, clock = io.StringIO(), _Clock()
    p = Progress(stream=s, clock=clock)
    for k in range(30):
        clock.t += 1.0
        p("lower (weights)", k + 1, 30)
    p.close()
    lines = s.getvalue().splitlines()
    assert 2 <= len(lines) <= 4 and lines[-1] == "  lower (weights): 30/30, 30.0s"


def test_progress_tty_redraws_in_place():
    s, clock = _Tty(), _Clock()
    p = Progress(stream=s, clock=clock)
    _builder_like(p, clock)
    p.close()
    out = s.getvalue()
    assert "\r" in out and "[" in out and "4/4" in out and out.endswith("\n")
    assert out.count("\n") == 4  # one finished line per step; the live line is redrawn, not repeated


def test_progress_disabled_writes_nothing():
    s = io.StringIO()
    p = Progress(stream=s, enabled=False)
    p("load", 1, 1)
    p.close()
    assert s.getvalue() == ""


def test_per_sample_cosine_known_answers():
    import numpy as np

    from trtrun.cli.run import per_sample_cosine

    out = np.zeros((4, 2, 2))
    ref = np.zeros((4, 2, 2))
    out[0] = [[1, 0], [0, 0]]; ref[0] = [[0, 1], [5, 5]]      # valid token only: orthogonal -> 0
    out[1] = [[1, 2], [3, 4]]; ref[1] = [[2, 4], [6, 8]]      # parallel -> 1
    out[2] = [[1, 0], [0, 0]]; ref[2] = [[-1, 0], [0, 0]]     # opposite -> -1
    out[3] = [[np.nan, 0], [0, 0]]; ref[3] = [[1, 0], [0, 0]]  # NaN -> NaN
    mask = np.array([[1, 0], [1, 1], [1, 1], [1, 1]])
    cos = per_sample_cosine(out, ref, mask)
    assert cos[:3].tolist() == [0.0, 1.0, -1.0] and np.isnan(cos[3])


def test_gpu_unavailable_reason_is_one_short_line(monkeypatch):
    """The CUDA runtime's words for a machine without a GPU or driver are long and nested; the reason trtrun
    gives (trtrun info, run's fallback note) is one short line that still names the error code."""
    import trtrun.runtime as rt
    from trtrun.runtime import extension

    class FakeExt:
        def __init__(self, problem):
            self.problem = problem

        def device_problem(self, device):
            return self.problem

    from trtrun.runtime import device

    def no_cuda_python():
        raise ImportError("No module named 'cuda'")
    # the extension's own words only; what cuda-python adds is tests/runtime/test_driver_facts.py's
    monkeypatch.setattr(device, "_driver_module", no_cuda_python)
    long = ("no usable CUDA device: cudaGetDeviceCount failed with cudaErrorInsufficientDriver "
            "(CUDA driver version is insufficient for CUDA runtime version)")
    for problem, code in ((long, "cudaErrorInsufficientDriver"),
                          ("no usable CUDA device: cudaGetDeviceCount failed with cudaErrorNoDevice (no CUDA-capable "
                           "device is detected)", "cudaErrorNoDevice")):
        monkeypatch.setattr(extension, "load_extension", lambda p=problem: FakeExt(p))
        ok, why = rt.gpu_available()
        assert not ok and why == f"no NVIDIA GPU or driver on this machine: {code}"
        assert len(why) < 80 and "\n" not in why
    other = "this build's kernels do not run on sm_80 (built for sm_90)"  # any other problem: as the runtime said
    monkeypatch.setattr(extension, "load_extension", lambda: FakeExt(other))
    assert rt.gpu_available() == (False, other)


def test_run_pooling_choice(tmp_path):
    """`trtrun run -o`: auto pools an encoder's output (the sentence-transformers config where one is found,
    else mean) and keeps a decoder's token states; an explicit --pooling wins."""
    import json
    from types import SimpleNamespace

    from trtrun.cli.run import resolve_pooling

    enc = SimpleNamespace(header={"model": {"arch": "encoder"}})
    dec = SimpleNamespace(header={"model": {"arch": "decoder"}})
    st = tmp_path / "st"
    (st / "1_Pooling").mkdir(parents=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert resolve_pooling(enc, "auto", 3, [None, tmp_path / "missing", st])[0] == "cls"
    assert resolve_pooling(enc, "auto", 3, [tmp_path])[0] == "mean"
    assert resolve_pooling(dec, "auto", 3, [st])[0] == "none"
    assert resolve_pooling(enc, "auto", 2, [st])[0] == "none"
    assert resolve_pooling(dec, "max", 3, [st]) == ("max", "--pooling max")


def test_info_names_the_extra_of_a_missing_package(monkeypatch):
    from trtrun.cli import info

    real = info._version
    monkeypatch.setattr(info, "_version", lambda d: None if d in ("onnxscript", "scikit-learn") else real(d))
    monkeypatch.setattr(info, "_gpu_runtime", lambda: {"built": False, "usable": False, "reason": "r", "gpu": None})
    from click.testing import CliRunner

    out = CliRunner().invoke(info.command, []).output
    assert "missing: onnxscript ('trtrun[export]'), scikit-learn ('trtrun[check]')" in out
