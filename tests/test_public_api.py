"""The public API is what ``__all__`` says, and ``__all__`` tells the truth."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import actors
import config
import protocol
import tools

PACKAGES = [protocol, actors, config, tools]


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


# Entry-point scripts: they have main() and no importable API.
SCRIPTS = {
    "tools.demo",
    "tools.gen_vectors",
    "tools.bench_transport",
    "tools.bench_loopactor",
    "tools.mdns_probe",
}


@pytest.mark.parametrize("name", modules())
def test_all_is_declared_and_true(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name in SCRIPTS:
        return
    assert exported is not None, f"{name} must list its public API in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


def test_node_is_the_documented_entry_point() -> None:
    from actors import Node

    assert {"start", "stop", "pair", "join", "devices", "counters", "node_id"} <= set(dir(Node))
