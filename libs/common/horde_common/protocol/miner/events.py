"""What a `MinerSession` reports after each frame: plain, immutable facts for the job runner.

Every event carries `at`, the caller-supplied receive time, because the batch measures job times
from these moments (e.g. a JobAccepted receipt's `time_accepted`, a job's `time_took`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from .base_messages import GenericError, V0MachineSpecsRequest
from .miner_messages import (
    ExecutorManifest,
    UnauthorizedErrorCode,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
)


class MinerErrorSubtype(StrEnum):
    """How a miner's `GenericError` is classified (docs/miner-protocol.md §1.8)."""

    UNAUTHORIZED = "UNAUTHORIZED"
    GENERIC_ERROR = "GENERIC_ERROR"


class IgnoreReason(StrEnum):
    """Why a well-formed frame changed nothing."""

    DUPLICATE = "duplicate"  # a second message of a kind that already has its (first) answer
    UNKNOWN_JOB = "unknown job"  # no session knows the job id (e.g. re-delivery from an old batch)
    FOREIGN_JOB = "foreign job"  # the job belongs to another miner's session
    UNEXPECTED_IN_STATE = "unexpected in state"  # e.g. "ready" after a decline
    INTERNAL_ERROR = "internal error"  # a bug in the session; logged with its traceback


@dataclass(frozen=True, slots=True)
class ManifestReceived:
    manifest: ExecutorManifest
    at: datetime


@dataclass(frozen=True, slots=True)
class JobAccepted:
    job_uuid: str
    message: V0AcceptJobRequest
    at: datetime


@dataclass(frozen=True, slots=True)
class JobDeclined:
    job_uuid: str
    message: V0DeclineJobRequest
    at: datetime


@dataclass(frozen=True, slots=True)
class ExecutorReady:
    job_uuid: str
    message: V0ExecutorReadyRequest
    at: datetime
    # True when no accept was seen: normal after a reconnect, when the miner re-announces ready
    # executors but the accept was lost with the old connection.
    without_accept: bool


@dataclass(frozen=True, slots=True)
class ExecutorFailed:
    job_uuid: str
    message: V0ExecutorFailedRequest
    at: datetime


@dataclass(frozen=True, slots=True)
class JobFinished:
    job_uuid: str
    message: V0JobFinishedRequest
    at: datetime
    # True when the V0JobRequest had not been sent yet: the original scores it "out of order" (0).
    before_job_request: bool


@dataclass(frozen=True, slots=True)
class JobFailed:
    job_uuid: str
    message: V0JobFailedRequest
    at: datetime
    before_job_request: bool


@dataclass(frozen=True, slots=True)
class MachineSpecsReceived:
    """Telemetry only; the last one per job is kept."""

    job_uuid: str
    message: V0MachineSpecsRequest
    at: datetime


@dataclass(frozen=True, slots=True)
class MinerError:
    """A `GenericError` from the miner. `close` asks the caller to close the connection."""

    subtype: MinerErrorSubtype
    details: str | None
    close: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """An `UnauthorizedError` (never sent by November-2024 miners): logged, connection kept."""

    code: UnauthorizedErrorCode
    details: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """An invalid frame; `reply` is the GenericError sent back (also in the outgoing list), or None
    when the reply budget did not allow one (see `flood`: we never send more than we got)."""

    error: str
    reply: GenericError | None
    at: datetime


@dataclass(frozen=True, slots=True)
class MalformedFlood:
    """Too many malformed frames within the window: the session asks the caller to close the
    connection, and the caller records this against the miner. Sent once per session."""

    malformed_frames: int  # in the window that tripped the limit
    window_s: float
    bytes_received: int  # payload bytes of all malformed frames so far
    bytes_replied: int  # wire bytes we spent on GenericError replies so far
    at: datetime


@dataclass(frozen=True, slots=True)
class ManifestRejected:
    """The miner's manifest frame was invalid (too large, too many entries, bad fields) and no valid
    manifest came before it. A 0.0.18 miner sends its manifest once, right after authentication, so
    there is nothing to wait for: the session asks the caller to close and blame the miner at once."""

    error: str
    at: datetime


@dataclass(frozen=True, slots=True)
class IgnoredMessage:
    reason: IgnoreReason
    message_type: str
    job_uuid: str | None
    at: datetime
    detail: str = ""


SessionEvent = (
    ManifestReceived
    | JobAccepted
    | JobDeclined
    | ExecutorReady
    | ExecutorFailed
    | JobFinished
    | JobFailed
    | MachineSpecsReceived
    | MinerError
    | Unauthorized
    | MalformedMessage
    | MalformedFlood
    | ManifestRejected
    | IgnoredMessage
)
