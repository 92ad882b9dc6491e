"""The batch planner against real Postgres and the localnet chain simulator over real sockets.

`schedule_once` and `due_batches` are driven with explicit head blocks, so nothing depends on the
simulator's clock: it is frozen at `HEAD`, and every head used here is at or below it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.chain import LocalChainClient
from horde_common.config import load_settings
from horde_common.db.models import Cycle, Neuron, SyntheticJobBatch, SystemEvent, Validator
from horde_common.service import ServiceContext, ServiceSpec
from horde_localnet.chain import running_chain
from horde_localnet.chain_spec import LocalnetSpec, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from horde_scheduler.planner import due_batches, run_planner_loop, schedule_once
from horde_scheduler.planning import PlannerParams, PlanStatus, planner_params_from
from horde_scheduler.slots import RunAction, seed_block, when_to_run
from testing.fixtures_db import truncate

NETUID = 12
FROZEN = 3600.0  # a block interval so long that the simulator's head never moves during a test
HEAD = 3000  # the simulator's head; cycles of netuid 12: [1430, 2152), [2152, 2874), [2874, 3596)
CYCLE = range(1430, 2152)
NEXT = range(2152, 2874)
OWN = "own-hotkey"
# No real pauses: retries are exercised, not waited for.
PARAMS = dataclasses.replace(
    planner_params_from(netuid=NETUID),
    call_timeout_s=2.0,
    retry_delays_s=(0.0, 0.0),
    plan_interval_s=0.02,
    backoff_first_s=0.02,
    backoff_max_s=0.05,
)
Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, "neurons, validators, cycles, synthetic_job_batches, system_events CASCADE")
    yield sessions


@pytest.fixture(scope="module")
def spec() -> LocalnetSpec:
    base = load_spec(DEFAULT_METAGRAPH_PATH)
    return base.model_copy(update={"chain": base.chain.model_copy(update={"start_block": HEAD})})


@pytest.fixture()
async def chain(spec: LocalnetSpec) -> AsyncIterator[LocalChainClient]:
    async with running_chain(spec, block_interval=FROZEN) as rc, LocalChainClient(rc.url) as client:
        assert rc.sim.current_block() == HEAD
        yield client


def refused_url() -> str:
    """A local URL nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def no_pause(_seconds: float) -> None:
    return None


# Validators ranked by stake: v1 (9000), OWN (5000), v2 (3000), v3 (2000); "m" is under the floor.
NEURONS = [(0, "v1", 9000.0), (1, "m", 10.0), (2, OWN, 5000.0), (3, "v2", 3000.0), (4, "v3", 2000.0)]


async def store_neurons(
    sessions: Sessions, block: int, neurons: Sequence[tuple[int, str, float]] = NEURONS
) -> None:
    async with sessions.begin() as s:
        await s.execute(
            pg_insert(Neuron).values(
                [{"block": block, "uid": u, "hotkey": h, "stake": st} for u, h, st in neurons]
            )
        )


async def rows(sessions: Sessions, model: Any, *where: Any) -> list[Any]:
    async with sessions() as s:
        return list((await s.scalars(select(model).where(*where).order_by(model.id))).all())


async def events(sessions: Sessions, type_: str, subtype: str) -> list[SystemEvent]:
    return await rows(sessions, SystemEvent, SystemEvent.type == type_, SystemEvent.subtype == subtype)


async def add_batch(sessions: Sessions, block: int | None, **values: Any) -> int:
    async with sessions.begin() as s:
        batch = SyntheticJobBatch(block=block, **values)
        s.add(batch)
        await s.flush()
        return batch.id


async def plan(
    sessions: Sessions, chain: Any, head: int, own: str = OWN, params: PlannerParams = PARAMS
) -> Any:
    return await schedule_once(sessions, chain, head=head, own_hotkey=own, params=params, sleep=no_pause)


# --- schedule_once -----------------------------------------------------------------------------------


async def test_schedules_one_batch_at_the_slot(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    outcome = await plan(sessions, chain, head=CYCLE.start + 10)

    seed = await chain.block_hash(seed_block(CYCLE))
    expected = when_to_run(CYCLE, ["v1", OWN, "v2", "v3"], OWN, seed)
    [cp] = outcome.cycles
    assert (cp.cycle, cp.status, cp.validator_count) == (CYCLE, PlanStatus.SCHEDULED, 4)
    assert (cp.block, cp.index) == (expected.block, expected.index)
    [cycle] = await rows(sessions, Cycle)
    assert (cycle.start, cycle.stop) == (CYCLE.start, CYCLE.stop)
    [batch] = await rows(sessions, SyntheticJobBatch)
    assert (batch.id, batch.block, batch.cycle_id) == (cp.batch_id, expected.block, cycle.id)
    assert batch.started_at is None and not batch.is_missed
    listed = await rows(sessions, Validator)
    assert [(v.block, v.hotkey, v.position) for v in listed] == [
        (CYCLE.start, "v1", 0),
        (CYCLE.start, OWN, 1),
        (CYCLE.start, "v2", 2),
        (CYCLE.start, "v3", 3),
    ]
    [event] = await events(sessions, "VALIDATOR_SYNTHETIC_JOB_SCHEDULED", "SUCCESS")
    assert event.data == {"seed": seed, "index": expected.index, "block": expected.block}


async def test_already_scheduled_adds_nothing(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    first = await plan(sessions, chain, head=CYCLE.start + 5)
    await store_neurons(sessions, CYCLE.start + 5, [(0, OWN, 1e6)])  # a later snapshot changes nothing
    again = await plan(sessions, chain, head=CYCLE.start + 100)
    assert first.cycles[0].status is PlanStatus.SCHEDULED
    assert again.cycles[0].status is PlanStatus.ALREADY_SCHEDULED
    assert again.cycles[0].block == first.cycles[0].block
    assert len(await rows(sessions, SyntheticJobBatch)) == 1
    assert len(await rows(sessions, Cycle)) == 1
    assert len(await events(sessions, "VALIDATOR_SYNTHETIC_JOB_SCHEDULED", "SUCCESS")) == 1


async def test_a_batch_of_any_kind_in_the_cycle_counts(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    await add_batch(sessions, CYCLE.stop - 1, is_missed=True)
    outcome = await plan(sessions, chain, head=CYCLE.stop - 1)
    assert outcome.cycles[0].status is PlanStatus.ALREADY_SCHEDULED


async def test_not_on_the_list_schedules_nothing(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    first = await plan(sessions, chain, head=CYCLE.start + 1, own="stranger")
    again = await plan(sessions, chain, head=CYCLE.start + 2, own="stranger")
    assert [c.status for c in (*first.cycles, *again.cycles)] == [PlanStatus.NOT_A_VALIDATOR] * 2
    assert first.cycles[0].validator_count == 4
    assert await rows(sessions, SyntheticJobBatch) == []
    [event] = await events(sessions, "WEIGHT_SETTING_FAILURE", "GENERIC_ERROR")  # once per cycle
    assert event.data["cycle_start"] == CYCLE.start and event.data["hotkey"] == "stranger"
    assert len(await rows(sessions, Validator)) == 4  # the list is stored all the same


async def test_waits_for_a_snapshot_of_the_cycle_start(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start - 2)  # the previous cycle's: not the list of this one
    waiting = await plan(sessions, chain, head=CYCLE.start + 1)
    assert waiting.cycles[0].status is PlanStatus.NO_SNAPSHOT
    assert await rows(sessions, SyntheticJobBatch) == [] and await rows(sessions, Validator) == []
    # Snapshots at start - 2 and start + 3: the nearer one (before the start) is the list.
    await store_neurons(sessions, CYCLE.start + 3, [(0, "v9", 1e5), (2, OWN, 5000.0)])
    done = await plan(sessions, chain, head=CYCLE.start + 3)
    assert done.cycles[0].status is PlanStatus.SCHEDULED
    assert done.cycles[0].validator_count == 4


async def test_concurrent_schedulers_write_one_row(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    outcomes = await asyncio.gather(*(plan(sessions, chain, head=CYCLE.start + 7) for _ in range(4)))
    statuses = sorted(o.cycles[0].status for o in outcomes)
    assert statuses == [PlanStatus.ALREADY_SCHEDULED] * 3 + [PlanStatus.SCHEDULED]
    assert len(await rows(sessions, SyntheticJobBatch)) == 1
    assert len(await rows(sessions, Validator)) == 4
    assert len(await events(sessions, "VALIDATOR_SYNTHETIC_JOB_SCHEDULED", "SUCCESS")) == 1


async def test_boundary_block_plans_the_next_cycle_too(sessions: Sessions, chain: LocalChainClient) -> None:
    await store_neurons(sessions, CYCLE.start)
    await store_neurons(sessions, NEXT.start)
    outcome = await plan(sessions, chain, head=CYCLE.stop)  # block 2152 belongs to [1430, 2152)
    assert [(c.cycle, c.status) for c in outcome.cycles] == [
        (CYCLE, PlanStatus.SCHEDULED),
        (NEXT, PlanStatus.SCHEDULED),
    ]
    blocks = [b.block for b in await rows(sessions, SyntheticJobBatch)]
    assert blocks[0] in CYCLE and blocks[1] in NEXT
    assert len(await rows(sessions, Cycle)) == 2


async def test_past_unstarted_batches_are_flagged_missed_once(
    sessions: Sessions, chain: LocalChainClient
) -> None:
    await store_neurons(sessions, CYCLE.start)
    old = await add_batch(sessions, 1000)
    edge = await add_batch(sessions, 1500)  # exactly max_oversleep (3) behind: still runnable
    ran = await add_batch(sessions, 900, started_at=None, is_missed=False)
    async with sessions.begin() as s:  # a started batch is never missed
        await s.execute(
            text("UPDATE synthetic_job_batches SET started_at = now() WHERE id = :id"), {"id": ran}
        )
    first = await plan(sessions, chain, head=1503)
    again = await plan(sessions, chain, head=1503)
    assert [m.batch_id for m in first.missed] == [old] and again.missed == ()
    flagged = {b.id: b.is_missed for b in await rows(sessions, SyntheticJobBatch)}
    assert (flagged[old], flagged[edge], flagged[ran]) == (True, False, False)
    [event] = await events(sessions, "VALIDATOR_SYNTHETIC_JOBS_FAILURE", "OVERSLEPT")
    assert (event.data["batch_id"], event.data["block"], event.data["current_block"]) == (old, 1000, 1503)


async def test_seed_unreadable_is_a_connectivity_event(sessions: Sessions) -> None:
    await store_neurons(sessions, CYCLE.start)
    async with LocalChainClient(refused_url(), timeout=2.0) as down:
        outcome = await plan(sessions, down, head=CYCLE.start + 1)
    assert outcome.cycles[0].status is PlanStatus.CHAIN_ERROR and outcome.failed
    assert await rows(sessions, SyntheticJobBatch) == []
    [event] = await events(sessions, "VALIDATOR_FAILURE", "SUBTENSOR_CONNECTIVITY_ERROR")
    assert event.data["block"] == seed_block(CYCLE) and "3 tries" in event.data["error"]


# --- due_batches -------------------------------------------------------------------------------------


async def due(sessions: Sessions, head: int, **kw: Any) -> Any:
    return await due_batches(sessions, head=head, params=PARAMS, **kw)


async def started(sessions: Sessions) -> dict[int, bool]:
    return {b.id: b.started_at is not None for b in await rows(sessions, SyntheticJobBatch)}


async def test_nothing_due(sessions: Sessions) -> None:
    await add_batch(sessions, 1510)
    assert await due(sessions, 1500) is None  # 10 blocks ahead: outside the 3-block window


async def test_due_at_its_block_is_started_once(sessions: Sessions) -> None:
    bid = await add_batch(sessions, 1500)
    first = await due(sessions, 1500)
    assert (first.batch_id, first.block, first.plan.action) == (bid, 1500, RunAction.RUN_NOW)
    assert first.started
    assert await started(sessions) == {bid: True}
    assert await due(sessions, 1500) is None


async def test_undersleep_waits_without_starting(sessions: Sessions) -> None:
    bid = await add_batch(sessions, 1502)
    waiting = await due(sessions, 1500)
    assert (waiting.plan.action, waiting.plan.target_block, waiting.started) == (RunAction.WAIT, 1502, False)
    assert waiting.plan.max_polls == 12  # ceil(2 blocks × 12 s × 2 / 4 s)
    assert await started(sessions) == {bid: False}
    assert (await due(sessions, 1502)).plan.action is RunAction.RUN_NOW


async def test_oversleep_within_margin_runs_with_a_warning(sessions: Sessions) -> None:
    bid = await add_batch(sessions, 1497)
    late = await due(sessions, 1500)
    assert (late.batch_id, late.plan.action, late.started) == (bid, RunAction.RUN_OVERSLEPT, True)
    [event] = await events(sessions, "VALIDATOR_OVERSLEPT_SCHEDULED_JOB_WARNING", "WARNING")
    assert (event.data["should_run_at_block"], event.data["current_block"]) == (1497, 1500)
    assert await due(sessions, 1496 + 8) is None  # beyond the margin nothing is picked


async def test_several_in_the_window_take_the_earliest(sessions: Sessions) -> None:
    later = await add_batch(sessions, 1501)
    earlier = await add_batch(sessions, 1499)
    first = await due(sessions, 1500)
    assert (first.batch_id, first.others_due) == (earlier, 1)
    second = await due(sessions, 1501)
    assert (second.batch_id, second.plan.action, second.others_due) == (later, RunAction.RUN_NOW, 0)


async def test_missed_batches_are_never_started(sessions: Sessions) -> None:
    await add_batch(sessions, 1500, is_missed=True)
    assert await due(sessions, 1500) is None


async def test_concurrent_runners_start_a_batch_once(sessions: Sessions) -> None:
    bid = await add_batch(sessions, 1500)
    results = await asyncio.gather(*(due(sessions, 1500) for _ in range(4)))
    winners = [r for r in results if r is not None]
    assert [(w.batch_id, w.started) for w in winners] == [(bid, True)]


async def test_dont_stagger_starts_an_unscheduled_batch(sessions: Sessions) -> None:
    await add_batch(sessions, 1500)
    debug = await due(sessions, 1500, dont_stagger=True)
    assert (debug.plan.action, debug.block, debug.cycle_id) == (RunAction.RUN_UNSCHEDULED, None, None)
    assert debug.started
    unscheduled = await rows(sessions, SyntheticJobBatch, SyntheticJobBatch.block.is_(None))
    assert [b.id for b in unscheduled] == [debug.batch_id] and unscheduled[0].started_at is not None


# --- the loop ----------------------------------------------------------------------------------------


def context(sessions: Sessions, chain_url: str) -> ServiceContext:
    ctx = ServiceContext(
        spec=ServiceSpec(name="scheduler", port=0),
        settings=load_settings(LOCALNET_CHAIN_URL=chain_url, BITTENSOR_NETUID=NETUID),
    )
    ctx.session_factory = sessions
    return ctx


async def eventually(check: Callable[[], Awaitable[Any]], within_s: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy, failing after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_loop_plans_the_current_cycle(sessions: Sessions, spec: LocalnetSpec) -> None:
    current = range(2874, 3596)
    await store_neurons(sessions, current.start)
    async with running_chain(spec, block_interval=FROZEN) as rc:
        ctx = context(sessions, rc.url)
        task = asyncio.create_task(run_planner_loop(ctx, PARAMS, own_hotkey=OWN))
        batches = await eventually(lambda: rows(sessions, SyntheticJobBatch))
        ctx.request_stop()
        await asyncio.wait_for(task, 10)
    assert [b.block in current for b in batches] == [True]


async def test_loop_survives_a_dead_chain(sessions: Sessions) -> None:
    ctx = context(sessions, refused_url())
    task = asyncio.create_task(run_planner_loop(ctx, PARAMS, own_hotkey=OWN))
    found = await eventually(
        lambda: events(sessions, "VALIDATOR_FAILURE", "SUBTENSOR_CONNECTIVITY_ERROR"),
    )
    assert not task.done()  # still looping, backing off
    ctx.request_stop()
    await asyncio.wait_for(task, 10)
    assert "current block" in found[0].long_description


async def test_loop_needs_the_hotkey(sessions: Sessions) -> None:
    with pytest.raises(RuntimeError, match="hotkey"):
        await run_planner_loop(context(sessions, refused_url()), PARAMS)
