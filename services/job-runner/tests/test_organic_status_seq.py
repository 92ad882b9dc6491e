"""The per-job `seq` the job-runner stamps on each organic status (docs/organic.md, "Facilitator
gateway"): strictly increasing in the order the statuses are made, so the gateway can restore that
order whatever order the bus delivers them in. Real Postgres, simulated miners over real sockets;
the statuses are read from the outbox in the order they were staged.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobRequested, OrganicJobStatus
from horde_common.db.models import MinerManifest, SyntheticJobBatch
from horde_common.db.models.bus import OutboxMessage
from horde_common.db.models.chain import Neuron
from horde_common.db.models.organic import OrganicJob
from horde_job_runner.organic.handler import OrganicRuntime, run_organic_job
from horde_job_runner.organic.run import OrganicTimeouts
from horde_job_runner.organic.store import stage_accepted, status_seq
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
FAST = OrganicTimeouts(total_s=2.0, wait_s=2.0)
Sessions = async_sessionmaker[AsyncSession]
BLOCK = 1


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def fresh(sessions: Sessions) -> Sessions:
    """No V2 job and no manifest left by an earlier test: the round-robin starts from scratch."""
    async with sessions.begin() as session:
        await session.execute(delete(OrganicJob))
        await session.execute(delete(MinerManifest))
    return sessions


def runtime(sessions: Sessions) -> OrganicRuntime:
    return OrganicRuntime(sessions=sessions, keypair=VALIDATOR, timeouts=FAST, sleep=no_sleep)


async def add_miners(sessions: Sessions, fleet: MinerFleet, *, manifests: bool) -> None:
    async with sessions.begin() as session:
        for m in fleet.miners:
            await session.execute(
                pg_insert(Neuron)
                .values(block=BLOCK, uid=m.index, hotkey=m.hotkey, axon_ip="127.0.0.1", axon_port=m.port)
                .on_conflict_do_nothing()
            )
        if manifests:
            batch = SyntheticJobBatch()
            session.add(batch)
            await session.flush()
            online = {"executor_count": 1, "online_executor_count": 1}
            for hotkey in fleet.hotkeys:
                session.add(
                    MinerManifest(batch_id=batch.id, miner_hotkey=hotkey, executor_class=AO, **online)
                )


async def submit(sessions: Sessions, version: str, miner_hotkey: str = "") -> OrganicJobRequested:
    """What the gateway does: the PENDING row (attempt left at its default), then the message."""
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


async def staged(sessions: Sessions, job_uuid: uuid.UUID) -> list[OrganicJobStatus]:
    """The job's statuses as the bus will carry them, in the order they were staged."""
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage.body)
            .where(OutboxMessage.routing_key == OrganicJobStatus.ROUTING_KEY)
            .where(OutboxMessage.body["job_uuid"].astext == str(job_uuid))
            .order_by(OutboxMessage.id)
        )
        return [OrganicJobStatus.model_validate(body) for body in rows]


def test_the_rule() -> None:
    """accepted of attempt k is 2k-1, its outcome 2k; an attempt column never set counts as 1."""
    assert [status_seq(k, s) for k in (1, 2, 3) for s in ("accepted", "failed")] == [1, 2, 3, 4, 5, 6]
    assert status_seq(1, "completed") == status_seq(1, "rejected") == 2
    assert status_seq(0, "failed") == 2 and status_seq(0, "accepted") == 1


async def test_a_v2_retried_job_stamps_strictly_increasing_seqs(fresh: Sessions) -> None:
    sessions = fresh
    # One failing miner per attempt: a miner takes a job uuid once (the simulator ignores a repeat).
    failing = {i: "job_fail" for i in (370, 371, 372)}
    async with MinerFleet(3, executors={AO: 1}, behaviours=failing, first_index=370) as fleet:
        await add_miners(sessions, fleet, manifests=True)
        msg = await submit(sessions, "V2JobRequest")
        await run_organic_job(runtime(sessions), msg)
    got = await staged(sessions, msg.job_uuid)
    assert [(s.status, s.seq) for s in got] == [
        ("accepted", 1),
        ("failed", 2),
        ("accepted", 3),
        ("failed", 4),
        ("accepted", 5),
        ("failed", 6),
    ]
    seqs = [s.seq for s in got]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    async with sessions() as session:
        attempt = await session.scalar(select(OrganicJob.attempt).where(OrganicJob.job_uuid == msg.job_uuid))
    assert attempt == 3 and got[-1].seq == 2 * attempt


async def test_a_rejected_job_has_only_the_outcome_seq(sessions: Sessions) -> None:
    """No `accepted`: the gateway holds the rejection briefly for it, then sends it."""
    async with MinerFleet(1, executors={AO: 1}, behaviours={375: "decline"}, first_index=375) as fleet:
        await add_miners(sessions, fleet, manifests=False)
        miner = fleet.miners[0]
        msg = await submit(sessions, "V0JobRequest", miner.hotkey)
        await run_organic_job(runtime(sessions), msg)
    assert [(s.status, s.seq) for s in await staged(sessions, msg.job_uuid)] == [("rejected", 2)]


async def test_a_v2_job_without_candidates_reports_with_seq_2(fresh: Sessions) -> None:
    msg = await submit(fresh, "V2JobRequest")
    await run_organic_job(runtime(fresh), msg)
    assert [(s.status, s.seq) for s in await staged(fresh, msg.job_uuid)] == [("failed", 2)]


async def test_a_repeated_accepted_gets_the_same_seq(sessions: Sessions) -> None:
    """A resumed attempt that stages `accepted` again (the first one not seen in the outbox) stamps
    its attempt's number again, so the gateway drops whichever copy comes second."""
    msg = await submit(sessions, "V0JobRequest", "some-miner")
    for _ in range(2):
        async with sessions.begin() as session:
            assert await stage_accepted(session, msg.job_uuid)
    assert [(s.status, s.seq) for s in await staged(sessions, msg.job_uuid)] == [("accepted", 1)] * 2
