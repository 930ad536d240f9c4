"""The package's shape, as issue 12 set it: no import cycle, short functions, a loop with few parameters."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from leukviz import engine

PACKAGE = Path(engine.__file__).resolve().parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}


def _imports(path: Path) -> set[str]:
    """leukviz modules a module imports, at its top or inside functions (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "leukviz":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leukviz."):
            out.add(node.module.split(".")[1])
    return out & set(MODULES)


def test_no_import_cycle():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_no_function_over_80_lines():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long


def test_the_training_loop_takes_few_parameters():
    assert len(inspect.signature(engine.train_one_epoch).parameters) <= 7
