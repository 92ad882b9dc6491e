"""Persisting a shard (`BatchStore.persist`): the one-statement path, the COPY path, the retry path.

Real Postgres. The same rows go through each path and are read back column by column, so the
paths cannot drift apart; a failing write leaves nothing behind; the shard's events are logged
once per (type, subtype).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    MinerManifest,
    SyntheticJob,
    SyntheticJobBatch,
    SystemEvent,
)
from horde_common.telemetry import SystemEventRecord, configure_logging
from horde_job_runner.synthetic import persistence
from horde_job_runner.synthetic.persistence import BatchStore, ShardRows

pytestmark = pytest.mark.timeout(60)

HOTKEY = "5F" + "a" * 46
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[BatchStore]:
    engine = create_engine(db_url)
    yield BatchStore(session_factory(engine))
    await engine.dispose()


def shard_rows(batch_id: int, jobs: int, *, until: datetime | None = NOW) -> ShardRows:
    """`jobs` jobs with their three receipts, a manifest and two events each (one a miner fault)."""
    rows = ShardRows(batch_id=batch_id, accepting_results_until=until)
    for i in range(jobs):
        job_uuid = uuid.uuid4()
        common = {
            "job_uuid": job_uuid,
            "validator_hotkey": "5V" + "b" * 46,
            "miner_hotkey": HOTKEY,
            "validator_signature": "0x" + "ab" * 64,
            "miner_signature": None,
            "timestamp": NOW,
        }
        rows.jobs.append(
            {
                "job_uuid": job_uuid,
                "batch_id": batch_id,
                "miner_hotkey": HOTKEY,
                "miner_address": "127.0.0.1",
                "miner_address_ip_version": 4,
                "miner_port": 8000 + i,
                "executor_class": "always_on.gpu-24gb",
                "status": "FAILED" if i % 2 else "COMPLETED",
                "score": 0.0 if i % 2 else 1.5,
                "score_manifest_multiplier": None if i % 2 else 1.3,
                "comment": 'it\'s a "quoted" ünïcode comment\n' if i % 2 else "",
                "job_description": "Hashcat V2SyntheticJob",
                "time_took_us": None if i % 2 else 1_234_567,
                "excluded_from_scoring": bool(i % 3 == 0),
            }
        )
        rows.started_receipts.append(
            {
                **common,
                "executor_class": "always_on.gpu-24gb",
                "max_timeout": 53,
                "is_organic": False,
                "ttl": 2,
            }
        )
        rows.accepted_receipts.append({**common, "time_accepted": NOW, "ttl": 360})
        rows.finished_receipts.append({**common, "time_started": NOW, "time_took_us": 42, "score_str": "1.5"})
        rows.events.append(
            SystemEventRecord(
                "MINER_SYNTHETIC_JOB_FAILURE",
                "JOB_FAILED",
                f"job {job_uuid} failed",
                {"job_uuid": str(job_uuid), "nested": {"list": [1, 2.5, None, "x"]}},
                NOW,
            )
        )
        rows.events.append(
            SystemEventRecord("VALIDATOR_TELEMETRY", "SYNTHETIC_JOB", "", {"job_uuid": str(job_uuid)}, NOW)
        )
    rows.manifests.append(
        {
            "batch_id": batch_id,
            "miner_hotkey": HOTKEY,
            "executor_class": "always_on.gpu-24gb",
            "executor_count": jobs,
            "online_executor_count": jobs // 2,
        }
    )
    return rows


async def stored(store: BatchStore, batch_id: int, rows: ShardRows) -> dict[str, list[dict[str, Any]]]:
    """Every stored row of the shard, as comparable dicts (ids and server timestamps left out)."""
    skip = {"id", "created_at", "updated_at", "batch_id"}
    job_uuids = [r["job_uuid"] for r in rows.jobs]

    def plain(obj: Any) -> dict[str, Any]:
        return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in skip}

    out: dict[str, list[dict[str, Any]]] = {}
    async with store.sessions() as session:
        for name, model, where in (
            ("jobs", SyntheticJob, SyntheticJob.batch_id == batch_id),
            ("manifests", MinerManifest, MinerManifest.batch_id == batch_id),
            ("started", JobStartedReceipt, JobStartedReceipt.job_uuid.in_(job_uuids)),
            ("accepted", JobAcceptedReceipt, JobAcceptedReceipt.job_uuid.in_(job_uuids)),
            ("finished", JobFinishedReceipt, JobFinishedReceipt.job_uuid.in_(job_uuids)),
            (
                "events",
                SystemEvent,
                SystemEvent.data["job_uuid"].astext.in_([str(j) for j in job_uuids]),
            ),
        ):
            found = [plain(o) for o in (await session.scalars(select(model).where(where))).all()]
            out[name] = sorted(found, key=lambda d: json.dumps(d, sort_keys=True, default=str))
        batch = await session.get(SyntheticJobBatch, batch_id)
        assert batch is not None
        out["batch"] = [{"accepting_results_until": batch.accepting_results_until}]
    return out


@pytest.mark.parametrize("path", ["one_statement", "copy", "retry"])
async def test_every_path_stores_the_same_rows(
    store: BatchStore, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, _ = await store.create_batch()
    rows = shard_rows(batch_id, 6)
    if path == "copy":
        monkeypatch.setattr(persistence, "SMALL_SHARD_ROWS", 0)
    await store.persist(rows, fast=path != "retry")
    found = await stored(store, batch_id, rows)

    assert len(found["jobs"]) == 6 and len(found["manifests"]) == 1
    assert len(found["started"]) == len(found["accepted"]) == len(found["finished"]) == 6
    assert len(found["events"]) == 12
    by_uuid = {r["job_uuid"]: r for r in found["jobs"]}
    for job in rows.jobs:
        got = by_uuid[job["job_uuid"]]
        for key, value in job.items():
            if key != "batch_id":
                assert got[key] == value, (path, key)
    failure = next(e for e in found["events"] if e["subtype"] == "JOB_FAILED")
    assert failure["data"]["nested"] == {"list": [1, 2.5, None, "x"]}
    assert failure["timestamp"] == NOW and failure["sent"] is False and failure["service"] == "job-runner"
    assert found["accepted"][0]["time_accepted"] == NOW and found["finished"][0]["score_str"] == "1.5"
    assert found["batch"] == [{"accepting_results_until": NOW}]


async def test_the_deadline_only_moves_earlier(store: BatchStore) -> None:
    """Shards of one batch each bring their deadline; the batch keeps the earliest (LEAST)."""
    batch_id, _ = await store.create_batch()

    async def persist(until: datetime | None) -> datetime | None:
        rows = shard_rows(batch_id, 1, until=until)
        rows.manifests.clear()  # one manifest row per (miner, batch, class)
        await store.persist(rows)
        async with store.sessions() as session:
            batch = await session.get(SyntheticJobBatch, batch_id)
            assert batch is not None
            return batch.accepting_results_until

    assert await persist(NOW) == NOW
    assert await persist(NOW + timedelta(seconds=5)) == NOW
    assert await persist(None) == NOW
    assert await persist(NOW - timedelta(seconds=5)) == NOW - timedelta(seconds=5)


@pytest.mark.parametrize("small", [True, False])
async def test_a_failed_write_leaves_nothing(
    store: BatchStore, small: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duplicate in the LAST table written fails the write: the jobs written before it are gone too."""
    if not small:
        monkeypatch.setattr(persistence, "SMALL_SHARD_ROWS", 0)
    batch_id, _ = await store.create_batch()
    rows = shard_rows(batch_id, 3, until=None)  # no batch UPDATE first: nothing else opens a transaction
    rows.finished_receipts.append(dict(rows.finished_receipts[0]))  # job_uuid is unique there
    with pytest.raises(Exception, match=r"unique|duplicate"):
        await store.persist(rows)
    async with store.sessions() as session:
        jobs = (await session.scalars(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id))).all()
    assert jobs == []


async def test_events_are_logged_once_per_type_and_subtype(store: BatchStore) -> None:
    stream = io.StringIO()
    configure_logging("job-runner", "INFO", stream=stream)
    try:
        batch_id, _ = await store.create_batch()
        await store.persist(shard_rows(batch_id, 20))
    finally:
        configure_logging("job-runner", "WARNING", stream=io.StringIO())
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if "system_event" in line]
    failures = [line for line in lines if line.get("subtype") == "JOB_FAILED"]
    assert len(failures) == 1 and failures[0]["count"] == 20
    assert failures[0]["level"] == "warning"
