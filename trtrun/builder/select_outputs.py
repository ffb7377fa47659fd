"""Keep the graph outputs the caller asked for (`build(outputs=[...])`, `trtrun build --outputs`).

Like Polygraphy's `--onnx-outputs`: the others, and every node only they need, are dropped before any
pattern is matched, so an output the IR cannot compute (or that needs an op trtrun lacks) does not stop a
build that leaves it out. By default every output is kept.
"""

from __future__ import annotations

from . import _graph as G


def select_outputs(graph, names=None) -> list[str]:
    """Keep the outputs named (all if None); returns the kept names. ValueError for an unknown name.

    An output that passes an input through is named as the model names it, though the simplified graph holds
    the input tensor itself there (passthrough_names)."""
    if names is None:
        return [t.name for t in graph.outputs]
    by = {n: t for t in graph.outputs for n in passthrough_names(graph, t)}
    unknown = [n for n in names if n not in by]
    if unknown:
        raise ValueError(f"outputs: the model has no output {unknown[0]!r} (its outputs: {', '.join(by)})")
    keep = []
    for n in names:
        if all(by[n] is not k for k in keep):
            keep.append(by[n])
    alias = graph.__dict__.get("_trtrun_passthrough")
    if alias:  # the aliases of inputs passed through that were not asked for are dropped with them
        for k in [k for k in alias if k not in names]:
            del alias[k]
    inputs = {i.name for i in graph.inputs}
    if all(t.name in inputs for t in keep):  # checked before the probes, which need something to compute
        from ..errors import BuildError

        raise BuildError(f"every graph output is an input passed through ({', '.join(names)}): nothing to compute")
    graph.outputs = keep
    G.finish(graph)
    return list(names)


def passthrough_names(graph, t) -> list[str]:
    """The model's names for graph output t: the input's aliases (Identity outputs the simplified graph replaced
    by the input itself, _graph.replace_uses records them), else t's own name."""
    alias = graph.__dict__.get("_trtrun_passthrough", {})
    return [k for k, v in alias.items() if v == t.name] or [t.name]


def drop_passthrough(graph) -> list[str]:
    """Outputs that are graph inputs passed through stay outputs (the plan returns the input under the output's
    name: plan-format.md, "input"); returns notes saying which. Raises BuildError if every output is one."""
    from ..errors import BuildError

    inputs = {i.name for i in graph.inputs}
    passed = [t.name for t in graph.outputs if t.name in inputs]
    if not passed:
        return []
    if len(passed) == len(graph.outputs):
        raise BuildError(f"every graph output is an input passed through ({', '.join(passed)}): nothing to compute")
    return [f"graph output {n!r} is the input {d!r} passed through: the plan returns the input's value"
            for d in passed for n in passthrough_names(graph, graph.tensors()[d])]
