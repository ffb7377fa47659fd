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
