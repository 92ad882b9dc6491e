"""The job-generation worker processes: one `GenerationPool` per owner (docs/performance.md lesson 2).

The owner is whoever creates it, and it alone stops it: a job-runner service instance (a
`Dependency` of its spec, `open_generation_pool`, which its `JobRunnerRuntime` uses), the debug
command, a bench, a test. Nothing here is process-wide, so two instances in one process have
distinct workers and stopping one leaves the other working.

The pool uses the `forkserver` start method (forking the service process itself, with its asyncio
loop and driver threads, is not safe) with the generators preloaded (`FORKSERVER_PRELOAD`). Its
executor is created on first use; `warm_up()` / `start()` move the start-up cost out of the first
batch. A chunk already running cannot be cancelled in its worker: `recycle(executor)` kills that
executor's workers, and the next use creates a new executor. `shutdown()` stops the workers and
waits for them.

Recycling kills workers that may be half-way through writing a result into the executor's result
pipe. The executor's management thread, reading that pipe, would then wait forever for the rest of
the message (the parent itself holds a write end, so no end-of-file ever comes), and
`concurrent.futures` joins that thread at interpreter exit: a hang after everything else finished.
So every retired executor's management thread is tracked and, once its workers are gone, the
parent's write end of the result pipe is closed (`_unblock`): the last write end, so the reader
gets what complete messages are left, then end-of-file; the executor declares itself broken and
the thread ends. A recycled executor is broken anyway, so that is done at once; at `shutdown` the
thread first gets `MANAGER_JOIN_S` to end by itself.
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
from collections.abc import AsyncIterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from horde_common.service.context import ServiceContext

__all__ = [
    "FORKSERVER_PRELOAD",
    "MANAGER_THREAD_NAME",
    "SHUTDOWN_GRACE_S",
    "GenerationPool",
    "management_threads",
    "open_generation_pool",
    "pool_size",
]

# Imported once in the forkserver, so that every worker shares them instead of importing its own
# copy: the generators and the workers' entry point (`generation.build_jobs`), named here rather
# than imported (this module does not depend on the job factories). ("__main__" would share the
# main script too, which each worker re-imports as `__mp_main__`, but Python 3.11's forkserver never
# receives the main path, so it is not listed.)
FORKSERVER_PRELOAD: Final = ("horde_job_runner.generators", "horde_job_runner.synthetic.generation")
# How long `shutdown` lets running chunks finish (each is ~0.1 s) before terminating workers.
SHUTDOWN_GRACE_S: Final = 5.0
# After SIGTERM, how long to wait for a worker before SIGKILL (a worker holds no resources to
# release: it only computes).
TERMINATE_GRACE_S: Final = 2.0
# The name of a generation executor's management thread (`management_threads` finds them by it).
MANAGER_THREAD_NAME: Final = "generation-pool-manager"
# At `shutdown`, once its workers are gone, how long a management thread gets to end by itself (it
# only has to read what is left in its pipes and join dead processes: milliseconds) before its
# result pipe is closed under it; then as long again to end.
MANAGER_JOIN_S: Final = 2.0


def pool_size() -> int:
    """Workers per pool: the cores, at most 4 (a 512-job batch is ~1 s of CPU at production)."""
    return max(1, min(4, os.cpu_count() or 1))


def management_threads() -> list[threading.Thread]:
    """Every live management thread of a generation executor in this process, whatever its pool (the
    tests check that none outlives its pool: `concurrent.futures` joins them at interpreter exit)."""
    return [t for t in threading.enumerate() if t.name == MANAGER_THREAD_NAME and t.is_alive()]


class _Executor(concurrent.futures.ProcessPoolExecutor):
    """A `ProcessPoolExecutor` whose management thread is named `MANAGER_THREAD_NAME`."""

    def _start_executor_manager_thread(self) -> None:
        super()._start_executor_manager_thread()
        thread = getattr(self, "_executor_manager_thread", None)
        if isinstance(thread, threading.Thread):
            thread.name = MANAGER_THREAD_NAME


@dataclass(eq=False)
class _Retired:
    """An executor being stopped: its workers, and its management thread until that ends."""

    pids: list[int]
    manager: threading.Thread | None
    reaper: threading.Thread | None = None


class GenerationPool:
    """One owner's job-generation workers (see the module docstring). Thread-safe: the loop submits
    and recycles, `warm_up` and `shutdown` run in threads.

    A pool that was shut down stays shut: using it again raises `RuntimeError`, so that a straggling
    generation cannot start workers that outlive their owner.
    """

    def __init__(
        self, max_workers: int | None = None, *, preload: Sequence[str] = FORKSERVER_PRELOAD
    ) -> None:
        self.size = max_workers or pool_size()
        self._preload = list(preload)
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._warm: concurrent.futures.ProcessPoolExecutor | None = None  # the one `warm_up` started
        self._retired: list[_Retired] = []
        self._closed = False

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        """The current executor, created if there is none (its workers start on first submit)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the generation pool is shut down")
            if self._executor is None:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(self._preload)
                self._executor = _Executor(max_workers=self.size, mp_context=ctx)
            return self._executor

    def is_warm(self) -> bool:
        """Whether the current executor's workers were started by `warm_up`."""
        with self._lock:
            return self._executor is not None and self._executor is self._warm

    def warm_up(self) -> None:
        """Start the worker processes now (blocking, ~0.5 s) instead of inside the first batch. An
        executor recycled meanwhile is left alone: the next generation starts a new one."""
        executor = self.executor()
        try:
            for f in [executor.submit(os.getpid) for _ in range(self.size)]:
                f.result()
        except (BrokenProcessPool, RuntimeError):  # recycled (or shut down) under us
            return
        with self._lock:
            if self._executor is executor:
                self._warm = executor

    async def start(self) -> None:
        """`warm_up()` in a thread: await it, or wrap it in a task to overlap the start with other
        work (the debug command's connects)."""
        await asyncio.to_thread(self.warm_up)

    def worker_pids(self) -> list[int]:
        """The pids of the current executor's workers (none before it starts)."""
        with self._lock:
            executor = self._executor
        return _pids(executor) if executor is not None else []

    def forget(self, executor: concurrent.futures.Executor) -> None:
        """If `executor` is the current one, drop it: the next user starts a new one. (A broken
        executor's management thread ends by itself: its workers are dead.)"""
        with self._lock:
            if self._executor is executor:
                self._executor = self._warm = None

    def recycle(self, executor: concurrent.futures.Executor) -> None:
        """Kill `executor`'s workers now and forget it (the next generation starts a new one). Work
        still queued in it fails with `BrokenProcessPool`, which `PoolJobFactory` resubmits.

        Returns at once: the workers are signalled now; a background thread reaps them and makes
        sure the executor's management thread ends (`_finish`).
        """
        self.forget(executor)
        retired = _retire(executor)
        _signal(retired.pids, signal.SIGTERM)
        retired.reaper = threading.Thread(
            target=_finish, args=(retired, TERMINATE_GRACE_S, 0.0), name="generation-reaper", daemon=True
        )
        with self._lock:
            self._retired = [r for r in self._retired if _running(r)]
            self._retired.append(retired)
        retired.reaper.start()

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop the pool for good and wait until its workers and management threads are gone:
        queued chunks are cancelled, running ones get `grace_s` to finish (each is ~0.1 s), and
        workers still alive then are terminated. Blocking: call it in a thread from async code."""
        with self._lock:
            executor, self._executor, self._warm = self._executor, None, None
            self._closed = True
            retired, self._retired = self._retired, []
        if executor is not None:
            _finish(_retire(executor), grace_s, MANAGER_JOIN_S)
        for r in retired:  # recycled ones: their reapers end within a few seconds (`_finish`)
            if r.reaper is not None:
                r.reaper.join()

    def management_threads(self) -> list[threading.Thread]:
        """The live management threads of this pool's executors (current and retired)."""
        with self._lock:
            executors = [self._executor] if self._executor is not None else []
            retired = list(self._retired)
        threads = [getattr(e, "_executor_manager_thread", None) for e in executors]
        threads += [r.manager for r in retired]
        return [t for t in threads if t is not None and t.is_alive()]


@contextlib.asynccontextmanager
async def open_generation_pool(ctx: ServiceContext) -> AsyncIterator[GenerationPool]:
    """The job-runner's `Dependency(GenerationPool, ...)`: one pool per service instance, idle until
    `start_generation` warms it; shut down when the instance stops (again, harmlessly, after
    `stop_generation`), so that no worker outlives its instance even when `on_stop` did not run."""
    pool = GenerationPool()
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.shutdown)


def _workers(executor: concurrent.futures.Executor) -> list[Any]:
    # `_processes` (pid -> Process) is private but stable since 3.2; 3.14 adds terminate_workers().
    processes = getattr(executor, "_processes", None) or {}
    return list(processes.values())


def _pids(executor: concurrent.futures.Executor) -> list[int]:
    return [p.pid for p in _workers(executor) if p.pid is not None]


def _retire(executor: concurrent.futures.Executor) -> _Retired:
    """Shut `executor` down without waiting (queued work is cancelled, no worker starts any more)
    and keep what stopping it needs: `shutdown(wait=False)` drops the executor's own references to
    its workers and management thread. Workers are read after the shutdown: a submit spawning one
    holds the executor's lock, so every worker it will ever have exists by then."""
    processes = getattr(executor, "_processes", None) or {}
    manager: threading.Thread | None = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    pids = [p.pid for p in list(processes.values()) if p.pid is not None]
    return _Retired(pids=pids, manager=manager)


def _running(retired: _Retired) -> bool:
    return (retired.reaper is not None and retired.reaper.is_alive()) or (
        retired.manager is not None and retired.manager.is_alive()
    )


def _finish(retired: _Retired, grace_s: float, patience_s: float) -> None:
    """Reap the workers (`grace_s` to end by themselves), then make sure the management thread ends:
    `patience_s` to do so by itself, then its result pipe is closed under it (`_unblock`) and it
    gets `MANAGER_JOIN_S` more."""
    _reap(retired.pids, grace_s)
    manager = retired.manager
    if manager is None:
        return
    manager.join(patience_s)
    if manager.is_alive():
        _unblock(manager)
        manager.join(MANAGER_JOIN_S)


def _unblock(manager: threading.Thread) -> None:
    """Close the parent's write end of `manager`'s result pipe. Called once the workers are gone,
    it is the last write end: a read waiting for the rest of a message a killed worker left
    half-written gets end-of-file, which the management thread treats as a broken pool (it fails
    what was pending, joins the dead workers and ends)."""
    result_queue = getattr(manager, "result_queue", None)
    writer = getattr(result_queue, "_writer", None)
    if writer is not None:
        with contextlib.suppress(OSError):
            writer.close()


def _alive(pid: int) -> bool:
    """Whether `pid` still exists. The workers are the forkserver's children and it reaps them, so a
    dead worker's pid disappears; polling the pid leaves the executor's own `Process` objects alone
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
