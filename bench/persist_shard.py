"""Persisting one small shard (`_db_persist`): wall and CPU per persist, cold and warm connection.

The rows are those of a real shard: 8 simulated miners × 8 `always_on.gpu-24gb` executors (64 jobs,
localnet difficulty, instant miners, in this process), captured when the shard persists. They are
then written again `--repeat` times, each time under fresh job uuids and a fresh batch:

* **cold**: a new engine per persist, as `horde debug run-synthetic-jobs` has (connect, and the
  driver's first-use type introspection, included);
* **warm**: one engine whose connection already persisted once, as the job-runner service has.

Each is measured for the current path (`BatchStore.persist`) and for the previous one (`_old_persist`,
kept here), alternating, so that both see the same load on this shared machine.

Run: `uv run python bench/persist_shard.py [--repeat 10] [--label after]`.
Writes bench/results/batch-persist.json (one entry per label).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from batch import PG_ADMIN_URL, _create_db, _drop_db

RESULTS = Path(__file__).parent / "results" / "batch-persist.json"
MINERS, EXECUTORS = 8, 8


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _capture_rows(url: str) -> Any:
    """Run one real shard against in-process instant miners and return the rows it persisted."""
    from horde_common.bus.messages import MinerEndpoint
    from horde_common.db import create_engine, session_factory
    from horde_job_runner.synthetic.batch import run_shard
    from horde_job_runner.synthetic.generation import InlineJobFactory
    from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
    from horde_job_runner.synthetic.persistence import BatchStore, ShardRows
    from horde_localnet import keys
    from horde_localnet.miners import MinerFleet

    captured: list[ShardRows] = []

    class Capturing(BatchStore):
        async def persist(self, rows: ShardRows, *, fast: bool = True) -> None:
            captured.append(copy.deepcopy(rows))
            await super().persist(rows, fast=fast)

    engine = create_engine(url)
    store = Capturing(session_factory(engine))
    fleet = MinerFleet(
        MINERS,
        executors={"always_on.gpu-24gb": EXECUTORS},
        behaviours=dict.fromkeys(range(MINERS), "instant"),
    )
    await fleet.start()
    try:
        batch_id, _ = await store.create_batch()
        miners = [
            MinerEndpoint(hotkey=m.hotkey, uid=i, address="127.0.0.1", port=m.port)
            for i, m in enumerate(fleet.miners)
        ]
        deps = BatchDeps(
            keypair=keys.validator_keypair(0),
            store=store,
            dynamic=DynamicValues(),
            difficulty="localnet",
            timeouts=BatchTimeouts(spin_up={"always_on.gpu-24gb": 0.5}),
            job_factory=InlineJobFactory(),
        )
        result = await run_shard(ShardRequest(batch_id=batch_id, miners=miners, weights_version=4), deps)
        assert result.persisted, result.error
    finally:
        await fleet.stop()
        await engine.dispose()
    return captured[0]


def _fresh(rows: Any, batch_id: int) -> Any:
    """The same rows under new job uuids and another batch (job uuids are unique in every table)."""
    out = copy.deepcopy(rows)
    out.batch_id = batch_id
    mapping: dict[uuid.UUID, uuid.UUID] = {}
    for table in (out.jobs, out.started_receipts, out.accepted_receipts, out.finished_receipts):
        for row in table:
            row["job_uuid"] = mapping.setdefault(row["job_uuid"], uuid.uuid4())
            if "batch_id" in row:
                row["batch_id"] = batch_id
    for row in out.manifests:
        row["batch_id"] = batch_id
    return out


async def _old_persist(sessions: Any, rows: Any) -> None:
    """The first-attempt path before this change, kept here for an A/B under the same load: one
    SQLAlchemy transaction, one `COPY` per table (each a prepare and a copy), the events through
    `INSERT ... VALUES`, and one log line per event."""
    from sqlalchemy import func, insert, update

    from horde_common.db.models import (
        JobAcceptedReceipt,
        JobFinishedReceipt,
        JobStartedReceipt,
        MinerManifest,
        SyntheticJob,
        SyntheticJobBatch,
        SystemEvent,
    )
    from horde_common.telemetry.events import emit_events, event_rows

    async with sessions.begin() as session:
        if rows.accepting_results_until is not None:
            until = rows.accepting_results_until
            await session.execute(
                update(SyntheticJobBatch)
                .where(SyntheticJobBatch.id == rows.batch_id)
                .values(
                    accepting_results_until=func.least(
                        func.coalesce(SyntheticJobBatch.accepting_results_until, until), until
                    )
                )
            )
        conn = await session.connection()
        driver = (await conn.get_raw_connection()).driver_connection
        for model, table in (
            (SyntheticJob, rows.jobs),
            (MinerManifest, rows.manifests),
            (JobStartedReceipt, rows.started_receipts),
            (JobAcceptedReceipt, rows.accepted_receipts),
            (JobFinishedReceipt, rows.finished_receipts),
        ):
            if table:
                columns = list(table[0])
                await driver.copy_records_to_table(
                    model.__tablename__,
                    records=[tuple(r[c] for c in columns) for r in table],
                    columns=columns,
                )
        events = event_rows(rows.events, service="job-runner")
        await session.execute(insert(SystemEvent), events)
        emit_events(events, summary=False)


async def _measure(url: str, rows: Any, repeat: int) -> dict[str, Any]:
    """Old and new path, alternating, each on a cold and on a warm engine."""
    from horde_common.db import create_engine, session_factory
    from horde_job_runner.synthetic.persistence import BatchStore

    async def one(store: BatchStore, old: bool) -> tuple[float, float]:
        batch_id, _ = await store.create_batch()
        fresh = _fresh(rows, batch_id)
        c0, t0 = _cpu(), time.perf_counter()
        if old:
            await _old_persist(store.sessions, fresh)
        else:
            await store.persist(fresh, fast=True)
        return time.perf_counter() - t0, _cpu() - c0

    runs: dict[str, list[tuple[float, float]]] = {
        "cold_old": [],
        "cold_new": [],
        "warm_old": [],
        "warm_new": [],
    }
    warm_engine = create_engine(url)
    warm = BatchStore(session_factory(warm_engine))
    await one(warm, True)
    await one(warm, False)
    for _ in range(repeat):
        for old in (True, False):
            engine = create_engine(url)
            # The batch row is created on the same engine first, as the shard does (reads first).
            runs["cold_old" if old else "cold_new"].append(
                await one(BatchStore(session_factory(engine)), old)
            )
            await engine.dispose()
            runs["warm_old" if old else "warm_new"].append(await one(warm, old))
    await warm_engine.dispose()

    def summary(values: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "wall_ms_median": round(statistics.median(v[0] for v in values) * 1000, 1),
            "cpu_ms_median": round(statistics.median(v[1] for v in values) * 1000, 1),
            "wall_ms_min": round(min(v[0] for v in values) * 1000, 1),
        }

    return {name: summary(values) for name, values in runs.items()}


async def main_async(repeat: int) -> dict[str, Any]:
    from horde_common.db.migrate import upgrade

    name = f"horde_bench_persist_{uuid.uuid4().hex[:8]}"
    await _create_db(name)
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        rows = await _capture_rows(url)
        out = await _measure(url, rows, repeat)
        out["rows"] = {
            "jobs": len(rows.jobs),
            "manifests": len(rows.manifests),
            "receipts": len(rows.started_receipts)
            + len(rows.accepted_receipts)
            + len(rows.finished_receipts),
            "events": len(rows.events),
        }
        return out
    finally:
        await _drop_db(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    from horde_common.telemetry import configure_logging

    configure_logging("job-runner", "WARNING", stream=sys.stderr)
    out = asyncio.run(main_async(args.repeat))
    data = (
        json.loads(RESULTS.read_text())
        if RESULTS.exists()
        else {"benchmark": "persist one shard", "labels": {}}
    )
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["cpus"] = os.cpu_count()
    data["labels"][args.label] = out
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    for label, entry in data["labels"].items():
        print(f"{label}: rows {entry['rows']}")
        for name in ("cold_old", "cold_new", "warm_old", "warm_new", "cold", "warm"):
            if name in entry:
                print(f"  {name:>9}: {entry[name]}")


if __name__ == "__main__":
    main()
