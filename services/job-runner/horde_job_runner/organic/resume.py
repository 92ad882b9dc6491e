"""An organic job picked up again after the job-runner that ran it died mid-attempt (docs/organic.md,
"Running organic jobs: resuming after a crash").

The row is still PENDING with a miner's address: the attempt may have reached the miner, which may
be running the job or hold its outcome. Running it again from scratch would give the miner the same
job uuid twice and the facilitator duplicate statuses, so the resumed attempt reconnects to that
miner instead. After authentication the miner re-sends, right after its manifest, the outcome of
this validator's jobs it never delivered and the ready notice of jobs still waiting for their
payload; a job still running reports on the new connection when it ends (docs/miner-protocol.md
§1.6, §1.9). The attempt's deadline is the one the dead consumer had: the row's `created_at` (the
assignment time) plus the organic timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import structlog

from horde_common.bus.messages import MinerEndpoint
from horde_common.db.models.organic import OrganicJob
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.protocol.miner.parsing import dumps
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_job_runner.organic.details import MinerJobSpec
from horde_job_runner.organic.outcomes import Outcome, OutcomeKind, lost_report, miner_name, report
from horde_job_runner.organic.run import (
    CLOSE_GRACE_S,
    MinerConversation,
    OrganicTimeouts,
    job_request,
    make_link,
    post_accepted_receipt,
    send_finished_receipt,
    send_within,
    track_job,
)
from horde_job_runner.organic.runtime import OrganicRuntime, StatusNote, committed_status, write_report
from horde_job_runner.organic.store import SERVICE, accepted_staged, stage_accepted, still_pending
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.model import Clock, JobState
from horde_job_runner.synthetic.transport import MinerConnectionError

__all__ = ["PENDING_POLL_S", "REDELIVERY_WINDOW_S", "ResumeEnd", "ResumePoint", "resume_job"]

log = structlog.get_logger(__name__)

REDELIVERY_WINDOW_S: Final = 2.0
"""How long after the manifest a resumed attempt still listens when the job's deadline has already
passed (a job-runner restarted late): the miner re-sends undelivered outcomes right after its
manifest, so this only covers a slow link. Before the manifest, it runs from the connect."""

PENDING_POLL_S: Final = 1.0
"""How often a waiting resumed attempt checks (one primary-key read) whether another consumer of
the same job wrote its final status meanwhile; it then stops without writing anything."""


class ResumeEnd(StrEnum):
    """How a resumed attempt left the job."""

    ENDED = "ended"
    """The job has its final status: written here (completed, or no outcome in time) or elsewhere."""
    ATTEMPT_FAILED = "attempt_failed"
    """The miner's failure was written: a V2 job may go on to its next attempt, as after any attempt."""


@dataclass(frozen=True)
class ResumePoint:
    """The attempt the dead consumer started, as its row holds it."""

    job_uuid: uuid.UUID
    hotkey: str
    address: str
    port: int
    attempt: int
    started_at: datetime  # `created_at`: reset to the assignment time by `store.assign_miner`

    @classmethod
    def of(cls, row: OrganicJob) -> ResumePoint:
        return cls(
            row.job_uuid, row.miner_hotkey, row.miner_address, row.miner_port, row.attempt, row.created_at
        )

    @property
    def name(self) -> str:
        return miner_name(self.hotkey, self.address, self.port)


class _Gone(Exception):
    """Another consumer wrote the job's final status while this one waited."""


class _ResumeConversation(MinerConversation):
    """The run's listener, also told when the manifest came (the re-sent outcomes follow it)."""

    manifest_mono: float | None = None
    clock: Clock | None = None

    def on_manifest(self, link: MinerLink) -> None:
        if self.clock is not None:
            self.manifest_mono = self.clock.monotonic()
        self.changed.set()


async def resume_job(
    runtime: OrganicRuntime, spec: MinerJobSpec, point: ResumePoint, timeouts: OrganicTimeouts
) -> ResumeEnd:
    """Finish the attempt at `point` on its miner and write its outcome once; never raises for
    anything the miner does."""
    job_uuid = point.job_uuid
    log.warning("organic.resuming", job_uuid=str(job_uuid), miner=point.hotkey, attempt=point.attempt)
    description = (
        f"organic job {job_uuid} delivered again while its attempt was under way (its job-runner "
        f"died, or still runs it): resuming attempt {point.attempt} on miner {point.name}"
    )
    data = {"job_uuid": str(job_uuid), "miner_hotkey": point.hotkey, "attempt": point.attempt}
    event = SystemEventRecord(
        SystemEventType.VALIDATOR_FAILURE, SystemEventSubtype.ORGANIC_JOB_RESUMED, description, data
    )
    async with runtime.sessions() as session, session.begin():
        await record_events_bulk(session, [event], service=SERVICE)

    async def pending() -> bool:
        async with runtime.sessions() as session:
            return await still_pending(session, job_uuid)

    async def on_ready() -> bool:
        """The miner waits for the payload, so it accepted: `accepted` is staged unless the dead
        consumer already staged it for this attempt. True if staged now."""
        async with runtime.sessions() as session, session.begin():
            if runtime.publish_statuses and await accepted_staged(session, job_uuid, point.started_at):
                return False
            staged = await stage_accepted(session, job_uuid, publish=runtime.publish_statuses)
        if staged:
            committed_status(runtime, StatusNote(job_uuid, point.hotkey, "accepted"))
        return staged

    return await _resume_on_miner(runtime, spec, point, timeouts, pending, on_ready)


async def _resume_on_miner(
    runtime: OrganicRuntime,
    spec: MinerJobSpec,
    point: ResumePoint,
    timeouts: OrganicTimeouts,
    pending: Callable[[], Awaitable[bool]],
    on_ready: Callable[[], Awaitable[bool]],
) -> ResumeEnd:
    clock = runtime.clock
    conversation = _ResumeConversation(spec.job_uuid, point.hotkey)
    conversation.clock = clock
    endpoint = MinerEndpoint(hotkey=point.hotkey, uid=-1, address=point.address, port=point.port)
    link = make_link(
        endpoint,
        runtime.keypair,
        conversation,
        clock=clock,
        transport_factory=runtime.transport_factory,
        transport_settings=runtime.transport_settings,
        sleep=runtime.sleep or asyncio.sleep,
    )
    job = track_job(link, spec, timeouts.total_s)
    # The initial request went out on the dead consumer's connection: the miner's answers are taken.
    link.session.initial_request_sent(spec.job_uuid, spec.executor_class, point.started_at)
    left_s = (point.started_at + timedelta(seconds=timeouts.total_s) - clock.now()).total_seconds()
    deadline = clock.monotonic() + left_s

    async def write(outcome: Outcome | None) -> tuple[bool, ResumeEnd]:
        if outcome is None:
            result = lost_report(point.name)
        else:
            result = report(
                outcome,
                name=point.name,
                job_uuid=spec.job_uuid,
                total_s=timeouts.total_s,
                wait_s=timeouts.wait_s,
            )
        written = await write_report(runtime, point.job_uuid, point.hotkey, result, conversation.events)
        log.info("organic.resumed", job_uuid=spec.job_uuid, outcome=result.status, written=written)
        failed = outcome is not None and outcome.kind is not OutcomeKind.FINISHED
        return written, ResumeEnd.ATTEMPT_FAILED if written and failed else ResumeEnd.ENDED

    try:
        try:
            await link.open()
        except MinerConnectionError as exc:
            _, end = await write(Outcome(OutcomeKind.CONNECTION_FAILED, detail=str(exc)))
            return end
        try:
            outcome = await _await_outcome(
                spec, link, conversation, job, runtime.keypair, clock, deadline, pending, on_ready
            )
        except _Gone:
            log.info("organic.resume_ended_elsewhere", job_uuid=spec.job_uuid)
            return ResumeEnd.ENDED
        written, end = await write(outcome)
        if written and outcome is not None:
            # The JobFinished receipt a run sends at its end (the dead consumer never got there).
            took_us = int((clock.now() - point.started_at).total_seconds() * 1_000_000)
            await send_finished_receipt(
                link,
                conversation,
                runtime.keypair,
                spec.job_uuid,
                time_started=point.started_at,
                time_took_us=max(0, took_us),
                now=clock.now(),
            )
        return end
    finally:
        await link.close(CLOSE_GRACE_S)


async def _await_outcome(
    spec: MinerJobSpec,
    link: MinerLink,
    conversation: _ResumeConversation,
    job: JobState,
    keypair: Any,
    clock: Clock,
    deadline: float,
    pending: Callable[[], Awaitable[bool]],
    on_ready: Callable[[], Awaitable[bool]],
) -> Outcome | None:
    """What the miner says of the job by its deadline; None: nothing. Raises `_Gone`."""
    connected = clock.monotonic()

    def listen_until() -> float:
        """The deadline, but at least a moment after the manifest (or the connect, before it)."""
        after = conversation.manifest_mono if conversation.manifest_mono is not None else connected
        return max(deadline, after + REDELIVERY_WINDOW_S)

    def answered() -> bool:
        return job.has_final or job.executor_failed or job.declined or job.executor_ready

    await _wait(conversation, answered, listen_until, clock, pending)
    if not answered():
        return None
    if job.executor_ready and not job.has_final:
        left = deadline - clock.monotonic()
        if left <= 0:
            return None  # the payload would come after the job's deadline
        if await on_ready():
            now = clock.now()
            post_accepted_receipt(
                link, conversation, keypair, spec.job_uuid, time_accepted=now, ttl=int(left), now=now
            )
        sent = await send_within(link, link.session.outgoing(job_request(spec), clock.now()), left)
        if sent:
            await _wait(conversation, lambda: job.has_final, lambda: deadline, clock, pending)
        if not job.has_final:
            return Outcome(OutcomeKind.FINAL_TIMEOUT, accepted=True)
    return _outcome_of(link, job)


def _outcome_of(link: MinerLink, job: JobState) -> Outcome:
    """The outcome the miner reported (its message as JSON where the comment quotes it)."""
    view = link.session.job(job.job_uuid)

    def detail(kind: str) -> str:
        message = None if view is None else getattr(view, kind)
        return "" if message is None else dumps(message)

    if job.final_kind == "finished":
        return Outcome(OutcomeKind.FINISHED, accepted=True, stdout=job.stdout, stderr=job.stderr)
    if job.has_final:
        return Outcome(
            OutcomeKind.JOB_FAILED,
            accepted=True,
            detail=detail("final"),
            stdout=job.stdout,
            stderr=job.stderr,
        )
    if job.executor_failed:
        return Outcome(OutcomeKind.EXECUTOR_FAILED, accepted=True, detail=detail("executor"))
    return Outcome(OutcomeKind.DECLINED, detail=detail("accept"))


async def _wait(
    conversation: MinerConversation,
    done: Callable[[], bool],
    until: Callable[[], float],
    clock: Clock,
    pending: Callable[[], Awaitable[bool]],
) -> None:
    """Wait until `done()` or `until()` (monotonic, re-read on every change); every
    `PENDING_POLL_S` check that the job is still PENDING, else raise `_Gone`."""
    next_poll = clock.monotonic() + PENDING_POLL_S
    while not done():
        now = clock.monotonic()
        if now >= until():
            return
        if now >= next_poll:
            if not await pending():
                raise _Gone
            next_poll = clock.monotonic() + PENDING_POLL_S
            continue
        conversation.changed.clear()
        try:
            async with asyncio.timeout(min(until(), next_poll) - now):
                await conversation.changed.wait()
        except TimeoutError:
            pass
