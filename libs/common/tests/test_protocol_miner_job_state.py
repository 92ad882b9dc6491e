"""The session keeps each job in a mutable record and hands out frozen snapshots (`job_state`).

A view taken earlier must not change when the session learns more (callers may keep one), and the
`*_sent` recorders used by callers that serialise a frame themselves must record exactly what
`outgoing` records for the same message.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
    ExecutorClass,
    JobOutcome,
    JobStartedReceiptPayload,
    JobView,
    MinerSession,
    V0InitialJobRequest,
    V0JobRequest,
)

VALIDATOR = keypair_from_seed("//horde-validator-0")
MINER = keypair_from_seed("//horde-miner-0").ss58_address
T0 = datetime(2024, 11, 28, 10, 0, 0, 120000, tzinfo=UTC)
J1 = "11111111-1111-4111-8111-111111111111"
CLASS = ExecutorClass.ALWAYS_ON_GPU_24GB


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def session() -> MinerSession:
    s = MinerSession.with_keypair(VALIDATOR, miner_hotkey=MINER, miner_address="1.2.3.4", miner_port=1)
    s.register_job(J1)
    return s


def frame(message_type: str, **fields: object) -> str:
    return json.dumps({"message_type": message_type, "job_uuid": J1, **fields})


def initial() -> V0InitialJobRequest:
    payload = JobStartedReceiptPayload(
        job_uuid=J1,
        miner_hotkey=MINER,
        validator_hotkey=VALIDATOR.ss58_address,
        timestamp=T0,
        executor_class=CLASS,
        max_timeout=53,
        is_organic=False,
        ttl=2,
    )
    return V0InitialJobRequest(
        job_uuid=J1,
        executor_class=CLASS,
        base_docker_image_name="img",
        timeout_seconds=53,
        job_started_receipt_payload=payload,
        job_started_receipt_signature="0x00",
    )


def job_request() -> V0JobRequest:
    return V0JobRequest(
        job_uuid=J1,
        docker_image_name="img",
        docker_run_options_preset=DockerRunOptionsPreset.NVIDIA_ALL,
        docker_run_cmd=[],
    )


def test_a_view_is_a_frozen_snapshot() -> None:
    s = session()
    s.outgoing(initial(), at(0))
    before = s.job(J1)
    assert before is not None and before.accept is None and before.outcome is None
    all_before = s.jobs()
    s.receive(frame("V0AcceptJobRequest"), at(1))
    s.receive(frame("V0ExecutorReadyRequest"), at(2))
    s.receive(frame("V0MachineSpecsRequest", specs={"specs": {}}), at(3))
    s.receive(frame("V0JobFinishedRequest", docker_process_stdout="x", docker_process_stderr=""), at(4))
    # The views taken before did not move.
    assert before.accept is None and before.executor is None and before.outcome is None
    assert all_before[J1] == before
    after = s.job(J1)
    assert after is not None and after != before
    assert (after.accept_at, after.executor_at, after.final_at) == (at(1), at(2), at(4))
    assert after.outcome is JobOutcome.FINISHED and after.machine_specs is not None
    assert after.final_before_job_request  # the job request was never recorded
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.outcome = None  # type: ignore[misc]


def test_terminal_outcome_stays_after_a_snapshot() -> None:
    s = session()
    s.outgoing(initial(), at(0))
    s.receive(frame("V0DeclineJobRequest"), at(1))
    declined = s.job(J1)
    assert declined is not None and declined.outcome is JobOutcome.DECLINED
    s.receive(frame("V0ExecutorReadyRequest"), at(2))
    s.receive(frame("V0JobFinishedRequest", docker_process_stdout="x", docker_process_stderr=""), at(3))
    assert s.job(J1) == declined


def test_recorders_match_outgoing() -> None:
    by_outgoing, by_recorders = session(), session()
    by_outgoing.outgoing(initial(), at(1))
    by_outgoing.outgoing(job_request(), at(2))
    by_recorders.initial_request_sent(J1, CLASS, at(1))
    by_recorders.job_request_sent(J1, at(2))
    # First send wins, for both.
    by_recorders.initial_request_sent(J1, CLASS, at(5))
    by_recorders.job_request_sent(J1, at(6))
    view = by_recorders.job(J1)
    assert view == by_outgoing.job(J1)
    assert isinstance(view, JobView) and view.initial_sent_at == at(1) and view.job_request_sent_at == at(2)
    assert view.executor_class is CLASS
    with pytest.raises(ValueError, match="not registered"):
        by_recorders.initial_request_sent("33333333-3333-4333-8333-333333333333", CLASS, at(1))
