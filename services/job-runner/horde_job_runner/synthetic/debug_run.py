"""One synthetic batch in-process, with no scheduler and no chain (spec A §3.0 step 5, "debug mode").

`horde debug run-synthetic-jobs` is a thin CLI around `run_debug_batch`: the miners come from the
`DEBUG_MINER_*` settings, the validator key from the usual hotkey settings, and the database from
`DATABASE_URL` (migrated if needed). A batch row without block or cycle is created (weights never
score such a batch), the shard runs with the release fallback taken at once (there is no
scheduler to wait for), and the jobs are returned for display.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported inside the functions at run time: the command's `--help` and config errors must not
    # pay for SQLAlchemy, the bus (aio-pika) and the shard orchestrator.
    from horde_common.bus.messages import MinerEndpoint
    from horde_common.config import Settings
    from horde_job_runner.synthetic.generation import JobFactory
    from horde_job_runner.synthetic.model import BatchTimeouts, JobResult, ProgressListener, ShardResult

Keypair = Any  # a bittensor sr25519 keypair (`horde_common.crypto.load_hotkey`)

__all__ = ["DebugBatch", "DebugConfigError", "MinerFailure", "debug_miners", "run_debug_batch"]

# The generator pool starts while the database is migrated and the miners connected; if it is not
# up by the time the batch is over, something is wrong with it, and we stop waiting for it then.
WARM_UP_WAIT_S = 30.0

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
    **deps_overrides: Any,
) -> DebugBatch:
    """Create a debug batch and run it against `miners`; the database is migrated first if asked
    (Alembic is not even imported when the database is already at the packaged head).

    With the default job factory the generator pool is started at once, in a thread, so that its
    start-up (~0.5 s of CPU, in the forkserver) overlaps the imports, the migration and the
    connects instead of delaying the manifests. It needs a free core: on a busy 2-core machine it
    delayed the first connect by ~0.5 s in bench/startup.py runs, and saved ~0.15 s after it.
    Stopping the pool is the caller's job (`generation.shutdown_pool()`, as the command does).
    """
    warm: asyncio.Task[None] | None = None
    if job_factory is None:
        from horde_job_runner.synthetic.generation import default_job_factory, start_pool

        warm = asyncio.create_task(start_pool())
        job_factory = default_job_factory()
    try:
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
        if warm is not None:
            # Never leave the warm-up thread behind; its failure (if any) shows in the batch itself.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(warm), WARM_UP_WAIT_S)


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

    from horde_common.config import HashcatDifficulty
    from horde_common.db import create_engine, session_factory
    from horde_common.db.models import SyntheticJobBatch
    from horde_common.dynamic_config import DynamicConfig
    from horde_job_runner.synthetic.batch import run_shard
    from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
    from horde_job_runner.synthetic.persistence import BatchStore

    url = settings.database_url
    engine = create_engine(url)
    try:
        if migrate and not await _schema_at_head(engine):
            from horde_common.db.migrate import upgrade

            await asyncio.to_thread(upgrade, url)
        sessions = session_factory(engine)
        store = BatchStore(sessions, service="cli")
        dynamic = await store.dynamic_values()
        if weights_version is None:
            async with sessions() as session:
                weights_version = (await DynamicConfig.load(session)).weights_version
        batch_id, _ = await store.create_batch()
        deps = BatchDeps(
            keypair=keypair,
            store=store,
            dynamic=DynamicValues(
                manifest_score_multiplier=dynamic.manifest_score_multiplier,
                manifest_dance_ratio_threshold=dynamic.manifest_dance_ratio_threshold,
                miner_max_executors_per_class=dynamic.miner_max_executors_per_class,
            ),
            difficulty=HashcatDifficulty(settings.SYNTHETIC_HASHCAT_DIFFICULTY),
            timeouts=timeouts or BatchTimeouts(),
            job_factory=job_factory,
            release_waiter=None,  # no scheduler: release as soon as the spin-up window is over
            progress=progress,
            service="cli",
            **deps_overrides,
        )
        request = ShardRequest(batch_id=batch_id, miners=miners, weights_version=weights_version)
        result = await run_shard(request, deps)
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
        )
    finally:
        await engine.dispose()


def head_revisions() -> set[str]:
    """The head revisions of the packaged migrations, read from the scripts without Alembic.

    Alembic costs ~0.6 s to import and ~0.2 s to find that there is nothing to do; the command is
    usually run again and again on a database already migrated. Any script this cannot read makes
    the set empty, and Alembic then runs as usual.
    """
    import ast
    from pathlib import Path

    import horde_common.db

    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (Path(horde_common.db.__file__).parent / "migrations" / "versions").glob("*.py"):
        values: dict[str, object] = {}
        for node in ast.parse(script.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            value = getattr(node, "value", None)
            if (
                isinstance(target, ast.Name)
                and target.id in ("revision", "down_revision")
                and value is not None
            ):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    return set()
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str):
            return set()
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
        elif down is not None:
            return set()
    return revisions - parents


async def _schema_at_head(engine: Any) -> bool:
    """True when the database's Alembic version is the packaged head (no migration to run)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    heads = head_revisions()
    if not heads:
        return False
    try:
        async with engine.connect() as conn:
            stored = set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
    except DBAPIError:  # no alembic_version table yet: a new database
        return False
    return stored == heads


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
