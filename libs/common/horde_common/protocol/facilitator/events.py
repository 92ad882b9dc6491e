"""What a `FacilitatorSession` reports after each inbound frame, and its refusals to send.

Plain immutable values: the service logs them, counts them, and turns `JobRequested` into a job.
Each carries `at`, the caller-supplied receive time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from .messages import ErrorDetail, Response, V0JobRequest, V1JobRequest, V2JobRequest
from .signature import SignatureError
from .transitions import LinkState

__all__ = [
    "AuthFailed",
    "Authenticated",
    "FrameErrorReason",
    "IgnoredFrame",
    "InvalidFrame",
    "JobRequested",
    "LinkEvent",
    "ResponseReceived",
    "SendRefused",
    "UnknownMessage",
    "V2JobRejected",
]


class FrameErrorReason(StrEnum):
    """Why a frame is invalid. All are "unsupported" to the original: ignored, never answered."""

    OVERSIZE = "oversize"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_MESSAGE = "invalid_message"  # missing, extra or mistyped fields; a rule broken


@dataclass(frozen=True, slots=True)
class Authenticated:
    at: datetime


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """The connection must be closed and counted as ended (docs/organic.md §1.10)."""

    reason: str
    errors: tuple[ErrorDetail, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A `Response` after authentication (to a status update, say): logged, never acted on."""

    response: Response
    at: datetime


@dataclass(frozen=True, slots=True)
class JobRequested:
    """A job to run: V0/V1 as received, V2 only with a verified, whitelisted signature."""

    request: V0JobRequest | V1JobRequest | V2JobRequest
    at: datetime


@dataclass(frozen=True, slots=True)
class V2JobRejected:
    """A V2 request dropped for its signature: logged only (no job, no status update)."""

    request: V2JobRequest
    error: SignatureError
    at: datetime


@dataclass(frozen=True, slots=True)
class InvalidFrame:
    reason: FrameErrorReason
    detail: str
    message_type: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A well-formed object with a `message_type` this protocol version does not have."""

    message_type: str
    at: datetime


@dataclass(frozen=True, slots=True)
class IgnoredFrame:
    """A frame in a state that reads none (before authentication was sent, after the close)."""

    state: LinkState
    at: datetime


LinkEvent = (
    Authenticated
    | AuthFailed
    | ResponseReceived
    | JobRequested
    | V2JobRejected
    | InvalidFrame
    | UnknownMessage
    | IgnoredFrame
)


@dataclass(frozen=True, slots=True)
class SendRefused:
    """A message that must not go out now: the caller keeps its source (a bus message) unacked and
    retries after the next authentication."""

    message_type: str
    state: LinkState
