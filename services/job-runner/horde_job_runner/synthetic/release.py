"""Report ready, wait for the release, then send every job request and wait for the answers
(docs/synthetic-batch.md §1 stages `_report_ready` to `_multi_send_job_request`, §2).

Every ready job's `V0JobRequest` is serialised before the wait (`prepare_job_requests`), so the
release itself is only writes: each miner's pre-built frames go out in one write, back to back,
with a yield to the loop every few milliseconds (`release_and_run`). Each job's answer window
(`timeout + job_wait_extra`) starts when *we* wrote its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from horde_common.bus.messages import BatchShardReady
from horde_common.protocol.miner.validator_messages import V0JobRequest
from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic.message_ids import ready_message_id
from horde_job_runner.synthetic.shard_services import drain

if TYPE_CHECKING:
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.link import MinerLink
    from horde_job_runner.synthetic.model import BatchTimeouts, Clock, JobState, ReleaseWaiter, ShardRequest
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import Checkpoints, EventLog, SendPacer

__all__ = [
    "PUBLISH_READY_TIMEOUT_S",
    "ReleaseMode",
    "ReleaseOutcome",
    "prepare_job_requests",
    "publish_ready",
    "release_and_run",
    "wait_for_release",
]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

# Bound on publishing `batch.shard.ready`: a broker this slow is down; the scheduler releases at its
# deadline anyway, so waiting longer only delays this shard.
PUBLISH_READY_TIMEOUT_S = 15.0

ReleaseMode = Literal["immediate", "deadline", "released"]
"""How the job requests were released: no scheduler, the release deadline, or `batch.released`."""


@dataclass(frozen=True)
class ReleaseOutcome:
    """How the job requests went out, on our monotonic clock: how many, the spread between the
    first and the last (`send_skew_s`), and the mean time one write took."""

    requests_sent: int = 0
    send_skew_s: float = 0.0
    average_job_send_time_s: float = 0.0
    first_job_request_mono: float = 0.0
    last_job_request_mono: float = 0.0

    def stats(self) -> dict[str, float]:
        """The result's stats entries (none when no request went out)."""
        if not self.requests_sent:
            return {}
        return {
            "send_skew_s": self.send_skew_s,
            "average_job_send_time_s": self.average_job_send_time_s,
            "first_job_request_mono": self.first_job_request_mono,
            "last_job_request_mono": self.last_job_request_mono,
        }


async def prepare_job_requests(
    jobs: Sequence[JobState], links: Links, *, clock: Clock, pacer: SendPacer
) -> list[JobState]:
    """Serialise every ready job's `V0JobRequest` now, so the release is only sends."""
    ready: list[JobState] = []
    for job in jobs:
        if not job.executor_ready or job.has_final or job.excluded:
            continue
        link = links[job.miner_hotkey]
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
        job.job_frame = link.session.outgoing(message, clock.now())
        job.job_wire = link.transport.prebuild(job.job_frame)
        ready.append(job)
        await pacer.tick()
    return ready


async def publish_ready(
    publish: Callable[[BatchShardReady], Awaitable[None]] | None,
    request: ShardRequest,
    ready: Sequence[JobState],
    *,
    events: EventLog,
) -> None:
    """Tell the scheduler how many executors of this shard are ready (`batch.shard.ready`).

    A failure to publish is our VALIDATOR_FAILURE event and nothing more: the scheduler releases
    at its deadline anyway, so it only costs time.
    """
    if publish is None:
        return
    by_class = Counter(str(j.executor_class) for j in ready)
    msg = BatchShardReady(
        message_id=ready_message_id(request.message_id, request.batch_id, request.shard_index),
        batch_id=request.batch_id,
        shard_index=request.shard_index,
        ready_executor_count=len(ready),
        ready_by_class=dict(by_class),
    )
    try:
        await asyncio.wait_for(publish(msg), PUBLISH_READY_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("could not publish batch.shard.ready: %s", exc)
        events.record(
            T.VALIDATOR_FAILURE,
            S.GENERIC_ERROR,
            f"batch.shard.ready not published: {type(exc).__name__}: {exc}",
            stage="_report_ready",
        )


async def wait_for_release(
    waiter: ReleaseWaiter | None, request: ShardRequest, *, clock: Clock, timeouts: BatchTimeouts
) -> ReleaseMode:
    """Wait for `batch.released`, at most until the request's release deadline (or
    `timeouts.release_wait_max` without one); with no waiter (no scheduler), release at once."""
    if waiter is None:
        return "immediate"
    if request.release_deadline is not None:
        timeout = (request.release_deadline - clock.now()).total_seconds()
    else:
        timeout = timeouts.release_wait_max
    released_at = await waiter.wait(request.batch_id, max(0.0, timeout))
    if released_at is None:
        log.warning("batch %s: no batch.released before the deadline; releasing", request.batch_id)
        return "deadline"
    return "released"


async def release_and_run(
    ready: Sequence[JobState],
    links: Links,
    *,
    timeouts: BatchTimeouts,
    clock: Clock,
    ledger: JobLedger,
    pacer: SendPacer,
    messages: Counter[str],
    checkpoints: Checkpoints,
) -> ReleaseOutcome:
    """Send every ready job's request (pre-built: one write per miner), then wait for the answers
    until each job's window (`timeout + job_wait_extra` from its send) is over."""
    eligible = [j for j in ready if not j.has_final and not j.excluded]
    pending = ledger.final
    pending.start(eligible)
    release_mono = clock.monotonic()
    per_link: dict[str, list[JobState]] = {}
    for job in eligible:
        per_link.setdefault(job.miner_hotkey, []).append(job)
    extra = timeouts.job_wait_extra
    requests = _JobRequests(clock=clock, ledger=ledger, messages=messages, extra=extra)
    # The burst: each miner's pre-built frames in one write, back to back (a few ms for thousands
    # of jobs). A link that cannot take pre-built frames (reconnecting, compression) gets a writer.
    fallback: list[tuple[MinerLink, list[JobState]]] = []
    for hotkey, link_jobs in per_link.items():
        link = links[hotkey]
        jobs = [j for j in link_jobs if not j.has_final and not j.excluded]
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
        messages["V0JobRequest"] += len(jobs)
        await pacer.tick()
    for job in eligible:
        if job.has_final and job.job_before_sent_mono is None:
            pending.discard(job)  # answered before its request: out of order
    for link, jobs in fallback:
        for job in jobs:
            if job.job_frame is None:
                continue
            job.job_before_sent_at, job.job_before_sent_mono = clock.now(), clock.monotonic()
            link.post(
                job.job_frame,
                timeout_s=job.timeout + extra,
                on_sent=lambda job=job: requests.sent(job),  # type: ignore[misc]
                on_failure=lambda exc, job=job: requests.failed(job, exc),  # type: ignore[misc]
            )
    await asyncio.sleep(0)
    await checkpoints.hook("_await_job_responses")

    def horizon() -> float:
        end = release_mono
        for job in pending:
            job_end = (
                job.wait_end_mono if job.wait_end_mono is not None else release_mono + job.timeout + extra
            )
            end = max(end, job_end)
        return end

    await pending.wait(horizon, clock.monotonic)
    await drain()
    return _outcome(eligible)


def _outcome(eligible: Sequence[JobState]) -> ReleaseOutcome:
    sent = [j.job_before_sent_mono for j in eligible if j.job_before_sent_mono is not None]
    if not sent:
        return ReleaseOutcome()
    durations = [
        j.job_after_sent_mono - j.job_before_sent_mono
        for j in eligible
        if j.job_after_sent_mono is not None and j.job_before_sent_mono is not None
    ]
    return ReleaseOutcome(
        requests_sent=len(sent),
        send_skew_s=max(sent) - min(sent),
        average_job_send_time_s=sum(durations) / len(durations) if durations else 0.0,
        first_job_request_mono=min(sent),
        last_job_request_mono=max(sent),
    )


class _JobRequests:
    """What a job request that went through the link's writer (the slow path) reports back."""

    def __init__(self, *, clock: Clock, ledger: JobLedger, messages: Counter[str], extra: float) -> None:
        self._clock = clock
        self._ledger = ledger
        self._messages = messages
        self._extra = extra

    def sent(self, job: JobState) -> None:
        """The request is out now: the answer window starts from when it was handed to the writer."""
        job.job_after_sent_mono = self._clock.monotonic()
        if job.job_before_sent_mono is not None:
            job.wait_end_mono = job.job_before_sent_mono + job.timeout + self._extra
        job.job_frame = job.job_wire = None
        self._messages["V0JobRequest"] += 1

    def failed(self, job: JobState, exc: BaseException) -> None:
        """The request never went out (the miner's connection failed): no longer awaited."""
        job.job_before_sent_mono = None
        job.job_before_sent_at = None
        job.exception = f"job request not sent: {type(exc).__name__}: {exc}"
        job.exception_stage = "_send_job_request"
        self._ledger.final.discard(job)
