"""Job generation that overruns its deadline is really stopped (issue 6 §1), on the real pool.

`PoolJobFactory` builds jobs in bounded chunks; a cancelled generation submits no more chunks, and
the workers still building one are killed (the pool creates a new executor on next use). These
tests watch the worker processes themselves; each test owns its `GenerationPool`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psutil
import pytest

from horde_job_runner.synthetic.generation import GENERATION_CHUNK_JOBS, PoolJobFactory, chunked
from horde_job_runner.synthetic.generation_pool import GenerationPool

pytestmark = pytest.mark.timeout(120)

AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
BILLION = 10**9


@pytest.fixture()
def pool() -> Iterator[GenerationPool]:
    """The test's own pool, stopped (and its workers waited for) after the test."""
    pool = GenerationPool()
    yield pool
    pool.shutdown()


async def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after up to `timeout_s` (polled: a grandchild's exit has no event here)."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if psutil.pid_exists(p)]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        alive = [p for p in alive if psutil.pid_exists(p)]
    return alive


def test_chunks_are_bounded_and_lazy() -> None:
    chunks = chunked([(AO, 150), (SPIN, 10)], 64)
    assert [sum(n for _, n in c) for c in chunks] == [64, 64, 32]
    assert list(chunked([(AO, 130), (SPIN, 62)], 64))[2] == [(AO, 2), (SPIN, 62)]
    huge = chunked([(AO, BILLION)])  # nothing is built up front
    assert next(huge) == [(AO, GENERATION_CHUNK_JOBS)]


async def test_an_overrunning_generation_is_stopped_and_its_workers_are_gone(pool: GenerationPool) -> None:
    """A generation with no cap (10^9 jobs, straight to the factory) cancelled by its deadline: the
    workers that were building it are killed, and the pool works again after."""
    factory = PoolJobFactory(pool)
    await pool.start()
    workers = pool.worker_pids()
    assert workers and all(psutil.pid_exists(p) for p in workers)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await factory.generate("hostile", [(AO, BILLION)], 4, "localnet")
    assert time.monotonic() - started < 3.0
    assert await wait_gone(workers, 5.0) == []
    # The next generation gets a fresh pool.
    jobs = await factory.generate("honest", [(AO, 3), (SPIN, 2)], 4, "localnet")
    assert sorted(j.executor_class for j in jobs) == sorted([AO] * 3 + [SPIN] * 2)
    assert pool.worker_pids() and set(pool.worker_pids()).isdisjoint(workers)


async def test_a_recycle_does_not_lose_another_miners_jobs(pool: GenerationPool) -> None:
    """Two generations share the pool; the overrunning one is cancelled and its workers killed
    while the other is half-way: the other's lost chunks are resubmitted to a new executor."""
    await pool.start()
    workers = pool.worker_pids()
    honest = asyncio.ensure_future(
        PoolJobFactory(pool, window=1).generate("honest", [(AO, 3000)], 4, "localnet")
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await PoolJobFactory(pool).generate("hostile", [(AO, BILLION)], 4, "localnet")
    assert not honest.done()  # 47 chunks, one at a time: still going when the pool was recycled
    jobs = await asyncio.wait_for(honest, 60)
    assert len(jobs) == 3000 and len({j.job_uuid for j in jobs}) == 3000
    assert await wait_gone(workers, 5.0) == []


async def test_shutdown_pool_stops_and_waits_for_the_workers(pool: GenerationPool) -> None:
    await pool.start()
    workers = pool.worker_pids()
    assert workers and all(psutil.pid_exists(p) for p in workers)
    await asyncio.to_thread(pool.shutdown)
    assert not any(psutil.pid_exists(p) for p in workers)
    assert pool.worker_pids() == []
    assert pool.management_threads() == []  # joined: nothing left for the interpreter's exit
