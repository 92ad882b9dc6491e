"""`EarlyDial`: the debug command's early connects, against a real WebSocket server on a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import websockets

from horde_common.bus.messages import MinerEndpoint
from horde_common.crypto import keypair_from_seed
from horde_job_runner.synthetic.debug_dial import EarlyDial
from horde_job_runner.synthetic.debug_run import SmallBatchJobFactory
from horde_job_runner.synthetic.generation_pool import GenerationPool
from horde_job_runner.synthetic.transport import miner_url
from horde_localnet import keys

# Every wait of these tests: generous for a loaded 2-core machine, never reached when things work.
WAIT_S = 10.0


@dataclass
class Recorder:
    """What a miner-like server saw: one list of received frames per connection, and closes."""

    connections: list[list[str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    closed: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handler(self, ws: Any) -> None:
        frames: list[str] = []
        async with self.changed:
            self.connections.append(frames)
            self.paths.append(ws.request.path)
            self.changed.notify_all()
        try:
            async for frame in ws:
                async with self.changed:
                    frames.append(frame)
                    self.changed.notify_all()
        finally:
            async with self.changed:
                self.closed += 1
                self.changed.notify_all()

    async def wait(self, predicate: Any) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), WAIT_S)


@asynccontextmanager
async def serving(recorder: Recorder, port: int = 0) -> AsyncIterator[int]:
    async with websockets.serve(recorder.handler, "127.0.0.1", port) as server:
        yield next(iter(server.sockets)).getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _validator() -> Any:
    return keypair_from_seed(keys.validator_seed(0))


def _endpoint(port: int) -> MinerEndpoint:
    return MinerEndpoint(hotkey=keys.miner_keypair(0).ss58_address, uid=0, address="127.0.0.1", port=port)


async def test_the_link_takes_the_early_connection_already_authenticated() -> None:
    recorder = Recorder()
    validator = _validator()
    async with serving(recorder) as port:
        miner = _endpoint(port)
        dial = EarlyDial(validator, [miner])
        dial.start()
        # The miner gets the authentication before anybody asked for a transport.
        await recorder.wait(lambda: recorder.connections and recorder.connections[0])
        auth = json.loads(recorder.connections[0][0])
        assert auth["message_type"] == "V0AuthenticateRequest", auth
        assert auth["payload"]["validator_hotkey"] == validator.ss58_address
        assert auth["payload"]["miner_hotkey"] == miner.hotkey
        assert recorder.paths == [f"/v0.1/validator_interface/{validator.ss58_address}"]

        hellos: list[str] = []

        def hello() -> str:
            hellos.append("built")
            return "LINK-HELLO"

        url = miner_url(miner.address, miner.port, validator.ss58_address)
        transport = dial.transport_factory(url, name="m", hello=hello)
        await asyncio.wait_for(transport.connect(), WAIT_S)
        await transport.send("after")
        await recorder.wait(lambda: len(recorder.connections[0]) == 2)
        # One connection, one authentication: the link's own hello is built (its session's
        # bookkeeping) but not sent a second time.
        assert len(recorder.connections) == 1
        assert recorder.connections[0][1] == "after"
        assert hellos == ["built"]
        await transport.close()
        await dial.close()
        await recorder.wait(lambda: recorder.closed == 1)


async def test_a_failed_early_dial_leaves_the_link_to_connect_on_its_own() -> None:
    recorder = Recorder()
    port = _free_port()  # nobody listens yet: the early connect is refused
    validator = _validator()
    miner = _endpoint(port)
    dial = EarlyDial(validator, [miner])
    dial.start()
    url = miner_url(miner.address, miner.port, validator.ss58_address)
    assert await asyncio.wait_for(dial.take(url), WAIT_S) is None
    dial.start()  # a second start dials nothing again
    async with serving(recorder, port):
        transport = EarlyDial(validator, [miner]).transport_factory(url, name="m", hello=lambda: "LINK-HELLO")
        await asyncio.wait_for(transport.connect(), WAIT_S)
        await recorder.wait(lambda: recorder.connections and recorder.connections[0])
        assert recorder.connections == [["LINK-HELLO"]]
        await transport.close()
    await dial.close()


async def test_close_closes_the_connections_nobody_took() -> None:
    recorder = Recorder()
    validator = _validator()
    async with serving(recorder) as port:
        dial = EarlyDial(validator, [_endpoint(port), _endpoint(port)])  # listed twice: one connection
        dial.start()
        await recorder.wait(lambda: recorder.connections and recorder.connections[0])
        await dial.close()
        await recorder.wait(lambda: recorder.closed == 1)
        assert len(recorder.connections) == 1


async def test_a_few_jobs_are_built_without_the_process_pool() -> None:
    pool = GenerationPool()
    try:
        jobs = await SmallBatchJobFactory(pool).generate("5Miner", [("always_on.gpu-24gb", 8)], 1, "localnet")
        assert len(jobs) == 8
        assert pool.worker_pids() == []
    finally:
        await asyncio.to_thread(pool.shutdown)


async def test_jobs_beyond_the_inline_budget_go_to_the_pool() -> None:
    from horde_job_runner.synthetic.debug_run import INLINE_MAX_JOBS

    pool = GenerationPool()
    factory = SmallBatchJobFactory(pool)
    try:
        first = await factory.generate("5A", [("always_on.gpu-24gb", INLINE_MAX_JOBS)], 1, "localnet")
        assert len(first) == INLINE_MAX_JOBS and pool.worker_pids() == []
        more = await factory.generate("5B", [("always_on.gpu-24gb", 1)], 1, "localnet")
        assert len(more) == 1 and pool.worker_pids() != []
    finally:
        await asyncio.to_thread(pool.shutdown)
