"""Keep the graph outputs the caller asked for (`build(outputs=[...])`, `trtrun build --outputs`).

Like Polygraphy's `--onnx-outputs`: the others, and every node only they need, are dropped before any
pattern is matched, so an output the IR cannot compute (or that needs an op trtrun lacks) does not stop a
build that leaves it out. By default every output is kept.
"""

from __future__ import annotations

from . import _graph as G


def select_outputs(graph, names=None) -> list[str]:
    """Keep the outputs named (all if None); returns the kept names. ValueError for an unknown name."""
    if names is None:
        return [t.name for t in graph.outputs]
    by = {t.name: t for t in graph.outputs}
    unknown = [n for n in names if n not in by]
    if unknown:
        raise ValueError(f"outputs: the model has no output {unknown[0]!r} (its outputs: {', '.join(by)})")
    graph.outputs = [by[n] for n in names]
    G.finish(graph)
    return list(names)


def drop_passthrough(graph) -> list[str]:
    """Leave out graph outputs that are graph inputs passed through; returns notes saying which.

    A plan's outputs are what its ops write (float tensors the runtime fills); an output whose value is an
    input (an export that returns input_ids beside the hidden states) needs no computing: the caller holds
    it already. Raises BuildError if no other output is left."""
    from ..errors import BuildError

    inputs = {i.name for i in graph.inputs}
    alias = graph.__dict__.get("_trtrun_passthrough", {})
    dropped = [t.name for t in graph.outputs if t.name in inputs]
    if not dropped:
        return []
    keep = [t for t in graph.outputs if t.name not in inputs]
    names = {v: k for k, v in alias.items()}
    if not keep:
        raise BuildError(f"every graph output is an input passed through ({', '.join(dropped)}): nothing to compute")
    graph.outputs = keep
    return [f"graph output {names.get(d, d)!r} is the input {d!r} passed through: left out of the plan "
            f"(its value is the input)" for d in dropped]
