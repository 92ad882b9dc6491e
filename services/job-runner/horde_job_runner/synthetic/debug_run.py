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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from horde_common.bus.messages import MinerEndpoint
from horde_common.config import HashcatDifficulty, Settings
from horde_common.db import create_engine, session_factory
from horde_common.db.models import SyntheticJobBatch
from horde_common.dynamic_config import DynamicConfig
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import JobFactory, default_job_factory
from horde_job_runner.synthetic.model import (
    BatchDeps,
    BatchTimeouts,
    DynamicValues,
    JobResult,
    ProgressListener,
    ShardRequest,
    ShardResult,
)
from horde_job_runner.synthetic.persistence import BatchStore

Keypair = Any  # a bittensor sr25519 keypair (`horde_common.crypto.load_hotkey`)

__all__ = ["DebugBatch", "DebugConfigError", "debug_miners", "run_debug_batch"]


class DebugConfigError(ValueError):
    """The DEBUG_MINER_* settings do not describe any miner (one-line message)."""


@dataclass
class DebugBatch:
    batch_id: int
    result: ShardResult
    jobs: list[JobResult] = field(default_factory=list)


def debug_miners(
    settings: Settings, dev_miner_hotkey: Callable[[int], str] | None = None
) -> list[MinerEndpoint]:
    """The miners `DEBUG_MINER_*` describe (see the module docstring)."""
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
    """Create a debug batch and run it against `miners`; the database is migrated first if asked."""
    url = settings.database_url
    if migrate:
        from horde_common.db.migrate import upgrade

        await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    try:
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
            job_factory=job_factory or default_job_factory(),
            release_waiter=None,  # no scheduler: release as soon as the spin-up window is over
            progress=progress,
            service="cli",
            **deps_overrides,
        )
        request = ShardRequest(batch_id=batch_id, miners=miners, weights_version=weights_version)
        result = await run_shard(request, deps)
        if result.persisted:
            async with sessions.begin() as session:
                await session.execute(
                    update(SyntheticJobBatch)
                    .where(SyntheticJobBatch.id == batch_id)
                    .values(completed_at=datetime.now(UTC))
                )
        return DebugBatch(batch_id=batch_id, result=result, jobs=result.jobs)
    finally:
        await engine.dispose()
