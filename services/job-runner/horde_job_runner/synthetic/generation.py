"""Building synthetic jobs off the event loop (docs/miner-protocol.md §3.6; docs/performance.md lesson 2).

A hashcat job costs ~0.4 ms (localnet) to ~1.5 ms (production) of pure CPU: passwords, hashes,
Fernet, pickle and zip. The reference built them serially on its event loop (~2.5 ms each, 16 % of
a 512-job batch). Here each miner's jobs are built in a worker process as soon as that miner's
manifest arrives, while the other manifests are still coming in, so that generation overlaps the
manifest phase and never blocks the loop.

Generation runs in chunks of at most `GENERATION_CHUNK_JOBS` jobs, submitted a few at a time, so
that a cancelled generation (its deadline passed) submits nothing more. A chunk already running
cannot be cancelled in its worker: the executor's workers are then killed and the pool creates a new
executor on next use (`GenerationPool.recycle`), so an abandoned generation never leaves a process
working. Generations of other miners that lose their chunk that way resubmit it to the new executor.

The worker processes belong to a `generation_pool.GenerationPool`, one per owner (a service
instance, the debug command, a bench), given to `PoolJobFactory`: nothing here is process-wide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from horde_common.config import HashcatDifficulty
from horde_job_runner.generators import JobGenerator, make_generator

__all__ = [
    "GENERATION_CHUNK_JOBS",
    "InlineJobFactory",
    "JobFactory",
    "PoolJobFactory",
    "WorkerPool",
    "build_jobs",
    "chunked",
]

ClassCounts = Sequence[tuple[str, int]]

# Jobs per worker call. At production difficulty a job is ~1.5 ms of CPU and a 62 KB payload, so a
# chunk is ~0.1 s and ~4 MB to pickle back: a cancelled generation stops within that, while the
# ~1 ms cost of a round trip to the pool stays around 1 % of the chunk. A capped miner (at most
# 256 executors) needs at most 4 chunks.
GENERATION_CHUNK_JOBS: Final = 64
# Attempts per chunk when the pool breaks under it (another generation's overrun recycled it, or a
# worker died): the first retry goes to a fresh executor; a pool that keeps breaking is our failure.
CHUNK_ATTEMPTS: Final = 3


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
    """Builds one miner's hashcat jobs (LLM jobs need the shard's prompt samples: `llm_samples`)."""

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
    executor: concurrent.futures.Executor
    future: concurrent.futures.Future[list[JobGenerator]]


class WorkerPool(Protocol):
    """What `PoolJobFactory` needs of its pool: `generation_pool.GenerationPool` (a protocol, so that
    the factories and the process management stay independent modules: docs/synthetic-batch.md §8)."""

    size: int

    def executor(self) -> concurrent.futures.Executor: ...

    def is_warm(self) -> bool: ...

    async def start(self) -> None: ...

    def forget(self, executor: concurrent.futures.Executor) -> None: ...

    def recycle(self, executor: concurrent.futures.Executor) -> None: ...


class PoolJobFactory:
    """Builds jobs in the owner's process pool (the service instance's, the debug command's, the
    bench's): the pool is started in a thread if it is not yet (the loop never waits for processes to
    spawn), and recycled when a cancelled generation leaves a chunk running.
    """

    def __init__(
        self,
        pool: WorkerPool,
        *,
        chunk_jobs: int = GENERATION_CHUNK_JOBS,
        window: int | None = None,
    ) -> None:
        self.pool = pool
        self.chunk_jobs = chunk_jobs
        self.window = window  # chunks in flight per generation; default: the pool size

    async def generate(
        self,
        miner_hotkey: str,
        class_counts: ClassCounts,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> list[JobGenerator]:
        if not self.pool.is_warm():
            with contextlib.suppress(BrokenProcessPool):  # recycled meanwhile: the chunks retry
                await self.pool.start()
        now = datetime.now(UTC)
        pending = enumerate(chunked(class_counts, self.chunk_jobs))
        window = self.window or self.pool.size
        results: dict[int, list[JobGenerator]] = {}
        in_flight: dict[asyncio.Future[list[JobGenerator]], _Chunk] = {}

        def submit(index: int, counts: list[tuple[str, int]], attempt: int) -> None:
            executor = self.pool.executor()
            cf = executor.submit(build_jobs, miner_hotkey, counts, weights_version, str(difficulty), now)
            in_flight[asyncio.wrap_future(cf)] = _Chunk(index, counts, attempt, executor, cf)

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
                        if chunk.attempt >= CHUNK_ATTEMPTS:
                            raise
                        self.pool.forget(chunk.executor)  # broken: the next submit starts a new one
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
        running has its executor recycled, so that no worker goes on building jobs nobody will use;
        on an error, running chunks (each bounded) are left to finish."""
        running: list[concurrent.futures.Executor] = []
        for future, chunk in in_flight.items():
            future.cancel()  # nobody waits for it any more: its outcome is not to be reported
            if not chunk.future.cancel() and not chunk.future.done() and chunk.executor not in running:
                running.append(chunk.executor)
        if kill:
            for executor in running:
                self.pool.recycle(executor)
