"""The batch coordinator's passes against real Postgres: dispatching a due batch into shards, the
deadlines, and which batch is due.

The loop body (`coordinate_once`, `sweep`) is driven with explicit head blocks and times, so no
test depends on a clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BatchShardRequested,
)
from horde_common.db.models import SyntheticJobBatch, SystemEvent
from horde_common.dynamic_config import DynamicConfig
from horde_scheduler.batch_barrier import shard_completed
from horde_scheduler.coordinator import CoordinatorState, sweep
from testing.coordinator_rows import (
    ACCEPT,
    BLOCK,
    CYCLE,
    NEURONS,
    OWN,
    PARAMS,
    RELEASE,
    SHARD_DEADLINE,
    T0,
    TABLES,
    Sessions,
    add_batch,
    all_rows,
    batch_row,
    dispatched_batch,
    outbox,
    run_pass,
    shards,
    store_neurons,
)
from testing.fixtures_db import truncate


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, TABLES)
    yield sessions


async def test_due_batch_is_split_into_shards_with_their_requests(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK - 7, NEURONS[:2])  # an older snapshot is not used
    batch_id = await dispatched_batch(sessions, shard_size=2)

    rows = await shards(sessions, batch_id)
    assert [(s.shard_index, s.miner_hotkeys, s.state) for s in rows] == [
        (0, ["m0", "m1"], "requested"),
        (1, ["m4", "m5"], "requested"),
        (2, ["m6"], "requested"),
    ]
    assert {s.deadline_at for s in rows} == {SHARD_DEADLINE}
    assert (await batch_row(sessions, batch_id)).shard_count == 3

    requests = [
        BatchShardRequested.model_validate(b) for b in await outbox(sessions, "batch.shard.requested")
    ]
    assert [(r.shard_index, r.shard_count) for r in requests] == [(0, 3), (1, 3), (2, 3)]
    first = requests[0]
    assert (first.batch_id, first.cycle_start, first.cycle_stop) == (batch_id, CYCLE.start, CYCLE.stop)
    assert [(m.hotkey, m.uid, m.address, m.port) for m in first.miners] == [
        ("m0", 0, "10.0.0.1", 8000),
        ("m1", 1, "10.0.0.2", 8001),
    ]
    assert {(r.deadlines.accept_deadline, r.deadlines.release_deadline) for r in requests} == {
        (ACCEPT, RELEASE)
    }
    assert first.weights_version == DynamicConfig.defaults().weights_version


async def test_one_shard_for_all_miners_by_default(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions, shard_size=None)
    [only] = await shards(sessions, batch_id)
    assert only.miner_hotkeys == ["m0", "m1", "m4", "m5", "m6"]  # not ours, not the idle one
    assert len(await outbox(sessions, "batch.shard.requested")) == 1


async def test_dispatch_happens_once(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    again = await run_pass(sessions, now=T0 + timedelta(seconds=1))
    assert again.due is None and again.dispatched is None
    assert len(await shards(sessions, batch_id)) == 3


async def test_no_serving_miner_completes_at_once(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK, [(0, OWN, "10.0.0.3", 8002, True), (1, "idle", "0.0.0.0", 0, False)])
    batch_id = await add_batch(sessions)
    outcome = await run_pass(sessions)
    assert outcome.dispatched is not None and outcome.dispatched.shard_count == 0
    assert await shards(sessions, batch_id) == []
    row = await batch_row(sessions, batch_id)
    assert (row.completed_at, row.shard_count) == (T0, 0)
    assert await outbox(sessions, "batch.shard.requested") == []
    [done] = [BatchCompleted.model_validate(b) for b in await outbox(sessions, "batch.completed")]
    assert (done.batch_id, done.cycle_start, done.cycle_stop) == (batch_id, CYCLE.start, CYCLE.stop)


# --- deadlines ----------------------------------------------------------------------------------------


async def test_release_at_the_deadline_when_not_every_shard_is_ready(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    await sweep(sessions, now=RELEASE - timedelta(seconds=1), params=PARAMS)
    assert await outbox(sessions, "batch.released") == []
    outcome = await sweep(sessions, now=RELEASE, params=PARAMS)
    assert outcome.released == (batch_id,)
    await sweep(sessions, now=RELEASE + timedelta(seconds=5), params=PARAMS)
    [released] = [BatchReleased.model_validate(b) for b in await outbox(sessions, "batch.released")]
    assert (released.batch_id, released.released_at) == (batch_id, RELEASE)


async def test_a_silent_shard_fails_at_its_deadline_and_the_batch_completes(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    async with sessions.begin() as s:
        for index in (0, 1):
            msg = BatchShardCompleted(batch_id=batch_id, shard_index=index, job_count=3, ok=True)
            await shard_completed(s, msg, now=T0 + timedelta(seconds=600))
    grace = timedelta(seconds=PARAMS.completion_grace_s)

    await sweep(sessions, now=SHARD_DEADLINE + grace, params=PARAMS)  # not past the grace yet
    assert [s.state for s in await shards(sessions, batch_id)] == ["completed", "completed", "requested"]

    late = SHARD_DEADLINE + grace + timedelta(seconds=1)
    outcome = await sweep(sessions, now=late, params=PARAMS)
    assert (outcome.failed_shards, outcome.completed) == (((batch_id, 2),), (batch_id,))
    assert [s.state for s in await shards(sessions, batch_id)] == ["completed", "completed", "failed"]
    [event] = await all_rows(sessions, SystemEvent, SystemEvent.type == "VALIDATOR_FAILURE")
    assert (event.subtype, event.data["miner_hotkeys"], event.data["shard_index"]) == (
        "GENERIC_ERROR",
        ["m6"],
        2,
    )
    assert await all_rows(sessions, SystemEvent, SystemEvent.type == "MINER_SYNTHETIC_JOB_FAILURE") == []
    assert (await batch_row(sessions, batch_id)).completed_at == late
    assert [b["batch_id"] for b in await outbox(sessions, "batch.completed")] == [batch_id]

    # The runner's report arrives after all: ignored, nothing published again.
    async with sessions.begin() as s:
        msg = BatchShardCompleted(batch_id=batch_id, shard_index=2, job_count=1, ok=True)
        assert await shard_completed(s, msg, now=late + timedelta(seconds=1)) == []
    assert (await shards(sessions, batch_id))[2].state == "failed"
    await sweep(sessions, now=late + timedelta(seconds=2), params=PARAMS)
    assert len(await outbox(sessions, "batch.completed")) == 1


async def test_lost_dispatch_is_given_up(sessions: Sessions) -> None:
    batch_id = await add_batch(sessions)
    async with sessions.begin() as s:  # started by `due_batches`, then the scheduler died
        row = await s.get(SyntheticJobBatch, batch_id)
        assert row is not None
        row.started_at = T0
    await sweep(sessions, now=T0 + timedelta(seconds=PARAMS.undispatched_after_s - 1), params=PARAMS)
    assert (await batch_row(sessions, batch_id)).completed_at is None
    outcome = await sweep(
        sessions, now=T0 + timedelta(seconds=PARAMS.undispatched_after_s + 1), params=PARAMS
    )
    assert outcome.given_up == (batch_id,)
    assert len(await all_rows(sessions, SystemEvent, SystemEvent.type == "VALIDATOR_FAILURE")) == 1
    assert [b["batch_id"] for b in await outbox(sessions, "batch.completed")] == [batch_id]


# --- the due batch ------------------------------------------------------------------------------------


async def test_a_block_that_never_comes_is_a_failed_wait(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK)
    batch_id = await add_batch(sessions, BLOCK + 1)
    state = CoordinatorState()
    polls = (await run_pass(sessions, state=state)).due.plan.max_polls
    assert polls == 6  # one block of 12 s, twice over, every 4 s
    for _ in range(polls - 1):
        assert (await run_pass(sessions, state=state)).failed_to_wait is None
    assert (await run_pass(sessions, state=state)).failed_to_wait == batch_id
    [event] = await all_rows(sessions, SystemEvent, SystemEvent.subtype == "FAILED_TO_WAIT")
    assert (event.type, event.data["block"]) == ("VALIDATOR_SYNTHETIC_JOBS_FAILURE", BLOCK + 1)
    assert (await batch_row(sessions, batch_id)).started_at is None
    reached = await run_pass(sessions, head=BLOCK + 1, state=state)
    assert reached.dispatched is not None and reached.dispatched.batch_id == batch_id


async def test_no_chain_still_applies_deadlines(sessions: Sessions) -> None:
    batch_id = await dispatched_batch(sessions)
    outcome = await run_pass(sessions, head=None, now=RELEASE)
    assert outcome.due is None and outcome.sweep.released == (batch_id,)


async def test_unstaggered_batches_start_one_at_a_time(sessions: Sessions) -> None:
    await store_neurons(sessions, BLOCK)
    state = CoordinatorState()
    first = await run_pass(sessions, head=None, state=state, dont_stagger=True)
    assert first.dispatched is not None and first.dispatched.shard_count == 1
    interval = timedelta(seconds=PARAMS.unstaggered_interval_s)
    assert (await run_pass(sessions, now=T0 + interval / 2, state=state, dont_stagger=True)).due is None
    assert (
        await run_pass(sessions, now=T0 + interval, state=state, dont_stagger=True)
    ).due is None  # in flight
    [request] = [
        BatchShardRequested.model_validate(b) for b in await outbox(sessions, "batch.shard.requested")
    ]
    assert (request.batch_id, request.cycle_start, request.cycle_stop) == (first.dispatched.batch_id, 0, 0)
