"""The states of a `FacilitatorSession` and their transition table, as data
(docs/organic.md §1.2).

One session is one WebSocket connection: the validator speaks first (authentication), the
facilitator's first frame must be a successful `Response`, and only then may anything else be
sent or received. A closed session stays closed; the caller opens a new connection and a new
session (docs/organic.md §1.10).

Inputs whose `(state, input)` pair is missing are refused: the session reports the refusal as an
event or a typed value instead of raising, because most inputs come from the peer or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

__all__ = [
    "FRAME_ROLE",
    "LINK_TRANSITIONS",
    "SENDING_STATES",
    "TERMINAL_STATES",
    "FrameRole",
    "LinkInput",
    "LinkState",
]


class LinkState(StrEnum):
    CONNECTING = "connecting"  # socket open, authentication not sent yet
    AUTHENTICATING = "authenticating"  # authentication sent, waiting for the one Response
    READY = "ready"  # authenticated: jobs come in, status updates and heartbeats go out
    CLOSED = "closed"  # authentication refused or the connection ended


class LinkInput(StrEnum):
    AUTH_SENT = "auth_sent"
    AUTH_SUCCEEDED = "auth_succeeded"  # a Response with status "success"
    AUTH_FAILED = "auth_failed"  # an error Response, or any frame that is not a Response
    CONNECTION_CLOSED = "connection_closed"  # the caller saw the socket end


_S = LinkState
_I = LinkInput

LINK_TRANSITIONS: Final[Mapping[tuple[LinkState, LinkInput], LinkState]] = {
    (_S.CONNECTING, _I.AUTH_SENT): _S.AUTHENTICATING,
    (_S.AUTHENTICATING, _I.AUTH_SUCCEEDED): _S.READY,
    (_S.AUTHENTICATING, _I.AUTH_FAILED): _S.CLOSED,
    (_S.CONNECTING, _I.CONNECTION_CLOSED): _S.CLOSED,
    (_S.AUTHENTICATING, _I.CONNECTION_CLOSED): _S.CLOSED,
    (_S.READY, _I.CONNECTION_CLOSED): _S.CLOSED,
    (_S.CLOSED, _I.CONNECTION_CLOSED): _S.CLOSED,
}

TERMINAL_STATES: Final = frozenset({_S.CLOSED})
"""States no input leaves."""


class FrameRole(StrEnum):
    """What an inbound frame means in a state."""

    AUTH_RESPONSE = "auth_response"  # exactly one frame, parsed as the authentication answer
    DISPATCH = "dispatch"  # a Response (logged) or a job request (docs/organic.md §1.7)


FRAME_ROLE: Final[Mapping[LinkState, FrameRole]] = {
    _S.AUTHENTICATING: FrameRole.AUTH_RESPONSE,
    _S.READY: FrameRole.DISPATCH,
}
"""States that read frames. In the others a frame is ignored (the facilitator speaks second, and
nothing is read after a close)."""

SENDING_STATES: Final = frozenset({_S.READY})
"""States in which heartbeats, status updates and specs may go out: only an authenticated
connection is "current" for the facilitator."""
