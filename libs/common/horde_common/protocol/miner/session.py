"""The validator's side of one miner connection, without I/O (spec A §1.4–§1.8, §2.5, §6).

The job runner owns the socket and the clock; it feeds frames and times in, and gets back events
and messages to send. Keeping the rules here, away from asyncio, makes them testable as tables
and makes the guarantees hold whatever the transport does:

* authentication is (re-)sent on every `connected()`, so a reconnect never leaves the miner
  waiting for an authentication that never comes (fixes quirk B.1);
* a miner only speaks for jobs registered to this session (fixes quirk B.5); other ids are
  ignored as unknown or foreign;
* the first answer of each kind wins, and once a job has an outcome (declined, executor failed,
  finished, failed) nothing changes it (§6 #13); "ready" after a decline is ignored (fixes B.4);
* `receive` never raises: any frame, however broken, becomes events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
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
    MalformedMessage,
    ManifestReceived,
    MinerError,
    MinerErrorSubtype,
    SessionEvent,
    Unauthorized,
)
from .executor_class import ExecutorClass
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
from .validator_messages import (
    AuthenticationPayload,
    V0AuthenticateRequest,
    V0InitialJobRequest,
    V0JobRequest,
    ValidatorMessage,
)

if TYPE_CHECKING:
    from bittensor_core import Keypair

logger = logging.getLogger(__name__)

Signer = Callable[[str], str]
"""Signs a blob with the validator hotkey and returns `"0x"`+hex (e.g. `partial(crypto.sign, keypair)`)."""

_UNAUTHORIZED_PREFIXES = ("unknown validator", "inactive validator")


class JobOutcome(StrEnum):
    DECLINED = "declined"
    EXECUTOR_FAILED = "executor_failed"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class JobView:
    """A snapshot of what the session knows about one job; the first answer of each kind."""

    job_uuid: str
    executor_class: ExecutorClass | None
    initial_sent_at: datetime | None = None
    accept: V0AcceptJobRequest | V0DeclineJobRequest | None = None
    accept_at: datetime | None = None
    executor: V0ExecutorReadyRequest | V0ExecutorFailedRequest | None = None
    executor_at: datetime | None = None
    job_request_sent_at: datetime | None = None
    final: V0JobFinishedRequest | V0JobFailedRequest | None = None
    final_at: datetime | None = None
    final_before_job_request: bool = False
    machine_specs: V0MachineSpecsRequest | None = None  # the last one
    outcome: JobOutcome | None = None

    @property
    def is_ready(self) -> bool:
        """Eligible for the V0JobRequest: executor ready, no outcome yet."""
        return isinstance(self.executor, V0ExecutorReadyRequest) and self.outcome is None


class JobRegistry:
    """Which session owns which job id. Shared by the sessions of one batch, so that a miner
    answering for another miner's job is recognised as such ("foreign") rather than "unknown"."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def register(self, job_uuid: str, owner: str) -> None:
        current = self._owners.setdefault(job_uuid, owner)
        if current != owner:
            raise ValueError(f"job {job_uuid} is already registered to {current}")

    def owner(self, job_uuid: str) -> str | None:
        return self._owners.get(job_uuid)


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
    ) -> None:
        self.validator_hotkey = validator_hotkey
        self.miner_hotkey = miner_hotkey
        self.miner_address = miner_address
        self.miner_port = miner_port
        # The original's client name, used in logs and in "Malformed message from miner ..." replies.
        self.name = f"{miner_hotkey}({miner_address}:{miner_port})"
        self._sign = sign
        self._registry = registry if registry is not None else JobRegistry()
        self._jobs: dict[str, JobView] = {}
        self.connected_now = False
        self.connections = 0
        self.close_requested = False
        self.manifest: ExecutorManifest | None = None
        self.manifest_at: datetime | None = None

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
        self._jobs.setdefault(job_uuid, JobView(job_uuid=job_uuid, executor_class=executor_class))

    def job(self, job_uuid: str) -> JobView | None:
        return self._jobs.get(job_uuid)

    def jobs(self) -> dict[str, JobView]:
        return dict(self._jobs)

    def outgoing(self, message: BaseModel, now: datetime) -> str:
        """Serialise a message the caller is about to send, recording job-state changes.

        Initial and job requests must go through here: a job's answers are accepted only after its
        initial request, and a final answer before the job request is flagged as out of order.
        Raises ValueError for a job not registered to this session (a caller bug, not peer input).
        """
        if isinstance(message, V0InitialJobRequest | V0JobRequest):
            job = self._jobs.get(message.job_uuid)
            if job is None:
                raise ValueError(f"job {message.job_uuid} is not registered to {self.name}")
            if isinstance(message, V0InitialJobRequest):
                if job.initial_sent_at is None:
                    job = replace(job, initial_sent_at=now)
                if job.executor_class is None:
                    job = replace(job, executor_class=message.executor_class)
            elif job.job_request_sent_at is None:
                job = replace(job, job_request_sent_at=now)
            self._jobs[job.job_uuid] = job
        return dumps(message)

    # --------------------------------------------------------------------------------- receive

    def receive(self, raw: str | bytes | bytearray | memoryview, now: datetime) -> Received:
        """Process one frame from the miner. Never raises."""
        pending = _Pending()
        try:
            try:
                message = parse_miner_message(raw)
            except ProtocolError as exc:
                self._malformed(pending, exc.text, now)
            else:
                self._dispatch(pending, message, now)
        except Exception:
            logger.exception("%s: internal error while handling a frame", self.name)
            pending.events.append(IgnoredMessage(IgnoreReason.INTERNAL_ERROR, "?", None, now))
        return pending.done()

    def _malformed(self, pending: _Pending, error: str, now: datetime) -> None:
        details = f"Malformed message from miner {self.name}: {error}"
        logger.info("%s", details)
        reply = GenericError(details=details)
        pending.events.append(MalformedMessage(error=error, reply=reply, at=now))
        pending.outgoing.append(reply)

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
                self.close_requested = True
                pending.close = True
            subtype = MinerErrorSubtype.UNAUTHORIZED if unauthorized else MinerErrorSubtype.GENERIC_ERROR
            pending.events.append(MinerError(subtype, details, unauthorized, now))
            return
        if isinstance(message, UnauthorizedError):
            logger.warning("%s unauthorized: %s %s", self.name, message.code, message.details)
            pending.events.append(Unauthorized(message.code, message.details, now))
            return
        if isinstance(message, V0ExecutorManifestRequest):
            if self.manifest is not None:
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
        if job.initial_sent_at is None:
            self._ignore(pending, IgnoreReason.UNEXPECTED_IN_STATE, message, now, "initial request not sent")
            return
        if isinstance(message, V0MachineSpecsRequest):
            # Last wins: telemetry only, and the miner controls it anyway.
            self._jobs[job.job_uuid] = replace(job, machine_specs=message)
            pending.events.append(MachineSpecsReceived(job.job_uuid, message, now))
        elif isinstance(message, V0AcceptJobRequest | V0DeclineJobRequest):
            self._on_accept(pending, job, message, now)
        elif isinstance(message, V0ExecutorReadyRequest | V0ExecutorFailedRequest):
            self._on_executor(pending, job, message, now)
        elif isinstance(message, V0JobFinishedRequest | V0JobFailedRequest):
            self._on_final(pending, job, message, now)

    def _blocked(
        self, pending: _Pending, job: JobView, already: object, message: JobMessage, now: datetime
    ) -> bool:
        """First wins; and nothing after an outcome may record anything."""
        if already is not None:
            self._ignore(pending, IgnoreReason.DUPLICATE, message, now)
            return True
        if job.outcome is not None:
            self._ignore(
                pending, IgnoreReason.UNEXPECTED_IN_STATE, message, now, f"job already {job.outcome}"
            )
            return True
        return False

    def _on_accept(
        self,
        pending: _Pending,
        job: JobView,
        message: V0AcceptJobRequest | V0DeclineJobRequest,
        now: datetime,
    ) -> None:
        if self._blocked(pending, job, job.accept, message, now):
            return
        if isinstance(message, V0AcceptJobRequest):
            self._jobs[job.job_uuid] = replace(job, accept=message, accept_at=now)
            pending.events.append(JobAccepted(job.job_uuid, message, now))
        else:
            self._jobs[job.job_uuid] = replace(
                job, accept=message, accept_at=now, outcome=JobOutcome.DECLINED
            )
            pending.events.append(JobDeclined(job.job_uuid, message, now))

    def _on_executor(
        self,
        pending: _Pending,
        job: JobView,
        message: V0ExecutorReadyRequest | V0ExecutorFailedRequest,
        now: datetime,
    ) -> None:
        if self._blocked(pending, job, job.executor, message, now):
            return
        if isinstance(message, V0ExecutorReadyRequest):
            self._jobs[job.job_uuid] = replace(job, executor=message, executor_at=now)
            pending.events.append(
                ExecutorReady(job.job_uuid, message, now, without_accept=job.accept is None)
            )
        else:
            outcome = JobOutcome.EXECUTOR_FAILED
            self._jobs[job.job_uuid] = replace(job, executor=message, executor_at=now, outcome=outcome)
            pending.events.append(ExecutorFailed(job.job_uuid, message, now))

    def _on_final(
        self,
        pending: _Pending,
        job: JobView,
        message: V0JobFinishedRequest | V0JobFailedRequest,
        now: datetime,
    ) -> None:
        if self._blocked(pending, job, job.final, message, now):
            return
        early = job.job_request_sent_at is None
        finished = isinstance(message, V0JobFinishedRequest)
        outcome = JobOutcome.FINISHED if finished else JobOutcome.FAILED
        self._jobs[job.job_uuid] = replace(
            job, final=message, final_at=now, final_before_job_request=early, outcome=outcome
        )
        if isinstance(message, V0JobFinishedRequest):
            pending.events.append(JobFinished(job.job_uuid, message, now, before_job_request=early))
        else:
            pending.events.append(JobFailed(job.job_uuid, message, now, before_job_request=early))
