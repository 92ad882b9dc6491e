"""`FinishPhase`: judge every job of the shard, then send the JobFinished receipts (stage 8).

A job that failed on time alone while our own event loop stalled is excluded from scoring (a
VALIDATOR_FAILURE) instead of being blamed on the miner; the rest get the verdict of the pure rules
in `scoring`, times the manifest multiplier (§3.15) computed from this batch's online counts.

A final response that came before its job request is the miner's protocol error, never ours: it
is recorded as UNEXPECTED_MESSAGE (not a timeout), is never excused by a stall, and gets no
JobFinished receipt (which needs the job request's send time) without that being a receipt failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from horde_common.db.models.enums import JobStatus
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.scoring import (
    FinalKind,
    JobVerdict,
    NoFinalReason,
    manifest_multiplier,
    score_job,
    score_str,
)
from horde_job_runner.synthetic.shard_state import S, ShardState, T

__all__ = ["FinishPhase"]

log = logging.getLogger(__name__)


class FinishPhase(ShardState):
    """Scoring (`_score_jobs`) and the JobFinished receipts (`_send_job_finished_receipts`)."""

    def _score(self) -> None:
        for job in self.jobs:
            if job.excluded:
                continue
            try:
                verdict = self._verdict(job)
            except Exception as exc:
                log.exception("scoring job %s", job.job_uuid)
                self._exclude_job(job, f"scoring error: {type(exc).__name__}: {exc}", "_score_jobs")
                continue
            if (
                verdict.time_failure
                and not verdict.out_of_order
                and not job.final_before_job_request
                and not self._closed_for_miner_fault(job)
            ):
                start, end = self._window(job)
                stalled = self.monitor.stalled_within(start, end)
                if stalled >= self.t.stall_excuse:
                    self._exclude_job(
                        job,
                        f"the validator stalled {stalled:.2f} s during the job's window ({verdict.comment})",
                        "_score_jobs",
                    )
                    continue
            job.success = verdict.success
            job.correct = verdict.correct
            job.comment = verdict.comment
            job.score = verdict.score if verdict.success else 0.0
            self._job_events(job, verdict)

        online: dict[str, Counter[str]] = {}
        for job in self.jobs:
            if job.success:
                online.setdefault(job.miner_hotkey, Counter())[str(job.executor_class)] += 1
        self.online = online
        d = self.dynamic
        for job in self.jobs:
            if not job.success:
                job.status = str(JobStatus.FAILED)
                continue
            job.status = str(JobStatus.COMPLETED)
            previous = self.previous_online.get(job.miner_hotkey, {}).get(str(job.executor_class))
            current = online[job.miner_hotkey][str(job.executor_class)]
            multiplier = manifest_multiplier(
                previous,
                current,
                weights_version=self.request.weights_version,
                multiplier=d.manifest_score_multiplier,
                threshold=d.manifest_dance_ratio_threshold,
            )
            job.multiplier = multiplier
            if multiplier is not None:
                job.score *= multiplier

    def _verdict(self, job: JobState) -> JobVerdict:
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

    def _closed_for_miner_fault(self, job: JobState) -> bool:
        """We closed this miner's link for its own fault (a flood, unauthorized, a refused manifest):
        its jobs then time out because of the miner, so no stall of ours excuses them (the stall
        may well be the flood itself)."""
        link = self.link_by_hotkey.get(job.miner_hotkey)
        return link is not None and link.close_reason is not None

    @staticmethod
    def _late_ready(job: JobState) -> bool:
        """Ready only after its spin-up window (e.g. the miner waited for a busy executor)."""
        return (
            job.executor_mono is not None
            and job.window_end_mono is not None
            and job.executor_mono > job.window_end_mono
        )

    def _window(self, job: JobState) -> tuple[float, float]:
        """The stretch of our clock a time-based verdict depends on."""
        now = self.clock.monotonic()
        if job.job_before_sent_mono is not None:
            end = job.final_mono if job.final_mono is not None else (job.wait_end_mono or now)
            return job.job_before_sent_mono, min(end, now)
        start = job.initial_sent_mono if job.initial_sent_mono is not None else self.deadline_mono
        return start, min(job.window_end_mono or now, now)

    def _job_events(self, job: JobState, verdict: JobVerdict) -> None:
        common = {"miner_hotkey": job.miner_hotkey, "job_uuid": job.job_uuid}
        if job.final_kind is None:
            if job.declined or job.executor_failed:
                self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.JOB_NOT_STARTED, "refused", **common)
            elif job.initial_sent_mono is not None:
                func = (
                    "_send_job_request"
                    if job.job_before_sent_mono is not None
                    else "_send_initial_job_request"
                )
                self._event(
                    T.MINER_SYNTHETIC_JOB_FAILURE,
                    S.JOB_EXECUTION_TIMEOUT,
                    verdict.comment,
                    func=func,
                    **common,
                )
            return
        if verdict.out_of_order:
            self._event(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.UNEXPECTED_MESSAGE,
                f"{verdict.comment}: the {job.final_kind} response came before the job request",
                func="_score_job",
                **common,
            )
            return
        if job.final_kind == "failed":
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **common)
            return
        if verdict.took_too_long:
            self._event(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.JOB_EXECUTION_TIMEOUT,
                verdict.comment,
                func="_score_job",
                **common,
            )
            return
        data = {**common, "executor_class": str(job.executor_class)}
        if verdict.success:
            self._event(T.MINER_SYNTHETIC_JOB_SUCCESS, S.SUCCESS, verdict.comment, **data)
        else:
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **data)

    # ----------------------------------------------------------------------- receipts

    async def _finished_receipts(self) -> None:
        per_link: dict[str, list[tuple[JobState, str]]] = {}
        for job in self.jobs:
            if not job.has_final or job.excluded or job.final_before_job_request:
                continue  # out of order: the miner's UNEXPECTED_MESSAGE event says it all
            if job.job_before_sent_at is None:
                self._event(
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
                self.sign,
                job_uuid=job.job_uuid,
                miner_hotkey=job.miner_hotkey,
                validator_hotkey=self.validator_hotkey,
                time_started=job.job_before_sent_at,
                time_took_us=time_took_us,
                score_str=score_str(job.score),
                now=self.clock.now(),
            )
            job.finished_receipt = (payload, signature)
            per_link.setdefault(job.miner_hotkey, []).append((job, frame))
            await self.pacer.tick()
        for hotkey, items in per_link.items():
            failure = self._receipt_failure
            self.link_by_hotkey[hotkey].post_many(
                [(frame, failure(job, "JobFinished", "_send_job_finished_receipts")) for job, frame in items],
                timeout_s=self.t.receipt_send,
            )
            self.message_counts["V0JobFinishedReceiptRequest"] += len(items)
        # Each receipt has its own 5 s; a link's receipts go out one after the other.
        await asyncio.gather(
            *(
                self.link_by_hotkey[hk].flush(self.t.receipt_send * len(items) + 1.0)
                for hk, items in per_link.items()
            )
        )
