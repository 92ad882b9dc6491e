"""One validator's WebSocket connection to a simulated miner: authentication, the pre-auth queue,
message dispatch.

Order on a connection, as on the real miner:

1. an unknown validator gets `GenericError "Unknown validator: {hotkey}"` and a close with code 1000;
2. the connection joins the validator's unfinished jobs at once (reconnect mode `real`, see
   `ReconnectMode`): their messages may be pushed before any authentication;
3. messages that arrive before authentication are queued; an invalid frame is answered with
   `GenericError "Malformed message: ..."` and the connection stays open;
4. `V0AuthenticateRequest` is checked in the original's order (age, miner hotkey, validator hotkey,
   signature); a failure sends `"Validator {hotkey} not authenticated due to: {reason}"` and closes;
5. on success: the manifest first, then the queued messages, then the undelivered outcomes of this
   validator's older jobs, then `V0ExecutorReadyRequest` for older jobs still waiting for a payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from horde_common.protocol.miner import (
    GenericError,
    ProtocolError,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobRequest,
    dumps,
    parse_validator_message,
)

from .behaviours import Behaviour
from .jobs import MinerJob


class MinerHost(Protocol):
    """What a connection needs of its miner (`miner.SimulatedMiner` is one). Declared here so this
    module never imports the miner module, which imports it."""

    index: int
    received: list[tuple[str, str]]

    @property
    def behaviour(self) -> Behaviour: ...

    def is_known(self, validator_hotkey: str) -> bool: ...

    def check_auth(self, msg: V0AuthenticateRequest, url_hotkey: str) -> str | None: ...

    def manifest(self) -> V0ExecutorManifestRequest: ...

    def register(self, conn: ValidatorConnection) -> None: ...

    def on_opened(self, conn: ValidatorConnection) -> None: ...

    async def on_authenticated(self, conn: ValidatorConnection) -> None: ...

    def on_initial_job_request(self, conn: ValidatorConnection, msg: V0InitialJobRequest) -> None: ...

    async def on_job_request(self, conn: ValidatorConnection, msg: V0JobRequest) -> None: ...

    def on_accepted_receipt(self, conn: ValidatorConnection, msg: V0JobAcceptedReceiptRequest) -> None: ...

    def on_finished_receipt(self, conn: ValidatorConnection, msg: V0JobFinishedReceiptRequest) -> None: ...


logger = logging.getLogger(__name__)


def garbage_frames(job_uuid: str | None) -> Iterable[str | bytes]:
    """What behaviour `garbage` sends around real messages: every kind of invalid frame."""
    yield "this is not json"
    yield '{"message_type": "V0NoSuchMessage", "job_uuid": "x"}'
    yield '{"message_type": "V0AcceptJobRequest"}'
    yield b"\x00\xff\xfe garbage"
    yield "[1, 2, 3]"
    if job_uuid is not None:
        yield json.dumps({"message_type": "V0JobFinishedRequest", "job_uuid": job_uuid})  # no stdout
    yield '{"message_type": "V0AcceptJobRequest", "job_uuid": "00000000-0000-4000-8000-000000000000"}'


class ValidatorConnection:
    """One validator connection; `serial` is the miner's connection count when it opened (1, 2, ...)."""

    def __init__(self, miner: MinerHost, ws: ServerConnection, validator: str, serial: int) -> None:
        self.miner = miner
        self.ws = ws
        self.validator = validator
        self.serial = serial
        self.authenticated = False
        # Reconnect mode `real`: jobs joined at open that were waiting for their payload; their
        # ready is re-announced only after authentication.
        self.deferred_ready: list[MinerJob] = []
        self._queue: list[Any] = []
        self._send_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<ValidatorConnection #{self.serial} {self.validator} auth={self.authenticated}>"

    @property
    def is_open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    async def send(self, message: Any) -> bool:
        """Send one message; False when the connection is gone (the message is then not delivered)."""
        return await self._send_raw(dumps(message))

    async def _send_raw(self, frame: str | bytes) -> bool:
        try:
            async with self._send_lock:
                await self.ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def send_garbage(self, job_uuid: str | None) -> None:
        for frame in garbage_frames(job_uuid):
            await self._send_raw(frame)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (behaviour `disconnect`)."""
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code)

    async def run(self) -> None:
        miner = self.miner
        if not miner.is_known(self.validator):
            await self.send(GenericError(details=f"Unknown validator: {self.validator}"))
            await self.close(1000)
            return
        miner.on_opened(self)
        try:
            async for frame in self.ws:
                try:
                    msg = parse_validator_message(frame)
                except ProtocolError as exc:
                    await self.send(GenericError(details=f"Malformed message: {exc.text}"))
                    continue
                miner.received.append((self.validator, msg.message_type))
                if isinstance(msg, V0AuthenticateRequest):
                    if not await self._authenticate(msg):
                        return
                elif not self.authenticated:
                    self._queue.append(msg)
                else:
                    await self._dispatch(msg)
        except ConnectionClosed:
            pass

    async def _authenticate(self, msg: V0AuthenticateRequest) -> bool:
        reason = self.miner.check_auth(msg, self.validator)
        if reason is not None:
            await self.send(
                GenericError(details=f"Validator {self.validator} not authenticated due to: {reason}")
            )
            await self.close(1000)
            return False
        self.authenticated = True
        await self.send(self.miner.manifest())
        self.miner.register(self)
        if self.miner.behaviour is Behaviour.GARBAGE:
            await self.send_garbage(None)
        queued, self._queue = self._queue, []
        for queued_msg in queued:
            await self._dispatch(queued_msg)
        await self.miner.on_authenticated(self)
        return True

    async def _dispatch(self, msg: Any) -> None:
        miner = self.miner
        if isinstance(msg, V0InitialJobRequest):
            miner.on_initial_job_request(self, msg)
        elif isinstance(msg, V0JobRequest):
            await miner.on_job_request(self, msg)
        elif isinstance(msg, V0JobAcceptedReceiptRequest):
            miner.on_accepted_receipt(self, msg)
        elif isinstance(msg, V0JobFinishedReceiptRequest):
            miner.on_finished_receipt(self, msg)
        elif isinstance(msg, GenericError):
            logger.info("miner %d: GenericError from %s: %s", miner.index, self.validator, msg.details)
        else:  # V0MachineSpecsRequest from a validator: never sent by the original, ignored
            logger.debug("miner %d: ignoring %s", miner.index, msg.message_type)
