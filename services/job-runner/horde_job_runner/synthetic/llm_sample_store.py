"""The prompt tables as LLM jobs see them (docs/synthetic-batch.md, "LLM jobs"; docs/crossval.md §7).

`PromptSampleStore.take` reserves a shard's samples (with their series, seed and trusted answers)
in one statement: it sets `taken_at` on the oldest ready ones, skipping rows another taker holds,
and keeps them only if there are enough for every LLM executor. A taken sample is never offered
again, so batches that overlap, replicas and `horde debug run-synthetic-jobs` never hand out the
same sample twice. It also counts the pool for INSUFFICIENT_PROMPTS and records that event at most
once a day across shards and replicas (`record_shortage`). Each call is a short transaction of its
own: a shard holds no connection while it talks to miners. Linking a taken sample to its job
happens in the shard's persist transaction (`shard_rows.consume_sql`, used by `persistence`);
`mark_used` is the same update on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Protocol

from sqlalchemy import ColumnElement, and_, exists, func, select, text, update

from horde_common.crossval import ExpectedPrompt
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload, SystemEvent
from horde_common.telemetry import SystemEventRecord, record_events_bulk
from horde_job_runner.synthetic.shard_rows import consume_sql

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "SHORTAGE_EVERY",
    "SHORTAGE_LOCK_KEY",
    "PromptSampleStore",
    "ReadySample",
    "SampleCounts",
    "SampleSource",
    "SampleTaking",
]

# The transaction-scoped advisory lock under which a shard checks for a recent INSUFFICIENT_PROMPTS
# and writes one: shards and replicas that are short at the same moment take turns, so the second
# sees the first's committed event. Any constant unused by another lock ("insufprm").
SHORTAGE_LOCK_KEY: Final = 0x696E_7375_6670_726D
# INSUFFICIENT_PROMPTS is written at most once per this (docs/miner-protocol.md §3.6): it says the
# same thing every batch until samples exist. The same day as `batch_start.INSUFFICIENT_PROMPTS_EVERY_S`
# (the shard's early check; a layer above, so not imported here).
SHORTAGE_EVERY: Final = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class ReadySample:
    """An answered, unused sample: its series (the job's input), its workload seed and its
    prompts with their trusted answers."""

    sample_id: int
    series_url: str
    seed: int
    prompts: tuple[ExpectedPrompt, ...]


@dataclass(frozen=True, slots=True)
class SampleTaking:
    """What `take` got: every sample asked for, or none and how many were free to take."""

    samples: tuple[ReadySample, ...]
    available: int  # ready and not held by another taker at that moment (<= the count asked for)


@dataclass(frozen=True, slots=True)
class SampleCounts:
    """The pool of samples when a shard is short of them (INSUFFICIENT_PROMPTS data).

    used: linked to a stored job; taken: reserved by a shard that has not stored its jobs (yet,
    or ever: a shard that crashed); unused: neither, split by whether its workload is answered.
    """

    prompt_series_total_count: int
    prompt_sample_used_count: int
    prompt_sample_unused_answered_count: int
    prompt_sample_unused_unanswered_count: int
    prompt_sample_taken_unlinked_count: int = 0


class SampleSource(Protocol):
    """Where a shard's samples come from and are consumed (`PromptSampleStore` on Postgres)."""

    async def take(self, count: int) -> SampleTaking: ...

    async def counts(self) -> SampleCounts: ...

    async def mark_used(self, job_of_sample: Mapping[int, uuid.UUID]) -> int: ...

    async def record_shortage(self, event: SystemEventRecord, within: timedelta = SHORTAGE_EVERY) -> bool: ...


class PromptSampleStore:
    """The prompt tables, each call on a short transaction of its own."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, service: str = "job-runner") -> None:
        self.sessions = sessions
        self.service = service

    async def take(self, count: int) -> SampleTaking:
        """Reserve the `count` oldest ready samples, or none (docs/crossval.md §7.5: all or nothing).

        One `UPDATE ... SET taken_at = now() WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`:
        concurrent takers (shards, overlapping batches, replicas, a debug run) each lock different
        rows and a committed `taken_at` hides a row from every later taker, so no sample is handed
        out twice. Fewer than `count`: the transaction is rolled back and nothing is reserved.
        """
        if count <= 0:
            return SampleTaking((), 0)
        picked = (
            select(PromptSample.id)
            .join(SolveWorkload, SolveWorkload.id == PromptSample.workload_id)
            .where(*_ready_conditions())
            .order_by(PromptSample.id)
            .limit(count)
            # Only the sample rows: locking the shared workload row would make takers skip each other's pools.
            .with_for_update(of=PromptSample.__table__, skip_locked=True)
        )
        reserve = (
            update(PromptSample.__table__)
            .where(PromptSample.id.in_(picked), PromptSample.taken_at.is_(None))
            .values(taken_at=func.now())
            .returning(PromptSample.id)
        )
        async with self.sessions() as session:
            ids = sorted((await session.scalars(reserve)).all())
            if len(ids) < count:
                await session.rollback()
                return SampleTaking((), len(ids))
            samples = await _load(session, ids)
            await session.commit()
        return SampleTaking(tuple(samples), len(ids))

    async def ready(self, limit: int) -> list[ReadySample]:
        """Up to `limit` ready samples, oldest first, reserving nothing (a look, for operators and
        tests; shards use `take`)."""
        query = (
            select(PromptSample.id)
            .join(SolveWorkload, SolveWorkload.id == PromptSample.workload_id)
            .where(*_ready_conditions())
            .order_by(PromptSample.id)
            .limit(limit)
        )
        async with self.sessions() as session:
            ids = list((await session.scalars(query)).all())
            return await _load(session, ids)

    async def counts(self) -> SampleCounts:
        used = PromptSample.synthetic_job_id.is_not(None)
        taken = and_(PromptSample.synthetic_job_id.is_(None), PromptSample.taken_at.is_not(None))
        unused = and_(PromptSample.synthetic_job_id.is_(None), PromptSample.taken_at.is_(None))
        answered = SolveWorkload.finished_at.is_not(None)
        async with self.sessions() as session:
            series = await session.scalar(select(func.count()).select_from(PromptSeries))
            row = (
                await session.execute(
                    select(
                        func.count().filter(used),
                        func.count().filter(and_(unused, answered)),
                        func.count().filter(and_(unused, ~answered)),
                        func.count().filter(taken),
                    ).join_from(PromptSample, SolveWorkload, SolveWorkload.id == PromptSample.workload_id)
                )
            ).one()
        return SampleCounts(int(series or 0), int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def record_shortage(self, event: SystemEventRecord, within: timedelta = SHORTAGE_EVERY) -> bool:
        """Store `event` (an INSUFFICIENT_PROMPTS) unless one of its type and subtype is newer than
        `within`; returns whether it was stored.

        The check and the insert run under `SHORTAGE_LOCK_KEY` in one transaction that commits
        before the lock is released, so of any number of concurrent callers exactly one writes.
        """
        async with self.sessions.begin() as session:
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SHORTAGE_LOCK_KEY})
            recent = await session.scalar(
                select(SystemEvent.id)
                .where(
                    SystemEvent.type == str(event.type),
                    SystemEvent.subtype == str(event.subtype),
                    SystemEvent.timestamp >= datetime.now(UTC) - within,
                )
                .limit(1)
            )
            if recent is not None:
                return False
            await record_events_bulk(session, [event], service=self.service)
        return True

    async def mark_used(self, job_of_sample: Mapping[int, uuid.UUID]) -> int:
        """Link each sample to its stored job; returns how many were linked. A sample already used
        is left as it is (it cannot be used twice)."""
        if not job_of_sample:
            return 0
        statement = text(consume_sql("synthetic_jobs", ":sample_ids", ":job_uuids"))
        params = {"sample_ids": list(job_of_sample), "job_uuids": list(job_of_sample.values())}
        async with self.sessions.begin() as session:
            result = await session.execute(statement, params)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _ready_conditions() -> tuple[ColumnElement[bool], ...]:
    """A sample is ready when it was never taken nor linked and its workload is answered, with at
    least one prompt and a trusted answer for each (otherwise no miner could pass it). The query
    must join `SolveWorkload`."""
    unanswered = select(Prompt.id).where(Prompt.sample_id == PromptSample.id, Prompt.answer.is_(None))
    any_prompt = select(Prompt.id).where(Prompt.sample_id == PromptSample.id)
    return (
        PromptSample.taken_at.is_(None),
        PromptSample.synthetic_job_id.is_(None),
        SolveWorkload.finished_at.is_not(None),
        exists(any_prompt),
        ~exists(unanswered),
    )


async def _load(session: AsyncSession, ids: list[int]) -> list[ReadySample]:
    """The samples `ids` (in that order) with their series URL, workload seed and prompts."""
    if not ids:
        return []
    heads = (
        await session.execute(
            select(PromptSample.id, PromptSeries.s3_url, SolveWorkload.seed)
            .join(PromptSeries, PromptSeries.id == PromptSample.series_id)
            .join(SolveWorkload, SolveWorkload.id == PromptSample.workload_id)
            .where(PromptSample.id.in_(ids))
        )
    ).all()
    prompt_rows = (
        await session.execute(
            select(Prompt.sample_id, Prompt.content, Prompt.answer)
            .where(Prompt.sample_id.in_(ids))
            .order_by(Prompt.id)
        )
    ).all()
    prompts: dict[int, list[ExpectedPrompt]] = {}
    for sample_id, content, answer in prompt_rows:
        prompts.setdefault(sample_id, []).append(ExpectedPrompt(content, answer))
    head_of = {sample_id: (url, seed) for sample_id, url, seed in heads}
    return [
        ReadySample(
            sample_id, head_of[sample_id][0], head_of[sample_id][1], tuple(prompts.get(sample_id, ()))
        )
        for sample_id in ids
        if sample_id in head_of
    ]
