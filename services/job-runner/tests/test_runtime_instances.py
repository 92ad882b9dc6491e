"""Two job-runner instances in one process share no state: each has its own `JobRunnerRuntime`.

The runtimes are built as the runner builds them, from the service's own `SPEC` (its `dependencies`,
opened on a `ServiceContext` each) and reached through the spec's router bound to each instance, as
the broker calls it. `run_shard` is replaced by one that waits for the test, so a shard stays active
while both instances are inspected; no database, broker or miner is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import (
    BatchReleased,
    BatchShardCompleted,
    BatchShardRequested,
    ShardDeadlines,
)
from horde_common.config import load_settings
from horde_common.service import ServiceContext, open_dependencies
from horde_job_runner import app
from horde_job_runner.synthetic import handler
from horde_job_runner.synthetic.handler import JobRunnerRuntime
from horde_job_runner.synthetic.model import BatchDeps, ShardRequest, ShardResult
from horde_localnet import keys

pytestmark = pytest.mark.timeout(30)

SHARD_QUEUE = "job-runner.batch.shard.requested"
RELEASED_QUEUE = "job-runner.batch.released"
WAIT_S = 5.0  # every wait here is on in-process events: milliseconds when it works


class BlockedShards:
    """Stands in for `run_shard`: records who ran the shard and waits until the test lets it finish."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.finish = asyncio.Event()
        self.deps: list[BatchDeps] = []

    async def run_shard(self, request: ShardRequest, deps: BatchDeps) -> ShardResult:
        self.deps.append(deps)
        self.entered.set()
        await self.finish.wait()
        return ShardResult(batch_id=request.batch_id, shard_index=request.shard_index, persisted=True)


class Instance:
    """One job-runner instance: its context (runtime opened from `app.SPEC`) and its bound router."""

    def __init__(self, index: int) -> None:
        self.ctx = ServiceContext(
            spec=app.SPEC,
            settings=load_settings(SYNTHETIC_HASHCAT_DIFFICULTY="localnet"),
            session_factory=async_sessionmaker(),  # never opened: run_shard is replaced
            hotkey=keys.validator_keypair(index),
        )
        self.router: BusRouter | None = None

    @property
    def runtime(self) -> JobRunnerRuntime:
        return self.ctx.dependency(JobRunnerRuntime)

    async def deliver(self, queue: str, msg: Any) -> Any:
        assert self.router is not None
        ctx = HandlerContext(queue=queue, message_id=msg.message_id, redelivered=False, delivery_count=1)
        return await self.router.routes[queue].fn(msg, ctx)

    async def view(self) -> dict[str, Any]:
        return await app.SPEC.debug_views["synthetic"](self.ctx)


@pytest.fixture()
async def instances() -> AsyncIterator[tuple[Instance, Instance]]:
    first, second = Instance(0), Instance(1)
    async with AsyncExitStack() as stack:
        for instance in (first, second):
            await stack.enter_async_context(open_dependencies(instance.ctx))
            assert app.SPEC.router is not None
            instance.router = app.SPEC.router.bind(instance.ctx.dependencies)
        yield first, second
    for instance in (first, second):
        assert await instance.view() == {"installed": False, "shards": []}  # torn down at stop


def _shard_request(batch_id: int) -> BatchShardRequested:
    now = datetime.now(UTC)
    return BatchShardRequested(
        batch_id=batch_id,
        shard_index=3,
        shard_count=4,
        cycle_start=0,
        cycle_stop=722,
        miners=[],
        deadlines=ShardDeadlines(
            accept_deadline=now + timedelta(seconds=60), release_deadline=now + timedelta(seconds=90)
        ),
        weights_version=4,
    )


async def test_two_instances_have_their_own_runtime(instances: tuple[Instance, Instance]) -> None:
    first, second = instances
    assert first.runtime is not second.runtime
    assert first.runtime.keypair.ss58_address != second.runtime.keypair.ss58_address
    assert first.runtime.releases is not second.runtime.releases


async def test_a_release_wakes_only_the_instance_that_received_it(
    instances: tuple[Instance, Instance],
) -> None:
    first, second = instances
    assert (
        await first.deliver(RELEASED_QUEUE, BatchReleased(batch_id=71, released_at=datetime.now(UTC))) is None
    )
    assert first.runtime.releases.is_released(71)
    assert not second.runtime.releases.is_released(71)


async def test_an_active_shard_is_seen_only_by_the_instance_running_it(
    instances: tuple[Instance, Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = instances
    shards = BlockedShards()
    monkeypatch.setattr(handler, "run_shard", shards.run_shard)
    request = _shard_request(batch_id=72)
    running = asyncio.create_task(first.deliver(SHARD_QUEUE, request))
    try:
        await asyncio.wait_for(shards.entered.wait(), WAIT_S)
        assert await first.view() == {
            "installed": True,
            "shards": [{"batch_id": 72, "shard_index": 3, "miners": 0}],
        }
        assert await second.view() == {"installed": True, "shards": []}
        (deps,) = shards.deps
        assert deps.release_waiter is first.runtime.releases  # the shard waits on its own instance
        assert deps.keypair is first.runtime.keypair
    finally:
        shards.finish.set()
        out = await asyncio.wait_for(running, WAIT_S)
    (completed,) = out
    assert isinstance(completed, BatchShardCompleted)
    assert (completed.batch_id, completed.shard_index, completed.ok) == (72, 3, True)
    assert first.runtime.active == second.runtime.active == {}


async def test_the_runtime_loads_the_key_when_the_context_has_none() -> None:
    """`ServiceRunner(hotkey=None)` on a spec run without preflight: the wallet settings still apply."""
    ctx = ServiceContext(
        spec=app.SPEC,
        settings=load_settings(HOTKEY_SEED="//Alice"),
        session_factory=async_sessionmaker(),
    )
    async with open_dependencies(ctx):
        assert ctx.dependency(JobRunnerRuntime).keypair.ss58_address.startswith("5")
