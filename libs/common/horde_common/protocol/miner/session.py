"""The validator's side of one miner connection, without I/O (docs/miner-protocol.md §1.4–§1.8, §2.5, §6).

The job runner owns the socket and the clock; it feeds frames and times in, and gets back events
and messages to send. Keeping the rules here, away from asyncio, makes them testable as tables
and makes the guarantees hold whatever the transport does:

* authentication is (re-)sent on every `connected()`, so a reconnect never leaves the miner
  waiting for an authentication that never comes (fixes quirk B.1);
* a miner only speaks for jobs registered to this session (fixes quirk B.5); other ids are
  ignored as unknown or foreign;
* the first answer of each kind wins, and once a job has an outcome (declined, executor failed,
  finished, failed) nothing changes it (§6 #13); "ready" after a decline is ignored (fixes B.4).
  These rules are the data of `transitions` (§2.6): the session and each job have an explicit
  state, and an input is taken only where the transition table lists it;
* `receive` never raises: any frame, however broken, becomes events; malformed frames are answered
  only within a byte budget, and a flood of them closes the connection (`flood`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from .base_messages import GenericError, JobMessage, V0MachineSpecsRequest
from .events import (
    ExecutorFailed,
    ExecutorReady,
    IgnoredMessage,
    IgnoreReason,
    JobAccepted,
    JobDeclined,
    JobFailed,
    JobFinished,
    MachineSpecsReceived,
    MalformedFlood,
    MalformedMessage,
    ManifestReceived,
    ManifestRejected,
    MinerError,
    MinerErrorSubtype,
    SessionEvent,
    Unauthorized,
)
from .executor_class import ExecutorClass
from .flood import MalformedFramePolicy, frame_size
from .job_state import JobOutcome, JobRecord, JobView
from .miner_messages import (
    ExecutorManifest,
    MinerMessage,
    UnauthorizedError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
)
from .parsing import ProtocolError, dumps, parse_miner_message
from .registry import JobRegistry
from .transitions import (
    JOB_ANSWER_SLOT,
    JOB_INPUT_OF_MESSAGE,
    JOB_TRANSITIONS,
    SESSION_TRANSITIONS,
    JobInput,
    JobState,
    SessionInput,
    SessionState,
)
from .validator_messages import (
    AuthenticationPayload,
    V0AuthenticateRequest,
    V0InitialJobRequest,
    V0JobRequest,
    ValidatorMessage,
)

if TYPE_CHECKING:
    from bittensor_core import Keypair

__all__ = ["JobOutcome", "JobRegistry", "JobView", "MinerSession", "Received", "Signer"]

logger = logging.getLogger(__name__)

Signer = Callable[[str], str]
"""Signs a blob with the validator hotkey and returns `"0x"`+hex (e.g. `partial(crypto.sign, keypair)`)."""

_UNAUTHORIZED_PREFIXES = ("unknown validator", "inactive validator")


@dataclass(frozen=True, slots=True)
class Received:
    """The result of one frame: events in order, messages to send back, and whether to close."""

    events: tuple[SessionEvent, ...] = ()
    outgoing: tuple[ValidatorMessage, ...] = ()
    close: bool = False


@dataclass(slots=True)
class _Pending:
    events: list[SessionEvent] = field(default_factory=list)
    outgoing: list[ValidatorMessage] = field(default_factory=list)
    close: bool = False

    def done(self) -> Received:
        return Received(tuple(self.events), tuple(self.outgoing), self.close)


class MinerSession:
    """The validator side of the conversation with one miner, across reconnects."""

    def __init__(
        self,
        *,
        validator_hotkey: str,
        sign: Signer,
        miner_hotkey: str,
        miner_address: str,
        miner_port: int,
        registry: JobRegistry | None = None,
        flood: MalformedFramePolicy | None = None,
    ) -> None:
        self.validator_hotkey = validator_hotkey
        self.miner_hotkey = miner_hotkey
        self.miner_address = miner_address
        self.miner_port = miner_port
        # The original's client name, used in logs and in "Malformed message from miner ..." replies.
        self.name = f"{miner_hotkey}({miner_address}:{miner_port})"
        self._sign = sign
        self._registry = registry if registry is not None else JobRegistry()
        self._jobs: dict[str, JobRecord] = {}
        self.connected_now = False
        self.connections = 0
        self.state = SessionState.AWAITING_MANIFEST  # see `transitions.SESSION_TRANSITIONS`
        self.manifest: ExecutorManifest | None = None
        self.manifest_at: datetime | None = None
        self.flood = flood if flood is not None else MalformedFramePolicy()

    @classmethod
    def with_keypair(
        cls,
        keypair: Keypair,
        *,
        miner_hotkey: str,
        miner_address: str,
        miner_port: int,
        registry: JobRegistry | None = None,
    ) -> MinerSession:
        """A session that signs with the validator's hotkey keypair."""
        from horde_common.crypto import sign

        return cls(
            validator_hotkey=keypair.ss58_address,
            sign=lambda blob: sign(keypair, blob),
            miner_hotkey=miner_hotkey,
            miner_address=miner_address,
            miner_port=miner_port,
            registry=registry,
        )

    @property
    def close_requested(self) -> bool:
        """The session asked the caller to close the connection (the miner's fault); for good."""
        return self.state in (SessionState.CLOSING, SessionState.CLOSING_AFTER_MANIFEST)

    def _advance(self, event: SessionInput) -> bool:
        """Apply a session-level input if the table allows it in the current state."""
        target = SESSION_TRANSITIONS.get((self.state, event))
        if target is None:
            return False
        self.state = target
        return True

    # ------------------------------------------------------------------------------ connection

    def url(self) -> str:
        """`ws://{ip}:{port}/v0.1/validator_interface/{validator_hotkey}`; IPv6 is bracketed (fixes B.9)."""
        host = f"[{self.miner_address}]" if ":" in self.miner_address else self.miner_address
        return f"ws://{host}:{self.miner_port}/v0.1/validator_interface/{self.validator_hotkey}"

    def authenticate_request(self, now: datetime) -> V0AuthenticateRequest:
        payload = AuthenticationPayload(
            validator_hotkey=self.validator_hotkey,
            miner_hotkey=self.miner_hotkey,
            timestamp=int(now.timestamp()),
        )
        return V0AuthenticateRequest(payload=payload, signature=self._sign(payload.blob_for_signing()))

    def connected(self, now: datetime) -> list[ValidatorMessage]:
        """The transport (re)connected: the first frame must be a fresh authentication."""
        self.connected_now = True
        self.connections += 1
        return [self.authenticate_request(now)]

    def disconnected(self, now: datetime) -> None:
        """The transport lost the connection; the next `connected()` re-authenticates."""
        self.connected_now = False

    # ------------------------------------------------------------------------------------ jobs

    def register_job(self, job_uuid: str, executor_class: ExecutorClass | None = None) -> None:
        """Declare that `job_uuid` belongs to this miner; only then are its messages accepted."""
        self._registry.register(job_uuid, self.name)
        if job_uuid not in self._jobs:
            self._jobs[job_uuid] = JobRecord(job_uuid, executor_class)

    def job(self, job_uuid: str) -> JobView | None:
        """A snapshot of the job's state (it does not follow later changes), or None."""
        record = self._jobs.get(job_uuid)
        return None if record is None else record.view()

    def jobs(self) -> dict[str, JobView]:
        return {job_uuid: record.view() for job_uuid, record in self._jobs.items()}

    def outgoing(self, message: BaseModel, now: datetime) -> str:
        """Serialise a message the caller is about to send, recording job-state changes.

        Initial and job requests must go through here: a job's answers are accepted only after its
        initial request, and a final answer before the job request is flagged as out of order.
        Raises ValueError for a job not registered to this session (a caller bug, not peer input).
        """
        if isinstance(message, V0InitialJobRequest):
            self.initial_request_sent(message.job_uuid, message.executor_class, now)
        elif isinstance(message, V0JobRequest):
            self.job_request_sent(message.job_uuid, now)
        return dumps(message)

    def initial_request_sent(
        self, job_uuid: str, executor_class: ExecutorClass | None, now: datetime
    ) -> None:
        """Record a `V0InitialJobRequest` the caller serialised itself (byte for byte `dumps` of
        the message, e.g. with its volume spliced in): what `outgoing` records for one."""
        job = self._registered(job_uuid)
        # A repeat is never refused; it changes nothing (the table has no row for it).
        target = JOB_TRANSITIONS.get((job.state, JobInput.INITIAL_REQUEST_SENT))
        if target is not None:
            job.state, job.initial_sent_at = target, now
        if job.executor_class is None:
            job.executor_class = executor_class

    def job_request_sent(self, job_uuid: str, now: datetime) -> None:
        """Record a `V0JobRequest` the caller serialised itself: what `outgoing` records for one."""
        job = self._registered(job_uuid)
        if job.job_request_sent_at is None:
            job.job_request_sent_at = now

    def _registered(self, job_uuid: str) -> JobRecord:
        job = self._jobs.get(job_uuid)
        if job is None:
            raise ValueError(f"job {job_uuid} is not registered to {self.name}")
        return job

    # --------------------------------------------------------------------------------- receive

    def receive(self, raw: str | bytes | bytearray | memoryview, now: datetime) -> Received:
        """Process one frame from the miner. Never raises."""
        pending = _Pending()
        try:
            try:
                message = parse_miner_message(raw)
            except ProtocolError as exc:
                self._malformed(pending, exc.text, frame_size(raw), now)
                if exc.message_type == "V0ExecutorManifestRequest":
                    self._manifest_rejected(pending, exc.text, now)
            else:
                self._dispatch(pending, message, now)
        except Exception:
            logger.exception("%s: internal error while handling a frame", self.name)
            pending.events.append(IgnoredMessage(IgnoreReason.INTERNAL_ERROR, "?", None, now))
        return pending.done()

    def _manifest_rejected(self, pending: _Pending, error: str, now: datetime) -> None:
        """No manifest will come (it is sent once): close now, the miner's fault, not a timeout.
        Refused once a valid manifest came: the frame was only malformed then."""
        if self._advance(SessionInput.INVALID_MANIFEST) and not pending.close:
            pending.close = True  # one close reason per frame: a flood tripped by it comes first
            pending.events.append(ManifestRejected(error=error, at=now))

    def _malformed(self, pending: _Pending, error: str, size: int, now: datetime) -> None:
        details = f"Malformed message from miner {self.name}: {error}"
        logger.info("%s", details)
        flood = self.flood
        tripped = flood.record(size, now)
        # len(details) is a lower bound of the reply's size: skip serialising what cannot fit.
        reply = GenericError(details=details) if flood.affordable(len(details)) else None
        if reply is not None and not flood.spend(len(dumps(reply).encode())):
            reply = None
        pending.events.append(MalformedMessage(error=error, reply=reply, at=now))
        if reply is not None:
            pending.outgoing.append(reply)
        if tripped:  # the caller closes the connection and records the flood against the miner
            self._advance(SessionInput.MALFORMED_FLOOD)
            pending.close = True
            window_s, got, spent = flood.window.total_seconds(), flood.bytes_received, flood.bytes_replied
            pending.events.append(MalformedFlood(flood.limit, window_s, got, spent, now))

    def _ignore(
        self, pending: _Pending, reason: IgnoreReason, message: BaseModel, now: datetime, detail: str = ""
    ) -> None:
        message_type = str(getattr(message, "message_type", "?"))
        job_uuid = message.job_uuid if isinstance(message, JobMessage) else None
        logger.info("%s: ignored %s (%s) job=%s %s", self.name, message_type, reason, job_uuid, detail)
        pending.events.append(IgnoredMessage(reason, message_type, job_uuid, now, detail))

    def _dispatch(self, pending: _Pending, message: MinerMessage, now: datetime) -> None:
        if isinstance(message, GenericError):
            details = message.details
            unauthorized = details is not None and details.lower().startswith(_UNAUTHORIZED_PREFIXES)
            logger.warning("%s error: %s", self.name, details)
            if unauthorized:
                self._advance(SessionInput.UNAUTHORIZED_ERROR)
                pending.close = True
            subtype = MinerErrorSubtype.UNAUTHORIZED if unauthorized else MinerErrorSubtype.GENERIC_ERROR
            pending.events.append(MinerError(subtype, details, unauthorized, now))
            return
        if isinstance(message, UnauthorizedError):
            logger.warning("%s unauthorized: %s %s", self.name, message.code, message.details)
            pending.events.append(Unauthorized(message.code, message.details, now))
            return
        if isinstance(message, V0ExecutorManifestRequest):
            if not self._advance(SessionInput.MANIFEST):
                self._ignore(pending, IgnoreReason.DUPLICATE, message, now)
                return
            self.manifest, self.manifest_at = message.manifest, now
            pending.events.append(ManifestReceived(message.manifest, now))
            return
        self._dispatch_job(pending, message, now)

    def _dispatch_job(self, pending: _Pending, message: JobMessage, now: datetime) -> None:
        job = self._jobs.get(message.job_uuid)
        if job is None:
            owner = self._registry.owner(message.job_uuid)
            reason = IgnoreReason.UNKNOWN_JOB if owner is None else IgnoreReason.FOREIGN_JOB
            self._ignore(pending, reason, message, now)
            return
        kind = JOB_INPUT_OF_MESSAGE.get(str(getattr(message, "message_type", "")))
        target = None if kind is None else JOB_TRANSITIONS.get((job.state, kind))
        if kind is None or target is None:
            self._refuse(pending, job, kind, message, now)
            return
        if isinstance(message, V0MachineSpecsRequest):
            # Last wins: telemetry only, and the miner controls it anyway.
            job.machine_specs = message
            pending.events.append(MachineSpecsReceived(job.job_uuid, message, now))
        elif isinstance(message, V0AcceptJobRequest):
            job.accept, job.accept_at = message, now
            pending.events.append(JobAccepted(job.job_uuid, message, now))
        elif isinstance(message, V0DeclineJobRequest):
            job.accept, job.accept_at = message, now
            pending.events.append(JobDeclined(job.job_uuid, message, now))
        elif isinstance(message, V0ExecutorReadyRequest):
            job.executor, job.executor_at = message, now
            event = ExecutorReady(job.job_uuid, message, now, without_accept=job.accept is None)
            pending.events.append(event)
        elif isinstance(message, V0ExecutorFailedRequest):
            job.executor, job.executor_at = message, now
            pending.events.append(ExecutorFailed(job.job_uuid, message, now))
        elif isinstance(message, V0JobFinishedRequest | V0JobFailedRequest):
            early = job.job_request_sent_at is None
            job.final, job.final_at, job.final_before_job_request = message, now, early
            if isinstance(message, V0JobFinishedRequest):
                pending.events.append(JobFinished(job.job_uuid, message, now, before_job_request=early))
            else:
                pending.events.append(JobFailed(job.job_uuid, message, now, before_job_request=early))
        job.state = target

    def _refuse(
        self, pending: _Pending, job: JobRecord, kind: JobInput | None, message: JobMessage, now: datetime
    ) -> None:
        """A job message the table does not allow in the job's state (see `transitions`, §2.7):
        the first answer of each kind wins, and nothing after an outcome may record anything."""
        if job.state is JobState.REGISTERED:
            self._ignore(pending, IgnoreReason.UNEXPECTED_IN_STATE, message, now, "initial request not sent")
        elif kind is None:
            return  # a job message kind the session does not handle: nothing to record
        elif (slot := JOB_ANSWER_SLOT.get(kind)) is not None and getattr(job, slot) is not None:
            self._ignore(pending, IgnoreReason.DUPLICATE, message, now)
        else:
            detail = f"job already {job.outcome}"
            self._ignore(pending, IgnoreReason.UNEXPECTED_IN_STATE, message, now, detail)
