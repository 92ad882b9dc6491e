"""The miner WebSocket transport (docs/miner-protocol.md §1.2–§1.4) over real sockets, with the retry sleeps
injected."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from websockets.asyncio.server import ServerConnection, serve

from horde_common.crypto import verify
from horde_common.protocol.miner.parsing import dumps
from horde_common.protocol.miner.session import MinerSession
from horde_job_runner.synthetic.transport import (
    MinerConnectionError,
    TransportSettings,
    WebSocketTransport,
    backoff_delay,
    miner_url,
)
from horde_localnet import keys

pytestmark = pytest.mark.timeout(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """A WebSocket server that records every connection's path, headers and frames."""

    def __init__(self, *, drop_after: int | None = None, drop_connections: int = 0) -> None:
        self.connections: list[dict[str, object]] = []
        self.frames: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.drop_after = drop_after
        self.drop_connections = drop_connections
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        assert ws.request is not None
        record: dict[str, object] = {
            "path": ws.request.path,
            "headers": dict(ws.request.headers),
            "frames": [],
        }
        self.connections.append(record)
        frames: list[str] = record["frames"]  # type: ignore[assignment]
        async for frame in ws:
            text = frame if isinstance(frame, str) else frame.decode()
            frames.append(text)
            await self.frames.put((index, text))
            if (
                self.drop_after is not None
                and index < self.drop_connections
                and len(frames) >= self.drop_after
            ):
                ws.transport.abort()  # a TCP drop, no closing handshake
                return


@pytest.fixture
async def recorder_factory() -> AsyncIterator[object]:
    servers = []

    async def start(rec: Recorder, port: int = 0) -> Recorder:
        server = await serve(rec.handler, "127.0.0.1", port)
        servers.append(server)
        rec.port = next(iter(server.sockets)).getsockname()[1]
        return rec

    yield start
    for server in servers:
        server.close(close_connections=True)
        await server.wait_closed()


class Sleeps:
    """An injected `sleep`: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def test_miner_url_and_ipv6_brackets() -> None:
    assert miner_url("1.2.3.4", 8000, "5Vali") == "ws://1.2.3.4:8000/v0.1/validator_interface/5Vali"
    assert miner_url("::1", 8000, "5Vali") == "ws://[::1]:8000/v0.1/validator_interface/5Vali"


def test_backoff_is_two_to_the_n_plus_jitter() -> None:
    assert [backoff_delay(n, lambda: 0.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert [backoff_delay(n, lambda: 0.999) for n in (1, 2)] == [2.999, 4.999]


async def test_connect_gives_up_after_four_attempts_with_backoff() -> None:
    sleeps = Sleeps()
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{free_port()}/v0.1/validator_interface/x", sleep=sleeps, rng=lambda: 0.5
    )
    with pytest.raises(MinerConnectionError, match="after 4 attempts"):
        await transport.connect()
    assert transport.connect_failures == 4
    assert sleeps.delays == [2.5, 4.5, 8.5]  # 2^n + U(0,1) between the attempts


async def test_connect_succeeds_when_the_miner_comes_up(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    rec = Recorder()

    class StartOnSecondSleep(Sleeps):
        async def __call__(self, delay: float) -> None:
            await super().__call__(delay)
            if len(self.delays) == 2:
                await recorder_factory(rec, port)

    sleeps = StartOnSecondSleep()
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{port}/v0.1/validator_interface/x", hello=lambda: "hello", sleep=sleeps
    )
    await transport.connect()
    assert transport.connect_failures == 2
    assert await asyncio.wait_for(rec.frames.get(), 5) == (0, "hello")
    await transport.close()


async def test_first_frame_is_a_signed_authentication(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    """docs/miner-protocol.md §1.2 and §1.6: the URL carries our hotkey and the first frame is a verifiable V0AuthenticateRequest."""
    rec = await recorder_factory(Recorder())
    validator = keys.validator_keypair(0)
    miner_hotkey = keys.miner_keypair(0).ss58_address
    session = MinerSession.with_keypair(
        validator, miner_hotkey=miner_hotkey, miner_address="127.0.0.1", miner_port=rec.port
    )
    transport = WebSocketTransport(
        session.url(), hello=lambda: dumps(session.connected(datetime.now(UTC))[0]), sleep=Sleeps()
    )
    await transport.connect()
    _, first = await asyncio.wait_for(rec.frames.get(), 5)
    await transport.close()

    assert rec.connections[0]["path"] == f"/v0.1/validator_interface/{validator.ss58_address}"
    message = json.loads(first)
    assert message["message_type"] == "V0AuthenticateRequest"
    payload = message["payload"]
    assert payload["validator_hotkey"] == validator.ss58_address
    assert payload["miner_hotkey"] == miner_hotkey
    assert abs(payload["timestamp"] - datetime.now(UTC).timestamp()) < 10
    assert message["signature"].startswith("0x")
    blob = json.dumps(payload, sort_keys=True)
    assert verify(validator.ss58_address, blob, message["signature"])
    headers = {k.lower(): v for k, v in rec.connections[0]["headers"].items()}  # type: ignore[union-attr]
    assert "permessage-deflate" not in headers.get("sec-websocket-extensions", "")


async def test_reconnects_and_reauthenticates_after_a_drop(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    """Fixes quirk B.1: the hello (authentication) is the first frame of every connection."""
    rec = await recorder_factory(Recorder(drop_after=2, drop_connections=1))
    hellos = iter(range(100))
    reconnected: list[bool] = []
    errors: list[str] = []
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{rec.port}/v0.1/validator_interface/x",
        hello=lambda: f"hello-{next(hellos)}",
        on_reconnect=lambda: reconnected.append(True),
        on_error=lambda func, exc: errors.append(func),
        sleep=Sleeps(),
    )
    await transport.connect()
    await transport.send("one")  # the server drops the connection after this (2nd) frame
    seen = [await asyncio.wait_for(rec.frames.get(), 5) for _ in range(2)]
    assert seen == [(0, "hello-0"), (0, "one")]
    # The reader finds the connection gone, reconnects and re-authenticates.
    reader = asyncio.ensure_future(transport.recv())
    assert await asyncio.wait_for(rec.frames.get(), 5) == (1, "hello-1")
    await transport.send("two")
    assert await asyncio.wait_for(rec.frames.get(), 5) == (1, "two")
    assert transport.reconnects == 1
    assert reconnected == [True]
    assert "recv" in errors or "send" in errors
    reader.cancel()
    await transport.close()


async def test_send_on_a_dropped_link_reconnects_then_delivers(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    rec = await recorder_factory(Recorder(drop_after=1, drop_connections=1))
    errors: list[str] = []
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{rec.port}/v0.1/validator_interface/x",
        hello=lambda: "hello",
        on_error=lambda func, exc: errors.append(func),
        sleep=Sleeps(),
        settings=TransportSettings(short_lived=0.0),
    )
    await transport.connect()
    assert await asyncio.wait_for(rec.frames.get(), 5) == (0, "hello")
    # Wait until the client side has seen the abort, then send: the send must reconnect. White-box
    # (the transport shows no link state); a link that never closes fails here, not silently later.
    link = transport._ws
    assert link is not None
    await asyncio.wait_for(link.wait_closed(), 5)
    await transport.send("payload")
    frames = [await asyncio.wait_for(rec.frames.get(), 5) for _ in range(2)]
    assert frames == [(1, "hello"), (1, "payload")]
    assert errors == ["send"]
    await transport.close()


async def test_closed_transport_refuses_io(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    rec = await recorder_factory(Recorder())
    transport = WebSocketTransport(f"ws://127.0.0.1:{rec.port}/v0.1/validator_interface/x", sleep=Sleeps())
    await transport.connect()
    reader = asyncio.ensure_future(transport.recv())
    await asyncio.sleep(0)
    await transport.close()
    with pytest.raises(MinerConnectionError):
        await asyncio.wait_for(reader, 5)
    with pytest.raises(MinerConnectionError):
        await transport.send("x")


async def test_rejecting_miner_is_not_hammered(recorder_factory) -> None:  # type: ignore[no-untyped-def]
    """A miner that closes right after our hello (failed auth) gets backoff before each reconnect."""

    rec = await recorder_factory(Recorder(drop_after=1, drop_connections=3))
    sleeps = Sleeps()
    transport = WebSocketTransport(
        f"ws://127.0.0.1:{rec.port}/v0.1/validator_interface/x",
        hello=lambda: "hello",
        sleep=sleeps,
        rng=lambda: 0.0,
    )
    await transport.connect()
    reader = asyncio.ensure_future(transport.recv())
    for i in range(4):
        assert await asyncio.wait_for(rec.frames.get(), 5) == (i, "hello")
    assert sleeps.delays[:3] == [2.0, 4.0, 8.0]
    reader.cancel()
    await transport.close()
