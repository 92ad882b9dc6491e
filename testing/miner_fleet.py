"""Running one synthetic-jobs shard against a fleet of simulated miners (horde_localnet.miners), the
setup the job-runner's batch tests share (docs/synthetic-batch.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from horde_common.bus.messages import MinerEndpoint
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.model import (
    BatchDeps,
    BatchTimeouts,
    DynamicValues,
    ShardRequest,
    ShardResult,
)
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

VALIDATOR = keys.validator_keypair(0)


async def no_sleep(delay: float) -> None:
    """The shard's pauses (stagger, backoff) cut to a bare yield, so tests wait only on the miners."""
    await asyncio.sleep(0)


def endpoints(fleet: MinerFleet) -> list[MinerEndpoint]:
    """The fleet's miners as the scheduler would hand them to a shard."""
    return [
        MinerEndpoint(hotkey=m.hotkey, uid=m.index, address="127.0.0.1", port=m.port) for m in fleet.miners
    ]


async def run_shard_over(
    store: BatchStore,
    miners: list[MinerEndpoint],
    *,
    timeouts: BatchTimeouts,
    weights_version: int = 4,
    dynamic: DynamicValues | None = None,
    sleep: Callable[[float], Awaitable[None]] = no_sleep,
    **deps: Any,
) -> tuple[int, ShardResult]:
    """Create a batch and run its one shard over `miners` (a module binds its `timeouts` with
    `functools.partial`); `deps` go to `BatchDeps` (`use_store`
    replaces the store the shard writes through, e.g. a failing wrapper, while the batch is still
    created in `store`)."""
    batch_id, _ = await store.create_batch()
    result = await run_shard(
        ShardRequest(batch_id=batch_id, miners=miners, weights_version=weights_version),
        BatchDeps(
            keypair=VALIDATOR,
            store=deps.pop("use_store", store),
            dynamic=dynamic or DynamicValues(),
            difficulty="localnet",
            timeouts=timeouts,
            job_factory=InlineJobFactory(),
            sleep=sleep,
            **deps,
        ),
    )
    return batch_id, result
