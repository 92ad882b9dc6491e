"""Fixtures of the weights-run tests: a migrated database per module, emptied per test, and a kit
that seeds batches and snapshots, builds runs and reads back rows, events and chain records."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.chain import LocalChainClient, Neuron
from horde_common.db.models import Cycle, SyntheticJob, SyntheticJobBatch, SystemEvent, Weights
from horde_common.db.models import Neuron as NeuronRow
from horde_common.db.models.dynamic import DynamicConfigEntry
from horde_common.db.models.enums import JobStatus
from horde_common.dynamic_config import DynamicConfig
from horde_localnet import keys
from horde_localnet.chain import RunningChain
from horde_localnet.chain_spec import LocalnetSpec, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from horde_weights.weights_run import RunParams, WeightsRun
from testing.fixtures_db import truncate

NETUID = 12
SPIN = "spin_up-4min.gpu-24gb"
BLOCK_S = 0.02  # fast blocks: a rate limit or a grace period passes in well under a second
# No real pauses: the retry loop's backoff is exercised, not waited for; the rate-limit wait polls
# the head once a (fast) block.
FAST = RunParams(
    attempts=5, ttl_s=2.0, backoff_s=0.0, call_timeout_s=5.0, block_time_s=BLOCK_S, pending_grace_blocks=10
)
TABLES = "synthetic_jobs, synthetic_job_batches, cycles, neurons, weights, system_events, dynamic_config"
Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, f"{TABLES} CASCADE")
    DynamicConfig.clear_cache()
    try:
        yield sessions
    finally:
        DynamicConfig.clear_cache()


@pytest.fixture()
def kit(sessions: Sessions) -> Kit:
    return Kit(sessions)


def honest_and_faulty() -> list[tuple[str, float]]:
    """Miners 0-3 pass both their jobs, 4-5 pass one of two, 6-7 fail both."""
    jobs: list[tuple[str, float]] = []
    for i in range(8):
        passed = 2 if i < 4 else 1 if i < 6 else 0
        jobs += [(keys.miner_hotkey(i), 1.0 if k < passed else 0.0) for k in range(2)]
    return jobs


@dataclass
class Kit:
    sessions: Sessions
    netuid: int = NETUID
    params: RunParams = FAST

    @staticmethod
    def chain_spec(**chain: Any) -> LocalnetSpec:
        """The default localnet subnet on fast blocks, no rate limit and commit-reveal off, then `chain`."""
        spec = load_spec(DEFAULT_METAGRAPH_PATH)
        params = {"block_interval": BLOCK_S, "weights_rate_limit": 0, "commit_reveal_enabled": False, **chain}
        return spec.model_copy(update={"chain": spec.chain.model_copy(update=params)})

    async def seed_batch(
        self, head: int, jobs: Sequence[tuple[str, float]], *, started_ago: timedelta = timedelta(hours=1)
    ) -> int:
        """A finished batch of a cycle that ended before `head`, with spin-up `jobs` (hotkey, score)."""
        async with self.sessions.begin() as s:
            cycle = Cycle(start=head - 800, stop=head - 78)
            s.add(cycle)
            await s.flush()
            now = datetime.now(UTC)
            batch = SyntheticJobBatch(
                cycle_id=cycle.id, block=head - 700, started_at=now - started_ago, completed_at=now
            )
            s.add(batch)
            await s.flush()
            for k, (hotkey, score) in enumerate(jobs):
                s.add(
                    SyntheticJob(
                        job_uuid=uuid.uuid4(),
                        batch_id=batch.id,
                        miner_hotkey=hotkey,
                        executor_class=SPIN,
                        status=JobStatus.COMPLETED if score > 0 else JobStatus.FAILED,
                        score=score,
                        comment=f"job {k}",
                    )
                )
            return batch.id

    async def seed_snapshot(self, neurons: Sequence[Neuron], block: int) -> None:
        async with self.sessions.begin() as s:
            for n in neurons:
                s.add(NeuronRow(block=block, uid=n.uid, hotkey=n.hotkey, coldkey=n.coldkey, stake=n.stake))

    async def prepared(self, rc: RunningChain, jobs: Sequence[tuple[str, float]] | None = None) -> int:
        """The chain's metagraph stored as the newest snapshot, and a batch ready to score."""
        head = rc.sim.current_block()
        await self.seed_snapshot(rc.sim.metagraph(NETUID).neurons, head)
        return await self.seed_batch(head, honest_and_faulty() if jobs is None else jobs)

    async def set_dynamic(self, **values: Any) -> None:
        async with self.sessions.begin() as s:
            for key, value in values.items():
                s.add(DynamicConfigEntry(key=key, items=[{"value": value}]))
        DynamicConfig.clear_cache()

    def run(self, chain: Any, **kw: Any) -> WeightsRun:
        kw.setdefault("params", self.params)
        return WeightsRun(
            sessions=self.sessions, chain=chain, keypair=keys.validator_keypair(0), netuid=NETUID, **kw
        )

    async def event_subtypes(self) -> list[str]:
        async with self.sessions() as s:
            return list((await s.scalars(select(SystemEvent.subtype).order_by(SystemEvent.id))).all())

    async def event(self, subtype: str) -> SystemEvent:
        async with self.sessions() as s:
            found = await s.scalar(
                select(SystemEvent).where(SystemEvent.subtype == subtype).order_by(SystemEvent.id).limit(1)
            )
        assert found is not None, f"no {subtype} event"
        return found

    async def weights_rows(self) -> list[Weights]:
        async with self.sessions() as s:
            return list((await s.scalars(select(Weights).order_by(Weights.id))).all())

    async def batch_scored(self, batch_id: int) -> bool:
        async with self.sessions() as s:
            scored = await s.scalar(select(SyntheticJobBatch.scored).where(SyntheticJobBatch.id == batch_id))
        return bool(scored)

    @staticmethod
    async def on_chain(chain: LocalChainClient) -> list[Any]:
        """What our validator hotkey wrote, oldest first."""
        return list((await chain.weights(NETUID, hotkey=keys.validator_hotkey(0))).records)
