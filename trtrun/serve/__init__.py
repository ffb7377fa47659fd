"""Serving embeddings: micro-batching (MicroBatcher) and the HTTP server (create_app, run_server; run_workers
for several processes on one port).

Importing this package is cheap; starlette, uvicorn and prometheus-client load when an app is made.
"""

from __future__ import annotations

from .batcher import BatcherClosedError, MicroBatcher, QueueFullError

__all__ = ["MicroBatcher", "QueueFullError", "BatcherClosedError", "ServeConfig", "create_app", "run_server",
           "run_workers"]


def __getattr__(name: str):
    if name in ("ServeConfig", "create_app", "run_server"):
        from . import app

        return getattr(app, name)
    if name == "run_workers":
        from . import workers

        return workers.run_workers
    raise AttributeError(f"module 'trtrun.serve' has no attribute {name!r}")
