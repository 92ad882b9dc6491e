"""The facilitator link against a real WebSocket facilitator and the real Postgres
(docs/organic.md §1 and "Facilitator gateway"): authentication, retries, reconnects, heartbeats,
job requests stored exactly once, invalid frames, and status updates only on an authenticated link.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobStatus
from horde_common.db.models.bus import OutboxMessage
from horde_common.db.models.organic import OrganicJob
from horde_common.protocol.facilitator import (
    V0AuthenticationRequest,
    V0JobRequest,
    V2JobRequest,
    sign_v2_request,
)
from horde_facilitator_gateway.link import FacilitatorLink, LinkConfig, LinkUnavailable
from horde_localnet import keys

pytestmark = pytest.mark.timeout(60)

FAST_RETRY_S = 0.05  # the backoff policy itself is unit-tested in horde_common; here it only slows tests


class Clock:
    """A clock the test moves forward, so a 60 s heartbeat period passes at once."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@asynccontextmanager
async def running_link(
    uri: str,
    sessions: async_sessionmaker[AsyncSession],
    *,
    signers: frozenset[str] = frozenset(),
    **config: Any,
) -> AsyncIterator[FacilitatorLink]:
    link_config = LinkConfig(
        uri=uri,
        signers=signers,
        headers={"X-Validator-Version": "test-1", "X-Validator-Runner-Version": "unknown"},
        retry_delay=lambda failures, rng: FAST_RETRY_S,
        **config,
    )
    link = FacilitatorLink(
        link_config, V0AuthenticationRequest.from_keypair(keys.validator_keypair(0)), sessions
    )
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        yield link
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await link.close()


def v0_request(job_uuid: str | None = None, **fields: Any) -> V0JobRequest:
    values: dict[str, Any] = {
        "uuid": job_uuid or str(uuid.uuid4()),
        "miner_hotkey": keys.miner_keypair(0).ss58_address,
        "executor_class": "always_on.gpu-24gb",
        "docker_image": "backenddevelopersltd/compute-horde-job-echo:v0-latest",
        "raw_script": "",
        "args": ["hello"],
        "env": {},
        "use_gpu": False,
        "input_url": "",
        "output_url": "",
    }
    return V0JobRequest(**(values | fields))


def v2_request(job_uuid: str) -> V2JobRequest:
    return V2JobRequest(
        uuid=job_uuid,
        executor_class="always_on.llm.a6000",
        docker_image="img",
        raw_script="",
        args=["--x"],
        env={},
        use_gpu=True,
    )


async def count_rows(sessions: async_sessionmaker[AsyncSession], job_uuid: str) -> tuple[int, int]:
    """(organic_jobs rows, organic.job.requested outbox rows) of this job."""
    async with sessions() as session:
        jobs = await session.scalar(
            select(func.count()).select_from(OrganicJob).where(OrganicJob.job_uuid == uuid.UUID(job_uuid))
        )
        outbox = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.routing_key == "organic.job.requested",
                OutboxMessage.body["job_uuid"].astext == job_uuid,
            )
        )
    return int(jobs or 0), int(outbox or 0)


async def test_authenticates_with_version_headers_and_sends_heartbeats(
    facilitator: Any, sessions: Any
) -> None:
    clock = Clock()
    async with running_link(facilitator.uri, sessions) as link:
        link.clock = clock
        await facilitator.eventually(lambda: link.authenticated, what="authentication")
        conn = facilitator.current
        assert conn.auth_valid
        assert conn.headers["X-Validator-Version"] == "test-1"
        assert conn.headers["X-Validator-Runner-Version"] == "unknown"
        assert facilitator.frames("V0Heartbeat") == []  # the first one is due a period after auth

        for expected in (1, 2):
            clock.offset += timedelta(seconds=61)
            link.check_timers()
            await facilitator.eventually(lambda n=expected: len(facilitator.frames("V0Heartbeat")) == n)
        assert facilitator.frames("V0Heartbeat")[0] == {"message_type": "V0Heartbeat"}
        assert link.debug_state()["heartbeats"] == 2


async def test_refused_authentication_is_retried_until_accepted(facilitator: Any, sessions: Any) -> None:
    facilitator.accept_auth = False
    async with running_link(facilitator.uri, sessions) as link:
        await facilitator.eventually(lambda: len(facilitator.connections) >= 3, what="three attempts")
        assert not link.authenticated
        state = link.debug_state()
        assert state["auth_failures"] >= 2
        assert "auth.validator_not_found" in state["last_error"]

        facilitator.accept_auth = True
        await facilitator.eventually(lambda: link.authenticated, what="authentication")
        assert link.debug_state()["state"] == "ready"


async def test_unreachable_facilitator_is_retried(facilitator: Any, sessions: Any) -> None:
    async with running_link("ws://127.0.0.1:9/ws/v0/", sessions, open_timeout_s=1.0) as link:
        await facilitator.eventually(lambda: link.stats.connect_attempts >= 3, what="three attempts")
        assert link.debug_state()["state"] in ("waiting", "connecting")
        assert link.stats.last_error


async def test_reconnects_after_the_facilitator_drops_the_link(facilitator: Any, sessions: Any) -> None:
    async with running_link(facilitator.uri, sessions) as link:
        await facilitator.eventually(lambda: len(facilitator.authenticated) == 1)
        await facilitator.drop()
        await facilitator.eventually(lambda: len(facilitator.authenticated) == 2, what="a second connection")
        await facilitator.eventually(lambda: link.authenticated)
        assert link.stats.ended_connections == 1


async def test_job_request_is_stored_and_published_once(facilitator: Any, sessions: Any) -> None:
    request = v0_request()
    async with running_link(facilitator.uri, sessions) as link:
        await facilitator.eventually(lambda: link.authenticated)
        await facilitator.send(request.model_dump_json())
        await facilitator.eventually(lambda: link.stats.jobs.get("stored") == 1, what="the job stored")
        await facilitator.send(request.model_dump_json())  # the facilitator sends it again
        await facilitator.eventually(lambda: link.stats.jobs.get("duplicate") == 1, what="the duplicate")
    assert await count_rows(sessions, request.uuid) == (1, 1)
    async with sessions() as session:
        row = await session.scalar(select(OrganicJob).where(OrganicJob.job_uuid == uuid.UUID(request.uuid)))
    assert row is not None
    assert (row.status, row.source, row.miner_hotkey) == ("PENDING", "facilitator", request.miner_hotkey)
    assert row.request is not None and row.request["docker_image"] == request.docker_image


async def test_v2_requests_need_a_whitelisted_signature(facilitator: Any, sessions: Any) -> None:
    signer = keys.validator_keypair(1)
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    signed = sign_v2_request(v2_request(good), signer, timestamp_ns=1_700_000_000_000_000_000)
    forged = sign_v2_request(v2_request(bad), keys.validator_keypair(2), timestamp_ns=1)
    async with running_link(facilitator.uri, sessions, signers=frozenset({signer.ss58_address})) as link:
        await facilitator.eventually(lambda: link.authenticated)
        await facilitator.send(forged.model_dump_json())
        await facilitator.send(signed.model_dump_json())
        await facilitator.eventually(lambda: link.stats.jobs.get("stored") == 1)
        assert link.stats.jobs.get("v2_rejected") == 1
        assert facilitator.frames("V0JobStatusUpdate") == []  # dropped silently (docs/organic.md §1.6)
    assert await count_rows(sessions, good) == (1, 1)
    assert await count_rows(sessions, bad) == (0, 0)


async def test_invalid_frames_are_counted_and_the_link_stays_up(facilitator: Any, sessions: Any) -> None:
    request = v0_request()
    extra_field = request.model_dump(mode="json") | {"surprise": 1}
    async with running_link(facilitator.uri, sessions) as link:
        await facilitator.eventually(lambda: link.authenticated)
        for frame in ("not json", {"message_type": "V9Nope"}, {"job_request": "invalid"}, extra_field):
            await facilitator.send(frame)
        await facilitator.send({"status": "error", "errors": [{"msg": "x", "type": "y"}]})  # logged only
        await facilitator.send(request.model_dump_json())
        await facilitator.eventually(lambda: link.stats.jobs.get("stored") == 1)
        assert link.stats.frames_invalid == 4
        assert len(facilitator.connections) == 1 and link.authenticated


async def test_status_update_is_sent_only_when_authenticated(facilitator: Any, sessions: Any) -> None:
    job = uuid.uuid4()
    facilitator.accept_auth = False
    async with running_link(facilitator.uri, sessions, status_wait_s=0.3) as link:
        accepted = OrganicJobStatus(job_uuid=job, status="accepted", comment="")
        with pytest.raises(LinkUnavailable):
            await link.send_status(accepted)
        assert facilitator.frames("V0JobStatusUpdate") == []

        facilitator.accept_auth = True
        await facilitator.eventually(lambda: link.authenticated)
        await link.send_status(accepted)
        response = {
            "job_uuid": str(job),
            "message_type": "V0JobFinishedRequest",
            "docker_process_stdout": "hi",
        }
        await link.send_status(
            OrganicJobStatus(job_uuid=job, status="completed", comment="ok", miner_response=response)
        )
    frames = facilitator.frames("V0JobStatusUpdate")
    assert [f["status"] for f in frames] == ["accepted", "completed"]
    assert frames[0] == {
        "message_type": "V0JobStatusUpdate",
        "uuid": str(job),
        "status": "accepted",
        "metadata": {"comment": "", "miner_response": None},
    }
    assert frames[1]["metadata"]["miner_response"] == {
        "job_uuid": str(job),
        "message_type": "V0JobFinishedRequest",
        "docker_process_stderr": "",
        "docker_process_stdout": "hi",
    }


async def test_a_stuck_update_holds_back_newer_updates_of_its_job_only(
    facilitator: Any, sessions: Any
) -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    facilitator.accept_auth = False
    async with running_link(facilitator.uri, sessions, status_wait_s=0.3) as link:
        first = OrganicJobStatus(job_uuid=job, status="accepted")
        second = OrganicJobStatus(job_uuid=job, status="completed")
        with pytest.raises(LinkUnavailable):
            await link.send_status(first)
        facilitator.accept_auth = True
        await facilitator.eventually(lambda: link.authenticated)
        with pytest.raises(LinkUnavailable, match="earlier update of this job"):
            await link.send_status(second)  # would overtake `first`, which is back on the bus
        await link.send_status(OrganicJobStatus(job_uuid=other, status="failed"))
        await link.send_status(first)  # the retry of `first` ...
        await link.send_status(second)  # ... unblocks its job
    assert [(f["uuid"], f["status"]) for f in facilitator.frames("V0JobStatusUpdate")] == [
        (str(other), "failed"),
        (str(job), "accepted"),
        (str(job), "completed"),
    ]


async def test_stop_interrupts_a_connect_that_hangs(facilitator: Any, sessions: Any) -> None:
    """A host that accepts TCP but never answers the upgrade holds a connect for `open_timeout_s`;
    the service's stop does not wait for it."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = LinkConfig(
        uri=f"ws://127.0.0.1:{port}/ws/v0/", signers=frozenset(), headers={}, open_timeout_s=30.0
    )
    link = FacilitatorLink(config, V0AuthenticationRequest.from_keypair(keys.validator_keypair(0)), sessions)
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        await facilitator.eventually(lambda: bool(accepted), what="the TCP connection")
        assert link.stats.state == "connecting"
        stop.set()
        await asyncio.wait_for(task, 2.0)  # far below the 30 s open timeout
        assert link.stats.state == "stopped"
    finally:
        task.cancel()
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()
