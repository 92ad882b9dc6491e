"""Builders of frames and sessions for the behaviour tables of the sans-I/O validator-side
`MinerSession` (libs/common/tests/test_protocol_miner_session_*.py; docs/miner-protocol.md §1.4-§1.8)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
    ExecutorClass,
    JobRegistry,
    JobStartedReceiptPayload,
    MinerSession,
    V0InitialJobRequest,
    V0JobRequest,
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
