"""Building synthetic jobs off the event loop (docs/miner-protocol.md §3.6; docs/performance.md lesson 2).

A hashcat job costs ~0.4 ms (localnet) to ~1.5 ms (production) of pure CPU: passwords, hashes,
Fernet, pickle and zip. The reference built them serially on its event loop (~2.5 ms each, 16 % of
a 512-job batch). Here each miner's jobs are built in a worker process as soon as that miner's
manifest arrives, while the other manifests are still coming in, so that generation overlaps the
manifest phase and never blocks the loop.

Generation runs in chunks of at most `GENERATION_CHUNK_JOBS` jobs, submitted a few at a time, so
that a cancelled generation (its deadline passed) submits nothing more. A chunk already running
cannot be cancelled in its worker: the pool's workers are then killed and the pool is recreated on
next use (`recycle_pool`), so an abandoned generation never leaves a process working. Generations
of other miners that lose their chunk that way resubmit it to the new pool.

The pool uses the `forkserver` start method (forking the service process itself, with its asyncio
loop and driver threads, is not safe) with the generators preloaded (`FORKSERVER_PRELOAD`), and is
created once per process. `warm_up()` / `start_pool()` move its start-up cost out of the first
batch (the debug command overlaps it with its connects); `shutdown_pool()` stops the workers and
waits for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from horde_common.config import HashcatDifficulty
from horde_job_runner.generators import JobGenerator, make_generator

__all__ = [
    "GENERATION_CHUNK_JOBS",
    "InlineJobFactory",
    "JobFactory",
    "PoolJobFactory",
    "build_jobs",
    "chunked",
    "default_job_factory",
    "forget_pool",
    "pool_worker_pids",
    "recycle_pool",
    "shutdown_pool",
    "start_pool",
    "warm_up",
]

ClassCounts = Sequence[tuple[str, int]]

# Jobs per worker call. At production difficulty a job is ~1.5 ms of CPU and a 62 KB payload, so a
# chunk is ~0.1 s and ~4 MB to pickle back: a cancelled generation stops within that, while the
# ~1 ms cost of a round trip to the pool stays around 1 % of the chunk. A capped miner (at most
# 256 executors) needs at most 4 chunks.
GENERATION_CHUNK_JOBS: Final = 64
# Attempts per chunk when the pool breaks under it (another generation's overrun recycled it, or a
# worker died): the first retry goes to a fresh pool; a pool that keeps breaking is our failure.
CHUNK_ATTEMPTS: Final = 3
# How long `shutdown_pool` lets running chunks finish (each is ~0.1 s) before terminating workers.
SHUTDOWN_GRACE_S: Final = 5.0
# After SIGTERM, how long to wait for a worker before SIGKILL (a worker holds no resources to
# release: it only computes).
TERMINATE_GRACE_S: Final = 2.0


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


def chunked(class_counts: ClassCounts, size: int = GENERATION_CHUNK_JOBS) -> Iterator[list[tuple[str, int]]]:
    """Split (class, count) pairs into chunks of at most `size` jobs, lazily: a count of 10^9 costs
    nothing until its chunks are asked for."""
    chunk: list[tuple[str, int]] = []
    room = size
    for executor_class, count in class_counts:
        while count > 0:
            n = min(count, room)
            chunk.append((executor_class, n))
            count -= n
            room -= n
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


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
    """Builds jobs in a thread (tests, tiny batches); `in_thread=False` builds them on the loop.

    Chunk by chunk too: a thread cannot be killed, but a cancelled generation starts no new chunk.
    """

    def __init__(self, *, in_thread: bool = True) -> None:
        self.in_thread = in_thread

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]:
        now = datetime.now(UTC)
        jobs: list[JobGenerator] = []
        for chunk in chunked(class_counts):
            args = (miner_hotkey, chunk, weights_version, str(difficulty), now)
            if self.in_thread:
                jobs.extend(await asyncio.to_thread(build_jobs, *args))
            else:
                jobs.extend(build_jobs(*args))
                await asyncio.sleep(0)
        return jobs


@dataclass(slots=True)
class _Chunk:
    index: int
    counts: list[tuple[str, int]]
    attempt: int
    pool: concurrent.futures.Executor
    future: concurrent.futures.Future[list[JobGenerator]]


class PoolJobFactory:
    """Builds jobs in a process pool (the default in the service, the debug command and the bench).

    With no `executor`, the shared pool of this process is used (started in a thread if it is not
    yet, so that the loop never waits for processes to spawn), and recycled when a cancelled
    generation leaves a chunk running. A given executor is the caller's: it is never recycled.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor | None = None,
        *,
        chunk_jobs: int = GENERATION_CHUNK_JOBS,
        window: int | None = None,
    ) -> None:
        self._executor = executor
        self.chunk_jobs = chunk_jobs
        self.window = window  # chunks in flight per generation; default: the pool size

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
        if self._executor is None and not _is_warm():
            with contextlib.suppress(BrokenProcessPool):  # recycled meanwhile: the chunks retry
                await start_pool()
        now = datetime.now(UTC)
        pending = enumerate(chunked(class_counts, self.chunk_jobs))
        window = self.window or pool_size()
        results: dict[int, list[JobGenerator]] = {}
        in_flight: dict[asyncio.Future[list[JobGenerator]], _Chunk] = {}

        def submit(index: int, counts: list[tuple[str, int]], attempt: int) -> None:
            pool = self.executor
            cf = pool.submit(build_jobs, miner_hotkey, counts, weights_version, str(difficulty), now)
            in_flight[asyncio.wrap_future(cf)] = _Chunk(index, counts, attempt, pool, cf)

        try:
            while True:
                while len(in_flight) < window and (item := next(pending, None)) is not None:
                    submit(*item, 1)
                if not in_flight:
                    break
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    chunk = in_flight.pop(future)
                    try:
                        results[chunk.index] = future.result()
                    except BrokenProcessPool:
                        if self._executor is not None or chunk.attempt >= CHUNK_ATTEMPTS:
                            raise
                        forget_pool(chunk.pool)  # broken: the next submit starts a new one
                        submit(chunk.index, chunk.counts, chunk.attempt + 1)
        except asyncio.CancelledError:
            self._abandon(in_flight, kill=True)
            raise
        except BaseException:
            self._abandon(in_flight, kill=False)
            raise
        return [job for index in sorted(results) for job in results[index]]

    def _abandon(self, in_flight: Mapping[asyncio.Future[list[JobGenerator]], _Chunk], *, kill: bool) -> None:
        """Cancel the chunks not yet started. On a cancellation (a deadline overrun), a chunk already
        running has its pool recycled, so that no worker goes on building jobs nobody will use; on
        an error, running chunks (each bounded) are left to finish."""
        running: list[concurrent.futures.Executor] = []
        for future, chunk in in_flight.items():
            future.cancel()  # nobody waits for it any more: its outcome is not to be reported
            if not chunk.future.cancel() and not chunk.future.done() and chunk.pool not in running:
                running.append(chunk.pool)
        if kill and self._executor is None:
            for pool in running:
                recycle_pool(pool)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_warm: concurrent.futures.ProcessPoolExecutor | None = None  # the pool `warm_up` has started
_pool_lock = threading.Lock()


# Imported once in the forkserver, so that every worker shares them instead of importing its own
# copy: the generators and this module (the workers' entry point, `build_jobs`). ("__main__" would
# share the main script too, which each worker re-imports as `__mp_main__`, but Python 3.11's
# forkserver never receives the main path, so it is not listed.)
FORKSERVER_PRELOAD: Final = ["horde_job_runner.generators", __name__]


def pool_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _shared_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
            _pool = concurrent.futures.ProcessPoolExecutor(max_workers=pool_size(), mp_context=ctx)
        return _pool


def _is_warm() -> bool:
    with _pool_lock:
        return _pool is not None and _pool is _warm


def _workers(pool: concurrent.futures.Executor) -> list[Any]:
    # `_processes` (pid -> Process) is private but stable since 3.2; 3.14 adds terminate_workers().
    processes = getattr(pool, "_processes", None) or {}
    return list(processes.values())


def pool_worker_pids() -> list[int]:
    """The pids of the shared pool's worker processes (none before it starts)."""
    with _pool_lock:
        pool = _pool
    if pool is None:
        return []
    return [p.pid for p in _workers(pool) if p.pid is not None]


def _alive(pid: int) -> bool:
    """Whether `pid` still exists. The workers are the forkserver's children and it reaps them, so a
    dead worker's pid disappears; polling the pid leaves the pool's own `Process` objects alone
    (its management thread joins them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Poll until every pid is gone or `timeout_s` passed; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if _alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _reap(pids: list[int], grace_s: float) -> None:
    """Wait `grace_s` for the workers to end, SIGTERM the rest, then SIGKILL what ignores it."""
    alive = _wait_gone(pids, grace_s)
    if alive:
        _signal(alive, signal.SIGTERM)
        alive = _wait_gone(alive, TERMINATE_GRACE_S)
    if alive:
        _signal(alive, signal.SIGKILL)
        _wait_gone(alive, TERMINATE_GRACE_S)


def forget_pool(pool: concurrent.futures.Executor) -> None:
    """If `pool` is the shared pool, drop it: the next user starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None


def recycle_pool(pool: concurrent.futures.Executor) -> None:
    """Kill `pool`'s workers now and forget it (the next generation starts a new pool). Work still
    queued in it fails with `BrokenProcessPool`, which `PoolJobFactory` resubmits.

    Returns at once: the workers are signalled now and reaped by a background thread.
    """
    forget_pool(pool)
    pids = [p.pid for p in _workers(pool) if p.pid is not None]
    _signal(pids, signal.SIGTERM)
    pool.shutdown(wait=False, cancel_futures=True)
    threading.Thread(
        target=_reap, args=(pids, TERMINATE_GRACE_S), name="generation-reaper", daemon=True
    ).start()


def _noop() -> int:
    return os.getpid()


def warm_up() -> None:
    """Start the worker processes now (blocking, ~0.5 s) instead of inside the first batch."""
    global _warm
    pool = _shared_pool()
    for f in [pool.submit(_noop) for _ in range(pool_size())]:
        f.result()
    with _pool_lock:
        _warm = pool


async def start_pool() -> None:
    """`warm_up()` in a thread: await it, or wrap it in a task to overlap the start with other work
    (the debug command's connects)."""
    await asyncio.to_thread(warm_up)


def shutdown_pool(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Stop the shared pool and wait until its workers are gone: queued chunks are cancelled,
    running ones get `grace_s` to finish (each is ~0.1 s), and workers still alive then are
    terminated. Blocking: call it in a thread from async code."""
    global _pool, _warm
    with _pool_lock:
        pool, _pool, _warm = _pool, None, None
    if pool is None:
        return
    pids = [p.pid for p in _workers(pool) if p.pid is not None]
    pool.shutdown(wait=False, cancel_futures=True)
    _reap(pids, grace_s)
    pool.shutdown(wait=True)  # joins the pool's management thread, once its workers are gone


def default_job_factory() -> JobFactory:
    return PoolJobFactory()
