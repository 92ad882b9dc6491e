"""Judge every job of the shard, then send the JobFinished receipts (docs/synthetic-batch.md §1
stages `_score_jobs` and `_send_job_finished_receipts`, §4, §5).

`score` is free of I/O: it reads the jobs' recorded times and answers, the loop monitor's stalls
and our monotonic clock, and writes each job's verdict, events and multiplier. A job that failed on
time alone while our own event loop stalled is excluded from scoring (a VALIDATOR_FAILURE) instead
of being blamed on the miner; the rest get the verdict of the pure rules in `scoring`, times the
manifest multiplier (docs/miner-protocol.md §3.15) computed from this batch's online counts.

A final response that came before its job request is the miner's protocol error, never ours: it
is recorded as UNEXPECTED_MESSAGE (not a timeout), is never excused by a stall, and gets no
JobFinished receipt (which needs the job request's send time) without that being a receipt failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from horde_common.db.models.enums import JobStatus
from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.scoring import (
    FinalKind,
    JobVerdict,
    NoFinalReason,
    Scores,
    manifest_multiplier,
    score_job,
    score_str,
)

if TYPE_CHECKING:
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.loopmon import LoopMonitor
    from horde_job_runner.synthetic.model import BatchTimeouts, Clock, DynamicValues, JobState
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import EventLog, SendPacer, Signer

__all__ = ["score", "send_finished_receipts"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype


def score(
    jobs: Sequence[JobState],
    links: Links,
    *,
    deadline_mono: float,
    previous_online: Mapping[str, Mapping[str, int]],
    dynamic: DynamicValues,
    weights_version: int,
    monitor: LoopMonitor,
    timeouts: BatchTimeouts,
    clock: Clock,
    events: EventLog,
    ledger: JobLedger,
) -> Scores:
    """Judge every job that is not excluded, then apply the manifest multiplier to the successes.

    `deadline_mono`: the spin-up phase's accept deadline (the start of the window of a job whose
    initial request never went out). A scoring error is our bug: that job is excluded.
    """
    judge = _Judge(links, deadline_mono=deadline_mono, clock=clock, events=events)
    for job in jobs:
        if job.excluded:
            continue
        try:
            verdict = judge.verdict(job)
        except Exception as exc:
            log.exception("scoring job %s", job.job_uuid)
            ledger.exclude_job(job, f"scoring error: {type(exc).__name__}: {exc}", "_score_jobs")
            continue
        if (
            verdict.time_failure
            and not verdict.out_of_order
            and not job.final_before_job_request
            and not judge.closed_for_miner_fault(job)
        ):
            start, end = judge.window(job)
            stalled = monitor.stalled_within(start, end)
            if stalled >= timeouts.stall_excuse:
                ledger.exclude_job(
                    job,
                    f"the validator stalled {stalled:.2f} s during the job's window ({verdict.comment})",
                    "_score_jobs",
                )
                continue
        job.success = verdict.success
        job.correct = verdict.correct
        job.comment = verdict.comment
        job.score = verdict.score if verdict.success else 0.0
        judge.record_events(job, verdict)

    online: dict[str, Counter[str]] = {}
    for job in jobs:
        if job.success:
            online.setdefault(job.miner_hotkey, Counter())[str(job.executor_class)] += 1
    for job in jobs:
        if not job.success:
            job.status = str(JobStatus.FAILED)
            continue
        job.status = str(JobStatus.COMPLETED)
        previous = previous_online.get(job.miner_hotkey, {}).get(str(job.executor_class))
        current = online[job.miner_hotkey][str(job.executor_class)]
        multiplier = manifest_multiplier(
            previous,
            current,
            weights_version=weights_version,
            multiplier=dynamic.manifest_score_multiplier,
            threshold=dynamic.manifest_dance_ratio_threshold,
        )
        job.multiplier = multiplier
        if multiplier is not None:
            job.score *= multiplier
    return Scores(online)


class _Judge:
    """One job's verdict from what was recorded about it, and the events that verdict means."""

    def __init__(self, links: Links, *, deadline_mono: float, clock: Clock, events: EventLog) -> None:
        self._links = links
        self._deadline_mono = deadline_mono
        self._clock = clock
        self._events = events

    def verdict(self, job: JobState) -> JobVerdict:
        if job.final_kind is None:
            if job.declined:
                reason = NoFinalReason.DECLINED
            elif job.executor_failed:
                reason = NoFinalReason.EXECUTOR_FAILED
            elif job.initial_sent_mono is None:
                reason = NoFinalReason.NOT_SENT
            elif job.job_before_sent_mono is None and job.executor_ready and not self._late_ready(job):
                reason = NoFinalReason.NOT_SENT  # ready in time, but the link failed us at the send
            else:
                reason = NoFinalReason.TIMED_OUT
            return score_job(final=None, no_final_reason=reason, timeout=job.timeout)
        early = job.final_before_job_request
        if job.final_kind == "failed":
            return score_job(
                final=FinalKind.FAILED,
                exit_status=job.exit_status,
                timeout=job.timeout,
                before_job_request=early,
            )
        time_took: float | None = None
        if job.job_before_sent_mono is not None and job.final_mono is not None and not early:
            time_took = job.final_mono - job.job_before_sent_mono
        job.time_took = time_took
        gen = job.generator

        def verify(stdout: str, took: float) -> tuple[bool, str, float]:
            verdict = gen.verify(stdout, took)
            return verdict.correct, verdict.comment, verdict.score

        return score_job(
            final=FinalKind.FINISHED,
            stdout=job.stdout,
            time_took=time_took,
            timeout=job.timeout,
            verify=verify,
            before_job_request=early,
        )

    def closed_for_miner_fault(self, job: JobState) -> bool:
        """We closed this miner's link for its own fault (a flood, unauthorized, a refused manifest):
        its jobs then time out because of the miner, so no stall of ours excuses them (the stall
        may well be the flood itself)."""
        link = self._links.get(job.miner_hotkey)
        return link is not None and link.close_reason is not None

    @staticmethod
    def _late_ready(job: JobState) -> bool:
        """Ready only after its spin-up window (e.g. the miner waited for a busy executor)."""
        return (
            job.executor_mono is not None
            and job.window_end_mono is not None
            and job.executor_mono > job.window_end_mono
        )

    def window(self, job: JobState) -> tuple[float, float]:
        """The stretch of our clock a time-based verdict depends on."""
        now = self._clock.monotonic()
        if job.job_before_sent_mono is not None:
            end = job.final_mono if job.final_mono is not None else (job.wait_end_mono or now)
            return job.job_before_sent_mono, min(end, now)
        start = job.initial_sent_mono if job.initial_sent_mono is not None else self._deadline_mono
        return start, min(job.window_end_mono or now, now)

    def record_events(self, job: JobState, verdict: JobVerdict) -> None:
        """The miner's success or failure event for this verdict (none for a job never sent)."""
        common = {"miner_hotkey": job.miner_hotkey, "job_uuid": job.job_uuid}
        if job.final_kind is None:
            if job.declined or job.executor_failed:
                self._events.record(T.MINER_SYNTHETIC_JOB_FAILURE, S.JOB_NOT_STARTED, "refused", **common)
            elif job.initial_sent_mono is not None:
                func = (
                    "_send_job_request"
                    if job.job_before_sent_mono is not None
                    else "_send_initial_job_request"
                )
                self._events.record(
                    T.MINER_SYNTHETIC_JOB_FAILURE,
                    S.JOB_EXECUTION_TIMEOUT,
                    verdict.comment,
                    func=func,
                    **common,
                )
            return
        if verdict.out_of_order:
            self._events.record(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.UNEXPECTED_MESSAGE,
                f"{verdict.comment}: the {job.final_kind} response came before the job request",
                func="_score_job",
                **common,
            )
            return
        if job.final_kind == "failed":
            self._events.record(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **common)
            return
        if verdict.took_too_long:
            self._events.record(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.JOB_EXECUTION_TIMEOUT,
                verdict.comment,
                func="_score_job",
                **common,
            )
            return
        data = {**common, "executor_class": str(job.executor_class)}
        if verdict.success:
            self._events.record(T.MINER_SYNTHETIC_JOB_SUCCESS, S.SUCCESS, verdict.comment, **data)
        else:
            self._events.record(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **data)


async def send_finished_receipts(
    jobs: Sequence[JobState],
    links: Links,
    *,
    signer: Signer,
    clock: Clock,
    timeouts: BatchTimeouts,
    pacer: SendPacer,
    messages: Counter[str],
    events: EventLog,
) -> None:
    """A signed JobFinished receipt for every scored job with a final response, each miner's in one
    write; a receipt that cannot go out is our RECEIPT_FAILURE event."""
    per_link: dict[str, list[tuple[JobState, str]]] = {}
    for job in jobs:
        if not job.has_final or job.excluded or job.final_before_job_request:
            continue  # out of order: the miner's UNEXPECTED_MESSAGE event says it all
        if job.job_before_sent_at is None:
            events.record(
                T.RECEIPT_FAILURE,
                S.RECEIPT_SEND_ERROR,
                "no JobFinished receipt: the job request was not sent",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                func="_send_job_finished_receipts",
            )
            continue
        time_took_us = int(job.time_took * 1_000_000) if job.time_took is not None else 0
        payload, signature, frame = rc.finished_receipt_frame(
            signer.sign,
            job_uuid=job.job_uuid,
            miner_hotkey=job.miner_hotkey,
            validator_hotkey=signer.hotkey,
            time_started=job.job_before_sent_at,
            time_took_us=time_took_us,
            score_str=score_str(job.score),
            now=clock.now(),
        )
        job.finished_receipt = (payload, signature)
        per_link.setdefault(job.miner_hotkey, []).append((job, frame))
        await pacer.tick()
    for hotkey, items in per_link.items():
        failure = events.receipt_failure
        links[hotkey].post_many(
            [(frame, failure(job, "JobFinished", "_send_job_finished_receipts")) for job, frame in items],
            timeout_s=timeouts.receipt_send,
        )
        messages["V0JobFinishedReceiptRequest"] += len(items)
    # Each receipt has its own 5 s; a link's receipts go out one after the other.
    await asyncio.gather(
        *(links[hk].flush(timeouts.receipt_send * len(items) + 1.0) for hk, items in per_link.items())
    )
