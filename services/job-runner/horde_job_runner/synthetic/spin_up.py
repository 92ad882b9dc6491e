"""`SpinUpPhase`: the initial job requests and the wait for every executor's spin-up (stage 5).

Each class is sent `spin-up(class)` before the shard's common accept deadline, so all executors
should be ready at about the same moment; each job's window is measured from when *we* actually
sent its request (`max(deadline, sent + spin-up)`), never from the planned moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime

from horde_common.protocol.miner.session import MinerSession
from horde_common.protocol.miner.validator_messages import V0InitialJobRequest
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.shard_state import ShardState, drain
from horde_job_runner.synthetic.wire_frames import initial_request_frame

__all__ = ["SpinUpPhase"]


class SpinUpPhase(ShardState):
    """Stagger, send and wait for the `V0InitialJobRequest`s of a shard."""

    async def _spin_up(self) -> None:
        clock = self.clock
        classes = {job.executor_class for job in self.jobs}
        max_spin_up = max(self.t.spin_up_for(c) for c in classes)
        now_mono = clock.monotonic()
        if self.request.accept_deadline is not None:
            self.deadline_mono = now_mono + (self.request.accept_deadline - clock.now()).total_seconds()
        else:
            self.deadline_mono = now_mono + max_spin_up
        self.spinup_pending = set(self.jobs)
        self.spinup_done.clear()

        # Stagger: every class is sent `spin-up(class)` before the common deadline.
        groups: dict[float, list[JobState]] = {}
        for job in self.jobs:
            groups.setdefault(self.deadline_mono - job.spin_up, []).append(job)
        for planned in sorted(groups):
            delay = planned - clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_initial_requests(groups[planned])

        def horizon() -> float:
            end = self.deadline_mono
            for job in self.spinup_pending:
                if job.window_end_mono is not None and job.window_end_mono > end:
                    end = job.window_end_mono
            return end

        await self._wait_for_pending(self.spinup_pending, self.spinup_done, horizon)
        await drain()
        self._not_sent([j for j in self.jobs if j.initial_sent_mono is None], "spin-up window over")

    async def _send_initial_requests(self, jobs: list[JobState]) -> None:
        """One sender for the whole group, in the shuffled job order: build (signed JobStarted
        receipt), then write the frame straight to the miner's socket. A miner whose link cannot
        take it right now (reconnecting) gets the frame through its own writer instead, so one slow
        miner never holds up the others. The loop yields to the event loop every few milliseconds,
        which lets the accepts and readies of the first jobs be handled while the rest go out."""
        clock = self.clock
        for job in jobs:
            link = self.link_by_hotkey[job.miner_hotkey]
            if link.closed_by_us:
                self._not_sent([job], "connection closed")
                continue
            try:
                now = clock.now()
                frame = self._initial_request_frame(link.session, job, now)
                wire = link.transport.prebuild(frame)
            except Exception as exc:
                self.on_link_failure(link, exc, "_send_initial_job_request")
                continue
            job.initial_sent_at = now
            if wire is not None and link.transport.write_prebuilt(wire):
                self._initial_sent(job)
            else:
                link.post(
                    frame,
                    timeout_s=max(0.0, self.deadline_mono - clock.monotonic()) + job.spin_up,
                    on_sent=lambda job=job: self._initial_sent(job),  # type: ignore[misc]
                    on_failure=lambda exc, job=job: self._not_sent([job], str(exc)),  # type: ignore[misc]
                )
            await self.pacer.tick()

    def _initial_request_frame(self, session: MinerSession, job: JobState, now: datetime) -> str:
        """Sign the JobStarted receipt and write the `V0InitialJobRequest`, recording it in the
        session. The frame is spliced (`wire_frames`) when the generator has its volume as JSON,
        as hashcat's does; otherwise the protocol model is built and dumped."""
        gen = job.generator
        payload, signature, receipt_wire = rc.started_receipt_wire(
            self.sign,
            job_uuid=job.job_uuid,
            miner_hotkey=job.miner_hotkey,
            validator_hotkey=self.validator_hotkey,
            executor_class=job.executor_class,
            max_timeout=gen.timeout_seconds(),
            now=now,
        )
        job.started_receipt = (payload, signature)
        volume_json = gen.initial_request_volume_json()
        if volume_json is None:
            message = V0InitialJobRequest(
                job_uuid=job.job_uuid,
                executor_class=job.executor_class,
                base_docker_image_name=gen.base_docker_image_name(),
                timeout_seconds=gen.timeout_seconds(),
                volume=gen.initial_request_volume(),  # type: ignore[arg-type]
                job_started_receipt_payload=payload,
                job_started_receipt_signature=signature,
            )
            return session.outgoing(message, now)
        frame = initial_request_frame(
            job_uuid=job.job_uuid,
            executor_class=job.executor_class,
            base_docker_image_name=gen.base_docker_image_name(),
            timeout_seconds=gen.timeout_seconds(),
            volume_json=volume_json,
            receipt_wire=receipt_wire,
            receipt_signature=signature,
        )
        session.initial_request_sent(job.job_uuid, job.executor_class, now)
        return frame

    def _initial_sent(self, job: JobState) -> None:
        job.initial_sent_mono = sent = self.clock.monotonic()
        job.window_end_mono = max(self.deadline_mono, sent + job.spin_up)
        self.message_counts["V0InitialJobRequest"] += 1

    def _not_sent(self, jobs: Iterable[JobState], reason: str) -> None:
        for job in jobs:
            if job.initial_sent_mono is None and job.exception is None:
                job.exception = f"initial request not sent: {reason}"
                job.exception_stage = "_send_initial_job_request"
            self.spinup_pending.discard(job)
        self._check_done()
