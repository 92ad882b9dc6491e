"""A simulated miner's jobs: their states, the miner's record of each, and the executor pool.

Jobs belong to the miner, not to a connection, so that they outlive a dropped connection as they do
on a real miner (its `AcceptedJob` rows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from horde_common.protocol.miner import (
    ExecutorClass,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
    V0JobRequest,
)


class ValidatorLink(Protocol):
    """What the job code needs of one validator connection (`connection.ValidatorLink` is one).

    Declared here, next to the jobs that use it, so the job modules never import the connection
    module and the connection module can import them.
    """

    validator: str
    serial: int
    deferred_ready: list[MinerJob]

    @property
    def is_open(self) -> bool: ...

    async def send(self, message: Any) -> bool: ...

    async def send_garbage(self, job_uuid: str | None) -> None: ...

    def abort(self) -> None: ...


class JobState(StrEnum):
    RESERVING = "reserving"  # waiting for a free executor
    DECLINED = "declined"
    SPINNING_UP = "spinning_up"
    READY = "ready"  # executor ready, waiting for the job request
    EXECUTOR_FAILED = "executor_failed"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABANDONED = "abandoned"  # no job request arrived within the reservation


# Who moves a job where (`lifecycle`, `delivery`): the executor is reserved or the job declined;
# the executor spins up, then is ready or fails; a ready job runs when its request comes, or is
# given up when the request never comes (`ABANDONED`, the reservation watchdog) or when its ready
# notice went stale before a reconnect (`FAILED`); a running job finishes or fails. `RESERVING`
# (where every job starts) is nobody's target; states without successors are final.
JOB_TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = {
    JobState.RESERVING: frozenset({JobState.DECLINED, JobState.SPINNING_UP}),
    JobState.SPINNING_UP: frozenset({JobState.READY, JobState.EXECUTOR_FAILED, JobState.ABANDONED}),
    JobState.READY: frozenset({JobState.RUNNING, JobState.ABANDONED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.FINISHED, JobState.FAILED}),
    JobState.DECLINED: frozenset(),
    JobState.EXECUTOR_FAILED: frozenset(),
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.ABANDONED: frozenset(),
}

TERMINAL_STATES: Final = frozenset(state for state, targets in JOB_TRANSITIONS.items() if not targets)
"""States a job never leaves: it has its outcome, or it will never get one."""


class IllegalTransition(ValueError):
    """A simulator bug: something tried to move a job along an edge `JOB_TRANSITIONS` lacks."""

    def __init__(self, job_uuid: str, current: JobState, target: JobState) -> None:
        allowed = ", ".join(sorted(JOB_TRANSITIONS[current])) or "nothing (final state)"
        super().__init__(f"job {job_uuid}: illegal transition {current} -> {target} (allowed: {allowed})")
        self.job_uuid = job_uuid
        self.current = current
        self.target = target


# The states in which a new connection of the job's validator joins the job in reconnect mode
# `real` (the real miner's `WAITING_FOR_EXECUTOR`, `WAITING_FOR_PAYLOAD` and `RUNNING`).
ACTIVE_STATES = frozenset({JobState.RESERVING, JobState.SPINNING_UP, JobState.READY, JobState.RUNNING})


@dataclass(eq=False)
class MinerJob:
    """The miner's record of one job of one validator."""

    job_uuid: str
    validator_hotkey: str
    executor_class: ExecutorClass
    initial: V0InitialJobRequest
    state: JobState = JobState.RESERVING
    changed_at: float = field(default_factory=time.monotonic)
    job_request: V0JobRequest | None = None
    outcome: V0JobFinishedRequest | V0JobFailedRequest | None = None
    outcome_delivered: bool = False
    holds_executor: bool = False
    time_took_us: int | None = None
    score_str: str | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    notify: Callable[[], None] = field(default=lambda: None, repr=False)
    # Reconnect mode `real`: the connection that carried the initial request (accept/decline go
    # there) and every open connection that joined the job (its later messages go to all of them).
    origin: ValidatorLink | None = field(default=None, repr=False)
    listeners: set[ValidatorLink] = field(default_factory=set, repr=False)

    def set_state(self, state: JobState) -> None:
        """Move the job to `state`; raises `IllegalTransition` (changing nothing) for a move that
        `JOB_TRANSITIONS` does not list, so a simulator bug surfaces instead of a ghost job."""
        if state not in JOB_TRANSITIONS[self.state]:
            raise IllegalTransition(self.job_uuid, self.state, state)
        self.state = state
        self.changed_at = time.monotonic()
        self.notify()


class ExecutorPool:
    """Free executors per class; a reservation waits for one up to `wait` seconds (the miner polls 360 s)."""

    def __init__(self, counts: dict[ExecutorClass, int]) -> None:
        self.counts = dict(counts)
        self._free = {cls: asyncio.Semaphore(max(n, 0)) for cls, n in counts.items()}

    def free(self, executor_class: ExecutorClass) -> int:
        sem = self._free.get(executor_class)
        return 0 if sem is None else sem._value

    async def reserve(self, executor_class: ExecutorClass, wait: float) -> bool:
        sem = self._free.get(executor_class)
        if sem is None:
            sem = self._free[executor_class] = asyncio.Semaphore(0)
        try:
            await asyncio.wait_for(sem.acquire(), wait)
        except TimeoutError:
            return False
        return True

    def release(self, executor_class: ExecutorClass) -> None:
        self._free[executor_class].release()
