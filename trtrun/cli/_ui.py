"""Status lines and the progress display (stderr), shared by the subcommands."""

from __future__ import annotations

import sys
import time

import click


def status(msg: str, quiet: bool = False) -> None:
    """A status line on stderr (stdout stays for results)."""
    if not quiet:
        click.echo(msg, err=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """`progress(step, done, total)` callback for long steps (the builder's contract).

    On a terminal: one line redrawn in place, with a bar, the count and the step's elapsed time.
    Elsewhere (CI logs, pipes): one line when a step ends, and one every 10 s while a long step runs.
    `close()` ends the current step.
    """

    WIDTH = 24
    LOG_EVERY_S = 10.0

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.step: str | None = None
        self.t_step = 0.0
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.done_steps: list[tuple[str, float]] = []

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if step != self.step:
            self._finish(now)
            self.step, self.t_step, self.last_draw = step, now, now
        if self.tty:
            if now - self.last_draw > 0.05 or done >= total:
                self.last_draw = now
                frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
                fill = int(round(frac * self.WIDTH))
                bar = "#" * fill + "-" * (self.WIDTH - fill)
                self._write(f"\r  {step:<28.28} [{bar}] {done}/{total}  {now - self.t_step:5.1f}s\x1b[K")
        elif now - self.last_draw > self.LOG_EVERY_S:  # a long step in a log: a line now and then
            self.last_draw = now
            self._write(f"  {step}: {done}/{total} after {now - self.t_step:.0f}s\n")

    def _finish(self, now: float) -> None:
        if self.step is None:
            return
        dt = now - self.t_step
        self.done_steps.append((self.step, dt))
        if self.tty:
            self._write(f"\r  {self.step:<28.28} done in {dt:.1f}s\x1b[K\n")
        else:
            self._write(f"  {self.step}: {dt:.1f}s\n")
        self.step = None

    def close(self) -> float:
        """End the last step; returns the total elapsed seconds."""
        now = time.perf_counter()
        if self.enabled:
            self._finish(now)
        return now - self.t0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
