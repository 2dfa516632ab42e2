"""The import graph of `vtc/` keeps the architecture of docs/architecture.md:
no cycle between modules or between packages (function-local imports included), and no
lower layer importing a higher one. The layer order is written here and in
docs/architecture.md; a new package must be placed in both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "vtc"

# Lower numbers are lower layers; a module may import its own layer or lower ones only.
LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "util": 0, "stats": 0, "runtime": 0,  # "": the vtc package (version)
    "budget": 1, "report": 1, "report_vlm": 1, "backends": 1, "data": 1,
    "passes": 2,
    "methods": 3,
    "recipe": 4,
    "exporter": 5, "validate": 5, "vlm": 5,
    "zoo": 6,
    "source": 7, "stages": 7, "output": 7,
    "pipeline": 8, "sweep": 8, "sweep_plot": 8, "demo": 8, "check": 8,
    "cli": 9,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The vtc modules `name` imports, anywhere in the file (function-local too)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from vtc.x import y` may import the module vtc.x.y
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("vtc") and t != name:
                out.add(t)
    return out


GRAPH = {n: _imports(n, p, set(_modules())) for n, p in _modules().items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
    return out


def test_the_graph_is_read() -> None:
    """The parser sees the imports the pipeline really has (else the checks prove nothing)."""
    assert "vtc.stages.compress" in GRAPH["vtc.pipeline"]
    assert "vtc.methods.registry" in GRAPH["vtc.methods.tome"]
    assert "vtc.errors" in GRAPH["vtc.cli.zoo"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_cycle_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_no_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for mod, deps in GRAPH.items():
        packages.setdefault(_package(mod), set()).update(
            _package(d) for d in deps if _package(d) != _package(mod))
    assert _cycles(packages) == []


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in GRAPH} <= set(LAYERS), "add the new package to LAYERS " \
        "here and to the layer table of docs/architecture.md"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_points_up_a_layer(module: str) -> None:
    mine = LAYERS[_package(module)]
    up = sorted(d for d in GRAPH[module] if LAYERS[_package(d)] > mine)
    assert not up, f"{module} (layer {mine}) imports higher layers: {up}"


def test_docs_list_the_same_layers() -> None:
    """docs/architecture.md's layer table (`| 3 | `methods` | … |`) says what LAYERS says."""
    import re

    documented: dict[str, int] = {}
    for line in (ROOT.parent / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for pkg in re.findall(r"`([a-z_]+)`", m.group(2)):
                documented[pkg] = int(m.group(1))
    assert documented == {k: v for k, v in LAYERS.items() if k}
