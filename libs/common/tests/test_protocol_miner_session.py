"""Behaviour tables of the sans-I/O validator-side `MinerSession`
(docs/miner-protocol.md §1.4–§1.8, §6, §7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from horde_common.crypto import keypair_from_seed, verify
from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
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
    JobStartedReceiptPayload,
    MachineSpecsReceived,
    MalformedMessage,
    ManifestReceived,
    ManifestRejected,
    MinerError,
    MinerErrorSubtype,
    MinerSession,
    Unauthorized,
    UnauthorizedErrorCode,
    V0AuthenticateRequest,
    V0InitialJobRequest,
    V0JobRequest,
    dumps,
)

VALIDATOR = keypair_from_seed("//horde-validator-0")
MINER = keypair_from_seed("//horde-miner-0").ss58_address
OTHER_MINER = keypair_from_seed("//horde-miner-1").ss58_address
T0 = datetime(2024, 11, 28, 10, 0, 0, 120000, tzinfo=UTC)
J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_session(registry: JobRegistry | None = None, miner: str = MINER, port: int = 8000) -> MinerSession:
    return MinerSession.with_keypair(
        VALIDATOR, miner_hotkey=miner, miner_address="1.2.3.4", miner_port=port, registry=registry
    )


def initial(job_uuid: str, miner: str = MINER) -> V0InitialJobRequest:
    payload = JobStartedReceiptPayload(
        job_uuid=job_uuid,
        miner_hotkey=miner,
        validator_hotkey=VALIDATOR.ss58_address,
        timestamp=T0,
        executor_class=ExecutorClass.SPIN_UP_4MIN_GPU_24GB,
        max_timeout=53,
        is_organic=False,
        ttl=240,
    )
    return V0InitialJobRequest(
        job_uuid=job_uuid,
        executor_class=ExecutorClass.SPIN_UP_4MIN_GPU_24GB,
        base_docker_image_name="backenddevelopersltd/compute-horde-job:v1-latest",
        timeout_seconds=53,
        job_started_receipt_payload=payload,
        job_started_receipt_signature="0x00",
    )


def job_request(job_uuid: str) -> V0JobRequest:
    return V0JobRequest(
        job_uuid=job_uuid,
        executor_class=ExecutorClass.SPIN_UP_4MIN_GPU_24GB,
        docker_image_name="backenddevelopersltd/compute-horde-job:v1-latest",
        docker_run_options_preset=DockerRunOptionsPreset.NVIDIA_ALL,
        docker_run_cmd=[],
    )


def frame(message_type: str, job_uuid: str | None = None, **fields: Any) -> str:
    body: dict[str, Any] = {"message_type": message_type, **fields}
    if job_uuid is not None:
        body["job_uuid"] = job_uuid
    return json.dumps(body)


ACCEPT = "V0AcceptJobRequest"
DECLINE = "V0DeclineJobRequest"
READY = "V0ExecutorReadyRequest"
EXEC_FAILED = "V0ExecutorFailedRequest"


def finished(job_uuid: str, stdout: str = "answer") -> str:
    return frame("V0JobFinishedRequest", job_uuid, docker_process_stdout=stdout, docker_process_stderr="")


def failed(job_uuid: str, status: int | None = 1) -> str:
    return frame(
        "V0JobFailedRequest",
        job_uuid,
        docker_process_exit_status=status,
        docker_process_stdout="",
        docker_process_stderr="boom",
    )


def specs(job_uuid: str, n: int) -> str:
    return frame("V0MachineSpecsRequest", job_uuid, specs={"specs": {"n": n}})


MANIFEST = json.dumps(
    {
        "message_type": "V0ExecutorManifestRequest",
        "manifest": {"executor_classes": [{"executor_class": "spin_up-4min.gpu-24gb", "count": 2}]},
    }
)


def started(*job_uuids: str) -> MinerSession:
    """A connected session with the given jobs registered and their initial requests sent."""
    session = make_session()
    session.connected(T0)
    for job_uuid in job_uuids:
        session.register_job(job_uuid, ExecutorClass.SPIN_UP_4MIN_GPU_24GB)
        session.outgoing(initial(job_uuid), T0)
    return session


def only(events: tuple[Any, ...], kind: type) -> Any:
    assert len(events) == 1, events
    assert isinstance(events[0], kind), events
    return events[0]


# ------------------------------------------------------------------------------ connection and auth


def test_first_frame_is_a_verifiable_authentication() -> None:
    session = make_session()
    (auth,) = session.connected(T0)
    assert isinstance(auth, V0AuthenticateRequest)
    assert auth.payload.validator_hotkey == VALIDATOR.ss58_address
    assert auth.payload.miner_hotkey == MINER
    assert auth.payload.timestamp == int(T0.timestamp())
    wire = json.loads(dumps(auth))
    assert verify(VALIDATOR.ss58_address, json.dumps(wire["payload"], sort_keys=True), wire["signature"])


def test_every_reconnect_re_authenticates_with_a_fresh_timestamp() -> None:
    session = make_session()
    session.connected(T0)
    session.disconnected(at(30))
    assert not session.connected_now
    (auth,) = session.connected(at(45))
    assert isinstance(auth, V0AuthenticateRequest)
    assert auth.payload.timestamp == int(at(45).timestamp())
    assert session.connections == 2 and session.connected_now


def test_url_and_name() -> None:
    session = make_session()
    assert session.url() == f"ws://1.2.3.4:8000/v0.1/validator_interface/{VALIDATOR.ss58_address}"
    assert session.name == f"{MINER}(1.2.3.4:8000)"
    v6 = MinerSession(
        validator_hotkey="5V", sign=lambda b: "0x", miner_hotkey="5M", miner_address="::1", miner_port=9
    )
    assert v6.url() == "ws://[::1]:9/v0.1/validator_interface/5V"


def test_custom_signer_is_used_for_authentication() -> None:
    blobs: list[str] = []

    def signer(blob: str) -> str:
        blobs.append(blob)
        return "0xabc"

    session = MinerSession(
        validator_hotkey="5V", sign=signer, miner_hotkey="5M", miner_address="h", miner_port=1
    )
    (auth,) = session.connected(datetime.fromtimestamp(1732795200, tz=UTC))
    assert isinstance(auth, V0AuthenticateRequest)
    assert blobs == ['{"miner_hotkey": "5M", "timestamp": 1732795200, "validator_hotkey": "5V"}']
    assert auth.signature == "0xabc"


# ------------------------------------------------------------------------------------- manifest


def test_manifest_first_wins() -> None:
    session = started()
    event = only(session.receive(MANIFEST, at(1)).events, ManifestReceived)
    assert event.manifest.executor_counts() == {ExecutorClass.SPIN_UP_4MIN_GPU_24GB: 2}
    assert session.manifest_at == at(1)
    second = MANIFEST.replace('"count": 2', '"count": 50')
    ignored = only(session.receive(second, at(2)).events, IgnoredMessage)
    assert ignored.reason is IgnoreReason.DUPLICATE and ignored.message_type == "V0ExecutorManifestRequest"
    assert session.manifest is not None and session.manifest.total_count == 2


def test_manifest_with_unknown_class_string_is_malformed_and_not_recorded() -> None:
    session = started()
    bad = MANIFEST.replace("spin_up-4min.gpu-24gb", "always_on.gpu-80gb")
    got = session.receive(bad, at(1))
    # The whole manifest is invalid; it is sent once, so the session closes now (the miner's
    # MANIFEST_ERROR) instead of letting the validator wait out the manifest deadline.
    assert [type(e) for e in got.events] == [MalformedMessage, ManifestRejected]
    assert got.close
    assert session.manifest is None


# ------------------------------------------------------------------------------------ job flow


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


# --------------------------------------------------------------------------------- job ownership


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
