"""The house stays one-way: imports run down the floors of docs/ARCHITECTURE.md, with no circle.

Every import counts, those inside functions too: the package's files are parsed, not imported.
"""

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunelab"

# Floor of each module, by its dotted name's prefix (the longest prefix that matches wins).
FLOORS = {
    "prunelab.core": 0, "prunelab._version": 0, "prunelab.demos": 0,
    "prunelab.retrain": 1, "prunelab.sensitivity": 1, "prunelab.recipe": 1, "prunelab.export": 1,
    "prunelab.reports": 1,
    "prunelab.pruner": 2,
    "prunelab": 3, "prunelab.explorer": 3, "prunelab.cli": 3, "prunelab.__main__": 3,
}
MAX_LINES = 400


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The prunelab modules ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    names = module_names()
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for name, path in names.items():
        g.add_edges_from((name, target) for target in imports(name, path, set(names)))
    return g


def test_no_import_circle(graph):
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import circles among prunelab's modules: {cycles[:5]}"


def test_imports_run_down_the_floors(graph):
    upward = [(a, b) for a, b in graph.edges if floor(b) > floor(a)]
    assert not upward, f"modules importing from a floor above their own: {upward}"


def test_no_module_much_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    # the parser resolves relative imports: core importing the explorer is caught
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from ..explorer import app\n")
    known = {"prunelab.core.mod", "prunelab.explorer", "prunelab.explorer.app"}
    found = imports("prunelab.core.mod", path, known)
    assert found == {"prunelab.explorer.app"}
    assert floor("prunelab.explorer.app") > floor("prunelab.core.mod")
