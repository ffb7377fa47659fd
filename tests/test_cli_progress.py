"""The build progress display: a redrawn bar on a terminal, one line per finished step elsewhere."""

import io

from trtrun.cli._ui import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_log_mode_one_line_per_step():
    s = io.StringIO()
    p = Progress(stream=s)
    for step in ("load", "fuse"):
        for i in range(5):
            p(step, i + 1, 5)
    p.close()
    lines = s.getvalue().splitlines()
    assert [ln.split(":")[0].strip() for ln in lines] == ["load", "fuse"]
    assert [name for name, _ in p.done_steps] == ["load", "fuse"]


def test_progress_tty_redraws_and_ends_lines():
    s = _Tty()
    p = Progress(stream=s)
    p("lower", 1, 4)
    p("lower", 4, 4)
    p.close()
    out = s.getvalue()
    assert "\r" in out and "[" in out and "4/4" in out and out.endswith("\n") and "done in" in out


def test_progress_disabled_writes_nothing():
    s = io.StringIO()
    p = Progress(stream=s, enabled=False)
    p("load", 1, 1)
    p.close()
    assert s.getvalue() == ""
