"""Measure a cost table for `trtrun build --precision auto --cost-table FILE` (trtrun/builder/cost_model.py).

    python3 scripts/gpu/cost_table.py MODEL.onnx -o cost.json [--fp8-scales channel-dynamic --fp8-scales tensor-static]

Every distinct Linear shape (m, k, n) of MODEL at its plan's opt batch x sequence (m = opt batch x opt seq, what the
search prices), timed in fp32, hybrid and fp8 with each scale kind asked. Each shape runs as two plans built by trtrun
from small ONNX graphs: token embedding, LayerNorm, then one Linear (MatMul + bias) reading the LayerNorm's output,
or two such Linears side by side (other weights, the same input, each its own output). The entry is the second plan's
time less the first's: one Linear more and nothing else, so it goes through the runtime's own kernels for that
precision (for fp8 the activation quantization, the GEMM and, where the scales need it, the rescale pass) and the
embedding, the LayerNorm and the launch cost cancel. (A plan without any Linear as the base would not: it writes the
LayerNorm's k-wide output in fp32 where the Linear's plan writes it in fp16 and an n-wide output, which made a
Linear of k 1536 and n 384 read as less than nothing on an H200.) The Linear writes its output in fp32 (a plan's
output), as a hybrid model's projections before an fp32 residual stream do; those writing fp16 cost a little less in
every precision.

GPU (the default): CUDA graphs, CUDA events around each of --iters replays enqueued behind a spin kernel (so
that the GPU runs them back to back and the events time its work, not the host's launch gaps), median, contexts
alternated --rounds times.
--backend reference times the numpy backend on this CPU instead: for tests of the flow only (its numbers are not a
GPU's and the file says so in its device field).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 1024


def linear_graph(path: Path, k: int, n: int, seed: int = 0, copies: int = 1) -> Path:
    """input_ids -> Gather [VOCAB, k] -> LayerNormalization -> `copies` x (MatMul [k, n] + bias) side by side, each
    an output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, k)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, k).astype(np.float32), "ln_g"),
             numpy_helper.from_array(rng.normal(0, 0.1, k).astype(np.float32), "ln_b")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
             helper.make_node("LayerNormalization", ["e", "ln_g", "ln_b"], ["h"], name="norm", axis=-1, epsilon=1e-5)]
    for c in range(copies):
        inits += [numpy_helper.from_array((rng.normal(0, 1, (k, n)) / np.sqrt(k)).astype(np.float32), f"w{c}"),
                  numpy_helper.from_array(rng.normal(0, 0.05, n).astype(np.float32), f"b{c}")]
        nodes += [helper.make_node("MatMul", ["h", f"w{c}"], [f"m{c}"], name=f"linear{c}"),
                  helper.make_node("Add", [f"m{c}", f"b{c}"], [f"y{c}"], name=f"linear{c}_bias")]
    graph = helper.make_graph(nodes, "cost", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])],
                              [helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, ["B", "S", n])
                               for c in range(copies)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def model_shapes(onnx_path: Path, batch: int | None, seq: int | None) -> tuple[list[tuple[int, int, int]], dict]:
    """The distinct (m, k, n) of the model's Linears at the opt point, and the profile used."""
    from trtrun.builder import build
    from trtrun.builder.cost_model import gemm_shape
    from trtrun.builder.precision_search import linear_ops

    plan = build(onnx_path, precision="hybrid")
    profile = {"batch": list(plan.header["profile"]["batch"]), "seq": list(plan.header["profile"]["seq"])}
    if batch:
        profile["batch"][1] = batch
    if seq:
        profile["seq"][1] = seq
    shapes = sorted({gemm_shape(op, profile, plan.weights) for op in linear_ops(plan.header)})
    return shapes, profile


class Timer:
    """Median time of one run of a plan at B x S, microseconds."""

    def __init__(self, backend: str, iters: int):
        self.backend, self.iters = backend, iters
        if backend == "gpu":
            from trtrun.errors import InputError

            try:
                import torch
            except ImportError:
                raise InputError("--backend gpu times with torch's CUDA events: torch is not installed") from None
            if not torch.cuda.is_available():
                raise InputError("--backend gpu needs a CUDA GPU, and torch sees none (--backend reference runs the "
                                 "same steps on the CPU, for tests only)")
            from trtrun.runtime import gpu_available

            ok, why = gpu_available()
            if not ok:
                raise InputError(f"--backend gpu needs trtrun's GPU runtime: {why}")
            self.torch = torch
            self.stream = torch.cuda.Stream()

    def device(self) -> str:
        if self.backend == "gpu":
            return self.torch.cuda.get_device_name(0)
        return "reference backend on a CPU (not a GPU measurement: for tests of the flow only)"

    def prepare(self, plan, B: int, S: int):
        ids = np.random.default_rng(1).integers(0, VOCAB, (B, S), dtype=np.int64)
        if self.backend == "reference":
            from trtrun.reference import ReferenceBackend

            be = ReferenceBackend(plan)
            return lambda: be.run({"input_ids": ids})
        from trtrun.errors import TrtrunError
        from trtrun.runtime import Engine

        torch = self.torch
        ctx = Engine(plan).create_context(use_graphs=True)
        feeds = {"input_ids": torch.from_numpy(ids).cuda()}
        out = {o["name"]: torch.empty((B, S, o["shape"][-1]), dtype=torch.float32, device="cuda")
               for o in plan.header["outputs"]}
        for _ in range(10):  # captures the graph, tunes the GEMMs
            ctx.run_device(feeds, out, stream=self.stream)
        self.stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            ctx.run_device(feeds, out, stream=self.stream)
        host_s = (time.perf_counter() - t0) / 20  # the host's time to launch one run (an upper bound while
        self.stream.synchronize()                 # the GPU keeps up)
        state = {"hold_ms": 2 * self.iters * host_s * 1e3 + 1.0}

        def run():
            # A plan this small runs on the GPU in less time than the host takes to launch it, so events around
            # each launch would time the host's gaps (on an H100, MiniLM's shapes: every plan 70-115 us, the
            # Linear's own share below zero). A spin kernel holds the stream while the host enqueues every
            # iteration; the GPU then runs them back to back and the events see only its work. That holds only if
            # the host finished enqueueing before the spin ended (a gap inside an iteration's events would not show
            # in their sum), so the spin is timed too, and held longer when the host took longer.
            for _ in range(4):
                s0, s1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.iters)]
                with torch.cuda.stream(self.stream):
                    t0 = time.perf_counter()
                    s0.record(self.stream)
                    torch.cuda._sleep(self.cycles(state["hold_ms"]))
                    s1.record(self.stream)
                    for e0, e1 in ev:
                        e0.record(self.stream)
                        ctx.run_device(feeds, out, stream=self.stream)
                        e1.record(self.stream)
                    enqueue_ms = (time.perf_counter() - t0) * 1e3
                self.stream.synchronize()
                held_ms = s0.elapsed_time(s1)
                if enqueue_ms < held_ms:
                    return statistics.median(e0.elapsed_time(e1) for e0, e1 in ev) * 1e3
                state["hold_ms"] = 2 * max(enqueue_ms, state["hold_ms"])
            raise TrtrunError(f"the host could not keep the GPU busy: enqueueing {self.iters} runs took "
                              f"{enqueue_ms:.1f} ms against a hold of {held_ms:.1f} ms (does a run wait for the GPU?)")
        return run

    def cycles(self, ms: float) -> int:
        """GPU clock cycles of torch.cuda._sleep that last about `ms` (calibrated once on this GPU)."""
        if not hasattr(self, "_ms_per_mcycle"):
            torch = self.torch
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.stream):
                e0.record(self.stream)
                torch.cuda._sleep(10_000_000)
                e1.record(self.stream)
            self.stream.synchronize()
            self._ms_per_mcycle = max(e0.elapsed_time(e1) / 10, 1e-4)
        return int(ms / self._ms_per_mcycle * 1e6)

    def time(self, runners: dict, rounds: int) -> dict:
        got = {name: [] for name in runners}
        for _ in range(rounds):  # alternated, so drift hits all alike
            for name, run in runners.items():
                if self.backend == "gpu":
                    got[name].append(run())
                else:
                    t = []
                    for _ in range(self.iters):
                        t0 = time.perf_counter()
                        run()
                        t.append(time.perf_counter() - t0)
                    got[name].append(statistics.median(t) * 1e6)
        return {name: statistics.median(v) for name, v in got.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the ONNX model whose Linears the search will price")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the cost table to write (JSON)")
    ap.add_argument("--fp8-scales", action="append", default=None,
                    choices=["channel-dynamic", "channel-static", "tensor-dynamic", "tensor-static"],
                    help="fp8 scale kinds to time (repeatable; default channel-dynamic, the builder's default)")
    ap.add_argument("--batch", type=int, default=None, help="opt batch (default: the model plan's)")
    ap.add_argument("--seq", type=int, default=None, help="opt sequence (default: the model plan's)")
    ap.add_argument("--backend", choices=["gpu", "reference"], default="gpu")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    from trtrun.errors import TrtrunError

    try:
        return _measure(a)
    except TrtrunError as e:
        print(f"cost_table: error: {e}", file=sys.stderr)
        return 2


def _measure(a) -> int:
    from trtrun.builder import build
    from trtrun.builder.cost_model import COST_TABLE_FORMAT, COST_TABLE_VERSION, CostModel
    from trtrun._io import atomic_write
    from trtrun.errors import TrtrunError

    kinds = a.fp8_scales or ["channel-dynamic"]
    timer = Timer(a.backend, a.iters)
    shapes, profile = model_shapes(a.model, a.batch, a.seq)
    entries = []
    print(f"{timer.device()}: {len(shapes)} Linear shapes of {a.model.name} at {profile['batch'][1]} x "
          f"{profile['seq'][1]}; fp8 scales {', '.join(kinds)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        B, S = profile["batch"][1], profile["seq"][1]
        prof = {"batch": (1, B, B), "seq": (1, S, S)}
        calib = [{"input_ids": np.random.default_rng(2).integers(0, VOCAB, (1, S), dtype=np.int64)}]  # scales: any ids

        def plan_of(path, precision, kind=None):
            kw = {}
            if precision == "fp8":
                w, act = kind.split("-")
                kw = {"fp8_weights": w, "fp8_activations": act, "calib": calib if act == "static" else None}
            return build(path, precision=precision, profile=prof, **kw)

        for m, k, n in shapes:
            # one Linear, then two side by side: the difference is one Linear in that precision (module doc)
            plans = {}
            for copies in (1, 2):
                g = linear_graph(tmp / f"lin-{k}-{n}-{copies}.onnx", k, n, copies=copies)
                plans[("fp32", None, copies)] = plan_of(g, "fp32")
                plans[("hybrid", None, copies)] = plan_of(g, "hybrid")
                for kind in kinds:
                    plans[("fp8", kind, copies)] = plan_of(g, "fp8", kind)
            got = timer.time({key: timer.prepare(p, B, S) for key, p in plans.items()}, a.rounds)
            for (prec, kind, copies), us in got.items():
                if copies == 1:
                    continue
                one = got[(prec, kind, 1)]
                lin = us - one
                if lin <= 0 and a.backend == "reference":  # CPU timings of tiny plans are noise; the flow is tested
                    lin = 1e-3
                elif lin <= 0:
                    raise TrtrunError(f"m={m} k={k} n={n} {prec}{' ' + kind if kind else ''}: two Linears timed "
                                      f"{us:.2f} us against {one:.2f} for one; the timing is not usable (more --iters "
                                      f"or --rounds)")
                e = {"m": m, "k": k, "n": n, "precision": prec, "us": round(lin, 3)}
                if kind:
                    e["fp8_scales"] = kind
                entries.append(e)
                print(f"  m={m} k={k} n={n} {prec}{' ' + kind if kind else ''}: {lin:.2f} us "
                      f"(two Linears {us:.2f} - one {one:.2f})", flush=True)
    doc = {"format": COST_TABLE_FORMAT, "version": COST_TABLE_VERSION, "device": timer.device(),
           "model": a.model.name, "point": [profile["batch"][1], profile["seq"][1]], "entries": entries}
    atomic_write(a.output, json.dumps(doc, indent=1) + "\n")
    CostModel.load(a.output)  # what the search will read
    print(f"wrote {a.output}: {len(entries)} entries", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
