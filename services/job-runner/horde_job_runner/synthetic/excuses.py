"""Excused declines: a miner busy with our own organic job is not penalised
(docs/synthetic-batch.md §9 "Excused declines").

An executor running an organic job of this validator cannot take our synthetic job, so the miner
has to decline it. Without a change to the wire the miner cannot prove that; our own records can.
After scoring, every declined job is checked against `organic_jobs`: per (miner, executor class),
the organic jobs of ours that were running when the declines came in excuse up to that many of
them. An excused job is stored `EXCUSED` with the score of a completed job of its class and no
multiplier (`scoring.EXCUSED_JOB_SCORE`), and its JOB_NOT_STARTED failure event becomes a
`MINER_SYNTHETIC_JOB_EXCUSED` event. Further declines still score 0.

"Running at the moment of a decline" is read from the organic row, the one record we keep (our
organic receipts are not stored): assigned to that miner (its `created_at`, which the assignment
resets) at or before the decline, and either still `PENDING` and accepted by the miner (the accept
moves `updated_at` past `created_at`), or finished (its `updated_at` moved with its final status)
at or after the decline. The final write erases the accept mark, so a finished row counts whatever
its outcome: our request held the executor until then. A row assigned more than
`ORGANIC_RUN_MAX_AGE` before the decline is an orphan (a runner killed mid-job), never running.

`busy_counts` and `excuse_declines` are pure; `excuse_busy_declines` is the phase: one read,
bounded by the shard's `db` timeout. A failed read is ours: a VALIDATOR_FAILURE, and the declines it
could not check are excluded from scoring rather than blamed on the miner (docs/synthetic-batch.md §5).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from horde_common.db.models.enums import JobStatus
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic.scoring import EXCUSED_COMMENT, EXCUSED_JOB_SCORE

if TYPE_CHECKING:
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.model import Clock, JobState
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = [
    "ORGANIC_RUN_MAX_AGE",
    "Decline",
    "OrganicRun",
    "OrganicRunSource",
    "busy_counts",
    "excuse_busy_declines",
    "excuse_declines",
]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

# An organic job ends within DYNAMIC_ORGANIC_JOB_TIMEOUT (300 s by default) of its initial request,
# plus a few seconds of writes. An hour leaves room for a raised timeout, yet a PENDING row left by
# a runner killed mid-job stops excusing its miner within the hour.
ORGANIC_RUN_MAX_AGE: Final = timedelta(hours=1)
# The stage a failed lookup is reported under: it runs at the end of scoring.
STAGE: Final = "_score_jobs"

Group = tuple[str, str]  # (miner hotkey, executor class)


@dataclass(frozen=True, slots=True)
class Decline:
    """One declined synthetic job: whose, of which class, and when (UTC) the decline arrived."""

    job_uuid: str
    miner_hotkey: str
    executor_class: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OrganicRun:
    """One organic job of ours on a miner: assigned at `started_at`, finished at `finished_at`
    (None: not finished yet)."""

    job_uuid: str
    miner_hotkey: str
    executor_class: str
    started_at: datetime
    finished_at: datetime | None

    def running_at(self, moment: datetime) -> bool:
        """Assigned at or before `moment`, not finished before it, and not an orphan by then."""
        if self.started_at > moment or moment - self.started_at > ORGANIC_RUN_MAX_AGE:
            return False
        return self.finished_at is None or self.finished_at >= moment


def busy_counts(declines: Iterable[Decline], runs: Iterable[OrganicRun]) -> dict[Group, int]:
    """Per (miner, class) with a decline: how many of our organic jobs of that miner and class were
    running at once, the most over the moments of its declines (a class's initial requests all go
    out together, so its declines arrive within seconds of each other)."""
    by_group: dict[Group, list[OrganicRun]] = defaultdict(list)
    for run in runs:
        by_group[(run.miner_hotkey, run.executor_class)].append(run)
    out: dict[Group, int] = {}
    for decline in declines:
        group = (decline.miner_hotkey, decline.executor_class)
        running = sum(1 for run in by_group.get(group, ()) if run.running_at(decline.at))
        out[group] = max(out.get(group, 0), running)
    return out


def excuse_declines(declines: Sequence[Decline], busy: Mapping[Group, int]) -> set[str]:
    """The job uuids of the excused declines: per (miner, class), the first `busy[group]` of its
    declines (by arrival, then uuid, so the choice is deterministic); the rest stay failures."""
    by_group: dict[Group, list[Decline]] = defaultdict(list)
    for decline in declines:
        by_group[(decline.miner_hotkey, decline.executor_class)].append(decline)
    excused: set[str] = set()
    for group, group_declines in by_group.items():
        allowance = max(0, busy.get(group, 0))
        ordered = sorted(group_declines, key=lambda d: (d.at, d.job_uuid))
        excused.update(d.job_uuid for d in ordered[:allowance])
    return excused


@runtime_checkable
class OrganicRunSource(Protocol):
    """A store that can read our organic jobs (`persistence.BatchStore`): rows of these miners that
    may have been running between `since` and `until`, as (job uuid, miner hotkey, executor class,
    assigned at, finished at or None)."""

    async def organic_runs(
        self, hotkeys: Collection[str], since: datetime, until: datetime, max_age: timedelta
    ) -> list[tuple[str, str, str, datetime, datetime | None]]: ...


def _declines(jobs: Sequence[JobState], clock: Clock) -> dict[str, tuple[Decline, JobState]]:
    """The shard's declined, scored jobs, with the wall time of each decline (from its monotonic
    stamp; a decline without one is dated now, the latest it can have been)."""
    now, mono = clock.now(), clock.monotonic()
    out: dict[str, tuple[Decline, JobState]] = {}
    for job in jobs:
        if not job.declined or job.excluded or job.success:
            continue
        at = now if job.accept_mono is None else now - timedelta(seconds=max(0.0, mono - job.accept_mono))
        out[job.job_uuid] = (Decline(job.job_uuid, job.miner_hotkey, str(job.executor_class), at), job)
    return out


async def excuse_busy_declines(
    jobs: Sequence[JobState],
    store: Any,
    *,
    clock: Clock,
    events: EventLog,
    ledger: JobLedger,
    db_timeout: float,
) -> int:
    """Excuse the declines our own organic jobs explain (see the module docstring); returns how
    many. Runs after `finish.score`, so the online counts and multipliers of the batch are those of
    the tested executors only. Without a store that reads organic jobs, nothing is excused."""
    found = _declines(jobs, clock)
    if not found or not isinstance(store, OrganicRunSource):
        return 0
    declines = [d for d, _ in found.values()]
    since, until = min(d.at for d in declines), max(d.at for d in declines)
    try:
        async with asyncio.timeout(db_timeout):
            rows = await store.organic_runs(
                {d.miner_hotkey for d in declines}, since, until, ORGANIC_RUN_MAX_AGE
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("reading organic jobs for excused declines failed: %s", exc)
        reason = f"organic jobs could not be read to check the decline: {type(exc).__name__}: {exc}"
        events.record(T.VALIDATOR_FAILURE, S.GENERIC_ERROR, reason, stage=STAGE)
        for _, job in found.values():
            ledger.exclude_job(job, reason, STAGE, event=False)
        return 0
    runs = [OrganicRun(*row) for row in rows]
    busy = busy_counts(declines, runs)
    excused = excuse_declines(declines, busy)
    for job_uuid in sorted(excused):
        decline, job = found[job_uuid]
        group = (decline.miner_hotkey, decline.executor_class)
        organic = sorted(r.job_uuid for r in runs if (r.miner_hotkey, r.executor_class) == group)
        _excuse(job, events, busy=busy[group], organic_job_uuids=organic)
    return len(excused)


def _excuse(job: JobState, events: EventLog, *, busy: int, organic_job_uuids: list[str]) -> None:
    """Store the job as excused, and put its excused event where its failure event was."""
    job.status = str(JobStatus.EXCUSED)
    job.score = EXCUSED_JOB_SCORE
    job.multiplier = None
    job.comment = EXCUSED_COMMENT
    data = {
        "batch_uuid": events.batch_uuid,
        "batch_id": events.batch_id,
        "miner_hotkey": job.miner_hotkey,
        "job_uuid": job.job_uuid,
        "executor_class": str(job.executor_class),
        "busy_executors": busy,
        "organic_job_uuids": organic_job_uuids,
    }
    failure = _failure_index(events.records, job.job_uuid)
    if failure is None:
        events.record(
            T.MINER_SYNTHETIC_JOB_EXCUSED, S.EXECUTOR_BUSY_WITH_ORGANIC_JOB, EXCUSED_COMMENT, **data
        )
        return
    when = events.records[failure].timestamp
    events.records[failure] = SystemEventRecord(
        T.MINER_SYNTHETIC_JOB_EXCUSED, S.EXECUTOR_BUSY_WITH_ORGANIC_JOB, EXCUSED_COMMENT, data, when
    )


def _failure_index(records: Sequence[SystemEventRecord], job_uuid: str) -> int | None:
    """Where the job's JOB_NOT_STARTED failure ("refused") is in the shard's events, if there."""
    for i, record in enumerate(records):
        if (
            record.type == T.MINER_SYNTHETIC_JOB_FAILURE
            and record.subtype == S.JOB_NOT_STARTED
            and isinstance(record.data, dict)
            and record.data.get("job_uuid") == job_uuid
        ):
            return i
    return None
