"""Follow the chain and keep metagraph snapshots in the `neurons` table (docs/scheduling.md §6).

Every `every_blocks` blocks the scheduler reads the subnet's metagraph at the block on that grid,
checks it (`metagraph_rows`), and stores it in one transaction together with a
`ChainMetagraphSynced` outbox row. A block already stored is skipped, so two scheduler replicas
store each snapshot once. The chain being down, slow or answering garbage records a
`SUBTENSOR_CONNECTIVITY_ERROR` event, keeps the last snapshot and backs off; the loop never dies
of it.

`sync_once` is one iteration (tests drive it directly); `metagraph_sync_loop` is the
`ServiceSpec.loops` entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import ChainMetagraphSynced
from horde_common.bus.outbox import add_to_outbox
from horde_common.chain import Chain, make_chain
from horde_common.config import Settings
from horde_common.db.models import Neuron
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service import ServiceContext
from horde_common.service.startup import Backoff, describe_error, url_secrets
from horde_common.telemetry import record_event_detached
from horde_scheduler.metagraph_rows import (
    MAX_NEURONS,
    MetagraphRefused,
    Snapshot,
    snapshot_rows,
    sync_target_block,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The reference read the metagraph about once a minute (weights every minute, scheduling every
# minute, organic cache 5 min); 5 blocks of 12 s is that minute.
EVERY_BLOCKS = 5
# The head is checked once a block (12 s): a due snapshot is taken within a block of falling due.
POLL_INTERVAL_S = 12.0
# Localnet blocks last 0.2 s and its cycles are short: check every second, snapshot every block.
LOCALNET_EVERY_BLOCKS = 1
LOCALNET_POLL_INTERVAL_S = 1.0
# A 256-neuron metagraph takes a few seconds from a public node; 20 s allows a slow one while
# three tries (plus 1 s and 2 s pauses) still end within about the one-minute sync period.
CALL_TIMEOUT_S = 20.0
# The reference tried the metagraph fetch 3 times, pausing 1 s then 2 s (docs/miner-protocol.md §3.0).
RETRY_DELAYS_S = (1.0, 2.0)
# After a failed sync, wait a block and double up to 120 s: a long outage records at most 30
# events an hour, and a chain that comes back is seen within two minutes.
BACKOFF_FIRST_S = 12.0
BACKOFF_MAX_S = 120.0
# A day of snapshots is kept (7200 blocks): enough to look back over several cycles when debugging,
# while a year of once-a-minute 256-row snapshots would be ~135 M rows.
KEEP_BLOCKS = 7200
# A log line names at most this many uids with a bad axon (the count is always there).
MAX_UIDS_LOGGED = 20
# Serialises snapshot writes between scheduler replicas (an arbitrary, fixed 64-bit key).
SNAPSHOT_LOCK_KEY = 0x6D65_7461_6772_6170  # "metagrap"

# Environment overrides (read once when the loop starts; see docs/scheduling.md §6).


@dataclass(frozen=True)
class SyncParams:
    """Cadence, timeouts, retries and bounds of the sync; the defaults are production's."""

    every_blocks: int = EVERY_BLOCKS
    poll_interval_s: float = POLL_INTERVAL_S
    call_timeout_s: float = CALL_TIMEOUT_S
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_neurons: int = MAX_NEURONS
    keep_blocks: int = KEEP_BLOCKS


def params_from_settings(settings: Settings) -> SyncParams:
    """Production defaults, localnet's faster cadence when `LOCALNET_CHAIN_URL` is set, then the
    `METAGRAPH_SYNC_*` overrides (validated by `Settings`, so a bad one stops the service at start)."""
    params = SyncParams()
    if settings.LOCALNET_CHAIN_URL:
        params = replace(params, every_blocks=LOCALNET_EVERY_BLOCKS, poll_interval_s=LOCALNET_POLL_INTERVAL_S)
    if settings.METAGRAPH_SYNC_EVERY_BLOCKS is not None:
        params = replace(params, every_blocks=settings.METAGRAPH_SYNC_EVERY_BLOCKS)
    if settings.METAGRAPH_SYNC_POLL_INTERVAL_S is not None:
        params = replace(params, poll_interval_s=settings.METAGRAPH_SYNC_POLL_INTERVAL_S)
    return params


class SyncStatus(StrEnum):
    STORED = "stored"  # a new snapshot and its message were committed
    NOT_DUE = "not_due"  # the grid block is already stored (by us or another replica)
    REFUSED = "refused"  # the chain answered, but with a metagraph we do not accept
    CHAIN_ERROR = "chain_error"  # the chain could not be read (timeout, connection, garbage)
    DB_ERROR = "db_error"  # the database failed (the loop's catch-all; nothing recorded)


@dataclass(frozen=True)
class SyncOutcome:
    status: SyncStatus
    block: int | None = None
    neuron_count: int = 0
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in (SyncStatus.REFUSED, SyncStatus.CHAIN_ERROR, SyncStatus.DB_ERROR)


class ChainUnavailable(Exception):
    """Every try of one chain call failed; `str()` is one loggable line without secrets."""


async def call_with_retries(
    what: str,
    call: Callable[[], Awaitable[T]],
    params: SyncParams,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    secrets: tuple[str, ...] = (),
) -> T:
    """`call()` under `params.call_timeout_s`, tried `len(retry_delays_s) + 1` times.

    Any exception counts as a failed try, not only `ChainError`: a broken adapter or a garbage
    answer must not kill the loop. Only the last error is reported (one line per failure).
    """
    error = ""
    for attempt in range(len(params.retry_delays_s) + 1):
        if attempt:
            await sleep(params.retry_delays_s[attempt - 1])
        try:
            return await asyncio.wait_for(call(), params.call_timeout_s)
        except TimeoutError:
            error = f"no answer within {params.call_timeout_s:g} s"
        except Exception as exc:
            error = describe_error(exc, secrets)
    tries = len(params.retry_delays_s) + 1
    raise ChainUnavailable(f"{what}: {error} ({tries} tries)")


async def newest_snapshot_block(session: AsyncSession) -> int | None:
    """The block of the newest stored snapshot (None before the first one)."""
    return (await session.execute(select(func.max(Neuron.block)))).scalar_one_or_none()


async def store_snapshot(sessions: async_sessionmaker[AsyncSession], snapshot: Snapshot) -> bool:
    """Store `snapshot` and its `ChainMetagraphSynced` in one transaction; False if the block was
    already stored. A transaction-scoped advisory lock makes concurrent replicas take turns, so the
    loser sees the winner's rows and neither stores a mix nor sends a second message."""
    async with sessions() as session, session.begin():
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SNAPSHOT_LOCK_KEY})
        exists = await session.execute(select(Neuron.id).where(Neuron.block == snapshot.block).limit(1))
        if exists.first() is not None:
            return False
        await session.execute(
            pg_insert(Neuron)
            .values([row.as_dict() for row in snapshot.rows])
            .on_conflict_do_nothing(constraint="uq_neurons_block_uid")
        )
        await add_to_outbox(
            session, ChainMetagraphSynced(block=snapshot.block, neuron_count=len(snapshot.rows))
        )
    return True


async def _record(
    sessions: async_sessionmaker[AsyncSession],
    subtype: SystemEventSubtype,
    description: str,
    data: dict[str, Any],
    service: str,
) -> None:
    await record_event_detached(
        sessions, SystemEventType.VALIDATOR_FAILURE, subtype, description, data, service=service
    )


async def sync_once(
    sessions: async_sessionmaker[AsyncSession],
    chain: Chain,
    netuid: int,
    params: SyncParams = SyncParams(),
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    secrets: tuple[str, ...] = (),
    service: str = "scheduler",
) -> SyncOutcome:
    """One sync: read the head, and if the grid block is not stored yet, read, check and store it.

    Chain failures and refused metagraphs are recorded as events and returned, not raised; a
    database failure raises (the loop logs it and backs off).
    """
    try:
        head = await call_with_retries(
            "current block", chain.current_block, params, sleep=sleep, secrets=secrets
        )
        if isinstance(head, bool) or not isinstance(head, int) or head < 0:
            raise ChainUnavailable(f"current block: not a block number ({type(head).__name__})")
    except ChainUnavailable as exc:
        return await _chain_error(sessions, None, str(exc), service)
    block = sync_target_block(head, params.every_blocks)
    async with sessions() as session:
        newest = await newest_snapshot_block(session)
    if newest is not None and block <= newest:
        return SyncOutcome(SyncStatus.NOT_DUE, block=block)

    try:
        metagraph = await call_with_retries(
            f"metagraph of subnet {netuid} at block {block}",
            lambda: chain.metagraph(netuid, block=block),
            params,
            sleep=sleep,
            secrets=secrets,
        )
        snapshot = snapshot_rows(metagraph, netuid=netuid, block=block, max_neurons=params.max_neurons)
    except ChainUnavailable as exc:
        return await _chain_error(sessions, block, str(exc), service)
    except (MetagraphRefused, AttributeError, TypeError) as exc:
        # AttributeError/TypeError: the adapter returned something that is not a Metagraph at all.
        reason = str(exc) if isinstance(exc, MetagraphRefused) else f"not a metagraph: {type(exc).__name__}"
        # The event's own log line is the one line of this failure.
        await _record(
            sessions,
            SystemEventSubtype.GENERIC_ERROR,
            f"metagraph at block {block} refused, keeping the last snapshot: {reason}",
            {"block": block, "netuid": netuid, "reason": reason},
            service,
        )
        return SyncOutcome(SyncStatus.REFUSED, block=block, detail=reason)

    if not await store_snapshot(sessions, snapshot):
        return SyncOutcome(SyncStatus.NOT_DUE, block=block)
    log.info(
        "metagraph synced",
        block=block,
        neurons=len(snapshot.rows),
        serving=snapshot.serving,
        bad_axons=len(snapshot.unserved),
        bad_axon_uids=list(snapshot.unserved[:MAX_UIDS_LOGGED]),
    )
    return SyncOutcome(SyncStatus.STORED, block=block, neuron_count=len(snapshot.rows))


async def _chain_error(
    sessions: async_sessionmaker[AsyncSession], block: int | None, error: str, service: str
) -> SyncOutcome:
    # The event's own log line (a warning) is the one line of this failure.
    await _record(
        sessions,
        SystemEventSubtype.SUBTENSOR_CONNECTIVITY_ERROR,
        f"metagraph sync: chain unreachable, keeping the last snapshot: {error}",
        {"block": block, "error": error},
        service,
    )
    return SyncOutcome(SyncStatus.CHAIN_ERROR, block=block, detail=error)


async def prune_snapshots(session: AsyncSession, keep_blocks: int = KEEP_BLOCKS) -> int:
    """Delete snapshots more than `keep_blocks` older than the newest one (never the newest)."""
    newest = await newest_snapshot_block(session)
    if newest is None:
        return 0
    result = await session.execute(delete(Neuron).where(Neuron.block < newest - keep_blocks))
    return int(getattr(result, "rowcount", 0) or 0)


async def run_sync_loop(ctx: ServiceContext, params: SyncParams, chain: Chain | None = None) -> None:
    """Sync until the service stops: every `poll_interval_s` while healthy, with capped backoff
    after failures. Never returns on an error; `chain` (tests) defaults to the settings' chain."""
    owned = chain is None
    if chain is None:
        chain = make_chain(ctx.settings, timeout=params.call_timeout_s)
    target = ctx.settings.LOCALNET_CHAIN_URL or ctx.settings.BITTENSOR_NETWORK
    secrets = url_secrets(target) + url_secrets(ctx.settings.DATABASE_URL.get_secret_value())
    backoff = Backoff(first_s=params.backoff_first_s, max_s=params.backoff_max_s)
    delays = backoff.delays()
    pruned_at: int | None = None

    async def pause(seconds: float) -> None:
        await ctx.wait_stop(seconds)

    try:
        while True:
            try:
                outcome = await sync_once(
                    ctx.sessions, chain, ctx.settings.BITTENSOR_NETUID, params,
                    sleep=pause, secrets=secrets, service=ctx.name,
                )  # fmt: skip
            except Exception as exc:  # the database is down: the next iteration retries
                log.warning("metagraph sync failed", error=describe_error(exc, secrets))
                outcome = SyncOutcome(SyncStatus.DB_ERROR, detail=describe_error(exc, secrets))
            if outcome.status is SyncStatus.STORED:
                if ctx.broker is not None:
                    ctx.broker.kick_outbox()
                pruned_at = await _prune_now_and_then(ctx, params, outcome.block, pruned_at)
            if outcome.failed:
                delay = next(delays)
            else:
                delays = backoff.delays()
                delay = params.poll_interval_s
            if await ctx.wait_stop(delay):
                return
    finally:
        if owned:
            close = getattr(chain, "aclose", None)
            if close is not None:
                await close()


async def _prune_now_and_then(
    ctx: ServiceContext, params: SyncParams, block: int | None, pruned_at: int | None
) -> int | None:
    """Prune old snapshots about every tenth of the kept window (not on every insert)."""
    if block is None or (pruned_at is not None and block - pruned_at < max(1, params.keep_blocks // 10)):
        return pruned_at
    try:
        async with ctx.sessions() as session, session.begin():
            deleted = await prune_snapshots(session, params.keep_blocks)
        if deleted:
            log.info("old metagraph snapshots pruned", rows=deleted)
    except Exception as exc:
        log.warning("metagraph snapshot pruning failed", error=describe_error(exc))
        return pruned_at
    return block


async def metagraph_sync_loop(ctx: ServiceContext) -> None:
    """The `ServiceSpec.loops` entry: the settings' chain and netuid, `METAGRAPH_SYNC_*` overrides."""
    await run_sync_loop(ctx, params_from_settings(ctx.settings))


async def metagraph_view(ctx: ServiceContext) -> dict[str, Any]:
    """`/debug/metagraph`: the newest stored snapshot at a glance."""
    async with ctx.sessions() as session:
        newest = await newest_snapshot_block(session)
        if newest is None:
            return {"block": None, "neurons": 0, "serving": 0}
        counts = (
            await session.execute(
                select(func.count(), func.count().filter(Neuron.is_serving)).where(Neuron.block == newest)
            )
        ).one()
    return {"block": newest, "neurons": int(counts[0]), "serving": int(counts[1])}
