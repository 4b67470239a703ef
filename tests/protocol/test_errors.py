"""The error tree: wire codes, their descriptions, and what a person reads."""

from __future__ import annotations

import pytest

from quicpair.protocol.errors import (
    CodeFormatError,
    ConfigError,
    ErrorCode,
    FrameError,
    LocalProtocolError,
    PairingFailed,
    ProtocolError,
    QuicpairError,
    RemoteProtocolError,
    SealError,
    describe_code,
)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_a_description_for_people(code: ErrorCode) -> None:
    text = describe_code(code)
    assert text and not text.startswith("unknown error code")


def test_a_code_from_a_later_version_is_still_described() -> None:
    assert describe_code(0x7F) == "unknown error code 0x7f"


def test_codes_below_0x10_are_not_faults() -> None:
    not_faults = {c for c in ErrorCode if not c.is_fault}
    assert not_faults == {
        ErrorCode.NO_ERROR,
        ErrorCode.GOING_AWAY,
        ErrorCode.DUPLICATE_CONNECTION,
        ErrorCode.UNPAIRED,
        ErrorCode.PEER_RESTARTED,
    }


def test_codes_fit_a_quic_varint_and_are_unique() -> None:
    values = [int(c) for c in ErrorCode]
    assert len(values) == len(set(values)) and all(0 <= v < 2**62 for v in values)


def test_protocol_errors_carry_their_wire_code_into_the_message() -> None:
    error = FrameError(ErrorCode.MALFORMED_MESSAGE, "field 'pake' is missing")
    assert error.code is ErrorCode.MALFORMED_MESSAGE
    assert str(error) == "field 'pake' is missing [MALFORMED_MESSAGE]"


def test_pairing_failed_reads_well_and_remembers_who_decided() -> None:
    mine, theirs = PairingFailed(ErrorCode.TIMEOUT), PairingFailed(ErrorCode.WRONG_CODE, remote=True)
    assert str(mine) == "pairing failed: timed out [TIMEOUT]" and not mine.remote
    assert theirs.remote and "wrong code" in str(theirs)


def test_one_root_and_the_local_remote_split() -> None:
    for cls in (ProtocolError, PairingFailed, CodeFormatError, ConfigError):
        assert issubclass(cls, QuicpairError)
    assert issubclass(FrameError, RemoteProtocolError) and issubclass(SealError, RemoteProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    # Mistyped input is also a ValueError, so plain callers can catch it as such.
    assert issubclass(CodeFormatError, ValueError) and issubclass(ConfigError, ValueError)
