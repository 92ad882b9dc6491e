"""`MinerLink.post`/`post_many` write straight to an open connection, in order, over a real socket.

Receipts used to go through a writer task, one `await send` each; now an idle, open link writes
them at once as pre-built frames (one write for a miner's batch of receipts). What must hold:
the miner gets every frame, whole and in the order posted, also when frames are already queued
(then everything queues behind them), and a frame that cannot go out is reported to its
`on_failure`, never lost silently.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from horde_common.bus.messages import MinerEndpoint
from horde_common.protocol.miner.session import MinerSession
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.model import JobState, SystemClock
from horde_job_runner.synthetic.transport import TransportSettings, WebSocketTransport
from horde_localnet import keys

pytestmark = pytest.mark.timeout(30)
VALIDATOR = keys.validator_keypair(0)
MINER = keys.miner_keypair(0).ss58_address
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Miner:
    """Records every text frame it receives (after the authentication)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        async for frame in ws:
            await self.frames.put(frame if isinstance(frame, str) else frame.decode())

    async def take(self, n: int) -> list[str]:
        return [await asyncio.wait_for(self.frames.get(), WAIT_S) for _ in range(n)]


class Listener:
    def __init__(self) -> None:
        self.failures: list[tuple[str, BaseException]] = []

    def on_manifest(self, link: MinerLink) -> None: ...

    def on_accepted(self, link: MinerLink, job: JobState, at: Any) -> None: ...

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None: ...

    def on_final(self, link: MinerLink, job: JobState) -> None: ...

    def on_miner_event(
        self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]
    ) -> None: ...

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        self.failures.append((where, exc))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Miner, MinerLink]]:
    miner = Miner()
    port = free_port()
    async with serve(miner.handler, "127.0.0.1", port):
        session = MinerSession.with_keypair(
            VALIDATOR, miner_hotkey=MINER, miner_address="127.0.0.1", miner_port=port
        )
        link = MinerLink(
            MinerEndpoint(hotkey=MINER, uid=0, address="127.0.0.1", port=port),
            session,
            clock=SystemClock(),
            listener=Listener(),
            transport_factory=WebSocketTransport,
            transport_settings=TransportSettings(),
            sleep=asyncio.sleep,
            rng=random.random,
        )
        await link.open()
        (auth,) = await miner.take(1)
        assert '"V0AuthenticateRequest"' in auth
        yield miner, link
        await link.close(1.0)


async def test_an_idle_link_writes_at_once_and_in_order(served: tuple[Miner, MinerLink]) -> None:
    miner, link = served
    sent: list[int] = []
    for i in range(3):
        link.post(f'{{"n":{i}}}', on_sent=lambda i=i: sent.append(i))  # type: ignore[misc]
    # Written before `post` returned: no writer task was needed.
    assert sent == [0, 1, 2] and link._writer is None
    big = '{"v":"' + "A" * 70_000 + '"}'  # longer than one 64 KB read: still one whole frame
    link.post_many([(big, None), ('{"n":3}', None)])
    assert link._writer is None
    assert await miner.take(5) == ['{"n":0}', '{"n":1}', '{"n":2}', big, '{"n":3}']


async def test_frames_queue_behind_queued_frames(served: tuple[Miner, MinerLink]) -> None:
    miner, link = served
    link._outbox.append(('{"n":"queued"}', 5.0, None, None))  # as if the writer had work left
    link.post('{"n":0}')
    link.post_many([('{"n":1}', None), ('{"n":2}', None)])
    assert len(link._outbox) == 4 and link._writer is not None
    assert await miner.take(4) == ['{"n":"queued"}', '{"n":0}', '{"n":1}', '{"n":2}']


async def test_a_closed_link_reports_every_frame(served: tuple[Miner, MinerLink]) -> None:
    _, link = served
    failed: list[str] = []
    await link.close(1.0)
    link.post('{"n":0}', on_failure=lambda exc: failed.append("0"))
    link.post_many([('{"n":1}', lambda exc: failed.append("1")), ('{"n":2}', lambda exc: failed.append("2"))])
    await link.flush(WAIT_S)
    assert failed == ["0", "1", "2"]
