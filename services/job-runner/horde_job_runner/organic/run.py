"""One organic job on one miner: the conversation of docs/organic.md, "Running organic jobs: the
conversation with the miner".

It reuses the synthetic batch's miner link (`MinerLink` over the WebSocket transport, the sans-I/O
`MinerSession` under it) with a one-job listener. Nothing here touches the database: the caller gets
an `Outcome`, the miner events worth recording, and an `on_accepted` call when the miner accepts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

import structlog

from horde_common.bus.messages import MinerEndpoint
from horde_common.crypto import sign
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.protocol.miner.executor_class import job_spin_up_time
from horde_common.protocol.miner.parsing import dumps
from horde_common.protocol.miner.receipts import JobAcceptedReceiptPayload, JobStartedReceiptPayload
from horde_common.protocol.miner.session import MinerSession
from horde_common.protocol.miner.validator_messages import (
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobRequest,
)
from horde_common.telemetry.events import SystemEventRecord
from horde_job_runner.organic.details import MinerJobSpec
from horde_job_runner.organic.outcomes import Outcome, OutcomeKind
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.model import Clock, JobState
from horde_job_runner.synthetic.receipts import finished_receipt_frame
from horde_job_runner.synthetic.transport import (
    MinerConnectionError,
    Sleep,
    TransportFactory,
    TransportSettings,
    WebSocketTransport,
)

__all__ = [
    "ORGANIC_TRANSPORT",
    "MinerConversation",
    "OrganicTimeouts",
    "job_request",
    "make_link",
    "post_accepted_receipt",
    "run_on_miner",
    "send_finished_receipt",
    "send_within",
    "track_job",
]

log = structlog.get_logger(__name__)

ORGANIC_TRANSPORT: Final = TransportSettings(connect_attempts=5)
"""The original's organic client tried 5 connects (the batch's link tries 4)."""

MIN_STARTED_TTL: Final = 30
"""Floor of the organic JobStarted receipt's `ttl` (the original's; always-on classes spin up in 0 s)."""

SCORE_STR: Final = "0.000000"
"""Organic jobs are not scored: every JobFinished receipt carries this."""

RECEIPT_SEND_S: Final = 5.0
"""How long a receipt frame may take to write: it is best effort (a failure is only an event)."""

CLOSE_GRACE_S: Final = 2.0
"""How long the final receipt and the close get before the connection is dropped."""


@dataclass(frozen=True)
class OrganicTimeouts:
    """`total_s` covers initial request to final answer; the accept and the executor-ready waits
    each get at most `wait_s` of it (DYNAMIC_ORGANIC_JOB_TIMEOUT / _WAIT_TIMEOUT)."""

    total_s: float
    wait_s: float


@dataclass
class MinerConversation:
    """What the link reports during one job; `events` are recorded with the outcome."""

    job_uuid: str
    miner_hotkey: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[SystemEventRecord] = field(default_factory=list)
    accepted_at: datetime | None = None

    def _event(self, subtype: str, description: str) -> None:
        data = {"job_uuid": self.job_uuid, "miner_hotkey": self.miner_hotkey}
        self.events.append(
            SystemEventRecord(SystemEventType.MINER_ORGANIC_JOB_FAILURE, subtype, description, data)
        )

    # --- LinkListener ---------------------------------------------------------------------------

    def on_manifest(self, link: MinerLink) -> None:
        return None  # recorded by the session, not needed for an organic job

    def on_accepted(self, link: MinerLink, job: JobState, at: datetime) -> None:
        self.accepted_at = at
        self.changed.set()

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None:
        self.changed.set()

    def on_final(self, link: MinerLink, job: JobState) -> None:
        self.changed.set()

    def on_miner_event(self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]) -> None:
        self._event(subtype, description)

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        # A bug on our side: logged; the job then ends at its own deadline like a silent miner's.
        log.error("organic.link_failure", job_uuid=self.job_uuid, where=where, error=repr(exc))

    def receipt_failed(self, exc: BaseException) -> None:
        self.events.append(
            SystemEventRecord(
                SystemEventType.RECEIPT_FAILURE,
                SystemEventSubtype.RECEIPT_SEND_ERROR,
                f"receipt not sent: {type(exc).__name__}: {exc}",
                {"job_uuid": self.job_uuid, "miner_hotkey": self.miner_hotkey},
            )
        )


async def _wait_for(conversation: MinerConversation, done: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until `done()` (re-checked on every link event), at most `timeout_s`."""
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            while not done():
                conversation.changed.clear()
                await conversation.changed.wait()
    except TimeoutError:
        return done()
    return True


def make_link(
    endpoint: MinerEndpoint,
    keypair: Any,
    conversation: MinerConversation,
    *,
    clock: Clock,
    transport_factory: TransportFactory,
    transport_settings: TransportSettings,
    sleep: Sleep,
) -> MinerLink:
    """The batch's miner link (transport + sans-I/O session) for one organic job's conversation."""
    session = MinerSession.with_keypair(
        keypair, miner_hotkey=endpoint.hotkey, miner_address=endpoint.address, miner_port=endpoint.port
    )
    return MinerLink(
        endpoint,
        session,
        clock=clock,
        listener=conversation,
        transport_factory=transport_factory,
        transport_settings=transport_settings,
        sleep=sleep,
        rng=random.random,
    )


def track_job(link: MinerLink, spec: MinerJobSpec, total_s: float) -> JobState:
    """Register the job with the link and its session: only then are the miner's answers taken."""
    job = JobState(
        job_uuid=spec.job_uuid,
        miner_hotkey=link.hotkey,
        executor_class=spec.executor_class,
        generator=cast(Any, None),  # organic jobs have no generator: the link never reads it
        spin_up=float(job_spin_up_time(spec.executor_class)),
        timeout=total_s,
    )
    link.jobs[spec.job_uuid] = job
    link.session.register_job(spec.job_uuid, spec.executor_class)
    return job


def job_request(spec: MinerJobSpec) -> V0JobRequest:
    """The `V0JobRequest` of the job (the full volume and upload go here, docs/organic.md)."""
    return V0JobRequest(
        job_uuid=spec.job_uuid,
        executor_class=spec.executor_class,
        docker_image_name=spec.docker_image,
        raw_script=spec.raw_script,
        docker_run_options_preset=spec.preset,
        docker_run_cmd=spec.args,
        volume=spec.volume,
        output_upload=spec.output_upload,
    )


def post_accepted_receipt(
    link: MinerLink,
    conversation: MinerConversation,
    keypair: Any,
    job_uuid: str,
    *,
    time_accepted: datetime,
    ttl: int,
    now: datetime,
) -> None:
    """Send the signed JobAccepted receipt (best effort: a failure is only an event)."""
    payload = JobAcceptedReceiptPayload(
        job_uuid=job_uuid,
        miner_hotkey=link.hotkey,
        validator_hotkey=link.session.validator_hotkey,
        timestamp=now,
        time_accepted=time_accepted,
        ttl=ttl,
    )
    receipt = V0JobAcceptedReceiptRequest(
        payload=payload, signature=sign(keypair, payload.blob_for_signing())
    )
    link.post(dumps(receipt), timeout_s=RECEIPT_SEND_S, on_failure=conversation.receipt_failed)


async def send_finished_receipt(
    link: MinerLink,
    conversation: MinerConversation,
    keypair: Any,
    job_uuid: str,
    *,
    time_started: datetime,
    time_took_us: int,
    now: datetime,
) -> None:
    """Send the JobFinished receipt (score `SCORE_STR`) and wait a moment for it to go out."""
    _, _, frame = finished_receipt_frame(
        lambda blob: sign(keypair, blob),
        job_uuid=job_uuid,
        miner_hotkey=link.hotkey,
        validator_hotkey=link.session.validator_hotkey,
        time_started=time_started,
        time_took_us=time_took_us,
        score_str=SCORE_STR,
        now=now,
    )
    link.post(frame, timeout_s=RECEIPT_SEND_S, on_failure=conversation.receipt_failed)
    await link.flush(CLOSE_GRACE_S)


async def run_on_miner(
    spec: MinerJobSpec,
    endpoint: MinerEndpoint,
    keypair: Any,
    timeouts: OrganicTimeouts,
    on_accepted: Callable[[], Awaitable[None]],
    *,
    clock: Clock,
    transport_factory: TransportFactory = WebSocketTransport,
    transport_settings: TransportSettings = ORGANIC_TRANSPORT,
    sleep: Sleep = asyncio.sleep,
) -> tuple[Outcome, list[SystemEventRecord]]:
    """Run `spec` on the miner at `endpoint`; never raises for anything the miner does."""
    conversation = MinerConversation(spec.job_uuid, endpoint.hotkey)
    link = make_link(
        endpoint,
        keypair,
        conversation,
        clock=clock,
        transport_factory=transport_factory,
        transport_settings=transport_settings,
        sleep=sleep,
    )
    try:
        try:
            await link.open()
        except MinerConnectionError as exc:
            return Outcome(OutcomeKind.CONNECTION_FAILED, detail=str(exc)), conversation.events
        outcome = await _converse(spec, link, conversation, keypair, timeouts, on_accepted, clock)
        return outcome, conversation.events
    finally:
        await link.close(CLOSE_GRACE_S)


async def _converse(
    spec: MinerJobSpec,
    link: MinerLink,
    conversation: MinerConversation,
    keypair: Any,
    timeouts: OrganicTimeouts,
    on_accepted: Callable[[], Awaitable[None]],
    clock: Clock,
) -> Outcome:
    session = link.session
    validator = session.validator_hotkey
    start_mono, start_at = clock.monotonic(), clock.now()
    deadline = start_mono + timeouts.total_s

    def left() -> float:
        return max(0.0, deadline - clock.monotonic())

    job = track_job(link, spec, timeouts.total_s)
    started = JobStartedReceiptPayload(
        job_uuid=spec.job_uuid,
        miner_hotkey=link.hotkey,
        validator_hotkey=validator,
        timestamp=start_at,
        executor_class=spec.executor_class,
        max_timeout=int(left()),
        is_organic=True,
        ttl=max(MIN_STARTED_TTL, job_spin_up_time(spec.executor_class)),
    )
    initial = V0InitialJobRequest(
        job_uuid=spec.job_uuid,
        executor_class=spec.executor_class,
        base_docker_image_name=spec.docker_image,
        timeout_seconds=int(timeouts.total_s),
        volume=None,
        volume_type=spec.volume_type,
        job_started_receipt_payload=started,
        job_started_receipt_signature=sign(keypair, started.blob_for_signing()),
    )
    not_accepted = Outcome(OutcomeKind.NOT_ACCEPTED_IN_TIME)
    try:
        if not await send_within(link, session.outgoing(initial, clock.now()), left()):
            return not_accepted
        if not await _wait_for(
            conversation, lambda: job.accepted or job.declined, min(left(), timeouts.wait_s)
        ):
            return not_accepted
        view = session.job(spec.job_uuid)
        if job.declined or view is None or view.accept is None:
            detail = dumps(view.accept) if view is not None and view.accept is not None else ""
            return Outcome(OutcomeKind.DECLINED, detail=detail)
        await on_accepted()
        post_accepted_receipt(
            link,
            conversation,
            keypair,
            spec.job_uuid,
            time_accepted=conversation.accepted_at or clock.now(),
            ttl=int(left()),
            now=clock.now(),
        )
        ready = await _wait_for(
            conversation, lambda: job.executor_ready or job.executor_failed, min(left(), timeouts.wait_s)
        )
        if not ready:
            return Outcome(OutcomeKind.NOT_READY_IN_TIME, accepted=True)
        if job.executor_failed:
            view = session.job(spec.job_uuid)
            detail = dumps(view.executor) if view is not None and view.executor is not None else ""
            return Outcome(OutcomeKind.EXECUTOR_FAILED, accepted=True, detail=detail)
        sent = await send_within(link, session.outgoing(job_request(spec), clock.now()), left())
        if not sent or not await _wait_for(conversation, lambda: job.has_final, left()):
            return Outcome(OutcomeKind.FINAL_TIMEOUT, accepted=True)
        if job.final_kind == "finished":
            return Outcome(OutcomeKind.FINISHED, accepted=True, stdout=job.stdout, stderr=job.stderr)
        view = session.job(spec.job_uuid)
        detail = dumps(view.final) if view is not None and view.final is not None else ""
        return Outcome(
            OutcomeKind.JOB_FAILED, accepted=True, detail=detail, stdout=job.stdout, stderr=job.stderr
        )
    finally:
        # Sent whatever happened once the initial request may have gone out (docs/organic.md).
        await send_finished_receipt(
            link,
            conversation,
            keypair,
            spec.job_uuid,
            time_started=start_at,
            time_took_us=int((clock.monotonic() - start_mono) * 1_000_000),
            now=clock.now(),
        )


async def send_within(link: MinerLink, frame: str, timeout_s: float) -> bool:
    """Send within the stage's time left (the transport retries a failing send until then)."""
    if timeout_s <= 0:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            await link.send(frame)
    except (TimeoutError, MinerConnectionError):
        return False
    return True
