"""A stub engine for measuring `trtrun serve`'s own CPU cost on a machine without a GPU (benchmarks only).

    python bench/serve_stub.py --port 8101                      # micro-batching (as `trtrun serve`)
    python bench/serve_stub.py --port 8102 --no-batching        # one request per engine call
    python bench/serve_stub.py --port 8101 --workers 4          # 4 processes on one port
    python bench/serve_stub.py --port 8101 --workers 4 --gpu-lock /tmp/gpu.lock   # ... sharing one "GPU"

StubEmbedder is a real trtrun.Embedder in everything but the engine: the real tokenizer (all-MiniLM-L6-v2's
tokenizer.json from the data folder), the real packing, padding, pooling, normalization, truncation policy,
embed_groups and metrics observer; only the engine call is replaced by a fake "GPU" that
- copies the ids into an int32 buffer and range-checks them (what trtrun.runtime.Context.run does on the
  host before the GPU works),
- sleeps `fixed_s + padded_tokens * per_token_s` WITHOUT the GIL (the real runtime releases the GIL while
  the GPU runs): by default 0.3 ms + 0.2 us per padded token, about what all-MiniLM-L6-v2 costs on an
  H100/H200 (a 64 x 32 token batch: 0.7 ms),
- with gpu_lock (a file path), holds an flock on it while "running": every process's calls then run one
  at a time, as on a GPU without MPS (separate processes' kernels do not overlap); without it, each
  context runs independently (an unlimited GPU),
- returns hidden states [B, S, dim] gathered from a fixed random table by token id (the same memory
  traffic as the runtime's device-to-host copy of the output), so a text's pooled vector depends only on
  its own tokens: responses can be checked against single-request embeddings exactly as on the GPU.
Nothing here is used by the library; the server code it runs is the real one (trtrun.serve).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from trtrun.embed import Embedder  # noqa: E402


class StubEmbedder(Embedder):
    """Embedder with a fake engine (see the module docstring). Picklable arguments only, so a worker process
    can build its own from the same keyword arguments (stub_factory)."""

    def __init__(self, tokenizer_dir=None, *, dim: int = 384, contexts: int = 2, fixed_s: float = 3e-4,
                 per_token_s: float = 2e-7, max_batch_size: int = 128, max_seq_len: int = 256,
                 max_tokens_per_batch: int | None = None, truncation: str = "truncate", pooling: str = "mean",
                 normalize: bool = True, vocab: int = 30522, seed: int = 0, gpu_lock: str | None = None):
        from tokenizers import Tokenizer

        from trtrun import data

        d = Path(tokenizer_dir) if tokenizer_dir else data.data_dir() / "minilm"
        self.tokenizer, self.tokenizer_dir, self._model_max_length = None, d, None
        self._backend_tok_src = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.plan, self.plan_path, self.from_onnx = None, None, False
        self.output, self.dim = "last_hidden_state", int(dim)
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"]
        self.pooling, self.pooling_source = pooling, "given"
        self.normalize, self.truncation = bool(normalize), truncation
        self.min_batch, self.min_seq = 1, 1
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len, self.max_seq_len_source = int(max_seq_len), "given"
        self.max_tokens_per_batch = int(max_tokens_per_batch or max(min(16384, max_batch_size * max_seq_len),
                                                                       max_seq_len))
        self._setup_tokenizer()
        self.contexts = int(contexts)
        self.backend, self.backend_reason = "stub", f"fake engine: {fixed_s * 1e3:g} ms + {per_token_s * 1e6:g} us/token"
        self.fixed_s, self.per_token_s = float(fixed_s), float(per_token_s)
        # gpu_lock: a file; engine calls of all processes (and contexts) using it run one at a time
        self._gpu_lock = os.open(gpu_lock, os.O_RDWR | os.O_CREAT, 0o600) if gpu_lock else None
        if gpu_lock:
            self.backend_reason += " (one call at a time across processes)"
        self._table = np.random.default_rng(seed).standard_normal((vocab, self.dim)).astype(np.float32)
        self.engine_calls = 0
        self._calls_lock = threading.Lock()
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self._pool = queue.SimpleQueue()
        for _ in range(self.contexts):
            self._pool.put(self._make_runner())
        self._closers, self._engine = [], None
        self._fanout = ThreadPoolExecutor(max_workers=self.contexts, thread_name_prefix="trtrun-embed") \
            if self.contexts > 1 else None
        self._closed = False

    def _make_runner(self):
        buf = np.zeros(self.max_tokens_per_batch * 4, np.int32)  # the runtime's pinned input buffer
        table = self._table

        def run(feeds):
            ids = feeds["input_ids"]
            B, S = ids.shape
            if ids.min() < 0 or ids.max() >= table.shape[0]:
                raise ValueError("token id out of range")
            need = B * S
            b = buf if need <= buf.size else np.zeros(need, np.int32)
            b[:need].reshape(B, S)[:] = ids
            busy = self.fixed_s + need * self.per_token_s
            if busy > 0:  # the "GPU": no GIL held
                if self._gpu_lock is None:
                    time.sleep(busy)
                else:  # one GPU for every process: calls run one at a time (a GPU without MPS)
                    fcntl.flock(self._gpu_lock, fcntl.LOCK_EX)
                    try:
                        time.sleep(busy)
                    finally:
                        fcntl.flock(self._gpu_lock, fcntl.LOCK_UN)
            with self._calls_lock:
                self.engine_calls += 1
            return {"last_hidden_state": table[ids]}  # [B, S, dim] float32, a new array like the D2H copy

        return run

    @property
    def model_name(self) -> str:
        return "stub-minilm"

    def describe(self) -> dict:
        return {"model": self.model_name, "plan": None, "precision": "stub", "backend": self.backend,
                "backend_reason": self.backend_reason, "contexts": self.contexts, "dim": self.dim,
                "pooling": self.pooling, "pooling_source": self.pooling_source, "normalize": self.normalize,
                "max_seq_len": self.max_seq_len, "max_seq_len_source": self.max_seq_len_source,
                "max_batch_size": self.max_batch_size, "max_tokens_per_batch": self.max_tokens_per_batch,
                "truncation": self.truncation}


def _name_os_threads() -> None:
    """TRTRUN_STUB_THREAD_NAMES=1: every Python thread started from now on carries its Python name at the OS
    level too (prctl PR_SET_NAME, 15 characters), so per-thread CPU in /proc can be told apart
    (bench/serve_stub_profile.py). The main thread is the event loop. Threads started by native code (the
    tokenizer's rayon pool) inherit their creator's name: TRTRUN_STUB_THREAD_LOG lists the Python ones."""
    import ctypes

    libc = ctypes.CDLL(None)
    inner = threading.Thread._bootstrap_inner

    log = os.environ.get("TRTRUN_STUB_THREAD_LOG")  # also append "native-id name" lines here

    def named(self):
        try:
            libc.prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
            if log:
                with open(log, "a") as f:
                    f.write(f"{threading.get_native_id()} {self.name}\n")
        except Exception:  # noqa: BLE001 - a name is only a convenience
            pass
        inner(self)

    threading.Thread._bootstrap_inner = named


def stub_factory(**kwargs) -> StubEmbedder:
    return StubEmbedder(**kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="trtrun serve with a stub engine (benchmarks only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--contexts", type=int, default=2)
    ap.add_argument("--no-batching", action="store_true")
    ap.add_argument("--max-wait-ms", type=float, default=0.5)
    ap.add_argument("--max-inputs", type=int, default=64)
    ap.add_argument("--fixed-ms", type=float, default=0.3, help="fake engine: fixed cost per call")
    ap.add_argument("--per-token-us", type=float, default=0.2, help="fake engine: cost per padded token")
    ap.add_argument("--workers", type=int, default=1, help="server processes (trtrun serve --workers)")
    ap.add_argument("--shared-engine", action="store_true",
                    help="one engine process for all --workers (trtrun serve --shared-engine)")
    ap.add_argument("--gpu-lock", default=None, metavar="FILE",
                    help="fake engine calls of all processes run one at a time (a GPU without MPS)")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    if os.environ.get("TRTRUN_STUB_THREAD_NAMES") == "1":
        _name_os_threads()

    import functools

    from trtrun.serve.app import ServeConfig, run_server

    make = functools.partial(StubEmbedder, contexts=a.contexts, fixed_s=a.fixed_ms / 1e3,
                             per_token_s=a.per_token_us / 1e6, gpu_lock=a.gpu_lock)
    cfg = ServeConfig(max_inputs=a.max_inputs, max_wait_ms=a.max_wait_ms, batching=not a.no_batching)
    print(f"stub server on http://{a.host}:{a.port}: {a.workers} process(es), "
          f"{'no batching' if a.no_batching else f'micro-batching {a.max_wait_ms} ms'}", flush=True)
    if a.workers > 1 or a.shared_engine:
        from trtrun.serve.workers import run_workers

        return run_workers(make, cfg, workers=a.workers, host=a.host, port=a.port, log_level=a.log_level,
                           shared_engine=a.shared_engine)
    emb = make()

    def stopped(signum, frame):  # uvicorn re-raises the SIGTERM it handled gracefully (as trtrun serve does)
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, stopped)
    try:
        run_server(emb, cfg, host=a.host, port=a.port, log_level=a.log_level)
    except KeyboardInterrupt:
        pass
    finally:
        emb.close()
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: workers (spawned) must find StubEmbedder by this name
        from serve_stub import main  # noqa: F811
    sys.exit(main())
