"""The import graph of a Python package, read from its source (ast; nothing is imported), and its cycles.

Every import counts, those inside functions too: a lazy import hides a cycle from the interpreter's import
order but not from the reader, who still cannot understand one module without the other. An edge A -> B means
A imports B (or a name from B); `from . import x` counts as an import of the submodule x where one exists,
and `import a.b` or `from a.b import c` also imports the packages above (their __init__ runs first).

    python3 tools/import_cycles.py [PACKAGE_DIR]     # default: trtrun/; exit status 1 when there is a cycle

tests/test_structure.py runs it on trtrun/.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every .py file under `root` (a package folder)."""
    root = root.resolve()
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)

    def known(name: str) -> str | None:
        # the innermost module of the package that `name` (a module, or a name inside one) lies in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def with_parents(name: str) -> set[str]:
        out = set()
        while name:
            if name in modules:
                out.add(name)
            name = name.rpartition(".")[0]
        return out

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    deps |= with_parents(known(a.name) or "")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                hit = known(target)
                if hit is None:
                    continue
                deps |= with_parents(hit)
                for a in node.names:  # `from pkg import submodule`
                    sub = f"{target}.{a.name}"
                    if sub in modules:
                        deps.add(sub)
        deps.discard(mod)
        # a module's own packages are imported before it anyway: an edge to them is no cycle of the reader's
        deps -= {p for p in with_parents(mod.rpartition(".")[0])}
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "trtrun"),
                    help="the package folder (default: trtrun/)")
    args = ap.parse_args(argv)
    graph = import_graph(Path(args.package))
    found = cycles(graph)
    for comp in found:
        members = set(comp)
        edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a] & members)]
        print(f"cycle of {len(comp)}: " + "; ".join(edges))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
