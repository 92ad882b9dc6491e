"""`JobLedger`: which jobs a phase still waits for, and which are excluded for a fault of ours.

docs/synthetic-batch.md §5: a validator-side failure (a bug, a crash of one miner's reader, a
stage that raised, a stall of our loop) never counts against a miner. The job is excluded from
scoring (`excluded_from_scoring = true`, a VALIDATOR_FAILURE event) and stops being awaited, so
the phase waiting for it is not held up by it either.

The two pending sets live here, next to the exclusions, because an exclusion must resolve a job
in whichever wait it is in: the spin-up wait (`spin_up`) and the answers wait (`final`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from horde_common.db.models.enums import JobStatus
from horde_common.telemetry import SystemEventSubtype, SystemEventType

if TYPE_CHECKING:
    from horde_job_runner.synthetic.link import MinerLink
    from horde_job_runner.synthetic.model import JobState
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = ["JobLedger", "PendingJobs"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype


class PendingJobs:
    """The jobs one wait is still waiting for; `done` is set whenever none is left."""

    def __init__(self) -> None:
        self.jobs: set[JobState] = set()
        self.done = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def __iter__(self) -> Iterator[JobState]:
        return iter(self.jobs)

    def start(self, jobs: Iterable[JobState]) -> None:
        """Wait for `jobs` from now on (a set that is empty at once is done at once)."""
        self.jobs = set(jobs)
        self.done.clear()
        self._check()

    def discard(self, job: JobState) -> None:
        """`job` is resolved (answered, failed to send, excluded): no longer waited for."""
        self.jobs.discard(job)
        self._check()

    def _check(self) -> None:
        if not self.jobs:
            self.done.set()

    async def wait(self, horizon: Callable[[], float], monotonic: Callable[[], float]) -> None:
        """Wait until every job is resolved or `horizon()` (monotonic) has passed.

        The horizon is recomputed after each wake-up because the jobs still pending (and so the
        latest window among them) change while we wait.
        """
        while self.jobs:
            remaining = horizon() - monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), remaining)


class JobLedger:
    """The spin-up and answer waits of a shard, and its exclusions from scoring."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        self.spin_up = PendingJobs()
        self.final = PendingJobs()

    def exclude_job(self, job: JobState, reason: str, stage: str, *, event: bool = True) -> None:
        """A validator-side failure hit `job`: FAILED, score 0, excluded from scoring, not awaited.

        `event=False` when the caller records one event for several jobs.
        """
        if job.excluded:
            return
        job.excluded = True
        job.success = False
        job.score = 0.0
        job.status = str(JobStatus.FAILED)
        job.comment = f"validator failure: {reason}"
        job.exception = reason
        job.exception_stage = stage
        if event:
            self._events.record(
                T.VALIDATOR_FAILURE,
                S.GENERIC_ERROR,
                f"job {job.job_uuid} excluded from scoring: {reason}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                stage=stage,
            )
        self.spin_up.discard(job)
        self.final.discard(job)

    def exclude_link(self, link: MinerLink, reason: str, stage: str) -> None:
        """A validator-side failure hit this miner: one event, and its jobs are kept out of scoring."""
        self._events.record(
            T.VALIDATOR_FAILURE,
            S.GENERIC_ERROR,
            f"validator failure while handling miner {link.name}: {reason}",
            miner_hotkey=link.hotkey,
            stage=stage,
        )
        for job in link.jobs.values():
            self.exclude_job(job, reason, stage, event=False)

    def link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        """Our code raised while handling `link` (`where`: the step): logged and excluded."""
        log.error("validator failure on %s (%s)", link.name, where, exc_info=exc)
        self.exclude_link(link, f"{where}: {type(exc).__name__}: {exc}", where)
