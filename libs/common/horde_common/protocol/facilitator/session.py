"""The validator's side of one facilitator connection, without I/O
(docs/organic.md §1.2).

The gateway service owns the socket and the clock; it feeds frames and times in and gets back
events and frames to send. The rules live here so they hold whatever the transport does:

* authentication is the first frame, and exactly one frame answers it: anything but a successful
  `Response` fails the connection (`AuthFailed`);
* after that, each frame is a `Response` (only reported), a job request (`JobRequested`), or
  unsupported (`InvalidFrame`, `UnknownMessage`): never an exception, never a reply;
* a V2 request becomes a job only with a verified signature from a whitelisted signer;
* nothing goes out before authentication succeeded: heartbeats are simply not due, status updates
  and specs are refused with a typed `SendRefused` so the caller can keep their source unacked;
* the first heartbeat is due one period after authentication, then one every period.

Frames returned are JSON text: send them as WebSocket *text* frames, as the original did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel

from .events import (
    Authenticated,
    AuthFailed,
    IgnoredFrame,
    InvalidFrame,
    JobRequested,
    LinkEvent,
    ResponseReceived,
    SendRefused,
    UnknownMessage,
    V2JobRejected,
)
from .messages import (
    JobStatus,
    JobStatusMetadata,
    MinerResponse,
    Response,
    V0AuthenticationRequest,
    V0Heartbeat,
    V0JobStatusUpdate,
    V0MachineSpecsUpdate,
    V2JobRequest,
)
from .parsing import FrameError, UnknownType, parse_inbound, parse_response
from .signature import verify_v2_request
from .transitions import FRAME_ROLE, LINK_TRANSITIONS, SENDING_STATES, FrameRole, LinkInput, LinkState

__all__ = ["HEARTBEAT_PERIOD", "FacilitatorSession", "LinkCounters"]

HEARTBEAT_PERIOD: Final = timedelta(seconds=60)
"""The original's heartbeat period; the facilitator only dispatches to validators heard from in
the last 3 minutes, so up to two heartbeats may be lost without losing jobs."""


@dataclass(slots=True)
class LinkCounters:
    """Per-connection totals for metrics; the caller adds them up across connections."""

    frames_in: int = 0
    frames_out: int = 0
    frames_invalid: int = 0  # invalid or unknown-type frames (the original's "unsupported")
    jobs_requested: int = 0
    v2_rejected: int = 0
    sends_refused: int = 0


class FacilitatorSession:
    """One connection's protocol state. `v2_signers`: the SS58 addresses whose V2 requests run."""

    def __init__(self, auth: V0AuthenticationRequest, v2_signers: frozenset[str]) -> None:
        self._auth = auth
        self._signers = v2_signers
        self._state = LinkState.CONNECTING
        self._next_heartbeat: datetime | None = None
        self.counters = LinkCounters()

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def authenticated(self) -> bool:
        return self._state in SENDING_STATES

    @property
    def next_heartbeat_at(self) -> datetime | None:
        """When `due_heartbeat` will next return a frame (None before authentication and after close)."""
        return self._next_heartbeat if self.authenticated else None

    def _move(self, link_input: LinkInput) -> bool:
        target = LINK_TRANSITIONS.get((self._state, link_input))
        if target is None:
            return False
        self._state = target
        return True

    def _out(self, message: BaseModel) -> str:
        self.counters.frames_out += 1
        return message.model_dump_json()

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, now: datetime) -> str:
        """The authentication frame, once per connection. Raises RuntimeError if called again
        (a caller bug, not peer input)."""
        del now  # part of the interface so every input is timed; authentication has no timer
        if not self._move(LinkInput.AUTH_SENT):
            raise RuntimeError(f"authentication already sent (session is {self._state})")
        return self._out(self._auth)

    def connection_closed(self) -> None:
        """The socket ended: nothing more is read or sent on this session."""
        self._move(LinkInput.CONNECTION_CLOSED)
        self._next_heartbeat = None

    # -------------------------------------------------------------------------------- inbound

    def receive(self, frame: str | bytes, now: datetime) -> list[LinkEvent]:
        """Events for one inbound frame. Never raises, whatever the frame holds."""
        self.counters.frames_in += 1
        role = FRAME_ROLE.get(self._state)
        if role is FrameRole.AUTH_RESPONSE:
            return [self._auth_answer(frame, now)]
        if role is FrameRole.DISPATCH:
            return [self._dispatch(frame, now)]
        return [IgnoredFrame(self._state, now)]

    def _auth_answer(self, frame: str | bytes, now: datetime) -> LinkEvent:
        response = parse_response(frame)
        if isinstance(response, FrameError):
            self.counters.frames_invalid += 1
            self._move(LinkInput.AUTH_FAILED)
            return AuthFailed(
                f"did not receive Response for V0AuthenticationRequest ({response.reason}: {response.detail})",
                (),
                now,
            )
        if response.status != "success":
            self._move(LinkInput.AUTH_FAILED)
            return AuthFailed("authentication refused", tuple(response.errors), now)
        self._move(LinkInput.AUTH_SUCCEEDED)
        self._next_heartbeat = now + HEARTBEAT_PERIOD
        return Authenticated(now)

    def _dispatch(self, frame: str | bytes, now: datetime) -> LinkEvent:
        inbound = parse_inbound(frame)
        if isinstance(inbound, FrameError):
            self.counters.frames_invalid += 1
            return InvalidFrame(inbound.reason, inbound.detail, inbound.message_type, now)
        if isinstance(inbound, UnknownType):
            self.counters.frames_invalid += 1
            return UnknownMessage(inbound.message_type, now)
        if isinstance(inbound, Response):
            return ResponseReceived(inbound, now)
        if isinstance(inbound, V2JobRequest):
            error = verify_v2_request(inbound, self._signers)
            if error is not None:
                self.counters.v2_rejected += 1
                return V2JobRejected(inbound, error, now)
        self.counters.jobs_requested += 1
        return JobRequested(inbound, now)

    # ------------------------------------------------------------------------------- outbound

    def due_heartbeat(self, now: datetime) -> str | None:
        """A heartbeat frame if one is due at `now`, else None. The next one is then due a full
        period later (a late tick never causes a burst)."""
        if not self.authenticated or self._next_heartbeat is None or now < self._next_heartbeat:
            return None
        self._next_heartbeat = now + HEARTBEAT_PERIOD
        return self._out(V0Heartbeat())

    def _refused(self, message_type: str) -> SendRefused:
        self.counters.sends_refused += 1
        return SendRefused(message_type, self._state)

    def status_update(
        self,
        job_uuid: str,
        status: JobStatus,
        *,
        comment: str,
        miner_response: MinerResponse | None,
    ) -> str | SendRefused:
        """A `V0JobStatusUpdate` frame, or a refusal when the connection is not authenticated."""
        if not self.authenticated:
            return self._refused("V0JobStatusUpdate")
        metadata = JobStatusMetadata(comment=comment, miner_response=miner_response)
        return self._out(V0JobStatusUpdate(uuid=job_uuid, status=status, metadata=metadata))

    def machine_specs_update(
        self, *, miner_hotkey: str, validator_hotkey: str, specs: dict[str, Any], batch_id: str
    ) -> str | SendRefused:
        """A `V0MachineSpecsUpdate` frame, or a refusal when the connection is not authenticated."""
        if not self.authenticated:
            return self._refused("V0MachineSpecsUpdate")
        return self._out(
            V0MachineSpecsUpdate(
                miner_hotkey=miner_hotkey, validator_hotkey=validator_hotkey, specs=specs, batch_id=batch_id
            )
        )
