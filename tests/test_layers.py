"""The dependency rules: protocol/ is sans-I/O, packages import only what they declare, no cycles.

DESIGN.md "Layout": tools -> actors -> config -> protocol, nothing runs back
up. Inside actors/, each sub-package says in its ``__init__`` docstring what
it owns and, on a line ``May import: ...``, which quicpair packages its modules
may use (besides its own); this test reads that line, so the rule and its
check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "quicpair"
FORBIDDEN_IN_PROTOCOL = {"asyncio", "threading", "socket", "pykka", "aioquic", "selectors", "zeroconf"}


def module_name(path: Path) -> str:
    """``actors/links/worker.py`` -> ``quicpair.actors.links.worker`` (the installed name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, *, runtime_only: bool = False) -> list[tuple[int, str]]:
    """Every module ``path`` imports, relative imports resolved, ``(line, name)``.

    ``runtime_only``: module-level imports executed at import time (not those
    under ``if TYPE_CHECKING:`` nor inside functions): the edges of an import cycle.
    """
    tree = ast.parse(path.read_text(), filename=str(path))

    def walk(nodes: list[ast.stmt]) -> Iterator[ast.AST]:
        for node in nodes:
            if runtime_only and isinstance(node, ast.If) and _type_checking(node):
                continue
            if runtime_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            yield node
            yield from walk([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    found: list[tuple[int, str]] = []
    nodes = walk(tree.body) if runtime_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path).split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if node.level and not node.module:  # from . import x: x is a module
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif (
            not runtime_only
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in {"import_module", "__import__"}
        ):
            found.append((node.lineno, "<dynamic import>"))
    return found


SOURCE_DIRS = ("protocol", "config", "actors", "tools")
PACKAGE_DIRS = sorted(p.parent for d in SOURCE_DIRS for p in (ROOT / d).rglob("__init__.py"))
SOURCE_FILES = sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))
PROTOCOL_FILES = sorted((ROOT / "protocol").rglob("*.py"))
# The lazy re-exports of the public API (PEP 562) use importlib by design.
LAZY = {ROOT / "__init__.py", ROOT / "actors" / "__init__.py"}


def allowed_imports(package_dir: Path) -> list[str]:
    """The ``May import:`` line of a package's docstring, as module-name prefixes."""
    doc = ast.get_docstring(ast.parse((package_dir / "__init__.py").read_text())) or ""
    match = re.search(r"^May import:(.*?)(?:\n\s*\n|\Z)", doc, re.M | re.S)
    assert match, f"{package_dir}/__init__.py must say what it may import ('May import: ...')"
    return re.findall(r"quicpair(?:\.\w+)*", match.group(1))


def test_the_rules_see_the_whole_tree() -> None:
    assert len(PROTOCOL_FILES) >= 5
    names = {module_name(p) for p in PACKAGE_DIRS}
    assert {"quicpair.actors.kernel", "quicpair.actors.links", "quicpair.actors.pairing"} <= names


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.name)
def test_protocol_imports_no_io_and_no_upper_layer(path: Path) -> None:
    bad = []
    for lineno, module in imported_modules(path):
        top = module.split(".")[0]
        outside = module.startswith(f"{PACKAGE}.") and not module.startswith(f"{PACKAGE}.protocol")
        if top in FORBIDDEN_IN_PROTOCOL or top in SOURCE_DIRS or outside or module == "<dynamic import>":
            bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not bad, "protocol/ must stay sans-I/O:\n" + "\n".join(bad)


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_package_imports_only_what_its_docstring_allows(package_dir: Path) -> None:
    own = module_name(package_dir / "__init__.py")
    allowed = [own, *allowed_imports(package_dir)]
    bad = []
    for path in sorted(package_dir.glob("*.py")):
        for lineno, module in imported_modules(path):
            if module == "<dynamic import>" and path in LAZY:
                continue
            if module.split(".")[0] in SOURCE_DIRS or module == "<dynamic import>":
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {module} (not under quicpair.)")
            elif (module == PACKAGE or module.startswith(f"{PACKAGE}.")) and not any(
                module == a or module.startswith(f"{a}.") for a in allowed
            ):
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not bad, f"{own} may import only {allowed[1:]}:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in [*SOURCE_FILES, ROOT / "__init__.py"]:
        name = module_name(path) if path.parent != ROOT else PACKAGE
        graph[name] = {m for _, m in imported_modules(path, runtime_only=True) if m.startswith(f"{PACKAGE}.")}
    for name in graph:  # "from quicpair.x import y" may name module y or an attribute of x
        graph[name] = {m if m in graph else m.rsplit(".", 1)[0] for m in graph[name]} - {name}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_rules_catch_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import asyncio\nfrom aioquic.quic import connection\nimport os\n")
    tops = {m.split(".")[0] for _, m in imported_modules(sample)}
    assert tops & FORBIDDEN_IN_PROTOCOL == {"asyncio", "aioquic"}


def test_docstring_rule_is_read(tmp_path: Path) -> None:
    rule = '"""Owns x.\n\nMay import: quicpair.actors.kernel,\nquicpair.protocol\n"""\n'
    (tmp_path / "__init__.py").write_text(rule)
    assert allowed_imports(tmp_path) == ["quicpair.actors.kernel", "quicpair.protocol"]
    (tmp_path / "__init__.py").write_text('"""Owns x."""\n')
    with pytest.raises(AssertionError, match="May import"):
        allowed_imports(tmp_path)
