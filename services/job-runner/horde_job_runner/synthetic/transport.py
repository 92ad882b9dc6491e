"""The WebSocket link to one miner: a thin I/O adapter under the sans-I/O `MinerSession`
(docs/miner-protocol.md §1.2–§1.4).

The transport only moves frames. It knows nothing about jobs; what it does on its own is:

* connect to `ws://{ip}:{port}/v0.1/validator_interface/{validator_hotkey}` with the reference's
  parameters (50 MiB frames, ping every 20 s, close after 120 s without a pong), trying at most
  `connect_attempts` times and sleeping `2^n + U(0, 1)` s after the n-th failure;
* send the `hello` frame (the `V0AuthenticateRequest`, built fresh each time so its timestamp is
  current) as the first frame of **every** connection, the first one and each reconnect. The
  reference did not re-authenticate after a reconnect (docs/miner-protocol.md Appendix B quirk 1), so a
  miner that dropped once never answered again; we fix that, and the miner re-delivers undelivered results;
* reconnect when a send or a receive finds the connection dropped, then retry the send or resume
  reading. A send that keeps failing is retried (1–2 s apart) until the caller's own stage timeout
  cancels it, like the reference; each failure is reported through `on_error`.

Compression: the reference offered permessage-deflate and spent ~1.4 ms of CPU per 62 KB job request
on it (docs/performance.md); the payloads are base64 of random data and barely compress, so
we do not offer it (`compression=None`; an extension is negotiated, the miner accepts either).

Everything that waits goes through an injectable `sleep` and `rng`, so tests run the retry policy
without real sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = [
    "MinerConnectionError",
    "MinerTransport",
    "Sleep",
    "TransportFactory",
    "TransportSettings",
    "WebSocketTransport",
    "backoff_delay",
    "miner_url",
]

Data = str | bytes
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """WebSocket parameters (docs/miner-protocol.md §1.3) and the connect/retry policy (§1.4)."""

    max_size: int = 50 * 2**20
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 120.0
    open_timeout: float = 10.0
    close_timeout: float = 10.0
    connect_attempts: int = 4
    # None: do not offer permessage-deflate (see the module docstring); "deflate" offers it.
    compression: str | None = None
    # Sleep between two failed sends of the same frame: U(low, high).
    send_retry_sleep: tuple[float, float] = (1.0, 2.0)
    # Kernel-buffer friendly write limit: job requests are sent in a burst, let them queue.
    write_limit: int = 2**20
    # A connection that dropped sooner than this after opening (e.g. the miner rejects our
    # authentication and closes) is followed by a backoff sleep before reconnecting, so that a
    # rejecting miner is not hammered with connect/authenticate loops.
    short_lived: float = 1.0


class MinerConnectionError(ConnectionError):
    """Every connect attempt failed (or the transport was closed): the miner is unreachable."""


class MinerTransport(Protocol):
    """What the batch needs from a link to one miner (the WebSocket one, or a fake in tests)."""

    name: str
    reconnects: int

    async def connect(self) -> None: ...

    async def send(self, frame: Data) -> None: ...

    async def recv(self) -> Data: ...

    async def close(self) -> None: ...

    def prebuild(self, frame: str | bytes) -> bytes | None: ...

    def write_prebuilt(self, wire: bytes) -> bool: ...


TransportFactory = Callable[..., MinerTransport]
"""`factory(url, *, name, hello, on_reconnect, on_error, settings, sleep, rng) -> MinerTransport`."""


def miner_url(address: str, port: int, validator_hotkey: str) -> str:
    """The miner's validator-interface URL (docs/miner-protocol.md §1.2). IPv6 addresses get brackets (fixes
    quirk 9)."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"ws://{host}:{port}/v0.1/validator_interface/{validator_hotkey}"


def backoff_delay(failure_number: int, rng: Callable[[], float] = random.random) -> float:
    """Sleep after the n-th failed connect (n = 1, 2, ...): `2^n + U(0, 1)` seconds."""
    return float(2**failure_number) + rng()


# Errors that mean "this connection is unusable": reconnect (or count as a failed attempt).
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionClosed,
    InvalidHandshake,
    WebSocketException,
    OSError,
    TimeoutError,
    EOFError,
)


class WebSocketTransport:
    """One miner's WebSocket, reconnecting (and re-authenticating) on demand.

    * `hello()` returns the frame to send first on every new connection (the authentication).
    * `on_reconnect()` is called after a *re*connect, before `hello` is sent, so the session can
      reset its per-connection state (e.g. expect a manifest again).
    * `on_error(func, exc)` is called for each failed send (`func="send"`) and each dropped
      connection found while reading (`func="recv"`): the caller records `MINER_SEND_ERROR` events.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "",
        hello: Callable[[], Data] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        settings: TransportSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self.name = name or url
        self.settings = settings or TransportSettings()
        self._hello = hello
        self._on_reconnect = on_reconnect
        self._on_error = on_error
        self._sleep = sleep
        self._rng = rng
        self._ws: ClientConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._ever_connected = False
        self.reconnects = 0
        self.connect_failures = 0
        self._opened_at = 0.0
        self._short_drops = 0

    # --- connection management ------------------------------------------------------------------

    async def _open_once(self) -> ClientConnection:
        s = self.settings
        return await connect(
            self.url,
            max_size=s.max_size,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            open_timeout=s.open_timeout,
            close_timeout=s.close_timeout,
            compression=s.compression,
            write_limit=s.write_limit,
            max_queue=None,  # the reader drains continuously; never stop reading the socket
            proxy=None,
        )

    async def _open_with_retries(self) -> ClientConnection:
        attempts = max(1, self.settings.connect_attempts)
        last: BaseException | None = None
        for n in range(1, attempts + 1):
            if self._closed:
                break
            try:
                ws = await self._open_once()
            except InvalidURI as exc:
                raise MinerConnectionError(f"{self.name}: invalid URL: {exc}") from exc
            except _LINK_ERRORS as exc:
                last = exc
                self.connect_failures += 1
                if n < attempts:
                    await self._sleep(backoff_delay(n, self._rng))
                continue
            self._opened_at = time.monotonic()
            if self._hello is not None:
                # If the miner already closed (e.g. "Unknown validator", then close), the send fails
                # but what it said before closing is still buffered: return the connection anyway,
                # the reader gets those frames first and then finds the link closed.
                with contextlib.suppress(*_LINK_ERRORS):
                    await ws.send(self._hello())
            return ws
        if self._closed:
            raise MinerConnectionError(f"{self.name}: transport closed")
        raise MinerConnectionError(
            f"{self.name}: could not connect after {attempts} attempts: {type(last).__name__}: {last}"
        ) from last

    async def connect(self) -> None:
        """Open the first connection (sending `hello`); raises `MinerConnectionError` when it gives up."""
        async with self._lock:
            if self._ws is None:
                self._ws = await self._open_with_retries()
                self._ever_connected = True

    async def _reconnect(self, failed: ClientConnection | None) -> ClientConnection:
        """Replace `failed` by a fresh, re-authenticated connection (unless someone already did)."""
        async with self._lock:
            if self._closed:
                raise MinerConnectionError(f"{self.name}: transport closed")
            if self._ws is not None and self._ws is not failed:
                return self._ws
            if failed is not None:
                await _abort(failed)
                if time.monotonic() - self._opened_at < self.settings.short_lived:
                    self._short_drops += 1
                    await self._sleep(backoff_delay(min(self._short_drops, 4), self._rng))
                else:
                    self._short_drops = 0
            self._ws = None
            if self._ever_connected and self._on_reconnect is not None:
                self._on_reconnect()
            # `hello` is sent inside `_open_with_retries`, before anyone else can use the link.
            ws = await self._open_with_retries()
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._ws = ws
            return ws

    async def _current(self) -> ClientConnection:
        ws = self._ws
        if ws is None:
            ws = await self._reconnect(None)
        return ws

    # --- frames ---------------------------------------------------------------------------------

    async def send(self, frame: Data) -> None:
        """Send one frame (bytes are sent as a text frame: they are UTF-8 JSON).

        Never yields to the event loop unless the socket buffer is full or the link is down, so a
        burst of sends happens back to back.
        """
        while True:
            if self._closed:
                raise MinerConnectionError(f"{self.name}: transport closed")
            ws = self._ws if self._ws is not None else await self._current()
            try:
                if isinstance(frame, bytes):
                    await ws.send(frame, text=True)
                else:
                    await ws.send(frame)
                return
            except _LINK_ERRORS as exc:
                if self._closed:
                    raise MinerConnectionError(f"{self.name}: transport closed") from exc
                if self._on_error is not None:
                    self._on_error("send", exc)
            try:
                await self._reconnect(ws)
            except MinerConnectionError:
                if self._closed:
                    raise
                low, high = self.settings.send_retry_sleep
                await self._sleep(low + (high - low) * self._rng())

    async def recv(self) -> Data:
        """The next frame; reconnects (and re-authenticates) when the link dropped.

        Raises `MinerConnectionError` once reconnecting gave up or the transport was closed.
        """
        while True:
            if self._closed:
                raise MinerConnectionError(f"{self.name}: transport closed")
            ws = self._ws if self._ws is not None else await self._current()
            try:
                return await ws.recv()
            except _LINK_ERRORS as exc:
                if self._closed:
                    raise MinerConnectionError(f"{self.name}: transport closed") from exc
                if self._on_error is not None:
                    self._on_error("recv", exc)
            await self._reconnect(ws)

    # --- pre-built frames (the job-request burst) --------------------------------------------------

    def prebuild(self, frame: str | bytes) -> bytes | None:
        """The complete wire bytes of a text frame (header + masked payload) for the current
        connection, to be written later with `write_prebuilt`; None when that is not possible (no
        connection, or an extension such as permessage-deflate was negotiated: its state is per
        message, so frames cannot be built ahead). The caller then uses `send`.
        """
        ws = self._ws
        if ws is None or self._closed or ws.protocol.extensions:
            return None
        data = frame.encode() if isinstance(frame, str) else frame
        return Frame(Opcode.TEXT, data).serialize(mask=True, extensions=[])

    def write_prebuilt(self, wire: bytes) -> bool:
        """Write pre-built frames (`prebuild`, possibly several concatenated) at once, without
        yielding: one system call, the websockets protocol state untouched (whole frames only).
        False when the connection is not open any more: the caller falls back to `send`.
        """
        ws = self._ws
        if ws is None or self._closed or ws.protocol.state is not State.OPEN or ws.protocol.extensions:
            return False
        transport = ws.transport
        if transport.is_closing():
            return False
        transport.write(wire)
        return True

    async def close(self) -> None:
        """Close for good: pending and later sends/receives raise `MinerConnectionError`."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


async def _abort(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        ws.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 0.1)
