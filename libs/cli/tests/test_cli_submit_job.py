"""`horde localnet submit-job`'s status stream (`follow_statuses`) against the real facilitator
simulator, a validator session feeding it statuses: a V2 job is followed through its retries
(docs/organic.md, "Running organic jobs: V2 retries"), a V0 job ends at its first final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from horde_cli.submit_job import follow_statuses
from horde_common.protocol.facilitator import (
    Authenticated,
    FacilitatorSession,
    JobRequested,
    JobStatus,
    V0AuthenticationRequest,
)
from horde_localnet import keys
from horde_localnet.facilitator import RunningFacilitator, running_facilitator
from horde_localnet.facilitator.client import submit_job

WAIT = 10.0  # seconds any expected event may take on a loaded 2-core machine
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Validator:
    """An authenticated validator connection that answers the simulator's jobs with statuses."""

    def __init__(self, ws: ClientConnection, session: FacilitatorSession) -> None:
        self.ws, self.session = ws, session

    async def take_job(self) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        assert isinstance(frame, str)
        (event,) = self.session.receive(frame, NOW)
        assert isinstance(event, JobRequested), event

    async def send(self, job_uuid: str, *statuses: tuple[JobStatus, str]) -> None:
        for status, comment in statuses:
            frame = self.session.status_update(job_uuid, status, comment=comment, miner_response=None)
            assert isinstance(frame, str)
            await self.ws.send(frame)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[RunningFacilitator, Validator]]:
    async with running_facilitator() as rf:
        signers = frozenset({keys.facilitator_hotkey()})
        session = FacilitatorSession(V0AuthenticationRequest.from_keypair(keys.validator_keypair(0)), signers)
        async with connect(rf.ws_url) as ws:
            await ws.send(session.start(NOW))
            assert session.receive(str(await ws.recv()), NOW) == [Authenticated(NOW)]
            yield rf, Validator(ws, session)


class Seen:
    """What `follow_statuses` reported, and a way to wait for a status to be reported."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, str, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, update: dict[str, Any], attempt: int) -> None:
        self.updates.append((attempt, update["status"], update["metadata"]["comment"]))
        self.changed.set()

    async def reach(self, count: int) -> None:
        async def wait() -> None:
            while len(self.updates) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), WAIT)


async def test_a_v2_job_is_followed_through_a_failed_attempt(
    sim: tuple[RunningFacilitator, Validator],
) -> None:
    rf, validator = sim
    job_uuid = await submit_job(rf.url, version="V2")
    await validator.take_job()
    seen = Seen()
    follow = asyncio.create_task(follow_statuses(rf.url, job_uuid, version="V2", wait_s=WAIT, on_update=seen))
    await validator.send(job_uuid, (JobStatus.ACCEPTED, ""), (JobStatus.FAILED, "miner 1 failed"))
    await seen.reach(2)
    assert not follow.done()  # the first `failed` is not the job's end: a retry may follow
    await validator.send(job_uuid, (JobStatus.ACCEPTED, ""), (JobStatus.COMPLETED, "miner 2 finished"))
    assert await asyncio.wait_for(follow, WAIT) == ("completed", False)
    assert seen.updates == [
        (1, "accepted", ""),
        (1, "failed", "miner 1 failed"),
        (2, "accepted", ""),
        (2, "completed", "miner 2 finished"),
    ]


async def test_a_v2_job_ends_after_its_last_attempt(sim: tuple[RunningFacilitator, Validator]) -> None:
    rf, validator = sim
    job_uuid = await submit_job(rf.url, version="V2")
    await validator.take_job()
    seen = Seen()
    follow = asyncio.create_task(
        follow_statuses(rf.url, job_uuid, version="V2", wait_s=WAIT, on_update=seen, attempts=2)
    )
    await validator.send(
        job_uuid, (JobStatus.REJECTED, "declined"), (JobStatus.ACCEPTED, ""), (JobStatus.FAILED, "x")
    )
    assert await asyncio.wait_for(follow, WAIT) == ("failed", False)
    assert [(a, s) for a, s, _ in seen.updates] == [(1, "rejected"), (2, "accepted"), (2, "failed")]


async def test_a_v2_failure_followed_by_silence_ends_the_job(
    sim: tuple[RunningFacilitator, Validator],
) -> None:
    rf, validator = sim
    job_uuid = await submit_job(rf.url, version="V2")
    await validator.take_job()
    seen = Seen()
    await validator.send(job_uuid, (JobStatus.ACCEPTED, ""), (JobStatus.FAILED, "only attempt"))
    result = await asyncio.wait_for(
        follow_statuses(rf.url, job_uuid, version="V2", wait_s=WAIT, on_update=seen, retry_quiet_s=0.5), WAIT
    )
    assert result == ("failed", True)
    assert [s for _, s, _ in seen.updates] == ["accepted", "failed"]


async def test_a_v0_job_ends_at_its_first_final_status(sim: tuple[RunningFacilitator, Validator]) -> None:
    rf, validator = sim
    job_uuid = await submit_job(rf.url, version="V0", miner_hotkey=keys.miner_hotkey(0))
    await validator.take_job()
    seen = Seen()
    await validator.send(job_uuid, (JobStatus.ACCEPTED, ""), (JobStatus.FAILED, "broke"))
    result = await asyncio.wait_for(
        follow_statuses(rf.url, job_uuid, version="V0", wait_s=WAIT, on_update=seen, retry_quiet_s=WAIT * 10),
        WAIT,
    )
    assert result == ("failed", False)
    assert seen.updates == [(1, "accepted", ""), (1, "failed", "broke")]


async def test_no_final_status_in_time_is_a_timeout(sim: tuple[RunningFacilitator, Validator]) -> None:
    rf, validator = sim
    job_uuid = await submit_job(rf.url, version="V2")
    await validator.take_job()
    with pytest.raises(TimeoutError):
        await follow_statuses(rf.url, job_uuid, version="V2", wait_s=0.3, on_update=Seen())
