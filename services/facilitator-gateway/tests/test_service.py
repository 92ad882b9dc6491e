"""The whole gateway service (its `SPEC`, run by the service runner) against the real RabbitMQ,
Postgres and a WebSocket facilitator: readiness does not depend on the link, `/debug/link` and the
metrics report it, a job request reaches the job-runner's queue, and status updates published while
the link is down reach the facilitator in order once it is up (docs/organic.md, "Facilitator gateway").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from horde_common.bus import Broker
from horde_common.bus.messages import OrganicJobStatus
from horde_common.config import load_settings
from horde_common.service import Dependency, ServiceContext, ServiceRunner
from horde_common.telemetry import configure_metrics
from horde_facilitator_gateway import app
from horde_facilitator_gateway.link import FacilitatorLink, facilitator_link
from horde_localnet import keys

pytestmark = pytest.mark.timeout(90)

TOKEN = "test-debug-token"
START_S = 20.0
STOP_S = 30.0
JOB_RUNNER_QUEUE = "job-runner.organic.job.requested"


@contextlib.asynccontextmanager
async def fast_link(ctx: ServiceContext) -> AsyncIterator[FacilitatorLink]:
    """The service's own link, with reconnects not slowed by the production backoff and a status
    wait long enough for a test to bring the facilitator up while updates wait."""
    async with facilitator_link(ctx) as link:
        link.config.retry_delay = lambda failures, rng: 0.05
        link.config.status_wait_s = 30.0
        yield link


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, amqp_url: str, uri: str) -> AsyncIterator[ServiceRunner]:
    settings = load_settings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        DEBUG_TOKEN=TOKEN,
        SERVICE_HOST="127.0.0.1",
        FACILITATOR_URI=uri,
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


def client(runner: ServiceRunner) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{runner.port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5.0
    )


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, from a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return None


async def test_ready_while_the_link_is_refused_and_reports_it(
    database_url: str, amqp_url: str, facilitator: Any
) -> None:
    configure_metrics("facilitator-gateway")  # as run_service does before the runner starts
    facilitator.accept_auth = False
    async with running_gateway(database_url, amqp_url, facilitator.uri) as runner, client(runner) as http:
        await facilitator.eventually(lambda: len(facilitator.connections) >= 2, what="retries")
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        view = (await http.get("/debug/link")).json()
        assert view["authenticated"] is False
        assert view["auth_failures"] >= 1
        metrics = (await http.get("/metrics")).text
        assert (sample(metrics, "horde_facilitator_link_connects_total", outcome="auth_failed") or 0) >= 1

        facilitator.accept_auth = True
        await facilitator.eventually(lambda: bool(facilitator.authenticated), what="authentication")
        link = runner.ctx.dependency(FacilitatorLink)
        await facilitator.eventually(lambda: link.authenticated)
        assert (await http.get("/debug/link")).json()["state"] == "ready"


async def test_job_request_reaches_the_job_runner_queue(
    database_url: str, amqp_url: str, facilitator: Any
) -> None:
    job_uuid = str(uuid.uuid4())
    request = {
        "message_type": "V1JobRequest",
        "type": "job.new",
        "uuid": job_uuid,
        "miner_hotkey": keys.miner_keypair(1).ss58_address,
        "executor_class": "spin_up-4min.gpu-24gb",
        "docker_image": "img",
        "raw_script": "",
        "args": [],
        "env": {"A": "b"},
        "use_gpu": True,
        "volume": None,
        "output_upload": None,
    }
    async with running_gateway(database_url, amqp_url, facilitator.uri) as runner:
        link = runner.ctx.dependency(FacilitatorLink)
        await facilitator.eventually(lambda: link.authenticated)
        await facilitator.send(request)
        body = await _next_body_for(amqp_url, job_uuid)
    assert body["type"] == "organic.job.requested"
    assert body["miner_hotkey"] == request["miner_hotkey"]
    assert body["executor_class"] == "spin_up-4min.gpu-24gb"
    assert body["request"]["env"] == {"A": "b"}


async def _next_body_for(amqp_url: str, job_uuid: str) -> dict[str, Any]:
    """The `organic.job.requested` body of this job from the job-runner's queue (bounded wait)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(JOB_RUNNER_QUEUE, ensure=True)
        async with asyncio.timeout(20):
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    body: dict[str, Any] = json.loads(message.body)
                    if body.get("job_uuid") == job_uuid:
                        return body
    finally:
        await connection.close()
    raise AssertionError("unreachable")


async def test_updates_published_while_down_drain_in_order(
    database_url: str, amqp_url: str, facilitator: Any
) -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    updates = [
        OrganicJobStatus(job_uuid=job, status="accepted", comment=""),
        OrganicJobStatus(job_uuid=other, status="rejected", comment="declined"),
        OrganicJobStatus(job_uuid=job, status="completed", comment="done"),
    ]
    facilitator.accept_auth = False
    async with running_gateway(database_url, amqp_url, facilitator.uri) as runner:
        link = runner.ctx.dependency(FacilitatorLink)
        publisher = Broker(amqp_url, service="job-runner")
        await publisher.connect()
        try:
            for update in updates:
                await publisher.publish(update)
        finally:
            await publisher.stop(grace_s=1.0)
        await facilitator.eventually(lambda: link.debug_state()["status_pending"] == 3, what="3 pending")
        assert facilitator.frames("V0JobStatusUpdate") == []

        facilitator.accept_auth = True
        await facilitator.eventually(
            lambda: len(facilitator.frames("V0JobStatusUpdate")) == 3, what="the drain"
        )
    sent = [(f["uuid"], f["status"]) for f in facilitator.frames("V0JobStatusUpdate")]
    # Each job's updates in the order they were made. Across jobs the oldest goes first, except a
    # final status with no `accepted` written before it, which may trail by the hold (outbound.py).
    for one in (job, other):
        assert [st for u, st in sent if u == str(one)] == [u.status for u in updates if u.job_uuid == one]
    assert sorted(sent) == sorted((str(u.job_uuid), u.status) for u in updates)
