"""The parts of the reference ``spake2`` package used beyond its public API, one test each.

``spake2`` 0.9 is the reference protocol/pake.py (libsodium) is held to; it is
a test dependency, pinned exactly (setup.cfg, the ``test`` extra).
tools/gen_vectors.py computes the vectors step by step with two modules that
the package's ``__init__`` does not export: ``ed25519_basic`` (``NotOnCurve``,
``L``) and ``ed25519_group`` (``Ed25519Group.bytes_to_element``). If a
release moves or changes either, these fail LOUDLY, naming the hook: fix
tools/gen_vectors.py before bumping the pin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import pytest

PINNED = "0.9"
# The Ed25519 base point, and the all-zero encoding (y = 0: not on the curve).
BASE = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
P = 2**255 - 19


@contextmanager
def hook(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # AssertionError included
        pytest.fail(
            f"spake2 internal {name} is not what tools/gen_vectors.py was written against "
            f"(spake2 {PINNED}; installed {version('spake2')}): {type(exc).__name__}: {exc}",
            pytrace=False,
        )


def test_spake2_is_the_pinned_version() -> None:
    assert version("spake2") == PINNED, "the vectors and hooks were checked against spake2 0.9 only"


def test_hook_not_on_curve_is_an_exception_class_raised_for_bad_points() -> None:
    with hook("spake2.ed25519_basic.NotOnCurve"):
        from spake2.ed25519_basic import NotOnCurve
        from spake2.ed25519_group import Ed25519Group

        assert issubclass(NotOnCurve, Exception)
        # y = 2 has no x on the curve: the decoder must say so with NotOnCurve or ValueError,
        # which are the two exceptions the reference raises for it.
        with pytest.raises((NotOnCurve, ValueError)):
            Ed25519Group.bytes_to_element((2).to_bytes(32, "little"))


def test_hook_bytes_to_element_decodes_and_reencodes() -> None:
    with hook("spake2.ed25519_group.Ed25519Group.bytes_to_element"):
        from spake2.ed25519_group import Ed25519Group

        element = Ed25519Group.bytes_to_element(BASE)
        assert element.to_bytes() == BASE
        # The one non-canonical spelling it accepts (the identity, y = 1, written as 1 + p)
        # re-encodes canonically: that difference is what pake.py refuses the peer for (in C).
        alias = (1 + P).to_bytes(32, "little")
        assert Ed25519Group.bytes_to_element(alias).to_bytes() == (1).to_bytes(32, "little")
