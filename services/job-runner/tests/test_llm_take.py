"""Reserving prompt samples against real Postgres (docs/synthetic-batch.md, "LLM jobs"): takers on
two engines (two replicas, or two overlapping batches) never get the same sample, a taker skips rows
another one holds instead of waiting, a short pool gives nothing and reserves nothing, and a sample
taken by a shard that never stored its jobs is not offered again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, text

from horde_common.db import create_engine, session_factory
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload, SyntheticJob
from horde_job_runner.synthetic.llm_sample_store import PromptSampleStore, SampleTaking
from horde_job_runner.synthetic.llm_samples import take_llm_samples
from horde_job_runner.synthetic.model import SystemClock
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_services import EventLog

pytestmark = pytest.mark.timeout(60)

# Takers racing per engine, each asking for PER_TAKER samples from a pool of exactly all they need.
TAKERS_PER_ENGINE = 6
PER_TAKER = 4


@pytest.fixture()
async def pool(store: BatchStore) -> AsyncIterator[PromptSampleStore]:
    """The module's store with no prompt rows."""
    async with store.sessions.begin() as session:
        await session.execute(delete(PromptSeries))
        await session.execute(delete(SolveWorkload))
    yield PromptSampleStore(store.sessions)


async def seed_samples(store: BatchStore, count: int) -> list[int]:
    """`count` answered samples, one prompt each (no S3 object is needed to take them)."""
    async with store.sessions.begin() as session:
        workload = SolveWorkload(
            workload_uuid=uuid.uuid4(), seed=7, s3_url="http://unused/w", finished_at=datetime.now(UTC)
        )
        session.add(workload)
        await session.flush()
        ids = []
        for i in range(count):
            series = PromptSeries(series_uuid=uuid.uuid4(), s3_url=f"http://unused/s{i}")
            session.add(series)
            await session.flush()
            sample = PromptSample(series_id=series.id, workload_id=workload.id)
            session.add(sample)
            await session.flush()
            session.add(Prompt(sample_id=sample.id, content=f"p{i}", answer=f"a{i}"))
            ids.append(sample.id)
    return ids


async def taken_ids(store: BatchStore) -> set[int]:
    async with store.sessions() as session:
        return set(
            (await session.scalars(select(PromptSample.id).where(PromptSample.taken_at.is_not(None)))).all()
        )


async def test_takers_on_two_engines_never_get_the_same_sample(
    store: BatchStore, pool: PromptSampleStore, db_url: str
) -> None:
    ids = await seed_samples(store, 2 * TAKERS_PER_ENGINE * PER_TAKER)
    other_engine = create_engine(db_url)
    try:
        stores = [pool, PromptSampleStore(session_factory(other_engine))]
        takings = await asyncio.gather(*(stores[i % 2].take(PER_TAKER) for i in range(2 * TAKERS_PER_ENGINE)))
    finally:
        await other_engine.dispose()
    got = [s.sample_id for t in takings for s in t.samples]
    assert len(got) == len(set(got))  # no sample handed out twice
    # A taker is short only while others hold more than pool - PER_TAKER rows, which PER_TAKER-row
    # takers on a pool of exactly what they all need never do: every taker gets its share.
    assert all(len(t.samples) == PER_TAKER for t in takings)
    assert set(got) == set(ids) == await taken_ids(store)
    assert all(s.prompts and s.prompts[0].answer is not None for t in takings for s in t.samples)


async def test_a_taker_skips_rows_another_holds_instead_of_waiting(
    store: BatchStore, pool: PromptSampleStore, db_url: str
) -> None:
    a, b, c, d = await seed_samples(store, 4)
    other_engine = create_engine(db_url)
    try:
        async with other_engine.connect() as holder:
            # Another batch's take in flight: the two oldest rows locked, not yet committed.
            await holder.execute(
                text("SELECT id FROM prompt_samples WHERE id IN (:a, :b) FOR UPDATE"), {"a": a, "b": b}
            )
            taking = await asyncio.wait_for(pool.take(2), 10.0)
            assert [s.sample_id for s in taking.samples] == [c, d]
            short = await asyncio.wait_for(pool.take(1), 10.0)
            assert short == SampleTaking((), 0)
            await holder.rollback()
    finally:
        await other_engine.dispose()
    assert await taken_ids(store) == {c, d}
    assert [s.sample_id for s in (await pool.take(2)).samples] == [a, b]


async def test_a_short_pool_gives_nothing_and_reserves_nothing(
    store: BatchStore, pool: PromptSampleStore
) -> None:
    ids = await seed_samples(store, 3)
    assert await pool.take(4) == SampleTaking((), 3)
    assert await taken_ids(store) == set()
    assert [r.sample_id for r in await pool.ready(10)] == ids
    taking = await pool.take(3)
    assert [s.sample_id for s in taking.samples] == ids and taking.available == 3


async def test_a_sample_taken_by_a_shard_that_crashed_before_persist_is_never_offered_again(
    store: BatchStore, pool: PromptSampleStore
) -> None:
    first, second, third = await seed_samples(store, 3)
    events = EventLog(batch_id=0, clock=SystemClock())
    took = await take_llm_samples(
        pool, 2, shard_index=0, recently_reported=True, events=events, db_timeout=5.0
    )
    assert [s.sample_id for s in took] == [first, second]
    # The shard dies here: its jobs are never stored, its samples never linked.
    again = await take_llm_samples(
        pool, 2, shard_index=0, recently_reported=True, events=events, db_timeout=5.0
    )
    assert again == () and events.records == []  # only `third` is left: too few
    assert [s.sample_id for s in await pool.ready(10)] == [third]
    counts = await pool.counts()
    assert (counts.prompt_sample_taken_unlinked_count, counts.prompt_sample_unused_answered_count) == (2, 1)

    # A shard that does store its job links the sample it took; the taken time is kept.
    (last,) = await take_llm_samples(
        pool, 1, shard_index=1, recently_reported=True, events=events, db_timeout=5.0
    )
    batch_id, _ = await store.create_batch()
    job_uuid = uuid.uuid4()
    async with store.sessions.begin() as session:
        session.add(SyntheticJob(job_uuid=job_uuid, batch_id=batch_id, miner_hotkey="hk"))
    async with store.sessions() as session:
        taken_at = await session.scalar(select(PromptSample.taken_at).where(PromptSample.id == third))
    assert await pool.mark_used({last.sample_id: job_uuid}) == 1
    async with store.sessions() as session:
        row = (
            await session.execute(
                select(PromptSample.taken_at, SyntheticJob.job_uuid)
                .join(SyntheticJob, SyntheticJob.id == PromptSample.synthetic_job_id)
                .where(PromptSample.id == third)
            )
        ).one()
    assert tuple(row) == (taken_at, job_uuid)
    counts = await pool.counts()
    assert (counts.prompt_sample_used_count, counts.prompt_sample_taken_unlinked_count) == (1, 2)
