"""The tree is the architecture: drawn from the code's own imports, b2lib has no import cycle and no import from a
lower layer to a higher one (:data:`LAYERS`, the order of ``b2lib/__init__.py``'s table of contents). Imports inside
functions count too; the only ones allowed are the few listed in :data:`POSTPONED`, each for a stated reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "b2lib"

#: each part of b2lib and its layer: a module may import its own layer's modules (without cycles) and lower ones
LAYERS: dict[str, int] = {
    "_aliases": 0,
    "utils": 0,
    "policies": 1,
    "rewards": 1,
    "algorithm": 2,
    "training": 3,
    "evaluation": 3,
    "world": 4,
    "reporting": 5,
    "experiments": 6,
    "studies": 7,
    "bench": 7,
    "train": 8,
    "notebook": 8,
    "": 9,  # b2lib/__init__.py: its lazy table of top-level names
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else ""


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported b2lib module, line, at the top level)`` for every import of a b2lib module in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    top |= {id(n) for n in ast.walk(tree) if isinstance(n, ast.If)}  # TYPE_CHECKING blocks are not runtime imports
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("b2lib"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("b2lib")]
        for name in names:
            file = PKG.parent / (name.replace(".", "/") + ".py")
            pkg = PKG.parent / name.replace(".", "/") / "__init__.py"
            if file.exists() or pkg.exists():
                found.append((name, node.lineno, id(node) in top))
    return found


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        g[me] = {m for m, _, _ in imports(path) if m != me and not me.startswith(m + ".") and m != "b2lib"}
    return g


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        for other, line, _ in imports(path):
            if other != "b2lib" and LAYERS[part(other)] > LAYERS[part(me)]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {part(me) or 'b2lib'} -> {other}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node) :] + [node]))
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(g):
        visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("layer", sorted(k for k in LAYERS if k))
def test_every_part_is_in_the_table_of_contents(layer):
    assert layer in (PKG / "__init__.py").read_text() or layer == "_aliases"


def _body_length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring."""
    first = node.body[0]
    docstring = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    start = first.end_lineno + 1 if docstring and len(node.body) > 1 else first.lineno
    return node.end_lineno - start + 1


def test_small_modules_and_functions():
    """No module over 500 lines, no function over 80 (docstrings aside): one job each."""
    big = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            big.append(f"{path.relative_to(PKG.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_length(node) > 80:
                big.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.name} has {_body_length(node)} lines")
    assert not big, "\n".join(big)
