"""The initiator's codebook: single use, expiry, counted attempts, one session at a time."""

from __future__ import annotations

import random

import pytest

from quicpair.protocol import errors
from quicpair.protocol.codebook import Codebook, CodeClaims, CodeState
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode, LocalProtocolError

NOW = 1_000.0


def rand(seed: int = 1) -> random.Random:
    return random.Random(seed)


def refused(book: Codebook, nameplate: int, now: float = NOW) -> ErrorCode:
    with pytest.raises(errors.PairingFailed) as caught:
        book.claim(nameplate, now)
    return caught.value.code


def test_an_opened_code_can_be_claimed_once_and_consumed() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    assert book.claim(code.nameplate, NOW + 1) == code
    book.consume(code.nameplate)
    status = book.describe(code.nameplate, NOW + 2)
    assert status is not None
    assert status.state is CodeState.CONSUMED and status.attempts == 1
    assert refused(book, code.nameplate, NOW + 2) is ErrorCode.CODE_USED_UP


def test_the_book_satisfies_what_the_initiator_machine_needs() -> None:
    claims: CodeClaims = Codebook()
    assert hasattr(claims, "claim")


def test_nameplates_are_unique_among_remembered_codes() -> None:
    book = Codebook(max_open=32)
    source = rand(5)
    codes = [book.open(NOW, source.randbytes) for _ in range(32)]
    assert len({c.nameplate for c in codes}) == 32
    with pytest.raises(errors.PairingFailed) as caught:
        book.open(NOW, source.randbytes)
    assert caught.value.code is ErrorCode.BUSY


def test_unknown_nameplate_is_no_such_code() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    other = code.nameplate % 9999 + 1
    assert refused(book, other) is ErrorCode.NO_SUCH_CODE


def test_a_held_code_is_busy_for_a_second_session() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    book.claim(code.nameplate, NOW)
    assert refused(book, code.nameplate) is ErrorCode.BUSY
    book.release(code.nameplate)
    assert book.claim(code.nameplate, NOW) == code


def test_each_claim_is_counted_and_the_last_failure_burns_the_code() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes, max_attempts=3)
    for attempt in (1, 2, 3):
        book.claim(code.nameplate, NOW)
        book.record_failure(code.nameplate, ErrorCode.WRONG_CODE)
        status = book.describe(code.nameplate, NOW)
        assert status is not None and status.attempts == attempt and status.wrong_attempts == attempt
    status = book.describe(code.nameplate, NOW)
    assert status is not None and status.state is CodeState.BURNED
    assert status.last_failure is ErrorCode.WRONG_CODE
    assert refused(book, code.nameplate) is ErrorCode.CODE_USED_UP


def test_an_abandoned_attempt_counts_but_is_not_a_wrong_code() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes, max_attempts=2)
    book.claim(code.nameplate, NOW)
    book.record_failure(code.nameplate, ErrorCode.TIMEOUT)
    book.claim(code.nameplate, NOW)
    book.release(code.nameplate)
    status = book.describe(code.nameplate, NOW)
    assert status is not None
    assert (status.attempts, status.wrong_attempts, status.state) == (2, 0, CodeState.BURNED)
    assert status.last_failure is ErrorCode.TIMEOUT


def test_the_last_allowed_attempt_may_still_succeed() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes, max_attempts=2)
    book.claim(code.nameplate, NOW)
    book.record_failure(code.nameplate, ErrorCode.WRONG_CODE)
    book.claim(code.nameplate, NOW)
    book.consume(code.nameplate)
    status = book.describe(code.nameplate, NOW)
    assert status is not None and status.state is CodeState.CONSUMED


def test_a_code_expires_for_new_claims_but_a_held_one_may_finish() -> None:
    book = Codebook()
    early = book.open(NOW, rand(1).randbytes, expiry=300.0)
    late = book.open(NOW, rand(2).randbytes, expiry=300.0)
    book.claim(early.nameplate, NOW + 299.0)
    assert refused(book, late.nameplate, NOW + 300.0) is ErrorCode.CODE_EXPIRED
    book.consume(early.nameplate)  # claimed in time: the session finishes after the expiry
    early_status = book.describe(early.nameplate, NOW + 301)
    late_status = book.describe(late.nameplate, NOW + 301)
    assert early_status is not None and early_status.state is CodeState.CONSUMED
    assert late_status is not None and late_status.state is CodeState.EXPIRED


def test_a_cancelled_code_says_it_was_cancelled() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    book.cancel(code.nameplate)
    assert refused(book, code.nameplate) is ErrorCode.CODE_CANCELLED


def test_release_and_failure_of_an_unheld_code_change_nothing() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    book.release(code.nameplate)
    book.record_failure(code.nameplate, ErrorCode.WRONG_CODE)
    book.release(4242 if code.nameplate != 4242 else 4243)
    status = book.describe(code.nameplate, NOW)
    assert status is not None and (status.state, status.attempts, status.wrong_attempts) == (
        CodeState.OPEN,
        0,
        0,
    )


def test_consuming_a_code_no_session_holds_is_a_local_error() -> None:
    book = Codebook()
    code = book.open(NOW, rand().randbytes)
    with pytest.raises(LocalProtocolError):
        book.consume(code.nameplate)


def test_finished_codes_are_forgotten_after_the_linger_time() -> None:
    book = Codebook(linger=60.0)
    code = book.open(NOW, rand(1).randbytes, expiry=10.0)
    book.open(NOW + 69.0, rand(2).randbytes)  # expired 59 s ago: still remembered
    assert book.describe(code.nameplate, NOW + 69.0) is not None
    book.open(NOW + 70.0, rand(3).randbytes)  # 60 s after the expiry: forgotten
    assert book.describe(code.nameplate, NOW + 70.0) is None
    assert refused(book, code.nameplate, NOW + 70.0) is ErrorCode.NO_SUCH_CODE


def test_statuses_and_next_expiry_for_a_status_display() -> None:
    book = Codebook()
    a = book.open(NOW, rand(1).randbytes, expiry=100.0)
    b = book.open(NOW, rand(2).randbytes, expiry=50.0)
    assert book.next_expiry(NOW) == NOW + 50.0
    book.claim(b.nameplate, NOW)
    assert book.next_expiry(NOW) == NOW + 100.0
    assert [s.nameplate for s in book.statuses(NOW)] == sorted([a.nameplate, b.nameplate])
    assert book.next_expiry(NOW + 100.0) is None
    assert "words" not in repr(book.statuses(NOW)[0]) and a.words[0] not in repr(book.statuses(NOW))


@pytest.mark.parametrize(("expiry", "attempts"), [(0.0, 3), (-1.0, 3), (300.0, 0)])
def test_bad_parameters_are_refused(expiry: float, attempts: int) -> None:
    with pytest.raises(ValueError):
        Codebook().open(NOW, rand().randbytes, expiry=expiry, max_attempts=attempts)


def test_open_returns_a_pairing_code() -> None:
    code = Codebook().open(NOW, rand().randbytes)
    assert isinstance(code, PairingCode)
    assert PairingCode.parse(code.text) == code
