"""Fixtures of the gateway's tests. `facilitator`: a minimal facilitator: a real WebSocket server speaking the
`horde_common.protocol.facilitator` models (docs/organic.md §1.3–§1.4).

It verifies the authentication frame, answers it (or refuses it while `accept_auth` is False),
records every later frame per connection, and lets the test push frames to, or drop, the current
connection. Waits are bounded polls on these records (`facilitator.eventually`). `sessions`: a
session factory on the migrated test database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from horde_common.db import create_engine, session_factory
from horde_common.protocol.facilitator import ErrorDetail, Response, V0AuthenticationRequest

WAIT_S = 10.0
"""Every condition here is met in milliseconds when the code works; this only bounds a failure."""
POLL_S = 0.02


async def eventually(
    condition: Callable[[], bool], within_s: float = WAIT_S, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail the test after `within_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


@dataclass
class Connection:
    ws: ServerConnection
    headers: Any  # websockets' Headers: case-insensitive, as HTTP headers are
    auth: V0AuthenticationRequest | None = None
    auth_valid: bool = False
    authenticated: bool = False
    frames: list[dict[str, Any]] = field(default_factory=list)  # after authentication, in order
    closed: bool = False


class FakeFacilitator:
    def __init__(self) -> None:
        self.accept_auth = True
        self.connections: list[Connection] = []
        self._server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeFacilitator:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), WAIT_S)

    eventually = staticmethod(eventually)

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v0/"

    @property
    def authenticated(self) -> list[Connection]:
        return [c for c in self.connections if c.authenticated]

    @property
    def current(self) -> Connection:
        """The latest authenticated connection that is still open."""
        open_ = [c for c in self.authenticated if not c.closed]
        assert open_, "no open authenticated connection"
        return open_[-1]

    def frames(self, message_type: str) -> list[dict[str, Any]]:
        """Frames of this type over all connections, in order."""
        return [f for c in self.connections for f in c.frames if f.get("message_type") == message_type]

    async def send(self, frame: str | dict[str, Any]) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.current.ws.send(text)

    async def drop(self) -> None:
        """Close the current connection from the facilitator's side."""
        conn = self.current
        await conn.ws.close(code=1011, reason="test drops the link")

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws, ws.request.headers if ws.request else {})
        self.connections.append(conn)
        try:
            conn.auth = V0AuthenticationRequest.model_validate_json(await ws.recv())
            conn.auth_valid = conn.auth.verify_signature()
            if not (self.accept_auth and conn.auth_valid):
                error = ErrorDetail(msg="validator not allowed", type="auth.validator_not_found")
                await ws.send(Response(status="error", errors=[error]).model_dump_json())
                return
            await ws.send(Response(status="success").model_dump_json())
            conn.authenticated = True
            async for frame in ws:
                conn.frames.append(json.loads(frame))
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True


@pytest.fixture()
async def facilitator() -> AsyncIterator[FakeFacilitator]:
    async with FakeFacilitator() as fake:
        yield fake


@pytest.fixture()
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()
