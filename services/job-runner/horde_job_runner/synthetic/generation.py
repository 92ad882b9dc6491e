"""Building synthetic jobs off the event loop (spec A §3.6; reference-measurements lesson 2).

A hashcat job costs ~0.4 ms (localnet) to ~1.5 ms (production) of pure CPU: passwords, hashes,
Fernet, pickle and zip. The reference built them serially on its event loop (~2.5 ms each, 16 % of
a 512-job batch). Here each miner's jobs are built in a worker process as soon as that miner's
manifest arrives, while the other manifests are still coming in, so that generation overlaps the
manifest phase and never blocks the loop.

The pool uses the `forkserver` start method (forking the service process itself, with its asyncio
loop and driver threads, is not safe) with the generators module preloaded, and is created once per
process; `warm_up()` at service start moves its start-up cost out of the first batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from horde_common.config import HashcatDifficulty
from horde_job_runner.generators import JobGenerator, make_generator

__all__ = [
    "InlineJobFactory",
    "JobFactory",
    "PoolJobFactory",
    "build_jobs",
    "default_job_factory",
    "shutdown_pool",
    "warm_up",
]

ClassCounts = Sequence[tuple[str, int]]


def build_jobs(
    miner_hotkey: str,
    class_counts: ClassCounts,
    weights_version: int,
    difficulty: str,
    now: datetime | None = None,
) -> list[JobGenerator]:
    """`count` generators per (class, count) for one miner. Runs in a worker process."""
    now = now or datetime.now(UTC)
    return [
        make_generator(executor_class, weights_version, miner_hotkey, difficulty, now=now)
        for executor_class, count in class_counts
        for _ in range(count)
    ]


class JobFactory(Protocol):
    """Builds one miner's hashcat jobs (LLM jobs are not built here: no prompt samples yet)."""

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]: ...


class InlineJobFactory:
    """Builds jobs in a thread (tests, tiny batches); `in_thread=False` builds them on the loop."""

    def __init__(self, *, in_thread: bool = True) -> None:
        self.in_thread = in_thread

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]:
        args = (miner_hotkey, list(class_counts), weights_version, str(difficulty))
        if self.in_thread:
            return await asyncio.to_thread(build_jobs, *args)
        return build_jobs(*args)


class PoolJobFactory:
    """Builds jobs in a process pool (the default in the service, the debug command and the bench)."""

    def __init__(self, executor: concurrent.futures.Executor | None = None) -> None:
        self._executor = executor

    @property
    def executor(self) -> concurrent.futures.Executor:
        return self._executor if self._executor is not None else _shared_pool()

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor,
            build_jobs,
            miner_hotkey,
            list(class_counts),
            weights_version,
            str(difficulty),
            None,
        )


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _shared_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["horde_job_runner.generators"])
            _pool = concurrent.futures.ProcessPoolExecutor(max_workers=pool_size(), mp_context=ctx)
        return _pool


def _noop() -> int:
    return os.getpid()


def warm_up() -> None:
    """Start the worker processes now (blocking, ~0.5 s) instead of inside the first batch."""
    pool = _shared_pool()
    for f in [pool.submit(_noop) for _ in range(pool_size())]:
        f.result()


def shutdown_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def default_job_factory() -> JobFactory:
    return PoolJobFactory()
