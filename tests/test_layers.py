"""The dependency rule: protocol/ is sans-I/O and stands alone (DESIGN.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_PROTOCOL = {"asyncio", "threading", "socket", "pykka", "aioquic", "selectors", "zeroconf"}
FORBIDDEN_PACKAGES = {"actors", "config", "tools"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in {"import_module", "__import__"}
        ):
            found.append((node.lineno, "<dynamic import>"))
    return found


PROTOCOL_FILES = sorted((ROOT / "protocol").rglob("*.py"))


def test_protocol_has_modules() -> None:
    assert len(PROTOCOL_FILES) >= 5, "the layer test must see protocol/'s modules"


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.name)
def test_protocol_imports_no_io_and_no_upper_layer(path: Path) -> None:
    bad = []
    for lineno, module in imported_modules(path):
        top = module.split(".")[0]
        if top in FORBIDDEN_IN_PROTOCOL or top in FORBIDDEN_PACKAGES or module == "<dynamic import>":
            bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not bad, "protocol/ must stay sans-I/O:\n" + "\n".join(bad)


def test_rule_catches_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import asyncio\nfrom aioquic.quic import connection\nimport os\n")
    tops = {m.split(".")[0] for _, m in imported_modules(sample)}
    assert tops & FORBIDDEN_IN_PROTOCOL == {"asyncio", "aioquic"}
