"""Hostile miners on a real WebSocket, against a real shard run and real Postgres (issue 6 §1).

* A flood of malformed frames is not amplified: the validator's replies never exceed the garbage
  it received, and the link is closed with an event that names the miner.
* A final response sent before its job request is the miner's protocol error (UNEXPECTED_MESSAGE),
  with no receipt failure and no stall excuse.

Each miner here is a small `websockets` server written for the attack; the miner counts, on its
side of the socket, the bytes it sent and the bytes the validator sent back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from horde_common.bus.messages import MinerEndpoint
from horde_common.db.models import JobFinishedReceipt, SyntheticJob, SystemEvent
from horde_common.protocol.miner import dumps
from horde_common.protocol.miner.miner_messages import (
    ExecutorClassManifest,
    ExecutorManifest,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
)
from horde_common.protocol.miner.parsing import parse_validator_message
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.scoring import FinalKind, score_job
from horde_localnet import keys

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0},
    job_timeout=2.0,
    persist_backoff=0.01,
)
WAIT = 10.0  # every wait on the miner's side is bounded by this


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


@dataclass
class Wire:
    """What the miner saw on its side of the socket."""

    connections: int = 0
    garbage_sent: int = 0  # payload bytes of the garbage frames the miner wrote
    garbage_frames: int = 0
    reply_bytes: int = 0  # payload bytes of every frame the validator sent after its authentication
    replies: int = 0
    types: list[str] = field(default_factory=list)  # message types received from the validator
    closed: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[[ServerConnection, Wire], Awaitable[None]]


async def run_against(store: BatchStore, index: int, handler: Handler, **deps: Any) -> tuple[int, Wire, str]:
    """One shard against one hostile miner (dev key `index`); returns (batch id, wire, hotkey)."""
    wire = Wire()

    async def serve_one(ws: ServerConnection) -> None:
        wire.connections += 1
        try:
            await handler(ws, wire)
        except ConnectionClosed:
            pass
        finally:
            wire.closed.set()

    server = await serve(serve_one, "127.0.0.1", 0, max_size=None)
    hotkey = keys.miner_keypair(index).ss58_address
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        batch_id, _ = await store.create_batch()
        await run_shard(
            ShardRequest(
                batch_id=batch_id,
                miners=[MinerEndpoint(hotkey=hotkey, uid=index, address="127.0.0.1", port=port)],
                weights_version=4,
            ),
            BatchDeps(
                keypair=VALIDATOR,
                store=store,
                dynamic=DynamicValues(),
                difficulty="localnet",
                timeouts=deps.pop("timeouts", FAST),
                job_factory=InlineJobFactory(),
                sleep=no_sleep,
                **deps,
            ),
        )
        await asyncio.wait_for(wire.closed.wait(), WAIT)
    finally:
        server.close(close_connections=True)
        await server.wait_closed()
    return batch_id, wire, hotkey


async def expect(ws: ServerConnection, wire: Wire, message_type: str) -> Any:
    """Read validator frames (counting them) until one of `message_type` arrives."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), WAIT)
        message = parse_validator_message(raw)
        wire.types.append(message.message_type)
        if message.message_type == message_type:
            return message


async def count_replies(ws: ServerConnection, wire: Wire) -> None:
    """The validator's GenericError replies (their payload bytes), until it closes."""
    async for raw in ws:
        message_type = parse_validator_message(raw).message_type
        wire.types.append(message_type)
        if message_type == "GenericError":
            wire.replies += 1
            wire.reply_bytes += len(raw.encode() if isinstance(raw, str) else raw)


def manifest(count: int = 1) -> str:
    return dumps(
        V0ExecutorManifestRequest(
            manifest=ExecutorManifest(
                executor_classes=[ExecutorClassManifest(executor_class=AO, count=count)]
            )
        )
    )


def flood_handler(frame: str, frames: int, *, after_manifest: bool = False, stall_s: float = 0.0) -> Handler:
    """Authenticate, (optionally send a manifest and wait for the first initial job request,) then
    write `frames` copies of `frame` while counting what comes back; then, with `stall_s`, block
    the event loop (this server shares the validator's: a validator stall in the job's window)."""

    async def handler(ws: ServerConnection, wire: Wire) -> None:
        await expect(ws, wire, "V0AuthenticateRequest")
        if after_manifest:
            await ws.send(manifest())
            await expect(ws, wire, "V0InitialJobRequest")
        reader = asyncio.ensure_future(count_replies(ws, wire))
        try:
            for _ in range(frames):
                await ws.send(frame)
                wire.garbage_frames += 1
                wire.garbage_sent += len(frame.encode())
        except ConnectionClosed:
            pass
        if stall_s:
            time.sleep(stall_s)  # noqa: ASYNC251 - the stall is the point
        await asyncio.wait_for(reader, WAIT)  # ends when the validator closes

    return handler


async def batch_events(store: BatchStore, batch_id: int) -> list[SystemEvent]:
    async with store.sessions() as session:
        result = await session.scalars(
            select(SystemEvent)
            .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
            .order_by(SystemEvent.id)
        )
        return [e for e in result.all() if e.type != "VALIDATOR_TELEMETRY"]


async def batch_jobs(store: BatchStore, batch_id: int) -> list[SyntheticJob]:
    async with store.sessions() as session:
        result = await session.scalars(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id))
        return list(result.all())


def flood_event(evs: list[SystemEvent], hotkey: str) -> SystemEvent:
    (event,) = [e for e in evs if e.data.get("reason") == "malformed frame flood"]
    assert (event.type, event.subtype) == ("MINER_SYNTHETIC_JOB_FAILURE", "UNEXPECTED_MESSAGE")
    assert event.data["miner_hotkey"] == hotkey
    assert hotkey in event.long_description
    return event


# ------------------------------------------------------------------------------------------ floods


async def test_one_byte_flood_is_not_answered_and_the_link_is_closed(store: BatchStore) -> None:
    """The observed attack: 1-byte frames each drew a 136-byte GenericError. 5,000 of them now get
    no reply at all, the validator closes after 100, and the miner is named in the event."""
    batch_id, wire, hotkey = await run_against(store, 700, flood_handler("x", 5_000))
    assert wire.connections == 1  # closed by us: no reconnect
    assert wire.garbage_frames >= 100
    assert wire.reply_bytes < wire.garbage_sent
    assert wire.reply_bytes == 0
    evs = await batch_events(store, batch_id)
    event = flood_event(evs, hotkey)
    assert event.data["malformed_frames"] == 100 and event.data["bytes_replied"] == 0
    kinds = [(e.type, e.subtype) for e in evs]
    # Closed before any manifest: the miner's fault at once, not a manifest timeout of ours.
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_ERROR") in kinds
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_TIMEOUT") not in kinds
    assert not any(t == "VALIDATOR_FAILURE" for t, _ in kinds)
    (manifest_error,) = [e for e in evs if e.subtype == "MANIFEST_ERROR"]
    assert "malformed frames" in manifest_error.long_description
    assert await batch_jobs(store, batch_id) == []


async def test_garbage_under_the_limit_is_answered_within_what_it_paid_for(store: BatchStore) -> None:
    """Below the limit the link stays open and the original's "Malformed message" answer still
    goes out, but only as far as the garbage paid for it: 50 frames of 40 bytes buy a few replies
    (each is ~200 bytes), not 50. The miner then declines its job; nothing is held against it
    beyond that."""

    async def handler(ws: ServerConnection, wire: Wire) -> None:
        await expect(ws, wire, "V0AuthenticateRequest")
        for _ in range(50):
            await ws.send("y" * 40)
            wire.garbage_frames += 1
            wire.garbage_sent += 40
        await ws.send(manifest())
        while True:
            raw = await asyncio.wait_for(ws.recv(), WAIT)
            message = parse_validator_message(raw)
            wire.types.append(message.message_type)
            if message.message_type == "GenericError":
                wire.replies += 1
                wire.reply_bytes += len(raw.encode() if isinstance(raw, str) else raw)
            if message.message_type == "V0InitialJobRequest":
                await ws.send(dumps(V0DeclineJobRequest(job_uuid=message.job_uuid)))
                break
        await count_replies(ws, wire)

    batch_id, wire, _ = await run_against(store, 701, handler)
    assert 0 < wire.replies < 50
    assert wire.reply_bytes <= wire.garbage_sent
    evs = await batch_events(store, batch_id)
    assert not [e for e in evs if e.data.get("reason") == "malformed frame flood"]
    (job,) = await batch_jobs(store, batch_id)
    assert (job.status, job.comment) == ("FAILED", "declined")


@pytest.mark.parametrize(("index", "stall_s"), [(702, 0.0), (703, 0.6)])
async def test_flood_during_the_jobs_closes_the_link_and_fails_the_miner(
    store: BatchStore, index: int, stall_s: float
) -> None:
    """The miner's jobs on a link closed for its flood are its failures, even when our loop stalled
    in their window (the flood's own cost can be that stall): never excused as ours."""
    handler = flood_handler("z", 2_000, after_manifest=True, stall_s=stall_s)
    batch_id, wire, hotkey = await run_against(store, index, handler)
    assert wire.reply_bytes < wire.garbage_sent and wire.connections == 1
    evs = await batch_events(store, batch_id)
    flood_event(evs, hotkey)
    assert not any(e.type == "VALIDATOR_FAILURE" for e in evs)
    (job,) = await batch_jobs(store, batch_id)
    assert (job.status, job.excluded_from_scoring, job.score) == ("FAILED", False, 0.0)
    assert "V0JobRequest" not in wire.types


# ------------------------------------------------------------------------ final before job request


def early_final_handler(final: str, *, stall_s: float = 0.0) -> Handler:
    """Accept, report ready and at once send a final response: before any job request."""

    async def handler(ws: ServerConnection, wire: Wire) -> None:
        await expect(ws, wire, "V0AuthenticateRequest")
        await ws.send(manifest())
        initial = await expect(ws, wire, "V0InitialJobRequest")
        job_uuid = initial.job_uuid
        await ws.send(dumps(V0AcceptJobRequest(job_uuid=job_uuid)))
        await ws.send(dumps(V0ExecutorReadyRequest(job_uuid=job_uuid)))
        if final == "finished":
            message: Any = V0JobFinishedRequest(
                job_uuid=job_uuid, docker_process_stdout="answer", docker_process_stderr=""
            )
        else:
            message = V0JobFailedRequest(
                job_uuid=job_uuid,
                docker_process_exit_status=1,
                docker_process_stdout="",
                docker_process_stderr="",
            )
        await ws.send(dumps(message))
        if stall_s:
            # This server shares the validator's event loop: blocking it is a validator stall
            # inside the job's window, which must not excuse the miner's out-of-order answer.
            time.sleep(stall_s)  # noqa: ASYNC251 - the stall is the point
        async for raw in ws:  # until the validator closes
            wire.types.append(parse_validator_message(raw).message_type)

    return handler


@pytest.mark.parametrize(
    ("index", "final", "stall_s", "comment"),
    [
        (710, "finished", 0.0, "out of order job response"),
        (711, "failed", 0.0, "failed: returncode=1"),
        (712, "finished", 0.6, "out of order job response"),
    ],
)
async def test_final_before_the_job_request_is_the_miners_protocol_error(
    store: BatchStore, index: int, final: str, stall_s: float, comment: str
) -> None:
    batch_id, wire, hotkey = await run_against(store, index, early_final_handler(final, stall_s=stall_s))
    assert "V0JobRequest" not in wire.types  # answered before it: never sent
    (job,) = await batch_jobs(store, batch_id)
    assert (job.status, job.comment, job.score) == ("FAILED", comment, 0.0)
    assert not job.excluded_from_scoring  # never excused as our stall
    evs = await batch_events(store, batch_id)
    kinds = [(e.type, e.subtype) for e in evs]
    assert kinds.count(("MINER_SYNTHETIC_JOB_FAILURE", "UNEXPECTED_MESSAGE")) == 1
    (event,) = [e for e in evs if e.subtype == "UNEXPECTED_MESSAGE"]
    assert event.data["miner_hotkey"] == hotkey and event.data["job_uuid"] == str(job.job_uuid)
    assert "before the job request" in event.long_description
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "JOB_EXECUTION_TIMEOUT") not in kinds
    assert not any(t in ("RECEIPT_FAILURE", "VALIDATOR_FAILURE") for t, _ in kinds)
    async with store.sessions() as session:
        receipts = await session.scalars(
            select(JobFinishedReceipt).where(JobFinishedReceipt.job_uuid == job.job_uuid)
        )
        assert list(receipts.all()) == []


def test_out_of_order_verdicts_are_never_time_failures() -> None:
    """The pure rule behind the stall guard: an early final is flagged, never a time failure."""
    finished = score_job(final=FinalKind.FINISHED, time_took=1.0, timeout=5.0, before_job_request=True)
    failed = score_job(final=FinalKind.FAILED, exit_status=1, timeout=5.0, before_job_request=True)
    assert (finished.comment, finished.out_of_order, finished.time_failure) == (
        "out of order job response",
        True,
        False,
    )
    assert (failed.comment, failed.out_of_order, failed.time_failure) == ("failed: returncode=1", True, False)
    on_time = score_job(final=FinalKind.FAILED, exit_status=1, timeout=5.0)
    assert not on_time.out_of_order
