"""Fixtures shared by the job-runner's tests: the store on the module's own migrated database
(`db_url`, testing/fixtures_db.py), and a session-end check that no job-generation pool was left
running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from horde_common.db import create_engine, session_factory
from horde_job_runner.synthetic.generation_pool import management_threads
from horde_job_runner.synthetic.persistence import BatchStore

# How long the generation management threads still running at the end of the session get to end (a
# pool shut down by the last test ends them within a few seconds) before they count as leaked.
LEFTOVER_THREADS_WAIT_S = 10.0


@pytest.fixture(scope="module")
async def store(db_url: str) -> AsyncIterator[BatchStore]:
    """The module's `BatchStore`, on an engine disposed at the module's end."""
    engine = create_engine(db_url)
    yield BatchStore(session_factory(engine))
    await engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _no_generation_pool_left() -> Iterator[None]:
    """At the end of the session, fail if a generation pool's management thread is still running.

    `concurrent.futures` joins those threads at interpreter exit: one left behind (a pool never shut
    down, or a thread stuck on a killed worker's half-written result) would hang the run after
    every test passed. Here it is a failure instead, and the leftover threads are unblocked (their
    workers killed, their result pipes closed) so that the interpreter can still exit.
    """
    yield
    deadline = time.monotonic() + LEFTOVER_THREADS_WAIT_S
    for thread in management_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    leftover = management_threads()
    if not leftover:
        return
    for thread in leftover:
        _release(thread)
    pytest.fail(
        f"{len(leftover)} job-generation management thread(s) still running at the end of the session: "
        "a GenerationPool was not shut down, or a recycle left its thread blocked",
        pytrace=False,
    )


def _release(thread: threading.Thread) -> None:
    """Kill a leftover management thread's workers and close its result pipe's parent write end
    (private `concurrent.futures` attributes: a rescue at exit, not something the code relies on)."""
    for process in list(getattr(thread, "processes", {}).values()):
        process.kill()
        process.join(5.0)
    writer = getattr(getattr(thread, "result_queue", None), "_writer", None)
    if writer is not None:
        writer.close()
    thread.join(5.0)
