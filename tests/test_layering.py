"""The import rule of docs/architecture.md, enforced: data flows one way through the layers.

Walks every import in gradsight's source (ast: module level, inside functions and under
``TYPE_CHECKING`` alike) and fails on a lower layer importing a higher one, on any import
cycle between packages, and on the core importing an optional heavy library at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gradsight"

# Lower number = lower layer. A unit may import units of its own or a lower rank only.
RANKS = {
    "records": 0, "bus": 0, "throttle": 0, "warnings": 0, "_version": 0, "progress": 0,
    "kernel_hooks": 1,
    "detectors": 2, "nonfinite": 2,
    "gradcheck": 3,
    "distributed": 3,
    "watcher": 4,
    "widgets": 5, "comm": 5, "integrations": 5, "recording": 5, "demo": 5, "magics": 5,
    "__init__": 6, "cli": 6,
}
# The only upward imports allowed: inside a function, a core object's display method asking
# for its view (``w.dashboard()``, ``w._repr_html_()``, ``report.plot()``) — the user asked
# for the view, so it loads then; never at module level.
LAZY_VIEWS = {("watcher", "widgets"), ("gradcheck", "widgets"),
              ("watcher", "recording")}  # gs.watch(record=...) / w.save(): the user asked for a recording
CORE = ("records", "bus", "warnings", "kernel_hooks", "detectors", "gradcheck", "distributed", "watcher")
HEAVY = ("matplotlib", "ipywidgets", "pyarrow", "lightning", "pytorch_lightning", "transformers",
         "tensorboard", "IPython", "ipykernel")


def _unit(module: str) -> str:
    """'gradsight.records.metrics' -> 'records'; 'gradsight' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    if not name.startswith("gradsight."):
        return False
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).is_dir() or (ROOT / rel).with_suffix(".py").is_file()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module imported, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        if isinstance(node, ast.If | ast.Try):
            top_level.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from gradsight import bus`: the name is a submodule
                sub = f"{mod}.{a.name}"
                out.append((sub if _is_module(sub) else mod, node.lineno, id(node) in top_level))
    return out


def _all_imports():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, _module_name(path), _imports(path)


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every cycle of a directed graph, as 'a -> b -> a' strings (depth-first from each node)."""
    found = []

    def visit(node, trail):
        for nxt in edges.get(node, ()):
            if nxt in trail:
                found.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            else:
                visit(nxt, trail + [nxt])

    for start in edges:
        visit(start, [start])
    return found


def test_every_unit_has_a_rank():
    units = {_unit(m) for _, m, _ in _all_imports()}
    assert units <= set(RANKS), f"give these a layer in tests/test_layering.py: {units - set(RANKS)}"


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for path, module, imports in _all_imports():
        here = _unit(module)
        for target, line, top in imports:
            if target == "gradsight" or target.startswith("gradsight."):
                there = _unit(target)
                if not top and (here, there) in LAZY_VIEWS:
                    continue
                if RANKS.get(there, 99) > RANKS[here]:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports {target} ({there})")
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for _, module, imports in _all_imports():
        here = _unit(module)
        for target, _, top in imports:
            if target.startswith("gradsight."):
                there = _unit(target)
                allowed = not top and (here, there) in LAZY_VIEWS
                if there != here and not allowed:
                    edges.setdefault(here, set()).add(there)
    cycles = _cycles(edges)
    assert not cycles, "import cycles between packages:\n" + "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("package", ["comm", "gradcheck"])
def test_no_cycle_between_modules_of_a_package(package):
    """Inside a package too: a module graph without cycles (report <-> plot, handlers <-> session)."""
    edges: dict[str, set[str]] = {}
    for _, module, imports in _all_imports():
        if _unit(module) != package:
            continue
        for target, _, _ in imports:
            if _unit(target) == package and target.startswith("gradsight.") and target != module:
                edges.setdefault(module, set()).add(target)
    cycles = _cycles(edges)
    assert not cycles, f"import cycles inside gradsight.{package}:\n" + "\n".join(sorted(set(cycles)))


def test_core_imports_no_heavy_library_at_module_level():
    bad = []
    for path, module, imports in _all_imports():
        if _unit(module) not in CORE:
            continue
        for target, line, top in imports:
            if top and target.split(".")[0] in HEAVY:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} at module level")
    assert not bad, "\n".join(bad)


def test_the_walker_sees_function_local_and_type_checking_imports(tmp_path):
    """The check itself must not be blind: a local import and a TYPE_CHECKING import are found."""
    src = tmp_path / "gradsight" / "records" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..widgets import style\n"
                   "def f():\n    from ..comm import hub\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "gradsight"
    try:
        found = {t for t, _, _ in _imports(src)}
    finally:
        ROOT = saved
    assert {"gradsight.widgets", "gradsight.comm"} <= found
