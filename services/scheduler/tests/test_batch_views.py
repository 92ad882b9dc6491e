"""`/debug/cycle` and `/debug/batches/<key>` against real Postgres: rows in, JSON out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.config import load_settings
from horde_common.db.models import Cycle, Neuron, SyntheticJob, SyntheticJobBatch, SystemEvent
from horde_common.service import ServiceContext, ServiceSpec
from horde_common.service.app import DebugItemView, DebugKeyError, build_app
from horde_scheduler.batch_views import (
    BatchRow,
    batch_state,
    batch_view,
    cycle_view,
    parse_batch_key,
)
from horde_scheduler.cycles import CycleParams, cycle_before, cycle_containing
from testing.fixtures_db import truncate

Sessions = async_sessionmaker[AsyncSession]
PARAMS = CycleParams()  # production grid on netuid 12, as `cycle_params_of` gives the default settings
HEAD = 100_000
CYCLE = cycle_containing(HEAD, PARAMS)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOKEN = "test-debug-token"


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, "neurons, cycles, synthetic_job_batches, synthetic_jobs, system_events CASCADE")
    yield sessions


@pytest.fixture()
def ctx(sessions: Sessions) -> ServiceContext:
    context = ServiceContext(spec=ServiceSpec(name="scheduler", port=0), settings=load_settings())
    context.session_factory = sessions
    return context


def _batch(block: int | None, cycle: Cycle | None, **values: object) -> SyntheticJobBatch:
    return SyntheticJobBatch(
        batch_uuid=uuid.uuid4(),
        block=block,
        cycle_id=cycle.id if cycle is not None else None,
        created_at=T0,
        shard_count=values.pop("shard_count", 1),
        is_missed=values.pop("is_missed", False),
        scored=values.pop("scored", False),
        **values,
    )


def _checkpoint(batch: SyntheticJobBatch, stage: str, at: datetime) -> SystemEvent:
    return SystemEvent(
        type="VALIDATOR_TELEMETRY",
        subtype="CHECKPOINT",
        long_description=stage,
        data={
            "batch_uuid": str(batch.batch_uuid),
            "batch_id": batch.id,
            "time": at.isoformat(),
            "stage": stage,
        },
        timestamp=at,
        service="job-runner",
    )


async def _seed(sessions: Sessions) -> dict[str, SyntheticJobBatch]:
    """A snapshot at HEAD; a missed batch last cycle; a completed batch in this cycle (two shards,
    jobs and checkpoints); a running debug batch; a planned batch next cycle."""
    previous = cycle_before(CYCLE, PARAMS)
    async with sessions.begin() as s:
        s.add(Neuron(block=HEAD - 5, uid=0, hotkey="old"))
        s.add(Neuron(block=HEAD, uid=0, hotkey="hk0", synced_at=T0))
        this_cycle = Cycle(start=CYCLE.start, stop=CYCLE.stop)
        last_cycle = Cycle(start=previous.start, stop=previous.stop)
        next_cycle = Cycle(start=CYCLE.stop, stop=CYCLE.stop + len(CYCLE))
        s.add_all([this_cycle, last_cycle, next_cycle])
        await s.flush()
        missed = _batch(previous.start + 40, last_cycle, is_missed=True)
        done = _batch(
            CYCLE.start + 30,
            this_cycle,
            shard_count=2,
            started_at=T0 + timedelta(minutes=1),
            accepting_results_until=T0 + timedelta(minutes=5),
            completed_at=T0 + timedelta(minutes=6),
            scored=True,
            scored_at=T0 + timedelta(minutes=7),
        )
        running = _batch(None, None, started_at=T0 + timedelta(minutes=8))
        planned = _batch(CYCLE.stop + 30, next_cycle)
        s.add_all([missed, done, running, planned])
        await s.flush()
        for i, (miner, status, excluded) in enumerate(
            [
                ("m1", "COMPLETED", False),
                ("m1", "COMPLETED", False),
                ("m2", "FAILED", True),
                ("m2", "FAILED", False),
                ("m2", "EXCUSED", False),  # declined while busy with our organic job
                ("m3", "EXCUSED", False),
                ("m3", "EXCUSED", False),
            ]
        ):
            s.add(
                SyntheticJob(
                    job_uuid=uuid.uuid4(),
                    batch_id=done.id,
                    miner_hotkey=miner,
                    status=status,
                    excluded_from_scoring=excluded,
                    comment=f"job {i}",
                )
            )
        s.add(SyntheticJob(job_uuid=uuid.uuid4(), batch_id=running.id, miner_hotkey="m3", status="PENDING"))
        for shard_offset in (0, 2):  # two shards reach each stage, two seconds apart
            for k, stage in enumerate(("BATCH_BEGIN", "_get_manifests", "BATCH_END")):
                s.add(_checkpoint(done, stage, T0 + timedelta(minutes=1 + k, seconds=shard_offset)))
        s.add(_checkpoint(running, "BATCH_BEGIN", T0 + timedelta(minutes=8)))
        # Not a checkpoint of `done`: another subtype, and the same stage name with no uuid match.
        s.add(
            SystemEvent(
                type="VALIDATOR_TELEMETRY",
                subtype="SYNTHETIC_BATCH",
                data={"batch_uuid": str(done.batch_uuid)},
                timestamp=T0,
            )
        )
    return {"missed": missed, "done": done, "running": running, "planned": planned}


async def test_empty_database(ctx: ServiceContext) -> None:
    assert await cycle_view(ctx) == {
        "block": None,
        "block_source": "no metagraph snapshot stored yet",
        "cycle": None,
        "slot": None,
        "next_batch": None,
    }
    assert await batch_view(ctx, "1") is None
    assert await batch_view(ctx, str(uuid.uuid4())) is None


async def test_bad_keys_are_key_errors(ctx: ServiceContext) -> None:
    for key in ("abc", "0", "-1", "1.5", str(2**63), "12345678-1234"):
        with pytest.raises(DebugKeyError):
            await batch_view(ctx, key)
    assert parse_batch_key(" 42 ") == 42
    u = uuid.uuid4()
    assert parse_batch_key(str(u).upper()) == u


async def test_cycle_view(ctx: ServiceContext, sessions: Sessions) -> None:
    rows = await _seed(sessions)
    view = await cycle_view(ctx)
    assert view["block"] == HEAD
    assert view["snapshot_synced_at"] == T0.isoformat()
    assert view["cycle"] == {
        "number": view["cycle"]["number"],
        "start": CYCLE.start,
        "stop": CYCLE.stop,
        "length": 722,
        "blocks_in": HEAD - CYCLE.start,
        "blocks_left": CYCLE.stop - HEAD,
    }
    done, planned = rows["done"], rows["planned"]
    assert view["slot"] == {
        "id": done.id,
        "uuid": str(done.batch_uuid),
        "block": CYCLE.start + 30,
        "state": "completed",
        "blocks_into_cycle": 30,
    }
    # The missed batch is earlier but given up; the debug batch has no block: the planned one is next.
    assert view["next_batch"] == {
        "id": planned.id,
        "uuid": str(planned.batch_uuid),
        "block": CYCLE.stop + 30,
        "state": "planned",
        "blocks_away": CYCLE.stop + 30 - HEAD,
    }


async def test_batch_view_of_a_completed_batch(ctx: ServiceContext, sessions: Sessions) -> None:
    rows = await _seed(sessions)
    done = rows["done"]
    by_id = await batch_view(ctx, str(done.id))
    assert by_id == await batch_view(ctx, str(done.batch_uuid))
    assert by_id is not None
    assert by_id["state"] == "completed"
    assert by_id["cycle"]["start"] == CYCLE.start and by_id["cycle"]["stop"] == CYCLE.stop
    assert by_id["started_at"] == (T0 + timedelta(minutes=1)).isoformat()
    assert by_id["accepting_results_until"] == (T0 + timedelta(minutes=5)).isoformat()
    assert by_id["completed_at"] == (T0 + timedelta(minutes=6)).isoformat()
    assert (by_id["scored"], by_id["is_missed"], by_id["shard_count"]) == (True, False, 2)
    assert by_id["jobs"] == {
        "total": 7,
        "by_status": {"COMPLETED": 2, "EXCUSED": 3, "FAILED": 2},
        "excluded_from_scoring": 1,
        "excused": 3,
        "excused_by_miner": {"m2": 1, "m3": 2},
    }
    assert by_id["miners"] == 3
    assert [c["stage"] for c in by_id["checkpoints"]] == ["BATCH_BEGIN", "_get_manifests", "BATCH_END"]
    begin = by_id["checkpoints"][0]
    assert begin == {
        "stage": "BATCH_BEGIN",
        "first_at": (T0 + timedelta(minutes=1)).isoformat(),
        "last_at": (T0 + timedelta(minutes=1, seconds=2)).isoformat(),
        "shards": 2,
    }


async def test_batch_view_of_missed_and_running_batches(ctx: ServiceContext, sessions: Sessions) -> None:
    rows = await _seed(sessions)
    missed = await batch_view(ctx, str(rows["missed"].id))
    assert missed is not None
    assert (missed["state"], missed["is_missed"], missed["started_at"]) == ("missed", True, None)
    assert missed["jobs"] == {
        "total": 0,
        "by_status": {},
        "excluded_from_scoring": 0,
        "excused": 0,
        "excused_by_miner": {},
    }
    assert missed["checkpoints"] == []

    running = await batch_view(ctx, str(rows["running"].batch_uuid))
    assert running is not None
    assert (running["state"], running["block"], running["cycle"]) == ("running", None, None)
    assert running["jobs"]["by_status"] == {"PENDING": 1}
    assert [c["stage"] for c in running["checkpoints"]] == ["BATCH_BEGIN"]


def test_batch_state_order() -> None:
    base = BatchRow(1, "u", 5, None, None, None, T0, None, None, None, None, False, False, 1)
    assert batch_state(base) == "planned"
    started = BatchRow(1, "u", 5, None, None, None, T0, T0, None, None, None, False, False, 1)
    assert batch_state(started) == "running"
    done = BatchRow(1, "u", 5, None, None, None, T0, T0, None, T0, None, False, False, 1)
    assert batch_state(done) == "completed"
    missed = BatchRow(1, "u", 5, None, None, None, T0, None, None, None, None, True, False, 1)
    assert batch_state(missed) == "missed"


async def test_served_over_http_behind_the_token(sessions: Sessions) -> None:
    """Wired as the scheduler's app.py wires them: `/debug/cycle` and `/debug/batches/<key>`."""

    @dataclass
    class KeyedSpec(ServiceSpec):
        debug_item_views: dict[str, DebugItemView] = field(default_factory=dict)

    rows = await _seed(sessions)
    spec = KeyedSpec(
        name="scheduler", port=0, debug_views={"cycle": cycle_view}, debug_item_views={"batches": batch_view}
    )
    context = ServiceContext(spec=spec, settings=load_settings(DEBUG_TOKEN=TOKEN))
    context.session_factory = sessions
    transport = httpx.ASGITransport(app=build_app(context, spec))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        done = rows["done"]
        assert (await client.get(f"/debug/batches/{done.id}")).status_code == 401
        assert (await client.get("/debug/cycle")).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        by_uuid = await client.get(f"/debug/batches/{done.batch_uuid}", headers=auth)
        assert by_uuid.status_code == 200 and by_uuid.json()["id"] == done.id
        assert (await client.get("/debug/batches/999999", headers=auth)).status_code == 404
        assert (await client.get("/debug/batches/nope", headers=auth)).status_code == 400
        cycle = await client.get("/debug/cycle", headers=auth)
        assert cycle.status_code == 200 and cycle.json()["slot"]["id"] == done.id
