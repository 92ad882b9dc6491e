"""LLM samples and the shard's rows against real Postgres (docs/synthetic-batch.md, "LLM jobs"):

* consuming the samples is part of the shard's persist transaction, in each of its three write
  paths (one statement, COPY, the retry's INSERTs): rows and consumption commit together or not at
  all, and a sample already used is never relinked;
* INSUFFICIENT_PROMPTS is written at most once a day however many shards, on however many
  replicas, are short at the same moment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text

from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    Prompt,
    PromptSample,
    PromptSeries,
    SolveWorkload,
    SyntheticJob,
    SystemEvent,
)
from horde_common.telemetry import SystemEventRecord
from horde_job_runner.synthetic.batch_start import INSUFFICIENT_PROMPTS_EVERY_S
from horde_job_runner.synthetic.llm_sample_store import SHORTAGE_EVERY, PromptSampleStore
from horde_job_runner.synthetic.llm_samples import take_llm_samples
from horde_job_runner.synthetic.model import SystemClock
from horde_job_runner.synthetic.persistence import SMALL_SHARD_ROWS, BatchStore
from horde_job_runner.synthetic.shard_rows import ShardRows
from horde_job_runner.synthetic.shard_services import EventLog

pytestmark = pytest.mark.timeout(60)

# How many shards (on two replicas' engines) race to report the same shortage.
RACERS = 8


@pytest.fixture()
async def fresh(store: BatchStore) -> AsyncIterator[BatchStore]:
    """The module's store with no prompt rows and no INSUFFICIENT_PROMPTS event."""
    async with store.sessions.begin() as session:
        await session.execute(delete(PromptSeries))
        await session.execute(delete(SolveWorkload))
        await session.execute(delete(SystemEvent).where(SystemEvent.subtype == "INSUFFICIENT_PROMPTS"))
    yield store


async def seed_samples(store: BatchStore, count: int) -> list[int]:
    """`count` answered samples (one prompt each); no S3 object is needed to store or consume them."""
    async with store.sessions.begin() as session:
        workload = SolveWorkload(
            workload_uuid=uuid.uuid4(), seed=5, s3_url="http://unused/w", finished_at=datetime.now(UTC)
        )
        session.add(workload)
        await session.flush()
        ids = []
        for _ in range(count):
            series = PromptSeries(series_uuid=uuid.uuid4(), s3_url="http://unused/s")
            session.add(series)
            await session.flush()
            sample = PromptSample(series_id=series.id, workload_id=workload.id)
            session.add(sample)
            await session.flush()
            session.add(Prompt(sample_id=sample.id, content="p", answer="a"))
            ids.append(sample.id)
    return ids


def job_row(batch_id: int, job_uuid: uuid.UUID) -> dict[str, Any]:
    """A job row with every column `records.build_rows` writes (COPY needs them all)."""
    return {
        "job_uuid": job_uuid,
        "batch_id": batch_id,
        "miner_hotkey": "hk-llm",
        "miner_address": "127.0.0.1",
        "miner_address_ip_version": 4,
        "miner_port": 1,
        "executor_class": "always_on.llm.a6000",
        "status": "COMPLETED",
        "score": 1.0,
        "score_manifest_multiplier": None,
        "comment": "",
        "job_description": "LLM prompts synthetic job",
        "time_took_us": 1,
        "excluded_from_scoring": False,
    }


async def shard_rows(store: BatchStore, samples: list[int], *, big: bool) -> ShardRows:
    """A shard of one LLM job per sample; `big`: enough events to take the COPY path."""
    batch_id, _ = await store.create_batch()
    consumed = {sample: uuid.uuid4() for sample in samples}
    rows = ShardRows(batch_id=batch_id, jobs=[job_row(batch_id, u) for u in consumed.values()])
    rows.consumed_samples = consumed
    count = SMALL_SHARD_ROWS + 1 if big else 1
    rows.events = [
        SystemEventRecord("VALIDATOR_TELEMETRY", "CHECKPOINT", "", {"batch_id": batch_id, "i": i})
        for i in range(count)
    ]
    assert (rows.row_count > SMALL_SHARD_ROWS) is big
    return rows


async def links(store: BatchStore, samples: list[int]) -> dict[int, uuid.UUID | None]:
    """Each sample -> the uuid of the job it is linked to (None: still ready)."""
    async with store.sessions() as session:
        found = await session.execute(
            select(PromptSample.id, SyntheticJob.job_uuid)
            .outerjoin(SyntheticJob, SyntheticJob.id == PromptSample.synthetic_job_id)
            .where(PromptSample.id.in_(samples))
        )
        return dict(found.tuples().all())


async def stored_jobs(store: BatchStore, uuids: list[uuid.UUID]) -> int:
    async with store.sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(SyntheticJob).where(SyntheticJob.job_uuid.in_(uuids))
            )
            or 0
        )


PATHS = [
    pytest.param(True, False, id="one-statement"),
    pytest.param(True, True, id="copy"),
    pytest.param(False, False, id="retry-inserts"),
]


@pytest.mark.parametrize(("fast", "big"), PATHS)
async def test_samples_are_consumed_in_the_persist_and_a_used_one_is_never_relinked(
    fresh: BatchStore, fast: bool, big: bool
) -> None:
    a, b, used = await seed_samples(fresh, 3)
    earlier = await shard_rows(fresh, [used], big=False)
    await fresh.persist(earlier)
    (first_job,) = earlier.consumed_samples.values()
    assert await links(fresh, [used]) == {used: first_job}

    rows = await shard_rows(fresh, [a, b], big=big)
    rows.consumed_samples[used] = rows.consumed_samples[a]  # a second job may never take it
    await fresh.persist(rows, fast=fast)
    assert await links(fresh, [a, b, used]) == {
        a: rows.consumed_samples[a],
        b: rows.consumed_samples[b],
        used: first_job,
    }
    assert await stored_jobs(fresh, list(rows.consumed_samples.values())) == 2


@pytest.mark.parametrize(("fast", "big"), PATHS)
async def test_a_persist_that_fails_stores_neither_the_rows_nor_the_consumption(
    fresh: BatchStore, fast: bool, big: bool
) -> None:
    """The database refuses to link one sample (a trigger): the job rows written before it in the
    same attempt are gone too, and every sample stays ready. Once it accepts, both are stored."""
    a, b = await seed_samples(fresh, 2)
    rows = await shard_rows(fresh, [a, b], big=big)
    async with fresh.sessions.begin() as session:
        await session.execute(
            text(
                "CREATE OR REPLACE FUNCTION horde_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'sample % refused by the test', OLD.id; END $$"
            )
        )
        await session.execute(
            text(
                "CREATE TRIGGER horde_test_refuse BEFORE UPDATE ON prompt_samples FOR EACH ROW "
                f"WHEN (OLD.id = {int(b)}) EXECUTE FUNCTION horde_test_refuse()"
            )
        )
    try:
        with pytest.raises(Exception, match="refused by the test"):
            await fresh.persist(rows, fast=fast)
    finally:
        async with fresh.sessions.begin() as session:
            await session.execute(text("DROP TRIGGER horde_test_refuse ON prompt_samples"))
    job_uuids = list(rows.consumed_samples.values())
    assert await stored_jobs(fresh, job_uuids) == 0
    assert await links(fresh, [a, b]) == {a: None, b: None}
    async with fresh.sessions() as session:
        events = await session.scalar(
            select(func.count())
            .select_from(SystemEvent)
            .where(SystemEvent.data["batch_id"].as_integer() == rows.batch_id)
        )
    assert events == 0

    await fresh.persist(rows, fast=False)  # the retry, as `records.persist` makes it
    assert await stored_jobs(fresh, job_uuids) == 2
    assert await links(fresh, [a, b]) == dict(rows.consumed_samples)


async def shortage_events(store: BatchStore) -> list[SystemEvent]:
    async with store.sessions() as session:
        found = await session.scalars(
            select(SystemEvent).where(SystemEvent.subtype == "INSUFFICIENT_PROMPTS")
        )
        return list(found.all())


async def test_shards_short_at_once_on_two_replicas_write_one_insufficient_prompts(
    fresh: BatchStore, db_url: str
) -> None:
    await seed_samples(fresh, 1)
    other_replica = create_engine(db_url)
    replicas = [PromptSampleStore(fresh.sessions), PromptSampleStore(session_factory(other_replica))]
    logs = [EventLog(batch_id=100 + i, clock=SystemClock()) for i in range(RACERS)]

    async def shard(i: int) -> tuple[Any, ...]:
        return await take_llm_samples(
            replicas[i % 2],
            3,  # each shard has 3 LLM executors; the pool holds 1 ready sample
            shard_index=i % 2,
            recently_reported=False,
            events=logs[i],
            db_timeout=10.0,
        )

    try:
        taken = await asyncio.gather(*(shard(i) for i in range(RACERS)))
        assert taken == [()] * RACERS
        (event,) = await shortage_events(fresh)
        assert event.type == "VALIDATOR_TELEMETRY" and event.data["llm_executor_count"] == 3
        assert event.data["batch_id"] in {100 + i for i in range(RACERS)}
        assert event.data["prompt_sample_unused_answered_count"] == 1
        assert all(log.records == [] for log in logs)  # written at once, not again with the rows

        # A day later the shortage is reported again, once.
        async with fresh.sessions.begin() as session:
            await session.execute(
                SystemEvent.__table__.update()
                .where(SystemEvent.id == event.id)
                .values(timestamp=datetime.now(UTC) - timedelta(hours=24, minutes=1))
            )
        await asyncio.gather(*(shard(i) for i in range(RACERS)))
        assert len(await shortage_events(fresh)) == 2
    finally:
        await other_replica.dispose()


def test_the_shards_early_check_and_the_locked_one_use_the_same_day() -> None:
    assert SHORTAGE_EVERY.total_seconds() == INSUFFICIENT_PROMPTS_EVERY_S == 24 * 3600
