"""The public API is what ``__all__`` says, and ``__all__`` tells the truth."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import quicpair


def modules() -> list[str]:
    names = [quicpair.__name__]
    names += [info.name for info in pkgutil.walk_packages(quicpair.__path__, "quicpair.")]
    return sorted(names)


# Entry-point scripts: they have main() and no importable API.
SCRIPTS = {
    "quicpair.__main__",
    "quicpair.tools.demo",
    "quicpair.tools.gen_vectors",
    "quicpair.tools.bench_transport",
    "quicpair.tools.bench_loopactor",
    "quicpair.tools.mdns_probe",
}


def test_every_package_is_walked() -> None:
    found = set(modules())
    assert {"quicpair.actors.links.worker", "quicpair.actors.kernel.loopactor", "quicpair.protocol.pake"} <= (
        found
    )


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


def test_the_package_exports_the_api_people_use() -> None:
    from quicpair.actors.node import Node
    from quicpair.actors.pairing.device import Device, PairingOffer
    from quicpair.config.settings import load_settings
    from quicpair.protocol import errors

    assert quicpair.Node is Node
    assert quicpair.load_settings is load_settings
    assert quicpair.Device is Device and quicpair.PairingOffer is PairingOffer
    tree = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert set(tree) <= set(quicpair.__all__), "the whole error tree is exported"
    for name in tree:
        assert getattr(quicpair, name) is getattr(errors, name)
    assert set(quicpair.__all__) <= set(dir(quicpair))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = quicpair.Nope  # type: ignore[attr-defined]


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert quicpair.__version__ == version("quicpair")


def test_node_is_the_documented_entry_point() -> None:
    from quicpair import Node

    assert {"start", "stop", "pair", "join", "devices", "counters", "node_id"} <= set(dir(Node))


def test_importing_the_package_costs_no_quic_or_crypto() -> None:
    # The command line's client commands only talk to the daemon: they must not pay
    # for aioquic, cryptography or the actors just because quicpair/__init__ ran.
    code = (
        "import sys, quicpair, quicpair.tools; "
        "heavy = sorted(m for m in ('aioquic', 'cryptography', 'pykka', 'quicpair.actors.node') "
        "if m in sys.modules); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
