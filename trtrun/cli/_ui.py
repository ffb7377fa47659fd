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
    """`progress(step, done, total)` callback for long work (the builder's contract).

    A call means "`step` has reached done/total" (the builder calls it as each pass finishes, with the
    overall count, and within long passes with their own count). So the time since the previous call
    is charged to the call's step, and consecutive calls with the same step name form one line.
    On a terminal the current line is redrawn in place with a bar; elsewhere (CI logs, pipes) a line is
    printed when the step name changes, plus one every 10 s while the same step goes on.
    `close()` prints the last line and returns the total elapsed seconds.
    """

    WIDTH = 24
    LOG_EVERY_S = 10.0

    def __init__(self, stream=None, enabled: bool = True, clock=time.perf_counter):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = self.t_last = self.t_draw = clock()
        self.step: str | None = None  # the current line
        self.done = self.total = 0
        self.step_s = 0.0
        self.done_steps: list[tuple[str, float]] = []  # (step, seconds charged to it), in order

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if step != self.step:
            self._flush()
            self.step, self.step_s, self.t_draw = step, 0.0, now
        self.step_s += now - self.t_last
        self.t_last, self.done, self.total = now, done, total
        if self.tty:
            if now - self.t_draw > 0.05 or done >= total:
                self.t_draw = now
                frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
                fill = int(round(frac * self.WIDTH))
                self._write(f"\r  {step:<34.34} [{'#' * fill}{'-' * (self.WIDTH - fill)}] {done}/{total}"
                            f"  {now - self.t0:6.1f}s\x1b[K")
        elif now - self.t_draw > self.LOG_EVERY_S:
            self.t_draw = now
            self._write(f"  {step}: {done}/{total} ...\n")

    def _flush(self) -> None:
        if self.step is None:
            return
        self.done_steps.append((self.step, self.step_s))
        line = f"  {self.step}: {self.done}/{self.total}, {self.step_s:.1f}s"
        self._write(f"\r{line}\x1b[K\n" if self.tty else line + "\n")
        self.step = None

    def close(self) -> float:
        """Print the last line; returns the total elapsed seconds."""
        if self.enabled:
            self._flush()
        return self.clock() - self.t0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
