"""Early connects for the debug command: dial and authenticate while the database is prepared.

`run_shard` opens its links only after its database stage (batch uuid, previous counts), and the
debug command must first create the batch row; done in that order the miners would wait for all of
it. `EarlyDial` opens each miner's WebSocket and sends the authentication at once, so that the
miner's manifest is already buffered when the shard's link starts reading. It hands each connection
to the shard through its transport factory (`EarlyTransport`, a `WebSocketTransport` whose first
connect takes the early connection instead of dialling), so `run_shard` itself is unchanged.

On the wire nothing differs from a normal connect: one connection per miner, whose first frame is
one `V0AuthenticateRequest` signed with the validator key (built by the same `MinerSession` code; its
timestamp is only earlier, by the database preparation). The link's session is still told that it
connected (its own hello is built, and not sent: the miner is authenticated already). An early
connect that failed is simply not used: the link then connects on its own, with the usual retries,
and records the failure as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from horde_job_runner.synthetic.transport import (
    MinerTransport,
    TransportSettings,
    WebSocketTransport,
    miner_url,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from horde_common.bus.messages import MinerEndpoint

__all__ = ["EarlyDial", "EarlyTransport"]

# Closing an early connection nobody used: the close handshake normally takes a round trip; a
# miner that does not answer it must not hold the command up longer than this.
CLOSE_WAIT_S = 1.0


def _hello_frames(keypair: Any, miners: Sequence[MinerEndpoint]) -> dict[str, str]:
    """The authentication frame of each miner's URL (imports the protocol: run in a thread)."""
    from horde_common.crypto import sign
    from horde_common.protocol.miner.parsing import dumps
    from horde_common.protocol.miner.session import MinerSession

    now = datetime.now(UTC)
    frames: dict[str, str] = {}
    for m in miners:
        session = MinerSession(
            validator_hotkey=keypair.ss58_address,
            sign=lambda blob: sign(keypair, blob),
            miner_hotkey=m.hotkey,
            miner_address=m.address,
            miner_port=m.port,
        )
        frames[session.url()] = dumps(session.authenticate_request(now))
    return frames


class EarlyDial:
    """One early, authenticated connection per miner URL, each taken at most once (`take`)."""

    def __init__(
        self, keypair: Any, miners: Sequence[MinerEndpoint], settings: TransportSettings | None = None
    ) -> None:
        self.keypair = keypair
        self.miners = list({miner_url(m.address, m.port, keypair.ss58_address): m for m in miners}.values())
        self.settings = settings or TransportSettings()
        self._dials: dict[str, asyncio.Task[ClientConnection | None]] = {}
        self._hellos: asyncio.Task[dict[str, str]] | None = None
        self.first_connected_mono: float | None = None

    def start(self) -> None:
        """Start dialling every miner (must be called on the running loop)."""
        if self._dials:
            return
        # Built in a thread: the protocol's pydantic models take a while to import, and the
        # loop meanwhile sends the WebSocket handshakes.
        self._hellos = asyncio.ensure_future(asyncio.to_thread(_hello_frames, self.keypair, self.miners))
        for m in self.miners:
            url = miner_url(m.address, m.port, self.keypair.ss58_address)
            self._dials[url] = asyncio.ensure_future(self._dial(url))

    async def _dial(self, url: str) -> ClientConnection | None:
        """One connect attempt and the authentication; None when anything failed (the link retries)."""
        assert self._hellos is not None
        transport = WebSocketTransport(url, settings=self.settings)
        try:
            ws = await transport._open_once()  # one attempt: retries are the link's business
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._hellos)  # never leave the thread's result unretrieved
            return None
        if self.first_connected_mono is None:
            self.first_connected_mono = time.monotonic()
        try:
            # Shielded: one dial cancelled must not cancel the frames the others wait for.
            hello = (await asyncio.shield(self._hellos)).get(url)
            if hello is None:
                raise LookupError(url)
        except Exception:
            await _close(ws)
            return None
        # A miner that rejects us may have closed already: what it said is buffered, the link's
        # reader gets it first (as after a normal connect).
        with contextlib.suppress(Exception):
            await ws.send(hello)
        return ws

    async def take(self, url: str) -> ClientConnection | None:
        """The early connection to `url` (waiting for its dial), or None: none, failed, or taken."""
        task = self._dials.pop(url, None)
        if task is None:
            return None
        try:
            return await task
        except Exception:
            return None

    def transport_factory(self, url: str, **kwargs: Any) -> MinerTransport:
        """A `TransportFactory` for `BatchDeps`: transports that start on the early connection."""
        return EarlyTransport(url, early=self, **kwargs)

    async def close(self) -> None:
        """Close every early connection nobody took (the batch ended before using it)."""
        dials, self._dials = list(self._dials.values()), {}
        for task in dials:
            task.cancel()
        for task in dials:
            with contextlib.suppress(BaseException):
                ws = await task
                if ws is not None:
                    await _close(ws)
        if self._hellos is not None:
            with contextlib.suppress(BaseException):
                await self._hellos


async def _close(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), CLOSE_WAIT_S)


class EarlyTransport(WebSocketTransport):
    """A `WebSocketTransport` whose first connection is the early one, when there is one."""

    def __init__(self, url: str, *, early: EarlyDial, hello: Callable[[], Any] | None = None, **kwargs: Any):
        super().__init__(url, hello=hello, **kwargs)
        self._early: EarlyDial | None = early

    async def _open_with_retries(self) -> ClientConnection:
        early, self._early = self._early, None
        if early is not None:
            ws = await early.take(self.url)
            if ws is not None:
                self._opened_at = time.monotonic()
                if self._hello is not None:
                    self._hello()  # the session's own bookkeeping; the miner has its hello already
                return ws
        return await super()._open_with_retries()
