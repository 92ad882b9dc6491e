"""`BatchDeps.on_initial_send`: awaited once, before any miner gets an initial job request; if it
fails, no miner gets one and the shard is our failure (docs/synthetic-batch.md, the shard lease)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from horde_common.db.models import SyntheticJob
from horde_job_runner.synthetic.model import BatchTimeouts, ShardResult
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
INITIAL = "V0InitialJobRequest"
FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0},
    job_timeout=2.0,
    persist_backoff=0.01,
)


async def _run(store: BatchStore, fleet: MinerFleet, **deps: Any) -> tuple[int, ShardResult]:
    return await run_shard_over(store, endpoints(fleet), timeouts=FAST, **deps)


def _initials(fleet: MinerFleet) -> int:
    return sum(1 for m in fleet.miners for _, kind in m.received if kind == INITIAL)


async def test_the_hook_runs_once_before_the_first_initial_request(store: BatchStore) -> None:
    seen: list[int] = []
    async with MinerFleet(2, executors={AO: 2}, first_index=300) as fleet:

        async def hook() -> None:
            seen.append(_initials(fleet))

        _, result = await _run(store, fleet, on_initial_send=hook)
        assert result.ok and result.persisted
        assert seen == [0]
        assert _initials(fleet) == 4


async def test_a_failing_hook_sends_nothing_and_blames_no_miner(store: BatchStore) -> None:
    async def hook() -> None:
        raise RuntimeError("lease row not writable")

    async with MinerFleet(2, executors={AO: 1}, first_index=310) as fleet:
        batch_id, result = await _run(store, fleet, on_initial_send=hook)
        assert _initials(fleet) == 0
    assert not result.ok and "lease row not writable" in (result.error or "")
    async with store.sessions() as session:
        jobs = (
            (await session.execute(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id)))
            .scalars()
            .all()
        )
    assert len(jobs) == 2
    assert all(j.excluded_from_scoring and j.score == 0 for j in jobs)
