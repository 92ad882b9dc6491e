"""Behaviour tables of the sans-I/O validator-side `MinerSession`: which session owns a job, and the
miner's errors (docs/miner-protocol.md §1.4-§1.8, §7)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from horde_common.protocol.miner import (
    GenericError,
    IgnoredMessage,
    IgnoreReason,
    JobAccepted,
    JobRegistry,
    MalformedMessage,
    ManifestReceived,
    MinerError,
    MinerErrorSubtype,
    Unauthorized,
    UnauthorizedErrorCode,
    dumps,
)
from testing.miner_session import (
    ACCEPT,
    DECLINE,
    EXEC_FAILED,
    J1,
    J2,
    MANIFEST,
    MINER,
    OTHER_MINER,
    READY,
    T0,
    at,
    failed,
    finished,
    frame,
    initial,
    job_request,
    make_session,
    only,
    specs,
    started,
)


@pytest.mark.parametrize("message", [frame(ACCEPT, J2), frame(READY, J2), finished(J2), specs(J2, 1)])
def test_unknown_job_ids_are_ignored(message: str) -> None:
    session = started(J1)
    event = only(session.receive(message, at(1)).events, IgnoredMessage)
    assert event.reason is IgnoreReason.UNKNOWN_JOB and event.job_uuid == J2
    assert session.job(J2) is None


def test_a_miner_cannot_speak_for_another_miners_job() -> None:
    """Fixes quirk B.5: job messages are checked against the owning miner."""
    registry = JobRegistry()
    owner = make_session(registry)
    intruder = make_session(registry, miner=OTHER_MINER, port=8001)
    owner.register_job(J1)
    owner.outgoing(initial(J1), T0)
    for message in (frame(DECLINE, J1), frame(EXEC_FAILED, J1), failed(J1)):
        event = only(intruder.receive(message, at(1)).events, IgnoredMessage)
        assert event.reason is IgnoreReason.FOREIGN_JOB
    view = owner.job(J1)
    assert view is not None and view.outcome is None and view.accept is None
    assert intruder.jobs() == {}


def test_messages_for_a_job_whose_initial_request_was_not_sent_are_ignored() -> None:
    session = make_session()
    session.register_job(J1)
    event = only(session.receive(frame(ACCEPT, J1), at(1)).events, IgnoredMessage)
    assert event.reason is IgnoreReason.UNEXPECTED_IN_STATE
    assert session.job(J1).accept is None  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("details", "subtype", "close"),
    [
        ("Unknown validator: 5Gvali", MinerErrorSubtype.UNAUTHORIZED, True),
        ("Inactive validator: 5Gvali", MinerErrorSubtype.UNAUTHORIZED, True),
        ("UNKNOWN VALIDATOR shouting", MinerErrorSubtype.UNAUTHORIZED, True),
        ("Validator 5G not authenticated due to: msg too old", MinerErrorSubtype.GENERIC_ERROR, False),
        ("Received JobRequest for unknown job_uuid: x", MinerErrorSubtype.GENERIC_ERROR, False),
        (" unknown validator (leading space)", MinerErrorSubtype.GENERIC_ERROR, False),
        (None, MinerErrorSubtype.GENERIC_ERROR, False),
    ],
)
def test_generic_error_from_miner(details: str | None, subtype: MinerErrorSubtype, close: bool) -> None:
    session = started(J1)
    result = session.receive(json.dumps({"message_type": "GenericError", "details": details}), at(1))
    event = only(result.events, MinerError)
    assert (event.subtype, event.details, event.close) == (subtype, details, close)
    assert result.close is close and session.close_requested is close
    assert result.outgoing == ()
    assert session.job(J1).outcome is None  # type: ignore[union-attr]  # never linked to a job


def test_unauthorized_error_is_reported_without_closing() -> None:
    session = started()
    result = session.receive(
        '{"message_type":"UnauthorizedError","code":"UNKNOWN_VALIDATOR","details":"d"}', at(1)
    )
    event = only(result.events, Unauthorized)
    assert event.code is UnauthorizedErrorCode.UNKNOWN_VALIDATOR and event.details == "d"
    assert not result.close


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", "Expecting value: line 1 column 1 (char 0)"),
        (b"\x00\xff", None),
        ("{", None),
        ('{"message_type":"V0AcceptJobRequest"}', None),
        (dumps(job_request(J1)), None),  # a validator → miner type
        ('{"message_type":"V0ExecutorReadyRequest","job_uuid":5}', None),
    ],
)
def test_malformed_frames_get_a_generic_error_reply_and_change_nothing(
    raw: str | bytes, error: str | None
) -> None:
    session = started(J1)
    # Replies are paid for by the garbage received (`flood`): a large bad frame first buys the budget.
    credit = session.receive("x" * 5_000, at(0.5))
    assert len(credit.outgoing) == 1
    result = session.receive(raw, at(1))
    event = only(result.events, MalformedMessage)
    if error is not None:
        assert event.error == error
    expected = f"Malformed message from miner {MINER}(1.2.3.4:8000): {event.error}"
    assert event.reply == GenericError(details=expected)
    assert result.outgoing == (event.reply,)
    assert json.loads(dumps(result.outgoing[0])) == {"message_type": "GenericError", "details": expected}
    assert not result.close
    assert session.job(J1).outcome is None  # type: ignore[union-attr]
    # the connection keeps working afterwards
    only(session.receive(frame(ACCEPT, J1), at(2)).events, JobAccepted)


def test_receive_before_connected_does_not_raise() -> None:
    session = make_session()
    only(session.receive(MANIFEST, T0).events, ManifestReceived)


def test_internal_errors_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    session = started(J1)

    def boom(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(session, "_dispatch", boom)
    event = only(session.receive(frame(ACCEPT, J1), at(1)).events, IgnoredMessage)
    assert event.reason is IgnoreReason.INTERNAL_ERROR
