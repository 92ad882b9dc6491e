"""`horde batches` run as operators run it (a subprocess) against real Postgres: empty, missed, running,
completed; `show` agrees with the scheduler's `/debug/batches/<key>`; a dead database is one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import Cycle, SyntheticJob, SyntheticJobBatch, SystemEvent
from horde_scheduler.batch_views import batch_report
from testing.fixtures_db import truncate

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def horde(*args: str, database_url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", *args],
        env={**os.environ, "COLUMNS": "200", "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, "cycles, synthetic_job_batches, synthetic_jobs, system_events CASCADE")
    yield sessions


async def _seed(sessions: Sessions) -> dict[str, SyntheticJobBatch]:
    """A missed batch, a completed one (jobs, checkpoints from two shards), a running one, a planned one."""
    async with sessions.begin() as s:
        cycle = Cycle(start=1000, stop=1722)
        s.add(cycle)
        await s.flush()

        def batch(block: int | None, **values: object) -> SyntheticJobBatch:
            return SyntheticJobBatch(
                batch_uuid=uuid.uuid4(),
                block=block,
                cycle_id=cycle.id if block is not None else None,
                created_at=T0,
                shard_count=values.pop("shard_count", 1),
                is_missed=values.pop("is_missed", False),
                scored=values.pop("scored", False),
                **values,
            )

        missed = batch(1010, is_missed=True)
        done = batch(
            1030,
            shard_count=2,
            started_at=T0 + timedelta(minutes=1),
            accepting_results_until=T0 + timedelta(minutes=5),
            completed_at=T0 + timedelta(minutes=6),
            scored=True,
            scored_at=T0 + timedelta(minutes=7),
        )
        running = batch(None, started_at=T0 + timedelta(minutes=8))
        planned = batch(1700)
        for row in (missed, done, running, planned):  # one at a time: ids in this order
            s.add(row)
            await s.flush()
        for miner, status, excluded in (
            ("m1", "COMPLETED", False),
            ("m1", "COMPLETED", False),
            ("m2", "FAILED", True),
            ("m2", "FAILED", False),
            ("m2", "EXCUSED", False),  # declined while busy with our organic job
        ):
            s.add(
                SyntheticJob(
                    job_uuid=uuid.uuid4(),
                    batch_id=done.id,
                    miner_hotkey=miner,
                    status=status,
                    excluded_from_scoring=excluded,
                )
            )
        s.add(SyntheticJob(job_uuid=uuid.uuid4(), batch_id=running.id, miner_hotkey="m3", status="PENDING"))
        for shard_offset in (0, 2):
            for k, stage in enumerate(("BATCH_BEGIN", "_get_manifests", "BATCH_END")):
                at = T0 + timedelta(minutes=1 + k, seconds=shard_offset)
                s.add(
                    SystemEvent(
                        type="VALIDATOR_TELEMETRY",
                        subtype="CHECKPOINT",
                        long_description=stage,
                        data={"batch_uuid": str(done.batch_uuid), "batch_id": done.id, "stage": stage},
                        timestamp=at,
                    )
                )
    return {"missed": missed, "done": done, "running": running, "planned": planned}


async def test_empty_database(sessions: Sessions, db_url: str) -> None:
    out = horde("batches", database_url=db_url)
    assert out.returncode == 0, out.stderr
    assert "no synthetic batches yet" in out.stdout
    as_json = horde("batches", "--json", database_url=db_url)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == []
    missing = horde("batches", "show", "1", database_url=db_url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "no batch '1'"


async def test_list(sessions: Sessions, db_url: str) -> None:
    rows = await _seed(sessions)
    out = horde("batches", "--json", database_url=db_url)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    assert [e["id"] for e in entries] == [rows[k].id for k in ("planned", "running", "done", "missed")]
    by_state = {e["state"]: e for e in entries}
    assert set(by_state) == {"planned", "running", "completed", "missed"}
    done = by_state["completed"]
    assert done["jobs"] == {"ok": 2, "excused": 1, "failed": 2, "pending": 0, "excluded_from_scoring": 1}
    assert (done["miners"], done["shard_count"], done["block"]) == (2, 2, 1030)
    assert done["cycle"]["start"] == 1000 and done["cycle"]["stop"] == 1722
    assert by_state["running"]["cycle"] is None and by_state["running"]["jobs"]["pending"] == 1
    assert by_state["missed"]["started_at"] is None

    limited = json.loads(horde("batches", "--json", "--limit", "2", database_url=db_url).stdout)
    assert [e["id"] for e in limited] == [rows["planned"].id, rows["running"].id]

    table = horde("batches", database_url=db_url)
    assert table.returncode == 0, table.stderr
    for word in ("planned", "running", "completed", "missed", "1000–1722", "2/1/2/1", "12-01 12:00:00"):
        assert word in table.stdout, (word, table.stdout)


async def test_show_matches_the_debug_view(sessions: Sessions, db_url: str) -> None:
    rows = await _seed(sessions)
    for name in ("done", "missed", "running"):
        batch = rows[name]
        async with sessions() as session:
            view = await batch_report(session, batch.id)
        for key in (str(batch.id), str(batch.batch_uuid)):
            out = horde("batches", "show", key, "--json", database_url=db_url)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == view, name
    shown = horde("batches", "show", str(rows["done"].id), database_url=db_url)
    assert shown.returncode == 0, shown.stderr
    for word in (
        "completed",
        "BATCH_BEGIN",
        "_get_manifests",
        "COMPLETED 2, EXCUSED 1, FAILED 2",
        "excluded from scoring",
        "excused",
        "1 (m2: 1)",
    ):
        assert word in shown.stdout, (word, shown.stdout)
    bad = horde("batches", "show", "not-a-batch", database_url=db_url)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "not a batch id or uuid: 'not-a-batch'"


def test_unreachable_database_is_one_line_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    out = horde("batches", database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/horde", timeout=30)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("database unreachable:"), out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - started < 15  # interpreter start plus at most the 5 s connect timeout
