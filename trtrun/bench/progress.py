"""The sweep's progress display on stderr: a bar with the count, the point being measured, the time spent
and an estimate of the time left (from the measured cost of each engine's points so far).

On a terminal one line is redrawn; elsewhere (logs, the GPU machine) one line per finished point.
"""

from __future__ import annotations

import sys
import time


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(max(s, 0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressBar:
    WIDTH = 24

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()

    def _bar(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        fill = int(round(frac * self.WIDTH))
        return "#" * fill + "-" * (self.WIDTH - fill)

    def start(self, label: str, eta_s: float | None) -> None:
        if self.enabled and self.tty:
            self._write(f"\r[{self._bar()}] {self.done}/{self.total} {label:<44.44} "
                        f"elapsed {fmt_duration(time.perf_counter() - self.t0)} ETA {fmt_duration(eta_s)}\x1b[K")

    def finish(self, label: str, result: str, eta_s: float | None) -> None:
        self.done += 1
        if not self.enabled:
            return
        el = fmt_duration(time.perf_counter() - self.t0)
        if self.tty:
            self._write(f"\r[{self._bar()}] {self.done}/{self.total} {label:<44.44} {result:<24.24} "
                        f"elapsed {el} ETA {fmt_duration(eta_s)}\x1b[K")
        else:
            w = len(str(self.total))
            self._write(f"[{self.done:>{w}}/{self.total}] {label}: {result}  (elapsed {el}, ETA {fmt_duration(eta_s)})\n")

    def note(self, msg: str) -> None:
        if self.enabled:
            self._write(("\r\x1b[K" if self.tty else "") + msg + "\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self._write("\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
