"""`ReleasePhase`: report ready, wait for the release, then send every job request (stages 6–7).

Every ready job's `V0JobRequest` is serialised before the wait, so the release itself is only
writes: each miner's pre-built frames go out in one write, back to back, with a yield to the loop
every few milliseconds. Each job's answer window (`timeout + job_wait_extra`) starts when *we*
wrote its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from horde_common.bus.messages import BatchShardReady
from horde_common.protocol.miner.validator_messages import V0JobRequest
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.message_ids import ready_message_id
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.shard_state import S, ShardState, T, drain

__all__ = ["ReleasePhase"]

log = logging.getLogger(__name__)


class ReleasePhase(ShardState):
    """`batch.shard.ready`, the wait for `batch.released`, and the job requests with their answers."""

    async def _prepare_job_requests(self) -> list[JobState]:
        """Serialise every ready job's `V0JobRequest` now, so the release is only sends."""
        ready: list[JobState] = []
        for job in self.jobs:
            if not job.executor_ready or job.has_final or job.excluded:
                continue
            link = self.link_by_hotkey[job.miner_hotkey]
            if link.closed_by_us:
                continue
            gen = job.generator
            message = V0JobRequest(
                job_uuid=job.job_uuid,
                executor_class=job.executor_class,
                docker_image_name=gen.docker_image_name(),
                raw_script=gen.raw_script(),
                docker_run_options_preset=gen.docker_run_options_preset(),  # type: ignore[arg-type]
                docker_run_cmd=gen.docker_run_cmd(),
                volume=gen.job_request_volume(),  # type: ignore[arg-type]
                output_upload=gen.output_upload(),  # type: ignore[arg-type]
            )
            job.job_frame = link.session.outgoing(message, self.clock.now())
            job.job_wire = link.transport.prebuild(job.job_frame)
            ready.append(job)
            await self.pacer.tick()
        return ready

    async def _publish_ready(self, ready: list[JobState]) -> None:
        self.ready_published = True
        if self.deps.publish_ready is None:
            return
        by_class = Counter(str(j.executor_class) for j in ready)
        msg = BatchShardReady(
            message_id=ready_message_id(
                self.request.message_id, self.request.batch_id, self.request.shard_index
            ),
            batch_id=self.request.batch_id,
            shard_index=self.request.shard_index,
            ready_executor_count=len(ready),
            ready_by_class=dict(by_class),
        )
        try:
            await asyncio.wait_for(self.deps.publish_ready(msg), 15.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The scheduler releases at its deadline anyway; this only costs time.
            log.warning("could not publish batch.shard.ready: %s", exc)
            self._event(
                T.VALIDATOR_FAILURE,
                S.GENERIC_ERROR,
                f"batch.shard.ready not published: {type(exc).__name__}: {exc}",
                stage="_report_ready",
            )

    async def _publish_ready_if_needed(self) -> None:
        """A shard that ended early still tells the scheduler (0 ready) so the batch is not held up."""
        if not self.ready_published:
            with contextlib.suppress(Exception):
                await self._publish_ready([])

    async def _wait_for_release(self) -> None:
        waiter = self.deps.release_waiter
        if waiter is None:
            self.result.stats["release"] = "immediate"
            return
        if self.request.release_deadline is not None:
            timeout = (self.request.release_deadline - self.clock.now()).total_seconds()
        else:
            timeout = self.t.release_wait_max
        released_at = await waiter.wait(self.request.batch_id, max(0.0, timeout))
        if released_at is None:
            log.warning("batch %s: no batch.released before the deadline; releasing", self.request.batch_id)
            self.result.stats["release"] = "deadline"
        else:
            self.result.stats["release"] = "released"

    # ----------------------------------------------------------------------- job requests

    async def _job_requests(self, ready: list[JobState]) -> None:
        clock = self.clock
        self.accepting_results_until = clock.now()
        eligible = [j for j in ready if not j.has_final and not j.excluded]
        self.final_pending = set(eligible)
        self.final_done.clear()
        self._check_done()
        release_mono = clock.monotonic()
        per_link: dict[str, list[JobState]] = {}
        for job in eligible:
            per_link.setdefault(job.miner_hotkey, []).append(job)
        extra = self.t.job_wait_extra
        # The burst: each miner's pre-built frames in one write, back to back (a few ms for thousands
        # of jobs). A link that cannot take pre-built frames (reconnecting, compression) gets a writer.
        fallback: list[tuple[MinerLink, list[JobState]]] = []
        for hotkey, jobs in per_link.items():
            link = self.link_by_hotkey[hotkey]
            jobs = [j for j in jobs if not j.has_final and not j.excluded]
            if not jobs:
                continue
            wires = [j.job_wire for j in jobs]
            if any(w is None for w in wires):
                fallback.append((link, jobs))
                continue
            before_at, before = clock.now(), clock.monotonic()
            if not link.transport.write_prebuilt(b"".join(w for w in wires if w is not None)):
                fallback.append((link, jobs))
                continue
            after = clock.monotonic()
            for job in jobs:
                job.job_before_sent_at, job.job_before_sent_mono = before_at, before
                job.job_after_sent_mono = after
                job.wait_end_mono = before + job.timeout + extra
                job.job_frame = job.job_wire = None
            self.message_counts["V0JobRequest"] += len(jobs)
            await self.pacer.tick()
        for job in eligible:
            if job.has_final and job.job_before_sent_mono is None:
                self.final_pending.discard(job)  # answered before its request: out of order
        self._check_done()
        for link, jobs in fallback:
            for job in jobs:
                if job.job_frame is None:
                    continue
                job.job_before_sent_at, job.job_before_sent_mono = clock.now(), clock.monotonic()
                link.post(
                    job.job_frame,
                    timeout_s=job.timeout + extra,
                    on_sent=lambda job=job: self._job_request_sent(job),  # type: ignore[misc]
                    on_failure=lambda exc, job=job: self._job_request_failed(job, exc),  # type: ignore[misc]
                )
        await asyncio.sleep(0)
        await self._hook("_await_job_responses")

        def horizon() -> float:
            end = release_mono
            for job in self.final_pending:
                job_end = (
                    job.wait_end_mono if job.wait_end_mono is not None else release_mono + job.timeout + extra
                )
                end = max(end, job_end)
            return end

        await self._wait_for_pending(self.final_pending, self.final_done, horizon)
        await drain()
        sent = [j.job_before_sent_mono for j in eligible if j.job_before_sent_mono is not None]
        if sent:
            self.result.stats["send_skew_s"] = max(sent) - min(sent)
            durations = [
                j.job_after_sent_mono - j.job_before_sent_mono
                for j in eligible
                if j.job_after_sent_mono is not None and j.job_before_sent_mono is not None
            ]
            self.result.stats["average_job_send_time_s"] = (
                sum(durations) / len(durations) if durations else 0.0
            )
            self.result.stats["first_job_request_mono"] = min(sent)
            self.result.stats["last_job_request_mono"] = max(sent)

    def _job_request_sent(self, job: JobState) -> None:
        """A job request that went through the link's writer (the slow path) is out now."""
        job.job_after_sent_mono = self.clock.monotonic()
        if job.job_before_sent_mono is not None:
            job.wait_end_mono = job.job_before_sent_mono + job.timeout + self.t.job_wait_extra
        job.job_frame = job.job_wire = None
        self.message_counts["V0JobRequest"] += 1

    def _job_request_failed(self, job: JobState, exc: BaseException) -> None:
        job.job_before_sent_mono = None
        job.job_before_sent_at = None
        job.exception = f"job request not sent: {type(exc).__name__}: {exc}"
        job.exception_stage = "_send_job_request"
        self.final_pending.discard(job)
        self._check_done()
