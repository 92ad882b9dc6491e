"""The metagraph sync against real Postgres and the localnet chain simulator over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bittensor_core
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.chain import LocalChainClient, Metagraph, Neuron
from horde_common.config import load_settings
from horde_common.db.models import Neuron as NeuronRow
from horde_common.db.models import OutboxMessage, SystemEvent
from horde_common.service import ServiceContext, ServiceSpec
from horde_localnet.chain import running_chain
from horde_localnet.chain_spec import LocalnetSpec, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from horde_scheduler.metagraph_rows import MAX_NEURONS, snapshot_rows
from horde_scheduler.metagraph_sync import (
    SyncParams,
    SyncStatus,
    metagraph_sync_loop,
    metagraph_view,
    prune_snapshots,
    run_sync_loop,
    store_snapshot,
    sync_once,
)
from testing.fixtures_db import truncate

NETUID = 12
FROZEN = 3600.0  # a block interval so long that the head does not move during a test
# No real pauses: retries and backoff are exercised, not waited for.
FAST = SyncParams(
    every_blocks=1,
    poll_interval_s=0.02,
    call_timeout_s=2.0,
    retry_delays_s=(0.0, 0.0),
    backoff_first_s=0.02,
    backoff_max_s=0.1,
)
Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, "neurons, outbox, system_events")
    yield sessions


@pytest.fixture(scope="module")
def spec() -> LocalnetSpec:
    return load_spec(DEFAULT_METAGRAPH_PATH)


async def no_pause(_seconds: float) -> None:
    return None


async def eventually(check: Callable[[], Awaitable[Any]], within_s: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy, failing after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def snapshot_blocks(sessions: Sessions) -> list[int]:
    async with sessions() as s:
        return list((await s.scalars(select(NeuronRow.block).distinct().order_by(NeuronRow.block))).all())


async def outbox(sessions: Sessions) -> list[dict[str, Any]]:
    async with sessions() as s:
        rows = (await s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [{"routing_key": r.routing_key, **r.body} for r in rows]


async def events(sessions: Sessions, subtype: str) -> list[SystemEvent]:
    async with sessions() as s:
        return list((await s.scalars(select(SystemEvent).where(SystemEvent.subtype == subtype))).all())


def context(sessions: Sessions, chain_url: str) -> ServiceContext:
    ctx = ServiceContext(
        spec=ServiceSpec(name="scheduler", port=0),
        settings=load_settings(LOCALNET_CHAIN_URL=chain_url, BITTENSOR_NETUID=NETUID),
    )
    ctx.session_factory = sessions
    return ctx


async def test_snapshot_and_its_message_are_written_once(sessions: Sessions, spec: LocalnetSpec) -> None:
    async with running_chain(spec, block_interval=FROZEN) as rc, LocalChainClient(rc.url) as chain:
        head = rc.sim.current_block()
        first = await sync_once(sessions, chain, NETUID, FAST)
        again = await sync_once(sessions, chain, NETUID, FAST)
    assert (first.status, first.block, first.neuron_count) == (SyncStatus.STORED, head, 10)
    assert (again.status, again.block) == (SyncStatus.NOT_DUE, head)
    assert await snapshot_blocks(sessions) == [head]
    async with sessions() as s:
        rows = (await s.scalars(select(NeuronRow).order_by(NeuronRow.uid))).all()
    assert [r.uid for r in rows] == list(range(10))
    assert rows[0].hotkey == spec.build_neurons()[0].hotkey and rows[0].stake == 50000.0
    assert rows[0].validator_permit and not rows[0].is_serving  # validators serve no axon
    assert (rows[2].axon_ip, rows[2].axon_ip_type, rows[2].axon_port, rows[2].is_serving) == (
        "127.0.0.1",
        4,
        9100,
        True,
    )
    [message] = await outbox(sessions)
    assert message["routing_key"] == "chain.metagraph.synced"
    assert (message["block"], message["neuron_count"]) == (head, 10)
    ctx = context(sessions, "http://unused")
    assert await metagraph_view(ctx) == {"block": head, "neurons": 10, "serving": 8}


async def test_two_schedulers_racing_store_one_snapshot(sessions: Sessions, spec: LocalnetSpec) -> None:
    async with running_chain(spec, block_interval=FROZEN) as rc:
        async with LocalChainClient(rc.url) as a, LocalChainClient(rc.url) as b:
            outcomes = await asyncio.gather(
                sync_once(sessions, a, NETUID, FAST), sync_once(sessions, b, NETUID, FAST)
            )
        mg = rc.sim.metagraph(NETUID)
    assert sorted(o.status for o in outcomes) == [SyncStatus.NOT_DUE, SyncStatus.STORED]
    assert len(await outbox(sessions)) == 1
    # The write itself is idempotent too, whatever the callers checked before.
    snap = snapshot_rows(mg, netuid=NETUID, block=mg.block)
    assert await asyncio.gather(store_snapshot(sessions, snap), store_snapshot(sessions, snap)) == [
        False,
        False,
    ]
    async with sessions() as s:
        assert await s.scalar(select(func.count()).select_from(NeuronRow)) == 10
    assert len(await outbox(sessions)) == 1


async def test_outage_records_an_event_and_keeps_the_snapshot(sessions: Sessions, spec: LocalnetSpec) -> None:
    async with running_chain(spec, block_interval=FROZEN) as rc:
        url = rc.url
        async with LocalChainClient(url) as chain:
            assert (await sync_once(sessions, chain, NETUID, FAST)).status is SyncStatus.STORED
    pauses: list[float] = []

    async def record_pause(seconds: float) -> None:
        pauses.append(seconds)

    async with LocalChainClient(url) as chain:  # the port is closed now
        outcome = await sync_once(sessions, chain, NETUID, FAST, sleep=record_pause)
    assert outcome.status is SyncStatus.CHAIN_ERROR
    assert pauses == [0.0, 0.0]  # three tries, the reference's count
    assert "unreachable" in outcome.detail and "(3 tries)" in outcome.detail
    [event] = await events(sessions, "SUBTENSOR_CONNECTIVITY_ERROR")
    assert event.type == "VALIDATOR_FAILURE" and event.service == "scheduler"
    assert "keeping the last snapshot" in event.long_description
    assert len(await snapshot_blocks(sessions)) == 1
    assert len(await outbox(sessions)) == 1


async def test_a_chain_that_never_answers_times_out(sessions: Sessions) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        async with LocalChainClient(f"http://{host}:{port}", timeout=30.0) as chain:
            started = time.monotonic()
            params = SyncParams(call_timeout_s=0.2, retry_delays_s=(0.0, 0.0))
            outcome = await sync_once(sessions, chain, NETUID, params, sleep=no_pause)
            assert time.monotonic() - started < 5  # our timeout, not the client's 30 s
    assert outcome.status is SyncStatus.CHAIN_ERROR
    assert "no answer within 0.2 s" in outcome.detail
    assert len(await events(sessions, "SUBTENSOR_CONNECTIVITY_ERROR")) == 1


async def test_garbage_answers_are_a_connectivity_error(sessions: Sessions) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{garbage}"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with LocalChainClient(f"http://127.0.0.1:{port}") as chain:
            outcome = await sync_once(sessions, chain, NETUID, FAST, sleep=no_pause)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.status is SyncStatus.CHAIN_ERROR and "malformed" in outcome.detail
    assert len(await events(sessions, "SUBTENSOR_CONNECTIVITY_ERROR")) == 1
    assert await snapshot_blocks(sessions) == []


def fake_neurons(count: int, **kw: Any) -> list[Neuron]:
    return [
        Neuron(uid=i, hotkey=bittensor_core.ss58_encode((i + 1).to_bytes(32, "big")), **kw)
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("neurons", "reason"),
    [
        (fake_neurons(MAX_NEURONS + 1), f"more than the bound of {MAX_NEURONS}"),
        (
            [*fake_neurons(3), Neuron(uid=3, hotkey="not-an-ss58-hotkey")],
            "uid 3: hotkey is not an SS58 address",
        ),
    ],
    ids=["oversize", "bad-hotkey"],
)
async def test_a_bad_metagraph_is_refused_and_the_last_one_kept(
    sessions: Sessions, spec: LocalnetSpec, neurons: list[Neuron], reason: str
) -> None:
    async with running_chain(spec, block_interval=0.02) as rc, LocalChainClient(rc.url) as chain:
        good = await sync_once(sessions, chain, NETUID, FAST)
        assert good.status is SyncStatus.STORED and good.block is not None
        await chain.replace_neurons(NETUID, neurons)
        await chain.wait_for_block(good.block + 1)
        refused = await sync_once(sessions, chain, NETUID, FAST)
    assert refused.status is SyncStatus.REFUSED and reason in refused.detail
    [event] = await events(sessions, "GENERIC_ERROR")
    assert event.type == "VALIDATOR_FAILURE" and reason in event.long_description
    assert event.data["block"] == refused.block
    assert await snapshot_blocks(sessions) == [good.block]
    assert len(await outbox(sessions)) == 1


async def test_the_loop_survives_an_outage_and_resumes(sessions: Sessions, spec: LocalnetSpec) -> None:
    port = 0
    async with running_chain(spec, block_interval=0.02) as rc:
        port = rc.port
        ctx = context(sessions, rc.url)
        chain = LocalChainClient(rc.url, timeout=2.0)
        loop = asyncio.create_task(run_sync_loop(ctx, FAST, chain))
        await eventually(lambda: snapshot_blocks(sessions))

    await eventually(lambda: events(sessions, "SUBTENSOR_CONNECTIVITY_ERROR"))
    assert not loop.done()
    stored = await snapshot_blocks(sessions)
    assert stored  # the last snapshot is still there

    # The chain comes back on the same port, further along: the loop picks it up by itself.
    later = spec.model_copy(update={"chain": spec.chain.model_copy(update={"start_block": 5000})})
    async with running_chain(later, port=port, block_interval=0.02):

        async def resumed() -> bool:
            return max(await snapshot_blocks(sessions)) >= 5000

        await eventually(resumed)
    ctx.request_stop()
    await asyncio.wait_for(loop, 5)
    await chain.aclose()
    assert all(m["routing_key"] == "chain.metagraph.synced" for m in await outbox(sessions))
    assert len(await outbox(sessions)) == len(await snapshot_blocks(sessions))


async def test_the_service_loop_follows_the_configured_chain(sessions: Sessions, spec: LocalnetSpec) -> None:
    async with running_chain(spec, block_interval=FROZEN) as rc:
        head = rc.sim.current_block()
        ctx = context(sessions, rc.url)
        loop = asyncio.create_task(metagraph_sync_loop(ctx))
        try:
            await eventually(lambda: snapshot_blocks(sessions))
        finally:
            ctx.request_stop()
            await asyncio.wait_for(loop, 5)
    assert await snapshot_blocks(sessions) == [head]


async def test_prune_keeps_the_recent_snapshots(sessions: Sessions, spec: LocalnetSpec) -> None:
    mg = spec.build_neurons()
    for block in (100, 150, 200):
        snap = snapshot_rows(Metagraph(netuid=NETUID, block=block, neurons=mg), netuid=NETUID, block=block)
        assert await store_snapshot(sessions, snap)
    async with sessions.begin() as s:
        assert await prune_snapshots(s, keep_blocks=60) == 10
    assert await snapshot_blocks(sessions) == [150, 200]
    async with sessions.begin() as s:
        assert await prune_snapshots(s, keep_blocks=0) == 10
    assert await snapshot_blocks(sessions) == [200]
