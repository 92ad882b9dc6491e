"""The job-runner wakes its outbox relay after each committed organic status (docs/organic.md,
"Running organic jobs: latency"): the statuses are written outside the handler's transaction, so
without the kick they would wait for the relay's next poll. Real Postgres, a simulated miner over a
real socket; the kick is counted, and each kick must find its status already in the outbox.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobRequested, OrganicJobStatus
from horde_common.db.models import MinerManifest
from horde_common.db.models.bus import OutboxMessage
from horde_common.db.models.chain import Neuron
from horde_common.db.models.organic import OrganicJob
from horde_job_runner.organic.handler import OrganicRuntime, StatusNote, run_organic_job
from horde_job_runner.organic.run import OrganicTimeouts
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
FAST = OrganicTimeouts(total_s=5.0, wait_s=5.0)
Sessions = async_sessionmaker[AsyncSession]


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


async def submit(sessions: Sessions, version: str, miner_hotkey: str = "") -> OrganicJobRequested:
    """What the gateway does: the PENDING row, then the message."""
    job_uuid = uuid.uuid4()
    body: dict[str, Any] = {"type": "job.new", "uuid": str(job_uuid), "executor_class": AO}
    body |= {"docker_image": "img", "raw_script": "print('hello')", "args": [], "env": {}, "use_gpu": False}
    body |= {"message_type": version, "volume": None, "output_upload": None}
    if version == "V2JobRequest":
        body["signature"] = None
    else:
        body |= {"miner_hotkey": miner_hotkey}
    async with sessions.begin() as session:
        row = {"miner_hotkey": miner_hotkey, "executor_class": AO, "status": "PENDING", "request": body}
        session.add(OrganicJob(job_uuid=job_uuid, job_description="User job from facilitator", **row))
    return OrganicJobRequested(job_uuid=job_uuid, miner_hotkey=miner_hotkey, executor_class=AO, request=body)


async def staged_count(sessions: Sessions, job_uuid: uuid.UUID) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.routing_key == OrganicJobStatus.ROUTING_KEY)
            .where(OutboxMessage.body["job_uuid"].astext == str(job_uuid))
        )
    return int(count or 0)


class Kicks:
    """Counts kicks; `on_status` runs right after each kick, so the count there must match."""

    def __init__(self) -> None:
        self.count = 0
        self.at_status: list[tuple[str, int]] = []

    def kick(self) -> None:
        self.count += 1

    def on_status(self, note: StatusNote) -> None:
        self.at_status.append((note.status, self.count))


def runtime(sessions: Sessions, kicks: Kicks, *, publish: bool = True) -> OrganicRuntime:
    return OrganicRuntime(
        sessions=sessions,
        keypair=VALIDATOR,
        timeouts=FAST,
        sleep=no_sleep,
        kick=kicks.kick,
        on_status=kicks.on_status,
        publish_statuses=publish,
    )


async def run_on_one_miner(sessions: Sessions, kicks: Kicks, index: int, *, publish: bool) -> uuid.UUID:
    async with MinerFleet(1, executors={AO: 1}, first_index=index) as fleet:
        miner = fleet.miners[0]
        async with sessions.begin() as session:
            await session.execute(
                pg_insert(Neuron)
                .values(
                    block=1, uid=miner.index, hotkey=miner.hotkey, axon_ip="127.0.0.1", axon_port=miner.port
                )
                .on_conflict_do_nothing()
            )
        msg = await submit(sessions, "V0JobRequest", miner.hotkey)
        await run_organic_job(runtime(sessions, kicks, publish=publish), msg)
    return msg.job_uuid


async def test_each_published_status_kicks_the_relay_after_its_commit(sessions: Sessions) -> None:
    kicks = Kicks()
    job_uuid = await run_on_one_miner(sessions, kicks, 380, publish=True)
    assert kicks.at_status == [("accepted", 1), ("completed", 2)]
    assert await staged_count(sessions, job_uuid) == kicks.count == 2


async def test_statuses_kept_off_the_bus_do_not_kick(sessions: Sessions) -> None:
    """The CLI's jobs (`publish_statuses=False`) stage nothing, so there is nothing to relay."""
    kicks = Kicks()
    job_uuid = await run_on_one_miner(sessions, kicks, 381, publish=False)
    assert [status for status, _ in kicks.at_status] == ["accepted", "completed"]
    assert kicks.count == 0 and await staged_count(sessions, job_uuid) == 0


async def test_a_job_that_never_reaches_a_miner_kicks_once(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await session.execute(delete(MinerManifest))  # no V2 candidate
    kicks = Kicks()
    msg = await submit(sessions, "V2JobRequest")
    await run_organic_job(runtime(sessions, kicks), msg)
    assert kicks.at_status == [("failed", 1)]
    assert await staged_count(sessions, msg.job_uuid) == 1
