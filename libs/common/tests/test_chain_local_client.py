"""LocalChainClient against a tiny real HTTP server that answers garbage, errors, or nothing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from bittensor_core import Keypair

from horde_common.chain import ChainError, LocalChainClient

KEY = Keypair.create_from_uri("//test-chain-client")


def _response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


ROUTES: dict[str, bytes] = {
    "/block": _response(200, b"this is not json"),
    "/blocks/5": _response(500, b"Internal Server Error", "text/plain"),
    "/subnets/12/metagraph": _response(200, json.dumps({"netuid": 12, "block": "soon"}).encode()),
    "/subnets/12/hyperparameters": _response(503, b"<html>busy</html>", "text/html"),
    "/subnets/1/weights": _response(500, b'{"oops": true}'),
    "/subnets/2/weights": _response(
        429, json.dumps({"code": "rate_limited", "message": "retry in 7 blocks"}).encode()
    ),
    "/subnets/3/weights": _response(200, b"[1, 2"),
    "/subnets/4/weights": _response(
        200, json.dumps({"success": True, "message": "ok", "block": 9, "committed": True}).encode()
    ),
    "/subnets/5/metagraph": _response(
        404, json.dumps({"code": "subnet_not_exists", "message": "subnet 5 does not exist"}).encode()
    ),
}


class GarbageServer:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.hang = False
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1].split("?")[0]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if length:
                self.bodies.append(await reader.readexactly(length))
            if self.hang:
                await asyncio.Event().wait()
            writer.write(ROUTES.get(path, _response(404, b"nope", "text/plain")))
            await writer.drain()
        finally:
            writer.close()
            self.handlers.discard(task)


@pytest.fixture
async def garbage_url() -> AsyncIterator[tuple[str, GarbageServer]]:
    state = GarbageServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.close()
        for task in list(state.handlers):
            task.cancel()
        await asyncio.gather(*state.handlers, return_exceptions=True)


async def test_garbage_json_is_chain_error(garbage_url: tuple[str, GarbageServer]) -> None:
    async with LocalChainClient(garbage_url[0], timeout=5) as client:
        with pytest.raises(ChainError, match="malformed answer to GET /block"):
            await client.current_block()
        with pytest.raises(ChainError, match="malformed answer"):
            await client.metagraph(12)


async def test_http_errors_are_chain_errors(garbage_url: tuple[str, GarbageServer]) -> None:
    async with LocalChainClient(garbage_url[0], timeout=5) as client:
        with pytest.raises(ChainError, match="HTTP 500") as exc:
            await client.block_hash(5)
        assert "Traceback" not in str(exc.value)
        with pytest.raises(ChainError, match="HTTP 503"):
            await client.weights_rate_limit(12)
        with pytest.raises(ChainError, match="subnet 5 does not exist"):
            await client.metagraph(5)


async def test_set_weights_errors(garbage_url: tuple[str, GarbageServer]) -> None:
    url, state = garbage_url
    async with LocalChainClient(url, timeout=5) as client:
        with pytest.raises(ChainError, match="HTTP 500"):
            await client.set_weights(1, [0, 1], [0.5, 1.0], 2, KEY)
        with pytest.raises(ChainError, match="malformed"):
            await client.set_weights(3, [0, 1], [0.5, 1.0], 2, KEY)
        refused = await client.set_weights(2, [0, 1], [0.5, 1.0], 2, KEY)
        assert not refused.success
        assert refused.code == "rate_limited"
        assert refused.message == "retry in 7 blocks"
        ok = await client.set_weights(4, [0, 1], [0.5, 1.0], 2, KEY)
        assert ok.success and ok.committed and ok.block == 9
    sent = json.loads(state.bodies[-1])
    assert sent["hotkey"] == KEY.ss58_address
    assert sent["uids"] == [0, 1]
    assert sent["weights"] == [32768, 65535]
    assert sent["version_key"] == 2
    assert sent["signature"].startswith("0x")


async def test_invalid_weights_are_refused_locally(garbage_url: tuple[str, GarbageServer]) -> None:
    async with LocalChainClient(garbage_url[0], timeout=5) as client:
        result = await client.set_weights(4, [0, 1], [1.0], 2, KEY)
        assert not result.success and result.code == "invalid_argument"
        with pytest.raises(TypeError, match="expected a keypair"):
            await client.set_weights(4, [0], [1.0], 2, object())


async def test_timeout_is_chain_error(garbage_url: tuple[str, GarbageServer]) -> None:
    url, state = garbage_url
    state.hang = True
    async with LocalChainClient(url, timeout=0.3) as client:
        with pytest.raises(ChainError, match=r"no answer to GET /block within 0\.3s"):
            await client.current_block()


async def test_unreachable_is_chain_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with LocalChainClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(ChainError, match="unreachable"):
            await client.current_block()
