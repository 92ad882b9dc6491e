"""`GenerationPool`: each owner's own workers, and nothing left running once it is shut down.

Two pools in one process have distinct workers, and stopping one leaves the other working; so do
two job-runner service instances (each opens its own pool from `app.SPEC`). A pool recycled while chunks are being sent back leaves no management thread
behind: a worker killed half-way through writing its result used to leave the executor's management
thread waiting forever for the rest, and `concurrent.futures` joins that thread at interpreter exit
(the process then hung after every test had passed). That check runs in a subprocess, so that a hang
fails the test instead of hanging pytest.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from contextlib import AsyncExitStack

import psutil
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from horde_common.config import load_settings
from horde_common.service import ServiceContext, open_dependencies
from horde_job_runner.app import SPEC
from horde_job_runner.synthetic.generation import PoolJobFactory
from horde_job_runner.synthetic.generation_pool import GenerationPool
from horde_job_runner.synthetic.handler import JobRunnerRuntime
from horde_localnet import keys

pytestmark = pytest.mark.timeout(180)

AO = "always_on.gpu-24gb"
BILLION = 10**9
# The subprocess: 20 recycles while results are in flight, 5 overrunning generations, a shutdown.
# Generous for a loaded 2-core machine; each recycle is ~0.2 s when things work.
CHILD_TIMEOUT_S = 150.0

# Run with `python -c` (not a script file: the forkserver would re-import a script in each worker).
# Each payload loop sends back results of 32 MiB (hundreds of pipe-buffer writes) and recycles the
# executor as soon as the first one is in, so the others are killed in the middle of their writes.
# The generation loops recycle the way a shard does: a generation cancelled by its deadline.
RECYCLING_PROCESS = r"""
import asyncio, concurrent.futures, json, sys, time
from horde_job_runner.synthetic.generation import PoolJobFactory
from horde_job_runner.synthetic.generation_pool import GenerationPool, management_threads

PAYLOAD = 32 * 2**20
pool = GenerationPool(max_workers=2)
recycled = 0
for _ in range(20):
    executor = pool.executor()
    futures = [executor.submit(bytes, PAYLOAD) for _ in range(2 * pool.size)]
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
    pool.recycle(executor)
    recycled += 1


async def overrun():
    try:
        async with asyncio.timeout(0.3):
            await PoolJobFactory(pool).generate("hostile", [("always_on.gpu-24gb", 10**9)], 4, "localnet")
    except TimeoutError:
        return 1
    return 0


for _ in range(5):
    recycled += asyncio.run(overrun())
started = time.monotonic()
pool.shutdown()
out = {"recycled": recycled, "shutdown_s": time.monotonic() - started,
       "left": [t.name for t in management_threads()]}
print("RESULT " + json.dumps(out), flush=True)
"""


def run_recycling_process() -> dict[str, object]:
    """Run `RECYCLING_PROCESS` to its exit; its RESULT line."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RECYCLING_PROCESS],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the recycling process did not exit within {CHILD_TIMEOUT_S:g} s: {exc.stdout!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return result


def test_recycling_mid_flight_leaves_no_management_thread_and_the_process_exits() -> None:
    result = run_recycling_process()
    assert result["recycled"] == 25
    assert result["left"] == []  # every executor's management thread ended by the shutdown's return
    assert isinstance(result["shutdown_s"], float) and result["shutdown_s"] < 30.0
    # (and the interpreter's exit waited on none: `run_recycling_process` fails on a timeout)


async def test_two_pools_have_their_own_workers_and_stop_apart() -> None:
    first, second = GenerationPool(), GenerationPool()
    try:
        await asyncio.gather(first.start(), second.start())
        first_workers, second_workers = first.worker_pids(), second.worker_pids()
        assert first_workers and second_workers
        assert set(first_workers).isdisjoint(second_workers)

        await asyncio.to_thread(first.shutdown)  # one instance stops
        assert not any(psutil.pid_exists(p) for p in first_workers)
        assert first.worker_pids() == [] and first.management_threads() == []
        with pytest.raises(RuntimeError):
            first.executor()  # a stopped pool starts no worker again

        assert all(psutil.pid_exists(p) for p in second_workers)  # the other goes on
        jobs = await PoolJobFactory(second).generate("honest", [(AO, 3)], 4, "localnet")
        assert len(jobs) == 3
        assert second.worker_pids() == second_workers
    finally:
        await asyncio.gather(asyncio.to_thread(first.shutdown), asyncio.to_thread(second.shutdown))
    assert second.management_threads() == []


async def test_a_recycle_of_one_pool_leaves_the_other_alone() -> None:
    first, second = GenerationPool(), GenerationPool()
    try:
        await asyncio.gather(first.start(), second.start())
        second_workers = second.worker_pids()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await PoolJobFactory(first).generate("hostile", [(AO, BILLION)], 4, "localnet")
        assert second.worker_pids() == second_workers
        assert all(psutil.pid_exists(p) for p in second_workers)
    finally:
        await asyncio.gather(asyncio.to_thread(first.shutdown), asyncio.to_thread(second.shutdown))


async def test_stopping_one_service_instance_leaves_the_others_generation_running() -> None:
    """Two job-runner instances as the runner builds them (`app.SPEC` dependencies, its on_start and
    on_stop hooks): each has its pool, its shards build jobs there, and stopping one instance stops
    only its own workers."""
    instances = [
        ServiceContext(
            spec=SPEC,
            settings=load_settings(SYNTHETIC_HASHCAT_DIFFICULTY="localnet"),
            session_factory=async_sessionmaker(),  # never opened: no shard runs here
            hotkey=keys.validator_keypair(index),
        )
        for index in range(2)
    ]
    async with AsyncExitStack() as stack:
        for ctx in instances:
            await stack.enter_async_context(open_dependencies(ctx))
        first, second = (ctx.dependency(GenerationPool) for ctx in instances)
        assert first is not second
        for ctx, pool in zip(instances, (first, second), strict=True):
            runtime = ctx.dependency(JobRunnerRuntime)
            assert runtime.pool is pool
            factory = runtime.deps().job_factory
            assert isinstance(factory, PoolJobFactory) and factory.pool is pool
        assert SPEC.on_start is not None and SPEC.on_stop is not None
        await asyncio.gather(*(SPEC.on_start(ctx) for ctx in instances))
        first_workers, second_workers = first.worker_pids(), second.worker_pids()
        assert first_workers and second_workers and set(first_workers).isdisjoint(second_workers)

        await SPEC.on_stop(instances[0])
        assert not any(psutil.pid_exists(p) for p in first_workers)
        assert all(psutil.pid_exists(p) for p in second_workers)
        factory = instances[1].dependency(JobRunnerRuntime).deps().job_factory
        jobs = await factory.generate("honest", [(AO, 2)], 4, "localnet")
        assert len(jobs) == 2 and second.worker_pids() == second_workers
    # Closing the instances (no on_stop for the second) still stops its workers.
    assert not any(psutil.pid_exists(p) for p in second_workers)
    assert first.management_threads() == second.management_threads() == []
