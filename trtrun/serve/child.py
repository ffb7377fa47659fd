"""What every process the serve supervisor (trtrun.serve.workers) starts does first, worker or engine process
(trtrun.serve.engine_proc) alike."""

from __future__ import annotations

import signal
import sys


def child_signals() -> list:
    """In a process the supervisor started: SIGTERM/SIGINT are noted (in the list returned) until the process's
    own server takes them over, and on Linux the supervisor's death (even by SIGKILL) sends this process a
    SIGTERM, so it stops gracefully too."""
    stop_asked: list = []

    def early_stop(signum, frame):
        stop_asked.append(signum)

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return stop_asked
