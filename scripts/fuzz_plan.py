#!/usr/bin/env python3
"""Mutational fuzzer for the plan loader (trtrun.plan.load_plan) and the reference backend.

Each execution takes a valid seed plan, mutates it, writes it to a file and loads it; a file that loads
is then described (Plan.summary/to_dict, what `trtrun inspect` prints), lowered for the GPU runtime
(trtrun.runtime.lower.lower_plan, pure Python) and run by the reference backend on a tiny input (batch <= 2,
sequence <= 4). Anything but PlanError from the load, or PlanError/InputError from the run, is a crash:
the input is saved under --crashes and its path printed. An execution that takes longer than
--exec-timeout seconds is a hang (saved the same way).

Mutations (seeded, reproducible for a given --seed and --jobs):
  structured  1-4 edits of the header's JSON tree (wrong types, huge/negative/NaN numbers, missing and
              extra keys, dangling or cross-kind references, reordered/duplicated/dropped list items,
              nesting up to 100,000 deep), re-serialized with a fresh checksum so they reach the validator
  header_text byte edits of the header's JSON text (fresh checksum): the JSON parser and depth check
  blob        bytes of the weights changed, incl. NaN/Inf patterns (fresh checksum): files that load and run
  bitflip     random bytes anywhere (checksum recomputed 9 times in 10)
  preamble    version, reserved and the two lengths set to edge values
  truncate    the file cut short, or grown with trailing bytes
  splice      one seed's header over another's blob

Seed plans default to the hand-made tiny plans of tests/handmade_plans.py (encoder and decoder, fp32/fp16/hybrid,
one with a Pool output);
--plan adds plan files of your own.

    python scripts/fuzz_plan.py --execs 1000000 --jobs 2 --seed 1 --crashes fuzz-crashes
    python scripts/fuzz_plan.py --time 600            # as many as fit in ten minutes

At the end it prints the counts by outcome (PlanError split by the field named), executions per second
and the peak RSS of each worker; the exit status is 1 when anything crashed or hung.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MAGIC = b"TRTRUNPL"
_DEEP = "\u0000deep:"  # placeholder string (+ depth) replaced by raw nested brackets after json.dumps
_DEEP_RE = re.compile(re.escape(json.dumps(_DEEP)[:-1]) + r'(\d+)"')

# ------------------------------------------------------------------------------------------ file writing


def build_file(header: bytes, blob: bytes, *, version=1, reserved=0, magic=MAGIC, H=None, W=None,
               checksum=True) -> bytes:
    """A plan file from its parts (docs/plan-format.md), written independently of trtrun.plan."""
    H = len(header) if H is None else H
    W = len(blob) if W is None else W
    body = magic + struct.pack("<IIQQ", version, reserved, H, W) + header
    body += b"\0" * ((-len(body)) % 256) + blob
    digest = hashlib.sha256(body).digest() if checksum else os.urandom(32)
    return body + digest


def split_file(data: bytes) -> tuple[dict, bytes]:
    H, W = struct.unpack_from("<QQ", data, 16)
    start = (32 + H + 255) // 256 * 256
    return json.loads(data[32:32 + H]), data[start:start + W]


def dumps(header) -> bytes:
    """JSON as a crafted file would carry it: NaN/Infinity allowed, deep nesting spliced in as text."""
    s = json.dumps(header, separators=(",", ":"), allow_nan=True)
    s = _DEEP_RE.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), s)
    return s.encode("utf-8")


# ------------------------------------------------------------------------------------------ mutation
INTS = [0, 1, -1, 2, 3, 7, 255, 256, 257, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 63,
        2 ** 64, -2 ** 63, 10 ** 30]
FLOATS = [0.0, -0.0, 1e-45, 1e-12, 0.5, 1.5, 16.5, -1.0, 3.4e38, 3.5e38, 1e308, float("nan"), float("inf"),
          float("-inf")]
ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4}
STRINGS = ["", "B", "S", "x", "float32", "float16", "int64", "int8", "bfloat16", "fp16", "hybrid", "gelu_erf",
           "relu", "Linear", "Embedding", "Attention", "LayerNorm", "Pool", "mean", "cls", "input_ids", "attention_mask",
           "token_type_ids", "last_hidden_state", "\x1b[2J", "\ud800", "n" * 5000]


class Mutator:
    def __init__(self, seeds: list[bytes]):
        self.seeds = []
        for data in seeds:
            hdr, blob = split_file(data)
            names = sorted(set(hdr["tensors"]) | set(hdr["weights"]) | {op["name"] for op in hdr["ops"]})
            self.seeds.append((data, hdr, blob, names))
        self._json = [json.dumps(hdr) for _, hdr, _, _ in self.seeds]  # json.loads copies faster than deepcopy
        self.strategies = [("structured", 45), ("header_text", 12), ("blob", 12), ("bitflip", 10),
                           ("preamble", 7), ("truncate", 7), ("splice", 7)]
        self._p = np.array([w for _, w in self.strategies], float)
        self._p /= self._p.sum()

    def mutate(self, rng: np.random.Generator) -> tuple[str, bytes]:
        kind = self.strategies[rng.choice(len(self.strategies), p=self._p)][0]
        i = rng.integers(len(self.seeds))
        data, _, blob, names = self.seeds[i]
        return kind, getattr(self, "_" + kind)(rng, data, json.loads(self._json[i]), blob, names)

    # --- whole-file byte mutations
    def _bitflip(self, rng, data, hdr, blob, names):
        b = bytearray(data)
        for _ in range(rng.integers(1, 17)):
            i = rng.integers(len(b) - 32)
            b[i] = rng.integers(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.integers(8))
        if rng.random() < 0.9:
            b[-32:] = hashlib.sha256(bytes(b[:-32])).digest()
        return bytes(b)

    def _preamble(self, rng, data, hdr, blob, names):
        H, W = struct.unpack_from("<QQ", data, 16)
        size = len(data)
        edge = [0, 1, 31, 32, 63, 64, H - 1, H + 1, W - 1, W + 1, size, size - 64, 2 ** 32, 2 ** 63, 2 ** 64 - 1,
                int(rng.integers(2 ** 63))]
        version, reserved = 1, 0
        field = rng.integers(4)
        if field == 0:
            version = int(rng.choice([0, 2, 255, 2 ** 32 - 1]))
        elif field == 1:
            reserved = int(rng.choice([1, 2 ** 31, 2 ** 32 - 1]))
        elif field == 2:
            H = int(edge[rng.integers(len(edge))]) % 2 ** 64
        else:
            W = int(edge[rng.integers(len(edge))]) % 2 ** 64
        start = (32 + struct.unpack_from("<Q", data, 16)[0] + 255) // 256 * 256
        raw_h = data[32:32 + struct.unpack_from("<Q", data, 16)[0]]
        out = bytearray(build_file(raw_h, data[start:-32], version=version, reserved=reserved, H=H, W=W))
        if rng.random() < 0.5:
            out[-32:] = os.urandom(32)
        return bytes(out)

    def _truncate(self, rng, data, hdr, blob, names):
        if rng.random() < 0.7:
            return data[:rng.integers(len(data))]
        return data + bytes(rng.integers(0, 256, rng.integers(1, 600), dtype=np.uint8))

    def _splice(self, rng, data, hdr, blob, names):
        _, hdr2, _, _ = self.seeds[rng.integers(len(self.seeds))]
        return build_file(dumps(hdr2), blob)

    def _blob(self, rng, data, hdr, blob, names):
        b = bytearray(blob)
        if not b:
            return build_file(dumps(hdr), bytes(b))
        pats = [b"\x00\x7c", b"\x00\xfc", b"\x00\x7e", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\xff\x7b",
                b"\xff\xff\x7f\x7f"]
        for _ in range(rng.integers(1, 33)):
            i = int(rng.integers(len(b)))
            p = pats[rng.integers(len(pats))] if rng.random() < 0.5 else bytes([rng.integers(256)])
            b[i:i + len(p)] = p
            del b[len(blob):]
        return build_file(dumps(hdr), bytes(b))

    def _header_text(self, rng, data, hdr, blob, names):
        t = bytearray(dumps(hdr))
        alphabet = b'{}[]",:0123456789-+.eEtrufalsn \\/uNaI\x00\xff'
        for _ in range(rng.integers(1, 9)):
            i = int(rng.integers(len(t) + 1))
            r = rng.random()
            c = alphabet[rng.integers(len(alphabet))]
            if r < 0.4 and i < len(t):
                t[i] = c
            elif r < 0.7:
                t[i:i] = bytes([c]) * int(rng.choice([1, 1, 2, 100, 5000]))
            else:
                del t[i:i + int(rng.integers(1, 40))]
        return build_file(bytes(t), blob)

    # --- structured header edits
    def _structured(self, rng, data, hdr, blob, names):
        for _ in range(rng.integers(1, 5)):
            self._edit(rng, hdr, names)
        return build_file(dumps(hdr), blob)

    def _paths(self, node, out, parent=None, key=None):
        out.append((parent, key, node))
        if isinstance(node, dict):
            for k, v in node.items():
                self._paths(v, out, node, k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self._paths(v, out, node, i)

    def _value(self, rng, old, names):
        """A replacement: something of another type, an edge value of the same type, or a reference."""
        r = rng.random()
        if r < 0.15:
            return [None, True, False, [], {}, [1, 2], {"x": 1}, "x"][rng.integers(8)]
        if r < 0.25:
            return _DEEP + str(int(rng.choice([2, 10, 63, 64, 65, 1000, 100_000])))
        if isinstance(old, bool) or old is None:
            return [True, False, None, 0, 1, "true"][rng.integers(6)]
        if isinstance(old, int):
            c = rng.random()
            if c < 0.5:
                return INTS[rng.integers(len(INTS))]
            return old + int(rng.choice([-256, -2, -1, 1, 2, 256])) if c < 0.8 else -old  # Python ints
        if isinstance(old, float):
            return FLOATS[rng.integers(len(FLOATS))] if rng.random() < 0.7 else -old
        if isinstance(old, str):
            c = rng.random()
            if c < 0.5:
                return names[rng.integers(len(names))]  # a reference to something of another kind
            if c < 0.6:
                return old + "x"
            return STRINGS[rng.integers(len(STRINGS))]
        if isinstance(old, list):
            c = rng.random()
            new = list(old)
            if c < 0.3 and new:
                del new[rng.integers(len(new))]
            elif c < 0.5 and new:
                new.insert(int(rng.integers(len(new) + 1)), copy.deepcopy(new[rng.integers(len(new))]))
            elif c < 0.6:
                new.reverse()
            elif c < 0.8:
                new.append(self._value(rng, new[-1] if new else 0, names))
            else:
                new = []
            return new
        if isinstance(old, dict):
            new = dict(old)
            c = rng.random()
            if c < 0.4 and new:
                del new[list(new)[rng.integers(len(new))]]
            elif c < 0.8:
                new[names[rng.integers(len(names))] if rng.random() < 0.5 else "extra"] = \
                    self._value(rng, 0, names)
            else:
                new = {}
            return new
        return None

    def _reshape_weight(self, rng, h) -> bool:
        """A weight's shape changed with its byte count kept consistent (so the edit gets past the
        entry's own checks to the ops that index the table): a dim set to 0, 1, one less or a few more,
        or (in an extra weight nothing uses) to 0 beside a huge one."""
        ws = h.get("weights")
        if not isinstance(ws, dict) or not ws:
            return False
        e = ws[list(ws)[rng.integers(len(ws))]]
        if not (isinstance(e, dict) and isinstance(e.get("shape"), list) and e["shape"]
                and all(isinstance(d, int) for d in e["shape"]) and isinstance(e.get("dtype"), str)
                and e["dtype"] in ITEMSIZE):
            return False
        shape = list(e["shape"])
        k = int(rng.integers(len(shape)))
        shape[k] = max(0, int(rng.choice([0, 1, shape[k] - 1, shape[k] + 1, shape[k] + 3])))
        if rng.random() < 0.3:  # an extra, unused empty weight with huge other dims (0 bytes)
            shape[k] = 0
            shape.insert(int(rng.integers(len(shape) + 1)), int(rng.choice([2 ** 31, 2 ** 40, 2 ** 62])))
            e = ws.setdefault("extra.weight", dict(e))
        e["shape"] = shape
        e["nbytes"] = int(np.prod(shape, dtype=object)) * ITEMSIZE[e["dtype"]]
        return True

    def _edit(self, rng, h, names):
        if rng.random() < 0.1 and self._reshape_weight(rng, h):
            return
        paths = []
        if rng.random() < 0.4 and isinstance(h.get("ops"), list):  # the ops hold most of the semantics
            self._paths(h["ops"], paths, h, "ops")
        else:
            self._paths(h, paths)
        parent, key, node = paths[rng.integers(len(paths))]
        if parent is None:  # the root: drop or add a top-level key
            if rng.random() < 0.5 and h:
                del h[list(h)[rng.integers(len(h))]]
            else:
                h["extra" if rng.random() < 0.5 else "tf32"] = self._value(rng, 0, names)
            return
        r = rng.random()
        if r < 0.12:  # delete the key or element
            del parent[key]
        elif r < 0.2 and isinstance(parent, list) and len(parent) > 1:  # swap (e.g. ops out of order)
            j = int(rng.integers(len(parent)))
            parent[key], parent[j] = parent[j], parent[key]
        elif r < 0.28 and isinstance(parent, dict):  # rename the key (references now dangle)
            parent[names[rng.integers(len(names))] if rng.random() < 0.5 else str(key) + "_"] = parent.pop(key)
        else:
            parent[key] = self._value(rng, node, names)


# ------------------------------------------------------------------------------------------ execution
class Hang(BaseException):
    """Raised by the per-execution alarm (a BaseException: library code catching Exception lets it pass)."""


def _on_alarm(signum, frame):
    raise Hang()


def tiny_feeds(plan) -> dict:
    """A small valid-looking input for a loaded plan: batch and sequence from the profile's minima (at most
    2 and 4), ids within the tables the plan declares, one padded position."""
    B = min(2, int(plan.profile["batch"][0]))
    S = min(4, int(plan.profile["seq"][0]))
    names = [i["name"] for i in plan.inputs]
    V = plan.vocab_size or 1
    feeds = {"input_ids": (np.arange(B * S).reshape(B, S) * 7) % max(1, V)}
    if "attention_mask" in names:
        m = np.ones((B, S), np.int64)
        m[-1, -1] = 0 if S > 1 else 1
        feeds["attention_mask"] = m
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.arange(B * S).reshape(B, S) % max(1, plan.type_vocab_size or 1)
    return feeds


def _stage(msg: str, path: str) -> str:
    """The field a PlanError names, without indices and names: 'checksum', 'header.ops', ..."""
    rest = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
    field = rest.split(":", 1)[0]
    for root in ("header.ops", "header.tensors", "header.weights", "header.inputs", "header.outputs",
                 "header.profile", "header.model", "header.source", "header JSON", "header"):
        if field.startswith(root):
            return root
    return field


def _overwrite(path: Path, data: bytes) -> None:
    """Replace the file's contents without truncating it to zero first (ext4 flushes a file truncated to
    zero when it is closed, which made writing the input cost more than loading it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def execute(path: Path, data: bytes) -> str:
    """Write `data` to `path`, load it and, if it loads, run it. Returns the outcome; raises on a crash."""
    from trtrun.errors import InputError, PlanError
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.lower import lower_plan

    _overwrite(path, data)
    try:
        plan = load_plan(path)
    except PlanError as e:
        return "PlanError " + _stage(str(e), str(path))
    # what else reads a loaded header: `trtrun inspect` and the GPU runtime's lowering (pure Python)
    plan.summary()
    plan.to_dict()
    lowered = ""
    try:
        lower_plan(plan)
    except PlanError:  # an op the GPU runtime does not run (a valid plan may hold one)
        lowered = ", not lowerable"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = ReferenceBackend(plan).run(tiny_feeds(plan))
        assert all(isinstance(v, np.ndarray) for v in out.values())
        return "loaded, ran" + lowered
    except InputError:
        return "loaded, run InputError" + lowered
    except PlanError:
        return "loaded, run PlanError" + lowered


def default_seeds() -> list[bytes]:
    """tests/handmade_plans.py's tiny plans, small enough that a run takes about a millisecond, with one head of 32
    (GPU_TINY): the GPU runtime's lowering refuses smaller heads, and mutants of lowerable seeds reach the rest of it."""
    sys.path.insert(0, str(REPO / "tests"))
    from handmade_plans import GPU_TINY, tiny_plan

    from trtrun.plan import Plan

    prof = {"batch": [1, 1, 2], "seq": [1, 4, 8]}
    N = GPU_TINY["hidden"]
    pooled = tiny_plan("fp32", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof, seed=3)
    hdr = json.loads(json.dumps({k: v for k, v in pooled.header.items() if k != "weights"}))
    hdr["ops"].append({"type": "Pool", "name": "pool", "inputs": ["last_hidden_state", "attention_mask"],
                       "outputs": ["pooled"], "weights": {}, "attrs": {"mode": "mean", "normalize": True},
                       "precision": "fp32"})
    hdr["tensors"]["pooled"] = {"dtype": "float32", "shape": ["B", N]}
    hdr["outputs"].append({"name": "pooled", "dtype": "float32", "shape": ["B", N]})
    plans = [tiny_plan("fp32", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof),
             Plan.from_parts(hdr, pooled.weights),
             tiny_plan("hybrid", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof,
                       seed=1),
             tiny_plan("fp16", "decoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof,
                       seed=2)]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(plans):
            out.append(p.save(Path(d) / f"seed{i}.plan").read_bytes())
    return out


def fuzz(seeds: list[bytes], *, execs: int, seed, time_budget: float | None = None, crashes: Path | None = None,
         exec_timeout: float = 10.0, progress_every: float = 0.0, label: str = "", workdir: Path | None = None,
         out=sys.stdout) -> dict:
    """Run up to `execs` executions (or until `time_budget` seconds). Returns a summary dict:
    {"execs", "seconds", "outcomes": Counter, "kinds": Counter, "crashes": [paths], "hangs": [paths],
     "peak_rss_kb"}."""
    rng = np.random.default_rng(seed)
    mut = Mutator(seeds)
    outcomes: Counter = Counter()
    kinds: Counter = Counter()
    bad: dict[str, list] = {"crashes": [], "hangs": []}
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-plan-")) if own_dir else workdir
    path = workdir / "input.plan"
    use_alarm = exec_timeout > 0 and hasattr(signal, "setitimer")
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    t0 = last = time.perf_counter()
    n = 0
    try:
        while n < execs and (time_budget is None or time.perf_counter() - t0 < time_budget):
            n += 1
            try:
                kind, data = mut.mutate(rng)
            except Exception:  # noqa: BLE001 - a bug of the fuzzer itself: say so, keep a long run going
                outcomes["FUZZER ERROR (mutation)"] += 1
                print(f"{label}fuzzer error at execution {n}:\n{traceback.format_exc()[-2000:]}", file=out, flush=True)
                continue
            kinds[kind] += 1
            try:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, exec_timeout)
                try:
                    outcomes[execute(path, data)] += 1
                finally:
                    if use_alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except (Hang, Exception) as e:  # noqa: BLE001 - every unexpected exception is a finding
                what = "hang" if isinstance(e, Hang) else type(e).__name__
                outcomes[f"CRASH {what}"] += 1
                saved = None
                if crashes is not None:
                    crashes.mkdir(parents=True, exist_ok=True)
                    saved = crashes / f"{what}-{hashlib.sha256(data).hexdigest()[:16]}.plan"
                    saved.write_bytes(data)
                bad["hangs" if what == "hang" else "crashes"].append(str(saved))
                print(f"{label}CRASH ({what}) at execution {n} ({kind} mutation): "
                      f"{'saved ' + str(saved) if saved else 'not saved (no --crashes)'}", file=out, flush=True)
                if what != "hang":
                    print("".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:], file=out,
                          flush=True)
            now = time.perf_counter()
            if progress_every and now - last >= progress_every:
                last = now
                print(f"{label}{n} execs, {n / (now - t0):.0f}/s, crashes {len(bad['crashes'])}, "
                      f"hangs {len(bad['hangs'])}", file=out, flush=True)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
        if own_dir:
            for f in workdir.iterdir():
                f.unlink()
            workdir.rmdir()
    return {"execs": n, "seconds": time.perf_counter() - t0, "outcomes": outcomes, "kinds": kinds,
            "crashes": bad["crashes"], "hangs": bad["hangs"],
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _worker(args):
    i, seeds, opts = args
    return fuzz(seeds, execs=opts["execs"], seed=[opts["seed"], i], time_budget=opts["time"],
                crashes=opts["crashes"], exec_timeout=opts["exec_timeout"], progress_every=opts["progress"],
                label=f"[worker {i}] " if opts["jobs"] > 1 else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--execs", type=int, default=100_000, help="executions in all (split over --jobs)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (worker i uses [seed, i])")
    ap.add_argument("--time", type=float, default=None, metavar="SECONDS",
                    help="stop each worker after this many seconds even if --execs are not done")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each its own seed stream)")
    ap.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"),
                    help="folder for inputs that crash or hang (default ./fuzz-crashes)")
    ap.add_argument("--exec-timeout", type=float, default=10.0, help="seconds before an execution is a hang")
    ap.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines (0: none)")
    ap.add_argument("--plan", type=Path, action="append", default=[],
                    help="a seed plan file (repeatable); default: tests/handmade_plans.py's tiny plans")
    a = ap.parse_args(argv)
    seeds = [p.read_bytes() for p in a.plan] or default_seeds()
    jobs = max(1, a.jobs)
    per = [a.execs // jobs + (1 if i < a.execs % jobs else 0) for i in range(jobs)]
    opts = {"seed": a.seed, "time": a.time, "crashes": a.crashes, "exec_timeout": a.exec_timeout,
            "progress": a.progress, "jobs": jobs}
    print(f"fuzzing trtrun.plan.load_plan + ReferenceBackend.run: {a.execs} executions over {jobs} process(es), "
          f"seed {a.seed}, {len(seeds)} seed plan(s), per-execution timeout {a.exec_timeout} s", flush=True)
    t0 = time.perf_counter()
    if jobs == 1:
        results = [_worker((0, seeds, dict(opts, execs=per[0])))]
    else:
        import multiprocessing as mp
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(jobs) as pool:
            results = pool.map(_worker, [(i, seeds, dict(opts, execs=per[i])) for i in range(jobs)])
    wall = time.perf_counter() - t0
    total = sum(r["execs"] for r in results)
    outcomes = sum((r["outcomes"] for r in results), Counter())
    kinds = sum((r["kinds"] for r in results), Counter())
    crashes = [c for r in results for c in r["crashes"]]
    hangs = [c for r in results for c in r["hangs"]]
    print(f"\n{total} executions in {wall:.1f} s: {total / wall:.0f}/s over {jobs} process(es)")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    print("outcomes:")
    for k, v in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {v:>9}  {k}")
    print("peak RSS per process: " + ", ".join(f"{r['peak_rss_kb'] / 1024:.0f} MiB" for r in results))
    print(f"crashes: {len(crashes)}, hangs: {len(hangs)}")
    for c in crashes + hangs:
        print(f"  {c}")
    return 1 if crashes or hangs or any(k.startswith("FUZZER ERROR") for k in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
