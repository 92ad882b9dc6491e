"""`spin_up`: the initial job requests and the wait for every executor's spin-up (docs/synthetic-batch.md
§1 stage `_multi_send_initial_job_request`, §2).

Each class is sent `spin-up(class)` before the shard's common accept deadline, so all executors
should be ready at about the same moment; each job's window is measured from when *we* actually
sent its request (`max(deadline, sent + spin-up)`), never from the planned moment.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from horde_common.protocol.miner.validator_messages import V0InitialJobRequest
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.shard_services import drain
from horde_job_runner.synthetic.wire_frames import initial_request_frame

if TYPE_CHECKING:
    from horde_common.protocol.miner.session import MinerSession
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.model import BatchTimeouts, Clock, JobState
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import SendPacer, Signer

__all__ = ["SpinUpOutcome", "spin_up"]


@dataclass(frozen=True)
class SpinUpOutcome:
    """`deadline_mono`: the shard's common accept deadline on our monotonic clock (a job's spin-up
    window ends there, or at `sent + spin-up` if we sent it late). Each job's own times and answers
    are on its `JobState`."""

    deadline_mono: float


async def spin_up(
    jobs: Sequence[JobState],
    links: Links,
    *,
    accept_deadline: datetime | None,
    timeouts: BatchTimeouts,
    clock: Clock,
    signer: Signer,
    ledger: JobLedger,
    pacer: SendPacer,
    messages: Counter[str],
) -> SpinUpOutcome:
    """Stagger and send every job's `V0InitialJobRequest`, then wait until each job is ready,
    refused or out of its window. `accept_deadline` None: `now + the longest spin-up`."""
    max_spin_up = max(timeouts.spin_up_for(c) for c in {job.executor_class for job in jobs})
    now_mono = clock.monotonic()
    if accept_deadline is not None:
        deadline_mono = now_mono + (accept_deadline - clock.now()).total_seconds()
    else:
        deadline_mono = now_mono + max_spin_up
    sender = _InitialRequests(
        deadline_mono, links, clock=clock, signer=signer, ledger=ledger, messages=messages
    )
    pending = ledger.spin_up
    pending.start(jobs)

    # Stagger: every class is sent `spin-up(class)` before the common deadline.
    groups: dict[float, list[JobState]] = {}
    for job in jobs:
        groups.setdefault(deadline_mono - job.spin_up, []).append(job)
    for planned in sorted(groups):
        delay = planned - clock.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await sender.send(groups[planned], pacer)

    def horizon() -> float:
        end = deadline_mono
        for job in pending:
            if job.window_end_mono is not None and job.window_end_mono > end:
                end = job.window_end_mono
        return end

    await pending.wait(horizon, clock.monotonic)
    await drain()
    sender.not_sent([j for j in jobs if j.initial_sent_mono is None], "spin-up window over")
    return SpinUpOutcome(deadline_mono)


class _InitialRequests:
    """Builds and sends the initial requests, and records each one's send (or failure to send)."""

    def __init__(
        self,
        deadline_mono: float,
        links: Links,
        *,
        clock: Clock,
        signer: Signer,
        ledger: JobLedger,
        messages: Counter[str],
    ) -> None:
        self._deadline_mono = deadline_mono
        self._links = links
        self._clock = clock
        self._signer = signer
        self._ledger = ledger
        self._messages = messages

    async def send(self, jobs: list[JobState], pacer: SendPacer) -> None:
        """One sender for the whole group, in the shuffled job order: build (signed JobStarted
        receipt), then write the frame straight to the miner's socket. A miner whose link cannot
        take it right now (reconnecting) gets the frame through its own writer instead, so one slow
        miner never holds up the others. The loop yields to the event loop every few milliseconds,
        which lets the accepts and readies of the first jobs be handled while the rest go out."""
        clock = self._clock
        for job in jobs:
            link = self._links[job.miner_hotkey]
            if link.closed_by_us:
                self.not_sent([job], "connection closed")
                continue
            try:
                now = clock.now()
                frame = self._frame(link.session, job, now)
                wire = link.transport.prebuild(frame)
            except Exception as exc:
                self._ledger.link_failure(link, exc, "_send_initial_job_request")
                continue
            job.initial_sent_at = now
            if wire is not None and link.transport.write_prebuilt(wire):
                self._sent(job)
            else:
                link.post(
                    frame,
                    timeout_s=max(0.0, self._deadline_mono - clock.monotonic()) + job.spin_up,
                    on_sent=lambda job=job: self._sent(job),  # type: ignore[misc]
                    on_failure=lambda exc, job=job: self.not_sent([job], str(exc)),  # type: ignore[misc]
                )
            await pacer.tick()

    def _frame(self, session: MinerSession, job: JobState, now: datetime) -> str:
        """Sign the JobStarted receipt and write the `V0InitialJobRequest`, recording it in the
        session. The frame is spliced (`wire_frames`) when the generator has its volume as JSON,
        as hashcat's does; otherwise the protocol model is built and dumped."""
        gen = job.generator
        payload, signature, receipt_wire = rc.started_receipt_wire(
            self._signer.sign,
            job_uuid=job.job_uuid,
            miner_hotkey=job.miner_hotkey,
            validator_hotkey=self._signer.hotkey,
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

    def _sent(self, job: JobState) -> None:
        job.initial_sent_mono = sent = self._clock.monotonic()
        job.window_end_mono = max(self._deadline_mono, sent + job.spin_up)
        self._messages["V0InitialJobRequest"] += 1

    def not_sent(self, jobs: Iterable[JobState], reason: str) -> None:
        """These jobs' requests never went out: noted on the job, no longer awaited."""
        for job in jobs:
            if job.initial_sent_mono is None and job.exception is None:
                job.exception = f"initial request not sent: {reason}"
                job.exception_stage = "_send_initial_job_request"
            self._ledger.spin_up.discard(job)
