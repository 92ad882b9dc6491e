"""The gateway service against the localnet facilitator simulator (`horde_localnet.facilitator`):
jobs submitted over its HTTP API become `organic_jobs` rows (V2 signed by the simulator's key, which
the gateway whitelists), and status updates published on the bus reach the simulator in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from horde_common.bus import Broker
from horde_common.bus.messages import OrganicJobStatus
from horde_common.config import load_settings
from horde_common.db.models.organic import OrganicJob
from horde_common.service import Dependency, ServiceContext, ServiceRunner
from horde_facilitator_gateway import app
from horde_facilitator_gateway.link import FacilitatorLink, facilitator_link
from horde_localnet import keys
from horde_localnet.facilitator import running_facilitator
from horde_localnet.facilitator.client import stream_statuses, submit_job

pytestmark = pytest.mark.timeout(90)

START_S = 20.0
STOP_S = 30.0
STATUS_WAIT_S = 15.0


@contextlib.asynccontextmanager
async def fast_link(ctx: ServiceContext) -> AsyncIterator[FacilitatorLink]:
    async with facilitator_link(ctx) as link:
        link.config.retry_delay = lambda failures, rng: 0.05
        yield link


@contextlib.asynccontextmanager
async def gateway(database_url: str, amqp_url: str, uri: str) -> AsyncIterator[ServiceRunner]:
    settings = load_settings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        SERVICE_HOST="127.0.0.1",
        FACILITATOR_URI=uri,
        FACILITATOR_V2_SIGNERS=keys.facilitator_keypair().ss58_address,
    )
    spec = dataclasses.replace(app.SPEC, port=0, dependencies=[Dependency(FacilitatorLink, fast_link)])
    runner = ServiceRunner(spec, settings, hotkey=keys.validator_keypair(0))
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), START_S)
        yield runner
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, STOP_S)


async def stored_row(runner: ServiceRunner, job_uuid: str) -> OrganicJob:
    """The job's `organic_jobs` row, polled for (bounded) since it is written after the frame."""
    link = runner.ctx.dependency(FacilitatorLink)
    async with asyncio.timeout(STATUS_WAIT_S):
        while True:
            async with runner.ctx.sessions() as session:
                row = await session.scalar(
                    select(OrganicJob).where(OrganicJob.job_uuid == uuid.UUID(job_uuid))
                )
            if row is not None:
                return row
            await asyncio.sleep(0.05)  # bounded poll on the database, not synchronisation
            assert link.stats.jobs.get("store_failed") is None


async def test_jobs_and_statuses_round_trip(database_url: str, amqp_url: str) -> None:
    async with (
        running_facilitator() as facilitator,
        gateway(database_url, amqp_url, facilitator.ws_url) as runner,
    ):
        v2 = await submit_job(facilitator.url, version="V2", executor_class="always_on.llm.a6000")
        miner = keys.miner_keypair(3).ss58_address
        v0 = await submit_job(facilitator.url, version="V0", miner_hotkey=miner)
        assert (await stored_row(runner, v2)).miner_hotkey == ""
        assert (await stored_row(runner, v0)).miner_hotkey == miner

        publisher = Broker(amqp_url, service="job-runner")
        await publisher.connect()
        try:
            await publisher.publish(OrganicJobStatus(job_uuid=uuid.UUID(v2), status="accepted", comment=""))
            # The next update only once this one arrived, as on a real job (minutes apart): the bus
            # does not order concurrent deliveries, and an overtaken `accepted` would be dropped as
            # stale (docs/organic.md, "Facilitator gateway").
            sim = facilitator.sim
            assert await sim.wait_until(lambda: bool(getattr(sim.job(v2), "statuses", None)), STATUS_WAIT_S)
            response: dict[str, Any] = {"message_type": "V0JobFinishedRequest", "docker_process_stdout": "ok"}
            await publisher.publish(
                OrganicJobStatus(
                    job_uuid=uuid.UUID(v2), status="completed", comment="done", miner_response=response
                )
            )
        finally:
            await publisher.stop(grace_s=1.0)
        seen = [update async for update in stream_statuses(facilitator.url, v2, STATUS_WAIT_S)]
    assert [update["status"] for update in seen] == ["accepted", "completed"]
    assert seen[1]["metadata"]["miner_response"]["docker_process_stdout"] == "ok"
