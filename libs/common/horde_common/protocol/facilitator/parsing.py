"""Inbound frame → message, without raising (docs/organic.md §1.7).

The original tried each inbound frame first as a `Response`, then as a job request, and ignored
anything else as "unsupported". `Response` forbids extra keys and has no `message_type`, so the
order is decided by the presence of `message_type`; the result is the same, and an unknown
`message_type` can be told apart from a broken frame for metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import Field, TypeAdapter, ValidationError

from .events import FrameErrorReason
from .messages import (
    JOB_REQUEST_TYPES,
    MAX_FRAME_BYTES,
    Response,
    V0JobRequest,
    V1JobRequest,
    V2JobRequest,
)

__all__ = [
    "MAX_DETAIL_TEXT",
    "FrameError",
    "UnknownType",
    "frame_bytes_size",
    "parse_inbound",
    "parse_response",
]

MAX_DETAIL_TEXT: Final = 2000
"""Longest error detail kept for logs: enough for a handful of pydantic errors; a hostile frame
cannot make its own rejection large."""

# Longest `message_type` echoed in an event (the longest real one has 23 characters).
_MAX_TYPE_NAME: Final = 64

_JOB_ADAPTER: TypeAdapter[V0JobRequest | V1JobRequest | V2JobRequest] = TypeAdapter(
    Annotated[V0JobRequest | V1JobRequest | V2JobRequest, Field(discriminator="message_type")]
)


@dataclass(frozen=True, slots=True)
class FrameError:
    reason: FrameErrorReason
    detail: str
    message_type: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownType:
    message_type: str


Inbound = Response | V0JobRequest | V1JobRequest | V2JobRequest | FrameError | UnknownType


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_TEXT else text[:MAX_DETAIL_TEXT] + " ... (truncated)"


def frame_bytes_size(raw: str | bytes) -> int:
    """UTF-8 size of a frame, computed only when a text frame could exceed the limit."""
    if isinstance(raw, bytes):
        return len(raw)
    if len(raw) * 4 <= MAX_FRAME_BYTES:  # at most 4 bytes a character
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def _decode(raw: str | bytes) -> Any | FrameError:
    size = frame_bytes_size(raw)
    if size > MAX_FRAME_BYTES:
        return FrameError(FrameErrorReason.OVERSIZE, f"frame of {size} bytes (limit {MAX_FRAME_BYTES})")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return FrameError(FrameErrorReason.NOT_UTF8, str(exc))
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        return FrameError(FrameErrorReason.BAD_JSON, exc.args[0])
    except RecursionError:
        return FrameError(FrameErrorReason.BAD_JSON, "JSON nested too deeply")
    except Exception as exc:  # anything odd in the decoder is still just a bad frame
        return FrameError(FrameErrorReason.BAD_JSON, _truncate(f"{type(exc).__name__}: {exc}"))


def _validate(adapter: TypeAdapter[Any], data: Any, message_type: str | None) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        detail = exc.json(include_url=False, include_input=False)
    except RecursionError:
        detail = "nested too deeply"
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
    return FrameError(FrameErrorReason.INVALID_MESSAGE, _truncate(detail), message_type)


_RESPONSE_ADAPTER: TypeAdapter[Response] = TypeAdapter(Response)


def parse_response(raw: str | bytes) -> Response | FrameError:
    """The one frame answering authentication: a `Response` or why it is not one."""
    data = _decode(raw)
    if isinstance(data, FrameError):
        return data
    if not isinstance(data, dict):
        return FrameError(FrameErrorReason.NOT_AN_OBJECT, f"a JSON {type(data).__name__}, not an object")
    result: Response | FrameError = _validate(_RESPONSE_ADAPTER, data, None)
    return result


def parse_inbound(raw: str | bytes) -> Inbound:
    """Any frame after authentication: a `Response`, a job request, an unknown type, or an error."""
    data = _decode(raw)
    if isinstance(data, FrameError):
        return data
    if not isinstance(data, dict):
        return FrameError(FrameErrorReason.NOT_AN_OBJECT, f"a JSON {type(data).__name__}, not an object")
    if "message_type" not in data:
        result: Inbound = _validate(_RESPONSE_ADAPTER, data, None)
        return result
    message_type = data["message_type"]
    if not isinstance(message_type, str):
        return FrameError(FrameErrorReason.INVALID_MESSAGE, "`message_type` is not a string")
    name = message_type if len(message_type) <= _MAX_TYPE_NAME else message_type[:_MAX_TYPE_NAME] + "..."
    if message_type not in JOB_REQUEST_TYPES:
        return UnknownType(name)
    job: Inbound = _validate(_JOB_ADAPTER, data, name)
    return job
