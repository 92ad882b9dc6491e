"""Behaviour tables of the sans-I/O validator-side `MinerSession`: the job flow
(docs/miner-protocol.md §1.4-§1.8, §6)."""

from __future__ import annotations

import json

import pytest

from horde_common.protocol.miner import (
    ExecutorClass,
    ExecutorFailed,
    ExecutorReady,
    GenericError,
    IgnoredMessage,
    IgnoreReason,
    JobAccepted,
    JobDeclined,
    JobFailed,
    JobFinished,
    JobOutcome,
    JobRegistry,
    MachineSpecsReceived,
    ManifestReceived,
    V0AuthenticateRequest,
    dumps,
)
from testing.miner_session import (
    ACCEPT,
    DECLINE,
    EXEC_FAILED,
    J1,
    MANIFEST,
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


def test_success_path() -> None:
    session = started(J1)
    assert only(session.receive(frame(ACCEPT, J1), at(1)).events, JobAccepted).at == at(1)
    ready = only(session.receive(frame(READY, J1), at(2)).events, ExecutorReady)
    assert not ready.without_accept
    assert session.job(J1).is_ready  # type: ignore[union-attr]
    text = session.outgoing(job_request(J1), at(3))
    assert text == dumps(job_request(J1))
    only(session.receive(specs(J1, 1), at(4)).events, MachineSpecsReceived)
    done = only(session.receive(finished(J1), at(5)).events, JobFinished)
    assert done.message.docker_process_stdout == "answer" and not done.before_job_request
    view = session.job(J1)
    assert view is not None
    assert view.outcome is JobOutcome.FINISHED
    assert (
        view.initial_sent_at,
        view.accept_at,
        view.executor_at,
        view.job_request_sent_at,
        view.final_at,
    ) == (
        T0,
        at(1),
        at(2),
        at(3),
        at(5),
    )
    assert not view.is_ready


def test_outgoing_serialises_and_records_state() -> None:
    session = make_session()
    session.register_job(J1)
    text = session.outgoing(initial(J1), at(7))
    assert json.loads(text)["message_type"] == "V0InitialJobRequest"
    view = session.job(J1)
    assert view is not None
    assert view.initial_sent_at == at(7) and view.executor_class is ExecutorClass.SPIN_UP_4MIN_GPU_24GB
    session.outgoing(initial(J1), at(8))  # a resend does not move the first send time
    assert session.job(J1).initial_sent_at == at(7)  # type: ignore[union-attr]
    assert (
        session.outgoing(GenericError(details="x"), at(9)) == '{"message_type":"GenericError","details":"x"}'
    )


def test_outgoing_for_a_job_of_another_session_is_a_caller_bug() -> None:
    session = make_session()
    with pytest.raises(ValueError):
        session.outgoing(initial(J1), T0)
    with pytest.raises(ValueError):
        session.outgoing(job_request(J1), T0)


def test_register_job_refuses_a_job_owned_by_another_session() -> None:
    registry = JobRegistry()
    make_session(registry).register_job(J1)
    with pytest.raises(ValueError):
        make_session(registry, miner=OTHER_MINER).register_job(J1)
    make_session(registry).register_job(J1)  # same owner again is fine


@pytest.mark.parametrize(
    ("frames", "kinds", "outcome"),
    [
        # docs/miner-protocol.md §6 #1: decline → outcome, and a later "ready" cannot revive the job (fixes
        # quirk B.4)
        ([frame(DECLINE, J1), frame(READY, J1)], [JobDeclined, IgnoredMessage], JobOutcome.DECLINED),
        ([frame(DECLINE, J1), frame(ACCEPT, J1)], [JobDeclined, IgnoredMessage], JobOutcome.DECLINED),
        ([frame(DECLINE, J1), finished(J1)], [JobDeclined, IgnoredMessage], JobOutcome.DECLINED),
        # docs/miner-protocol.md §6 #19
        (
            [frame(ACCEPT, J1), frame(EXEC_FAILED, J1)],
            [JobAccepted, ExecutorFailed],
            JobOutcome.EXECUTOR_FAILED,
        ),
        (
            [frame(ACCEPT, J1), frame(EXEC_FAILED, J1), failed(J1)],
            [JobAccepted, ExecutorFailed, IgnoredMessage],
            JobOutcome.EXECUTOR_FAILED,
        ),
        # quirk of §2.3.3: failed after ready is a duplicate executor response
        (
            [frame(ACCEPT, J1), frame(READY, J1), frame(EXEC_FAILED, J1)],
            [JobAccepted, ExecutorReady, IgnoredMessage],
            None,
        ),
        # docs/miner-protocol.md §6 #13: first wins
        ([frame(ACCEPT, J1), frame(ACCEPT, J1)], [JobAccepted, IgnoredMessage], None),
        ([frame(ACCEPT, J1), frame(DECLINE, J1)], [JobAccepted, IgnoredMessage], None),
        (
            [frame(ACCEPT, J1), frame(READY, J1), frame(READY, J1)],
            [JobAccepted, ExecutorReady, IgnoredMessage],
            None,
        ),
        ([finished(J1, "first"), finished(J1, "second")], [JobFinished, IgnoredMessage], JobOutcome.FINISHED),
        ([finished(J1), failed(J1)], [JobFinished, IgnoredMessage], JobOutcome.FINISHED),
        ([failed(J1, None), finished(J1)], [JobFailed, IgnoredMessage], JobOutcome.FAILED),
        # §6 #4
        (
            [frame(ACCEPT, J1), frame(READY, J1), failed(J1, 1)],
            [JobAccepted, ExecutorReady, JobFailed],
            JobOutcome.FAILED,
        ),
    ],
)
def test_job_message_table(frames: list[str], kinds: list[type], outcome: JobOutcome | None) -> None:
    session = started(J1)
    events = [e for i, f in enumerate(frames) for e in session.receive(f, at(i + 1)).events]
    assert [type(e) for e in events] == kinds
    view = session.job(J1)
    assert view is not None and view.outcome is outcome
    for event in events:
        if isinstance(event, IgnoredMessage):
            assert event.job_uuid == J1
            assert event.reason in (IgnoreReason.DUPLICATE, IgnoreReason.UNEXPECTED_IN_STATE)


def test_first_final_response_is_kept_verbatim() -> None:
    session = started(J1)
    session.receive(finished(J1, "first"), at(1))
    session.receive(finished(J1, "second"), at(2))
    view = session.job(J1)
    assert view is not None and view.final is not None
    assert view.final.docker_process_stdout == "first" and view.final_at == at(1)


def test_final_response_before_the_job_request_is_flagged_out_of_order() -> None:
    """docs/miner-protocol.md §2.7: the original scores it "out of order job response"."""
    session = started(J1)
    session.receive(frame(ACCEPT, J1), at(1))
    event = only(session.receive(failed(J1, None), at(2)).events, JobFailed)
    assert event.before_job_request
    view = session.job(J1)
    assert view is not None and view.final_before_job_request and not view.is_ready


def test_ready_without_accept_is_recorded_and_flagged() -> None:
    """After a reconnect the miner re-announces ready executors; the accept may have been lost."""
    session = started(J1)
    event = only(session.receive(frame(READY, J1), at(1)).events, ExecutorReady)
    assert event.without_accept
    assert session.job(J1).is_ready  # type: ignore[union-attr]


def test_results_redelivered_after_reconnect_are_accepted_once() -> None:
    session = started(J1)
    session.receive(frame(ACCEPT, J1), at(1))
    session.receive(frame(READY, J1), at(2))
    session.outgoing(job_request(J1), at(3))
    session.disconnected(at(4))
    (auth,) = session.connected(at(10))
    assert isinstance(auth, V0AuthenticateRequest)
    kinds = [
        type(e) for f in (MANIFEST, finished(J1), finished(J1)) for e in session.receive(f, at(11)).events
    ]
    assert kinds == [ManifestReceived, JobFinished, IgnoredMessage]


def test_machine_specs_last_wins() -> None:
    session = started(J1)
    session.receive(specs(J1, 1), at(1))
    session.receive(specs(J1, 2), at(2))
    view = session.job(J1)
    assert view is not None and view.machine_specs is not None
    assert view.machine_specs.specs.specs == {"n": 2}
