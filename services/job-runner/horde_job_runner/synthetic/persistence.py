"""What a shard reads from and writes to Postgres (docs/miner-protocol.md §3.3, §3.12;
docs/synthetic-batch.md §7).

`BatchStore` implements `model.ShardStore`; this module imports the model, never the other way round.

A shard's results are written in ONE transaction (docs/performance.md lesson 5: the reference
spent ~1.15 s of CPU on per-row ORM work at 512 jobs). Either all of it is stored or none. How:

* a small shard (up to `SMALL_SHARD_ROWS` rows) is ONE statement: the batch `UPDATE` and an
  `INSERT ... SELECT * FROM unnest($a, $b, ...)` per table (one binary array per column) as
  data-modifying CTEs. One round trip, no BEGIN/COMMIT (a single statement is atomic), instead of
  about fifteen (BEGIN, each `COPY` a prepare and a copy, the events' INSERT, COMMIT);
* a bigger shard uses `COPY` for every table, events included (the least CPU per row), in one
  explicit transaction;
* a retry after a failed attempt uses `INSERT ... ON CONFLICT DO NOTHING`, in case the failed
  attempt had in fact committed.

The LLM jobs' prompt samples (`ShardRows.consumed_samples`) are linked to their job rows in that
same transaction (`shard_rows.consume_sql`), so a crash can never leave stored jobs whose
samples are still ready to be handed out again; a sample already linked is never relinked.

The shard's system events are logged as one line per (type, subtype), not one per event.
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    MinerManifest,
    OrganicJob,
    SyntheticJob,
    SyntheticJobBatch,
    SystemEvent,
)
from horde_common.db.models.enums import JobStatus
from horde_common.telemetry import SystemEventSubtype, SystemEventType, record_events_bulk
from horde_common.telemetry.events import emit_events, event_rows
from horde_job_runner.synthetic.model import DynamicValues
from horde_job_runner.synthetic.shard_rows import ShardRows, consume_sql

__all__ = ["BatchStore", "ShardRows", "shard_marker_exists"]

# Chunk bulk inserts so one statement never exceeds Postgres' 32767 bind parameters.
_CHUNK = 1000

# Up to this many rows (jobs + manifests + receipts + events) a shard is written as one statement
# of arrays; above it with COPY. Measured on 2 shared cores: at ~400 rows (64 jobs) both cost the
# same wall time and the statement a little less CPU; at ~6,400 rows COPY took ~30 % less of both.
SMALL_SHARD_ROWS = 1500


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), _CHUNK):
        yield rows[i : i + _CHUNK]


class BatchStore:
    """The shard's database access, on its own short transactions (never the bus handler's).

    The Postgres implementation of `model.ShardStore` (what `run_shard` needs from a store).
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, service: str = "job-runner") -> None:
        self.sessions = sessions
        self.service = service

    # --- reads ---------------------------------------------------------------------------------

    async def batch_uuid(self, batch_id: int) -> uuid.UUID | None:
        async with self.sessions() as session:
            value: uuid.UUID | None = await session.scalar(
                select(SyntheticJobBatch.batch_uuid).where(SyntheticJobBatch.id == batch_id)
            )
            return value

    async def previous_online_counts(
        self, batch_id: int, hotkeys: Iterable[str]
    ) -> dict[str, dict[str, int]]:
        """`online_executor_count` per (miner, class) of the latest batch before this one (§3.3).

        A (miner, class) absent from the result means "absent" (not 0): the miner had no manifest
        row for that class in that batch, or there is no previous batch.
        """
        wanted = list(set(hotkeys))
        if not wanted:
            return {}
        async with self.sessions() as session:
            previous_id = await session.scalar(
                select(func.max(SyntheticJobBatch.id)).where(SyntheticJobBatch.id < batch_id)
            )
            if previous_id is None:
                return {}
            rows = (
                await session.execute(
                    select(
                        MinerManifest.miner_hotkey,
                        MinerManifest.executor_class,
                        MinerManifest.online_executor_count,
                    ).where(MinerManifest.batch_id == previous_id, MinerManifest.miner_hotkey.in_(wanted))
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for hotkey, executor_class, online in rows:
            out.setdefault(hotkey, {})[executor_class] = online
        return out

    async def dynamic_values(self) -> DynamicValues:
        from horde_common.dynamic_config import DynamicConfig

        async with self.sessions() as session:
            return DynamicValues.from_config(await DynamicConfig.load(session))

    async def recent_event_exists(self, type_: str, subtype: str, within: timedelta) -> bool:
        """Is there an event of this type/subtype newer than `within`? (at-most-once-per-24h events)"""
        since = datetime.now(UTC) - within
        async with self.sessions() as session:
            found = await session.scalar(
                select(SystemEvent.id)
                .where(
                    SystemEvent.type == type_, SystemEvent.subtype == subtype, SystemEvent.timestamp >= since
                )
                .limit(1)
            )
            return found is not None

    async def organic_runs(
        self, hotkeys: Collection[str], since: datetime, until: datetime, max_age: timedelta
    ) -> list[tuple[str, str, str, datetime, datetime | None]]:
        """Our organic jobs on these miners that may have run between `since` and `until` (the
        excused declines, docs/synthetic-batch.md §9): assigned at most `max_age` before `since`
        and not after `until`; still PENDING and accepted by the miner (the accept moves
        `updated_at` past the assignment's `created_at`), or finished at or after `since`. Each as
        (job uuid, miner, class, assigned at = `created_at`, finished at = `updated_at` or None).
        """
        wanted = list(set(hotkeys))
        if not wanted:
            return []
        pending = OrganicJob.status == str(JobStatus.PENDING)
        accepted = OrganicJob.updated_at > OrganicJob.created_at
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(
                        OrganicJob.job_uuid,
                        OrganicJob.miner_hotkey,
                        OrganicJob.executor_class,
                        OrganicJob.created_at,
                        OrganicJob.updated_at,
                        pending,
                    ).where(
                        OrganicJob.miner_hotkey.in_(wanted),
                        OrganicJob.created_at <= until,
                        OrganicJob.created_at >= since - max_age,
                        or_(pending & accepted, ~pending & (OrganicJob.updated_at >= since)),
                    )
                )
            ).all()
        return [
            (str(job_uuid), hotkey, executor_class, created, None if is_pending else updated)
            for job_uuid, hotkey, executor_class, created, updated, is_pending in rows
        ]

    # --- writes --------------------------------------------------------------------------------

    async def create_batch(self, *, started_at: datetime | None = None) -> tuple[int, uuid.UUID]:
        """A batch without block or cycle (debug / unstaggered; never scored by weights)."""
        async with self.sessions.begin() as session:
            batch = SyntheticJobBatch(started_at=started_at or datetime.now(UTC))
            session.add(batch)
            await session.flush()
            return batch.id, batch.batch_uuid

    async def persist(self, rows: ShardRows, *, fast: bool = True) -> None:
        """Write the whole shard in one transaction (see the module docstring).

        `fast`: jobs, manifests and receipts go in with `COPY` (a fraction of the CPU of bound
        INSERTs). A retry after a failed attempt uses `INSERT ... ON CONFLICT DO NOTHING` instead,
        in case the failed attempt had in fact committed.
        """
        async with self.sessions.begin() as session:
            await write_shard_rows(session, rows, service=self.service, fast=fast)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


@functools.cache
def _array_types(model: Any, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The Postgres array type of each column (`uuid[]`, `varchar(64)[]`, ...), for `unnest`."""
    dialect = postgresql.dialect()
    table = model.__table__
    return tuple(f"{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)


def _one_statement(rows: ShardRows, events: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """The whole shard as one SQL statement and its parameters (see the module docstring).

    Each table is an `INSERT ... SELECT * FROM unnest($a::t1[], $b::t2[], ...)` over one array
    parameter per column (binary arrays: nothing to parse on either side), all of them and the
    batch `UPDATE` as data-modifying CTEs of one statement.
    """
    args: list[Any] = []
    ctes: list[str] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    jobs_cte: str | None = None
    completed_at = datetime.now(UTC) if rows.complete_batch else None
    if rows.accepting_results_until is not None or completed_at is not None:
        # LEAST ignores NULLs: the earlier of the stored and the new deadline, whichever exist.
        until = param(rows.accepting_results_until)
        ctes.append(
            f"u AS (UPDATE {SyntheticJobBatch.__tablename__} SET "
            f"accepting_results_until = LEAST(accepting_results_until, {until}::timestamptz), "
            f"completed_at = COALESCE({param(completed_at)}::timestamptz, completed_at) "
            f"WHERE id = {param(rows.batch_id)}::bigint)"
        )
    for model, table_rows in (
        (SyntheticJob, rows.jobs),
        (MinerManifest, rows.manifests),
        (JobStartedReceipt, rows.started_receipts),
        (JobAcceptedReceipt, rows.accepted_receipts),
        (JobFinishedReceipt, rows.finished_receipts),
        (SystemEvent, events),
    ):
        if not table_rows:
            continue
        columns = tuple(table_rows[0])
        arrays = ", ".join(
            f"{param([r[c] for r in table_rows])}::{array_type}"
            for c, array_type in zip(columns, _array_types(model, columns), strict=True)
        )
        names = ", ".join(f'"{c}"' for c in columns)
        name = f"i{len(ctes)}"
        # The samples' UPDATE cannot see this statement's own inserts in the table: it joins the
        # inserted job rows through RETURNING instead.
        returning = " RETURNING id, job_uuid" if model is SyntheticJob and rows.consumed_samples else ""
        jobs_cte = name if returning else jobs_cte
        ctes.append(
            f"{name} AS (INSERT INTO {model.__tablename__} ({names}) SELECT * FROM unnest({arrays}){returning})"
        )
    if jobs_cte is not None:
        sample_ids = param(list(rows.consumed_samples))
        job_uuids = param(list(rows.consumed_samples.values()))
        ctes.append(f"consumed AS ({consume_sql(jobs_cte, sample_ids, job_uuids)})")
    if not ctes:
        return "", []
    return "WITH " + ", ".join(ctes) + " SELECT 1", args


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, in the session's transaction."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    return driver


async def _copy(driver: Any, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """`COPY` `rows` (dicts with the same keys) into `model`'s table on the asyncpg connection."""
    if not rows:
        return
    columns = list(rows[0])
    # itemgetter of several keys returns the row's tuple, built in C (a generator per row was 40 %
    # of the persist's CPU at 2,048 jobs).
    row_tuple = operator.itemgetter(*columns) if len(columns) > 1 else (lambda r: (r[columns[0]],))
    await driver.copy_records_to_table(
        model.__tablename__, records=list(map(row_tuple, rows)), columns=columns
    )


async def write_shard_rows(
    session: AsyncSession, rows: ShardRows, *, service: str, fast: bool = False
) -> None:
    if fast:
        await _write_fast(session, rows, service=service)
        return
    values: dict[str, Any] = {}
    if rows.accepting_results_until is not None:
        values["accepting_results_until"] = func.least(
            func.coalesce(SyntheticJobBatch.accepting_results_until, rows.accepting_results_until),
            rows.accepting_results_until,
        )
    if rows.complete_batch:
        values["completed_at"] = datetime.now(UTC)
    if values:
        await session.execute(
            update(SyntheticJobBatch).where(SyntheticJobBatch.id == rows.batch_id).values(**values)
        )
    for chunk in _chunks(rows.jobs):
        await session.execute(
            pg_insert(SyntheticJob).on_conflict_do_nothing(index_elements=["job_uuid"]), chunk
        )
    for chunk in _chunks(rows.manifests):
        await session.execute(
            pg_insert(MinerManifest).on_conflict_do_nothing(
                index_elements=["miner_hotkey", "batch_id", "executor_class"]
            ),
            chunk,
        )
    for model, receipt_rows in (
        (JobStartedReceipt, rows.started_receipts),
        (JobAcceptedReceipt, rows.accepted_receipts),
        (JobFinishedReceipt, rows.finished_receipts),
    ):
        for chunk in _chunks(receipt_rows):
            await session.execute(pg_insert(model).on_conflict_do_nothing(index_elements=["job_uuid"]), chunk)
    for i in range(0, len(rows.events), _CHUNK):
        await record_events_bulk(session, rows.events[i : i + _CHUNK], service=service, summary_log=True)
    if rows.consumed_samples:
        await session.execute(
            text(consume_sql(SyntheticJob.__tablename__, ":sample_ids", ":job_uuids")),
            {"sample_ids": list(rows.consumed_samples), "job_uuids": list(rows.consumed_samples.values())},
        )


async def _write_fast(session: AsyncSession, rows: ShardRows, *, service: str) -> None:
    """The first attempt: one statement for a small shard, COPY for a big one.

    Both go straight to the driver connection, under which SQLAlchemy has not begun a transaction
    yet (its asyncpg adapter begins one lazily, at its own first statement). So: the single
    statement runs on its own, atomic as any statement, without BEGIN and COMMIT round trips; the
    COPYs run in an explicit driver transaction, so a failure leaves nothing behind.
    """
    events = event_rows(rows.events, service=service)
    # The driver takes jsonb as its text; `sent` is a Python-side default of the model.
    stored = [{**e, "data": json.dumps(e["data"], default=_json_default), "sent": False} for e in events]
    driver = await _driver(session)
    if rows.row_count <= SMALL_SHARD_ROWS:
        sql, args = _one_statement(rows, stored)
        if sql:
            await driver.execute(sql, *args)
    else:
        async with driver.transaction():
            if rows.accepting_results_until is not None or rows.complete_batch:
                only_batch = ShardRows(
                    batch_id=rows.batch_id,
                    accepting_results_until=rows.accepting_results_until,
                    complete_batch=rows.complete_batch,
                )
                sql, args = _one_statement(only_batch, [])
                await driver.execute(sql, *args)
            for model, copy_rows in (
                (SyntheticJob, rows.jobs),
                (MinerManifest, rows.manifests),
                (JobStartedReceipt, rows.started_receipts),
                (JobAcceptedReceipt, rows.accepted_receipts),
                (JobFinishedReceipt, rows.finished_receipts),
            ):
                await _copy(driver, model, copy_rows)
            await _copy(driver, SystemEvent, stored)
            if rows.consumed_samples:
                await driver.execute(
                    consume_sql(SyntheticJob.__tablename__, "$1", "$2"),
                    list(rows.consumed_samples),
                    list(rows.consumed_samples.values()),
                )
    emit_events(events, summary=True)


async def shard_marker_exists(session: AsyncSession, shard_message_id: uuid.UUID) -> dict[str, Any] | None:
    """The SYNTHETIC_BATCH telemetry event a persisted shard wrote (its data), if any.

    A redelivered `batch.shard.requested` whose shard was already persisted (the handler's own
    commit failed after ours) finds it here and just reports completion again.
    """
    data: dict[str, Any] | None = await session.scalar(
        select(SystemEvent.data)
        .where(
            SystemEvent.type == str(SystemEventType.VALIDATOR_TELEMETRY),
            SystemEvent.subtype == str(SystemEventSubtype.SYNTHETIC_BATCH),
            SystemEvent.data["shard_message_id"].astext == str(shard_message_id),
        )
        .limit(1)
    )
    return data
