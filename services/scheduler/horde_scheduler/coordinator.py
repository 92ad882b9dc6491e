"""Run the batch that is due: split it into shards, hold the release barrier, complete it
(`docs/scheduling.md §8`).

- `dispatch(...)`: a started batch becomes one `batch_shards` row and one `batch.shard.requested`
  (outbox) per shard, in one transaction; with no serving miner it completes at once.
- the release barrier and the completion on the job-runner's reports are the bus handlers'
  bodies, in `batch_barrier`;
- `sweep(...)`: the deadlines — release at the release deadline whatever the shards say, fail the
  shards that never reported, complete the batch, give up a batch whose dispatch was lost.
- `coordinate_once(...)`: one pass of the loop at an explicit head and time (tests drive it);
  `coordinator_loop(ctx)` is the `ServiceSpec.loops` entry.

The decisions are pure (`coordination`); the SQL is in `coordinator_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import BatchShardRequested, MinerEndpoint, ShardDeadlines
from horde_common.bus.outbox import add_to_outbox
from horde_common.chain import Chain, make_chain
from horde_common.dynamic_config import DynamicConfig
from horde_common.service import ServiceContext
from horde_common.service.startup import describe_error, url_secrets
from horde_scheduler import coordinator_rows as rows
from horde_scheduler.coordination import (
    TERMINAL,
    BatchDeadlines,
    CoordinatorParams,
    ShardState,
    all_over,
    batch_deadlines,
    is_overdue,
    release_deadline_of,
    select_miners,
    should_release,
    split_shards,
)
from horde_scheduler.metagraph_sync import ChainUnavailable
from horde_scheduler.planner import due_batches, planner_params_for, read_head
from horde_scheduler.planning import DueBatch, PlannerParams

log = structlog.get_logger(__name__)
Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What `dispatch` did with a started batch; `deadlines` is None when it had no miner."""

    batch_id: int
    shard_count: int
    miner_count: int
    snapshot_block: int | None
    deadlines: BatchDeadlines | None


async def dispatch(
    sessions: Sessions,
    due: DueBatch,
    *,
    now: datetime,
    own_hotkey: str,
    params: CoordinatorParams,
    service: str = "scheduler",
) -> Dispatched | None:
    """Split the started batch `due` into shards and request them (docs/scheduling.md §8.1-§8.2).

    Rows and messages commit together; None when the batch is gone, completed or already has
    shards (a second call is harmless).
    """
    async with sessions() as session, session.begin():
        batch = await rows.lock_batch(session, due.batch_id)
        if batch is None or batch.completed_at is not None or await rows.has_shards(session, batch.id):
            return None
        snapshot, candidates = await rows.newest_candidates(session)
        miners = select_miners(candidates, own_hotkey)
        shards = split_shards(miners, params.shard_size)
        deadlines = batch_deadlines(now, params)
        await rows.insert_shards(session, batch.id, shards, deadlines.shard)
        if not shards:
            await add_to_outbox(session, await rows.mark_completed(session, batch, now))
            log.warning(
                "synthetic batch has no serving miner: completed", batch_id=batch.id, snapshot=snapshot
            )
            return Dispatched(batch.id, 0, 0, snapshot, None)
        weights_version = (await DynamicConfig.load(session)).weights_version
        start, stop = batch.cycle if batch.cycle is not None else (0, 0)
        for index, shard in enumerate(shards):
            await add_to_outbox(
                session,
                BatchShardRequested(
                    batch_id=batch.id,
                    shard_index=index,
                    shard_count=len(shards),
                    cycle_start=start,
                    cycle_stop=stop,
                    miners=[
                        MinerEndpoint(hotkey=m.hotkey, uid=m.uid, address=m.ip, port=m.port) for m in shard
                    ],
                    deadlines=ShardDeadlines(
                        accept_deadline=deadlines.accept, release_deadline=deadlines.release
                    ),
                    weights_version=int(weights_version),
                ),
            )
    log.info(
        "synthetic batch dispatched",
        batch_id=due.batch_id,
        shards=len(shards),
        miners=len(miners),
        snapshot=snapshot,
        accept_deadline=deadlines.accept.isoformat(),
        release_deadline=deadlines.release.isoformat(),
    )
    return Dispatched(due.batch_id, len(shards), len(miners), snapshot, deadlines)


@dataclass(frozen=True, slots=True)
class SweepOutcome:
    released: tuple[int, ...] = ()
    completed: tuple[int, ...] = ()
    failed_shards: tuple[tuple[int, int], ...] = ()
    given_up: tuple[int, ...] = ()

    @property
    def published(self) -> bool:
        return bool(self.released or self.completed or self.given_up)


async def sweep(
    sessions: Sessions, *, now: datetime, params: CoordinatorParams, service: str = "scheduler"
) -> SweepOutcome:
    """Apply the deadlines of every open batch (docs/scheduling.md §8.4), one transaction each."""
    released: list[int] = []
    completed: list[int] = []
    failed: list[tuple[int, int]] = []
    given_up: list[int] = []
    async with sessions() as session:
        open_ids = await rows.open_batches(session)
        lost_ids = await rows.undispatched_batches(
            session, now - timedelta(seconds=params.undispatched_after_s)
        )
    for batch_id in open_ids:
        async with sessions() as session, session.begin():
            batch = await rows.lock_batch(session, batch_id)
            if batch is None or batch.completed_at is not None:
                continue
            shards = await rows.shards_of(session, batch_id)
            for shard in shards:
                if ShardState(shard.state) not in TERMINAL and is_overdue(shard.deadline_at, now, params):
                    await rows.fail_overdue(session, shard, now, service)
                    failed.append((batch_id, shard.shard_index))
                    log.warning(
                        "synthetic shard failed: no report by its deadline",
                        batch_id=batch_id,
                        shard=shard.shard_index,
                        miners=len(shard.miner_hotkeys),
                    )
            states = [ShardState(s.state) for s in shards]
            deadlines = [s.deadline_at for s in shards if s.deadline_at is not None]
            release_at = release_deadline_of(min(deadlines), params) if deadlines else None
            if should_release(
                states,
                released=await rows.release_published(session, batch_id),
                release_deadline=release_at,
                now=now,
            ):
                await rows.stage_release(session, batch_id, now)
                released.append(batch_id)
                log.info("synthetic batch released at its deadline", batch_id=batch_id)
            if all_over(states):
                await add_to_outbox(session, await rows.mark_completed(session, batch, now))
                completed.append(batch_id)
                log.info("synthetic batch completed", batch_id=batch_id, shards=len(shards))
    for batch_id in lost_ids:
        async with sessions() as session, session.begin():
            batch = await rows.lock_batch(session, batch_id)
            if batch is None or batch.completed_at is not None or await rows.has_shards(session, batch_id):
                continue
            await rows.record_undispatched(session, batch_id, service)
            await add_to_outbox(session, await rows.mark_completed(session, batch, now))
            given_up.append(batch_id)
            log.warning("synthetic batch started but never dispatched: given up", batch_id=batch_id)
    return SweepOutcome(tuple(released), tuple(completed), tuple(failed), tuple(given_up))


@dataclass
class CoordinatorState:
    """What the loop remembers between passes (per loop, never a module global)."""

    polls_left: dict[int, int] = field(default_factory=dict)  # waiting batch id -> polls left
    last_unstaggered: datetime | None = None
    chain_down: bool = False


@dataclass(frozen=True, slots=True)
class PassOutcome:
    sweep: SweepOutcome
    due: DueBatch | None = None
    dispatched: Dispatched | None = None
    failed_to_wait: int | None = None

    @property
    def published(self) -> bool:
        return self.sweep.published or self.dispatched is not None


async def coordinate_once(
    sessions: Sessions,
    *,
    head: int | None,
    now: datetime,
    own_hotkey: str,
    planner: PlannerParams,
    params: CoordinatorParams,
    state: CoordinatorState,
    dont_stagger: bool = False,
    service: str = "scheduler",
) -> PassOutcome:
    """One pass: the deadlines first, then the batch due at `head` (None: the chain is unreachable,
    only the deadlines are applied). With `dont_stagger` a batch without block is started instead,
    at most every `params.unstaggered_interval_s` and never while one is in flight."""
    swept = await sweep(sessions, now=now, params=params, service=service)
    due: DueBatch | None = None
    if dont_stagger:
        interval = timedelta(seconds=params.unstaggered_interval_s)
        if state.last_unstaggered is None or now - state.last_unstaggered >= interval:
            async with sessions() as session:
                busy = await rows.in_flight(session)
            if not busy:
                due = await due_batches(
                    sessions, head=head or 0, params=planner, dont_stagger=True, service=service
                )
                state.last_unstaggered = now
    elif head is not None:
        due = await due_batches(sessions, head=head, params=planner, service=service)
    if due is None:
        return PassOutcome(swept)
    if due.started:
        state.polls_left.pop(due.batch_id, None)
        dispatched = await dispatch(
            sessions, due, now=now, own_hotkey=own_hotkey, params=params, service=service
        )
        return PassOutcome(swept, due, dispatched)
    # WAIT: the block is ahead. Each pass is one poll of the chain; past the polls allowed the
    # wait has failed (docs/scheduling.md §4) and starts over on the next pass.
    left = state.polls_left.get(due.batch_id, due.plan.max_polls)
    if left > 0:
        state.polls_left[due.batch_id] = left - 1
        return PassOutcome(swept, due)
    state.polls_left.pop(due.batch_id, None)
    async with sessions() as session, session.begin():
        await rows.record_failed_to_wait(session, due.batch_id, due.block or 0, head or 0, service)
    log.warning("synthetic batch: the chain never reached its block", batch_id=due.batch_id, block=due.block)
    return PassOutcome(swept, due, failed_to_wait=due.batch_id)


def coordinator_params_for(shard_size: int | None) -> CoordinatorParams:
    """Production timing with the settings' shard size (`SHARD_SIZE`)."""
    return CoordinatorParams(shard_size=shard_size)


async def run_coordinator_loop(
    ctx: ServiceContext,
    planner: PlannerParams,
    params: CoordinatorParams,
    *,
    chain: Chain | None = None,
    own_hotkey: str | None = None,
) -> None:
    """A pass every `planner.run.poll_interval_s` (the runner's chain poll) until the service stops.

    Neither a chain nor a database failure stops it: the first is logged once per outage and only
    the batch due waits for the chain; the second is logged and the next pass retries.
    """
    if own_hotkey is None:
        if ctx.hotkey is None:
            raise RuntimeError("the batch coordinator needs the validator hotkey (ServiceSpec.needs_hotkey)")
        own_hotkey = str(ctx.hotkey.ss58_address)
    owned = chain is None
    if chain is None:
        chain = make_chain(ctx.settings, timeout=planner.call_timeout_s)
    target = ctx.settings.LOCALNET_CHAIN_URL or ctx.settings.BITTENSOR_NETWORK
    secrets = url_secrets(target) + url_secrets(ctx.settings.DATABASE_URL.get_secret_value())
    state = CoordinatorState()

    async def pause(seconds: float) -> None:
        await ctx.wait_stop(seconds)

    try:
        while True:
            head: int | None = None
            try:
                head = await read_head(chain, planner, sleep=pause, secrets=secrets)
                if state.chain_down:
                    log.info("batch coordinator: chain reachable again", head=head)
                state.chain_down = False
            except ChainUnavailable as exc:
                if not state.chain_down:
                    log.warning("batch coordinator: chain unreachable", error=str(exc))
                state.chain_down = True
            try:
                outcome = await coordinate_once(
                    ctx.sessions, head=head, now=datetime.now(UTC), own_hotkey=own_hotkey,
                    planner=planner, params=params, state=state,
                    dont_stagger=ctx.settings.DEBUG_DONT_STAGGER_VALIDATORS, service=ctx.name,
                )  # fmt: skip
                if outcome.published and ctx.broker is not None:
                    ctx.broker.kick_outbox()
            except Exception as exc:  # the database is down: the next pass retries
                log.warning("batch coordination failed", head=head, error=describe_error(exc, secrets))
            if await ctx.wait_stop(planner.run.poll_interval_s):
                return
    finally:
        if owned:
            close = getattr(chain, "aclose", None)
            if close is not None:
                await close()


async def coordinator_loop(ctx: ServiceContext) -> None:
    """The `ServiceSpec.loops` entry: the planner's timing and the settings' `SHARD_SIZE`."""
    await run_coordinator_loop(
        ctx, planner_params_for(ctx.settings), coordinator_params_for(ctx.settings.SHARD_SIZE)
    )


__all__ = [
    "CoordinatorState",
    "Dispatched",
    "PassOutcome",
    "SweepOutcome",
    "coordinate_once",
    "coordinator_loop",
    "dispatch",
    "run_coordinator_loop",
    "sweep",
]
