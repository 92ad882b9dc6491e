"""One frame per status message, whatever the bus redelivers (docs/organic.md, "Facilitator gateway"):
the whole gateway service against the real RabbitMQ and Postgres and the localnet facilitator
simulator, which counts the final statuses it receives per job.

* the same `organic.job.status` message published twice reaches the facilitator once;
* a message whose id is already in `facilitator_status_sent` (the state a gateway killed after the
  write and the record, before its ack, leaves behind) is acknowledged and not sent;
* an update older than a final status of its job already sent is acknowledged and not sent, and
  a final status waits in the queue for an older update of its job delivered with it;
* the organic jobs by status show in `/metrics` and `GET /debug/link`.

Waits are bounded polls of the broker's settlements (its settle listener), the simulator's records
and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from horde_common.bus import Broker
from horde_common.bus.messages import OrganicJobStatus
from horde_common.config import load_settings
from horde_common.db import migrate
from horde_common.db.models.enums import JobStatus
from horde_common.db.models.facilitator import FacilitatorStatusSent
from horde_common.db.models.organic import OrganicJob
from horde_common.service import Dependency, ServiceContext, ServiceRunner
from horde_common.telemetry import configure_metrics
from horde_facilitator_gateway import app
from horde_facilitator_gateway.ledger import STATUS_SENT_KEEP, prune_status_sent
from horde_facilitator_gateway.link import FacilitatorLink, facilitator_link
from horde_facilitator_gateway.outbound import StatusQueue
from horde_localnet import keys
from horde_localnet.facilitator import RunningFacilitator, running_facilitator
from horde_localnet.facilitator.client import get_job, get_stats, submit_job

pytestmark = pytest.mark.timeout(90)

TOKEN = "test-debug-token"
START_S = 20.0
STOP_S = 30.0
WAIT_S = 15.0
"""Every wait here ends in well under a second when the code works; this only bounds a failure."""
POLL_S = 0.02
STATUS_QUEUE = "facilitator-gateway.organic.job.status"


@contextlib.asynccontextmanager
async def fast_link(ctx: ServiceContext) -> AsyncIterator[FacilitatorLink]:
    async with facilitator_link(ctx) as link:
        link.config.retry_delay = lambda failures, rng: 0.05
        yield link


@dataclasses.dataclass
class Gateway:
    runner: ServiceRunner
    facilitator: RunningFacilitator
    settled: list[tuple[str | None, str]]  # (AMQP message id, outcome) of each status delivery

    @property
    def link(self) -> FacilitatorLink:
        return self.runner.ctx.dependency(FacilitatorLink)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.runner.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5.0,
        )

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail after `WAIT_S` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
            await asyncio.sleep(POLL_S)

    def outcomes(self, message_id: uuid.UUID) -> list[str]:
        return [outcome for mid, outcome in self.settled if mid == str(message_id)]


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, amqp_url: str) -> AsyncIterator[Gateway]:
    configure_metrics("facilitator-gateway")  # as run_service does before the runner starts
    async with running_facilitator() as facilitator:
        settings = load_settings(
            DATABASE_URL=database_url,
            AMQP_URL=amqp_url,
            DEBUG_TOKEN=TOKEN,
            SERVICE_HOST="127.0.0.1",
            FACILITATOR_URI=facilitator.ws_url,
            FACILITATOR_V2_SIGNERS=keys.facilitator_keypair().ss58_address,
        )
        spec = dataclasses.replace(app.SPEC, port=0, dependencies=[Dependency(FacilitatorLink, fast_link)])
        runner = ServiceRunner(spec, settings, hotkey=keys.validator_keypair(0))
        task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(runner.ready.wait(), START_S)
            assert runner.ctx.broker is not None
            gateway = Gateway(runner, facilitator, [])
            runner.ctx.broker.settle_listeners.append(
                lambda queue, mid, outcome: (
                    gateway.settled.append((mid, outcome)) if queue == STATUS_QUEUE else None
                )
            )
            await gateway.until(lambda: gateway.link.authenticated, "the link")
            yield gateway
        finally:
            runner.request_stop()
            await asyncio.wait_for(task, STOP_S)


async def publish(amqp_url: str, *messages: OrganicJobStatus) -> None:
    """Publish as the job-runner does (persistent, confirmed), each message as often as listed."""
    publisher = Broker(amqp_url, service="job-runner")
    await publisher.connect()
    try:
        for message in messages:
            await publisher.publish(message)
    finally:
        await publisher.stop(grace_s=1.0)


async def stored_job(gateway: Gateway, job_uuid: str) -> None:
    """Wait (bounded) for the gateway's `organic_jobs` row of a job the simulator sent."""

    async def row() -> OrganicJob | None:
        async with gateway.runner.ctx.sessions() as session:
            return await session.scalar(select(OrganicJob).where(OrganicJob.job_uuid == uuid.UUID(job_uuid)))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await row() is None:
        if loop.time() > deadline:
            raise AssertionError(f"job {job_uuid} was not stored within {WAIT_S} s")
        await asyncio.sleep(POLL_S)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with these labels in a Prometheus scrape (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return 0.0


async def test_the_same_message_twice_reaches_the_facilitator_once(database_url: str, amqp_url: str) -> None:
    async with running_gateway(database_url, amqp_url) as gateway:
        facilitator = gateway.facilitator
        job = await submit_job(facilitator.url, version="V0", miner_hotkey=keys.miner_hotkey(0))
        accepted = OrganicJobStatus(job_uuid=uuid.UUID(job), status="accepted", comment="")
        completed = OrganicJobStatus(job_uuid=uuid.UUID(job), status="completed", comment="done")
        # One job's updates are made seconds apart: the bus orders nothing between concurrent
        # deliveries (an overtaken older update would be dropped as stale, see below).
        await publish(amqp_url, accepted, accepted)
        await gateway.until(lambda: len(gateway.outcomes(accepted.message_id)) == 2, "both accepted settled")
        await publish(amqp_url, completed, completed)
        await gateway.until(
            lambda: len(gateway.outcomes(completed.message_id)) == 2, "both completed settled"
        )
        record = await get_job(facilitator.url, job)
        stats = await get_stats(facilitator.url)
        async with gateway.runner.ctx.sessions() as session:
            ledger = (
                await session.scalars(
                    select(FacilitatorStatusSent.message_id).where(
                        FacilitatorStatusSent.job_uuid == uuid.UUID(job)
                    )
                )
            ).all()
    assert record["statuses"] == ["accepted", "completed"]
    assert (record["finals"], record["duplicate_finals"]) == (1, 0)
    assert stats["duplicate_finals"] == 0
    for message in (accepted, completed):  # one copy handled, the other acknowledged as a duplicate
        assert sorted(gateway.outcomes(message.message_id)) == ["duplicate", "processed"]
    assert set(ledger) == {accepted.message_id, completed.message_id}


async def test_a_message_already_in_the_ledger_is_acked_and_not_sent(
    database_url: str, amqp_url: str
) -> None:
    """The state a gateway killed after writing and recording a frame, before its ack, leaves: the
    ledger row is committed, the consumer's idempotency row is not, the message comes again."""
    job, other = uuid.uuid4(), uuid.uuid4()
    sent_before = OrganicJobStatus(job_uuid=job, status="completed", comment="done")
    fresh = OrganicJobStatus(job_uuid=other, status="rejected", comment="declined")
    async with running_gateway(database_url, amqp_url) as gateway:
        async with gateway.runner.ctx.sessions() as session, session.begin():
            session.add(
                FacilitatorStatusSent(
                    message_id=sent_before.message_id,
                    job_uuid=job,
                    status="completed",
                    message_sent_at=sent_before.sent_at,
                )
            )
        async with gateway.http() as http:
            before = sample(
                (await http.get("/metrics")).text,
                "horde_facilitator_status_updates_total",
                status="completed",
                outcome="duplicate",
            )
            await publish(amqp_url, sent_before, fresh)
            sim = gateway.facilitator.sim
            await gateway.until(
                lambda: (
                    bool(gateway.outcomes(sent_before.message_id))
                    and bool(gateway.outcomes(fresh.message_id))
                ),
                "the recorded message settled and the fresh one sent",
            )
            after = sample(
                (await http.get("/metrics")).text,
                "horde_facilitator_status_updates_total",
                status="completed",
                outcome="duplicate",
            )
            view = (await http.get("/debug/link")).json()
    assert gateway.outcomes(sent_before.message_id) == ["processed"]  # acknowledged
    assert sim.job(str(job)) is None  # never reached the facilitator
    assert [s["status"] for s in sim.job(str(other)).statuses] == ["rejected"]  # type: ignore[union-attr]
    assert after - before == 1
    assert view["status"] == {"duplicate": 1, "sent": 1}


async def test_an_update_older_than_a_sent_final_is_not_sent(database_url: str, amqp_url: str) -> None:
    """Deliveries overtaking each other: the job's `completed` went out, then its older `accepted`
    arrives. Sending it would move the facilitator's view of the job back from final."""
    job = uuid.uuid4()
    accepted = OrganicJobStatus(job_uuid=job, status="accepted", comment="")
    completed = OrganicJobStatus(job_uuid=job, status="completed", comment="done")
    assert accepted.sent_at < completed.sent_at
    async with running_gateway(database_url, amqp_url) as gateway:
        sim = gateway.facilitator.sim
        await publish(amqp_url, completed)
        await gateway.until(lambda: bool(gateway.outcomes(completed.message_id)), "completed settled")
        async with gateway.http() as http:
            before = sample(
                (await http.get("/metrics")).text,
                "horde_facilitator_status_updates_total",
                status="accepted",
                outcome="stale",
            )
            await publish(amqp_url, accepted)
            await gateway.until(lambda: bool(gateway.outcomes(accepted.message_id)), "accepted settled")
            after = sample(
                (await http.get("/metrics")).text,
                "horde_facilitator_status_updates_total",
                status="accepted",
                outcome="stale",
            )
            view = (await http.get("/debug/link")).json()
    assert gateway.outcomes(accepted.message_id) == ["processed"]  # acknowledged
    assert [s["status"] for s in sim.job(str(job)).statuses] == ["completed"]  # type: ignore[union-attr]
    assert after - before == 1
    assert view["status"] == {"sent": 1, "stale": 1}


@pytest.fixture()
def own_database_url(make_database: Callable[[], str]) -> str:
    """A database of this test alone, so the job counts are exactly what it made."""
    url = make_database()
    migrate.upgrade(url)
    return url


async def test_jobs_by_status_show_in_metrics_and_the_debug_view(
    own_database_url: str, amqp_url: str
) -> None:
    async with running_gateway(own_database_url, amqp_url) as gateway:
        url = gateway.facilitator.url
        jobs = [await submit_job(url, version="V0", miner_hotkey=keys.miner_hotkey(i)) for i in range(3)]
        for job in jobs:
            await stored_job(gateway, job)
        async with gateway.runner.ctx.sessions() as session, session.begin():  # as the job-runner would
            await session.execute(
                update(OrganicJob).where(OrganicJob.job_uuid == uuid.UUID(jobs[0])).values(status="COMPLETED")
            )
        async with gateway.http() as http:
            view: dict[str, Any] = (await http.get("/debug/link")).json()
            metrics = (await http.get("/metrics")).text
    expected = {status.value: 0 for status in JobStatus} | {"PENDING": 2, "COMPLETED": 1}
    assert view["jobs_by_status"] == expected
    gauge = "horde_facilitator_jobs_by_status"
    assert {s: sample(metrics, gauge, status=s) for s in expected} == expected


async def test_the_queue_drops_an_update_older_than_a_written_final() -> None:
    """The in-process half of the stale rule, for deliveries handled concurrently: the ledger check
    of the older update may have run before the final was recorded."""
    queue = StatusQueue()
    job = uuid.uuid4()
    accepted = OrganicJobStatus(job_uuid=job, status="accepted", comment="")
    failed = OrganicJobStatus(job_uuid=job, status="failed", comment="attempt 1")
    retry = OrganicJobStatus(job_uuid=job, status="accepted", comment="")  # the next V2 attempt
    assert accepted.sent_at < failed.sent_at < retry.sent_at

    sending = asyncio.create_task(queue.submit(failed, WAIT_S, WAIT_S))
    written = await asyncio.wait_for(queue.next(), WAIT_S)
    queue.written(written)
    assert await sending is True
    assert await queue.submit(accepted, WAIT_S, WAIT_S) is False  # made before the final: stale
    sending = asyncio.create_task(queue.submit(retry, WAIT_S, WAIT_S))  # made after it: sent
    written = await asyncio.wait_for(queue.next(), WAIT_S)
    assert written.message_id == retry.message_id
    queue.written(written)
    assert await sending is True


async def test_a_final_status_is_held_for_an_older_update_delivered_with_it() -> None:
    """A job that ends at once: its `accepted` and `completed` are delivered together and the final
    may reach the queue first. It is held, so the older update still goes out before it; once the
    `accepted` was written the final goes at once, without waiting out the hold."""
    queue = StatusQueue(hold_s=60.0)  # the test, not the clock, decides when the older arrives
    job = uuid.uuid4()
    accepted = OrganicJobStatus(job_uuid=job, status="accepted", comment="")
    completed = OrganicJobStatus(job_uuid=job, status="completed", comment="done")
    final = asyncio.create_task(queue.submit(completed, 120.0, WAIT_S))
    drainer = asyncio.create_task(queue.next())
    await asyncio.sleep(0)  # one turn of the loop (no timed wait): both tasks reach their awaits
    await asyncio.sleep(0)
    assert len(queue) == 1 and not drainer.done()  # the final is queued but held
    older = asyncio.create_task(queue.submit(accepted, WAIT_S, WAIT_S))
    first = await asyncio.wait_for(drainer, WAIT_S)
    assert first.message_id == accepted.message_id
    queue.written(first)
    assert await older is True
    second = await asyncio.wait_for(queue.next(), WAIT_S)  # far less than the 60 s hold
    assert second.message_id == completed.message_id
    queue.written(second)
    assert await final is True


async def test_a_held_final_status_holds_back_only_its_own_job() -> None:
    """While one job's final waits for its `accepted`, other jobs' updates are written; a final of
    a job whose `accepted` was already written is not held at all."""
    queue = StatusQueue(hold_s=60.0)
    held_job, other_job = uuid.uuid4(), uuid.uuid4()
    held = OrganicJobStatus(job_uuid=held_job, status="failed", comment="declined")
    other_accepted = OrganicJobStatus(job_uuid=other_job, status="accepted", comment="")
    other_completed = OrganicJobStatus(job_uuid=other_job, status="completed", comment="done")
    assert held.sent_at < other_accepted.sent_at  # the held one is the oldest in the queue
    held_task = asyncio.create_task(queue.submit(held, 120.0, WAIT_S))
    tasks = [asyncio.create_task(queue.submit(m, WAIT_S, WAIT_S)) for m in (other_accepted, other_completed)]
    for expected in (other_accepted, other_completed):
        update = await asyncio.wait_for(queue.next(), WAIT_S)
        assert update.message_id == expected.message_id
        queue.written(update)
    assert [await t for t in tasks] == [True, True]
    assert len(queue) == 1 and not held_task.done()  # still held: no `accepted` of its job came
    held_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held_task


async def test_ledger_rows_are_pruned_after_a_week(sessions: Any) -> None:
    now = datetime.now(UTC)
    old, recent = uuid.uuid4(), uuid.uuid4()
    async with sessions() as session, session.begin():
        for message_id, age in ((old, STATUS_SENT_KEEP + timedelta(hours=1)), (recent, timedelta(days=1))):
            session.add(
                FacilitatorStatusSent(
                    message_id=message_id,
                    job_uuid=uuid.uuid4(),
                    status="completed",
                    message_sent_at=now - age,
                    sent_at=now - age,
                )
            )
    async with sessions() as session, session.begin():
        deleted = await prune_status_sent(session, now)
    async with sessions() as session:
        left = set(
            (
                await session.scalars(
                    select(FacilitatorStatusSent.message_id).where(
                        FacilitatorStatusSent.message_id.in_([old, recent])
                    )
                )
            ).all()
        )
    assert deleted["facilitator_status_sent"] >= 1
    assert left == {recent}
