"""The facilitator simulator over real sockets, driven by the validator's own protocol code
(`FacilitatorSession`) on a `websockets` client. Synchronisation is by frames received and by
`FacilitatorSim.wait_until`, never by sleeping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from horde_common.protocol.facilitator import (
    HEARTBEAT_PERIOD,
    Authenticated,
    AuthFailed,
    JobRequested,
    JobStatus,
    MinerResponse,
    V0AuthenticationRequest,
    V0JobRequest,
    V1JobRequest,
    V2JobRequest,
    verify_v2_request,
)
from horde_common.protocol.facilitator import FacilitatorSession as Session
from horde_localnet import keys
from horde_localnet.facilitator import (
    CLOSE_SIGNATURE_INVALID,
    CLOSE_VALIDATOR_NOT_FOUND,
    JobSpec,
    RunningFacilitator,
    read_jobs_file,
    running_facilitator,
)
from horde_localnet.facilitator import sim as sim_module
from horde_localnet.facilitator.__main__ import _template, build_parser
from horde_localnet.facilitator.client import (
    FacilitatorClientError,
    get_job,
    get_stats,
    resend_job,
    stream_statuses,
    submit_job,
)

WAIT = 10.0  # seconds any expected event may take on a loaded 2-core machine
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SIGNERS = frozenset({keys.facilitator_hotkey()})


@pytest.fixture
async def facilitator() -> AsyncIterator[RunningFacilitator]:
    async with running_facilitator() as rf:
        yield rf


async def _open(rf: RunningFacilitator, index: int = 0) -> tuple[ClientConnection, Session, str]:
    """A validator connection: the session's auth frame out, the raw answer back."""
    session = Session(V0AuthenticationRequest.from_keypair(keys.validator_keypair(index)), SIGNERS)
    ws = await connect(rf.ws_url)
    await ws.send(session.start(NOW))
    answer = await ws.recv()
    assert isinstance(answer, str)  # every facilitator frame is a text frame
    return ws, session, answer


async def _authenticated(rf: RunningFacilitator, index: int = 0) -> tuple[ClientConnection, Session]:
    ws, session, answer = await _open(rf, index)
    assert session.receive(answer, NOW) == [Authenticated(NOW)]
    return ws, session


async def _next_job(ws: ClientConnection, session: Session) -> Any:
    frame = await ws.recv()
    assert isinstance(frame, str)
    (event,) = session.receive(frame, NOW)
    assert isinstance(event, JobRequested), event
    return event.request


# ------------------------------------------------------------------------------ authentication


async def test_a_validator_signing_its_key_is_authenticated(facilitator: RunningFacilitator) -> None:
    ws, session, answer = await _open(facilitator)
    assert answer == '{"status":"success","errors":[]}'
    assert session.receive(answer, NOW) == [Authenticated(NOW)]
    stats = facilitator.sim.stats()
    assert [v["hotkey"] for v in stats["connected_validators"]] == [keys.validator_hotkey(0)]
    assert stats["auth_ok"] == 1
    await ws.close()


async def test_a_bad_signature_is_refused_and_closed(facilitator: RunningFacilitator) -> None:
    own = keys.validator_keypair(0)
    forged = V0AuthenticationRequest(
        public_key=own.public_key.hex(),
        signature="0x" + bytes(keys.validator_keypair(1).sign(own.public_key)).hex(),
    )
    async with connect(facilitator.ws_url) as ws:
        await ws.send(forged.model_dump_json())
        answer = await ws.recv()
        assert json.loads(answer) == {
            "status": "error",
            "errors": [{"msg": "Invalid signature", "type": "auth.signature_invalid", "help": ""}],
        }
        session = Session(forged, SIGNERS)
        session.start(NOW)
        (event,) = session.receive(answer, NOW)
        assert isinstance(event, AuthFailed) and event.errors[0].type == "auth.signature_invalid"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_SIGNATURE_INVALID
    assert facilitator.sim.stats()["auth_failed"] == 1
    assert facilitator.sim.links == {}


async def test_only_allowed_validators_are_accepted() -> None:
    async with running_facilitator(allowed_validators=[keys.validator_hotkey(1)]) as rf:
        ws, _session, answer = await _open(rf, 0)
        assert json.loads(answer)["errors"][0]["type"] == "auth.validator_not_found"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_VALIDATOR_NOT_FOUND
        ws, _session = await _authenticated(rf, 1)
        await ws.close()


async def test_frames_before_authentication_are_refused_without_closing(
    facilitator: RunningFacilitator,
) -> None:
    async with connect(facilitator.ws_url) as ws:
        await ws.send('{"message_type":"V0Heartbeat"}')
        assert json.loads(await ws.recv())["errors"][0]["type"] == "auth.not_authenticated"
        auth = V0AuthenticationRequest.from_keypair(keys.validator_keypair(0))
        session = Session(auth, SIGNERS)
        await ws.send(session.start(NOW))
        assert session.receive(await ws.recv(), NOW) == [Authenticated(NOW)]
        await ws.send(auth.model_dump_json())  # a second authentication
        assert json.loads(await ws.recv())["errors"][0]["type"] == "auth.already_authenticated"


# ------------------------------------------------------------------------------------ jobs


async def test_v0_v1_and_v2_jobs_reach_the_validator(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    miner = keys.miner_hotkey(3)
    v0 = await submit_job(facilitator.url, version="V0", miner_hotkey=miner, job_timeout=60)
    request = await _next_job(ws, session)
    assert isinstance(request, V0JobRequest) and request.uuid == v0 and request.miner_hotkey == miner

    volume = {"volume_type": "zip_url", "contents": "https://x/in.zip", "relative_path": None}
    v1 = await submit_job(
        facilitator.url, version="V1", miner_hotkey=miner, args=["a", "b"], extra={"volume": volume}
    )
    request = await _next_job(ws, session)
    assert isinstance(request, V1JobRequest) and request.uuid == v1 and request.args == ["a", "b"]
    assert request.volume is not None and request.volume.model_dump(mode="json") == volume

    v2 = await submit_job(
        facilitator.url,
        version="V2",
        executor_class="always_on.llm.a6000",
        env={"K": "v"},
        extra={"volume": volume},
    )
    request = await _next_job(ws, session)
    assert isinstance(request, V2JobRequest) and request.uuid == v2  # the session verified it
    assert verify_v2_request(request, SIGNERS) is None
    assert request.signature is not None and request.signature.signatory == keys.facilitator_hotkey()
    tampered = request.model_copy(update={"docker_image": "other"})
    assert verify_v2_request(tampered, SIGNERS) is not None
    assert session.counters.v2_rejected == 0

    listed = (await _get(facilitator, "/jobs"))["jobs"]
    assert [(j["uuid"], j["version"], j["state"]) for j in listed] == [
        (v0, "V0", "sent"),
        (v1, "V1", "sent"),
        (v2, "V2", "sent"),
    ]
    assert (await get_job(facilitator.url, v0))["timeout"] == 60
    await ws.close()


async def test_status_updates_are_recorded_in_order(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    job_uuid = await submit_job(facilitator.url, version="V0", miner_hotkey=keys.miner_hotkey(0))
    await _next_job(ws, session)
    for status, message_type, stdout in (
        (JobStatus.ACCEPTED, "V0AcceptJobRequest", ""),
        (JobStatus.COMPLETED, "V0JobFinishedRequest", "hello\n"),
    ):
        response = MinerResponse(
            job_uuid=job_uuid,
            message_type=message_type,
            docker_process_stderr="",
            docker_process_stdout=stdout,
        )
        frame = session.status_update(job_uuid, status, comment="", miner_response=response)
        assert isinstance(frame, str)
        await ws.send(frame)
    streamed = [u async for u in stream_statuses(facilitator.url, job_uuid, WAIT)]
    assert [u["status"] for u in streamed] == ["accepted", "completed"]
    assert streamed[1]["metadata"]["miner_response"]["docker_process_stdout"] == "hello\n"
    record = await get_job(facilitator.url, job_uuid)
    assert record["statuses"] == ["accepted", "completed"]
    times = [u["received_at"] for u in record["status_updates"]]
    assert times == sorted(times) and all(u["validator"] == keys.validator_hotkey(0) for u in streamed)
    summary = (await _get(facilitator, "/jobs"))["jobs"]
    assert summary == [
        {
            "uuid": job_uuid,
            "version": "V0",
            "state": "sent",
            "sent_to": keys.validator_hotkey(0),
            "sent_at": record["sent_at"],
            "sends": 1,
            "statuses": ["accepted", "completed"],
            "finals": 1,
            "duplicate_finals": 0,
            "identical_finals": 0,
        }
    ]
    await ws.close()


async def test_heartbeats_and_machine_specs_are_recorded(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    heartbeat = session.due_heartbeat(NOW + HEARTBEAT_PERIOD)
    assert heartbeat is not None
    await ws.send(heartbeat)
    specs = session.machine_specs_update(
        miner_hotkey=keys.miner_hotkey(0),
        validator_hotkey=keys.validator_hotkey(0),
        specs={"os": "x"},
        batch_id="b1",
    )
    assert isinstance(specs, str)
    await ws.send(specs)
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["machine_specs"] == 1, WAIT)
    stats = await _get(facilitator, "/stats")
    assert stats["heartbeats"] == 1 and stats["frames_invalid"] == 0
    assert stats["connected_validators"][0]["heartbeats"] == 1
    assert stats["connected_validators"][0]["last_heartbeat"] is not None
    assert (await _get(facilitator, "/heartbeats"))["heartbeats"][0]["validator"] == keys.validator_hotkey(0)
    recorded = (await _get(facilitator, "/machine-specs"))["machine_specs"]
    assert recorded[0]["batch_id"] == "b1" and recorded[0]["specs"] == {"os": "x"}
    await ws.close()


async def test_invalid_frames_are_counted_not_fatal(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    for frame in (
        "not json",
        b'{"message_type":"V0Heartbeat"}',  # binary: the facilitator reads text frames only
        '{"message_type":"V0NoSuchMessage"}',
        '{"message_type":"V0JobStatusUpdate","uuid":"u","status":"lost"}',
        '{"message_type":"V0Heartbeat","extra":1}',
        "[1,2,3]",
    ):
        await ws.send(frame)
    heartbeat = session.due_heartbeat(NOW + HEARTBEAT_PERIOD)
    assert heartbeat is not None
    await ws.send(heartbeat)
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["heartbeats"] == 1, WAIT)
    stats = sim.stats()
    assert stats["frames_invalid"] == 6 and stats["connected_validators"][0]["frames_invalid"] == 6
    job_uuid = await submit_job(facilitator.url)  # the link still works
    assert (await _next_job(ws, session)).uuid == job_uuid
    await ws.close()


async def test_updates_for_unknown_jobs_are_kept_and_waiting_can_time_out(
    facilitator: RunningFacilitator,
) -> None:
    ws, session = await _authenticated(facilitator)
    frame = session.status_update("never-submitted", JobStatus.FAILED, comment="gone", miner_response=None)
    assert isinstance(frame, str)
    await ws.send(frame)
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["status_updates"] == 1, WAIT)
    record = await get_job(facilitator.url, "never-submitted")
    assert record["state"] == "unknown" and record["statuses"] == ["failed"]
    assert record["status_updates"][0]["metadata"] == {"comment": "gone", "miner_response": None}
    quiet = await submit_job(facilitator.url)
    await _next_job(ws, session)
    with pytest.raises(TimeoutError):
        async for _ in stream_statuses(facilitator.url, quiet, 0.2):
            pass
    await ws.close()


async def _send_status(
    ws: ClientConnection, session: Session, job_uuid: str, status: JobStatus, comment: str
) -> None:
    frame = session.status_update(job_uuid, status, comment=comment, miner_response=None)
    assert isinstance(frame, str)
    await ws.send(frame)


async def test_repeated_final_statuses_are_counted_per_job(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    job_uuid = await submit_job(facilitator.url)
    await _next_job(ws, session)
    await _send_status(ws, session, job_uuid, JobStatus.ACCEPTED, "")
    await _send_status(ws, session, job_uuid, JobStatus.FAILED, "attempt 1")
    await _send_status(ws, session, job_uuid, JobStatus.FAILED, "attempt 1")  # a redelivered copy
    await _send_status(ws, session, job_uuid, JobStatus.COMPLETED, "attempt 2")  # a V2 retry
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["status_updates"] == 4, WAIT)
    record = await get_job(facilitator.url, job_uuid)
    assert record["statuses"] == ["accepted", "failed", "failed", "completed"]
    assert (record["finals"], record["duplicate_finals"], record["identical_finals"]) == (3, 2, 1)
    stats = await get_stats(facilitator.url)
    assert (stats["duplicate_finals"], stats["identical_finals"]) == (2, 1)
    await ws.close()


async def test_a_uuid_is_sent_once_unless_resent(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    job_uuid = await submit_job(facilitator.url, extra={"uuid": "0F4D3C1E-7B7A-4F0E-9B1C-2D3E4F5A6B7C"})
    assert job_uuid == "0f4d3c1e-7b7a-4f0e-9b1c-2d3e4f5a6b7c"  # recorded under the canonical form
    assert (await _next_job(ws, session)).uuid == "0F4D3C1E-7B7A-4F0E-9B1C-2D3E4F5A6B7C"  # sent as given
    for spelling in (job_uuid, job_uuid.upper()):
        with pytest.raises(FacilitatorClientError, match=r"HTTP 409: .*already submitted"):
            await submit_job(facilitator.url, extra={"uuid": spelling})
    other = await submit_job(facilitator.url)
    assert (await _next_job(ws, session)).uuid == other  # nothing else went out before it
    await _send_status(ws, session, job_uuid, JobStatus.REJECTED, "no")  # the validator's lower case
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["status_updates"] == 1, WAIT)
    assert (await get_job(facilitator.url, job_uuid.upper()))["statuses"] == ["rejected"]

    assert await resend_job(facilitator.url, job_uuid) == 2  # asked for: the same request again
    assert (await _next_job(ws, session)).uuid == "0F4D3C1E-7B7A-4F0E-9B1C-2D3E4F5A6B7C"
    stats = await get_stats(facilitator.url)
    assert (stats["jobs_sent"], stats["jobs_refused"], stats["jobs_resent"]) == (3, 2, 1)
    with pytest.raises(FacilitatorClientError, match="HTTP 404"):
        await resend_job(facilitator.url, "no-such-job")
    await ws.close()


def test_a_uuid_stays_refused_after_its_record_is_evicted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_module, "MAX_JOBS", 2)
    sim = sim_module.FacilitatorSim(keys.facilitator_keypair())
    first = sim.add_job(JobSpec(uuid="job-1")).uuid
    sim.add_job(JobSpec(uuid="job-2"))
    sim.add_job(JobSpec(uuid="job-3"))
    assert first not in sim.jobs  # evicted
    with pytest.raises(sim_module.DuplicateJob):
        sim.add_job(JobSpec(uuid=first))
    assert sim.counters["jobs_submitted"] == 3 and sim.counters["jobs_refused"] == 1


async def test_statuses_before_submission_stay_with_the_job(facilitator: RunningFacilitator) -> None:
    ws, session = await _authenticated(facilitator)
    job_uuid = "5a1b2c3d-0000-4000-8000-000000000001"
    await _send_status(ws, session, job_uuid, JobStatus.ACCEPTED, "")
    sim = facilitator.sim
    assert await sim.wait_until(lambda: sim.counters["status_updates"] == 1, WAIT)
    assert (await get_job(facilitator.url, job_uuid))["state"] == "unknown"
    assert await submit_job(facilitator.url, extra={"uuid": job_uuid}) == job_uuid  # not a repeat
    assert (await _next_job(ws, session)).uuid == job_uuid
    record = await get_job(facilitator.url, job_uuid)
    assert (record["state"], record["statuses"]) == ("sent", ["accepted"])
    await ws.close()


# ------------------------------------------------------------------------------ reconnects


async def test_jobs_wait_for_a_validator_and_survive_reconnects(facilitator: RunningFacilitator) -> None:
    sim = facilitator.sim
    early = await submit_job(facilitator.url)
    assert (await get_job(facilitator.url, early))["state"] == "queued"
    ws, session = await _authenticated(facilitator)
    assert (await _next_job(ws, session)).uuid == early
    await ws.close()
    assert await sim.wait_until(lambda: not sim.links, WAIT)

    while_away = await submit_job(facilitator.url, version="V1", miner_hotkey=keys.miner_hotkey(1))
    assert (await get_job(facilitator.url, while_away))["state"] == "queued"
    ws, session = await _authenticated(facilitator)  # a new connection, a new session
    assert (await _next_job(ws, session)).uuid == while_away
    stats = sim.stats()
    assert stats["connections"] == 2 and stats["auth_ok"] == 2 and stats["queued"] == 0
    await ws.close()


async def test_jobs_can_be_dropped_while_no_validator_is_connected() -> None:
    async with running_facilitator(hold_when_disconnected=False) as rf:
        dropped = await submit_job(rf.url)
        assert (await get_job(rf.url, dropped))["state"] == "dropped"
        ws, session = await _authenticated(rf)
        kept = await submit_job(rf.url)
        assert (await _next_job(ws, session)).uuid == kept
        await ws.close()


async def test_jobs_pinned_to_a_validator_go_only_to_it(facilitator: RunningFacilitator) -> None:
    ws0, _session0 = await _authenticated(facilitator, 0)
    pinned = await submit_job(facilitator.url, validator_hotkey=keys.validator_hotkey(1))
    assert (await get_job(facilitator.url, pinned))["state"] == "queued"
    ws1, session1 = await _authenticated(facilitator, 1)
    assert (await _next_job(ws1, session1)).uuid == pinned
    await ws0.close()
    await ws1.close()


# ------------------------------------------------------------------------- feeds and the CLI


async def test_a_jobs_file_is_fed_in_order(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"version": "V0", "uuid": "job-a", "miner_hotkey": keys.miner_hotkey(0)},
        {"version": "V2", "uuid": "job-b", "executor_class": "always_on.gpu-24gb"},
    ]
    path.write_text("# organic jobs\n" + "\n\n".join(json.dumps(line) for line in lines) + "\n")
    async with running_facilitator(jobs=read_jobs_file(path)) as rf:
        assert await rf.sim.wait_until(lambda: len(rf.sim.jobs) == 2, WAIT)
        ws, session = await _authenticated(rf)
        assert [(await _next_job(ws, session)).uuid for _ in range(2)] == ["job-a", "job-b"]
        await ws.close()


def test_a_bad_jobs_file_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"version": "V0"}\n{"version": "V9"}\n')
    with pytest.raises(ValueError, match=r"jobs\.jsonl:2"):
        read_jobs_file(path)


async def test_an_invalid_job_is_refused_over_http(facilitator: RunningFacilitator) -> None:
    async with httpx.AsyncClient(base_url=facilitator.url) as http:
        answer = await http.post("/jobs", json={"version": "V0"})  # V0 needs a miner
        assert answer.status_code == 422 and "miner_hotkey" in answer.json()["message"]
        assert (await http.get("/jobs/nope")).status_code == 404


def test_the_cli_template_job() -> None:
    args = build_parser().parse_args(["--port", "0", "--rate", "2", "--version", "V1", "--arg", "x"])
    template = _template(args)
    assert isinstance(template, JobSpec)
    assert template.miner_hotkey == keys.miner_hotkey(0) and template.args == ["x"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--rate", "0"])


async def _get(rf: RunningFacilitator, path: str) -> Any:
    async with httpx.AsyncClient(base_url=rf.url) as http:
        answer = await http.get(path)
        answer.raise_for_status()
        return answer.json()
