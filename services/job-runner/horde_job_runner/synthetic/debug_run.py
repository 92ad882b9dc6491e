"""One synthetic batch in-process, with no scheduler and no chain (docs/miner-protocol.md §3.0 step 5, "debug
mode").

`horde debug run-synthetic-jobs` is a thin CLI around `run_debug_batch`: the miners come from the
`DEBUG_MINER_*` settings, the validator key from the usual hotkey settings, and the database from
`DATABASE_URL` (migrated if needed). A batch row without block or cycle is created (weights never
score such a batch), the shard runs with the release fallback taken at once (there is no
scheduler to wait for), and the jobs are returned for display. The miners are connected and
authenticated while the database is prepared (`debug_dial`), so that their manifests wait for us
rather than the other way round.

Miners (`debug_miners`): `DEBUG_MINER_COUNT = N` miners listen on consecutive ports
`DEBUG_MINER_PORT .. DEBUG_MINER_PORT + N - 1` at `DEBUG_MINER_ADDRESS`. Their hotkeys:

* `DEBUG_MINER_KEY` as a comma-separated list: one hotkey per miner, in port order (its length
  must equal N, or sets N when `DEBUG_MINER_COUNT` is left at 1);
* one hotkey and N = 1: that hotkey;
* one hotkey and N > 1: the localnet dev miners' hotkeys `miner_keypair(i)` for i = 0..N-1 (the
  simulator fleet's keys), given by the caller as `dev_miner_hotkey` (the job-runner does not import
  the localnet package).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from horde_job_runner.synthetic.debug_schema import head_revisions  # cheap: no SQLAlchemy at import

if TYPE_CHECKING:
    # Imported inside the functions at run time: the command's `--help` and config errors must not
    # pay for SQLAlchemy, the bus (aio-pika) and the shard orchestrator.
    from horde_common.bus.messages import MinerEndpoint
    from horde_common.config import HashcatDifficulty, Settings
    from horde_job_runner.generators import JobGenerator
    from horde_job_runner.synthetic.debug_dial import EarlyDial
    from horde_job_runner.synthetic.generation import ClassCounts, JobFactory
    from horde_job_runner.synthetic.generation_pool import GenerationPool
    from horde_job_runner.synthetic.model import BatchTimeouts, JobResult, ProgressListener, ShardResult

Keypair = Any  # a bittensor sr25519 keypair (`horde_common.wallet.load_hotkey`)

__all__ = [
    "DebugBatch",
    "DebugConfigError",
    "MinerFailure",
    "SmallBatchJobFactory",
    "debug_miners",
    "head_revisions",
    "run_debug_batch",
]

# Up to this many jobs of a batch are built in a thread rather than in the process pool: at
# ~0.4 ms (localnet) to ~1.5 ms (production) of CPU each, 64 jobs take < 0.1 s, far less than the
# ~0.5 s of CPU a forkserver pool costs to start.
INLINE_MAX_JOBS = 64

# Why a miner got no job, from its system events (most telling first): the one-line kinds the
# command prints.
FAILURE_KINDS: dict[str, str] = {
    "UNAUTHORIZED": "unauthorized",
    "MINER_CONNECTION_ERROR": "cannot connect",
    "MANIFEST_TIMEOUT": "no manifest",
    "MANIFEST_ERROR": "no manifest",
}


class DebugConfigError(ValueError):
    """The DEBUG_MINER_* settings do not describe any miner (one-line message)."""


@dataclass(frozen=True)
class MinerFailure:
    """Why one miner got no job: `kind` is "cannot connect", "unauthorized" or "no manifest"."""

    hotkey: str
    address: str
    port: int
    kind: str
    detail: str

    def line(self) -> str:
        return f"miner {self.hotkey} at {self.address}:{self.port}: {self.kind}: {self.detail}"


@dataclass
class DebugBatch:
    batch_id: int
    result: ShardResult
    jobs: list[JobResult] = field(default_factory=list)
    # The miners that got no job, with the reason their system events give (empty if none failed).
    miner_failures: list[MinerFailure] = field(default_factory=list)
    miner_count: int = 0  # distinct miners the batch was run against
    # Wall seconds of the parts after the imports: "prepare" (the database work left once the
    # imports are done: dynamic config, batch row; the schema check overlaps the imports), "shard"
    # (`run_shard`, connects to persisted rows), "finish" (completion mark, failure read-back).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def every_miner_failed(self) -> bool:
        """No job ran because no miner could be used (the command's distinct exit status)."""
        return not self.jobs and bool(self.miner_failures) and len(self.miner_failures) == self.miner_count


def debug_miners(
    settings: Settings, dev_miner_hotkey: Callable[[int], str] | None = None
) -> list[MinerEndpoint]:
    """The miners `DEBUG_MINER_*` describe (see the module docstring)."""
    from horde_common.bus.messages import MinerEndpoint

    raw = (settings.DEBUG_MINER_KEY or "").strip()
    if not raw:
        raise DebugConfigError("DEBUG_MINER_KEY is not set (the miner hotkey, or a comma-separated list)")
    if settings.DEBUG_MINER_PORT is None:
        raise DebugConfigError("DEBUG_MINER_PORT is not set")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    count = settings.DEBUG_MINER_COUNT
    if len(keys) > 1:
        if count not in (1, len(keys)):
            raise DebugConfigError(
                f"DEBUG_MINER_KEY lists {len(keys)} hotkeys but DEBUG_MINER_COUNT is {count}"
            )
        hotkeys = keys
    elif count == 1:
        hotkeys = keys
    else:
        if dev_miner_hotkey is None:
            raise DebugConfigError(
                "DEBUG_MINER_COUNT > 1 needs a comma-separated DEBUG_MINER_KEY (or the localnet dev keys)"
            )
        hotkeys = [dev_miner_hotkey(i) for i in range(count)]
    port = settings.DEBUG_MINER_PORT
    if port + len(hotkeys) - 1 > 65535:
        raise DebugConfigError(f"DEBUG_MINER_PORT {port} + {len(hotkeys)} miners exceeds 65535")
    return [
        MinerEndpoint(hotkey=hk, uid=i, address=settings.DEBUG_MINER_ADDRESS, port=port + i)
        for i, hk in enumerate(hotkeys)
    ]


async def run_debug_batch(
    settings: Settings,
    keypair: Keypair,
    miners: list[MinerEndpoint],
    *,
    weights_version: int | None = None,
    progress: ProgressListener | None = None,
    timeouts: BatchTimeouts | None = None,
    job_factory: JobFactory | None = None,
    migrate: bool = True,
    early_dial: EarlyDial | None = None,
    **deps_overrides: Any,
) -> DebugBatch:
    """Create a debug batch and run it against `miners`; the database is migrated first if asked
    (Alembic is not even imported when the database is already at the packaged head).

    The miners are connected and authenticated first (`debug_dial.EarlyDial`): while the batch's
    modules are imported, the database checked and the batch row created, so that their manifests
    are in by the time the shard opens its links. The caller may start the `early_dial` itself,
    even sooner (then closing it is its job); with a `transport_factory` of the caller's there is
    none. With no `job_factory`, a `SmallBatchJobFactory` on a `GenerationPool` of this call: a small
    batch's jobs are built in a thread, the pool's processes start only for a batch of many jobs,
    and the pool is shut down before this returns. A caller's factory (and its pool) is the caller's.
    """
    own_dial: EarlyDial | None = None
    if early_dial is None and miners and "transport_factory" not in deps_overrides:
        from horde_job_runner.synthetic.debug_dial import EarlyDial

        early_dial = own_dial = EarlyDial(keypair, miners, deps_overrides.get("transport_settings"))
        own_dial.start()
    if early_dial is not None:
        deps_overrides["transport_factory"] = early_dial.transport_factory
    own_pool: GenerationPool | None = None
    try:
        # In a thread, so that the loop goes on with the connects and authentications meanwhile.
        await asyncio.to_thread(import_modules, ENGINE_MODULES)
        if job_factory is None:
            from horde_job_runner.synthetic.generation_pool import GenerationPool

            own_pool = GenerationPool()
            job_factory = SmallBatchJobFactory(own_pool)
        return await _run(
            settings,
            keypair,
            miners,
            weights_version,
            progress,
            timeouts,
            job_factory,
            migrate,
            deps_overrides,
        )
    finally:
        if own_pool is not None:  # no generator worker may outlive the batch
            await asyncio.to_thread(own_pool.shutdown)
        if own_dial is not None:
            await own_dial.close()


# What `_run` imports (~0.8 s of CPU on a busy machine), in two steps: what the engine needs
# (the protocol first: the early dial's own thread may be importing it, and a thread importing these
# then waits for it there, before it holds any lock of its own: no import deadlock), then the rest,
# imported while the engine makes its first connection and checks the schema.
# The engine's dialect and driver are listed too: the loop's thread then imports nothing while
# the other thread imports the rest.
ENGINE_MODULES = (
    "horde_common.protocol.miner.session",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "asyncpg",
    "horde_common.db.base",
)
BATCH_MODULES = (
    "horde_common.db.models",
    "horde_common.dynamic_config",
    "horde_job_runner.synthetic.model",
    "horde_job_runner.synthetic.persistence",
    "horde_job_runner.synthetic.batch",
)


def import_modules(names: Sequence[str]) -> None:
    """Import `names` (blocking: run it in a thread while the loop goes on with the miners)."""
    import importlib

    for name in names:
        importlib.import_module(name)


def import_batch_modules() -> None:
    """Everything the batch needs (`ENGINE_MODULES`, then `BATCH_MODULES`)."""
    import_modules((*ENGINE_MODULES, *BATCH_MODULES))


class SmallBatchJobFactory:
    """A `JobFactory` building a batch's first `INLINE_MAX_JOBS` jobs in a thread, the rest in the pool.

    A debug batch is usually a handful of jobs: a thread builds them in milliseconds, while the
    forkserver pool costs ~0.5 s of CPU to start (on a busy 2-core machine that is time taken from
    the connects and the batch itself). The count is over the whole batch, not per miner: many
    miners' jobs built in threads would hold the GIL against the event loop. The rest go to `pool`,
    the caller's (it starts its processes on first use; stopping it is the caller's job).
    """

    def __init__(self, pool: GenerationPool) -> None:
        from horde_job_runner.synthetic.generation import InlineJobFactory, PoolJobFactory

        self._inline = InlineJobFactory()
        self._inline_jobs = 0
        self._pool = PoolJobFactory(pool)

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]:
        count = sum(n for _, n in class_counts)
        if self._inline_jobs + count <= INLINE_MAX_JOBS:
            self._inline_jobs += count
            return await self._inline.generate(miner_hotkey, class_counts, weights_version, difficulty)
        return await self._pool.generate(miner_hotkey, class_counts, weights_version, difficulty)


async def _run(
    settings: Settings,
    keypair: Keypair,
    miners: list[MinerEndpoint],
    weights_version: int | None,
    progress: ProgressListener | None,
    timeouts: BatchTimeouts | None,
    job_factory: JobFactory,
    migrate: bool,
    deps_overrides: dict[str, Any],
) -> DebugBatch:
    from datetime import UTC, datetime

    from sqlalchemy import update

    from horde_common.db import create_engine, session_factory
    from horde_job_runner.synthetic.debug_schema import schema_at_head

    url = settings.database_url
    engine = create_engine(url)
    rest = asyncio.ensure_future(asyncio.to_thread(import_modules, BATCH_MODULES))
    try:
        at_head = not migrate or await schema_at_head(engine)
        await rest
        started = time.monotonic()
        from horde_common.config import HashcatDifficulty
        from horde_common.db.models import SyntheticJobBatch
        from horde_common.dynamic_config import DynamicConfig
        from horde_job_runner.synthetic.batch import run_shard
        from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
        from horde_job_runner.synthetic.persistence import BatchStore

        if not at_head:
            from horde_common.db.migrate import upgrade

            await asyncio.to_thread(upgrade, url)
        sessions = session_factory(engine)
        store = BatchStore(sessions, service="cli")
        async with sessions() as session:  # one read for both
            config = await DynamicConfig.load(session)
        if weights_version is None:
            weights_version = config.weights_version
        batch_id, _ = await store.create_batch()
        deps = BatchDeps(
            keypair=keypair,
            store=store,
            dynamic=DynamicValues.from_config(config),
            difficulty=HashcatDifficulty(settings.SYNTHETIC_HASHCAT_DIFFICULTY),
            timeouts=timeouts or BatchTimeouts(),
            job_factory=job_factory,
            release_waiter=None,  # no scheduler: release as soon as the spin-up window is over
            progress=progress,
            service="cli",
            **deps_overrides,
        )
        request = ShardRequest(batch_id=batch_id, miners=miners, weights_version=weights_version)
        shard_started = time.monotonic()
        result = await run_shard(request, deps)
        shard_done = time.monotonic()
        failures: list[MinerFailure] = []
        if result.persisted:
            async with sessions.begin() as session:
                await session.execute(
                    update(SyntheticJobBatch)
                    .where(SyntheticJobBatch.id == batch_id)
                    .values(completed_at=datetime.now(UTC))
                )
            async with sessions() as session:
                failures = await _miner_failures(session, batch_id, miners, result.jobs)
        return DebugBatch(
            batch_id=batch_id,
            result=result,
            jobs=result.jobs,
            miner_failures=failures,
            miner_count=len({m.hotkey for m in miners}),
            timings={
                "prepare": round(shard_started - started, 4),
                "shard": round(shard_done - shard_started, 4),
                "finish": round(time.monotonic() - shard_done, 4),
            },
        )
    finally:
        if not rest.done():  # the schema check failed: a thread cannot be cancelled, wait for it
            with contextlib.suppress(Exception):
                await rest
        await engine.dispose()


async def _miner_failures(
    session: Any, batch_id: int, miners: list[MinerEndpoint], jobs: list[JobResult]
) -> list[MinerFailure]:
    """The miners that got no job, each with the most telling of its stored failure events.

    Read back from `system_events` (what the batch stored is what the operator is told), so the
    command reports exactly the reasons an operator would find there.
    """
    from sqlalchemy import select

    from horde_common.db.models import SystemEvent
    from horde_common.event_types import SystemEventType

    rows = (
        await session.execute(
            select(SystemEvent.subtype, SystemEvent.long_description, SystemEvent.data)
            .where(SystemEvent.type == str(SystemEventType.MINER_SYNTHETIC_JOB_FAILURE))
            .where(SystemEvent.subtype.in_(list(FAILURE_KINDS)))
            .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
            .order_by(SystemEvent.id)
        )
    ).all()
    with_jobs = {j.miner_hotkey for j in jobs}
    rank = {subtype: i for i, subtype in enumerate(FAILURE_KINDS)}
    best: dict[str, tuple[str, str]] = {}
    for subtype, description, data in rows:
        hotkey = (data or {}).get("miner_hotkey")
        if not hotkey or hotkey in with_jobs:
            continue
        if hotkey not in best or rank[subtype] < rank[best[hotkey][0]]:
            best[hotkey] = (subtype, description)
    failures: list[MinerFailure] = []
    seen: set[str] = set()
    for m in miners:
        if m.hotkey in best and m.hotkey not in seen:
            seen.add(m.hotkey)
            subtype, description = best[m.hotkey]
            detail = " ".join(description.split()) or subtype
            failures.append(MinerFailure(m.hotkey, m.address, m.port, FAILURE_KINDS[subtype], detail))
    return failures
